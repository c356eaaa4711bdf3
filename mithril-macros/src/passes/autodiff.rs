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

use crate::ir::{DType, Graph, NodeId, Op, Shape};
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
    };
    // seeds
    for (i, o) in outputs.iter().enumerate() {
        if !is_float(b.g, o.node) || (seed_loss && i > 0) {
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
    // which nodes lead to a param (only those need gradients)
    let mut needs = vec![false; n_fwd];
    for id in 0..n_fwd {
        needs[id] = matches!(b.g.nodes[id].op, Op::Param(i) if wrt.get(i).copied().unwrap_or(true))
            || b.g.nodes[id].args.iter().any(|&a| needs[a]);
    }
    for id in (0..n_fwd).rev() {
        let Some(gy) = adj[id] else { continue };
        let node = b.g.nodes[id].clone();
        let Op::Prim(p) = &node.op else { continue };
        if !needs[id] {
            continue;
        }
        b.span = node.span;
        b.scope = node.scope.clone();
        // a branch's op: its gradient runs only when the branch ran
        b.guard = node.guard;
        let grads = p.vjp(&mut b, &node.args, id, gy);
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
            let xdt = b.g.dtype_of(x).unwrap_or(default);
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
            adj[x] = Some(match adj[x] {
                None => gx,
                Some(prev) => b.bin(Prim::Add, prev, gx),
            });
            b.guard = node.guard;
        }
    }
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
