//! The bodies of `evaluate` and `evaluate_gradients`: a plan run ([`super::plan`]), the
//! per-op code of a mixed model inside its workspace, or (`static_shapes: true`)
//! [`cpu_static`]'s slices; and the items of `evaluate_gradients`.

use super::items::Names;
use super::Gen;
use crate::backends::common::Tree;
use crate::backends::cpu_static;
use crate::ir::Op;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::collections::BTreeMap;
use syn::Ident;

impl<'a> Gen<'a> {
    /// `evaluate`'s body (specialized when `static_shapes: true` allows it; the summary says
    /// which), and its slot lifetimes.
    pub(super) fn evaluate_body(
        &mut self,
        names: &Names,
        summary: &mut String,
    ) -> (TokenStream, TokenStream) {
        let outputs_name = &names.outputs;
        let planned = self.mixed.is_none();
        let (pre, (checks, body, out_vals)) = if planned {
            let quant = self.inp.quantization_int8 || self.preparable();
            let (pre, outs, _) = self.plan_body(
                &format_ident!("__ws"),
                &format_ident!("__MITHRIL_LIFE_EVAL"),
                quant,
            );
            (pre, (Vec::new(), Vec::new(), outs))
        } else {
            (quote!(), self.body_parts())
        };
        let life = self.life_tokens();
        let outs: Vec<TokenStream> = out_vals
            .into_iter()
            .map(|(n, val)| {
                let f = format_ident!("{}", n);
                quote!(#f: #val)
            })
            .collect();
        if planned && !self.donate_pairs.is_empty() && !self.inp.static_shapes {
            // `donate`: `pre` is `__evaluate_into`'s body; the outputs are built by its callers
            self.donate_outs = Some(quote!(#outputs_name { #(#outs,)* }));
            return (pre, life);
        }
        let upd = self.upd_array();
        let stateful = self.stateful();
        let generic_body = || {
            if planned && stateful {
                // a model with buffers updated in training calls: the outputs and the buffers'
                // new values (written back by `evaluate_mode`, see `model.rs`)
                return quote! {
                    #pre
                    #upd
                    Ok((#outputs_name { #(#outs,)* }, __upd))
                };
            }
            if planned {
                return quote! {
                    #pre
                    Ok(#outputs_name { #(#outs,)* })
                };
            }
            self.function_body(
                &checks,
                &body,
                &format_ident!("__ws"),
                &format_ident!("__MITHRIL_LIFE_EVAL"),
                quote!(#outputs_name { #(#outs,)* }),
            )
        };
        // `static_shapes: true`: the slice-and-constant evaluate when the graph allows it
        let eval_body = if self.inp.static_shapes && self.mixed.is_some() {
            summary.push_str("static_shapes: evaluate keeps the generic path (not specialized: ops placed by `backend_map`)\n");
            generic_body()
        } else if self.inp.static_shapes {
            match cpu_static::evaluate_body(&self.api, &self.plan, outputs_name) {
                Ok(b) => {
                    summary.push_str("static_shapes: evaluate specialized (constant dims, contiguous slices, direct kernel calls");
                    if self.g.has_guards() || self.g.has_loops() {
                        summary.push_str(
                            "; run-time control flow as Rust `if` / `loop`, not unrolled",
                        );
                    }
                    summary.push_str(")\n");
                    b
                }
                Err(why) => {
                    summary.push_str(&format!(
                        "static_shapes: evaluate keeps the generic path (not specialized: {why})\n"
                    ));
                    generic_body()
                }
            }
        } else {
            generic_body()
        };
        (eval_body, life)
    }

    /// The items of `evaluate_gradients` (none without gradients), from the forward+backward
    /// graph; a mixed model's device kernels of it join this graph's module.
    pub(super) fn gradients_items(&mut self, names: &Names, summary: &mut String) -> TokenStream {
        let gradients = match self.train {
            Some(t) => {
                let mut tg = Gen::new(t, self.inp);
                tg.shared_terms = self.shared_terms.clone();
                tg.make_device = self.make_device;
                if self.mixed.is_some() {
                    tg.place(false);
                }
                let r = tg.gradients_fn(&names.params, &names.inputs, &names.outputs);
                if self.shared_terms.is_none() {
                    self.shared_terms = tg.shared_terms.take();
                }
                self.api.errors.extend(tg.api.errors);
                if let (Some(m), Some(tm)) = (self.mixed.as_mut(), tg.mixed.take()) {
                    summary.push_str(&tm.placed().line(t, "evaluate_gradients"));
                    m.absorb(tm);
                }
                r
            }
            None => quote!(),
        };
        if let Some(m) = self.mixed.as_mut() {
            let mut es = m.take_errors();
            self.api.errors.append(&mut es);
        }
        gradients
    }

    /// A plain CPU model (no mode, buffers, donation, int8, instrumentation or static-shape
    /// body): its `evaluate` runs the plan with a `quant::Run`, and it gets `prepare` /
    /// `evaluate_prepared` (weights packed once, `rt::prepack`).
    pub(super) fn preparable(&self) -> bool {
        self.mixed.is_none()
            && !self.inp.quantization_int8
            && self.donate_pairs.is_empty()
            && !self.inp.inspect.stateful()
            && !self.inp.static_shapes
    }

    /// A model with buffers (`buffer`) that reads the call's mode: its training calls write the
    /// buffers' new values (`update`) back into `&mut` params.
    pub(super) fn stateful(&self) -> bool {
        self.has_buffers() && self.g.uses_mode()
    }

    /// The model (or a submodel) declares a `buffer`.
    pub(super) fn has_buffers(&self) -> bool {
        self.g.params.iter().any(|p| p.buffer)
    }

    /// `let __upd = [..];`: the buffers' new values taken out of the plan run's `__outs`
    /// (after [`Self::plan_body`]).
    fn upd_array(&self) -> TokenStream {
        let ks = self.upd_takes.iter().map(|&(k, _)| k);
        quote!(let __upd = [#(__outs[#ks].take()),*];)
    }

    /// The statements writing the buffers' new values (`__upd`, a training call's) into
    /// `params`.
    pub(super) fn writeback(&self) -> TokenStream {
        let mut w = Vec::new();
        for (j, &(_, i)) in self.upd_takes.iter().enumerate() {
            let p = &self.g.params[i];
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            let t = self.api.elem_ty(p.node);
            let d = crate::backends::common::ix(self.api.rank(p.node));
            let name = p.dotted();
            w.push(quote!(params.#(#fields).* = ::mithril::rt::plan::take::<#t, #d>(&mut __upd, #j, #name)?;));
        }
        quote!(#(#w)*)
    }

    /// The number of buffers a training call updates.
    pub(super) fn n_upd(&self) -> usize {
        self.upd_takes.len()
    }

    /// The shapes that key the memory plan: every input, param and output-gradient seed.
    fn plan_keys(&self) -> Vec<TokenStream> {
        let g = self.g;
        let mut keys = Vec::new();
        for i in &g.inputs {
            let f = format_ident!("{}", i.name);
            keys.push(quote!(inputs.#f.shape()));
        }
        for p in &g.params {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            keys.push(quote!(params.#(#fields).*.shape()));
        }
        for n in &g.nodes {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                keys.push(quote!(output_grads.#f.shape()));
            }
        }
        keys
    }

    /// [`Self::life_tokens`], for the other modules of the backend.
    pub(super) fn life_tokens_pub(&self) -> TokenStream {
        self.life_tokens()
    }

    /// The slot lifetimes as a constant expression.
    fn life_tokens(&self) -> TokenStream {
        let life = self.plan.life.iter().map(|&(a, b)| {
            let (a, b) = (
                proc_macro2::Literal::u32_unsuffixed(a),
                proc_macro2::Literal::u32_unsuffixed(b),
            );
            quote!((#a, #b))
        });
        quote!(&[#(#life),*])
    }

    /// A function body: checks, the workspace of `ws_field` (slot lifetimes in `life_const`),
    /// the node code, then `result` (built from the outputs) is returned after the workspace
    /// is finished.
    fn function_body(
        &self,
        checks: &[TokenStream],
        body: &[TokenStream],
        ws_field: &Ident,
        life_const: &Ident,
        result: TokenStream,
    ) -> TokenStream {
        let syms: Vec<&str> = self.g.syms.iter().map(|s| s.as_str()).collect();
        let keys = self.plan_keys();
        let model = self.inp.name.to_string();
        let max = match self.inp.max_memory_gb {
            Some(x) => quote!(::std::option::Option::Some(#x)),
            None => quote!(::std::option::Option::None),
        };
        let dev = if self.mixed.is_some() {
            quote!(let __dev: &::mithril::rt::cuda::CudaDevice = &self.__dev;)
        } else {
            quote!()
        };
        quote! {
            #dev
            let mut __env = ::mithril::rt::SymEnv::new(&[#(#syms),*]);
            #(#checks)*
            let _ = &__env;
            // the planned arena; a concurrent call on the same model gets an unplanned one
            let mut __guard;
            let mut __tmp;
            let __ws: &mut ::mithril::rt::Workspace = match self.#ws_field.try_lock() {
                ::std::result::Result::Ok(g) => {
                    __guard = g;
                    &mut *__guard
                }
                ::std::result::Result::Err(_) => {
                    __tmp = ::mithril::rt::Workspace::new(Self::#life_const, false, #max).named(#model);
                    &mut __tmp
                }
            };
            __ws.begin(&[#(#keys),*]);
            let __w: &::mithril::rt::Workspace = &*__ws;
            #(#body)*
            let __result = #result;
            __ws.finish(#model)?;
            Ok(__result)
        }
    }

    /// `evaluate_gradients` from the forward+backward graph.
    fn gradients_fn(
        &mut self,
        params_name: &Ident,
        inputs_name: &Ident,
        outputs_name: &Ident,
    ) -> TokenStream {
        let planned = self.mixed.is_none();
        let mut first_grad = 0;
        let (pre, (checks, body, outs)) = if planned {
            let (pre, outs, first) = self.plan_body(
                &format_ident!("__ws_grad"),
                &format_ident!("__MITHRIL_LIFE_GRAD"),
                false,
            );
            first_grad = first;
            (pre, (Vec::new(), Vec::new(), outs))
        } else {
            (quote!(), self.body_parts())
        };
        let (fwd, grad_vals) = crate::backends::api::split_grad_outputs(outs);
        let tree = self.api.param_tree();
        let grads_name = format_ident!("{}Grads", self.inp.name);
        let grads = if planned {
            quote!(#grads_name::__build(&mut ::mithril::rt::tree::Build::outs(&mut __outs, #first_grad))?)
        } else {
            self.grads_expr(&tree, &mut vec![], &grad_vals)
        };
        let seed_arg = if self.inp.train_model {
            quote!()
        } else {
            quote!(output_grads: #outputs_name,)
        };
        let grad_doc = if self.inp.train_model {
            "Run the train model and differentiate its `loss` (seeded with 1): returns the outputs and the gradient of the loss with respect to every param (reverse mode, compiled)."
        } else {
            "Run the model and differentiate it: returns the outputs and the gradient of `sum(output * output_grads)` over all outputs with respect to every param (reverse mode, compiled)."
        };
        let life = self.life_tokens();
        let stateful = self.stateful();
        let upd = self.upd_array();
        let fn_body = if planned && stateful {
            quote! {
                #pre
                #upd
                Ok((#outputs_name { #(#fwd,)* }, #grads, __upd))
            }
        } else if planned {
            quote! {
                #pre
                Ok((#outputs_name { #(#fwd,)* }, #grads))
            }
        } else {
            self.function_body(
                &checks,
                &body,
                &format_ident!("__ws_grad"),
                &format_ident!("__MITHRIL_LIFE_GRAD"),
                quote!((#outputs_name { #(#fwd,)* }, #grads)),
            )
        };
        let threads = self.threads_guard();
        let seed_pass = if self.inp.train_model {
            quote!()
        } else {
            quote!(output_grads,)
        };
        // a model that reads `is_training`: `evaluate_gradients` is the train-mode call of
        // `evaluate_gradients_mode`
        // a model with buffers: the training calls take `&mut` params and write the buffers'
        // new values (`update`) back after a successful training call
        let pref = if self.has_buffers() {
            quote!(&mut)
        } else {
            quote!(&)
        };
        let grad_fns = if stateful {
            let n_upd = self.n_upd();
            let writeback = self.writeback();
            quote! {
                #[doc = #grad_doc]
                ///
                /// In training mode (`is_training` is true; dropout masks from a fresh seed):
                /// [`Self::evaluate_gradients_mode`] with `mithril::rt::Mode::Train`. The
                /// model has buffers: they hold their updated values after the call.
                pub fn evaluate_gradients(&self, params: &mut #params_name, inputs: #inputs_name<'_>, #seed_arg) -> ::mithril::rt::Result<(#outputs_name, #grads_name)> {
                    self.evaluate_gradients_mode(params, inputs, #seed_pass ::mithril::rt::Mode::Train)
                }

                /// [`Self::evaluate_gradients`] in `mode` (what `is_training` reads). A
                /// training-mode call (`Mode::Train`, `Mode::TrainSeeded`) writes the buffers'
                /// new values (`update`) into `params` after it succeeds (an `Err` leaves them);
                /// an evaluation-mode call leaves them. Buffers get zero gradients.
                #[allow(unused_mut)]
                pub fn evaluate_gradients_mode(&self, params: &mut #params_name, inputs: #inputs_name<'_>, #seed_arg mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<(#outputs_name, #grads_name)> {
                    let (__o, __g, mut __upd) = self.__evaluate_gradients_mode(params, inputs, #seed_pass mode)?;
                    if mode.is_training() {
                        #writeback
                    }
                    Ok((__o, __g))
                }

                #[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision, clippy::type_complexity)]
                fn __evaluate_gradients_mode(&self, params: &#params_name, inputs: #inputs_name<'_>, #seed_arg mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<(#outputs_name, #grads_name, [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_upd])> {
                    #threads
                    #fn_body
                }
            }
        } else if self.g.uses_mode() {
            quote! {
                #[doc = #grad_doc]
                ///
                /// In training mode (`is_training` is true): [`Self::evaluate_gradients_mode`]
                /// with `mithril::rt::Mode::Train`.
                pub fn evaluate_gradients(&self, params: #pref #params_name, inputs: #inputs_name<'_>, #seed_arg) -> ::mithril::rt::Result<(#outputs_name, #grads_name)> {
                    self.evaluate_gradients_mode(params, inputs, #seed_pass ::mithril::rt::Mode::Train)
                }

                /// [`Self::evaluate_gradients`] in `mode` (what `is_training` reads).
                #[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision)]
                pub fn evaluate_gradients_mode(&self, params: #pref #params_name, inputs: #inputs_name<'_>, #seed_arg mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<(#outputs_name, #grads_name)> {
                    #threads
                    #fn_body
                }
            }
        } else {
            quote! {
                #[doc = #grad_doc]
                #[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision)]
                pub fn evaluate_gradients(&self, params: #pref #params_name, inputs: #inputs_name<'_>, #seed_arg) -> ::mithril::rt::Result<(#outputs_name, #grads_name)> {
                    #threads
                    #fn_body
                }
            }
        };
        quote! {
            #[doc(hidden)]
            pub const __MITHRIL_LIFE_GRAD: &'static [(u32, u32)] = #life;

            /// Memory numbers of `evaluate_gradients`' last plan (`None` before its first call).
            pub fn memory_report_gradients(&self) -> ::std::option::Option<::mithril::rt::MemoryReport> {
                self.__ws_grad.lock().ok().and_then(|w| w.report())
            }

            #grad_fns
        }
    }

    fn grads_expr(
        &self,
        tree: &Tree,
        path: &mut Vec<String>,
        vals: &BTreeMap<usize, TokenStream>,
    ) -> TokenStream {
        let name = self.api.struct_name(path, "Grads");
        let mut fields = Vec::new();
        for key in &tree.order {
            let f = format_ident!("{}", key);
            if let Some(&i) = tree.leaves.get(key) {
                let val = vals
                    .get(&i)
                    .cloned()
                    .unwrap_or_else(|| quote!(compile_error!("internal: missing gradient")));
                fields.push(quote!(#f: #val));
            } else if let Some(sub) = tree.subs.get(key) {
                path.push(key.clone());
                let e = self.grads_expr(sub, path, vals);
                path.pop();
                fields.push(quote!(#f: #e));
            }
        }
        quote!(#name { #(#fields,)* })
    }
}
