//! The model struct and its functions around the bodies: the struct (its workspaces; a mixed
//! model's device and kernels), `new`, `OPTIMIZE_FOR` (and a mixed model's CUDA consts), and
//! `evaluate` (a mixed model's also `prepare` / `evaluate_prepared` with its prepared params).

use super::items::Names;
use super::Gen;
use crate::backends::common::{device_options, DeviceSide};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

/// The lints the generated functions allow.
fn lints() -> TokenStream {
    quote!(#[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision)])
}

impl Gen<'_> {
    /// `evaluate` (of a mixed model, with `prepare` and `evaluate_prepared`), and the items
    /// it needs outside `impl M` (a mixed model's prepared params).
    pub(super) fn evaluate_fns(
        &self,
        names: &Names,
        eval_body: &TokenStream,
    ) -> (TokenStream, TokenStream) {
        let (params_name, inputs_name, outputs_name) =
            (&names.params, &names.inputs, &names.outputs);
        let threads = self.threads_guard();
        let lints = lints();
        if let Some(outs) = &self.donate_outs {
            return self.donating_fns(names, eval_body, outs, &lints);
        }
        if self.mixed.is_none() && self.inp.quantization_int8 {
            return self.quant_evaluate_fns(names, eval_body);
        }
        if self.mixed.is_none() && self.preparable() {
            return self.prepared_evaluate_fns(names, eval_body);
        }
        match &self.mixed {
            // a model with buffers updated in training calls: `evaluate_mode` takes `&mut`
            // params and writes the new values back after a training call
            None if self.stateful() => {
                let n_upd = self.n_upd();
                let writeback = self.writeback();
                (
                    quote! {
                        /// Run the model in evaluation mode (`is_training` is false; the
                        /// buffers are read, not updated): [`Self::evaluate_mode`] with
                        /// `mithril::rt::Mode::Eval`.
                        pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                            Ok(self.__evaluate_mode(params, inputs, ::mithril::rt::Mode::Eval)?.0)
                        }

                        /// Run the model in `mode` (what `is_training` reads). A training-mode
                        /// call (`Mode::Train`, `Mode::TrainSeeded`) writes the buffers' new
                        /// values (`update`) into `params` after it succeeds (an `Err` leaves
                        /// them); an evaluation-mode call leaves them.
                        #[allow(unused_mut)]
                        pub fn evaluate_mode(&self, params: &mut #params_name, inputs: #inputs_name<'_>, mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<#outputs_name> {
                            let (__o, mut __upd) = self.__evaluate_mode(params, inputs, mode)?;
                            if mode.is_training() {
                                #writeback
                            }
                            Ok(__o)
                        }

                        #lints
                        #[allow(clippy::type_complexity)]
                        fn __evaluate_mode(&self, params: &#params_name, inputs: #inputs_name<'_>, mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<(#outputs_name, [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_upd])> {
                            #threads
                            #eval_body
                        }
                    },
                    quote!(),
                )
            }
            // a model that reads `is_training`: `evaluate` is the eval-mode call of
            // `evaluate_mode`
            None if self.g.uses_mode() => (
                quote! {
                    /// Run the model in evaluation mode (`is_training` is false):
                    /// [`Self::evaluate_mode`] with `mithril::rt::Mode::Eval`.
                    pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                        self.evaluate_mode(params, inputs, ::mithril::rt::Mode::Eval)
                    }

                    /// Run the model in `mode` (what `is_training` reads).
                    #lints
                    pub fn evaluate_mode(&self, params: &#params_name, inputs: #inputs_name<'_>, mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<#outputs_name> {
                        #threads
                        #eval_body
                    }
                },
                quote!(),
            ),
            None => (
                quote! {
                    /// Run the model.
                    #lints
                    pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                        #threads
                        #eval_body
                    }
                },
                quote!(),
            ),
            Some(m) => self.mixed_evaluate_fns(&**m, names, eval_body),
        }
    }

    /// A plain CPU model's `evaluate` (and `evaluate_mode` where it reads the mode), `prepare`
    /// and `evaluate_prepared` over one private `__evaluate_q` (the plan run with its
    /// `rt::quant::Run`), and the `MPrepared` alias.
    fn prepared_evaluate_fns(
        &self,
        names: &Names,
        eval_body: &TokenStream,
    ) -> (TokenStream, TokenStream) {
        let (vis, name) = (self.inp.vis, &names.name);
        let (params_name, inputs_name, outputs_name) =
            (&names.params, &names.inputs, &names.outputs);
        let threads = self.threads_guard();
        let lints = lints();
        let p_name = format_ident!("{}Prepared", name);
        let n_inputs = self.g.inputs.len();
        let qplan = self.qplan_fn.clone().unwrap_or_default();
        let with_mode = self.g.uses_mode();
        let (mode_param, mode_eval) = if with_mode {
            (
                quote!(mode: ::mithril::rt::Mode,),
                quote!(::mithril::rt::Mode::Eval,),
            )
        } else {
            (quote!(), quote!())
        };
        // a model with buffers (BatchNorm's running statistics): the run also gives the
        // buffers' new values of a training-mode call; `evaluate_mode` writes them back, every
        // other function drops them (an eval-mode call updates nothing)
        let stateful = self.stateful();
        let (ret_ty, take) = if stateful {
            let n_upd = self.n_upd();
            (
                quote!((#outputs_name, [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_upd])),
                quote!(.map(|r| r.0)),
            )
        } else {
            (quote!(#outputs_name), quote!())
        };
        let eval_fns = self.off_evaluate_fns(names, "", "Run the model.");
        let eval_doc = if with_mode {
            "[`Self::evaluate`] with prepared params (see [`Self::prepare`]): evaluation mode, the buffers read from the prepared copy."
        } else {
            "[`Self::evaluate`] with prepared params (see [`Self::prepare`])."
        };
        let fns = quote! {
            #qplan

            #lints
            #[allow(clippy::type_complexity)]
            fn __evaluate_q(&self, params: &#params_name, inputs: #inputs_name<'_>, #mode_param __q: ::mithril::rt::quant::Run<'_>) -> ::mithril::rt::Result<#ret_ty> {
                #threads
                #eval_body
            }

            #eval_fns

            /// Prepare `params` for repeated calls: a copy of them, with the weight of every
            /// matrix product that reads a 2-D param packed once for the GEMM
            /// (`mithril::rt::prepack`). [`Self::evaluate_prepared`] then skips packing them
            /// at every call and gives bitwise the results of [`Self::evaluate`] with these
            /// params. Later changes to `params` do not reach the copy: prepare again after
            /// an update.
            pub fn prepare(&self, params: &#params_name) -> ::mithril::rt::Result<#p_name> {
                Ok(::mithril::rt::prepack::Prepared::new(Self::__mithril_qplan()?, #n_inputs, params))
            }

            #[doc = #eval_doc]
            pub fn evaluate_prepared(&self, prepared: &#p_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                self.__evaluate_q(prepared.params(), inputs, #mode_eval prepared.run())#take
            }
        };
        let doc = format!(
            "[`{name}`]'s params with their product weights packed once (`mithril::rt::prepack::Prepared`): made by [`{name}::prepare`], run by [`{name}::evaluate_prepared`]."
        );
        let items = quote! {
            #[doc = #doc]
            #vis type #p_name = ::mithril::rt::prepack::Prepared<#params_name>;
        };
        (fns, items)
    }

    /// `evaluate` (and `evaluate_mode` for a model that reads the mode) over `__evaluate_q`
    /// with `quant::Run::Off`, for the models whose plan runs with a `quant::Run` (prepared and
    /// int8): an evaluation-mode `evaluate`; a stateful model's `evaluate_mode` takes `&mut`
    /// params and writes the buffers' new values back after a training call. `how` goes into
    /// the mode docs (", in f32"), `plain_doc` is a mode-less model's `evaluate` doc.
    fn off_evaluate_fns(&self, names: &Names, how: &str, plain_doc: &str) -> TokenStream {
        let (params_name, inputs_name, outputs_name) =
            (&names.params, &names.inputs, &names.outputs);
        let off = quote!(::mithril::rt::quant::Run::Off);
        let mode_doc = format!("Run the model in `mode` (what `is_training` reads){how}.");
        if self.stateful() {
            let writeback = self.writeback();
            let eval_doc = format!("Run the model in evaluation mode (`is_training` is false; the buffers are read, not updated){how}: [`Self::evaluate_mode`] with `mithril::rt::Mode::Eval`.");
            let mode_doc = format!("{mode_doc} A training-mode call (`Mode::Train`, `Mode::TrainSeeded`) writes the buffers' new values (`update`) into `params` after it succeeds (an `Err` leaves them); an evaluation-mode call leaves them.");
            quote! {
                #[doc = #eval_doc]
                pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                    Ok(self.__evaluate_q(params, inputs, ::mithril::rt::Mode::Eval, #off)?.0)
                }

                #[doc = #mode_doc]
                #[allow(unused_mut)]
                pub fn evaluate_mode(&self, params: &mut #params_name, inputs: #inputs_name<'_>, mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<#outputs_name> {
                    let (__o, mut __upd) = self.__evaluate_q(params, inputs, mode, #off)?;
                    if mode.is_training() {
                        #writeback
                    }
                    Ok(__o)
                }
            }
        } else if self.g.uses_mode() {
            let eval_doc = format!("Run the model in evaluation mode (`is_training` is false){how}: [`Self::evaluate_mode`] with `mithril::rt::Mode::Eval`.");
            quote! {
                #[doc = #eval_doc]
                pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                    self.__evaluate_q(params, inputs, ::mithril::rt::Mode::Eval, #off)
                }

                #[doc = #mode_doc]
                pub fn evaluate_mode(&self, params: &#params_name, inputs: #inputs_name<'_>, mode: ::mithril::rt::Mode) -> ::mithril::rt::Result<#outputs_name> {
                    self.__evaluate_q(params, inputs, mode, #off)
                }
            }
        } else {
            quote! {
                #[doc = #plain_doc]
                pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                    self.__evaluate_q(params, inputs, #off)
                }
            }
        }
    }

    /// A `quantization: int8` model's functions: `evaluate` (f32) and `evaluate_quantized`
    /// over one private `__evaluate_q` (the plan run with its `rt::quant::Run`), `quantize`,
    /// `calibrate`, `load_quantized`, and the `MQuantized` alias.
    fn quant_evaluate_fns(
        &self,
        names: &Names,
        eval_body: &TokenStream,
    ) -> (TokenStream, TokenStream) {
        let (vis, name) = (self.inp.vis, &names.name);
        let (params_name, inputs_name, outputs_name) =
            (&names.params, &names.inputs, &names.outputs);
        let model = name.to_string();
        let threads = self.threads_guard();
        let lints = lints();
        let q_name = format_ident!("{}Quantized", name);
        let n_inputs = self.g.inputs.len();
        let qplan = self.qplan_fn.clone().unwrap_or_default();
        let with_mode = self.g.uses_mode();
        let (mode_param, mode_eval, mode_arg) = if with_mode {
            (
                quote!(mode: ::mithril::rt::Mode,),
                quote!(::mithril::rt::Mode::Eval,),
                quote!(mode,),
            )
        } else {
            (quote!(), quote!(), quote!())
        };
        // a model with buffers (BatchNorm's running statistics): the run also gives the
        // buffers' new values of a training-mode call; `evaluate_mode` writes them back, every
        // other function drops them (an eval-mode call updates nothing)
        let stateful = self.stateful();
        let run_q =
            quote!(self.__evaluate_q(quantized.params(), inputs, #mode_eval quantized.run()));
        let (ret_ty, run_q) = if stateful {
            let n_upd = self.n_upd();
            (
                quote!((#outputs_name, [::std::option::Option<::mithril::rt::plan::AnyArray>; #n_upd])),
                quote!(Ok(#run_q?.0)),
            )
        } else {
            (quote!(#outputs_name), run_q)
        };
        let f32_fns = self.off_evaluate_fns(
            names,
            ", in f32",
            "Run the model in f32 (the reference for [`Self::evaluate_quantized`]).",
        );
        let q_doc = format!(
            "[`{name}`]'s params with int8 weights (`mithril::rt::quant::Quantized`): made by [`{name}::quantize`], [`{name}::calibrate`] or [`{name}::load_quantized`], run by [`{name}::evaluate_quantized`]."
        );
        let fns = quote! {
            #qplan

            #lints
            #[allow(clippy::type_complexity)]
            fn __evaluate_q(&self, params: &#params_name, inputs: #inputs_name<'_>, #mode_param __q: ::mithril::rt::quant::Run<'_>) -> ::mithril::rt::Result<#ret_ty> {
                #threads
                #eval_body
            }

            #f32_fns

            /// Quantize `params` for int8 inference with **dynamic** activation scales: the
            /// weight of every f32 matrix product with a param weight becomes int8 per output
            /// channel (symmetric, packed once); each call of [`Self::evaluate_quantized`]
            /// quantizes the product's input with the scale of its own largest magnitude.
            pub fn quantize(&self, params: &#params_name) -> ::mithril::rt::Result<#q_name> {
                ::mithril::rt::quant::Quantized::new(#model, Self::__mithril_qplan()?, #n_inputs, params, ::std::option::Option::None)
            }

            /// Quantize `params` for int8 inference with **static** activation scales: the
            /// model runs in f32 over every batch of `batches`, recording the largest magnitude
            /// of each quantized product's input; that range (over all batches) becomes the
            /// product's fixed scale (inputs beyond it are clamped). `Err` if a batch fails or
            /// there is none.
            pub fn calibrate<'b>(&self, params: &#params_name, batches: impl ::std::iter::IntoIterator<Item = #inputs_name<'b>>) -> ::mithril::rt::Result<#q_name> {
                let __cal = ::mithril::rt::quant::Calibration::new();
                for b in batches {
                    self.__evaluate_q(params, b, #mode_eval ::mithril::rt::quant::Run::Calibrate(&__cal))?;
                }
                ::mithril::rt::quant::Quantized::new(#model, Self::__mithril_qplan()?, #n_inputs, params, ::std::option::Option::Some(&__cal))
            }

            /// Run the model with int8 matrix products (`i32` accumulation, dequantized in the
            /// GEMM's store; every other op in f32, in evaluation mode).
            pub fn evaluate_quantized(&self, quantized: &#q_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                #run_q
            }

            /// Load quantized params saved by their `save_safetensors` (int8 weights
            /// with their `_scale` tensors, the other params as saved; a weight stored as
            /// float is quantized here with dynamic scales).
            pub fn load_quantized(&self, path: impl ::std::convert::AsRef<::std::path::Path>) -> ::mithril::rt::Result<#q_name> {
                ::mithril::rt::quant::Quantized::load(#model, Self::__mithril_qplan()?, #n_inputs, self.randomize_params(0), path)
            }
        };
        let _ = mode_arg;
        let items = quote! {
            #[doc = #q_doc]
            #vis type #q_name = ::mithril::rt::quant::Quantized<#params_name>;
        };
        (fns, items)
    }

    /// A mixed model's `evaluate`, `prepare`, `evaluate_prepared` and its prepared params.
    fn mixed_evaluate_fns(
        &self,
        m: &dyn DeviceSide<'_>,
        names: &Names,
        eval_body: &TokenStream,
    ) -> (TokenStream, TokenStream) {
        let (g, vis, name) = (self.g, self.inp.vis, &names.name);
        let (params_name, inputs_name, outputs_name) =
            (&names.params, &names.inputs, &names.outputs);
        let model = name.to_string();
        let threads = self.threads_guard();
        let lints = lints();
        // the params the cuda ops read, copied once by `prepare`
        let prep_name = format_ident!("{}Prepared", name);
        let mut fields = Vec::new();
        let mut uploads = Vec::new();
        for &i in m.prepared() {
            let p = &g.params[i];
            let f = format_ident!("p{}", i);
            let t = self.api.elem_ty(p.node);
            let doc = format!("`{}` on the device", p.dotted());
            fields.push(quote!(#[doc = #doc] #f: ::mithril::rt::cuda::DeviceTensor<#t>));
            let path = p.path.iter().map(|x| format_ident!("{}", x));
            uploads.push(quote!(#f: ::mithril::rt::cuda::DeviceTensor::to_device(&self.__dev, &params.#(#path).*.view())?));
        }
        let prep_doc = format!(
            "Params of [`{name}`] prepared for [`{name}::evaluate_prepared`]: a copy of the host params and, in device memory, the {} param(s) its cuda ops read.",
            fields.len()
        );
        let prepared_items = quote! {
            #[doc = #prep_doc]
            #[derive(Debug)]
            #vis struct #prep_name {
                host: #params_name,
                ordinal: usize,
                #(#fields,)*
            }

            impl #prep_name {
                /// The host params it was made from.
                pub fn params(&self) -> &#params_name {
                    &self.host
                }
            }
        };
        let eval_fn = quote! {
            #lints
            fn __evaluate(&self, params: &#params_name, __prep: ::std::option::Option<&#prep_name>, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                #threads
                #eval_body
            }

            /// Run the model on host data: the ops placed on cuda run on the device,
            /// with the inputs and params they read uploaded and their results read by
            /// CPU ops (or returned) downloaded, at every call. For repeated calls with
            /// the same params, [`Self::prepare`] them once.
            pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                self.__evaluate(params, ::std::option::Option::None, inputs)
            }

            /// Copy the params once for [`Self::evaluate_prepared`]: the params the cuda
            /// ops read go to the device, and the whole tree is kept (cloned) on the host,
            /// so later changes to `params` do not affect it — prepare again after an
            /// update.
            pub fn prepare(&self, params: &#params_name) -> ::mithril::rt::Result<#prep_name> {
                Ok(#prep_name {
                    host: ::std::clone::Clone::clone(params),
                    ordinal: self.__dev.ordinal(),
                    #(#uploads,)*
                })
            }

            /// [`Self::evaluate`] with prepared params: no param is uploaded (the inputs and
            /// the values that cross still are). `Err` when `prepared` was made on another
            /// device.
            pub fn evaluate_prepared(&self, prepared: &#prep_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                if prepared.ordinal != self.__dev.ordinal() {
                    return Err(::mithril::rt::Error::Device(::std::format!(
                        "`{}`: params prepared on CUDA device {} used on device {}",
                        #model, prepared.ordinal, self.__dev.ordinal()
                    )));
                }
                self.__evaluate(&prepared.host, ::std::option::Option::Some(prepared), inputs)
            }
        };
        (eval_fn, prepared_items)
    }

    /// The initializers of the model's two workspaces.
    fn ws_init(&self) -> TokenStream {
        let has_grad = self.train.is_some();
        let max = match self.inp.max_memory_gb {
            Some(x) => quote!(::std::option::Option::Some(#x)),
            None => quote!(::std::option::Option::None),
        };
        let planning = self.inp.planning;
        let grad_life = if has_grad {
            quote!(Self::__MITHRIL_LIFE_GRAD)
        } else {
            quote!(&[])
        };
        let model_name = self.inp.name.to_string();
        // (`profile`, `code_transformers`, `save_intermediates`: CPU models only)
        let (_, inspect) = self.inspect_fields();
        quote! {
            __ws: ::std::sync::Mutex::new(::mithril::rt::Workspace::new(Self::__MITHRIL_LIFE_EVAL, #planning, #max).named(#model_name)),
            __ws_grad: ::std::sync::Mutex::new(::mithril::rt::Workspace::new(#grad_life, #planning, #max).named(#model_name)),
            #inspect
        }
    }

    /// The model struct and the start of its `impl` (`OPTIMIZE_FOR`, `new`, ...), CPU or
    /// mixed; and the CUDA C module of a mixed model.
    pub(super) fn model_struct(
        &self,
        names: &Names,
        doc: &str,
    ) -> (TokenStream, TokenStream, Option<String>) {
        match &self.mixed {
            None => self.cpu_struct(names, doc),
            Some(m) => self.mixed_struct(&**m, names, doc),
        }
    }

    /// A CPU model's struct, `OPTIMIZE_FOR` and `new`.
    fn cpu_struct(&self, names: &Names, doc: &str) -> (TokenStream, TokenStream, Option<String>) {
        let (vis, name) = (self.inp.vis, &names.name);
        let model = name.to_string();
        let ws_init = self.ws_init();
        let optimize_for = self.inp.optimize_for.name();
        let (inspect_fields, _) = self.inspect_fields();
        let mobile = match &self.inp.mobile {
            Some(m) => quote!(::std::option::Option::Some(#m)),
            None => quote!(::std::option::Option::None),
        };
        (
            quote! {
                #[doc = #doc]
                #vis struct #name {
                    __ws: ::std::sync::Mutex<::mithril::rt::Workspace>,
                    __ws_grad: ::std::sync::Mutex<::mithril::rt::Workspace>,
                    #inspect_fields
                }

                impl ::std::default::Default for #name {
                    fn default() -> Self {
                        #name { #ws_init }
                    }
                }

                impl ::std::clone::Clone for #name {
                    /// A model with the same code and fresh (empty) planned memory.
                    fn clone(&self) -> Self {
                        ::std::default::Default::default()
                    }
                }

                impl ::std::fmt::Debug for #name {
                    fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.debug_struct(#model).finish_non_exhaustive()
                    }
                }
            },
            quote! {
                /// `optimize_for` as compiled: `"latency"` (a call's matrix products may use
                /// every core) or `"throughput"` (each call runs on its calling thread).
                pub const OPTIMIZE_FOR: &'static str = #optimize_for;

                /// `target_hardware: "mobile"` as compiled: platform, ABI (Rust target) and
                /// settings; `None` for other targets.
                pub const MOBILE: ::std::option::Option<&'static str> = #mobile;

                /// Create the physical model (CPU). Its planned memory is allocated at the first
                /// call for each input shape.
                pub fn new() -> ::mithril::rt::Result<Self> {
                    Ok(::std::default::Default::default())
                }
            },
            None,
        )
    }

    /// A mixed model's struct (with its device and kernels), consts, `new` and `on_device`.
    fn mixed_struct(
        &self,
        m: &dyn DeviceSide<'_>,
        names: &Names,
        doc: &str,
    ) -> (TokenStream, TokenStream, Option<String>) {
        let (g, vis, name) = (self.g, self.inp.vis, &names.name);
        let model = name.to_string();
        let ws_init = self.ws_init();
        let optimize_for = self.inp.optimize_for.name();
        let opts = self.inp.cuda.cloned().unwrap_or_default();
        let (source, entries) = m.module();
        let (up, down) = m.placed().transfers(g);
        let (n_up, n_down) = (up.len(), down.len());
        let file = format!("{model}.cu");
        let device = opts.device;
        let arch = match &opts.arch {
            Some(a) => quote!(::std::option::Option::Some(#a)),
            None => quote!(::std::option::Option::None),
        };
        let options = device_options(&opts);
        // what runs on cuda, for the error of `new()`
        let other = |cuda: bool| -> String {
            g.placement
                .map
                .iter()
                .filter(|(_, c)| *c == cuda)
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let what = if g.placement.default_cuda {
            format!("backend: cuda, backend_map: {} on cpu", other(false))
        } else {
            format!("backend_map: {} on cuda", other(true))
        };
        let items = quote! {
            #[doc = #doc]
            #vis struct #name {
                __ws: ::std::sync::Mutex<::mithril::rt::Workspace>,
                __ws_grad: ::std::sync::Mutex<::mithril::rt::Workspace>,
                __dev: ::mithril::rt::cuda::CudaDevice,
                __k: ::mithril::rt::cuda::exec::ModelKernels,
            }

            impl ::std::fmt::Debug for #name {
                fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                    f.debug_struct(#model).field("device", &self.__dev).finish_non_exhaustive()
                }
            }
        };
        let ctor = quote! {
            /// `optimize_for` as compiled: `"latency"` or `"throughput"` (the CPU part's
            /// matrix products run on the calling thread; the cuda part is unchanged).
            pub const OPTIMIZE_FOR: &'static str = #optimize_for;
            /// The CUDA C module of the ops placed on cuda (all generated kernels of
            /// `evaluate` (`f<node>`) and `evaluate_gradients` (`g<node>`)), compiled by
            /// NVRTC at the first launch.
            pub const CUDA_SOURCE: &'static str = #source;
            /// The kernel entry names of [`Self::CUDA_SOURCE`].
            pub const CUDA_KERNELS: &'static [&'static str] = &[#(#entries),*];
            /// The architecture kernels are compiled for (`cuda: { arch }`); `None`: the
            /// device's own.
            pub const CUDA_ARCH: ::std::option::Option<&'static str> = #arch;
            /// The device [`Self::new`] opens (`cuda: { device }`).
            pub const CUDA_DEVICE: usize = #device;
            /// Host <-> device copies made by one `evaluate`: `(uploads, downloads)`
            /// (inputs and params that device ops read, and values crossing between
            /// the backends; listed in [`Self::SUMMARY`]).
            pub const TRANSFERS: (usize, usize) = (#n_up, #n_down);

            /// Open the model: the CUDA device its `backend_map` ops run on
            /// (`cuda: { device }`, default 0). `Err` — never a panic — naming what is
            /// missing when the CUDA libraries, the driver or the device are not there.
            pub fn new() -> ::mithril::rt::Result<Self> {
                Self::on_device(Self::CUDA_DEVICE)
            }

            /// Open the model with its cuda ops on device `ordinal`.
            pub fn on_device(ordinal: usize) -> ::mithril::rt::Result<Self> {
                let dev = ::mithril::rt::cuda::exec::open_model(#model, #what, ordinal, #options)?;
                Ok(#name {
                    #ws_init
                    __dev: dev,
                    __k: ::mithril::rt::cuda::exec::ModelKernels::new(#file, Self::CUDA_SOURCE),
                })
            }

            /// The device the cuda ops run on.
            pub fn device(&self) -> &::mithril::rt::cuda::CudaDevice {
                &self.__dev
            }
        };
        (items, ctor, Some(source))
    }
}
