//! `matmul`: NumPy's matrix product (vectors as rows / columns, broadcast batch dims), with the
//! transpose flags autodiff and the epilogue pass use. CPU: `mithril::rt::ops::matmul_to` (the
//! packed GEMM of `mithril_kernels::gemm`); CUDA: cuBLAS through the generator's matmul helper
//! (rank 2, or batches: `exec::matmul` folds `[.., M, K] @ [K, N]` into one GEMM, else a
//! strided-batched GEMM; `tf32` / `amp`), which `FusedMatmul` shares.
//!
//! Backend fast path outside this module: `static_shapes: true` (`backends/cpu_static.rs`)
//! lowers a 2-D matmul itself, with the `FusedMatmul` the epilogue pass makes of it, as one
//! GEMM call over slices with constant dims (`mithril::rt::fixed::matmul*`); any other matmul
//! makes that backend fall back to the generic body.

use super::attrs::{sig, AttrVal, Sig, BIN};
use super::cuda::CudaCx;
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::{broadcast, dt_names, show, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Env, NodeId, Shape, DT};
use crate::prims::{Prim, ReduceKind};
use proc_macro2::TokenStream;
use quote::quote;

/// The matmul family.
pub struct Rules;

impl Family for Rules {
    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        // cuBLAS (the generator's matmul: 2-D operands, the precision options)
        let Prim::Matmul { ta, tb } = p else {
            return Err("there is no CUDA kernel for it yet".into());
        };
        let (prod, pdt) = cx.matmul(*ta, *tb)?;
        if pdt != cx.out_dt() {
            return Err("internal: matmul product type".into());
        }
        Ok(prod)
    }

    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        match p {
            Prim::Matmul { ta, tb } => Ok(format!("mm {} {}", pt::flag(*ta), pt::flag(*tb))),
            _ => Err("internal: not a matmul".into()),
        }
    }

    fn names(&self) -> &'static [&'static str] {
        &["matmul"]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        (name == "matmul").then(|| sig(BIN, &[]))
    }

    fn build(&self, _: &str, _: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        Ok(Prim::Matmul {
            ta: false,
            tb: false,
        })
    }

    fn name(&self, _: &Prim) -> &'static str {
        "matmul"
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        let Prim::Matmul { ta, tb } = p else {
            return Err("internal: no shape rule".into());
        };
        shape(*ta, *tb, env, ins)
    }

    fn dtype(&self, _: &Prim, env: &mut Env, ins: &[ArgDt], _: DType) -> Result<DT, String> {
        let names = dt_names(env, ins);
        let (a, b) = (ins[0].dt, ins[1].dt);
        let t = env
            .unify_dt(a, b)
            .map_err(|_| format!("dtype mismatch in `matmul`: {} vs {}", names[0], names[1]))?;
        if let DT::Known(DType::Bool) = env.dt(t) {
            return Err("`matmul` is not defined on bool tensors".into());
        }
        Ok(t)
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        x: &[NodeId],
        _: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        use Prim::*;
        let Matmul { ta, tb } = p else {
            return b.unsupported(p.name(), x.len());
        };
        let (ta, tb) = (*ta, *tb);
        // (an operand of open rank has at least two named dims: the general rule applies)
        let (ra, rb) = (b.rank(x[0]), b.rank(x[1]));
        if ra == Some(1) || rb == Some(1) {
            let (Some(ra), Some(rb)) = (ra, rb) else {
                return b.unsupported("matmul of a vector with an open-rank operand", x.len());
            };
            return matmul_vector_vjp(b, x, (ra, rb), (ta, tb), gy);
        }
        let ga = if !ta {
            b.op(Matmul { ta: false, tb: !tb }, &[gy, x[1]])
        } else {
            b.op(Matmul { ta: tb, tb: true }, &[x[1], gy])
        };
        let gb = if !tb {
            b.op(Matmul { ta: !ta, tb: false }, &[x[0], gy])
        } else {
            b.op(Matmul { ta: true, tb: ta }, &[gy, x[0]])
        };
        let ga = b.unbroadcast(ga, x[0]);
        let gb = b.unbroadcast(gb, x[1]);
        vec![Some(ga), Some(gb)]
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let ops = quote!(::mithril::rt::ops);
        let Prim::Matmul { ta, tb } = p else {
            return Err("internal: no call lowering".into());
        };
        let (x, y, d) = (&cx.a[0], &cx.a[1], cx.d);
        Ok(cx.checked(quote!(#ops::matmul_to(&#x, &#y, #ta, #tb, #d))))
    }
}

/// The shape rule of `matmul` with transpose flags `ta`, `tb`.
fn shape(ta: bool, tb: bool, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
    let (mut a, mut b) = (ins[0].clone(), ins[1].clone());
    if ta && a.dims.len() >= 2 {
        let n = a.dims.len();
        a.dims.swap(n - 1, n - 2);
    }
    if tb && b.dims.len() >= 2 {
        let n = b.dims.len();
        b.dims.swap(n - 1, n - 2);
    }
    let a1 = a.dims.len() == 1 && a.rest.is_none();
    let b1 = b.dims.len() == 1 && b.rest.is_none();
    if a.dims.is_empty() || b.dims.is_empty() {
        return Err("matmul needs operands of rank >= 1".into());
    }
    if a.rest.is_some() && a.dims.len() == 1 && b.rest.is_none() && b.dims.len() <= 2 {
        // `[..., K] @ [K, N]` (Linear on a rank-polymorphic input): whether `...`
        // is empty (a vector) or holds batch dims and a row dim, the result is
        // `[..., N]` (`[...]` for a vector `b`)
        let (k_a, k_b) = (a.dims[0].clone(), b.dims[0].clone());
        env.unify_dim(&k_a, &k_b).map_err(|_| {
            format!(
                "inner dimensions differ: {} != {}",
                show(env, &k_a),
                show(env, &k_b)
            )
        })?;
        return Ok(Shape {
            rest: a.rest,
            dims: b.dims[1..].to_vec(),
        });
    }
    if (!a1 && a.dims.len() < 2) || (!b1 && b.dims.len() < 2) {
        return Err(
            "an operand of matmul with open rank (`...`) needs at least 2 named dims".into(),
        );
    }
    let k_a = a.dims[a.dims.len() - 1].clone();
    let k_b = if b1 {
        b.dims[0].clone()
    } else {
        b.dims[b.dims.len() - 2].clone()
    };
    env.unify_dim(&k_a, &k_b).map_err(|_| {
        format!(
            "inner dimensions differ: {} != {}",
            show(env, &k_a),
            show(env, &k_b)
        )
    })?;
    let m = if a1 {
        None
    } else {
        Some(a.dims[a.dims.len() - 2].clone())
    };
    let n = if b1 {
        None
    } else {
        Some(b.dims[b.dims.len() - 1].clone())
    };
    let batch_a = Shape {
        rest: a.rest,
        dims: a.dims[..a.dims.len().saturating_sub(2)].to_vec(),
    };
    let batch_b = Shape {
        rest: b.rest,
        dims: b.dims[..b.dims.len().saturating_sub(2)].to_vec(),
    };
    let batch_a = if a1 { Shape::scalar() } else { batch_a };
    let batch_b = if b1 { Shape::scalar() } else { batch_b };
    let mut out = broadcast(env, &[batch_a, batch_b])
        .map_err(|e| format!("batch dims do not broadcast ({e})"))?;
    out.dims.extend(m);
    out.dims.extend(n);
    Ok(out)
}

/// The gradients of a matmul with a 1-D operand (a vector on the left is a row, on the right a
/// column; a vector's transposed flag means nothing), as broadcast products and sums.
fn matmul_vector_vjp(
    b: &mut Builder,
    x: &[NodeId],
    (ra, rb): (usize, usize),
    (ta, tb): (bool, bool),
    gy: NodeId,
) -> Vec<Option<NodeId>> {
    use Prim::*;
    let sum_but = |b: &mut Builder, t: NodeId, r: usize, keep: usize| {
        let axes: Vec<i64> = (0..r).filter(|&i| i != keep).map(|i| i as i64).collect();
        b.op(Reduce(ReduceKind::Sum, axes, false), &[t])
    };
    match (ra, rb) {
        (1, 1) => vec![Some(b.mul(gy, x[1])), Some(b.mul(gy, x[0]))],
        (_, 1) => {
            // y[.., m] = Σ_k a[.., m, k] v[k] (`a` laid out [.., k, m] when transposed)
            let k = if ta { ra - 2 } else { ra - 1 };
            let g = b.op(Unsqueeze(vec![k]), &[gy]);
            let v = if ta {
                b.op(Unsqueeze(vec![1]), &[x[1]])
            } else {
                x[1]
            };
            let ga = b.mul(g, v);
            let t = b.mul(g, x[0]);
            let gv = sum_but(b, t, ra, k);
            vec![Some(ga), Some(gv)]
        }
        _ => {
            // y[.., n] = Σ_k v[k] m[.., k, n] (`m` laid out [.., n, k] when transposed)
            let k = if tb { rb - 1 } else { rb - 2 };
            let g = b.op(Unsqueeze(vec![k]), &[gy]);
            let v = if tb {
                x[0]
            } else {
                b.op(Unsqueeze(vec![1]), &[x[0]])
            };
            let gm = b.mul(g, v);
            let t = b.mul(g, x[1]);
            let gv = sum_but(b, t, rb, k);
            vec![Some(gv), Some(gm)]
        }
    }
}
