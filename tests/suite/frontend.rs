//! Front-end behaviour: an instance's own sub-blocks are created once per instance and shared by
//! every call of it; params of rank 7 and more (`IxDyn`); compile-time arithmetic mixing ints,
//! floats and symbolic dims; `compile` items that set a model's hyperparameters. Expected values
//! are computed here with plain loops; gradients against f64 central differences.
#![allow(clippy::needless_range_loop)]

use crate::common::fd::gradcheck;
use mithril::ndarray::{Array2, ArrayD, IxDyn};
use mithril::prelude::*;

mithril! {
    /// A cell with a named sub-block and an anonymous one written inline.
    model Inner {
        input x: [B, 4];
        let fc = Linear(4);
        output y = tanh(fc(x)) + Linear(4, use_bias = false)(x);
    }

    /// The same instance applied twice: one set of weights.
    model Twice {
        input x: f64[B, 4];
        let cell = Inner();
        output y = cell(cell(x));
    }
}

fn mat(r: usize, c: usize, seed: usize) -> Array2<f64> {
    Array2::from_shape_fn((r, c), |(i, j)| ((i * c + j + seed) as f64 * 0.37).sin())
}

/// `x @ w.T (+ b)` with plain loops.
fn linear(x: &Array2<f64>, w: &Array2<f64>, b: Option<&[f64]>) -> Array2<f64> {
    let (n, k) = x.dim();
    let m = w.nrows();
    Array2::from_shape_fn((n, m), |(i, o)| {
        let mut s = b.map_or(0.0, |b| b[o]);
        for j in 0..k {
            s += x[[i, j]] * w[[o, j]];
        }
        s
    })
}

#[test]
fn sub_blocks_of_an_instance_are_shared_across_its_calls() {
    let m = Twice::new().unwrap();
    let p = m.randomize_params(4);
    assert_eq!(
        p.names(),
        vec!["cell.fc.weight", "cell.fc.bias", "cell.linear_0.weight"],
        "one `fc` and one inline Linear for both calls"
    );
    let x = mat(3, 4, 1);
    let y = m.evaluate(&p, TwiceInputs { x: x.view() }).unwrap().y;
    let cell = |x: &Array2<f64>| {
        let h = linear(x, &p.cell.fc.weight, p.cell.fc.bias.as_slice());
        h.mapv(f64::tanh) + linear(x, &p.cell.linear_0.weight, None)
    };
    let want = cell(&cell(&x));
    for (g, w) in y.iter().zip(want.iter()) {
        assert!((g - w).abs() < 1e-12, "cell(cell(x)): {g} vs {w}");
    }
    // gradients accumulate from both applications
    let seed = mat(3, 4, 7);
    let (_, grads) = m
        .evaluate_gradients(
            &p,
            TwiceInputs { x: x.view() },
            TwiceOutputs { y: seed.clone() },
        )
        .unwrap();
    let loss =
        |q: &TwiceParams| (&m.evaluate(q, TwiceInputs { x: x.view() }).unwrap().y * &seed).sum();
    gradcheck("Twice", &p, &grads, loss);
}

mithril! {
    model HighRank {
        input x: f64[1, 1, 1, 1, 1, 1, 2];
        param w: f64[1, 1, 1, 1, 1, 1, 2];
        param v: f64[2, 1, 1, 1, 1, 1, 1, 2];
        output y = x * w;
        output z = v * w;
    }
}

#[test]
fn params_of_rank_seven_and_eight() {
    let m = HighRank::new().unwrap();
    let p = m.randomize_params(3);
    let w: &ArrayD<f64> = &p.w;
    assert_eq!(p.w.shape(), &[1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(p.v.shape(), &[2, 1, 1, 1, 1, 1, 1, 2]);
    let x = ArrayD::from_shape_vec(IxDyn(&[1, 1, 1, 1, 1, 1, 2]), vec![0.5, -2.0]).unwrap();
    let o = m.evaluate(&p, HighRankInputs { x: x.view() }).unwrap();
    let (w0, w1) = (w.as_slice().unwrap()[0], w.as_slice().unwrap()[1]);
    let v = p.v.as_slice().unwrap().to_vec();
    assert_eq!(o.y.shape(), &[1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(o.y.as_slice().unwrap(), &[0.5 * w0, -2.0 * w1]);
    assert_eq!(o.z.shape(), &[2, 1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(
        o.z.as_slice().unwrap(),
        &[v[0] * w0, v[1] * w1, v[2] * w0, v[3] * w1]
    );
    // gradients: dy/dw = x * sy + sum over the leading axis of v * sz; dz/dv = w * sz
    let sy = ArrayD::from_shape_vec(IxDyn(&[1, 1, 1, 1, 1, 1, 2]), vec![1.5, 0.25]).unwrap();
    let sz =
        ArrayD::from_shape_vec(IxDyn(&[2, 1, 1, 1, 1, 1, 1, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    let (_, g) = m
        .evaluate_gradients(
            &p,
            HighRankInputs { x: x.view() },
            HighRankOutputs { y: sy, z: sz },
        )
        .unwrap();
    assert_eq!(g.w.shape(), &[1, 1, 1, 1, 1, 1, 2]);
    let gw = g.w.as_slice().unwrap();
    assert!((gw[0] - (0.5 * 1.5 + v[0] * 1.0 + v[2] * 3.0)).abs() < 1e-12);
    assert!((gw[1] - (-2.0 * 0.25 + v[1] * 2.0 + v[3] * 4.0)).abs() < 1e-12);
    assert_eq!(g.v.shape(), &[2, 1, 1, 1, 1, 1, 1, 2]);
    assert_eq!(g.v.as_slice().unwrap(), &[w0, w1 * 2.0, w0 * 3.0, w1 * 4.0]);
    // safetensors round trip
    let bytes = p.to_safetensors_bytes().unwrap();
    let mut q = m.randomize_params(99);
    assert_ne!(q.v, p.v);
    q.load_safetensors_bytes(&bytes).unwrap();
    assert_eq!(q.w, p.w);
    assert_eq!(q.v, p.v);
}

mithril! {
    model Proj(units: int, scale: float = 1.0) {
        input x: f64[B, 3];
        param w: f64[units, 3];
        output y = matmul(x, w.T) * scale;
    }

    /// A compile item that sets the model's hyperparameters: params keep the model's names.
    compile Proj2 = Proj(2, scale = 0.5) {};
    compile Lin4 = Linear(4) { shapes: { input: [_, 3] }, types: { input: f64 } };
    compile Lin4NoBias = Linear(dimension = 4, use_bias = false) {
        shapes: { input: [_, 3] },
        types: { input: f64 },
    };

    /// `sqrt` of integer hyperparameters is a float constant (64 / 8 = 8, integer division).
    model ScaledScores(d_model: int = 64, n_heads: int = 8) {
        input q: f64[B, 4];
        output y = q / sqrt(d_model / n_heads) + exp(1) - log(n_heads);
    }
}

#[test]
fn compile_items_set_hyperparameters() {
    let m = Proj2::new().unwrap();
    let p = m.randomize_params(1);
    assert_eq!(p.names(), vec!["w"]);
    assert_eq!(p.w.shape(), &[2, 3]);
    let x = mat(4, 3, 2);
    let y = m.evaluate(&p, Proj2Inputs { x: x.view() }).unwrap().y;
    let want = linear(&x, &p.w, None).mapv(|v| v * 0.5);
    for (g, w) in y.iter().zip(want.iter()) {
        assert!((g - w).abs() < 1e-12, "Proj(2, scale = 0.5): {g} vs {w}");
    }

    let m = Lin4::new().unwrap();
    let p = m.randomize_params(2);
    assert_eq!(
        p.names(),
        vec!["weight", "bias"],
        "the library model's own names"
    );
    assert_eq!(p.weight.shape(), &[4, 3]);
    let y = m
        .evaluate(&p, Lin4Inputs { input: x.view() })
        .unwrap()
        .output;
    let want = linear(&x, &p.weight, p.bias.as_slice());
    for (g, w) in y.iter().zip(want.iter()) {
        assert!((g - w).abs() < 1e-12, "Linear(4): {g} vs {w}");
    }
    let m = Lin4NoBias::new().unwrap();
    assert_eq!(m.randomize_params(2).names(), vec!["weight"]);
}

#[test]
fn math_of_integer_hyperparameters_is_a_float_constant() {
    let m = ScaledScores::new().unwrap();
    let q = mat(2, 4, 3);
    let y = m
        .evaluate(&m.randomize_params(0), ScaledScoresInputs { q: q.view() })
        .unwrap()
        .y;
    let c = 1f64.exp() - 8f64.ln();
    for (g, x) in y.iter().zip(q.iter()) {
        let want = x / 8f64.sqrt() + c;
        assert!((g - want).abs() < 1e-12, "{g} vs {want}");
    }
}

mithril! {
    /// A "valid" 1-D convolution written with slices whose bounds are dim arithmetic over the
    /// symbolic `H`: `y[b, t] = sum_i w[i] * x[b, t + i]`, `t < H - kernel_size + 1`.
    model Conv1d(kernel_size: int = 3) {
        input x: f64[B, H];
        param w: f64[kernel_size];
        let acc = x[(.., 0..(H - kernel_size + 1))] * w[0];
        for i in 1..kernel_size {
            let acc = acc + x[(.., i..(H - kernel_size + 1 + i))] * w[i];
        }
        output y = acc;
        // the last two columns, and a closed range ending at `H - 2`
        output tail = x.slice(.., (H - 2)..);
        output head = x[(.., 0..=(H - 2))];
    }
}

#[test]
fn slice_bounds_over_symbolic_dims() {
    let m = Conv1d::new().unwrap();
    let mut p = m.randomize_params(1);
    p.w = mithril::ndarray::arr1(&[0.5, -1.0, 2.0]);
    for h in [3usize, 5, 8] {
        let x = mat(2, h, h);
        let o = m.evaluate(&p, Conv1dInputs { x: x.view() }).unwrap();
        let want = Array2::from_shape_fn((2, h - 2), |(b, t)| {
            (0..3).map(|i| p.w[i] * x[[b, t + i]]).sum::<f64>()
        });
        assert_eq!(o.y.shape(), &[2, h - 2]);
        for (g, w) in o.y.iter().zip(want.iter()) {
            assert!((g - w).abs() < 1e-12, "H = {h}: {g} vs {w}");
        }
        assert_eq!(
            o.tail,
            x.slice(mithril::ndarray::s![.., h - 2..]).to_owned()
        );
        assert_eq!(
            o.head,
            x.slice(mithril::ndarray::s![.., ..h - 1]).to_owned()
        );
    }
    // gradients through the relative slices
    let x = mat(2, 6, 5);
    let (sy, st, sh) = (mat(2, 4, 1), mat(2, 2, 2), mat(2, 5, 3));
    let seeds = Conv1dOutputs {
        y: sy.clone(),
        tail: st.clone(),
        head: sh.clone(),
    };
    let (_, g) = m
        .evaluate_gradients(&p, Conv1dInputs { x: x.view() }, seeds)
        .unwrap();
    let loss = |q: &Conv1dParams| {
        let o = m.evaluate(q, Conv1dInputs { x: x.view() }).unwrap();
        (&o.y * &sy).sum() + (&o.tail * &st).sum() + (&o.head * &sh).sum()
    };
    gradcheck("Conv1d", &p, &g, loss);
}

/// The passing forms of some compile-fail cases of `ui-tests/` (kept out of the `ui` binary,
/// which sets an environment variable for trybuild and must run alone).
mod ui_counterparts {
    use mithril::prelude::*;

    mithril! {
        // `let` may shadow an earlier `let` (as in Rust): not a duplicate, unlike inputs, params
        // and outputs (`ui-tests/duplicate_*.rs`).
        model Shadow {
            input x: f32[N];
            let h = x * 2.0;
            let h = h + 1.0;
            let h = relu(h - 4.0);
            output y = h;
        }

        // A destructuring with as many names as outputs, and a field pick of a known output (the
        // passing forms of `destructure_count.rs` and `unknown_output_field.rs`).
        model Split {
            input x: [N];
            output pos = relu(x);
            output neg = relu(-x);
        }

        model UseSplit {
            input x: f32[N];
            let (p, n) = Split(x);
            output both = p - n;
            output neg = Split(x).neg;
        }
    }

    #[test]
    fn let_shadowing_is_not_an_error() {
        let m = Shadow::new().unwrap();
        let params = m.randomize_params(0);
        let x = ndarray::arr1(&[1.0f32, 2.0, 3.0]);
        let out = m.evaluate(&params, ShadowInputs { x: x.view() }).unwrap();
        // relu(2x + 1 - 4)
        assert_eq!(out.y.to_vec(), vec![0.0, 1.0, 3.0]);
    }

    #[test]
    fn destructuring_and_field_picks() {
        let m = UseSplit::new().unwrap();
        let params = m.randomize_params(0);
        let x = ndarray::arr1(&[-2.0f32, 0.5, 3.0]);
        let out = m.evaluate(&params, UseSplitInputs { x: x.view() }).unwrap();
        // relu(x) - relu(-x) == x; relu(-x)
        assert_eq!(out.both.to_vec(), vec![-2.0, 0.5, 3.0]);
        assert_eq!(out.neg.to_vec(), vec![2.0, 0.0, 0.0]);
    }
}
