//! Shape and data-movement operations: `transpose reshape concat slice gather cast`.

use std::any::{Any, TypeId};

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Slice};

use super::{checked_size, fmt_shape, map1, norm_axis, to_standard};
use crate::{Elem, Error, Result};

/// Permutes the axes: output axis `i` is input axis `perm[i]` (NumPy `transpose`).
///
/// `perm` must be a permutation of `0..ndim`. The result is in standard layout.
pub fn transpose<T: Elem>(a: &ArrayViewD<'_, T>, perm: &[usize]) -> Result<ArrayD<T>> {
    let nd = a.ndim();
    let mut seen = vec![false; nd];
    let valid = perm.len() == nd
        && perm.iter().all(|&p| {
            let fresh = p < nd && !seen[p];
            if fresh {
                seen[p] = true;
            }
            fresh
        });
    if !valid {
        return Err(Error::op(
            "transpose",
            format!(
                "{perm:?} is not a permutation of the {nd} axes of shape {}",
                fmt_shape(a.shape())
            ),
        ));
    }
    Ok(to_standard(&a.view().permuted_axes(perm.to_vec())))
}

/// Reshapes to `shape` in row-major order (NumPy `reshape`, always a copy).
///
/// At most one entry may be `-1`; it is inferred from the element count. Other negative
/// entries, or an element count that does not match, are errors.
pub fn reshape<T: Elem>(a: &ArrayViewD<'_, T>, shape: &[isize]) -> Result<ArrayD<T>> {
    const OP: &str = "reshape";
    let err = |why: &str| {
        Error::op(
            OP,
            format!(
                "cannot reshape {} ({} elements) into {shape:?}: {why}",
                fmt_shape(a.shape()),
                a.len()
            ),
        )
    };
    let mut infer = None;
    let mut dims = Vec::with_capacity(shape.len());
    for (i, &d) in shape.iter().enumerate() {
        if d == -1 {
            if infer.is_some() {
                return Err(err("more than one -1"));
            }
            infer = Some(i);
            dims.push(1);
        } else if d < 0 {
            return Err(err("negative dimension"));
        } else {
            dims.push(d as usize);
        }
    }
    let known = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err("too many elements"))?;
    let total = a.len();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(err("the -1 dimension cannot be inferred"));
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(err("element counts differ"));
    }
    let data: Vec<T> = match a.to_slice() {
        Some(s) => s.to_vec(),
        None => a.iter().copied().collect(),
    };
    ArrayD::from_shape_vec(IxDyn(&dims), data).map_err(|e| err(&e.to_string()))
}

/// Concatenates `parts` along `axis` (NumPy `concatenate`).
///
/// Every part must have the same rank (at least 1) and the same shape outside `axis`; at least
/// one part is required.
pub fn concat<T: Elem>(parts: &[ArrayViewD<'_, T>], axis: isize) -> Result<ArrayD<T>> {
    const OP: &str = "concat";
    let Some(first) = parts.first() else {
        return Err(Error::op(OP, "nothing to concatenate (no parts)"));
    };
    let nd = first.ndim();
    if nd == 0 {
        return Err(Error::op(OP, "cannot concatenate 0-D arrays"));
    }
    let ax = norm_axis(OP, axis, nd, first.shape())?;
    let mut shape = first.shape().to_vec();
    shape[ax] = 0;
    for p in parts {
        let same = p.ndim() == nd
            && p.shape()
                .iter()
                .zip(first.shape())
                .enumerate()
                .all(|(i, (x, y))| i == ax || x == y);
        if !same {
            return Err(Error::op(
                OP,
                format!(
                    "shapes {} and {} differ outside axis {axis}",
                    fmt_shape(first.shape()),
                    fmt_shape(p.shape())
                ),
            ));
        }
        shape[ax] = shape[ax]
            .checked_add(p.shape()[ax])
            .ok_or_else(|| Error::op(OP, "result is too large"))?;
    }
    let total = checked_size(OP, &shape)?;
    let outer: usize = shape[..ax].iter().product();
    let inner: usize = shape[ax + 1..].iter().product();
    let std_parts: Vec<_> = parts.iter().map(|p| p.as_standard_layout()).collect();
    let mut data = Vec::with_capacity(total);
    for o in 0..outer {
        for (sp, p) in std_parts.iter().zip(parts) {
            let chunk = p.shape()[ax] * inner;
            if chunk == 0 {
                continue;
            }
            if let Some(s) = sp.as_slice() {
                data.extend_from_slice(&s[o * chunk..(o + 1) * chunk]);
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::op(OP, format!("internal: {e}")))
}

/// One entry of a [`slice`] index, with Python semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SliceArg {
    /// `start:end:step` on the next axis. Negative `start`/`end` count from the end; both are
    /// clipped to the axis like Python; `None` means "from the beginning/end" in the direction of
    /// `step`. `step` must be non-zero and may be negative (reversing).
    Range {
        /// First index (`None`: the first element in the direction of `step`).
        start: Option<isize>,
        /// One past the last index (`None`: through the last element in the direction of `step`).
        end: Option<isize>,
        /// Stride; non-zero.
        step: isize,
    },
    /// A single index on the next axis (negative counts from the end); removes the axis.
    /// Out of range is an error.
    Index(isize),
    /// Inserts a new axis of length 1 (NumPy `None` / `np.newaxis`); consumes no input axis.
    NewAxis,
}

impl SliceArg {
    /// The full range `::` (step 1).
    pub const FULL: SliceArg = SliceArg::Range {
        start: None,
        end: None,
        step: 1,
    };
}

/// Python's slice index adjustment: the first index and element count of
/// `start:end:step` on an axis of length `len`. `step != 0`.
fn py_slice(start: Option<isize>, end: Option<isize>, step: isize, len: usize) -> (i128, i128) {
    let (len, step) = (len as i128, step as i128);
    let (lower, upper) = if step < 0 { (-1, len - 1) } else { (0, len) };
    let adjust = |v: Option<isize>, default: i128| match v {
        None => default,
        Some(v) => {
            let mut v = v as i128;
            if v < 0 {
                v += len;
            }
            v.clamp(lower, upper)
        }
    };
    let s = adjust(start, if step < 0 { upper } else { lower });
    let e = adjust(end, if step < 0 { lower } else { upper });
    let count = if step < 0 {
        if e < s {
            (s - e - 1) / (-step) + 1
        } else {
            0
        }
    } else if s < e {
        (e - s - 1) / step + 1
    } else {
        0
    };
    (s, count)
}

/// Basic indexing with Python/NumPy semantics: `a[args...]`.
///
/// Axes not covered by `args` are kept whole. Errors: a zero step, an out-of-range
/// [`SliceArg::Index`], more indexing entries than axes. The result is a copy in standard layout.
pub fn slice<T: Elem>(a: &ArrayViewD<'_, T>, args: &[SliceArg]) -> Result<ArrayD<T>> {
    Ok(to_standard(&slice_view(a.view(), args, "slice")?))
}

/// The view `a[args...]` (shared by [`slice`] and the gradient of slice, which takes it of a
/// mutable array). `op` names the operation in errors.
pub(crate) fn slice_view<S: ndarray::RawData>(
    a: ndarray::ArrayBase<S, ndarray::IxDyn>,
    args: &[SliceArg],
    op: &str,
) -> Result<ndarray::ArrayBase<S, ndarray::IxDyn>> {
    let shape = a.shape().to_vec();
    let consumed = args
        .iter()
        .filter(|s| !matches!(s, SliceArg::NewAxis))
        .count();
    if consumed > shape.len() {
        return Err(Error::op(
            op,
            format!(
                "{consumed} indices given for an array of rank {} (shape {})",
                shape.len(),
                fmt_shape(&shape)
            ),
        ));
    }
    let mut v = a;
    let mut cur = 0usize; // the axis of `v` the next arg applies to
    let mut src_axis = 0usize; // the input axis the next arg applies to (for messages)
    for arg in args {
        match *arg {
            SliceArg::Range { start, end, step } => {
                if step == 0 {
                    return Err(Error::op(
                        op,
                        format!("slice step cannot be zero (axis {src_axis})"),
                    ));
                }
                let len = v.shape()[cur];
                let (s, count) = py_slice(start, end, step, len);
                let sl = if count == 0 {
                    Slice::new(0, Some(0), 1)
                } else if count == 1 {
                    Slice::new(s as isize, Some(s as isize + 1), 1)
                } else {
                    let last = s + (count - 1) * step as i128;
                    if step > 0 {
                        Slice::new(s as isize, Some(last as isize + 1), step)
                    } else {
                        Slice::new(last as isize, Some(s as isize + 1), step)
                    }
                };
                v.slice_axis_inplace(Axis(cur), sl);
                cur += 1;
                src_axis += 1;
            }
            SliceArg::Index(i) => {
                let len = v.shape()[cur];
                let j = if i < 0 {
                    i as i128 + len as i128
                } else {
                    i as i128
                };
                if j < 0 || j >= len as i128 {
                    return Err(Error::op(
                        op,
                        format!(
                            "index {i} is out of range for axis {src_axis} of size {len} (shape {})",
                            fmt_shape(&shape)
                        ),
                    ));
                }
                v = v.index_axis_move(Axis(cur), j as usize);
                src_axis += 1;
            }
            SliceArg::NewAxis => {
                v = v.insert_axis(Axis(cur));
                cur += 1;
            }
        }
    }
    Ok(v)
}

/// Picks entries of `table` along `axis` (NumPy `take`).
///
/// The result has shape `table.shape[..axis] ++ indices.shape ++ table.shape[axis + 1..]`.
/// Index values are read as `I::to_f64() as i64` (floats truncate); negative indices count from
/// the end; an index out of range is an error naming the index and the axis size.
pub fn gather<T: Elem, I: Elem>(
    table: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    axis: isize,
) -> Result<ArrayD<T>> {
    const OP: &str = "gather";
    let ax = norm_axis(OP, axis, table.ndim(), table.shape())?;
    let tshape = table.shape();
    let d = tshape[ax];
    let idx: Vec<usize> = indices
        .iter()
        .map(|&i| {
            let v = i.to_f64() as i64;
            let w = if v < 0 {
                v as i128 + d as i128
            } else {
                v as i128
            };
            if w < 0 || w >= d as i128 {
                Err(Error::op(
                    OP,
                    format!(
                        "index {v} is out of range for axis {ax} of size {d} (table shape {})",
                        fmt_shape(tshape)
                    ),
                ))
            } else {
                Ok(w as usize)
            }
        })
        .collect::<Result<_>>()?;
    let mut shape: Vec<usize> = tshape[..ax].to_vec();
    shape.extend_from_slice(indices.shape());
    shape.extend_from_slice(&tshape[ax + 1..]);
    let total = checked_size(OP, &shape)?;
    let outer: usize = tshape[..ax].iter().product();
    let inner: usize = tshape[ax + 1..].iter().product();
    let mut data = Vec::with_capacity(total);
    if total > 0 {
        let t = table.as_standard_layout();
        if let Some(s) = t.as_slice() {
            for o in 0..outer {
                for &i in &idx {
                    let start = (o * d + i) * inner;
                    data.extend_from_slice(&s[start..start + inner]);
                }
            }
        }
    }
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::op(OP, format!("internal: {e}")))
}

/// `x` as `ArrayD<Y>` when `X` and `Y` are the same type; `Err(x)` otherwise.
fn identity_cast<X: Elem, Y: Elem>(mut x: ArrayD<X>) -> std::result::Result<ArrayD<Y>, ArrayD<X>> {
    match (&mut x as &mut dyn Any).downcast_mut::<ArrayD<Y>>() {
        Some(y) => Ok(std::mem::take(y)),
        None => Err(x),
    }
}

fn is<X: 'static, Y: 'static>() -> bool {
    TypeId::of::<X>() == TypeId::of::<Y>()
}

/// Converts every element to `B` (NumPy `astype`); the result is in standard layout.
///
/// * same type: a plain copy;
/// * `i32`/`i64` to `i32`/`i64`/`f32`: exact integer conversion (no detour through `f64`);
///   `i64` to `i32` **saturates** to `[i32::MIN, i32::MAX]`, like float-to-int casts;
/// * float to integer: truncation toward zero, saturating, NaN to 0 (Rust `as`);
/// * to `bool`: `x != 0` (NaN is `true`); from `bool`: 0 or 1;
/// * between floats: round to nearest even.
pub fn cast<A: Elem, B: Elem>(a: &ArrayViewD<'_, A>) -> ArrayD<B> {
    if is::<A, B>() {
        if let Ok(b) = identity_cast::<A, B>(to_standard(a)) {
            return b;
        }
    }
    let int_src = if is::<A, i64>() {
        identity_cast::<A, i64>(to_standard(a)).ok()
    } else if is::<A, i32>() {
        identity_cast::<A, i32>(to_standard(a))
            .ok()
            .map(|x| x.mapv(i64::from))
    } else {
        None
    };
    if let Some(w) = int_src {
        if is::<B, i64>() {
            match identity_cast::<i64, B>(w) {
                Ok(b) => return b,
                Err(w) => return w.mapv(|x| B::from_f64(x as f64)),
            }
        }
        if is::<B, i32>() {
            let sat = w.mapv(|x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
            if let Ok(b) = identity_cast::<i32, B>(sat) {
                return b;
            }
        } else if is::<B, f32>() {
            if let Ok(b) = identity_cast::<f32, B>(w.mapv(|x| x as f32)) {
                return b;
            }
        }
        return w.mapv(|x| B::from_f64(x as f64));
    }
    map1(a, |x| B::from_f64(x.to_f64()))
}
