//! Lowering helpers the families and the code generators share: a dtype's Rust compute and
//! storage types, conversions between compute types and literals, in Rust tokens (CPU) and in
//! CUDA C text.

use crate::ir::{DType, Scalar};
use proc_macro2::TokenStream;
use quote::quote;

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

/// [`literal`] in C: `s` as a literal of compute type `t` (CUDA lowering).
pub fn c_literal(s: Scalar, t: DType) -> String {
    let float = |v: f64, f32_: bool| -> String {
        let suffix = if f32_ { "f" } else { "" };
        let cast = if f32_ { "(float)" } else { "" };
        if v.is_nan() {
            format!("({cast}__longlong_as_double(0x7ff8000000000000LL))")
        } else if v.is_infinite() {
            let sign = if v < 0.0 { "-" } else { "" };
            format!("({sign}{cast}__longlong_as_double(0x7ff0000000000000LL))")
        } else {
            let text = if f32_ {
                format!("{:?}", v as f32)
            } else {
                format!("{v:?}")
            };
            // `{:?}` is the shortest round-tripping form and always has a `.` or an exponent
            format!("{text}{suffix}")
        }
    };
    match acc_dtype(t) {
        DType::Bool => (s.as_f64() != 0.0).to_string(),
        DType::F32 => float(s.as_f64(), true),
        DType::F64 => float(s.as_f64(), false),
        DType::I32 => {
            let v = s.as_f64() as i32;
            if v == i32::MIN {
                "(-2147483647 - 1)".into()
            } else {
                format!("{v}")
            }
        }
        _ => {
            let v = match s {
                Scalar::Int(i) => i,
                other => other.as_f64() as i64,
            };
            if v == i64::MIN {
                "(-9223372036854775807LL - 1)".into()
            } else {
                format!("{v}LL")
            }
        }
    }
}
