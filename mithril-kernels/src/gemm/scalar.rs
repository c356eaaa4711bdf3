//! Portable fallback: a 4×8 register tile in plain Rust (the compiler may still vectorize it with
//! the baseline ISA), packing into the accumulator type.

// Index loops over fixed-size lane arrays are the vectorization idiom here.
#![allow(clippy::needless_range_loop)]

use super::driver::{self, Kernel};
use super::sealed::Sealed;
use super::{AccElem, Args};
use std::marker::PhantomData;

/// Rows of the scalar register tile.
pub(crate) const MR: usize = 4;
/// Columns of the scalar register tile.
pub(crate) const NR: usize = 8;

/// Generic packing into accumulator-typed micro-panels (zero padded): `dst[q*W + r] = src(r, q)`
/// where `src(r, q) = src[r*rs + q*cs]`, `r < w`, `q < kc`.
#[inline(always)]
pub(crate) unsafe fn pack_generic<T: Sealed>(
    src: *const T,
    rs: usize,
    cs: usize,
    w: usize,
    kc: usize,
    width: usize,
    dst: *mut T::A,
) {
    for q in 0..kc {
        let d = dst.add(q * width);
        for r in 0..w {
            *d.add(r) = (*src.add(r * rs + q * cs)).to_acc();
        }
        for r in w..width {
            *d.add(r) = T::A::ZERO;
        }
    }
}

pub(crate) struct ScalarKernel<T>(PhantomData<T>);

impl<T: Sealed> Kernel<T> for ScalarKernel<T> {
    type P = T::A;
    const MR: usize = MR;
    const NR: usize = NR;
    const KP: usize = 1;
    const MC: usize = 64;
    const KC: usize = 256;
    const NC: usize = 1024;

    #[inline(always)]
    unsafe fn pack_a(a: *const T, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut T::A) {
        pack_generic(a, rs, cs, mr, kc, MR, dst)
    }
    #[inline(always)]
    unsafe fn pack_b(b: *const T, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut T::A) {
        pack_generic(b, cs, rs, nr, kc, NR, dst)
    }
    #[inline(always)]
    unsafe fn kernel(steps: usize, a: *const T::A, b: *const T::A, tile: *mut T::A) {
        let mut c = [[T::A::ZERO; NR]; MR];
        for q in 0..steps {
            let bq = &*(b.add(q * NR) as *const [T::A; NR]);
            let aq = &*(a.add(q * MR) as *const [T::A; MR]);
            for r in 0..MR {
                for j in 0..NR {
                    c[r][j] += aq[r] * bq[j];
                }
            }
        }
        for (r, row) in c.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                *tile.add(r * NR + j) = *v;
            }
        }
    }
}

/// Single-threaded packed GEMM with the scalar kernel.
pub(crate) unsafe fn packed<T: Sealed, E: Fn(usize, usize, &mut [T::A])>(args: &Args<T>, epi: &E) {
    driver::packed::<T, ScalarKernel<T>, E>(args, epi)
}
