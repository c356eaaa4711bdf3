//! `cpu: { threads, simd, deterministic }` and `donate: [x]` (issue 16, item 8): the thread cap
//! and the forced instruction set reach the GEMM kernels of each call (read back through what
//! the kernels record for the calling thread's last GEMM), a `simd` level the thread may not run
//! is an `Err`, results are bitwise the same for every thread count, and a donated input's
//! buffer becomes an output's (same data pointer) when nothing reads the input afterwards.

use mithril::ndarray::{self as ndarray, Array1, Array2};
use mithril::prelude::*;
use mithril::rt::isa::{self, Isa};
use mithril::rt::threads::{self, GemmIsa};

mithril! {
    pub model Wide {
        input x: f32[B, 320];
        let h = relu(Linear(288)(x));
        output y = Linear(200)(h);
    }
    pub compile WideOne = Wide { cpu: { threads: 1 } };
    pub compile WideTwo = Wide { cpu: { threads: 2, deterministic: true } };
    pub compile WideScalar = Wide { cpu: { simd: scalar } };
    pub compile WideAvx2 = Wide { cpu: { simd: avx2, threads: 1 } };
    pub compile WideAvx512 = Wide { cpu: { simd: avx512 } };

    /// The output reads the input element for element: it runs in place over it.
    pub model Scale {
        input x: f32[B, N];
        input b: f32[N];
        output y = relu(x) * 2.0 + b;
    }
    pub compile ScaleDonating = Scale { donate: [x] };

    /// The output does not read the input (only a reduction of it, computed before).
    pub model Other {
        input x: f32[B, N];
        input z: f32[B, N];
        let s = x.sum();
        output y = z * s;
    }
    pub compile OtherDonating = Other { donate: [x] };

    /// The input is read again after the output: it must not be overwritten.
    pub model Reread {
        input x: f32[B, N];
        output y = x * 3.0;
        output t = matmul(transpose(x), y);
    }
    pub compile RereadDonating = Reread { donate: [x] };
}

fn x(rows: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, 320), |(i, j)| {
        ((i * 31 + j * 7) % 23) as f32 * 0.05 - 0.5
    })
}

/// `relu(x W1^T + b1) W2^T + b2` in f64, naively (`w`: the two layers' weights and biases).
fn reference(w: [&ndarray::ArrayD<f32>; 4], x: &Array2<f32>) -> Array2<f64> {
    let lin = |a: &Array2<f64>, w: &ndarray::ArrayD<f32>, b: &ndarray::ArrayD<f32>| {
        Array2::from_shape_fn((a.nrows(), w.shape()[0]), |(i, o)| {
            (0..a.ncols())
                .map(|k| a[[i, k]] * w[[o, k]] as f64)
                .sum::<f64>()
                + b[[o]] as f64
        })
    };
    let h = lin(&x.mapv(|v| v as f64), w[0], w[1]).mapv(|v| v.max(0.0));
    lin(&h, w[2], w[3])
}

#[test]
fn threads_caps_each_call_and_results_do_not_depend_on_it() {
    // 192 rows: both GEMMs are above the size at which the kernels split over threads
    let x = x(192);
    let one = WideOne::new().unwrap();
    let p = one.randomize_params(7);
    let a = one.evaluate(&p, WideOneInputs { x: x.view() }).unwrap();
    assert_eq!(threads::last_call_threads(), 1);
    // the cap ends with the call
    assert_eq!(threads::num_threads_for_call(), threads::num_threads());

    let two = WideTwo::new().unwrap();
    let p2 = two.randomize_params(7);
    let b = two.evaluate(&p2, WideTwoInputs { x: x.view() }).unwrap();
    assert_eq!(threads::last_call_threads(), 2.min(threads::num_threads()));
    assert_eq!(WideOne::CPU_THREADS, Some(1));
    assert_eq!(WideTwo::CPU_THREADS, Some(2));
    const { assert!(WideTwo::DETERMINISTIC && !WideOne::DETERMINISTIC) };

    // the default (every core) as well
    let all = Wide::new().unwrap();
    let c = all
        .evaluate(&all.randomize_params(7), WideInputs { x: x.view() })
        .unwrap();
    assert_eq!(threads::last_call_threads(), threads::num_threads());

    // bitwise the same for every thread count (the kernels split rows or columns, never k)
    assert_eq!(a.y, b.y);
    assert_eq!(a.y, c.y);
    // and right
    let d = |a: &Array2<f32>| a.clone().into_dyn();
    let b1 = p.linear_0.bias.clone().into_dyn();
    let b2 = p.linear_1.bias.clone().into_dyn();
    let want = reference(
        [&d(&p.linear_0.weight), &b1, &d(&p.linear_1.weight), &b2],
        &x,
    );
    for (g, w) in a.y.iter().zip(want.iter()) {
        assert!(
            (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "{g} vs {w}"
        );
    }

    // the gradients too
    let seeds = || WideOneOutputs {
        y: Array2::from_shape_fn((192, 200), |(i, j)| ((i + 3 * j) % 5) as f32 - 2.0),
    };
    let (_, g1) = one
        .evaluate_gradients(&p, WideOneInputs { x: x.view() }, seeds())
        .unwrap();
    assert_eq!(threads::last_call_threads(), 1);
    let s = seeds();
    let (_, g2) = two
        .evaluate_gradients(
            &p2,
            WideTwoInputs { x: x.view() },
            WideTwoOutputs { y: s.y },
        )
        .unwrap();
    assert_eq!(g1.linear_0.weight, g2.linear_0.weight);
    assert_eq!(g1.linear_1.bias, g2.linear_1.bias);
}

#[test]
fn simd_forces_the_kernels_instruction_set_for_the_call() {
    let x = x(64);
    let w = Wide::new().unwrap();
    let want = w
        .evaluate(&w.randomize_params(7), WideInputs { x: x.view() })
        .unwrap();

    let m = WideScalar::new().unwrap();
    let got = m
        .evaluate(&m.randomize_params(7), WideScalarInputs { x: x.view() })
        .unwrap();
    assert_eq!(threads::last_call_isa(), Some(GemmIsa::Scalar));
    // the choice ends with the call
    assert_eq!(isa::active(), isa::detected());
    assert_eq!(WideScalar::SIMD, Some("scalar"));
    let err = 1e-4;
    for (g, w) in got.y.iter().zip(want.y.iter()) {
        assert!((g - w).abs() <= err * (1.0 + w.abs()), "{g} vs {w}");
    }

    if Isa::Avx2.supported() {
        let m = WideAvx2::new().unwrap();
        m.evaluate(&m.randomize_params(7), WideAvx2Inputs { x: x.view() })
            .unwrap();
        assert_eq!(threads::last_call_isa(), Some(GemmIsa::Avx2));
    }
    if Isa::Avx512.supported() {
        let m = WideAvx512::new().unwrap();
        m.evaluate(&m.randomize_params(7), WideAvx512Inputs { x: x.view() })
            .unwrap();
        assert!(threads::last_call_isa() >= Some(GemmIsa::Avx512));
    }
}

#[test]
fn simd_the_thread_may_not_run_is_an_error_not_a_crash() {
    let x = x(8);
    // `with_isa` stands in for a CPU without AVX2 (on a real one, `new` and the call are the
    // same code: the level is checked at each call)
    isa::with_isa(Isa::Scalar, || {
        let m = WideAvx2::new().unwrap();
        let e = m
            .evaluate(&m.randomize_params(7), WideAvx2Inputs { x: x.view() })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("WideAvx2") && e.contains("simd: avx2") && e.contains("at most scalar"),
            "{e}"
        );
        // the scalar model still runs there
        let s = WideScalar::new().unwrap();
        s.evaluate(&s.randomize_params(7), WideScalarInputs { x: x.view() })
            .unwrap();
    });
    if !Isa::Avx512.supported() {
        let m = WideAvx512::new().unwrap();
        let e = m
            .evaluate(&m.randomize_params(7), WideAvx512Inputs { x: x.view() })
            .unwrap_err()
            .to_string();
        assert!(e.contains("simd: avx512"), "{e}");
    }
}

#[test]
fn a_donated_input_becomes_the_output_it_is_read_into() {
    let m = ScaleDonating::new().unwrap();
    let x = Array2::from_shape_fn((5, 7), |(i, j)| i as f32 - j as f32 * 0.5);
    let b = Array1::from_shape_fn(7, |j| j as f32 * 0.25);
    let want = Array2::from_shape_fn((5, 7), |(i, j)| x[[i, j]].max(0.0) * 2.0 + b[j]);
    // evaluate is unchanged
    let plain = m
        .evaluate(
            &m.randomize_params(0),
            ScaleDonatingInputs {
                x: x.view(),
                b: b.view(),
            },
        )
        .unwrap();
    assert_eq!(plain.y, want);
    let ptr = x.as_ptr();
    let out = m
        .evaluate_donating(
            &m.randomize_params(0),
            ScaleDonatingDonatingInputs { x, b: b.view() },
        )
        .unwrap();
    assert_eq!(out.y, want);
    assert_eq!(
        out.y.as_ptr(),
        ptr,
        "the output is not in the donated buffer"
    );
    // again, with the workspace planned
    let x2 = out.y.mapv(|v| v - 1.0);
    let ptr2 = x2.as_ptr();
    let want2 = x2.mapv(|v| v.max(0.0) * 2.0) + &b;
    let out2 = m
        .evaluate_donating(
            &m.randomize_params(0),
            ScaleDonatingDonatingInputs { x: x2, b: b.view() },
        )
        .unwrap();
    assert_eq!(out2.y, want2);
    assert_eq!(out2.y.as_ptr(), ptr2);
}

#[test]
fn a_donated_input_read_before_the_output_is_reused_too() {
    let m = OtherDonating::new().unwrap();
    let x = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32);
    let z = Array2::from_shape_fn((3, 4), |(i, j)| (i as f32 - j as f32) * 0.5);
    let s: f32 = x.sum();
    let want = z.mapv(|v| v * s);
    let ptr = x.as_ptr();
    let out = m
        .evaluate_donating(
            &m.randomize_params(0),
            OtherDonatingDonatingInputs { x, z: z.view() },
        )
        .unwrap();
    assert_eq!(out.y, want);
    assert_eq!(out.y.as_ptr(), ptr);
}

#[test]
fn a_donated_input_read_after_the_output_is_not_overwritten() {
    let m = RereadDonating::new().unwrap();
    let x = Array2::from_shape_fn((4, 3), |(i, j)| (i * 3 + j) as f32 * 0.5 - 2.0);
    let y = x.mapv(|v| v * 3.0);
    let t = Array2::from_shape_fn((3, 3), |(a, c)| {
        (0..4).map(|i| x[[i, a]] * y[[i, c]]).sum::<f32>()
    });
    let ptr = x.as_ptr();
    let out = m
        .evaluate_donating(&m.randomize_params(0), RereadDonatingDonatingInputs { x })
        .unwrap();
    assert_eq!(out.y, y);
    assert_eq!(out.t, t);
    assert_ne!(
        out.y.as_ptr(),
        ptr,
        "donated although the input is read afterwards"
    );
}

#[test]
fn a_transposed_donated_input_falls_back_to_a_fresh_output() {
    let m = ScaleDonating::new().unwrap();
    // a column-major array: not contiguous in row-major order, so not reusable
    let x = Array2::from_shape_fn((7, 5), |(i, j)| i as f32 * 0.5 - j as f32).reversed_axes();
    let b = Array1::from_shape_fn(7, |j| j as f32);
    let want = Array2::from_shape_fn((5, 7), |(i, j)| x[[i, j]].max(0.0) * 2.0 + b[j]);
    let out = m
        .evaluate_donating(
            &m.randomize_params(0),
            ScaleDonatingDonatingInputs { x, b: b.view() },
        )
        .unwrap();
    assert_eq!(out.y, want);
}
