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
