//! A forward convolution with its epilogue and a 2×2 / stride-2 max pool in one pass
//! ([`super::forward_fused_pool`]): `maxpool2x2(relu(conv(x, w) + bias))`, floor mode (an odd
//! last row or column of the convolution's output is dropped, as PyTorch's `ceil_mode=False`).
//!
//! Pooling commutes with the epilogue: a per-channel bias add and the ReLU are monotonic and
//! rounding is monotonic, so `max(a, c) + b` is bit for bit `max(a + b, c + b)` and the ReLU of
//! the maximum is the maximum of the ReLUs. The kernels pool the raw sums and apply the
//! epilogue to a quarter of the values.
//!
//! - [`via_scratch`] ([`super::forward_fused_pool`]): [`super::forward`] for a few images at
//!   a time into a scratch buffer (so it stays in L2), then the pool with the epilogue from
//!   there.
//! - [`direct_pool`] ([`super::forward_pool_direct`]; chosen for `f32` on AVX-512, see
//!   [`direct_chosen`]): for the small
//!   reductions [`super::forward`] runs directly, stride 1, per image and group the input
//!   channels are copied once into a zero-padded plane split into its even and odd columns, so
//!   that the even and the odd output columns of a tap are both contiguous loads. A register
//!   block is [`POB`] output channels × the four members of [`DL`] pooling windows (two output
//!   rows, even and odd columns): per tap, four vector loads and [`POB`] broadcasts feed `4 ·
//!   POB` multiply-adds in the tap order of the unpooled kernels (fused where the unpooled path
//!   is the register-blocked kernel, a multiply and an add where it is the simple one: the sums
//!   are bit for bit the unpooled path's), then the four accumulators are pooled and a quarter
//!   of the output is stored. As generic Rust, rustc compiles that block to scalar code with
//!   the accumulators on the stack (measured several times slower than `via_scratch` on the
//!   anchor CNN's first layer); for `f32` on AVX-512 the whole image loop after the split
//!   plane is written in intrinsics (`x86::image_512`: the same sums in the same order, the
//!   pool, the epilogue and masked stores in registers).

use super::{forward, ConvElem, Geom, DBLOCK_MAX_RED, DL};
use crate::isa::{multiversion, Isa};
use std::any::{Any, TypeId};
use std::cell::RefCell;

/// Output channels per register block of the pooled direct kernel.
const POB: usize = 4;
/// Convolution-output elements per scratch chunk of [`via_scratch`] (256 KiB of `f32`, or one
/// image; 4 KiB in the tests, so that they cross chunks).
const CHUNK: usize = if cfg!(test) { 1 << 10 } else { 1 << 16 };

impl Geom {
    /// The pooled output dims `[out[0] / 2, out[1] / 2]`.
    pub fn pooled(&self) -> [usize; 2] {
        [self.out[0] / 2, self.out[1] / 2]
    }
    /// Elements of the pooled output (`n · o · pooled dims`).
    pub fn pooled_len(&self) -> usize {
        let [a, b] = self.pooled();
        self.n * self.o * a * b
    }
    /// Whether [`super::forward_pool_direct`] applies.
    pub(super) fn pooled_direct(&self) -> bool {
        self.direct()
            && self.stride == [1, 1]
            && self.cg() * self.taps() <= DBLOCK_MAX_RED
            && self.out[0] >= 2
            && self.out[1] >= 2
    }
}

/// PyTorch's max-pool rule (as `crate::pool`): a larger value or a NaN replaces the running
/// maximum.
#[inline(always)]
fn pick<T: ConvElem>(o: T, v: T) -> T {
    #[allow(clippy::eq_op)]
    let nan = v != v;
    if v > o || nan {
        v
    } else {
        o
    }
}

/// The epilogue of one pooled value: `m + b` (with a bias), then the ReLU as
/// `super::apply_epilogue`'s (a NaN stays NaN).
#[inline(always)]
fn epi<T: ConvElem>(m: T, has_bias: bool, b: T, relu: bool) -> T {
    let s = if has_bias { m + b } else { m };
    if relu && s < T::default() {
        T::default()
    } else {
        s
    }
}

/// Whether [`super::forward_fused_pool`] runs the pooled direct kernel: where it applies, with
/// the register-blocked unpooled kernel's sums (its bitwise twin), for `f32` on AVX-512 (its
/// image loop in intrinsics, `x86::image_512`; elsewhere the generic block compiles to
/// scalar code and the scratch path is faster).
pub(super) fn direct_chosen<T: ConvElem>(g: &Geom) -> bool {
    cfg!(target_arch = "x86_64")
        && TypeId::of::<T>() == TypeId::of::<f32>()
        && crate::isa::active() >= Isa::Avx512
        && g.pooled_direct()
        && g.blocked_direct()
        && g.macs() > 0
}

multiversion! {
    pub(super) fn direct_pool<T: ConvElem>(g: &Geom, x: &[T], w: &[T], bias: Option<&[T]>, relu: bool, y: &mut [T]) => direct_pool_impl;
}

multiversion! {
    fn pool_planes<T: ConvElem>(g: &Geom, src: &[T], bias: Option<&[T]>, relu: bool, dst: &mut [T]) => pool_planes_impl;
}

#[inline(always)]
fn direct_pool_impl<T: ConvElem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    // FMA where the copy was compiled with it and the unpooled path is the blocked kernel
    // (which sums with FMA); the separate multiply and add of the unpooled simple direct
    // kernel otherwise: the sums are bit for bit the unpooled path's either way
    if crate::isa::active() == Isa::Scalar || !g.blocked_direct() {
        direct_pool_run::<T, false>(g, x, w, bias, relu, y)
    } else {
        direct_pool_run::<T, true>(g, x, w, bias, relu, y)
    }
}

#[inline(always)]
fn direct_pool_run<T: ConvElem, const FMA: bool>(
    g: &Geom,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    let (og, cg, red) = (g.og(), g.cg(), g.cg() * g.taps());
    let [ph2, pw2] = g.pooled();
    let (kh, kw, dh, dw) = (g.k[0], g.k[1], g.dil[0], g.dil[1]);
    // the split plane: per channel an even-column half and an odd-column half, each `rows ×
    // hw`; padded column `pc` is at `(pc % 2)·half + pc / 2`
    let span = pw2.max(DL);
    let hw = span + ((kw - 1) * dw).div_ceil(2) + 1;
    let rows = 2 * ph2 + (kh - 1) * dh;
    let half = rows * hw;
    let cplane = 2 * half;
    // tap r = (c·kh + ti)·kw + tj reads, for output row parity f and column parity e, at
    // `base + offs[r][2f + e]`
    // (on the stack: `pooled_direct` bounds the reduction by DBLOCK_MAX_RED; no allocation per
    // call)
    let mut offs_all = [[0usize; 4]; DBLOCK_MAX_RED];
    let offs = &mut offs_all[..red];
    let mut r = 0;
    for c in 0..cg {
        for ti in 0..kh {
            for tj in 0..kw {
                for (k, o) in offs[r].iter_mut().enumerate() {
                    let (f, e) = (k / 2, k % 2);
                    let q = e + tj * dw;
                    *o = c * cplane + (q % 2) * half + (f + ti * dh) * hw + q / 2;
                }
                r += 1;
            }
        }
    }
    let offs = &*offs;
    // chunks of DL pooled columns: (first column, columns stored); a last partial chunk
    // overlaps the one before it (the same values written twice), or is stored in part when
    // the row is narrower than DL
    let full = pw2 / DL;
    let chunk = |i: usize| {
        if i < full {
            (i * DL, DL)
        } else if pw2 >= DL {
            (pw2 - DL, DL)
        } else {
            (0, pw2)
        }
    };
    let n_chunks = pw2.div_ceil(DL);
    let nob = og.div_ceil(POB);
    let plane = cg * cplane;
    let q = g.in_plane();
    let pout = ph2 * pw2;
    let has_bias = bias.is_some();
    // the f32 register block in AVX-512 intrinsics (the generic one compiles to scalar code)
    let avx512 = cfg!(target_arch = "x86_64")
        && DL == 16
        && TypeId::of::<T>() == TypeId::of::<f32>()
        && crate::isa::active() >= Isa::Avx512;
    // (read only on x86-64)
    let _ = avx512;
    // (a scratch vector, not `with_buf`: the loops must not sit in a closure; not zeroed per
    // call: the split plane is zeroed per image, the weight blocks written in full)
    let mut buf = T::take_scratch();
    let need = plane + nob * red * POB;
    if buf.len() < need {
        buf.resize(need, T::default());
    }
    {
        let (xs, wp) = buf[..need].split_at_mut(plane);
        for gr in 0..g.groups {
            super::pack_oblocks::<T, POB>(g, gr, w, wp);
            for n in 0..g.n {
                // the split, zero-padded input of this image group: padded column `pc = iw +
                // pad` goes to half `pc % 2` at `pc / 2` (columns past the split's width are
                // not read by any window and are dropped, as rows past `rows`)
                xs.fill(T::default());
                for c in 0..cg {
                    let xc = &x[(n * g.c + gr * cg + c) * q..][..q];
                    let (ev, od) = xs[c * cplane..][..cplane].split_at_mut(half);
                    for ih in 0..g.inp[0] {
                        let row = &xc[ih * g.inp[1]..][..g.inp[1]];
                        let pr = ih + g.pad[0];
                        if pr >= rows {
                            break;
                        }
                        for (e, dh) in [(0, &mut *ev), (1, &mut *od)] {
                            // the first input column landing in half `e`, and its place
                            let iw0 = (e + 2 - g.pad[1] % 2) % 2;
                            let m0 = (iw0 + g.pad[1]) / 2;
                            if m0 >= hw {
                                continue;
                            }
                            let d = &mut dh[pr * hw..][m0..hw];
                            let src = row.get(iw0..).unwrap_or_default();
                            #[cfg(target_arch = "x86_64")]
                            if avx512 {
                                // SAFETY: T is f32 (`avx512` checks it), AVX-512 is active.
                                unsafe {
                                    x86::deinterleave_512(
                                        std::slice::from_raw_parts_mut(
                                            d.as_mut_ptr() as *mut f32,
                                            d.len(),
                                        ),
                                        std::slice::from_raw_parts(
                                            src.as_ptr() as *const f32,
                                            src.len(),
                                        ),
                                    );
                                }
                                continue;
                            }
                            for (d, &v) in d.iter_mut().zip(src.iter().step_by(2)) {
                                *d = v;
                            }
                        }
                    }
                }
                let xs = &*xs;
                #[cfg(target_arch = "x86_64")]
                if FMA && avx512 {
                    let bias = bias.map(|b| &b[gr * og..][..og]);
                    let yi = &mut y[(n * g.o + gr * og) * pout..][..og * pout];
                    // SAFETY: T is f32 (`avx512` checks it) and AVX-512 is active; `xs`, `wp`,
                    // `bias` and `yi` are reinterpreted as the `f32` slices they are.
                    unsafe {
                        let f =
                            |s: &[T]| std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len());
                        x86::image_512(
                            &x86::Img {
                                red,
                                og,
                                ph2,
                                pw2,
                                hw,
                                offs,
                                wp: f(&*wp),
                                bias: bias.map(f),
                                relu,
                            },
                            f(xs),
                            std::slice::from_raw_parts_mut(yi.as_mut_ptr() as *mut f32, yi.len()),
                        );
                    }
                    continue;
                }
                for ob in 0..nob {
                    let wb = &wp[ob * red * POB..][..red * POB];
                    let ol = POB.min(og - ob * POB);
                    // the block's biases (0 past the last channel: those are not stored)
                    let mut bv = [T::default(); POB];
                    if let Some(b) = bias {
                        for (j, v) in bv.iter_mut().enumerate().take(ol) {
                            *v = b[gr * og + ob * POB + j];
                        }
                    }
                    for pr in 0..ph2 {
                        for ci in 0..n_chunks {
                            let (i0, len) = chunk(ci);
                            let base = 2 * pr * hw + i0;
                            let mut out = [[T::default(); DL]; POB];
                            let mut acc = [[T::default(); DL]; POB * 4];
                            for r in 0..red {
                                let wv: &[T; POB] = wb[r * POB..][..POB].try_into().unwrap();
                                let o4 = offs[r];
                                for k in 0..4 {
                                    let xv: &[T; DL] = xs[base + o4[k]..][..DL].try_into().unwrap();
                                    for j in 0..POB {
                                        let a = &mut acc[j * 4 + k];
                                        for l in 0..DL {
                                            a[l] = if FMA {
                                                wv[j].madd(xv[l], a[l])
                                            } else {
                                                a[l] + wv[j] * xv[l]
                                            };
                                        }
                                    }
                                }
                            }
                            // pool every channel of the block (constant bounds, meant to
                            // keep the accumulators in registers: rustc still spills them,
                            // see the module doc), then store the real ones
                            for j in 0..POB {
                                for l in 0..DL {
                                    let m = pick(
                                        pick(
                                            pick(acc[j * 4][l], acc[j * 4 + 1][l]),
                                            acc[j * 4 + 2][l],
                                        ),
                                        acc[j * 4 + 3][l],
                                    );
                                    out[j][l] = epi(m, has_bias, bv[j], relu);
                                }
                            }
                            for (j, v) in out.iter().enumerate().take(ol) {
                                let o = gr * og + ob * POB + j;
                                let yo = (n * g.o + o) * pout + pr * pw2 + i0;
                                y[yo..yo + len].copy_from_slice(&v[..len]);
                            }
                        }
                    }
                }
            }
        }
    }
    T::put_scratch(buf);
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use super::POB;
    use std::arch::x86_64::*;

    /// One image group's operands of [`image_512`].
    pub(super) struct Img<'a> {
        /// The reduction (input channels × taps).
        pub red: usize,
        /// Output channels of the group.
        pub og: usize,
        /// The pooled output rows and columns.
        pub ph2: usize,
        pub pw2: usize,
        /// The split plane's row length (per half).
        pub hw: usize,
        /// Per tap, the split-plane offsets of the four members (see `direct_pool_run`).
        pub offs: &'a [[usize; 4]],
        /// The packed weights: per block of `POB` channels, `red · POB` values.
        pub wp: &'a [f32],
        /// The group's `og` biases.
        pub bias: Option<&'a [f32]>,
        pub relu: bool,
    }

    /// The pooled direct kernel's `f32` AVX-512 path for one image group: for every block of
    /// `POB` output channels, pooled row and chunk of 16 pooling windows, `POB` channels × the
    /// four members of the windows in 16 accumulators (per tap four loads, `POB` broadcasts and
    /// 16 fused multiply-adds in the generic block's order, so the sums are bit for bit its
    /// and the unpooled kernel's), each window's maximum with `pick`'s rule (a larger value or
    /// a NaN replaces the running maximum), the epilogue (`+ bias`, then `max(0, ·)`, which is
    /// `epi`'s ReLU bit for bit, NaN and −0 included) and a (masked) store, all in registers.
    /// `y` is the group's `og` pooled planes.
    ///
    /// # Safety
    /// AVX-512 available; `p.wp` holds `og.div_ceil(POB) · red · POB` weights, `p.offs` `red`
    /// taps, `p.bias` `og` values; for every pooled row `pr`, chunk start `i0` and tap `r`,
    /// `xs[2·pr·hw + i0 + offs[r][k]..][..16]` is inside `xs` (as the generic block's reads);
    /// `y` holds `og · ph2 · pw2` values.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub(super) unsafe fn image_512(p: &Img, xs: &[f32], y: &mut [f32]) {
        let (red, og, ph2, pw2, hw) = (p.red, p.og, p.ph2, p.pw2, p.hw);
        debug_assert!(p.offs.len() >= red && y.len() >= og * ph2 * pw2);
        let pout = ph2 * pw2;
        let full = pw2 / 16;
        let n_chunks = pw2.div_ceil(16);
        let zero = _mm512_setzero_ps();
        let (xp, yp, offs) = (xs.as_ptr(), y.as_mut_ptr(), p.offs.as_ptr());
        for ob in 0..og.div_ceil(POB) {
            let wb = p.wp.as_ptr().add(ob * red * POB);
            let ol = POB.min(og - ob * POB);
            let mut bv = [zero; POB];
            if let Some(b) = p.bias {
                for (j, v) in bv.iter_mut().enumerate().take(ol) {
                    *v = _mm512_set1_ps(b[ob * POB + j]);
                }
            }
            for pr in 0..ph2 {
                for ci in 0..n_chunks {
                    // the chunk's first window and the lanes stored: a last partial chunk
                    // overlaps the one before it (the same values stored twice), or is stored
                    // in part when the row is narrower than 16
                    let (i0, mask) = if ci < full {
                        (ci * 16, 0xffff)
                    } else if pw2 >= 16 {
                        (pw2 - 16, 0xffff)
                    } else {
                        (0, ((1u32 << pw2) - 1) as __mmask16)
                    };
                    let base = xp.add(2 * pr * hw + i0);
                    let mut acc = [zero; POB * 4];
                    for r in 0..red {
                        let o4 = *offs.add(r);
                        let xv = [
                            _mm512_loadu_ps(base.add(o4[0])),
                            _mm512_loadu_ps(base.add(o4[1])),
                            _mm512_loadu_ps(base.add(o4[2])),
                            _mm512_loadu_ps(base.add(o4[3])),
                        ];
                        for j in 0..POB {
                            let wj = _mm512_set1_ps(*wb.add(r * POB + j));
                            for k in 0..4 {
                                acc[j * 4 + k] = _mm512_fmadd_ps(wj, xv[k], acc[j * 4 + k]);
                            }
                        }
                    }
                    for j in 0..POB {
                        if j >= ol {
                            break;
                        }
                        let a = [acc[j * 4], acc[j * 4 + 1], acc[j * 4 + 2], acc[j * 4 + 3]];
                        let m = pool4(a);
                        let s = if p.bias.is_some() {
                            _mm512_add_ps(m, bv[j])
                        } else {
                            m
                        };
                        let s = if p.relu { _mm512_max_ps(zero, s) } else { s };
                        let yo = yp.add((ob * POB + j) * pout + pr * pw2 + i0);
                        _mm512_mask_storeu_ps(yo, mask, s);
                    }
                }
            }
        }
    }

    /// The register block of the unpooled blocked direct kernel (`super::super::
    /// direct_fwd_blocked`) for `f32` on AVX-512: 4 output channels × 4 chunks of 16 outputs in
    /// 16 accumulators, per tap `r` (in order) four loads at `xp + base[c] + offs[r]`, four
    /// broadcasts of `wb[r·4 + j]` and 16 fused multiply-adds — the generic block's sums bit
    /// for bit, written to `out[j·4 + c]`. (In intrinsics because the generic block relies on
    /// rustc / LLVM vectorizing it, which a build compiled to scalar code: 5x slower.)
    ///
    /// # Safety
    /// AVX-512 available; `wb` holds `4 · offs.len()` weights; every
    /// `xp[base[c] + offs[r]..][..16]` is readable.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub(in crate::conv) unsafe fn block_fwd_512(
        offs: &[usize],
        wb: *const f32,
        xp: *const f32,
        base: [usize; 4],
        out: &mut [[f32; 16]; 16],
    ) {
        let mut acc = [_mm512_setzero_ps(); 16];
        for (r, &off) in offs.iter().enumerate() {
            let xv = [
                _mm512_loadu_ps(xp.add(base[0] + off)),
                _mm512_loadu_ps(xp.add(base[1] + off)),
                _mm512_loadu_ps(xp.add(base[2] + off)),
                _mm512_loadu_ps(xp.add(base[3] + off)),
            ];
            for j in 0..4 {
                let wj = _mm512_set1_ps(*wb.add(r * 4 + j));
                for c in 0..4 {
                    acc[j * 4 + c] = _mm512_fmadd_ps(wj, xv[c], acc[j * 4 + c]);
                }
            }
        }
        for (o, a) in out.iter_mut().zip(acc) {
            _mm512_storeu_ps(o.as_mut_ptr(), a);
        }
    }

    /// [`block_fwd_512`] for AVX2 (the same sums bit for bit): four passes over the taps, each
    /// for one 8-lane half of two of the chunks (8 accumulators, so they stay in the 16 `ymm`
    /// registers).
    ///
    /// # Safety
    /// AVX2 and FMA available; as [`block_fwd_512`].
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::conv) unsafe fn block_fwd_256(
        offs: &[usize],
        wb: *const f32,
        xp: *const f32,
        base: [usize; 4],
        out: &mut [[f32; 16]; 16],
    ) {
        for h in 0..2 {
            for cp in 0..2 {
                let (c0, c1) = (2 * cp, 2 * cp + 1);
                let mut acc = [_mm256_setzero_ps(); 8];
                for (r, &off) in offs.iter().enumerate() {
                    let xv = [
                        _mm256_loadu_ps(xp.add(base[c0] + off + 8 * h)),
                        _mm256_loadu_ps(xp.add(base[c1] + off + 8 * h)),
                    ];
                    for j in 0..4 {
                        let wj = _mm256_set1_ps(*wb.add(r * 4 + j));
                        for k in 0..2 {
                            acc[j * 2 + k] = _mm256_fmadd_ps(wj, xv[k], acc[j * 2 + k]);
                        }
                    }
                }
                for j in 0..4 {
                    for (k, c) in [c0, c1].into_iter().enumerate() {
                        _mm256_storeu_ps(out[j * 4 + c][8 * h..].as_mut_ptr(), acc[j * 2 + k]);
                    }
                }
            }
        }
    }

    /// `dst[l] = src[2·l]` for every `l` with `l < dst.len()` and `2·l < src.len()` (one row of
    /// the split plane: the even elements of `src`), 16 at a time by `vpermt2ps`.
    ///
    /// # Safety
    /// AVX-512 available.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub(super) unsafe fn deinterleave_512(dst: &mut [f32], src: &[f32]) {
        let idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mask = |k: usize| ((1u32 << k.min(16)) - 1) as __mmask16;
        let n = dst.len().min(src.len().div_ceil(2));
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        let mut l = 0;
        while l < n {
            // `2·l < src.len()`: the first load starts inside `src`; lanes past its end are
            // masked off (not read), the second load's pointer is only formed, not read,
            // where none of its lanes is in `src`
            let rem = src.len() - 2 * l;
            let a = _mm512_maskz_loadu_ps(mask(rem), sp.add(2 * l));
            let b =
                _mm512_maskz_loadu_ps(mask(rem.saturating_sub(16)), sp.wrapping_add(2 * l + 16));
            let v = _mm512_permutex2var_ps(a, idx, b);
            _mm512_mask_storeu_ps(dp.add(l), mask(n - l), v);
            l += 16;
        }
    }

    /// `pick(o, v)`: `v` where `v > o` or `v` is NaN (PyTorch's max-pool rule), lane by lane.
    #[inline(always)]
    unsafe fn pick(o: __m512, v: __m512) -> __m512 {
        let m = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, o) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
        _mm512_mask_blend_ps(m, o, v)
    }

    /// `pool_planes`' loop for one `f32` plane on AVX-512, the same values bit for bit: per
    /// pooled row and chunk of 16 windows, the two input rows' `pick` (row `2·oy` the running
    /// maximum), the even and odd columns split by `vpermt2ps`, their `pick` (the even column
    /// the running maximum), `+ bias`, the ReLU as `max(0, ·)` (`epi`'s, NaN and −0 included),
    /// a masked store.
    ///
    /// # Safety
    /// AVX-512 available; `src` holds `2·ph2` rows of `ow ≥ 2·pw2` values, `dst` `ph2 · pw2`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
    pub(super) unsafe fn pool_plane_512(
        src: &[f32],
        ow: usize,
        ph2: usize,
        pw2: usize,
        bias: Option<f32>,
        relu: bool,
        dst: &mut [f32],
    ) {
        debug_assert!(src.len() >= 2 * ph2 * ow && ow >= 2 * pw2 && dst.len() >= ph2 * pw2);
        let ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
        let mask = |k: usize| ((1u32 << k.min(16)) - 1) as __mmask16;
        let zero = _mm512_setzero_ps();
        let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
        for oy in 0..ph2 {
            let (r0, r1) = (sp.add(2 * oy * ow), sp.add((2 * oy + 1) * ow));
            let mut j = 0;
            while j < pw2 {
                // input columns 2·j.. of both rows (2·pw2 of them in the row)
                let rem = 2 * (pw2 - j);
                let (ma, mb) = (mask(rem), mask(rem.saturating_sub(16)));
                let lo = pick(
                    _mm512_maskz_loadu_ps(ma, r0.add(2 * j)),
                    _mm512_maskz_loadu_ps(ma, r1.add(2 * j)),
                );
                let hi = pick(
                    _mm512_maskz_loadu_ps(mb, r0.wrapping_add(2 * j + 16)),
                    _mm512_maskz_loadu_ps(mb, r1.wrapping_add(2 * j + 16)),
                );
                let m = pick(
                    _mm512_permutex2var_ps(lo, ev, hi),
                    _mm512_permutex2var_ps(lo, od, hi),
                );
                let s = match bias {
                    Some(b) => _mm512_add_ps(m, _mm512_set1_ps(b)),
                    None => m,
                };
                let s = if relu { _mm512_max_ps(zero, s) } else { s };
                _mm512_mask_storeu_ps(dp.add(oy * pw2 + j), mask(pw2 - j), s);
                j += 16;
            }
        }
    }

    /// `pick(pick(pick(a[0], a[1]), a[2]), a[3])` with `pick(o, v)` = `v` where `v > o` or
    /// `v` is NaN: where no member is NaN that is `vmaxps(v, o)` (`v > o ? v : o`, ±0
    /// included), the NaN lanes (rare) take the exact rule.
    #[inline(always)]
    unsafe fn pool4(a: [__m512; 4]) -> __m512 {
        let m = _mm512_max_ps(a[3], _mm512_max_ps(a[2], _mm512_max_ps(a[1], a[0])));
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a[0], a[1])
            | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a[2], a[3]);
        if nan == 0 {
            return m;
        }
        pick(pick(pick(a[0], a[1]), a[2]), a[3])
    }
}

/// Pools every `[out[0], out[1]]` plane of `src` (`planes` of them, the convolution's output
/// for some images) 2×2 / stride 2 into `dst`, applying the epilogue to the maxima (`bias`
/// indexed by the plane's channel, `plane % o`).
#[inline(always)]
fn pool_planes_impl<T: ConvElem>(
    g: &Geom,
    src: &[T],
    bias: Option<&[T]>,
    relu: bool,
    dst: &mut [T],
) {
    let [ph2, pw2] = g.pooled();
    let (p, pout, ow) = (g.out_plane(), ph2 * pw2, g.out[1]);
    if pout == 0 {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if TypeId::of::<T>() == TypeId::of::<f32>() && crate::isa::active() >= Isa::Avx512 {
        let f = |s: &[T]| {
            // SAFETY: T is f32 (checked above).
            unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) }
        };
        let planes = (src.len() / p).min(dst.len() / pout);
        // SAFETY: T is f32 (checked above).
        let dst =
            unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr() as *mut f32, dst.len()) };
        let (src, bias) = (f(src), bias.map(f));
        for i in 0..planes {
            // SAFETY: AVX-512 is active; the plane slices hold `p` and `pout` values.
            unsafe {
                x86::pool_plane_512(
                    &src[i * p..][..p],
                    ow,
                    ph2,
                    pw2,
                    bias.map(|b| b[i % g.o]),
                    relu,
                    &mut dst[i * pout..][..pout],
                )
            };
        }
        return;
    }
    let mut v = vec![T::default(); 2 * pw2];
    for (i, (sp, dp)) in src
        .chunks_exact(p)
        .zip(dst.chunks_exact_mut(pout))
        .enumerate()
    {
        let (has_bias, b) = match bias {
            Some(b) => (true, b[i % g.o]),
            None => (false, T::default()),
        };
        for (oy, orow) in dp.chunks_exact_mut(pw2).enumerate() {
            // the two rows' maxima (contiguous), then the column pairs'; a window's result
            // is its maximum whatever the order, NaN when it holds one
            let r0 = &sp[2 * oy * ow..][..2 * pw2];
            let r1 = &sp[(2 * oy + 1) * ow..][..2 * pw2];
            for ((m, &a), &c) in v.iter_mut().zip(r0).zip(r1) {
                *m = pick(a, c);
            }
            for (o, m) in orow.iter_mut().zip(v.chunks_exact(2)) {
                *o = epi(pick(m[0], m[1]), has_bias, b, relu);
            }
        }
    }
}

/// The pooled forward pass where the direct kernel does not apply: [`forward_fused`] (without
/// its epilogue) for a few images at a time into a scratch buffer, then the pool with the
/// epilogue on the maxima.
pub(super) fn via_scratch<T: ConvElem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    let per = g.o * g.out_plane();
    let [ph2, pw2] = g.pooled();
    let (xin, yout) = (g.c * g.in_plane(), g.o * ph2 * pw2);
    let nb = (CHUNK / per.max(1)).clamp(1, g.n.max(1));
    // (kept per thread: no allocation or zeroing per call; the convolution writes it all)
    let mut tmp = take_tmp::<T>();
    if tmp.len() < nb * per {
        tmp.resize(nb * per, T::default());
    }
    let mut n0 = 0;
    while n0 < g.n {
        let k = nb.min(g.n - n0);
        let sub = Geom { n: k, ..*g };
        let t = &mut tmp[..k * per];
        forward(&sub, &x[n0 * xin..][..k * xin], w, t);
        pool_planes(&sub, t, bias, relu, &mut y[n0 * yout..][..k * yout]);
        n0 += k;
    }
    put_tmp(tmp);
}

thread_local! {
    static TMP32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static TMP64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Takes this thread's scratch buffer of [`via_scratch`] (its own: the convolutions it calls
/// use the other scratch buffers), empty if none.
fn take_tmp<T: 'static>() -> Vec<T> {
    let v: Box<dyn Any> = if TypeId::of::<T>() == TypeId::of::<f32>() {
        Box::new(TMP32.with(|b| b.take()))
    } else if TypeId::of::<T>() == TypeId::of::<f64>() {
        Box::new(TMP64.with(|b| b.take()))
    } else {
        return Vec::new();
    };
    v.downcast::<Vec<T>>().map(|b| *b).unwrap_or_default()
}

/// Puts a buffer taken with [`take_tmp`] back.
fn put_tmp<T: 'static>(v: Vec<T>) {
    let v: Box<dyn Any> = Box::new(v);
    match v.downcast::<Vec<f32>>() {
        Ok(v) => TMP32.with(|b| *b.borrow_mut() = *v),
        Err(v) => {
            if let Ok(v) = v.downcast::<Vec<f64>>() {
                TMP64.with(|b| *b.borrow_mut() = *v)
            }
        }
    }
}

/// [`pool_planes`] for a computed convolution output `y_full` (`g`'s output) with no
/// epilogue (the caller applied it): for outputs another kernel computed.
pub(super) fn pool_only<T: ConvElem>(g: &Geom, y_full: &[T], y: &mut [T]) {
    pool_planes(
        g,
        &y_full[..g.lens().2],
        None,
        false,
        &mut y[..g.pooled_len()],
    );
}
