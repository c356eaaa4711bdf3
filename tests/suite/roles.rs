//! Mithril's key roles as compile options: trainable, constants, data, discard, inference.

use mithril::prelude::*;
use ndarray::{Array2, arr0};

mithril! {
    model Net {
        input x: f64[B, 3];
        input scale: f64;
        let h = tanh(Linear(4)(x)) * scale;
        output y = Linear(2)(h);
        output aux = exp(h).sum(axis = 1);
    }
    compile NetHead = Net { trainable: ["linear_0.*"], data: [x] };
    compile NetBaked = Net { constants: { scale: 0.5 }, discard: [aux] };
    compile NetInfer = Net { inference: true };
}

#[test]
fn trainable_subset_gets_gradients_and_others_zeros() {
    let full = Net::new().unwrap();
    let head = NetHead::new().unwrap();
    let p = full.randomize_params(9);
    let ph = NetHeadParams {
        linear_0: NetHeadParamsLinear0 {
            weight: p.linear_0.weight.clone(),
            bias: p.linear_0.bias.clone(),
        },
        linear_1: NetHeadParamsLinear1 {
            weight: p.linear_1.weight.clone(),
            bias: p.linear_1.bias.clone(),
        },
    };
    let x = Array2::from_shape_fn((2, 3), |(i, j)| (i as f64 - j as f64) * 0.3);
    let s = arr0(1.5);
    let seed_y = Array2::from_elem((2, 2), 1.0);
    let seed_aux = ndarray::Array1::from_elem(2, 0.5);
    let (_, g) = full
        .evaluate_gradients(
            &p,
            NetInputs {
                x: x.view(),
                scale: s.view(),
            },
            NetOutputs {
                y: seed_y.clone(),
                aux: seed_aux.clone(),
            },
        )
        .unwrap();
    let (_, gh) = head
        .evaluate_gradients(
            &ph,
            NetHeadInputs {
                x: x.view(),
                scale: s.view(),
            },
            NetHeadOutputs {
                y: seed_y,
                aux: seed_aux,
            },
        )
        .unwrap();
    // the names in the summary: linear_0 is the outer Linear(2) (constructed first)
    assert!(Net::SUMMARY.contains("linear_0.weight"));
    assert_eq!(gh.linear_0.weight, g.linear_0.weight);
    assert_eq!(gh.linear_0.bias, g.linear_0.bias);
    assert!(gh.linear_1.weight.iter().all(|v| *v == 0.0));
    assert!(g.linear_1.weight.iter().any(|v| *v != 0.0));
    // the backward graph of the head-only model is smaller
    const { assert!(NetHead::NUM_OPS <= Net::NUM_OPS) };
}

#[test]
fn constants_bake_inputs_and_discard_drops_outputs() {
    let full = Net::new().unwrap();
    let baked = NetBaked::new().unwrap();
    let p = full.randomize_params(4);
    let pb = NetBakedParams {
        linear_0: NetBakedParamsLinear0 {
            weight: p.linear_0.weight.clone(),
            bias: p.linear_0.bias.clone(),
        },
        linear_1: NetBakedParamsLinear1 {
            weight: p.linear_1.weight.clone(),
            bias: p.linear_1.bias.clone(),
        },
    };
    let x = Array2::from_shape_fn((3, 3), |(i, j)| (i * 3 + j) as f64 * 0.1);
    let a = full
        .evaluate(
            &p,
            NetInputs {
                x: x.view(),
                scale: arr0(0.5).view(),
            },
        )
        .unwrap();
    // `scale` is gone from the inputs and `aux` from the outputs
    let b = baked.evaluate(&pb, NetBakedInputs { x: x.view() }).unwrap();
    assert_eq!(a.y, b.y);
    const { assert!(NetBaked::NUM_OPS < Net::NUM_OPS) };
    assert!(!NetBaked::SUMMARY.contains("exp(") && !NetBaked::SUMMARY.contains("| exp"));
    assert!(Net::SUMMARY.contains("exp("));
}

#[test]
fn inference_models_evaluate() {
    let m = NetInfer::new().unwrap();
    let p = m.randomize_params(1);
    let x = Array2::<f64>::zeros((1, 3));
    let o = m
        .evaluate(
            &p,
            NetInferInputs {
                x: x.view(),
                scale: arr0(1.0).view(),
            },
        )
        .unwrap();
    assert_eq!(o.y.shape(), &[1, 2]);
}
