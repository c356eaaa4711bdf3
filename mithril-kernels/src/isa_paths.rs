//! Every dispatched path against the baseline ("scalar") path, bit for bit, at odd sizes: the
//! narrow-float slice converters, the elementwise drivers, the row kernels and the GEMM. On
//! x86-64 this compares AVX2 / AVX-512 with the baseline; on aarch64 (the CI runs this crate's
//! tests under qemu) NEON with the baseline — where the conversions, the GEMM, the fused
//! elementwise programs' `f32` ops and the `f32` row kernels run hand-written NEON code, while
//! the `ew` closure drivers have one (baseline, NEON-vectorized) copy, so there that test checks
//! only that forcing a level keeps them working. Each test forces the paths with
//! [`crate::isa::with_isa`].

use crate::cvt;
use crate::ew::{self, Src};
use crate::gemm::{self, GemmConfig, Path};
use crate::isa::{self, with_isa, Isa};
use crate::rows;
use half::{bf16, f16};

/// Lengths around every vector width and unroll used (4, 8, 16, 32, 64 lanes) plus long ones.
const LENS: [usize; 14] = [0, 1, 3, 4, 5, 7, 8, 9, 15, 17, 31, 33, 65, 1031];

struct Lcg(u64);
impl Lcg {
    fn bits(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 32) as u32
    }
    fn unit(&mut self) -> f32 {
        (self.bits() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    }
}

/// The non-baseline levels this CPU has (NEON on aarch64; AVX2/AVX-512 on x86-64).
fn vector_isas() -> Vec<Isa> {
    let v: Vec<Isa> = Isa::available().filter(|&i| i != Isa::Scalar).collect();
    #[cfg(target_arch = "aarch64")]
    assert_eq!(v, vec![Isa::Neon], "NEON must be detected on aarch64");
    v
}

/// f32 bit patterns that matter for conversions: every class, rounding ties, NaN payloads,
/// subnormals of both formats, values near the f16 overflow, plus random bits.
fn f32_probe() -> Vec<f32> {
    let mut v: Vec<u32> = vec![
        0,
        0x8000_0000,
        0x7f80_0000,
        0xff80_0000,
        0x7fc0_0000,
        0x7f80_0001,
        0xffa5_a5a5,
        0x7fbf_ffff,
        0x0000_0001,
        0x807f_ffff,
        0x3380_0000,
        0x3380_0001,
        0x3300_0000,
        0x3880_0000,
        0x387f_e000,
        0x477f_e000,
        0x477f_f000,
        0x477f_efff,
        0x4780_0000,
        0x3f80_1000,
        0x3f80_3000,
        0x3f80_8000,
        0x3f81_8000,
        0x3f80_7fff,
    ];
    let mut r = Lcg(7);
    for _ in 0..20000 {
        v.push(r.bits());
    }
    // every f16 value widened, and the midpoints between neighbours (ties)
    for h in 0..=u16::MAX {
        let f = cvt::f16_to_f32(h);
        v.push(f.to_bits());
        v.push(f.to_bits().wrapping_add(0x1000));
    }
    v.into_iter().map(f32::from_bits).collect()
}

#[test]
fn conversions_match_baseline_bitwise() {
    let all16: Vec<u16> = (0..=u16::MAX).collect();
    let wide = f32_probe();
    for isa in vector_isas() {
        for &n in LENS.iter().chain([all16.len()].iter()) {
            // f16 / bf16 → f32, from an offset start (unaligned)
            let off = (n % 3).min(all16.len() - n.min(all16.len()));
            let src = &all16[off..off + n.min(all16.len() - off)];
            let n = src.len();
            let h: Vec<f16> = src.iter().map(|&b| f16::from_bits(b)).collect();
            let b: Vec<bf16> = src.iter().map(|&b| bf16::from_bits(b)).collect();
            let run = |i: Isa| {
                with_isa(i, || {
                    assert_eq!(isa::active(), i);
                    let mut a = vec![0f32; n];
                    let mut c = vec![0f32; n];
                    cvt::f16_to_f32_slice(&h, &mut a);
                    cvt::bf16_to_f32_slice(&b, &mut c);
                    (
                        a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    )
                })
            };
            assert_eq!(run(Isa::Scalar), run(isa), "widen {isa:?} n={n}");
        }
        for &n in LENS.iter().chain([wide.len() - 1].iter()) {
            let src = &wide[1..1 + n.min(wide.len() - 1)];
            let n = src.len();
            let run = |i: Isa| {
                with_isa(i, || {
                    let mut a = vec![f16::ZERO; n];
                    let mut c = vec![bf16::ZERO; n];
                    cvt::f32_to_f16_slice(src, &mut a);
                    cvt::f32_to_bf16_slice(src, &mut c);
                    (
                        a.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        c.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    )
                })
            };
            let (h0, b0) = run(Isa::Scalar);
            assert_eq!((h0.clone(), b0.clone()), run(isa), "narrow {isa:?} n={n}");
            // and the baseline is the `half` crate's rounding
            for (k, &x) in src.iter().enumerate() {
                assert_eq!(
                    h0[k],
                    f16::from_f32(x).to_bits(),
                    "f16 of {:#x}",
                    x.to_bits()
                );
                assert_eq!(
                    b0[k],
                    bf16::from_f32(x).to_bits(),
                    "bf16 of {:#x}",
                    x.to_bits()
                );
            }
        }
    }
}

#[test]
fn elementwise_drivers_match_baseline_bitwise() {
    let mut r = Lcg(11);
    for isa in vector_isas() {
        for &n in &LENS {
            let a: Vec<f32> = (0..n).map(|_| r.unit() * 4.0).collect();
            let b: Vec<f32> = (0..n).map(|_| r.unit() * 4.0).collect();
            let bias: Vec<f32> = (0..7).map(|_| r.unit()).collect();
            let h: Vec<f16> = a.iter().map(|&x| f16::from_f32(x)).collect();
            let run = |i: Isa| {
                with_isa(i, || {
                    let mut o1 = vec![0f32; n];
                    ew::map2(Src::Full(&a), Src::Full(&b), &mut o1, |x: f32, y: f32| {
                        crate::vmath::tanh(x * y + 0.5)
                    });
                    let mut o2 = vec![0f32; n];
                    ew::map2(Src::Full(&a), Src::Row(&bias), &mut o2, |x: f32, y: f32| {
                        crate::vmath::exp(x + y).max(0.0)
                    });
                    let mut o3 = vec![f16::ZERO; n];
                    ew::map1(Src::Full(&h), &mut o3, |x: f16| {
                        f16::from_bits(cvt::f32_to_f16(
                            crate::vmath::sigmoid(cvt::f16_to_f32(x.to_bits())) * 3.0,
                        ))
                    });
                    let mut o4 = a.clone();
                    ew::map2_inplace(&mut o4, Src::Full(&b), |x: f32, y: f32| x.mul_add(y, x));
                    (
                        o1.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        o2.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        o3.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                        o4.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    )
                })
            };
            assert_eq!(run(Isa::Scalar), run(isa), "{isa:?} n={n}");
        }
    }
}

#[test]
fn row_kernels_match_baseline_bitwise() {
    let mut r = Lcg(13);
    for isa in vector_isas() {
        for &cols in &LENS[1..] {
            let rows = 3;
            let x: Vec<f32> = (0..rows * cols).map(|_| r.unit() * 8.0).collect();
            let xh: Vec<f16> = x.iter().map(|&v| f16::from_f32(v)).collect();
            let g: Vec<f32> = (0..cols).map(|_| 1.0 + r.unit() * 0.5).collect();
            let be: Vec<f32> = (0..cols).map(|_| r.unit()).collect();
            let run = |i: Isa| {
                with_isa(i, || {
                    let mut out: Vec<Vec<u32>> = vec![];
                    let mut per_row = vec![0f32; rows];
                    let mut full = vec![0f32; rows * cols];
                    rows::sum(&x, cols, &mut per_row);
                    out.push(per_row.iter().map(|v| v.to_bits()).collect());
                    rows::max(&x, cols, &mut per_row);
                    out.push(per_row.iter().map(|v| v.to_bits()).collect());
                    rows::min(&x, cols, &mut per_row);
                    out.push(per_row.iter().map(|v| v.to_bits()).collect());
                    rows::softmax(&x, cols, &mut full);
                    out.push(full.iter().map(|v| v.to_bits()).collect());
                    rows::log_softmax(&x, cols, &mut full);
                    out.push(full.iter().map(|v| v.to_bits()).collect());
                    rows::layer_norm(&x, cols, Some(&g), Some(&be), 1e-5, &mut full, None);
                    out.push(full.iter().map(|v| v.to_bits()).collect());
                    let mut col = vec![0f32; cols];
                    rows::col_sum(&x, cols, &mut col);
                    out.push(col.iter().map(|v| v.to_bits()).collect());
                    let mut hrow = vec![f16::ZERO; rows];
                    rows::sum(&xh, cols, &mut hrow);
                    out.push(hrow.iter().map(|v| v.to_bits() as u32).collect());
                    let mut hfull = vec![f16::ZERO; rows * cols];
                    rows::softmax(&xh, cols, &mut hfull);
                    out.push(hfull.iter().map(|v| v.to_bits() as u32).collect());
                    out
                })
            };
            assert_eq!(run(Isa::Scalar), run(isa), "{isa:?} cols={cols}");
        }
    }
}

/// The GEMM's vector paths against its baseline path. They round differently (fused
/// multiply-adds, blocking), so this is a tolerance check: within `8·(k+2)·2⁻²⁴·Σ|a·b|` of the
/// baseline, plus the storage rounding for `f16`/`bf16` C (the sweep against an f64 reference
/// over every ISA, path and layout is `gemm::tests`). A row-major, and (`f16`) B with k
/// contiguous per column, (`bf16`) A column-major: the NEON packs' three layouts.
#[test]
fn gemm_matches_baseline() {
    let mut r = Lcg(17);
    for isa in vector_isas() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (9, 13, 17),
            (17, 25, 3),
            (33, 12, 65),
            (8, 12, 300),
            (65, 31, 33),
        ] {
            let a: Vec<f32> = (0..m * k).map(|_| r.unit()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| r.unit()).collect();
            // the same matrices, transposed storage: at[q*m + i] = A(i, q), bt[j*k + q] = B(q, j)
            let at: Vec<f32> = (0..m * k).map(|t| a[(t % m) * k + t / m]).collect();
            let bt: Vec<f32> = (0..k * n).map(|t| b[(t % k) * n + t / k]).collect();
            let ah: Vec<f16> = a.iter().map(|&v| f16::from_f32(v)).collect();
            let bth: Vec<f16> = bt.iter().map(|&v| f16::from_f32(v)).collect();
            let atb: Vec<bf16> = at.iter().map(|&v| bf16::from_f32(v)).collect();
            let bb: Vec<bf16> = b.iter().map(|&v| bf16::from_f32(v)).collect();
            // Σ|a·b| per output (the error scale; the narrow copies differ by < 1%)
            let scale: Vec<f64> = (0..m * n)
                .map(|o| {
                    let (i, j) = (o / n, o % n);
                    (0..k)
                        .map(|q| (a[i * k + q] as f64 * b[q * n + j] as f64).abs())
                        .sum::<f64>()
                        * 1.01
                })
                .collect();
            for path in [Path::Packed, Path::Gemv, Path::Auto] {
                // the GEMM follows the crate-wide forcing (`isa: None`)
                let run = |i: Isa| {
                    with_isa(i, || {
                        let cfg = GemmConfig {
                            isa: None,
                            threads: Some(1),
                            force_split: false,
                            path,
                        };
                        let none = |_: usize, _: usize, _: &mut [f32]| {};
                        let mut c = vec![0f32; m * n];
                        gemm::gemm_with(
                            cfg, m, n, k, 1.0, &a, k, 1, &b, n, 1, false, &mut c, n, none,
                        );
                        let mut ch = vec![f16::ZERO; m * n];
                        gemm::gemm_with(
                            cfg, m, n, k, 1.0, &ah, k, 1, &bth, 1, k, false, &mut ch, n, none,
                        );
                        let mut cb = vec![bf16::ZERO; m * n];
                        gemm::gemm_with(
                            cfg, m, n, k, 1.0, &atb, 1, m, &bb, n, 1, false, &mut cb, n, none,
                        );
                        (c, ch, cb)
                    })
                };
                let (c0, h0, b0) = run(Isa::Scalar);
                let (c1, h1, b1) = run(isa);
                let tol = |o: usize| 8.0 * (k as f64 + 2.0) * 2f64.powi(-24) * scale[o];
                for o in 0..m * n {
                    let d = (c0[o] as f64 - c1[o] as f64).abs();
                    assert!(d <= tol(o), "f32 {isa:?} {path:?} ({m},{n},{k}) @{o}: {d}");
                    let dh = (h0[o].to_f64() - h1[o].to_f64()).abs();
                    let th = tol(o) + 2f64.powi(-10) * h0[o].to_f64().abs() + 6e-8;
                    assert!(dh <= th, "f16 {isa:?} {path:?} ({m},{n},{k}) @{o}: {dh}");
                    let db = (b0[o].to_f64() - b1[o].to_f64()).abs();
                    let tb = tol(o) + 2f64.powi(-7) * b0[o].to_f64().abs();
                    assert!(db <= tb, "bf16 {isa:?} {path:?} ({m},{n},{k}) @{o}: {db}");
                }
            }
        }
    }
}

/// The bits compared: all of them, except that on x86-64 a NaN is any NaN (there the baseline
/// and the AVX copies may produce NaNs of different sign: x86's default NaN is negative, and
/// the copies take different instructions to it). On aarch64 NaN bits are compared too.
fn key(x: f32) -> u32 {
    if cfg!(target_arch = "x86_64") && x.is_nan() {
        0x7fc0_0000
    } else {
        x.to_bits()
    }
}

/// Inputs for the element functions: every special class (±0, ±∞, NaNs with payloads,
/// subnormals, the clamp and split points of `vmath`), values across the whole range, and
/// many in the range where the functions are curved.
fn ew_probe(r: &mut Lcg) -> Vec<f32> {
    let mut v: Vec<f32> = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        f32::from_bits(0xffa5_a5a5),
        f32::from_bits(0x7fc0_1234),
        f32::from_bits(1),
        -f32::from_bits(0x007f_ffff),
        f32::MIN_POSITIVE,
        f32::MAX,
        f32::MIN,
        89.0,
        89.5,
        -104.0,
        -104.5,
        0.549_306_15,
        -0.549_306_15,
        0.927_734_4,
        4.0,
        -4.0,
        -5.657,
        -10.0,
        // the clamps of the one-step sigmoid / gelu_tanh / tanh forms
        -11.0,
        -11.5,
        10.0,
        18.0,
        18.5,
        -105.0,
        -105.5,
        -17.0,
        1e30,
    ];
    for _ in 0..600 {
        v.push(r.unit() * 12.0);
    }
    for _ in 0..300 {
        v.push(f32::from_bits(r.bits()));
    }
    v
}

/// The fused elementwise programs' ops that have NEON forms (and the x86 paths' copies),
/// through the general interpreter and the one-pass forms, against the baseline bit for bit,
/// at odd lengths, on special values.
#[test]
fn elementwise_program_ops_match_baseline_bitwise() {
    use crate::prog::{self, Arg, Builder, Dom, EwOp, Lit, Mode, Out, St};
    use EwOp::*;
    let mut r = Lcg(19);
    let x = ew_probe(&mut r);
    let y: Vec<f32> = {
        let mut y = ew_probe(&mut r);
        y.rotate_left(7);
        y
    };
    let z = [Lit::F32(0.0); 2];
    let unary = [
        Neg, Abs, Square, Sqrt, Relu, Exp, Tanh, Erf, Sigmoid, Gelu, GeluTanh,
    ];
    let binary = [Add, Sub, Mul, Div];
    // op(x) or op(x, y), and `sigmoid(x · y + 0.5)` (several instructions: the interpreter)
    let mut progs = vec![];
    for op in unary.iter().chain(&binary) {
        let mut b = Builder::default();
        let a = b.load(0, St::F32);
        let c = b.load(1, St::F32);
        let args: Vec<_> = [a, c].into_iter().take(op.arity()).collect();
        let o = b.op(*op, Dom::F32, &args, z);
        progs.push((format!("{op:?}"), b.finish(o)));
    }
    {
        let mut b = Builder::default();
        let a = b.load(0, St::F32);
        let c = b.load(1, St::F32);
        let h = b.lit(Lit::F32(0.5));
        let m = b.op(Mul, Dom::F32, &[a, c], z);
        let s = b.op(Add, Dom::F32, &[m, h], z);
        let o = b.op(Sigmoid, Dom::F32, &[s], z);
        progs.push(("sigmoid(x*y+0.5)".into(), b.finish(o)));
    }
    // the one-pass forms: post(x op y) for each post, also as an epilogue over the output
    for post in [Relu, Gelu, GeluTanh, Tanh, Sigmoid] {
        let mut b = Builder::default();
        let a = b.load(0, St::F32);
        let c = b.load(1, St::F32);
        let s = b.op(Add, Dom::F32, &[a, c], z);
        let o = b.op(post, Dom::F32, &[s], z);
        progs.push((format!("{post:?}(x+y)"), b.finish(o)));
    }
    for isa in vector_isas() {
        for &n in LENS.iter().chain([x.len()].iter()) {
            let n = n.min(x.len());
            for (name, p) in &progs {
                let run = |i: Isa, mode: Mode| {
                    with_isa(i, || {
                        let mut o = y[..n].to_vec();
                        let args = [Arg::F32(Src::Full(&x[..n])), Arg::F32(Src::Full(&y[..n]))];
                        prog::run(p, &args, Out::F32(&mut o), mode).unwrap();
                        let mut rows = x[..n].to_vec();
                        if let Some(rw) = p.rows_f32(Mode::Epilogue(St::F32)) {
                            assert!(rw.run(&args, &mut rows));
                        }
                        let bits = |v: &[f32]| v.iter().map(|&x| key(x)).collect::<Vec<_>>();
                        (bits(&o), bits(&rows))
                    })
                };
                for mode in [Mode::Plain, Mode::InPlace(1), Mode::Epilogue(St::F32)] {
                    assert_eq!(
                        run(Isa::Scalar, mode),
                        run(isa, mode),
                        "{name} {isa:?} {mode:?} n={n}"
                    );
                }
            }
        }
    }
}

/// The row kernels' NEON forms (and the x86 copies) on every kernel and option — in place,
/// statistics, without gamma / beta, RMS norm, means — on rows holding special values and
/// long rows (several 2048-element blocks), against the baseline bit for bit.
#[test]
fn row_kernels_every_form_match_baseline_bitwise() {
    let mut r = Lcg(23);
    let probe = ew_probe(&mut r);
    for isa in vector_isas() {
        for &cols in &[1usize, 3, 5, 17, 63, 64, 65, 130, 4099] {
            let rows = 4;
            let mut x: Vec<f32> = (0..rows * cols).map(|_| r.unit() * 20.0).collect();
            // row 2 gets special values (NaN, ±∞, ±0 ...) scattered in
            for (k, v) in x[2 * cols..3 * cols].iter_mut().enumerate() {
                if k % 5 == 1 {
                    *v = probe[(k / 5) % 23];
                }
            }
            // row 3 holds equal values and both zeros
            for (k, v) in x[3 * cols..].iter_mut().enumerate() {
                *v = if k % 2 == 0 { 0.0 } else { -0.0 };
            }
            let g: Vec<f32> = (0..cols).map(|_| 1.0 + r.unit() * 0.5).collect();
            let be: Vec<f32> = (0..cols).map(|_| r.unit()).collect();
            let run = |i: Isa| {
                with_isa(i, || {
                    let bits = |v: &[f32]| v.iter().map(|&x| key(x)).collect::<Vec<u32>>();
                    let mut out: Vec<Vec<u32>> = vec![];
                    let mut per_row = vec![0f32; rows];
                    let mut full = vec![0f32; rows * cols];
                    for k in [rows::sum, rows::mean, rows::max, rows::min] {
                        k(&x, cols, &mut per_row);
                        out.push(bits(&per_row));
                    }
                    for k in [rows::softmax, rows::log_softmax] {
                        k(&x, cols, &mut full);
                        out.push(bits(&full));
                    }
                    for k in [rows::softmax_inplace, rows::log_softmax_inplace] {
                        let mut y = x.clone();
                        k(&mut y, cols);
                        out.push(bits(&y));
                    }
                    for (gm, bt) in [(true, true), (true, false), (false, true), (false, false)] {
                        let (mut m, mut s) = (vec![0f32; rows], vec![0f32; rows]);
                        rows::layer_norm(
                            &x,
                            cols,
                            gm.then_some(&g[..]),
                            bt.then_some(&be[..]),
                            1e-5,
                            &mut full,
                            Some(rows::NormStats {
                                mean: &mut m,
                                rstd: &mut s,
                            }),
                        );
                        out.extend([bits(&full), bits(&m), bits(&s)]);
                    }
                    for gm in [true, false] {
                        let mut s = vec![0f32; rows];
                        rows::rms_norm(
                            &x,
                            cols,
                            gm.then_some(&g[..]),
                            1e-6,
                            &mut full,
                            Some(&mut s),
                        );
                        out.extend([bits(&full), bits(&s)]);
                    }
                    out
                })
            };
            assert_eq!(run(Isa::Scalar), run(isa), "{isa:?} cols={cols}");
        }
    }
}
