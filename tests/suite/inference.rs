//! Dtype and shape inference as seen from the generated API: the Rust types of inputs, outputs
//! and params, symbolic dims, compile options, multi-output submodels, compile-time control flow.
// Reference computations are written index by index on purpose, mirroring the math.
#![allow(
    clippy::needless_range_loop,
    clippy::type_complexity,
    clippy::identity_op,
    clippy::neg_multiply
)]

use mithril::half::f16;
use mithril::ndarray::{
    Array, Array1, Array2, Array3, ArrayD, ArrayView2, ArrayViewD, Ix1, IxDyn, arr1,
};
use mithril::prelude::*;

mithril! {
    model Dtypes {
        input i: i32[N];
        input j: i32[N];
        input k: i64[N];
        input x: f32[N];
        input h: f16[N];
        output int_div = i / j;
        output f16_f32 = h + x;
        output f16_lit = h * 2.0;
        output f16_int_lit = h + 1;
        output i32_i64 = i + k;
        output int_float_lit = i * 0.5;
        output int_mean = i.mean();
        output bool_sum = (x > 0.0).sum();
        output arg = x.argmax();
        output int_lit = k * 2;
    }

    model Untyped {
        input x: [B, 3];
        param w: [3] = ones;
        output y = x * w;
    }

    compile Untyped64 = Untyped { dtype: f64 };

    model Scaled {
        input x: f32[B, 3];
        param w: [3] = full(2.0);
        output y = x * w;
    }

    compile ScaledHalf = Scaled { types: { x: f16 } };

    model Unified {
        input a: f32[B, 3];
        input b: f32[B, 4];
        input c: f32[_, 2];
        output joined = concat(a, b, axis = 1);
        output rows = c.sum(axis = 1);
    }

    model Poly {
        input x: f32[..., 4];
        let fc = Linear(2);
        output y = fc(x);
        output s = x.sum(axis = -1);
    }

    model Tiny {
        input x: f32[B, 3];
        output y = (x * 2.0).sum(axis = 1);
    }

    compile TinyB4 = Tiny {
        shapes: { x: [4, 3] },
        static_shapes: true,
    };

    compile TinyFixedB = Tiny { shapes: { x: [2, _] } };

    model TwoOut {
        input a: f32[B, D];
        input b: f32[B, D];
        output sum = a + b;
        output diff = a - b;
    }

    model UsesTwoOut {
        input x: f32[B, 3];
        input y: f32[B, 3];
        let (s, d) = TwoOut(x, y);
        output prod = s * d;
        output only_diff = TwoOut(x, y).diff;
        output named = TwoOut(b = x, a = y).diff;
        output second = d;
    }

    model Stack(depth: int = 3, double: bool = false, scales: list = [1.0]) {
        input x: f32[B, 4];
        let h = x;
        for i in 0..depth {
            let h = h + 1.0;
        }
        for s in scales {
            let h = h * s;
        }
        if double {
            output y = h * 2.0;
        } else if depth > 4 {
            output y = -h;
        } else {
            output y = h;
        }
    }

    model UsesStack {
        input x: f32[B, 4];
        output plain = Stack()(x);
        output two = Stack(depth = 2)(x);
        output doubled = Stack(depth = 1, double = true)(x);
        output negated = Stack(5, false)(x);
        output scaled = Stack(depth = 0, scales = [2.0, 3.0, 0.5])(x);
    }

    model Widths(widths: list = [5, 3]) {
        input x: f32[B, 4];
        let h = x;
        for w in widths {
            let h = relu(Linear(w)(h));
        }
        output y = h;
        output n = x.sum(axis = 1) * len(widths);
    }
}

fn inputs_dtypes() -> (
    Array1<i32>,
    Array1<i32>,
    Array1<i64>,
    Array1<f32>,
    Array1<f16>,
) {
    (
        arr1(&[7, -7, 1, 9]),
        arr1(&[2, 2, 3, -4]),
        arr1(&[100, 200, 300, 400]),
        arr1(&[0.5, -1.5, 2.25, 3.0]),
        arr1(&[0.5f32, 1.25, -2.0, 1000.0]).mapv(f16::from_f32),
    )
}

#[test]
fn dtype_rules() {
    let (i, j, k, x, h) = inputs_dtypes();
    let m = Dtypes::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            DtypesInputs {
                i: i.view(),
                j: j.view(),
                k: k.view(),
                x: x.view(),
                h: h.view(),
            },
        )
        .unwrap();
    // int / int -> default float
    let q: Array1<f32> = o.int_div;
    let want: Vec<f32> = (0..4).map(|t| i[t] as f32 / j[t] as f32).collect();
    assert_eq!(q.to_vec(), want);
    // f16 + f32 -> f32
    let s: Array1<f32> = o.f16_f32;
    let want: Vec<f32> = (0..4).map(|t| h[t].to_f32() + x[t]).collect();
    assert_eq!(s.to_vec(), want);
    // literals are weak: stays f16
    let l: Array1<f16> = o.f16_lit;
    let want: Vec<f16> = (0..4).map(|t| f16::from_f32(h[t].to_f32() * 2.0)).collect();
    assert_eq!(l.to_vec(), want);
    let l: Array1<f16> = o.f16_int_lit;
    let want: Vec<f16> = (0..4).map(|t| f16::from_f32(h[t].to_f32() + 1.0)).collect();
    assert_eq!(l.to_vec(), want);
    // i32 + i64 -> i64
    let w: Array1<i64> = o.i32_i64;
    assert_eq!(w.to_vec(), vec![107, 193, 301, 409]);
    // an int tensor times a float literal -> the default float type
    let fl: Array1<f32> = o.int_float_lit;
    assert_eq!(fl.to_vec(), vec![3.5, -3.5, 0.5, 4.5]);
    // mean of ints -> float, sum of bools -> i64, argmax -> i64
    let mean: Array<f32, mithril::ndarray::Ix0> = o.int_mean;
    assert_eq!(mean[()], (7 - 7 + 1 + 9) as f32 / 4.0);
    let bs: Array<i64, mithril::ndarray::Ix0> = o.bool_sum;
    assert_eq!(bs[()], 3);
    let am: Array<i64, mithril::ndarray::Ix0> = o.arg;
    assert_eq!(am[()], 3);
    let il: Array1<i64> = o.int_lit;
    assert_eq!(il.to_vec(), vec![200, 400, 600, 800]);
}

#[test]
fn default_dtype_option_makes_everything_f64() {
    // declared without dtype: the default float type, f32 unless `dtype:` says otherwise
    let m = Untyped::new().unwrap();
    let p = m.randomize_params(0);
    let w: Array1<f32> = p.w.clone();
    assert_eq!(w.to_vec(), vec![1.0; 3]);
    let x = Array2::<f32>::from_elem((2, 3), 1.5);
    let y: Array2<f32> = m.evaluate(&p, UntypedInputs { x: x.view() }).unwrap().y;
    assert_eq!(y, Array2::from_elem((2, 3), 1.5));

    let m = Untyped64::new().unwrap();
    let p = m.randomize_params(0);
    let w: Array1<f64> = p.w.clone();
    assert_eq!(w.to_vec(), vec![1.0; 3]);
    let x = Array2::<f64>::from_shape_vec((1, 3), vec![0.1, 0.2, 0.3]).unwrap();
    let y: Array2<f64> = m.evaluate(&p, Untyped64Inputs { x: x.view() }).unwrap().y;
    assert_eq!(y.as_slice().unwrap(), &[0.1, 0.2, 0.3]);
}

#[test]
fn types_option_retypes_an_input() {
    let m = Scaled::new().unwrap();
    let p = m.randomize_params(0);
    let _: &Array1<f32> = &p.w;
    let m = ScaledHalf::new().unwrap();
    let p = m.randomize_params(0);
    // the param meets an f16 input: f16 weights
    let w: &Array1<f16> = &p.w;
    assert_eq!(w.to_vec(), vec![f16::from_f32(2.0); 3]);
    let x = arr1(&[0.5f32, 1.5, -3.0, 0.1, 0.2, 0.3]).mapv(f16::from_f32);
    let x = x.into_shape_with_order((2, 3)).unwrap();
    let y: Array2<f16> = m.evaluate(&p, ScaledHalfInputs { x: x.view() }).unwrap().y;
    let want: Vec<f16> = x.iter().map(|v| f16::from_f32(v.to_f32() * 2.0)).collect();
    assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
}

#[test]
fn one_symbol_across_the_graph() {
    assert_eq!(Unified::SYMBOLS, &["B"]);
    let m = Unified::new().unwrap();
    let p = m.randomize_params(0);
    let a = Array2::<f32>::ones((3, 3));
    let b = Array2::<f32>::zeros((3, 4));
    let c = Array2::<f32>::from_elem((7, 2), 0.5);
    let o = m
        .evaluate(
            &p,
            UnifiedInputs {
                a: a.view(),
                b: b.view(),
                c: c.view(),
            },
        )
        .unwrap();
    assert_eq!(o.joined.shape(), &[3, 7]);
    assert_eq!(
        o.joined.row(0).to_vec(),
        vec![1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    );
    // `_` is independent of B
    assert_eq!(o.rows.to_vec(), vec![1.0; 7]);
    // the same B must bind both a and b
    let b5 = Array2::<f32>::zeros((5, 4));
    let e = m
        .evaluate(
            &p,
            UnifiedInputs {
                a: a.view(),
                b: b5.view(),
                c: c.view(),
            },
        )
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Shape { .. }), "{msg}");
    assert!(msg.contains("input `b`") && msg.contains("B = 3"), "{msg}");
}

#[test]
fn rank_polymorphic_input_uses_ixdyn() {
    let m = Poly::new().unwrap();
    let p = m.randomize_params(3);
    let w = &p.fc.weight;
    let bias = &p.fc.bias;
    for shape in [vec![4], vec![3, 4], vec![2, 1, 3, 4]] {
        let n: usize = shape.iter().product();
        let x = ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|v| v as f32 * 0.1).collect())
            .unwrap();
        let view: ArrayViewD<f32> = x.view();
        let o = m.evaluate(&p, PolyInputs { x: view }).unwrap();
        let y: ArrayD<f32> = o.y;
        let mut out_shape = shape.clone();
        *out_shape.last_mut().unwrap() = 2;
        assert_eq!(y.shape(), &out_shape[..]);
        assert_eq!(o.s.shape(), &shape[..shape.len() - 1]);
        let xs: Vec<f32> = x.iter().copied().collect();
        for (r, row) in xs.chunks(4).enumerate() {
            for c in 0..2 {
                let want: f64 = bias[c] as f64
                    + (0..4)
                        .map(|k| row[k] as f64 * w[[c, k]] as f64)
                        .sum::<f64>();
                let got = y.as_slice().unwrap()[r * 2 + c] as f64;
                assert!(
                    (got - want).abs() < 1e-5,
                    "{shape:?} [{r},{c}]: {got} vs {want}"
                );
            }
            let want: f32 = row.iter().sum();
            assert!((o.s.as_slice().unwrap()[r] - want).abs() < 1e-5);
        }
    }
    // too few dims
    let x = ArrayD::<f32>::zeros(IxDyn(&[3]));
    assert!(m.evaluate(&p, PolyInputs { x: x.view() }).is_err());
}

#[test]
fn static_shapes_compile_option() {
    let m = TinyB4::new().unwrap();
    let p = m.randomize_params(0);
    assert!(TinyB4::SYMBOLS.is_empty(), "{:?}", TinyB4::SYMBOLS);
    assert!(TinyB4::SUMMARY.contains("f32[4, 3]"), "{}", TinyB4::SUMMARY);
    let x = Array2::<f32>::from_elem((4, 3), 1.0);
    let y = m.evaluate(&p, TinyB4Inputs { x: x.view() }).unwrap().y;
    assert_eq!(y.to_vec(), vec![6.0; 4]);
    let x5 = Array2::<f32>::from_elem((5, 3), 1.0);
    let e = m.evaluate(&p, TinyB4Inputs { x: x5.view() }).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }));
    let msg = e.to_string();
    assert!(msg.contains("f32[4, 3]") && msg.contains("[5, 3]"), "{msg}");
    // the dynamic original still takes any batch
    let y = Tiny::new()
        .unwrap()
        .evaluate(
            &Tiny::new().unwrap().randomize_params(0),
            TinyInputs { x: x5.view() },
        )
        .unwrap()
        .y;
    assert_eq!(y.len(), 5);
    // shapes: without static_shapes, a partially fixed shape
    let m = TinyFixedB::new().unwrap();
    let p = m.randomize_params(0);
    let x2 = Array2::<f32>::from_elem((2, 3), 0.5);
    assert_eq!(
        m.evaluate(&p, TinyFixedBInputs { x: x2.view() })
            .unwrap()
            .y
            .to_vec(),
        vec![3.0; 2]
    );
    assert!(m.evaluate(&p, TinyFixedBInputs { x: x.view() }).is_err());
}

#[test]
fn multi_output_submodels() {
    let m = UsesTwoOut::new().unwrap();
    let p = m.randomize_params(0);
    let x = Array2::from_shape_vec((2, 3), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let y = Array2::from_shape_vec((2, 3), vec![0.5f32, -1.0, 2.0, 8.0, 0.0, -6.0]).unwrap();
    let o = m
        .evaluate(
            &p,
            UsesTwoOutInputs {
                x: x.view(),
                y: y.view(),
            },
        )
        .unwrap();
    let want_prod: Vec<f32> = x.iter().zip(&y).map(|(a, b)| (a + b) * (a - b)).collect();
    assert_eq!(o.prod.iter().copied().collect::<Vec<_>>(), want_prod);
    let want_diff: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
    assert_eq!(o.only_diff.iter().copied().collect::<Vec<_>>(), want_diff);
    assert_eq!(o.second.iter().copied().collect::<Vec<_>>(), want_diff);
    // named terminals: a = y, b = x -> diff = y - x
    let want_named: Vec<f32> = x.iter().zip(&y).map(|(a, b)| b - a).collect();
    assert_eq!(o.named.iter().copied().collect::<Vec<_>>(), want_named);

    // a model with several outputs on its own
    let m = TwoOut::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            TwoOutInputs {
                a: x.view(),
                b: y.view(),
            },
        )
        .unwrap();
    let s: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
    assert_eq!(o.sum.iter().copied().collect::<Vec<_>>(), s);
    assert_eq!(o.diff.iter().copied().collect::<Vec<_>>(), want_diff);
}

#[test]
fn compile_time_if_and_for() {
    let x = Array2::from_shape_vec((2, 4), (0..8).map(|v| v as f32).collect()).unwrap();
    // the default physical model of Stack: depth 3, no doubling
    let m = Stack::new().unwrap();
    let y = m
        .evaluate(&m.randomize_params(0), StackInputs { x: x.view() })
        .unwrap()
        .y;
    assert_eq!(y, x.mapv(|v| v + 3.0));
    let m = UsesStack::new().unwrap();
    let o = m
        .evaluate(&m.randomize_params(0), UsesStackInputs { x: x.view() })
        .unwrap();
    assert_eq!(o.plain, x.mapv(|v| v + 3.0));
    assert_eq!(o.two, x.mapv(|v| v + 2.0));
    assert_eq!(o.doubled, x.mapv(|v| (v + 1.0) * 2.0));
    assert_eq!(o.negated, x.mapv(|v| -(v + 5.0)));
    assert_eq!(o.scaled, x.mapv(|v| v * 2.0 * 3.0 * 0.5));
}

#[test]
fn loop_over_a_list_hyperparameter_builds_layers() {
    let m = Widths::new().unwrap();
    let p = m.randomize_params(4);
    assert_eq!(p.names().len(), 4, "{:?}", p.names());
    let mut shapes = vec![];
    p.visit(&mut |_, t| shapes.push(t.shape().to_vec()));
    assert_eq!(shapes, vec![vec![5, 4], vec![5], vec![3, 5], vec![3]]);
    let x =
        Array2::from_shape_vec((2, 4), (0..8).map(|v| v as f32 * 0.25 - 1.0).collect()).unwrap();
    let o = m.evaluate(&p, WidthsInputs { x: x.view() }).unwrap();
    assert_eq!(o.y.shape(), &[2, 3]);
    let n: Vec<f32> = x.rows().into_iter().map(|r| r.sum() * 2.0).collect();
    assert_eq!(o.n.to_vec(), n);
    // reference forward pass with the visited weights
    let mut ws: Vec<Vec<f64>> = vec![];
    p.visit(&mut |_, t| {
        if let mithril::rt::TensorView::F32(a) = t {
            ws.push(a.iter().map(|&v| v as f64).collect())
        }
    });
    let mut h: Vec<Vec<f64>> = x
        .rows()
        .into_iter()
        .map(|r| r.iter().map(|&v| v as f64).collect())
        .collect();
    for (l, (din, dout)) in [(4usize, 5usize), (5, 3)].into_iter().enumerate() {
        h = h
            .iter()
            .map(|row| {
                (0..dout)
                    .map(|o| {
                        let s: f64 = ws[2 * l + 1][o]
                            + (0..din)
                                .map(|k| row[k] * ws[2 * l][o * din + k])
                                .sum::<f64>();
                        s.max(0.0)
                    })
                    .collect()
            })
            .collect();
    }
    for (r, row) in h.iter().enumerate() {
        for (c, want) in row.iter().enumerate() {
            assert!((o.y[[r, c]] as f64 - want).abs() < 1e-5);
        }
    }
}

#[test]
fn generated_types_have_declared_ranks() {
    // inputs are views of the declared rank, outputs owned arrays
    fn takes(_: UsesTwoOutInputs<'_>) {}
    let a = Array2::<f32>::zeros((1, 3));
    let v: ArrayView2<f32> = a.view();
    takes(UsesTwoOutInputs { x: v, y: v });
    let o = Tiny::new()
        .unwrap()
        .evaluate(
            &Tiny::new().unwrap().randomize_params(0),
            TinyInputs { x: a.view() },
        )
        .unwrap();
    let _: Array<f32, Ix1> = o.y;
    let _ = Array3::<f32>::zeros((1, 1, 1));
}

mithril! {
    /// Products whose weight is a param, in every form `prepare` packs: a 3-D and a 2-D left
    /// operand, the weight read transposed (`Linear`) and as is, with a fused epilogue (bias +
    /// GELU, `tanh`) and without.
    model Packy {
        input x: [B, S, 64];
        input z: [N, 64];
        param w: [64, 128];
        param u: [128, 128];
        let h = gelu(Linear(128)(x), approximate = "tanh");
        output y1 = matmul(h, u);
        output y2 = Linear(96, use_bias = false)(z);
        output y3 = tanh(matmul(z, w));
    }
    compile PackyBf16 = Packy { dtype: bf16 };
}

/// The bytes of an array (bitwise comparison, signed zeros and NaN payloads included).
fn raw_bytes<T: Copy, D: ndarray::Dimension>(a: &Array<T, D>) -> Vec<u8> {
    let s = a.as_slice().unwrap();
    // SAFETY: plain number types, read as bytes
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
        .to_vec()
}

#[test]
fn prepared_params_give_bitwise_the_results_of_evaluate() {
    use mithril::rt::threads::prepacked_calls;
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PackyPrepared>();
    send_sync::<PackyBf16Prepared>();
    let x = Array3::from_shape_fn((2, 32, 64), |(a, b, c)| {
        ((a * 31 + b * 7 + c) as f32 * 0.13).sin()
    });
    let z = Array2::from_shape_fn((120, 64), |(a, c)| ((a * 5 + c) as f32 * 0.29).cos());
    let m = Packy::new().unwrap();
    let mut p = m.randomize_params(3);
    let prep = m.prepare(&p).unwrap();
    assert_eq!(
        prep.packed(),
        ["w", "u", "linear_0.weight", "linear_1.weight"]
    );
    assert!(prep.packed_bytes() >= 4 * (64 * 128 + 128 * 128 + 128 * 64 + 96 * 64));
    let run = |prepared: Option<&PackyPrepared>, p: &PackyParams| {
        let i = PackyInputs {
            x: x.view(),
            z: z.view(),
        };
        let before = prepacked_calls();
        let o = match prepared {
            Some(q) => m.evaluate_prepared(q, i).unwrap(),
            None => m.evaluate(p, i).unwrap(),
        };
        (
            [raw_bytes(&o.y1), raw_bytes(&o.y2), raw_bytes(&o.y3)],
            prepacked_calls() - before,
        )
    };
    let (want, n0) = run(None, &p);
    let (got, n1) = run(Some(&prep), &p);
    assert_eq!(n0, 0);
    // all four products read their weight packed (each takes the GEMM's packed path here:
    // more than 4 rows, and above the small path's volume for the one read as is)
    assert_eq!(n1, 4);
    assert!(want == got, "f32: prepared results differ from evaluate");
    // a prepared value keeps the params it was made from: changing the params changes
    // `evaluate`, not it; preparing again follows them
    p.u.mapv_inplace(|v| v * 0.5 + 0.01);
    let (changed, _) = run(None, &p);
    assert!(changed != want);
    assert!(run(Some(&prep), &p).0 == want);
    let prep2 = m.prepare(&p).unwrap();
    assert!(run(Some(&prep2), &p).0 == changed);

    // bf16: the same products stored narrow
    let mb = PackyBf16::new().unwrap();
    let pb = mb.randomize_params(4);
    let (xb, zb) = (
        x.mapv(mithril::half::bf16::from_f32),
        z.mapv(mithril::half::bf16::from_f32),
    );
    let ib = || PackyBf16Inputs {
        x: xb.view(),
        z: zb.view(),
    };
    let ob = mb.evaluate(&pb, ib()).unwrap();
    let prepb = mb.prepare(&pb).unwrap();
    let before = prepacked_calls();
    let qb = mb.evaluate_prepared(&prepb, ib()).unwrap();
    assert_eq!(prepacked_calls() - before, 4);
    assert_eq!(raw_bytes(&ob.y1), raw_bytes(&qb.y1));
    assert_eq!(raw_bytes(&ob.y2), raw_bytes(&qb.y2));
    assert_eq!(raw_bytes(&ob.y3), raw_bytes(&qb.y3));
}

mithril! {
    /// A model with buffers (batch norm's running statistics) and a mode (dropout, batch
    /// norm): `prepare` packs its two `Linear` weights, `evaluate_prepared` runs in evaluation
    /// mode.
    model PackyBn {
        input x: f32[B, 64];
        let bn = BatchNorm1d()(Linear(128)(x));
        let h = Dropout(p = 0.25)(relu(bn));
        output y = Linear(32)(h);
    }
    /// A mode but no buffers.
    model PackyDrop {
        input x: f32[B, 64];
        output y = Linear(48)(Dropout(p = 0.5)(x));
    }
}

#[test]
fn models_with_buffers_and_modes_prepare_too() {
    use mithril::rt::Mode;
    use mithril::rt::threads::prepacked_calls;
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PackyBnPrepared>();
    let x = Array2::from_shape_fn((40, 64), |(a, c)| ((a * 7 + c) as f32 * 0.17).sin());
    let m = PackyBn::new().unwrap();
    let mut p = m.randomize_params(5);
    let i = || PackyBnInputs { x: x.view() };
    // two training calls move the running statistics away from their initial values
    for s in 0..2 {
        m.evaluate_mode(&mut p, i(), Mode::TrainSeeded(s)).unwrap();
    }
    assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), 2);
    let prep = m.prepare(&p).unwrap();
    assert_eq!(prep.packed(), ["linear_0.weight", "linear_1.weight"]);
    let want = m.evaluate(&p, i()).unwrap().y;
    let before = prepacked_calls();
    let got = m.evaluate_prepared(&prep, i()).unwrap().y;
    assert_eq!(prepacked_calls() - before, 2);
    // evaluation mode with the prepared copy's running statistics, bit for bit
    assert_eq!(raw_bytes(&want), raw_bytes(&got));
    // a training call still updates the params' buffers, not the prepared copy
    m.evaluate_mode(&mut p, i(), Mode::TrainSeeded(9)).unwrap();
    assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), 3);
    assert_eq!(
        prep.params().bn.num_batches_tracked.clone().into_scalar(),
        2
    );
    assert!(raw_bytes(&m.evaluate(&p, i()).unwrap().y) != raw_bytes(&got));
    assert_eq!(
        raw_bytes(&m.evaluate_prepared(&prep, i()).unwrap().y),
        raw_bytes(&got)
    );

    let d = PackyDrop::new().unwrap();
    let pd = d.randomize_params(6);
    let id = || PackyDropInputs { x: x.view() };
    let prep = d.prepare(&pd).unwrap();
    let before = prepacked_calls();
    let got = d.evaluate_prepared(&prep, id()).unwrap().y;
    assert_eq!(prepacked_calls() - before, 1);
    assert_eq!(
        raw_bytes(&d.evaluate(&pd, id()).unwrap().y),
        raw_bytes(&got)
    );
    // dropout stays a training-mode thing: evaluation is the identity, training is not
    let t = d.evaluate_mode(&pd, id(), Mode::TrainSeeded(1)).unwrap().y;
    assert!(raw_bytes(&t) != raw_bytes(&got));
}
