//! The primitives: one module per family, each holding everything the compiler knows about its
//! primitives — DSL names and attributes ([`Family::lookup`] / [`Family::build`]), shape rule,
//! dtype rule, gradient rule (a vector-Jacobian product built from other primitives with
//! [`grad::Builder`]), CPU lowering (`scalar`, the element expression inlined into fused loops,
//! for elementwise primitives; `call`, a call of `mithril::rt::ops`, for the others; `plan`, the
//! CPU plan text), CUDA lowering (`scalar_c`, the CUDA C expression of an elementwise primitive in
//! a fused kernel; `cuda`, a node's device value through the generator's [`cuda::CudaCx`]), and
//! compile-time evaluation on constants (`fold`).
//!
//! The [`Prim`] enum itself is IR data (`crate::ir::prim`); [`Prim::family`] maps each variant to
//! its family, and the methods below dispatch to it. The drivers (dtype and shape inference,
//! autodiff, the code generators) call these methods and hold no per-primitive knowledge.
//!
//! A new primitive: its variant in `crate::ir::prim`, its arm in [`Prim::family`], and its rules
//! in the family's module (or a new module implementing [`Family`], listed in [`FAMILIES`]).

pub mod attention;
pub mod attrs;
pub mod autodiff_helpers;
pub mod construct;
pub mod control;
pub mod conv;
pub mod cuda;
pub mod decode;
pub mod elementwise;
pub mod grad;
pub mod index;
pub mod linalg;
pub mod lower;
pub mod matmul;
pub mod plan;
// pooling, pad, upsample
pub mod pool;
pub mod random;
pub mod reduce;
pub mod rules;
pub mod shape;
pub mod softmax; // norm / dropout

pub use crate::ir::prim::{Prim, ReduceKind, ReshapeDim, SliceArg};
pub use attrs::{AttrVal, Sig};
pub use lower::{acc_dtype, convert, literal, storage_type};
pub use rules::{norm_axis, ArgDt};

use crate::ir::{DType, Dim, Env, NodeId, Scalar, Shape, DT};
use grad::Builder;
use proc_macro2::TokenStream;
use quote::quote;

/// What the compiler knows about one family of primitives. Each method gets the primitive it is
/// asked about (always one of the family's own variants); the defaults are the answers for a
/// family that is not elementwise.
pub trait Family: Sync {
    /// The family's DSL function names (for "did you mean" lists).
    fn names(&self) -> &'static [&'static str];
    /// The DSL signature of `name`, or `None` when `name` is not one of the family's.
    fn lookup(&self, name: &str) -> Option<Sig>;
    /// The primitive for DSL function `name` (one of [`Family::names`]) with attribute values
    /// `attrs` (already checked against [`Family::lookup`]) and `n_inputs` tensor inputs.
    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], n_inputs: usize)
        -> Result<Prim, String>;
    /// The DSL name (for summaries and errors).
    fn name(&self, p: &Prim) -> &'static str;
    /// The shape rule: the output shape from the input shapes (already resolved in `env`).
    /// `Err` carries the message; the caller adds the op name, the operand shapes and the span.
    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String>;
    /// The dtype rule: the output dtype from the input dtypes (`default`: the model's default
    /// float type).
    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String>;
    /// The gradient rule: the gradient of each operand `x[k]` given the gradient `gy` of the
    /// result `y` (`None`: no gradient flows to that operand).
    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        y: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>>;
    /// Whether the family's primitives broadcast their inputs and fuse into one loop.
    fn is_elementwise(&self) -> bool {
        false
    }
    /// CPU lowering of a non-elementwise primitive as Rust (the per-op path of mixed models):
    /// the value of the node, an `ArrayViewMutD` expression computing it from `cx.a` into
    /// `cx.d` with the run-time error (`Result`) propagated. `Err`: a spanned compile error.
    fn call(&self, _p: &Prim, _cx: &CallCx<'_>) -> Result<TokenStream, String> {
        Err("internal: no call lowering".into())
    }
    /// CPU lowering of an elementwise primitive: its scalar expression on operands already
    /// converted to compute type `t`.
    fn scalar(&self, _p: &Prim, _a: &[TokenStream], _t: DType) -> TokenStream {
        quote!(compile_error!("internal: not elementwise"))
    }
    /// CUDA lowering of an elementwise primitive: its C expression on operands already in
    /// compute type `t` (the device functions of `backends::cuda::kernel_text::FUSED_PRELUDE`).
    fn scalar_c(&self, p: &Prim, _a: &[String], _t: DType) -> Result<String, String> {
        Err(format!("`{}` is not elementwise", p.name()))
    }
    /// Constant folding: the value on constant operands `a` (in f64 / i64 / bool, rounded to
    /// `out` by the caller); `None` when the primitive does not fold.
    fn fold(&self, _p: &Prim, _a: &[Scalar], _out: DType) -> Option<Scalar> {
        None
    }
    /// CPU plan lowering: the op with its attributes in plan text (`plan.rs`). For an
    /// elementwise primitive, `cx.out` is its compute dtype and the text is the program
    /// instruction's op and two immediates. `Err`: a spanned compile error (a run-time dim the
    /// op needs is unknown).
    fn plan(&self, p: &Prim, _cx: &plan::PlanCx<'_>) -> Result<String, String> {
        Err(format!("internal: `{}` has no plan lowering", p.name()))
    }
    /// CUDA lowering: the node's value, an owned `DeviceTensor` expression, built with the
    /// plumbing of `cx` (`cuda.rs`). `Err`: why it cannot be lowered (a spanned compile error
    /// for `backend: cuda`; a gradient op of a mixed model runs on the CPU instead).
    fn cuda(&self, _p: &Prim, _cx: &mut dyn cuda::CudaCx) -> Result<TokenStream, String> {
        Err("there is no CUDA kernel for it yet".into())
    }
}

/// What a family's per-op Rust lowering ([`Family::call`], mixed models' host ops) may ask about
/// the node it lowers.
pub struct CallCx<'a> {
    /// the operands as `ArrayViewD` expressions
    pub a: &'a [TokenStream],
    /// the operands' dtypes
    pub in_dt: &'a [DType],
    /// the Rust element type of the node
    pub out_rust: &'a TokenStream,
    /// the destination (a `mithril::rt::Dest` expression)
    pub d: &'a TokenStream,
    /// `.map_err(..)` adding the model and the op to a run-time error
    pub at: &'a TokenStream,
    /// the node's shape, when inferred
    pub shape: Option<&'a Shape>,
    /// a dim as a Rust `usize` expression, `None` when unknown at run time
    pub dim: &'a dyn Fn(&Dim) -> Option<TokenStream>,
}

impl CallCx<'_> {
    /// The value of a runtime call (a `Result<ArrayViewMutD>` expression) with its error
    /// context added and propagated.
    pub fn checked(&self, call: TokenStream) -> TokenStream {
        let at = self.at;
        quote!((#call) #at ?)
    }
}

/// Every family, in the order their names are offered by "did you mean".
pub const FAMILIES: &[&dyn Family] = &[
    &elementwise::Rules,
    &matmul::Rules,
    &shape::Rules,
    &index::Rules,
    &reduce::Rules,
    &softmax::Rules,
    &linalg::Rules,
    &construct::Rules,
    &autodiff_helpers::Rules,
    &control::Rules,
    // pooling, pad, upsample
    &pool::Rules,
    // attention
    &attention::Rules,
    &random::Rules, // norm / dropout
    // convolution
    &conv::Rules,
    // incremental decoding
    &decode::Rules,
];

/// The DSL signature of a primitive function name, or `None` when the name is no primitive.
pub fn lookup(name: &str) -> Option<Sig> {
    FAMILIES.iter().find_map(|f| f.lookup(name))
}

/// Build a primitive from its DSL name and attribute values (already checked against [`lookup`]).
pub fn build(name: &str, attrs: &[(&str, AttrVal)], n_inputs: usize) -> Result<Prim, String> {
    match FAMILIES.iter().find(|f| f.names().contains(&name)) {
        Some(f) => f.build(name, attrs, n_inputs),
        None => Err(format!("unknown primitive `{name}`")),
    }
}

/// Every primitive function name (for "did you mean" lists, where a tie goes to the earlier
/// name): the names of [`SUGGESTION_ORDER`], then any other family's names in family order.
pub fn names() -> impl Iterator<Item = &'static str> {
    let rest = FAMILIES
        .iter()
        .flat_map(|f| f.names().iter().copied())
        .filter(|n| !SUGGESTION_ORDER.contains(n));
    SUGGESTION_ORDER.iter().copied().chain(rest)
}

/// The order "did you mean" offers the primitive names in: that of the single primitive list
/// the families replaced, so that a misspelling equally close to two names (`stax`: `max` or
/// `stack`) keeps its suggestion. A new primitive need not be listed (it follows these).
const SUGGESTION_ORDER: &[&str] = &[
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

impl Prim {
    /// The family that defines this primitive.
    pub fn family(&self) -> &'static dyn Family {
        use Prim::*;
        match self {
            Add | Sub | Mul | Div | FloorDiv | Rem | Pow | Minimum | Maximum | Eq | Ne | Lt
            | Le | Gt | Ge | And | Or | Xor | Neg | Abs | Exp | Log | Sqrt | Sin | Cos | Tanh
            | Erf | Square | Sign | Relu | Sigmoid | Softplus | Gelu | GeluTanh | Not
            | LeakyRelu(_) | Clamp(..) | Cast(_) | StopGradient | RobustSqrt(_) | RobustLog(_)
            | StableReciprocal(_) | RobustPower(_) | Where => &elementwise::Rules,
            Matmul { .. } => &matmul::Rules,
            Transpose(_) | Reshape(_) | Flatten(..) | Concat(_) | Slice(_) | Unsqueeze(_)
            | Stack(_) => &shape::Rules,
            Gather(_) | TakeAlong => &index::Rules,
            Reduce(..) | Variance(..) | ArgReduce { .. } => &reduce::Rules,
            Softmax(_) | LogSoftmax(_) => &softmax::Rules,
            Cholesky | Eigvalsh | SolveTriangular { .. } | Tril(_) | Triu(_) => &linalg::Rules,
            Arange { .. } | FullLike(_) => &construct::Rules,
            EighVectors | BroadcastLike | ReshapeLike | SumLike | SizeRatio | TakeAlongGrad
            | GatherGrad(_) | SliceGrad(_) | ConcatPart(..) => &autodiff_helpers::Rules,
            Truth
            | Phi
            | Carry
            | LoopHead
            | LoopTest { .. }
            | LoopNext
            | LoopEnd
            | LoopExit
            | TapeRead(_)
            | DimValue(_)
            | SetAt { .. } => &control::Rules,
            // pooling, pad, upsample
            Pool(_) | PoolGrad(_) => &pool::Rules,
            // attention
            Attention { .. } | AttentionHeads { .. } => &attention::Rules,
            // norm / dropout
            Dropout { .. } => &random::Rules,
            // convolution
            Conv(_) => &conv::Rules,
            // incremental decoding
            UpdateSlice { .. } | CachedAttention { .. } => &decode::Rules,
            // row normalisations (made by `passes::norm`)
            Norm { .. } => &softmax::Rules,
        }
    }

    /// A random op: its plan reads the call's seed (`Mode::seed`).
    pub fn uses_seed(&self) -> bool {
        matches!(self, Prim::Dropout { .. })
            || matches!(self, Prim::Attention { dropout, .. } if *dropout > 0.0)
    }

    /// The DSL name (for summaries and errors).
    pub fn name(&self) -> &'static str {
        self.family().name(self)
    }

    /// Elementwise primitives broadcast their inputs and can be fused into one loop.
    pub fn is_elementwise(&self) -> bool {
        self.family().is_elementwise()
    }

    /// Commutative binary ops (CSE canonicalises their args).
    pub fn is_commutative(&self) -> bool {
        elementwise::is_commutative(self)
    }

    /// The output shape from the input shapes. `Err` carries the message (the caller adds the
    /// op name, the operand shapes and the span).
    pub fn infer_shape(&self, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        let ins: Vec<Shape> = ins.iter().map(|s| env.shape(s)).collect();
        self.family().shape(self, env, &ins)
    }

    /// The output dtype from the input dtypes (`default` is the model's default float type).
    pub fn infer_dtype(&self, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        self.family().dtype(self, env, ins, default)
    }

    /// The first operand whose dtype decides the compute type of an elementwise op (`where_`'s
    /// condition does not): weak literals among the operands take that operand's dtype.
    pub fn first_data_operand(&self) -> usize {
        elementwise::first_data_operand(self)
    }

    /// The vector-Jacobian product: the gradient of each operand `x[k]` given the gradient
    /// `gy` of the result `y` (`None`: no gradient flows to that operand).
    pub fn vjp(&self, b: &mut Builder, x: &[NodeId], y: NodeId, gy: NodeId) -> Vec<Option<NodeId>> {
        self.family().vjp(b, self, x, y, gy)
    }

    /// The scalar expression of an elementwise primitive on already-converted operands `a`
    /// (all in compute type `t`). The result is in compute type of the op's output dtype.
    pub fn scalar(&self, a: &[TokenStream], t: DType) -> TokenStream {
        self.family().scalar(self, a, t)
    }

    /// The CUDA C expression of an elementwise primitive on operand expressions already in
    /// compute type `t`.
    pub fn scalar_c(&self, a: &[String], t: DType) -> Result<String, String> {
        self.family().scalar_c(self, a, t)
    }

    /// The value on constant operands `a` (constant folding), `None` when it does not fold.
    pub fn fold(&self, a: &[Scalar], out: DType) -> Option<Scalar> {
        self.family().fold(self, a, out)
    }

    /// The dtype the operands of an elementwise op are computed in, given the op's inputs and
    /// output dtypes.
    pub fn compute_dtype(&self, ins: &[DType], out: DType) -> DType {
        elementwise::compute_dtype(self, ins, out)
    }

    /// For `where_` the first operand keeps its own (bool) type.
    pub fn operand_dtype(&self, i: usize, compute: DType, own: DType) -> DType {
        elementwise::operand_dtype(self, i, compute, own)
    }

    /// The CPU plan text of this primitive (see [`Family::plan`]).
    pub fn plan(&self, cx: &plan::PlanCx<'_>) -> Result<String, String> {
        self.family().plan(self, cx)
    }

    /// The per-op Rust of this primitive (see [`Family::call`]).
    pub fn call(&self, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        self.family().call(self, cx)
    }

    /// The CUDA lowering of this primitive (see [`Family::cuda`]).
    pub fn cuda(&self, cx: &mut dyn cuda::CudaCx) -> Result<TokenStream, String> {
        self.family().cuda(self, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every name "did you mean" offers is a primitive, each once, and every primitive's name is
    /// offered.
    #[test]
    fn suggestion_order_lists_each_primitive_name_once() {
        let offered: Vec<&str> = names().collect();
        for n in &offered {
            assert!(lookup(n).is_some(), "`{n}` is no primitive");
            assert_eq!(offered.iter().filter(|m| *m == n).count(), 1, "`{n}` twice");
        }
        for f in FAMILIES {
            for n in f.names() {
                assert!(offered.contains(n), "`{n}` is not offered");
            }
        }
    }
}
