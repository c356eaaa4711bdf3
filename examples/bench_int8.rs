//! int8 benchmarks, ratios measured in one run on one thread: the int8 GEMM
//! (`mithril_kernels::qgemm`) against our f32 GEMM at n = 1024, and the MLP 784-256-128-10
//! inference with f32, bf16 and int8 (`quantization: int8`) weights at batch 1 and 256.
//!
//! `MITHRIL_THREADS=1 taskset -c 0 cargo run --release --example bench_int8`
//! (`gemm` or `mlp` as the first argument: only that part; `BENCH_BATCH=1`: the MLP at that
//! batch size only). The MLP runs twice: through the generic plan executor
//! (`rt::plan::set_chains(false)`) and through the chain fast path (the default). Times are
//! thread CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`, robust to a loaded machine), median (and fastest) of repeats.

use mithril::prelude::*;
use mithril_kernels::gemm as mg;
use mithril_kernels::qgemm::{self, QIsa, QPackedB};
use ndarray::Array2;

mithril! {
    /// The anchors' MLP.
    pub model Mlp {
        input x: f32[B, 784];
        let h = relu(Linear(256)(x));
        let h = relu(Linear(128)(h));
        output logits = Linear(10)(h);
    }

    /// The same MLP with bf16 weights and activations (f32 accumulation in the GEMM).
    pub compile MlpBf16 = Mlp { dtype: bf16, types: { x: bf16 } };

    /// The same MLP with int8 weights (per output channel) and int8 activations.
    pub compile MlpInt8 = Mlp { quantization: int8 };
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// (median, fastest) thread-CPU seconds per call of `f` over about `budget` seconds.
fn bench(mut f: impl FnMut(), budget: f64) -> (f64, f64) {
    let t0 = thread_cpu();
    f();
    let first = (thread_cpu() - t0).max(1e-7);
    let warm = ((0.05 / first) as usize).clamp(1, 2000);
    let t0 = thread_cpu();
    for _ in 0..warm {
        f();
    }
    // the per-call estimate after warm-up (the first call plans the workspace and is far
    // slower): enough calls per clock read that the read (a system call) stays under ~1 %
    let once = ((thread_cpu() - t0) / warm as f64).max(1e-7);
    let inner = ((2e-4 / once) as usize).clamp(1, 1000);
    let reps = ((budget / (once * inner as f64)) as usize).clamp(7, 2000);
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = thread_cpu();
        for _ in 0..inner {
            f();
        }
        v.push((thread_cpu() - t) / inner as f64);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    (v[v.len() / 2], v[0])
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (((self.0 >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0) as f32
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

fn gemm_part(budget: f64) {
    let n = 1024;
    let mut g = Lcg(1);
    let (a, w) = (g.vec(n * n), g.vec(n * n));
    let mut c = vec![0f32; n * n];
    let fl = 2.0 * (n * n * n) as f64;
    // f32: C = A·Wᵀ (a Linear layer's layout)
    let (t32, m32) = bench(
        || {
            mg::gemm(
                n,
                n,
                n,
                1.0,
                &a,
                n,
                1,
                &w,
                1,
                n,
                false,
                &mut c,
                n,
                |_, _, _| {},
            )
        },
        budget,
    );
    let b = QPackedB::quantize(n, n, &w, 1, n);
    let kp = b.k_padded();
    let mut aq = vec![0u8; n * kp];
    let mut cs = vec![0f32; n];
    let isa = QIsa::active();
    // the whole int8 product: activation max-abs and quantization, integer GEMM, dequantize
    let (t8, m8) = bench(
        || {
            let (inv, sa) = qgemm::inv_and_scale(qgemm::max_abs(n, n, &a, n, 1));
            qgemm::quantize_a(n, n, &a, n, 1, inv, &mut aq, kp);
            for (d, s) in cs.iter_mut().zip(b.scales()) {
                *d = sa * s;
            }
            qgemm::qgemm(isa, n, &aq, kp, &b, &cs, &mut c, n, |_, _, _| {});
        },
        budget,
    );
    // the integer GEMM alone (A already quantized)
    let (ti, mi) = bench(
        || qgemm::qgemm(isa, n, &aq, kp, &b, &cs, &mut c, n, |_, _, _| {}),
        budget,
    );
    println!(
        "gemm n={n}, 1 thread ({isa:?}): f32 {:.2} ms ({:.1} GFLOP/s; fastest {:.2}), int8 with activation quantization {:.2} ms ({:.1} GOP/s; fastest {:.2}) = {:.2}x, int8 GEMM alone {:.2} ms (fastest {:.2}) = {:.2}x",
        t32 * 1e3,
        fl / t32 / 1e9,
        m32 * 1e3,
        t8 * 1e3,
        fl / t8 / 1e9,
        m8 * 1e3,
        t32 / t8,
        ti * 1e3,
        mi * 1e3,
        t32 / ti
    );
}

fn mlp_part(budget: f64) -> mithril::Result<()> {
    let f32m = Mlp::new()?;
    let bf = MlpBf16::new()?;
    let q8 = MlpInt8::new()?;
    let p = f32m.randomize_params(0);
    let p16 = bf.randomize_params(0);
    let pq = q8.quantize(&q8.randomize_params(0))?;
    // `BENCH_BATCH=1`: one batch size only (for profiling)
    let batches: Vec<usize> = match std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(b) => vec![b],
        None => vec![1, 256],
    };
    for b in batches {
        let x = Array2::from_shape_fn((b, 784), |(i, j)| {
            (((i * 784 + j) * 2654435761usize % 1000) as f32 / 500.0) - 1.0
        });
        let x16 = x.mapv(mithril::half::bf16::from_f32);
        // the generic plan executor first, then the chain fast path (the default; bitwise
        // the same results), in the same run
        // (`BENCH_CHAINS=only`: the fast path only, for profiling)
        let only = std::env::var("BENCH_CHAINS").is_ok_and(|v| v == "only");
        for chains in [false, true] {
            if only && !chains {
                continue;
            }
            mithril::rt::plan::set_chains(chains);
            let (t32, m32) = bench(
                || {
                    let _ = f32m.evaluate(&p, MlpInputs { x: x.view() });
                },
                budget,
            );
            let (t16, m16) = bench(
                || {
                    let _ = bf.evaluate(&p16, MlpBf16Inputs { x: x16.view() });
                },
                budget,
            );
            let (t8, m8) = bench(
                || {
                    let _ = q8.evaluate_quantized(&pq, MlpInt8Inputs { x: x.view() });
                },
                budget,
            );
            let path = if chains {
                "chain fast path"
            } else {
                "generic executor"
            };
            println!(
                "mlp 784-256-128-10 batch {b}, 1 thread, {path}: f32 {:.2} us (fastest {:.2}), bf16 {:.2} us (fastest {:.2}) = {:.2}x f32 time, int8 {:.2} us (fastest {:.2}) = {:.2}x f32 time; speedups: int8/f32 {:.2}x, int8/bf16 {:.2}x",
                t32 * 1e6,
                m32 * 1e6,
                t16 * 1e6,
                m16 * 1e6,
                t16 / t32,
                t8 * 1e6,
                m8 * 1e6,
                t8 / t32,
                t32 / t8,
                t16 / t8
            );
            // the three models interleaved, round after round: each round's ratios are taken
            // over the same few milliseconds, so a load change on the shared machine moves
            // the three alike (the medians above are measured one model after the other)
            let [r16, r8] = interleaved(
                [
                    &mut || {
                        let _ = f32m.evaluate(&p, MlpInputs { x: x.view() });
                    },
                    &mut || {
                        let _ = bf.evaluate(&p16, MlpBf16Inputs { x: x16.view() });
                    },
                    &mut || {
                        let _ = q8.evaluate_quantized(&pq, MlpInt8Inputs { x: x.view() });
                    },
                ],
                [t32, t16, t8],
                budget * 3.0,
            );
            println!(
                "  interleaved rounds, {path}: bf16 / f32 median {:.3} (quartiles {:.3}..{:.3}), int8 / f32 median {:.3} (quartiles {:.3}..{:.3})",
                r16[1], r16[0], r16[2], r8[1], r8[0], r8[2]
            );
        }
    }
    Ok(())
}

/// Rounds of `fs[0]`, `fs[1]`, `fs[2]` (each about 0.2 ms of calls, from the per-call
/// estimates `once`) over about `budget` seconds: the (lower quartile, median, upper quartile)
/// of the per-round time ratios `fs[1] / fs[0]` and `fs[2] / fs[0]`.
fn interleaved(fs: [&mut dyn FnMut(); 3], once: [f64; 3], budget: f64) -> [[f64; 3]; 2] {
    let inner = once.map(|o| ((2e-4 / o.max(1e-7)) as usize).clamp(1, 1000));
    let round: f64 = (0..3).map(|i| once[i] * inner[i] as f64).sum();
    let rounds = ((budget / round.max(1e-7)) as usize).clamp(9, 5000);
    let mut fs = fs;
    let mut ratios = [Vec::with_capacity(rounds), Vec::with_capacity(rounds)];
    for _ in 0..rounds {
        let mut t = [0f64; 3];
        for (i, f) in fs.iter_mut().enumerate() {
            let t0 = thread_cpu();
            for _ in 0..inner[i] {
                f();
            }
            t[i] = (thread_cpu() - t0) / inner[i] as f64;
        }
        ratios[0].push(t[1] / t[0]);
        ratios[1].push(t[2] / t[0]);
    }
    ratios.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        [v[v.len() / 4], v[v.len() / 2], v[v.len() * 3 / 4]]
    })
}

pub fn main() -> mithril::Result<()> {
    let budget: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    mg::set_num_threads(1);
    let part = std::env::args().nth(1).unwrap_or_default();
    if part != "mlp" {
        gemm_part(budget);
    }
    if part != "gemm" {
        mlp_part(budget)?;
    }
    Ok(())
}
