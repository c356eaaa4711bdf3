//! Composition across invocations, modules and crates (the carrier protocol).
//!
//! Every `model M` also expands to a hidden `macro_rules!` "carrier" imported as `M` in the macro
//! namespace. Its body is M's *bundle*: M's own tokens, the bundles of every model M uses
//! (transitively, so names inside M resolve without imports at the user's site) and the name of
//! the defining crate. When an invocation meets a model it does not know (`Block(x)`,
//! `other::Head(h)`, `lib_a::Proj(x)`), it emits one fetch chain through the carriers of all
//! unknown models; the last carrier calls `::mithril::mithril! { @mithril_resume [defs] <the
//! original tokens> }`, which re-enters the compiler once with every definition present.
//!
//! Bundle grammar: `{ <model tokens> } deps [ { [<key path>] <bundle> }* ] crate "<name>"`.
//!
//! Keys are the paths *as written* where the model is used (`Block`, `crate::blocks::Block`,
//! `super::x::Y`, `mithril_testlib::layers::Dense`), so a carried definition is found by the
//! same `path_key` the flattener looks up; names inside a carried model resolve only in its own
//! bundle's `deps` (the user's module need not import them). A `pub model` gets a
//! `#[macro_export]` carrier named with a hash of its definition site (so two `pub model Block`
//! in different modules do not collide at the crate root) and a *relative* `pub use .. as Name`
//! (absolute paths to macro-expanded `macro_export` macros are an error, rust-lang/rust#52234);
//! other models get a `pub(crate) use`, which also works inside fn bodies.
//!
//! Every model a definition's text calls is fetched, also where flattening does not reach the
//! call (a model with required hyperparameters, a branch or loop its defaults skip; see
//! [`model_refs`]), so its carrier's bundle is complete.
//!
//! **Recursion limit.** Each carrier in a fetch chain is one more level of macro expansion, so a
//! model (or one invocation) that names more than about 125 *distinct* submodel paths that are
//! not defined in the invocation itself exceeds rustc's default `recursion_limit` of 128:
//! `error: recursion limit reached while expanding ...`. Raise it in the user crate with
//! `#![recursion_limit = "256"]`. Chains (`Top -> Mid -> Leaf`) do not add up: each model is
//! expanded at its own site and carries its dependencies inside its bundle, so only the direct,
//! distinct paths of one invocation count.

use crate::frontend::flatten::{DefEntry, Origin, Scope};
use crate::frontend::syntax::{File, Item, ModelDef};
use proc_macro2::{Delimiter, Group, Span, TokenStream, TokenTree};
use quote::{format_ident, quote, quote_spanned};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use syn::parse::{ParseStream, Parser};
use syn::{braced, bracketed, Token};

/// Carried definitions by key (the path as written at the use site).
pub type Carried = BTreeMap<String, Rc<DefEntry>>;

/// Split `@mithril_resume [defs] rest` into the carried definitions, their raw tokens and the
/// user's tokens. Input without the prefix is returned unchanged.
pub fn split_resume(input: TokenStream) -> syn::Result<(Carried, TokenStream, TokenStream)> {
    let mut it = input.clone().into_iter();
    match (it.next(), it.next(), it.next()) {
        (Some(TokenTree::Punct(p)), Some(TokenTree::Ident(i)), Some(TokenTree::Group(g)))
            if p.as_char() == '@'
                && i == "mithril_resume"
                && g.delimiter() == Delimiter::Bracket =>
        {
            let krate = std::env::var("CARGO_CRATE_NAME").unwrap_or_default();
            let defs = parse_defs.parse2(g.stream())?;
            let mut carried = Carried::new();
            for (key, b) in defs {
                carried.insert(key, to_entry(b, &krate));
            }
            Ok((carried, g.stream(), it.collect()))
        }
        _ => Ok((Carried::new(), TokenStream::new(), input)),
    }
}

/// Parse the user's tokens.
pub fn parse_file(ts: TokenStream) -> syn::Result<File> {
    let mut f: File = syn::parse2(ts.clone())?;
    f.tokens = ts;
    Ok(f)
}

struct Bundle {
    def: ModelDef,
    deps: Vec<(String, Bundle)>,
    krate: String,
}

fn parse_defs(input: ParseStream) -> syn::Result<Vec<(String, Bundle)>> {
    let mut out = Vec::new();
    while !input.is_empty() {
        let content;
        braced!(content in input);
        let key_content;
        bracketed!(key_content in content);
        let path: syn::Path = key_content.parse()?;
        let b = parse_bundle(&content)?;
        out.push((path_key(&path), b));
    }
    Ok(out)
}

fn parse_bundle(input: ParseStream) -> syn::Result<Bundle> {
    let content;
    braced!(content in input);
    let start = content.cursor();
    let item: Item = content.parse()?;
    let tokens = crate::frontend::syntax::tokens_between(start, content.cursor());
    let Item::Model(mut def) = item else {
        return Err(content.error("a carried bundle holds a model"));
    };
    def.tokens = tokens;
    input.parse::<crate::frontend::syntax::kw::deps>()?;
    let deps_content;
    bracketed!(deps_content in input);
    let deps = parse_defs(&deps_content)?;
    input.parse::<Token![crate]>()?;
    let krate: syn::LitStr = input.parse()?;
    Ok(Bundle {
        def,
        deps,
        krate: krate.value(),
    })
}

fn to_entry(b: Bundle, current: &str) -> Rc<DefEntry> {
    let mut scope = Scope::default();
    for (k, d) in b.deps {
        scope.defs.insert(k, to_entry(d, current));
    }
    let foreign = b.krate != current;
    Rc::new(DefEntry {
        def: b.def,
        origin: Origin::Carried {
            krate: b.krate,
            foreign,
        },
        scope: Rc::new(scope),
    })
}

pub fn path_key(p: &syn::Path) -> String {
    p.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// The model paths a definition calls (`Block(..)`, `a::b::Block(..)`, `::k::Block(..)`), read
/// from its tokens. Flattening only meets the calls it reaches, which misses a model with
/// required hyperparameters (its own invocation never flattens it) and branches or loops its
/// defaults do not take; this scan finds them all, so that the carrier's bundle is complete.
/// Names bound inside the model (hyperparameters, `let`, `for`) are not models.
pub fn model_refs(def: &ModelDef) -> Vec<syn::Path> {
    let body = def
        .tokens
        .clone()
        .into_iter()
        .filter_map(|tt| match tt {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => Some(g.stream()),
            _ => None,
        })
        .last()
        .unwrap_or_default();
    let mut bound: BTreeSet<String> = def.hypers.iter().map(|h| h.name.to_string()).collect();
    let mut found = Vec::new();
    scan_calls(&body, &mut bound, &mut found);
    let mut seen = BTreeSet::new();
    found
        .into_iter()
        .filter(|p| p.segments.len() > 1 || !bound.contains(&path_key(p)))
        .filter(|p| seen.insert(path_key(p)))
        .collect()
}

fn is_punct(tt: Option<&TokenTree>, c: char) -> bool {
    matches!(tt, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

fn scan_calls(ts: &TokenStream, bound: &mut BTreeSet<String>, out: &mut Vec<syn::Path>) {
    let toks: Vec<TokenTree> = ts.clone().into_iter().collect();
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            TokenTree::Group(g) => {
                scan_calls(&g.stream(), bound, out);
                i += 1;
                continue;
            }
            TokenTree::Ident(kw) if kw == "let" || kw == "for" => {
                match toks.get(i + 1) {
                    Some(TokenTree::Ident(n)) => {
                        bound.insert(n.to_string());
                    }
                    Some(TokenTree::Group(g)) => {
                        let mut names = BTreeSet::new();
                        idents(&g.stream(), &mut names);
                        bound.extend(names);
                    }
                    _ => {}
                }
                i += 1;
                continue;
            }
            _ => {}
        }
        // a path starts at an identifier that is no field or method (`.T`, `.sum(..)`), no
        // continuation of a path already seen, or at a leading `::`
        let prev = if i > 0 { toks.get(i - 1) } else { None };
        let leading = is_punct(toks.get(i), ':')
            && is_punct(toks.get(i + 1), ':')
            && matches!(toks.get(i + 2), Some(TokenTree::Ident(_)))
            && !matches!(prev, Some(TokenTree::Ident(_)));
        let starts = leading
            || (matches!(toks[i], TokenTree::Ident(_))
                && !is_punct(prev, '.')
                && !is_punct(prev, ':'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = if leading { i + 2 } else { i };
        let mut last = j;
        j += 1;
        while is_punct(toks.get(j), ':')
            && is_punct(toks.get(j + 1), ':')
            && matches!(toks.get(j + 2), Some(TokenTree::Ident(_)))
        {
            last = j + 2;
            j += 3;
        }
        let camel = matches!(&toks[last], TokenTree::Ident(id)
            if id.to_string().starts_with(|c: char| c.is_ascii_uppercase()));
        let call = matches!(toks.get(j), Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Parenthesis);
        if camel && call {
            let path_ts: TokenStream = toks[i..j].iter().cloned().collect();
            if let Ok(p) = syn::parse2::<syn::Path>(path_ts) {
                out.push(p);
            }
        }
        i = j;
    }
}

fn idents(ts: &TokenStream, out: &mut BTreeSet<String>) {
    for tt in ts.clone() {
        match tt {
            TokenTree::Ident(i) => {
                out.insert(i.to_string());
            }
            TokenTree::Group(g) => idents(&g.stream(), out),
            _ => {}
        }
    }
}

/// The bundle tokens of a definition. `visible` are the definitions its names may refer to.
/// `stack` holds the definitions being bundled around this one: a (wrongly) recursive model is
/// reported by flattening, and must not make the bundle infinite here.
fn bundle_tokens(
    def: &ModelDef,
    krate: &str,
    visible: &Scope,
    stack: &mut Vec<String>,
) -> TokenStream {
    let tokens = &def.tokens;
    let mut deps = TokenStream::new();
    stack.push(identity(def));
    if stack.len() <= 64 {
        let mut names = BTreeSet::new();
        idents(tokens, &mut names);
        for (key, entry) in &visible.defs {
            let last = key.rsplit("::").next().unwrap_or(key);
            if !names.contains(last) || stack.contains(&identity(&entry.def)) {
                continue;
            }
            let key_ts: TokenStream = key.parse().unwrap_or_default();
            let (k2, scope2): (String, &Scope) = match &entry.origin {
                Origin::Carried { krate, .. } => (krate.clone(), &entry.scope),
                _ => (krate.to_string(), visible),
            };
            let inner = bundle_tokens(&entry.def, &k2, scope2, stack);
            deps.extend(quote!({ [#key_ts] #inner }));
        }
    }
    stack.pop();
    let body = Group::new(Delimiter::Brace, tokens.clone());
    quote!(#body deps [#deps] crate #krate)
}

/// Where a definition's name stands in the source: the same model however often it is carried.
fn identity(def: &ModelDef) -> String {
    let sp = def.name.span();
    let at = sp.start();
    format!("{}@{}:{}:{}", def.name, sp.file(), at.line, at.column)
}

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The carrier of a model defined in this invocation.
pub fn emit_carrier(m: &ModelDef, visible: &Scope, krate: &str) -> TokenStream {
    let bundle = bundle_tokens(m, krate, visible, &mut Vec::new());
    let sp = m.name.span();
    let site = format!(
        "{krate}:{}:{}:{}:{}",
        sp.file(),
        sp.start().line,
        sp.start().column,
        m.name
    );
    let name = &m.name;
    let is_pub = matches!(m.vis, syn::Visibility::Public(_));
    let mac = if is_pub {
        format_ident!("__mithril_export_{}_{:016x}", name, fnv(&site))
    } else {
        format_ident!("__mithril_carrier_{}_{:016x}", name, fnv(&site))
    };
    let export = if is_pub {
        // a `pub model` inside a fn body is fine too (usable there only)
        quote!(#[macro_export] #[allow(non_local_definitions)])
    } else {
        quote!()
    };
    let reexport = if is_pub {
        quote!(#[allow(unused_imports)] #[doc(hidden)] pub use #mac as #name;)
    } else {
        quote!(#[allow(unused_imports)] #[doc(hidden)] pub(crate) use #mac as #name;)
    };
    // the bundle's `crate::..` paths are data, read by the macro at the defining crate's site
    quote! {
        #[doc(hidden)]
        #export
        #[allow(clippy::crate_in_macro_def)]
        macro_rules! #mac {
            (@mithril_fetch [] [$($cb:tt)*] [$($defs:tt)*] [$($key:tt)*] $($rest:tt)*) => {
                $($cb)*! { @mithril_resume [ $($defs)* { [$($key)*] #bundle } ] $($rest)* }
            };
            (@mithril_fetch [[$($next:tt)*] $($queue:tt)*] [$($cb:tt)*] [$($defs:tt)*] [$($key:tt)*] $($rest:tt)*) => {
                $($next)*! { @mithril_fetch [$($queue)*] [$($cb)*] [$($defs)* { [$($key)*] #bundle }] [$($next)*] $($rest)* }
            };
        }
        #reexport
    }
}

/// Fetch every model in `missing` through its carrier, then resume with `user` tokens.
pub fn fetch_chain(
    missing: &[syn::Path],
    carried_raw: &TokenStream,
    user: &TokenStream,
    carried: &Carried,
) -> TokenStream {
    // a model still missing although it was fetched: stop instead of looping
    for p in missing {
        // `Self`, `self`, `super`, `crate` name no model (and no macro can be fetched by them)
        let keyword = p.segments.last().is_some_and(|s| {
            matches!(
                s.ident.to_string().as_str(),
                "Self" | "self" | "super" | "crate"
            )
        }) || p.segments.first().is_some_and(|s| s.ident == "Self");
        if keyword {
            return syn::Error::new_spanned(p, format!("`{}` is not a model name", path_key(p)))
                .to_compile_error();
        }
        if carried.contains_key(&path_key(p)) {
            return syn::Error::new_spanned(
                p,
                format!(
                    "`{}` was fetched but is not a mithril model definition",
                    path_key(p)
                ),
            )
            .to_compile_error();
        }
    }
    let first = &missing[0];
    let sp = first
        .segments
        .last()
        .map(|s| s.ident.span())
        .unwrap_or(Span::call_site());
    let queue: Vec<TokenStream> = missing[1..].iter().map(|p| quote!([#p])).collect();
    quote_spanned! {sp=>
        #first! { @mithril_fetch [#(#queue)*] [::mithril::mithril] [#carried_raw] [#first] #user }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(src: &str) -> Vec<ModelDef> {
        let file = parse_file(src.parse().unwrap()).unwrap();
        file.items
            .into_iter()
            .filter_map(|i| match i {
                Item::Model(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    fn keys(paths: &[syn::Path]) -> Vec<String> {
        paths.iter().map(path_key).collect()
    }

    #[test]
    fn model_refs_finds_every_called_model_path() {
        let m = &models(
            "model M(k: int, Act: fn = relu) {
                input x: [N, D];
                let Local = x;
                let h = Block(x) + crate::m::Far(x).out + ::k::Lib(k = 2)(x);
                for i in 0..k { let h = super::Loop(h); }
                if k > 3 { let h = Branch(h); }
                let y = h.sum(axis = 1) + Act(h) + Local(h) + Linear(4)(h) + relu(h);
                output y = y.T;
            }",
        )[0];
        // hyperparameters and `let` names are no models; lower-case calls are functions
        let refs = keys(&model_refs(m));
        assert_eq!(
            refs,
            [
                "Block",
                "crate::m::Far",
                "k::Lib",
                "super::Loop",
                "Branch",
                "Linear"
            ]
        );
    }

    #[test]
    fn bundles_of_mutually_recursive_models_terminate() {
        let src = "model A { input x: [N, D]; output y = B2(x) + C(x); }
                   model B2 { input x: [N, D]; output y = A(x) + C(x); }
                   model C { input x: [N, D]; output y = A(x) * B2(x); }";
        let ms = models(src);
        let mut scope = Scope::default();
        for m in &ms {
            scope.defs.insert(
                m.name.to_string(),
                Rc::new(DefEntry {
                    def: m.clone(),
                    origin: Origin::Local,
                    scope: Rc::new(Scope::default()),
                }),
            );
        }
        for m in &ms {
            let ts = emit_carrier(m, &scope, "k");
            // each of the two others once, and the first's other dependency once inside it
            assert!(ts.to_string().len() < 4000, "{}", ts.to_string().len());
        }
    }

    /// The resumed expansion: the carrier's bundle parsed back, keyed by the user's path, with
    /// the definition's own dependency nested inside it.
    #[test]
    fn bundle_round_trip_through_resume() {
        let ms = models(
            "model Leaf { input x: [N, D]; param w: [D, 3]; output y = matmul(x, w); }
             model Mid { input x: [N, D]; output y = Leaf(x) * 2.0; }",
        );
        let mut scope = Scope::default();
        scope.defs.insert(
            "Leaf".into(),
            Rc::new(DefEntry {
                def: ms[0].clone(),
                origin: Origin::Local,
                scope: Rc::new(Scope::default()),
            }),
        );
        let bundle = bundle_tokens(&ms[1], "libx", &scope, &mut Vec::new());
        let user: TokenStream = "model Top { input x: f32[B, 4]; output y = m::Mid(x); }"
            .parse()
            .unwrap();
        let input = quote!(@mithril_resume [ { [m::Mid] #bundle } ] #user);
        let (carried, _, rest) = split_resume(input.clone()).unwrap();
        assert_eq!(rest.to_string(), user.to_string());
        let mid = &carried["m::Mid"];
        assert_eq!(mid.def.name, "Mid");
        assert!(matches!(&mid.origin, Origin::Carried { krate, .. } if krate == "libx"));
        assert_eq!(mid.scope.defs["Leaf"].def.name, "Leaf");
        // the whole compiler accepts it: no second fetch, no error
        let out = crate::expand(input).to_string();
        assert!(!out.contains("compile_error"), "{out}");
        assert!(!out.starts_with("m :: Mid !"), "{out}");
        assert!(out.contains("TopParams"), "{out}");
    }
}
