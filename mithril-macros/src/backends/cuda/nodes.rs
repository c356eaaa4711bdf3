//! One node's lowering (an owned `DeviceTensor` expression: a generated kernel's launch or a
//! `mithril::rt::cuda` call) and a whole graph's body: shape checks, node code, outputs.

use super::{p_name, rt, Ctx, CudaGen, SUPPORTED};
use crate::backends::common::v;
use crate::ir::{DType, FExpr, NodeId, Op};
use crate::prims::{literal, Prim, ReduceKind};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

impl<'a> CudaGen<'a> {
    /// The value of one node (an owned `DeviceTensor` expression), or `None` for nodes bound
    /// by reference (inputs, params, seeds, boundaries).
    pub(super) fn node(&mut self, cx: &Ctx, id: NodeId) -> Result<Option<TokenStream>, String> {
        let n = &cx.g.nodes[id];
        let c = rt();
        let args = n.args.clone();
        let ty = cx.ty(id);
        Ok(Some(match &n.op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Boundary(_) => return Ok(None),
            Op::Const(s) => {
                let lit = literal(*s, cx.dt(id));
                quote!(#c::exec::scalar::<#ty>(__dev, <#ty as ::mithril::rt::Elem>::from_acc(#lit))?)
            }
            Op::Fused(e) => {
                let ops = args
                    .iter()
                    .map(|&a| self.operand(cx, a))
                    .collect::<Result<Vec<_>, _>>()?;
                self.elementwise(cx, id, "", &e.clone(), &ops)?
            }
            Op::FusedMatmul { ta, tb, expr } => {
                let (ta, tb, expr) = (*ta, *tb, expr.clone());
                self.fused_matmul(cx, id, ta, tb, &expr)?
            }
            Op::Prim(p) if p.is_elementwise() => {
                let arg_dts: Vec<DType> = args.iter().map(|&a| cx.dt(a)).collect();
                let out = cx.dt(id);
                let e = FExpr::Op(
                    p.clone(),
                    (0..args.len()).map(FExpr::Arg).collect(),
                    out,
                    p.compute_dtype(&arg_dts, out),
                );
                let ops = args
                    .iter()
                    .map(|&a| self.operand(cx, a))
                    .collect::<Result<Vec<_>, _>>()?;
                self.elementwise(cx, id, "", &e, &ops)?
            }
            Op::Prim(Prim::Matmul { ta, tb }) => {
                let (prod, pdt) = self.matmul(cx, id, *ta, *tb)?;
                if pdt != cx.dt(id) {
                    return Err("internal: matmul product type".into());
                }
                prod
            }
            Op::Prim(
                p @ (Prim::Reshape(_) | Prim::Flatten(..) | Prim::Unsqueeze(_) | Prim::ReshapeLike),
            ) => self.reshape_node(cx, id, p)?,
            Op::Prim(Prim::Reduce(kind, axes, keep)) => self.reduce(cx, id, *kind, axes, *keep)?,
            Op::Prim(p @ (Prim::Softmax(axis) | Prim::LogSoftmax(axis))) => {
                Self::float3(cx, args[0], p.name())?;
                let r = cx.dims(args[0])?.len() as i64;
                if r == 0 || (*axis != -1 && *axis != r - 1) {
                    return Err(format!(
                        "{} over axis {axis} (lowered: the last axis)",
                        p.name()
                    ));
                }
                let ra = cx.r(args[0]);
                let f = format_ident!("{}", p.name());
                quote!(#c::#f(__dev, #ra)?)
            }
            Op::Prim(p @ (Prim::TakeAlong | Prim::TakeAlongGrad | Prim::Gather(_))) => {
                self.index_node(cx, id, p)?
            }
            Op::Prim(Prim::SizeRatio) => {
                let (ra, rb) = (cx.r(args[0]), cx.r(args[1]));
                quote!(#c::exec::size_ratio::<#ty>(__dev, #ra, #rb)?)
            }
            Op::Prim(Prim::BroadcastLike) => {
                let out_dims = cx.dims(id)?;
                let op = self.operand(cx, args[0])?;
                let rl = cx.r(args[1]);
                let t = cx.dt(id);
                self.fused_launch(
                    cx,
                    id,
                    "",
                    &FExpr::Arg(0),
                    &[op],
                    &out_dims,
                    t,
                    quote!(#rl.shape().to_vec()),
                )?
            }
            Op::Prim(_) => {
                return Err("there is no CUDA kernel for it yet".into());
            }
        }))
    }

    /// `reshape`, `flatten`, `unsqueeze` and `ReshapeLike`: a reshape of the operand (moved
    /// when it is dead, copied otherwise).
    fn reshape_node(&mut self, cx: &Ctx, id: NodeId, p: &Prim) -> Result<TokenStream, String> {
        let c = rt();
        let args = &cx.g.nodes[id].args;
        Ok(match p {
            Prim::Reshape(_) => {
                let dims = self.reshape_dims(cx, id)?;
                self.reshape_to(cx, args[0], dims)
            }
            Prim::Flatten(s, e) => {
                let (ra, label) = (cx.r(args[0]), cx.label(id));
                self.reshape_to(
                    cx,
                    args[0],
                    quote!(#c::exec::flatten_dims(#label, #ra.shape(), #s, #e)?),
                )
            }
            Prim::Unsqueeze(axes) => {
                let ra = cx.r(args[0]);
                let axes = axes.clone();
                self.reshape_to(
                    cx,
                    args[0],
                    quote!(#c::exec::unsqueeze_dims(#ra.shape(), &[#(#axes),*])),
                )
            }
            _ => {
                let rl = cx.r(args[1]);
                self.reshape_to(
                    cx,
                    args[0],
                    quote!(#rl.shape().iter().map(|&d| d as isize).collect()),
                )
            }
        })
    }

    /// A reduction: over trailing axes (sum / mean / max / min) or leading ones (sum).
    fn reduce(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        kind: ReduceKind,
        axes: &[i64],
        keep: bool,
    ) -> Result<TokenStream, String> {
        let n = &cx.g.nodes[id];
        let args = &n.args;
        let c = rt();
        Self::float3(cx, args[0], "a reduction")?;
        let r = cx.dims(args[0])?.len();
        let mut ax: Vec<usize> = if axes.is_empty() {
            (0..r).collect()
        } else {
            axes.iter()
                .map(|&a| {
                    if a < 0 {
                        (a + r as i64) as usize
                    } else {
                        a as usize
                    }
                })
                .collect()
        };
        ax.sort_unstable();
        ax.dedup();
        let ra = cx.r(args[0]);
        let trailing = ax.iter().enumerate().all(|(i, &a)| a == r - ax.len() + i);
        let leading = ax.iter().enumerate().all(|(i, &a)| a == i);
        let rk = match kind {
            ReduceKind::Sum => Some(quote!(#c::RowReduce::Sum)),
            ReduceKind::Mean => Some(quote!(#c::RowReduce::Mean)),
            ReduceKind::Max => Some(quote!(#c::RowReduce::Max)),
            ReduceKind::Min => Some(quote!(#c::RowReduce::Min)),
            ReduceKind::Prod => None,
        };
        Ok(match rk {
            Some(rk) if trailing => {
                let split = r - ax.len();
                quote!(#c::exec::reduce_trailing(__dev, #ra, #rk, #split, #keep)?)
            }
            Some(_) if leading && kind == ReduceKind::Sum => {
                let split = ax.len();
                quote!(#c::exec::sum_leading(__dev, #ra, #split, #keep)?)
            }
            _ => {
                return Err(format!(
                    "{} over axes {ax:?} of a rank-{r} tensor (lowered: sum / mean / max / min over trailing axes, sum over leading axes)",
                    p_name(&n.op)
                ))
            }
        })
    }

    /// `take_along`, its gradient, and `gather` on axis 0 of a 2-D table (an embedding).
    fn index_node(&mut self, cx: &Ctx, id: NodeId, p: &Prim) -> Result<TokenStream, String> {
        let c = rt();
        let args = &cx.g.nodes[id].args;
        Ok(match p {
            Prim::TakeAlong => {
                Self::float3(cx, args[0], "take_along")?;
                let idx = self.index_i64(cx, id, args[1])?;
                let ra = cx.r(args[0]);
                quote!(#c::take_along(__dev, #ra, #idx)?)
            }
            Prim::TakeAlongGrad => {
                Self::float3(cx, args[0], "take_along's gradient")?;
                let idx = self.index_i64(cx, id, args[1])?;
                let (rg, rl) = (cx.r(args[0]), cx.r(args[2]));
                quote!(#c::exec::take_along_backward(__dev, #rg, #idx, #rl.shape())?)
            }
            Prim::Gather(axis) => {
                Self::float3(cx, args[0], "gather")?;
                if *axis != 0 || cx.dims(args[0])?.len() != 2 {
                    return Err(format!(
                        "gather with axis = {axis} on {} (lowered: axis = 0 on a 2-D table, an embedding)",
                        cx.g.describe(args[0])
                    ));
                }
                let idx = self.index_i64(cx, id, args[1])?;
                let ra = cx.r(args[0]);
                quote!(#c::embedding(__dev, #ra, #idx)?)
            }
            _ => return Err("there is no CUDA kernel for it yet".into()),
        })
    }

    /// Shape checks and node code of a graph, with the output values: `(checks, body, outputs)`.
    pub(super) fn body(
        &mut self,
        cx: &mut Ctx<'a>,
    ) -> (
        Vec<TokenStream>,
        Vec<TokenStream>,
        Vec<(String, TokenStream)>,
    ) {
        let g = cx.g;
        let mut checks = Vec::new();
        for i in &g.inputs {
            let f = format_ident!("{}", i.name);
            checks.push(cx.gen.check(
                i.node,
                &format!("input `{}`", i.name),
                quote!(inputs.#f.shape()),
            ));
        }
        for p in &g.params {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            checks.push(cx.gen.check(
                p.node,
                &format!("param `{}`", p.dotted()),
                quote!(params.#(#fields).*.shape()),
            ));
        }
        for (id, n) in g.nodes.iter().enumerate() {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                checks.push(cx.gen.check(
                    id,
                    &format!("output gradient `{}`", g.outputs[i].name),
                    quote!(output_grads.#f.shape()),
                ));
            }
        }
        let mut body = Vec::new();
        let model = self.inp.name.to_string();
        for id in 0..g.nodes.len() {
            let vid = v(id);
            let n = &g.nodes[id];
            let code = match &n.op {
                Op::Input(i) => {
                    let f = format_ident!("{}", g.inputs[*i].name);
                    quote!(let #vid = inputs.#f;)
                }
                Op::Param(i) => {
                    let fields = g.params[*i].path.iter().map(|p| format_ident!("{}", p));
                    quote!(let #vid = &params.#(#fields).*;)
                }
                Op::Seed(i) => {
                    let f = format_ident!("{}", g.outputs[*i].name);
                    quote!(let #vid = &output_grads.#f;)
                }
                Op::Boundary(_) => {
                    let r = cx.r(n.args[0]);
                    quote!(let #vid = #r;)
                }
                _ => match self.node(cx, id) {
                    Ok(Some(val)) => {
                        cx.owned[id] = true;
                        let ty = cx.ty(id);
                        quote!(let #vid: ::mithril::rt::cuda::DeviceTensor<#ty> = #val;)
                    }
                    Ok(None) => quote!(),
                    Err(why) => {
                        let what = p_name(&n.op);
                        self.errors.push(g.error_at(
                            id,
                            format!(
                                "`{model}` has `backend: cuda`, which cannot lower this `{what}` yet: {why}\nlowered on cuda: {SUPPORTED}"
                            ),
                        ));
                        quote!()
                    }
                },
            };
            body.push(code);
        }
        // outputs: owned values move out (the last use of a node), the others are copied
        let mut outs = Vec::new();
        let c = rt();
        for (k, o) in g.outputs.iter().enumerate() {
            let later = g.outputs[k + 1..].iter().any(|x| x.node == o.node);
            let vid = v(o.node);
            let val = if cx.owned[o.node] && !later {
                quote!(#vid)
            } else {
                let r = cx.r(o.node);
                quote!(#c::exec::copy(__dev, #r)?)
            };
            outs.push((o.name.clone(), val));
        }
        (checks, body, outs)
    }
}
