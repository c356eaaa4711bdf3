//! Reverse-mode differentiation at compile time.
//!
//! Runs on the inferred graph (before optimization) and appends the backward graph to it: one
//! `Seed` node per output (the seed gradient the caller passes to `evaluate_gradients`), then, in
//! reverse graph order, each primitive's vector-Jacobian product as ordinary primitive nodes
//! (the rules live with their primitives, `Family::vjp` in `crate::prims`, built with
//! `prims::grad::Builder`: they only build primitives, whose shape and dtype rules are the ones
//! in `prims`). Gradients reaching an operand that was broadcast are summed
//! back to the operand's shape. The gradient of each param becomes an extra output named
//! `__grad_<i>`; the combined graph then goes through the same passes and codegen as the forward.
//!
//! Not differentiable (documented; they pass no gradient): comparisons, logical ops, `sign`,
//! `floor_divide`, `argmax`/`argmin`, integer and bool values, and the indices of
//! `gather`/`take_along`. (`remainder` is piecewise `a - b * floor(a / b)`: gradients 1 and
//! `-floor(a / b)` away from its jumps.)

use crate::ir::{DType, Graph, NodeId, Op, Scalar, Shape};
use crate::prims::grad::Builder;
use crate::prims::Prim;
use proc_macro2::Span;

/// Prefix of the outputs that carry param gradients.
pub const GRAD_PREFIX: &str = "__grad_";

/// The param whose gradient an output named `name` carries (`__grad_3` -> 3), if it is one.
pub fn grad_param(name: &str) -> Option<usize> {
    name.strip_prefix(GRAD_PREFIX)?.parse().ok()
}

fn is_float(g: &Graph, id: NodeId) -> bool {
    g.dtype_of(id).is_some_and(|t| t.is_float())
}

/// Differentiate `g` with respect to every param. Returns errors for unsupported cases.
/// With `seed_loss`, output 0 (a train model's scalar `loss`) is seeded with 1 and the other
/// outputs get no seed.
/// Only params with `wrt[i]` get gradients (the others get zeros, at no cost in the backward
/// graph).
pub fn run(g: &mut Graph, default: DType, seed_loss: bool, wrt: &[bool]) -> Vec<syn::Error> {
    let n_fwd = g.nodes.len();
    let outputs = g.outputs.clone();
    let mut adj: Vec<Option<NodeId>> = vec![None; n_fwd];
    let mut b = Builder {
        g,
        span: Span::call_site(),
        scope: String::new(),
        default,
        errors: Vec::new(),
        guard: None,
        region: None,
    };
    // seeds
    for (i, o) in outputs.iter().enumerate() {
        // a buffer's new value (`update`) is state, not a result: no seed
        if !is_float(b.g, o.node)
            || (seed_loss && i > 0)
            || crate::ir::update_param(&o.name).is_some()
        {
            continue;
        }
        if seed_loss {
            b.span = b.g.nodes[o.node].span;
            let one = b.lit(1.0);
            let dt = b.g.dtype_of(o.node).unwrap_or(default);
            let s = b.op(Prim::Cast(dt), &[one]);
            adj[o.node] = Some(s);
            continue;
        }
        let shape = b.g.shape_of(o.node).unwrap_or_else(Shape::scalar);
        let dt = b.g.dtype_of(o.node).unwrap_or(default);
        b.span = b.g.nodes[o.node].span;
        let s = b.push(Op::Seed(i), vec![], shape, dt);
        b.g.nodes[s].label = Some(format!("d{}", o.name));
        adj[o.node] = Some(match adj[o.node] {
            None => s,
            Some(prev) => b.bin(Prim::Add, prev, s),
        });
    }
    // which nodes lead to a param (only those need gradients); a loop variable whose update
    // needs one needs one too (the back edge: the fixed point over the loops' carries)
    let mut needs = vec![false; n_fwd];
    let mut forced = vec![false; n_fwd];
    loop {
        for id in 0..n_fwd {
            needs[id] = forced[id]
                || matches!(b.g.nodes[id].op, Op::Param(i) if wrt.get(i).copied().unwrap_or(true))
                || b.g.nodes[id].args.iter().any(|&a| needs[a]);
        }
        let mut changed = false;
        for id in 0..n_fwd {
            if let (Op::Prim(Prim::LoopNext), [c, u]) = (&b.g.nodes[id].op, &b.g.nodes[id].args[..])
            {
                if needs[*u] && !needs[*c] {
                    forced[*c] = true;
                    changed = true;
                }
            }
        }
        if !changed {
            break;
        }
    }
    let order: Vec<NodeId> = (0..n_fwd).rev().collect();
    backprop(&mut b, &order, None, &mut adj, &mut needs);
    b.guard = None;
    b.scope = String::new();
    // param gradients become outputs (zeros for params no output depends on)
    let params = b.g.params.clone();
    for (i, p) in params.iter().enumerate() {
        let gnode = match adj[p.node] {
            Some(gn) if wrt.get(i).copied().unwrap_or(true) => gn,
            _ => {
                // zeros of the param's own dtype (an unused `f64` param in an `f32` model)
                let pdt = b.g.dtype_of(p.node).unwrap_or(default);
                let z = b.lit(0.0);
                let z = if b.g.dtype_of(z) != Some(pdt) {
                    b.op(Prim::Cast(pdt), &[z])
                } else {
                    z
                };
                b.op(Prim::BroadcastLike, &[z, p.node])
            }
        };
        b.g.outputs.push(crate::ir::OutputInfo {
            name: format!("{GRAD_PREFIX}{i}"),
            node: gnode,
        });
    }
    // weak literals made here are typed by their users; drop the marker
    for n in b.g.nodes.iter_mut().skip(n_fwd) {
        if n.label.as_deref() == Some("#weak") {
            n.label = None;
        }
    }
    b.errors
}

/// The vector-Jacobian products of the nodes `order` (reverse schedule order) that belong to
/// the loop body `level` (`None`: outside every loop), accumulating into `adj`. A loop of that
/// level is differentiated as a whole when its `loop_end` is reached ([`diff_loop`]).
fn backprop(
    b: &mut Builder,
    order: &[NodeId],
    level: Option<NodeId>,
    adj: &mut Vec<Option<NodeId>>,
    needs: &mut Vec<bool>,
) {
    for &id in order {
        if b.g.nodes[id].region != level {
            continue;
        }
        match b.g.nodes[id].op {
            Op::Prim(Prim::LoopEnd) => {
                if needs[id] {
                    diff_loop(b, id, adj, needs);
                }
                continue;
            }
            Op::Prim(
                Prim::Carry
                | Prim::LoopHead
                | Prim::LoopTest { .. }
                | Prim::LoopNext
                | Prim::LoopExit
                | Prim::TapeRead(_),
            ) => continue,
            _ => {}
        }
        let Some(gy) = adj[id] else { continue };
        let node = b.g.nodes[id].clone();
        let Op::Prim(p) = &node.op else { continue };
        if !needs[id] {
            continue;
        }
        b.span = node.span;
        b.scope = node.scope.clone();
        // a branch's op: its gradient runs only when the branch ran; a loop body's, in the
        // body of the reversed loop
        b.guard = node.guard;
        b.region = node.region;
        let grads = p.vjp(b, &node.args, id, gy);
        for (k, gx) in grads.into_iter().enumerate() {
            let x = node.args[k];
            let Some(gx) = gx else { continue };
            if !needs[x] || !is_float(b.g, x) {
                continue;
            }
            let gx = if p.is_elementwise() {
                b.unbroadcast(gx, x)
            } else {
                gx
            };
            // gradients keep the dtype of the value they belong to
            let xdt = b.g.dtype_of(x).unwrap_or(b.default);
            let gx = if b.g.dtype_of(gx) != Some(xdt) {
                b.op(Prim::Cast(xdt), &[gx])
            } else {
                gx
            };
            // Run-time `if`: the gradient of `x` is summed where `x` exists (under its own
            // guard); the contribution of an op under another guard (an op inside a branch
            // reading a value from outside it) counts only when that op ran, so it is added
            // as `phi(guard, contribution, 0)` (even when the node carrying it is unguarded:
            // an identity's contribution is its unguarded output gradient).
            let xguard = b.g.nodes[x].guard;
            b.guard = xguard;
            let gx = match node.guard {
                Some(gg) if node.guard != xguard => b.select(gg, gx, x),
                _ => gx,
            };
            accumulate(b, adj, x, gx);
            b.guard = node.guard;
        }
    }
    b.guard = None;
}

/// `adj[x] += g`.
fn accumulate(b: &mut Builder, adj: &mut Vec<Option<NodeId>>, x: NodeId, g: NodeId) {
    if adj.len() < b.g.nodes.len() {
        adj.resize(b.g.nodes.len(), None);
    }
    adj[x] = Some(match adj[x] {
        None => g,
        Some(prev) => b.bin(Prim::Add, prev, g),
    });
}

/// Reverse mode through a run-time loop (the one ending at `end`), beyond `jax.lax.while_loop`:
/// the forward loop saves the carries at the start of each iteration (its tape; DCE later keeps
/// only the ones read); a reversed loop runs as many iterations, from the last to the first,
/// and in each recomputes the body from the saved carries and runs the body's VJP. Its own
/// carries are the step (counting down), the cotangent of each float loop variable (starting
/// from the gradient of its value after the loop) and, for each value from outside the loop
/// the body reads, its gradient summed over the iterations (a scan's `x[(.., t)]` adds into
/// its slice in place). After it: the loop variables' cotangents flow to their initial values,
/// the sums to the values read.
fn diff_loop(b: &mut Builder, end: NodeId, adj: &mut Vec<Option<NodeId>>, needs: &mut Vec<bool>) {
    let (head, test) = (b.g.nodes[end].args[0], b.g.nodes[end].args[1]);
    let nexts: Vec<NodeId> = b.g.nodes[end].args[2..].to_vec();
    let carries: Vec<NodeId> = b.g.nodes[head].args.clone();
    let updates: Vec<NodeId> = nexts.iter().map(|&n| b.g.nodes[n].args[1]).collect();
    let outer = b.g.nodes[head].region;
    // a loop inside a run-time `if` branch: the reversed loop and everything around it run
    // under the loop's guard (only when the forward loop ran)
    let lg = b.g.nodes[head].guard;
    let span = b.g.nodes[end].span;
    b.span = span;
    b.scope = b.g.nodes[end].scope.clone();
    b.guard = lg;
    b.region = outer;
    if adj.len() < b.g.nodes.len() {
        adj.resize(b.g.nodes.len(), None);
    }
    // each carry's value after the loop and the gradient that reaches it
    let n_nodes = b.g.nodes.len();
    let mut exit: Vec<Option<NodeId>> = vec![None; carries.len()];
    let mut ge: Vec<Option<NodeId>> = vec![None; carries.len()];
    let exits: Vec<(NodeId, NodeId)> = (end + 1..n_nodes)
        .filter_map(|id| match (&b.g.nodes[id].op, &b.g.nodes[id].args[..]) {
            (Op::Prim(Prim::LoopExit), [e, c]) if *e == end => Some((id, *c)),
            _ => None,
        })
        .collect();
    for (id, c) in exits {
        let Some(j) = carries.iter().position(|&x| x == c) else {
            continue;
        };
        exit[j].get_or_insert(id);
        if let Some(g) = adj[id] {
            ge[j] = Some(match ge[j] {
                None => g,
                Some(p) => b.bin(Prim::Add, p, g),
            });
        }
    }
    if ge.iter().all(|g| g.is_none()) {
        return;
    }
    let mut exit_of = |b: &mut Builder, j: usize| -> NodeId {
        if let Some(x) = exit[j] {
            return x;
        }
        let c = carries[j];
        let (s, t) = shape_dt(b, c);
        let x = b.push(Op::Prim(Prim::LoopExit), vec![end, c], s, t);
        exit[j] = Some(x);
        x
    };
    // the body: the loop's nodes other than its own structure
    let body: Vec<NodeId> = (head + 1..end)
        .filter(|&id| {
            crate::passes::memplan::inside(b.g, id, head)
                && id != test
                && !(b.g.nodes[id].region == Some(head)
                    && matches!(b.g.nodes[id].op, Op::Prim(Prim::LoopNext)))
        })
        .collect();
    // the values from outside the loop the body reads, which need gradients
    let mut captured: Vec<NodeId> = Vec::new();
    for &id in body.iter().chain(&updates) {
        let reads: Vec<NodeId> = if updates.contains(&id) && !body.contains(&id) {
            vec![id]
        } else {
            b.g.nodes[id].args.clone()
        };
        for a in reads {
            let outside = !crate::passes::memplan::inside(b.g, a, head) && !carries.contains(&a);
            if outside && a < needs.len() && needs[a] && is_float(b.g, a) && !captured.contains(&a)
            {
                captured.push(a);
            }
        }
    }
    captured.sort_unstable();
    // the loop variables with a cotangent: float, and needing gradients
    let vars: Vec<usize> = (1..carries.len())
        .filter(|&j| is_float(b.g, carries[j]) && needs[carries[j]])
        .collect();
    // ---- before the reversed loop: its initial carries
    let n = exit_of(b, 0);
    let one = b.push(
        Op::Const(Scalar::Int(1)),
        vec![],
        Shape::scalar(),
        DType::I64,
    );
    let last = b.push(
        Op::Prim(Prim::Sub),
        vec![n, one],
        Shape::scalar(),
        DType::I64,
    );
    let mut rc = vec![b.push(
        Op::Prim(Prim::Carry),
        vec![last],
        Shape::scalar(),
        DType::I64,
    )];
    for &j in &vars {
        let init = match ge[j] {
            Some(g) => g,
            None => {
                let x = exit_of(b, j);
                b.op(Prim::FullLike(0.0), &[x])
            }
        };
        let (s, t) = shape_dt(b, carries[j]);
        rc.push(b.push(Op::Prim(Prim::Carry), vec![init], s, t));
    }
    for &x in &captured {
        let z = b.op(Prim::FullLike(0.0), &[x]);
        let (s, t) = shape_dt(b, x);
        rc.push(b.push(Op::Prim(Prim::Carry), vec![z], s, t));
    }
    let h2 = b.push(
        Op::Prim(Prim::LoopHead),
        rc.clone(),
        Shape::scalar(),
        DType::Bool,
    );
    b.region = Some(h2);
    let zero = b.push(
        Op::Const(Scalar::Int(0)),
        vec![],
        Shape::scalar(),
        DType::I64,
    );
    let go = b.push(
        Op::Prim(Prim::Ge),
        vec![rc[0], zero],
        Shape::scalar(),
        DType::Bool,
    );
    let t2 = b.push(
        Op::Prim(Prim::LoopTest {
            max_steps: None,
            tape: 0,
        }),
        vec![h2, go],
        Shape::scalar(),
        DType::Bool,
    );
    // the carries at the start of the forward iteration (every carry is taped; DCE keeps the
    // tapes that are read)
    if let Op::Prim(Prim::LoopTest { tape, .. }) = &mut b.g.nodes[test].op {
        *tape = if carries.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << carries.len()) - 1
        };
    }
    let mut map: std::collections::HashMap<NodeId, NodeId> = Default::default();
    for (j, &c) in carries.iter().enumerate() {
        let (s, t) = shape_dt(b, c);
        let r = b.push(Op::Prim(Prim::TapeRead(j)), vec![test, rc[0]], s, t);
        map.insert(c, r);
        grow(needs, b.g.nodes.len());
        needs[r] = needs[c];
    }
    // the body recomputed from them (what the VJPs read; DCE removes the rest)
    let mut clones = Vec::with_capacity(body.len());
    for &id in &body {
        let mut n = b.g.nodes[id].clone();
        for a in n.args.iter_mut().chain(&mut n.guard) {
            if let Some(&m) = map.get(a) {
                *a = m;
            }
        }
        n.region = match n.region {
            Some(r) if r == head => Some(h2),
            Some(r) => map.get(&r).copied().or(Some(r)),
            None => None,
        };
        let c = b.g.push(n);
        map.insert(id, c);
        grow(needs, b.g.nodes.len());
        needs[c] = needs[id];
        clones.push(c);
    }
    if adj.len() < b.g.nodes.len() {
        adj.resize(b.g.nodes.len(), None);
    }
    // the gradients of the captured values are this iteration's alone
    let saved: Vec<Option<NodeId>> = captured.iter().map(|&x| adj[x].take()).collect();
    // seeds: each loop variable's cotangent at its update
    for (k, &j) in vars.iter().enumerate() {
        let u = updates[j];
        let u = map.get(&u).copied().unwrap_or(u);
        if needs[u] && is_float(b.g, u) {
            b.region = Some(h2);
            accumulate(b, adj, u, rc[1 + k]);
        }
    }
    let order: Vec<NodeId> = clones.iter().rev().copied().collect();
    backprop(b, &order, Some(h2), adj, needs);
    b.region = Some(h2);
    b.guard = lg;
    b.span = span;
    // what is carried to the previous iteration
    let step_back = b.push(
        Op::Prim(Prim::Sub),
        vec![rc[0], one],
        Shape::scalar(),
        DType::I64,
    );
    let mut updates2 = vec![step_back];
    for (k, &j) in vars.iter().enumerate() {
        let r = map[&carries[j]];
        let d = match adj.get(r).copied().flatten() {
            Some(d) => d,
            None => b.op(Prim::FullLike(0.0), &[rc[1 + k]]),
        };
        updates2.push(d);
    }
    let mut contrib = Vec::with_capacity(captured.len());
    for (k, &x) in captured.iter().enumerate() {
        contrib.push(adj[x].take());
        adj[x] = saved[k];
    }
    for (k, c) in contrib.into_iter().enumerate() {
        let acc = rc[1 + vars.len() + k];
        let u = match c {
            None => acc,
            Some(c) => match (&b.g.nodes[c].op, &b.g.nodes[c].args[..]) {
                // a slice added into zeros: added into the sum in place
                (Op::Prim(Prim::SetAt { add: true, .. }), [z, g, i]) if matches!(b.g.nodes[*z].op, Op::Prim(Prim::FullLike(v)) if v == 0.0) =>
                {
                    let (g, i) = (*g, *i);
                    let p = b.g.nodes[c].op.clone();
                    let (s, t) = shape_dt(b, acc);
                    b.push(p, vec![acc, g, i], s, t)
                }
                _ => b.bin(Prim::Add, acc, c),
            },
        };
        updates2.push(u);
    }
    let mut end_args = vec![h2, t2];
    for (k, &u) in updates2.iter().enumerate() {
        let (s, t) = shape_dt(b, rc[k]);
        end_args.push(b.push(Op::Prim(Prim::LoopNext), vec![rc[k], u], s, t));
    }
    b.region = outer;
    let e2 = b.push(
        Op::Prim(Prim::LoopEnd),
        end_args,
        Shape::scalar(),
        DType::Bool,
    );
    // after it: into the initial values and the values read
    let mut outs = Vec::new();
    for (k, &j) in vars.iter().enumerate() {
        let (s, t) = shape_dt(b, rc[1 + k]);
        let d = b.push(Op::Prim(Prim::LoopExit), vec![e2, rc[1 + k]], s, t);
        if let Some(&init) = b.g.nodes[carries[j]].args.first() {
            outs.push((init, d));
        }
    }
    for (k, &x) in captured.iter().enumerate() {
        let acc = rc[1 + vars.len() + k];
        let (s, t) = shape_dt(b, acc);
        let d = b.push(Op::Prim(Prim::LoopExit), vec![e2, acc], s, t);
        outs.push((x, d));
    }
    for (x, d) in outs {
        grow(needs, b.g.nodes.len());
        if x < needs.len() && needs[x] && is_float(b.g, x) {
            // a value outside the loop's branch: the contribution counts when the loop ran
            let xguard = b.g.nodes[x].guard;
            let d = match lg {
                Some(g) if xguard != lg => {
                    b.guard = xguard;
                    b.select(g, d, x)
                }
                _ => d,
            };
            accumulate(b, adj, x, d);
            b.guard = lg;
        }
    }
    b.guard = None;
}

fn grow(needs: &mut Vec<bool>, n: usize) {
    if needs.len() < n {
        needs.resize(n, false);
    }
}

/// A node's shape and dtype (for nodes built with them given).
fn shape_dt(b: &Builder, id: NodeId) -> (Shape, DType) {
    (
        b.g.shape_of(id).unwrap_or_else(Shape::scalar),
        b.g.dtype_of(id).unwrap_or(b.default),
    )
}
