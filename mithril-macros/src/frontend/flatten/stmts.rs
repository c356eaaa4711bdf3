//! Statements: `input`, `param`, `const`, `let`, `output`, compile-time `if` / `for`, and a
//! `train` model's `loss` / `regularize`.

use super::*;

impl Flattener<'_> {
    /// `0..T` with `T` a symbolic dim of the model: a run-time `for` (a scan).
    fn scan_bound(&mut self, iter: &Expr, f: &Frame) -> Option<Dim> {
        let Expr::Range(r) = iter else { return None };
        let zero = match r.start.as_deref() {
            Some(Expr::Lit(l)) => matches!(&l.lit, syn::Lit::Int(i) if i.base10_digits() == "0"),
            _ => false,
        };
        let Some(Expr::Path(p)) = r.end.as_deref() else {
            return None;
        };
        let id = p.path.get_ident()?.to_string();
        if !zero
            || matches!(r.limits, syn::RangeLimits::Closed(_))
            || f.vars.contains_key(&id)
            || f.hyper.contains_key(&id)
        {
            return None;
        }
        // (a dim the compile fixes, `shapes: { xs: [2, 5, 4] }`, is still a run-time loop with
        // a constant bound: never unrolled)
        f.syms.get(&id).map(|d| self.g.env.dim(d))
    }

    pub(super) fn stmt(&mut self, s: &Stmt, f: &mut Frame) {
        match s {
            Stmt::Input { name, ty, span } => self.input_stmt(name, ty, *span, f),
            Stmt::Param {
                name,
                ty,
                init,
                span,
                buffer,
            } => self.param_stmt(name, ty, init.as_ref(), *span, *buffer, f),
            Stmt::Update { name, expr } => self.update_stmt(name, expr, f),
            Stmt::Const {
                name,
                dtype,
                value,
                span,
            } => self.const_stmt(name, dtype.as_ref(), value, *span, f),
            Stmt::Let { pat, expr } => self.let_stmt(pat, expr, f),
            Stmt::Output { name, expr } => self.output_stmt(name, expr.as_ref(), f),
            Stmt::If { cond, then, els } => match self.eval(cond, f, None) {
                Value::Hyper(HVal::Bool(true)) | Value::Const(HVal::Bool(true), _) => {
                    self.exec(then, f)
                }
                Value::Hyper(HVal::Bool(false)) | Value::Const(HVal::Bool(false), _) => {
                    self.exec(els, f)
                }
                Value::Hyper(v) | Value::Const(v, _) => self.error(
                    cond.span(),
                    format!(
                        "an `if` condition must be a compile-time bool or a scalar `bool` tensor, found {}",
                        v.kind()
                    ),
                ),
                // an input baked in with `constants:`: known at compile time
                Value::Tensor(c) => match self.g.nodes[c].op {
                    Op::Const(Scalar::Bool(true)) => self.exec(then, f),
                    Op::Const(Scalar::Bool(false)) => self.exec(els, f),
                    _ => self.runtime_if(c, cond, then, els, f),
                },
                Value::Poison => {}
                Value::Inst(_) | Value::Multi(_) => self.error(
                    cond.span(),
                    "an `if` condition must be a compile-time bool or a scalar `bool` tensor, found a model",
                ),
            },
            Stmt::For { var, iter, body } if self.scan_bound(iter, f).is_some() => {
                let Some(d) = self.scan_bound(iter, f) else {
                    return;
                };
                if !self.opts.dynamic_control_flow {
                    if let Dim::Known(k) = d {
                        self.unrolled_scan(var, k, iter.span(), body, s, f);
                        return;
                    }
                    self.error(
                        iter.span(),
                        "this `for` runs over a symbolic dim, a run-time trip count, and the model is compiled with `dynamic_control_flow: false`; loop over a compile-time range, or allow run-time loops with `dynamic_control_flow: true`",
                    );
                    return;
                }
                self.runtime_loop(
                    iter.span(),
                    Some(var),
                    loops::Bound::Upto(d),
                    None,
                    body,
                    f,
                );
            }
            Stmt::While {
                cond,
                max_steps,
                body,
                span,
            } => {
                let max = match max_steps {
                    None => None,
                    Some(e) => match self.eval_hyper(e, f) {
                        Some(HVal::Int(n)) if n >= 0 => Some(n as u64),
                        Some(v) => {
                            self.error(
                                e.span(),
                                format!("`max_steps` is a non-negative integer, found {}", hval_text(&v)),
                            );
                            return;
                        }
                        None => return,
                    },
                };
                if self.opts.dynamic_control_flow {
                    self.runtime_loop(*span, None, loops::Bound::While(cond), max, body, f);
                } else {
                    self.unrolled_while(cond, max, body, *span, s, f);
                }
            }
            Stmt::Stack { name, index, expr } => self.stack_stmt(name, index, expr, f),
            Stmt::For { var, iter, body } => match self.eval_hyper(iter, f) {
                Some(HVal::List(items)) if items.len() > MAX_UNROLL => self.error(
                    iter.span(),
                    format!(
                        "`for` would unroll {} iterations; at most {MAX_UNROLL} are allowed",
                        items.len()
                    ),
                ),
                Some(HVal::List(items)) => {
                    for it in items {
                        if !self.step(s) {
                            break;
                        }
                        f.vars.insert(var.to_string(), Value::Hyper(it));
                        self.exec(body, f);
                    }
                }
                Some(v) => self.error(
                    iter.span(),
                    format!(
                        "`for` iterates over a compile-time list or range, found {}",
                        v.kind()
                    ),
                ),
                None => {}
            },
            Stmt::Loss { expr, span } => self.loss_stmt(expr, *span, f),
            Stmt::Regularize {
                kind,
                coef,
                glob,
                span,
            } => self.regularize_stmt(kind, coef, glob, *span, f),
        }
    }

    /// `input x: T[dims];`: a model input at top level (with the `shapes:` / `types:` /
    /// `constants:` overrides of the compile options), a `Boundary` over the bound argument
    /// in a submodel.
    fn input_stmt(&mut self, name: &Ident, ty: &TypeDecl, span: Span, f: &mut Frame) {
        if !self.declare(f, name, "input") {
            return;
        }
        // until the input is made: uses of a failed declaration stay silent
        f.vars.insert(name.to_string(), Value::Poison);
        // each input's `...` is its own: inputs of different ranks may meet by broadcasting
        f.rest = None;
        let Some(dt) = self.dtype_decl(ty) else {
            return;
        };
        let n = name.to_string();
        if let Some((args, _)) = &f.sub {
            let Some(&arg) = args.get(&n) else { return };
            let mut head = Vec::new();
            let Some(pattern) =
                self.shape_from_decl(ty.shape.as_ref(), f, false, &n, Some(&mut head))
            else {
                f.vars.insert(n, Value::Poison);
                return;
            };
            let at = f.arg_spans.get(&n).copied().unwrap_or(span);
            let id = self.node(Op::Boundary(pattern), vec![arg], at, f);
            if !head.is_empty() {
                self.g.boundary_heads.insert(id, head);
            }
            self.g.nodes[id].label = Some(format!("`{}` input `{n}`", f.model));
            self.g.nodes[id].dtype = dt.map(DT::Known);
            f.vars.insert(n, Value::Tensor(id));
        } else {
            self.top_input(name, ty, dt, span, f);
        }
    }

    /// A top-level `input`: a baked-in constant, or an `Input` node with the overrides applied.
    fn top_input(
        &mut self,
        name: &Ident,
        ty: &TypeDecl,
        dt: Option<DType>,
        span: Span,
        f: &mut Frame,
    ) {
        let n = name.to_string();
        if let Some((value, csp)) = self.opts.constants.get(&n) {
            if ty.shape.as_ref().is_some_and(|d| !d.dims.is_empty()) {
                self.errors.push(err(
                    *csp,
                    format!("`constants:` bakes in scalars; input `{n}` is not a scalar"),
                ));
                return;
            }
            let dtype = self
                .opts
                .types
                .get(&n)
                .map(|t| t.0)
                .or(dt)
                .unwrap_or(self.opts.default_dtype);
            let id = self.node(Op::Const(*value), vec![], span, f);
            self.g.nodes[id].label = Some(n.clone());
            self.g.nodes[id].dtype = Some(DT::Known(dtype));
            f.vars.insert(n, Value::Tensor(id));
            return;
        }
        // top level: apply `shapes:` / `types:` overrides
        let mut decl = ty.shape.clone();
        if !self.shape_override(&n, &mut decl, f) {
            return;
        }
        let dt = match self.opts.types.get(&n) {
            Some((t, _)) => Some(*t),
            None => dt,
        };
        let Some(shape) = self.shape_from_decl(decl.as_ref(), f, true, &n, None) else {
            return;
        };
        let idx = self.g.inputs.len();
        let id = self.node(Op::Input(idx), vec![], span, f);
        self.g.nodes[id].label = Some(n.clone());
        self.g.nodes[id].shape = Some(shape);
        self.g.nodes[id].dtype = Some(DT::Known(dt.unwrap_or(self.opts.default_dtype)));
        self.g.inputs.push(InputInfo {
            name: n.clone(),
            node: id,
            span: name.span(),
        });
        f.vars.insert(n, Value::Tensor(id));
    }

    /// Applies the `shapes:` override of input `n` (if any) to its declared shape; `false`
    /// after an error.
    fn shape_override(&mut self, n: &str, decl: &mut Option<ShapeDecl>, f: &mut Frame) -> bool {
        if let Some((over, osp)) = self.opts.shapes.get(n) {
            match decl {
                Some(d) if d.dims.iter().any(|x| matches!(x, DimDecl::Ellipsis(_))) => {
                    // `...` takes the override's leading dims
                    let tail = d.dims.len() - 1;
                    if over.len() < tail {
                        self.errors.push(err(*osp, format!("`shapes:` gives `{n}` rank {}, but it is declared with at least {tail} dims", over.len())));
                        return false;
                    }
                    let lead = over.len() - tail;
                    let mut dims: Vec<DimDecl> = over[..lead]
                        .iter()
                        .map(|o| match o {
                            Some(k) => DimDecl::Lit(*k),
                            None => DimDecl::Any,
                        })
                        .collect();
                    dims.extend(d.dims[1..].iter().cloned());
                    d.dims = dims;
                }
                Some(d) if d.dims.len() == over.len() => {}
                Some(d) => {
                    self.errors.push(err(
                        *osp,
                        format!(
                            "`shapes:` gives `{n}` rank {}, but it is declared with rank {}",
                            over.len(),
                            d.dims.len()
                        ),
                    ));
                    return false;
                }
                None => {
                    self.errors.push(err(
                        *osp,
                        format!("`shapes:` gives `{n}` a shape, but it is declared as a scalar"),
                    ));
                    return false;
                }
            }
            if let Some(d) = decl {
                for (i, o) in over.iter().enumerate() {
                    let Some(k) = o else { continue };
                    match &d.dims[i] {
                        DimDecl::Lit(m) if m != k => {
                            self.errors.push(err(*osp, format!("`shapes:` sets dim {i} of `{n}` to {k}, but it is declared as {m}")));
                            return false;
                        }
                        DimDecl::Sym(id) => {
                            let s = id.to_string();
                            match f.syms.get(&s) {
                                Some(Dim::Known(prev)) if prev != k => {
                                    self.errors.push(err(*osp, format!("`shapes:` sets {s} = {k} here, but {s} = {prev} elsewhere")));
                                    return false;
                                }
                                _ => {
                                    f.syms.insert(s, Dim::Known(*k));
                                }
                            }
                        }
                        _ => d.dims[i] = DimDecl::Lit(*k),
                    }
                }
            }
        }
        true
    }

    /// `param w: T[dims] = init;`: created once per instance (a second call reuses it).
    fn param_stmt(
        &mut self,
        name: &Ident,
        ty: &TypeDecl,
        init: Option<&Expr>,
        span: Span,
        buffer: bool,
        f: &mut Frame,
    ) {
        if !self.declare(f, name, if buffer { "buffer" } else { "param" }) {
            return;
        }
        f.vars.insert(name.to_string(), Value::Poison);
        let Some(dt) = self.dtype_decl(ty) else {
            return;
        };
        let n = name.to_string();
        let Some(shape) = self.shape_from_decl(ty.shape.as_ref(), f, false, &n, None) else {
            f.vars.insert(n, Value::Poison);
            return;
        };
        let inst = f.sub.as_ref().map(|(_, i)| *i);
        if let Some(i) = inst {
            if let Some(&existing) = self.insts[i].params.get(&n) {
                if let Some(k) = self.g.params.iter().position(|p| p.node == existing) {
                    f.params_here.insert(n.clone(), k);
                }
                let id = self.node(Op::Boundary(shape), vec![existing], span, f);
                self.g.nodes[id].dtype = dt.map(DT::Known);
                f.vars.insert(n, Value::Tensor(id));
                return;
            }
        }
        let init = match init {
            None => Init::FanIn(None),
            Some(e) => match self.parse_init(e, f) {
                Some(i) => i,
                None => return,
            },
        };
        let mut path = f.path.clone();
        path.push(n.clone());
        let idx = self.g.params.len();
        let id = self.node(Op::Param(idx), vec![], span, f);
        self.g.nodes[id].label = Some(path.join("."));
        self.g.nodes[id].shape = Some(shape);
        let dtv = match dt {
            Some(t) => DT::Known(t),
            None => self.g.env.new_dt_var(),
        };
        self.g.nodes[id].dtype = Some(dtv);
        self.g.params.push(ParamInfo {
            path,
            node: id,
            init,
            span: name.span(),
            buffer,
        });
        f.params_here.insert(n.clone(), idx);
        if let Some(i) = inst {
            self.insts[i].params.insert(n.clone(), id);
        }
        f.vars.insert(n, Value::Tensor(id));
    }

    /// `update name = expr;`: buffer `name` of this model instance holds `expr` after a
    /// training-mode call (computed from the values before the call); an evaluation-mode call
    /// leaves it. Lowered as a hidden output (`__upd_<param>`): `phi(training, expr, buffer)`
    /// (under an enclosing run-time `if`, its guard joins the condition), which the generated
    /// entry point writes back into the params after a successful training call. A later
    /// `update` of the same buffer takes over where it runs.
    fn update_stmt(&mut self, name: &Ident, expr: &Expr, f: &mut Frame) {
        let n = name.to_string();
        let idx = match f.params_here.get(&n) {
            Some(&k) if self.g.params[k].buffer => k,
            Some(_) => {
                self.error(
                    name.span(),
                    format!("`update {n}`: `{n}` is a `param` of model `{}`, not a `buffer`; params change through their gradients (an optimizer), only a `buffer` is updated by the model itself", f.model),
                );
                return;
            }
            None => {
                let mut bufs: Vec<&String> = f
                    .params_here
                    .iter()
                    .filter(|e| self.g.params[*e.1].buffer)
                    .map(|(b, _)| b)
                    .collect();
                bufs.sort();
                let list = if bufs.is_empty() {
                    "it declares none".to_string()
                } else {
                    format!(
                        "its buffers: {}",
                        bufs.iter()
                            .map(|b| format!("`{b}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.error(
                    name.span(),
                    format!("`update {n}`: model `{}` has no buffer `{n}` declared before this statement ({list}); declare it with `buffer {n}: T[dims] = init;`", f.model),
                );
                return;
            }
        };
        if self.region.is_some() {
            self.error(
                name.span(),
                format!("`update {n}` inside a run-time loop: update the buffer after the loop"),
            );
            return;
        }
        let span = expr.span();
        let v = self.eval(expr, f, None);
        let Some(e) = self.tensor_of(v, span, f) else {
            return;
        };
        let pnode = self.g.params[idx].node;
        let shape = self.g.nodes[pnode]
            .shape
            .clone()
            .unwrap_or_else(Shape::scalar);
        let dt = self.g.nodes[pnode].dtype;
        let outer = self.guard;
        self.guard = None;
        // the new value, checked against the buffer's declared shape and dtype
        let b = self.node(Op::Boundary(shape), vec![e], span, f);
        self.g.nodes[b].label = Some(format!(
            "`update {n}` of `{}`'s buffer `{}`",
            f.model,
            self.g.params[idx].dotted()
        ));
        self.g.nodes[b].dtype = dt;
        self.g.nodes[b].guard = outer;
        let m = self.mode_node(span, f);
        let t = self.node(Op::Prim(prims::Prim::Truth), vec![m], span, f);
        let gt = match outer {
            None => t,
            Some(o) => {
                let no = self.node(Op::Const(Scalar::Bool(false)), vec![], span, f);
                self.g.nodes[no].dtype = Some(DT::Known(DType::Bool));
                self.node(Op::Prim(prims::Prim::Phi), vec![o, o, t, no], span, f)
            }
        };
        let ge = self.node(Op::Prim(prims::Prim::Not), vec![gt], span, f);
        let prev = self.updates.get(&idx).map(|u| u.0).unwrap_or(pnode);
        let v = self.node(Op::Prim(prims::Prim::Phi), vec![gt, ge, b, prev], span, f);
        self.g.nodes[v].label = Some(format!("update {}", self.g.params[idx].dotted()));
        self.guard = outer;
        self.updates.insert(idx, (v, span));
    }

    /// `const c: T = value;`: a compile-time number or bool.
    fn const_stmt(
        &mut self,
        name: &Ident,
        dtype: Option<&Ident>,
        value: &Expr,
        span: Span,
        f: &mut Frame,
    ) {
        let dt = match dtype {
            None => None,
            Some(id) => match DType::parse(&id.to_string()) {
                Some(t) => Some(t),
                None => {
                    self.error(id.span(), format!("unknown dtype `{id}`"));
                    return;
                }
            },
        };
        let _ = span;
        match self.eval_hyper(value, f) {
            Some(v @ (HVal::Int(_) | HVal::Float(_) | HVal::Bool(_))) => {
                f.vars.insert(name.to_string(), Value::Const(v, dt));
            }
            Some(v) => self.error(
                value.span(),
                format!("a `const` must be a number or bool, found {}", v.kind()),
            ),
            None => {
                f.vars.insert(name.to_string(), Value::Poison);
            }
        }
    }

    /// `let x = expr;` and `let (a, b) = Model(..)(x);`.
    fn let_stmt(&mut self, pat: &Pat, expr: &Expr, f: &mut Frame) {
        let hint = match pat {
            Pat::Ident(i) => Some(i.clone()),
            _ => None,
        };
        let v = self.eval(expr, f, hint.as_ref());
        match pat {
            Pat::Ident(i) => {
                if let Value::Tensor(id) = v {
                    if self.g.nodes[id].label.is_none() {
                        self.g.nodes[id].label = Some(scoped(&f.path, &i.to_string()));
                    }
                }
                f.vars.insert(i.to_string(), v);
            }
            Pat::Tuple(ids, sp) => {
                match v {
                    Value::Multi(outs) => {
                        if outs.len() != ids.len() {
                            self.error(
                                *sp,
                                format!(
                            "this pattern binds {} names, but the model has {} outputs ({})",
                            ids.len(),
                            outs.len(),
                            outs.iter().map(|o| o.0.as_str()).collect::<Vec<_>>().join(", ")
                        ),
                            );
                            for i in ids {
                                f.vars.insert(i.to_string(), Value::Poison);
                            }
                        } else {
                            for (i, (_, id)) in ids.iter().zip(outs) {
                                f.vars.insert(i.to_string(), Value::Tensor(id));
                            }
                        }
                    }
                    Value::Poison => {
                        for i in ids {
                            f.vars.insert(i.to_string(), Value::Poison);
                        }
                    }
                    _ => {
                        self.error(
                            *sp,
                            "only a call of a model with several outputs can be destructured",
                        );
                        for i in ids {
                            f.vars.insert(i.to_string(), Value::Poison);
                        }
                    }
                }
            }
        }
    }

    /// `output y = expr;` / `output y;`.
    fn output_stmt(&mut self, name: &Ident, expr: Option<&Expr>, f: &mut Frame) {
        if self.guard != f.guard {
            self.error(
                name.span(),
                format!("`output {name}` inside a run-time `if`: an output exists whatever branch runs; bind `{name}` in both branches (`let {name} = ...;`) and write `output {name} = {name};` after the `if`"),
            );
            return;
        }
        if self.region != f.region {
            self.error(
                name.span(),
                format!("`output {name}` inside a run-time loop: an output is one value per call; carry `{name}` through the loop (bind it before the loop and rebind it in the body) and write `output {name} = {name};` after the loop"),
            );
            return;
        }
        if !self.declare(f, name, "output") {
            return;
        }
        let n = name.to_string();
        let v = match expr {
            Some(e) => self.eval(e, f, None),
            None => match f.vars.get(&n) {
                Some(v) => v.clone(),
                None => {
                    self.error(name.span(), format!("`output {n};` names no binding; write `output {n} = <expr>;` or bind `{n}` first"));
                    Value::Poison
                }
            },
        };
        let sp = expr.as_ref().map(|e| e.span()).unwrap_or(name.span());
        let Some(id) = self.tensor_of(v, sp, f) else {
            return;
        };
        if self.g.nodes[id].label.is_none() {
            self.g.nodes[id].label = Some(scoped(&f.path, &n));
        }
        f.vars.insert(n.clone(), Value::Tensor(id));
        if f.sub.is_some() {
            f.outputs.push((n, id));
        } else {
            self.g.outputs.push(OutputInfo { name: n, node: id });
        }
    }

    /// `loss expr;` in a `train` model.
    fn loss_stmt(&mut self, expr: &Expr, span: Span, f: &mut Frame) {
        if f.sub.is_some() || !f.train {
            self.error(
                span,
                "`loss` statements belong in the body of a `train` model",
            );
            return;
        }
        let v = self.eval(expr, f, None);
        if let Some(id) = self.tensor_of(v, span, f) {
            self.losses.push((id, span));
        }
    }

    /// `regularize l1|l2(coef, "glob");` in a `train` model.
    fn regularize_stmt(
        &mut self,
        kind: &Ident,
        coef: &Expr,
        glob: &syn::LitStr,
        span: Span,
        f: &mut Frame,
    ) {
        if f.sub.is_some() || !f.train {
            self.error(
                span,
                "`regularize` statements belong in the body of a `train` model",
            );
            return;
        }
        if kind != "l1" && kind != "l2" {
            self.error(
                kind.span(),
                format!("unknown regularizer `{kind}`; expected `l1` or `l2`"),
            );
            return;
        }
        match self.eval_hyper(coef, f) {
            Some(HVal::Float(c)) => self.regs.push((kind.clone(), c, glob.clone())),
            Some(HVal::Int(c)) => self.regs.push((kind.clone(), c as f64, glob.clone())),
            Some(v) => self.error(
                coef.span(),
                format!(
                    "a regularization coefficient is a number, found {}",
                    v.kind()
                ),
            ),
            None => {}
        }
    }
}
