//! Removes the `Boundary` nodes left by flattening once inference has checked them (always on:
//! they compute nothing).

use crate::ir::{Graph, Op};

pub fn run(g: &mut Graph) -> usize {
    let mut keep = vec![true; g.nodes.len()];
    let mut n = 0;
    for (id, k) in keep.iter_mut().enumerate() {
        if let Op::Boundary(_) = g.nodes[id].op {
            let mut src = g.nodes[id].args[0];
            while let Op::Boundary(_) = g.nodes[src].op {
                src = g.nodes[src].args[0];
            }
            g.replace_uses(id, src);
            *k = false;
            n += 1;
        }
    }
    // keep labels of outputs meaningful
    g.compact(&keep);
    n
}
