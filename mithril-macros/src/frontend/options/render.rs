//! The options that shape what a physical model's compilation emits and how its calls run on
//! the CPU: `visualize` / `viz_options` (an SVG of the optimized graph), `template_path` (the
//! generated source through a user's Jinja template), `cpu: { threads, simd, deterministic }`
//! and `donate: [x]`. Kept in one module so that [`super::Options`] carries them as one field.

use super::{as_bool, as_str, e, name_list, resolve_dir};
use crate::frontend::syntax::OptValue;
use proc_macro2::Span;

/// `viz_options: { format: svg, show_shapes, show_types, show_memory, output_path }`.
#[derive(Clone, Debug)]
pub struct VizOptions {
    /// Each node's shape (default true).
    pub show_shapes: bool,
    /// Each node's dtype (default true).
    pub show_types: bool,
    /// Each computed node's planned bytes (default true; a size over a run-time dim is written
    /// as its formula).
    pub show_memory: bool,
    /// Where the SVG is written (relative: from `CARGO_MANIFEST_DIR`); `None`: only the
    /// constant `M::GRAPH_SVG`.
    pub output_path: Option<String>,
}

impl Default for VizOptions {
    fn default() -> Self {
        VizOptions {
            show_shapes: true,
            show_types: true,
            show_memory: true,
            output_path: None,
        }
    }
}

/// `cpu: { simd: .. }`: the instruction set the model's CPU kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Simd {
    Avx512,
    Avx2,
    Scalar,
}

impl Simd {
    /// The option's spelling.
    pub fn name(self) -> &'static str {
        match self {
            Simd::Avx512 => "avx512",
            Simd::Avx2 => "avx2",
            Simd::Scalar => "scalar",
        }
    }
}

/// `cpu: { threads: N, simd: avx512 | avx2 | scalar, deterministic: bool }`.
#[derive(Clone, Debug, Default)]
pub struct CpuOptions {
    /// The most GEMM threads one call uses.
    pub threads: Option<usize>,
    /// The forced instruction set (an `Err` at run time on a CPU without it).
    pub simd: Option<Simd>,
    /// `deterministic: true`: the promise that results are bitwise the same for every thread
    /// count (what every CPU kernel already gives; recorded as `M::DETERMINISTIC`).
    pub deterministic: bool,
}

/// What this module's options set.
#[derive(Clone, Debug, Default)]
pub struct RenderOptions {
    /// `visualize: true` (with its `viz_options`).
    pub visualize: Option<VizOptions>,
    /// `viz_options` as written (checked against `visualize` in [`cross_check`]).
    viz: Option<(VizOptions, Span)>,
    /// `template_path: "..."` (resolved against `CARGO_MANIFEST_DIR`) and the literal's span.
    pub template: Option<(String, Span)>,
    /// `cpu: { .. }` and where it was written.
    pub cpu: CpuOptions,
    pub cpu_span: Option<Span>,
    /// `donate: [x, ..]`: inputs whose buffers `evaluate_donating` may reuse for an output.
    pub donate: Vec<(String, Span)>,
}

/// The option names of this module (for the "unknown option" list).
pub const NAMES: &[&str] = &["visualize", "viz_options", "template_path", "cpu", "donate"];

/// Reads option `key` (one of [`NAMES`]).
pub fn option(o: &mut RenderOptions, key: &str, v: &OptValue) -> Result<(), syn::Error> {
    match key {
        "visualize" => {
            if as_bool(v, "visualize")? {
                o.visualize.get_or_insert_with(VizOptions::default);
            }
        }
        "viz_options" => o.viz = Some((viz_options(v)?, v.span())),
        "template_path" => {
            let OptValue::Lit(syn::Lit::Str(s)) = v else {
                return Err(e(
                    v.span(),
                    "`template_path` takes a string literal: the path of a Jinja template (relative to the crate's `Cargo.toml`)",
                ));
            };
            if s.value().is_empty() {
                return Err(e(s.span(), "`template_path` is empty"));
            }
            o.template = Some((resolve_dir(&s.value()), s.span()));
        }
        "cpu" => {
            o.cpu = cpu(v)?;
            o.cpu_span = Some(v.span());
        }
        "donate" => {
            let names = name_list(v, "donate")?;
            if names.is_empty() {
                return Err(e(v.span(), "`donate` is empty; name the inputs whose buffers an output may reuse: `donate: [x]`"));
            }
            for (i, (n, sp)) in names.iter().enumerate() {
                if names[..i].iter().any(|(m, _)| m == n) {
                    return Err(e(*sp, format!("`{n}` is given twice in `donate`")));
                }
            }
            o.donate = names;
        }
        other => {
            return Err(e(
                v.span(),
                format!("internal: `{other}` is no render option"),
            ))
        }
    }
    Ok(())
}

fn viz_options(v: &OptValue) -> Result<VizOptions, syn::Error> {
    let usage = "`viz_options` takes `{ format: svg, show_shapes: bool, show_types: bool, show_memory: bool, output_path: \"...\" }`";
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), usage));
    };
    let mut out = VizOptions::default();
    for (k, val) in entries {
        match k.name.as_str() {
            "format" => match val {
                OptValue::Ident(i) if i == "svg" => {}
                other => {
                    return Err(e(
                        other.span(),
                        "`format` is `svg` (the only format drawn; `dump_graph` writes DOT, JSON and text)",
                    ))
                }
            },
            "show_shapes" => out.show_shapes = as_bool(val, "show_shapes")?,
            "show_types" => out.show_types = as_bool(val, "show_types")?,
            "show_memory" => out.show_memory = as_bool(val, "show_memory")?,
            "output_path" => {
                let p = as_str(val, "output_path")?;
                if p.is_empty() {
                    return Err(e(val.span(), "`output_path` is empty"));
                }
                out.output_path = Some(p);
            }
            other => {
                return Err(e(
                    k.span(),
                    format!("unknown `viz_options` setting `{other}`; {usage}"),
                ))
            }
        }
    }
    Ok(out)
}

fn cpu(v: &OptValue) -> Result<CpuOptions, syn::Error> {
    let usage = "`cpu` takes `{ threads: N, simd: avx512 | avx2 | scalar, deterministic: bool }`";
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), usage));
    };
    let mut out = CpuOptions::default();
    for (k, val) in entries {
        match k.name.as_str() {
            "threads" => match val {
                OptValue::Lit(syn::Lit::Int(i)) if i.base10_parse::<usize>().is_ok_and(|n| n >= 1) => {
                    out.threads = Some(i.base10_parse()?);
                }
                other => {
                    return Err(e(
                        other.span(),
                        "`threads` is the most threads one call's matrix products use: an integer >= 1",
                    ))
                }
            },
            "simd" => {
                out.simd = Some(match val {
                    OptValue::Ident(i) if i == "avx512" => Simd::Avx512,
                    OptValue::Ident(i) if i == "avx2" => Simd::Avx2,
                    OptValue::Ident(i) if i == "scalar" => Simd::Scalar,
                    other => {
                        return Err(e(
                            other.span(),
                            "`simd` is `avx512`, `avx2` or `scalar` (the instruction set of the model's kernels; a CPU without it makes a call an `Err`)",
                        ))
                    }
                })
            }
            "deterministic" => out.deterministic = as_bool(val, "deterministic")?,
            other => {
                return Err(e(
                    k.span(),
                    format!("unknown `cpu` setting `{other}`; {usage}"),
                ))
            }
        }
    }
    Ok(out)
}

/// Checks against the other options: `viz_options` needs `visualize: true`; `cpu` and `donate`
/// are for models whose `evaluate` runs on the CPU.
pub fn cross_check(
    o: &mut super::Options,
    find: &dyn Fn(&str) -> Option<Span>,
    errors: &mut Vec<syn::Error>,
) {
    if let Some((viz, sp)) = o.render.viz.take() {
        match &mut o.render.visualize {
            Some(v) => *v = viz,
            None => errors.push(e(
                sp,
                "`viz_options` configures `visualize`; add `visualize: true`",
            )),
        }
    }
    let cpu_model = !o.backend_cuda && !o.mixed();
    if !cpu_model {
        for name in ["cpu", "donate"] {
            // `backend: cuda` donates device inputs (`evaluate_device_donating`)
            if name == "donate" && o.backend_cuda && !o.mixed() {
                continue;
            }
            if let Some(sp) = find(name) {
                errors.push(e(sp, format!("`{name}` configures how a CPU model's calls run; this model's ops run on CUDA (`backend: cuda` or `backend_map`)")));
            }
        }
    }
    if let (Some(sp), super::OptimizeFor::Throughput, Some(_)) =
        (o.render.cpu_span, o.optimize_for, o.render.cpu.threads)
    {
        errors.push(e(sp, "`optimize_for: throughput` already runs each call on one thread; give `cpu: { threads: N }` or `optimize_for: throughput`, not both"));
    }
    if o.static_shapes && !o.render.donate.is_empty() {
        if let Some(sp) = find("donate") {
            errors.push(e(sp, "`donate` is for models whose `evaluate` runs a plan; `static_shapes: true` models take slices (leave one of them out)"));
        }
    }
}
