//! What `static_shapes: true` models call: every dim is a constant of the generated code, every
//! value a contiguous slice.
//!
//! A model compiled with `static_shapes: true` whose forward graph holds only elementwise
//! groups and 2-D matmuls (with or without a fused epilogue) — MLPs, gated and residual
//! blocks — gets an `evaluate` that never builds an `ndarray` view on its hot path: inputs and
//! params are checked against constant shapes ([`check`]) and read as slices ([`contiguous`]),
//! intermediate values are slices of the planned arena ([`crate::Workspace::slice`]), fused
//! elementwise groups call the [`ew`] drivers with their broadcast pattern ([`Src`]) decided at
//! compile time, and matmuls call the packed GEMM with constant `m`, `n`, `k` and strides
//! ([`matmul`], [`matmul_plain`]). The generic path's per-op shape and stride analysis is gone,
//! which is what makes small layers fast (a 3-layer 8-wide MLP at batch 1: see BENCHMARKS.md).
//! Other graphs keep the generic path; the summary says which one a model got.

use crate::check::{check_shape, DimSpec, SymEnv};
use crate::{Elem, Error, Result};
use mithril_kernels::gemm::{self, AccElem, GemmElem};
use ndarray::{ArrayBase, Data, Dimension};

pub use mithril_kernels::ew::{self, Src};

/// `Ok` when `given` is exactly `want`; otherwise the same `Error::Shape` the generic path gives
/// (naming the model, the terminal, the expected and the given shape).
#[inline]
pub fn check(
    model: &'static str,
    terminal: &'static str,
    expected: &'static str,
    given: &[usize],
    want: &[usize],
) -> Result<()> {
    if given == want {
        return Ok(());
    }
    let spec: Vec<DimSpec> = want.iter().map(|&d| DimSpec::Fixed(d)).collect();
    check_shape(
        &mut SymEnv::new(&[]),
        model,
        terminal,
        expected,
        given,
        &spec,
        false,
    )?;
    Err(Error::op(terminal, "internal: shape check disagrees"))
}

/// `a`'s elements in row-major order: borrowed when `a` is in standard layout (the usual case),
/// else copied into `buf` (one allocation, only for strided or transposed arguments).
#[inline]
pub fn contiguous<'a, T: Clone, S: Data<Elem = T>, D: Dimension>(
    a: &'a ArrayBase<S, D>,
    buf: &'a mut Vec<T>,
) -> &'a [T] {
    match a.as_slice() {
        Some(s) => s,
        None => {
            *buf = a.iter().cloned().collect();
            buf
        }
    }
}

/// A 2-D broadcast read of a contiguous tensor: element `(i, j)` is `data[i*rs + j*cs]` (a bias
/// row `[n]` is `rs = 0, cs = 1`; a column `[m, 1]` is `rs = 1, cs = 0`).
#[derive(Clone, Copy, Debug)]
pub struct Bcast<'a, T> {
    /// the tensor's elements
    pub data: &'a [T],
    /// step between rows
    pub rs: usize,
    /// step between columns
    pub cs: usize,
}

/// Element strides `(rs, cs)` of a product operand stored row-major with `cols_stored`
/// columns, read transposed when `t`.
#[inline]
fn strides(cols_stored: usize, t: bool) -> (usize, usize) {
    if t {
        (1, cols_stored)
    } else {
        (cols_stored, 1)
    }
}

fn operands_ok<T>(
    op: &str,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    b: &[T],
    out: &[T],
) -> Result<()> {
    if a.len() != m * k || b.len() != k * n || out.len() != m * n {
        return Err(Error::op(
            op,
            format!(
                "internal: static matmul [{m}, {k}] x [{k}, {n}] got slices of {}, {} and {} elements",
                a.len(),
                b.len(),
                out.len()
            ),
        ));
    }
    Ok(())
}

/// `out = A·B` for constant dims: `a` holds `[m, k]` row-major (`[k, m]` when `ta`), `b` holds
/// `[k, n]` (`[n, k]` when `tb`, Linear's weight), `out` is `[m, n]` row-major.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn matmul_plain<T: GemmElem>(
    op: &str,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    out: &mut [T],
) -> Result<()> {
    operands_ok(op, m, n, k, a, b, out)?;
    let (rsa, csa) = strides(if ta { m } else { k }, ta);
    let (rsb, csb) = strides(if tb { k } else { n }, tb);
    gemm::gemm_plain(
        m,
        n,
        k,
        <<T as GemmElem>::Acc as AccElem>::ONE,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        false,
        out,
        n,
    );
    Ok(())
}

/// The GEMM epilogue as one `dyn` call per finished row segment (one GEMM instantiation per
/// element type for every model; see `ops::matmul`).
type Epilogue<'a, A> = dyn Fn(usize, usize, &mut [A]) + Sync + 'a;

/// `out[i, j] = epilogue(Σ A·B [i, j], others at (i, j))` for constant dims (layouts as in
/// [`matmul_plain`]): bias, activation and residual applied to each finished GEMM tile.
/// `seg(v, srcs)` rewrites one finished row segment's accumulators `v` in place, with `srcs[q]`
/// reading operand `q` at the same positions (as in `ops::matmul_epi_to`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn matmul<T, const K: usize>(
    op: &str,
    m: usize,
    n: usize,
    k: usize,
    a: &[T],
    ta: bool,
    b: &[T],
    tb: bool,
    others: [Bcast<'_, T>; K],
    out: &mut [T],
    seg: impl Fn(&mut [<T as GemmElem>::Acc], [Src<'_, T>; K]) + Sync,
) -> Result<()>
where
    T: GemmElem + Elem<Acc = <T as GemmElem>::Acc>,
{
    operands_ok(op, m, n, k, a, b, out)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    for o in &others {
        if o.cs > 1 || o.data.is_empty() || (m - 1) * o.rs + (n - 1) * o.cs >= o.data.len() {
            return Err(Error::op(
                op,
                format!(
                    "internal: epilogue operand of {} elements read with strides ({}, {}) over [{m}, {n}]",
                    o.data.len(),
                    o.rs,
                    o.cs
                ),
            ));
        }
    }
    let (rsa, csa) = strides(if ta { m } else { k }, ta);
    let (rsb, csb) = strides(if tb { k } else { n }, tb);
    let epi = |i: usize, j0: usize, v: &mut [<T as GemmElem>::Acc]| {
        // every operand is contiguous along the row or constant along it (checked above)
        let srcs: [Src<'_, T>; K] = std::array::from_fn(|q| {
            let o = &others[q];
            let base = i * o.rs + j0 * o.cs;
            if o.cs == 0 {
                Src::Scalar(o.data[base])
            } else {
                Src::Full(&o.data[base..base + v.len()])
            }
        });
        seg(v, srcs);
    };
    let epi: &Epilogue<'_, <T as GemmElem>::Acc> = &epi;
    gemm::gemm(
        m,
        n,
        k,
        <<T as GemmElem>::Acc as AccElem>::ONE,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        false,
        out,
        n,
        epi,
    );
    Ok(())
}

/// The `max_steps` bound of a run-time loop (`n` iterations started so far): the generic
/// path's `Err` once the condition still holds after `max` iterations.
pub use crate::cuda::flow::check_max_steps;

/// Where step `i` of a run-time loop lies along an axis of extent `len`, or the generic
/// path's `Err` (`op` names the op, `what` the value read or written).
fn step_index(op: &str, what: &str, len: usize, i: i64) -> Result<usize> {
    if i < 0 || i as usize >= len {
        return Err(Error::op(
            op,
            format!("step index {i} is outside 0..{len} (the {what} axis)"),
        ));
    }
    Ok(i as usize)
}

/// A step read `x[(.., t)]` of a run-time loop over constant dims: `x` holds
/// `[outer, len, inner]` row-major, `out` gets `[outer, inner]`, the slice at index `i` of the
/// middle axis (an `Err` outside `0..len`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn step_read<T: Copy>(
    op: &str,
    x: &[T],
    outer: usize,
    len: usize,
    inner: usize,
    i: i64,
    out: &mut [T],
) -> Result<()> {
    let i = step_index(op, "indexed", len, i)?;
    if x.len() != outer * len * inner || out.len() != outer * inner {
        return Err(Error::op(
            op,
            "internal: static step read of the wrong size",
        ));
    }
    for (o, dst) in out.chunks_exact_mut(inner.max(1)).enumerate().take(outer) {
        let at = (o * len + i) * inner;
        dst.copy_from_slice(&x[at..at + inner]);
    }
    Ok(())
}

/// A scan's stacked write `stack ys[(.., t)] = v` over constant dims (or, `add`, its
/// accumulation): slice `i` of the middle axis of `acc` (`[outer, len, inner]` row-major)
/// replaced by (increased by) `v` (`[outer, inner]`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn step_write<T: Elem>(
    op: &str,
    acc: &mut [T],
    outer: usize,
    len: usize,
    inner: usize,
    v: &[T],
    i: i64,
    add: bool,
) -> Result<()> {
    let i = step_index(op, "stacked", len, i)?;
    if acc.len() != outer * len * inner || v.len() != outer * inner {
        return Err(Error::op(
            op,
            "internal: static step write of the wrong size",
        ));
    }
    for o in 0..outer {
        let at = (o * len + i) * inner;
        let (dst, src) = (&mut acc[at..at + inner], &v[o * inner..(o + 1) * inner]);
        if add {
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = T::from_f64(d.to_f64() + s.to_f64());
            }
        } else {
            dst.copy_from_slice(src);
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use ndarray::{Array2, ShapeBuilder};

    #[cfg_attr(test, test)]
    pub(crate) fn check_names_the_terminal() {
        assert!(check("M", "input `x`", "f32[2, 3]", &[2, 3], &[2, 3]).is_ok());
        let e = check("M", "input `x`", "f32[2, 3]", &[2, 4], &[2, 3])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("input `x`") && e.contains("f32[2, 3]") && e.contains("[2, 4]"),
            "{e}"
        );
    }

    #[cfg_attr(test, test)]
    pub(crate) fn contiguous_borrows_or_copies() {
        let a = Array2::from_shape_fn((2, 3), |(i, j)| (i * 3 + j) as f32);
        let mut buf = Vec::new();
        assert_eq!(contiguous(&a, &mut buf), &[0., 1., 2., 3., 4., 5.]);
        assert!(buf.is_empty());
        let f = Array2::from_shape_fn((2, 3).f(), |(i, j)| (i * 3 + j) as f32);
        assert_eq!(contiguous(&f, &mut buf), &[0., 1., 2., 3., 4., 5.]);
    }

    /// Every transpose combination with a bias row and a residual against a naive loop.
    #[cfg_attr(test, test)]
    pub(crate) fn matmul_layouts_and_epilogue() {
        let (m, n, k) = (5, 7, 3);
        let av: Vec<f64> = (0..m * k).map(|x| x as f64 * 0.5 - 3.0).collect();
        let bv: Vec<f64> = (0..k * n).map(|x| 1.0 - x as f64 * 0.25).collect();
        let bias: Vec<f64> = (0..n).map(|x| x as f64).collect();
        let res: Vec<f64> = (0..m * n).map(|x| x as f64 * 0.1).collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            // stored layouts
            let a: Vec<f64> = if ta {
                (0..k * m).map(|e| av[(e % m) * k + e / m]).collect()
            } else {
                av.clone()
            };
            let b: Vec<f64> = if tb {
                (0..n * k).map(|e| bv[(e % k) * n + e / k]).collect()
            } else {
                bv.clone()
            };
            let mut out = vec![0.0; m * n];
            matmul(
                "t",
                m,
                n,
                k,
                &a,
                ta,
                &b,
                tb,
                [
                    Bcast {
                        data: &bias,
                        rs: 0,
                        cs: 1,
                    },
                    Bcast {
                        data: &res,
                        rs: n,
                        cs: 1,
                    },
                ],
                &mut out,
                |v: &mut [f64], [b, r]: [Src<'_, f64>; 2]| {
                    ew::map3_inplace(v, b, r, |p, b, r| (p + b).max(0.0) + r)
                },
            )
            .unwrap();
            let mut plain = vec![0.0; m * n];
            matmul_plain("t", m, n, k, &a, ta, &b, tb, &mut plain).unwrap();
            for i in 0..m {
                for j in 0..n {
                    let p: f64 = (0..k).map(|q| av[i * k + q] * bv[q * n + j]).sum();
                    assert_eq!(plain[i * n + j], p, "{ta} {tb}");
                    let want = (p + bias[j]).max(0.0) + res[i * n + j];
                    assert_eq!(out[i * n + j], want, "{ta} {tb} ({i}, {j})");
                }
            }
        }
        let mut out = vec![0.0; 4];
        assert!(matmul_plain("t", 2, 2, 2, &[1.0; 3], false, &[1.0; 4], false, &mut out).is_err());
    }
}
