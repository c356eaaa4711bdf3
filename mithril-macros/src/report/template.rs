//! `template_path: "..."`: the generated Rust of a physical model rendered through the user's
//! Jinja template (minijinja), then parsed back with syn; the result replaces the generated
//! items. The template file becomes a build input: the result carries
//! `const _: &[u8] = include_bytes!("<its absolute path>");`, so rustc records it in the
//! crate's dep-info and cargo rebuilds when it changes.
//!
//! The context (documented in `docs/language.md`, "Templates"):
//!
//! | name | what |
//! |---|---|
//! | `model` | the physical model's name (`MlpB32`) |
//! | `logical` | the logical model it compiles (`Mlp`) |
//! | `backend` | `"cpu"` or `"cuda"` |
//! | `inputs`, `outputs`, `params` | lists of `{name, dtype, shape, type}` (`shape` like `[B, 784]`, `type` like `f32[B, 784]`; a param's `name` is its dotted path) |
//! | `ops` | every node of the optimized graph: `{id, name, op, inputs, dtype, shape, type}` (`inputs`: operand ids) |
//! | `summary` | the summary table (`M::SUMMARY`) |
//! | `items` | the default rendering, item by item: `{kind, name, code}` (`kind`: `struct`, `impl`, `type`, `const`, `fn`, `macro`, `use`, `other`; `name`: the struct's or the implemented type's name; `code`: the item's Rust) |
//! | `code` | the whole default rendering as one string |

use crate::ir::Graph;
use minijinja::Value;
use proc_macro2::{Span, TokenStream};
use quote::{quote, ToTokens};
use std::collections::BTreeMap;

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::from(
        pairs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<String, Value>>(),
    )
}

/// `(dtype, shape, type)` of node `id` (`f32`, `[B, 784]`, `f32[B, 784]`).
fn parts(g: &Graph, id: usize) -> (String, String, String) {
    let desc = g.describe(id);
    match desc.find('[') {
        Some(i) => (desc[..i].to_string(), desc[i..].to_string(), desc.clone()),
        None => (desc.clone(), String::new(), desc),
    }
}

fn terminal(g: &Graph, name: &str, id: usize) -> Value {
    let (dt, shape, ty) = parts(g, id);
    map(vec![
        ("name", Value::from(name)),
        ("dtype", Value::from(dt)),
        ("shape", Value::from(shape)),
        ("type", Value::from(ty)),
    ])
}

/// The kind and name of a generated item.
fn item_kind(it: &syn::Item) -> (&'static str, String) {
    let path_name = |t: &syn::Type| match t {
        syn::Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    match it {
        syn::Item::Struct(s) => ("struct", s.ident.to_string()),
        syn::Item::Impl(i) => ("impl", path_name(&i.self_ty)),
        syn::Item::Type(t) => ("type", t.ident.to_string()),
        syn::Item::Const(c) => ("const", c.ident.to_string()),
        syn::Item::Static(s) => ("static", s.ident.to_string()),
        syn::Item::Fn(f) => ("fn", f.sig.ident.to_string()),
        syn::Item::Macro(m) => (
            "macro",
            m.ident.as_ref().map(|i| i.to_string()).unwrap_or_default(),
        ),
        syn::Item::Use(_) => ("use", String::new()),
        syn::Item::Mod(m) => ("mod", m.ident.to_string()),
        _ => ("other", String::new()),
    }
}

/// What the template sees.
pub struct Context<'a> {
    pub g: &'a Graph,
    pub model: &'a str,
    pub logical: &'a str,
    pub cuda: bool,
    pub summary: &'a str,
}

/// Renders `code` (the generated items) through the template at `path` (absolute) and parses
/// the result; errors are spanned at `span` (the `template_path` literal), naming the line.
pub fn apply(
    path: &str,
    span: Span,
    cx: &Context<'_>,
    code: &TokenStream,
) -> Result<TokenStream, syn::Error> {
    let err = |msg: String| syn::Error::new(span, msg);
    let src = std::fs::read_to_string(path)
        .map_err(|e| err(format!("template_path: cannot read `{path}`: {e}")))?;
    let g = cx.g;
    let file: syn::File = syn::parse2(code.clone()).map_err(|e| {
        err(format!(
            "template_path: internal: the generated code does not parse: {e}"
        ))
    })?;
    let items: Vec<Value> = file
        .items
        .iter()
        .map(|it| {
            let (kind, name) = item_kind(it);
            map(vec![
                ("kind", Value::from(kind)),
                ("name", Value::from(name)),
                ("code", Value::from(it.to_token_stream().to_string())),
            ])
        })
        .collect();
    let ops: Vec<Value> = (0..g.nodes.len())
        .map(|id| {
            let (dt, shape, ty) = parts(g, id);
            let n = &g.nodes[id];
            map(vec![
                ("id", Value::from(id)),
                (
                    "name",
                    Value::from(n.label.clone().unwrap_or_else(|| format!("%{id}"))),
                ),
                ("op", Value::from(super::op_name(g, id))),
                (
                    "inputs",
                    Value::from(n.args.iter().map(|&a| Value::from(a)).collect::<Vec<_>>()),
                ),
                ("dtype", Value::from(dt)),
                ("shape", Value::from(shape)),
                ("type", Value::from(ty)),
            ])
        })
        .collect();
    let ctx = map(vec![
        ("model", Value::from(cx.model)),
        ("logical", Value::from(cx.logical)),
        ("backend", Value::from(if cx.cuda { "cuda" } else { "cpu" })),
        (
            "inputs",
            Value::from(
                g.inputs
                    .iter()
                    .map(|i| terminal(g, &i.name, i.node))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "outputs",
            Value::from(
                g.outputs
                    .iter()
                    .filter(|o| !o.name.starts_with("__"))
                    .map(|o| terminal(g, &o.name, o.node))
                    .collect::<Vec<_>>(),
            ),
        ),
        (
            "params",
            Value::from(
                g.params
                    .iter()
                    .map(|p| terminal(g, &p.dotted(), p.node))
                    .collect::<Vec<_>>(),
            ),
        ),
        ("ops", Value::from(ops)),
        ("summary", Value::from(cx.summary)),
        ("items", Value::from(items)),
        ("code", Value::from(code.to_string())),
    ]);
    let mut env = minijinja::Environment::new();
    // the output is Rust, not HTML: nothing is escaped
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    let out = env.render_str(&src, ctx).map_err(|e| {
        let at = e
            .line()
            .map(|l| format!(" at line {l}"))
            .unwrap_or_default();
        let detail = e.detail().map(|d| format!(": {d}")).unwrap_or_default();
        err(format!("template_path: `{path}`{at}: {}{detail}", e.kind()))
    })?;
    let parsed: syn::File = syn::parse_str(&out).map_err(|e| {
        // where: spans of re-lexed text carry no usable line, so find the first line after
        // the longest prefix of whole lines that still parses (only on error; quadratic in the
        // number of lines, which is small: one line per generated item)
        let lines: Vec<&str> = out.lines().collect();
        let mut ok = 0;
        for k in 1..=lines.len() {
            if syn::parse_str::<syn::File>(&lines[..k].join("\n")).is_ok() {
                ok = k;
            }
        }
        let at = match lines.get(ok) {
            Some(text) => format!(
                " in the item that starts at line {} of the rendered output (`{}`)",
                ok + 1,
                short(text.trim(), 60)
            ),
            None => String::new(),
        };
        err(format!(
            "template_path: `{path}` renders code that does not parse{at}: {e}"
        ))
    })?;
    Ok(quote! {
        #parsed
        // the template is a build input: editing it recompiles this crate
        const _: &[u8] = include_bytes!(#path);
    })
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    }
}
