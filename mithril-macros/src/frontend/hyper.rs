//! Compile-time values: hyperparameters of models (`Linear(dimension = 256)`), loop variables
//! of `for`, conditions of `if`, and attribute values of primitives (`axis = 1`).

use crate::ir::{DType, Dim};
use crate::prims::AttrVal;
use std::collections::BTreeMap;

/// A compile-time value.
#[derive(Clone, Debug, PartialEq)]
pub enum HVal {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    List(Vec<HVal>),
    /// A function or model name used as a value (`activation = relu`).
    Func(String),
    DType(DType),
    /// A symbolic dim used as a value (inside `reshape` targets).
    Dim(Dim),
    /// A symbolic dim plus an integer (`H - kernel_size + 1`): a slice bound relative to the
    /// sliced axis's dim.
    DimPlus(Dim, i64),
    None,
}

impl HVal {
    pub fn kind(&self) -> &'static str {
        match self {
            HVal::Int(_) => "int",
            HVal::Float(_) => "float",
            HVal::Bool(_) => "bool",
            HVal::Str(_) => "str",
            HVal::List(_) => "list",
            HVal::Func(_) => "fn",
            HVal::DType(_) => "dtype",
            HVal::Dim(_) | HVal::DimPlus(..) => "dim",
            HVal::None => "none",
        }
    }

    /// Does the value fit a declared hyperparameter type (`int`, `float`, `bool`, `str`,
    /// `list`, `fn`, `dtype`, `any`)?
    pub fn fits(&self, ty: &str) -> bool {
        matches!(
            (ty, self),
            ("any", _)
                | ("int", HVal::Int(_))
                | ("float", HVal::Float(_) | HVal::Int(_))
                | ("bool", HVal::Bool(_))
                | ("str", HVal::Str(_))
                | ("list", HVal::List(_))
                | ("fn", HVal::Func(_))
                | ("dtype", HVal::DType(_))
                | (_, HVal::None)
        )
    }

    pub fn to_attr(&self) -> AttrVal {
        match self {
            HVal::Int(i) => AttrVal::Int(*i),
            HVal::Float(f) => AttrVal::Float(*f),
            HVal::Bool(b) => AttrVal::Bool(*b),
            HVal::Str(s) => AttrVal::Str(s.clone()),
            HVal::List(xs) => AttrVal::List(xs.iter().map(|x| x.to_attr()).collect()),
            HVal::Func(f) => AttrVal::Str(f.clone()),
            HVal::DType(d) => AttrVal::DType(*d),
            HVal::Dim(d) => AttrVal::Dim(d.clone()),
            HVal::DimPlus(..) => AttrVal::None,
            HVal::None => AttrVal::None,
        }
    }
}

/// Binary arithmetic on compile-time values.
pub fn binop(op: &syn::BinOp, a: &HVal, b: &HVal) -> Option<HVal> {
    use syn::BinOp as B;
    use HVal::*;
    // dim arithmetic: a symbolic dim plus or minus integers
    let plus = |d: &crate::ir::Dim, c: i64| {
        if c == 0 {
            Dim(d.clone())
        } else {
            DimPlus(d.clone(), c)
        }
    };
    match (op, a, b) {
        (B::Add(_), Dim(d), Int(c)) | (B::Add(_), Int(c), Dim(d)) => return Some(plus(d, *c)),
        (B::Sub(_), Dim(d), Int(c)) => return Some(plus(d, c.checked_neg()?)),
        (B::Add(_), DimPlus(d, x), Int(c)) | (B::Add(_), Int(c), DimPlus(d, x)) => {
            return Some(plus(d, x.checked_add(*c)?))
        }
        (B::Sub(_), DimPlus(d, x), Int(c)) => return Some(plus(d, x.checked_sub(*c)?)),
        // a symbolic dim times a positive integer (a conv layer's fan-in `CG * k * k`)
        (B::Mul(_), Dim(d), Int(c)) | (B::Mul(_), Int(c), Dim(d)) if *c > 0 => {
            return Some(Dim(crate::ir::Dim::Prod(*c as u64, vec![d.clone()])))
        }
        _ => {}
    }
    Some(match (op, a, b) {
        (B::Add(_), Int(x), Int(y)) => Int(x.checked_add(*y)?),
        (B::Sub(_), Int(x), Int(y)) => Int(x.checked_sub(*y)?),
        (B::Mul(_), Int(x), Int(y)) => Int(x.checked_mul(*y)?),
        (B::Div(_), Int(x), Int(y)) => Int(x.checked_div(*y)?),
        (B::Rem(_), Int(x), Int(y)) => Int(x.checked_rem(*y)?),
        (B::Add(_), x, y) => Float(num(x)? + num(y)?),
        (B::Sub(_), x, y) => Float(num(x)? - num(y)?),
        (B::Mul(_), x, y) => Float(num(x)? * num(y)?),
        (B::Div(_), x, y) => Float(num(x)? / num(y)?),
        (B::Eq(_), x, y) => Bool(x == y),
        (B::Ne(_), x, y) => Bool(x != y),
        (B::Lt(_), x, y) => Bool(num(x)? < num(y)?),
        (B::Le(_), x, y) => Bool(num(x)? <= num(y)?),
        (B::Gt(_), x, y) => Bool(num(x)? > num(y)?),
        (B::Ge(_), x, y) => Bool(num(x)? >= num(y)?),
        (B::And(_), Bool(x), Bool(y)) => Bool(*x && *y),
        (B::Or(_), Bool(x), Bool(y)) => Bool(*x || *y),
        _ => return Option::None,
    })
}

fn num(v: &HVal) -> Option<f64> {
    match v {
        HVal::Int(i) => Some(*i as f64),
        HVal::Float(f) => Some(*f),
        _ => None,
    }
}

/// Hyperparameter bindings of one model application.
pub type HEnv = BTreeMap<String, HVal>;
