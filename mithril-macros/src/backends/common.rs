//! What every backend shares: the input of code generation besides the graph
//! ([`CodegenInput`]), the param tree ([`Tree`]) the typed API structs mirror, the small
//! token helpers (a node's local [`v`], an array's dimension type [`ix`], [`camel`] case for
//! struct names), and the seam of a mixed model ([`DeviceSide`], made by a [`MakeDevice`];
//! [`device_options`]). It imports nothing from the backends, so each of them can use it.

use crate::ir::{Graph, NodeId};
use crate::options::CudaOptions;
use crate::placement::Placed;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::collections::BTreeMap;
use syn::Ident;

/// What codegen needs besides the graph.
pub struct CodegenInput<'a> {
    pub name: &'a Ident,
    pub vis: &'a syn::Visibility,
    pub docs: &'a [syn::Attribute],
    pub static_shapes: bool,
    pub summary: String,
    pub graph_text: String,
    pub graph_dot: String,
    pub graph_json: String,
    pub logical: String,
    /// A `train` model: `evaluate_gradients` takes no seed (the loss is seeded with 1).
    pub train_model: bool,
    /// `memory_planning: greedy` (true) or `none`.
    pub planning: bool,
    /// `max_memory_gb`, checked at run time when some dim is dynamic.
    pub max_memory_gb: Option<f64>,
    /// `optimize_for`: `throughput` caps each call's GEMMs at the calling thread.
    pub optimize_for: crate::options::OptimizeFor,
    /// A mixed model (`backend_map` with ops on cuda): its CUDA settings.
    pub cuda: Option<&'a crate::options::CudaOptions>,
    /// Run-time instrumentation (`profile`, `code_transformers`, `save_intermediates`).
    pub inspect: &'a crate::options::Inspect,
    /// `save_intermediates: true`: the graph of `evaluate_with_intermediates` (the forward
    /// graph with the named values as extra outputs) and those values' names.
    pub intermediates: Option<(&'a crate::ir::Graph, &'a [String])>,
    /// `target_hardware: "mobile"`: its description (`M::MOBILE`).
    pub mobile: Option<String>,
    /// `cpu: { threads, simd, deterministic }` and `donate` (CPU models).
    pub render: &'a crate::options::render::RenderOptions,
    /// `quantization: int8`: the int8 inference API beside `evaluate`.
    pub quantization_int8: bool,
}

/// The local holding node `id`'s value: `vN` (one name source, so hygiene never bites).
pub(crate) fn v(id: NodeId) -> Ident {
    format_ident!("v{}", id)
}

/// `snake_case` -> `CamelCase` (a raw `r#` prefix dropped): struct names from instance names.
pub(crate) fn camel(s: &str) -> String {
    s.trim_start_matches("r#")
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

/// The `ndarray` dimension type of an array of rank `rank` (`IxDyn` for an open rank or one
/// above 6).
pub(crate) fn ix(rank: Option<usize>) -> TokenStream {
    match rank {
        Some(0) => quote!(::mithril::ndarray::Ix0),
        Some(1) => quote!(::mithril::ndarray::Ix1),
        Some(2) => quote!(::mithril::ndarray::Ix2),
        Some(3) => quote!(::mithril::ndarray::Ix3),
        Some(4) => quote!(::mithril::ndarray::Ix4),
        Some(5) => quote!(::mithril::ndarray::Ix5),
        Some(6) => quote!(::mithril::ndarray::Ix6),
        _ => quote!(::mithril::ndarray::IxDyn),
    }
}

/// A param tree node: leaves and sub-trees, in first-seen order.
#[derive(Default)]
pub(crate) struct Tree {
    pub(crate) order: Vec<String>,
    pub(crate) leaves: BTreeMap<String, usize>,
    pub(crate) subs: BTreeMap<String, Tree>,
}

impl Tree {
    /// Add the param at `path` (its index in `Graph::params`).
    pub(crate) fn insert(&mut self, path: &[String], idx: usize) {
        let head = &path[0];
        if !self.order.contains(head) {
            self.order.push(head.clone());
        }
        if path.len() == 1 {
            self.leaves.insert(head.clone(), idx);
        } else {
            self.subs
                .entry(head.clone())
                .or_default()
                .insert(&path[1..], idx);
        }
    }
}

/// The device side of one graph of a mixed model (`backend_map`): the CPU generator writes the
/// host code and asks this for every node placed on cuda, for the uploads of host values that a
/// device op reads and for the downloads of device values that a host op reads or that are
/// returned. Implemented by the CUDA backend (`cuda::Mixed`); the driver
/// ([`crate::backends::generate`]) hands the CPU generator a [`MakeDevice`] for it, so neither
/// backend imports the other.
pub(crate) trait DeviceSide<'a> {
    /// Where each node is computed and where its value exists.
    fn placed(&self) -> &Placed;
    /// Forward graph: the params its device ops read (indices into `Graph::params`), which
    /// `M::prepare` uploads once; `evaluate` uploads them per call.
    fn prepared(&self) -> &[usize];
    /// The code of node `id`, computed on the device; `dest` is the host destination of its
    /// download, when the host reads it.
    fn device_node(&mut self, id: NodeId, dest: Option<TokenStream>) -> TokenStream;
    /// What follows the host code of node `id`: its upload when a device op reads it, or its
    /// device scalar when it is a constant a device op reads.
    fn after_host(&mut self, id: NodeId) -> TokenStream;
    /// Errors met so far (taken).
    fn take_errors(&mut self) -> Vec<syn::Error>;
    /// Kernels of another graph of the same model (its `evaluate_gradients`) join this module.
    fn absorb(&mut self, other: Box<dyn DeviceSide<'a> + 'a>);
    /// This side's kernels, their entry names and its errors (for [`DeviceSide::absorb`]).
    fn into_parts(self: Box<Self>) -> ModuleParts;
    /// The module source and its entry names.
    fn module(&self) -> (String, &[String]);
}

/// What a [`DeviceSide`] hands to the one that absorbs it.
pub(crate) struct ModuleParts {
    /// CUDA C kernels, in order.
    pub(crate) kernels: Vec<String>,
    /// Their entry names.
    pub(crate) entries: Vec<String>,
    /// Errors met.
    pub(crate) errors: Vec<syn::Error>,
}

/// Makes the device side of graph `g` of a mixed model (`forward`: the graph of `evaluate`,
/// else of `evaluate_gradients`).
pub(crate) type MakeDevice = for<'a> fn(
    g: &'a Graph,
    inp: &'a CodegenInput<'a>,
    opts: &'a CudaOptions,
    forward: bool,
) -> Box<dyn DeviceSide<'a> + 'a>;

/// The `DeviceOptions` a model opens its device with (`cuda: { arch }`, `cache`, `cache_dir`).
pub(crate) fn device_options(opts: &CudaOptions) -> TokenStream {
    let c = quote!(::mithril::rt::cuda);
    let cache = match (&opts.cache, &opts.cache_dir) {
        (false, _) => quote!(#c::CacheConfig::memory_only()),
        (true, Some(d)) => quote!(#c::CacheConfig::in_dir(#d)),
        (true, None) => quote!(::std::default::Default::default()),
    };
    quote!(#c::DeviceOptions {
        arch: Self::CUDA_ARCH.map(::std::string::String::from),
        cache: #cache,
        ptx: false,
    })
}
