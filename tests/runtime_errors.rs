//! Run-time failures are `Err` values that say what is wrong (never panics): shape contract
//! violations on inputs and params, bad indices, bad dynamic shapes, safetensors I/O.

use mithril::ndarray::{arr1, Array1, Array2};
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
    assert!(m
        .evaluate(
            &m.randomize_params(0),
            ElementwiseInputs {
                a: a.view(),
                b: b.view()
            }
        )
        .is_err());

    let m = Reshaper::new().unwrap();
    let x = Array1::<f32>::zeros(7);
    assert!(m
        .evaluate(&m.randomize_params(0), ReshaperInputs { x: x.view() })
        .is_err());
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
