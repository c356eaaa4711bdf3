//! The ISA-independent parts: the blocked loop nest around a microkernel, and the store path
//! that applies alpha, the accumulated C, the epilogue and the narrowing conversion.
//!
//! Everything here is `#[inline(always)]` and generic, and is instantiated inside the
//! `#[target_feature]` functions of each ISA module, so the store path and the epilogue are
//! compiled (and vectorized) with that ISA.

use super::buf::with_scratch;
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
    epi: &E,
) {
    let alpha = args.alpha;
    for r in 0..mr {
        let row = std::slice::from_raw_parts_mut(tile.add(r * tnr), nr);
        let crow = args.c.add((i + r) * args.ldc + j);
        let prow = partial.ptr.wrapping_add(r * partial.ld);
        if !first {
            let prev = std::slice::from_raw_parts(prow as *const T::A, nr);
            for (x, p) in row.iter_mut().zip(prev) {
                *x = alpha * *x + *p;
            }
        } else if args.accumulate {
            let prev = std::slice::from_raw_parts(crow as *const T, nr);
            for (x, p) in row.iter_mut().zip(prev) {
                *x = alpha * *x + p.to_acc();
            }
        } else if alpha != T::A::ONE {
            for x in row.iter_mut() {
                *x = alpha * *x;
            }
        }
        if last {
            epi(args.i_off + i + r, args.j_off + j, row);
            let out = std::slice::from_raw_parts_mut(crow, nr);
            for (o, x) in out.iter_mut().zip(row.iter()) {
                *o = T::from_acc(*x);
            }
        } else {
            let out = std::slice::from_raw_parts_mut(prow, nr);
            out.copy_from_slice(row);
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

/// The blocked loop nest (BLIS order: jc → pc → pack B → ic → pack A → jr → ir → kernel).
#[inline(always)]
pub(crate) unsafe fn packed<T: Sealed, K: Kernel<T>, E: Fn(usize, usize, &mut [T::A])>(
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
    with_scratch(|s| {
        let apack: *mut K::P = s.get(0, mc_max * steps_max);
        let bpack: *mut K::P = s.get(1, nc_max * steps_max);
        // Partial sums: C itself when it is the accumulator type, else an f32 scratch.
        let partial = if T::NARROW && k > kc_max {
            Partial {
                ptr: s.get::<T::A>(2, m * nc_max),
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
                // Pack B(pc.., jc..).
                let mut jr = 0;
                while jr < nc {
                    let nrr = nr.min(nc - jr);
                    K::pack_b(
                        args.b.add(pc * args.rsb + (jc + jr) * args.csb),
                        args.rsb,
                        args.csb,
                        nrr,
                        kc,
                        bpack.add(jr / nr * steps * nr),
                    );
                    jr += nr;
                }
                let mut ic = 0;
                while ic < m {
                    let mc = mc_max.min(m - ic);
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
                            K::kernel(steps, apack.add(ir / mr * steps * mr), bp, tile);
                            // Partial sums: the scratch is indexed by (row, column within jc).
                            let pbase = if T::NARROW && k > kc_max {
                                partial.ptr.add((ic + ir) * partial.ld + jr)
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
                                last,
                                Partial {
                                    ptr: pbase,
                                    ld: partial.ld,
                                },
                                epi,
                            );
                            ir += mr;
                        }
                        jr += nr;
                    }
                    ic += mc;
                }
                pc += kc;
            }
            jc += nc;
        }
    });
}
