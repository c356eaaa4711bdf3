//! The Elman RNN of `examples/recurrent.rs` (B 32, T 24, one input feature, hidden 32, a
//! `Linear(1)` head per step, f32), timed as `anchors/bench_rnn.py` times JAX `jit` (a
//! `lax.scan`) and PyTorch eager: inference (the stacked predictions) and one training step
//! (forward, mean-square loss, backward, one Adam step at lr 0.01). One anchor-format JSON line
//! per measurement (medians).
//!
//! `MITHRIL_THREADS=1 taskset -c 0 cargo run --release --example bench_rnn`

use mithril::prelude::*;
use mithril::rt::optim::{Adam, Optimizer};
use ndarray::Array3;
use std::hint::black_box;
use std::time::Instant;

mithril! {
    /// The scan of `examples/recurrent.rs`, predictions only.
    pub model RnnInfer {
        input xs: f32[B, T, 1];
        let cell = Linear(32);
        let read = Linear(32);
        let head = Linear(1);
        let h = read(xs[(.., 0)]) * 0.0;
        for t in 0..T {
            let h = tanh(cell(h) + read(xs[(.., t)]));
            stack pred[(.., t)] = head(h);
        }
        output pred = pred;
    }

    /// The same with the loss of `examples/recurrent.rs`.
    pub train RnnTrain {
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
        loss mean(square(pred - ys));
    }

    /// `BENCH_PROFILE=1`: the per-op profile of the training step.
    pub compile RnnTrainProf = RnnTrain { profile: true };
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// CPU time of the whole process (all threads; robust to a shared, loaded machine).
fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Time `f` for about `budget` seconds after warm-up: the median wall and process-CPU seconds
/// per call.
fn bench(mut f: impl FnMut(), budget: f64) -> (f64, f64) {
    for _ in 0..5 {
        f();
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < budget || wall.len() < 11 {
        let (t, c) = (Instant::now(), process_cpu());
        f();
        cpu.push(process_cpu() - c);
        wall.push(t.elapsed().as_secs_f64());
    }
    (median(wall), median(cpu))
}

const B: usize = 32;
const T: usize = 24;

/// The sequences the anchor script uses: `sin(0.3 k + 0.1 i)` in, the next sample as target.
fn data() -> (Array3<f32>, Array3<f32>) {
    let s = |i: usize, k: usize| (0.3 * k as f32 + 0.1 * i as f32).sin();
    (
        Array3::from_shape_fn((B, T, 1), |(i, k, _)| s(i, k)),
        Array3::from_shape_fn((B, T, 1), |(i, k, _)| s(i, k + 1)),
    )
}

pub fn main() -> mithril::Result<()> {
    let budget: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let threads = mithril_kernels::gemm::num_threads();
    let (xs, ys) = data();
    let m = RnnInfer::new()?;
    let p = m.randomize_params(0);
    let (t, c) = bench(
        || {
            let _ = black_box(m.evaluate(&p, RnnInferInputs { xs: xs.view() }));
        },
        budget,
    );
    println!(
        "JSON {{\"bench\": \"rnn_infer\", \"impl\": \"mithril-rs\", \"threads\": {threads}, \"batch\": {B}, \"seq\": {T}, \"median_s\": {t:.4e}, \"cpu_s\": {c:.4e}}}"
    );
    let tm = RnnTrain::new()?;
    let mut tp = tm.randomize_params(0);
    let mut opt = Adam::new(0.01);
    let (t, c) = bench(
        || {
            if let Ok((_, g)) = tm.evaluate_gradients(
                &tp,
                RnnTrainInputs {
                    xs: xs.view(),
                    ys: ys.view(),
                },
            ) {
                let _ = opt.step(&mut tp, &g);
            }
        },
        budget,
    );
    println!(
        "JSON {{\"bench\": \"rnn_train\", \"impl\": \"mithril-rs\", \"threads\": {threads}, \"batch\": {B}, \"seq\": {T}, \"median_s\": {t:.4e}, \"cpu_s\": {c:.4e}}}"
    );
    if std::env::var("BENCH_PROFILE").is_ok_and(|v| v == "1") {
        let pm = RnnTrainProf::new()?;
        let mut pp = pm.randomize_params(0);
        let mut opt = Adam::new(0.01);
        for _ in 0..200 {
            let (_, g) = pm.evaluate_gradients(
                &pp,
                RnnTrainProfInputs {
                    xs: xs.view(),
                    ys: ys.view(),
                },
            )?;
            opt.step(&mut pp, &g)?;
        }
        println!("{}", pm.profile_report());
    }
    if std::env::var("BENCH_SUMMARY").is_ok_and(|v| v == "1") {
        println!("{}\n{}", RnnTrain::SUMMARY, RnnTrain::GRAPH_TEXT);
    }
    Ok(())
}
