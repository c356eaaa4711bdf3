//! Gradients from `evaluate_gradients` against central finite differences in f64 (the harness
//! of `tests/common/fd.rs`).

use crate::common::fd::gradcheck;
use mithril::prelude::*;
use mithril::rt::{TensorView, TensorViewMut};
use ndarray::{Array1, Array2};

mithril! {
    model Net {
        input x: f64[B, 5];
        let h = tanh(Linear(7)(x));
        let h = gelu(Linear(6)(h)) * sigmoid(h.sum(axis = 1, keepdim = true));
        let z = Linear(4)(h);
        output y = log_softmax(z, axis = -1) + softplus(z).mean(axis = 0) - exp(z * 0.1).max(axis = 1, keepdim = true);
    }

    model Classifier {
        input tokens: i64[B, 3];
        input target: i64[B];
        let e = Embedding(num_embeddings = 6, dim = 4)(tokens);
        let flat = e.reshape([B, 12]);
        let both = concat(flat, flat.slice(.., (0..12).step_by(3)), axis = 1);
        let logits = Linear(5)(both);
        output loss = cross_entropy(logits, target).mean() + LayerNorm()(logits).slice(1..).sum();
    }

    compile ClassifierF64 = Classifier { dtype: f64 };

    model Elementwise {
        input x: f64[3, 4];
        param a: f64[4];
        param b: f64[3, 1];
        let u = x * a + b / (a * a + 1.0);
        let v = sqrt(square(u) + 1.0) - abs(u - 0.3) + sin(u) * cos(a);
        let w = maximum(u, v) + minimum(u, 0.5 * v) + clamp(u, min = -0.5, max = 0.5) + leaky_relu(v, slope = 0.1);
        let s = softmax(w, axis = 0) * variance(w, axis = 1, keepdim = true, correction = 1.0);
        output y = s + relu(w) + power(a * a + 1.0, 1.5) + erf(w) + gelu(w, approximate = "tanh") + where_(w > 0.0, w, 2.0 * w);
        output t = transpose(reshape(w, [4, 3]), [1, 0]).prod(axis = 0) + w.min(axis = 0) + w.mean();
    }
}

#[test]
fn mlp_gradients_match_finite_differences() {
    let m = Net::new().unwrap();
    let params = m.randomize_params(3);
    let x = Array2::from_shape_fn((3, 5), |(i, j)| ((i * 5 + j) as f64 * 0.37).sin());
    let seed = Array2::from_shape_fn((3, 4), |(i, j)| 0.5 + ((i + 2 * j) as f64 * 0.71).cos());
    let loss = |p: &NetParams| -> f64 {
        let o = m.evaluate(p, NetInputs { x: x.view() }).unwrap();
        (&o.y * &seed).sum()
    };
    let (out, grads) = m
        .evaluate_gradients(
            &params,
            NetInputs { x: x.view() },
            NetOutputs { y: seed.clone() },
        )
        .unwrap();
    let plain = m.evaluate(&params, NetInputs { x: x.view() }).unwrap();
    assert_eq!(out.y, plain.y);
    gradcheck("Net", &params, &grads, loss);
}

#[test]
fn elementwise_and_reduction_gradients_match_finite_differences() {
    let m = Elementwise::new().unwrap();
    let mut params = m.randomize_params(11);
    params.a = Array1::from(vec![0.3, -0.7, 1.1, 0.45]);
    let x = Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64 * 0.53).cos() * 1.3);
    let sy = Array2::from_shape_fn((3, 4), |(i, j)| 1.0 + 0.1 * (i as f64) - 0.2 * (j as f64));
    let st = Array1::from(vec![0.7, -1.2, 0.4, 0.9]);
    let loss = |p: &ElementwiseParams| -> f64 {
        let o = m.evaluate(p, ElementwiseInputs { x: x.view() }).unwrap();
        (&o.y * &sy).sum() + (&o.t * &st).sum()
    };
    let seeds = ElementwiseOutputs {
        y: sy.clone(),
        t: st.clone(),
    };
    let (_, grads) = m
        .evaluate_gradients(&params, ElementwiseInputs { x: x.view() }, seeds)
        .unwrap();
    gradcheck("Elementwise", &params, &grads, loss);
}

#[test]
fn embedding_cross_entropy_slice_concat_gradients() {
    let m = Classifier::new().unwrap();
    let params = m.randomize_params(5);
    let tokens =
        Array2::from_shape_vec((4, 3), vec![0i64, 5, 2, 1, 1, 3, 4, 0, 2, 5, 5, 1]).unwrap();
    let target = Array1::from(vec![0i64, 4, 2, 1]);
    let loss = |p: &ClassifierParams| -> f64 {
        let o = m
            .evaluate(
                p,
                ClassifierInputs {
                    tokens: tokens.view(),
                    target: target.view(),
                },
            )
            .unwrap();
        o.loss.into_scalar() as f64
    };
    let seed = ClassifierOutputs {
        loss: ndarray::arr0(1.0f32),
    };
    let (_, grads) = m
        .evaluate_gradients(
            &params,
            ClassifierInputs {
                tokens: tokens.view(),
                target: target.view(),
            },
            seed,
        )
        .unwrap();
    // f32 model: compare with a looser tolerance on a coarser step
    let mut worst = 0.0f64;
    let pv = params.clone();
    let names: Vec<String> = {
        let mut n = Vec::new();
        pv.visit(&mut |k, _| n.push(k.to_string()));
        n
    };
    let mut gvals: Vec<Vec<f32>> = Vec::new();
    grads.visit(&mut |_, t| {
        if let TensorView::F32(a) = t {
            gvals.push(a.iter().copied().collect());
        }
    });
    for (name, gv) in names.iter().zip(&gvals) {
        for (i, &an) in gv.iter().enumerate().step_by(3) {
            let h = 1e-2f32;
            let mut plus = params.clone();
            let mut minus = params.clone();
            for (q, d) in [(&mut plus, h), (&mut minus, -h)] {
                q.visit_mut(&mut |k, t| {
                    if k == name
                        && let TensorViewMut::F32(mut a) = t
                        && let Some(v) = a.iter_mut().nth(i)
                    {
                        *v += d;
                    }
                    Ok(())
                })
                .unwrap();
            }
            let fd = (loss(&plus) - loss(&minus)) / (2.0 * h as f64);
            let err = (fd - an as f64).abs() / (1.0 + fd.abs());
            worst = worst.max(err);
            assert!(err < 2e-3, "{name}[{i}]: fd {fd} vs grad {an}");
        }
    }
    assert!(worst < 2e-3);
}

#[test]
fn embedding_cross_entropy_slice_concat_gradients_f64() {
    let m = ClassifierF64::new().unwrap();
    let params = m.randomize_params(5);
    let tokens =
        Array2::from_shape_vec((4, 3), vec![0i64, 5, 2, 1, 1, 3, 4, 0, 2, 5, 5, 1]).unwrap();
    let target = Array1::from(vec![0i64, 4, 2, 1]);
    let inputs = || ClassifierF64Inputs {
        tokens: tokens.view(),
        target: target.view(),
    };
    let loss =
        |p: &ClassifierF64Params| -> f64 { m.evaluate(p, inputs()).unwrap().loss.into_scalar() };
    let (_, grads) = m
        .evaluate_gradients(
            &params,
            inputs(),
            ClassifierF64Outputs {
                loss: ndarray::arr0(1.0),
            },
        )
        .unwrap();
    gradcheck("ClassifierF64", &params, &grads, loss);
}
