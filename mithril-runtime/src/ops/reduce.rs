//! Reductions over one or more axes: `sum mean max min prod variance argmax argmin`.
//!
//! `axes` may hold negative axes (counted from the end); an empty `axes` reduces every axis.
//! `keepdim` keeps each reduced axis as length 1 (NumPy `keepdims`, PyTorch `keepdim`).
//! Duplicate or out-of-range axes are errors.
//!
//! `f32`, `f64`, `f16` and `bf16` sums, means, maxima and minima whose reduced elements are
//! contiguous runs (the last axes of a contiguous array, or every axis), and sums over the leading
//! axes of a contiguous array (column sums), run the multiversioned row kernels of
//! [`mithril_kernels::rows`]: AVX-512 / AVX2 / baseline chosen at run time, `f32` accumulated in
//! `f64` (`f16`/`bf16` in `f32`), the same bits on every path; see that module for the error
//! bounds.
//!
//! Everything else (integers, products, variances, other layouts) accumulates in `T::Acc` (`f32`
//! for `f16`/`bf16`) with eight interleaved accumulators and pairwise splitting of long runs,
//! which keeps the rounding error of long sums small; when the reduced axes are the leading axes
//! of a contiguous array, blocks of rows are accumulated (vectorized across the row) and the block
//! results are merged pairwise.

use std::any::TypeId;
use std::borrow::Cow;

use mithril_kernels::rows::{self, RowElem};

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Axis, Dimension, IxDyn, RemoveAxis, Zip};

use super::{fmt_shape, norm_axis};
use crate::scalar::{Num, Real};
use crate::{Dest, Elem, Error, Result};

/// Runs of at most this many elements are reduced with flat interleaved accumulation.
const LEAF: usize = 128;
/// Rows accumulated flat into one partial result (leading-axes case).
const ROW_BLOCK: usize = 64;

/// Which axes are reduced and what the result looks like.
struct Plan {
    /// Bit `i` set for each reduced axis.
    reduced: u64,
    /// Output shape, `keepdim` applied.
    out_shape: IxDyn,
    /// Number of outputs.
    k: usize,
    /// Number of elements reduced into each output.
    r: usize,
}

impl Plan {
    fn is_reduced(&self, i: usize) -> bool {
        self.reduced >> i & 1 == 1
    }
}

fn plan(op: &str, shape: &[usize], axes: &[isize], keepdim: bool) -> Result<Plan> {
    let nd = shape.len();
    if nd > 64 {
        return Err(Error::op(
            op,
            format!("rank {nd} is above the supported 64"),
        ));
    }
    let all = if nd == 64 { u64::MAX } else { (1u64 << nd) - 1 };
    let mut reduced = if axes.is_empty() { all } else { 0 };
    for &ax in axes {
        let i = norm_axis(op, ax, nd, shape)?;
        if reduced >> i & 1 == 1 {
            return Err(Error::op(
                op,
                format!(
                    "axis {ax} is repeated in axes {axes:?} (shape {})",
                    fmt_shape(shape)
                ),
            ));
        }
        reduced |= 1 << i;
    }
    let out_rank = if keepdim {
        nd
    } else {
        nd - reduced.count_ones() as usize
    };
    let mut out_shape = IxDyn::zeros(out_rank);
    let (mut k, mut r, mut o) = (1usize, 1usize, 0usize);
    for (i, &d) in shape.iter().enumerate() {
        if reduced >> i & 1 == 1 {
            r *= d;
            if keepdim {
                out_shape[o] = 1;
                o += 1;
            }
        } else {
            k *= d;
            out_shape[o] = d;
            o += 1;
        }
    }
    Ok(Plan {
        reduced,
        out_shape,
        k,
        r,
    })
}

/// The input arranged for reduction.
enum Groups<'a, T: Clone> {
    /// `k` runs of `r` contiguous elements, one run per output, in output order.
    Contig(Cow<'a, [T]>),
    /// `r` rows of `k` contiguous elements (the reduced axes lead).
    Rows(&'a [T]),
}

fn groups<'a, T: Elem>(a: &ArrayViewD<'a, T>, p: &Plan) -> Groups<'a, T> {
    if p.k <= 1 {
        // Every element goes to the same output: memory order is as good as any.
        if let Some(s) = a.to_slice_memory_order() {
            return Groups::Contig(Cow::Borrowed(s));
        }
    }
    let nd = a.ndim();
    let mut perm = IxDyn::zeros(nd);
    let mut j = 0;
    for i in (0..nd).filter(|&i| !p.is_reduced(i)) {
        perm[j] = i;
        j += 1;
    }
    for i in (0..nd).filter(|&i| p.is_reduced(i)) {
        perm[j] = i;
        j += 1;
    }
    let pv = a.clone().permuted_axes(perm.clone());
    if let Some(s) = pv.to_slice() {
        return Groups::Contig(Cow::Borrowed(s));
    }
    let n_lead = (0..nd).take_while(|&i| p.is_reduced(i)).count();
    if (n_lead..nd).all(|i| !p.is_reduced(i)) {
        if let Some(s) = a.to_slice() {
            return Groups::Rows(s);
        }
    }
    // Strided layouts: one gathered copy (the only allocation of a reduction).
    if let Some(v) = gather_runs(a, p, &perm) {
        return Groups::Contig(Cow::Owned(v));
    }
    Groups::Contig(Cow::Owned(pv.iter().copied().collect()))
}

/// The gathered copy of [`groups`] (the elements of `a` in the order of its axes permuted by
/// `perm`: kept axes first, then reduced ones) for a contiguous `a` whose last axes are
/// reduced (a bias gradient's sum over `[N, C, H, W]` axes 0, 2, 3): those axes stay
/// contiguous runs in the permuted order, copied whole (`None`: not that layout, or runs too
/// short to be worth it). The same elements in the same order as iterating the permuted view.
fn gather_runs<T: Elem>(a: &ArrayViewD<'_, T>, p: &Plan, perm: &IxDyn) -> Option<Vec<T>> {
    let src = a.as_slice()?;
    let (shape, nd) = (a.shape(), a.ndim());
    let t = (0..nd).rev().take_while(|&i| p.is_reduced(i)).count();
    let run: usize = shape[nd - t..].iter().product();
    if t == 0 || run < 8 || src.is_empty() {
        return None;
    }
    // the odometer over the permuted leading axes (their strides in elements)
    let lead = nd - t;
    let dims: Vec<usize> = (0..lead).map(|j| shape[perm[j]]).collect();
    let strides: Vec<usize> = (0..lead).map(|j| a.strides()[perm[j]] as usize).collect();
    let mut idx = vec![0usize; lead];
    let mut out = Vec::with_capacity(src.len());
    let mut off = 0usize;
    loop {
        out.extend_from_slice(&src[off..off + run]);
        let mut d = lead;
        loop {
            if d == 0 {
                return Some(out);
            }
            d -= 1;
            idx[d] += 1;
            // (wrapping: an axis of length 1 may carry any stride in a standard layout; it
            // is added and taken back at once)
            off = off.wrapping_add(strides[d]);
            if idx[d] < dims[d] {
                break;
            }
            off = off.wrapping_sub(strides[d].wrapping_mul(dims[d]));
            idx[d] = 0;
        }
    }
}

/// Reduces a run with eight interleaved accumulators, splitting long runs in halves.
fn reduce_run<T: Copy, A: Copy>(
    xs: &[T],
    id: A,
    map: &impl Fn(T) -> A,
    comb: &impl Fn(A, A) -> A,
) -> A {
    if xs.len() <= LEAF {
        let mut acc = [id; 8];
        let mut chunks = xs.chunks_exact(8);
        for c in &mut chunks {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = comb(*a, map(x));
            }
        }
        let mut r = comb(
            comb(comb(acc[0], acc[1]), comb(acc[2], acc[3])),
            comb(comb(acc[4], acc[5]), comb(acc[6], acc[7])),
        );
        for &x in chunks.remainder() {
            r = comb(r, map(x));
        }
        r
    } else {
        let (l, h) = xs.split_at(xs.len() / 16 * 8);
        comb(reduce_run(l, id, map, comb), reduce_run(h, id, map, comb))
    }
}

/// Columns handled together in the leading-axes case (partials live on the stack).
const COLS: usize = 64;
/// Levels of the binary counter of partial sums: enough for 2^40 row blocks.
const LEVELS: usize = 40;

/// Calls `emit(output index, value)` once per output with the reduction of `map(x, output
/// index)` under `comb` from `id`. Allocates nothing (apart from `groups`' strided copy).
fn fold<T: Elem, A: Copy>(
    g: &Groups<'_, T>,
    p: &Plan,
    id: A,
    map: impl Fn(T, usize) -> A,
    comb: impl Fn(A, A) -> A,
    mut emit: impl FnMut(usize, A),
) {
    let (k, r) = (p.k, p.r);
    if k == 0 {
        return;
    }
    match g {
        Groups::Contig(s) => {
            if r == 0 {
                (0..k).for_each(|gi| emit(gi, id));
                return;
            }
            for (gi, run) in s.chunks_exact(r).enumerate() {
                emit(gi, reduce_run(run, id, &|x| map(x, gi), &comb));
            }
        }
        Groups::Rows(s) => {
            // Per block of columns: blocks of rows are accumulated flat; block partials are
            // merged pairwise (a binary counter of partial sums), so the error grows with
            // log(rows), not rows.
            for j0 in (0..k).step_by(COLS) {
                let w = COLS.min(k - j0);
                let mut stack = [[id; COLS]; LEVELS];
                let mut levels = [u32::MAX; LEVELS];
                let mut depth = 0usize;
                for block in s.chunks(k * ROW_BLOCK) {
                    let mut part = [id; COLS];
                    for row in block.chunks_exact(k) {
                        for (j, (acc, &x)) in part[..w].iter_mut().zip(&row[j0..j0 + w]).enumerate()
                        {
                            *acc = comb(*acc, map(x, j0 + j));
                        }
                    }
                    let mut level = 0;
                    while depth > 0 && levels[depth - 1] == level {
                        depth -= 1;
                        merge_into(&mut part[..w], &stack[depth][..w], &comb);
                        level += 1;
                    }
                    if depth == LEVELS {
                        // Unreachable below 2^40 blocks; fold into the top instead of failing.
                        merge_into(&mut part[..w], &stack[depth - 1][..w], &comb);
                        depth -= 1;
                    }
                    stack[depth] = part;
                    levels[depth] = level;
                    depth += 1;
                }
                let mut total = [id; COLS];
                while depth > 0 {
                    depth -= 1;
                    merge_into(&mut total[..w], &stack[depth][..w], &comb);
                }
                for (j, &v) in total[..w].iter().enumerate() {
                    emit(j0 + j, v);
                }
            }
        }
    }
}

/// `dst[j] = comb(earlier[j], dst[j])`.
fn merge_into<A: Copy>(dst: &mut [A], earlier: &[A], comb: &impl Fn(A, A) -> A) {
    for (d, &e) in dst.iter_mut().zip(earlier) {
        *d = comb(e, *d);
    }
}

/// A kernel of [`mithril_kernels::rows`] over contiguous `[rows, cols]` data.
#[derive(Clone, Copy, Debug)]
pub(crate) enum RowOp {
    /// per-row sum (`out.len()` rows)
    Sum,
    /// per-row mean
    Mean,
    /// per-row maximum
    Max,
    /// per-row minimum
    Min,
    /// column sums (`x.len() / cols` rows, `out.len() == cols`)
    ColSum,
    /// row softmax (`out` has `x`'s shape)
    Softmax,
    /// row log-softmax
    LogSoftmax,
}

/// Runs `op` on `x` as rows of `cols` elements into `out` when `T` is a row-kernel element type
/// (`f32`, `f64`, `f16`, `bf16`) and returns `true`; returns `false` without touching `out`
/// otherwise. Preconditions as in [`mithril_kernels::rows`] (`cols > 0`, `x` holds every row).
pub(crate) fn row_kernel<T: Elem>(op: RowOp, x: &[T], cols: usize, out: &mut [T]) -> bool {
    fn go<U: RowElem>(op: RowOp, x: &[U], cols: usize, out: &mut [U]) {
        match op {
            RowOp::Sum => rows::sum(x, cols, out),
            RowOp::Mean => rows::mean(x, cols, out),
            RowOp::Max => rows::max(x, cols, out),
            RowOp::Min => rows::min(x, cols, out),
            RowOp::ColSum => rows::col_sum(x, cols, out),
            RowOp::Softmax => rows::softmax(x, cols, out),
            RowOp::LogSoftmax => rows::log_softmax(x, cols, out),
        }
    }
    macro_rules! try_types {
        ($($u:ty),*) => {$(
            if TypeId::of::<T>() == TypeId::of::<$u>() {
                // SAFETY: `T` is `$u` (same `TypeId`), so the slices are reinterpreted as
                // themselves.
                let (x, out) = unsafe {
                    (
                        std::slice::from_raw_parts(x.as_ptr() as *const $u, x.len()),
                        std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut $u, out.len()),
                    )
                };
                go(op, x, cols, out);
                return true;
            }
        )*};
    }
    try_types!(f32, f64, half::f16, half::bf16);
    false
}

/// The destination of a reduction, as one flat slice in output order.
fn out_slice<'w, 'o, T: Elem>(op: &str, out: &'o mut ArrayViewMutD<'w, T>) -> Result<&'o mut [T]> {
    out.as_slice_mut()
        .ok_or_else(|| Error::op(op, "internal: reduction destination is not contiguous"))
}

#[allow(clippy::too_many_arguments)]
fn reduce_plain<'w, T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    axes: &[isize],
    keepdim: bool,
    needs_elements: bool,
    id: T::Acc,
    comb: impl Fn(T::Acc, T::Acc) -> T::Acc,
    kernels: (Option<RowOp>, Option<RowOp>),
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let p = plan(op, a.shape(), axes, keepdim)?;
    if needs_elements && p.r == 0 && p.k > 0 {
        return Err(Error::op(
            op,
            format!(
                "cannot reduce over empty axes {axes:?} of shape {} (no identity)",
                fmt_shape(a.shape())
            ),
        ));
    }
    let g = groups(a, &p);
    let mut out = dest.get(op, p.out_shape.slice())?;
    let o = out_slice(op, &mut out)?;
    if fast_rows(&g, &p, kernels, o) {
        return Ok(out);
    }
    fold(
        &g,
        &p,
        id,
        |x, _| x.to_acc(),
        comb,
        |i, v| o[i] = T::from_acc(v),
    );
    Ok(out)
}

/// Runs the row kernel `row` (runs of reduced elements) or `col` (leading axes reduced) when the
/// layout and the element type allow; `true` when `o` was written.
fn fast_rows<T: Elem>(
    g: &Groups<'_, T>,
    p: &Plan,
    (row, col): (Option<RowOp>, Option<RowOp>),
    o: &mut [T],
) -> bool {
    if p.r == 0 || p.k == 0 {
        return false;
    }
    match (g, row, col) {
        // one element per output (the bias gradient at batch 1): one column-sum pass over the
        // row instead of `k` one-element row sums (the same bits: both are `0 + x`)
        (Groups::Contig(s), Some(RowOp::Sum), Some(k)) if p.r == 1 => {
            row_kernel(k, &s[..p.k], p.k, &mut o[..p.k])
        }
        (Groups::Contig(s), Some(k), _) => row_kernel(k, &s[..p.k * p.r], p.r, &mut o[..p.k]),
        (Groups::Rows(s), _, Some(k)) => row_kernel(k, &s[..p.k * p.r], p.k, &mut o[..p.k]),
        _ => false,
    }
}

macro_rules! reductions {
    ($($(#[$doc:meta])* $name:ident, $name_to:ident, $bound:ident, $needs:expr, $id:expr, $comb:expr, $kernels:expr;)+) => {$(
        $(#[$doc])*
        pub fn $name<T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool) -> Result<ArrayD<T>>
        where
            T::Acc: $bound,
        {
            crate::owned(|d| $name_to(a, axes, keepdim, d).map(|_| ()))
        }

        #[doc = concat!("[`", stringify!($name), "`] into a destination.")]
        pub fn $name_to<'w, T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool, dest: Dest<'w, T>) -> Result<ArrayViewMutD<'w, T>>
        where
            T::Acc: $bound,
        {
            reduce_plain(stringify!($name), a, axes, keepdim, $needs, $id, $comb, $kernels, dest)
        }
    )+};
}

reductions! {
    /// Sum over `axes` (all axes when empty). Integers wrap.
    sum, sum_to, Num, false, Num::ZERO, Num::add, (Some(RowOp::Sum), Some(RowOp::ColSum));
    /// Product over `axes` (all axes when empty). Integers wrap.
    prod, prod_to, Num, false, Num::ONE, Num::mul, (None, None);
    /// Maximum over `axes` (all axes when empty). NaN propagates; an empty reduction is an error.
    max, max_to, Num, true, Num::LOWEST, Num::max, (Some(RowOp::Max), None);
    /// Minimum over `axes` (all axes when empty). NaN propagates; an empty reduction is an error.
    min, min_to, Num, true, Num::HIGHEST, Num::min, (Some(RowOp::Min), None);
}

/// Arithmetic mean over `axes` (all axes when empty); NaN for an empty reduction.
pub fn mean<T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool) -> Result<ArrayD<T>>
where
    T::Acc: Real,
{
    crate::owned(|d| mean_to(a, axes, keepdim, d).map(|_| ()))
}

/// [`mean`] into a destination.
pub fn mean_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    axes: &[isize],
    keepdim: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Real,
{
    let p = plan("mean", a.shape(), axes, keepdim)?;
    let g = groups(a, &p);
    let n = <T::Acc as Num>::from_f64(p.r as f64);
    let mut out = dest.get("mean", p.out_shape.slice())?;
    let o = out_slice("mean", &mut out)?;
    if fast_rows(&g, &p, (Some(RowOp::Mean), None), o) {
        return Ok(out);
    }
    fold(
        &g,
        &p,
        <T::Acc as Num>::ZERO,
        |x, _| x.to_acc(),
        Num::add,
        |i, v| o[i] = T::from_acc(v.div(n)),
    );
    Ok(out)
}

/// Variance over `axes` (all axes when empty): `sum((x - mean)^2) / max(N - correction, 0)`.
///
/// `correction = 0` is the population variance, `1` the unbiased sample variance (Bessel). A
/// non-positive denominator gives `inf` or NaN, as in NumPy.
pub fn variance<T: Elem>(
    a: &ArrayViewD<'_, T>,
    axes: &[isize],
    keepdim: bool,
    correction: f64,
) -> Result<ArrayD<T>>
where
    T::Acc: Real,
{
    crate::owned(|d| variance_to(a, axes, keepdim, correction, d).map(|_| ()))
}

/// [`variance`] into a destination. (The leading-axes layout keeps the means in one temporary
/// vector; the others allocate nothing.)
pub fn variance_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    axes: &[isize],
    keepdim: bool,
    correction: f64,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Real,
{
    const OP: &str = "variance";
    let p = plan(OP, a.shape(), axes, keepdim)?;
    let g = groups(a, &p);
    let n = <T::Acc as Num>::from_f64(p.r as f64);
    let denom = <T::Acc as Num>::from_f64((p.r as f64 - correction).max(0.0));
    let zero = <T::Acc as Num>::ZERO;
    let mut out = dest.get(OP, p.out_shape.slice())?;
    let o = out_slice(OP, &mut out)?;
    match &g {
        Groups::Contig(s) if p.r > 0 => {
            for (gi, run) in s.chunks_exact(p.r).enumerate().take(p.k) {
                let mean = reduce_run(run, zero, &|x: T| x.to_acc(), &Num::add).div(n);
                let sq = reduce_run(
                    run,
                    zero,
                    &|x: T| {
                        let d = x.to_acc().sub(mean);
                        d.mul(d)
                    },
                    &Num::add,
                );
                o[gi] = T::from_acc(sq.div(denom));
            }
        }
        _ => {
            crate::alloc::check(OP, p.k, std::mem::size_of_val(&zero))?;
            let mut means = vec![zero; p.k];
            fold(
                &g,
                &p,
                zero,
                |x, _| x.to_acc(),
                Num::add,
                |i, v| means[i] = v.div(n),
            );
            fold(
                &g,
                &p,
                zero,
                |x, gi| {
                    let d = x.to_acc().sub(means[gi]);
                    d.mul(d)
                },
                Num::add,
                |i, v| o[i] = T::from_acc(v.div(denom)),
            );
        }
    }
    Ok(out)
}

fn arg_reduce<'w, T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    axis: isize,
    keepdim: bool,
    better: impl Fn(T::Acc, T::Acc) -> bool,
    dest: Dest<'w, i64>,
) -> Result<ArrayViewMutD<'w, i64>> {
    let ax = norm_axis(op, axis, a.ndim(), a.shape())?;
    if a.shape()[ax] == 0 {
        return Err(Error::op(
            op,
            format!("axis {axis} of shape {} is empty", fmt_shape(a.shape())),
        ));
    }
    let mut shape = a.raw_dim();
    shape[ax] = 1;
    if !keepdim {
        shape = shape.remove_axis(Axis(ax));
    }
    let mut out = dest.get(op, shape.slice())?;
    let is_nan = |x: T::Acc| x.partial_cmp(&x).is_none();
    let mut o = out.view_mut();
    if keepdim {
        o = o.index_axis_move(Axis(ax), 0);
    }
    Zip::from(&mut o)
        .and(a.lanes(Axis(ax)))
        .for_each(|o, lane| {
            let mut it = lane.iter().enumerate();
            let Some((_, &first)) = it.next() else {
                return;
            };
            let mut best = first.to_acc();
            let mut bi = 0usize;
            if !is_nan(best) {
                for (i, &x) in it {
                    let x = x.to_acc();
                    if is_nan(x) {
                        bi = i;
                        break;
                    }
                    if better(x, best) {
                        best = x;
                        bi = i;
                    }
                }
            }
            *o = bi as i64;
        });
    Ok(out)
}

/// Index of the first maximum along `axis` (NaN counts as the maximum, as in NumPy).
///
/// Fails on an out-of-range axis or an empty axis.
pub fn argmax<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize, keepdim: bool) -> Result<ArrayD<i64>>
where
    T::Acc: Num,
{
    crate::owned(|d| argmax_to(a, axis, keepdim, d).map(|_| ()))
}

/// [`argmax`] into a destination.
pub fn argmax_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    axis: isize,
    keepdim: bool,
    dest: Dest<'w, i64>,
) -> Result<ArrayViewMutD<'w, i64>>
where
    T::Acc: Num,
{
    arg_reduce("argmax", a, axis, keepdim, |x, best| x > best, dest)
}

/// Index of the first minimum along `axis` (NaN counts as the minimum, as in NumPy).
///
/// Fails on an out-of-range axis or an empty axis.
pub fn argmin<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize, keepdim: bool) -> Result<ArrayD<i64>>
where
    T::Acc: Num,
{
    crate::owned(|d| argmin_to(a, axis, keepdim, d).map(|_| ()))
}

/// [`argmin`] into a destination.
pub fn argmin_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    axis: isize,
    keepdim: bool,
    dest: Dest<'w, i64>,
) -> Result<ArrayViewMutD<'w, i64>>
where
    T::Acc: Num,
{
    arg_reduce("argmin", a, axis, keepdim, |x, best| x < best, dest)
}
