//! Step 6, the code generators: an optimized graph becomes the typed Rust API of a physical
//! model, on its backend.
//!
//! | backend | module | generates |
//! |---|---|---|
//! | CPU (default) | [`cpu`] (+ its `plan`) | the typed API; `evaluate` / `evaluate_gradients` run a plan (data read by `mithril::rt::plan`) |
//! | CPU, `static_shapes: true` | [`cpu_static`] | `evaluate` over slices with constant dims (called by the CPU generator) |
//! | CUDA (`backend: cuda`) | [`cuda`] | the device-resident API and one CUDA C module ([`cuda::kernel_text`]) |
//! | mixed (`backend_map`) | [`cpu`] + [`cuda::Mixed`] | the CPU host API; the nodes placed on cuda and the transfers lowered by the CUDA backend |
//!
//! Below the backends: [`api`] (`TypedApi`, the backend-neutral half of the typed API: run-time
//! dims, shape checks, types, struct names, the param / gradient structs, `randomize_params`),
//! [`cpu_elem`] (the element lowering both CPU generators share), [`common`] (what every
//! backend shares: `CodegenInput`, the param `Tree`, token helpers, and the mixed model's seam,
//! the `DeviceSide` trait) and [`pack`] (the packer of long texts: the documented string
//! constants, plans, shape checks, init tables). [`generate`], the driver, picks the backend and, for a mixed model,
//! gives the CPU generator the CUDA backend's `Mixed` as its `DeviceSide`.
//!
//! Imports (an arrow: "uses"; no circle):
//!
//! ```text
//! backends (generate) -> cpu, cuda
//! cpu        -> cpu_static, cpu_elem, api, common, pack
//! cpu_static -> cpu_elem, api, common
//! cuda       -> api, common, pack
//! api        -> common, pack
//! pack       -> (nothing)
//! cpu_elem   -> (ir, prims only)
//! common     -> (ir, options, placement only)
//! ```
//!
//! `cpu` and `cuda` do not import each other: a mixed model's CPU generator reaches the CUDA
//! backend only through the `DeviceSide` that [`generate`] makes for it.

pub(crate) mod api;
pub(crate) mod common;
pub(crate) mod cpu;
pub(crate) mod cpu_elem;
pub(crate) mod cpu_static;
pub(crate) mod cuda;
pub(crate) mod pack;

use crate::ir::Graph;
use crate::options::CudaOptions;
use common::{CodegenInput, DeviceSide};
use proc_macro2::TokenStream;

/// Generate physical model `g` (with gradients from `train`) on its backend: `backend: cuda`
/// (`cuda`: its options) on [`cuda`], else on the CPU generator ([`cpu`]), which a mixed model
/// (`backend_map`, `inp.cuda`) gives [`cuda::Mixed`] for its device side. Also returns the CUDA C
/// module, if any (for `file_path`).
pub(crate) fn generate<'a>(
    g: &'a Graph,
    train: Option<&'a Graph>,
    inp: &'a CodegenInput<'a>,
    cuda: Option<&'a CudaOptions>,
) -> Result<(TokenStream, Option<String>), Vec<syn::Error>> {
    // buffers: CPU models only (for now); run-time control flow and modes: CPU and
    // `backend: cuda` (`cuda::flow`), not mixed models
    if cuda.is_some() || g.placement.is_mixed() {
        // buffers (`buffer`, `update`): CPU models only (for now)
        if let Some(p) = g.params.iter().find(|p| p.buffer) {
            return Err(vec![g.error_at(
                p.node,
                format!("buffer `{}`: buffers (persistent state such as batch norm's running statistics) are not supported for `backend: cuda` or `backend_map` yet: compile this model for the CPU", p.dotted()),
            )]);
        }
    }
    if g.placement.is_mixed() {
        if let Some(id) = g
            .nodes
            .iter()
            .position(|n| matches!(n.op, crate::ir::Op::Mode))
        {
            return Err(vec![g.error_at(
                id,
                "`is_training` (the call's mode) is not lowered for `backend_map` (mixed) models yet: compile this model for the CPU or with `backend: cuda`",
            )]);
        }
        if let Some(id) = g.nodes.iter().position(|n| n.guard.is_some()) {
            let truth = g.nodes[..id]
                .iter()
                .rposition(|n| matches!(n.op, crate::ir::Op::Prim(crate::prims::Prim::Truth)))
                .unwrap_or(id);
            return Err(vec![g.error_at(
                truth,
                "a run-time `if` (a tensor condition) is not lowered for `backend_map` (mixed) models yet: compile this model for the CPU or with `backend: cuda`, or make the condition compile-time (a hyperparameter, or an input baked in with `constants:`)",
            )]);
        }
        if let Some(id) = g
            .nodes
            .iter()
            .position(|n| matches!(n.op, crate::ir::Op::Prim(crate::prims::Prim::LoopHead)))
        {
            return Err(vec![g.error_at(
                id,
                "a run-time loop (`while`, or `for` over a symbolic dim) is not lowered for `backend_map` (mixed) models yet: compile this model for the CPU or with `backend: cuda`",
            )]);
        }
    }
    match cuda {
        Some(opts) => cuda::CudaGen::new(g, train, inp, opts)
            .generate()
            .map(|(ts, src)| (ts, Some(src))),
        None => {
            let mut gen = cpu::Gen::new(g, inp);
            gen.train = train;
            gen.make_device = Some(mixed_device);
            gen.place(true);
            gen.generate()
        }
    }
}

/// The device side of a mixed model's graph: the CUDA backend's [`cuda::Mixed`].
fn mixed_device<'a>(
    g: &'a Graph,
    inp: &'a CodegenInput<'a>,
    opts: &'a CudaOptions,
    forward: bool,
) -> Box<dyn DeviceSide<'a> + 'a> {
    Box::new(cuda::Mixed::new(g, inp, opts, forward))
}
