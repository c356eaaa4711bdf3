//! Operator fusion.
//!
//! - Elementwise chains: an elementwise node absorbs an elementwise operand that has no other
//!   user and the same shape, so a chain becomes one `Fused` node: one loop, no intermediate
//!   buffers. Scalar constants become literals. A group reads at most [`MAX_ARGS`] tensors.
//! - A `transpose` of the last two axes feeding `matmul` becomes the matmul's transpose flag
//!   (no copy of Linear's `[out, in]` weight).
//!
//! In a mixed model (`backend_map`) a group never spans two backends.

use crate::ir::{FExpr, Graph, NodeId, Op};
use crate::prims::{acc_dtype, Prim};

/// Most tensors one fused loop reads.
pub const MAX_ARGS: usize = 5;

pub fn run(g: &mut Graph) -> usize {
    let mut changes = 0;
    let mut keep = vec![true; g.nodes.len()];
    let uses = g.use_counts();

    // a transpose of a matmul's result is the swapped product: (A B)^T = B^T A^T (the
    // backward graph of `x @ w.T` produces these for weight gradients)
    for id in 0..g.nodes.len() {
        let Op::Prim(Prim::Transpose(perm)) = &g.nodes[id].op else {
            continue;
        };
        let src = g.nodes[id].args[0];
        let Op::Prim(Prim::Matmul { ta, tb }) = g.nodes[src].op.clone() else {
            continue;
        };
        let r = g
            .shape_of(src)
            .map(|s| if s.rest.is_some() { 0 } else { s.dims.len() })
            .unwrap_or(0);
        let ranks_ok = g.nodes[src].args.iter().all(|&a| {
            g.shape_of(a)
                .is_some_and(|s| s.rest.is_none() && s.dims.len() == r)
        });
        if r < 2 || !ranks_ok || uses[src] != 1 || !keep[src] || !swaps_last_two(perm, r) {
            continue;
        }
        let (a, b) = (g.nodes[src].args[0], g.nodes[src].args[1]);
        g.nodes[id].op = Op::Prim(Prim::Matmul { ta: !tb, tb: !ta });
        g.nodes[id].args = vec![b, a];
        keep[src] = false;
        changes += 1;
    }

    // matmul absorbs transposes of its operands' last two axes
    for id in 0..g.nodes.len() {
        let Op::Prim(Prim::Matmul { ta, tb }) = g.nodes[id].op.clone() else {
            continue;
        };
        let mut flags = [ta, tb];
        for (k, flag) in flags.iter_mut().enumerate() {
            let a = g.nodes[id].args[k];
            if let Op::Prim(Prim::Transpose(perm)) = &g.nodes[a].op {
                let r = g
                    .shape_of(a)
                    .map(|s| if s.rest.is_some() { 0 } else { s.dims.len() })
                    .unwrap_or(0);
                // free even when the transpose has other users: the flag costs nothing, and
                // dead-code elimination drops the transpose once no user is left
                if swaps_last_two(perm, r) {
                    let src = g.nodes[a].args[0];
                    g.nodes[id].args[k] = src;
                    *flag = !*flag;
                    if uses[a] == 1 {
                        keep[a] = false;
                    }
                    changes += 1;
                }
            }
        }
        g.nodes[id].op = Op::Prim(Prim::Matmul {
            ta: flags[0],
            tb: flags[1],
        });
    }

    // elementwise chains
    for id in 0..g.nodes.len() {
        let Op::Prim(p) = g.nodes[id].op.clone() else {
            continue;
        };
        if !p.is_elementwise() {
            continue;
        }
        let out = g.dtype_of(id).unwrap_or(crate::ir::DType::F32);
        let arg_dts: Vec<_> = g.nodes[id]
            .args
            .iter()
            .map(|&a| g.dtype_of(a).unwrap_or(out))
            .collect();
        let compute = p.compute_dtype(&arg_dts, out);
        let my_shape = g.shape_of(id);
        let mut new_args: Vec<NodeId> = Vec::new();
        let mut children = Vec::new();
        let args = g.nodes[id].args.clone();
        for &a in &args {
            let child = match &g.nodes[a].op {
                Op::Const(s) => FExpr::Lit(*s, acc_dtype(g.dtype_of(a).unwrap_or(out))),
                Op::Fused(e)
                    if uses[a] == 1
                        && g.shape_of(a) == my_shape
                        && keep[a]
                        && g.same_place(a, id) =>
                {
                    let sub_args = g.nodes[a].args.clone();
                    let mut trial = new_args.clone();
                    for s in &sub_args {
                        if !trial.contains(s) {
                            trial.push(*s);
                        }
                    }
                    if trial.len() + remaining_args(&args, a, &new_args, &trial) > MAX_ARGS {
                        FExpr::Arg(slot(&mut new_args, a))
                    } else {
                        let remap: Vec<usize> =
                            sub_args.iter().map(|s| slot(&mut new_args, *s)).collect();
                        keep[a] = false;
                        changes += 1;
                        remap_expr(e, &remap)
                    }
                }
                _ => FExpr::Arg(slot(&mut new_args, a)),
            };
            children.push(child);
        }
        g.nodes[id].op = Op::Fused(FExpr::Op(p, children, out, compute));
        g.nodes[id].args = new_args;
    }
    g.compact(&keep);
    changes
}

fn slot(args: &mut Vec<NodeId>, a: NodeId) -> usize {
    match args.iter().position(|x| *x == a) {
        Some(i) => i,
        None => {
            args.push(a);
            args.len() - 1
        }
    }
}

/// Args of the node not yet placed (rough upper bound, to respect MAX_ARGS).
fn remaining_args(all: &[NodeId], current: NodeId, placed: &[NodeId], trial: &[NodeId]) -> usize {
    let pos = all.iter().position(|x| *x == current).unwrap_or(all.len());
    all[pos + 1..]
        .iter()
        .filter(|x| !placed.contains(x) && !trial.contains(x))
        .count()
}

fn remap_expr(e: &FExpr, map: &[usize]) -> FExpr {
    match e {
        FExpr::Arg(i) => FExpr::Arg(map[*i]),
        FExpr::Lit(s, t) => FExpr::Lit(*s, *t),
        FExpr::Op(p, xs, o, c) => FExpr::Op(
            p.clone(),
            xs.iter().map(|x| remap_expr(x, map)).collect(),
            *o,
            *c,
        ),
    }
}

/// Does `perm` (empty: reverse all) swap exactly the last two of `r` axes?
fn swaps_last_two(perm: &[usize], r: usize) -> bool {
    if r < 2 {
        return false;
    }
    let p: Vec<usize> = if perm.is_empty() {
        (0..r).rev().collect()
    } else {
        perm.to_vec()
    };
    let mut want: Vec<usize> = (0..r).collect();
    want.swap(r - 1, r - 2);
    p == want
}
