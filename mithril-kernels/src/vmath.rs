//! Vectorizable `f32` math: branch-free, table-free element functions.
//!
//! Every function here is `#[inline(always)]` and written with selects, bit tricks and
//! `f32::mul_add`, so when it is inlined into a loop compiled with AVX2/AVX-512 (the copies the
//! [`crate::ew`] drivers make) LLVM turns the loop into vector code with FMA instructions. The
//! same code also runs in the baseline copy, where `mul_add` is a (correctly rounded) libm call:
//! results are bit-identical on every [`crate::isa::Isa`] path.
//!
//! **Call these from multiversioned code only** (inside [`crate::ew`] closures, [`crate::rows`], or
//! your own `#[target_feature(enable = "avx2,fma")]` function). Compiled for the baseline target,
//! `mul_add` cannot use the FMA instruction and becomes a libm `fmaf` call per coefficient: the
//! baseline copy of `exp` then runs at about 30 ns/element (vs ~2 ns for `f32::exp`), which only
//! matters on CPUs without AVX2+FMA, where the drivers fall back to it. Measured on the AVX-512
//! path (`examples/bench_ew.rs`, L1-resident, one Zen 5 core): `exp` ≈ 0.25 ns/element, `tanh`
//! ≈ 0.5, `x·sigmoid(x)` ≈ 0.37, `gelu_erf` ≈ 0.85 — 13–40× a plain `std` loop.
//!
//! Maximum errors, measured by `tests/vmath.rs` (every 509th f32 bit pattern of both signs
//! against `f64` libm; "ulp" is relative to the exact result's `f32` ulp, a subnormal's ulp being
//! 2⁻¹⁴⁹; "abs" is absolute). Measured value first, the asserted bound in brackets:
//!
//! | function      | error over the whole `f32` range unless noted                            |
//! |---------------|---------------------------------------------------------------------------|
//! | [`exp`]       | 0.96 ulp (≤ 1.5), incl. subnormal results                                  |
//! | [`ln`]        | 0.76 ulp (≤ 1), incl. subnormal inputs                                     |
//! | [`tanh`]      | 1.39 ulp (≤ 2)                                                             |
//! | [`sigmoid`]   | 2.20 ulp (≤ 3), relative accuracy kept in the negative tail               |
//! | [`softplus`]  | 1.88 ulp (≤ 2.5)                                                           |
//! | [`erf`]       | 2.27 ulp (≤ 3)                                                             |
//! | [`silu`]      | 2.36 ulp (≤ 4) for x ≥ -87; below, abs 1.3e-43 (sigmoid is subnormal)     |
//! | [`gelu_erf`]  | 7.4 ulp (≤ 8) for x ≥ -2; 34 ulp (≤ 40) for x ≥ -5.6; abs 4.4e-8 (≤ 5e-8) below (cut to 0 under -5.657) |
//! | [`gelu_tanh`] | 5.1 ulp (≤ 8) for x ≥ -2; 177 ulp (≤ 300) for x ≥ -10; abs 8.7e-43 below   |
//! | [`sin`], [`cos`] | abs 9.2e-8 (≤ 1.2e-7) for \|x\| ≤ 8192; the π/2 reduction degrades beyond |
//! | [`exp_nonpos`] | bit for bit [`exp`] for x in [-87.33, 0]; 0 below (where [`exp`] is subnormal) |
//!
//! The GELU tails are limited by the functions' own conditioning, not the kernels: the rounding
//! of `x` itself moves x·Φ(x) by about x² ulp (x·sigmoid(u(x)) by about |u(x)| ulp).
//!
//! [`sigmoid`] and [`gelu_tanh`] are one division each, `1 / (1 + e⁻ˣ)` and `x / (1 + e⁻ᵘ)`,
//! with the denominator scaled by 2⁻⁶⁴ (`SCALE_K`) so that e⁻ˣ needs a single 2ⁿ scaling in
//! both tails, no select between the signs and no upper clamp on `exp`'s argument; [`tanh`]
//! clamps e^{2|x|} at e²⁰ for the same single scaling, and `gelu_tanh` runs a two-FMA-shorter
//! exponential (`exp_core_short`). On one Zen 4 core (`bench_ew` with `EW_ROWS=4`, L1-resident,
//! session 17) this took `gelu_tanh` from 0.51 to 0.32 ns/element on AVX-512 (AVX2: 0.85 to
//! 0.49), `x·sigmoid(x)` from 0.37 to 0.32 and `tanh` from 0.47 to 0.41. The division is kept:
//! replacing it by Newton steps (seeded from the bits, portable) measured slower on this CPU.
//!
//! Special values: NaN in gives NaN out; `exp(+∞) = +∞`, `exp(-∞) = 0`, overflow gives `+∞`;
//! `ln(0) = -∞`, `ln(x<0) = NaN`, `ln(+∞) = +∞`; `tanh`, `sigmoid`, `erf` saturate to their
//! limits; `softplus(+∞) = +∞`; `gelu_*(-∞) = -0.0` and `silu(-∞) = -0.0` (the limits; the
//! naive formulas give NaN); `sin`/`cos` of `±∞` are NaN.
//!
//! [`VFloat`] gives generic code (`T::vexp(x)`) the same names for `f32` (these functions) and
//! `f64` (libm, not vectorized).

// Polynomial coefficients are written as fitted (more digits than f32 holds; the compiler rounds),
// and the leading erf coefficient is the fitted value near 2/√π, not the constant itself.
#![allow(clippy::excessive_precision, clippy::approx_constant)]

/// The NEON forms (aarch64): the same operations four lanes at a time, bit for bit.
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    a.mul_add(b, c)
}

#[inline(always)]
fn sel(c: bool, a: f32, b: f32) -> f32 {
    if c {
        a
    } else {
        b
    }
}

/// 1.5 · 2²³: adding it rounds an `f32` of magnitude < 2²² to an integer (ties to even), which
/// then sits in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;
const LOG2E: f32 = std::f32::consts::LOG2_E;
// ln 2 split so that n · LN2_HI is exact for |n| < 2⁹
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// eˣ. Clamps the argument to [-104, 89] (beyond which the result is 0 or +∞), reduces by
/// `n·ln 2` (Cody–Waite), evaluates a degree-6 polynomial, and scales by 2ⁿ in two steps so
/// subnormal results round once.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = sel(x > 89.0, 89.0, x);
    let xc = sel(xc < -104.0, -104.0, xc);
    let (y, t) = exp_core(xc);
    let ni = (t.to_bits() as i32).wrapping_sub(MAGIC_BITS);
    let n1 = ni >> 1;
    let n2 = ni.wrapping_sub(n1);
    let s1 = f32::from_bits((n1.wrapping_add(127) << 23) as u32);
    let s2 = f32::from_bits((n2.wrapping_add(127) << 23) as u32);
    y * s1 * s2
}

/// The reduction and polynomial of [`exp`] for an argument already clamped: eᵛ = y · 2ⁿ, with
/// y in [0.7, 1.42] and `n` held in the low mantissa bits of `t` (read by [`pow2`]).
#[inline(always)]
fn exp_core(v: f32) -> (f32, f32) {
    let t = fma(v, LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = fma(n, -LN2_HI, v);
    let r = fma(n, -LN2_LO, r);
    // Cephes expf polynomial: e^r = 1 + r + r² P(r), |r| ≤ ln2/2
    let p = fma(1.987_569_2e-4, r, 1.398_199_9e-3);
    let p = fma(p, r, 8.333_452e-3);
    let p = fma(p, r, 4.166_579_6e-2);
    let p = fma(p, r, 1.666_666_5e-1);
    let p = fma(p, r, 5.000_000_1e-1);
    (fma(p, r * r, r) + 1.0, t)
}

/// A shorter [`exp_core`] for [`gelu_tanh`]: the reduction `r = v - n·ln 2` with one constant
/// (its error, n · 1.9e-9, is ≤ 0.2 ulp of eᵛ for |v| ≤ 4, i.e. x ≥ -2, and ≤ 5.2 ulp at
/// n = 162, where gelu_tanh's own conditioning is ~170 ulp) and a degree-6 polynomial (a
/// minimax fit of (eʳ - 1 - r)/r² of degree 4, relative error about 3e-9 on |r| ≤ ln2/2 in the
/// f64 fit). Two FMAs fewer than [`exp_core`]; with it gelu_tanh's measured errors are unchanged
/// for x ≥ -2 and 3 ulp larger in [-10, -2].
#[inline(always)]
fn exp_core_short(v: f32) -> (f32, f32) {
    let t = fma(v, LOG2E, MAGIC);
    let n = t - MAGIC;
    let r = fma(n, -std::f32::consts::LN_2, v);
    let p = fma(0.001_381_453_941_576_182_8, r, 0.008_368_745_446_205_14);
    let p = fma(p, r, 0.041_668_388_992_547_99);
    let p = fma(p, r, 0.166_665_211_319_923_4);
    let p = fma(p, r, 0.499_999_940_395_355_2);
    (fma(p, r * r, r) + 1.0, t)
}

/// 2ⁿ⁺ᵏ for the `t` of [`exp_core`] (one scaling: n + k must lie in [-126, 127]).
#[inline(always)]
fn pow2(t: f32, k: i32) -> f32 {
    f32::from_bits(((t.to_bits() as i32).wrapping_add(127 + k - MAGIC_BITS) << 23) as u32)
}

/// The scale of the one-step forms of [`sigmoid`] and [`gelu_tanh`]: they compute
/// (1 + eᵛ)·2⁻⁶⁴, normal for every clamped `v` (n - 64 in [-90, 98]), so one 2ⁿ⁻⁶⁴ scaling
/// serves both tails and a final ·2⁻⁶⁴ rounds a subnormal result once.
const SCALE_K: i32 = 64;
/// 2⁻⁶⁴.
const SCALE: f32 = f32::from_bits(((127 - SCALE_K) << 23) as u32);

/// Natural logarithm (musl `logf` algorithm, branch-free; subnormals are pre-scaled by 2²³).
#[inline(always)]
pub fn ln(x: f32) -> f32 {
    const LG1: f32 = 0.666_666_6;
    const LG2: f32 = 0.400_009_72;
    const LG3: f32 = 0.284_987_87;
    const LG4: f32 = 0.242_790_79;
    const HI: f32 = 6.931_381_2e-1;
    const LO: f32 = 9.058_000_6e-6;
    let sub = x < f32::MIN_POSITIVE;
    let xs = sel(sub, x * 8_388_608.0, x);
    let k0: i32 = if sub { -23 } else { 0 };
    let ix = (xs.to_bits() as i32).wrapping_add(0x3f80_0000 - 0x3f35_04f3);
    let k = (ix >> 23).wrapping_sub(0x7f).wrapping_add(k0);
    let ix = (ix & 0x007f_ffff) + 0x3f35_04f3;
    let f = f32::from_bits(ix as u32) - 1.0;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * fma(w, LG4, LG2);
    let t2 = z * fma(w, LG3, LG1);
    let r = t2 + t1;
    let hfsq = 0.5 * f * f;
    let dk = k as f32;
    let res = s * (hfsq + r) + dk * LO - hfsq + f + dk * HI;
    let res = sel(x == f32::INFINITY, f32::INFINITY, res);
    let res = sel(x == 0.0, f32::NEG_INFINITY, res);
    // x < 0 or NaN
    sel(x >= 0.0, res, f32::NAN)
}

/// ln(1 + x) for `x ≥ 0` (accurate for tiny `x`): `ln(u) + (x - (u - 1)) / u` with `u = 1 + x`.
#[inline(always)]
fn ln_1p_pos(x: f32) -> f32 {
    let u = 1.0 + x;
    ln(u) + (x - (u - 1.0)) / u
}

/// atanh(1/2): below it `tanh` uses an odd polynomial, above it `1 - 2/(e^{2|x|} + 1)` (where the
/// subtraction is exact).
const TANH_SPLIT: f32 = 0.549_306_15;

/// Hyperbolic tangent. Above atanh(1/2), `1 - 2/(e^{2|x|} + 1)` with e^{2|x|} clamped at
/// e²⁰ (where `2/(e + 1)` < 2⁻²⁵ and the result is 1), so one 2ⁿ scaling suffices.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    let a = x.abs();
    let v = 2.0 * a;
    let v = sel(v > 20.0, 20.0, v);
    let (y, t) = exp_core(v);
    let e = y * pow2(t, 0);
    let big = 1.0 - 2.0 / (e + 1.0);
    let z = a * a;
    let p = fma(2.528_539_3e-3, z, -8.527_798e-3);
    let p = fma(p, z, 2.181_879_5e-2);
    let p = fma(p, z, -5.396_473_3e-2);
    let p = fma(p, z, 1.333_332_4e-1);
    let p = fma(p, z, -3.333_333_3e-1);
    let small = fma(a * z, p, a);
    let r = sel(a < TANH_SPLIT, small, big);
    r.copysign(x)
}

/// 1 / (1 + e⁻ˣ), with relative accuracy in both tails: computed as
/// `(1 / ((1 + e⁻ˣ)·2⁻⁶⁴))·2⁻⁶⁴` (see `SCALE_K`; `x` clamped to [-105, 18], beyond which the
/// result rounds to 0 or 1): one division, no select, no cancellation.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    let xc = sel(x < -105.0, -105.0, x);
    let xc = sel(xc > 18.0, 18.0, xc);
    let (y, t) = exp_core(-xc);
    let d = fma(y, pow2(t, -SCALE_K), SCALE);
    (1.0 / d) * SCALE
}

/// x · sigmoid(x) (SiLU / swish); `silu(-∞) = -0.0`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    sel(x == f32::NEG_INFINITY, -0.0, x * sigmoid(x))
}

/// ln(1 + eˣ) = max(x, 0) + ln(1 + e^{-|x|}), stable for every `x`.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    let e = exp(-x.abs());
    sel(x < 0.0, 0.0, x) + ln_1p_pos(e)
}

const ERF_SPLIT: f32 = 0.927_734_4;
const ERF_CENTER: f32 = 2.463_867_2;

/// g(s) with erf(x) = x · g(x²) for |x| < ERF_SPLIT.
#[inline(always)]
fn erf_small(s: f32) -> f32 {
    let p = fma(8.349_472e-5, s, -8.138_217_4e-4);
    let p = fma(p, s, 5.200_679e-3);
    let p = fma(p, s, -2.685_927_7e-2);
    let p = fma(p, s, 1.128_369_4e-1);
    let p = fma(p, s, -3.761_263_4e-1);
    fma(p, s, 1.128_379_2)
}

/// erfc(t) for t ≥ ERF_SPLIT: exp(h(t - c) - t²), h a degree-8 fit of ln(erfc(t)) + t²; 0 for
/// t > 4 (erfc(4) ≈ 1.5e-8, below half an ulp of 1). The exponent lies in [-18, -1.59] for every
/// t in [0.9, 4] (checked for each f32 there), where [`exp_nonpos`] is [`exp`] bit for bit.
#[inline(always)]
fn erfc_large(t: f32) -> f32 {
    let tc = sel(t > 4.0, 4.0, t);
    let u = tc - ERF_CENTER;
    let h = fma(1.643_525e-6, u, -1.378_295_9e-5);
    let h = fma(h, u, 8.068_191e-5);
    let h = fma(h, u, -4.372_640_1e-4);
    let h = fma(h, u, 2.242_804_3e-3);
    let h = fma(h, u, -1.117_704_3e-2);
    let h = fma(h, u, 5.730_047_4e-2);
    let h = fma(h, u, -3.567_781_7e-1);
    let h = fma(h, u, -1.543_998_2);
    let e = exp_nonpos(fma(-tc, tc, h));
    sel(t > 4.0, 0.0, e)
}

/// Error function.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let small = x * erf_small(x * x);
    let big = (1.0 - erfc_large(a)).copysign(x);
    sel(a < ERF_SPLIT, small, big)
}

/// Φ(x) = (1 + erf(x/√2)) / 2 without cancellation in the negative tail.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    let z = x * std::f32::consts::FRAC_1_SQRT_2;
    let a = z.abs();
    let small = fma(0.5 * z, erf_small(z * z), 0.5);
    let e = 0.5 * erfc_large(a);
    let big = sel(z < 0.0, e, 1.0 - e);
    sel(a < ERF_SPLIT, small, big)
}

/// GELU, erf form: x · Φ(x) = 0.5 x (1 + erf(x/√2)); `gelu_erf(-∞) = -0.0`.
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    sel(x == f32::NEG_INFINITY, -0.0, x * normal_cdf(x))
}

/// 2√(2/π) and the cubic coefficient of [`gelu_tanh`].
const GELU_K2: f32 = 2.0 * 0.797_884_6;
const GELU_C: f32 = 0.044_715;

/// GELU, tanh form (PyTorch `approximate="tanh"`): 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))),
/// computed as x / (1 + e⁻ᵘ) with u = 2√(2/π)(x + 0.044715 x³) (the same function, no
/// cancellation for negative x) in [`sigmoid`]'s scaled form: `x` clamped below at -11 (the
/// result is -0 there), -u at -17 below (1 + e⁻ᵘ rounds to 1 there), the quotient limited to
/// `max(x, 0)` (it overflows for x ≥ 2⁶⁴, where the result is `x`); `gelu_tanh(-∞) = -0.0`.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    let xc = sel(x < -11.0, -11.0, x);
    let v = xc * fma(-GELU_K2 * GELU_C, xc * xc, -GELU_K2);
    let v = sel(v < -17.0, -17.0, v);
    let (y, t) = exp_core_short(v);
    let d = fma(y, pow2(t, -SCALE_K), SCALE);
    let q = (xc / d) * SCALE;
    let xp = sel(xc < 0.0, 0.0, xc);
    sel(q > xp, xp, q)
}

// π/2 in three parts (Cephes DP1..DP3 doubled): n · PIO2_A and n · PIO2_B are exact for
// |n| < 2¹⁰ or so.
const PIO2_A: f32 = 1.570_312_5;
const PIO2_B: f32 = 4.837_513e-4;
const PIO2_C: f32 = 7.549_79e-8;

/// (sin r, cos r) polynomials for |r| ≤ π/4 and the quadrant of `x`.
#[inline(always)]
fn sincos_core(x: f32) -> (f32, f32, i32) {
    let t = fma(x, std::f32::consts::FRAC_2_PI, MAGIC);
    let n = t - MAGIC;
    let q = (t.to_bits() as i32).wrapping_sub(MAGIC_BITS);
    let r = fma(n, -PIO2_A, x);
    let r = fma(n, -PIO2_B, r);
    let r = fma(n, -PIO2_C, r);
    let z = r * r;
    let s = fma(-1.951_529_6e-4, z, 8.332_161e-3);
    let s = fma(s, z, -1.666_665_5e-1);
    let s = fma(s * z, r, r);
    let c = fma(2.443_315_7e-5, z, -1.388_731_6e-3);
    let c = fma(c, z, 4.166_664_6e-2);
    let c = fma(c * z, z, fma(-0.5, z, 1.0));
    (s, c, q)
}

/// Sine (Cody–Waite reduction by π/2: accurate for |x| ≤ 8192, degrading beyond; NaN for ±∞).
#[inline(always)]
pub fn sin(x: f32) -> f32 {
    let (s, c, q) = sincos_core(x);
    let v = sel(q & 1 == 0, s, c);
    let v = sel(q & 2 == 0, v, -v);
    sel(x.abs() == f32::INFINITY, f32::NAN, v)
}

/// Cosine (same reduction and accuracy as [`sin`]).
#[inline(always)]
pub fn cos(x: f32) -> f32 {
    let (s, c, q) = sincos_core(x);
    let v = sel(q & 1 == 0, c, -s);
    let v = sel(q & 2 == 0, v, -v);
    sel(x.abs() == f32::INFINITY, f32::NAN, v)
}

/// The vectorizable functions under one name for `f32` and `f64`, for generic code
/// (`T::vexp(x)`). `f32` uses this module's branch-free versions; `f64` uses libm / `std` (exact
/// to about 1 ulp, not vectorized) with the same special-value conventions.
pub trait VFloat: Copy {
    /// eˣ
    fn vexp(self) -> Self;
    /// natural logarithm
    fn vln(self) -> Self;
    /// hyperbolic tangent
    fn vtanh(self) -> Self;
    /// 1 / (1 + e⁻ˣ)
    fn vsigmoid(self) -> Self;
    /// x · sigmoid(x)
    fn vsilu(self) -> Self;
    /// ln(1 + eˣ)
    fn vsoftplus(self) -> Self;
    /// error function
    fn verf(self) -> Self;
    /// x · Φ(x)
    fn vgelu_erf(self) -> Self;
    /// tanh-form GELU
    fn vgelu_tanh(self) -> Self;
    /// sine
    fn vsin(self) -> Self;
    /// cosine
    fn vcos(self) -> Self;
}

impl VFloat for f32 {
    #[inline(always)]
    fn vexp(self) -> Self {
        exp(self)
    }
    #[inline(always)]
    fn vln(self) -> Self {
        ln(self)
    }
    #[inline(always)]
    fn vtanh(self) -> Self {
        tanh(self)
    }
    #[inline(always)]
    fn vsigmoid(self) -> Self {
        sigmoid(self)
    }
    #[inline(always)]
    fn vsilu(self) -> Self {
        silu(self)
    }
    #[inline(always)]
    fn vsoftplus(self) -> Self {
        softplus(self)
    }
    #[inline(always)]
    fn verf(self) -> Self {
        erf(self)
    }
    #[inline(always)]
    fn vgelu_erf(self) -> Self {
        gelu_erf(self)
    }
    #[inline(always)]
    fn vgelu_tanh(self) -> Self {
        gelu_tanh(self)
    }
    #[inline(always)]
    fn vsin(self) -> Self {
        sin(self)
    }
    #[inline(always)]
    fn vcos(self) -> Self {
        cos(self)
    }
}

/// Double-precision versions (libm).
pub mod f64x {
    /// 1 / (1 + e⁻ˣ) with relative accuracy in both tails.
    #[inline]
    pub fn sigmoid(x: f64) -> f64 {
        let e = (-x.abs()).exp();
        let s = 1.0 / (1.0 + e);
        if x < 0.0 {
            e * s
        } else {
            s
        }
    }
    /// x · sigmoid(x); `-0.0` at `-∞`.
    #[inline]
    pub fn silu(x: f64) -> f64 {
        if x == f64::NEG_INFINITY {
            -0.0
        } else {
            x * sigmoid(x)
        }
    }
    /// ln(1 + eˣ)
    #[inline]
    pub fn softplus(x: f64) -> f64 {
        (if x < 0.0 { 0.0 } else { x }) + (-x.abs()).exp().ln_1p()
    }
    /// x · Φ(x), via erfc for the negative tail; `-0.0` at `-∞`.
    #[inline]
    pub fn gelu_erf(x: f64) -> f64 {
        if x == f64::NEG_INFINITY {
            return -0.0;
        }
        x * 0.5 * libm::erfc(-x * std::f64::consts::FRAC_1_SQRT_2)
    }
    /// tanh-form GELU as x · sigmoid(2√(2/π)(x + 0.044715 x³)); `-0.0` at `-∞`.
    #[inline]
    pub fn gelu_tanh(x: f64) -> f64 {
        if x == f64::NEG_INFINITY {
            return -0.0;
        }
        let k = 2.0 * 0.797_884_560_802_865_4;
        x * sigmoid(k * (x + 0.044715 * x * x * x))
    }
}

impl VFloat for f64 {
    #[inline(always)]
    fn vexp(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn vln(self) -> Self {
        self.ln()
    }
    #[inline(always)]
    fn vtanh(self) -> Self {
        self.tanh()
    }
    #[inline(always)]
    fn vsigmoid(self) -> Self {
        f64x::sigmoid(self)
    }
    #[inline(always)]
    fn vsilu(self) -> Self {
        f64x::silu(self)
    }
    #[inline(always)]
    fn vsoftplus(self) -> Self {
        f64x::softplus(self)
    }
    #[inline(always)]
    fn verf(self) -> Self {
        libm::erf(self)
    }
    #[inline(always)]
    fn vgelu_erf(self) -> Self {
        f64x::gelu_erf(self)
    }
    #[inline(always)]
    fn vgelu_tanh(self) -> Self {
        f64x::gelu_tanh(self)
    }
    #[inline(always)]
    fn vsin(self) -> Self {
        self.sin()
    }
    #[inline(always)]
    fn vcos(self) -> Self {
        self.cos()
    }
}

/// Below this, [`exp_nonpos`] gives 0 (e⁻⁸⁷·³³ ≈ 1.2·10⁻³⁸ is the smallest normal result).
const EXP_NONPOS_MIN: f32 = -87.33;

/// eˣ for the arguments of a softmax (`x ≤ 0`, `-∞` for a masked entry): bit for bit [`exp`]
/// on `[-87.33, 0]` (normal results), 0 below it (where [`exp`] gives a subnormal) and for
/// `-∞`; NaN stays NaN. One scaling by 2ⁿ and no upper clamp: about a quarter fewer
/// instructions than [`exp`], for attention's row update.
#[inline(always)]
pub fn exp_nonpos(x: f32) -> f32 {
    let xc = sel(x < EXP_NONPOS_MIN, EXP_NONPOS_MIN, x);
    let (y, t) = exp_core(xc);
    // n ∈ [-126, 0] here: 2ⁿ is normal, and so is y·2ⁿ (exact)
    sel(x < EXP_NONPOS_MIN, 0.0, y * pow2(t, 0))
}
