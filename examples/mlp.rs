//! A 784-256-128-10 perceptron (28x28 digits in, 10 class scores out), compiled by `mithril!`
//! at build time, evaluated on a deterministic batch.
//!
//! ```text
//! cargo run --release --example mlp                 # batch 64, 50 timed runs
//! MLP_BATCH=256 MLP_RUNS=20 cargo run --release --example mlp
//! ```
//!
//! Prints the model summary, the first rows of the output with their argmax, and the median
//! time of one `evaluate` call (single thread).

use mithril::prelude::*;
use std::time::{Duration, Instant};

mithril! {
    /// A 784-256-128-10 perceptron for 28x28 digits.
    pub model DigitMlp {
        input x: f32[B, 784];
        let fc1 = Linear(256);
        let fc2 = Linear(128);
        let fc3 = Linear(10);
        let h = relu(fc1(x));
        let h = relu(fc2(h));
        output logits = fc3(h);
    }
}

/// A deterministic pseudo-random batch in [0, 1) (a 64-bit LCG; no extra dependencies).
pub fn batch(rows: usize, cols: usize, seed: u64) -> ndarray::Array2<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    ndarray::Array2::from_shape_simple_fn((rows, cols), || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 40) as f32 / (1u64 << 24) as f32
    })
}

/// The index of the largest value of each row.
pub fn argmax_rows(a: &ndarray::Array2<f32>) -> Vec<usize> {
    a.rows()
        .into_iter()
        .map(|r| {
            r.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| {
                    if v > bv { (i, v) } else { (bi, bv) }
                })
                .0
        })
        .collect()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// Evaluate `runs` times on a batch of `rows`; returns the median time of one call.
pub fn time_batch(
    model: &DigitMlp,
    params: &DigitMlpParams,
    rows: usize,
    runs: usize,
) -> mithril::Result<(ndarray::Array2<f32>, Duration)> {
    let x = batch(rows, 784, 7);
    // one warm-up call
    let mut out = model.evaluate(params, DigitMlpInputs { x: x.view() })?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        out = model.evaluate(params, DigitMlpInputs { x: x.view() })?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok((out.logits, times[times.len() / 2]))
}

pub fn main() -> mithril::Result<()> {
    let rows = env_usize("MLP_BATCH", 64);
    let runs = env_usize("MLP_RUNS", 50);

    println!("{}", DigitMlp::SUMMARY);
    let model = DigitMlp::new()?;
    let params = model.randomize_params(42);
    println!(
        "params: {} tensors, {} elements",
        params.names().len(),
        params.num_elements()
    );

    let (logits, median) = time_batch(&model, &params, rows, runs)?;
    assert_eq!(logits.shape(), &[rows, 10]);
    let classes = argmax_rows(&logits);
    println!("output: f32{:?}", logits.shape());
    for (i, row) in logits.rows().into_iter().take(4).enumerate() {
        let vals: Vec<String> = row.iter().map(|v| format!("{v:+.4}")).collect();
        println!("  row {i}: [{}] -> class {}", vals.join(", "), classes[i]);
    }
    println!(
        "argmax of the first {} rows: {:?}",
        classes.len().min(16),
        &classes[..classes.len().min(16)]
    );
    let flops = 2.0 * rows as f64 * (784.0 * 256.0 + 256.0 * 128.0 + 128.0 * 10.0);
    println!(
        "evaluate, batch {rows}: median {:.3} ms over {runs} runs ({:.2} GFLOP/s, 1 thread)",
        median.as_secs_f64() * 1e3,
        flops / median.as_secs_f64() / 1e9
    );
    Ok(())
}
