//! Max pooling 2x2 / stride 2 on f32 [64, 32, 28, 28]: `cargo run --release --example bench_pool`.
//!
//! Prints the time per call of the model's `evaluate` (a `mithril!` model with one
//! `max_pool2d`, output allocated per call; on the detected ISA, then forced to each), of the kernel `mithril_kernels::pool::max_pool` on
//! every ISA path (preallocated output), and of a naive per-element loop over the window, with
//! the bandwidth (input read + output written) of each.

use mithril::prelude::*;
use mithril_kernels::isa::{Isa, with_isa};
use mithril_kernels::pool::{Win, max_pool};
use std::hint::black_box;
use std::time::Instant;

mithril! {
    model Pool {
        input x: f32[B, C, H, W];
        output y = max_pool2d(x, kernel_size = 2);
    }
}

/// Median time per call in seconds over 31 trials of ~2 ms each (after a warm-up).
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-8);
    let reps = ((2e-3 / once) as usize).max(1);
    let mut v: Vec<f64> = (0..31)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..reps {
                f();
            }
            t.elapsed().as_secs_f64() / reps as f64
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn naive(x: &[f32], planes: usize, h: usize, w: usize, out: &mut [f32]) {
    let (oh, ow) = (h / 2, w / 2);
    for p in 0..planes {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut m = f32::NEG_INFINITY;
                for ky in 0..2 {
                    for kx in 0..2 {
                        m = m.max(x[p * h * w + (2 * oy + ky) * w + 2 * ox + kx]);
                    }
                }
                out[p * oh * ow + oy * ow + ox] = m;
            }
        }
    }
}

fn main() -> mithril::Result<()> {
    let (b, c, h, w) = (64, 32, 28, 28);
    let x = ndarray::Array4::from_shape_fn((b, c, h, w), |(i, j, k, l)| {
        ((i * 31 + j * 17 + k * 7 + l * 3) % 101) as f32 * 0.01
    });
    let bytes = (b * c * h * w + b * c * h * w / 4) * 4;
    let report = |name: &str, t: f64| {
        println!(
            "{name:28} {:8.1} us {:6.1} GB/s",
            t * 1e6,
            bytes as f64 / t / 1e9
        )
    };
    let m = Pool::new()?;
    let p = m.randomize_params(0);
    let t = time(|| {
        black_box(m.evaluate(&p, PoolInputs { x: x.view() }).unwrap());
    });
    report("mithril evaluate", t);
    for isa in Isa::available() {
        let t = with_isa(isa, || {
            time(|| {
                black_box(m.evaluate(&p, PoolInputs { x: x.view() }).unwrap());
            })
        });
        report(&format!("mithril evaluate {isa:?}"), t);
    }
    let xs = x.as_slice().unwrap();
    let mut out = vec![0.0f32; b * c * (h / 2) * (w / 2)];
    let g = Win {
        h,
        w,
        oh: h / 2,
        ow: w / 2,
        kh: 2,
        kw: 2,
        sh: 2,
        sw: 2,
        ph: 0,
        pw: 0,
        dh: 1,
        dw: 1,
    };
    for isa in Isa::available() {
        let t = with_isa(isa, || {
            time(|| max_pool(black_box(xs), &g, &mut out).unwrap())
        });
        report(&format!("kernel {isa:?}"), t);
    }
    let t = time(|| naive(black_box(xs), b * c, h, w, &mut out));
    report("naive window loop", t);
    Ok(())
}
