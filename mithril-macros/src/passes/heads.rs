//! Head split / merge fusion (`optimizations: { head_fusion }`): the copies around a
//! multi-head `attention` become strided reads and writes of its kernel. The library
//! `SelfAttention` splits its `[B, S, 3·E]` in-projection into heads with, per operand,
//!
//! ```text
//! qkv.slice(.., .., a..b).reshape([B, S, H, D]).transpose(axes = [0, 2, 1, 3])
//! ```
//!
//! (a slice and a transpose copy, the reshape a view) and merges the `[B, H, S, Dv]` result
//! with `transpose(axes = [0, 2, 1, 3]).reshape([B, S, H·Dv])` (another copy). When an
//! operand of a forward `attention` (no dropout, f32 / f64) is such a chain — with or without
//! the slice, every dim of the slice but the last taken whole, `H` and `D` known — the
//! attention reads the heads straight from the slice's input (its columns `a + h·D ..`,
//! `mithril_kernels::attention::forward_strided`), and when its only user is the merge it
//! writes `[B, S, H·Dv]` itself: one [`Prim::AttentionHeads`] node replaces the attention
//! and the chains, bit for bit the unfused ops (the same rows read through strides).
//!
//! Only where each absorbed node has no other user and is no output: in a training graph the
//! attention's gradient reads the split heads and its output, so only inference graphs are
//! fused. Runs after autodiff and operator fusion, on the CPU plan only (not on `backend:
//! cuda` nor mixed models, which keep the copies); a `static_shapes` model runs the generic
//! path for its attention, as before.

use crate::ir::{DType, Dim, Graph, NodeId, Op};
use crate::prims::{Prim, SliceArg};

/// The resolved static dims of `id` (`None`: unknown rank).
fn dims(g: &Graph, id: NodeId) -> Option<Vec<Dim>> {
    let s = g.shape_of(id).filter(|s| s.rest.is_none())?;
    Some(g.env.shape(&s).dims.iter().map(|d| g.env.dim(d)).collect())
}

/// The permutation of the head split and merge.
const SWAP: [usize; 4] = [0, 2, 1, 3];

/// A head split found by [`Cx::split`]: the source read in place, `(heads, width, first
/// column)`, and the nodes the fused attention absorbs.
type Split = (NodeId, (u64, u64, u64), Vec<NodeId>);

struct Cx<'a> {
    g: &'a Graph,
    uses: Vec<usize>,
    is_output: Vec<bool>,
}

impl Cx<'_> {
    fn prim(&self, id: NodeId) -> Option<&Prim> {
        match &self.g.nodes[id].op {
            Op::Prim(p) => Some(p),
            _ => None,
        }
    }

    /// A node the fused one may absorb: used once, no output, unguarded, in `root`'s place.
    fn single(&self, id: NodeId, root: NodeId) -> bool {
        self.uses[id] == 1
            && !self.is_output[id]
            && self.g.nodes[id].guard.is_none()
            && self.g.same_place(id, root)
    }

    fn one_arg(&self, id: NodeId) -> Option<NodeId> {
        match self.g.nodes[id].args[..] {
            [a] => Some(a),
            _ => None,
        }
    }

    /// Operand `t` of attention `at` as a head split: `(source, (heads, width, first
    /// column), absorbed nodes)`.
    fn split(&self, t: NodeId, at: NodeId) -> Option<Split> {
        let g = self.g;
        if !matches!(self.prim(t), Some(Prim::Transpose(p)) if p[..] == SWAP) || !self.single(t, at)
        {
            return None;
        }
        let r = self.one_arg(t)?;
        if !matches!(self.prim(r), Some(Prim::Reshape(_))) || !self.single(r, at) {
            return None;
        }
        let src = self.one_arg(r)?;
        let rd = dims(g, r)?;
        let sd = dims(g, src)?;
        let [b, s, Dim::Known(h), Dim::Known(w)] = &rd[..] else {
            return None;
        };
        if sd.len() != 3 || sd[0] != *b || sd[1] != *s || sd[2] != Dim::Known(h * w) {
            return None;
        }
        let mut absorbed = vec![t, r];
        // a slice of the last axis (`.., .., a..b`, step 1) of a `[B, S, C]` value
        if let Some(Prim::Slice(sa)) = self.prim(src) {
            let base = self.one_arg(src)?;
            let bd = dims(g, base)?;
            let whole = |a: &SliceArg| matches!(a, SliceArg::Range(None, None, 1));
            let cols = match (&sa[..], bd.get(2)) {
                ([x, y, SliceArg::Range(lo, _, 1)], Some(Dim::Known(c)))
                    if whole(x) && whole(y) && bd.len() == 3 =>
                {
                    let lo = lo.unwrap_or(0);
                    let lo = if lo < 0 { lo + *c as i64 } else { lo };
                    (lo >= 0 && lo as u64 + h * w <= *c).then_some(lo as u64)
                }
                _ => None,
            };
            if let Some(off) = cols {
                if bd[0] == *b
                    && bd[1] == *s
                    && self.single(src, at)
                    && g.dtype_of(base) == g.dtype_of(src)
                {
                    absorbed.push(src);
                    return Some((base, (*h, *w, off), absorbed));
                }
            }
        }
        Some((src, (*h, *w, 0), absorbed))
    }

    /// The merge after attention `at` (`[B, H, S, Dv]`): its reshape node, and the transpose.
    fn merge(&self, at: NodeId, users: &[Vec<NodeId>]) -> Option<(NodeId, NodeId)> {
        let g = self.g;
        if !self.single(at, at) || users[at].len() != 1 {
            return None;
        }
        let t = users[at][0];
        if !matches!(self.prim(t), Some(Prim::Transpose(p)) if p[..] == SWAP)
            || !self.single(t, at)
            || users[t].len() != 1
        {
            return None;
        }
        let r = users[t][0];
        if !matches!(self.prim(r), Some(Prim::Reshape(_)))
            || !g.same_place(r, at)
            || g.nodes[r].guard.is_some()
        {
            return None;
        }
        let (ad, rd) = (dims(g, at)?, dims(g, r)?);
        let [b, Dim::Known(h), s, Dim::Known(w)] = &ad[..] else {
            return None;
        };
        (rd.len() == 3 && rd[0] == *b && rd[1] == *s && rd[2] == Dim::Known(h * w))
            .then_some((r, t))
    }
}

/// Fuses the head splits and merges; returns how many attentions took one.
pub fn run(g: &mut Graph) -> usize {
    let mut users: Vec<Vec<NodeId>> = vec![Vec::new(); g.nodes.len()];
    for (i, n) in g.nodes.iter().enumerate() {
        for &a in &n.args {
            if users[a].last() != Some(&i) {
                users[a].push(i);
            }
        }
    }
    let mut is_output = vec![false; g.nodes.len()];
    for o in &g.outputs {
        is_output[o.node] = true;
    }
    let cx = Cx {
        g,
        uses: g.use_counts(),
        is_output,
    };
    // (root, the fused op, its args, absorbed nodes)
    let mut found = Vec::new();
    for at in 0..g.nodes.len() {
        let Some(Prim::Attention {
            causal,
            scale,
            part: 0,
            dropout,
            ..
        }) = cx.prim(at)
        else {
            continue;
        };
        let args = &g.nodes[at].args;
        if *dropout > 0.0
            || !(3..=4).contains(&args.len())
            || !matches!(g.dtype_of(at), Some(DType::F32 | DType::F64))
            || dims(g, at).is_none_or(|d| d.len() != 4)
        {
            continue;
        }
        let mut new_args = args.clone();
        let mut split = [None; 3];
        let mut absorbed = Vec::new();
        for i in 0..3 {
            // (an operand given twice, `attention(x, x, x)`, has two uses: kept)
            if let Some((src, cols, abs)) = cx.split(args[i], at) {
                new_args[i] = src;
                split[i] = Some(cols);
                absorbed.extend(abs);
            }
        }
        let merged = cx.merge(at, &users);
        if split.iter().all(Option::is_none) && merged.is_none() {
            continue;
        }
        let root = match merged {
            Some((r, t)) => {
                absorbed.extend([at, t]);
                r
            }
            None => at,
        };
        let op = Prim::AttentionHeads {
            causal: *causal,
            scale: *scale,
            split,
            merge: merged.is_some(),
        };
        found.push((root, op, new_args, absorbed));
    }
    let n = found.len();
    if n == 0 {
        return 0;
    }
    let mut keep = vec![true; g.nodes.len()];
    for (root, op, args, absorbed) in found {
        g.nodes[root].op = Op::Prim(op);
        g.nodes[root].args = args;
        for a in absorbed {
            keep[a] = false;
        }
    }
    g.compact(&keep);
    n
}
