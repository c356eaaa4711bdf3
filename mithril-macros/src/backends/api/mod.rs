//! The backend-neutral half of a model's typed API: what the CPU generator ([`super::cpu`]) and
//! the CUDA backend ([`super::cuda`]) both need to write the host side of a physical model —
//! run-time dims, shape checks, element and array types, struct names, and (in [`structs`]) the
//! param / gradient structs and `randomize_params`' init table.
//!
//! [`TypedApi`] knows the graph and the model's [`CodegenInput`], nothing of a backend's
//! lowering; it imports only [`super::common`].

mod structs;

pub(crate) use structs::param_tree_impl;

use crate::backends::common::{camel, ix, CodegenInput, Tree};
use crate::ir::{rdim, DType, Dim, Graph, NodeId, RDim};
use crate::prims::storage_type;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::collections::BTreeMap;
use syn::Ident;

/// The typed API of one graph: its dims, checks, types and struct names, and the errors met
/// while writing them.
pub(crate) struct TypedApi<'a> {
    g: &'a Graph,
    inp: &'a CodegenInput<'a>,
    /// Spanned errors met so far (the backend that holds this one adds its own).
    pub(crate) errors: Vec<syn::Error>,
    /// Runtime expressions for dynamic dims (dim variable id -> `inputs.x.shape()[k]`).
    dim_src: BTreeMap<u32, TokenStream>,
    /// Nested struct layouts already emitted (layout -> struct name), for sharing.
    layouts: std::cell::RefCell<BTreeMap<String, Ident>>,
    /// Struct aliases emitted (alias -> the struct it names).
    alias_of: std::cell::RefCell<BTreeMap<String, String>>,
    /// Whether the top-level `Grads` struct may be an alias of `Params` (the CPU generator's
    /// typed API; set by its `generate`).
    pub(crate) top_alias: std::cell::Cell<bool>,
    /// Whether it is.
    pub(crate) grads_aliased: std::cell::Cell<bool>,
}

impl<'a> TypedApi<'a> {
    /// The typed API of `g`.
    pub(crate) fn new(g: &'a Graph, inp: &'a CodegenInput<'a>) -> Self {
        let mut dim_src = BTreeMap::new();
        for i in &g.inputs {
            if let Some(s) = g.shape_of(i.node) {
                let name = format_ident!("{}", i.name);
                let n = s.dims.len();
                for (k, d) in s.dims.iter().enumerate() {
                    if let Dim::Var(var) = g.env.dim(d) {
                        let e = if s.rest.is_some() {
                            let back = n - k;
                            quote!({ let __s = inputs.#name.shape(); __s[__s.len() - #back] })
                        } else {
                            quote!(inputs.#name.shape()[#k])
                        };
                        dim_src.entry(var).or_insert(e);
                    }
                }
            }
        }
        TypedApi {
            g,
            inp,
            errors: Vec::new(),
            dim_src,
            layouts: Default::default(),
            alias_of: Default::default(),
            top_alias: Default::default(),
            grads_aliased: Default::default(),
        }
    }

    /// The graph being generated.
    pub(crate) fn graph(&self) -> &'a Graph {
        self.g
    }

    /// The physical model's name, as a string.
    pub(crate) fn model_name(&self) -> String {
        self.inp.name.to_string()
    }

    /// Node `id`'s dtype (f32 when unknown).
    pub(crate) fn dtype(&self, id: NodeId) -> DType {
        self.g.dtype_of(id).unwrap_or(DType::F32)
    }

    /// The slot of symbol `name` in the run-time `SymEnv`.
    pub(crate) fn sym_slot(&self, name: &str) -> usize {
        self.g.syms.iter().position(|s| s == name).unwrap_or(0)
    }

    /// A runtime `usize` expression for a dim, or `None` when it cannot be computed.
    pub(crate) fn dim_expr(&self, d: &Dim) -> Option<TokenStream> {
        match self.g.env.dim(d) {
            Dim::Known(n) => {
                let n = n as usize;
                Some(quote!(#n))
            }
            Dim::Sym(s) => {
                let slot = self.sym_slot(&s);
                Some(quote!(__env.value(#slot)?))
            }
            Dim::Var(v) => self.dim_src.get(&v).cloned(),
            Dim::Prod(c, atoms) => {
                let c = c as usize;
                let parts: Option<Vec<TokenStream>> =
                    atoms.iter().map(|a| self.dim_expr(a)).collect();
                let parts = parts?;
                Some(quote!((#c #(* #parts)*)))
            }
        }
    }

    /// Node `id`'s rank, `None` for an open one (`...`).
    pub(crate) fn rank(&self, id: NodeId) -> Option<usize> {
        let s = self.g.shape_of(id)?;
        s.rest.is_none().then_some(s.dims.len())
    }

    /// The Rust element type of node `id`.
    pub(crate) fn elem_ty(&self, id: NodeId) -> TokenStream {
        storage_type(self.dtype(id))
    }

    /// The owned `ndarray` type of node `id`'s value.
    pub(crate) fn array_ty(&self, id: NodeId) -> TokenStream {
        let t = self.elem_ty(id);
        let d = ix(self.rank(id));
        quote!(::mithril::ndarray::Array<#t, #d>)
    }

    /// Node `id`'s type as an error names it.
    pub(crate) fn expected_str(&self, id: NodeId) -> String {
        self.g.describe(id)
    }

    /// The run-time shape check of terminal `terminal` (node `id`), whose shape `access` reads.
    pub(crate) fn check(&self, id: NodeId, terminal: &str, access: TokenStream) -> TokenStream {
        let Some(s) = self.g.shape_of(id) else {
            return quote!();
        };
        let specs = s.dims.iter().map(|d| match rdim(&self.g.env.dim(d)) {
            RDim::Known(n) => {
                let n = n as usize;
                quote!(::mithril::rt::DimSpec::Fixed(#n))
            }
            RDim::Sym(1, names) if names.len() == 1 => {
                let slot = self.sym_slot(&names[0]);
                quote!(::mithril::rt::DimSpec::Sym(#slot))
            }
            _ => quote!(::mithril::rt::DimSpec::Any),
        });
        let ell = s.rest.is_some();
        let expected = self.expected_str(id);
        let model = self.inp.name.to_string();
        quote! {
            ::mithril::rt::check::check_shape(&mut __env, #model, #terminal, #expected, #access, &[#(#specs),*], #ell)?;
        }
    }

    /// The name of the struct of `kind` (`Params`, `Grads`, ...) at instance `path`.
    pub(crate) fn struct_name(&self, path: &[String], kind: &str) -> Ident {
        let mut s = format!("{}{kind}", self.inp.name);
        for p in path {
            s.push_str(&camel(p));
        }
        format_ident!("{}", s)
    }

    /// The param tree of the graph (the structs mirror it).
    pub(crate) fn param_tree(&self) -> Tree {
        let mut tree = Tree::default();
        for (i, p) in self.g.params.iter().enumerate() {
            tree.insert(&p.path, i);
        }
        tree
    }
}

/// The doc table of a model's terminals (every input, param and output with its inferred type)
/// that the generated struct's doc comment ends with.
pub(crate) fn terminal_table(g: &Graph) -> String {
    let mut doc = String::from("| terminal | kind | type |\n|---|---|---|\n");
    let rows = g
        .inputs
        .iter()
        .map(|i| (i.name.clone(), "input", i.node))
        .chain(g.params.iter().map(|p| {
            (
                p.dotted(),
                if p.buffer { "buffer" } else { "param" },
                p.node,
            )
        }))
        .chain(
            g.outputs
                .iter()
                .filter(|o| crate::ir::update_param(&o.name).is_none())
                .map(|o| (o.name.clone(), "output", o.node)),
        );
    for (name, kind, node) in rows {
        doc.push_str(&format!("| `{name}` | {kind} | `{}` |\n", g.describe(node)));
    }
    doc
}

/// A gradient function's outputs split into the model outputs (as `name: value` struct fields)
/// and the param gradients (by param index).
pub(crate) fn split_grad_outputs(
    outs: Vec<(String, proc_macro2::TokenStream)>,
) -> (
    Vec<proc_macro2::TokenStream>,
    std::collections::BTreeMap<usize, proc_macro2::TokenStream>,
) {
    let mut fwd = Vec::new();
    let mut grads = std::collections::BTreeMap::new();
    for (n, val) in outs {
        match crate::autodiff::grad_param(&n) {
            Some(i) => {
                grads.insert(i, val);
            }
            None => {
                let f = quote::format_ident!("{}", n);
                fwd.push(quote::quote!(#f: #val));
            }
        }
    }
    (fwd, grads)
}
