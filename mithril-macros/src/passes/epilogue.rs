//! Epilogue fusion: a 2-D `matmul` whose only user is an elementwise group of the same shape and
//! float dtype (a Linear's bias add and activation, a residual add, a scaling) becomes one
//! `FusedMatmul` node. So does a `[.., M, K] @ [K, N]` product of a higher-rank left operand
//! without `ta` (a `Linear` over `[B, S, IN]`): the runtime reads it as one `[B·S, K]` GEMM when
//! the left operand's rows merge, and otherwise runs the product and then the epilogue. The GEMM applies the group to each tile of the product while the tile is
//! in registers/L1, so the product is never written out and read back, and it needs no buffer.
//!
//! Runs after elementwise fusion (so the whole group is absorbed at once).

use super::fuse::MAX_ARGS;
use crate::ir::{FExpr, Graph, NodeId, Op};
use crate::prims::Prim;

fn rank(g: &Graph, id: NodeId) -> Option<usize> {
    g.shape_of(id)
        .filter(|s| s.rest.is_none())
        .map(|s| s.dims.len())
}

fn rank2(g: &Graph, id: NodeId) -> bool {
    rank(g, id) == Some(2)
}

/// A matmul the GEMM runs with an epilogue: 2-D operands, or an `a` of rank `r > 2` (not
/// transposed) times a 2-D `b`, giving rank `r`.
fn gemm_shaped(g: &Graph, m: NodeId) -> bool {
    let Op::Prim(Prim::Matmul { ta, .. }) = g.nodes[m].op else {
        return false;
    };
    let (a, b) = match g.nodes[m].args[..] {
        [a, b] => (a, b),
        _ => return false,
    };
    if rank2(g, m) && rank2(g, a) && rank2(g, b) {
        return true;
    }
    !ta && rank2(g, b) && rank(g, a).is_some_and(|r| r > 2) && rank(g, m) == rank(g, a)
}

/// `e` with `Arg(i)` renamed by `map`.
fn remap(e: &FExpr, map: &dyn Fn(usize) -> usize) -> FExpr {
    match e {
        FExpr::Arg(i) => FExpr::Arg(map(*i)),
        FExpr::Lit(..) => e.clone(),
        FExpr::Op(p, args, out, compute) => FExpr::Op(
            p.clone(),
            args.iter().map(|a| remap(a, map)).collect(),
            *out,
            *compute,
        ),
    }
}

pub fn run(g: &mut Graph) -> usize {
    let uses = g.use_counts();
    let mut is_output = vec![false; g.nodes.len()];
    for o in &g.outputs {
        is_output[o.node] = true;
    }
    let mut keep = vec![true; g.nodes.len()];
    let mut changes = 0;
    for id in 0..g.nodes.len() {
        let expr = match &g.nodes[id].op {
            Op::Fused(e) => e.clone(),
            Op::Prim(p) if p.is_elementwise() => FExpr::Op(
                p.clone(),
                (0..g.nodes[id].args.len()).map(FExpr::Arg).collect(),
                g.dtype_of(id).unwrap_or(crate::ir::DType::F32),
                p.compute_dtype(
                    &g.nodes[id]
                        .args
                        .iter()
                        .map(|&a| g.dtype_of(a).unwrap_or(crate::ir::DType::F32))
                        .collect::<Vec<_>>(),
                    g.dtype_of(id).unwrap_or(crate::ir::DType::F32),
                ),
            ),
            _ => continue,
        };
        let args = g.nodes[id].args.clone();
        let Some(dt) = g.dtype_of(id).filter(|t| t.is_float()) else {
            continue;
        };
        // the first matmul operand that qualifies
        let found = args.iter().enumerate().find(|&(_, &m)| {
            matches!(g.nodes[m].op, Op::Prim(Prim::Matmul { .. }))
                && uses[m] == 1
                && !is_output[m]
                && keep[m]
                && g.same_place(m, id)
                && args.iter().filter(|&&x| x == m).count() == 1
                && g.dtype_of(m) == Some(dt)
                && gemm_shaped(g, m)
                && g.shape_of(m).map(|s| {
                    g.env
                        .shape(&s)
                        .dims
                        .iter()
                        .map(|d| g.env.dim(d))
                        .collect::<Vec<_>>()
                }) == g.shape_of(id).map(|s| {
                    g.env
                        .shape(&s)
                        .dims
                        .iter()
                        .map(|d| g.env.dim(d))
                        .collect::<Vec<_>>()
                })
        });
        let Some((pos, &m)) = found else { continue };
        let others: Vec<NodeId> = args
            .iter()
            .enumerate()
            .filter(|&(i, _)| i != pos)
            .map(|(_, &a)| a)
            .collect();
        if others.len() + 1 > MAX_ARGS || others.iter().any(|&o| g.dtype_of(o) != Some(dt)) {
            continue;
        }
        let Op::Prim(Prim::Matmul { ta, tb }) = g.nodes[m].op else {
            continue;
        };
        // Arg(pos) -> Arg(0); the others keep their order from Arg(1)
        let expr = remap(&expr, &|i| {
            if i == pos {
                0
            } else if i < pos {
                i + 1
            } else {
                i
            }
        });
        let mut new_args = g.nodes[m].args.clone();
        new_args.extend(others);
        g.nodes[id].op = Op::FusedMatmul { ta, tb, expr };
        g.nodes[id].args = new_args;
        keep[m] = false;
        changes += 1;
    }
    if changes > 0 {
        g.compact(&keep);
    }
    changes
}
