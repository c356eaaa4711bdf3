//! Train a LeNet-style CNN with batch norm and dropout on the 8x8 handwritten digits (1,797 real
//! images, `examples/data/README.md`), with a progress line; save the params with
//! `save_safetensors`, load them back into fresh params and report the held-out accuracy of the
//! reloaded model in evaluation mode (running statistics, no dropout).
//!
//! `cargo run --release --example train_cnn`

use mithril::prelude::*;
use mithril::rt::Mode;
use mithril::rt::optim::{Adam, Optimizer};
use ndarray::{Array1, Array4};
use std::io::IsTerminal as _;

mithril! {
    /// conv 3x3 (16) + batch norm + relu + max pool 2 -> conv 3x3 (32) + batch norm + relu +
    /// max pool 2 -> dropout -> linear 10, trained with mean cross entropy.
    pub train DigitsCnn {
        input x: f32[B, 1, 8, 8];
        input label: i64[B];
        let conv1 = Conv2d(16, 3, padding = 1)(x);               // [B, 16, 8, 8]
        let bn1 = BatchNorm2d()(conv1);
        let pool1 = MaxPool2d(2)(relu(bn1));                      // [B, 16, 4, 4]
        let conv2 = Conv2d(32, 3, padding = 1)(pool1);            // [B, 32, 4, 4]
        let bn2 = BatchNorm2d()(conv2);
        let pool2 = MaxPool2d(2)(relu(bn2));                      // [B, 32, 2, 2]
        let drop = Dropout(p = 0.25)(pool2.flatten(start_dim = 1)); // [B, 128]
        output logits = Linear(10)(drop);
        loss cross_entropy(logits, label).mean();
    }

    /// The same model for int8 inference: its convolutions and its linear layer run with int8
    /// weights (per output channel) and int8 activations; the batch norms' running statistics
    /// stay f32 buffers.
    pub compile DigitsCnnQ = DigitsCnn { quantization: int8 };
}

/// The data set: `(images [n, 1, 8, 8] scaled to [0, 1], labels)`.
pub fn digits() -> (Array4<f32>, Array1<i64>) {
    const RAW: &[u8] = include_bytes!("data/digits.bin");
    let n = RAW.len() / 65;
    let x = Array4::from_shape_fn((n, 1, 8, 8), |(i, _, r, c)| {
        f32::from(RAW[i * 65 + 1 + r * 8 + c]) / 16.0
    });
    let y = Array1::from_shape_fn(n, |i| i64::from(RAW[i * 65]));
    (x, y)
}

/// A fixed shuffle (xorshift, seeded) of `0..n`.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        order.swap(i, (state % (i as u64 + 1)) as usize);
    }
    order
}

fn take(x: &Array4<f32>, y: &Array1<i64>, idx: &[usize]) -> (Array4<f32>, Array1<i64>) {
    let xb = Array4::from_shape_fn((idx.len(), 1, 8, 8), |(i, c, r, k)| x[[idx[i], c, r, k]]);
    let yb = Array1::from_iter(idx.iter().map(|&i| y[i]));
    (xb, yb)
}

/// Top-1 accuracy of an evaluation-mode call (running statistics, no dropout).
pub fn accuracy(
    m: &DigitsCnn,
    p: &DigitsCnnParams,
    x: &Array4<f32>,
    y: &Array1<i64>,
) -> mithril::Result<f64> {
    let out = m.evaluate(
        p,
        DigitsCnnInputs {
            x: x.view(),
            label: y.view(),
        },
    )?;
    Ok(top1(&out.logits, y))
}

/// What a run reports.
pub struct Report {
    /// Held-out accuracy of the trained params.
    pub test_accuracy: f64,
    /// Held-out accuracy after `save_safetensors` and `load_safetensors` into fresh params.
    pub reloaded_accuracy: f64,
    /// Mean loss of the first and the last epoch.
    pub loss: (f64, f64),
    /// Held-out accuracy of the same params in int8 (`DigitsCnnQ`): dynamic activation scales,
    /// then static ones calibrated on 256 training images.
    pub int8_accuracy: (f64, f64),
}

/// Top-1 accuracy of logits `[n, 10]` against `y`.
fn top1(logits: &ndarray::Array2<f32>, y: &Array1<i64>) -> f64 {
    let correct = logits
        .rows()
        .into_iter()
        .zip(y.iter())
        .filter(|(r, t)| {
            let best = (0..10).fold(0, |b, j| if r[j] > r[b] { j } else { b });
            best as i64 == **t
        })
        .count();
    correct as f64 / y.len() as f64
}

/// Held-out accuracy of `params` run in int8 (dynamic scales, then calibrated on `x_cal`).
pub fn int8_accuracy(
    params: &DigitsCnnParams,
    x_cal: &Array4<f32>,
    x: &Array4<f32>,
    y: &Array1<i64>,
) -> mithril::Result<(f64, f64)> {
    let m = DigitsCnnQ::new()?;
    let mut p = m.randomize_params(0);
    p.load_safetensors_bytes(&params.to_safetensors_bytes()?)?;
    let dynamic = m.quantize(&p)?;
    let inputs = || DigitsCnnQInputs {
        x: x.view(),
        label: y.view(),
    };
    let acc_dyn = top1(&m.evaluate_quantized(&dynamic, inputs())?.logits, y);
    let y_cal = Array1::<i64>::zeros(x_cal.shape()[0]);
    let cal = m.calibrate(
        &p,
        x_cal
            .axis_chunks_iter(ndarray::Axis(0), 64)
            .zip(y_cal.axis_chunks_iter(ndarray::Axis(0), 64))
            .map(|(x, label)| DigitsCnnQInputs { x, label }),
    )?;
    let logits_cal = m.evaluate_quantized(&cal, inputs())?.logits;
    let acc_cal = top1(&logits_cal, y);
    // the int8 weights (both convolutions and the linear layer) with their scales survive a
    // save and load bit for bit
    let path = std::env::temp_dir().join(format!(
        "mithril_digits_cnn_int8_{}.safetensors",
        std::process::id()
    ));
    cal.save_safetensors(&path)?;
    let back = m.load_quantized(&path);
    let _ = std::fs::remove_file(&path);
    let back = back?;
    let names = back.quantized();
    if names.len() != 3
        || !names.contains(&"conv1.weight")
        || !names.contains(&"conv2.weight")
        || m.evaluate_quantized(&back, inputs())?.logits != logits_cal
    {
        return Err(mithril::Error::op(
            "train_cnn",
            format!(
                "the int8 params ({:?}) do not reload to the same logits",
                names
            ),
        ));
    }
    Ok((acc_dyn, acc_cal))
}

/// Trains for `epochs` epochs (batch 32, Adam) on 80% of the digits, tests on the other 20%.
pub fn train(epochs: usize, verbose: bool) -> mithril::Result<Report> {
    let (x, y) = digits();
    let order = shuffled(y.len(), 2024);
    let n_test = y.len() / 5;
    let (x_test, y_test) = take(&x, &y, &order[..n_test]);
    let train_idx = &order[n_test..];
    let model = DigitsCnn::new()?;
    let mut params = model.randomize_params(7);
    let mut opt = Adam::new(0.005);
    let batch = 32;
    let tty = verbose && std::io::stderr().is_terminal();
    let mut loss = (0.0, 0.0);
    let mut seed = 0u64;
    for epoch in 0..epochs {
        let perm = shuffled(train_idx.len(), epoch as u64 + 1);
        let (mut total, mut steps) = (0.0, 0);
        for chunk in perm.chunks(batch) {
            let idx: Vec<usize> = chunk.iter().map(|&i| train_idx[i]).collect();
            let (xb, yb) = take(&x, &y, &idx);
            // a training call: batch statistics, dropout (masks from the step's seed, so a run
            // is reproducible), running statistics updated in `params`
            let (out, grads) = model.evaluate_gradients_mode(
                &mut params,
                DigitsCnnInputs {
                    x: xb.view(),
                    label: yb.view(),
                },
                Mode::TrainSeeded(seed),
            )?;
            seed += 1;
            total += out.loss.into_scalar() as f64;
            steps += 1;
            opt.step(&mut params, &grads)?;
        }
        let mean = total / steps as f64;
        if epoch == 0 {
            loss.0 = mean;
        }
        loss.1 = mean;
        if tty {
            let done = (epoch + 1) * 30 / epochs;
            eprint!(
                "\r[{}{}] {:2}/{epochs} epochs, loss {mean:.4}",
                "#".repeat(done),
                ".".repeat(30 - done),
                epoch + 1
            );
        } else if verbose {
            println!("epoch {:2}: loss {mean:.4}", epoch + 1);
        }
    }
    if tty {
        eprintln!();
    }
    let test_accuracy = accuracy(&model, &params, &x_test, &y_test)?;
    // save, then load into fresh params (their running statistics included) and evaluate
    let path = std::env::temp_dir().join(format!(
        "mithril_digits_cnn_{}.safetensors",
        std::process::id()
    ));
    params.save_safetensors(&path)?;
    let mut reloaded = model.randomize_params(99);
    reloaded.load_safetensors(&path)?;
    let _ = std::fs::remove_file(&path);
    let reloaded_accuracy = accuracy(&model, &reloaded, &x_test, &y_test)?;
    let (x_cal, _) = take(&x, &y, &train_idx[..256.min(train_idx.len())]);
    let int8_accuracy = int8_accuracy(&params, &x_cal, &x_test, &y_test)?;
    Ok(Report {
        test_accuracy,
        reloaded_accuracy,
        loss,
        int8_accuracy,
    })
}

pub fn main() -> mithril::Result<()> {
    let t0 = std::time::Instant::now();
    let r = train(15, true)?;
    println!(
        "loss {:.4} -> {:.4}; held-out accuracy {:.1}% (reloaded from safetensors: {:.1}%; int8: {:.1}% dynamic, {:.1}% calibrated), {:.1} s",
        r.loss.0,
        r.loss.1,
        100.0 * r.test_accuracy,
        100.0 * r.reloaded_accuracy,
        100.0 * r.int8_accuracy.0,
        100.0 * r.int8_accuracy.1,
        t0.elapsed().as_secs_f64()
    );
    if r.reloaded_accuracy < 0.97 {
        return Err(mithril::Error::op(
            "train_cnn",
            format!("held-out accuracy {:.3} is below 0.97", r.reloaded_accuracy),
        ));
    }
    Ok(())
}
