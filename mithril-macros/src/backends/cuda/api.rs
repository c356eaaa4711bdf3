//! The model's items: the model struct, host and device input / output structs, the
//! transfers, and `impl M` (consts, `new`, `evaluate`, `evaluate_device`); the param trees are
//! built by `params`.

use super::gradients::GradParts;
use super::params::{param_tree_impl, ParamParts};
use super::{kernel_text, rt, CudaGen};
use crate::backends::api::TypedApi;
use crate::backends::common::device_options;
use crate::backends::common::{ix, Tree};
use crate::ir::{Graph, Op};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

impl<'a> CudaGen<'a> {
    /// Generate all items; also returns the CUDA C module (for `file_path`).
    pub fn generate(mut self) -> Result<(TokenStream, String), Vec<syn::Error>> {
        let g = self.g;

        // ---- the forward graph on the device (donated inputs held owned)
        self.donated = self.donation();
        let mut cx = self.ctx(g, "f");
        for &i in &self.donated {
            cx.owned[g.inputs[i].node] = true;
        }
        let (checks, body, outs) = self.body(&mut cx);
        let out_fields: Vec<TokenStream> = outs
            .iter()
            .map(|(n, val)| {
                let f = format_ident!("{}", n);
                quote!(#f: #val)
            })
            .collect();
        let mut gen = TypedApi::new(g, self.inp);

        // ---- host-side types (as on the CPU), their device counterparts, the transfers
        let terminals = self.terminal_fields(&gen);
        let mut tree = Tree::default();
        for (i, p) in g.params.iter().enumerate() {
            tree.insert(&p.path, i);
        }
        let params = self.param_parts(&mut gen, &tree);
        let transfers = self.transfers(&gen);

        // ---- gradients
        let grads = self.gradients(&tree, &gen);

        // ---- the module
        let source = kernel_text::fused_module(&self.kernels);
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let parts = Parts {
            checks,
            body,
            out_fields,
            terminals,
            params,
            transfers,
            grads,
        };
        let mut tokens = self.type_items(&parts);
        tokens.extend(self.impl_block(&parts, &source));
        Ok((tokens, source))
    }

    /// The fields of the host and device input / output structs.
    fn terminal_fields(&self, gen: &TypedApi) -> Terminals {
        let g = self.g;
        let input_fields: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let t = gen.elem_ty(i.node);
                let d = ix(gen.rank(i.node));
                let doc = format!("input `{}`: `{}`", i.name, g.describe(i.node));
                quote!(#[doc = #doc] pub #f: ::mithril::ndarray::ArrayView<'a, #t, #d>)
            })
            .collect();
        let dinput_fields: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let t = gen.elem_ty(i.node);
                let doc = format!("input `{}`: `{}` on the device", i.name, g.describe(i.node));
                quote!(#[doc = #doc] pub #f: &'a ::mithril::rt::cuda::DeviceTensor<#t>)
            })
            .collect();
        let output_fields: Vec<TokenStream> = g
            .outputs
            .iter()
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let ty = gen.array_ty(o.node);
                let doc = format!("output `{}`: `{}`", o.name, g.describe(o.node));
                quote!(#[doc = #doc] pub #f: #ty)
            })
            .collect();
        let doutput_fields: Vec<TokenStream> = g
            .outputs
            .iter()
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let t = gen.elem_ty(o.node);
                let doc = format!(
                    "output `{}`: `{}` on the device",
                    o.name,
                    g.describe(o.node)
                );
                quote!(#[doc = #doc] pub #f: ::mithril::rt::cuda::DeviceTensor<#t>)
            })
            .collect();
        let inputs_derive = if g
            .inputs
            .iter()
            .all(|i| gen.rank(i.node).is_some_and(|r| r <= 6))
        {
            quote!(#[derive(Clone, Copy, Debug)])
        } else {
            quote!(#[derive(Clone, Debug)])
        };
        Terminals {
            input_fields,
            dinput_fields,
            output_fields,
            doutput_fields,
            inputs_derive,
        }
    }

    /// The inputs named by `donate: [..]` (indices into `g.inputs`); an unknown name, or a
    /// model that reads `is_training`, is an error spanned at the name.
    fn donation(&mut self) -> Vec<usize> {
        let g = self.g;
        let mut out = Vec::new();
        for (name, span) in &self.inp.render.donate {
            let Some(k) = g.inputs.iter().position(|i| &i.name == name) else {
                let names: Vec<&str> = g.inputs.iter().map(|i| i.name.as_str()).collect();
                self.errors.push(syn::Error::new(
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
                self.errors.push(syn::Error::new(
                    *span,
                    format!("`donate`: `{}` reads `is_training`; `evaluate_device_donating` is for models without a mode", self.inp.name),
                ));
                continue;
            }
            if !out.contains(&k) {
                out.push(k);
            }
        }
        out
    }

    /// `MDeviceDonatingInputs<'a>`: the donated inputs owned, the others borrowed (empty
    /// without `donate`).
    fn donating_struct(&self, t: &Terminals) -> TokenStream {
        if self.donated.is_empty() {
            return quote!();
        }
        let g = self.g;
        let name = self.inp.name;
        let vis = self.inp.vis;
        let dname = format_ident!("{}DeviceDonatingInputs", name);
        let gen = TypedApi::new(g, self.inp);
        let fields = g.inputs.iter().enumerate().map(|(k, i)| {
            if !self.donated.contains(&k) {
                return t.dinput_fields[k].clone();
            }
            let f = format_ident!("{}", i.name);
            let ty = gen.elem_ty(i.node);
            let doc = format!(
                "input `{}`: `{}` on the device, donated (consumed by the call)",
                i.name,
                g.describe(i.node)
            );
            quote!(#[doc = #doc] pub #f: ::mithril::rt::cuda::DeviceTensor<#ty>)
        });
        let doc = format!(
            "Inputs of [`{name}::evaluate_device_donating`]: the donated inputs (`donate: [..]`) as owned device tensors, the others borrowed."
        );
        quote! {
            #[doc = #doc]
            #[derive(Debug)]
            #vis struct #dname<'a> { #(#fields,)* }
        }
    }

    /// Host inputs uploaded for `evaluate` and device outputs downloaded.
    fn transfers(&self, gen: &TypedApi) -> Transfers {
        let g = self.g;
        let outputs_to_host: Vec<TokenStream> = g
            .outputs
            .iter()
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let d = ix(gen.rank(o.node));
                let on = o.name.clone();
                quote!(#f: outputs.#f.to_host()?.into_dimensionality::<#d>().map_err(|e| ::mithril::rt::Error::op(#on, e.to_string()))?)
            })
            .collect();
        Transfers {
            to_dev_inputs: upload_inputs(g),
            dev_input_init: device_input_init(g),
            outputs_to_host,
        }
    }

    /// The model's doc: the user's doc comments, what was generated, the terminal table.
    fn model_doc(&self, n_kernels: usize, precision: &str) -> String {
        let g = self.g;
        let name = self.inp.name;
        let device = self.opts.device;
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
            "Physical model `{name}` generated by `mithril!` from `{}` for `backend: cuda` \
             (device {device}; {n_kernels} generated kernels in [`Self::CUDA_SOURCE`]; f32 matrix products: {precision}).\n\n",
            self.inp.logical
        ));
        doc.push_str(&crate::backends::api::terminal_table(g));
        doc
    }

    /// `f32 matrix products: ...` in the model's doc.
    fn precision(&self) -> &'static str {
        if self.opts.amp {
            "bf16 with f32 accumulation (`amp: true`)"
        } else if self.opts.tf32 {
            "TF32 (`tf32: true`)"
        } else {
            "strict f32"
        }
    }

    /// The model struct, the input / output structs (host and device), the param structs and
    /// their `ParamTree` impls.
    fn type_items(&self, parts: &Parts) -> TokenStream {
        let g = self.g;
        let name = self.inp.name;
        let vis = self.inp.vis;
        let model = name.to_string();
        let inputs_name = format_ident!("{}Inputs", name);
        let outputs_name = format_ident!("{}Outputs", name);
        let params_name = format_ident!("{}Params", name);
        let dinputs_name = format_ident!("{}DeviceInputs", name);
        let doutputs_name = format_ident!("{}DeviceOutputs", name);
        let doc = self.model_doc(self.entries.len(), self.precision());
        let Terminals {
            input_fields,
            dinput_fields,
            output_fields,
            doutput_fields,
            inputs_derive,
        } = &parts.terminals;
        let phantom = if g.inputs.is_empty() {
            quote!(#[doc = "(this model has no inputs)"] pub _marker: ::std::marker::PhantomData<&'a ()>,)
        } else {
            quote!()
        };
        let param_structs = &parts.params.structs;
        let param_tree = param_tree_impl(g, &params_name);
        let grads_items = &parts.grads.items;
        let inputs_doc = format!("Inputs of [`{name}`]: one `ndarray` view per input terminal.");
        let dinputs_doc = format!(
            "Inputs of [`{name}::evaluate_device`]: one borrowed device tensor per input terminal."
        );
        let outputs_doc = format!("Outputs of [`{name}`].");
        let doutputs_doc = format!("Outputs of [`{name}::evaluate_device`], in device memory.");
        let donating_struct = self.donating_struct(&parts.terminals);
        quote! {
            #[doc = #doc]
            #vis struct #name {
                __dev: ::mithril::rt::cuda::CudaDevice,
                __k: ::mithril::rt::cuda::exec::ModelKernels,
            }

            impl ::std::fmt::Debug for #name {
                fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                    f.debug_struct(#model).field("device", &self.__dev).finish_non_exhaustive()
                }
            }

            #[doc = #inputs_doc]
            #inputs_derive
            #vis struct #inputs_name<'a> { #(#input_fields,)* #phantom }

            #[doc = #dinputs_doc]
            #[derive(Clone, Copy, Debug)]
            #vis struct #dinputs_name<'a> { #(#dinput_fields,)* #phantom }

            #[doc = #outputs_doc]
            #[derive(Clone, Debug)]
            #vis struct #outputs_name { #(#output_fields,)* }

            #donating_struct

            #[doc = #doutputs_doc]
            #[derive(Debug)]
            #vis struct #doutputs_name { #(#doutput_fields,)* }

            #(#param_structs)*

            #param_tree

            #grads_items
        }
    }

    /// `impl M`: the consts and the methods.
    fn impl_block(&self, parts: &Parts, source: &str) -> TokenStream {
        let name = self.inp.name;
        let consts = self.consts(source);
        let methods = self.methods(parts);
        let grads_methods = &parts.grads.methods;
        quote! {
            impl #name {
                #consts

                #methods

                #grads_methods
            }
        }
    }

    /// The introspection consts: summary and graph dumps, the CUDA module and device settings.
    fn consts(&self, source: &str) -> TokenStream {
        let g = self.g;
        let syms: Vec<&str> = g.syms.iter().map(|s| s.as_str()).collect();
        let entries = &self.entries;
        let device = self.opts.device;
        let arch = match &self.opts.arch {
            Some(a) => quote!(::std::option::Option::Some(#a)),
            None => quote!(::std::option::Option::None),
        };
        let optimize_for = self.inp.optimize_for.name();
        // the four texts packed when long (`backends/pack.rs`), still `&'static str` consts
        // the summary, with one line per run-time loop (its device-to-host reads, `flow`)
        let summary = format!("{}{}", self.inp.summary, self.loop_notes.concat());
        let [summary, text, dot, json] = [
            &summary,
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
        quote! {
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
            /// The model's CUDA C module: every generated kernel (fused elementwise groups,
            /// matmul epilogues, casts), compiled by NVRTC at the first launch.
            pub const CUDA_SOURCE: &'static str = #source;
            /// The kernel entry names of [`Self::CUDA_SOURCE`].
            pub const CUDA_KERNELS: &'static [&'static str] = &[#(#entries),*];
            /// The architecture kernels are compiled for (`cuda: { arch }` or
            /// `target_hardware`); `None`: the device's own.
            pub const CUDA_ARCH: ::std::option::Option<&'static str> = #arch;
            /// The device [`Self::new`] opens (`cuda: { device }`).
            pub const CUDA_DEVICE: usize = #device;
            /// `optimize_for` as compiled (`"latency"` or `"throughput"`). Recorded only: on
            /// cuda it changes no generated code yet (one stream, cuBLAS's default
            /// heuristics either way).
            pub const OPTIMIZE_FOR: &'static str = #optimize_for;
        }
    }

    /// `new`, `on_device`, the transfers, `randomize_params`, `evaluate`, `evaluate_device`.
    fn methods(&self, parts: &Parts) -> TokenStream {
        let g = self.g;
        let name = self.inp.name;
        let model = name.to_string();
        let outputs_name = format_ident!("{}Outputs", name);
        let inputs_name = format_ident!("{}Inputs", name);
        let params_name = format_ident!("{}Params", name);
        let dinputs_name = format_ident!("{}DeviceInputs", name);
        let doutputs_name = format_ident!("{}DeviceOutputs", name);
        let dparams_name = format_ident!("{}DeviceParams", name);
        let c = rt();
        let file = format!("{model}.cu");
        let options = device_options(self.opts);
        let syms: Vec<&str> = g.syms.iter().map(|s| s.as_str()).collect();
        let phantom_init = if g.inputs.is_empty() {
            quote!(_marker: ::std::marker::PhantomData,)
        } else {
            quote!()
        };
        let (checks, body, out_fields) = (&parts.checks, &parts.body, &parts.out_fields);
        let ParamParts {
            randomize,
            to_device: params_to_device,
            to_host: params_to_host,
            ..
        } = &parts.params;
        let Transfers {
            to_dev_inputs,
            dev_input_init,
            outputs_to_host,
        } = &parts.transfers;
        let lints = quote!(#[allow(unused_variables, unused_mut, unused_assignments, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision, clippy::type_complexity)]);
        let device_body = quote! {
            let __dev: &::mithril::rt::cuda::CudaDevice = &self.__dev;
            let mut __env = ::mithril::rt::SymEnv::new(&[#(#syms),*]);
            #(#checks)*
            let _ = &__env;
            #(#body)*
            Ok(#doutputs_name { #(#out_fields,)* })
        };
        let evaluate_device = if self.donated.is_empty() {
            quote! {
                /// Run the model on device data; nothing goes through the host (except the
                /// condition of a run-time `if` or loop the device computes: one scalar per
                /// `if`, per iteration). Work is issued on the device's stream (copy the
                /// outputs back, or synchronize, to wait).
                #lints
                pub fn evaluate_device(&self, params: &#dparams_name, inputs: #dinputs_name<'_>) -> ::mithril::rt::Result<#doutputs_name> {
                    #device_body
                }
            }
        } else {
            let donating_name = format_ident!("{}DeviceDonatingInputs", name);
            let init = g.inputs.iter().enumerate().map(|(k, i)| {
                let f = format_ident!("{}", i.name);
                if self.donated.contains(&k) {
                    quote!(#f: #c::exec::copy(&self.__dev, inputs.#f)?)
                } else {
                    quote!(#f: inputs.#f)
                }
            });
            quote! {
                /// Run the model on device data: [`Self::evaluate_device_donating`] on a
                /// device copy of each donated input (`donate: [..]`), so `inputs` are left
                /// unchanged.
                pub fn evaluate_device(&self, params: &#dparams_name, inputs: #dinputs_name<'_>) -> ::mithril::rt::Result<#doutputs_name> {
                    self.evaluate_device_donating(params, #donating_name { #(#init,)* })
                }

                /// Run the model on device data, consuming the donated inputs (`donate: [..]`):
                /// an op that reads a donated input last may write its result into that
                /// buffer (`update_slice` writes only its new rows into the cache and returns
                /// it as its output, the same device allocation). The results are those of
                /// [`Self::evaluate_device`].
                #lints
                pub fn evaluate_device_donating(&self, params: &#dparams_name, inputs: #donating_name<'_>) -> ::mithril::rt::Result<#doutputs_name> {
                    #device_body
                }
            }
        };
        let evaluate_fns = if g.uses_mode() {
            // a model that reads `is_training`: the mode per call, as on the CPU backend
            quote! {
                /// Run the model in evaluation mode (`is_training` is false):
                /// [`Self::evaluate_mode`] with `mithril::rt::Mode::Eval`.
                pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                    self.evaluate_mode(params, inputs, ::mithril::rt::Mode::Eval)
                }

                /// Run the model in `mode` (what `is_training` reads) on host data: params and
                /// inputs are copied to the device, the outputs back (same signature as the
                /// CPU backend).
                pub fn evaluate_mode(&self, params: &#params_name, inputs: #inputs_name<'_>, mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<#outputs_name> {
                    let __params = self.params_to_device(params)?;
                    #(#to_dev_inputs)*
                    let outputs = self.evaluate_device_mode(&__params, #dinputs_name { #(#dev_input_init,)* #phantom_init }, mode)?;
                    self.outputs_to_host(outputs)
                }

                /// [`Self::evaluate_device_mode`] in evaluation mode (`mithril::rt::Mode::Eval`).
                pub fn evaluate_device(&self, params: &#dparams_name, inputs: #dinputs_name<'_>) -> ::mithril::rt::Result<#doutputs_name> {
                    self.evaluate_device_mode(params, inputs, ::mithril::rt::Mode::Eval)
                }

                /// Run the model in `mode` on device data; nothing goes through the host (the
                /// mode is a host value: `is_training` costs no transfer).
                #lints
                pub fn evaluate_device_mode(&self, params: &#dparams_name, inputs: #dinputs_name<'_>, mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<#doutputs_name> {
                    #device_body
                }
            }
        } else {
            quote! {
                /// Run the model on host data: params and inputs are copied to the device, the
                /// outputs back (same signature as the CPU backend). For repeated calls keep
                /// the params on the device and use [`Self::evaluate_device`].
                pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                    let __params = self.params_to_device(params)?;
                    #(#to_dev_inputs)*
                    let outputs = self.evaluate_device(&__params, #dinputs_name { #(#dev_input_init,)* #phantom_init })?;
                    self.outputs_to_host(outputs)
                }

                #evaluate_device
            }
        };
        quote! {
            /// Open the model on its CUDA device (`cuda: { device }`, default 0). `Err` —
            /// never a panic — naming what is missing when the CUDA libraries, the driver
            /// or the device are not there.
            pub fn new() -> ::mithril::rt::Result<Self> {
                Self::on_device(Self::CUDA_DEVICE)
            }

            /// Open the model on CUDA device `ordinal`.
            pub fn on_device(ordinal: usize) -> ::mithril::rt::Result<Self> {
                let dev = #c::exec::open_model(#model, "backend: cuda", ordinal, #options)?;
                Ok(#name { __dev: dev, __k: #c::exec::ModelKernels::new(#file, Self::CUDA_SOURCE) })
            }

            /// The device the model runs on.
            pub fn device(&self) -> &::mithril::rt::cuda::CudaDevice {
                &self.__dev
            }

            /// The summary table (same as [`Self::SUMMARY`]).
            pub fn summary(&self) -> &'static str {
                Self::SUMMARY
            }

            /// Fresh params on the host, deterministic per `seed` (the CPU backend's values).
            pub fn randomize_params(&self, seed: u64) -> #params_name {
                let _ = seed;
                #randomize
            }

            /// Copy params to the device (do it once, then call [`Self::evaluate_device`]).
            pub fn params_to_device(&self, params: &#params_name) -> ::mithril::rt::Result<#dparams_name> {
                Ok(#params_to_device)
            }

            /// Copy device params back to the host.
            pub fn params_to_host(&self, params: &#dparams_name) -> ::mithril::rt::Result<#params_name> {
                Ok(#params_to_host)
            }

            /// Copy device outputs to the host.
            pub fn outputs_to_host(&self, outputs: #doutputs_name) -> ::mithril::rt::Result<#outputs_name> {
                Ok(#outputs_name { #(#outputs_to_host,)* })
            }

            #evaluate_fns
        }
    }
}

/// What [`CudaGen::generate`] assembles into the model's items.
struct Parts {
    /// The forward graph on the device: shape checks, node code, output fields.
    checks: Vec<TokenStream>,
    body: Vec<TokenStream>,
    out_fields: Vec<TokenStream>,
    terminals: Terminals,
    params: ParamParts,
    transfers: Transfers,
    grads: GradParts,
}

/// The fields of the input / output structs, host and device.
struct Terminals {
    input_fields: Vec<TokenStream>,
    dinput_fields: Vec<TokenStream>,
    output_fields: Vec<TokenStream>,
    doutput_fields: Vec<TokenStream>,
    inputs_derive: TokenStream,
}

/// The host <-> device copies of `evaluate`.
struct Transfers {
    to_dev_inputs: Vec<TokenStream>,
    dev_input_init: Vec<TokenStream>,
    outputs_to_host: Vec<TokenStream>,
}

/// `let __in_x = DeviceTensor::to_device(..)?;` per input (`evaluate` on host data).
pub(super) fn upload_inputs(g: &Graph) -> Vec<TokenStream> {
    let c = rt();
    g.inputs
        .iter()
        .map(|i| {
            let f = format_ident!("{}", i.name);
            let l = format_ident!("__in_{}", i.name.trim_start_matches("r#"));
            quote!(let #l = #c::DeviceTensor::to_device(&self.__dev, &inputs.#f)?;)
        })
        .collect()
}

/// `x: &__in_x` per input: the device inputs of the uploads of [`upload_inputs`].
pub(super) fn device_input_init(g: &Graph) -> Vec<TokenStream> {
    g.inputs
        .iter()
        .map(|i| {
            let f = format_ident!("{}", i.name);
            let l = format_ident!("__in_{}", i.name.trim_start_matches("r#"));
            quote!(#f: &#l)
        })
        .collect()
}
