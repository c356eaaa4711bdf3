//! Primitives autodiff makes (only `reshape_like` has a DSL name): broadcasting, reshaping and
//! summing to another value's shape (for operands whose shapes are known only at run time), the element-count ratio
//! of a mean, the scatter gradients of `take_along` / `gather` / `slice` / `concat`, and the
//! eigenvectors `eigvalsh`'s gradient needs. CPU: the `*_to` ops of `mithril::rt::ops` (scatter
//! ops in `ops/grad.rs`).

use super::attrs::{sig, AttrVal, Sig};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::linalg::square_shape;
use super::plan::{self as pt, PlanCx};
use super::rules::{broadcast, float_only, total, ArgDt};
use super::shape::slice_arg_tokens;
use super::{CallCx, Family};
use crate::ir::{DType, Dim, Env, FExpr, NodeId, Shape, DT};
use crate::prims::{storage_type, Prim};
use proc_macro2::TokenStream;
use quote::quote;

/// The autodiff-only family.
pub struct Rules;

impl Family for Rules {
    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        let c = cuda::rt();
        Ok(match p {
            Prim::ReshapeLike => {
                // a reshape to the second operand's shape
                let rl = cx.r(1);
                cx.reshape_to(0, quote!(#rl.shape().iter().map(|&d| d as isize).collect()))
            }
            Prim::TakeAlongGrad => {
                cuda::float3(cx.dt(0), "take_along's gradient")?;
                let idx = cx.index_i64(1)?;
                let (rg, rl) = (cx.r(0), cx.r(2));
                quote!(#c::exec::take_along_backward(__dev, #rg, #idx, #rl.shape())?)
            }
            // a part's gradient: a strided gather of its block along the axis
            Prim::ConcatPart(axis, k) => {
                let rg = cx.r(0);
                let parts: Vec<TokenStream> = (1..cx.n_args()).map(|j| cx.r(j)).collect();
                let axis = *axis as isize;
                quote!(#c::layout::concat_part(__dev, #rg, &[#(#parts.shape()),*], #axis, #k)?)
            }
            Prim::SizeRatio => {
                let ty = storage_type(cx.out_dt());
                let (ra, rb) = (cx.r(0), cx.r(1));
                quote!(#c::exec::size_ratio::<#ty>(__dev, #ra, #rb)?)
            }
            Prim::BroadcastLike => {
                // a generated kernel reading the operand broadcast to the second one's shape
                let out_dims = cx.out_dims()?;
                let op = cx.operand(0)?;
                let rl = cx.r(1);
                let t = cx.out_dt();
                cx.fused_launch(
                    &FExpr::Arg(0),
                    &[op],
                    &out_dims,
                    t,
                    quote!(#rl.shape().to_vec()),
                )?
            }
            // the gradient of a slice: zeros with the gradient written at the slice's positions
            Prim::SliceGrad(args) => {
                let args = args.iter().map(slice_arg_tokens);
                let (rg, rl) = (cx.r(0), cx.r(1));
                quote!(#c::layout::slice_grad(__dev, #rg, #rl.shape(), &[#(#args),*])?)
            }
            // the gradient of an embedding (`gather` on axis 0 of a 2-D table): an f32 table of
            // scatter-adds, cast to the table's dtype
            Prim::GatherGrad(axis) => {
                cuda::float3(cx.dt(0), "gather's gradient")?;
                if *axis != 0 || cx.dims(2)?.len() != 2 {
                    return Err(format!(
                        "the gradient of gather with axis = {axis} on {} (lowered: axis = 0 on a 2-D table, an embedding)",
                        cx.describe(2)
                    ));
                }
                let idx = cx.index_i64(1)?;
                let (rg, rt) = (cx.r(0), cx.r(2));
                let g = quote!(#c::embedding_backward(__dev, #rg, #idx, #rt.shape())?);
                let t = cx.out_dt();
                if t == DType::F32 {
                    g
                } else {
                    let dims = cx.out_dims()?;
                    let back = cx.cast_value(quote!((&__eg)), DType::F32, &dims, t)?;
                    quote!({
                        let __eg = #g;
                        #back
                    })
                }
            }
            _ => return Err("there is no CUDA kernel for it yet".into()),
        })
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        Ok(match p {
            Prim::EighVectors => "eigh_vectors".into(),
            Prim::BroadcastLike => "broadcast_like".into(),
            Prim::ReshapeLike => "reshape_like".into(),
            Prim::SumLike => "sum_like".into(),
            Prim::SizeRatio => "size_ratio".into(),
            Prim::TakeAlongGrad => "take_along_grad".into(),
            Prim::GatherGrad(a) => format!("gather_grad {a}"),
            Prim::SliceGrad(args) => format!("slice_grad {}", pt::slice_args(args)),
            Prim::ConcatPart(a, k) => format!("concat_part {a} {k}"),
            _ => return Err("internal: not an autodiff helper".into()),
        })
    }

    fn names(&self) -> &'static [&'static str] {
        &["reshape_like"]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        (name == "reshape_like").then(|| sig(&["input", "like"], &[]))
    }

    fn build(&self, name: &str, _: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        match name {
            "reshape_like" => Ok(Prim::ReshapeLike),
            _ => Err(format!("unknown primitive `{name}`")),
        }
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::EighVectors => "eigh_vectors",
            Prim::BroadcastLike => "broadcast_like",
            Prim::ReshapeLike => "reshape_like",
            Prim::SumLike => "sum_like",
            Prim::SizeRatio => "size_ratio",
            Prim::TakeAlongGrad => "take_along_grad",
            Prim::GatherGrad(_) => "gather_grad",
            Prim::SliceGrad(_) => "slice_grad",
            _ => "concat_part",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::EighVectors => {
                square_shape(env, &ins[0], p.name())?;
                Ok(ins[0].clone())
            }
            Prim::BroadcastLike => {
                broadcast(env, &[ins[0].clone(), ins[1].clone()])?;
                Ok(ins[1].clone())
            }
            Prim::ReshapeLike => {
                // the element counts must agree where both are known (else checked at run time)
                let (a, b) = (env.shape(&ins[0]), env.shape(&ins[1]));
                if a.rest.is_none() && b.rest.is_none() {
                    if let (Dim::Known(x), Dim::Known(y)) =
                        (total(env, &a.dims), total(env, &b.dims))
                    {
                        if x != y {
                            return Err(format!(
                                "{x} elements cannot take the shape of {y} elements"
                            ));
                        }
                    }
                }
                Ok(ins[1].clone())
            }
            Prim::SumLike => Ok(ins[1].clone()),
            Prim::SizeRatio => Ok(Shape::scalar()),
            Prim::TakeAlongGrad | Prim::GatherGrad(_) => Ok(ins[2].clone()),
            Prim::SliceGrad(_) => Ok(ins[1].clone()),
            Prim::ConcatPart(_, k) => ins
                .get(k + 1)
                .cloned()
                .ok_or_else(|| "internal: concat part".to_string()),
            _ => Err("internal: no shape rule".into()),
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        match p {
            Prim::EighVectors => float_only(p.name(), env, ins, default),
            _ => Ok(ins[0].dt),
        }
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
            Prim::ReshapeLike => vec![Some(b.op(Prim::ReshapeLike, &[gy, x[0]])), None],
            Prim::SumLike => vec![Some(b.op(Prim::BroadcastLike, &[gy, x[0]])), None],
            Prim::BroadcastLike => vec![Some(b.unbroadcast(gy, x[0])), None],
            Prim::SizeRatio => vec![None, None],
            _ => b.unsupported("a gradient (second derivatives)", x.len()),
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (a, out_rust, d) = (cx.a, cx.out_rust, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let x = &a[0];
        Ok(cx.checked(match p {
            Prim::EighVectors => quote!(#ops::eigh_vectors_to(&#x, #d)),
            Prim::BroadcastLike => {
                let y = &a[1];
                quote!(#ops::broadcast_like_to(&#x, &#y, #d))
            }
            Prim::ReshapeLike => {
                let y = &a[1];
                quote!(#ops::reshape_like_to(&#x, &#y, #d))
            }
            Prim::SumLike => {
                let y = &a[1];
                quote!(#ops::sum_like_to(&#x, &#y, #d))
            }
            Prim::SizeRatio => {
                let y = &a[1];
                quote!(#ops::size_ratio_to::<#out_rust, _, _>(&#x, &#y, #d))
            }
            Prim::TakeAlongGrad => {
                let (y, z) = (&a[1], &a[2]);
                quote!(#ops::take_along_backward_to(&#x, &#y, &#z, #d))
            }
            Prim::GatherGrad(axis) => {
                let (y, z) = (&a[1], &a[2]);
                let axis = *axis as isize;
                quote!(#ops::gather_backward_to(&#x, &#y, &#z, #axis, #d))
            }
            Prim::SliceGrad(args) => {
                let y = &a[1];
                let args = args.iter().map(slice_arg_tokens);
                quote!(#ops::slice_backward_to(&#x, &#y, &[#(#args),*], #d))
            }
            Prim::ConcatPart(axis, k) => {
                let parts = &a[1..];
                let axis = *axis as isize;
                quote!(#ops::concat_part_to(&#x, &[#(#parts.shape()),*], #axis, #k, #d))
            }
            _ => return Err("internal: no call lowering".into()),
        }))
    }
}
