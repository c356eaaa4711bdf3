//! Constructors: `arange` (no tensor inputs; its length may be a symbolic dim) and
//! `zeros_like` / `ones_like`. CPU: `mithril::rt::ops::full_like_to` / `arange_to` (`arange`'s
//! length may be known only at run time: the generator's run-time dims, through the contexts).

use super::attrs::{get, sig, AttrVal, Sig, UN};
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::ArgDt;
use super::{CallCx, Family};
use crate::ir::{DType, Dim, Env, NodeId, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The constructor family.
pub struct Rules;

impl Family for Rules {
    fn plan(&self, p: &Prim, cx: &PlanCx<'_>) -> Result<String, String> {
        match p {
            Prim::Arange { start, step, .. } => {
                let s = cx.shape.ok_or("arange: no shape")?;
                let len = s.dims.first().and_then(|d| (cx.dim)(d)).ok_or(
                    "arange: its length is not known at run time (use a symbol of an input's shape)",
                )?;
                Ok(format!(
                    "arange {} {} {len}",
                    pt::f64_lit(*start),
                    pt::f64_lit(*step)
                ))
            }
            Prim::FullLike(v) => Ok(format!("full_like {}", pt::f64_lit(*v))),
            _ => Err("internal: not a constructor".into()),
        }
    }

    fn names(&self) -> &'static [&'static str] {
        &["zeros_like", "ones_like", "arange"]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        Some(match name {
            "zeros_like" | "ones_like" => sig(UN, &[]),
            "arange" => sig(&[], &["start", "end", "step", "dtype"]),
            _ => return None,
        })
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        let get = |k: &str| get(attrs, k);
        Ok(match name {
            "zeros_like" => Prim::FullLike(0.0),
            "ones_like" => Prim::FullLike(1.0),
            _ => arange(get("start"), get("end"), get("step"), get("dtype"))?,
        })
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::FullLike(v) if *v == 0.0 => "zeros_like",
            Prim::FullLike(_) => "ones_like",
            _ => "arange",
        }
    }

    fn shape(&self, p: &Prim, _: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Arange { len, .. } => Ok(Shape::fixed(vec![len.clone()])),
            _ => Ok(ins[0].clone()),
        }
    }

    fn dtype(&self, p: &Prim, _: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        match p {
            Prim::Arange { int, dtype, .. } => Ok(DT::Known(dtype.unwrap_or(if *int {
                DType::I64
            } else {
                default
            }))),
            _ => Ok(ins[0].dt),
        }
    }

    fn vjp(
        &self,
        _: &mut Builder,
        p: &Prim,
        _: &[NodeId],
        _: NodeId,
        _: NodeId,
    ) -> Vec<Option<NodeId>> {
        match p {
            Prim::FullLike(_) => vec![None],
            _ => vec![],
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let ops = quote!(::mithril::rt::ops);
        let d = cx.d;
        match p {
            Prim::FullLike(v) => {
                let x = cx.a.first().cloned().unwrap_or_default();
                let v = *v;
                Ok(cx.checked(quote!(#ops::full_like_to(&#x, #v, #d))))
            }
            Prim::Arange { start, step, .. } => {
                // the length may be symbolic: its run-time value
                let (start, step) = (*start, *step);
                let s = cx.shape.ok_or("arange: no shape")?;
                let len = s.dims.first().and_then(|d| (cx.dim)(d)).ok_or(
                    "arange: its length is not known at run time (use a symbol of an input's shape)",
                )?;
                Ok(quote!(#ops::arange_to(#start, #step, (#len) as usize, #d)?))
            }
            _ => Err("internal: no call lowering".into()),
        }
    }

    /// `zeros_like` / `ones_like` (the gradient code's zero initialisations, e.g. of a
    /// reversed loop's carries): zeros directly, other values by a generated kernel.
    fn cuda(&self, p: &Prim, cx: &mut dyn super::cuda::CudaCx) -> Result<TokenStream, String> {
        match p {
            Prim::FullLike(v) => {
                let ra = cx.r(0);
                let t = cx.out_dt();
                let ty = super::storage_type(t);
                if *v == 0.0 {
                    return Ok(
                        quote!(::mithril::rt::cuda::DeviceTensor::<#ty>::zeros(__dev, #ra.shape())?),
                    );
                }
                let lit = crate::ir::FExpr::Lit(crate::ir::Scalar::Float(*v), t);
                let dims = cx.out_dims()?;
                cx.fused_launch(&lit, &[], &dims, t, quote!(#ra.shape().to_vec()))
            }
            // `arange`: one launch of `layout.cu`'s kernel (f64 arithmetic, then the dtype, as the
            // CPU); its length from the run-time dims; f16 / bf16 through f32
            Prim::Arange { start, step, .. } => {
                let (start, step) = (*start, *step);
                let dims = cx.reshape_dims()?;
                let t = cx.out_dt();
                let c = quote!(::mithril::rt::cuda);
                let arange = |ty: TokenStream| {
                    quote!({
                        let __d: ::std::vec::Vec<isize> = #dims;
                        #c::layout::arange::<#ty>(__dev, #start, #step, __d[0] as i64)?
                    })
                };
                match t {
                    DType::F32 | DType::F64 | DType::I64 | DType::I32 => {
                        Ok(arange(super::storage_type(t)))
                    }
                    DType::F16 | DType::BF16 => {
                        let wide = arange(quote!(f32));
                        let dims = cx.out_dims()?;
                        let back = cx.cast_value(quote!((&__ar)), DType::F32, &dims, t)?;
                        Ok(quote!({
                            let __ar = #wide;
                            #back
                        }))
                    }
                    t => Err(format!(
                        "`arange` of {t} on cuda (f32, f64, f16, bf16, i64, i32)"
                    )),
                }
            }
            _ => Err("there is no CUDA kernel for it yet".into()),
        }
    }
}

/// `arange(end)`, `arange(start, end)`, `arange(start, end, step)` (torch's semantics): numbers
/// known at compile time, or `arange(T)` with `T` a symbolic dim (`[T]` values `0..T`).
fn arange(
    start: Option<&AttrVal>,
    end: Option<&AttrVal>,
    step: Option<&AttrVal>,
    dtype: Option<&AttrVal>,
) -> Result<Prim, String> {
    let (start, end) = match (start, end) {
        (Some(s), None) => (None, Some(s)),
        (s, e) => (s, e),
    };
    let dtype = match dtype {
        None | Some(AttrVal::None) => None,
        Some(AttrVal::DType(t)) if *t != DType::Bool => Some(*t),
        _ => return Err("`dtype` of `arange` must be a numeric dtype (`f32`, `i64`, ...)".into()),
    };
    let num = |v: Option<&AttrVal>, what: &str, default: i64| -> Result<(f64, bool), String> {
        match v {
            None => Ok((default as f64, true)),
            Some(AttrVal::Int(i)) => Ok((*i as f64, true)),
            Some(AttrVal::Float(f)) if f.is_finite() => Ok((*f, false)),
            _ => Err(format!(
                "`{what}` of `arange` must be a number known at compile time"
            )),
        }
    };
    let (s0, si) = num(start, "start", 0)?;
    let (st, ti) = num(step, "step", 1)?;
    if st == 0.0 {
        return Err("the `step` of `arange` cannot be 0".into());
    }
    match end {
        None => Err("`arange` needs an end: `arange(end)`, `arange(start, end)` or `arange(start, end, step)`".into()),
        Some(AttrVal::Dim(d)) => {
            if s0 != 0.0 || st != 1.0 {
                return Err("`arange` with a symbolic end (`arange(T)`) counts 0, 1, ..., T - 1: it takes no `start` or `step`".into());
            }
            Ok(Prim::Arange {
                start: 0.0,
                step: 1.0,
                len: d.clone(),
                int: true,
                dtype,
            })
        }
        e => {
            let (e0, ei) = num(e, "end", 0)?;
            let n = ((e0 - s0) / st).ceil();
            if n > (1u64 << 40) as f64 {
                return Err(format!("`arange` of {n} elements is too large"));
            }
            Ok(Prim::Arange {
                start: s0,
                step: st,
                len: Dim::Known(if n > 0.0 { n as u64 } else { 0 }),
                int: si && ei && ti,
                dtype,
            })
        }
    }
}
