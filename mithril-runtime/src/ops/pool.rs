//! Pooling, padding and upsampling over the trailing spatial dims (PyTorch's semantics, NCHW),
//! forward and backward, over the kernels of [`mithril_kernels::pool`].
//!
//! What an op computes is a [`PoolSpec`], which the plan writes as one word (see
//! [`PoolSpec::parse`]). Output dims are computed here from the input's and checked: a window
//! that does not fit, an output dim below 1, or a reflect pad as large as its dim is an
//! [`Error::Op`] naming the op, the input shape and the attributes. `f16` / `bf16` are computed
//! in `f32` (the input widened once, the output rounded once); `f32` and `f64` run in place on
//! contiguous data.

use std::any::TypeId;

use mithril_kernels::pool as k;
use mithril_kernels::pool::{PadMode, PoolElem, Win};
use ndarray::{ArrayViewD, ArrayViewMutD};

use super::fmt_shape;
use crate::{Dest, Elem, Error, Result};

/// What a pooling-family op computes (mirrors the compiler's `PoolOp`).
#[derive(Clone, Debug, PartialEq)]
pub enum PoolSpec {
    /// max (`max`) or average window pooling over the last `k.len()` dims
    Window {
        /// max pooling (else average)
        max: bool,
        /// kernel size per spatial dim
        k: Vec<usize>,
        /// stride
        s: Vec<usize>,
        /// padding (both sides)
        p: Vec<usize>,
        /// dilation
        d: Vec<usize>,
        /// `ceil_mode`
        ceil: bool,
        /// `count_include_pad`
        count_pad: bool,
    },
    /// adaptive average pooling to these sizes of the last dims
    Adaptive(Vec<usize>),
    /// padding: PyTorch's pad list (last dim first), mode, constant
    Pad {
        /// `(left, right)` of the last dim, then of the dim before, ...
        pads: Vec<usize>,
        /// the mode
        mode: PadMode,
        /// the constant of [`PadMode::Constant`]
        value: f64,
    },
    /// upsampling of the dims after the first two: `size` or `scale` per dim
    Upsample {
        /// target sizes (empty: `scale`)
        size: Vec<usize>,
        /// scale factors (empty: `size`)
        scale: Vec<f64>,
        /// bilinear (else nearest)
        linear: bool,
        /// `align_corners`
        align_corners: bool,
    },
}

fn nums<T: std::str::FromStr>(it: &mut std::str::Split<'_, char>, n: usize) -> Option<Vec<T>> {
    (0..n).map(|_| it.next()?.parse().ok()).collect()
}

fn hex_f64(w: &str) -> Option<f64> {
    u64::from_str_radix(w, 16).ok().map(f64::from_bits)
}

impl PoolSpec {
    /// Parses the plan word: `win,<max>,<n>,<k..>,<s..>,<p..>,<d..>,<ceil>,<count_pad>`,
    /// `ada,<n>,<size..>`, `pad,<c|r|e>,<n>,<pads..>,<value bits hex>`,
    /// `up,<linear>,<align>,<n>,<sizes..>,<m>,<scale bits hex..>`.
    pub fn parse(w: &str) -> std::result::Result<PoolSpec, String> {
        let bad = || format!("bad pool spec `{w}`");
        let mut it = w.split(',');
        let flag = |v: Option<&str>| v.map(|v| v == "1");
        let spec = match it.next() {
            Some("win") => {
                let max = flag(it.next()).ok_or_else(bad)?;
                let n: usize = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let k = nums(&mut it, n).ok_or_else(bad)?;
                let s = nums(&mut it, n).ok_or_else(bad)?;
                let p = nums(&mut it, n).ok_or_else(bad)?;
                let d = nums(&mut it, n).ok_or_else(bad)?;
                let ceil = flag(it.next()).ok_or_else(bad)?;
                let count_pad = flag(it.next()).ok_or_else(bad)?;
                PoolSpec::Window {
                    max,
                    k,
                    s,
                    p,
                    d,
                    ceil,
                    count_pad,
                }
            }
            Some("ada") => {
                let n: usize = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                PoolSpec::Adaptive(nums(&mut it, n).ok_or_else(bad)?)
            }
            Some("pad") => {
                let mode = match it.next() {
                    Some("c") => PadMode::Constant,
                    Some("r") => PadMode::Reflect,
                    Some("e") => PadMode::Replicate,
                    _ => return Err(bad()),
                };
                let n: usize = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let pads = nums(&mut it, n).ok_or_else(bad)?;
                let value = it.next().and_then(hex_f64).ok_or_else(bad)?;
                PoolSpec::Pad { pads, mode, value }
            }
            Some("up") => {
                let linear = flag(it.next()).ok_or_else(bad)?;
                let align_corners = flag(it.next()).ok_or_else(bad)?;
                let n: usize = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let size = nums(&mut it, n).ok_or_else(bad)?;
                let m: usize = it.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
                let scale = (0..m)
                    .map(|_| it.next().and_then(hex_f64))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(bad)?;
                PoolSpec::Upsample {
                    size,
                    scale,
                    linear,
                    align_corners,
                }
            }
            _ => return Err(bad()),
        };
        if it.next().is_some() {
            return Err(bad());
        }
        Ok(spec)
    }

    /// The op's name in errors.
    pub fn name(&self) -> &'static str {
        match self {
            PoolSpec::Window { max: true, k, .. } if k.len() == 1 => "max_pool1d",
            PoolSpec::Window { max: true, .. } => "max_pool2d",
            PoolSpec::Window { k, .. } if k.len() == 1 => "avg_pool1d",
            PoolSpec::Window { .. } => "avg_pool2d",
            PoolSpec::Adaptive(o) if o.len() == 1 => "adaptive_avg_pool1d",
            PoolSpec::Adaptive(_) => "adaptive_avg_pool2d",
            PoolSpec::Pad { .. } => "pad",
            PoolSpec::Upsample { .. } => "upsample",
        }
    }

    /// The output shape for an input of `shape`, `Err` naming the op, the shape and the
    /// attributes when it has none.
    pub fn out_shape(&self, shape: &[usize]) -> Result<Vec<usize>> {
        let op = self.name();
        let err = |m: String| Error::op(op, format!("{m} (input {})", fmt_shape(shape)));
        let r = shape.len();
        let mut out = shape.to_vec();
        match self {
            PoolSpec::Window {
                k,
                s,
                p,
                d,
                ceil,
                max,
                ..
            } => {
                let n = k.len();
                if r < n + 1 {
                    return Err(err(format!(
                        "needs at least {} dims (channels and {n} spatial)",
                        n + 1
                    )));
                }
                for j in 0..n {
                    let i = shape[r - n + j];
                    let o = window_out(i, k[j], s[j], p[j], if *max { d[j] } else { 1 }, *ceil)
                        .ok_or_else(|| {
                            err(format!(
                                "spatial dim {j} of size {i} with kernel {}, stride {}, padding {}, dilation {} has no output",
                                k[j], s[j], p[j], d[j]
                            ))
                        })?;
                    out[r - n + j] = o;
                }
            }
            PoolSpec::Adaptive(o) => {
                let n = o.len();
                if r < n + 1 {
                    return Err(err(format!("needs at least {} dims", n + 1)));
                }
                out[r - n..].copy_from_slice(o);
            }
            PoolSpec::Pad { pads, mode, .. } => {
                let m = pads.len() / 2;
                if m > r {
                    return Err(err(format!("pads {m} dims of a tensor of rank {r}")));
                }
                for j in 0..m {
                    let (l, rt) = (pads[2 * j], pads[2 * j + 1]);
                    let a = r - 1 - j;
                    let n = shape[a];
                    if *mode == PadMode::Reflect && (l >= n || rt >= n) {
                        return Err(err(format!(
                            "reflect padding ({l}, {rt}) of dim {a} needs each pad below its size {n}"
                        )));
                    }
                    if *mode == PadMode::Replicate && n == 0 && l + rt > 0 {
                        return Err(err(format!("replicate padding of the empty dim {a}")));
                    }
                    out[a] = n + l + rt;
                }
            }
            PoolSpec::Upsample { size, scale, .. } => {
                let given = size.len().max(scale.len());
                if !(3..=4).contains(&r) || (given != 1 && given != r - 2) {
                    return Err(err(format!(
                        "upsamples the dims after the first two of a 3-D or 4-D tensor, with one size or scale or one per spatial dim ({given} given)"
                    )));
                }
                for j in 0..r - 2 {
                    let o = match size.get(j.min(size.len().wrapping_sub(1))) {
                        Some(&o) if !size.is_empty() => o,
                        _ => (shape[2 + j] as f64 * scale[j.min(scale.len() - 1)]).floor() as usize,
                    };
                    if o == 0 || shape[2 + j] == 0 {
                        return Err(err(format!("spatial dim {j} gives no output")));
                    }
                    out[2 + j] = o;
                }
            }
        }
        Ok(out)
    }
}

/// PyTorch's pooling output size: `floor` or (`ceil`) `ceil((i + 2p - d(k-1) - 1) / s) + 1`,
/// the last window of `ceil` mode dropped when it starts in the right padding; `None` below 1.
pub fn window_out(i: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> Option<usize> {
    if k == 0 || s == 0 || d == 0 {
        return None;
    }
    let span = (i + 2 * p) as i64 - (d * (k - 1) + 1) as i64;
    if span < 0 {
        return None;
    }
    let s = s as i64;
    let mut o = if ceil {
        (span + s - 1) / s + 1
    } else {
        span / s + 1
    };
    if ceil && (o - 1) * s >= (i + p) as i64 {
        o -= 1;
    }
    (o >= 1).then_some(o as usize)
}

/// Runs `f` over the input as a contiguous `T::Acc` slice and an output buffer of `n_out`
/// `T::Acc`, written into `out` (no copies for `f32` / `f64` on contiguous data).
fn in_acc<'w, T: Elem>(
    x: &ArrayViewD<'_, T>,
    out: &mut ArrayViewMutD<'w, T>,
    f: impl FnOnce(&[T::Acc], &mut [T::Acc]) -> std::result::Result<(), String>,
) -> std::result::Result<(), String>
where
    T::Acc: PoolElem,
{
    let same = TypeId::of::<T>() == TypeId::of::<T::Acc>();
    let xs = x.as_standard_layout();
    let xs = xs.as_slice().ok_or("internal: standard layout")?;
    let widened: Vec<T::Acc>;
    let xa: &[T::Acc] = if same {
        // SAFETY: T and T::Acc are the same type (checked by TypeId).
        unsafe { std::slice::from_raw_parts(xs.as_ptr() as *const T::Acc, xs.len()) }
    } else {
        widened = xs.iter().map(|v| v.to_acc()).collect();
        &widened
    };
    match out.as_slice_mut() {
        Some(o) if same => {
            // SAFETY: as above.
            let oa =
                unsafe { std::slice::from_raw_parts_mut(o.as_mut_ptr() as *mut T::Acc, o.len()) };
            f(xa, oa)
        }
        _ => {
            let mut buf = vec![xa.first().copied().unwrap_or_else(|| T::Acc::of(0.0)); out.len()];
            f(xa, &mut buf)?;
            out.iter_mut()
                .zip(buf)
                .for_each(|(o, v)| *o = T::from_acc(v));
            Ok(())
        }
    }
}

pub(crate) fn win_of(
    shape: &[usize],
    out: &[usize],
    k: &[usize],
    s: &[usize],
    p: &[usize],
    d: &[usize],
    max: bool,
) -> Win {
    let r = shape.len();
    let two = k.len() == 2;
    let at = |v: &[usize], j: usize, one: usize| {
        if two {
            v[j]
        } else if j == 0 {
            one
        } else {
            v[0]
        }
    };
    let dil = |j| if max { at(d, j, 1) } else { 1 };
    Win {
        h: if two { shape[r - 2] } else { 1 },
        w: shape[r - 1],
        oh: if two { out[r - 2] } else { 1 },
        ow: out[r - 1],
        kh: at(k, 0, 1),
        kw: at(k, 1, 1),
        sh: at(s, 0, 1),
        sw: at(s, 1, 1),
        ph: at(p, 0, 0),
        pw: at(p, 1, 0),
        dh: dil(0),
        dw: dil(1),
    }
}

pub(crate) fn hw(shape: &[usize], n: usize) -> (usize, usize) {
    let r = shape.len();
    if n == 2 {
        (shape[r - 2], shape[r - 1])
    } else {
        (1, shape[r - 1])
    }
}

pub(crate) fn taps(
    shape: &[usize],
    out: &[usize],
    scale: &[f64],
    linear: bool,
    align: bool,
) -> (Vec<k::Tap>, Vec<k::Tap>) {
    let r = shape.len();
    let n = r - 2;
    let map = |j: usize| {
        k::interp_map(
            shape[2 + j],
            out[2 + j],
            scale
                .get(j.min(scale.len().saturating_sub(1)))
                .map(|s| 1.0 / s),
            linear,
            align,
        )
    };
    if n == 2 {
        (map(0), map(1))
    } else {
        (
            vec![k::Tap {
                i0: 0,
                i1: 0,
                l: 0.0,
            }],
            map(0),
        )
    }
}

pub(crate) fn pad_maps(
    shape: &[usize],
    pads: &[usize],
    mode: PadMode,
) -> std::result::Result<Vec<Vec<Option<usize>>>, String> {
    let m = pads.len() / 2;
    let r = shape.len();
    // maps in dim order: dim r - m first; pads list the last dim first
    (0..m)
        .map(|i| {
            let j = m - 1 - i;
            k::pad_map(shape[r - m + i], pads[2 * j], pads[2 * j + 1], mode)
        })
        .collect()
}

/// A pooling-family op on `x` into a destination.
pub fn pool_to<'w, T: Elem>(
    x: &ArrayViewD<'_, T>,
    spec: &PoolSpec,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: PoolElem,
{
    let op = spec.name();
    let shape = x.shape().to_vec();
    let oshape = spec.out_shape(&shape)?;
    let mut out = dest.get(op, &oshape)?;
    if out.is_empty() {
        return Ok(out);
    }
    let r = in_acc(x, &mut out, |xa, oa| match spec {
        PoolSpec::Window {
            max,
            k: kk,
            s,
            p,
            d,
            count_pad,
            ..
        } => {
            let g = win_of(&shape, &oshape, kk, s, p, d, *max);
            if *max {
                k::max_pool(xa, &g, oa)
            } else {
                k::avg_pool(xa, &g, *count_pad, oa)
            }
        }
        PoolSpec::Adaptive(o) => {
            k::adaptive_avg_pool(xa, hw(&shape, o.len()), hw(&oshape, o.len()), oa)
        }
        PoolSpec::Pad { pads, mode, value } => {
            let maps = pad_maps(&shape, pads, *mode)?;
            k::pad(xa, &shape, &maps, T::from_f64(*value).to_acc(), false, oa)
        }
        PoolSpec::Upsample {
            scale,
            linear,
            align_corners,
            ..
        } => {
            let (ty, tx) = taps(&shape, &oshape, scale, *linear, *align_corners);
            k::upsample(xa, hw(&shape, shape.len() - 2), &ty, &tx, *linear, oa)
        }
    });
    r.map_err(|m| Error::op(op, m))?;
    Ok(out)
}

/// The gradient of [`pool_to`]: `g` (the op's output shape) into the shape of `x` (the op's
/// input; max pooling reads its values to find each window's first maximum).
pub fn pool_backward_to<'w, T: Elem>(
    g: &ArrayViewD<'_, T>,
    x: &ArrayViewD<'_, T>,
    spec: &PoolSpec,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: PoolElem,
{
    let op = spec.name();
    let shape = x.shape().to_vec();
    let oshape = spec.out_shape(&shape)?;
    if g.shape() != oshape.as_slice() {
        return Err(Error::op(
            op,
            format!(
                "gradient {} does not match the output {} of input {}",
                fmt_shape(g.shape()),
                fmt_shape(&oshape),
                fmt_shape(&shape)
            ),
        ));
    }
    let mut out = dest.get(op, &shape)?;
    if out.is_empty() {
        return Ok(out);
    }
    let xw: Vec<T::Acc>;
    let max = matches!(spec, PoolSpec::Window { max: true, .. });
    // (only max pooling reads `x`)
    let xstd = max.then(|| x.as_standard_layout());
    let xs = if !max {
        &[]
    } else if let (true, Some(v)) = (
        TypeId::of::<T>() == TypeId::of::<T::Acc>(),
        xstd.as_ref().and_then(|a| a.as_slice()),
    ) {
        // (borrowed: an element-by-element copy through the n-d iterator took longer than
        // the kernel)
        // SAFETY: T and T::Acc are the same type (checked by TypeId).
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const T::Acc, v.len()) }
    } else {
        xw = x.iter().map(|v| v.to_acc()).collect();
        &xw[..]
    };
    let r = in_acc(g, &mut out, |ga, oa| match spec {
        PoolSpec::Window {
            max,
            k: kk,
            s,
            p,
            d,
            count_pad,
            ..
        } => {
            let w = win_of(&shape, &oshape, kk, s, p, d, *max);
            if *max {
                k::max_pool_backward(xs, ga, &w, oa)
            } else {
                k::avg_pool_backward(ga, &w, *count_pad, oa)
            }
        }
        PoolSpec::Adaptive(o) => {
            k::adaptive_avg_pool_backward(ga, hw(&shape, o.len()), hw(&oshape, o.len()), oa)
        }
        PoolSpec::Pad { pads, mode, .. } => {
            let maps = pad_maps(&shape, pads, *mode)?;
            k::pad(ga, &shape, &maps, T::Acc::of(0.0), true, oa)
        }
        PoolSpec::Upsample {
            scale,
            linear,
            align_corners,
            ..
        } => {
            let (ty, tx) = taps(&shape, &oshape, scale, *linear, *align_corners);
            k::upsample_backward(ga, hw(&shape, shape.len() - 2), &ty, &tx, *linear, oa)
        }
    });
    r.map_err(|m| Error::op(op, m))?;
    Ok(out)
}

/// [`pool_to`] with the spec as its plan word (the per-op Rust of mixed models).
pub fn pool_text_to<'w, T: Elem>(
    x: &ArrayViewD<'_, T>,
    spec: &str,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: PoolElem,
{
    let s = PoolSpec::parse(spec).map_err(|e| Error::op("pool", format!("internal: {e}")))?;
    pool_to(x, &s, dest)
}

/// [`pool_backward_to`] with the spec as its plan word.
pub fn pool_backward_text_to<'w, T: Elem>(
    g: &ArrayViewD<'_, T>,
    x: &ArrayViewD<'_, T>,
    spec: &str,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: PoolElem,
{
    let s = PoolSpec::parse(spec).map_err(|e| Error::op("pool", format!("internal: {e}")))?;
    pool_backward_to(g, x, &s, dest)
}
