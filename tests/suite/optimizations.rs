//! Each optimization pass changes the graph of a model built for it (seen through `NUM_OPS` and
//! the `SUMMARY`/`GRAPH_TEXT` consts) and leaves the results unchanged.

use mithril::ndarray::{Array1, Array2, arr1};
use mithril::prelude::*;

mithril! {
    // ---- common subexpression elimination
    model Cse {
        input x: f32[N];
        output y = exp(x) * 2.0 + exp(x) * 2.0;
    }
    compile CseOn = Cse { optimizations: { operator_fusion: false } };
    compile CseOff = Cse { optimizations: { operator_fusion: false, common_subexpression: false } };

    // ---- dead code elimination: work feeding no output
    model Dce {
        input x: f32[N];
        let unused = exp(x) * 3.0;
        let also_unused = unused.sum();
        output y = x + 1.0;
    }
    compile DceOff = Dce { optimizations: { dead_code_elimination: false } };
    compile DceOnNoFuse = Dce { optimizations: { operator_fusion: false } };
    compile DceOffNoFuse = Dce { optimizations: { operator_fusion: false, dead_code_elimination: false } };

    // ---- operator fusion: a chain of elementwise ops becomes one loop
    model Fuse {
        input x: f32[B, N];
        input b: f32[N];
        output y = relu(x * 2.0 + b);
    }
    compile FuseOff = Fuse { optimizations: { operator_fusion: false } };

    // ---- fusion also folds a transpose into matmul
    model MatT {
        input x: f32[B, K];
        input w: f32[N, K];
        output y = matmul(x, w.T);
    }
    compile MatTOff = MatT { optimizations: { operator_fusion: false } };

    // ---- constant folding
    model Fold {
        input x: f32[N];
        output y = exp(1.0) * x;
        const two: f32 = 2.0;
        output z = x + (two * 3.0 - 1.0);
    }
    compile FoldOff = Fold { optimizations: { constant_folding: false } };
    compile FoldOnNoFuse = Fold { optimizations: { operator_fusion: false } };
    compile FoldOffNoFuse = Fold { optimizations: { constant_folding: false, operator_fusion: false } };

    // ---- everything off vs everything on, on a small network
    model Net {
        input x: f32[B, 4];
        let fc = Linear(3);
        let h = relu(fc(x) * 1.0 + 0.0);
        let dup = sigmoid(h) + sigmoid(h);
        let dead = tanh(h).sum();
        output y = dup * exp(0.5);
    }
    compile NetRaw = Net {
        optimizations: {
            constant_folding: false,
            operator_fusion: false,
            dead_code_elimination: false,
            common_subexpression: false,
        },
    };
}

fn xs(n: usize) -> Array1<f32> {
    Array1::from_iter((0..n).map(|i| (i as f32 - 3.0) * 0.37))
}

fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

fn bits<D: mithril::ndarray::Dimension>(a: &mithril::ndarray::Array<f32, D>) -> Vec<u32> {
    a.iter().map(|v| v.to_bits()).collect()
}

#[test]
fn cse_merges_duplicate_exp() {
    // off: exp, mul, exp, mul, add; on: exp, mul, add
    assert_eq!(CseOff::NUM_OPS, 5, "{}", CseOff::SUMMARY);
    assert_eq!(CseOn::NUM_OPS, 3, "{}", CseOn::SUMMARY);
    assert_eq!(
        count(CseOff::GRAPH_TEXT, "= exp("),
        2,
        "{}",
        CseOff::GRAPH_TEXT
    );
    assert_eq!(
        count(CseOn::GRAPH_TEXT, "= exp("),
        1,
        "{}",
        CseOn::GRAPH_TEXT
    );
    assert!(
        CseOn::SUMMARY.contains("common_subexpression: 3"),
        "{}",
        CseOn::SUMMARY
    );
    assert!(
        !CseOff::SUMMARY.contains("common_subexpression"),
        "{}",
        CseOff::SUMMARY
    );
    let x = xs(9);
    let a = CseOn::new().unwrap();
    let b = CseOff::new().unwrap();
    let c = Cse::new().unwrap();
    let ya = a
        .evaluate(&a.randomize_params(0), CseOnInputs { x: x.view() })
        .unwrap()
        .y;
    let yb = b
        .evaluate(&b.randomize_params(0), CseOffInputs { x: x.view() })
        .unwrap()
        .y;
    let yc = c
        .evaluate(&c.randomize_params(0), CseInputs { x: x.view() })
        .unwrap()
        .y;
    assert_eq!(bits(&ya), bits(&yb));
    assert_eq!(bits(&ya), bits(&yc));
    let want: Vec<f32> = x.iter().map(|v| v.exp() * 2.0 + v.exp() * 2.0).collect();
    for (g, w) in ya.iter().zip(&want) {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
    }
}

#[test]
fn dce_removes_work_feeding_no_output() {
    // unfused: exp, mul, sum are dead; add is live
    assert_eq!(DceOffNoFuse::NUM_OPS, 4, "{}", DceOffNoFuse::SUMMARY);
    assert_eq!(DceOnNoFuse::NUM_OPS, 1, "{}", DceOnNoFuse::SUMMARY);
    assert!(
        !DceOnNoFuse::GRAPH_TEXT.contains("exp"),
        "{}",
        DceOnNoFuse::GRAPH_TEXT
    );
    assert!(
        !DceOnNoFuse::GRAPH_TEXT.contains("sum"),
        "{}",
        DceOnNoFuse::GRAPH_TEXT
    );
    // the three ops and the constant 3.0 that fed them
    assert!(
        DceOnNoFuse::SUMMARY.contains("dead_code_elimination: 4"),
        "{}",
        DceOnNoFuse::SUMMARY
    );
    // with fusion (default): exp*3 fuses into one loop, the sum stays without DCE
    // exp*3 fused, sum, x+1
    assert_eq!(DceOff::NUM_OPS, 3, "{}", DceOff::SUMMARY);
    assert_eq!(Dce::NUM_OPS, 1, "{}", Dce::SUMMARY);
    assert!(DceOff::GRAPH_TEXT.contains("sum"), "{}", DceOff::GRAPH_TEXT);
    // the input stays part of the interface even when only dead code used it
    let x = xs(6);
    let a = Dce::new().unwrap();
    let b = DceOff::new().unwrap();
    let c = DceOffNoFuse::new().unwrap();
    let ya = a
        .evaluate(&a.randomize_params(0), DceInputs { x: x.view() })
        .unwrap()
        .y;
    let yb = b
        .evaluate(&b.randomize_params(0), DceOffInputs { x: x.view() })
        .unwrap()
        .y;
    let yc = c
        .evaluate(&c.randomize_params(0), DceOffNoFuseInputs { x: x.view() })
        .unwrap()
        .y;
    let want: Vec<u32> = x.iter().map(|v| (v + 1.0).to_bits()).collect();
    assert_eq!(bits(&ya), want);
    assert_eq!(bits(&yb), want);
    assert_eq!(bits(&yc), want);
}

#[test]
fn fusion_merges_an_elementwise_chain() {
    assert_eq!(Fuse::NUM_OPS, 1, "{}", Fuse::SUMMARY);
    assert_eq!(FuseOff::NUM_OPS, 3, "{}", FuseOff::SUMMARY);
    assert!(
        Fuse::SUMMARY.contains("fused[relu(add(multiply(#0, 2), #1))]"),
        "{}",
        Fuse::SUMMARY
    );
    assert!(!FuseOff::SUMMARY.contains("fused["), "{}", FuseOff::SUMMARY);
    for name in ["multiply", "add", "relu"] {
        assert!(
            FuseOff::GRAPH_TEXT.contains(&format!("= {name}(")),
            "{}",
            FuseOff::GRAPH_TEXT
        );
    }
    let x =
        Array2::from_shape_vec((3, 4), (0..12).map(|v| v as f32 * 0.3 - 1.7).collect()).unwrap();
    let b = arr1(&[0.1f32, -0.2, 0.3, -0.4]);
    let m = Fuse::new().unwrap();
    let n = FuseOff::new().unwrap();
    let y1 = m
        .evaluate(
            &m.randomize_params(0),
            FuseInputs {
                x: x.view(),
                b: b.view(),
            },
        )
        .unwrap()
        .y;
    let y2 = n
        .evaluate(
            &n.randomize_params(0),
            FuseOffInputs {
                x: x.view(),
                b: b.view(),
            },
        )
        .unwrap()
        .y;
    assert_eq!(bits(&y1), bits(&y2));
    let mut want = vec![];
    for i in 0..3 {
        for j in 0..4 {
            want.push((x[[i, j]] * 2.0 + b[j]).max(0.0).to_bits());
        }
    }
    assert_eq!(bits(&y1), want);
}

#[test]
fn fusion_folds_transpose_into_matmul() {
    assert_eq!(MatT::NUM_OPS, 1, "{}", MatT::SUMMARY);
    assert_eq!(MatTOff::NUM_OPS, 2, "{}", MatTOff::SUMMARY);
    assert!(MatT::SUMMARY.contains("matmul(b^T)"), "{}", MatT::SUMMARY);
    assert!(
        MatTOff::SUMMARY.contains("transpose"),
        "{}",
        MatTOff::SUMMARY
    );
    let x = Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 2.0]).unwrap();
    let w = Array2::from_shape_vec((4, 3), (0..12).map(|v| v as f32 * 0.25).collect()).unwrap();
    let a = MatT::new().unwrap();
    let b = MatTOff::new().unwrap();
    let y1 = a
        .evaluate(
            &a.randomize_params(0),
            MatTInputs {
                x: x.view(),
                w: w.view(),
            },
        )
        .unwrap()
        .y;
    let y2 = b
        .evaluate(
            &b.randomize_params(0),
            MatTOffInputs {
                x: x.view(),
                w: w.view(),
            },
        )
        .unwrap()
        .y;
    assert_eq!(y1.shape(), &[2, 4]);
    for i in 0..2 {
        for j in 0..4 {
            let want: f64 = (0..3).map(|k| x[[i, k]] as f64 * w[[j, k]] as f64).sum();
            assert!((y1[[i, j]] as f64 - want).abs() < 1e-5);
            assert!((y2[[i, j]] as f64 - want).abs() < 1e-5);
        }
    }
}

#[test]
fn constant_folding_evaluates_constant_subgraphs() {
    // off: exp(1.0), multiply, multiply(two, 3), subtract, add; on: multiply, add
    assert_eq!(FoldOffNoFuse::NUM_OPS, 5, "{}", FoldOffNoFuse::SUMMARY);
    assert_eq!(FoldOnNoFuse::NUM_OPS, 2, "{}", FoldOnNoFuse::SUMMARY);
    assert!(
        FoldOffNoFuse::GRAPH_TEXT.contains("= exp("),
        "{}",
        FoldOffNoFuse::GRAPH_TEXT
    );
    assert!(
        !FoldOnNoFuse::GRAPH_TEXT.contains("= exp("),
        "{}",
        FoldOnNoFuse::GRAPH_TEXT
    );
    // the folded constant e, rounded to f32, appears in the graph
    let e32 = std::f64::consts::E as f32 as f64;
    assert!(
        FoldOnNoFuse::GRAPH_TEXT.contains(&format!("const {e32}")),
        "{}",
        FoldOnNoFuse::GRAPH_TEXT
    );
    assert!(
        FoldOnNoFuse::GRAPH_TEXT.contains("const 5"),
        "{}",
        FoldOnNoFuse::GRAPH_TEXT
    );
    // with fusion: the folded constant is a literal inside one loop per output
    assert_eq!(Fold::NUM_OPS, 2, "{}", Fold::SUMMARY);
    // exp(1.0), e*x, the scalar chain two*3-1 fused into one loop, x+that
    assert_eq!(FoldOff::NUM_OPS, 4, "{}", FoldOff::SUMMARY);
    let x = xs(7);
    let runs: Vec<(Array1<f32>, Array1<f32>)> = vec![
        {
            let m = Fold::new().unwrap();
            let o = m
                .evaluate(&m.randomize_params(0), FoldInputs { x: x.view() })
                .unwrap();
            (o.y, o.z)
        },
        {
            let m = FoldOff::new().unwrap();
            let o = m
                .evaluate(&m.randomize_params(0), FoldOffInputs { x: x.view() })
                .unwrap();
            (o.y, o.z)
        },
        {
            let m = FoldOnNoFuse::new().unwrap();
            let o = m
                .evaluate(&m.randomize_params(0), FoldOnNoFuseInputs { x: x.view() })
                .unwrap();
            (o.y, o.z)
        },
        {
            let m = FoldOffNoFuse::new().unwrap();
            let o = m
                .evaluate(&m.randomize_params(0), FoldOffNoFuseInputs { x: x.view() })
                .unwrap();
            (o.y, o.z)
        },
    ];
    for (k, (y, z)) in runs.iter().enumerate() {
        for i in 0..x.len() {
            let want = std::f64::consts::E * x[i] as f64;
            assert!(
                ((y[i] as f64) - want).abs() <= 1e-6 * want.abs().max(1.0),
                "run {k} y[{i}]"
            );
            // 2*3-1 = 5 exactly, in any order
            assert_eq!(z[i].to_bits(), (x[i] + 5.0).to_bits(), "run {k} z[{i}]");
        }
    }
}

#[test]
fn all_passes_together_match_no_passes() {
    let (on, off) = (Net::NUM_OPS, NetRaw::NUM_OPS);
    assert!(on < off, "{}\n{}", Net::SUMMARY, NetRaw::SUMMARY);
    assert!(!Net::GRAPH_TEXT.contains("tanh"), "{}", Net::GRAPH_TEXT);
    assert!(
        NetRaw::GRAPH_TEXT.contains("tanh"),
        "{}",
        NetRaw::GRAPH_TEXT
    );
    assert_eq!(count(NetRaw::GRAPH_TEXT, "= sigmoid("), 2);
    let a = Net::new().unwrap();
    let b = NetRaw::new().unwrap();
    let pa = a.randomize_params(5);
    let pb = b.randomize_params(5);
    assert_eq!(pa.fc.weight, pb.fc.weight, "same params for the same seed");
    let x =
        Array2::from_shape_vec((3, 4), (0..12).map(|v| (v as f32 - 6.0) * 0.2).collect()).unwrap();
    let y1 = a.evaluate(&pa, NetInputs { x: x.view() }).unwrap().y;
    let y2 = b.evaluate(&pb, NetRawInputs { x: x.view() }).unwrap().y;
    assert_eq!(y1.shape(), &[3, 3]);
    for (g, w) in y1.iter().zip(&y2) {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} vs {w}");
    }
    // and against a plain reference
    for i in 0..3 {
        for j in 0..3 {
            let mut s = pa.fc.bias[j] as f64;
            for k in 0..4 {
                s += x[[i, k]] as f64 * pa.fc.weight[[j, k]] as f64;
            }
            let h = s.max(0.0);
            let sg = 1.0 / (1.0 + (-h).exp());
            let want = 2.0 * sg * 0.5f64.exp();
            assert!((y1[[i, j]] as f64 - want).abs() < 1e-5);
        }
    }
}

mithril! {
    // ---- folding integer constants must wrap exactly like the run-time arithmetic
    model FoldInt {
        input i: i32[N];
        const big: i32 = 2147483647;
        const small: i32 = -2147483648;
        output wrapped = i + (big + 1);
        output negated = i + -small;
        output product = i * (big * 2);
        output widened = i + (big + 1) / 2;
    }
    compile FoldIntOff = FoldInt { optimizations: { constant_folding: false } };
}

#[test]
fn folded_integer_constants_wrap_like_run_time_code() {
    const { assert!(FoldInt::NUM_OPS < FoldIntOff::NUM_OPS) };
    let i = arr1(&[0i32, 1, -1]);
    let a = FoldInt::new().unwrap();
    let b = FoldIntOff::new().unwrap();
    let oa = a
        .evaluate(&a.randomize_params(0), FoldIntInputs { i: i.view() })
        .unwrap();
    let ob = b
        .evaluate(&b.randomize_params(0), FoldIntOffInputs { i: i.view() })
        .unwrap();
    // i32 arithmetic wraps: MAX + 1 == MIN, -MIN == MIN, MAX * 2 == -2
    let want: Vec<i32> = i.iter().map(|v| v.wrapping_add(i32::MIN)).collect();
    assert_eq!(ob.wrapped.to_vec(), want, "run time");
    assert_eq!(oa.wrapped.to_vec(), want, "folded");
    assert_eq!(ob.negated.to_vec(), want, "run time");
    assert_eq!(oa.negated.to_vec(), want, "folded");
    let want: Vec<i32> = i.iter().map(|v| v.wrapping_mul(-2)).collect();
    assert_eq!(ob.product.to_vec(), want, "run time");
    assert_eq!(oa.product.to_vec(), want, "folded");
    // int / int is a float: (MIN) / 2 as f32, plus i
    let want: Vec<f32> = i
        .iter()
        .map(|&v| v as f32 + (i32::MIN as f32) / 2.0)
        .collect();
    assert_eq!(ob.widened.to_vec(), want, "run time");
    assert_eq!(oa.widened.to_vec(), want, "folded");
}

mithril! {
    // ---- fusion limits: more tensors than one loop reads, shared intermediates, broadcasting
    model Wide {
        input a: f32[B, N];
        input b: f32[B, N];
        input c: f32[N];
        input d: f32[B, 1];
        input e: f32[];
        input f: f32[B, N];
        input g: f32[B, N];
        let shared = exp(a * 0.5);
        output y = ((a + b) * c - d) / (e + 2.0) + f * g + shared;
        output z = relu(shared - 1.0) * sigmoid(g);
        output w = (((((a + b) + c) + d) + e) + f) + g;
    }
    compile WideOff = Wide { optimizations: { operator_fusion: false } };
}

#[test]
fn fusion_respects_its_limits_and_sharing() {
    let on = Wide::NUM_OPS;
    let off = WideOff::NUM_OPS;
    assert!(on < off, "{}\n{}", Wide::SUMMARY, WideOff::SUMMARY);
    // the shared exp stays its own loop (two users)
    assert!(
        Wide::SUMMARY.contains("fused[exp(multiply(#0, 0.5))]"),
        "{}",
        Wide::SUMMARY
    );
    let (bb, n) = (3, 4);
    let mk = |r: usize, c: usize, s: f32| {
        Array2::from_shape_fn((r, c), |(i, j)| ((i * c + j) as f32 * 0.37 + s).sin())
    };
    let a = mk(bb, n, 0.1);
    let b = mk(bb, n, 0.2);
    let c = Array1::from_shape_fn(n, |j| 0.5 + j as f32 * 0.1);
    let d = mk(bb, 1, 0.4);
    let e = mithril::ndarray::arr0(1.5f32);
    let f = mk(bb, n, 0.6);
    let g = mk(bb, n, 0.7);
    let m1 = Wide::new().unwrap();
    let m2 = WideOff::new().unwrap();
    let o1 = m1
        .evaluate(
            &m1.randomize_params(0),
            WideInputs {
                a: a.view(),
                b: b.view(),
                c: c.view(),
                d: d.view(),
                e: e.view(),
                f: f.view(),
                g: g.view(),
            },
        )
        .unwrap();
    let o2 = m2
        .evaluate(
            &m2.randomize_params(0),
            WideOffInputs {
                a: a.view(),
                b: b.view(),
                c: c.view(),
                d: d.view(),
                e: e.view(),
                f: f.view(),
                g: g.view(),
            },
        )
        .unwrap();
    // the same f32 operations in the same order: bitwise equal
    assert_eq!(bits(&o1.y), bits(&o2.y));
    assert_eq!(bits(&o1.z), bits(&o2.z));
    assert_eq!(bits(&o1.w), bits(&o2.w));
    for i in 0..bb {
        for j in 0..n {
            // f32 `exp` compiles to the vectorizable `vmath::exp` (within 1.5 ulp of libm's)
            let sh = mithril::rt::vmath::exp(a[[i, j]] * 0.5);
            let y = ((a[[i, j]] + b[[i, j]]) * c[j] - d[[i, 0]]) / (1.5 + 2.0)
                + f[[i, j]] * g[[i, j]]
                + sh;
            assert_eq!(o1.y[[i, j]].to_bits(), y.to_bits(), "y[{i},{j}]");
            let w = a[[i, j]] + b[[i, j]] + c[j] + d[[i, 0]] + 1.5 + f[[i, j]] + g[[i, j]];
            assert_eq!(o1.w[[i, j]].to_bits(), w.to_bits(), "w[{i},{j}]");
            let sg = 1.0 / (1.0 + (-(g[[i, j]] as f64)).exp());
            let z = ((sh as f64) - 1.0).max(0.0) * sg;
            assert!((o1.z[[i, j]] as f64 - z).abs() < 1e-6, "z[{i},{j}]");
        }
    }
}
