//! MLP 784-256-128-10 (f32): inference and one training step (forward, mean softmax cross
//! entropy on integer labels, backward, SGD update with lr 0.01) at batch 1, 32, 256, 1024 —
//! the workloads of `../shared/anchors/bench_mlp.py`. Prints one anchor-format JSON line per
//! measurement (median of repeated timings) so `summarize.py` puts mithril in the same tables.
//!
//! `MITHRIL_THREADS=1 taskset -c 0 cargo run --release --example bench_mlp`

use mithril::prelude::*;
use mithril::rt::optim::{Optimizer, Sgd};
use ndarray::{Array1, Array2};
use std::time::Instant;

mithril! {
    /// The anchors' MLP.
    pub model Mlp {
        input x: f32[B, 784];
        let h = relu(Linear(256)(x));
        let h = relu(Linear(128)(h));
        output logits = Linear(10)(h);
    }

    /// One training step's loss.
    pub train MlpTrain {
        input x: f32[B, 784];
        input y: i64[B];
        let h = relu(Linear(256)(x));
        let h = relu(Linear(128)(h));
        loss cross_entropy(Linear(10)(h), y).mean();
    }

    /// The same MLP with bf16 weights and activations (f32 accumulation in the GEMM).
    pub compile MlpBf16 = Mlp { dtype: bf16, types: { x: bf16 } };

    /// And with f16 weights and activations.
    pub compile MlpF16 = Mlp { dtype: f16, types: { x: f16 } };

    /// The MLP specialized for batch 1 and 32 (`static_shapes`: constant dims, slices, direct
    /// kernel calls).
    pub compile MlpS1 = Mlp { shapes: { x: [1, 784] }, static_shapes: true };
    pub compile MlpS32 = Mlp { shapes: { x: [32, 784] }, static_shapes: true };

    /// A tiny MLP, where the per-call overhead is most of the time.
    pub model Tiny {
        input x: f32[B, 8];
        let h = relu(Linear(8)(x));
        let h = relu(Linear(8)(h));
        output y = Linear(4)(h);
    }
    pub compile TinyS1 = Tiny { shapes: { x: [1, 8] }, static_shapes: true };
    /// `Tiny` instrumented: what `code_transformers` and `profile` cost when they are on.
    pub compile TinyTimed = Tiny { code_transformers: [timing] };
    pub compile TinyHook = Tiny { code_transformers: [hook] };
    pub compile TinyProf = Tiny { profile: true };
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time `f` repeatedly for about `budget` seconds (after warm-up); median seconds per call.
fn bench(mut f: impl FnMut(), budget: f64) -> f64 {
    for _ in 0..3 {
        f();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < budget || times.len() < 5 {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
        if times.len() >= 2000 {
            break;
        }
    }
    median(times)
}

fn fwd_flops(b: usize) -> f64 {
    2.0 * b as f64 * (784.0 * 256.0 + 256.0 * 128.0 + 128.0 * 10.0)
}

/// As the anchors count it: forward, weight gradients of all layers, input gradients of
/// layers 2 and 3.
fn train_flops(b: usize) -> f64 {
    2.0 * fwd_flops(b) + 2.0 * b as f64 * (256.0 * 128.0 + 128.0 * 10.0)
}

pub fn main() -> mithril::Result<()> {
    let budget: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let infer = Mlp::new()?;
    let infer16 = MlpBf16::new()?;
    let p16 = infer16.randomize_params(0);
    let infer_h = MlpF16::new()?;
    let p_h = infer_h.randomize_params(0);
    // `MITHRIL_THREADS=1` for single-thread numbers (the library reads it; the default uses
    // every core for big GEMMs)
    // `BENCH_KIND=train` (or `infer`) measures one kind only.
    let kind = std::env::var("BENCH_KIND").unwrap_or_default();
    if kind != "train" {
        // per-call overhead: the 8-8-8-4 MLP at batch 1, generic and static
        let (m, s) = (Tiny::new()?, TinyS1::new()?);
        let (p, ps) = (m.randomize_params(0), s.randomize_params(0));
        let x = Array2::<f32>::ones((1, 8));
        let td = bench(
            || {
                let _ = m.evaluate(&p, TinyInputs { x: x.view() });
            },
            budget,
        );
        let ts = bench(
            || {
                let _ = s.evaluate(&ps, TinyS1Inputs { x: x.view() });
            },
            budget,
        );
        println!(
            "tiny 8-8-8-4 MLP, batch 1: generic {:.0} ns, static_shapes {:.0} ns ({:.1}x)",
            td * 1e9,
            ts * 1e9,
            td / ts
        );
        // instrumented (`BENCH_INSTRUMENTED=0` skips): `timing`, `hook` given no hook (the
        // plain `evaluate`), `hook` with a no-op hook, `profile`
        if std::env::var("BENCH_INSTRUMENTED").as_deref() != Ok("0") {
            struct Nop;
            impl mithril::rt::OpHook for Nop {}
            let (mt, mh, mp) = (TinyTimed::new()?, TinyHook::new()?, TinyProf::new()?);
            let (pt, ph, pp) = (
                mt.randomize_params(0),
                mh.randomize_params(0),
                mp.randomize_params(0),
            );
            let tt = bench(
                || {
                    let _ = mt.evaluate(&pt, TinyTimedInputs { x: x.view() });
                },
                budget,
            );
            let th = bench(
                || {
                    let _ = mh.evaluate(&ph, TinyHookInputs { x: x.view() });
                },
                budget,
            );
            let mut nop = Nop;
            let tn = bench(
                || {
                    let _ = mh.evaluate_with_hook(&mut nop, &ph, TinyHookInputs { x: x.view() });
                },
                budget,
            );
            let tp = bench(
                || {
                    let _ = mp.evaluate(&pp, TinyProfInputs { x: x.view() });
                },
                budget,
            );
            println!(
                "tiny instrumented, batch 1: timing {:.0} ns, hook unused {:.0} ns, no-op hook {:.0} ns, profile {:.0} ns",
                tt * 1e9,
                th * 1e9,
                tn * 1e9,
                tp * 1e9
            );
        }
    }
    let train = MlpTrain::new()?;
    let p = infer.randomize_params(0);
    let threads = mithril_kernels::gemm::num_threads();
    let mut tp = train.randomize_params(0);
    // `BENCH_BATCH=32` measures one batch size only (profiling).
    let batches: Vec<usize> = match std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(b) => vec![b],
        None => vec![1, 32, 256, 1024],
    };
    let (do_infer, do_train) = (kind != "train", kind != "infer");
    for b in batches {
        let x = Array2::from_shape_fn((b, 784), |(i, j)| {
            (((i * 784 + j) * 2654435761usize % 1000) as f32 / 500.0) - 1.0
        });
        let y = Array1::from_iter((0..b).map(|i| (i % 10) as i64));
        if do_infer {
            let t = bench(
                || {
                    let _ = infer.evaluate(&p, MlpInputs { x: x.view() });
                },
                budget,
            );
            println!(
                "JSON {{\"bench\": \"mlp_infer\", \"impl\": \"mithril-rs\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {t:.4e}, \"gflops\": {:.1}}}",
                fwd_flops(b) / t / 1e9
            );
            let x16 = x.mapv(mithril::half::bf16::from_f32);
            let t = bench(
                || {
                    let _ = infer16.evaluate(&p16, MlpBf16Inputs { x: x16.view() });
                },
                budget,
            );
            let ts = match b {
                1 => {
                    let (m, p) = (MlpS1::new()?, MlpS1::new()?.randomize_params(0));
                    Some(bench(
                        || {
                            let _ = m.evaluate(&p, MlpS1Inputs { x: x.view() });
                        },
                        budget,
                    ))
                }
                32 => {
                    let (m, p) = (MlpS32::new()?, MlpS32::new()?.randomize_params(0));
                    Some(bench(
                        || {
                            let _ = m.evaluate(&p, MlpS32Inputs { x: x.view() });
                        },
                        budget,
                    ))
                }
                _ => None,
            };
            if let Some(ts) = ts {
                println!(
                    "JSON {{\"bench\": \"mlp_infer\", \"impl\": \"mithril-rs-static\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {ts:.4e}, \"gflops\": {:.1}}}",
                    fwd_flops(b) / ts / 1e9
                );
            }
            println!(
                "JSON {{\"bench\": \"mlp_infer\", \"impl\": \"mithril-rs-bf16\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {t:.4e}, \"gflops\": {:.1}}}",
                fwd_flops(b) / t / 1e9
            );
            let xh = x.mapv(mithril::half::f16::from_f32);
            let t = bench(
                || {
                    let _ = infer_h.evaluate(&p_h, MlpF16Inputs { x: xh.view() });
                },
                budget,
            );
            println!(
                "JSON {{\"bench\": \"mlp_infer\", \"impl\": \"mithril-rs-f16\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {t:.4e}, \"gflops\": {:.1}}}",
                fwd_flops(b) / t / 1e9
            );
        }
        if !do_train {
            continue;
        }
        let mut opt = Sgd::new(0.01);
        let t = bench(
            || {
                if let Ok((_, g)) = train.evaluate_gradients(
                    &tp,
                    MlpTrainInputs {
                        x: x.view(),
                        y: y.view(),
                    },
                ) {
                    let _ = opt.step(&mut tp, &g);
                }
            },
            budget,
        );
        println!(
            "JSON {{\"bench\": \"mlp_train\", \"impl\": \"mithril-rs\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {t:.4e}, \"gflops\": {:.1}}}",
            train_flops(b) / t / 1e9
        );
    }
    Ok(())
}
