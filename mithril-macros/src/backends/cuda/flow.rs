//! Run-time control flow on `backend: cuda`: the host drives the device kernels with
//! structured Rust around each node's generated code — no unrolling, the generated code's size
//! is independent of the trip count.
//!
//! - **A run-time `if`.** A node under a guard ([`crate::ir::Node::guard`]) is held as an
//!   `Option<DeviceTensor>`: `let vN = if __bG { Some(..) } else { None };`, so only the taken
//!   branch's kernels launch; a `phi` is a reference to the value of the branch that ran. The
//!   guard is a host `bool` `__bG`: read back from the device (one scalar copy, `flow::read_bool`)
//!   only when the device computed it; a guard the host knows (`is_training`, a constant, the
//!   negation or a `phi` of such) costs no transfer.
//! - **A run-time loop** (`while`, `for t in 0..T`): the carries are `let mut` device tensors
//!   before a Rust `loop { .. }` holding the body; `loop_test` is `if !__bC { break; }` (the
//!   condition read back each iteration unless host-known), the `max_steps` check (an `Err`,
//!   never a hang) and the trip count, and pushes a copy of each taped carry on the loop's tape
//!   (a `Vec<DeviceTensor>` on the device, for the reversed loop of `evaluate_gradients`, which
//!   `tape_read` indexes); `loop_end` moves (or copies) each update into its carry. A scan's
//!   stacked output is written in place (`flow::set_at_in`) when the carry is not read after the
//!   write.
//! - `is_training` is the call's `mode` (`__training`, a host `bool`); its seed for random ops is
//!   `__seed`.
//! - **Host scalars** ([`host_scalars`]): in a graph with a run-time loop, the integer and `bool`
//!   scalars the host can compute — constants, `dim_value`, `is_training`, elementwise ops of
//!   such, the carries whose initial value and update are such, their `phi`s, exits and tape
//!   reads — are plain host values `__bN` with no device tensor. A counted loop (`for t in 0..T`,
//!   a `while` over a counter it increments) so keeps its counter, its condition and its step
//!   index (`x[(.., t)]`, `stack ys[(.., t)]`, the reversed loop's tape reads) on the host:
//!   no device-to-host read per iteration. A device op reading a host scalar gets it uploaded
//!   (`exec::scalar`); a carry a device op reads stays on the device. The summary says, per
//!   loop, how many device values its body reads back.

use super::kernel_text::{axis_kernel, AxisKernel};
use super::{rt, Ctx, CudaGen};
use crate::backends::common::v;
use crate::backends::cpu_elem::lower_fexpr;
use crate::ir::{DType, FExpr, Graph, NodeId, Op, Scalar};
use crate::prims::{convert, literal, storage_type, Prim};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

fn flow() -> TokenStream {
    quote!(::mithril::rt::cuda::flow)
}

fn hb(id: NodeId) -> syn::Ident {
    format_ident!("__b{}", id)
}

/// `Not(#0)` as a fused group or a primitive.
fn is_not(op: &Op) -> bool {
    match op {
        Op::Prim(Prim::Not) => true,
        Op::Fused(FExpr::Op(Prim::Not, a, _, _)) => matches!(a[..], [FExpr::Arg(0)]),
        _ => false,
    }
}

impl<'a> CudaGen<'a> {
    /// Decide how each node of `cx`'s graph is held: aliases, optional (guarded) values, the
    /// values a `phi` borrows, and the scalar `bool`s also needed on the host.
    pub(super) fn prepare_flow(&self, cx: &mut Ctx<'a>) {
        let g = cx.g;
        for (id, n) in g.nodes.iter().enumerate() {
            cx.alias[id] = match &n.op {
                Op::Boundary(_) | Op::Prim(Prim::Truth) => n.args.first().copied(),
                Op::Prim(Prim::LoopNext | Prim::LoopExit) => n.args.get(1).copied(),
                Op::Prim(Prim::SetAt { .. }) if set_at_in_place(cx, id) => Some(n.args[0]),
                _ => None,
            };
            cx.opt[id] = n.guard.is_some()
                && cx.alias[id].is_none()
                && !matches!(n.op, Op::Input(_) | Op::Param(_) | Op::Seed(_));
        }
        let mut need = vec![false; g.nodes.len()];
        for (id, n) in g.nodes.iter().enumerate() {
            if let Some(gd) = n.guard {
                need[gd] = true;
            }
            match &n.op {
                Op::Prim(Prim::Phi) => {
                    need[n.args[0]] = true;
                    for k in [2, 3] {
                        let r = cx.resolve(n.args[k]);
                        cx.borrowed[r] = true;
                    }
                }
                Op::Prim(Prim::LoopTest { .. }) => need[n.args[1]] = true,
                _ => {}
            }
            let _ = id;
        }
        for id in (0..g.nodes.len()).rev() {
            if !need[id] {
                continue;
            }
            let n = &g.nodes[id];
            match &n.op {
                Op::Boundary(_) | Op::Prim(Prim::Truth) => need[n.args[0]] = true,
                Op::Prim(Prim::Phi) => {
                    for k in [0, 2, 3] {
                        need[n.args[k]] = true;
                    }
                }
                op if is_not(op) => need[n.args[0]] = true,
                _ => {}
            }
        }
        cx.host_bool = need;
        if !cx.dev_names && g.has_loops() {
            let (host, dev) = host_scalars(cx);
            cx.host = host;
            cx.host_dev = dev;
        }
    }

    /// A host index expression (`i64`) for the integer scalar node `a`: its host value, or a
    /// read back from the device (counted in `readbacks`).
    pub(super) fn host_index(&mut self, cx: &Ctx<'a>, a: NodeId, label: &str) -> TokenStream {
        if cx.host[a] {
            let b = hb(a);
            return quote!(::std::primitive::i64::from(#b));
        }
        if cx.host_read[a] {
            // read once at the start of the call (`body`)
            let h = quote::format_ident!("__h{}", a);
            return quote!(#h);
        }
        self.readbacks += 1;
        let f = flow();
        let r = cx.r(a);
        quote!(#f::read_index(#r, #label)?)
    }

    /// The code of a host scalar (`let __bN: T = ..;`, uploaded as `vN` too when a device op
    /// reads it).
    fn host_node(&mut self, cx: &mut Ctx<'a>, id: NodeId) -> TokenStream {
        let g = cx.g;
        let n = &g.nodes[id];
        let b = hb(id);
        let ty = cx.ty(id);
        let label = cx.label(id);
        let f = flow();
        let arg = |k: usize| hb(n.args[k]);
        let val = match &n.op {
            Op::Const(s) => {
                let lit = literal(*s, cx.dt(id));
                quote!(<#ty as ::mithril::rt::Elem>::from_acc(#lit))
            }
            Op::Mode => quote!(__training),
            Op::Prim(Prim::DimValue(d)) => match cx.gen.dim_expr(d) {
                Some(e) => quote!((#e) as #ty),
                None => {
                    self.node_error(
                        cx,
                        id,
                        "the bound of a run-time `for` is not known at run time".into(),
                    );
                    return quote!();
                }
            },
            Op::Boundary(_) | Op::Prim(Prim::Truth | Prim::Carry) => {
                let a = arg(0);
                quote!(#a)
            }
            Op::Prim(Prim::LoopNext | Prim::LoopExit) => {
                let a = arg(1);
                quote!(#a)
            }
            Op::Prim(Prim::Phi) => {
                let (gt, t, e) = (arg(0), arg(2), arg(3));
                quote!(if #gt { #t } else { #e })
            }
            Op::Prim(Prim::TapeRead(j)) => {
                let name = format_ident!("__tape{}_{}", n.args[0], j);
                let i = arg(1);
                quote!(#f::host_tape_at(&#name, ::std::primitive::i64::from(#i), #label)?)
            }
            op => {
                let expr = match op {
                    Op::Fused(e) => e.clone(),
                    Op::Prim(p) => {
                        let arg_dts: Vec<DType> = n.args.iter().map(|&a| cx.dt(a)).collect();
                        let out = cx.dt(id);
                        let compute = p.compute_dtype(&arg_dts, out);
                        FExpr::Op(
                            p.clone(),
                            (0..n.args.len()).map(FExpr::Arg).collect(),
                            out,
                            compute,
                        )
                    }
                    _ => {
                        self.node_error(cx, id, "internal: not a host scalar".into());
                        return quote!();
                    }
                };
                let arg_dts: Vec<DType> = n.args.iter().map(|&a| cx.dt(a)).collect();
                let (body, body_dt) = lower_fexpr(&expr, &arg_dts);
                let body = convert(body, body_dt, cx.dt(id));
                let lets = n.args.iter().enumerate().map(|(i, &a)| {
                    let ai = format_ident!("a{}", i);
                    let (ta, ba) = (cx.ty(a), hb(a));
                    quote!(let #ai: #ta = #ba;)
                });
                quote!({ #(#lets)* <#ty as ::mithril::rt::Elem>::from_acc(#body) })
            }
        };
        let val = match n.guard {
            Some(gd) => {
                let gb = hb(gd);
                quote!(if #gb { #val } else { <#ty as ::std::default::Default>::default() })
            }
            None => val,
        };
        let mut code = if matches!(n.op, Op::Prim(Prim::Carry)) {
            quote!(let mut #b: #ty = #val;)
        } else {
            quote!(let #b: #ty = #val;)
        };
        if cx.host_dev[id] {
            // a device op reads it too
            cx.owned[id] = true;
            let vid = v(id);
            let up = quote!(::mithril::rt::cuda::exec::scalar::<#ty>(__dev, #b)?);
            code.extend(match n.guard {
                Some(gd) => {
                    let gb = hb(gd);
                    quote!(let #vid: ::std::option::Option<::mithril::rt::cuda::DeviceTensor<#ty>> = if #gb { ::std::option::Option::Some(#up) } else { ::std::option::Option::None };)
                }
                None => quote!(let #vid: ::mithril::rt::cuda::DeviceTensor<#ty> = #up;),
            });
        }
        code
    }

    /// The code of nodes `lo..hi`, a run-time loop as a Rust `loop` around its body.
    pub(super) fn emit_range(
        &mut self,
        cx: &mut Ctx<'a>,
        lo: NodeId,
        hi: NodeId,
    ) -> Vec<TokenStream> {
        let g = cx.g;
        let mut out = Vec::new();
        let mut id = lo;
        while id < hi {
            if matches!(g.nodes[id].op, Op::Input(_) | Op::Param(_) | Op::Seed(_)) {
                // bound before everything (`body`)
                id += 1;
                continue;
            }
            if !matches!(g.nodes[id].op, Op::Prim(Prim::LoopHead)) {
                out.push(self.node_code(cx, id));
                id += 1;
                continue;
            }
            let end = (id + 1..hi).find(|&e| {
                matches!(g.nodes[e].op, Op::Prim(Prim::LoopEnd)) && g.nodes[e].args[0] == id
            });
            let Some(end) = end else {
                self.errors
                    .push(g.error_at(id, "internal: a run-time loop without its end"));
                return out;
            };
            let mut tapes = Vec::new();
            for t in id + 1..end {
                if let (Op::Prim(Prim::LoopTest { tape, .. }), [h, _]) =
                    (&g.nodes[t].op, &g.nodes[t].args[..])
                {
                    if *h != id {
                        continue;
                    }
                    for (j, &c) in g.nodes[id].args.iter().enumerate() {
                        if j < 64 && tape & (1u64 << j) != 0 {
                            let name = format_ident!("__tape{}_{}", t, j);
                            let ty = cx.ty(c);
                            tapes.push(if cx.host[c] {
                                quote!(let mut #name: ::std::vec::Vec<#ty> = ::std::vec::Vec::new();)
                            } else {
                                quote!(let mut #name: ::std::vec::Vec<::mithril::rt::cuda::DeviceTensor<#ty>> = ::std::vec::Vec::new();)
                            });
                        }
                    }
                }
            }
            let before = self.readbacks;
            let inner = self.emit_range(cx, id + 1, end);
            let fin = self.loop_end(cx, end);
            self.loop_note(cx, id, self.readbacks - before);
            let nh = format_ident!("__n{}", id);
            out.push(quote! {
                let mut #nh: u64 = 0;
                #(#tapes)*
                loop {
                    #(#inner)*
                    #fin
                }
            });
            id = end + 1;
        }
        out
    }

    /// `loop_end`: each update becomes its carry's value for the next iteration (all updates
    /// taken before any carry is assigned: a swap reads the old values).
    fn loop_end(&mut self, cx: &Ctx<'a>, end: NodeId) -> TokenStream {
        let g = cx.g;
        let c = rt();
        let head = g.nodes[end].args[0];
        let nexts = &g.nodes[end].args[2..];
        let pairs: Vec<(NodeId, NodeId)> = nexts
            .iter()
            .map(|&nx| (g.nodes[nx].args[0], cx.resolve(g.nodes[nx].args[1])))
            .collect();
        let mut takes = Vec::new();
        let mut sets = Vec::new();
        for (k, (&nx, &(carry, u))) in nexts.iter().zip(&pairs).enumerate() {
            if cx.host[carry] {
                // a host scalar: the update's host value
                let (tmp, bc, bn) = (format_ident!("__hnext{}", k), hb(carry), hb(nx));
                takes.push(quote!(let #tmp = #bn;));
                sets.push(quote!(#bc = #tmp;));
                continue;
            }
            if u == carry {
                continue;
            }
            let tmp = format_ident!("__next{}", k);
            let shared = pairs.iter().filter(|p| p.1 == u).count() > 1;
            let take = if !shared
                && cx.owned[u]
                && !cx.opt[u]
                && !cx.borrowed[u]
                && !cx.is_output[u]
                && g.nodes[u].region == Some(head)
            {
                let vu = v(u);
                quote!(#vu)
            } else {
                let ru = cx.r(u);
                quote!(#c::exec::copy(__dev, #ru)?)
            };
            takes.push(quote!(let #tmp = #take;));
            let vc = v(carry);
            sets.push(quote!(#vc = #tmp;));
        }
        quote!(#(#takes)* #(#sets)*)
    }

    /// The host `bool` of node `id` (`__bN`), when it is needed: from the host where it is
    /// known there, else read back from the device.
    fn host_bool(&mut self, cx: &Ctx<'a>, id: NodeId) -> TokenStream {
        if !cx.host_bool[id] || cx.host[id] {
            return quote!();
        }
        let g = cx.g;
        let n = &g.nodes[id];
        let f = flow();
        let b = hb(id);
        let val = match &n.op {
            Op::Const(Scalar::Bool(x)) => quote!(#x),
            Op::Mode => quote!(__training),
            Op::Boundary(_) | Op::Prim(Prim::Truth) => {
                let a = hb(n.args[0]);
                quote!(#a)
            }
            Op::Prim(Prim::Phi) => {
                let (gt, t, e) = (hb(n.args[0]), hb(n.args[2]), hb(n.args[3]));
                quote!(if #gt { #t } else { #e })
            }
            op if is_not(op) => {
                let a = hb(n.args[0]);
                quote!(!#a)
            }
            _ => {
                self.readbacks += 1;
                let r = cx.r(id);
                let label = cx.label(id);
                quote!(#f::read_bool(#r, #label)?)
            }
        };
        match n.guard {
            Some(gd) => {
                let gb = hb(gd);
                quote!(let #b: bool = if #gb { #val } else { false };)
            }
            None => quote!(let #b: bool = #val;),
        }
    }

    /// The code of one node outside the loop structure (`let vN = ...;` and its host `bool`).
    pub(super) fn node_code(&mut self, cx: &mut Ctx<'a>, id: NodeId) -> TokenStream {
        if cx.host[id] {
            return self.host_node(cx, id);
        }
        let g = cx.g;
        let vid = v(id);
        let n = &g.nodes[id];
        let c = rt();
        let f = flow();
        let ty = cx.ty(id);
        let label = cx.label(id);
        let code = match &n.op {
            Op::Input(i) => {
                let fi = format_ident!("{}", g.inputs[*i].name);
                quote!(let #vid = inputs.#fi;)
            }
            Op::Param(i) => {
                let fields = g.params[*i].path.iter().map(|p| format_ident!("{}", p));
                quote!(let #vid = &params.#(#fields).*;)
            }
            Op::Seed(i) => {
                let fi = format_ident!("{}", g.outputs[*i].name);
                quote!(let #vid = &output_grads.#fi;)
            }
            Op::Prim(Prim::SetAt { axis, .. }) if cx.alias[id].is_some() => {
                // in place over the carry it updates
                match self.set_at_launch(cx, id, *axis) {
                    Ok((f_get, vi, v_ref)) => {
                        let acc = v(n.args[0]);
                        quote! {
                            {
                                #f_get
                                let __i = #vi;
                                #f::set_at_in(__dev, &__f, #label, &mut #acc, #v_ref, #axis, __i)?;
                            }
                        }
                    }
                    Err(why) => {
                        self.node_error(cx, id, why);
                        quote!()
                    }
                }
            }
            _ if cx.alias[id].is_some() => quote!(),
            Op::Prim(Prim::Phi) => {
                let (gt, t, e) = (hb(n.args[0]), cx.r(n.args[2]), cx.r(n.args[3]));
                let val = quote!(if #gt { #t } else { #e });
                match n.guard {
                    Some(gd) => {
                        let gb = hb(gd);
                        quote!(let #vid: ::std::option::Option<&::mithril::rt::cuda::DeviceTensor<#ty>> = if #gb { ::std::option::Option::Some(#val) } else { ::std::option::Option::None };)
                    }
                    None => quote!(let #vid: &::mithril::rt::cuda::DeviceTensor<#ty> = #val;),
                }
            }
            Op::Prim(Prim::Carry) => {
                cx.owned[id] = true;
                let init = match n.args.first() {
                    Some(&a) if cx.movable(a, id) => {
                        let va = v(a);
                        Ok(quote!(#va))
                    }
                    Some(&a) => {
                        let ra = cx.r(a);
                        Ok(quote!(#c::exec::copy(__dev, #ra)?))
                    }
                    None => self.zeros(cx, id),
                };
                match init {
                    Ok(init) => {
                        quote!(let mut #vid: ::mithril::rt::cuda::DeviceTensor<#ty> = #init;)
                    }
                    Err(why) => {
                        self.node_error(cx, id, why);
                        quote!()
                    }
                }
            }
            Op::Prim(Prim::LoopTest { max_steps, tape }) => {
                let (h, cond) = (n.args[0], n.args[1]);
                let nh = format_ident!("__n{}", h);
                let cb = hb(cond);
                let model = self.inp.name.to_string();
                let max = max_steps.map(|m| quote!(#f::check_max_steps(#nh, #m, #model)?;));
                let mut pushes = Vec::new();
                for (j, &cj) in g.nodes[h].args.iter().enumerate() {
                    if j < 64 && tape & (1u64 << j) != 0 {
                        let name = format_ident!("__tape{}_{}", id, j);
                        if cx.host[cj] {
                            let b = hb(cj);
                            pushes.push(quote!(#name.push(#b);));
                            continue;
                        }
                        let r = cx.r(cj);
                        pushes.push(quote!(#name.push(#c::exec::copy(__dev, #r)?);));
                    }
                }
                quote! {
                    if !#cb {
                        break;
                    }
                    #max
                    #nh += 1;
                    #(#pushes)*
                }
            }
            Op::Prim(Prim::TapeRead(j)) => {
                let (test, i) = (n.args[0], n.args[1]);
                let name = format_ident!("__tape{}_{}", test, j);
                let at = self.host_index(cx, i, &label);
                quote!(let #vid: &::mithril::rt::cuda::DeviceTensor<#ty> = #f::tape_at(&#name, #at, #label)?;)
            }
            Op::Prim(Prim::LoopHead | Prim::LoopEnd) => quote!(),
            _ => match self.node(cx, id) {
                Ok(Some(val)) => {
                    cx.owned[id] = true;
                    match n.guard {
                        Some(gd) => {
                            let gb = hb(gd);
                            quote!(let #vid: ::std::option::Option<::mithril::rt::cuda::DeviceTensor<#ty>> = if #gb { ::std::option::Option::Some(#val) } else { ::std::option::Option::None };)
                        }
                        None => quote!(let #vid: ::mithril::rt::cuda::DeviceTensor<#ty> = #val;),
                    }
                }
                Ok(None) => quote!(),
                Err(why) => {
                    self.node_error(cx, id, why);
                    quote!()
                }
            },
        };
        let hbool = self.host_bool(cx, id);
        quote!(#code #hbool)
    }

    /// The summary line of the run-time loop headed by `head`: how many device values its body
    /// reads back to the host (`reads`, nested loops included).
    fn loop_note(&mut self, cx: &Ctx<'a>, head: NodeId, reads: usize) {
        let g = cx.g;
        let which = if cx.prefix == "f" {
            "evaluate"
        } else {
            "evaluate_gradients"
        };
        let counter = g.nodes[head].args.first().copied();
        // `for t`, a `while` (its counter starts at a constant), or a reversed loop of
        // `evaluate_gradients` (its counter starts at the forward loop's trip count - 1)
        let name = match counter.map(|c| (&g.nodes[c].label, &g.nodes[c].args[..])) {
            Some((Some(l), _)) => format!("`for {l}`"),
            Some((None, [a])) if !matches!(g.nodes[*a].op, Op::Const(_)) => "reversed".into(),
            _ => "`while`".into(),
        };
        let on_host = counter.is_some_and(|c| cx.host[c]);
        let line = match (reads, on_host) {
            (0, true) => format!("cuda {which}: run-time loop {name} (%{head}): counter, condition and step indices on the host, no device-to-host read per iteration\n"),
            (0, false) => format!("cuda {which}: run-time loop {name} (%{head}): no device-to-host read per iteration\n"),
            (k, h) => format!(
                "cuda {which}: run-time loop {name} (%{head}): {k} device-to-host read(s) in its body (a device-computed condition or index){}\n",
                if h { "; its counter on the host" } else { "" }
            ),
        };
        self.loop_notes.push(line);
    }

    /// A compile error for node `id`, which `backend: cuda` cannot lower (`why`).
    fn node_error(&mut self, cx: &Ctx<'a>, id: NodeId, why: String) {
        let g = cx.g;
        let what = super::p_name(&g.nodes[id].op);
        let model = self.inp.name.to_string();
        let supported = super::SUPPORTED;
        self.errors.push(g.error_at(
            id,
            format!(
                "`{model}` has `backend: cuda`, which cannot lower this `{what}` yet: {why}\nlowered on cuda: {supported}"
            ),
        ));
    }

    /// Zeros of node `id`'s shape (a scan's stacked output before its first step).
    fn zeros(&self, cx: &Ctx<'a>, id: NodeId) -> Result<TokenStream, String> {
        let dims = cx.dims(id)?;
        let mut ds = Vec::new();
        for d in &dims {
            let e = cx
                .gen
                .dim_expr(d)
                .ok_or("the stacked output of a run-time `for`: a dim is not known at run time")?;
            ds.push(quote!((#e) as usize));
        }
        let ty = cx.ty(id);
        Ok(quote!(::mithril::rt::cuda::DeviceTensor::<#ty>::zeros(__dev, &[#(#ds),*])?))
    }

    /// A generated indexing kernel of the module for node `id` (entry `<prefix><id>_ax`).
    fn add_axis_kernel(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        kind: AxisKernel,
    ) -> Result<String, String> {
        let name = format!("{}{id}_ax", cx.prefix);
        let mut k = format!("// {} = {}\n", name, cx.label(id));
        k.push_str(&axis_kernel(&name, kind, cx.dt(id))?);
        self.kernels.push(k);
        self.entries.push(name.clone());
        Ok(name)
    }

    /// The parts of a `set_at` launch: `(let __f = kernel, the host index, &value)`.
    fn set_at_launch(
        &mut self,
        cx: &Ctx<'a>,
        id: NodeId,
        _axis: i64,
    ) -> Result<(TokenStream, TokenStream, TokenStream), String> {
        let n = &cx.g.nodes[id];
        let Op::Prim(Prim::SetAt { add, .. }) = n.op else {
            return Err("internal: not a set_at".into());
        };
        if cx.dt(n.args[1]) != cx.dt(id) {
            return Err("set_at of a value of another dtype".into());
        }
        let name = self.add_axis_kernel(cx, id, AxisKernel::Write { add })?;
        let label = cx.label(id);
        let at = self.host_index(cx, n.args[2], &label);
        let rv = cx.r(n.args[1]);
        Ok((quote!(let __f = self.__k.get(__dev, #name)?;), at, rv))
    }

    /// The value of the primitives of run-time loops that compute one (`None`: the family's
    /// lowering): `dim_value`, `set_at` (on a copy), `gather` at a scalar index (a step read).
    pub(super) fn flow_node(
        &mut self,
        cx: &Ctx<'a>,
        id: NodeId,
    ) -> Result<Option<TokenStream>, String> {
        let n = &cx.g.nodes[id];
        let Op::Prim(p) = &n.op else {
            return Ok(None);
        };
        let c = rt();
        let f = flow();
        let label = cx.label(id);
        Ok(Some(match p {
            Prim::DimValue(d) => {
                let e = cx
                    .gen
                    .dim_expr(d)
                    .ok_or("the bound of a run-time `for` is not known at run time")?;
                quote!(#c::exec::scalar::<i64>(__dev, (#e) as i64)?)
            }
            Prim::SetAt { axis, .. } => {
                let (f_get, vi, v_ref) = self.set_at_launch(cx, id, *axis)?;
                let ra = cx.r(n.args[0]);
                quote!({
                    #f_get
                    let __i = #vi;
                    #f::set_at(__dev, &__f, #label, #ra, #v_ref, #axis, __i)?
                })
            }
            Prim::Gather(axis) if cx.dims(n.args[1]).is_ok_and(|d| d.is_empty()) => {
                if !matches!(cx.dt(n.args[1]), DType::I32 | DType::I64) {
                    return Err("gather: the index must be an integer".into());
                }
                let name = self.add_axis_kernel(cx, id, AxisKernel::Read)?;
                let rx = cx.r(n.args[0]);
                let at = self.host_index(cx, n.args[1], &label);
                let ty = storage_type(cx.dt(id));
                quote!({
                    let __f = self.__k.get(__dev, #name)?;
                    let __i = #at;
                    #f::gather_at::<#ty>(__dev, &__f, #label, #rx, #axis, __i)?
                })
            }
            Prim::Slice(sa) if single_index(sa).is_some() => {
                // `x[(.., k)]`: one integer index, every other axis whole
                let Some((axis, k)) = single_index(sa) else {
                    return Ok(None);
                };
                let name = self.add_axis_kernel(cx, id, AxisKernel::Read)?;
                let rx = cx.r(n.args[0]);
                let ty = storage_type(cx.dt(id));
                quote!({
                    let __f = self.__k.get(__dev, #name)?;
                    #f::gather_at::<#ty>(__dev, &__f, #label, #rx, #axis, #k)?
                })
            }
            Prim::SliceGrad(sa) if single_index(sa).is_some() => {
                // its gradient: zeros of the input's shape with the slice written at `k`
                let Some((axis, k)) = single_index(sa) else {
                    return Ok(None);
                };
                let name = self.add_axis_kernel(cx, id, AxisKernel::Write { add: false })?;
                let (rg, rl) = (cx.r(n.args[0]), cx.r(n.args[1]));
                let ty = storage_type(cx.dt(id));
                quote!({
                    let __f = self.__k.get(__dev, #name)?;
                    let mut __o = ::mithril::rt::cuda::DeviceTensor::<#ty>::zeros(__dev, #rl.shape())?;
                    #f::set_at_in::<#ty>(__dev, &__f, #label, &mut __o, #rg, #axis, #k)?;
                    __o
                })
            }
            Prim::LoopHead
            | Prim::LoopTest { .. }
            | Prim::LoopEnd
            | Prim::LoopNext
            | Prim::LoopExit
            | Prim::Carry
            | Prim::Phi
            | Prim::Truth
            | Prim::TapeRead(_) => {
                return Err("internal: a control-flow node outside its structure".into())
            }
            _ => return Ok(None),
        }))
    }
}

/// The integer and `bool` scalars of `cx`'s graph the host computes (see the module docs), and
/// which of them a device op reads too (`(host, uploaded)`). Optimistic, then demoted to a
/// fixpoint: a candidate leaves when an operand it needs on the host is not a host scalar, or
/// when a device op reads it and it cannot be uploaded where it is computed (a carry, an alias).
pub(super) fn host_scalars(cx: &Ctx) -> (Vec<bool>, Vec<bool>) {
    let g = cx.g;
    let n = g.nodes.len();
    let mut next_of = vec![None; n];
    for (id, nd) in g.nodes.iter().enumerate() {
        if matches!(nd.op, Op::Prim(Prim::LoopNext)) {
            next_of[nd.args[0]] = Some(id);
        }
    }
    let scalar = |id: NodeId| {
        matches!(cx.dt(id), DType::I64 | DType::I32 | DType::Bool)
            && cx.dims(id).is_ok_and(|d| d.is_empty())
    };
    let mut host: Vec<bool> = (0..n)
        .map(|id| {
            let nd = &g.nodes[id];
            scalar(id)
                && match &nd.op {
                    Op::Const(_) | Op::Mode | Op::Boundary(_) | Op::Fused(_) => true,
                    Op::Prim(Prim::DimValue(d)) => cx.gen.dim_expr(d).is_some(),
                    Op::Prim(
                        Prim::Truth
                        | Prim::Phi
                        | Prim::LoopNext
                        | Prim::LoopExit
                        | Prim::TapeRead(_),
                    ) => true,
                    Op::Prim(Prim::Carry) => nd.args.len() == 1 && next_of[id].is_some(),
                    Op::Prim(p) => p.is_elementwise() && !nd.args.is_empty(),
                    _ => false,
                }
        })
        .collect();
    loop {
        let dev = device_reads(g, cx, &host);
        let mut changed = false;
        for id in 0..n {
            if !host[id] {
                continue;
            }
            let nd = &g.nodes[id];
            let h = |k: usize| host[nd.args[k]];
            let ok = match &nd.op {
                Op::Const(_) | Op::Mode | Op::Prim(Prim::DimValue(_)) => true,
                Op::Boundary(_) | Op::Prim(Prim::Truth) => h(0) && !dev[id],
                Op::Prim(Prim::Phi) => h(2) && h(3) && !dev[id],
                Op::Prim(Prim::LoopNext) => h(0) && h(1) && !dev[id],
                Op::Prim(Prim::LoopExit) => h(1) && !dev[id],
                Op::Prim(Prim::Carry) => h(0) && next_of[id].is_some_and(|x| host[x]) && !dev[id],
                Op::Prim(Prim::TapeRead(j)) => {
                    let head = g.nodes[nd.args[0]].args[0];
                    g.nodes[head].args.get(*j).is_some_and(|&c| host[c])
                }
                _ => nd.args.iter().all(|&a| host[a]),
            };
            if !ok {
                host[id] = false;
                changed = true;
            }
        }
        if !changed {
            let up = (0..n).map(|id| host[id] && dev[id]).collect();
            return (host, up);
        }
    }
}

/// The nodes a device op (or an output) reads as a device tensor, given the host scalars.
fn device_reads(g: &Graph, cx: &Ctx, host: &[bool]) -> Vec<bool> {
    let mut dev = vec![false; g.nodes.len()];
    for o in &g.outputs {
        dev[o.node] = true;
    }
    for (u, nd) in g.nodes.iter().enumerate() {
        if host[u] {
            continue;
        }
        for (k, &a) in nd.args.iter().enumerate() {
            // the operands read on the host: loop structure, guards, step indices
            let on_host = match &nd.op {
                Op::Prim(Prim::LoopHead | Prim::LoopEnd | Prim::LoopTest { .. }) => true,
                Op::Prim(Prim::Phi) => k < 2,
                Op::Prim(Prim::TapeRead(_)) => true,
                Op::Prim(Prim::LoopExit) => k == 0,
                Op::Prim(Prim::SetAt { .. }) => k == 2,
                Op::Prim(Prim::Gather(_)) => k == 1 && cx.dims(a).is_ok_and(|d| d.is_empty()),
                _ => false,
            };
            if !on_host {
                dev[a] = true;
            }
        }
    }
    dev
}

/// A `set_at` that writes in place into the loop carry it updates: its accumulator is a carry
/// of the loop whose body holds it, read after it only by the `loop_next` taking its result
/// (and the loop's exits).
fn set_at_in_place(cx: &Ctx, id: NodeId) -> bool {
    let g = cx.g;
    let n = &g.nodes[id];
    let acc = n.args[0];
    if n.guard.is_some() || g.nodes[acc].guard.is_some() || n.args[1] == acc {
        return false;
    }
    if !matches!(g.nodes[acc].op, Op::Prim(Prim::Carry)) {
        return false;
    }
    let Some(h) = n.region else {
        return false;
    };
    if !g.nodes[h].args.contains(&acc) {
        return false;
    }
    g.nodes.iter().enumerate().skip(id + 1).all(|(u, un)| {
        if !un.args.contains(&acc) {
            return true;
        }
        let _ = u;
        match un.op {
            Op::Prim(Prim::LoopNext) => un.args[1] == id,
            Op::Prim(Prim::LoopExit) => true,
            _ => false,
        }
    })
}

/// A slice that is one integer index on one axis (every other axis whole, no new axis):
/// `(axis, index)`.
pub(crate) fn single_index(sa: &[crate::prims::SliceArg]) -> Option<(i64, i64)> {
    use crate::prims::SliceArg;
    let mut found = None;
    for (a, s) in sa.iter().enumerate() {
        match s {
            SliceArg::Range(None, None, 1) => {}
            SliceArg::Index(k) if found.is_none() => found = Some((a as i64, *k)),
            _ => return None,
        }
    }
    found
}
