//! The ISA-independent parts: the blocked loop nest around a microkernel, and the store path
//! that applies alpha, the accumulated C, the epilogue and the narrowing conversion.
//!
//! Everything here is `#[inline(always)]` and generic, and is instantiated inside the
//! `#[target_feature]` functions of each ISA module, so the store path and the epilogue are
//! compiled (and vectorized) with that ISA.

// Index loops over fixed-size lane arrays are the vectorization idiom here.
#![allow(clippy::needless_range_loop)]

use super::buf;
use super::sealed::Sealed;
use super::{AccElem, Args};

/// A register-tiled microkernel with its packing routines.
///
/// The packed A micro-panel holds, for each k step `q` (`KP` consecutive k indices), `MR` values
/// of `P` (rows); the packed B micro-panel holds `NR` values per step (columns). Rows/columns
/// past the matrix edge and k indices past `kc` are packed as zeros.
pub(crate) trait Kernel<T: Sealed> {
    /// Packed element.
    type P: Copy;
    /// Rows of the register tile.
    const MR: usize;
    /// Columns of the register tile.
    const NR: usize;
    /// k indices per packed step (2 for bf16 pairs).
    const KP: usize;
    /// Rows of A per cache block (multiple of MR).
    const MC: usize;
    /// k per cache block (multiple of KP).
    const KC: usize;
    /// Columns of B per cache block (multiple of NR).
    const NC: usize;

    /// Packs `A(0..mr, 0..kc)` (`mr <= MR`) as one micro-panel at `dst`.
    unsafe fn pack_a(a: *const T, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut Self::P);
    /// Packs `B(0..kc, 0..nr)` (`nr <= NR`) as one micro-panel at `dst`.
    unsafe fn pack_b(b: *const T, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut Self::P);
    /// `tile[r*NR + j] = sum_q A(r, q)·B(q, j)` over `steps` packed steps.
    unsafe fn kernel(steps: usize, a: *const Self::P, b: *const Self::P, tile: *mut T::A);
    /// [`Kernel::kernel`] for an edge tile, of which only rows `0..mr` and columns `0..nr` are
    /// read afterwards; kernels with narrower register tiles compute only those.
    #[inline(always)]
    unsafe fn kernel_edge(
        mr: usize,
        nr: usize,
        steps: usize,
        a: *const Self::P,
        b: *const Self::P,
        tile: *mut T::A,
    ) {
        let _ = (mr, nr);
        Self::kernel(steps, a, b, tile)
    }
}

/// Largest register tile of any kernel (elements).
pub(crate) const MAX_TILE: usize = 16 * 32;

/// Where the sums of earlier K blocks live.
#[derive(Clone, Copy)]
pub(crate) struct Partial<A> {
    pub(crate) ptr: *mut A,
    pub(crate) ld: usize,
}

/// Finishes the rows `0..mr` and columns `0..nr` of a register tile (row stride `tnr`) for C at
/// (`i`, `j`) (local indices): `v = alpha·tile (+ C or partial)`; then either the epilogue and
/// a narrowing store to C (`last`), or a store of `v` into the partial sums (`partial.ptr`
/// points at the tile's first element there).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn store_tile<T: Sealed, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    tile: *mut T::A,
    tnr: usize,
    mr: usize,
    nr: usize,
    i: usize,
    j: usize,
    first: bool,
    last: bool,
    partial: Partial<T::A>,
    epi: Option<&E>,
) {
    // Constant widths let the compiler inline the row loops and copies (no memcpy calls).
    match nr {
        32 => store_rows(args, tile, tnr, mr, 32, i, j, first, last, partial, epi),
        16 => store_rows(args, tile, tnr, mr, 16, i, j, first, last, partial, epi),
        8 => store_rows(args, tile, tnr, mr, 8, i, j, first, last, partial, epi),
        _ => store_rows(args, tile, tnr, mr, nr, i, j, first, last, partial, epi),
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn store_rows<T: Sealed, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    tile: *mut T::A,
    tnr: usize,
    mr: usize,
    nr: usize,
    i: usize,
    j: usize,
    first: bool,
    last: bool,
    partial: Partial<T::A>,
    epi: Option<&E>,
) {
    let alpha = args.alpha;
    for r in 0..mr {
        let row = std::slice::from_raw_parts_mut(tile.add(r * tnr), nr);
        let crow = args.c.add((i + r) * args.ldc + j);
        let prow = partial.ptr.wrapping_add(r * partial.ld);
        // The row operations are separate functions taking slices, so the compiler knows the
        // tile, C and the partial sums do not overlap and vectorizes them.
        if !last {
            // Intermediate K block: the partial sums get v directly.
            let out = std::slice::from_raw_parts_mut(prow, nr);
            if !first {
                axpby(out, row, alpha);
            } else if args.accumulate {
                scale_add_c(
                    out,
                    row,
                    std::slice::from_raw_parts(crow as *const T, nr),
                    alpha,
                );
            } else {
                scale_into(out, row, alpha);
            }
            continue;
        }
        if !first {
            add_scaled(
                row,
                std::slice::from_raw_parts(prow as *const T::A, nr),
                alpha,
            );
        } else if args.accumulate {
            add_scaled_c(row, std::slice::from_raw_parts(crow as *const T, nr), alpha);
        } else if alpha != T::A::ONE {
            for x in row.iter_mut() {
                *x = alpha * *x;
            }
        }
        if let Some(epi) = epi {
            epi(args.i_off + i + r, args.j_off + j, row);
        }
        narrow_into(std::slice::from_raw_parts_mut(crow, nr), row);
    }
}

/// Lanes per chunk of the row operations below: each chunk is loaded into local arrays,
/// computed and stored, so the compiler vectorizes it even though it cannot prove that the
/// tile, C and the partial sums do not overlap.
const LANES: usize = 16;

/// `out[i] = f(x[i], y[i])` in chunks of [`LANES`] (`y` converted with `to_acc`).
#[inline(always)]
fn zip_map<A: AccElem, Y: Copy>(
    out: *mut A,
    x: *const A,
    y: *const Y,
    n: usize,
    f: impl Fn(A, Y) -> A,
) {
    let mut i = 0;
    // SAFETY (callers): out, x, y are valid for n elements.
    unsafe {
        while i + LANES <= n {
            let xv = *(x.add(i) as *const [A; LANES]);
            let yv = *(y.add(i) as *const [Y; LANES]);
            let mut o = [A::ZERO; LANES];
            for l in 0..LANES {
                o[l] = f(xv[l], yv[l]);
            }
            *(out.add(i) as *mut [A; LANES]) = o;
            i += LANES;
        }
        while i < n {
            *out.add(i) = f(*x.add(i), *y.add(i));
            i += 1;
        }
    }
}

/// `out = alpha·x + out`
#[inline(always)]
fn axpby<A: AccElem>(out: &mut [A], x: &[A], alpha: A) {
    let n = out.len().min(x.len());
    let o = out.as_mut_ptr();
    zip_map(o, x.as_ptr(), o as *const A, n, |x, o| alpha * x + o);
}

/// `out = alpha·x + c`
#[inline(always)]
fn scale_add_c<T: Sealed>(out: &mut [T::A], x: &[T::A], c: &[T], alpha: T::A) {
    let n = out.len().min(x.len()).min(c.len());
    zip_map(out.as_mut_ptr(), x.as_ptr(), c.as_ptr(), n, |x, c| {
        alpha * x + c.to_acc()
    });
}

/// `out = alpha·x`
#[inline(always)]
fn scale_into<A: AccElem>(out: &mut [A], x: &[A], alpha: A) {
    let n = out.len().min(x.len());
    zip_map(out.as_mut_ptr(), x.as_ptr(), x.as_ptr(), n, |x, _| {
        alpha * x
    });
}

/// `x = alpha·x + p`
#[inline(always)]
fn add_scaled<A: AccElem>(x: &mut [A], p: &[A], alpha: A) {
    let n = x.len().min(p.len());
    let xp = x.as_mut_ptr();
    zip_map(xp, xp as *const A, p.as_ptr(), n, |x, p| alpha * x + p);
}

/// `x = alpha·x + c`
#[inline(always)]
pub(crate) fn add_scaled_c<T: Sealed>(x: &mut [T::A], c: &[T], alpha: T::A) {
    let n = x.len().min(c.len());
    let xp = x.as_mut_ptr();
    zip_map(xp, xp as *const T::A, c.as_ptr(), n, |x, c| {
        alpha * x + c.to_acc()
    });
}

/// `c = x` converted to the storage type.
#[inline(always)]
pub(crate) fn narrow_into<T: Sealed>(c: &mut [T], x: &[T::A]) {
    let n = c.len().min(x.len());
    let (cp, xp) = (c.as_mut_ptr(), x.as_ptr());
    let mut i = 0;
    // SAFETY: both valid for n elements.
    unsafe {
        while i + LANES <= n {
            let xv = *(xp.add(i) as *const [T::A; LANES]);
            let mut o = [T::from_acc(T::A::ZERO); LANES];
            for l in 0..LANES {
                o[l] = T::from_acc(xv[l]);
            }
            *(cp.add(i) as *mut [T; LANES]) = o;
            i += LANES;
        }
        while i < n {
            *cp.add(i) = T::from_acc(*xp.add(i));
            i += 1;
        }
    }
}

/// `C = epilogue(accumulate ? C : 0)` for `k == 0`.
pub(crate) unsafe fn no_k<T: Sealed, E: Fn(usize, usize, &mut [T::A])>(args: &Args<T>, epi: &E) {
    let mut buf = [T::A::ZERO; 64];
    for i in 0..args.m {
        let mut j = 0;
        while j < args.n {
            let len = (args.n - j).min(64);
            let row = &mut buf[..len];
            let c = std::slice::from_raw_parts_mut(args.c.add(i * args.ldc + j), len);
            for (x, cv) in row.iter_mut().zip(c.iter()) {
                *x = if args.accumulate {
                    cv.to_acc()
                } else {
                    T::A::ZERO
                };
            }
            epi(args.i_off + i, args.j_off + j, row);
            for (cv, x) in c.iter_mut().zip(row.iter()) {
                *cv = T::from_acc(*x);
            }
            j += len;
        }
    }
}

/// Rows per pass of the loop nest for a narrow C with more than one K block: its f32 partial
/// sums cover every row of a pass (at most `NARROW_ROWS × NC` values, 8 MB), and B is packed
/// again for each pass. Small in tests, so the sweeps cross pass boundaries.
#[cfg(not(test))]
const NARROW_ROWS: usize = 1008;
#[cfg(test)]
const NARROW_ROWS: usize = 36;

/// The packed GEMM: [`packed_pass`] over all rows at once, or over passes of [`NARROW_ROWS`]
/// rows when a narrow C needs partial sums over several K blocks.
#[inline(always)]
pub(crate) unsafe fn packed<T: Sealed, K: Kernel<T>, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    epi: &E,
) {
    let kc_max = K::KC.min(args.k.div_ceil(K::KP) * K::KP);
    if !(T::NARROW && args.k > kc_max && args.m > NARROW_ROWS) {
        packed_pass::<T, K, E>(args, epi);
        return;
    }
    let mut i = 0;
    while i < args.m {
        let rows = NARROW_ROWS.min(args.m - i);
        let mut sub = *args;
        sub.m = rows;
        sub.a = args.a.wrapping_add(i * args.rsa);
        sub.c = args.c.wrapping_add(i * args.ldc);
        sub.i_off = args.i_off + i;
        packed_pass::<T, K, E>(&sub, epi);
        i += rows;
    }
}

/// The blocked loop nest (BLIS order: jc → pc → pack B → ic → pack A → jr → ir → kernel).
#[inline(always)]
unsafe fn packed_pass<T: Sealed, K: Kernel<T>, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    epi: &E,
) {
    let (m, n, k) = (args.m, args.n, args.k);
    let (mr, nr, kp) = (K::MR, K::NR, K::KP);
    debug_assert!(mr * nr <= MAX_TILE);
    let kc_max = K::KC.min(k.div_ceil(kp) * kp);
    let mc_max = K::MC.min(m.div_ceil(mr) * mr);
    let nc_max = K::NC.min(n.div_ceil(nr) * nr);
    let steps_max = kc_max / kp;
    if !args.pack_out.is_null() {
        pack_all::<T, K>(args, kc_max);
        return;
    }
    // A prepacked B ([`super::PackedB`]): K block `pc / kc_max` starts `pc / kc_max ·
    // steps_max · panels · NR` elements in, then one micro-panel of `steps · NR` per `NR`
    // columns of the whole problem (a column split starts at a multiple of `NR`).
    let pre =
        (!args.pre.is_null() && args.j_off.is_multiple_of(nr)).then_some(args.pre as *const K::P);
    // The epilogue runs over whole rows of each finished MC×NC block, so its own loop runs
    // over `nc` values at a time. C of the accumulator type (f32, f64) holds the final values
    // itself (`late`); a narrow C (f16, bf16) with an epilogue gets them in the f32 scratch
    // (`late_narrow`), and the epilogue's rows are narrowed into C after it.
    let late = !T::NARROW;
    let late_narrow = T::NARROW && args.epi;
    let use_scratch = T::NARROW && (k > kc_max || late_narrow);
    // Partial sums over K blocks must hold every row of the jc panel (the loop order is
    // jc → pc → ic; [`packed`] bounds the rows of a pass); with one K block the scratch only
    // holds the current MC×NC block.
    let blockwise = use_scratch && k <= kc_max;
    let srows = if blockwise { mc_max } else { m };
    let mut scratch = buf::take();
    let s = &mut scratch;
    {
        let apack: *mut K::P = s.get(0, mc_max * steps_max);
        let bpack: *mut K::P = s.get(1, nc_max * steps_max);
        // Partial sums: C itself when it is the accumulator type, else an f32 scratch.
        let partial = if use_scratch {
            Partial {
                ptr: s.get::<T::A>(2, srows * nc_max),
                ld: nc_max,
            }
        } else {
            Partial {
                ptr: args.c as *mut T::A,
                ld: args.ldc,
            }
        };
        let mut tile = [T::A::ZERO; MAX_TILE];
        let tile = tile.as_mut_ptr();
        let mut jc = 0;
        while jc < n {
            let nc = nc_max.min(n - jc);
            let mut pc = 0;
            while pc < k {
                let kc = kc_max.min(k - pc);
                let steps = kc.div_ceil(kp);
                let (first, last) = (pc == 0, pc + kc == k);
                // Pack B(pc.., jc..), or find it packed.
                let bpack = match pre {
                    Some(p) => p.add(
                        pc / kc_max * steps_max * args.pre_panels * nr
                            + (args.j_off + jc) / nr * steps * nr,
                    ),
                    None => bpack as *const K::P,
                };
                let mut jr = 0;
                while pre.is_none() && jr < nc {
                    let nrr = nr.min(nc - jr);
                    K::pack_b(
                        args.b.add(pc * args.rsb + (jc + jr) * args.csb),
                        args.rsb,
                        args.csb,
                        nrr,
                        kc,
                        (bpack as *mut K::P).add(jr / nr * steps * nr),
                    );
                    jr += nr;
                }
                let mut ic = 0;
                while ic < m {
                    let mc = mc_max.min(m - ic);
                    let srow0 = if blockwise { 0 } else { ic };
                    let mut ir = 0;
                    while ir < mc {
                        let mrr = mr.min(mc - ir);
                        K::pack_a(
                            args.a.add((ic + ir) * args.rsa + pc * args.csa),
                            args.rsa,
                            args.csa,
                            mrr,
                            kc,
                            apack.add(ir / mr * steps * mr),
                        );
                        ir += mr;
                    }
                    let mut jr = 0;
                    while jr < nc {
                        let nrr = nr.min(nc - jr);
                        let bp = bpack.add(jr / nr * steps * nr);
                        let mut ir = 0;
                        while ir < mc {
                            let mrr = mr.min(mc - ir);
                            let ap = apack.add(ir / mr * steps * mr);
                            if mrr == mr && nrr == nr {
                                K::kernel(steps, ap, bp, tile);
                            } else {
                                K::kernel_edge(mrr, nrr, steps, ap, bp, tile);
                            }
                            // Partial sums: the scratch is indexed by (row, column within jc),
                            // the row within the block when `blockwise`.
                            let pbase = if use_scratch {
                                partial.ptr.add((srow0 + ir) * partial.ld + jr)
                            } else {
                                partial.ptr.add((ic + ir) * partial.ld + jc + jr)
                            };
                            store_tile(
                                args,
                                tile,
                                nr,
                                mrr,
                                nrr,
                                ic + ir,
                                jc + jr,
                                first,
                                // late_narrow: the final values go to the scratch too
                                last && !late_narrow,
                                Partial {
                                    ptr: pbase,
                                    ld: partial.ld,
                                },
                                if late || late_narrow { None } else { Some(epi) },
                            );
                            ir += mr;
                        }
                        jr += nr;
                    }
                    if last && late {
                        // The MC×NC block of C is final (and still in cache): one epilogue
                        // call per row of it instead of one per microtile row, so the
                        // epilogue's own loop runs over `nc` values at a time.
                        for r in 0..mc {
                            let crow = (args.c as *mut T::A).add((ic + r) * args.ldc + jc);
                            epi(
                                args.i_off + ic + r,
                                args.j_off + jc,
                                std::slice::from_raw_parts_mut(crow, nc),
                            );
                        }
                    }
                    if last && late_narrow {
                        for r in 0..mc {
                            let row = std::slice::from_raw_parts_mut(
                                partial.ptr.add((srow0 + r) * partial.ld),
                                nc,
                            );
                            epi(args.i_off + ic + r, args.j_off + jc, row);
                            narrow_into(
                                std::slice::from_raw_parts_mut(
                                    args.c.add((ic + r) * args.ldc + jc),
                                    nc,
                                ),
                                row,
                            );
                        }
                    }
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    }
    buf::put(scratch);
}

/// Pack mode ([`super::pack_b`]): all of B, K block by K block, each as the micro-panels of
/// every `NR` columns (the layout [`packed_pass`] reads a prepacked B in), into
/// `*args.pack_out` (64-byte aligned, as the per-call packs are).
#[inline(always)]
unsafe fn pack_all<T: Sealed, K: Kernel<T>>(args: &Args<T>, kc_max: usize) {
    let (n, k, nr, kp) = (args.n, args.k, K::NR, K::KP);
    let panels = n.div_ceil(nr);
    let mut total = 0;
    let mut pc = 0;
    while pc < k {
        let kc = kc_max.min(k - pc);
        total += kc.div_ceil(kp) * panels * nr;
        pc += kc;
    }
    let out = &mut *args.pack_out;
    let bytes = total * std::mem::size_of::<K::P>();
    out.panels = panels;
    out.lines = vec![buf::Line([0; 64]); bytes.div_ceil(64)];
    let base = out.lines.as_mut_ptr() as *mut K::P;
    let mut off = 0;
    let mut pc = 0;
    while pc < k {
        let kc = kc_max.min(k - pc);
        let steps = kc.div_ceil(kp);
        for p in 0..panels {
            let j = p * nr;
            K::pack_b(
                args.b.add(pc * args.rsb + j * args.csb),
                args.rsb,
                args.csb,
                nr.min(n - j),
                kc,
                base.add(off + p * steps * nr),
            );
        }
        off += steps * panels * nr;
        pc += kc;
    }
}
