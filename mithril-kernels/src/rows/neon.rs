//! NEON (`core::arch::aarch64`) forms of the `f32` row kernels: the row max / min, sums and
//! means, softmax and log-softmax, chosen when [`crate::isa::active`] is
//! [`crate::isa::Isa::Neon`] and the element type is `f32` (the other element types run the
//! baseline copy). The `f32` layer norm and RMS norm keep the parent's `f32`-lane structure
//! (32 lanes as eight `float32x4_t`, the same tree, the shared per-row statistics).
//!
//! They keep the baseline's summation structure exactly — element `i` of a block of
//! [`BLK`] goes to lane `i % 16` of the `f64` accumulators (eight `float64x2_t`), the lanes
//! combine by the same tree, blocks pairwise — and the baseline's element operations (the
//! exponentials of [`crate::vmath::neon`], no contracted multiply-adds), so every result is
//! bit for bit the baseline's (`isa_paths` checks it under qemu). The max / min keep 64 lanes
//! (sixteen `float32x4_t`) with the baseline's NaN-propagating, first-wins step.

#![allow(unused_unsafe)]

use super::{ln_stats, rms_rstd, tree, NormStats, Pairwise, BLK, L, LF, SBF};
use crate::vmath::neon as vm;
use crate::vmath::VFloat;
use std::any::TypeId;
use std::arch::aarch64::*;

/// `x` as `f32`s when `T` is `f32`.
#[inline(always)]
pub(super) fn f32s<T: 'static>(x: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: `T` is `f32`.
        .then(|| unsafe { std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()) })
}

/// `x` as mutable `f32`s when `T` is `f32`.
#[inline(always)]
pub(super) fn f32s_mut<T: 'static>(x: &mut [T]) -> Option<&mut [f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>())
        // SAFETY: `T` is `f32`.
        .then(|| unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut f32, x.len()) })
}

/// The baseline's max / min step (take `v` when beyond `m` or NaN, unless `m` is NaN).
#[inline(always)]
#[allow(clippy::neg_cmp_op_on_partial_ord)]
fn step(m: f32, v: f32, less: bool) -> f32 {
    let beyond = if less { !(v >= m) } else { !(v <= m) };
    if beyond && !m.is_nan() {
        v
    } else {
        m
    }
}

/// [`step`] on four lanes.
#[inline(always)]
fn step_v(m: float32x4_t, v: float32x4_t, less: bool) -> float32x4_t {
    unsafe {
        let within = if less {
            vcgeq_f32(v, m)
        } else {
            vcleq_f32(v, m)
        };
        let take = vbicq_u32(vceqq_f32(m, m), within);
        vbslq_f32(take, v, m)
    }
}

/// The baseline's `extreme` on `f32`: 64 lanes, then lanes `0..min(len, 64)` in order.
#[inline(always)]
fn extreme(x: &[f32], less: bool) -> f32 {
    const LM: usize = 64;
    let init = if less {
        f32::INFINITY
    } else {
        f32::NEG_INFINITY
    };
    let mut acc = [unsafe { vdupq_n_f32(init) }; LM / 4];
    let mut it = x.chunks_exact(LM);
    for c in &mut it {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 64 elements.
            *a = step_v(*a, unsafe { vld1q_f32(c.as_ptr().add(4 * j)) }, less);
        }
    }
    let mut lanes = [init; LM];
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: 4 lanes into `lanes[4j..4j + 4]`.
        unsafe { vst1q_f32(lanes.as_mut_ptr().add(4 * j), *a) };
    }
    for (j, &v) in it.remainder().iter().enumerate() {
        lanes[j] = step(lanes[j], v, less);
    }
    let used = x.len().clamp(1, LM);
    let mut m = lanes[0];
    for &a in &lanes[1..used] {
        m = step(m, a, less);
    }
    m
}

/// Σ g(xᵢ) over one block: `g` in `f32` (four lanes by `gv`, a remainder by `gs`), each value
/// widened and added into lane `i % 16` of `f64` accumulators, then [`tree`].
#[inline(always)]
fn block_sum(
    blk: &[f32],
    gv: &impl Fn(float32x4_t) -> float32x4_t,
    gs: &impl Fn(f32) -> f32,
) -> f64 {
    unsafe {
        let mut acc = [vdupq_n_f64(0.0); L / 2];
        let mut it = blk.chunks_exact(L);
        for c in &mut it {
            for q in 0..L / 4 {
                let v = gv(vld1q_f32(c.as_ptr().add(4 * q)));
                acc[2 * q] = vaddq_f64(acc[2 * q], vcvt_f64_f32(vget_low_f32(v)));
                acc[2 * q + 1] = vaddq_f64(acc[2 * q + 1], vcvt_high_f64_f32(v));
            }
        }
        let mut lanes = [0f64; L];
        for (q, a) in acc.iter().enumerate() {
            vst1q_f64(lanes.as_mut_ptr().add(2 * q), *a);
        }
        for (j, &v) in it.remainder().iter().enumerate() {
            lanes[j] += gs(v) as f64;
        }
        tree(lanes)
    }
}

/// Σ g(xᵢ) over a row: [`block_sum`] per block of [`BLK`], blocks pairwise.
#[inline(always)]
fn psum(x: &[f32], gv: impl Fn(float32x4_t) -> float32x4_t, gs: impl Fn(f32) -> f32) -> f64 {
    let mut pw = Pairwise::<f64>::new();
    for blk in x.chunks(BLK) {
        pw.push(block_sum(blk, &gv, &gs));
    }
    pw.total()
}

/// Σ xᵢ.
#[inline(always)]
fn row_sum(x: &[f32]) -> f64 {
    psum(x, |v| v, |v| v)
}

/// `d[i] = f(d[i])` (four lanes by `fv`, the tail by `fs`).
#[inline(always)]
fn apply(d: &mut [f32], fv: impl Fn(float32x4_t) -> float32x4_t, fs: impl Fn(f32) -> f32) {
    vm::map1_inplace(d, fv, fs)
}

/// The baseline's `exp_shift` on `f32`: exp(x − m) with the rounding error of x − m restored.
#[inline(always)]
fn exp_shift_s(x: f32, m: f32) -> f32 {
    super::exp_shift(x, m)
}

/// [`exp_shift_s`] on four lanes.
#[inline(always)]
fn exp_shift_v(x: float32x4_t, m: float32x4_t) -> float32x4_t {
    unsafe {
        let d = vsubq_f32(x, m);
        let bp = vsubq_f32(d, x);
        let err = vaddq_f32(
            vsubq_f32(x, vsubq_f32(d, bp)),
            vsubq_f32(vsubq_f32(vdupq_n_f32(0.0), m), bp),
        );
        let err = vbslq_f32(vceqq_f32(err, err), err, vdupq_n_f32(0.0));
        let e = vm::exp(d);
        vaddq_f32(e, vmulq_f32(e, err))
    }
}

/// `o[i] = (x[i] − m) − lse` (log-softmax's last pass), `o` and `x` of one length.
#[inline(always)]
fn shift2(x: &[f32], o: &mut [f32], m: f32, lse: f32) {
    let (mv, lv) = unsafe { (vdupq_n_f32(m), vdupq_n_f32(lse)) };
    vm::map1(
        x,
        o,
        |v| unsafe { vsubq_f32(vsubq_f32(v, mv), lv) },
        |v| v - m - lse,
    )
}

/// Σ exp(xᵢ − m) (log-softmax's sum, computed in `f32` per element).
#[inline(always)]
fn sum_exp(x: &[f32], m: f32) -> f64 {
    let mv = unsafe { vdupq_n_f32(m) };
    psum(
        x,
        |v| vm::exp(unsafe { vsubq_f32(v, mv) }),
        |v| (v - m).vexp(),
    )
}

pub(super) fn sum(x: &[f32], cols: usize, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = row_sum(&x[r * cols..(r + 1) * cols]) as f32;
    }
}

pub(super) fn mean(x: &[f32], cols: usize, out: &mut [f32]) {
    let n = cols as f64;
    for (r, o) in out.iter_mut().enumerate() {
        *o = (row_sum(&x[r * cols..(r + 1) * cols]) / n) as f32;
    }
}

pub(super) fn max(x: &[f32], cols: usize, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = extreme(&x[r * cols..(r + 1) * cols], false);
    }
}

pub(super) fn min(x: &[f32], cols: usize, out: &mut [f32]) {
    for (r, o) in out.iter_mut().enumerate() {
        *o = extreme(&x[r * cols..(r + 1) * cols], true);
    }
}

/// One softmax row, `or` holding the result (and `xr`, or `or` itself when in place, the
/// input: `xr == None`).
#[inline(always)]
fn softmax_row(xr: Option<&[f32]>, or: &mut [f32]) {
    let m = extreme(xr.unwrap_or(or), false);
    let mv = unsafe { vdupq_n_f32(m) };
    let mut pw = Pairwise::<f64>::new();
    let mut start = 0;
    while start < or.len() {
        let end = (start + BLK).min(or.len());
        let oblk = &mut or[start..end];
        match xr {
            Some(x) => vm::map1(
                &x[start..end],
                oblk,
                |v| exp_shift_v(v, mv),
                |v| exp_shift_s(v, m),
            ),
            None => apply(oblk, |v| exp_shift_v(v, mv), |v| exp_shift_s(v, m)),
        }
        pw.push(block_sum(oblk, &|v| v, &|v| v));
        start = end;
    }
    let inv = 1.0 / (pw.total() as f32);
    let iv = unsafe { vdupq_n_f32(inv) };
    apply(or, |v| unsafe { vmulq_f32(v, iv) }, |v| v * inv);
}

pub(super) fn softmax(x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    let rows = out.len() / cols;
    for r in 0..rows {
        softmax_row(
            Some(&x[r * cols..(r + 1) * cols]),
            &mut out[r * cols..(r + 1) * cols],
        );
    }
}

pub(super) fn softmax_inplace(x: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    for xr in x.chunks_exact_mut(cols) {
        softmax_row(None, xr);
    }
}

pub(super) fn log_softmax(x: &[f32], cols: usize, out: &mut [f32]) {
    if cols == 0 {
        return;
    }
    let rows = out.len() / cols;
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let m = extreme(xr, false);
        let lse = (sum_exp(xr, m) as f32).vln();
        shift2(xr, &mut out[r * cols..(r + 1) * cols], m, lse);
    }
}

pub(super) fn log_softmax_inplace(x: &mut [f32], cols: usize) {
    if cols == 0 {
        return;
    }
    for xr in x.chunks_exact_mut(cols) {
        let m = extreme(xr, false);
        let lse = (sum_exp(xr, m) as f32).vln();
        let (mv, lv) = unsafe { (vdupq_n_f32(m), vdupq_n_f32(lse)) };
        apply(
            xr,
            |v| unsafe { vsubq_f32(vsubq_f32(v, mv), lv) },
            |v| v - m - lse,
        );
    }
}

/// The 32 `f32` lanes of the norms' sums (eight vectors of 4, lanes in order) reduced by the
/// parent's fixed tree (halves added: 16, 8, 4, 2, 1).
#[inline(always)]
fn tree32(a: &[float32x4_t; 8]) -> f32 {
    unsafe {
        let b0 = vaddq_f32(a[0], a[4]);
        let b1 = vaddq_f32(a[1], a[5]);
        let b2 = vaddq_f32(a[2], a[6]);
        let b3 = vaddq_f32(a[3], a[7]);
        let d = vaddq_f32(vaddq_f32(b0, b2), vaddq_f32(b1, b3));
        vpadds_f32(vadd_f32(vget_low_f32(d), vget_high_f32(d)))
    }
}

/// The parent's `f32_sums` on NEON: `fv` on 4 lanes, `fs` on one (the same operations), the
/// second sum only when `two`; a sub-block's tail added element by element into its lanes.
#[inline(always)]
fn norm_sums(
    x: &[f32],
    two: bool,
    fv: impl Fn(float32x4_t) -> (float32x4_t, float32x4_t),
    fs: impl Fn(f32) -> (f32, f32),
) -> (f64, f64) {
    let (mut s0, mut s1) = (0f64, 0f64);
    for sb in x.chunks(SBF) {
        unsafe {
            let mut a = [vdupq_n_f32(0.0); 8];
            let mut b = a;
            let mut it = sb.chunks_exact(LF);
            for c in &mut it {
                for k in 0..8 {
                    let (p, q) = fv(vld1q_f32(c.as_ptr().add(4 * k)));
                    a[k] = vaddq_f32(a[k], p);
                    if two {
                        b[k] = vaddq_f32(b[k], q);
                    }
                }
            }
            let t = it.remainder();
            if !t.is_empty() {
                let mut l = [[0f32; LF]; 2];
                for k in 0..8 {
                    vst1q_f32(l[0].as_mut_ptr().add(4 * k), a[k]);
                    vst1q_f32(l[1].as_mut_ptr().add(4 * k), b[k]);
                }
                for (j, &v) in t.iter().enumerate() {
                    let (p, q) = fs(v);
                    l[0][j] += p;
                    l[1][j] += q;
                }
                for k in 0..8 {
                    a[k] = vld1q_f32(l[0].as_ptr().add(4 * k));
                    b[k] = vld1q_f32(l[1].as_ptr().add(4 * k));
                }
            }
            s0 += tree32(&a) as f64;
            if two {
                s1 += tree32(&b) as f64;
            }
        }
    }
    (s0, s1)
}

/// The `f32` layer norm on NEON: the parent's `layer_norm_f32`, bit for bit.
pub(super) fn layer_norm(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut stats: Option<NormStats<'_, f32>>,
) {
    let rows = out.len() / cols;
    let gamma = gamma.map(|g| &g[..cols]);
    let beta = beta.map(|b| &b[..cols]);
    let z = unsafe { vdupq_n_f32(0.0) };
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let or = &mut out[r * cols..(r + 1) * cols];
        let s = norm_sums(xr, false, |v| (v, z), |v| (v, 0.0)).0;
        let m0 = (s / cols as f64) as f32;
        let mv = unsafe { vdupq_n_f32(m0) };
        let (sd, sq) = norm_sums(
            xr,
            true,
            |v| unsafe {
                let d = vsubq_f32(v, mv);
                (d, vmulq_f32(d, d))
            },
            |v| {
                let d = v - m0;
                (d, d * d)
            },
        );
        let (mean, rc, k) = ln_stats(cols, m0, sd, sq, eps);
        if let Some(st) = stats.as_mut() {
            st.mean[r] = mean;
            st.rstd[r] = rc;
        }
        let (rv, kv) = unsafe { (vdupq_n_f32(rc), vdupq_n_f32(k)) };
        let n4 = cols / 4 * 4;
        unsafe {
            let mut i = 0;
            while i < n4 {
                let xv = vld1q_f32(xr.as_ptr().add(i));
                let mut y = vaddq_f32(vmulq_f32(vsubq_f32(xv, mv), rv), kv);
                if let Some(g) = gamma {
                    y = vmulq_f32(y, vld1q_f32(g.as_ptr().add(i)));
                }
                if let Some(b) = beta {
                    y = vaddq_f32(y, vld1q_f32(b.as_ptr().add(i)));
                }
                vst1q_f32(or.as_mut_ptr().add(i), y);
                i += 4;
            }
        }
        for i in n4..cols {
            let mut y = (xr[i] - m0) * rc + k;
            if let Some(g) = gamma {
                y *= g[i];
            }
            if let Some(b) = beta {
                y += b[i];
            }
            or[i] = y;
        }
    }
}

/// The `f32` RMS norm on NEON: the parent's `rms_norm_f32`, bit for bit.
pub(super) fn rms_norm(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut rstd_out: Option<&mut [f32]>,
) {
    let rows = out.len() / cols;
    let gamma = gamma.map(|g| &g[..cols]);
    let z = unsafe { vdupq_n_f32(0.0) };
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let or = &mut out[r * cols..(r + 1) * cols];
        let sq = norm_sums(
            xr,
            false,
            |v| (unsafe { vmulq_f32(v, v) }, z),
            |v| (v * v, 0.0),
        )
        .0;
        let rc = rms_rstd(cols, sq, eps);
        if let Some(ro) = rstd_out.as_deref_mut() {
            ro[r] = rc;
        }
        let rv = unsafe { vdupq_n_f32(rc) };
        match gamma {
            Some(g) => vm::map2(
                xr,
                g,
                or,
                |v, w| unsafe { vmulq_f32(vmulq_f32(v, rv), w) },
                |v, w| v * rc * w,
            ),
            None => vm::map1(xr, or, |v| unsafe { vmulq_f32(v, rv) }, |v| v * rc),
        }
    }
}
