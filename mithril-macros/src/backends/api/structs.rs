//! The typed API's param and gradient structs (`MParams`, `MGrads`, one struct per submodel
//! instance), their hidden plumbing methods and `randomize_params`' init table.
//!
//! Volume stays proportional to the distinct layouts, not to the instances: nested instances
//! with the same fields (names, element types, ranks and shapes) share one struct, and the
//! other instance names (`MParamsLinear5`, `MGradsLinear5`, ...) are type aliases of it. Each
//! struct gets four short methods, one line per field: `__views` (the plan's input views, into
//! `mithril::rt::plan::Views`), and, written against `mithril::rt::tree`, `__visit`,
//! `__visit_mut` (what `ParamTree` goes through) and `__build` (`randomize_params` from the
//! init table, the gradients of `evaluate_gradients` from a plan run's outputs).

use super::TypedApi;
use crate::backends::common::Tree;
use crate::ir::{Dim, Init, RDim};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::fmt::Write;

/// One field of a generated struct.
enum Field {
    Leaf {
        key: String,
        doc: String,
        ty: TokenStream,
    },
    Sub {
        key: String,
        doc: String,
        ty: syn::Ident,
    },
}

impl TypedApi<'_> {
    /// Params in the order the structs visit them (the tree's declaration order).
    pub(crate) fn leaf_order(tree: &Tree) -> Vec<usize> {
        let mut out = Vec::new();
        fn walk(t: &Tree, out: &mut Vec<usize>) {
            for key in &t.order {
                if let Some(&i) = t.leaves.get(key) {
                    out.push(i);
                } else if let Some(sub) = t.subs.get(key) {
                    walk(sub, out);
                }
            }
        }
        walk(tree, &mut out);
        out
    }

    /// The `Params` struct tree.
    pub(crate) fn param_structs(
        &self,
        tree: &Tree,
        path: &mut Vec<String>,
        out: &mut Vec<TokenStream>,
    ) {
        self.param_structs_named(tree, path, out, "Params")
    }

    /// The `Params` (or `Grads`) struct tree: the struct of `path` and, first, its nested ones.
    pub(crate) fn param_structs_named(
        &self,
        tree: &Tree,
        path: &mut Vec<String>,
        out: &mut Vec<TokenStream>,
        kind: &str,
    ) {
        self.struct_tree(tree, path, out, kind);
    }

    /// Emits the struct of `tree` at `path` (after its nested ones) or, for a nested layout
    /// already emitted, a type alias of it; returns the name to use for it.
    fn struct_tree(
        &self,
        tree: &Tree,
        path: &mut Vec<String>,
        out: &mut Vec<TokenStream>,
        kind: &str,
    ) -> syn::Ident {
        let what = if kind == "Params" {
            "Params"
        } else {
            "Gradients"
        };
        let mut fields = Vec::new();
        let mut layout = String::new();
        for key in &tree.order {
            if let Some(&i) = tree.leaves.get(key) {
                let node = self.g.params[i].node;
                let ty = self.array_ty(node);
                let shape = self.g.describe(node);
                let _ = write!(layout, "L {key} {ty} {shape};");
                let doc = format!("`{key}`: `{shape}`");
                fields.push(Field::Leaf {
                    key: key.clone(),
                    doc,
                    ty,
                });
            } else if let Some(sub) = tree.subs.get(key) {
                path.push(key.clone());
                let full = path.join(".");
                let ty = self.struct_tree(sub, path, out, kind);
                path.pop();
                let _ = write!(layout, "S {key} {};", self.layouts_canon(&ty));
                fields.push(Field::Sub {
                    key: key.clone(),
                    doc: format!("{what} of `{full}`."),
                    ty,
                });
            }
        }
        let name = self.struct_name(path, kind);
        let vis = self.inp.vis;
        if path.is_empty() && self.top_alias.get() {
            let key = format!("top {layout}");
            let known = self.layouts.borrow().get(&key).cloned();
            if let (Some(canon), "Grads") = (known.clone(), kind) {
                let doc = format!(
                    "Gradients of `{}`: the same struct as its params, [`{canon}`] (one gradient per param, same names and types).",
                    self.inp.name
                );
                out.push(quote!(#[doc = #doc] #vis type #name = #canon;));
                self.grads_aliased.set(true);
                return name;
            }
            if known.is_none() {
                self.layouts.borrow_mut().insert(key, name.clone());
            }
        }
        if !path.is_empty() {
            let known = self.layouts.borrow().get(&layout).cloned();
            if let Some(canon) = known {
                let doc = format!("{what} of `{}`: [`{canon}`].", path.join("."));
                out.push(quote!(#[doc = #doc] #vis type #name = #canon;));
                let canon = self.layouts_canon(&canon);
                self.alias_of.borrow_mut().insert(name.to_string(), canon);
                return name;
            }
            self.layouts.borrow_mut().insert(layout, name.clone());
        }
        let doc = if path.is_empty() {
            format!("{what} of `{}` (fields mirror the model tree; dotted names like `fc1.weight` for generic code).", self.inp.name)
        } else {
            format!(
                "{what} of `{}` inside `{}` (and of the instances whose names alias this struct).",
                path.join("."),
                self.inp.name
            )
        };
        out.push(struct_items(&name, vis, &doc, &fields));
        name
    }

    /// The struct a (possibly aliased) struct name stands for.
    fn layouts_canon(&self, name: &syn::Ident) -> String {
        self.alias_of
            .borrow()
            .get(&name.to_string())
            .cloned()
            .unwrap_or_else(|| name.to_string())
    }

    /// `randomize_params`' body: the params struct built from the init table (one row per
    /// param, in visit order).
    #[allow(clippy::ptr_arg)] // the callers' path type (the root's empty path)
    pub(crate) fn randomize_expr(&mut self, tree: &Tree, path: &mut Vec<String>) -> TokenStream {
        let name = self.struct_name(path, "Params");
        let mut table = String::new();
        for i in Self::leaf_order(tree) {
            if let Some(row) = self.init_row(i) {
                table.push_str(&row);
                table.push('\n');
            }
        }
        let table = crate::backends::pack::runtime_text(&table);
        quote!(::mithril::rt::tree::built(#table.and_then(|__t| #name::__build(&mut ::mithril::rt::tree::Build::init(__t, seed)))))
    }

    /// The init-table row of param `i` (`name dims spec`), or `None` after a spanned error.
    fn init_row(&mut self, i: usize) -> Option<String> {
        let p = &self.g.params[i];
        let node = p.node;
        let dotted = p.dotted();
        let dims = self.g.rdims(node)?;
        let mut known = Vec::new();
        for d in &dims {
            match d {
                RDim::Known(n) => known.push(*n as usize),
                _ => {
                    self.errors.push(syn::Error::new(p.span, format!(
                        "param `{dotted}` has shape {}, which is not static; params need dims known at compile time (fix the input dims it depends on)",
                        self.g.describe(node)
                    )));
                    known.push(0);
                }
            }
        }
        let elems = known.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
        if elems.is_none_or(|n| n > isize::MAX as usize) {
            self.errors.push(syn::Error::new(
                p.span,
                format!(
                    "param `{dotted}` has shape {}: too many elements to allocate",
                    self.g.describe(node)
                ),
            ));
        }
        let spec = match &p.init {
            Init::Zeros => "z".to_string(),
            Init::Ones => "o".to_string(),
            Init::Full(x) => format!("f {x:?}"),
            Init::Normal(m, s) => format!("n {m:?} {s:?}"),
            Init::Uniform(lo, hi) => format!("u {lo:?} {hi:?}"),
            Init::FanIn(d) => {
                let fan = match d {
                    Some(d) => match self.g.env.dim(d) {
                        Dim::Known(n) => n as usize,
                        _ => {
                            self.errors.push(syn::Error::new(
                                p.span,
                                format!("the fan-in of param `{dotted}` is not static"),
                            ));
                            1
                        }
                    },
                    None if known.len() >= 2 => {
                        known[1..].iter().fold(1usize, |a, &b| a.saturating_mul(b))
                    }
                    None => known.first().copied().unwrap_or(1),
                };
                format!("k {fan}")
            }
        };
        let dims = if known.is_empty() {
            "-".to_string()
        } else {
            known
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        Some(format!("{dotted} {dims} {spec}"))
    }
}

/// A struct, its docs and its three plumbing methods.
fn struct_items(
    name: &syn::Ident,
    vis: &syn::Visibility,
    doc: &str,
    fields: &[Field],
) -> TokenStream {
    let tree = quote!(::mithril::rt::tree);
    let mut decls = Vec::new();
    let mut visits = Vec::new();
    let mut views = Vec::new();
    let mut visits_mut = Vec::new();
    let mut builds = Vec::new();
    for f in fields {
        match f {
            Field::Leaf { key, doc, ty } => {
                let id = format_ident!("{}", key);
                decls.push(quote!(#[doc = #doc] pub #id: #ty));
                visits.push(quote!(p.leaf(#key, self.#id.view(), f);));
                views.push(quote!(v.push(::mithril::rt::plan::view(self.#id.view()));));
                visits_mut.push(quote!(p.leaf_mut(#key, self.#id.view_mut(), f)?;));
                builds.push(quote!(#id: b.leaf()?));
            }
            Field::Sub { key, doc, ty } => {
                let id = format_ident!("{}", key);
                decls.push(quote!(#[doc = #doc] pub #id: #ty));
                visits.push(quote!(self.#id.__visit(p, #key, f);));
                views.push(quote!(self.#id.__views(v);));
                visits_mut.push(quote!(self.#id.__visit_mut(p, #key, f)?;));
                builds.push(quote!(#id: #ty::__build(b)?));
            }
        }
    }
    quote! {
        #[doc = #doc]
        #[derive(Clone, Debug)]
        #vis struct #name { #(#decls,)* }
        impl #name {
            #[doc(hidden)]
            pub fn __views<'a, const N: usize>(&'a self, v: &mut ::mithril::rt::plan::Views<'a, N>) {
                #(#views)*
            }
            #[doc(hidden)]
            pub fn __visit<'a>(&'a self, p: &mut #tree::Path, key: &str, f: &mut dyn FnMut(&str, ::mithril::rt::TensorView<'a>)) {
                let n = p.enter(key);
                #(#visits)*
                p.leave(n);
            }
            #[doc(hidden)]
            pub fn __visit_mut(&mut self, p: &mut #tree::Path, key: &str, f: &mut dyn FnMut(&str, ::mithril::rt::TensorViewMut<'_>) -> ::mithril::rt::Result<()>) -> ::mithril::rt::Result<()> {
                let n = p.enter(key);
                #(#visits_mut)*
                p.leave(n);
                Ok(())
            }
            #[doc(hidden)]
            pub fn __build(b: &mut #tree::Build<'_>) -> ::mithril::rt::Result<Self> {
                Ok(Self { #(#builds,)* })
            }
        }
    }
}

/// The `ParamTree` impl of a top-level params or grads struct; `buffers`: the dotted names of
/// its buffers (`ParamTree::is_buffer`, which optimizers and clipping skip).
pub(crate) fn param_tree_impl(name: &syn::Ident, buffers: &[String]) -> TokenStream {
    let is_buffer = if buffers.is_empty() {
        quote!()
    } else {
        quote! {
            fn is_buffer(&self, name: &str) -> bool {
                matches!(name, #(#buffers)|*)
            }
        }
    };
    quote! {
        impl ::mithril::rt::ParamTree for #name {
            #is_buffer
            fn visit(&self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorView<'_>)) {
                self.__visit(&mut ::mithril::rt::tree::Path::new(), "", &mut |n, v| f(n, v))
            }
            fn visit_mut(&mut self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorViewMut<'_>) -> ::mithril::rt::Result<()>) -> ::mithril::rt::Result<()> {
                self.__visit_mut(&mut ::mithril::rt::tree::Path::new(), "", f)
            }
        }
    }
}
