//! Step 6 for `backend: cuda`: the typed API of a physical model whose work runs on a CUDA
//! device.
//!
//! The host-side types are the CPU backend's (`MInputs<'a>` of ndarray views, `MOutputs`,
//! `MParams`, `MGrads`, built by [`TypedApi`], as the CPU backend's), so initialisation, safetensors and
//! optimizers work unchanged. Next to them: `MDeviceParams` / `MDeviceGrads` (the same tree with
//! `DeviceTensor` leaves), `MDeviceInputs<'a>` (borrowed device tensors), `MDeviceOutputs`, and
//! `evaluate_device` / `evaluate_gradients_device`, which never copy through the host.
//!
//! Lowering, node by node: every fused elementwise group (and `FusedMatmul` epilogue) becomes one
//! CUDA C kernel through [`kernel_text`]; all kernels of the model form one module, `M::CUDA_SOURCE`,
//! compiled by NVRTC at the first launch (cached on disk). Matrix products go to cuBLAS
//! (`cublasGemmEx`: strict f32 unless `tf32: true`, bf16 with f32 results under `amp: true`) or
//! to cuBLASLt with the bias / ReLU / GELU epilogue for f16 / bf16 when the epilogue matches;
//! reductions, softmax, log_softmax, take_along, gather (embedding) and their gradients call
//! `mithril::rt::cuda`. A node without a lowering is a compile error spanned on the tokens that
//! made it, naming the primitive and listing what is supported.
//!
//! The modules, by what they generate: [`kernel_text`] the CUDA C text of fused kernels (a pure
//! function of the IR); `read` how a broadcast operand is read and which matmul epilogues
//! cuBLASLt runs; `launch` kernel launches and library calls (elementwise, casts, matmuls,
//! reshapes); `nodes` a whole graph's body and the lowering of the nodes that are no primitive
//! (constants, fused groups, `FusedMatmul`), each primitive's being its family's
//! (`prims::Family::cuda`) through `cx`, the generator's `prims::cuda::CudaCx`; `api` the model's types and
//! `impl` (input / output structs, transfers, `new`, `evaluate*`, consts); `params` the param
//! trees (host and device structs, conversions, `ParamTree`); `gradients` the gradient API;
//! `flow` run-time control flow (a run-time `if`, loops and scans, tapes, `is_training`) as
//! structured host code around the per-node code;
//! [`Mixed`] (in `mixed`) the device side of a mixed (`backend_map`) model, driven by the CPU
//! generator through `common::DeviceSide`.
//!
//! Imports: [`super::common`] and [`super::api`] ([`TypedApi`]: run-time dims, shape checks,
//! struct names, the host param structs); nothing from the CPU generator, which reaches
//! [`Mixed`] only as a `DeviceSide` made by the driver ([`super::generate`]).

mod api;
mod cx;
pub(crate) mod flow;
mod gradients;
pub(crate) mod kernel_text;
mod launch;
mod mixed;
mod nodes;
mod params;
mod read;

pub(crate) use mixed::Mixed;

use crate::backends::api::TypedApi;
use crate::backends::common::{v, CodegenInput};
use crate::ir::{DType, Dim, Graph, NodeId, Op};
use crate::options::CudaOptions;
use crate::prims::storage_type;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

/// What `backend: cuda` lowers (listed in the error for a node it does not).
pub const SUPPORTED: &str = "elementwise groups (every elementwise primitive; operands of the output's shape, scalars, trailing broadcasts like a bias `[C]`, leading ones like `[N, 1]`), \
matmul of rank 2 or batched (either operand transposed; with its fused epilogue), sum / mean / max / min over trailing axes and sum over leading axes (f32, f16, bf16), \
softmax / log_softmax over the last axis (f32, f16, bf16), take_along and its gradient, gather with axis = 0 on a 2-D table (embedding) and its gradient, \
reshape / flatten, and the gradient helpers (broadcast, size ratio); \
f32 / f64 / f16 / bf16: the convolutions, max / average / adaptive pooling, pad, upsample, attention and their gradients, dropout; `x[i]` on the leading axis; \
the key/value cache's `update_slice` (in place when its input is donated) and `cached_attention` (f32 / f64 / f16 / bf16); slices (ranges with any step, indices, new axes) and their gradient, `transpose`, `concat` / `stack` and their gradients, `arange`";

fn rt() -> TokenStream {
    quote!(::mithril::rt::cuda)
}

/// Code generator of one cuda physical model.
pub struct CudaGen<'a> {
    g: &'a Graph,
    train: Option<&'a Graph>,
    inp: &'a CodegenInput<'a>,
    opts: &'a CudaOptions,
    /// CUDA C kernels of the module, in order, and their entry names.
    kernels: Vec<String>,
    entries: Vec<String>,
    errors: Vec<syn::Error>,
    /// Device-to-host reads the generated code makes (`flow::read_bool` / `read_index`),
    /// counted while a graph's code is emitted.
    readbacks: usize,
    /// One summary line per run-time loop: how many device values each iteration reads back.
    loop_notes: Vec<String>,
    /// The inputs of `donate: [..]` (indices into `g.inputs`): owned by
    /// `evaluate_device_donating`, so an op reading one last may write into it (`api.rs`).
    donated: Vec<usize>,
}

/// The graph being lowered: forward (`f`) or forward+backward (`g`) kernels.
struct Ctx<'a> {
    g: &'a Graph,
    gen: TypedApi<'a>,
    prefix: &'static str,
    uses: Vec<usize>,
    is_output: Vec<bool>,
    /// Nodes held as owned `DeviceTensor`s (the others are `&DeviceTensor`s).
    owned: Vec<bool>,
    /// Device values are named `dN` (mixed models, where `vN` is the host value).
    dev_names: bool,
    /// Run-time control flow (`nodes.rs`): nodes computed under a run-time guard, held as an
    /// `Option` (`None` when their branch did not run).
    opt: Vec<bool>,
    /// Nodes whose value is another node's (`Truth`, `Boundary`, `loop_next`, `loop_exit`,
    /// an in-place `set_at`): read as that node.
    alias: Vec<Option<NodeId>>,
    /// Nodes a `phi` borrows (never moved).
    borrowed: Vec<bool>,
    /// Scalar `bool` nodes also held on the host as `__bN` (guards, loop conditions).
    host_bool: Vec<bool>,
    /// Integer and `bool` scalars computed on the host only, as `__bN` (a counted loop's
    /// counter, its condition and step index; `flow::host_scalars`).
    host: Vec<bool>,
    /// Host scalars also read by a device op (uploaded as `vN` after their host value).
    host_dev: Vec<bool>,
    /// Integer scalar inputs a device op needs on the host (the decode position of
    /// `update_slice` / `cached_attention`): read back once at the start of the call, as
    /// `__hN` (`CudaGen::body`), not once per op.
    host_read: Vec<bool>,
}

impl<'a> Ctx<'a> {
    /// The local holding a node's device value.
    fn name(&self, id: NodeId) -> Ident {
        if self.dev_names {
            format_ident!("d{}", id)
        } else {
            v(id)
        }
    }
    /// The node whose value `id`'s is (through aliases).
    fn resolve(&self, mut id: NodeId) -> NodeId {
        while let Some(a) = self.alias.get(id).copied().flatten() {
            id = a;
        }
        id
    }
    /// An owned value `a` its user `user` may consume (move): dead after it, computed at the
    /// same loop level, not a branch's optional value, not borrowed.
    fn movable(&self, a: NodeId, user: NodeId) -> bool {
        self.owned[a]
            && self.uses[a] == 1
            && !self.is_output[a]
            && !self.opt[a]
            && !self.borrowed[a]
            && self.alias[a].is_none()
            && self.g.nodes[a].region == self.g.nodes[user].region
    }
    /// The expression of a node's value as `&DeviceTensor<T>`.
    fn r(&self, id: NodeId) -> TokenStream {
        let id = self.resolve(id);
        let vid = self.name(id);
        if self.opt[id] {
            let label = self.label(id);
            return if self.owned[id] {
                quote!((::mithril::rt::cuda::flow::taken(&#vid, #label)?))
            } else {
                quote!((*::mithril::rt::cuda::flow::taken(&#vid, #label)?))
            };
        }
        if self.owned[id] {
            quote!((&#vid))
        } else {
            quote!(#vid)
        }
    }
    fn dt(&self, id: NodeId) -> DType {
        self.g.dtype_of(id).unwrap_or(DType::F32)
    }
    fn ty(&self, id: NodeId) -> TokenStream {
        storage_type(self.dt(id))
    }
    fn label(&self, id: NodeId) -> String {
        self.g.nodes[id]
            .label
            .clone()
            .unwrap_or_else(|| format!("%{id}"))
    }
    /// Resolved dims, or `Err` for an open rank.
    fn dims(&self, id: NodeId) -> Result<Vec<Dim>, String> {
        match self.g.shape_of(id) {
            Some(s) if s.rest.is_none() => Ok(s.dims.iter().map(|d| self.g.env.dim(d)).collect()),
            _ => Err(format!(
                "its operand {} has an open rank (`...`)",
                self.g.describe(id)
            )),
        }
    }
}

impl<'a> CudaGen<'a> {
    /// A generator for the forward graph `g` (and the forward+backward graph `train`).
    pub fn new(
        g: &'a Graph,
        train: Option<&'a Graph>,
        inp: &'a CodegenInput<'a>,
        opts: &'a CudaOptions,
    ) -> Self {
        CudaGen {
            g,
            train,
            inp,
            opts,
            kernels: Vec::new(),
            entries: Vec::new(),
            errors: Vec::new(),
            readbacks: 0,
            loop_notes: Vec::new(),
            donated: Vec::new(),
        }
    }

    fn ctx(&self, g: &'a Graph, prefix: &'static str) -> Ctx<'a> {
        let mut is_output = vec![false; g.nodes.len()];
        for o in &g.outputs {
            is_output[o.node] = true;
        }
        Ctx {
            g,
            gen: TypedApi::new(g, self.inp),
            prefix,
            uses: g.use_counts(),
            is_output,
            owned: vec![false; g.nodes.len()],
            dev_names: false,
            opt: vec![false; g.nodes.len()],
            alias: vec![None; g.nodes.len()],
            borrowed: vec![false; g.nodes.len()],
            host_bool: vec![false; g.nodes.len()],
            host: vec![false; g.nodes.len()],
            host_dev: vec![false; g.nodes.len()],
            host_read: vec![false; g.nodes.len()],
        }
    }
}

/// The DSL name of what a node computes.
fn p_name(op: &Op) -> &'static str {
    match op {
        Op::Prim(p) => p.name(),
        Op::Fused(_) => "fused elementwise group",
        Op::FusedMatmul { .. } => "matmul",
        Op::Const(_) => "constant",
        _ => "value",
    }
}
