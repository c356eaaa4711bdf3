//! Softmax and log-softmax along one axis, numerically stable (the maximum is subtracted
//! before exponentiating), computed in `T::Acc` (`f32` for `f16`/`bf16`).

use ndarray::{ArrayD, ArrayViewD, Axis, Zip};

use super::norm_axis;
use crate::scalar::{Num, Real};
use crate::{Elem, Result};

/// Applies `row(inputs, outputs)` to every lane along `axis`, with the lane widened to `T::Acc`
/// in a reused buffer.
fn along_axis<T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    axis: isize,
    row: impl Fn(&[T::Acc], &mut [T::Acc]),
) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    let ax = norm_axis(op, axis, a.ndim(), a.shape())?;
    let mut out = ArrayD::from_elem(a.raw_dim(), T::default());
    if a.is_empty() {
        return Ok(out);
    }
    let len = a.shape()[ax];
    let mut xs = vec![<T::Acc as Num>::ZERO; len];
    let mut ys = vec![<T::Acc as Num>::ZERO; len];
    Zip::from(out.lanes_mut(Axis(ax)))
        .and(a.lanes(Axis(ax)))
        .for_each(|mut o, x| {
            for (b, &v) in xs.iter_mut().zip(x.iter()) {
                *b = v.to_acc();
            }
            row(&xs, &mut ys);
            for (o, &y) in o.iter_mut().zip(&ys) {
                *o = T::from_acc(y);
            }
        });
    Ok(out)
}

/// Maximum of a non-empty lane (NaN propagates).
fn lane_max<A: Num>(xs: &[A]) -> A {
    xs.iter().fold(A::LOWEST, |m, &x| m.max(x))
}

/// `exp(x - max(x)) / sum(exp(x - max(x)))` along `axis`.
///
/// Lanes whose maximum is `+inf` or NaN give NaN; a lane of all `-inf` gives NaN (0/0), as in
/// PyTorch. Fails only on an out-of-range axis.
pub fn softmax<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize) -> Result<ArrayD<T>>
where
    T::Acc: Real,
{
    along_axis("softmax", a, axis, |xs, ys| {
        let m = lane_max(xs);
        let mut s = <T::Acc as Num>::ZERO;
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = x.sub(m).exp();
            s = s.add(*y);
        }
        for y in ys.iter_mut() {
            *y = y.div(s);
        }
    })
}

/// `x - max(x) - ln(sum(exp(x - max(x))))` along `axis` (the logarithm of [`softmax`], without
/// its underflow to `-inf` for very negative inputs). Fails only on an out-of-range axis.
pub fn log_softmax<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize) -> Result<ArrayD<T>>
where
    T::Acc: Real,
{
    along_axis("log_softmax", a, axis, |xs, ys| {
        let m = lane_max(xs);
        let mut s = <T::Acc as Num>::ZERO;
        for &x in xs {
            s = s.add(x.sub(m).exp());
        }
        let lse = s.ln();
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = x.sub(m).sub(lse);
        }
    })
}
