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

// ---- run-time control flow on the static path (structured Rust `if` / `loop`, not unrolled)

mithril! {
    /// A scan: a step read at the loop's index, a carried state through a product with a
    /// fused epilogue, a stacked output, and a slice at a constant index.
    model Scan {
        input xs: f32[B, T, 4];
        param w: f32[4, 4];
        let h = xs[(.., 0)] * 0.5;
        for t in 0..T {
            let h = tanh(matmul(h, w) + xs[(.., t)]);
            stack hs[(.., t)] = h * 2.0;
        }
        output hs = hs;
        output last = h;
    }
    compile ScanS = Scan { shapes: { xs: [2, 5, 4] }, static_shapes: true };
    compile ScanFixed = Scan { shapes: { xs: [2, 5, 4] } };

    /// A `while` whose trip count depends on a value (`e0`), with the seed's recurrent block
    /// (a `Linear` in the body), a counter, and a bound.
    model Until {
        input x: f32[B, 3];
        input e0: f32[];
        let h = x;
        let e = e0;
        let step = 0;
        while e < 4.0, max_steps = 6 {
            let h = tanh(Linear(3)(h)) + x;
            let e = e * 1.5 + 0.25;
            let step = step + 1;
        }
        output y = h;
        output steps = step;
    }
    compile UntilS = Until { shapes: { x: [2, 3] }, static_shapes: true };

    /// A run-time `if` taken both ways, with a loop inside one branch and a swap of two loop
    /// variables (the simultaneous assignment reads the old values).
    model Pick {
        input x: f32[B, 4];
        input go: bool[];
        input n: i64[];
        param v: f32[4];
        let h = Linear(4)(x);
        let a = x * v;
        if go {
            let b = h * 2.0;
            let step = 0;
            while step < n, max_steps = 10 {
                let t = a;
                let a = b * v + 1.0;
                let b = t;
                let step = step + 1;
            }
            let h = relu(a) + b;
        } else {
            let h = tanh(h) - x;
        }
        output y = h + 1.0;
    }
    compile PickS = Pick { shapes: { x: [3, 4] }, static_shapes: true };

    /// Nested loops: a `while` inside a scan's body, its exit read by the outer body.
    model Nest {
        input xs: f32[B, T, 2];
        param w: f32[2, 2];
        param v: f32[2];
        let h = xs[(.., 0)] * 0.0;
        for t in 0..T {
            let k = 0;
            let g = xs[(.., t)];
            while k < 2 {
                let g = tanh(matmul(g, w)) + h;
                let k = k + 1;
            }
            let h = h * v + g;
        }
        output y = h;
    }
    compile NestS = Nest { shapes: { xs: [3, 4, 2] }, static_shapes: true };

    /// A loop whose condition reduces (`sum`, not lowered by the static path): the generic
    /// path.
    model Grow {
        input x: f32[B, 2];
        param w: f32[2, 2];
        let h = x;
        while sum(h * h) < 4.0, max_steps = 50 {
            let h = h * 1.5 + tanh(matmul(h, w));
        }
        output y = h;
    }
    compile GrowS = Grow { shapes: { x: [2, 2] }, static_shapes: true };

    /// A `bool` loop variable (its slot is read again at the loop's end, never cleared).
    model Done {
        input x: f32[B, 2];
        input lim: f32[];
        let h = x;
        let e = lim * 0.0;
        let done = lim <= 0.0;
        while !done, max_steps = 20 {
            let h = h * 2.0 + 1.0;
            let e = e + 1.0;
            let done = e >= lim;
        }
        output y = h;
        output e = e;
    }
    compile DoneS = Done { shapes: { x: [2, 2] }, static_shapes: true };
}

fn specialized(summary: &str) {
    assert!(
        summary.contains("static_shapes: evaluate specialized")
            && summary.contains("run-time control flow as Rust `if` / `loop`, not unrolled"),
        "{summary}"
    );
}

#[test]
fn a_static_scan_equals_the_generic_one() {
    specialized(ScanS::SUMMARY);
    let (m, s) = (Scan::new().unwrap(), ScanS::new().unwrap());
    let (p, ps) = (m.randomize_params(11), s.randomize_params(11));
    assert_eq!(p.w, ps.w);
    let xs = ndarray::Array3::from_shape_fn((2, 5, 4), |(b, t, j)| {
        ((b * 20 + t * 4 + j) as f32 * 0.29).sin()
    });
    let want = m.evaluate(&p, ScanInputs { xs: xs.view() }).unwrap();
    for _ in 0..3 {
        let got = s.evaluate(&ps, ScanSInputs { xs: xs.view() }).unwrap();
        assert_eq!(got.hs, want.hs);
        assert_eq!(got.last, want.last);
    }
    // the plan path with `T` fixed by `shapes:` (a loop with a constant bound) agrees
    let f = ScanFixed::new().unwrap();
    let got = f
        .evaluate(&f.randomize_params(11), ScanFixedInputs { xs: xs.view() })
        .unwrap();
    assert_eq!((got.hs, got.last), (want.hs.clone(), want.last.clone()));
    let seeds = || (want.hs.mapv(|v| v + 0.5), want.last.mapv(|v| 1.0 - v));
    let (a, b) = seeds();
    let (_, gf) = f
        .evaluate_gradients(
            &f.randomize_params(11),
            ScanFixedInputs { xs: xs.view() },
            ScanFixedOutputs { hs: a, last: b },
        )
        .unwrap();
    let (a, b) = seeds();
    let (_, g) = m
        .evaluate_gradients(
            &p,
            ScanInputs { xs: xs.view() },
            ScanOutputs { hs: a, last: b },
        )
        .unwrap();
    assert_eq!(gf.w, g.w);
    // and the recurrence by hand
    let mut h = xs.index_axis(ndarray::Axis(1), 0).mapv(|v| v * 0.5);
    for t in 0..5 {
        h = (h.dot(&p.w) + xs.index_axis(ndarray::Axis(1), t)).mapv(f32::tanh);
        let got = want.hs.index_axis(ndarray::Axis(1), t);
        for (a, b) in got.iter().zip(h.iter()) {
            assert!((a - 2.0 * b).abs() < 1e-5, "{a} vs {}", 2.0 * b);
        }
    }
}

#[test]
fn a_static_while_runs_a_data_dependent_trip_count_and_stops_at_max_steps() {
    specialized(UntilS::SUMMARY);
    let (m, s) = (Until::new().unwrap(), UntilS::new().unwrap());
    let (p, ps) = (m.randomize_params(12), s.randomize_params(12));
    let xv = x(2, 3);
    // e0 = 5: no iteration; 3: one; 1: three (1, 1.75, 2.875, 4.5625); 0.02: six (the bound
    // itself); -1: still under 4 after 6 (an Err, e falls); then 2 and 5 again, after the Err,
    // on the same model
    for (e0, steps) in [
        (5.0f32, Some(0i64)),
        (3.0, Some(1)),
        (1.0, Some(3)),
        (0.02, Some(6)),
        (-1.0, None),
        (2.0, Some(2)),
        (5.0, Some(0)),
    ] {
        let e = ndarray::arr0(e0);
        let want = m.evaluate(
            &p,
            UntilInputs {
                x: xv.view(),
                e0: e.view(),
            },
        );
        let got = s.evaluate(
            &ps,
            UntilSInputs {
                x: xv.view(),
                e0: e.view(),
            },
        );
        match steps {
            Some(k) => {
                let (want, got) = (want.unwrap(), got.unwrap());
                assert_eq!(want.steps.clone().into_scalar(), k, "e0 = {e0}");
                assert_eq!(got.steps.into_scalar(), k, "e0 = {e0}");
                assert_eq!(got.y, want.y, "e0 = {e0}");
            }
            None => {
                let (we, ge) = (want.unwrap_err().to_string(), got.unwrap_err().to_string());
                assert!(ge.contains("max_steps = 6"), "{ge}");
                assert_eq!(ge.replace("`UntilS`", "`Until`"), we);
            }
        }
    }
}

#[test]
fn a_static_if_takes_both_ways_with_a_loop_and_a_swap_inside() {
    specialized(PickS::SUMMARY);
    let (m, s) = (Pick::new().unwrap(), PickS::new().unwrap());
    let (p, ps) = (m.randomize_params(13), s.randomize_params(13));
    let xv = x(3, 4);
    for (go, n) in [
        (true, 3i64),
        (false, 3),
        (true, 0),
        (true, 1),
        (false, 0),
        (true, 4),
    ] {
        let (g, k) = (ndarray::arr0(go), ndarray::arr0(n));
        let want = m
            .evaluate(
                &p,
                PickInputs {
                    x: xv.view(),
                    go: g.view(),
                    n: k.view(),
                },
            )
            .unwrap()
            .y;
        let got = s
            .evaluate(
                &ps,
                PickSInputs {
                    x: xv.view(),
                    go: g.view(),
                    n: k.view(),
                },
            )
            .unwrap()
            .y;
        assert_eq!(got, want, "go = {go}, n = {n}");
        // by hand
        let h = xv.dot(&p.h.weight.t()) + &p.h.bias;
        let hand = if go {
            let (mut a, mut b) = (&xv * &p.v, &h * 2.0);
            for _ in 0..n {
                let t = a.clone();
                a = &b * &p.v + 1.0;
                b = t;
            }
            a.mapv(|z| z.max(0.0)) + &b + 1.0
        } else {
            h.mapv(f32::tanh) - &xv + 1.0
        };
        for (a, b) in got.iter().zip(hand.iter()) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn static_nested_loops_and_the_bodies_that_keep_the_generic_path() {
    specialized(NestS::SUMMARY);
    let (m, s) = (Nest::new().unwrap(), NestS::new().unwrap());
    let (p, ps) = (m.randomize_params(14), s.randomize_params(14));
    let xs = ndarray::Array3::from_shape_fn((3, 4, 2), |(b, t, j)| {
        ((b * 8 + t * 2 + j) as f32 * 0.41).cos()
    });
    let want = m.evaluate(&p, NestInputs { xs: xs.view() }).unwrap().y;
    for _ in 0..2 {
        assert_eq!(
            s.evaluate(&ps, NestSInputs { xs: xs.view() }).unwrap().y,
            want
        );
    }
    let mut h = ndarray::Array2::<f32>::zeros((3, 2));
    for t in 0..4 {
        let mut g = xs.index_axis(ndarray::Axis(1), t).to_owned();
        for _ in 0..2 {
            g = g.dot(&p.w).mapv(f32::tanh) + &h;
        }
        h = &h * &p.v + &g;
    }
    for (a, b) in want.iter().zip(h.iter()) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    // the reason is in the summary
    assert!(
        GrowS::SUMMARY
            .contains("static_shapes: evaluate keeps the generic path (not specialized: `sum`)"),
        "{}",
        GrowS::SUMMARY
    );
    let (m, s) = (Grow::new().unwrap(), GrowS::new().unwrap());
    let (p, ps) = (m.randomize_params(15), s.randomize_params(15));
    let xv = x(2, 2);
    assert_eq!(
        s.evaluate(&ps, GrowSInputs { x: xv.view() }).unwrap().y,
        m.evaluate(&p, GrowInputs { x: xv.view() }).unwrap().y
    );
}

#[test]
fn a_static_loop_with_a_bool_loop_variable() {
    specialized(DoneS::SUMMARY);
    let (m, s) = (Done::new().unwrap(), DoneS::new().unwrap());
    let (p, ps) = (m.randomize_params(16), s.randomize_params(16));
    let xv = x(2, 2);
    for lim in [3.0f32, 0.0, 1.0, 5.0, 3.0] {
        let l = ndarray::arr0(lim);
        let want = m
            .evaluate(
                &p,
                DoneInputs {
                    x: xv.view(),
                    lim: l.view(),
                },
            )
            .unwrap();
        let got = s
            .evaluate(
                &ps,
                DoneSInputs {
                    x: xv.view(),
                    lim: l.view(),
                },
            )
            .unwrap();
        assert_eq!(got.e.clone().into_scalar(), lim, "lim = {lim}");
        assert_eq!((got.y, got.e), (want.y, want.e), "lim = {lim}");
    }
}
