//! Rules the families share: axes, broadcasting and dims for shape rules; operand dtypes,
//! promotion and the common compute type for dtype rules.

use crate::ir::{DType, Dim, Env, Scalar, Shape, DT};

/// Normalise an axis against a rank; `None` when out of range.
pub fn norm_axis(axis: i64, rank: usize) -> Option<usize> {
    let r = i64::try_from(rank).ok()?;
    let a = if axis < 0 { axis + r } else { axis };
    (0..r).contains(&a).then_some(a as usize)
}

/// NumPy broadcasting of several shapes.
pub fn broadcast(env: &mut Env, shapes: &[Shape]) -> Result<Shape, String> {
    let shapes: Vec<Shape> = shapes.iter().map(|s| env.shape(s)).collect();
    // leading rank variables: all must agree (or be absent on shapes no longer than the others)
    let mut rest = None;
    for s in &shapes {
        if let Some(r) = s.rest {
            match rest {
                None => rest = Some(r),
                Some(q) if q == r => {}
                Some(_) => {
                    return Err("the leading `...` dims of the operands are unrelated".into())
                }
            }
        }
    }
    let rank = shapes.iter().map(|s| s.dims.len()).max().unwrap_or(0);
    if rest.is_some() {
        for s in &shapes {
            if s.rest.is_none()
                && s.dims.len()
                    > shapes
                        .iter()
                        .filter(|t| t.rest.is_some())
                        .map(|t| t.dims.len())
                        .min()
                        .unwrap_or(0)
            {
                return Err("cannot broadcast a longer fixed-rank shape against `...`".into());
            }
        }
    }
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let mut acc: Option<Dim> = None;
        for s in &shapes {
            let k = s.dims.len();
            if i + k < rank {
                continue;
            }
            let d = env.dim(&s.dims[i + k - rank]);
            acc = Some(match acc {
                None => d,
                Some(a) => {
                    if d == Dim::Known(1) {
                        a
                    } else if a == Dim::Known(1) {
                        d
                    } else {
                        env.unify_dim(&a, &d).map_err(|_| {
                            format!(
                                "dims {} and {} at axis {} do not broadcast (neither is 1)",
                                show(env, &a),
                                show(env, &d),
                                i as isize - rank as isize
                            )
                        })?
                    }
                }
            });
        }
        out.push(acc.unwrap_or(Dim::Known(1)));
    }
    Ok(Shape { rest, dims: out })
}

/// The product of `dims`.
pub fn total(env: &Env, dims: &[Dim]) -> Dim {
    env.dim(&Dim::Prod(1, dims.to_vec()))
}

/// A dim as the user wrote it (symbol names, products).
pub fn show(env: &Env, d: &Dim) -> String {
    env.fmt_dim(d)
}

/// `Err` when `s` has an open rank (`...`): `what` needs the dims.
pub fn fixed(s: &Shape, what: &str) -> Result<(), String> {
    if s.rest.is_some() {
        Err(format!(
            "`{what}` needs a known rank here, but the shape starts with `...`"
        ))
    } else {
        Ok(())
    }
}

/// An input's dtype as seen by a dtype rule.
#[derive(Clone, Copy, Debug)]
pub struct ArgDt {
    pub dt: DT,
    /// A literal constant: adopts its partner's type.
    pub weak: Option<Scalar>,
}

/// Promotion of two known dtypes for arithmetic.
pub fn promote(a: DType, b: DType) -> DType {
    use DType::*;
    if a == b {
        return a;
    }
    match (a, b) {
        (Bool, x) | (x, Bool) => x,
        (F64, _) | (_, F64) => F64,
        (F32, _) | (_, F32) => F32,
        (F16, BF16) | (BF16, F16) => F32,
        (F16, _) | (_, F16) => F16,
        (BF16, _) | (_, BF16) => BF16,
        (I64, _) | (_, I64) => I64,
        _ => I32,
    }
}

/// The known dtype of an operand (`None` for an open float variable).
pub fn known(env: &Env, a: &ArgDt) -> Option<DType> {
    match env.dt(a.dt) {
        DT::Known(t) => Some(t),
        DT::Var(_) => None,
    }
}

/// The operands' dtype names for messages (`float` for an open float variable).
pub fn dt_names(env: &Env, ins: &[ArgDt]) -> Vec<String> {
    ins.iter()
        .map(|a| match env.dt(a.dt) {
            DT::Known(t) => t.name().to_string(),
            DT::Var(_) => "float".into(),
        })
        .collect()
}

/// The common compute type of several operands, with weak literals and float vars.
pub fn common(env: &mut Env, args: &[ArgDt], default: DType) -> Result<DT, String> {
    let strong: Vec<&ArgDt> = args.iter().filter(|a| a.weak.is_none()).collect();
    if strong.is_empty() {
        // only literals
        let any_float = args
            .iter()
            .any(|a| matches!(a.weak, Some(Scalar::Float(_))));
        let all_bool = args.iter().all(|a| matches!(a.weak, Some(Scalar::Bool(_))));
        return Ok(DT::Known(if any_float {
            default
        } else if all_bool {
            DType::Bool
        } else {
            DType::I64
        }));
    }
    let mut acc: Option<DT> = None;
    for a in &strong {
        acc = Some(match acc {
            None => a.dt,
            Some(prev) => match (env.dt(prev), env.dt(a.dt)) {
                (DT::Known(x), DT::Known(y)) => DT::Known(promote(x, y)),
                (p, q) => env
                    .unify_dt(p, q)
                    .map_err(|_| "dtype conflict".to_string())?,
            },
        });
    }
    let acc = acc.unwrap_or(DT::Known(default));
    // a float literal meeting an integer tensor makes the result float
    if let DT::Known(t) = env.dt(acc) {
        let float_lit = args
            .iter()
            .any(|a| matches!(a.weak, Some(Scalar::Float(_))));
        if !t.is_float() && float_lit {
            return Ok(DT::Known(default));
        }
    }
    Ok(acc)
}

/// The dtype rule of a float-only primitive `name`: the common type, which must be a float.
pub fn float_only(name: &str, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
    let t = common(env, ins, default)?;
    match env.dt(t) {
        DT::Known(x) if !x.is_float() => Err(format!(
            "`{name}` needs a float tensor, found {x}; use `cast(x, dtype = f32)` first"
        )),
        other => Ok(other),
    }
}
