//! Mithril's catalog math: the robust forms (`robust_sqrt`, `robust_log`, `stable_reciprocal`,
//! `robust_power`) and `stop_gradient` against a hand-written reference of Mithril's formulas;
//! the library losses at the edges of their domains (probabilities 0 and 1, kinks, ignored
//! targets); ties of `maximum` / `minimum`.
//!
//! Gradients: f64 central differences (step 1e-6, error `|fd - g| / (1 + max(|fd|, |g|))` below
//! 1e-6, as in `gradcheck`) away from thresholds and kinks; hand-computed values at and
//! below the thresholds, at kinks and at the domain edges, where a finite difference says
//! nothing (or straddles the special point).
#![allow(clippy::needless_range_loop)]

use mithril::prelude::*;
use ndarray::{Array1, Array2, array};
use std::marker::PhantomData;

mithril! {
    model CeProbs {
        param p: f64[3, 2];
        input t: i64[3];
        output l = cross_entropy(p, t, input_type = "probs");
    }

    model Bce {
        param p: f64[6];
        input t: f64[6];
        output l = binary_cross_entropy(p, t);
    }

    model Ties {
        param a: f64[5];
        param b: f64[5];
        output mx = maximum(a, b);
        output mn = minimum(a, b);
    }

    model Kinks {
        param x: f64[3];
        input t: f64[3];
        output hinge = hinge_loss(x, t);
        output pinball = quantile_loss(x, t, quantile = 0.3);
        output l1 = absolute_error(x, t);
    }

    model KlEdge {
        param logq: f64[3];
        param t: f64[3];
        output kl = kl_divergence(logq, t);
    }

    model CeIgnore {
        param z: f64[4, 3];
        input t: i64[4];
        input t2: i64[4];
        output none = cross_entropy(z, t);
        output total = cross_entropy(z, t, reduction = "sum");
        output avg = cross_entropy(z, t, reduction = "mean");
        output probs_avg = cross_entropy(softmax(z), t, input_type = "probs", reduction = "mean");
        output custom = cross_entropy(log_softmax(z), t2, input_type = "log_probs", ignore_index = 2, reduction = "mean");
    }

    model Robust {
        param x: f64[8];
        param e: f64[8];
        output sq = robust_sqrt(x);
        output lg = robust_log(x);
        output rc = stable_reciprocal(x);
        output pw = robust_power(x, e);
        output sq_h = robust_sqrt(x, threshold = 0.5);
        output lg_h = robust_log(x, threshold = 0.5);
        output rc_h = stable_reciprocal(x, threshold = 0.5);
        output pw_h = robust_power(x, e, threshold = 0.5);
    }

    model RobustF32 {
        param x: f32[3];
        output sq = robust_sqrt(x);
        output lg = robust_log(x);
        output rc = stable_reciprocal(x);
        output pw = robust_power(x, 0.5);
    }

    model Stop {
        param a: f64[3];
        output y = a * stop_gradient(a) + stop_gradient(square(a));
    }
}

/// `|a - b| <= tol * (1 + max(|a|, |b|))`, with a message.
fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * (1.0 + got.abs().max(want.abs())),
        "{what}: got {got}, want {want}"
    );
}

fn no_nan(what: &str, v: impl IntoIterator<Item = f64>) {
    for (i, x) in v.into_iter().enumerate() {
        assert!(x.is_finite(), "{what}[{i}] = {x}");
    }
}

// ---------------------------------------------------------------------------------------------
// losses at the edges of their domains

#[test]
fn cross_entropy_probs_at_zero_and_one() {
    let m = CeProbs::new().unwrap();
    let mut p = m.randomize_params(0);
    // the case ([0, 1], target 1), a zero target probability, an interior row
    p.p = array![[0.0, 1.0], [1.0, 0.0], [0.25, 0.75]];
    let t = array![1i64, 1, 0];
    let (o, g) = m
        .evaluate_gradients(
            &p,
            CeProbsInputs { t: t.view() },
            CeProbsOutputs { l: Array1::ones(3) },
        )
        .unwrap();
    // -log p[t], the log clamped at -100 (PyTorch)
    assert_eq!(o.l[0], 0.0);
    assert_eq!(o.l[1], 100.0);
    close("l[2]", o.l[2], -(0.25f64).ln(), 1e-15);
    no_nan("grad", g.p.iter().copied());
    // -1 / p[t] at the target, 0 elsewhere; 0 in the clamped region (p[t] = 0)
    assert_eq!(g.p, array![[0.0, -1.0], [0.0, 0.0], [-4.0, 0.0]]);
}

#[test]
fn binary_cross_entropy_at_zero_and_one() {
    let m = Bce::new().unwrap();
    let mut p = m.randomize_params(0);
    p.p = array![1.0, 0.5, 0.0, 0.25, 0.0, 1.0];
    let t = array![1.0, 1.0, 0.0, 0.0, 1.0, 0.0];
    let (o, g) = m
        .evaluate_gradients(
            &p,
            BceInputs { t: t.view() },
            BceOutputs { l: Array1::ones(6) },
        )
        .unwrap();
    let ln2 = std::f64::consts::LN_2;
    let want = [0.0, ln2, 0.0, -(0.75f64).ln(), 100.0, 100.0];
    for i in 0..6 {
        close(&format!("l[{i}]"), o.l[i], want[i], 1e-15);
    }
    no_nan("grad", g.p.iter().copied());
    // -t / p + (1 - t) / (1 - p) with a zero-weight term dropped; 0 where the log is clamped
    let want_g = [-1.0, -2.0, 1.0, 1.0 / 0.75, 0.0, 0.0];
    for i in 0..6 {
        close(&format!("grad[{i}]"), g.p[i], want_g[i], 1e-15);
    }
}

#[test]
fn binary_cross_entropy_interior_matches_central_differences() {
    let m = Bce::new().unwrap();
    let mut p = m.randomize_params(0);
    p.p = array![0.1, 0.35, 0.5, 0.65, 0.9, 0.99];
    let t = array![1.0, 0.0, 0.3, 1.0, 0.0, 0.7];
    let seed = array![1.0, 2.0, -1.0, 0.5, 1.5, -0.5];
    let loss = |p: &BceParams| {
        let o = m.evaluate(p, BceInputs { t: t.view() }).unwrap();
        (&o.l * &seed).sum()
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            BceInputs { t: t.view() },
            BceOutputs { l: seed.clone() },
        )
        .unwrap();
    for i in 0..6 {
        let h = 1e-6;
        let mut a = p.clone();
        a.p[i] += h;
        let mut b = p.clone();
        b.p[i] -= h;
        let fd = (loss(&a) - loss(&b)) / (2.0 * h);
        close(&format!("bce grad[{i}]"), g.p[i], fd, 1e-6);
        // and the closed form
        let (pp, tt) = (p.p[i], t[i]);
        close(
            &format!("bce closed[{i}]"),
            g.p[i],
            seed[i] * (-tt / pp + (1.0 - tt) / (1.0 - pp)),
            1e-12,
        );
    }
}

#[test]
fn maximum_minimum_split_ties_evenly() {
    let m = Ties::new().unwrap();
    let mut p = m.randomize_params(0);
    p.a = array![1.0, 2.0, 3.0, -1.0, 0.0];
    p.b = array![1.0, 0.0, 5.0, -1.0, -0.0];
    // seed only `mx`, then only `mn`
    let z = || Array1::<f64>::zeros(5);
    let (o, g) = m
        .evaluate_gradients(
            &p,
            TiesInputs {
                _marker: PhantomData,
            },
            TiesOutputs {
                mx: Array1::ones(5),
                mn: z(),
            },
        )
        .unwrap();
    assert_eq!(o.mx, array![1.0, 2.0, 5.0, -1.0, 0.0]);
    assert_eq!(o.mn, array![1.0, 0.0, 3.0, -1.0, 0.0]);
    assert_eq!(g.a, array![0.5, 1.0, 0.0, 0.5, 0.5]);
    assert_eq!(g.b, array![0.5, 0.0, 1.0, 0.5, 0.5]);
    let (_, g) = m
        .evaluate_gradients(
            &p,
            TiesInputs {
                _marker: PhantomData,
            },
            TiesOutputs {
                mx: z(),
                mn: Array1::ones(5) * 4.0,
            },
        )
        .unwrap();
    assert_eq!(g.a, array![2.0, 0.0, 4.0, 2.0, 2.0]);
    assert_eq!(g.b, array![2.0, 4.0, 0.0, 2.0, 2.0]);
}

#[test]
fn hinge_quantile_absolute_error_at_their_kinks() {
    let m = Kinks::new().unwrap();
    let mut p = m.randomize_params(0);
    p.x = array![1.0, -1.0, 0.5];
    let t = array![1.0, -1.0, 1.0];
    let one = || Array1::<f64>::ones(3);
    let zero = || Array1::<f64>::zeros(3);
    let run = |s: KinksOutputs| {
        m.evaluate_gradients(&p, KinksInputs { t: t.view() }, s)
            .unwrap()
    };
    // hinge: x * t = 1 at 0 and 1 (the kink: half the slope -t, Mithril's), 0.5 at 2
    let (o, g) = run(KinksOutputs {
        hinge: one(),
        pinball: zero(),
        l1: zero(),
    });
    assert_eq!(o.hinge, array![0.0, 0.0, 0.5]);
    assert_eq!(g.x, array![-0.5, 0.5, -1.0]);
    // pinball with q = 0.3: e = t - x = 0 at 0 and 1 (gradient 0.5 - q, Mithril's), e = 0.5 > 0
    // at 2 (gradient -q)
    let (o, g) = run(KinksOutputs {
        hinge: zero(),
        pinball: one(),
        l1: zero(),
    });
    assert_eq!(o.pinball[2], 0.3 * 0.5);
    for (i, want) in [0.2, 0.2, -0.3].into_iter().enumerate() {
        close(&format!("pinball grad[{i}]"), g.x[i], want, 1e-15);
    }
    // |x - t|: sign(0) = 0 at the kink (PyTorch and Mithril)
    let (_, g) = run(KinksOutputs {
        hinge: zero(),
        pinball: zero(),
        l1: one(),
    });
    assert_eq!(g.x, array![0.0, 0.0, -1.0]);
}

#[test]
fn kl_divergence_at_zero_target() {
    let m = KlEdge::new().unwrap();
    let mut p = m.randomize_params(0);
    p.logq = array![0.2f64.ln(), 0.3f64.ln(), 0.5f64.ln()];
    p.t = array![0.0, 0.5, 0.5];
    let (o, g) = m
        .evaluate_gradients(
            &p,
            KlEdgeInputs {
                _marker: PhantomData,
            },
            KlEdgeOutputs {
                kl: Array1::ones(3),
            },
        )
        .unwrap();
    assert_eq!(o.kl[0], 0.0);
    close("kl[1]", o.kl[1], 0.5 * (0.5f64.ln() - 0.3f64.ln()), 1e-15);
    no_nan("grad t", g.t.iter().copied());
    // d/dlogq = -t; d/dt = log t - logq + 1 where t > 0, 0 at t = 0 (the where_ branch)
    assert_eq!(g.logq, array![0.0, -0.5, -0.5]);
    assert_eq!(g.t[0], 0.0);
    close("dt[1]", g.t[1], 0.5f64.ln() - 0.3f64.ln() + 1.0, 1e-15);
}

/// Softmax of each row, computed here.
fn softmax_rows(z: &Array2<f64>) -> Array2<f64> {
    let mut s = z.clone();
    for mut r in s.rows_mut() {
        let mx = r.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        r.mapv_inplace(|v| (v - mx).exp());
        let tot = r.sum();
        r.mapv_inplace(|v| v / tot);
    }
    s
}

#[test]
fn cross_entropy_ignore_index_and_reductions() {
    let m = CeIgnore::new().unwrap();
    let mut p = m.randomize_params(0);
    p.z = array![
        [0.3, -1.2, 0.8],
        [1.5, 0.1, -0.4],
        [-0.7, 0.9, 0.2],
        [0.05, 0.6, -1.1]
    ];
    // sample 1 ignored (PyTorch's default -100); `custom` ignores class 2 (samples 0 and 2)
    let t = array![0i64, -100, 2, 1];
    let t2 = array![2i64, 0, 2, 1];
    let sm = softmax_rows(&p.z);
    let nll = |i: usize, c: i64| -sm[[i, c as usize]].ln();
    let inputs = || CeIgnoreInputs {
        t: t.view(),
        t2: t2.view(),
    };
    let o = m.evaluate(&p, inputs()).unwrap();
    let want_none = [nll(0, 0), 0.0, nll(2, 2), nll(3, 1)];
    for i in 0..4 {
        close(&format!("none[{i}]"), o.none[i], want_none[i], 1e-14);
    }
    let s: f64 = want_none.iter().sum();
    close("sum", o.total.clone().into_scalar(), s, 1e-14);
    // the mean divides by the 3 samples not ignored (PyTorch), not by 4
    close("mean", o.avg.clone().into_scalar(), s / 3.0, 1e-14);
    close(
        "probs mean",
        o.probs_avg.clone().into_scalar(),
        s / 3.0,
        1e-14,
    );
    close(
        "custom mean",
        o.custom.clone().into_scalar(),
        (nll(1, 0) + nll(3, 1)) / 2.0,
        1e-14,
    );

    // gradients: (softmax - onehot) / 3 on the kept rows of `avg`, exactly 0 on the ignored row
    let seeds = |w: [f64; 5]| CeIgnoreOutputs {
        none: Array1::from_elem(4, w[0]),
        total: ndarray::arr0(w[1]),
        avg: ndarray::arr0(w[2]),
        probs_avg: ndarray::arr0(w[3]),
        custom: ndarray::arr0(w[4]),
    };
    let (_, g) = m
        .evaluate_gradients(&p, inputs(), seeds([0.0, 0.0, 1.0, 0.0, 0.0]))
        .unwrap();
    for i in 0..4 {
        for c in 0..3 {
            let want = if i == 1 {
                0.0
            } else {
                (sm[[i, c]] - if c as i64 == t[i] { 1.0 } else { 0.0 }) / 3.0
            };
            close(&format!("avg grad[{i}, {c}]"), g.z[[i, c]], want, 1e-14);
        }
    }
    assert!(g.z.row(1).iter().all(|&v| v == 0.0));
    // every output, weighted, against central differences
    let w = [0.7, -0.4, 1.3, 0.9, -1.1];
    let loss = |p: &CeIgnoreParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        w[0] * o.none.sum()
            + w[1] * o.total.into_scalar()
            + w[2] * o.avg.into_scalar()
            + w[3] * o.probs_avg.into_scalar()
            + w[4] * o.custom.into_scalar()
    };
    let (_, g) = m.evaluate_gradients(&p, inputs(), seeds(w)).unwrap();
    for i in 0..4 {
        for c in 0..3 {
            let h = 1e-6;
            let mut a = p.clone();
            a.z[[i, c]] += h;
            let mut b = p.clone();
            b.z[[i, c]] -= h;
            let fd = (loss(&a) - loss(&b)) / (2.0 * h);
            close(&format!("grad[{i}, {c}]"), g.z[[i, c]], fd, 1e-6);
        }
    }
}

#[test]
fn cross_entropy_every_sample_ignored_gives_nan_mean_and_zero_gradient() {
    let m = CeIgnore::new().unwrap();
    let mut p = m.randomize_params(0);
    p.z = Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f64 * 0.1);
    let t = array![-100i64, -100, -100, -100];
    let t2 = array![2i64, 2, 2, 2];
    let inputs = || CeIgnoreInputs {
        t: t.view(),
        t2: t2.view(),
    };
    let o = m.evaluate(&p, inputs()).unwrap();
    // PyTorch: the mean over no samples is NaN; the sum is 0
    assert!(o.avg.into_scalar().is_nan());
    assert!(o.custom.into_scalar().is_nan());
    assert_eq!(o.total.into_scalar(), 0.0);
    assert!(o.none.iter().all(|&v| v == 0.0));
    let seeds = CeIgnoreOutputs {
        none: Array1::ones(4),
        total: ndarray::arr0(1.0),
        avg: ndarray::arr0(1.0),
        probs_avg: ndarray::arr0(1.0),
        custom: ndarray::arr0(1.0),
    };
    let (_, g) = m.evaluate_gradients(&p, inputs(), seeds).unwrap();
    assert!(g.z.iter().all(|&v| v == 0.0), "{:?}", g.z);
}

// ---------------------------------------------------------------------------------------------
// the robust forms: Mithril's formulas written out here (mithril/cores/python/numpy/ops.py and
// ops_grad.py), value and derivative(s)

const TINY64: f64 = 2.2250738585072014e-308;
const RECIP64: f64 = 1.4916681462400413e-153;

fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn ref_sqrt(x: f64, c: f64) -> (f64, f64) {
    let a = x.abs();
    if a < c {
        (a / c.sqrt(), sign(x) / c.sqrt())
    } else {
        (a.sqrt(), sign(x) * 0.5 / a.sqrt())
    }
}

fn ref_log(x: f64, c: f64) -> (f64, f64) {
    let a = x.abs();
    let (v, d) = if a < c {
        (c.ln() + a / c - 1.0, 1.0 / c)
    } else {
        (a.ln(), 1.0 / a)
    };
    // Mithril negates the derivative for x < 0 only (x = 0 keeps +1/c)
    (v, if x < 0.0 { -d } else { d })
}

fn ref_recip(x: f64, c: f64) -> (f64, f64) {
    if x.abs() < c {
        let s = sign(x) + (1.0 - sign(x.abs()));
        (s * 2.0 / c - x / (c * c), -1.0 / (c * c))
    } else {
        (1.0 / x, -1.0 / (x * x))
    }
}

/// (value, d/dbase, d/dexponent)
fn ref_pow(b: f64, e: f64, c: f64) -> (f64, f64, f64) {
    let a = b.abs();
    let cond = (e < 1.0 - c.ln() / a.ln()) && a < c;
    if cond {
        (a / c, sign(b) / c, 0.0)
    } else {
        let y = a.powf(e);
        let de = if a == 0.0 { 0.0 } else { y * a.ln() };
        (y, sign(b) * e * a.powf(e - 1.0), de)
    }
}

#[test]
fn robust_forms_values_and_gradients_f64() {
    let m = Robust::new().unwrap();
    let mut p = m.randomize_params(0);
    // 0, a subnormal below the default threshold, values below and above 0.5, negatives
    p.x = array![0.0, 1e-310, 0.2, -0.3, 0.9, -1.7, 2.5, -4.0];
    p.e = array![0.5, 0.5, 0.3, 1.5, 2.0, 0.7, -0.5, 3.0];
    let o = m
        .evaluate(
            &p,
            RobustInputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    type Out = fn(&RobustOutputs) -> Array1<f64>;
    let outs: [(&str, Out, f64); 8] = [
        ("sq", |o| o.sq.clone(), TINY64),
        ("lg", |o| o.lg.clone(), TINY64),
        ("rc", |o| o.rc.clone(), RECIP64),
        ("pw", |o| o.pw.clone(), TINY64),
        ("sq_h", |o| o.sq_h.clone(), 0.5),
        ("lg_h", |o| o.lg_h.clone(), 0.5),
        ("rc_h", |o| o.rc_h.clone(), 0.5),
        ("pw_h", |o| o.pw_h.clone(), 0.5),
    ];
    let reference = |k: usize, i: usize, c: f64| -> (f64, f64, f64) {
        let (x, e) = (p.x[i], p.e[i]);
        match k % 4 {
            0 => {
                let (v, d) = ref_sqrt(x, c);
                (v, d, 0.0)
            }
            1 => {
                let (v, d) = ref_log(x, c);
                (v, d, 0.0)
            }
            2 => {
                let (v, d) = ref_recip(x, c);
                (v, d, 0.0)
            }
            _ => ref_pow(x, e, c),
        }
    };
    for (k, (name, get, c)) in outs.iter().enumerate() {
        let y = get(&o);
        for i in 0..8 {
            close(&format!("{name}[{i}]"), y[i], reference(k, i, *c).0, 1e-14);
        }
    }
    // the special points, by hand: at 0 and at the subnormal (below the default thresholds)
    assert_eq!(o.sq[0], 0.0);
    close("lg(0)", o.lg[0], TINY64.ln() - 1.0, 1e-15);
    close("rc(0)", o.rc[0], 2.0 / RECIP64, 1e-15);
    assert_eq!(o.pw[0], 0.0);
    close(
        "rc(1e-310)",
        o.rc[1],
        2.0 / RECIP64 - 1e-310 / (RECIP64 * RECIP64),
        1e-15,
    );
    // below 0.5: linear pieces
    close("sq_h(0.2)", o.sq_h[2], 0.2 / 0.5f64.sqrt(), 1e-15);
    close("lg_h(-0.3)", o.lg_h[3], 0.5f64.ln() + 0.6 - 1.0, 1e-15);
    close("rc_h(0.2)", o.rc_h[2], 4.0 - 0.8, 1e-15);
    close("pw_h(0.2, 0.3)", o.pw_h[2], 0.4, 1e-15);

    // gradients, one output seeded at a time (each form is elementwise: a diagonal Jacobian)
    let zero = || Array1::<f64>::zeros(8);
    for k in 0..8 {
        let mut s = [
            zero(),
            zero(),
            zero(),
            zero(),
            zero(),
            zero(),
            zero(),
            zero(),
        ];
        s[k] = Array1::ones(8);
        let [sq, lg, rc, pw, sq_h, lg_h, rc_h, pw_h] = s;
        let seeds = RobustOutputs {
            sq,
            lg,
            rc,
            pw,
            sq_h,
            lg_h,
            rc_h,
            pw_h,
        };
        let (_, g) = m
            .evaluate_gradients(
                &p,
                RobustInputs {
                    _marker: PhantomData,
                },
                seeds,
            )
            .unwrap();
        let (name, get, c) = outs[k];
        for i in 0..8 {
            let (_, dx, de) = reference(k, i, c);
            close(&format!("d{name}/dx[{i}]"), g.x[i], dx, 1e-14);
            close(
                &format!("d{name}/de[{i}]"),
                g.e[i],
                if k % 4 == 3 { de } else { 0.0 },
                1e-14,
            );
            // central differences where the step stays on one piece: away from 0, the
            // subnormal and the thresholds
            let x = p.x[i];
            if x.abs() < 0.05 || (x.abs() - c).abs() < 0.05 {
                continue;
            }
            let h = 1e-6;
            let mut a = p.clone();
            a.x[i] += h;
            let mut b = p.clone();
            b.x[i] -= h;
            let ya = get(&m
                .evaluate(
                    &a,
                    RobustInputs {
                        _marker: PhantomData,
                    },
                )
                .unwrap())[i];
            let yb = get(&m
                .evaluate(
                    &b,
                    RobustInputs {
                        _marker: PhantomData,
                    },
                )
                .unwrap())[i];
            let fdx = (ya - yb) / (2.0 * h);
            close(&format!("d{name}/dx[{i}] vs fd"), g.x[i], fdx, 1e-6);
            if k % 4 == 3 {
                let mut a = p.clone();
                a.e[i] += h;
                let mut b = p.clone();
                b.e[i] -= h;
                let ya = get(&m
                    .evaluate(
                        &a,
                        RobustInputs {
                            _marker: PhantomData,
                        },
                    )
                    .unwrap())[i];
                let yb = get(&m
                    .evaluate(
                        &b,
                        RobustInputs {
                            _marker: PhantomData,
                        },
                    )
                    .unwrap())[i];
                close(
                    &format!("d{name}/de[{i}] vs fd"),
                    g.e[i],
                    (ya - yb) / (2.0 * h),
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn robust_forms_f32_take_the_f32_thresholds() {
    let m = RobustF32::new().unwrap();
    let mut p = m.randomize_params(0);
    p.x = array![0.0f32, 1e-39, 4.0];
    let o = m
        .evaluate(
            &p,
            RobustF32Inputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    let (tiny, recip) = (1.1754944e-38f64, 1.0842021951e-19f64);
    close("lg(0)", o.lg[0] as f64, tiny.ln() - 1.0, 1e-6);
    close("rc(0)", o.rc[0] as f64, 2.0 / recip, 1e-6);
    assert_eq!(o.sq[0], 0.0);
    // 1e-39 is below the f32 threshold: the linear pieces
    close(
        "sq(1e-39)",
        o.sq[1] as f64,
        1e-39f32 as f64 / tiny.sqrt(),
        1e-5,
    );
    close(
        "lg(1e-39)",
        o.lg[1] as f64,
        tiny.ln() + 1e-39f32 as f64 / tiny - 1.0,
        1e-6,
    );
    close(
        "pw(1e-39)",
        o.pw[1] as f64,
        ref_pow(1e-39f32 as f64, 0.5, tiny).0,
        1e-5,
    );
    assert_eq!(o.sq[2], 2.0);
    assert_eq!(o.rc[2], 0.25);
    close("lg(4)", o.lg[2] as f64, 4f64.ln(), 1e-6);
    let z = || Array1::<f32>::zeros(3);
    let (_, g) = m
        .evaluate_gradients(
            &p,
            RobustF32Inputs {
                _marker: PhantomData,
            },
            RobustF32Outputs {
                sq: z(),
                lg: Array1::ones(3),
                rc: z(),
                pw: z(),
            },
        )
        .unwrap();
    // +1/c at 0 and below the threshold (Mithril's), 1/x above
    close("dlg(0)", g.x[0] as f64, 1.0 / tiny, 1e-6);
    close("dlg(1e-39)", g.x[1] as f64, 1.0 / tiny, 1e-6);
    close("dlg(4)", g.x[2] as f64, 0.25, 1e-7);
    let (_, g) = m
        .evaluate_gradients(
            &p,
            RobustF32Inputs {
                _marker: PhantomData,
            },
            RobustF32Outputs {
                sq: z(),
                lg: z(),
                rc: Array1::ones(3),
                pw: z(),
            },
        )
        .unwrap();
    close("drc(0)", g.x[0] as f64, -1.0 / (recip * recip), 1e-6);
    close("drc(4)", g.x[2] as f64, -1.0 / 16.0, 1e-7);
}

#[test]
fn stop_gradient_is_identity_with_no_gradient() {
    let m = Stop::new().unwrap();
    let mut p = m.randomize_params(0);
    p.a = array![1.5, -2.0, 0.25];
    let (o, g) = m
        .evaluate_gradients(
            &p,
            StopInputs {
                _marker: PhantomData,
            },
            StopOutputs { y: Array1::ones(3) },
        )
        .unwrap();
    // y = a * a + a², but only the first factor `a` passes a gradient: dy/da = a
    assert_eq!(o.y, array![4.5, 8.0, 0.125]);
    assert_eq!(g.a, p.a);
}
