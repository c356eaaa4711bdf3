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

use crate::flatten::{DefEntry, Origin, Scope};
use crate::syntax::{File, Item, ModelDef};
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
    let tokens = crate::syntax::tokens_between(start, content.cursor());
    let Item::Model(mut def) = item else {
        return Err(content.error("a carried bundle holds a model"));
    };
    def.tokens = tokens;
    input.parse::<crate::syntax::kw::deps>()?;
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
fn bundle_tokens(def: &ModelDef, krate: &str, visible: &Scope, depth: usize) -> TokenStream {
    let tokens = &def.tokens;
    let mut deps = TokenStream::new();
    if depth < 64 {
        let mut names = BTreeSet::new();
        idents(tokens, &mut names);
        for (key, entry) in &visible.defs {
            let last = key.rsplit("::").next().unwrap_or(key);
            if !names.contains(last) || entry.def.name == def.name && key == &def.name.to_string() {
                continue;
            }
            let key_ts: TokenStream = key.parse().unwrap_or_default();
            let (k2, scope2): (String, &Scope) = match &entry.origin {
                Origin::Carried { krate, .. } => (krate.clone(), &entry.scope),
                _ => (krate.to_string(), visible),
            };
            let inner = bundle_tokens(&entry.def, &k2, scope2, depth + 1);
            deps.extend(quote!({ [#key_ts] #inner }));
        }
    }
    let body = Group::new(Delimiter::Brace, tokens.clone());
    quote!(#body deps [#deps] crate #krate)
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
    let bundle = bundle_tokens(m, krate, visible, 0);
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
        format_ident!("__mithril_export_{}_{:016x}", name.to_string(), fnv(&site))
    } else {
        format_ident!("__mithril_carrier_{}_{:016x}", name.to_string(), fnv(&site))
    };
    let export = if is_pub {
        quote!(#[macro_export])
    } else {
        quote!()
    };
    let reexport = if is_pub {
        quote!(#[doc(hidden)] pub use #mac as #name;)
    } else {
        quote!(#[allow(unused_imports)] #[doc(hidden)] pub(crate) use #mac as #name;)
    };
    quote! {
        #[doc(hidden)]
        #export
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
