//! `donate: [x]`: `evaluate_donating`, which takes the donated inputs by value (owned arrays in
//! `MDonatingInputs`) and lets the plan compute an output straight into a donated input's
//! buffer (`mithril::rt::plan::run_donating` decides at run time whether that is safe; when it
//! is not the output is allocated as by `evaluate`, so a result never changes).
//!
//! Each donated input is paired here, at compile time, with the first output of its dtype and
//! shape (every dim a constant or a named symbol, equal dim for dim); an input without such an
//! output is a compile error. `evaluate` and `evaluate_donating` share one private function
//! (`__evaluate_into`, the plan run), so the plan text is emitted once.

use super::items::Names;
use super::Gen;
use crate::ir::RDim;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// A donated input and the output it is offered to.
pub(super) struct Pair {
    /// index in `g.inputs` (= its view in the plan)
    pub(super) input: usize,
    /// index in `g.outputs`
    pub(super) output: usize,
}

impl Gen<'_> {
    /// The donation pairs of `donate:` (errors spanned at the names in the option).
    pub(super) fn donation_pairs(&mut self) -> Vec<Pair> {
        let g = self.g;
        let mut pairs: Vec<Pair> = Vec::new();
        for (name, span) in &self.inp.render.donate {
            let Some(input) = g.inputs.iter().position(|i| &i.name == name) else {
                let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
                self.api.errors.push(syn::Error::new(
                    *span,
                    format!(
                        "`donate`: `{name}` is no input of `{}`; its inputs are: {}",
                        self.inp.name,
                        if names.is_empty() {
                            "(none)".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                ));
                continue;
            };
            if g.uses_mode() {
                self.api.errors.push(syn::Error::new(
                    *span,
                    format!("`donate`: `{}` reads `is_training`; `evaluate_donating` is for models without a mode", self.inp.name),
                ));
                continue;
            }
            let inode = g.inputs[input].node;
            let fixed = |n: usize| {
                g.rdims(n)
                    .is_some_and(|d| d.iter().all(|x| !matches!(x, RDim::Dynamic)))
            };
            let found = (0..g.outputs.len()).find(|&k| {
                let o = g.outputs[k].node;
                crate::autodiff::grad_param(&g.outputs[k].name).is_none()
                    && !pairs.iter().any(|p| p.output == k)
                    && o != inode
                    && fixed(inode)
                    && g.dtype_of(o) == g.dtype_of(inode)
                    && g.rdims(o) == g.rdims(inode)
            });
            match found {
                Some(output) => pairs.push(Pair { input, output }),
                None => {
                    let outs: Vec<String> = g
                        .outputs
                        .iter()
                        .filter(|o| crate::autodiff::grad_param(&o.name).is_none())
                        .map(|o| format!("`{}`: {}", o.name, g.describe(o.node)))
                        .collect();
                    let why = if fixed(inode) {
                        String::new()
                    } else {
                        " (its shape has a dim without a name: give it one so that an output can be known to match)".to_string()
                    };
                    self.api.errors.push(syn::Error::new(
                        *span,
                        format!(
                            "`donate`: no output of `{}` has the dtype and shape of input `{name}`, {}{why}; its outputs: {}",
                            self.inp.name,
                            g.describe(inode),
                            outs.join(", ")
                        ),
                    ));
                }
            }
        }
        pairs
    }

    /// `evaluate` and `evaluate_donating` over the shared `__evaluate_into` (whose body,
    /// `run`, runs the plan with `__outs`, `__donate` and `__donated`), and the
    /// `MDonatingInputs` struct (outside `impl M`).
    pub(super) fn donating_fns(
        &self,
        names: &Names,
        run: &TokenStream,
        outs: &TokenStream,
        lints: &TokenStream,
    ) -> (TokenStream, TokenStream) {
        let g = self.g;
        let (name, vis) = (&names.name, self.inp.vis);
        let (params_name, inputs_name, outputs_name) =
            (&names.params, &names.inputs, &names.outputs);
        let don_name = format_ident!("{}DonatingInputs", name);
        let threads = self.threads_guard();
        let n_outs = g.outputs.len();
        let order = self.plan_out_order();
        let pairs = &self.donate_pairs;
        let n_pairs = pairs.len();
        let mut fields = Vec::new();
        let mut moves = Vec::new();
        let mut runtime_pairs = Vec::new();
        let mut gives = Vec::new();
        for (i, inp) in g.inputs.iter().enumerate() {
            let f = format_ident!("{}", inp.name);
            let t = self.api.elem_ty(inp.node);
            let d = crate::backends::common::ix(self.api.rank(inp.node));
            match pairs.iter().enumerate().find(|(_, p)| p.input == i) {
                Some((pi, p)) => {
                    let out = &g.outputs[p.output].name;
                    let doc = format!(
                        "input `{}`: `{}`, given up: its buffer may become output `{out}`",
                        inp.name,
                        g.describe(inp.node)
                    );
                    fields.push(quote!(#[doc = #doc] pub #f: ::mithril::ndarray::Array<#t, #d>));
                    let k = order
                        .iter()
                        .position(|&o| o == p.output)
                        .unwrap_or(usize::MAX);
                    runtime_pairs.push(quote!((#k, #i)));
                    let own = format_ident!("__donor_{}", inp.name);
                    moves.push(quote!(#f: ::mithril::rt::plan::donor_view(&mut #own)));
                    gives.push(quote! {
                        if __donated[#pi] {
                            __outs[#k] = ::std::option::Option::Some(::mithril::rt::plan::give(#own));
                        }
                    });
                }
                None => {
                    let doc = format!("input `{}`: `{}`", inp.name, g.describe(inp.node));
                    fields.push(
                        quote!(#[doc = #doc] pub #f: ::mithril::ndarray::ArrayView<'a, #t, #d>),
                    );
                    moves.push(quote!(#f: __in.#f));
                }
            }
        }
        let owns: Vec<TokenStream> = pairs
            .iter()
            .map(|p| {
                let f = format_ident!("{}", g.inputs[p.input].name);
                let own = format_ident!("__donor_{}", g.inputs[p.input].name);
                quote!(let mut #own = __in.#f;)
            })
            .collect();
        let don_doc = format!(
            "Inputs of [`{name}::evaluate_donating`]: the donated inputs (`donate: [..]`) as owned arrays, the others as views."
        );
        // no lifetime when every input is donated (no views)
        let (lt, lt_use) = if pairs.len() == g.inputs.len() {
            (quote!(), quote!())
        } else {
            (quote!(<'a>), quote!(<'_>))
        };
        let outside = quote! {
            #[doc = #don_doc]
            #[derive(Debug)]
            #vis struct #don_name #lt { #(#fields,)* }
        };
        let fns = quote! {
            #[doc(hidden)]
            #lints
            fn __evaluate_into(&self, params: &#params_name, inputs: #inputs_name<'_>, __outs: &mut [::std::option::Option<::mithril::rt::plan::AnyArray>], __donate: &[(usize, usize)], __donated: &mut [bool]) -> ::mithril::rt::Result<()> {
                #threads
                #run
                Ok(())
            }

            /// Run the model.
            pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                let mut __outs: [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_outs] =
                    ::std::array::from_fn(|_| ::std::option::Option::None);
                self.__evaluate_into(params, inputs, &mut __outs, &[], &mut [])?;
                Ok(#outs)
            }

            /// Run the model on inputs it may consume (`donate: [..]`): each donated input's
            /// buffer becomes its paired output's when that is safe (the output has its dtype
            /// and shape, and nothing computed after it reads the input), so that output is
            /// not allocated; otherwise the output is allocated as by [`Self::evaluate`]. The
            /// results are those of [`Self::evaluate`] either way.
            pub fn evaluate_donating(&self, params: &#params_name, inputs: #don_name #lt_use) -> ::mithril::rt::Result<#outputs_name> {
                let __in = inputs;
                #(#owns)*
                let mut __outs: [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_outs] =
                    ::std::array::from_fn(|_| ::std::option::Option::None);
                let mut __donated = [false; #n_pairs];
                {
                    let inputs = #inputs_name { #(#moves,)* };
                    self.__evaluate_into(params, inputs, &mut __outs, &[#(#runtime_pairs),*], &mut __donated)?;
                }
                #(#gives)*
                Ok(#outs)
            }
        };
        (fns, outside)
    }
}
