//! The gradient API of a cuda model: `MGrads` / `MDeviceGrads`, `evaluate_gradients_device`
//! (the forward+backward graph on the device), `grads_to_host`, and `evaluate_gradients` on
//! host data.

use super::api::{device_input_init, upload_inputs};
use super::params::param_tree_impl;
use super::{rt, CudaGen};
use crate::backends::api::TypedApi;
use crate::backends::common::Tree;
use crate::ir::Graph;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::collections::BTreeMap;

/// Items and methods of the gradient API.
pub(super) struct GradParts {
    pub(super) items: TokenStream,
    pub(super) methods: TokenStream,
}

impl<'a> CudaGen<'a> {
    /// The gradient API, when the model has a forward+backward graph (empty otherwise).
    pub(super) fn gradients(&mut self, tree: &Tree, gen: &TypedApi) -> GradParts {
        let Some(t) = self.train else {
            return GradParts {
                items: quote!(),
                methods: quote!(),
            };
        };
        let grads_name = format_ident!("{}Grads", self.inp.name);
        let mut items = Vec::new();
        gen.param_structs_named(tree, &mut vec![], &mut items, "Grads");
        self.device_struct_tree(gen, tree, &mut vec![], "DeviceGrads", &mut items);
        let param_tree = param_tree_impl(self.g, &grads_name);
        let grads_to_host =
            self.convert_tree(gen, tree, &mut vec![], "Grads", &quote!(grads), false);
        let device_body = self.gradients_device_body(t, tree, gen);
        let items = quote! {
            #(#items)*
            #param_tree
        };
        let methods = self.gradient_methods(device_body, grads_to_host);
        GradParts { items, methods }
    }

    /// The body of `evaluate_gradients_device`: the forward+backward graph `t` on the device,
    /// or, when a node of it has no lowering, an `Err` naming why (a compile error for a
    /// `train` model, which exists for its gradient).
    fn gradients_device_body(&mut self, t: &'a Graph, tree: &Tree, gen: &TypedApi) -> TokenStream {
        let name = self.inp.name;
        let doutputs_name = format_ident!("{}DeviceOutputs", name);
        // the forward+backward graph; a node without a lowering makes the whole model fail
        let before = self.errors.len();
        let kernels_before = self.kernels.len();
        let mut cx = self.ctx(t, "g");
        let (checks, body, outs) = self.body(&mut cx);
        let errs: Vec<syn::Error> = self.errors.drain(before..).collect();
        if !errs.is_empty() {
            self.kernels.truncate(kernels_before);
            self.entries.truncate(kernels_before);
        }
        if !errs.is_empty() && self.inp.train_model {
            // a train model exists for its gradient: that is a compile error
            self.errors.extend(errs.iter().cloned());
        }
        let (fwd, grad_vals) = crate::backends::api::split_grad_outputs(outs);
        let dgrads = grads_expr(gen, tree, &mut vec![], &grad_vals);
        let syms: Vec<&str> = t.syms.iter().map(|s| s.as_str()).collect();
        if errs.is_empty() {
            quote! {
                let __dev: &::mithril::rt::cuda::CudaDevice = &self.__dev;
                let mut __env = ::mithril::rt::SymEnv::new(&[#(#syms),*]);
                #(#checks)*
                let _ = &__env;
                #(#body)*
                Ok((#doutputs_name { #(#fwd,)* }, #dgrads))
            }
        } else {
            let why = errs
                .iter()
                .map(|e| e.to_string().lines().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join("; ");
            let msg = format!("the gradient of `{name}` is not lowered on cuda: {why}");
            quote! {
                let _ = (params, inputs);
                Err(::mithril::rt::Error::op(::std::stringify!(#name), #msg))
            }
        }
    }

    /// `evaluate_gradients_device`, `grads_to_host` and `evaluate_gradients` (host data).
    fn gradient_methods(
        &self,
        device_body: TokenStream,
        grads_to_host: TokenStream,
    ) -> TokenStream {
        let g = self.g;
        let name = self.inp.name;
        let params_name = format_ident!("{}Params", name);
        let grads_name = format_ident!("{}Grads", name);
        let dparams_name = format_ident!("{}DeviceParams", name);
        let dgrads_name = format_ident!("{}DeviceGrads", name);
        let inputs_name = format_ident!("{}Inputs", name);
        let outputs_name = format_ident!("{}Outputs", name);
        let dinputs_name = format_ident!("{}DeviceInputs", name);
        let doutputs_name = format_ident!("{}DeviceOutputs", name);
        let c = rt();
        let train_model = self.inp.train_model;
        let seed_arg = if train_model {
            quote!()
        } else {
            quote!(output_grads: #doutputs_name,)
        };
        let host_seed_arg = if train_model {
            quote!()
        } else {
            quote!(output_grads: #outputs_name,)
        };
        let seed_upload: Vec<TokenStream> = if train_model {
            vec![]
        } else {
            g.outputs
                .iter()
                .map(|o| {
                    let f = format_ident!("{}", o.name);
                    quote!(#f: #c::DeviceTensor::to_device(&self.__dev, &output_grads.#f.view())?)
                })
                .collect()
        };
        let seed_pass = if train_model {
            quote!()
        } else {
            quote!(#doutputs_name { #(#seed_upload,)* },)
        };
        let to_dev_inputs = upload_inputs(g);
        let dev_input_init = device_input_init(g);
        let phantom_init = if g.inputs.is_empty() {
            quote!(_marker: ::std::marker::PhantomData,)
        } else {
            quote!()
        };
        let grad_doc = if train_model {
            "Run the train model on device data and differentiate its `loss` (seeded with 1): the outputs and the gradient of every param, all in device memory (no host round trip)."
        } else {
            "Run the model on device data and differentiate it: the outputs and the gradient of `sum(output * output_grads)` with respect to every param, all in device memory."
        };
        let (out_ty, grad_ty) = (quote!(#outputs_name), quote!(#grads_name));
        let lints = quote!(#[allow(unused_variables, unused_mut, unused_assignments, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision, clippy::type_complexity)]);
        let common = quote! {
            /// Copy device gradients to the host.
            pub fn grads_to_host(&self, grads: &#dgrads_name) -> ::mithril::rt::Result<#grads_name> {
                Ok(#grads_to_host)
            }
        };
        let seed_names = if train_model {
            quote!()
        } else {
            quote!(output_grads,)
        };
        if self.g.uses_mode() || self.train.is_some_and(|t| t.uses_mode()) {
            // a model that reads `is_training`: the mode per call, as on the CPU backend
            quote! {
                #[doc = #grad_doc]
                ///
                /// In training mode (`is_training` is true):
                /// [`Self::evaluate_gradients_device_mode`] with `mithril::rt::Mode::Train`.
                pub fn evaluate_gradients_device(&self, params: &#dparams_name, inputs: #dinputs_name<'_>, #seed_arg) -> ::mithril::rt::Result<(#doutputs_name, #dgrads_name)> {
                    self.evaluate_gradients_device_mode(params, inputs, #seed_names ::mithril::rt::Mode::Train)
                }

                /// [`Self::evaluate_gradients_device`] in `mode` (what `is_training` reads).
                #lints
                pub fn evaluate_gradients_device_mode(&self, params: &#dparams_name, inputs: #dinputs_name<'_>, #seed_arg mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<(#doutputs_name, #dgrads_name)> {
                    #device_body
                }

                #common

                /// [`Self::evaluate_gradients_mode`] with `mithril::rt::Mode::Train` (same
                /// signature as the CPU backend).
                pub fn evaluate_gradients(&self, params: &#params_name, inputs: #inputs_name<'_>, #host_seed_arg) -> ::mithril::rt::Result<(#out_ty, #grad_ty)> {
                    self.evaluate_gradients_mode(params, inputs, #seed_names ::mithril::rt::Mode::Train)
                }

                /// [`Self::evaluate_gradients_device_mode`] on host data: params, inputs and
                /// seeds are copied to the device, results back.
                pub fn evaluate_gradients_mode(&self, params: &#params_name, inputs: #inputs_name<'_>, #host_seed_arg mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<(#out_ty, #grad_ty)> {
                    let __params = self.params_to_device(params)?;
                    #(#to_dev_inputs)*
                    let (outputs, grads) = self.evaluate_gradients_device_mode(&__params, #dinputs_name { #(#dev_input_init,)* #phantom_init }, #seed_pass mode)?;
                    Ok((self.outputs_to_host(outputs)?, self.grads_to_host(&grads)?))
                }
            }
        } else {
            quote! {
                #[doc = #grad_doc]
                #lints
                pub fn evaluate_gradients_device(&self, params: &#dparams_name, inputs: #dinputs_name<'_>, #seed_arg) -> ::mithril::rt::Result<(#doutputs_name, #dgrads_name)> {
                    #device_body
                }

                #common

                /// [`Self::evaluate_gradients_device`] on host data (same signature as the CPU
                /// backend): params, inputs and seeds are copied to the device, results back.
                pub fn evaluate_gradients(&self, params: &#params_name, inputs: #inputs_name<'_>, #host_seed_arg) -> ::mithril::rt::Result<(#out_ty, #grad_ty)> {
                    let __params = self.params_to_device(params)?;
                    #(#to_dev_inputs)*
                    let (outputs, grads) = self.evaluate_gradients_device(&__params, #dinputs_name { #(#dev_input_init,)* #phantom_init }, #seed_pass)?;
                    Ok((self.outputs_to_host(outputs)?, self.grads_to_host(&grads)?))
                }
            }
        }
    }
}

/// The `MDeviceGrads` value of the gradient outputs `vals` (by param index).
fn grads_expr(
    gen: &TypedApi,
    tree: &Tree,
    path: &mut Vec<String>,
    vals: &BTreeMap<usize, TokenStream>,
) -> TokenStream {
    let name = gen.struct_name(path, "DeviceGrads");
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
            let e = grads_expr(gen, sub, path, vals);
            path.pop();
            fields.push(quote!(#f: #e));
        }
    }
    quote!(#name { #(#fields,)* })
}
