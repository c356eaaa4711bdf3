//! Train a classifier on two interleaved spirals generated here, with a progress line and the
//! loss per epoch; reports held-out accuracy.
//!
//! `cargo run --release --example train_mlp`

use mithril::prelude::*;
use mithril::rt::optim::{Adam, Optimizer};
use ndarray::{Array1, Array2, s};
use std::io::IsTerminal as _;

mithril! {
    /// A 2-64-64-2 perceptron trained with mean cross entropy and a little weight decay.
    pub train SpiralNet {
        input x: f32[B, 2];
        input label: i64[B];
        let h = tanh(Linear(64)(x));
        let h = relu(Linear(64)(h));
        output logits = Linear(2)(h);
        loss cross_entropy(logits, label).mean();
        regularize l2(1e-5) on "*.weight";
    }
}

/// Two spirals, `n` points each, with a little noise; a tiny xorshift keeps it dependency-free.
fn spirals(n: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut x = Array2::<f32>::zeros((2 * n, 2));
    let mut y = Array1::<i64>::zeros(2 * n);
    for i in 0..2 * n {
        let class = i % 2;
        let t = rnd() * 3.0 * std::f64::consts::PI;
        let r = 0.15 + t / (3.0 * std::f64::consts::PI);
        let a = t + class as f64 * std::f64::consts::PI;
        x[[i, 0]] = (r * a.cos() + 0.02 * (rnd() - 0.5)) as f32;
        x[[i, 1]] = (r * a.sin() + 0.02 * (rnd() - 0.5)) as f32;
        y[i] = class as i64;
    }
    (x, y)
}

fn accuracy(
    m: &SpiralNet,
    p: &SpiralNetParams,
    x: &Array2<f32>,
    y: &Array1<i64>,
) -> mithril::Result<f64> {
    let out = m.evaluate(
        p,
        SpiralNetInputs {
            x: x.view(),
            label: y.view(),
        },
    )?;
    let correct = out
        .logits
        .rows()
        .into_iter()
        .zip(y.iter())
        .filter(|(r, t)| (if r[1] > r[0] { 1 } else { 0 }) == **t)
        .count();
    Ok(correct as f64 / y.len() as f64)
}

pub fn main() -> mithril::Result<()> {
    let t0 = std::time::Instant::now();
    let (x_train, y_train) = spirals(1000, 1);
    let (x_test, y_test) = spirals(500, 2);
    let model = SpiralNet::new()?;
    let mut params = model.randomize_params(7);
    let mut opt = Adam::new(0.01);
    let epochs = 60;
    let batch = 100;
    // a one-line progress display on a terminal (`\r` rewrites it); plain epoch lines otherwise
    let tty = std::io::stderr().is_terminal();
    for epoch in 0..epochs {
        let mut total = 0.0;
        let n = x_train.nrows();
        // a fixed shuffled order per epoch: stride through the data
        let stride = [7usize, 11, 13][epoch as usize % 3];
        let order: Vec<usize> = (0..n).map(|i| (i * stride + epoch as usize) % n).collect();
        for chunk in order.chunks(batch) {
            let xb = Array2::from_shape_fn((chunk.len(), 2), |(i, j)| x_train[[chunk[i], j]]);
            let yb = Array1::from_iter(chunk.iter().map(|&i| y_train[i]));
            let (out, grads) = model.evaluate_gradients(
                &params,
                SpiralNetInputs {
                    x: xb.view(),
                    label: yb.view(),
                },
            )?;
            total += out.loss.into_scalar() as f64;
            opt.step(&mut params, &grads)?;
        }
        let mean_loss = total / (n / batch) as f64;
        if tty {
            eprint!("\r{:3}/{epochs} epochs, loss {mean_loss:.4}", epoch + 1);
        }
        if epoch % 10 == 9 || epoch + 1 == epochs {
            if tty {
                eprint!("\r\x1b[K");
            }
            println!("epoch {:3}: loss {mean_loss:.4}", epoch + 1);
        }
    }
    let train_acc = accuracy(&model, &params, &x_train, &y_train)?;
    let test_acc = accuracy(&model, &params, &x_test, &y_test)?;
    println!(
        "train accuracy {:.1}%, held-out accuracy {:.1}% ({} test points), {:.1} s",
        100.0 * train_acc,
        100.0 * test_acc,
        y_test.len(),
        t0.elapsed().as_secs_f64()
    );
    let _ = x_test.slice(s![0..1, ..]);
    if test_acc < 0.95 {
        return Err(mithril::Error::op(
            "train_mlp",
            format!("held-out accuracy {test_acc:.3} is below 0.95"),
        ));
    }
    Ok(())
}
