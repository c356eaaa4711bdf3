//! One node's lowering (an owned `DeviceTensor` expression: a generated kernel's launch or a
//! `mithril::rt::cuda` call; a primitive's by its family, `Prim::cuda`) and a whole graph's body:
//! shape checks, node code, outputs.

use super::cx::NodeCx;
use super::{p_name, rt, Ctx, CudaGen, SUPPORTED};
use crate::backends::common::v;
use crate::ir::{NodeId, Op};
use crate::prims::literal;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

impl<'a> CudaGen<'a> {
    /// The value of one node (an owned `DeviceTensor` expression), or `None` for nodes bound
    /// by reference (inputs, params, seeds, boundaries).
    pub(super) fn node(&mut self, cx: &Ctx<'a>, id: NodeId) -> Result<Option<TokenStream>, String> {
        let n = &cx.g.nodes[id];
        let c = rt();
        let args = n.args.clone();
        let ty = cx.ty(id);
        Ok(Some(match &n.op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Boundary(_) => return Ok(None),
            Op::Mode => {
                return Err(
                    "`is_training` is not lowered for `backend: cuda` or `backend_map` yet".into(),
                )
            }
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
            Op::Prim(p) => {
                let p = p.clone();
                p.cuda(&mut NodeCx { gen: self, cx, id })?
            }
        }))
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
