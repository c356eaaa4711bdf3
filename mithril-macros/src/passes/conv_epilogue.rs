//! Convolution epilogue fusion: a forward convolution whose only user is an elementwise group of
//! the convolution's shape and float dtype (f32 / f64) computing `conv + bias`, `relu(conv +
//! bias)` or `relu(conv)` — `bias` any operand that varies along the channel axis only (a
//! `Conv2d`'s `bias.reshape([O, 1, 1])`) — becomes one convolution node of kind
//! [`ConvKind::ForwardEpi`], which the CPU kernel runs with the bias add and the ReLU applied
//! as its register tiles are stored (`mithril_kernels::conv::forward_fused`). The convolution's
//! output is never written out and read back, and it needs no slot of its own.
//!
//! Runs after elementwise fusion (the bias add and the activation are then one group) on the
//! CPU backends only, and after autodiff (on the forward graph and on the forward + backward
//! graph): the fused node has no gradient of its own, and since the convolution's own output
//! has no other user, nothing the backward reads is lost (a ReLU's gradient reads the group's
//! output, which the fused node still computes).
//!
//! A second step ([`fuse_pools`]) then fuses a `max_pool2d(kernel_size = 2)` (stride 2, no
//! padding, floor mode) over such a convolution (or a plain forward one) into it
//! (`ForwardEpi { pool: true }`, `mithril_kernels::conv::forward_fused_pool`) when the pool is
//! the convolution's only user: in inference graphs. A training graph keeps the unpooled
//! output, which the pool's gradient reads.

use crate::ir::prim::{ConvAttrs, ConvKind, PoolOp};
use crate::ir::{DType, Dim, FExpr, Graph, NodeId, Op};
use crate::prims::Prim;

/// The resolved static dims of `id` (`None`: unknown rank).
fn dims(g: &Graph, id: NodeId) -> Option<Vec<Dim>> {
    let s = g.shape_of(id).filter(|s| s.rest.is_none())?;
    Some(g.env.shape(&s).dims.iter().map(|d| g.env.dim(d)).collect())
}

/// Whether an operand of dims `b` broadcast against the convolution output `out` varies only
/// along the channel axis (axis 1), with all its channels: right-aligned, every dim 1 but the
/// one over axis 1, which is the output's channel count.
fn channel_vector(b: &[Dim], out: &[Dim]) -> bool {
    if out.len() < 2 || b.len() > out.len() || b.len() + 1 < out.len() {
        return false;
    }
    let lead = out.len() - b.len();
    b.iter().enumerate().all(|(i, d)| {
        if i + lead == 1 {
            *d == out[1]
        } else {
            *d == Dim::Known(1)
        }
    })
}

/// `e` as `(conv arg, bias arg, relu)` when it is `relu(add(..))`, `add(..)` or `relu(#c)`
/// over two distinct args (any order of the add's operands), every op computing in `dt`.
fn pattern(e: &FExpr, dt: DType) -> Vec<(usize, Option<usize>, bool)> {
    let in_dt = |out: &DType, comp: &DType| *out == dt && *comp == dt;
    let add = |e: &FExpr| -> Vec<(usize, usize)> {
        match e {
            FExpr::Op(Prim::Add, a, o, c) if in_dt(o, c) => match a[..] {
                [FExpr::Arg(x), FExpr::Arg(y)] if x != y => vec![(x, y), (y, x)],
                _ => vec![],
            },
            _ => vec![],
        }
    };
    match e {
        FExpr::Op(Prim::Relu, a, o, c) if in_dt(o, c) && a.len() == 1 => match &a[0] {
            FExpr::Arg(x) => vec![(*x, None, true)],
            inner => add(inner)
                .into_iter()
                .map(|(x, b)| (x, Some(b), true))
                .collect(),
        },
        _ => add(e)
            .into_iter()
            .map(|(x, b)| (x, Some(b), false))
            .collect(),
    }
}

/// Fuses the epilogues; returns how many convolutions took one.
pub fn run(g: &mut Graph) -> usize {
    let uses = g.use_counts();
    let mut is_output = vec![false; g.nodes.len()];
    for o in &g.outputs {
        is_output[o.node] = true;
    }
    let mut keep = vec![true; g.nodes.len()];
    let mut changes = 0;
    for id in 0..g.nodes.len() {
        let Some(dt) = g
            .dtype_of(id)
            .filter(|t| matches!(t, DType::F32 | DType::F64))
        else {
            continue;
        };
        let expr = match &g.nodes[id].op {
            Op::Fused(e) => e.clone(),
            Op::Prim(p @ (Prim::Add | Prim::Relu)) => FExpr::Op(
                p.clone(),
                (0..g.nodes[id].args.len()).map(FExpr::Arg).collect(),
                dt,
                dt,
            ),
            _ => continue,
        };
        let args = g.nodes[id].args.clone();
        let Some(out) = dims(g, id) else { continue };
        let found = pattern(&expr, dt).into_iter().find_map(|(ci, bi, relu)| {
            let (&m, b) = (args.get(ci)?, bi.map(|i| args.get(i).copied()));
            let b = match b {
                Some(Some(b)) => Some(b),
                Some(None) => return None,
                None => None,
            };
            let Op::Prim(Prim::Conv(a)) = &g.nodes[m].op else {
                return None;
            };
            let ok = a.kind == ConvKind::Forward
                && g.nodes[m].args.len() == 2
                && uses[m] == 1
                && !is_output[m]
                && keep[m]
                && g.same_place(m, id)
                && g.dtype_of(m) == Some(dt)
                && dims(g, m).as_ref() == Some(&out)
                && b.is_none_or(|b| {
                    b != m
                        && g.dtype_of(b) == Some(dt)
                        && dims(g, b).is_some_and(|bd| channel_vector(&bd, &out))
                });
            ok.then(|| (m, a.clone(), b, relu))
        });
        let Some((m, a, b, relu)) = found else {
            continue;
        };
        let mut new_args = g.nodes[m].args.clone();
        new_args.extend(b);
        g.nodes[id].op = Op::Prim(Prim::Conv(ConvAttrs {
            kind: ConvKind::ForwardEpi {
                bias: b.is_some(),
                relu,
                pool: false,
            },
            ..a
        }));
        g.nodes[id].args = new_args;
        keep[m] = false;
        changes += 1;
    }
    if changes > 0 {
        g.compact(&keep);
    }
    changes + fuse_pools(g)
}

/// Whether `op` is `max_pool2d` with a 2×2 kernel, stride 2, no padding or dilation, floor
/// mode.
fn pool_2x2(op: &PoolOp) -> bool {
    matches!(op, PoolOp::Window { max: true, k, s, p, d, ceil: false, .. }
        if k[..] == [2, 2] && s[..] == [2, 2] && p[..] == [0, 0] && d[..] == [1, 1])
}

/// The second step: a 2×2 / stride-2 max pool whose input is a 2-D forward convolution (with
/// or without a fused epilogue) used by the pool only, with static spatial dims of at least 2,
/// becomes the convolution node with `pool` set (the kernel pools its register tiles and
/// never writes the unpooled output). In a training graph the pool's gradient reads its
/// input, so the convolution has two users and stays.
fn fuse_pools(g: &mut Graph) -> usize {
    let uses = g.use_counts();
    let mut is_output = vec![false; g.nodes.len()];
    for o in &g.outputs {
        is_output[o.node] = true;
    }
    let mut keep = vec![true; g.nodes.len()];
    let mut changes = 0;
    for id in 0..g.nodes.len() {
        let Op::Prim(Prim::Pool(op)) = &g.nodes[id].op else {
            continue;
        };
        if !pool_2x2(op) || g.nodes[id].args.len() != 1 {
            continue;
        }
        let m = g.nodes[id].args[0];
        let Op::Prim(Prim::Conv(a)) = &g.nodes[m].op else {
            continue;
        };
        let (bias, relu) = match a.kind {
            ConvKind::Forward if g.nodes[m].args.len() == 2 => (false, false),
            ConvKind::ForwardEpi {
                bias,
                relu,
                pool: false,
            } => (bias, relu),
            _ => continue,
        };
        let dt = g.dtype_of(m);
        let spatial = dims(g, m).filter(|d| d.len() == 4).and_then(|d| {
            let known = |d: &Dim| match d {
                Dim::Known(n) if *n >= 2 => Some(*n),
                _ => None,
            };
            Some((known(&d[2])?, known(&d[3])?))
        });
        let ok = a.nd() == 2
            && uses[m] == 1
            && !is_output[m]
            && keep[m]
            && g.same_place(m, id)
            && matches!(dt, Some(DType::F32 | DType::F64))
            && g.dtype_of(id) == dt
            && spatial.is_some_and(|(h, w)| {
                dims(g, id).is_some_and(|o| o[2..] == [Dim::Known(h / 2), Dim::Known(w / 2)])
            });
        if !ok {
            continue;
        }
        let a = ConvAttrs {
            kind: ConvKind::ForwardEpi {
                bias,
                relu,
                pool: true,
            },
            ..a.clone()
        };
        g.nodes[id].op = Op::Prim(Prim::Conv(a));
        g.nodes[id].args = g.nodes[m].args.clone();
        keep[m] = false;
        changes += 1;
    }
    if changes > 0 {
        g.compact(&keep);
    }
    changes
}
