//! Indexing by tensors: `gather` (rows of a table along an axis) and `take_along` (one pick
//! per sample along the last axis). CPU: `mithril::rt::ops::gather_to` / `take_along_to`; their
//! gradients are the scatter ops of `autodiff_helpers`.

use super::attrs::{get, int_attr, AttrVal, Sig};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::PlanCx;
use super::rules::{dt_names, fixed, known, norm_axis, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Env, NodeId, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The indexing family.
pub struct Rules;

impl Family for Rules {
    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        // `take_along`, and `gather` on axis 0 of a 2-D table (an embedding)
        let c = cuda::rt();
        Ok(match p {
            Prim::TakeAlong => {
                cuda::float3(cx.dt(0), "take_along")?;
                let idx = cx.index_i64(1)?;
                let ra = cx.r(0);
                quote!(#c::take_along(__dev, #ra, #idx)?)
            }
            Prim::Gather(axis) => {
                cuda::float3(cx.dt(0), "gather")?;
                if *axis != 0 || cx.dims(0)?.len() != 2 {
                    return Err(format!(
                        "gather with axis = {axis} on {} (lowered: axis = 0 on a 2-D table, an embedding)",
                        cx.describe(0)
                    ));
                }
                let idx = cx.index_i64(1)?;
                let ra = cx.r(0);
                quote!(#c::embedding(__dev, #ra, #idx)?)
            }
            _ => return Err("there is no CUDA kernel for it yet".into()),
        })
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        match p {
            Prim::Gather(a) => Ok(format!("gather {a}")),
            Prim::TakeAlong => Ok("take_along".into()),
            _ => Err("internal: not an index op".into()),
        }
    }

    fn names(&self) -> &'static [&'static str] {
        &["gather", "take_along"]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        let attrs: &'static [&'static str] = match name {
            "gather" => &["axis"],
            "take_along" => &[],
            _ => return None,
        };
        Some(super::attrs::sig(&["input", "indices"], attrs))
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        Ok(if name == "gather" {
            Prim::Gather(int_attr(get(attrs, "axis"), "axis", 0)?)
        } else {
            Prim::TakeAlong
        })
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::Gather(_) => "gather",
            _ => "take_along",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Gather(axis) => {
                let (t, idx) = (&ins[0], &ins[1]);
                fixed(t, "gather")?;
                let r = t.dims.len();
                let ax = norm_axis(*axis, r)
                    .ok_or_else(|| format!("axis {axis} out of range for rank {r}"))?;
                let mut out = Shape {
                    rest: idx.rest,
                    dims: vec![],
                };
                if idx.rest.is_some() && ax > 0 {
                    return Err("gather with `...` indices needs axis 0".into());
                }
                out.dims.extend_from_slice(&t.dims[..ax]);
                out.dims.extend_from_slice(&idx.dims);
                out.dims.extend_from_slice(&t.dims[ax + 1..]);
                Ok(out)
            }
            Prim::TakeAlong => {
                let (t, idx) = (&ins[0], &ins[1]);
                if t.dims.is_empty() {
                    return Err("take_along needs an input of rank >= 1".into());
                }
                let lead = Shape {
                    rest: t.rest,
                    dims: t.dims[..t.dims.len() - 1].to_vec(),
                };
                env.unify_pattern(&lead, idx).map_err(|e| {
                    format!("the indices must have the input's shape without its last axis ({e})")
                })?;
                Ok(lead)
            }
            _ => Err("internal: no shape rule".into()),
        }
    }

    fn dtype(&self, _: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        match known(env, &ins[1]) {
            Some(DType::I32 | DType::I64) => {}
            _ => {
                let names = dt_names(env, ins);
                return Err(format!(
                    "`gather` needs integer indices, found {}",
                    names[1]
                ));
            }
        }
        Ok(ins[0].dt)
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        _: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        match p {
            // at a scalar index (a scan's step, `x[(.., t)]`): one slice added, which a loop's
            // gradient accumulates in place
            Prim::Gather(axis)
                if b.g
                    .shape_of(x[1])
                    .is_some_and(|s| s.rest.is_none() && s.dims.is_empty()) =>
            {
                let z = b.op(Prim::FullLike(0.0), &[x[0]]);
                vec![
                    Some(b.op(
                        Prim::SetAt {
                            axis: *axis,
                            add: true,
                            len: None,
                        },
                        &[z, gy, x[1]],
                    )),
                    None,
                ]
            }
            Prim::Gather(axis) => {
                vec![Some(b.op(Prim::GatherGrad(*axis), &[gy, x[1], x[0]])), None]
            }
            _ => vec![Some(b.op(Prim::TakeAlongGrad, &[gy, x[1], x[0]])), None],
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (a, d) = (cx.a, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let (x, y) = (&a[0], &a[1]);
        Ok(cx.checked(match p {
            Prim::Gather(axis) => {
                let axis = *axis as isize;
                quote!(#ops::gather_to(&#x, &#y, #axis, #d))
            }
            _ => quote!(#ops::take_along_to(&#x, &#y, #d)),
        }))
    }
}
