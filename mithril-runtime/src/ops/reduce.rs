//! Reductions over one or more axes: `sum mean max min prod variance argmax argmin`.
//!
//! `axes` may hold negative axes (counted from the end); an empty `axes` reduces every axis.
//! `keepdim` keeps each reduced axis as length 1 (NumPy `keepdims`, PyTorch `keepdim`).
//! Duplicate or out-of-range axes are errors.
//!
//! Floats accumulate in `T::Acc` (`f32` for `f16`/`bf16`) with eight interleaved accumulators and
//! pairwise splitting of long runs, which keeps the rounding error of long sums small; when the
//! reduced axes are the leading axes of a contiguous array, blocks of rows are accumulated
//! (vectorized across the row) and the block results are merged pairwise.

use std::borrow::Cow;

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn, Zip};

use super::{fmt_shape, norm_axis};
use crate::scalar::{Num, Real};
use crate::{Elem, Error, Result};

/// Runs of at most this many elements are reduced with flat interleaved accumulation.
const LEAF: usize = 128;
/// Rows accumulated flat into one partial result (leading-axes case).
const ROW_BLOCK: usize = 64;

/// Which axes are reduced and what the result looks like.
struct Plan {
    /// `true` for each reduced axis.
    reduced: Vec<bool>,
    /// Output shape, `keepdim` applied.
    out_shape: Vec<usize>,
    /// Number of outputs.
    k: usize,
    /// Number of elements reduced into each output.
    r: usize,
}

fn plan(op: &str, shape: &[usize], axes: &[isize], keepdim: bool) -> Result<Plan> {
    let nd = shape.len();
    let mut reduced = vec![axes.is_empty(); nd];
    let mut seen = vec![false; nd];
    for &ax in axes {
        let i = norm_axis(op, ax, nd, shape)?;
        if seen[i] {
            return Err(Error::op(
                op,
                format!(
                    "axis {ax} is repeated in axes {axes:?} (shape {})",
                    fmt_shape(shape)
                ),
            ));
        }
        seen[i] = true;
        reduced[i] = true;
    }
    let mut out_shape = Vec::with_capacity(nd);
    let (mut k, mut r) = (1usize, 1usize);
    for (&d, &red) in shape.iter().zip(&reduced) {
        if red {
            r *= d;
            if keepdim {
                out_shape.push(1);
            }
        } else {
            k *= d;
            out_shape.push(d);
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
    let mut perm: Vec<usize> = (0..a.ndim()).filter(|&i| !p.reduced[i]).collect();
    perm.extend((0..a.ndim()).filter(|&i| p.reduced[i]));
    let pv = a.clone().permuted_axes(perm);
    if let Some(s) = pv.to_slice() {
        return Groups::Contig(Cow::Borrowed(s));
    }
    let n_lead = p.reduced.iter().take_while(|&&r| r).count();
    if p.reduced[n_lead..].iter().all(|&r| !r) {
        if let Some(s) = a.to_slice() {
            return Groups::Rows(s);
        }
    }
    Groups::Contig(Cow::Owned(pv.iter().copied().collect()))
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

/// One value per output: the reduction of `map(x, output index)` under `comb` from `id`.
fn fold<T: Elem, A: Copy>(
    g: &Groups<'_, T>,
    p: &Plan,
    id: A,
    map: impl Fn(T, usize) -> A,
    comb: impl Fn(A, A) -> A,
) -> Vec<A> {
    let (k, r) = (p.k, p.r);
    if k == 0 {
        return Vec::new();
    }
    match g {
        Groups::Contig(s) => {
            if r == 0 {
                return vec![id; k];
            }
            s.chunks_exact(r)
                .enumerate()
                .map(|(gi, run)| reduce_run(run, id, &|x| map(x, gi), &comb))
                .collect()
        }
        Groups::Rows(s) => {
            // Blocks of rows are accumulated flat; block partials are merged pairwise (a binary
            // counter of partial sums), so the error grows with log(rows), not rows.
            let mut stack: Vec<(u32, Vec<A>)> = Vec::new();
            for block in s.chunks(k * ROW_BLOCK) {
                let mut part = vec![id; k];
                for row in block.chunks_exact(k) {
                    for (j, (acc, &x)) in part.iter_mut().zip(row).enumerate() {
                        *acc = comb(*acc, map(x, j));
                    }
                }
                let mut level = 0;
                while stack.last().is_some_and(|(l, _)| *l == level) {
                    if let Some((_, prev)) = stack.pop() {
                        merge_into(&mut part, &prev, &comb);
                    }
                    level += 1;
                }
                stack.push((level, part));
            }
            let mut total = vec![id; k];
            while let Some((_, prev)) = stack.pop() {
                merge_into(&mut total, &prev, &comb);
            }
            total
        }
    }
}

/// `dst[j] = comb(earlier[j], dst[j])`.
fn merge_into<A: Copy>(dst: &mut [A], earlier: &[A], comb: &impl Fn(A, A) -> A) {
    for (d, &e) in dst.iter_mut().zip(earlier) {
        *d = comb(e, *d);
    }
}

fn finish<T: Elem, A: Copy>(
    op: &str,
    p: &Plan,
    vals: Vec<A>,
    f: impl Fn(A) -> T,
) -> Result<ArrayD<T>> {
    let data: Vec<T> = vals.into_iter().map(f).collect();
    ArrayD::from_shape_vec(IxDyn(&p.out_shape), data).map_err(|e| {
        Error::op(
            op,
            format!("internal: result shape {}: {e}", fmt_shape(&p.out_shape)),
        )
    })
}

fn reduce_plain<T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    axes: &[isize],
    keepdim: bool,
    needs_elements: bool,
    id: T::Acc,
    comb: impl Fn(T::Acc, T::Acc) -> T::Acc,
) -> Result<ArrayD<T>> {
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
    let vals = fold(&g, &p, id, |x, _| x.to_acc(), comb);
    finish(op, &p, vals, T::from_acc)
}

/// Sum over `axes` (all axes when empty). Integers wrap.
pub fn sum<T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    reduce_plain("sum", a, axes, keepdim, false, Num::ZERO, Num::add)
}

/// Product over `axes` (all axes when empty). Integers wrap.
pub fn prod<T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    reduce_plain("prod", a, axes, keepdim, false, Num::ONE, Num::mul)
}

/// Maximum over `axes` (all axes when empty). NaN propagates; an empty reduction is an error.
pub fn max<T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    reduce_plain("max", a, axes, keepdim, true, Num::LOWEST, Num::max)
}

/// Minimum over `axes` (all axes when empty). NaN propagates; an empty reduction is an error.
pub fn min<T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    reduce_plain("min", a, axes, keepdim, true, Num::HIGHEST, Num::min)
}

/// Per-output sums and the plan, shared by `mean` and `variance`.
fn sums<'a, T: Elem>(
    op: &str,
    a: &ArrayViewD<'a, T>,
    axes: &[isize],
    keepdim: bool,
) -> Result<(Plan, Groups<'a, T>, Vec<T::Acc>)>
where
    T::Acc: Num,
{
    let p = plan(op, a.shape(), axes, keepdim)?;
    let g = groups(a, &p);
    let s = fold(&g, &p, <T::Acc as Num>::ZERO, |x, _| x.to_acc(), Num::add);
    Ok((p, g, s))
}

/// Arithmetic mean over `axes` (all axes when empty); NaN for an empty reduction.
pub fn mean<T: Elem>(a: &ArrayViewD<'_, T>, axes: &[isize], keepdim: bool) -> Result<ArrayD<T>>
where
    T::Acc: Real,
{
    let (p, _, s) = sums("mean", a, axes, keepdim)?;
    let n = <T::Acc as Num>::from_f64(p.r as f64);
    finish("mean", &p, s, |v| T::from_acc(v.div(n)))
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
    let (p, g, s) = sums("variance", a, axes, keepdim)?;
    let n = <T::Acc as Num>::from_f64(p.r as f64);
    let means: Vec<T::Acc> = s.into_iter().map(|v| v.div(n)).collect();
    let sq = fold(
        &g,
        &p,
        <T::Acc as Num>::ZERO,
        |x, gi| {
            let d = x.to_acc().sub(means[gi]);
            d.mul(d)
        },
        Num::add,
    );
    let denom = <T::Acc as Num>::from_f64((p.r as f64 - correction).max(0.0));
    finish("variance", &p, sq, |v| T::from_acc(v.div(denom)))
}

fn arg_reduce<T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    axis: isize,
    keepdim: bool,
    better: impl Fn(T::Acc, T::Acc) -> bool,
) -> Result<ArrayD<i64>> {
    let ax = norm_axis(op, axis, a.ndim(), a.shape())?;
    if a.shape()[ax] == 0 {
        return Err(Error::op(
            op,
            format!("axis {axis} of shape {} is empty", fmt_shape(a.shape())),
        ));
    }
    let out_shape: Vec<usize> = a
        .shape()
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != ax)
        .map(|(_, &d)| d)
        .collect();
    let mut out = ArrayD::<i64>::zeros(IxDyn(&out_shape));
    let is_nan = |x: T::Acc| x.partial_cmp(&x).is_none();
    Zip::from(&mut out)
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
    if keepdim {
        out = out.insert_axis(Axis(ax));
    }
    Ok(out)
}

/// Index of the first maximum along `axis` (NaN counts as the maximum, as in NumPy).
///
/// Fails on an out-of-range axis or an empty axis.
pub fn argmax<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize, keepdim: bool) -> Result<ArrayD<i64>>
where
    T::Acc: Num,
{
    arg_reduce("argmax", a, axis, keepdim, |x, best| x > best)
}

/// Index of the first minimum along `axis` (NaN counts as the minimum, as in NumPy).
///
/// Fails on an out-of-range axis or an empty axis.
pub fn argmin<T: Elem>(a: &ArrayViewD<'_, T>, axis: isize, keepdim: bool) -> Result<ArrayD<i64>>
where
    T::Acc: Num,
{
    arg_reduce("argmin", a, axis, keepdim, |x, best| x < best)
}
