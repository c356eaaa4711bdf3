//! Step 5b: memory planning. Lifetime analysis over the scheduled graph (the schedule is node
//! order), in-place reuse decisions, and — when every dim is known at compile time — the static
//! greedy plan (the same planner the runtime uses, `mithril_kernels::memplan`).
//!
//! Every node that computes a value gets a *slot* (an arena buffer), except:
//! * inputs, params, output-gradient seeds: user memory, read in place;
//! * boundaries: views of their argument (they extend the argument's lifetime);
//! * reshapes of a value in a slot or of user memory: views of it (extending a slot's
//!   lifetime), outside run-time loops and branches;
//! * outputs: returned to the caller, so they are owned arrays outside the arena;
//! * elementwise ops that may overwrite a dead argument of the same dtype and shape: they write
//!   in place and share that argument's slot (extending its lifetime).
//!
//! A slot lives from the step of the node that first writes it to the last step that reads it
//! or any alias of it.

use crate::ir::{rdim, DType, Graph, NodeId, Op, RDim};
use crate::prims::Prim;
use mithril_kernels::memplan::{self, Buffer};

/// Where each node's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// User memory (input, param, seed) or a view of another node (boundary).
    View,
    /// A slot of the arena; `inplace` is the argument position overwritten, when in place.
    Slot { slot: usize, inplace: Option<usize> },
    /// A returned output: an owned array.
    Output,
}

/// The memory plan of one graph.
pub struct Plan {
    pub home: Vec<Home>,
    /// Per slot: first and last schedule step (inclusive).
    pub life: Vec<(u32, u32)>,
    /// Per slot: its size in bytes when every dim is known at compile time.
    pub static_bytes: Option<Vec<usize>>,
}

impl Plan {
    /// `(planned peak, naive sum)` in bytes, when every dim is known at compile time.
    pub fn static_numbers(&self) -> Option<(usize, usize)> {
        let bytes = self.static_bytes.as_ref()?;
        let bufs: Vec<Buffer> = self
            .life
            .iter()
            .zip(bytes)
            .map(|(&(first, last), &bytes)| Buffer { bytes, first, last })
            .collect();
        let mut off = vec![0; bufs.len()];
        let mut ord = vec![0; bufs.len()];
        let peak = memplan::greedy(&bufs, &mut off, &mut ord);
        Some((peak, memplan::naive(&bufs)))
    }
}

fn dtype_size(t: DType) -> usize {
    match t {
        DType::F64 | DType::I64 => 8,
        DType::F32 | DType::I32 => 4,
        DType::F16 | DType::BF16 => 2,
        DType::Bool => 1,
    }
}

fn is_elementwise(g: &Graph, id: NodeId) -> bool {
    match &g.nodes[id].op {
        Op::Fused(_) => true,
        Op::Prim(p) => p.is_elementwise(),
        _ => false,
    }
}

/// A reshape (`reshape`, `flatten`, `unsqueeze`, autodiff's `reshape_like`): the same elements
/// in the same order under another shape.
fn is_reshape(op: &Op) -> bool {
    matches!(
        op,
        Op::Prim(Prim::Reshape(_) | Prim::Flatten(..) | Prim::Unsqueeze(_) | Prim::ReshapeLike)
    )
}

/// Same dtype and the same shape, dim by dim, after unification.
fn same_layout(g: &Graph, a: NodeId, b: NodeId) -> bool {
    if g.dtype_of(a) != g.dtype_of(b) {
        return false;
    }
    match (g.shape_of(a), g.shape_of(b)) {
        (Some(x), Some(y)) => {
            x.rest.is_none()
                && y.rest.is_none()
                && x.dims.len() == y.dims.len()
                && x.dims
                    .iter()
                    .zip(&y.dims)
                    .all(|(p, q)| g.env.dim(p) == g.env.dim(q))
        }
        _ => false,
    }
}

/// Static size in bytes of a node's value.
fn static_size(g: &Graph, id: NodeId) -> Option<usize> {
    let s = g.shape_of(id)?;
    if s.rest.is_some() {
        return None;
    }
    let mut n = 1usize;
    for d in &s.dims {
        match rdim(&g.env.dim(d)) {
            RDim::Known(k) => n = n.checked_mul(k as usize)?,
            _ => return None,
        }
    }
    n.checked_mul(dtype_size(g.dtype_of(id)?))
}

/// Plans `g`. `inplace: false` disables in-place reuse (every computed node gets its own slot).
pub fn plan(g: &Graph, inplace: bool) -> Plan {
    plan_placed(g, inplace, None)
}

/// [`plan`] for the host side of a mixed model (`backend_map`): a value that never exists on
/// the host gets no slot; a value computed on the device and downloaded gets a slot of its own
/// (the download writes all of it), never shared in place.
pub fn plan_placed(
    g: &Graph,
    inplace: bool,
    placed: Option<&crate::passes::placement::Placed>,
) -> Plan {
    let n = g.nodes.len();
    let end = n as u32; // the step at which outputs are collected
    let mut is_output = vec![false; n];
    for o in &g.outputs {
        is_output[o.node] = true;
    }
    // last step reading each node (outputs: the end). A value read in a run-time loop's body
    // and made before the loop is read again by every iteration: it lives to the loop's end.
    let end_of = loop_ends(g);
    let mut last_use: Vec<u32> = (0..n as u32).collect();
    // the same, without the reads of the loop structure (`loop_next`, `loop_exit`): a carry
    // whose last other read is its own update may be overwritten by it in place
    let mut last_read: Vec<u32> = (0..n as u32).collect();
    for (id, node) in g.nodes.iter().enumerate() {
        // (`loop_next(carry, update)` reads `update` at the loop's end: a real read of it)
        let structural = |pos: usize| match node.op {
            Op::Prim(Prim::LoopNext) => pos == 0,
            Op::Prim(Prim::LoopExit) => true,
            _ => false,
        };
        for (pos, &a) in node.args.iter().chain(&node.guard).enumerate() {
            let mut at = id as u32;
            let mut r = node.region;
            while let Some(h) = r {
                // (a carry of this loop is read within one iteration: its own memory holds the
                // next iteration's value)
                if inside(g, a, h) || g.nodes[h].args.contains(&a) {
                    break;
                }
                at = at.max(end_of.get(&h).copied().unwrap_or(id) as u32);
                r = g.nodes[h].region;
            }
            last_use[a] = last_use[a].max(at);
            if !structural(pos) {
                last_read[a] = last_read[a].max(at);
            }
        }
    }
    // the update of each carry (`loop_next(carry, update)`)
    let mut update_of: Vec<Option<NodeId>> = vec![None; n];
    for node in &g.nodes {
        if let (Op::Prim(Prim::LoopNext), [c, u]) = (&node.op, &node.args[..]) {
            update_of[*c] = Some(*u);
        }
    }
    for o in &g.outputs {
        last_use[o.node] = end;
    }
    let mut home = vec![Home::View; n];
    // root slot of each node (its own, its in-place target's, or its view source's)
    let mut root: Vec<Option<usize>> = vec![None; n];
    // the slots a run-time `if`'s phi may alias (those of both branches' values)
    let mut phi_roots: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut life: Vec<(u32, u32)> = Vec::new();
    let mut slot_node: Vec<NodeId> = Vec::new();
    for id in 0..n {
        let node = &g.nodes[id];
        match &node.op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Mode => continue,
            // the loop's structure has no value; a tape read is the tape's memory
            Op::Prim(
                Prim::LoopHead | Prim::LoopTest { .. } | Prim::LoopEnd | Prim::TapeRead(_),
            ) => continue,
            // views of the update carried on, and of the carry after the loop
            Op::Prim(Prim::LoopNext | Prim::LoopExit) => {
                let r = root[node.args[1]];
                root[id] = r;
                phi_roots[id] = phi_roots[node.args[1]].clone();
                for s in r.iter().chain(&phi_roots[id]) {
                    life[*s].1 = life[*s].1.max(last_use[id]);
                }
                continue;
            }
            Op::Boundary(_) | Op::Prim(Prim::Truth) => {
                let r = root[node.args[0]];
                root[id] = r;
                phi_roots[id] = phi_roots[node.args[0]].clone();
                for s in r.iter().chain(&phi_roots[id]) {
                    life[*s].1 = life[*s].1.max(last_use[id]);
                }
                continue;
            }
            // a view of the value of the branch that ran (never written in place: its home is
            // a view): every slot it may be keeps living while it is read
            Op::Prim(Prim::Phi) => {
                let mut rs = Vec::new();
                for &a in &node.args[2..] {
                    rs.extend(root[a]);
                    rs.extend(phi_roots[a].iter().copied());
                }
                rs.sort_unstable();
                rs.dedup();
                for &s in &rs {
                    life[s].1 = life[s].1.max(last_use[id]);
                }
                phi_roots[id] = rs;
                continue;
            }
            _ => {}
        }
        if placed.is_some_and(|p| !p.host[id]) {
            continue;
        }
        if is_output[id] {
            home[id] = Home::Output;
            continue;
        }
        // a reshape of a value in a slot (contiguous, in standard layout) is a view of that
        // slot, which lives while the view is read, and one of user memory a view of it: no
        // copy. Not in a run-time loop's body or branch (their values are carried and swapped
        // by slot), nor on a mixed model's host.
        if placed.is_none() && node.guard.is_none() && node.region.is_none() && is_reshape(&node.op)
        {
            match node.args.first().map(|&a| (root[a], &g.nodes[a].op)) {
                Some((Some(s), _)) => {
                    root[id] = Some(s);
                    life[s].1 = life[s].1.max(last_use[id]);
                    continue;
                }
                // user memory lives through the call (the runtime copies one not in standard
                // layout)
                Some((None, Op::Input(_) | Op::Param(_) | Op::Seed(_))) => continue,
                _ => {}
            }
        }
        // in place: an argument whose slot dies here, same dtype and shape, used once here
        let mut chosen = None;
        let on_host = placed.is_none_or(|p| !p.on_cuda[id]);
        let set_at = matches!(node.op, Op::Prim(Prim::SetAt { .. }));
        if inplace && on_host && (is_elementwise(g, id) || set_at) {
            for (pos, &a) in node.args.iter().enumerate() {
                if set_at && pos > 0 {
                    break;
                }
                let Some(s) = root[a] else { continue };
                let once = node.args.iter().filter(|&&x| x == a).count() == 1;
                let own = matches!(home[a], Home::Slot { .. });
                // a loop variable's update may take over the carry's memory when nothing
                // else reads the carry after it (the loop end then copies nothing)
                let dead = life[s].1 <= id as u32
                    || (update_of[a] == Some(id)
                        && root[a] == Some(s)
                        && matches!(node.op, Op::Prim(_) | Op::Fused(_))
                        && last_read[a] <= id as u32);
                if once && own && dead && same_layout(g, a, id) {
                    chosen = Some((pos, s));
                    break;
                }
            }
        }
        match chosen {
            Some((pos, s)) => {
                root[id] = Some(s);
                life[s].1 = life[s].1.max(last_use[id]);
                home[id] = Home::Slot {
                    slot: s,
                    inplace: Some(pos),
                };
            }
            None => {
                let s = life.len();
                life.push((id as u32, last_use[id]));
                slot_node.push(id);
                root[id] = Some(s);
                home[id] = Home::Slot {
                    slot: s,
                    inplace: None,
                };
            }
        }
    }
    let static_bytes = slot_node.iter().map(|&id| static_size(g, id)).collect();
    Plan {
        home,
        life,
        static_bytes,
    }
}

/// The `loop_end` of each loop, by its head.
pub fn loop_ends(g: &Graph) -> std::collections::HashMap<NodeId, NodeId> {
    g.nodes
        .iter()
        .enumerate()
        .filter(|(_, n)| matches!(n.op, Op::Prim(Prim::LoopEnd)))
        .map(|(id, n)| (n.args[0], id))
        .collect()
}

/// Node `a` is inside the body of the loop headed by `h` (directly or in a nested loop).
pub fn inside(g: &Graph, a: NodeId, h: NodeId) -> bool {
    let mut r = g.nodes[a].region;
    while let Some(x) = r {
        if x == h {
            return true;
        }
        r = g.nodes[x].region;
    }
    false
}

/// The summary line for a plan.
pub fn summary_line(p: &Plan, planning: bool) -> String {
    let inplace = p
        .home
        .iter()
        .filter(|h| {
            matches!(
                h,
                Home::Slot {
                    inplace: Some(_),
                    ..
                }
            )
        })
        .count();
    match p.static_numbers() {
        Some((peak, naive)) if planning => format!(
            "memory: planned peak {} in one arena vs {} naive ({} buffers, {} in place)",
            human(peak),
            human(naive),
            p.life.len(),
            inplace
        ),
        Some((_, naive)) => format!(
            "memory: planning off (`memory_planning: none`): {} per call in {} buffers",
            human(naive),
            p.life.len()
        ),
        None if planning => format!(
            "memory: planned per input shape at the first call ({} buffers, {} in place); see `memory_report()`",
            p.life.len(),
            inplace
        ),
        None => format!(
            "memory: planning off (`memory_planning: none`): {} buffers allocated per call",
            p.life.len()
        ),
    }
}

/// Bytes for people: `1.50 MiB`.
pub fn human(b: usize) -> String {
    if b >= 1 << 30 {
        format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.2} MiB", b as f64 / (1 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}
