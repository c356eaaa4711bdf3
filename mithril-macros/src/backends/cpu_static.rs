//! Step 6, the `static_shapes: true` variant of `evaluate`: every dim is a constant of the
//! generated code and every value a contiguous slice (`mithril::rt::fixed`).
//!
//! [`evaluate_body`] lowers a forward graph made of inputs, params, constants, elementwise
//! groups and 2-D matmuls (plain or with a fused epilogue): shape checks compare with constant
//! arrays, inputs and params are read as slices, intermediate values are slices of the planned
//! arena (the same slots, lifetimes and in-place reuse as the generic path), each elementwise
//! group calls one `ew` driver whose broadcast pattern (`Src`) is decided here, and each matmul
//! calls the packed GEMM with constant `m`, `n`, `k` and strides. A graph with any other op
//! keeps the generic path; [`evaluate_body`] says which op stopped it, for the summary.
//!
//! Run-time control flow becomes structured Rust around the same per-node code, never
//! unrolled (the generated code's size is independent of the trip count):
//! - a node under a run-time `if`'s guard is `let vN = if __bG { .. } else { &mut [] };` (only
//!   the taken branch runs; the other leaves an empty slice no one reads), a `phi` borrows the
//!   value of the branch that ran, and a guard is a `bool` `__bG` read from its scalar;
//! - a run-time loop (`while`, `for t in 0..T`, a scan) is a Rust `loop { .. }` holding its
//!   body: the carries are slices of their planned slots made before the loop, `loop_test` is
//!   `if !__bC { break; }` plus the `max_steps` check (an `Err`, never a hang), and `loop_end`
//!   writes each update into its carry's slot, fetched again from the arena
//!   ([`mithril::rt::Workspace::carry_into`]: nothing is copied for an update computed in
//!   place; an update that may be another carry, a swap, is first copied into a workspace
//!   temporary, [`mithril::rt::Workspace::carry_temp`], with no allocation after the first
//!   call); a step read `x[(.., t)]` and a stacked write are `fixed::step_read` /
//!   `fixed::step_write`. In-place targets are reborrowed (`&mut *vA`), so a body's node may
//!   overwrite a value made before the loop once per iteration.

use crate::backends::api::TypedApi;
use crate::backends::common::v;
use crate::backends::cpu_elem::{epilogue_seg, lower_fexpr};
use crate::backends::cuda::flow::single_index;
use crate::ir::{rdim, DType, FExpr, Graph, NodeId, Op, RDim};
use crate::memplan::{self, Home};
use crate::prims::{convert, literal, norm_axis, storage_type, Prim};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

/// How one elementwise argument of shape `arg` is read at the flat index of an output of shape
/// `out` (both static, `arg` broadcastable to `out`): the `ew::Src` tokens, or `None` when the
/// broadcast is not one tile pattern.
fn src_tokens(arg: &[usize], out: &[usize], val: &TokenStream) -> Option<TokenStream> {
    let src = quote!(::mithril::rt::fixed::Src);
    if arg == out {
        return Some(quote!(#src::Full(#val)));
    }
    let n_arg: usize = arg.iter().product();
    if n_arg == 1 {
        return Some(quote!(#src::Scalar(#val[0])));
    }
    if arg.len() > out.len() {
        return None;
    }
    // right-align, then classify each output axis of extent > 1: E (read), B (broadcast)
    let pad = out.len() - arg.len();
    let mut flags = Vec::new();
    for (ax, &o) in out.iter().enumerate() {
        let a = if ax < pad { 1 } else { arg[ax - pad] };
        if o == 1 {
            continue;
        }
        if a == o {
            flags.push((true, o));
        } else if a == 1 {
            flags.push((false, o));
        } else {
            return None;
        }
    }
    // pattern: B* E* B* E* — leading broadcasts cycle (`% len`), then one tile
    let mut i = 0;
    while i < flags.len() && !flags[i].0 {
        i += 1;
    }
    while i < flags.len() && flags[i].0 {
        i += 1;
    }
    let mut rep = 1usize;
    while i < flags.len() && !flags[i].0 {
        rep *= flags[i].1;
        i += 1;
    }
    let mut inner = 1usize;
    while i < flags.len() && flags[i].0 {
        inner *= flags[i].1;
        i += 1;
    }
    if i != flags.len() {
        return None;
    }
    Some(match (inner, rep) {
        (1, 1) => quote!(#src::Row(#val)),
        (1, rep) => quote!(#src::Col(#val, #rep)),
        (inner, rep) => quote!(#src::Tile { data: #val, inner: #inner, rep: #rep }),
    })
}

/// Element strides `(rs, cs)` of a contiguous tensor of shape `arg` broadcast to `[m, n]`.
fn bcast_2d(arg: &[usize], m: usize, n: usize) -> Option<(usize, usize)> {
    let (r, c) = match arg {
        [] => (1, 1),
        [c] => (1, *c),
        [r, c] => (*r, *c),
        _ => return None,
    };
    let ok = |a: usize, o: usize| a == o || a == 1;
    if !ok(r, m) || !ok(c, n) {
        return None;
    }
    let cs = usize::from(c != 1 || n == 1);
    let rs = if r == 1 && m != 1 { 0 } else { c };
    Some((rs, if c == 1 { 0 } else { cs }))
}

/// The constant dims of node `id`, or why it has none.
fn static_dims(g: &Graph, id: NodeId) -> Result<Vec<usize>, String> {
    let r = g
        .rdims(id)
        .ok_or_else(|| format!("`{}` has an open rank", g.describe(id)))?;
    r.iter()
        .map(|d| match d {
            RDim::Known(n) => Ok(*n as usize),
            _ => Err(format!(
                "`{}` has a dim not known at compile time",
                g.describe(id)
            )),
        })
        .collect()
}

/// The body of a static `evaluate`, or the reason the graph keeps the generic path.
pub fn evaluate_body(
    api: &TypedApi<'_>,
    plan: &memplan::Plan,
    outputs_name: &proc_macro2::Ident,
) -> Result<TokenStream, String> {
    let g = api.graph();
    let mut lo = Lowering {
        api,
        plan,
        g,
        model: api.model_name(),
        checks: Vec::new(),
        pre: Vec::new(),
        binds: Vec::new(),
        body: Vec::new(),
        need_bool: bools_needed(g),
        carry_temps: 0,
    };
    let body = lo.emit_range(0, g.nodes.len())?;
    let (outs, fields) = lo.outputs()?;
    let Lowering {
        checks,
        pre,
        binds,
        model,
        ..
    } = lo;
    Ok(quote! {
        #(#checks)*
        // the planned arena; a concurrent call on the same model gets an unplanned one
        let mut __guard;
        let mut __tmp;
        let __ws: &mut ::mithril::rt::Workspace = match self.__ws.try_lock() {
            ::std::result::Result::Ok(g) => {
                __guard = g;
                &mut *__guard
            }
            ::std::result::Result::Err(_) => {
                __tmp = ::mithril::rt::Workspace::new(Self::__MITHRIL_LIFE_EVAL, false, ::std::option::Option::None);
                &mut __tmp
            }
        };
        __ws.begin(&[]);
        #(#pre)*
        let __result = {
            let __w: &::mithril::rt::Workspace = &*__ws;
            #(#binds)*
            #(#body)*
            #(#outs)*
            #outputs_name { #(#fields),* }
        };
        __ws.finish(#model)?;
        Ok(__result)
    })
}

/// The static lowering of one forward graph: its shape checks, the declarations before the
/// arena is borrowed (`pre`), and the node code.
struct Lowering<'g, 'a> {
    api: &'g TypedApi<'a>,
    /// Where every node's value lives (the generic path's plan).
    plan: &'g memplan::Plan,
    g: &'a Graph,
    model: String,
    checks: Vec<TokenStream>,
    pre: Vec<TokenStream>,
    /// The inputs and params as slices, bound before the body (a loop's body reads them too).
    binds: Vec<TokenStream>,
    /// The code of the node being lowered.
    body: Vec<TokenStream>,
    /// The scalar `bool`s also held as a Rust `bool` (`__bN`): guards, phi guards, loop
    /// conditions.
    need_bool: Vec<bool>,
    /// The workspace temporaries the loops' swaps use so far (`Workspace::carry_temp`).
    carry_temps: usize,
}

/// The `bool` of node `id` (a guard or a loop condition).
fn hb(id: NodeId) -> Ident {
    format_ident!("__b{}", id)
}

/// The nodes whose scalar `bool` the generated code branches on.
fn bools_needed(g: &Graph) -> Vec<bool> {
    let mut need = vec![false; g.nodes.len()];
    for n in &g.nodes {
        if let Some(gd) = n.guard {
            need[gd] = true;
        }
        match n.op {
            Op::Prim(Prim::Phi) => need[n.args[0]] = true,
            Op::Prim(Prim::LoopTest { .. }) => need[n.args[1]] = true,
            _ => {}
        }
    }
    need
}

/// `(outer, len, inner)` of static `shape` around `axis` (negative: from the end).
fn axis_split(shape: &[usize], axis: i64) -> Result<(usize, usize, usize), String> {
    let ax = norm_axis(axis, shape.len())
        .ok_or_else(|| format!("axis {axis} out of range for rank {}", shape.len()))?;
    Ok((
        shape[..ax].iter().product(),
        shape[ax],
        shape[ax + 1..].iter().product(),
    ))
}

impl Lowering<'_, '_> {
    /// The code of nodes `lo..hi`: a run-time loop as a Rust `loop` around its body, a node
    /// under a guard as an `if`.
    fn emit_range(&mut self, lo: NodeId, hi: NodeId) -> Result<Vec<TokenStream>, String> {
        let g = self.g;
        let mut out = Vec::new();
        let mut id = lo;
        while id < hi {
            let n = &g.nodes[id];
            if matches!(n.op, Op::Input(_) | Op::Param(_)) {
                // bound before everything
                self.node(id)?;
                let code = std::mem::take(&mut self.body);
                self.binds.extend(code);
                if self.need_bool[id] {
                    let (vid, b) = (v(id), hb(id));
                    self.binds.push(quote!(let #b: bool = #vid[0];));
                }
                id += 1;
                continue;
            }
            if !matches!(n.op, Op::Prim(Prim::LoopHead)) {
                out.push(self.node_code(id)?);
                id += 1;
                continue;
            }
            let end = (id + 1..hi)
                .find(|&e| {
                    matches!(g.nodes[e].op, Op::Prim(Prim::LoopEnd)) && g.nodes[e].args[0] == id
                })
                .ok_or("internal: a run-time loop without its end")?;
            let inner = self.emit_range(id + 1, end)?;
            let fin = self.loop_end(end)?;
            let counted = (id + 1..end).any(|t| {
                matches!(
                    g.nodes[t].op,
                    Op::Prim(Prim::LoopTest {
                        max_steps: Some(_),
                        ..
                    })
                ) && g.nodes[t].args[0] == id
            });
            let nh = format_ident!("__n{}", id);
            let count = counted.then(|| quote!(let mut #nh: u64 = 0;));
            let lp = quote! {
                #count
                loop {
                    #(#inner)*
                    #fin
                }
            };
            out.push(match n.guard {
                Some(gd) => {
                    let gb = hb(gd);
                    quote!(if #gb { #lp })
                }
                None => lp,
            });
            id = end + 1;
        }
        Ok(out)
    }

    /// The code of node `id` outside the loop structure, under its guard, with its `bool`.
    fn node_code(&mut self, id: NodeId) -> Result<TokenStream, String> {
        let g = self.g;
        let n = &g.nodes[id];
        if (n.guard.is_some() || n.region.is_some()) && self.plan.home[id] == Home::Output {
            return Err("an output computed inside a run-time branch or loop".into());
        }
        self.node(id)?;
        let code = std::mem::take(&mut self.body);
        let vid = v(id);
        let structural = matches!(
            n.op,
            Op::Prim(Prim::LoopHead | Prim::LoopTest { .. } | Prim::LoopNext | Prim::LoopEnd)
        );
        let mut code = quote!(#(#code)*);
        if let (Some(gd), false) = (n.guard, structural) {
            let t = storage_type(self.api.dtype(id));
            let gb = hb(gd);
            code = if shared_view(&n.op) {
                quote!(let #vid: &[#t] = if #gb { #code #vid } else { &[] };)
            } else {
                quote!(let #vid: &mut [#t] = if #gb { #code #vid } else { &mut [] };)
            };
        }
        if self.need_bool[id] {
            let b = hb(id);
            code.extend(match n.guard {
                Some(gd) => {
                    let gb = hb(gd);
                    quote!(let #b: bool = if #gb { #vid[0] } else { false };)
                }
                None => quote!(let #b: bool = #vid[0];),
            });
        }
        Ok(code)
    }

    /// `loop_end`: each update written into its carry's slot for the next iteration (an update
    /// that may be another carry's value, a swap, is read before any carry is written).
    fn loop_end(&mut self, end: NodeId) -> Result<TokenStream, String> {
        let g = self.g;
        let head = g.nodes[end].args[0];
        let carries = &g.nodes[head].args;
        let mut takes = Vec::new();
        let mut sets = Vec::new();
        for (k, &nx) in g.nodes[end].args[2..].iter().enumerate() {
            let [c, u] = g.nodes[nx].args[..] else {
                return Err("internal: a loop_next without its two operands".into());
            };
            let src = self.resolve(u);
            if src == c {
                continue;
            }
            let Home::Slot { slot, .. } = self.plan.home[c] else {
                return Err("a loop variable outside the memory plan".into());
            };
            let t = storage_type(self.api.dtype(c));
            let label = format!("loop variable `{}`", g.describe(c));
            let vs = v(src);
            let from = if self.may_be_other_carry(src, c, carries) {
                // copied into a workspace temporary kept between iterations: no allocation
                let tmp = format_ident!("__next{}", k);
                let kk = self.carry_temps;
                self.carry_temps += 1;
                takes.push(quote!(let #tmp: &[#t] = __w.carry_temp::<#t>(#label, #kk, &#vs[..])?;));
                quote!(#tmp)
            } else {
                quote!(&#vs[..])
            };
            sets.push(quote!(__w.carry_into::<#t>(#label, #slot, #from)?;));
        }
        Ok(quote!(#(#takes)* #(#sets)*))
    }

    /// The node whose variable holds `id`'s value (through views of one operand).
    fn resolve(&self, mut id: NodeId) -> NodeId {
        loop {
            let n = &self.g.nodes[id];
            id = match n.op {
                Op::Boundary(_) | Op::Prim(Prim::Truth) => n.args[0],
                Op::Prim(Prim::LoopNext | Prim::LoopExit) => n.args[1],
                _ => return id,
            };
        }
    }

    /// Value `src` may be (a view of) a carry in `carries` other than `c`.
    fn may_be_other_carry(&self, src: NodeId, c: NodeId, carries: &[NodeId]) -> bool {
        let n = &self.g.nodes[src];
        match n.op {
            Op::Prim(Prim::Phi) => n.args[2..]
                .iter()
                .any(|&a| self.may_be_other_carry(self.resolve(a), c, carries)),
            _ => src != c && carries.contains(&src),
        }
    }

    /// Where node `id`'s computed value is written: a `&mut [T]` expression.
    fn dest(&self, id: NodeId, t: &TokenStream, len: usize, label: &str) -> TokenStream {
        match self.plan.home[id] {
            Home::Slot { slot, .. } => quote!(__w.slice::<#t>(#label, #slot, #len)?),
            _ => {
                let o = format_ident!("o{}", id);
                quote!({ #o = ::std::vec![<#t as ::std::default::Default>::default(); #len]; &mut #o[..] })
            }
        }
    }

    /// The code of node `id`, or the reason the graph keeps the generic path.
    fn node(&mut self, id: NodeId) -> Result<(), String> {
        let (g, api) = (self.g, self.api);
        let n = &g.nodes[id];
        let vid = v(id);
        let t = storage_type(api.dtype(id));
        let shape = static_dims(g, id)?;
        let len: usize = shape.iter().product();
        let label = n.label.clone().unwrap_or_else(|| match &n.op {
            Op::Prim(p) => p.name().to_string(),
            Op::Fused(FExpr::Op(p, ..)) => p.name().to_string(),
            _ => "value".into(),
        });
        if self.plan.home[id] == Home::Output {
            let o = format_ident!("o{}", id);
            self.pre.push(quote!(let mut #o: ::std::vec::Vec<#t>;));
        }
        let model = &self.model;
        match &n.op {
            Op::Prim(Prim::LoopHead | Prim::LoopNext | Prim::LoopEnd) => {}
            Op::Prim(Prim::LoopTest { max_steps, tape }) => {
                if *tape != 0 {
                    return Err("a taped run-time loop".into());
                }
                let (h, cond) = (n.args[0], n.args[1]);
                let cb = hb(cond);
                let nh = format_ident!("__n{}", h);
                let max = max_steps.map(|m| {
                    quote! {
                        ::mithril::rt::fixed::check_max_steps(#nh, #m, #model)?;
                        #nh += 1;
                    }
                });
                self.body.push(quote! {
                    if !#cb {
                        break;
                    }
                    #max
                });
            }
            Op::Prim(Prim::Truth | Prim::LoopExit) | Op::Boundary(_) => {
                let a = v(self.resolve(id));
                self.body.push(quote!(let #vid: &[#t] = &#a[..];));
            }
            Op::Prim(Prim::Phi) => {
                let gt = hb(n.args[0]);
                let (a, b) = (v(self.resolve(n.args[2])), v(self.resolve(n.args[3])));
                self.body
                    .push(quote!(let #vid: &[#t] = if #gt { &#a[..] } else { &#b[..] };));
            }
            Op::Prim(Prim::Carry) => {
                let d = self.dest(id, &t, len, "loop variable");
                let init = match n.args.first() {
                    Some(&a) => {
                        let va = v(a);
                        quote!(#vid.copy_from_slice(&#va[..]);)
                    }
                    None => quote!(#vid.fill(<#t as ::std::default::Default>::default());),
                };
                self.body.push(quote! {
                    let #vid: &mut [#t] = #d;
                    #init
                });
            }
            Op::Prim(Prim::DimValue(d)) => {
                let RDim::Known(k) = rdim(&g.env.dim(d)) else {
                    return Err("the bound of a run-time `for` is not known at compile time".into());
                };
                let k = k as i64;
                let dst = self.dest(id, &t, len, "dim_value");
                self.body.push(quote! {
                    let #vid: &mut [#t] = #dst;
                    #vid.fill(#k);
                });
            }
            Op::Prim(Prim::Gather(axis))
                if static_dims(g, n.args[1]).is_ok_and(|d| d.is_empty())
                    && matches!(api.dtype(n.args[1]), DType::I32 | DType::I64) =>
            {
                // a step read `x[(.., t)]` at a run-time index
                let (outer, l, inner) = axis_split(&static_dims(g, n.args[0])?, *axis)?;
                let (x, i) = (v(n.args[0]), v(n.args[1]));
                let dst = self.dest(id, &t, len, "gather");
                self.body.push(quote! {
                    let #vid: &mut [#t] = #dst;
                    ::mithril::rt::fixed::step_read("gather", &#x[..], #outer, #l, #inner, ::std::primitive::i64::from(#i[0]), &mut #vid[..])?;
                });
            }
            Op::Prim(Prim::Slice(sa)) if single_index(sa).is_some() => {
                // `x[(.., k)]`: one index on one axis, every other axis whole
                let Some((axis, k)) = single_index(sa) else {
                    return Err("internal: a slice that is not one index".into());
                };
                let (outer, l, inner) = axis_split(&static_dims(g, n.args[0])?, axis)?;
                let k = if k < 0 { k + l as i64 } else { k };
                if k < 0 || k >= l as i64 {
                    return Err("a slice index out of range".into());
                }
                let x = v(n.args[0]);
                let dst = self.dest(id, &t, len, "slice");
                self.body.push(quote! {
                    let #vid: &mut [#t] = #dst;
                    ::mithril::rt::fixed::step_read("slice", &#x[..], #outer, #l, #inner, #k, &mut #vid[..])?;
                });
            }
            Op::Prim(Prim::SetAt { axis, add, .. }) => {
                let [acc, val, i] = n.args[..] else {
                    return Err("internal: set_at without its three operands".into());
                };
                if api.dtype(val) != api.dtype(id)
                    || !matches!(api.dtype(i), DType::I32 | DType::I64)
                {
                    return Err("a `set_at` of another dtype".into());
                }
                let (outer, l, inner) = axis_split(&shape, *axis)?;
                let (va, vv, vi) = (v(acc), v(val), v(i));
                let head = match self.plan.home[id] {
                    Home::Slot {
                        inplace: Some(0), ..
                    } => quote!(let #vid: &mut [#t] = &mut *#va;),
                    _ => {
                        let dst = self.dest(id, &t, len, "set_at");
                        quote! {
                            let #vid: &mut [#t] = #dst;
                            #vid.copy_from_slice(&#va[..]);
                        }
                    }
                };
                self.body.push(quote! {
                    #head
                    ::mithril::rt::fixed::step_write("set_at", &mut #vid[..], #outer, #l, #inner, &#vv[..], ::std::primitive::i64::from(#vi[0]), #add)?;
                });
            }
            Op::Input(i) => {
                let name = &g.inputs[*i].name;
                let f = format_ident!("{}", name);
                let b = format_ident!("__b{}", id);
                let terminal = format!("input `{name}`");
                let expected = g.describe(id);
                self.checks.push(quote! {
                    ::mithril::rt::fixed::check(#model, #terminal, #expected, inputs.#f.shape(), &[#(#shape),*])?;
                });
                self.pre
                    .push(quote!(let mut #b: ::std::vec::Vec<#t> = ::std::vec::Vec::new();));
                self.body.push(quote!(let #vid: &[#t] = ::mithril::rt::fixed::contiguous(&inputs.#f, &mut #b);));
            }
            Op::Param(i) => {
                let p = &g.params[*i];
                let fields: Vec<_> = p.path.iter().map(|s| format_ident!("{}", s)).collect();
                let b = format_ident!("__b{}", id);
                let terminal = format!("param `{}`", p.dotted());
                let expected = g.describe(id);
                self.checks.push(quote! {
                    ::mithril::rt::fixed::check(#model, #terminal, #expected, params.#(#fields).*.shape(), &[#(#shape),*])?;
                });
                self.pre
                    .push(quote!(let mut #b: ::std::vec::Vec<#t> = ::std::vec::Vec::new();));
                self.body.push(quote!(let #vid: &[#t] = ::mithril::rt::fixed::contiguous(&params.#(#fields).*, &mut #b);));
            }
            Op::Const(s) => {
                let lit = literal(*s, api.dtype(id));
                let d = self.dest(id, &t, len, "const");
                self.body.push(quote! {
                    let #vid: &mut [#t] = #d;
                    #vid.fill(<#t as ::mithril::rt::Elem>::from_acc(#lit));
                });
            }
            Op::Fused(_) | Op::Prim(_) if is_elementwise(&n.op) => {
                self.elementwise(id, &t, &shape, &label)?;
            }
            Op::Prim(Prim::Matmul { ta, tb }) | Op::FusedMatmul { ta, tb, .. } => {
                self.matmul(id, *ta, *tb, &t, &shape, &label)?;
            }
            Op::Prim(p) => return Err(format!("`{}`", p.name())),
            Op::Fused(_) => return Err("an elementwise group".into()),
            Op::Seed(_) => return Err("an output gradient".into()),
            Op::Mode => return Err("it reads `is_training`".into()),
        }
        Ok(())
    }

    /// An elementwise group (or primitive): one `ew` driver call, in place over a dead operand
    /// when the plan says so.
    fn elementwise(
        &mut self,
        id: NodeId,
        t: &TokenStream,
        shape: &[usize],
        label: &str,
    ) -> Result<(), String> {
        let (g, api) = (self.g, self.api);
        let n = &g.nodes[id];
        let vid = v(id);
        let len: usize = shape.iter().product();
        let (expr, args) = match &n.op {
            Op::Fused(e) => (e.clone(), n.args.clone()),
            Op::Prim(p) => {
                let arg_dts: Vec<DType> = n.args.iter().map(|&a| api.dtype(a)).collect();
                let out = api.dtype(id);
                let compute = p.compute_dtype(&arg_dts, out);
                let e = FExpr::Op(
                    p.clone(),
                    (0..n.args.len()).map(FExpr::Arg).collect(),
                    out,
                    compute,
                );
                (e, n.args.clone())
            }
            _ => return Err("internal: an elementwise step over a non-elementwise node".into()),
        };
        if args.is_empty() || args.len() > 5 {
            return Err(format!("an elementwise group with {} inputs", args.len()));
        }
        let out_dt = api.dtype(id);
        let arg_dts: Vec<DType> = args.iter().map(|&a| api.dtype(a)).collect();
        let (fbody, body_dt) = lower_fexpr(&expr, &arg_dts);
        let fbody = convert(fbody, body_dt, out_dt);
        let params: Vec<TokenStream> = args
            .iter()
            .enumerate()
            .map(|(i, &a)| {
                let p = format_ident!("a{}", i);
                let ty = storage_type(api.dtype(a));
                quote!(#p: #ty)
            })
            .collect();
        let mut srcs = Vec::new();
        for &a in &args {
            let va = v(a);
            let s = src_tokens(&static_dims(g, a)?, shape, &quote!(&#va[..]))
                .ok_or_else(|| format!("`{}` broadcast to `{}`", g.describe(a), g.describe(id)))?;
            srcs.push(s);
        }
        let f = quote!(|#(#params),*| -> #t { <#t as ::mithril::rt::Elem>::from_acc(#fbody) });
        if let Home::Slot {
            inplace: Some(pos), ..
        } = self.plan.home[id]
        {
            // the dead argument `pos` is overwritten: it goes first
            let target = v(args[pos]);
            let mut order = vec![pos];
            order.extend((0..args.len()).filter(|&i| i != pos));
            let ps: Vec<&TokenStream> = order.iter().map(|&i| &params[i]).collect();
            let others: Vec<&TokenStream> = order[1..].iter().map(|&i| &srcs[i]).collect();
            let drv = format_ident!("map{}_inplace", args.len());
            // reborrowed: in a loop's body the target may be made before the loop
            self.body.push(quote! {
                let #vid: &mut [#t] = &mut *#target;
                ::mithril::rt::fixed::ew::#drv(&mut #vid[..], #(#others,)* |#(#ps),*| -> #t { <#t as ::mithril::rt::Elem>::from_acc(#fbody) });
            });
        } else {
            let drv = format_ident!("map{}", args.len());
            let d = self.dest(id, t, len, label);
            self.body.push(quote! {
                let #vid: &mut [#t] = #d;
                ::mithril::rt::fixed::ew::#drv(#(#srcs,)* &mut #vid[..], #f);
            });
        }
        Ok(())
    }

    /// A 2-D matmul (plain or with its fused epilogue): one packed GEMM call with constant
    /// `m`, `n`, `k`.
    fn matmul(
        &mut self,
        id: NodeId,
        ta: bool,
        tb: bool,
        t: &TokenStream,
        shape: &[usize],
        label: &str,
    ) -> Result<(), String> {
        let (g, api) = (self.g, self.api);
        let n = &g.nodes[id];
        let vid = v(id);
        let len: usize = shape.iter().product();
        let dt = api.dtype(id);
        if !matches!(dt, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            return Err(format!("a {dt:?} matmul"));
        }
        let (sa, sb) = (static_dims(g, n.args[0])?, static_dims(g, n.args[1])?);
        let two = |s: &[usize]| -> Result<[usize; 2], String> {
            <[usize; 2]>::try_from(s).map_err(|_| "a matmul that is not 2-D".to_string())
        };
        let ([m, nn], [ra, ca], [rb, cb]) = (two(shape)?, two(&sa)?, two(&sb)?);
        let k = if ta { ra } else { ca };
        let kb = if tb { cb } else { rb };
        if k != kb || (if ta { ca } else { ra }) != m || (if tb { rb } else { cb }) != nn {
            return Err("a matmul whose static dims disagree".into());
        }
        let (a, b) = (v(n.args[0]), v(n.args[1]));
        let d = self.dest(id, t, len, "matmul");
        match &n.op {
            Op::FusedMatmul { expr, .. } => {
                let other_dts: Vec<DType> = n.args[2..].iter().map(|&x| api.dtype(x)).collect();
                let seg = epilogue_seg(dt, expr, &other_dts);
                let mut others = Vec::new();
                for &x in &n.args[2..] {
                    let (rs, cs) = bcast_2d(&static_dims(g, x)?, m, nn)
                        .ok_or_else(|| format!("epilogue operand `{}`", g.describe(x)))?;
                    let vx = v(x);
                    others.push(quote!(::mithril::rt::fixed::Bcast { data: &#vx[..], rs: #rs, cs: #cs }));
                }
                self.body.push(quote! {
                    let #vid: &mut [#t] = #d;
                    ::mithril::rt::fixed::matmul(#label, #m, #nn, #k, &#a[..], #ta, &#b[..], #tb, [#(#others),*], &mut #vid[..], #seg)?;
                });
            }
            _ => self.body.push(quote! {
                let #vid: &mut [#t] = #d;
                ::mithril::rt::fixed::matmul_plain(#label, #m, #nn, #k, &#a[..], #ta, &#b[..], #tb, &mut #vid[..])?;
            }),
        }
        Ok(())
    }

    /// The outputs: owned vectors become the arrays; anything else is copied out. Returns the
    /// statements and the field names.
    fn outputs(&self) -> Result<(Vec<TokenStream>, Vec<Ident>), String> {
        let g = self.g;
        let mut outs = Vec::new();
        let mut fields = Vec::new();
        for (k, o) in g.outputs.iter().enumerate() {
            let shape = static_dims(g, o.node)?;
            if shape.len() > 6 {
                return Err(format!("output `{}` of rank {}", o.name, shape.len()));
            }
            let later = g.outputs[k + 1..].iter().any(|x| x.node == o.node);
            let data = if self.plan.home[o.node] == Home::Output {
                let on = format_ident!("o{}", o.node);
                if later {
                    quote!(#on.clone())
                } else {
                    quote!(#on)
                }
            } else {
                let vid = v(o.node);
                quote!(#vid.to_vec())
            };
            let name = &o.name;
            let f = format_ident!("{}", name);
            outs.push(quote! {
                let #f = ::mithril::ndarray::Array::from_shape_vec([#(#shape),*], #data)
                    .map_err(|e| ::mithril::rt::Error::op(#name, e.to_string()))?;
            });
            fields.push(f);
        }
        Ok((outs, fields))
    }
}

/// The node's variable is a shared view (`&[T]`) rather than memory it writes.
fn shared_view(op: &Op) -> bool {
    matches!(
        op,
        Op::Boundary(_) | Op::Prim(Prim::Truth | Prim::Phi | Prim::LoopExit)
    )
}

fn is_elementwise(op: &Op) -> bool {
    match op {
        Op::Fused(_) => true,
        Op::Prim(p) => p.is_elementwise(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(a: &[usize], o: &[usize]) -> Option<String> {
        src_tokens(a, o, &quote!(x)).map(|t| t.to_string().replace(' ', ""))
    }

    #[test]
    fn broadcast_patterns() {
        let src = "::mithril::rt::fixed::Src::";
        assert_eq!(s(&[4, 8], &[4, 8]).unwrap(), format!("{src}Full(x)"));
        assert_eq!(s(&[1], &[4, 8]).unwrap(), format!("{src}Scalar(x[0])"));
        // bias row
        assert_eq!(s(&[8], &[4, 8]).unwrap(), format!("{src}Row(x)"));
        assert_eq!(s(&[1, 8], &[4, 8]).unwrap(), format!("{src}Row(x)"));
        // per-row value
        assert_eq!(s(&[4, 1], &[4, 8]).unwrap(), format!("{src}Col(x,8usize)"));
        // [B, 1, W] over [B, H, W]
        assert_eq!(
            s(&[2, 1, 5], &[2, 3, 5]).unwrap(),
            format!("{src}Tile{{data:x,inner:5usize,rep:3usize}}")
        );
        // [1, H, 1] over [B, H, W]: leading broadcast cycles
        assert_eq!(
            s(&[3, 1], &[2, 3, 5]).unwrap(),
            format!("{src}Col(x,5usize)")
        );
        // two separate broadcast groups inside: not one tile
        assert!(s(&[2, 1, 3, 1], &[2, 4, 3, 5]).is_none());
        assert!(s(&[3], &[4, 8]).is_none());
    }

    #[test]
    fn epilogue_strides() {
        assert_eq!(bcast_2d(&[8], 4, 8), Some((0, 1)));
        assert_eq!(bcast_2d(&[4, 8], 4, 8), Some((8, 1)));
        assert_eq!(bcast_2d(&[4, 1], 4, 8), Some((1, 0)));
        assert_eq!(bcast_2d(&[], 4, 8), Some((0, 0)));
        assert_eq!(bcast_2d(&[1, 1], 4, 8), Some((0, 0)));
        assert_eq!(bcast_2d(&[3], 4, 8), None);
    }
}
