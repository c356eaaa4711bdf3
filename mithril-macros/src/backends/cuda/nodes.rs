//! One node's lowering (an owned `DeviceTensor` expression: a generated kernel's launch or a
//! `mithril::rt::cuda` call; a primitive's by its family, `Prim::cuda`) and a whole graph's body:
//! shape checks, node code, outputs.

use super::cx::NodeCx;
use super::{rt, Ctx, CudaGen};
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
            Op::Mode if !cx.dev_names => {
                quote!(#c::exec::scalar::<bool>(__dev, __training)?)
            }
            Op::Mode => return Err("`is_training` is not lowered for `backend_map` yet".into()),
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
                if let Some(code) = self.flow_node(cx, id)? {
                    code
                } else {
                    let p = p.clone();
                    p.cuda(&mut NodeCx { gen: self, cx, id })?
                }
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
        self.prepare_flow(cx);
        let c = rt();
        let mut body = Vec::new();
        if g.uses_mode() {
            // the call's mode (`is_training`, read on the host) and its random ops' seed
            body.push(quote! {
                let __training: bool = mode.is_training();
                let __seed: u64 = mode.seed();
            });
        }
        // the terminals first: a loop's body may hold the first use of an input or param,
        // which later code (after the loop) reads too
        for (id, n) in g.nodes.iter().enumerate() {
            if matches!(n.op, Op::Input(_) | Op::Param(_) | Op::Seed(_)) {
                body.push(self.node_code(cx, id));
            }
        }
        // integer scalar inputs a device op needs on the host (a decode position): read back
        // once here (one 8-byte copy per call), not once per op
        for n in &g.nodes {
            let Op::Prim(p) = &n.op else { continue };
            for &k in crate::prims::decode::host_index_operands(p) {
                let a = n.args[k];
                if matches!(g.nodes[a].op, Op::Input(_)) && !cx.host[a] && !cx.host_read[a] {
                    cx.host_read[a] = true;
                    self.readbacks += 1;
                    let (h, r, label) = (format_ident!("__h{}", a), cx.r(a), cx.label(a));
                    body.push(quote!(let #h: i64 = #c::flow::read_index(#r, #label)?;));
                }
            }
        }
        body.extend(self.emit_range(cx, 0, g.nodes.len()));
        // outputs: owned values move out (the last use of a node), the others are copied
        let mut outs = Vec::new();
        for (k, o) in g.outputs.iter().enumerate() {
            let node = cx.resolve(o.node);
            let later = g.outputs[k + 1..]
                .iter()
                .any(|x| cx.resolve(x.node) == node);
            let vid = v(node);
            let val = if cx.owned[node] && !cx.opt[node] && !cx.borrowed[node] && !later {
                quote!(#vid)
            } else {
                let r = cx.r(node);
                quote!(#c::exec::copy(__dev, #r)?)
            };
            outs.push((o.name.clone(), val));
        }
        (checks, body, outs)
    }
}
