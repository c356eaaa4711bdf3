//! `take_along`: per-position picks along the last axis (cross entropy's `logp[n, target[n]]`).

use super::{fmt_shape, index_of};
use crate::{Dest, Elem, Error, Result};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis};

/// `out[p] = input[p, indices[p]]` for every position `p` of `indices`, whose shape must be
/// `input`'s shape without its last axis. An index outside `0..C` (`C` the last axis; negative
/// ones included, as in PyTorch) is an error naming it and its position.
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
    let ishape = indices.shape();
    for (p, ((lane, &i), o)) in lanes
        .into_iter()
        .zip(indices.iter())
        .zip(out.iter_mut())
        .enumerate()
    {
        *o = lane[index_of(i, c, OP, ishape, p)?];
    }
    Ok(out)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use ndarray::array;

    #[cfg_attr(test, test)]
    pub(crate) fn picks_per_row() {
        let x = array![[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]].into_dyn();
        let t = array![2i64, 0].into_dyn();
        let y = take_along(&x.view(), &t.view()).unwrap();
        assert_eq!(y.as_slice().unwrap(), &[3.0, 4.0]);
        let bad = array![0i64, 3].into_dyn();
        let e = take_along(&x.view(), &bad.view()).unwrap_err().to_string();
        assert!(e.contains("index 3 at position [1]"), "{e}");
        // a negative class is an error, not the last class (PyTorch raises too)
        let neg = array![0i64, -1].into_dyn();
        let e = take_along(&x.view(), &neg.view()).unwrap_err().to_string();
        assert!(
            e.contains("take_along")
                && e.contains("index -1 at position [1]")
                && e.contains("negative"),
            "{e}"
        );
        let wrong = array![0i64].into_dyn();
        assert!(take_along(&x.view(), &wrong.view()).is_err());
    }
}
