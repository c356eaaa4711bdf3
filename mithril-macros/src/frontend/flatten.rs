//! Step 1: flattening. Instantiates a logical model and every submodel it uses into one flat
//! [`Graph`]: hyperparameters are evaluated, compile-time `if`/`for` unrolled, instances named,
//! params created once per instance (a second call of the same instance shares them), and every
//! submodel input crossing becomes a `Boundary` node carrying the submodel's declared shape, which
//! shape inference checks.

use crate::frontend::hyper::{binop, HEnv, HVal};
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
}

/// The flattener.
pub struct Flattener<'a> {
    pub g: Graph,
    pub errors: Vec<syn::Error>,
    /// Model paths that were not found (fetched through carriers by the caller).
    pub missing: Vec<syn::Path>,
    opts: &'a FlattenOpts,
    library: &'a Scope,
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
    /// `regularize` statements of a `train` model: (kind, coefficient, glob, spans).
    regs: Vec<(syn::Ident, f64, syn::LitStr)>,
    /// Statements and loop iterations executed so far (bounded by [`MAX_STEPS`]).
    steps: usize,
    /// The "too large" error was reported.
    over_budget: bool,
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
    pub fn new(opts: &'a FlattenOpts, library: &'a Scope, locals: &'a Scope) -> Self {
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
            regs: Vec::new(),
            steps: 0,
            over_budget: false,
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
        self.g.push(Node {
            op,
            args,
            span,
            label: None,
            scope: f.path.join("."),
            shape: None,
            dtype: None,
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
            local: entry.origin == Origin::Local,
            train: entry.def.kind == ModelKind::Train,
            arg_spans: HashMap::new(),
            created: 0,
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

    fn shape_from_decl(
        &mut self,
        decl: Option<&ShapeDecl>,
        f: &mut Frame,
        top_input: bool,
        name: &str,
    ) -> Option<Shape> {
        let Some(decl) = decl else {
            return Some(Shape::scalar());
        };
        let mut shape = Shape {
            rest: None,
            dims: vec![],
        };
        for (i, d) in decl.dims.iter().enumerate() {
            match d {
                DimDecl::Ellipsis(sp) => {
                    if i != 0 {
                        self.error(*sp, "`...` may only stand first in a shape");
                        return None;
                    }
                    let r = match f.rest {
                        Some(r) => r,
                        None => {
                            let r = self.g.env.new_rest_var(format!("... of {}", f.model));
                            f.rest = Some(r);
                            r
                        }
                    };
                    shape.rest = Some(r);
                }
                DimDecl::Lit(n) => shape.dims.push(Dim::Known(*n)),
                DimDecl::Any => {
                    let v = self.g.env.new_dim_var(if top_input {
                        format!("_ (dim {i} of `{name}`)")
                    } else {
                        "_".into()
                    });
                    shape.dims.push(v)
                }
                DimDecl::Sym(id) => {
                    let s = id.to_string();
                    let d = match f.syms.get(&s) {
                        Some(d) => d.clone(),
                        None => {
                            let d = if f.sub.is_none() {
                                // a named unification variable: it may meet a constant or
                                // another symbol; what stays open becomes `Dim::Sym` at the end
                                let v = self.g.env.new_dim_var(s.clone());
                                self.g.sym_vars.push((s.clone(), v.clone()));
                                v
                            } else {
                                self.g.env.new_dim_var(format!("{s} of {}", f.model))
                            };
                            f.syms.insert(s, d.clone());
                            d
                        }
                    };
                    shape.dims.push(d);
                }
                DimDecl::Expr(e)
                    if matches!(&**e, syn::Expr::Path(p) if p.path.get_ident().is_some_and(|id| {
                        let n = id.to_string();
                        !f.vars.contains_key(&n) && !f.hyper.contains_key(&n)
                    })) =>
                {
                    let syn::Expr::Path(p) = &**e else {
                        return None;
                    };
                    let id = &p.path.segments[0].ident;
                    let upper = id.to_string().to_ascii_uppercase();
                    self.error(
                        id.span(),
                        format!("unknown dim `{id}`: a dim is an integer, an UPPER-CASE symbol (`{upper}`), `_`, `...` or an expression over the model's hyperparameters, and `{}` has no hyperparameter `{id}`", f.model),
                    );
                    return None;
                }
                DimDecl::Expr(e) => match self.eval_hyper(e, f) {
                    Some(HVal::Int(n)) if n >= 0 => shape.dims.push(Dim::Known(n as u64)),
                    Some(HVal::Dim(d)) => shape.dims.push(d),
                    Some(v) => {
                        let shown = match &v {
                            HVal::Int(i) => format!("the int {i}"),
                            HVal::Float(x) => format!("the float {x}"),
                            other => format!("a {}", other.kind()),
                        };
                        self.error(e.span(), format!("a dim must be a non-negative integer, an UPPER-CASE symbol, `_` or `...`; this is {shown}"));
                        return None;
                    }
                    None => return None,
                },
            }
        }
        Some(shape)
    }

    fn dtype_decl(&mut self, ty: &TypeDecl) -> Option<Option<DType>> {
        match &ty.dtype {
            None => Some(None),
            Some(id) => match DType::parse(&id.to_string()) {
                Some(t) => Some(Some(t)),
                None => {
                    self.error(id.span(), format!("unknown dtype `{id}`; expected one of f32, f64, f16, bf16, i32, i64, bool"));
                    None
                }
            },
        }
    }

    fn stmt(&mut self, s: &Stmt, f: &mut Frame) {
        match s {
            Stmt::Input { name, ty, span } => {
                if !self.declare(f, name, "input") {
                    return;
                }
                // until the input is made: uses of a failed declaration stay silent
                f.vars.insert(name.to_string(), Value::Poison);
                // each input's `...` is its own: inputs of different ranks may meet by broadcasting
                f.rest = None;
                let Some(dt) = self.dtype_decl(ty) else {
                    return;
                };
                let n = name.to_string();
                if let Some((args, _)) = &f.sub {
                    let Some(&arg) = args.get(&n) else { return };
                    let Some(pattern) = self.shape_from_decl(ty.shape.as_ref(), f, false, &n)
                    else {
                        f.vars.insert(n, Value::Poison);
                        return;
                    };
                    let at = f.arg_spans.get(&n).copied().unwrap_or(*span);
                    let id = self.node(Op::Boundary(pattern), vec![arg], at, f);
                    self.g.nodes[id].label = Some(format!("`{}` input `{n}`", f.model));
                    self.g.nodes[id].dtype = dt.map(DT::Known);
                    f.vars.insert(n, Value::Tensor(id));
                } else {
                    if let Some((value, csp)) = self.opts.constants.get(&n) {
                        if ty.shape.as_ref().is_some_and(|d| !d.dims.is_empty()) {
                            self.errors.push(err(
                                *csp,
                                format!(
                                    "`constants:` bakes in scalars; input `{n}` is not a scalar"
                                ),
                            ));
                            return;
                        }
                        let dtype = self
                            .opts
                            .types
                            .get(&n)
                            .map(|t| t.0)
                            .or(dt)
                            .unwrap_or(self.opts.default_dtype);
                        let id = self.node(Op::Const(*value), vec![], *span, f);
                        self.g.nodes[id].label = Some(n.clone());
                        self.g.nodes[id].dtype = Some(DT::Known(dtype));
                        f.vars.insert(n, Value::Tensor(id));
                        return;
                    }
                    // top level: apply `shapes:` / `types:` overrides
                    let mut decl = ty.shape.clone();
                    if let Some((over, osp)) = self.opts.shapes.get(&n) {
                        match &mut decl {
                            Some(d) if d.dims.iter().any(|x| matches!(x, DimDecl::Ellipsis(_))) => {
                                // `...` takes the override's leading dims
                                let tail = d.dims.len() - 1;
                                if over.len() < tail {
                                    self.errors.push(err(*osp, format!("`shapes:` gives `{n}` rank {}, but it is declared with at least {tail} dims", over.len())));
                                    return;
                                }
                                let lead = over.len() - tail;
                                let mut dims: Vec<DimDecl> = over[..lead]
                                    .iter()
                                    .map(|o| match o {
                                        Some(k) => DimDecl::Lit(*k),
                                        None => DimDecl::Any,
                                    })
                                    .collect();
                                dims.extend(d.dims[1..].iter().cloned());
                                d.dims = dims;
                            }
                            Some(d) if d.dims.len() == over.len() => {}
                            Some(d) => {
                                self.errors.push(err(*osp, format!("`shapes:` gives `{n}` rank {}, but it is declared with rank {}", over.len(), d.dims.len())));
                                return;
                            }
                            None => {
                                self.errors.push(err(*osp, format!("`shapes:` gives `{n}` a shape, but it is declared as a scalar")));
                                return;
                            }
                        }
                        if let Some(d) = &mut decl {
                            for (i, o) in over.iter().enumerate() {
                                let Some(k) = o else { continue };
                                match &d.dims[i] {
                                    DimDecl::Lit(m) if m != k => {
                                        self.errors.push(err(*osp, format!("`shapes:` sets dim {i} of `{n}` to {k}, but it is declared as {m}")));
                                        return;
                                    }
                                    DimDecl::Sym(id) => {
                                        let s = id.to_string();
                                        match f.syms.get(&s) {
                                            Some(Dim::Known(prev)) if prev != k => {
                                                self.errors.push(err(*osp, format!("`shapes:` sets {s} = {k} here, but {s} = {prev} elsewhere")));
                                                return;
                                            }
                                            _ => {
                                                f.syms.insert(s, Dim::Known(*k));
                                            }
                                        }
                                    }
                                    _ => d.dims[i] = DimDecl::Lit(*k),
                                }
                            }
                        }
                    }
                    let dt = match self.opts.types.get(&n) {
                        Some((t, _)) => Some(*t),
                        None => dt,
                    };
                    let Some(shape) = self.shape_from_decl(decl.as_ref(), f, true, &n) else {
                        return;
                    };
                    let idx = self.g.inputs.len();
                    let id = self.node(Op::Input(idx), vec![], *span, f);
                    self.g.nodes[id].label = Some(n.clone());
                    self.g.nodes[id].shape = Some(shape);
                    self.g.nodes[id].dtype = Some(DT::Known(dt.unwrap_or(self.opts.default_dtype)));
                    self.g.inputs.push(InputInfo {
                        name: n.clone(),
                        node: id,
                        span: name.span(),
                    });
                    f.vars.insert(n, Value::Tensor(id));
                }
            }
            Stmt::Param {
                name,
                ty,
                init,
                span,
            } => {
                if !self.declare(f, name, "param") {
                    return;
                }
                f.vars.insert(name.to_string(), Value::Poison);
                let Some(dt) = self.dtype_decl(ty) else {
                    return;
                };
                let n = name.to_string();
                let Some(shape) = self.shape_from_decl(ty.shape.as_ref(), f, false, &n) else {
                    f.vars.insert(n, Value::Poison);
                    return;
                };
                let inst = f.sub.as_ref().map(|(_, i)| *i);
                if let Some(i) = inst {
                    if let Some(&existing) = self.insts[i].params.get(&n) {
                        let id = self.node(Op::Boundary(shape), vec![existing], *span, f);
                        self.g.nodes[id].dtype = dt.map(DT::Known);
                        f.vars.insert(n, Value::Tensor(id));
                        return;
                    }
                }
                let init = match init {
                    None => Init::FanIn(None),
                    Some(e) => match self.parse_init(e, f) {
                        Some(i) => i,
                        None => return,
                    },
                };
                let mut path = f.path.clone();
                path.push(n.clone());
                let idx = self.g.params.len();
                let id = self.node(Op::Param(idx), vec![], *span, f);
                self.g.nodes[id].label = Some(path.join("."));
                self.g.nodes[id].shape = Some(shape);
                let dtv = match dt {
                    Some(t) => DT::Known(t),
                    None => self.g.env.new_dt_var(),
                };
                self.g.nodes[id].dtype = Some(dtv);
                self.g.params.push(ParamInfo {
                    path,
                    node: id,
                    init,
                    span: name.span(),
                });
                if let Some(i) = inst {
                    self.insts[i].params.insert(n.clone(), id);
                }
                f.vars.insert(n, Value::Tensor(id));
            }
            Stmt::Const {
                name,
                dtype,
                value,
                span,
            } => {
                let dt = match dtype {
                    None => None,
                    Some(id) => match DType::parse(&id.to_string()) {
                        Some(t) => Some(t),
                        None => {
                            self.error(id.span(), format!("unknown dtype `{id}`"));
                            return;
                        }
                    },
                };
                let _ = span;
                match self.eval_hyper(value, f) {
                    Some(v @ (HVal::Int(_) | HVal::Float(_) | HVal::Bool(_))) => {
                        f.vars.insert(name.to_string(), Value::Const(v, dt));
                    }
                    Some(v) => self.error(
                        value.span(),
                        format!("a `const` must be a number or bool, found {}", v.kind()),
                    ),
                    None => {
                        f.vars.insert(name.to_string(), Value::Poison);
                    }
                }
            }
            Stmt::Let { pat, expr } => {
                let hint = match pat {
                    Pat::Ident(i) => Some(i.clone()),
                    _ => None,
                };
                let v = self.eval(expr, f, hint.as_ref());
                match pat {
                    Pat::Ident(i) => {
                        if let Value::Tensor(id) = v {
                            if self.g.nodes[id].label.is_none() {
                                self.g.nodes[id].label = Some(scoped(&f.path, &i.to_string()));
                            }
                        }
                        f.vars.insert(i.to_string(), v);
                    }
                    Pat::Tuple(ids, sp) => {
                        match v {
                            Value::Multi(outs) => {
                                if outs.len() != ids.len() {
                                    self.error(*sp, format!(
                                    "this pattern binds {} names, but the model has {} outputs ({})",
                                    ids.len(),
                                    outs.len(),
                                    outs.iter().map(|o| o.0.as_str()).collect::<Vec<_>>().join(", ")
                                ));
                                    for i in ids {
                                        f.vars.insert(i.to_string(), Value::Poison);
                                    }
                                } else {
                                    for (i, (_, id)) in ids.iter().zip(outs) {
                                        f.vars.insert(i.to_string(), Value::Tensor(id));
                                    }
                                }
                            }
                            Value::Poison => {
                                for i in ids {
                                    f.vars.insert(i.to_string(), Value::Poison);
                                }
                            }
                            _ => {
                                self.error(*sp, "only a call of a model with several outputs can be destructured");
                                for i in ids {
                                    f.vars.insert(i.to_string(), Value::Poison);
                                }
                            }
                        }
                    }
                }
            }
            Stmt::Output { name, expr } => {
                if !self.declare(f, name, "output") {
                    return;
                }
                let n = name.to_string();
                let v = match expr {
                    Some(e) => self.eval(e, f, None),
                    None => match f.vars.get(&n) {
                        Some(v) => v.clone(),
                        None => {
                            self.error(name.span(), format!("`output {n};` names no binding; write `output {n} = <expr>;` or bind `{n}` first"));
                            Value::Poison
                        }
                    },
                };
                let sp = expr.as_ref().map(|e| e.span()).unwrap_or(name.span());
                let Some(id) = self.tensor_of(v, sp, f) else {
                    return;
                };
                if self.g.nodes[id].label.is_none() {
                    self.g.nodes[id].label = Some(scoped(&f.path, &n));
                }
                f.vars.insert(n.clone(), Value::Tensor(id));
                if f.sub.is_some() {
                    f.outputs.push((n, id));
                } else {
                    self.g.outputs.push(OutputInfo { name: n, node: id });
                }
            }
            Stmt::If { cond, then, els } => match self.eval_hyper(cond, f) {
                Some(HVal::Bool(true)) => self.exec(then, f),
                Some(HVal::Bool(false)) => self.exec(els, f),
                Some(v) => self.error(
                    cond.span(),
                    format!(
                        "an `if` condition must be a compile-time bool, found {}",
                        v.kind()
                    ),
                ),
                None => {}
            },
            Stmt::For { var, iter, body } => match self.eval_hyper(iter, f) {
                Some(HVal::List(items)) if items.len() > MAX_UNROLL => self.error(
                    iter.span(),
                    format!(
                        "`for` would unroll {} iterations; at most {MAX_UNROLL} are allowed",
                        items.len()
                    ),
                ),
                Some(HVal::List(items)) => {
                    for it in items {
                        if !self.step(s) {
                            break;
                        }
                        f.vars.insert(var.to_string(), Value::Hyper(it));
                        self.exec(body, f);
                    }
                }
                Some(v) => self.error(
                    iter.span(),
                    format!(
                        "`for` iterates over a compile-time list or range, found {}",
                        v.kind()
                    ),
                ),
                None => {}
            },
            Stmt::Loss { expr, span } => {
                if f.sub.is_some() || !f.train {
                    self.error(
                        *span,
                        "`loss` statements belong in the body of a `train` model",
                    );
                    return;
                }
                let v = self.eval(expr, f, None);
                if let Some(id) = self.tensor_of(v, *span, f) {
                    self.losses.push((id, *span));
                }
            }
            Stmt::Regularize {
                kind,
                coef,
                glob,
                span,
            } => {
                if f.sub.is_some() || !f.train {
                    self.error(
                        *span,
                        "`regularize` statements belong in the body of a `train` model",
                    );
                    return;
                }
                if kind != "l1" && kind != "l2" {
                    self.error(
                        kind.span(),
                        format!("unknown regularizer `{kind}`; expected `l1` or `l2`"),
                    );
                    return;
                }
                match self.eval_hyper(coef, f) {
                    Some(HVal::Float(c)) => self.regs.push((kind.clone(), c, glob.clone())),
                    Some(HVal::Int(c)) => self.regs.push((kind.clone(), c as f64, glob.clone())),
                    Some(v) => self.error(
                        coef.span(),
                        format!(
                            "a regularization coefficient is a number, found {}",
                            v.kind()
                        ),
                    ),
                    None => {}
                }
            }
        }
    }

    fn parse_init(&mut self, e: &Expr, f: &mut Frame) -> Option<Init> {
        let (name, args): (String, Vec<&Expr>) = match e {
            Expr::Path(p) if p.path.get_ident().is_some() => {
                (p.path.segments[0].ident.to_string(), vec![])
            }
            Expr::Call(c) => match &*c.func {
                Expr::Path(p) if p.path.get_ident().is_some() => (
                    p.path.segments[0].ident.to_string(),
                    c.args.iter().collect(),
                ),
                _ => (String::new(), vec![]),
            },
            _ => (String::new(), vec![]),
        };
        let mut nums = Vec::new();
        for a in &args {
            let a = match a {
                Expr::Assign(x) => &*x.right,
                other => other,
            };
            match self.eval_hyper(a, f)? {
                HVal::Int(i) => nums.push(i as f64),
                HVal::Float(x) => nums.push(x),
                HVal::Dim(d) => {
                    if name == "fan_in" {
                        return Some(Init::FanIn(Some(d)));
                    }
                    nums.push(f64::NAN)
                }
                _ => nums.push(f64::NAN),
            }
        }
        let ok = |n: usize| nums.len() == n && nums.iter().all(|x| x.is_finite());
        Some(match name.as_str() {
            "zeros" if nums.is_empty() => Init::Zeros,
            "ones" if nums.is_empty() => Init::Ones,
            "fan_in" if nums.is_empty() => Init::FanIn(None),
            "fan_in" if ok(1) => Init::FanIn(Some(Dim::Known(nums[0] as u64))),
            "normal" if ok(2) => Init::Normal(nums[0], nums[1]),
            "uniform" if ok(2) => Init::Uniform(nums[0], nums[1]),
            "full" if ok(1) => Init::Full(nums[0]),
            _ => {
                self.error(e.span(), "unknown initialiser; expected `zeros`, `ones`, `full(v)`, `normal(mean, std)`, `uniform(lo, hi)` or `fan_in(n)`");
                return None;
            }
        })
    }

    // ---------------------------------------------------------------- expressions

    fn tensor_of(&mut self, v: Value, span: Span, f: &Frame) -> Option<NodeId> {
        match v {
            Value::Tensor(id) => Some(id),
            Value::Hyper(h) => self.const_node(h, None, span, f),
            Value::Const(h, dt) => self.const_node(h, dt, span, f),
            Value::Multi(outs) => {
                self.error(span, format!(
                    "this model has several outputs ({}); pick one with `.name` or destructure with `let (a, b) = ...`",
                    outs.iter().map(|o| o.0.as_str()).collect::<Vec<_>>().join(", ")
                ));
                None
            }
            Value::Inst(i) => {
                let name = self.insts[i].entry.def.name.to_string();
                self.error(span, format!("`{name}(..)` is a model instance, not a tensor; call it on an input: `{name}(..)(x)`"));
                None
            }
            Value::Poison => None,
        }
    }

    fn const_node(&mut self, h: HVal, dt: Option<DType>, span: Span, f: &Frame) -> Option<NodeId> {
        let s = match h {
            HVal::Int(i) => Scalar::Int(i),
            HVal::Float(x) => Scalar::Float(x),
            HVal::Bool(b) => Scalar::Bool(b),
            other => {
                self.error(
                    span,
                    format!("expected a tensor, found a compile-time {}", other.kind()),
                );
                return None;
            }
        };
        let id = self.node(Op::Const(s), vec![], span, f);
        self.g.nodes[id].dtype = dt.map(DT::Known);
        Some(id)
    }

    /// Evaluate a compile-time expression.
    fn eval_hyper(&mut self, e: &Expr, f: &mut Frame) -> Option<HVal> {
        match self.eval(e, f, None) {
            Value::Hyper(h) | Value::Const(h, _) => Some(h),
            Value::Poison => None,
            _ => {
                self.error(e.span(), "expected a compile-time value (a number, bool, string, list or name), found a tensor");
                None
            }
        }
    }

    fn eval(&mut self, e: &Expr, f: &mut Frame, hint: Option<&Ident>) -> Value {
        match e {
            Expr::Lit(l) => match &l.lit {
                syn::Lit::Int(i) => match i.base10_parse::<i64>() {
                    Ok(v) => Value::Hyper(HVal::Int(v)),
                    Err(e2) => {
                        self.error(i.span(), e2);
                        Value::Poison
                    }
                },
                syn::Lit::Float(x) => match x.base10_parse::<f64>() {
                    Ok(v) => Value::Hyper(HVal::Float(v)),
                    Err(e2) => {
                        self.error(x.span(), e2);
                        Value::Poison
                    }
                },
                syn::Lit::Bool(b) => Value::Hyper(HVal::Bool(b.value)),
                syn::Lit::Str(s) => Value::Hyper(HVal::Str(s.value())),
                other => {
                    self.error(other.span(), "unsupported literal");
                    Value::Poison
                }
            },
            Expr::Path(p) if p.path.get_ident().is_some() => {
                let id = p
                    .path
                    .get_ident()
                    .cloned()
                    .unwrap_or_else(|| Ident::new("_", p.span()));
                self.lookup(&id, f)
            }
            Expr::Paren(p) => self.eval(&p.expr, f, hint),
            Expr::Group(g) => self.eval(&g.expr, f, hint),
            Expr::Array(a) => {
                let mut xs = Vec::new();
                for el in &a.elems {
                    match self.eval(el, f, None) {
                        Value::Hyper(h) | Value::Const(h, _) => xs.push(h),
                        Value::Poison => return Value::Poison,
                        _ => {
                            self.error(el.span(), "list elements must be compile-time values");
                            return Value::Poison;
                        }
                    }
                }
                Value::Hyper(HVal::List(xs))
            }
            Expr::Range(r) => {
                let lo = match &r.start {
                    Some(s) => self.eval_hyper(s, f),
                    None => Some(HVal::Int(0)),
                };
                let hi = match &r.end {
                    Some(s) => self.eval_hyper(s, f),
                    None => None,
                };
                match (lo, hi) {
                    (Some(HVal::Int(a)), Some(HVal::Int(b))) => {
                        let closed = matches!(r.limits, syn::RangeLimits::Closed(_));
                        let len = (b as i128 + closed as i128 - a as i128).max(0);
                        if len > MAX_UNROLL as i128 {
                            self.error(
                                e.span(),
                                format!("this range has {len} items; a compile-time range has at most {MAX_UNROLL}"),
                            );
                            return Value::Poison;
                        }
                        Value::Hyper(HVal::List(
                            (0..len as i64).map(|i| HVal::Int(a + i)).collect(),
                        ))
                    }
                    _ => {
                        self.error(e.span(), "a range here needs integer bounds (`0..n`); use ranges without bounds only in `slice`");
                        Value::Poison
                    }
                }
            }
            Expr::Unary(u) => {
                let v = self.eval(&u.expr, f, None);
                match (&u.op, v) {
                    (_, Value::Poison) => Value::Poison,
                    (syn::UnOp::Neg(_), Value::Hyper(HVal::Int(i))) => match i.checked_neg() {
                        Some(n) => Value::Hyper(HVal::Int(n)),
                        None => {
                            self.error(e.span(), "integer overflow in a compile-time value");
                            Value::Poison
                        }
                    },
                    (syn::UnOp::Neg(_), Value::Hyper(HVal::Float(x))) => {
                        Value::Hyper(HVal::Float(-x))
                    }
                    (syn::UnOp::Not(_), Value::Hyper(HVal::Bool(b))) => {
                        Value::Hyper(HVal::Bool(!b))
                    }
                    (op, v) => {
                        let prim = match op {
                            syn::UnOp::Neg(_) => prims::Prim::Neg,
                            syn::UnOp::Not(_) => prims::Prim::Not,
                            _ => {
                                self.error(u.span(), "unsupported unary operator");
                                return Value::Poison;
                            }
                        };
                        let Some(a) = self.tensor_of(v, u.expr.span(), f) else {
                            return Value::Poison;
                        };
                        Value::Tensor(self.node(Op::Prim(prim), vec![a], e.span(), f))
                    }
                }
            }
            Expr::Binary(b) => {
                let l = self.eval(&b.left, f, None);
                let r = self.eval(&b.right, f, None);
                if matches!(l, Value::Poison) || matches!(r, Value::Poison) {
                    return Value::Poison;
                }
                if let (
                    Value::Hyper(x) | Value::Const(x, None),
                    Value::Hyper(y) | Value::Const(y, None),
                ) = (&l, &r)
                {
                    if let Some(v) = binop(&b.op, x, y) {
                        return Value::Hyper(v);
                    }
                    if !matches!(
                        (x, y),
                        (
                            HVal::Int(_) | HVal::Float(_) | HVal::Bool(_),
                            HVal::Int(_) | HVal::Float(_) | HVal::Bool(_)
                        )
                    ) {
                        self.error(
                            e.span(),
                            format!(
                                "operator not defined on compile-time {} and {}",
                                x.kind(),
                                y.kind()
                            ),
                        );
                        return Value::Poison;
                    }
                }
                use syn::BinOp as B;
                let prim = match b.op {
                    B::Add(_) => prims::Prim::Add,
                    B::Sub(_) => prims::Prim::Sub,
                    B::Mul(_) => prims::Prim::Mul,
                    B::Div(_) => prims::Prim::Div,
                    B::Rem(_) => prims::Prim::Rem,
                    B::Eq(_) => prims::Prim::Eq,
                    B::Ne(_) => prims::Prim::Ne,
                    B::Lt(_) => prims::Prim::Lt,
                    B::Le(_) => prims::Prim::Le,
                    B::Gt(_) => prims::Prim::Gt,
                    B::Ge(_) => prims::Prim::Ge,
                    B::And(_) | B::BitAnd(_) => prims::Prim::And,
                    B::Or(_) | B::BitOr(_) => prims::Prim::Or,
                    B::BitXor(_) => prims::Prim::Xor,
                    _ => {
                        self.error(
                            e.span(),
                            "unsupported operator (use `+ - * / %`, comparisons, `&& || ^`)",
                        );
                        return Value::Poison;
                    }
                };
                let (Some(a), Some(c)) = (
                    self.tensor_of(l, b.left.span(), f),
                    self.tensor_of(r, b.right.span(), f),
                ) else {
                    return Value::Poison;
                };
                // spanned on the operator: `a + b` fails at `+` (rustc shows one token of a span)
                Value::Tensor(self.node(Op::Prim(prim), vec![a, c], b.op.span(), f))
            }
            Expr::Cast(c) => {
                let v = self.eval(&c.expr, f, None);
                let ty = &c.ty;
                let name = quote::quote!(#ty).to_string();
                let Some(t) = DType::parse(&name) else {
                    self.error(c.ty.span(), format!("unknown dtype `{name}`"));
                    return Value::Poison;
                };
                let Some(a) = self.tensor_of(v, c.expr.span(), f) else {
                    return Value::Poison;
                };
                Value::Tensor(self.node(Op::Prim(prims::Prim::Cast(t)), vec![a], e.span(), f))
            }
            Expr::Field(fe) => {
                let base = self.eval(&fe.base, f, None);
                let member = match &fe.member {
                    syn::Member::Named(i) => i.to_string(),
                    syn::Member::Unnamed(i) => i.index.to_string(),
                };
                match base {
                    Value::Multi(outs) => match outs.iter().find(|(n, _)| *n == member) {
                        Some((_, id)) => Value::Tensor(*id),
                        None => {
                            self.error(
                                fe.member.span(),
                                format!(
                                    "no output `{member}`; the outputs are: {}",
                                    outs.iter()
                                        .map(|o| o.0.as_str())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                ),
                            );
                            Value::Poison
                        }
                    },
                    Value::Tensor(id) if member == "T" => Value::Tensor(self.node(
                        Op::Prim(prims::Prim::Transpose(vec![])),
                        vec![id],
                        e.span(),
                        f,
                    )),
                    Value::Poison => Value::Poison,
                    _ => {
                        self.error(
                            fe.member.span(),
                            format!(
                                "`.{member}` picks an output of a model call with several outputs"
                            ),
                        );
                        Value::Poison
                    }
                }
            }
            Expr::Index(ix) => {
                let base = self.eval(&ix.expr, f, None);
                if let Value::Hyper(HVal::List(items)) = &base {
                    return match self.eval_hyper(&ix.index, f) {
                        Some(HVal::Int(i)) if i >= 0 && (i as usize) < items.len() => {
                            Value::Hyper(items[i as usize].clone())
                        }
                        Some(HVal::Int(i)) => {
                            self.error(
                                ix.index.span(),
                                format!(
                                    "index {i} is out of range for a list of {} items",
                                    items.len()
                                ),
                            );
                            Value::Poison
                        }
                        Some(v) => {
                            self.error(
                                ix.index.span(),
                                format!("a list index is an integer, found {}", v.kind()),
                            );
                            Value::Poison
                        }
                        None => Value::Poison,
                    };
                }
                let Some(b) = self.tensor_of(base, ix.expr.span(), f) else {
                    return Value::Poison;
                };
                let items: Vec<&Expr> = match &*ix.index {
                    Expr::Tuple(t) => t.elems.iter().collect(),
                    other => vec![other],
                };
                let Some(args) = self.slice_args(&items, f) else {
                    return Value::Poison;
                };
                Value::Tensor(self.node(Op::Prim(prims::Prim::Slice(args)), vec![b], e.span(), f))
            }
            Expr::Call(c) => {
                self.eval_call(&c.func, c.args.iter().collect(), None, e.span(), f, hint)
            }
            Expr::MethodCall(m) => {
                let name = m.method.to_string();
                if name == "step_by" {
                    self.error(
                        m.span(),
                        "`step_by` is only valid inside `slice(..)` arguments",
                    );
                    return Value::Poison;
                }
                let recv = &*m.receiver;
                let id = m.method.clone();
                // spanned on the method: `x.sum(axis = 2)` fails at `sum`
                self.eval_named_call(
                    &id,
                    Some(recv),
                    m.args.iter().collect(),
                    m.method.span(),
                    f,
                    hint,
                )
            }
            Expr::Tuple(t) => {
                self.error(
                    t.span(),
                    "tuples are only allowed as `let (a, b) = Model(..)` patterns",
                );
                Value::Poison
            }
            other => {
                self.error(other.span(), "unsupported expression in a mithril model");
                Value::Poison
            }
        }
    }

    fn lookup(&mut self, id: &Ident, f: &mut Frame) -> Value {
        let n = id.to_string();
        if let Some(v) = f.vars.get(&n) {
            return v.clone();
        }
        if let Some(v) = f.hyper.get(&n) {
            return Value::Hyper(v.clone());
        }
        if let Some(t) = DType::parse(&n) {
            return Value::Hyper(HVal::DType(t));
        }
        if n == "None" {
            return Value::Hyper(HVal::None);
        }
        if is_symbol(&n) {
            if let Some(d) = f.syms.get(&n) {
                return Value::Hyper(HVal::Dim(d.clone()));
            }
        }
        if prims::lookup(&n).is_some() {
            return Value::Hyper(HVal::Func(n));
        }
        if let Some(entry) = self.find_def(&n, f) {
            self.passed.insert(n.clone(), entry);
            return Value::Hyper(HVal::Func(n));
        }
        if f.local && n.starts_with(|c: char| c.is_ascii_uppercase()) && !is_symbol(&n) {
            // a model of another module passed by name: fetched through its carrier
            if !self.missing.iter().any(|m| path_key(m) == n) {
                self.missing.push(id.clone().into());
            }
            return Value::Poison;
        }
        let mut names: Vec<&String> = f.vars.keys().chain(f.hyper.keys()).collect();
        names.sort();
        let near = closest(&n, names.iter().map(|s| s.as_str()));
        self.error(
            id.span(),
            format!(
                "unknown value `{n}`{}",
                near.map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default()
            ),
        );
        Value::Poison
    }

    /// A model name unknown inside a model defined elsewhere (carried, or from the library):
    /// its bundle holds every model its own text calls, so this is a model passed in by name
    /// from the caller's side, which cannot be resolved there.
    fn unknown_in_carried(&mut self, name: &str, span: Span, f: &Frame) {
        let known: Vec<&str> = f
            .scope
            .defs
            .keys()
            .chain(self.library.defs.keys())
            .map(|s| s.as_str())
            .collect();
        let near = closest(name, known.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        self.error(
            span,
            format!(
                "`{name}` is not a model known where `{}` is defined{near}; a model defined elsewhere can only call the models its own definition names",
                f.model
            ),
        );
    }

    fn find_def(&self, name: &str, f: &Frame) -> Option<Rc<DefEntry>> {
        let own = f.scope.defs.get(name).cloned();
        let local = if f.local {
            self.locals.defs.get(name).cloned()
        } else {
            None
        };
        own.or(local)
            .or_else(|| self.library.defs.get(name).cloned())
    }

    fn slice_args(&mut self, items: &[&Expr], f: &mut Frame) -> Option<Vec<SliceArg>> {
        let mut out = Vec::new();
        self.pending_bounds.clear();
        for (k, it) in items.iter().enumerate() {
            self.slice_pos = k;
            out.push(self.slice_arg(it, f)?);
        }
        Some(out)
    }

    fn slice_arg(&mut self, e: &Expr, f: &mut Frame) -> Option<SliceArg> {
        // a bound over a symbolic dim (`H - k + 1`) is recorded and stands as `None` until
        // shape inference resolves it against the sliced axis
        let int =
            |s: &mut Self, x: &Option<Box<Expr>>, hi: bool, f: &mut Frame| -> Option<Option<i64>> {
                match x {
                    None => Some(None),
                    Some(x) => match s.eval_hyper(x, f)? {
                        HVal::Int(i) => Some(Some(i)),
                        HVal::None => Some(None),
                        HVal::Dim(d) => {
                            s.pending_bounds.push(crate::ir::SymBound {
                                pos: s.slice_pos,
                                hi,
                                dim: d,
                                offset: 0,
                            });
                            Some(None)
                        }
                        HVal::DimPlus(d, c) => {
                            s.pending_bounds.push(crate::ir::SymBound {
                                pos: s.slice_pos,
                                hi,
                                dim: d,
                                offset: c,
                            });
                            Some(None)
                        }
                        v => {
                            s.error(
                                x.span(),
                                format!("slice bounds must be integers, found {}", v.kind()),
                            );
                            None
                        }
                    },
                }
            };
        match e {
            Expr::Range(r) => {
                let lo = int(self, &r.start, false, f)?;
                let pending = self.pending_bounds.len();
                let hi = int(self, &r.end, true, f)?;
                let closed = matches!(r.limits, syn::RangeLimits::Closed(_));
                if closed && self.pending_bounds.len() > pending {
                    if let Some(b) = self.pending_bounds.last_mut() {
                        b.offset = b.offset.saturating_add(1);
                    }
                }
                let hi = match (hi, &r.limits) {
                    (Some(h), syn::RangeLimits::Closed(_)) => Some(h.saturating_add(1)),
                    (h, _) => h,
                };
                Some(SliceArg::Range(lo, hi, 1))
            }
            Expr::MethodCall(m) if m.method == "step_by" && m.args.len() == 1 => {
                let inner = match &*m.receiver {
                    Expr::Paren(p) => &*p.expr,
                    other => other,
                };
                let base = self.slice_arg(inner, f)?;
                let step = match self.eval_hyper(&m.args[0], f)? {
                    HVal::Int(i) if i != 0 => i,
                    _ => {
                        self.error(m.args[0].span(), "`step_by` takes a non-zero integer");
                        return None;
                    }
                };
                match base {
                    SliceArg::Range(lo, hi, _) => Some(SliceArg::Range(lo, hi, step)),
                    _ => {
                        self.error(m.span(), "`step_by` applies to a range");
                        None
                    }
                }
            }
            other => match self.eval_hyper(other, f)? {
                HVal::Int(i) => Some(SliceArg::Index(i)),
                HVal::None => Some(SliceArg::NewAxis),
                v => {
                    self.error(
                        other.span(),
                        format!(
                            "an index is an integer, a range `a..b`, `..` or `None`; found {}",
                            v.kind()
                        ),
                    );
                    None
                }
            },
        }
    }

    fn eval_call(
        &mut self,
        func: &Expr,
        args: Vec<&Expr>,
        recv: Option<&Expr>,
        span: Span,
        f: &mut Frame,
        hint: Option<&Ident>,
    ) -> Value {
        match func {
            Expr::Path(p) if p.path.get_ident().is_some() => {
                let id = p
                    .path
                    .get_ident()
                    .cloned()
                    .unwrap_or_else(|| Ident::new("_", p.span()));
                self.eval_named_call(&id, recv, args, span, f, hint)
            }
            Expr::Path(p) => {
                // a path to a model in another module or crate
                let key = path_key(&p.path);
                match self.find_def(&key, f) {
                    Some(entry) => self.model_call(entry, p.span(), args, span, f, hint),
                    None if f.local => {
                        if !self.missing.iter().any(|m| path_key(m) == key) {
                            self.missing.push(p.path.clone());
                        }
                        Value::Poison
                    }
                    None => {
                        self.unknown_in_carried(&key, p.span(), f);
                        Value::Poison
                    }
                }
            }
            Expr::Call(_) | Expr::Paren(_) => {
                let v = self.eval(func, f, hint);
                match v {
                    Value::Inst(i) => self.apply_args(i, args, span, f),
                    Value::Poison => Value::Poison,
                    _ => {
                        self.error(
                            func.span(),
                            "this is not a model instance and cannot be called",
                        );
                        Value::Poison
                    }
                }
            }
            other => {
                self.error(
                    other.span(),
                    "only functions, models and model instances can be called",
                );
                Value::Poison
            }
        }
    }

    fn eval_named_call(
        &mut self,
        id: &Ident,
        recv: Option<&Expr>,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
        hint: Option<&Ident>,
    ) -> Value {
        let n = id.to_string();
        // an instance or a function passed as a value
        match f
            .vars
            .get(&n)
            .cloned()
            .or_else(|| f.hyper.get(&n).cloned().map(Value::Hyper))
        {
            Some(Value::Inst(i)) if recv.is_none() => return self.apply_args(i, args, span, f),
            Some(Value::Hyper(HVal::Func(fname))) if fname != n => {
                let fid = Ident::new(&fname, id.span());
                return self.eval_named_call(&fid, recv, args, span, f, hint);
            }
            Some(Value::Poison) => return Value::Poison,
            _ => {}
        }
        if n == "len" && recv.is_none() && args.len() == 1 {
            return match self.eval_hyper(args[0], f) {
                Some(HVal::List(xs)) => Value::Hyper(HVal::Int(xs.len() as i64)),
                Some(HVal::Str(s)) => Value::Hyper(HVal::Int(s.len() as i64)),
                Some(v) => {
                    self.error(
                        args[0].span(),
                        format!("`len` takes a compile-time list, found {}", v.kind()),
                    );
                    Value::Poison
                }
                None => Value::Poison,
            };
        }
        if let Some(fold) = const_math(&n) {
            // `sqrt(d_model / n_heads)`: a math function of a compile-time int is a float
            // constant (an int tensor has no such primitive); of a float it stays the primitive
            // over a constant, which `constant_folding` evaluates or not
            let one: Vec<&Expr> = recv.into_iter().chain(args.iter().copied()).collect();
            if let [arg] = one[..] {
                if !matches!(arg, Expr::Assign(_)) {
                    let v = self.eval(arg, f, None);
                    let num = match &v {
                        Value::Hyper(HVal::Int(i)) => Some(*i as f64),
                        _ => None,
                    };
                    if let Some(x) = num {
                        let y = fold(x);
                        if !y.is_finite() {
                            self.error(span, format!("`{n}({x})` is not a finite number"));
                            return Value::Poison;
                        }
                        return Value::Hyper(HVal::Float(y));
                    }
                    let Some(a) = self.tensor_of(v, arg.span(), f) else {
                        return Value::Poison;
                    };
                    return match prims::build(&n, &[], 1) {
                        Ok(p) => Value::Tensor(self.node(Op::Prim(p), vec![a], span, f)),
                        Err(m) => {
                            self.error(span, m);
                            Value::Poison
                        }
                    };
                }
            }
        }
        if let Some(sig) = prims::lookup(&n) {
            return self.prim_call(&n, sig, id.span(), recv, args, span, f);
        }
        if let Some(entry) = self
            .find_def(&n, f)
            .or_else(|| self.passed.get(&n).cloned())
        {
            let mut all: Vec<&Expr> = Vec::new();
            all.extend(recv);
            all.extend(args);
            return self.model_call(entry, id.span(), all, span, f, hint);
        }
        if n.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && recv.is_none() {
            if !f.local {
                self.unknown_in_carried(&n, id.span(), f);
                return Value::Poison;
            }
            // maybe a model from another module (imported with `use`): fetched through its carrier
            let path: syn::Path = id.clone().into();
            if !self.missing.iter().any(|m| path_key(m) == n) {
                self.missing.push(path);
            }
            return Value::Poison;
        }
        let lib: Vec<&str> = self.library.defs.keys().map(|s| s.as_str()).collect();
        let near = closest(&n, prims::names().map(|s| s).chain(lib));
        self.error(
            id.span(),
            format!(
                "unknown function `{n}`{}",
                near.map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default()
            ),
        );
        Value::Poison
    }

    #[allow(clippy::too_many_arguments)]
    fn prim_call(
        &mut self,
        name: &str,
        sig: prims::Sig,
        name_span: Span,
        recv: Option<&Expr>,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
    ) -> Value {
        let mut inputs: Vec<Option<NodeId>> = vec![None; sig.inputs.len()];
        let mut extra_inputs: Vec<NodeId> = Vec::new();
        let mut attrs: Vec<(&str, AttrVal)> = Vec::new();
        if name == "slice" {
            self.pending_bounds.clear();
        }
        let mut pos = 0usize;
        let mut attr_pos = 0usize;
        let mut poisoned = false;
        let mut all: Vec<(Option<Ident>, &Expr)> = Vec::new();
        if let Some(r) = recv {
            all.push((None, r));
        }
        for a in &args {
            match a {
                Expr::Assign(asg) => match &*asg.left {
                    Expr::Path(p) if p.path.get_ident().is_some() => {
                        all.push((p.path.get_ident().cloned(), &asg.right));
                    }
                    other => {
                        self.error(other.span(), "a named argument is `name = value`");
                        poisoned = true;
                    }
                },
                other => all.push((None, other)),
            }
        }
        for (an, a) in all {
            match an {
                None => {
                    if name == "slice" && pos >= 1 {
                        self.slice_pos = attrs.iter().filter(|(k, _)| *k == "#slice").count();
                        match self.slice_arg(a, f) {
                            Some(s) => attrs.push(("#slice", AttrVal::Slice(s))),
                            None => poisoned = true,
                        }
                        continue;
                    }
                    if sig.variadic && (name == "concat" || name == "stack") {
                        let v = self.eval(a, f, None);
                        match self.tensor_of(v, a.span(), f) {
                            Some(id) => extra_inputs.push(id),
                            None => poisoned = true,
                        }
                        continue;
                    }
                    if pos < sig.inputs.len() {
                        let v = self.eval(a, f, None);
                        match self.tensor_of(v, a.span(), f) {
                            Some(id) => inputs[pos] = Some(id),
                            None => poisoned = true,
                        }
                        pos += 1;
                    } else if attr_pos < sig.attrs.len() {
                        match self.eval_hyper(a, f) {
                            Some(h) => attrs.push((sig.attrs[attr_pos], h.to_attr())),
                            None => poisoned = true,
                        }
                        attr_pos += 1;
                    } else {
                        self.error(a.span(), format!("too many arguments for `{name}`"));
                        poisoned = true;
                    }
                }
                Some(k) => {
                    let ks = k.to_string();
                    if let Some(i) = sig.inputs.iter().position(|x| *x == ks) {
                        let v = self.eval(a, f, None);
                        match self.tensor_of(v, a.span(), f) {
                            Some(id) => inputs[i] = Some(id),
                            None => poisoned = true,
                        }
                    } else if let Some(&an) = sig.attrs.iter().find(|x| **x == ks) {
                        match self.eval_hyper(a, f) {
                            Some(h) => attrs.push((an, h.to_attr())),
                            None => poisoned = true,
                        }
                    } else {
                        let mut expected: Vec<&str> = sig.inputs.to_vec();
                        expected.extend(sig.attrs);
                        self.error(
                            k.span(),
                            format!(
                                "`{name}` has no argument `{ks}`; it takes: {}",
                                expected.join(", ")
                            ),
                        );
                        poisoned = true;
                    }
                }
            }
        }
        if poisoned {
            return Value::Poison;
        }
        let mut node_args: Vec<NodeId> = Vec::new();
        for (i, slot) in inputs.iter().enumerate() {
            match slot {
                Some(id) => node_args.push(*id),
                None => {
                    self.error(
                        span,
                        format!("`{name}` is missing its input `{}`", sig.inputs[i]),
                    );
                    return Value::Poison;
                }
            }
        }
        node_args.extend(extra_inputs);
        match prims::build(name, &attrs, node_args.len()) {
            Ok(p) => {
                let _ = name_span;
                Value::Tensor(self.node(Op::Prim(p), node_args, span, f))
            }
            Err(m) => {
                self.error(span, m);
                Value::Poison
            }
        }
    }

    /// A call of a model by name: a constructor when the model has hyperparameters and is
    /// CamelCase; a direct application otherwise (snake_case models mix hyperparameters, by
    /// name, and terminals).
    fn model_call(
        &mut self,
        entry: Rc<DefEntry>,
        name_span: Span,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
        hint: Option<&Ident>,
    ) -> Value {
        let def_name = entry.def.name.to_string();
        let camel = def_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase());
        if camel && !entry.def.hypers.is_empty() {
            // constructor
            let Some(hyper) = self.bind_hypers(
                &entry,
                args.iter()
                    .map(|a| (None::<()>, *a))
                    .map(|(_, a)| a)
                    .collect(),
                span,
                f,
            ) else {
                return Value::Poison;
            };
            let i = self.new_inst(entry, hyper, hint, f, name_span);
            return Value::Inst(i);
        }
        // direct application: split named hyperparameters from terminals
        let mut hargs = Vec::new();
        let mut targs = Vec::new();
        for a in args {
            if let Expr::Assign(asg) = a {
                if let Expr::Path(p) = &*asg.left {
                    if let Some(id) = p.path.get_ident() {
                        if entry.def.hypers.iter().any(|h| h.name == *id) {
                            hargs.push(a);
                            continue;
                        }
                    }
                }
            }
            targs.push(a);
        }
        let Some(hyper) = self.bind_hypers(&entry, hargs, span, f) else {
            return Value::Poison;
        };
        let has_inputs = entry
            .def
            .body
            .iter()
            .any(|s| matches!(s, Stmt::Input { .. }));
        let i = self.new_inst(entry, hyper, hint, f, name_span);
        if camel && targs.is_empty() && has_inputs {
            // `let block = Block();` of a model without hyperparameters: an instance, applied
            // later (`block(x)`), like `Linear(256)`
            return Value::Inst(i);
        }
        self.apply_args(i, targs, span, f)
    }

    fn bind_hypers(
        &mut self,
        entry: &Rc<DefEntry>,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
    ) -> Option<HEnv> {
        let def = &entry.def;
        let mut out = HEnv::new();
        let mut ok = true;
        let mut pos = 0;
        let names: Vec<String> = def.hypers.iter().map(|h| h.name.to_string()).collect();
        for a in args {
            let (key, val, ksp) = match a {
                Expr::Assign(asg) => match &*asg.left {
                    Expr::Path(p) if p.path.get_ident().is_some() => {
                        let id = p.path.get_ident().cloned();
                        (id.map(|i| i.to_string()), &*asg.right, asg.left.span())
                    }
                    other => {
                        self.error(other.span(), "a named argument is `name = value`");
                        ok = false;
                        continue;
                    }
                },
                other => (None, other, other.span()),
            };
            let key = match key {
                Some(k) => {
                    if !names.contains(&k) {
                        self.error(
                            ksp,
                            format!(
                                "`{}` has no hyperparameter `{k}`; its hyperparameters are: {}",
                                def.name,
                                if names.is_empty() {
                                    "(none)".to_string()
                                } else {
                                    names.join(", ")
                                }
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    k
                }
                None => {
                    if pos >= names.len() {
                        self.error(
                            ksp,
                            format!(
                                "`{}` takes {} hyperparameter(s) ({}), but more were given",
                                def.name,
                                names.len(),
                                names.join(", ")
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    pos += 1;
                    names[pos - 1].clone()
                }
            };
            let Some(v) = self.eval_hyper(val, f) else {
                ok = false;
                continue;
            };
            let ty = def
                .hypers
                .iter()
                .find(|h| h.name == key)
                .map(|h| h.ty.to_string())
                .unwrap_or_default();
            if !v.fits(&ty) {
                self.error(
                    val.span(),
                    format!(
                        "hyperparameter `{key}` of `{}` is {ty}, but a {} was given",
                        def.name,
                        v.kind()
                    ),
                );
                ok = false;
                continue;
            }
            if out.insert(key.clone(), v).is_some() {
                self.error(ksp, format!("hyperparameter `{key}` is given twice"));
                ok = false;
            }
        }
        for h in &def.hypers {
            let k = h.name.to_string();
            if out.contains_key(&k) {
                continue;
            }
            match &h.default {
                Some(d) => {
                    let mut inner = self.frame(entry, HEnv::new(), vec![], None);
                    match self.eval_hyper(d, &mut inner) {
                        Some(v) => {
                            out.insert(k, v);
                        }
                        None => ok = false,
                    }
                }
                None => {
                    // after a misnamed or mistyped argument, that argument is the likely fix
                    if ok {
                        self.error(span, format!("`{}` needs hyperparameter `{k}`", def.name));
                    }
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn new_inst(
        &mut self,
        entry: Rc<DefEntry>,
        hyper: HEnv,
        hint: Option<&Ident>,
        f: &mut Frame,
        _span: Span,
    ) -> usize {
        // inside an instance's body: the k-th instance this call creates is the k-th instance of
        // the first call (the body's control flow depends only on the instance's hyperparameters,
        // so it creates the same instances in the same order every call). Its hyperparameters
        // are the first call's: they can differ only in symbolic dims (fresh unification
        // variables per call), which the shared instance's dims then unify with.
        let owner = f.sub.as_ref().map(|(_, owner)| *owner);
        if let Some(owner) = owner {
            let k = f.created;
            f.created += 1;
            if let Some(&i) = self.insts[owner].subs.get(k) {
                if Rc::ptr_eq(&self.insts[i].entry, &entry) {
                    return i;
                }
            }
        }
        let base = match hint {
            Some(h) => h.to_string(),
            None => {
                let b = snake(&entry.def.name.to_string());
                let c = f.counters.entry(b.clone()).or_insert(0);
                let name = format!("{b}_{c}");
                *c += 1;
                name
            }
        };
        let mut path = f.path.clone();
        path.push(base.clone());
        // a re-bound `let` name (shadowing, loops) gets a numeric suffix
        let n = self.used_paths.entry(path.clone()).or_insert(0);
        if *n > 0 {
            let last = path.len() - 1;
            path[last] = format!("{base}_{n}");
        }
        *n += 1;
        self.insts.push(Inst {
            entry,
            hyper,
            path,
            params: BTreeMap::new(),
            applied: false,
            subs: Vec::new(),
        });
        let i = self.insts.len() - 1;
        if let Some(owner) = owner {
            let k = f.created - 1;
            if self.insts[owner].subs.len() == k {
                self.insts[owner].subs.push(i);
            }
        }
        i
    }

    fn apply_args(&mut self, inst: usize, args: Vec<&Expr>, span: Span, f: &mut Frame) -> Value {
        let mut targs = Vec::new();
        let mut poisoned = false;
        for a in args {
            let (name, val) = match a {
                Expr::Assign(asg) => match &*asg.left {
                    Expr::Path(p) if p.path.get_ident().is_some() => {
                        let id = p
                            .path
                            .get_ident()
                            .cloned()
                            .unwrap_or_else(|| Ident::new("_", p.span()));
                        (Some((id.to_string(), id.span())), &*asg.right)
                    }
                    other => {
                        self.error(other.span(), "a named argument is `name = value`");
                        poisoned = true;
                        continue;
                    }
                },
                other => (None, other),
            };
            let v = self.eval(val, f, None);
            match self.tensor_of(v, val.span(), f) {
                Some(id) => targs.push(Arg {
                    name,
                    value: id,
                    span: val.span(),
                }),
                None => poisoned = true,
            }
        }
        if poisoned {
            return Value::Poison;
        }
        self.apply(inst, targs, span, f)
    }

    /// "`Block(width = 16)` called as `b2`": an instance's model, hyperparameters and path.
    fn describe_call(&self, inst: usize) -> String {
        let i = &self.insts[inst];
        let def = &i.entry.def;
        let hypers: Vec<String> = def
            .hypers
            .iter()
            .filter_map(|h| {
                let k = h.name.to_string();
                i.hyper.get(&k).map(|v| format!("{k} = {}", hval_text(v)))
            })
            .collect();
        let args = if hypers.is_empty() {
            String::new()
        } else {
            format!("({})", hypers.join(", "))
        };
        format!("`{}{args}` called as `{}`", def.name, i.path.join("."))
    }

    fn apply(&mut self, inst: usize, args: Vec<Arg<NodeId>>, span: Span, caller: &Frame) -> Value {
        let entry = self.insts[inst].entry.clone();
        let def_name = entry.def.name.to_string();
        if let Some(start) = self.stack.iter().position(|m| *m == def_name) {
            // the cycle only (not the physical model that reached it): compiling each model of
            // the cycle then reports the same error, which the caller shows once
            let mut chain = self.stack[start..].to_vec();
            chain.push(def_name.clone());
            // the message names the cycle: no call notes
            let calls = std::mem::take(&mut self.chain);
            self.chain_rc = None;
            self.error(
                span,
                format!(
                    "model `{def_name}` is defined recursively ({})",
                    chain.join(" -> ")
                ),
            );
            self.chain = calls;
            self.chain_rc = None;
            return Value::Poison;
        }
        let terminals = input_names(&entry.def);
        let bound = match bind_terminals(&def_name, &terminals, &args, span) {
            Ok(b) => b,
            Err(es) => {
                for e in es {
                    let sp = e.span();
                    self.error(sp, e);
                }
                return Value::Poison;
            }
        };
        let argmap: HashMap<String, NodeId> = terminals.iter().cloned().zip(bound).collect();
        let span_args: Vec<Arg<Span>> = args
            .iter()
            .map(|a| Arg {
                name: a.name.clone(),
                value: a.span,
                span: a.span,
            })
            .collect();
        let arg_spans: HashMap<String, Span> =
            match bind_terminals(&def_name, &terminals, &span_args, span) {
                Ok(sps) => terminals.iter().cloned().zip(sps).collect(),
                Err(_) => HashMap::new(),
            };
        let hyper = self.insts[inst].hyper.clone();
        let path = self.insts[inst].path.clone();
        let mut fr = self.frame(&entry, hyper, path, Some((argmap, inst)));
        fr.arg_spans = arg_spans;
        let _ = caller;
        self.insts[inst].applied = true;
        let saved = self.anchor.clone();
        let noted = self.anchor.is_none();
        if noted {
            let what = self.describe_call(inst);
            self.chain.push((span, what));
            self.chain_rc = None;
        }
        match &entry.origin {
            Origin::Library if self.anchor.is_none() => {
                self.anchor = Some((span, format!("inside library model `{def_name}`"), false));
            }
            Origin::Carried {
                krate,
                foreign: true,
            } if self.anchor.is_none() => {
                self.anchor = Some((
                    span,
                    format!("inside model `{def_name}` of crate `{krate}`"),
                    true,
                ));
            }
            _ => {}
        }
        self.stack.push(def_name.clone());
        let body = entry.def.body.clone();
        let errors_before = self.errors.len();
        self.exec(&body, &mut fr);
        self.stack.pop();
        self.anchor = saved;
        if noted {
            self.chain.pop();
            self.chain_rc = None;
        }
        match fr.outputs.len() {
            0 => {
                // (an output lost to an error inside the body is no second error)
                if entry.def.kind == ModelKind::Model && self.errors.len() == errors_before {
                    self.error(span, format!("model `{def_name}` has no output"));
                }
                Value::Poison
            }
            1 => Value::Tensor(fr.outputs[0].1),
            _ => Value::Multi(fr.outputs),
        }
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
