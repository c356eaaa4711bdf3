//! Elementwise-driver throughput: `cargo run --release --example bench_ew`.
//!
//! For each fused loop over 1M f32 (a [1024, 1024] activation) it prints the time per call and
//! the bandwidth (bytes read + written, per second) of every ISA path of `mithril_kernels::ew`,
//! next to a plain scalar loop compiled without target features (what a naive generated loop over
//! `std` math gets). Also the row kernels (`mithril_kernels::rows`) and the f16 converters.

use half::f16;
use mithril_kernels::ew::{Src, map1, map1_inplace, map2, map3};
use mithril_kernels::isa::{Isa, with_isa};
use mithril_kernels::{cvt, rows, scalar, vmath};
use std::hint::black_box;
use std::time::Instant;

const N: usize = 1024;

/// Time per call in seconds: the minimum over many short trials (~0.5 ms each, up to ~1.5 s in
/// all), so that on a shared, loaded machine some trials run undisturbed.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let t0 = Instant::now();
    f();
    let once = t0.elapsed().as_secs_f64().max(1e-8);
    let reps = ((5e-4 / once) as usize).max(1);
    let mut best = f64::INFINITY;
    let start = Instant::now();
    for _ in 0..400 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / reps as f64);
        if start.elapsed().as_secs_f64() > 1.5 {
            break;
        }
    }
    best
}

fn report(name: &str, bytes: usize, base: f64, mut f: impl FnMut()) {
    let gb = |t: f64| bytes as f64 / t / 1e9;
    print!(
        "{name:34} scalar-loop {:7.1} us {:6.1} GB/s |",
        base * 1e6,
        gb(base)
    );
    for isa in Isa::available() {
        let t = with_isa(isa, || time(&mut f));
        print!(
            " {isa:?} {:7.1} us {:6.1} GB/s ({:4.1}x) |",
            t * 1e6,
            gb(t),
            base / t
        );
    }
    println!();
}

// The baselines: plain loops over `std` math, no target features, no `ew` driver.
#[inline(never)]
fn base_relu_bias(x: &[f32], bias: &[f32], out: &mut [f32]) {
    for (i, o) in out.iter_mut().enumerate() {
        *o = scalar::relu(x[i] + bias[i % bias.len()]);
    }
}
#[inline(never)]
fn base_silu(x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = v * scalar::sigmoid(v);
    }
}
#[inline(never)]
fn base_map(x: &[f32], out: &mut [f32], f: fn(f32) -> f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = f(v);
    }
}

fn main() {
    // rows of the [B, 1024] test tensors: 1024 (4 MB, memory-bound) unless EW_ROWS says (e.g. 4
    // for an L1-resident compute-bound run)
    let b_rows: usize = std::env::var("EW_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    #[allow(non_snake_case)]
    let B = b_rows;
    println!(
        "detected ISA: {:?}; {} x {} f32 = {:.3} MB per tensor\n",
        mithril_kernels::isa::detected(),
        B,
        N,
        B as f64 * N as f64 * 4e-6
    );
    let x: Vec<f32> = (0..B * N)
        .map(|i| ((i * 7919) % 2001) as f32 / 250.0 - 4.0)
        .collect();
    let bias: Vec<f32> = (0..N).map(|i| (i % 17) as f32 * 0.1 - 0.8).collect();
    let mut out = vec![0f32; B * N];
    let rw = B * N * 8;

    let t = time(|| base_relu_bias(black_box(&x), &bias, &mut out));
    report("relu(x + bias_row)", rw, t, || {
        map2(Src::Full(&x), Src::Row(&bias), &mut out, |x, b| {
            scalar::relu(x + b)
        })
    });
    let scale: Vec<f32> = (0..B).map(|i| 1.0 + (i % 5) as f32 * 0.1).collect();
    let t = time(|| {
        for (i, o) in out.iter_mut().enumerate() {
            *o = black_box(&x)[i] * scale[i / N] + bias[i % N];
        }
    });
    report("x * scale[B,1] + bias[N]", rw, t, || {
        map3(
            Src::Full(&x),
            Src::Col(&scale, N),
            Src::Row(&bias),
            &mut out,
            |x, s, b| x.mul_add(s, b),
        )
    });
    let t = time(|| base_silu(black_box(&x), &mut out));
    report("x * sigmoid(x)", rw, t, || {
        map1(Src::Full(&x), &mut out, |x: f32| x * vmath::sigmoid(x))
    });
    let mut io = x.clone();
    report("x * sigmoid(x), in place", rw, t, || {
        map1_inplace(&mut io, |x: f32| x * vmath::sigmoid(x))
    });
    let t = time(|| base_map(black_box(&x), &mut out, f32::exp));
    report("exp(x)", rw, t, || {
        map1(Src::Full(&x), &mut out, vmath::exp)
    });
    let t = time(|| base_map(black_box(&x), &mut out, f32::tanh));
    report("tanh(x)", rw, t, || {
        map1(Src::Full(&x), &mut out, vmath::tanh)
    });
    let t = time(|| base_map(black_box(&x), &mut out, scalar::gelu_erf));
    report("gelu_erf(x)", rw, t, || {
        map1(Src::Full(&x), &mut out, vmath::gelu_erf)
    });
    let t = time(|| base_map(black_box(&x), &mut out, scalar::gelu_tanh));
    report("gelu_tanh(x)", rw, t, || {
        map1(Src::Full(&x), &mut out, vmath::gelu_tanh)
    });
    let t = time(|| base_map(black_box(&x), &mut out, |v| (v.abs() + 1.0).ln()));
    report("ln(|x| + 1)", rw, t, || {
        map1(Src::Full(&x), &mut out, |v: f32| vmath::ln(v.abs() + 1.0))
    });

    // f16 <-> f32
    let h: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
    let mut hout = vec![f16::ZERO; B * N];
    let t = time(|| {
        for (o, v) in out.iter_mut().zip(black_box(&h)) {
            *o = v.to_f32();
        }
    });
    report("f16 -> f32 slice", B * N * 6, t, || {
        cvt::f16_to_f32_slice(&h, &mut out)
    });
    let t = time(|| {
        for (o, v) in hout.iter_mut().zip(black_box(&x)) {
            *o = f16::from_f32(*v);
        }
    });
    report("f32 -> f16 slice", B * N * 6, t, || {
        cvt::f32_to_f16_slice(&x, &mut hout)
    });

    let t = time(|| {
        for (o, v) in hout.iter_mut().zip(black_box(&h)) {
            let x = v.to_f32();
            *o = f16::from_f32(x * scalar::sigmoid(x));
        }
    });
    report("f16 silu (f16 in/out, f32 math)", B * N * 4, t, || {
        map1(Src::Full(&h), &mut hout, |v: f16| {
            let x = cvt::f16_to_f32(v.to_bits());
            f16::from_bits(cvt::f32_to_f16(vmath::silu(x)))
        })
    });

    // rows
    println!();
    let mut r = vec![0f32; B];
    let t = time(|| {
        for (k, o) in r.iter_mut().enumerate() {
            *o = black_box(&x)[k * N..(k + 1) * N].iter().sum();
        }
    });
    report("row sum [B,1024]", B * N * 4, t, || {
        rows::sum(&x, N, &mut r)
    });
    let mut c = vec![0f32; N];
    let t = time(|| {
        c.fill(0.0);
        for k in 0..B {
            for (o, v) in c.iter_mut().zip(&black_box(&x)[k * N..(k + 1) * N]) {
                *o += v;
            }
        }
    });
    report("column sum [B,1024]", B * N * 4, t, || {
        rows::col_sum(&x, N, &mut c)
    });
    let t = time(|| {
        for k in 0..B {
            let row = &black_box(&x)[k * N..(k + 1) * N];
            let o = &mut out[k * N..(k + 1) * N];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let mut s = 0.0;
            for (o, v) in o.iter_mut().zip(row) {
                *o = (v - m).exp();
                s += *o;
            }
            for o in o.iter_mut() {
                *o /= s;
            }
        }
    });
    report("softmax rows [B,1024]", rw, t, || {
        rows::softmax(&x, N, &mut out)
    });
    let gamma = vec![1.5f32; N];
    let beta = vec![0.25f32; N];
    let t = time(|| {
        for k in 0..B {
            let row = &black_box(&x)[k * N..(k + 1) * N];
            let o = &mut out[k * N..(k + 1) * N];
            let mean = row.iter().sum::<f32>() / N as f32;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / N as f32;
            let rstd = 1.0 / (var + 1e-5).sqrt();
            for ((o, v), (g, b)) in o.iter_mut().zip(row).zip(gamma.iter().zip(&beta)) {
                *o = (v - mean) * rstd * g + b;
            }
        }
    });
    report("layer_norm rows [B,1024]", rw, t, || {
        rows::layer_norm(&x, N, Some(&gamma), Some(&beta), 1e-5, &mut out, None)
    });
}
