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
}
