//! Gradient checks of every differentiable primitive and every library model: the gradients
//! from `evaluate_gradients` against central finite differences.
//!
//! Tolerances (documented, not tuned to pass):
//! - f64 models: central differences with step `h = 1e-6` on each param element; the error
//!   `|fd - grad| / (1 + max(|fd|, |grad|))` must be below `1e-6` (relative for large values,
//!   absolute near zero, where a relative error means nothing). Inputs are chosen away from
//!   kinks (relu/abs/clamp/max/min at 0 or ties, remainder at multiples) so that the central
//!   difference is the derivative.
//! - f32 params feeding an f64 computation (`cast`): step `h = 2^-12` (exact in f32 for the
//!   values used), same `1e-6` bound.
//! - f32 / f16 / bf16 models (the same MLP + cross-entropy compiled with `dtype:`), compared
//!   with the f64 model's gradients at identical (exactly representable) params and inputs:
//!   `max_i |g_lp[i] - g_64[i]| / max_i |g_64[i]|` per leaf below `1e-4` for f32 and `3e-2`
//!   for f16 and bf16. (Observed: f32 ~1.5e-7, f16 ~1.4e-3, bf16 ~1.7e-2.)
//! - Where finite differences cannot tell (constants rounded to f32 inside an f64 gradient are
//!   off by ~1e-8; ties and zeros are kinks or 0/0), exact expected values are asserted instead.
//!
//! Observed and checked here: scalar-shaped params (`param s: f64[];`) are supported and get a
//! scalar gradient; `where_` routes the gradient to the chosen branch; comparisons,
//! `floor_divide`, `sign`, `argmax`, and bool/integer values pass none; `remainder` passes 1
//! and `-floor(a / b)`; tied maxima/minima share the gradient equally; an integer output's seed
//! is ignored.
// Reference computations are written index by index on purpose, mirroring the math.
#![allow(
    clippy::needless_range_loop,
    clippy::type_complexity,
    clippy::identity_op,
    clippy::neg_multiply
)]

use crate::common::fd::{dot, gradcheck, leaves, pat, set, wave};
use mithril::half;
use mithril::prelude::*;
use mithril::rt::TensorView;
use ndarray::{Array1, Array2, Ix1, Ix2, Ix3};
use std::marker::PhantomData;

mithril! {
    model Binary {
        input x: f64[3, 4];
        param a: f64[3, 4];
        param b: f64[3, 4];
        output y_add = add(a, b) * x;
        output y_sub = subtract(a, b) * x;
        output y_mul = multiply(a, b);
        output y_div = divide(a, b);
        output y_pow = power(a, b);
        output y_min = minimum(a, b);
        output y_max = maximum(a, b);
        output y_rem = remainder(a, b);
        output y_ops = a * b - a / b + (a - b) * x;
        output y_lit = power(a, 2.5) + power(2.0, b) + 3.0 / a - 1.5 * b;
    }

    model Unary {
        param a: f64[2, 5];
        param p: f64[2, 5];
        output y_neg = negate(a);
        output y_abs = abs(a);
        output y_exp = exp(a);
        output y_log = log(p);
        output y_sqrt = sqrt(p);
        output y_sin = sin(a);
        output y_cos = cos(a);
        output y_tanh = tanh(a);
        output y_erf = erf(a);
        output y_square = square(a);
        output y_relu = relu(a);
        output y_sigmoid = sigmoid(a);
        output y_softplus = softplus(a);
        output y_gelu = gelu(a);
        output y_gelu_erf = gelu(a, approximate = "none");
        output y_gelu_tanh = gelu(a, approximate = "tanh");
        output y_leaky = leaky_relu(a, slope = 0.2);
        output y_clamp = clamp(a, min = -0.5, max = 0.5);
        output y_clamp_lo = clamp(a, min = -0.5);
        output y_cast = cast(a, dtype = f64) * (p as f64);
        output y_unary_minus = -a * p;
    }

    model CastFromF32 {
        param w: f32[3];
        param v: f64[3];
        output y = exp(cast(w, dtype = f64)) * v + sin(w as f64);
    }

    model Select {
        input c: f64[3, 4];
        param a: f64[3, 4];
        param b: f64[4];
        output y = where_(c > 0.0, a, b);
        output z = where_(c > 0.0, a * b, 2.0) + where_(c < 0.0, 0.5, b);
    }

    model Matmuls {
        param a: f64[3, 4];
        param b: f64[4, 5];
        param c: f64[5, 4];
        param d: f64[4, 3];
        param ba: f64[2, 3, 4];
        param bc: f64[1, 4, 5];
        output y_ab = matmul(a, b);
        output y_abt = matmul(a, c.T);
        output y_atb = matmul(d.T, b);
        output y_atbt = matmul(d.T, c.T);
        output y_batch = matmul(ba, b);
        output y_batch1 = matmul(ba, bc);
        output y_batch_t = matmul(ba, transpose(c, [1, 0]).T.T);
        output y_batch_left = matmul(d.T, bc);
        // 1-D operands
        param v: f64[4];
        output y_mv = matmul(a, v);
        output y_mtv = matmul(d.T, v);
        output y_vm = matmul(v, b);
        output y_vmt = matmul(v, c.T);
        output y_vv = matmul(v, a[1]);
        output y_bmv = matmul(ba, v);
        output y_vbm = matmul(v, bc);
        output y_lin = Linear(3)(v);
    }

    model Shapes {
        input x: f64[B, 4];
        param a: f64[4];
        param s: f64[];
        param t: f64[2, 3, 4];
        param u: f64[3, 4];
        let h = x * a + s;
        output y_sym = reshape(h, [B, 2, 2]).sum(axis = 2) * s;
        output y_neg1 = reshape(h, [-1]) * 1.5;
        output y_resh = reshape(t, [4, -1]) + reshape(u, [4, 3]).sum(axis = 1, keepdim = true);
        output y_tr = transpose(t, [2, 0, 1]) * transpose(transpose(t).sum(axis = 0));
        output y_flat = flatten(t, start_dim = 1) * 1.5;
        output y_flat01 = flatten(t, start_dim = 0, end_dim = 1) * u.sum(axis = 0);
        output y_cat0 = concat(u, t[1], axis = 0);
        output y_cat1 = concat(u, u * u, t[0], axis = 1);
        output y_cat_sym = concat(h, x * s, axis = 0);
        output y_over_b = h.mean(axis = 0) * variance(h, axis = 0, correction = 1.0) + h.max(axis = 0);
    }

    model OpenRank {
        input x: f64[..., 3, 4];
        param a: f64[4];
        param c: f64[3, 1];
        param w: f64[2, 4];
        output y = matmul(x * a, w.T) * c + a.sum();
        output z = Linear(2)(x * c);
    }

    model Broadcasts {
        input x: f64[3, 4];
        param row: f64[4];
        param col: f64[3, 1];
        param s: f64[];
        param one: f64[1, 1];
        output y = (x + row) * col - s * x / one;
        output z = row * col + s;
    }

    model Slices {
        param a: f64[5, 6];
        param e: f64[4, 3];
        input idx: i64[7];
        input cls: i64[5];
        output y_step = a.slice((0..5).step_by(2), (1..6).step_by(3));
        output y_rev = a.slice((..).step_by(-1), (4..0).step_by(-2));
        output y_index = a[2].slice(0..5) * a.slice(.., 1);
        output y_range = a[1..4];
        output y_newaxis = a.slice(None, 3, (..).step_by(-1));
        output y_gather0 = gather(e, idx, axis = 0);
        output y_gather1 = gather(e, cls.slice(0..2), axis = 1);
        output y_take = take_along(a, cls);
    }

    model Reductions {
        param a: f64[2, 3, 4];
        output s_int = a.sum(axis = 1);
        output s_list = a.sum(axis = [0, 2]);
        output s_neg = a.sum(axis = -1, keepdim = true);
        output s_all = a.sum();
        output m_int = a.mean(axis = 0);
        output m_list = a.mean(axis = [1, 2], keepdim = true);
        output m_all = a.mean();
        output mx_int = a.max(axis = 2);
        output mx_list = a.max(axis = [0, -1]);
        output mx_all = a.max();
        output mn_int = a.min(axis = -2, keepdim = true);
        output mn_all = a.min();
        output p_int = a.prod(axis = 1);
        output p_list = a.prod(axis = [0, 1], keepdim = true);
        output p_all = a.prod();
        output v0 = variance(a, axis = 1, correction = 0.0);
        output v1 = variance(a, axis = [0, 2], keepdim = true, correction = 1.0);
        output v_all = variance(a);
        output sm0 = softmax(a, axis = 0);
        output sm_last = softmax(a, axis = -1);
        output lsm1 = log_softmax(a, axis = 1);
        output lsm_last = log_softmax(a);
    }

    model Library {
        input x: f64[3, 5];
        input tok: i64[3, 2];
        let h = Linear(4)(x);
        let h2 = Linear(4, use_bias = false)(x);
        let m = MLP(dimensions = [6, 3], activations = [tanh])(x);
        output y_lin = h * h2;
        output y_mlp = m;
        output y_ln = LayerNorm()(h + x.slice(.., 0..4));
        output y_ln_plain = LayerNorm(use_scale = false, use_bias = false)(h2);
        output y_rms = RMSNorm()(h);
        output y_emb = Embedding(num_embeddings = 5, dim = 3)(tok);
    }

    // the embedding's table has no float input to take its dtype from: give it one
    compile Library64 = Library { dtype: f64 };

    model Losses {
        param p: f64[3, 4];
        param q: f64[3, 4];
        input t: f64[3, 4];
        input sgn: f64[3, 4];
        input probs: f64[3, 4];
        input bin: f64[3, 4];
        input cls: i64[3];
        output l_sq = squared_error(p, t);
        output l_abs = absolute_error(p, t);
        output l_ce = cross_entropy(p, cls);
        output l_ce_probs = cross_entropy(softmax(q), cls, input_type = "probs");
        output l_ce_logp = cross_entropy(log_softmax(q), cls, input_type = "log_probs");
        output l_bce = binary_cross_entropy(sigmoid(p), bin);
        output l_bce_logits = binary_cross_entropy(q, bin, input_type = "logits");
        output l_hinge = hinge_loss(p, sgn);
        output l_quantile = quantile_loss(p, t, quantile = 0.3);
        output l_kl = kl_divergence(log_softmax(p), probs);
        output l_kl_log = kl_divergence(log_softmax(p), log_softmax(q), log_target = true);
    }

    model EdgeCases {
        param a: f64[3, 4];
        param b: f64[3, 4];
        output mx = a.max(axis = 1);
        output mn = a.min();
        output pr = a.prod(axis = 1);
        output sq = power(a, 2.0);
        output pb = power(square(a), b);
    }

    model Aliases {
        param a: f64[3];
        output p = a;
        output q = a * 2.0;
        output r = q;
        output i = argmax(a);
    }

    model NonDiff {
        param a: f64[6];
        input i: i64[6];
        input flag: bool[6];
        output y = where_(a > 0.0, a, 0.0) + floor_divide(a, 2.0);
        output z = sign(a) * 2.0 + cast(a > 0.5, dtype = f64) + cast(argmax(a), dtype = f64);
        output w = a * cast(i, dtype = f64) + where_(flag, 1.0, 0.0) + cast(flag && (a < 0.0), dtype = f64);
    }

    train Classifier {
        input x: [B, 4];
        input target: i64[B];
        output logits = MLP(dimensions = [6, 3], activations = [tanh])(x);
        loss cross_entropy(logits, target).mean();
        loss 0.1 * squared_error(logits, 0.5).mean();
    }

    compile Classifier64 = Classifier { dtype: f64 };
    compile Classifier32 = Classifier { dtype: f32 };
    compile Classifier16 = Classifier { dtype: f16 };
    compile ClassifierB16 = Classifier { dtype: bf16 };
}

// ---------------------------------------------------------------------------------------------
// the finite-difference harness is `crate::common::fd`

/// Panics unless every element of `v` is at least `d` away from every kink in `kinks`.
fn away(what: &str, v: &[f64], kinks: &[f64], d: f64) {
    for (i, x) in v.iter().enumerate() {
        for k in kinks {
            assert!((x - k).abs() > d, "{what}[{i}] = {x} is too close to {k}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// primitives

#[test]
fn binary_elementwise() {
    let m = Binary::new().unwrap();
    let mut p = m.randomize_params(1);
    // a in [0.6, 1.81], b in [0.47, 1.9]: positive (power), no ties (min/max), a/b off integers
    set(&mut p, "a", |i| 0.6 + 0.11 * i as f64);
    set(&mut p, "b", |i| 1.9 - 0.13 * i as f64);
    let (a, b) = (leaves(&p)[0].2.clone(), leaves(&p)[1].2.clone());
    for i in 0..12 {
        assert!((a[i] - b[i]).abs() > 0.05);
        let r = a[i] / b[i];
        assert!((r - r.round()).abs() > 0.05, "a/b near an integer");
    }
    let x = pat(Ix2(3, 4), 0.2);
    let s = |k: f64| pat(Ix2(3, 4), k);
    let seeds = || BinaryOutputs {
        y_add: s(1.0),
        y_sub: s(2.0),
        y_mul: s(3.0),
        y_div: s(4.0),
        y_pow: s(5.0),
        y_min: s(6.0),
        y_max: s(7.0),
        y_rem: s(8.0),
        y_ops: s(9.0),
        y_lit: s(10.0),
    };
    let inputs = || BinaryInputs { x: x.view() };
    let loss = |p: &BinaryParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        let sd = seeds();
        dot(&o.y_add, &sd.y_add)
            + dot(&o.y_sub, &sd.y_sub)
            + dot(&o.y_mul, &sd.y_mul)
            + dot(&o.y_div, &sd.y_div)
            + dot(&o.y_pow, &sd.y_pow)
            + dot(&o.y_min, &sd.y_min)
            + dot(&o.y_max, &sd.y_max)
            + dot(&o.y_rem, &sd.y_rem)
            + dot(&o.y_ops, &sd.y_ops)
            + dot(&o.y_lit, &sd.y_lit)
    };
    let (out, g) = m.evaluate_gradients(&p, inputs(), seeds()).unwrap();
    // spot values of the forward outputs
    assert_eq!(out.y_rem[[0, 0]], 0.6 % 1.9);
    assert!((out.y_pow[[0, 1]] - 0.71f64.powf(1.77)).abs() < 1e-15);
    assert_eq!(gradcheck("binary", &p, &g, loss), 24);
}

#[test]
fn unary_elementwise() {
    let m = Unary::new().unwrap();
    let mut p = m.randomize_params(2);
    // a in (-2, 2), at least 0.1 from 0 and from the clamp bounds ±0.5; p positive
    let av = [-1.9, -1.2, -0.7, -0.35, -0.12, 0.15, 0.3, 0.66, 1.3, 1.95];
    set(&mut p, "a", |i| av[i]);
    set(&mut p, "p", |i| 0.3 + 0.4 * i as f64);
    away("a", &av, &[0.0, -0.5, 0.5], 0.1);
    let s = |k: f64| pat(Ix2(2, 5), k);
    let seeds = || UnaryOutputs {
        y_neg: s(1.0),
        y_abs: s(2.0),
        y_exp: s(3.0),
        y_log: s(4.0),
        y_sqrt: s(5.0),
        y_sin: s(6.0),
        y_cos: s(7.0),
        y_tanh: s(8.0),
        y_erf: s(9.0),
        y_square: s(10.0),
        y_relu: s(11.0),
        y_sigmoid: s(12.0),
        y_softplus: s(13.0),
        y_gelu: s(14.0),
        y_gelu_erf: s(15.0),
        y_gelu_tanh: s(16.0),
        y_leaky: s(17.0),
        y_clamp: s(18.0),
        y_clamp_lo: s(19.0),
        y_cast: s(20.0),
        y_unary_minus: s(21.0),
    };
    let loss = |p: &UnaryParams| {
        let o = m
            .evaluate(
                p,
                UnaryInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        let sd = seeds();
        [
            dot(&o.y_neg, &sd.y_neg),
            dot(&o.y_abs, &sd.y_abs),
            dot(&o.y_exp, &sd.y_exp),
            dot(&o.y_log, &sd.y_log),
            dot(&o.y_sqrt, &sd.y_sqrt),
            dot(&o.y_sin, &sd.y_sin),
            dot(&o.y_cos, &sd.y_cos),
            dot(&o.y_tanh, &sd.y_tanh),
            dot(&o.y_erf, &sd.y_erf),
            dot(&o.y_square, &sd.y_square),
            dot(&o.y_relu, &sd.y_relu),
            dot(&o.y_sigmoid, &sd.y_sigmoid),
            dot(&o.y_softplus, &sd.y_softplus),
            dot(&o.y_gelu, &sd.y_gelu),
            dot(&o.y_gelu_erf, &sd.y_gelu_erf),
            dot(&o.y_gelu_tanh, &sd.y_gelu_tanh),
            dot(&o.y_leaky, &sd.y_leaky),
            dot(&o.y_clamp, &sd.y_clamp),
            dot(&o.y_clamp_lo, &sd.y_clamp_lo),
            dot(&o.y_cast, &sd.y_cast),
            dot(&o.y_unary_minus, &sd.y_unary_minus),
        ]
        .iter()
        .sum()
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            UnaryInputs {
                _marker: PhantomData,
            },
            seeds(),
        )
        .unwrap();
    assert_eq!(gradcheck("unary", &p, &g, loss), 20);
    // the exact derivative of a few, independently
    let ga = &leaves(&g)[0].2;
    let sd = seeds();
    let i = 3; // a = -0.35
    let x: f64 = av[i];
    let sig = 1.0 / (1.0 + (-x).exp());
    let at = |o: &Array2<f64>| o.iter().nth(i).copied().unwrap();
    let want = -at(&sd.y_neg) - at(&sd.y_abs)
        + x.exp() * at(&sd.y_exp)
        + x.cos() * at(&sd.y_sin)
        - x.sin() * at(&sd.y_cos)
        + (1.0 - x.tanh().powi(2)) * at(&sd.y_tanh)
        + 2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * at(&sd.y_erf)
        + 2.0 * x * at(&sd.y_square)
        + sig * (1.0 - sig) * at(&sd.y_sigmoid)
        + sig * at(&sd.y_softplus)
        + 0.2 * at(&sd.y_leaky)
        + at(&sd.y_clamp)
        + at(&sd.y_clamp_lo)
        + 1.5 * at(&sd.y_cast) // p[3] = 1.5
        - 1.5 * at(&sd.y_unary_minus);
    let gelu_d = |x: f64| {
        let cdf = 0.5 * (1.0 + libm_erf(x / 2f64.sqrt()));
        cdf + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
    };
    let want = want + gelu_d(x) * (at(&sd.y_gelu) + at(&sd.y_gelu_erf));
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let t = (k * (x + 0.044715 * x.powi(3))).tanh();
    let want = want
        + (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x))
            * at(&sd.y_gelu_tanh);
    assert!((ga[i] - want).abs() < 1e-12, "{} vs {want}", ga[i]);
}

/// erf by its Taylor series (enough terms for |x| < 2): an independent reference.
fn libm_erf(x: f64) -> f64 {
    let mut sum = 0.0;
    let mut term = x;
    for n in 0..60 {
        sum += term / (2 * n + 1) as f64;
        term *= -x * x / (n + 1) as f64;
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn cast_from_f32_param() {
    let m = CastFromF32::new().unwrap();
    let mut p = m.randomize_params(3);
    set(&mut p, "w", |i| [0.25, -0.5, 0.75][i]);
    set(&mut p, "v", |i| [1.5, -0.3, 0.8][i]);
    let seed = Array1::from(vec![0.7, -1.1, 0.4]);
    let loss = |p: &CastFromF32Params| {
        let o = m
            .evaluate(
                p,
                CastFromF32Inputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        dot(&o.y, &seed)
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            CastFromF32Inputs {
                _marker: PhantomData,
            },
            CastFromF32Outputs { y: seed.clone() },
        )
        .unwrap();
    // the f32 param's gradient is f32
    let mut kinds = Vec::new();
    g.visit(&mut |n, t| kinds.push((n.to_string(), matches!(t, TensorView::F32(_)))));
    assert_eq!(kinds, [("w".to_string(), true), ("v".to_string(), false)]);
    assert_eq!(gradcheck("cast", &p, &g, loss), 6);
}

#[test]
fn where_selects_gradients() {
    let m = Select::new().unwrap();
    let mut p = m.randomize_params(4);
    set(&mut p, "a", |i| wave(i, 0.4));
    set(&mut p, "b", |i| wave(i, 1.4));
    let c = pat(Ix2(3, 4), 2.5);
    let (sy, sz) = (pat(Ix2(3, 4), 0.1), pat(Ix2(3, 4), 0.9));
    let loss = |p: &SelectParams| {
        let o = m.evaluate(p, SelectInputs { c: c.view() }).unwrap();
        dot(&o.y, &sy) + dot(&o.z, &sz)
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            SelectInputs { c: c.view() },
            SelectOutputs {
                y: sy.clone(),
                z: sz.clone(),
            },
        )
        .unwrap();
    assert_eq!(gradcheck("where_", &p, &g, loss), 16);
    // by hand: d/da = [c > 0] (sy + sz * b)
    let gb = &leaves(&p)[1].2;
    for (k, ga) in leaves(&g)[0].2.iter().enumerate() {
        let (i, j) = (k / 4, k % 4);
        let want = if c[[i, j]] > 0.0 {
            sy[[i, j]] + sz[[i, j]] * gb[j]
        } else {
            0.0
        };
        assert!((ga - want).abs() < 1e-14);
    }
}

#[test]
fn matmul_variants() {
    let m = Matmuls::new().unwrap();
    let mut p = m.randomize_params(5);
    for (k, name) in ["a", "b", "c", "d", "ba", "bc", "v"].iter().enumerate() {
        set(&mut p, name, |i| wave(i, k as f64));
    }
    let seeds = || MatmulsOutputs {
        y_ab: pat(Ix2(3, 5), 0.1),
        y_abt: pat(Ix2(3, 5), 0.2),
        y_atb: pat(Ix2(3, 5), 0.3),
        y_atbt: pat(Ix2(3, 5), 0.4),
        y_batch: pat(Ix3(2, 3, 5), 0.5),
        y_batch1: pat(Ix3(2, 3, 5), 0.6),
        y_batch_t: pat(Ix3(2, 3, 5), 0.7),
        y_batch_left: pat(Ix3(1, 3, 5), 0.8),
        y_mv: pat(Ix1(3), 0.9),
        y_mtv: pat(Ix1(3), 1.0),
        y_vm: pat(Ix1(5), 1.1),
        y_vmt: pat(Ix1(5), 1.2),
        y_vv: ndarray::arr0(1.3),
        y_bmv: pat(Ix2(2, 3), 1.4),
        y_vbm: pat(Ix2(1, 5), 1.5),
        y_lin: pat(Ix1(3), 1.6),
    };
    let loss = |p: &MatmulsParams| {
        let o = m
            .evaluate(
                p,
                MatmulsInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        let s = seeds();
        dot(&o.y_ab, &s.y_ab)
            + dot(&o.y_abt, &s.y_abt)
            + dot(&o.y_atb, &s.y_atb)
            + dot(&o.y_atbt, &s.y_atbt)
            + dot(&o.y_batch, &s.y_batch)
            + dot(&o.y_batch1, &s.y_batch1)
            + dot(&o.y_batch_t, &s.y_batch_t)
            + dot(&o.y_batch_left, &s.y_batch_left)
            + dot(&o.y_mv, &s.y_mv)
            + dot(&o.y_mtv, &s.y_mtv)
            + dot(&o.y_vm, &s.y_vm)
            + dot(&o.y_vmt, &s.y_vmt)
            + dot(&o.y_vv, &s.y_vv)
            + dot(&o.y_bmv, &s.y_bmv)
            + dot(&o.y_vbm, &s.y_vbm)
            + dot(&o.y_lin, &s.y_lin)
    };
    let (out, g) = m
        .evaluate_gradients(
            &p,
            MatmulsInputs {
                _marker: PhantomData,
            },
            seeds(),
        )
        .unwrap();
    // the forward against a hand-written product
    let (a, b) = (&leaves(&p)[0].2, &leaves(&p)[1].2);
    let want: f64 = (0..4).map(|k| a[4 + k] * b[k * 5 + 2]).sum();
    assert!((out.y_ab[[1, 2]] - want).abs() < 1e-14);
    let v = &leaves(&p)[6].2;
    let want: f64 = (0..4).map(|k| v[k] * a[4 + k]).sum();
    assert!((out.y_vv.into_scalar() - want).abs() < 1e-14);
    // a, b, c, d, ba, bc, v and the vector-fed Linear's weight and bias
    assert_eq!(
        gradcheck("matmul", &p, &g, loss),
        12 + 20 + 20 + 12 + 24 + 20 + 4 + 12 + 3
    );
}

#[test]
fn shape_ops_with_symbolic_and_scalar_dims() {
    let m = Shapes::new().unwrap();
    let mut p = m.randomize_params(6);
    set(&mut p, "a", |i| wave(i, 0.3));
    set(&mut p, "s", |_| 0.8);
    set(&mut p, "t", |i| wave(i, 1.3));
    set(&mut p, "u", |i| wave(i, 2.3));
    for b in [2usize, 5] {
        let x = pat(Ix2(b, 4), b as f64);
        let seeds = || ShapesOutputs {
            y_sym: pat(Ix2(b, 2), 0.1),
            y_neg1: pat(Ix1(4 * b), 0.2),
            y_resh: pat(Ix2(4, 6), 0.3),
            y_tr: pat(Ix3(4, 2, 3), 0.4),
            y_flat: pat(Ix2(2, 12), 0.5),
            y_flat01: pat(Ix2(6, 4), 0.55),
            y_cat0: pat(Ix2(6, 4), 0.6),
            y_cat1: pat(Ix2(3, 12), 0.7),
            y_cat_sym: pat(Ix2(2 * b, 4), 0.8),
            y_over_b: pat(Ix1(4), 0.9),
        };
        let loss = |p: &ShapesParams| {
            let o = m.evaluate(p, ShapesInputs { x: x.view() }).unwrap();
            let s = seeds();
            dot(&o.y_sym, &s.y_sym)
                + dot(&o.y_neg1, &s.y_neg1)
                + dot(&o.y_resh, &s.y_resh)
                + dot(&o.y_tr, &s.y_tr)
                + dot(&o.y_flat, &s.y_flat)
                + dot(&o.y_flat01, &s.y_flat01)
                + dot(&o.y_cat0, &s.y_cat0)
                + dot(&o.y_cat1, &s.y_cat1)
                + dot(&o.y_cat_sym, &s.y_cat_sym)
                + dot(&o.y_over_b, &s.y_over_b)
        };
        let (_, g) = m
            .evaluate_gradients(&p, ShapesInputs { x: x.view() }, seeds())
            .unwrap();
        assert_eq!(
            gradcheck(&format!("shapes B={b}"), &p, &g, loss),
            4 + 1 + 24 + 12
        );
    }
}

#[test]
fn broadcast_operands_sum_their_gradients() {
    let m = Broadcasts::new().unwrap();
    let mut p = m.randomize_params(7);
    set(&mut p, "row", |i| wave(i, 0.5));
    set(&mut p, "col", |i| wave(i, 1.5));
    set(&mut p, "s", |_| -0.6);
    set(&mut p, "one", |_| 1.3);
    let x = pat(Ix2(3, 4), 3.0);
    let (sy, sz) = (pat(Ix2(3, 4), 0.25), pat(Ix2(3, 4), 0.75));
    let loss = |p: &BroadcastsParams| {
        let o = m.evaluate(p, BroadcastsInputs { x: x.view() }).unwrap();
        dot(&o.y, &sy) + dot(&o.z, &sz)
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            BroadcastsInputs { x: x.view() },
            BroadcastsOutputs {
                y: sy.clone(),
                z: sz.clone(),
            },
        )
        .unwrap();
    let gl = leaves(&g);
    assert_eq!(
        gl[2].1,
        Vec::<usize>::new(),
        "a scalar param has a scalar gradient"
    );
    // d/ds = sum(-x * sy + sz)
    let want: f64 = x.iter().zip(&sy).map(|(x, s)| -x * s / 1.3).sum::<f64>() + sz.sum();
    assert!((gl[2].2[0] - want).abs() < 1e-12);
    assert_eq!(gradcheck("broadcast", &p, &g, loss), 4 + 3 + 1 + 1);
}

#[test]
fn slice_gather_take_along() {
    let m = Slices::new().unwrap();
    let mut p = m.randomize_params(8);
    set(&mut p, "a", |i| wave(i, 0.6));
    set(&mut p, "e", |i| wave(i, 1.6));
    // repeated indices accumulate in the embedding-style gather
    let idx = Array1::from(vec![2i64, 0, 2, 3, 2, 0, 1]);
    let cls = Array1::from(vec![1i64, 0, 5, 3, 1]);
    let inputs = || SlicesInputs {
        idx: idx.view(),
        cls: cls.view(),
    };
    let seeds = || SlicesOutputs {
        y_step: pat(Ix2(3, 2), 0.1),
        y_rev: pat(Ix2(5, 2), 0.2),
        y_index: pat(Ix1(5), 0.3),
        y_range: pat(Ix2(3, 6), 0.4),
        y_newaxis: pat(Ix2(1, 6), 0.5),
        y_gather0: pat(Ix2(7, 3), 0.6),
        y_gather1: pat(Ix2(4, 2), 0.7),
        y_take: pat(Ix1(5), 0.8),
    };
    let loss = |p: &SlicesParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        let s = seeds();
        dot(&o.y_step, &s.y_step)
            + dot(&o.y_rev, &s.y_rev)
            + dot(&o.y_index, &s.y_index)
            + dot(&o.y_range, &s.y_range)
            + dot(&o.y_newaxis, &s.y_newaxis)
            + dot(&o.y_gather0, &s.y_gather0)
            + dot(&o.y_gather1, &s.y_gather1)
            + dot(&o.y_take, &s.y_take)
    };
    let (out, g) = m.evaluate_gradients(&p, inputs(), seeds()).unwrap();
    let a = &leaves(&p)[0].2;
    assert_eq!(
        out.y_rev[[0, 1]],
        a[4 * 6 + 2],
        "a[::-1, 4:0:-2][0, 1] = a[4, 2]"
    );
    // row 2 of `e` was gathered three times: its gradient is the sum of three seed rows
    let s0 = pat(Ix2(7, 3), 0.6);
    let ge = &leaves(&g)[1].2;
    for j in 0..3 {
        // and gather1 picks columns [1, 0] of `e`: e[2, 1] -> [2, 0], e[2, 0] -> [2, 1]
        let s1 = pat(Ix2(4, 2), 0.7);
        let from1 = [s1[[2, 1]], s1[[2, 0]], 0.0][j];
        let want = s0[[0, j]] + s0[[2, j]] + s0[[4, j]] + from1;
        assert!((ge[2 * 3 + j] - want).abs() < 1e-14, "e[2, {j}]");
    }
    assert_eq!(gradcheck("slicing", &p, &g, loss), 30 + 12);
}

#[test]
fn reductions_softmax_variance() {
    let m = Reductions::new().unwrap();
    let mut p = m.randomize_params(9);
    // distinct values (max/min have no ties), magnitudes in [0.5, 1.4] (prod is well scaled)
    set(&mut p, "a", |i| {
        let v = 0.5 + ((i * 7) % 24) as f64 * 0.04;
        if i % 3 == 1 { -v } else { v }
    });
    let a = leaves(&p)[0].2.clone();
    for i in 0..24 {
        for j in 0..i {
            assert!((a[i] - a[j]).abs() > 1e-3, "tie at {i}, {j}");
        }
    }
    let seeds = || ReductionsOutputs {
        s_int: pat(Ix2(2, 4), 0.1),
        s_list: pat(Ix1(3), 0.2),
        s_neg: pat(Ix3(2, 3, 1), 0.3),
        s_all: ndarray::arr0(0.7),
        m_int: pat(Ix2(3, 4), 0.4),
        m_list: pat(Ix3(2, 1, 1), 0.5),
        m_all: ndarray::arr0(-1.3),
        mx_int: pat(Ix2(2, 3), 0.6),
        mx_list: pat(Ix1(3), 0.7),
        mx_all: ndarray::arr0(0.9),
        mn_int: pat(Ix3(2, 1, 4), 0.8),
        mn_all: ndarray::arr0(1.1),
        p_int: pat(Ix2(2, 4), 0.9),
        p_list: pat(Ix3(1, 1, 4), 1.0),
        p_all: ndarray::arr0(0.6),
        v0: pat(Ix2(2, 4), 1.1),
        v1: pat(Ix3(1, 3, 1), 1.2),
        v_all: ndarray::arr0(0.8),
        sm0: pat(Ix3(2, 3, 4), 1.3),
        sm_last: pat(Ix3(2, 3, 4), 1.4),
        lsm1: pat(Ix3(2, 3, 4), 1.5),
        lsm_last: pat(Ix3(2, 3, 4), 1.6),
    };
    let loss = |p: &ReductionsParams| {
        let o = m
            .evaluate(
                p,
                ReductionsInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        let s = seeds();
        [
            dot(&o.s_int, &s.s_int),
            dot(&o.s_list, &s.s_list),
            dot(&o.s_neg, &s.s_neg),
            dot(&o.s_all, &s.s_all),
            dot(&o.m_int, &s.m_int),
            dot(&o.m_list, &s.m_list),
            dot(&o.m_all, &s.m_all),
            dot(&o.mx_int, &s.mx_int),
            dot(&o.mx_list, &s.mx_list),
            dot(&o.mx_all, &s.mx_all),
            dot(&o.mn_int, &s.mn_int),
            dot(&o.mn_all, &s.mn_all),
            dot(&o.p_int, &s.p_int),
            dot(&o.p_list, &s.p_list),
            dot(&o.p_all, &s.p_all),
            dot(&o.v0, &s.v0),
            dot(&o.v1, &s.v1),
            dot(&o.v_all, &s.v_all),
            dot(&o.sm0, &s.sm0),
            dot(&o.sm_last, &s.sm_last),
            dot(&o.lsm1, &s.lsm1),
            dot(&o.lsm_last, &s.lsm_last),
        ]
        .iter()
        .sum()
    };
    let (out, g) = m
        .evaluate_gradients(
            &p,
            ReductionsInputs {
                _marker: PhantomData,
            },
            seeds(),
        )
        .unwrap();
    // forward spot checks: variance with correction 1 (axes 0 and 2, at middle index 1)
    let vals: Vec<f64> = (0..2)
        .flat_map(|i| (0..4).map(move |k| i * 12 + 4 + k))
        .map(|ix| a[ix])
        .collect();
    let mu = vals.iter().sum::<f64>() / 8.0;
    let var = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / 7.0;
    assert!((out.v1[[0, 1, 0]] - var).abs() < 1e-14);
    let var0 = vals.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / 8.0;
    assert!((var0 - var * 7.0 / 8.0).abs() < 1e-15);
    assert_eq!(gradcheck("reductions", &p, &g, loss), 24);
}

// ---------------------------------------------------------------------------------------------
// library models

#[test]
fn library_layers() {
    let m = Library64::new().unwrap();
    let p = m.randomize_params(10);
    assert_eq!(
        p.names(),
        [
            "h.weight",
            "h.bias",
            "h2.weight",
            "m.h.weight",
            "m.h.bias",
            "m.h_1.weight",
            "m.h_1.bias",
            "layer_norm_0.weight",
            "layer_norm_0.bias",
            "rmsnorm_0.weight",
            "embedding_0.weight",
        ]
    );
    // non-trivial norm scales and biases
    let mut p = p;
    set(&mut p, "layer_norm_0.weight", |i| 1.0 + 0.3 * wave(i, 0.1));
    set(&mut p, "layer_norm_0.bias", |i| 0.2 * wave(i, 0.2));
    set(&mut p, "rmsnorm_0.weight", |i| 1.0 + 0.3 * wave(i, 0.3));
    let x = pat(Ix2(3, 5), 0.5);
    let tok = Array2::from_shape_vec((3, 2), vec![4i64, 1, 1, 0, 4, 4]).unwrap();
    let inputs = || Library64Inputs {
        x: x.view(),
        tok: tok.view(),
    };
    let seeds = || Library64Outputs {
        y_lin: pat(Ix2(3, 4), 0.1),
        y_mlp: pat(Ix2(3, 3), 0.2),
        y_ln: pat(Ix2(3, 4), 0.3),
        y_ln_plain: pat(Ix2(3, 4), 0.4),
        y_rms: pat(Ix2(3, 4), 0.5),
        y_emb: pat(Ix3(3, 2, 3), 0.6),
    };
    let loss = |p: &Library64Params| {
        let o = m.evaluate(p, inputs()).unwrap();
        let s = seeds();
        dot(&o.y_lin, &s.y_lin)
            + dot(&o.y_mlp, &s.y_mlp)
            + dot(&o.y_ln, &s.y_ln)
            + dot(&o.y_ln_plain, &s.y_ln_plain)
            + dot(&o.y_rms, &s.y_rms)
            + dot(&o.y_emb, &s.y_emb)
    };
    let (_, g) = m.evaluate_gradients(&p, inputs(), seeds()).unwrap();
    let n = gradcheck("library", &p, &g, loss);
    assert_eq!(n, 20 + 4 + 20 + 30 + 6 + 18 + 3 + 4 + 4 + 4 + 15);
    // embedding rows never looked up get no gradient
    let ge = leaves(&g).pop().unwrap().2;
    assert!(ge[2 * 3..4 * 3].iter().all(|&v| v == 0.0));
}

#[test]
fn library_losses() {
    let m = Losses::new().unwrap();
    let mut p = m.randomize_params(11);
    set(&mut p, "p", |i| 1.5 * wave(i, 1.1));
    set(&mut p, "q", |i| 1.5 * wave(i, 2.45));
    let t = pat(Ix2(3, 4), 3.3);
    let pv = leaves(&p)[0].2.clone();
    // kinks: |p - t| and the pinball loss at p = t, the hinge at p * sgn = 1
    let diff: Vec<f64> = pv.iter().zip(&t).map(|(a, b)| a - b).collect();
    away("p - t", &diff, &[0.0], 0.05);
    let sgn = Array2::from_shape_fn((3, 4), |(i, j)| if (i + j) % 3 == 0 { -1.0 } else { 1.0 });
    let margin: Vec<f64> = pv.iter().zip(&sgn).map(|(a, b)| a * b).collect();
    away("p * sgn", &margin, &[1.0], 0.05);
    // probabilities per row with a zero (the `where_` branch of kl_divergence)
    let probs = Array2::from_shape_vec(
        (3, 4),
        vec![0.1, 0.2, 0.3, 0.4, 0.0, 0.5, 0.25, 0.25, 0.7, 0.0, 0.0, 0.3],
    )
    .unwrap();
    let bin = Array2::from_shape_fn((3, 4), |(i, j)| [0.0, 1.0, 0.25][(i + 2 * j) % 3]);
    let cls = Array1::from(vec![3i64, 0, 2]);
    let inputs = || LossesInputs {
        t: t.view(),
        sgn: sgn.view(),
        probs: probs.view(),
        bin: bin.view(),
        cls: cls.view(),
    };
    let seeds = || LossesOutputs {
        l_sq: pat(Ix2(3, 4), 0.1),
        l_abs: pat(Ix2(3, 4), 0.2),
        l_ce: pat(Ix1(3), 0.3),
        l_ce_probs: pat(Ix1(3), 0.4),
        l_ce_logp: pat(Ix1(3), 0.5),
        l_bce: pat(Ix2(3, 4), 0.6),
        l_bce_logits: pat(Ix2(3, 4), 0.7),
        l_hinge: pat(Ix2(3, 4), 0.8),
        l_quantile: pat(Ix2(3, 4), 0.9),
        l_kl: pat(Ix2(3, 4), 1.0),
        l_kl_log: pat(Ix2(3, 4), 1.1),
    };
    let loss = |p: &LossesParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        let s = seeds();
        [
            dot(&o.l_sq, &s.l_sq),
            dot(&o.l_abs, &s.l_abs),
            dot(&o.l_ce, &s.l_ce),
            dot(&o.l_ce_probs, &s.l_ce_probs),
            dot(&o.l_ce_logp, &s.l_ce_logp),
            dot(&o.l_bce, &s.l_bce),
            dot(&o.l_bce_logits, &s.l_bce_logits),
            dot(&o.l_hinge, &s.l_hinge),
            dot(&o.l_quantile, &s.l_quantile),
            dot(&o.l_kl, &s.l_kl),
            dot(&o.l_kl_log, &s.l_kl_log),
        ]
        .iter()
        .sum()
    };
    let (out, g) = m.evaluate_gradients(&p, inputs(), seeds()).unwrap();
    // the three cross-entropy forms agree on the same distribution
    for i in 0..3 {
        assert!((out.l_ce_probs[i] - out.l_ce_logp[i]).abs() < 1e-12);
    }
    assert_eq!(gradcheck("losses", &p, &g, loss), 24);
}

// ---------------------------------------------------------------------------------------------
// what passes no gradient

#[test]
fn non_differentiable_paths_pass_no_gradient() {
    let m = NonDiff::new().unwrap();
    let mut p = m.randomize_params(12);
    // away from 0 (the where_ kink), from 0.5 (the comparison) and from even numbers
    let av = [1.3, -0.7, 2.6, -1.4, 0.9, 3.7];
    set(&mut p, "a", |i| av[i]);
    let i = Array1::from(vec![2i64, -1, 0, 3, 1, 5]);
    let flag = Array1::from(vec![true, false, true, true, false, false]);
    let (sy, sz, sw) = (pat(Ix1(6), 0.1), pat(Ix1(6), 0.2), pat(Ix1(6), 0.3));
    let inputs = || NonDiffInputs {
        i: i.view(),
        flag: flag.view(),
    };
    let loss = |p: &NonDiffParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        dot(&o.y, &sy) + dot(&o.z, &sz) + dot(&o.w, &sw)
    };
    let (out, g) = m
        .evaluate_gradients(
            &p,
            inputs(),
            NonDiffOutputs {
                y: sy.clone(),
                z: sz.clone(),
                w: sw.clone(),
            },
        )
        .unwrap();
    assert_eq!(out.y[2], 2.6 + 1.0);
    assert_eq!(out.y[1], -1.0);
    // observed: where_ routes the gradient to the chosen branch; floor_divide, the comparison,
    // sign, argmax and the bool/integer paths contribute nothing; the integer input scales `a`.
    let ga = &leaves(&g)[0].2;
    for k in 0..6 {
        let want = if av[k] > 0.0 { sy[k] } else { 0.0 } + sw[k] * i[k] as f64;
        assert_eq!(ga[k], want, "a[{k}]");
    }
    assert_eq!(gradcheck("non-differentiable", &p, &g, loss), 6);
}

// ---------------------------------------------------------------------------------------------
// low precision against f64

/// Gradients of `Classifier` compiled at one dtype, with the params and inputs given as f64
/// values (exactly representable in bf16), as f64 vectors per leaf.
macro_rules! classifier_grads {
    ($m:ident, $inputs:ident, $elem:ty, $conv:expr, $pvals:expr, $x:expr, $t:expr) => {{
        let m = $m::new().unwrap();
        let mut p = m.randomize_params(0);
        for (name, _, vals) in $pvals {
            set(&mut p, &name, |i| vals[i]);
        }
        let conv: fn(f64) -> $elem = $conv;
        let x = $x.mapv(conv);
        let (out, g) = m
            .evaluate_gradients(
                &p,
                $inputs {
                    x: x.view(),
                    target: $t.view(),
                },
            )
            .unwrap();
        let _ = out;
        leaves(&g)
    }};
}

#[test]
fn low_precision_gradients_follow_f64() {
    // exactly representable values (k / 64, |k| < 128) so every dtype sees the same numbers
    let q = |v: f64| (v * 64.0).round() / 64.0;
    let m64 = Classifier64::new().unwrap();
    let mut p64 = m64.randomize_params(21);
    for (name, _, vals) in leaves(&p64) {
        set(&mut p64, &name, |i| q(vals[i]));
    }
    let x = pat(Ix2(6, 4), 0.35).mapv(|v| q(1.5 * v));
    let t = Array1::from(vec![0i64, 2, 1, 1, 0, 2]);
    let (_, g64) = m64
        .evaluate_gradients(
            &p64,
            Classifier64Inputs {
                x: x.view(),
                target: t.view(),
            },
        )
        .unwrap();
    // the f64 reference itself against finite differences
    let loss = |p: &Classifier64Params| {
        m64.evaluate(
            p,
            Classifier64Inputs {
                x: x.view(),
                target: t.view(),
            },
        )
        .unwrap()
        .loss
        .into_scalar()
    };
    gradcheck("classifier f64", &p64, &g64, loss);
    let g64 = leaves(&g64);
    let pv = leaves(&p64);
    let lp = [
        (
            "f32",
            1e-4,
            classifier_grads!(
                Classifier32,
                Classifier32Inputs,
                f32,
                |v| v as f32,
                pv.clone(),
                x,
                t
            ),
        ),
        (
            "f16",
            3e-2,
            classifier_grads!(
                Classifier16,
                Classifier16Inputs,
                half::f16,
                half::f16::from_f64,
                pv.clone(),
                x,
                t
            ),
        ),
        (
            "bf16",
            3e-2,
            classifier_grads!(
                ClassifierB16,
                ClassifierB16Inputs,
                half::bf16,
                half::bf16::from_f64,
                pv.clone(),
                x,
                t
            ),
        ),
    ];
    for (dt, tol, g) in lp {
        assert_eq!(g.len(), g64.len());
        for ((name, shape, lo), (_, shape64, hi)) in g.iter().zip(&g64) {
            assert_eq!(shape, shape64);
            let scale = hi.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            assert!(scale > 1e-3, "{name}: a degenerate reference gradient");
            let err = lo
                .iter()
                .zip(hi)
                .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()))
                / scale;
            assert!(
                err < tol,
                "{dt} {name}: error {err:e} relative to the f64 gradient"
            );
        }
    }
}

#[test]
fn ties_and_zeros() {
    // where finite differences say nothing (ties) or a naive rule divides by zero: exact values
    let m = EdgeCases::new().unwrap();
    let mut p = m.randomize_params(13);
    // row 0: a tied max; row 1: one zero; row 2: two zeros; -2 twice: a tied min
    let av = [
        1.5, 3.0, 3.0, -2.0, 0.0, 2.0, 0.5, -1.0, 0.0, -2.0, 0.0, 1.0,
    ];
    set(&mut p, "a", |i| av[i]);
    set(&mut p, "b", |_| 1.5);
    let seeds = EdgeCasesOutputs {
        mx: Array1::from(vec![2.0, 3.0, 5.0]),
        mn: ndarray::arr0(4.0),
        pr: Array1::from(vec![1.0, 0.5, 7.0]),
        sq: Array2::from_elem((3, 4), 0.25),
        pb: Array2::from_elem((3, 4), 1.0),
    };
    let (out, g) = m
        .evaluate_gradients(
            &p,
            EdgeCasesInputs {
                _marker: PhantomData,
            },
            seeds,
        )
        .unwrap();
    assert_eq!(out.pr.to_vec(), [-27.0, 0.0, 0.0]);
    let (ga, gb) = (leaves(&g)[0].2.clone(), leaves(&g)[1].2.clone());
    // max: the tie at [0, 1], [0, 2] shares the seed 2; min: -2 at 3 and 9 share the seed 4
    let mut want = [0.0; 12];
    want[1] += 1.0;
    want[2] += 1.0;
    want[5] += 3.0;
    want[11] += 5.0;
    want[3] += 2.0;
    want[9] += 2.0;
    // prod: the product of the others; with one zero only the zero gets it; two zeros: none
    for (k, v) in [-18.0, -9.0, -9.0, 13.5].iter().enumerate() {
        want[k] += v;
    }
    want[4] += 0.5 * (2.0 * 0.5 * -1.0);
    for (k, &a) in av.iter().enumerate() {
        // power(a, 2): 2a (0 at 0, not 0/0); power(a², 1.5) = |a|³: 3 a |a|
        want[k] += 0.25 * 2.0 * a + 3.0 * a * a.abs();
    }
    for k in 0..12 {
        assert!(
            (ga[k] - want[k]).abs() < 1e-12,
            "a[{k}]: {} vs {}",
            ga[k],
            want[k]
        );
    }
    // d/db of (a²)^b = ln(a²) |a|³, taken as 0 where a = 0
    for (k, &a) in av.iter().enumerate() {
        let w = if a == 0.0 {
            0.0
        } else {
            (a * a).ln() * a.abs().powi(3)
        };
        assert!((gb[k] - w).abs() < 1e-12, "b[{k}]: {} vs {w}", gb[k]);
    }
}

#[test]
fn open_rank_broadcasts() {
    // params broadcast against an input of open rank: the summed axes are known at run time
    let m = OpenRank::new().unwrap();
    let mut p = m.randomize_params(14);
    set(&mut p, "a", |i| wave(i, 0.2));
    set(&mut p, "c", |i| wave(i, 1.2));
    set(&mut p, "w", |i| wave(i, 2.2));
    for shape in [vec![3, 4], vec![2, 3, 4], vec![2, 1, 3, 4]] {
        let lead: Vec<usize> = shape[..shape.len() - 1].to_vec();
        let out_shape = |n: usize| [lead.clone(), vec![n]].concat();
        let x = pat(ndarray::IxDyn(&shape), 0.4);
        let seeds = || OpenRankOutputs {
            y: pat(ndarray::IxDyn(&out_shape(2)), 0.6),
            z: pat(ndarray::IxDyn(&out_shape(2)), 0.8),
        };
        let loss = |p: &OpenRankParams| {
            let o = m.evaluate(p, OpenRankInputs { x: x.view() }).unwrap();
            let s = seeds();
            dot(&o.y, &s.y) + dot(&o.z, &s.z)
        };
        let (_, g) = m
            .evaluate_gradients(&p, OpenRankInputs { x: x.view() }, seeds())
            .unwrap();
        assert_eq!(
            gradcheck(&format!("open rank {shape:?}"), &p, &g, loss),
            4 + 3 + 8 + 8 + 2
        );
    }
}

#[test]
fn outputs_that_alias_params_and_each_other() {
    let m = Aliases::new().unwrap();
    let mut p = m.randomize_params(15);
    set(&mut p, "a", |i| [0.5, -1.5, 2.5][i]);
    let seeds = AliasesOutputs {
        p: Array1::from(vec![1.0, 2.0, 3.0]),
        q: Array1::from(vec![0.5, 0.25, -1.0]),
        r: Array1::from(vec![10.0, 20.0, 30.0]),
        // an integer output's seed is ignored
        i: ndarray::arr0(7),
    };
    let (out, g) = m
        .evaluate_gradients(
            &p,
            AliasesInputs {
                _marker: PhantomData,
            },
            seeds,
        )
        .unwrap();
    assert_eq!(out.i.into_scalar(), 2);
    assert_eq!(out.r.to_vec(), [1.0, -3.0, 5.0]);
    assert_eq!(
        leaves(&g)[0].2,
        [1.0 + 1.0 + 20.0, 2.0 + 0.5 + 40.0, 3.0 - 2.0 + 60.0]
    );
}
