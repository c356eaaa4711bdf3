//! Run-time control flow: the two primitives a run-time `if` makes (no DSL name of their own).
//!
//! - `Truth(c)`: the condition, checked here to be a scalar `bool`; its value is `c` (no copy).
//! - `Phi(then_guard, else_guard, t, e)`: the value of a name after the `if` — `t` when the
//!   then guard holds, else `e` (no copy: an alias of the value of the branch that ran). The
//!   branches' own nodes carry the guard ([`crate::ir::Node::guard`]) and are skipped at run
//!   time when it is false.
//!
//! Gradients: none to the condition; a phi's gradient goes to the value of the branch that ran.
//! When that value was computed inside its branch (under the branch's guard) it is the phi's
//! gradient itself; a value from outside the branch (a name the branch did not rebind) gets it
//! only when its branch ran — `Phi(g, g, gy, 0)`.
//!
//! CPU plan: `alias` and `phi` (`mithril-runtime/src/plan/exec.rs`). CUDA: not lowered (the
//! CUDA generator rejects a guarded graph with a spanned error before it gets here).

use super::attrs::{AttrVal, Sig};
use super::grad::Builder;
use super::plan::PlanCx;
use super::rules::ArgDt;
use super::Family;
use crate::ir::{DType, Env, NodeId, Shape, DT};
use crate::prims::Prim;

/// The control-flow family.
pub struct Rules;

impl Family for Rules {
    fn names(&self) -> &'static [&'static str] {
        &[]
    }

    fn lookup(&self, _: &str) -> Option<Sig> {
        None
    }

    fn build(&self, name: &str, _: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        Err(format!("internal: `{name}` is no control-flow primitive"))
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::Truth => "if_condition",
            _ => "phi",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Truth => {
                let s = &ins[0];
                if s.rest.is_some() || !s.dims.is_empty() {
                    return Err(format!(
                        "shape: the condition of a run-time `if` must be a scalar `bool` (rank 0), found {}; reduce it first (`c.any()`-style: `max(cast(c, dtype = i32)) > 0`), or use `where_(c, a, b)` to choose element by element",
                        env.fmt_shape(s)
                    ));
                }
                Ok(Shape::scalar())
            }
            _ => {
                let (t, e) = (&ins[2], &ins[3]);
                let msg = format!(
                    "shapes differ between the branches of a run-time `if`: {} (then) and {} (else); a name rebound in a branch must have the same shape after either branch",
                    env.fmt_shape(t),
                    env.fmt_shape(e)
                );
                let differ = || msg.clone();
                if t.rest != e.rest || t.dims.len() != e.dims.len() {
                    return Err(differ());
                }
                let mut dims = Vec::with_capacity(t.dims.len());
                for (a, b) in t.dims.iter().zip(&e.dims) {
                    match env.unify_dim(a, b) {
                        Ok(d) => dims.push(d),
                        Err(()) => return Err(differ()),
                    }
                }
                Ok(Shape { rest: t.rest, dims })
            }
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        match p {
            Prim::Truth => match env.dt(ins[0].dt) {
                DT::Known(DType::Bool) => Ok(DT::Known(DType::Bool)),
                other => Err(format!(
                    "dtype of the condition of a run-time `if`: it must be `bool`, found {}; compare it (`x > 0`) to make a bool",
                    match other {
                        DT::Known(k) => k.name(),
                        DT::Var(_) => "a float",
                    }
                )),
            },
            _ => {
                let (t, e) = (ins[2].dt, ins[3].dt);
                env.unify_dt(t, e).map_err(|()| {
                    let name = |d: DT| match env.dt(d) {
                        DT::Known(k) => k.name(),
                        DT::Var(_) => "float",
                    };
                    format!(
                        "dtype differs between the branches of a run-time `if`: {} (then) and {} (else)",
                        name(t),
                        name(e)
                    )
                })
            }
        }
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        y: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        match p {
            Prim::Truth => vec![None],
            _ => {
                let (gt, ge) = (x[0], x[1]);
                let to = |b: &mut Builder, guard: NodeId, v: NodeId| {
                    if b.g.nodes[v].guard == Some(guard) {
                        // computed in the branch: it exists only when the branch ran
                        gy
                    } else {
                        b.select(guard, gy, y)
                    }
                };
                let t = to(b, gt, x[2]);
                let e = to(b, ge, x[3]);
                vec![None, None, Some(t), Some(e)]
            }
        }
    }

    /// A condition known at compile time folds (then `passes::fold` resolves the `if`).
    fn fold(&self, p: &Prim, a: &[crate::ir::Scalar], _: DType) -> Option<crate::ir::Scalar> {
        match p {
            Prim::Truth => a.first().copied(),
            _ => None,
        }
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        Ok(match p {
            Prim::Truth => "alias".into(),
            _ => "phi".into(),
        })
    }
}
