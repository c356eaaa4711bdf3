//! aarch64 kernels: an 8×12 NEON `f32` microkernel (`fmla` by lane: 24 accumulators, two A and
//! three B registers) used for `f32` and for `f16`/`bf16` storage (converted to `f32` while
//! packing, with `fcvtl` / a widening shift: [`crate::cvt::neon`]), and the GEMV instantiated with
//! fused multiply-adds over 4-lane blocks. `f64` runs the portable 4×8 kernel (inside the same
//! `neon` function, so LLVM may vectorize it with 2-lane `f64` NEON).
//!
//! Every entry point is a `#[target_feature(enable = "neon")]` function, like the x86 ones:
//! the generic driver, store path and epilogue are inlined into it.

use super::driver::{self, Kernel};
use super::gemv;
use super::scalar::ScalarKernel;
use super::sealed::Sealed;
use super::Args;
use half::{bf16, f16};
use std::arch::aarch64::*;
use std::marker::PhantomData;

/// Rows of the NEON register tile.
pub(crate) const MR: usize = 8;
/// Columns of the NEON register tile (three 4-lane vectors).
pub(crate) const NR: usize = 12;

/// Element types whose packs are `f32` (`f32` itself, and `f16`/`bf16` converted while packing).
pub(crate) trait Src32: Sealed<A = f32> {
    /// `dst[0..n] = src[0..n]` converted to f32 (contiguous).
    unsafe fn cvt(src: *const Self, n: usize, dst: *mut f32);
}

impl Src32 for f32 {
    #[inline(always)]
    unsafe fn cvt(src: *const f32, n: usize, dst: *mut f32) {
        std::ptr::copy_nonoverlapping(src, dst, n);
    }
}

impl Src32 for f16 {
    #[inline(always)]
    unsafe fn cvt(src: *const f16, n: usize, dst: *mut f32) {
        crate::cvt::neon::f16_to_f32(src as *const u16, n, dst);
    }
}

impl Src32 for bf16 {
    #[inline(always)]
    unsafe fn cvt(src: *const bf16, n: usize, dst: *mut f32) {
        crate::cvt::neon::bf16_to_f32(src as *const u16, n, dst);
    }
}

/// Packs `w <= width` lanes (rows of A / columns of B) × `kc` k indices of `src(lane, q) =
/// src[lane*rs + q*cs]` as `dst[q*width + lane]` in f32, zero padded. Contiguous lanes
/// (`rs == 1`) are converted as runs; contiguous k (`cs == 1`) through a small buffer.
#[inline(always)]
unsafe fn pack32<T: Src32>(
    src: *const T,
    rs: usize,
    cs: usize,
    w: usize,
    kc: usize,
    width: usize,
    dst: *mut f32,
) {
    if rs == 1 {
        for q in 0..kc {
            let d = dst.add(q * width);
            match w {
                12 => T::cvt(src.add(q * cs), 12, d),
                8 => T::cvt(src.add(q * cs), 8, d),
                _ => T::cvt(src.add(q * cs), w, d),
            }
            for l in w..width {
                *d.add(l) = 0.0;
            }
        }
    } else if cs == 1 {
        if w < width {
            for q in 0..kc {
                for l in w..width {
                    *dst.add(q * width + l) = 0.0;
                }
            }
        }
        let mut tmp = [0f32; 128];
        for l in 0..w {
            let s = src.add(l * rs);
            let mut q0 = 0;
            while q0 < kc {
                let len = 128.min(kc - q0);
                T::cvt(s.add(q0), len, tmp.as_mut_ptr());
                for (t, v) in tmp[..len].iter().enumerate() {
                    *dst.add((q0 + t) * width + l) = *v;
                }
                q0 += len;
            }
        }
    } else {
        for q in 0..kc {
            let d = dst.add(q * width);
            for l in 0..w {
                *d.add(l) = (*src.add(l * rs + q * cs)).to_acc();
            }
            for l in w..width {
                *d.add(l) = 0.0;
            }
        }
    }
}

/// The 8×12 `f32` NEON microkernel with its packing.
pub(crate) struct NeonKernel<T>(PhantomData<T>);

impl<T: Src32> Kernel<T> for NeonKernel<T> {
    type P = f32;
    const MR: usize = MR;
    const NR: usize = NR;
    const KP: usize = 1;
    // A block of 96 rows × 256 k (96 KB) in L2, a 12 × 256 B micro-panel (12 KB) in L1.
    const MC: usize = 96;
    const KC: usize = 256;
    const NC: usize = 1020;

    #[inline(always)]
    unsafe fn pack_a(a: *const T, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut f32) {
        pack32(a, rs, cs, mr, kc, MR, dst)
    }
    #[inline(always)]
    unsafe fn pack_b(b: *const T, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut f32) {
        pack32(b, cs, rs, nr, kc, NR, dst)
    }
    #[inline(always)]
    unsafe fn kernel(steps: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        let z = vdupq_n_f32(0.0);
        let mut c = [[z; 3]; MR];
        for q in 0..steps {
            let ap = a.add(q * MR);
            let bp = b.add(q * NR);
            let a0 = vld1q_f32(ap);
            let a1 = vld1q_f32(ap.add(4));
            let b0 = vld1q_f32(bp);
            let b1 = vld1q_f32(bp.add(4));
            let b2 = vld1q_f32(bp.add(8));
            macro_rules! row {
                ($r:expr, $a:ident, $l:expr) => {
                    c[$r][0] = vfmaq_laneq_f32::<$l>(c[$r][0], b0, $a);
                    c[$r][1] = vfmaq_laneq_f32::<$l>(c[$r][1], b1, $a);
                    c[$r][2] = vfmaq_laneq_f32::<$l>(c[$r][2], b2, $a);
                };
            }
            row!(0, a0, 0);
            row!(1, a0, 1);
            row!(2, a0, 2);
            row!(3, a0, 3);
            row!(4, a1, 0);
            row!(5, a1, 1);
            row!(6, a1, 2);
            row!(7, a1, 3);
        }
        for (r, row) in c.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                vst1q_f32(tile.add(r * NR + j * 4), *v);
            }
        }
    }
}

/// Per-type NEON entry points (what `gemm/mod.rs` dispatches to for [`super::Isa::Neon`]).
pub(crate) trait Neon: Sealed {
    /// Single-threaded packed GEMM.
    unsafe fn packed<E: Fn(usize, usize, &mut [Self::A])>(args: &Args<Self>, epi: &E);
    /// GEMV with fused multiply-adds.
    unsafe fn gemv<E: Fn(usize, usize, &mut [Self::A])>(args: &Args<Self>, epi: &E);
}

macro_rules! neon32 {
    ($t:ty) => {
        impl Neon for $t {
            unsafe fn packed<E: Fn(usize, usize, &mut [f32])>(args: &Args<Self>, epi: &E) {
                packed_neon::<$t, NeonKernel<$t>, E>(args, epi)
            }
            unsafe fn gemv<E: Fn(usize, usize, &mut [f32])>(args: &Args<Self>, epi: &E) {
                match gemv::as_bf16_gemv1(args) {
                    Some(a) => gemv1_bf16_neon(a, epi),
                    None => gemv_neon::<$t, E>(args, epi),
                }
            }
        }
    };
}
neon32!(f32);
neon32!(f16);
neon32!(bf16);

impl Neon for f64 {
    unsafe fn packed<E: Fn(usize, usize, &mut [f64])>(args: &Args<Self>, epi: &E) {
        packed_neon::<f64, ScalarKernel<f64>, E>(args, epi)
    }
    unsafe fn gemv<E: Fn(usize, usize, &mut [f64])>(args: &Args<Self>, epi: &E) {
        gemv_neon::<f64, E>(args, epi)
    }
}

#[target_feature(enable = "neon")]
unsafe fn packed_neon<T: Sealed, K: Kernel<T>, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    epi: &E,
) {
    driver::packed::<T, K, E>(args, epi)
}

#[target_feature(enable = "neon")]
unsafe fn gemv_neon<T: Sealed, E: Fn(usize, usize, &mut [T::A])>(args: &Args<T>, epi: &E) {
    gemv::gemv_impl::<T, E, true, 4>(args, epi)
}

/// The batch-1 bf16 dot GEMV by widening (shifts), in the order every bf16 GEMV path shares.
#[target_feature(enable = "neon")]
unsafe fn gemv1_bf16_neon<E: Fn(usize, usize, &mut [f32])>(args: &Args<bf16>, epi: &E) {
    gemv::gemv1_bf16_wide::<E, true, 4>(args, epi)
}
