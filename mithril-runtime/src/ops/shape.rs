//! Shape and data-movement operations: `transpose reshape concat slice gather cast`.

use std::any::{Any, TypeId};

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, Dimension, IxDyn, Slice};

use super::{checked_size, fmt_shape, map1, norm_axis, to_standard};
use crate::{Dest, Elem, Error, Result};

/// Permutes the axes: output axis `i` is input axis `perm[i]` (NumPy `transpose`).
///
/// `perm` must be a permutation of `0..ndim`. The result is in standard layout.
pub fn transpose<T: Elem>(a: &ArrayViewD<'_, T>, perm: &[usize]) -> Result<ArrayD<T>> {
    crate::owned(|d| transpose_to(a, perm, d).map(|_| ()))
}

/// [`transpose`] into a destination. An empty `perm` reverses the axes.
pub fn transpose_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    perm: &[usize],
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let nd = a.ndim();
    let mut p = IxDyn::zeros(nd);
    if perm.is_empty() {
        for i in 0..nd {
            p[i] = nd - 1 - i;
        }
    } else if perm.len() == nd {
        p.slice_mut().copy_from_slice(perm);
    }
    let mut seen = 0u128;
    let valid = nd <= 128
        && (perm.is_empty() || perm.len() == nd)
        && p.slice().iter().all(|&q| {
            let fresh = q < nd && seen >> q & 1 == 0;
            if fresh {
                seen |= 1 << q;
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
    let v = a.view().permuted_axes(p);
    let mut out = dest.get("transpose", v.shape())?;
    out.assign(&v);
    Ok(out)
}

/// Reshapes to `shape` in row-major order (NumPy `reshape`, always a copy).
///
/// At most one entry may be `-1`; it is inferred from the element count. Other negative
/// entries, or an element count that does not match, are errors.
pub fn reshape<T: Elem>(a: &ArrayViewD<'_, T>, shape: &[isize]) -> Result<ArrayD<T>> {
    crate::owned(|d| reshape_to(a, shape, d).map(|_| ()))
}

/// [`reshape`] into a destination.
pub fn reshape_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    shape: &[isize],
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let dims = reshape_shape(a.shape(), a.len(), shape)?;
    let mut out = dest.get("reshape", dims.slice())?;
    copy_logical(a, &mut out, "reshape")?;
    Ok(out)
}

/// `a`'s elements in row-major order under `shape` (as many elements; checked).
pub(crate) fn copy_reshaped_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    shape: &[usize],
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    if shape.iter().product::<usize>() != a.len() {
        return Err(Error::op(
            "reshape",
            format!(
                "cannot reshape {} into {}",
                fmt_shape(a.shape()),
                fmt_shape(shape)
            ),
        ));
    }
    let mut out = dest.get("reshape", shape)?;
    copy_logical(a, &mut out, "reshape")?;
    Ok(out)
}

/// The shape [`reshape_to`] gives a value of shape `from` with `total` elements.
pub(crate) fn reshape_shape(from: &[usize], total: usize, shape: &[isize]) -> Result<IxDyn> {
    const OP: &str = "reshape";
    let err = |why: &str| {
        Error::op(
            OP,
            format!(
                "cannot reshape {} ({} elements) into {shape:?}: {why}",
                fmt_shape(from),
                total
            ),
        )
    };
    let mut infer = None;
    let mut dims = IxDyn::zeros(shape.len());
    for (i, &d) in shape.iter().enumerate() {
        if d == -1 {
            if infer.is_some() {
                return Err(err("more than one -1"));
            }
            infer = Some(i);
            dims[i] = 1;
        } else if d < 0 {
            return Err(err("negative dimension"));
        } else {
            dims[i] = d as usize;
        }
    }
    let known = dims
        .slice()
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| err("too many elements"))?;
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(err("the -1 dimension cannot be inferred"));
        }
        dims[i] = total / known;
    } else if known != total {
        return Err(err("element counts differ"));
    }
    Ok(dims)
}

/// Copies the elements of `a` in logical (row-major) order into the standard-layout `out` of
/// the same size.
pub(crate) fn copy_logical<T: Elem>(
    a: &ArrayViewD<'_, T>,
    out: &mut ArrayViewMutD<'_, T>,
    op: &str,
) -> Result<()> {
    let o = out
        .as_slice_mut()
        .ok_or_else(|| Error::op(op, "internal: destination is not contiguous"))?;
    match a.as_slice() {
        Some(s) => o.copy_from_slice(s),
        None => o.iter_mut().zip(a.iter()).for_each(|(o, &x)| *o = x),
    }
    Ok(())
}

/// Merges axes `start..=end` into one (PyTorch `flatten`; negative axes count from the end).
pub fn flatten_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    start: isize,
    end: isize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let t = flatten_shape(a.shape(), start, end);
    let mut out = dest.get("flatten", t.slice())?;
    copy_logical(a, &mut out, "flatten")?;
    Ok(out)
}

/// The shape [`flatten_to`] gives a value of shape `s`.
pub(crate) fn flatten_shape(s: &[usize], start: isize, end: isize) -> IxDyn {
    let r = s.len().max(1) as isize;
    let lo = ((if start < 0 { start + r } else { start }).max(0) as usize).min(s.len());
    let hi = ((if end < 0 { end + r } else { end }).max(0) as usize + 1).min(s.len());
    let hi = hi.max(lo);
    let mut t = IxDyn::zeros(s.len() - (hi - lo) + 1);
    let mut k = 0;
    for &d in &s[..lo] {
        t[k] = d;
        k += 1;
    }
    t[k] = s[lo..hi].iter().product();
    k += 1;
    for &d in &s[hi..] {
        t[k] = d;
        k += 1;
    }
    t
}

/// Inserts length-1 axes at `axes` (applied in order, each clipped to the current rank).
pub fn unsqueeze_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    axes: &[usize],
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let t = unsqueeze_shape(a.shape(), axes);
    let mut out = dest.get("unsqueeze", t.slice())?;
    copy_logical(a, &mut out, "unsqueeze")?;
    Ok(out)
}

/// The shape [`unsqueeze_to`] gives a value of shape `s`.
pub(crate) fn unsqueeze_shape(s: &[usize], axes: &[usize]) -> IxDyn {
    let mut t: smallvec::SmallVec<[usize; 8]> = s.into();
    for &ax in axes {
        t.insert(ax.min(t.len()), 1);
    }
    IxDyn(&t)
}

/// `a`'s elements with `like`'s shape (autodiff's reshape back to an operand's shape).
pub fn reshape_like_to<'w, T: Elem, U>(
    a: &ArrayViewD<'_, T>,
    like: &ArrayViewD<'_, U>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    if a.len() != like.len() {
        return Err(Error::op(
            "reshape",
            format!(
                "cannot reshape {} into {}",
                fmt_shape(a.shape()),
                fmt_shape(like.shape())
            ),
        ));
    }
    let mut out = dest.get("reshape", like.shape())?;
    copy_logical(a, &mut out, "reshape")?;
    Ok(out)
}

/// `a` broadcast to `like`'s shape, materialized.
pub fn broadcast_like_to<'w, T: Elem, U>(
    a: &ArrayViewD<'_, T>,
    like: &ArrayViewD<'_, U>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let b = a.broadcast(like.raw_dim()).ok_or_else(|| {
        Error::op(
            "broadcast_like",
            format!(
                "{} does not broadcast to {}",
                fmt_shape(a.shape()),
                fmt_shape(like.shape())
            ),
        )
    })?;
    let mut out = dest.get("broadcast_like", like.shape())?;
    out.assign(&b);
    Ok(out)
}

/// `g` summed over the axes along which `like` was broadcast to `g`'s shape, with `like`'s shape
/// (the gradient of an implicit broadcast).
pub fn sum_like_to<'w, T: Elem, U>(
    g: &ArrayViewD<'_, T>,
    like: &ArrayViewD<'_, U>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: crate::scalar::Num,
{
    let t = like.shape();
    let nd = g.ndim();
    let lead = nd.saturating_sub(t.len());
    let mut axes = [0isize; 64];
    let mut na = 0;
    for i in 0..nd.min(64) {
        if i < lead || (t[i - lead] == 1 && g.shape()[i] != 1) {
            axes[na] = i as isize;
            na += 1;
        }
    }
    if na == 0 {
        return reshape_like_to(g, like, dest);
    }
    if g.is_empty() && !like.is_empty() {
        let mut out = dest.get("sum", t)?;
        out.fill(T::default());
        return Ok(out);
    }
    // Sum with keepdim into the destination seen with the keepdim shape (same element order as
    // `like`'s shape).
    let mut kd = g.raw_dim();
    for &a in &axes[..na] {
        kd[a as usize] = 1;
    }
    let mut out = dest.get("sum", t)?;
    if out.len() != kd.size() {
        return Err(Error::op("sum", "internal: sum_like size mismatch"));
    }
    super::sum_to(g, &axes[..na], true, Dest::View(out.view_mut()))?;
    Ok(out)
}

/// The scalar `len(a) / max(len(b), 1)` (autodiff's mean-gradient scale).
pub fn size_ratio_to<'w, T: Elem, A, B>(
    a: &ArrayViewD<'_, A>,
    b: &ArrayViewD<'_, B>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let mut out = dest.get("size_ratio", &[])?;
    out.fill(T::from_f64(a.len() as f64 / b.len().max(1) as f64));
    Ok(out)
}

/// Concatenates `parts` along `axis` (NumPy `concatenate`).
///
/// Every part must have the same rank (at least 1) and the same shape outside `axis`; at least
/// one part is required.
pub fn concat<T: Elem>(parts: &[ArrayViewD<'_, T>], axis: isize) -> Result<ArrayD<T>> {
    crate::owned(|d| concat_to(parts, axis, d).map(|_| ()))
}

/// [`concat()`] into a destination.
pub fn concat_to<'w, T: Elem>(
    parts: &[ArrayViewD<'_, T>],
    axis: isize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "concat";
    let Some(first) = parts.first() else {
        return Err(Error::op(OP, "nothing to concatenate (no parts)"));
    };
    let nd = first.ndim();
    if nd == 0 {
        return Err(Error::op(OP, "cannot concatenate 0-D arrays"));
    }
    let ax = norm_axis(OP, axis, nd, first.shape())?;
    let mut shape = first.raw_dim();
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
    checked_size(OP, shape.slice())?;
    let mut out = dest.get(OP, shape.slice())?;
    let mut at = 0;
    for p in parts {
        let len = p.shape()[ax];
        out.slice_axis_mut(Axis(ax), Slice::from(at..at + len))
            .assign(p);
        at += len;
    }
    Ok(out)
}

/// One entry of a [`slice()`] index, with Python semantics.
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

/// A Python index `i` (negative from the end) into an axis of `len` elements: the position, or
/// the out-of-range error naming `axis` and the operand's `shape`.
pub(crate) fn py_index(
    op: &str,
    i: isize,
    len: usize,
    axis: usize,
    shape: &[usize],
) -> Result<usize> {
    let j = if i < 0 {
        i as i128 + len as i128
    } else {
        i as i128
    };
    if j < 0 || j >= len as i128 {
        return Err(Error::op(
            op,
            format!(
                "index {i} is out of range for axis {axis} of size {len} (shape {})",
                fmt_shape(shape)
            ),
        ));
    }
    Ok(j as usize)
}

/// Python's slice index adjustment: the first index and element count of
/// `start:end:step` on an axis of length `len`. `step != 0`.
pub(crate) fn py_slice(
    start: Option<isize>,
    end: Option<isize>,
    step: isize,
    len: usize,
) -> (i128, i128) {
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
    let v = slice_view(a.view(), args, "slice")?;
    crate::alloc::check("slice", v.len(), std::mem::size_of::<T>())?;
    Ok(to_standard(&v))
}

/// [`slice()`] into a destination.
pub fn slice_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    args: &[SliceArg],
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let v = slice_view(a.view(), args, "slice")?;
    let mut out = dest.get("slice", v.shape())?;
    out.assign(&v);
    Ok(out)
}

/// The view `a[args...]` (shared by [`slice`] and the gradient of slice, which takes it of a
/// mutable array). `op` names the operation in errors.
pub(crate) fn slice_view<S: ndarray::RawData>(
    a: ndarray::ArrayBase<S, ndarray::IxDyn>,
    args: &[SliceArg],
    op: &str,
) -> Result<ndarray::ArrayBase<S, ndarray::IxDyn>> {
    let shape = a.raw_dim();
    let shape = shape.slice();
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
                fmt_shape(shape)
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
                let j = py_index(op, i, v.shape()[cur], src_axis, shape)?;
                v = v.index_axis_move(Axis(cur), j);
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
    crate::owned(|d| gather_to(table, indices, axis, d).map(|_| ()))
}

/// [`gather`] into a destination.
pub fn gather_to<'w, T: Elem, I: Elem>(
    table: &ArrayViewD<'_, T>,
    indices: &ArrayViewD<'_, I>,
    axis: isize,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "gather";
    let ax = norm_axis(OP, axis, table.ndim(), table.shape())?;
    let tshape = table.shape();
    let d = tshape[ax];
    let ishape = indices.shape();
    let idx = |i: I, p: usize| {
        let v = i.to_f64() as i64;
        if v < 0 || v >= d as i64 {
            let why = if v < 0 {
                format!("is negative (ids must lie in 0..{d})")
            } else {
                format!("is out of range for axis {ax} of size {d}")
            };
            Err(Error::op(
                OP,
                format!(
                    "index {v} at position {} of the indices (shape {}) {why} (table shape {})",
                    fmt_shape(&super::unravel(p, ishape)),
                    fmt_shape(ishape),
                    fmt_shape(tshape)
                ),
            ))
        } else {
            Ok(v as usize)
        }
    };
    let nd = ax + indices.ndim() + tshape.len() - ax - 1;
    let mut shape = IxDyn::zeros(nd);
    shape.slice_mut()[..ax].copy_from_slice(&tshape[..ax]);
    shape.slice_mut()[ax..ax + indices.ndim()].copy_from_slice(indices.shape());
    shape.slice_mut()[ax + indices.ndim()..].copy_from_slice(&tshape[ax + 1..]);
    let total = checked_size(OP, shape.slice())?;
    let outer: usize = tshape[..ax].iter().product();
    let inner: usize = tshape[ax + 1..].iter().product();
    let mut out = dest.get(OP, shape.slice())?;
    for (p, &i) in indices.iter().enumerate() {
        idx(i, p)?;
    }
    if total > 0 {
        if !table.is_standard_layout() {
            crate::alloc::check(OP, table.len(), std::mem::size_of::<T>())?;
        }
        let t = table.as_standard_layout();
        let o = out
            .as_slice_mut()
            .ok_or_else(|| Error::op(OP, "internal: destination is not contiguous"))?;
        if let Some(s) = t.as_slice() {
            let mut at = 0;
            for oi in 0..outer {
                for (p, &i) in indices.iter().enumerate() {
                    let start = (oi * d + idx(i, p)?) * inner;
                    o[at..at + inner].copy_from_slice(&s[start..start + inner]);
                    at += inner;
                }
            }
        }
    }
    Ok(out)
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

/// Converts every element to `B` (NumPy `astype`) into a destination.
///
/// * same type: a plain copy;
/// * `i32`/`i64` to `i32`/`i64`/`f32`: exact integer conversion (no detour through `f64`);
///   `i64` to `i32` **saturates** to `[i32::MIN, i32::MAX]`, like float-to-int casts;
/// * float to integer: truncation toward zero, saturating, NaN to 0 (Rust `as`);
/// * to `bool`: `x != 0` (NaN is `true`); from `bool`: 0 or 1;
/// * between floats: round to nearest even.
pub fn cast_to<'w, A: Elem, B: Elem>(
    a: &ArrayViewD<'_, A>,
    dest: Dest<'w, B>,
) -> Result<ArrayViewMutD<'w, B>> {
    let float = |t: crate::DType| {
        matches!(
            t,
            crate::DType::F32 | crate::DType::F64 | crate::DType::F16 | crate::DType::BF16
        )
    };
    if float(A::DTYPE) && float(B::DTYPE) {
        // Float to float: every f16/bf16/f32 value is exact in f64, so one rounding.
        return super::map1_to(a, dest, |x| B::from_f64(x.to_f64()));
    }
    // `cast` builds its result (and possibly an i64 copy of `a`) before it is copied out
    crate::alloc::check(
        "cast",
        a.len(),
        8 + std::mem::size_of::<A>() + std::mem::size_of::<B>(),
    )?;
    let c = cast::<A, B>(a);
    let mut out = dest.get("cast", c.shape())?;
    out.assign(&c);
    Ok(out)
}

/// Converts every element to `B` (see [`cast_to`] for the rules).
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

/// `acc[.., i, ..] = v` (or `+= v` with `add`) along `axis` of `acc`, in place: a scan's
/// stacked output written at step `i`, or a gradient accumulated at a scalar gather index.
/// `v` has `acc`'s shape without `axis`; `i` outside `0..acc.shape()[axis]` is an error.
pub fn set_at_in<T: Elem>(
    acc: &mut ArrayViewMutD<'_, T>,
    v: &ArrayViewD<'_, T>,
    axis: isize,
    i: i64,
    add: bool,
) -> Result<()> {
    const OP: &str = "set_at";
    let r = acc.ndim();
    let ax = if axis < 0 { axis + r as isize } else { axis };
    if ax < 0 || ax as usize >= r {
        return Err(Error::op(
            OP,
            format!("axis {axis} out of range for rank {r}"),
        ));
    }
    let ax = ax as usize;
    let n = acc.shape()[ax];
    if i < 0 || i as usize >= n {
        return Err(Error::op(
            OP,
            format!("step index {i} is outside 0..{n} (the stacked axis)"),
        ));
    }
    let mut dst = acc.index_axis_mut(ndarray::Axis(ax), i as usize);
    if dst.shape() != v.shape() {
        return Err(Error::op(
            OP,
            format!(
                "a step value of shape {:?} does not fit a slice of shape {:?}",
                v.shape(),
                dst.shape()
            ),
        ));
    }
    if add {
        ndarray::Zip::from(&mut dst)
            .and(v)
            .for_each(|d, &s| *d = T::from_f64(d.to_f64() + s.to_f64()));
    } else {
        dst.assign(v);
    }
    Ok(())
}

/// `update_slice` in place: rows `start .. start + n` of `acc` along `axis` become `v` (`n` its
/// length there; every other dim equal). An `Err` when they do not fit (`start + n` past the
/// axis: a full cache) or the shapes differ. Only those rows are written.
pub fn update_slice_in<T: Elem>(
    acc: &mut ArrayViewMutD<'_, T>,
    v: &ArrayViewD<'_, T>,
    axis: isize,
    start: i64,
) -> Result<()> {
    const OP: &str = "update_slice";
    let r = acc.ndim();
    let ax = if axis < 0 { axis + r as isize } else { axis };
    if ax < 0 || ax as usize >= r || v.ndim() != r {
        return Err(Error::op(
            OP,
            format!(
                "axis {axis} of a rank-{r} tensor updated by a rank-{} value",
                v.ndim()
            ),
        ));
    }
    let ax = ax as usize;
    let (cap, n) = (acc.shape()[ax], v.shape()[ax]);
    let same = (0..r).all(|a| a == ax || acc.shape()[a] == v.shape()[a]);
    if !same {
        return Err(Error::op(
            OP,
            format!(
                "a value of shape {} does not fit a slice of {} along axis {ax}",
                fmt_shape(v.shape()),
                fmt_shape(acc.shape())
            ),
        ));
    }
    if start < 0 || start as u64 + n as u64 > cap as u64 {
        return Err(Error::op(
            OP,
            format!(
                "the cache is full: {n} new row(s) from position {start} do not fit its {cap} rows (axis {ax} of {})",
                fmt_shape(acc.shape())
            ),
        ));
    }
    let s = start as usize;
    acc.slice_axis_mut(ndarray::Axis(ax), ndarray::Slice::from(s..s + n))
        .assign(v);
    Ok(())
}
