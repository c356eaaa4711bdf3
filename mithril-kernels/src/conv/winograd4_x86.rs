//! The AVX-512 Winograd F(4×4, 3×3) (Lavin & Gray 2016, interpolation points 0, ±1, ±2;
//! x86-64 only; chosen by [`super::forward_chosen`] where [`super::chosen4`] says): each 4×4
//! block of outputs ("tile") is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` over its 6×6 input window `d`, so
//! the 36 elementwise products summed over the input channels are 36 GEMMs `M_ξ[O, T] =
//! U_ξ[O, C] · V_ξ[C, T]`: 36·O·C multiply-adds per 16 outputs instead of 144·O·C (4x fewer
//! than the direct sum, 1.78x fewer than F(2×2)'s 16 per 4 outputs).
//!
//! - **Tiles in vectors, across tile rows.** A chunk's tiles (whole tile rows, across images)
//!   are numbered contiguously and processed 16 at a time: on the anchor CNN's 14×14 planes
//!   (4×4 tiles of 4×4) one image is exactly one vector of tiles. A group of 16 tiles is split
//!   into *runs* (consecutive tiles of one tile row, at most 7 for the input transform: their
//!   30 input columns fit two vectors) that the transforms gather and scatter with `vpermt2ps`.
//! - **Input transform**: per channel, group and transformed row `i`, the vertical combination
//!   `Bᵀ d` of each run's input rows (two vectors of columns, zero-padded by masked loads), its 6
//!   columns of every tile picked by `vpermt2ps` and blended into the group's lanes, then `· B`
//!   on the 16-tile vectors, stored into `V[c][ξ][t]`.
//! - **The GEMMs** per block of 16 output channels: `M[o][ξ][t] = Σ_c U[ξ][c][o] · V[c][ξ][t]`
//!   on a 16-row × 16-tile register block over the whole `K = C` (as F(2×2)'s), all 36 points
//!   of the block, then at once its output transform (the block's `M` is 16·36 vectors: it is
//!   still in cache).
//! - **Output transform**: `Aᵀ m A` on 16-tile vectors, then either the bias and ReLU and the 4
//!   output columns of each tile interleaved into NCHW rows, or (**the fused 2×2 max pool**)
//!   the 4 windows of each tile pooled in registers (PyTorch's NaN rule, in the order of the
//!   unfused pool), the bias and ReLU on the maxima, and only the pooled quarter stored.
//! - **Weights** `U[ξ][c][o] = G g Gᵀ`, computed in `f64` and rounded once (G's ⅙ and 1⁄24 are
//!   not exact in binary), cached per thread with F(2×2)'s cache.
//!
//! Accuracy: the transforms' larger coefficients (up to 8 in `A`, 5 in `B`) cost more rounding
//! than F(2×2); the tests bound the difference from an `f64` reference (see
//! `winograd4_matches_the_naive_reference`).

use super::x86::span_mask;
use super::Out;
use crate::conv::Geom;
use crate::gemm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// Tiles per chunk (rounded down to whole tile rows, at least one row).
pub(super) const CHUNK: usize = 64;

thread_local! {
    /// A thread's `V` and `M` buffers for one chunk.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The tile geometry: `(th, tw)` tile rows and columns per image.
pub(super) fn tiles(g: &Geom) -> (usize, usize) {
    (g.out[0].div_ceil(4), g.out[1].div_ceil(4))
}

/// The pitches `(rp, cp)` of `V[c][ξ][t]` and `M[o][ξ][t]` for `tbp` tiles (a multiple of 16):
/// a point's row `rp` (an odd number of cache lines, so that the 36 rows a transform touches
/// spread over the L1 sets), a channel's 36 rows `cp = 36·rp + 16` apart.
#[inline(always)]
fn pitches(tbp: usize) -> (usize, usize) {
    let rp = tbp | 16;
    (rp, 36 * rp + 16)
}

/// Lanes `lo..hi` (`hi ≤ 16`).
#[inline(always)]
fn lanes(lo: usize, hi: usize) -> u16 {
    let upto = |k: usize| if k >= 16 { 0xffff_u32 } else { (1u32 << k) - 1 };
    (upto(hi) & !upto(lo)) as u16
}

/// Consecutive tiles of one tile row in a group of 16: lanes `lane..lane + len` hold the
/// chunk's tile row `row` (local), tiles `tx..tx + len`.
#[derive(Clone, Copy, Default)]
struct Run {
    lane: usize,
    len: usize,
    row: usize,
    tx: usize,
}

/// The runs of the group of tiles `t0..t0 + 16` (of `nt`, `tw` per tile row), each at most `cap`
/// tiles; returns their count.
fn runs(t0: usize, nt: usize, tw: usize, cap: usize, out: &mut [Run; 16]) -> usize {
    let (mut k, mut lane) = (0, 0);
    while lane < 16 && t0 + lane < nt {
        let t = t0 + lane;
        let (row, tx) = (t / tw, t % tw);
        let len = (16 - lane).min(tw - tx).min(nt - t).min(cap);
        out[k] = Run { lane, len, row, tx };
        k += 1;
        lane += len;
    }
    k
}

/// Row `i` of `Bᵀ d` (`d(k)` the window's row `k`).
#[inline(always)]
unsafe fn bt_row(i: usize, d: impl Fn(usize) -> __m512) -> __m512 {
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    match i {
        // 4 d0 - 5 d2 + d4
        0 => _mm512_fmadd_ps(four, d(0), _mm512_fnmadd_ps(five, d(2), d(4))),
        // (d4 - 4 d2) ± (d3 - 4 d1)
        1 => _mm512_add_ps(
            _mm512_fnmadd_ps(four, d(2), d(4)),
            _mm512_fnmadd_ps(four, d(1), d(3)),
        ),
        2 => _mm512_sub_ps(
            _mm512_fnmadd_ps(four, d(2), d(4)),
            _mm512_fnmadd_ps(four, d(1), d(3)),
        ),
        // (d4 - d2) ± 2 (d3 - d1)
        3 => _mm512_fmadd_ps(two, _mm512_sub_ps(d(3), d(1)), _mm512_sub_ps(d(4), d(2))),
        4 => _mm512_fnmadd_ps(two, _mm512_sub_ps(d(3), d(1)), _mm512_sub_ps(d(4), d(2))),
        // 4 d1 - 5 d3 + d5
        _ => _mm512_fmadd_ps(four, d(1), _mm512_fnmadd_ps(five, d(3), d(5))),
    }
}

/// `e · B` for one row `e` of 6 vectors (the same operations as [`bt_row`]).
#[inline(always)]
unsafe fn bt_all(e: &[__m512; 6]) -> [__m512; 6] {
    let (two, four, five) = (
        _mm512_set1_ps(2.0),
        _mm512_set1_ps(4.0),
        _mm512_set1_ps(5.0),
    );
    let t0 = _mm512_fnmadd_ps(four, e[2], e[4]);
    let t1 = _mm512_fnmadd_ps(four, e[1], e[3]);
    let t2 = _mm512_sub_ps(e[4], e[2]);
    let t3 = _mm512_sub_ps(e[3], e[1]);
    [
        _mm512_fmadd_ps(four, e[0], _mm512_fnmadd_ps(five, e[2], e[4])),
        _mm512_add_ps(t0, t1),
        _mm512_sub_ps(t0, t1),
        _mm512_fmadd_ps(two, t3, t2),
        _mm512_fnmadd_ps(two, t3, t2),
        _mm512_fmadd_ps(four, e[1], _mm512_fnmadd_ps(five, e[3], e[5])),
    ]
}

/// `Aᵀ m` for 6 vectors `m`: `m0 + a + c`, `b + 2d`, `a + 4c`, `b + 8d + m5` with `a, b = m1 ±
/// m2`, `c, d = m3 ± m4`.
#[inline(always)]
unsafe fn at(m: [__m512; 6]) -> [__m512; 4] {
    let a = _mm512_add_ps(m[1], m[2]);
    let b = _mm512_sub_ps(m[1], m[2]);
    let c = _mm512_add_ps(m[3], m[4]);
    let d = _mm512_sub_ps(m[3], m[4]);
    [
        _mm512_add_ps(_mm512_add_ps(m[0], a), c),
        _mm512_fmadd_ps(_mm512_set1_ps(2.0), d, b),
        _mm512_fmadd_ps(_mm512_set1_ps(4.0), c, a),
        _mm512_add_ps(_mm512_fmadd_ps(_mm512_set1_ps(8.0), d, b), m[5]),
    ]
}

/// The epilogue on one vector: `s + b` when `add`, then the ReLU when `relu` (`s < 0`, not
/// `max`: a NaN stays NaN).
#[inline(always)]
unsafe fn fin(s: __m512, add: bool, b: __m512, relu: bool) -> __m512 {
    let s = if add { _mm512_add_ps(s, b) } else { s };
    if relu {
        let z = _mm512_setzero_ps();
        _mm512_mask_mov_ps(s, _mm512_cmp_ps_mask::<_CMP_LT_OQ>(s, z), z)
    } else {
        s
    }
}

/// The pooled maximum's step (`pooled::pick`): `v` where `v > o` or `v` is NaN, else `o`.
#[inline(always)]
unsafe fn pick(o: __m512, v: __m512) -> __m512 {
    let k = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, o) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
    _mm512_mask_mov_ps(o, k, v)
}

/// `G` times a column (or row) of three, in `f64` lanes: `[g0/4, -(g0+g1+g2)/6,
/// -(g0-g1+g2)/6, g0/24 + g1/12 + g2/6, g0/24 - g1/12 + g2/6, g2]`.
#[inline(always)]
unsafe fn g_col(g0: __m512d, g1: __m512d, g2: __m512d) -> [__m512d; 6] {
    let c = |v: f64| _mm512_set1_pd(v);
    let s = _mm512_add_pd(g0, g2);
    let e = _mm512_fmadd_pd(g0, c(1.0 / 24.0), _mm512_mul_pd(g2, c(1.0 / 6.0)));
    let o = _mm512_mul_pd(g1, c(1.0 / 12.0));
    [
        _mm512_mul_pd(g0, c(0.25)),
        _mm512_mul_pd(_mm512_add_pd(s, g1), c(-1.0 / 6.0)),
        _mm512_mul_pd(_mm512_sub_pd(s, g1), c(-1.0 / 6.0)),
        _mm512_add_pd(e, o),
        _mm512_sub_pd(e, o),
        g2,
    ]
}

/// `U[(6i + j)·o·c + ci·o + oi] = (G g Gᵀ)[i][j]` for the kernel `g = w[oi][ci]` (output
/// channels contiguous), computed in `f64` (16 kernels at a time, their 9 taps transposed
/// through a small buffer) and rounded once.
///
/// # Safety
/// AVX-512 present; `w` holds `9·o·c`, `u` `36·o·c` elements.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[inline(never)]
#[allow(clippy::needless_range_loop)]
pub(super) unsafe fn kernels(o: usize, c: usize, w: *const f32, u: *mut f32) {
    let oc = o * c;
    let mut buf = [0.0f32; 9 * 16];
    for ci in 0..c {
        for o0 in (0..o).step_by(16) {
            let nl = (o - o0).min(16);
            for l in 0..nl {
                let src = w.add(9 * ((o0 + l) * c + ci));
                for (t, b) in buf.iter_mut().skip(l).step_by(16).enumerate() {
                    *b = *src.add(t);
                }
            }
            for h in 0..2 {
                let mask = (((1u32 << nl) - 1) >> (8 * h)) as u8;
                if mask == 0 {
                    continue;
                }
                let tap =
                    |t: usize| _mm512_cvtps_pd(_mm256_loadu_ps(buf.as_ptr().add(16 * t + 8 * h)));
                let cols = [0, 1, 2].map(|j| g_col(tap(j), tap(3 + j), tap(6 + j)));
                for i in 0..6 {
                    let r = g_col(cols[0][i], cols[1][i], cols[2][i]);
                    for (j, v) in r.into_iter().enumerate() {
                        let dst = u.add((6 * i + j) * oc + ci * o + o0 + 8 * h);
                        _mm256_mask_storeu_ps(dst, mask, _mm512_cvtpd_ps(v));
                    }
                }
            }
        }
    }
}

/// A run's source for the input transform: for each of the window's 6 rows its offset in
/// the image's channel plane (`n·c·q` included; 0 for a row outside the image) and the masks
/// of its two vectors of columns (0 outside the image: those rows load as zeros), the run's
/// lanes, whether its window fits the first vector (`one`: every column it reads past that
/// vector's lanes is outside the image, and so is the vector's last lane, which then stands
/// for them), and the 6 permutations picking column `l` of each of its tiles (`one`: from the
/// second operand into the run's lanes, every other lane kept from the first; else from the
/// two vectors).
#[derive(Clone, Copy)]
struct Src {
    row: [isize; 6],
    mlo: [u16; 6],
    mhi: [u16; 6],
    hi: bool,
    k: u16,
    one: bool,
    idx: [__m512i; 6],
}

/// Row `I` of `Bᵀ d` for every run of a group, its 6 columns of each tile gathered into the
/// group's lanes: `e[l]` (`xc` the channel's plane in the first image).
///
/// # Safety
/// AVX-512 present; `src` describes windows inside the input behind `xc`.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[inline]
unsafe fn gather_row<const I: usize>(src: &[Src], xc: *const f32) -> [__m512; 6] {
    let z = _mm512_setzero_ps();
    let mut e = [z; 6];
    for s in src {
        // masked lanes are never read, so the (wrapping) pointer may point before the row or
        // past the plane
        let lo = bt_row(I, |k| {
            _mm512_maskz_loadu_ps(s.mlo[k], xc.wrapping_offset(s.row[k]))
        });
        if s.one {
            for (el, ix) in e.iter_mut().zip(&s.idx) {
                *el = _mm512_permutex2var_ps(*el, *ix, lo);
            }
            continue;
        }
        let hi = if s.hi {
            bt_row(I, |k| {
                _mm512_maskz_loadu_ps(s.mhi[k], xc.wrapping_offset(s.row[k] + 16))
            })
        } else {
            z
        };
        for (el, ix) in e.iter_mut().zip(&s.idx) {
            *el = _mm512_mask_mov_ps(*el, s.k, _mm512_permutex2var_ps(lo, *ix, hi));
        }
    }
    e
}

/// `V[6i + j] = (e · B)[j]` for row `i` of a channel's group (`vc`, points `rp` apart).
#[inline(always)]
unsafe fn put_row(vc: *mut f32, rp: usize, i: usize, e: [__m512; 6]) {
    for (j, vv) in bt_all(&e).into_iter().enumerate() {
        _mm512_storeu_ps(vc.add((6 * i + j) * rp), vv);
    }
}

/// The input transform of tile rows `rows` into `v` (`[c][36][tbp]` at the [`pitches`], the
/// chunk's tiles contiguous from 0, the padding lanes of the last group zero).
///
/// # Safety
/// AVX-512 present; `x` holds `g`'s input, `v` `c·pitches(tbp).1` elements, `rows` are tile
/// rows of `g` holding at most `tbp` tiles.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[inline(never)]
unsafe fn input_tf(g: &Geom, x: *const f32, rows: Range<usize>, tbp: usize, v: *mut f32) {
    let (th, tw) = tiles(g);
    let (h, wd, q) = (g.inp[0] as isize, g.inp[1] as isize, g.in_plane());
    let (p0, p1) = (g.pad[0] as isize, g.pad[1] as isize);
    let nt = rows.len() * tw;
    let r0 = rows.start;
    let (rp, cp) = pitches(tbp);
    let mut rs = [Run::default(); 16];
    let mut src = [Src {
        row: [0; 6],
        mlo: [0; 6],
        mhi: [0; 6],
        hi: false,
        k: 0,
        one: false,
        idx: [_mm512_setzero_si512(); 6],
    }; 16];
    for t0 in (0..nt).step_by(16) {
        let nr = runs(t0, nt, tw, 7, &mut rs);
        for (s, r) in src.iter_mut().zip(&rs[..nr]) {
            let grow = r0 + r.row;
            let (n, ty) = (grow / th, grow % th);
            let b = 4 * r.tx as isize - p1;
            let (mlo, mhi) = (span_mask(b, wd), span_mask(b + 16, wd));
            let one = mhi == 0 && mlo & 0x8000 == 0;
            let mut idx = [_mm512_setzero_si512(); 6];
            for (l, ix) in idx.iter_mut().enumerate() {
                let mut a = [0i32; 16];
                for (lane, e) in a.iter_mut().enumerate() {
                    let j = lane as isize - r.lane as isize;
                    let col = 4 * j + l as isize;
                    *e = if one {
                        if (0..r.len as isize).contains(&j) {
                            16 + col.min(15) as i32
                        } else {
                            lane as i32
                        }
                    } else {
                        (col & 31) as i32
                    };
                }
                *ix = _mm512_loadu_si512(a.as_ptr().cast());
            }
            let mut s2 = Src {
                row: [0; 6],
                mlo: [0; 6],
                mhi: [0; 6],
                hi: mhi != 0,
                k: lanes(r.lane, r.lane + r.len),
                one,
                idx,
            };
            for k in 0..6 {
                let ih = 4 * ty as isize - p0 + k as isize;
                if ih >= 0 && ih < h {
                    s2.row[k] = (n * g.c * q) as isize + ih * wd + b;
                    (s2.mlo[k], s2.mhi[k]) = (mlo, mhi);
                }
            }
            *s = s2;
        }
        let src = &src[..nr];
        for c in 0..g.c {
            let vc = v.add(c * cp + t0);
            let xc = x.add(c * q);
            put_row(vc, rp, 0, gather_row::<0>(src, xc));
            put_row(vc, rp, 1, gather_row::<1>(src, xc));
            put_row(vc, rp, 2, gather_row::<2>(src, xc));
            put_row(vc, rp, 3, gather_row::<3>(src, xc));
            put_row(vc, rp, 4, gather_row::<4>(src, xc));
            put_row(vc, rp, 5, gather_row::<5>(src, xc));
        }
    }
}

/// `m[r·ldm + t] = Σ_k u[k·ldu + r] · v[k·ldv + t]` for `r < 16`, `k < kc`, `t < 16·ntv`: a
/// 16-row × 16-tile register block over the whole `k` per tile vector.
///
/// # Safety
/// AVX-512 present; the pointers valid at the offsets above.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn gemm_block(
    kc: usize,
    ntv: usize,
    u: *const f32,
    ldu: usize,
    v: *const f32,
    ldv: usize,
    m: *mut f32,
    ldm: usize,
) {
    for tv in 0..ntv {
        let mut acc = [_mm512_setzero_ps(); 16];
        let (mut vk, mut uk) = (v.add(16 * tv), u);
        for _ in 0..kc {
            let xv = _mm512_loadu_ps(vk);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm512_fmadd_ps(_mm512_set1_ps(*uk.add(r)), xv, *a);
            }
            vk = vk.add(ldv);
            uk = uk.add(ldu);
        }
        for (r, a) in acc.into_iter().enumerate() {
            _mm512_storeu_ps(m.add(r * ldm + 16 * tv), a);
        }
    }
}

/// What the output transform does after `Aᵀ m A`: the epilogue (`bias` null or `g.o` long;
/// `epi`: add it (or 0), then the ReLU when `relu`, as [`crate::conv::apply_epilogue`]) and
/// the store into the full output, or with `pool` the 2×2 max pool, then the pooled epilogue
/// (the bias only when there is one, then the ReLU) and the store into the pooled output.
#[derive(Clone, Copy)]
struct Epi {
    bias: *const f32,
    epi: bool,
    relu: bool,
    pool: bool,
}

// SAFETY: `bias` is only read, and outlives the call that uses it.
unsafe impl Sync for Epi {}
unsafe impl Send for Epi {}

/// The output transform of the block rows `rs` (output channels `ob + r`) of `m` (`[16][36][tbp]`
/// at the [`pitches`]) for the chunk's tile rows `rows`, into `y`.
///
/// # Safety
/// AVX-512 present; `m` holds `16·pitches(tbp).1` elements, `y` the whole (pooled when
/// `e.pool`) output of `g`; no other thread writes these rows.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn output_tf(
    g: &Geom,
    m: *const f32,
    rs: Range<usize>,
    ob: usize,
    rows: Range<usize>,
    tbp: usize,
    e: Epi,
    y: *mut f32,
) {
    let (th, tw) = tiles(g);
    let (oh, ow, p) = (g.out[0], g.out[1], g.out_plane());
    let [ph2, pw2] = [oh / 2, ow / 2];
    let nt = rows.len() * tw;
    let r0 = rows.start;
    let (rp, cp) = pitches(tbp);
    let z = _mm512_setzero_ps();
    /// A masked store of vector `v` (a quarter or half of the group): lane 0 at `base` (for
    /// output channel 0 and the tile's first row), `rows` of the tile's rows in the output.
    #[derive(Clone, Copy, Default)]
    struct St {
        v: usize,
        mask: u16,
        base: isize,
        rows: usize,
    }
    let mut runs_ = [Run::default(); 16];
    // (at most 4 quarters or 2 halves, each meeting at most 4 or 8 runs)
    let mut sts = [St::default(); 32];
    let (plane, row_len) = if e.pool { (ph2 * pw2, pw2) } else { (p, ow) };
    let (span, width, rows_per) = if e.pool { (8, 2, 2) } else { (4, 4, 4) };
    let (vecs, cols) = if e.pool { (2, pw2) } else { (4, ow) };
    for t0 in (0..nt).step_by(16) {
        let nr = runs(t0, nt, tw, 16, &mut runs_);
        let mut ns = 0;
        for vi in 0..vecs {
            let lo_l = span * vi;
            for run in &runs_[..nr] {
                let (jlo, jhi) = (run.lane.max(lo_l), (run.lane + run.len).min(lo_l + span));
                if jlo >= jhi {
                    continue;
                }
                let grow = r0 + run.row;
                let (n, ty) = (grow / th, grow % th);
                let out_rows = if e.pool { ph2 } else { oh };
                if rows_per * ty >= out_rows {
                    continue;
                }
                // vector lane 0 is column c0
                let c0 = width as isize * (run.tx as isize - run.lane as isize + lo_l as isize);
                let mask = lanes(width * (jlo - lo_l), width * (jhi - lo_l))
                    & span_mask(c0, cols as isize);
                sts[ns] = St {
                    v: vi,
                    mask,
                    base: (n * g.o * plane + rows_per * ty * row_len) as isize + c0,
                    rows: out_rows - rows_per * ty,
                };
                ns += 1;
            }
        }
        let sts = &sts[..ns];
        for r in rs.clone() {
            let o = ob + r;
            let bv = _mm512_set1_ps(if e.bias.is_null() {
                0.0
            } else {
                *e.bias.add(o)
            });
            let fin = |s: __m512, add: bool| fin(s, add, bv, e.relu);
            let mr = m.add(r * cp);
            let yo = y.add(o * plane);
            // · A along each row i, then Aᵀ · down each column b
            let mut t = [[z; 4]; 6];
            for (i, ti) in t.iter_mut().enumerate() {
                let ld = |j: usize| _mm512_loadu_ps(mr.add((6 * i + j) * rp + t0));
                *ti = at([ld(0), ld(1), ld(2), ld(3), ld(4), ld(5)]);
            }
            let mut yv = [[z; 4]; 4];
            for b in 0..4 {
                let col = at([t[0][b], t[1][b], t[2][b], t[3][b], t[4][b], t[5][b]]);
                for a in 0..4 {
                    yv[a][b] = col[a];
                }
            }
            if !e.pool {
                // unpooled: lane 4j + b of quarter qq is tile 4qq + j's column b (even b from
                // the first operand, odd from the second)
                let idx_q0 =
                    _mm512_setr_epi32(0, 16, 0, 16, 1, 17, 1, 17, 2, 18, 2, 18, 3, 19, 3, 19);
                for (a, ya) in yv.iter().enumerate() {
                    let ya = ya.map(|s| if e.epi { fin(s, true) } else { s });
                    let mut out = [z; 4];
                    for (qq, ov) in out.iter_mut().enumerate() {
                        let idx = _mm512_add_epi32(idx_q0, _mm512_set1_epi32(4 * qq as i32));
                        let t1 = _mm512_permutex2var_ps(ya[0], idx, ya[1]);
                        let t2 = _mm512_permutex2var_ps(ya[2], idx, ya[3]);
                        *ov = _mm512_mask_blend_ps(0xcccc, t1, t2);
                    }
                    for st in sts {
                        if a < st.rows {
                            let dst = yo.wrapping_offset(st.base + (a * ow) as isize);
                            _mm512_mask_storeu_ps(dst, st.mask, out[st.v]);
                        }
                    }
                }
            } else {
                // pooled: lane 2j + b of half hh is tile 8hh + j's column b
                let idx_h0 =
                    _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
                for a2 in 0..2 {
                    let (ya, yb) = (&yv[2 * a2], &yv[2 * a2 + 1]);
                    let pv = [0, 1].map(|b2| {
                        let m0 = pick(ya[2 * b2], yb[2 * b2]);
                        let m1 = pick(ya[2 * b2 + 1], yb[2 * b2 + 1]);
                        fin(pick(m0, m1), !e.bias.is_null())
                    });
                    let out = [0, 1].map(|hh| {
                        let idx = _mm512_add_epi32(idx_h0, _mm512_set1_epi32(8 * hh));
                        _mm512_permutex2var_ps(pv[0], idx, pv[1])
                    });
                    for st in sts {
                        if a2 < st.rows {
                            let dst = yo.wrapping_offset(st.base + (a2 * pw2) as isize);
                            _mm512_mask_storeu_ps(dst, st.mask, out[st.v]);
                        }
                    }
                }
            }
        }
    }
}

/// One thread's chunks `chunks` of `per` tile rows each.
///
/// # Safety
/// AVX-512 present; the slices' lengths checked by the caller; `y` is `g`'s whole (pooled when
/// `e.pool`) output and no other thread works on these chunks.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_chunks(
    g: &Geom,
    x: &[f32],
    u: &[f32],
    e: Epi,
    y: Out<f32>,
    per: usize,
    chunks: Range<usize>,
    s: &mut Vec<f32>,
) {
    let (th, tw) = tiles(g);
    let rows_all = g.n * th;
    let tbmax = (per * tw).next_multiple_of(16);
    let cpmax = pitches(tbmax).1;
    let need = (g.c + 16) * cpmax;
    if s.len() < need {
        s.resize(need, 0.0);
    }
    let (v, m) = s.split_at_mut(g.c * cpmax);
    let oc = g.o * g.c;
    for ch in chunks {
        let rows = ch * per..((ch + 1) * per).min(rows_all);
        let tbp = (rows.len() * tw).next_multiple_of(16);
        let (rp, cp) = pitches(tbp);
        input_tf(g, x.as_ptr(), rows.clone(), tbp, v.as_mut_ptr());
        // blocks of 16 output channels; the last one overlaps the one before it when `o` is
        // not a multiple of 16 (its first rows already transformed: only the rest is)
        let mut done = 0;
        while done < g.o {
            let ob = done.min(g.o - 16);
            for xi in 0..36 {
                gemm_block(
                    g.c,
                    tbp / 16,
                    u.as_ptr().add(xi * oc + ob),
                    g.o,
                    v.as_ptr().add(xi * rp),
                    cp,
                    m.as_mut_ptr().add(xi * rp),
                    cp,
                );
            }
            output_tf(
                g,
                m.as_ptr(),
                done - ob..16,
                ob,
                rows.clone(),
                tbp,
                e,
                y.ptr,
            );
            done = ob + 16;
        }
    }
}

/// [`super::forward4`] on AVX-512 (the caller checked that the CPU has it, that `g` satisfies
/// [`super::applies`] and the slices' lengths).
#[allow(clippy::too_many_arguments)]
pub(super) fn forward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
    pool: bool,
    threads: Option<usize>,
) {
    let (lx, lw, ly) = g.lens();
    let ly = if pool { g.pooled_len() } else { ly };
    assert!(x.len() >= lx && w.len() >= lw && y.len() >= ly);
    assert!(bias.is_none_or(|b| b.len() >= g.o));
    assert!(crate::isa::active() >= crate::isa::Isa::Avx512);
    let (th, tw) = tiles(g);
    let oc = g.o * g.c;
    let (_, per, chunks, threads) = super::split(g, th, tw, CHUNK, threads);
    let yp = Out {
        ptr: y.as_mut_ptr(),
        len: y.len(),
    };
    let e = Epi {
        bias: bias.map_or(std::ptr::null(), |b| b.as_ptr()),
        epi: bias.is_some() || relu,
        relu,
        pool,
    };
    super::x86::with_u_by(4, g.o, g.c, &w[..9 * oc], 36, kernels, |u| {
        let job = |t: usize, parts: usize| {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let range = chunks * t / parts..chunks * (t + 1) / parts;
                // SAFETY: AVX-512 asserted; lengths checked above; the parts' chunks (so
                // their output rows) are disjoint.
                unsafe { run_chunks(g, x, u, e, yp, per, range, &mut s) }
            })
        };
        if threads <= 1 {
            job(0, 1);
        } else {
            gemm::parallel(threads, &|t| job(t, threads));
        }
    });
}
