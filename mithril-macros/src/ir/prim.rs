//! The primitive op set as IR data: the [`Prim`] enum and the attribute types its variants
//! carry. What the compiler knows about each primitive (DSL names, shape, dtype and gradient
//! rules, CPU and CUDA lowering) lives in `crate::prims`, one module per family; this file only
//! names the variants, so the IR does not depend on the rules.

use super::{DType, Dim};

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

/// Which convolution computation a [`Prim::Conv`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    /// `conv1d` / `conv2d`: operands `(x, w)`.
    Forward,
    /// `conv_transpose1d` / `conv_transpose2d`: operands `(x, w)`.
    Transpose,
    /// The input gradient of a forward convolution: operands `(gy, w, like x)`.
    GradData,
    /// The weight gradient of a forward convolution: operands `(x, gy, like w)`.
    GradWeight,
}

/// The attributes of a convolution (one entry per spatial dim in each list).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvAttrs {
    pub kind: ConvKind,
    pub stride: Vec<u64>,
    /// padding on both sides of each spatial dim; `None`: `"same"` (from the kernel size)
    pub padding: Option<Vec<u64>>,
    pub dilation: Vec<u64>,
    pub groups: u64,
    /// transposed convolutions only (zeros otherwise)
    pub output_padding: Vec<u64>,
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
    // ---- run-time control flow (made by a run-time `if`; no DSL name)
    /// The condition of a run-time `if`: its operand, checked to be a scalar `bool`.
    Truth,
    /// The value of a name after a run-time `if`: `(then guard, else guard, then value, else
    /// value)`, the then value when the then guard holds, else the else value (no copy).
    Phi,
    // ---- run-time loops (made by `while` and run-time `for`; no DSL name)
    /// A loop-carried value: its initial value, copied into its own memory at loop entry
    /// (without an argument: a scan's stacked output, zeros).
    Carry,
    /// The start of a loop's body (args: the carries); the back edge returns after it.
    LoopHead,
    /// Leaves the loop when its condition (arg 1; arg 0 the head) is false. `max_steps` caps
    /// the trip count (an `Err` beyond); bit `j` of `tape` saves carry `j` at the start of each
    /// iteration for the backward pass.
    LoopTest {
        max_steps: Option<u64>,
        tape: u64,
    },
    /// The value carried to the next iteration (args: the carry, its update).
    LoopNext,
    /// The end of a loop's body (args: head, test, the `LoopNext`s): jumps back.
    LoopEnd,
    /// A carry's value after the loop (args: the end, the carry).
    LoopExit,
    /// Carry `j`'s value at the start of iteration `i` of a finished loop (args: the test,
    /// `i`), from its tape.
    TapeRead(usize),
    /// A symbolic dim's run-time value, as an `i64` scalar (the bound of a run-time `for`).
    DimValue(Dim),
    /// `acc` with its slice `i` along `axis` replaced by (or, `add`, increased by) `v` (args:
    /// acc, v, i): a scan's stacked output (`len`: the scanned dim, which a stacked output
    /// first written here gets), and the gradient of `gather` at a scalar index.
    SetAt {
        axis: i64,
        add: bool,
        len: Option<Dim>,
    },
    // ---- convolution (`prims/conv.rs`)
    /// A convolution, transposed convolution or one of their gradients.
    Conv(ConvAttrs),
}
