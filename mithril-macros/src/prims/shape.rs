//! Shape ops: `transpose`, `reshape`, `flatten`, `concat`, `slice` (indexing), `stack`, and
//! `unsqueeze` (made by autodiff). CPU: the `*_to` ops of `mithril::rt::ops` (views where the
//! layout allows; `reshape`'s target dims may be symbolic: the generator's run-time dims, through
//! the contexts).

use super::attrs::{axes_attr, get, int_attr, sig, AttrVal, Sig, UN};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::{dt_names, fixed, norm_axis, show, total, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Dim, Env, Graph, NodeId, Op, Shape, SymBound, DT};
use crate::prims::{Prim, ReshapeDim, SliceArg};
use proc_macro2::TokenStream;
use quote::quote;

/// The shape-op family.
pub struct Rules;

impl Family for Rules {
    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        // `reshape`, `flatten` and `unsqueeze`: a reshape of the operand (moved when it is dead)
        let c = cuda::rt();
        Ok(match p {
            Prim::Reshape(_) => {
                let dims = cx.reshape_dims()?;
                cx.reshape_to(0, dims)
            }
            Prim::Flatten(s, e) => {
                let (ra, label) = (cx.r(0), cx.label());
                cx.reshape_to(
                    0,
                    quote!(#c::exec::flatten_dims(#label, #ra.shape(), #s, #e)?),
                )
            }
            Prim::Unsqueeze(axes) => {
                let ra = cx.r(0);
                let axes = axes.clone();
                cx.reshape_to(
                    0,
                    quote!(#c::exec::unsqueeze_dims(#ra.shape(), &[#(#axes),*])),
                )
            }
            // `x[i]` on the leading axis (the stacked key/value gradient of attention): a copy of
            // one contiguous block
            Prim::Slice(args)
                if matches!(args.as_slice(), [crate::ir::prim::SliceArg::Index(_)]) =>
            {
                let [crate::ir::prim::SliceArg::Index(i)] = args.as_slice() else {
                    return Err("internal: slice".into());
                };
                let ra = cx.r(0);
                quote!(#c::nn::select_leading(__dev, #ra, #i)?)
            }
            // any other slice (ranges with any step, indices, new axes) and `transpose`: one
            // strided-gather launch (`rt::cuda::layout`, a bit copy: every dtype of 2, 4 or 8
            // bytes)
            Prim::Slice(args) => {
                let args = args.iter().map(slice_arg_tokens);
                let ra = cx.r(0);
                quote!(#c::layout::slice(__dev, #ra, &[#(#args),*])?)
            }
            Prim::Transpose(perm) => {
                let ra = cx.r(0);
                quote!(#c::layout::transpose(__dev, #ra, &[#(#perm),*])?)
            }
            // `concat` / `stack`: one strided-scatter launch per part into the result
            Prim::Concat(axis) | Prim::Stack(axis) => {
                let parts: Vec<TokenStream> = (0..cx.n_args()).map(|k| cx.r(k)).collect();
                let axis = *axis as isize;
                let f = if matches!(p, Prim::Concat(_)) {
                    quote!(concat)
                } else {
                    quote!(stack)
                };
                quote!(#c::layout::#f(__dev, &[#(#parts),*], #axis)?)
            }
            _ => return Err("there is no CUDA kernel for it yet".into()),
        })
    }

    fn plan(&self, p: &Prim, cx: &PlanCx<'_>) -> Result<String, String> {
        Ok(match p {
            Prim::Reshape(_) => {
                let s = cx.shape.ok_or("reshape: no shape")?;
                let dims: Vec<String> = s
                    .dims
                    .iter()
                    .map(|d| (cx.dim)(d).unwrap_or_else(|| "?".into()))
                    .collect();
                if dims.iter().filter(|d| *d == "?").count() > 1 {
                    return Err("reshape: more than one target dim is only known at run time; name them with symbols".into());
                }
                format!("reshape {} {}", dims.len(), dims.join(" "))
            }
            Prim::Transpose(perm) => format!("transpose {}", pt::list(perm)),
            Prim::Flatten(s, e) => format!("flatten {s} {e}"),
            Prim::Concat(a) => format!("concat {a}"),
            Prim::Slice(args) => format!("slice {}", pt::slice_args(args)),
            Prim::Unsqueeze(ax) => format!("unsqueeze {}", pt::list(ax)),
            Prim::Stack(a) => format!("stack {a}"),
            _ => return Err("internal: not a shape op".into()),
        })
    }

    fn names(&self) -> &'static [&'static str] {
        &[
            "transpose",
            "reshape",
            "flatten",
            "concat",
            "slice",
            "stack",
        ]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        Some(match name {
            "transpose" => sig(UN, &["axes"]),
            "reshape" => sig(UN, &["shape"]),
            "flatten" => sig(UN, &["start_dim", "end_dim"]),
            "concat" => Sig {
                inputs: &[],
                variadic: true,
                attrs: &["axis"],
            },
            "slice" => Sig {
                inputs: UN,
                variadic: true,
                attrs: &[],
            },
            "stack" => Sig {
                inputs: &[],
                variadic: true,
                attrs: &["axis"],
            },
            _ => return None,
        })
    }

    fn build(
        &self,
        name: &str,
        attrs: &[(&str, AttrVal)],
        n_inputs: usize,
    ) -> Result<Prim, String> {
        let get = |k: &str| get(attrs, k);
        Ok(match name {
            "transpose" => match get("axes") {
                None | Some(AttrVal::None) => Prim::Transpose(vec![]),
                Some(v) => {
                    let axes = axes_attr(Some(v))?;
                    if axes.iter().any(|a| *a < 0) {
                        return Err("`axes` of transpose must be non-negative".into());
                    }
                    Prim::Transpose(axes.into_iter().map(|a| a as usize).collect())
                }
            },
            "reshape" => build_reshape(get("shape"))?,
            "flatten" => Prim::Flatten(
                int_attr(get("start_dim"), "start_dim", 0)?,
                int_attr(get("end_dim"), "end_dim", -1)?,
            ),
            "concat" => {
                if n_inputs == 0 {
                    return Err("`concat` needs at least one tensor".into());
                }
                Prim::Concat(int_attr(get("axis"), "axis", 0)?)
            }
            "slice" => build_slice(attrs)?,
            _ => {
                if n_inputs == 0 {
                    return Err("`stack` needs at least one tensor".into());
                }
                Prim::Stack(int_attr(get("axis"), "axis", 0)?)
            }
        })
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::Transpose(_) => "transpose",
            Prim::Reshape(_) => "reshape",
            Prim::Flatten(..) => "flatten",
            Prim::Concat(_) => "concat",
            Prim::Slice(_) => "slice",
            Prim::Unsqueeze(_) => "unsqueeze",
            _ => "stack",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Transpose(perm) => transpose_shape(perm, &ins[0]),
            Prim::Reshape(target) => reshape_shape(target, env, &ins[0]),
            Prim::Flatten(start, end) => flatten_shape(*start, *end, env, &ins[0]),
            Prim::Concat(axis) => concat_shape(*axis, env, ins),
            Prim::Slice(args) => slice_shape(args, env, &ins[0]),
            Prim::Unsqueeze(axes) => {
                let s = &ins[0];
                fixed(s, "unsqueeze")?;
                let mut dims = s.dims.clone();
                for &a in axes {
                    if a > dims.len() {
                        return Err("internal: unsqueeze axis out of range".into());
                    }
                    dims.insert(a, Dim::Known(1));
                }
                Ok(Shape::fixed(dims))
            }
            Prim::Stack(axis) => stack_shape(*axis, env, ins),
            _ => Err("internal: no shape rule".into()),
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        match p {
            Prim::Concat(_) | Prim::Stack(_) => {
                let names = dt_names(env, ins);
                let mut t = ins[0].dt;
                for (a, n) in ins.iter().zip(&names).skip(1) {
                    t = env.unify_dt(t, a.dt).map_err(|_| {
                        format!("dtype mismatch in `{}`: {} vs {n}", p.name(), names[0])
                    })?;
                }
                Ok(t)
            }
            _ => Ok(ins[0].dt),
        }
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        y: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        use Prim::*;
        match p {
            Transpose(perm) => {
                let Some(r) = b.rank(x[0]) else {
                    return b.unsupported("transpose of an open-rank tensor", x.len());
                };
                let perm: Vec<usize> = if perm.is_empty() {
                    (0..r).rev().collect()
                } else {
                    perm.clone()
                };
                let mut inv = vec![0; r];
                for (i, &p) in perm.iter().enumerate() {
                    inv[p] = i;
                }
                vec![Some(b.op(Transpose(inv), &[gy]))]
            }
            Reshape(_) | Flatten(..) | Unsqueeze(_) => vec![Some(b.op(ReshapeLike, &[gy, x[0]]))],
            Concat(axis) => (0..x.len())
                .map(|k| {
                    let mut args = vec![gy];
                    args.extend_from_slice(x);
                    Some(b.op(ConcatPart(*axis, k), &args))
                })
                .collect(),
            Slice(args) => vec![Some(b.op(SliceGrad(args.clone()), &[gy, x[0]]))],
            Stack(axis) => {
                // the gradient of operand k is the slice k of the new axis
                let Some(r) = b.rank(y) else {
                    return b.unsupported("stack of open-rank tensors", x.len());
                };
                let Some(ax) = norm_axis(*axis, r) else {
                    return b.unsupported("stack with an out-of-range axis", x.len());
                };
                (0..x.len())
                    .map(|k| {
                        let mut args = vec![SliceArg::Range(None, None, 1); ax];
                        args.push(SliceArg::Index(k as i64));
                        Some(b.op(Slice(args), &[gy]))
                    })
                    .collect()
            }
            _ => b.unsupported(p.name(), x.len()),
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (a, d) = (cx.a, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let x = &a[0];
        Ok(cx.checked(match p {
            Prim::Transpose(perm) => {
                let perm = perm.clone();
                quote!(#ops::transpose_to(&#x, &[#(#perm),*], #d))
            }
            Prim::Flatten(s, e) => {
                let (s, e) = (*s as isize, *e as isize);
                quote!(#ops::flatten_to(&#x, #s, #e, #d))
            }
            Prim::Concat(axis) => {
                let axis = *axis as isize;
                quote!(#ops::concat_to(&[#(#a.clone()),*], #axis, #d))
            }
            Prim::Slice(args) => {
                let args = args.iter().map(slice_arg_tokens);
                quote!(#ops::slice_to(&#x, &[#(#args),*], #d))
            }
            Prim::Unsqueeze(axes) => {
                let axes = axes.clone();
                quote!(#ops::unsqueeze_to(&#x, &[#(#axes),*], #d))
            }
            Prim::Stack(axis) => {
                let axis = *axis as isize;
                quote!(#ops::stack_to(&[#(#a.clone()),*], #axis, #d))
            }
            Prim::Reshape(_) => {
                // the target dims may be symbolic: their run-time values, `-1` for one unknown
                let s = cx.shape.ok_or("reshape: no shape")?;
                let mut dims = Vec::new();
                for d in &s.dims {
                    match (cx.dim)(d) {
                        Some(e) => dims.push(quote!((#e) as isize)),
                        None => dims.push(quote!(-1isize)),
                    }
                }
                if s.dims.iter().filter(|d| (cx.dim)(d).is_none()).count() > 1 {
                    return Err("reshape: more than one target dim is only known at run time; name them with symbols".into());
                }
                let at = cx.at;
                return Ok(quote!(#ops::reshape_to(&#x, &[#(#dims),*], #d) #at ?));
            }
            _ => return Err("internal: no call lowering".into()),
        }))
    }
}

/// `reshape(x, [dims])`: integers, symbols and at most one `-1`.
fn build_reshape(shape: Option<&AttrVal>) -> Result<Prim, String> {
    match shape {
        Some(AttrVal::List(xs)) => {
            let mut dims = Vec::new();
            for x in xs {
                dims.push(match x {
                    AttrVal::Int(-1) => ReshapeDim::Infer,
                    AttrVal::Int(n) if *n >= 0 => ReshapeDim::Dim(Dim::Known(*n as u64)),
                    AttrVal::Dim(d) => ReshapeDim::Dim(d.clone()),
                    _ => return Err("reshape dims must be integers, symbols or -1".into()),
                });
            }
            if dims.iter().filter(|d| **d == ReshapeDim::Infer).count() > 1 {
                return Err("reshape takes at most one -1".into());
            }
            Ok(Prim::Reshape(dims))
        }
        _ => Err("`reshape` needs a shape list: `reshape(x, [B, -1])`".into()),
    }
}

/// `x[...]`: the front end passes each index as a `#slice` attribute.
fn build_slice(attrs: &[(&str, AttrVal)]) -> Result<Prim, String> {
    let mut args = Vec::new();
    for (k, v) in attrs {
        if *k != "#slice" {
            continue;
        }
        match v {
            AttrVal::Slice(s) => args.push(s.clone()),
            AttrVal::Int(i) => args.push(SliceArg::Index(*i)),
            _ => return Err("slice arguments are ranges `a..b`, `..`, integers or `None`".into()),
        }
    }
    Ok(Prim::Slice(args))
}

fn transpose_shape(perm: &[usize], s: &Shape) -> Result<Shape, String> {
    fixed(s, "transpose")?;
    let r = s.dims.len();
    let perm: Vec<usize> = if perm.is_empty() {
        (0..r).rev().collect()
    } else {
        perm.to_vec()
    };
    let mut seen = vec![false; r];
    if perm.len() != r
        || perm
            .iter()
            .any(|&p| p >= r || std::mem::replace(&mut seen[p], true))
    {
        return Err(format!("axes {perm:?} are not a permutation of 0..{r}"));
    }
    Ok(Shape::fixed(
        perm.iter().map(|&p| s.dims[p].clone()).collect(),
    ))
}

fn reshape_shape(target: &[ReshapeDim], env: &mut Env, s: &Shape) -> Result<Shape, String> {
    let tot = if s.rest.is_some() {
        None
    } else {
        Some(total(env, &s.dims))
    };
    let known: Vec<Dim> = target
        .iter()
        .filter_map(|d| match d {
            ReshapeDim::Dim(d) => Some(d.clone()),
            ReshapeDim::Infer => None,
        })
        .collect();
    let mut out = Vec::new();
    let has_infer = known.len() < target.len();
    let inferred = if has_infer {
        match &tot {
            Some(t) => {
                let want = total(env, &known);
                if let (Dim::Known(a), Dim::Known(b)) = (env.dim(t), env.dim(&want)) {
                    if b == 0 || a % b != 0 {
                        return Err(format!(
                                "cannot reshape {a} elements into a shape with -1 and {b} other elements"
                            ));
                    }
                }
                divide(env, t, &want).unwrap_or_else(|| env.new_dim_var("_"))
            }
            None => env.new_dim_var("_"),
        }
    } else {
        if let Some(t) = &tot {
            let want = total(env, &known);
            if let (Dim::Known(a), Dim::Known(b)) = (env.dim(t), env.dim(&want)) {
                if a != b {
                    return Err(format!("cannot reshape {a} elements into {b}"));
                }
            }
        }
        Dim::Known(0)
    };
    for d in target {
        out.push(match d {
            ReshapeDim::Dim(d) => d.clone(),
            ReshapeDim::Infer => inferred.clone(),
        });
    }
    Ok(Shape::fixed(out))
}

fn flatten_shape(start: i64, end: i64, env: &mut Env, s: &Shape) -> Result<Shape, String> {
    fixed(s, "flatten")?;
    let r = s.dims.len().max(1);
    let (a, b) = match (norm_axis(start, r), norm_axis(end, r)) {
        (Some(a), Some(b)) if a <= b => (a, b),
        _ => {
            return Err(format!(
                "start_dim {start} / end_dim {end} out of range for rank {r}"
            ))
        }
    };
    if s.dims.is_empty() {
        return Ok(Shape::fixed(vec![Dim::Known(1)]));
    }
    let mut out = s.dims[..a].to_vec();
    out.push(total(env, &s.dims[a..=b]));
    out.extend_from_slice(&s.dims[b + 1..]);
    Ok(Shape::fixed(out))
}

fn concat_shape(axis: i64, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
    for s in ins {
        fixed(s, "concat")?;
    }
    let r = ins[0].dims.len();
    if ins.iter().any(|s| s.dims.len() != r) {
        return Err("all operands of concat need the same rank".into());
    }
    let ax = norm_axis(axis, r).ok_or_else(|| format!("axis {axis} out of range for rank {r}"))?;
    let mut out = ins[0].dims.clone();
    let mut sum: Option<u64> = Some(0);
    for s in ins {
        for (i, d) in s.dims.iter().enumerate() {
            if i != ax {
                out[i] = env.unify_dim(&out[i], d).map_err(|_| {
                    format!(
                        "dim {i} differs: {} vs {}",
                        show(env, &out[i]),
                        show(env, d)
                    )
                })?;
            }
        }
        sum = match (sum, env.dim(&s.dims[ax])) {
            (Some(acc), Dim::Known(n)) => match acc.checked_add(n) {
                Some(t) => Some(t),
                None => return Err("the concatenated dim overflows".into()),
            },
            _ => None,
        };
    }
    out[ax] = match sum {
        Some(n) => Dim::Known(n),
        None if ins.len() == 1 => ins[0].dims[ax].clone(),
        None => env.new_dim_var("_"),
    };
    Ok(Shape::fixed(out))
}

fn slice_shape(args: &[SliceArg], env: &mut Env, s: &Shape) -> Result<Shape, String> {
    fixed(s, "slice")?;
    let mut out = Vec::new();
    let mut i = 0;
    for a in args {
        match a {
            SliceArg::NewAxis => out.push(Dim::Known(1)),
            SliceArg::Index(idx) => {
                let d = s
                    .dims
                    .get(i)
                    .ok_or("too many indices for the tensor's rank")?;
                if let Dim::Known(n) = env.dim(d) {
                    if norm_axis(*idx, n as usize).is_none() {
                        return Err(format!("index {idx} is out of range for a dim of size {n}"));
                    }
                }
                i += 1;
            }
            SliceArg::Range(lo, hi, step) => {
                let d = s
                    .dims
                    .get(i)
                    .ok_or("too many indices for the tensor's rank")?;
                if *step == 0 {
                    return Err("slice step cannot be 0".into());
                }
                out.push(match env.dim(d) {
                    Dim::Known(n) => Dim::Known(slice_len(
                        i64::try_from(n).unwrap_or(i64::MAX),
                        *lo,
                        *hi,
                        *step,
                    )),
                    other if lo.is_none() && hi.is_none() && *step == 1 => other,
                    _ => env.new_dim_var("_"),
                });
                i += 1;
            }
        }
    }
    out.extend_from_slice(&s.dims[i.min(s.dims.len())..]);
    Ok(Shape::fixed(out))
}

fn stack_shape(axis: i64, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
    for s in ins {
        fixed(s, "stack")?;
    }
    let r = ins[0].dims.len();
    if ins.iter().any(|s| s.dims.len() != r) {
        return Err("all operands of stack need the same shape".into());
    }
    let ax = norm_axis(axis, r + 1)
        .ok_or_else(|| format!("axis {axis} out of range for rank {}", r + 1))?;
    let mut out = ins[0].dims.clone();
    for s in &ins[1..] {
        for (i, d) in s.dims.iter().enumerate() {
            out[i] = env.unify_dim(&out[i], d).map_err(|_| {
                format!(
                    "all operands of stack need the same shape; dim {i} differs: {} vs {}",
                    show(env, &out[i]),
                    show(env, d)
                )
            })?;
        }
    }
    out.insert(ax, Dim::Known(ins.len() as u64));
    Ok(Shape::fixed(out))
}

/// Python slice length (computed in `i128`: no bound, step or size overflows).
pub fn slice_len(n: i64, lo: Option<i64>, hi: Option<i64>, step: i64) -> u64 {
    let n = n.max(0) as i128;
    let step = step as i128;
    let wrap = |v: i64| {
        let v = v as i128;
        if v < 0 {
            v + n
        } else {
            v
        }
    };
    let (start, stop) = if step > 0 {
        let s = lo.map(|v| wrap(v).clamp(0, n)).unwrap_or(0);
        let e = hi.map(|v| wrap(v).clamp(0, n)).unwrap_or(n);
        (s, e)
    } else {
        let s = lo.map(|v| wrap(v).clamp(-1, n - 1)).unwrap_or(n - 1);
        let e = hi.map(|v| wrap(v).clamp(-1, n - 1)).unwrap_or(-1);
        (s, e)
    };
    let len = if step > 0 && stop > start {
        (stop - start + step - 1) / step
    } else if step < 0 && start > stop {
        (start - stop - step - 1) / -step
    } else {
        0
    };
    len as u64
}

/// `num / den` as a dim when `den`'s factors divide `num`'s.
fn divide(env: &Env, num: &Dim, den: &Dim) -> Option<Dim> {
    let (num, den) = (env.dim(num), env.dim(den));
    let parts = |d: &Dim| -> (u64, Vec<Dim>) {
        match d {
            Dim::Known(n) => (*n, vec![]),
            Dim::Prod(c, xs) => (*c, xs.clone()),
            other => (1, vec![other.clone()]),
        }
    };
    let (cn, mut an) = parts(&num);
    let (cd, ad) = parts(&den);
    if cd == 0 || cn % cd != 0 {
        return None;
    }
    for a in ad {
        let pos = an.iter().position(|x| *x == a)?;
        an.remove(pos);
    }
    Some(env.dim(&Dim::Prod(cn / cd, an)))
}

fn opt(v: &Option<i64>) -> TokenStream {
    match v {
        Some(i) => {
            let i = *i as isize;
            quote!(::std::option::Option::Some(#i))
        }
        None => quote!(::std::option::Option::None),
    }
}

/// A `mithril::rt::ops::SliceArg` expression.
pub fn slice_arg_tokens(s: &SliceArg) -> TokenStream {
    let ops = quote!(::mithril::rt::ops);
    match s {
        SliceArg::NewAxis => quote!(#ops::SliceArg::NewAxis),
        SliceArg::Index(i) => {
            let i = *i as isize;
            quote!(#ops::SliceArg::Index(#i))
        }
        SliceArg::Range(lo, hi, st) => {
            let lo = opt(lo);
            let hi = opt(hi);
            let st = *st as isize;
            quote!(#ops::SliceArg::Range { start: #lo, end: #hi, step: #st })
        }
    }
}

/// Resolves the symbolic bounds of slice node `id` (`x[(.., i..(H - k + 1 + i))]`) against the
/// sliced tensor's shape `input`: a bound over a dim known at compile time becomes that number;
/// a bound `D + c` over the sliced axis's own symbolic dim `D` becomes the index `c` counted
/// from the end (Python's negative index) when `c < 0`, else the end of the axis (bounds clamp).
pub fn resolve_slice_bounds(
    g: &mut Graph,
    id: usize,
    bounds: &[SymBound],
    input: &Shape,
) -> Result<(), String> {
    let Op::Prim(Prim::Slice(mut args)) = g.nodes[id].op.clone() else {
        return Ok(());
    };
    let input = g.env.shape(input);
    for b in bounds {
        // the axis the argument slices: one per index or range before it (new axes take none)
        let axis = args[..b.pos.min(args.len())]
            .iter()
            .filter(|a| !matches!(a, SliceArg::NewAxis))
            .count();
        let bound = g.env.dim(&b.dim);
        let value = match bound {
            Dim::Known(n) => i64::try_from(n)
                .ok()
                .and_then(|n| n.checked_add(b.offset))
                .ok_or("slice bound out of range")?,
            _ => {
                let axis_dim = match (&input.rest, input.dims.get(axis)) {
                    (None, Some(d)) => g.env.dim(d),
                    _ => {
                        return Err(format!(
                            "the slice bound `{}` is symbolic, which needs the sliced axis {axis} to be a declared dim of {}",
                            show_bound(g, b),
                            g.describe(g.nodes[id].args[0])
                        ))
                    }
                };
                if axis_dim != bound {
                    return Err(format!(
                        "the slice bound `{}` is over `{}`, but axis {axis} of {} is `{}`; a symbolic bound must be relative to the dim of the axis it slices",
                        show_bound(g, b),
                        g.fmt_dim(&b.dim),
                        g.describe(g.nodes[id].args[0]),
                        g.fmt_dim(&axis_dim),
                    ));
                }
                if b.offset < 0 {
                    b.offset
                } else {
                    i64::MAX
                }
            }
        };
        if let Some(SliceArg::Range(lo, hi, _)) = args.get_mut(b.pos) {
            if b.hi {
                *hi = Some(value);
            } else {
                *lo = Some(value);
            }
        }
    }
    g.nodes[id].op = Op::Prim(Prim::Slice(args));
    Ok(())
}

fn show_bound(g: &Graph, b: &SymBound) -> String {
    let d = g.fmt_dim(&b.dim);
    match b.offset {
        0 => d,
        c if c < 0 => format!("{d} - {}", -(c as i128)),
        c => format!("{d} + {c}"),
    }
}
