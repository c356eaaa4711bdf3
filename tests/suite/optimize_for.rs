//! `optimize_for: latency | throughput` reaches the GEMM kernels: a `throughput` model holds a
//! one-thread cap for the duration of each call (so concurrent calls on many threads do not
//! contend for the GEMM pool), a `latency` model (the default) lets a call use every core. Checked
//! through the budget the kernels record for the calling thread's last GEMM, not through timing.

use mithril::prelude::*;
use mithril::rt::threads;

mithril! {
    pub model Mlp {
        input x: f32[B, 64];
        let h = relu(Linear(64)(x));
        output y = Linear(8)(h);
    }
    pub compile MlpLatency = Mlp { optimize_for: latency };
    pub compile MlpThroughput = Mlp { optimize_for: throughput };
    pub compile MlpThroughputStatic = Mlp {
        optimize_for: throughput,
        shapes: { x: [32, 64] },
        static_shapes: true,
    };
}

fn x() -> ndarray::Array2<f32> {
    ndarray::Array2::from_shape_fn((32, 64), |(i, j)| ((i * 7 + j) % 13) as f32 * 0.1 - 0.6)
}

#[test]
fn throughput_caps_every_gemm_of_a_call_at_the_calling_thread() {
    let all = threads::num_threads();
    let x = x();
    assert_eq!(Mlp::OPTIMIZE_FOR, "latency");
    assert_eq!(MlpThroughput::OPTIMIZE_FOR, "throughput");

    let lat = MlpLatency::new().unwrap();
    let p = lat.randomize_params(1);
    let want = lat.evaluate(&p, MlpLatencyInputs { x: x.view() }).unwrap();
    assert_eq!(threads::last_call_threads(), all);

    let thr = MlpThroughput::new().unwrap();
    let pt = thr.randomize_params(1);
    let got = thr
        .evaluate(&pt, MlpThroughputInputs { x: x.view() })
        .unwrap();
    assert_eq!(threads::last_call_threads(), 1);
    // the cap ends with the call
    assert_eq!(threads::num_threads_for_call(), all);
    // the same numbers (one thread or several, each output element is computed the same way)
    assert_eq!(got.y, want.y);

    // evaluate_gradients too
    let seeds = MlpThroughputOutputs {
        y: ndarray::Array2::ones((32, 8)),
    };
    let (_, g) = thr
        .evaluate_gradients(&pt, MlpThroughputInputs { x: x.view() }, seeds)
        .unwrap();
    assert_eq!(threads::last_call_threads(), 1);
    assert!(g.linear_0.weight.iter().any(|&v| v != 0.0));
    let (_, _) = lat
        .evaluate_gradients(
            &p,
            MlpLatencyInputs { x: x.view() },
            MlpLatencyOutputs {
                y: ndarray::Array2::ones((32, 8)),
            },
        )
        .unwrap();
    assert_eq!(threads::last_call_threads(), all);

    // and the specialized static_shapes evaluate
    let st = MlpThroughputStatic::new().unwrap();
    assert!(MlpThroughputStatic::SUMMARY.contains("static_shapes: evaluate specialized"));
    let ys = st
        .evaluate(
            &st.randomize_params(1),
            MlpThroughputStaticInputs { x: x.view() },
        )
        .unwrap();
    assert_eq!(threads::last_call_threads(), 1);
    assert_eq!(ys.y, want.y);
}

#[test]
fn the_cap_is_per_thread() {
    // a throughput call on another thread does not limit this one
    let all = threads::num_threads();
    std::thread::spawn(|| {
        let m = MlpThroughput::new().unwrap();
        let x = x();
        m.evaluate(&m.randomize_params(2), MlpThroughputInputs { x: x.view() })
            .unwrap();
        assert_eq!(threads::last_call_threads(), 1);
    })
    .join()
    .unwrap();
    assert_eq!(threads::num_threads_for_call(), all);
    let m = Mlp::new().unwrap();
    let x = x();
    m.evaluate(&m.randomize_params(2), MlpInputs { x: x.view() })
        .unwrap();
    assert_eq!(threads::last_call_threads(), all);
}
