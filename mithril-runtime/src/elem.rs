//! Element types and their compute ("accumulator") types.
//!
//! Storage types are `f32 f64 f16 bf16 i32 i64 bool`. Float ops on `f16`/`bf16` compute in `f32`
//! and store back in the narrow type: [`Elem::to_acc`] widens, [`Elem::from_acc`] narrows
//! (round to nearest even).

use half::{bf16, f16};

/// The dtypes mithril knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
    /// IEEE half.
    F16,
    /// bfloat16.
    BF16,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
    /// Boolean.
    Bool,
}

impl DType {
    /// The DSL spelling (`f32`, `bf16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }
    /// Size of one element in bytes.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Bool => 1,
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A storage element type.
pub trait Elem: Copy + Send + Sync + std::fmt::Debug + Default + PartialEq + 'static {
    /// The dtype tag.
    const DTYPE: DType;
    /// The type arithmetic is done in (`f32` for `f16`/`bf16`/`f32`).
    type Acc: Copy + Send + Sync + std::fmt::Debug + PartialOrd + 'static;
    /// Widen to the compute type.
    fn to_acc(self) -> Self::Acc;
    /// Narrow from the compute type.
    fn from_acc(a: Self::Acc) -> Self;
    /// Value as f64 (for casts and reporting; `true` is 1).
    fn to_f64(self) -> f64;
    /// Value from f64 (casts: floats round, integers truncate toward zero and saturate,
    /// bool is `x != 0`).
    fn from_f64(v: f64) -> Self;
}

macro_rules! elem_same {
    ($t:ty, $d:expr) => {
        impl Elem for $t {
            const DTYPE: DType = $d;
            type Acc = $t;
            #[inline(always)]
            fn to_acc(self) -> $t {
                self
            }
            #[inline(always)]
            fn from_acc(a: $t) -> $t {
                a
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
            #[inline(always)]
            fn from_f64(v: f64) -> $t {
                v as $t
            }
        }
    };
}
elem_same!(f32, DType::F32);
elem_same!(f64, DType::F64);
elem_same!(i32, DType::I32);
elem_same!(i64, DType::I64);

impl Elem for bool {
    const DTYPE: DType = DType::Bool;
    type Acc = bool;
    #[inline(always)]
    fn to_acc(self) -> bool {
        self
    }
    #[inline(always)]
    fn from_acc(a: bool) -> bool {
        a
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        if self {
            1.0
        } else {
            0.0
        }
    }
    #[inline(always)]
    fn from_f64(v: f64) -> bool {
        v != 0.0
    }
}

// `to_acc` / `from_acc` use the kernels' branch-free conversions (bit for bit `half`'s; they
// vectorize in the runtime's loops, where `half`'s own make a run-time F16C check and a call per
// element).
macro_rules! elem_half {
    ($t:ty, $d:expr, $to:path, $from:path) => {
        impl Elem for $t {
            const DTYPE: DType = $d;
            type Acc = f32;
            #[inline(always)]
            fn to_acc(self) -> f32 {
                $to(self.to_bits())
            }
            #[inline(always)]
            fn from_acc(a: f32) -> $t {
                <$t>::from_bits($from(a))
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self.to_f64()
            }
            #[inline(always)]
            fn from_f64(v: f64) -> $t {
                <$t>::from_f64(v)
            }
        }
    };
}
elem_half!(
    f16,
    DType::F16,
    mithril_kernels::cvt::f16_to_f32,
    mithril_kernels::cvt::f32_to_f16
);
elem_half!(
    bf16,
    DType::BF16,
    mithril_kernels::cvt::bf16_to_f32,
    mithril_kernels::cvt::f32_to_bf16
);
