//! Calls: a call expression resolved to a primitive (attributes checked against its DSL
//! signature, then built by its family in `prims`) or to a model.

use super::*;

impl Flattener<'_> {
    pub(super) fn eval_call(
        &mut self,
        func: &Expr,
        args: Vec<&Expr>,
        recv: Option<&Expr>,
        span: Span,
        f: &mut Frame,
        hint: Option<&Ident>,
    ) -> Value {
        match func {
            Expr::Path(p) if p.path.get_ident().is_some() => {
                let id = p
                    .path
                    .get_ident()
                    .cloned()
                    .unwrap_or_else(|| Ident::new("_", p.span()));
                self.eval_named_call(&id, recv, args, span, f, hint)
            }
            Expr::Path(p) => {
                // a path to a model in another module or crate
                let key = path_key(&p.path);
                match self.find_def(&key, f) {
                    Some(entry) => self.model_call(entry, p.span(), args, span, f, hint),
                    None if f.local => {
                        if !self.missing.iter().any(|m| path_key(m) == key) {
                            self.missing.push(p.path.clone());
                        }
                        Value::Poison
                    }
                    None => {
                        self.unknown_in_carried(&key, p.span(), f);
                        Value::Poison
                    }
                }
            }
            Expr::Call(_) | Expr::Paren(_) => {
                let v = self.eval(func, f, hint);
                match v {
                    Value::Inst(i) => self.apply_args(i, args, span, f),
                    Value::Poison => Value::Poison,
                    _ => {
                        self.error(
                            func.span(),
                            "this is not a model instance and cannot be called",
                        );
                        Value::Poison
                    }
                }
            }
            other => {
                self.error(
                    other.span(),
                    "only functions, models and model instances can be called",
                );
                Value::Poison
            }
        }
    }

    pub(super) fn eval_named_call(
        &mut self,
        id: &Ident,
        recv: Option<&Expr>,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
        hint: Option<&Ident>,
    ) -> Value {
        let n = id.to_string();
        // an instance or a function passed as a value
        match f
            .vars
            .get(&n)
            .cloned()
            .or_else(|| f.hyper.get(&n).cloned().map(Value::Hyper))
        {
            Some(Value::Inst(i)) if recv.is_none() => return self.apply_args(i, args, span, f),
            Some(Value::Hyper(HVal::Func(fname))) if fname != n => {
                let fid = Ident::new(&fname, id.span());
                return self.eval_named_call(&fid, recv, args, span, f, hint);
            }
            Some(Value::Poison) => return Value::Poison,
            _ => {}
        }
        if n == "len" && recv.is_none() && args.len() == 1 {
            return match self.eval_hyper(args[0], f) {
                Some(HVal::List(xs)) => Value::Hyper(HVal::Int(xs.len() as i64)),
                Some(HVal::Str(s)) => Value::Hyper(HVal::Int(s.len() as i64)),
                Some(v) => {
                    self.error(
                        args[0].span(),
                        format!("`len` takes a compile-time list, found {}", v.kind()),
                    );
                    Value::Poison
                }
                None => Value::Poison,
            };
        }
        if (n == "pair" || n == "triple") && recv.is_none() && args.len() == 1 {
            // PyTorch's `_pair` / `_triple`: an int for every spatial dim, or a tuple of them
            let k = if n == "pair" { 2 } else { 3 };
            return match self.eval_hyper(args[0], f) {
                Some(HVal::Int(i)) => Value::Hyper(HVal::List(vec![HVal::Int(i); k])),
                Some(HVal::List(xs))
                    if xs.len() == k && xs.iter().all(|x| matches!(x, HVal::Int(_))) =>
                {
                    Value::Hyper(HVal::List(xs))
                }
                Some(v) => {
                    self.error(
                        args[0].span(),
                        format!(
                            "`{n}` takes an int or a tuple of {k} ints, found {}",
                            v.kind()
                        ),
                    );
                    Value::Poison
                }
                None => Value::Poison,
            };
        }
        if let Some(fold) = const_math(&n) {
            // `sqrt(d_model / n_heads)`: a math function of a compile-time int is a float
            // constant (an int tensor has no such primitive); of a float it stays the primitive
            // over a constant, which `constant_folding` evaluates or not
            let one: Vec<&Expr> = recv.into_iter().chain(args.iter().copied()).collect();
            if let [arg] = one[..] {
                if !matches!(arg, Expr::Assign(_)) {
                    let v = self.eval(arg, f, None);
                    let num = match &v {
                        Value::Hyper(HVal::Int(i)) => Some(*i as f64),
                        _ => None,
                    };
                    if let Some(x) = num {
                        let y = fold(x);
                        if !y.is_finite() {
                            self.error(span, format!("`{n}({x})` is not a finite number"));
                            return Value::Poison;
                        }
                        return Value::Hyper(HVal::Float(y));
                    }
                    let Some(a) = self.tensor_of(v, arg.span(), f) else {
                        return Value::Poison;
                    };
                    return match prims::build(&n, &[], 1) {
                        Ok(p) => Value::Tensor(self.node(Op::Prim(p), vec![a], span, f)),
                        Err(m) => {
                            self.error(span, m);
                            Value::Poison
                        }
                    };
                }
            }
        }
        if let Some(sig) = prims::lookup(&n) {
            return self.prim_call(&n, sig, id.span(), recv, args, span, f);
        }
        if let Some(entry) = self
            .find_def(&n, f)
            .or_else(|| self.passed.get(&n).cloned())
        {
            let mut all: Vec<&Expr> = Vec::new();
            all.extend(recv);
            all.extend(args);
            return self.model_call(entry, id.span(), all, span, f, hint);
        }
        if n.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && recv.is_none() {
            if !f.local {
                self.unknown_in_carried(&n, id.span(), f);
                return Value::Poison;
            }
            // maybe a model from another module (imported with `use`): fetched through its carrier
            let path: syn::Path = id.clone().into();
            if !self.missing.iter().any(|m| path_key(m) == n) {
                self.missing.push(path);
            }
            return Value::Poison;
        }
        // the primitives' names first, then the library's
        let mut known: Vec<&str> = Vec::new();
        for name in prims::names() {
            known.push(name);
        }
        known.extend(self.library.names());
        let near = closest(&n, known.into_iter());
        self.error(
            id.span(),
            format!(
                "unknown function `{n}`{}",
                near.map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default()
            ),
        );
        Value::Poison
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn prim_call(
        &mut self,
        name: &str,
        sig: prims::Sig,
        name_span: Span,
        recv: Option<&Expr>,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
    ) -> Value {
        let mut inputs: Vec<Option<NodeId>> = vec![None; sig.inputs.len()];
        let mut extra_inputs: Vec<NodeId> = Vec::new();
        let mut attrs: Vec<(&str, AttrVal)> = Vec::new();
        if name == "slice" {
            self.pending_bounds.clear();
        }
        let mut pos = 0usize;
        let mut attr_pos = 0usize;
        let mut poisoned = false;
        let mut all: Vec<(Option<Ident>, &Expr)> = Vec::new();
        if let Some(r) = recv {
            all.push((None, r));
        }
        for a in &args {
            match a {
                Expr::Assign(asg) => match &*asg.left {
                    Expr::Path(p) if p.path.get_ident().is_some() => {
                        all.push((p.path.get_ident().cloned(), &asg.right));
                    }
                    other => {
                        self.error(other.span(), "a named argument is `name = value`");
                        poisoned = true;
                    }
                },
                other => all.push((None, other)),
            }
        }
        for (an, a) in all {
            match an {
                None => {
                    if name == "slice" && pos >= 1 {
                        self.slice_pos = attrs.iter().filter(|(k, _)| *k == "#slice").count();
                        match self.slice_arg(a, f) {
                            Some(s) => attrs.push(("#slice", AttrVal::Slice(s))),
                            None => poisoned = true,
                        }
                        continue;
                    }
                    if sig.variadic && (name == "concat" || name == "stack") {
                        let v = self.eval(a, f, None);
                        match self.tensor_of(v, a.span(), f) {
                            Some(id) => extra_inputs.push(id),
                            None => poisoned = true,
                        }
                        continue;
                    }
                    if pos < sig.inputs.len() {
                        let v = self.eval(a, f, None);
                        match self.tensor_of(v, a.span(), f) {
                            Some(id) => inputs[pos] = Some(id),
                            None => poisoned = true,
                        }
                        pos += 1;
                    } else if attr_pos < sig.attrs.len() {
                        match self.eval_hyper(a, f) {
                            Some(h) => attrs.push((sig.attrs[attr_pos], h.to_attr())),
                            None => poisoned = true,
                        }
                        attr_pos += 1;
                    } else {
                        self.error(a.span(), format!("too many arguments for `{name}`"));
                        poisoned = true;
                    }
                }
                Some(k) => {
                    let ks = k.to_string();
                    // an input named `x?` is optional (`attention`'s `mask`)
                    if let Some(i) = sig
                        .inputs
                        .iter()
                        .position(|x| x.trim_end_matches('?') == ks)
                    {
                        let v = self.eval(a, f, None);
                        match self.tensor_of(v, a.span(), f) {
                            Some(id) => inputs[i] = Some(id),
                            None => poisoned = true,
                        }
                    } else if let Some(&an) = sig.attrs.iter().find(|x| **x == ks) {
                        match self.eval_hyper(a, f) {
                            Some(h) => attrs.push((an, h.to_attr())),
                            None => poisoned = true,
                        }
                    } else {
                        let mut expected: Vec<&str> = sig.inputs.to_vec();
                        expected.extend(sig.attrs);
                        self.error(
                            k.span(),
                            format!(
                                "`{name}` has no argument `{ks}`; it takes: {}",
                                expected.join(", ")
                            ),
                        );
                        poisoned = true;
                    }
                }
            }
        }
        if poisoned {
            return Value::Poison;
        }
        let mut node_args: Vec<NodeId> = Vec::new();
        for (i, slot) in inputs.iter().enumerate() {
            match slot {
                Some(id) => node_args.push(*id),
                None if sig.inputs[i].ends_with('?') => {}
                None => {
                    self.error(
                        span,
                        format!("`{name}` is missing its input `{}`", sig.inputs[i]),
                    );
                    return Value::Poison;
                }
            }
        }
        node_args.extend(extra_inputs);
        match prims::build(name, &attrs, node_args.len()) {
            // random ops (`dropout`): the call's mode as an operand, and the op's id in the
            // model (its masks differ from every other random op's)
            Ok(prims::Prim::Dropout { p, .. }) => {
                let op = self
                    .g
                    .nodes
                    .iter()
                    .filter(|n| matches!(&n.op, Op::Prim(p) if p.uses_seed()))
                    .count() as u32;
                let m = self.mode_node(span, f);
                node_args.push(m);
                Value::Tensor(self.node(
                    Op::Prim(prims::Prim::Dropout { p, op }),
                    node_args,
                    span,
                    f,
                ))
            }
            // `attention` with dropout on the weights: a random op too (the mode last)
            Ok(prims::Prim::Attention {
                causal,
                scale,
                part,
                dropout,
                ..
            }) if dropout > 0.0 => {
                let op = self
                    .g
                    .nodes
                    .iter()
                    .filter(|n| matches!(&n.op, Op::Prim(p) if p.uses_seed()))
                    .count() as u32;
                let m = self.mode_node(span, f);
                node_args.push(m);
                let p = prims::Prim::Attention {
                    causal,
                    scale,
                    part,
                    dropout,
                    op,
                };
                Value::Tensor(self.node(Op::Prim(p), node_args, span, f))
            }
            Ok(p) => {
                let _ = name_span;
                Value::Tensor(self.node(Op::Prim(p), node_args, span, f))
            }
            Err(m) => {
                self.error(span, m);
                Value::Poison
            }
        }
    }
}
