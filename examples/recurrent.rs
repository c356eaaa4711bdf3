//! Train a recurrent network written with the loop form: an Elman cell run over the sequence
//! axis by `for t in 0..T` (a scan, compiled once, not unrolled), its per-step predictions
//! stacked with `stack`. The task: from the samples of a sum of two sines seen so far, predict
//! the next sample. Prints the loss as it falls; `Err` if it does not fall below a tenth of its
//! first value.
//!
//! `cargo run --release --example recurrent`

use mithril::prelude::*;
use mithril::rt::optim::{Adam, Optimizer};
use ndarray::Array3;

mithril! {
    /// `h_t = tanh(W h_{t-1} + U x_t + b)`, `y_t = V h_t + c`, mean squared error against the
    /// next sample. `T` (the sequence length) is fixed per call, like the batch `B`.
    pub train SeqNet {
        input xs: f32[B, T, 1];
        input ys: f32[B, T, 1];
        let cell = Linear(32);
        let read = Linear(32);
        let head = Linear(1);
        let h = read(xs[(.., 0)]) * 0.0;
        for t in 0..T {
            let h = tanh(cell(h) + read(xs[(.., t)]));
            stack pred[(.., t)] = head(h);
        }
        output pred = pred;
        loss mean(square(pred - ys));
    }
}

/// `b` sequences of `t + 1` samples of `sin(a k) + 0.5 sin(2.3 a k + p)` with random phases:
/// inputs the first `t`, targets the last `t`.
fn batch(b: usize, t: usize, seed: u64) -> (Array3<f32>, Array3<f32>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut xs = Array3::<f32>::zeros((b, t, 1));
    let mut ys = Array3::<f32>::zeros((b, t, 1));
    for i in 0..b {
        let tau = std::f64::consts::TAU;
        let (p0, p1) = (rnd() * tau, rnd() * tau);
        let s =
            |k: usize| ((0.3 * k as f64 + p0).sin() + 0.5 * (0.69 * k as f64 + p1).sin()) as f32;
        for k in 0..t {
            xs[[i, k, 0]] = s(k);
            ys[[i, k, 0]] = s(k + 1);
        }
    }
    (xs, ys)
}

/// Trains for `steps` Adam steps on fresh batches; returns the mean loss of the first and of
/// the last ten steps.
pub fn train(steps: usize, verbose: bool) -> mithril::Result<(f64, f64)> {
    let model = SeqNet::new()?;
    let mut params = model.randomize_params(3);
    let mut opt = Adam::new(0.01);
    let mut losses = Vec::with_capacity(steps);
    for step in 0..steps {
        let (xs, ys) = batch(32, 24, step as u64 + 1);
        let (out, grads) = model.evaluate_gradients(
            &params,
            SeqNetInputs {
                xs: xs.view(),
                ys: ys.view(),
            },
        )?;
        losses.push(out.loss.into_scalar() as f64);
        opt.step(&mut params, &grads)?;
        if verbose && (step % 50 == 0 || step + 1 == steps) {
            println!("step {step:4}: loss {:.5}", losses[step]);
        }
    }
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let k = 10.min(steps);
    Ok((mean(&losses[..k]), mean(&losses[steps - k..])))
}

pub fn main() -> mithril::Result<()> {
    let t0 = std::time::Instant::now();
    let (first, last) = train(400, true)?;
    println!(
        "loss {first:.4} (first ten steps) -> {last:.5} (last ten), {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    if last > first / 10.0 {
        return Err(mithril::Error::op(
            "recurrent",
            format!("the loss fell from {first:.4} to {last:.5} only (not below a tenth)"),
        ));
    }
    Ok(())
}
