//! GEMM benchmark: mithril's packed GEMM (`mithril_kernels::gemm`) against the `gemm` crate and
//! ndarray (matrixmultiply) in the same process, f32 at n = 64, 256, 1024, 2048 with 1 and 2
//! threads, bf16/f16 at 1024, the batch-1 GEMV of a `Linear` layer and the whole batch-1 MLP
//! 784-256-128-10 (bias + relu fused as epilogues), and the single-core AVX-512 FMA peak
//! (a register-only FMA loop) that our GEMM is reported against.
//!
//! `taskset -c 0 cargo run --release --features bench-peers --example bench_gemm -- 1` (one-thread
//! numbers); `cargo run --release --features bench-peers --example bench_gemm -- 2` (two threads).
//! No argument: both; `gemv`: only the batch-1 GEMV/MLP lines. The `bench-peers` feature brings
//! in the `gemm` crate, so plain `cargo test` does not build it.
//! Prints human lines and anchor-format `JSON {...}` lines (medians over repeated timings).

// AVX-512 intrinsics are stable since Rust 1.89 (as in mithril-kernels, which needs 1.89 too);
// the workspace's declared rust-version is older.
#![allow(clippy::incompatible_msrv)]

use half::{bf16, f16};
use mithril_kernels::gemm::{self as mg, AccElem, GemmElem};
use ndarray::Array2;
use std::hint::black_box;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let min = v[0];
    MIN.with(|m| m.set(min));
    v[v.len() / 2]
}

thread_local! {
    /// The fastest repetition of the last `bench` (tuning under load: less noisy than the median).
    static MIN: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

fn last_min() -> f64 {
    MIN.with(|m| m.get())
}

/// Median seconds per call of `f` over about `budget` seconds (at least 5 timed calls).
fn bench(mut f: impl FnMut(), budget: f64) -> f64 {
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64();
    let warm = ((0.05 / once.max(1e-9)) as usize).clamp(1, 1000);
    for _ in 0..warm {
        f();
    }
    // Batch very short calls so the timer resolution does not matter.
    let inner = ((2e-5 / once.max(1e-9)) as usize).clamp(1, 10_000);
    let reps = ((budget / (once * inner as f64).max(1e-9)) as usize).clamp(5, 2000);
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        for _ in 0..inner {
            f();
        }
        v.push(t.elapsed().as_secs_f64() / inner as f64);
    }
    median(v)
}

/// CPU time of the calling thread (excludes time the thread was not scheduled).
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// CPU time of the whole process (all threads).
fn process_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Median thread-CPU seconds per call of `f` (single-threaded code only), `reps` timed
/// batches of `inner` calls.
fn bench_cpu(mut f: impl FnMut(), reps: usize, inner: usize) -> f64 {
    f();
    let mut v = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = thread_cpu();
        for _ in 0..inner {
            f();
        }
        v.push((thread_cpu() - t) / inner as f64);
    }
    median(v)
}

fn json(bench: &str, imp: &str, threads: usize, n: usize, s: f64, flops: f64) {
    println!(
        "JSON {{\"bench\": \"{bench}\", \"impl\": \"{imp}\", \"threads\": {threads}, \"n\": {n}, \"median_s\": {s:.9}, \"gflops\": {:.2}}}",
        flops / s / 1e9
    );
}

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// 24 independent zmm FMA chains, register-only: `iters` × 24 × 16 FMAs.
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

/// Sum of `w` with 8 independent AVX-512 accumulators (a read-bandwidth probe).
fn read_sum(w: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        #[target_feature(enable = "avx512f")]
        unsafe fn go(w: &[f32]) -> f32 {
            use std::arch::x86_64::*;
            let mut acc = [_mm512_setzero_ps(); 8];
            let chunks = w.chunks_exact(128);
            for ch in chunks {
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_add_ps(*a, _mm512_loadu_ps(ch.as_ptr().add(16 * i)));
                }
            }
            let mut s = _mm512_setzero_ps();
            for a in acc {
                s = _mm512_add_ps(s, a);
            }
            _mm512_reduce_add_ps(s)
        }
        // SAFETY: AVX-512F checked above.
        return unsafe { go(w) };
    }
    w.iter().sum()
}

/// Single-core AVX-512 f32 FMA peak in GFLOP/s (wall-clock median).
#[cfg(target_arch = "x86_64")]
fn fma_peak() -> Option<f64> {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return None;
    }
    let iters = 2_000_000;
    let t = bench(
        || {
            // SAFETY: AVX-512F checked above.
            black_box(unsafe { peak_run(black_box(iters)) });
        },
        1.0,
    );
    let best = 24.0 * 16.0 * 2.0 * iters as f64 / last_min() / 1e9;
    PEAK_MIN.with(|m| m.set(best));
    Some(24.0 * 16.0 * 2.0 * iters as f64 / t / 1e9)
}

/// The same peak measured in thread CPU time (robust to other processes on the core).
#[cfg(target_arch = "x86_64")]
fn fma_peak_cpu() -> Option<f64> {
    if !std::arch::is_x86_feature_detected!("avx512f") {
        return None;
    }
    let it = 2_000_000;
    // SAFETY: AVX-512F checked above.
    let t = bench_cpu(
        || {
            black_box(unsafe { peak_run(black_box(it)) });
        },
        20,
        1,
    );
    Some(24.0 * 16.0 * 2.0 * it as f64 / t / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak_cpu() -> Option<f64> {
    None
}

thread_local! {
    /// FMA peak from the fastest repetition.
    static PEAK_MIN: std::cell::Cell<f64> = const { std::cell::Cell::new(f64::NAN) };
}

#[cfg(not(target_arch = "x86_64"))]
fn fma_peak() -> Option<f64> {
    None
}

fn ours<T: GemmElem>(n: usize, a: &[T], b: &[T], c: &mut [T]) {
    mg::gemm_plain(
        n,
        n,
        n,
        <T as GemmElem>::Acc::ONE,
        a,
        n,
        1,
        b,
        n,
        1,
        false,
        c,
        n,
    );
}

fn main() {
    let arg1 = std::env::args().nth(1);
    let only_gemv = arg1.as_deref() == Some("gemv");
    // `ours N`: only our f32 GEMM at size N, one thread (profiling); `bf16 N`: bf16 vs f32.
    if arg1.as_deref() == Some("bf16") {
        let n: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1024);
        mg::set_num_threads(1);
        let mut g = Lcg(1);
        let (a, b) = (g.vec(n * n), g.vec(n * n));
        let mut c = vec![0f32; n * n];
        let fl = 2.0 * (n * n * n) as f64;
        let reps = (2e10 / fl) as usize + 5;
        let t32 = bench_cpu(|| ours(n, &a, &b, &mut c), reps, 1);
        let ab: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
        let bb: Vec<bf16> = b.iter().map(|&x| bf16::from_f32(x)).collect();
        let mut cb = vec![bf16::ZERO; n * n];
        let t16 = bench_cpu(|| ours(n, &ab, &bb, &mut cb), reps, 1);
        let ah: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
        let bh: Vec<f16> = b.iter().map(|&x| f16::from_f32(x)).collect();
        let mut ch = vec![f16::ZERO; n * n];
        let th = bench_cpu(|| ours(n, &ah, &bh, &mut ch), reps, 1);
        println!(
            "n={n} CPU-time: f32 {:.1}, bf16 {:.1} ({:.2}x), f16 {:.1} GFLOP/s",
            fl / t32 / 1e9,
            fl / t16 / 1e9,
            t32 / t16,
            fl / th / 1e9
        );
        return;
    }
    // `linear M`: Linear's forward product `[M, 784] × Wᵀ` (W `[256, 784]` row-major, so B's
    // k is contiguous) next to the same product with a row-major `[784, 256]` B, one thread.
    if arg1.as_deref() == Some("linear") {
        let m: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(32);
        let (k, n) = (784, 256);
        mg::set_num_threads(1);
        let mut g = Lcg(1);
        let (x, w) = (g.vec(m * k), g.vec(n * k));
        let mut c = vec![0f32; m * n];
        let fl = 2.0 * (m * n * k) as f64;
        let t_wt = bench(
            || mg::gemm_plain(m, n, k, 1.0, &x, k, 1, &w, 1, k, false, &mut c, n),
            2.0,
        );
        let t_rm = bench(
            || mg::gemm_plain(m, n, k, 1.0, &x, k, 1, &w, n, 1, false, &mut c, n),
            2.0,
        );
        // The weight gradient `dYᵀ · x` (`[256, m] × [m, 784]`, k = m; dY `[m, 256]` row-major).
        let dy = g.vec(m * n);
        let mut dw = vec![0f32; n * k];
        let t_dw = bench(
            || mg::gemm_plain(n, k, m, 1.0, &dy, 1, n, &x, k, 1, false, &mut dw, k),
            2.0,
        );
        println!(
            "linear m={m}: x·Wᵀ {:.1} us ({:.1} GFLOP/s), row-major B {:.1} us ({:.1} GFLOP/s), dYᵀ·x {:.1} us ({:.1} GFLOP/s)",
            t_wt * 1e6,
            fl / t_wt / 1e9,
            t_rm * 1e6,
            fl / t_rm / 1e9,
            t_dw * 1e6,
            fl / t_dw / 1e9
        );
        return;
    }
    // `train M`: the eight products of the MLP 784-256-128-10 training step at batch M (the
    // layouts the generated code passes: weights `[out, in]` row-major), one thread.
    if arg1.as_deref() == Some("train") {
        let bm: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(32);
        mg::set_num_threads(1);
        let mut g = Lcg(2);
        // (name, m, n, k, rsa, csa, rsb, csb)
        type Shape = (
            &'static str,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
            usize,
        );
        let shapes: [Shape; 8] = [
            ("x·W1ᵀ", bm, 256, 784, 784, 1, 1, 784),
            ("h1·W2ᵀ", bm, 128, 256, 256, 1, 1, 256),
            ("h2·W3ᵀ", bm, 10, 128, 128, 1, 1, 128),
            ("dYᵀ·h2", 10, 128, bm, 1, 10, 128, 1),
            ("dY·W3", bm, 128, 10, 10, 1, 128, 1),
            ("dh2ᵀ·h1", 128, 256, bm, 1, 128, 256, 1),
            ("dh2·W2", bm, 256, 128, 128, 1, 256, 1),
            ("dh1ᵀ·x", 256, 784, bm, 1, 256, 784, 1),
        ];
        let mut total = 0.0;
        for (name, m, n, k, rsa, csa, rsb, csb) in shapes {
            let a = g.vec(m * k);
            let b = g.vec(k * n);
            let mut c = vec![0f32; m * n];
            let t = bench(
                || mg::gemm_plain(m, n, k, 1.0, &a, rsa, csa, &b, rsb, csb, false, &mut c, n),
                1.0,
            );
            total += t;
            println!(
                "train b={bm} {name:8} m={m:5} n={n:4} k={k:5}: {:8.1} us {:6.1} GFLOP/s",
                t * 1e6,
                2.0 * (m * n * k) as f64 / t / 1e9
            );
        }
        println!("train b={bm} products total {:.1} us", total * 1e6);
        return;
    }
    // `encoder [ROUNDS]`: the batch-1 encoder block's four products (`M = 128` rows, weights
    // `[out, in]` row-major read as `Wᵀ`, packed once as `prepare` does) with a bias epilogue,
    // in thread CPU time next to the FMA peak measured in the same rounds, one thread.
    if arg1.as_deref() == Some("encoder") {
        let rounds: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(3);
        mg::set_num_threads(1);
        let mut g = Lcg(3);
        // (name, m, k, n)
        let shapes = [
            ("in_proj", 128, 256, 768),
            ("out_proj", 128, 256, 256),
            ("linear1", 128, 256, 1024),
            ("linear2", 128, 1024, 256),
        ];
        let data: Vec<_> = shapes
            .iter()
            .map(|&(_, m, k, n)| {
                let (x, w, bias) = (g.vec(m * k), g.vec(n * k), g.vec(n));
                let pw = mg::pack_b(k, n, &w, 1, k);
                (x, w, bias, pw)
            })
            .collect();
        for round in 0..rounds {
            let pcpu = fma_peak_cpu().unwrap_or(f64::NAN);
            let mut line = format!("round {round}: peak {pcpu:.1}");
            for (&(name, m, k, n), (x, w, bias, pw)) in shapes.iter().zip(&data) {
                let mut c = vec![0f32; m * n];
                let fl = 2.0 * (m * n * k) as f64;
                let reps = (3e9 / fl) as usize + 5;
                let t = bench_cpu(
                    || {
                        mg::gemm_prepacked(
                            m,
                            n,
                            k,
                            1.0,
                            x,
                            k,
                            1,
                            w,
                            1,
                            k,
                            pw,
                            false,
                            &mut c,
                            n,
                            |_, j, v: &mut [f32]| {
                                for (x, b) in v.iter_mut().zip(&bias[j..]) {
                                    *x += *b;
                                }
                            },
                        )
                    },
                    reps,
                    4,
                );
                let gf = fl / t / 1e9;
                line += &format!(
                    " | {name} {:.1} us {gf:.1} GF/s {:.1}%",
                    t * 1e6,
                    100.0 * gf / pcpu
                );
            }
            println!("{line}");
        }
        return;
    }
    // `scale N`: our f32 GEMM at size N with 1 and 2 threads (wall-clock medians).
    if arg1.as_deref() == Some("scale") {
        let n: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(2048);
        let mut g = Lcg(1);
        let (a, b) = (g.vec(n * n), g.vec(n * n));
        let mut c = vec![0f32; n * n];
        let fl = 2.0 * (n * n * n) as f64;
        for round in 0..2 {
            let mut ts = vec![];
            let mut cpu = vec![];
            for threads in [1, 2] {
                mg::set_num_threads(threads);
                let p0 = process_cpu();
                let w0 = Instant::now();
                let mut calls = 0;
                ts.push(bench(
                    || {
                        calls += 1;
                        ours(n, &a, &b, &mut c)
                    },
                    4.0,
                ));
                let (pc, wall) = (process_cpu() - p0, w0.elapsed().as_secs_f64());
                cpu.push(pc / calls as f64);
                println!(
                    "  threads {threads}: process CPU {:.2} ms per call, CPU/wall {:.2}",
                    1e3 * pc / calls as f64,
                    pc / wall
                );
            }
            println!(
                "round {round} n={n}: 1 thread {:.1}, 2 threads {:.1} GFLOP/s: {:.2}x",
                fl / ts[0] / 1e9,
                fl / ts[1] / 1e9,
                ts[0] / ts[1]
            );
        }
        return;
    }
    if arg1.as_deref() == Some("ours") {
        let n: usize = std::env::args()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .unwrap_or(1024);
        mg::set_num_threads(1);
        let mut g = Lcg(1);
        let (a, b) = (g.vec(n * n), g.vec(n * n));
        let mut c = vec![0f32; n * n];
        let peak = fma_peak().unwrap_or(f64::NAN);
        let pmin = PEAK_MIN.with(|m| m.get());
        let t = bench(|| ours(n, &a, &b, &mut c), 3.0);
        let tmin = last_min();
        let gf = 2.0 * (n * n * n) as f64 / t / 1e9;
        let gmin = 2.0 * (n * n * n) as f64 / tmin / 1e9;
        let fl = 2.0 * (n * n * n) as f64;
        let reps = (2e10 / fl) as usize + 5;
        let pcpu = fma_peak_cpu().unwrap_or(f64::NAN);
        let gcpu = fl / bench_cpu(|| ours(n, &a, &b, &mut c), reps, 1) / 1e9;
        println!(
            "n={n}: CPU-time {gcpu:.1} GFLOP/s of CPU-time peak {pcpu:.1} = {:.1}%",
            100.0 * gcpu / pcpu
        );
        println!(
            "n={n}: median {gf:.1} GFLOP/s (peak {peak:.1}: {:.1}%); best {gmin:.1} (best peak {pmin:.1}: {:.1}%)",
            100.0 * gf / peak,
            100.0 * gmin / pmin
        );
        return;
    }
    let thread_counts: Vec<usize> = match arg1.and_then(|s| s.parse().ok()) {
        Some(t) => vec![t],
        None if only_gemv => vec![],
        None => vec![1, 2],
    };
    println!(
        "isa {:?}, available threads {}",
        mg::detected_isa(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let peak = if only_gemv { None } else { fma_peak() };
    if let Some(p) = peak {
        println!("AVX-512 f32 FMA peak (1 core, register-only): {p:.1} GFLOP/s");
        json("fma-peak", "avx512-fma", 1, 0, 1.0 / p, 1e9);
    }
    let mut g = Lcg(42);
    let mut ours_1024 = 0.0;
    for &threads in &thread_counts {
        mg::set_num_threads(threads);
        for n in [64usize, 256, 1024, 2048] {
            let flops = 2.0 * (n * n * n) as f64;
            let budget = if n >= 1024 { 3.0 } else { 1.0 };
            let a = g.vec(n * n);
            let b = g.vec(n * n);
            let mut c = vec![0f32; n * n];
            let t = bench(|| ours(n, &a, &b, &mut c), budget);
            let gf = flops / t / 1e9;
            let pct = peak.map_or(String::new(), |p| {
                format!(
                    " ({:.1}% of {} x peak)",
                    100.0 * gf / (p * threads as f64),
                    threads
                )
            });
            println!(
                "mithril-rs  f32 n={n:5} threads={threads}: {:9.3} ms {gf:7.1} GFLOP/s{pct}",
                t * 1e3
            );
            json("gemm", "mithril-rs", threads, n, t, flops);
            if n == 1024 && threads == 1 {
                ours_1024 = t;
            }
            // Cross-check against the gemm crate's result.
            let mut c2 = vec![0f32; n * n];
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            let run_gemm = |c2: &mut [f32]| unsafe {
                gemm::gemm(
                    n,
                    n,
                    n,
                    c2.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    1,
                    n as isize,
                    b.as_ptr(),
                    1,
                    n as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                )
            };
            let t = bench(|| run_gemm(&mut c2), budget);
            let err = c
                .iter()
                .zip(&c2)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            println!(
                "gemm-crate  f32 n={n:5} threads={threads}: {:9.3} ms {:7.1} GFLOP/s (max |ours - theirs| = {err:.2e})",
                t * 1e3,
                flops / t / 1e9
            );
            json("gemm", "gemm-crate", threads, n, t, flops);
            if threads == 1 {
                let an = Array2::from_shape_vec((n, n), a.clone()).unwrap();
                let bn = Array2::from_shape_vec((n, n), b.clone()).unwrap();
                let mut cn = Array2::<f32>::zeros((n, n));
                let t = bench(
                    || ndarray::linalg::general_mat_mul(1.0, &an, &bn, 0.0, &mut cn),
                    budget,
                );
                println!(
                    "ndarray     f32 n={n:5} threads=1: {:9.3} ms {:7.1} GFLOP/s",
                    t * 1e3,
                    flops / t / 1e9
                );
                json("gemm", "ndarray", 1, n, t, flops);
            }
        }
        // Narrow types at 1024.
        let n = 1024;
        let flops = 2.0 * (n * n * n) as f64;
        let af = g.vec(n * n);
        let bf = g.vec(n * n);
        let (a, b): (Vec<bf16>, Vec<bf16>) = (
            af.iter().map(|&x| bf16::from_f32(x)).collect(),
            bf.iter().map(|&x| bf16::from_f32(x)).collect(),
        );
        let mut c = vec![bf16::ZERO; n * n];
        let t = bench(|| ours(n, &a, &b, &mut c), 3.0);
        let rel = if threads == 1 && ours_1024 > 0.0 {
            format!(" ({:.2}x our f32)", ours_1024 / t)
        } else {
            String::new()
        };
        println!(
            "mithril-rs bf16 n={n:5} threads={threads}: {:9.3} ms {:7.1} GFLOP/s{rel}",
            t * 1e3,
            flops / t / 1e9
        );
        json("gemm", "mithril-rs-bf16", threads, n, t, flops);
        let (a, b): (Vec<f16>, Vec<f16>) = (
            af.iter().map(|&x| f16::from_f32(x)).collect(),
            bf.iter().map(|&x| f16::from_f32(x)).collect(),
        );
        let mut c = vec![f16::ZERO; n * n];
        let t = bench(|| ours(n, &a, &b, &mut c), 3.0);
        println!(
            "mithril-rs  f16 n={n:5} threads={threads}: {:9.3} ms {:7.1} GFLOP/s",
            t * 1e3,
            flops / t / 1e9
        );
        json("gemm", "mithril-rs-f16", threads, n, t, flops);
    }

    // Batch-1 MLP 784-256-128-10: x·W1ᵀ+b1, relu, ·W2ᵀ+b2, relu, ·W3ᵀ+b3; weights [out, in]
    // row-major used through strides (rsb = 1, csb = in), bias/relu fused as epilogues.
    let dims = [784usize, 256, 128, 10];
    let ws: Vec<Vec<f32>> = (0..3).map(|l| g.vec(dims[l] * dims[l + 1])).collect();
    let bs: Vec<Vec<f32>> = (0..3).map(|l| g.vec(dims[l + 1])).collect();
    let x = g.vec(784);
    let mut h1 = vec![0f32; 256];
    let mut h2 = vec![0f32; 128];
    let mut out = vec![0f32; 10];
    let layer = |l: usize, input: &[f32], output: &mut [f32], relu: bool| {
        let (k, n) = (dims[l], dims[l + 1]);
        let bias = &bs[l];
        mg::gemm(
            1,
            n,
            k,
            1.0,
            input,
            k,
            1,
            &ws[l],
            1,
            k,
            false,
            output,
            n,
            |_, j, v: &mut [f32]| {
                if relu {
                    for (o, b) in v.iter_mut().zip(&bias[j..]) {
                        *o = (*o + *b).max(0.0);
                    }
                } else {
                    for (o, b) in v.iter_mut().zip(&bias[j..]) {
                        *o += *b;
                    }
                }
            },
        );
    };
    mg::set_num_threads(1);
    let t1 = bench(|| layer(0, &x, &mut h1, true), 1.0);
    let c1 = bench_cpu(|| layer(0, &x, &mut h1, true), 200, 200);
    let bytes = (784 * 256 * 4) as f64;
    println!(
        "gemv [1,784]x[784,256] (W row-major [256,784]): {:.3} us, {:.1} GB/s of weights, {:.1} GFLOP/s",
        t1 * 1e6,
        bytes / t1 / 1e9,
        2.0 * 784.0 * 256.0 / t1 / 1e9
    );
    json("gemv", "mithril-rs", 1, 784, t1, 2.0 * 784.0 * 256.0);
    let t = bench(
        || {
            layer(0, &x, &mut h1, true);
            layer(1, &h1, &mut h2, true);
            layer(2, &h2, &mut out, false);
        },
        1.0,
    );
    let cm = bench_cpu(
        || {
            layer(0, &x, &mut h1, true);
            layer(1, &h1, &mut h2, true);
            layer(2, &h2, &mut out, false);
        },
        200,
        200,
    );
    black_box(&out);
    println!(
        "MLP 784-256-128-10 batch 1 (3 fused GEMVs): {:.3} us (thread CPU time {:.3} us)",
        t * 1e6,
        cm * 1e6
    );
    println!("  first layer alone: thread CPU time {:.3} us", c1 * 1e6);
    // Bandwidth ceiling: just reading the first layer's weights (8 independent sums).
    let w0 = &ws[0];
    let read = || {
        black_box(read_sum(w0));
    };
    let cr = bench_cpu(read, 200, 200);
    println!(
        "  reading W1 alone (bandwidth ceiling): thread CPU time {:.3} us ({:.1} GB/s); the GEMV is at {:.0}% of it",
        cr * 1e6,
        bytes / cr / 1e9,
        100.0 * cr / c1
    );
    json(
        "mlp-gemv",
        "mithril-rs",
        1,
        1,
        t,
        2.0 * (784.0 * 256.0 + 256.0 * 128.0 + 1280.0),
    );
}
