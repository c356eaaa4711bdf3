//! `attention`: scaled dot-product attention over `[..., heads, seq, head_dim]`, and the
//! gradient primitives autodiff makes of it. CPU: `mithril::rt::ops::attention_to` /
//! `attention_grad_to` (the tiled online-softmax kernel of `mithril_kernels::attention`).
//! CUDA (f32 / f64): `mithril::rt::cuda::attention` / `attention_grad` over `attention.cu`.
//!
//! `attention(q, k, v, mask?, causal = false, scale = 1/√D)`: `q: [..., Hq, Sq, D]`,
//! `k: [..., Hkv, Sk, D]`, `v: [..., Hkv, Sk, Dv]` (same leading dims; `Hq` a multiple of
//! `Hkv`: grouped-query attention), an optional `mask` broadcasting to `[..., Hq, Sq, Sk]`
//! (`bool`: `false` excludes; float: added to the scaled scores), result `[..., Hq, Sq, Dv]`.
//!
//! The gradient (`Prim::Attention` with `part` 1..=5) recomputes the softmax from row
//! statistics (FlashAttention's backward): `part` 1 is `dq`, 4 `dk` and `dv` stacked on a new
//! leading axis (fixed rank and `D == Dv`; then two `slice`s, views), else 2 and 3 separately;
//! 5 the gradient of the masked scores, summed to a float mask's shape.
//!
//! `dropout = p` drops each weight of the softmax with probability `p` in training calls
//! (scaling the others by `1/(1-p)`; the identity in evaluation calls). As `dropout`, the
//! flattener appends the call's mode as the last operand and numbers the op among the
//! model's random ops; the plan reads the call's seed, and the kernel draws `dropout`'s
//! Philox mask over the element index of the `[..., Hq, Sq, Sk]` weights (its backward
//! regenerates it). Plan form only (it reads the call's mode).

use super::attrs::{bool_attr, get, sig, AttrVal, Sig};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::{show, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Dim, Env, NodeId, Shape, DT};
use crate::prims::{Prim, SliceArg};
use proc_macro2::TokenStream;
use quote::quote;

/// The attention family.
pub struct Rules;

/// The inputs of `attention` (`mask` optional).
const INPUTS: &[&str] = &["query", "key", "value", "mask?"];

fn parts(p: &Prim) -> Option<(bool, Option<f64>, u8)> {
    match p {
        Prim::Attention {
            causal,
            scale,
            part,
            ..
        } => Some((*causal, *scale, *part)),
        _ => None,
    }
}

/// The dropout probability and op id (`p` 0: no dropout, no mode operand).
fn drop_of(p: &Prim) -> (f64, u32) {
    match p {
        Prim::Attention { dropout, op, .. } => (*dropout, *op),
        _ => (0.0, 0),
    }
}

/// The number of operands without the trailing mode (present with dropout).
fn core_len(p: &Prim, n: usize) -> usize {
    n - usize::from(drop_of(p).0 > 0.0 && n > 0)
}

/// Number of operands before `out, out gradient` of a gradient part / the forward's (`n`
/// without the mode).
fn has_mask(part: u8, n: usize) -> bool {
    if part == 0 {
        n == 4
    } else {
        n == 6
    }
}

/// The leading dims of q, k, v agree (unified); returns (q's leading shape, Hq, Sq, D, Hkv,
/// Sk, Dv).
fn check(env: &mut Env, q: &Shape, k: &Shape, v: &Shape) -> Result<[Shape; 1], String> {
    for (s, n) in [(q, "query"), (k, "key"), (v, "value")] {
        if s.dims.len() < 3 {
            return Err(format!(
                "the {n} needs at least 3 named dims `[..., heads, seq, head_dim]`, found {}",
                env.fmt_shape(s)
            ));
        }
    }
    let (nq, nk, nv) = (q.dims.len(), k.dims.len(), v.dims.len());
    let lead = |s: &Shape, n: usize| Shape {
        rest: s.rest,
        dims: s.dims[..n - 3].to_vec(),
    };
    let (lq, lk, lv) = (lead(q, nq), lead(k, nk), lead(v, nv));
    for (other, n) in [(&lk, "key"), (&lv, "value")] {
        let same_rank = lq.rest == other.rest && lq.dims.len() == other.dims.len();
        if !same_rank {
            return Err(format!(
                "the leading (batch) dims of query {} and {n} {} differ",
                env.fmt_shape(q),
                env.fmt_shape(if n == "key" { k } else { v })
            ));
        }
        for (a, b) in lq.dims.iter().zip(&other.dims) {
            env.unify_dim(a, b).map_err(|_| {
                format!(
                    "the batch dims of query and {n} differ: {} vs {}",
                    show(env, a),
                    show(env, b)
                )
            })?;
        }
    }
    let dd = |env: &mut Env, a: &Dim, b: &Dim, what: &str| -> Result<(), String> {
        env.unify_dim(a, b)
            .map(|_| ())
            .map_err(|_| format!("{what} differ: {} vs {}", show(env, a), show(env, b)))
    };
    dd(
        env,
        &q.dims[nq - 1],
        &k.dims[nk - 1],
        "the head_dim of query and key",
    )?;
    dd(
        env,
        &k.dims[nk - 2],
        &v.dims[nv - 2],
        "the lengths of key and value",
    )?;
    dd(
        env,
        &k.dims[nk - 3],
        &v.dims[nv - 3],
        "the heads of key and value",
    )?;
    let (hq, hkv) = (env.dim(&q.dims[nq - 3]), env.dim(&k.dims[nk - 3]));
    // known head counts are checked here; symbolic ones at run time (the query heads a
    // multiple of the key/value heads: grouped-query attention)
    if let (Dim::Known(a), Dim::Known(b)) = (&hq, &hkv) {
        if *b == 0 || a % b != 0 {
            return Err(format!(
                "the query heads ({a}) must be a multiple of the key/value heads ({b})"
            ));
        }
    }
    Ok([lq])
}

/// The mask broadcasts to `target` (trailing alignment, 1s broadcast).
fn check_mask(env: &mut Env, m: &Shape, target: &Shape) -> Result<(), String> {
    let bad = |env: &Env| {
        format!(
            "the mask {} does not broadcast to [..., Hq, Sq, Sk] = {}",
            env.fmt_shape(m),
            env.fmt_shape(target)
        )
    };
    if m.rest.is_some() && m.rest != target.rest {
        return Err(bad(env));
    }
    if m.dims.len() > target.dims.len() {
        return Err(bad(env));
    }
    let off = target.dims.len() - m.dims.len();
    for (i, d) in m.dims.iter().enumerate() {
        let d = env.dim(d);
        if d == Dim::Known(1) {
            continue;
        }
        let t = target.dims[off + i].clone();
        if env.unify_dim(&d, &t).is_err() {
            return Err(bad(env));
        }
    }
    Ok(())
}

impl Family for Rules {
    fn names(&self) -> &'static [&'static str] {
        &["attention"]
    }

    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        let (causal, scale, part) = parts(p).ok_or("internal: not attention")?;
        if drop_of(p).0 > 0.0 {
            return Err(
                "`attention` with `dropout` on the weights is not lowered for cuda yet (the CPU's flash kernel applies it); drop `dropout` or compile this model for the CPU"
                    .into(),
            );
        }
        let n = cx.n_args();
        let masked = has_mask(part, n);
        // every operand is a float but a boolean mask (operand 3)
        let floats: Vec<usize> = (0..n)
            .filter(|&k| !(masked && k == 3 && cx.dt(k) == DType::Bool))
            .collect();
        let c = cuda::rt();
        let scale = match scale {
            Some(s) => quote!(::core::option::Option::Some(#s)),
            None => quote!(::core::option::Option::None),
        };
        let bool_mask = masked && cx.dt(3) == DType::Bool;
        cuda::via_f32(cx, "attention", &floats, |ops| {
            let (q, k, v) = (&ops[0], &ops[1], &ops[2]);
            let mask = if !masked {
                quote!(#c::DeviceAttnMask::None)
            } else {
                let m = &ops[3];
                if bool_mask {
                    quote!(#c::DeviceAttnMask::Bool(#m))
                } else {
                    quote!(#c::DeviceAttnMask::Add(#m))
                }
            };
            if part == 0 {
                return quote!(#c::attention(__dev, #q, #k, #v, #mask, #causal, #scale)?);
            }
            let at = if masked { 4 } else { 3 };
            let (o, g) = (&ops[at], &ops[at + 1]);
            let which = part_ident(part);
            quote!(#c::attention_grad(__dev, #q, #k, #v, #mask, #o, #g, #causal, #scale, ::mithril::rt::ops::AttnPart::#which)?)
        })
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        (name == "attention").then(|| sig(INPUTS, &["causal", "scale", "dropout"]))
    }

    fn build(&self, _: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        let causal = bool_attr(get(attrs, "causal"), "causal", false)?;
        let scale = match get(attrs, "scale") {
            None | Some(AttrVal::None) => None,
            Some(AttrVal::Float(f)) => Some(*f),
            Some(AttrVal::Int(i)) => Some(*i as f64),
            Some(_) => return Err("`scale` must be a number".into()),
        };
        if let Some(s) = scale {
            if !s.is_finite() {
                return Err(format!("`scale` must be finite, found {s}"));
            }
        }
        let dropout = match get(attrs, "dropout") {
            None | Some(AttrVal::None) => 0.0,
            Some(AttrVal::Float(f)) => *f,
            Some(AttrVal::Int(i)) => *i as f64,
            Some(_) => return Err("`dropout` must be a number in [0, 1]".into()),
        };
        if !(0.0..=1.0).contains(&dropout) {
            return Err(format!(
                "`attention`'s `dropout` probability must be in [0, 1], found {dropout}"
            ));
        }
        Ok(Prim::Attention {
            causal,
            scale,
            part: 0,
            dropout,
            op: 0,
        })
    }

    fn name(&self, p: &Prim) -> &'static str {
        if let Prim::AttentionHeads { .. } = p {
            return "attention";
        }
        match parts(p) {
            Some((_, _, 0)) => "attention",
            _ => "attention_grad",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        if let Prim::AttentionHeads { split, merge, .. } = p {
            return heads_shape(env, ins, split, *merge);
        }
        let (_, _, part) = parts(p).ok_or("internal: not attention")?;
        if ins.len() < 3 {
            return Err("`attention` takes query, key and value".into());
        }
        let (q, k, v) = (&ins[0], &ins[1], &ins[2]);
        let [lead] = check(env, q, k, v)?;
        let (nq, nk, nv) = (q.dims.len(), k.dims.len(), v.dims.len());
        let with = |l: &Shape, tail: [&Dim; 3]| Shape {
            rest: l.rest,
            dims: l
                .dims
                .iter()
                .cloned()
                .chain(tail.into_iter().cloned())
                .collect(),
        };
        let scores = with(&lead, [&q.dims[nq - 3], &q.dims[nq - 2], &k.dims[nk - 2]]);
        if has_mask(part, core_len(p, ins.len())) {
            check_mask(env, &ins[3], &scores)?;
        }
        let out = with(&lead, [&q.dims[nq - 3], &q.dims[nq - 2], &v.dims[nv - 1]]);
        let s = match part {
            0 => out,
            1 => q.clone(),
            2 => k.clone(),
            3 => v.clone(),
            4 => Shape {
                rest: None,
                dims: std::iter::once(Dim::Known(2))
                    .chain(k.dims.iter().cloned())
                    .collect(),
            },
            _ => scores,
        };
        Ok(env.shape(&s))
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        // (the fused form keeps its operands' dtype: `passes::heads` made it of `attention`)
        let part = match p {
            Prim::AttentionHeads { .. } => 0,
            _ => parts(p).ok_or("internal: not attention")?.2,
        };
        let fmt = |env: &Env, t: DT| match env.dt(t) {
            DT::Known(x) => x.to_string(),
            DT::Var(_) => "an open float type".into(),
        };
        let mut t = ins[0].dt;
        for (i, n) in [(1, "key"), (2, "value")] {
            t = env.unify_dt(t, ins[i].dt).map_err(|_| {
                format!(
                    "query ({}) and {n} ({}) must have the same dtype",
                    fmt(env, ins[0].dt),
                    fmt(env, ins[i].dt)
                )
            })?;
        }
        if let DT::Known(x) = env.dt(t) {
            if !matches!(x, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
                return Err(format!(
                    "`attention` runs on float tensors (f32, f64, f16, bf16), found {x}"
                ));
            }
        }
        if has_mask(part, core_len(p, ins.len())) {
            let m = ins[3].dt;
            if env.dt(m) != DT::Known(DType::Bool) {
                env.unify_dt(t, m).map_err(|_| {
                    format!(
                        "the mask must be bool or the query's dtype ({}), found {}",
                        fmt(env, t),
                        fmt(env, m)
                    )
                })?;
            }
        }
        Ok(t)
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        y: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        let Some((causal, scale, 0)) = parts(p) else {
            return b.unsupported("attention_grad", x.len());
        };
        let (dropout, op) = drop_of(p);
        let g = |part| Prim::Attention {
            causal,
            scale,
            part,
            dropout,
            op,
        };
        // q, k, v[, mask], out, out gradient[, mode]: the same mode and op regenerate the mask
        let nx = core_len(p, x.len());
        let mut args = x[..nx].to_vec();
        args.push(y);
        args.push(gy);
        args.extend_from_slice(&x[nx..]);
        let x = &x[..nx];
        let dq = b.op(g(1), &args);
        let (ks, vs) = (b.g.shape_of(x[1]), b.g.shape_of(x[2]));
        let stacked = match (ks, vs) {
            (Some(ks), Some(vs)) if ks.rest.is_none() && vs.rest.is_none() => {
                let (a, c) = (ks.dims.last().cloned(), vs.dims.last().cloned());
                match (a, c) {
                    (Some(a), Some(c)) => b.g.env.dim(&a) == b.g.env.dim(&c),
                    _ => false,
                }
            }
            _ => false,
        };
        let (dk, dv) = if stacked {
            let kv = b.op(g(4), &args);
            (
                b.op(Prim::Slice(vec![SliceArg::Index(0)]), &[kv]),
                b.op(Prim::Slice(vec![SliceArg::Index(1)]), &[kv]),
            )
        } else {
            (b.op(g(2), &args), b.op(g(3), &args))
        };
        let mut out = vec![Some(dq), Some(dk), Some(dv)];
        if x.len() == 4 {
            // a float mask is added to the scores: its gradient is theirs, summed over the
            // axes it broadcasts along (autodiff drops it when the mask needs none)
            if b.dt_of(x[3]).is_float() {
                let ds = b.op(g(5), &args);
                out.push(Some(b.unbroadcast(ds, x[3])));
            } else {
                out.push(None);
            }
        }
        if dropout > 0.0 {
            out.push(None); // the mode
        }
        out
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (causal, scale, part) = parts(p).ok_or("internal: not attention")?;
        if drop_of(p).0 > 0.0 {
            return Err(
                "`attention` with `dropout` runs in the plan form of CPU models only (it reads the call's mode)"
                    .into(),
            );
        }
        let (a, d) = (cx.a, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let (q, k, v) = (&a[0], &a[1], &a[2]);
        let masked = has_mask(part, a.len());
        let mask = if !masked {
            quote!(#ops::AttnMask::None)
        } else {
            let m = &a[3];
            if cx.in_dt.get(3) == Some(&DType::Bool) {
                quote!(#ops::AttnMask::Bool(&#m))
            } else {
                quote!(#ops::AttnMask::Add(&#m))
            }
        };
        let scale = match scale {
            Some(s) => quote!(::core::option::Option::Some(#s)),
            None => quote!(::core::option::Option::None),
        };
        // f16 / bf16: the f32 kernel on widened operands
        let half = matches!(cx.in_dt.first(), Some(DType::F16 | DType::BF16));
        let none = quote!(::core::option::Option::None);
        Ok(cx.checked(if part == 0 {
            if half {
                quote!(#ops::attention_half_to(&#q, &#k, &#v, #mask, #causal, #scale, #none, #d))
            } else {
                quote!(#ops::attention_to(&#q, &#k, &#v, #mask, #causal, #scale, #d))
            }
        } else {
            let at = if masked { 4 } else { 3 };
            let (o, g) = (&a[at], &a[at + 1]);
            let which = part_ident(part);
            if half {
                quote!(#ops::attention_grad_half_to(&#q, &#k, &#v, #mask, &#o, &#g, #causal, #scale, #none, #ops::AttnPart::#which, #d))
            } else {
                quote!(#ops::attention_grad_to(&#q, &#k, &#v, #mask, &#o, &#g, #causal, #scale, #ops::AttnPart::#which, #d))
            }
        }))
    }

    fn plan(&self, p: &Prim, cx: &PlanCx<'_>) -> Result<String, String> {
        if let Prim::AttentionHeads {
            causal,
            scale,
            split,
            merge,
        } = p
        {
            // each operand: heads, width, first column (heads 0: a plain [B, H, S, D] operand)
            let cols: Vec<String> = split
                .iter()
                .map(|s| {
                    let (h, w, o) = s.unwrap_or((0, 0, 0));
                    format!("{h} {w} {o}")
                })
                .collect();
            return Ok(format!(
                "attention_heads {} {} {} {}",
                pt::flag(*causal),
                scale.map(pt::f64_lit).unwrap_or_else(|| "-".into()),
                pt::flag(*merge),
                cols.join(" ")
            ));
        }
        let (causal, scale, part) = parts(p).ok_or("internal: not attention")?;
        let (dropout, op) = drop_of(p);
        let drop = if dropout > 0.0 {
            format!("{} {op} {}", pt::f64_lit(dropout), cx.seed_view)
        } else {
            "-".into()
        };
        Ok(format!(
            "attention {} {} {part} {drop}",
            pt::flag(causal),
            scale.map(pt::f64_lit).unwrap_or_else(|| "-".into())
        ))
    }
}

/// The shape of [`Prim::AttentionHeads`]: `[B, Sq, Hq · Dv]` with `merge`, else `[B, Hq, Sq,
/// Dv]`, from its operands (see the variant).
fn heads_shape(
    env: &mut Env,
    ins: &[Shape],
    split: &[Option<(u64, u64, u64)>; 3],
    merge: bool,
) -> Result<Shape, String> {
    if ins.len() < 3 {
        return Err("internal: the fused attention takes query, key and value".into());
    }
    // (batch, heads, seq, width) of operand `i`
    let logical = |i: usize| -> Result<[Dim; 4], String> {
        let s = &ins[i];
        match (split[i], &s.dims[..]) {
            (Some((h, w, _)), [b, sq, _]) if s.rest.is_none() => {
                Ok([b.clone(), Dim::Known(h), sq.clone(), Dim::Known(w)])
            }
            (None, [b, h, sq, w]) if s.rest.is_none() => {
                Ok([b.clone(), h.clone(), sq.clone(), w.clone()])
            }
            _ => Err(format!(
                "internal: a fused attention operand of shape {}",
                env.fmt_shape(s)
            )),
        }
    };
    let (q, v) = (logical(0)?, logical(2)?);
    let [b, hq, sq, _] = q;
    let dv = v[3].clone();
    let dims = if merge {
        let (Dim::Known(h), Dim::Known(w)) = (env.dim(&hq), env.dim(&dv)) else {
            return Err("internal: a merged fused attention needs known heads and widths".into());
        };
        vec![b, sq, Dim::Known(h * w)]
    } else {
        vec![b, hq, sq, dv]
    };
    Ok(env.shape(&Shape { rest: None, dims }))
}

/// The `AttnPart` variant of gradient part `part` (1 ..= 5).
fn part_ident(part: u8) -> TokenStream {
    match part {
        1 => quote!(Q),
        2 => quote!(K),
        3 => quote!(V),
        4 => quote!(KV),
        _ => quote!(Scores),
    }
}
