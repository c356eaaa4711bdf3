//! The `f32` implicit GEMM with no patch matrix at all, for stride-1 convolutions on x86-64
//! (AVX-512 and AVX2 register tiles; the other ISAs and `f64` keep the panel path of
//! [`super::forward_algo`]).
//!
//! Per image and group, the group's input channels are copied once into a zero-padded plane
//! (`ph × pw` per channel, as [`super::Blocked`]). The output is computed on the *padded-width
//! grid*: column `t = oh·pw + ow` for `ow` in `0..pw`. On that grid every row of the patch
//! matrix is a contiguous run of the padded plane: `B(r, t) = xp[offs[r] + t]` with `offs[r]`
//! the offset of tap `r = (c·kh + ti)·kw + tj`. So the register tile reads its B vectors
//! straight from the padded image (no im2col buffer, no B packing); the columns with
//! `ow >= OW` (the `pw - OW` extra per row) are computed and dropped. The weights are packed
//! once per call into blocks of `MR` output channels (`[block][tap][MR]`, zero rows past the
//! group's channels), so 64 output channels are 8 full 8-row AVX-512 tiles.
//!
//! The tile's results are written to the output with an optional bias and ReLU applied on the
//! way (the epilogue of [`forward_fused`](super::forward_fused)).

#![allow(clippy::needless_range_loop)]
// (the driver is x86-64 only: `applies` is false elsewhere)
#![cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]

use super::{Blocked, ConvElem, Geom};

/// The fused epilogue: `y = act(conv + bias[o])`.
#[derive(Clone, Copy)]
pub(super) struct Epi<'a> {
    pub(super) bias: Option<&'a [f32]>,
    pub(super) relu: bool,
}

/// A register tile: `MR` output channels × `NR` padded-grid columns.
trait Tile {
    const MR: usize;
    const NR: usize;
    /// `out[r·NR + j] = Σ_q a[q·MR + r] · xp[offs[q] + j]` for `q` in `0..red`.
    ///
    /// # Safety
    /// `a` holds `red·MR` values, `offs` `red` offsets, and `xp + offs[q]` is readable for `NR`
    /// values for every `q`; the CPU has the tile's target features.
    unsafe fn run(red: usize, a: *const f32, xp: *const f32, offs: *const usize, out: *mut f32);

    /// Writes rows `0..mr` of the finished tile `out` to the output: row `r`'s values
    /// `out[r·NR + s .. + len]` for each segment `(s, d, len)` of `segs` to `y[r·plane + d ..]`,
    /// plus `bias[r]` (when given), then the ReLU (when `relu`).
    ///
    /// # Safety
    /// Every segment's source is inside a row of the tile and its destination inside `y`'s
    /// rows; `bias` (when not null) holds `mr` values; the CPU has the tile's features.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn store(
        out: *const f32,
        mr: usize,
        segs: &[(usize, usize, usize)],
        y: *mut f32,
        plane: usize,
        bias: *const f32,
        relu: bool,
    ) {
        for r in 0..mr {
            let b = if bias.is_null() { 0.0 } else { *bias.add(r) };
            for &(s, d, len) in segs {
                let src = std::slice::from_raw_parts(out.add(r * Self::NR + s), len);
                let dst = std::slice::from_raw_parts_mut(y.add(r * plane + d), len);
                for (d, &s) in dst.iter_mut().zip(src) {
                    let v = s + b;
                    // (not `max`: a NaN stays NaN, as an unfused ReLU)
                    *d = if relu && v < 0.0 { 0.0 } else { v };
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::Tile;
    use std::arch::x86_64::*;

    /// AVX-512: 8 rows × `16·V` columns (`V` = 2 or 3: 16 or 24 accumulators).
    pub(super) struct Z<const V: usize>;

    impl<const V: usize> Tile for Z<V> {
        const MR: usize = 8;
        const NR: usize = 16 * V;
        #[inline]
        unsafe fn run(
            red: usize,
            a: *const f32,
            xp: *const f32,
            offs: *const usize,
            out: *mut f32,
        ) {
            tile_z::<V>(red, a, xp, offs, out)
        }
        #[inline]
        unsafe fn store(
            out: *const f32,
            mr: usize,
            segs: &[(usize, usize, usize)],
            y: *mut f32,
            plane: usize,
            bias: *const f32,
            relu: bool,
        ) {
            store_z::<V>(out, mr, segs, y, plane, bias, relu)
        }
    }

    /// [`Tile::store`] with masked AVX-512 loads and stores, 16 lanes at a time.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    unsafe fn store_z<const V: usize>(
        out: *const f32,
        mr: usize,
        segs: &[(usize, usize, usize)],
        y: *mut f32,
        plane: usize,
        bias: *const f32,
        relu: bool,
    ) {
        let zero = _mm512_setzero_ps();
        for r in 0..mr {
            let b = _mm512_set1_ps(if bias.is_null() { 0.0 } else { *bias.add(r) });
            for &(s, d, len) in segs {
                let (src, dst) = (out.add(r * 16 * V + s), y.add(r * plane + d));
                let mut k = 0;
                while k < len {
                    let m: __mmask16 = if len - k >= 16 {
                        0xffff
                    } else {
                        (1u16 << (len - k)) - 1
                    };
                    let mut v = _mm512_add_ps(_mm512_maskz_loadu_ps(m, src.add(k)), b);
                    if relu {
                        // lanes below zero to zero (a NaN compares false and stays)
                        let neg = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(v, zero);
                        v = _mm512_mask_mov_ps(v, neg, zero);
                    }
                    _mm512_mask_storeu_ps(dst.add(k), m, v);
                    k += 16;
                }
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    unsafe fn tile_z<const V: usize>(
        red: usize,
        a: *const f32,
        xp: *const f32,
        offs: *const usize,
        out: *mut f32,
    ) {
        let mut c = [[_mm512_setzero_ps(); V]; 8];
        for q in 0..red {
            let b = xp.add(*offs.add(q));
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, x) in bv.iter_mut().enumerate() {
                *x = _mm512_loadu_ps(b.add(16 * v));
            }
            let aq = a.add(q * 8);
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*aq.add(r));
                for v in 0..V {
                    cr[v] = _mm512_fmadd_ps(av, bv[v], cr[v]);
                }
            }
        }
        for (r, cr) in c.iter().enumerate() {
            for (v, x) in cr.iter().enumerate() {
                _mm512_storeu_ps(out.add(r * 16 * V + 16 * v), *x);
            }
        }
    }

    /// AVX2: 6 rows × 16 columns (12 accumulators).
    pub(super) struct Y;

    impl Tile for Y {
        const MR: usize = 6;
        const NR: usize = 16;
        #[inline]
        unsafe fn run(
            red: usize,
            a: *const f32,
            xp: *const f32,
            offs: *const usize,
            out: *mut f32,
        ) {
            tile_y(red, a, xp, offs, out)
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tile_y(red: usize, a: *const f32, xp: *const f32, offs: *const usize, out: *mut f32) {
        let mut c = [[_mm256_setzero_ps(); 2]; 6];
        for q in 0..red {
            let b = xp.add(*offs.add(q));
            let bv = [_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))];
            let aq = a.add(q * 6);
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*aq.add(r));
                cr[0] = _mm256_fmadd_ps(av, bv[0], cr[0]);
                cr[1] = _mm256_fmadd_ps(av, bv[1], cr[1]);
            }
        }
        for (r, cr) in c.iter().enumerate() {
            _mm256_storeu_ps(out.add(r * 16), cr[0]);
            _mm256_storeu_ps(out.add(r * 16 + 8), cr[1]);
        }
    }
}

/// Whether [`forward`] takes `g` (on the current ISA): `f32` on x86-64 with AVX2 or
/// AVX-512, unit strides, not a plain 1×1 product (which multiplies the image in place).
pub(super) fn applies(g: &Geom) -> bool {
    cfg!(target_arch = "x86_64")
        && g.stride == [1, 1]
        && !g.pointwise()
        && crate::isa::active() >= crate::isa::Isa::Avx2
}

/// The padded-grid columns of one image (`(OH - 1)·pw + OW`).
fn grid_cols(g: &Geom, pw: usize) -> usize {
    (g.out[0] - 1) * pw + g.out[1]
}

/// `y = act(conv(x, w) + bias)` (see the module docs). `g` satisfies [`applies`] and the
/// slices are checked by the caller.
pub(super) fn forward(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32], epi: Epi) {
    forward_with(g, x, w, y, epi, None, None)
}

/// [`forward`] with the tile width (`nr`: 32 or 48 for the AVX-512 tiles, 16 for the AVX2 one)
/// and the thread count forced, for tests and benchmarks.
pub(super) fn forward_with(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    epi: Epi,
    nr: Option<usize>,
    threads: Option<usize>,
) {
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = crate::isa::active() >= crate::isa::Isa::Avx512;
        let nr = nr.unwrap_or_else(|| {
            if !avx512 {
                return 16;
            }
            // 32 or 48 columns per tile: the one that computes fewer dropped grid columns
            let t = grid_cols(g, Blocked::new_grid(g).pw);
            if t.div_ceil(48) * 48 <= t.div_ceil(32) * 32 {
                48
            } else {
                32
            }
        });
        match nr {
            48 if avx512 => run::<x86::Z<3>>(g, x, w, y, epi, threads),
            32 if avx512 => run::<x86::Z<2>>(g, x, w, y, epi, threads),
            _ => run::<x86::Y>(g, x, w, y, epi, threads),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, x, w, y, epi, nr, threads);
        unreachable!("conv::igemm runs on x86-64 only")
    }
}

/// A pointer shared by the parts of a threaded call, each writing its own output region.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: the parts write disjoint regions of the output.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

impl Shared {
    /// The pointer (a method, so closures capture the whole `Sync` wrapper).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Multiply-adds per thread below which a call stays on the calling thread.
const MACS_PER_THREAD: usize = 1 << 22;

fn run<K: Tile>(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32], epi: Epi, threads: Option<usize>) {
    let (og, red) = (g.og(), g.cg() * g.taps());
    let bl = Blocked::new_grid(g);
    let nob = og.div_ceil(K::MR);
    // the weights, packed once: [group][block][tap][MR] (in the thread's panel buffer)
    f32::with_buf(g.groups * nob * red * K::MR, |wp| {
        run_packed::<K>(g, x, w, y, epi, threads, &bl, wp)
    })
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn run_packed<K: Tile>(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    epi: Epi,
    threads: Option<usize>,
    bl: &Blocked,
    wp: &mut [f32],
) {
    let (og, red) = (g.og(), g.cg() * g.taps());
    let nob = og.div_ceil(K::MR);
    wp.fill(0.0);
    for gr in 0..g.groups {
        for ob in 0..nob {
            let dst = &mut wp[(gr * nob + ob) * red * K::MR..][..red * K::MR];
            for j in 0..K::MR.min(og - ob * K::MR) {
                let src = &w[(gr * og + ob * K::MR + j) * red..][..red];
                for (r, &v) in src.iter().enumerate() {
                    dst[r * K::MR + j] = v;
                }
            }
        }
    }
    let tcols = grid_cols(g, bl.pw);
    let tiles = tcols.div_ceil(K::NR);
    let items = g.n * g.groups;
    let threads = threads
        .unwrap_or_else(|| crate::gemm::num_threads_for_call().min(g.macs() / MACS_PER_THREAD))
        .max(1);
    let yp = Shared(y.as_mut_ptr());
    let wp = &wp[..];
    // part `t` of `parts`: whole images when there are enough, else column ranges of each
    let job = move |t: usize, parts: usize| {
        let mut xp = f32::take_scratch();
        let (i0, i1, c0, c1) = if items >= parts {
            (items * t / parts, items * (t + 1) / parts, 0, tiles)
        } else {
            (0, items, tiles * t / parts, tiles * (t + 1) / parts)
        };
        // the padded plane and `NR` zeros after it (the last tile's dropped columns)
        xp.clear();
        xp.resize(bl.plane_len(g) + K::NR, 0.0);
        for item in i0..i1 {
            let (n, gr) = (item / g.groups, item % g.groups);
            bl.pad(g, x, n, gr, &mut xp[..bl.plane_len(g)]);
            let wg = &wp[gr * nob * red * K::MR..][..nob * red * K::MR];
            // SAFETY: this part writes only image `n`'s group `gr` channels.
            let yg = unsafe {
                std::slice::from_raw_parts_mut(
                    yp.get().add((n * g.o + gr * og) * g.out_plane()),
                    og * g.out_plane(),
                )
            };
            image::<K>(g, bl, &xp, wg, c0..c1, gr * og, yg, epi);
        }
        f32::put_scratch(xp);
    };
    if threads <= 1 {
        job(0, 1);
    } else {
        crate::gemm::parallel(threads, &|t| job(t, threads));
    }
}

/// One image group: tiles `cols` (of `NR` grid columns each) × every block of `MR` output
/// channels; `o0` is the group's first output channel (for the bias), `yg` its output.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn image<K: Tile>(
    g: &Geom,
    bl: &Blocked,
    xp: &[f32],
    wg: &[f32],
    cols: std::ops::Range<usize>,
    o0: usize,
    yg: &mut [f32],
    epi: Epi,
) {
    let (og, red) = (g.og(), g.cg() * g.taps());
    let (ohn, own, pw) = (g.out[0], g.out[1], bl.pw);
    let tcols = grid_cols(g, pw);
    let mut out = [0.0f32; 8 * 48];
    debug_assert!(K::MR * K::NR <= out.len());
    // (a tile's runs are at least one column each)
    let mut segs = [(0usize, 0usize, 0usize); 48];
    for tile in cols {
        let t0 = tile * K::NR;
        let t1 = tcols.min(t0 + K::NR);
        // the tile's columns as runs of one output row: (tile column, output offset, length)
        let mut nseg = 0;
        let mut t = t0;
        while t < t1 {
            let (oh, ow) = (t / pw, t % pw);
            if ow >= own {
                t += pw - ow;
                continue;
            }
            let len = (own - ow).min(t1 - t);
            segs[nseg] = (t - t0, oh * own + ow, len);
            nseg += 1;
            t += len;
        }
        for ob in 0..og.div_ceil(K::MR) {
            // SAFETY: `wg` holds every block's `red·MR` weights; `xp` holds the padded plane
            // plus `NR` zeros, and the largest offset plus the largest grid column is inside
            // the plane; `applies` checked the ISA.
            unsafe {
                K::run(
                    red,
                    wg.as_ptr().add(ob * red * K::MR),
                    xp.as_ptr().add(t0),
                    bl.offs.as_ptr(),
                    out.as_mut_ptr(),
                )
            };
            let o = ob * K::MR;
            // SAFETY: the segments stay inside the tile's columns and the output rows of
            // channels `o..o + mr`; the bias holds the group's channels.
            unsafe {
                K::store(
                    out.as_ptr(),
                    K::MR.min(og - o),
                    &segs[..nseg],
                    yg.as_mut_ptr().add(o * ohn * own),
                    ohn * own,
                    epi.bias.map_or(std::ptr::null(), |b| b[o0 + o..].as_ptr()),
                    epi.relu,
                )
            };
        }
    }
}
