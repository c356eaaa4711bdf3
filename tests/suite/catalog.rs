//! Mithril's catalog of models written in the DSL library (`models.mth`): distances, kernels,
//! polynomial features and regression, logistic regression, SVMs, the quadratic-form regularizer,
//! MDS, t-SNE and Gaussian-process regression. Each is checked against an independent naive
//! f64 computation here (Mithril's formulas from `models.py` / `ops.py`, written index by index)
//! and its gradients against f64 central differences.
//!
//! Gradient tolerance: step `h = 1e-6`, error `|fd - grad| / (1 + max(|fd|, |grad|))` below
//! `1e-6` (the harness of `tests/common/fd.rs`, as in `gradcheck`). Points are chosen away from
//! kinks (`abs` at 0, the folds of `norm_modifier`, the robust thresholds).
#![allow(clippy::needless_range_loop)]

use crate::common::fd::{dot, get, gradcheck, pat, set_vals, wave};
use mithril::prelude::*;
use ndarray::Array2;
use std::marker::PhantomData;

mithril! {
    model DistM {
        param left: f64[3, 2];
        param right: f64[4, 2];
        param norm: f64[];
        output y = distance_matrix(left, right, norm);
    }

    model NormMod {
        param x: f64[6];
        output y = norm_modifier(x);
    }

    model PolyFeat2 {
        param x: f64[3, 3];
        output y = polynomial_features(x, degree = 2, input_dim = 3);
    }

    model PolyFeat3 {
        param x: f64[2, 2];
        output y = polynomial_features(x, degree = 3, input_dim = 2);
    }

    model QuadForm {
        param v: f64[1, 3];
        param kernel: f64[3, 3];
        output y = quadratic_form_regularizer(v, kernel);
    }

    model Rbf {
        param a: f64[3, 2];
        param b: f64[4, 2];
        let k = RBFKernel(a, b);
        output y = k;
    }

    model PolyKernelPlain {
        param a: f64[3, 2];
        param b: f64[4, 2];
        let y = PolynomialKernel(robust = false)(a, b);
        output y = y;
    }

    model Logistic {
        input x: f64[B, 3];
        let (logits, probs) = LogisticRegression(x);
        output logits = logits;
        output probs = probs;
    }

    model Svm {
        input x: f64[B, 3];
        let svm = LinearSVM();
        output out = svm(x).output;
        output decision = svm(x).decision_output;
    }

    model KSvm {
        input x1: f64[5, 2];
        input x2: f64[4, 2];
        let svm = KernelizedSVM()(x1, x2);
        output out = svm.output;
        output kernel = svm.kernel;
    }

    model EdmPlain {
        param a: f64[3, 2];
        param b: f64[4, 2];
        param norm: f64[];
        output final_dist = encoder_distance_matrix(a, b, norm, robust = false);
        output powered = encoder_distance_matrix(a, b, norm, get_final_distance = false);
    }

    model MdsCorePlain {
        param d: f64[3, 3];
        param pred: f64[3, 3];
        param norm: f64[];
        output exact = mds_core(d, pred, norm, robust = false);
        output powered = mds_core(d, pred, norm, exact_distances = false, robust = false);
        output robust = mds_core(d, pred, norm);
    }

    model PolyKernelRobust {
        param a: f64[3, 2];
        param b: f64[4, 2];
        let y = PolynomialKernel()(a, b);
        output y = y;
    }

    model EdmSelf {
        param a: f64[4, 2];
        output y = encoder_distance_matrix(a, a, 2.0);
    }

    model MdsPoints {
        input x: f64[5, 3];
        input norm: f64[];
        let mds = MDS(prediction_dim = 2, input_type = "points");
        let (stress, coords) = mds(x, norm);
        output stress = stress;
        output coords = coords;
    }

    model MdsDistances {
        input d: f64[5, 5];
        input norm: f64[];
        let mds = MDS(2);
        output stress = mds(d, norm).output;
    }

    model TsneCore {
        input p_joint: f64[5, 5];
        param pred: f64[5, 5];
        output y = tsne_core(pred, pred, p_joint);
    }

    model Tsne {
        input x: f64[5, 3];
        input norm: f64[];
        input p_joint: f64[5, 5];
        let tsne = TSNE(prediction_dim = 2, input_type = "points");
        output y = tsne(x, norm, p_joint).output;
    }

    model Gpr {
        param pts: f64[4, 2];
        param test_pts: f64[4, 2];
        param s: f64[1];
        param mu: f64[4, 1];
        param label: f64[4, 1];
        let k = exp(distance_matrix(pts, pts, 2.0) * -0.5);
        let k_star = exp(distance_matrix(pts, test_pts, 2.0) * -0.5) * 2.0;
        let (loss, prediction, confidence) = gauss_process_regression_core(label, s, k, k_star, mu);
        output loss = loss;
        output prediction = prediction;
        output confidence = confidence;
    }

    model PJoint {
        param x: f64[6, 3];
        output y = tsne_p_joint(distance_matrix(x, x, 2.0), target_perplexity = 3.0);
    }

    model PolyReg {
        input x: f64[B, 2];
        let reg = PolynomialRegression(degree = 2, input_dim = 2, dimension = 2);
        output y = reg(x);
    }
}

// ---------------------------------------------------------------------------------------------
// helpers (the finite-difference harness is `crate::common::fd`)

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

fn rows(a: &[f64], r: usize, c: usize) -> Array2<f64> {
    Array2::from_shape_vec((r, c), a.to_vec()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// independent references

fn ref_distance_matrix(l: &Array2<f64>, r: &Array2<f64>, norm: f64) -> Array2<f64> {
    let mut out = Array2::zeros((l.nrows(), r.nrows()));
    for i in 0..l.nrows() {
        for j in 0..r.nrows() {
            let mut s = 0.0;
            for k in 0..l.ncols() {
                s += (l[[i, k]] - r[[j, k]]).abs().powf(norm);
            }
            out[[i, j]] = s;
        }
    }
    out
}

fn ref_norm_modifier(n: f64) -> f64 {
    let inner = (n - 1.0).rem_euclid(8.0) / 8.0 - 0.5;
    4.0 * (1.0 - 2.0 * inner.abs()) + 1.0
}

/// Sorted index tuples of length `degree` over `0..=dims` in lexicographic order (Python's
/// `combinations_with_replacement`), without the all-zero one.
fn poly_terms(dims: usize, degree: usize) -> Vec<Vec<usize>> {
    fn rec(
        start: usize,
        dims: usize,
        left: usize,
        cur: &mut Vec<usize>,
        out: &mut Vec<Vec<usize>>,
    ) {
        if left == 0 {
            out.push(cur.clone());
            return;
        }
        for i in start..=dims {
            cur.push(i);
            rec(i, dims, left - 1, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(0, dims, degree, &mut Vec::new(), &mut out);
    out.remove(0);
    out
}

fn ref_poly_features(x: &Array2<f64>, degree: usize) -> Array2<f64> {
    let terms = poly_terms(x.ncols(), degree);
    let mut out = Array2::zeros((x.nrows(), terms.len()));
    for n in 0..x.nrows() {
        for (c, t) in terms.iter().enumerate() {
            let mut v = 1.0;
            for &i in t {
                if i > 0 {
                    v *= x[[n, i - 1]];
                }
            }
            out[[n, c]] = v;
        }
    }
    out
}

fn ref_rbf(a: &Array2<f64>, b: &Array2<f64>, l: f64, sigma: f64) -> Array2<f64> {
    let d2 = ref_distance_matrix(a, b, 2.0);
    d2.mapv(|d| l * l * (-0.5 * d / (sigma * sigma)).exp())
}

fn ref_matmul_t(a: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let mut out = Array2::zeros((a.nrows(), b.nrows()));
    for i in 0..a.nrows() {
        for j in 0..b.nrows() {
            out[[i, j]] = (0..a.ncols()).map(|k| a[[i, k]] * b[[j, k]]).sum();
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// distances and kernels

#[test]
fn distance_matrix_values_and_gradients() -> mithril::Result<()> {
    let m = DistM::new()?;
    for norm in [3.0, 1.5, 2.0] {
        let mut p = m.randomize_params(0);
        set_vals(
            &mut p,
            "left",
            pat(ndarray::Ix2(3, 2), 0.3).as_slice().unwrap(),
        );
        set_vals(
            &mut p,
            "right",
            pat(ndarray::Ix2(4, 2), 1.7).as_slice().unwrap(),
        );
        set_vals(&mut p, "norm", &[norm]);
        let out = m.evaluate(
            &p,
            DistMInputs {
                _marker: PhantomData,
            },
        )?;
        let want = ref_distance_matrix(
            &rows(&get(&p, "left"), 3, 2),
            &rows(&get(&p, "right"), 4, 2),
            norm,
        );
        close(
            "distance_matrix",
            out.y.as_slice().unwrap(),
            want.as_slice().unwrap(),
            1e-12,
        );
        let seed = pat(ndarray::Ix2(3, 4), 2.9);
        let (_, g) = m.evaluate_gradients(
            &p,
            DistMInputs {
                _marker: PhantomData,
            },
            DistMOutputs { y: seed.clone() },
        )?;
        let n = gradcheck("distance_matrix", &p, &g, |q| {
            dot(
                &m.evaluate(
                    q,
                    DistMInputs {
                        _marker: PhantomData,
                    },
                )
                .unwrap()
                .y,
                &seed,
            )
        });
        assert_eq!(n, 6 + 8 + 1);
    }
    Ok(())
}

#[test]
fn norm_modifier_folds_into_one_to_five() -> mithril::Result<()> {
    let m = NormMod::new()?;
    let mut p = m.randomize_params(0);
    let xs = [1.5, 2.0, 4.7, 6.3, 11.2, -0.6];
    set_vals(&mut p, "x", &xs);
    let out = m.evaluate(
        &p,
        NormModInputs {
            _marker: PhantomData,
        },
    )?;
    let want: Vec<f64> = xs.iter().map(|&v| ref_norm_modifier(v)).collect();
    // by hand: identity on [1, 5], 10 - x on [5, 9], period 8
    close(
        "norm_modifier",
        out.y.as_slice().unwrap(),
        &[1.5, 2.0, 4.7, 3.7, 3.2, 2.6],
        1e-12,
    );
    close("norm_modifier", out.y.as_slice().unwrap(), &want, 1e-12);
    let seed = pat(ndarray::Ix1(6), 0.4);
    let (_, g) = m.evaluate_gradients(
        &p,
        NormModInputs {
            _marker: PhantomData,
        },
        NormModOutputs { y: seed.clone() },
    )?;
    gradcheck("norm_modifier", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                NormModInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });
    Ok(())
}

#[test]
fn polynomial_features_values_and_gradients() -> mithril::Result<()> {
    // degree 2 over 3 columns: x1 x2 x3 x1² x1x2 x1x3 x2² x2x3 x3²
    let m = PolyFeat2::new()?;
    let mut p = m.randomize_params(0);
    set_vals(
        &mut p,
        "x",
        pat(ndarray::Ix2(3, 3), 0.9).as_slice().unwrap(),
    );
    let x = rows(&get(&p, "x"), 3, 3);
    let out = m.evaluate(
        &p,
        PolyFeat2Inputs {
            _marker: PhantomData,
        },
    )?;
    assert_eq!(out.y.shape(), &[3, 9]);
    let (a, b, c) = (x[[1, 0]], x[[1, 1]], x[[1, 2]]);
    close(
        "row 1 by hand",
        out.y.row(1).to_vec().as_slice(),
        &[a, b, c, a * a, a * b, a * c, b * b, b * c, c * c],
        1e-14,
    );
    let want = ref_poly_features(&x, 2);
    close(
        "polynomial_features(2)",
        out.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-14,
    );
    let seed = pat(ndarray::Ix2(3, 9), 0.2);
    let (_, g) = m.evaluate_gradients(
        &p,
        PolyFeat2Inputs {
            _marker: PhantomData,
        },
        PolyFeat2Outputs { y: seed.clone() },
    )?;
    gradcheck("polynomial_features(2)", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                PolyFeat2Inputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });

    let m = PolyFeat3::new()?;
    let mut p = m.randomize_params(0);
    set_vals(
        &mut p,
        "x",
        pat(ndarray::Ix2(2, 2), 1.3).as_slice().unwrap(),
    );
    let x = rows(&get(&p, "x"), 2, 2);
    let out = m.evaluate(
        &p,
        PolyFeat3Inputs {
            _marker: PhantomData,
        },
    )?;
    assert_eq!(out.y.shape(), &[2, 9]); // C(2 + 3, 3) - 1
    let want = ref_poly_features(&x, 3);
    close(
        "polynomial_features(3)",
        out.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-14,
    );
    let seed = pat(ndarray::Ix2(2, 9), 0.5);
    let (_, g) = m.evaluate_gradients(
        &p,
        PolyFeat3Inputs {
            _marker: PhantomData,
        },
        PolyFeat3Outputs { y: seed.clone() },
    )?;
    gradcheck("polynomial_features(3)", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                PolyFeat3Inputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });
    Ok(())
}

#[test]
fn quadratic_form_regularizer_values_and_gradients() -> mithril::Result<()> {
    let m = QuadForm::new()?;
    let mut p = m.randomize_params(0);
    set_vals(&mut p, "v", &[0.5, -1.0, 2.0]);
    set_vals(
        &mut p,
        "kernel",
        &[2.0, 0.1, 0.0, 0.3, 1.0, -0.2, 0.0, 0.4, 3.0],
    );
    let out = m.evaluate(
        &p,
        QuadFormInputs {
            _marker: PhantomData,
        },
    )?;
    assert_eq!(out.y.shape(), &[1, 1]);
    let (v, k) = (get(&p, "v"), get(&p, "kernel"));
    let mut want = 0.0;
    for i in 0..3 {
        for j in 0..3 {
            want += v[i] * k[3 * i + j] * v[j];
        }
    }
    close(
        "quadratic form",
        out.y.as_slice().unwrap(),
        &[0.5 * want],
        1e-14,
    );
    let seed = ndarray::array![[1.3]];
    let (_, g) = m.evaluate_gradients(
        &p,
        QuadFormInputs {
            _marker: PhantomData,
        },
        QuadFormOutputs { y: seed.clone() },
    )?;
    gradcheck("quadratic form", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                QuadFormInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });
    Ok(())
}

#[test]
fn rbf_kernel_values_and_gradients() -> mithril::Result<()> {
    let m = Rbf::new()?;
    let mut p = m.randomize_params(0);
    assert_eq!(p.names(), ["a", "b", "k.l_scale", "k.sigma"]);
    assert_eq!(
        (get(&p, "k.l_scale"), get(&p, "k.sigma")),
        (vec![1.0], vec![1.0])
    );
    set_vals(
        &mut p,
        "a",
        pat(ndarray::Ix2(3, 2), 0.1).as_slice().unwrap(),
    );
    set_vals(
        &mut p,
        "b",
        pat(ndarray::Ix2(4, 2), 2.2).as_slice().unwrap(),
    );
    set_vals(&mut p, "k.l_scale", &[1.3]);
    set_vals(&mut p, "k.sigma", &[0.7]);
    let out = m.evaluate(
        &p,
        RbfInputs {
            _marker: PhantomData,
        },
    )?;
    let want = ref_rbf(
        &rows(&get(&p, "a"), 3, 2),
        &rows(&get(&p, "b"), 4, 2),
        1.3,
        0.7,
    );
    close(
        "rbf",
        out.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-13,
    );
    let seed = pat(ndarray::Ix2(3, 4), 0.6);
    let (_, g) = m.evaluate_gradients(
        &p,
        RbfInputs {
            _marker: PhantomData,
        },
        RbfOutputs { y: seed.clone() },
    )?;
    gradcheck("rbf", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                RbfInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });
    Ok(())
}

#[test]
fn polynomial_kernel_plain_values_and_gradients() -> mithril::Result<()> {
    let m = PolyKernelPlain::new()?;
    let mut p = m.randomize_params(0);
    let names = p.names();
    assert_eq!(names[2..], ["y.poly_coef", "y.degree"]);
    assert_eq!(
        (get(&p, "y.poly_coef"), get(&p, "y.degree")),
        (vec![1.0], vec![2.0])
    );
    set_vals(
        &mut p,
        "a",
        pat(ndarray::Ix2(3, 2), 0.1).as_slice().unwrap(),
    );
    set_vals(
        &mut p,
        "b",
        pat(ndarray::Ix2(4, 2), 2.2).as_slice().unwrap(),
    );
    set_vals(&mut p, "y.poly_coef", &[1.5]);
    set_vals(&mut p, "y.degree", &[3.0]);
    let out = m.evaluate(
        &p,
        PolyKernelPlainInputs {
            _marker: PhantomData,
        },
    )?;
    let dots = ref_matmul_t(&rows(&get(&p, "a"), 3, 2), &rows(&get(&p, "b"), 4, 2));
    let want = dots.mapv(|d| (d + 1.5).powi(3));
    close(
        "polynomial kernel",
        out.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-13,
    );
    assert!(
        dots.iter().all(|d| d + 1.5 > 0.1),
        "bases positive: the degree has a gradient"
    );
    let seed = pat(ndarray::Ix2(3, 4), 0.6);
    let (_, g) = m.evaluate_gradients(
        &p,
        PolyKernelPlainInputs {
            _marker: PhantomData,
        },
        PolyKernelPlainOutputs { y: seed.clone() },
    )?;
    gradcheck("polynomial kernel", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                PolyKernelPlainInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// regressions and SVMs

#[test]
fn logistic_regression_and_linear_svm() -> mithril::Result<()> {
    let x = ndarray::array![
        [0.5, -1.0, 2.0],
        [1.5, 0.25, -0.75],
        [-2.0, 1.0, 0.1],
        [0.0, 0.3, 0.2]
    ];
    let m = Logistic::new()?;
    let mut p = m.randomize_params(3);
    assert_eq!(
        p.names(),
        ["logistic_regression_0.weight", "logistic_regression_0.bias"]
    );
    set_vals(&mut p, "logistic_regression_0.weight", &[0.4, -0.3, 0.8]);
    set_vals(&mut p, "logistic_regression_0.bias", &[-0.1]);
    let out = m.evaluate(&p, LogisticInputs { x: x.view() })?;
    assert_eq!(out.logits.shape(), &[4, 1]);
    for i in 0..4 {
        let z = 0.4 * x[[i, 0]] - 0.3 * x[[i, 1]] + 0.8 * x[[i, 2]] - 0.1;
        assert!((out.logits[[i, 0]] - z).abs() < 1e-14);
        assert!((out.probs[[i, 0]] - 1.0 / (1.0 + (-z).exp())).abs() < 1e-14);
    }
    let (s1, s2) = (pat(ndarray::Ix2(4, 1), 0.3), pat(ndarray::Ix2(4, 1), 1.1));
    let seeds = LogisticOutputs {
        logits: s1.clone(),
        probs: s2.clone(),
    };
    let (_, g) = m.evaluate_gradients(&p, LogisticInputs { x: x.view() }, seeds)?;
    gradcheck("logistic regression", &p, &g, |q| {
        let o = m.evaluate(q, LogisticInputs { x: x.view() }).unwrap();
        dot(&o.logits, &s1) + dot(&o.probs, &s2)
    });

    let m = Svm::new()?;
    let mut p = m.randomize_params(3);
    assert_eq!(p.names(), ["svm.weight", "svm.bias"]);
    set_vals(&mut p, "svm.weight", &[0.4, -0.3, 0.8]);
    set_vals(&mut p, "svm.bias", &[-0.1]);
    let out = m.evaluate(&p, SvmInputs { x: x.view() })?;
    for i in 0..4 {
        let z = 0.4 * x[[i, 0]] - 0.3 * x[[i, 1]] + 0.8 * x[[i, 2]] - 0.1;
        assert!((out.out[[i, 0]] - z).abs() < 1e-14);
        assert_eq!(out.decision[[i, 0]], z.signum());
    }
    let s1 = pat(ndarray::Ix2(4, 1), 0.3);
    let seeds = SvmOutputs {
        out: s1.clone(),
        decision: s1.clone(),
    };
    let (_, g) = m.evaluate_gradients(&p, SvmInputs { x: x.view() }, seeds)?;
    // sign passes no gradient: only `output` contributes
    gradcheck("linear svm", &p, &g, |q| {
        dot(&m.evaluate(q, SvmInputs { x: x.view() }).unwrap().out, &s1)
    });
    Ok(())
}

#[test]
fn kernelized_svm_with_the_rbf_kernel() -> mithril::Result<()> {
    let m = KSvm::new()?;
    let mut p = m.randomize_params(5);
    assert_eq!(
        p.names(),
        [
            "svm.kernel_model.l_scale",
            "svm.kernel_model.sigma",
            "svm.weight",
            "svm.bias"
        ]
    );
    assert_eq!(p.svm.weight.shape(), &[1, 4]);
    set_vals(&mut p, "svm.kernel_model.l_scale", &[0.9]);
    set_vals(&mut p, "svm.kernel_model.sigma", &[1.2]);
    let x1 = pat(ndarray::Ix2(5, 2), 0.7);
    let x2 = pat(ndarray::Ix2(4, 2), 3.1);
    let inputs = KSvmInputs {
        x1: x1.view(),
        x2: x2.view(),
    };
    let out = m.evaluate(&p, inputs)?;
    let k = ref_rbf(&x1, &x2, 0.9, 1.2);
    close(
        "kernel",
        out.kernel.as_slice().unwrap(),
        k.as_slice().unwrap(),
        1e-13,
    );
    let (w, b) = (get(&p, "svm.weight"), get(&p, "svm.bias"));
    for i in 0..5 {
        let want: f64 = (0..4).map(|j| k[[i, j]] * w[j]).sum::<f64>() + b[0];
        assert!((out.out[[i, 0]] - want).abs() < 1e-13);
    }
    let (s1, s2) = (pat(ndarray::Ix2(5, 1), 0.3), pat(ndarray::Ix2(5, 4), 0.8));
    let seeds = KSvmOutputs {
        out: s1.clone(),
        kernel: s2.clone(),
    };
    let (_, g) = m.evaluate_gradients(&p, inputs, seeds)?;
    gradcheck("kernelized svm", &p, &g, |q| {
        let o = m.evaluate(q, inputs).unwrap();
        dot(&o.out, &s1) + dot(&o.kernel, &s2)
    });
    Ok(())
}

#[test]
fn polynomial_regression_values_and_gradients() -> mithril::Result<()> {
    let m = PolyReg::new()?;
    let p = m.randomize_params(9);
    assert_eq!(p.names(), ["reg.weight", "reg.bias"]);
    assert_eq!(p.reg.weight.shape(), &[2, 5]);
    let x = ndarray::array![[0.5, -1.0], [1.5, 0.25], [-2.0, 0.7]];
    let out = m.evaluate(&p, PolyRegInputs { x: x.view() })?;
    let feats = ref_poly_features(&x, 2);
    let (w, b) = (get(&p, "reg.weight"), get(&p, "reg.bias"));
    for i in 0..3 {
        for o in 0..2 {
            let want: f64 = (0..5).map(|c| feats[[i, c]] * w[5 * o + c]).sum::<f64>() + b[o];
            assert!((out.y[[i, o]] - want).abs() < 1e-13);
        }
    }
    let seed = pat(ndarray::Ix2(3, 2), 0.3);
    let (_, g) = m.evaluate_gradients(
        &p,
        PolyRegInputs { x: x.view() },
        PolyRegOutputs { y: seed.clone() },
    )?;
    gradcheck("polynomial regression", &p, &g, |q| {
        dot(
            &m.evaluate(q, PolyRegInputs { x: x.view() }).unwrap().y,
            &seed,
        )
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// distance encoders

/// Mithril's `MDSCore` formula (plain powers; `stable_reciprocal` is `1/x` away from 0).
fn ref_mds_core(d: &[f64], pred: &[f64], norm: f64, exact: bool) -> f64 {
    let m = ref_norm_modifier(norm);
    let r = 1.0 / m;
    let (mut s1, mut s2) = (0.0, 0.0);
    for (&dv, &pv) in d.iter().zip(pred) {
        if exact {
            s1 += (dv - pv.powf(r)).abs().powf(m);
            s2 += dv.powf(m);
        } else {
            s1 += (dv.powf(r) - pv.powf(r)).abs().powf(m);
            s2 += dv;
        }
    }
    (s1 / s2).powf(r)
}

#[test]
fn encoder_distance_matrix_plain_values_and_gradients() -> mithril::Result<()> {
    let m = EdmPlain::new()?;
    let mut p = m.randomize_params(0);
    set_vals(
        &mut p,
        "a",
        pat(ndarray::Ix2(3, 2), 0.3).as_slice().unwrap(),
    );
    set_vals(
        &mut p,
        "b",
        pat(ndarray::Ix2(4, 2), 1.7).as_slice().unwrap(),
    );
    // the period is 8: norm_modifier(10.5) = 2.5
    set_vals(&mut p, "norm", &[10.5]);
    assert!((ref_norm_modifier(10.5) - 2.5).abs() < 1e-12);
    let out = m.evaluate(
        &p,
        EdmPlainInputs {
            _marker: PhantomData,
        },
    )?;
    let powered = ref_distance_matrix(&rows(&get(&p, "a"), 3, 2), &rows(&get(&p, "b"), 4, 2), 2.5);
    close(
        "powered",
        out.powered.as_slice().unwrap(),
        powered.as_slice().unwrap(),
        1e-12,
    );
    let fin = powered.mapv(|v| v.powf(1.0 / 2.5));
    close(
        "final",
        out.final_dist.as_slice().unwrap(),
        fin.as_slice().unwrap(),
        1e-12,
    );
    let (s1, s2) = (pat(ndarray::Ix2(3, 4), 0.2), pat(ndarray::Ix2(3, 4), 2.5));
    let seeds = EdmPlainOutputs {
        final_dist: s1.clone(),
        powered: s2.clone(),
    };
    let (_, g) = m.evaluate_gradients(
        &p,
        EdmPlainInputs {
            _marker: PhantomData,
        },
        seeds,
    )?;
    gradcheck("encoder_distance_matrix", &p, &g, |q| {
        let o = m
            .evaluate(
                q,
                EdmPlainInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        dot(&o.final_dist, &s1) + dot(&o.powered, &s2)
    });
    Ok(())
}

#[test]
fn mds_core_plain_values_and_gradients() -> mithril::Result<()> {
    let m = MdsCorePlain::new()?;
    let mut p = m.randomize_params(0);
    let d: Vec<f64> = (0..9).map(|i| 1.0 + 0.5 * wave(i, 0.1)).collect();
    let pred: Vec<f64> = (0..9).map(|i| 1.2 + 0.6 * wave(i, 2.3)).collect();
    set_vals(&mut p, "d", &d);
    set_vals(&mut p, "pred", &pred);
    set_vals(&mut p, "norm", &[2.5]);
    let out = m.evaluate(
        &p,
        MdsCorePlainInputs {
            _marker: PhantomData,
        },
    )?;
    close(
        "exact",
        &[out.exact.into_scalar()],
        &[ref_mds_core(&d, &pred, 2.5, true)],
        1e-12,
    );
    close(
        "powered",
        &[out.powered.into_scalar()],
        &[ref_mds_core(&d, &pred, 2.5, false)],
        1e-12,
    );
    // robust powers equal the plain ones away from 0
    close(
        "robust",
        &[out.robust.into_scalar()],
        &[ref_mds_core(&d, &pred, 2.5, true)],
        1e-12,
    );
    let seeds = MdsCorePlainOutputs {
        exact: ndarray::arr0(1.0),
        powered: ndarray::arr0(-0.7),
        robust: ndarray::arr0(0.4),
    };
    let (_, g) = m.evaluate_gradients(
        &p,
        MdsCorePlainInputs {
            _marker: PhantomData,
        },
        seeds,
    )?;
    gradcheck("mds_core", &p, &g, |q| {
        let o = m
            .evaluate(
                q,
                MdsCorePlainInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        o.exact.into_scalar() - 0.7 * o.powered.into_scalar() + 0.4 * o.robust.into_scalar()
    });
    Ok(())
}

#[test]
fn polynomial_kernel_robust_takes_the_absolute_base() -> mithril::Result<()> {
    let m = PolyKernelRobust::new()?;
    let mut p = m.randomize_params(0);
    set_vals(
        &mut p,
        "a",
        pat(ndarray::Ix2(3, 2), 0.1).as_slice().unwrap(),
    );
    set_vals(
        &mut p,
        "b",
        pat(ndarray::Ix2(4, 2), 2.2).as_slice().unwrap(),
    );
    set_vals(&mut p, "y.poly_coef", &[-0.1]);
    set_vals(&mut p, "y.degree", &[3.0]);
    let out = m.evaluate(
        &p,
        PolyKernelRobustInputs {
            _marker: PhantomData,
        },
    )?;
    let bases =
        ref_matmul_t(&rows(&get(&p, "a"), 3, 2), &rows(&get(&p, "b"), 4, 2)).mapv(|d| d - 0.1);
    assert!(
        bases.iter().any(|&b| b < -0.05),
        "a negative base shows the |base|"
    );
    assert!(
        bases.iter().all(|&b| b.abs() > 0.05),
        "away from the kink at 0"
    );
    let want = bases.mapv(|b| b.abs().powi(3));
    close(
        "robust polynomial kernel",
        out.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-13,
    );
    let seed = pat(ndarray::Ix2(3, 4), 0.6);
    let (_, g) = m.evaluate_gradients(
        &p,
        PolyKernelRobustInputs {
            _marker: PhantomData,
        },
        PolyKernelRobustOutputs { y: seed.clone() },
    )?;
    gradcheck("robust polynomial kernel", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                PolyKernelRobustInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });
    Ok(())
}

#[test]
fn encoder_distance_matrix_robust_self_distances() -> mithril::Result<()> {
    // the diagonal is 0: `power(0, 1/m)` has an infinite slope, `robust_power` a finite one
    let m = EdmSelf::new()?;
    let mut p = m.randomize_params(0);
    set_vals(
        &mut p,
        "a",
        pat(ndarray::Ix2(4, 2), 0.8).as_slice().unwrap(),
    );
    let a = rows(&get(&p, "a"), 4, 2);
    let out = m.evaluate(
        &p,
        EdmSelfInputs {
            _marker: PhantomData,
        },
    )?;
    let want = ref_distance_matrix(&a, &a, 2.0).mapv(f64::sqrt);
    close(
        "euclidean",
        out.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-13,
    );
    let seed = pat(ndarray::Ix2(4, 4), 1.4);
    let (_, g) = m.evaluate_gradients(
        &p,
        EdmSelfInputs {
            _marker: PhantomData,
        },
        EdmSelfOutputs { y: seed.clone() },
    )?;
    gradcheck("encoder_distance_matrix(a, a)", &p, &g, |q| {
        dot(
            &m.evaluate(
                q,
                EdmSelfInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed,
        )
    });
    Ok(())
}

#[test]
fn mds_from_points_and_from_distances() -> mithril::Result<()> {
    let x = pat(ndarray::Ix2(5, 3), 0.25);
    let norm = ndarray::arr0(2.0);
    let m = MdsPoints::new()?;
    let mut p = m.randomize_params(1);
    assert_eq!(p.names(), ["mds.coords"]);
    set_vals(
        &mut p,
        "mds.coords",
        pat(ndarray::Ix2(5, 2), 1.9).as_slice().unwrap(),
    );
    let inputs = MdsPointsInputs {
        x: x.view(),
        norm: norm.view(),
    };
    let out = m.evaluate(&p, inputs)?;
    let c = rows(&get(&p, "mds.coords"), 5, 2);
    assert_eq!(out.coords, c);
    let dx = ref_distance_matrix(&x, &x, 2.0);
    let dc = ref_distance_matrix(&c, &c, 2.0);
    let want = ref_mds_core(dx.as_slice().unwrap(), dc.as_slice().unwrap(), 2.0, false);
    close("MDS points", &[out.stress.into_scalar()], &[want], 1e-12);
    let seeds = MdsPointsOutputs {
        stress: ndarray::arr0(1.0),
        coords: pat(ndarray::Ix2(5, 2), 0.1),
    };
    let (_, g) = m.evaluate_gradients(&p, inputs, seeds.clone())?;
    gradcheck("MDS points", &p, &g, |q| {
        let o = m.evaluate(q, inputs).unwrap();
        o.stress.into_scalar() + dot(&o.coords, &seeds.coords)
    });

    let d = dx.mapv(f64::sqrt);
    let m = MdsDistances::new()?;
    let mut p = m.randomize_params(1);
    set_vals(
        &mut p,
        "mds.coords",
        pat(ndarray::Ix2(5, 2), 1.9).as_slice().unwrap(),
    );
    let inputs = MdsDistancesInputs {
        d: d.view(),
        norm: norm.view(),
    };
    let out = m.evaluate(&p, inputs)?;
    let want = ref_mds_core(d.as_slice().unwrap(), dc.as_slice().unwrap(), 2.0, true);
    close("MDS distances", &[out.stress.into_scalar()], &[want], 1e-12);
    let (_, g) = m.evaluate_gradients(
        &p,
        inputs,
        MdsDistancesOutputs {
            stress: ndarray::arr0(1.0),
        },
    )?;
    gradcheck("MDS distances", &p, &g, |q| {
        m.evaluate(q, inputs).unwrap().stress.into_scalar()
    });
    Ok(())
}

/// Mithril's `TSNECore` with a given `p_joint`: `sum p (rlog(p) - rlog(q))` with `q` the
/// normalized Student-t affinities, 0 on the diagonal (where `p` is 0 too, so those terms vanish).
fn ref_tsne(pred: &Array2<f64>, p: &Array2<f64>) -> f64 {
    let n = pred.nrows();
    let mut q = Array2::zeros((n, n));
    for i in 0..n {
        for j in 0..n {
            if i != j {
                q[[i, j]] = 1.0 / (1.0 + pred[[i, j]]);
            }
        }
    }
    let total = q.sum();
    let mut kl = 0.0;
    for i in 0..n {
        for j in 0..n {
            if i != j {
                kl += p[[i, j]] * (p[[i, j]].ln() - (q[[i, j]] / total).ln());
            }
        }
    }
    kl
}

/// A symmetric joint distribution with a zero diagonal (the shape of t-SNE's `p_joint`).
fn p_joint(n: usize) -> Array2<f64> {
    let mut p = Array2::zeros((n, n));
    for i in 0..n {
        for j in 0..i {
            let v = 1.0 + 0.5 * wave(i * n + j, 0.7);
            p[[i, j]] = v;
            p[[j, i]] = v;
        }
    }
    let t = p.sum();
    p / t
}

#[test]
fn tsne_core_values_and_gradients() -> mithril::Result<()> {
    let m = TsneCore::new()?;
    let mut p = m.randomize_params(0);
    // non-negative squared distances; the diagonal does not matter (masked)
    let pred: Vec<f64> = (0..25).map(|i| 0.5 + 0.4 * wave(i, 1.1)).collect();
    set_vals(&mut p, "pred", &pred);
    let pj = p_joint(5);
    let inputs = TsneCoreInputs { p_joint: pj.view() };
    let out = m.evaluate(&p, inputs)?;
    let want = ref_tsne(&rows(&pred, 5, 5), &pj);
    close("tsne_core", &[out.y.into_scalar()], &[want], 1e-12);
    let (_, g) = m.evaluate_gradients(
        &p,
        inputs,
        TsneCoreOutputs {
            y: ndarray::arr0(1.0),
        },
    )?;
    let gp = get(&g, "pred");
    for i in 0..5 {
        assert_eq!(gp[6 * i], 0.0, "the masked diagonal gets no gradient");
    }
    gradcheck("tsne_core", &p, &g, |q| {
        m.evaluate(q, inputs).unwrap().y.into_scalar()
    });
    Ok(())
}

#[test]
fn tsne_from_points() -> mithril::Result<()> {
    let m = Tsne::new()?;
    let mut p = m.randomize_params(2);
    assert_eq!(p.names(), ["tsne.coords"]);
    set_vals(
        &mut p,
        "tsne.coords",
        pat(ndarray::Ix2(5, 2), 0.6).as_slice().unwrap(),
    );
    let x = pat(ndarray::Ix2(5, 3), 0.25);
    let norm = ndarray::arr0(2.0);
    let pj = p_joint(5);
    let inputs = TsneInputs {
        x: x.view(),
        norm: norm.view(),
        p_joint: pj.view(),
    };
    let out = m.evaluate(&p, inputs)?;
    let c = rows(&get(&p, "tsne.coords"), 5, 2);
    let want = ref_tsne(&ref_distance_matrix(&c, &c, 2.0), &pj);
    close("TSNE", &[out.y.into_scalar()], &[want], 1e-12);
    let (_, g) = m.evaluate_gradients(
        &p,
        inputs,
        TsneOutputs {
            y: ndarray::arr0(1.0),
        },
    )?;
    gradcheck("TSNE", &p, &g, |q| {
        m.evaluate(q, inputs).unwrap().y.into_scalar()
    });
    Ok(())
}

/// Lower Cholesky factor, row by row.
fn ref_cholesky(a: &Array2<f64>) -> Array2<f64> {
    let n = a.nrows();
    let mut l = Array2::<f64>::zeros((n, n));
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[[i, k]] * l[[j, k]]).sum();
            if i == j {
                l[[i, i]] = (a[[i, i]] - s).sqrt();
            } else {
                l[[i, j]] = (a[[i, j]] - s) / l[[j, j]];
            }
        }
    }
    l
}

/// Solves `L X = B` (forward) for lower-triangular `L`.
fn forward(l: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let mut x = b.clone();
    for c in 0..b.ncols() {
        for i in 0..l.nrows() {
            let s: f64 = (0..i).map(|k| l[[i, k]] * x[[k, c]]).sum();
            x[[i, c]] = (b[[i, c]] - s) / l[[i, i]];
        }
    }
    x
}

/// Solves `L^T X = B` (backward) for lower-triangular `L`.
fn backward_t(l: &Array2<f64>, b: &Array2<f64>) -> Array2<f64> {
    let n = l.nrows();
    let mut x = b.clone();
    for c in 0..b.ncols() {
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|k| l[[k, i]] * x[[k, c]]).sum();
            x[[i, c]] = (b[[i, c]] - s) / l[[i, i]];
        }
    }
    x
}

#[test]
fn gauss_process_regression_core_values_and_gradients() -> mithril::Result<()> {
    let m = Gpr::new()?;
    let mut p = m.randomize_params(0);
    set_vals(&mut p, "pts", &[0.0, 0.1, 0.9, -0.4, -0.7, 0.8, 1.5, 1.2]);
    set_vals(
        &mut p,
        "test_pts",
        &[0.2, 0.0, 1.0, -0.5, -0.5, 1.0, 1.4, 1.0],
    );
    set_vals(&mut p, "s", &[0.1]);
    set_vals(&mut p, "mu", &[0.1, -0.2, 0.05, 0.3]);
    set_vals(&mut p, "label", &[1.0, -0.5, 0.7, 2.0]);
    let out = m.evaluate(
        &p,
        GprInputs {
            _marker: PhantomData,
        },
    )?;

    let pts = rows(&get(&p, "pts"), 4, 2);
    let tpts = rows(&get(&p, "test_pts"), 4, 2);
    let k = ref_distance_matrix(&pts, &pts, 2.0).mapv(|d| (-0.5 * d).exp());
    let k_star = ref_distance_matrix(&pts, &tpts, 2.0).mapv(|d| 2.0 * (-0.5 * d).exp());
    let mut k_term = k.clone();
    for i in 0..4 {
        k_term[[i, i]] += 0.1;
    }
    let l = ref_cholesky(&k_term);
    let mu = rows(&get(&p, "mu"), 4, 1);
    let diff = rows(&get(&p, "label"), 4, 1) - &mu;
    let alpha = backward_t(&l, &forward(&l, &diff));
    let quad: f64 = (0..4).map(|i| diff[[i, 0]] * alpha[[i, 0]]).sum();
    let logdet: f64 = (0..4).map(|i| l[[i, i]].ln()).sum();
    let loss = 0.5 * quad + logdet + 4.0 * (2.0 * std::f64::consts::PI).ln() / 2.0;
    assert_eq!(out.loss.shape(), &[1]);
    close("loss", out.loss.as_slice().unwrap(), &[loss], 1e-12);
    let pred: Vec<f64> = (0..4)
        .map(|j| mu[[j, 0]] + (0..4).map(|i| k[[i, j]] * alpha[[i, 0]]).sum::<f64>())
        .collect();
    close(
        "prediction",
        out.prediction.as_slice().unwrap(),
        &pred,
        1e-12,
    );
    let v = forward(&l, &k);
    let conf: Vec<f64> = (0..4)
        .map(|j| {
            let vv: f64 = (0..4).map(|i| v[[i, j]] * v[[i, j]]).sum();
            let d = k_star[[j, j]] - vv;
            assert!(d.abs() > 0.05, "away from the kink of |.|");
            0.1 + d.abs()
        })
        .collect();
    close(
        "confidence",
        out.confidence.as_slice().unwrap(),
        &conf,
        1e-12,
    );

    let seeds = GprOutputs {
        loss: ndarray::array![1.0],
        prediction: pat(ndarray::Ix2(4, 1), 0.3),
        confidence: pat(ndarray::Ix2(4, 1), 1.9),
    };
    let (_, g) = m.evaluate_gradients(
        &p,
        GprInputs {
            _marker: PhantomData,
        },
        seeds.clone(),
    )?;
    gradcheck("gauss_process_regression_core", &p, &g, |q| {
        let o = m
            .evaluate(
                q,
                GprInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        dot(&o.loss, &seeds.loss)
            + dot(&o.prediction, &seeds.prediction)
            + dot(&o.confidence, &seeds.confidence)
    });
    Ok(())
}

/// t-SNE's conditional probabilities of row `i` for width `sigma` (0 at `j = i`).
fn ref_row_probs(sq: &Array2<f64>, i: usize, sigma: f64) -> Vec<f64> {
    let n = sq.ncols();
    let logits: Vec<f64> = (0..n)
        .map(|j| -sq[[i, j]] / (2.0 * sigma * sigma))
        .collect();
    let mx = (0..n)
        .filter(|&j| j != i)
        .map(|j| logits[j])
        .fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = (0..n)
        .map(|j| if j == i { 0.0 } else { (logits[j] - mx).exp() })
        .collect();
    let t: f64 = e.iter().sum();
    e.iter().map(|v| v / t).collect()
}

fn ref_perplexity(p: &[f64]) -> f64 {
    (-p.iter()
        .filter(|&&v| v > 0.0)
        .map(|v| v * v.ln())
        .sum::<f64>())
    .exp()
}

#[test]
fn tsne_p_joint_reaches_the_target_perplexity() -> mithril::Result<()> {
    let m = PJoint::new()?;
    let mut p = m.randomize_params(0);
    set_vals(
        &mut p,
        "x",
        pat(ndarray::Ix2(6, 3), 0.45).as_slice().unwrap(),
    );
    let x = rows(&get(&p, "x"), 6, 3);
    let sq = ref_distance_matrix(&x, &x, 2.0);
    let out = m.evaluate(
        &p,
        PJointInputs {
            _marker: PhantomData,
        },
    )?;
    // the reference: a bisection on [0, 1001] per row, as Mithril's `binary_search`
    let mut cond = Array2::<f64>::zeros((6, 6));
    for i in 0..6 {
        let (mut lo, mut hi) = (0.0f64, 1001.0f64);
        for _ in 0..200 {
            let mid = 0.5 * (lo + hi);
            if mid == lo || mid == hi {
                break;
            }
            if ref_perplexity(&ref_row_probs(&sq, i, mid)) > 3.0 {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        let row = ref_row_probs(&sq, i, 0.5 * (lo + hi));
        // each row reaches the target perplexity
        assert!((ref_perplexity(&row) - 3.0).abs() < 1e-9, "row {i}");
        for j in 0..6 {
            cond[[i, j]] = row[j];
        }
    }
    let want = (&cond + &cond.t()) / 12.0;
    close(
        "tsne_p_joint",
        out.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-9,
    );
    assert!((out.y.sum() - 1.0).abs() < 1e-12 && (0..6).all(|i| out.y[[i, i]] == 0.0));
    // no gradient, as Mithril's
    let (_, g) = m.evaluate_gradients(
        &p,
        PJointInputs {
            _marker: PhantomData,
        },
        PJointOutputs { y: want },
    )?;
    assert!(get(&g, "x").iter().all(|&v| v == 0.0));
    Ok(())
}
