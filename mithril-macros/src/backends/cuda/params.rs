//! The param trees of a cuda model: the host structs (the CPU backend's) and their device
//! counterparts (`MDeviceParams`, `MDeviceGrads`), the conversions between them, and their
//! `ParamTree` impls.

use super::CudaGen;
use crate::backends::api::TypedApi;
use crate::backends::common::{ix, Tree};
use crate::ir::Graph;
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

impl<'a> CudaGen<'a> {
    /// The device struct (`kind`: `DeviceParams` or `DeviceGrads`) of a param tree and of its
    /// sub-trees, into `out`.
    pub(super) fn device_struct_tree(
        &self,
        gen: &TypedApi,
        tree: &Tree,
        path: &mut Vec<String>,
        kind: &str,
        out: &mut Vec<TokenStream>,
    ) {
        let name = gen.struct_name(path, kind);
        let vis = self.inp.vis;
        let mut fields = Vec::new();
        for key in &tree.order {
            let f = format_ident!("{}", key);
            if let Some(&i) = tree.leaves.get(key) {
                let node = self.g.params[i].node;
                let ty = gen.elem_ty(node);
                let doc = format!(
                    "`{}`: `{}` on the device",
                    self.g.params[i].dotted(),
                    self.g.describe(node)
                );
                fields.push(quote!(#[doc = #doc] pub #f: ::mithril::rt::cuda::DeviceTensor<#ty>));
            } else if let Some(sub) = tree.subs.get(key) {
                path.push(key.clone());
                let sn = gen.struct_name(path, kind);
                self.device_struct_tree(gen, sub, path, kind, out);
                path.pop();
                let doc = format!("The device tensors of `{key}`.");
                fields.push(quote!(#[doc = #doc] pub #f: #sn));
            }
        }
        let what = if kind == "DeviceParams" {
            "Params"
        } else {
            "Gradients"
        };
        let doc = if path.is_empty() {
            format!(
                "{what} of `{}` in device memory (fields mirror the host struct).",
                self.inp.name
            )
        } else {
            format!(
                "{what} of `{}` inside `{}`, in device memory.",
                path.join("."),
                self.inp.name
            )
        };
        out.push(quote! {
            #[doc = #doc]
            #[derive(Debug)]
            #vis struct #name { #(#fields,)* }
        });
    }

    /// `host -> device` (`to_device`) or `device -> host` conversion of a param-shaped tree.
    pub(super) fn convert_tree(
        &self,
        gen: &TypedApi,
        tree: &Tree,
        path: &mut Vec<String>,
        kind: &str,
        src: &TokenStream,
        to_device: bool,
    ) -> TokenStream {
        let name = gen.struct_name(path, kind);
        let mut fields = Vec::new();
        for key in &tree.order {
            let f = format_ident!("{}", key);
            path.push(key.clone());
            let fs: Vec<Ident> = path.iter().map(|p| format_ident!("{}", p)).collect();
            if let Some(&i) = tree.leaves.get(key) {
                let node = self.g.params[i].node;
                let d = ix(gen.rank(node));
                let dotted = self.g.params[i].dotted();
                let val = if to_device {
                    quote!(::mithril::rt::cuda::DeviceTensor::to_device(&self.__dev, &#src.#(#fs).*.view())?)
                } else {
                    quote!(#src.#(#fs).*.to_host()?.into_dimensionality::<#d>().map_err(|e| ::mithril::rt::Error::op(#dotted, e.to_string()))?)
                };
                fields.push(quote!(#f: #val));
            } else if let Some(sub) = tree.subs.get(key) {
                let e = self.convert_tree(gen, sub, path, kind, src, to_device);
                fields.push(quote!(#f: #e));
            }
            path.pop();
        }
        quote!(#name { #(#fields,)* })
    }

    /// The param structs (host and device), `randomize_params`, the conversions between them.
    pub(super) fn param_parts(&mut self, gen: &mut TypedApi, tree: &Tree) -> ParamParts {
        let mut structs = Vec::new();
        gen.param_structs(tree, &mut vec![], &mut structs);
        self.device_struct_tree(gen, tree, &mut vec![], "DeviceParams", &mut structs);
        let randomize = gen.randomize_expr(tree, &mut vec![]);
        self.errors.append(&mut gen.errors);
        let to_device = self.convert_tree(
            gen,
            tree,
            &mut vec![],
            "DeviceParams",
            &quote!(params),
            true,
        );
        let to_host = self.convert_tree(gen, tree, &mut vec![], "Params", &quote!(params), false);
        ParamParts {
            structs,
            randomize,
            to_device,
            to_host,
        }
    }
}

/// The param structs and what converts them.
pub(super) struct ParamParts {
    pub(super) structs: Vec<TokenStream>,
    pub(super) randomize: TokenStream,
    pub(super) to_device: TokenStream,
    pub(super) to_host: TokenStream,
}

/// `impl ParamTree for <ty>` over the params of `g` (the host params and the host gradients
/// have the same fields).
pub(super) fn param_tree_impl(g: &Graph, ty: &Ident) -> TokenStream {
    let visits: Vec<TokenStream> = g.params.iter().map(|p| {
        let fields = p.path.iter().map(|s| format_ident!("{}", s));
        let dotted = p.dotted();
        quote!(f(#dotted, ::mithril::rt::TensorView::from(self.#(#fields).*.view().into_dyn()));)
    }).collect();
    let visits_mut: Vec<TokenStream> = g.params.iter().map(|p| {
        let fields = p.path.iter().map(|s| format_ident!("{}", s));
        let dotted = p.dotted();
        quote!(f(#dotted, ::mithril::rt::TensorViewMut::from(self.#(#fields).*.view_mut().into_dyn()))?;)
    }).collect();
    quote! {
        impl ::mithril::rt::ParamTree for #ty {
            fn visit(&self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorView<'_>)) {
                #(#visits)*
            }
            fn visit_mut(&mut self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorViewMut<'_>) -> ::mithril::rt::Result<()>) -> ::mithril::rt::Result<()> {
                #(#visits_mut)*
                Ok(())
            }
        }
    }
}
