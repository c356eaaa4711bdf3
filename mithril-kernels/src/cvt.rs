//! Narrow-float conversions: branch-free element functions (vectorizable when inlined into a
//! loop compiled with AVX2/AVX-512, e.g. inside an [`crate::ew`] closure) and dispatched slice
//! converters.
//!
//! All four element functions match the `half` crate bit for bit — on every one of the 65536
//! 16-bit inputs and on (densely sampled) `f32` inputs, NaN payloads included: narrowing rounds to
//! nearest, ties to even, overflows to ±∞, and keeps NaNs NaN (setting the quiet bit and keeping
//! the top payload bits); widening is exact (NaNs get the quiet bit).
//!
//! The `f16` slice converters use F16C (`vcvtph2ps`/`vcvtps2ph`, 8 lanes) on the AVX2 path and the
//! AVX-512 forms (16 lanes) on the AVX-512 path; the `bf16` ones are the element functions in an
//! auto-vectorized loop (shifts and adds). On aarch64 the NEON path converts 8 lanes at a time:
//! `f16` with `fcvtl`/`fcvtl2` and `fcvtn`/`fcvtn2` (base ARMv8-A floating point, written as
//! inline assembly because the `f16` vector intrinsics are not stable Rust), `bf16` with
//! widening shifts and the same round-to-nearest-even integer arithmetic as
//! [`f32_to_bf16`]. Every path gives identical bits.

use crate::ew::{map1, Src};
use crate::isa::{self, Isa};
use half::{bf16, f16};

#[inline(always)]
fn sel(c: bool, a: u32, b: u32) -> u32 {
    if c {
        a
    } else {
        b
    }
}

/// IEEE binary16 bits → `f32` (exact).
#[inline(always)]
pub fn f16_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let o = em << 13;
    // finite values (normal and subnormal alike): the bits read as an f32 are the value times
    // 2⁻¹¹²; one exact multiply rebiases (f32 subnormal inputs are exact: no DAZ in Rust code)
    let finite = (f32::from_bits(o) * f32::from_bits((127 + 112) << 23)).to_bits();
    // inf / NaN: exponent all ones; NaN gets the quiet bit
    let special = o | 0x7f80_0000 | sel(em > 0x7c00, 0x0040_0000, 0);
    f32::from_bits(sel(em >= 0x7c00, special, finite) | sign)
}

/// `f32` → IEEE binary16 bits, round to nearest even; overflow gives ±∞; NaN stays NaN (quiet
/// bit set, top payload bits kept).
#[inline(always)]
pub fn f32_to_f16(f: f32) -> u16 {
    let x = f.to_bits();
    let sign = x & 0x8000_0000;
    let a = x ^ sign;
    // ≥ 2^16 (or inf/NaN): ±∞, NaN keeps its payload's top bits
    let big = sel(a > 0x7f80_0000, 0x7e00 | ((a & 0x007f_ffff) >> 13), 0x7c00);
    // < 2⁻¹⁴: subnormal or zero; adding 0.5 lets the FPU round the mantissa into place
    let small = f32::from_bits(a) + 0.5;
    let small = small.to_bits().wrapping_sub(0x3f00_0000);
    // normal: rebias, round to nearest even by adding 0xfff + the kept lsb
    let odd = (a >> 13) & 1;
    let normal = a
        .wrapping_add(((15u32).wrapping_sub(127) << 23).wrapping_add(0xfff))
        .wrapping_add(odd)
        >> 13;
    let r = sel(
        a >= (127 + 16) << 23,
        big,
        sel(a < 113 << 23, small, normal),
    );
    (r | (sign >> 16)) as u16
}

/// bfloat16 bits → `f32` (exact; NaNs get the quiet bit).
#[inline(always)]
pub fn bf16_to_f32(b: u16) -> f32 {
    let x = b as u32;
    let nan = (x & 0x7fff) > 0x7f80;
    f32::from_bits((x | sel(nan, 0x40, 0)) << 16)
}

/// `f32` → bfloat16 bits, round to nearest even; NaN stays NaN (quiet bit set).
#[inline(always)]
pub fn f32_to_bf16(f: f32) -> u16 {
    let x = f.to_bits();
    let nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    sel(nan, (x >> 16) | 0x40, rounded) as u16
}

/// `dst[i] = src[i]` as `f32`, for `i < dst.len()`. Precondition: `src.len() >= dst.len()`
/// (debug-asserted; a shorter `src` panics).
pub fn f16_to_f32_slice(src: &[f16], dst: &mut [f32]) {
    debug_assert!(src.len() >= dst.len());
    let src = &src[..dst.len()];
    match isa::active() {
        // SAFETY: `active` only returns levels the CPU supports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f16_to_f32_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::f16_to_f32_avx2(src, dst) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe {
            neon::f16_to_f32(src.as_ptr() as *const u16, dst.len(), dst.as_mut_ptr())
        },
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f16_to_f32(s.to_bits());
            }
        }
    }
}

/// `dst[i] = src[i]` rounded to `f16` (nearest even), for `i < dst.len()`. Precondition:
/// `src.len() >= dst.len()`.
pub fn f32_to_f16_slice(src: &[f32], dst: &mut [f16]) {
    debug_assert!(src.len() >= dst.len());
    let src = &src[..dst.len()];
    match isa::active() {
        // SAFETY: `active` only returns levels the CPU supports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { x86::f32_to_f16_avx512(src, dst) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::f32_to_f16_avx2(src, dst) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => unsafe {
            neon::f32_to_f16(src.as_ptr(), dst.len(), dst.as_mut_ptr() as *mut u16)
        },
        _ => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = f16::from_bits(f32_to_f16(*s));
            }
        }
    }
}

/// `dst[i] = src[i]` as `f32`. Precondition: `src.len() >= dst.len()`.
pub fn bf16_to_f32_slice(src: &[bf16], dst: &mut [f32]) {
    #[cfg(target_arch = "aarch64")]
    if isa::active() == Isa::Neon {
        let n = dst.len();
        assert!(src.len() >= n, "bf16_to_f32_slice: src shorter than dst");
        // SAFETY: `active` only returns levels the CPU supports; both ranges hold n elements.
        unsafe { neon::bf16_to_f32(src.as_ptr() as *const u16, n, dst.as_mut_ptr()) };
        return;
    }
    map1(Src::Full(src), dst, |x: bf16| bf16_to_f32(x.to_bits()));
}

/// `dst[i] = src[i]` rounded to `bf16` (nearest even). Precondition: `src.len() >= dst.len()`.
pub fn f32_to_bf16_slice(src: &[f32], dst: &mut [bf16]) {
    #[cfg(target_arch = "aarch64")]
    if isa::active() == Isa::Neon {
        let n = dst.len();
        assert!(src.len() >= n, "f32_to_bf16_slice: src shorter than dst");
        // SAFETY: `active` only returns levels the CPU supports; both ranges hold n elements.
        unsafe { neon::f32_to_bf16(src.as_ptr(), n, dst.as_mut_ptr() as *mut u16) };
        return;
    }
    map1(Src::Full(src), dst, |x: f32| {
        bf16::from_bits(f32_to_bf16(x))
    });
}

/// NEON converters over raw ranges (also what the aarch64 GEMM packs with). Each converts `n`
/// elements, 8 lanes at a time, the tail with the element functions above (same bits).
#[cfg(target_arch = "aarch64")]
pub(crate) mod neon {
    use std::arch::aarch64::*;
    use std::arch::asm;

    /// `dst[i] = f16 bits src[i]` as f32, `i < n`.
    ///
    /// # Safety
    /// NEON available; `src` readable and `dst` writable for `n` elements.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn f16_to_f32(src: *const u16, n: usize, dst: *mut f32) {
        let mut i = 0;
        while i + 8 <= n {
            let h = vld1q_u16(src.add(i));
            let lo: float32x4_t;
            let hi: float32x4_t;
            asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                h = in(vreg) h,
                lo = out(vreg) lo,
                hi = out(vreg) hi,
                options(pure, nomem, nostack, preserves_flags)
            );
            vst1q_f32(dst.add(i), lo);
            vst1q_f32(dst.add(i + 4), hi);
            i += 8;
        }
        while i < n {
            *dst.add(i) = super::f16_to_f32(*src.add(i));
            i += 1;
        }
    }

    /// `dst[i] = src[i]` rounded to f16 bits (nearest even: the FPCR default), `i < n`.
    ///
    /// # Safety
    /// NEON available; `src` readable and `dst` writable for `n` elements.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn f32_to_f16(src: *const f32, n: usize, dst: *mut u16) {
        let mut i = 0;
        while i + 8 <= n {
            let lo = vld1q_f32(src.add(i));
            let hi = vld1q_f32(src.add(i + 4));
            let mut h: uint16x8_t = vdupq_n_u16(0);
            asm!(
                "fcvtn {h:v}.4h, {lo:v}.4s",
                "fcvtn2 {h:v}.8h, {hi:v}.4s",
                h = inout(vreg) h,
                lo = in(vreg) lo,
                hi = in(vreg) hi,
                options(pure, nomem, nostack, preserves_flags)
            );
            vst1q_u16(dst.add(i), h);
            i += 8;
        }
        while i < n {
            *dst.add(i) = super::f32_to_f16(*src.add(i));
            i += 1;
        }
    }

    /// `dst[i] = bf16 bits src[i]` as f32 (NaNs get the quiet bit), `i < n`.
    ///
    /// # Safety
    /// NEON available; `src` readable and `dst` writable for `n` elements.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn bf16_to_f32(src: *const u16, n: usize, dst: *mut f32) {
        let abs = vdupq_n_u32(0x7fff_0000);
        let inf = vdupq_n_u32(0x7f80_0000);
        let quiet = vdupq_n_u32(0x0040_0000);
        let widen = |w: uint32x4_t| {
            let nan = vcgtq_u32(vandq_u32(w, abs), inf);
            vreinterpretq_f32_u32(vorrq_u32(w, vandq_u32(nan, quiet)))
        };
        let mut i = 0;
        while i + 8 <= n {
            let h = vld1q_u16(src.add(i));
            vst1q_f32(dst.add(i), widen(vshll_n_u16::<16>(vget_low_u16(h))));
            vst1q_f32(dst.add(i + 4), widen(vshll_high_n_u16::<16>(h)));
            i += 8;
        }
        while i < n {
            *dst.add(i) = super::bf16_to_f32(*src.add(i));
            i += 1;
        }
    }

    /// `dst[i] = src[i]` rounded to bf16 bits (nearest even; NaN stays NaN, quiet), `i < n`.
    ///
    /// # Safety
    /// NEON available; `src` readable and `dst` writable for `n` elements.
    #[inline]
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn f32_to_bf16(src: *const f32, n: usize, dst: *mut u16) {
        let abs = vdupq_n_u32(0x7fff_ffff);
        let inf = vdupq_n_u32(0x7f80_0000);
        let half = vdupq_n_u32(0x7fff);
        let one = vdupq_n_u32(1);
        let quiet = vdupq_n_u32(0x40);
        let narrow = |x: uint32x4_t| {
            let nan = vcgtq_u32(vandq_u32(x, abs), inf);
            let odd = vandq_u32(vshrq_n_u32::<16>(x), one);
            let rounded = vshrq_n_u32::<16>(vaddq_u32(vaddq_u32(x, half), odd));
            let quieted = vorrq_u32(vshrq_n_u32::<16>(x), quiet);
            vmovn_u32(vbslq_u32(nan, quieted, rounded))
        };
        let mut i = 0;
        while i + 8 <= n {
            let lo = narrow(vreinterpretq_u32_f32(vld1q_f32(src.add(i))));
            let hi = narrow(vreinterpretq_u32_f32(vld1q_f32(src.add(i + 4))));
            vst1q_u16(dst.add(i), vcombine_u16(lo, hi));
            i += 8;
        }
        while i < n {
            *dst.add(i) = super::f32_to_bf16(*src.add(i));
            i += 1;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{f16_to_f32, f32_to_f16};
    use half::f16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub unsafe fn f16_to_f32_avx512(src: &[f16], dst: &mut [f32]) {
        let n = dst.len();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n = src.len() = dst.len(); unaligned loads/stores.
            unsafe {
                let h = _mm256_loadu_si256(src.as_ptr().add(i) as *const __m256i);
                _mm512_storeu_ps(dst.as_mut_ptr().add(i), _mm512_cvtph_ps(h));
            }
            i += 16;
        }
        for j in i..n {
            dst[j] = f16_to_f32(src[j].to_bits());
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f16_to_f32_avx2(src: &[f16], dst: &mut [f32]) {
        let n = dst.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n = src.len() = dst.len(); unaligned loads/stores.
            unsafe {
                let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
                _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = f16_to_f32(src[j].to_bits());
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub unsafe fn f32_to_f16_avx512(src: &[f32], dst: &mut [f16]) {
        let n = dst.len();
        let mut i = 0;
        while i + 16 <= n {
            // SAFETY: i + 16 <= n = src.len() = dst.len(); unaligned loads/stores.
            unsafe {
                let v = _mm512_loadu_ps(src.as_ptr().add(i));
                let h = _mm512_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_storeu_si256(dst.as_mut_ptr().add(i) as *mut __m256i, h);
            }
            i += 16;
        }
        for j in i..n {
            dst[j] = f16::from_bits(f32_to_f16(src[j]));
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn f32_to_f16_avx2(src: &[f32], dst: &mut [f16]) {
        let n = dst.len();
        let mut i = 0;
        while i + 8 <= n {
            // SAFETY: i + 8 <= n = src.len() = dst.len(); unaligned loads/stores.
            unsafe {
                let v = _mm256_loadu_ps(src.as_ptr().add(i));
                let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                _mm_storeu_si128(dst.as_mut_ptr().add(i) as *mut __m128i, h);
            }
            i += 8;
        }
        for j in i..n {
            dst[j] = f16::from_bits(f32_to_f16(src[j]));
        }
    }
}
