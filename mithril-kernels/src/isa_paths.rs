//! Every dispatched path against the baseline ("scalar") path, bit for bit, at odd sizes: the
//! narrow-float slice converters, the elementwise drivers, the row kernels and the GEMM. On
//! x86-64 this compares AVX2 / AVX-512 with the baseline; on aarch64 (the CI runs this crate's
//! tests under qemu) NEON with the baseline — where the conversions and the GEMM run hand-written
//! NEON code, while the drivers and row kernels have one (baseline, NEON-vectorized) copy, so
//! there those two tests check only that forcing a level keeps them working. Each test forces the
//! paths with [`crate::isa::with_isa`] and also checks which level actually ran.

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
