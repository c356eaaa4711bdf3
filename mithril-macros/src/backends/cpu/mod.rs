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

mod functions;
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
    /// `quantization: int8`: the `__mithril_qplan` item (`evaluate`'s plan, also read by
    /// `quantize` and `load_quantized`).
    pub(crate) qplan_fn: Option<TokenStream>,
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
            qplan_fn: None,
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

    /// The guard that caps a call's GEMM threads (`optimize_for: throughput`).
    fn threads_guard(&self) -> TokenStream {
        match self.inp.optimize_for {
            crate::options::OptimizeFor::Throughput => {
                quote!(let __mithril_threads = ::mithril::rt::threads::limit_call_threads(1);)
            }
            crate::options::OptimizeFor::Latency => quote!(),
        }
    }
}
