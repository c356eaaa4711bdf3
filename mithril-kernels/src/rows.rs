//! Row kernels over contiguous `[rows, cols]` data: per-row sum / mean / max / min, column sums
//! (sum over rows, e.g. for bias gradients), softmax, log-softmax, layer norm and RMS norm.
//!
//! Every kernel is multiversioned (AVX-512 / AVX2+FMA / baseline, chosen per call by
//! [`crate::isa::active`]; on aarch64 the `f32` kernels have hand-written NEON forms, bit for bit
//! the baseline) and generic over the element type ([`RowElem`]: `f32`, `f64`, `f16`,
//! `bf16`). Elements are computed in `f32` (`f64` for `f64`) and *accumulated* in a wider or equal
//! type: `f32` data accumulates in `f64`, `f64` in `f64`, `f16`/`bf16` in `f32`. Summation order is
//! fixed by the source (16 lane accumulators, then a fixed tree), so every ISA path gives the
//! same bits.
//!
//! # Error bounds
//!
//! With `u` the unit roundoff of the accumulation type (2⁻⁵³ for `f32`/`f64` data, 2⁻²⁴ for
//! `f16`/`bf16`), a row sum `ŝ` of `n` terms satisfies
//! `|ŝ - s| ≤ (⌈n/16⌉ min 128 + 4 + ⌈log₂⌈n/2048⌉⌉ + 1) · u · Σ|xᵢ|` before the final rounding to
//! the element type (½ ulp): blocks of 2048 are summed in 16 lanes, then combined pairwise. For
//! `f32` data that is the final rounding plus ~2⁻⁴⁵·Σ|xᵢ| — below an ulp of the result unless the
//! sum cancels massively. Column sums stream the rows in order into an `f64` accumulator row
//! (one thread-local buffer, grown once): `rows · 2⁻⁵³ · Σ|xᵢ|` before the final rounding, for
//! every element type. `mean` is the sum divided by `n`
//! in the accumulation type; `max`/`min` are exact (NaN propagates).
//!
//! Softmax / log-softmax / layer norm / RMS norm: statistics are accumulated as above; the
//! elementwise part runs in the compute type with [`crate::vmath`] functions (softmax restores
//! the rounding error of `x - max` with a 2Sum, so small probabilities keep full relative
//! accuracy). Measured maxima for `f32` (tests/rows.rs, rows of 7 to 100 000 random values of
//! scale 1 to 30, against an f64 reference; asserted bound in brackets): softmax 2.97 ulp (≤ 4)
//! for probabilities > 1e-30; log-softmax 9.2e-8·(1 + |y|) (≤ 4e-7); layer norm (unit gamma)
//! 2.1e-7 absolute (≤ 1e-6); RMS norm 0.98 ulp of max(|y|, 1) (≤ 3). `f16`/`bf16` results are
//! within one ulp of their type (the f32 computation is far more precise than the storage).
//!
//! # The `f32` layer norm and RMS norm
//!
//! `f32` data takes its own path through [`layer_norm`] / [`rms_norm`] (the batch-1
//! transformer's norms over `[128, 256]`, where the `f64` lanes' per-row reductions cost more
//! than the data): sums in 32 `f32` lanes over sub-blocks of 512 elements (16 per lane), a
//! fixed tree per sub-block, the sub-block totals added in `f64`; the per-row statistics in
//! `f64`. The layer norm is a shifted two-pass: `m₀ = Σx/n` (approximate), then `Σd`, `Σd²`
//! of `d = x − m₀`, `mean = m₀ + Σd/n`, `var = Σd²/n − (Σd/n)²`, and the output
//! `((x − m₀)·r + k)·γ + β` with `r = 1/√(var + eps)`, `k = −(Σd/n)·r`: the mean's rounding to
//! `f32` never enters the output. On x86-64 the AVX-512 form (two rows interleaved) and the
//! AVX2 form are intrinsics (`rows/x86.rs`), so is the NEON form (`rows/neon.rs`), the
//! baseline runs the portable source;
//! all give the same bits (the same additions in the same order, no fused multiply-adds). With
//! `u = 2⁻²⁴` the output is within `32u·(1 + |y|)` of the f64 result (measured 1.6u on hard
//! rows: 1e4 + N(0,1), 1e4 + 0.01·N(0,1), 1 + 1e-4·N(0,1), lengths 1 to 1000, where the former
//! `f64`-lane kernel, which subtracted the mean rounded to `f32`, was off by 4.8e-4 and
//! 3.9e-2), the statistics' `rstd` within 16u; the RMS norm within `16u·(1 + |y|)` (measured
//! 1.4u).
//!
//! # Preconditions (debug-asserted)
//!
//! `rows` is given by the output (`out.len()` for per-row results, `out.len() / cols` for
//! row-shaped results); `x.len() >= rows * cols`; `gamma`/`beta` have at least `cols` elements.
//! `cols == 0` is allowed: sums are 0, means NaN, max −∞, min +∞.

// `Isa` names only the x86 and NEON arms (see `isa`).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::vmath::VFloat;
use half::{bf16, f16};
use std::ops::{Add, Div, Mul, Sub};

/// The NEON forms of the `f32` kernels (aarch64).
#[cfg(target_arch = "aarch64")]
mod neon;
/// The AVX-512 / AVX2 forms of the `f32` layer norm and RMS norm (x86-64).
#[cfg(target_arch = "x86_64")]
mod x86;

/// A float type the row kernels compute or accumulate in (`f32`, `f64`).
pub trait Calc:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + VFloat
    + Send
    + Sync
    + 'static
{
    /// 0
    const ZERO: Self;
    /// 1
    const ONE: Self;
    /// −∞
    const NEG_INF: Self;
    /// +∞
    const INF: Self;
    /// from f64 (rounding)
    fn of(v: f64) -> Self;
    /// square root
    fn sqrt(self) -> Self;
    /// true for NaN
    fn nan(self) -> bool;
    /// to f64 (exact)
    fn f64(self) -> f64;
}

impl Calc for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    const INF: Self = f32::INFINITY;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self as f64
    }
}

impl Calc for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    const INF: Self = f64::INFINITY;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    #[inline(always)]
    fn nan(self) -> bool {
        self.is_nan()
    }
    #[inline(always)]
    fn f64(self) -> f64 {
        self
    }
}

/// An element type of row data: how it is loaded into the compute type `C`, stored back, and
/// which type `A` accumulates its sums.
pub trait RowElem: Copy + Send + Sync + 'static {
    /// compute type
    type C: Calc;
    /// accumulation type
    type A: Calc;
    /// `true` when storing a `C` value loses precision (softmax then recomputes instead of
    /// re-reading its stored exponentials)
    const NARROW: bool;
    /// widen to the compute type (exact)
    fn load(self) -> Self::C;
    /// round from the compute type
    fn store(c: Self::C) -> Self;
    /// compute → accumulation type (exact)
    fn up(c: Self::C) -> Self::A;
    /// accumulation → compute type (rounding)
    fn down(a: Self::A) -> Self::C;
}

impl RowElem for f32 {
    type C = f32;
    type A = f64;
    const NARROW: bool = false;
    #[inline(always)]
    fn load(self) -> f32 {
        self
    }
    #[inline(always)]
    fn store(c: f32) -> Self {
        c
    }
    #[inline(always)]
    fn up(c: f32) -> f64 {
        c as f64
    }
    #[inline(always)]
    fn down(a: f64) -> f32 {
        a as f32
    }
}

impl RowElem for f64 {
    type C = f64;
    type A = f64;
    const NARROW: bool = false;
    #[inline(always)]
    fn load(self) -> f64 {
        self
    }
    #[inline(always)]
    fn store(c: f64) -> Self {
        c
    }
    #[inline(always)]
    fn up(c: f64) -> f64 {
        c
    }
    #[inline(always)]
    fn down(a: f64) -> f64 {
        a
    }
}

impl RowElem for f16 {
    type C = f32;
    type A = f32;
    const NARROW: bool = true;
    #[inline(always)]
    fn load(self) -> f32 {
        crate::cvt::f16_to_f32(self.to_bits())
    }
    #[inline(always)]
    fn store(c: f32) -> Self {
        f16::from_bits(crate::cvt::f32_to_f16(c))
    }
    #[inline(always)]
    fn up(c: f32) -> f32 {
        c
    }
    #[inline(always)]
    fn down(a: f32) -> f32 {
        a
    }
}

impl RowElem for bf16 {
    type C = f32;
    type A = f32;
    const NARROW: bool = true;
    #[inline(always)]
    fn load(self) -> f32 {
        crate::cvt::bf16_to_f32(self.to_bits())
    }
    #[inline(always)]
    fn store(c: f32) -> Self {
        bf16::from_bits(crate::cvt::f32_to_bf16(c))
    }
    #[inline(always)]
    fn up(c: f32) -> f32 {
        c
    }
    #[inline(always)]
    fn down(a: f32) -> f32 {
        a
    }
}

/// Lane accumulators.
const L: usize = 16;
/// Elements summed in lanes before pairwise combination.
const BLK: usize = 2048;

#[inline(always)]
fn tree<A: Calc>(mut acc: [A; L]) -> A {
    let mut w = L / 2;
    while w > 0 {
        for j in 0..w {
            acc[j] = acc[j] + acc[j + w];
        }
        w /= 2;
    }
    acc[0]
}

/// Pairwise combination of block sums (a binary counter of partial sums: at most 64 levels).
struct Pairwise<A> {
    stack: [A; 64],
    size: [u64; 64],
    top: usize,
}

impl<A: Calc> Pairwise<A> {
    #[inline(always)]
    fn new() -> Self {
        Pairwise {
            stack: [A::ZERO; 64],
            size: [0; 64],
            top: 0,
        }
    }
    #[inline(always)]
    fn push(&mut self, mut s: A) {
        let mut sz = 1u64;
        while self.top > 0 && self.size[self.top - 1] == sz {
            self.top -= 1;
            s = self.stack[self.top] + s;
            sz *= 2;
        }
        self.stack[self.top] = s;
        self.size[self.top] = sz;
        self.top += 1;
    }
    #[inline(always)]
    fn total(&self) -> A {
        let mut t = A::ZERO;
        for i in (0..self.top).rev() {
            t = self.stack[i] + t;
        }
        t
    }
}

/// Σ f(xᵢ) over one block, in `L` lanes combined by a fixed tree.
#[inline(always)]
fn block_sum<T: Copy, A: Calc>(blk: &[T], f: &impl Fn(T) -> A) -> A {
    let mut acc = [A::ZERO; L];
    let mut it = blk.chunks_exact(L);
    for c in &mut it {
        for j in 0..L {
            acc[j] = acc[j] + f(c[j]);
        }
    }
    for (j, &v) in it.remainder().iter().enumerate() {
        acc[j] = acc[j] + f(v);
    }
    tree(acc)
}

/// Σ f(xᵢ), 16 lanes per block of `BLK`, blocks pairwise.
#[inline(always)]
fn psum<T: Copy, A: Calc>(x: &[T], f: impl Fn(T) -> A) -> A {
    let mut pw = Pairwise::<A>::new();
    for blk in x.chunks(BLK) {
        pw.push(block_sum(blk, &f));
    }
    pw.total()
}

/// Σ g(xᵢ) for a `g` computed in the compute type: `g` runs in a plain loop over sub-blocks into
/// a stack buffer (so it vectorizes at the compute type's width), which is then summed with the
/// same lanes, blocks and tree as [`psum`].
#[inline(always)]
fn psum_c<T: RowElem>(x: &[T], g: impl Fn(T) -> T::C) -> T::A {
    const SB: usize = 256;
    let mut pw = Pairwise::<T::A>::new();
    let mut tmp = [T::C::ZERO; SB];
    for blk in x.chunks(BLK) {
        let mut acc = [T::A::ZERO; L];
        for sb in blk.chunks(SB) {
            let t = &mut tmp[..sb.len()];
            for (t, &v) in t.iter_mut().zip(sb) {
                *t = g(v);
            }
            let mut it = t.chunks_exact(L);
            for c in &mut it {
                for j in 0..L {
                    acc[j] = acc[j] + T::up(c[j]);
                }
            }
            // SB is a multiple of L: only a block's last sub-block has a remainder
            for (j, &v) in it.remainder().iter().enumerate() {
                acc[j] = acc[j] + T::up(v);
            }
        }
        pw.push(tree(acc));
    }
    pw.total()
}

/// `out[i] = g(xᵢ)` and Σ `out`-values (as returned by `g`), same summation structure as `psum`.
#[inline(always)]
fn psum_store<T: Copy, O: Copy, A: Calc>(x: &[T], out: &mut [O], g: impl Fn(T) -> (O, A)) -> A {
    let mut pw = Pairwise::<A>::new();
    for (blk, oblk) in x.chunks(BLK).zip(out.chunks_mut(BLK)) {
        let mut acc = [A::ZERO; L];
        let mut it = blk.chunks_exact(L);
        let mut ot = oblk.chunks_exact_mut(L);
        for (c, o) in (&mut it).zip(&mut ot) {
            for j in 0..L {
                let (v, a) = g(c[j]);
                o[j] = v;
                acc[j] = acc[j] + a;
            }
        }
        for (j, (&v, o)) in it.remainder().iter().zip(ot.into_remainder()).enumerate() {
            let (w, a) = g(v);
            *o = w;
            acc[j] = acc[j] + a;
        }
        pw.push(tree(acc));
    }
    pw.total()
}

/// NaN-propagating max in lanes (`less` = false) or min (`less` = true), exact.
#[inline(always)]
fn extreme<T: RowElem>(x: &[T], less: bool) -> T::C {
    const LM: usize = 64;
    let init = if less { T::C::INF } else { T::C::NEG_INF };
    let mut acc = [init; LM];
    #[inline(always)]
    #[allow(clippy::neg_cmp_op_on_partial_ord)] // `!(v <= m)` is deliberately true for NaN
    fn step<C: Calc>(m: C, v: C, less: bool) -> C {
        // take v when it is beyond m or NaN, unless m is already NaN
        let beyond = if less { !(v >= m) } else { !(v <= m) };
        if beyond && !m.nan() {
            v
        } else {
            m
        }
    }
    let mut it = x.chunks_exact(LM);
    for c in &mut it {
        for j in 0..LM {
            acc[j] = step(acc[j], c[j].load(), less);
        }
    }
    for (j, &v) in it.remainder().iter().enumerate() {
        acc[j] = step(acc[j], v.load(), less);
    }
    // Lanes past the row's length still hold `init`, which `step` never takes: a short row
    // (a 10-class softmax) reduces only its own lanes.
    let used = x.len().clamp(1, LM);
    let mut m = acc[0];
    for &a in &acc[1..used] {
        m = step(m, a, less);
    }
    m
}

use crate::isa::multiversion;

#[inline(always)]
fn row<T>(x: &[T], r: usize, cols: usize) -> &[T] {
    &x[r * cols..(r + 1) * cols]
}

#[inline(always)]
fn sum_impl<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
    debug_assert!(x.len() >= out.len() * cols);
    for (r, o) in out.iter_mut().enumerate() {
        let s = psum(row(x, r, cols), |v: T| T::up(v.load()));
        *o = T::store(T::down(s));
    }
}

#[inline(always)]
fn mean_impl<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
    debug_assert!(x.len() >= out.len() * cols);
    let n = T::A::of(cols as f64);
    for (r, o) in out.iter_mut().enumerate() {
        let s = psum(row(x, r, cols), |v: T| T::up(v.load()));
        *o = T::store(T::down(s / n));
    }
}

#[inline(always)]
fn max_impl<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
    debug_assert!(x.len() >= out.len() * cols);
    for (r, o) in out.iter_mut().enumerate() {
        *o = T::store(extreme(row(x, r, cols), false));
    }
}

#[inline(always)]
fn min_impl<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
    debug_assert!(x.len() >= out.len() * cols);
    for (r, o) in out.iter_mut().enumerate() {
        *o = T::store(extreme(row(x, r, cols), true));
    }
}

thread_local! {
    /// `col_sum`'s f64 accumulator row: grown to the widest `cols` seen on this thread, never
    /// shrunk (one allocation per thread in steady state).
    static COL_ACC: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[inline(always)]
fn col_sum_impl<T: RowElem>(x: &[T], cols: usize, out: &mut [T], acc: &mut [f64]) {
    let rows = x.len() / cols;
    if cols == 1 {
        out[0] = T::store(T::down(psum(&x[..rows], |v: T| T::up(v.load()))));
        return;
    }
    // Stream the rows in order, adding each into an f64 accumulator row (L1/L2-resident): the
    // input is read once, sequentially, whatever its shape.
    let acc = &mut acc[..cols];
    acc.fill(0.0);
    for xr in x[..rows * cols].chunks_exact(cols) {
        for (a, v) in acc.iter_mut().zip(xr) {
            *a += v.load().f64();
        }
    }
    for (o, &a) in out[..cols].iter_mut().zip(acc.iter()) {
        *o = T::store(T::C::of(a));
    }
}

multiversion! {
    fn col_sum_acc<T: RowElem>(x: &[T], cols: usize, out: &mut [T], acc: &mut [f64]) => col_sum_impl;
}

/// Column sums: `out[c] = Σ_r x[r, c]` for `c < cols`, `rows = x.len() / cols` (the bias gradient
/// of `[rows, cols] + bias[cols]`). Precondition: `out.len() >= cols`. The rows are streamed in
/// order into an `f64` accumulator row kept in a thread-local buffer (grown to the widest `cols`
/// seen, then reused: no allocation in steady state).
pub fn col_sum<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
    debug_assert!(out.len() >= cols);
    if cols == 0 {
        return;
    }
    if cols == 1 {
        return col_sum_acc(x, cols, out, &mut []);
    }
    COL_ACC.with(|acc| {
        let mut acc = acc.borrow_mut();
        if acc.len() < cols {
            acc.resize(cols, 0.0);
        }
        col_sum_acc(x, cols, out, &mut acc[..cols]);
    });
}

/// exp(x - m) with the rounding error of `x - m` restored (2Sum): without it the relative error
/// of a small probability grows like |x - m| ulp.
#[inline(always)]
fn exp_shift<C: Calc>(x: C, m: C) -> C {
    let d = x - m;
    let bp = d - x;
    let err = (x - (d - bp)) + (C::ZERO - m - bp);
    let err = if err.nan() { C::ZERO } else { err };
    let e = d.vexp();
    e + e * err
}

#[inline(always)]
fn softmax_impl<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
    if cols == 0 {
        return;
    }
    let rows = out.len() / cols;
    debug_assert!(x.len() >= rows * cols);
    for r in 0..rows {
        let xr = row(x, r, cols);
        let or = &mut out[r * cols..(r + 1) * cols];
        let m = extreme(xr, false);
        let s = if T::NARROW {
            psum_store(xr, or, |v: T| {
                let e = (v.load() - m).vexp();
                (T::store(e), T::up(e))
            })
        } else {
            // store exp(x - m) block by block, then sum the block while it is in L1 (a fused
            // loop would run the exponentials at the width of the wider accumulator)
            let mut pw = Pairwise::<T::A>::new();
            for (blk, oblk) in xr.chunks(BLK).zip(or.chunks_mut(BLK)) {
                for (o, &v) in oblk.iter_mut().zip(blk) {
                    *o = T::store(exp_shift(v.load(), m));
                }
                pw.push(block_sum(oblk, &|v: T| T::up(v.load())));
            }
            pw.total()
        };
        let inv = T::C::ONE / T::down(s);
        if T::NARROW {
            for (o, &v) in or.iter_mut().zip(xr) {
                *o = T::store((v.load() - m).vexp() * inv);
            }
        } else {
            for o in or.iter_mut() {
                *o = T::store(o.load() * inv);
            }
        }
    }
}

#[inline(always)]
fn softmax_inplace_impl<T: RowElem>(x: &mut [T], cols: usize) {
    if cols == 0 {
        return;
    }
    for xr in x.chunks_exact_mut(cols) {
        let m = extreme(xr, false);
        if T::NARROW {
            let s = psum_c(xr, |v: T| (v.load() - m).vexp());
            let inv = T::C::ONE / T::down(s);
            for v in xr.iter_mut() {
                *v = T::store((v.load() - m).vexp() * inv);
            }
        } else {
            let mut pw = Pairwise::<T::A>::new();
            for blk in xr.chunks_mut(BLK) {
                for v in blk.iter_mut() {
                    *v = T::store(exp_shift(v.load(), m));
                }
                pw.push(block_sum(blk, &|v: T| T::up(v.load())));
            }
            let inv = T::C::ONE / T::down(pw.total());
            for v in xr.iter_mut() {
                *v = T::store(v.load() * inv);
            }
        }
    }
}

#[inline(always)]
fn log_softmax_inplace_impl<T: RowElem>(x: &mut [T], cols: usize) {
    if cols == 0 {
        return;
    }
    for xr in x.chunks_exact_mut(cols) {
        let m = extreme(xr, false);
        let s = psum_c(xr, |v: T| (v.load() - m).vexp());
        let lse = T::down(s).vln();
        for v in xr.iter_mut() {
            *v = T::store(v.load() - m - lse);
        }
    }
}

#[inline(always)]
fn log_softmax_impl<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
    if cols == 0 {
        return;
    }
    let rows = out.len() / cols;
    debug_assert!(x.len() >= rows * cols);
    for r in 0..rows {
        let xr = row(x, r, cols);
        let or = &mut out[r * cols..(r + 1) * cols];
        let m = extreme(xr, false);
        let s = psum_c(xr, |v: T| (v.load() - m).vexp());
        let lse = T::down(s).vln();
        for (o, &v) in or.iter_mut().zip(xr) {
            *o = T::store(v.load() - m - lse);
        }
    }
}

/// Per-row statistics written by [`layer_norm`]: the mean and `1/√(var + eps)` of every row.
pub struct NormStats<'a, T> {
    /// row means, `rows` elements
    pub mean: &'a mut [T],
    /// row reciprocal standard deviations, `rows` elements
    pub rstd: &'a mut [T],
}

/// Lanes of the `f32` norm kernels' sums ([`f32_sums`]).
const LF: usize = 32;
/// Elements of one `f32` sub-block of those sums (16 per lane): its lanes are summed in `f32`,
/// reduced by [`tree_f32`], and the sub-block totals added in `f64`, in order.
const SBF: usize = 512;

/// The fixed reduction tree of [`LF`] `f32` lanes (halves added pairwise).
#[inline(always)]
fn tree_f32(mut a: [f32; LF]) -> f32 {
    let mut w = LF / 2;
    while w > 0 {
        for j in 0..w {
            a[j] += a[j + w];
        }
        w /= 2;
    }
    a[0]
}

/// `(Σ f(xᵢ).0, Σ f(xᵢ).1)` over a row in the `f32` norm kernels' fixed structure: element `i`
/// of a sub-block of [`SBF`] goes to `f32` lane `i % LF`, the lanes reduce by [`tree_f32`], the
/// sub-block totals add in `f64` in order. Plain `f32` additions in an order the source fixes
/// (Rust never contracts them into fused multiply-adds), so the AVX-512, AVX2, baseline and
/// NEON copies of it give the same bits. A sum the caller does not use (`f` returning a
/// constant 0 as `.1`) is removed by the optimizer.
#[inline(always)]
fn f32_sums(x: &[f32], f: impl Fn(f32) -> (f32, f32)) -> (f64, f64) {
    let (mut s0, mut s1) = (0f64, 0f64);
    for sb in x.chunks(SBF) {
        let mut a = [0f32; LF];
        let mut b = [0f32; LF];
        let mut it = sb.chunks_exact(LF);
        for c in &mut it {
            for j in 0..LF {
                let (p, q) = f(c[j]);
                a[j] += p;
                b[j] += q;
            }
        }
        for (j, &v) in it.remainder().iter().enumerate() {
            let (p, q) = f(v);
            a[j] += p;
            b[j] += q;
        }
        s0 += tree_f32(a) as f64;
        s1 += tree_f32(b) as f64;
    }
    (s0, s1)
}

/// `x` as `f32`s when `T` is `f32` (the norm kernels' `f32` path).
#[inline(always)]
fn as_f32<T: 'static>(x: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: `T` is `f32`.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

/// `x` as mutable `f32`s when `T` is `f32`.
#[inline(always)]
fn as_f32_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: `T` is `f32`.
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// The layer norm's row statistics from the shifted sums ([`layer_norm_f32`]): `c = Σd/n`,
/// `var = max(Σd²/n − c², 0)` and `r = 1/√(var + eps)` in `f64`; returns the mean `m₀ + c`
/// and `r` rounded to `f32` (the [`NormStats`]), and `k = −c·r` in `f32`. Shared by every
/// ISA path, so all of them give the same bits.
#[inline(always)]
fn ln_stats(cols: usize, m0: f32, sd: f64, sq: f64, eps: f64) -> (f32, f32, f32) {
    let n = cols as f64;
    let c = sd / n;
    let var = sq / n - c * c;
    // rounding can leave a constant row's variance a hair below 0 (a NaN stays NaN)
    let var = if var < 0.0 { 0.0 } else { var };
    let rstd = 1.0 / (var + eps).sqrt();
    ((m0 as f64 + c) as f32, rstd as f32, (-c * rstd) as f32)
}

/// The RMS norm's `1/√(Σx²/n + eps)` in `f64`, rounded to `f32` (shared by every ISA path).
#[inline(always)]
fn rms_rstd(cols: usize, sq: f64, eps: f64) -> f32 {
    (1.0 / (sq / cols as f64 + eps).sqrt()) as f32
}

/// The `f32` layer norm: the baseline's form, and the reference the AVX-512 / AVX2 / NEON
/// intrinsics forms (`rows/x86.rs`, `rows/neon.rs`) follow bit for bit.
///
/// Per row, three passes over the (L1-resident) row: `m₀ = Σx / n` ([`f32_sums`]: an
/// approximate mean), then `Σd` and `Σd²` of the shifted values `d = x − m₀` (exact when `x`
/// is within a factor 2 of `m₀`), then the output. The exact statistics follow in `f64`:
/// `c = Σd / n`, `mean = m₀ + c`, `var = Σd²/n − c²` (`c` is tiny next to the spread, so the
/// subtraction cancels nothing that matters), one `sqrt` and one division per row; the output
/// is `((x − m₀)·r + k)·γ + β` with `r = 1/√(var + eps)` and `k = −c·r` rounded to `f32`. So
/// the mean's rounding never enters the output (the former form subtracted the mean rounded
/// to `f32`, off by up to half an ulp of the mean times `r`: 4.8e-4 measured on 1e4 + N(0,1) rows).
#[inline(always)]
fn layer_norm_f32(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut stats: Option<NormStats<'_, f32>>,
) {
    let rows = out.len() / cols;
    debug_assert!(x.len() >= rows * cols);
    let n = cols as f64;
    let gamma = gamma.map(|g| &g[..cols]);
    let beta = beta.map(|b| &b[..cols]);
    for r in 0..rows {
        let xr = row(x, r, cols);
        let or = &mut out[r * cols..(r + 1) * cols];
        let m0 = (f32_sums(xr, |v| (v, 0.0)).0 / n) as f32;
        let (sd, sq) = f32_sums(xr, |v| {
            let d = v - m0;
            (d, d * d)
        });
        let (mean, rc, k) = ln_stats(cols, m0, sd, sq, eps);
        if let Some(st) = stats.as_mut() {
            st.mean[r] = mean;
            st.rstd[r] = rc;
        }
        match (gamma, beta) {
            (Some(g), Some(b)) => {
                for (((o, &v), &g), &b) in or.iter_mut().zip(xr).zip(g).zip(b) {
                    *o = ((v - m0) * rc + k) * g + b;
                }
            }
            (Some(g), None) => {
                for ((o, &v), &g) in or.iter_mut().zip(xr).zip(g) {
                    *o = ((v - m0) * rc + k) * g;
                }
            }
            (None, Some(b)) => {
                for ((o, &v), &b) in or.iter_mut().zip(xr).zip(b) {
                    *o = ((v - m0) * rc + k) + b;
                }
            }
            (None, None) => {
                for (o, &v) in or.iter_mut().zip(xr) {
                    *o = (v - m0) * rc + k;
                }
            }
        }
    }
}

/// The `f32` RMS norm (the baseline's form; the intrinsics forms follow it bit for bit): `Σx²` by
/// [`f32_sums`], then one `sqrt` and one division per row in `f64`, `out = x·r·γ` in `f32`.
#[inline(always)]
fn rms_norm_f32(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut rstd_out: Option<&mut [f32]>,
) {
    let rows = out.len() / cols;
    debug_assert!(x.len() >= rows * cols);
    let gamma = gamma.map(|g| &g[..cols]);
    for r in 0..rows {
        let xr = row(x, r, cols);
        let or = &mut out[r * cols..(r + 1) * cols];
        let rc = rms_rstd(cols, f32_sums(xr, |v| (v * v, 0.0)).0, eps);
        if let Some(ro) = rstd_out.as_deref_mut() {
            ro[r] = rc;
        }
        match gamma {
            Some(g) => {
                for ((o, &v), &g) in or.iter_mut().zip(xr).zip(g) {
                    *o = v * rc * g;
                }
            }
            None => {
                for (o, &v) in or.iter_mut().zip(xr) {
                    *o = v * rc;
                }
            }
        }
    }
}

#[inline(always)]
fn layer_norm_impl<T: RowElem>(
    x: &[T],
    cols: usize,
    gamma: Option<&[T]>,
    beta: Option<&[T]>,
    eps: f64,
    out: &mut [T],
    mut stats: Option<NormStats<'_, T>>,
) {
    if cols == 0 {
        return;
    }
    if let (Some(xf), Some(of)) = (as_f32(x), as_f32_mut(out)) {
        let st = stats.and_then(|st| {
            Some(NormStats {
                mean: as_f32_mut(st.mean)?,
                rstd: as_f32_mut(st.rstd)?,
            })
        });
        let g = gamma.and_then(as_f32);
        let b = beta.and_then(as_f32);
        match crate::isa::active() {
            // SAFETY: `active` only returns levels the CPU supports.
            #[cfg(target_arch = "x86_64")]
            crate::isa::Isa::Avx512 => unsafe {
                x86::layer_norm_avx512(xf, cols, g, b, eps, of, st)
            },
            #[cfg(target_arch = "x86_64")]
            crate::isa::Isa::Avx2 => unsafe { x86::layer_norm_avx2(xf, cols, g, b, eps, of, st) },
            #[cfg(target_arch = "aarch64")]
            crate::isa::Isa::Neon => neon::layer_norm(xf, cols, g, b, eps, of, st),
            _ => layer_norm_f32(xf, cols, g, b, eps, of, st),
        }
        return;
    }
    let rows = out.len() / cols;
    debug_assert!(x.len() >= rows * cols);
    let n = T::A::of(cols as f64);
    let eps = T::A::of(eps);
    let gamma = gamma.map(|g| &g[..cols]);
    let beta = beta.map(|b| &b[..cols]);
    for r in 0..rows {
        let xr = row(x, r, cols);
        let or = &mut out[r * cols..(r + 1) * cols];
        let mean = psum(xr, |v: T| T::up(v.load())) / n;
        // squared deviations from the rounded mean in the compute type (relative error ≤ 3·2⁻²⁴
        // per term, all terms positive), accumulated in the accumulation type
        let mc = T::down(mean);
        let var = psum_c(xr, |v: T| {
            let d = v.load() - mc;
            d * d
        }) / n;
        let rstd = T::A::ONE / (var + eps).sqrt();
        if let Some(st) = stats.as_mut() {
            st.mean[r] = T::store(T::down(mean));
            st.rstd[r] = T::store(T::down(rstd));
        }
        let rc = T::down(rstd);
        match (gamma, beta) {
            (Some(g), Some(b)) => {
                for (((o, &v), &g), &b) in or.iter_mut().zip(xr).zip(g).zip(b) {
                    *o = T::store((v.load() - mc) * rc * g.load() + b.load());
                }
            }
            (Some(g), None) => {
                for ((o, &v), &g) in or.iter_mut().zip(xr).zip(g) {
                    *o = T::store((v.load() - mc) * rc * g.load());
                }
            }
            (None, Some(b)) => {
                for ((o, &v), &b) in or.iter_mut().zip(xr).zip(b) {
                    *o = T::store((v.load() - mc) * rc + b.load());
                }
            }
            (None, None) => {
                for (o, &v) in or.iter_mut().zip(xr) {
                    *o = T::store((v.load() - mc) * rc);
                }
            }
        }
    }
}

#[inline(always)]
fn rms_norm_impl<T: RowElem>(
    x: &[T],
    cols: usize,
    gamma: Option<&[T]>,
    eps: f64,
    out: &mut [T],
    rstd_out: Option<&mut [T]>,
) {
    if cols == 0 {
        return;
    }
    if let (Some(xf), Some(of)) = (as_f32(x), as_f32_mut(out)) {
        let g = gamma.and_then(as_f32);
        let ro = rstd_out.and_then(as_f32_mut);
        match crate::isa::active() {
            // SAFETY: `active` only returns levels the CPU supports.
            #[cfg(target_arch = "x86_64")]
            crate::isa::Isa::Avx512 => unsafe { x86::rms_norm_avx512(xf, cols, g, eps, of, ro) },
            #[cfg(target_arch = "x86_64")]
            crate::isa::Isa::Avx2 => unsafe { x86::rms_norm_avx2(xf, cols, g, eps, of, ro) },
            #[cfg(target_arch = "aarch64")]
            crate::isa::Isa::Neon => neon::rms_norm(xf, cols, g, eps, of, ro),
            _ => rms_norm_f32(xf, cols, g, eps, of, ro),
        }
        return;
    }
    let rows = out.len() / cols;
    debug_assert!(x.len() >= rows * cols);
    let n = T::A::of(cols as f64);
    let eps = T::A::of(eps);
    let gamma = gamma.map(|g| &g[..cols]);
    let mut rstd_out = rstd_out;
    for r in 0..rows {
        let xr = row(x, r, cols);
        let or = &mut out[r * cols..(r + 1) * cols];
        let ms = psum_c(xr, |v: T| {
            let a = v.load();
            a * a
        }) / n;
        let rstd = T::A::ONE / (ms + eps).sqrt();
        if let Some(ro) = rstd_out.as_deref_mut() {
            ro[r] = T::store(T::down(rstd));
        }
        let rc = T::down(rstd);
        match gamma {
            Some(g) => {
                for ((o, &v), &g) in or.iter_mut().zip(xr).zip(g) {
                    *o = T::store(v.load() * rc * g.load());
                }
            }
            None => {
                for (o, &v) in or.iter_mut().zip(xr) {
                    *o = T::store(v.load() * rc);
                }
            }
        }
    }
}

/// The NEON hooks of the multiversioned kernels: the `f32` forms of [`neon`], the baseline copy
/// for the other element types.
#[cfg(target_arch = "aarch64")]
mod neon_hooks {
    use super::*;

    macro_rules! per_row {
        ($($hook:ident => $imp:ident, $nf:ident;)*) => {$(
            #[inline]
            pub(super) fn $hook<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) {
                if let (Some(x), Some(o)) = (neon::f32s(x), neon::f32s_mut(out)) {
                    return neon::$nf(x, cols, o);
                }
                $imp::<T>(x, cols, out)
            }
        )*};
    }
    per_row! {
        sum_neon => sum_impl, sum;
        mean_neon => mean_impl, mean;
        max_neon => max_impl, max;
        min_neon => min_impl, min;
        softmax_neon => softmax_impl, softmax;
        log_softmax_neon => log_softmax_impl, log_softmax;
    }

    #[inline]
    pub(super) fn softmax_inplace_neon<T: RowElem>(x: &mut [T], cols: usize) {
        match neon::f32s_mut(x) {
            Some(x) => neon::softmax_inplace(x, cols),
            None => softmax_inplace_impl::<T>(x, cols),
        }
    }

    #[inline]
    pub(super) fn log_softmax_inplace_neon<T: RowElem>(x: &mut [T], cols: usize) {
        match neon::f32s_mut(x) {
            Some(x) => neon::log_softmax_inplace(x, cols),
            None => log_softmax_inplace_impl::<T>(x, cols),
        }
    }
}
#[cfg(target_arch = "aarch64")]
use neon_hooks::*;

multiversion! {
    /// `out[r] = Σ_c x[r, c]` for `r < out.len()` (see the module docs for the error bound).
    pub fn sum<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) => sum_impl, neon: sum_neon;
}
multiversion! {
    /// `out[r] = mean_c x[r, c]` for `r < out.len()` (NaN when `cols == 0`).
    pub fn mean<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) => mean_impl, neon: mean_neon;
}
multiversion! {
    /// `out[r] = max_c x[r, c]` (NaN if the row has one; −∞ when `cols == 0`).
    pub fn max<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) => max_impl, neon: max_neon;
}
multiversion! {
    /// `out[r] = min_c x[r, c]` (NaN if the row has one; +∞ when `cols == 0`).
    pub fn min<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) => min_impl, neon: min_neon;
}
multiversion! {
    /// Row softmax: `out[r, c] = exp(x[r, c] - m_r) / Σ_c exp(x[r, c] - m_r)`, `m_r` the row
    /// max; `rows = out.len() / cols`. A row holding +∞ or NaN gives NaN.
    pub fn softmax<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) => softmax_impl, neon: softmax_neon;
}
multiversion! {
    /// Row log-softmax: `out[r, c] = x[r, c] - m_r - ln Σ_c exp(x[r, c] - m_r)`.
    pub fn log_softmax<T: RowElem>(x: &[T], cols: usize, out: &mut [T]) => log_softmax_impl, neon: log_softmax_neon;
}
multiversion! {
    /// Layer norm over each row: `out = (x - mean) / √(var + eps) · gamma + beta` (biased
    /// variance, two-pass, accumulated as the module docs say: `f32` data in `f32` lanes, bit
    /// for bit the same on every ISA path); `gamma`/`beta` default to 1/0.
    /// `stats`, when given, receives each row's mean and `1/√(var + eps)` (for the backward).
    pub fn layer_norm<T: RowElem>(
        x: &[T],
        cols: usize,
        gamma: Option<&[T]>,
        beta: Option<&[T]>,
        eps: f64,
        out: &mut [T],
        stats: Option<NormStats<'_, T>>,
    ) => layer_norm_impl;
}
multiversion! {
    /// RMS norm over each row: `out = x / √(mean(x²) + eps) · gamma`; `rstd`, when given,
    /// receives each row's `1/√(mean(x²) + eps)`.
    pub fn rms_norm<T: RowElem>(
        x: &[T],
        cols: usize,
        gamma: Option<&[T]>,
        eps: f64,
        out: &mut [T],
        rstd: Option<&mut [T]>,
    ) => rms_norm_impl;
}
multiversion! {
    /// [`softmax`] in place: `x[r, c]` becomes the softmax of row `r` (`rows = x.len() / cols`);
    /// the same bits as the out-of-place kernel.
    pub fn softmax_inplace<T: RowElem>(x: &mut [T], cols: usize) => softmax_inplace_impl, neon: softmax_inplace_neon;
}
multiversion! {
    /// [`log_softmax`] in place (the same bits as the out-of-place kernel).
    pub fn log_softmax_inplace<T: RowElem>(x: &mut [T], cols: usize) => log_softmax_inplace_impl, neon: log_softmax_inplace_neon;
}
