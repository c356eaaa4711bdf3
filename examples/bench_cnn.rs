//! The CNN of `../shared/anchors/bench_cnn.py` (conv 3x3 1->32 pad 1, relu, max pool 2, conv
//! 3x3 32->64 pad 1, relu, max pool 2, linear 3136->10; f32), inference at batch 1 and 64 and a
//! training step (forward, mean cross entropy, backward, one plain SGD step, lr 0.01) at batch
//! 64: `MITHRIL_THREADS=1 cargo run --release --example bench_cnn`. Prints the median time per
//! call and GFLOP/s (the anchor's FLOP count: the two convolutions and the linear layer), for
//! inference with `evaluate` and with `prepare` / `evaluate_prepared`. `BENCH_PROFILE=1` adds
//! the per-op profiles; `BENCH_ONLY=infer1` runs only batch-1 `evaluate` calls for 10 s (for
//! `perf record`).

use mithril::prelude::*;
use mithril::rt::optim::{Optimizer, Sgd};
use std::time::Instant;

mithril! {
    model Cnn {
        input x: f32[B, 1, 28, 28];
        let c1 = Conv2d(32, 3, padding = 1)(x);
        let p1 = MaxPool2d(2)(relu(c1));
        let c2 = Conv2d(64, 3, padding = 1)(p1);
        let p2 = MaxPool2d(2)(relu(c2));
        let fc = Linear(10)(p2.flatten(start_dim = 1));
        output logits = fc;
    }
    compile CnnInfer = Cnn { inference: true };
    /// `BENCH_PROFILE=1`: the per-op profile of inference at batch 64 and at batch 1.
    compile CnnInferProf = Cnn { inference: true, profile: true };

    train CnnTrain {
        input x: f32[B, 1, 28, 28];
        input label: i64[B];
        let c1 = Conv2d(32, 3, padding = 1)(x);
        let p1 = MaxPool2d(2)(relu(c1));
        let c2 = Conv2d(64, 3, padding = 1)(p1);
        let p2 = MaxPool2d(2)(relu(c2));
        output logits = Linear(10)(p2.flatten(start_dim = 1));
        loss cross_entropy(logits, label).mean();
    }
    /// `BENCH_PROFILE=1`: the per-op profile of the training step.
    compile CnnTrainProf = CnnTrain { profile: true };
}

/// The anchor's FLOPs for batch `b`.
fn cnn_flops(b: usize) -> f64 {
    let conv1 = 2 * 28 * 28 * 32 * 9;
    let conv2 = 2 * 14 * 14 * 64 * 9 * 32;
    let fc = 2 * 3136 * 10;
    (b * (conv1 + conv2 + fc)) as f64
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

/// (wall, process CPU) median seconds per call over 21 trials of about 20 ms each (after a
/// warm-up).
fn time(mut f: impl FnMut()) -> (f64, f64) {
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-8);
    let reps = ((2e-2 / once) as usize).max(1);
    let (mut w, mut c): (Vec<f64>, Vec<f64>) = (0..21)
        .map(|_| {
            let (t, c) = (Instant::now(), process_cpu());
            for _ in 0..reps {
                f();
            }
            (
                t.elapsed().as_secs_f64() / reps as f64,
                (process_cpu() - c) / reps as f64,
            )
        })
        .unzip();
    w.sort_by(|a, b| a.total_cmp(b));
    c.sort_by(|a, b| a.total_cmp(b));
    (w[w.len() / 2], c[c.len() / 2])
}

fn main() -> mithril::Result<()> {
    let m = CnnInfer::new()?;
    let p = m.randomize_params(0);
    // `BENCH_ONLY=infer1`: only batch-1 `evaluate` calls for about 10 s (for `perf record`)
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "infer1") {
        let x = ndarray::Array4::from_shape_fn((1, 1, 28, 28), |(_, _, r, c)| {
            ((r * 28 + c) as f32 * 0.37).sin()
        });
        let t0 = Instant::now();
        while t0.elapsed().as_secs_f64() < 10.0 {
            for _ in 0..1000 {
                let o = m.evaluate(&p, CnnInferInputs { x: x.view() })?;
                std::hint::black_box(o);
            }
        }
        return Ok(());
    }
    let prep = m.prepare(&p)?;
    for b in [1usize, 64] {
        let x = ndarray::Array4::from_shape_fn((b, 1, 28, 28), |(i, _, r, c)| {
            ((i * 784 + r * 28 + c) as f32 * 0.37).sin()
        });
        let (t, c) = time(|| {
            let o = m.evaluate(&p, CnnInferInputs { x: x.view() }).unwrap();
            std::hint::black_box(o);
        });
        println!(
            "cnn_infer batch {b:3}: {:9.1} us wall, {:9.1} us CPU  {:6.1} GFLOP/s (CPU time)",
            t * 1e6,
            c * 1e6,
            cnn_flops(b) / c / 1e9
        );
        // the documented `prepare` / `evaluate_prepared` form (params copied and packed once)
        let (t, c) = time(|| {
            let o = m
                .evaluate_prepared(&prep, CnnInferInputs { x: x.view() })
                .unwrap();
            std::hint::black_box(o);
        });
        println!(
            "cnn_infer batch {b:3} (prepared): {:9.1} us wall, {:9.1} us CPU  {:6.1} GFLOP/s (CPU time)",
            t * 1e6,
            c * 1e6,
            cnn_flops(b) / c / 1e9
        );
    }
    let mt = CnnTrain::new()?;
    let pt = mt.randomize_params(0);
    let b = 64;
    let x = ndarray::Array4::from_shape_fn((b, 1, 28, 28), |(i, _, r, c)| {
        ((i * 784 + r * 28 + c) as f32 * 0.37).sin()
    });
    let y = ndarray::Array1::from_shape_fn(b, |i| (i % 10) as i64);
    let mut pt = pt;
    let mut opt = Sgd::new(0.01);
    let (t, c) = time(|| {
        let (_, g) = mt
            .evaluate_gradients(
                &pt,
                CnnTrainInputs {
                    x: x.view(),
                    label: y.view(),
                },
            )
            .unwrap();
        opt.step(&mut pt, &g).unwrap();
    });
    println!(
        "cnn_train batch {b:3} (forward + backward + SGD): {:9.1} us wall, {:9.1} us CPU  {:6.1} GFLOP/s (CPU time, 3x the forward's FLOPs)",
        t * 1e6,
        c * 1e6,
        3.0 * cnn_flops(b) / c / 1e9
    );
    if std::env::var("BENCH_PROFILE").is_ok_and(|v| v == "1") {
        let pm = CnnInferProf::new()?;
        let pp = pm.randomize_params(0);
        for _ in 0..20 {
            let o = pm.evaluate(&pp, CnnInferProfInputs { x: x.view() })?;
            std::hint::black_box(o);
        }
        println!("{}", pm.profile_report());
        // batch 1 (a fresh model, so its report holds batch-1 calls only)
        let pm = CnnInferProf::new()?;
        let x1 = x.slice(ndarray::s![..1, .., .., ..]).to_owned();
        for _ in 0..2000 {
            let o = pm.evaluate(&pp, CnnInferProfInputs { x: x1.view() })?;
            std::hint::black_box(o);
        }
        println!("batch 1:\n{}", pm.profile_report());
        let pm = CnnTrainProf::new()?;
        let mut pp = pm.randomize_params(0);
        for _ in 0..20 {
            let (_, g) = pm.evaluate_gradients(
                &pp,
                CnnTrainProfInputs {
                    x: x.view(),
                    label: y.view(),
                },
            )?;
            opt.step(&mut pp, &g)?;
        }
        println!("{}", pm.profile_report());
    }
    Ok(())
}
