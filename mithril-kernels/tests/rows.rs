//! Row kernels: every ISA path gives the same bits as the baseline path (fixed summation order)
//! on odd sizes and unaligned slices, and the results are within the documented error bounds of
//! an f64 reference.

use half::{bf16, f16};
use mithril_kernels::isa::{with_isa, Isa};
use mithril_kernels::rows::{self, NormStats, RowElem};

const SIZES: [usize; 11] = [0, 1, 7, 15, 16, 17, 31, 33, 100, 1000, 2049];

fn data(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

trait Elem: RowElem + std::fmt::Debug + PartialEq {
    fn of(v: f64) -> Self;
    fn bits(self) -> u64;
}
impl Elem for f32 {
    fn of(v: f64) -> Self {
        v as f32
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Elem for f64 {
    fn of(v: f64) -> Self {
        v
    }
    fn bits(self) -> u64 {
        self.to_bits()
    }
}
impl Elem for f16 {
    fn of(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}
impl Elem for bf16 {
    fn of(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn bits(self) -> u64 {
        self.to_bits() as u64
    }
}

/// Runs every kernel on `[rows, cols]` data starting at element `off` under `isa`; returns all
/// outputs concatenated.
fn run_all<T: Elem>(x: &[T], rows_n: usize, cols: usize, off: usize, isa: Isa) -> Vec<Vec<T>> {
    let x = &x[off..off + rows_n * cols];
    let g: Vec<T> = (0..cols).map(|i| T::of(1.0 + i as f64 * 0.01)).collect();
    let b: Vec<T> = (0..cols).map(|i| T::of(0.5 - i as f64 * 0.02)).collect();
    with_isa(isa, || {
        let mut outs = Vec::new();
        let mut r = vec![T::of(0.0); rows_n + off];
        for k in [
            rows::sum::<T>,
            rows::mean::<T>,
            rows::max::<T>,
            rows::min::<T>,
        ] {
            k(x, cols, &mut r[off..]);
            outs.push(r[off..].to_vec());
        }
        let mut c = vec![T::of(0.0); cols + off];
        rows::col_sum(x, cols, &mut c[off..]);
        outs.push(c[off..].to_vec());
        let mut o = vec![T::of(0.0); rows_n * cols + off];
        for (k, kin) in [
            (
                rows::softmax::<T> as fn(&[T], usize, &mut [T]),
                rows::softmax_inplace::<T> as fn(&mut [T], usize),
            ),
            (rows::log_softmax::<T>, rows::log_softmax_inplace::<T>),
        ] {
            k(x, cols, &mut o[off..]);
            outs.push(o[off..].to_vec());
            // in place must give the same bits
            let mut io = vec![T::of(0.0); rows_n * cols + off];
            io[off..].copy_from_slice(x);
            kin(&mut io[off..], cols);
            let a: Vec<u64> = io[off..].iter().map(|v| v.bits()).collect();
            let b: Vec<u64> = o[off..].iter().map(|v| v.bits()).collect();
            assert_eq!(a, b, "in-place softmax/log_softmax");
        }
        let (mut m, mut s) = (vec![T::of(0.0); rows_n], vec![T::of(0.0); rows_n]);
        rows::layer_norm(
            x,
            cols,
            Some(&g),
            Some(&b),
            1e-5,
            &mut o[off..],
            Some(NormStats {
                mean: &mut m,
                rstd: &mut s,
            }),
        );
        outs.push(o[off..].to_vec());
        outs.push(m.clone());
        outs.push(s.clone());
        rows::layer_norm(x, cols, None, None, 1e-5, &mut o[off..], None);
        outs.push(o[off..].to_vec());
        rows::layer_norm(x, cols, Some(&g), None, 1e-5, &mut o[off..], None);
        outs.push(o[off..].to_vec());
        rows::layer_norm(x, cols, None, Some(&b), 1e-5, &mut o[off..], None);
        outs.push(o[off..].to_vec());
        rows::rms_norm(x, cols, Some(&g), 1e-6, &mut o[off..], Some(&mut s));
        outs.push(o[off..].to_vec());
        outs.push(s.clone());
        rows::rms_norm(x, cols, None, 1e-6, &mut o[off..], None);
        outs.push(o[off..].to_vec());
        outs
    })
}

fn paths_agree<T: Elem>() {
    for cols in SIZES {
        for rows_n in [1usize, 3] {
            for off in [0usize, 1] {
                let mut x: Vec<T> = data(rows_n * cols + 1, cols as u64, 3.0)
                    .into_iter()
                    .map(T::of)
                    .collect();
                if cols > 5 {
                    x[off + 5] = T::of(-0.0);
                }
                let base = run_all(&x, rows_n, cols, off, Isa::Scalar);
                for isa in Isa::available() {
                    let got = run_all(&x, rows_n, cols, off, isa);
                    for (k, (g, w)) in got.iter().zip(&base).enumerate() {
                        let gb: Vec<u64> = g.iter().map(|v| v.bits()).collect();
                        let wb: Vec<u64> = w.iter().map(|v| v.bits()).collect();
                        assert_eq!(
                            gb,
                            wb,
                            "{} kernel #{k} {isa:?} rows={rows_n} cols={cols} off={off}",
                            std::any::type_name::<T>()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn every_isa_matches_baseline_f32() {
    paths_agree::<f32>();
}
#[test]
fn every_isa_matches_baseline_f64() {
    paths_agree::<f64>();
}
#[test]
fn every_isa_matches_baseline_f16_bf16() {
    paths_agree::<f16>();
    paths_agree::<bf16>();
}

fn ulp32(r: f64) -> f64 {
    let e = ((r as f32).abs().max(f32::MIN_POSITIVE)).to_bits() >> 23;
    2f64.powi(e as i32 - 150)
}

#[test]
fn accuracy_f32() {
    // (max ulp softmax, log_softmax abs, layernorm abs, rms abs, sum rel-to-Σ|x|)
    let mut worst = [0f64; 6];
    for (cols, scale) in [
        (7usize, 1.0),
        (100, 10.0),
        (1000, 3.0),
        (4099, 30.0),
        (100_000, 1.0),
    ] {
        let rows_n = 3;
        let xd = data(rows_n * cols, 99 + cols as u64, scale);
        let x: Vec<f32> = xd.iter().map(|&v| v as f32).collect();
        let xe: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let mut o = vec![0f32; rows_n * cols];
        let mut r = vec![0f32; rows_n];
        rows::sum(&x, cols, &mut r);
        for k in 0..rows_n {
            let row = &xe[k * cols..(k + 1) * cols];
            let s: f64 = row.iter().sum();
            let a: f64 = row.iter().map(|v| v.abs()).sum();
            // the f64 accumulation leaves only the final rounding: within half an ulp plus 2^-40 Σ|x|
            let err = (r[k] as f64 - s).abs();
            assert!(
                err <= 0.5 * ulp32(s) + a * 2f64.powi(-40),
                "sum {cols}: {err}"
            );
            worst[4] = worst[4].max(err / a);
        }
        rows::softmax(&x, cols, &mut o);
        for k in 0..rows_n {
            let row = &xe[k * cols..(k + 1) * cols];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = row.iter().map(|v| (v - m).exp()).sum();
            for (j, v) in row.iter().enumerate() {
                let want = (v - m).exp() / s;
                if want > 1e-30 {
                    worst[0] = worst[0].max((o[k * cols + j] as f64 - want).abs() / ulp32(want));
                }
            }
        }
        rows::log_softmax(&x, cols, &mut o);
        for k in 0..rows_n {
            let row = &xe[k * cols..(k + 1) * cols];
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = row.iter().map(|v| (v - m).exp()).sum::<f64>().ln() + m;
            for (j, v) in row.iter().enumerate() {
                let want = v - lse;
                worst[1] = worst[1].max((o[k * cols + j] as f64 - want).abs() / (1.0 + want.abs()));
            }
        }
        rows::layer_norm(&x, cols, None, None, 1e-5, &mut o, None);
        for k in 0..rows_n {
            let row = &xe[k * cols..(k + 1) * cols];
            let mean = row.iter().sum::<f64>() / cols as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
            for (j, v) in row.iter().enumerate() {
                let want = (v - mean) / (var + 1e-5).sqrt();
                worst[2] = worst[2].max((o[k * cols + j] as f64 - want).abs());
            }
        }
        rows::rms_norm(&x, cols, None, 1e-6, &mut o, None);
        for k in 0..rows_n {
            let row = &xe[k * cols..(k + 1) * cols];
            let ms = row.iter().map(|v| v * v).sum::<f64>() / cols as f64;
            for (j, v) in row.iter().enumerate() {
                let want = v / (ms + 1e-6).sqrt();
                worst[3] = worst[3]
                    .max((o[k * cols + j] as f64 - want).abs() / ulp32(want).max(ulp32(1.0)));
            }
        }
        // column sums of [cols, 64]-shaped data
        let cc = 64;
        let rr = x.len() / cc;
        let mut c = vec![0f32; cc];
        rows::col_sum(&x[..rr * cc], cc, &mut c);
        for j in 0..cc {
            let s: f64 = (0..rr).map(|i| xe[i * cc + j]).sum();
            let a: f64 = (0..rr).map(|i| xe[i * cc + j].abs()).sum();
            let err = (c[j] as f64 - s).abs();
            assert!(
                err <= 0.5 * ulp32(s) + a * 2f64.powi(-40),
                "col_sum {rr}x{cc}: {err}"
            );
        }
    }
    println!(
        "softmax {:.2} ulp; log_softmax {:.3e} (abs / (1+|y|)); layer_norm {:.3e} abs; rms_norm {:.2} ulp(max(|y|,1)); sum {:.2e}·Σ|x|",
        worst[0], worst[1], worst[2], worst[3], worst[4]
    );
    assert!(worst[0] <= 4.0, "softmax {}", worst[0]);
    assert!(worst[1] <= 4e-7, "log_softmax {}", worst[1]);
    assert!(worst[2] <= 1e-6, "layer_norm {}", worst[2]);
    assert!(worst[3] <= 3.0, "rms_norm {}", worst[3]);
}

#[test]
fn accuracy_f16_bf16_f64() {
    let cols = 3000;
    let xd = data(cols, 5, 2.0);
    // f16: softmax within 1 f16 ulp-ish of the f64 result of the f16 inputs
    let x: Vec<f16> = xd.iter().map(|&v| f16::from_f64(v)).collect();
    let xe: Vec<f64> = x.iter().map(|v| v.to_f64()).collect();
    let mut o = vec![f16::ZERO; cols];
    rows::softmax(&x, cols, &mut o);
    let m = xe.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = xe.iter().map(|v| (v - m).exp()).sum();
    for (j, v) in xe.iter().enumerate() {
        let want = (v - m).exp() / s;
        let got = o[j].to_f64();
        assert!(
            (got - want).abs() <= want * 2f64.powi(-10) + 2f64.powi(-25),
            "f16 softmax {j}: {got} vs {want}"
        );
    }
    let mut r = [f16::ZERO];
    rows::sum(&x, cols, &mut r);
    let sum: f64 = xe.iter().sum();
    assert!((r[0].to_f64() - sum).abs() <= sum.abs() * 2f64.powi(-10) + 1e-3);
    let xb: Vec<bf16> = xd.iter().map(|&v| bf16::from_f64(v)).collect();
    let mut ob = vec![bf16::ZERO; cols];
    rows::layer_norm(&xb, cols, None, None, 1e-5, &mut ob, None);
    let xe: Vec<f64> = xb.iter().map(|v| v.to_f64()).collect();
    let mean = xe.iter().sum::<f64>() / cols as f64;
    let var = xe.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
    for (j, v) in xe.iter().enumerate() {
        let want = (v - mean) / (var + 1e-5).sqrt();
        assert!(
            (ob[j].to_f64() - want).abs() <= want.abs() * 2f64.powi(-8) + 1e-6,
            "bf16 layer_norm"
        );
    }
    // f64 sums: pairwise in f64
    let mut r = [0f64];
    rows::sum(&xd, cols, &mut r);
    let exact: f64 = xd.iter().sum();
    assert!((r[0] - exact).abs() <= 1e-13);
}

#[test]
fn special_rows() {
    let x = [1.0f32, f32::NAN, 3.0, -1.0];
    let mut r = [0f32; 1];
    rows::max(&x, 4, &mut r);
    assert!(r[0].is_nan());
    rows::min(&x, 4, &mut r);
    assert!(r[0].is_nan());
    let x = [1.0f32, 5.0, -3.0, 2.0, f32::NEG_INFINITY];
    rows::max(&x, 5, &mut r);
    assert_eq!(r[0], 5.0);
    rows::min(&x, 5, &mut r);
    assert_eq!(r[0], f32::NEG_INFINITY);
    let mut o = [0f32; 5];
    rows::softmax(&x, 5, &mut o);
    assert_eq!(o[4], 0.0);
    assert!((o.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    // empty rows
    let mut r = [7f32; 2];
    rows::sum(&[], 0, &mut r);
    assert_eq!(r, [0.0, 0.0]);
    rows::max(&[], 0, &mut r);
    assert_eq!(r, [f32::NEG_INFINITY; 2]);
    rows::mean(&[], 0, &mut r);
    assert!(r[0].is_nan());
    let mut c: [f32; 3] = [1.0; 3];
    rows::col_sum(&[], 3, &mut c);
    assert_eq!(c, [0.0; 3]);
}

/// Standard normal samples (Box–Muller over the `data` generator), in `f64`.
fn normal(n: usize, seed: u64) -> Vec<f64> {
    let u = data(2 * n, seed, 1.0);
    (0..n)
        .map(|i| {
            let a = (u[2 * i] * 0.5 + 0.5).max(1e-300);
            let b = u[2 * i + 1] * std::f64::consts::PI;
            (-2.0 * a.ln()).sqrt() * b.cos()
        })
        .collect()
}

/// The `f32` layer norm and RMS norm on hard rows — a large common offset (1e4 + N(0,1)), a
/// spread tiny next to its offset (1e4 + 0.01·N(0,1): the values are a few ulps apart), a
/// tiny variance under `eps` (1 + 1e-4·N(0,1)), plain N(0,1), large values (1e3·N(0,1) − 5e3) —
/// at lengths that are and are not multiples of the 32 lanes, against an f64 reference of the
/// same `f32` inputs, on every ISA path.
///
/// The bound, with `u = 2⁻²⁴`: the shifted sums `Σd`, `Σd²` are `f32` sums of at most 16 terms
/// per lane plus a 5-level tree (relative error ≤ 21u of `Σ|d|`, `Σd²`; `d²` adds u), so `rstd`
/// is within ~11u relative and the mean correction `c` within 21u·mean|d| ≤ 21u·σ; the output's
/// own roundings (`x − m₀` exact here or within u, `·r`, `+k`, `r`'s rounding) add ~3u·|y| + u·|k|.
/// So `|ŷ − y| ≤ 32u·(1 + |y|)`, a worst-case bound (measured 1.6u, printed; before this
/// kernel, with the mean rounded to `f32` before the subtraction, the offset rows were off by
/// up to half an ulp of the mean times `rstd`: 4.8e-4 and 3.9e-2 measured). The statistics:
/// the mean within ½ ulp + 21u·σ, `rstd` within 16u relative. RMS norm: `Σx²` alike, so
/// `|ŷ − y| ≤ 16u·(1 + |y|)` (measured 1.4u).
#[test]
fn norms_hard_rows_f32() {
    let u = 2f64.powi(-24);
    let eps = 1e-5;
    let mut worst = [0f64; 4]; // layer norm y, mean, rstd, rms y
    for cols in [1usize, 15, 17, 256, 1000] {
        let z = normal(5 * cols, 7 + cols as u64);
        let kinds: [(f64, f64); 5] = [
            (1e4, 1.0),
            (1e4, 0.01),
            (1.0, 1e-4),
            (0.0, 1.0),
            (-5e3, 1e3),
        ];
        let rows_n = kinds.len();
        let x: Vec<f32> = (0..rows_n * cols)
            .map(|i| {
                let (off, sc) = kinds[i / cols];
                (off + sc * z[i]) as f32
            })
            .collect();
        for isa in Isa::available() {
            let (mut o, mut m, mut s) =
                (vec![0f32; x.len()], vec![0f32; rows_n], vec![0f32; rows_n]);
            let mut orms = vec![0f32; x.len()];
            with_isa(isa, || {
                rows::layer_norm(
                    &x,
                    cols,
                    None,
                    None,
                    eps,
                    &mut o,
                    Some(NormStats {
                        mean: &mut m,
                        rstd: &mut s,
                    }),
                );
                rows::rms_norm(&x, cols, None, eps, &mut orms, None);
            });
            for k in 0..rows_n {
                let row: Vec<f64> = x[k * cols..(k + 1) * cols]
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let mean = row.iter().sum::<f64>() / cols as f64;
                let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
                let rstd = 1.0 / (var + eps).sqrt();
                let rr = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / cols as f64 + eps).sqrt();
                for (j, v) in row.iter().enumerate() {
                    let want = (v - mean) * rstd;
                    let e = (o[k * cols + j] as f64 - want).abs() / (1.0 + want.abs());
                    assert!(
                        e <= 32.0 * u,
                        "layer_norm {isa:?} cols={cols} row {k} col {j}: {} vs {want}",
                        o[k * cols + j]
                    );
                    worst[0] = worst[0].max(e);
                    let want = v * rr;
                    let e = (orms[k * cols + j] as f64 - want).abs() / (1.0 + want.abs());
                    assert!(
                        e <= 16.0 * u,
                        "rms_norm {isa:?} cols={cols} row {k} col {j}"
                    );
                    worst[3] = worst[3].max(e);
                }
                let sigma = var.sqrt();
                let em = (m[k] as f64 - mean).abs();
                assert!(
                    em <= 0.5 * ulp32(mean) + 21.0 * u * sigma,
                    "mean {isa:?} cols={cols} row {k}: {} vs {mean}",
                    m[k]
                );
                worst[1] = worst[1].max(em / (ulp32(mean) + u * sigma));
                let er = (s[k] as f64 - rstd).abs() / rstd;
                assert!(
                    er <= 16.0 * u,
                    "rstd {isa:?} cols={cols} row {k}: {} vs {rstd}",
                    s[k]
                );
                worst[2] = worst[2].max(er);
            }
        }
    }
    println!(
        "hard rows: layer_norm {:.2}u·(1+|y|), mean {:.2} (ulp + u·σ), rstd {:.2}u, rms_norm {:.2}u·(1+|y|)",
        worst[0] / u,
        worst[1],
        worst[2] / u,
        worst[3] / u
    );
}
