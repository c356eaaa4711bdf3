//! Backward operations the compiler's autodiff emits for structural primitives: scatters of a
//! gradient back into zeros shaped like the forward operand.

use super::{fmt_shape, index_of, norm_axis, SliceArg};
use crate::scalar::Num;
use crate::{Dest, Elem, Error, Result};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, IxDyn};

/// Gradient of `take_along(input, indices)`: zeros shaped like `input` with `g[p]` added at
/// `[p, indices[p]]`.
pub fn take_along_backward<T: Elem, I: Elem>(
    g: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    like: &ArrayViewD<'_, T>,
) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    crate::owned(|d| take_along_backward_to(g, indices, like, d).map(|_| ()))
}

/// [`take_along_backward`] into a destination.
pub fn take_along_backward_to<'w, T: Elem, I: Elem>(
    g: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    like: &ArrayViewD<'_, T>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Num,
{
    const OP: &str = "take_along (gradient)";
    let shape = like.shape();
    if shape.is_empty()
        || shape[..shape.len() - 1] != *indices.shape()
        || g.shape() != indices.shape()
    {
        return Err(Error::op(
            OP,
            format!(
                "shapes {} / {} / {} do not fit",
                fmt_shape(g.shape()),
                fmt_shape(indices.shape()),
                fmt_shape(shape)
            ),
        ));
    }
    let c = shape[shape.len() - 1];
    let mut out = dest.get(OP, shape)?;
    out.fill(T::from_acc(<T::Acc as Num>::ZERO));
    let last = Axis(shape.len() - 1);
    let ishape = indices.shape();
    for (p, ((mut lane, &i), &gv)) in out
        .lanes_mut(last)
        .into_iter()
        .zip(indices.iter())
        .zip(g.iter())
        .enumerate()
    {
        let k = index_of(i, c, OP, ishape, p)?;
        lane[k] = T::from_acc(lane[k].to_acc().add(gv.to_acc()));
    }
    Ok(out)
}

/// [`gather_backward`] into a destination (narrow floats accumulate in a temporary `f32`
/// buffer; the others accumulate in place).
pub fn gather_backward_to<'w, T: Elem, I: Elem>(
    g: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    like: &ArrayViewD<'_, T>,
    axis: isize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Num,
{
    const OP: &str = "gather (gradient)";
    if matches!(T::DTYPE, crate::DType::F16 | crate::DType::BF16) {
        let r = gather_backward_acc(g, indices, like, axis)?;
        let mut out = dest.get(OP, r.shape())?;
        out.assign(&r);
        return Ok(out);
    }
    let ax = norm_axis(OP, axis, like.ndim(), like.shape())?;
    let ts = like.shape();
    let pre: usize = ts[..ax].iter().product();
    let d = ts[ax];
    let post: usize = ts[ax + 1..].iter().product();
    let n = indices.len();
    if g.len() != pre * n * post {
        return Err(Error::op(
            OP,
            format!(
                "gradient {} does not fit table {} and {} indices",
                fmt_shape(g.shape()),
                fmt_shape(ts),
                n
            ),
        ));
    }
    let ishape = indices.shape();
    for (p, &i) in indices.iter().enumerate() {
        index_of(i, d, OP, ishape, p)?;
    }
    if !g.is_standard_layout() {
        crate::alloc::check(OP, g.len(), std::mem::size_of::<T>())?;
    }
    let gs = g.as_standard_layout();
    let gs = gs
        .as_slice()
        .ok_or_else(|| Error::op(OP, "internal: gradient is not contiguous"))?;
    let mut out = dest.get(OP, ts)?;
    let acc = out
        .as_slice_mut()
        .ok_or_else(|| Error::op(OP, "internal: destination is not contiguous"))?;
    acc.fill(T::from_acc(<T::Acc as Num>::ZERO));
    for a in 0..pre {
        for (j, &i) in indices.iter().enumerate() {
            let r = index_of(i, d, OP, ishape, j)?;
            let src = (a * n + j) * post;
            let dst = (a * d + r) * post;
            for k in 0..post {
                acc[dst + k] = T::from_acc(acc[dst + k].to_acc().add(gs[src + k].to_acc()));
            }
        }
    }
    Ok(out)
}

/// [`slice_backward`] into a destination.
pub fn slice_backward_to<'w, T: Elem>(
    g: &ArrayViewD<'_, T>,
    like: &ArrayViewD<'_, T>,
    args: &[SliceArg],
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Num,
{
    const OP: &str = "slice (gradient)";
    let mut out = dest.get(OP, like.shape())?;
    out.fill(T::from_acc(<T::Acc as Num>::ZERO));
    let mut view = super::shape::slice_view(out.view_mut(), args, OP)?;
    if view.shape() != g.shape() {
        return Err(Error::op(
            OP,
            format!(
                "gradient {} does not fit the slice of {}",
                fmt_shape(g.shape()),
                fmt_shape(like.shape())
            ),
        ));
    }
    view.assign(g);
    Ok(out)
}

/// [`concat_part`] into a destination.
pub fn concat_part_to<'w, T: Elem>(
    g: &ArrayViewD<'_, T>,
    part_shapes: &[&[usize]],
    axis: isize,
    k: usize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "concat (gradient)";
    let ax = norm_axis(OP, axis, g.ndim(), g.shape())?;
    let offset: usize = part_shapes
        .iter()
        .take(k)
        .map(|s| s.get(ax).copied().unwrap_or(0))
        .sum();
    let len = part_shapes
        .get(k)
        .and_then(|s| s.get(ax))
        .copied()
        .ok_or_else(|| Error::op(OP, "no such part"))?;
    if offset + len > g.shape()[ax] {
        return Err(Error::op(OP, "parts do not fit the gradient"));
    }
    let v = g.slice_axis(Axis(ax), ndarray::Slice::from(offset..offset + len));
    let mut out = dest.get(OP, v.shape())?;
    out.assign(&v);
    Ok(out)
}

/// Gradient of `gather(table, indices, axis)`: zeros shaped like `table`, each gradient slice
/// added back at the row it was read from (repeated indices accumulate).
pub fn gather_backward<T: Elem, I: Elem>(
    g: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    like: &ArrayViewD<'_, T>,
    axis: isize,
) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    crate::owned(|d| gather_backward_to(g, indices, like, axis, d).map(|_| ()))
}

/// [`gather_backward`] accumulating in `T::Acc` in a temporary buffer (the f16/bf16 path: repeated
/// indices are summed in f32 and rounded once).
fn gather_backward_acc<T: Elem, I: Elem>(
    g: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    like: &ArrayViewD<'_, T>,
    axis: isize,
) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    const OP: &str = "gather (gradient)";
    let ax = norm_axis(OP, axis, like.ndim(), like.shape())?;
    let ts = like.shape();
    let pre: usize = ts[..ax].iter().product();
    let d = ts[ax];
    let post: usize = ts[ax + 1..].iter().product();
    let n = indices.len();
    if g.len() != pre * n * post {
        return Err(Error::op(
            OP,
            format!(
                "gradient {} does not fit table {} and {} indices",
                fmt_shape(g.shape()),
                fmt_shape(ts),
                n
            ),
        ));
    }
    crate::alloc::check(OP, n, std::mem::size_of::<usize>())?;
    crate::alloc::check(OP, g.len(), std::mem::size_of::<T>())?;
    crate::alloc::check_shape(
        OP,
        ts,
        std::mem::size_of::<T::Acc>() + std::mem::size_of::<T>(),
    )?;
    let ishape = indices.shape();
    let idx: Vec<usize> = indices
        .iter()
        .enumerate()
        .map(|(p, &i)| index_of(i, d, OP, ishape, p))
        .collect::<Result<_>>()?;
    let gs: Vec<T> = g.iter().copied().collect();
    let mut acc = vec![<T::Acc as Num>::ZERO; pre * d * post];
    for a in 0..pre {
        for (j, &r) in idx.iter().enumerate() {
            let src = (a * n + j) * post;
            let dst = (a * d + r) * post;
            for k in 0..post {
                acc[dst + k] = acc[dst + k].add(gs[src + k].to_acc());
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(ts), acc.into_iter().map(T::from_acc).collect())
        .map_err(|e| Error::op(OP, e.to_string()))
}

/// Gradient of `slice(input, args)`: zeros shaped like `input` with `g` added at the selected
/// positions (the same view the forward slice reads, taken mutably).
pub fn slice_backward<T: Elem>(
    g: &ArrayViewD<'_, T>,
    like: &ArrayViewD<'_, T>,
    args: &[SliceArg],
) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    crate::owned(|d| slice_backward_to(g, like, args, d).map(|_| ()))
}

/// Gradient of the `k`-th operand of `concat(parts, axis)`: its section of `g`.
pub fn concat_part<T: Elem>(
    g: &ArrayViewD<'_, T>,
    part_shapes: &[&[usize]],
    axis: isize,
    k: usize,
) -> Result<ArrayD<T>> {
    crate::owned(|d| concat_part_to(g, part_shapes, axis, k, d).map(|_| ()))
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use ndarray::array;

    #[cfg_attr(test, test)]
    pub(crate) fn scatters() {
        let like = ArrayD::<f64>::zeros(IxDyn(&[2, 3]));
        let g = array![1.0, 2.0].into_dyn();
        let t = array![2i64, 0].into_dyn();
        let r = take_along_backward(&g.view(), &t.view(), &like.view()).unwrap();
        assert_eq!(r, array![[0.0, 0.0, 1.0], [2.0, 0.0, 0.0]].into_dyn());

        let table = ArrayD::<f64>::zeros(IxDyn(&[4, 2]));
        let gg = array![[1.0, 1.0], [2.0, 3.0], [4.0, 5.0]].into_dyn();
        let idx = array![1i32, 3, 1].into_dyn();
        let r = gather_backward(&gg.view(), &idx.view(), &table.view(), 0).unwrap();
        assert_eq!(
            r,
            array![[0.0, 0.0], [5.0, 6.0], [0.0, 0.0], [2.0, 3.0]].into_dyn()
        );

        let x = ArrayD::<f64>::zeros(IxDyn(&[3, 4]));
        let gs = array![[1.0, 2.0], [3.0, 4.0]].into_dyn();
        let args = [
            SliceArg::Range {
                start: Some(1),
                end: None,
                step: 1,
            },
            SliceArg::Range {
                start: None,
                end: None,
                step: -2,
            },
        ];
        let r = slice_backward(&gs.view(), &x.view(), &args).unwrap();
        assert_eq!(
            r,
            array![
                [0.0, 0.0, 0.0, 0.0],
                [0.0, 2.0, 0.0, 1.0],
                [0.0, 4.0, 0.0, 3.0]
            ]
            .into_dyn()
        );

        let gc = array![[1.0, 2.0, 3.0]].into_dyn();
        let p = concat_part(&gc.view(), &[&[1, 2], &[1, 1]], 1, 1).unwrap();
        assert_eq!(p, array![[3.0]].into_dyn());
    }
}
