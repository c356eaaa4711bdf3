//! Convolution kernels (`mithril_kernels::conv`), f32, one thread, medians of repeated runs:
//!
//! - a 3x3 convolution 64 -> 64 channels on 56x56, padding 1, batch 8 (forward, input
//!   gradient, weight gradient), as GFLOP/s and as a share of the single-core AVX-512 FMA peak
//!   measured here (24 independent register-only FMA chains, as `bench_gemm`);
//! - the two convolutions of `../shared/anchors/bench_cnn.py`'s CNN (3x3, padding 1: 1 -> 32 on
//!   28x28 and 32 -> 64 on 14x14) at batch 1 and 64.
//!
//! Times are wall-clock medians and thread CPU-time medians (the latter robust to other processes
//! on a shared machine). Run: `cargo run --release --example bench_conv`.

use mithril_kernels::conv::{self, Geom};
use mithril_kernels::gemm;
use std::hint::black_box;
use std::time::Instant;

fn cpu_now() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// (wall median, CPU-time median) of `reps` runs of `f` after one warm-up.
fn bench(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (mut w, mut c) = (Vec::new(), Vec::new());
    for _ in 0..reps {
        let (t0, c0) = (Instant::now(), cpu_now());
        f();
        w.push(t0.elapsed().as_secs_f64());
        c.push(cpu_now() - c0);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    (med(&mut w), med(&mut c))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_chains(iters: usize) -> f32 {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_set1_ps(0.0); 24];
    // opaque constants: the chains must not be folded or shortened at compile time
    let (x, y) = (
        _mm512_set1_ps(black_box(0.999_999)),
        _mm512_set1_ps(black_box(1e-7)),
    );
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

/// The single-core AVX-512 f32 FMA peak, GFLOP/s (wall, CPU time).
fn fma_peak() -> Option<(f64, f64)> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        let iters = 2_000_000;
        // SAFETY: AVX-512F checked above.
        let (w, c) = bench(9, || {
            black_box(unsafe { fma_chains(black_box(iters)) });
        });
        let flops = 24.0 * 16.0 * 2.0 * iters as f64;
        return Some((flops / w / 1e9, flops / c / 1e9));
    }
    None
}

fn geom(n: usize, c: usize, o: usize, hw: usize) -> Geom {
    Geom {
        n,
        c,
        o,
        groups: 1,
        inp: [hw, hw],
        k: [3, 3],
        out: [hw, hw],
        stride: [1, 1],
        pad: [1, 1],
        dil: [1, 1],
    }
}

fn data(n: usize, salt: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(salt) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

fn main() {
    let _one = gemm::limit_call_threads(1);
    let peak = fma_peak();
    if let Some((w, c)) = peak {
        println!("AVX-512 f32 FMA peak, 1 core: {w:.1} GFLOP/s (wall), {c:.1} GFLOP/s (CPU time)");
    }
    let run = |name: &str, g: Geom, reps: usize| {
        let (lx, lw, ly) = g.lens();
        let (x, w, gy) = (data(lx, 1), data(lw, 2), data(ly, 3));
        let (mut y, mut gx, mut gw) = (vec![0f32; ly], vec![0f32; lx], vec![0f32; lw]);
        let flops = 2.0 * g.macs() as f64;
        let algo = if g.direct() {
            "direct"
        } else {
            "implicit GEMM"
        };
        for (what, t) in [
            ("forward", bench(reps, || conv::forward(&g, &x, &w, &mut y))),
            (
                "input grad",
                bench(reps, || conv::backward_data(&g, &gy, &w, &mut gx)),
            ),
            (
                "weight grad",
                bench(reps, || conv::backward_weight(&g, &x, &gy, &mut gw)),
            ),
        ] {
            let (gw_, gc) = (flops / t.0 / 1e9, flops / t.1 / 1e9);
            let share = peak.map_or(String::new(), |(pw, pc)| {
                format!(
                    " = {:.0}% of peak (wall), {:.0}% (CPU time)",
                    100.0 * gw_ / pw,
                    100.0 * gc / pc
                )
            });
            println!(
                "{name} [{algo}] {what}: median {:.3} ms, {gw_:.1} GFLOP/s wall, {gc:.1} GFLOP/s CPU time{share}",
                t.0 * 1e3
            );
        }
    };
    run("conv3x3 64->64 56x56 batch 8", geom(8, 64, 64, 56), 7);
    for b in [1, 64] {
        let reps = if b == 1 { 51 } else { 9 };
        run(
            &format!("cnn conv1 1->32 28x28 batch {b}"),
            geom(b, 1, 32, 28),
            reps,
        );
        run(
            &format!("cnn conv2 32->64 14x14 batch {b}"),
            geom(b, 32, 64, 14),
            reps,
        );
    }
}
