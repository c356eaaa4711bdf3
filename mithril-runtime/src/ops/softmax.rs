//! Softmax and log-softmax along one axis, numerically stable (the maximum is subtracted
//! before exponentiating), computed in `T::Acc` (`f32` for `f16`/`bf16`).
//!
//! Along the last axis of a contiguous `f32`/`f64`/`f16`/`bf16` tensor into a contiguous
//! destination, the multiversioned row kernels of [`mithril_kernels::rows`] run (statistics
//! accumulated in `f64` for `f32` data, exponentials from [`mithril_kernels::vmath`]; the same
//! bits on every ISA path). Otherwise each lane is read three times (max, sum of exponentials,
//! output) instead of being widened into a buffer, so nothing is allocated; softmax recomputes
//! `exp` in the last pass.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, Zip};

use super::norm_axis;
use super::reduce::{row_kernel, RowOp};
use crate::scalar::{Num, Real};
use crate::{Dest, Elem, Result};

/// Applies `row(input lane, output lane)` to every lane along `axis`.
fn along_axis<'w, T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    axis: isize,
    dest: Dest<'w, T>,
    kernel: RowOp,
    row: impl Fn(ndarray::ArrayView1<'_, T>, ndarray::ArrayViewMut1<'_, T>),
) -> Result<ArrayViewMutD<'w, T>> {
    let ax = norm_axis(op, axis, a.ndim(), a.shape())?;
    let mut out = dest.get(op, a.shape())?;
    if a.is_empty() {
        return Ok(out);
    }
    if ax + 1 == a.ndim() {
        if let (Some(x), Some(o)) = (a.as_slice(), out.as_slice_mut()) {
            if row_kernel(kernel, x, a.shape()[ax], o) {
                return Ok(out);
            }
        }
    }
    Zip::from(out.lanes_mut(Axis(ax)))
        .and(a.lanes(Axis(ax)))
        .for_each(|o, x| row(x, o));
    Ok(out)
}

/// Maximum and `sum(exp(x - max))` of a non-empty lane (NaN propagates).
fn max_and_sum<T: Elem>(x: &ndarray::ArrayView1<'_, T>) -> (T::Acc, T::Acc)
where
    T::Acc: Real,
{
    let m = x
        .iter()
        .fold(<T::Acc as Num>::LOWEST, |m, &v| m.max(v.to_acc()));
    let s = x.iter().fold(<T::Acc as Num>::ZERO, |s, &v| {
        s.add(v.to_acc().sub(m).exp())
    });
    (m, s)
}

/// `exp(x - max(x)) / sum(exp(x - max(x)))` along `axis`.
///
/// Lanes whose maximum is `+inf` or NaN give NaN; a lane of all `-inf` gives NaN (0/0), as in
/// PyTorch. Fails only on an out-of-range axis.
pub fn softmax<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize) -> Result<ArrayD<T>>
where
    T::Acc: Real,
{
    crate::owned(|d| softmax_to(a, axis, d).map(|_| ()))
}

/// [`softmax`] into a destination.
pub fn softmax_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    axis: isize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Real,
{
    along_axis("softmax", a, axis, dest, RowOp::Softmax, |x, mut o| {
        let (m, s) = max_and_sum(&x);
        let inv = <T::Acc as Num>::ONE.div(s);
        Zip::from(&mut o)
            .and(&x)
            .for_each(|o, &v| *o = T::from_acc(v.to_acc().sub(m).exp().mul(inv)));
    })
}

/// `x - max(x) - ln(sum(exp(x - max(x))))` along `axis` (the logarithm of [`softmax`], without
/// its underflow to `-inf` for very negative inputs). Fails only on an out-of-range axis.
pub fn log_softmax<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize) -> Result<ArrayD<T>>
where
    T::Acc: Real,
{
    crate::owned(|d| log_softmax_to(a, axis, d).map(|_| ()))
}

/// [`log_softmax`] into a destination.
pub fn log_softmax_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    axis: isize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Real,
{
    along_axis(
        "log_softmax",
        a,
        axis,
        dest,
        RowOp::LogSoftmax,
        |x, mut o| {
            let (m, s) = max_and_sum(&x);
            let lse = s.ln();
            Zip::from(&mut o)
                .and(&x)
                .for_each(|o, &v| *o = T::from_acc(v.to_acc().sub(m).sub(lse)));
        },
    )
}

/// A layer norm (`rms` false: `(x - mean) / √(var + eps)`, the biased variance) or an RMS norm
/// (`rms`: `x / √(mean(x²) + eps)`) over the last axis of `x`, then `· weight` and `+ bias`
/// when given (`[D]`, `D` the last dim; an RMS norm takes no bias): one pass of the row kernels
/// [`mithril_kernels::rows::layer_norm`] / [`rms_norm`](mithril_kernels::rows::rms_norm) per
/// row (AVX-512 / AVX2 / baseline, statistics accumulated in `f64` for `f32` data, `f32` for
/// `f16` / `bf16`). The plan op of the `LayerNorm` / `RMSNorm` graphs fused by the compiler's
/// `norm_fusion` pass. `Err` for a weight or bias that is not `[D]`, an RMS norm with a bias,
/// or a non-float `T`.
pub fn norm_to<'w, T: Elem>(
    x: &ArrayViewD<'_, T>,
    weight: Option<&ArrayViewD<'_, T>>,
    bias: Option<&ArrayViewD<'_, T>>,
    eps: f64,
    rms: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let op = if rms { "rms_norm" } else { "layer_norm" };
    let cols = x.shape().last().copied().unwrap_or(1);
    for (v, what) in [(weight, "weight"), (bias, "bias")] {
        if let Some(v) = v {
            if v.shape() != [cols] {
                return Err(crate::Error::op(
                    op,
                    format!(
                        "the {what} must be [{cols}] (the input's last dim), given {} for input {}",
                        super::fmt_shape(v.shape()),
                        super::fmt_shape(x.shape())
                    ),
                ));
            }
        }
    }
    if rms && bias.is_some() {
        return Err(crate::Error::op(op, "an RMS norm takes no bias"));
    }
    let mut out = dest.get(op, x.shape())?;
    if x.is_empty() {
        return Ok(out);
    }
    let xs = x.as_standard_layout();
    let (ws, bs) = (
        weight.map(|w| w.as_standard_layout()),
        bias.map(|b| b.as_standard_layout()),
    );
    let internal = |what: &str| crate::Error::op(op, format!("internal: {what} not contiguous"));
    let xd = xs.as_slice().ok_or_else(|| internal("input"))?;
    let wd = match &ws {
        Some(w) => Some(w.as_slice().ok_or_else(|| internal("weight"))?),
        None => None,
    };
    let bd = match &bs {
        Some(b) => Some(b.as_slice().ok_or_else(|| internal("bias"))?),
        None => None,
    };
    let o = out.as_slice_mut().ok_or_else(|| internal("destination"))?;
    if !norm_rows(xd, cols, wd, bd, eps, rms, o) {
        return Err(crate::Error::op(
            op,
            format!(
                "runs on float tensors (f32, f64, f16, bf16), found {}",
                T::DTYPE.name()
            ),
        ));
    }
    Ok(out)
}

/// [`norm_to`]'s rows through the kernels of `T`'s type; `false` when `T` is not a row type.
fn norm_rows<T: Elem>(
    x: &[T],
    cols: usize,
    w: Option<&[T]>,
    b: Option<&[T]>,
    eps: f64,
    rms: bool,
    out: &mut [T],
) -> bool {
    use mithril_kernels::rows::{self, RowElem};
    use std::any::TypeId;
    fn go<U: RowElem>(
        x: &[U],
        cols: usize,
        w: Option<&[U]>,
        b: Option<&[U]>,
        eps: f64,
        rms: bool,
        out: &mut [U],
    ) {
        if rms {
            rows::rms_norm(x, cols, w, eps, out, None)
        } else {
            rows::layer_norm(x, cols, w, b, eps, out, None)
        }
    }
    macro_rules! try_types {
        ($($u:ty),*) => {$(
            if TypeId::of::<T>() == TypeId::of::<$u>() {
                // SAFETY: `T` is `$u` (same `TypeId`), so the slices are reinterpreted as
                // themselves.
                let re = |s: &[T]| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const $u, s.len()) };
                // SAFETY: as above.
                let o = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut $u, out.len()) };
                go(re(x), cols, w.map(re), b.map(re), eps, rms, o);
                return true;
            }
        )*};
    }
    try_types!(f32, f64, half::f16, half::bf16);
    false
}
