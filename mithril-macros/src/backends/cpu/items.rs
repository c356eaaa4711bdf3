//! The model's items around the two functions: the input / output structs, the param and
//! gradient structs, the model struct (CPU or mixed) with `new`, the consts and docs, and
//! `generate`, which writes them in steps.

use super::Gen;
use crate::backends::api::param_tree_impl;
use crate::backends::common::ix;
use crate::ir::Op;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

/// The names of the model's types.
pub(super) struct Names {
    pub(super) name: Ident,
    pub(super) inputs: Ident,
    pub(super) outputs: Ident,
    pub(super) params: Ident,
    pub(super) grads: Ident,
}

/// What `generate` writes before it assembles the items.
struct Parts {
    param_structs: Vec<TokenStream>,
    randomize: TokenStream,
    eval_body: TokenStream,
    life: TokenStream,
    gradients: TokenStream,
    grads_structs: Vec<TokenStream>,
    summary: String,
    /// `profile`, `code_transformers`, `save_intermediates`: their functions (`inspect.rs`)
    inspect: TokenStream,
}

impl<'a> Gen<'a> {
    /// Generate all items.
    /// Also returns the CUDA C module of a mixed model (for `file_path`).
    pub fn generate(mut self) -> Result<(TokenStream, Option<String>), Vec<syn::Error>> {
        let name = self.inp.name;
        let names = Names {
            name: name.clone(),
            inputs: format_ident!("{}Inputs", name),
            outputs: format_ident!("{}Outputs", name),
            params: format_ident!("{}Params", name),
            grads: format_ident!("{}Grads", name),
        };
        // a model with buffers runs its training calls through the plan of the CPU backend
        if self.has_buffers() {
            let i = self.inp;
            let what = if self.mixed.is_some() {
                Some("`backend_map`")
            } else if !i.render.donate.is_empty() {
                Some("`donate`")
            } else if i.static_shapes {
                Some("`static_shapes: true`")
            } else if i.inspect.hook
                || i.inspect.profile
                || i.inspect.timing
                || i.inspect.trace
                || i.inspect.save_intermediates
            {
                Some("`profile`, `code_transformers` or `save_intermediates`")
            } else {
                None
            };
            if let Some(w) = what {
                let bufs: Vec<String> = self
                    .g
                    .params
                    .iter()
                    .filter(|p| p.buffer)
                    .map(|p| format!("`{}`", p.dotted()))
                    .collect();
                return Err(vec![syn::Error::new(
                    self.inp.name.span(),
                    format!(
                        "`{}` has buffers ({}), which {w} does not support yet; compile it without that option",
                        self.inp.name,
                        bufs.join(", ")
                    ),
                )]);
            }
        }
        let terminals = self.terminal_structs(&names);
        let tree = self.api.param_tree();
        let mut param_structs = Vec::new();
        self.api.top_alias.set(self.mixed.is_none());
        self.api
            .param_structs(&tree, &mut vec![], &mut param_structs);
        let randomize = self.api.randomize_expr(&tree, &mut vec![]);
        let mut summary = self.inp.summary.clone();
        if !self.inp.render.donate.is_empty() && self.mixed.is_none() {
            self.donate_pairs = self.donation_pairs();
        }
        let (eval_body, life) = self.evaluate_body(&names, &mut summary);
        // `code_transformers: [hook]`: `evaluate_with_hook` runs `evaluate`'s body with the
        // user's hook as `__hook`; `evaluate` with none
        let inspect = self.inspect_items(&names, &eval_body);
        let eval_body = if self.inp.inspect.hook {
            quote!(let __hook: ::std::option::Option<&mut dyn ::mithril::rt::OpHook> = ::std::option::Option::None; #eval_body)
        } else {
            eval_body
        };
        let gradients = self.gradients_items(&names, &mut summary);
        let mut grads_structs = Vec::new();
        if self.train.is_some() {
            self.api
                .param_structs_named(&tree, &mut vec![], &mut grads_structs, "Grads");
        }
        let parts = Parts {
            param_structs,
            randomize,
            eval_body,
            life,
            gradients,
            grads_structs,
            summary,
            inspect,
        };
        if !self.api.errors.is_empty() {
            return Err(self.api.errors);
        }
        Ok(self.items(&names, terminals, parts))
    }

    /// The input and output structs.
    fn terminal_structs(&self, names: &Names) -> TokenStream {
        let (g, vis, name) = (self.g, self.inp.vis, &names.name);
        let input_fields: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let t = self.api.elem_ty(i.node);
                let d = ix(self.api.rank(i.node));
                let doc = format!("input `{}`: `{}`", i.name, g.describe(i.node));
                quote!(#[doc = #doc] pub #f: ::mithril::ndarray::ArrayView<'a, #t, #d>)
            })
            .collect();
        let phantom = if g.inputs.is_empty() {
            quote!(#[doc = "(this model has no inputs)"] pub _marker: ::std::marker::PhantomData<&'a ()>,)
        } else {
            quote!()
        };
        let output_fields: Vec<TokenStream> = g
            .outputs
            .iter()
            .filter(|o| crate::ir::update_param(&o.name).is_none())
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let ty = self.api.array_ty(o.node);
                let doc = format!("output `{}`: `{}`", o.name, g.describe(o.node));
                quote!(#[doc = #doc] pub #f: #ty)
            })
            .collect();
        let inputs_doc = format!("Inputs of [`{name}`]: one `ndarray` view per input terminal.");
        // views with a dynamic rank (`IxDyn`, for `...` inputs) are not `Copy`
        let inputs_derive = if g
            .inputs
            .iter()
            .all(|i| self.api.rank(i.node).is_some_and(|r| r <= 6))
        {
            quote!(#[derive(Clone, Copy, Debug)])
        } else {
            quote!(#[derive(Clone, Debug)])
        };
        let outputs_doc = format!("Outputs of [`{name}`].");
        let (inputs_name, outputs_name) = (&names.inputs, &names.outputs);
        quote! {
            #[doc = #inputs_doc]
            #inputs_derive
            #vis struct #inputs_name<'a> { #(#input_fields,)* #phantom }

            #[doc = #outputs_doc]
            #[derive(Clone, Debug)]
            #vis struct #outputs_name { #(#output_fields,)* }
        }
    }

    /// The model's doc: its own doc lines, what it was generated from, and its terminals.
    fn model_doc(&self) -> String {
        let g = self.g;
        let mut doc = String::new();
        for a in self.inp.docs {
            if a.path().is_ident("doc") {
                if let syn::Meta::NameValue(nv) = &a.meta {
                    if let syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) = &nv.value
                    {
                        doc.push_str(s.value().trim_start_matches(' '));
                        doc.push('\n');
                    }
                }
            }
        }
        if !doc.is_empty() {
            doc.push('\n');
        }
        doc.push_str(&format!(
            "Physical model `{}` generated by `mithril!` from `{}`.\n\n",
            self.inp.name, self.inp.logical
        ));
        if self.inp.static_shapes {
            doc.push_str("Compiled with `static_shapes: true`: every dim is a constant.\n\n");
        }
        if let Some(m) = &self.mixed {
            let (cu, cp) = m.placed().op_counts(g);
            doc.push_str(&format!(
                "A mixed model (`backend_map`): {cu} ops run on a CUDA device, {cp} on the CPU \
                 (the `backend` column of [`Self::SUMMARY`]). `evaluate` takes and returns host \
                 data; the values that cross, and the inputs and params that device ops read, are \
                 copied at every call (the params once with `prepare` and `evaluate_prepared`).\n\n"
            ));
        }
        doc.push_str(&crate::backends::api::terminal_table(g));
        doc
    }

    /// All items, assembled; and the CUDA C module of a mixed model.
    fn items(
        &self,
        names: &Names,
        terminals: TokenStream,
        parts: Parts,
    ) -> (TokenStream, Option<String>) {
        let g = self.g;
        let name = &names.name;
        let params_name = &names.params;
        let buffers: Vec<String> = g
            .params
            .iter()
            .filter(|p| p.buffer)
            .map(|p| p.dotted())
            .collect();
        let params_tree_impl = param_tree_impl(params_name, &buffers);
        let terminals_const = match &self.shared_terms {
            Some((_, terms)) => {
                let terms = crate::backends::pack::runtime_text(terms);
                quote! {
                    #[doc(hidden)]
                    pub fn __mithril_terminals() -> ::mithril::rt::Result<&'static str> {
                        #terms
                    }
                }
            }
            None => quote!(),
        };
        let grads_tree_impl = if self.train.is_some() && !self.api.grads_aliased.get() {
            param_tree_impl(&names.grads, &buffers)
        } else {
            quote!()
        };
        let doc = self.model_doc();
        // the four texts packed when long (`backends/pack.rs`), still `&'static str` consts
        let [summary, text, dot, json] = [
            &parts.summary,
            &self.inp.graph_text,
            &self.inp.graph_dot,
            &self.inp.graph_json,
        ]
        .map(|t| crate::backends::pack::str_const(t));
        let n_ops = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Prim(_) | Op::Fused(_) | Op::FusedMatmul { .. }))
            .count();
        let syms: Vec<&str> = g.syms.iter().map(|s| s.as_str()).collect();
        let (eval_fn, prepared_items) = self.evaluate_fns(names, &parts.eval_body);
        let (struct_items, ctor_items, cuda_module) = self.model_struct(names, &doc);
        let Parts {
            param_structs,
            randomize,
            life,
            gradients,
            grads_structs,
            inspect,
            ..
        } = parts;
        let tokens = quote! {
            #struct_items

            #terminals

            #(#param_structs)*

            #params_tree_impl

            impl #name {
                /// The summary table: every op of the flattened, optimized graph with its shapes and dtypes.
                pub const SUMMARY: &'static str = #summary;
                /// The optimized graph as text.
                pub const GRAPH_TEXT: &'static str = #text;
                /// The optimized graph in Graphviz DOT.
                pub const GRAPH_DOT: &'static str = #dot;
                /// The optimized graph as JSON.
                pub const GRAPH_JSON: &'static str = #json;
                /// Number of ops (primitives and fused groups) after optimization.
                pub const NUM_OPS: usize = #n_ops;
                /// Names of the symbolic dims, in binding order.
                pub const SYMBOLS: &'static [&'static str] = &[#(#syms),*];

                #[doc(hidden)]
                pub const __MITHRIL_LIFE_EVAL: &'static [(u32, u32)] = #life;
                #terminals_const

                #ctor_items

                /// Memory numbers of `evaluate`'s last plan: the planned peak of the arena next
                /// to the naive sum of all intermediate buffers (`None` before the first call).
                pub fn memory_report(&self) -> ::std::option::Option<::mithril::rt::MemoryReport> {
                    self.__ws.lock().ok().and_then(|w| w.report())
                }

                /// The summary table (same as [`Self::SUMMARY`]).
                pub fn summary(&self) -> &'static str {
                    Self::SUMMARY
                }

                /// Fresh params, deterministic per `seed` (fan-in scaled uniform like PyTorch's
                /// defaults unless the model says otherwise).
                pub fn randomize_params(&self, seed: u64) -> #params_name {
                    let _ = seed;
                    #randomize
                }

                #eval_fn

                #gradients

                #inspect
            }

            #(#grads_structs)*
            #grads_tree_impl
            #prepared_items
        };
        (tokens, cuda_module)
    }
}
