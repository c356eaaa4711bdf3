//! The CPU backend's output: a model's graph as a plan text (`mithril::rt::plan`), run by the
//! precompiled runtime, instead of Rust code per op.
//!
//! What is generated per function (`evaluate`, `evaluate_gradients`) is one string constant,
//! one array of input/param views and one call of `mithril::rt::plan::run` — a few lines
//! whatever the model's size — so rustc's time grows with the number of terminals, not with the
//! number of ops, and the hot loops run at the runtime's optimization level in debug builds too.
//! The format is documented in `mithril-runtime/src/plan/text.rs`.

use super::Gen;
use crate::ir::{rdim, DType, Dim, FExpr, NodeId, Op, RDim};
use crate::passes::memplan::Home;
use crate::prims::plan::{flag, list, lit, q, PlanCx};
use crate::prims::{acc_dtype, Prim};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::fmt::Write;

fn dom(t: DType) -> &'static str {
    acc_dtype(t).name()
}

/// A fused expression as program instructions (mirrors `cpu_elem::lower_fexpr`: operands converted to
/// each op's operand dtype, values kept in compute domains).
struct ProgText {
    ins: Vec<String>,
}

impl ProgText {
    fn push(&mut self, s: String) -> usize {
        self.ins.push(s);
        self.ins.len() - 1
    }

    fn conv(&mut self, r: usize, from: DType, to: DType) -> usize {
        if acc_dtype(from) == acc_dtype(to) {
            return r;
        }
        self.push(format!("V {r} {}", dom(to)))
    }

    fn lower(&mut self, e: &FExpr, arg_dts: &[DType]) -> Result<(usize, DType), String> {
        match e {
            FExpr::Arg(i) => {
                let t = *arg_dts.get(*i).ok_or("operand out of range")?;
                Ok((self.push(format!("L {i} {}", t.name())), t))
            }
            FExpr::Lit(s, t) => Ok((self.push(format!("K {}", lit(*s, *t))), *t)),
            FExpr::Op(p, args, out, compute) => {
                // each operand converted to the dtype the op computes it in
                let mut regs = Vec::with_capacity(args.len());
                let mut dts = Vec::with_capacity(args.len());
                for (i, a) in args.iter().enumerate() {
                    let (r, d) = self.lower(a, arg_dts)?;
                    let want = p.operand_dtype(i, *compute, d);
                    regs.push(self.conv(r, d, want));
                    dts.push(want);
                }
                let first = regs.first().copied().zip(dts.first().copied());
                match (p, first) {
                    (Prim::Cast(_), Some((r, d))) => Ok((self.conv(r, d, *out), *out)),
                    (Prim::StopGradient, Some((r, _))) => Ok((r, *out)),
                    (Prim::Cast(_) | Prim::StopGradient, None) => {
                        Err(format!("internal: `{}` without an operand", p.name()))
                    }
                    (_, _) => {
                        let no_shape = |_: &Dim| None;
                        let cx = PlanCx {
                            out: *compute,
                            shape: None,
                            dim: &no_shape,
                            arity: regs.len(),
                            seed_view: 0,
                        };
                        let op = p.plan(&cx)?;
                        let rs: Vec<String> = regs.iter().map(|r| r.to_string()).collect();
                        let r = self.push(format!(
                            "P {op} {} {} {}",
                            dom(*compute),
                            rs.len(),
                            rs.join(" ")
                        ));
                        Ok((r, *out))
                    }
                }
            }
        }
    }

    /// The program text of `e` whose result is stored as `out`.
    fn program(e: &FExpr, arg_dts: &[DType], out: DType) -> Result<String, String> {
        let mut p = ProgText { ins: Vec::new() };
        let (r, d) = p.lower(e, arg_dts)?;
        let r = p.conv(r, d, out);
        Ok(format!("{} {} {r}", p.ins.len(), p.ins.join(" ")))
    }
}

/// The programs of a plan, each written once (`R` records) and referred to as `@<k>`.
#[derive(Default)]
struct Progs {
    ids: std::collections::HashMap<String, usize>,
    /// records to write before the node that first uses them
    new: Vec<String>,
}

impl Progs {
    fn intern(&mut self, text: String) -> String {
        let n = self.ids.len();
        let k = *self.ids.entry(text.clone()).or_insert_with(|| {
            self.new.push(text);
            n
        });
        format!("@{k}")
    }
}

impl Gen<'_> {
    /// Whether the graph has a random op (`dropout`): its plan gets the call's seed as the
    /// view after the mode's.
    pub(super) fn uses_seed(&self) -> bool {
        self.g
            .nodes
            .iter()
            .any(|n| matches!(&n.op, Op::Prim(p) if p.uses_seed()))
    }

    /// The index of the seed view (after the mode's; meaningful when [`Self::uses_seed`]).
    fn seed_view_index(&self) -> usize {
        let seeds = self
            .g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Seed(_)))
            .count();
        self.g.inputs.len() + self.g.params.len() + seeds + 1
    }

    /// Index of the view of node `id` (an input, param or seed) in the plan's `views`.
    fn view_index(&self, id: NodeId) -> Option<usize> {
        let g = self.g;
        match g.nodes[id].op {
            Op::Input(i) => Some(i),
            Op::Param(i) => Some(g.inputs.len() + self.leaf_pos[i]),
            Op::Mode => {
                let seeds = g
                    .nodes
                    .iter()
                    .filter(|n| matches!(n.op, Op::Seed(_)))
                    .count();
                Some(g.inputs.len() + g.params.len() + seeds)
            }
            Op::Seed(_) => {
                let k = g.nodes[..id]
                    .iter()
                    .filter(|n| matches!(n.op, Op::Seed(_)))
                    .count();
                Some(g.inputs.len() + g.params.len() + k)
            }
            _ => None,
        }
    }

    /// A run-time dim in plan text (as `Gen::dim_expr`).
    fn plan_dim(&self, d: &Dim) -> Option<String> {
        match self.g.env.dim(d) {
            Dim::Known(n) => Some(format!("k{n}")),
            Dim::Sym(s) => Some(format!("y{}", self.api.sym_slot(&s))),
            Dim::Var(v) => self.plan_dim_src.get(&v).cloned(),
            Dim::Prod(c, atoms) => {
                let parts: Option<Vec<String>> = atoms.iter().map(|a| self.plan_dim(a)).collect();
                let parts = parts?;
                Some(format!("p{c}:{} {}", parts.len(), parts.join(" ")))
            }
        }
    }

    fn plan_check(&self, out: &mut String, id: NodeId, terminal: &str) {
        let Some(view) = self.view_index(id) else {
            return;
        };
        let Some(s) = self.g.shape_of(id) else {
            return;
        };
        let specs: Vec<String> = s
            .dims
            .iter()
            .map(|d| match rdim(&self.g.env.dim(d)) {
                RDim::Known(n) => format!("f{n}"),
                RDim::Sym(1, names) if names.len() == 1 => {
                    format!("s{}", self.api.sym_slot(&names[0]))
                }
                _ => "a".to_string(),
            })
            .collect();
        let _ = writeln!(
            out,
            "C {view} {} {} {} {} {}",
            q(terminal),
            q(&self.api.expected_str(id)),
            flag(s.rest.is_some()),
            specs.len(),
            specs.join(" ")
        );
    }

    /// The plan text of this graph.
    /// Returned in three parts: the `M` line, the shape checks of inputs and params (which
    /// `evaluate` and `evaluate_gradients` share) and the rest.
    pub(crate) fn plan_text(&mut self) -> (String, String, String) {
        let g = self.g;
        let mut head = String::new();
        let syms: Vec<String> = g.syms.iter().map(|s| q(s)).collect();
        let _ = writeln!(
            head,
            "M {} {} {}",
            q(&self.inp.name.to_string()),
            syms.len(),
            syms.join(" ")
        );
        let mut terms = String::new();
        let out = &mut terms;
        for i in &g.inputs {
            self.plan_check(out, i.node, &format!("input `{}`", i.name));
        }
        let mut by_view: Vec<usize> = (0..g.params.len()).collect();
        by_view.sort_by_key(|&i| self.leaf_pos[i]);
        for i in by_view {
            let p = &g.params[i];
            self.plan_check(out, p.node, &format!("param `{}`", p.dotted()));
        }
        let mut rest = String::new();
        let out = &mut rest;
        for (id, n) in g.nodes.iter().enumerate() {
            if let Op::Seed(i) = n.op {
                let name = format!("output gradient `{}`", g.outputs[i].name);
                self.plan_check(out, id, &name);
            }
        }
        let mut progs = Progs::default();
        for id in 0..g.nodes.len() {
            let op = match self.plan_op(id, &mut progs) {
                Ok(op) => op,
                Err(e) => {
                    self.api.errors.push(syn::Error::new(g.nodes[id].span, e));
                    "alias".to_string()
                }
            };
            let home = match self.plan.home[id] {
                Home::View => "v".to_string(),
                Home::Output => "o".to_string(),
                Home::Slot {
                    inplace: Some(pos), ..
                } => format!("i{pos}"),
                Home::Slot { slot, .. } => format!("s{slot}"),
            };
            let args: Vec<usize> = g.nodes[id].args.clone();
            let ctx = self.plan_ctx(id);
            for r in progs.new.drain(..) {
                let _ = writeln!(out, "R {r}");
            }
            // a run-time `if`'s branch: the node runs when the guard's value is true
            if let Some(w) = g.nodes[id].guard {
                let _ = writeln!(out, "W {w}");
            }
            let _ = writeln!(
                out,
                "N {} {home} {op} {} {ctx}",
                self.api.dtype(id).name(),
                list(&args),
            );
        }
        let outs: Vec<usize> = self
            .plan_out_order()
            .into_iter()
            .map(|k| g.outputs[k].node)
            .collect();
        let _ = writeln!(out, "O {}", list(&outs));
        (head, terms, rest)
    }

    /// How the runtime names node `id` in errors (see `Gen::what`, whose text the runtime
    /// composes from this): `-` for views and aliases, else the op, the label and the scope.
    fn plan_ctx(&self, id: NodeId) -> String {
        let n = &self.g.nodes[id];
        let op = match &n.op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Mode | Op::Boundary(_) => {
                return "-".into()
            }
            Op::Prim(p) | Op::Fused(FExpr::Op(p, ..)) => p.name(),
            Op::FusedMatmul { .. } => "matmul",
            Op::Const(_) => "const",
            _ => "elementwise",
        };
        let label = n.label.as_deref().filter(|l| !l.starts_with('#'));
        format!("{} {} {}", q(op), q(label.unwrap_or("")), q(&n.scope))
    }

    /// The op of node `id` in plan text (its program, if any, interned in `progs`).
    fn plan_op(&self, id: NodeId, progs: &mut Progs) -> Result<String, String> {
        let g = self.g;
        let n = &g.nodes[id];
        let t = self.api.dtype(id);
        let arg_dts: Vec<DType> = n.args.iter().map(|&a| self.api.dtype(a)).collect();
        Ok(match &n.op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Mode => {
                format!("view {}", self.view_index(id).unwrap_or(0))
            }
            Op::Boundary(_) => "alias".into(),
            Op::Const(s) => format!("const {}", lit(*s, t)),
            Op::Fused(e) => {
                let label = n.label.clone().unwrap_or_else(|| match e {
                    FExpr::Op(p, ..) => p.name().to_string(),
                    _ => "elementwise".into(),
                });
                format!(
                    "fused {} {}",
                    q(&label),
                    progs.intern(ProgText::program(e, &arg_dts, t)?)
                )
            }
            Op::FusedMatmul { ta, tb, expr } => {
                let mut dts = vec![t];
                dts.extend_from_slice(&arg_dts[2.min(arg_dts.len())..]);
                format!(
                    "fmm {} {} {}",
                    flag(*ta),
                    flag(*tb),
                    progs.intern(ProgText::program(expr, &dts, t)?)
                )
            }
            Op::Prim(p) if p.is_elementwise() => {
                let compute = p.compute_dtype(&arg_dts, t);
                let e = FExpr::Op(
                    p.clone(),
                    (0..n.args.len()).map(FExpr::Arg).collect(),
                    t,
                    compute,
                );
                let label = n.label.clone().unwrap_or_else(|| p.name().to_string());
                format!(
                    "fused {} {}",
                    q(&label),
                    progs.intern(ProgText::program(&e, &arg_dts, t)?)
                )
            }
            Op::Prim(p) => {
                let dim = |d: &Dim| self.plan_dim(d);
                let shape = g.shape_of(id);
                let cx = PlanCx {
                    out: t,
                    shape: shape.as_ref(),
                    dim: &dim,
                    arity: n.args.len(),
                    seed_view: self.seed_view_index(),
                };
                p.plan(&cx)?
            }
        })
    }

    /// The outputs in the plan's order: the model's outputs, the buffers' new values (outputs
    /// named `__upd_<param>`), then the gradients (outputs named `__grad_<param>`) in the
    /// structs' visit order.
    pub(super) fn plan_out_order(&self) -> Vec<usize> {
        let g = self.g;
        let grad_of = |k: usize| crate::autodiff::grad_param(&g.outputs[k].name);
        let upd_of = |k: usize| crate::ir::update_param(&g.outputs[k].name);
        let mut order: Vec<usize> = (0..g.outputs.len())
            .filter(|&k| grad_of(k).is_none() && upd_of(k).is_none())
            .collect();
        order.extend((0..g.outputs.len()).filter(|&k| upd_of(k).is_some()));
        let mut grads: Vec<(usize, usize)> = (0..g.outputs.len())
            .filter_map(|k| grad_of(k).map(|i| (self.leaf_pos.get(i).copied().unwrap_or(i), k)))
            .collect();
        grads.sort();
        order.extend(grads.into_iter().map(|(_, k)| k));
        order
    }

    /// Statements gathering the views `run` gets into `__views`: inputs, params (in the
    /// structs' visit order), then output-gradient seeds.
    fn plan_views(&self) -> TokenStream {
        let g = self.g;
        let mut pre = Vec::new();
        for i in &g.inputs {
            let f = format_ident!("{}", i.name);
            pre.push(quote!(__views.push(::mithril::rt::plan::view(inputs.#f.view()));));
        }
        let params = if g.params.is_empty() {
            quote!()
        } else {
            quote!(params.__views(&mut __views);)
        };
        let mut post = Vec::new();
        for n in &g.nodes {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                post.push(quote!(__views.push(::mithril::rt::plan::view(output_grads.#f.view()));));
            }
        }
        // `is_training`: the call's mode, after the seeds
        if g.uses_mode() {
            post.push(quote!(__views.push(::mithril::rt::plan::view(mode.view()));));
        }
        // random ops (`dropout`): the call's seed, after the mode
        let seeded = self.uses_seed();
        if seeded {
            post.push(quote!(__views.push(::mithril::rt::plan::view(__seed.view().into_dyn()));));
        }
        let n = g.inputs.len()
            + g.params.len()
            + g.nodes
                .iter()
                .filter(|n| matches!(n.op, Op::Seed(_)))
                .count()
            + usize::from(g.uses_mode())
            + usize::from(seeded);
        let seed_let = if seeded {
            quote!(let __seed = mode.seed_array();)
        } else {
            quote!()
        };
        quote! {
            #seed_let
            let mut __views = ::mithril::rt::plan::Views::<'_, #n>::new();
            #(#pre)*
            #params
            #(#post)*
        }
    }

    /// The body of a plan-run function: runs the plan with the workspace in `ws_field`.
    /// Returns the statements, the model outputs (name and the expression taking it from
    /// `__outs`) and the index in `__outs` where the gradients (if any) begin.
    ///
    /// With `quant` (`quantization: int8`'s `evaluate`), the plan is read through
    /// `Self::__mithril_qplan()` (which `quantize` and `load_quantized` read too; its item is
    /// left in `self.qplan_fn`) and run with `rt::plan::run_with` and the caller's `__q`.
    pub(crate) fn plan_body(
        &mut self,
        ws_field: &syn::Ident,
        life_const: &syn::Ident,
        quant: bool,
    ) -> (TokenStream, Vec<(String, TokenStream)>, usize) {
        let (head, terms, rest) = self.plan_text();
        // the shape checks of inputs and params are the model's `__mithril_terminals()` when
        // they are the ones `evaluate` wrote (its own plan sets them)
        let shared = (head.clone(), terms.clone());
        let plan = match &self.shared_terms {
            Some(s) if *s != shared => {
                let text = crate::backends::pack::runtime_text(&format!("{head}{terms}{rest}"));
                quote!(::mithril::rt::plan::Plan::cached(&__PLAN, #text?)?)
            }
            _ => {
                self.shared_terms = Some(shared);
                let text = crate::backends::pack::runtime_text(&format!("{head}{rest}"));
                quote!(::mithril::rt::plan::Plan::cached_with(&__PLAN, Self::__mithril_terminals()?, #text?)?)
            }
        };
        let views = self.plan_views();
        let model = self.inp.name.to_string();
        let max = match self.inp.max_memory_gb {
            Some(x) => quote!(::std::option::Option::Some(#x)),
            None => quote!(::std::option::Option::None),
        };
        let order = self.plan_out_order();
        let outs: Vec<(String, TokenStream)> = order
            .iter()
            .enumerate()
            .filter(|(_, &o)| {
                crate::autodiff::grad_param(&self.g.outputs[o].name).is_none()
                    && crate::ir::update_param(&self.g.outputs[o].name).is_none()
            })
            .map(|(k, &o)| {
                let o = &self.g.outputs[o];
                let t = self.api.elem_ty(o.node);
                let d = crate::backends::common::ix(self.api.rank(o.node));
                let name = o.name.clone();
                (
                    o.name.clone(),
                    quote!(::mithril::rt::plan::take::<#t, #d>(&mut __outs, #k, #name)?),
                )
            })
            .collect();
        // the buffers' new values (`update`): where each is in `__outs`, and its param
        self.upd_takes = order
            .iter()
            .enumerate()
            .filter_map(|(k, &o)| crate::ir::update_param(&self.g.outputs[o].name).map(|i| (k, i)))
            .collect();
        let first_grad = outs.len() + self.upd_takes.len();
        let n_outs = self.g.outputs.len();
        if !self.donate_pairs.is_empty() {
            // `donate`: the body of `__evaluate_into` (`__outs`, `__donate`, `__donated` are
            // its arguments; see `donate.rs`)
            let body = quote! {
                static __PLAN: ::std::sync::OnceLock<::std::result::Result<::mithril::rt::plan::Plan, ::std::string::String>> = ::std::sync::OnceLock::new();
                let __plan = #plan;
                #views
                ::mithril::rt::plan::run_donating(
                    __plan,
                    &self.#ws_field,
                    || ::mithril::rt::Workspace::new(Self::#life_const, false, #max).named(#model),
                    __views.get(#model)?,
                    __outs,
                    __donate,
                    __donated,
                )?;
            };
            return (body, outs, first_grad);
        }
        if quant {
            self.qplan_fn = Some(quote! {
                #[doc(hidden)]
                #[allow(clippy::needless_question_mark)]
                fn __mithril_qplan() -> ::mithril::rt::Result<&'static ::mithril::rt::plan::Plan> {
                    static __PLAN: ::std::sync::OnceLock<::std::result::Result<::mithril::rt::plan::Plan, ::std::string::String>> = ::std::sync::OnceLock::new();
                    ::std::result::Result::Ok(#plan)
                }
            });
            let body = quote! {
                let __plan = Self::__mithril_qplan()?;
                #views
                let mut __outs: [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_outs] =
                    ::std::array::from_fn(|_| ::std::option::Option::None);
                ::mithril::rt::plan::run_with(
                    __plan,
                    &self.#ws_field,
                    || ::mithril::rt::Workspace::new(Self::#life_const, false, #max).named(#model),
                    __views.get(#model)?,
                    &mut __outs,
                    __q,
                )?;
            };
            return (body, outs, first_grad);
        }
        let fallback =
            quote!(|| ::mithril::rt::Workspace::new(Self::#life_const, false, #max).named(#model));
        let run = self.run_call(ws_field, fallback);
        let body = quote! {
            static __PLAN: ::std::sync::OnceLock<::std::result::Result<::mithril::rt::plan::Plan, ::std::string::String>> = ::std::sync::OnceLock::new();
            let __plan = #plan;
            #views
            let mut __outs: [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_outs] =
                ::std::array::from_fn(|_| ::std::option::Option::None);
            #run
        };
        (body, outs, first_grad)
    }
}
