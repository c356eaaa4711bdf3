//! The graph builder of gradient rules: primitive nodes appended to the graph being
//! differentiated, typed and shaped by the primitives' own rules, and the helpers every rule
//! uses (literals, masks, summing a broadcast gradient back, expanding a reduced one).

use crate::ir::{DType, Dim, Graph, Node, NodeId, Op, Scalar, Shape, DT};
use crate::prims::{norm_axis, ArgDt, Prim, ReduceKind};
use proc_macro2::Span;

/// Builds the backward graph: appends primitive nodes whose shape and dtype come from the
/// primitives' own rules. The gradient rules (`Family::vjp`) build with it; `passes::autodiff`
/// drives it.
pub struct Builder<'g> {
    pub g: &'g mut Graph,
    /// The span of the forward node being differentiated (errors point at it).
    pub span: Span,
    /// The instance the nodes being built belong to: the forward node's (so a `backend_map`
    /// places a gradient op with the op it differentiates).
    pub scope: String,
    /// The model's default float type.
    pub default: DType,
    /// Errors met while differentiating.
    pub errors: Vec<syn::Error>,
    /// The run-time guard of the nodes being built ([`crate::ir::Node::guard`]): the forward
    /// node's, so the gradient of a branch's op runs only when the branch ran.
    pub guard: Option<NodeId>,
    /// The run-time loop body the nodes being built belong to ([`crate::ir::Node::region`]).
    pub region: Option<NodeId>,
}

impl Builder<'_> {
    /// Append a node with a known shape and dtype.
    pub fn push(&mut self, op: Op, args: Vec<NodeId>, shape: Shape, dt: DType) -> NodeId {
        self.g.push(Node {
            op,
            args,
            span: self.span,
            label: None,
            scope: self.scope.clone(),
            shape: Some(shape),
            dtype: Some(DT::Known(dt)),
            guard: self.guard,
            region: self.region,
        })
    }

    /// `v` when run-time guard `guard` holds, else zeros shaped and typed like `like` (which
    /// must exist whenever the nodes being built run): a gradient computed in a branch, as
    /// seen from outside it.
    pub fn select(&mut self, guard: NodeId, v: NodeId, like: NodeId) -> NodeId {
        let z = self.op(Prim::FullLike(0.0), &[like]);
        self.op(Prim::Phi, &[guard, guard, v, z])
    }

    /// A primitive node; shape and dtype come from the primitive's own rules.
    pub fn op(&mut self, p: Prim, args: &[NodeId]) -> NodeId {
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
                .skip(p.first_data_operand())
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
    pub fn lit(&mut self, v: f64) -> NodeId {
        let id = self.push(
            Op::Const(Scalar::Float(v)),
            vec![],
            Shape::scalar(),
            self.default,
        );
        self.g.nodes[id].label = Some("#weak".into());
        id
    }

    /// A binary primitive.
    pub fn bin(&mut self, p: Prim, a: NodeId, b: NodeId) -> NodeId {
        self.op(p, &[a, b])
    }
    /// `a * b`.
    pub fn mul(&mut self, a: NodeId, b: NodeId) -> NodeId {
        self.bin(Prim::Mul, a, b)
    }
    /// `a * v` for a literal `v`.
    pub fn mul_lit(&mut self, a: NodeId, v: f64) -> NodeId {
        let l = self.lit(v);
        self.bin(Prim::Mul, a, l)
    }
    /// `-a`.
    pub fn neg(&mut self, a: NodeId) -> NodeId {
        self.op(Prim::Neg, &[a])
    }
    /// `g` where `cond`, else 0.
    pub fn mask(&mut self, cond: NodeId, g: NodeId) -> NodeId {
        let z = self.lit(0.0);
        self.op(Prim::Where, &[cond, g, z])
    }

    /// The dtype of a node (the default float type when unknown).
    pub fn dt_of(&self, id: NodeId) -> DType {
        self.g.dtype_of(id).unwrap_or(self.default)
    }

    /// The rank of a node (`None` when open).
    pub fn rank(&self, id: NodeId) -> Option<usize> {
        let s = self.g.shape_of(id)?;
        s.rest.is_none().then_some(s.dims.len())
    }

    /// Sum `g` (shaped like a broadcast result) back to the shape of `x`.
    pub fn unbroadcast(&mut self, g: NodeId, x: NodeId) -> NodeId {
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
    pub fn expand(&mut self, g: NodeId, x: NodeId, axes: &[i64], keepdim: bool) -> NodeId {
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

    /// Records that the gradient of `what` is not supported; no operand of the `n` gets one.
    pub fn unsupported(&mut self, what: &str, n: usize) -> Vec<Option<NodeId>> {
        self.errors.push(syn::Error::new(
            self.span,
            format!("the gradient of `{what}` is not supported yet"),
        ));
        vec![None; n]
    }
}
