//! Linear algebra over the last two axes: `cholesky`, `eigvalsh`, `solve_triangular`, and the
//! triangles `tril` / `triu`. CPU: `mithril::rt::ops::*_to` over `mithril_kernels::linalg` (one
//! matrix at a time, in f64).

use super::attrs::{bool_attr, get, int_attr, sig, AttrVal, Sig, UN};
use super::grad::Builder;
use super::plan::{self as pt, PlanCx};
use super::rules::{dt_names, float_only, show, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Dim, Env, NodeId, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The linear-algebra family.
pub struct Rules;

impl Family for Rules {
    fn plan(&self, p: &Prim, _: &PlanCx<'_>) -> Result<String, String> {
        Ok(match p {
            Prim::Tril(k) => format!("tril {k}"),
            Prim::Triu(k) => format!("triu {k}"),
            Prim::Cholesky => "cholesky".into(),
            Prim::Eigvalsh => "eigvalsh".into(),
            Prim::SolveTriangular { upper, left, trans } => format!(
                "solve_tri {} {} {}",
                pt::flag(*upper),
                pt::flag(*left),
                pt::flag(*trans)
            ),
            _ => return Err("internal: not a linalg op".into()),
        })
    }

    fn names(&self) -> &'static [&'static str] {
        &["tril", "triu", "cholesky", "eigvalsh", "solve_triangular"]
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        Some(match name {
            "tril" | "triu" => sig(UN, &["diagonal"]),
            "cholesky" | "eigvalsh" => sig(UN, &[]),
            "solve_triangular" => sig(&["a", "b"], &["upper", "left"]),
            _ => return None,
        })
    }

    fn build(&self, name: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        let get = |k: &str| get(attrs, k);
        Ok(match name {
            "tril" => Prim::Tril(int_attr(get("diagonal"), "diagonal", 0)?),
            "triu" => Prim::Triu(int_attr(get("diagonal"), "diagonal", 0)?),
            "cholesky" => Prim::Cholesky,
            "eigvalsh" => Prim::Eigvalsh,
            _ => Prim::SolveTriangular {
                upper: bool_attr(get("upper"), "upper", false)?,
                left: bool_attr(get("left"), "left", true)?,
                trans: false,
            },
        })
    }

    fn name(&self, p: &Prim) -> &'static str {
        match p {
            Prim::Tril(_) => "tril",
            Prim::Triu(_) => "triu",
            Prim::Cholesky => "cholesky",
            Prim::Eigvalsh => "eigvalsh",
            _ => "solve_triangular",
        }
    }

    fn shape(&self, p: &Prim, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        match p {
            Prim::Tril(_) | Prim::Triu(_) => {
                if ins[0].dims.len() < 2 {
                    return Err(format!(
                        "`{}` needs a matrix or a batch of matrices (rank >= 2 named dims)",
                        p.name()
                    ));
                }
                Ok(ins[0].clone())
            }
            Prim::Cholesky => {
                square_shape(env, &ins[0], p.name())?;
                Ok(ins[0].clone())
            }
            Prim::Eigvalsh => {
                square_shape(env, &ins[0], p.name())?;
                let mut s = ins[0].clone();
                s.dims.pop();
                Ok(s)
            }
            Prim::SolveTriangular { left, .. } => solve_shape(*left, env, ins),
            _ => Err("internal: no shape rule".into()),
        }
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        match p {
            Prim::Cholesky | Prim::Eigvalsh => float_only(p.name(), env, ins, default),
            Prim::SolveTriangular { .. } => {
                let names = dt_names(env, ins);
                let t = env.unify_dt(ins[0].dt, ins[1].dt).map_err(|_| {
                    format!(
                        "dtype mismatch in `solve_triangular`: {} vs {}",
                        names[0], names[1]
                    )
                })?;
                match env.dt(t) {
                    DT::Known(x) if !x.is_float() => Err(format!(
                        "`solve_triangular` needs float tensors, found {x}; use `cast(x, dtype = f32)` first"
                    )),
                    other => Ok(other),
                }
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
            Tril(k) => vec![Some(b.op(Tril(*k), &[gy]))],
            Triu(k) => vec![Some(b.op(Triu(*k), &[gy]))],
            Cholesky => cholesky_vjp(b, x, y, gy),
            Eigvalsh => {
                // Ā = V diag(ḡ) Vᵀ (V: the eigenvectors)
                let Some(r) = b.rank(x[0]) else {
                    return b.unsupported("eigvalsh of an open-rank tensor", x.len());
                };
                let v = b.op(EighVectors, &[x[0]]);
                let g = b.op(Unsqueeze(vec![r - 2]), &[gy]);
                let vg = b.mul(v, g);
                vec![Some(b.op(
                    Matmul {
                        ta: false,
                        tb: true,
                    },
                    &[vg, v],
                ))]
            }
            SolveTriangular { upper, left, trans } => {
                solve_triangular_vjp(b, (*upper, *left, *trans), x, y, gy)
            }
            _ => b.unsupported(p.name(), x.len()),
        }
    }

    fn call(&self, p: &Prim, cx: &CallCx<'_>) -> Result<TokenStream, String> {
        let (a, d) = (cx.a, cx.d);
        let ops = quote!(::mithril::rt::ops);
        let x = &a[0];
        Ok(cx.checked(match p {
            Prim::Tril(k) => quote!(#ops::tril_to(&#x, #k, #d)),
            Prim::Triu(k) => quote!(#ops::triu_to(&#x, #k, #d)),
            Prim::Cholesky => quote!(#ops::cholesky_to(&#x, #d)),
            Prim::Eigvalsh => quote!(#ops::eigvalsh_to(&#x, #d)),
            Prim::SolveTriangular { upper, left, trans } => {
                let y = &a[1];
                quote!(#ops::solve_triangular_to(&#x, &#y, #upper, #left, #trans, #d))
            }
            _ => return Err("internal: no call lowering".into()),
        }))
    }
}

fn solve_shape(left: bool, env: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
    let (a, b) = (&ins[0], &ins[1]);
    let n = square_shape(env, a, "solve_triangular")?;
    let (na, nb) = (a.dims.len(), b.dims.len());
    if nb < 2 {
        return Err("the right-hand side `b` needs rank >= 2 ([..., n, k]; a vector `v` is `reshape(v, [n, 1])`)".into());
    }
    if a.rest != b.rest || na != nb {
        return Err("`a` and `b` need the same batch dims".into());
    }
    for i in 0..na - 2 {
        env.unify_dim(&a.dims[i], &b.dims[i]).map_err(|_| {
            format!(
                "`a` and `b` need the same batch dims; dim {i} differs: {} vs {}",
                show(env, &a.dims[i]),
                show(env, &b.dims[i])
            )
        })?;
    }
    let inner = if left {
        &b.dims[nb - 2]
    } else {
        &b.dims[nb - 1]
    };
    env.unify_dim(&n, inner).map_err(|_| {
        format!(
            "`a` is {n} x {n}, so `b` needs {} dim {} (left = {left}), found {}",
            if left { "row" } else { "column" },
            show(env, &n),
            show(env, inner),
            n = show(env, &n),
        )
    })?;
    Ok(b.clone())
}

/// Checks a tensor of square matrices (`[..., n, n]`) and returns `n`.
pub fn square_shape(env: &mut Env, s: &Shape, op: &str) -> Result<Dim, String> {
    let r = s.dims.len();
    if r < 2 {
        return Err(format!(
            "`{op}` needs square matrices [..., n, n] (rank >= 2 named dims)"
        ));
    }
    env.unify_dim(&s.dims[r - 2], &s.dims[r - 1]).map_err(|_| {
        format!(
            "`{op}` needs square matrices, but the last two dims are {} and {}",
            show(env, &s.dims[r - 2]),
            show(env, &s.dims[r - 1])
        )
    })
}

/// The gradient of `cholesky`.
fn cholesky_vjp(b: &mut Builder, x: &[NodeId], y: NodeId, gy: NodeId) -> Vec<Option<NodeId>> {
    use Prim::*;
    // A = L Lᵀ: Ā = L⁻ᵀ Φ L⁻¹ with Φ = ½ (P + tril(P, -1)ᵀ), P = tril(Lᵀ L̄) (the
    // symmetric gradient, as PyTorch's; Murray 2016)
    let Some(r) = b.rank(y) else {
        return b.unsupported("cholesky of an open-rank tensor", x.len());
    };
    let p0 = b.op(
        Matmul {
            ta: true,
            tb: false,
        },
        &[y, gy],
    );
    let p = b.op(Tril(0), &[p0]);
    let low = b.op(Tril(-1), &[p]);
    let low_t = b.op(Transpose(swap_last2(r)), &[low]);
    let sum = b.bin(Add, p, low_t);
    let phi = b.mul_lit(sum, 0.5);
    let lt = SolveTriangular {
        upper: false,
        left: true,
        trans: true,
    };
    let s1 = b.op(lt, &[y, phi]);
    let rt = SolveTriangular {
        upper: false,
        left: false,
        trans: false,
    };
    vec![Some(b.op(rt, &[y, s1]))]
}

/// The gradient of `solve_triangular` (`op(A) X = B` or `X op(A) = B`).
fn solve_triangular_vjp(
    b: &mut Builder,
    (upper, left, trans): (bool, bool, bool),
    x: &[NodeId],
    y: NodeId,
    gy: NodeId,
) -> Vec<Option<NodeId>> {
    use Prim::*;
    // op(A) X = B: B̄ = op(A)⁻ᵀ X̄, op(A)‾ = -B̄ Xᵀ; X op(A) = B: B̄ = X̄ op(A)⁻ᵀ,
    // op(A)‾ = -Xᵀ B̄; Ā is op(A)‾ (transposed back when `trans`) on A's triangle
    let gb = b.op(
        SolveTriangular {
            upper,
            left,
            trans: !trans,
        },
        &[x[0], gy],
    );
    let prod = match (left, trans) {
        (true, false) => b.op(
            Matmul {
                ta: false,
                tb: true,
            },
            &[gb, y],
        ),
        (true, true) => b.op(
            Matmul {
                ta: false,
                tb: true,
            },
            &[y, gb],
        ),
        (false, false) => b.op(
            Matmul {
                ta: true,
                tb: false,
            },
            &[y, gb],
        ),
        (false, true) => b.op(
            Matmul {
                ta: true,
                tb: false,
            },
            &[gb, y],
        ),
    };
    let neg = b.neg(prod);
    let ga = b.op(if upper { Triu(0) } else { Tril(0) }, &[neg]);
    vec![Some(ga), Some(gb)]
}

/// The permutation of `0..r` that swaps the last two axes.
fn swap_last2(r: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..r).collect();
    p.swap(r - 2, r - 1);
    p
}
