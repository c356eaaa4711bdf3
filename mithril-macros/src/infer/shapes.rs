//! Step 3: shape inference. Walks the flattened graph in order, applying each primitive's shape
//! rule (defined in `prims`), unifying symbolic dims across the whole graph and checking every
//! submodel boundary against the submodel's declared shape. Errors are spanned on the tokens of
//! the failing op and print the operands' shapes with their symbolic names; a failed node poisons
//! its users so one mistake gives one error.

use crate::ir::{Dim, Graph, NodeId, Op, Shape};

/// The shape-inference trace of one physical model (`trace_shapes: true`): what every node's
/// rule saw and made, and for each top-level symbol where it was declared and every node that
/// changed what it stands for.
#[derive(Debug, Default)]
pub struct Trace {
    /// One line per node, in inference order:
    /// `%3 h = matmul(%0 f32[B, 4], %1 f32[4, 8]) -> f32[B, 8]`, then `; unified: K = 4` when
    /// its rule bound dim variables.
    pub nodes: Vec<String>,
    /// The model's symbols, as declared.
    pub syms: Vec<SymTrace>,
}

/// One symbol of the shape trace.
#[derive(Debug)]
pub struct SymTrace {
    pub name: String,
    /// The terminals whose declared shape mentions it (``input `x` f32[B, 4]``); the first one
    /// binds it at run time.
    pub declared: Vec<String>,
    /// What it stood for when inference began (itself, or a size `shapes:` fixed).
    pub start: String,
    /// Every node that changed what it stands for: `= 4 at %3 `matmul` (h)`.
    pub events: Vec<String>,
}

/// How the trace names node `id`'s op.
fn op_word(g: &Graph, id: NodeId) -> String {
    match &g.nodes[id].op {
        Op::Input(_) => "input".into(),
        Op::Param(_) => "param".into(),
        Op::Const(_) => "const".into(),
        Op::Boundary(p) => format!("boundary {}", g.fmt_shape(p)),
        Op::Prim(p) => p.name().into(),
        Op::Fused(_) | Op::FusedMatmul { .. } => "fused".into(),
        Op::Seed(_) => "seed".into(),
        Op::Mode => "is_training".into(),
    }
}

/// `%3 h` (the node and its label, if any).
fn node_word(g: &Graph, id: NodeId) -> String {
    match &g.nodes[id].label {
        Some(l) => format!("%{id} {l}"),
        None => format!("%{id}"),
    }
}

impl Trace {
    /// The symbols and the terminals that declare them, before inference.
    fn start(g: &Graph) -> Trace {
        let mut syms = Vec::new();
        for (name, var) in &g.sym_vars {
            let root = g.env.dim(var);
            let mentions = |id: NodeId| {
                g.nodes[id]
                    .shape
                    .as_ref()
                    .is_some_and(|s| s.dims.iter().any(|d| g.env.dim(d) == root))
            };
            let mut declared = Vec::new();
            for i in &g.inputs {
                if mentions(i.node) {
                    declared.push(format!("input `{}` {}", i.name, g.describe(i.node)));
                }
            }
            for p in &g.params {
                if mentions(p.node) {
                    declared.push(format!("param `{}` {}", p.dotted(), g.describe(p.node)));
                }
            }
            syms.push(SymTrace {
                name: name.clone(),
                declared,
                start: g.fmt_dim(var),
                events: Vec::new(),
            });
        }
        Trace {
            nodes: Vec::new(),
            syms,
        }
    }
}

/// Run shape inference; returns the errors. Records the [`Trace`] into `trace` when given
/// (`trace_shapes: true`).
pub fn infer_traced(g: &mut Graph, mut trace: Option<&mut Trace>) -> Vec<syn::Error> {
    if let Some(t) = trace.as_deref_mut() {
        *t = Trace::start(g);
    }
    let mut errors = Vec::new();
    for id in 0..g.nodes.len() {
        // what the trace compares after the node: the unbound variables, each symbol's value
        let before = trace.as_ref().map(|_| {
            let args: Vec<String> = g.nodes[id]
                .args
                .iter()
                .map(|&a| format!("%{a} {}", g.describe(a)))
                .collect();
            let syms: Vec<String> = g.sym_vars.iter().map(|(_, v)| g.fmt_dim(v)).collect();
            (g.env.unbound_dim_vars(), args, syms)
        });
        let n_errors = errors.len();
        infer_node(g, id, &mut errors);
        if let (Some(t), Some((unbound, args, syms))) = (trace.as_deref_mut(), before) {
            let mut line = match &g.nodes[id].op {
                Op::Input(_) | Op::Param(_) | Op::Const(_) => {
                    format!(
                        "{} = {} : {}",
                        node_word(g, id),
                        op_word(g, id),
                        g.describe(id)
                    )
                }
                _ => format!(
                    "{} = {}({}) -> {}",
                    node_word(g, id),
                    op_word(g, id),
                    args.join(", "),
                    g.describe(id)
                ),
            };
            if errors.len() > n_errors {
                line.push_str("; error");
            }
            let bound: Vec<String> = unbound
                .into_iter()
                .filter(|&v| g.env.is_bound(v) && g.env.dim_names[v as usize] != "_")
                .map(|v| {
                    format!(
                        "{} = {}",
                        g.env.dim_names[v as usize],
                        g.fmt_dim(&Dim::Var(v))
                    )
                })
                .collect();
            if !bound.is_empty() {
                line.push_str(&format!("; unified: {}", bound.join(", ")));
            }
            t.nodes.push(line);
            for (k, (_, v)) in g.sym_vars.iter().enumerate() {
                let now = g.fmt_dim(v);
                if now != syms[k] {
                    if let Some(st) = t.syms.get_mut(k) {
                        st.events.push(format!(
                            "= {now} at {} `{}`",
                            node_word(g, id),
                            op_word(g, id)
                        ));
                    }
                }
            }
        }
    }
    errors
}

/// Node `id`'s shape rule (errors into `errors`).
fn infer_node(g: &mut Graph, id: NodeId, errors: &mut Vec<syn::Error>) {
    let args = g.nodes[id].args.clone();
    let arg_shapes: Option<Vec<Shape>> = args.iter().map(|&a| g.nodes[a].shape.clone()).collect();
    if let (Some(bounds), Some(s)) = (g.slice_bounds.get(&id).cloned(), &arg_shapes) {
        match crate::prims::shape::resolve_slice_bounds(g, id, &bounds, &s[0]) {
            Ok(()) => {}
            Err(msg) => {
                errors.push(g.error_at(id, msg));
                return;
            }
        }
    }
    let op = g.nodes[id].op.clone();
    let result: Option<Result<Shape, String>> = match &op {
        Op::Input(_) | Op::Param(_) => None,
        Op::Const(_) => Some(Ok(Shape::scalar())),
        Op::Boundary(pattern) => arg_shapes.map(|s| {
            let actual = s[0].clone();
            let before = g.describe(args[0]);
            let mut pattern = pattern.clone();
            if let Some(head) = g.boundary_heads.get(&id).cloned() {
                let mut whole = Shape::fixed(head.clone());
                whole.dims.push(Dim::Sym("...".into()));
                whole.dims.extend(pattern.dims.iter().cloned());
                let shown = g.fmt_shape(&whole).replace("\"...\"", "...");
                let a = g.env.shape(&actual);
                let p = g.env.shape(&pattern);
                let fixed = head.len() + p.dims.len();
                let label = g.nodes[id]
                    .label
                    .clone()
                    .unwrap_or_else(|| "the submodel".into());
                if a.rest.is_some() {
                    return Err(format!("shape mismatch: {label} expects {shown}, whose leading dims need the argument's rank, but this argument is {before} (its rank is open)"));
                }
                if a.dims.len() < fixed {
                    return Err(format!("shape mismatch: {label} expects {shown} (rank {fixed} or more) but this argument is {before}"));
                }
                // the `...` takes the argument's middle dims; the pattern becomes fixed
                let middle = a.dims[head.len()..a.dims.len() - p.dims.len()].to_vec();
                if let Some(r) = p.rest {
                    g.env.bind_rest(r, Shape::fixed(middle.clone()));
                }
                let mut dims = head;
                dims.extend(middle);
                dims.extend(p.dims);
                pattern = Shape::fixed(dims);
                g.boundary_heads.remove(&id);
                g.nodes[id].op = Op::Boundary(pattern.clone());
            }
            let pattern = &pattern;
            let shown = g.fmt_shape(pattern);
            match g.env.unify_pattern(pattern, &actual) {
                Ok(()) => Ok(pattern.clone()),
                Err(why) => Err(format!(
                    "shape mismatch: {} expects {} but this argument is {} ({why})",
                    g.nodes[id]
                        .label
                        .clone()
                        .unwrap_or_else(|| "the submodel".into()),
                    shown,
                    before
                )),
            }
        }),
        Op::Prim(p) => arg_shapes.map(|s| {
            let before: Vec<String> = args.iter().map(|&a| g.describe(a)).collect();
            p.infer_shape(&mut g.env, &s).map_err(|why| {
                // a rule that words its whole message itself (a run-time `if`'s)
                if let Some(m) = why.strip_prefix("shape: ") {
                    return m.to_string();
                }
                if why.starts_with("shapes ") {
                    return why;
                }
                // a loop variable: named by its label
                if matches!(p, crate::prims::Prim::LoopNext) {
                    let name = g.nodes[id].label.clone().unwrap_or_default();
                    return format!("loop variable `{name}`: {why}");
                }
                let operands = if p.is_elementwise() && before.len() == 2 {
                    format!("{} does not broadcast with {}", before[0], before[1])
                } else {
                    before.join(", ")
                };
                format!("shape mismatch in `{}`: {operands}; {why}", p.name())
            })
        }),
        Op::Fused(_) | Op::FusedMatmul { .. } | Op::Seed(_) | Op::Mode => None,
    };
    match result {
        Some(Ok(s)) => g.nodes[id].shape = Some(s),
        Some(Err(msg)) => errors.push(g.error_at(id, msg)),
        None => {}
    }
}

/// Turn the physical model's named symbols that stayed open into `Dim::Sym` (runtime slots).
/// A symbol unified with a constant becomes that constant; two symbols unified with each other
/// become one (the first declared).
pub fn finish(g: &mut Graph) {
    g.syms.clear();
    for (name, v) in g.sym_vars.clone() {
        match g.env.dim(&v) {
            Dim::Var(_) => {
                let _ = g.env.unify_dim(&v, &Dim::Sym(name.clone()));
                g.syms.push(name);
            }
            Dim::Sym(s) if !g.syms.contains(&s) => g.syms.push(s),
            _ => {}
        }
    }
}
