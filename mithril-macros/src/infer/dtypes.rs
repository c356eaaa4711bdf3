//! Step 4: dtype inference. Applies each primitive's dtype rule (defined in `prims`) in graph
//! order. Params and library-model inputs without a declared dtype are float variables that take
//! the dtype of what they meet (a `Linear` fed `f64` gets `f64` weights); what is still open at
//! the end becomes the model's default float type.
//!
//! The rules (also in the crate docs):
//! - operands of arithmetic promote: `f16`+`f32` -> `f32`, `bf16`+`f16` -> `f32`, `f32`+`f64` ->
//!   `f64`, `i32`+`i64` -> `i64`, int+float -> the float, bool+x -> x;
//! - literals are weak: `x * 2.0` keeps `x`'s dtype; a float literal meeting an integer tensor
//!   gives the default float type;
//! - `divide` of integers gives the default float type; `floor_divide` keeps integers;
//! - comparisons give `bool`; logical ops need `bool`;
//! - transcendental functions and softmax need floats (an integer operand is an error: cast it);
//! - `mean`/`variance` of integers give the default float type, `sum`/`prod` of bools give `i64`;
//! - `matmul` and `concat` need equal dtypes; `gather` needs integer indices;
//! - `argmax`/`argmin` give `i64`; `cast` gives its `dtype`.

use crate::ir::{DType, Graph, Op, Scalar, DT};
use crate::prims::ArgDt;

/// Run dtype inference; returns the errors.
pub fn infer(g: &mut Graph, default: DType) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    let mut weak: Vec<Option<Scalar>> = vec![None; g.nodes.len()];
    for id in 0..g.nodes.len() {
        let op = g.nodes[id].op.clone();
        let args = g.nodes[id].args.clone();
        match op {
            Op::Input(_) | Op::Param(_) => {}
            Op::Const(s) => {
                if g.nodes[id].dtype.is_none() {
                    weak[id] = Some(s);
                    g.nodes[id].dtype = Some(DT::Known(match s {
                        Scalar::Float(_) => default,
                        Scalar::Int(_) => DType::I64,
                        Scalar::Bool(_) => DType::Bool,
                    }));
                }
            }
            Op::Boundary(_) => {
                let Some(a) = g.nodes[args[0]].dtype else {
                    continue;
                };
                match g.nodes[id].dtype {
                    None => g.nodes[id].dtype = Some(a),
                    Some(want) => {
                        if g.env.unify_dt(want, a).is_err() {
                            let got = g.describe(args[0]);
                            let w = match g.env.dt(want) {
                                DT::Known(k) => k.name().to_string(),
                                DT::Var(_) => "float".into(),
                            };
                            errors.push(g.error_at(
                                id,
                                format!(
                                    "dtype mismatch: {} is declared {w}, but this argument is {got}",
                                    g.nodes[id].label.clone().unwrap_or_default()
                                ),
                            ));
                            g.nodes[id].dtype = None;
                        }
                    }
                }
            }
            Op::Prim(p) => {
                let ins: Option<Vec<ArgDt>> = args
                    .iter()
                    .map(|&a| g.nodes[a].dtype.map(|dt| ArgDt { dt, weak: weak[a] }))
                    .collect();
                let Some(ins) = ins else { continue };
                match p.infer_dtype(&mut g.env, &ins, default) {
                    Ok(t) => {
                        g.nodes[id].dtype = Some(t);
                        // a weak literal takes the dtype it is computed in (its first user's
                        // strong operand, else the result), so `x_f64 * 0.1` multiplies by the
                        // f64 value 0.1, not by 0.1 rounded to f32
                        if p.is_elementwise() {
                            let strong = args
                                .iter()
                                .skip(p.first_data_operand())
                                .find(|&&a| weak[a].is_none())
                                .and_then(|&a| g.nodes[a].dtype);
                            let target = strong.or(Some(t)).map(|d| g.env.dt(d));
                            for &a in &args {
                                // a float variable (an open param's dtype): the literal follows
                                // it, so it is exact in the type the variable gets (an f64
                                // buffer times 0.9 multiplies by the f64 0.9)
                                if let (Some(Scalar::Float(_) | Scalar::Int(_)), Some(DT::Var(v))) =
                                    (weak[a], target)
                                {
                                    g.nodes[a].dtype = Some(DT::Var(v));
                                    continue;
                                }
                                if let (
                                    Some(Scalar::Float(_) | Scalar::Int(_)),
                                    Some(DT::Known(k)),
                                ) = (weak[a], target)
                                {
                                    if k != DType::Bool
                                        && (k.is_float() || matches!(weak[a], Some(Scalar::Int(_))))
                                    {
                                        g.nodes[a].dtype = Some(DT::Known(k));
                                    }
                                }
                            }
                        }
                    }
                    Err(m) => {
                        let m = if matches!(p, crate::prims::Prim::LoopNext) {
                            let name = g.nodes[id].label.clone().unwrap_or_default();
                            format!("loop variable `{name}`: {m}")
                        } else if m.starts_with("dtype") {
                            m
                        } else {
                            format!("dtype error in `{}`: {m}", p.name())
                        };
                        errors.push(g.error_at(id, m));
                    }
                }
            }
            Op::Fused(_) | Op::FusedMatmul { .. } | Op::Seed(_) | Op::Mode => {}
        }
    }
    errors
}

/// Bind every still-open float variable to the default float type.
pub fn finish(g: &mut Graph, default: DType) {
    for id in 0..g.nodes.len() {
        if let Some(DT::Var(v)) = g.nodes[id].dtype.map(|t| g.env.dt(t)) {
            g.env.bind_dt(v, default);
        }
        if let Some(t) = g.nodes[id].dtype {
            g.nodes[id].dtype = Some(g.env.dt(t));
        }
    }
}
