//! Reductions: `sum`, `mean`, `max`, `min`, `prod` over axes, `variance`, and `argmax` /
//! `argmin`. CPU: the `*_to` reductions of `mithril::rt::ops` (row reductions of
//! `mithril_kernels::rows`).

use super::attrs::{axes_attr, bool_attr, get, int_attr, sig, AttrVal, Sig, UN};
use super::cuda::{self, CudaCx};
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::{known, norm_axis, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Dim, Env, NodeId, Shape, DT};
use crate::prims::{Prim, ReduceKind};
use proc_macro2::TokenStream;
use quote::quote;

/// The reduction family.
pub struct Rules;

impl Family for Rules {
    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        // over trailing axes (sum / mean / max / min) or leading ones (sum)
        let Prim::Reduce(kind, axes, keep) = p else {
            return Err("there is no CUDA kernel for it yet".into());
        };
        let (kind, keep) = (*kind, *keep);
        let c = cuda::rt();
        cuda::float3(cx.dt(0), "a reduction")?;
        let r = cx.dims(0)?.len();
        let mut ax: Vec<usize> = if axes.is_empty() {
            (0..r).collect()
        } else {
            axes.iter()
                .map(|&a| {
                    if a < 0 {
                        (a + r as i64) as usize
                    } else {
                        a as usize
                    }
                })
                .collect()
        };
        ax.sort_unstable();
        ax.dedup();
        let ra = cx.r(0);
        let trailing = ax.iter().enumerate().all(|(i, &a)| a == r - ax.len() + i);
        let leading = ax.iter().enumerate().all(|(i, &a)| a == i);
        let rk = match kind {
            ReduceKind::Sum => Some(quote!(#c::RowReduce::Sum)),
            ReduceKind::Mean => Some(quote!(#c::RowReduce::Mean)),
            ReduceKind::Max => Some(quote!(#c::RowReduce::Max)),
            ReduceKind::Min => Some(quote!(#c::RowReduce::Min)),
            ReduceKind::Prod => None,
        };
        let rk_sum = quote!(#c::RowReduce::Sum);
        // the axes as a leading run `0..lead` and a trailing run `split..r`, both non-empty
        let lead = ax.iter().enumerate().take_while(|&(i, &a)| a == i).count();
        let split = r - (ax.len() - lead);
        let both = (lead > 0
            && lead < ax.len()
            && ax[lead..].iter().enumerate().all(|(i, &a)| a == split + i))
        .then_some((lead, split));
        Ok(match rk {
            Some(rk) if trailing => {
                let split = r - ax.len();
                quote!(#c::exec::reduce_trailing(__dev, #ra, #rk, #split, #keep)?)
            }
            Some(_) if leading && kind == ReduceKind::Sum => {
                let split = ax.len();
                quote!(#c::exec::sum_leading(__dev, #ra, #split, #keep)?)
            }
            // leading and trailing axes at once (a conv bias's gradient: axes 0, 2, 3 of
            // [N, C, H, W]): the trailing sum, then the leading one
            Some(_) if kind == ReduceKind::Sum && both.is_some() => {
                let (lead, split) = both.unwrap_or_default();
                quote!({
                    let __t = #c::exec::reduce_trailing(__dev, #ra, #rk_sum, #split, #keep)?;
                    #c::exec::sum_leading(__dev, &__t, #lead, #keep)?
                })
            }
            _ => {
                return Err(format!(
                    "{} over axes {ax:?} of a rank-{r} tensor (lowered: sum / mean / max / min over trailing axes, sum over leading axes or over leading and trailing ones)",
                    p.name()
                ))
            }
        })
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        Ok(match p {
            Prim::Reduce(kind, ax, keep) => {
                let k = match kind {
                    ReduceKind::Sum => "sum",
                    ReduceKind::Mean => "mean",
                    ReduceKind::Max => "max",
                    ReduceKind::Min => "min",
                    ReduceKind::Prod => "prod",
                };
                format!("reduce {k} {} {}", pt::list(ax), pt::flag(*keep))
            }
            Prim::Variance(ax, keep, corr) => format!(
                "variance {} {} {}",
                pt::list(ax),
                pt::flag(*keep),
                pt::f64_lit(*corr)
            ),
            Prim::ArgReduce { max, axis, keepdim } => {
                format!("argreduce {} {axis} {}", pt::flag(*max), pt::flag(*keepdim))
            }
            _ => return Err("internal: not a reduction".into()),
        })
    }

    fn names(&self) -> &'static [&'static str] {
        &[
            "sum", "mean", "max", "min", "prod", "variance", "argmax", "argmin",
        ]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        Some(match name {
            "sum" | "mean" | "max" | "min" | "prod" => sig(UN, &["axis", "keepdim"]),
            "variance" => sig(UN, &["axis", "keepdim", "correction"]),
            "argmax" | "argmin" => sig(UN, &["axis", "keepdim"]),
            _ => return None,
        })
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        let get = |k: &str| get(attrs, k);
        Ok(match name {
            "variance" => Prim::Variance(
                axes_attr(get("axis"))?,
                bool_attr(get("keepdim"), "keepdim", false)?,
                super::attrs::float_attr(get("correction"), "correction", 0.0)?,
            ),
            "argmax" | "argmin" => Prim::ArgReduce {
                max: name == "argmax",
                axis: int_attr(get("axis"), "axis", -1)?,
                keepdim: bool_attr(get("keepdim"), "keepdim", false)?,
            },
            _ => {
                let kind = match name {
                    "sum" => ReduceKind::Sum,
                    "mean" => ReduceKind::Mean,
                    "max" => ReduceKind::Max,
                    "min" => ReduceKind::Min,
                    _ => ReduceKind::Prod,
                };
                Prim::Reduce(
                    kind,
                    axes_attr(get("axis"))?,
                    bool_attr(get("keepdim"), "keepdim", false)?,
                )
            }
        })
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::Reduce(k, ..) => match k {
                ReduceKind::Sum => "sum",
                ReduceKind::Mean => "mean",
                ReduceKind::Max => "max",
                ReduceKind::Min => "min",
                ReduceKind::Prod => "prod",
            },
            Prim::Variance(..) => "variance",
            Prim::ArgReduce { max: true, .. } => "argmax",
            _ => "argmin",
        }
    }

    fn shape(&self, p: &Prim, _: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Reduce(_, axes, keepdim) | Prim::Variance(axes, keepdim, _) => {
                reduce_shape(&ins[0], axes, *keepdim)
            }
            Prim::ArgReduce { axis, keepdim, .. } => reduce_shape(&ins[0], &[*axis], *keepdim),
            _ => Err("internal: no shape rule".into()),
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        match p {
            Prim::Reduce(kind, ..) => match (kind, known(env, &ins[0])) {
                (ReduceKind::Mean, Some(t)) if !t.is_float() => Ok(DT::Known(default)),
                (ReduceKind::Sum | ReduceKind::Prod, Some(DType::Bool)) => {
                    Ok(DT::Known(DType::I64))
                }
                (ReduceKind::Max | ReduceKind::Min, Some(DType::Bool)) => {
                    Err(format!("`{}` is not defined on bool tensors", p.name()))
                }
                _ => Ok(ins[0].dt),
            },
            Prim::Variance(..) => match known(env, &ins[0]) {
                Some(t) if !t.is_float() => Ok(DT::Known(default)),
                _ => Ok(ins[0].dt),
            },
            Prim::ArgReduce { .. } => Ok(DT::Known(DType::I64)),
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
            Reduce(kind, axes, keepdim) => vjp_reduce(b, *kind, axes, *keepdim, x, y, gy),
            Variance(axes, keepdim, corr) => {
                // d var / dx = 2 (x - mean) / (N - correction)
                let mean = b.op(Reduce(ReduceKind::Mean, axes.clone(), true), &[x[0]]);
                let c = b.bin(Sub, x[0], mean);
                let n = b.op(SizeRatio, &[x[0], y]);
                let corr_l = b.lit(*corr);
                let den = b.bin(Sub, n, corr_l);
                let e = b.expand(gy, x[0], axes, *keepdim);
                let t = b.mul(e, c);
                let t2 = b.mul_lit(t, 2.0);
                vec![Some(b.bin(Div, t2, den))]
            }
            _ => vec![None],
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (a, in_dt, out_rust, d) = (cx.a, cx.in_dt, cx.out_rust, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let x = &a[0];
        let axes = |v: &Vec<i64>| {
            let v: Vec<isize> = v.iter().map(|&i| i as isize).collect();
            quote!(&[#(#v),*])
        };
        Ok(cx.checked(match p {
            Prim::Reduce(kind, ax, keep) => {
                let ax = axes(ax);
                let f = match kind {
                    ReduceKind::Sum => quote!(sum_to),
                    ReduceKind::Mean => quote!(mean_to),
                    ReduceKind::Max => quote!(max_to),
                    ReduceKind::Min => quote!(min_to),
                    ReduceKind::Prod => quote!(prod_to),
                };
                // `mean` of integers and `sum`/`prod` of bools change the dtype: convert first
                let widen = match (kind, in_dt.first()) {
                    (ReduceKind::Mean, Some(t)) => !t.is_float(),
                    (ReduceKind::Sum | ReduceKind::Prod, Some(t)) => *t == DType::Bool,
                    _ => false,
                };
                if widen {
                    quote!(#ops::#f(&#ops::cast::<_, #out_rust>(&#x).view(), #ax, #keep, #d))
                } else {
                    quote!(#ops::#f(&#x, #ax, #keep, #d))
                }
            }
            Prim::Variance(ax, keep, corr) => {
                let ax = axes(ax);
                if in_dt.first().is_some_and(|t| !t.is_float()) {
                    quote!(#ops::variance_to(&#ops::cast::<_, #out_rust>(&#x).view(), #ax, #keep, #corr, #d))
                } else {
                    quote!(#ops::variance_to(&#x, #ax, #keep, #corr, #d))
                }
            }
            Prim::ArgReduce { max, axis, keepdim } => {
                let axis = *axis as isize;
                if *max {
                    quote!(#ops::argmax_to(&#x, #axis, #keepdim, #d))
                } else {
                    quote!(#ops::argmin_to(&#x, #axis, #keepdim, #d))
                }
            }
            _ => return Err("internal: no call lowering".into()),
        }))
    }
}

/// The gradient of `sum` / `mean` / `max` / `min` / `prod` over `axes`.
fn vjp_reduce(
    b: &mut Builder,
    kind: ReduceKind,
    axes: &[i64],
    keepdim: bool,
    x: &[NodeId],
    y: NodeId,
    gy: NodeId,
) -> Vec<Option<NodeId>> {
    use Prim::*;
    let e = b.expand(gy, x[0], axes, keepdim);
    match kind {
        ReduceKind::Sum => vec![Some(e)],
        ReduceKind::Mean => {
            let n = b.op(SizeRatio, &[x[0], y]);
            vec![Some(b.bin(Div, e, n))]
        }
        ReduceKind::Max | ReduceKind::Min => {
            // tied extremes share the gradient equally (as PyTorch's amax/amin)
            let ye = b.expand(y, x[0], axes, keepdim);
            let c = b.bin(Eq, x[0], ye);
            let xdt = b.g.dtype_of(x[0]).unwrap_or(b.default);
            let cf = b.op(Cast(xdt), &[c]);
            let cnt = b.op(Reduce(ReduceKind::Sum, axes.to_vec(), true), &[cf]);
            let share = b.bin(Div, e, cnt);
            vec![Some(b.mask(c, share))]
        }
        ReduceKind::Prod => {
            // ∏_{j≠i} x_j without dividing by zero: from the product of the non-zero
            // elements and how many are zero (one zero: only it gets a gradient)
            let xdt = b.g.dtype_of(x[0]).unwrap_or(b.default);
            let l0 = b.lit(0.0);
            let z = b.bin(Eq, x[0], l0);
            let l1 = b.lit(1.0);
            let x1 = b.op(Where, &[z, l1, x[0]]);
            let p1 = b.op(Reduce(ReduceKind::Prod, axes.to_vec(), true), &[x1]);
            let zf = b.op(Cast(xdt), &[z]);
            let nz = b.op(Reduce(ReduceKind::Sum, axes.to_vec(), true), &[zf]);
            let l0 = b.lit(0.0);
            let no_zero = b.bin(Eq, nz, l0);
            let l1 = b.lit(1.0);
            let one_zero = b.bin(Eq, nz, l1);
            let q = b.bin(Div, p1, x1);
            let at_nonzero = b.mask(no_zero, q);
            let at_zero = b.mask(one_zero, p1);
            let d = b.op(Where, &[z, at_zero, at_nonzero]);
            vec![Some(b.mul(e, d))]
        }
    }
}

fn reduce_shape(s: &Shape, axes: &[i64], keepdim: bool) -> Result<Shape, String> {
    if s.rest.is_some() {
        if axes.is_empty() {
            return if keepdim {
                Err("keepdim over all axes needs a known rank".into())
            } else {
                Ok(Shape::scalar())
            };
        }
        if axes
            .iter()
            .any(|a| *a >= 0 || a.unsigned_abs() > s.dims.len() as u64)
        {
            return Err(
                "after `...` only negative axes within the named dims can be reduced".into(),
            );
        }
    }
    let r = s.dims.len();
    let mut mask = vec![false; r];
    if axes.is_empty() {
        mask.iter_mut().for_each(|m| *m = true);
    }
    for &a in axes {
        let i = norm_axis(a, r).ok_or_else(|| format!("axis {a} out of range for rank {r}"))?;
        if mask[i] && !axes.is_empty() {
            return Err(format!("axis {a} given twice"));
        }
        mask[i] = true;
    }
    let mut dims = Vec::new();
    for (i, d) in s.dims.iter().enumerate() {
        if !mask[i] {
            dims.push(d.clone());
        } else if keepdim {
            dims.push(Dim::Known(1));
        }
    }
    Ok(Shape {
        rest: if axes.is_empty() { None } else { s.rest },
        dims,
    })
}
