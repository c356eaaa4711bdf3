//! Compiled plans: what a generated CPU model runs.
//!
//! `mithril!` does not expand a model into Rust code per op. It emits the model's optimized
//! graph as a compact text ([`Plan::parse`] reads it once per process) and thin typed wrappers
//! around [`run`]: the shape checks, every op (with its attributes, dtype, memory slot and error
//! context), the fused elementwise groups as register programs ([`mithril_kernels::prog`]) and
//! the outputs. Everything that computes lives here and in `mithril-kernels`, compiled once at
//! the dependency's optimization level — so a model compiles in time proportional to its size
//! and a debug build of a user's crate runs the same optimized loops as a release build.
//!
//! The text is produced and read only by mithril (format: `text.rs`); a plan that does not
//! parse or does not match its operands is an internal error, never a panic.

mod chain;
mod exec;
pub(crate) mod text;

pub use chain::{chain_runs, set_chains};
pub use exec::{run, run_donating, run_hooked, run_with, OpHook, OpInfo};

/// The symbolic dims bound by the last call that ran with workspace `ws` (what
/// `trace_shapes: true` models' `last_symbols` returns): the model's shape checks
/// (`terminals`: its `C` records, `__mithril_terminals()`) replayed over the shapes the workspace
/// kept, each symbol of `syms` with its value, in slot order. `None` before the first call (and
/// if the checks do not parse or fit the shapes, which a generated model never has).
///
/// Nothing is recorded per call: the workspace keeps the last call's shapes for its memory
/// plan anyway. A call made while another one held the workspace runs on a temporary one and
/// is not seen here.
pub fn last_symbols(
    ws: &std::sync::Mutex<crate::Workspace>,
    syms: &'static [&'static str],
    terminals: &'static str,
) -> Option<Vec<(&'static str, usize)>> {
    let shapes = ws.lock().ok()?.last_shapes()?;
    let checks = text::parse_checks(terminals).ok()?;
    let mut env = crate::check::SymEnv::new(syms);
    for c in &checks {
        let given = shapes.get(c.view)?;
        crate::check::check_shape(&mut env, "", c.terminal, c.expected, given, &c.spec, c.ell)
            .ok()?;
    }
    Some(
        syms.iter()
            .enumerate()
            .filter_map(|(k, n)| env.get(k).map(|v| (*n, v)))
            .collect(),
    )
}

use crate::check::DimSpec;
use crate::elem::DType;
use crate::ops::SliceArg;
use crate::params::{TensorView, TensorViewMut};
use crate::{Elem, Error, Result};
use half::{bf16, f16};
use mithril_kernels::prog::{Lit, Prog};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Dimension};
use std::sync::OnceLock;

/// A parsed plan.
#[derive(Debug)]
pub struct Plan {
    /// The physical model's name.
    pub model: &'static str,
    /// Symbolic dim names, by slot.
    pub syms: &'static [&'static str],
    /// Shape checks of the views passed to [`run`], in order.
    pub checks: Vec<Check>,
    /// The ops in schedule order (node ids are indices).
    pub nodes: Vec<Step>,
    /// Output node ids, in output order.
    pub outputs: Vec<usize>,
    /// The plan as a chain of products ([`chain`]), analysed at the first run.
    pub(crate) chain: OnceLock<Option<chain::Chain>>,
}

/// The shape check of one input, param or output-gradient view.
#[derive(Debug)]
pub struct Check {
    /// index of the view in `run`'s `views`
    pub view: usize,
    /// how errors name it (``input `x` ``)
    pub terminal: &'static str,
    /// the declared type (`f32[B, 784]`)
    pub expected: &'static str,
    /// declared dims
    pub spec: Vec<DimSpec>,
    /// declared with a leading `...`
    pub ell: bool,
}

/// One node of the plan.
#[derive(Debug)]
pub struct Step {
    /// result dtype
    pub dt: DType,
    /// where the result lives
    pub home: Home,
    /// what it computes
    pub op: POp,
    /// operand node ids
    pub args: Vec<usize>,
    /// how errors name it (`` `matmul` of input `x`, param `fc.weight` for `h` ``)
    pub what: &'static str,
    /// a run-time `if`'s branch: the node runs only when this node's value (a scalar `bool`)
    /// is true; otherwise its value stays unset (only the branch and its phi read it)
    pub guard: Option<usize>,
}

/// Where a node's value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Home {
    /// user memory (a view) or another node's value
    View,
    /// a planned workspace slot
    Slot(usize),
    /// the memory of its dead operand `pos` (an elementwise op in place)
    InPlace(usize),
    /// an owned array (a returned output)
    Owned,
}

/// A run-time dim.
#[derive(Clone, Debug, PartialEq)]
pub enum DimE {
    /// a constant
    K(usize),
    /// a symbol's bound value
    Sym(usize),
    /// dim `axis` of view `view` (`back`: counted from the end, 1 = last)
    In {
        /// the view
        view: usize,
        /// the axis
        axis: usize,
        /// counted from the end
        back: bool,
    },
    /// `c * d0 * d1 * ...`
    Prod(usize, Vec<DimE>),
}

/// Reductions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum RKind {
    Sum,
    Mean,
    Max,
    Min,
    Prod,
}

/// The op of a node.
#[derive(Debug)]
#[allow(missing_docs)]
pub enum POp {
    /// view `k` of `run`'s `views`
    View(usize),
    /// the value of `args[0]`
    Alias,
    /// after a run-time `if`: the value of `args[2]` when `args[0]` is true, else of `args[3]`
    Phi,
    /// a scalar constant (in the compute domain of `dt`)
    Const(Lit),
    /// a fused elementwise group over `args` (with the op name its errors use)
    Fused(&'static str, Prog),
    /// a matmul of `args[0..2]` with an epilogue over the product (operand 0) and `args[2..]`
    FusedMatmul {
        ta: bool,
        tb: bool,
        prog: Prog,
    },
    Matmul {
        ta: bool,
        tb: bool,
    },
    Transpose(Vec<usize>),
    /// target dims (`None`: inferred, `-1`)
    Reshape(Vec<Option<DimE>>),
    Flatten(isize, isize),
    Concat(isize),
    Slice(Vec<SliceArg>),
    Gather(isize),
    TakeAlong,
    Reduce(RKind, Vec<isize>, bool),
    Variance(Vec<isize>, bool, f64),
    ArgReduce {
        max: bool,
        axis: isize,
        keep: bool,
    },
    Softmax(isize),
    LogSoftmax(isize),
    Unsqueeze(Vec<usize>),
    BroadcastLike,
    ReshapeLike,
    SumLike,
    SizeRatio,
    TakeAlongGrad,
    GatherGrad(isize),
    SliceGrad(Vec<SliceArg>),
    ConcatPart(isize, usize),
    Tril(i64),
    Triu(i64),
    FullLike(f64),
    Stack(isize),
    Cholesky,
    Eigvalsh,
    EighVectors,
    SolveTriangular {
        upper: bool,
        left: bool,
        trans: bool,
    },
    Arange {
        start: f64,
        step: f64,
        len: DimE,
    },
    // ---- run-time loops (see `mithril-macros/src/prims/control.rs` for the node pattern)
    /// a loop variable's memory: `args[0]` copied in at loop entry (no operand: zeros of `dims`,
    /// a scan's stacked output)
    Carry(Vec<DimE>),
    /// the start of a loop's body: the back edge returns after it
    LoopHead,
    /// leaves the loop (to the node after `end`) when `args[1]` is false; `Err` when the loop
    /// would run more than `max` iterations; saves the carries of `tape` (a bit mask over the
    /// head's operands) for the backward pass
    LoopTest {
        max: Option<u64>,
        tape: u64,
        end: usize,
    },
    /// the update `args[1]` of carry `args[0]` (a view of the update)
    LoopNext,
    /// the end of a loop's body: each `loop_next`'s update copied into its carry, then back
    LoopEnd,
    /// carry `args[1]` after the loop
    LoopExit,
    /// carry `j` of the loop of test `args[0]` at the start of iteration `args[1]`
    TapeRead(usize),
    /// a run-time dim as an `i64` scalar
    DimValue(DimE),
    /// `args[0]` with slice `args[2]` along `axis` replaced by (`add`: increased by) `args[1]`
    SetAt {
        axis: i64,
        add: bool,
    },
    // ---- pooling, pad, upsample (the pool family)
    /// a pooling / pad / upsample op of `args[0]`
    Pool(crate::ops::PoolSpec),
    /// its gradient: `args[0]` the output's gradient, `args[1]` the op's input
    PoolGrad(crate::ops::PoolSpec),
    // ---- attention (`ops::attention`)
    /// `attention(q, k, v[, mask])` (`part` 0), or one of its gradients (`part` 1..=5: q, k, v,
    /// stacked k and v, the masked scores) from `(q, k, v[, mask], out, out gradient)`;
    /// `scale` `None`: `1/√head_dim`
    Attention {
        causal: bool,
        scale: Option<f64>,
        part: u8,
        /// dropout on the weights: (p, the op's id, the seed view); the mode (`is_training`)
        /// is then the last operand
        dropout: Option<(f64, u32, usize)>,
    },
    // ---- norm / dropout (random ops)
    /// `dropout` of `args[0]` in the mode `args[1]` (`is_training`), the call's seed read from
    /// view `seed` (an `i64` scalar, the bits of `Mode::seed`); `op`: the op's id in the model
    Dropout {
        p: f64,
        op: u32,
        seed: usize,
    },
    // ---- convolution (`mithril-macros/src/prims/conv.rs`)
    /// a convolution, transposed convolution or one of their gradients
    Conv(Box<crate::ops::conv::ConvSpec>),
    // ---- incremental decoding (`mithril-macros/src/prims/decode.rs`)
    /// `update_slice(args[0], args[1], args[2])`: `args[0]` with rows `start ..` along `axis`
    /// replaced by `args[1]`, `start` the `i64` scalar `args[2]` (in place over a donated
    /// input: only those rows are written)
    UpdateSlice {
        axis: i64,
    },
    /// `cached_attention(q, k, v, pos)` (`ops::cached_attention_to`); `scale` `None`: `1/√D`
    CachedAttention {
        scale: Option<f64>,
    },
    /// a forward convolution of `args[0..2]` with its epilogue fused into the kernel's store:
    /// plus the bias `args[2]` (with `bias`), then the ReLU (with `relu`), then (with `pool`)
    /// a 2×2 / stride-2 max pool
    ConvEpi {
        spec: Box<crate::ops::conv::ConvSpec>,
        bias: bool,
        relu: bool,
        pool: bool,
    },
    // ---- row normalisations (made by the compiler's `norm_fusion` pass)
    /// a layer norm (`rms` false) or RMS norm of `args[0]` over its last axis
    /// (`ops::norm_to`), then `· args[1]` with `scale` and `+` the next operand with `bias`
    Norm {
        eps: f64,
        rms: bool,
        scale: bool,
        bias: bool,
    },
    /// `attention(q, k, v[, mask])` with the head split / merge folded in (made by the
    /// compiler's `head_fusion` pass; `ops::attention_heads_to`): how each of `q, k, v` is
    /// read, and whether the result is written merged (`[B, Sq, Hq · Dv]`)
    AttentionHeads {
        causal: bool,
        scale: Option<f64>,
        merge: bool,
        cols: [crate::ops::HeadCols; 3],
    },
}

impl POp {
    /// The op's name in profiles and hook calls (`matmul`, `fused`, `fused_matmul`, `sum`, ...).
    pub fn kind(&self) -> &'static str {
        match self {
            POp::View(_) => "view",
            POp::Alias => "alias",
            POp::Phi => "phi",
            POp::Const(_) => "const",
            POp::Fused(..) => "fused",
            POp::FusedMatmul { .. } => "fused_matmul",
            POp::Matmul { .. } => "matmul",
            POp::Transpose(_) => "transpose",
            POp::Reshape(_) => "reshape",
            POp::Flatten(..) => "flatten",
            POp::Concat(_) => "concat",
            POp::Slice(_) => "slice",
            POp::Gather(_) => "gather",
            POp::TakeAlong => "take_along",
            POp::Reduce(k, ..) => match k {
                RKind::Sum => "sum",
                RKind::Mean => "mean",
                RKind::Max => "max",
                RKind::Min => "min",
                RKind::Prod => "prod",
            },
            POp::Variance(..) => "variance",
            POp::ArgReduce { max: true, .. } => "argmax",
            POp::ArgReduce { max: false, .. } => "argmin",
            POp::Softmax(_) => "softmax",
            POp::LogSoftmax(_) => "log_softmax",
            POp::Norm { rms: false, .. } => "layer_norm",
            POp::Norm { rms: true, .. } => "rms_norm",
            POp::AttentionHeads { .. } => "attention",
            POp::Dropout { .. } => "dropout",
            POp::Unsqueeze(_) => "unsqueeze",
            POp::BroadcastLike => "broadcast_like",
            POp::ReshapeLike => "reshape_like",
            POp::SumLike => "sum_like",
            POp::SizeRatio => "size_ratio",
            POp::TakeAlongGrad => "take_along_grad",
            POp::GatherGrad(_) => "gather_grad",
            POp::SliceGrad(_) => "slice_grad",
            POp::ConcatPart(..) => "concat_part",
            POp::Tril(_) => "tril",
            POp::Triu(_) => "triu",
            POp::FullLike(_) => "full_like",
            POp::Stack(_) => "stack",
            POp::Cholesky => "cholesky",
            POp::Eigvalsh => "eigvalsh",
            POp::EighVectors => "eigh_vectors",
            POp::SolveTriangular { .. } => "solve_triangular",
            POp::Arange { .. } => "arange",
            POp::Carry(_) => "loop_carry",
            POp::LoopHead => "loop_head",
            POp::LoopTest { .. } => "loop_test",
            POp::LoopNext => "loop_next",
            POp::LoopEnd => "loop_end",
            POp::LoopExit => "loop_exit",
            POp::TapeRead(_) => "tape_read",
            POp::DimValue(_) => "dim_value",
            POp::SetAt { .. } => "set_at",
            // pooling, pad, upsample
            POp::Pool(s) => s.name(),
            POp::PoolGrad(_) => "pool_grad",
            // attention
            POp::Attention { part: 0, .. } => "attention",
            POp::Attention { .. } => "attention_grad",
            // ---- convolution
            POp::Conv(c) => match c.kind {
                crate::ops::conv::ConvKind::Forward => "conv",
                crate::ops::conv::ConvKind::Transpose => "conv_transpose",
                crate::ops::conv::ConvKind::GradData => "conv_grad_data",
                crate::ops::conv::ConvKind::GradWeight => "conv_grad_weight",
            },
            // incremental decoding
            POp::UpdateSlice { .. } => "update_slice",
            POp::CachedAttention { .. } => "cached_attention",
            POp::ConvEpi { .. } => "conv_fused",
        }
    }
}

impl Plan {
    /// Parse a plan text (see the module docs). Strings are borrowed from `src` where they
    /// need no unescaping; the others (and the symbol table) are leaked once — a plan is
    /// parsed once per model and process and lives as long as the program.
    pub fn parse(src: &'static str) -> Result<Plan> {
        text::parse(src).map_err(|e| Error::op("plan", format!("internal: bad plan: {e}")))
    }

    /// The plan in `cell`, parsed from `src` at the first call.
    pub fn cached(
        cell: &'static OnceLock<std::result::Result<Plan, String>>,
        src: &'static str,
    ) -> Result<&'static Plan> {
        Self::cached_with(cell, "", src)
    }

    /// [`Plan::cached`] for a plan whose shape checks of inputs and params (`C` records) are
    /// the model's `terminals`, shared by its `evaluate` and `evaluate_gradients` plans: they
    /// go right after the first line of `src`.
    pub fn cached_with(
        cell: &'static OnceLock<std::result::Result<Plan, String>>,
        terminals: &'static str,
        src: &'static str,
    ) -> Result<&'static Plan> {
        let init = || {
            let src = if terminals.is_empty() {
                src
            } else {
                let cut = src.find('\n').map_or(src.len(), |i| i + 1);
                let whole = format!("{}{terminals}{}", &src[..cut], &src[cut..]);
                &*Box::leak(whole.into_boxed_str())
            };
            Plan::parse(src).map_err(|e| e.to_string())
        };
        match cell.get_or_init(init) {
            Ok(p) => Ok(p),
            Err(e) => Err(Error::op("plan", e.clone())),
        }
    }
}

/// An owned array of any element type.
#[derive(Debug)]
#[allow(missing_docs)]
pub enum AnyArray {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    I32(ArrayD<i32>),
    I64(ArrayD<i64>),
    Bool(ArrayD<bool>),
}

/// The element types a plan moves between typed and untyped arrays.
pub trait PlanElem: Elem {
    /// wrap a view
    fn any<'a>(v: ArrayViewD<'a, Self>) -> TensorView<'a>;
    /// wrap a writable view
    fn any_mut(v: ArrayViewMutD<'_, Self>) -> TensorViewMut<'_>;
    /// wrap an array
    fn any_array(a: ArrayD<Self>) -> AnyArray;
    /// this type's view, if `v` holds it
    fn pick<'v, 'a>(v: &'v TensorView<'a>) -> Option<&'v ArrayViewD<'a, Self>>;
    /// this type's writable view, if `v` holds it
    fn pick_mut<'a>(v: TensorViewMut<'a>) -> Option<ArrayViewMutD<'a, Self>>;
    /// this type's array, if `a` holds it
    fn pick_array(a: AnyArray) -> Option<ArrayD<Self>>;
    /// this type's array, borrowed, if `a` holds it
    fn pick_array_ref(a: &AnyArray) -> Option<&ArrayD<Self>>;
}

macro_rules! plan_elem {
    ($t:ty, $v:ident) => {
        impl PlanElem for $t {
            fn any<'a>(v: ArrayViewD<'a, Self>) -> TensorView<'a> {
                TensorView::$v(v)
            }
            fn any_mut(v: ArrayViewMutD<'_, Self>) -> TensorViewMut<'_> {
                TensorViewMut::$v(v)
            }
            fn any_array(a: ArrayD<Self>) -> AnyArray {
                AnyArray::$v(a)
            }
            fn pick<'v, 'a>(v: &'v TensorView<'a>) -> Option<&'v ArrayViewD<'a, Self>> {
                match v {
                    TensorView::$v(x) => Some(x),
                    _ => None,
                }
            }
            fn pick_mut<'a>(v: TensorViewMut<'a>) -> Option<ArrayViewMutD<'a, Self>> {
                match v {
                    TensorViewMut::$v(x) => Some(x),
                    _ => None,
                }
            }
            fn pick_array_ref(a: &AnyArray) -> Option<&ArrayD<Self>> {
                match a {
                    AnyArray::$v(x) => Some(x),
                    _ => None,
                }
            }
            fn pick_array(a: AnyArray) -> Option<ArrayD<Self>> {
                match a {
                    AnyArray::$v(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}
plan_elem!(f32, F32);
plan_elem!(f64, F64);
plan_elem!(f16, F16);
plan_elem!(bf16, BF16);
plan_elem!(i32, I32);
plan_elem!(i64, I64);
plan_elem!(bool, Bool);

/// The views a generated function passes to [`run`] (inputs, params, output-gradient seeds, in
/// the plan's order), gathered on the stack: `N` is their count.
pub struct Views<'a, const N: usize> {
    views: smallvec::SmallVec<[TensorView<'a>; N]>,
}

impl<'a, const N: usize> Default for Views<'a, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'a, const N: usize> Views<'a, N> {
    /// No views yet.
    pub fn new() -> Self {
        Views {
            views: smallvec::SmallVec::new(),
        }
    }

    /// Appends `v`.
    pub fn push(&mut self, v: TensorView<'a>) {
        self.views.push(v);
    }

    /// All `N` views, or an error naming `model` if a different number was pushed.
    pub fn get(&self, model: &str) -> Result<&[TensorView<'a>]> {
        if self.views.len() != N {
            return Err(Error::op(
                model,
                format!("internal: {} views for a plan of {N}", self.views.len()),
            ));
        }
        Ok(&self.views)
    }
}

/// Wrap a typed view for [`run`].
pub fn view<'a, T: PlanElem, D: Dimension>(v: ndarray::ArrayView<'a, T, D>) -> TensorView<'a> {
    T::any(v.into_dyn())
}

/// The view [`run_donating`] gets of an input the caller gives up (`evaluate_donating`): a
/// read-only view of `a` whose pointer keeps the writable provenance of the `&mut` borrow, so
/// that the run may compute an output into that memory. The borrow lasts as long as the view.
pub fn donor_view<'a, T, D: Dimension>(
    a: &'a mut ndarray::Array<T, D>,
) -> ndarray::ArrayView<'a, T, D> {
    // SAFETY: the same memory for the same lifetime, from an exclusive borrow.
    unsafe { a.view_mut().raw_view_mut().deref_into_view() }
}

/// An owned array as one of [`run`]'s outputs (the donated input's array, now the output).
pub fn give<T: PlanElem, D: Dimension>(a: ndarray::Array<T, D>) -> AnyArray {
    T::any_array(a.into_dyn())
}

/// Output `k` of [`run`]'s result as a typed array of rank `D`; `name` names it in errors.
pub fn take<T: PlanElem, D: Dimension>(
    outs: &mut [Option<AnyArray>],
    k: usize,
    name: &str,
) -> Result<ndarray::Array<T, D>> {
    let a = outs
        .get_mut(k)
        .and_then(|o| o.take())
        .ok_or_else(|| Error::op(name, "internal: output not computed"))?;
    let a = T::pick_array(a).ok_or_else(|| Error::op(name, "internal: output of another dtype"))?;
    a.into_dimensionality::<D>()
        .map_err(|e| Error::op(name, e.to_string()))
}
