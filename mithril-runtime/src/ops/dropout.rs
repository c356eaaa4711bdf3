//! `dropout`: in a training call each element is kept with probability `1 - p` and scaled by
//! `1 / (1 - p)`, else zeroed; in an evaluation call the identity. The mask is drawn from the
//! counter-based Philox4x32-10 generator (`mithril_kernels::philox`) keyed by the call's seed
//! and counting (element index, op id): the same seed gives the same mask, on the CPU and in
//! the CUDA backend's `mt_philox`, and the gradient (the same op over the output gradient)
//! reuses it.

use crate::error::{Error, Result};
use crate::workspace::Dest;
use crate::Elem;
use mithril_kernels::philox;
use ndarray::{ArrayViewD, ArrayViewMutD};
use std::any::TypeId;

/// [`dropout_to`]'s attributes: the drop probability, the op's id in its model, and the call.
#[derive(Clone, Copy, Debug)]
pub struct DropoutCall {
    /// drop probability `p` in `[0, 1]`
    pub p: f64,
    /// the op's id in its model (different ops draw different masks)
    pub op: u32,
    /// the call's seed (`Mode::seed`)
    pub seed: u64,
    /// a training call (else the identity)
    pub training: bool,
}

/// Dropout of `a` (see the module) into `dest`. `Err` for `p` outside `[0, 1]`.
pub fn dropout_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    c: DropoutCall,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    if !(0.0..=1.0).contains(&c.p) {
        return Err(Error::op(
            "dropout",
            format!("drop probability p = {} is outside [0, 1]", c.p),
        ));
    }
    let mut out = dest.get("dropout", a.shape())?;
    if !c.training || c.p == 0.0 {
        out.zip_mut_with(a, |o, &x| *o = x);
        return Ok(out);
    }
    let thr = philox::threshold(c.p);
    let scale = 1.0 / (1.0 - c.p);
    let contiguous = a.as_slice().is_some() && out.as_slice().is_some();
    if contiguous && TypeId::of::<T>() == TypeId::of::<f32>() {
        let (x, o) = (
            a.as_slice().unwrap_or(&[]),
            out.as_slice_mut().unwrap_or(&mut []),
        );
        // SAFETY: T is f32 (checked above): same layout
        let x: &[f32] = unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) };
        let o: &mut [f32] =
            unsafe { std::slice::from_raw_parts_mut(o.as_mut_ptr().cast(), o.len()) };
        philox::dropout_f32(x, o, c.seed, c.op, 0, thr, scale as f32);
        return Ok(out);
    }
    if contiguous && TypeId::of::<T>() == TypeId::of::<f64>() {
        let (x, o) = (
            a.as_slice().unwrap_or(&[]),
            out.as_slice_mut().unwrap_or(&mut []),
        );
        // SAFETY: T is f64 (checked above): same layout
        let x: &[f64] = unsafe { std::slice::from_raw_parts(x.as_ptr().cast(), x.len()) };
        let o: &mut [f64] =
            unsafe { std::slice::from_raw_parts_mut(o.as_mut_ptr().cast(), o.len()) };
        philox::dropout_f64(x, o, c.seed, c.op, 0, thr, scale);
        return Ok(out);
    }
    // other layouts and dtypes: element by element in logical (row-major) order, the order
    // the element indices count in
    for (i, (o, &x)) in out.iter_mut().zip(a.iter()).enumerate() {
        let keep = thr.is_some_and(|t| philox::element_bits(c.seed, c.op, i as u64) >= t);
        *o = if keep {
            T::from_f64(x.to_f64() * scale)
        } else {
            T::from_f64(0.0)
        };
    }
    Ok(out)
}
