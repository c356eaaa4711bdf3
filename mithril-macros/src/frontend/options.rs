//! Compile options (`compile Name = Model { option: value, ... }`): parsed and validated here,
//! every unknown, mistyped or conflicting option a spanned error.

use crate::frontend::syntax::OptValue;
use crate::ir::DType;
use proc_macro2::Span;
use std::collections::BTreeMap;
use syn::Ident;

pub mod render;

/// Graph dump formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DumpFormat {
    Dot,
    Json,
    Text,
}

/// `cuda: { device, arch, tf32, amp }` and the CUDA-only options.
#[derive(Clone, Debug, Default)]
pub struct CudaOptions {
    /// The device ordinal `new()` opens (`device: N`, default 0).
    pub device: usize,
    /// The architecture kernels are compiled for (`arch: "sm_90"`, or from `target_hardware`);
    /// `None`: the device's own.
    pub arch: Option<String>,
    /// f32 matrix products on TF32 tensor cores (`tf32: true`); strict f32 otherwise.
    pub tf32: bool,
    /// Automatic mixed precision (`amp: true`): f32 matrix products computed in bf16 on tensor
    /// cores (f32 accumulation, f32 results); everything else stays f32.
    pub amp: bool,
    /// The on-disk kernel cache (`cache: false` keeps compiled kernels in memory only).
    pub cache: bool,
    /// `cache_dir: "..."`, resolved against the invoking crate's `CARGO_MANIFEST_DIR`; `None`:
    /// the per-user default.
    pub cache_dir: Option<String>,
}

/// `mobile: { platform, arch, quantization, optimize_size }` (with `target_hardware: "mobile"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MobileOptions {
    /// `platform: android` (`aarch64-linux-android`, the default) or `linux`
    /// (`aarch64-unknown-linux-gnu`).
    pub android: bool,
    /// `optimize_size: true`: only the plan form of the model (no per-op Rust: `static_shapes`
    /// is rejected).
    pub optimize_size: bool,
    /// `quantization: int8`: the model's `quantization: int8` API (the same as the top-level
    /// option), whose int8 GEMM runs `sdot` on aarch64 CPUs with the dot-product extension.
    pub int8: bool,
}

impl Default for MobileOptions {
    fn default() -> Self {
        MobileOptions {
            android: true,
            optimize_size: false,
            int8: false,
        }
    }
}

impl MobileOptions {
    /// What the generated `M::MOBILE` says: platform, ABI and Rust target, settings.
    pub fn describe(&self) -> String {
        let (platform, triple) = if self.android {
            ("android", "aarch64-linux-android")
        } else {
            ("linux", "aarch64-unknown-linux-gnu")
        };
        format!(
            "{platform} arm64-v8a ({triple}), quantization {}, optimize_size {}",
            if self.int8 { "int8" } else { "none" },
            self.optimize_size
        )
    }
}

/// Every supported `mobile` combination, for the errors.
const MOBILE_SUPPORTED: &str = "the supported combinations are `platform: android | linux`, `arch: \"arm64-v8a\"`, `quantization: none | int8`, `optimize_size: true | false`, on `backend: cpu`";

/// `optimize_for: latency | throughput`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptimizeFor {
    /// One call at a time as fast as possible: a call's GEMMs may use every core (the default).
    #[default]
    Latency,
    /// Many concurrent calls: each call's GEMMs run on the calling thread only, so calls on N
    /// threads scale over N cores without contending for the GEMM thread pool.
    Throughput,
}

impl OptimizeFor {
    pub fn name(self) -> &'static str {
        match self {
            OptimizeFor::Latency => "latency",
            OptimizeFor::Throughput => "throughput",
        }
    }
}

/// One entry of `backend_map: { "enc": cuda, ... }`.
#[derive(Clone, Debug)]
pub struct BackendEntry {
    /// The instance path (`enc`, `enc.attn`, `linear_0`) or a glob (`enc.*`) as written.
    pub pattern: String,
    /// `cuda` (true) or `cpu`.
    pub cuda: bool,
    /// The key's tokens (for the "no such instance" error).
    pub span: Span,
}

/// The options of one physical model.
#[derive(Clone, Debug)]
pub struct Options {
    pub backend_cuda: bool,
    /// The CUDA settings (used when `backend_cuda`).
    pub cuda: CudaOptions,
    /// `target_hardware: "..."` as written (validated; see [`TARGETS`]).
    pub target_hardware: Option<String>,
    /// `optimize_for: latency | throughput`.
    pub optimize_for: OptimizeFor,
    /// `target_hardware: "mobile"` and its `mobile: { ... }` settings.
    pub mobile: Option<MobileOptions>,
    /// `backend_map`: submodel instances placed on another backend than `backend`.
    pub backend_map: Vec<BackendEntry>,
    pub shapes: BTreeMap<String, (Vec<Option<u64>>, Span)>,
    pub static_shapes: bool,
    pub types: BTreeMap<String, (DType, Span)>,
    pub dtype: DType,
    pub constant_folding: bool,
    pub operator_fusion: bool,
    pub dead_code_elimination: bool,
    pub common_subexpression: bool,
    /// `optimizations: { norm_fusion }`: layer norm / RMS norm graphs as one row-kernel node
    /// (`passes::norm`, CPU plan only).
    pub norm_fusion: bool,
    /// `optimizations: { head_fusion }`: `attention`'s head split / merge copies as strided
    /// reads and writes of its kernel (`passes::heads`, CPU plan only).
    pub head_fusion: bool,
    pub dump_graph: Option<(String, DumpFormat)>,
    pub file_path: Option<String>,
    /// Mithril's key roles: params that get gradients (dotted names or globs; all when absent).
    pub trainable: Option<Vec<(String, Span)>>,
    /// Inputs baked in as constants (scalar inputs only), folded into the graph.
    pub constants: BTreeMap<String, (crate::ir::Scalar, Span)>,
    /// Inputs that are plain data (never differentiated); validated names.
    pub data: Vec<(String, Span)>,
    /// Outputs dropped (their work is removed).
    pub discard: Vec<(String, Span)>,
    /// No gradient code at all.
    pub inference: bool,
    /// `dynamic_control_flow: false` makes a run-time `if` a compile error (default `true`).
    pub dynamic_control_flow: bool,
    /// `memory_planning: greedy` (default) or `none`.
    pub memory_planning: bool,
    /// `max_memory_gb: x` and where it was written.
    pub max_memory_gb: Option<(f64, Span)>,
    /// `gradient_checkpointing: { segments: N }`.
    pub checkpoint_segments: Option<usize>,
    /// `verbose: true`: a report of each pipeline step (printed at build time and kept as
    /// `M::COMPILE_REPORT`).
    pub verbose: bool,
    /// `trace_shapes: true`: the shape-inference trace (`M::SHAPE_TRACE`) and the symbols bound
    /// by the last call (`last_symbols`).
    pub trace_shapes: bool,
    /// `save_intermediates`, `intermediate_dir`, `profile`, `profile_output`,
    /// `code_transformers`: run-time instrumentation (see [`Inspect`]).
    pub inspect: Inspect,
    /// `visualize`, `viz_options`, `template_path`, `cpu`, `donate` (see [`render`]).
    pub render: render::RenderOptions,
    /// `quantization: int8`: the int8 inference API (`quantize`, `calibrate`,
    /// `evaluate_quantized`, `load_quantized`) next to the f32 one.
    pub quantization_int8: bool,
}

/// Run-time instrumentation options (CPU plan models only).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Inspect {
    /// `save_intermediates: true`: `evaluate_with_intermediates`.
    pub save_intermediates: bool,
    /// `intermediate_dir: "path"` (resolved against the crate's manifest dir).
    pub intermediate_dir: Option<String>,
    /// `profile: true`: the per-op profile and the compile-time step timings.
    pub profile: bool,
    /// `profile_output: "path.json"` (resolved like `intermediate_dir`).
    pub profile_output: Option<String>,
    /// `code_transformers: [timing]`
    pub timing: bool,
    /// `code_transformers: [trace]`
    pub trace: bool,
    /// `code_transformers: [nan_check]`
    pub nan_check: bool,
    /// `code_transformers: [hook]`: `evaluate_with_hook`.
    pub hook: bool,
}

impl Inspect {
    /// Some option needs the model's instrumentation state (`rt::inspect::State`).
    pub fn stateful(&self) -> bool {
        self.profile || self.timing || self.trace || self.nan_check || self.hook
    }
}

impl Options {
    /// Some `backend_map` entry places ops on another backend than `backend`: a mixed model.
    pub fn mixed(&self) -> bool {
        self.backend_map.iter().any(|b| b.cuda != self.backend_cuda)
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            backend_cuda: false,
            cuda: CudaOptions {
                cache: true,
                ..CudaOptions::default()
            },
            target_hardware: None,
            optimize_for: OptimizeFor::Latency,
            mobile: None,
            backend_map: Vec::new(),
            shapes: BTreeMap::new(),
            static_shapes: false,
            types: BTreeMap::new(),
            dtype: DType::F32,
            constant_folding: true,
            operator_fusion: true,
            dead_code_elimination: true,
            common_subexpression: true,
            norm_fusion: true,
            head_fusion: true,
            dump_graph: None,
            file_path: None,
            trainable: None,
            constants: BTreeMap::new(),
            data: Vec::new(),
            discard: Vec::new(),
            inference: false,
            dynamic_control_flow: true,
            memory_planning: true,
            max_memory_gb: None,
            checkpoint_segments: None,
            verbose: false,
            trace_shapes: false,
            inspect: Inspect::default(),
            render: render::RenderOptions::default(),
            quantization_int8: false,
        }
    }
}

/// Every option name (for the "unknown option" message).
pub const NAMES: &[&str] = &[
    "backend",
    "shapes",
    "static_shapes",
    "types",
    "dtype",
    "optimizations",
    "dump_graph",
    "file_path",
    "trainable",
    "constants",
    "data",
    "discard",
    "inference",
    "dynamic_control_flow",
    "memory_planning",
    "max_memory_gb",
    "gradient_checkpointing",
    "checkpoint_segments",
    "cuda",
    "cache",
    "cache_dir",
    "target_hardware",
    "optimize_for",
    "mobile",
    "backend_map",
    "verbose",
    "trace_shapes",
    "save_intermediates",
    "intermediate_dir",
    "profile",
    "profile_output",
    "code_transformers",
    "visualize",
    "viz_options",
    "template_path",
    "cpu",
    "donate",
    "quantization",
];

/// What a `target_hardware` name selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// An NVIDIA GPU: `backend: cuda` with kernels compiled for this `sm_XX`.
    Cuda(&'static str),
    /// A CPU: `backend: cpu`. Validation only — the CPU kernels choose their instruction set at
    /// run time (AVX-512 / AVX2 / scalar), so the name changes no generated code.
    Cpu,
    /// `"mobile"`: an arm64-v8a (aarch64) phone or board, `backend: cpu`, settings in
    /// `mobile: { ... }`.
    Mobile,
}

/// Every supported `target_hardware` name.
pub const TARGETS: &[(&str, Target)] = &[
    ("nvidia_h100", Target::Cuda("sm_90")),
    ("nvidia_h200", Target::Cuda("sm_90")),
    ("nvidia_gh200", Target::Cuda("sm_90")),
    ("nvidia_a100", Target::Cuda("sm_80")),
    ("nvidia_a10", Target::Cuda("sm_86")),
    ("nvidia_a10g", Target::Cuda("sm_86")),
    ("nvidia_rtx3090", Target::Cuda("sm_86")),
    ("nvidia_l4", Target::Cuda("sm_89")),
    ("nvidia_l40s", Target::Cuda("sm_89")),
    ("nvidia_rtx4090", Target::Cuda("sm_89")),
    ("nvidia_t4", Target::Cuda("sm_75")),
    ("nvidia_b200", Target::Cuda("sm_100")),
    ("nvidia_gb200", Target::Cuda("sm_100")),
    ("nvidia_rtx5090", Target::Cuda("sm_120")),
    ("x86_64", Target::Cpu),
    ("x86_64_v2", Target::Cpu),
    ("x86_64_v3", Target::Cpu),
    ("x86_64_v4", Target::Cpu),
    ("zen4", Target::Cpu),
    ("zen5", Target::Cpu),
    ("sapphire_rapids", Target::Cpu),
    ("mobile", Target::Mobile),
];

/// The architectures NVRTC 13 compiles for (`sm_75` and newer).
pub const ARCHS: &[&str] = &[
    "sm_75", "sm_80", "sm_86", "sm_87", "sm_88", "sm_89", "sm_90", "sm_90a", "sm_100", "sm_100a",
    "sm_103", "sm_110", "sm_120", "sm_121",
];

fn target_list() -> String {
    TARGETS
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn name_list(v: &OptValue, what: &str) -> Result<Vec<(String, Span)>, syn::Error> {
    let OptValue::List(items, _) = v else {
        return Err(e(
            v.span(),
            format!("`{what}` takes a list of names: `[a, b]` or `[\"fc1.*\"]`"),
        ));
    };
    items
        .iter()
        .map(|it| match it {
            OptValue::Ident(i) => Ok((i.to_string(), i.span())),
            OptValue::Lit(syn::Lit::Str(s)) => Ok((s.value(), s.span())),
            other => Err(e(
                other.span(),
                format!("`{what}` takes names or quoted dotted names/globs"),
            )),
        })
        .collect()
}

fn e(span: Span, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new(span, msg.to_string())
}

fn as_bool(v: &OptValue, what: &str) -> Result<bool, syn::Error> {
    match v {
        OptValue::Lit(syn::Lit::Bool(b)) => Ok(b.value),
        other => Err(e(other.span(), format!("`{what}` takes `true` or `false`"))),
    }
}

fn as_str(v: &OptValue, what: &str) -> Result<String, syn::Error> {
    match v {
        OptValue::Lit(syn::Lit::Str(s)) => Ok(s.value()),
        other => Err(e(other.span(), format!("`{what}` takes a string literal"))),
    }
}

fn as_dtype(v: &OptValue, what: &str) -> Result<DType, syn::Error> {
    match v {
        OptValue::Ident(i) => DType::parse(&i.to_string()).ok_or_else(|| {
            e(i.span(), format!("`{what}`: unknown dtype `{i}`; expected one of f32, f64, f16, bf16, i32, i64, bool"))
        }),
        other => Err(e(other.span(), format!("`{what}` takes a dtype such as `f32`"))),
    }
}

/// Parse compile options; all independent errors are returned together.
pub fn parse(items: &[(Ident, OptValue)]) -> Result<Options, Vec<syn::Error>> {
    let mut o = Options::default();
    let mut errors = Vec::new();
    let mut seen: BTreeMap<String, Span> = BTreeMap::new();
    for (k, v) in items {
        let key = k.to_string();
        if seen.insert(key.clone(), k.span()).is_some() {
            errors.push(e(k.span(), format!("option `{key}` is given twice")));
            continue;
        }
        if let Err(err) = option(&mut o, k, &key, v) {
            errors.push(err);
        }
    }
    if errors.is_empty() {
        cross_check(items, &mut o, &mut errors);
    }
    if errors.is_empty() {
        inspect_check(items, &o, &mut errors);
    }
    if errors.is_empty() {
        Ok(o)
    } else {
        Err(errors)
    }
}

/// Reads one option `key` (spelled `k`) into `o`.
fn option(o: &mut Options, k: &Ident, key: &str, v: &OptValue) -> Result<(), syn::Error> {
    match key {
        "backend" => match v {
            OptValue::Ident(i) if i == "cpu" => o.backend_cuda = false,
            OptValue::Ident(i) if i == "cuda" => o.backend_cuda = true,
            other => return Err(e(other.span(), "`backend` is `cpu` or `cuda`")),
        },
        "optimize_for" => match v {
            OptValue::Ident(i) if i == "latency" => o.optimize_for = OptimizeFor::Latency,
            OptValue::Ident(i) if i == "throughput" => o.optimize_for = OptimizeFor::Throughput,
            other => return Err(e(other.span(), "`optimize_for` is `latency` (one call uses every core for its matrix products, the default) or `throughput` (each call runs on its calling thread; for many concurrent calls)")),
        },
        "backend_map" => opt_backend_map(o, v)?,
        "quantization" => match v {
            OptValue::Ident(i) if i == "int8" => o.quantization_int8 = true,
            OptValue::Ident(i) if i == "none" => o.quantization_int8 = false,
            other => return Err(e(other.span(), "`quantization` is `int8` (post-training int8 weights per output channel and int8 activations for the matrix products with a param weight: `quantize`, `calibrate`, `evaluate_quantized`) or `none` (the default)")),
        },
        "static_shapes" => o.static_shapes = as_bool(v, "static_shapes")?,
        "cache" => o.cuda.cache = as_bool(v, "cache")?,
        "cache_dir" => {
            let d = as_str(v, "cache_dir")?;
            if d.is_empty() {
                return Err(e(v.span(), "`cache_dir` is a directory path; it is empty"));
            }
            o.cuda.cache_dir = Some(resolve_dir(&d));
        }
        "target_hardware" => opt_target_hardware(o, v)?,
        "mobile" => opt_mobile(o, v)?,
        "cuda" => opt_cuda(o, v)?,
        "dtype" => {
            let t = as_dtype(v, "dtype")?;
            if !t.is_float() {
                return Err(e(
                    v.span(),
                    format!(
                        "`dtype` sets the default float type; `{t}` is not a float type"
                    ),
                ));
            }
            o.dtype = t;
        }
        "file_path" => o.file_path = Some(as_str(v, "file_path")?),
        "trainable" => o.trainable = Some(name_list(v, "trainable")?),
        "data" => o.data = name_list(v, "data")?,
        "discard" => o.discard = name_list(v, "discard")?,
        "inference" => o.inference = as_bool(v, "inference")?,
        "verbose" => o.verbose = as_bool(v, "verbose")?,
        "trace_shapes" => o.trace_shapes = as_bool(v, "trace_shapes")?,
        "save_intermediates" | "intermediate_dir" | "profile" | "profile_output"
        | "code_transformers" => opt_inspect(&mut o.inspect, key, v)?,
        k if render::NAMES.contains(&k) => render::option(&mut o.render, k, v)?,
        "dynamic_control_flow" => o.dynamic_control_flow = as_bool(v, "dynamic_control_flow")?,
        "memory_planning" => match v {
            OptValue::Ident(i) if i == "greedy" => o.memory_planning = true,
            OptValue::Ident(i) if i == "none" => o.memory_planning = false,
            other => {
                return Err(e(
                    other.span(),
                    "`memory_planning` is `greedy` (one planned arena, the default) or `none` (every buffer allocated per call)",
                ))
            }
        },
        "gradient_checkpointing" => opt_gradient_checkpointing(o, v)?,
        "checkpoint_segments" => match v {
            OptValue::Lit(syn::Lit::Int(i)) if i.base10_parse::<usize>().is_ok_and(|n| n >= 2) => {
                o.checkpoint_segments = Some(i.base10_parse()?);
            }
            other => return Err(e(other.span(), "`checkpoint_segments` takes an integer N >= 2 (and turns checkpointing on)")),
        },
        "max_memory_gb" => opt_max_memory_gb(o, v)?,
        "constants" => opt_constants(o, v)?,
        "shapes" => opt_shapes(o, v)?,
        "types" => opt_types(o, v)?,
        "optimizations" => opt_optimizations(o, v)?,
        "dump_graph" => opt_dump_graph(o, v)?,
        other => return Err(unknown_option(k, other)),
    }
    Ok(())
}

/// Reads the `backend_map` option: instance paths (globs allowed) and their backend.
fn opt_backend_map(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let usage = "`backend_map` takes `{ \"instance.path\": cuda | cpu, ... }`: submodel instances (as in the params' dotted names, globs allowed) and the backend their ops run on";
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), usage));
    };
    if entries.is_empty() {
        return Err(e(v.span(), format!("`backend_map` is empty; {usage}")));
    }
    for (k, val) in entries {
        let cuda = match val {
            OptValue::Ident(i) if i == "cuda" => true,
            OptValue::Ident(i) if i == "cpu" => false,
            OptValue::Ident(i) => {
                return Err(e(
                    i.span(),
                    format!(
                        "unknown backend `{i}` in `backend_map`; the backends are `cpu` and `cuda`"
                    ),
                ))
            }
            other => {
                return Err(e(
                    other.span(),
                    format!("a `backend_map` value is a backend: `cpu` or `cuda`; {usage}"),
                ))
            }
        };
        if k.name.is_empty() {
            return Err(e(
                k.span(),
                "an empty instance path in `backend_map`; the whole model's backend is `backend:`",
            ));
        }
        if o.backend_map.iter().any(|x| x.pattern == k.name) {
            return Err(e(
                k.span(),
                format!("`{}` is given twice in `backend_map`", k.name),
            ));
        }
        o.backend_map.push(BackendEntry {
            pattern: k.name.clone(),
            cuda,
            span: k.span(),
        });
    }
    Ok(())
}

/// Reads the `target_hardware` option.
fn opt_target_hardware(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let OptValue::Lit(syn::Lit::Str(s)) = v else {
        return Err(e(
            v.span(),
            format!(
                "`target_hardware` takes a string such as \"nvidia_h100\"; supported: {}",
                target_list()
            ),
        ));
    };
    let name = s.value();
    if !TARGETS.iter().any(|(n, _)| *n == name) {
        return Err(e(
            s.span(),
            format!(
                "unsupported `target_hardware` \"{name}\"; supported targets: {}",
                target_list()
            ),
        ));
    }
    o.target_hardware = Some(name);
    Ok(())
}

/// An option value as the user wrote it, for messages.
fn opt_text(v: &OptValue) -> String {
    match v {
        OptValue::Ident(i) => i.to_string(),
        OptValue::Lit(syn::Lit::Str(s)) => s.value(),
        OptValue::Lit(l) => quote::ToTokens::to_token_stream(l).to_string(),
        OptValue::Underscore(_) => "_".to_string(),
        OptValue::List(..) => "a list".to_string(),
        OptValue::Map(..) => "a map".to_string(),
    }
}

/// Reads the `mobile` option: platform, arch, quantization, optimize_size (checked against
/// `target_hardware` in [`cross_check`]).
fn opt_mobile(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let usage = "`mobile` takes `{ platform: android | linux, arch: \"arm64-v8a\", quantization: none | int8, optimize_size: bool }`";
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), usage));
    };
    let mut m = MobileOptions::default();
    for (k, val) in entries {
        match k.to_string().as_str() {
            "platform" => match val {
                OptValue::Ident(i) if i == "android" => m.android = true,
                OptValue::Ident(i) if i == "linux" => m.android = false,
                other => {
                    return Err(e(
                        other.span(),
                        format!(
                            "unsupported mobile `platform` `{}`; {MOBILE_SUPPORTED}",
                            opt_text(other)
                        ),
                    ))
                }
            },
            "arch" => {
                let a = match val {
                    OptValue::Lit(syn::Lit::Str(s)) => s.value(),
                    other => opt_text(other),
                };
                if a != "arm64-v8a" {
                    return Err(e(
                        val.span(),
                        format!("unsupported mobile `arch` \"{a}\" (only the 64-bit ARM ABI, aarch64, has kernels); {MOBILE_SUPPORTED}"),
                    ));
                }
            }
            "quantization" => match val {
                OptValue::Ident(i) if i == "none" => m.int8 = false,
                OptValue::Ident(i) if i == "int8" => m.int8 = true,
                other => {
                    return Err(e(
                        other.span(),
                        format!(
                            "unsupported mobile `quantization` `{}`; {MOBILE_SUPPORTED}",
                            opt_text(other)
                        ),
                    ))
                }
            },
            "optimize_size" => m.optimize_size = as_bool(val, "optimize_size")?,
            other => {
                return Err(e(
                    k.span(),
                    format!("unknown `mobile` setting `{other}`; {usage}"),
                ))
            }
        }
    }
    if m.int8 {
        o.quantization_int8 = true;
    }
    o.mobile = Some(m);
    Ok(())
}

/// Reads the `cuda` option: device, arch, tf32, amp.
fn opt_cuda(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let usage = "`cuda` takes `{ device: N, arch: \"sm_90\", tf32: bool, amp: bool }`";
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), usage));
    };
    for (k, val) in entries {
        match k.to_string().as_str() {
            "device" => match val {
                OptValue::Lit(syn::Lit::Int(i)) if i.base10_parse::<u32>().is_ok() => {
                    o.cuda.device = i.base10_parse::<u32>()? as usize;
                }
                other => {
                    return Err(e(
                        other.span(),
                        "`device` is a device ordinal: a non-negative integer",
                    ))
                }
            },
            "arch" => {
                let OptValue::Lit(syn::Lit::Str(s)) = val else {
                    return Err(e(
                        val.span(),
                        format!(
                            "`arch` takes a string such as \"sm_90\"; one of {}",
                            ARCHS.join(", ")
                        ),
                    ));
                };
                let a = s.value();
                if !ARCHS.contains(&a.as_str()) {
                    return Err(e(
                        s.span(),
                        format!(
                            "unsupported CUDA architecture \"{a}\"; NVRTC 13 compiles for {}",
                            ARCHS.join(", ")
                        ),
                    ));
                }
                o.cuda.arch = Some(a);
            }
            "tf32" => o.cuda.tf32 = as_bool(val, "tf32")?,
            "amp" => o.cuda.amp = as_bool(val, "amp")?,
            other => {
                return Err(e(
                    k.span(),
                    format!("unknown `cuda` setting `{other}`; {usage}"),
                ))
            }
        }
    }
    Ok(())
}

/// Reads the `gradient_checkpointing` option: `true` or `{ segments: N }`.
fn opt_gradient_checkpointing(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let usage = "`gradient_checkpointing` takes `{ segments: N }` with N >= 2, or `true` (4 segments, or `checkpoint_segments: N`)";
    if let OptValue::Lit(syn::Lit::Bool(b)) = v {
        if b.value {
            o.checkpoint_segments.get_or_insert(4);
        }
        return Ok(());
    }
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), usage));
    };
    for (k, val) in entries {
        if k != "segments" {
            return Err(e(
                k.span(),
                format!("unknown `gradient_checkpointing` setting `{k}`; {usage}"),
            ));
        }
        match val {
            OptValue::Lit(syn::Lit::Int(i)) if i.base10_parse::<usize>().is_ok_and(|n| n >= 2) => {
                o.checkpoint_segments = Some(i.base10_parse()?);
            }
            other => return Err(e(other.span(), usage)),
        }
    }
    if o.checkpoint_segments.is_none() {
        return Err(e(v.span(), usage));
    }
    Ok(())
}

/// Reads the `max_memory_gb` option.
fn opt_max_memory_gb(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let x = match v {
        OptValue::Lit(syn::Lit::Float(f)) => f.base10_parse::<f64>()?,
        OptValue::Lit(syn::Lit::Int(i)) => i.base10_parse::<f64>()?,
        other => {
            return Err(e(
                other.span(),
                "`max_memory_gb` takes a positive number of GiB, e.g. `0.5`",
            ))
        }
    };
    if !(x > 0.0 && x.is_finite()) {
        return Err(e(
            v.span(),
            "`max_memory_gb` must be a positive number of GiB",
        ));
    }
    o.max_memory_gb = Some((x, v.span()));
    Ok(())
}

/// Reads the `constants` option: scalar inputs baked in.
fn opt_constants(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), "`constants` takes `{ input: value, ... }`"));
    };
    for (name, val) in entries {
        let s = match val {
            OptValue::Lit(syn::Lit::Float(f)) => crate::ir::Scalar::Float(f.base10_parse()?),
            OptValue::Lit(syn::Lit::Int(i)) => crate::ir::Scalar::Int(i.base10_parse()?),
            OptValue::Lit(syn::Lit::Bool(b)) => crate::ir::Scalar::Bool(b.value),
            other => return Err(e(other.span(), "a constant is a number or bool literal")),
        };
        o.constants.insert(name.to_string(), (s, name.span()));
    }
    Ok(())
}

/// Reads the `shapes` option: input dims fixed at compile time.
fn opt_shapes(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), "`shapes` takes `{ input: [dims], ... }`"));
    };
    for (name, dims) in entries {
        let OptValue::List(ds, sp) = dims else {
            return Err(e(
                dims.span(),
                "a shape is a list of dims: `[32, 784]` (`_` keeps a dim dynamic)",
            ));
        };
        let mut out = Vec::new();
        for d in ds {
            match d {
                OptValue::Lit(syn::Lit::Int(i)) => out.push(Some(i.base10_parse::<u64>()?)),
                OptValue::Underscore(_) => out.push(None),
                OptValue::Ident(i) if i == "None" => out.push(None),
                other => {
                    return Err(e(
                        other.span(),
                        "a dim in `shapes` is a non-negative integer or `_`",
                    ))
                }
            }
        }
        o.shapes.insert(name.to_string(), (out, *sp));
    }
    Ok(())
}

/// Reads the `types` option: input dtypes.
fn opt_types(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let OptValue::Map(entries, _) = v else {
        return Err(e(v.span(), "`types` takes `{ input: dtype, ... }`"));
    };
    for (name, t) in entries {
        o.types
            .insert(name.to_string(), (as_dtype(t, "types")?, name.span()));
    }
    Ok(())
}

/// Reads the `optimizations` option: pass toggles.
fn opt_optimizations(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let OptValue::Map(entries, _) = v else {
        return Err(e(
            v.span(),
            "`optimizations` takes `{ constant_folding: bool, ... }`",
        ));
    };
    for (name, b) in entries {
        let b2 = as_bool(b, &name.to_string())?;
        match name.to_string().as_str() {
                "constant_folding" => o.constant_folding = b2,
                "operator_fusion" => o.operator_fusion = b2,
                "dead_code_elimination" => o.dead_code_elimination = b2,
                "common_subexpression" => o.common_subexpression = b2,
                "norm_fusion" => o.norm_fusion = b2,
                "head_fusion" => o.head_fusion = b2,
                other => {
                    return Err(e(name.span(), format!(
                        "unknown optimization `{other}`; expected constant_folding, operator_fusion, dead_code_elimination, common_subexpression, norm_fusion or head_fusion"
                    )))
                }
            }
    }
    Ok(())
}

/// Reads the `dump_graph` option.
fn opt_dump_graph(o: &mut Options, v: &OptValue) -> Result<(), syn::Error> {
    let OptValue::Map(entries, sp) = v else {
        return Err(e(
            v.span(),
            "`dump_graph` takes `{ path: \"...\", format: dot | json | text }`",
        ));
    };
    let mut path = None;
    let mut format = DumpFormat::Dot;
    for (name, val) in entries {
        match name.to_string().as_str() {
            "path" => path = Some(as_str(val, "path")?),
            "format" => {
                format = match val {
                    OptValue::Ident(i) if i == "dot" => DumpFormat::Dot,
                    OptValue::Ident(i) if i == "json" => DumpFormat::Json,
                    OptValue::Ident(i) if i == "text" => DumpFormat::Text,
                    other => return Err(e(other.span(), "`format` is `dot`, `json` or `text`")),
                }
            }
            other => {
                return Err(e(
                    name.span(),
                    format!("unknown `dump_graph` field `{other}`; expected `path` and `format`"),
                ))
            }
        }
    }
    let Some(path) = path else {
        return Err(e(*sp, "`dump_graph` needs `path: \"...\"`"));
    };
    o.dump_graph = Some((path, format));
    Ok(())
}

/// The error for an unknown option `other` (with the closest option name).
fn unknown_option(k: &Ident, other: &str) -> syn::Error {
    let near = crate::frontend::flatten::closest(other, NAMES.iter().copied());
    e(
        k.span(),
        format!(
            "unknown compile option `{other}`{}; the options are: {}",
            near.map(|n| format!(" (did you mean `{n}`?)"))
                .unwrap_or_default(),
            NAMES.join(", ")
        ),
    )
}

/// A relative `cache_dir` is taken from the invoking crate's `CARGO_MANIFEST_DIR`.
fn resolve_dir(d: &str) -> String {
    let p = std::path::PathBuf::from(d);
    if p.is_absolute() {
        return d.to_string();
    }
    match std::env::var_os("CARGO_MANIFEST_DIR") {
        Some(m) => std::path::PathBuf::from(m)
            .join(p)
            .to_string_lossy()
            .into_owned(),
        None => d.to_string(),
    }
}

/// Options that depend on each other: `target_hardware` against `backend` and `cuda.arch`, the
/// CUDA-only options on a CPU model.
fn cross_check(items: &[(Ident, OptValue)], o: &mut Options, errors: &mut Vec<syn::Error>) {
    let find = |name: &str| items.iter().find(|(k, _)| k == name);
    let backend_given = find("backend");
    if let (Some(t), Some((k, v))) = (&o.target_hardware, find("target_hardware")) {
        let target = TARGETS.iter().find(|(n, _)| n == t).map(|(_, x)| *x);
        match target {
            Some(Target::Cuda(arch)) => {
                if backend_given.is_some() && !o.backend_cuda {
                    errors.push(e(v.span(), format!("`target_hardware: \"{t}\"` is a GPU, but this model has `backend: cpu`; use `backend: cuda` (or leave `backend` out)")));
                    return;
                }
                o.backend_cuda = true;
                match &o.cuda.arch {
                    Some(a) if a != arch => {
                        errors.push(e(k.span(), format!("`target_hardware: \"{t}\"` means `arch: \"{arch}\"`, but `cuda: {{ arch: \"{a}\" }}` is given; give one of them")));
                        return;
                    }
                    _ => o.cuda.arch = Some(arch.to_string()),
                }
            }
            Some(Target::Mobile) => {
                if o.backend_cuda || o.backend_map.iter().any(|b| b.cuda) {
                    errors.push(e(v.span(), format!("`target_hardware: \"mobile\"` runs on the phone's CPU, but this model puts ops on `cuda`; {MOBILE_SUPPORTED}")));
                    return;
                }
                let m = o.mobile.get_or_insert_with(MobileOptions::default);
                if m.optimize_size && o.static_shapes {
                    let (k2, _) = find("static_shapes").expect("static_shapes was given");
                    errors.push(e(k2.span(), format!("`optimize_size: true` generates the model's plan form only, but `static_shapes: true` asks for per-op Rust (larger code); give one of them; {MOBILE_SUPPORTED}")));
                    return;
                }
            }
            Some(Target::Cpu) if o.backend_cuda => {
                errors.push(e(v.span(), format!("`target_hardware: \"{t}\"` is a CPU, but this model has `backend: cuda`; use an NVIDIA target (\"nvidia_h100\", ...) or `backend: cpu`")));
                return;
            }
            _ => {}
        }
    }
    if o.target_hardware.as_deref() != Some("mobile") {
        if let Some((k, _)) = find("mobile") {
            errors.push(e(
                k.span(),
                "`mobile` configures the mobile target; add `target_hardware: \"mobile\"`",
            ));
            return;
        }
    }
    if !o.backend_cuda && !o.backend_map.iter().any(|b| b.cuda) {
        for name in ["cuda", "cache", "cache_dir"] {
            if let Some((k, _)) = find(name) {
                errors.push(e(k.span(), format!("`{name}` configures the CUDA backend; this model is compiled for the CPU (add `backend: cuda`)")));
            }
        }
    }
    render::cross_check(o, &|n| find(n).map(|(k, _)| k.span()), errors);
    if let (true, Some((k, _))) = (
        o.quantization_int8,
        find("quantization").or_else(|| find("mobile")),
    ) {
        let why = if o.backend_cuda || o.backend_map.iter().any(|b| b.cuda) {
            Some(
                "the CUDA backend has no int8 kernels; `quantization: int8` is for CPU models"
                    .to_string(),
            )
        } else if o.static_shapes {
            Some(
                "`static_shapes: true` models have no int8 path yet; leave one of the two out"
                    .to_string(),
            )
        } else if o.dtype != DType::F32 {
            Some(format!(
                "`quantization: int8` quantizes f32 models, but this one has `dtype: {}`",
                o.dtype.name()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            errors.push(e(k.span(), why));
        }
    }
    if o.cuda.tf32 && o.cuda.amp {
        if let Some((k, _)) = find("cuda") {
            errors.push(e(k.span(), "`tf32: true` and `amp: true` both choose how f32 matrix products compute; give one of them"));
        }
    }
}

/// The instrumentation options (`Inspect`).
fn opt_inspect(o: &mut Inspect, key: &str, v: &OptValue) -> Result<(), syn::Error> {
    let path = |v: &OptValue, what: &str| -> Result<String, syn::Error> {
        let p = as_str(v, what)?;
        if p.is_empty() {
            return Err(e(v.span(), format!("`{what}` is a path; it is empty")));
        }
        Ok(resolve_dir(&p))
    };
    match key {
        "save_intermediates" => o.save_intermediates = as_bool(v, key)?,
        "intermediate_dir" => o.intermediate_dir = Some(path(v, key)?),
        "profile" => o.profile = as_bool(v, key)?,
        "profile_output" => o.profile_output = Some(path(v, key)?),
        _ => {
            let OptValue::List(items, _) = v else {
                return Err(e(
                    v.span(),
                    "`code_transformers` takes a list of `timing`, `trace`, `nan_check`, `hook`",
                ));
            };
            for it in items {
                let flag = match it {
                    OptValue::Ident(i) if i == "timing" => &mut o.timing,
                    OptValue::Ident(i) if i == "trace" => &mut o.trace,
                    OptValue::Ident(i) if i == "nan_check" => &mut o.nan_check,
                    OptValue::Ident(i) if i == "hook" => &mut o.hook,
                    other => {
                        return Err(e(
                            other.span(),
                            "unknown code transformer; the built-in ones are `timing` (per-call wall time), `trace` (op-by-op `log` records), `nan_check` (an `Err` naming the first op that produced a NaN/Inf) and `hook` (`evaluate_with_hook` with a user `OpHook`)",
                        ))
                    }
                };
                if std::mem::replace(flag, true) {
                    return Err(e(it.span(), "this code transformer is listed twice"));
                }
            }
        }
    }
    Ok(())
}

/// The instrumentation options against each other and against the backend: they instrument
/// the CPU plan executor, so `backend: cuda`, `backend_map` and `static_shapes` models refuse
/// them.
fn inspect_check(items: &[(Ident, OptValue)], o: &Options, errors: &mut Vec<syn::Error>) {
    let find = |name: &str| items.iter().find(|(k, _)| k == name);
    let i = &o.inspect;
    for (dep, on, main) in [
        (
            "intermediate_dir",
            i.save_intermediates,
            "save_intermediates",
        ),
        ("profile_output", i.profile, "profile"),
    ] {
        if let (Some((k, _)), false) = (find(dep), on) {
            errors.push(e(k.span(), format!("`{dep}` needs `{main}: true`")));
        }
    }
    let why = if o.backend_cuda || !o.backend_map.is_empty() {
        Some("`backend: cuda` and `backend_map` models (CPU models only)")
    } else if o.static_shapes {
        Some("`static_shapes: true` models (their `evaluate` runs no plan)")
    } else {
        None
    };
    if let Some(why) = why {
        for name in ["save_intermediates", "profile", "code_transformers"] {
            if let Some((k, v)) = find(name) {
                if !matches!(v, OptValue::Lit(syn::Lit::Bool(b)) if !b.value) {
                    errors.push(e(
                        k.span(),
                        format!("`{name}` instruments the CPU plan executor; it is not available for {why}"),
                    ));
                }
            }
        }
    }
}
