//! `take_along`: per-position picks along the last axis (cross entropy's `logp[n, target[n]]`).

use super::{fmt_shape, index_of};
use crate::{Dest, Elem, Error, Result};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis};

/// `out[p] = input[p, indices[p]]` for every position `p` of `indices`, whose shape must be
/// `input`'s shape without its last axis. Negative indices count from the end; an index out of
/// range is an error naming it.
pub fn take_along<T: Elem, I: Elem>(
    input: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
) -> Result<ArrayD<T>> {
    crate::owned(|d| take_along_to(input, indices, d).map(|_| ()))
}

/// [`take_along`] into a destination.
pub fn take_along_to<'w, T: Elem, I: Elem>(
    input: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "take_along";
    let shape = input.shape();
    if shape.is_empty() || &shape[..shape.len() - 1] != indices.shape() {
        return Err(Error::op(
            OP,
            format!(
                "indices of shape {} must have the input's shape {} without its last axis",
                fmt_shape(indices.shape()),
                fmt_shape(shape)
            ),
        ));
    }
    let c = shape[shape.len() - 1];
    let lanes = input.lanes(Axis(input.ndim() - 1));
    let mut out = dest.get(OP, indices.shape())?;
    for ((lane, &i), o) in lanes.into_iter().zip(indices.iter()).zip(out.iter_mut()) {
        *o = lane[index_of(i, c, OP)?];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn picks_per_row() {
        let x = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn();
        let t = array![2i64, -3].into_dyn();
        let y = take_along(&x.view(), &t.view()).unwrap();
        assert_eq!(y.as_slice().unwrap(), &[3.0, 4.0]);
        let bad = array![3i64, 0].into_dyn();
        assert!(take_along(&x.view(), &bad.view()).is_err());
        let wrong = array![0i64].into_dyn();
        assert!(take_along(&x.view(), &wrong.view()).is_err());
    }
}
