//! Incremental decoding with a key/value cache: `update_slice` and `cached_attention`.
//!
//! `update_slice(x, values, start, axis = k)`: `x` with rows `start .. start + n` along axis
//! `k` replaced by `values` (`n` its length there, every other dim equal to `x`'s); `start` a
//! run-time integer scalar. The result has `x`'s shape; rows past the end (a full cache) are a
//! run-time `Err`. Lowered as `update_slice` (`mithril::rt::ops::update_slice_in`); when `x` is
//! an input donated to the output (`donate:`), the call writes only the new rows into the
//! caller's buffer: a cache appended without a copy.
//!
//! `cached_attention(q, k, v, pos, scale = 1/√D)`: causal attention of queries at positions
//! `pos .. pos + Sq` (`q: [..., Hq, Sq, D]`) over the first `pos + Sq` rows of a cache (`k:
//! [..., Hkv, M, D]`, `v: [..., Hkv, M, Dv]`): query `i` sees keys `j <= pos + i`; the unused
//! tail is not read (`mithril_kernels::attention::decode`). Result `[..., Hq, Sq, Dv]`.
//!
//! Both are for inference: their gradients are not supported (a model using them has no
//! `evaluate_gradients`), on the CPU as on cuda.
//!
//! On cuda (`mithril::rt::cuda::decode`, kernels in `decode.cu`): the position is a host
//! integer checked on the host — an input position is read back once per call at its start
//! (`flow::read_index`, an 8-byte copy; [`host_index_operands`]), another one per op; `update_slice`
//! writes only the new rows, into its input itself when the input is an owned value dead after
//! it (a donated cache, `donate:`), else into a device copy of it (f32, f64, f16, bf16, i32,
//! i64); `cached_attention` reads only the cache rows in use (f32 / f64; for f16 / bf16 the
//! queries and the rows in use are widened to f32 around the f32 kernel, the result rounded once,
//! as on the CPU).

use super::attrs::{get, int_attr, sig, AttrVal, Sig};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::{show, ArgDt};
use super::Family;
use crate::ir::{DType, Env, NodeId, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The decoding family.
pub struct Rules;

fn fmt_dt(env: &Env, t: DT) -> String {
    match env.dt(t) {
        DT::Known(x) => x.to_string(),
        DT::Var(_) => "an open float type".into(),
    }
}

fn int_scalar(env: &mut Env, s: &Shape, t: DT, what: &str) -> Result<(), String> {
    if s.rest.is_some() || !s.dims.is_empty() {
        return Err(format!(
            "{what} must be an integer scalar (`i64[]`), found shape {}",
            env.fmt_shape(s)
        ));
    }
    let _ = t;
    Ok(())
}

impl Family for Rules {
    fn names(&self) -> &'static [&'static str] {
        &["update_slice", "cached_attention"]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        match name {
            "update_slice" => Some(sig(&["input", "values", "start"], &["axis"])),
            "cached_attention" => Some(sig(&["query", "key", "value", "pos"], &["scale"])),
            _ => None,
        }
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        match name {
            "update_slice" => Ok(Prim::UpdateSlice {
                axis: int_attr(get(attrs, "axis"), "axis", 0)?,
            }),
            _ => {
                let scale = match get(attrs, "scale") {
                    None | Some(AttrVal::None) => None,
                    Some(AttrVal::Float(f)) => Some(*f),
                    Some(AttrVal::Int(i)) => Some(*i as f64),
                    Some(_) => return Err("`scale` must be a number".into()),
                };
                if scale.is_some_and(|s| !s.is_finite()) {
                    return Err("`scale` must be finite".into());
                }
                Ok(Prim::CachedAttention { scale })
            }
        }
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::UpdateSlice { .. } => "update_slice",
            _ => "cached_attention",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::UpdateSlice { axis } => {
                let [x, v, s] = ins else {
                    return Err("`update_slice` takes input, values and start".into());
                };
                let (x, v) = (env.shape(x), env.shape(v));
                if x.rest.is_some() || v.rest.is_some() || x.dims.len() != v.dims.len() {
                    return Err(format!(
                        "the values {} must have the rank of the input {} (a known rank)",
                        env.fmt_shape(&v),
                        env.fmt_shape(&x)
                    ));
                }
                let r = x.dims.len();
                let ax = super::norm_axis(*axis, r)
                    .ok_or_else(|| format!("axis {axis} out of range for rank {r}"))?;
                for (a, (dx, dv)) in x.dims.iter().zip(&v.dims).enumerate() {
                    if a != ax && env.unify_dim(dx, dv).is_err() {
                        return Err(format!(
                            "the values {} do not fit a slice of the input {} along axis {ax}: dim {a} is {} vs {}",
                            env.fmt_shape(&v),
                            env.fmt_shape(&x),
                            show(env, dv),
                            show(env, dx)
                        ));
                    }
                }
                int_scalar(env, s, DT::Known(DType::I64), "the start")?;
                Ok(env.shape(&x))
            }
            _ => {
                let [q, k, v, pos] = ins else {
                    return Err("`cached_attention` takes query, key, value and pos".into());
                };
                let (q, k, v) = (env.shape(q), env.shape(k), env.shape(v));
                let r = q.dims.len();
                if q.rest.is_some()
                    || k.rest.is_some()
                    || v.rest.is_some()
                    || r < 3
                    || k.dims.len() != r
                    || v.dims.len() != r
                {
                    return Err(format!(
                        "query {}, key {} and value {} must have one known rank, at least 3 (`[..., heads, seq, head_dim]`)",
                        env.fmt_shape(&q),
                        env.fmt_shape(&k),
                        env.fmt_shape(&v)
                    ));
                }
                let unify =
                    |env: &mut Env, a: usize, b: usize, x: &Shape, y: &Shape, what: &str| {
                        env.unify_dim(&x.dims[a], &y.dims[b])
                            .map(|_| ())
                            .map_err(|_| {
                                format!(
                                    "{what} differ: {} vs {} (query {}, key {}, value {})",
                                    show(env, &x.dims[a]),
                                    show(env, &y.dims[b]),
                                    env.fmt_shape(&q),
                                    env.fmt_shape(&k),
                                    env.fmt_shape(&v)
                                )
                            })
                    };
                for a in 0..r - 3 {
                    unify(env, a, a, &q, &k, "the batch dims of query and key")?;
                    unify(env, a, a, &q, &v, "the batch dims of query and value")?;
                }
                unify(env, r - 1, r - 1, &q, &k, "the head_dim of query and key")?;
                unify(
                    env,
                    r - 2,
                    r - 2,
                    &k,
                    &v,
                    "the cache lengths of key and value",
                )?;
                unify(env, r - 3, r - 3, &k, &v, "the heads of key and value")?;
                let (hq, hkv) = (env.dim(&q.dims[r - 3]), env.dim(&k.dims[r - 3]));
                match (&hq, &hkv) {
                    (crate::ir::Dim::Known(a), crate::ir::Dim::Known(b)) => {
                        if *b == 0 || a % b != 0 {
                            return Err(format!(
                                "the query heads ({a}) must be a multiple of the key/value heads ({b})"
                            ));
                        }
                    }
                    _ => {
                        unify(env, r - 3, r - 3, &q, &k, "the heads of query and key")?;
                    }
                }
                int_scalar(env, pos, DT::Known(DType::I64), "`pos`")?;
                let mut dims = q.dims[..r - 1].to_vec();
                dims.push(v.dims[r - 1].clone());
                Ok(env.shape(&Shape::fixed(dims)))
            }
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        let (names, last): (&[&str], usize) = match p {
            Prim::UpdateSlice { .. } => (&["input", "values"], 2),
            _ => (&["query", "key", "value"], 3),
        };
        let mut t = ins[0].dt;
        for (i, n) in names.iter().enumerate().skip(1) {
            t = env.unify_dt(t, ins[i].dt).map_err(|_| {
                format!(
                    "{} ({}) and {n} ({}) must have the same dtype",
                    names[0],
                    fmt_dt(env, ins[0].dt),
                    fmt_dt(env, ins[i].dt)
                )
            })?;
        }
        if !matches!(env.dt(ins[last].dt), DT::Known(DType::I64 | DType::I32)) {
            return Err(format!(
                "the {} must be an integer scalar (`i64[]`), found {}",
                if last == 2 { "start" } else { "`pos`" },
                fmt_dt(env, ins[last].dt)
            ));
        }
        if matches!(p, Prim::CachedAttention { .. }) {
            if let DT::Known(x) = env.dt(t) {
                if !matches!(x, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
                    return Err(format!(
                        "`cached_attention` runs on float tensors (f32, f64, f16, bf16), found {x}"
                    ));
                }
            }
        }
        Ok(t)
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        _: NodeId,
        _: NodeId,
    ) -> Vec<Option<NodeId>> {
        b.unsupported(self.name(p), x.len())
    }

    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        let c = cuda::rt();
        match p {
            Prim::UpdateSlice { axis } => {
                if !matches!(
                    cx.dt(0),
                    DType::F32 | DType::F64 | DType::F16 | DType::BF16 | DType::I32 | DType::I64
                ) {
                    return Err(format!(
                        "`update_slice` on cuda takes f32, f64, f16, bf16, i32 or i64 tensors, not {}",
                        cx.describe(0)
                    ));
                }
                let (vals, start) = (cx.r(1), cx.host_index(2));
                let axis = *axis as isize;
                let start = quote!(let __start: i64 = #start;);
                Ok(match cx.take(0) {
                    // the input is dead after this node: its buffer is the result
                    Some(x) => quote!({
                        #start
                        let mut __x = #x;
                        #c::decode::update_slice_in(__dev, &mut __x, #vals, #axis, __start)?;
                        __x
                    }),
                    None => {
                        let x = cx.r(0);
                        quote!({
                            #start
                            #c::decode::update_slice(__dev, #x, #vals, #axis, __start)?
                        })
                    }
                })
            }
            Prim::CachedAttention { scale } => {
                let scale = match scale {
                    Some(s) => quote!(::core::option::Option::Some(#s)),
                    None => quote!(::core::option::Option::None),
                };
                let f = match cx.dt(0) {
                    DType::F32 | DType::F64 => quote!(cached_attention),
                    // the rows in use widened to f32, the result rounded once (as the CPU)
                    DType::F16 | DType::BF16 => quote!(cached_attention_half),
                    _ => {
                        return Err(format!(
                        "`cached_attention` on cuda takes f32, f64, f16 or bf16 operands, not {}",
                        cx.describe(0)
                    ))
                    }
                };
                let (q, k, v, pos) = (cx.r(0), cx.r(1), cx.r(2), cx.host_index(3));
                Ok(quote!({
                    let __pos: i64 = #pos;
                    #c::decode::#f(__dev, #q, #k, #v, __pos, #scale)?
                }))
            }
            _ => Err("internal: not a decoding op".into()),
        }
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        Ok(match p {
            Prim::UpdateSlice { axis } => format!("update_slice {axis}"),
            Prim::CachedAttention { scale } => format!(
                "cached_attention {}",
                scale.map(pt::f64_lit).unwrap_or_else(|| "-".into())
            ),
            _ => return Err("internal: not a decoding op".into()),
        })
    }
}

/// The operands of `p` its CUDA lowering needs as host integers (`CudaCx::host_index`): the
/// position of `update_slice` (2) and of `cached_attention` (3). The generator reads such an
/// operand back once per call when it is an input (the decode position), not once per op.
pub fn host_index_operands(p: &Prim) -> &'static [usize] {
    match p {
        Prim::UpdateSlice { .. } => &[2],
        Prim::CachedAttention { .. } => &[3],
        _ => &[],
    }
}
