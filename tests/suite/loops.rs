//! Run-time loops: `while` with loop variables and `max_steps`, `for t in 0..T` over a symbolic
//! dim with stacked outputs. Forward values against hand-written recurrences; gradients (reverse
//! mode through the loop) against f64 central differences (`common::fd`) for 0, 1 and many
//! iterations and a data-dependent trip count; the trip-count bound; introspection.
#![allow(clippy::needless_range_loop)]

use crate::common::fd::{dot, gradcheck, pat, set};
use mithril::prelude::*;
use ndarray::{Array2, Array3, Axis, Ix2, Ix3, arr0};

mithril! {
    // the seed's recurrent `While`: a block applied while `step < n`
    pub model Recur {
        input x: f64[B, 3];
        input n: i64[];
        let h = x;
        let step = 0;
        while step < n, max_steps = 50 {
            let h = tanh(Linear(3)(h)) + x;
            let step = step + 1;
        }
        output y = h;
        output steps = step;
    }

    // a data-dependent trip count: grow `h` until its energy passes 4
    pub model Grow {
        input x: f64[B, 2];
        param w: f64[2, 2];
        param s: f64[2];
        let h = x;
        while sum(h * h) < 4.0, max_steps = 100 {
            let h = h * s + tanh(matmul(h, w));
        }
        output y = h;
    }

    // a scan over the sequence axis: reads `u[(.., t)]` (made from a param, so its gradient is
    // summed slice by slice), carries `h`, stacks the per-step outputs
    pub model Rnn {
        input xs: f64[B, T, 3];
        param w: f64[3, 3];
        param u: f64[3, 3];
        param v: f64[3];
        let xu = matmul(xs, u);
        let h = xs[(.., 0)] * 0.0;
        for t in 0..T {
            let h = tanh(matmul(h, w) + xu[(.., t)]);
            stack hs[(.., t)] = h * v;
        }
        output hs = hs;
        output last = h;
    }

    pub compile RnnCkpt = Rnn { gradient_checkpointing: { segments: 2 } };
    // `dynamic_control_flow: false` with `T` fixed: the scan unrolled, `hs` a `stack`
    pub compile RnnUnrolled = Rnn { dynamic_control_flow: false, shapes: { xs: [_, 4, 3] } };

    // loops nest, and a run-time `if` may sit in a loop's body
    pub model Nest {
        input xs: f64[B, T, 2];
        param w: f64[2, 2];
        param v: f64[2];
        let h = xs[(.., 0)] * 0.0;
        for t in 0..T {
            let k = 0;
            let g = xs[(.., t)];
            while k < 2 {
                let g = tanh(matmul(g, w)) + h;
                let k = k + 1;
            }
            if sum(g) > 0.0 {
                let h = h * v + g;
            } else {
                let h = h - g * v;
            }
        }
        output y = h;
    }

    // simultaneous assignment: `b` gets the old `a` (a swap), `c` and `d` share one update
    pub model Swap {
        input x: f64[2];
        input n: i64[];
        param w: f64[2];
        let a = x;
        let b = x * 2.0;
        let c = x + 1.0;
        let d = x;
        let step = 0;
        while step < n {
            let t = a;
            let a = b * w;
            let b = t;
            let c = c * w;
            let d = c;
            let step = step + 1;
        }
        output y = a + 2.0 * b + 3.0 * c + 4.0 * d;
    }

    // a loop inside a submodel
    model Cell {
        input x: f64[B, 2];
        input n: i64[];
        param w: f64[2, 2];
        let step = 0;
        let h = x;
        while step < n {
            let h = sin(matmul(h, w));
            let step = step + 1;
        }
        output y = h;
    }

    pub model Outer {
        input x: f64[B, 2];
        input n: i64[];
        let c = Cell();
        output y = c(x, n) * 2.0;
    }

    // a run-time loop inside a run-time `if` branch, none in the other branch
    pub model BranchLoop {
        input x: f64[B, 2];
        input n: i64[];
        input go: bool[];
        param w: f64[2, 2];
        param v: f64[2];
        let h = x * v;
        if go {
            let step = 0;
            while step < n, max_steps = 20 {
                let h = tanh(matmul(h, w)) + x;
                let step = step + 1;
            }
        } else {
            let h = h * 2.0 - x;
        }
        output y = h * v;
    }

    // a scan with a stacked output in the else branch
    pub model BranchScan {
        input xs: f64[B, T, 2];
        input go: bool[];
        param w: f64[2, 2];
        param u: f64[2, 2];
        param v: f64[2];
        let h = xs[(.., 0)] * 0.0;
        if go {
            let ys = xs * v;
            let h = h + v;
        } else {
            for t in 0..T {
                let h = tanh(matmul(h, w) + matmul(xs[(.., t)], u));
                stack hs[(.., t)] = h * v;
            }
            let ys = hs;
        }
        output ys = ys;
        output last = h;
    }

    // the scan, profiled (an instrumented executor through the reversed loop)
    pub compile RnnProf = Rnn { profile: true };
}

fn linear(x: &Array2<f64>, w: &Array2<f64>, b: &ndarray::Array1<f64>) -> Array2<f64> {
    x.dot(&w.t()) + b
}

fn recur_params(m: &Recur) -> RecurParams {
    let mut p = m.randomize_params(4);
    set(&mut p, "linear_0.weight", |i| {
        ((i as f64) * 0.7).sin() * 0.6
    });
    set(&mut p, "linear_0.bias", |i| 0.1 * i as f64 - 0.1);
    p
}

#[test]
fn while_loop_runs_the_recurrence_as_many_times_as_its_condition_holds() {
    let m = Recur::new().unwrap();
    let p = recur_params(&m);
    let x = pat(Ix2(2, 3), 0.3);
    for k in [0i64, 1, 2, 7] {
        let n = arr0(k);
        let o = m
            .evaluate(
                &p,
                RecurInputs {
                    x: x.view(),
                    n: n.view(),
                },
            )
            .unwrap();
        let mut h = x.clone();
        for _ in 0..k {
            h = linear(&h, &p.linear_0.weight, &p.linear_0.bias).mapv(f64::tanh) + &x;
        }
        assert_eq!(o.steps.into_scalar(), k);
        let err = (&o.y - &h).iter().fold(0f64, |a, b| a.max(b.abs()));
        assert!(err < 1e-12, "{k} steps: {err}");
    }
}

#[test]
fn while_beyond_max_steps_is_an_err_not_a_hang() {
    let m = Recur::new().unwrap();
    let p = recur_params(&m);
    let x = pat(Ix2(1, 3), 0.3);
    let n = arr0(1_000_000_i64);
    let e = m
        .evaluate(
            &p,
            RecurInputs {
                x: x.view(),
                n: n.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_steps = 50"), "{e}");
    assert!(e.contains("Recur"), "{e}");
    // the model still works afterwards, at 50 exactly
    let n = arr0(50_i64);
    let o = m
        .evaluate(
            &p,
            RecurInputs {
                x: x.view(),
                n: n.view(),
            },
        )
        .unwrap();
    assert_eq!(o.steps.into_scalar(), 50);
}

#[test]
fn while_gradients_for_zero_one_and_many_iterations() {
    let m = Recur::new().unwrap();
    let p = recur_params(&m);
    let x = pat(Ix2(2, 3), 0.3);
    let sy = pat(Ix2(2, 3), 1.7);
    // the trip count changes between calls of the same model (the tapes are reused)
    for k in [3i64, 0, 1, 6, 3] {
        let n = arr0(k);
        let inputs = || RecurInputs {
            x: x.view(),
            n: n.view(),
        };
        let loss = |p: &RecurParams| dot(&m.evaluate(p, inputs()).unwrap().y, &sy);
        let (o, g) = m
            .evaluate_gradients(
                &p,
                inputs(),
                RecurOutputs {
                    y: sy.clone(),
                    steps: arr0(0),
                },
            )
            .unwrap();
        assert_eq!(o.steps.into_scalar(), k);
        if k == 0 {
            // no iteration: the params are not used
            assert!(g.linear_0.weight.iter().all(|&v| v == 0.0));
        } else {
            assert!(g.linear_0.weight.iter().any(|&v| v != 0.0));
        }
        assert_eq!(gradcheck(&format!("while {k}"), &p, &g, loss), 12);
    }
}

#[test]
fn data_dependent_trip_count_and_its_gradients() {
    let m = Grow::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "w", |i| [0.4, -0.3, 0.2, 0.5][i]);
    set(&mut p, "s", |i| [1.3, 1.1][i]);
    let sy = pat(Ix2(2, 2), 0.9);
    for scale in [0.05, 0.4, 3.0] {
        let x = pat(Ix2(2, 2), 0.2) * scale;
        let loss = |p: &GrowParams| dot(&m.evaluate(p, GrowInputs { x: x.view() }).unwrap().y, &sy);
        // the reference, and its trip count
        let (mut h, mut trips) = (x.clone(), 0);
        while h.iter().map(|v| v * v).sum::<f64>() < 4.0 {
            h = &h * &p.s + h.dot(&p.w).mapv(f64::tanh);
            trips += 1;
        }
        let o = m.evaluate(&p, GrowInputs { x: x.view() }).unwrap();
        let err = (&o.y - &h).iter().fold(0f64, |a, b| a.max(b.abs()));
        assert!(err < 1e-12, "scale {scale}: {err}");
        let (_, g) = m
            .evaluate_gradients(
                &p,
                GrowInputs { x: x.view() },
                GrowOutputs { y: sy.clone() },
            )
            .unwrap();
        assert_eq!(
            gradcheck(&format!("grow x{scale} ({trips} trips)"), &p, &g, loss),
            6
        );
        if scale == 3.0 {
            assert_eq!(trips, 0);
        } else {
            assert!(trips >= 2, "{trips}");
        }
    }
}

fn rnn_params(m: &Rnn) -> RnnParams {
    let mut p = m.randomize_params(0);
    set(&mut p, "w", |i| ((i as f64) * 1.3).cos() * 0.5);
    set(&mut p, "u", |i| ((i as f64) * 0.9).sin() * 0.7);
    set(&mut p, "v", |i| 1.0 + 0.5 * i as f64);
    p
}

#[test]
fn scan_stacks_each_step_and_differentiates_through_the_sequence() {
    let m = Rnn::new().unwrap();
    let p = rnn_params(&m);
    for t_len in [1usize, 5] {
        let xs = pat(Ix3(2, t_len, 3), 0.4);
        let o = m.evaluate(&p, RnnInputs { xs: xs.view() }).unwrap();
        assert_eq!(o.hs.shape(), &[2, t_len, 3]);
        let mut h = Array2::<f64>::zeros((2, 3));
        for t in 0..t_len {
            let xt = xs.index_axis(Axis(1), t).dot(&p.u);
            h = (h.dot(&p.w) + xt).mapv(f64::tanh);
            let want = &h * &p.v;
            let err = (&o.hs.index_axis(Axis(1), t) - &want)
                .iter()
                .fold(0f64, |a, b| a.max(b.abs()));
            assert!(err < 1e-12, "T={t_len} t={t}: {err}");
        }
        assert!((&o.last - &h).iter().all(|d| d.abs() < 1e-12));
        let (shs, sl) = (pat(Ix3(2, t_len, 3), 1.1), pat(Ix2(2, 3), 2.3));
        let loss = |p: &RnnParams| {
            let o = m.evaluate(p, RnnInputs { xs: xs.view() }).unwrap();
            dot(&o.hs, &shs) + dot(&o.last, &sl)
        };
        let (_, g) = m
            .evaluate_gradients(
                &p,
                RnnInputs { xs: xs.view() },
                RnnOutputs {
                    hs: shs.clone(),
                    last: sl.clone(),
                },
            )
            .unwrap();
        assert_eq!(gradcheck(&format!("rnn T={t_len}"), &p, &g, loss), 21);
    }
}

#[test]
fn an_empty_sequence_runs_no_step() {
    let m = Rnn::new().unwrap();
    let p = rnn_params(&m);
    let xs = Array3::<f64>::zeros((2, 0, 3));
    // `xs[(.., 0)]` before the loop reads step 0 of an empty sequence: an Err, not a panic
    assert!(m.evaluate(&p, RnnInputs { xs: xs.view() }).is_err());
}

#[test]
fn loops_show_in_the_summary_and_dumps() {
    assert!(Rnn::SUMMARY.contains("loop_head"), "{}", Rnn::SUMMARY);
    assert!(Rnn::SUMMARY.contains("set_at"), "{}", Rnn::SUMMARY);
    assert!(
        Rnn::GRAPH_TEXT.contains(" in loop %"),
        "{}",
        Rnn::GRAPH_TEXT
    );
    assert!(
        Rnn::GRAPH_DOT.contains("subgraph cluster_loop_"),
        "{}",
        Rnn::GRAPH_DOT
    );
    assert!(Rnn::GRAPH_JSON.contains("\"loop\":"), "{}", Rnn::GRAPH_JSON);
    assert!(Recur::SUMMARY.contains("loop_test"), "{}", Recur::SUMMARY);
}

#[test]
fn checkpointing_a_loop_is_skipped_and_said() {
    assert!(
        RnnCkpt::SUMMARY.contains(
            "gradient checkpointing (2 segments): not applied, the model has a run-time loop"
        ),
        "{}",
        RnnCkpt::SUMMARY
    );
    assert!(!Rnn::SUMMARY.contains("gradient checkpointing"));
    let (m, c) = (Rnn::new().unwrap(), RnnCkpt::new().unwrap());
    let p = rnn_params(&m);
    let mut q = c.randomize_params(0);
    q.w = p.w.clone();
    q.u = p.u.clone();
    q.v = p.v.clone();
    let xs = pat(Ix3(2, 3, 3), 0.4);
    let seeds = || (pat(Ix3(2, 3, 3), 1.1), pat(Ix2(2, 3), 2.3));
    let (a, b) = seeds();
    let (_, g) = m
        .evaluate_gradients(
            &p,
            RnnInputs { xs: xs.view() },
            RnnOutputs { hs: a, last: b },
        )
        .unwrap();
    let (a, b) = seeds();
    let (_, h) = c
        .evaluate_gradients(
            &q,
            RnnCkptInputs { xs: xs.view() },
            RnnCkptOutputs { hs: a, last: b },
        )
        .unwrap();
    assert_eq!(g.w, h.w);
    assert_eq!(g.u, h.u);
}

#[test]
fn nested_loops_an_if_in_a_body_and_a_loop_in_a_submodel() {
    let m = Nest::new().unwrap();
    let mut p = m.randomize_params(2);
    set(&mut p, "w", |i| [0.6, -0.4, 0.3, 0.8][i]);
    set(&mut p, "v", |i| [0.7, -1.2][i]);
    let xs = pat(Ix3(2, 4, 2), 0.61);
    let o = m.evaluate(&p, NestInputs { xs: xs.view() }).unwrap();
    // the reference, as written (the condition sums over the whole batch)
    let mut h = Array2::<f64>::zeros((2, 2));
    for t in 0..4 {
        let mut g = xs.index_axis(Axis(1), t).to_owned();
        for _ in 0..2 {
            g = g.dot(&p.w).mapv(f64::tanh) + &h;
        }
        h = if g.sum() > 0.0 {
            &h * &p.v + &g
        } else {
            &h - &(&g * &p.v)
        };
    }
    assert!(
        (&o.y - &h).iter().all(|d| d.abs() < 1e-12),
        "{} vs {h}",
        o.y
    );
    let sy = pat(Ix2(2, 2), 1.3);
    let loss = |p: &NestParams| dot(&m.evaluate(p, NestInputs { xs: xs.view() }).unwrap().y, &sy);
    let (g_out, g) = m
        .evaluate_gradients(
            &p,
            NestInputs { xs: xs.view() },
            NestOutputs { y: sy.clone() },
        )
        .unwrap();
    assert_eq!(g_out.y, o.y);
    assert_eq!(gradcheck("nested loops", &p, &g, loss), 6);

    let m = Outer::new().unwrap();
    let mut p = m.randomize_params(1);
    set(&mut p, "c.w", |i| [0.3, 0.8, -0.5, 0.2][i]);
    let x = pat(Ix2(1, 2), 0.4);
    let sy = pat(Ix2(1, 2), 2.0);
    for k in [0i64, 3] {
        let n = arr0(k);
        let inputs = || OuterInputs {
            x: x.view(),
            n: n.view(),
        };
        let loss = |p: &OuterParams| dot(&m.evaluate(p, inputs()).unwrap().y, &sy);
        let (o, g) = m
            .evaluate_gradients(&p, inputs(), OuterOutputs { y: sy.clone() })
            .unwrap();
        let mut h = x.clone();
        for _ in 0..k {
            h = h.dot(&p.c.w).mapv(f64::sin);
        }
        assert!((&o.y - &(h * 2.0)).iter().all(|d| d.abs() < 1e-12));
        assert_eq!(gradcheck(&format!("submodel loop {k}"), &p, &g, loss), 4);
    }
}

#[test]
fn loop_variables_are_assigned_simultaneously() {
    let m = Swap::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "w", |i| [0.9, -1.1][i]);
    let x = ndarray::array![0.3, -0.7];
    let sy = ndarray::array![1.0, 0.5];
    for k in [0i64, 1, 2, 5] {
        let n = arr0(k);
        let inputs = || SwapInputs {
            x: x.view(),
            n: n.view(),
        };
        let (mut a, mut b, mut c, mut d) = (x.clone(), &x * 2.0, &x + 1.0, x.clone());
        for _ in 0..k {
            let t = a.clone();
            a = &b * &p.w;
            b = t;
            c = &c * &p.w;
            d = c.clone();
        }
        let want = &a + &(&b * 2.0) + &(&c * 3.0) + &(&d * 4.0);
        let o = m.evaluate(&p, inputs()).unwrap();
        assert!(
            (&o.y - &want).iter().all(|e| e.abs() < 1e-12),
            "{k}: {} vs {want}",
            o.y
        );
        let loss = |p: &SwapParams| dot(&m.evaluate(p, inputs()).unwrap().y, &sy);
        let (_, g) = m
            .evaluate_gradients(&p, inputs(), SwapOutputs { y: sy.clone() })
            .unwrap();
        assert_eq!(gradcheck(&format!("swap {k}"), &p, &g, loss), 2);
    }
}

#[test]
fn a_loop_inside_a_run_time_if_branch() {
    let m = BranchLoop::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "w", |i| [0.7, -0.5, 0.4, 0.9][i]);
    set(&mut p, "v", |i| [1.3, -0.6][i]);
    let x = pat(Ix2(2, 2), 0.3);
    let sy = pat(Ix2(2, 2), 1.7);
    for go in [true, false] {
        for k in [0i64, 1, 3] {
            let (n, c) = (arr0(k), arr0(go));
            let inputs = || BranchLoopInputs {
                x: x.view(),
                n: n.view(),
                go: c.view(),
            };
            let mut h = &x * &p.v;
            if go {
                for _ in 0..k {
                    h = h.dot(&p.w).mapv(f64::tanh) + &x;
                }
            } else {
                h = &h * 2.0 - &x;
            }
            let want = &h * &p.v;
            let o = m.evaluate(&p, inputs()).unwrap();
            assert!(
                (&o.y - &want).iter().all(|e| e.abs() < 1e-12),
                "go {go}, {k} steps: {} vs {want}",
                o.y
            );
            let loss = |p: &BranchLoopParams| dot(&m.evaluate(p, inputs()).unwrap().y, &sy);
            let (go_out, g) = m
                .evaluate_gradients(&p, inputs(), BranchLoopOutputs { y: sy.clone() })
                .unwrap();
            assert_eq!(go_out.y, o.y);
            assert_eq!(gradcheck(&format!("branch loop {go} {k}"), &p, &g, loss), 6);
        }
    }
}

#[test]
fn a_scan_inside_a_run_time_if_branch() {
    let m = BranchScan::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "w", |i| [0.6, -0.8, 0.5, 0.3][i]);
    set(&mut p, "u", |i| [-0.4, 0.9, 0.7, 0.2][i]);
    set(&mut p, "v", |i| [1.1, -0.7][i]);
    // both branches, and the scan branch twice (its tapes reused)
    for (go, t_len) in [(false, 4), (true, 3), (false, 2)] {
        let xs = pat(Ix3(2, t_len, 2), 0.45);
        let c = arr0(go);
        let inputs = || BranchScanInputs {
            xs: xs.view(),
            go: c.view(),
        };
        let mut h = Array2::<f64>::zeros((2, 2));
        let mut ys = Array3::<f64>::zeros((2, t_len, 2));
        if go {
            ys = &xs * &p.v;
            h += &p.v;
        } else {
            for t in 0..t_len {
                h = (h.dot(&p.w) + xs.index_axis(Axis(1), t).dot(&p.u)).mapv(f64::tanh);
                ys.index_axis_mut(Axis(1), t).assign(&(&h * &p.v));
            }
        }
        let o = m.evaluate(&p, inputs()).unwrap();
        assert!(
            (&o.ys - &ys).iter().all(|e| e.abs() < 1e-12),
            "go {go}: {} vs {ys}",
            o.ys
        );
        assert!((&o.last - &h).iter().all(|e| e.abs() < 1e-12));
        let (s1, s2) = (pat(Ix3(2, t_len, 2), 2.1), pat(Ix2(2, 2), 0.9));
        let loss = |p: &BranchScanParams| {
            let o = m.evaluate(p, inputs()).unwrap();
            dot(&o.ys, &s1) + dot(&o.last, &s2)
        };
        let (_, g) = m
            .evaluate_gradients(
                &p,
                inputs(),
                BranchScanOutputs {
                    ys: s1.clone(),
                    last: s2.clone(),
                },
            )
            .unwrap();
        assert_eq!(gradcheck(&format!("branch scan {go}"), &p, &g, loss), 10);
    }
}

#[test]
fn a_profiled_model_differentiates_through_a_scan() {
    let (m, pm) = (Rnn::new().unwrap(), RnnProf::new().unwrap());
    let p = rnn_params(&m);
    let mut q = pm.randomize_params(0);
    q.w = p.w.clone();
    q.u = p.u.clone();
    q.v = p.v.clone();
    let xs = pat(Ix3(2, 3, 3), 0.4);
    let seeds = || (pat(Ix3(2, 3, 3), 1.1), pat(Ix2(2, 3), 2.3));
    let (a, b) = seeds();
    let (_, g) = m
        .evaluate_gradients(
            &p,
            RnnInputs { xs: xs.view() },
            RnnOutputs { hs: a, last: b },
        )
        .unwrap();
    let (a, b) = seeds();
    let (_, h) = pm
        .evaluate_gradients(
            &q,
            RnnProfInputs { xs: xs.view() },
            RnnProfOutputs { hs: a, last: b },
        )
        .unwrap();
    assert_eq!(g.w, h.w);
    assert_eq!(g.u, h.u);
    assert_eq!(g.v, h.v);
    assert!(
        pm.profile_report()
            .contains("evaluate_gradients: 1 call(s)")
    );
}

#[test]
fn a_scan_over_a_fixed_dim_unrolls_without_dynamic_control_flow() {
    // no run-time loop left: the summary has no loop column
    assert!(Rnn::SUMMARY.contains("in loop"), "{}", Rnn::SUMMARY);
    assert!(
        !RnnUnrolled::SUMMARY.contains("in loop"),
        "{}",
        RnnUnrolled::SUMMARY
    );
    let (m, mu) = (Rnn::new().unwrap(), RnnUnrolled::new().unwrap());
    let p = rnn_params(&m);
    let mut q = mu.randomize_params(0);
    q.w = p.w.clone();
    q.u = p.u.clone();
    q.v = p.v.clone();
    let xs = pat(Ix3(2, 4, 3), 0.4);
    let o = m.evaluate(&p, RnnInputs { xs: xs.view() }).unwrap();
    let ou = mu
        .evaluate(&q, RnnUnrolledInputs { xs: xs.view() })
        .unwrap();
    assert_eq!(ou.hs.shape(), &[2, 4, 3]);
    // the same arithmetic step by step
    assert_eq!(o.hs, ou.hs);
    assert_eq!(o.last, ou.last);
    let seeds = || (pat(Ix3(2, 4, 3), 1.1), pat(Ix2(2, 3), 2.3));
    let (a, b) = seeds();
    let (_, g) = m
        .evaluate_gradients(
            &p,
            RnnInputs { xs: xs.view() },
            RnnOutputs { hs: a, last: b },
        )
        .unwrap();
    let (a, b) = seeds();
    let (_, h) = mu
        .evaluate_gradients(
            &q,
            RnnUnrolledInputs { xs: xs.view() },
            RnnUnrolledOutputs { hs: a, last: b },
        )
        .unwrap();
    // the step gradients are summed in another order: equal to rounding
    for (x, y) in [(&g.w, &h.w), (&g.u, &h.u)] {
        assert!((x - y).iter().all(|d| d.abs() < 1e-12), "{x} vs {y}");
    }
    assert!((&g.v - &h.v).iter().all(|d| d.abs() < 1e-12));
    // another sequence length is the run-time shape check's error
    let xs5 = pat(Ix3(2, 5, 3), 0.4);
    assert!(
        mu.evaluate(&q, RnnUnrolledInputs { xs: xs5.view() })
            .is_err()
    );
}
