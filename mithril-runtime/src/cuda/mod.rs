//! The CUDA backend's runtime: devices, device tensors, NVRTC kernel compilation with an on-disk
//! cache, launch shapes, the hand-written kernels of `mithril_kernels::cuda` as typed ops, and
//! cuBLAS / cuBLASLt matrix products.
//!
//! Everything is built on [`cudarc`] with *dynamic loading*: no CUDA library is needed to build
//! or to run code that does not touch a GPU. The driver (`libcuda`), NVRTC, cuBLAS and cuBLASLt
//! are `dlopen`ed at first use. cudarc panics when a library it calls cannot be loaded, so every
//! entry point of this module first checks the library with [`library_present`] and returns
//! [`crate::Error::Device`] instead — no function here panics because CUDA is
//! missing.
//!
//! What needs what:
//! - [`compile`], [`compile_ptx`], [`KernelCache`]: NVRTC only (no driver, no GPU). NVRTC is
//!   found on the loader path, or preloaded from the directory in `MITHRIL_NVRTC_DIR`
//!   ([`NVRTC_DIR_ENV`]) or by [`preload_nvrtc`].
//! - [`CudaDevice::open`] and everything that takes a device: the driver, NVRTC, cuBLAS,
//!   cuBLASLt and a visible device.
//!
//! State: the NVRTC paths are tested on CPU-only machines (every hand-written source compiles
//! for `sm_80` and `sm_90`); the device paths compile but have not been run on a GPU yet (see
//! `docs/cuda.md`).

pub(crate) mod blas;
pub(crate) mod cache;
pub(crate) mod compile;
pub mod decode;
mod device;
pub mod exec;
pub mod flow;
pub mod launch;
pub mod layout;
mod libs;
pub mod nn;
mod ops;
mod tensor;

pub use blas::{matmul_f32, matmul_lt, row_major_gemm, Activation, F32Precision, GemmDims, LtElem};
pub use cache::{cache_key, default_cache_dir, CacheConfig, CacheKey, KernelCache, Origin};
pub use compile::{check_arch, compile, compile_ptx, nvrtc_version, ModuleImage, Output};
pub use device::{CudaDevice, DeviceOptions};
pub use libs::{
    gpu_status, library_present, nvrtc_available, preload_nvrtc, require_nvrtc, CudaLib,
    NVRTC_DIR_ENV,
};
pub use nn::{
    attention, attention_grad, conv, conv_shaped, dropout, pool, pool_backward, DeviceAttnMask,
    NnElem,
};
pub use ops::{
    col_sum, embedding, embedding_backward, gelu, layernorm, log_softmax, rmsnorm, row_reduce,
    softmax, softmax_cross_entropy, softmax_cross_entropy_backward, take_along, FloatElem,
    GeluKind, RowReduce,
};
pub use tensor::{DeviceElem, DeviceTensor};

/// The hand-written kernel sources (`mithril_kernels::cuda`): `SOURCES`, `ENTRIES`, `PRELUDE`.
pub use mithril_kernels::cuda as kernels;

/// Re-export of the `cudarc` crate the backend is built on (for custom launches).
pub use cudarc;

use crate::Error;

/// `Error::Device` from any displayable CUDA error, with what was being done.
pub(crate) fn dev_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Device(format!("{what}: {e}"))
}
