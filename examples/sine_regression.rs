//! Fit `sin(x)` on [-π, π] with a small MLP trained by Adam on mean squared error.
//!
//! `cargo run --release --example sine_regression`

use mithril::prelude::*;
use mithril::rt::optim::{Adam, LrSchedule, Optimizer, Scheduler};
use ndarray::Array2;

mithril! {
    /// 1-32-32-1 regression network.
    pub train SineFit {
        input x: f32[B, 1];
        input y: f32[B, 1];
        output pred = MLP(dimensions = [32, 32, 1], activations = [tanh, tanh])(x);
        loss squared_error(pred, y).mean();
    }
}

pub fn main() -> mithril::Result<()> {
    let t0 = std::time::Instant::now();
    let n = 256;
    let xs = Array2::from_shape_fn((n, 1), |(i, _)| {
        -std::f32::consts::PI + 2.0 * std::f32::consts::PI * i as f32 / (n - 1) as f32
    });
    let ys = xs.mapv(f32::sin);
    let model = SineFit::new()?;
    let mut params = model.randomize_params(3);
    let steps = 2000;
    let mut opt = Scheduler::new(
        Adam::new(0.01),
        LrSchedule::Cosine {
            t_max: steps,
            eta_min: 1e-4,
        },
    );
    let mut last = f32::NAN;
    for step in 0..steps {
        let (out, grads) = model.evaluate_gradients(
            &params,
            SineFitInputs {
                x: xs.view(),
                y: ys.view(),
            },
        )?;
        last = out.loss.into_scalar();
        opt.step(&mut params, &grads)?;
        if step % 400 == 0 {
            println!("step {step:4}: mse {last:.6}");
        }
    }
    // error on points between the training grid
    let xt = Array2::from_shape_fn((100, 1), |(i, _)| -3.0 + 6.0 * (i as f32 + 0.5) / 100.0);
    let yt = xt.mapv(f32::sin);
    let out = model.evaluate(
        &params,
        SineFitInputs {
            x: xt.view(),
            y: yt.view(),
        },
    )?;
    let max_err = out
        .pred
        .iter()
        .zip(yt.iter())
        .map(|(p, t)| (p - t).abs())
        .fold(0.0f32, f32::max);
    println!(
        "final training mse {last:.2e}; max |error| on held-out points {max_err:.4}; {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    if max_err > 0.05 {
        return Err(mithril::Error::op(
            "sine_regression",
            format!("max error {max_err} is above 0.05"),
        ));
    }
    Ok(())
}
