//! Step 3: shape inference. Walks the flattened graph in order, applying each primitive's shape
//! rule (defined in `prims`), unifying symbolic dims across the whole graph and checking every
//! submodel boundary against the submodel's declared shape. Errors are spanned on the tokens of
//! the failing op and print the operands' shapes with their symbolic names; a failed node poisons
//! its users so one mistake gives one error.

use crate::ir::{Dim, Env, Graph, Op, Shape};

/// Run shape inference; returns the errors.
pub fn infer(g: &mut Graph) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    for id in 0..g.nodes.len() {
        let args = g.nodes[id].args.clone();
        let arg_shapes: Option<Vec<Shape>> =
            args.iter().map(|&a| g.nodes[a].shape.clone()).collect();
        let op = g.nodes[id].op.clone();
        let result: Option<Result<Shape, String>> = match &op {
            Op::Input(_) | Op::Param(_) => None,
            Op::Const(_) => Some(Ok(Shape::scalar())),
            Op::Boundary(pattern) => arg_shapes.map(|s| {
                let actual = s[0].clone();
                let before = g.describe(args[0]);
                let shown = g.fmt_shape(pattern);
                match unify_pattern(&mut g.env, pattern, &actual) {
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
                    let operands = if p.is_elementwise() && before.len() == 2 {
                        format!("{} does not broadcast with {}", before[0], before[1])
                    } else {
                        before.join(", ")
                    };
                    format!("shape mismatch in `{}`: {operands}; {why}", p.name())
                })
            }),
            Op::Fused(_) | Op::FusedMatmul { .. } | Op::Seed(_) => None,
        };
        match result {
            Some(Ok(s)) => g.nodes[id].shape = Some(s),
            Some(Err(msg)) => errors.push(g.error_at(id, msg)),
            None => {}
        }
    }
    errors
}

/// Match an actual shape against a declared pattern (binding `...` and instance symbols).
pub fn unify_pattern(env: &mut Env, pattern: &Shape, actual: &Shape) -> Result<(), String> {
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
                show(env, ad),
                show(env, pd)
            ));
        }
    }
    Ok(())
}

fn show(env: &Env, d: &Dim) -> String {
    env.fmt_dim(d)
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
