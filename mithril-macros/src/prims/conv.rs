//! Convolution over 1-D and 2-D spatial dims, NCHW, with PyTorch's semantics and weight
//! layouts: `conv1d` / `conv2d` (`stride`, `padding` — ints, lists, `"same"`, `"valid"` —,
//! `dilation`, `groups`) and `conv_transpose1d` / `conv_transpose2d` (plus `output_padding`),
//! and the two gradient ops autodiff makes (the input gradient, a transposed convolution, and
//! the weight gradient). CPU: `mithril::rt::ops::conv::conv_to` over
//! `mithril_kernels::conv` (implicit GEMM on the packed GEMM, direct kernels for depthwise and
//! tiny reductions). CUDA (f32 / f64): `mithril::rt::cuda::conv` over the direct kernels of
//! `mithril_kernels::cuda` `conv.cu` (same `ConvSpec`, same shape checks). A forward
//! convolution with its bias add and ReLU fused (`ConvKind::ForwardEpi`, made after autodiff by
//! `passes::conv_epilogue` on the CPU backends only) plans as `conv_epi` and calls
//! `mithril::rt::ops::conv::conv_epi_to` (`mithril_kernels::conv::forward_fused`); with a
//! following 2×2 max pool fused too (`pool`), `conv_epi_pool` and `conv_epi_pool_to`
//! (`mithril_kernels::conv::forward_fused_pool`).
//!
//! Output spatial dims: `(H + 2p - d(k - 1) - 1) / s + 1` (transposed: `(H - 1)s - 2p + d(k -
//! 1) + output_padding + 1`) when `H` and `k` are known at compile time, a static result below
//! 1 being a compile error; over a symbolic `H` a fresh dim the run time computes and checks.

use super::attrs::{get, int_attr, sig, AttrVal, Sig};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::{list, PlanCx};
use super::rules::{dt_names, ArgDt};
use super::{CallCx, Family};
use crate::ir::prim::{ConvAttrs, ConvKind};
use crate::ir::{DType, Dim, Env, NodeId, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The convolution family.
pub struct Rules;

const NAMES: &[&str] = &["conv1d", "conv2d", "conv_transpose1d", "conv_transpose2d"];

/// A list attribute of `nd` non-negative ints (an int is repeated); `min` is the least value.
fn ints(
    v: Option<&AttrVal>,
    name: &str,
    nd: usize,
    default: u64,
    min: u64,
) -> Result<Vec<u64>, String> {
    let bad = || format!("`{name}` must be an integer of at least {min} or a list of {nd} of them");
    let one = |v: &AttrVal| match v {
        AttrVal::Int(i) if *i >= min as i64 => Ok(*i as u64),
        _ => Err(bad()),
    };
    match v {
        None => Ok(vec![default; nd]),
        Some(AttrVal::List(xs)) if xs.len() == nd => xs.iter().map(one).collect(),
        Some(AttrVal::List(_)) => Err(bad()),
        Some(v) => Ok(vec![one(v)?; nd]),
    }
}

fn fmt_list(v: &[u64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| x.to_string()).collect();
    format!("[{}]", parts.join(", "))
}

impl ConvAttrs {
    /// Spatial dims.
    pub fn nd(&self) -> usize {
        self.stride.len()
    }
    fn describe(&self) -> String {
        let pad = match &self.padding {
            Some(p) => fmt_list(p),
            None => "\"same\"".into(),
        };
        let mut s = format!(
            "stride {}, padding {pad}, dilation {}, groups {}",
            fmt_list(&self.stride),
            fmt_list(&self.dilation),
            self.groups
        );
        if self.kind == ConvKind::Transpose {
            s += &format!(", output_padding {}", fmt_list(&self.output_padding));
        }
        s
    }
}

/// The runtime's `ConvSpec` of `a` (an expression; the CPU and the CUDA lowering share it).
fn spec_tokens(a: &ConvAttrs) -> TokenStream {
    let c = quote!(::mithril::rt::ops::conv);
    let kind = match a.kind {
        ConvKind::Forward | ConvKind::ForwardEpi { .. } => quote!(Forward),
        ConvKind::Transpose => quote!(Transpose),
        ConvKind::GradData => quote!(GradData),
        ConvKind::GradWeight => quote!(GradWeight),
    };
    let us = |v: &[u64]| {
        let v = v.iter().map(|&x| x as usize);
        quote!(::std::vec![#(#v),*])
    };
    let (stride, dil, op) = (us(&a.stride), us(&a.dilation), us(&a.output_padding));
    let pad = match &a.padding {
        Some(p) => {
            let p = us(p);
            quote!(::std::option::Option::Some(#p))
        }
        None => quote!(::std::option::Option::None),
    };
    let groups = a.groups as usize;
    quote!(#c::ConvSpec {
        kind: #c::ConvKind::#kind,
        stride: #stride,
        padding: #pad,
        dilation: #dil,
        groups: #groups,
        output_padding: #op,
    })
}

fn attrs_of(p: &Prim) -> Result<&ConvAttrs, String> {
    match p {
        Prim::Conv(a) => Ok(a),
        _ => Err("internal: not a convolution".into()),
    }
}

impl Family for Rules {
    fn names(&self) -> &'static [&'static str] {
        NAMES
    }

    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        let a = attrs_of(p)?;
        if let ConvKind::ForwardEpi { .. } = a.kind {
            // (the conv epilogue pass fuses only on the CPU backends)
            return Err("internal: a fused convolution epilogue on cuda".into());
        }
        let c = cuda::rt();
        let spec = spec_tokens(a);
        // the gradients' shape operand (2) is read for its shape only: never widened
        cuda::via_f32(cx, self.name(p), &[0, 1], |ops| {
            let (x, w) = (&ops[0], &ops[1]);
            let like = match ops.get(2) {
                Some(l) => quote!(::std::option::Option::Some(#l.shape())),
                None => quote!(::std::option::Option::None),
            };
            quote!(#c::conv_shaped(__dev, &#spec, #x, #w, #like)?)
        })
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        match name {
            "conv1d" | "conv2d" => Some(sig(
                &["input", "weight"],
                &["stride", "padding", "dilation", "groups"],
            )),
            "conv_transpose1d" | "conv_transpose2d" => Some(sig(
                &["input", "weight"],
                &["stride", "padding", "output_padding", "dilation", "groups"],
            )),
            _ => None,
        }
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        let nd = if name.ends_with("1d") { 1 } else { 2 };
        let transpose = name.starts_with("conv_transpose");
        let stride = ints(get(attrs, "stride"), "stride", nd, 1, 1)?;
        let dilation = ints(get(attrs, "dilation"), "dilation", nd, 1, 1)?;
        let groups = int_attr(get(attrs, "groups"), "groups", 1)?;
        if groups < 1 {
            return Err("`groups` must be at least 1".into());
        }
        let padding = match get(attrs, "padding") {
            Some(AttrVal::Str(s)) if s == "valid" => Some(vec![0; nd]),
            Some(AttrVal::Str(s)) if s == "same" => {
                if transpose {
                    return Err("padding \"same\" is not defined for a transposed convolution".into());
                }
                if stride.iter().any(|&s| s != 1) {
                    return Err(format!(
                        "padding \"same\" needs stride 1 (as in PyTorch), but stride is {}",
                        fmt_list(&stride)
                    ));
                }
                None
            }
            Some(AttrVal::Str(s)) => {
                return Err(format!(
                    "`padding` must be an integer, a list of {nd} integers, \"same\" or \"valid\", not \"{s}\""
                ))
            }
            v => Some(ints(v, "padding", nd, 0, 0)?),
        };
        let output_padding = if transpose {
            let op = ints(get(attrs, "output_padding"), "output_padding", nd, 0, 0)?;
            for d in 0..nd {
                if op[d] >= stride[d] {
                    return Err(format!(
                        "`output_padding` {} must be smaller than the stride {}",
                        fmt_list(&op),
                        fmt_list(&stride)
                    ));
                }
            }
            op
        } else {
            vec![0; nd]
        };
        Ok(Prim::Conv(ConvAttrs {
            kind: if transpose {
                ConvKind::Transpose
            } else {
                ConvKind::Forward
            },
            stride,
            padding,
            dilation,
            groups: groups as u64,
            output_padding,
        }))
    }

    fn name(&self, p: &Prim) -> &'static str {
        let Prim::Conv(a) = p else { return "conv" };
        match (a.kind, a.nd()) {
            (ConvKind::Forward, 1) => "conv1d",
            (ConvKind::Forward, _) => "conv2d",
            (ConvKind::Transpose, 1) => "conv_transpose1d",
            (ConvKind::Transpose, _) => "conv_transpose2d",
            (ConvKind::GradData, _) => "conv_grad_input",
            (ConvKind::GradWeight, _) => "conv_grad_weight",
            (ConvKind::ForwardEpi { pool: true, .. }, _) => "conv2d+epilogue+max_pool2d",
            (ConvKind::ForwardEpi { .. }, 1) => "conv1d+epilogue",
            (ConvKind::ForwardEpi { .. }, _) => "conv2d+epilogue",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        let a = attrs_of(p)?;
        if let ConvKind::ForwardEpi { pool, .. } = a.kind {
            // the forward convolution's shape (the bias was checked by the fusing pass)
            let fwd = Prim::Conv(ConvAttrs {
                kind: ConvKind::Forward,
                ..a.clone()
            });
            let mut s = self.shape(&fwd, env, &ins[..2.min(ins.len())])?;
            if pool {
                // the 2×2 / stride-2 floor-mode max pool halves the spatial dims
                for d in s.dims.iter_mut().skip(2) {
                    *d = match env.dim(d) {
                        Dim::Known(n) => Dim::Known(n / 2),
                        _ => env.new_dim_var("conv2d+epilogue+max_pool2d output dim".to_string()),
                    };
                }
            }
            return Ok(s);
        }
        let nd = a.nd();
        if matches!(a.kind, ConvKind::GradData | ConvKind::GradWeight) {
            return Ok(ins[2].clone());
        }
        let (x, w) = (&ins[0], &ins[1]);
        for (s, what) in [(x, "input"), (w, "weight")] {
            if s.rest.is_some() || s.dims.len() != nd + 2 {
                return Err(format!(
                    "the {what} must have rank {} ([N, C, {}] / [O, C / groups, {}]), but its shape is {}",
                    nd + 2,
                    if nd == 1 { "L" } else { "H, W" },
                    if nd == 1 { "k" } else { "kh, kw" },
                    env.fmt_shape(s)
                ));
            }
        }
        let g = a.groups;
        let ctx = |env: &Env| {
            format!(
                "input {}, weight {}; {}",
                env.fmt_shape(x),
                env.fmt_shape(w),
                a.describe()
            )
        };
        // channels: the input's against the weight's
        let (cx, cw) = match a.kind {
            ConvKind::Forward => (x.dims[1].clone(), w.dims[1].clone()),
            _ => (x.dims[1].clone(), w.dims[0].clone()),
        };
        let per_group = a.kind == ConvKind::Forward;
        let chan_err = |env: &Env| {
            Err(if per_group {
                format!(
                    "the input's channels ({}) must be the weight's dim 1 ({}) times groups {g} ({})",
                    env.fmt_dim(&cx),
                    env.fmt_dim(&cw),
                    ctx(env)
                )
            } else {
                format!(
                    "the input's channels ({}) must equal the weight's dim 0 ({}) ({})",
                    env.fmt_dim(&cx),
                    env.fmt_dim(&cw),
                    ctx(env)
                )
            })
        };
        if !per_group || g == 1 {
            if env.unify_dim(&cx, &cw).is_err() {
                return chan_err(env);
            }
        } else if let Dim::Known(c) = env.dim(&cx) {
            if !c.is_multiple_of(g) || env.unify_dim(&cw, &Dim::Known(c / g)).is_err() {
                return chan_err(env);
            }
        }
        // the weight's dim 0 splits into groups
        if let Dim::Known(o) = env.dim(&w.dims[0]) {
            if !o.is_multiple_of(g) {
                return Err(format!(
                    "the weight's dim 0 ({o}) must be divisible by groups {g} ({})",
                    ctx(env)
                ));
            }
        }
        let out_c = match a.kind {
            ConvKind::Forward => w.dims[0].clone(),
            _ => env.dim(&Dim::Prod(g, vec![w.dims[1].clone()])),
        };
        let mut dims = vec![x.dims[0].clone(), out_c];
        for d in 0..nd {
            let (i, k) = (env.dim(&x.dims[2 + d]), env.dim(&w.dims[2 + d]));
            let (s, dl) = (a.stride[d] as i64, a.dilation[d] as i64);
            let out = match (a.kind, &a.padding, &i, &k) {
                (ConvKind::Forward, None, _, _) => Some(Ok(i.clone())),
                (ConvKind::Forward, Some(p), Dim::Known(i), Dim::Known(k)) => {
                    let (i, k, p) = (*i as i64, *k as i64, p[d] as i64);
                    let o = (i + 2 * p - dl * (k - 1) - 1).div_euclid(s) + 1;
                    Some(if o < 1 {
                        Err(o)
                    } else {
                        Ok(Dim::Known(o as u64))
                    })
                }
                (ConvKind::Transpose, Some(p), Dim::Known(i), Dim::Known(k)) => {
                    let (i, k, p) = (*i as i64, *k as i64, p[d] as i64);
                    let o = (i - 1) * s - 2 * p + dl * (k - 1) + a.output_padding[d] as i64 + 1;
                    Some(if o < 1 {
                        Err(o)
                    } else {
                        Ok(Dim::Known(o as u64))
                    })
                }
                _ => None,
            };
            dims.push(match out {
                Some(Ok(o)) => o,
                Some(Err(o)) => {
                    let formula = if a.kind == ConvKind::Forward {
                        "(in + 2·padding - dilation·(kernel - 1) - 1) / stride + 1"
                    } else {
                        "(in - 1)·stride - 2·padding + dilation·(kernel - 1) + output_padding + 1"
                    };
                    return Err(format!(
                        "spatial dim {d} of the output would be {o} < 1: {formula} with in = {}, kernel = {} ({})",
                        env.fmt_dim(&i),
                        env.fmt_dim(&k),
                        ctx(env)
                    ));
                }
                None => env.new_dim_var(format!("{} output dim {d}", self.name(p))),
            });
        }
        Ok(Shape::fixed(dims))
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        let names = dt_names(env, ins);
        let t = env.unify_dt(ins[0].dt, ins[1].dt).map_err(|_| {
            format!(
                "dtype mismatch in `{}`: {} vs {}",
                p.name(),
                names[0],
                names[1]
            )
        })?;
        match env.dt(t) {
            DT::Known(DType::F32 | DType::F64 | DType::F16 | DType::BF16) | DT::Var(_) => Ok(t),
            DT::Known(other) => Err(format!(
                "`{}` supports float tensors (f32, f64, f16, bf16), not {other}",
                p.name()
            )),
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
        let Prim::Conv(a) = p else {
            return b.unsupported("conv", x.len());
        };
        let with = |kind| Prim::Conv(ConvAttrs { kind, ..a.clone() });
        match a.kind {
            ConvKind::Forward => {
                // gx: the transposed convolution of gy, shaped like x; gw: correlation of x and gy
                let gx = b.op(with(ConvKind::GradData), &[gy, x[1], x[0]]);
                let gw = b.op(with(ConvKind::GradWeight), &[x[0], gy, x[1]]);
                vec![Some(gx), Some(gw)]
            }
            ConvKind::Transpose => {
                // y = convᵀ(x, w) is the input gradient of the convolution whose input is y:
                // gx = conv(gy, w), gw = the weight gradient with the roles of x and gy swapped
                let mut fwd = a.clone();
                fwd.kind = ConvKind::Forward;
                fwd.output_padding = vec![0; a.nd()];
                let gx = b.op(Prim::Conv(fwd), &[gy, x[1]]);
                let gw = b.op(with(ConvKind::GradWeight), &[gy, x[0], x[1]]);
                vec![Some(gx), Some(gw)]
            }
            ConvKind::GradData | ConvKind::GradWeight | ConvKind::ForwardEpi { .. } => {
                b.unsupported(self.name(p), x.len())
            }
        }
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        let a = attrs_of(p)?;
        let (op, kind) = match a.kind {
            ConvKind::Forward => ("conv".to_string(), "f"),
            ConvKind::Transpose => ("conv".into(), "t"),
            ConvKind::GradData => ("conv".into(), "d"),
            ConvKind::GradWeight => ("conv".into(), "w"),
            // `conv_epi <bias> <relu>`, then a forward `conv`'s attributes
            ConvKind::ForwardEpi {
                bias,
                relu,
                pool: false,
            } => (
                format!("conv_epi {} {}", u8::from(bias), u8::from(relu)),
                "f",
            ),
            // `conv_epi_pool <bias> <relu>`: the same, then the 2×2 max pool
            ConvKind::ForwardEpi {
                bias,
                relu,
                pool: true,
            } => (
                format!("conv_epi_pool {} {}", u8::from(bias), u8::from(relu)),
                "f",
            ),
        };
        let pad = a.padding.clone().unwrap_or_default();
        Ok(format!(
            "{op} {kind} {} {} {} {} {} {}",
            a.groups,
            u8::from(a.padding.is_none()),
            list(&a.stride),
            list(&pad),
            list(&a.dilation),
            list(&a.output_padding)
        ))
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let a = attrs_of(p)?;
        let half = cx
            .in_dt
            .iter()
            .all(|t| matches!(t, DType::F16 | DType::BF16));
        if !half
            && !cx
                .in_dt
                .iter()
                .all(|t| matches!(t, DType::F32 | DType::F64))
        {
            return Err(format!("`{}` supports float tensors", self.name(p)));
        }
        let c = quote!(::mithril::rt::ops::conv);
        let f = if half {
            quote!(conv_half_to)
        } else {
            quote!(conv_to)
        };
        let spec = spec_tokens(a);
        let (x, w, d) = (&cx.a[0], &cx.a[1], cx.d);
        if let ConvKind::ForwardEpi { bias, relu, pool } = a.kind {
            if half {
                return Err("internal: a fused convolution epilogue on f16 / bf16".into());
            }
            let b = match (bias, cx.a.get(2)) {
                (true, Some(b)) => quote!(::std::option::Option::Some(&#b)),
                (false, None) => quote!(::std::option::Option::None),
                _ => return Err("internal: the fused convolution's bias operand".into()),
            };
            if pool {
                return Ok(
                    cx.checked(quote!(#c::conv_epi_pool_to(&#spec, &#x, &#w, #b, #relu, #d)))
                );
            }
            return Ok(cx.checked(quote!(#c::conv_epi_to(&#spec, &#x, &#w, #b, #relu, #d))));
        }
        let like = match cx.a.get(2) {
            Some(l) => quote!(::std::option::Option::Some(&#l)),
            None => quote!(::std::option::Option::None),
        };
        Ok(cx.checked(quote!(#c::#f(&#spec, &#x, &#w, #like, #d))))
    }
}
