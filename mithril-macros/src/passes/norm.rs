//! Row-normalisation fusion (`optimizations: { norm_fusion }`): the graph of a layer norm over
//! the last axis — the library `LayerNorm`'s
//!
//! ```text
//! mu = mean(x, -1, keepdim); c = x - mu; var = mean(c * c, -1, keepdim);
//! y = c / sqrt(var + eps) [* weight] [+ bias]
//! ```
//!
//! — and of an RMS norm (`RMSNorm`'s `x / sqrt(mean(x * x, -1, keepdim) + eps) [* weight]`)
//! becomes one [`Prim::Norm`] node with operands `x[, weight][, bias]`, which the CPU plan runs
//! as one pass of `mithril_kernels::rows::layer_norm` / `rms_norm` per row (instead of six ops:
//! two means, a subtract, a square, a square root and the normalizing elementwise group, each
//! writing and reading a tensor). `c * c` may also be `square(c)`, `eps` any float or integer
//! constant on either side of the add, `weight` and `bias` any `[D]` operands of the input's
//! dtype (`D` its last dim) on either side of their op.
//!
//! Only where every intermediate (the means, `c`, the squares, the variance, the root, the
//! quotient and the product before a bias) has no user outside the pattern and is no output:
//! in a training graph the backward reads them, so mostly inference graphs are fused — and, in
//! a training graph, a norm whose input needs no gradient (its weight's gradient reads only
//! the quotient, which becomes the fused node: the quotient alone is fused, the weight and
//! bias stay elementwise ops). Runs after autodiff and before operator fusion, on the
//! CPU backends that use the plan (not on `backend: cuda` or mixed models, which keep the
//! unfused ops); a `static_shapes` model with a fused node runs the generic path, as it did
//! with the means. The fused node is not bitwise the unfused ops: the row kernels accumulate
//! `f32` statistics in `f64` (the relative difference is ~1e-7; see the tests).

use crate::ir::{DType, Dim, Graph, NodeId, Op, Scalar};
use crate::prims::{Prim, ReduceKind};

/// The resolved static dims of `id` (`None`: unknown rank).
fn dims(g: &Graph, id: NodeId) -> Option<Vec<Dim>> {
    let s = g.shape_of(id).filter(|s| s.rest.is_none())?;
    Some(g.env.shape(&s).dims.iter().map(|d| g.env.dim(d)).collect())
}

/// The graph facts the matcher reads.
struct Cx<'a> {
    g: &'a Graph,
    uses: Vec<usize>,
    is_output: Vec<bool>,
    taken: Vec<bool>,
}

impl Cx<'_> {
    fn prim(&self, id: NodeId) -> Option<&Prim> {
        match &self.g.nodes[id].op {
            Op::Prim(p) => Some(p),
            _ => None,
        }
    }

    fn args(&self, id: NodeId) -> &[NodeId] {
        &self.g.nodes[id].args
    }

    /// An intermediate the fused node may absorb: `n` uses (all inside the pattern), no output,
    /// not claimed by another match, in the same place (guard, region, device) as `root`.
    fn inner(&self, id: NodeId, n: usize, root: NodeId) -> bool {
        self.uses[id] == n
            && !self.is_output[id]
            && !self.taken[id]
            && self.g.nodes[id].guard.is_none()
            && self.g.same_place(id, root)
    }

    /// `mean(x, axis = last, keepdim = true)` of `x` (of rank `rank`): `Some(x)`.
    fn row_mean(&self, id: NodeId, rank: usize) -> Option<NodeId> {
        let Some(Prim::Reduce(ReduceKind::Mean, axes, true)) = self.prim(id) else {
            return None;
        };
        let last = matches!(axes[..], [a] if a == -1 || a == rank as i64 - 1);
        (last && self.args(id).len() == 1).then(|| self.args(id)[0])
    }

    /// The value squared by `id` (`square(c)` or `c * c`) and the uses it takes of it.
    fn squared(&self, id: NodeId) -> Option<(NodeId, usize)> {
        match (self.prim(id)?, self.args(id)) {
            (Prim::Square, [c]) => Some((*c, 1)),
            (Prim::Mul, [a, b]) if a == b => Some((*a, 2)),
            _ => None,
        }
    }

    /// A float constant (or integer literal) node's value.
    fn constant(&self, id: NodeId) -> Option<f64> {
        match &self.g.nodes[id].op {
            Op::Const(Scalar::Float(f)) => Some(*f),
            Op::Const(Scalar::Int(i)) => Some(*i as f64),
            _ => None,
        }
    }
}

/// A matched norm: the node it replaces (the last of the pattern), its operands, its
/// attributes and the nodes it absorbs.
struct Found {
    root: NodeId,
    x: NodeId,
    weight: Option<NodeId>,
    bias: Option<NodeId>,
    eps: f64,
    rms: bool,
    absorbed: Vec<NodeId>,
}

/// The norm whose quotient `c / sqrt(var + eps)` is node `d`, or `None`.
fn quotient(cx: &Cx<'_>, d: NodeId, dt: DType, xd: &[Dim]) -> Option<Found> {
    let g = cx.g;
    let (Prim::Div, [c, s]) = (cx.prim(d)?, cx.args(d)) else {
        return None;
    };
    let (c, s) = (*c, *s);
    let rank = xd.len();
    // sqrt(var + eps)
    let (Prim::Sqrt, [ve]) = (cx.prim(s)?, cx.args(s)) else {
        return None;
    };
    let (Prim::Add, [p, q]) = (cx.prim(*ve)?, cx.args(*ve)) else {
        return None;
    };
    let (var, eps) = match (cx.constant(*p), cx.constant(*q)) {
        (None, Some(e)) => (*p, e),
        (Some(e), None) => (*q, e),
        _ => return None,
    };
    if !(eps.is_finite() && eps >= 0.0) {
        return None;
    }
    let sq = cx.row_mean(var, rank)?;
    let (sqd, sq_uses) = cx.squared(sq)?;
    if sqd != c {
        return None;
    }
    // layer norm: c = x - mean(x); RMS norm: the squared value is the input itself
    let centred = match (cx.prim(c), cx.args(c)) {
        (Some(Prim::Sub), [x, mu]) => cx.row_mean(*mu, rank).filter(|m| m == x).map(|x| (x, *mu)),
        _ => None,
    };
    let (x, mut absorbed, rms) = match centred {
        Some((x, mu)) if cx.inner(c, sq_uses + 1, d) && cx.inner(mu, 1, d) => {
            (x, vec![mu, c], false)
        }
        _ => (c, vec![], true),
    };
    for (n, k) in [(sq, 1), (var, 1), (*ve, 1), (s, 1)] {
        if !cx.inner(n, k, d) {
            return None;
        }
    }
    absorbed.extend([sq, var, *ve, s]);
    // every value of the pattern has the input's dtype and shape (the reductions keep a 1)
    let same = |n: NodeId| g.dtype_of(n) == Some(dt);
    if !(same(x) && same(c) && same(sq) && same(var) && same(*ve) && same(s)) {
        return None;
    }
    if dims(g, d).as_deref() != Some(xd) || dims(g, c).as_deref() != Some(xd) {
        return None;
    }
    Some(Found {
        root: d,
        x,
        weight: None,
        bias: None,
        eps,
        rms,
        absorbed,
    })
}

/// `id` as `op(v, other)` or `op(other, v)` for a `[D]` operand `other` of dtype `dt`:
/// `Some(other)`.
fn vector_operand(
    cx: &Cx<'_>,
    id: NodeId,
    v: NodeId,
    op: &Prim,
    dt: DType,
    xd: &[Dim],
) -> Option<NodeId> {
    if cx.prim(id)? != op {
        return None;
    }
    let other = match cx.args(id) {
        [a, b] if *a == v && *b != v => *b,
        [a, b] if *b == v && *a != v => *a,
        _ => return None,
    };
    let g = cx.g;
    let ok = g.dtype_of(other) == Some(dt)
        && g.dtype_of(id) == Some(dt)
        && dims(g, other).as_deref() == Some(&xd[xd.len() - 1..])
        && dims(g, id).as_deref() == Some(xd);
    ok.then_some(other)
}

/// Fuses the norms; returns how many were fused.
pub fn run(g: &mut Graph) -> usize {
    let found = matches(g);
    if found.is_empty() {
        return 0;
    }
    let mut keep = vec![true; g.nodes.len()];
    for f in &found {
        let node = &mut g.nodes[f.root];
        node.op = Op::Prim(Prim::Norm {
            eps: f.eps,
            rms: f.rms,
            scale: f.weight.is_some(),
            bias: f.bias.is_some(),
        });
        node.args = std::iter::once(f.x).chain(f.weight).chain(f.bias).collect();
        for &n in &f.absorbed {
            keep[n] = false;
        }
    }
    g.compact(&keep);
    found.len()
}

/// The norms of `g`, each node in at most one.
fn matches(g: &Graph) -> Vec<Found> {
    let mut is_output = vec![false; g.nodes.len()];
    for o in &g.outputs {
        is_output[o.node] = true;
    }
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &a in &n.args {
            if users[a].last() != Some(&i) {
                users[a].push(i);
            }
        }
    }
    let mut cx = Cx {
        g,
        uses: g.use_counts(),
        is_output,
        taken: vec![false; g.nodes.len()],
    };
    let g = cx.g;
    let mut found = Vec::new();
    for d in 0..g.nodes.len() {
        let Some(dt) = g
            .dtype_of(d)
            .filter(|t| matches!(t, DType::F32 | DType::F64 | DType::F16 | DType::BF16))
        else {
            continue;
        };
        if !matches!(cx.prim(d), Some(Prim::Div)) {
            continue;
        }
        let Some(c) = g.nodes[d].args.first().copied() else {
            continue;
        };
        // the input's dims: `c`'s (the quotient and `c` have the input's shape)
        let Some(xd) = dims(g, c).filter(|x| !x.is_empty()) else {
            continue;
        };
        let Some(mut f) = quotient(&cx, d, dt, &xd) else {
            continue;
        };
        if dims(g, f.x).as_deref() != Some(&xd[..]) {
            continue;
        }
        // `* weight`, then (layer norm) `+ bias`, each the single user of the value before
        let next = |cx: &Cx<'_>, v: NodeId| -> Option<NodeId> {
            (cx.uses[v] == 1 && !cx.is_output[v] && users[v].len() == 1).then(|| users[v][0])
        };
        if let Some(m) = next(&cx, f.root) {
            if let Some(w) = vector_operand(&cx, m, f.root, &Prim::Mul, dt, &xd)
                .filter(|_| g.same_place(m, f.root) && g.nodes[m].guard.is_none())
            {
                f.absorbed.push(f.root);
                f.root = m;
                f.weight = Some(w);
            }
        }
        if !f.rms {
            if let Some(a) = next(&cx, f.root) {
                if let Some(b) = vector_operand(&cx, a, f.root, &Prim::Add, dt, &xd)
                    .filter(|_| g.same_place(a, f.root) && g.nodes[a].guard.is_none())
                {
                    f.absorbed.push(f.root);
                    f.root = a;
                    f.bias = Some(b);
                }
            }
        }
        // an operand the pattern absorbs cannot be the weight or bias (`x * c`-like graphs)
        let absorbed_operand = [f.weight, f.bias]
            .into_iter()
            .flatten()
            .any(|o| f.absorbed.contains(&o));
        if absorbed_operand {
            continue;
        }
        for &n in &f.absorbed {
            cx.taken[n] = true;
        }
        cx.taken[f.root] = true;
        found.push(f);
    }
    found
}
