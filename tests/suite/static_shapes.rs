//! `static_shapes: true`: the specialized `evaluate` (constant dims, slices, direct kernel
//! calls) gives exactly the generic path's results, for every op it lowers, every broadcast
//! pattern, in-place chains, f64/bf16, strided inputs; graphs it does not lower keep the generic
//! path and the summary says so.

use mithril::prelude::*;
use mithril::rt::Error;
use ndarray::{Array2, ShapeBuilder};

mithril! {
    model Mlp {
        input x: f32[B, 48];
        let h = relu(Linear(32)(x));
        let h = relu(Linear(24)(h));
        output logits = Linear(10)(h);
    }
    compile MlpS = Mlp { shapes: { x: [5, 48] }, static_shapes: true };
    compile MlpS1 = Mlp { shapes: { x: [1, 48] }, static_shapes: true };
    compile Mlp64 = Mlp { dtype: f64, types: { x: f64 } };
    compile Mlp64S = Mlp { dtype: f64, types: { x: f64 }, shapes: { x: [5, 48] }, static_shapes: true };
    compile MlpBf = Mlp { dtype: bf16, types: { x: bf16 } };
    compile MlpBfS = Mlp { dtype: bf16, types: { x: bf16 }, shapes: { x: [5, 48] }, static_shapes: true };

    /// Broadcasts of every kind, a chain the memory plan runs in place, an output that later
    /// ops read, and a product without epilogue.
    model Block {
        input x: f32[B, 16];
        input s: f32[B, 1];
        input r: f32[16];
        let h = Linear(16)(x);
        output gate = sigmoid(h) * x + s;
        let y = tanh(gate) * 0.5 + r;
        let y = y * y - 1.0;
        output z = matmul(y, x.transpose());
        output w = y + 2.0;
    }
    compile BlockS = Block { shapes: { x: [6, 16], s: [6, 1] }, static_shapes: true };

    /// softmax is not lowered by the static path: the generic one runs.
    model Soft {
        input x: f32[B, 8];
        output p = softmax(Linear(8)(x), axis = 1);
    }
    compile SoftS = Soft { shapes: { x: [3, 8] }, static_shapes: true };
}

fn x(b: usize, n: usize) -> Array2<f32> {
    Array2::from_shape_fn((b, n), |(i, j)| ((i * n + j) as f32 * 0.37).sin())
}

#[test]
fn the_static_mlp_equals_the_generic_one() {
    assert!(
        MlpS::SUMMARY.contains("static_shapes: evaluate specialized"),
        "{}",
        MlpS::SUMMARY
    );
    let (m, s, s1) = (
        Mlp::new().unwrap(),
        MlpS::new().unwrap(),
        MlpS1::new().unwrap(),
    );
    // the same seed gives the same values to the same dotted names
    let (p, ps, ps1) = (
        m.randomize_params(3),
        s.randomize_params(3),
        s1.randomize_params(3),
    );
    assert_eq!(p.linear_0.weight, ps.linear_0.weight);
    let x5 = x(5, 48);
    let want = m.evaluate(&p, MlpInputs { x: x5.view() }).unwrap().logits;
    for _ in 0..3 {
        let got = s.evaluate(&ps, MlpSInputs { x: x5.view() }).unwrap().logits;
        assert_eq!(got, want);
    }
    let x1 = x(1, 48);
    let want = m.evaluate(&p, MlpInputs { x: x1.view() }).unwrap().logits;
    assert_eq!(
        s1.evaluate(&ps1, MlpS1Inputs { x: x1.view() })
            .unwrap()
            .logits,
        want
    );
}

#[test]
fn strided_inputs_are_read_in_logical_order() {
    let (m, s) = (Mlp::new().unwrap(), MlpS::new().unwrap());
    let (p, ps) = (m.randomize_params(4), s.randomize_params(4));
    // a column-major [5, 48] and a transposed view
    let xf = Array2::from_shape_fn((5, 48).f(), |(i, j)| ((i * 48 + j) as f32 * 0.37).sin());
    let want = m.evaluate(&p, MlpInputs { x: xf.view() }).unwrap().logits;
    assert_eq!(
        s.evaluate(&ps, MlpSInputs { x: xf.view() }).unwrap().logits,
        want
    );
    let xt = x(48, 5);
    let want = m.evaluate(&p, MlpInputs { x: xt.t() }).unwrap().logits;
    assert_eq!(
        s.evaluate(&ps, MlpSInputs { x: xt.t() }).unwrap().logits,
        want
    );
    // a transposed param
    let mut pt = ps.clone();
    let w = &ps.linear_1.weight;
    pt.linear_1.weight = Array2::from_shape_fn((24, 32).f(), |(i, j)| w[[i, j]]);
    assert!(!pt.linear_1.weight.is_standard_layout());
    assert_eq!(
        s.evaluate(&pt, MlpSInputs { x: xt.t() }).unwrap().logits,
        want
    );
}

#[test]
fn f64_and_bf16_static_paths() {
    let (m, s) = (Mlp64::new().unwrap(), Mlp64S::new().unwrap());
    let (p, ps) = (m.randomize_params(5), s.randomize_params(5));
    let x5 = x(5, 48).mapv(f64::from);
    let want = m.evaluate(&p, Mlp64Inputs { x: x5.view() }).unwrap().logits;
    assert_eq!(
        s.evaluate(&ps, Mlp64SInputs { x: x5.view() })
            .unwrap()
            .logits,
        want
    );
    let (m, s) = (MlpBf::new().unwrap(), MlpBfS::new().unwrap());
    let (p, ps) = (m.randomize_params(6), s.randomize_params(6));
    let x5 = x(5, 48).mapv(mithril::half::bf16::from_f32);
    let want = m.evaluate(&p, MlpBfInputs { x: x5.view() }).unwrap().logits;
    assert_eq!(
        s.evaluate(&ps, MlpBfSInputs { x: x5.view() })
            .unwrap()
            .logits,
        want
    );
}

#[test]
fn broadcasts_in_place_chains_and_plain_products() {
    assert!(
        BlockS::SUMMARY.contains("static_shapes: evaluate specialized"),
        "{}",
        BlockS::SUMMARY
    );
    let (m, s) = (Block::new().unwrap(), BlockS::new().unwrap());
    let (p, ps) = (m.randomize_params(7), s.randomize_params(7));
    let xv = x(6, 16);
    let sv = x(6, 1);
    let rv = x(1, 16).into_shape_with_order(16).unwrap();
    let want = m
        .evaluate(
            &p,
            BlockInputs {
                x: xv.view(),
                s: sv.view(),
                r: rv.view(),
            },
        )
        .unwrap();
    for _ in 0..2 {
        let got = s
            .evaluate(
                &ps,
                BlockSInputs {
                    x: xv.view(),
                    s: sv.view(),
                    r: rv.view(),
                },
            )
            .unwrap();
        assert_eq!(got.gate, want.gate);
        assert_eq!(got.z, want.z);
        assert_eq!(got.w, want.w);
    }
    // and against values computed here
    let g = &want.gate;
    let y = g.mapv(|v| v.tanh() * 0.5) + &rv;
    let y = &y * &y - 1.0;
    let z = y.dot(&xv.t());
    for (a, b) in z.iter().zip(want.z.iter()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
    }
}

#[test]
fn unsupported_ops_keep_the_generic_path() {
    assert!(
        SoftS::SUMMARY.contains(
            "static_shapes: evaluate keeps the generic path (not specialized: `softmax`)"
        ),
        "{}",
        SoftS::SUMMARY
    );
    let (m, s) = (Soft::new().unwrap(), SoftS::new().unwrap());
    let (p, ps) = (m.randomize_params(8), s.randomize_params(8));
    let xv = x(3, 8);
    assert_eq!(
        s.evaluate(&ps, SoftSInputs { x: xv.view() }).unwrap().p,
        m.evaluate(&p, SoftInputs { x: xv.view() }).unwrap().p
    );
}

#[test]
fn a_wrong_shape_names_the_terminal() {
    let s = MlpS::new().unwrap();
    let ps = s.randomize_params(0);
    let bad = x(4, 48);
    let e = s.evaluate(&ps, MlpSInputs { x: bad.view() }).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("input `x`") && msg.contains("f32[5, 48]") && msg.contains("[4, 48]"),
        "{msg}"
    );
    let mut pb = ps.clone();
    pb.linear_2.bias = ndarray::Array1::zeros(11);
    let msg = s
        .evaluate(&pb, MlpSInputs { x: x(5, 48).view() })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("param `linear_2.bias`") && msg.contains("[11]"),
        "{msg}"
    );
}

/// A reversed (negative-stride) input or param gives bitwise the results of the same values
/// stored contiguously, on the generic path and against the `static_shapes` model (the generic
/// path used to take a fallback product for them, 1-2 ulp off).
#[test]
fn reversed_inputs_and_params_give_the_same_bits() {
    let (m, s) = (Mlp::new().unwrap(), MlpS::new().unwrap());
    let (p, ps) = (m.randomize_params(9), s.randomize_params(9));
    assert_eq!(p.linear_1.weight, ps.linear_1.weight);
    let xc = x(5, 48);
    // the same values stored reversed along both axes, read through a reversing view
    let mut store = xc.clone();
    store.invert_axis(ndarray::Axis(0));
    store.invert_axis(ndarray::Axis(1));
    let store = store.as_standard_layout().into_owned();
    let mut xr = store.view();
    xr.invert_axis(ndarray::Axis(0));
    xr.invert_axis(ndarray::Axis(1));
    assert_eq!(xr, xc.view());
    assert!(xr.strides().iter().all(|&st| st < 0));
    let want = m.evaluate(&p, MlpInputs { x: xc.view() }).unwrap().logits;
    assert_eq!(m.evaluate(&p, MlpInputs { x: xr }).unwrap().logits, want);
    assert_eq!(s.evaluate(&ps, MlpSInputs { x: xr }).unwrap().logits, want);
    // a param whose rows are stored reversed
    let w = &p.linear_1.weight;
    let mut wstore = w.clone();
    wstore.invert_axis(ndarray::Axis(0));
    let wstore = wstore.as_standard_layout().into_owned();
    let mut wr = wstore.clone();
    wr.invert_axis(ndarray::Axis(0));
    assert_eq!(&wr, w);
    assert!(wr.strides()[0] < 0);
    let mut pr = p.clone();
    pr.linear_1.weight = wr.clone();
    let mut psr = ps.clone();
    psr.linear_1.weight = wr;
    assert_eq!(
        m.evaluate(&pr, MlpInputs { x: xc.view() }).unwrap().logits,
        want
    );
    assert_eq!(
        s.evaluate(&psr, MlpSInputs { x: xc.view() })
            .unwrap()
            .logits,
        want
    );
}
