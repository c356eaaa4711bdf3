//! Run-time `if`: an `if` whose condition is a tensor (an input such as `training: bool[]`, or a
//! value the model computes) rather than a compile-time bool.
//!
//! Both branches are flattened into the same graph; their nodes carry a guard
//! ([`crate::ir::Node::guard`]) — the then guard (the condition) or the else guard (its
//! negation), each combined with the guard of an enclosing run-time `if` — so that only the
//! taken branch runs. Every name a branch (re)binds that existed before the `if`, or that both
//! branches bind, gets a `phi` after it: the value of the branch that ran. A name bound in one
//! branch only is local to that branch.

use super::*;
use crate::ir::Scalar;
use crate::prims::Prim;

impl Flattener<'_> {
    /// `is_training`: the call's mode (one node per graph, made at its first use).
    pub(super) fn mode_node(&mut self, span: Span, f: &Frame) -> NodeId {
        if let Some(id) = self.g.nodes.iter().position(|n| matches!(n.op, Op::Mode)) {
            return id;
        }
        let id = self.node(Op::Mode, vec![], span, f);
        self.g.nodes[id].shape = Some(Shape::scalar());
        self.g.nodes[id].dtype = Some(DT::Known(DType::Bool));
        self.g.nodes[id].label = Some("is_training".into());
        id
    }

    pub(super) fn runtime_if(
        &mut self,
        c: NodeId,
        cond: &Expr,
        then: &[Stmt],
        els: &[Stmt],
        f: &mut Frame,
    ) {
        let span = self.span(cond.span());
        if !self.opts.dynamic_control_flow {
            self.error(
                cond.span(),
                "this `if` needs a run-time condition (a tensor), and the model is compiled with `dynamic_control_flow: false`; make the condition compile-time (a hyperparameter, a `const`, or an input baked in with `constants: { name: true }`), choose element by element with `where_(c, a, b)`, or allow run-time control flow with `dynamic_control_flow: true`",
            );
            return;
        }
        let outer = self.guard;
        // the condition (checked to be a scalar bool by its shape and dtype rules) and its
        // negation, computed where the `if` is
        let t = self.node(Op::Prim(Prim::Truth), vec![c], span, f);
        let n = self.node(Op::Prim(Prim::Not), vec![t], span, f);
        // the branches' guards: always computed (a nested `if`'s combine with the outer one)
        self.guard = None;
        let (gt, ge) = match outer {
            None => (t, n),
            Some(o) => {
                let no = self.node(Op::Const(Scalar::Bool(false)), vec![], span, f);
                self.g.nodes[no].dtype = Some(DT::Known(DType::Bool));
                let gt = self.node(Op::Prim(Prim::Phi), vec![o, o, t, no], span, f);
                let ge = self.node(Op::Prim(Prim::Phi), vec![o, o, n, no], span, f);
                (gt, ge)
            }
        };
        let before = f.vars.clone();
        self.guard = Some(gt);
        self.exec(then, f);
        let after_then = std::mem::replace(&mut f.vars, before.clone());
        self.guard = Some(ge);
        self.exec(els, f);
        let after_else = std::mem::take(&mut f.vars);
        self.guard = outer;
        f.vars = before.clone();
        let mut names: Vec<&String> = after_then.keys().chain(after_else.keys()).collect();
        names.sort();
        names.dedup();
        for name in names {
            let (vt, ve) = (
                after_then.get(name).or(before.get(name)),
                after_else.get(name).or(before.get(name)),
            );
            let (Some(vt), Some(ve)) = (vt, ve) else {
                // bound in one branch only: local to it
                continue;
            };
            if before.get(name).is_some_and(|b| same(b, vt) && same(b, ve)) {
                continue;
            }
            let merged = match (vt, ve) {
                (Value::Tensor(a), Value::Tensor(b)) if a == b => Value::Tensor(*a),
                (Value::Tensor(a), Value::Tensor(b)) => {
                    let at = binding_span(then, name)
                        .or_else(|| binding_span(els, name))
                        .unwrap_or(span);
                    let at = self.span(at);
                    let p = self.node(Op::Prim(Prim::Phi), vec![gt, ge, *a, *b], at, f);
                    self.g.nodes[p].label = Some(name.clone());
                    Value::Tensor(p)
                }
                (Value::Poison, _) | (_, Value::Poison) => Value::Poison,
                (a, b) if same(a, b) => a.clone(),
                (Value::Tensor(_) | Value::Multi(_), Value::Tensor(_) | Value::Multi(_)) => {
                    self.error(
                        span,
                        format!("`{name}` is a model's several outputs in one branch of this run-time `if` and a tensor in the other; pick one output with `.name` in the branch"),
                    );
                    Value::Poison
                }
                _ => {
                    self.error(
                        span,
                        format!("`{name}` is rebound to a compile-time value or a model instance inside this run-time `if`; only tensors can differ between the branches of a run-time `if` (bind it before the `if`)"),
                    );
                    Value::Poison
                }
            };
            f.vars.insert(name.clone(), merged);
        }
    }
}

/// The same binding (the same node, instance or compile-time value).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Tensor(x), Value::Tensor(y)) => x == y,
        (Value::Inst(x), Value::Inst(y)) => x == y,
        (Value::Hyper(x), Value::Hyper(y)) => x == y,
        (Value::Const(x, s), Value::Const(y, t)) => s == t && x == y,
        (Value::Poison, Value::Poison) => true,
        _ => false,
    }
}

/// The span of the last `let name` in `stmts` (where a phi's errors point).
pub(super) fn binding_span(stmts: &[Stmt], name: &str) -> Option<Span> {
    stmts.iter().rev().find_map(|s| match s {
        Stmt::Let {
            pat: crate::frontend::syntax::Pat::Ident(i),
            ..
        } if i == name => Some(i.span()),
        Stmt::If { then, els, .. } => binding_span(then, name).or_else(|| binding_span(els, name)),
        Stmt::For { body, .. } | Stmt::While { body, .. } => binding_span(body, name),
        _ => None,
    })
}
