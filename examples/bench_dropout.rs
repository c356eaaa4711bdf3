//! Dropout mask throughput: `cargo run --release --example bench_dropout`.
//!
//! The lane kernel of `mithril_kernels::philox` (8 Philox4x32-10 blocks per iteration in
//! independent lanes, which the compiler vectorizes) against the element-by-element loop (one
//! Philox block per element, its word picked), on 4M f32, p = 0.5. Prints ns per element.

use mithril_kernels::philox::{dropout_f32, element_bits, threshold};
use std::hint::black_box;
use std::time::Instant;

/// Seconds per call: the minimum of 20 timed calls (a shared machine disturbs some).
fn time(mut f: impl FnMut()) -> f64 {
    f();
    (0..20)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let n = 1 << 22;
    let x = vec![1.0f32; n];
    let mut out = vec![0.0f32; n];
    let thr = threshold(0.5);
    let mut seed = 0u64;
    let lanes = time(|| {
        seed += 1;
        dropout_f32(&x, &mut out, seed, 0, 0, thr, 2.0);
        black_box(&out);
    });
    let t = thr.unwrap_or(u32::MAX);
    let scalar = time(|| {
        seed += 1;
        for (k, (o, xv)) in out.iter_mut().zip(&x).enumerate() {
            *o = if element_bits(seed, 0, k as u64) >= t {
                xv * 2.0
            } else {
                0.0
            };
        }
        black_box(&out);
    });
    let copy = time(|| {
        out.copy_from_slice(&x);
        black_box(&out);
    });
    println!(
        "dropout f32, {n} elements, p = 0.5: lanes {:.3} ns/element, per-element Philox {:.3} ns/element ({:.1}x), a plain copy {:.3} ns/element",
        lanes * 1e9 / n as f64,
        scalar * 1e9 / n as f64,
        scalar / lanes,
        copy * 1e9 / n as f64
    );
}
