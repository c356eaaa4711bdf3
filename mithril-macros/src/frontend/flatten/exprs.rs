//! Expressions: literals, names, compile-time lists and ranges, operators (a primitive node or
//! a folded compile-time value), casts, output picks, indexing and slicing.

use super::*;

impl Flattener<'_> {
    // ---------------------------------------------------------------- expressions

    pub(super) fn tensor_of(&mut self, v: Value, span: Span, f: &Frame) -> Option<NodeId> {
        match v {
            Value::Tensor(id) => Some(id),
            Value::Hyper(h) => self.const_node(h, None, span, f),
            Value::Const(h, dt) => self.const_node(h, dt, span, f),
            Value::Multi(outs) => {
                self.error(span, format!(
                    "this model has several outputs ({}); pick one with `.name` or destructure with `let (a, b) = ...`",
                    outs.iter().map(|o| o.0.as_str()).collect::<Vec<_>>().join(", ")
                ));
                None
            }
            Value::Inst(i) => {
                let name = self.insts[i].entry.def.name.to_string();
                self.error(span, format!("`{name}(..)` is a model instance, not a tensor; call it on an input: `{name}(..)(x)`"));
                None
            }
            Value::Poison => None,
        }
    }

    pub(super) fn const_node(
        &mut self,
        h: HVal,
        dt: Option<DType>,
        span: Span,
        f: &Frame,
    ) -> Option<NodeId> {
        let s = match h {
            HVal::Int(i) => Scalar::Int(i),
            HVal::Float(x) => Scalar::Float(x),
            HVal::Bool(b) => Scalar::Bool(b),
            other => {
                self.error(
                    span,
                    format!("expected a tensor, found a compile-time {}", other.kind()),
                );
                return None;
            }
        };
        let id = self.node(Op::Const(s), vec![], span, f);
        self.g.nodes[id].dtype = dt.map(DT::Known);
        Some(id)
    }

    /// Evaluate a compile-time expression.
    pub(super) fn eval_hyper(&mut self, e: &Expr, f: &mut Frame) -> Option<HVal> {
        match self.eval(e, f, None) {
            Value::Hyper(h) | Value::Const(h, _) => Some(h),
            Value::Poison => None,
            _ => {
                self.error(e.span(), "expected a compile-time value (a number, bool, string, list or name), found a tensor");
                None
            }
        }
    }

    pub(super) fn eval(&mut self, e: &Expr, f: &mut Frame, hint: Option<&Ident>) -> Value {
        match e {
            Expr::Lit(l) => self.eval_lit(l),
            Expr::Path(p) if p.path.get_ident().is_some() => {
                let id = p
                    .path
                    .get_ident()
                    .cloned()
                    .unwrap_or_else(|| Ident::new("_", p.span()));
                self.lookup(&id, f)
            }
            Expr::Paren(p) => self.eval(&p.expr, f, hint),
            Expr::Group(g) => self.eval(&g.expr, f, hint),
            Expr::Array(a) => self.eval_array(a, f),
            Expr::Range(r) => self.eval_range(r, e, f),
            Expr::Unary(u) => self.eval_unary(u, e, f),
            Expr::Binary(b) => self.eval_binary(b, e, f),
            Expr::Cast(c) => self.eval_cast(c, e, f),
            Expr::Field(fe) => self.eval_field(fe, e, f),
            Expr::Index(ix) => self.eval_index(ix, e, f),
            Expr::Call(c) => {
                self.eval_call(&c.func, c.args.iter().collect(), None, e.span(), f, hint)
            }
            Expr::MethodCall(m) => self.eval_method(m, f, hint),
            // a tuple of compile-time values is a list (`kernel_size = (3, 3)`, as PyTorch's)
            Expr::Tuple(t) if !t.elems.is_empty() && t.elems.iter().all(is_literal_like) => {
                let mut xs = Vec::new();
                for el in &t.elems {
                    match self.eval(el, f, None) {
                        Value::Hyper(h) | Value::Const(h, _) => xs.push(h),
                        Value::Poison => return Value::Poison,
                        _ => {
                            self.error(el.span(), "tuple elements must be compile-time values");
                            return Value::Poison;
                        }
                    }
                }
                Value::Hyper(HVal::List(xs))
            }
            Expr::Tuple(t) => {
                self.error(
                    t.span(),
                    "tuples are only allowed as `let (a, b) = Model(..)` patterns, or of compile-time values",
                );
                Value::Poison
            }
            other => {
                self.error(other.span(), "unsupported expression in a mithril model");
                Value::Poison
            }
        }
    }

    /// A literal: a compile-time number, bool or string.
    fn eval_lit(&mut self, l: &syn::ExprLit) -> Value {
        match &l.lit {
            syn::Lit::Int(i) => match i.base10_parse::<i64>() {
                Ok(v) => Value::Hyper(HVal::Int(v)),
                Err(e2) => {
                    self.error(i.span(), e2);
                    Value::Poison
                }
            },
            syn::Lit::Float(x) => match x.base10_parse::<f64>() {
                Ok(v) => Value::Hyper(HVal::Float(v)),
                Err(e2) => {
                    self.error(x.span(), e2);
                    Value::Poison
                }
            },
            syn::Lit::Bool(b) => Value::Hyper(HVal::Bool(b.value)),
            syn::Lit::Str(s) => Value::Hyper(HVal::Str(s.value())),
            other => {
                self.error(other.span(), "unsupported literal");
                Value::Poison
            }
        }
    }

    /// `[a, b, ...]`: a compile-time list.
    fn eval_array(&mut self, a: &syn::ExprArray, f: &mut Frame) -> Value {
        let mut xs = Vec::new();
        for el in &a.elems {
            match self.eval(el, f, None) {
                Value::Hyper(h) | Value::Const(h, _) => xs.push(h),
                Value::Poison => return Value::Poison,
                _ => {
                    self.error(el.span(), "list elements must be compile-time values");
                    return Value::Poison;
                }
            }
        }
        Value::Hyper(HVal::List(xs))
    }

    /// `a..b` / `a..=b`: a compile-time list of integers.
    fn eval_range(&mut self, r: &syn::ExprRange, e: &Expr, f: &mut Frame) -> Value {
        let lo = match &r.start {
            Some(s) => self.eval_hyper(s, f),
            None => Some(HVal::Int(0)),
        };
        let hi = match &r.end {
            Some(s) => self.eval_hyper(s, f),
            None => None,
        };
        match (lo, hi) {
            (Some(HVal::Int(a)), Some(HVal::Int(b))) => {
                let closed = matches!(r.limits, syn::RangeLimits::Closed(_));
                let len = (b as i128 + closed as i128 - a as i128).max(0);
                if len > MAX_UNROLL as i128 {
                    self.error(
                        e.span(),
                        format!("this range has {len} items; a compile-time range has at most {MAX_UNROLL}"),
                    );
                    return Value::Poison;
                }
                Value::Hyper(HVal::List(
                    (0..len as i64).map(|i| HVal::Int(a + i)).collect(),
                ))
            }
            _ => {
                self.error(e.span(), "a range here needs integer bounds (`0..n`); use ranges without bounds only in `slice`");
                Value::Poison
            }
        }
    }

    /// `-x`, `!x`: folded on compile-time values, a primitive on tensors.
    fn eval_unary(&mut self, u: &syn::ExprUnary, e: &Expr, f: &mut Frame) -> Value {
        let v = self.eval(&u.expr, f, None);
        match (&u.op, v) {
            (_, Value::Poison) => Value::Poison,
            (syn::UnOp::Neg(_), Value::Hyper(HVal::Int(i))) => match i.checked_neg() {
                Some(n) => Value::Hyper(HVal::Int(n)),
                None => {
                    self.error(e.span(), "integer overflow in a compile-time value");
                    Value::Poison
                }
            },
            (syn::UnOp::Neg(_), Value::Hyper(HVal::Float(x))) => Value::Hyper(HVal::Float(-x)),
            (syn::UnOp::Not(_), Value::Hyper(HVal::Bool(b))) => Value::Hyper(HVal::Bool(!b)),
            (op, v) => {
                let prim = match op {
                    syn::UnOp::Neg(_) => prims::Prim::Neg,
                    syn::UnOp::Not(_) => prims::Prim::Not,
                    _ => {
                        self.error(u.span(), "unsupported unary operator");
                        return Value::Poison;
                    }
                };
                let Some(a) = self.tensor_of(v, u.expr.span(), f) else {
                    return Value::Poison;
                };
                Value::Tensor(self.node(Op::Prim(prim), vec![a], e.span(), f))
            }
        }
    }

    /// `a op b`: folded on compile-time values, a primitive on tensors.
    fn eval_binary(&mut self, b: &syn::ExprBinary, e: &Expr, f: &mut Frame) -> Value {
        let l = self.eval(&b.left, f, None);
        let r = self.eval(&b.right, f, None);
        if matches!(l, Value::Poison) || matches!(r, Value::Poison) {
            return Value::Poison;
        }
        if let (Value::Hyper(x) | Value::Const(x, None), Value::Hyper(y) | Value::Const(y, None)) =
            (&l, &r)
        {
            if let Some(v) = binop(&b.op, x, y) {
                return Value::Hyper(v);
            }
            if !matches!(
                (x, y),
                (
                    HVal::Int(_) | HVal::Float(_) | HVal::Bool(_),
                    HVal::Int(_) | HVal::Float(_) | HVal::Bool(_)
                )
            ) {
                self.error(
                    e.span(),
                    format!(
                        "operator not defined on compile-time {} and {}",
                        x.kind(),
                        y.kind()
                    ),
                );
                return Value::Poison;
            }
        }
        use syn::BinOp as B;
        let prim = match b.op {
            B::Add(_) => prims::Prim::Add,
            B::Sub(_) => prims::Prim::Sub,
            B::Mul(_) => prims::Prim::Mul,
            B::Div(_) => prims::Prim::Div,
            B::Rem(_) => prims::Prim::Rem,
            B::Eq(_) => prims::Prim::Eq,
            B::Ne(_) => prims::Prim::Ne,
            B::Lt(_) => prims::Prim::Lt,
            B::Le(_) => prims::Prim::Le,
            B::Gt(_) => prims::Prim::Gt,
            B::Ge(_) => prims::Prim::Ge,
            B::And(_) | B::BitAnd(_) => prims::Prim::And,
            B::Or(_) | B::BitOr(_) => prims::Prim::Or,
            B::BitXor(_) => prims::Prim::Xor,
            _ => {
                self.error(
                    e.span(),
                    "unsupported operator (use `+ - * / %`, comparisons, `&& || ^`)",
                );
                return Value::Poison;
            }
        };
        let (Some(a), Some(c)) = (
            self.tensor_of(l, b.left.span(), f),
            self.tensor_of(r, b.right.span(), f),
        ) else {
            return Value::Poison;
        };
        // spanned on the operator: `a + b` fails at `+` (rustc shows one token of a span)
        Value::Tensor(self.node(Op::Prim(prim), vec![a, c], b.op.span(), f))
    }

    /// `x as T`: a `cast`.
    fn eval_cast(&mut self, c: &syn::ExprCast, e: &Expr, f: &mut Frame) -> Value {
        let v = self.eval(&c.expr, f, None);
        let ty = &c.ty;
        let name = quote::quote!(#ty).to_string();
        let Some(t) = DType::parse(&name) else {
            self.error(c.ty.span(), format!("unknown dtype `{name}`"));
            return Value::Poison;
        };
        let Some(a) = self.tensor_of(v, c.expr.span(), f) else {
            return Value::Poison;
        };
        Value::Tensor(self.node(Op::Prim(prims::Prim::Cast(t)), vec![a], e.span(), f))
    }

    /// `call.output` picks an output; `x.T` transposes.
    fn eval_field(&mut self, fe: &syn::ExprField, e: &Expr, f: &mut Frame) -> Value {
        let base = self.eval(&fe.base, f, None);
        let member = match &fe.member {
            syn::Member::Named(i) => i.to_string(),
            syn::Member::Unnamed(i) => i.index.to_string(),
        };
        match base {
            Value::Multi(outs) => match outs.iter().find(|(n, _)| *n == member) {
                Some((_, id)) => Value::Tensor(*id),
                None => {
                    self.error(
                        fe.member.span(),
                        format!(
                            "no output `{member}`; the outputs are: {}",
                            outs.iter()
                                .map(|o| o.0.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                    Value::Poison
                }
            },
            Value::Tensor(id) if member == "T" => Value::Tensor(self.node(
                Op::Prim(prims::Prim::Transpose(vec![])),
                vec![id],
                e.span(),
                f,
            )),
            Value::Poison => Value::Poison,
            _ => {
                self.error(
                    fe.member.span(),
                    format!("`.{member}` picks an output of a model call with several outputs"),
                );
                Value::Poison
            }
        }
    }

    /// `list[i]` at compile time; `x[...]` a `slice`.
    fn eval_index(&mut self, ix: &syn::ExprIndex, e: &Expr, f: &mut Frame) -> Value {
        let base = self.eval(&ix.expr, f, None);
        if let Value::Hyper(HVal::List(items)) = &base {
            return match self.eval_hyper(&ix.index, f) {
                Some(HVal::Int(i)) if i >= 0 && (i as usize) < items.len() => {
                    Value::Hyper(items[i as usize].clone())
                }
                Some(HVal::Int(i)) => {
                    self.error(
                        ix.index.span(),
                        format!(
                            "index {i} is out of range for a list of {} items",
                            items.len()
                        ),
                    );
                    Value::Poison
                }
                Some(v) => {
                    self.error(
                        ix.index.span(),
                        format!("a list index is an integer, found {}", v.kind()),
                    );
                    Value::Poison
                }
                None => Value::Poison,
            };
        }
        let Some(b) = self.tensor_of(base, ix.expr.span(), f) else {
            return Value::Poison;
        };
        let items: Vec<&Expr> = match &*ix.index {
            Expr::Tuple(t) => t.elems.iter().collect(),
            other => vec![other],
        };
        // `x[(.., t)]` with `t` a scalar integer tensor (a run-time `for`'s step): a gather
        let tensor_at = items.iter().position(|it| {
            matches!(it, Expr::Path(p) if p.path.get_ident().is_some_and(|id| {
                matches!(f.vars.get(&id.to_string()), Some(Value::Tensor(_)))
            }))
        });
        if let Some(k) = tensor_at {
            let full =
                |it: &&Expr| matches!(it, Expr::Range(r) if r.start.is_none() && r.end.is_none());
            if items.iter().enumerate().all(|(j, it)| j == k || full(it)) {
                let Some(t) = (match items[k] {
                    Expr::Path(p) => {
                        p.path
                            .get_ident()
                            .and_then(|id| match f.vars.get(&id.to_string()) {
                                Some(Value::Tensor(t)) => Some(*t),
                                _ => None,
                            })
                    }
                    _ => None,
                }) else {
                    return Value::Poison;
                };
                return Value::Tensor(self.node(
                    Op::Prim(prims::Prim::Gather(k as i64)),
                    vec![b, t],
                    e.span(),
                    f,
                ));
            }
            self.error(
                ix.index.span(),
                "a tensor index picks along one axis, with `..` before it: `x[(.., t)]`",
            );
            return Value::Poison;
        }
        let Some(args) = self.slice_args(&items, f) else {
            return Value::Poison;
        };
        Value::Tensor(self.node(Op::Prim(prims::Prim::Slice(args)), vec![b], e.span(), f))
    }

    /// `x.f(args)`: the call `f(x, args)`.
    fn eval_method(
        &mut self,
        m: &syn::ExprMethodCall,
        f: &mut Frame,
        hint: Option<&Ident>,
    ) -> Value {
        let name = m.method.to_string();
        if name == "step_by" {
            self.error(
                m.span(),
                "`step_by` is only valid inside `slice(..)` arguments",
            );
            return Value::Poison;
        }
        let recv = &*m.receiver;
        let id = m.method.clone();
        // spanned on the method: `x.sum(axis = 2)` fails at `sum`
        self.eval_named_call(
            &id,
            Some(recv),
            m.args.iter().collect(),
            m.method.span(),
            f,
            hint,
        )
    }

    pub(super) fn lookup(&mut self, id: &Ident, f: &mut Frame) -> Value {
        let n = id.to_string();
        if let Some(v) = f.vars.get(&n) {
            return v.clone();
        }
        if let Some(v) = f.hyper.get(&n) {
            return Value::Hyper(v.clone());
        }
        if let Some(t) = DType::parse(&n) {
            return Value::Hyper(HVal::DType(t));
        }
        if n == "None" {
            return Value::Hyper(HVal::None);
        }
        if n == "is_training" {
            return Value::Tensor(self.mode_node(id.span(), f));
        }
        if is_symbol(&n) {
            if let Some(d) = f.syms.get(&n) {
                return Value::Hyper(HVal::Dim(d.clone()));
            }
        }
        if prims::lookup(&n).is_some() {
            return Value::Hyper(HVal::Func(n));
        }
        if let Some(entry) = self.find_def(&n, f) {
            self.passed.insert(n.clone(), entry);
            return Value::Hyper(HVal::Func(n));
        }
        if f.local && n.starts_with(|c: char| c.is_ascii_uppercase()) && !is_symbol(&n) {
            // a model of another module passed by name: fetched through its carrier
            if !self.missing.iter().any(|m| path_key(m) == n) {
                self.missing.push(id.clone().into());
            }
            return Value::Poison;
        }
        if self.unset_loop_vars.contains(&n) {
            self.error(
                id.span(),
                format!("loop variable `{n}` is read before it is set: the loop's body binds it, but it has no value before the loop; bind it before the loop (`let {n} = ...;`) so that the first iteration can read it"),
            );
            return Value::Poison;
        }
        if let Some(msg) = must_be_message(&n, &f.hyper) {
            self.error(id.span(), msg);
            return Value::Poison;
        }
        let mut names: Vec<&String> = f.vars.keys().chain(f.hyper.keys()).collect();
        names.sort();
        let near = closest(&n, names.iter().map(|s| s.as_str()));
        self.error(
            id.span(),
            format!(
                "unknown value `{n}`{}",
                near.map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default()
            ),
        );
        Value::Poison
    }

    /// A model name unknown inside a model defined elsewhere (carried, or from the library):
    /// its bundle holds every model its own text calls, so this is a model passed in by name
    /// from the caller's side, which cannot be resolved there.
    pub(super) fn unknown_in_carried(&mut self, name: &str, span: Span, f: &Frame) {
        let mut known: Vec<&str> = f.scope.defs.keys().map(|s| s.as_str()).collect();
        for n in self.library.names() {
            known.push(n);
        }
        let near = closest(name, known.iter().copied())
            .map(|s| format!(" (did you mean `{s}`?)"))
            .unwrap_or_default();
        self.error(
            span,
            format!(
                "`{name}` is not a model known where `{}` is defined{near}; a model defined elsewhere can only call the models its own definition names",
                f.model
            ),
        );
    }

    pub(super) fn find_def(&self, name: &str, f: &Frame) -> Option<Rc<DefEntry>> {
        let own = f.scope.defs.get(name).cloned();
        let local = if f.local {
            self.locals.defs.get(name).cloned()
        } else {
            None
        };
        own.or(local).or_else(|| self.library.get(name))
    }

    pub(super) fn slice_args(&mut self, items: &[&Expr], f: &mut Frame) -> Option<Vec<SliceArg>> {
        let mut out = Vec::new();
        self.pending_bounds.clear();
        for (k, it) in items.iter().enumerate() {
            self.slice_pos = k;
            out.push(self.slice_arg(it, f)?);
        }
        Some(out)
    }

    pub(super) fn slice_arg(&mut self, e: &Expr, f: &mut Frame) -> Option<SliceArg> {
        // a bound over a symbolic dim (`H - k + 1`) is recorded and stands as `None` until
        // shape inference resolves it against the sliced axis
        let int =
            |s: &mut Self, x: &Option<Box<Expr>>, hi: bool, f: &mut Frame| -> Option<Option<i64>> {
                match x {
                    None => Some(None),
                    Some(x) => match s.eval_hyper(x, f)? {
                        HVal::Int(i) => Some(Some(i)),
                        HVal::None => Some(None),
                        HVal::Dim(d) => {
                            s.pending_bounds.push(crate::ir::SymBound {
                                pos: s.slice_pos,
                                hi,
                                dim: d,
                                offset: 0,
                            });
                            Some(None)
                        }
                        HVal::DimPlus(d, c) => {
                            s.pending_bounds.push(crate::ir::SymBound {
                                pos: s.slice_pos,
                                hi,
                                dim: d,
                                offset: c,
                            });
                            Some(None)
                        }
                        v => {
                            s.error(
                                x.span(),
                                format!("slice bounds must be integers, found {}", v.kind()),
                            );
                            None
                        }
                    },
                }
            };
        match e {
            Expr::Range(r) => {
                let lo = int(self, &r.start, false, f)?;
                let pending = self.pending_bounds.len();
                let hi = int(self, &r.end, true, f)?;
                let closed = matches!(r.limits, syn::RangeLimits::Closed(_));
                if closed && self.pending_bounds.len() > pending {
                    if let Some(b) = self.pending_bounds.last_mut() {
                        b.offset = b.offset.saturating_add(1);
                    }
                }
                let hi = match (hi, &r.limits) {
                    (Some(h), syn::RangeLimits::Closed(_)) => Some(h.saturating_add(1)),
                    (h, _) => h,
                };
                Some(SliceArg::Range(lo, hi, 1))
            }
            Expr::MethodCall(m) if m.method == "step_by" && m.args.len() == 1 => {
                let inner = match &*m.receiver {
                    Expr::Paren(p) => &*p.expr,
                    other => other,
                };
                let base = self.slice_arg(inner, f)?;
                let step = match self.eval_hyper(&m.args[0], f)? {
                    HVal::Int(i) if i != 0 => i,
                    _ => {
                        self.error(m.args[0].span(), "`step_by` takes a non-zero integer");
                        return None;
                    }
                };
                match base {
                    SliceArg::Range(lo, hi, _) => Some(SliceArg::Range(lo, hi, step)),
                    _ => {
                        self.error(m.span(), "`step_by` applies to a range");
                        None
                    }
                }
            }
            other => match self.eval_hyper(other, f)? {
                HVal::Int(i) => Some(SliceArg::Index(i)),
                HVal::None => Some(SliceArg::NewAxis),
                v => {
                    self.error(
                        other.span(),
                        format!(
                            "an index is an integer, a range `a..b`, `..` or `None`; found {}",
                            v.kind()
                        ),
                    );
                    None
                }
            },
        }
    }
}

/// A tuple element that can only be a compile-time value: a literal (possibly negated or in
/// parentheses) or a plain name (a hyperparameter; a tensor name is an error when evaluated).
fn is_literal_like(e: &Expr) -> bool {
    match e {
        Expr::Lit(_) | Expr::Path(_) => true,
        Expr::Unary(u) => is_literal_like(&u.expr),
        Expr::Paren(p) => is_literal_like(&p.expr),
        Expr::Group(g) => is_literal_like(&g.expr),
        Expr::Binary(b) => is_literal_like(&b.left) && is_literal_like(&b.right),
        _ => false,
    }
}

/// The message of a library model's check written as an undefined name
/// `<hyper>_must_be_<a>_<b>_or_<c>` (read only when the model's taken branch reaches it):
/// "unsupported `<hyper>` = <value>: it must be a, b or c".
fn must_be_message(n: &str, hyper: &crate::frontend::hyper::HEnv) -> Option<String> {
    let (name, allowed) = n.split_once("_must_be_")?;
    let shown = match hyper.get(name)? {
        HVal::Int(v) => v.to_string(),
        HVal::Float(v) => v.to_string(),
        HVal::Bool(v) => v.to_string(),
        HVal::Str(v) => format!("{v:?}"),
        _ => return None,
    };
    let allowed = match allowed.rsplit_once("_or_") {
        Some((head, last)) => format!(
            "{} or {last}",
            head.split('_').collect::<Vec<_>>().join(", ")
        ),
        None => allowed.to_string(),
    };
    Some(format!(
        "unsupported `{name}` = {shown}: it must be {allowed}"
    ))
}
