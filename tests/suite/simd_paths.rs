//! Compiled models on every instruction-set path the CPU has (`isa::with_isa`): fused
//! elementwise groups with `vmath` functions and broadcast sources (scalar, bias row, per-row
//! column, `[B, 1, W]` tile), softmax / log-softmax and row / column reductions. Each path is
//! checked against an `f64` reference computed here, and the paths against each other: the
//! kernels fix their evaluation and summation order, so every path gives the same bits. A strided
//! (transposed) input takes the fallback loops, which must give the same bits too.

use mithril::ndarray::{Array, Array2, Array3, ArrayD, ArrayView2, Dimension, IxDyn};
use mithril::prelude::*;
use mithril::rt::isa::{Isa, with_isa};

mithril! {
    model Fused {
        input x: f32[B, N];
        input bias: f32[N];
        input col: f32[B, 1];
        input s: f32[];
        output act = x * sigmoid(x) + exp(tanh(x)) * bias;
        output colmix = gelu(x) - col * softplus(x) + s;
        output trig = log(exp(x) + 1.0) + erf(x) + sin(x) * cos(x) + gelu(x, approximate = "tanh");
    }

    model Tile {
        input t: f32[B, H, W];
        input u: f32[B, 1, W];
        output y = tanh(t) * u + 1.0;
    }

    model Rows {
        input x: f32[B, N];
        output sm = softmax(x);
        output lsm = log_softmax(x, axis = -1);
        output sum_last = x.sum(axis = -1);
        output mean_last = x.mean(axis = -1);
        output max_last = x.max(axis = -1);
        output min_last = x.min(axis = -1);
        output sum_first = x.sum(axis = 0);
    }

    model Rows64 {
        input x: f64[B, N];
        output sm = softmax(x);
        output lsm = log_softmax(x);
        output sum_last = x.sum(axis = -1);
        output sum_first = x.sum(axis = 0);
    }

    model Silu {
        input x: f32[B, N];
        output y = x * sigmoid(x);
    }
}

/// `|got - want| <= tol * (1 + |want|)` elementwise (NaN/inf must match exactly).
fn close<D: Dimension, T: Copy + Into<f64>>(
    got: &Array<T, D>,
    want: impl IntoIterator<Item = f64>,
    tol: f64,
    what: &str,
) {
    let want: Vec<f64> = want.into_iter().collect();
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        let g: f64 = (*g).into();
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == *w
        } else {
            (g - w).abs() <= tol * (1.0 + w.abs())
        };
        assert!(ok, "{what}[{i}]: got {g}, want {w}");
    }
}

/// Bitwise equality of two f32/f64 arrays.
fn same_bits<D: Dimension, T: Copy + Into<f64>>(a: &Array<T, D>, b: &Array<T, D>, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shape");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let (x, y): (f64, f64) = ((*x).into(), (*y).into());
        assert!(
            x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// erf by its Maclaurin series (|x| <= 5: accurate to ~1e-10, far below the f32 tolerances).
fn erf64(x: f64) -> f64 {
    let x2 = x * x;
    let (mut term, mut sum) = (x, x);
    for n in 1..200 {
        term *= -x2 / n as f64;
        let t = term / (2 * n + 1) as f64;
        sum += t;
        if t.abs() < 1e-17 * sum.abs() {
            break;
        }
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

fn sigmoid64(v: f64) -> f64 {
    1.0 / (1.0 + (-v).exp())
}

fn softplus64(v: f64) -> f64 {
    v.max(0.0) + (-v.abs()).exp().ln_1p()
}

fn gelu64(v: f64) -> f64 {
    0.5 * v * (1.0 + erf64(v / std::f64::consts::SQRT_2))
}

fn gelu_tanh64(v: f64) -> f64 {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
}

/// Odd sizes so every vector loop has a remainder.
const B: usize = 7;
const N: usize = 301;

fn input(b: usize, n: usize, scale: f32) -> Array2<f32> {
    Array2::from_shape_fn((b, n), |(i, j)| {
        (((i * 131 + j * 17) % 1009) as f32 / 1009.0 * 2.0 - 1.0) * scale
    })
}

fn isas() -> Vec<Isa> {
    Isa::available().collect()
}

#[test]
fn fused_elementwise_matches_f64_on_every_path() {
    let m = Fused::new().unwrap();
    let p = m.randomize_params(0);
    let x = input(B, N, 4.0);
    let bias = Array::from_shape_fn(N, |j| (j as f32 * 0.37).sin());
    let col = Array2::from_shape_fn((B, 1), |(i, _)| i as f32 * 0.25 - 0.5);
    let s = mithril::ndarray::arr0(0.75f32);
    let run = |x: ArrayView2<'_, f32>| {
        m.evaluate(
            &p,
            FusedInputs {
                x: x.into_dyn().into_dimensionality().unwrap(),
                bias: bias.view(),
                col: col.view(),
                s: s.view(),
            },
        )
        .unwrap()
    };
    let tol = 1e-5;
    let mut first: Option<FusedOutputs> = None;
    for isa in isas() {
        let o = with_isa(isa, || run(x.view()));
        let what = |n: &str| format!("{n} on {isa:?}");
        close(
            &o.act,
            x.indexed_iter().map(|((_, j), &v)| {
                let v = v as f64;
                v * sigmoid64(v) + v.tanh().exp() * bias[j] as f64
            }),
            tol,
            &what("act"),
        );
        close(
            &o.colmix,
            x.indexed_iter().map(|((i, _), &v)| {
                let v = v as f64;
                gelu64(v) - col[[i, 0]] as f64 * softplus64(v) + 0.75
            }),
            tol,
            &what("colmix"),
        );
        close(
            &o.trig,
            x.iter().map(|&v| {
                let v = v as f64;
                (v.exp() + 1.0).ln() + erf64(v) + v.sin() * v.cos() + gelu_tanh64(v)
            }),
            tol,
            &what("trig"),
        );
        match &first {
            None => first = Some(o),
            Some(f) => {
                same_bits(&o.act, &f.act, &what("act vs first path"));
                same_bits(&o.colmix, &f.colmix, &what("colmix vs first path"));
                same_bits(&o.trig, &f.trig, &what("trig vs first path"));
            }
        }
    }
    // A transposed (strided) input takes the fallback loops: same bits.
    let xt = x.t().to_owned();
    let o = run(xt.t());
    let f = first.unwrap();
    same_bits(&o.act, &f.act, "act, strided input");
    same_bits(&o.colmix, &f.colmix, "colmix, strided input");
    same_bits(&o.trig, &f.trig, "trig, strided input");
}

#[test]
fn tile_broadcast_matches_on_every_path() {
    let m = Tile::new().unwrap();
    let p = m.randomize_params(0);
    let (b, h, w) = (3, 5, 37);
    let t = Array3::from_shape_fn((b, h, w), |(i, j, k)| {
        ((i * 7 + j * 3 + k) % 23) as f32 * 0.2 - 2.0
    });
    let u = Array3::from_shape_fn((b, 1, w), |(i, _, k)| (i * w + k) as f32 * 0.01 - 0.3);
    let mut first: Option<Array3<f32>> = None;
    for isa in isas() {
        let o = with_isa(isa, || {
            m.evaluate(
                &p,
                TileInputs {
                    t: t.view(),
                    u: u.view(),
                },
            )
            .unwrap()
        });
        close(
            &o.y,
            t.indexed_iter()
                .map(|((i, _, k), &v)| (v as f64).tanh() * u[[i, 0, k]] as f64 + 1.0),
            1e-6,
            &format!("tile on {isa:?}"),
        );
        match &first {
            None => first = Some(o.y),
            Some(f) => same_bits(&o.y, f, &format!("tile on {isa:?} vs first path")),
        }
    }
}

#[test]
fn softmax_and_reductions_match_on_every_path() {
    let m = Rows::new().unwrap();
    let p = m.randomize_params(0);
    let x = input(B, N, 6.0);
    let rows: Vec<Vec<f64>> = x
        .rows()
        .into_iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    let lse: Vec<f64> = rows
        .iter()
        .map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
        })
        .collect();
    let mut first: Option<RowsOutputs> = None;
    for isa in isas() {
        let o = with_isa(isa, || m.evaluate(&p, RowsInputs { x: x.view() }).unwrap());
        let what = |n: &str| format!("{n} on {isa:?}");
        let sm = rows
            .iter()
            .zip(&lse)
            .flat_map(|(r, l)| r.iter().map(move |v| (v - l).exp()));
        // softmax: a few ulp relative (documented 4 ulp); 1e-5 of the (mixed) magnitude
        close(&o.sm, sm, 1e-5, &what("softmax"));
        let lsm = rows
            .iter()
            .zip(&lse)
            .flat_map(|(r, l)| r.iter().map(move |v| v - l));
        close(&o.lsm, lsm, 1e-6, &what("log_softmax"));
        close(
            &o.sum_last,
            rows.iter().map(|r| r.iter().sum::<f64>()),
            1e-6,
            &what("sum"),
        );
        close(
            &o.mean_last,
            rows.iter().map(|r| r.iter().sum::<f64>() / N as f64),
            1e-6,
            &what("mean"),
        );
        close(
            &o.max_last,
            rows.iter()
                .map(|r| r.iter().cloned().fold(f64::NEG_INFINITY, f64::max)),
            0.0,
            &what("max"),
        );
        close(
            &o.min_last,
            rows.iter()
                .map(|r| r.iter().cloned().fold(f64::INFINITY, f64::min)),
            0.0,
            &what("min"),
        );
        close(
            &o.sum_first,
            (0..N).map(|j| rows.iter().map(|r| r[j]).sum::<f64>()),
            1e-6,
            &what("column sum"),
        );
        match &first {
            None => first = Some(o),
            Some(f) => {
                same_bits(&o.sm, &f.sm, &what("softmax vs first path"));
                same_bits(&o.lsm, &f.lsm, &what("log_softmax vs first path"));
                same_bits(&o.sum_last, &f.sum_last, &what("sum vs first path"));
                same_bits(&o.mean_last, &f.mean_last, &what("mean vs first path"));
                same_bits(&o.max_last, &f.max_last, &what("max vs first path"));
                same_bits(&o.min_last, &f.min_last, &what("min vs first path"));
                same_bits(&o.sum_first, &f.sum_first, &what("colsum vs first path"));
            }
        }
    }
}

#[test]
fn f64_softmax_and_sums_match_on_every_path() {
    let m = Rows64::new().unwrap();
    let p = m.randomize_params(0);
    let x = input(B, N, 6.0).mapv(|v| v as f64 * 1.000_000_1);
    let lse: Vec<f64> = x
        .rows()
        .into_iter()
        .map(|r| {
            let m = r.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
        })
        .collect();
    for isa in isas() {
        let o = with_isa(isa, || {
            m.evaluate(&p, Rows64Inputs { x: x.view() }).unwrap()
        });
        let what = |n: &str| format!("{n} on {isa:?}");
        close(
            &o.sm,
            x.indexed_iter().map(|((i, _), v)| (v - lse[i]).exp()),
            1e-13,
            &what("softmax f64"),
        );
        close(
            &o.lsm,
            x.indexed_iter().map(|((i, _), v)| v - lse[i]),
            1e-13,
            &what("log_softmax f64"),
        );
        close(
            &o.sum_last,
            x.rows().into_iter().map(|r| r.sum()),
            1e-13,
            &what("sum f64"),
        );
        close(
            &o.sum_first,
            x.columns().into_iter().map(|c| c.sum()),
            1e-13,
            &what("column sum f64"),
        );
    }
}

/// A closure with `vmath` calls, as the compiler emits for `f32`.
fn f2(a: f32, b: f32) -> f32 {
    mithril::rt::vmath::exp(a * 0.25) * b + mithril::rt::vmath::tanh(b)
}

/// The reference: a plain loop over ndarray's broadcast views (baseline code; `vmath` gives the
/// same bits on every path).
fn reference(a: &ArrayD<f32>, b: &ArrayD<f32>, shape: &[usize]) -> ArrayD<f32> {
    let a = a.broadcast(IxDyn(shape)).unwrap();
    let b = b.broadcast(IxDyn(shape)).unwrap();
    let mut out = ArrayD::zeros(IxDyn(shape));
    for ((o, &x), &y) in out.iter_mut().zip(a.iter()).zip(b.iter()) {
        *o = f2(x, y);
    }
    out
}

fn filled(shape: &[usize], seed: usize) -> ArrayD<f32> {
    let mut k = seed;
    ArrayD::from_shape_fn(IxDyn(shape), |_| {
        k += 7;
        ((k * 37) % 101) as f32 * 0.05 - 2.5
    })
}

/// The runtime's `map2_to` / `map2_inplace` on every broadcast pattern the drivers read in place
/// (row, column, tile, leading axes, scalar), on patterns they do not (falling back), and on
/// strided inputs, under every ISA: bit-identical to a plain loop.
#[test]
fn runtime_maps_cover_every_broadcast_pattern() {
    use mithril::rt::Dest;
    use mithril::rt::ops::{map2_inplace, map2_to};
    let out = [4usize, 5, 19];
    let patterns: [&[usize]; 14] = [
        &[4, 5, 19],
        &[19],
        &[5, 19],
        &[1, 5, 19],
        &[5, 1],
        &[4, 1, 1],
        &[4, 5, 1],
        &[4, 1, 19],
        &[1, 5, 1],
        &[1, 1, 19],
        &[1],
        &[],
        &[4, 1, 19],
        &[1, 1, 1],
    ];
    for isa in isas() {
        for (pi, bs) in patterns.iter().enumerate() {
            let a = filled(&out, 1);
            let b = filled(bs, 2 + pi);
            let want = reference(&a, &b, &out);
            with_isa(isa, || {
                let mut o = None;
                map2_to("t", &a.view(), &b.view(), Dest::Owned(&mut o), f2).unwrap();
                let got = o.unwrap();
                same_bits(&got, &want, &format!("map2_to {bs:?} on {isa:?}"));
                let mut a2 = a.clone();
                map2_inplace("t", a2.view_mut(), &b.view(), f2).unwrap();
                same_bits(&a2, &want, &format!("map2_inplace {bs:?} on {isa:?}"));
                // the broadcast operand first
                let want_rev = {
                    let bb = b.broadcast(IxDyn(&out)).unwrap();
                    let mut w = ArrayD::zeros(IxDyn(&out));
                    for ((o, &x), &y) in w.iter_mut().zip(bb.iter()).zip(a.iter()) {
                        *o = f2(x, y);
                    }
                    w
                };
                let mut o = None;
                map2_to("t", &b.view(), &a.view(), Dest::Owned(&mut o), f2).unwrap();
                same_bits(
                    &o.unwrap(),
                    &want_rev,
                    &format!("map2_to rev {bs:?} on {isa:?}"),
                );
            });
        }
        // strided inputs (a transposed copy viewed back), long and short rows
        for shape in [[6usize, 40], [40, 6]] {
            let a = filled(&shape, 3);
            let at = a.t().to_owned();
            let a_strided = at.t();
            let b = filled(&shape[1..], 4);
            let want = reference(&a, &b, &shape);
            with_isa(isa, || {
                let mut o = None;
                map2_to("t", &a_strided, &b.view(), Dest::Owned(&mut o), f2).unwrap();
                same_bits(&o.unwrap(), &want, &format!("strided {shape:?} on {isa:?}"));
                let mut a2 = a.clone();
                map2_inplace("t", a2.view_mut(), &a_strided.map(|v| *v).view(), f2).unwrap();
                let mut a3 = a.clone();
                map2_inplace("t", a3.view_mut(), &a_strided, f2).unwrap();
                same_bits(&a3, &a2, &format!("inplace strided {shape:?} on {isa:?}"));
                let mut o = None;
                mithril::rt::ops::map1_to(&a_strided, Dest::Owned(&mut o), |v| f2(v, v)).unwrap();
                let w1 = a.mapv(|v| f2(v, v));
                same_bits(
                    &o.unwrap(),
                    &w1,
                    &format!("map1 strided {shape:?} on {isa:?}"),
                );
            });
        }
    }
}

/// Timing of `x * sigmoid(x)` on [1024, 1024] f32 per path (release:
/// `cargo test --release --test suite simd_paths::time_silu -- --ignored --nocapture`).
#[test]
#[ignore]
fn time_silu() {
    let m = Silu::new().unwrap();
    let p = m.randomize_params(0);
    let x = input(1024, 1024, 8.0);
    for isa in isas() {
        with_isa(isa, || {
            let run = || m.evaluate(&p, SiluInputs { x: x.view() }).unwrap();
            for _ in 0..5 {
                std::hint::black_box(run());
            }
            let reps = 50;
            let t = std::time::Instant::now();
            for _ in 0..reps {
                std::hint::black_box(run());
            }
            let dt = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "silu [1024, 1024] f32 on {isa:?}: {:.3} ms ({:.2} GB/s read+write)",
                dt * 1e3,
                8.0 * 1024.0 * 1024.0 / dt / 1e9
            );
            let xt = x.t().to_owned();
            let run = || m.evaluate(&p, SiluInputs { x: xt.t() }).unwrap();
            std::hint::black_box(run());
            let t = std::time::Instant::now();
            for _ in 0..10 {
                std::hint::black_box(run());
            }
            let dt = t.elapsed().as_secs_f64() / 10.0;
            println!(
                "silu [1024, 1024] f32, transposed input, on {isa:?}: {:.3} ms",
                dt * 1e3
            );
        });
    }
}
