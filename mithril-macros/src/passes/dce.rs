//! Dead code elimination: nodes no output depends on are removed, so outputs not asked for
//! (and work feeding only them) cost nothing. Inputs and params stay: they are the interface.

use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph, extra_roots: &[usize]) -> usize {
    let mut live = vec![false; g.nodes.len()];
    for o in &g.outputs {
        live[o.node] = true;
    }
    for &r in extra_roots {
        live[r] = true;
    }
    for id in (0..g.nodes.len()).rev() {
        if live[id] {
            let n = &g.nodes[id];
            for &a in n.args.iter().chain(&n.guard).chain(&n.region) {
                live[a] = true;
            }
        }
    }
    let mut removed = 0;
    for (id, n) in g.nodes.iter().enumerate() {
        if matches!(n.op, Op::Input(_) | Op::Param(_) | Op::Seed(_)) {
            live[id] = true;
        } else if !live[id] {
            removed += 1;
        }
    }
    g.compact(&live);
    retape(g);
    removed
}

/// A loop saves (tapes) only the carries the backward pass still reads: after DCE removed the
/// reads a gradient did not need, each `loop_test`'s tape mask is recomputed from the
/// `tape_read`s left.
fn retape(g: &mut Graph) {
    use crate::prims::Prim;
    let mut masks: std::collections::HashMap<usize, u64> = Default::default();
    for n in &g.nodes {
        if let Op::Prim(Prim::TapeRead(j)) = n.op {
            *masks.entry(n.args[0]).or_default() |= 1u64 << j;
        }
    }
    for (id, n) in g.nodes.iter_mut().enumerate() {
        if let Op::Prim(Prim::LoopTest { tape, .. }) = &mut n.op {
            *tape = masks.get(&id).copied().unwrap_or(0);
        }
    }
}
