//! The graph IR: the only thing passes share.
//!
//! A [`Graph`] is a flat list of [`Node`]s in topological order (every arg id is smaller than
//! the node's id). Shapes are lists of [`Dim`]s over an [`Env`] that holds the unification state
//! of dimension variables (instance-local symbols and `_`), rank variables (`...`) and dtype
//! variables (params and library-model inputs whose dtype comes from what they meet).

pub mod prim;

use prim::Prim;
use proc_macro2::Span;
use std::fmt;

/// Index of a node in [`Graph::nodes`].
pub type NodeId = usize;

/// Element types, as in the DSL.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DType {
    F16,
    BF16,
    F32,
    F64,
    I32,
    I64,
    Bool,
}

impl DType {
    pub fn parse(s: &str) -> Option<DType> {
        Some(match s {
            "f32" => DType::F32,
            "f64" => DType::F64,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "i32" => DType::I32,
            "i64" => DType::I64,
            "bool" => DType::Bool,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }
    pub fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }
}

/// A dtype during inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DT {
    Known(DType),
    /// A float variable: resolved by what it meets, else the default float type.
    Var(u32),
}

/// One dimension.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A static size.
    Known(u64),
    /// A named symbolic dim of the physical model (`B`), fixed per call.
    Sym(String),
    /// A unification variable (an instance-local symbol or `_`).
    Var(u32),
    /// `coef * a * b * ...` (atoms are `Sym`/`Var`), from reshape/flatten.
    Prod(u64, Vec<Dim>),
}

/// A shape: optional leading rank variable (`...`) followed by explicit dims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shape {
    pub rest: Option<u32>,
    pub dims: Vec<Dim>,
}

impl Shape {
    pub fn fixed(dims: Vec<Dim>) -> Shape {
        Shape { rest: None, dims }
    }
    pub fn scalar() -> Shape {
        Shape {
            rest: None,
            dims: vec![],
        }
    }
}

/// Unification state for dims, ranks and dtypes.
#[derive(Clone, Debug, Default)]
pub struct Env {
    dim_vars: Vec<Option<Dim>>,
    /// Display names of dim variables (`IN of fc1`, `_`).
    pub dim_names: Vec<String>,
    rest_vars: Vec<Option<Shape>>,
    pub rest_names: Vec<String>,
    dt_vars: Vec<DtVar>,
}

#[derive(Clone, Copy, Debug)]
enum DtVar {
    Free,
    Link(u32),
    Bound(DType),
}

impl Env {
    pub fn new_dim_var(&mut self, name: impl Into<String>) -> Dim {
        self.dim_vars.push(None);
        self.dim_names.push(name.into());
        Dim::Var(self.dim_vars.len() as u32 - 1)
    }
    pub fn new_rest_var(&mut self, name: impl Into<String>) -> u32 {
        self.rest_vars.push(None);
        self.rest_names.push(name.into());
        self.rest_vars.len() as u32 - 1
    }
    pub fn new_dt_var(&mut self) -> DT {
        self.dt_vars.push(DtVar::Free);
        DT::Var(self.dt_vars.len() as u32 - 1)
    }

    /// Resolve a dim through bound variables and normalise products.
    pub fn dim(&self, d: &Dim) -> Dim {
        match d {
            Dim::Var(v) => match &self.dim_vars[*v as usize] {
                Some(b) => self.dim(b),
                None => d.clone(),
            },
            Dim::Prod(c, atoms) => {
                let mut coef = *c;
                let mut out = Vec::new();
                for a in atoms {
                    match self.dim(a) {
                        Dim::Known(n) => coef = coef.saturating_mul(n),
                        Dim::Prod(c2, inner) => {
                            coef = coef.saturating_mul(c2);
                            out.extend(inner);
                        }
                        other => out.push(other),
                    }
                }
                out.sort();
                match (coef, out.len()) {
                    (_, 0) => Dim::Known(coef),
                    (1, 1) => out.pop().unwrap_or(Dim::Known(1)),
                    _ => Dim::Prod(coef, out),
                }
            }
            _ => d.clone(),
        }
    }

    /// Resolve a shape: expand bound rank variables, resolve every dim.
    pub fn shape(&self, s: &Shape) -> Shape {
        let mut dims = Vec::new();
        let mut rest = s.rest;
        if let Some(r) = s.rest {
            if let Some(b) = &self.rest_vars[r as usize] {
                let inner = self.shape(b);
                rest = inner.rest;
                dims.extend(inner.dims);
            }
        }
        dims.extend(s.dims.iter().map(|d| self.dim(d)));
        Shape { rest, dims }
    }

    pub fn dt(&self, t: DT) -> DT {
        match t {
            DT::Var(v) => match self.dt_vars[v as usize] {
                DtVar::Bound(k) => DT::Known(k),
                DtVar::Link(w) => self.dt(DT::Var(w)),
                DtVar::Free => t,
            },
            k => k,
        }
    }

    pub fn bind_dt(&mut self, v: u32, t: DType) {
        if let DT::Var(root) = self.dt(DT::Var(v)) {
            self.dt_vars[root as usize] = DtVar::Bound(t);
        }
    }

    /// The dim variables bound to nothing yet (what the shape trace watches).
    pub fn unbound_dim_vars(&self) -> Vec<u32> {
        (0..self.dim_vars.len() as u32)
            .filter(|&v| self.dim_vars[v as usize].is_none())
            .collect()
    }

    /// Whether dim variable `v` is bound (to a dim or another variable).
    pub fn is_bound(&self, v: u32) -> bool {
        self.dim_vars.get(v as usize).is_some_and(|b| b.is_some())
    }

    /// Unify two dims. `Err(())` when they provably differ.
    pub fn unify_dim(&mut self, a: &Dim, b: &Dim) -> Result<Dim, ()> {
        let (a, b) = (self.dim(a), self.dim(b));
        if a == b {
            return Ok(a);
        }
        match (&a, &b) {
            (Dim::Var(v), _) => {
                if occurs(*v, &b) {
                    return Err(());
                }
                self.dim_vars[*v as usize] = Some(b.clone());
                Ok(b)
            }
            (_, Dim::Var(v)) => {
                if occurs(*v, &a) {
                    return Err(());
                }
                self.dim_vars[*v as usize] = Some(a.clone());
                Ok(a)
            }
            // A product with unknown atoms cannot be proven unequal: checked at run time.
            (Dim::Prod(_, xs), _) if xs.iter().any(|x| matches!(x, Dim::Var(_))) => Ok(b),
            (_, Dim::Prod(_, ys)) if ys.iter().any(|y| matches!(y, Dim::Var(_))) => Ok(a),
            _ => Err(()),
        }
    }

    /// `B`, `784`, `2*B*T`, or the display name of a variable.
    pub fn fmt_dim(&self, d: &Dim) -> String {
        match self.dim(d) {
            Dim::Known(n) => n.to_string(),
            Dim::Sym(s) => s,
            Dim::Var(v) => self.dim_names[v as usize].clone(),
            Dim::Prod(c, atoms) => {
                let mut parts: Vec<String> = atoms.iter().map(|a| self.fmt_dim(a)).collect();
                if c != 1 {
                    parts.insert(0, c.to_string());
                }
                parts.join("*")
            }
        }
    }

    /// `[B, 784]`, `[..., D]`: a shape resolved and formatted.
    pub fn fmt_shape(&self, s: &Shape) -> String {
        let s = self.shape(s);
        let mut parts = Vec::new();
        if s.rest.is_some() {
            parts.push("...".to_string());
        }
        parts.extend(s.dims.iter().map(|d| self.fmt_dim(d)));
        format!("[{}]", parts.join(", "))
    }

    pub fn bind_rest(&mut self, r: u32, s: Shape) {
        self.rest_vars[r as usize] = Some(s);
    }

    /// Unify two dtypes. `Err(())` on a conflict of known types.
    /// Match an actual shape against a declared pattern (binding `...` and instance symbols).
    pub fn unify_pattern(&mut self, pattern: &Shape, actual: &Shape) -> Result<(), String> {
        let env = self;
        let p = env.shape(pattern);
        let a = env.shape(actual);
        let np = p.dims.len();
        let na = a.dims.len();
        match p.rest {
            None => {
                if a.rest.is_some() {
                    return Err(format!(
                        "rank {np} is needed, but the argument's rank is open (`...`)"
                    ));
                }
                if na != np {
                    return Err(format!("rank {na} != {np}"));
                }
            }
            Some(r) => {
                if na < np {
                    if a.rest.is_none() {
                        return Err(format!("rank {na} < {np}"));
                    }
                    return Err("the argument's rank is open (`...`) and too short to match".into());
                }
                let lead = Shape {
                    rest: a.rest,
                    dims: a.dims[..na - np].to_vec(),
                };
                if a.rest != Some(r) {
                    env.bind_rest(r, lead);
                }
            }
        }
        for i in 0..np {
            let (pd, ad) = (&p.dims[i], &a.dims[na - np + i]);
            if env.unify_dim(pd, ad).is_err() {
                return Err(format!(
                    "dim {}: {} != {}",
                    i as isize - np as isize,
                    env.fmt_dim(ad),
                    env.fmt_dim(pd)
                ));
            }
        }
        Ok(())
    }

    pub fn unify_dt(&mut self, a: DT, b: DT) -> Result<DT, ()> {
        match (self.dt(a), self.dt(b)) {
            (DT::Known(x), DT::Known(y)) if x == y => Ok(DT::Known(x)),
            (DT::Known(_), DT::Known(_)) => Err(()),
            (DT::Var(v), DT::Var(w)) => {
                if v != w {
                    self.dt_vars[v as usize] = DtVar::Link(w);
                }
                Ok(DT::Var(w))
            }
            (DT::Var(v), k @ DT::Known(t)) | (k @ DT::Known(t), DT::Var(v)) => {
                self.bind_dt(v, t);
                Ok(k)
            }
        }
    }
}

fn occurs(v: u32, d: &Dim) -> bool {
    match d {
        Dim::Var(w) => *w == v,
        Dim::Prod(_, xs) => xs.iter().any(|x| occurs(v, x)),
        _ => false,
    }
}

/// A compile-time scalar constant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Float(f64),
    Int(i64),
    Bool(bool),
}

impl Scalar {
    pub fn as_f64(self) -> f64 {
        match self {
            Scalar::Float(f) => f,
            Scalar::Int(i) => i as f64,
            Scalar::Bool(b) => b as u8 as f64,
        }
    }
}

/// A fused elementwise expression: a tree over the fused node's args.
#[derive(Clone, Debug, PartialEq)]
pub enum FExpr {
    /// The i-th arg of the fused node (loaded and widened to its compute type).
    Arg(usize),
    /// A literal in the compute type of the op that uses it.
    Lit(Scalar, DType),
    /// An elementwise primitive applied to sub-expressions; `DType` is the op's output dtype
    /// and the second the dtype its inputs are computed in.
    Op(Prim, Vec<FExpr>, DType, DType),
}

/// What a node computes.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The i-th input terminal of the physical model.
    Input(usize),
    /// The i-th param leaf.
    Param(usize),
    /// A scalar constant (literal, or `const` statement).
    Const(Scalar),
    /// A primitive.
    Prim(Prim),
    /// An identity that checks its arg against a submodel's declared terminal shape.
    /// Removed after inference.
    Boundary(Shape),
    /// A group of elementwise primitives fused into one loop (made by `passes::fuse`).
    Fused(FExpr),
    /// The seed gradient of the i-th output (an argument of `evaluate_gradients`).
    Seed(usize),
    /// The call's mode, `is_training` in the DSL: a scalar `bool`, true in a training call
    /// (`evaluate_gradients`, or a `*_mode` call with `Mode::Train`).
    Mode,
    /// A 2-D matmul of `args[0]`, `args[1]` (transpose flags as in `Prim::Matmul`) with an
    /// elementwise epilogue applied to each result tile while it is hot: `expr`'s `Arg(0)` is
    /// the product, `Arg(i)` for `i >= 1` is `args[i + 1]` (made by `passes::epilogue`).
    FusedMatmul { ta: bool, tb: bool, expr: FExpr },
}

/// One node of the graph.
#[derive(Clone, Debug)]
pub struct Node {
    pub op: Op,
    pub args: Vec<NodeId>,
    /// The tokens that produced the node (for errors).
    pub span: Span,
    /// The user's name for the value, when it has one (`h`, `fc1.weight`, ...).
    pub label: Option<String>,
    /// The submodel path the node comes from (`fc1`, `block.attn`; empty at top level).
    pub scope: String,
    /// Filled by shape inference (`None` when unknown after an error).
    pub shape: Option<Shape>,
    /// Filled by dtype inference.
    pub dtype: Option<DT>,
    /// Run-time control flow: the node runs only when this node's value (a scalar `bool`,
    /// itself unguarded, always computed) is true — the nodes of a run-time `if`'s branches.
    /// A skipped node leaves its value unset: only nodes under the same guard, and the
    /// branch's `phi`, read it. `None`: the node always runs.
    pub guard: Option<NodeId>,
    /// Run-time loops: the `loop_head` node of the innermost loop whose body holds this node
    /// (the node runs once per iteration); `None` outside every loop. A loop's body is the
    /// consecutive nodes between its head and its `loop_end` (see `prims::control`); the
    /// carries, the head and the end belong to the enclosing level.
    pub region: Option<NodeId>,
}

/// How a param is initialised by `randomize_params`.
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = the product of
    /// all dims but the first (or the given dim expression).
    FanIn(Option<Dim>),
    Zeros,
    Ones,
    Normal(f64, f64),
    Uniform(f64, f64),
    Full(f64),
}

/// An input terminal.
#[derive(Clone, Debug)]
pub struct InputInfo {
    pub name: String,
    pub node: NodeId,
    pub span: Span,
}

/// A param leaf.
#[derive(Clone, Debug)]
pub struct ParamInfo {
    /// Dotted path segments: `["fc1", "weight"]`.
    pub path: Vec<String>,
    pub node: NodeId,
    pub init: Init,
    pub span: Span,
    /// Declared with `buffer`: persistent state the model updates itself (`update`), saved
    /// with the params, never differentiated nor trained.
    pub buffer: bool,
}

/// Prefix of the outputs that carry a buffer's value after a training call (`update`).
pub const UPDATE_PREFIX: &str = "__upd_";

/// The buffer (param index) whose new value an output named `name` carries, if it is one.
pub fn update_param(name: &str) -> Option<usize> {
    name.strip_prefix(UPDATE_PREFIX)?.parse().ok()
}

impl ParamInfo {
    pub fn dotted(&self) -> String {
        self.path.join(".")
    }
}

/// An output terminal.
#[derive(Clone, Debug)]
pub struct OutputInfo {
    pub name: String,
    pub node: NodeId,
}

/// A flattened model.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub inputs: Vec<InputInfo>,
    pub params: Vec<ParamInfo>,
    pub outputs: Vec<OutputInfo>,
    pub env: Env,
    /// Named symbolic dims of the physical model that stay symbolic (runtime slots), in
    /// first-seen order; filled by `shapes::finish`.
    pub syms: Vec<String>,
    /// The top-level symbols as declared, with their unification variables.
    pub sym_vars: Vec<(String, Dim)>,
    /// Nodes inlined from a model of another crate: their span is the local call (rustc cannot
    /// show another crate's tokens), and this note says where inside that crate they come from.
    pub notes: std::collections::BTreeMap<NodeId, String>,
    /// Nodes built inside submodel calls: the chain of calls that reached them, innermost
    /// first (the call's tokens and "`Block(width = 16)` called as `b2`"); errors about such a
    /// node add one note per call, so a mistake caused by one call's hyperparameters says which.
    pub calls: std::collections::BTreeMap<NodeId, std::rc::Rc<Vec<(proc_macro2::Span, String)>>>,
    /// `backend_map`: the backend of each submodel instance's ops (empty: all on `backend`).
    pub placement: Placement,
    /// Slice nodes with bounds over a symbolic dim (`x[(.., i..(H - k + 1 + i))]`), resolved
    /// by shape inference once the sliced tensor's shape is known.
    pub slice_bounds: std::collections::BTreeMap<NodeId, Vec<SymBound>>,
    /// Submodel inputs declared with `...` after some dims (`[N, C, ...]`): the boundary node's
    /// pattern is `...` and the dims after it; these are the dims before it, put back by shape
    /// inference once the argument's rank is known (the node's pattern then becomes fixed).
    pub boundary_heads: std::collections::BTreeMap<NodeId, Vec<Dim>>,
}

/// A slice bound `dim + offset` over a symbolic dim (see [`Graph::slice_bounds`]).
#[derive(Clone, Debug)]
pub struct SymBound {
    /// Which slice argument (position in the slice list).
    pub pos: usize,
    /// The end (else the start) of the range.
    pub hi: bool,
    pub dim: Dim,
    pub offset: i64,
}

/// `backend_map`: which backend computes the ops of each submodel instance (by [`Node::scope`]).
#[derive(Clone, Debug, Default)]
pub struct Placement {
    /// The model's own `backend` is cuda.
    pub default_cuda: bool,
    /// `(instance path or glob, on cuda)`, as written.
    pub map: Vec<(String, bool)>,
}

impl Placement {
    /// Whether the ops of instance `scope` run on cuda: the most specific entry that covers it
    /// (a path covers that instance and everything inside it; a glob covers what it matches;
    /// the longer pattern wins), else the model's backend.
    pub fn scope_on_cuda(&self, scope: &str) -> bool {
        let mut best: Option<(usize, bool)> = None;
        for (p, cuda) in &self.map {
            let inside = scope
                .strip_prefix(p.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
            let glob = p.contains(['*', '?']) && glob_match(p, scope);
            if (inside || glob) && best.is_none_or(|(len, _)| p.len() >= len) {
                best = Some((p.len(), *cuda));
            }
        }
        best.map_or(self.default_cuda, |(_, c)| c)
    }

    /// Some ops run on another backend than the model's.
    pub fn is_mixed(&self) -> bool {
        self.map.iter().any(|(_, c)| *c != self.default_cuda)
    }
}

impl Graph {
    /// An error about node `id`, spanned on its tokens (with its note, if it has one).
    pub fn error_at(&self, id: NodeId, msg: impl fmt::Display) -> syn::Error {
        let mut e = match self.notes.get(&id) {
            Some(note) => syn::Error::new(self.nodes[id].span, format!("{msg}\n({note})")),
            None => syn::Error::new(self.nodes[id].span, msg.to_string()),
        };
        if let Some(chain) = self.calls.get(&id) {
            // a submodel input mismatch is spanned at the call's argument: its own call needs
            // no note
            let skip = usize::from(matches!(self.nodes[id].op, Op::Boundary(_)));
            with_call_notes(&mut e, chain.get(skip..).unwrap_or(&[]));
        }
        e
    }

    pub fn push(&mut self, node: Node) -> NodeId {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// The resolved shape of a node (after inference).
    pub fn shape_of(&self, id: NodeId) -> Option<Shape> {
        self.nodes[id].shape.as_ref().map(|s| self.env.shape(s))
    }

    /// The resolved dtype of a node (after inference; unbound float vars are f32 until
    /// `dtypes::finish` binds them to the default float type).
    pub fn dtype_of(&self, id: NodeId) -> Option<DType> {
        match self.nodes[id].dtype.map(|t| self.env.dt(t)) {
            Some(DT::Known(k)) => Some(k),
            Some(DT::Var(_)) => Some(DType::F32),
            None => None,
        }
    }

    /// Whether node `id` is computed on cuda under [`Graph::placement`]. Inputs, params and
    /// seeds are host memory (uploaded where a device op reads them).
    pub fn on_cuda(&self, id: NodeId) -> bool {
        match self.nodes[id].op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Mode | Op::Boundary(_) => false,
            _ => self.placement.scope_on_cuda(&self.nodes[id].scope),
        }
    }

    /// Nodes `a` and `b` run on the same backend (always, unless the model is mixed). Fusion
    /// and CSE only merge such nodes, so a `backend_map` boundary stays where it was written.
    /// They also run under the same run-time guard ([`Node::guard`]), so fusion never merges
    /// a branch's op with one outside the branch.
    pub fn same_place(&self, a: NodeId, b: NodeId) -> bool {
        self.nodes[a].guard == self.nodes[b].guard
            && self.nodes[a].region == self.nodes[b].region
            && (!self.placement.is_mixed() || self.on_cuda(a) == self.on_cuda(b))
    }

    /// The graph reads the call's mode (`is_training`).
    pub fn uses_mode(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.op, Op::Mode))
    }

    /// Some node runs under a run-time guard (the model has a run-time `if`).
    pub fn has_guards(&self) -> bool {
        self.nodes.iter().any(|n| n.guard.is_some())
    }

    /// The graph has a run-time loop.
    pub fn has_loops(&self) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(n.op, Op::Prim(Prim::LoopHead)))
    }

    /// Number of uses of each node (args + outputs).
    pub fn use_counts(&self) -> Vec<usize> {
        let mut uses = vec![0; self.nodes.len()];
        for n in &self.nodes {
            for &a in n.args.iter().chain(&n.guard) {
                uses[a] += 1;
            }
        }
        for o in &self.outputs {
            uses[o.node] += 1;
        }
        uses
    }

    /// `f32[B, 784]` for a node.
    pub fn describe(&self, id: NodeId) -> String {
        let dt = self.nodes[id].dtype.map(|t| self.env.dt(t));
        let dt = match dt {
            Some(DT::Known(k)) => k.name().to_string(),
            Some(DT::Var(_)) => "float".to_string(),
            None => "?".to_string(),
        };
        match self.shape_of(id) {
            Some(s) => format!("{dt}{}", self.fmt_shape(&s)),
            None => format!("{dt}[?]"),
        }
    }

    pub fn fmt_dim(&self, d: &Dim) -> String {
        self.env.fmt_dim(d)
    }

    pub fn fmt_shape(&self, s: &Shape) -> String {
        self.env.fmt_shape(s)
    }
}

/// Resolved dim for code generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RDim {
    Known(u64),
    /// Product of named symbols times a constant.
    Sym(u64, Vec<String>),
    Dynamic,
}

impl Graph {
    /// Dims resolved for codegen; `None` when the rank is open (`...`).
    pub fn rdims(&self, id: NodeId) -> Option<Vec<RDim>> {
        let s = self.shape_of(id)?;
        if s.rest.is_some() {
            return None;
        }
        Some(s.dims.iter().map(|d| rdim(&self.env.dim(d))).collect())
    }
}

pub fn rdim(d: &Dim) -> RDim {
    match d {
        Dim::Known(n) => RDim::Known(*n),
        Dim::Sym(s) => RDim::Sym(1, vec![s.clone()]),
        Dim::Var(_) => RDim::Dynamic,
        Dim::Prod(c, atoms) => {
            let mut names = Vec::new();
            for a in atoms {
                match a {
                    Dim::Sym(s) => names.push(s.clone()),
                    _ => return RDim::Dynamic,
                }
            }
            RDim::Sym(*c, names)
        }
    }
}

/// Appends one "note: in `M(..)` called as `m`" error per call of `chain` (innermost first),
/// each spanned on the call's tokens; a call the error itself already points at (an error
/// anchored at the call of a library model, a submodel input mismatch at the argument's call)
/// gets no note.
pub fn with_call_notes(e: &mut syn::Error, chain: &[(proc_macro2::Span, String)]) {
    let at = format!("{:?}", e.span());
    for (span, what) in chain {
        if format!("{span:?}") != at {
            e.combine(syn::Error::new(*span, format!("note: in {what}")));
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Graph {
    /// Remove the nodes whose `keep` is false, renumbering ids. Removed nodes must have no
    /// users left.
    pub fn compact(&mut self, keep: &[bool]) {
        let mut map = vec![usize::MAX; self.nodes.len()];
        let mut nodes = Vec::new();
        for (i, n) in std::mem::take(&mut self.nodes).into_iter().enumerate() {
            if keep[i] {
                map[i] = nodes.len();
                nodes.push(n);
            }
        }
        for n in &mut nodes {
            for a in n.args.iter_mut().chain(&mut n.guard).chain(&mut n.region) {
                *a = map[*a];
            }
        }
        self.nodes = nodes;
        for i in &mut self.inputs {
            i.node = map[i.node];
        }
        for p in &mut self.params {
            p.node = map[p.node];
        }
        for o in &mut self.outputs {
            o.node = map[o.node];
        }
    }

    /// Point every use of `old` at `new`.
    pub fn replace_uses(&mut self, old: NodeId, new: NodeId) {
        for n in &mut self.nodes {
            for a in n.args.iter_mut().chain(&mut n.guard) {
                if *a == old {
                    *a = new;
                }
            }
        }
        for o in &mut self.outputs {
            if o.node == old {
                o.node = new;
            }
        }
    }
}

/// Glob over dotted names: `*` matches any run of characters (dots included), `?` one.
pub fn glob_match(pat: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pat.chars().collect(), name.chars().collect());
    let (mut pi, mut ni, mut star, mut mark) = (0usize, 0usize, None::<usize>, 0usize);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}
