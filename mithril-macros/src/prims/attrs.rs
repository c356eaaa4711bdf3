//! DSL attributes of primitives: the values a call gives ([`AttrVal`]), a primitive's signature
//! ([`Sig`]) and the parsers the families' `build` functions share.

use crate::ir::{DType, Dim};
use crate::prims::SliceArg;

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

/// One input named `input`.
pub const UN: &[&str] = &["input"];
/// Two inputs, `left` and `right`.
pub const BIN: &[&str] = &["left", "right"];

/// A fixed-arity signature.
pub fn sig(inputs: &'static [&'static str], attrs: &'static [&'static str]) -> Sig {
    Sig {
        inputs,
        variadic: false,
        attrs,
    }
}

/// The value given for attribute `k`, if any.
pub fn get<'a>(attrs: &'a [(&str, AttrVal)], k: &str) -> Option<&'a AttrVal> {
    attrs.iter().find(|(n, _)| *n == k).map(|(_, v)| v)
}

/// An axis or a list of axes (`None`: all axes).
pub fn axes_attr(v: Option<&AttrVal>) -> Result<Vec<i64>, String> {
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

/// An integer attribute (`default` when absent).
pub fn int_attr(v: Option<&AttrVal>, name: &str, default: i64) -> Result<i64, String> {
    match v {
        None => Ok(default),
        Some(AttrVal::Int(i)) => Ok(*i),
        _ => Err(format!("`{name}` must be an integer")),
    }
}

/// A bool attribute (`default` when absent).
pub fn bool_attr(v: Option<&AttrVal>, name: &str, default: bool) -> Result<bool, String> {
    match v {
        None => Ok(default),
        Some(AttrVal::Bool(b)) => Ok(*b),
        _ => Err(format!("`{name}` must be `true` or `false`")),
    }
}

/// A number attribute (`default` when absent).
pub fn float_attr(v: Option<&AttrVal>, name: &str, default: f64) -> Result<f64, String> {
    match v {
        None => Ok(default),
        Some(AttrVal::Float(f)) => Ok(*f),
        Some(AttrVal::Int(i)) => Ok(*i as f64),
        _ => Err(format!("`{name}` must be a number")),
    }
}
