//! The AVX-512 form of [`super`]'s F(2×2, 3×3) (x86-64 only; chosen by [`super::forward`] when
//! the active ISA is [`crate::isa::Isa::Avx512`]). Same algorithm as the portable form, with
//! every step in registers, no separate packing, and layouts chosen so that a transform touches
//! its 16 points at a short constant stride (not 16 blocks 16–32 KiB apart, which all fall in
//! one L1 set):
//!
//! - **Weights** `U[ξ][c][o]` (output channels contiguous): 16 kernels at a time, their 9 taps
//!   transposed into 9 vectors through a small buffer.
//! - **Input transform**: per image channel and tile row, segments of 8 tiles; the 4 input rows
//!   of a segment (18 columns, zero-padded by masked loads) are 2 vectors each, `Bᵀ d` is 8
//!   vector additions, `· B` picks the 4 columns of every tile with `vpermt2ps` and adds them,
//!   and the 16 results go straight into `V[c][ξ][t]` (a chunk's tiles contiguous, padded to
//!   a multiple of 16).
//! - **The 16 GEMMs** `M[o][ξ][t] = Σ_c U[ξ][c][o] · V[c][ξ][t]`: a 16-row × 16-tile register
//!   block (16 accumulators) over the whole `K = C` (the 16 weights of a `c` broadcast from one
//!   cache line, one vector of `V` per `c`); tiles in vectors, so a chunk wastes at most 15
//!   lanes.
//! - **Output transform**: `Aᵀ m A` on 8 tiles per vector, the bias and the ReLU in registers,
//!   the two output columns of each tile interleaved by `vpermt2ps`, stored into NCHW rows with
//!   masked stores.
//!
//! The transforms' arithmetic is the portable form's, operation for operation, so both forms
//! give the same results up to the GEMM's summation order.

use super::{tiles, Out};
use crate::conv::Geom;
use crate::gemm;
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ops::Range;

/// Tiles per chunk (rounded down to whole tile rows, at least one row).
pub(super) const CHUNK: usize = 128;

thread_local! {
    /// A thread's `V` and `M` buffers for one chunk.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// The caller's last few transformed weights, most recent first.
    static UCACHE: RefCell<Vec<UEntry>> = const { RefCell::new(Vec::new()) };
}

/// One cached weight transform: the weights' bits and shape, and their `U`.
struct UEntry {
    /// The algorithm (2: F(2×2, 3×3), 4: F(4×4, 3×3)).
    kind: u8,
    o: usize,
    c: usize,
    w: Vec<u32>,
    u: Vec<f32>,
}

/// Transformed weights kept per calling thread (a layer's weights are usually the same from
/// one inference call to the next; the transform is about a third of a batch-1 call on the
/// anchor CNN's conv2).
const UCACHE_LEN: usize = 4;

/// The most kernels (`o·c`) whose weights are kept for the cache (25·4 bytes each with their
/// F(2×2) transform, 45·4 with F(4×4)'s: at most 1.6 or 2.9 MiB an entry, 11.5 MiB a thread).
/// Larger layers' transforms are computed every call (there the GEMMs dwarf them) into a
/// buffer that is reused.
const UCACHE_MAX_OC: usize = 1 << 14;

/// `f(U)` for the weights `w` (`[o][c][3][3]`): the cached transform when a thread's earlier
/// call had weights of the same shape and bit for bit the same values (compared in full, so
/// weights updated in place are never stale), else a fresh one, cached when at most
/// [`UCACHE_MAX_OC`] kernels.
fn with_u<R>(o: usize, c: usize, w: &[f32], f: impl FnOnce(&[f32]) -> R) -> R {
    with_u_by(2, o, c, w, 16, kernels, f)
}

/// [`with_u`] for the algorithm `kind` whose transform `tf(o, c, w, u)` writes `points·o·c`
/// elements (F(4×4, 3×3) shares the cache: entries are told apart by `kind`).
pub(super) fn with_u_by<R>(
    kind: u8,
    o: usize,
    c: usize,
    w: &[f32],
    points: usize,
    tf: unsafe fn(usize, usize, *const f32, *mut f32),
    f: impl FnOnce(&[f32]) -> R,
) -> R {
    let oc = o * c;
    // SAFETY: `f32` and `u32` have the same size and alignment, every bit pattern is a `u32`.
    let bits = unsafe { std::slice::from_raw_parts(w.as_ptr().cast::<u32>(), 9 * oc) };
    UCACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        match cache
            .iter()
            .position(|e| e.kind == kind && e.o == o && e.c == c && e.w == bits)
        {
            Some(i) => {
                let e = cache.remove(i);
                cache.insert(0, e);
            }
            None => {
                let mut e = if cache.len() >= UCACHE_LEN {
                    cache.pop().expect("non-empty")
                } else {
                    UEntry {
                        kind,
                        o,
                        c,
                        w: Vec::new(),
                        u: Vec::new(),
                    }
                };
                (e.kind, e.o, e.c) = (kind, o, c);
                e.w.clear();
                if oc <= UCACHE_MAX_OC {
                    e.w.extend_from_slice(bits);
                } else {
                    // never matches (`bits` is not empty): computed again next call
                    e.w.shrink_to_fit();
                }
                e.u.clear();
                e.u.resize(points * oc, 0.0);
                // SAFETY: the caller checked AVX-512; `w` holds `9·oc`, `e.u` `points·oc`.
                unsafe { tf(o, c, w.as_ptr(), e.u.as_mut_ptr()) };
                cache.insert(0, e);
            }
        }
        f(&cache[0].u)
    })
}

/// The lanes `j` of a 16-lane vector whose element `b + j` lies in `0..len` (F(4×4)'s
/// transforms use it too).
#[inline(always)]
pub(super) fn span_mask(b: isize, len: isize) -> u16 {
    let lo = (-b).clamp(0, 16) as u32;
    let hi = (len - b).clamp(0, 16) as u32;
    let upto = |k: u32| if k >= 16 { 0xffff_u32 } else { (1u32 << k) - 1 };
    (upto(hi) & !upto(lo)) as u16
}

/// The pitches `(rp, cp)` of `V[c][ξ][t]` and `M[o][ξ][t]` for `tbp` tiles: a point's row
/// `rp = tbp + 16` apart, a channel's 16 rows `cp = 16·rp + 16` apart. The extra cache lines
/// keep the 16 rows a transform touches at once, and the 16 or more channel rows the GEMM
/// streams through, out of a single L1 set (without them a channel is 8 KiB, a multiple of
/// the 4 KiB set period).
#[inline(always)]
fn pitches(tbp: usize) -> (usize, usize) {
    let rp = tbp + 16;
    (rp, 16 * rp + 16)
}

/// The first `n` lanes (`n ≤ 16`).
#[inline(always)]
fn first(n: usize) -> u16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// `U[((i·4 + j)·c + ci)·o + oi] = (G g Gᵀ)[i][j]` for the kernel `g = w[oi][ci]` (`o` output,
/// `c` input channels; output channels contiguous); the portable `kernels`' operations in the
/// same order.
///
/// # Safety
/// AVX-512 (F, VL, BW, DQ) present; `w` holds `9·o·c`, `u` `16·o·c` elements.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[inline(never)]
#[allow(clippy::needless_range_loop)]
unsafe fn kernels(o: usize, c: usize, w: *const f32, u: *mut f32) {
    let oc = o * c;
    let half = _mm512_set1_ps(0.5);
    // the 9 taps of 16 kernels `w[o0 + l][ci]`, tap-major (a scalar transpose: cheaper than 9
    // gathers per 16 kernels)
    let mut buf = [0.0f32; 9 * 16];
    for ci in 0..c {
        for o0 in (0..o).step_by(16) {
            let nl = (o - o0).min(16);
            let m = first(nl);
            for l in 0..nl {
                let src = w.add(9 * ((o0 + l) * c + ci));
                for (t, b) in buf.iter_mut().skip(l).step_by(16).enumerate() {
                    *b = *src.add(t);
                }
            }
            let tap = |t: usize| _mm512_loadu_ps(buf.as_ptr().add(16 * t));
            // rows of G g (4 × 3)
            let mut t = [[_mm512_setzero_ps(); 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (tap(j), tap(3 + j), tap(6 + j));
                t[0][j] = g0;
                t[1][j] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(g0, g1), g2));
                t[2][j] = _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(g0, g1), g2));
                t[3][j] = g2;
            }
            for (i, r) in t.iter().enumerate() {
                let v = [
                    r[0],
                    _mm512_mul_ps(half, _mm512_add_ps(_mm512_add_ps(r[0], r[1]), r[2])),
                    _mm512_mul_ps(half, _mm512_add_ps(_mm512_sub_ps(r[0], r[1]), r[2])),
                    r[2],
                ];
                for (j, v) in v.into_iter().enumerate() {
                    _mm512_mask_storeu_ps(u.add((i * 4 + j) * oc + ci * o + o0), m, v);
                }
            }
        }
    }
}

/// The input transform of tile rows `rows` into `v` (`[c][16][tbp]` at the [`pitches`], the chunk's tiles
/// contiguous from 0: the 16 transform points of a channel at a short, constant stride).
///
/// # Safety
/// AVX-512 present; `x` holds `g`'s input, `v` `c·pitches(tbp).1` elements, `rows` are tile rows of
/// `g` holding at most `tbp` tiles.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[inline(never)]
unsafe fn input_tf(g: &Geom, x: *const f32, rows: Range<usize>, tbp: usize, v: *mut f32) {
    let (th, tw) = tiles(g);
    let (h, wd, q) = (g.inp[0] as isize, g.inp[1] as isize, g.in_plane());
    let (p0, p1) = (g.pad[0] as isize, g.pad[1] as isize);
    let segs = tw.div_ceil(8);
    let two_j = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 0, 0, 0, 0, 0, 0, 0, 0);
    let one = _mm512_set1_epi32(1);
    let i0 = two_j;
    let i1 = _mm512_add_epi32(i0, one);
    let i2 = _mm512_add_epi32(i1, one);
    let i3 = _mm512_add_epi32(i2, one);
    let z = _mm512_setzero_ps();
    let r0 = rows.start;
    let (rp, cp) = pitches(tbp);
    // channel outer: each input plane is read front to back (prefetcher-friendly)
    for c in 0..g.c {
        for row in rows.clone() {
            let (n, ty) = (row / th, row % th);
            let l0 = (row - r0) * tw;
            let xc = x.add((n * g.c + c) * q);
            let vc = v.add(c * cp + l0);
            for s in 0..segs {
                let b = 16 * s as isize - p1;
                let (mlo, mhi) = (span_mask(b, wd), span_mask(b + 16, wd));
                let mt = first(tw - 8 * s);
                let mut lo = [z; 4];
                let mut hi = [z; 4];
                for i in 0..4 {
                    let ih = (2 * ty + i) as isize - p0;
                    if ih >= 0 && ih < h {
                        // masked lanes are never read, so the (wrapping) pointer may point
                        // before the row or past the plane
                        let p = xc.wrapping_offset(ih * wd + b);
                        lo[i] = _mm512_maskz_loadu_ps(mlo, p);
                        if mhi != 0 {
                            hi[i] = _mm512_maskz_loadu_ps(mhi, p.wrapping_add(16));
                        }
                    }
                }
                // Bᵀ d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3
                let vert = |d: &[__m512; 4]| {
                    [
                        _mm512_sub_ps(d[0], d[2]),
                        _mm512_add_ps(d[1], d[2]),
                        _mm512_sub_ps(d[2], d[1]),
                        _mm512_sub_ps(d[1], d[3]),
                    ]
                };
                let (alo, ahi) = (vert(&lo), vert(&hi));
                for i in 0..4 {
                    let e0 = _mm512_permutex2var_ps(alo[i], i0, ahi[i]);
                    let e1 = _mm512_permutex2var_ps(alo[i], i1, ahi[i]);
                    let e2 = _mm512_permutex2var_ps(alo[i], i2, ahi[i]);
                    let e3 = _mm512_permutex2var_ps(alo[i], i3, ahi[i]);
                    let dst = vc.add(i * 4 * rp + 8 * s);
                    _mm512_mask_storeu_ps(dst, mt, _mm512_sub_ps(e0, e2));
                    _mm512_mask_storeu_ps(dst.add(rp), mt, _mm512_add_ps(e1, e2));
                    _mm512_mask_storeu_ps(dst.add(2 * rp), mt, _mm512_sub_ps(e2, e1));
                    _mm512_mask_storeu_ps(dst.add(3 * rp), mt, _mm512_sub_ps(e1, e3));
                }
            }
        }
    }
}

/// `m[o·ld + t] = Σ_k u[k·og + o] · v[k·ld + t]` for `o < og` (at least 16), `k < kc`,
/// `t < tbp` (a multiple of 16): 16-row × 16-tile register blocks over the whole `k` (the 16
/// weights of a `k` are one cache line's broadcasts); the last row block overlaps the one
/// before it when `og` is not a multiple of 16 (the overlapped rows are computed twice, to the
/// same values).
///
/// # Safety
/// AVX-512 present; `u` holds `og·kc` elements, `v` and `m` are valid at the offsets above.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn gemm16(
    og: usize,
    kc: usize,
    tbp: usize,
    ld: usize,
    u: *const f32,
    v: *const f32,
    m: *mut f32,
) {
    let mut o0 = 0;
    loop {
        let ob = o0.min(og - 16);
        for t in (0..tbp).step_by(16) {
            let mut acc = [_mm512_setzero_ps(); 16];
            let (mut vk, mut uk) = (v.add(t), u.add(ob));
            for _ in 0..kc {
                let x = _mm512_loadu_ps(vk);
                for (r, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(*uk.add(r)), x, *a);
                }
                vk = vk.add(ld);
                uk = uk.add(og);
            }
            let mb = m.add(ob * ld + t);
            for (r, a) in acc.into_iter().enumerate() {
                _mm512_storeu_ps(mb.add(r * ld), a);
            }
        }
        if ob + 16 >= og {
            break;
        }
        o0 += 16;
    }
}

/// The output transform of tile rows `rows` from `m` (`[o][16][tbp]` at the [`pitches`]) into `y`, with the
/// epilogue when `epi` (`+ bias[o]` or `+ 0`, then the ReLU when `relu`, as
/// [`crate::conv::apply_epilogue`] computes it).
///
/// # Safety
/// AVX-512 present; `m` holds `o·pitches(tbp).1` elements, `y` the whole output of `g`, `bias` is null
/// or holds `g.o` elements; no other thread writes these rows.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
#[inline(never)]
unsafe fn output_tf(
    g: &Geom,
    m: *const f32,
    rows: Range<usize>,
    tbp: usize,
    bias: *const f32,
    epi: bool,
    relu: bool,
    y: *mut f32,
) {
    let (th, tw) = tiles(g);
    let (oh, ow, p) = (g.out[0], g.out[1], g.out_plane());
    let (rp, cp) = pitches(tbp);
    let segs = tw.div_ceil(8);
    // lane 2j: y0[j], lane 2j + 1: y1[j] (y1 in the second operand, lanes 16..)
    let inter = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let z = _mm256_setzero_ps();
    let r0 = rows.start;
    let fin = |a: __m256, b: __m256| {
        if !epi {
            return a;
        }
        let s = _mm256_add_ps(a, b);
        if relu {
            // `s < 0` (not `max`): a NaN stays NaN
            _mm256_mask_mov_ps(s, _mm256_cmp_ps_mask::<_CMP_LT_OQ>(s, z), z)
        } else {
            s
        }
    };
    let store = |dst: *mut f32, mask: u16, a: __m256, b: __m256| {
        let v = _mm512_permutex2var_ps(_mm512_castps256_ps512(a), inter, _mm512_castps256_ps512(b));
        _mm512_mask_storeu_ps(dst, mask, v);
    };
    // channel outer: each output plane is written front to back
    for o in 0..g.o {
        let b = _mm256_set1_ps(if bias.is_null() { 0.0 } else { *bias.add(o) });
        for row in rows.clone() {
            let (n, ty) = (row / th, row % th);
            let l0 = (row - r0) * tw;
            let two = 2 * ty + 1 < oh;
            let mo = m.add(o * cp + l0);
            let yo = y.add((n * g.o + o) * p + 2 * ty * ow);
            for s in 0..segs {
                let mt = first(tw - 8 * s) as u8;
                let ld = |k: usize| _mm256_maskz_loadu_ps(mt, mo.add(k * rp + 8 * s));
                let mut s0 = [z; 4];
                let mut s1 = [z; 4];
                for j in 0..4 {
                    let (a, b, c, d) = (ld(j), ld(4 + j), ld(8 + j), ld(12 + j));
                    s0[j] = _mm256_add_ps(_mm256_add_ps(a, b), c);
                    s1[j] = _mm256_sub_ps(_mm256_sub_ps(b, c), d);
                }
                let col = 16 * s;
                let mask = first(ow - col);
                let y00 = _mm256_add_ps(_mm256_add_ps(s0[0], s0[1]), s0[2]);
                let y01 = _mm256_sub_ps(_mm256_sub_ps(s0[1], s0[2]), s0[3]);
                store(yo.add(col), mask, fin(y00, b), fin(y01, b));
                if two {
                    let y10 = _mm256_add_ps(_mm256_add_ps(s1[0], s1[1]), s1[2]);
                    let y11 = _mm256_sub_ps(_mm256_sub_ps(s1[1], s1[2]), s1[3]);
                    store(yo.add(ow + col), mask, fin(y10, b), fin(y11, b));
                }
            }
        }
    }
}

/// One thread's chunks `chunks` of `per` tile rows each.
///
/// # Safety
/// AVX-512 present; the slices' lengths checked by the caller; `y` is `g`'s whole output and
/// no other thread works on these chunks.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn run_chunks(
    g: &Geom,
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y: Out<f32>,
    per: usize,
    chunks: Range<usize>,
    s: &mut Vec<f32>,
) {
    let (th, tw) = tiles(g);
    let rows_all = g.n * th;
    let tbmax = (per * tw).next_multiple_of(16);
    let cpmax = pitches(tbmax).1;
    let need = (g.c + g.o) * cpmax;
    if s.len() < need {
        s.resize(need, 0.0);
    }
    let (v, m) = s.split_at_mut(g.c * cpmax);
    let oc = g.o * g.c;
    let epi = bias.is_some() || relu;
    let bias = bias.map_or(std::ptr::null(), |b| b.as_ptr());
    for ch in chunks {
        let rows = ch * per..((ch + 1) * per).min(rows_all);
        let tbp = (rows.len() * tw).next_multiple_of(16);
        let (rp, cp) = pitches(tbp);
        input_tf(g, x.as_ptr(), rows.clone(), tbp, v.as_mut_ptr());
        for k in 0..16 {
            gemm16(
                g.o,
                g.c,
                tbp,
                cp,
                u.as_ptr().add(k * oc),
                v.as_ptr().add(k * rp),
                m.as_mut_ptr().add(k * rp),
            );
        }
        output_tf(g, m.as_ptr(), rows, tbp, bias, epi, relu, y.ptr);
    }
}

/// [`super::forward`] on AVX-512 (the caller checked that the CPU has it and that `g`
/// satisfies [`super::applies`]).
pub(super) fn forward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
    threads: Option<usize>,
) {
    let (lx, lw, ly) = g.lens();
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
    with_u(g.o, g.c, &w[..9 * oc], |u| {
        let job = |t: usize, parts: usize| {
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let range = chunks * t / parts..chunks * (t + 1) / parts;
                // SAFETY: AVX-512 asserted; lengths checked above; the parts' chunks (so
                // their output rows) are disjoint.
                unsafe { run_chunks(g, x, u, bias, relu, yp, per, range, &mut s) }
            })
        };
        if threads <= 1 {
            job(0, 1);
        } else {
            gemm::parallel(threads, &|t| job(t, threads));
        }
    });
}
