//! NEON (`core::arch::aarch64`) forms of the [`super`] functions, four lanes at a time, and the
//! slice loops the NEON paths of [`crate::prog`] and [`crate::rows`] run them in.
//!
//! Each vector function performs the scalar function's operations in the same order — the same
//! fused multiply-adds (`vfmaq_f32(c, a, b)` is `a.mul_add(b, c)`), divisions, selects and bit
//! tricks — so each lane is bit for bit the scalar result (`isa_paths` checks it under qemu).
//! A slice's tail (fewer than four elements) runs the scalar function.

#![allow(clippy::excessive_precision, clippy::approx_constant)]
// The intrinsics are `unsafe` on some toolchains and safe (NEON being part of the aarch64
// baseline) on others.
#![allow(unused_unsafe)]

use std::arch::aarch64::*;

/// Splat.
#[inline(always)]
fn sp(v: f32) -> float32x4_t {
    unsafe { vdupq_n_f32(v) }
}

/// `a.mul_add(b, c)` lane by lane (one rounding).
#[inline(always)]
fn fma(a: float32x4_t, b: float32x4_t, c: float32x4_t) -> float32x4_t {
    unsafe { vfmaq_f32(c, a, b) }
}

/// `a.mul_add(b, c)` with a scalar `a`.
#[inline(always)]
fn fmas(a: f32, b: float32x4_t, c: f32) -> float32x4_t {
    unsafe { vfmaq_f32(vdupq_n_f32(c), vdupq_n_f32(a), b) }
}

#[inline(always)]
fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    unsafe { vaddq_f32(a, b) }
}
#[inline(always)]
fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    unsafe { vsubq_f32(a, b) }
}
#[inline(always)]
fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    unsafe { vmulq_f32(a, b) }
}
#[inline(always)]
fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
    unsafe { vdivq_f32(a, b) }
}
#[inline(always)]
fn abs(a: float32x4_t) -> float32x4_t {
    unsafe { vabsq_f32(a) }
}
#[inline(always)]
fn neg(a: float32x4_t) -> float32x4_t {
    unsafe { vnegq_f32(a) }
}
/// `if c { a } else { b }` per lane.
#[inline(always)]
fn sel(c: uint32x4_t, a: float32x4_t, b: float32x4_t) -> float32x4_t {
    unsafe { vbslq_f32(c, a, b) }
}
#[inline(always)]
fn gt(a: float32x4_t, b: f32) -> uint32x4_t {
    unsafe { vcgtq_f32(a, vdupq_n_f32(b)) }
}
#[inline(always)]
fn lt(a: float32x4_t, b: f32) -> uint32x4_t {
    unsafe { vcltq_f32(a, vdupq_n_f32(b)) }
}
#[inline(always)]
fn eq(a: float32x4_t, b: f32) -> uint32x4_t {
    unsafe { vceqq_f32(a, vdupq_n_f32(b)) }
}
/// `r.copysign(x)`.
#[inline(always)]
fn copysign(r: float32x4_t, x: float32x4_t) -> float32x4_t {
    unsafe { vbslq_f32(vdupq_n_u32(0x8000_0000), x, r) }
}

const MAGIC: f32 = 12_582_912.0;
const MAGIC_BITS: i32 = 0x4B40_0000;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;

/// [`super::exp`].
#[inline(always)]
pub(crate) fn exp(x: float32x4_t) -> float32x4_t {
    unsafe {
        let xc = sel(gt(x, 89.0), sp(89.0), x);
        let xc = sel(lt(xc, -104.0), sp(-104.0), xc);
        let (y, t) = exp_core(xc);
        let ni = vsubq_s32(vreinterpretq_s32_f32(t), vdupq_n_s32(MAGIC_BITS));
        let n1 = vshrq_n_s32::<1>(ni);
        let n2 = vsubq_s32(ni, n1);
        let bias = vdupq_n_s32(127);
        let s1 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n1, bias)));
        let s2 = vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(n2, bias)));
        mul(mul(y, s1), s2)
    }
}

/// `exp_core` of the scalar module: `(y, t)` with eᵛ = y · 2ⁿ.
#[inline(always)]
fn exp_core(v: float32x4_t) -> (float32x4_t, float32x4_t) {
    let t = fma(v, sp(LOG2E), sp(MAGIC));
    let n = sub(t, sp(MAGIC));
    let r = fma(n, sp(-LN2_HI), v);
    let r = fma(n, sp(-LN2_LO), r);
    let p = fmas(1.987_569_2e-4, r, 1.398_199_9e-3);
    let p = fma(p, r, sp(8.333_452e-3));
    let p = fma(p, r, sp(4.166_579_6e-2));
    let p = fma(p, r, sp(1.666_666_5e-1));
    let p = fma(p, r, sp(5.000_000_1e-1));
    (add(fma(p, mul(r, r), r), sp(1.0)), t)
}

/// `exp_core_short` of the scalar module.
#[inline(always)]
fn exp_core_short(v: float32x4_t) -> (float32x4_t, float32x4_t) {
    let t = fma(v, sp(LOG2E), sp(MAGIC));
    let n = sub(t, sp(MAGIC));
    let r = fma(n, sp(-std::f32::consts::LN_2), v);
    let p = fmas(0.001_381_453_941_576_182_8, r, 0.008_368_745_446_205_14);
    let p = fma(p, r, sp(0.041_668_388_992_547_99));
    let p = fma(p, r, sp(0.166_665_211_319_923_4));
    let p = fma(p, r, sp(0.499_999_940_395_355_2));
    (add(fma(p, mul(r, r), r), sp(1.0)), t)
}

/// `pow2` of the scalar module: 2ⁿ⁺ᵏ from `t`.
#[inline(always)]
fn pow2(t: float32x4_t, k: i32) -> float32x4_t {
    unsafe {
        let e = vaddq_s32(vreinterpretq_s32_f32(t), vdupq_n_s32(127 + k - MAGIC_BITS));
        vreinterpretq_f32_s32(vshlq_n_s32::<23>(e))
    }
}

/// [`super::exp_nonpos`].
#[inline(always)]
fn exp_nonpos(x: float32x4_t) -> float32x4_t {
    let low = lt(x, super::EXP_NONPOS_MIN);
    let xc = sel(low, sp(super::EXP_NONPOS_MIN), x);
    let (y, t) = exp_core(xc);
    sel(low, sp(0.0), mul(y, pow2(t, 0)))
}

const TANH_SPLIT: f32 = super::TANH_SPLIT;

/// [`super::tanh`].
#[inline(always)]
pub(crate) fn tanh(x: float32x4_t) -> float32x4_t {
    let a = abs(x);
    let v = mul(sp(2.0), a);
    let v = sel(gt(v, 20.0), sp(20.0), v);
    let (y, t) = exp_core(v);
    let e = mul(y, pow2(t, 0));
    let big = sub(sp(1.0), div(sp(2.0), add(e, sp(1.0))));
    let z = mul(a, a);
    let p = fmas(2.528_539_3e-3, z, -8.527_798e-3);
    let p = fma(p, z, sp(2.181_879_5e-2));
    let p = fma(p, z, sp(-5.396_473_3e-2));
    let p = fma(p, z, sp(1.333_332_4e-1));
    let p = fma(p, z, sp(-3.333_333_3e-1));
    let small = fma(mul(a, z), p, a);
    let r = sel(lt(a, TANH_SPLIT), small, big);
    copysign(r, x)
}

/// [`super::sigmoid`].
#[inline(always)]
pub(crate) fn sigmoid(x: float32x4_t) -> float32x4_t {
    let xc = sel(lt(x, -105.0), sp(-105.0), x);
    let xc = sel(gt(xc, 18.0), sp(18.0), xc);
    let (y, t) = exp_core(neg(xc));
    let d = fma(y, pow2(t, -super::SCALE_K), sp(super::SCALE));
    mul(div(sp(1.0), d), sp(super::SCALE))
}

/// `erf_small` of the scalar module.
#[inline(always)]
fn erf_small(s: float32x4_t) -> float32x4_t {
    let p = fmas(8.349_472e-5, s, -8.138_217_4e-4);
    let p = fma(p, s, sp(5.200_679e-3));
    let p = fma(p, s, sp(-2.685_927_7e-2));
    let p = fma(p, s, sp(1.128_369_4e-1));
    let p = fma(p, s, sp(-3.761_263_4e-1));
    fma(p, s, sp(1.128_379_2))
}

/// `erfc_large` of the scalar module.
#[inline(always)]
fn erfc_large(t: float32x4_t) -> float32x4_t {
    let big = gt(t, 4.0);
    let tc = sel(big, sp(4.0), t);
    let u = sub(tc, sp(super::ERF_CENTER));
    let h = fmas(1.643_525e-6, u, -1.378_295_9e-5);
    let h = fma(h, u, sp(8.068_191e-5));
    let h = fma(h, u, sp(-4.372_640_1e-4));
    let h = fma(h, u, sp(2.242_804_3e-3));
    let h = fma(h, u, sp(-1.117_704_3e-2));
    let h = fma(h, u, sp(5.730_047_4e-2));
    let h = fma(h, u, sp(-3.567_781_7e-1));
    let h = fma(h, u, sp(-1.543_998_2));
    let e = exp_nonpos(fma(neg(tc), tc, h));
    sel(big, sp(0.0), e)
}

/// [`super::erf`].
#[inline(always)]
pub(crate) fn erf(x: float32x4_t) -> float32x4_t {
    let a = abs(x);
    let small = mul(x, erf_small(mul(x, x)));
    let big = copysign(sub(sp(1.0), erfc_large(a)), x);
    sel(lt(a, super::ERF_SPLIT), small, big)
}

/// `normal_cdf` of the scalar module.
#[inline(always)]
fn normal_cdf(x: float32x4_t) -> float32x4_t {
    let z = mul(x, sp(std::f32::consts::FRAC_1_SQRT_2));
    let a = abs(z);
    let small = fma(mul(sp(0.5), z), erf_small(mul(z, z)), sp(0.5));
    let e = mul(sp(0.5), erfc_large(a));
    let big = sel(lt(z, 0.0), e, sub(sp(1.0), e));
    sel(lt(a, super::ERF_SPLIT), small, big)
}

/// [`super::gelu_erf`].
#[inline(always)]
pub(crate) fn gelu_erf(x: float32x4_t) -> float32x4_t {
    sel(eq(x, f32::NEG_INFINITY), sp(-0.0), mul(x, normal_cdf(x)))
}

/// [`super::gelu_tanh`].
#[inline(always)]
pub(crate) fn gelu_tanh(x: float32x4_t) -> float32x4_t {
    let xc = sel(lt(x, -11.0), sp(-11.0), x);
    let v = mul(
        xc,
        fma(
            sp(-super::GELU_K2 * super::GELU_C),
            mul(xc, xc),
            sp(-super::GELU_K2),
        ),
    );
    let v = sel(lt(v, -17.0), sp(-17.0), v);
    let (y, t) = exp_core_short(v);
    let d = fma(y, pow2(t, -super::SCALE_K), sp(super::SCALE));
    let q = mul(div(xc, d), sp(super::SCALE));
    let xp = sel(lt(xc, 0.0), sp(0.0), xc);
    unsafe { sel(vcgtq_f32(q, xp), xp, q) }
}

/// [`crate::scalar::relu`] on `f32`: `x` when `x > 0` or NaN, else `+0`.
#[inline(always)]
pub(crate) fn relu(x: float32x4_t) -> float32x4_t {
    unsafe {
        let keep = vorrq_u32(vcgtq_f32(x, sp(0.0)), vmvnq_u32(vceqq_f32(x, x)));
        sel(keep, x, sp(0.0))
    }
}

/// `d[i] = fs(a[i])`, four lanes at a time by `fv`.
#[inline(always)]
pub(crate) fn map1(
    a: &[f32],
    d: &mut [f32],
    fv: impl Fn(float32x4_t) -> float32x4_t,
    fs: impl Fn(f32) -> f32,
) {
    let n = d.len().min(a.len());
    let mut i = 0;
    unsafe {
        while i + 4 <= n {
            let v = vld1q_f32(a.as_ptr().add(i));
            vst1q_f32(d.as_mut_ptr().add(i), fv(v));
            i += 4;
        }
    }
    for k in i..n {
        d[k] = fs(a[k]);
    }
}

/// `d[i] = fs(a[i], b[i])`, four lanes at a time by `fv`.
#[inline(always)]
pub(crate) fn map2(
    a: &[f32],
    b: &[f32],
    d: &mut [f32],
    fv: impl Fn(float32x4_t, float32x4_t) -> float32x4_t,
    fs: impl Fn(f32, f32) -> f32,
) {
    let n = d.len().min(a.len()).min(b.len());
    let mut i = 0;
    unsafe {
        while i + 4 <= n {
            let x = vld1q_f32(a.as_ptr().add(i));
            let y = vld1q_f32(b.as_ptr().add(i));
            vst1q_f32(d.as_mut_ptr().add(i), fv(x, y));
            i += 4;
        }
    }
    for k in i..n {
        d[k] = fs(a[k], b[k]);
    }
}

/// `d[i] = fs(d[i], b[i])` in place, four lanes at a time by `fv`.
#[inline(always)]
pub(crate) fn map2_inplace(
    d: &mut [f32],
    b: &[f32],
    fv: impl Fn(float32x4_t, float32x4_t) -> float32x4_t,
    fs: impl Fn(f32, f32) -> f32,
) {
    let n = d.len().min(b.len());
    let mut i = 0;
    unsafe {
        while i + 4 <= n {
            let x = vld1q_f32(d.as_ptr().add(i));
            let y = vld1q_f32(b.as_ptr().add(i));
            vst1q_f32(d.as_mut_ptr().add(i), fv(x, y));
            i += 4;
        }
    }
    for k in i..n {
        d[k] = fs(d[k], b[k]);
    }
}

/// `d[i] = fs(d[i])` in place, four lanes at a time by `fv`.
#[inline(always)]
pub(crate) fn map1_inplace(
    d: &mut [f32],
    fv: impl Fn(float32x4_t) -> float32x4_t,
    fs: impl Fn(f32) -> f32,
) {
    let n = d.len();
    let mut i = 0;
    unsafe {
        while i + 4 <= n {
            let x = vld1q_f32(d.as_ptr().add(i));
            vst1q_f32(d.as_mut_ptr().add(i), fv(x));
            i += 4;
        }
    }
    for v in &mut d[i..] {
        *v = fs(*v);
    }
}

/// Vector forms of the `f32` ops, for the NEON paths of the drivers.
pub(crate) mod ops {
    use super::*;
    /// `+`
    #[inline(always)]
    pub(crate) fn vadd(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        add(a, b)
    }
    /// `-`
    #[inline(always)]
    pub(crate) fn vsub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        sub(a, b)
    }
    /// `*`
    #[inline(always)]
    pub(crate) fn vmul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        mul(a, b)
    }
    /// `/`
    #[inline(always)]
    pub(crate) fn vdiv(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        div(a, b)
    }
    /// unary `-`
    #[inline(always)]
    pub(crate) fn vneg(a: float32x4_t) -> float32x4_t {
        neg(a)
    }
    /// `abs`
    #[inline(always)]
    pub(crate) fn vabs(a: float32x4_t) -> float32x4_t {
        abs(a)
    }
    /// `x * x`
    #[inline(always)]
    pub(crate) fn vsquare(a: float32x4_t) -> float32x4_t {
        mul(a, a)
    }
    /// `sqrt`
    #[inline(always)]
    pub(crate) fn vsqrt(a: float32x4_t) -> float32x4_t {
        unsafe { vsqrtq_f32(a) }
    }
}
