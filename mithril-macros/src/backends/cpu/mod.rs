//! Step 6: code generation. Turns an optimized [`Graph`] into the typed Rust API of a physical
//! model: `M`, `MInputs<'a>`, `MOutputs`, `MParams` (a tree mirroring the model's instances),
//! `new`, `randomize_params`, `evaluate`, and the introspection consts.
//!
//! Every value is a local `vN` (one name source, so hygiene never bites). Elementwise groups
//! become one `mithril::rt::ops::mapK` loop with the fused scalar expression inlined; other
//! primitives call `mithril::rt::ops`.

use crate::backends::common::{camel, ix, v, CodegenInput, Tree};
use crate::ir::{rdim, DType, Dim, FExpr, Graph, NodeId, Op, RDim};
use crate::memplan::{self, Home};
use crate::prims::{convert, literal, storage_type, Prim};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::collections::BTreeMap;
use syn::Ident;

mod plan;
mod typed_api;

pub struct Gen<'a> {
    g: &'a Graph,
    /// The forward+backward graph, when gradients are generated.
    pub train: Option<&'a Graph>,
    inp: &'a CodegenInput<'a>,
    pub(crate) errors: Vec<syn::Error>,
    /// Runtime expressions for dynamic dims (dim variable id -> `inputs.x.shape()[k]`).
    dim_src: BTreeMap<u32, TokenStream>,
    /// The same in plan text (`in<view>:<axis>`, `ib<view>:<from the end>`).
    plan_dim_src: BTreeMap<u32, String>,
    /// Where every node's value lives.
    pub plan: memplan::Plan,
    /// A mixed model (`backend_map`): the device side of this graph (see [`Gen::place`]).
    pub(crate) mixed: Option<Box<crate::backends::cuda::Mixed<'a>>>,
    /// Nested struct layouts already emitted (layout -> struct name), for sharing.
    layouts: std::cell::RefCell<BTreeMap<String, Ident>>,
    /// Struct aliases emitted (alias -> the struct it names).
    alias_of: std::cell::RefCell<BTreeMap<String, String>>,
    /// Whether the top-level `Grads` struct may be an alias of `Params` (the CPU generator's
    /// typed API; set by `generate`).
    top_alias: std::cell::Cell<bool>,
    /// Whether it is.
    grads_aliased: std::cell::Cell<bool>,
    /// The `M` line and input/param shape checks of the first plan generated for this model
    /// (`evaluate`'s), emitted once as `__MITHRIL_TERMINALS` and shared by the other plan.
    pub(crate) shared_terms: Option<(String, String)>,
    /// Per param, its position in the structs' visit order (the plan's view order).
    leaf_pos: Vec<usize>,
}

impl<'a> Gen<'a> {
    pub fn new(g: &'a Graph, inp: &'a CodegenInput<'a>) -> Self {
        let mut dim_src = BTreeMap::new();
        let mut plan_dim_src = BTreeMap::new();
        for (view, i) in g.inputs.iter().enumerate() {
            if let Some(s) = g.shape_of(i.node) {
                let name = format_ident!("{}", i.name);
                let n = s.dims.len();
                for (k, d) in s.dims.iter().enumerate() {
                    if let Dim::Var(var) = g.env.dim(d) {
                        let pe = if s.rest.is_some() {
                            format!("ib{view}:{}", n - k)
                        } else {
                            format!("in{view}:{k}")
                        };
                        plan_dim_src.entry(var).or_insert(pe);
                        let e = if s.rest.is_some() {
                            let back = n - k;
                            quote!({ let __s = inputs.#name.shape(); __s[__s.len() - #back] })
                        } else {
                            quote!(inputs.#name.shape()[#k])
                        };
                        dim_src.entry(var).or_insert(e);
                    }
                }
            }
        }
        Gen {
            g,
            train: None,
            inp,
            errors: Vec::new(),
            dim_src,
            plan_dim_src,
            plan: memplan::plan(g, inp.planning),
            mixed: None,
            layouts: Default::default(),
            alias_of: Default::default(),
            top_alias: Default::default(),
            shared_terms: None,
            grads_aliased: Default::default(),
            leaf_pos: {
                let mut tree = Tree::default();
                for (i, p) in g.params.iter().enumerate() {
                    tree.insert(&p.path, i);
                }
                let mut pos = vec![0; g.params.len()];
                for (k, i) in Self::leaf_order(&tree).into_iter().enumerate() {
                    pos[i] = k;
                }
                pos
            },
        }
    }

    /// Mixed models (`backend_map` with ops on cuda): place this graph's nodes on their
    /// backends (`forward`: the graph of `evaluate`), plan the host memory of what lives on the
    /// host, and lower the device nodes with `codegen_cuda`. A no-op for other models.
    pub fn place(&mut self, forward: bool) {
        let Some(opts) = self.inp.cuda else { return };
        if !self.g.placement.is_mixed() {
            return;
        }
        let m = crate::backends::cuda::Mixed::new(self.g, self.inp, opts, forward);
        self.plan = memplan::plan_placed(self.g, self.inp.planning, Some(&m.placed));
        self.mixed = Some(Box::new(m));
    }

    /// The code of node `id` on its backend, with the transfer it needs (mixed models), or
    /// [`Gen::node_code`].
    fn placed_code(&mut self, id: NodeId) -> TokenStream {
        let Some(mut m) = self.mixed.take() else {
            return self.node_code(id);
        };
        let code = if m.placed.on_cuda[id] {
            let dest = m.placed.download(id).then(|| self.dest(id));
            m.device_node(id, dest)
        } else if matches!(self.g.nodes[id].op, Op::Const(_)) && !m.placed.host_const(id) {
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

    /// The guard that caps a call's GEMM threads (`optimize_for: throughput`).
    fn threads_guard(&self) -> TokenStream {
        match self.inp.optimize_for {
            crate::options::OptimizeFor::Throughput => {
                quote!(let __mithril_threads = ::mithril::rt::threads::limit_call_threads(1);)
            }
            crate::options::OptimizeFor::Latency => quote!(),
        }
    }

    /// The destination tokens of a computed node.
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

    fn dest(&self, id: NodeId) -> TokenStream {
        match self.plan.home[id] {
            Home::Slot { slot, .. } => quote!(::mithril::rt::Dest::Slot(__w, #slot)),
            _ => {
                let o = format_ident!("o{}", id);
                quote!(::mithril::rt::Dest::Owned(&mut #o))
            }
        }
    }

    /// The graph being generated.
    pub(crate) fn graph(&self) -> &'a Graph {
        self.g
    }

    /// The physical model's name, as a string.
    pub(crate) fn model_name(&self) -> String {
        self.inp.name.to_string()
    }

    pub(crate) fn dtype(&self, id: NodeId) -> DType {
        self.g.dtype_of(id).unwrap_or(DType::F32)
    }

    fn sym_slot(&self, name: &str) -> usize {
        self.g.syms.iter().position(|s| s == name).unwrap_or(0)
    }

    /// A runtime `usize` expression for a dim, or `None` when it cannot be computed.
    pub(crate) fn dim_expr(&self, d: &Dim) -> Option<TokenStream> {
        match self.g.env.dim(d) {
            Dim::Known(n) => {
                let n = n as usize;
                Some(quote!(#n))
            }
            Dim::Sym(s) => {
                let slot = self.sym_slot(&s);
                Some(quote!(__env.value(#slot)?))
            }
            Dim::Var(v) => self.dim_src.get(&v).cloned(),
            Dim::Prod(c, atoms) => {
                let c = c as usize;
                let parts: Option<Vec<TokenStream>> =
                    atoms.iter().map(|a| self.dim_expr(a)).collect();
                let parts = parts?;
                Some(quote!((#c #(* #parts)*)))
            }
        }
    }

    pub(crate) fn rank(&self, id: NodeId) -> Option<usize> {
        let s = self.g.shape_of(id)?;
        s.rest.is_none().then_some(s.dims.len())
    }

    pub(crate) fn elem_ty(&self, id: NodeId) -> TokenStream {
        storage_type(self.dtype(id))
    }

    pub(crate) fn array_ty(&self, id: NodeId) -> TokenStream {
        let t = self.elem_ty(id);
        let d = ix(self.rank(id));
        quote!(::mithril::ndarray::Array<#t, #d>)
    }

    fn expected_str(&self, id: NodeId) -> String {
        self.g.describe(id)
    }

    pub(crate) fn check(&self, id: NodeId, terminal: &str, access: TokenStream) -> TokenStream {
        let Some(s) = self.g.shape_of(id) else {
            return quote!();
        };
        let specs = s.dims.iter().map(|d| match rdim(&self.g.env.dim(d)) {
            RDim::Known(n) => {
                let n = n as usize;
                quote!(::mithril::rt::DimSpec::Fixed(#n))
            }
            RDim::Sym(1, names) if names.len() == 1 => {
                let slot = self.sym_slot(&names[0]);
                quote!(::mithril::rt::DimSpec::Sym(#slot))
            }
            _ => quote!(::mithril::rt::DimSpec::Any),
        });
        let ell = s.rest.is_some();
        let expected = self.expected_str(id);
        let model = self.inp.name.to_string();
        quote! {
            ::mithril::rt::check::check_shape(&mut __env, #model, #terminal, #expected, #access, &[#(#specs),*], #ell)?;
        }
    }

    /// Lower a fused expression; returns the tokens and the dtype whose compute domain they are in.
    pub(crate) fn lower_fexpr(&self, e: &FExpr, arg_dts: &[DType]) -> (TokenStream, DType) {
        match e {
            FExpr::Arg(i) => {
                let a = format_ident!("a{}", i);
                (quote!(::mithril::rt::Elem::to_acc(#a)), arg_dts[*i])
            }
            FExpr::Lit(s, t) => (literal(*s, *t), *t),
            FExpr::Op(p, args, out, compute) => {
                let lowered: Vec<(TokenStream, DType)> =
                    args.iter().map(|a| self.lower_fexpr(a, arg_dts)).collect();
                let conv: Vec<TokenStream> = lowered
                    .iter()
                    .enumerate()
                    .map(|(i, (t, d))| convert(t.clone(), *d, p.operand_dtype(i, *compute, *d)))
                    .collect();
                let body = p.scalar(&conv, *compute);
                match p {
                    Prim::Cast(_) => (convert(body, lowered[0].1, *out), *out),
                    _ => (body, *out),
                }
            }
        }
    }

    fn elementwise(&mut self, id: NodeId, expr: &FExpr, args: &[NodeId]) -> TokenStream {
        let out_dt = self.dtype(id);
        let arg_dts: Vec<DType> = args.iter().map(|&a| self.dtype(a)).collect();
        let (body, body_dt) = self.lower_fexpr(expr, &arg_dts);
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
                let t = self.elem_ty(a);
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
                    self.errors.push(syn::Error::new(
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
                self.errors.push(syn::Error::new(
                    self.g.nodes[id].span,
                    "internal: fused group with more than 5 inputs",
                ));
                quote!()
            }
        }
    }

    /// The row-segment epilogue closure of a fused matmul of dtype `t` (`expr`'s `Arg(0)` is
    /// the product, `Arg(i)` the `i`-th other operand, of dtypes `others`): one call of the
    /// multiversioned in-place `ew` driver over the accumulators of a finished row segment.
    pub(crate) fn epilogue_seg(&self, t: DType, expr: &FExpr, others: &[DType]) -> TokenStream {
        let out_ty = storage_type(t);
        let mut arg_dts = vec![t];
        arg_dts.extend_from_slice(others);
        let (body, body_dt) = self.lower_fexpr(expr, &arg_dts);
        let body = convert(body, body_dt, t);
        let k = others.len();
        let srcs: Vec<Ident> = (1..=k).map(|i| format_ident!("__s{}", i)).collect();
        let params: Vec<TokenStream> = others
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                let a = format_ident!("a{}", i + 1);
                let ty = storage_type(d);
                quote!(#a: #ty)
            })
            .collect();
        let drv = format_ident!("map{}_inplace", k + 1);
        let acc = quote!(<#out_ty as ::mithril::rt::Elem>::Acc);
        quote! {
            |__v: &mut [#acc], __s: [::mithril::rt::fixed::Src<'_, #out_ty>; #k]| {
                let [#(#srcs),*] = __s;
                ::mithril::rt::fixed::ew::#drv(__v, #(#srcs,)* |__p: #acc, #(#params),*| -> #acc {
                    // the product rounded to the storage type, as the unfused graph stores it
                    let a0: #out_ty = <#out_ty as ::mithril::rt::Elem>::from_acc(__p);
                    <#out_ty as ::mithril::rt::Elem>::to_acc(<#out_ty as ::mithril::rt::Elem>::from_acc(#body))
                });
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
        let t = self.dtype(id);
        let other_dts: Vec<DType> = args[2..].iter().map(|&a| self.dtype(a)).collect();
        let seg = self.epilogue_seg(t, expr, &other_dts);
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
            Op::Param(i) => {
                let fields = self.g.params[*i]
                    .path
                    .iter()
                    .map(|p| format_ident!("{}", p));
                quote!(let #vid = params.#(#fields).*.view().into_dyn();)
            }
            Op::Const(s) => {
                let t = self.dtype(id);
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
                let arg_dts: Vec<DType> = args.iter().map(|&a| self.dtype(a)).collect();
                let out = self.dtype(id);
                let compute = p.compute_dtype(&arg_dts, out);
                let e = FExpr::Op(
                    p.clone(),
                    (0..args.len()).map(FExpr::Arg).collect(),
                    out,
                    compute,
                );
                self.elementwise(id, &e, &args)
            }
            Op::Prim(Prim::Arange { start, step, .. }) => {
                let (start, step) = (*start, *step);
                let Some(s) = self.g.shape_of(id) else {
                    return quote!();
                };
                let Some(len) = s.dims.first().and_then(|d| self.dim_expr(d)) else {
                    self.errors.push(syn::Error::new(
                        n.span,
                        "arange: its length is not known at run time (use a symbol of an input's shape)",
                    ));
                    return quote!();
                };
                let dest = self.dest(id);
                quote!(let #vid = ::mithril::rt::ops::arange_to(#start, #step, (#len) as usize, #dest)?;)
            }
            Op::Prim(Prim::Reshape(_)) => {
                let a = v(n.args[0]);
                let Some(s) = self.g.shape_of(id) else {
                    return quote!();
                };
                let mut dims = Vec::new();
                for d in &s.dims {
                    match self.dim_expr(d) {
                        Some(e) => dims.push(quote!((#e) as isize)),
                        None => dims.push(quote!(-1isize)),
                    }
                }
                if dims
                    .iter()
                    .filter(|d| d.to_string().contains("- 1isize"))
                    .count()
                    > 1
                {
                    self.errors.push(syn::Error::new(n.span, "reshape: more than one target dim is only known at run time; name them with symbols"));
                }
                let dest = self.dest(id);
                let ctx = self.ctx(id);
                quote!(let #vid = ::mithril::rt::ops::reshape_to(&#a.view(), &[#(#dims),*], #dest) #ctx ?;)
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
                let dts: Vec<DType> = n.args.iter().map(|&a| self.dtype(a)).collect();
                let out = self.elem_ty(id);
                let dest = self.dest(id);
                let call = p.call(&args, &dts, &out, &dest);
                let ctx = self.ctx(id);
                quote!(let #vid = (#call) #ctx ?;)
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

    pub(crate) fn struct_name(&self, path: &[String], kind: &str) -> Ident {
        let mut s = format!("{}{kind}", self.inp.name);
        for p in path {
            s.push_str(&camel(p));
        }
        format_ident!("{}", s)
    }

    /// Shape checks, node code and output values of the graph's evaluate function.
    fn body_parts(
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
            checks.push(self.check(
                i.node,
                &format!("input `{}`", i.name),
                quote!(inputs.#f.shape()),
            ));
        }
        for p in &g.params {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            checks.push(self.check(
                p.node,
                &format!("param `{}`", p.dotted()),
                quote!(params.#(#fields).*.shape()),
            ));
        }
        for (id, n) in g.nodes.iter().enumerate() {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                checks.push(self.check(
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
                let t = self.elem_ty(id);
                body.push(quote!(let mut #o: ::std::option::Option<::mithril::ndarray::ArrayD<#t>> = ::std::option::Option::None;));
            }
        }
        for id in 0..g.nodes.len() {
            body.push(self.placed_code(id));
        }
        let mut outs = Vec::new();
        for (k, o) in g.outputs.iter().enumerate() {
            let vid = v(o.node);
            let d = ix(self.rank(o.node));
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

    /// The shapes that key the memory plan: every input, param and output-gradient seed.
    fn plan_keys(&self) -> Vec<TokenStream> {
        let g = self.g;
        let mut keys = Vec::new();
        for i in &g.inputs {
            let f = format_ident!("{}", i.name);
            keys.push(quote!(inputs.#f.shape()));
        }
        for p in &g.params {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            keys.push(quote!(params.#(#fields).*.shape()));
        }
        for n in &g.nodes {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                keys.push(quote!(output_grads.#f.shape()));
            }
        }
        keys
    }

    /// The slot lifetimes as a constant expression.
    fn life_tokens(&self) -> TokenStream {
        let life = self.plan.life.iter().map(|&(a, b)| {
            let (a, b) = (
                proc_macro2::Literal::u32_unsuffixed(a),
                proc_macro2::Literal::u32_unsuffixed(b),
            );
            quote!((#a, #b))
        });
        quote!(&[#(#life),*])
    }

    /// A function body: checks, the workspace of `ws_field` (slot lifetimes in `life_const`),
    /// the node code, then `result` (built from the outputs) is returned after the workspace
    /// is finished.
    fn function_body(
        &self,
        checks: &[TokenStream],
        body: &[TokenStream],
        ws_field: &Ident,
        life_const: &Ident,
        result: TokenStream,
    ) -> TokenStream {
        let syms: Vec<&str> = self.g.syms.iter().map(|s| s.as_str()).collect();
        let keys = self.plan_keys();
        let model = self.inp.name.to_string();
        let max = match self.inp.max_memory_gb {
            Some(x) => quote!(::std::option::Option::Some(#x)),
            None => quote!(::std::option::Option::None),
        };
        let dev = if self.mixed.is_some() {
            quote!(let __dev: &::mithril::rt::cuda::CudaDevice = &self.__dev;)
        } else {
            quote!()
        };
        quote! {
            #dev
            let mut __env = ::mithril::rt::SymEnv::new(&[#(#syms),*]);
            #(#checks)*
            let _ = &__env;
            // the planned arena; a concurrent call on the same model gets an unplanned one
            let mut __guard;
            let mut __tmp;
            let __ws: &mut ::mithril::rt::Workspace = match self.#ws_field.try_lock() {
                ::std::result::Result::Ok(g) => {
                    __guard = g;
                    &mut *__guard
                }
                ::std::result::Result::Err(_) => {
                    __tmp = ::mithril::rt::Workspace::new(Self::#life_const, false, #max).named(#model);
                    &mut __tmp
                }
            };
            __ws.begin(&[#(#keys),*]);
            let __w: &::mithril::rt::Workspace = &*__ws;
            #(#body)*
            let __result = #result;
            __ws.finish(#model)?;
            Ok(__result)
        }
    }

    /// `evaluate_gradients` from the forward+backward graph.
    fn gradients_fn(
        &mut self,
        params_name: &Ident,
        inputs_name: &Ident,
        outputs_name: &Ident,
    ) -> TokenStream {
        let g = self.g;
        let planned = self.mixed.is_none();
        let mut first_grad = 0;
        let (pre, (checks, body, outs)) = if planned {
            let (pre, outs, first) = self.plan_body(
                &format_ident!("__ws_grad"),
                &format_ident!("__MITHRIL_LIFE_GRAD"),
            );
            first_grad = first;
            (pre, (Vec::new(), Vec::new(), outs))
        } else {
            (quote!(), self.body_parts())
        };
        let mut fwd = Vec::new();
        let mut grad_vals: BTreeMap<usize, TokenStream> = BTreeMap::new();
        for (n, val) in outs {
            match n
                .strip_prefix(crate::autodiff::GRAD_PREFIX)
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => {
                    grad_vals.insert(i, val);
                }
                None => {
                    let f = format_ident!("{}", n);
                    fwd.push(quote!(#f: #val));
                }
            }
        }
        let mut tree = Tree::default();
        for (i, p) in g.params.iter().enumerate() {
            tree.insert(&p.path, i);
        }
        let grads_name = format_ident!("{}Grads", self.inp.name);
        let grads = if planned {
            quote!(#grads_name::__build(&mut ::mithril::rt::tree::Build::outs(&mut __outs, #first_grad))?)
        } else {
            self.grads_expr(&tree, &mut vec![], &grad_vals)
        };
        let seed_arg = if self.inp.train_model {
            quote!()
        } else {
            quote!(output_grads: #outputs_name,)
        };
        let grad_doc = if self.inp.train_model {
            "Run the train model and differentiate its `loss` (seeded with 1): returns the outputs and the gradient of the loss with respect to every param (reverse mode, compiled)."
        } else {
            "Run the model and differentiate it: returns the outputs and the gradient of `sum(output * output_grads)` over all outputs with respect to every param (reverse mode, compiled)."
        };
        let life = self.life_tokens();
        let fn_body = if planned {
            quote! {
                #pre
                Ok((#outputs_name { #(#fwd,)* }, #grads))
            }
        } else {
            self.function_body(
                &checks,
                &body,
                &format_ident!("__ws_grad"),
                &format_ident!("__MITHRIL_LIFE_GRAD"),
                quote!((#outputs_name { #(#fwd,)* }, #grads)),
            )
        };
        let threads = self.threads_guard();
        quote! {
            #[doc(hidden)]
            pub const __MITHRIL_LIFE_GRAD: &'static [(u32, u32)] = #life;

            /// Memory numbers of `evaluate_gradients`' last plan (`None` before its first call).
            pub fn memory_report_gradients(&self) -> ::std::option::Option<::mithril::rt::MemoryReport> {
                self.__ws_grad.lock().ok().and_then(|w| w.report())
            }

            #[doc = #grad_doc]
            #[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision)]
            pub fn evaluate_gradients(&self, params: &#params_name, inputs: #inputs_name<'_>, #seed_arg) -> ::mithril::rt::Result<(#outputs_name, #grads_name)> {
                #threads
                #fn_body
            }
        }
    }

    fn grads_expr(
        &self,
        tree: &Tree,
        path: &mut Vec<String>,
        vals: &BTreeMap<usize, TokenStream>,
    ) -> TokenStream {
        let name = self.struct_name(path, "Grads");
        let mut fields = Vec::new();
        for key in &tree.order {
            let f = format_ident!("{}", key);
            if let Some(&i) = tree.leaves.get(key) {
                let val = vals
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| quote!(compile_error!("internal: missing gradient")));
                fields.push(quote!(#f: #val));
            } else if let Some(sub) = tree.subs.get(key) {
                path.push(key.clone());
                let e = self.grads_expr(sub, path, vals);
                path.pop();
                fields.push(quote!(#f: #e));
            }
        }
        quote!(#name { #(#fields,)* })
    }

    /// Generate all items.
    /// Also returns the CUDA C module of a mixed model (for `file_path`).
    pub fn generate(mut self) -> Result<(TokenStream, Option<String>), Vec<syn::Error>> {
        let g = self.g;
        let name = self.inp.name;
        let vis = self.inp.vis;
        let inputs_name = format_ident!("{}Inputs", name);
        let outputs_name = format_ident!("{}Outputs", name);
        let params_name = format_ident!("{}Params", name);
        let model = name.to_string();

        // ---- structs
        let input_fields: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let t = self.elem_ty(i.node);
                let d = ix(self.rank(i.node));
                let doc = format!("input `{}`: `{}`", i.name, g.describe(i.node));
                quote!(#[doc = #doc] pub #f: ::mithril::ndarray::ArrayView<'a, #t, #d>)
            })
            .collect();
        let phantom = if g.inputs.is_empty() {
            quote!(#[doc = "(this model has no inputs)"] pub _marker: ::std::marker::PhantomData<&'a ()>,)
        } else {
            quote!()
        };
        let output_fields: Vec<TokenStream> = g
            .outputs
            .iter()
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let ty = self.array_ty(o.node);
                let doc = format!("output `{}`: `{}`", o.name, g.describe(o.node));
                quote!(#[doc = #doc] pub #f: #ty)
            })
            .collect();
        let mut tree = Tree::default();
        for (i, p) in g.params.iter().enumerate() {
            tree.insert(&p.path, i);
        }
        let mut param_structs = Vec::new();
        self.top_alias.set(self.mixed.is_none());
        self.param_structs(&tree, &mut vec![], &mut param_structs);
        let randomize = self.randomize_expr(&tree, &mut vec![]);

        // ---- evaluate body
        let syms: Vec<&str> = g.syms.iter().map(|s| s.as_str()).collect();
        let planned = self.mixed.is_none();
        let (pre, (checks, body, out_vals)) = if planned {
            let (pre, outs, _) = self.plan_body(
                &format_ident!("__ws"),
                &format_ident!("__MITHRIL_LIFE_EVAL"),
            );
            (pre, (Vec::new(), Vec::new(), outs))
        } else {
            (quote!(), self.body_parts())
        };
        let life = self.life_tokens();
        let outs: Vec<TokenStream> = out_vals
            .into_iter()
            .map(|(n, val)| {
                let f = format_ident!("{}", n);
                quote!(#f: #val)
            })
            .collect();
        let generic_body = || {
            if planned {
                return quote! {
                    #pre
                    Ok(#outputs_name { #(#outs,)* })
                };
            }
            self.function_body(
                &checks,
                &body,
                &format_ident!("__ws"),
                &format_ident!("__MITHRIL_LIFE_EVAL"),
                quote!(#outputs_name { #(#outs,)* }),
            )
        };
        // `static_shapes: true`: the slice-and-constant evaluate when the graph allows it
        let mut summary = self.inp.summary.clone();
        let eval_body = if self.inp.static_shapes && self.mixed.is_some() {
            summary.push_str("static_shapes: evaluate keeps the generic path (not specialized: ops placed by `backend_map`)\n");
            generic_body()
        } else if self.inp.static_shapes {
            match crate::backends::cpu_static::evaluate_body(&self, &outputs_name) {
                Ok(b) => {
                    summary.push_str("static_shapes: evaluate specialized (constant dims, contiguous slices, direct kernel calls)\n");
                    b
                }
                Err(why) => {
                    summary.push_str(&format!(
                        "static_shapes: evaluate keeps the generic path (not specialized: {why})\n"
                    ));
                    generic_body()
                }
            }
        } else {
            generic_body()
        };
        let has_grad = self.train.is_some();
        let gradients = match self.train {
            Some(t) => {
                let mut tg = Gen::new(t, self.inp);
                tg.shared_terms = self.shared_terms.clone();
                if self.mixed.is_some() {
                    tg.place(false);
                }
                let r = tg.gradients_fn(&params_name, &inputs_name, &outputs_name);
                if self.shared_terms.is_none() {
                    self.shared_terms = tg.shared_terms.take();
                }
                self.errors.extend(tg.errors);
                if let (Some(m), Some(tm)) = (self.mixed.as_mut(), tg.mixed.take()) {
                    summary.push_str(&tm.placed.line(t, "evaluate_gradients"));
                    m.absorb(*tm);
                }
                r
            }
            None => quote!(),
        };
        if let Some(m) = self.mixed.as_mut() {
            let mut es = m.take_errors();
            self.errors.append(&mut es);
        }
        let mut grads_structs = Vec::new();
        if self.train.is_some() {
            self.param_structs_named(&tree, &mut vec![], &mut grads_structs, "Grads");
        }
        let grads_name = format_ident!("{}Grads", name);
        let params_tree_impl = typed_api::param_tree_impl(&params_name);
        let terminals_const = match &self.shared_terms {
            Some((_, terms)) => quote! {
                #[doc(hidden)]
                pub const __MITHRIL_TERMINALS: &'static str = #terms;
            },
            None => quote!(),
        };
        let grads_tree_impl = if self.train.is_some() && !self.grads_aliased.get() {
            typed_api::param_tree_impl(&grads_name)
        } else {
            quote!()
        };

        // ---- docs
        let mut doc = String::new();
        for a in self.inp.docs {
            if a.path().is_ident("doc") {
                if let syn::Meta::NameValue(nv) = &a.meta {
                    if let syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) = &nv.value
                    {
                        doc.push_str(s.value().trim_start_matches(' '));
                        doc.push('\n');
                    }
                }
            }
        }
        if !doc.is_empty() {
            doc.push('\n');
        }
        doc.push_str(&format!(
            "Physical model `{}` generated by `mithril!` from `{}`.\n\n",
            name, self.inp.logical
        ));
        if self.inp.static_shapes {
            doc.push_str("Compiled with `static_shapes: true`: every dim is a constant.\n\n");
        }
        if let Some(m) = &self.mixed {
            let (cu, cp) = m.placed.op_counts(g);
            doc.push_str(&format!(
                "A mixed model (`backend_map`): {cu} ops run on a CUDA device, {cp} on the CPU \
                 (the `backend` column of [`Self::SUMMARY`]). `evaluate` takes and returns host \
                 data; the values that cross, and the inputs and params that device ops read, are \
                 copied at every call (the params once with `prepare` and `evaluate_prepared`).\n\n"
            ));
        }
        doc.push_str("| terminal | kind | type |\n|---|---|---|\n");
        for i in &g.inputs {
            doc.push_str(&format!(
                "| `{}` | input | `{}` |\n",
                i.name,
                g.describe(i.node)
            ));
        }
        for p in &g.params {
            doc.push_str(&format!(
                "| `{}` | param | `{}` |\n",
                p.dotted(),
                g.describe(p.node)
            ));
        }
        for o in &g.outputs {
            doc.push_str(&format!(
                "| `{}` | output | `{}` |\n",
                o.name,
                g.describe(o.node)
            ));
        }
        let summary = &summary;
        let text = &self.inp.graph_text;
        let dot = &self.inp.graph_dot;
        let json = &self.inp.graph_json;
        let n_ops = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Prim(_) | Op::Fused(_) | Op::FusedMatmul { .. }))
            .count();
        let inputs_doc = format!("Inputs of [`{name}`]: one `ndarray` view per input terminal.");
        // views with a dynamic rank (`IxDyn`, for `...` inputs) are not `Copy`
        let inputs_derive = if g
            .inputs
            .iter()
            .all(|i| self.rank(i.node).is_some_and(|r| r <= 6))
        {
            quote!(#[derive(Clone, Copy, Debug)])
        } else {
            quote!(#[derive(Clone, Debug)])
        };
        let outputs_doc = format!("Outputs of [`{name}`].");

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let max = match self.inp.max_memory_gb {
            Some(x) => quote!(::std::option::Option::Some(#x)),
            None => quote!(::std::option::Option::None),
        };
        let planning = self.inp.planning;
        let grad_life = if has_grad {
            quote!(Self::__MITHRIL_LIFE_GRAD)
        } else {
            quote!(&[])
        };
        let threads = self.threads_guard();
        let model_name = self.inp.name.to_string();
        let ws_init = quote! {
            __ws: ::std::sync::Mutex::new(::mithril::rt::Workspace::new(Self::__MITHRIL_LIFE_EVAL, #planning, #max).named(#model_name)),
            __ws_grad: ::std::sync::Mutex::new(::mithril::rt::Workspace::new(#grad_life, #planning, #max).named(#model_name)),
        };
        let optimize_for = self.inp.optimize_for.name();
        let lints = quote!(#[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision)]);
        let mut prepared_items = quote!();
        let eval_fn = match &self.mixed {
            None => quote! {
                /// Run the model.
                #lints
                pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                    #threads
                    #eval_body
                }
            },
            Some(m) => {
                // the params the cuda ops read, copied once by `prepare`
                let prep_name = format_ident!("{}Prepared", name);
                let mut fields = Vec::new();
                let mut uploads = Vec::new();
                for &i in &m.prepared {
                    let p = &g.params[i];
                    let f = format_ident!("p{}", i);
                    let t = self.elem_ty(p.node);
                    let doc = format!("`{}` on the device", p.dotted());
                    fields.push(quote!(#[doc = #doc] #f: ::mithril::rt::cuda::DeviceTensor<#t>));
                    let path = p.path.iter().map(|x| format_ident!("{}", x));
                    uploads.push(quote!(#f: ::mithril::rt::cuda::DeviceTensor::to_device(&self.__dev, &params.#(#path).*.view())?));
                }
                let prep_doc = format!(
                    "Params of [`{name}`] prepared for [`{name}::evaluate_prepared`]: a copy of the host params and, in device memory, the {} param(s) its cuda ops read.",
                    fields.len()
                );
                prepared_items = quote! {
                    #[doc = #prep_doc]
                    #[derive(Debug)]
                    #vis struct #prep_name {
                        host: #params_name,
                        ordinal: usize,
                        #(#fields,)*
                    }

                    impl #prep_name {
                        /// The host params it was made from.
                        pub fn params(&self) -> &#params_name {
                            &self.host
                        }
                    }
                };
                quote! {
                    #lints
                    fn __evaluate(&self, params: &#params_name, __prep: ::std::option::Option<&#prep_name>, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                        #threads
                        #eval_body
                    }

                    /// Run the model on host data: the ops placed on cuda run on the device,
                    /// with the inputs and params they read uploaded and their results read by
                    /// CPU ops (or returned) downloaded, at every call. For repeated calls with
                    /// the same params, [`Self::prepare`] them once.
                    pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                        self.__evaluate(params, ::std::option::Option::None, inputs)
                    }

                    /// Copy the params once for [`Self::evaluate_prepared`]: the params the cuda
                    /// ops read go to the device, and the whole tree is kept (cloned) on the host,
                    /// so later changes to `params` do not affect it — prepare again after an
                    /// update.
                    pub fn prepare(&self, params: &#params_name) -> ::mithril::rt::Result<#prep_name> {
                        Ok(#prep_name {
                            host: ::std::clone::Clone::clone(params),
                            ordinal: self.__dev.ordinal(),
                            #(#uploads,)*
                        })
                    }

                    /// [`Self::evaluate`] with prepared params: no param is uploaded (the inputs and
                    /// the values that cross still are). `Err` when `prepared` was made on another
                    /// device.
                    pub fn evaluate_prepared(&self, prepared: &#prep_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                        if prepared.ordinal != self.__dev.ordinal() {
                            return Err(::mithril::rt::Error::Device(::std::format!(
                                "`{}`: params prepared on CUDA device {} used on device {}",
                                #model, prepared.ordinal, self.__dev.ordinal()
                            )));
                        }
                        self.__evaluate(&prepared.host, ::std::option::Option::Some(prepared), inputs)
                    }
                }
            }
        };
        let mut cuda_module = None;
        let (struct_items, ctor_items) = match &self.mixed {
            None => (
                quote! {
                    #[doc = #doc]
                    #vis struct #name {
                        __ws: ::std::sync::Mutex<::mithril::rt::Workspace>,
                        __ws_grad: ::std::sync::Mutex<::mithril::rt::Workspace>,
                    }

                    impl ::std::default::Default for #name {
                        fn default() -> Self {
                            #name { #ws_init }
                        }
                    }

                    impl ::std::clone::Clone for #name {
                        /// A model with the same code and fresh (empty) planned memory.
                        fn clone(&self) -> Self {
                            ::std::default::Default::default()
                        }
                    }

                    impl ::std::fmt::Debug for #name {
                        fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                            f.debug_struct(#model).finish_non_exhaustive()
                        }
                    }
                },
                quote! {
                    /// `optimize_for` as compiled: `"latency"` (a call's matrix products may use
                    /// every core) or `"throughput"` (each call runs on its calling thread).
                    pub const OPTIMIZE_FOR: &'static str = #optimize_for;

                    /// Create the physical model (CPU). Its planned memory is allocated at the first
                    /// call for each input shape.
                    pub fn new() -> ::mithril::rt::Result<Self> {
                        Ok(::std::default::Default::default())
                    }
                },
            ),
            Some(m) => {
                let opts = self.inp.cuda.cloned().unwrap_or_default();
                let (source, entries) = m.module();
                let (up, down) = m.placed.transfers(g);
                let (n_up, n_down) = (up.len(), down.len());
                let file = format!("{model}.cu");
                let device = opts.device;
                let arch = match &opts.arch {
                    Some(a) => quote!(::std::option::Option::Some(#a)),
                    None => quote!(::std::option::Option::None),
                };
                let options = crate::backends::cuda::device_options(&opts);
                // what runs on cuda, for the error of `new()`
                let other = |cuda: bool| -> String {
                    g.placement
                        .map
                        .iter()
                        .filter(|(_, c)| *c == cuda)
                        .map(|(p, _)| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let what = if g.placement.default_cuda {
                    format!("backend: cuda, backend_map: {} on cpu", other(false))
                } else {
                    format!("backend_map: {} on cuda", other(true))
                };
                let items = quote! {
                    #[doc = #doc]
                    #vis struct #name {
                        __ws: ::std::sync::Mutex<::mithril::rt::Workspace>,
                        __ws_grad: ::std::sync::Mutex<::mithril::rt::Workspace>,
                        __dev: ::mithril::rt::cuda::CudaDevice,
                        __k: ::mithril::rt::cuda::exec::ModelKernels,
                    }

                    impl ::std::fmt::Debug for #name {
                        fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                            f.debug_struct(#model).field("device", &self.__dev).finish_non_exhaustive()
                        }
                    }
                };
                let ctor = quote! {
                    /// `optimize_for` as compiled: `"latency"` or `"throughput"` (the CPU part's
                    /// matrix products run on the calling thread; the cuda part is unchanged).
                    pub const OPTIMIZE_FOR: &'static str = #optimize_for;
                    /// The CUDA C module of the ops placed on cuda (all generated kernels of
                    /// `evaluate` (`f<node>`) and `evaluate_gradients` (`g<node>`)), compiled by
                    /// NVRTC at the first launch.
                    pub const CUDA_SOURCE: &'static str = #source;
                    /// The kernel entry names of [`Self::CUDA_SOURCE`].
                    pub const CUDA_KERNELS: &'static [&'static str] = &[#(#entries),*];
                    /// The architecture kernels are compiled for (`cuda: { arch }`); `None`: the
                    /// device's own.
                    pub const CUDA_ARCH: ::std::option::Option<&'static str> = #arch;
                    /// The device [`Self::new`] opens (`cuda: { device }`).
                    pub const CUDA_DEVICE: usize = #device;
                    /// Host <-> device copies made by one `evaluate`: `(uploads, downloads)`
                    /// (inputs and params that device ops read, and values crossing between
                    /// the backends; listed in [`Self::SUMMARY`]).
                    pub const TRANSFERS: (usize, usize) = (#n_up, #n_down);

                    /// Open the model: the CUDA device its `backend_map` ops run on
                    /// (`cuda: { device }`, default 0). `Err` — never a panic — naming what is
                    /// missing when the CUDA libraries, the driver or the device are not there.
                    pub fn new() -> ::mithril::rt::Result<Self> {
                        Self::on_device(Self::CUDA_DEVICE)
                    }

                    /// Open the model with its cuda ops on device `ordinal`.
                    pub fn on_device(ordinal: usize) -> ::mithril::rt::Result<Self> {
                        let dev = ::mithril::rt::cuda::exec::open_model(#model, #what, ordinal, #options)?;
                        Ok(#name {
                            #ws_init
                            __dev: dev,
                            __k: ::mithril::rt::cuda::exec::ModelKernels::new(#file, Self::CUDA_SOURCE),
                        })
                    }

                    /// The device the cuda ops run on.
                    pub fn device(&self) -> &::mithril::rt::cuda::CudaDevice {
                        &self.__dev
                    }
                };
                cuda_module = Some(source);
                (items, ctor)
            }
        };
        let tokens = quote! {
            #struct_items

            #[doc = #inputs_doc]
            #inputs_derive
            #vis struct #inputs_name<'a> { #(#input_fields,)* #phantom }

            #[doc = #outputs_doc]
            #[derive(Clone, Debug)]
            #vis struct #outputs_name { #(#output_fields,)* }

            #(#param_structs)*

            #params_tree_impl

            impl #name {
                /// The summary table: every op of the flattened, optimized graph with its shapes and dtypes.
                pub const SUMMARY: &'static str = #summary;
                /// The optimized graph as text.
                pub const GRAPH_TEXT: &'static str = #text;
                /// The optimized graph in Graphviz DOT.
                pub const GRAPH_DOT: &'static str = #dot;
                /// The optimized graph as JSON.
                pub const GRAPH_JSON: &'static str = #json;
                /// Number of ops (primitives and fused groups) after optimization.
                pub const NUM_OPS: usize = #n_ops;
                /// Names of the symbolic dims, in binding order.
                pub const SYMBOLS: &'static [&'static str] = &[#(#syms),*];

                #[doc(hidden)]
                pub const __MITHRIL_LIFE_EVAL: &'static [(u32, u32)] = #life;
                #terminals_const

                #ctor_items

                /// Memory numbers of `evaluate`'s last plan: the planned peak of the arena next
                /// to the naive sum of all intermediate buffers (`None` before the first call).
                pub fn memory_report(&self) -> ::std::option::Option<::mithril::rt::MemoryReport> {
                    self.__ws.lock().ok().and_then(|w| w.report())
                }

                /// The summary table (same as [`Self::SUMMARY`]).
                pub fn summary(&self) -> &'static str {
                    Self::SUMMARY
                }

                /// Fresh params, deterministic per `seed` (fan-in scaled uniform like PyTorch's
                /// defaults unless the model says otherwise).
                pub fn randomize_params(&self, seed: u64) -> #params_name {
                    let _ = seed;
                    #randomize
                }

                #eval_fn

                #gradients
            }

            #(#grads_structs)*
            #grads_tree_impl
            #prepared_items
        };
        Ok((tokens, cuda_module))
    }
}
