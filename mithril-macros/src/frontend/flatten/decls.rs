//! Declarations: the shapes and dtypes `input` and `param` statements declare, and param
//! initializers.

use super::*;

impl Flattener<'_> {
    /// The shape a declaration gives (`None` after an error): symbols become the frame's
    /// dim variables, `...` its rank variable, expressions compile-time dims.
    ///
    /// With `head` (a submodel input), `...` may stand anywhere: the dims before it are moved
    /// into `head` and the returned shape is `...` followed by the dims after it (shape
    /// inference puts the head back once the argument's rank is known; see
    /// [`crate::ir::Graph::boundary_heads`]).
    pub(super) fn shape_from_decl(
        &mut self,
        decl: Option<&ShapeDecl>,
        f: &mut Frame,
        top_input: bool,
        name: &str,
        mut head: Option<&mut Vec<Dim>>,
    ) -> Option<Shape> {
        let Some(decl) = decl else {
            return Some(Shape::scalar());
        };
        let mut shape = Shape {
            rest: None,
            dims: vec![],
        };
        for (i, d) in decl.dims.iter().enumerate() {
            match d {
                DimDecl::Ellipsis(sp) => {
                    if shape.rest.is_some() {
                        self.error(*sp, "a shape has at most one `...`");
                        return None;
                    }
                    match head.as_deref_mut() {
                        Some(h) => *h = std::mem::take(&mut shape.dims),
                        None if i != 0 => {
                            self.error(*sp, "`...` may only stand first in this shape (anywhere in a submodel's input, as `[N, C, ...]`)");
                            return None;
                        }
                        None => {}
                    }
                    let r = match f.rest {
                        Some(r) => r,
                        None => {
                            let r = self.g.env.new_rest_var(format!("... of {}", f.model));
                            f.rest = Some(r);
                            r
                        }
                    };
                    shape.rest = Some(r);
                }
                DimDecl::Lit(n) => shape.dims.push(Dim::Known(*n)),
                DimDecl::Any => {
                    let v = self.g.env.new_dim_var(if top_input {
                        format!("_ (dim {i} of `{name}`)")
                    } else {
                        "_".into()
                    });
                    shape.dims.push(v)
                }
                DimDecl::Sym(id) => {
                    let s = id.to_string();
                    let d = match f.syms.get(&s) {
                        Some(d) => d.clone(),
                        None => {
                            let d = if f.sub.is_none() {
                                // a named unification variable: it may meet a constant or
                                // another symbol; what stays open becomes `Dim::Sym` at the end
                                let v = self.g.env.new_dim_var(s.clone());
                                self.g.sym_vars.push((s.clone(), v.clone()));
                                v
                            } else {
                                self.g.env.new_dim_var(format!("{s} of {}", f.model))
                            };
                            f.syms.insert(s, d.clone());
                            d
                        }
                    };
                    shape.dims.push(d);
                }
                DimDecl::Expr(e)
                    if matches!(&**e, syn::Expr::Path(p) if p.path.get_ident().is_some_and(|id| {
                        let n = id.to_string();
                        !f.vars.contains_key(&n) && !f.hyper.contains_key(&n)
                    })) =>
                {
                    let syn::Expr::Path(p) = &**e else {
                        return None;
                    };
                    let id = &p.path.segments[0].ident;
                    let upper = id.to_string().to_ascii_uppercase();
                    self.error(
                        id.span(),
                        format!("unknown dim `{id}`: a dim is an integer, an UPPER-CASE symbol (`{upper}`), `_`, `...` or an expression over the model's hyperparameters, and `{}` has no hyperparameter `{id}`", f.model),
                    );
                    return None;
                }
                DimDecl::Expr(e) => match self.eval_hyper(e, f) {
                    Some(HVal::Int(n)) if n >= 0 => shape.dims.push(Dim::Known(n as u64)),
                    Some(HVal::Dim(d)) => shape.dims.push(d),
                    Some(v) => {
                        let shown = match &v {
                            HVal::Int(i) => format!("the int {i}"),
                            HVal::Float(x) => format!("the float {x}"),
                            other => format!("a {}", other.kind()),
                        };
                        self.error(e.span(), format!("a dim must be a non-negative integer, an UPPER-CASE symbol, `_` or `...`; this is {shown}"));
                        return None;
                    }
                    None => return None,
                },
            }
        }
        Some(shape)
    }

    /// The declared dtype (`Some(None)`: none declared; `None` after an error).
    pub(super) fn dtype_decl(&mut self, ty: &TypeDecl) -> Option<Option<DType>> {
        match &ty.dtype {
            None => Some(None),
            Some(id) => match DType::parse(&id.to_string()) {
                Some(t) => Some(Some(t)),
                None => {
                    self.error(id.span(), format!("unknown dtype `{id}`; expected one of f32, f64, f16, bf16, i32, i64, bool"));
                    None
                }
            },
        }
    }

    /// A param initializer (`zeros`, `normal(std)`, ...).
    pub(super) fn parse_init(&mut self, e: &Expr, f: &mut Frame) -> Option<Init> {
        let (name, args): (String, Vec<&Expr>) = match e {
            Expr::Path(p) if p.path.get_ident().is_some() => {
                (p.path.segments[0].ident.to_string(), vec![])
            }
            Expr::Call(c) => match &*c.func {
                Expr::Path(p) if p.path.get_ident().is_some() => (
                    p.path.segments[0].ident.to_string(),
                    c.args.iter().collect(),
                ),
                _ => (String::new(), vec![]),
            },
            _ => (String::new(), vec![]),
        };
        let mut nums = Vec::new();
        for a in &args {
            let a = match a {
                Expr::Assign(x) => &*x.right,
                other => other,
            };
            match self.eval_hyper(a, f)? {
                HVal::Int(i) => nums.push(i as f64),
                HVal::Float(x) => nums.push(x),
                HVal::Dim(d) => {
                    if name == "fan_in" {
                        return Some(Init::FanIn(Some(d)));
                    }
                    nums.push(f64::NAN)
                }
                _ => nums.push(f64::NAN),
            }
        }
        let ok = |n: usize| nums.len() == n && nums.iter().all(|x| x.is_finite());
        Some(match name.as_str() {
            "zeros" if nums.is_empty() => Init::Zeros,
            "ones" if nums.is_empty() => Init::Ones,
            "fan_in" if nums.is_empty() => Init::FanIn(None),
            "fan_in" if ok(1) => Init::FanIn(Some(Dim::Known(nums[0] as u64))),
            "normal" if ok(2) => Init::Normal(nums[0], nums[1]),
            "uniform" if ok(2) => Init::Uniform(nums[0], nums[1]),
            "full" if ok(1) => Init::Full(nums[0]),
            _ => {
                self.error(e.span(), "unknown initialiser; expected `zeros`, `ones`, `full(v)`, `normal(mean, std)`, `uniform(lo, hi)` or `fan_in(n)`");
                return None;
            }
        })
    }
}
