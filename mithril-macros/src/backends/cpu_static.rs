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

use crate::backends::api::TypedApi;
use crate::backends::common::v;
use crate::backends::cpu_elem::{epilogue_seg, lower_fexpr};
use crate::ir::{DType, FExpr, Graph, NodeId, Op, RDim};
use crate::memplan::{self, Home};
use crate::prims::{convert, literal, storage_type, Prim};
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
    let mut lo = Lowering {
        api,
        plan,
        g: api.graph(),
        model: api.model_name(),
        checks: Vec::new(),
        pre: Vec::new(),
        body: Vec::new(),
    };
    if lo.g.has_guards() {
        return Err("it has a run-time `if`".into());
    }
    if lo.g.has_loops() {
        return Err("it has a run-time loop".into());
    }
    for id in 0..lo.g.nodes.len() {
        lo.node(id)?;
    }
    let (outs, fields) = lo.outputs()?;
    let Lowering {
        checks,
        pre,
        body,
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
    body: Vec<TokenStream>,
}

impl Lowering<'_, '_> {
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
            Op::Boundary(_) => {
                let a = v(n.args[0]);
                self.body.push(quote!(let #vid = &#a[..];));
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
            self.body.push(quote! {
                let #vid: &mut [#t] = #target;
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
