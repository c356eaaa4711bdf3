//! # mithril-macros
//!
//! The mithril compiler, run by rustc as a procedural macro. Use it through the `mithril`
//! facade crate (`mithril::mithril!`), which documents the DSL.
//!
//! Pipeline (one module per step; the IR in [`ir`] is the only thing they share):
//! [`syntax`] parse -> [`flatten`] flattening (with [`resolve`] terminal resolution) ->
//! [`dtypes`] dtype inference -> [`shapes`] shape inference -> [`passes`] optimization ->
//! [`backends`] code generation, plus [`report`] (summary, dumps) and [`carrier`] (composition
//! across invocations, modules and crates).

mod backends;
mod frontend;
#[cfg(test)]
mod fuzz;
mod infer;
mod ir;
mod passes;
mod prims;
#[cfg(test)]
mod proptests;
mod report;

// the pipeline's modules by their short names (lib.rs and the code generators use them so)
use flatten::{DefEntry, FlattenOpts, Flattener, Origin, Scope};
use frontend::{carrier, flatten, library, options, syntax};
use infer::{dtypes, shapes};
use passes::{autodiff, memplan, placement};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use report::files;
use report::verbose::{self, Log};
use std::rc::Rc;
use syntax::{Item, ModelKind};

/// Defines mithril models and physical models. See the `mithril` crate for the language.
#[proc_macro]
pub fn mithril(input: proc_macro::TokenStream) -> proc_macro::TokenStream {
    expand(input.into()).into()
}

fn expand(input: TokenStream) -> TokenStream {
    let (carried, carried_raw, rest) = match carrier::split_resume(input) {
        Ok(x) => x,
        Err(e) => return e.to_compile_error(),
    };
    let file: syntax::File = match carrier::parse_file(rest) {
        Ok(f) => f,
        Err(e) => return e.to_compile_error(),
    };
    let krate = std::env::var("CARGO_CRATE_NAME").unwrap_or_default();
    let library = library::Library::new();

    // the invocation's own definitions (visible to each other in any order) and carried ones
    let mut shared = Scope::default();
    for (key, entry) in carried.iter() {
        shared.defs.insert(key.clone(), entry.clone());
    }
    let empty = Rc::new(Scope::default());
    for item in &file.items {
        if let Item::Model(m) = item {
            shared.defs.insert(
                m.name.to_string(),
                Rc::new(DefEntry {
                    def: m.clone(),
                    origin: Origin::Local,
                    scope: empty.clone(),
                }),
            );
        }
    }
    let shared = Rc::new(shared);

    let mut acc = Expansion::default();
    for item in &file.items {
        match item {
            Item::Model(m) => expand_model(m, &shared, &library, &krate, &mut acc),
            Item::Compile(c) => expand_compile(c, &shared, &library, &mut acc),
        }
    }
    let Expansion {
        mut out,
        errors,
        mut missing,
    } = acc;

    if !missing.is_empty() {
        // fetch every unresolved model through its carrier, then re-enter once
        let mut seen = Vec::new();
        missing.retain(|p| {
            let k = quote!(#p).to_string();
            let fresh = !seen.contains(&k);
            seen.push(k);
            fresh
        });
        return carrier::fetch_chain(&missing, &carried_raw, &file.tokens, &carried);
    }
    // the same mistake met by several physical models (a model and the models using it) is
    // reported once
    let mut shown: Vec<(String, String)> = Vec::new();
    for e in errors {
        let key = (e.to_string(), format!("{:?}", e.span()));
        if shown.contains(&key) {
            continue;
        }
        shown.push(key);
        out.extend(e.to_compile_error());
    }
    out
}

/// What the items of one invocation expand to so far.
#[derive(Default)]
struct Expansion {
    out: TokenStream,
    errors: Vec<syn::Error>,
    /// Models referenced but not defined here (fetched through their carriers).
    missing: Vec<syn::Path>,
}

impl Expansion {
    /// One physical model's result: its code, or its errors and a stub with its API.
    fn take(
        &mut self,
        result: CompileResult,
        name: &syn::Ident,
        vis: &syn::Visibility,
        def: &syntax::ModelDef,
    ) {
        match result {
            Ok((ts, miss)) => {
                self.out.extend(ts);
                self.missing.extend(miss);
            }
            Err((es, miss, api)) => {
                self.errors.extend(es);
                self.missing.extend(miss);
                self.out.extend(stub(name, vis, def, api.as_ref()));
            }
        }
    }
}

/// A `model` item: its carrier, and its default physical model when every hyperparameter has
/// a default.
fn expand_model(
    m: &syntax::ModelDef,
    shared: &Rc<Scope>,
    library: &library::Library,
    krate: &str,
    acc: &mut Expansion,
) {
    acc.out.extend(carrier::emit_carrier(m, shared, krate));
    // every model the definition calls travels in its carrier's bundle, also those
    // flattening does not reach (required hyperparameters, branches not taken)
    for p in carrier::model_refs(m) {
        let k = carrier::path_key(&p);
        if !shared.defs.contains_key(&k) && !library.contains(&k) {
            acc.missing.push(p);
        }
    }
    if m.hypers.iter().any(|h| h.default.is_none()) {
        // a model with required hyperparameters has no default physical model
        return;
    }
    // nor has a model with an input declared `[N, C, ...]`: its rank comes from a caller
    let caller_rank = |s: &syntax::Stmt| match s {
        syntax::Stmt::Input { ty, .. } => ty.shape.as_ref().is_some_and(|d| {
            d.dims
                .iter()
                .skip(1)
                .any(|x| matches!(x, syntax::DimDecl::Ellipsis(_)))
        }),
        _ => false,
    };
    if m.body.iter().any(caller_rank) {
        return;
    }
    let entry = shared.defs.get(&m.name.to_string()).cloned();
    let Some(entry) = entry else { return };
    let logical = m.name.to_string();
    let result = compile_one(
        &entry,
        &m.name,
        &m.vis,
        &m.attrs,
        &options::Options::default(),
        library,
        shared,
        &logical,
        true,
        None,
    );
    acc.take(result, &m.name, &m.vis, m);
}

/// A `compile` item: the physical model of a local, carried or library model.
fn expand_compile(
    c: &syntax::CompileDef,
    shared: &Rc<Scope>,
    library: &library::Library,
    acc: &mut Expansion,
) {
    let key = c
        .model
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::");
    let entry = shared.defs.get(&key).cloned().or_else(|| library.get(&key));
    let Some(entry) = entry else {
        if c.model.segments.len() > 1 || !shared.defs.contains_key(&key) {
            acc.missing.push(c.model.clone());
        }
        return;
    };
    let opts = match options::parse(&c.options) {
        Ok(o) => o,
        Err(es) => {
            acc.errors.extend(es);
            acc.out.extend(stub(&c.name, &c.vis, &entry.def, None));
            return;
        }
    };
    if c.hyper_args.is_none() && !entry.def.hypers.iter().all(|h| h.default.is_some()) {
        acc.errors.push(syn::Error::new(
            c.model.segments.last().map(|s| s.ident.span()).unwrap_or(Span::call_site()),
            format!("`{key}` has hyperparameters without defaults; set them in the compile item: `compile {} = {key}(..) {{ .. }}`", c.name),
        ));
        acc.out.extend(stub(&c.name, &c.vis, &entry.def, None));
        return;
    }
    let result = compile_one(
        &entry,
        &c.name,
        &c.vis,
        &c.attrs,
        &opts,
        library,
        shared,
        &key,
        false,
        c.hyper_args.as_ref().map(|(a, sp)| (a.as_slice(), *sp)),
    );
    acc.take(result, &c.name, &c.vis, &entry.def);
}

type CompileResult =
    Result<(TokenStream, Vec<syn::Path>), (Vec<syn::Error>, Vec<syn::Path>, Option<StubApi>)>;

#[allow(clippy::too_many_arguments)] // one physical model's whole context
fn compile_one(
    entry: &Rc<DefEntry>,
    name: &syn::Ident,
    vis: &syn::Visibility,
    attrs: &[syn::Attribute],
    opts: &options::Options,
    library: &library::Library,
    locals: &Scope,
    logical: &str,
    implicit: bool,
    hyper_args: Option<(&[syn::Expr], Span)>,
) -> CompileResult {
    let fopts = FlattenOpts {
        default_dtype: opts.dtype,
        shapes: opts.shapes.clone(),
        types: opts.types.clone(),
        constants: opts.constants.clone(),
        dynamic_control_flow: opts.dynamic_control_flow,
    };
    // `verbose: true`: each step's time and what it did; `trace_shapes: true`: inference's trace
    // (`profile: true` keeps the same log for its compile-time step timings)
    let mut log =
        (opts.verbose || opts.inspect.profile).then(|| Log::new(&name.to_string(), logical));
    let mut trace = opts.trace_shapes.then(shapes::Trace::default);
    let mut fl = Flattener::new(&fopts, library, locals);
    fl.flatten_top(entry.clone(), hyper_args);
    let missing = std::mem::take(&mut fl.missing);
    if !missing.is_empty() {
        return Ok((TokenStream::new(), missing));
    }
    let mut errors = std::mem::take(&mut fl.errors);
    let losses = std::mem::take(&mut fl.losses);
    let mut g = fl.g;
    if let Some(l) = &mut log {
        l.step("flatten", "");
        l.detail("flatten", verbose::counts(&g));
    }
    if !opts.backend_map.is_empty() {
        errors.extend(check_backend_map(&g, opts));
        g.placement = ir::Placement {
            default_cuda: opts.backend_cuda,
            map: opts
                .backend_map
                .iter()
                .map(|b| (b.pattern.clone(), b.cuda))
                .collect(),
        };
    }
    let is_train = entry.def.kind == ModelKind::Train;
    // inference runs also after flattening errors: a failed statement builds no nodes (its
    // uses are poisoned), so what remains is consistent and its own mistakes are independent
    errors.extend(dtypes::infer(&mut g, opts.dtype));
    if let Some(l) = &mut log {
        l.step("dtypes", "");
    }
    errors.extend(shapes::infer_traced(&mut g, trace.as_mut()));
    if let Some(l) = &mut log {
        l.step("shapes", "");
    }
    if errors.is_empty() {
        errors.extend(check_losses(&g, &losses));
    }
    if !errors.is_empty() {
        let api = StubApi::of(&g);
        return Err((errors, vec![], Some(api)));
    }
    dtypes::finish(&mut g, opts.dtype);
    shapes::finish(&mut g);
    if let Some(l) = &mut log {
        l.step("finish", "");
    }
    // (rendered off the clock: `detail` restarts it)
    let shape_trace = trace
        .as_ref()
        .map(|t| verbose::shape_trace(t, &g, &name.to_string()));
    if let Some(l) = &mut log {
        l.detail("dtypes", dtype_counts(&g, opts.dtype));
        l.detail("shapes", sym_line(&g));
        l.detail(
            "finish",
            "open dtype variables -> the default float, open symbols -> run-time slots",
        );
    }
    let wrt = match roles(&mut g, opts) {
        Ok(w) => w,
        Err(es) => return Err((es, vec![], Some(StubApi::of(&g)))),
    };
    if let Some(l) = &mut log {
        l.step("roles", "");
        l.detail("roles", roles_line(&g, opts, &wrt));
    }
    // A model whose params depend on dims it leaves open (a generic building block such as
    // `param scale: [D]` with `input x: [N, D]`) has no default physical model: it is used as
    // a submodel, or compiled with `compile X = M { shapes: .. }`.
    if implicit
        && g.params.iter().any(|p| {
            g.rdims(p.node)
                .is_none_or(|d| d.iter().any(|x| !matches!(x, ir::RDim::Known(_))))
        })
    {
        return Ok((TokenStream::new(), vec![]));
    }
    if opts.static_shapes {
        let errors = check_static_inputs(&g, name);
        if !errors.is_empty() {
            return Err((errors, vec![], Some(StubApi::of(&g))));
        }
    }
    let warnings = unused_input_warnings(&g, name);
    if let Some(l) = &mut log {
        l.step("checks", "");
        l.detail(
            "checks",
            "unused inputs, `static_shapes` inputs, `max_memory_gb` (with the memory plan)",
        );
    }

    // the forward+backward graph, when the model has params
    let train = train_graph(&g, opts, is_train, &wrt, log.as_mut())
        .map_err(|errs| (errs, vec![], Some(StubApi::of(&g))))?;

    // `save_intermediates: true`: the graph of `evaluate_with_intermediates`
    let int_graph = opts
        .inspect
        .save_intermediates
        .then(|| intermediates_graph(&g, opts));
    // optimization passes
    let mut pass_log: Vec<(&str, usize)> = vec![("flattened ops", report::op_count(&g))];
    let ops_before = report::op_count(&g);
    passes::elide::run(&mut g);
    if let Some(l) = &mut log {
        l.step("elide", "");
        l.detail(
            "elide",
            format!(
                "forward graph: submodel boundaries removed; {ops_before} -> {} ops",
                report::op_count(&g)
            ),
        );
    }
    pass_log.extend(run_passes(&mut g, opts, log.as_mut(), ""));
    let model = name.to_string();
    let mut summary = report::summary(&g, &model, &pass_log);
    // memory: the plan line(s), and `max_memory_gb` against a static plan
    let before_mem = summary.len();
    if let Err(mem_errors) = memory_summary(&g, train.as_ref(), opts, name, &mut summary) {
        return Err((mem_errors, vec![], Some(StubApi::of(&g))));
    }
    let text = report::text(&g);
    let dot = report::dot(&g, &model);
    let json = report::json(&g, &model);
    // `visualize: true`: the optimized graph as SVG (`M::GRAPH_SVG`, and `output_path`)
    let graph_svg = opts
        .render
        .visualize
        .as_ref()
        .map(|v| report::svg::svg(&g, &model, v, opts.memory_planning));
    if let Some(l) = &mut log {
        l.step("memory + introspection", "");
        l.detail(
            "memory + introspection",
            format!(
                "{}SUMMARY, GRAPH_TEXT, GRAPH_DOT, GRAPH_JSON",
                summary.get(before_mem..).unwrap_or("")
            ),
        );
    }
    let inp = backends::common::CodegenInput {
        name,
        vis,
        docs: attrs,
        static_shapes: opts.static_shapes,
        summary,
        graph_text: text.clone(),
        graph_dot: dot.clone(),
        graph_json: json.clone(),
        logical: logical.to_string(),
        train_model: is_train,
        planning: opts.memory_planning,
        max_memory_gb: opts.max_memory_gb.map(|(x, _)| x),
        optimize_for: opts.optimize_for,
        cuda: opts.mixed().then_some(&opts.cuda),
        inspect: &opts.inspect,
        intermediates: int_graph.as_ref().map(|(g, names)| (g, names.as_slice())),
        mobile: opts.mobile.as_ref().map(|m| m.describe()),
        render: &opts.render,
        quantization_int8: opts.quantization_int8,
    };
    // a mixed model (`backend_map`) keeps the host API: the CPU generator, with the device
    // lowering of `backends::cuda` for the ops placed on cuda
    let cuda = (opts.backend_cuda && !opts.mixed()).then_some(&opts.cuda);
    let (code, cuda_source) = backends::generate(&g, train.as_ref(), &inp, cuda)
        .map_err(|e| (e, vec![], Some(StubApi::of(&g))))?;
    if let Some(l) = &mut log {
        l.step("codegen", "");
        l.detail(
            "codegen",
            codegen_line(opts, &code, cuda_source.as_deref(), train.is_some()),
        );
    }
    // `template_path`: the generated items through the user's template
    let code = match &opts.render.template {
        Some((path, span)) => {
            let cx = report::template::Context {
                g: &g,
                model: &model,
                logical,
                cuda: opts.backend_cuda,
                summary: &inp.summary,
            };
            report::template::apply(path, *span, &cx, &code)
                .map_err(|e| (vec![e], vec![], Some(StubApi::of(&g))))?
        }
        None => code,
    };
    let file_errors = write_files(
        opts,
        name,
        &code,
        cuda_source.as_deref(),
        [&text, &dot, &json],
    );
    if !file_errors.is_empty() {
        return Err((file_errors, vec![], Some(StubApi::of(&g))));
    }
    if let (Some(svg), Some(path)) = (
        &graph_svg,
        opts.render
            .visualize
            .as_ref()
            .and_then(|v| v.output_path.as_ref()),
    ) {
        if let Err(e) = files::write_if_changed(path, svg) {
            return Err((
                vec![syn::Error::new(
                    name.span(),
                    format!("viz_options: cannot write `{path}`: {e}"),
                )],
                vec![],
                Some(StubApi::of(&g)),
            ));
        }
    }
    if opts.dump_graph.is_some() || opts.file_path.is_some() {
        if let Some(l) = &mut log {
            l.step("files", "");
            l.detail("files", "`dump_graph` / `file_path` written (when changed)");
        }
    }
    let mut introspection = introspection_items(
        name,
        opts,
        log.as_ref(),
        shape_trace.as_deref(),
        train.is_some(),
    );
    if let Some(svg) = &graph_svg {
        let c = backends::pack::str_const(svg);
        introspection.extend(quote! {
            impl #name {
                /// The optimized graph as an SVG picture (`visualize: true`): every node with its
                /// op, shape, dtype and planned bytes, fused groups and `if` branches as boxes.
                pub const GRAPH_SVG: &'static str = #c;
            }
        });
    }
    Ok((quote!(#code #warnings #introspection), vec![]))
}

/// The items of `verbose: true` (`COMPILE_REPORT`; the report with durations printed to the
/// build's stderr) and `trace_shapes: true` (`SHAPE_TRACE`, `last_symbols`); nothing for a
/// model compiled without them.
fn introspection_items(
    name: &syn::Ident,
    opts: &options::Options,
    log: Option<&Log>,
    shape_trace: Option<&str>,
    has_grad: bool,
) -> TokenStream {
    let mut items = TokenStream::new();
    if let (Some(l), true) = (log, opts.inspect.profile) {
        let timings = l.render(true);
        items.extend(quote! {
            /// The compile-time step timings of this build (`profile: true`): the `verbose`
            /// report with durations (also in the profile's Chrome trace, `otherData.compile`).
            pub const COMPILE_TIMINGS: &'static str = #timings;
        });
    }
    if let (Some(l), true) = (log, opts.verbose) {
        let mut kept = l.render(false);
        let mut printed = l.render(true);
        if let Some(t) = shape_trace {
            kept.push_str(t);
            printed.push_str(t);
        }
        // the stable way to show text in `cargo build`: cargo prints what rustc (and so the
        // proc macro) writes to stderr, for the crates whose output it shows
        eprintln!("{}", printed.trim_end());
        items.extend(quote! {
            /// The compile report (`verbose: true`): each pipeline step and what it did, as
            /// printed at build time but without the durations (which differ per build).
            pub const COMPILE_REPORT: &'static str = #kept;
        });
    }
    if let Some(t) = shape_trace {
        items.extend(quote! {
            /// The shape-inference trace (`trace_shapes: true`): every op's input and output
            /// shapes as inferred, and for each symbol where it was bound and unified.
            pub const SHAPE_TRACE: &'static str = #t;
        });
        // the run-time part: CPU models whose `evaluate` runs a plan
        if !opts.backend_cuda && !opts.mixed() && !opts.static_shapes {
            items.extend(quote! {
                /// The symbolic dims bound by the last `evaluate` call (checked before it
                /// ran), in [`Self::SYMBOLS`] order; `None` before the first call.
                pub fn last_symbols(&self) -> ::std::option::Option<::std::vec::Vec<(&'static str, usize)>> {
                    ::mithril::rt::plan::last_symbols(&self.__ws, Self::SYMBOLS, Self::__mithril_terminals().ok()?)
                }
            });
            if has_grad {
                items.extend(quote! {
                    /// [`Self::last_symbols`] of the last `evaluate_gradients` call.
                    pub fn last_symbols_gradients(&self) -> ::std::option::Option<::std::vec::Vec<(&'static str, usize)>> {
                        ::mithril::rt::plan::last_symbols(&self.__ws_grad, Self::SYMBOLS, Self::__mithril_terminals().ok()?)
                    }
                });
            }
        }
    }
    if opts.render.cpu_span.is_some() {
        let cpu = &opts.render.cpu;
        let threads = match cpu.threads {
            Some(n) => quote!(::std::option::Option::Some(#n)),
            None => quote!(::std::option::Option::None),
        };
        let simd = match cpu.simd {
            Some(s) => {
                let s = s.name();
                quote!(::std::option::Option::Some(#s))
            }
            None => quote!(::std::option::Option::None),
        };
        let det = cpu.deterministic;
        items.extend(quote! {
            /// `cpu: { threads }` as compiled: the most threads a call's matrix products use.
            pub const CPU_THREADS: ::std::option::Option<usize> = #threads;
            /// `cpu: { simd }` as compiled: the instruction set every call forces.
            pub const SIMD: ::std::option::Option<&'static str> = #simd;
            /// `cpu: { deterministic }` as compiled: results bitwise the same for every thread
            /// count (what every CPU kernel of mithril gives; see the language reference).
            pub const DETERMINISTIC: bool = #det;
        });
    }
    if items.is_empty() {
        return items;
    }
    quote! {
        #[allow(dead_code)]
        impl #name {
            #items
        }
    }
}

/// The graph of `evaluate_with_intermediates` (`save_intermediates: true`): the forward graph
/// with every named computed value (a `let` or `output` of the model or of a submodel, named
/// by instance path) appended as an extra output `__int<k>` before the passes, so that fusion,
/// dead-code elimination and in-place reuse keep it; optimized by the same passes. Returns the
/// graph and the values' names (`fc1.h`; a name bound again, as in an unrolled loop, gets
/// `#2`, `#3`, ...), in output order after the model's own outputs. `evaluate` is compiled from
/// the unchanged graph, so it does not pay for this.
fn intermediates_graph(g: &ir::Graph, opts: &options::Options) -> (ir::Graph, Vec<String>) {
    let mut gi = g.clone();
    let mut names: Vec<String> = Vec::new();
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for (id, n) in g.nodes.iter().enumerate() {
        // (a value of a run-time `if`'s branch or of a loop's body exists only sometimes, or
        // once per iteration: its value after the `if` or loop is the one kept)
        let computed = matches!(
            n.op,
            ir::Op::Prim(_) | ir::Op::Fused(_) | ir::Op::FusedMatmul { .. }
        ) && n.guard.is_none()
            && n.region.is_none()
            && !matches!(n.op, ir::Op::Prim(prims::Prim::Carry));
        let Some(label) = n.label.as_ref().filter(|_| computed) else {
            continue;
        };
        let k = seen.entry(label.clone()).or_insert(0);
        *k += 1;
        let name = if *k == 1 {
            label.clone()
        } else {
            format!("{label}#{k}")
        };
        gi.outputs.push(ir::OutputInfo {
            name: format!("__int{}", names.len()),
            node: id,
        });
        names.push(name);
    }
    passes::elide::run(&mut gi);
    run_passes(&mut gi, opts, None, "");
    (gi, names)
}

/// `f32: 7 nodes, i64: 1 node` (the dtypes inferred).
fn dtype_counts(g: &ir::Graph, default: ir::DType) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for id in 0..g.nodes.len() {
        let t = g
            .dtype_of(id)
            .map(|t| t.name().to_string())
            .unwrap_or_else(|| "?".into());
        match counts.iter_mut().find(|c| c.0 == t) {
            Some(c) => c.1 += 1,
            None => counts.push((t, 1)),
        }
    }
    let list: Vec<String> = counts
        .iter()
        .map(|(t, n)| format!("{t}: {n} node{}", if *n == 1 { "" } else { "s" }))
        .collect();
    format!("{}; default float {}", list.join(", "), default.name())
}

/// The symbols after inference: those left to run time and those fixed.
fn sym_line(g: &ir::Graph) -> String {
    let fixed: Vec<String> = g
        .sym_vars
        .iter()
        .filter(|(n, _)| !g.syms.contains(n))
        .map(|(n, v)| format!("{n} = {}", g.fmt_dim(v)))
        .collect();
    format!(
        "run-time symbols: [{}]; fixed at compile time: [{}]",
        g.syms.join(", "),
        fixed.join(", ")
    )
}

/// What the key roles chose.
fn roles_line(g: &ir::Graph, opts: &options::Options, wrt: &[bool]) -> String {
    let names = |v: &[(String, Span)]| {
        v.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "trainable: {} of {} params; discard: [{}]; data: [{}]; inference: {}",
        wrt.iter().filter(|&&w| w).count(),
        g.params.len(),
        names(&opts.discard),
        names(&opts.data),
        opts.inference
    )
}

/// Which code generator ran, what it chose, and how much Rust it wrote.
fn codegen_line(
    opts: &options::Options,
    code: &TokenStream,
    cuda_source: Option<&str>,
    has_grad: bool,
) -> String {
    let text = code.to_string();
    let path = if opts.backend_cuda && !opts.mixed() {
        format!(
            "backend cuda: device-resident API, one NVRTC module ({} bytes of CUDA C)",
            cuda_source.map_or(0, str::len)
        )
    } else if opts.mixed() {
        format!(
            "mixed (`backend_map`): CPU host code, the cuda-placed ops through the CUDA backend ({} bytes of CUDA C)",
            cuda_source.map_or(0, str::len)
        )
    } else if opts.static_shapes {
        // the CPU generator said in the summary whether `evaluate` was specialized
        let said = [
            "static_shapes: evaluate specialized",
            "static_shapes: evaluate keeps",
        ]
        .iter()
        .find_map(|k| {
            let at = text.find(k)?;
            let rest = &text[at..];
            Some(rest[..rest.find("\\n").unwrap_or(rest.len())].replace("\\\"", "\""))
        });
        format!(
            "backend cpu, {}",
            said.unwrap_or_else(|| "static_shapes".into())
        )
    } else {
        "backend cpu: `evaluate` runs a plan (`mithril::rt::plan::run`)".to_string()
    };
    format!(
        "{path}\nevaluate_gradients: {}\ngenerated Rust: {} bytes",
        if has_grad { "yes" } else { "no" },
        text.len()
    )
}

/// Every `loss` must be a float scalar (after its reductions).
fn check_losses(g: &ir::Graph, losses: &[(ir::NodeId, Span)]) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    for (id, sp) in losses {
        match g.shape_of(*id) {
            Some(s) if s.rest.is_none() && s.dims.is_empty() => {}
            Some(_) => errors.push(syn::Error::new(
                *sp,
                format!(
                    "a loss must be a scalar after its reductions, but this is {}; reduce it, e.g. `.mean()`",
                    g.describe(*id)
                ),
            )),
            None => {}
        }
        if !g.dtype_of(*id).is_some_and(|t| t.is_float()) {
            errors.push(syn::Error::new(
                *sp,
                format!(
                    "a loss must be a float scalar, but this is {}",
                    g.describe(*id)
                ),
            ));
        }
    }
    errors
}

/// `static_shapes: true` needs every input dim fixed.
fn check_static_inputs(g: &ir::Graph, name: &syn::Ident) -> Vec<syn::Error> {
    let mut errors = Vec::new();
    for i in &g.inputs {
        if let Some(d) = g.rdims(i.node) {
            if d.iter().any(|x| !matches!(x, ir::RDim::Known(_))) {
                errors.push(syn::Error::new(
                    i.span,
                    format!(
                        "`{name}` has `static_shapes: true`, which needs every input dim fixed, but `{}` is {}; give it with `shapes: {{ {}: [...] }}`",
                        i.name,
                        g.describe(i.node),
                        i.name
                    ),
                ));
            }
        } else {
            errors.push(syn::Error::new(
                i.span,
                format!(
                    "`{name}` has `static_shapes: true`, which needs a fixed rank for `{}`",
                    i.name
                ),
            ));
        }
    }
    errors
}

/// A warning (a deprecated const, the stable way) for every input the model never uses.
fn unused_input_warnings(g: &ir::Graph, name: &syn::Ident) -> TokenStream {
    let uses = g.use_counts();
    let mut warnings = TokenStream::new();
    for i in &g.inputs {
        if uses[i.node] == 0 {
            let note = format!(
                "mithril: input `{}` of model `{}` is never used",
                i.name, name
            );
            // spanned on the input's name: the warning points at the declaration
            let ident = format_ident!(
                "__mithril_unused_{}_{}",
                name,
                i.name.trim_start_matches("r#"),
                span = i.span
            );
            let use_site = quote_spanned!(i.span=> #ident);
            warnings.extend(quote! {
                const _: () = {
                    #[deprecated(note = #note)]
                    #[allow(non_upper_case_globals)]
                    const #ident: () = ();
                    #use_site
                };
            });
        }
    }
    warnings
}

/// The forward+backward graph (autodiff, then the passes and checkpointing), when the model
/// has params and is not `inference: true`. A model whose gradient is not supported still
/// evaluates (`None`: no `evaluate_gradients`); a `train` model fails.
fn train_graph(
    g: &ir::Graph,
    opts: &options::Options,
    is_train: bool,
    wrt: &[bool],
    mut log: Option<&mut Log>,
) -> Result<Option<ir::Graph>, Vec<syn::Error>> {
    let mut train = if g.params.is_empty() || opts.inference {
        if let Some(l) = log.as_deref_mut() {
            l.step("autodiff", "");
            l.detail(
                "autodiff",
                if opts.inference {
                    "none: `inference: true`"
                } else {
                    "none: the model has no params"
                },
            );
        }
        None
    } else {
        let mut t = g.clone();
        passes::elide::run(&mut t);
        let errs = autodiff::run(&mut t, opts.dtype, is_train, wrt);
        if is_train && !errs.is_empty() {
            return Err(errs);
        }
        if let Some(l) = log.as_deref_mut() {
            l.step("autodiff", "");
            let what = if errs.is_empty() {
                format!(
                    "forward+backward graph: {}; {} ops before its passes",
                    verbose::counts(&t),
                    report::op_count(&t)
                )
            } else {
                "a primitive has no gradient rule: no `evaluate_gradients`".to_string()
            };
            l.detail("autodiff", what);
        }
        // a model whose gradient is not supported still evaluates; it gets no evaluate_gradients
        errs.is_empty().then_some(t)
    };
    if let Some(t) = &mut train {
        let _ = run_passes(t, opts, log.as_deref_mut(), "backward: ");
        if let Some(n) = opts.checkpoint_segments {
            passes::checkpoint::run(t, n);
            if let Some(l) = log {
                l.step("backward: checkpoint", "");
                l.detail(
                    "backward: checkpoint",
                    format!("{n} segments recomputed; {} ops", report::op_count(t)),
                );
            }
        }
    }
    Ok(train)
}

/// The memory plan line of each generated function into `summary`, and `max_memory_gb`
/// against a static plan.
fn memory_summary(
    g: &ir::Graph,
    train: Option<&ir::Graph>,
    opts: &options::Options,
    name: &syn::Ident,
    summary: &mut String,
) -> Result<(), Vec<syn::Error>> {
    let mut mem_errors = Vec::new();
    if let (Some(n), Some(t)) = (opts.checkpoint_segments, train) {
        if n >= 2 && (t.has_guards() || t.has_loops()) {
            summary.push_str(&format!(
                "gradient checkpointing ({n} segments): not applied, the model has a run-time {}; its activations are kept\n",
                if t.has_loops() { "loop" } else { "`if`" }
            ));
        }
    }
    for (what, graph) in [("evaluate", Some(g)), ("evaluate_gradients", train)] {
        let Some(graph) = graph else { continue };
        let plan = if graph.placement.is_mixed() {
            let placed = placement::Placed::new(graph, &[]);
            memplan::plan_placed(graph, opts.memory_planning, Some(&placed))
        } else {
            memplan::plan(graph, opts.memory_planning)
        };
        summary.push_str(&format!(
            "{what} {}\n",
            memplan::summary_line(&plan, opts.memory_planning)
        ));
        if let (Some((limit, span)), Some((peak, naive))) =
            (opts.max_memory_gb, plan.static_numbers())
        {
            let used = if opts.memory_planning { peak } else { naive };
            if used as f64 > limit * (1u64 << 30) as f64 {
                mem_errors.push(syn::Error::new(
                    span,
                    format!(
                        "`{name}`: `{what}` needs {} of intermediate memory ({}), above `max_memory_gb: {limit}`",
                        memplan::human(used),
                        if opts.memory_planning { "planned peak" } else { "no planning" }
                    ),
                ));
            }
        }
    }
    if mem_errors.is_empty() {
        Ok(())
    } else {
        Err(mem_errors)
    }
}

/// `dump_graph` and `file_path` (with a cuda model's CUDA C module next to the Rust); the
/// graph dumps are `[text, dot, json]`.
fn write_files(
    opts: &options::Options,
    name: &syn::Ident,
    code: &TokenStream,
    cuda_source: Option<&str>,
    [text, dot, json]: [&String; 3],
) -> Vec<syn::Error> {
    let mut file_errors = Vec::new();
    if let Some((path, fmt)) = &opts.dump_graph {
        let content = match fmt {
            options::DumpFormat::Dot => dot,
            options::DumpFormat::Json => json,
            options::DumpFormat::Text => text,
        };
        if let Err(e) = files::write_if_changed(path, content) {
            file_errors.push(syn::Error::new(
                name.span(),
                format!("dump_graph: cannot write `{path}`: {e}"),
            ));
        }
    }
    if let Some(path) = &opts.file_path {
        let src = files::pretty(code);
        if let Err(e) = files::write_if_changed(path, &src) {
            file_errors.push(syn::Error::new(
                name.span(),
                format!("file_path: cannot write `{path}`: {e}"),
            ));
        }
        // the CUDA C module next to it (cuda and mixed models)
        if let Some(cu) = cuda_source {
            let cu_path = files::cuda_path(path);
            if let Err(e) = files::write_if_changed(&cu_path, cu) {
                file_errors.push(syn::Error::new(
                    name.span(),
                    format!("file_path: cannot write `{cu_path}`: {e}"),
                ));
            }
        }
    }
    file_errors
}

/// `backend_map` keys against the submodel instances of the flattened model: a path names an
/// instance (as in the params' dotted names, `enc` or `enc.attn`); a glob matches at least one.
fn check_backend_map(g: &ir::Graph, opts: &options::Options) -> Vec<syn::Error> {
    let mut instances: Vec<String> = Vec::new();
    let mut add = |path: &str| {
        let mut cur = String::new();
        for part in path.split('.').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('.');
            }
            cur.push_str(part);
            if !instances.contains(&cur) {
                instances.push(cur.clone());
            }
        }
    };
    for n in &g.nodes {
        add(&n.scope);
    }
    for p in &g.params {
        // a param's own name is not an instance
        add(&p.path[..p.path.len().saturating_sub(1)].join("."));
    }
    instances.sort();
    let mut errors = Vec::new();
    for b in &opts.backend_map {
        let glob = b.pattern.contains(['*', '?']);
        let hit = instances
            .iter()
            .any(|i| *i == b.pattern || (glob && flatten::glob_match(&b.pattern, i)));
        if !hit {
            let list = if instances.is_empty() {
                "this model has no submodel instances".to_string()
            } else {
                format!("the instances are: {}", instances.join(", "))
            };
            let near = (!glob)
                .then(|| flatten::closest(&b.pattern, instances.iter().map(|s| s.as_str())))
                .flatten()
                .map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default();
            errors.push(syn::Error::new(
                b.span,
                format!(
                    "`backend_map`: no submodel instance `{}`{near}; {list}",
                    b.pattern
                ),
            ));
        }
    }
    errors
}

/// What a failed physical model's graph still tells about its API: the param tree and the
/// output fields with the types inference found (f32 / `IxDyn` where it did not).
struct StubApi {
    params: Vec<(Vec<String>, TokenStream)>,
    outputs: Vec<(String, TokenStream)>,
}

impl StubApi {
    fn of(g: &ir::Graph) -> StubApi {
        let ty = |id: ir::NodeId| {
            let t = prims::storage_type(g.dtype_of(id).unwrap_or(ir::DType::F32));
            let rank = g
                .shape_of(id)
                .and_then(|s| s.rest.is_none().then_some(s.dims.len()));
            let d = backends::common::ix(rank);
            quote!(::mithril::ndarray::Array<#t, #d>)
        };
        StubApi {
            params: g
                .params
                .iter()
                .map(|p| (p.path.clone(), ty(p.node)))
                .collect(),
            outputs: g
                .outputs
                .iter()
                .map(|o| (o.name.clone(), ty(o.node)))
                .collect(),
        }
    }
}

/// The param (or gradient) struct tree of a stub: `Name{kind}{Path}` structs as the real
/// API names them, each with `Clone`, `Debug` and `ParamTree` (empty: visits nothing).
fn stub_tree(
    name: &str,
    vis: &syn::Visibility,
    kind: &str,
    leaves: &[(Vec<String>, TokenStream)],
    out: &mut Vec<TokenStream>,
) -> syn::Ident {
    let sname = format_ident!("{}", name);
    let mut order: Vec<String> = Vec::new();
    for (path, _) in leaves {
        if !order.contains(&path[0]) {
            order.push(path[0].clone());
        }
    }
    let mut fields = Vec::new();
    let mut inits = Vec::new();
    for key in &order {
        let f = format_ident!("{}", key);
        if let Some((_, t)) = leaves.iter().find(|(p, _)| p.len() == 1 && p[0] == *key) {
            fields.push(quote!(pub #f: #t));
        } else {
            let sub: Vec<(Vec<String>, TokenStream)> = leaves
                .iter()
                .filter(|(p, _)| p.len() > 1 && p[0] == *key)
                .map(|(p, t)| (p[1..].to_vec(), t.clone()))
                .collect();
            let camel: String = key
                .split('_')
                .map(|w| {
                    let mut c = w.chars();
                    c.next()
                        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                        .unwrap_or_default()
                })
                .collect();
            let sn = stub_tree(&format!("{name}{camel}"), vis, kind, &sub, out);
            fields.push(quote!(pub #f: #sn));
        }
        inits.push(quote!(#f: ::std::default::Default::default()));
    }
    let _ = kind;
    out.push(quote! {
        #[doc(hidden)]
        #[allow(dead_code)]
        #[derive(Clone, Debug, Default)]
        #vis struct #sname { #(#fields,)* }
        impl ::mithril::rt::ParamTree for #sname {
            fn visit(&self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorView<'_>)) {
                let _ = f;
            }
            fn visit_mut(&mut self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorViewMut<'_>) -> ::mithril::rt::Result<()>) -> ::mithril::rt::Result<()> {
                let _ = f;
                Ok(())
            }
        }
    });
    sname
}

/// Placeholder items emitted when a physical model fails to compile, so that user code naming
/// them adds no cascade of errors after the real one ("no associated item named `SUMMARY`",
/// "no method named `evaluate_gradients`", ...). They carry the whole CPU API: the struct
/// (`Clone`, `Debug`, `Default`), every const (`SUMMARY`, `GRAPH_*`, `NUM_OPS`, `SYMBOLS`,
/// `OPTIMIZE_FOR`), `new`, `summary`, `memory_report(_gradients)`, `randomize_params`,
/// `evaluate` and `evaluate_gradients` (taking any inputs and seeds value); `MInputs` with one
/// field per declared input (of any type); `MOutputs`, `MParams` and `MGrads` with the fields
/// and types the failed graph still knows (`api`: params and outputs after inference), else the
/// declared outputs as `ArrayD<f32>` and the top-level `param`s.
fn stub(
    name: &syn::Ident,
    vis: &syn::Visibility,
    def: &syntax::ModelDef,
    api: Option<&StubApi>,
) -> TokenStream {
    let inputs_name = format_ident!("{}Inputs", name);
    let outputs_name = format_ident!("{}Outputs", name);
    let mut ins: Vec<String> = Vec::new();
    let mut outs: Vec<(String, TokenStream)> = Vec::new();
    let mut params: Vec<(Vec<String>, TokenStream)> = Vec::new();
    for s in &def.body {
        match s {
            syntax::Stmt::Input { name, .. } if !ins.contains(&name.to_string()) => {
                ins.push(name.to_string())
            }
            syntax::Stmt::Output { name, .. } if !outs.iter().any(|o| *name == o.0) => {
                outs.push((name.to_string(), quote!(::mithril::ndarray::ArrayD<f32>)))
            }
            syntax::Stmt::Param { name, .. } => params.push((
                vec![name.to_string()],
                quote!(::mithril::ndarray::ArrayD<f32>),
            )),
            _ => {}
        }
    }
    if let Some(api) = api {
        if !api.outputs.is_empty() {
            outs = api.outputs.clone();
        }
        if !api.params.is_empty() {
            params = api.params.clone();
        }
    }
    let in_fields: Vec<syn::Ident> = ins.iter().map(|n| format_ident!("{}", n)).collect();
    let in_tys: Vec<syn::Ident> = (0..ins.len()).map(|i| format_ident!("__I{}", i)).collect();
    let out_fields: Vec<syn::Ident> = outs.iter().map(|(n, _)| format_ident!("{}", n)).collect();
    let out_tys: Vec<&TokenStream> = outs.iter().map(|(_, t)| t).collect();
    let mut trees = Vec::new();
    let params_name = stub_tree(&format!("{name}Params"), vis, "Params", &params, &mut trees);
    let grads_name = stub_tree(&format!("{name}Grads"), vis, "Grads", &params, &mut trees);
    let model = name.to_string();
    let doc =
        format!("Placeholder: physical model `{model}` did not compile (see the error above).");
    let (seed_ty, seed_arg) = if def.kind == ModelKind::Train {
        (quote!(), quote!())
    } else {
        (quote!(, __S), quote!(, output_grads: __S))
    };
    quote! {
        #[doc = #doc]
        #[allow(dead_code)]
        #[derive(Clone, Debug, Default)]
        #vis struct #name { _private: () }
        #[doc = #doc]
        #[allow(dead_code)]
        #vis struct #inputs_name<#(#in_tys = ()),*> { #(pub #in_fields: #in_tys,)* }
        #[doc = #doc]
        #[allow(dead_code)]
        #[derive(Clone, Debug)]
        #vis struct #outputs_name { #(pub #out_fields: #out_tys,)* }
        #(#trees)*
        #[allow(dead_code, unused_variables)]
        impl #name {
            pub const SUMMARY: &'static str = "";
            pub const GRAPH_TEXT: &'static str = "";
            pub const GRAPH_DOT: &'static str = "";
            pub const GRAPH_JSON: &'static str = "";
            pub const NUM_OPS: usize = 0;
            pub const SYMBOLS: &'static [&'static str] = &[];
            pub const OPTIMIZE_FOR: &'static str = "";
            pub fn new() -> ::mithril::rt::Result<Self> {
                Ok(#name { _private: () })
            }
            pub fn summary(&self) -> &'static str {
                Self::SUMMARY
            }
            pub fn memory_report(&self) -> ::std::option::Option<::mithril::rt::MemoryReport> {
                None
            }
            pub fn memory_report_gradients(&self) -> ::std::option::Option<::mithril::rt::MemoryReport> {
                None
            }
            pub fn randomize_params(&self, seed: u64) -> #params_name {
                ::std::default::Default::default()
            }
            pub fn evaluate<__I>(&self, params: &#params_name, inputs: __I) -> ::mithril::rt::Result<#outputs_name> {
                Err(::mithril::rt::Error::op(#model, "this model did not compile"))
            }
            pub fn evaluate_gradients<__I #seed_ty>(&self, params: &#params_name, inputs: __I #seed_arg) -> ::mithril::rt::Result<(#outputs_name, #grads_name)> {
                Err(::mithril::rt::Error::op(#model, "this model did not compile"))
            }
        }
    }
}

/// The optimization passes, as the compile options switch them (the forward graph and the
/// forward+backward graph both go through these); returns each pass's change count.
/// With `verbose` (`steps`: the compile report), each pass is a step named `prefix` + its name,
/// with the ops before and after it and, for the fusion passes, the groups formed.
fn run_passes(
    g: &mut ir::Graph,
    opts: &options::Options,
    mut steps: Option<&mut Log>,
    prefix: &str,
) -> Vec<(&'static str, usize)> {
    let mut log = Vec::new();
    let mut ops = report::op_count(g);
    if let Some(l) = steps.as_deref_mut() {
        l.resume();
    }
    let mut note = |g: &ir::Graph, name: &'static str, changes: usize, steps: Option<&mut Log>| {
        if let Some(l) = steps {
            let step = format!("{prefix}{name}");
            l.step(&step, "");
            let after = report::op_count(g);
            let mut what = format!("{changes} changes; {ops} -> {after} ops");
            let groups = match name {
                "operator_fusion" => Some(verbose::groups(g, false, 8)),
                "epilogue_fusion" => Some(verbose::groups(g, true, 8)),
                _ => None,
            };
            if let Some((n, list)) = groups {
                let kind = if name == "operator_fusion" {
                    "fusion groups"
                } else {
                    "matmul epilogues"
                };
                what.push_str(&format!("; {n} {kind}"));
                if n > 0 {
                    what.push_str(&format!(":\n{list}"));
                }
            }
            l.detail(&step, what);
            ops = after;
        }
    };
    if opts.constant_folding {
        let c = passes::fold::run(g);
        note(g, "constant_folding", c, steps.as_deref_mut());
        log.push(("constant_folding", c));
    }
    if opts.common_subexpression {
        let c = passes::cse::run(g);
        note(g, "common_subexpression", c, steps.as_deref_mut());
        log.push(("common_subexpression", c));
    }
    if opts.dead_code_elimination {
        let c = passes::dce::run(g, &[]);
        note(g, "dead_code_elimination", c, steps.as_deref_mut());
        log.push(("dead_code_elimination", c));
    }
    // layer / RMS norms as one row-kernel node: the CPU plan (not cuda nor mixed models)
    if opts.norm_fusion && !opts.backend_cuda && !opts.mixed() {
        let c = passes::norm::run(g);
        note(g, "norm_fusion", c, steps.as_deref_mut());
        log.push(("norm_fusion", c));
    }
    // attention's head split / merge as strided reads and writes: the CPU plan
    if opts.head_fusion && !opts.backend_cuda && !opts.mixed() {
        let c = passes::heads::run(g);
        note(g, "head_fusion", c, steps.as_deref_mut());
        log.push(("head_fusion", c));
    }
    if opts.operator_fusion {
        let c = passes::fuse::run(g);
        if opts.dead_code_elimination {
            passes::dce::run(g, &[]);
        }
        note(g, "operator_fusion", c, steps.as_deref_mut());
        log.push(("operator_fusion", c));
        let mut c = passes::epilogue::run(g);
        // the convolution epilogues run in the CPU kernels (the plan and `static_shapes` code)
        if !opts.backend_cuda && !opts.mixed() {
            c += passes::conv_epilogue::run(g);
        }
        note(g, "epilogue_fusion", c, steps);
        log.push(("epilogue_fusion", c));
    }
    log
}

/// Mithril's key roles (`trainable`, `data`, `discard`): validates the names, drops discarded
/// outputs, and says which params get gradients.
fn roles(g: &mut ir::Graph, opts: &options::Options) -> Result<Vec<bool>, Vec<syn::Error>> {
    let mut errors = Vec::new();
    for (name, sp) in &opts.discard {
        if name == "loss" {
            errors.push(syn::Error::new(
                *sp,
                "a train model's `loss` cannot be discarded",
            ));
        } else if !g.outputs.iter().any(|o| &o.name == name) {
            let outs: Vec<&str> = g
                .outputs
                .iter()
                .filter(|o| ir::update_param(&o.name).is_none())
                .map(|o| o.name.as_str())
                .collect();
            errors.push(syn::Error::new(
                *sp,
                format!(
                    "`discard:` names `{name}`, which is no output; the outputs are: {}",
                    outs.join(", ")
                ),
            ));
        }
    }
    g.outputs
        .retain(|o| !opts.discard.iter().any(|(n, _)| n == &o.name));
    for (name, sp) in &opts.data {
        if !g.inputs.iter().any(|i| &i.name == name) {
            errors.push(syn::Error::new(
                *sp,
                format!("`data:` names `{name}`, which is no input"),
            ));
        }
    }
    let mut wrt = vec![opts.trainable.is_none(); g.params.len()];
    if let Some(list) = &opts.trainable {
        for (pat, sp) in list {
            if let Some(i) = g.inputs.iter().find(|i| &i.name == pat) {
                let what = match g.dtype_of(i.node) {
                    Some(t) if !t.is_float() => {
                        format!("`{pat}` is an integer input ({t}) and cannot be trainable")
                    }
                    _ => format!(
                        "`{pat}` is an input; only params are trainable (declare it with `param`)"
                    ),
                };
                errors.push(syn::Error::new(*sp, what));
                continue;
            }
            let mut hit = false;
            for (k, p) in g.params.iter().enumerate() {
                // buffers are never trainable
                if !p.buffer && flatten::glob_match(pat, &p.dotted()) {
                    wrt[k] = true;
                    hit = true;
                }
            }
            if !hit {
                let names: Vec<String> = g.params.iter().map(|p| p.dotted()).collect();
                errors.push(syn::Error::new(
                    *sp,
                    format!(
                        "`trainable:` `{pat}` matches no param; the params are: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    // buffers are state the model updates itself: never differentiated
    for (k, p) in g.params.iter().enumerate() {
        if p.buffer {
            wrt[k] = false;
        }
    }
    if errors.is_empty() {
        Ok(wrt)
    } else {
        Err(errors)
    }
}
