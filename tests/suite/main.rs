//! The integration-test suite: one test binary, one module per area (each was its own binary;
//! grouped so that the suite compiles and links once). Run one area with a filter on its module
//! name, e.g. `cargo test -p mithril --test suite gradcheck::` or
//! `cargo test -p mithril --test suite -- prims::matmul_all_forms --exact`.
//!
//! Separate binaries, on purpose: `tests/memory.rs` installs a counting `#[global_allocator]`
//! (process-wide), and `tests/ui.rs` runs the trybuild compile-fail cases. No module here sets
//! process-wide state: the ISA forcing of `simd_paths` (`isa::with_isa`) and the thread cap of
//! `optimize_for` (`threads::limit_call_threads`, read through `threads::last_call_threads`)
//! are per thread, no test sets an environment variable or changes the working directory, and
//! the files tests write have per-test names (plus the process id where two runs could meet).
//! One exception, harmless to the others: `inspect` installs a `log` logger (once per process)
//! that keeps only the records of the threads that ask for them.
//!
//! Shared helpers (NVRTC/GPU detection, the central-difference gradient check) are in
//! `tests/common`, included once here.

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod attention;
mod catalog;
mod catalog_math;
mod checkpointing;
mod composition;
mod control_flow;
mod cpu_options;
mod cuda;
mod cuda_backend;
mod examples;
mod frontend;
mod gradcheck;
mod gradients;
mod inference;
mod inspect;
mod introspection;
mod introspection_reports;
mod library;
mod linalg;
mod loops;
mod multi_backend;
mod norm;
mod optimizations;
mod optimize_for;
// pooling, pad, upsample
mod pool;
mod prims;
mod quant;
mod render;
mod roles;
mod runtime_errors;
mod safetensors_compat;
mod sequence_models;
mod simd_paths;
mod smoke;
mod static_shapes;
mod train;
mod train_examples; // norm / dropout
// ---- convolution (conv)
mod conv;
