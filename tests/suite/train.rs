//! `train` models: loss statements, regularization, evaluate_gradients seeded with 1.

use mithril::prelude::*;
use mithril::rt::{TensorView, TensorViewMut};
use ndarray::{Array1, Array2};

mithril! {
    train Clf {
        input x: f64[B, 4];
        input y: i64[B];
        let h = relu(Linear(8)(x));
        output logits = Linear(3)(h);
        loss cross_entropy(logits, y).mean();
        loss 0.1 * squared_error(logits, 0.0).mean();
        regularize l2(1e-2) on "*.weight";
        regularize l1(1e-3) on "linear_1.bias";
    }
}

fn loss_of(m: &Clf, p: &ClfParams, x: &Array2<f64>, y: &Array1<i64>) -> f64 {
    m.evaluate(
        p,
        ClfInputs {
            x: x.view(),
            y: y.view(),
        },
    )
    .unwrap()
    .loss
    .into_scalar()
}

#[test]
fn train_model_loss_and_gradients() {
    let m = Clf::new().unwrap();
    let p = m.randomize_params(1);
    let x = Array2::from_shape_fn((5, 4), |(i, j)| ((i * 4 + j) as f64 * 0.61).sin());
    let y = Array1::from(vec![0i64, 2, 1, 1, 0]);
    let (out, grads) = m
        .evaluate_gradients(
            &p,
            ClfInputs {
                x: x.view(),
                y: y.view(),
            },
        )
        .unwrap();
    assert_eq!(out.logits.shape(), &[5, 3]);

    // the loss by hand: mean cross entropy + 0.1 * mean(logits^2) + regularization
    let lg = &out.logits;
    let mut ce = 0.0;
    for i in 0..5 {
        let row = lg.row(i);
        let mx = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = mx + row.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
        ce += lse - row[y[i] as usize];
    }
    ce /= 5.0;
    let sq = lg.iter().map(|v| v * v).sum::<f64>() / 15.0;
    let l2 = 1e-2
        * (p.linear_0.weight.iter().map(|v| v * v).sum::<f64>()
            + p.linear_1.weight.iter().map(|v| v * v).sum::<f64>());
    let l1 = 1e-3 * p.linear_1.bias.iter().map(|v| v.abs()).sum::<f64>();
    let want = ce + 0.1 * sq + l2 + l1;
    let got = out.loss.into_scalar();
    assert!((got - want).abs() < 1e-12, "{got} vs {want}");

    // gradients against central differences
    let mut names = Vec::new();
    p.visit(&mut |n, _| names.push(n.to_string()));
    let mut gv: Vec<Vec<f64>> = Vec::new();
    grads.visit(&mut |_, t| {
        if let TensorView::F64(a) = t {
            gv.push(a.iter().copied().collect());
        }
    });
    assert_eq!(
        names,
        [
            "linear_0.weight",
            "linear_0.bias",
            "linear_1.weight",
            "linear_1.bias"
        ]
    );
    for (name, g) in names.iter().zip(&gv) {
        for (i, &an) in g.iter().enumerate() {
            let h = 1e-6;
            let shift = |d: f64| {
                let mut q = p.clone();
                q.visit_mut(&mut |k, t| {
                    if k == name
                        && let TensorViewMut::F64(mut a) = t
                        && let Some(v) = a.iter_mut().nth(i)
                    {
                        *v += d;
                    }
                    Ok(())
                })
                .unwrap();
                loss_of(&m, &q, &x, &y)
            };
            let fd = (shift(h) - shift(-h)) / (2.0 * h);
            assert!(
                (fd - an).abs() / (1.0 + fd.abs()) < 1e-6,
                "{name}[{i}]: {fd} vs {an}"
            );
        }
    }
}
