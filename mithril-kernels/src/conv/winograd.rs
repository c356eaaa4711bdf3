//! The `f32` 3×3 stride-1 forward convolution by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin & Gray 2016): each 2×2 block of outputs ("tile") is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d Bᵀᵀ)] A`
//! over its 4×4 input window `d`, so the 16 elementwise products summed over the input channels
//! are 16 independent GEMMs `M_ξ[O, T] = U_ξ[O, C] · V_ξ[C, T]` (ξ the 16 positions of the
//! transformed 4×4 window, `T` tiles): 16·O·C multiply-adds per 4 outputs instead of 36·O·C,
//! 2.25x fewer, on the packed GEMM of [`crate::gemm`].
//!
//! Two forms: the register form of `winograd_x86.rs` (AVX-512; what [`super::forward`] and
//! [`super::forward_fused`] choose, see [`chosen`]), and the portable one below (AVX2, scalar,
//! aarch64; run only by [`super::forward_winograd`]): on the anchor CNN's 32 -> 64 convolution
//! over 14×14 at batch 64 the portable form took 6.9 ms against the implicit GEMM's 4.9 ms (one
//! thread, AVX-512 copies, session 14), its 16 GEMMs (`k = 32`, about 91 tiles each) at about
//! 57 GFLOP/s and its two transforms 47% of its time.
//!
//! The portable form processes the tiles in chunks of whole tile rows (about [`CHUNK`] tiles, across images):
//! the input transform writes the chunk's `V[ξ][c][t]` (every ISA: multiversioned loops the
//! compiler vectorizes), the 16 GEMMs write `M[ξ][o][t]`, and the output transform writes the
//! outputs with the bias and the ReLU of [`super::forward_fused`] applied. Both buffers of a
//! chunk stay in L2. The transforms' coefficients are 0, ±1 and ±½ (exact), so the only extra
//! rounding against a direct sum is in the transformed sums; the tests bound it against a naive
//! `f64` reference.

use super::{ConvElem, Geom};
use crate::gemm;
use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
#[path = "winograd_x86.rs"]
mod x86;

#[cfg(target_arch = "x86_64")]
#[path = "winograd4_x86.rs"]
mod x86_4;

/// The element types of the transforms (`f32`; generic only for the multiversioned loops).
pub(super) trait Wf: ConvElem + std::ops::Sub<Output = Self> {}
impl Wf for f32 {}

/// Tiles per chunk (rounded to whole tile rows).
pub(super) const CHUNK: usize = 96;

/// Whether [`forward`] takes `g`: a 3×3 kernel, unit strides and dilations, one group, enough
/// channels for the GEMMs (at least 16 in and out), an output of at least 2×2.
pub(super) fn applies(g: &Geom) -> bool {
    g.k == [3, 3]
        && g.stride == [1, 1]
        && g.dil == [1, 1]
        && g.groups == 1
        && g.c >= 16
        && g.o >= 16
        && g.out[0] >= 2
        && g.out[1] >= 2
}

/// Which Winograd forms the forward convolutions may run: the environment variable
/// `MITHRIL_CONV_WINOGRAD` (read once, at the first convolution) — `off` (or `0`, `none`):
/// neither, every convolution on its direct sum (the implicit GEMM); `2x2`: F(2×2, 3×3) only
/// (about 5e-6 from the exact sum instead of F(4×4)'s 8e-5); unset or anything else: both, as
/// [`chosen`] and [`chosen4`] decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Allowed {
    /// No Winograd form.
    None,
    /// F(2×2, 3×3) only.
    F2,
    /// F(2×2, 3×3) and F(4×4, 3×3).
    F4,
}

/// [`Allowed`] from `MITHRIL_CONV_WINOGRAD`, read once.
pub(super) fn allowed() -> Allowed {
    static A: std::sync::OnceLock<Allowed> = std::sync::OnceLock::new();
    *A.get_or_init(|| parse_allowed(std::env::var("MITHRIL_CONV_WINOGRAD").ok().as_deref()))
}

/// The value of `MITHRIL_CONV_WINOGRAD` as an [`Allowed`] (case and surrounding spaces
/// ignored).
pub(super) fn parse_allowed(v: Option<&str>) -> Allowed {
    match v.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        Some("off" | "0" | "none" | "false") => Allowed::None,
        Some("2x2" | "f2x2" | "f2") => Allowed::F2,
        _ => Allowed::F4,
    }
}

/// Whether [`super::forward`] and [`super::forward_fused`] run this form instead of the
/// implicit GEMM: where it [`applies`] and the active ISA is AVX-512 (its register form,
/// measured 1.1–1.6x faster than the implicit GEMM on every geometry tried, from 16 -> 16
/// channels to 128 -> 128, 7×7 to 56×56, batch 1 to 64; BENCHMARKS.md, session 15). The
/// portable form (AVX2, scalar, aarch64) is not chosen: it measured slower than the implicit
/// GEMM in session 14.
pub(super) fn chosen(g: &Geom) -> bool {
    cfg!(target_arch = "x86_64")
        && allowed() != Allowed::None
        && !g.direct()
        && g.macs() > 0
        && applies(g)
        && crate::isa::active() >= crate::isa::Isa::Avx512
}

/// The output of a (possibly threaded) call: every part writes its own tile rows.
pub(super) struct Out<T> {
    ptr: *mut T,
    len: usize,
}

impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Out<T> {}
// SAFETY: the parts of a call write disjoint output rows.
unsafe impl<T> Sync for Out<T> {}
unsafe impl<T> Send for Out<T> {}

thread_local! {
    /// A thread's `V` and `M` buffers for one chunk.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The transformed kernel `U[ξ][o][c] = (G g Gᵀ)[ξ]` of every `w[o][c]`.
fn kernels(g: &Geom, w: &[f32], u: &mut [f32]) {
    let oc = g.o * g.c;
    for (k, gk) in w[..oc * 9].chunks_exact(9).enumerate() {
        // rows of G g (4 × 3), then each row times Gᵀ
        let mut t = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (g0, g1, g2) = (gk[j], gk[3 + j], gk[6 + j]);
            t[0][j] = g0;
            t[1][j] = 0.5 * (g0 + g1 + g2);
            t[2][j] = 0.5 * (g0 - g1 + g2);
            t[3][j] = g2;
        }
        for (i, r) in t.iter().enumerate() {
            let v = [
                r[0],
                0.5 * (r[0] + r[1] + r[2]),
                0.5 * (r[0] - r[1] + r[2]),
                r[2],
            ];
            for (j, &v) in v.iter().enumerate() {
                u[(i * 4 + j) * oc + k] = v;
            }
        }
    }
}

/// The work split over `g`'s tile rows (`th` per image, `tw` tiles each) in chunks of about
/// `chunk` tiles (whole tile rows, at least one): `(rows_all, per, chunks, threads)` — all the
/// tile rows, rows per chunk, chunks, and the threads (`threads` when forced, else the GEMM's
/// per-call count for this much work; at most one per chunk).
pub(super) fn split(
    g: &Geom,
    th: usize,
    tw: usize,
    chunk: usize,
    threads: Option<usize>,
) -> (usize, usize, usize, usize) {
    let rows_all = g.n * th;
    let per = (chunk / tw).max(1);
    let chunks = rows_all.div_ceil(per);
    let threads = threads
        .unwrap_or_else(|| gemm::num_threads_for_call().min(g.macs() / (1 << 22)))
        .clamp(1, chunks);
    (rows_all, per, chunks, threads)
}

/// The tile geometry: `(th, tw)` tile rows and columns per image.
fn tiles(g: &Geom) -> (usize, usize) {
    (g.out[0].div_ceil(2), g.out[1].div_ceil(2))
}

crate::isa::multiversion! {
    /// The input transform of tile rows `rows` (global tile-row indices `n·th + ty`) into `v`
    /// (`[16][c][tb]`, `tb` the chunk's tiles); `a` is scratch of `8·pw` (`pw = 2·tw + 2`).
    fn input_tf<T: Wf>(g: &Geom, x: &[T], rows: std::ops::Range<usize>, tb: usize, a: &mut [T], v: &mut [T]) => input_tf_impl;
}

#[inline(always)]
fn input_tf_impl<T: Wf>(
    g: &Geom,
    x: &[T],
    rows: std::ops::Range<usize>,
    tb: usize,
    a: &mut [T],
    v: &mut [T],
) {
    let (th, tw) = tiles(g);
    let pw = 2 * tw + 2;
    let (h, wd, q) = (g.inp[0], g.inp[1], g.in_plane());
    let (p0, p1) = (g.pad[0] as isize, g.pad[1] as isize);
    let z = T::default();
    let r0 = rows.start;
    for row in rows {
        let (n, ty) = (row / th, row % th);
        let l0 = (row - r0) * tw;
        for c in 0..g.c {
            let xc = &x[(n * g.c + c) * q..][..q];
            // the 4 input rows, zero-padded to `pw` columns, then their vertical combinations
            let (d, av) = a.split_at_mut(4 * pw);
            for (i, dst) in d.chunks_exact_mut(pw).enumerate() {
                let ih = (2 * ty + i) as isize - p0;
                if ih < 0 || ih >= h as isize {
                    dst.fill(z);
                    continue;
                }
                let src = &xc[ih as usize * wd..][..wd];
                for (j, e) in dst.iter_mut().enumerate() {
                    let iw = j as isize - p1;
                    *e = if iw >= 0 && iw < wd as isize {
                        src[iw as usize]
                    } else {
                        z
                    };
                }
            }
            let (d0, rest) = d.split_at(pw);
            let (d1, rest) = rest.split_at(pw);
            let (d2, d3) = rest.split_at(pw);
            let (a0, rest) = av.split_at_mut(pw);
            let (a1, rest) = rest.split_at_mut(pw);
            let (a2, a3) = rest.split_at_mut(pw);
            for j in 0..pw {
                a0[j] = d0[j] - d2[j];
                a1[j] = d1[j] + d2[j];
                a2[j] = d2[j] - d1[j];
                a3[j] = d1[j] - d3[j];
            }
            for (i, ai) in [&*a0, &*a1, &*a2, &*a3].into_iter().enumerate() {
                let base = |k: usize| ((i * 4 + k) * g.c + c) * tb + l0;
                let (b0, b1, b2, b3) = (base(0), base(1), base(2), base(3));
                for tx in 0..tw {
                    let (e0, e1, e2, e3) =
                        (ai[2 * tx], ai[2 * tx + 1], ai[2 * tx + 2], ai[2 * tx + 3]);
                    v[b0 + tx] = e0 - e2;
                    v[b1 + tx] = e1 + e2;
                    v[b2 + tx] = e2 - e1;
                    v[b3 + tx] = e1 - e3;
                }
            }
        }
    }
}

crate::isa::multiversion! {
    /// The output transform of tile rows `rows` from `m` (`[16][o][tb]`) into `y` (the whole
    /// output; only these rows' outputs are written), plus the bias, then the ReLU.
    fn output_tf<T: Wf>(g: &Geom, m: &[T], rows: std::ops::Range<usize>, tb: usize, bias: Option<&[T]>, relu: bool, y: Out<T>) => output_tf_impl;
}

#[inline(always)]
fn output_tf_impl<T: Wf>(
    g: &Geom,
    m: &[T],
    rows: std::ops::Range<usize>,
    tb: usize,
    bias: Option<&[T]>,
    relu: bool,
    y: Out<T>,
) {
    let (th, tw) = tiles(g);
    let (oh, ow, p) = (g.out[0], g.out[1], g.out_plane());
    assert!(y.len >= g.lens().2);
    let z = T::default();
    let act = |s: T| if relu && s < z { z } else { s };
    let r0 = rows.start;
    for row in rows {
        let (n, ty) = (row / th, row % th);
        let l0 = (row - r0) * tw;
        let two = 2 * ty + 1 < oh;
        for o in 0..g.o {
            let b = bias.map_or(z, |b| b[o]);
            let mo = |k: usize| &m[(k * g.o + o) * tb + l0..][..tw];
            // SAFETY: `y` holds the whole output (asserted), and no other part of a threaded
            // call writes rows `2·ty`, `2·ty + 1` of any channel of image `n`.
            let rows_out = unsafe {
                std::slice::from_raw_parts_mut(
                    y.ptr.add((n * g.o + o) * p + 2 * ty * ow),
                    ow * if two { 2 } else { 1 },
                )
            };
            let (top, bot) = rows_out.split_at_mut(ow);
            let (m00, m01, m02, m03) = (mo(0), mo(1), mo(2), mo(3));
            let (m10, m11, m12, m13) = (mo(4), mo(5), mo(6), mo(7));
            let (m20, m21, m22, m23) = (mo(8), mo(9), mo(10), mo(11));
            let (m30, m31, m32, m33) = (mo(12), mo(13), mo(14), mo(15));
            for tx in 0..tw {
                // Aᵀ · m: two rows; then · A: two columns each
                let s00 = m00[tx] + m10[tx] + m20[tx];
                let s01 = m01[tx] + m11[tx] + m21[tx];
                let s02 = m02[tx] + m12[tx] + m22[tx];
                let s03 = m03[tx] + m13[tx] + m23[tx];
                let s10 = m10[tx] - m20[tx] - m30[tx];
                let s11 = m11[tx] - m21[tx] - m31[tx];
                let s12 = m12[tx] - m22[tx] - m32[tx];
                let s13 = m13[tx] - m23[tx] - m33[tx];
                let j = 2 * tx;
                top[j] = act(s00 + s01 + s02 + b);
                if j + 1 < ow {
                    top[j + 1] = act(s01 - s02 - s03 + b);
                }
                if two {
                    bot[j] = act(s10 + s11 + s12 + b);
                    if j + 1 < ow {
                        bot[j + 1] = act(s11 - s12 - s13 + b);
                    }
                }
            }
        }
    }
}

/// `y = act(conv(x, w) + bias)` by F(2×2, 3×3); `g` satisfies [`applies`], the slices are
/// checked by the caller. `threads`: forced thread count (tests), else the GEMM's per-call one.
pub(super) fn forward(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
    threads: Option<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::active() >= crate::isa::Isa::Avx512 {
        return x86::forward(g, x, w, y, bias, relu, threads);
    }
    let (th, tw) = tiles(g);
    let oc = g.o * g.c;
    let mut u = vec![0.0f32; 16 * oc];
    kernels(g, w, &mut u);
    let (rows_all, per, chunks, threads) = split(g, th, tw, CHUNK, threads);
    let yp = Out {
        ptr: y.as_mut_ptr(),
        len: y.len(),
    };
    let u = &u[..];
    let job = move |t: usize, parts: usize| {
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let tbmax = per * tw;
            let need = 16 * g.c * tbmax + 16 * g.o * tbmax + 8 * (2 * tw + 2);
            if s.len() < need {
                s.resize(need, 0.0);
            }
            let (v, rest) = s.split_at_mut(16 * g.c * tbmax);
            let (m, a) = rest.split_at_mut(16 * g.o * tbmax);
            for ch in chunks * t / parts..chunks * (t + 1) / parts {
                let rows = ch * per..((ch + 1) * per).min(rows_all);
                let tb = rows.len() * tw;
                input_tf(g, x, rows.clone(), tb, a, v);
                let _one = gemm::limit_call_threads(1);
                for k in 0..16 {
                    gemm::gemm_plain(
                        g.o,
                        tb,
                        g.c,
                        1.0,
                        &u[k * oc..][..oc],
                        g.c,
                        1,
                        &v[k * g.c * tb..][..g.c * tb],
                        tb,
                        1,
                        false,
                        &mut m[k * g.o * tb..][..g.o * tb],
                        tb,
                    );
                }
                output_tf(g, m, rows, tb, bias, relu, yp);
            }
        })
    };
    if threads <= 1 {
        job(0, 1);
    } else {
        gemm::parallel(threads, &|t| job(t, threads));
    }
}

/// Whether [`forward_chosen`] runs F(4×4, 3×3) (`winograd4_x86.rs`) rather than F(2×2, 3×3):
/// where F(2×2) is [`chosen`] and F(4×4)'s GEMMs take fewer vector multiply-adds (see
/// [`prefer4`]).
pub(super) fn chosen4(g: &Geom) -> bool {
    chosen(g) && allowed() == Allowed::F4 && prefer4(g)
}

/// Whether F(4×4)'s 36 GEMMs run on fewer vectors of 16 tiles than F(2×2)'s 16 (each form
/// pads its chunks of tile rows to whole vectors): F(4×4) needs 1.78x fewer multiply-adds
/// per output, but its tiles are 4x larger, so on small outputs its vectors are emptier
/// (7×7 at batch 1: 4 tiles of 4×4 in one vector, 36 GEMM rows, against 16 tiles of 2×2 in
/// one vector, 16 rows: F(2×2) measured 1.7x faster there; F(4×4) measured 1.2–1.6x faster
/// on every shape where this holds, BENCHMARKS.md task cnn16a).
fn prefer4(g: &Geom) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let vectors = |th: usize, tw: usize, chunk: usize| {
            let (rows_all, per) = (g.n * th, (chunk / tw).max(1));
            let (full, rest) = (rows_all / per, rows_all % per);
            full * (per * tw).div_ceil(16) + (rest * tw).div_ceil(16)
        };
        let (th2, tw2) = tiles(g);
        let (th4, tw4) = x86_4::tiles(g);
        36 * vectors(th4, tw4, x86_4::CHUNK) < 16 * vectors(th2, tw2, x86::CHUNK)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = g;
        false
    }
}

/// [`forward`] with the algorithm [`chosen4`] picks (for [`super::forward`] and
/// [`super::forward_fused`], where [`chosen`] holds).
pub(super) fn forward_chosen(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
    threads: Option<usize>,
) {
    if !(chosen4(g) && forward4(g, x, w, y, bias, relu, false, threads)) {
        forward(g, x, w, y, bias, relu, threads)
    }
}

/// `y = act(conv(x, w) + bias)` by F(4×4, 3×3) on AVX-512, or with `pool` its 2×2 max pool
/// (`y` then [`Geom::pooled_len`] long; the epilogue on the maxima, as
/// [`super::forward_fused_pool`]); `g` satisfies [`applies`], the slices are checked by the
/// caller. Returns `false` (and leaves `y`) without AVX-512.
#[allow(clippy::too_many_arguments)]
pub(super) fn forward4(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    bias: Option<&[f32]>,
    relu: bool,
    pool: bool,
    threads: Option<usize>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::isa::active() >= crate::isa::Isa::Avx512 {
        x86_4::forward(g, x, w, y, bias, relu, pool, threads);
        return true;
    }
    let _ = (g, x, w, y, bias, relu, pool, threads);
    false
}
