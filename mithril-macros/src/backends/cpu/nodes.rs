//! The per-op path of the CPU generator (a mixed model's functions): a node's Rust code on its
//! backend (host nodes here, device nodes and transfers by the [`DeviceSide`]), and a graph's
//! shape checks, node code and output values.
//!
//! [`DeviceSide`]: crate::backends::common::DeviceSide

use super::Gen;
use crate::backends::common::{ix, v};
use crate::backends::cpu_elem::{epilogue_seg, lower_fexpr};
use crate::ir::{DType, FExpr, NodeId, Op};
use crate::memplan::Home;
use crate::prims::{convert, literal, storage_type, CallCx};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

impl Gen<'_> {
    /// The code of node `id` on its backend, with the transfer it needs (mixed models), or
    /// [`Gen::node_code`].
    fn placed_code(&mut self, id: NodeId) -> TokenStream {
        let Some(mut m) = self.mixed.take() else {
            return self.node_code(id);
        };
        let code = if m.placed().on_cuda[id] {
            let dest = m.placed().download(id).then(|| self.dest(id));
            m.device_node(id, dest)
        } else if matches!(self.g.nodes[id].op, Op::Const(_)) && !m.placed().host_const(id) {
            // a constant only device ops read: made there
            m.after_host(id)
        } else {
            let mut c = self.node_code(id);
            c.extend(m.after_host(id));
            c
        };
        self.mixed = Some(m);
        code
    }

    /// How a run-time error of node `id` names where it happened: the op, its operands (inputs
    /// and params by name) and the value it computes, for `mithril::rt::Error::at` in the
    /// generated code.
    fn what(&self, id: NodeId) -> String {
        let n = &self.g.nodes[id];
        let name = match &n.op {
            Op::Prim(p) | Op::Fused(FExpr::Op(p, ..)) => p.name(),
            Op::FusedMatmul { .. } => "matmul",
            Op::Const(_) => "const",
            _ => "elementwise",
        };
        let args: Vec<String> = n.args.iter().map(|&a| self.value_desc(a)).collect();
        let mut s = if args.is_empty() {
            format!("`{name}`")
        } else {
            format!("`{name}` of {}", args.join(", "))
        };
        if let Some(l) = n.label.as_deref().filter(|l| !l.starts_with('#')) {
            if l.contains('`') {
                s += &format!(" for {l}");
            } else {
                s += &format!(" for `{l}`");
            }
        }
        if !n.scope.is_empty() {
            s += &format!(" in `{}`", n.scope);
        }
        s
    }

    /// An operand as a user would name it: `input ids`, `param fc1.weight`, a named value.
    fn value_desc(&self, id: NodeId) -> String {
        let n = &self.g.nodes[id];
        match &n.op {
            Op::Input(i) => format!("input `{}`", self.g.inputs[*i].name),
            Op::Param(i) => format!("param `{}`", self.g.params[*i].path.join(".")),
            Op::Seed(i) => format!("the gradient of output `{}`", self.g.outputs[*i].name),
            Op::Boundary(_) => self.value_desc(n.args[0]),
            _ => {
                let own = match n.label.as_deref().filter(|l| !l.starts_with('#')) {
                    Some(l) if l.contains('`') => l.to_string(),
                    Some(l) => format!("`{l}`"),
                    None => "an intermediate value".to_string(),
                };
                let from = self.inputs_behind(id);
                if from.is_empty() {
                    own
                } else {
                    format!("{own} (from input {})", from.join(", "))
                }
            }
        }
    }

    /// The model inputs a computed value derives from (`ids` behind `where_(ids == -100, 0,
    /// ids)`), so an error in an op over it names the input the user passed. Looks at most 64
    /// nodes back.
    fn inputs_behind(&self, id: NodeId) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![id];
        let mut names = Vec::new();
        while let Some(k) = stack.pop() {
            if !seen.insert(k) || seen.len() > 64 {
                continue;
            }
            let n = &self.g.nodes[k];
            match &n.op {
                Op::Input(i) => {
                    let name = format!("`{}`", self.g.inputs[*i].name);
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                Op::Param(_) | Op::Seed(_) | Op::Const(_) => {}
                _ => stack.extend(n.args.iter().copied()),
            }
        }
        names
    }

    /// `.map_err(..)` adding the model and [`Gen::what`] of node `id` to an op's error.
    fn ctx(&self, id: NodeId) -> TokenStream {
        let model = self.inp.name.to_string();
        let what = self.what(id);
        quote!(.map_err(|__e| __e.at(#model, #what)))
    }

    /// The destination tokens of a computed node.
    fn dest(&self, id: NodeId) -> TokenStream {
        match self.plan.home[id] {
            Home::Slot { slot, .. } => quote!(::mithril::rt::Dest::Slot(__w, #slot)),
            _ => {
                let o = format_ident!("o{}", id);
                quote!(::mithril::rt::Dest::Owned(&mut #o))
            }
        }
    }

    fn elementwise(&mut self, id: NodeId, expr: &FExpr, args: &[NodeId]) -> TokenStream {
        let out_dt = self.api.dtype(id);
        let arg_dts: Vec<DType> = args.iter().map(|&a| self.api.dtype(a)).collect();
        let (body, body_dt) = lower_fexpr(expr, &arg_dts);
        let body = convert(body, body_dt, out_dt);
        let out_ty = storage_type(out_dt);
        let vid = v(id);
        let ctx = self.ctx(id);
        let label = self.g.nodes[id]
            .label
            .clone()
            .unwrap_or_else(|| match expr {
                FExpr::Op(p, ..) => p.name().to_string(),
                _ => "elementwise".into(),
            });
        let params: Vec<TokenStream> = args
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let n = format_ident!("a{}", i);
                let t = self.api.elem_ty(a);
                quote!(#n: #t)
            })
            .collect();
        let views: Vec<TokenStream> = args
            .iter()
            .map(|&a| {
                let va = v(a);
                quote!(&#va.view())
            })
            .collect();
        let ops = quote!(::mithril::rt::ops);
        let dest = self.dest(id);
        if let Home::Slot {
            inplace: Some(pos), ..
        } = self.plan.home[id]
        {
            // write over the dead argument `pos`: it goes first, the closure takes it first
            let target = v(args[pos]);
            let mut order = vec![pos];
            order.extend((0..args.len()).filter(|&i| i != pos));
            let ps: Vec<&TokenStream> = order.iter().map(|&i| &params[i]).collect();
            let others: Vec<&TokenStream> = order[1..].iter().map(|&i| &views[i]).collect();
            return match args.len() {
                1 => quote! {
                    let #vid = #ops::map1_inplace(#target, |#(#ps),*| -> #out_ty { <#out_ty as ::mithril::rt::Elem>::from_acc(#body) });
                },
                k @ 2..=5 => {
                    let f = format_ident!("map{}_inplace", k);
                    quote! {
                        let #vid = #ops::#f(#label, #target, #(#others),*, |#(#ps),*| -> #out_ty { <#out_ty as ::mithril::rt::Elem>::from_acc(#body) }) #ctx ?;
                    }
                }
                _ => {
                    self.api.errors.push(syn::Error::new(
                        self.g.nodes[id].span,
                        "internal: fused group with more than 5 inputs",
                    ));
                    quote!()
                }
            };
        }
        match args.len() {
            0 => quote! {
                let #vid = {
                    let mut __v = #dest.get("const", &[]) #ctx ?;
                    __v.fill(<#out_ty as ::mithril::rt::Elem>::from_acc(#body));
                    __v
                };
            },
            1 => quote! {
                let #vid = #ops::map1_to(#(#views),*, #dest, |#(#params),*| -> #out_ty { <#out_ty as ::mithril::rt::Elem>::from_acc(#body) }) #ctx ?;
            },
            k @ 2..=5 => {
                let f = format_ident!("map{}_to", k);
                quote! {
                    let #vid = #ops::#f(#label, #(#views),*, #dest, |#(#params),*| -> #out_ty { <#out_ty as ::mithril::rt::Elem>::from_acc(#body) }) #ctx ?;
                }
            }
            _ => {
                self.api.errors.push(syn::Error::new(
                    self.g.nodes[id].span,
                    "internal: fused group with more than 5 inputs",
                ));
                quote!()
            }
        }
    }

    /// A matmul with its elementwise epilogue: `expr`'s `Arg(0)` is the product, `Arg(i)` is
    /// `args[i + 1]`.
    fn fused_matmul(
        &mut self,
        id: NodeId,
        ta: bool,
        tb: bool,
        expr: &FExpr,
        args: &[NodeId],
    ) -> TokenStream {
        let t = self.api.dtype(id);
        let other_dts: Vec<DType> = args[2..].iter().map(|&a| self.api.dtype(a)).collect();
        let seg = epilogue_seg(t, expr, &other_dts);
        let vid = v(id);
        let (a, b) = (v(args[0]), v(args[1]));
        let others: Vec<TokenStream> = args[2..]
            .iter()
            .map(|&x| {
                let vx = v(x);
                quote!(&#vx.view())
            })
            .collect();
        let dest = self.dest(id);
        let ctx = self.ctx(id);
        quote! {
            let #vid = ::mithril::rt::ops::matmul_epi_to(
                &#a.view(), &#b.view(), #ta, #tb, [#(#others),*], #dest, #seg,
            ) #ctx ?;
        }
    }

    fn node_code(&mut self, id: NodeId) -> TokenStream {
        let n = &self.g.nodes[id];
        let vid = v(id);
        match &n.op {
            Op::Input(i) => {
                let name = format_ident!("{}", self.g.inputs[*i].name);
                quote!(let #vid = inputs.#name.view().into_dyn();)
            }
            // (rejected for mixed models by `backends::generate`)
            Op::Mode => quote!(compile_error!("internal: `is_training` in a mixed model");),
            Op::Param(i) => {
                let fields = self.g.params[*i]
                    .path
                    .iter()
                    .map(|p| format_ident!("{}", p));
                quote!(let #vid = params.#(#fields).*.view().into_dyn();)
            }
            Op::Const(s) => {
                let t = self.api.dtype(id);
                let ty = storage_type(t);
                let lit = literal(*s, t);
                let dest = self.dest(id);
                let ctx = self.ctx(id);
                quote! {
                    let #vid = {
                        let mut __v = #dest.get("const", &[]) #ctx ?;
                        __v.fill(<#ty as ::mithril::rt::Elem>::from_acc(#lit));
                        __v
                    };
                }
            }
            Op::Fused(e) => {
                let (e, args) = (e.clone(), n.args.clone());
                self.elementwise(id, &e, &args)
            }
            Op::FusedMatmul { ta, tb, expr } => {
                let (ta, tb, expr, args) = (*ta, *tb, expr.clone(), n.args.clone());
                self.fused_matmul(id, ta, tb, &expr, &args)
            }
            Op::Prim(p) if p.is_elementwise() => {
                let args = n.args.clone();
                let arg_dts: Vec<DType> = args.iter().map(|&a| self.api.dtype(a)).collect();
                let out = self.api.dtype(id);
                let compute = p.compute_dtype(&arg_dts, out);
                let e = FExpr::Op(
                    p.clone(),
                    (0..args.len()).map(FExpr::Arg).collect(),
                    out,
                    compute,
                );
                self.elementwise(id, &e, &args)
            }
            Op::Prim(p) => {
                let args: Vec<TokenStream> = n
                    .args
                    .iter()
                    .map(|&a| {
                        let va = v(a);
                        quote!(#va.view())
                    })
                    .collect();
                let dts: Vec<DType> = n.args.iter().map(|&a| self.api.dtype(a)).collect();
                let out = self.api.elem_ty(id);
                let dest = self.dest(id);
                let at = self.ctx(id);
                let api = &self.api;
                let dim = |d: &crate::ir::Dim| api.dim_expr(d);
                let shape = self.g.shape_of(id);
                let cx = CallCx {
                    a: &args,
                    in_dt: &dts,
                    out_rust: &out,
                    d: &dest,
                    at: &at,
                    shape: shape.as_ref(),
                    dim: &dim,
                };
                match p.call(&cx) {
                    Ok(val) => quote!(let #vid = #val;),
                    Err(e) => {
                        self.api.errors.push(syn::Error::new(n.span, e));
                        quote!()
                    }
                }
            }
            Op::Boundary(_) => {
                let a = v(n.args[0]);
                quote!(let #vid = #a.view();)
            }
            Op::Seed(i) => {
                let name = format_ident!("{}", self.g.outputs[*i].name);
                quote!(let #vid = output_grads.#name.view().into_dyn();)
            }
        }
    }

    /// Shape checks, node code and output values of the graph's evaluate function.
    pub(super) fn body_parts(
        &mut self,
    ) -> (
        Vec<TokenStream>,
        Vec<TokenStream>,
        Vec<(String, TokenStream)>,
    ) {
        let g = self.g;
        let mut checks = Vec::new();
        for i in &g.inputs {
            let f = format_ident!("{}", i.name);
            checks.push(self.api.check(
                i.node,
                &format!("input `{}`", i.name),
                quote!(inputs.#f.shape()),
            ));
        }
        for p in &g.params {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            checks.push(self.api.check(
                p.node,
                &format!("param `{}`", p.dotted()),
                quote!(params.#(#fields).*.shape()),
            ));
        }
        for (id, n) in g.nodes.iter().enumerate() {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                checks.push(self.api.check(
                    id,
                    &format!("output gradient `{}`", g.outputs[i].name),
                    quote!(output_grads.#f.shape()),
                ));
            }
        }
        let mut body = Vec::new();
        // owned results of the output nodes (the arena never holds what is returned)
        for (id, h) in self.plan.home.iter().enumerate() {
            if *h == Home::Output {
                let o = format_ident!("o{}", id);
                let t = self.api.elem_ty(id);
                body.push(quote!(let mut #o: ::std::option::Option<::mithril::ndarray::ArrayD<#t>> = ::std::option::Option::None;));
            }
        }
        for id in 0..g.nodes.len() {
            body.push(self.placed_code(id));
        }
        let mut outs = Vec::new();
        for (k, o) in g.outputs.iter().enumerate() {
            let vid = v(o.node);
            let d = ix(self.api.rank(o.node));
            let later = g.outputs[k + 1..].iter().any(|x| x.node == o.node);
            let oname = o.name.clone();
            let val = if self.plan.home[o.node] == Home::Output {
                let on = format_ident!("o{}", o.node);
                let get = if later {
                    quote!(#on.clone())
                } else {
                    quote!(#on.take())
                };
                quote!(#get.ok_or_else(|| ::mithril::rt::Error::op(#oname, "internal: output not computed"))?)
            } else {
                quote!(#vid.to_owned())
            };
            outs.push((
                o.name.clone(),
                quote!(#val.into_dimensionality::<#d>().map_err(|e| ::mithril::rt::Error::op(#oname, e.to_string()))?),
            ));
        }
        (checks, body, outs)
    }
}
