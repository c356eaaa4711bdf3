//! `softmax` and `log_softmax` along one axis. CPU: `mithril::rt::ops::softmax_to` /
//! `log_softmax_to` (the row kernels of `mithril_kernels::rows`).
//!
//! Also the row normalisations [`Prim::Norm`] (layer norm and RMS norm over the last axis, with
//! an optional weight and bias): not DSL functions, made by `passes::norm` of the library
//! `LayerNorm` / `RMSNorm` graphs in inference graphs; CPU only (`mithril::rt::ops::norm_to`,
//! over `rows::layer_norm` / `rows::rms_norm`), no gradient (autodiff runs before the pass).

use super::attrs::{get, int_attr, sig, AttrVal, Sig, UN};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::{float_only, norm_axis, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Env, NodeId, Shape, DT};
use crate::prims::{Prim, ReduceKind};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// The softmax family.
pub struct Rules;

impl Family for Rules {
    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        // over the last axis
        let (Prim::Softmax(axis) | Prim::LogSoftmax(axis)) = p else {
            return Err("there is no CUDA kernel for it yet".into());
        };
        let c = cuda::rt();
        cuda::float3(cx.dt(0), p.name())?;
        let r = cx.dims(0)?.len() as i64;
        if r == 0 || (*axis != -1 && *axis != r - 1) {
            return Err(format!(
                "{} over axis {axis} (lowered: the last axis)",
                p.name()
            ));
        }
        let ra = cx.r(0);
        let f = format_ident!("{}", p.name());
        Ok(quote!(#c::#f(__dev, #ra)?))
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        match p {
            Prim::Softmax(a) => Ok(format!("softmax {a}")),
            Prim::LogSoftmax(a) => Ok(format!("log_softmax {a}")),
            Prim::Norm {
                eps,
                rms,
                scale,
                bias,
            } => Ok(format!(
                "norm {} {} {} {}",
                pt::f64_lit(*eps),
                pt::flag(*rms),
                pt::flag(*scale),
                pt::flag(*bias)
            )),
            _ => Err("internal: not a softmax".into()),
        }
    }

    fn names(&self) -> &'static [&'static str] {
        &["softmax", "log_softmax"]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        matches!(name, "softmax" | "log_softmax").then(|| sig(UN, &["axis"]))
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        let axis = int_attr(get(attrs, "axis"), "axis", -1)?;
        Ok(if name == "softmax" {
            Prim::Softmax(axis)
        } else {
            Prim::LogSoftmax(axis)
        })
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::Softmax(_) => "softmax",
            Prim::Norm { rms: false, .. } => "layer_norm",
            Prim::Norm { rms: true, .. } => "rms_norm",
            _ => "log_softmax",
        }
    }

    fn shape(&self, p: &Prim, _: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        if let Prim::Norm { .. } = p {
            // the pass made it of a graph of the input's shape
            return Ok(ins[0].clone());
        }
        let (Prim::Softmax(axis) | Prim::LogSoftmax(axis)) = p else {
            return Err("internal: no shape rule".into());
        };
        let s = &ins[0];
        if s.rest.is_some() && *axis >= 0 {
            return Err("a non-negative axis is ambiguous after `...`".into());
        }
        if s.rest.is_none() && norm_axis(*axis, s.dims.len()).is_none() {
            return Err(format!(
                "axis {axis} out of range for rank {}",
                s.dims.len()
            ));
        }
        Ok(s.clone())
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        float_only(p.name(), env, ins, default)
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        y: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        use Prim::*;
        match p {
            Softmax(axis) => {
                // y * (g - sum(g * y))
                let gyy = b.mul(gy, y);
                let s = b.op(Reduce(ReduceKind::Sum, vec![*axis], true), &[gyy]);
                let d = b.bin(Sub, gy, s);
                vec![Some(b.mul(y, d))]
            }
            LogSoftmax(axis) => {
                // g - softmax(x) * sum(g)
                let s = b.op(Reduce(ReduceKind::Sum, vec![*axis], true), &[gy]);
                let sm = b.op(Exp, &[y]);
                let t = b.mul(sm, s);
                vec![Some(b.bin(Sub, gy, t))]
            }
            // made after autodiff (`passes::norm`): never differentiated
            Norm { .. } => b.unsupported(p.name(), x.len()),
            _ => vec![None],
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (a, d) = (cx.a, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let x = &a[0];
        Ok(cx.checked(match p {
            Prim::Softmax(axis) => {
                let axis = *axis as isize;
                quote!(#ops::softmax_to(&#x, #axis, #d))
            }
            Prim::LogSoftmax(axis) => {
                let axis = *axis as isize;
                quote!(#ops::log_softmax_to(&#x, #axis, #d))
            }
            Prim::Norm {
                eps,
                rms,
                scale,
                bias,
            } => {
                let opt = |on: bool, k: usize| match a.get(k) {
                    Some(v) if on => quote!(::core::option::Option::Some(&#v)),
                    _ => quote!(::core::option::Option::None),
                };
                let w = opt(*scale, 1);
                let bb = opt(*bias, 1 + usize::from(*scale));
                quote!(#ops::norm_to(&#x, #w, #bb, #eps, #rms, #d))
            }
            _ => return Err("internal: no call lowering".into()),
        }))
    }
}
