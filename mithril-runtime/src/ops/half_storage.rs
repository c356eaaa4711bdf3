//! f16 / bf16 storage for ops whose kernels exist in f32 (convolution, attention): the
//! operands widened to f32 (half storage's compute type, as in the GEMM), the f32 op, and each
//! result rounded once back to the storage type (nearest even).

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};

use crate::{Dest, Elem, Error, Result};

/// `a` widened to f32, in logical (row-major) order: a strided view is gathered.
pub(crate) fn widen<T: Elem<Acc = f32>>(a: &ArrayViewD<'_, T>) -> ArrayD<f32> {
    a.mapv(|x| x.to_acc())
}

/// `y` (the f32 result, `None` when the op wrote none) rounded once into `dest`.
pub(crate) fn narrow<'w, T: Elem<Acc = f32>>(
    op: &str,
    y: Option<ArrayD<f32>>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let y = y.ok_or_else(|| Error::op(op, "internal: no f32 result"))?;
    let mut out = dest.get(op, y.shape())?;
    out.zip_mut_with(&y, |o, &v| *o = T::from_acc(v));
    Ok(out)
}
