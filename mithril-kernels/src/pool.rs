//! Pooling, padding and upsampling kernels over contiguous planes (the trailing spatial dims of
//! an NCHW tensor; every leading dim is a plane). A 1-D op is the 2-D one with height 1.
//!
//! The window kernels (max / average pooling, forward and backward) loop over output rows and
//! kernel taps, and for each tap over the output columns whose input column lies inside the
//! input (computed once per tap, so the inner loop has no bounds branch): with stride 1 that
//! loop reads contiguous input and vectorizes; the common 2x2 / stride-2 max pool has a loop of
//! its own over column pairs. They are multiversioned (AVX-512 / AVX2+FMA / baseline through
//! [`crate::isa`], the same source compiled per level); the baseline is the reference the
//! other paths are tested against, and a naive per-element implementation in the tests is the
//! reference of all of them.
//!
//! Semantics are PyTorch's: a max window propagates NaN and its gradient goes to the first
//! maximum in scan order (row-major over the window); an average window's divisor counts the
//! padding when `count_pad` (clipped to the padded input), else only the input elements it
//! covers; adaptive windows are `[floor(i·in/out), ceil((i+1)·in/out))`; upsampling maps an
//! output index to source indices and weights per dim ([`interp_map`]).

use std::ops::{Add, AddAssign, Mul, Sub};

/// An element type the kernels compute in (`f32`, `f64`; narrower floats are widened to `f32`
/// by the caller).
pub trait PoolElem:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + AddAssign
    + Send
    + Sync
    + std::fmt::Debug
    + 'static
{
    /// `0`
    const ZERO: Self;
    /// `-inf`
    const NEG_INF: Self;
    /// From `f64` (rounded).
    fn of(v: f64) -> Self;
    /// NaN test.
    fn nan(self) -> bool;
}

impl PoolElem for f32 {
    const ZERO: f32 = 0.0;
    const NEG_INF: f32 = f32::NEG_INFINITY;
    #[inline(always)]
    fn of(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
}

impl PoolElem for f64 {
    const ZERO: f64 = 0.0;
    const NEG_INF: f64 = f64::NEG_INFINITY;
    #[inline(always)]
    fn of(v: f64) -> f64 {
        v
    }
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
}

/// The geometry of a window pooling of `[h, w]` planes into `[oh, ow]` planes: kernel `kh x
/// kw`, stride, padding, dilation. A 1-D pooling has `h = oh = kh = sh = dh = 1`, `ph = 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Win {
    pub h: usize,
    pub w: usize,
    pub oh: usize,
    pub ow: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
}

impl Win {
    /// The input row of output row `oy` at tap `ky`, `None` in the padding.
    #[inline(always)]
    fn row(&self, oy: usize, ky: usize) -> Option<usize> {
        (oy * self.sh + ky * self.dh)
            .checked_sub(self.ph)
            .filter(|&iy| iy < self.h)
    }

    /// The output columns `[lo, hi)` whose input column at tap `kx` is inside the input, and
    /// the offset `ix = ox·sw + off` (as `ox·sw + kx·dw - pw`).
    #[inline(always)]
    fn cols(&self, kx: usize) -> (usize, usize, isize) {
        let off = (kx * self.dw) as isize - self.pw as isize;
        let sw = self.sw as isize;
        let lo = if off >= 0 {
            0
        } else {
            ((-off + sw - 1) / sw) as usize
        };
        let room = self.w as isize - off;
        let hi = if room <= 0 {
            0
        } else {
            (((room + sw - 1) / sw) as usize).min(self.ow)
        };
        (lo.min(hi), hi, off)
    }

    fn plane_in(&self) -> usize {
        self.h * self.w
    }

    fn plane_out(&self) -> usize {
        self.oh * self.ow
    }
}

#[inline(always)]
fn pick<T: PoolElem>(o: T, v: T) -> T {
    // PyTorch's rule: a larger value or a NaN replaces the running maximum
    if v > o || v.nan() {
        v
    } else {
        o
    }
}

/// Where a 2x2 / stride-2 window's gradient goes: `[a0, a1, b0, b1]` (rows `a`, `b`) each get
/// `g` if it is the window's first maximum under [`pick`]'s rule (so the last NaN), else 0.
#[inline(always)]
fn max2x2_grad<T: PoolElem>(a0: T, a1: T, b0: T, b1: T, g: T) -> [T; 4] {
    let (mut m, mut i) = (a0, 0u8);
    if a1 > m || a1.nan() {
        (m, i) = (a1, 1);
    }
    if b0 > m || b0.nan() {
        (m, i) = (b0, 2);
    }
    if b1 > m || b1.nan() {
        i = 3;
    }
    let z = T::ZERO;
    [
        if i == 0 { g } else { z },
        if i == 1 { g } else { z },
        if i == 2 { g } else { z },
        if i == 3 { g } else { z },
    ]
}

#[inline(always)]
fn max_bwd_impl<T: PoolElem>(x: &[T], gy: &[T], g: &Win, gx: &mut [T]) {
    // 2x2 windows at stride 2 inside the input: each input element is in at most one window,
    // so every window writes its four gradients (the maximum's and three zeros), no search
    let k2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2;
    let fast = k2 && g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1 && 2 * g.ow <= g.w;
    // (when the windows tile the input exactly they write every element)
    if !(fast && 2 * g.ow == g.w && 2 * g.oh == g.h) {
        gx.fill(T::ZERO);
    }
    let (pi, po) = (g.plane_in(), g.plane_out());
    if pi == 0 || po == 0 {
        return;
    }
    for ((xp, gp), gxp) in x
        .chunks_exact(pi)
        .zip(gy.chunks_exact(po))
        .zip(gx.chunks_exact_mut(pi))
    {
        for oy in 0..g.oh {
            if fast && 2 * oy + 1 < g.h {
                let (w, ow) = (g.w, g.ow);
                let r0 = &xp[2 * oy * w..][..2 * ow];
                let r1 = &xp[(2 * oy + 1) * w..][..2 * ow];
                let grow = &gp[oy * ow..][..ow];
                let (d0, d1) = gxp[2 * oy * w..].split_at_mut(w);
                let (d0, d1) = (&mut d0[..2 * ow], &mut d1[..2 * ow]);
                for ((((a, b), &gv), da), db) in r0
                    .chunks_exact(2)
                    .zip(r1.chunks_exact(2))
                    .zip(grow)
                    .zip(d0.chunks_exact_mut(2))
                    .zip(d1.chunks_exact_mut(2))
                {
                    let [v0, v1, v2, v3] = max2x2_grad(a[0], a[1], b[0], b[1], gv);
                    da[0] = v0;
                    da[1] = v1;
                    db[0] = v2;
                    db[1] = v3;
                }
                continue;
            }
            max_bwd_row(xp, gp, g, oy, gxp);
        }
    }
}

/// One output row of the max-pool gradient, any window: each output's gradient is added at
/// its window's first maximum.
#[inline(always)]
fn max_bwd_row<T: PoolElem>(xp: &[T], gp: &[T], g: &Win, oy: usize, gxp: &mut [T]) {
    for ox in 0..g.ow {
        let mut best: Option<(usize, T)> = None;
        for ky in 0..g.kh {
            let Some(iy) = g.row(oy, ky) else { continue };
            for kx in 0..g.kw {
                let Some(ix) = (ox * g.sw + kx * g.dw)
                    .checked_sub(g.pw)
                    .filter(|&ix| ix < g.w)
                else {
                    continue;
                };
                let i = iy * g.w + ix;
                let v = xp[i];
                best = match best {
                    None => Some((i, v)),
                    Some((_, m)) if v > m || v.nan() => Some((i, v)),
                    b => b,
                };
            }
        }
        if let Some((i, _)) = best {
            gxp[i] += gp[oy * g.ow + ox];
        }
    }
}

use crate::isa::multiversion;

#[inline(always)]
fn max_fwd_impl<T: PoolElem>(x: &[T], g: &Win, out: &mut [T]) {
    let (pi, po) = (g.plane_in(), g.plane_out());
    if pi == 0 || po == 0 {
        return;
    }
    let planes = out.len() / po;
    let k2 = g.kh == 2 && g.kw == 2 && g.sh == 2 && g.sw == 2;
    let fast = k2 && g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1 && 2 * g.ow <= g.w;
    for (xp, op) in x
        .chunks_exact(pi)
        .zip(out.chunks_exact_mut(po))
        .take(planes)
    {
        for (oy, orow) in op.chunks_exact_mut(g.ow).enumerate() {
            if fast && 2 * oy + 1 < g.h {
                let r0 = &xp[2 * oy * g.w..2 * oy * g.w + 2 * g.ow];
                let r1 = &xp[(2 * oy + 1) * g.w..(2 * oy + 1) * g.w + 2 * g.ow];
                for ((o, a), b) in orow
                    .iter_mut()
                    .zip(r0.chunks_exact(2))
                    .zip(r1.chunks_exact(2))
                {
                    *o = pick(pick(pick(a[0], a[1]), b[0]), b[1]);
                }
                continue;
            }
            orow.fill(T::NEG_INF);
            for ky in 0..g.kh {
                let Some(iy) = g.row(oy, ky) else { continue };
                let xrow = &xp[iy * g.w..(iy + 1) * g.w];
                for kx in 0..g.kw {
                    let (lo, hi, off) = g.cols(kx);
                    if lo >= hi {
                        continue;
                    }
                    if g.sw == 1 {
                        let b = (lo as isize + off) as usize;
                        for (o, &v) in orow[lo..hi].iter_mut().zip(&xrow[b..b + hi - lo]) {
                            *o = pick(*o, v);
                        }
                    } else {
                        for (ox, o) in orow[lo..hi].iter_mut().enumerate() {
                            let ix = ((lo + ox) * g.sw) as isize + off;
                            *o = pick(*o, xrow[ix as usize]);
                        }
                    }
                }
            }
        }
    }
}

/// The divisor factors of average pooling along one dim: `1 / count` per output index.
fn avg_factors(n: usize, on: usize, k: usize, s: usize, p: usize, count_pad: bool) -> Vec<f64> {
    (0..on)
        .map(|o| {
            let start = (o * s) as isize - p as isize;
            let end = (start + k as isize).min((n + p) as isize);
            let full = end - start;
            let valid = end.min(n as isize) - start.max(0);
            let c = if count_pad { full } else { valid };
            if c > 0 {
                1.0 / c as f64
            } else {
                0.0
            }
        })
        .collect()
}

#[inline(always)]
fn avg_fwd_impl<T: PoolElem>(x: &[T], g: &Win, fh: &[T], fw: &[T], out: &mut [T]) {
    let (pi, po) = (g.plane_in(), g.plane_out());
    if pi == 0 || po == 0 {
        return;
    }
    for (xp, op) in x.chunks_exact(pi).zip(out.chunks_exact_mut(po)) {
        for (oy, orow) in op.chunks_exact_mut(g.ow).enumerate() {
            orow.fill(T::ZERO);
            for ky in 0..g.kh {
                let Some(iy) = g.row(oy, ky) else { continue };
                let xrow = &xp[iy * g.w..(iy + 1) * g.w];
                for kx in 0..g.kw {
                    let (lo, hi, off) = g.cols(kx);
                    if lo >= hi {
                        continue;
                    }
                    if g.sw == 1 {
                        let b = (lo as isize + off) as usize;
                        for (o, &v) in orow[lo..hi].iter_mut().zip(&xrow[b..b + hi - lo]) {
                            *o += v;
                        }
                    } else {
                        for (ox, o) in orow[lo..hi].iter_mut().enumerate() {
                            *o += xrow[(((lo + ox) * g.sw) as isize + off) as usize];
                        }
                    }
                }
            }
            let f = fh[oy];
            for (o, &c) in orow.iter_mut().zip(fw) {
                *o = *o * (f * c);
            }
        }
    }
}

#[inline(always)]
fn avg_bwd_impl<T: PoolElem>(gy: &[T], g: &Win, fh: &[T], fw: &[T], gx: &mut [T]) {
    let (pi, po) = (g.plane_in(), g.plane_out());
    gx.fill(T::ZERO);
    if pi == 0 || po == 0 {
        return;
    }
    let mut scaled = vec![T::ZERO; g.ow];
    for (gp, xp) in gy.chunks_exact(po).zip(gx.chunks_exact_mut(pi)) {
        for (oy, grow) in gp.chunks_exact(g.ow).enumerate() {
            let f = fh[oy];
            for ((s, &v), &c) in scaled.iter_mut().zip(grow).zip(fw) {
                *s = v * (f * c);
            }
            for ky in 0..g.kh {
                let Some(iy) = g.row(oy, ky) else { continue };
                let xrow = &mut xp[iy * g.w..(iy + 1) * g.w];
                for kx in 0..g.kw {
                    let (lo, hi, off) = g.cols(kx);
                    if lo >= hi {
                        continue;
                    }
                    if g.sw == 1 {
                        let b = (lo as isize + off) as usize;
                        for (o, &v) in xrow[b..b + hi - lo].iter_mut().zip(&scaled[lo..hi]) {
                            *o += v;
                        }
                    } else {
                        for (ox, &v) in scaled[lo..hi].iter().enumerate() {
                            xrow[(((lo + ox) * g.sw) as isize + off) as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    fn max_fwd_mv<T: PoolElem>(x: &[T], g: &Win, out: &mut [T]) => max_fwd_impl;
}
multiversion! {
    fn max_bwd_mv<T: PoolElem>(x: &[T], gy: &[T], g: &Win, gx: &mut [T]) => max_bwd_impl;
}
multiversion! {
    fn avg_fwd_mv<T: PoolElem>(x: &[T], g: &Win, fh: &[T], fw: &[T], out: &mut [T]) => avg_fwd_impl;
}
multiversion! {
    fn avg_bwd_mv<T: PoolElem>(gy: &[T], g: &Win, fh: &[T], fw: &[T], gx: &mut [T]) => avg_bwd_impl;
}

fn sizes_ok<T>(x: &[T], g: &Win, out: &[T], what: &str) -> Result<usize, String> {
    let (pi, po) = (g.plane_in(), g.plane_out());
    let planes = out.len().checked_div(po).unwrap_or(0);
    if planes * po != out.len() || x.len() != planes * pi {
        return Err(format!(
            "internal: {what} buffers of {} and {} elements do not fit {g:?}",
            x.len(),
            out.len()
        ));
    }
    Ok(planes)
}

/// Max pooling: `out[p, oy, ox]` the maximum of plane `p`'s window (NaN if it holds one).
/// `x` holds `planes · h · w` elements, `out` `planes · oh · ow`. `Err` when they do not fit.
pub fn max_pool<T: PoolElem>(x: &[T], g: &Win, out: &mut [T]) -> Result<(), String> {
    sizes_ok(x, g, out, "max_pool")?;
    max_fwd_mv(x, g, out);
    Ok(())
}

/// The gradient of [`max_pool`]: `gx` (the input's size) gets each `gy[p, oy, ox]` added at
/// its window's first maximum (PyTorch's rule: a NaN counts as the maximum).
pub fn max_pool_backward<T: PoolElem>(
    x: &[T],
    gy: &[T],
    g: &Win,
    gx: &mut [T],
) -> Result<(), String> {
    sizes_ok(x, g, gy, "max_pool backward")?;
    if gx.len() != x.len() {
        return Err("internal: max_pool backward gradient size".into());
    }
    max_bwd_mv(x, gy, g, gx);
    Ok(())
}

/// Average pooling (`count_pad`: PyTorch's `count_include_pad`).
pub fn avg_pool<T: PoolElem>(
    x: &[T],
    g: &Win,
    count_pad: bool,
    out: &mut [T],
) -> Result<(), String> {
    sizes_ok(x, g, out, "avg_pool")?;
    let (fh, fw) = factors::<T>(g, count_pad);
    avg_fwd_mv(x, g, &fh, &fw, out);
    Ok(())
}

/// The gradient of [`avg_pool`]: each `gy` element spread over its window's input elements.
pub fn avg_pool_backward<T: PoolElem>(
    gy: &[T],
    g: &Win,
    count_pad: bool,
    gx: &mut [T],
) -> Result<(), String> {
    sizes_ok(gx, g, gy, "avg_pool backward")?;
    let (fh, fw) = factors::<T>(g, count_pad);
    avg_bwd_mv(gy, g, &fh, &fw, gx);
    Ok(())
}

fn factors<T: PoolElem>(g: &Win, count_pad: bool) -> (Vec<T>, Vec<T>) {
    let cv = |v: Vec<f64>| v.into_iter().map(T::of).collect::<Vec<T>>();
    (
        cv(avg_factors(g.h, g.oh, g.kh, g.sh, g.ph, count_pad)),
        cv(avg_factors(g.w, g.ow, g.kw, g.sw, g.pw, count_pad)),
    )
}

/// The adaptive window of output `o` of `on` over an input of `n`: `[floor(o·n/on),
/// ceil((o+1)·n/on))`.
pub fn adaptive_range(o: usize, n: usize, on: usize) -> (usize, usize) {
    let s = o * n / on;
    let e = ((o + 1) * n).div_ceil(on);
    (s, e)
}

/// Adaptive average pooling of `[h, w]` planes into `[oh, ow]` planes.
pub fn adaptive_avg_pool<T: PoolElem>(
    x: &[T],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    out: &mut [T],
) -> Result<(), String> {
    let (pi, po) = (h * w, oh * ow);
    if po == 0 || !out.len().is_multiple_of(po) || x.len() != out.len() / po * pi {
        return Err("internal: adaptive_avg_pool buffer sizes".into());
    }
    if pi == 0 {
        return Ok(());
    }
    let rx: Vec<_> = (0..ow).map(|o| adaptive_range(o, w, ow)).collect();
    for (xp, op) in x.chunks_exact(pi).zip(out.chunks_exact_mut(po)) {
        for oy in 0..oh {
            let (ys, ye) = adaptive_range(oy, h, oh);
            for (ox, &(xs, xe)) in rx.iter().enumerate() {
                let mut s = T::ZERO;
                for iy in ys..ye {
                    for &v in &xp[iy * w + xs..iy * w + xe] {
                        s += v;
                    }
                }
                op[oy * ow + ox] = s * T::of(1.0 / ((ye - ys) * (xe - xs)) as f64);
            }
        }
    }
    Ok(())
}

/// The gradient of [`adaptive_avg_pool`].
pub fn adaptive_avg_pool_backward<T: PoolElem>(
    gy: &[T],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    gx: &mut [T],
) -> Result<(), String> {
    let (pi, po) = (h * w, oh * ow);
    if po == 0 || !gy.len().is_multiple_of(po) || gx.len() != gy.len() / po * pi {
        return Err("internal: adaptive_avg_pool backward buffer sizes".into());
    }
    gx.fill(T::ZERO);
    if pi == 0 {
        return Ok(());
    }
    let rx: Vec<_> = (0..ow).map(|o| adaptive_range(o, w, ow)).collect();
    for (gp, xp) in gy.chunks_exact(po).zip(gx.chunks_exact_mut(pi)) {
        for oy in 0..oh {
            let (ys, ye) = adaptive_range(oy, h, oh);
            for (ox, &(xs, xe)) in rx.iter().enumerate() {
                let v = gp[oy * ow + ox] * T::of(1.0 / ((ye - ys) * (xe - xs)) as f64);
                for iy in ys..ye {
                    for o in &mut xp[iy * w + xs..iy * w + xe] {
                        *o += v;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Padding modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    /// a constant outside
    Constant,
    /// mirrored at the edge, the edge not repeated (`d c b | a b c d | c b a`)
    Reflect,
    /// the edge element repeated
    Replicate,
}

/// The source index of each output index of a padded dim of size `n` (`None`: the constant).
/// `Err` when the mode cannot pad this dim (reflect needs `pad < n`, replicate `n >= 1`).
pub fn pad_map(
    n: usize,
    left: usize,
    right: usize,
    mode: PadMode,
) -> Result<Vec<Option<usize>>, String> {
    match mode {
        PadMode::Reflect if left >= n || right >= n => {
            return Err(format!(
                "reflect padding ({left}, {right}) needs each pad below the dim's size {n}"
            ))
        }
        PadMode::Replicate if n == 0 && left + right > 0 => {
            return Err("replicate padding of an empty dim".into())
        }
        _ => {}
    }
    Ok((0..left + n + right)
        .map(|i| {
            let p = i as isize - left as isize;
            let n = n as isize;
            let s = if (0..n).contains(&p) {
                p
            } else {
                match mode {
                    PadMode::Constant => return None,
                    PadMode::Reflect if p < 0 => -p,
                    PadMode::Reflect => 2 * (n - 1) - p,
                    PadMode::Replicate => p.clamp(0, n - 1),
                }
            };
            Some(s as usize)
        })
        .collect())
}

/// Pads (or, `backward`, accumulates the gradient of a pad) over the trailing dims: `shape`
/// is the unpadded tensor's, `maps[j]` the [`pad_map`] of trailing dim `j` (the last
/// `maps.len()` dims, in order). Forward: `src` unpadded, `dst` padded (filled with `value`
/// outside). Backward: `src` the padded gradient, `dst` the unpadded gradient (zeroed first).
pub fn pad<T: PoolElem>(
    src: &[T],
    shape: &[usize],
    maps: &[Vec<Option<usize>>],
    value: T,
    backward: bool,
    dst: &mut [T],
) -> Result<(), String> {
    let m = maps.len();
    if m == 0 || m > shape.len() {
        return Err("internal: pad dims".into());
    }
    let lead: usize = shape[..shape.len() - m].iter().product();
    let ins = &shape[shape.len() - m..];
    let outs: Vec<usize> = maps.iter().map(|v| v.len()).collect();
    let in_plane: usize = ins.iter().product();
    let out_plane: usize = outs.iter().product();
    let (n_in, n_out) = (lead * in_plane, lead * out_plane);
    let (small, big) = if backward {
        (dst.len(), src.len())
    } else {
        (src.len(), dst.len())
    };
    if small != n_in || big != n_out {
        return Err("internal: pad buffer sizes".into());
    }
    if backward {
        dst.fill(T::ZERO);
    }
    let (w, ow) = (ins[m - 1], outs[m - 1]);
    let last = &maps[m - 1];
    // the contiguous middle of the last dim (output [l, l + w) reads input [0, w))
    let l = (0..ow)
        .find(|&o| w > 0 && o + w <= ow && last[o] == Some(0) && last[o + w - 1] == Some(w - 1))
        .unwrap_or(ow);
    let rows_out = out_plane.checked_div(ow).unwrap_or(0);
    let mut idx = vec![0usize; m - 1];
    for p in 0..lead {
        idx.iter_mut().for_each(|i| *i = 0);
        for r in 0..rows_out {
            // the source row of output row `idx` (None: in the constant border)
            let mut src_row = Some(0usize);
            for (j, &i) in idx.iter().enumerate() {
                src_row = match (src_row, maps[j][i]) {
                    (Some(acc), Some(s)) => Some(acc * ins[j] + s),
                    _ => None,
                };
            }
            let o0 = p * out_plane + r * ow;
            match src_row {
                None if !backward => dst[o0..o0 + ow].fill(value),
                None => {}
                Some(sr) => {
                    let i0 = p * in_plane + sr * w;
                    if backward {
                        let (g, gx) = (&src[o0..o0 + ow], &mut dst[i0..i0 + w]);
                        for (o, s) in last.iter().enumerate() {
                            if let Some(s) = s {
                                gx[*s] += g[o];
                            }
                        }
                    } else {
                        let (x, y) = (&src[i0..i0 + w], &mut dst[o0..o0 + ow]);
                        for (o, s) in last.iter().enumerate() {
                            if (l..l + w).contains(&o) {
                                continue;
                            }
                            y[o] = match s {
                                Some(s) => x[*s],
                                None => value,
                            };
                        }
                        if l < ow {
                            y[l..l + w].copy_from_slice(x);
                        }
                    }
                }
            }
            // next output row index (odometer over the padded dims but the last)
            for j in (0..m - 1).rev() {
                idx[j] += 1;
                if idx[j] < outs[j] {
                    break;
                }
                idx[j] = 0;
            }
        }
    }
    Ok(())
}

/// One output index of an interpolated dim: source indices `i0`, `i1` and the weight `l` of
/// `i1` (`1 - l` of `i0`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tap {
    /// first source index
    pub i0: usize,
    /// second source index
    pub i1: usize,
    /// weight of `i1`
    pub l: f64,
}

/// PyTorch's source taps of each of `on` outputs over an input dim of `n` (`n >= 1`):
/// `scale` is `1 / scale_factor` when a scale factor was given, else `n / on`. Nearest:
/// `i0 = min(floor(o · scale), n - 1)`, weight 0; linear with `align_corners`: source `o · (n -
/// 1) / (on - 1)`; without: `(o + 0.5) · scale - 0.5` clamped at 0.
pub fn interp_map(n: usize, on: usize, scale: Option<f64>, linear: bool, align: bool) -> Vec<Tap> {
    let scale = scale.unwrap_or(n as f64 / on.max(1) as f64);
    (0..on)
        .map(|o| {
            if !linear {
                let i = ((o as f64 * scale).floor() as usize).min(n.saturating_sub(1));
                return Tap {
                    i0: i,
                    i1: i,
                    l: 0.0,
                };
            }
            let src = if align {
                if on > 1 {
                    o as f64 * (n as f64 - 1.0) / (on as f64 - 1.0)
                } else {
                    0.0
                }
            } else {
                ((o as f64 + 0.5) * scale - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(n.saturating_sub(1));
            let i1 = if i0 + 1 < n { i0 + 1 } else { i0 };
            Tap {
                i0,
                i1,
                l: src - i0 as f64,
            }
        })
        .collect()
}

/// Upsamples `[h, w]` planes into `[ty.len(), tx.len()]` planes through the taps of each dim
/// (separable: rows mixed first, then columns). `linear`: weights; else nearest (a gather).
pub fn upsample<T: PoolElem>(
    x: &[T],
    (h, w): (usize, usize),
    ty: &[Tap],
    tx: &[Tap],
    linear: bool,
    out: &mut [T],
) -> Result<(), String> {
    let (pi, po) = (h * w, ty.len() * tx.len());
    if po == 0 || pi == 0 || !out.len().is_multiple_of(po) || x.len() != out.len() / po * pi {
        return if out.is_empty() {
            Ok(())
        } else {
            Err("internal: upsample buffer sizes".into())
        };
    }
    let ow = tx.len();
    let wx: Vec<(T, T)> = tx.iter().map(|t| (T::of(1.0 - t.l), T::of(t.l))).collect();
    let mut row = vec![T::ZERO; w];
    for (xp, op) in x.chunks_exact(pi).zip(out.chunks_exact_mut(po)) {
        for (oy, t) in ty.iter().enumerate() {
            let orow = &mut op[oy * ow..(oy + 1) * ow];
            if !linear {
                let xr = &xp[t.i0 * w..(t.i0 + 1) * w];
                for (o, tx) in orow.iter_mut().zip(tx) {
                    *o = xr[tx.i0];
                }
                continue;
            }
            let (a, b) = (T::of(1.0 - t.l), T::of(t.l));
            let (r0, r1) = (&xp[t.i0 * w..(t.i0 + 1) * w], &xp[t.i1 * w..(t.i1 + 1) * w]);
            for ((r, &u), &v) in row.iter_mut().zip(r0).zip(r1) {
                *r = u * a + v * b;
            }
            for ((o, tx), &(c, d)) in orow.iter_mut().zip(tx).zip(&wx) {
                *o = row[tx.i0] * c + row[tx.i1] * d;
            }
        }
    }
    Ok(())
}

/// The gradient of [`upsample`]: `gy` `[ty.len(), tx.len()]` planes into `gx` `[h, w]`.
pub fn upsample_backward<T: PoolElem>(
    gy: &[T],
    (h, w): (usize, usize),
    ty: &[Tap],
    tx: &[Tap],
    linear: bool,
    gx: &mut [T],
) -> Result<(), String> {
    let (pi, po) = (h * w, ty.len() * tx.len());
    gx.fill(T::ZERO);
    if po == 0 || pi == 0 || !gy.len().is_multiple_of(po) || gx.len() != gy.len() / po * pi {
        return if gy.is_empty() {
            Ok(())
        } else {
            Err("internal: upsample backward buffer sizes".into())
        };
    }
    let ow = tx.len();
    let wx: Vec<(T, T)> = tx.iter().map(|t| (T::of(1.0 - t.l), T::of(t.l))).collect();
    let mut row = vec![T::ZERO; w];
    for (gp, xp) in gy.chunks_exact(po).zip(gx.chunks_exact_mut(pi)) {
        for (oy, t) in ty.iter().enumerate() {
            let grow = &gp[oy * ow..(oy + 1) * ow];
            if !linear {
                let xr = &mut xp[t.i0 * w..(t.i0 + 1) * w];
                for (&g, tx) in grow.iter().zip(tx) {
                    xr[tx.i0] += g;
                }
                continue;
            }
            row.fill(T::ZERO);
            for ((&g, tx), &(c, d)) in grow.iter().zip(tx).zip(&wx) {
                row[tx.i0] += g * c;
                row[tx.i1] += g * d;
            }
            let (a, b) = (T::of(1.0 - t.l), T::of(t.l));
            for (o, &r) in xp[t.i0 * w..(t.i0 + 1) * w].iter_mut().zip(&row) {
                *o += r * a;
            }
            for (o, &r) in xp[t.i1 * w..(t.i1 + 1) * w].iter_mut().zip(&row) {
                *o += r * b;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
