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
    /// A forward convolution with its epilogue fused into the kernel's store (made by
    /// `passes::conv_epilogue` after autodiff, never by autodiff itself): operands `(x, w)` and,
    /// with `bias`, the bias (`O` values, broadcast along the channel axis); the result is
    /// `conv(x, w) + bias`, then `relu` when `relu`; with `pool` (made by the same pass from a
    /// following `max_pool2d(kernel_size = 2)`, 2-D only), then a 2×2 / stride-2 floor-mode max
    /// pool, the result having half the spatial dims.
    ForwardEpi { bias: bool, relu: bool, pool: bool },
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
    // ---- norm / dropout (random ops, `prims/random.rs`)
    /// `dropout(x, p)` (args: x, the call's mode): in training, each element kept with
    /// probability `1 - p` and scaled by `1 / (1 - p)` (Philox mask keyed by the call's seed,
    /// `op` and the element index); in evaluation the identity.
    Dropout {
        p: f64,
        op: u32,
    },
    // ---- attention (`prims/attention.rs`)
    /// Scaled dot-product attention (`part` 0: args q, k, v[, mask]) or one of its gradients
    /// (args q, k, v[, mask], out, out gradient; `part` 1 dq, 2 dk, 3 dv, 4 dk and dv stacked
    /// on a new leading axis, 5 the gradient of the masked scores). `scale` `None`: `1/√D`.
    Attention {
        causal: bool,
        scale: Option<f64>,
        part: u8,
        /// dropout on the weights in training calls (`0`: none); when above 0 the call's mode
        /// is the last arg and `op` the op's id among the model's random ops
        dropout: f64,
        op: u32,
    },
    // ---- pooling, pad, upsample (the pool family, `prims/pool.rs`)
    /// A pooling / padding / upsampling op over the trailing spatial dims.
    Pool(PoolOp),
    /// Its gradient: (g, the op's input) → the input's shape.
    PoolGrad(PoolOp),
    // ---- incremental decoding (`prims/decode.rs`)
    /// `update_slice(x, values, start)`: `x` with rows `start..` along `axis` replaced.
    UpdateSlice {
        axis: i64,
    },
    /// `cached_attention(q, k, v, pos)`: causal attention at positions `pos..` over a cache.
    CachedAttention {
        scale: Option<f64>,
    },
    // ---- row normalisations (`prims/softmax.rs`), made by `passes::norm` only
    /// A layer norm (`rms` false: `(x - mean) / √(var + eps)`, biased variance) or RMS norm
    /// (`rms`: `x / √(mean(x²) + eps)`) over the last axis, then `· weight` (with `scale`) and
    /// `+ bias` (with `bias`, layer norm only): args `x[, weight][, bias]`, the weight and bias
    /// `[D]` (`D` the last dim). Never written in the DSL: `passes::norm` makes it of the
    /// library `LayerNorm` / `RMSNorm` graphs in inference graphs; it has no gradient.
    Norm {
        eps: f64,
        rms: bool,
        scale: bool,
        bias: bool,
    },
    /// `attention` (forward, no dropout) with the head split and merge folded in, made by
    /// `passes::heads` only (`prims/attention.rs`): args `q, k, v[, mask]`, each either a
    /// `[B, H, S, D]` operand (`split[i]` `None`) or a `[B, S, C]` one whose columns `off + h ·
    /// width ..` are head `h` (`split[i]` `Some((heads, width, off))`: the slice, reshape and
    /// transpose of the head split read in place); with `merge` the result is `[B, Sq, Hq ·
    /// Dv]` (the transpose and reshape of the merge written in place), else `[B, Hq, Sq, Dv]`.
    AttentionHeads {
        causal: bool,
        scale: Option<f64>,
        split: [Option<(u64, u64, u64)>; 3],
        merge: bool,
    },
}

/// The padding modes of `pad`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PadMode {
    Constant,
    Reflect,
    Replicate,
}

/// What a [`Prim::Pool`] computes (PyTorch's semantics, NCHW: the trailing `k.len()` dims are
/// spatial).
#[derive(Clone, Debug, PartialEq)]
pub enum PoolOp {
    /// `max_pool{1,2}d` (`max`) / `avg_pool{1,2}d`: kernel, stride, padding, dilation per
    /// spatial dim, `ceil_mode`, `count_include_pad` (average only).
    Window {
        max: bool,
        k: Vec<u64>,
        s: Vec<u64>,
        p: Vec<u64>,
        d: Vec<u64>,
        ceil: bool,
        count_pad: bool,
    },
    /// `adaptive_avg_pool{1,2}d` to these output sizes.
    Adaptive(Vec<u64>),
    /// `pad` with PyTorch's pad list (last dim first: left, right, then the dim before, ...).
    Pad {
        pads: Vec<u64>,
        mode: PadMode,
        value: f64,
    },
    /// `upsample` over the dims after the first two: target `size` or `scale` per dim,
    /// `linear` (bilinear) or nearest, `align_corners`.
    Upsample {
        size: Vec<u64>,
        scale: Vec<f64>,
        linear: bool,
        align_corners: bool,
    },
}
