//! Run-time instrumentation of a CPU model (`profile`, `code_transformers`,
//! `save_intermediates`; `mithril::rt::inspect`): the model's extra fields, the plan call that
//! goes through `rt::inspect::run`, and the extra functions (`evaluate_with_hook`,
//! `evaluate_with_intermediates`, `profile_report`, ...). A model compiled without the options
//! gets none of it: its plans are run by `rt::plan::run` and its struct has no extra field.

use super::items::Names;
use super::Gen;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};

impl Gen<'_> {
    /// The call running this function's plan: `rt::plan::run`, or with instrumentation
    /// `rt::inspect::run` with the model's state (and, in `evaluate` of a model compiled with
    /// `code_transformers: [hook]`, the `__hook` its wrapper binds).
    pub(super) fn run_call(&self, ws_field: &syn::Ident, fallback: TokenStream) -> TokenStream {
        let model = self.inp.name.to_string();
        let i = self.inp.inspect;
        if !i.stateful() {
            return quote! {
                ::mithril::rt::plan::run(__plan, &self.#ws_field, #fallback, __views.get(#model)?, &mut __outs)?;
            };
        }
        let (function, hook) = match ws_field.to_string().as_str() {
            "__ws" if i.hook => ("evaluate", quote!(__hook)),
            "__ws" => ("evaluate", quote!(::std::option::Option::None)),
            "__ws_grad" => ("evaluate_gradients", quote!(::std::option::Option::None)),
            _ => (
                "evaluate_with_intermediates",
                quote!(::std::option::Option::None),
            ),
        };
        quote! {
            ::mithril::rt::inspect::run(&self.__inspect, #function, #hook, __plan, &self.#ws_field, #fallback, __views.get(#model)?, &mut __outs)?;
        }
    }

    /// The model struct's extra fields and their initializers.
    pub(super) fn inspect_fields(&self) -> (TokenStream, TokenStream) {
        let i = self.inp.inspect;
        let model = self.inp.name.to_string();
        let (mut fields, mut init) = (TokenStream::new(), TokenStream::new());
        if i.stateful() {
            let (profile, timing, trace, nan_check) = (i.profile, i.timing, i.trace, i.nan_check);
            let compile = if i.profile {
                quote!(Self::COMPILE_TIMINGS)
            } else {
                quote!("")
            };
            fields.extend(quote!(__inspect: ::std::sync::Mutex<::mithril::rt::inspect::State>,));
            init.extend(quote! {
                __inspect: ::std::sync::Mutex::new(::mithril::rt::inspect::State::new(
                    #model,
                    ::mithril::rt::inspect::Flags { profile: #profile, timing: #timing, trace: #trace, nan_check: #nan_check },
                    #compile,
                )),
            });
        }
        if i.save_intermediates {
            let planning = self.inp.planning;
            let max = match self.inp.max_memory_gb {
                Some(x) => quote!(::std::option::Option::Some(#x)),
                None => quote!(::std::option::Option::None),
            };
            fields.extend(quote!(__ws_int: ::std::sync::Mutex<::mithril::rt::Workspace>,));
            init.extend(quote! {
                __ws_int: ::std::sync::Mutex::new(::mithril::rt::Workspace::new(Self::__MITHRIL_LIFE_INT, #planning, #max).named(#model)),
            });
        }
        (fields, init)
    }

    /// The functions of the instrumentation options, in `impl M`. `hook_body` is `evaluate`'s
    /// body (which reads `__hook`).
    pub(super) fn inspect_items(&self, names: &Names, hook_body: &TokenStream) -> TokenStream {
        let i = self.inp.inspect;
        let mut items = TokenStream::new();
        let (params_name, inputs_name, outputs_name) =
            (&names.params, &names.inputs, &names.outputs);
        let threads = self.threads_guard();
        let lints = quote!(#[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow)]);
        let uses_mode = self.g.uses_mode();
        let (mode_arg, mode_doc) = if uses_mode {
            (
                quote!(, mode: ::mithril::rt::Mode),
                " in `mode` (what `is_training` reads)",
            )
        } else {
            (quote!(), "")
        };
        if i.hook {
            let doc = format!(
                "[`Self::evaluate`]{mode_doc} with `hook` called before and after every op \
                 (`code_transformers: [hook]`): `before` with the op's operands, `after` with its \
                 result; an `Err` from the hook stops the call and is returned."
            );
            items.extend(quote! {
                #[doc = #doc]
                #lints
                pub fn evaluate_with_hook(&self, hook: &mut dyn ::mithril::rt::OpHook, params: &#params_name, inputs: #inputs_name<'_> #mode_arg) -> ::mithril::rt::Result<#outputs_name> {
                    #threads
                    let __hook: ::std::option::Option<&mut dyn ::mithril::rt::OpHook> = ::std::option::Option::Some(hook);
                    #hook_body
                }
            });
        }
        if i.stateful() {
            items.extend(quote! {
                /// The instrumentation state (`profile`, `code_transformers`): the profile, the
                /// call timings. Calls of the model wait while it is held.
                pub fn inspect_state(&self) -> ::std::sync::MutexGuard<'_, ::mithril::rt::inspect::State> {
                    ::mithril::rt::inspect::lock(&self.__inspect)
                }

                /// Forget the profile and the call timings gathered so far.
                pub fn reset_instrumentation(&self) {
                    self.inspect_state().reset()
                }
            });
        }
        if i.timing {
            items.extend(quote! {
                /// The wall time of this model's calls (`code_transformers: [timing]`): count,
                /// last, min, max, total.
                pub fn call_timing(&self) -> ::mithril::rt::inspect::CallTiming {
                    self.inspect_state().timing()
                }
            });
        }
        if i.profile {
            let out = match &i.profile_output {
                Some(p) => quote!(::std::option::Option::Some(#p)),
                None => quote!(::std::option::Option::None),
            };
            items.extend(quote! {
                /// Where [`Self::save_profile`] writes the Chrome trace (`profile_output`).
                pub const PROFILE_OUTPUT: ::std::option::Option<&'static str> = #out;

                /// The run-time profile over every call so far (`profile: true`) as a text
                /// table: per function its calls and wall time; every op (fusion groups are
                /// the `fused` / `fused_matmul` rows) sorted by time, with its share, mean
                /// time per call, achieved GFLOP/s and GB/s; then the ops summed by kind.
                pub fn profile_report(&self) -> ::std::string::String {
                    self.inspect_state().profile().report()
                }

                /// The profile's rows, slowest first.
                pub fn profile_rows(&self) -> ::std::vec::Vec<::mithril::rt::inspect::ProfileRow> {
                    self.inspect_state().profile().rows()
                }

                /// The profile as Chrome trace-event JSON (opens in Perfetto and
                /// `chrome://tracing`).
                pub fn profile_trace(&self) -> ::std::string::String {
                    self.inspect_state().profile().chrome_trace()
                }

                /// Writes [`Self::profile_trace`] to `profile_output` and returns the path;
                /// `Err` when the model was compiled without `profile_output` or the file
                /// cannot be written.
                pub fn save_profile(&self) -> ::mithril::rt::Result<&'static str> {
                    let p = Self::PROFILE_OUTPUT.ok_or_else(|| ::mithril::rt::Error::op("profile", "compiled without `profile_output`; use `profile_trace()`"))?;
                    self.inspect_state().write_trace(::std::path::Path::new(p))?;
                    Ok(p)
                }
            });
        }
        if let Some((gi, int_names)) = self.inp.intermediates {
            let mut ig = Gen::new(gi, self.inp);
            let (pre, outs, _) = ig.plan_body(
                &format_ident!("__ws_int"),
                &format_ident!("__MITHRIL_LIFE_INT"),
                false,
            );
            let life = ig.life_tokens_pub();
            let n = self.g.outputs.len();
            let fwd = outs.iter().take(n).map(|(name, val)| {
                let f = format_ident!("{}", name);
                quote!(#f: #val)
            });
            let pushes = int_names.iter().enumerate().map(|(j, name)| {
                let k = n + j;
                quote!(__int.push(#name, __outs[#k].take())?;)
            });
            let model = self.inp.name.to_string();
            let (dir_const, save) = match &i.intermediate_dir {
                Some(d) => (
                    quote!(::std::option::Option::Some(#d)),
                    quote!(__int.save_to_dir(#d)?;),
                ),
                None => (quote!(::std::option::Option::None), quote!()),
            };
            let doc = format!(
                "[`Self::evaluate`]{mode_doc}, also returning every named intermediate value of \
                 the call (`save_intermediates: true`): each `let` / `output` of the model and \
                 its submodels by instance path (`fc1.h`). Runs its own plan, in which those \
                 values are outputs (kept through fusion and in-place reuse); `evaluate` is \
                 unchanged.{}",
                if i.intermediate_dir.is_some() {
                    " Each call also writes them, as safetensors, to \
                     `<intermediate_dir>/<model>.intermediates.safetensors`."
                } else {
                    ""
                }
            );
            items.extend(quote! {
                #[doc(hidden)]
                pub const __MITHRIL_LIFE_INT: &'static [(u32, u32)] = #life;
                /// Where `evaluate_with_intermediates` writes (`intermediate_dir`).
                pub const INTERMEDIATE_DIR: ::std::option::Option<&'static str> = #dir_const;

                #[doc = #doc]
                #lints
                pub fn evaluate_with_intermediates(&self, params: &#params_name, inputs: #inputs_name<'_> #mode_arg) -> ::mithril::rt::Result<(#outputs_name, ::mithril::rt::Intermediates)> {
                    #threads
                    #pre
                    let __o = #outputs_name { #(#fwd,)* };
                    let mut __int = ::mithril::rt::Intermediates::new(#model);
                    #(#pushes)*
                    #save
                    Ok((__o, __int))
                }
            });
        }
        items
    }
}
