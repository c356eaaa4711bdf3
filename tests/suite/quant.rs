//! `quantization: int8`: the int8 products against a naive reference written here (weights
//! quantized per output channel, activations per tensor, `i32` sums, dequantized, then bias and
//! activation in f32), static scales from calibration, the safetensors form, and the top-1
//! accuracy of a trained classifier against its f32 model.

use mithril::prelude::*;
use mithril::rt::ParamTree;
use mithril::rt::optim::{Adam, Optimizer};
use ndarray::{Array1, Array2};

mithril! {
    model Net {
        input x: f32[B, 21];
        let h = relu(Linear(35)(x));
        output y = Linear(6)(h);
    }
    compile NetQ = Net { quantization: int8 };
    compile NetQExplicitNone = Net { quantization: none };
    compile NetQMobile = Net {
        target_hardware: "mobile",
        mobile: { platform: linux, quantization: int8 },
    };

    model Spiral {
        input x: f32[B, 2];
        let h = tanh(Linear(64)(x));
        let h = relu(Linear(64)(h));
        output logits = Linear(2)(h);
    }
    train SpiralTrain {
        input x: f32[B, 2];
        input label: i64[B];
        let h = tanh(Linear(64)(x));
        let h = relu(Linear(64)(h));
        output logits = Linear(2)(h);
        loss cross_entropy(logits, label).mean();
    }
    compile SpiralQ = Spiral { quantization: int8 };

    train DigitsMlpTrain {
        input x: f32[B, 64];
        input label: i64[B];
        let h = relu(Linear(128)(x));
        let h = relu(Linear(64)(h));
        output logits = Linear(10)(h);
        loss cross_entropy(logits, label).mean();
    }
    model DigitsMlp {
        input x: f32[B, 64];
        let h = relu(Linear(128)(x));
        let h = relu(Linear(64)(h));
        output logits = Linear(10)(h);
    }
    compile DigitsMlpQ = DigitsMlp { quantization: int8 };
}

fn data(rows: usize, cols: usize, seed: u64, scale: f32) -> Array2<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32 * scale
    })
}

/// The test's own int8 rule: `round_ties_even(x · 127 / max)` clamped to ±127.
fn q(x: f32, inv: f32) -> i32 {
    ((x * inv).round_ties_even()).clamp(-127.0, 127.0) as i32
}

/// One `Linear` layer, int8: `W[n, k]` per output row, `x` per tensor with multiplier `inv`
/// and scale `sa`, then `+ b`.
fn qlinear(x: &Array2<f32>, w: &Array2<f32>, b: &Array1<f32>, inv: f32, sa: f32) -> Array2<f32> {
    let (m, k, n) = (x.nrows(), x.ncols(), w.nrows());
    Array2::from_shape_fn((m, n), |(i, j)| {
        let wmax = (0..k).map(|p| w[[j, p]].abs()).fold(0f32, f32::max);
        let acc: i32 = (0..k)
            .map(|p| q(x[[i, p]], inv) * q(w[[j, p]], 127.0 / wmax))
            .sum();
        acc as f32 * (sa * (wmax / 127.0)) + b[j]
    })
}

fn dynamic(x: &Array2<f32>) -> (f32, f32) {
    let m = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    (127.0 / m, m / 127.0)
}

fn reference(p: &NetQParams, x: &Array2<f32>, scales: Option<[(f32, f32); 2]>) -> Array2<f32> {
    let w1 = p.linear_0.weight.clone();
    let w2 = p.linear_1.weight.clone();
    let (i1, s1) = scales.map_or_else(|| dynamic(x), |s| s[0]);
    let h = qlinear(x, &w1, &p.linear_0.bias, i1, s1).mapv(|v| v.max(0.0));
    let (i2, s2) = scales.map_or_else(|| dynamic(&h), |s| s[1]);
    qlinear(&h, &w2, &p.linear_1.bias, i2, s2)
}

fn max_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn int8_products_match_the_naive_reference() {
    let m = NetQ::new().unwrap();
    let p = m.randomize_params(3);
    let qp = m.quantize(&p).unwrap();
    assert_eq!(qp.quantized(), ["linear_0.weight", "linear_1.weight"]);
    assert!(!qp.is_static());
    for rows in [1usize, 5, 17] {
        let x = data(rows, 21, rows as u64, 2.0);
        let got = m
            .evaluate_quantized(&qp, NetQInputs { x: x.view() })
            .unwrap()
            .y;
        let want = reference(&p, &x, None);
        let f32_out = m.evaluate(&p, NetQInputs { x: x.view() }).unwrap().y;
        // the same integer sums and scales; only the f32 order of the last few operations may
        // differ from the reference's
        let tol = 1e-5 * want.iter().fold(1f32, |a, v| a.max(v.abs()));
        assert!(max_diff(&got, &want) <= tol, "rows {rows}: {got} vs {want}");
        // ... and it is not the f32 model
        assert!(
            max_diff(&got, &f32_out) > 1e-5,
            "rows {rows}: the int8 path did not run"
        );
        assert!(max_diff(&got, &f32_out) < 0.05 * f32_out.iter().fold(0f32, |a, v| a.max(v.abs())));
    }
    // the stored int8 weights are the per-row rule
    let (shape, w8, scales) = qp.weight("linear_0.weight").unwrap();
    assert_eq!(shape, [35, 21]);
    let w = &p.linear_0.weight;
    for j in 0..35 {
        let wmax = w.row(j).iter().fold(0f32, |a, v| a.max(v.abs()));
        assert_eq!(scales[j], wmax / 127.0);
        for k in 0..21 {
            assert_eq!(i32::from(w8[j * 21 + k]), q(w[[j, k]], 127.0 / wmax));
        }
    }
    assert!(qp.weight("linear_0.bias").is_none());
    // `quantization: none` is the plain model
    let n = NetQExplicitNone::new().unwrap();
    let x = data(4, 21, 9, 1.0);
    let pn = n.randomize_params(3);
    let y = n
        .evaluate(&pn, NetQExplicitNoneInputs { x: x.view() })
        .unwrap()
        .y;
    let y32 = m.evaluate(&p, NetQInputs { x: x.view() }).unwrap().y;
    assert_eq!(y, y32);
}

#[test]
fn the_mobile_target_quantizes_like_the_top_level_option() {
    assert_eq!(
        NetQMobile::MOBILE,
        Some("linux arm64-v8a (aarch64-unknown-linux-gnu), quantization int8, optimize_size false")
    );
    let (m, mm) = (NetQ::new().unwrap(), NetQMobile::new().unwrap());
    let p = m.randomize_params(5);
    let pm = mm.randomize_params(5);
    assert_eq!(p.linear_0.weight, pm.linear_0.weight);
    let (qp, qpm) = (m.quantize(&p).unwrap(), mm.quantize(&pm).unwrap());
    assert_eq!(qpm.quantized(), ["linear_0.weight", "linear_1.weight"]);
    let x = data(7, 21, 11, 2.0);
    let got = mm
        .evaluate_quantized(&qpm, NetQMobileInputs { x: x.view() })
        .unwrap()
        .y;
    let want = m
        .evaluate_quantized(&qp, NetQInputs { x: x.view() })
        .unwrap()
        .y;
    assert_eq!(got, want);
}

#[test]
fn calibration_fixes_the_activation_scales() {
    let m = NetQ::new().unwrap();
    let p = m.randomize_params(5);
    let batches: Vec<Array2<f32>> = (0..3)
        .map(|b| data(8, 21, 40 + b, 1.0 + b as f32))
        .collect();
    let qp = m
        .calibrate(&p, batches.iter().map(|x| NetQInputs { x: x.view() }))
        .unwrap();
    assert!(qp.is_static());
    // the ranges: the input's over all batches, and the hidden layer's (in f32)
    let xmax = batches
        .iter()
        .flat_map(|x| x.iter())
        .fold(0f32, |a, v| a.max(v.abs()));
    let hmax = batches
        .iter()
        .map(|x| {
            let h = x.dot(&p.linear_0.weight.t()) + &p.linear_0.bias;
            h.iter().fold(0f32, |a, v| a.max(v.max(0.0)))
        })
        .fold(0f32, f32::max);
    let s0 = qp.input_scale("linear_0.weight").unwrap();
    let s1 = qp.input_scale("linear_1.weight").unwrap();
    assert_eq!(s0, xmax / 127.0);
    assert!(
        (s1 - hmax / 127.0).abs() <= 1e-6 * hmax,
        "{s1} vs {}",
        hmax / 127.0
    );
    // a small batch runs with those scales, not its own
    let x = data(3, 21, 99, 0.5);
    let got = m
        .evaluate_quantized(&qp, NetQInputs { x: x.view() })
        .unwrap()
        .y;
    let want = reference(&p, &x, Some([(1.0 / s0, s0), (1.0 / s1, s1)]));
    let tol = 1e-5 * want.iter().fold(1f32, |a, v| a.max(v.abs()));
    assert!(max_diff(&got, &want) <= tol, "{got} vs {want}");
    let dynamic = m
        .evaluate_quantized(&m.quantize(&p).unwrap(), NetQInputs { x: x.view() })
        .unwrap()
        .y;
    assert!(max_diff(&got, &dynamic) > 0.0);
    // no batch: an error, not a model without scales
    let none: Vec<NetQInputs<'_>> = Vec::new();
    let e = m.calibrate(&p, none).unwrap_err().to_string();
    assert!(e.contains("no batch"), "{e}");
}

fn header(bytes: &[u8]) -> String {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    String::from_utf8(bytes[8..8 + n].to_vec()).unwrap()
}

#[test]
fn quantized_params_save_and_load_with_their_scales() {
    let m = NetQ::new().unwrap();
    let p = m.randomize_params(11);
    let x = data(6, 21, 1, 1.5);
    for qp in [
        m.quantize(&p).unwrap(),
        m.calibrate(&p, [NetQInputs { x: x.view() }]).unwrap(),
    ] {
        let bytes = qp.to_safetensors_bytes().unwrap();
        let h = header(&bytes);
        for (name, dtype, shape) in [
            ("linear_0.weight", "I8", "[35,21]"),
            ("linear_0.weight_scale", "F32", "[35]"),
            ("linear_0.bias", "F32", "[35]"),
            ("linear_1.weight", "I8", "[6,35]"),
            ("linear_1.weight_scale", "F32", "[6]"),
        ] {
            let entry = format!("\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape}");
            assert!(h.contains(&entry), "{entry} not in {h}");
        }
        assert_eq!(h.contains("linear_0.weight_input_scale"), qp.is_static());
        assert!(h.contains("\"mithril.quantization\":\"int8\""));
        // about a quarter of the f32 weights' bytes
        assert!(bytes.len() < p.to_safetensors_bytes().unwrap().len() / 2);
        let dir = std::env::temp_dir().join(format!("mithril-quant-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(if qp.is_static() {
            "s.safetensors"
        } else {
            "d.safetensors"
        });
        qp.save_safetensors(&path).unwrap();
        let back = m.load_quantized(&path).unwrap();
        assert_eq!(back.is_static(), qp.is_static());
        assert_eq!(back.weight("linear_1.weight"), qp.weight("linear_1.weight"));
        assert_eq!(
            back.input_scale("linear_0.weight"),
            qp.input_scale("linear_0.weight")
        );
        // bitwise the same results
        let a = m
            .evaluate_quantized(&qp, NetQInputs { x: x.view() })
            .unwrap()
            .y;
        let b = m
            .evaluate_quantized(&back, NetQInputs { x: x.view() })
            .unwrap()
            .y;
        assert_eq!(a, b);
        // the loaded f32 params hold the dequantized weights; the others as saved
        let (_, w8, sc) = qp.weight("linear_0.weight").unwrap();
        assert_eq!(
            back.params().linear_0.weight[[2, 3]],
            f32::from(w8[2 * 21 + 3]) * sc[2]
        );
        assert_eq!(back.params().linear_0.bias, p.linear_0.bias);
        std::fs::remove_file(&path).unwrap();
    }
    // a plain f32 checkpoint loads too (quantized on load)
    let dir = std::env::temp_dir().join(format!("mithril-quant-f-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("f32.safetensors");
    p.save_safetensors(&path).unwrap();
    let back = m.load_quantized(&path).unwrap();
    assert_eq!(
        back.weight("linear_0.weight"),
        m.quantize(&p).unwrap().weight("linear_0.weight")
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_quantized_files_are_errors_naming_the_tensor() {
    let m = NetQ::new().unwrap();
    let p = m.randomize_params(2);
    let bytes = m.quantize(&p).unwrap().to_safetensors_bytes().unwrap();
    let dir = std::env::temp_dir().join(format!("mithril-quant-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // the scales of a weight renamed away
    let h = header(&bytes);
    let broken = h.replace("linear_1.weight_scale", "linear_1.weight_scalX");
    let mut b2 = bytes.clone();
    b2[8..8 + h.len()].copy_from_slice(broken.as_bytes());
    let path = dir.join("noscale.safetensors");
    std::fs::write(&path, &b2).unwrap();
    let e = m.load_quantized(&path).unwrap_err().to_string();
    assert!(
        e.contains("linear_1.weight_scale") && e.contains("missing"),
        "{e}"
    );
    // a missing file names its path
    let e = m
        .load_quantized(dir.join("nope.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.safetensors"), "{e}");
    // a wrong input shape is the usual shape error
    let x = data(2, 20, 1, 1.0);
    let e = m
        .evaluate_quantized(&m.quantize(&p).unwrap(), NetQInputs { x: x.view() })
        .unwrap_err()
        .to_string();
    assert!(e.contains("21") && e.contains("20"), "{e}");
}

/// Two interleaved spirals (the data of examples/train_mlp.rs).
fn spirals(n: usize, seed: u64) -> (Array2<f32>, Array1<i64>) {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut x = Array2::<f32>::zeros((2 * n, 2));
    let mut y = Array1::<i64>::zeros(2 * n);
    for i in 0..2 * n {
        let class = i % 2;
        let t = rnd() * 3.0 * std::f64::consts::PI;
        let r = 0.15 + t / (3.0 * std::f64::consts::PI);
        let a = t + class as f64 * std::f64::consts::PI;
        x[[i, 0]] = (r * a.cos() + 0.02 * (rnd() - 0.5)) as f32;
        x[[i, 1]] = (r * a.sin() + 0.02 * (rnd() - 0.5)) as f32;
        y[i] = class as i64;
    }
    (x, y)
}

fn top1(logits: &Array2<f32>, y: &Array1<i64>) -> f64 {
    let ok = logits
        .rows()
        .into_iter()
        .zip(y)
        .filter(|(r, t)| i64::from(r[1] > r[0]) == **t)
        .count();
    ok as f64 / y.len() as f64
}

#[test]
fn trained_classifier_keeps_its_accuracy_in_int8() {
    // a shorter run of examples/train_mlp.rs (25 epochs instead of 60)
    let (xt, yt) = spirals(1000, 1);
    let (xv, yv) = spirals(500, 2);
    let train = SpiralTrain::new().unwrap();
    let mut tp = train.randomize_params(7);
    let mut opt = Adam::new(0.01);
    for epoch in 0..25usize {
        let stride = [7usize, 11, 13][epoch % 3];
        let order: Vec<usize> = (0..xt.nrows())
            .map(|i| (i * stride + epoch) % xt.nrows())
            .collect();
        for chunk in order.chunks(100) {
            let xb = Array2::from_shape_fn((chunk.len(), 2), |(i, j)| xt[[chunk[i], j]]);
            let yb = Array1::from_iter(chunk.iter().map(|&i| yt[i]));
            let (_, g) = train
                .evaluate_gradients(
                    &tp,
                    SpiralTrainInputs {
                        x: xb.view(),
                        label: yb.view(),
                    },
                )
                .unwrap();
            opt.step(&mut tp, &g).unwrap();
        }
    }
    let m = SpiralQ::new().unwrap();
    let mut p = m.randomize_params(0);
    p.load_safetensors_bytes(&tp.to_safetensors_bytes().unwrap())
        .unwrap();
    let acc32 = top1(
        &m.evaluate(&p, SpiralQInputs { x: xv.view() })
            .unwrap()
            .logits,
        &yv,
    );
    let dynq = m.quantize(&p).unwrap();
    let acc8 = top1(
        &m.evaluate_quantized(&dynq, SpiralQInputs { x: xv.view() })
            .unwrap()
            .logits,
        &yv,
    );
    let cal = m
        .calibrate(
            &p,
            xt.axis_chunks_iter(ndarray::Axis(0), 500)
                .map(|x| SpiralQInputs { x }),
        )
        .unwrap();
    let acc8s = top1(
        &m.evaluate_quantized(&cal, SpiralQInputs { x: xv.view() })
            .unwrap()
            .logits,
        &yv,
    );
    mithril_say(&format!(
        "spirals (25 epochs): top-1 f32 {:.1}%, int8 dynamic {:.1}%, int8 calibrated {:.1}%",
        100.0 * acc32,
        100.0 * acc8,
        100.0 * acc8s
    ));
    assert!(acc32 > 0.9, "the f32 model did not train: {acc32}");
    assert!(
        (acc32 - acc8).abs() <= 0.01,
        "dynamic int8 {acc8} vs f32 {acc32}"
    );
    assert!(
        (acc32 - acc8s).abs() <= 0.01,
        "calibrated int8 {acc8s} vs f32 {acc32}"
    );
}

fn mithril_say(s: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{s}");
}

/// Top-1 over 10 classes.
fn top1_of_10(logits: &Array2<f32>, y: &[i64]) -> f64 {
    let ok = logits
        .rows()
        .into_iter()
        .zip(y)
        .filter(|(r, t)| (0..10).fold(0, |b, j| if r[j] > r[b] { j } else { b }) as i64 == **t)
        .count();
    ok as f64 / y.len() as f64
}

#[test]
fn digits_mlp_keeps_its_accuracy_in_int8() {
    // the 8x8 digits of examples/train_cnn.rs: every fifth image held out
    const RAW: &[u8] = include_bytes!("../../examples/data/digits.bin");
    let n = RAW.len() / 65;
    let img = |i: usize| (0..64).map(move |k| f32::from(RAW[i * 65 + 1 + k]) / 16.0);
    let (train_i, test_i): (Vec<usize>, Vec<usize>) = (0..n).partition(|i| i % 5 != 0);
    let rows = |idx: &[usize]| {
        Array2::from_shape_vec((idx.len(), 64), idx.iter().flat_map(|&i| img(i)).collect()).unwrap()
    };
    let labels = |idx: &[usize]| {
        idx.iter()
            .map(|&i| i64::from(RAW[i * 65]))
            .collect::<Vec<_>>()
    };
    let (xt, yt) = (rows(&train_i), labels(&train_i));
    let (xv, yv) = (rows(&test_i), labels(&test_i));
    let train = DigitsMlpTrain::new().unwrap();
    let mut tp = train.randomize_params(3);
    let mut opt = Adam::new(0.003);
    for epoch in 0..8usize {
        let stride = [7usize, 11, 13][epoch % 3];
        let order: Vec<usize> = (0..xt.nrows())
            .map(|i| (i * stride + epoch) % xt.nrows())
            .collect();
        for chunk in order.chunks(32) {
            let xb = Array2::from_shape_fn((chunk.len(), 64), |(i, j)| xt[[chunk[i], j]]);
            let yb = Array1::from_iter(chunk.iter().map(|&i| yt[i]));
            let (_, g) = train
                .evaluate_gradients(
                    &tp,
                    DigitsMlpTrainInputs {
                        x: xb.view(),
                        label: yb.view(),
                    },
                )
                .unwrap();
            opt.step(&mut tp, &g).unwrap();
        }
    }
    let m = DigitsMlpQ::new().unwrap();
    let mut p = m.randomize_params(0);
    p.load_safetensors_bytes(&tp.to_safetensors_bytes().unwrap())
        .unwrap();
    let inputs = || DigitsMlpQInputs { x: xv.view() };
    let acc32 = top1_of_10(&m.evaluate(&p, inputs()).unwrap().logits, &yv);
    let dynq = m.quantize(&p).unwrap();
    let acc8 = top1_of_10(&m.evaluate_quantized(&dynq, inputs()).unwrap().logits, &yv);
    let cal = m
        .calibrate(
            &p,
            xt.slice(ndarray::s![..256, ..])
                .axis_chunks_iter(ndarray::Axis(0), 64)
                .map(|x| DigitsMlpQInputs { x }),
        )
        .unwrap();
    let acc8s = top1_of_10(&m.evaluate_quantized(&cal, inputs()).unwrap().logits, &yv);
    mithril_say(&format!(
        "digits MLP 64-128-64-10 (8 epochs): top-1 f32 {:.1}%, int8 dynamic {:.1}%, int8 calibrated {:.1}%",
        100.0 * acc32,
        100.0 * acc8,
        100.0 * acc8s
    ));
    assert!(acc32 > 0.93, "the f32 model did not train: {acc32}");
    assert!(
        (acc32 - acc8).abs() <= 0.01,
        "dynamic int8 {acc8} vs f32 {acc32}"
    );
    assert!(
        (acc32 - acc8s).abs() <= 0.01,
        "calibrated int8 {acc8s} vs f32 {acc32}"
    );
}

mithril! {
    /// A chain of products in every form the small-batch fast path takes: bias + activation,
    /// neither, an activation alone, a bias alone.
    model Chain {
        input x: f32[B, 33];
        let h = relu(Linear(40)(x));
        let h = Linear(24, use_bias = false)(h);
        let h = tanh(Linear(17, use_bias = false)(h));
        output y = Linear(9)(h);
    }
    compile ChainBf16 = Chain { dtype: bf16, types: { x: bf16 } };
    compile ChainQ = Chain { quantization: int8 };
}

/// Runs `f` with the chain fast path off, then on (twice: the recording call and a planned
/// one), asserting bitwise equal results and that the fast path ran.
fn same_bits_both_paths<T: Copy + PartialEq + std::fmt::Debug>(
    what: &str,
    f: impl Fn() -> Array2<T>,
) {
    use mithril::rt::plan::{chain_runs, set_chains};
    set_chains(false);
    let before = chain_runs();
    let generic = f();
    let generic2 = f();
    assert_eq!(
        chain_runs(),
        before,
        "{what}: the generic path took the chain"
    );
    set_chains(true);
    let fast = f();
    let fast2 = f();
    assert_eq!(
        chain_runs(),
        before + 2,
        "{what}: the chain fast path did not run"
    );
    // `PartialEq` of the element types here (no NaN in these outputs) is bitwise equality up
    // to signed zeros; compare the bytes too
    let bytes = |a: &Array2<T>| -> Vec<u8> {
        let s = a.as_slice().unwrap();
        // SAFETY: plain number types, read as bytes
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
            .to_vec()
    };
    assert_eq!(generic, generic2, "{what}");
    assert_eq!(
        bytes(&generic),
        bytes(&fast),
        "{what}: {generic:?} vs {fast:?}"
    );
    assert_eq!(bytes(&generic), bytes(&fast2), "{what}");
}

#[test]
fn a_chain_of_products_runs_bitwise_as_the_generic_executor() {
    let m32 = Chain::new().unwrap();
    let m16 = ChainBf16::new().unwrap();
    let mq = ChainQ::new().unwrap();
    let p32 = m32.randomize_params(5);
    let p16 = m16.randomize_params(5);
    let pq = mq.randomize_params(5);
    let dynamic = mq.quantize(&pq).unwrap();
    assert_eq!(dynamic.quantized().len(), 4);
    let calib = data(8, 33, 77, 1.5);
    let fixed = mq
        .calibrate(&pq, [ChainQInputs { x: calib.view() }])
        .unwrap();
    assert!(fixed.is_static());
    for rows in [1usize, 2, 13] {
        let x = data(rows, 33, rows as u64 + 40, 2.0);
        let x16 = x.mapv(mithril::half::bf16::from_f32);
        same_bits_both_paths(&format!("f32, {rows} rows"), || {
            m32.evaluate(&p32, ChainInputs { x: x.view() }).unwrap().y
        });
        same_bits_both_paths(&format!("bf16, {rows} rows"), || {
            m16.evaluate(&p16, ChainBf16Inputs { x: x16.view() })
                .unwrap()
                .y
        });
        same_bits_both_paths(&format!("int8 dynamic, {rows} rows"), || {
            mq.evaluate_quantized(&dynamic, ChainQInputs { x: x.view() })
                .unwrap()
                .y
        });
        same_bits_both_paths(&format!("int8 static, {rows} rows"), || {
            mq.evaluate_quantized(&fixed, ChainQInputs { x: x.view() })
                .unwrap()
                .y
        });
        // the f32 model of the int8 one, and a transposed (strided) input
        let xt = x.t().to_owned();
        same_bits_both_paths(
            &format!("f32 of the int8 model, strided, {rows} rows"),
            || mq.evaluate(&pq, ChainQInputs { x: xt.t() }).unwrap().y,
        );
    }
}

mithril! {
    model Up {
        input x: f32[B, 4, 5, 6];
        input z: f32[B, 4, 7];
        param k: f32[4, 3, 3, 3];
        param k1: f32[4, 1, 3];
        output y = conv_transpose2d(x, k, stride = 2, padding = 1, output_padding = 1);
        output y1 = conv_transpose1d(z, k1, stride = 1, padding = 1, groups = 2);
    }
    compile UpQ = Up { quantization: int8 };
}

/// `conv_transpose2d` of `x` `[N, Ci, H, W]` with `w` `[Ci, Co/groups, kh, kw]` (no dilation;
/// output padding: `out` larger), each term `x · w · scale(co)` summed in f64, and the sum of
/// the terms' magnitudes.
fn tconv_ref(
    x: &ndarray::ArrayD<f64>,
    w: &ndarray::ArrayD<f64>,
    scale: &[f64],
    stride: [usize; 2],
    pad: [usize; 2],
    groups: usize,
    out: [usize; 2],
) -> (ndarray::Array4<f64>, ndarray::Array4<f64>) {
    let (n, ci, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (cog, kh, kw) = (w.shape()[1], w.shape()[2], w.shape()[3]);
    let cig = ci / groups;
    let mut y = ndarray::Array4::<f64>::zeros((n, cog * groups, out[0], out[1]));
    let mut mag = y.clone();
    for b in 0..n {
        for i in 0..ci {
            let gr = i / cig;
            for ih in 0..h {
                for iw in 0..wd {
                    for cl in 0..cog {
                        let co = gr * cog + cl;
                        for ti in 0..kh {
                            for tj in 0..kw {
                                let oh = (ih * stride[0] + ti) as i64 - pad[0] as i64;
                                let ow = (iw * stride[1] + tj) as i64 - pad[1] as i64;
                                if oh < 0 || ow < 0 || oh >= out[0] as i64 || ow >= out[1] as i64 {
                                    continue;
                                }
                                let t = x[[b, i, ih, iw]] * w[[i, cl, ti, tj]] * scale[co];
                                y[[b, co, oh as usize, ow as usize]] += t;
                                mag[[b, co, oh as usize, ow as usize]] += t.abs();
                            }
                        }
                    }
                }
            }
        }
    }
    (y, mag)
}

/// Transposed convolutions under `quantization: int8`: the weight `[Ci, Co/groups, *k]` in int8
/// per output channel (`scale[co] = max |w[·, co, ·]| / 127` over its group), the input per
/// tensor; the result against the integers' products summed here in f64 (to f32 rounding), near
/// the f32 model, saved and loaded with its scales (bitwise the same results), calibrated.
#[test]
fn transposed_convolutions_run_in_int8() {
    let m = UpQ::new().unwrap();
    let p = m.randomize_params(5);
    let x = ndarray::Array4::from_shape_fn((2, 4, 5, 6), |(a, b, c, d)| {
        ((a * 131 + b * 31 + c * 7 + d * 3) % 17) as f32 * 0.25 - 2.0
    });
    let z = ndarray::Array3::from_shape_fn((2, 4, 7), |(a, b, c)| {
        ((a * 13 + b * 5 + c * 3) % 11) as f32 * 0.3 - 1.5
    });
    let inputs = || UpQInputs {
        x: x.view(),
        z: z.view(),
    };
    let q = m.quantize(&p).unwrap();
    assert_eq!(q.quantized(), ["k", "k1"]);
    let f32_out = m.evaluate(&p, inputs()).unwrap();
    let out = m.evaluate_quantized(&q, inputs()).unwrap();
    let to64 = |a: ndarray::ArrayViewD<'_, f32>| a.mapv(f64::from);
    for (name, xin, yq, y32, groups, stride, expand) in [
        (
            "k",
            x.view().into_dyn(),
            out.y.view().into_dyn(),
            f32_out.y.view().into_dyn(),
            1,
            2,
            false,
        ),
        (
            "k1",
            z.view().into_dyn(),
            out.y1.view().into_dyn(),
            f32_out.y1.view().into_dyn(),
            2,
            1,
            true,
        ),
    ] {
        let (shape, w8, sc) = q.weight(name).unwrap();
        let co = yq.shape()[1];
        assert_eq!(sc.len(), co, "{name}: one scale per output channel");
        // the scales and int8 values from the definition
        let wf: Vec<f32> = if name == "k" {
            p.k.iter().copied().collect()
        } else {
            p.k1.iter().copied().collect()
        };
        let (cog, taps) = (shape[1], shape[2..].iter().product::<usize>());
        let og = shape[0] / groups;
        for (c, &scale) in sc.iter().enumerate() {
            let (gr, cl) = (c / cog, c % cog);
            let mut mx = 0f32;
            for o in gr * og..(gr + 1) * og {
                for t in 0..taps {
                    mx = mx.max(wf[(o * cog + cl) * taps + t].abs());
                }
            }
            assert_eq!(scale, mx / 127.0, "{name} scale {c}");
            for o in gr * og..(gr + 1) * og {
                for t in 0..taps {
                    let i = (o * cog + cl) * taps + t;
                    let want = (wf[i] * (127.0 / mx))
                        .round_ties_even()
                        .clamp(-127.0, 127.0);
                    assert_eq!(f32::from(w8[i]), want, "{name}[{i}]");
                }
            }
        }
        // the input quantized per tensor with its own max |x| (dynamic)
        let mx = xin.iter().fold(0f32, |m, v| m.max(v.abs()));
        let (inv, sa) = (127.0 / mx, mx / 127.0);
        let mut xq =
            to64(xin).mapv(|v| (v as f32 * inv).round_ties_even().clamp(-127.0, 127.0) as f64);
        let mut wq = ndarray::ArrayD::from_shape_vec(
            shape.clone(),
            w8.iter().map(|&v| f64::from(v)).collect(),
        )
        .unwrap();
        if expand {
            xq = xq.insert_axis(ndarray::Axis(2));
            wq = wq.insert_axis(ndarray::Axis(2));
        }
        let scale: Vec<f64> = sc.iter().map(|&s| f64::from(sa * s)).collect();
        let out_hw = if expand {
            [1, yq.shape()[2]]
        } else {
            [yq.shape()[2], yq.shape()[3]]
        };
        let (st, pad) = if expand {
            ([1, stride], [0, 1])
        } else {
            ([stride; 2], [1; 2])
        };
        let (want, mag) = tconv_ref(&xq, &wq, &scale, st, pad, groups, out_hw);
        let got: Vec<f32> = yq.iter().copied().collect();
        let mut max_err = 0f32;
        for ((g, w), m) in got.iter().zip(want.iter()).zip(mag.iter()) {
            assert!(
                (f64::from(*g) - w).abs() <= 1e-6 * m + 1e-30,
                "{name}: {g} vs the integer reference {w}"
            );
        }
        for (g, w) in got.iter().zip(y32.iter()) {
            max_err = max_err.max((g - w).abs());
        }
        let ymax = y32.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(
            max_err < 0.05 * ymax,
            "{name}: int8 {max_err} from f32 (max {ymax})"
        );
    }
    // saved with the scales, loaded back: the same bits; calibrated: static scales
    let c = m.calibrate(&p, [inputs()]).unwrap();
    assert!(c.is_static() && !q.is_static());
    for qp in [q, c] {
        let bytes = qp.to_safetensors_bytes().unwrap();
        let h = header(&bytes);
        for entry in [
            "\"k\":{\"dtype\":\"I8\",\"shape\":[4,3,3,3]",
            "\"k_scale\":{\"dtype\":\"F32\",\"shape\":[3]",
            "\"k1\":{\"dtype\":\"I8\",\"shape\":[4,1,3]",
            "\"k1_scale\":{\"dtype\":\"F32\",\"shape\":[2]",
        ] {
            assert!(h.contains(entry), "{entry} not in {h}");
        }
        let dir = std::env::temp_dir().join(format!("mithril-quant-t-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("up.safetensors");
        qp.save_safetensors(&path).unwrap();
        let back = m.load_quantized(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(back.is_static(), qp.is_static());
        assert_eq!(back.weight("k"), qp.weight("k"));
        assert_eq!(back.weight("k1"), qp.weight("k1"));
        let (a, b) = (
            m.evaluate_quantized(&qp, inputs()).unwrap(),
            m.evaluate_quantized(&back, inputs()).unwrap(),
        );
        assert_eq!((a.y, a.y1), (b.y, b.y1));
        // the loaded f32 params hold the dequantized weights
        let (_, w8, sc) = qp.weight("k1").unwrap();
        assert_eq!(
            back.params().k1[[3, 0, 2]],
            f32::from(w8[3 * 3 + 2]) * sc[1]
        );
    }
}
