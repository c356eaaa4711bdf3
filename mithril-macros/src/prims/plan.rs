//! The plan text of the CPU backend (`crate::backends::cpu`'s `plan`; read by `mithril-runtime/src/plan/
//! text.rs`): the token helpers the families' [`super::Family::plan`] lowerings write with.

use super::lower::acc_dtype;
use crate::ir::prim::SliceArg;
use crate::ir::{DType, Dim, Scalar, Shape};

/// What a family's plan lowering may ask about the node it lowers.
pub struct PlanCx<'a> {
    /// the node's dtype
    pub out: DType,
    /// the node's shape, when inferred
    pub shape: Option<&'a Shape>,
    /// a dim as a run-time dim token (`k64`, `y0`, `in0:1`, ...), `None` when unknown at run time
    pub dim: &'a dyn Fn(&Dim) -> Option<String>,
    /// the node's number of operands
    pub arity: usize,
    /// the index of the call's seed view (`Mode::seed`, after the mode's view) that random
    /// ops (`dropout`) read
    pub seed_view: usize,
}

/// A string token.
pub fn q(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A literal in the compute domain of `t` (the value `lower::literal` writes as Rust).
pub fn lit(s: Scalar, t: DType) -> String {
    match acc_dtype(t) {
        DType::Bool => format!("b:{}", (s.as_f64() != 0.0) as u8),
        DType::F32 => format!("f:{:x}", (s.as_f64() as f32).to_bits()),
        DType::F64 => format!("d:{:x}", s.as_f64().to_bits()),
        DType::I32 => format!("i:{}", s.as_f64() as i32),
        _ => {
            let v = match s {
                Scalar::Int(i) => i,
                other => other.as_f64() as i64,
            };
            format!("l:{v}")
        }
    }
}

/// An `f64` attribute.
pub fn f64_lit(v: f64) -> String {
    format!("d:{:x}", v.to_bits())
}

/// A bound of `clamp` in an integer domain: saturated like `as`, infinities to the extremes.
pub fn clamp_int(v: f64, t: DType) -> String {
    let sat = |lo: f64, hi: f64| {
        if v.is_infinite() {
            if v > 0.0 {
                hi
            } else {
                lo
            }
        } else {
            v
        }
    };
    match acc_dtype(t) {
        DType::I32 => format!("i:{}", sat(i32::MIN as f64, i32::MAX as f64) as i32),
        _ => format!("l:{}", sat(i64::MIN as f64, i64::MAX as f64) as i64),
    }
}

/// A list: its length, then the items.
pub fn list<T: ToString>(v: &[T]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("{} {}", parts.len(), parts.join(" "))
}

/// A flag.
pub fn flag(b: bool) -> u8 {
    b as u8
}

/// Slice arguments: `N`, `I<i>`, `R<start|_>:<end|_>:<step>`.
pub fn slice_args(args: &[SliceArg]) -> String {
    let o = |v: &Option<i64>| v.map_or("_".to_string(), |i| i.to_string());
    let parts: Vec<String> = args
        .iter()
        .map(|a| match a {
            SliceArg::NewAxis => "N".to_string(),
            SliceArg::Index(i) => format!("I{i}"),
            SliceArg::Range(lo, hi, st) => format!("R{}:{}:{st}", o(lo), o(hi)),
        })
        .collect();
    format!("{} {}", parts.len(), parts.join(" "))
}
