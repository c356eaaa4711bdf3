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
//! Run-time loops (`while`, `for t in 0..T` over a symbolic dim) are a run of consecutive nodes
//! with a back edge, never unrolled:
//!
//! ```text
//! c_j  = carry(init_j)            once, at loop entry: init copied into the carry's own memory
//! h    = loop_head(c_0, .., c_m)  the back edge returns after it
//!        ... condition ...        (nodes with `region = h`, run once per iteration)
//! t    = loop_test(h, cond)       leaves the loop when `cond` is false; counts the trip,
//!                                 `Err` past `max_steps`; saves the taped carries
//!        ... body ...
//! n_j  = loop_next(c_j, u_j)      u_j is carried to the next iteration (shapes unify here)
//! e    = loop_end(h, t, n_0..n_m) copies each u_j into c_j's memory (nothing when u_j was
//!                                 computed in place over it) and jumps back
//! x_j  = loop_exit(e, c_j)        c_j's value after the loop
//! ```
//!
//! `carry()` without an argument is a scan's stacked output (zeros, shape from its `set_at`).
//! Gradients: `passes::autodiff` differentiates a loop as a whole (a reversed loop over the
//! taped carries); these nodes have no rules of their own. `set_at` has.
//!
//! CPU plan: `alias`, `phi` and the loop ops (`mithril-runtime/src/plan/exec.rs`). CUDA
//! (`backend: cuda`): structured host code around the body's per-node code
//! (`backends/cuda/flow.rs`, not this family's `cuda`: these nodes shape the generated code
//! rather than compute a value); mixed models reject a guarded or looping graph with a spanned
//! error.

use super::attrs::{AttrVal, Sig};
use super::grad::Builder;
use super::plan::PlanCx;
use super::rules::ArgDt;
use super::Family;
use crate::ir::{DType, Dim, Env, NodeId, Shape, DT};
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
            Prim::Carry => "loop_carry",
            Prim::LoopHead => "loop_head",
            Prim::LoopTest { .. } => "loop_test",
            Prim::LoopNext => "loop_next",
            Prim::LoopEnd => "loop_end",
            Prim::LoopExit => "loop_exit",
            Prim::TapeRead(_) => "tape_read",
            Prim::DimValue(_) => "dim_value",
            Prim::SetAt { .. } => "set_at",
            _ => "phi",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Carry => Ok(match ins.first() {
                Some(s) => s.clone(),
                // a scan's stacked output: its shape comes from what `set_at` writes into it
                None => Shape {
                    rest: Some(env.new_rest_var("stacked")),
                    dims: vec![],
                },
            }),
            Prim::LoopHead | Prim::LoopEnd | Prim::DimValue(_) => Ok(Shape::scalar()),
            Prim::LoopTest { .. } => {
                let s = &ins[1];
                if s.rest.is_some() || !s.dims.is_empty() {
                    return Err(format!(
                        "shape: the condition of a run-time loop must be a scalar `bool` (rank 0), found {}; reduce it first (`max(cast(c, dtype = i32)) > 0`)",
                        env.fmt_shape(s)
                    ));
                }
                Ok(Shape::scalar())
            }
            Prim::LoopNext => {
                let (c, u) = (&ins[0], &ins[1]);
                let msg = format!(
                    "its shape changes in the loop: {} before the loop, {} carried to the next iteration; a loop variable keeps its shape (reduce, reshape or slice the new value to {})",
                    env.fmt_shape(c),
                    env.fmt_shape(u),
                    env.fmt_shape(c)
                );
                unify_same(env, c, u).map_err(|()| msg)
            }
            Prim::LoopExit => Ok(ins[1].clone()),
            Prim::TapeRead(_) => Err("internal: a tape read is built with its shape".into()),
            Prim::SetAt { axis, len, .. } => {
                let (acc, v) = (env.shape(&ins[0]), env.shape(&ins[1]));
                if v.rest.is_some() {
                    return Err("set_at: the value's rank must be known".into());
                }
                let r = v.dims.len() + 1;
                let ax = crate::prims::norm_axis(*axis, r)
                    .ok_or_else(|| format!("axis {axis} out of range for rank {r}"))?;
                if acc.rest.is_some() && acc.dims.is_empty() {
                    // a scan's stacked output, first written here: the step value's dims with
                    // the scanned axis inserted (bound by the loop through `loop_next`)
                    let mut dims = v.dims.clone();
                    dims.insert(
                        ax,
                        len.clone().unwrap_or_else(|| env.new_dim_var("scanned")),
                    );
                    let out = Shape::fixed(dims);
                    if let Some(rv) = acc.rest {
                        env.bind_rest(rv, out.clone());
                    }
                    return Ok(out);
                }
                if acc.rest.is_some() || acc.dims.len() != r {
                    return Err(format!(
                        "set_at: {} cannot hold {} at axis {ax}",
                        env.fmt_shape(&acc),
                        env.fmt_shape(&v)
                    ));
                }
                let mut want = v.dims.clone();
                want.insert(ax, acc.dims[ax].clone());
                unify_same(env, &acc, &Shape::fixed(want)).map_err(|()| {
                    format!(
                        "the stacked value's shape changes: {} stacked at axis {ax} into {}",
                        env.fmt_shape(&v),
                        env.fmt_shape(&acc)
                    )
                })
            }
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
                unify_same(env, t, e).map_err(|()| msg)
            }
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        let name = |env: &Env, d: DT| match env.dt(d) {
            DT::Known(k) => k.name(),
            DT::Var(_) => "float",
        };
        match p {
            Prim::Carry => Ok(match ins.first() {
                Some(a) => a.dt,
                None => env.new_dt_var(),
            }),
            Prim::LoopHead | Prim::LoopEnd => Ok(DT::Known(DType::Bool)),
            Prim::DimValue(_) => Ok(DT::Known(DType::I64)),
            Prim::LoopTest { .. } => match env.dt(ins[1].dt) {
                DT::Known(DType::Bool) => Ok(DT::Known(DType::Bool)),
                other => Err(format!(
                    "dtype of the condition of a run-time loop: it must be `bool`, found {}; compare it (`step < n`) to make a bool",
                    match other {
                        DT::Known(k) => k.name(),
                        DT::Var(_) => "a float",
                    }
                )),
            },
            Prim::LoopNext => {
                let (c, u) = (ins[0].dt, ins[1].dt);
                env.unify_dt(c, u).map_err(|()| {
                    format!(
                        "its dtype changes in the loop: {} before the loop, {} carried to the next iteration",
                        name(env, c),
                        name(env, u)
                    )
                })
            }
            Prim::LoopExit => Ok(ins[1].dt),
            Prim::TapeRead(_) => Err("internal: a tape read is built with its dtype".into()),
            Prim::SetAt { .. } => {
                if !matches!(env.dt(ins[2].dt), DT::Known(DType::I32 | DType::I64)) {
                    return Err("set_at: the index must be an integer".into());
                }
                let (a, v) = (ins[0].dt, ins[1].dt);
                env.unify_dt(a, v).map_err(|()| {
                    format!(
                        "the stacked value's dtype changes: {} stacked into {}",
                        name(env, v),
                        name(env, a)
                    )
                })
            }
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
                    format!(
                        "dtype differs between the branches of a run-time `if`: {} (then) and {} (else)",
                        name(env, t),
                        name(env, e)
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
            Prim::SetAt { axis, add, .. } => {
                // the slice is read before the in-place update of the accumulator's gradient
                let gv = b.op(Prim::Gather(*axis), &[gy, x[2]]);
                let ga = if *add {
                    gy
                } else {
                    let z = b.op(Prim::FullLike(0.0), &[x[1]]);
                    b.op(
                        Prim::SetAt {
                            axis: *axis,
                            add: false,
                            len: None,
                        },
                        &[gy, z, x[2]],
                    )
                };
                vec![Some(ga), Some(gv), None]
            }
            Prim::Phi => {
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
            // loops are differentiated as a whole by `passes::autodiff`
            _ => vec![None; x.len()],
        }
    }

    /// A condition known at compile time folds (then `passes::fold` resolves the `if`).
    fn fold(&self, p: &Prim, a: &[crate::ir::Scalar], _: DType) -> Option<crate::ir::Scalar> {
        match p {
            Prim::Truth => a.first().copied(),
            _ => None,
        }
    }

    fn plan(&self, p: &Prim, cx: &PlanCx<'_>) -> Result<String, String> {
        Ok(match p {
            Prim::Truth => "alias".into(),
            Prim::Phi => "phi".into(),
            Prim::Carry if cx.arity > 0 => "carry 0".into(),
            Prim::Carry => {
                // a stacked output starts as zeros of its planned shape
                let s = cx.shape.ok_or("carry: no shape")?;
                let mut dims = format!(" {}", s.dims.len());
                for d in &s.dims {
                    let t = (cx.dim)(d).ok_or(
                        "the stacked output of a run-time `for`: a dim is not known at run time",
                    )?;
                    dims.push(' ');
                    dims.push_str(&t);
                }
                format!("carry{dims}")
            }
            Prim::LoopHead => "loop_head".into(),
            Prim::LoopTest { max_steps, tape } => format!(
                "loop_test {} {tape}",
                max_steps.map_or("-".to_string(), |m| m.to_string())
            ),
            Prim::LoopNext => "loop_next".into(),
            Prim::LoopEnd => "loop_end".into(),
            Prim::LoopExit => "loop_exit".into(),
            Prim::TapeRead(j) => format!("tape_read {j}"),
            Prim::DimValue(d) => {
                let t =
                    (cx.dim)(d).ok_or("the bound of a run-time `for` is not known at run time")?;
                format!("dim_value {t}")
            }
            Prim::SetAt { axis, add, .. } => format!("set_at {axis} {}", *add as u8),
            _ => return Err("internal: not a control-flow primitive".into()),
        })
    }
}

/// Unify two shapes of the same rank dim by dim (the shape of both).
fn unify_same(env: &mut Env, a: &Shape, b: &Shape) -> Result<Shape, ()> {
    let (a, b) = (env.shape(a), env.shape(b));
    if a.rest != b.rest || a.dims.len() != b.dims.len() {
        return Err(());
    }
    let mut dims: Vec<Dim> = Vec::with_capacity(a.dims.len());
    for (x, y) in a.dims.iter().zip(&b.dims) {
        dims.push(env.unify_dim(x, y)?);
    }
    Ok(Shape { rest: a.rest, dims })
}
