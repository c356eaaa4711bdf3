//! Step 6, the code generators: an optimized graph becomes the typed Rust API of a physical
//! model, on its backend.
//!
//! | backend | module | generates |
//! |---|---|---|
//! | CPU (default) | `crate::codegen` (+ its `plan_gen`) | the typed API; `evaluate` / `evaluate_gradients` run a plan (data read by `mithril::rt::plan`) |
//! | CPU, `static_shapes: true` | [`cpu_static`] | `evaluate` over slices with constant dims (called by the CPU generator) |
//! | CUDA (`backend: cuda`) | [`cuda`] | the device-resident API and one CUDA C module ([`cuda::kernel_text`]) |
//! | mixed (`backend_map`) | `crate::codegen` + [`cuda::Mixed`] | the CPU host API; the nodes placed on cuda and the transfers lowered by the CUDA backend |
//!
//! Layering: [`common`] (what every backend shares: `CodegenInput`, the param `Tree`, token
//! helpers) imports no backend. Still circular, until the CPU generator moves here: the CUDA
//! backend and [`cpu_static`] use the CPU generator's `Gen` (its typed-API helpers: dims,
//! shape checks, struct names, param structs), and `Gen` holds a [`cuda::Mixed`] and calls
//! [`cpu_static::evaluate_body`].

pub(crate) mod common;
pub(crate) mod cpu;
pub(crate) mod cpu_static;
pub(crate) mod cuda;
