//! Run-time failures are `Err` values that say what is wrong (never panics): shape contract
//! violations on inputs and params, bad indices, bad dynamic shapes, safetensors I/O.

use mithril::ndarray::{Array1, Array2, arr1};
use mithril::prelude::*;

mithril! {
    model Mnist {
        input x: f32[B, 784];
        let fc1 = Linear(16);
        output y = fc1(x);
    }

    model MnistNoBias {
        input x: f32[B, 784];
        let fc1 = Linear(16, use_bias = false);
        output y = fc1(x);
    }

    model MnistWide {
        input x: f32[B, 784];
        let fc1 = Linear(32);
        output y = fc1(x);
    }

    model Pair {
        input x: f32[B, 3];
        input y: f32[B, 3];
        output s = x + y;
    }

    model Lookup {
        input table: f32[V, 2];
        input ids: i64[N];
        input scores: f32[N, C];
        input cls: i64[N];
        output e = gather(table, ids);
        output picked = take_along(scores, cls);
    }

    model Dynamic {
        input a: f32[_, _];
        input b: f32[_, _];
        output c = matmul(a, b);
    }

    model Elementwise {
        input a: f32[_];
        input b: f32[_];
        output c = a * b;
    }

    model Reshaper {
        input x: f32[_];
        output y = reshape(x, [-1, 5]);
    }

    model Nested {
        input x: f32[B, 4];
        let block = Inner();
        output y = block(x);
    }

    model Inner {
        input x: [B, D];
        let fc = Linear(3);
        output y = fc(x);
    }

    model Classify {
        input scores: f32[N, 3];
        input labels: i64[N];
        output loss = cross_entropy(scores, labels);
    }

    train Embed {
        input ids: i64[N];
        input y: f32[N, 2];
        let e = Embedding(4, 2)(ids);
        output e = e;
        loss ((e - y) * (e - y)).mean();
    }
}

fn shape_err(e: &Error) -> (&str, &str, &str, &str) {
    match e {
        Error::Shape {
            terminal,
            expected,
            given,
            detail,
            ..
        } => (terminal, expected, given, detail),
        other => panic!("expected Error::Shape, got {other:?}"),
    }
}

#[test]
fn wrong_input_dim_names_terminal_and_shapes() {
    let m = Mnist::new().unwrap();
    let p = m.randomize_params(0);
    let x = Array2::<f32>::zeros((8, 100));
    let e = m.evaluate(&p, MnistInputs { x: x.view() }).unwrap_err();
    let (terminal, expected, given, detail) = shape_err(&e);
    assert_eq!(terminal, "input `x`");
    assert_eq!(expected, "f32[B, 784]");
    assert_eq!(given, "[8, 100]");
    assert!(detail.contains("100") && detail.contains("784"), "{detail}");
    let msg = e.to_string();
    for part in ["Mnist", "input `x`", "f32[B, 784]", "[8, 100]"] {
        assert!(msg.contains(part), "`{part}` missing from: {msg}");
    }
    // the right shape works with any B
    for b in [1, 3] {
        let x = Array2::<f32>::zeros((b, 784));
        let y = m.evaluate(&p, MnistInputs { x: x.view() }).unwrap().y;
        assert_eq!(y.shape(), &[b, 16]);
    }
}

#[test]
fn inconsistent_symbol_between_inputs() {
    let m = Pair::new().unwrap();
    let p = m.randomize_params(0);
    let x = Array2::<f32>::zeros((8, 3));
    let y = Array2::<f32>::zeros((5, 3));
    let e = m
        .evaluate(
            &p,
            PairInputs {
                x: x.view(),
                y: y.view(),
            },
        )
        .unwrap_err();
    let (terminal, expected, given, detail) = shape_err(&e);
    assert_eq!(terminal, "input `y`");
    assert_eq!(expected, "f32[B, 3]");
    assert_eq!(given, "[5, 3]");
    assert!(
        detail.contains("B = 8") && detail.contains("input `x`"),
        "{detail}"
    );
    let msg = e.to_string();
    assert!(msg.contains("B = 8") && msg.contains("[5, 3]"), "{msg}");
}

#[test]
fn param_of_wrong_shape() {
    let m = Mnist::new().unwrap();
    let mut p = m.randomize_params(0);
    p.fc1.weight = Array2::zeros((16, 783));
    let x = Array2::<f32>::zeros((2, 784));
    let e = m.evaluate(&p, MnistInputs { x: x.view() }).unwrap_err();
    let (terminal, expected, given, _) = shape_err(&e);
    assert_eq!(terminal, "param `fc1.weight`");
    assert_eq!(expected, "f32[16, 784]");
    assert_eq!(given, "[16, 783]");
    assert!(e.to_string().contains("param `fc1.weight`"), "{e}");
    let mut p = m.randomize_params(0);
    p.fc1.bias = Array1::zeros(15);
    let e = m.evaluate(&p, MnistInputs { x: x.view() }).unwrap_err();
    assert_eq!(shape_err(&e).0, "param `fc1.bias`");
}

#[test]
fn nested_param_of_wrong_shape_has_dotted_name() {
    let m = Nested::new().unwrap();
    let mut p = m.randomize_params(0);
    p.block.fc.weight = Array2::zeros((3, 5));
    let x = Array2::<f32>::zeros((2, 4));
    let e = m.evaluate(&p, NestedInputs { x: x.view() }).unwrap_err();
    assert_eq!(shape_err(&e).0, "param `block.fc.weight`", "{e}");
}

#[test]
fn gather_index_out_of_range_is_an_error() {
    let m = Lookup::new().unwrap();
    let p = m.randomize_params(0);
    let table = Array2::<f32>::zeros((3, 2));
    let scores = Array2::<f32>::zeros((2, 4));
    let ok = arr1(&[0i64, 2]);
    let cls = arr1(&[3i64, 0]);
    let o = m
        .evaluate(
            &p,
            LookupInputs {
                table: table.view(),
                ids: ok.view(),
                scores: scores.view(),
                cls: cls.view(),
            },
        )
        .unwrap();
    assert_eq!(o.e.shape(), &[2, 2]);
    for bad in [arr1(&[0i64, 3]), arr1(&[7i64, 0]), arr1(&[0i64, i64::MAX])] {
        let r = m.evaluate(
            &p,
            LookupInputs {
                table: table.view(),
                ids: bad.view(),
                scores: scores.view(),
                cls: cls.view(),
            },
        );
        let e = r.expect_err("out-of-range index must be an Err");
        assert!(matches!(e, Error::Op { .. }), "{e:?}");
    }
    let bad_cls = arr1(&[4i64, 0]);
    let r = m.evaluate(
        &p,
        LookupInputs {
            table: table.view(),
            ids: ok.view(),
            scores: scores.view(),
            cls: bad_cls.view(),
        },
    );
    assert!(r.is_err(), "take_along out of range");
}

#[test]
fn dynamic_dims_that_disagree_at_run_time() {
    let m = Dynamic::new().unwrap();
    let p = m.randomize_params(0);
    let a = Array2::<f32>::ones((2, 3));
    let b = Array2::<f32>::ones((4, 5));
    let e = m
        .evaluate(
            &p,
            DynamicInputs {
                a: a.view(),
                b: b.view(),
            },
        )
        .unwrap_err();
    assert!(!e.to_string().is_empty());
    let b = Array2::<f32>::ones((3, 5));
    let c = m
        .evaluate(
            &p,
            DynamicInputs {
                a: a.view(),
                b: b.view(),
            },
        )
        .unwrap()
        .c;
    assert_eq!(c, Array2::from_elem((2, 5), 3.0));

    let m = Elementwise::new().unwrap();
    let a = arr1(&[1.0f32, 2.0, 3.0]);
    let b = arr1(&[1.0f32, 2.0]);
    assert!(
        m.evaluate(
            &m.randomize_params(0),
            ElementwiseInputs {
                a: a.view(),
                b: b.view()
            }
        )
        .is_err()
    );

    let m = Reshaper::new().unwrap();
    let x = Array1::<f32>::zeros(7);
    assert!(
        m.evaluate(&m.randomize_params(0), ReshaperInputs { x: x.view() })
            .is_err()
    );
    let x = Array1::<f32>::zeros(10);
    let y = m
        .evaluate(&m.randomize_params(0), ReshaperInputs { x: x.view() })
        .unwrap()
        .y;
    assert_eq!(y.shape(), &[2, 5]);
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "mithril-test-{}-{name}.safetensors",
        std::process::id()
    ))
}

#[test]
fn safetensors_round_trip() {
    let m = Mnist::new().unwrap();
    let p = m.randomize_params(42);
    let path = temp_path("roundtrip");
    p.save_safetensors(&path).unwrap();
    let mut q = m.randomize_params(7);
    assert_ne!(p.fc1.weight, q.fc1.weight);
    q.load_safetensors(&path).unwrap();
    assert_eq!(p.fc1.weight, q.fc1.weight);
    assert_eq!(p.fc1.bias, q.fc1.bias);
    // same outputs
    let x = Array2::from_shape_fn((2, 784), |(i, j)| ((i * 784 + j) % 13) as f32 * 0.1);
    let y1 = m.evaluate(&p, MnistInputs { x: x.view() }).unwrap().y;
    let y2 = m.evaluate(&q, MnistInputs { x: x.view() }).unwrap().y;
    assert_eq!(y1, y2);
    std::fs::remove_file(&path).ok();
}

#[test]
fn safetensors_missing_or_wrong_tensor_is_an_error() {
    let path = temp_path("missing");
    let small = MnistNoBias::new().unwrap().randomize_params(1);
    small.save_safetensors(&path).unwrap();
    let m = Mnist::new().unwrap();
    let mut p = m.randomize_params(2);
    let before = p.fc1.bias.clone();
    let e = p.load_safetensors(&path).unwrap_err();
    assert!(matches!(e, Error::Params(_)), "{e:?}");
    assert!(e.to_string().contains("fc1.bias"), "{e}");
    let _ = before;
    std::fs::remove_file(&path).ok();

    // a tensor of the wrong shape
    let path = temp_path("wide");
    MnistWide::new()
        .unwrap()
        .randomize_params(3)
        .save_safetensors(&path)
        .unwrap();
    let e = p.load_safetensors(&path).unwrap_err();
    assert!(e.to_string().contains("fc1.weight"), "{e}");
    std::fs::remove_file(&path).ok();

    // no file at all, and a file that is no safetensors
    assert!(p.load_safetensors(temp_path("does-not-exist")).is_err());
    let path = temp_path("garbage");
    std::fs::write(&path, b"not a safetensors file").unwrap();
    assert!(p.load_safetensors(&path).is_err());
    std::fs::remove_file(&path).ok();
}

mithril! {
    model Ell {
        input x: f32[..., D];
        input y: f32[D];
        output z = x * y;
    }
}

#[test]
fn symbol_bound_after_an_ellipsis() {
    let m = Ell::new().unwrap();
    let p = m.randomize_params(0);
    let x = mithril::ndarray::ArrayD::<f32>::ones(mithril::ndarray::IxDyn(&[2, 3, 4]));
    let y = Array1::from(vec![1.0f32, 2.0, 3.0, 4.0]);
    let z = m
        .evaluate(
            &p,
            EllInputs {
                x: x.view(),
                y: y.view(),
            },
        )
        .unwrap()
        .z;
    assert_eq!(z.shape(), &[2, 3, 4]);
    assert_eq!(z.as_slice().unwrap()[..4], [1.0, 2.0, 3.0, 4.0]);
    let y5 = Array1::<f32>::ones(5);
    let e = m
        .evaluate(
            &p,
            EllInputs {
                x: x.view(),
                y: y5.view(),
            },
        )
        .unwrap_err();
    let (terminal, expected, given, detail) = shape_err(&e);
    assert_eq!(terminal, "input `y`");
    assert_eq!(expected, "f32[D]");
    assert_eq!(given, "[5]");
    assert!(
        detail.contains("D = 4") && detail.contains("input `x`"),
        "{detail}"
    );
    // a rank-0 x has no last dim
    let x0 = mithril::ndarray::ArrayD::<f32>::ones(mithril::ndarray::IxDyn(&[]));
    let e = m
        .evaluate(
            &p,
            EllInputs {
                x: x0.view(),
                y: y.view(),
            },
        )
        .unwrap_err();
    assert_eq!(shape_err(&e).0, "input `x`");
    assert_eq!(shape_err(&e).1, "f32[..., D]");
}

/// A negative class target is an error naming the model, the input and the position (PyTorch
/// raises too); before, `-1` silently gave the loss of the last class.
#[test]
fn negative_class_target_is_an_error() {
    let m = Classify::new().unwrap();
    let p = m.randomize_params(0);
    let scores = Array2::from_shape_fn((3, 3), |(i, j)| (i * 3 + j) as f32 * 0.5);
    let good = arr1(&[0i64, 2, 1]);
    let l = m
        .evaluate(
            &p,
            ClassifyInputs {
                scores: scores.view(),
                labels: good.view(),
            },
        )
        .unwrap()
        .loss;
    // -log_softmax(row)[target]: each row is (a, a + 0.5, a + 1), so the loss is
    // ln(e^-1 + e^-0.5 + 1) + 1 - (offset of the target)
    let ln_s = ((-1.0f64).exp() + (-0.5f64).exp() + 1.0).ln();
    for (i, want) in [ln_s + 1.0, ln_s, ln_s + 0.5].into_iter().enumerate() {
        assert!((l[i] as f64 - want).abs() < 1e-5, "{i}: {} vs {want}", l[i]);
    }
    let bad = arr1(&[0i64, 2, -1]);
    let e = m
        .evaluate(
            &p,
            ClassifyInputs {
                scores: scores.view(),
                labels: bad.view(),
            },
        )
        .expect_err("a negative target must be an Err");
    assert!(matches!(e, Error::Op { .. }), "{e:?}");
    let msg = e.to_string();
    for part in [
        "take_along",
        "index -1 at position [2]",
        "negative",
        "model `Classify`",
        "input `labels`",
    ] {
        assert!(msg.contains(part), "{part:?} missing: {msg}");
    }
    // out of range names the model and input as well
    let big = arr1(&[3i64, 0, 0]);
    let msg = m
        .evaluate(
            &p,
            ClassifyInputs {
                scores: scores.view(),
                labels: big.view(),
            },
        )
        .unwrap_err()
        .to_string();
    for part in [
        "index 3 at position [0]",
        "model `Classify`",
        "input `labels`",
    ] {
        assert!(msg.contains(part), "{part:?} missing: {msg}");
    }
}

/// A negative `Embedding` id is an error (it read, and in the gradient wrote, the last row).
#[test]
fn negative_embedding_id_is_an_error_forward_and_backward() {
    let m = Embed::new().unwrap();
    let p = m.randomize_params(1);
    let y = Array2::<f32>::zeros((3, 2));
    let ids = arr1(&[1i64, 3, 0]);
    let (o, g) = m
        .evaluate_gradients(
            &p,
            EmbedInputs {
                ids: ids.view(),
                y: y.view(),
            },
        )
        .unwrap();
    for (r, &i) in ids.iter().enumerate() {
        assert_eq!(o.e.row(r), p.e.weight.row(i as usize));
    }
    // d/dW of mean((e - 0)^2) over 6 elements: row i gets 2 * W[i] / 6 per use
    for i in 0..4 {
        let uses = ids.iter().filter(|&&v| v == i as i64).count() as f32;
        for j in 0..2 {
            let want = uses * 2.0 * p.e.weight[[i, j]] / 6.0;
            assert!((g.e.weight[[i, j]] - want).abs() < 1e-6, "[{i}, {j}]");
        }
    }
    let bad = arr1(&[1i64, -1, 0]);
    let e = m
        .evaluate(
            &p,
            EmbedInputs {
                ids: bad.view(),
                y: y.view(),
            },
        )
        .expect_err("negative id");
    let msg = e.to_string();
    for part in [
        "gather",
        "index -1 at position [1]",
        "negative",
        "model `Embed`",
        "input `ids`",
    ] {
        assert!(msg.contains(part), "{part:?} missing: {msg}");
    }
    let e = m
        .evaluate_gradients(
            &p,
            EmbedInputs {
                ids: bad.view(),
                y: y.view(),
            },
        )
        .expect_err("negative id in the gradient");
    assert!(e.to_string().contains("index -1 at position [1]"), "{e}");
}

#[test]
fn a_missing_weights_file_names_the_path() {
    let path = temp_path("does-not-exist");
    let mut p = Mnist::new().unwrap().randomize_params(0);
    let e = p.load_safetensors(&path).unwrap_err();
    assert!(matches!(&e, Error::Io(_)), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}
