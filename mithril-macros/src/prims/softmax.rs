//! `softmax` and `log_softmax` along one axis. CPU: `mithril::rt::ops::softmax_to` /
//! `log_softmax_to` (the row kernels of `mithril_kernels::rows`).

use super::attrs::{get, int_attr, sig, AttrVal, Sig, UN};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::PlanCx;
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
            _ => "log_softmax",
        }
    }

    fn shape(&self, p: &Prim, _: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
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
        _: &[NodeId],
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
            _ => return Err("internal: no call lowering".into()),
        }))
    }
}
