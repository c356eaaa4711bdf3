//! Run-time loops: `while cond { .. }` (with an optional `max_steps = N`) and `for t in 0..T`
//! over a symbolic dim `T` (a scan; `stack ys[(.., t)] = y;` stacks per-step values).
//!
//! The body is flattened once (no unrolling): a run of nodes between a `loop_head` and a
//! `loop_end` (see `prims::control` for the node pattern). Every name the body (re)binds that
//! exists before the loop is a loop variable: a `carry` before the head, its value at the end of
//! the body carried to the next iteration, and its value after the loop bound to the name. A
//! name first bound in the body is local to one iteration. A hidden step counter (the `for`'s
//! variable, or `step` of a `while`) is carry 0: the backward pass reads its tapes by it.

use super::control::binding_span;
use super::*;
use crate::ir::Scalar;
use crate::prims::Prim;

/// What ends a run-time loop.
pub(super) enum Bound<'e> {
    /// `while cond`
    While(&'e Expr),
    /// `for t in 0..T`: the step counter below `T`'s run-time value
    Upto(Dim),
}

/// The innermost run-time loop being flattened.
pub(super) struct LoopCx {
    /// the step counter (carry 0)
    counter: NodeId,
    /// the `for`'s variable
    var: Option<String>,
    /// the `for`'s bound (the length of its stacked outputs)
    len: Option<Dim>,
    /// `stack` outputs: name, carry, value after the last `stack` statement
    stacks: Vec<(String, NodeId, Option<NodeId>)>,
}

/// A `for t in 0..T` unrolled because `dynamic_control_flow: false` and the compile fixes `T`.
pub(super) struct UnrolledScan {
    /// the loop variable
    var: String,
    /// how many run-time loops were open when it began (a `stack` of an inner run-time loop is
    /// that loop's)
    depth: usize,
    /// `stack` outputs: name, stacked axis, the value of each step
    stacks: Vec<(String, usize, Vec<NodeId>)>,
}

impl Flattener<'_> {
    /// `for t in 0..T` with `T` fixed at `k` by the compile and `dynamic_control_flow: false`:
    /// unrolled like a compile-time range, `t` a compile-time integer; each `stack ys[(.., t)]`
    /// output is the `stack` of its `k` step values along its axis.
    pub(super) fn unrolled_scan(
        &mut self,
        var: &Ident,
        k: u64,
        span: Span,
        body: &[Stmt],
        s: &Stmt,
        f: &mut Frame,
    ) {
        if k > MAX_UNROLL as u64 {
            self.error(
                span,
                format!("`for` would unroll {k} iterations (`dynamic_control_flow: false` unrolls a `for` over a fixed dim); at most {MAX_UNROLL} are allowed"),
            );
            return;
        }
        self.unrolled.push(UnrolledScan {
            var: var.to_string(),
            depth: self.loops.len(),
            stacks: Vec::new(),
        });
        for i in 0..k {
            if !self.step(s) {
                break;
            }
            f.vars
                .insert(var.to_string(), Value::Hyper(HVal::Int(i as i64)));
            self.exec(body, f);
        }
        let Some(done) = self.unrolled.pop() else {
            return;
        };
        for (name, axis, items) in done.stacks {
            if items.len() as u64 != k {
                self.error(
                    span,
                    format!("`stack {name}[..]` ran {} times in {k} steps; it must run once per step (a statement of the loop's own body)", items.len()),
                );
                continue;
            }
            let id = self.node(Op::Prim(Prim::Stack(axis as i64)), items, span, f);
            self.g.nodes[id].label = Some(name.clone());
            f.vars.insert(name, Value::Tensor(id));
        }
    }

    /// The axis of `stack name[index]` in a loop over `var`: where `var` stands, with `..` at
    /// every other place.
    fn stack_axis(&mut self, name: &str, index: &Expr, var: &str) -> Option<usize> {
        let items: Vec<&Expr> = match index {
            Expr::Tuple(t) => t.elems.iter().collect(),
            other => vec![other],
        };
        let is_var = |e: &Expr| matches!(e, Expr::Path(p) if p.path.is_ident(var));
        let full = |e: &Expr| matches!(e, Expr::Range(r) if r.start.is_none() && r.end.is_none());
        let axis = items.iter().position(|e| is_var(e));
        let ok = axis.is_some()
            && items.iter().filter(|e| is_var(e)).count() == 1
            && items.iter().all(|e| is_var(e) || full(e));
        let axis = axis.filter(|_| ok);
        if axis.is_none() {
            self.error(
                index.span(),
                format!("`stack {name}[..]` is indexed by the loop's variable `{var}` at the stacked axis and `..` before it, e.g. `stack {name}[(.., {var})] = y;`"),
            );
        }
        axis
    }

    /// `while` / run-time `for`.
    pub(super) fn runtime_loop(
        &mut self,
        span: Span,
        var: Option<&Ident>,
        bound: Bound<'_>,
        max_steps: Option<u64>,
        body: &[Stmt],
        f: &mut Frame,
    ) {
        let mut bound_names = Vec::new();
        bound_in(body, &mut bound_names);
        bound_names.sort();
        bound_names.dedup();
        let var_name = var.map(|v| v.to_string());
        let carried: Vec<String> = bound_names
            .iter()
            .filter(|n| f.vars.contains_key(*n) && Some(*n) != var_name.as_ref())
            .cloned()
            .collect();
        let locals: Vec<String> = bound_names
            .iter()
            .filter(|n| !f.vars.contains_key(*n))
            .cloned()
            .collect();
        let mut stack_names = Vec::new();
        for s in body {
            if let Stmt::Stack { name, .. } = s {
                if var.is_none() {
                    self.error(
                        name.span(),
                        "`stack` belongs in a run-time `for t in 0..T` (it stacks one value per step along `T`)",
                    );
                    return;
                }
                let n = name.to_string();
                if f.vars.contains_key(&n) || carried.contains(&n) {
                    self.error(
                        name.span(),
                        format!("`stack {n}[..]`: `{n}` is already bound; a stacked output gets a new name"),
                    );
                    return;
                }
                if !stack_names.contains(&n) {
                    stack_names.push(n);
                }
            }
        }
        // before the loop: the bound and the initial values
        let bound_node = match &bound {
            Bound::Upto(d) => {
                let id = self.node(Op::Prim(Prim::DimValue(d.clone())), vec![], span, f);
                Some(id)
            }
            Bound::While(_) => None,
        };
        let zero = self.node(Op::Const(Scalar::Int(0)), vec![], span, f);
        self.g.nodes[zero].dtype = Some(DT::Known(DType::I64));
        let mut inits = Vec::with_capacity(carried.len());
        for name in &carried {
            let at = binding_span(body, name).unwrap_or(span);
            let v = f.vars.get(name).cloned().unwrap_or(Value::Poison);
            let id = match v {
                Value::Tensor(id) => Some(id),
                Value::Hyper(h) | Value::Const(h, None) => {
                    let dt = match h {
                        HVal::Int(_) => Some(DT::Known(DType::I64)),
                        HVal::Bool(_) => Some(DT::Known(DType::Bool)),
                        HVal::Float(_) => Some(self.g.env.new_dt_var()),
                        ref other => {
                            self.error(
                                at,
                                format!("`{name}` is rebound in this run-time loop, but it is a compile-time {} before it; only tensors and numbers can be loop variables (bind the loop's result to a new name)", other.kind()),
                            );
                            None
                        }
                    };
                    match dt {
                        Some(dt) => {
                            let c = self.const_node(h, None, at, f);
                            if let Some(c) = c {
                                self.g.nodes[c].dtype = Some(dt);
                            }
                            c
                        }
                        None => None,
                    }
                }
                Value::Const(h, Some(t)) => self.const_node(h, Some(t), at, f),
                Value::Poison => None,
                Value::Inst(_) | Value::Multi(_) => {
                    self.error(
                        at,
                        format!("`{name}` is rebound in this run-time loop, but it is a model or a model's several outputs before it; only tensors can be loop variables"),
                    );
                    None
                }
            };
            inits.push(id);
        }
        if inits.iter().any(|i| i.is_none()) {
            return;
        }
        let inits: Vec<NodeId> = inits.into_iter().flatten().collect();
        // the carries and the head
        let counter = self.node(Op::Prim(Prim::Carry), vec![zero], span, f);
        self.g.nodes[counter].label = var_name.clone();
        let mut carries = vec![counter];
        for (name, &init) in carried.iter().zip(&inits) {
            let c = self.node(Op::Prim(Prim::Carry), vec![init], span, f);
            self.g.nodes[c].label = Some(name.clone());
            carries.push(c);
        }
        let mut stacks = Vec::new();
        for name in &stack_names {
            let c = self.node(Op::Prim(Prim::Carry), vec![], span, f);
            self.g.nodes[c].label = Some(name.clone());
            carries.push(c);
            stacks.push((name.clone(), c, None));
        }
        let head = self.node(Op::Prim(Prim::LoopHead), carries.clone(), span, f);
        let outer = self.region;
        let before = f.vars.clone();
        self.region = Some(head);
        if let Some(v) = &var_name {
            f.vars.insert(v.clone(), Value::Tensor(counter));
        }
        for (name, &c) in carried.iter().zip(&carries[1..]) {
            f.vars.insert(name.clone(), Value::Tensor(c));
        }
        let saved_unset = std::mem::replace(&mut self.unset_loop_vars, locals);
        // the condition, at the top of each iteration
        let cond = match &bound {
            Bound::While(e) => {
                let v = self.eval(e, f, None);
                self.tensor_of(v, e.span(), f)
            }
            Bound::Upto(_) => {
                bound_node.map(|b| self.node(Op::Prim(Prim::Lt), vec![counter, b], span, f))
            }
        };
        let Some(cond) = cond else {
            self.region = outer;
            self.unset_loop_vars = saved_unset;
            f.vars = before;
            return;
        };
        let at = match &bound {
            Bound::While(e) => e.span(),
            Bound::Upto(_) => span,
        };
        let test = self.node(
            Op::Prim(Prim::LoopTest { max_steps, tape: 0 }),
            vec![head, cond],
            at,
            f,
        );
        // the body
        self.loops.push(LoopCx {
            counter,
            var: var_name.clone(),
            len: match &bound {
                Bound::Upto(d) => Some(d.clone()),
                Bound::While(_) => None,
            },
            stacks,
        });
        self.exec(body, f);
        let cx = self.loops.pop();
        self.unset_loop_vars = saved_unset;
        // what is carried to the next iteration
        let one = self.node(Op::Const(Scalar::Int(1)), vec![], span, f);
        self.g.nodes[one].dtype = Some(DT::Known(DType::I64));
        let next_step = self.node(Op::Prim(Prim::Add), vec![counter, one], span, f);
        let mut nexts = Vec::with_capacity(carries.len());
        let n0 = self.node(Op::Prim(Prim::LoopNext), vec![counter, next_step], span, f);
        nexts.push(n0);
        let mut ok = true;
        for ((name, &c), &init) in carried.iter().zip(&carries[1..]).zip(&inits) {
            let at = binding_span(body, name).unwrap_or(span);
            let u = match f.vars.get(name).cloned() {
                Some(Value::Tensor(u)) => Some(u),
                Some(Value::Poison) | None => None,
                Some(Value::Hyper(h)) | Some(Value::Const(h, _)) => {
                    // a number: in the loop variable's dtype
                    let k = self.const_node(h, None, at, f);
                    if let Some(k) = k {
                        self.g.nodes[k].dtype = self.g.nodes[init].dtype;
                    }
                    k
                }
                Some(_) => {
                    self.error(
                        at,
                        format!("`{name}` is a loop variable, but the body rebinds it to a model; only tensors can be loop variables"),
                    );
                    None
                }
            };
            match u {
                Some(u) => {
                    let n = self.node(Op::Prim(Prim::LoopNext), vec![c, u], at, f);
                    self.g.nodes[n].label = Some(name.clone());
                    nexts.push(n);
                }
                None => ok = false,
            }
        }
        let stacks = cx.map(|c| c.stacks).unwrap_or_default();
        for (name, c, cur) in &stacks {
            match cur {
                Some(u) => {
                    let n = self.node(Op::Prim(Prim::LoopNext), vec![*c, *u], span, f);
                    self.g.nodes[n].label = Some(name.clone());
                    nexts.push(n);
                }
                None => ok = false,
            }
        }
        let mut args = vec![head, test];
        args.extend(&nexts);
        // the end belongs to the loop's level (it closes the body)
        self.region = outer;
        let end = ok.then(|| self.node(Op::Prim(Prim::LoopEnd), args, span, f));
        f.vars = before;
        let Some(end) = end else {
            for name in carried.iter().chain(&stack_names) {
                f.vars.insert(name.clone(), Value::Poison);
            }
            return;
        };
        for (name, &c) in carried.iter().chain(&stack_names).zip(carries[1..].iter()) {
            let x = self.node(Op::Prim(Prim::LoopExit), vec![end, c], span, f);
            self.g.nodes[x].label = Some(name.clone());
            f.vars.insert(name.clone(), Value::Tensor(x));
        }
    }

    /// `stack ys[(.., t)] = y;`: `y` written at step `t` of the stacked output `ys`.
    pub(super) fn stack_stmt(&mut self, name: &Ident, index: &Expr, expr: &Expr, f: &mut Frame) {
        let n = name.to_string();
        // in a `for` unrolled over a fixed dim: this step's value, stacked after the loop
        if let Some(u) = self.unrolled.last().filter(|u| u.depth == self.loops.len()) {
            let var = u.var.clone();
            let Some(axis) = self.stack_axis(&n, index, &var) else {
                return;
            };
            let v = self.eval(expr, f, None);
            let Some(v) = self.tensor_of(v, expr.span(), f) else {
                return;
            };
            let Some(u) = self.unrolled.last_mut() else {
                return;
            };
            match u.stacks.iter_mut().find(|s| s.0 == n) {
                Some(st) => st.2.push(v),
                None => {
                    if f.vars.contains_key(&n) {
                        self.error(
                            name.span(),
                            format!("`stack {n}[..]`: `{n}` is already bound; a stacked output gets a new name"),
                        );
                        return;
                    }
                    u.stacks.push((n, axis, vec![v]));
                }
            }
            return;
        }
        let Some(cx) = self.loops.last() else {
            self.error(
                name.span(),
                "`stack` belongs in a run-time `for t in 0..T` (it stacks one value per step along `T`)",
            );
            return;
        };
        let (counter, var, len) = (cx.counter, cx.var.clone(), cx.len.clone());
        let Some(k) = cx.stacks.iter().position(|s| s.0 == n) else {
            self.error(
                name.span(),
                format!("`stack {n}[..]` must be a statement of the loop's own body (not inside an `if`)"),
            );
            return;
        };
        let Some(var) = var else { return };
        let Some(axis) = self.stack_axis(&n, index, &var) else {
            return;
        };
        let v = self.eval(expr, f, None);
        let Some(v) = self.tensor_of(v, expr.span(), f) else {
            return;
        };
        // the stacked output so far: the carry, or the last `stack` of this iteration
        let Some(cur) = self
            .loops
            .last()
            .map(|c| c.stacks[k].2.unwrap_or(c.stacks[k].1))
        else {
            return;
        };
        let w = self.node(
            Op::Prim(Prim::SetAt {
                axis: axis as i64,
                add: false,
                len,
            }),
            vec![cur, v, counter],
            name.span(),
            f,
        );
        self.g.nodes[w].label = Some(n.clone());
        if let Some(cx) = self.loops.last_mut() {
            cx.stacks[k].2 = Some(w);
        }
    }

    /// `while` under `dynamic_control_flow: false`, or with a condition and loop variables all
    /// known at compile time: unrolled while the condition holds, at most `max_steps` (or
    /// [`MAX_UNROLL`]) times.
    pub(super) fn unrolled_while(
        &mut self,
        cond: &Expr,
        max_steps: Option<u64>,
        body: &[Stmt],
        span: Span,
        stmt: &Stmt,
        f: &mut Frame,
    ) {
        let limit = max_steps.unwrap_or(MAX_UNROLL as u64);
        let mut n = 0u64;
        loop {
            match self.eval(cond, f, None) {
                Value::Hyper(HVal::Bool(false)) | Value::Const(HVal::Bool(false), _) => return,
                Value::Hyper(HVal::Bool(true)) | Value::Const(HVal::Bool(true), _) => {}
                Value::Poison => return,
                _ => {
                    self.error(
                        cond.span(),
                        "this `while` needs a run-time condition (a tensor), and the model is compiled with `dynamic_control_flow: false`; make the condition compile-time (loop variables that are numbers, a hyperparameter bound), or allow run-time loops with `dynamic_control_flow: true`",
                    );
                    return;
                }
            }
            if n >= limit {
                self.error(
                    span,
                    format!("this `while` does not end: its condition still holds after {limit} iterations (compile-time unrolling under `dynamic_control_flow: false`{}); make sure the body changes what the condition reads", if max_steps.is_some() { ", `max_steps`" } else { "" }),
                );
                return;
            }
            n += 1;
            if !self.step(stmt) {
                return;
            }
            self.exec(body, f);
        }
    }
}

/// Names bound by `let` (or `stack`) anywhere in `stmts`, branches and nested loops included.
fn bound_in(stmts: &[Stmt], out: &mut Vec<String>) {
    for s in stmts {
        match s {
            Stmt::Let { pat, .. } => match pat {
                crate::frontend::syntax::Pat::Ident(i) => out.push(i.to_string()),
                crate::frontend::syntax::Pat::Tuple(ids, _) => {
                    out.extend(ids.iter().map(|i| i.to_string()))
                }
            },
            Stmt::If { then, els, .. } => {
                bound_in(then, out);
                bound_in(els, out);
            }
            Stmt::For { body, .. } | Stmt::While { body, .. } => bound_in(body, out),
            _ => {}
        }
    }
}
