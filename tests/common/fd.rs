//! The central-difference gradient harness shared by the gradient tests (`gradcheck`, `catalog`,
//! `linalg`, `gradients`, `frontend` in `tests/suite`).
//!
//! [`gradcheck`] compares a gradient tree with central differences of a scalar loss, element by
//! element of every leaf: step `h = 1e-6` on f64 (and f16/bf16) leaves, `h = 2^-12` on f32
//! leaves (exact in f32 for the values the tests use), error
//! `|fd - grad| / (1 + max(|fd|, |grad|))` below `1e-6` (relative for large values, absolute near
//! zero). The other helpers read and write leaves of a [`ParamTree`] by name and build
//! deterministic test data.

use mithril::half;
use mithril::prelude::*;
use mithril::rt::{TensorView, TensorViewMut};
use ndarray::{Array, ArrayBase, Data, Dimension};

/// Every float leaf of a tree, in visiting order: `(name, shape, values as f64)`.
pub fn leaves<P: ParamTree>(p: &P) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let mut out = Vec::new();
    p.visit(&mut |n, t| {
        let (shape, vals): (Vec<usize>, Vec<f64>) = match t {
            TensorView::F64(a) => (a.shape().to_vec(), a.iter().copied().collect()),
            TensorView::F32(a) => (a.shape().to_vec(), a.iter().map(|&v| v as f64).collect()),
            TensorView::F16(a) => (a.shape().to_vec(), a.iter().map(|v| v.to_f64()).collect()),
            TensorView::BF16(a) => (a.shape().to_vec(), a.iter().map(|v| v.to_f64()).collect()),
            other => panic!("{n}: a non-float leaf {other:?}"),
        };
        out.push((n.to_string(), shape, vals));
    });
    out
}

/// Sets element `i` (logical row-major order) of leaf `name` with `f(old)`.
pub fn update<P: ParamTree>(p: &mut P, name: &str, i: usize, f: &dyn Fn(f64) -> f64) {
    let mut hit = false;
    p.visit_mut(&mut |n, t| {
        if n != name {
            return Ok(());
        }
        hit = true;
        match t {
            TensorViewMut::F64(mut a) => {
                let v = a.iter_mut().nth(i).unwrap();
                *v = f(*v);
            }
            TensorViewMut::F32(mut a) => {
                let v = a.iter_mut().nth(i).unwrap();
                *v = f(*v as f64) as f32;
            }
            TensorViewMut::F16(mut a) => {
                let v = a.iter_mut().nth(i).unwrap();
                *v = half::f16::from_f64(f(v.to_f64()));
            }
            TensorViewMut::BF16(mut a) => {
                let v = a.iter_mut().nth(i).unwrap();
                *v = half::bf16::from_f64(f(v.to_f64()));
            }
            _ => panic!("{name}: not a float leaf"),
        }
        Ok(())
    })
    .unwrap();
    assert!(hit, "no leaf {name}");
}

/// The values of leaf `name`, row-major, as f64.
pub fn get<P: ParamTree>(p: &P, name: &str) -> Vec<f64> {
    leaves(p)
        .into_iter()
        .find(|l| l.0 == name)
        .unwrap_or_else(|| panic!("no leaf {name}"))
        .2
}

/// Sets every element of leaf `name` to `f(i)`.
pub fn set<P: ParamTree>(p: &mut P, name: &str, f: impl Fn(usize) -> f64) {
    let n = get(p, name).len();
    for i in 0..n {
        let v = f(i);
        update(p, name, i, &|_| v);
    }
}

/// Sets leaf `name` to `vals` (row-major), which must have one value per element.
pub fn set_vals<P: ParamTree>(p: &mut P, name: &str, vals: &[f64]) {
    let n = get(p, name).len();
    assert_eq!(n, vals.len(), "{name}: {n} elements");
    set(p, name, |i| vals[i]);
}

/// A deterministic, irregular pattern in about [-1, 1]: no ties, no zeros for small `i`.
pub fn wave(i: usize, salt: f64) -> f64 {
    ((i as f64) * 1.618 + salt).sin() * 0.9 + 0.05 * (i as f64 * 0.37 + salt).cos()
}

/// An array of shape `dim` filled with [`wave`] in row-major order.
pub fn pat<D: Dimension>(dim: D, salt: f64) -> Array<f64, D> {
    let n = dim.size();
    Array::from_shape_vec(dim, (0..n).map(|i| wave(i, salt)).collect()).unwrap()
}

/// `sum(a * b)` of two arrays of the same shape (an output against its seed).
pub fn dot<S1, S2, D>(a: &ArrayBase<S1, D>, b: &ArrayBase<S2, D>) -> f64
where
    S1: Data<Elem = f64>,
    S2: Data<Elem = f64>,
    D: Dimension,
{
    assert_eq!(a.shape(), b.shape(), "output and seed shapes differ");
    a.iter().zip(b.iter()).map(|(x, y)| x * y).sum()
}

/// Checks `grads` (the gradient tree of `p`) against central differences of `loss`, element
/// by element: step 1e-6 for f64 leaves, 2^-12 for f32 leaves, error bound 1e-6 (see the top).
/// The gradient tree must mirror the params (names and shapes) and every gradient be finite.
/// Returns the number of elements checked.
pub fn gradcheck<P, G>(what: &str, p: &P, grads: &G, loss: impl Fn(&P) -> f64) -> usize
where
    P: ParamTree + Clone,
    G: ParamTree,
{
    let pl = leaves(p);
    let gl = leaves(grads);
    let pn: Vec<_> = pl.iter().map(|l| (&l.0, &l.1)).collect();
    let gn: Vec<_> = gl.iter().map(|l| (&l.0, &l.1)).collect();
    assert_eq!(pn, gn, "{what}: the gradient tree must mirror the params");
    let mut dtypes = Vec::new();
    p.visit(&mut |_, t| dtypes.push(matches!(t, TensorView::F32(_))));
    let mut checked = 0;
    for ((name, _, vals), ((_, _, g), is32)) in pl.iter().zip(gl.iter().zip(dtypes)) {
        assert_eq!(vals.len(), g.len(), "{what}: {name}");
        let h = if is32 { 1.0 / 4096.0 } else { 1e-6 };
        for (i, &an) in g.iter().enumerate() {
            let mut plus = p.clone();
            update(&mut plus, name, i, &|v| v + h);
            let mut minus = p.clone();
            update(&mut minus, name, i, &|v| v - h);
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h);
            assert!(an.is_finite(), "{what}: {name}[{i}] gradient {an}");
            let err = (fd - an).abs() / (1.0 + fd.abs().max(an.abs()));
            assert!(
                err < 1e-6,
                "{what}: {name}[{i}]: finite difference {fd} vs gradient {an} (error {err:e})"
            );
            checked += 1;
        }
    }
    checked
}
