//! Pooling, padding and upsampling over the trailing spatial dims (PyTorch's semantics and NCHW
//! layout): `max_pool1d/2d`, `avg_pool1d/2d`, `adaptive_avg_pool1d/2d`, `pad`, `upsample`, and
//! their gradient (`PoolGrad`, made by autodiff). CPU: `mithril::rt::ops::pool_to` /
//! `pool_backward_to` over `mithril_kernels::pool`. CUDA (f32 / f64): `mithril::rt::cuda::pool`
//! / `pool_backward` over `pool.cu` (the same plan word, parsed by the same `PoolSpec`).
//!
//! Output dims: a known input dim gives a known output dim (an output below 1 is a compile
//! error naming the input dims and the attributes); a symbolic one gives a new dim named by its
//! formula (`(H + 2 - 3)/2 + 1`), or `s*H` for an integer upsampling scale; the run time
//! computes and checks every output dim from the input's.

use super::attrs::{bool_attr, float_attr, get, sig, AttrVal, Sig, UN};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::PlanCx;
use super::rules::{fixed, float_only, show, ArgDt};
use super::{CallCx, Family};
use crate::ir::prim::{PadMode, PoolOp};
use crate::ir::{DType, Dim, Env, NodeId, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The pooling family.
pub struct Rules;

const WIN: &[&str] = &[
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "ceil_mode",
    "count_include_pad",
];

/// The DSL names.
const NAMES: &[&str] = &[
    "max_pool1d",
    "max_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "pad",
    "upsample",
];

/// `n` non-negative integers from an int (repeated) or a list/tuple of `n`.
fn ints(
    v: Option<&AttrVal>,
    name: &str,
    n: usize,
    default: Option<u64>,
) -> Result<Vec<u64>, String> {
    let one = |v: &AttrVal| match v {
        AttrVal::Int(i) if *i >= 0 => Ok(*i as u64),
        _ => Err(format!(
            "`{name}` must be a non-negative integer or a tuple of {n} of them"
        )),
    };
    match v {
        None | Some(AttrVal::None) => match default {
            Some(d) => Ok(vec![d; n]),
            None => Err(format!("`{name}` is required")),
        },
        Some(AttrVal::List(xs)) if xs.len() == n => xs.iter().map(one).collect(),
        Some(AttrVal::List(xs)) => Err(format!(
            "`{name}` has {} values; this op has {n} spatial dims",
            xs.len()
        )),
        Some(v) => Ok(vec![one(v)?; n]),
    }
}

fn str_attr<'a>(v: Option<&'a AttrVal>, name: &str, default: &'a str) -> Result<&'a str, String> {
    match v {
        None => Ok(default),
        Some(AttrVal::Str(s)) => Ok(s),
        _ => Err(format!("`{name}` must be a string")),
    }
}

fn window(name: &str, attrs: &[(&str, AttrVal)]) -> Result<PoolOp, String> {
    let n = if name.ends_with("1d") { 1 } else { 2 };
    let max = name.starts_with("max");
    if max && get(attrs, "count_include_pad").is_some() {
        return Err(format!(
            "`{name}` has no `count_include_pad` (average pooling has)"
        ));
    }
    if !max && get(attrs, "dilation").is_some() {
        return Err(format!("`{name}` has no `dilation` (max pooling has)"));
    }
    let k = ints(get(attrs, "kernel_size"), "kernel_size", n, None)?;
    let s = match get(attrs, "stride") {
        None | Some(AttrVal::None) => k.clone(),
        v => ints(v, "stride", n, None)?,
    };
    let p = ints(get(attrs, "padding"), "padding", n, Some(0))?;
    let d = ints(get(attrs, "dilation"), "dilation", n, Some(1))?;
    for (what, v) in [("kernel_size", &k), ("stride", &s), ("dilation", &d)] {
        if v.contains(&0) {
            return Err(format!("`{what}` must be at least 1, got {v:?}"));
        }
    }
    for j in 0..n {
        let eff = d[j] * (k[j] - 1) + 1;
        if 2 * p[j] > eff {
            return Err(format!(
                "padding {} is more than half the kernel size {} (PyTorch's limit: every window must cover the input)",
                p[j], eff
            ));
        }
    }
    Ok(PoolOp::Window {
        max,
        k,
        s,
        p,
        d,
        ceil: bool_attr(get(attrs, "ceil_mode"), "ceil_mode", false)?,
        count_pad: bool_attr(get(attrs, "count_include_pad"), "count_include_pad", true)?,
    })
}

fn floats(v: &AttrVal) -> Result<Vec<f64>, String> {
    let one = |v: &AttrVal| match v {
        AttrVal::Int(i) if *i > 0 => Ok(*i as f64),
        AttrVal::Float(f) if *f > 0.0 && f.is_finite() => Ok(*f),
        _ => Err("`scale_factor` must be a positive number or a tuple of them".to_string()),
    };
    match v {
        AttrVal::List(xs) if !xs.is_empty() && xs.len() <= 2 => xs.iter().map(one).collect(),
        AttrVal::List(_) => Err("`scale_factor` takes one or two values".into()),
        v => Ok(vec![one(v)?]),
    }
}

fn upsample(attrs: &[(&str, AttrVal)]) -> Result<PoolOp, String> {
    let size = get(attrs, "size").filter(|v| **v != AttrVal::None);
    let scale = get(attrs, "scale_factor").filter(|v| **v != AttrVal::None);
    let (size, scale) = match (size, scale) {
        (Some(_), Some(_)) | (None, None) => {
            return Err("`upsample` takes either `size` or `scale_factor`".into())
        }
        (Some(v), None) => {
            let n = match v {
                AttrVal::List(xs) if xs.len() == 2 => 2,
                AttrVal::List(xs) if xs.len() != 1 => {
                    return Err("`size` takes one or two values".into())
                }
                _ => 1,
            };
            let s = ints(Some(v), "size", n, None)?;
            if s.contains(&0) {
                return Err("`size` must be at least 1".into());
            }
            (s, vec![])
        }
        (None, Some(v)) => (vec![], floats(v)?),
    };
    let mode = str_attr(get(attrs, "mode"), "mode", "nearest")?;
    let linear = match mode {
        "nearest" => false,
        "linear" | "bilinear" => true,
        m => {
            return Err(format!(
                "unknown upsample mode \"{m}\"; expected \"nearest\", \"linear\" or \"bilinear\""
            ))
        }
    };
    let align = get(attrs, "align_corners").filter(|v| **v != AttrVal::None);
    if align.is_some() && !linear {
        return Err("`align_corners` applies to the linear modes only".into());
    }
    Ok(PoolOp::Upsample {
        size,
        scale,
        linear,
        align_corners: bool_attr(align, "align_corners", false)?,
    })
}

fn pad(attrs: &[(&str, AttrVal)]) -> Result<PoolOp, String> {
    let pads = match get(attrs, "pad") {
        Some(AttrVal::List(xs)) if !xs.is_empty() && xs.len() % 2 == 0 => xs
            .iter()
            .map(|v| match v {
                AttrVal::Int(i) if *i >= 0 => Ok(*i as u64),
                _ => Err("`pad` values must be non-negative integers".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => return Err("`pad` is required: (left, right) of the last dim, then of the dim before, ...".into()),
        _ => {
            return Err(
                "`pad` must be a tuple of an even number of integers: (left, right) of the last dim, then of the dim before, ..."
                    .into(),
            )
        }
    };
    let mode = match str_attr(get(attrs, "mode"), "mode", "constant")? {
        "constant" => PadMode::Constant,
        "reflect" => PadMode::Reflect,
        "replicate" => PadMode::Replicate,
        m => {
            return Err(format!(
                "unknown pad mode \"{m}\"; expected \"constant\", \"reflect\" or \"replicate\""
            ))
        }
    };
    if mode != PadMode::Constant && get(attrs, "value").is_some() {
        return Err("`value` applies to mode \"constant\" only".into());
    }
    Ok(PoolOp::Pad {
        pads,
        mode,
        value: float_attr(get(attrs, "value"), "value", 0.0)?,
    })
}

/// PyTorch's pooling output size (see `mithril::rt::ops::window_out`); `None` below 1.
fn window_out(i: u64, k: u64, s: u64, p: u64, d: u64, ceil: bool) -> Option<u64> {
    let span = (i + 2 * p) as i128 - (d * (k - 1) + 1) as i128;
    if span < 0 {
        return None;
    }
    let s = s as i128;
    let mut o = if ceil {
        (span + s - 1) / s + 1
    } else {
        span / s + 1
    };
    if ceil && (o - 1) * s >= (i + p) as i128 {
        o -= 1;
    }
    (o >= 1).then_some(o as u64)
}

fn plus(a: &str, c: i64) -> String {
    match c {
        0 => a.to_string(),
        c if c < 0 => format!("{a} - {}", -c),
        c => format!("{a} + {c}"),
    }
}

fn show_dims(env: &Env, s: &Shape) -> String {
    let d: Vec<String> = s.dims.iter().map(|d| show(env, d)).collect();
    format!("[{}]", d.join(", "))
}

fn shape_of(op: &PoolOp, name: &str, env: &mut Env, s: &Shape) -> Result<Shape, String> {
    fixed(s, name)?;
    let r = s.dims.len();
    let mut out = s.dims.clone();
    match op {
        PoolOp::Window {
            max,
            k,
            s: st,
            p,
            d,
            ceil,
            ..
        } => {
            let n = k.len();
            if r < n + 1 {
                return Err(format!(
                    "`{name}` needs an input of rank {} or {} ([N, C, ...] with {n} spatial dims), got {}",
                    n + 1,
                    n + 2,
                    show_dims(env, s)
                ));
            }
            for j in 0..n {
                let a = r - n + j;
                let dil = if *max { d[j] } else { 1 };
                out[a] = match env.dim(&s.dims[a]) {
                    Dim::Known(i) => Dim::Known(
                        window_out(i, k[j], st[j], p[j], dil, *ceil).ok_or_else(|| {
                            format!(
                                "the output dim {a} would be below 1: input dims {} with kernel_size {}, stride {}, padding {}{}{} (spatial dim of size {i})",
                                show_dims(env, s),
                                k[j],
                                st[j],
                                p[j],
                                if *max { format!(", dilation {dil}") } else { String::new() },
                                if *ceil { ", ceil_mode" } else { "" }
                            )
                        })?,
                    ),
                    // a stride-1 window padded to keep the size (`3`, padding 1) keeps the dim
                    other if st[j] == 1 && 2 * p[j] == dil * (k[j] - 1) => other,
                    other => {
                        let h = show(env, &other);
                        let span = 2 * p[j] as i64 - (dil * (k[j] - 1) + 1) as i64;
                        let num = plus(&h, span);
                        let name = match (st[j], *ceil) {
                            (1, _) => plus(&h, span + 1),
                            (s, false) => format!("({num})/{s} + 1"),
                            (s, true) => format!("ceil(({num})/{s}) + 1"),
                        };
                        env.new_dim_var(name)
                    }
                };
            }
        }
        PoolOp::Adaptive(o) => {
            let n = o.len();
            if r < n + 1 {
                return Err(format!(
                    "`{name}` needs an input of rank {} or {}, got {}",
                    n + 1,
                    n + 2,
                    show_dims(env, s)
                ));
            }
            if let Some(j) = (0..n).find(|&j| env.dim(&s.dims[r - n + j]) == Dim::Known(0)) {
                return Err(format!(
                    "spatial dim {j} of input {} is empty",
                    show_dims(env, s)
                ));
            }
            for j in 0..n {
                out[r - n + j] = Dim::Known(o[j]);
            }
        }
        PoolOp::Pad { pads, mode, .. } => {
            let m = pads.len() / 2;
            if m > r {
                return Err(format!(
                    "`pad` lists {} values (2 per padded dim) for an input of rank {r}: {}",
                    pads.len(),
                    show_dims(env, s)
                ));
            }
            for j in 0..m {
                let (l, rt) = (pads[2 * j], pads[2 * j + 1]);
                let a = r - 1 - j;
                out[a] = match env.dim(&s.dims[a]) {
                    Dim::Known(n) => {
                        if *mode == PadMode::Reflect && (l >= n || rt >= n) {
                            return Err(format!(
                                "reflect padding ({l}, {rt}) of dim {a} needs each pad below the dim's size {n}: input dims {}",
                                show_dims(env, s)
                            ));
                        }
                        if *mode == PadMode::Replicate && n == 0 && l + rt > 0 {
                            return Err(format!(
                                "replicate padding of dim {a}, which is empty: input dims {}",
                                show_dims(env, s)
                            ));
                        }
                        Dim::Known(n + l + rt)
                    }
                    other if l + rt == 0 => other,
                    other => {
                        let h = show(env, &other);
                        env.new_dim_var(plus(&h, (l + rt) as i64))
                    }
                };
            }
        }
        PoolOp::Upsample { size, scale, .. } => {
            let given = size.len().max(scale.len());
            if !(3..=4).contains(&r) || (given == 2 && r != 4) {
                return Err(format!(
                    "`upsample` takes [N, C, L] or [N, C, H, W] with one size or scale or one per spatial dim; got input {} with {given}",
                    show_dims(env, s)
                ));
            }
            for j in 0..r - 2 {
                let a = 2 + j;
                out[a] = if !size.is_empty() {
                    Dim::Known(size[j.min(size.len() - 1)])
                } else {
                    let f = scale[j.min(scale.len() - 1)];
                    match env.dim(&s.dims[a]) {
                        Dim::Known(n) => {
                            let o = (n as f64 * f).floor() as u64;
                            if o == 0 {
                                return Err(format!(
                                    "the output dim {a} would be below 1: input dims {} with scale_factor {f}",
                                    show_dims(env, s)
                                ));
                            }
                            Dim::Known(o)
                        }
                        other if f.fract() == 0.0 && f <= 1e9 => {
                            env.dim(&Dim::Prod(f as u64, vec![other]))
                        }
                        other => {
                            let h = show(env, &other);
                            env.new_dim_var(format!("floor({h}*{f})"))
                        }
                    }
                };
            }
        }
    }
    Ok(Shape::fixed(out))
}

fn join(v: &[u64]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The plan word of `op` (parsed by `mithril::rt::ops::PoolSpec::parse`).
pub fn spec_word(op: &PoolOp) -> String {
    let f = |b: bool| if b { "1" } else { "0" };
    match op {
        PoolOp::Window {
            max,
            k,
            s,
            p,
            d,
            ceil,
            count_pad,
        } => format!(
            "win,{},{},{},{},{},{},{},{}",
            f(*max),
            k.len(),
            join(k),
            join(s),
            join(p),
            join(d),
            f(*ceil),
            f(*count_pad)
        ),
        PoolOp::Adaptive(o) => format!("ada,{},{}", o.len(), join(o)),
        PoolOp::Pad { pads, mode, value } => format!(
            "pad,{},{},{},{:x}",
            match mode {
                PadMode::Constant => "c",
                PadMode::Reflect => "r",
                PadMode::Replicate => "e",
            },
            pads.len(),
            join(pads),
            value.to_bits()
        ),
        PoolOp::Upsample {
            size,
            scale,
            linear,
            align_corners,
        } => {
            let mut w = format!("up,{},{},{}", f(*linear), f(*align_corners), size.len());
            for x in size {
                w.push_str(&format!(",{x}"));
            }
            w.push_str(&format!(",{}", scale.len()));
            for x in scale {
                w.push_str(&format!(",{:x}", x.to_bits()));
            }
            w
        }
    }
}

fn name_of(op: &PoolOp) -> &'static str {
    match op {
        PoolOp::Window { max: true, k, .. } if k.len() == 1 => "max_pool1d",
        PoolOp::Window { max: true, .. } => "max_pool2d",
        PoolOp::Window { k, .. } if k.len() == 1 => "avg_pool1d",
        PoolOp::Window { .. } => "avg_pool2d",
        PoolOp::Adaptive(o) if o.len() == 1 => "adaptive_avg_pool1d",
        PoolOp::Adaptive(_) => "adaptive_avg_pool2d",
        PoolOp::Pad { .. } => "pad",
        PoolOp::Upsample { .. } => "upsample",
    }
}

impl Family for Rules {
    fn names(&self) -> &'static [&'static str] {
        NAMES
    }

    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        let c = cuda::rt();
        match p {
            Prim::Pool(op) => {
                let w = spec_word(op);
                cuda::via_f32(cx, self.name(p), &[0], |ops| {
                    let x = &ops[0];
                    quote!(#c::pool(__dev, #x, #w)?)
                })
            }
            Prim::PoolGrad(op) => {
                // the input's values pick the max-pool winners: widened too
                let w = spec_word(op);
                cuda::via_f32(cx, self.name(p), &[0, 1], |ops| {
                    let (x, input) = (&ops[0], &ops[1]);
                    quote!(#c::pool_backward(__dev, #x, #input, #w)?)
                })
            }
            _ => Err("internal: not a pool op".into()),
        }
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        Some(match name {
            "max_pool1d" | "max_pool2d" | "avg_pool1d" | "avg_pool2d" => sig(UN, WIN),
            "adaptive_avg_pool1d" | "adaptive_avg_pool2d" => sig(UN, &["output_size"]),
            "pad" => sig(UN, &["pad", "mode", "value"]),
            "upsample" => sig(UN, &["size", "scale_factor", "mode", "align_corners"]),
            _ => return None,
        })
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        Ok(Prim::Pool(match name {
            "adaptive_avg_pool1d" | "adaptive_avg_pool2d" => {
                let n = if name.ends_with("1d") { 1 } else { 2 };
                let o = ints(get(attrs, "output_size"), "output_size", n, None)?;
                if o.contains(&0) {
                    return Err("`output_size` must be at least 1".into());
                }
                PoolOp::Adaptive(o)
            }
            "pad" => pad(attrs)?,
            "upsample" => upsample(attrs)?,
            _ => window(name, attrs)?,
        }))
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::Pool(op) => name_of(op),
            _ => "pool_grad",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Pool(op) => shape_of(op, name_of(op), env, &ins[0]),
            _ => Ok(ins[1].clone()),
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        match p {
            Prim::Pool(_) => float_only(p.name(), env, &ins[..1], default),
            _ => Ok(ins[0].dt),
        }
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        _: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        match p {
            Prim::Pool(op) => vec![Some(b.op(Prim::PoolGrad(op.clone()), &[gy, x[0]]))],
            // every gradient but max pooling's is linear in `g` and independent of the input:
            // its own transpose is the forward op
            Prim::PoolGrad(op) if !matches!(op, PoolOp::Window { max: true, .. }) => {
                let mut lin = op.clone();
                if let PoolOp::Pad { value, .. } = &mut lin {
                    *value = 0.0;
                }
                vec![Some(b.op(Prim::Pool(lin), &[gy])), None]
            }
            _ => b.unsupported("the max pooling gradient", 2),
        }
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        match p {
            Prim::Pool(op) => Ok(format!("pool {}", spec_word(op))),
            Prim::PoolGrad(op) => Ok(format!("pool_grad {}", spec_word(op))),
            _ => Err("internal: not a pool op".into()),
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (a, d) = (cx.a, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let x = &a[0];
        Ok(cx.checked(match p {
            Prim::Pool(op) => {
                let w = spec_word(op);
                quote!(#ops::pool_text_to(&#x, #w, #d))
            }
            Prim::PoolGrad(op) => {
                let (w, y) = (spec_word(op), &a[1]);
                quote!(#ops::pool_backward_text_to(&#x, &#y, #w, #d))
            }
            _ => return Err("internal: no call lowering".into()),
        }))
    }
}
