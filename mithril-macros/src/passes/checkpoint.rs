//! Gradient checkpointing (`gradient_checkpointing: { segments: N }`) on the forward+backward
//! graph, after the other passes (CSE would merge the recomputations back).
//!
//! The forward nodes (those the forward outputs depend on) are cut into `N` contiguous segments
//! of equal op count. For every segment but the last, the activations that the backward pass
//! reads are recomputed from the segment's inputs just before the first backward node that
//! needs them, and the backward nodes read the recomputed copies. The originals then die as soon
//! as the forward pass is done with them; only the values that cross segments (the checkpoints)
//! stay alive until their segment's backward. Recomputation runs the same kernels on the same
//! values, so gradients are bitwise the same.

use crate::ir::{Graph, NodeId, Op};
use crate::passes::autodiff::GRAD_PREFIX;

/// Applies checkpointing; returns the number of nodes recomputed.
pub fn run(g: &mut Graph, segments: usize) -> usize {
    let n = g.nodes.len();
    // (a model with a run-time `if` keeps its activations: the summary says so)
    if segments < 2 || g.has_guards() || g.has_loops() {
        return 0;
    }
    // forward: ancestors of the forward (non-gradient) outputs
    let mut fwd = vec![false; n];
    let mut stack: Vec<NodeId> = g
        .outputs
        .iter()
        .filter(|o| !o.name.starts_with(GRAD_PREFIX))
        .map(|o| o.node)
        .collect();
    while let Some(id) = stack.pop() {
        if !fwd[id] {
            fwd[id] = true;
            stack.extend(g.nodes[id].args.iter().copied());
        }
    }
    let computes = |id: NodeId| {
        matches!(
            g.nodes[id].op,
            Op::Prim(_) | Op::Fused(_) | Op::FusedMatmul { .. }
        )
    };
    let fwd_ops: Vec<NodeId> = (0..n).filter(|&i| fwd[i] && computes(i)).collect();
    if fwd_ops.len() < segments {
        return 0;
    }
    let mut seg = vec![usize::MAX; n];
    for (k, &id) in fwd_ops.iter().enumerate() {
        seg[id] = k * segments / fwd_ops.len();
    }
    let last = segments - 1;
    // activations of early segments read by backward nodes
    let mut needed = vec![false; n];
    let mut insert_at = vec![usize::MAX; segments];
    for b in (0..n).filter(|&i| !fwd[i]) {
        for &a in &g.nodes[b].args {
            if seg[a] < last {
                needed[a] = true;
                insert_at[seg[a]] = insert_at[seg[a]].min(b);
            }
        }
    }
    // what to recompute: the needed nodes and their same-segment ancestors
    let mut recompute = vec![false; n];
    let mut stack: Vec<NodeId> = (0..n).filter(|&i| needed[i]).collect();
    while let Some(id) = stack.pop() {
        if !recompute[id] {
            recompute[id] = true;
            for &a in &g.nodes[id].args {
                if seg[a] == seg[id] {
                    stack.push(a);
                }
            }
        }
    }
    let count = recompute.iter().filter(|&&r| r).count();
    if count == 0 {
        return 0;
    }
    // the new schedule: old nodes in order, each segment's recomputation emitted just before
    // its insertion point
    let old = std::mem::take(&mut g.nodes);
    let mut map = vec![usize::MAX; n]; // old id -> new id of the original
    let mut copy = vec![usize::MAX; n]; // old id -> new id of the recomputed copy
    let mut nodes = Vec::with_capacity(n + count);
    for id in 0..n {
        for (k, &at) in insert_at.iter().enumerate() {
            if at != id {
                continue;
            }
            for r in (0..n).filter(|&r| recompute[r] && seg[r] == k) {
                let mut c = old[r].clone();
                for a in &mut c.args {
                    *a = if recompute[*a] && seg[*a] == k {
                        copy[*a]
                    } else {
                        map[*a]
                    };
                }
                copy[r] = nodes.len();
                nodes.push(c);
            }
        }
        let mut node = old[id].clone();
        for a in &mut node.args {
            *a = if !fwd[id] && copy[*a] != usize::MAX {
                copy[*a]
            } else {
                map[*a]
            };
        }
        map[id] = nodes.len();
        nodes.push(node);
    }
    g.nodes = nodes;
    for i in &mut g.inputs {
        i.node = map[i.node];
    }
    for p in &mut g.params {
        p.node = map[p.node];
    }
    for o in &mut g.outputs {
        o.node = map[o.node];
    }
    g.notes = std::mem::take(&mut g.notes)
        .into_iter()
        .map(|(k, v)| (map[k], v))
        .collect();
    count
}
