//! The examples run as part of the test suite, and their models are checked against an
//! independent `ndarray` computation.

#[path = "../../examples/mlp.rs"]
mod mlp_example;

use mithril::prelude::*;
use mlp_example::{DigitMlp, DigitMlpInputs, argmax_rows, batch};
use ndarray::{Array1, Array2, Axis};

#[test]
fn mlp_example_main_runs() {
    mlp_example::main().unwrap();
}

fn linear(x: &Array2<f32>, w: &Array2<f32>, b: &Array1<f32>) -> Array2<f32> {
    x.dot(&w.t()) + b.view().insert_axis(Axis(0))
}

#[test]
fn mlp_example_matches_reference() {
    let model = DigitMlp::new().unwrap();
    let p = model.randomize_params(3);
    assert_eq!(p.fc1.weight.shape(), &[256, 784]);
    assert_eq!(p.fc2.weight.shape(), &[128, 256]);
    assert_eq!(p.fc3.weight.shape(), &[10, 128]);
    assert_eq!(
        p.names(),
        [
            "fc1.weight",
            "fc1.bias",
            "fc2.weight",
            "fc2.bias",
            "fc3.weight",
            "fc3.bias"
        ]
    );

    let x = batch(5, 784, 11);
    let out = model
        .evaluate(&p, DigitMlpInputs { x: x.view() })
        .unwrap()
        .logits;

    let relu = |a: Array2<f32>| a.mapv(|v| v.max(0.0));
    let h = relu(linear(&x, &p.fc1.weight, &p.fc1.bias));
    let h = relu(linear(&h, &p.fc2.weight, &p.fc2.bias));
    let want = linear(&h, &p.fc3.weight, &p.fc3.bias);

    assert_eq!(out.shape(), &[5, 10]);
    for (a, b) in out.iter().zip(want.iter()) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert_eq!(argmax_rows(&out), argmax_rows(&want));
}

#[test]
fn example_helpers() {
    // the batch is deterministic and in [0, 1)
    let a = batch(3, 7, 1);
    assert_eq!(a, batch(3, 7, 1));
    assert_ne!(a, batch(3, 7, 2));
    assert!(a.iter().all(|&v| (0.0..1.0).contains(&v)));
    let m = ndarray::array![[0.0f32, 3.0, 1.0], [5.0, -1.0, 5.0], [-2.0, -3.0, -1.0]];
    assert_eq!(argmax_rows(&m), [1, 0, 2]);
}
