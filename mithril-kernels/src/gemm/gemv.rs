//! GEMV: `m <= 4` rows of A against B (batch-1 inference), or `n == 1` (matrix times vector).
//! No packing: the matrix operand is streamed once, in its own layout, with `L`-lane
//! accumulator arrays the compiler turns into vector registers:
//!
//! - "dot" layout (the matrix is contiguous along k, e.g. a `Linear` weight `W[n, k]` used as
//!   `B = Wᵀ`, i.e. `rsb == 1`): blocks of `J` outputs × `R` rows of dot products;
//! - "axpy" layout (contiguous along the outputs, e.g. row-major B with `csb == 1`): blocks of
//!   `V·L` outputs, one broadcast of `x[p]` per k step;
//! - anything else: strided scalar loops.
//!
//! The vector operand(s) are first converted into a contiguous accumulator-typed scratch.

// Index loops over fixed-size lane arrays are the vectorization idiom here.
#![allow(clippy::needless_range_loop)]

use super::buf;
use super::driver::{add_scaled_c, narrow_into};
use super::sealed::Sealed;
use super::{AccElem, Args};

/// Outputs per chunk handed to the store path.
const CH: usize = 64;

#[inline(always)]
fn mad<A: AccElem, const F: bool>(a: A, b: A, c: A) -> A {
    if F {
        a.fused(b, c)
    } else {
        a * b + c
    }
}

/// `v = alpha·v (+ C)`, epilogue, store `C(i, j..j+v.len())` (local indices).
#[inline(always)]
pub(crate) unsafe fn finish_row<T: Sealed, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    i: usize,
    j: usize,
    v: &mut [T::A],
    epi: &E,
) {
    let alpha = args.alpha;
    let crow = args.c.add(i * args.ldc + j);
    if args.accumulate {
        add_scaled_c(
            v,
            std::slice::from_raw_parts(crow as *const T, v.len()),
            alpha,
        );
    } else if alpha != T::A::ONE {
        for x in v.iter_mut() {
            *x = alpha * *x;
        }
    }
    epi(args.i_off + i, args.j_off + j, v);
    narrow_into(std::slice::from_raw_parts_mut(crow, v.len()), v);
}

/// The GEMV path, generic over fused multiply-add (`F`) and the accumulator lane count `L`.
#[inline(always)]
pub(crate) unsafe fn gemv_impl<T: Sealed, E, const F: bool, const L: usize>(args: &Args<T>, epi: &E)
where
    E: Fn(usize, usize, &mut [T::A]),
{
    let (m, n, k) = (args.m, args.n, args.k);
    let mut scratch = buf::take();
    let s = &mut scratch;
    {
        if n == 1 && m > 4 {
            // y(i) = sum_p A(i, p)·B(p, 0): the matrix is A, outputs are rows.
            let x: *mut T::A = s.get(2, k);
            for p in 0..k {
                *x.add(p) = (*args.b.add(p * args.rsb)).to_acc();
            }
            let xs = [x as *const T::A; 4];
            core::<T, _, F, L>(1, m, k, xs, args.a, args.rsa, args.csa, |o0, len, y| {
                for t in 0..len {
                    let mut v = [y[0][t]];
                    finish_row(args, o0 + t, 0, &mut v, epi);
                }
            });
        } else {
            let x: *mut T::A = s.get(2, 4 * k);
            let mut i0 = 0;
            while i0 < m {
                let rows = 4.min(m - i0);
                let mut xs = [x as *const T::A; 4];
                for r in 0..rows {
                    let xr = x.add(r * k);
                    let ar = args.a.add((i0 + r) * args.rsa);
                    if args.csa == 1 {
                        for p in 0..k {
                            *xr.add(p) = (*ar.add(p)).to_acc();
                        }
                    } else {
                        for p in 0..k {
                            *xr.add(p) = (*ar.add(p * args.csa)).to_acc();
                        }
                    }
                    xs[r] = xr;
                }
                core::<T, _, F, L>(rows, n, k, xs, args.b, args.csb, args.rsb, |o0, len, y| {
                    for (r, yr) in y.iter_mut().enumerate().take(rows) {
                        finish_row(args, i0 + r, o0, &mut yr[..len], epi);
                    }
                });
                i0 += rows;
            }
        }
    }
    buf::put(scratch);
}

/// `y[r][o] = sum_p xs[r][p]·W(o, p)` with `W(o, p) = w[o*so + p*sp]`, for `r < rows` and all
/// `o < nout`, handed to `sink(o0, len, y)` in chunks of [`CH`] outputs.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn core<T: Sealed, S, const F: bool, const L: usize>(
    rows: usize,
    nout: usize,
    k: usize,
    xs: [*const T::A; 4],
    w: *const T,
    so: usize,
    sp: usize,
    mut sink: S,
) where
    S: FnMut(usize, usize, &mut [[T::A; CH]; 4]),
{
    let mut y = [[T::A::ZERO; CH]; 4];
    let mut o0 = 0;
    while o0 < nout {
        let len = CH.min(nout - o0);
        let wc = w.add(o0 * so);
        match rows {
            1 => chunk::<T, F, L, 1, 8, 4>(len, k, xs, wc, so, sp, &mut y),
            2 => chunk::<T, F, L, 2, 4, 4>(len, k, xs, wc, so, sp, &mut y),
            3 => chunk::<T, F, L, 3, 4, 2>(len, k, xs, wc, so, sp, &mut y),
            _ => chunk::<T, F, L, 4, 4, 2>(len, k, xs, wc, so, sp, &mut y),
        }
        sink(o0, len, &mut y);
        o0 += len;
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn chunk<
    T: Sealed,
    const F: bool,
    const L: usize,
    const R: usize,
    const J: usize,
    const V: usize,
>(
    len: usize,
    k: usize,
    xs: [*const T::A; 4],
    w: *const T,
    so: usize,
    sp: usize,
    y: &mut [[T::A; CH]; 4],
) {
    if sp == 1 && k >= L {
        // Dot layout.
        let mut o = 0;
        while o + J <= len {
            let out = dot_block::<T, F, L, R, J>(k, xs, w.add(o * so), so);
            for r in 0..R {
                y[r][o..o + J].copy_from_slice(&out[r]);
            }
            o += J;
        }
        while o < len {
            let out = dot_block::<T, F, L, R, 1>(k, xs, w.add(o * so), so);
            for r in 0..R {
                y[r][o] = out[r][0];
            }
            o += 1;
        }
    } else if so == 1 {
        // Axpy layout.
        let mut o = 0;
        while o + V * L <= len {
            axpy_block::<T, F, L, R, V>(k, xs, w.add(o), sp, y, o);
            o += V * L;
        }
        while o + L <= len {
            axpy_block::<T, F, L, R, 1>(k, xs, w.add(o), sp, y, o);
            o += L;
        }
        while o < len {
            let wo = w.add(o);
            for r in 0..R {
                let mut acc = T::A::ZERO;
                for p in 0..k {
                    acc = mad::<_, F>(*xs[r].add(p), (*wo.add(p * sp)).to_acc(), acc);
                }
                y[r][o] = acc;
            }
            o += 1;
        }
    } else {
        for o in 0..len {
            let wo = w.add(o * so);
            for r in 0..R {
                let mut acc = T::A::ZERO;
                for p in 0..k {
                    acc = mad::<_, F>(*xs[r].add(p), (*wo.add(p * sp)).to_acc(), acc);
                }
                y[r][o] = acc;
            }
        }
    }
}

/// `J` dot products (rows `w`, `w + so`, ...) for each of `R` vectors.
#[inline(always)]
unsafe fn dot_block<T: Sealed, const F: bool, const L: usize, const R: usize, const J: usize>(
    k: usize,
    xs: [*const T::A; 4],
    w: *const T,
    so: usize,
) -> [[T::A; J]; R] {
    let mut acc = [[[T::A::ZERO; L]; J]; R];
    let mut p = 0;
    while p + L <= k {
        let mut xv = [[T::A::ZERO; L]; R];
        for r in 0..R {
            xv[r] = *(xs[r].add(p) as *const [T::A; L]);
        }
        for jj in 0..J {
            let wp = w.add(jj * so + p);
            let mut wv = [T::A::ZERO; L];
            for l in 0..L {
                wv[l] = (*wp.add(l)).to_acc();
            }
            for r in 0..R {
                for l in 0..L {
                    acc[r][jj][l] = mad::<_, F>(xv[r][l], wv[l], acc[r][jj][l]);
                }
            }
        }
        p += L;
    }
    let mut out = [[T::A::ZERO; J]; R];
    for r in 0..R {
        for jj in 0..J {
            // Pairwise lane reduction.
            let mut v = acc[r][jj];
            let mut h = L / 2;
            while h > 0 {
                for l in 0..h {
                    v[l] += v[l + h];
                }
                h /= 2;
            }
            let mut s = v[0];
            let wr = w.add(jj * so);
            for q in p..k {
                s = mad::<_, F>(*xs[r].add(q), (*wr.add(q)).to_acc(), s);
            }
            out[r][jj] = s;
        }
    }
    out
}

/// `y[r][o0 + v*L + l] = sum_p xs[r][p]·w[v*L + l + p*sp]`.
#[inline(always)]
unsafe fn axpy_block<T: Sealed, const F: bool, const L: usize, const R: usize, const V: usize>(
    k: usize,
    xs: [*const T::A; 4],
    w: *const T,
    sp: usize,
    y: &mut [[T::A; CH]; 4],
    o0: usize,
) {
    let mut acc = [[[T::A::ZERO; L]; V]; R];
    for p in 0..k {
        let wp = w.add(p * sp);
        let mut xb = [T::A::ZERO; R];
        for r in 0..R {
            xb[r] = *xs[r].add(p);
        }
        for v in 0..V {
            let mut wv = [T::A::ZERO; L];
            for l in 0..L {
                wv[l] = (*wp.add(v * L + l)).to_acc();
            }
            for r in 0..R {
                for l in 0..L {
                    acc[r][v][l] = mad::<_, F>(xb[r], wv[l], acc[r][v][l]);
                }
            }
        }
    }
    for r in 0..R {
        for v in 0..V {
            y[r][o0 + v * L..o0 + (v + 1) * L].copy_from_slice(&acc[r][v]);
        }
    }
}

/// Portable GEMV (no FMA: `mul_add` would be a library call without it).
pub(crate) unsafe fn gemv_scalar<T: Sealed, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    epi: &E,
) {
    match as_bf16_gemv1(args) {
        Some(a) => {
            // SAFETY: T is bf16 (`as_bf16_gemv1`), whose accumulator type is f32.
            let epi32 = |i: usize, j: usize, v: &mut [f32]| {
                epi(i, j, &mut *(v as *mut [f32] as *mut [T::A]))
            };
            gemv1_bf16_wide::<_, false, 4>(a, &epi32)
        }
        None => gemv_impl::<T, E, false, 4>(args, epi),
    }
}

// ---------------------------------------------------------------------------------------------
// Batch-1 bf16 GEMV, dot layout, in the order of `vdpbf16ps`.
//
// Every path (AVX512_BF16 with `vdpbf16ps`, AVX-512 / AVX2 / NEON / scalar by widening with
// a shift) sums in one order, so they agree bitwise on normal values (`vdpbf16ps` flushes
// denormal inputs and outputs to zero, the widening paths do not):
// - 16 f32 lanes per output row; lane `i` accumulates the k-pair `(p + 2i, p + 2i + 1)` of
//   each 32-k step `p`: first the odd element's product, then the even one's (each product of
//   two bf16 is exact in f32, so a fused and an unfused multiply-add round alike); a short last
//   step is zero-padded;
// - the lanes are reduced as `(Q0 + Q1) + (Q2 + Q3)`, `Qq = (l0 + l2) + (l1 + l3)` over the
//   lanes `4q..4q+4` (the transposing reduction of [`super::x86`]'s kernel).

/// `Some(args as bf16)` when `args` is the batch-1 bf16 GEMV in the dot layout: `m == 1`,
/// `T = bf16`, B with `rsb == 1` (the `x · Wᵀ` of a bf16 `Linear`), A's row contiguous.
#[inline(always)]
pub(crate) unsafe fn as_bf16_gemv1<T: Sealed>(args: &Args<T>) -> Option<&Args<half::bf16>> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<half::bf16>()
        || args.m != 1
        || args.rsb != 1
        || args.csa != 1
    {
        return None;
    }
    // SAFETY: T is bf16 (checked above).
    Some(&*(args as *const Args<T> as *const Args<half::bf16>))
}

/// The lane reduction shared by every bf16 GEMV path.
#[inline(always)]
pub(crate) fn reduce_bf16_lanes(a: &[f32; 16]) -> f32 {
    let q = |j: usize| (a[4 * j] + a[4 * j + 2]) + (a[4 * j + 1] + a[4 * j + 3]);
    (q(0) + q(1)) + (q(2) + q(3))
}

/// The 32-k step at `p` (`len <= 32` values, zero-padded) as 16 words of k-pairs.
#[inline(always)]
unsafe fn bf16_pairs(src: *const half::bf16, len: usize) -> [u32; 16] {
    if len == 32 {
        std::ptr::read_unaligned(src as *const [u32; 16])
    } else {
        let mut h = [0u16; 32];
        std::ptr::copy_nonoverlapping(src as *const u16, h.as_mut_ptr(), len);
        std::mem::transmute::<[u16; 32], [u32; 16]>(h)
    }
}

/// `out[r] = x · w[r*so..]` for `r < R` in the shared bf16 order (see above), by widening
/// (`F`: fused multiply-add, bitwise the same as unfused here).
#[inline(always)]
unsafe fn dot_rows_bf16_wide<const F: bool, const R: usize>(
    k: usize,
    x: *const half::bf16,
    w: *const half::bf16,
    so: usize,
    out: &mut [f32],
) {
    let mut acc = [[0f32; 16]; R];
    let mut p = 0;
    while p < k {
        let len = (k - p).min(32);
        let xw = bf16_pairs(x.add(p), len);
        let mut xe = [0f32; 16];
        let mut xo = [0f32; 16];
        for i in 0..16 {
            xe[i] = f32::from_bits(xw[i] << 16);
            xo[i] = f32::from_bits(xw[i] & 0xffff_0000);
        }
        for r in 0..R {
            let ww = bf16_pairs(w.add(r * so + p), len);
            for i in 0..16 {
                let we = f32::from_bits(ww[i] << 16);
                let wo = f32::from_bits(ww[i] & 0xffff_0000);
                acc[r][i] = mad::<f32, F>(xo[i], wo, acc[r][i]);
                acc[r][i] = mad::<f32, F>(xe[i], we, acc[r][i]);
            }
        }
        p += len;
    }
    for r in 0..R {
        out[r] = reduce_bf16_lanes(&acc[r]);
    }
}

/// The batch-1 bf16 GEMV by widening, `R` rows at a time.
#[inline(always)]
pub(crate) unsafe fn gemv1_bf16_wide<E, const F: bool, const R: usize>(
    args: &Args<half::bf16>,
    epi: &E,
) where
    E: Fn(usize, usize, &mut [f32]),
{
    let mut y = [0f32; CH];
    let (k, so) = (args.k, args.csb);
    let mut j = 0;
    while j < args.n {
        let len = CH.min(args.n - j);
        let w = args.b.add(j * so);
        let mut o = 0;
        while o + R <= len {
            dot_rows_bf16_wide::<F, R>(k, args.a, w.add(o * so), so, &mut y[o..o + R]);
            o += R;
        }
        while o < len {
            dot_rows_bf16_wide::<F, 1>(k, args.a, w.add(o * so), so, &mut y[o..o + 1]);
            o += 1;
        }
        finish_row(args, 0, j, &mut y[..len], epi);
        j += len;
    }
}
