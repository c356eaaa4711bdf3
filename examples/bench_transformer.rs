//! The pre-LN transformer encoder block of `../shared/anchors/bench_transformer.py` (seq 128,
//! d_model 256, 4 heads of 64, MLP 1024 with tanh GELU, LayerNorm eps 1e-5, f32): inference at
//! batch 1 and 8, one training step (forward, mean-square loss, backward, SGD) at batch 8; and
//! `attention` alone at seq 2048, head_dim 64, causal, against the unfused form written with our
//! own primitives (matmul, mask, softmax, matmul), with GFLOP/s over the non-masked work next to
//! the single-core AVX-512 FMA peak. One anchor-format JSON line per measurement (medians).
//!
//! `MITHRIL_THREADS=1 taskset -c 0 cargo run --release --example bench_transformer`

use mithril::prelude::*;
use mithril::rt::optim::{Optimizer, Sgd};
use ndarray::{Array3, Array4};
use std::hint::black_box;
use std::time::Instant;

mithril! {
    /// The anchors' block: `TransformerEncoderBlock` of the library.
    pub model Block {
        input x: f32[B, 128, 256];
        let blk = TransformerEncoderBlock(256, 4, dim_feedforward = 1024, activation = "gelu_tanh");
        output y = blk(x);
    }

    /// `BENCH_PROFILE=1`: the per-op profile of the batch-1 inference.
    pub compile BlockProf = Block { profile: true, inference: true };

    /// One training step's loss through the block.
    pub train BlockTrain {
        input x: f32[B, 128, 256];
        let blk = TransformerEncoderBlock(256, 4, dim_feedforward = 1024, activation = "gelu_tanh");
        loss square(blk(x)).mean();
    }

    /// Fused attention.
    pub model Fused {
        input q: f32[B, H, S, 64];
        input k: f32[B, H, S, 64];
        input v: f32[B, H, S, 64];
        output o = attention(q, k, v, causal = true);
    }

    /// The same with our primitives, unfused: an `[S, S]` score matrix per head.
    pub model Unfused {
        input q: f32[B, H, S, 64];
        input k: f32[B, H, S, 64];
        input v: f32[B, H, S, 64];
        let s = matmul(q, k.transpose(axes = [0, 1, 3, 2])) * 0.125;
        let keep = reshape(arange(S), [S, 1]) >= reshape(arange(S), [1, S]);
        let p = softmax(where_(keep, s, -1e30), axis = -1);
        output o = matmul(p, v);
    }
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
fn bench_cpu(mut f: impl FnMut(), budget: f64) -> (f64, f64) {
    for _ in 0..2 {
        f();
    }
    let (mut wall, mut cpu) = (Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < budget || wall.len() < 5 {
        let (t, c) = (Instant::now(), process_cpu());
        f();
        cpu.push(process_cpu() - c);
        wall.push(t.elapsed().as_secs_f64());
    }
    (median(wall), median(cpu))
}

/// 24 independent zmm FMA chains: `iters` × 24 × 16 FMAs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn peak_run(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 24];
    let x = _mm512_set1_ps(0.999_999);
    let y = _mm512_set1_ps(1e-7);
    for _ in 0..iters {
        for a in acc.iter_mut() {
            *a = _mm512_fmadd_ps(*a, x, y);
        }
    }
    let mut s = _mm512_setzero_ps();
    for a in acc {
        s = _mm512_add_ps(s, a);
    }
    _mm512_reduce_add_ps(s)
}

/// Single-core AVX-512 f32 FMA peak in GFLOP/s (process CPU time).
fn fma_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let iters = 1_000_000;
        // SAFETY: AVX-512F checked above.
        // process CPU time (on a shared machine, wall time counts the waits)
        let (_, t) = bench_cpu(
            || {
                black_box(unsafe { peak_run(black_box(iters)) });
            },
            0.5,
        );
        return Some(24.0 * 16.0 * 2.0 * iters as f64 / t / 1e9);
    }
    None
}

const S: usize = 128;
const D: usize = 256;
const F: usize = 1024;

/// As the anchors count it.
fn block_flops(b: usize) -> f64 {
    let (s, d, f) = (S as f64, D as f64, F as f64);
    b as f64
        * (2.0 * s * d * 3.0 * d
            + 2.0 * (2.0 * s * s * d)
            + 2.0 * s * d * d
            + 2.0 * (2.0 * s * d * f))
}

fn data(shape: (usize, usize, usize), salt: f32) -> Array3<f32> {
    Array3::from_shape_fn(shape, |(a, b, c)| {
        ((a * 131 + b * 17 + c) as f32 * 0.37 + salt).sin()
    })
}

pub fn main() -> mithril::Result<()> {
    let budget: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let threads = mithril_kernels::gemm::num_threads();
    let peak = fma_peak();
    if let Some(p) = peak {
        println!("# single-core AVX-512 FMA peak: {p:.1} GFLOP/s");
    }
    let m = Block::new()?;
    let p = m.randomize_params(0);
    if std::env::var("BENCH_PROFILE").is_ok_and(|v| v == "1") {
        let pm = BlockProf::new()?;
        let pp = pm.randomize_params(0);
        let x = data((1, S, D), 0.1);
        for _ in 0..3 {
            let _ = pm.evaluate(&pp, BlockProfInputs { x: x.view() })?;
        }
        pm.reset_instrumentation();
        for _ in 0..50 {
            let _ = black_box(pm.evaluate(&pp, BlockProfInputs { x: x.view() })?);
        }
        println!("{}", pm.profile_report());
        return Ok(());
    }
    // `BENCH_ONLY=infer1`: only the batch-1 inference row; `train`: only the training step;
    // `attention`: only the attention rows (the peak is measured either way)
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let batches: &[usize] = match only.as_str() {
        "infer1" => &[1],
        "attention" => &[],
        _ => &[1, 8],
    };
    for &b in batches {
        let x = data((b, S, D), 0.1);
        let (t, c) = bench_cpu(
            || {
                let _ = black_box(m.evaluate(&p, BlockInputs { x: x.view() }));
            },
            budget,
        );
        println!(
            "JSON {{\"bench\": \"transformer_infer\", \"impl\": \"mithril-rs\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {t:.4e}, \"cpu_s\": {c:.4e}, \"gflops\": {:.1}}}",
            block_flops(b) / t / 1e9
        );
        // the same with the weights packed once (`prepare`; bitwise the same outputs)
        let prepared = m.prepare(&p)?;
        let (t, c) = bench_cpu(
            || {
                let _ = black_box(m.evaluate_prepared(&prepared, BlockInputs { x: x.view() }));
            },
            budget,
        );
        println!(
            "JSON {{\"bench\": \"transformer_infer\", \"impl\": \"mithril-rs-prepared\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {t:.4e}, \"cpu_s\": {c:.4e}, \"gflops\": {:.1}}}",
            block_flops(b) / t / 1e9
        );
    }
    if only.is_empty() || only == "train" {
        let b = 8;
        let tm = BlockTrain::new()?;
        let mut tp = tm.randomize_params(0);
        let x = data((b, S, D), 0.2);
        let mut opt = Sgd::new(1e-3);
        let (t, c) = bench_cpu(
            || {
                if let Ok((_, g)) = tm.evaluate_gradients(&tp, BlockTrainInputs { x: x.view() }) {
                    let _ = opt.step(&mut tp, &g);
                }
            },
            budget,
        );
        println!(
            "JSON {{\"bench\": \"transformer_train\", \"impl\": \"mithril-rs\", \"threads\": {threads}, \"batch\": {b}, \"median_s\": {t:.4e}, \"cpu_s\": {c:.4e}, \"gflops\": {:.1}}}",
            3.0 * block_flops(b) / t / 1e9
        );
    }
    if only.is_empty() || only == "attention" {
        let (b, h, s, d) = (1usize, 2usize, 2048usize, 64usize);
        let mk = |salt: f32| {
            Array4::from_shape_fn((b, h, s, d), |(_, hh, i, c)| {
                ((hh * 7 + i * 13 + c) as f32 * 0.011 + salt).sin()
            })
        };
        let (q, k, v) = (mk(0.1), mk(0.5), mk(0.9));
        // the non-masked work: QKᵀ and PV over the lower triangle (with the diagonal)
        let flops = (b * h) as f64 * 2.0 * 2.0 * d as f64 * (s * (s + 1) / 2) as f64;
        let (fm, um) = (Fused::new()?, Unfused::new()?);
        let (pf, pu) = (fm.randomize_params(0), um.randomize_params(0));
        let of = fm.evaluate(
            &pf,
            FusedInputs {
                q: q.view(),
                k: k.view(),
                v: v.view(),
            },
        )?;
        let ou = um.evaluate(
            &pu,
            UnfusedInputs {
                q: q.view(),
                k: k.view(),
                v: v.view(),
            },
        )?;
        let diff =
            of.o.iter()
                .zip(ou.o.iter())
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
        println!("# fused vs unfused max |diff|: {diff:e}");
        let (_, tf) = bench_cpu(
            || {
                let _ = black_box(fm.evaluate(
                    &pf,
                    FusedInputs {
                        q: q.view(),
                        k: k.view(),
                        v: v.view(),
                    },
                ));
            },
            budget,
        );
        let (_, tu) = bench_cpu(
            || {
                let _ = black_box(um.evaluate(
                    &pu,
                    UnfusedInputs {
                        q: q.view(),
                        k: k.view(),
                        v: v.view(),
                    },
                ));
            },
            budget,
        );
        for (name, t) in [("mithril-rs attention", tf), ("mithril-rs unfused", tu)] {
            let g = flops / t / 1e9;
            let pct = peak
                .map(|p| format!(", \"of_peak\": {:.2}", g / p))
                .unwrap_or_default();
            println!(
                "JSON {{\"bench\": \"attention_causal\", \"impl\": \"{name}\", \"threads\": {threads}, \"seq\": {s}, \"heads\": {h}, \"cpu_s\": {t:.4e}, \"gflops\": {g:.1}{pct}}}"
            );
        }
        println!("# fused / unfused speedup: {:.2}x", tu / tf);
    }
    Ok(())
}
