//! Reverse-mode differentiation at compile time.
//!
//! Runs on the inferred graph (before optimization) and appends the backward graph to it: one
//! `Seed` node per output (the seed gradient the caller passes to `evaluate_gradients`), then, in
//! reverse graph order, each primitive's vector-Jacobian product as ordinary primitive nodes
//! (rules in [`vjp`], next to nothing else: they only build primitives, whose shape and dtype
//! rules are the ones in `prims`). Gradients reaching an operand that was broadcast are summed
//! back to the operand's shape. The gradient of each param becomes an extra output named
//! `__grad_<i>`; the combined graph then goes through the same passes and codegen as the forward.
//!
//! Not differentiable (documented; they pass no gradient): comparisons, logical ops, `sign`,
//! `floor_divide`, `argmax`/`argmin`, integer and bool values, and the indices of
//! `gather`/`take_along`. (`remainder` is piecewise `a - b * floor(a / b)`: gradients 1 and
//! `-floor(a / b)` away from its jumps.)

use crate::ir::{DType, Dim, Graph, Node, NodeId, Op, Scalar, Shape, DT};
use crate::prims::{norm_axis, robust_threshold, ArgDt, Prim, ReduceKind};
use proc_macro2::Span;

/// Prefix of the outputs that carry param gradients.
pub const GRAD_PREFIX: &str = "__grad_";

struct B<'g> {
    g: &'g mut Graph,
    span: Span,
    /// The instance the nodes being built belong to: the forward node's (so a `backend_map`
    /// places a gradient op with the op it differentiates).
    scope: String,
    default: DType,
    errors: Vec<syn::Error>,
}

impl B<'_> {
    fn push(&mut self, op: Op, args: Vec<NodeId>, shape: Shape, dt: DType) -> NodeId {
        self.g.push(Node {
            op,
            args,
            span: self.span,
            label: None,
            scope: self.scope.clone(),
            shape: Some(shape),
            dtype: Some(DT::Known(dt)),
        })
    }

    /// A primitive node; shape and dtype come from the primitive's own rules.
    fn op(&mut self, p: Prim, args: &[NodeId]) -> NodeId {
        let shapes: Vec<Shape> = args
            .iter()
            .map(|&a| self.g.shape_of(a).unwrap_or_else(Shape::scalar))
            .collect();
        let dts: Vec<ArgDt> = args
            .iter()
            .map(|&a| ArgDt {
                dt: DT::Known(self.g.dtype_of(a).unwrap_or(self.default)),
                weak: match self.g.nodes[a].op {
                    Op::Const(s) if self.g.nodes[a].label.as_deref() == Some("#weak") => Some(s),
                    _ => None,
                },
            })
            .collect();
        let shape = match p.infer_shape(&mut self.g.env, &shapes) {
            Ok(s) => s,
            Err(m) => {
                self.errors.push(syn::Error::new(
                    self.span,
                    format!("internal error while differentiating (`{}`): {m}", p.name()),
                ));
                Shape::scalar()
            }
        };
        let dt = match p.infer_dtype(&mut self.g.env, &dts, self.default) {
            Ok(t) => match self.g.env.dt(t) {
                DT::Known(k) => k,
                DT::Var(_) => self.default,
            },
            Err(m) => {
                self.errors.push(syn::Error::new(
                    self.span,
                    format!("internal error while differentiating (`{}`): {m}", p.name()),
                ));
                self.default
            }
        };
        // a weak literal takes the dtype it is computed in (as in `dtypes::infer`), so an f64
        // gradient multiplies by the f64 value of a constant such as 2/√π, not by it rounded to
        // the default float type
        if p.is_elementwise() {
            let target = args
                .iter()
                .zip(&dts)
                .skip(if p == Prim::Where { 1 } else { 0 })
                .find(|(_, d)| d.weak.is_none())
                .map(|(&a, _)| self.g.dtype_of(a).unwrap_or(self.default))
                .unwrap_or(dt);
            if target.is_float() {
                for (&a, d) in args.iter().zip(&dts) {
                    if matches!(d.weak, Some(Scalar::Float(_) | Scalar::Int(_))) {
                        self.g.nodes[a].dtype = Some(DT::Known(target));
                    }
                }
            }
        }
        self.push(Op::Prim(p), args.to_vec(), shape, dt)
    }

    /// A literal, weakly typed (it takes its partner's dtype).
    fn lit(&mut self, v: f64) -> NodeId {
        let id = self.push(
            Op::Const(Scalar::Float(v)),
            vec![],
            Shape::scalar(),
            self.default,
        );
        self.g.nodes[id].label = Some("#weak".into());
        id
    }

    fn bin(&mut self, p: Prim, a: NodeId, b: NodeId) -> NodeId {
        self.op(p, &[a, b])
    }
    fn mul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(Prim::Mul, a, b)
    }
    fn mul_lit(&mut self, a: NodeId, v: f64) -> NodeId {
        let l = self.lit(v);
        self.bin(Prim::Mul, a, l)
    }
    fn neg(&mut self, a: NodeId) -> NodeId {
        self.op(Prim::Neg, &[a])
    }
    fn mask(&mut self, cond: NodeId, g: NodeId) -> NodeId {
        let z = self.lit(0.0);
        self.op(Prim::Where, &[cond, g, z])
    }

    /// The dtype of a node (the default float type when unknown).
    fn dt_of(&self, id: NodeId) -> DType {
        self.g.dtype_of(id).unwrap_or(self.default)
    }

    fn rank(&self, id: NodeId) -> Option<usize> {
        let s = self.g.shape_of(id)?;
        s.rest.is_none().then_some(s.dims.len())
    }

    /// Sum `g` (shaped like a broadcast result) back to the shape of `x`.
    fn unbroadcast(&mut self, g: NodeId, x: NodeId) -> NodeId {
        let (Some(gs), Some(xs)) = (self.g.shape_of(g), self.g.shape_of(x)) else {
            return g;
        };
        if gs == xs {
            return g;
        }
        if gs.rest.is_some() || xs.rest.is_some() {
            if gs.dims.len() == xs.dims.len() && gs.rest == xs.rest {
                // same leading `...`: only trailing dims can differ
                let n = gs.dims.len() as i64;
                let axes: Vec<i64> = (0..gs.dims.len())
                    .filter(|&i| {
                        self.g.env.dim(&xs.dims[i]) == Dim::Known(1)
                            && self.g.env.dim(&gs.dims[i]) != Dim::Known(1)
                    })
                    .map(|i| i as i64 - n)
                    .collect();
                if axes.is_empty() {
                    return g;
                }
                let s = self.op(Prim::Reduce(ReduceKind::Sum, axes, true), &[g]);
                return self.op(Prim::ReshapeLike, &[s, x]);
            }
            // the summed axes depend on the run-time rank
            return self.op(Prim::SumLike, &[g, x]);
        }
        let (gr, xr) = (gs.dims.len(), xs.dims.len());
        if gr < xr {
            // not a broadcast of `x` as far as the compile-time shapes tell (open dims met
            // later): leave the reduction to the run-time shapes
            return self.op(Prim::SumLike, &[g, x]);
        }
        let lead = gr.saturating_sub(xr);
        let mut axes: Vec<i64> = (0..lead as i64).collect();
        for i in 0..xr {
            let (xd, gd) = (
                self.g.env.dim(&xs.dims[i]),
                self.g.env.dim(&gs.dims[lead + i]),
            );
            if xd == Dim::Known(1) && gd != Dim::Known(1) {
                axes.push((lead + i) as i64);
            }
        }
        if axes.is_empty() {
            return self.op(Prim::ReshapeLike, &[g, x]);
        }
        let s = self.op(Prim::Reduce(ReduceKind::Sum, axes, true), &[g]);
        self.op(Prim::ReshapeLike, &[s, x])
    }

    /// Broadcast a reduced gradient back over the reduced axes of `x`.
    fn expand(&mut self, g: NodeId, x: NodeId, axes: &[i64], keepdim: bool) -> NodeId {
        let Some(r) = self.rank(x) else {
            // all-axes reduction of an open-rank tensor: the gradient is a scalar
            return self.op(Prim::BroadcastLike, &[g, x]);
        };
        let g2 = if keepdim || r == 0 {
            g
        } else {
            let mut ax: Vec<usize> = if axes.is_empty() {
                (0..r).collect()
            } else {
                axes.iter().filter_map(|&a| norm_axis(a, r)).collect()
            };
            ax.sort_unstable();
            self.op(Prim::Unsqueeze(ax), &[g])
        };
        self.op(Prim::BroadcastLike, &[g2, x])
    }
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
    let mut b = B {
        g,
        span: Span::call_site(),
        scope: String::new(),
        default,
        errors: Vec::new(),
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
        let grads = vjp(&mut b, p, &node.args, id, gy);
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
            adj[x] = Some(match adj[x] {
                None => gx,
                Some(prev) => b.bin(Prim::Add, prev, gx),
            });
        }
    }
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

/// The vector-Jacobian product of one primitive: the gradient of each operand given the
/// gradient `gy` of the result `y` (`None`: no gradient flows to that operand).
fn vjp(b: &mut B, p: &Prim, x: &[NodeId], y: NodeId, gy: NodeId) -> Vec<Option<NodeId>> {
    use Prim::*;
    let unsupported = |b: &mut B, what: &str| {
        b.errors.push(syn::Error::new(
            b.span,
            format!("the gradient of `{what}` is not supported yet"),
        ));
        vec![None; x.len()]
    };
    match p {
        Add => vec![Some(gy), Some(gy)],
        Sub => {
            let n = b.neg(gy);
            vec![Some(gy), Some(n)]
        }
        Mul => {
            let ga = b.mul(gy, x[1]);
            let gb = b.mul(gy, x[0]);
            vec![Some(ga), Some(gb)]
        }
        Div => {
            let ga = b.bin(Div, gy, x[1]);
            // -gy * y / b
            let t = b.mul(ga, y);
            let gb = b.neg(t);
            vec![Some(ga), Some(gb)]
        }
        Pow => {
            // d/da = b * a^(b-1) (not b * y / a, which is 0/0 at a = 0);
            // d/db = ln(a) * y, taken as 0 where a = 0 (as PyTorch)
            let one = b.lit(1.0);
            let bm1 = b.bin(Sub, x[1], one);
            let pw = b.bin(Pow, x[0], bm1);
            let t = b.mul(x[1], pw);
            let ga = b.mul(gy, t);
            let la = b.op(Log, &[x[0]]);
            let t2 = b.mul(la, y);
            let z = b.lit(0.0);
            let nz = b.bin(Ne, x[0], z);
            let t3 = b.mask(nz, t2);
            let gb = b.mul(gy, t3);
            vec![Some(ga), Some(gb)]
        }
        Minimum | Maximum => {
            // the gradient goes to the operand that was chosen; a tie splits it evenly (as
            // PyTorch and Mithril)
            let (wins_a, wins_b) = if *p == Minimum { (Lt, Gt) } else { (Gt, Lt) };
            let ca = b.bin(wins_a, x[0], x[1]);
            let cb = b.bin(wins_b, x[0], x[1]);
            let tie = b.bin(Eq, x[0], x[1]);
            let half = b.mul_lit(gy, 0.5);
            let shared = b.mask(tie, half);
            let ga = b.op(Where, &[ca, gy, shared]);
            let gb = b.op(Where, &[cb, gy, shared]);
            vec![Some(ga), Some(gb)]
        }
        Neg => vec![Some(b.neg(gy))],
        Abs => {
            let s = b.op(Sign, &[x[0]]);
            vec![Some(b.mul(gy, s))]
        }
        Exp => vec![Some(b.mul(gy, y))],
        Log => vec![Some(b.bin(Div, gy, x[0]))],
        Sqrt => {
            let t = b.bin(Div, gy, y);
            vec![Some(b.mul_lit(t, 0.5))]
        }
        Sin => {
            let c = b.op(Cos, &[x[0]]);
            vec![Some(b.mul(gy, c))]
        }
        Cos => {
            let s = b.op(Sin, &[x[0]]);
            let t = b.mul(gy, s);
            vec![Some(b.neg(t))]
        }
        Tanh => {
            // 1 - y^2
            let y2 = b.op(Square, &[y]);
            let one = b.lit(1.0);
            let d = b.bin(Sub, one, y2);
            vec![Some(b.mul(gy, d))]
        }
        Erf => {
            // 2/sqrt(pi) * exp(-x^2)
            let x2 = b.op(Square, &[x[0]]);
            let nx2 = b.neg(x2);
            let e = b.op(Exp, &[nx2]);
            let d = b.mul_lit(e, std::f64::consts::FRAC_2_SQRT_PI);
            vec![Some(b.mul(gy, d))]
        }
        Square => {
            let t = b.mul(gy, x[0]);
            vec![Some(b.mul_lit(t, 2.0))]
        }
        Relu => {
            let z = b.lit(0.0);
            let c = b.bin(Gt, x[0], z);
            vec![Some(b.mask(c, gy))]
        }
        LeakyRelu(slope) => {
            let z = b.lit(0.0);
            let c = b.bin(Gt, x[0], z);
            let s = b.mul_lit(gy, *slope);
            vec![Some(b.op(Where, &[c, gy, s]))]
        }
        Clamp(lo, hi) => {
            let l = b.lit(*lo);
            let h = b.lit(*hi);
            let c1 = b.bin(Ge, x[0], l);
            let c2 = b.bin(Le, x[0], h);
            let c = b.bin(And, c1, c2);
            vec![Some(b.mask(c, gy))]
        }
        Sigmoid => {
            let one = b.lit(1.0);
            let om = b.bin(Sub, one, y);
            let d = b.mul(y, om);
            vec![Some(b.mul(gy, d))]
        }
        Softplus => {
            let s = b.op(Sigmoid, &[x[0]]);
            vec![Some(b.mul(gy, s))]
        }
        Gelu => {
            // Φ(x) + x φ(x), φ(x) = exp(-x²/2)/√(2π)
            let xs = b.mul_lit(x[0], std::f64::consts::FRAC_1_SQRT_2);
            let e = b.op(Erf, &[xs]);
            let one = b.lit(1.0);
            let e1 = b.bin(Add, one, e);
            let cdf = b.mul_lit(e1, 0.5);
            let x2 = b.op(Square, &[x[0]]);
            let h = b.mul_lit(x2, -0.5);
            let ex = b.op(Exp, &[h]);
            let pdf = b.mul_lit(ex, 1.0 / (2.0 * std::f64::consts::PI).sqrt());
            let xp = b.mul(x[0], pdf);
            let d = b.bin(Add, cdf, xp);
            vec![Some(b.mul(gy, d))]
        }
        GeluTanh => {
            // y = 0.5 x (1 + t), t = tanh(k (x + c x³)); dy = 0.5 (1 + t) + 0.5 x (1 - t²) k (1 + 3c x²)
            let k = 0.797_884_560_802_865_4;
            let c = 0.044715;
            let x2 = b.op(Square, &[x[0]]);
            let x3 = b.mul(x2, x[0]);
            let cx3 = b.mul_lit(x3, c);
            let inner0 = b.bin(Add, x[0], cx3);
            let inner = b.mul_lit(inner0, k);
            let t = b.op(Tanh, &[inner]);
            let one = b.lit(1.0);
            let opt = b.bin(Add, one, t);
            let left = b.mul_lit(opt, 0.5);
            let t2 = b.op(Square, &[t]);
            let one2 = b.lit(1.0);
            let omt2 = b.bin(Sub, one2, t2);
            let c3x2 = b.mul_lit(x2, 3.0 * c);
            let one3 = b.lit(1.0);
            let poly = b.bin(Add, one3, c3x2);
            let kp = b.mul_lit(poly, k);
            let r0 = b.mul(omt2, kp);
            let r1 = b.mul(x[0], r0);
            let right = b.mul_lit(r1, 0.5);
            let d = b.bin(Add, left, right);
            vec![Some(b.mul(gy, d))]
        }
        Cast(_) => vec![Some(gy)],
        StopGradient => vec![None],
        RobustSqrt(_) => {
            // sign(x) / sqrt(c) below the threshold, sign(x) / (2 sqrt|x|) above (Mithril's)
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let half = b.lit(0.5);
            let above = b.bin(Div, half, y);
            let below = b.lit(1.0 / c.sqrt());
            let d = b.op(Where, &[small, below, above]);
            let s = b.op(Sign, &[x[0]]);
            let ds = b.mul(d, s);
            vec![Some(b.mul(gy, ds))]
        }
        RobustLog(_) => {
            // 1 / c below the threshold, 1 / |x| above, negated for x < 0 (+1/c at x = 0,
            // Mithril's)
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let one = b.lit(1.0);
            let above = b.bin(Div, one, ax);
            let below = b.lit(1.0 / c);
            let d = b.op(Where, &[small, below, above]);
            let t = b.mul(gy, d);
            let z = b.lit(0.0);
            let neg = b.bin(Lt, x[0], z);
            let nt = b.neg(t);
            vec![Some(b.op(Where, &[neg, nt, t]))]
        }
        StableReciprocal(_) => {
            // -1 / c² below the threshold, -1 / x² above (Mithril's)
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let x2 = b.op(Square, &[x[0]]);
            let m1 = b.lit(-1.0);
            let above = b.bin(Div, m1, x2);
            let below = b.lit(-1.0 / (c * c));
            let d = b.op(Where, &[small, below, above]);
            vec![Some(b.mul(gy, d))]
        }
        RobustPower(_) => {
            // y = |a|^e, or |a| / c in the region `|a| < c && e < 1 - ln c / ln|a|` (Mithril's):
            // d/da = sign(a) * (1 / c there, e |a|^(e-1) elsewhere);
            // d/de = 0 there and at a = 0, |a|^e ln|a| elsewhere
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let la = b.op(Log, &[ax]);
            let lc = b.lit(c.ln());
            let q = b.bin(Div, lc, la);
            let one = b.lit(1.0);
            let r = b.bin(Sub, one, q);
            let e_low = b.bin(Lt, x[1], r);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let below = b.bin(And, small, e_low);
            let one = b.lit(1.0);
            let em1 = b.bin(Sub, x[1], one);
            let pw = b.bin(Pow, ax, em1);
            let above = b.mul(x[1], pw);
            let inv_c = b.lit(1.0 / c);
            let d = b.op(Where, &[below, inv_c, above]);
            let s = b.op(Sign, &[x[0]]);
            let ds = b.mul(d, s);
            let ga = b.mul(gy, ds);
            let z = b.lit(0.0);
            let nz = b.bin(Ne, ax, z);
            let above_e = b.op(Not, &[below]);
            let ok = b.bin(And, above_e, nz);
            let yl = b.mul(y, la);
            let t = b.mul(gy, yl);
            let ge = b.mask(ok, t);
            vec![Some(ga), Some(ge)]
        }
        Where => {
            let ga = b.mask(x[0], gy);
            let nc = b.op(Not, &[x[0]]);
            let gb = b.mask(nc, gy);
            vec![None, Some(ga), Some(gb)]
        }
        Rem => {
            // a % b = a - b * floor(a / b) (Python's sign convention): 1 and -floor(a / b)
            let q = b.bin(FloorDiv, x[0], x[1]);
            let t = b.mul(gy, q);
            let gb = b.neg(t);
            vec![Some(gy), Some(gb)]
        }
        Eq | Ne | Lt | Le | Gt | Ge | And | Or | Xor | Not | Sign | FloorDiv => {
            vec![None; x.len()]
        }
        Matmul { ta, tb } => {
            let (ta, tb) = (*ta, *tb);
            // (an operand of open rank has at least two named dims: the general rule applies)
            let (ra, rb) = (b.rank(x[0]), b.rank(x[1]));
            if ra == Some(1) || rb == Some(1) {
                let (Some(ra), Some(rb)) = (ra, rb) else {
                    return unsupported(b, "matmul of a vector with an open-rank operand");
                };
                return matmul_vector_vjp(b, x, (ra, rb), (ta, tb), gy);
            }
            let ga = if !ta {
                b.op(Matmul { ta: false, tb: !tb }, &[gy, x[1]])
            } else {
                b.op(Matmul { ta: tb, tb: true }, &[x[1], gy])
            };
            let gb = if !tb {
                b.op(Matmul { ta: !ta, tb: false }, &[x[0], gy])
            } else {
                b.op(Matmul { ta: true, tb: ta }, &[gy, x[0]])
            };
            let ga = b.unbroadcast(ga, x[0]);
            let gb = b.unbroadcast(gb, x[1]);
            vec![Some(ga), Some(gb)]
        }
        Transpose(perm) => {
            let Some(r) = b.rank(x[0]) else {
                return unsupported(b, "transpose of an open-rank tensor");
            };
            let perm: Vec<usize> = if perm.is_empty() {
                (0..r).rev().collect()
            } else {
                perm.clone()
            };
            let mut inv = vec![0; r];
            for (i, &p) in perm.iter().enumerate() {
                inv[p] = i;
            }
            vec![Some(b.op(Transpose(inv), &[gy]))]
        }
        Reshape(_) | Flatten(..) => vec![Some(b.op(ReshapeLike, &[gy, x[0]]))],
        Reduce(kind, axes, keepdim) => {
            let e = b.expand(gy, x[0], axes, *keepdim);
            match kind {
                ReduceKind::Sum => vec![Some(e)],
                ReduceKind::Mean => {
                    let n = b.op(SizeRatio, &[x[0], y]);
                    vec![Some(b.bin(Div, e, n))]
                }
                ReduceKind::Max | ReduceKind::Min => {
                    // tied extremes share the gradient equally (as PyTorch's amax/amin)
                    let ye = b.expand(y, x[0], axes, *keepdim);
                    let c = b.bin(Eq, x[0], ye);
                    let xdt = b.g.dtype_of(x[0]).unwrap_or(b.default);
                    let cf = b.op(Cast(xdt), &[c]);
                    let cnt = b.op(Reduce(ReduceKind::Sum, axes.clone(), true), &[cf]);
                    let share = b.bin(Div, e, cnt);
                    vec![Some(b.mask(c, share))]
                }
                ReduceKind::Prod => {
                    // ∏_{j≠i} x_j without dividing by zero: from the product of the non-zero
                    // elements and how many are zero (one zero: only it gets a gradient)
                    let xdt = b.g.dtype_of(x[0]).unwrap_or(b.default);
                    let l0 = b.lit(0.0);
                    let z = b.bin(Eq, x[0], l0);
                    let l1 = b.lit(1.0);
                    let x1 = b.op(Where, &[z, l1, x[0]]);
                    let p1 = b.op(Reduce(ReduceKind::Prod, axes.clone(), true), &[x1]);
                    let zf = b.op(Cast(xdt), &[z]);
                    let nz = b.op(Reduce(ReduceKind::Sum, axes.clone(), true), &[zf]);
                    let l0 = b.lit(0.0);
                    let no_zero = b.bin(Eq, nz, l0);
                    let l1 = b.lit(1.0);
                    let one_zero = b.bin(Eq, nz, l1);
                    let q = b.bin(Div, p1, x1);
                    let at_nonzero = b.mask(no_zero, q);
                    let at_zero = b.mask(one_zero, p1);
                    let d = b.op(Where, &[z, at_zero, at_nonzero]);
                    vec![Some(b.mul(e, d))]
                }
            }
        }
        Variance(axes, keepdim, corr) => {
            // d var / dx = 2 (x - mean) / (N - correction)
            let mean = b.op(Reduce(ReduceKind::Mean, axes.clone(), true), &[x[0]]);
            let c = b.bin(Sub, x[0], mean);
            let n = b.op(SizeRatio, &[x[0], y]);
            let corr_l = b.lit(*corr);
            let den = b.bin(Sub, n, corr_l);
            let e = b.expand(gy, x[0], axes, *keepdim);
            let t = b.mul(e, c);
            let t2 = b.mul_lit(t, 2.0);
            vec![Some(b.bin(Div, t2, den))]
        }
        Softmax(axis) => {
            // y * (g - sum(g * y))
            let gyy = b.mul(gy, y);
            let s = b.op(Reduce(ReduceKind::Sum, vec![*axis], true), &[gyy]);
            let d = b.bin(Sub, gy, s);
            vec![Some(b.mul(y, d))]
        }
        LogSoftmax(axis) => {
            // g - softmax(x) * sum(g)
            let s = b.op(Reduce(ReduceKind::Sum, vec![*axis], true), &[gy]);
            let sm = b.op(Exp, &[y]);
            let t = b.mul(sm, s);
            vec![Some(b.bin(Sub, gy, t))]
        }
        ArgReduce { .. } => vec![None],
        Unsqueeze(_) => vec![Some(b.op(ReshapeLike, &[gy, x[0]]))],
        ReshapeLike => vec![Some(b.op(ReshapeLike, &[gy, x[0]])), None],
        SumLike => vec![Some(b.op(BroadcastLike, &[gy, x[0]])), None],
        BroadcastLike => vec![Some(b.unbroadcast(gy, x[0])), None],
        SizeRatio => vec![None, None],
        Concat(axis) => (0..x.len())
            .map(|k| {
                let mut args = vec![gy];
                args.extend_from_slice(x);
                Some(b.op(ConcatPart(*axis, k), &args))
            })
            .collect(),
        Slice(args) => vec![Some(b.op(SliceGrad(args.clone()), &[gy, x[0]]))],
        Gather(axis) => vec![Some(b.op(GatherGrad(*axis), &[gy, x[1], x[0]])), None],
        TakeAlong => vec![Some(b.op(TakeAlongGrad, &[gy, x[1], x[0]])), None],
        TakeAlongGrad | GatherGrad(_) | SliceGrad(_) | ConcatPart(..) | EighVectors => {
            unsupported(b, "a gradient (second derivatives)")
        }
        Tril(k) => vec![Some(b.op(Tril(*k), &[gy]))],
        Triu(k) => vec![Some(b.op(Triu(*k), &[gy]))],
        FullLike(_) => vec![None],
        Arange { .. } => vec![],
        Stack(axis) => {
            // the gradient of operand k is the slice k of the new axis
            let Some(r) = b.rank(y) else {
                return unsupported(b, "stack of open-rank tensors");
            };
            let Some(ax) = norm_axis(*axis, r) else {
                return unsupported(b, "stack with an out-of-range axis");
            };
            (0..x.len())
                .map(|k| {
                    let mut args = vec![crate::prims::SliceArg::Range(None, None, 1); ax];
                    args.push(crate::prims::SliceArg::Index(k as i64));
                    Some(b.op(Slice(args), &[gy]))
                })
                .collect()
        }
        Cholesky => {
            // A = L Lᵀ: Ā = L⁻ᵀ Φ L⁻¹ with Φ = ½ (P + tril(P, -1)ᵀ), P = tril(Lᵀ L̄) (the
            // symmetric gradient, as PyTorch's; Murray 2016)
            let Some(r) = b.rank(y) else {
                return unsupported(b, "cholesky of an open-rank tensor");
            };
            let p0 = b.op(
                Matmul {
                    ta: true,
                    tb: false,
                },
                &[y, gy],
            );
            let p = b.op(Tril(0), &[p0]);
            let low = b.op(Tril(-1), &[p]);
            let low_t = b.op(Transpose(swap_last2(r)), &[low]);
            let sum = b.bin(Add, p, low_t);
            let phi = b.mul_lit(sum, 0.5);
            let lt = SolveTriangular {
                upper: false,
                left: true,
                trans: true,
            };
            let s1 = b.op(lt, &[y, phi]);
            let rt = SolveTriangular {
                upper: false,
                left: false,
                trans: false,
            };
            vec![Some(b.op(rt, &[y, s1]))]
        }
        Eigvalsh => {
            // Ā = V diag(ḡ) Vᵀ (V: the eigenvectors)
            let Some(r) = b.rank(x[0]) else {
                return unsupported(b, "eigvalsh of an open-rank tensor");
            };
            let v = b.op(EighVectors, &[x[0]]);
            let g = b.op(Unsqueeze(vec![r - 2]), &[gy]);
            let vg = b.mul(v, g);
            vec![Some(b.op(
                Matmul {
                    ta: false,
                    tb: true,
                },
                &[vg, v],
            ))]
        }
        SolveTriangular { upper, left, trans } => {
            // op(A) X = B: B̄ = op(A)⁻ᵀ X̄, op(A)‾ = -B̄ Xᵀ; X op(A) = B: B̄ = X̄ op(A)⁻ᵀ,
            // op(A)‾ = -Xᵀ B̄; Ā is op(A)‾ (transposed back when `trans`) on A's triangle
            let (upper, left, trans) = (*upper, *left, *trans);
            let gb = b.op(
                SolveTriangular {
                    upper,
                    left,
                    trans: !trans,
                },
                &[x[0], gy],
            );
            let prod = match (left, trans) {
                (true, false) => b.op(
                    Matmul {
                        ta: false,
                        tb: true,
                    },
                    &[gb, y],
                ),
                (true, true) => b.op(
                    Matmul {
                        ta: false,
                        tb: true,
                    },
                    &[y, gb],
                ),
                (false, false) => b.op(
                    Matmul {
                        ta: true,
                        tb: false,
                    },
                    &[y, gb],
                ),
                (false, true) => b.op(
                    Matmul {
                        ta: true,
                        tb: false,
                    },
                    &[gb, y],
                ),
            };
            let neg = b.neg(prod);
            let ga = b.op(if upper { Triu(0) } else { Tril(0) }, &[neg]);
            vec![Some(ga), Some(gb)]
        }
    }
}

/// The permutation of `0..r` that swaps the last two axes.
fn swap_last2(r: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..r).collect();
    p.swap(r - 2, r - 1);
    p
}

/// The gradients of a matmul with a 1-D operand (a vector on the left is a row, on the right a
/// column; a vector's transposed flag means nothing), as broadcast products and sums.
fn matmul_vector_vjp(
    b: &mut B,
    x: &[NodeId],
    (ra, rb): (usize, usize),
    (ta, tb): (bool, bool),
    gy: NodeId,
) -> Vec<Option<NodeId>> {
    use Prim::*;
    let sum_but = |b: &mut B, t: NodeId, r: usize, keep: usize| {
        let axes: Vec<i64> = (0..r).filter(|&i| i != keep).map(|i| i as i64).collect();
        b.op(Reduce(ReduceKind::Sum, axes, false), &[t])
    };
    match (ra, rb) {
        (1, 1) => vec![Some(b.mul(gy, x[1])), Some(b.mul(gy, x[0]))],
        (_, 1) => {
            // y[.., m] = Σ_k a[.., m, k] v[k] (`a` laid out [.., k, m] when transposed)
            let k = if ta { ra - 2 } else { ra - 1 };
            let g = b.op(Unsqueeze(vec![k]), &[gy]);
            let v = if ta {
                b.op(Unsqueeze(vec![1]), &[x[1]])
            } else {
                x[1]
            };
            let ga = b.mul(g, v);
            let t = b.mul(g, x[0]);
            let gv = sum_but(b, t, ra, k);
            vec![Some(ga), Some(gv)]
        }
        _ => {
            // y[.., n] = Σ_k v[k] m[.., k, n] (`m` laid out [.., n, k] when transposed)
            let k = if tb { rb - 1 } else { rb - 2 };
            let g = b.op(Unsqueeze(vec![k]), &[gy]);
            let v = if tb {
                x[0]
            } else {
                b.op(Unsqueeze(vec![1]), &[x[0]])
            };
            let gm = b.mul(g, v);
            let t = b.mul(g, x[1]);
            let gv = sum_but(b, t, rb, k);
            vec![Some(gv), Some(gm)]
        }
    }
}
