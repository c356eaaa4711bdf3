//! The AVX-512 `f32` path for a row-major A with few rows (`m <= ROWS_MAX_M`): the packed
//! path's 12×32 register tile and its B panels (prepacked or packed per block), but A is not
//! packed.
//!
//! At the batch-1 encoder block's shapes (`M = 128`, `K = 256 / 1024`) the packed path lost
//! 6–7% of the FMA peak to its A pack (a 4×16 in-register transpose per 64 values, ~3% of the
//! time under `perf`, ~6% in an A/B without it), ~2% to the register tile's round trip through
//! a tile buffer, and 2–3% to epilogues that read back `36 × n` blocks of C from L2. Here:
//!
//! - the microkernel broadcasts A straight from its 12 rows (`A(r, q) = a[r·lda + q]`): in
//!   place when the rows do not crowd one L1 set (a row stride of 1 KiB puts 3 of the 12 rows in
//!   a set; 4 KiB would put all 12 in one of the 8 ways and thrash), else copied once per K
//!   block into rows `kc + 16` floats apart (a plain copy, no transpose);
//! - full tiles are written to C from the registers (`C = acc`, or `C += acc` for later K blocks
//!   or an accumulated C) when alpha is 1; edge tiles and other alphas take the tile buffer and
//!   the shared store path;
//! - the loop nest is K block → [`NCR`]-column block → 12-row tile → 32-column panel, and the
//!   epilogue runs on each finished `12 × NCR` block while it is still in L1 / L2.
//!
//! The K blocking ([`K512::KC`]) and each accumulator's order of FMAs are the packed path's, and
//! the stores compute the same `x + C` sums, so results are bitwise those of the packed path (a
//! prepacked B is read in the same layout; `tests.rs` checks both).

// Index loops over fixed-size register arrays are the idiom of the microkernels.
#![allow(clippy::needless_range_loop)]

use super::buf;
use super::driver::{store_tile, Kernel, Partial, MAX_TILE};
use super::x86::K512;
use super::Args;
use std::arch::x86_64::*;

/// Rows up to which a row-major `f32` A takes this path.
pub(crate) const ROWS_MAX_M: usize = 384;
/// Columns per block (the epilogue's segment; `NCR × kc` of packed B stays in L2).
pub(crate) const NCR: usize = 256;
const MR: usize = 12;
const NR: usize = 32;
/// Padding (floats) of the copied rows' stride: `kc + PAD` floats is never a multiple of 4 KiB.
const PAD: usize = 16;

#[cfg(test)]
thread_local! {
    /// Tests: 0 = automatic, 1 = never take this path, 2 = always copy A, 3 = always read A in
    /// place.
    pub(crate) static MODE: std::cell::Cell<u8> = const { std::cell::Cell::new(0) };
}

#[inline(always)]
fn mode() -> u8 {
    #[cfg(test)]
    {
        MODE.with(|m| m.get())
    }
    #[cfg(not(test))]
    {
        0
    }
}

/// Whether the call can take this path (`f32` is checked by the caller).
#[inline(always)]
pub(crate) fn applies(args: &Args<f32>) -> bool {
    args.csa == 1 && args.m <= ROWS_MAX_M && args.pack_out.is_null() && mode() != 1
}

/// Whether 12 rows `rs` floats apart can be read in place (see [`rows_fit_l1`]).
#[inline(always)]
fn in_place(rs: usize) -> bool {
    match mode() {
        2 => false,
        3 => true,
        _ => rows_fit_l1(MR, rs),
    }
}

/// Whether `rows` `f32` rows `rs` floats apart can be broadcast from in place by a register
/// tile: at most 4 of them share an L1 set (64 sets of 64-byte lines, 8 ways), leaving room for
/// the other operand's lines. Also the fused attention kernel's rule for `Q`.
#[inline(always)]
pub(crate) fn rows_fit_l1(rows: usize, rs: usize) -> bool {
    let mut count = [0u8; 64];
    for r in 0..rows {
        let set = (r * rs * 4 / 64) % 64;
        count[set] += 1;
        if count[set] > 4 {
            return false;
        }
    }
    true
}

/// `out(r, 16v..16v+16) (+)= sum_q A(r, q)·B(q, 16v..)` for `r < R`, `v < V`: A read from rows
/// `lda` apart, B a packed 32-wide micro-panel; `add`: add to what `out` holds.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn tile<const R: usize, const V: usize>(
    steps: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    add: bool,
) {
    let mut c = [[_mm512_setzero_ps(); V]; R];
    let mut b = b;
    for q in 0..steps {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(b.add(16 * v));
        }
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r * lda + q));
            for v in 0..V {
                cr[v] = _mm512_fmadd_ps(av, bv[v], cr[v]);
            }
        }
        b = b.add(NR);
    }
    for (r, cr) in c.iter().enumerate() {
        for (v, x) in cr.iter().enumerate() {
            let p = out.add(r * ldo + 16 * v);
            let x = if add {
                _mm512_add_ps(*x, _mm512_loadu_ps(p))
            } else {
                *x
            };
            _mm512_storeu_ps(p, x);
        }
    }
}

/// [`tile`] for `mr` rows (exactly: rows past them are never read) and `v` vectors.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_any(
    mr: usize,
    v: usize,
    steps: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    out: *mut f32,
    ldo: usize,
    add: bool,
) {
    macro_rules! go {
        ($($r:literal)*) => {
            match (mr, v) {
                $(($r, 1) => tile::<$r, 1>(steps, a, lda, b, out, ldo, add),)*
                $(($r, _) => tile::<$r, 2>(steps, a, lda, b, out, ldo, add),)*
                _ => unreachable!("rows::tile_any: {mr} rows"),
            }
        };
    }
    go!(1 2 3 4 5 6 7 8 9 10 11 12)
}

/// The path (see the module docs); single-threaded, on `args` as [`super::driver::packed`]
/// takes them (a column split's `j_off`, a prepacked B in `args.pre`).
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub(crate) unsafe fn rows_512<E: Fn(usize, usize, &mut [f32])>(args: &Args<f32>, epi: &E) {
    let (m, n, k) = (args.m, args.n, args.k);
    let kc_max = <K512<f32> as Kernel<f32>>::KC.min(k);
    let pre =
        (!args.pre.is_null() && args.j_off.is_multiple_of(NR)).then_some(args.pre as *const f32);
    let direct_ok = args.alpha == 1.0;
    let inplace = in_place(args.rsa);
    let ald = kc_max + PAD;
    let mut scratch = buf::take();
    let s = &mut scratch;
    let apack: *mut f32 = if inplace {
        std::ptr::null_mut()
    } else {
        s.get(0, m * ald)
    };
    let bpack: *mut f32 = if pre.is_some() {
        std::ptr::null_mut()
    } else {
        s.get(1, NCR * kc_max)
    };
    let mut tbuf = [0f32; MAX_TILE];
    let tbuf = tbuf.as_mut_ptr();
    let mut pc = 0;
    while pc < k {
        let kc = kc_max.min(k - pc);
        let (first, last) = (pc == 0, pc + kc == k);
        // `C += acc` unless this block's sums are C's first values
        let add = !first || args.accumulate;
        let (a, lda) = if inplace {
            (args.a.add(pc), args.rsa)
        } else {
            for r in 0..m {
                std::ptr::copy_nonoverlapping(
                    args.a.add(r * args.rsa + pc),
                    apack.add(r * ald),
                    kc,
                );
            }
            (apack as *const f32, ald)
        };
        let mut jc = 0;
        while jc < n {
            let nc = NCR.min(n - jc);
            // B's micro-panels of this block: in the prepacked layout (K block, then every
            // `NR` columns of the whole problem), or packed here
            let panel = |jr: usize| match pre {
                Some(p) => p.add(
                    pc / kc_max * kc_max * args.pre_panels * NR
                        + (args.j_off + jc + jr) / NR * kc * NR,
                ),
                None => bpack.add(jr / NR * kc * NR) as *const f32,
            };
            if pre.is_none() {
                let mut jr = 0;
                while jr < nc {
                    <K512<f32> as Kernel<f32>>::pack_b(
                        args.b.add(pc * args.rsb + (jc + jr) * args.csb),
                        args.rsb,
                        args.csb,
                        NR.min(nc - jr),
                        kc,
                        bpack.add(jr / NR * kc * NR),
                    );
                    jr += NR;
                }
            }
            let mut ir = 0;
            while ir < m {
                let mr = MR.min(m - ir);
                let ar = a.add(ir * lda);
                let mut jr = 0;
                while jr < nc {
                    let nr = NR.min(nc - jr);
                    let cp = args.c.add((ir) * args.ldc + jc + jr);
                    if nr == NR && direct_ok {
                        tile_any(mr, 2, kc, ar, lda, panel(jr), cp, args.ldc, add);
                    } else {
                        tile_any(mr, nr.div_ceil(16), kc, ar, lda, panel(jr), tbuf, NR, false);
                        store_tile(
                            args,
                            tbuf,
                            NR,
                            mr,
                            nr,
                            ir,
                            jc + jr,
                            first,
                            last,
                            Partial {
                                ptr: cp,
                                ld: args.ldc,
                            },
                            None::<&E>,
                        );
                    }
                    jr += NR;
                }
                if last {
                    for r in ir..ir + mr {
                        epi(
                            args.i_off + r,
                            args.j_off + jc,
                            std::slice::from_raw_parts_mut(args.c.add(r * args.ldc + jc), nc),
                        );
                    }
                }
                ir += MR;
            }
            jc += nc;
        }
        pc += kc;
    }
    buf::put(scratch);
}
