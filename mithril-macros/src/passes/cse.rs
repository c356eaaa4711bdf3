//! Common subexpression elimination: two nodes with the same op and the same args (commutative
//! args in either order) become one.

use crate::ir::{Graph, Op};
use std::collections::HashMap;

pub fn run(g: &mut Graph) -> usize {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut keep = vec![true; g.nodes.len()];
    let mut n = 0;
    for (id, k) in keep.iter_mut().enumerate() {
        let node = &g.nodes[id];
        if matches!(
            node.op,
            Op::Input(_) | Op::Param(_) | Op::Boundary(_) | Op::Seed(_) | Op::Mode
        ) || node_is_loop_structure(&node.op)
        {
            continue;
        }
        let mut args = node.args.clone();
        if let Op::Prim(p) = &node.op {
            if p.is_commutative() {
                args.sort();
            }
        }
        // in a mixed model (`backend_map`) each backend keeps its own copy
        // and each run-time branch its own (a branch's node may not run), and each loop body
        // its own (a body's node has not run when the loop ran no iteration)
        let key = format!(
            "{:?}|{:?}|{:?}|{}|{:?}|{:?}",
            node.op,
            args,
            node.dtype.map(|t| g.env.dt(t)),
            g.placement.is_mixed() && g.on_cuda(id),
            node.guard,
            node.region
        );
        match seen.get(&key) {
            Some(&prev) => {
                g.replace_uses(id, prev);
                *k = false;
                n += 1;
            }
            None => {
                seen.insert(key, id);
            }
        }
    }
    g.compact(&keep);
    n
}

/// The nodes of a loop's structure (each is its own: two carries with the same initial value
/// are two variables).
fn node_is_loop_structure(op: &Op) -> bool {
    use crate::prims::Prim::*;
    matches!(
        op,
        Op::Prim(Carry | LoopHead | LoopTest { .. } | LoopNext | LoopEnd | LoopExit | TapeRead(_))
    )
}
