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
            match resolve_slice_bounds(g, id, &bounds, &s[0]) {
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

/// Resolves the symbolic bounds of slice node `id` (`x[(.., i..(H - k + 1 + i))]`) against the
/// sliced tensor's shape `input`: a bound over a dim known at compile time becomes that number;
/// a bound `D + c` over the sliced axis's own symbolic dim `D` becomes the index `c` counted
/// from the end (Python's negative index) when `c < 0`, else the end of the axis (bounds clamp).
fn resolve_slice_bounds(
    g: &mut Graph,
    id: usize,
    bounds: &[crate::ir::SymBound],
    input: &Shape,
) -> Result<(), String> {
    use crate::prims::{Prim, SliceArg};
    let Op::Prim(Prim::Slice(mut args)) = g.nodes[id].op.clone() else {
        return Ok(());
    };
    let input = g.env.shape(input);
    for b in bounds {
        // the axis the argument slices: one per index or range before it (new axes take none)
        let axis = args[..b.pos.min(args.len())]
            .iter()
            .filter(|a| !matches!(a, SliceArg::NewAxis))
            .count();
        let bound = g.env.dim(&b.dim);
        let value = match bound {
            Dim::Known(n) => i64::try_from(n)
                .ok()
                .and_then(|n| n.checked_add(b.offset))
                .ok_or("slice bound out of range")?,
            _ => {
                let axis_dim = match (&input.rest, input.dims.get(axis)) {
                    (None, Some(d)) => g.env.dim(d),
                    _ => {
                        return Err(format!(
                            "the slice bound `{}` is symbolic, which needs the sliced axis {axis} to be a declared dim of {}",
                            show_bound(g, b),
                            g.describe(g.nodes[id].args[0])
                        ))
                    }
                };
                if axis_dim != bound {
                    return Err(format!(
                        "the slice bound `{}` is over `{}`, but axis {axis} of {} is `{}`; a symbolic bound must be relative to the dim of the axis it slices",
                        show_bound(g, b),
                        g.fmt_dim(&b.dim),
                        g.describe(g.nodes[id].args[0]),
                        g.fmt_dim(&axis_dim),
                    ));
                }
                if b.offset < 0 {
                    b.offset
                } else {
                    i64::MAX
                }
            }
        };
        if let Some(SliceArg::Range(lo, hi, _)) = args.get_mut(b.pos) {
            if b.hi {
                *hi = Some(value);
            } else {
                *lo = Some(value);
            }
        }
    }
    g.nodes[id].op = Op::Prim(Prim::Slice(args));
    Ok(())
}

fn show_bound(g: &Graph, b: &crate::ir::SymBound) -> String {
    let d = g.fmt_dim(&b.dim);
    match b.offset {
        0 => d,
        c if c < 0 => format!("{d} - {}", -(c as i128)),
        c => format!("{d} + {c}"),
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
