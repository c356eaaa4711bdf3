//! Step 3: shape inference. Walks the flattened graph in order, applying each primitive's shape
//! rule (defined in `prims`), unifying symbolic dims across the whole graph and checking every
//! submodel boundary against the submodel's declared shape. Errors are spanned on the tokens of
//! the failing op and print the operands' shapes with their symbolic names; a failed node poisons
//! its users so one mistake gives one error.

use crate::ir::{Dim, Graph, Op, Shape};

/// Run shape inference; returns the errors.
pub fn infer(g: &mut Graph) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    for id in 0..g.nodes.len() {
        let args = g.nodes[id].args.clone();
        let arg_shapes: Option<Vec<Shape>> =
            args.iter().map(|&a| g.nodes[a].shape.clone()).collect();
        if let (Some(bounds), Some(s)) = (g.slice_bounds.get(&id).cloned(), &arg_shapes) {
            match crate::prims::shape::resolve_slice_bounds(g, id, &bounds, &s[0]) {
                Ok(()) => {}
                Err(msg) => {
                    errors.push(g.error_at(id, msg));
                    continue;
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
    errors
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
