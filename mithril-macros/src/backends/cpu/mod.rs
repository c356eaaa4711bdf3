//! Step 6 for the CPU (the default backend): turns an optimized [`Graph`] into the typed Rust
//! API of a physical model: `M`, `MInputs<'a>`, `MOutputs`, `MParams` (a tree mirroring the
//! model's instances), `new`, `randomize_params`, `evaluate`, and the introspection consts.
//!
//! `evaluate` / `evaluate_gradients` run a plan ([`plan`]: the graph as plan text for
//! `mithril::rt::plan`). A mixed model (`backend_map`) keeps per-op Rust code instead
//! ([`nodes`]: every value a local `vN`, one name source so hygiene never bites; elementwise
//! groups become one `mithril::rt::ops::mapK` loop with the fused scalar expression inlined;
//! other primitives call `mithril::rt::ops`), with the nodes placed on cuda lowered by the
//! device side it is given ([`DeviceSide`]).
//!
//! The modules, by what they generate: [`nodes`] a node's per-op code and a graph's body;
//! [`functions`] the bodies of `evaluate` / `evaluate_gradients` (planned, per-op or
//! `static_shapes`); [`plan`] the plan text; [`model`] the model struct, `new` and the
//! `evaluate*` fns (CPU or mixed); [`items`] `generate` in steps (terminal structs, docs,
//! consts). The typed API's dims, checks and structs are [`TypedApi`]'s.

mod donate;
mod functions;
mod inspect;
mod items;
mod model;
mod nodes;
mod plan;

use crate::backends::api::TypedApi;
use crate::backends::common::{CodegenInput, DeviceSide, MakeDevice};
use crate::ir::Graph;
use crate::memplan;
use proc_macro2::TokenStream;
use quote::quote;
use std::collections::BTreeMap;

/// Code generator of one CPU (or mixed) physical model.
pub struct Gen<'a> {
    g: &'a Graph,
    /// The forward+backward graph, when gradients are generated.
    pub train: Option<&'a Graph>,
    inp: &'a CodegenInput<'a>,
    /// The typed API of this graph (dims, checks, types, structs; holds the errors).
    api: TypedApi<'a>,
    /// Run-time dims in plan text (`in<view>:<axis>`, `ib<view>:<from the end>`).
    plan_dim_src: BTreeMap<u32, String>,
    /// Where every node's value lives.
    pub plan: memplan::Plan,
    /// Makes the device side of a mixed model's graph (set by the driver for `backend_map`).
    pub(crate) make_device: Option<MakeDevice>,
    /// A mixed model (`backend_map`): the device side of this graph (see [`Gen::place`]).
    mixed: Option<Box<dyn DeviceSide<'a> + 'a>>,
    /// The `M` line and input/param shape checks of the first plan generated for this model
    /// (`evaluate`'s), emitted once as `__mithril_terminals()` (packed when long) and shared by
    /// the other plan.
    pub(crate) shared_terms: Option<(String, String)>,
    /// Per param, its position in the structs' visit order (the plan's view order).
    leaf_pos: Vec<usize>,
    /// `donate: [..]`: the donated inputs and their outputs (`evaluate`'s generator only).
    donate_pairs: Vec<donate::Pair>,
    /// With `donate`: the expression building `MOutputs` from `__outs` (for
    /// [`Gen::donating_fns`]).
    donate_outs: Option<TokenStream>,
    /// `quantization: int8`: the `__mithril_qplan` item (`evaluate`'s plan, also read by
    /// `quantize` and `load_quantized`).
    pub(crate) qplan_fn: Option<TokenStream>,
    /// The buffers' new values (`update`) of the last plan body: (index in `__outs`, param).
    pub(crate) upd_takes: Vec<(usize, usize)>,
}

impl<'a> Gen<'a> {
    /// A generator for graph `g`.
    pub fn new(g: &'a Graph, inp: &'a CodegenInput<'a>) -> Self {
        let mut plan_dim_src = BTreeMap::new();
        for (view, i) in g.inputs.iter().enumerate() {
            if let Some(s) = g.shape_of(i.node) {
                let n = s.dims.len();
                for (k, d) in s.dims.iter().enumerate() {
                    if let crate::ir::Dim::Var(var) = g.env.dim(d) {
                        let pe = if s.rest.is_some() {
                            format!("ib{view}:{}", n - k)
                        } else {
                            format!("in{view}:{k}")
                        };
                        plan_dim_src.entry(var).or_insert(pe);
                    }
                }
            }
        }
        let api = TypedApi::new(g, inp);
        let mut leaf_pos = vec![0; g.params.len()];
        for (k, i) in TypedApi::leaf_order(&api.param_tree())
            .into_iter()
            .enumerate()
        {
            leaf_pos[i] = k;
        }
        Gen {
            g,
            train: None,
            inp,
            api,
            plan_dim_src,
            plan: memplan::plan(g, inp.planning),
            make_device: None,
            mixed: None,
            shared_terms: None,
            leaf_pos,
            donate_pairs: Vec::new(),
            donate_outs: None,
            qplan_fn: None,
            upd_takes: Vec::new(),
        }
    }

    /// Mixed models (`backend_map` with ops on cuda): place this graph's nodes on their
    /// backends (`forward`: the graph of `evaluate`), plan the host memory of what lives on the
    /// host, and let the device side ([`Gen::make_device`]) lower the device nodes. A no-op for
    /// other models.
    pub fn place(&mut self, forward: bool) {
        let (Some(opts), Some(make)) = (self.inp.cuda, self.make_device) else {
            return;
        };
        if !self.g.placement.is_mixed() {
            return;
        }
        let m = make(self.g, self.inp, opts, forward);
        self.plan = memplan::plan_placed(self.g, self.inp.planning, Some(m.placed()));
        self.mixed = Some(m);
    }

    /// The guards a call holds: the cap on its GEMM threads (`optimize_for: throughput`: 1;
    /// `cpu: { threads: N }`) and the forced instruction set (`cpu: { simd: .. }`, an `Err` on
    /// a CPU without it).
    fn threads_guard(&self) -> TokenStream {
        use crate::options::render::Simd;
        let cpu = &self.inp.render.cpu;
        let threads = match (self.inp.optimize_for, cpu.threads) {
            (crate::options::OptimizeFor::Throughput, _) => Some(1usize),
            (_, n) => n,
        };
        let mut out = match threads {
            Some(n) => {
                quote!(let __mithril_threads = ::mithril::rt::threads::limit_call_threads(#n);)
            }
            None => quote!(),
        };
        if let Some(s) = cpu.simd {
            let isa = match s {
                Simd::Avx512 => quote!(Avx512),
                Simd::Avx2 => quote!(Avx2),
                Simd::Scalar => quote!(Scalar),
            };
            let model = self.inp.name.to_string();
            out.extend(quote!(let __mithril_isa = ::mithril::rt::cpu::force_simd(#model, ::mithril::rt::isa::Isa::#isa)?;));
        }
        out
    }
}
