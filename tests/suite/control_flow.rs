//! Run-time control flow: `if` on a tensor condition (an input, or a value the model computes).
//! Forward values against hand-written references for every branch outcome, gradients against
//! f64 central differences (`common::fd`, step 1e-6, bound 1e-6) for each outcome, nested and
//! submodel `if`s, the workspace across alternating branches, introspection.
#![allow(clippy::needless_range_loop)]

use crate::common::fd::{dot, gradcheck, pat, set, wave};
use mithril::prelude::*;
use ndarray::{Array1, Array2, Ix2, arr0};

mithril! {
    // `h` rebound in both branches; `k` rebound in the then branch only (the else branch keeps
    // the value from before the `if`); `v` used only inside the then branch; `x` read inside
    // both (a value from outside each branch)
    pub model Branchy {
        input x: f64[B, 3];
        input flag: bool[];
        param w: f64[3, 3];
        param v: f64[3];
        param u: f64[3];
        let h = tanh(matmul(x, w));
        let k = h * u;
        if flag {
            let h = h * h + x * v;
            let k = exp(k);
        } else {
            let h = sin(h) - x;
        }
        output y = h + k;
        output s = sum(h * k);
    }

    // the condition computed by the model (data-dependent)
    pub model Auto {
        input x: f64[B, 3];
        param w: f64[3, 3];
        param b: f64[3];
        let h = matmul(x, w);
        if sum(h) > 0.0 {
            let h = relu(h + b) * 2.0;
        } else {
            let h = h - b;
        }
        output y = h;
    }

    // nested: the inner `if` runs only inside the outer then branch
    pub model Nested {
        input x: f64[B, 2];
        input a: bool[];
        input c: bool[];
        param p: f64[2];
        param q: f64[2];
        let h = x * p;
        if a {
            let h = h + 1.0;
            if c {
                let h = h * q;
            } else {
                let h = h - q;
            }
            let h = h * 3.0;
        }
        output y = h;
    }

    model Gated {
        input x: [B, D];
        input on: bool[];
        param g: [D] = ones;
        if on {
            let x = x * g;
        }
        output y = x;
    }

    // an `if` inside a submodel, its condition passed in
    pub model Outer {
        input x: f64[B, 4];
        input on: bool[];
        output y = Gated()(x, on);
    }

    pub model Baked {
        input x: f32[B, 2];
        input flag: bool[];
        if flag {
            let x = x * 2.0;
        } else {
            let x = x * 3.0;
        }
        output y = x;
    }

    pub compile BakedTrue = Baked { constants: { flag: true } };

    pub model Stat {
        input x: f32[2, 2];
        input flag: bool[];
        if flag {
            let x = x + 1.0;
        }
        output y = x;
    }

    pub compile StatStatic = Stat { static_shapes: true };
}

fn branchy_ref(x: &Array2<f64>, f: bool, p: &BranchyParams) -> (Array2<f64>, f64) {
    let h = x.dot(&p.w).mapv(f64::tanh);
    let k = &h * &p.u;
    let (h, k) = if f {
        (&h * &h + x * &p.v, k.mapv(f64::exp))
    } else {
        (h.mapv(f64::sin) - x, k)
    };
    let s = (&h * &k).sum();
    (&h + &k, s)
}

fn branchy_params() -> BranchyParams {
    let m = Branchy::new().unwrap();
    let mut p = m.randomize_params(3);
    set(&mut p, "w", |i| wave(i, 0.3));
    set(&mut p, "v", |i| wave(i, 1.1));
    set(&mut p, "u", |i| wave(i, 2.2));
    p
}

#[test]
fn runtime_if_runs_the_taken_branch() {
    let m = Branchy::new().unwrap();
    let p = branchy_params();
    let x = pat(Ix2(2, 3), 0.7);
    // alternate: each branch first at a planned shape, then again (the workspace plans the
    // other branch's slots when it first runs)
    for f in [true, false, false, true, true, false] {
        let fl = arr0(f);
        let o = m
            .evaluate(
                &p,
                BranchyInputs {
                    x: x.view(),
                    flag: fl.view(),
                },
            )
            .unwrap();
        let (y, s) = branchy_ref(&x, f, &p);
        for (a, b) in o.y.iter().zip(y.iter()) {
            assert!((a - b).abs() < 1e-12, "flag {f}: {a} vs {b}");
        }
        assert!((o.s.into_scalar() - s).abs() < 1e-12);
    }
    assert!(m.memory_report().is_some());
}

#[test]
fn runtime_if_gradients_follow_the_branch_that_ran() {
    let m = Branchy::new().unwrap();
    let p = branchy_params();
    let x = pat(Ix2(2, 3), 0.7);
    let (sy, ss) = (pat(Ix2(2, 3), 1.9), 0.8);
    for f in [true, false] {
        let fl = arr0(f);
        let inputs = || BranchyInputs {
            x: x.view(),
            flag: fl.view(),
        };
        let loss = |p: &BranchyParams| {
            let o = m.evaluate(p, inputs()).unwrap();
            dot(&o.y, &sy) + ss * o.s.into_scalar()
        };
        let (_, g) = m
            .evaluate_gradients(
                &p,
                inputs(),
                BranchyOutputs {
                    y: sy.clone(),
                    s: arr0(ss),
                },
            )
            .unwrap();
        assert_eq!(gradcheck(&format!("branchy {f}"), &p, &g, loss), 15);
        // `v` is read only by the then branch: no gradient when the else branch ran
        if !f {
            assert!(g.v.iter().all(|&d| d == 0.0), "{:?}", g.v);
        } else {
            assert!(g.v.iter().any(|&d| d != 0.0));
        }
    }
}

#[test]
fn data_dependent_condition() {
    let m = Auto::new().unwrap();
    let mut p = m.randomize_params(1);
    set(&mut p, "w", |i| wave(i, 0.5));
    set(&mut p, "b", |i| 0.1 + 0.05 * i as f64);
    let seed = pat(Ix2(2, 3), 0.2);
    let mut seen = [false; 2];
    for salt in [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] {
        let x = pat(Ix2(2, 3), salt);
        let h = x.dot(&p.w);
        let taken = h.sum() > 0.0;
        seen[taken as usize] = true;
        let want = if taken {
            (&h + &p.b).mapv(|v| v.max(0.0) * 2.0)
        } else {
            &h - &p.b
        };
        let o = m.evaluate(&p, AutoInputs { x: x.view() }).unwrap();
        for (a, b) in o.y.iter().zip(want.iter()) {
            assert!((a - b).abs() < 1e-12);
        }
        // away from the relu kink for the finite differences
        if taken && (&h + &p.b).iter().any(|v| v.abs() < 1e-3) {
            continue;
        }
        let loss = |p: &AutoParams| {
            let o = m.evaluate(p, AutoInputs { x: x.view() }).unwrap();
            dot(&o.y, &seed)
        };
        let (_, g) = m
            .evaluate_gradients(
                &p,
                AutoInputs { x: x.view() },
                AutoOutputs { y: seed.clone() },
            )
            .unwrap();
        assert_eq!(gradcheck("auto", &p, &g, loss), 12);
    }
    assert_eq!(seen, [true, true], "both outcomes exercised");
}

#[test]
fn nested_runtime_ifs() {
    let m = Nested::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "p", |i| 0.5 + i as f64);
    set(&mut p, "q", |i| -0.25 + 0.75 * i as f64);
    let x = pat(Ix2(3, 2), 0.4);
    let seed = pat(Ix2(3, 2), 1.3);
    for (a, c) in [(true, true), (true, false), (false, true), (false, false)] {
        let (av, cv) = (arr0(a), arr0(c));
        let inputs = || NestedInputs {
            x: x.view(),
            a: av.view(),
            c: cv.view(),
        };
        let o = m.evaluate(&p, inputs()).unwrap();
        let h = &x * &p.p;
        let want = if a {
            let h = h + 1.0;
            let h = if c { h * &p.q } else { h - &p.q };
            h * 3.0
        } else {
            h
        };
        assert_eq!(o.y, want, "a {a} c {c}");
        let loss = |p: &NestedParams| dot(&m.evaluate(p, inputs()).unwrap().y, &seed);
        let (_, g) = m
            .evaluate_gradients(&p, inputs(), NestedOutputs { y: seed.clone() })
            .unwrap();
        assert_eq!(gradcheck("nested", &p, &g, loss), 4);
        if !a {
            assert_eq!(g.q, Array1::<f64>::zeros(2));
        }
    }
}

#[test]
fn runtime_if_inside_a_submodel() {
    let m = Outer::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "gated_0.g", |i| 1.5 - 0.5 * i as f64);
    let x = pat(Ix2(2, 4), 0.9);
    for on in [false, true] {
        let onv = arr0(on);
        let o = m
            .evaluate(
                &p,
                OuterInputs {
                    x: x.view(),
                    on: onv.view(),
                },
            )
            .unwrap();
        let want = if on { &x * &p.gated_0.g } else { x.clone() };
        assert_eq!(o.y, want);
    }
    assert_eq!(p.gated_0.g.len(), 4);
}

#[test]
fn a_baked_condition_removes_the_dead_branch() {
    // `constants:` makes the condition compile-time: no run-time `if` is left
    assert!(!BakedTrue::SUMMARY.contains("phi"));
    assert!(Baked::SUMMARY.contains("phi"));
    let m = BakedTrue::new().unwrap();
    let x = ndarray::array![[1.0f32, 2.0]];
    let o = m
        .evaluate(&m.randomize_params(0), BakedTrueInputs { x: x.view() })
        .unwrap();
    assert_eq!(o.y, ndarray::array![[2.0f32, 4.0]]);
}

#[test]
fn introspection_shows_the_branches() {
    assert!(Branchy::SUMMARY.contains("| runs if"));
    assert!(Branchy::GRAPH_TEXT.contains(" = phi("));
    assert!(Branchy::GRAPH_TEXT.contains("] if %"));
    assert!(Branchy::GRAPH_DOT.contains("subgraph cluster_if"));
    assert!(Branchy::GRAPH_JSON.contains("\"guard\": "));
    // nested clusters for nested `if`s
    let dot = Nested::GRAPH_DOT;
    let first = dot.find("subgraph cluster_if").unwrap();
    assert!(dot[first + 1..].contains("    subgraph cluster_if"));
    // `static_shapes` specializes it: the branch is a Rust `if`
    assert!(
        StatStatic::SUMMARY.contains("static_shapes: evaluate specialized")
            && StatStatic::SUMMARY.contains("run-time control flow as Rust `if` / `loop`"),
        "{}",
        StatStatic::SUMMARY
    );
    let m = StatStatic::new().unwrap();
    let x = ndarray::array![[1.0f32, 2.0], [3.0, 4.0]];
    for f in [true, false] {
        let fl = arr0(f);
        let o = m
            .evaluate(
                &m.randomize_params(0),
                StatStaticInputs {
                    x: x.view(),
                    flag: fl.view(),
                },
            )
            .unwrap();
        assert_eq!(o.y, if f { &x + 1.0 } else { x.clone() });
    }
}
