//! Gradient checkpointing: the same gradients (f64, within 1e-12 — in fact bitwise) and a lower
//! planned peak for a 16-layer MLP.

use mithril::prelude::*;
use mithril::rt::{ParamTree, TensorView};
use ndarray::{Array1, Array2};

mithril! {
    train Deep {
        input x: f64[B, 128];
        input y: i64[B];
        let h = x;
        for i in 0..16 {
            let h = tanh(Linear(128)(h));
        }
        output logits = Linear(10)(h);
        loss cross_entropy(logits, y).mean();
    }

    compile Plain = Deep { shapes: { x: [64, 128], y: [64] }, static_shapes: true };
    compile Ckpt4 = Deep { shapes: { x: [64, 128], y: [64] }, static_shapes: true, gradient_checkpointing: { segments: 4 } };
    compile Ckpt8 = Deep { gradient_checkpointing: { segments: 8 } };
}

fn leaves(t: &dyn ParamTree) -> Vec<(String, Vec<f64>)> {
    let mut out = Vec::new();
    t.visit(&mut |name, v: TensorView<'_>| {
        let vals = match v {
            TensorView::F64(a) => a.iter().copied().collect(),
            _ => panic!("f64 expected for {name}"),
        };
        out.push((name.to_string(), vals));
    });
    out
}

fn planned_peak(summary: &str) -> String {
    summary
        .lines()
        .find(|l| l.starts_with("evaluate_gradients memory: planned peak"))
        .unwrap_or_else(|| panic!("no gradient memory line in\n{summary}"))
        .to_string()
}

#[test]
fn checkpointed_gradients_equal_the_plain_ones_and_the_peak_drops() {
    let plain = Plain::new().unwrap();
    let ck = Ckpt4::new().unwrap();
    let ck8 = Ckpt8::new().unwrap();
    let p = plain.randomize_params(7);
    let mut pc = ck.randomize_params(0);
    let mut p8 = ck8.randomize_params(0);
    let bytes = p.to_safetensors_bytes().unwrap();
    pc.load_safetensors_bytes(&bytes).unwrap();
    p8.load_safetensors_bytes(&bytes).unwrap();
    let x = Array2::from_shape_fn((64, 128), |(i, j)| ((i * 128 + j) as f64 * 0.37).sin());
    let y = Array1::from_shape_fn(64, |i| (i * 7 % 10) as i64);
    let (o1, g1) = plain
        .evaluate_gradients(
            &p,
            PlainInputs {
                x: x.view(),
                y: y.view(),
            },
        )
        .unwrap();
    let (o2, g2) = ck
        .evaluate_gradients(
            &pc,
            Ckpt4Inputs {
                x: x.view(),
                y: y.view(),
            },
        )
        .unwrap();
    let (o3, g3) = ck8
        .evaluate_gradients(
            &p8,
            Ckpt8Inputs {
                x: x.view(),
                y: y.view(),
            },
        )
        .unwrap();
    assert_eq!(o1.loss, o2.loss);
    assert_eq!(o1.loss, o3.loss);
    let (a, b, c) = (leaves(&g1), leaves(&g2), leaves(&g3));
    assert_eq!(a.len(), 34);
    for ((na, va), ((nb, vb), (nc, vc))) in a.iter().zip(b.iter().zip(&c)) {
        assert_eq!((na, na), (nb, nc));
        for ((x, y), z) in va.iter().zip(vb).zip(vc) {
            assert!(
                (x - y).abs() <= 1e-12 * x.abs().max(1.0),
                "{na}: {x} vs {y}"
            );
            assert!(
                (x - z).abs() <= 1e-12 * x.abs().max(1.0),
                "{na}: {x} vs {z}"
            );
        }
    }
    // the planned peak, at compile time and as run
    let (r1, r2) = (
        plain.memory_report_gradients().unwrap(),
        ck.memory_report_gradients().unwrap(),
    );
    println!("16-layer MLP, batch 64, f64, training step:");
    println!("  plain:          {}", planned_peak(Plain::SUMMARY));
    println!("  4 segments:     {}", planned_peak(Ckpt4::SUMMARY));
    println!(
        "  run: plain {} B, checkpointed {} B",
        r1.planned_bytes, r2.planned_bytes
    );
    assert!(
        r2.planned_bytes * 10 < r1.planned_bytes * 7,
        "checkpointing should cut the peak by more than 30%: {r1:?} vs {r2:?}"
    );
    let r3 = ck8.memory_report_gradients().unwrap();
    println!("  8 segments (dynamic shapes): {} B", r3.planned_bytes);
    assert!(r3.planned_bytes < r1.planned_bytes);
}
