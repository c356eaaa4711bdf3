//! The primitive op set. Each primitive is defined here once: its DSL names and attributes
//! ([`lookup`] / [`build`]), its shape rule ([`Prim::infer_shape`]), its dtype rule
//! ([`Prim::infer_dtype`]) and its lowering ([`Prim::scalar`] for elementwise ops, inlined into
//! fused loops; [`Prim::call`] for the others, which call `mithril::rt::ops`).
//! Gradient rules join here with the autodiff pass.

use crate::ir::{DType, Dim, Env, Scalar, Shape, DT};
use proc_macro2::TokenStream;
use quote::quote;

/// Reduction kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

/// One argument of `slice`.
#[derive(Clone, Debug, PartialEq)]
pub enum SliceArg {
    Range(Option<i64>, Option<i64>, i64),
    Index(i64),
    NewAxis,
}

/// A target dim of `reshape`.
#[derive(Clone, Debug, PartialEq)]
pub enum ReshapeDim {
    Dim(Dim),
    Infer,
}

/// The primitives.
#[derive(Clone, Debug, PartialEq)]
pub enum Prim {
    // ---- elementwise, binary
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
    Pow,
    Minimum,
    Maximum,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
    // ---- elementwise, unary
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Sin,
    Cos,
    Tanh,
    Erf,
    Square,
    Sign,
    Relu,
    Sigmoid,
    Softplus,
    Gelu,
    GeluTanh,
    Not,
    LeakyRelu(f64),
    Clamp(f64, f64),
    Cast(DType),
    /// Identity forward; no gradient flows through it.
    StopGradient,
    /// Mithril's `robust_sqrt` with its threshold (`None`: the dtype's default, see
    /// [`robust_threshold`]).
    RobustSqrt(Option<f64>),
    /// Mithril's `robust_log` with its threshold.
    RobustLog(Option<f64>),
    /// Mithril's `stable_reciprocal` with its threshold.
    StableReciprocal(Option<f64>),
    /// Mithril's `robust_power` (binary: base, exponent) with its threshold.
    RobustPower(Option<f64>),
    // ---- elementwise, ternary
    Where,
    // ---- structural
    Matmul {
        ta: bool,
        tb: bool,
    },
    Transpose(Vec<usize>),
    Reshape(Vec<ReshapeDim>),
    Flatten(i64, i64),
    Concat(i64),
    Slice(Vec<SliceArg>),
    Gather(i64),
    /// `output[...] = input[..., index[...]]` along the last axis (per-sample picks).
    TakeAlong,
    Reduce(ReduceKind, Vec<i64>, bool),
    Variance(Vec<i64>, bool, f64),
    ArgReduce {
        max: bool,
        axis: i64,
        keepdim: bool,
    },
    Softmax(i64),
    LogSoftmax(i64),
    // ---- triangles, constructors
    /// `tril(x, diagonal)`: keep entries `[i, j]` of the last two axes with `j - i <= diagonal`.
    Tril(i64),
    /// `triu(x, diagonal)`: keep entries with `j - i >= diagonal`.
    Triu(i64),
    /// `zeros_like` (0) / `ones_like` (1): the input's shape and dtype, filled.
    FullLike(f64),
    /// Stack equally shaped operands along a new axis.
    Stack(i64),
    /// `arange(start, end, step)`: `len` values `start + i * step` (no tensor inputs). `int`:
    /// every bound given was an integer (`i64` unless `dtype`).
    Arange {
        start: f64,
        step: f64,
        len: Dim,
        int: bool,
        dtype: Option<DType>,
    },
    // ---- linear algebra over the last two axes
    /// Lower Cholesky factor of symmetric positive-definite matrices.
    Cholesky,
    /// Eigenvalues (ascending) of symmetric matrices.
    Eigvalsh,
    /// `op(A) X = B` (`left`) or `X op(A) = B`, `A` triangular (`upper` or lower triangle read),
    /// `op(A) = Aᵀ` when `trans` (`trans` is set by autodiff only).
    SolveTriangular {
        upper: bool,
        left: bool,
        trans: bool,
    },
    // ---- made by autodiff (no DSL name)
    /// The eigenvectors (columns, ascending eigenvalue order) of symmetric matrices.
    EighVectors,
    /// Insert size-1 axes at these (sorted) output positions.
    Unsqueeze(Vec<usize>),
    /// Broadcast the first arg to the shape of the second.
    BroadcastLike,
    /// Reshape the first arg to the shape of the second.
    ReshapeLike,
    /// Sum the first arg (a broadcast result) down to the shape of the second, which it
    /// broadcasts from (for operands of open rank, where the summed axes are known at run time).
    SumLike,
    /// A scalar: element count of the first arg over that of the second (the `N` of a mean).
    SizeRatio,
    /// Gradient of `take_along`: (g, indices, like input).
    TakeAlongGrad,
    /// Gradient of `gather`: (g, indices, like table).
    GatherGrad(i64),
    /// Gradient of `slice`: (g, like input).
    SliceGrad(Vec<SliceArg>),
    /// Gradient of the k-th operand of `concat`: (g, parts...).
    ConcatPart(i64, usize),
}

/// A value given for an attribute.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrVal {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<AttrVal>),
    DType(DType),
    Dim(Dim),
    Slice(SliceArg),
    None,
}

/// How many tensor inputs a primitive takes and the names of its attributes.
pub struct Sig {
    pub inputs: &'static [&'static str],
    /// Variadic: all positional args are inputs (concat).
    pub variadic: bool,
    pub attrs: &'static [&'static str],
}

const UN: &[&str] = &["input"];
const BIN: &[&str] = &["left", "right"];

/// The DSL signature of a primitive function name, or `None` when the name is no primitive.
pub fn lookup(name: &str) -> Option<Sig> {
    let s = |inputs, attrs| Sig {
        inputs,
        variadic: false,
        attrs,
    };
    Some(match name {
        "add" | "subtract" | "multiply" | "divide" | "floor_divide" | "remainder" | "power"
        | "minimum" | "maximum" | "equal" | "not_equal" | "less" | "less_equal" | "greater"
        | "greater_equal" | "logical_and" | "logical_or" | "logical_xor" => s(BIN, &[]),
        "stop_gradient" => s(UN, &[]),
        "robust_sqrt" | "robust_log" | "stable_reciprocal" => s(UN, &["threshold"]),
        "robust_power" => s(&["base", "exponent"], &["threshold"]),
        "negate" | "abs" | "exp" | "log" | "sqrt" | "sin" | "cos" | "tanh" | "erf" | "square"
        | "sign" | "relu" | "sigmoid" | "softplus" | "logical_not" => s(UN, &[]),
        "gelu" => s(UN, &["approximate"]),
        "leaky_relu" => s(UN, &["slope"]),
        "clamp" => s(UN, &["min", "max"]),
        "cast" => s(UN, &["dtype"]),
        "where_" => s(&["cond", "left", "right"], &[]),
        "matmul" => s(BIN, &[]),
        "transpose" => s(UN, &["axes"]),
        "reshape" => s(UN, &["shape"]),
        "flatten" => s(UN, &["start_dim", "end_dim"]),
        "concat" => Sig {
            inputs: &[],
            variadic: true,
            attrs: &["axis"],
        },
        "slice" => Sig {
            inputs: UN,
            variadic: true,
            attrs: &[],
        },
        "gather" => s(&["input", "indices"], &["axis"]),
        "take_along" => s(&["input", "indices"], &[]),
        "sum" | "mean" | "max" | "min" | "prod" => s(UN, &["axis", "keepdim"]),
        "variance" => s(UN, &["axis", "keepdim", "correction"]),
        "argmax" | "argmin" => s(UN, &["axis", "keepdim"]),
        "softmax" | "log_softmax" => s(UN, &["axis"]),
        "tril" | "triu" => s(UN, &["diagonal"]),
        "zeros_like" | "ones_like" => s(UN, &[]),
        "arange" => s(&[], &["start", "end", "step", "dtype"]),
        "stack" => Sig {
            inputs: &[],
            variadic: true,
            attrs: &["axis"],
        },
        "cholesky" | "eigvalsh" => s(UN, &[]),
        "solve_triangular" => s(&["a", "b"], &["upper", "left"]),
        _ => return None,
    })
}

/// Every primitive function name (for "did you mean" lists).
pub const NAMES: &[&str] = &[
    "add",
    "subtract",
    "multiply",
    "divide",
    "floor_divide",
    "remainder",
    "power",
    "minimum",
    "maximum",
    "equal",
    "not_equal",
    "less",
    "less_equal",
    "greater",
    "greater_equal",
    "logical_and",
    "logical_or",
    "logical_xor",
    "logical_not",
    "negate",
    "abs",
    "exp",
    "log",
    "sqrt",
    "sin",
    "cos",
    "tanh",
    "erf",
    "square",
    "sign",
    "relu",
    "sigmoid",
    "softplus",
    "gelu",
    "leaky_relu",
    "clamp",
    "cast",
    "stop_gradient",
    "robust_sqrt",
    "robust_log",
    "stable_reciprocal",
    "robust_power",
    "where_",
    "matmul",
    "transpose",
    "reshape",
    "flatten",
    "concat",
    "slice",
    "gather",
    "take_along",
    "sum",
    "mean",
    "max",
    "min",
    "prod",
    "variance",
    "argmax",
    "argmin",
    "softmax",
    "log_softmax",
    "tril",
    "triu",
    "zeros_like",
    "ones_like",
    "stack",
    "arange",
    "cholesky",
    "eigvalsh",
    "solve_triangular",
];

fn axes_attr(v: Option<&AttrVal>) -> Result<Vec<i64>, String> {
    match v {
        None | Some(AttrVal::None) => Ok(vec![]),
        Some(AttrVal::Int(i)) => Ok(vec![*i]),
        Some(AttrVal::List(xs)) => xs
            .iter()
            .map(|x| match x {
                AttrVal::Int(i) => Ok(*i),
                _ => Err("`axis` must be an integer or a list of integers".to_string()),
            })
            .collect(),
        _ => Err("`axis` must be an integer or a list of integers".into()),
    }
}

fn int_attr(v: Option<&AttrVal>, name: &str, default: i64) -> Result<i64, String> {
    match v {
        None => Ok(default),
        Some(AttrVal::Int(i)) => Ok(*i),
        _ => Err(format!("`{name}` must be an integer")),
    }
}

fn bool_attr(v: Option<&AttrVal>, name: &str, default: bool) -> Result<bool, String> {
    match v {
        None => Ok(default),
        Some(AttrVal::Bool(b)) => Ok(*b),
        _ => Err(format!("`{name}` must be `true` or `false`")),
    }
}

fn float_attr(v: Option<&AttrVal>, name: &str, default: f64) -> Result<f64, String> {
    match v {
        None => Ok(default),
        Some(AttrVal::Float(f)) => Ok(*f),
        Some(AttrVal::Int(i)) => Ok(*i as f64),
        _ => Err(format!("`{name}` must be a number")),
    }
}

/// The `threshold` of a robust form: absent means the dtype's default; given, a positive
/// number.
fn threshold_attr(v: Option<&AttrVal>) -> Result<Option<f64>, String> {
    match v {
        None | Some(AttrVal::None) => Ok(None),
        Some(_) => {
            let t = float_attr(v, "threshold", 0.0)?;
            if t > 0.0 && t.is_finite() {
                Ok(Some(t))
            } else {
                Err(format!(
                    "`threshold` must be a positive finite number, found {t}"
                ))
            }
        }
    }
}

/// `arange(end)`, `arange(start, end)`, `arange(start, end, step)` (torch's semantics): numbers
/// known at compile time, or `arange(T)` with `T` a symbolic dim (`[T]` values `0..T`).
fn arange(
    start: Option<&AttrVal>,
    end: Option<&AttrVal>,
    step: Option<&AttrVal>,
    dtype: Option<&AttrVal>,
) -> Result<Prim, String> {
    let (start, end) = match (start, end) {
        (Some(s), None) => (None, Some(s)),
        (s, e) => (s, e),
    };
    let dtype = match dtype {
        None | Some(AttrVal::None) => None,
        Some(AttrVal::DType(t)) if *t != DType::Bool => Some(*t),
        _ => return Err("`dtype` of `arange` must be a numeric dtype (`f32`, `i64`, ...)".into()),
    };
    let num = |v: Option<&AttrVal>, what: &str, default: i64| -> Result<(f64, bool), String> {
        match v {
            None => Ok((default as f64, true)),
            Some(AttrVal::Int(i)) => Ok((*i as f64, true)),
            Some(AttrVal::Float(f)) if f.is_finite() => Ok((*f, false)),
            _ => Err(format!(
                "`{what}` of `arange` must be a number known at compile time"
            )),
        }
    };
    let (s0, si) = num(start, "start", 0)?;
    let (st, ti) = num(step, "step", 1)?;
    if st == 0.0 {
        return Err("the `step` of `arange` cannot be 0".into());
    }
    match end {
        None => Err("`arange` needs an end: `arange(end)`, `arange(start, end)` or `arange(start, end, step)`".into()),
        Some(AttrVal::Dim(d)) => {
            if s0 != 0.0 || st != 1.0 {
                return Err("`arange` with a symbolic end (`arange(T)`) counts 0, 1, ..., T - 1: it takes no `start` or `step`".into());
            }
            Ok(Prim::Arange {
                start: 0.0,
                step: 1.0,
                len: d.clone(),
                int: true,
                dtype,
            })
        }
        e => {
            let (e0, ei) = num(e, "end", 0)?;
            let n = ((e0 - s0) / st).ceil();
            if n > (1u64 << 40) as f64 {
                return Err(format!("`arange` of {n} elements is too large"));
            }
            Ok(Prim::Arange {
                start: s0,
                step: st,
                len: Dim::Known(if n > 0.0 { n as u64 } else { 0 }),
                int: si && ei && ti,
                dtype,
            })
        }
    }
}

/// Mithril's default threshold of a robust form for a compute dtype (Mithril's `epsilon_table`
/// by bit width): `robust_sqrt`, `robust_log` and `robust_power` use the smallest positive
/// normal number (f64 `2.2250738585072014e-308`, f32 `1.1754944e-38`, 16-bit `6.104e-05`),
/// `stable_reciprocal` its own (f64 `1.4916681462400413e-153`, f32 `1.0842021951e-19`,
/// 16-bit `0.007812809993849843`). `f16` and `bf16` both take the 16-bit values, as Mithril.
pub fn robust_threshold(p: &Prim, t: DType) -> f64 {
    let given = match p {
        Prim::RobustSqrt(c)
        | Prim::RobustLog(c)
        | Prim::StableReciprocal(c)
        | Prim::RobustPower(c) => *c,
        _ => None,
    };
    if let Some(c) = given {
        return c;
    }
    let reciprocal = matches!(p, Prim::StableReciprocal(_));
    match (t, reciprocal) {
        (DType::F64, false) => 2.225_073_858_507_201_4e-308,
        (DType::F64, true) => 1.491_668_146_240_041_3e-153,
        (DType::F16 | DType::BF16, false) => 6.104e-05,
        (DType::F16 | DType::BF16, true) => 0.007_812_809_993_849_843,
        (_, false) => 1.175_494_4e-38,
        (_, true) => 1.084_202_195_1e-19,
    }
}

/// Build a primitive from its DSL name and attribute values (already checked against [`lookup`]).
pub fn build(name: &str, attrs: &[(&str, AttrVal)], n_inputs: usize) -> Result<Prim, String> {
    let get = |k: &str| attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| v);
    Ok(match name {
        "add" => Prim::Add,
        "subtract" => Prim::Sub,
        "multiply" => Prim::Mul,
        "divide" => Prim::Div,
        "floor_divide" => Prim::FloorDiv,
        "remainder" => Prim::Rem,
        "power" => Prim::Pow,
        "minimum" => Prim::Minimum,
        "maximum" => Prim::Maximum,
        "equal" => Prim::Eq,
        "not_equal" => Prim::Ne,
        "less" => Prim::Lt,
        "less_equal" => Prim::Le,
        "greater" => Prim::Gt,
        "greater_equal" => Prim::Ge,
        "logical_and" => Prim::And,
        "logical_or" => Prim::Or,
        "logical_xor" => Prim::Xor,
        "logical_not" => Prim::Not,
        "negate" => Prim::Neg,
        "abs" => Prim::Abs,
        "exp" => Prim::Exp,
        "log" => Prim::Log,
        "sqrt" => Prim::Sqrt,
        "sin" => Prim::Sin,
        "cos" => Prim::Cos,
        "tanh" => Prim::Tanh,
        "erf" => Prim::Erf,
        "square" => Prim::Square,
        "sign" => Prim::Sign,
        "relu" => Prim::Relu,
        "sigmoid" => Prim::Sigmoid,
        "softplus" => Prim::Softplus,
        "gelu" => match get("approximate") {
            None | Some(AttrVal::Bool(false)) => Prim::Gelu,
            Some(AttrVal::Bool(true)) => Prim::GeluTanh,
            Some(AttrVal::Str(s)) if s == "none" || s == "erf" => Prim::Gelu,
            Some(AttrVal::Str(s)) if s == "tanh" => Prim::GeluTanh,
            _ => return Err("`approximate` must be \"none\", \"erf\", \"tanh\" or a bool".into()),
        },
        "leaky_relu" => Prim::LeakyRelu(float_attr(get("slope"), "slope", 0.01)?),
        "clamp" => Prim::Clamp(
            float_attr(get("min"), "min", f64::NEG_INFINITY)?,
            float_attr(get("max"), "max", f64::INFINITY)?,
        ),
        "cast" => match get("dtype") {
            Some(AttrVal::DType(t)) => Prim::Cast(*t),
            _ => return Err("`cast` needs `dtype = f32` (or another dtype)".into()),
        },
        "where_" => Prim::Where,
        "stop_gradient" => Prim::StopGradient,
        "robust_sqrt" => Prim::RobustSqrt(threshold_attr(get("threshold"))?),
        "robust_log" => Prim::RobustLog(threshold_attr(get("threshold"))?),
        "stable_reciprocal" => Prim::StableReciprocal(threshold_attr(get("threshold"))?),
        "robust_power" => Prim::RobustPower(threshold_attr(get("threshold"))?),
        "matmul" => Prim::Matmul {
            ta: false,
            tb: false,
        },
        "transpose" => match get("axes") {
            None | Some(AttrVal::None) => Prim::Transpose(vec![]),
            Some(v) => {
                let axes = axes_attr(Some(v))?;
                if axes.iter().any(|a| *a < 0) {
                    return Err("`axes` of transpose must be non-negative".into());
                }
                Prim::Transpose(axes.into_iter().map(|a| a as usize).collect())
            }
        },
        "reshape" => match get("shape") {
            Some(AttrVal::List(xs)) => {
                let mut dims = Vec::new();
                for x in xs {
                    dims.push(match x {
                        AttrVal::Int(-1) => ReshapeDim::Infer,
                        AttrVal::Int(n) if *n >= 0 => ReshapeDim::Dim(Dim::Known(*n as u64)),
                        AttrVal::Dim(d) => ReshapeDim::Dim(d.clone()),
                        _ => return Err("reshape dims must be integers, symbols or -1".into()),
                    });
                }
                if dims.iter().filter(|d| **d == ReshapeDim::Infer).count() > 1 {
                    return Err("reshape takes at most one -1".into());
                }
                Prim::Reshape(dims)
            }
            _ => return Err("`reshape` needs a shape list: `reshape(x, [B, -1])`".into()),
        },
        "flatten" => Prim::Flatten(
            int_attr(get("start_dim"), "start_dim", 0)?,
            int_attr(get("end_dim"), "end_dim", -1)?,
        ),
        "concat" => {
            if n_inputs == 0 {
                return Err("`concat` needs at least one tensor".into());
            }
            Prim::Concat(int_attr(get("axis"), "axis", 0)?)
        }
        "slice" => {
            let mut args = Vec::new();
            for (k, v) in attrs {
                if *k != "#slice" {
                    continue;
                }
                match v {
                    AttrVal::Slice(s) => args.push(s.clone()),
                    AttrVal::Int(i) => args.push(SliceArg::Index(*i)),
                    _ => {
                        return Err(
                            "slice arguments are ranges `a..b`, `..`, integers or `None`".into(),
                        )
                    }
                }
            }
            Prim::Slice(args)
        }
        "gather" => Prim::Gather(int_attr(get("axis"), "axis", 0)?),
        "take_along" => Prim::TakeAlong,
        "sum" | "mean" | "max" | "min" | "prod" => {
            let kind = match name {
                "sum" => ReduceKind::Sum,
                "mean" => ReduceKind::Mean,
                "max" => ReduceKind::Max,
                "min" => ReduceKind::Min,
                _ => ReduceKind::Prod,
            };
            Prim::Reduce(
                kind,
                axes_attr(get("axis"))?,
                bool_attr(get("keepdim"), "keepdim", false)?,
            )
        }
        "variance" => Prim::Variance(
            axes_attr(get("axis"))?,
            bool_attr(get("keepdim"), "keepdim", false)?,
            float_attr(get("correction"), "correction", 0.0)?,
        ),
        "argmax" | "argmin" => Prim::ArgReduce {
            max: name == "argmax",
            axis: int_attr(get("axis"), "axis", -1)?,
            keepdim: bool_attr(get("keepdim"), "keepdim", false)?,
        },
        "softmax" => Prim::Softmax(int_attr(get("axis"), "axis", -1)?),
        "log_softmax" => Prim::LogSoftmax(int_attr(get("axis"), "axis", -1)?),
        "tril" => Prim::Tril(int_attr(get("diagonal"), "diagonal", 0)?),
        "triu" => Prim::Triu(int_attr(get("diagonal"), "diagonal", 0)?),
        "zeros_like" => Prim::FullLike(0.0),
        "ones_like" => Prim::FullLike(1.0),
        "stack" => {
            if n_inputs == 0 {
                return Err("`stack` needs at least one tensor".into());
            }
            Prim::Stack(int_attr(get("axis"), "axis", 0)?)
        }
        "arange" => arange(get("start"), get("end"), get("step"), get("dtype"))?,
        "cholesky" => Prim::Cholesky,
        "eigvalsh" => Prim::Eigvalsh,
        "solve_triangular" => Prim::SolveTriangular {
            upper: bool_attr(get("upper"), "upper", false)?,
            left: bool_attr(get("left"), "left", true)?,
            trans: false,
        },
        _ => return Err(format!("unknown primitive `{name}`")),
    })
}

impl Prim {
    /// The DSL name (for summaries and errors).
    pub fn name(&self) -> &'static str {
        match self {
            Prim::Add => "add",
            Prim::Sub => "subtract",
            Prim::Mul => "multiply",
            Prim::Div => "divide",
            Prim::FloorDiv => "floor_divide",
            Prim::Rem => "remainder",
            Prim::Pow => "power",
            Prim::Minimum => "minimum",
            Prim::Maximum => "maximum",
            Prim::Eq => "equal",
            Prim::Ne => "not_equal",
            Prim::Lt => "less",
            Prim::Le => "less_equal",
            Prim::Gt => "greater",
            Prim::Ge => "greater_equal",
            Prim::And => "logical_and",
            Prim::Or => "logical_or",
            Prim::Xor => "logical_xor",
            Prim::Neg => "negate",
            Prim::Abs => "abs",
            Prim::Exp => "exp",
            Prim::Log => "log",
            Prim::Sqrt => "sqrt",
            Prim::Sin => "sin",
            Prim::Cos => "cos",
            Prim::Tanh => "tanh",
            Prim::Erf => "erf",
            Prim::Square => "square",
            Prim::Sign => "sign",
            Prim::Relu => "relu",
            Prim::Sigmoid => "sigmoid",
            Prim::Softplus => "softplus",
            Prim::Gelu => "gelu",
            Prim::GeluTanh => "gelu_tanh",
            Prim::Not => "logical_not",
            Prim::LeakyRelu(_) => "leaky_relu",
            Prim::Clamp(..) => "clamp",
            Prim::Cast(_) => "cast",
            Prim::StopGradient => "stop_gradient",
            Prim::RobustSqrt(_) => "robust_sqrt",
            Prim::RobustLog(_) => "robust_log",
            Prim::StableReciprocal(_) => "stable_reciprocal",
            Prim::RobustPower(_) => "robust_power",
            Prim::Where => "where_",
            Prim::Matmul { .. } => "matmul",
            Prim::Transpose(_) => "transpose",
            Prim::Reshape(_) => "reshape",
            Prim::Flatten(..) => "flatten",
            Prim::Concat(_) => "concat",
            Prim::Slice(_) => "slice",
            Prim::Gather(_) => "gather",
            Prim::TakeAlong => "take_along",
            Prim::Reduce(k, ..) => match k {
                ReduceKind::Sum => "sum",
                ReduceKind::Mean => "mean",
                ReduceKind::Max => "max",
                ReduceKind::Min => "min",
                ReduceKind::Prod => "prod",
            },
            Prim::Variance(..) => "variance",
            Prim::ArgReduce { max: true, .. } => "argmax",
            Prim::ArgReduce { .. } => "argmin",
            Prim::Softmax(_) => "softmax",
            Prim::LogSoftmax(_) => "log_softmax",
            Prim::Tril(_) => "tril",
            Prim::Triu(_) => "triu",
            Prim::FullLike(v) if *v == 0.0 => "zeros_like",
            Prim::FullLike(_) => "ones_like",
            Prim::Stack(_) => "stack",
            Prim::Arange { .. } => "arange",
            Prim::Cholesky => "cholesky",
            Prim::Eigvalsh => "eigvalsh",
            Prim::SolveTriangular { .. } => "solve_triangular",
            Prim::EighVectors => "eigh_vectors",
            Prim::Unsqueeze(_) => "unsqueeze",
            Prim::BroadcastLike => "broadcast_like",
            Prim::ReshapeLike => "reshape_like",
            Prim::SumLike => "sum_like",
            Prim::SizeRatio => "size_ratio",
            Prim::TakeAlongGrad => "take_along_grad",
            Prim::GatherGrad(_) => "gather_grad",
            Prim::SliceGrad(_) => "slice_grad",
            Prim::ConcatPart(..) => "concat_part",
        }
    }

    /// Elementwise primitives broadcast their inputs and can be fused into one loop.
    pub fn is_elementwise(&self) -> bool {
        matches!(
            self,
            Prim::Add
                | Prim::Sub
                | Prim::Mul
                | Prim::Div
                | Prim::FloorDiv
                | Prim::Rem
                | Prim::Pow
                | Prim::Minimum
                | Prim::Maximum
                | Prim::Eq
                | Prim::Ne
                | Prim::Lt
                | Prim::Le
                | Prim::Gt
                | Prim::Ge
                | Prim::And
                | Prim::Or
                | Prim::Xor
                | Prim::Neg
                | Prim::Abs
                | Prim::Exp
                | Prim::Log
                | Prim::Sqrt
                | Prim::Sin
                | Prim::Cos
                | Prim::Tanh
                | Prim::Erf
                | Prim::Square
                | Prim::Sign
                | Prim::Relu
                | Prim::Sigmoid
                | Prim::Softplus
                | Prim::Gelu
                | Prim::GeluTanh
                | Prim::Not
                | Prim::LeakyRelu(_)
                | Prim::Clamp(..)
                | Prim::Cast(_)
                | Prim::StopGradient
                | Prim::RobustSqrt(_)
                | Prim::RobustLog(_)
                | Prim::StableReciprocal(_)
                | Prim::RobustPower(_)
                | Prim::Where
        )
    }

    /// Commutative binary ops (CSE canonicalises their args).
    pub fn is_commutative(&self) -> bool {
        matches!(
            self,
            Prim::Add
                | Prim::Mul
                | Prim::Minimum
                | Prim::Maximum
                | Prim::Eq
                | Prim::Ne
                | Prim::And
                | Prim::Or
                | Prim::Xor
        )
    }

    fn is_comparison(&self) -> bool {
        matches!(
            self,
            Prim::Eq | Prim::Ne | Prim::Lt | Prim::Le | Prim::Gt | Prim::Ge
        )
    }

    fn is_logical(&self) -> bool {
        matches!(self, Prim::And | Prim::Or | Prim::Xor | Prim::Not)
    }

    fn float_only(&self) -> bool {
        matches!(
            self,
            Prim::Exp
                | Prim::Log
                | Prim::Sqrt
                | Prim::Sin
                | Prim::Cos
                | Prim::Tanh
                | Prim::Erf
                | Prim::Sigmoid
                | Prim::Softplus
                | Prim::Gelu
                | Prim::GeluTanh
                | Prim::RobustSqrt(_)
                | Prim::RobustLog(_)
                | Prim::StableReciprocal(_)
                | Prim::RobustPower(_)
                | Prim::Softmax(_)
                | Prim::LogSoftmax(_)
                | Prim::Cholesky
                | Prim::Eigvalsh
                | Prim::EighVectors
        )
    }
}

// ------------------------------------------------------------------------------------------
// Shape rules
// ------------------------------------------------------------------------------------------

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

fn total(env: &Env, dims: &[Dim]) -> Dim {
    env.dim(&Dim::Prod(1, dims.to_vec()))
}

impl Prim {
    /// The output shape from the input shapes. `Err` carries the message (the caller adds the
    /// op name, the operand shapes and the span).
    pub fn infer_shape(&self, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        let ins: Vec<Shape> = ins.iter().map(|s| env.shape(s)).collect();
        if self.is_elementwise() {
            return broadcast(env, &ins);
        }
        let fixed = |s: &Shape, what: &str| -> Result<(), String> {
            if s.rest.is_some() {
                Err(format!(
                    "`{what}` needs a known rank here, but the shape starts with `...`"
                ))
            } else {
                Ok(())
            }
        };
        match self {
            Prim::Matmul { ta, tb } => {
                let (mut a, mut b) = (ins[0].clone(), ins[1].clone());
                if *ta && a.dims.len() >= 2 {
                    let n = a.dims.len();
                    a.dims.swap(n - 1, n - 2);
                }
                if *tb && b.dims.len() >= 2 {
                    let n = b.dims.len();
                    b.dims.swap(n - 1, n - 2);
                }
                let a1 = a.dims.len() == 1 && a.rest.is_none();
                let b1 = b.dims.len() == 1 && b.rest.is_none();
                if a.dims.is_empty() || b.dims.is_empty() {
                    return Err("matmul needs operands of rank >= 1".into());
                }
                if a.rest.is_some() && a.dims.len() == 1 && b.rest.is_none() && b.dims.len() <= 2 {
                    // `[..., K] @ [K, N]` (Linear on a rank-polymorphic input): whether `...`
                    // is empty (a vector) or holds batch dims and a row dim, the result is
                    // `[..., N]` (`[...]` for a vector `b`)
                    let (k_a, k_b) = (a.dims[0].clone(), b.dims[0].clone());
                    env.unify_dim(&k_a, &k_b).map_err(|_| {
                        format!(
                            "inner dimensions differ: {} != {}",
                            show(env, &k_a),
                            show(env, &k_b)
                        )
                    })?;
                    return Ok(Shape {
                        rest: a.rest,
                        dims: b.dims[1..].to_vec(),
                    });
                }
                if (!a1 && a.dims.len() < 2) || (!b1 && b.dims.len() < 2) {
                    return Err(
                        "an operand of matmul with open rank (`...`) needs at least 2 named dims"
                            .into(),
                    );
                }
                let k_a = a.dims[a.dims.len() - 1].clone();
                let k_b = if b1 {
                    b.dims[0].clone()
                } else {
                    b.dims[b.dims.len() - 2].clone()
                };
                env.unify_dim(&k_a, &k_b).map_err(|_| {
                    format!(
                        "inner dimensions differ: {} != {}",
                        show(env, &k_a),
                        show(env, &k_b)
                    )
                })?;
                let m = if a1 {
                    None
                } else {
                    Some(a.dims[a.dims.len() - 2].clone())
                };
                let n = if b1 {
                    None
                } else {
                    Some(b.dims[b.dims.len() - 1].clone())
                };
                let batch_a = Shape {
                    rest: a.rest,
                    dims: a.dims[..a.dims.len().saturating_sub(2)].to_vec(),
                };
                let batch_b = Shape {
                    rest: b.rest,
                    dims: b.dims[..b.dims.len().saturating_sub(2)].to_vec(),
                };
                let batch_a = if a1 { Shape::scalar() } else { batch_a };
                let batch_b = if b1 { Shape::scalar() } else { batch_b };
                let mut out = broadcast(env, &[batch_a, batch_b])
                    .map_err(|e| format!("batch dims do not broadcast ({e})"))?;
                out.dims.extend(m);
                out.dims.extend(n);
                Ok(out)
            }
            Prim::Transpose(perm) => {
                let s = &ins[0];
                fixed(s, "transpose")?;
                let r = s.dims.len();
                let perm: Vec<usize> = if perm.is_empty() {
                    (0..r).rev().collect()
                } else {
                    perm.clone()
                };
                let mut seen = vec![false; r];
                if perm.len() != r
                    || perm
                        .iter()
                        .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
                {
                    return Err(format!("axes {perm:?} are not a permutation of 0..{r}"));
                }
                Ok(Shape::fixed(
                    perm.iter().map(|&p| s.dims[p].clone()).collect(),
                ))
            }
            Prim::Reshape(target) => {
                let s = &ins[0];
                let tot = if s.rest.is_some() {
                    None
                } else {
                    Some(total(env, &s.dims))
                };
                let known: Vec<Dim> = target
                    .iter()
                    .filter_map(|d| match d {
                        ReshapeDim::Dim(d) => Some(d.clone()),
                        ReshapeDim::Infer => None,
                    })
                    .collect();
                let mut out = Vec::new();
                let has_infer = known.len() < target.len();
                let inferred = if has_infer {
                    match &tot {
                        Some(t) => {
                            let want = total(env, &known);
                            if let (Dim::Known(a), Dim::Known(b)) = (env.dim(t), env.dim(&want)) {
                                if b == 0 || a % b != 0 {
                                    return Err(format!(
                                        "cannot reshape {a} elements into a shape with -1 and {b} other elements"
                                    ));
                                }
                            }
                            divide(env, t, &want).unwrap_or_else(|| env.new_dim_var("_"))
                        }
                        None => env.new_dim_var("_"),
                    }
                } else {
                    if let Some(t) = &tot {
                        let want = total(env, &known);
                        if let (Dim::Known(a), Dim::Known(b)) = (env.dim(t), env.dim(&want)) {
                            if a != b {
                                return Err(format!("cannot reshape {a} elements into {b}"));
                            }
                        }
                    }
                    Dim::Known(0)
                };
                for d in target {
                    out.push(match d {
                        ReshapeDim::Dim(d) => d.clone(),
                        ReshapeDim::Infer => inferred.clone(),
                    });
                }
                Ok(Shape::fixed(out))
            }
            Prim::Flatten(start, end) => {
                let s = &ins[0];
                fixed(s, "flatten")?;
                let r = s.dims.len().max(1);
                let (a, b) = match (norm_axis(*start, r), norm_axis(*end, r)) {
                    (Some(a), Some(b)) if a <= b => (a, b),
                    _ => {
                        return Err(format!(
                            "start_dim {start} / end_dim {end} out of range for rank {r}"
                        ))
                    }
                };
                if s.dims.is_empty() {
                    return Ok(Shape::fixed(vec![Dim::Known(1)]));
                }
                let mut out = s.dims[..a].to_vec();
                out.push(total(env, &s.dims[a..=b]));
                out.extend_from_slice(&s.dims[b + 1..]);
                Ok(Shape::fixed(out))
            }
            Prim::Concat(axis) => {
                for s in &ins {
                    fixed(s, "concat")?;
                }
                let r = ins[0].dims.len();
                if ins.iter().any(|s| s.dims.len() != r) {
                    return Err("all operands of concat need the same rank".into());
                }
                let ax = norm_axis(*axis, r)
                    .ok_or_else(|| format!("axis {axis} out of range for rank {r}"))?;
                let mut out = ins[0].dims.clone();
                let mut sum: Option<u64> = Some(0);
                for s in &ins {
                    for (i, d) in s.dims.iter().enumerate() {
                        if i != ax {
                            out[i] = env.unify_dim(&out[i], d).map_err(|_| {
                                format!(
                                    "dim {i} differs: {} vs {}",
                                    show(env, &out[i]),
                                    show(env, d)
                                )
                            })?;
                        }
                    }
                    sum = match (sum, env.dim(&s.dims[ax])) {
                        (Some(acc), Dim::Known(n)) => match acc.checked_add(n) {
                            Some(t) => Some(t),
                            None => return Err("the concatenated dim overflows".into()),
                        },
                        _ => None,
                    };
                }
                out[ax] = match sum {
                    Some(n) => Dim::Known(n),
                    None if ins.len() == 1 => ins[0].dims[ax].clone(),
                    None => env.new_dim_var("_"),
                };
                Ok(Shape::fixed(out))
            }
            Prim::Slice(args) => {
                let s = &ins[0];
                fixed(s, "slice")?;
                let mut out = Vec::new();
                let mut i = 0;
                for a in args {
                    match a {
                        SliceArg::NewAxis => out.push(Dim::Known(1)),
                        SliceArg::Index(idx) => {
                            let d = s
                                .dims
                                .get(i)
                                .ok_or("too many indices for the tensor's rank")?;
                            if let Dim::Known(n) = env.dim(d) {
                                if norm_axis(*idx, n as usize).is_none() {
                                    return Err(format!(
                                        "index {idx} is out of range for a dim of size {n}"
                                    ));
                                }
                            }
                            i += 1;
                        }
                        SliceArg::Range(lo, hi, step) => {
                            let d = s
                                .dims
                                .get(i)
                                .ok_or("too many indices for the tensor's rank")?;
                            if *step == 0 {
                                return Err("slice step cannot be 0".into());
                            }
                            out.push(match env.dim(d) {
                                Dim::Known(n) => Dim::Known(slice_len(
                                    i64::try_from(n).unwrap_or(i64::MAX),
                                    *lo,
                                    *hi,
                                    *step,
                                )),
                                other if lo.is_none() && hi.is_none() && *step == 1 => other,
                                _ => env.new_dim_var("_"),
                            });
                            i += 1;
                        }
                    }
                }
                out.extend_from_slice(&s.dims[i.min(s.dims.len())..]);
                Ok(Shape::fixed(out))
            }
            Prim::Gather(axis) => {
                let (t, idx) = (&ins[0], &ins[1]);
                fixed(t, "gather")?;
                let r = t.dims.len();
                let ax = norm_axis(*axis, r)
                    .ok_or_else(|| format!("axis {axis} out of range for rank {r}"))?;
                let mut out = Shape {
                    rest: idx.rest,
                    dims: vec![],
                };
                if idx.rest.is_some() && ax > 0 {
                    return Err("gather with `...` indices needs axis 0".into());
                }
                out.dims.extend_from_slice(&t.dims[..ax]);
                out.dims.extend_from_slice(&idx.dims);
                out.dims.extend_from_slice(&t.dims[ax + 1..]);
                Ok(out)
            }
            Prim::TakeAlong => {
                let (t, idx) = (&ins[0], &ins[1]);
                if t.dims.is_empty() {
                    return Err("take_along needs an input of rank >= 1".into());
                }
                let lead = Shape {
                    rest: t.rest,
                    dims: t.dims[..t.dims.len() - 1].to_vec(),
                };
                env.unify_pattern(&lead, idx).map_err(|e| {
                    format!("the indices must have the input's shape without its last axis ({e})")
                })?;
                Ok(lead)
            }
            Prim::Reduce(_, axes, keepdim) | Prim::Variance(axes, keepdim, _) => {
                reduce_shape(&ins[0], axes, *keepdim)
            }
            Prim::ArgReduce { axis, keepdim, .. } => reduce_shape(&ins[0], &[*axis], *keepdim),
            Prim::Softmax(axis) | Prim::LogSoftmax(axis) => {
                let s = &ins[0];
                if s.rest.is_some() && *axis >= 0 {
                    return Err("a non-negative axis is ambiguous after `...`".into());
                }
                if s.rest.is_none() && norm_axis(*axis, s.dims.len()).is_none() {
                    return Err(format!(
                        "axis {axis} out of range for rank {}",
                        s.dims.len()
                    ));
                }
                Ok(s.clone())
            }
            Prim::Unsqueeze(axes) => {
                let s = &ins[0];
                fixed(s, "unsqueeze")?;
                let mut dims = s.dims.clone();
                for &a in axes {
                    if a > dims.len() {
                        return Err("internal: unsqueeze axis out of range".into());
                    }
                    dims.insert(a, Dim::Known(1));
                }
                Ok(Shape::fixed(dims))
            }
            Prim::BroadcastLike => {
                broadcast(env, &[ins[0].clone(), ins[1].clone()])?;
                Ok(ins[1].clone())
            }
            Prim::ReshapeLike | Prim::SumLike => Ok(ins[1].clone()),
            Prim::SizeRatio => Ok(Shape::scalar()),
            Prim::TakeAlongGrad | Prim::GatherGrad(_) => Ok(ins[2].clone()),
            Prim::SliceGrad(_) => Ok(ins[1].clone()),
            Prim::ConcatPart(_, k) => ins
                .get(k + 1)
                .cloned()
                .ok_or_else(|| "internal: concat part".to_string()),
            Prim::Tril(_) | Prim::Triu(_) => {
                if ins[0].dims.len() < 2 {
                    return Err(format!(
                        "`{}` needs a matrix or a batch of matrices (rank >= 2 named dims)",
                        self.name()
                    ));
                }
                Ok(ins[0].clone())
            }
            Prim::FullLike(_) => Ok(ins[0].clone()),
            Prim::Arange { len, .. } => Ok(Shape::fixed(vec![len.clone()])),
            Prim::Stack(axis) => {
                for s in &ins {
                    fixed(s, "stack")?;
                }
                let r = ins[0].dims.len();
                if ins.iter().any(|s| s.dims.len() != r) {
                    return Err("all operands of stack need the same shape".into());
                }
                let ax = norm_axis(*axis, r + 1)
                    .ok_or_else(|| format!("axis {axis} out of range for rank {}", r + 1))?;
                let mut out = ins[0].dims.clone();
                for s in &ins[1..] {
                    for (i, d) in s.dims.iter().enumerate() {
                        out[i] = env.unify_dim(&out[i], d).map_err(|_| {
                            format!(
                                "all operands of stack need the same shape; dim {i} differs: {} vs {}",
                                show(env, &out[i]),
                                show(env, d)
                            )
                        })?;
                    }
                }
                out.insert(ax, Dim::Known(ins.len() as u64));
                Ok(Shape::fixed(out))
            }
            Prim::Cholesky | Prim::EighVectors => {
                square_shape(env, &ins[0], self.name())?;
                Ok(ins[0].clone())
            }
            Prim::Eigvalsh => {
                square_shape(env, &ins[0], self.name())?;
                let mut s = ins[0].clone();
                s.dims.pop();
                Ok(s)
            }
            Prim::SolveTriangular { left, .. } => {
                let (a, b) = (&ins[0], &ins[1]);
                let n = square_shape(env, a, "solve_triangular")?;
                let (na, nb) = (a.dims.len(), b.dims.len());
                if nb < 2 {
                    return Err("the right-hand side `b` needs rank >= 2 ([..., n, k]; a vector `v` is `reshape(v, [n, 1])`)".into());
                }
                if a.rest != b.rest || na != nb {
                    return Err("`a` and `b` need the same batch dims".into());
                }
                for i in 0..na - 2 {
                    env.unify_dim(&a.dims[i], &b.dims[i]).map_err(|_| {
                        format!(
                            "`a` and `b` need the same batch dims; dim {i} differs: {} vs {}",
                            show(env, &a.dims[i]),
                            show(env, &b.dims[i])
                        )
                    })?;
                }
                let inner = if *left {
                    &b.dims[nb - 2]
                } else {
                    &b.dims[nb - 1]
                };
                env.unify_dim(&n, inner).map_err(|_| {
                    format!(
                        "`a` is {n} x {n}, so `b` needs {} dim {} (left = {left}), found {}",
                        if *left { "row" } else { "column" },
                        show(env, &n),
                        show(env, inner),
                        n = show(env, &n),
                    )
                })?;
                Ok(b.clone())
            }
            _ => Err("internal: no shape rule".into()),
        }
    }
}

/// Checks a tensor of square matrices (`[..., n, n]`) and returns `n`.
fn square_shape(env: &mut Env, s: &Shape, op: &str) -> Result<Dim, String> {
    let r = s.dims.len();
    if r < 2 {
        return Err(format!(
            "`{op}` needs square matrices [..., n, n] (rank >= 2 named dims)"
        ));
    }
    env.unify_dim(&s.dims[r - 2], &s.dims[r - 1]).map_err(|_| {
        format!(
            "`{op}` needs square matrices, but the last two dims are {} and {}",
            show(env, &s.dims[r - 2]),
            show(env, &s.dims[r - 1])
        )
    })
}

fn reduce_shape(s: &Shape, axes: &[i64], keepdim: bool) -> Result<Shape, String> {
    if s.rest.is_some() {
        if axes.is_empty() {
            return if keepdim {
                Err("keepdim over all axes needs a known rank".into())
            } else {
                Ok(Shape::scalar())
            };
        }
        if axes
            .iter()
            .any(|a| *a >= 0 || a.unsigned_abs() > s.dims.len() as u64)
        {
            return Err(
                "after `...` only negative axes within the named dims can be reduced".into(),
            );
        }
    }
    let r = s.dims.len();
    let mut mask = vec![false; r];
    if axes.is_empty() {
        mask.iter_mut().for_each(|m| *m = true);
    }
    for &a in axes {
        let i = norm_axis(a, r).ok_or_else(|| format!("axis {a} out of range for rank {r}"))?;
        if mask[i] && !axes.is_empty() {
            return Err(format!("axis {a} given twice"));
        }
        mask[i] = true;
    }
    let mut dims = Vec::new();
    for (i, d) in s.dims.iter().enumerate() {
        if !mask[i] {
            dims.push(d.clone());
        } else if keepdim {
            dims.push(Dim::Known(1));
        }
    }
    Ok(Shape {
        rest: if axes.is_empty() { None } else { s.rest },
        dims,
    })
}

/// Python slice length (computed in `i128`: no bound, step or size overflows).
pub fn slice_len(n: i64, lo: Option<i64>, hi: Option<i64>, step: i64) -> u64 {
    let n = n.max(0) as i128;
    let step = step as i128;
    let wrap = |v: i64| {
        let v = v as i128;
        if v < 0 {
            v + n
        } else {
            v
        }
    };
    let (start, stop) = if step > 0 {
        let s = lo.map(|v| wrap(v).clamp(0, n)).unwrap_or(0);
        let e = hi.map(|v| wrap(v).clamp(0, n)).unwrap_or(n);
        (s, e)
    } else {
        let s = lo.map(|v| wrap(v).clamp(-1, n - 1)).unwrap_or(n - 1);
        let e = hi.map(|v| wrap(v).clamp(-1, n - 1)).unwrap_or(-1);
        (s, e)
    };
    let len = if step > 0 && stop > start {
        (stop - start + step - 1) / step
    } else if step < 0 && start > stop {
        (start - stop - step - 1) / -step
    } else {
        0
    };
    len as u64
}

fn divide(env: &Env, num: &Dim, den: &Dim) -> Option<Dim> {
    let (num, den) = (env.dim(num), env.dim(den));
    let parts = |d: &Dim| -> (u64, Vec<Dim>) {
        match d {
            Dim::Known(n) => (*n, vec![]),
            Dim::Prod(c, xs) => (*c, xs.clone()),
            other => (1, vec![other.clone()]),
        }
    };
    let (cn, mut an) = parts(&num);
    let (cd, ad) = parts(&den);
    if cd == 0 || cn % cd != 0 {
        return None;
    }
    for a in ad {
        let pos = an.iter().position(|x| *x == a)?;
        an.remove(pos);
    }
    Some(env.dim(&Dim::Prod(cn / cd, an)))
}

fn show(env: &Env, d: &Dim) -> String {
    env.fmt_dim(d)
}

// ------------------------------------------------------------------------------------------
// Dtype rules
// ------------------------------------------------------------------------------------------

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

impl Prim {
    /// The output dtype from the input dtypes (`default` is the model's default float type).
    pub fn infer_dtype(&self, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        let k = |env: &Env, a: &ArgDt| match env.dt(a.dt) {
            DT::Known(t) => Some(t),
            DT::Var(_) => None,
        };
        // The common compute type of several operands, with weak literals and float vars.
        let common = |env: &mut Env, args: &[ArgDt]| -> Result<DT, String> {
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
        };
        let names: Vec<String> = ins
            .iter()
            .map(|a| match env.dt(a.dt) {
                DT::Known(t) => t.name().to_string(),
                DT::Var(_) => "float".into(),
            })
            .collect();
        match self {
            Prim::Cast(t) => Ok(DT::Known(*t)),
            Prim::StopGradient => Ok(ins[0].dt),
            Prim::Where => {
                if let Some(t) = k(env, &ins[0]) {
                    if t != DType::Bool {
                        return Err(format!("the condition of `where_` must be bool, found {t}"));
                    }
                }
                common(env, &ins[1..])
            }
            p if p.is_logical() => {
                for (a, n) in ins.iter().zip(&names) {
                    if a.weak.is_none() && k(env, a) != Some(DType::Bool) {
                        return Err(format!("`{}` needs bool operands, found {n}", p.name()));
                    }
                }
                Ok(DT::Known(DType::Bool))
            }
            p if p.is_comparison() => {
                common(env, ins)?;
                Ok(DT::Known(DType::Bool))
            }
            p if p.float_only() => {
                let t = common(env, ins)?;
                match env.dt(t) {
                    DT::Known(x) if !x.is_float() => Err(format!(
                        "`{}` needs a float tensor, found {x}; use `cast(x, dtype = f32)` first",
                        p.name()
                    )),
                    other => Ok(other),
                }
            }
            Prim::Div => {
                let t = common(env, ins)?;
                Ok(match env.dt(t) {
                    DT::Known(x) if !x.is_float() => DT::Known(default),
                    other => other,
                })
            }
            p if p.is_elementwise() => {
                let t = common(env, ins)?;
                if let DT::Known(DType::Bool) = env.dt(t) {
                    if !matches!(p, Prim::Minimum | Prim::Maximum) {
                        return Err(format!("`{}` is not defined on bool tensors", p.name()));
                    }
                }
                Ok(t)
            }
            Prim::Matmul { .. } => {
                let (a, b) = (ins[0].dt, ins[1].dt);
                let t = env.unify_dt(a, b).map_err(|_| {
                    format!("dtype mismatch in `matmul`: {} vs {}", names[0], names[1])
                })?;
                if let DT::Known(DType::Bool) = env.dt(t) {
                    return Err("`matmul` is not defined on bool tensors".into());
                }
                Ok(t)
            }
            Prim::Concat(_) | Prim::Stack(_) => {
                let mut t = ins[0].dt;
                for (a, n) in ins.iter().zip(&names).skip(1) {
                    t = env.unify_dt(t, a.dt).map_err(|_| {
                        format!("dtype mismatch in `{}`: {} vs {n}", self.name(), names[0])
                    })?;
                }
                Ok(t)
            }
            Prim::SolveTriangular { .. } => {
                let t = env.unify_dt(ins[0].dt, ins[1].dt).map_err(|_| {
                    format!(
                        "dtype mismatch in `solve_triangular`: {} vs {}",
                        names[0], names[1]
                    )
                })?;
                match env.dt(t) {
                    DT::Known(x) if !x.is_float() => Err(format!(
                        "`solve_triangular` needs float tensors, found {x}; use `cast(x, dtype = f32)` first"
                    )),
                    other => Ok(other),
                }
            }
            Prim::Gather(_) | Prim::TakeAlong => {
                match k(env, &ins[1]) {
                    Some(DType::I32 | DType::I64) => {}
                    _ => {
                        return Err(format!(
                            "`gather` needs integer indices, found {}",
                            names[1]
                        ))
                    }
                }
                Ok(ins[0].dt)
            }
            Prim::Reduce(kind, ..) => match (kind, k(env, &ins[0])) {
                (ReduceKind::Mean, Some(t)) if !t.is_float() => Ok(DT::Known(default)),
                (ReduceKind::Sum | ReduceKind::Prod, Some(DType::Bool)) => {
                    Ok(DT::Known(DType::I64))
                }
                (ReduceKind::Max | ReduceKind::Min, Some(DType::Bool)) => {
                    Err(format!("`{}` is not defined on bool tensors", self.name()))
                }
                _ => Ok(ins[0].dt),
            },
            Prim::Variance(..) => match k(env, &ins[0]) {
                Some(t) if !t.is_float() => Ok(DT::Known(default)),
                _ => Ok(ins[0].dt),
            },
            Prim::ArgReduce { .. } => Ok(DT::Known(DType::I64)),
            Prim::Arange { int, dtype, .. } => Ok(DT::Known(dtype.unwrap_or(if *int {
                DType::I64
            } else {
                default
            }))),
            Prim::SizeRatio => Ok(ins[0].dt),
            _ => Ok(ins[0].dt),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Lowering
// ------------------------------------------------------------------------------------------

/// The Rust type a dtype computes in (`f16`/`bf16` widen to `f32`).
pub fn acc_type(t: DType) -> TokenStream {
    match t {
        DType::F16 | DType::BF16 | DType::F32 => quote!(f32),
        DType::F64 => quote!(f64),
        DType::I32 => quote!(i32),
        DType::I64 => quote!(i64),
        DType::Bool => quote!(bool),
    }
}

/// The storage Rust type of a dtype.
pub fn storage_type(t: DType) -> TokenStream {
    match t {
        DType::F16 => quote!(::mithril::half::f16),
        DType::BF16 => quote!(::mithril::half::bf16),
        DType::F32 => quote!(f32),
        DType::F64 => quote!(f64),
        DType::I32 => quote!(i32),
        DType::I64 => quote!(i64),
        DType::Bool => quote!(bool),
    }
}

/// The accumulation domain of a dtype.
pub fn acc_dtype(t: DType) -> DType {
    match t {
        DType::F16 | DType::BF16 => DType::F32,
        t => t,
    }
}

/// Convert a value of compute type `from` to compute type `to`.
pub fn convert(v: TokenStream, from: DType, to: DType) -> TokenStream {
    let (from, to) = (acc_dtype(from), acc_dtype(to));
    if from == to {
        return v;
    }
    let ty = acc_type(to);
    match (from, to) {
        (DType::Bool, DType::F32 | DType::F64) => {
            quote!((if #v { 1.0 as #ty } else { 0.0 as #ty }))
        }
        (DType::Bool, _) => quote!((#v as #ty)),
        (_, DType::Bool) => {
            let z = acc_type(from);
            quote!((#v != (0 as #z)))
        }
        _ => quote!((#v as #ty)),
    }
}

/// A literal in a compute type.
pub fn literal(s: Scalar, t: DType) -> TokenStream {
    let t = acc_dtype(t);
    match (t, s) {
        (DType::Bool, s) => {
            let b = s.as_f64() != 0.0;
            quote!(#b)
        }
        (DType::F32, s) => {
            let v = s.as_f64() as f32;
            float_tokens_f32(v)
        }
        (DType::F64, s) => {
            let v = s.as_f64();
            float_tokens_f64(v)
        }
        (DType::I32, s) => {
            let v = s.as_f64() as i32;
            quote!(#v)
        }
        (_, s) => {
            let v = match s {
                Scalar::Int(i) => i,
                other => other.as_f64() as i64,
            };
            quote!(#v)
        }
    }
}

fn float_tokens_f32(v: f32) -> TokenStream {
    if v.is_nan() {
        quote!(f32::NAN)
    } else if v == f32::INFINITY {
        quote!(f32::INFINITY)
    } else if v == f32::NEG_INFINITY {
        quote!(f32::NEG_INFINITY)
    } else {
        quote!(#v)
    }
}

fn float_tokens_f64(v: f64) -> TokenStream {
    if v.is_nan() {
        quote!(f64::NAN)
    } else if v == f64::INFINITY {
        quote!(f64::INFINITY)
    } else if v == f64::NEG_INFINITY {
        quote!(f64::NEG_INFINITY)
    } else {
        quote!(#v)
    }
}

impl Prim {
    /// The scalar expression of an elementwise primitive on already-converted operands `a`
    /// (all in compute type `t`). The result is in compute type of the op's output dtype.
    pub fn scalar(&self, a: &[TokenStream], t: DType) -> TokenStream {
        let num = quote!(::mithril::rt::scalar::Num);
        let real = quote!(::mithril::rt::scalar::Real);
        let s = quote!(::mithril::rt::scalar);
        let vmath = quote!(::mithril::rt::vmath);
        let vm = acc_dtype(t) == DType::F32;
        let x = &a[0];
        match self {
            Prim::Add => {
                let y = &a[1];
                quote!(#num::add(#x, #y))
            }
            Prim::Sub => {
                let y = &a[1];
                quote!(#num::sub(#x, #y))
            }
            Prim::Mul => {
                let y = &a[1];
                quote!(#num::mul(#x, #y))
            }
            Prim::Div => {
                let y = &a[1];
                quote!(#num::div(#x, #y))
            }
            Prim::FloorDiv => {
                let y = &a[1];
                quote!(#num::floor_div(#x, #y))
            }
            Prim::Rem => {
                let y = &a[1];
                quote!(#num::rem(#x, #y))
            }
            Prim::Pow => {
                let y = &a[1];
                if acc_dtype(t).is_float() {
                    quote!(#real::powf(#x, #y))
                } else {
                    quote!(#s::int_pow(#x, #y))
                }
            }
            Prim::Minimum => {
                let y = &a[1];
                if t == DType::Bool {
                    quote!((#x & #y))
                } else {
                    quote!(#num::min(#x, #y))
                }
            }
            Prim::Maximum => {
                let y = &a[1];
                if t == DType::Bool {
                    quote!((#x | #y))
                } else {
                    quote!(#num::max(#x, #y))
                }
            }
            Prim::Eq => {
                let y = &a[1];
                quote!((#x == #y))
            }
            Prim::Ne => {
                let y = &a[1];
                quote!((#x != #y))
            }
            Prim::Lt => {
                let y = &a[1];
                quote!((#x < #y))
            }
            Prim::Le => {
                let y = &a[1];
                quote!((#x <= #y))
            }
            Prim::Gt => {
                let y = &a[1];
                quote!((#x > #y))
            }
            Prim::Ge => {
                let y = &a[1];
                quote!((#x >= #y))
            }
            Prim::And => {
                let y = &a[1];
                quote!((#x & #y))
            }
            Prim::Or => {
                let y = &a[1];
                quote!((#x | #y))
            }
            Prim::Xor => {
                let y = &a[1];
                quote!((#x ^ #y))
            }
            Prim::Not => quote!((!#x)),
            Prim::Neg => quote!(#num::neg(#x)),
            Prim::Abs => quote!(#num::abs(#x)),
            // f32 compute (also f16/bf16): the branch-free `vmath` functions, which vectorize
            // inside the multiversioned elementwise drivers (errors of a few ulp, documented in
            // `mithril_kernels::vmath`); f64 keeps libm.
            Prim::Exp if vm => quote!(#vmath::exp(#x)),
            Prim::Log if vm => quote!(#vmath::ln(#x)),
            // sin/cos stay on libm: vmath's are accurate only for |x| <= 8192
            Prim::Tanh if vm => quote!(#vmath::tanh(#x)),
            Prim::Erf if vm => quote!(#vmath::erf(#x)),
            Prim::Sigmoid if vm => quote!(#vmath::sigmoid(#x)),
            Prim::Softplus if vm => quote!(#vmath::softplus(#x)),
            Prim::Gelu if vm => quote!(#vmath::gelu_erf(#x)),
            Prim::GeluTanh if vm => quote!(#vmath::gelu_tanh(#x)),
            Prim::Exp => quote!(#real::exp(#x)),
            Prim::Log => quote!(#real::ln(#x)),
            Prim::Sqrt => quote!(#real::sqrt(#x)),
            Prim::Sin => quote!(#real::sin(#x)),
            Prim::Cos => quote!(#real::cos(#x)),
            Prim::Tanh => quote!(#real::tanh(#x)),
            Prim::Erf => quote!(#real::erf(#x)),
            Prim::Square => quote!(#s::square(#x)),
            Prim::Sign => quote!(#num::sign(#x)),
            Prim::Relu => quote!(#s::relu(#x)),
            Prim::Sigmoid => quote!(#s::sigmoid(#x)),
            Prim::Softplus => quote!(#s::softplus(#x)),
            Prim::Gelu => quote!(#s::gelu_erf(#x)),
            Prim::GeluTanh => quote!(#s::gelu_tanh(#x)),
            Prim::LeakyRelu(slope) => {
                let sl = literal(Scalar::Float(*slope), t);
                quote!(#s::leaky_relu(#x, #sl))
            }
            Prim::Clamp(lo, hi) => {
                let (l, h) = (
                    literal(Scalar::Float(*lo), t),
                    literal(Scalar::Float(*hi), t),
                );
                if acc_dtype(t).is_float() {
                    quote!(#s::clamp(#x, #l, #h))
                } else {
                    let (l, h) = (clamp_int(*lo, t), clamp_int(*hi, t));
                    quote!(#s::clamp(#x, #l, #h))
                }
            }
            Prim::Cast(_) | Prim::StopGradient => x.clone(),
            Prim::RobustSqrt(_) | Prim::RobustLog(_) | Prim::StableReciprocal(_) => {
                let c = literal(Scalar::Float(robust_threshold(self, t)), t);
                let f = match self {
                    Prim::RobustSqrt(_) => quote!(robust_sqrt),
                    Prim::RobustLog(_) => quote!(robust_log),
                    _ => quote!(stable_reciprocal),
                };
                quote!(#s::#f(#x, #c))
            }
            Prim::RobustPower(_) => {
                let y = &a[1];
                let c = literal(Scalar::Float(robust_threshold(self, t)), t);
                quote!(#s::robust_power(#x, #y, #c))
            }
            Prim::Where => {
                let (y, z) = (&a[1], &a[2]);
                quote!((if #x { #y } else { #z }))
            }
            _ => quote!(compile_error!("internal: not elementwise")),
        }
    }

    /// The dtype the operands of an elementwise op are computed in, given the op's inputs and
    /// output dtypes.
    pub fn compute_dtype(&self, ins: &[DType], out: DType) -> DType {
        match self {
            p if p.is_comparison() => ins
                .iter()
                .copied()
                .filter(|d| *d != DType::Bool)
                .fold(ins[0], promote),
            Prim::Cast(_) => ins[0],
            Prim::Where => out,
            _ => out,
        }
    }

    /// For `where_` the first operand keeps its own (bool) type.
    pub fn operand_dtype(&self, i: usize, compute: DType, own: DType) -> DType {
        match (self, i) {
            (Prim::Where, 0) => own,
            (Prim::Cast(_), _) => own,
            _ => compute,
        }
    }

    /// A call of `mithril::rt::ops` for a non-elementwise primitive. `a` are expressions of
    /// `ArrayViewD` values.
    /// The runtime call computing this primitive from argument views `a` into destination `d`
    /// (a `mithril::rt::Dest`); it evaluates to `Result<ArrayViewMutD>`.
    pub fn call(
        &self,
        a: &[TokenStream],
        in_dt: &[DType],
        out_rust: &TokenStream,
        d: &TokenStream,
    ) -> TokenStream {
        let ops = quote!(::mithril::rt::ops);
        let x0 = a.first().cloned().unwrap_or_default();
        let x = &x0;
        let axes = |v: &Vec<i64>| {
            let v: Vec<isize> = v.iter().map(|&i| i as isize).collect();
            quote!(&[#(#v),*])
        };
        match self {
            Prim::Matmul { ta, tb } => {
                let y = &a[1];
                quote!(#ops::matmul_to(&#x, &#y, #ta, #tb, #d))
            }
            Prim::Transpose(perm) => {
                let perm = perm.clone();
                quote!(#ops::transpose_to(&#x, &[#(#perm),*], #d))
            }
            Prim::Flatten(s, e) => {
                let (s, e) = (*s as isize, *e as isize);
                quote!(#ops::flatten_to(&#x, #s, #e, #d))
            }
            Prim::Concat(axis) => {
                let axis = *axis as isize;
                quote!(#ops::concat_to(&[#(#a.clone()),*], #axis, #d))
            }
            Prim::Slice(args) => {
                let args = args.iter().map(slice_arg_tokens);
                quote!(#ops::slice_to(&#x, &[#(#args),*], #d))
            }
            Prim::Gather(axis) => {
                let y = &a[1];
                let axis = *axis as isize;
                quote!(#ops::gather_to(&#x, &#y, #axis, #d))
            }
            Prim::TakeAlong => {
                let y = &a[1];
                quote!(#ops::take_along_to(&#x, &#y, #d))
            }
            Prim::Reduce(kind, ax, keep) => {
                let ax = axes(ax);
                let f = match kind {
                    ReduceKind::Sum => quote!(sum_to),
                    ReduceKind::Mean => quote!(mean_to),
                    ReduceKind::Max => quote!(max_to),
                    ReduceKind::Min => quote!(min_to),
                    ReduceKind::Prod => quote!(prod_to),
                };
                // `mean` of integers and `sum`/`prod` of bools change the dtype: convert first
                let widen = match (kind, in_dt.first()) {
                    (ReduceKind::Mean, Some(t)) => !t.is_float(),
                    (ReduceKind::Sum | ReduceKind::Prod, Some(t)) => *t == DType::Bool,
                    _ => false,
                };
                if widen {
                    quote!(#ops::#f(&#ops::cast::<_, #out_rust>(&#x).view(), #ax, #keep, #d))
                } else {
                    quote!(#ops::#f(&#x, #ax, #keep, #d))
                }
            }
            Prim::Variance(ax, keep, corr) => {
                let ax = axes(ax);
                if in_dt.first().is_some_and(|t| !t.is_float()) {
                    quote!(#ops::variance_to(&#ops::cast::<_, #out_rust>(&#x).view(), #ax, #keep, #corr, #d))
                } else {
                    quote!(#ops::variance_to(&#x, #ax, #keep, #corr, #d))
                }
            }
            Prim::ArgReduce { max, axis, keepdim } => {
                let axis = *axis as isize;
                if *max {
                    quote!(#ops::argmax_to(&#x, #axis, #keepdim, #d))
                } else {
                    quote!(#ops::argmin_to(&#x, #axis, #keepdim, #d))
                }
            }
            Prim::Softmax(axis) => {
                let axis = *axis as isize;
                quote!(#ops::softmax_to(&#x, #axis, #d))
            }
            Prim::LogSoftmax(axis) => {
                let axis = *axis as isize;
                quote!(#ops::log_softmax_to(&#x, #axis, #d))
            }
            Prim::Unsqueeze(axes) => {
                let axes = axes.clone();
                quote!(#ops::unsqueeze_to(&#x, &[#(#axes),*], #d))
            }
            Prim::BroadcastLike => {
                let y = &a[1];
                quote!(#ops::broadcast_like_to(&#x, &#y, #d))
            }
            Prim::ReshapeLike => {
                let y = &a[1];
                quote!(#ops::reshape_like_to(&#x, &#y, #d))
            }
            Prim::SumLike => {
                let y = &a[1];
                quote!(#ops::sum_like_to(&#x, &#y, #d))
            }
            Prim::SizeRatio => {
                let y = &a[1];
                quote!(#ops::size_ratio_to::<#out_rust, _, _>(&#x, &#y, #d))
            }
            Prim::TakeAlongGrad => {
                let (y, z) = (&a[1], &a[2]);
                quote!(#ops::take_along_backward_to(&#x, &#y, &#z, #d))
            }
            Prim::GatherGrad(axis) => {
                let (y, z) = (&a[1], &a[2]);
                let axis = *axis as isize;
                quote!(#ops::gather_backward_to(&#x, &#y, &#z, #axis, #d))
            }
            Prim::SliceGrad(args) => {
                let y = &a[1];
                let args = args.iter().map(slice_arg_tokens);
                quote!(#ops::slice_backward_to(&#x, &#y, &[#(#args),*], #d))
            }
            Prim::ConcatPart(axis, k) => {
                let parts = &a[1..];
                let axis = *axis as isize;
                quote!(#ops::concat_part_to(&#x, &[#(#parts.shape()),*], #axis, #k, #d))
            }
            Prim::Tril(k) => quote!(#ops::tril_to(&#x, #k, #d)),
            Prim::Triu(k) => quote!(#ops::triu_to(&#x, #k, #d)),
            Prim::FullLike(v) => {
                let v = *v;
                quote!(#ops::full_like_to(&#x, #v, #d))
            }
            Prim::Stack(axis) => {
                let axis = *axis as isize;
                quote!(#ops::stack_to(&[#(#a.clone()),*], #axis, #d))
            }
            Prim::Cholesky => quote!(#ops::cholesky_to(&#x, #d)),
            Prim::Eigvalsh => quote!(#ops::eigvalsh_to(&#x, #d)),
            Prim::EighVectors => quote!(#ops::eigh_vectors_to(&#x, #d)),
            Prim::SolveTriangular { upper, left, trans } => {
                let y = &a[1];
                quote!(#ops::solve_triangular_to(&#x, &#y, #upper, #left, #trans, #d))
            }
            Prim::Arange { .. } => {
                // the length is computed by codegen (it may be symbolic)
                quote!(compile_error!("internal: arange lowers in codegen"))
            }
            Prim::Reshape(_) => {
                // the target dims are computed by codegen (they may be symbolic)
                quote!(compile_error!("internal: reshape lowers in codegen"))
            }
            _ => quote!(compile_error!("internal: no call lowering")),
        }
    }
}

fn clamp_int(v: f64, t: DType) -> TokenStream {
    match acc_dtype(t) {
        DType::I32 => {
            let v = if v.is_infinite() {
                if v > 0.0 {
                    i32::MAX
                } else {
                    i32::MIN
                }
            } else {
                v as i32
            };
            quote!(#v)
        }
        _ => {
            let v = if v.is_infinite() {
                if v > 0.0 {
                    i64::MAX
                } else {
                    i64::MIN
                }
            } else {
                v as i64
            };
            quote!(#v)
        }
    }
}

fn opt(v: &Option<i64>) -> TokenStream {
    match v {
        Some(i) => {
            let i = *i as isize;
            quote!(::std::option::Option::Some(#i))
        }
        None => quote!(::std::option::Option::None),
    }
}

fn slice_arg_tokens(s: &SliceArg) -> TokenStream {
    let ops = quote!(::mithril::rt::ops);
    match s {
        SliceArg::NewAxis => quote!(#ops::SliceArg::NewAxis),
        SliceArg::Index(i) => {
            let i = *i as isize;
            quote!(#ops::SliceArg::Index(#i))
        }
        SliceArg::Range(lo, hi, st) => {
            let lo = opt(lo);
            let hi = opt(hi);
            let st = *st as isize;
            quote!(#ops::SliceArg::Range { start: #lo, end: #hi, step: #st })
        }
    }
}
