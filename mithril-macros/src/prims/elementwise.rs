//! Elementwise primitives: unary, binary and ternary (`where_`), the robust forms and `cast`.
//! They broadcast their inputs (NumPy rules), fuse into one loop (`passes::fuse`) and lower to a
//! scalar expression: Rust (`scalar`, `mithril::rt::scalar` / `vmath`) on the CPU, C (`scalar_c`,
//! the `mt_*` device functions of `backends::cuda::kernel_text::FUSED_PRELUDE`) on CUDA.

use super::attrs::{float_attr, get, sig, AttrVal, Sig, BIN, UN};
use super::cuda::CudaCx;
use super::grad::Builder;
use super::lower::{acc_dtype, c_literal, literal};
use super::plan::{self as pt, PlanCx};
use super::rules::{broadcast, common, dt_names, float_only, known, promote, ArgDt};
use super::Family;
use crate::ir::{DType, Env, FExpr, NodeId, Scalar, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The elementwise family.
pub struct Rules;

const NAMES: &[&str] = &[
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
];

impl Family for Rules {
    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        // one generated kernel: the op's C expression (`scalar_c`) over its broadcast operands
        let n = cx.n_args();
        let arg_dts: Vec<DType> = (0..n).map(|k| cx.dt(k)).collect();
        let out = cx.out_dt();
        let e = FExpr::Op(
            p.clone(),
            (0..n).map(FExpr::Arg).collect(),
            out,
            p.compute_dtype(&arg_dts, out),
        );
        let ops = (0..n)
            .map(|k| cx.operand(k))
            .collect::<Result<Vec<_>, _>>()?;
        cx.elementwise(&e, &ops)
    }

    fn plan(&self, p: &Prim, cx: &PlanCx<'_>) -> Result<String, String> {
        let t = cx.out;
        let z = || pt::lit(Scalar::Float(0.0), t);
        let th = || pt::lit(Scalar::Float(robust_threshold(p, t)), t);
        let (name, imm) = match p {
            Prim::Add => ("add", [z(), z()]),
            Prim::Sub => ("sub", [z(), z()]),
            Prim::Mul => ("mul", [z(), z()]),
            Prim::Div => ("div", [z(), z()]),
            Prim::FloorDiv => ("floor_div", [z(), z()]),
            Prim::Rem => ("rem", [z(), z()]),
            Prim::Pow => ("pow", [z(), z()]),
            Prim::Minimum => ("minimum", [z(), z()]),
            Prim::Maximum => ("maximum", [z(), z()]),
            Prim::Eq => ("eq", [z(), z()]),
            Prim::Ne => ("ne", [z(), z()]),
            Prim::Lt => ("lt", [z(), z()]),
            Prim::Le => ("le", [z(), z()]),
            Prim::Gt => ("gt", [z(), z()]),
            Prim::Ge => ("ge", [z(), z()]),
            Prim::And => ("and", [z(), z()]),
            Prim::Or => ("or", [z(), z()]),
            Prim::Xor => ("xor", [z(), z()]),
            Prim::Not => ("not", [z(), z()]),
            Prim::Neg => ("neg", [z(), z()]),
            Prim::Abs => ("abs", [z(), z()]),
            Prim::Exp => ("exp", [z(), z()]),
            Prim::Log => ("log", [z(), z()]),
            Prim::Sqrt => ("sqrt", [z(), z()]),
            Prim::Sin => ("sin", [z(), z()]),
            Prim::Cos => ("cos", [z(), z()]),
            Prim::Tanh => ("tanh", [z(), z()]),
            Prim::Erf => ("erf", [z(), z()]),
            Prim::Square => ("square", [z(), z()]),
            Prim::Sign => ("sign", [z(), z()]),
            Prim::Relu => ("relu", [z(), z()]),
            Prim::Sigmoid => ("sigmoid", [z(), z()]),
            Prim::Softplus => ("softplus", [z(), z()]),
            Prim::Gelu => ("gelu", [z(), z()]),
            Prim::GeluTanh => ("gelu_tanh", [z(), z()]),
            Prim::Where => ("where", [z(), z()]),
            Prim::LeakyRelu(s) => ("leaky_relu", [pt::lit(Scalar::Float(*s), t), z()]),
            Prim::Clamp(lo, hi) if acc_dtype(t).is_float() => (
                "clamp",
                [
                    pt::lit(Scalar::Float(*lo), t),
                    pt::lit(Scalar::Float(*hi), t),
                ],
            ),
            Prim::Clamp(lo, hi) => ("clamp", [pt::clamp_int(*lo, t), pt::clamp_int(*hi, t)]),
            Prim::RobustSqrt(_) => ("robust_sqrt", [th(), z()]),
            Prim::RobustLog(_) => ("robust_log", [th(), z()]),
            Prim::StableReciprocal(_) => ("stable_reciprocal", [th(), z()]),
            Prim::RobustPower(_) => ("robust_power", [th(), z()]),
            // cast and stop_gradient are conversions / the identity: the program builder
            // handles them without an op
            _ => return Err(format!("`{}` is no program op", p.name())),
        };
        Ok(format!("{name} {} {}", imm[0], imm[1]))
    }

    fn names(&self) -> &'static [&'static str] {
        NAMES
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        Some(match name {
            "add" | "subtract" | "multiply" | "divide" | "floor_divide" | "remainder" | "power"
            | "minimum" | "maximum" | "equal" | "not_equal" | "less" | "less_equal" | "greater"
            | "greater_equal" | "logical_and" | "logical_or" | "logical_xor" => sig(BIN, &[]),
            "stop_gradient" => sig(UN, &[]),
            "robust_sqrt" | "robust_log" | "stable_reciprocal" => sig(UN, &["threshold"]),
            "robust_power" => sig(&["base", "exponent"], &["threshold"]),
            "negate" | "abs" | "exp" | "log" | "sqrt" | "sin" | "cos" | "tanh" | "erf"
            | "square" | "sign" | "relu" | "sigmoid" | "softplus" | "logical_not" => sig(UN, &[]),
            "gelu" => sig(UN, &["approximate"]),
            "leaky_relu" => sig(UN, &["slope"]),
            "clamp" => sig(UN, &["min", "max"]),
            "cast" => sig(UN, &["dtype"]),
            "where_" => sig(&["cond", "left", "right"], &[]),
            _ => return None,
        })
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        build(name, attrs)
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
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
            _ => "?",
        }
    }

    fn is_elementwise(&self) -> bool {
        true
    }

    fn shape(&self, _: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        broadcast(env, ins)
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        match p {
            Prim::Cast(t) => Ok(DT::Known(*t)),
            Prim::StopGradient => Ok(ins[0].dt),
            Prim::Where => {
                if let Some(t) = known(env, &ins[0]) {
                    if t != DType::Bool {
                        return Err(format!("the condition of `where_` must be bool, found {t}"));
                    }
                }
                common(env, &ins[1..], default)
            }
            p if is_logical(p) => {
                let names = dt_names(env, ins);
                for (a, n) in ins.iter().zip(&names) {
                    if a.weak.is_none() && known(env, a) != Some(DType::Bool) {
                        return Err(format!("`{}` needs bool operands, found {n}", p.name()));
                    }
                }
                Ok(DT::Known(DType::Bool))
            }
            p if is_comparison(p) => {
                common(env, ins, default)?;
                Ok(DT::Known(DType::Bool))
            }
            p if is_float_only(p) => float_only(p.name(), env, ins, default),
            Prim::Div => {
                let t = common(env, ins, default)?;
                Ok(match env.dt(t) {
                    DT::Known(x) if !x.is_float() => DT::Known(default),
                    other => other,
                })
            }
            p => {
                let t = common(env, ins, default)?;
                if let DT::Known(DType::Bool) = env.dt(t) {
                    if !matches!(p, Prim::Minimum | Prim::Maximum) {
                        return Err(format!("`{}` is not defined on bool tensors", p.name()));
                    }
                }
                Ok(t)
            }
        }
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        y: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        match p {
            Prim::Add
            | Prim::Sub
            | Prim::Mul
            | Prim::Div
            | Prim::Pow
            | Prim::Minimum
            | Prim::Maximum
            | Prim::Rem
            | Prim::Where => vjp_arith(b, p, x, y, gy),
            Prim::RobustSqrt(_)
            | Prim::RobustLog(_)
            | Prim::StableReciprocal(_)
            | Prim::RobustPower(_) => vjp_robust(b, p, x, y, gy),
            Prim::Eq
            | Prim::Ne
            | Prim::Lt
            | Prim::Le
            | Prim::Gt
            | Prim::Ge
            | Prim::And
            | Prim::Or
            | Prim::Xor
            | Prim::Not
            | Prim::Sign
            | Prim::FloorDiv => vec![None; x.len()],
            Prim::Cast(_) => vec![Some(gy)],
            Prim::StopGradient => vec![None],
            _ => vjp_unary(b, p, x, y, gy),
        }
    }

    fn scalar(&self, p: &Prim, a: &[TokenStream], t: DType) -> TokenStream {
        match p {
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
            | Prim::Xor => scalar_binary(p, &a[0], &a[1], t),
            _ => scalar_other(p, a, t),
        }
    }

    fn scalar_c(&self, p: &Prim, a: &[String], t: DType) -> Result<String, String> {
        scalar_c(p, a, t)
    }

    fn fold(&self, p: &Prim, a: &[Scalar], out: DType) -> Option<Scalar> {
        fold(p, a, out)
    }
}

/// The primitive for an elementwise DSL name.
fn build(name: &str, attrs: &[(&str, AttrVal)]) -> Result<Prim, String> {
    let get = |k: &str| get(attrs, k);
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
        _ => return Err(format!("unknown primitive `{name}`")),
    })
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

/// Commutative binary ops (CSE canonicalises their args).
pub fn is_commutative(p: &Prim) -> bool {
    matches!(
        p,
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

fn is_comparison(p: &Prim) -> bool {
    matches!(
        p,
        Prim::Eq | Prim::Ne | Prim::Lt | Prim::Le | Prim::Gt | Prim::Ge
    )
}

fn is_logical(p: &Prim) -> bool {
    matches!(p, Prim::And | Prim::Or | Prim::Xor | Prim::Not)
}

fn is_float_only(p: &Prim) -> bool {
    matches!(
        p,
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
    )
}

/// See [`Prim::first_data_operand`].
pub fn first_data_operand(p: &Prim) -> usize {
    if *p == Prim::Where {
        1
    } else {
        0
    }
}

/// See [`Prim::compute_dtype`].
pub fn compute_dtype(p: &Prim, ins: &[DType], out: DType) -> DType {
    match p {
        p if is_comparison(p) => ins
            .iter()
            .copied()
            .filter(|d| *d != DType::Bool)
            .fold(ins[0], promote),
        Prim::Cast(_) => ins[0],
        Prim::Where => out,
        _ => out,
    }
}

/// See [`Prim::operand_dtype`].
pub fn operand_dtype(p: &Prim, i: usize, compute: DType, own: DType) -> DType {
    match (p, i) {
        (Prim::Where, 0) => own,
        (Prim::Cast(_), _) => own,
        _ => compute,
    }
}

/// The gradients of the binary arithmetic ops and `where_`.
fn vjp_arith(
    b: &mut Builder,
    p: &Prim,
    x: &[NodeId],
    y: NodeId,
    gy: NodeId,
) -> Vec<Option<NodeId>> {
    use Prim::*;
    match p {
        Add => vec![Some(gy), Some(gy)],
        Sub => {
            let n = b.neg(gy);
            vec![Some(gy), Some(n)]
        }
        Mul => {
            let ga = b.mul(gy, x[1]);
            let gb = b.mul(gy, x[0]);
            vec![Some(ga), Some(gb)]
        }
        Div => {
            let ga = b.bin(Div, gy, x[1]);
            // -gy * y / b
            let t = b.mul(ga, y);
            let gb = b.neg(t);
            vec![Some(ga), Some(gb)]
        }
        Pow => {
            // d/da = b * a^(b-1) (not b * y / a, which is 0/0 at a = 0);
            // d/db = ln(a) * y, taken as 0 where a = 0 (as PyTorch)
            let one = b.lit(1.0);
            let bm1 = b.bin(Sub, x[1], one);
            let pw = b.bin(Pow, x[0], bm1);
            let t = b.mul(x[1], pw);
            let ga = b.mul(gy, t);
            let la = b.op(Log, &[x[0]]);
            let t2 = b.mul(la, y);
            let z = b.lit(0.0);
            let nz = b.bin(Ne, x[0], z);
            let t3 = b.mask(nz, t2);
            let gb = b.mul(gy, t3);
            vec![Some(ga), Some(gb)]
        }
        Minimum | Maximum => {
            // the gradient goes to the operand that was chosen; a tie splits it evenly (as
            // PyTorch and Mithril)
            let (wins_a, wins_b) = if *p == Minimum { (Lt, Gt) } else { (Gt, Lt) };
            let ca = b.bin(wins_a, x[0], x[1]);
            let cb = b.bin(wins_b, x[0], x[1]);
            let tie = b.bin(Eq, x[0], x[1]);
            let half = b.mul_lit(gy, 0.5);
            let shared = b.mask(tie, half);
            let ga = b.op(Where, &[ca, gy, shared]);
            let gb = b.op(Where, &[cb, gy, shared]);
            vec![Some(ga), Some(gb)]
        }
        Where => {
            let ga = b.mask(x[0], gy);
            let nc = b.op(Not, &[x[0]]);
            let gb = b.mask(nc, gy);
            vec![None, Some(ga), Some(gb)]
        }
        Rem => {
            // a % b = a - b * floor(a / b) (Python's sign convention): 1 and -floor(a / b)
            let q = b.bin(FloorDiv, x[0], x[1]);
            let t = b.mul(gy, q);
            let gb = b.neg(t);
            vec![Some(gy), Some(gb)]
        }
        _ => vec![None; x.len()],
    }
}

/// The gradients of the unary math ops.
fn vjp_unary(
    b: &mut Builder,
    p: &Prim,
    x: &[NodeId],
    y: NodeId,
    gy: NodeId,
) -> Vec<Option<NodeId>> {
    use Prim::*;
    match p {
        Neg => vec![Some(b.neg(gy))],
        Abs => {
            let s = b.op(Sign, &[x[0]]);
            vec![Some(b.mul(gy, s))]
        }
        Exp => vec![Some(b.mul(gy, y))],
        Log => vec![Some(b.bin(Div, gy, x[0]))],
        Sqrt => {
            let t = b.bin(Div, gy, y);
            vec![Some(b.mul_lit(t, 0.5))]
        }
        Sin => {
            let c = b.op(Cos, &[x[0]]);
            vec![Some(b.mul(gy, c))]
        }
        Cos => {
            let s = b.op(Sin, &[x[0]]);
            let t = b.mul(gy, s);
            vec![Some(b.neg(t))]
        }
        Tanh => {
            // 1 - y^2
            let y2 = b.op(Square, &[y]);
            let one = b.lit(1.0);
            let d = b.bin(Sub, one, y2);
            vec![Some(b.mul(gy, d))]
        }
        Erf => {
            // 2/sqrt(pi) * exp(-x^2)
            let x2 = b.op(Square, &[x[0]]);
            let nx2 = b.neg(x2);
            let e = b.op(Exp, &[nx2]);
            let d = b.mul_lit(e, std::f64::consts::FRAC_2_SQRT_PI);
            vec![Some(b.mul(gy, d))]
        }
        Square => {
            let t = b.mul(gy, x[0]);
            vec![Some(b.mul_lit(t, 2.0))]
        }
        Relu => {
            let z = b.lit(0.0);
            let c = b.bin(Gt, x[0], z);
            vec![Some(b.mask(c, gy))]
        }
        LeakyRelu(slope) => {
            let z = b.lit(0.0);
            let c = b.bin(Gt, x[0], z);
            let s = b.mul_lit(gy, *slope);
            vec![Some(b.op(Where, &[c, gy, s]))]
        }
        Clamp(lo, hi) => {
            let l = b.lit(*lo);
            let h = b.lit(*hi);
            let c1 = b.bin(Ge, x[0], l);
            let c2 = b.bin(Le, x[0], h);
            let c = b.bin(And, c1, c2);
            vec![Some(b.mask(c, gy))]
        }
        Sigmoid => {
            let one = b.lit(1.0);
            let om = b.bin(Sub, one, y);
            let d = b.mul(y, om);
            vec![Some(b.mul(gy, d))]
        }
        Softplus => {
            let s = b.op(Sigmoid, &[x[0]]);
            vec![Some(b.mul(gy, s))]
        }
        Gelu => {
            // Φ(x) + x φ(x), φ(x) = exp(-x²/2)/√(2π)
            let xs = b.mul_lit(x[0], std::f64::consts::FRAC_1_SQRT_2);
            let e = b.op(Erf, &[xs]);
            let one = b.lit(1.0);
            let e1 = b.bin(Add, one, e);
            let cdf = b.mul_lit(e1, 0.5);
            let x2 = b.op(Square, &[x[0]]);
            let h = b.mul_lit(x2, -0.5);
            let ex = b.op(Exp, &[h]);
            let pdf = b.mul_lit(ex, 1.0 / (2.0 * std::f64::consts::PI).sqrt());
            let xp = b.mul(x[0], pdf);
            let d = b.bin(Add, cdf, xp);
            vec![Some(b.mul(gy, d))]
        }
        GeluTanh => {
            // y = 0.5 x (1 + t), t = tanh(k (x + c x³)); dy = 0.5 (1 + t) + 0.5 x (1 - t²) k (1 + 3c x²)
            let k = 0.797_884_560_802_865_4;
            let c = 0.044715;
            let x2 = b.op(Square, &[x[0]]);
            let x3 = b.mul(x2, x[0]);
            let cx3 = b.mul_lit(x3, c);
            let inner0 = b.bin(Add, x[0], cx3);
            let inner = b.mul_lit(inner0, k);
            let t = b.op(Tanh, &[inner]);
            let one = b.lit(1.0);
            let opt = b.bin(Add, one, t);
            let left = b.mul_lit(opt, 0.5);
            let t2 = b.op(Square, &[t]);
            let one2 = b.lit(1.0);
            let omt2 = b.bin(Sub, one2, t2);
            let c3x2 = b.mul_lit(x2, 3.0 * c);
            let one3 = b.lit(1.0);
            let poly = b.bin(Add, one3, c3x2);
            let kp = b.mul_lit(poly, k);
            let r0 = b.mul(omt2, kp);
            let r1 = b.mul(x[0], r0);
            let right = b.mul_lit(r1, 0.5);
            let d = b.bin(Add, left, right);
            vec![Some(b.mul(gy, d))]
        }
        _ => vec![None; x.len()],
    }
}

/// The gradients of Mithril's robust forms (each piecewise around its threshold).
fn vjp_robust(
    b: &mut Builder,
    p: &Prim,
    x: &[NodeId],
    y: NodeId,
    gy: NodeId,
) -> Vec<Option<NodeId>> {
    use Prim::*;
    match p {
        RobustSqrt(_) => {
            // sign(x) / sqrt(c) below the threshold, sign(x) / (2 sqrt|x|) above (Mithril's)
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let half = b.lit(0.5);
            let above = b.bin(Div, half, y);
            let below = b.lit(1.0 / c.sqrt());
            let d = b.op(Where, &[small, below, above]);
            let s = b.op(Sign, &[x[0]]);
            let ds = b.mul(d, s);
            vec![Some(b.mul(gy, ds))]
        }
        RobustLog(_) => {
            // 1 / c below the threshold, 1 / |x| above, negated for x < 0 (+1/c at x = 0,
            // Mithril's)
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let one = b.lit(1.0);
            let above = b.bin(Div, one, ax);
            let below = b.lit(1.0 / c);
            let d = b.op(Where, &[small, below, above]);
            let t = b.mul(gy, d);
            let z = b.lit(0.0);
            let neg = b.bin(Lt, x[0], z);
            let nt = b.neg(t);
            vec![Some(b.op(Where, &[neg, nt, t]))]
        }
        StableReciprocal(_) => {
            // -1 / c² below the threshold, -1 / x² above (Mithril's)
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let x2 = b.op(Square, &[x[0]]);
            let m1 = b.lit(-1.0);
            let above = b.bin(Div, m1, x2);
            let below = b.lit(-1.0 / (c * c));
            let d = b.op(Where, &[small, below, above]);
            vec![Some(b.mul(gy, d))]
        }
        RobustPower(_) => {
            // y = |a|^e, or |a| / c in the region `|a| < c && e < 1 - ln c / ln|a|` (Mithril's):
            // d/da = sign(a) * (1 / c there, e |a|^(e-1) elsewhere);
            // d/de = 0 there and at a = 0, |a|^e ln|a| elsewhere
            let c = robust_threshold(p, b.dt_of(y));
            let ax = b.op(Abs, &[x[0]]);
            let la = b.op(Log, &[ax]);
            let lc = b.lit(c.ln());
            let q = b.bin(Div, lc, la);
            let one = b.lit(1.0);
            let r = b.bin(Sub, one, q);
            let e_low = b.bin(Lt, x[1], r);
            let cl = b.lit(c);
            let small = b.bin(Lt, ax, cl);
            let below = b.bin(And, small, e_low);
            let one = b.lit(1.0);
            let em1 = b.bin(Sub, x[1], one);
            let pw = b.bin(Pow, ax, em1);
            let above = b.mul(x[1], pw);
            let inv_c = b.lit(1.0 / c);
            let d = b.op(Where, &[below, inv_c, above]);
            let s = b.op(Sign, &[x[0]]);
            let ds = b.mul(d, s);
            let ga = b.mul(gy, ds);
            let z = b.lit(0.0);
            let nz = b.bin(Ne, ax, z);
            let above_e = b.op(Not, &[below]);
            let ok = b.bin(And, above_e, nz);
            let yl = b.mul(y, la);
            let t = b.mul(gy, yl);
            let ge = b.mask(ok, t);
            vec![Some(ga), Some(ge)]
        }
        _ => vec![None; x.len()],
    }
}

/// The scalar expression of a binary arithmetic, comparison or logical op.
fn scalar_binary(p: &Prim, x: &TokenStream, y: &TokenStream, t: DType) -> TokenStream {
    let num = quote!(::mithril::rt::scalar::Num);
    let real = quote!(::mithril::rt::scalar::Real);
    let s = quote!(::mithril::rt::scalar);
    match p {
        Prim::Add => {
            quote!(#num::add(#x, #y))
        }
        Prim::Sub => {
            quote!(#num::sub(#x, #y))
        }
        Prim::Mul => {
            quote!(#num::mul(#x, #y))
        }
        Prim::Div => {
            quote!(#num::div(#x, #y))
        }
        Prim::FloorDiv => {
            quote!(#num::floor_div(#x, #y))
        }
        Prim::Rem => {
            quote!(#num::rem(#x, #y))
        }
        Prim::Pow => {
            if acc_dtype(t).is_float() {
                quote!(#real::powf(#x, #y))
            } else {
                quote!(#s::int_pow(#x, #y))
            }
        }
        Prim::Minimum => {
            if t == DType::Bool {
                quote!((#x & #y))
            } else {
                quote!(#num::min(#x, #y))
            }
        }
        Prim::Maximum => {
            if t == DType::Bool {
                quote!((#x | #y))
            } else {
                quote!(#num::max(#x, #y))
            }
        }
        Prim::Eq => {
            quote!((#x == #y))
        }
        Prim::Ne => {
            quote!((#x != #y))
        }
        Prim::Lt => {
            quote!((#x < #y))
        }
        Prim::Le => {
            quote!((#x <= #y))
        }
        Prim::Gt => {
            quote!((#x > #y))
        }
        Prim::Ge => {
            quote!((#x >= #y))
        }
        Prim::And => {
            quote!((#x & #y))
        }
        Prim::Or => {
            quote!((#x | #y))
        }
        Prim::Xor => {
            quote!((#x ^ #y))
        }
        _ => quote!(compile_error!("internal: not elementwise")),
    }
}

/// The scalar expression of the unary ops, the robust forms and `where_`.
fn scalar_other(p: &Prim, a: &[TokenStream], t: DType) -> TokenStream {
    let num = quote!(::mithril::rt::scalar::Num);
    let real = quote!(::mithril::rt::scalar::Real);
    let s = quote!(::mithril::rt::scalar);
    let vmath = quote!(::mithril::rt::vmath);
    let vm = acc_dtype(t) == DType::F32;
    let x = &a[0];
    match p {
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
            let c = literal(Scalar::Float(robust_threshold(p, t)), t);
            let f = match p {
                Prim::RobustSqrt(_) => quote!(robust_sqrt),
                Prim::RobustLog(_) => quote!(robust_log),
                _ => quote!(stable_reciprocal),
            };
            quote!(#s::#f(#x, #c))
        }
        Prim::RobustPower(_) => {
            let y = &a[1];
            let c = literal(Scalar::Float(robust_threshold(p, t)), t);
            quote!(#s::robust_power(#x, #y, #c))
        }
        Prim::Where => {
            let (y, z) = (&a[1], &a[2]);
            quote!((if #x { #y } else { #z }))
        }
        _ => quote!(compile_error!("internal: not elementwise")),
    }
}

/// A clamp bound as an integer literal of compute type `t` (infinite bounds saturate).
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

/// [`clamp_int`] in C: an f64 bound as an integer literal of compute type `t`.
fn int_bound(v: f64, t: DType) -> String {
    let v = if v.is_infinite() {
        if v > 0.0 {
            f64::MAX
        } else {
            f64::MIN
        }
    } else {
        v
    };
    match acc_dtype(t) {
        DType::I32 => c_literal(Scalar::Int(v as i32 as i64), DType::I32),
        _ => c_literal(Scalar::Int(v as i64), DType::I64),
    }
}

/// [`Family::scalar`] in C (CUDA lowering): the operation applied to operand expressions
/// already in compute type `t`.
fn scalar_c(p: &Prim, a: &[String], t: DType) -> Result<String, String> {
    let x = || a[0].clone();
    let bin = |f: &str| format!("{f}({}, {})", a[0], a[1]);
    let un = |f: &str| format!("{f}({})", a[0]);
    let is_bool = t == DType::Bool;
    Ok(match p {
        Prim::Add => bin("mt_add"),
        Prim::Sub => bin("mt_sub"),
        Prim::Mul => bin("mt_mul"),
        Prim::Div => bin("mt_div"),
        Prim::FloorDiv => bin("mt_floordiv"),
        Prim::Rem => bin("mt_rem"),
        Prim::Pow if acc_dtype(t).is_float() => bin("mt_pow"),
        Prim::Pow => bin("mt_ipow"),
        Prim::Minimum if is_bool => format!("({} && {})", a[0], a[1]),
        Prim::Maximum if is_bool => format!("({} || {})", a[0], a[1]),
        Prim::Minimum => bin("mt_min"),
        Prim::Maximum => bin("mt_max"),
        Prim::Eq => format!("({} == {})", a[0], a[1]),
        Prim::Ne => format!("({} != {})", a[0], a[1]),
        Prim::Lt => format!("({} < {})", a[0], a[1]),
        Prim::Le => format!("({} <= {})", a[0], a[1]),
        Prim::Gt => format!("({} > {})", a[0], a[1]),
        Prim::Ge => format!("({} >= {})", a[0], a[1]),
        Prim::And if is_bool => format!("({} && {})", a[0], a[1]),
        Prim::Or if is_bool => format!("({} || {})", a[0], a[1]),
        Prim::Xor if is_bool => format!("({} != {})", a[0], a[1]),
        Prim::And => format!("({} & {})", a[0], a[1]),
        Prim::Or => format!("({} | {})", a[0], a[1]),
        Prim::Xor => format!("({} ^ {})", a[0], a[1]),
        Prim::Not if is_bool => format!("(!{})", x()),
        Prim::Not => format!("(~{})", x()),
        Prim::Neg => un("mt_neg"),
        Prim::Abs => un("mt_abs"),
        Prim::Exp => un("mt_exp"),
        Prim::Log => un("mt_log"),
        Prim::Sqrt => un("mt_sqrt"),
        Prim::Sin => un("mt_sin"),
        Prim::Cos => un("mt_cos"),
        Prim::Tanh => un("mt_tanh"),
        Prim::Erf => un("mt_erf"),
        Prim::Square => un("mt_square"),
        Prim::Sign => un("mt_sign"),
        Prim::Relu => un("mt_relu"),
        Prim::Sigmoid => un("mt_sigmoid"),
        Prim::Softplus => un("mt_softplus"),
        Prim::Gelu => un("mt_gelu_erf"),
        Prim::GeluTanh => un("mt_gelu_tanh"),
        Prim::LeakyRelu(slope) => {
            format!(
                "mt_leaky_relu({}, {})",
                x(),
                c_literal(Scalar::Float(*slope), t)
            )
        }
        Prim::Clamp(lo, hi) => {
            let (l, h) = if acc_dtype(t).is_float() {
                (
                    c_literal(Scalar::Float(*lo), t),
                    c_literal(Scalar::Float(*hi), t),
                )
            } else {
                (int_bound(*lo, t), int_bound(*hi, t))
            };
            format!("mt_clamp({}, {l}, {h})", x())
        }
        Prim::Cast(_) | Prim::StopGradient => x(),
        Prim::RobustSqrt(_) | Prim::RobustLog(_) | Prim::StableReciprocal(_) => {
            let f = match p {
                Prim::RobustSqrt(_) => "mt_robust_sqrt",
                Prim::RobustLog(_) => "mt_robust_log",
                _ => "mt_stable_reciprocal",
            };
            let c = c_literal(Scalar::Float(robust_threshold(p, t)), t);
            format!("{f}({}, {c})", x())
        }
        Prim::RobustPower(_) => {
            let c = c_literal(Scalar::Float(robust_threshold(p, t)), t);
            format!("mt_robust_power({}, {}, {c})", a[0], a[1])
        }
        Prim::Where => format!("({} ? {} : {})", a[0], a[1], a[2]),
        other => return Err(format!("`{}` is not elementwise", other.name())),
    })
}

/// Compile-time evaluation on constants (in f64 / i64 / bool; `passes::fold` rounds the result to
/// the node's dtype); `None` for an op that does not fold.
pub fn fold(p: &Prim, a: &[Scalar], out: DType) -> Option<Scalar> {
    use Scalar::*;
    let f = |i: usize| a[i].as_f64();
    let ints = a.iter().all(|s| matches!(s, Int(_) | Bool(_))) && !out.is_float();
    let int = |i: usize| match a[i] {
        Int(v) => v,
        Bool(b) => b as i64,
        Float(x) => x as i64,
    };
    let b = |i: usize| f(i) != 0.0;
    Some(match p {
        Prim::Add if ints => Int(int(0).wrapping_add(int(1))),
        Prim::Sub if ints => Int(int(0).wrapping_sub(int(1))),
        Prim::Mul if ints => Int(int(0).wrapping_mul(int(1))),
        Prim::Add => Float(f(0) + f(1)),
        Prim::Sub => Float(f(0) - f(1)),
        Prim::Mul => Float(f(0) * f(1)),
        Prim::Div => Float(f(0) / f(1)),
        Prim::Pow if !ints => Float(f(0).powf(f(1))),
        Prim::Minimum => Float(f(0).min(f(1))),
        Prim::Maximum => Float(f(0).max(f(1))),
        Prim::Eq => Bool(f(0) == f(1)),
        Prim::Ne => Bool(f(0) != f(1)),
        Prim::Lt => Bool(f(0) < f(1)),
        Prim::Le => Bool(f(0) <= f(1)),
        Prim::Gt => Bool(f(0) > f(1)),
        Prim::Ge => Bool(f(0) >= f(1)),
        Prim::And => Bool(b(0) && b(1)),
        Prim::Or => Bool(b(0) || b(1)),
        Prim::Xor => Bool(b(0) ^ b(1)),
        Prim::Not => Bool(!b(0)),
        Prim::Neg if ints => Int(int(0).wrapping_neg()),
        Prim::Neg => Float(-f(0)),
        Prim::Abs if ints => Int(int(0).wrapping_abs()),
        Prim::Abs => Float(f(0).abs()),
        Prim::Exp => Float(f(0).exp()),
        Prim::Log => Float(f(0).ln()),
        Prim::Sqrt => Float(f(0).sqrt()),
        Prim::Sin => Float(f(0).sin()),
        Prim::Cos => Float(f(0).cos()),
        Prim::Tanh => Float(f(0).tanh()),
        Prim::Square if ints => Int(int(0).wrapping_mul(int(0))),
        Prim::Square => Float(f(0) * f(0)),
        Prim::Relu if ints => Int(int(0).max(0)),
        Prim::Relu => Float(if f(0) > 0.0 { f(0) } else { 0.0 }),
        Prim::Sigmoid => Float(1.0 / (1.0 + (-f(0)).exp())),
        Prim::Cast(_) => a[0],
        Prim::Where => {
            if b(0) {
                a[1]
            } else {
                a[2]
            }
        }
        _ => return None,
    })
}
