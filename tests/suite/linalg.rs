//! Linear algebra (`cholesky`, `eigvalsh`, `solve_triangular`), triangle masks (`tril`,
//! `triu`), `stack` and `zeros_like` / `ones_like`: forward values against independent naive
//! implementations written here, gradients against f64 central differences (step 1e-6, error
//! `|fd - grad| / (1 + max(|fd|, |grad|))` below 1e-6: the harness of `tests/common/fd.rs`),
//! run-time errors on bad values.
//!
//! Symmetric inputs are built inside the models (`w wᵀ + c I`, `s + sᵀ`), so a finite
//! difference on a param moves the matrix along a symmetric direction, where the symmetric
//! gradients of `cholesky` / `eigvalsh` (PyTorch's convention) are the derivative.
// Masks are written as `j - i` against the `diagonal` attribute on purpose (`j >= i + 1`).
#![allow(clippy::needless_range_loop, clippy::int_plus_one)]

use crate::common::fd::{dot, gradcheck, leaves, pat, set, wave};
use mithril::prelude::*;
use ndarray::{Array, ArrayD, Dimension, Ix2, Ix3, IxDyn};
use std::marker::PhantomData;

mithril! {
    model Chol {
        input eye4: f64[4, 4];
        input eye3: f64[3, 3];
        param w: f64[4, 4];
        param wb: f64[2, 3, 3];
        output l = cholesky(matmul(w, w.T) + eye4 * 0.5);
        output lb = cholesky(matmul(wb, transpose(wb, [0, 2, 1])) + eye3);
    }

    model Eig {
        param s: f64[4, 4];
        param sb: f64[2, 3, 3];
        output ev = eigvalsh(s + s.T);
        output evb = eigvalsh(sb + transpose(sb, [0, 2, 1]));
        param s8: f64[8, 8];
        output ev8 = eigvalsh(s8 + s8.T);
    }

    model Solve {
        input eye3: f64[3, 3];
        param a: f64[3, 3];
        param b: f64[3, 2];
        param bt: f64[2, 3];
        param ab: f64[2, 3, 3];
        param bb: f64[2, 3, 2];
        output x_ll = solve_triangular(a + eye3 * 3.0, b);
        output x_ul = solve_triangular(a + eye3 * 3.0, b, upper = true);
        output x_lr = solve_triangular(a + eye3 * 3.0, bt, left = false);
        output x_ur = solve_triangular(a + eye3 * 3.0, bt, upper = true, left = false);
        output x_batch = solve_triangular(ab + eye3 * 3.0, bb);
    }

    model Masks {
        param t: f64[3, 4];
        param tb: f64[2, 3, 3];
        output lo = tril(t);
        output up = triu(t, diagonal = 1);
        output lo_neg = tril(t, -1);
        output up_b = triu(tb, diagonal = -1) * 2.0;
    }

    model Stacks {
        param a: f64[2, 3];
        param b: f64[2, 3];
        output s0 = stack(a, b);
        output s1 = stack(a, b, a * 2.0, axis = 1);
        output s2 = stack(a, b, axis = -1);
        output like = a * ones_like(b) + zeros_like(a) + ones_like(a);
    }

    model LikeInts {
        input k: i64[N];
        input f: f32[N, 2];
        output o = ones_like(k);
        output z = zeros_like(f);
    }

    model CholDyn {
        input a: f64[..., N, N];
        output l = cholesky(a);
    }

    model SolveDyn {
        input a: f32[N, N];
        input b: f32[N, K];
        output x = solve_triangular(a, b);
    }

    model Chol32 {
        input a: f32[B, N, N];
        output l = cholesky(a);
        output ev = eigvalsh(a);
    }

    model Ranges {
        input x: f32[T, 3];
        output r0 = arange(5);
        output r1 = arange(1, 2.0, 0.25);
        output r2 = arange(10, 0, -3);
        output r3 = arange(T);
        output r4 = arange(0, 3, dtype = f64);
        output empty = arange(3, 1);
        // a causal mask from positions
        output causal = reshape(arange(T), [T, 1]) >= reshape(arange(T), [1, T]);
        output shifted = x + reshape(cast(arange(T), dtype = f32), [T, 1]);
        output eye = cast(reshape(arange(T), [T, 1]) == reshape(arange(T), [1, T]), dtype = f32);
    }

    // Gaussian-process style: alpha = A⁻¹ y via the Cholesky factor, log-determinant.
    model GpAlpha {
        input k: f64[N, N];
        input y: f64[N, 1];
        let l = cholesky(k);
        // K⁻¹ y = L⁻ᵀ (L⁻¹ y)
        output alpha = solve_triangular(l.T, solve_triangular(l, y), upper = true);
        output logdet = sum(log(eigvalsh(k)));
    }
}

// ---------------------------------------------------------------------------------------------
// independent references (row-major n × n matrices as Vec<f64>)

fn eye(n: usize) -> Array<f64, Ix2> {
    Array::eye(n)
}

fn mm(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
    let mut c = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            for l in 0..k {
                c[i * m + j] += a[i * k + l] * b[l * m + j];
            }
        }
    }
    c
}

fn transpose(a: &[f64], n: usize, m: usize) -> Vec<f64> {
    let mut t = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            t[j * n + i] = a[i * m + j];
        }
    }
    t
}

/// Cholesky–Crout, element by element (the textbook formula).
fn naive_cholesky(a: &[f64], n: usize) -> Vec<f64> {
    let mut l = vec![0.0; n * n];
    for i in 0..n {
        for j in 0..=i {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= l[i * n + k] * l[j * n + k];
            }
            l[i * n + j] = if i == j { s.sqrt() } else { s / l[j * n + j] };
        }
    }
    l
}

/// Determinant by Gaussian elimination with partial pivoting.
fn det(a: &[f64], n: usize) -> f64 {
    let mut m = a.to_vec();
    let mut d = 1.0;
    for c in 0..n {
        let p = (c..n)
            .max_by(|&x, &y| m[x * n + c].abs().total_cmp(&m[y * n + c].abs()))
            .unwrap();
        if p != c {
            for j in 0..n {
                m.swap(p * n + j, c * n + j);
            }
            d = -d;
        }
        let piv = m[c * n + c];
        d *= piv;
        for r in c + 1..n {
            let f = m[r * n + c] / piv;
            for j in c..n {
                m[r * n + j] -= f * m[c * n + j];
            }
        }
    }
    d
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

fn flat<D: Dimension>(a: &Array<f64, D>) -> Vec<f64> {
    a.iter().copied().collect()
}

// ---------------------------------------------------------------------------------------------

#[test]
fn cholesky_values_and_gradients() {
    let m = Chol::new().unwrap();
    let mut p = m.randomize_params(1);
    set(&mut p, "w", |i| wave(i, 0.3));
    set(&mut p, "wb", |i| wave(i, 1.1));
    let (e4, e3) = (eye(4), eye(3));
    let inputs = || CholInputs {
        eye4: e4.view(),
        eye3: e3.view(),
    };
    let out = m.evaluate(&p, inputs()).unwrap();
    // forward: the naive factor of w wᵀ + I/2
    let w = leaves(&p)[0].2.clone();
    let mut a = mm(&w, &transpose(&w, 4, 4), 4, 4, 4);
    for i in 0..4 {
        a[i * 4 + i] += 0.5;
    }
    close("l", &flat(&out.l), &naive_cholesky(&a, 4), 1e-12);
    let wb = leaves(&p)[1].2.clone();
    for k in 0..2 {
        let wk = &wb[k * 9..(k + 1) * 9];
        let mut ak = mm(wk, &transpose(wk, 3, 3), 3, 3, 3);
        for i in 0..3 {
            ak[i * 3 + i] += 1.0;
        }
        let got: Vec<f64> = out
            .lb
            .index_axis(ndarray::Axis(0), k)
            .iter()
            .copied()
            .collect();
        close("lb", &got, &naive_cholesky(&ak, 3), 1e-12);
    }
    let seeds = || CholOutputs {
        l: pat(Ix2(4, 4), 2.0),
        lb: pat(Ix3(2, 3, 3), 3.0),
    };
    let loss = |p: &CholParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        let s = seeds();
        dot(&o.l, &s.l) + dot(&o.lb, &s.lb)
    };
    let (_, g) = m.evaluate_gradients(&p, inputs(), seeds()).unwrap();
    assert_eq!(gradcheck("cholesky", &p, &g, loss), 16 + 18);
}

#[test]
fn eigvalsh_values_and_gradients() {
    let m = Eig::new().unwrap();
    let mut p = m.randomize_params(2);
    set(&mut p, "s", |i| wave(i, 0.7));
    set(&mut p, "sb", |i| wave(i, 1.9));
    // the wave pattern alone is nearly low-rank (clustered eigenvalues): spread the diagonal
    set(&mut p, "s8", |i| {
        wave(i, 2.3)
            + if i % 9 == 0 {
                (i / 9) as f64 * 0.7
            } else {
                0.0
            }
    });
    let out = m
        .evaluate(
            &p,
            EigInputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    let check = |what: &str, s: &[f64], n: usize, ev: &[f64]| {
        let a: Vec<f64> = (0..n * n)
            .map(|ij| s[ij] + s[(ij % n) * n + ij / n])
            .collect();
        assert!(
            ev.windows(2).all(|w| w[1] - w[0] > 1e-2),
            "{what}: ascending and apart: {ev:?}"
        );
        // trace and Frobenius norm are the sum of eigenvalues and of their squares
        let tr: f64 = (0..n).map(|i| a[i * n + i]).sum();
        let fro: f64 = a.iter().map(|x| x * x).sum();
        assert!((ev.iter().sum::<f64>() - tr).abs() < 1e-12, "{what}: trace");
        assert!(
            (ev.iter().map(|x| x * x).sum::<f64>() - fro).abs() < 1e-11,
            "{what}: norm"
        );
        // each is a root of the characteristic polynomial: det(A - l I) = Π (l_j - l), so an
        // error δ in l leaves |det| ≈ |δ| Π_{j≠i} |l_j - l|
        let scale = 1.0 + ev.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        for (i, &l) in ev.iter().enumerate() {
            let mut shifted = a.clone();
            for k in 0..n {
                shifted[k * n + k] -= l;
            }
            let others: f64 = (0..n)
                .filter(|&j| j != i)
                .map(|j| (ev[j] - l).abs())
                .product();
            let delta = det(&shifted, n).abs() / others;
            assert!(
                delta < 1e-13 * scale,
                "{what}: det(A - {l} I) gives an error of {delta:e}"
            );
        }
    };
    let s = leaves(&p)[0].2.clone();
    check("ev", &s, 4, &flat(&out.ev));
    let sb = leaves(&p)[1].2.clone();
    for k in 0..2 {
        let ev: Vec<f64> = out
            .evb
            .index_axis(ndarray::Axis(0), k)
            .iter()
            .copied()
            .collect();
        check("evb", &sb[k * 9..(k + 1) * 9], 3, &ev);
    }
    let s8 = leaves(&p)[2].2.clone();
    check("ev8", &s8, 8, &flat(&out.ev8));
    let seeds = || EigOutputs {
        ev: pat(ndarray::Ix1(4), 4.0),
        evb: pat(Ix2(2, 3), 5.0),
        ev8: pat(ndarray::Ix1(8), 6.0),
    };
    let loss = |p: &EigParams| {
        let o = m
            .evaluate(
                p,
                EigInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        let s = seeds();
        dot(&o.ev, &s.ev) + dot(&o.evb, &s.evb) + dot(&o.ev8, &s.ev8)
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            EigInputs {
                _marker: PhantomData,
            },
            seeds(),
        )
        .unwrap();
    assert_eq!(gradcheck("eigvalsh", &p, &g, loss), 16 + 18 + 64);
}

#[test]
fn solve_triangular_values_and_gradients() {
    let m = Solve::new().unwrap();
    let mut p = m.randomize_params(3);
    set(&mut p, "a", |i| wave(i, 0.1));
    set(&mut p, "b", |i| wave(i, 0.2));
    set(&mut p, "bt", |i| wave(i, 0.4));
    set(&mut p, "ab", |i| wave(i, 0.5));
    set(&mut p, "bb", |i| wave(i, 0.6));
    let e3 = eye(3);
    let inputs = || SolveInputs { eye3: e3.view() };
    let out = m.evaluate(&p, inputs()).unwrap();
    // forward: op(T) X = B (or X T = B) with T the named triangle of a + 3 I
    let tri = |a: &[f64], upper: bool| -> Vec<f64> {
        (0..9)
            .map(|ij| {
                let (i, j) = (ij / 3, ij % 3);
                let keep = if upper { j >= i } else { j <= i };
                if keep {
                    a[ij] + if i == j { 3.0 } else { 0.0 }
                } else {
                    0.0
                }
            })
            .collect()
    };
    let l = leaves(&p);
    let (a, b, bt) = (&l[0].2, &l[1].2, &l[2].2);
    close(
        "x_ll",
        &mm(&tri(a, false), &flat(&out.x_ll), 3, 3, 2),
        b,
        1e-13,
    );
    close(
        "x_ul",
        &mm(&tri(a, true), &flat(&out.x_ul), 3, 3, 2),
        b,
        1e-13,
    );
    close(
        "x_lr",
        &mm(&flat(&out.x_lr), &tri(a, false), 2, 3, 3),
        bt,
        1e-13,
    );
    close(
        "x_ur",
        &mm(&flat(&out.x_ur), &tri(a, true), 2, 3, 3),
        bt,
        1e-13,
    );
    let (ab, bb) = (&l[3].2, &l[4].2);
    let xb = flat(&out.x_batch);
    for k in 0..2 {
        close(
            "x_batch",
            &mm(
                &tri(&ab[k * 9..k * 9 + 9], false),
                &xb[k * 6..k * 6 + 6],
                3,
                3,
                2,
            ),
            &bb[k * 6..k * 6 + 6],
            1e-13,
        );
    }
    let seeds = || SolveOutputs {
        x_ll: pat(Ix2(3, 2), 1.0),
        x_ul: pat(Ix2(3, 2), 2.0),
        x_lr: pat(Ix2(2, 3), 3.0),
        x_ur: pat(Ix2(2, 3), 4.0),
        x_batch: pat(Ix3(2, 3, 2), 5.0),
    };
    let loss = |p: &SolveParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        let s = seeds();
        dot(&o.x_ll, &s.x_ll)
            + dot(&o.x_ul, &s.x_ul)
            + dot(&o.x_lr, &s.x_lr)
            + dot(&o.x_ur, &s.x_ur)
            + dot(&o.x_batch, &s.x_batch)
    };
    let (_, g) = m.evaluate_gradients(&p, inputs(), seeds()).unwrap();
    assert_eq!(
        gradcheck("solve_triangular", &p, &g, loss),
        9 + 6 + 6 + 18 + 12
    );
}

#[test]
fn masks_values_and_gradients() {
    let m = Masks::new().unwrap();
    let mut p = m.randomize_params(4);
    set(&mut p, "t", |i| wave(i, 0.9));
    set(&mut p, "tb", |i| wave(i, 1.3));
    let out = m
        .evaluate(
            &p,
            MasksInputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    let l = leaves(&p);
    let (t, tb) = (&l[0].2, &l[1].2);
    for i in 0..3 {
        for j in 0..4 {
            let v = t[i * 4 + j];
            let (i, j) = (i as i64, j as i64);
            let (iu, ju) = (i as usize, j as usize);
            assert_eq!(out.lo[[iu, ju]], if j <= i { v } else { 0.0 });
            assert_eq!(out.up[[iu, ju]], if j >= i + 1 { v } else { 0.0 });
            assert_eq!(out.lo_neg[[iu, ju]], if j <= i - 1 { v } else { 0.0 });
        }
    }
    for k in 0..2 {
        for i in 0..3 {
            for j in 0..3 {
                let v = tb[k * 9 + i * 3 + j];
                let want = if j as i64 >= i as i64 - 1 {
                    2.0 * v
                } else {
                    0.0
                };
                assert_eq!(out.up_b[[k, i, j]], want);
            }
        }
    }
    let seeds = || MasksOutputs {
        lo: pat(Ix2(3, 4), 1.0),
        up: pat(Ix2(3, 4), 2.0),
        lo_neg: pat(Ix2(3, 4), 3.0),
        up_b: pat(Ix3(2, 3, 3), 4.0),
    };
    let loss = |p: &MasksParams| {
        let o = m
            .evaluate(
                p,
                MasksInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        let s = seeds();
        dot(&o.lo, &s.lo) + dot(&o.up, &s.up) + dot(&o.lo_neg, &s.lo_neg) + dot(&o.up_b, &s.up_b)
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            MasksInputs {
                _marker: PhantomData,
            },
            seeds(),
        )
        .unwrap();
    assert_eq!(gradcheck("tril/triu", &p, &g, loss), 12 + 18);
}

#[test]
fn stack_and_fill_values_and_gradients() {
    let m = Stacks::new().unwrap();
    let mut p = m.randomize_params(5);
    set(&mut p, "a", |i| wave(i, 2.1));
    set(&mut p, "b", |i| wave(i, 2.2));
    let out = m
        .evaluate(
            &p,
            StacksInputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    let l = leaves(&p);
    let (a, b) = (&l[0].2, &l[1].2);
    assert_eq!(out.s0.shape(), &[2, 2, 3]);
    assert_eq!(out.s1.shape(), &[2, 3, 3]);
    assert_eq!(out.s2.shape(), &[2, 3, 2]);
    for i in 0..2 {
        for j in 0..3 {
            let (x, y) = (a[i * 3 + j], b[i * 3 + j]);
            assert_eq!(out.s0[[0, i, j]], x);
            assert_eq!(out.s0[[1, i, j]], y);
            assert_eq!(out.s1[[i, 0, j]], x);
            assert_eq!(out.s1[[i, 1, j]], y);
            assert_eq!(out.s1[[i, 2, j]], 2.0 * x);
            assert_eq!(out.s2[[i, j, 0]], x);
            assert_eq!(out.s2[[i, j, 1]], y);
            assert_eq!(out.like[[i, j]], x + 1.0);
        }
    }
    let seeds = || StacksOutputs {
        s0: pat(Ix3(2, 2, 3), 1.0),
        s1: pat(Ix3(2, 3, 3), 2.0),
        s2: pat(Ix3(2, 3, 2), 3.0),
        like: pat(Ix2(2, 3), 4.0),
    };
    let loss = |p: &StacksParams| {
        let o = m
            .evaluate(
                p,
                StacksInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        let s = seeds();
        dot(&o.s0, &s.s0) + dot(&o.s1, &s.s1) + dot(&o.s2, &s.s2) + dot(&o.like, &s.like)
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            StacksInputs {
                _marker: PhantomData,
            },
            seeds(),
        )
        .unwrap();
    assert_eq!(gradcheck("stack/ones_like", &p, &g, loss), 12);
    // b reaches `like` only through ones_like: no gradient from it
    let s = seeds();
    let gb = &leaves(&g)[1].2;
    for i in 0..2 {
        for j in 0..3 {
            let want = s.s0[[1, i, j]] + s.s1[[i, 1, j]] + s.s2[[i, j, 1]];
            assert!((gb[i * 3 + j] - want).abs() < 1e-15);
        }
    }
}

#[test]
fn like_keeps_dtype_and_shape() {
    let m = LikeInts::new().unwrap();
    let k = ndarray::array![5i64, -2, 7];
    let f = ndarray::Array2::<f32>::from_elem((3, 2), 9.5);
    let out = m
        .evaluate(
            &m.randomize_params(0),
            LikeIntsInputs {
                k: k.view(),
                f: f.view(),
            },
        )
        .unwrap();
    assert_eq!(out.o, ndarray::array![1i64, 1, 1]);
    assert_eq!(out.z, ndarray::Array2::<f32>::zeros((3, 2)));
}

#[test]
fn run_time_errors_name_the_op_and_matrix() {
    let m = CholDyn::new().unwrap();
    // batch [2]: the second matrix has a negative pivot at order 2
    let a = ArrayD::from_shape_vec(
        IxDyn(&[2, 2, 2]),
        vec![4.0, 0.0, 2.0, 5.0, 1.0, 0.0, 3.0, 1.0],
    )
    .unwrap();
    let e = m
        .evaluate(&m.randomize_params(0), CholDynInputs { a: a.view() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("`cholesky` failed"), "{e}");
    assert!(
        e.contains("not positive-definite") && e.contains("order 2"),
        "{e}"
    );
    assert!(e.contains("batch index [1]"), "{e}");
    // only the first matrix: fine, L = [[2, 0], [1, 2]]
    let ok = m
        .evaluate(
            &m.randomize_params(0),
            CholDynInputs {
                a: a.slice(ndarray::s![0..1, .., ..]).into_dyn(),
            },
        )
        .unwrap();
    assert_eq!(ok.l.as_slice().unwrap(), &[2.0, 0.0, 1.0, 2.0]);

    let s = SolveDyn::new().unwrap();
    let a = ndarray::array![[1.0f32, 0.0], [2.0, 0.0]];
    let b = ndarray::array![[1.0f32], [1.0]];
    let e = s
        .evaluate(
            &s.randomize_params(0),
            SolveDynInputs {
                a: a.view(),
                b: b.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`solve_triangular` failed") && e.contains("[1, 1] is zero"),
        "{e}"
    );
}

#[test]
fn f32_matches_the_f64_reference() {
    let m = Chol32::new().unwrap();
    let n = 5;
    let mut a = vec![0.0f64; 2 * n * n];
    for k in 0..2 {
        let w: Vec<f64> = (0..n * n).map(|i| wave(i, k as f64)).collect();
        let s = mm(&w, &transpose(&w, n, n), n, n, n);
        for i in 0..n * n {
            a[k * n * n + i] = (s[i] + if i % (n + 1) == 0 { 1.0 } else { 0.0 }) as f32 as f64;
        }
    }
    let a32 = ArrayD::from_shape_vec(IxDyn(&[2, n, n]), a.iter().map(|&v| v as f32).collect())
        .unwrap()
        .into_dimensionality::<Ix3>()
        .unwrap();
    let out = m
        .evaluate(&m.randomize_params(0), Chol32Inputs { a: a32.view() })
        .unwrap();
    for k in 0..2 {
        let want = naive_cholesky(&a[k * n * n..(k + 1) * n * n], n);
        let got: Vec<f64> = out
            .l
            .index_axis(ndarray::Axis(0), k)
            .iter()
            .map(|&v| v as f64)
            .collect();
        // f64 factor rounded once to f32
        close("l32", &got, &want, 1e-7);
        let ev: Vec<f64> = out
            .ev
            .index_axis(ndarray::Axis(0), k)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let tr: f64 = (0..n).map(|i| a[k * n * n + i * n + i]).sum();
        assert!((ev.iter().sum::<f64>() - tr).abs() < 1e-5 * tr);
    }
}

#[test]
fn gp_alpha_solves_the_kernel_system() {
    let m = GpAlpha::new().unwrap();
    let n = 4;
    // an RBF kernel matrix plus noise
    let xs = [0.0, 0.7, 1.5, 2.6];
    let k = Array::from_shape_fn((n, n), |(i, j)| {
        (-(xs[i] - xs[j]) * (xs[i] - xs[j]) / 2.0f64).exp() + if i == j { 0.1 } else { 0.0 }
    });
    let y = Array::from_shape_fn((n, 1), |(i, _)| xs[i].sin());
    let out = m
        .evaluate(
            &m.randomize_params(0),
            GpAlphaInputs {
                k: k.view(),
                y: y.view(),
            },
        )
        .unwrap();
    // K alpha = y, checked with a naive product
    close(
        "alpha",
        &mm(&flat(&k), &flat(&out.alpha), n, n, 1),
        &flat(&y),
        1e-12,
    );
    let logdet = det(&flat(&k), n).ln();
    let got = out.logdet.into_scalar();
    assert!((got - logdet).abs() < 1e-12, "{got} vs {logdet}");
}

#[test]
fn arange_static_and_symbolic() {
    let m = Ranges::new().unwrap();
    let x = ndarray::Array2::<f32>::zeros((4, 3));
    let out = m
        .evaluate(&m.randomize_params(0), RangesInputs { x: x.view() })
        .unwrap();
    assert_eq!(out.r0, ndarray::array![0i64, 1, 2, 3, 4]);
    assert_eq!(out.r1, ndarray::array![1.0f32, 1.25, 1.5, 1.75]);
    assert_eq!(out.r2, ndarray::array![10i64, 7, 4, 1]);
    assert_eq!(out.r3, ndarray::array![0i64, 1, 2, 3]);
    assert_eq!(out.r4, ndarray::array![0.0f64, 1.0, 2.0]);
    assert_eq!(out.empty.len(), 0);
    for i in 0..4 {
        for j in 0..4 {
            assert_eq!(out.causal[[i, j]], i >= j);
        }
        for j in 0..3 {
            assert_eq!(out.shifted[[i, j]], i as f32);
        }
    }
    assert_eq!(out.eye, ndarray::Array2::<f32>::eye(4));
    // another T at run time
    let x = ndarray::Array2::<f32>::ones((2, 3));
    let out = m
        .evaluate(&m.randomize_params(0), RangesInputs { x: x.view() })
        .unwrap();
    assert_eq!(out.r3, ndarray::array![0i64, 1]);
    assert_eq!(out.causal, ndarray::array![[true, false], [true, true]]);
}
