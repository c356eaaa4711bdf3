//! Hand-written CUDA C kernels, as source text compiled at run time with NVRTC by
//! `mithril_runtime::cuda`.
//!
//! One `.cu` file per op family, each prefixed with the shared header-free [`PRELUDE`]
//! (`prelude.cuh`: f16/bf16 storage types and conversions, NaN-propagating max/min, warp and
//! block reductions, loop macros). Every kernel exists in `f32`, `f16` and `bf16` storage with
//! `f32` arithmetic, named `mt_<op>_<dtype>` ([`entry_name`]); [`ENTRIES`] lists the `<op>`
//! names of each source and [`DTYPES`] the suffixes.
//!
//! Launch shapes (the kernels assume them):
//! - *row kernels* (reductions over the last axis, softmax, norms, cross-entropy): a contiguous
//!   `[rows, cols]` array, a 1-D grid of blocks striding over rows, `blockDim.x` a multiple of
//!   32 and at most 1024 (`mithril_runtime::cuda::launch::row_config`);
//! - *elementwise kernels* (gelu, gathers, column sums): a 1-D grid-stride loop over `n`
//!   (`mithril_runtime::cuda::launch::elementwise_config`).
//!
//! Sizes are `long` (64-bit on the LP64 hosts CUDA supports): pass `i64`. Indices are `i64`
//! (`long long`). Optional pointers may be null (documented per source file).

/// The shared prelude every source starts with (also usable by generated kernels).
pub const PRELUDE: &str = include_str!("prelude.cuh");

/// Row reductions over the last axis (sum, mean, max, min) and column sums.
pub const REDUCE: &str = concat!(include_str!("prelude.cuh"), include_str!("reduce.cu"));
/// softmax and log_softmax over the last axis, with their backward passes.
pub const SOFTMAX: &str = concat!(include_str!("prelude.cuh"), include_str!("softmax.cu"));
/// LayerNorm and RMSNorm forward over the last axis.
pub const NORM: &str = concat!(include_str!("prelude.cuh"), include_str!("norm.cu"));
/// GELU (erf and tanh forms) and their derivatives.
pub const GELU: &str = concat!(include_str!("prelude.cuh"), include_str!("gelu.cu"));
/// Embedding gather (and its scatter-add backward), take_along over the last axis (and backward).
pub const GATHER: &str = concat!(include_str!("prelude.cuh"), include_str!("gather.cu"));
/// Fused softmax cross-entropy loss, forward and backward.
pub const XENT: &str = concat!(include_str!("prelude.cuh"), include_str!("xent.cu"));

/// The f32 / f64 kernels' addendum to [`PRELUDE`] (`nn_prelude.cuh`: the dtype macro, exp/log
/// overloads, -inf).
pub const NN_PRELUDE: &str = include_str!("nn_prelude.cuh");
/// Convolution forward, input (data) gradient / transposed convolution, weight gradient.
pub const CONV: &str = concat!(
    include_str!("prelude.cuh"),
    include_str!("nn_prelude.cuh"),
    include_str!("conv.cu")
);
/// Max / average / adaptive average pooling, pad, upsample, and their gradients.
pub const POOL: &str = concat!(
    include_str!("prelude.cuh"),
    include_str!("nn_prelude.cuh"),
    include_str!("pool.cu")
);
/// Attention: tiled online-softmax forward (and row log-sum-exps), the backward kernels.
pub const ATTENTION: &str = concat!(
    include_str!("prelude.cuh"),
    include_str!("nn_prelude.cuh"),
    include_str!("attention.cu")
);
/// Dropout's Philox4x32-10 mask kernel.
pub const DROPOUT: &str = concat!(
    include_str!("prelude.cuh"),
    include_str!("nn_prelude.cuh"),
    include_str!("dropout.cu")
);

/// Incremental decoding: the in-place cache update (`update_slice`, also as
/// `mt_update_slice_u16` for f16 / bf16 bits) and causal attention over a key/value cache's rows
/// in use (`cached_attention`).
pub const DECODE: &str = concat!(
    include_str!("prelude.cuh"),
    include_str!("nn_prelude.cuh"),
    include_str!("decode.cu")
);

/// Layout ops: the strided gather / scatter of slices, their gradient and permutes (also as
/// `mt_strided_{gather,scatter}_u16` for f16 / bf16 bits), and `arange` (also `mt_arange_i64`,
/// `mt_arange_i32`).
pub const LAYOUT: &str = concat!(
    include_str!("prelude.cuh"),
    include_str!("nn_prelude.cuh"),
    include_str!("layout.cu")
);

/// The f32 / f64 sources (CNN, attention, dropout, decoding, layout): `(file name, full source text)`. Their
/// kernels exist once per [`NN_DTYPES`] suffix and compute in the storage type.
pub const NN_SOURCES: &[(&str, &str)] = &[
    ("conv.cu", CONV),
    ("pool.cu", POOL),
    ("attention.cu", ATTENTION),
    ("dropout.cu", DROPOUT),
    ("decode.cu", DECODE),
    ("layout.cu", LAYOUT),
];

/// The kernels each of [`NN_SOURCES`] defines: `(file name, op names)`.
pub const NN_ENTRIES: &[(&str, &[&str])] = &[
    (
        "conv.cu",
        &["conv_forward", "conv_backward_data", "conv_backward_weight"],
    ),
    (
        "pool.cu",
        &[
            "max_pool",
            "max_pool_backward",
            "avg_pool",
            "avg_pool_backward",
            "adaptive_avg_pool",
            "adaptive_avg_pool_backward",
            "pad",
            "pad_backward",
            "upsample",
            "upsample_backward",
        ],
    ),
    (
        "attention.cu",
        &[
            "attention",
            "attention_lse",
            "attention_delta",
            "attention_bwd_q",
            "attention_bwd_kv",
            "attention_bwd_scores",
        ],
    ),
    ("dropout.cu", &["dropout"]),
    ("decode.cu", &["update_slice", "cached_attention"]),
    (
        "layout.cu",
        &["strided_gather", "strided_scatter", "arange"],
    ),
];

/// The storage dtypes of the [`NN_SOURCES`] kernels.
pub const NN_DTYPES: &[&str] = &["f32", "f64"];

/// The source (file name, text) of [`NN_SOURCES`] that defines `op`, if any.
pub fn nn_source_of(op: &str) -> Option<(&'static str, &'static str)> {
    let (file, _) = NN_ENTRIES.iter().find(|(_, ops)| ops.contains(&op))?;
    NN_SOURCES.iter().copied().find(|(f, _)| f == file)
}

/// Every hand-written source: `(file name, full source text)`.
pub const SOURCES: &[(&str, &str)] = &[
    ("reduce.cu", REDUCE),
    ("softmax.cu", SOFTMAX),
    ("norm.cu", NORM),
    ("gelu.cu", GELU),
    ("gather.cu", GATHER),
    ("xent.cu", XENT),
];

/// The kernels each source defines: `(file name, op names)`; each op exists once per [`DTYPES`]
/// suffix (see [`entry_name`]).
pub const ENTRIES: &[(&str, &[&str])] = &[
    (
        "reduce.cu",
        &["row_sum", "row_mean", "row_max", "row_min", "col_sum"],
    ),
    (
        "softmax.cu",
        &[
            "softmax",
            "log_softmax",
            "softmax_backward",
            "log_softmax_backward",
        ],
    ),
    ("norm.cu", &["layernorm", "rmsnorm"]),
    (
        "gelu.cu",
        &["gelu", "gelu_tanh", "gelu_backward", "gelu_tanh_backward"],
    ),
    (
        "gather.cu",
        &[
            "embedding",
            "embedding_backward",
            "take_along",
            "take_along_backward",
        ],
    ),
    ("xent.cu", &["softmax_xent", "softmax_xent_backward"]),
];

/// The storage dtypes every kernel is instantiated for.
pub const DTYPES: &[&str] = &["f32", "f16", "bf16"];

/// The `extern "C"` name of an op for a dtype: `entry_name("softmax", "bf16")` is
/// `"mt_softmax_bf16"`.
pub fn entry_name(op: &str, dtype: &str) -> String {
    format!("mt_{op}_{dtype}")
}

/// The source (file name, text) that defines `op`, if any.
pub fn source_of(op: &str) -> Option<(&'static str, &'static str)> {
    let (file, _) = ENTRIES.iter().find(|(_, ops)| ops.contains(&op))?;
    SOURCES.iter().copied().find(|(f, _)| f == file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_is_consistent() {
        assert_eq!(SOURCES.len(), ENTRIES.len());
        for ((f, src), (g, ops)) in SOURCES.iter().zip(ENTRIES) {
            assert_eq!(f, g);
            assert!(src.starts_with(PRELUDE));
            for op in *ops {
                // every op is instantiated through the dtype macro of its file
                assert!(src.contains(&format!("mt_{op}_##S(")), "{f}: {op}");
                assert_eq!(source_of(op).map(|s| s.0), Some(*f));
            }
        }
        assert_eq!(entry_name("softmax", "bf16"), "mt_softmax_bf16");
        assert!(source_of("nope").is_none());
    }

    #[test]
    fn nn_listing_is_consistent() {
        assert_eq!(NN_SOURCES.len(), NN_ENTRIES.len());
        for ((f, src), (g, ops)) in NN_SOURCES.iter().zip(NN_ENTRIES) {
            assert_eq!(f, g);
            assert!(src.starts_with(PRELUDE));
            assert!(src[PRELUDE.len()..].starts_with(NN_PRELUDE));
            for op in *ops {
                assert!(src.contains(&format!("mt_{op}_##S(")), "{f}: {op}");
                assert_eq!(nn_source_of(op).map(|s| s.0), Some(*f));
                // no clash with the f32/f16/bf16 sources' names
                assert!(source_of(op).is_none(), "{op}");
            }
        }
        assert!(nn_source_of("softmax").is_none());
        // the 16-bit copy of the cache update (f16 / bf16 caches)
        assert!(DECODE.contains("MT_DECODE_UPDATE(u16, unsigned short)"));
        // the 16-bit layout copies and the integer aranges
        assert!(LAYOUT.contains("MT_LAYOUT_COPY(u16, unsigned short)"));
        assert!(LAYOUT.contains("MT_LAYOUT_ARANGE(i64, long long)"));
    }
}
