//! Instances: model constructors (hyperparameters bound), instance naming, and applying an
//! instance to arguments (the submodel's body flattened once per call, its params once per
//! instance, its inputs behind `Boundary` nodes).

use super::*;

impl Flattener<'_> {
    /// A call of a model by name: a constructor when the model has hyperparameters and is
    /// CamelCase; a direct application otherwise (snake_case models mix hyperparameters, by
    /// name, and terminals).
    pub(super) fn model_call(
        &mut self,
        entry: Rc<DefEntry>,
        name_span: Span,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
        hint: Option<&Ident>,
    ) -> Value {
        let def_name = entry.def.name.to_string();
        let camel = def_name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase());
        if camel && !entry.def.hypers.is_empty() {
            // constructor
            let Some(hyper) = self.bind_hypers(
                &entry,
                args.iter()
                    .map(|a| (None::<()>, *a))
                    .map(|(_, a)| a)
                    .collect(),
                span,
                f,
            ) else {
                return Value::Poison;
            };
            let i = self.new_inst(entry, hyper, hint, f, name_span);
            return Value::Inst(i);
        }
        // direct application: split named hyperparameters from terminals
        let mut hargs = Vec::new();
        let mut targs = Vec::new();
        for a in args {
            if let Expr::Assign(asg) = a {
                if let Expr::Path(p) = &*asg.left {
                    if let Some(id) = p.path.get_ident() {
                        if entry.def.hypers.iter().any(|h| h.name == *id) {
                            hargs.push(a);
                            continue;
                        }
                    }
                }
            }
            targs.push(a);
        }
        let Some(hyper) = self.bind_hypers(&entry, hargs, span, f) else {
            return Value::Poison;
        };
        let has_inputs = entry
            .def
            .body
            .iter()
            .any(|s| matches!(s, Stmt::Input { .. }));
        let i = self.new_inst(entry, hyper, hint, f, name_span);
        if camel && targs.is_empty() && has_inputs {
            // `let block = Block();` of a model without hyperparameters: an instance, applied
            // later (`block(x)`), like `Linear(256)`
            return Value::Inst(i);
        }
        self.apply_args(i, targs, span, f)
    }

    pub(super) fn bind_hypers(
        &mut self,
        entry: &Rc<DefEntry>,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
    ) -> Option<HEnv> {
        let def = &entry.def;
        let mut out = HEnv::new();
        let mut ok = true;
        let mut pos = 0;
        let names: Vec<String> = def.hypers.iter().map(|h| h.name.to_string()).collect();
        for a in args {
            let (key, val, ksp) = match a {
                Expr::Assign(asg) => match &*asg.left {
                    Expr::Path(p) if p.path.get_ident().is_some() => {
                        let id = p.path.get_ident().cloned();
                        (id.map(|i| i.to_string()), &*asg.right, asg.left.span())
                    }
                    other => {
                        self.error(other.span(), "a named argument is `name = value`");
                        ok = false;
                        continue;
                    }
                },
                other => (None, other, other.span()),
            };
            let key = match key {
                Some(k) => {
                    if !names.contains(&k) {
                        self.error(
                            ksp,
                            format!(
                                "`{}` has no hyperparameter `{k}`; its hyperparameters are: {}",
                                def.name,
                                if names.is_empty() {
                                    "(none)".to_string()
                                } else {
                                    names.join(", ")
                                }
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    k
                }
                None => {
                    if pos >= names.len() {
                        self.error(
                            ksp,
                            format!(
                                "`{}` takes {} hyperparameter(s) ({}), but more were given",
                                def.name,
                                names.len(),
                                names.join(", ")
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    pos += 1;
                    names[pos - 1].clone()
                }
            };
            let Some(v) = self.eval_hyper(val, f) else {
                ok = false;
                continue;
            };
            let ty = def
                .hypers
                .iter()
                .find(|h| h.name == key)
                .map(|h| h.ty.to_string())
                .unwrap_or_default();
            if !v.fits(&ty) {
                self.error(
                    val.span(),
                    format!(
                        "hyperparameter `{key}` of `{}` is {ty}, but a {} was given",
                        def.name,
                        v.kind()
                    ),
                );
                ok = false;
                continue;
            }
            if out.insert(key.clone(), v).is_some() {
                self.error(ksp, format!("hyperparameter `{key}` is given twice"));
                ok = false;
            }
        }
        for h in &def.hypers {
            let k = h.name.to_string();
            if out.contains_key(&k) {
                continue;
            }
            match &h.default {
                Some(d) => {
                    let mut inner = self.frame(entry, HEnv::new(), vec![], None);
                    match self.eval_hyper(d, &mut inner) {
                        Some(v) => {
                            out.insert(k, v);
                        }
                        None => ok = false,
                    }
                }
                None => {
                    // after a misnamed or mistyped argument, that argument is the likely fix
                    if ok {
                        self.error(span, format!("`{}` needs hyperparameter `{k}`", def.name));
                    }
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    pub(super) fn new_inst(
        &mut self,
        entry: Rc<DefEntry>,
        hyper: HEnv,
        hint: Option<&Ident>,
        f: &mut Frame,
        _span: Span,
    ) -> usize {
        // inside an instance's body: the k-th instance this call creates is the k-th instance of
        // the first call (the body's control flow depends only on the instance's hyperparameters,
        // so it creates the same instances in the same order every call). Its hyperparameters
        // are the first call's: they can differ only in symbolic dims (fresh unification
        // variables per call), which the shared instance's dims then unify with.
        let owner = f.sub.as_ref().map(|(_, owner)| *owner);
        if let Some(owner) = owner {
            let k = f.created;
            f.created += 1;
            if let Some(&i) = self.insts[owner].subs.get(k) {
                if Rc::ptr_eq(&self.insts[i].entry, &entry) {
                    return i;
                }
            }
        }
        let base = match hint {
            Some(h) => h.to_string(),
            None => {
                let b = snake(&entry.def.name.to_string());
                let c = f.counters.entry(b.clone()).or_insert(0);
                let name = format!("{b}_{c}");
                *c += 1;
                name
            }
        };
        let mut path = f.path.clone();
        path.push(base.clone());
        // a re-bound `let` name (shadowing, loops) gets a numeric suffix
        let n = self.used_paths.entry(path.clone()).or_insert(0);
        if *n > 0 {
            let last = path.len() - 1;
            path[last] = format!("{base}_{n}");
        }
        *n += 1;
        self.insts.push(Inst {
            entry,
            hyper,
            path,
            params: BTreeMap::new(),
            applied: false,
            subs: Vec::new(),
        });
        let i = self.insts.len() - 1;
        if let Some(owner) = owner {
            let k = f.created - 1;
            if self.insts[owner].subs.len() == k {
                self.insts[owner].subs.push(i);
            }
        }
        i
    }

    pub(super) fn apply_args(
        &mut self,
        inst: usize,
        args: Vec<&Expr>,
        span: Span,
        f: &mut Frame,
    ) -> Value {
        let mut targs = Vec::new();
        let mut poisoned = false;
        for a in args {
            let (name, val) = match a {
                Expr::Assign(asg) => match &*asg.left {
                    Expr::Path(p) if p.path.get_ident().is_some() => {
                        let id = p
                            .path
                            .get_ident()
                            .cloned()
                            .unwrap_or_else(|| Ident::new("_", p.span()));
                        (Some((id.to_string(), id.span())), &*asg.right)
                    }
                    other => {
                        self.error(other.span(), "a named argument is `name = value`");
                        poisoned = true;
                        continue;
                    }
                },
                other => (None, other),
            };
            let v = self.eval(val, f, None);
            match self.tensor_of(v, val.span(), f) {
                Some(id) => targs.push(Arg {
                    name,
                    value: id,
                    span: val.span(),
                }),
                None => poisoned = true,
            }
        }
        if poisoned {
            return Value::Poison;
        }
        self.apply(inst, targs, span, f)
    }

    /// "`Block(width = 16)` called as `b2`": an instance's model, hyperparameters and path.
    pub(super) fn describe_call(&self, inst: usize) -> String {
        let i = &self.insts[inst];
        let def = &i.entry.def;
        let hypers: Vec<String> = def
            .hypers
            .iter()
            .filter_map(|h| {
                let k = h.name.to_string();
                i.hyper.get(&k).map(|v| format!("{k} = {}", hval_text(v)))
            })
            .collect();
        let args = if hypers.is_empty() {
            String::new()
        } else {
            format!("({})", hypers.join(", "))
        };
        format!("`{}{args}` called as `{}`", def.name, i.path.join("."))
    }

    pub(super) fn apply(
        &mut self,
        inst: usize,
        args: Vec<Arg<NodeId>>,
        span: Span,
        caller: &Frame,
    ) -> Value {
        let entry = self.insts[inst].entry.clone();
        let def_name = entry.def.name.to_string();
        if let Some(start) = self.stack.iter().position(|m| *m == def_name) {
            // the cycle only (not the physical model that reached it): compiling each model of
            // the cycle then reports the same error, which the caller shows once
            let mut chain = self.stack[start..].to_vec();
            chain.push(def_name.clone());
            // the message names the cycle: no call notes
            let calls = std::mem::take(&mut self.chain);
            self.chain_rc = None;
            self.error(
                span,
                format!(
                    "model `{def_name}` is defined recursively ({})",
                    chain.join(" -> ")
                ),
            );
            self.chain = calls;
            self.chain_rc = None;
            return Value::Poison;
        }
        let terminals = input_names(&entry.def);
        let bound = match bind_terminals(&def_name, &terminals, &args, span) {
            Ok(b) => b,
            Err(es) => {
                for e in es {
                    let sp = e.span();
                    self.error(sp, e);
                }
                return Value::Poison;
            }
        };
        let argmap: HashMap<String, NodeId> = terminals.iter().cloned().zip(bound).collect();
        let span_args: Vec<Arg<Span>> = args
            .iter()
            .map(|a| Arg {
                name: a.name.clone(),
                value: a.span,
                span: a.span,
            })
            .collect();
        let arg_spans: HashMap<String, Span> =
            match bind_terminals(&def_name, &terminals, &span_args, span) {
                Ok(sps) => terminals.iter().cloned().zip(sps).collect(),
                Err(_) => HashMap::new(),
            };
        let hyper = self.insts[inst].hyper.clone();
        let path = self.insts[inst].path.clone();
        let mut fr = self.frame(&entry, hyper, path, Some((argmap, inst)));
        fr.arg_spans = arg_spans;
        let _ = caller;
        self.insts[inst].applied = true;
        let saved = self.anchor.clone();
        let noted = self.anchor.is_none();
        if noted {
            let what = self.describe_call(inst);
            self.chain.push((span, what));
            self.chain_rc = None;
        }
        match &entry.origin {
            Origin::Library if self.anchor.is_none() => {
                self.anchor = Some((span, format!("inside library model `{def_name}`"), false));
            }
            Origin::Carried {
                krate,
                foreign: true,
            } if self.anchor.is_none() => {
                self.anchor = Some((
                    span,
                    format!("inside model `{def_name}` of crate `{krate}`"),
                    true,
                ));
            }
            _ => {}
        }
        self.stack.push(def_name.clone());
        let body = entry.def.body.clone();
        let errors_before = self.errors.len();
        self.exec(&body, &mut fr);
        self.stack.pop();
        self.anchor = saved;
        if noted {
            self.chain.pop();
            self.chain_rc = None;
        }
        match fr.outputs.len() {
            0 => {
                // (an output lost to an error inside the body is no second error)
                if entry.def.kind == ModelKind::Model && self.errors.len() == errors_before {
                    self.error(span, format!("model `{def_name}` has no output"));
                }
                Value::Poison
            }
            1 => Value::Tensor(fr.outputs[0].1),
            _ => Value::Multi(fr.outputs),
        }
    }
}
