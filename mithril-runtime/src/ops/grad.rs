//! Backward operations the compiler's autodiff emits for structural primitives: scatters of a
//! gradient back into zeros shaped like the forward operand.

use super::{fmt_shape, norm_axis, SliceArg};
use crate::scalar::Num;
use crate::{Elem, Error, Result};
use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};

fn index_of<I: Elem>(v: I, n: usize, op: &str) -> Result<usize> {
    let i = v.to_f64() as i64;
    let w = if i < 0 { i + n as i64 } else { i };
    if w < 0 || w >= n as i64 {
        return Err(Error::op(
            op,
            format!("index {i} is out of range for an axis of size {n}"),
        ));
    }
    Ok(w as usize)
}

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
    const OP: &str = "take_along (gradient)";
    let shape = like.shape().to_vec();
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
                fmt_shape(&shape)
            ),
        ));
    }
    let c = shape[shape.len() - 1];
    let mut out = ArrayD::<T>::from_elem(IxDyn(&shape), T::from_acc(<T::Acc as Num>::ZERO));
    let last = Axis(shape.len() - 1);
    for ((mut lane, &i), &gv) in out
        .lanes_mut(last)
        .into_iter()
        .zip(indices.iter())
        .zip(g.iter())
    {
        let k = index_of(i, c, OP)?;
        lane[k] = T::from_acc(lane[k].to_acc().add(gv.to_acc()));
    }
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
    let idx: Vec<usize> = indices
        .iter()
        .map(|&i| index_of(i, d, OP))
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

/// For each axis of the input of `slice`, the selected indices (or `None` for an index arg).
fn selections(shape: &[usize], args: &[SliceArg], op: &str) -> Result<Vec<(Vec<usize>, bool)>> {
    let mut out = Vec::new();
    let mut ax = 0;
    for a in args {
        match a {
            SliceArg::NewAxis => {}
            SliceArg::Index(i) => {
                let n = *shape
                    .get(ax)
                    .ok_or_else(|| Error::op(op, "too many indices"))?;
                let w = if *i < 0 { i + n as isize } else { *i };
                if w < 0 || w >= n as isize {
                    return Err(Error::op(
                        op,
                        format!("index {i} is out of range for an axis of size {n}"),
                    ));
                }
                out.push((vec![w as usize], false));
                ax += 1;
            }
            SliceArg::Range { start, end, step } => {
                let n = *shape
                    .get(ax)
                    .ok_or_else(|| Error::op(op, "too many indices"))?
                    as isize;
                let st = *step;
                if st == 0 {
                    return Err(Error::op(op, "slice step cannot be 0"));
                }
                let norm = |v: isize| if v < 0 { v + n } else { v };
                let mut idx = Vec::new();
                if st > 0 {
                    let s = start.map(norm).unwrap_or(0).clamp(0, n);
                    let e = end.map(norm).unwrap_or(n).clamp(0, n);
                    let mut i = s;
                    while i < e {
                        idx.push(i as usize);
                        i += st;
                    }
                } else {
                    let s = start.map(norm).unwrap_or(n - 1).clamp(-1, n - 1);
                    let e = end.map(norm).unwrap_or(-1).clamp(-1, n - 1);
                    let mut i = s;
                    while i > e {
                        idx.push(i as usize);
                        i += st;
                    }
                }
                out.push((idx, true));
                ax += 1;
            }
        }
    }
    for &n in &shape[ax.min(shape.len())..] {
        out.push(((0..n).collect(), true));
    }
    Ok(out)
}

/// Gradient of `slice(input, args)`: zeros shaped like `input` with `g` added at the selected
/// positions.
pub fn slice_backward<T: Elem>(
    g: &ArrayViewD<'_, T>,
    like: &ArrayViewD<'_, T>,
    args: &[SliceArg],
) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    const OP: &str = "slice (gradient)";
    let sel = selections(like.shape(), args, OP)?;
    let kept: Vec<usize> = sel
        .iter()
        .filter(|(_, k)| *k)
        .map(|(v, _)| v.len())
        .collect();
    let gsq: Vec<T> = g.iter().copied().collect();
    if gsq.len() != kept.iter().product::<usize>() {
        return Err(Error::op(
            OP,
            format!(
                "gradient {} does not fit the slice of {}",
                fmt_shape(g.shape()),
                fmt_shape(like.shape())
            ),
        ));
    }
    let mut out = ArrayD::<T>::from_elem(IxDyn(like.shape()), T::from_acc(<T::Acc as Num>::ZERO));
    let r = sel.len();
    let mut pos = vec![0usize; r];
    for gv in gsq {
        let idx: Vec<usize> = (0..r).map(|a| sel[a].0[pos[a]]).collect();
        if let Some(o) = out.get_mut(IxDyn(&idx)) {
            *o = T::from_acc(o.to_acc().add(gv.to_acc()));
        }
        // advance the odometer over the selected positions
        for a in (0..r).rev() {
            pos[a] += 1;
            if pos[a] < sel[a].0.len() {
                break;
            }
            pos[a] = 0;
        }
    }
    Ok(out)
}

/// Gradient of the `k`-th operand of `concat(parts, axis)`: its section of `g`.
pub fn concat_part<T: Elem>(
    g: &ArrayViewD<'_, T>,
    part_shapes: &[&[usize]],
    axis: isize,
    k: usize,
) -> Result<ArrayD<T>> {
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
    Ok(
        g.slice_axis(Axis(ax), ndarray::Slice::from(offset..offset + len))
            .to_owned(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn scatters() {
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
