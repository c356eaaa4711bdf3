//! What every backend shares: the input of code generation besides the graph
//! ([`CodegenInput`]), the param tree ([`Tree`]) the typed API structs mirror, and the small
//! token helpers (a node's local [`v`], an array's dimension type [`ix`], [`camel`] case for
//! struct names). It imports nothing from the backends, so each of them can use it.

use crate::ir::NodeId;
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
