//! Step 1: flattening. Instantiates a logical model and every submodel it uses into one flat
//! [`Graph`]: hyperparameters are evaluated, compile-time `if`/`for` unrolled, instances named,
//! params created once per instance (a second call of the same instance shares them), and every
//! submodel input crossing becomes a `Boundary` node carrying the submodel's declared shape, which
//! shape inference checks.
//!
//! This module holds the flattener's state and its driver (the top-level model, frames,
//! statements in order, the step budget); the rest of the `impl Flattener` is split by what it
//! flattens: [`stmts`] (with [`decls`]), [`exprs`], [`calls`] (primitive and model calls) and [`instances`]
//! (model instances and their application).

mod calls;
mod control;
mod decls;
mod exprs;
mod instances;
mod loops;
mod stmts;

use crate::frontend::hyper::{binop, HEnv, HVal};
use crate::frontend::library::Library;
use crate::frontend::resolve::{bind_terminals, Arg};
use crate::frontend::syntax::{
    is_symbol, DimDecl, ModelDef, ModelKind, Pat, ShapeDecl, Stmt, TypeDecl,
};
pub use crate::ir::glob_match;
use crate::ir::{
    DType, Dim, Graph, Init, InputInfo, Node, NodeId, Op, OutputInfo, ParamInfo, Scalar, Shape, DT,
};
use crate::prims::{self, AttrVal, SliceArg};
use proc_macro2::Span;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use syn::spanned::Spanned;
use syn::{Expr, Ident};

/// Most items a compile-time range or `for` loop may have.
pub const MAX_UNROLL: usize = 10_000;

/// Where a model definition comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// This invocation.
    Local,
    /// mithril's model library (written in the DSL, compiled into the macro).
    Library,
    /// Carried from another invocation; `foreign` when from another crate.
    Carried { krate: String, foreign: bool },
}

/// A model definition with the names visible from inside it.
pub struct DefEntry {
    pub def: ModelDef,
    pub origin: Origin,
    /// Names resolvable from inside this definition (its own deps).
    pub scope: Rc<Scope>,
}

/// A name -> definition table.
#[derive(Default)]
pub struct Scope {
    pub defs: BTreeMap<String, Rc<DefEntry>>,
}

/// Options of flattening taken from the compile options.
pub struct FlattenOpts {
    pub default_dtype: DType,
    /// `shapes:` overrides per input (`None` entries keep the declared dim).
    pub shapes: BTreeMap<String, (Vec<Option<u64>>, Span)>,
    /// `types:` overrides per input.
    pub types: BTreeMap<String, (DType, Span)>,
    /// `constants:`: scalar inputs baked in.
    pub constants: BTreeMap<String, (Scalar, Span)>,
    /// `dynamic_control_flow:` (default `true`): `false` makes a run-time `if` a compile error.
    pub dynamic_control_flow: bool,
}

#[derive(Clone, Debug)]
enum Value {
    Tensor(NodeId),
    Inst(usize),
    Multi(Vec<(String, NodeId)>),
    Hyper(HVal),
    Const(HVal, Option<DType>),
    Poison,
}

struct Inst {
    entry: Rc<DefEntry>,
    hyper: HEnv,
    path: Vec<String>,
    params: BTreeMap<String, NodeId>,
    applied: bool,
    /// The instances its body creates, in creation order: created at the first call and reused
    /// by every later call (a model's sub-blocks exist once per instance of the model).
    subs: Vec<usize>,
}

struct Frame {
    vars: HashMap<String, Value>,
    hyper: HEnv,
    path: Vec<String>,
    scope: Rc<Scope>,
    syms: HashMap<String, Dim>,
    rest: Option<u32>,
    counters: HashMap<String, usize>,
    model: String,
    /// Sub mode: the args bound to the inputs, by input name; the instance.
    sub: Option<(HashMap<String, NodeId>, usize)>,
    outputs: Vec<(String, NodeId)>,
    declared: HashMap<String, Span>,
    /// The params and buffers this body declared (their param indices), for `update`.
    params_here: HashMap<String, usize>,
    /// Defined in this invocation: sees the invocation's other models.
    local: bool,
    /// The body of a `train` model (loss and regularize statements allowed).
    train: bool,
    /// Sub mode: the call-site tokens of the argument bound to each input (boundary errors
    /// point there).
    arg_spans: HashMap<String, Span>,
    /// Sub mode: how many instances this call of the body has created so far (the index into
    /// the instance's `subs`).
    created: usize,
    /// The run-time guard when the frame was entered: an `output` under another one is inside
    /// a run-time `if` of this body.
    guard: Option<NodeId>,
    /// The run-time loop whose body the frame was entered in (an `output` inside a loop's
    /// body is an error).
    region: Option<NodeId>,
}

/// The flattener.
pub struct Flattener<'a> {
    pub g: Graph,
    pub errors: Vec<syn::Error>,
    /// Model paths that were not found (fetched through carriers by the caller).
    pub missing: Vec<syn::Path>,
    opts: &'a FlattenOpts,
    library: &'a Library,
    locals: &'a Scope,
    insts: Vec<Inst>,
    stack: Vec<String>,
    /// While inlining a library model or a model of another crate: the local call that errors
    /// point at, the context for messages, and whether to add the foreign location.
    anchor: Option<(Span, String, bool)>,
    /// The submodel calls being flattened, innermost last: the call's tokens and
    /// "`Block(width = 16)` called as `b2`" (calls inside a library model or a model of another
    /// crate are not added: their errors already point at the local call).
    chain: Vec<(Span, String)>,
    /// The position of the slice argument being evaluated and the symbolic bounds met so far
    /// (moved to [`Graph::slice_bounds`] with the slice node).
    slice_pos: usize,
    pending_bounds: Vec<crate::ir::SymBound>,
    /// `chain` innermost first, shared by the nodes built under it (rebuilt when it changes).
    chain_rc: Option<Rc<Vec<(Span, String)>>>,
    /// Names of top-level instances already used (param tree roots).
    used_paths: HashMap<Vec<String>, usize>,
    /// Models passed by name as `fn` values (`MLP(activations = [Swish])`): callable inside the
    /// model they are passed to, even where that model's own definition cannot name them.
    passed: HashMap<String, Rc<DefEntry>>,
    /// Loss terms of a `train` model.
    pub losses: Vec<(NodeId, Span)>,
    /// `update` statements: each updated buffer (param index) and its value after a call
    /// (made outputs `__upd_<param>` at the end).
    updates: BTreeMap<usize, (NodeId, Span)>,
    /// `regularize` statements of a `train` model: (kind, coefficient, glob, spans).
    regs: Vec<(syn::Ident, f64, syn::LitStr)>,
    /// Statements and loop iterations executed so far (bounded by [`MAX_STEPS`]).
    steps: usize,
    /// The "too large" error was reported.
    over_budget: bool,
    /// Inside the branch of a run-time `if`: the guard of the nodes being built
    /// ([`crate::ir::Node::guard`]).
    guard: Option<NodeId>,
    /// Inside the body of a run-time loop: its head ([`crate::ir::Node::region`]).
    region: Option<NodeId>,
    /// Names the innermost run-time loop's body binds that do not exist before it (read
    /// before they are set: an error that says so).
    unset_loop_vars: Vec<String>,
    /// The run-time loops being flattened, innermost last.
    loops: Vec<loops::LoopCx>,
    /// The `for t in 0..T` over a fixed dim being unrolled (`dynamic_control_flow: false`),
    /// innermost last.
    unrolled: Vec<loops::UnrolledScan>,
}

/// Most statements and loop iterations one flattening may execute (nested loops).
pub const MAX_STEPS: usize = 200_000;

fn err(span: Span, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new(span, msg.to_string())
}

fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            let prev_lower = i > 0
                && name
                    .chars()
                    .nth(i - 1)
                    .is_some_and(|p| p.is_ascii_lowercase() || p.is_ascii_digit());
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// The input terminal names of a model, in declaration order.
pub fn input_names(def: &ModelDef) -> Vec<String> {
    def.body
        .iter()
        .filter_map(|s| match s {
            Stmt::Input { name, .. } => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

impl<'a> Flattener<'a> {
    pub fn new(opts: &'a FlattenOpts, library: &'a Library, locals: &'a Scope) -> Self {
        Flattener {
            g: Graph::default(),
            errors: Vec::new(),
            missing: Vec::new(),
            opts,
            library,
            locals,
            insts: Vec::new(),
            stack: Vec::new(),
            anchor: None,
            chain: Vec::new(),
            chain_rc: None,
            slice_pos: 0,
            pending_bounds: Vec::new(),
            used_paths: HashMap::new(),
            passed: HashMap::new(),
            losses: Vec::new(),
            updates: BTreeMap::new(),
            regs: Vec::new(),
            steps: 0,
            over_budget: false,
            guard: None,
            region: None,
            unset_loop_vars: Vec::new(),
            loops: Vec::new(),
            unrolled: Vec::new(),
        }
    }

    fn error(&mut self, span: Span, msg: impl std::fmt::Display) {
        let mut e = match &self.anchor {
            Some((a, ctx, false)) => err(*a, format!("{msg}\n({ctx})")),
            Some((a, ctx, true)) => err(*a, format!("{msg}\n({ctx}, at {})", location(span))),
            None => err(span, msg),
        };
        if let Some(chain) = self.call_chain() {
            crate::ir::with_call_notes(&mut e, &chain);
        }
        self.errors.push(e);
    }

    /// The current chain of submodel calls, innermost first (`None` at top level).
    fn call_chain(&mut self) -> Option<Rc<Vec<(Span, String)>>> {
        if self.chain.is_empty() {
            return None;
        }
        if self.chain_rc.is_none() {
            self.chain_rc = Some(Rc::new(self.chain.iter().rev().cloned().collect()));
        }
        self.chain_rc.clone()
    }

    fn span(&self, s: Span) -> Span {
        match &self.anchor {
            Some((a, _, _)) => *a,
            None => s,
        }
    }

    fn node(&mut self, op: Op, args: Vec<NodeId>, span: Span, f: &Frame) -> NodeId {
        let note = match &self.anchor {
            Some((_, ctx, true)) => Some(format!("{ctx}, at {}", location(span))),
            _ => None,
        };
        let span = self.span(span);
        if let Some(note) = note {
            self.g.notes.insert(self.g.nodes.len(), note);
        }
        if let Some(chain) = self.call_chain() {
            self.g.calls.insert(self.g.nodes.len(), chain);
        }
        if matches!(op, Op::Prim(prims::Prim::Slice(_))) && !self.pending_bounds.is_empty() {
            let b = std::mem::take(&mut self.pending_bounds);
            self.g.slice_bounds.insert(self.g.nodes.len(), b);
        }
        // terminals and constants exist whatever branch runs
        let (guard, region) = match op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Mode => (None, None),
            // a constant exists whatever branch runs, but in a loop only once it ran
            Op::Const(_) => (None, self.region),
            _ => (self.guard, self.region),
        };
        self.g.push(Node {
            op,
            args,
            span,
            label: None,
            scope: f.path.join("."),
            shape: None,
            dtype: None,
            guard,
            region,
        })
    }

    /// Flatten `entry` as the physical model; `hyper_args` are the hyperparameters a `compile`
    /// item sets (`compile Lin64 = Linear(64) { .. }`), with the span of the call.
    pub fn flatten_top(&mut self, entry: Rc<DefEntry>, hyper_args: Option<(&[Expr], Span)>) {
        let def = &entry.def;
        let mut hyper = HEnv::new();
        if let Some((args, span)) = hyper_args {
            let mut caller = self.frame(&entry, HEnv::new(), vec![], None);
            match self.bind_hypers(&entry, args.iter().collect(), span, &mut caller) {
                Some(h) => hyper = h,
                None => return,
            }
        }
        for h in def.hypers.iter().filter(|_| hyper_args.is_none()) {
            match &h.default {
                Some(d) => {
                    let mut f = self.frame(&entry, HEnv::new(), vec![], None);
                    if let Some(v) = self.eval_hyper(d, &mut f) {
                        hyper.insert(h.name.to_string(), v);
                    }
                }
                None => self.error(
                    h.name.span(),
                    format!(
                        "hyperparameter `{}` of `{}` needs a default to compile `{}` on its own",
                        h.name, def.name, def.name
                    ),
                ),
            }
        }
        let mut f = self.frame(&entry, hyper, vec![], None);
        self.stack.push(def.name.to_string());
        let body = def.body.clone();
        self.exec(&body, &mut f);
        self.stack.pop();
        if def.kind == ModelKind::Train {
            self.finish_train(def, &f);
        }
        // buffer updates: hidden outputs after the model's own
        for (&k, &(v, _)) in &self.updates {
            self.g.outputs.push(OutputInfo {
                name: format!("{}{k}", crate::ir::UPDATE_PREFIX),
                node: v,
            });
        }
        if def.kind == ModelKind::Model && self.g.outputs.is_empty() && self.errors.is_empty() {
            self.error(
                def.name.span(),
                format!("model `{}` has no `output`", def.name),
            );
        }
        let declared = input_names(def);
        for (name, (_, sp)) in &self.opts.shapes {
            if !declared.contains(name) && !self.g.inputs.iter().any(|i| &i.name == name) {
                self.errors.push(err(
                    *sp,
                    format!(
                        "`shapes:` names `{name}`, which is no input of `{}`",
                        def.name
                    ),
                ));
            }
        }
        for (name, (_, sp)) in &self.opts.constants {
            if !def
                .body
                .iter()
                .any(|s| matches!(s, Stmt::Input { name: n, .. } if n == name))
            {
                self.errors.push(err(
                    *sp,
                    format!(
                        "`constants:` names `{name}`, which is no input of `{}`",
                        def.name
                    ),
                ));
            }
        }
        for (name, (_, sp)) in &self.opts.types {
            if !declared.contains(name) && !self.g.inputs.iter().any(|i| &i.name == name) {
                self.errors.push(err(
                    *sp,
                    format!(
                        "`types:` names `{name}`, which is no input of `{}`",
                        def.name
                    ),
                ));
            }
        }
    }

    /// A `train` model: the `loss` output is the sum of the loss statements plus the
    /// regularization terms.
    fn finish_train(&mut self, def: &ModelDef, f: &Frame) {
        if self.losses.is_empty() && self.errors.is_empty() {
            self.error(
                def.name.span(),
                format!("train model `{}` has no `loss` statement", def.name),
            );
            return;
        }
        if self.g.params.is_empty() && self.errors.is_empty() {
            self.error(
                def.name.span(),
                format!("train model `{}` has no param to train", def.name),
            );
            return;
        }
        if self.g.outputs.iter().any(|o| o.name == "loss") {
            self.error(def.name.span(), "a train model's `loss` output is made from its `loss` statements; name the declared output otherwise");
            return;
        }
        let mut total: Option<NodeId> = None;
        for (id, sp) in self.losses.clone() {
            total = Some(match total {
                None => id,
                Some(t) => self.node(Op::Prim(prims::Prim::Add), vec![t, id], sp, f),
            });
        }
        for (kind, coef, glob) in self.regs.clone() {
            let pat = glob.value();
            let matched: Vec<NodeId> = self
                .g
                .params
                .iter()
                .filter(|p| glob_match(&pat, &p.dotted()))
                .map(|p| p.node)
                .collect();
            if matched.is_empty() {
                let names: Vec<String> = self.g.params.iter().map(|p| p.dotted()).collect();
                self.error(
                    glob.span(),
                    format!(
                        "`{pat}` matches no param; the params are: {}",
                        names.join(", ")
                    ),
                );
                continue;
            }
            let sp = glob.span();
            for p in matched {
                let t = if kind == "l2" {
                    self.node(Op::Prim(prims::Prim::Square), vec![p], sp, f)
                } else {
                    self.node(Op::Prim(prims::Prim::Abs), vec![p], sp, f)
                };
                let s = self.node(
                    Op::Prim(prims::Prim::Reduce(prims::ReduceKind::Sum, vec![], false)),
                    vec![t],
                    sp,
                    f,
                );
                let c = self.node(Op::Const(Scalar::Float(coef)), vec![], sp, f);
                let term = self.node(Op::Prim(prims::Prim::Mul), vec![s, c], sp, f);
                total = Some(match total {
                    None => term,
                    Some(t) => self.node(Op::Prim(prims::Prim::Add), vec![t, term], sp, f),
                });
            }
        }
        if let Some(t) = total {
            self.g.nodes[t].label.get_or_insert_with(|| "loss".into());
            self.g.outputs.insert(
                0,
                OutputInfo {
                    name: "loss".into(),
                    node: t,
                },
            );
        }
    }

    fn frame(
        &self,
        entry: &Rc<DefEntry>,
        hyper: HEnv,
        path: Vec<String>,
        sub: Option<(HashMap<String, NodeId>, usize)>,
    ) -> Frame {
        Frame {
            vars: HashMap::new(),
            hyper,
            path,
            scope: entry.scope.clone(),
            syms: HashMap::new(),
            rest: None,
            counters: HashMap::new(),
            model: entry.def.name.to_string(),
            sub,
            outputs: Vec::new(),
            declared: HashMap::new(),
            params_here: HashMap::new(),
            local: entry.origin == Origin::Local,
            train: entry.def.kind == ModelKind::Train,
            arg_spans: HashMap::new(),
            created: 0,
            guard: self.guard,
            region: self.region,
        }
    }

    fn declare(&mut self, f: &mut Frame, name: &Ident, what: &str) -> bool {
        let n = name.to_string();
        if f.declared.contains_key(&n) {
            self.error(
                name.span(),
                format!("duplicate {what} name `{n}` in model `{}`", f.model),
            );
            return false;
        }
        f.declared.insert(n, name.span());
        true
    }

    // ---------------------------------------------------------------- statements

    fn exec(&mut self, stmts: &[Stmt], f: &mut Frame) {
        for s in stmts {
            if !self.step(s) {
                return;
            }
            self.stmt(s, f);
        }
    }

    /// Count one statement or loop iteration; `false` once the flattening budget is spent.
    fn step(&mut self, s: &Stmt) -> bool {
        self.steps += 1;
        if self.steps <= MAX_STEPS {
            return true;
        }
        if !self.over_budget {
            self.over_budget = true;
            let sp = match s {
                Stmt::For { iter, .. } => iter.span(),
                Stmt::While { span, .. } => *span,
                Stmt::Let { expr, .. } => expr.span(),
                Stmt::Input { span, .. } | Stmt::Param { span, .. } => *span,
                _ => Span::call_site(),
            };
            self.error(
                sp,
                format!("this model is too large to flatten: more than {MAX_STEPS} statements and loop iterations (nested `for` loops?)"),
            );
        }
        false
    }
}

/// A compile-time value as DSL source text (for messages).
fn hval_text(v: &HVal) -> String {
    match v {
        HVal::Int(i) => i.to_string(),
        HVal::Float(x) => format!("{x:?}"),
        HVal::Bool(b) => b.to_string(),
        HVal::Str(s) => format!("{s:?}"),
        HVal::List(xs) => format!(
            "[{}]",
            xs.iter().map(hval_text).collect::<Vec<_>>().join(", ")
        ),
        HVal::Func(f) => f.clone(),
        HVal::DType(t) => t.to_string(),
        HVal::Dim(d) => format!("{d:?}"),
        HVal::DimPlus(d, c) => format!("{d:?} + {c}"),
        HVal::None => "None".into(),
    }
}

/// Math functions that fold on a compile-time number (`sqrt(d_model / n_heads)` is a float
/// constant).
fn const_math(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "sqrt" => f64::sqrt,
        "exp" => f64::exp,
        "log" => f64::ln,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tanh" => f64::tanh,
        _ => return None,
    })
}

fn path_key(p: &syn::Path) -> String {
    p.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// `file:line:column` of a span (1-based line and column), for messages about tokens rustc
/// cannot show (they come from another crate).
fn location(span: Span) -> String {
    let start = span.start();
    format!("{}:{}:{}", span.file(), start.line, start.column + 1)
}

/// The closest name by edit distance (for "did you mean").
pub fn closest<'b>(name: &str, candidates: impl Iterator<Item = &'b str>) -> Option<&'b str> {
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        let d = edit_distance(name, c);
        if d <= 2.max(name.len() / 3) && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for i in 1..=a.len() {
        let mut cur = vec![i; b.len() + 1];
        for j in 1..=b.len() {
            let c = if a[i - 1] == b[j - 1] { 0 } else { 1 };
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + c);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `fc1.output` for a name inside instance `fc1`; plain at top level.
fn scoped(path: &[String], name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{}.{name}", path.join("."))
    }
}
