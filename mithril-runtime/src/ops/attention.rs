//! Scaled dot-product attention over `[..., heads, seq, head_dim]` (the tiled online-softmax
//! kernel of [`mithril_kernels::attention`]) and its gradients.
//!
//! `q: [..., Hq, Sq, D]`, `k: [..., Hkv, Sk, D]`, `v: [..., Hkv, Sk, Dv]` with the same leading
//! (batch) dims and `Hq` a multiple of `Hkv` (grouped-query attention: query head `h` reads
//! key/value head `h / (Hq / Hkv)`); the result is `[..., Hq, Sq, Dv]`. An optional mask
//! broadcasts to `[..., Hq, Sq, Sk]`: a float mask is added to the scaled scores, a `bool`
//! mask excludes its `false` entries. `causal` excludes key `j > i` from query `i` (top-left
//! aligned, as PyTorch's `is_causal`). `scale` defaults to `1/√D`.

use mithril_kernels::attention::{self as kern, AttnElem, Dims, Mask, MaskView, Want};

/// Dropout on the attention weights of a training call (drop probability, the call's seed, the
/// op's id): the kernel's [`mithril_kernels::attention::Dropout`].
pub use mithril_kernels::attention::Dropout as AttnDropout;
use ndarray::{ArrayViewD, ArrayViewMutD, CowArray, Dimension, IxDyn};

use super::fmt_shape;
use super::half_storage::{narrow, widen};
use crate::{Dest, Elem, Error, Result};

/// The element types attention runs in (`f32`, `f64`).
pub trait AttnScalar: Elem + AttnElem {}
impl AttnScalar for f32 {}
impl AttnScalar for f64 {}

/// The mask operand of an attention call.
#[derive(Clone, Copy, Debug)]
pub enum AttnMask<'a, 'v, T> {
    /// None.
    None,
    /// Added to the scaled scores.
    Add(&'a ArrayViewD<'v, T>),
    /// `false` excludes a score.
    Bool(&'a ArrayViewD<'v, bool>),
}

/// The checked sizes of a call and its batch dims.
struct Shapes {
    dims: Dims,
    /// The leading (batch) dims (`IxDyn`: on the stack up to rank 4, so a call allocates
    /// nothing for them).
    lead: IxDyn,
}

impl Shapes {
    /// The leading dims followed by `tail`: an output shape (on the stack up to rank 4).
    fn with(&self, tail: [usize; 3]) -> IxDyn {
        let l = self.lead.slice();
        let mut buf = [0usize; 4];
        if l.len() <= 1 {
            buf[..l.len()].copy_from_slice(l);
            buf[l.len()..l.len() + 3].copy_from_slice(&tail);
            IxDyn(&buf[..l.len() + 3])
        } else {
            let mut v = l.to_vec();
            v.extend(tail);
            IxDyn(&v)
        }
    }
}

fn shapes(op: &str, q: &[usize], k: &[usize], v: &[usize]) -> Result<Shapes> {
    let err = |why: &str| {
        Error::op(
            op,
            format!(
                "{why}: query {}, key {}, value {} (expected [..., Hq, Sq, D], [..., Hkv, Sk, D], [..., Hkv, Sk, Dv])",
                fmt_shape(q),
                fmt_shape(k),
                fmt_shape(v)
            ),
        )
    };
    let r = q.len();
    if r < 3 || k.len() != r || v.len() != r {
        return Err(err(
            "query, key and value must have the same rank, at least 3",
        ));
    }
    if q[..r - 3] != k[..r - 3] || q[..r - 3] != v[..r - 3] {
        return Err(err("the leading (batch) dims differ"));
    }
    let (hq, sq, d) = (q[r - 3], q[r - 2], q[r - 1]);
    let (hkv, sk) = (k[r - 3], k[r - 2]);
    if v[r - 3] != hkv || v[r - 2] != sk {
        return Err(err("key and value differ in heads or length"));
    }
    if k[r - 1] != d {
        return Err(err("query and key differ in head_dim"));
    }
    if (hkv == 0 && hq != 0) || (hkv != 0 && !hq.is_multiple_of(hkv)) {
        return Err(err(&format!(
            "the query heads ({hq}) must be a multiple of the key/value heads ({hkv})"
        )));
    }
    let lead = IxDyn(&q[..r - 3]);
    Ok(Shapes {
        dims: Dims {
            batch: lead.slice().iter().product(),
            hq,
            hkv: hkv.max(1),
            sq,
            sk,
            d,
            dv: v[r - 1],
        },
        lead,
    })
}

/// The mask's strides broadcast over `[lead..., Hq, Sq, Sk]`, as offsets per (batch, head).
fn mask_view<'m, M: Clone>(
    op: &str,
    m: &'m CowArray<'_, M, IxDyn>,
    sh: &Shapes,
    offs: &'m mut Vec<usize>,
) -> Result<MaskView<'m, M>> {
    let Dims { hq, sq, sk, .. } = sh.dims;
    let full = sh.with([hq, sq, sk]);
    let full = full.slice();
    let b = m.broadcast(IxDyn(full)).ok_or_else(|| {
        Error::op(
            op,
            format!(
                "the mask of shape {} does not broadcast to [..., Hq, Sq, Sk] = {}",
                fmt_shape(m.shape()),
                fmt_shape(full)
            ),
        )
    })?;
    let st: Vec<usize> = b.strides().iter().map(|&s| s as usize).collect();
    let r = full.len();
    offs.clear();
    let nl = sh.lead.ndim();
    let mut idx = vec![0usize; nl];
    for _ in 0..sh.dims.batch {
        let base: usize = idx.iter().zip(&st).map(|(i, s)| i * s).sum();
        for h in 0..hq {
            offs.push(base + h * st[r - 3]);
        }
        for a in (0..nl).rev() {
            idx[a] += 1;
            if idx[a] < full[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    let data = m
        .as_slice()
        .ok_or_else(|| Error::op(op, "internal: mask not contiguous"))?;
    Ok(MaskView {
        data,
        offs,
        si: st[r - 2],
        sj: st[r - 1],
    })
}

fn slice<'a, T>(op: &str, a: &'a CowArray<'_, T, IxDyn>) -> Result<&'a [T]> {
    a.as_slice()
        .ok_or_else(|| Error::op(op, "internal: operand not contiguous"))
}

/// Runs `f` with the kernel's mask.
fn with_mask<T: AttnScalar, R>(
    op: &str,
    mask: AttnMask<'_, '_, T>,
    sh: &Shapes,
    f: impl FnOnce(Mask<'_, T>) -> Result<R>,
) -> Result<R> {
    let mut offs = Vec::new();
    match mask {
        AttnMask::None => f(Mask::None),
        AttnMask::Add(m) => {
            let m = m.as_standard_layout();
            let mv = mask_view(op, &m, sh, &mut offs)?;
            f(Mask::Add(mv))
        }
        AttnMask::Bool(m) => {
            let m = m.as_standard_layout();
            let mv = mask_view(op, &m, sh, &mut offs)?;
            f(Mask::Bool(mv))
        }
    }
}

/// `softmax(scale · q·kᵀ + mask) · v` into `dest` (see the module docs).
pub fn attention_to<'w, T: AttnScalar>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    mask: AttnMask<'_, '_, T>,
    causal: bool,
    scale: Option<f64>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    attention_dropout_to(q, k, v, mask, causal, scale, None, dest)
}

/// The checked dropout of a call: `None` when absent or `p = 0`, `Err` for `p` outside `[0, 1]`.
fn checked_drop(op: &str, drop: Option<AttnDropout>) -> Result<Option<AttnDropout>> {
    match drop {
        Some(z) if !(0.0..=1.0).contains(&z.p) => Err(Error::op(
            op,
            format!("dropout probability p = {} is outside [0, 1]", z.p),
        )),
        Some(z) if z.p == 0.0 => Ok(None),
        z => Ok(z),
    }
}

/// [`attention_to`] with dropout on the weights (`drop`, a training call's): `(Z ∘ softmax(..))
/// · v`, `Z` the scaled keep mask of [`AttnDropout`].
#[allow(clippy::too_many_arguments)]
pub fn attention_dropout_to<'w, T: AttnScalar>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    mask: AttnMask<'_, '_, T>,
    causal: bool,
    scale: Option<f64>,
    drop: Option<AttnDropout>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "attention";
    let drop = checked_drop(OP, drop)?;
    let sh = shapes(OP, q.shape(), k.shape(), v.shape())?;
    let oshape = sh.with([sh.dims.hq, sh.dims.sq, sh.dims.dv]);
    let scale = scale.unwrap_or(1.0 / (sh.dims.d as f64).sqrt());
    let (qs, ks, vs) = (
        q.as_standard_layout(),
        k.as_standard_layout(),
        v.as_standard_layout(),
    );
    let mut out = dest.get(OP, oshape.slice())?;
    if out.is_empty() {
        return Ok(out);
    }
    let (qd, kd, vd) = (slice(OP, &qs)?, slice(OP, &ks)?, slice(OP, &vs)?);
    let o = out
        .as_slice_mut()
        .ok_or_else(|| Error::op(OP, "internal: destination not contiguous"))?;
    with_mask(OP, mask, &sh, |m| {
        kern::forward_dropout(&sh.dims, qd, kd, vd, m, causal, scale, drop, o, None);
        Ok(())
    })?;
    Ok(out)
}

/// How [`attention_heads_to`] reads one operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadCols {
    /// A `[B, H, S, D]` tensor.
    Plain,
    /// A `[B, S, C]` tensor whose columns `off + h · width .. off + (h + 1) · width` are head
    /// `h` of `heads` (the column blocks of an in-projection, before the head split).
    Split {
        /// the heads
        heads: usize,
        /// each head's width (`D`, or `Dv` for the value)
        width: usize,
        /// the first column of head 0
        off: usize,
    },
}

/// One operand of [`attention_heads_to`]: its logical `[B, H, S, W]` dims and kernel layout,
/// or the error naming the operand, what was expected and its shape.
fn head_operand<T>(
    op: &str,
    name: &str,
    a: &CowArray<'_, T, IxDyn>,
    cols: HeadCols,
) -> Result<([usize; 4], kern::Layout)> {
    let sh = a.shape();
    match cols {
        HeadCols::Plain => match *sh {
            [b, h, s, w] => Ok(([b, h, s, w], kern::Layout::contiguous(h, s, w))),
            _ => Err(Error::op(
                op,
                format!("the {name} must be [B, H, S, D], given {}", fmt_shape(sh)),
            )),
        },
        HeadCols::Split { heads, width, off } => match *sh {
            [b, s, c] if off + heads * width <= c => Ok((
                [b, heads, s, width],
                kern::Layout {
                    off,
                    batch: s * c,
                    head: width,
                    row: c,
                },
            )),
            _ => Err(Error::op(
                op,
                format!(
                    "the {name} must be [B, S, C] with C >= {} ({heads} heads of {width} from column {off}), given {}",
                    off + heads * width,
                    fmt_shape(sh)
                ),
            )),
        },
    }
}

/// [`attention_to`] with the head split and merge folded in (`[B, ...]` operands, no copies):
/// each of `q`, `k`, `v` is a `[B, H, S, D]` tensor ([`HeadCols::Plain`]) or the heads of a
/// `[B, S, C]` in-projection read in place ([`HeadCols::Split`]: what `x.slice(.., .., a..b)
/// .reshape([B, S, H, D]).transpose(axes = [0, 2, 1, 3])` would copy out); with `merge` the
/// result is written as `[B, Sq, Hq · Dv]` (what `transpose(axes = [0, 2, 1, 3]).reshape([B,
/// Sq, Hq · Dv])` of `[B, Hq, Sq, Dv]` would copy), else as `[B, Hq, Sq, Dv]`. The mask is
/// that of [`attention_to`] over `[B, Hq, Sq, Sk]`. Bit for bit the unfused ops (the kernel
/// reads the same rows through strides). The plan op of the compiler's `head_fusion` pass.
#[allow(clippy::too_many_arguments)]
pub fn attention_heads_to<'w, T: AttnScalar>(
    (q, qc): (&ArrayViewD<'_, T>, HeadCols),
    (k, kc): (&ArrayViewD<'_, T>, HeadCols),
    (v, vc): (&ArrayViewD<'_, T>, HeadCols),
    mask: AttnMask<'_, '_, T>,
    causal: bool,
    scale: Option<f64>,
    merge: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "attention";
    let (qs, ks, vs) = (
        q.as_standard_layout(),
        k.as_standard_layout(),
        v.as_standard_layout(),
    );
    let (qd, ql) = head_operand(OP, "query", &qs, qc)?;
    let (kd, kl) = head_operand(OP, "key", &ks, kc)?;
    let (vd, vl) = head_operand(OP, "value", &vs, vc)?;
    let sh = shapes(OP, &qd, &kd, &vd)?;
    let Dims { hq, sq, dv, .. } = sh.dims;
    let b = qd[0];
    let (oshape, ol) = if merge {
        (
            IxDyn(&[b, sq, hq * dv]),
            kern::Layout {
                off: 0,
                batch: sq * hq * dv,
                head: dv,
                row: hq * dv,
            },
        )
    } else {
        (
            IxDyn(&[b, hq, sq, dv]),
            kern::Layout::contiguous(hq, sq, dv),
        )
    };
    let scale = scale.unwrap_or(1.0 / (sh.dims.d as f64).sqrt());
    let mut out = dest.get(OP, oshape.slice())?;
    if out.is_empty() {
        return Ok(out);
    }
    let (qx, kx, vx) = (slice(OP, &qs)?, slice(OP, &ks)?, slice(OP, &vs)?);
    let o = out
        .as_slice_mut()
        .ok_or_else(|| Error::op(OP, "internal: destination not contiguous"))?;
    with_mask(OP, mask, &sh, |m| {
        kern::forward_strided(
            &sh.dims,
            (qx, ql),
            (kx, kl),
            (vx, vl),
            m,
            causal,
            scale,
            None,
            (o, ol),
            None,
        );
        Ok(())
    })?;
    Ok(out)
}

/// Which gradient [`attention_grad_to`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnPart {
    /// The query's (`q`'s shape).
    Q,
    /// The key's.
    K,
    /// The value's.
    V,
    /// Key's and value's stacked on a new leading axis (`[2, ...]`; `D == Dv`).
    KV,
    /// The masked scores' (`[..., Hq, Sq, Sk]`: an additive mask's, before summing over the
    /// axes it broadcasts along).
    Scores,
}

/// One gradient of [`attention_to`] given its output `o` and the output's gradient `go`.
#[allow(clippy::too_many_arguments)]
pub fn attention_grad_to<'w, T: AttnScalar>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    mask: AttnMask<'_, '_, T>,
    o: &ArrayViewD<'_, T>,
    go: &ArrayViewD<'_, T>,
    causal: bool,
    scale: Option<f64>,
    part: AttnPart,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    attention_grad_dropout_to(q, k, v, mask, o, go, causal, scale, None, part, dest)
}

/// One gradient of [`attention_dropout_to`] (the same `drop`: its mask is regenerated).
#[allow(clippy::too_many_arguments)]
pub fn attention_grad_dropout_to<'w, T: AttnScalar>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    mask: AttnMask<'_, '_, T>,
    o: &ArrayViewD<'_, T>,
    go: &ArrayViewD<'_, T>,
    causal: bool,
    scale: Option<f64>,
    drop: Option<AttnDropout>,
    part: AttnPart,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "attention gradient";
    let drop = checked_drop(OP, drop)?;
    let sh = shapes(OP, q.shape(), k.shape(), v.shape())?;
    let Dims {
        hq, sq, sk, d, dv, ..
    } = sh.dims;
    let oshape = sh.with([hq, sq, dv]);
    if o.shape() != oshape.slice() || go.shape() != oshape.slice() {
        return Err(Error::op(
            OP,
            format!(
                "the output {} and its gradient {} must be {}",
                fmt_shape(o.shape()),
                fmt_shape(go.shape()),
                fmt_shape(oshape.slice())
            ),
        ));
    }
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let rshape: Vec<usize> = match part {
        AttnPart::Q => q.shape().to_vec(),
        AttnPart::K => k.shape().to_vec(),
        AttnPart::V => v.shape().to_vec(),
        AttnPart::KV => {
            if d != dv {
                return Err(Error::op(
                    OP,
                    format!("internal: stacked key/value gradients need D == Dv ({d} vs {dv})"),
                ));
            }
            std::iter::once(2)
                .chain(k.shape().iter().copied())
                .collect()
        }
        AttnPart::Scores => sh.with([hq, sq, sk]).slice().to_vec(),
    };
    let mut out = dest.get(OP, &rshape)?;
    if out.is_empty() {
        return Ok(out);
    }
    let cs = |a: &ArrayViewD<'_, T>| a.as_standard_layout().into_owned();
    let (qs, ks, vs, os, gos) = (cs(q), cs(k), cs(v), cs(o), cs(go));
    let (qd, kd, vd) = (
        qs.as_slice().unwrap_or(&[]),
        ks.as_slice().unwrap_or(&[]),
        vs.as_slice().unwrap_or(&[]),
    );
    let (od, god) = (os.as_slice().unwrap_or(&[]), gos.as_slice().unwrap_or(&[]));
    let res = out
        .as_slice_mut()
        .ok_or_else(|| Error::op(OP, "internal: destination not contiguous"))?;
    let nk = k.len();
    let nv = v.len();
    with_mask(OP, mask, &sh, |m| {
        let run = |want: Want, dq: &mut [T], dk: &mut [T], dvv: &mut [T], ds: Option<&mut [T]>| {
            kern::backward_dropout(
                &sh.dims, qd, kd, vd, m, causal, scale, drop, od, god, want, dq, dk, dvv, ds,
            )
        };
        let none = Want {
            q: false,
            kv: false,
        };
        match part {
            AttnPart::Q => run(Want { q: true, kv: false }, res, &mut [], &mut [], None),
            AttnPart::KV => {
                let (a, b) = res.split_at_mut(nk);
                run(Want { q: false, kv: true }, &mut [], a, b, None)
            }
            AttnPart::K => {
                let mut tmp = crate::alloc::zeroed_vec::<T>(OP, nv)?;
                run(Want { q: false, kv: true }, &mut [], res, &mut tmp, None)
            }
            AttnPart::V => {
                let mut tmp = crate::alloc::zeroed_vec::<T>(OP, nk)?;
                run(Want { q: false, kv: true }, &mut [], &mut tmp, res, None)
            }
            AttnPart::Scores => run(none, &mut [], &mut [], &mut [], Some(res)),
        }
        Ok(())
    })?;
    Ok(out)
}

/// Causal attention of queries at positions `pos .. pos + Sq` over the first `pos + Sq` rows of
/// a key/value cache (`k: [..., Hkv, M, D]`, `v: [..., Hkv, M, Dv]`, `M` the cache's capacity):
/// query `i` sees keys `j <= pos + i`; the rows after `pos + Sq` are not read. `q` may be any
/// view whose last axis is contiguous (a transposed `[B, S, H, D]` is read in place). An `Err`
/// when `pos + Sq > M` (the cache is full).
pub fn cached_attention_to<'w, T: AttnScalar>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    pos: i64,
    scale: Option<f64>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "cached_attention";
    let sh = shapes(OP, q.shape(), k.shape(), v.shape())?;
    let Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    } = sh.dims;
    if pos < 0 || pos as u64 + sq as u64 > sk as u64 {
        return Err(Error::op(
            OP,
            format!(
                "the cache is full: {sq} new position(s) from position {pos} do not fit its {sk} rows"
            ),
        ));
    }
    let oshape = sh.with([hq, sq, dv]);
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let (ks, vs) = (k.as_standard_layout(), v.as_standard_layout());
    let mut out = dest.get(OP, oshape.slice())?;
    if out.is_empty() {
        return Ok(out);
    }
    // q read in place (one batch dim, the last axis contiguous): no copy of a transposed view
    let st = q.strides();
    let inplace = q.ndim() == 4 && !q.is_empty() && st[3] == 1 && st.iter().all(|&s| s >= 0);
    let qs;
    let (qd, q_strides): (&[T], [usize; 3]) = if inplace {
        let len = (0..4)
            .map(|a| (q.shape()[a] - 1) * st[a] as usize)
            .sum::<usize>()
            + 1;
        // SAFETY: every stride is non-negative, so the view's elements lie in
        // `ptr .. ptr + len` of the one allocation it borrows.
        let s = unsafe { std::slice::from_raw_parts(q.as_ptr(), len) };
        (s, [st[0] as usize, st[1] as usize, st[2] as usize])
    } else {
        qs = q.as_standard_layout();
        (slice(OP, &qs)?, [hq * sq * d, sq * d, d])
    };
    let (kd, vd) = (slice(OP, &ks)?, slice(OP, &vs)?);
    let o = out
        .as_slice_mut()
        .ok_or_else(|| Error::op(OP, "internal: destination not contiguous"))?;
    let cd = kern::decode::CachedDims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
        q_strides,
    };
    kern::decode::forward_at(&cd, qd, kd, vd, pos as usize, scale, o);
    Ok(out)
}

// ---- f16 / bf16 storage: the f32 kernel on widened operands, each result rounded once

/// A float mask widened to f32 (`None` for the others).
fn mask_f32<T: Elem<Acc = f32>>(mask: AttnMask<'_, '_, T>) -> Option<ndarray::ArrayD<f32>> {
    match mask {
        AttnMask::Add(m) => Some(widen(m)),
        _ => None,
    }
}

/// `mask` over f32: a float mask as `mf` (its [`mask_f32`], viewed), a bool one unchanged.
fn wide_mask<'a, 'v, T>(
    mask: AttnMask<'a, 'v, T>,
    mf: &'a Option<ArrayViewD<'a, f32>>,
) -> AttnMask<'a, 'a, f32>
where
    'v: 'a,
{
    match (mask, mf) {
        (AttnMask::Bool(b), _) => AttnMask::Bool(b),
        (AttnMask::Add(_), Some(m)) => AttnMask::Add(m),
        _ => AttnMask::None,
    }
}

/// [`attention_dropout_to`] on f16 / bf16 storage: `q`, `k`, `v` and a float mask widened to
/// f32 (f32 is half storage's compute type, as in the GEMM), the f32 kernel, each result
/// rounded once: bit for bit the f32 attention of the same values, rounded. The same checks.
#[allow(clippy::too_many_arguments)]
pub fn attention_half_to<'w, T: Elem<Acc = f32>>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    mask: AttnMask<'_, '_, T>,
    causal: bool,
    scale: Option<f64>,
    drop: Option<AttnDropout>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let (q, k, v) = (widen(q), widen(k), widen(v));
    let mf = mask_f32(mask);
    let mfv = mf.as_ref().map(|m| m.view());
    let wide = wide_mask(mask, &mfv);
    let mut y = None;
    attention_dropout_to(
        &q.view(),
        &k.view(),
        &v.view(),
        wide,
        causal,
        scale,
        drop,
        Dest::Owned(&mut y),
    )?;
    narrow("attention", y, dest)
}

/// [`attention_grad_dropout_to`] on f16 / bf16 storage, as [`attention_half_to`].
#[allow(clippy::too_many_arguments)]
pub fn attention_grad_half_to<'w, T: Elem<Acc = f32>>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    mask: AttnMask<'_, '_, T>,
    o: &ArrayViewD<'_, T>,
    go: &ArrayViewD<'_, T>,
    causal: bool,
    scale: Option<f64>,
    drop: Option<AttnDropout>,
    part: AttnPart,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let (q, k, v, o, go) = (widen(q), widen(k), widen(v), widen(o), widen(go));
    let mf = mask_f32(mask);
    let mfv = mf.as_ref().map(|m| m.view());
    let wide = wide_mask(mask, &mfv);
    let mut y = None;
    attention_grad_dropout_to(
        &q.view(),
        &k.view(),
        &v.view(),
        wide,
        &o.view(),
        &go.view(),
        causal,
        scale,
        drop,
        part,
        Dest::Owned(&mut y),
    )?;
    narrow("attention gradient", y, dest)
}

/// [`cached_attention_to`] on f16 / bf16 storage: the queries and the cache rows in use
/// (`0 .. pos + Sq`; a decoding step widens what it reads, not the whole cache) widened to
/// f32, the f32 kernel, each result rounded once. The same checks and errors.
pub fn cached_attention_half_to<'w, T: Elem<Acc = f32>>(
    q: &ArrayViewD<'_, T>,
    k: &ArrayViewD<'_, T>,
    v: &ArrayViewD<'_, T>,
    pos: i64,
    scale: Option<f64>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let sq = q.ndim().checked_sub(2).map(|a| q.shape()[a]);
    let rows = |c: &ArrayViewD<'_, T>| -> ndarray::ArrayD<f32> {
        let used = c.ndim().checked_sub(2).and_then(|ax| {
            let m = c.shape()[ax];
            let u = usize::try_from(pos).ok()?.checked_add(sq?)?;
            (u <= m).then_some((ax, u))
        });
        match used {
            Some((ax, u)) => widen(&c.slice_axis(ndarray::Axis(ax), (0..u).into())),
            // out of range or malformed: the f32 call reports it with the cache's shape
            None => widen(c),
        }
    };
    let (q, k, v) = (widen(q), rows(k), rows(v));
    let mut y = None;
    cached_attention_to(
        &q.view(),
        &k.view(),
        &v.view(),
        pos,
        scale,
        Dest::Owned(&mut y),
    )?;
    narrow("cached_attention", y, dest)
}
