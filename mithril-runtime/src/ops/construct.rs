//! Tensors built from shapes and parts: `stack`, `zeros_like` / `ones_like` (`full_like`),
//! `arange`.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis};

use super::{checked_size, fmt_shape};
use crate::{Dest, Elem, Error, Result};

/// Stacks equally shaped `parts` along a new axis `axis` (in `0..=rank`, negative counts from
/// the end of the result's axes; `torch.stack`).
pub fn stack<T: Elem>(parts: &[ArrayViewD<'_, T>], axis: isize) -> Result<ArrayD<T>> {
    crate::owned(|d| stack_to(parts, axis, d).map(|_| ()))
}

/// [`stack`] into a destination.
pub fn stack_to<'w, T: Elem>(
    parts: &[ArrayViewD<'_, T>],
    axis: isize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "stack";
    let Some(first) = parts.first() else {
        return Err(Error::op(OP, "nothing to stack (no parts)"));
    };
    for p in parts {
        if p.shape() != first.shape() {
            return Err(Error::op(
                OP,
                format!(
                    "all parts need the same shape, got {} and {}",
                    fmt_shape(first.shape()),
                    fmt_shape(p.shape())
                ),
            ));
        }
    }
    let ax = super::norm_axis(OP, axis, first.ndim() + 1, first.shape())?;
    let mut shape = first.shape().to_vec();
    shape.insert(ax, parts.len());
    checked_size(OP, &shape)?;
    let mut out = dest.get(OP, &shape)?;
    for (k, p) in parts.iter().enumerate() {
        out.index_axis_mut(Axis(ax), k).assign(p);
    }
    Ok(out)
}

/// A tensor of `like`'s shape filled with `value` (converted to `T`; `zeros_like` is
/// `value = 0`, `ones_like` is `value = 1`).
pub fn full_like_to<'w, T: Elem, U>(
    like: &ArrayViewD<'_, U>,
    value: f64,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let mut out = dest.get("full_like", like.shape())?;
    out.fill(T::from_f64(value));
    Ok(out)
}

/// `len` values `start + i * step` (`torch.arange(start, end, step)` has
/// `len = ceil((end - start) / step)`; the compiler computes it, from compile-time numbers or a
/// symbolic dim).
pub fn arange_to<'w, T: Elem>(
    start: f64,
    step: f64,
    len: usize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let mut out = dest.get("arange", &[len])?;
    for (i, o) in out.iter_mut().enumerate() {
        *o = T::from_f64(start + i as f64 * step);
    }
    Ok(out)
}
