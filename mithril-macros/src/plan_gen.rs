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

/// A fused expression as program instructions (mirrors `Gen::lower_fexpr`: operands converted to
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

impl Gen<'_> {
    /// Index of the view of node `id` (an input, param or seed) in the plan's `views`.
    fn view_index(&self, id: NodeId) -> Option<usize> {
        let g = self.g;
        match g.nodes[id].op {
            Op::Input(i) => Some(i),
            Op::Param(i) => Some(g.inputs.len() + i),
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
            Dim::Sym(s) => Some(format!("y{}", self.sym_slot(&s))),
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
                RDim::Sym(1, names) if names.len() == 1 => format!("s{}", self.sym_slot(&names[0])),
                _ => "a".to_string(),
            })
            .collect();
        let _ = writeln!(
            out,
            "C {view} {} {} {} {} {}",
            q(terminal),
            q(&self.expected_str(id)),
            flag(s.rest.is_some()),
            specs.len(),
            specs.join(" ")
        );
    }

    /// The plan text of this graph.
    pub(crate) fn plan_text(&mut self) -> String {
        let g = self.g;
        let mut out = String::new();
        let syms: Vec<String> = g.syms.iter().map(|s| q(s)).collect();
        let _ = writeln!(
            out,
            "M {} {} {}",
            q(&self.inp.name.to_string()),
            syms.len(),
            syms.join(" ")
        );
        for i in &g.inputs {
            self.plan_check(&mut out, i.node, &format!("input `{}`", i.name));
        }
        for p in &g.params {
            self.plan_check(&mut out, p.node, &format!("param `{}`", p.dotted()));
        }
        for (id, n) in g.nodes.iter().enumerate() {
            if let Op::Seed(i) = n.op {
                let name = format!("output gradient `{}`", g.outputs[i].name);
                self.plan_check(&mut out, id, &name);
            }
        }
        for id in 0..g.nodes.len() {
            let op = match self.plan_op(id) {
                Ok(op) => op,
                Err(e) => {
                    self.errors.push(syn::Error::new(g.nodes[id].span, e));
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
            let what = match &g.nodes[id].op {
                Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Boundary(_) => String::new(),
                _ => self.what(id),
            };
            let _ = writeln!(
                out,
                "N {} {home} {op} {} {}",
                self.dtype(id).name(),
                list(&args),
                q(&what)
            );
        }
        let outs: Vec<usize> = g.outputs.iter().map(|o| o.node).collect();
        let _ = writeln!(out, "O {}", list(&outs));
        out
    }

    /// The op of node `id` in plan text.
    fn plan_op(&self, id: NodeId) -> Result<String, String> {
        let g = self.g;
        let n = &g.nodes[id];
        let t = self.dtype(id);
        let arg_dts: Vec<DType> = n.args.iter().map(|&a| self.dtype(a)).collect();
        Ok(match &n.op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) => {
                format!("view {}", self.view_index(id).unwrap_or(0))
            }
            Op::Boundary(_) => "alias".into(),
            Op::Const(s) => format!("const {}", lit(*s, t)),
            Op::Fused(e) => {
                let label = n.label.clone().unwrap_or_else(|| match e {
                    FExpr::Op(p, ..) => p.name().to_string(),
                    _ => "elementwise".into(),
                });
                format!("fused {} {}", q(&label), ProgText::program(e, &arg_dts, t)?)
            }
            Op::FusedMatmul { ta, tb, expr } => {
                let mut dts = vec![t];
                dts.extend_from_slice(&arg_dts[2.min(arg_dts.len())..]);
                format!(
                    "fmm {} {} {}",
                    flag(*ta),
                    flag(*tb),
                    ProgText::program(expr, &dts, t)?
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
                    ProgText::program(&e, &arg_dts, t)?
                )
            }
            Op::Prim(p) => {
                let dim = |d: &Dim| self.plan_dim(d);
                let shape = g.shape_of(id);
                let cx = PlanCx {
                    out: t,
                    shape: shape.as_ref(),
                    dim: &dim,
                };
                p.plan(&cx)?
            }
        })
    }

    /// The views `run` gets: inputs, params, then output-gradient seeds.
    fn plan_views(&self) -> Vec<TokenStream> {
        let g = self.g;
        let mut views = Vec::new();
        for i in &g.inputs {
            let f = format_ident!("{}", i.name);
            views.push(quote!(::mithril::rt::plan::view(inputs.#f.view())));
        }
        for p in &g.params {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            views.push(quote!(::mithril::rt::plan::view(params.#(#fields).*.view())));
        }
        for n in &g.nodes {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                views.push(quote!(::mithril::rt::plan::view(output_grads.#f.view())));
            }
        }
        views
    }

    /// The body of a plan-run function: runs the plan with the workspace in `ws_field` and
    /// returns `result` built from the outputs (`outs`: per output, its name and the
    /// expression taking it from `__outs`).
    pub(crate) fn plan_body(
        &mut self,
        ws_field: &syn::Ident,
        life_const: &syn::Ident,
    ) -> (TokenStream, Vec<(String, TokenStream)>) {
        let text = self.plan_text();
        let views = self.plan_views();
        let model = self.inp.name.to_string();
        let max = match self.inp.max_memory_gb {
            Some(x) => quote!(::std::option::Option::Some(#x)),
            None => quote!(::std::option::Option::None),
        };
        let outs = self
            .g
            .outputs
            .iter()
            .enumerate()
            .map(|(k, o)| {
                let t = self.elem_ty(o.node);
                let d = super::ix(self.rank(o.node));
                let name = o.name.clone();
                (
                    o.name.clone(),
                    quote!(::mithril::rt::plan::take::<#t, #d>(&mut __outs, #k, #name)?),
                )
            })
            .collect();
        let n_outs = self.g.outputs.len();
        let body = quote! {
            static __PLAN: ::std::sync::OnceLock<::std::result::Result<::mithril::rt::plan::Plan, ::std::string::String>> = ::std::sync::OnceLock::new();
            let __plan = ::mithril::rt::plan::Plan::cached(&__PLAN, #text)?;
            let __views = [#(#views),*];
            let mut __outs: [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_outs] =
                ::std::array::from_fn(|_| ::std::option::Option::None);
            ::mithril::rt::plan::run(
                __plan,
                &self.#ws_field,
                || ::mithril::rt::Workspace::new(Self::#life_const, false, #max).named(#model),
                &__views,
                &mut __outs,
            )?;
        };
        (body, outs)
    }
}
