//! Convolution: `conv1d` / `conv2d` / `conv_transpose1d` / `conv_transpose2d` against naive
//! references written here from the definitions (PyTorch's semantics), their gradients against
//! f64 central differences (stride, dilation, groups, depthwise, padding ints / lists /
//! `"same"`, output padding), run-time shape errors, and the `Conv2d` library model loading a
//! PyTorch-layout safetensors state dict.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use crate::common::fd::{dot, gradcheck, pat, set, wave};
use mithril::prelude::*;
use ndarray::{ArrayD, IxDyn};

/// `y[n, o, i, j] = Σ x[n, g·cg + c, i·s - p + ti·d, j·s - p + tj·d] · w[o, c, ti, tj]` (NCHW;
/// a 1-D case is `h = 1`), `pad` the padding before each dim.
fn naive_conv(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    s: [usize; 2],
    pad: [usize; 2],
    d: [usize; 2],
    groups: usize,
    out: [usize; 2],
) -> Vec<f64> {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (o, cg, kh, kw) = (w.shape()[0], w.shape()[1], w.shape()[2], w.shape()[3]);
    assert_eq!(c, cg * groups);
    let og = o / groups;
    let mut y = vec![0.0; n * o * out[0] * out[1]];
    for b in 0..n {
        for oc in 0..o {
            let g = oc / og;
            for i in 0..out[0] {
                for j in 0..out[1] {
                    let mut acc = 0.0;
                    for ci in 0..cg {
                        for ti in 0..kh {
                            for tj in 0..kw {
                                let ih = (i * s[0] + ti * d[0]) as i64 - pad[0] as i64;
                                let iw = (j * s[1] + tj * d[1]) as i64 - pad[1] as i64;
                                if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < wd {
                                    acc += x[[b, g * cg + ci, ih as usize, iw as usize]]
                                        * w[[oc, ci, ti, tj]];
                                }
                            }
                        }
                    }
                    y[((b * o + oc) * out[0] + i) * out[1] + j] = acc;
                }
            }
        }
    }
    y
}

/// The transposed convolution by its definition: each input element scatters `x · w` to
/// `(i·s - p + ti·d, j·s - p + tj·d)` of output channel `g·og + oc`.
fn naive_conv_t(
    x: &ArrayD<f64>,
    w: &ArrayD<f64>,
    s: [usize; 2],
    pad: [usize; 2],
    d: [usize; 2],
    groups: usize,
    out: [usize; 2],
) -> Vec<f64> {
    let (n, c, h, wd) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let (og, kh, kw) = (w.shape()[1], w.shape()[2], w.shape()[3]);
    let (cg, o) = (c / groups, og * groups);
    let mut y = vec![0.0; n * o * out[0] * out[1]];
    for b in 0..n {
        for ci in 0..c {
            let g = ci / cg;
            for i in 0..h {
                for j in 0..wd {
                    for oc in 0..og {
                        for ti in 0..kh {
                            for tj in 0..kw {
                                let yi = (i * s[0] + ti * d[0]) as i64 - pad[0] as i64;
                                let yj = (j * s[1] + tj * d[1]) as i64 - pad[1] as i64;
                                if yi >= 0
                                    && yj >= 0
                                    && (yi as usize) < out[0]
                                    && (yj as usize) < out[1]
                                {
                                    y[((b * o + g * og + oc) * out[0] + yi as usize) * out[1]
                                        + yj as usize] += x[[b, ci, i, j]] * w[[ci, oc, ti, tj]];
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    y
}

/// A 1-D array as 2-D with `h = 1`.
fn as2d(a: &ArrayD<f64>) -> ArrayD<f64> {
    let s = a.shape();
    a.clone()
        .into_shape_with_order(IxDyn(&[s[0], s[1], 1, s[2]]))
        .unwrap()
}

fn close(what: &str, got: &ArrayD<f64>, want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: size");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

mithril! {
    model Convs {
        param x: f64[2, 4, 5, 6];
        param x1: f64[2, 3, 9];
        param w1: f64[6, 4, 3, 3];
        param w2: f64[4, 2, 3, 2];
        param w3: f64[8, 1, 3, 3];
        param w4: f64[5, 3, 3];
        param w5: f64[4, 3, 3, 3];
        param w6: f64[3, 2, 2];
        param w7: f64[4, 2, 2, 3];
        // stride and symmetric padding
        output y1 = conv2d(x, w1, stride = 2, padding = 1);
        // dilation, per-dim padding, groups
        output y2 = conv2d(x, w2, dilation = [2, 1], padding = [2, 0], groups = 2);
        // depthwise with a channel multiplier of 2, "same"
        output y3 = conv2d(x, w3, groups = 4, padding = "same");
        // 1-D, stride 2, "valid"
        output y4 = conv1d(x1, w4, stride = 2, padding = "valid");
        // transposed, stride 2, output padding
        output y5 = conv_transpose2d(x, w5, stride = 2, padding = 1, output_padding = 1);
        // transposed 1-D, stride 3, dilation 2
        output y6 = conv_transpose1d(x1, w6, stride = 3, dilation = 2);
        // transposed, groups, per-dim stride
        output y7 = conv_transpose2d(x, w7, stride = [1, 2], groups = 2, padding = [0, 1]);
    }

    model ValidConv {
        input x: f32[B, 3, L];
        param w: f32[2, 3, 3];
        output y = conv1d(x, w);
    }

    model SymConv {
        input x: f32[B, 3, H, W];
        param w: f32[2, 3, 3, 3];
        output y = conv2d(x, w, stride = 2, padding = 1);
    }
}

fn convs_params(m: &Convs) -> ConvsParams {
    let mut p = m.randomize_params(3);
    for (k, name) in ["x", "x1", "w1", "w2", "w3", "w4", "w5", "w6", "w7"]
        .iter()
        .enumerate()
    {
        set(&mut p, name, |i| {
            crate::common::fd::wave(i, k as f64 * 0.7 + 0.1)
        });
    }
    p
}

#[test]
fn forward_matches_the_naive_reference() {
    let m = Convs::new().unwrap();
    let p = convs_params(&m);
    let o = m
        .evaluate(
            &p,
            ConvsInputs {
                _marker: std::marker::PhantomData,
            },
        )
        .unwrap();
    let (x, x1) = (p.x.clone().into_dyn(), p.x1.clone().into_dyn());
    // (5 + 2 - 2 - 1) / 2 + 1 = 3, (6 + 2 - 2 - 1) / 2 + 1 = 3
    assert_eq!(o.y1.shape(), [2, 6, 3, 3]);
    close(
        "y1",
        &o.y1.clone().into_dyn(),
        &naive_conv(
            &x,
            &p.w1.clone().into_dyn(),
            [2, 2],
            [1, 1],
            [1, 1],
            1,
            [3, 3],
        ),
    );
    // h: 5 + 4 - 4 - 1 + 1 = 5; w: 6 - 1 - 1 + 1 = 5
    assert_eq!(o.y2.shape(), [2, 4, 5, 5]);
    close(
        "y2",
        &o.y2.clone().into_dyn(),
        &naive_conv(
            &x,
            &p.w2.clone().into_dyn(),
            [1, 1],
            [2, 0],
            [2, 1],
            2,
            [5, 5],
        ),
    );
    assert_eq!(o.y3.shape(), [2, 8, 5, 6]);
    close(
        "y3",
        &o.y3.clone().into_dyn(),
        &naive_conv(
            &x,
            &p.w3.clone().into_dyn(),
            [1, 1],
            [1, 1],
            [1, 1],
            4,
            [5, 6],
        ),
    );
    // (9 - 3) / 2 + 1 = 4
    assert_eq!(o.y4.shape(), [2, 5, 4]);
    let w4 = as2d(&p.w4.clone().into_dyn());
    close(
        "y4",
        &o.y4.clone().into_dyn(),
        &naive_conv(&as2d(&x1), &w4, [1, 2], [0, 0], [1, 1], 1, [1, 4]),
    );
    // (5 - 1)·2 - 2 + 2 + 1 + 1 = 10, (6 - 1)·2 - 2 + 2 + 1 + 1 = 12
    assert_eq!(o.y5.shape(), [2, 3, 10, 12]);
    close(
        "y5",
        &o.y5.clone().into_dyn(),
        &naive_conv_t(
            &x,
            &p.w5.clone().into_dyn(),
            [2, 2],
            [1, 1],
            [1, 1],
            1,
            [10, 12],
        ),
    );
    // (9 - 1)·3 + 2·1 + 1 = 27
    assert_eq!(o.y6.shape(), [2, 2, 27]);
    let w6 = as2d(&p.w6.clone().into_dyn());
    close(
        "y6",
        &o.y6.clone().into_dyn(),
        &naive_conv_t(&as2d(&x1), &w6, [1, 3], [0, 0], [1, 2], 1, [1, 27]),
    );
    // h: 4 + 1 + 1 = 6; w: 5·2 - 2 + 2 + 1 = 11; channels 2 · 2 = 4
    assert_eq!(o.y7.shape(), [2, 4, 6, 11]);
    close(
        "y7",
        &o.y7.clone().into_dyn(),
        &naive_conv_t(
            &x,
            &p.w7.clone().into_dyn(),
            [1, 2],
            [0, 1],
            [1, 1],
            2,
            [6, 11],
        ),
    );
}

#[test]
fn gradients_match_central_differences() {
    let m = Convs::new().unwrap();
    let p = convs_params(&m);
    let inputs = || ConvsInputs {
        _marker: std::marker::PhantomData,
    };
    let o = m.evaluate(&p, inputs()).unwrap();
    let seeds = ConvsOutputs {
        y1: pat(o.y1.raw_dim(), 1.0),
        y2: pat(o.y2.raw_dim(), 2.0),
        y3: pat(o.y3.raw_dim(), 3.0),
        y4: pat(o.y4.raw_dim(), 4.0),
        y5: pat(o.y5.raw_dim(), 5.0),
        y6: pat(o.y6.raw_dim(), 6.0),
        y7: pat(o.y7.raw_dim(), 7.0),
    };
    let loss = |p: &ConvsParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        dot(&o.y1, &seeds.y1)
            + dot(&o.y2, &seeds.y2)
            + dot(&o.y3, &seeds.y3)
            + dot(&o.y4, &seeds.y4)
            + dot(&o.y5, &seeds.y5)
            + dot(&o.y6, &seeds.y6)
            + dot(&o.y7, &seeds.y7)
    };
    let s2 = ConvsOutputs {
        y1: seeds.y1.clone(),
        y2: seeds.y2.clone(),
        y3: seeds.y3.clone(),
        y4: seeds.y4.clone(),
        y5: seeds.y5.clone(),
        y6: seeds.y6.clone(),
        y7: seeds.y7.clone(),
    };
    let (_, g) = m.evaluate_gradients(&p, inputs(), s2).unwrap();
    let n = 240 + 54 + 216 + 48 + 72 + 45 + 108 + 12 + 48;
    assert_eq!(gradcheck("convs", &p, &g, loss), n);
}

#[test]
fn symbolic_spatial_dims_are_computed_and_checked_at_run_time() {
    let m = SymConv::new().unwrap();
    let p = m.randomize_params(1);
    for (h, w) in [(7, 9), (8, 8), (1, 2)] {
        let x = ndarray::Array4::<f32>::from_shape_fn((2, 3, h, w), |(a, b, c, d)| {
            ((a * 7 + b * 5 + c * 3 + d) % 11) as f32 * 0.1 - 0.5
        });
        let o = m.evaluate(&p, SymConvInputs { x: x.view() }).unwrap();
        assert_eq!(o.y.shape(), [2, 2, (h - 1) / 2 + 1, (w - 1) / 2 + 1]);
        let x64 = x.mapv(|v| v as f64).into_dyn();
        let w64 = p.w.mapv(|v| v as f64).into_dyn();
        let want = naive_conv(
            &x64,
            &w64,
            [2, 2],
            [1, 1],
            [1, 1],
            1,
            [(h - 1) / 2 + 1, (w - 1) / 2 + 1],
        );
        for (g, w) in o.y.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{g} vs {w}");
        }
    }
}

mithril! {
    model ConvEnc {
        input x: f32[B, 8];
        output h = relu(Linear(8)(x));
    }

    /// A conv on the host after an encoder on cuda: the conv is per-op Rust (its family's
    /// `call`), forward and gradients.
    model ConvMixed {
        input x: f32[B, 8];
        param w: f32[3, 2, 3];
        let enc = ConvEnc(x);
        output y = conv1d(reshape(enc, [B, 2, 4]), w, padding = 1);
    }
    compile ConvMixedGpu = ConvMixed { backend_map: { "enc": cuda } };

    /// A small PyTorch-style conv net: `Conv2d(1, 4, 3, padding=1)`, relu, `Conv2d(4, 4, 3,
    /// stride=2, groups=2)`, `ConvTranspose2d(4, 2, 2, stride=2)` and a bias-free `Conv1d`.
    pub model TorchConvNet {
        input x: f32[B, 1, 7, 7];
        input s: f32[B, 2, 10];
        let c1 = Conv2d(4, 3, padding = 1);
        let c2 = Conv2d(4, 3, stride = 2, groups = 2);
        let up = ConvTranspose2d(2, 2, stride = 2);
        let c3 = Conv1d(3, 5, padding = 2, use_bias = false);
        output y = up(c2(relu(c1(x))));
        output z = c3(s);
    }
}

/// The bytes of `safetensors.torch.save_file(state_dict)` for f32 tensors (see
/// `safetensors_compat.rs`): header length, JSON header sorted by name, raw data.
fn torch_file(mut t: Vec<(&str, Vec<usize>, Vec<f32>)>) -> Vec<u8> {
    t.sort_by(|a, b| a.0.cmp(b.0));
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut off = 0;
    for (name, shape, v) in &t {
        let s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header += &format!(
            r#","{name}":{{"dtype":"F32","shape":[{}],"data_offsets":[{off},{}]}}"#,
            s.join(","),
            off + 4 * v.len()
        );
        off += 4 * v.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, v) in &t {
        out.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    out
}

#[test]
fn library_convs_load_a_pytorch_state_dict() {
    let vals = |tag: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 37 + tag * 101) % 1009) as f32 / 1009.0 * 0.6 - 0.3)
            .collect()
    };
    let tensors = vec![
        ("c1.weight", vec![4, 1, 3, 3], vals(1, 36)),
        ("c1.bias", vec![4], vals(2, 4)),
        ("c2.weight", vec![4, 2, 3, 3], vals(3, 72)),
        ("c2.bias", vec![4], vals(4, 4)),
        ("up.weight", vec![4, 2, 2, 2], vals(5, 32)),
        ("up.bias", vec![2], vals(6, 2)),
        ("c3.weight", vec![3, 2, 5], vals(7, 30)),
    ];
    let get = |name: &str| tensors.iter().find(|t| t.0 == name).unwrap().clone();
    let arr = |name: &str| {
        let (_, s, v) = get(name);
        ArrayD::from_shape_vec(IxDyn(&s), v.iter().map(|&a| a as f64).collect()).unwrap()
    };
    let bytes = torch_file(tensors.clone());
    let m = TorchConvNet::new().unwrap();
    let mut p = m.randomize_params(0);
    p.load_safetensors_bytes(&bytes).unwrap();
    let x = ndarray::Array4::<f32>::from_shape_fn((2, 1, 7, 7), |(a, _, c, d)| {
        ((a * 13 + c * 7 + d * 3) % 17) as f32 / 17.0 - 0.5
    });
    let s = ndarray::Array3::<f32>::from_shape_fn((2, 2, 10), |(a, b, c)| {
        ((a * 5 + b * 11 + c * 3) % 13) as f32 / 13.0 - 0.4
    });
    let o = m
        .evaluate(
            &p,
            TorchConvNetInputs {
                x: x.view(),
                s: s.view(),
            },
        )
        .unwrap();

    // the reference, layer by layer, in f64
    let add_bias = |y: Vec<f64>, b: &ArrayD<f64>, n: usize, hw: usize| -> Vec<f64> {
        let c = b.len();
        (0..n * c * hw).map(|i| y[i] + b[[(i / hw) % c]]).collect()
    };
    let x64 = x.mapv(|v| v as f64).into_dyn();
    let h1 = add_bias(
        naive_conv(&x64, &arr("c1.weight"), [1, 1], [1, 1], [1, 1], 1, [7, 7]),
        &arr("c1.bias"),
        2,
        49,
    );
    let h1: Vec<f64> = h1.into_iter().map(|v| v.max(0.0)).collect();
    let h1 = ArrayD::from_shape_vec(IxDyn(&[2, 4, 7, 7]), h1).unwrap();
    let h2 = add_bias(
        naive_conv(&h1, &arr("c2.weight"), [2, 2], [0, 0], [1, 1], 2, [3, 3]),
        &arr("c2.bias"),
        2,
        9,
    );
    let h2 = ArrayD::from_shape_vec(IxDyn(&[2, 4, 3, 3]), h2).unwrap();
    let y = add_bias(
        naive_conv_t(&h2, &arr("up.weight"), [2, 2], [0, 0], [1, 1], 1, [6, 6]),
        &arr("up.bias"),
        2,
        36,
    );
    assert_eq!(o.y.shape(), [2, 2, 6, 6]);
    for (g, w) in o.y.iter().zip(&y) {
        assert!((*g as f64 - w).abs() < 1e-5, "y: {g} vs {w}");
    }
    let s64 = as2d(&s.mapv(|v| v as f64).into_dyn());
    let z = naive_conv(
        &s64,
        &as2d(&arr("c3.weight")),
        [1, 1],
        [0, 2],
        [1, 1],
        1,
        [1, 10],
    );
    assert_eq!(o.z.shape(), [2, 3, 10]);
    for (g, w) in o.z.iter().zip(&z) {
        assert!((*g as f64 - w).abs() < 1e-5, "z: {g} vs {w}");
    }
}

#[test]
fn a_mixed_model_runs_its_conv_on_the_host() {
    let s = ConvMixedGpu::SUMMARY;
    let conv = s
        .lines()
        .find(|l| {
            l.split('|')
                .nth(2)
                .is_some_and(|c| c.trim().starts_with("conv1d"))
        })
        .unwrap_or_else(|| panic!("no conv1d row in\n{s}"));
    assert_eq!(conv.split('|').nth(5).map(str::trim), Some("cpu"), "{s}");
    // without a GPU `new` is an error naming CUDA; with one, the CPU model's result
    match ConvMixedGpu::new() {
        Err(e) => assert!(e.to_string().to_lowercase().contains("cuda"), "{e}"),
        Ok(m) => {
            let cpu = ConvMixed::new().unwrap();
            let p = cpu.randomize_params(2);
            let x = ndarray::Array2::<f32>::from_shape_fn((3, 8), |(a, b)| {
                (a * 8 + b) as f32 * 0.05 - 0.4
            });
            let want = cpu.evaluate(&p, ConvMixedInputs { x: x.view() }).unwrap().y;
            let mp = m.randomize_params(2);
            let got = m
                .evaluate(&mp, ConvMixedGpuInputs { x: x.view() })
                .unwrap()
                .y;
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{g} vs {w}");
            }
        }
    }
}

#[test]
fn run_time_shape_errors_name_the_op_and_shapes() {
    let m = ValidConv::new().unwrap();
    let p = m.randomize_params(1);
    // 2 + 0 < 3 (the kernel's reach): an error naming the op, the shapes and the attributes
    let x = ndarray::Array3::<f32>::zeros((1, 3, 2));
    let e = m
        .evaluate(&p, ValidConvInputs { x: x.view() })
        .unwrap_err()
        .to_string();
    for part in ["conv", "[1, 3, 2]", "[2, 3, 3]", "stride [1]"] {
        assert!(e.contains(part), "{part} not in: {e}");
    }
    let x = ndarray::Array3::<f32>::zeros((1, 3, 3));
    assert_eq!(
        m.evaluate(&p, ValidConvInputs { x: x.view() })
            .unwrap()
            .y
            .shape(),
        [1, 2, 1]
    );
}

mithril! {
    /// ResNet basic blocks: one with the downsampling shortcut (stride 2, 3 -> 4 channels), one
    /// with the identity shortcut.
    model Res {
        input x: f64[2, 3, 6, 6];
        let down = BasicBlock(4, stride = 2, downsample = true)(x);
        let same = BasicBlock(3)(x);
        output y = down;
        output z = same;
    }
}

/// Batch norm in evaluation mode, per channel: `(x - mean) / sqrt(var + 1e-5) · w + b`, with
/// the params of instance `bn` from `ps`.
fn bn_eval(
    x: &mut [f64],
    c: usize,
    hw: usize,
    ps: &std::collections::BTreeMap<String, ArrayD<f64>>,
    bn: &str,
) {
    let g = |f: &str| &ps[&format!("{bn}.{f}")];
    let (w, b, mean, var) = (g("weight"), g("bias"), g("running_mean"), g("running_var"));
    for (k, v) in x.iter_mut().enumerate() {
        let ch = (k / hw) % c;
        *v = (*v - mean[[ch]]) / (var[[ch]] + 1e-5).sqrt() * w[[ch]] + b[[ch]];
    }
}

/// The block by its definition (evaluation mode), from the params named under `blk`.
fn basic_block_ref(
    x: &ArrayD<f64>,
    ps: &std::collections::BTreeMap<String, ArrayD<f64>>,
    blk: &str,
    planes: usize,
    stride: usize,
    down: bool,
) -> Vec<f64> {
    let n = |f: &str| &ps[&format!("{blk}.{f}")];
    let oh = (6 + 2 - 3) / stride + 1;
    let mut h = naive_conv(
        x,
        n("conv1.weight"),
        [stride; 2],
        [1, 1],
        [1, 1],
        1,
        [oh, oh],
    );
    bn_eval(&mut h, planes, oh * oh, ps, &format!("{blk}.bn1"));
    h.iter_mut().for_each(|v| *v = v.max(0.0));
    let hx = ArrayD::from_shape_vec(IxDyn(&[2, planes, oh, oh]), h).unwrap();
    let mut y = naive_conv(&hx, n("conv2.weight"), [1, 1], [1, 1], [1, 1], 1, [oh, oh]);
    bn_eval(&mut y, planes, oh * oh, ps, &format!("{blk}.bn2"));
    let short: Vec<f64> = if down {
        let mut s = naive_conv(
            x,
            n("downsample_conv.weight"),
            [stride; 2],
            [0, 0],
            [1, 1],
            1,
            [oh, oh],
        );
        bn_eval(&mut s, planes, oh * oh, ps, &format!("{blk}.downsample_bn"));
        s
    } else {
        x.iter().cloned().collect()
    };
    y.iter()
        .zip(&short)
        .map(|(a, b)| (a + b).max(0.0))
        .collect()
}

#[test]
fn resnet_basic_block_matches_a_naive_reference() {
    let m = Res::new().unwrap();
    let mut p = m.randomize_params(4);
    // running statistics and affine params away from their defaults, so that each one counts
    p.visit_mut(&mut |name, t| {
        if let mithril::rt::TensorViewMut::F64(mut a) = t {
            let salt = name.len() as f64;
            for (i, v) in a.iter_mut().enumerate() {
                let r = wave(i, salt);
                if name.ends_with("running_var") {
                    *v = 0.5 + r.abs();
                } else if name.ends_with("running_mean")
                    || name.ends_with("bn1.bias")
                    || name.ends_with("bn2.bias")
                    || name.ends_with("_bn.bias")
                {
                    *v = 0.3 * r;
                } else if name.contains("bn") && name.ends_with("weight") {
                    *v = 1.0 + 0.3 * r;
                }
            }
        }
        Ok(())
    })
    .unwrap();
    let mut ps = std::collections::BTreeMap::new();
    p.visit(&mut |name, t| {
        if let mithril::rt::TensorView::F64(a) = t {
            ps.insert(name.to_string(), a.to_owned().into_dyn());
        }
    });
    assert!(
        ps.contains_key("down.downsample_bn.running_var")
            && !ps.contains_key("same.downsample_conv.weight")
    );
    assert!(p.is_buffer("down.bn1.num_batches_tracked"));
    let x = ArrayD::from_shape_fn(IxDyn(&[2, 3, 6, 6]), |ix| {
        wave(ix[0] * 108 + ix[1] * 36 + ix[2] * 6 + ix[3], 0.7)
    });
    let o = m
        .evaluate(
            &p,
            ResInputs {
                x: x.view().into_dimensionality().unwrap(),
            },
        )
        .unwrap();
    assert_eq!(o.y.shape(), &[2, 4, 3, 3]);
    assert_eq!(o.z.shape(), &[2, 3, 6, 6]);
    let y = basic_block_ref(&x, &ps, "down", 4, 2, true);
    let z = basic_block_ref(&x, &ps, "same", 3, 1, false);
    close("down", &o.y.into_dyn(), &y);
    close("same", &o.z.into_dyn(), &z);
}

// ---- non-square kernels, strides and padding in the library models

mithril! {
    model ConvRect {
        input input: f64[N, 2, H, W];
        let conv = Conv2d(3, (3, 5), stride = (2, 1), padding = (1, 2));
        output output = conv(input);
    }
    model ConvTRect {
        input input: f64[N, 3, H, W];
        let conv = ConvTranspose2d(2, (2, 3), stride = (2, 1), padding = (0, 1));
        output output = conv(input);
    }
    model MaxRect {
        input input: f64[N, C, H, W];
        output output = MaxPool2d((2, 3), stride = (2, 1))(input);
    }
    model AvgRect {
        input input: f64[N, C, H, W];
        output output = AvgPool2d((3, 2), stride = (1, 2), padding = (1, 0))(input);
    }
}

/// Naive 2-D pooling over `[N, C, H, W]` with a `kh x kw` window, strides and zero padding
/// (max ignores the padding, average counts it: PyTorch's defaults).
fn naive_pool(x: &ArrayD<f64>, k: [usize; 2], s: [usize; 2], p: [usize; 2], max: bool) -> Vec<f64> {
    let (n, c, h, w) = (x.shape()[0], x.shape()[1], x.shape()[2], x.shape()[3]);
    let ho = (h + 2 * p[0] - k[0]) / s[0] + 1;
    let wo = (w + 2 * p[1] - k[1]) / s[1] + 1;
    let mut out = Vec::new();
    for a in 0..n {
        for ch in 0..c {
            for i in 0..ho {
                for j in 0..wo {
                    let (mut mx, mut sum) = (f64::NEG_INFINITY, 0.0);
                    for ti in 0..k[0] {
                        for tj in 0..k[1] {
                            let (r, q) = (
                                (i * s[0] + ti) as isize - p[0] as isize,
                                (j * s[1] + tj) as isize - p[1] as isize,
                            );
                            if r >= 0 && q >= 0 && (r as usize) < h && (q as usize) < w {
                                let v = x[[a, ch, r as usize, q as usize]];
                                mx = mx.max(v);
                                sum += v;
                            }
                        }
                    }
                    out.push(if max { mx } else { sum / (k[0] * k[1]) as f64 });
                }
            }
        }
    }
    out
}

/// `Conv2d`, `ConvTranspose2d`, `MaxPool2d` and `AvgPool2d` with `(h, w)` tuples for the
/// kernel, stride and padding (PyTorch's `kernel_size = (3, 5)`) against the naive references;
/// the weights are `[out, in, kh, kw]` / `[in, out, kh, kw]`.
#[test]
fn library_models_take_non_square_kernels() -> mithril::Result<()> {
    let x = ArrayD::from_shape_vec(
        IxDyn(&[2, 2, 7, 9]),
        (0..252).map(|i| wave(i, 0.3)).collect(),
    )
    .unwrap();
    let x4 = x.clone().into_dimensionality::<ndarray::Ix4>().unwrap();
    let m = ConvRect::new()?;
    let p = m.randomize_params(1);
    assert_eq!(p.conv.weight.shape(), &[3, 2, 3, 5]);
    let o = m.evaluate(&p, ConvRectInputs { input: x4.view() })?;
    assert_eq!(o.output.shape(), &[2, 3, 4, 9]);
    let w = p.conv.weight.clone().into_dyn();
    let want: Vec<f64> = naive_conv(&x, &w, [2, 1], [1, 2], [1, 1], 1, [4, 9])
        .iter()
        .enumerate()
        .map(|(i, v)| v + p.conv.bias[(i / 36) % 3])
        .collect();
    close("Conv2d (3, 5)", &o.output.into_dyn(), &want);

    let xt = ArrayD::from_shape_vec(
        IxDyn(&[2, 3, 4, 5]),
        (0..120).map(|i| wave(i, 0.7)).collect(),
    )
    .unwrap();
    let m = ConvTRect::new()?;
    let p = m.randomize_params(2);
    assert_eq!(p.conv.weight.shape(), &[3, 2, 2, 3]);
    let o = m.evaluate(
        &p,
        ConvTRectInputs {
            input: xt.view().into_dimensionality::<ndarray::Ix4>().unwrap(),
        },
    )?;
    assert_eq!(o.output.shape(), &[2, 2, 8, 5]);
    let want: Vec<f64> = naive_conv_t(
        &xt,
        &p.conv.weight.clone().into_dyn(),
        [2, 1],
        [0, 1],
        [1, 1],
        1,
        [8, 5],
    )
    .iter()
    .enumerate()
    .map(|(i, v)| v + p.conv.bias[(i / 40) % 2])
    .collect();
    close("ConvTranspose2d (2, 3)", &o.output.into_dyn(), &want);

    let m = MaxRect::new()?;
    let o = m.evaluate(&m.randomize_params(0), MaxRectInputs { input: x4.view() })?;
    assert_eq!(o.output.shape(), &[2, 2, 3, 7]);
    close(
        "MaxPool2d (2, 3)",
        &o.output.into_dyn(),
        &naive_pool(&x, [2, 3], [2, 1], [0, 0], true),
    );
    let m = AvgRect::new()?;
    let o = m.evaluate(&m.randomize_params(0), AvgRectInputs { input: x4.view() })?;
    assert_eq!(o.output.shape(), &[2, 2, 7, 4]);
    close(
        "AvgPool2d (3, 2)",
        &o.output.into_dyn(),
        &naive_pool(&x, [3, 2], [1, 2], [1, 0], false),
    );
    Ok(())
}

// ---- a PyTorch-layout state dict of a conv net with batch norm (eval mode)

mithril! {
    /// PyTorch's `Net` in the test below: conv (1 -> 4, 3x3, padding 1), batch norm, relu,
    /// 2x2 max pool, linear 36 -> 3, with its children named `conv`, `bn`, `fc`.
    model TorchBnNet {
        input x: f32[N, 1, 6, 6];
        let conv = Conv2d(4, 3, padding = 1);
        let bn = BatchNorm2d();
        let fc = Linear(3);
        let h = MaxPool2d(2)(relu(bn(conv(x))));
        output y = fc(h.reshape([N, 36]));
    }
}

/// The bytes `safetensors.torch.save_file(net.state_dict())` writes: tensors sorted by name,
/// f32 data, `num_batches_tracked` an `I64` of shape `[]`.
fn torch_file_with_i64(mut t: Vec<(&str, Vec<usize>, Vec<f32>)>, i64s: &[(&str, i64)]) -> Vec<u8> {
    let mut all: Vec<(String, String, Vec<usize>, Vec<u8>)> = t
        .drain(..)
        .map(|(n, s, v)| {
            (
                n.to_string(),
                "F32".to_string(),
                s,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    for (n, v) in i64s {
        all.push((
            n.to_string(),
            "I64".into(),
            vec![],
            v.to_le_bytes().to_vec(),
        ));
    }
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut off = 0;
    for (name, dt, shape, data) in &all {
        let s: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header += &format!(
            r#","{name}":{{"dtype":"{dt}","shape":[{}],"data_offsets":[{off},{}]}}"#,
            s.join(","),
            off + data.len()
        );
        off += data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for t in &all {
        out.extend_from_slice(&t.3);
    }
    out
}

/// Issue 14 item 7: a conv net with batch norm loads a state dict in PyTorch's exact
/// safetensors layout (its names, `running_mean` / `running_var` buffers, an I64
/// `num_batches_tracked`) and, in eval mode, matches a naive f64 reference computed here layer
/// by layer and the values PyTorch 2.15 computed for the same weights and input. Those were
/// printed by this script (`/work/anchors_venv/bin/python`, one thread) and pasted below:
///
/// ```python
/// import torch, torch.nn as nn
/// def vals(tag, n):
///     return torch.tensor([((i * 37 + tag * 101) % 1009) / 1009.0 * 0.6 - 0.3 for i in range(n)], dtype=torch.float32)
/// class Net(nn.Module):
///     def __init__(self):
///         super().__init__()
///         self.conv = nn.Conv2d(1, 4, 3, padding=1)
///         self.bn = nn.BatchNorm2d(4)
///         self.fc = nn.Linear(36, 3)
///     def forward(self, x):
///         h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
///         return self.fc(h.flatten(1))
/// net = Net()
/// net.load_state_dict({
///     "conv.weight": vals(1, 36).reshape(4, 1, 3, 3), "conv.bias": vals(2, 4),
///     "bn.weight": 1.0 + vals(3, 4), "bn.bias": vals(4, 4), "bn.running_mean": vals(5, 4),
///     "bn.running_var": 0.5 + vals(6, 4).abs(),
///     "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
///     "fc.weight": vals(7, 108).reshape(3, 36), "fc.bias": vals(8, 3)})
/// net.eval()
/// x = torch.tensor([((a * 13 + c * 7 + d * 3) % 17) / 17.0 - 0.5 for a in range(2)
///                   for c in range(6) for d in range(6)], dtype=torch.float32).reshape(2, 1, 6, 6)
/// with torch.no_grad():
///     print([float(v) for v in net(x).flatten()])
/// ```
#[test]
fn conv_net_with_batch_norm_loads_a_pytorch_state_dict() -> mithril::Result<()> {
    let vals = |tag: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + tag * 101) % 1009) as f64 / 1009.0 * 0.6 - 0.3) as f32)
            .collect()
    };
    let bn_w: Vec<f32> = vals(3, 4).iter().map(|v| 1.0 + v).collect();
    let bn_v: Vec<f32> = vals(6, 4).iter().map(|v| 0.5 + v.abs()).collect();
    let tensors = vec![
        ("conv.weight", vec![4, 1, 3, 3], vals(1, 36)),
        ("conv.bias", vec![4], vals(2, 4)),
        ("bn.weight", vec![4], bn_w.clone()),
        ("bn.bias", vec![4], vals(4, 4)),
        ("bn.running_mean", vec![4], vals(5, 4)),
        ("bn.running_var", vec![4], bn_v.clone()),
        ("fc.weight", vec![3, 36], vals(7, 108)),
        ("fc.bias", vec![3], vals(8, 3)),
    ];
    let bytes = torch_file_with_i64(tensors, &[("bn.num_batches_tracked", 7)]);
    let m = TorchBnNet::new()?;
    let mut p = m.randomize_params(0);
    assert_eq!(
        p.names(),
        [
            "conv.weight",
            "conv.bias",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
            "fc.weight",
            "fc.bias"
        ]
    );
    p.load_safetensors_bytes(&bytes)?;
    let x = ndarray::Array4::<f32>::from_shape_fn((2, 1, 6, 6), |(a, _, c, d)| {
        (((a * 13 + c * 7 + d * 3) % 17) as f64 / 17.0 - 0.5) as f32
    });
    let y = m.evaluate(&p, TorchBnNetInputs { x: x.view() })?.y;

    // the naive f64 reference: conv + bias, batch norm with the running statistics, relu,
    // 2x2 max pool, linear
    let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
    let (cw, cb, bw, bb, rm, rv, fw, fb) = (
        f(&vals(1, 36)),
        f(&vals(2, 4)),
        f(&bn_w),
        f(&vals(4, 4)),
        f(&vals(5, 4)),
        f(&bn_v),
        f(&vals(7, 108)),
        f(&vals(8, 3)),
    );
    let mut want = Vec::new();
    for a in 0..2 {
        let mut h = vec![0.0f64; 4 * 3 * 3];
        for o in 0..4 {
            let mut act = [[0.0f64; 6]; 6];
            for i in 0..6 {
                for j in 0..6 {
                    let mut s = cb[o];
                    for ti in 0..3 {
                        for tj in 0..3 {
                            let (r, c) =
                                (i as isize + ti as isize - 1, j as isize + tj as isize - 1);
                            if (0..6).contains(&r) && (0..6).contains(&c) {
                                s += x[[a, 0, r as usize, c as usize]] as f64
                                    * cw[o * 9 + ti * 3 + tj];
                            }
                        }
                    }
                    let nrm = (s - rm[o]) / (rv[o] + 1e-5).sqrt() * bw[o] + bb[o];
                    act[i][j] = nrm.max(0.0);
                }
            }
            for i in 0..3 {
                for j in 0..3 {
                    let m = act[2 * i][2 * j]
                        .max(act[2 * i][2 * j + 1])
                        .max(act[2 * i + 1][2 * j])
                        .max(act[2 * i + 1][2 * j + 1]);
                    h[o * 9 + i * 3 + j] = m;
                }
            }
        }
        for k in 0..3 {
            want.push(fb[k] + (0..36).map(|q| fw[k * 36 + q] * h[q]).sum::<f64>());
        }
    }
    let torch = [
        0.19172994792461395,
        0.2513159513473511,
        0.10348822921514511,
        0.17380908131599426,
        0.3071032166481018,
        0.05421784520149231,
    ];
    for (i, &g) in y.iter().enumerate() {
        let g = g as f64;
        assert!(
            (g - want[i]).abs() <= 1e-5 * (1.0 + want[i].abs()),
            "y[{i}]: {g} vs naive {}",
            want[i]
        );
        assert!(
            (g - torch[i]).abs() <= 1e-5 * (1.0 + torch[i].abs()),
            "y[{i}]: {g} vs PyTorch {}",
            torch[i]
        );
        assert!(
            (want[i] - torch[i]).abs() <= 1e-5,
            "naive vs PyTorch at {i}"
        );
    }
    Ok(())
}

/// The same state dict laid out as PyTorch's `nn.Sequential` writes it (`features.0.weight`,
/// `features.1.running_mean`, ..., `classifier.weight`; relu and max pool are children 2 and 3
/// without params) loads through `rt::Renamed` and gives the outputs of the named-children
/// file; saving through the same renames writes the Sequential names back.
#[test]
fn conv_net_loads_a_pytorch_sequential_state_dict() -> mithril::Result<()> {
    let vals = |tag: usize, n: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 37 + tag * 101) % 1009) as f64 / 1009.0 * 0.6 - 0.3) as f32)
            .collect()
    };
    let tensors = |prefix: [&'static str; 3]| {
        let [c, b, f] = prefix;
        let n = |s: &str, leaf: &str| -> &'static str { format!("{s}.{leaf}").leak() };
        vec![
            (n(c, "weight"), vec![4, 1, 3, 3], vals(1, 36)),
            (n(c, "bias"), vec![4], vals(2, 4)),
            (n(b, "weight"), vec![4], vals(3, 4)),
            (n(b, "bias"), vec![4], vals(4, 4)),
            (n(b, "running_mean"), vec![4], vals(5, 4)),
            (
                n(b, "running_var"),
                vec![4],
                vals(6, 4).iter().map(|v| 0.5 + v.abs()).collect(),
            ),
            (n(f, "weight"), vec![3, 36], vals(7, 108)),
            (n(f, "bias"), vec![3], vals(8, 3)),
        ]
    };
    let named = torch_file_with_i64(
        tensors(["conv", "bn", "fc"]),
        &[("bn.num_batches_tracked", 7)],
    );
    let seq = torch_file_with_i64(
        tensors(["features.0", "features.1", "classifier"]),
        &[("features.1.num_batches_tracked", 7)],
    );
    let pytorch = [
        ("conv", "features.0"),
        ("bn", "features.1"),
        ("fc", "classifier"),
    ];
    let m = TorchBnNet::new()?;
    let mut a = m.randomize_params(0);
    a.load_safetensors_bytes(&named)?;
    let mut b = m.randomize_params(1);
    // without the renames: an error naming what is missing and what the file has instead
    let err = b.load_safetensors_bytes(&seq).unwrap_err().to_string();
    assert!(err.contains("missing tensor `conv.weight`"), "{err}");
    assert!(err.contains("`features.0.weight`"), "{err}");
    {
        let mut r = mithril::rt::Renamed::new(&mut b, &pytorch)?;
        assert_eq!(r.names()[6], "features.1.num_batches_tracked");
        assert!(r.is_buffer("features.1.running_var") && !r.is_buffer("features.1.weight"));
        r.load_safetensors_bytes(&seq)?;
    }
    assert_eq!(b.bn.num_batches_tracked, a.bn.num_batches_tracked);
    let x = ndarray::Array4::<f32>::from_shape_fn((2, 1, 6, 6), |(a, _, c, d)| {
        (((a * 13 + c * 7 + d * 3) % 17) as f64 / 17.0 - 0.5) as f32
    });
    let ya = m.evaluate(&a, TorchBnNetInputs { x: x.view() })?.y;
    let yb = m.evaluate(&b, TorchBnNetInputs { x: x.view() })?.y;
    assert_eq!(ya, yb);
    // saving through the renames writes PyTorch's Sequential file, byte for byte
    let back = mithril::rt::Renamed::new(&mut b, &pytorch)?.to_safetensors_bytes()?;
    let mut c = m.randomize_params(2);
    mithril::rt::Renamed::new(&mut c, &pytorch)?.load_safetensors_bytes(&back)?;
    assert_eq!(m.evaluate(&c, TorchBnNetInputs { x: x.view() })?.y, ya);
    let st = safetensors::SafeTensors::deserialize(&back).expect("a safetensors file");
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(names[0], "classifier.bias");
    assert_eq!(names[2], "features.0.bias");
    Ok(())
}

// ---- f16 / bf16 storage: the f32 kernels on widened operands, one rounding per result

mithril! {
    pub model ConvF16 {
        input x: f16[N, 4, 7, 7];
        param w: f16[6, 2, 3, 3];
        param wt: f16[4, 3, 2, 2];
        output y = conv2d(x, w, stride = 2, padding = 1, groups = 2);
        output t = conv_transpose2d(x, wt, stride = 2, padding = 1, output_padding = 1);
    }

    pub model ConvF32 {
        input x: f32[N, 4, 7, 7];
        param w: f32[6, 2, 3, 3];
        param wt: f32[4, 3, 2, 2];
        output y = conv2d(x, w, stride = 2, padding = 1, groups = 2);
        output t = conv_transpose2d(x, wt, stride = 2, padding = 1, output_padding = 1);
    }

    pub model ConvBf16 {
        input x: bf16[N, 3, 10];
        param w: bf16[5, 3, 3];
        output y = conv1d(x, w, padding = "same", dilation = 2);
    }
}

/// A half-storage convolution and its gradients are the f32 ones on the same (exactly
/// representable) values, each rounded once to f16 / bf16: bit for bit.
#[test]
fn half_storage_convolution_is_the_f32_one_rounded() -> mithril::Result<()> {
    use mithril::half::{bf16, f16};
    let (mh, mf) = (ConvF16::new()?, ConvF32::new()?);
    let mut ph = mh.randomize_params(4);
    let mut pf = mf.randomize_params(4);
    let h = |a: ArrayD<f64>| a.mapv(f16::from_f64);
    ph.w = h(pat(IxDyn(&[6, 2, 3, 3]), 0.3))
        .into_dimensionality()
        .unwrap();
    ph.wt = h(pat(IxDyn(&[4, 3, 2, 2]), 1.1))
        .into_dimensionality()
        .unwrap();
    pf.w = ph.w.mapv(f32::from);
    pf.wt = ph.wt.mapv(f32::from);
    let xh: ndarray::Array4<f16> = h(pat(IxDyn(&[2, 4, 7, 7]), 0.6))
        .into_dimensionality()
        .unwrap();
    let xf = xh.mapv(f32::from);
    let oh = mh.evaluate(&ph, ConvF16Inputs { x: xh.view() })?;
    let of = mf.evaluate(&pf, ConvF32Inputs { x: xf.view() })?;
    assert_eq!(oh.y, of.y.mapv(f16::from_f32));
    assert_eq!(oh.t, of.t.mapv(f16::from_f32));
    // gradients with f16-exact seeds: the weight and input gradients, rounded once
    let sy = h(pat(IxDyn(&[2, 6, 4, 4]), 2.2))
        .into_dimensionality()
        .unwrap();
    let st = h(pat(IxDyn(&[2, 3, 13, 13]), 0.9))
        .into_dimensionality()
        .unwrap();
    let (_, gh) = mh.evaluate_gradients(
        &ph,
        ConvF16Inputs { x: xh.view() },
        ConvF16Outputs {
            y: sy.clone(),
            t: st.clone(),
        },
    )?;
    let (_, gf) = mf.evaluate_gradients(
        &pf,
        ConvF32Inputs { x: xf.view() },
        ConvF32Outputs {
            y: sy.mapv(f32::from),
            t: st.mapv(f32::from),
        },
    )?;
    assert_eq!(gh.w, gf.w.mapv(f16::from_f32));
    assert_eq!(gh.wt, gf.wt.mapv(f16::from_f32));
    // bf16, 1-D, "same" padding with dilation: against a naive f64 sum, rounded once
    let mb = ConvBf16::new()?;
    let mut pb = mb.randomize_params(1);
    pb.w = pat(IxDyn(&[5, 3, 3]), 0.2)
        .mapv(bf16::from_f64)
        .into_dimensionality()
        .unwrap();
    let xb: ndarray::Array3<bf16> = pat(IxDyn(&[2, 3, 10]), 1.7)
        .mapv(bf16::from_f64)
        .into_dimensionality()
        .unwrap();
    let y = mb.evaluate(&pb, ConvBf16Inputs { x: xb.view() })?.y;
    assert_eq!(y.dim(), (2, 5, 10));
    for ((n, o, l), v) in y.indexed_iter() {
        let mut s = 0.0f64;
        for c in 0..3 {
            for k in 0..3 {
                let i = l as isize + 2 * k as isize - 2;
                if (0..10).contains(&i) {
                    s += f64::from(xb[[n, c, i as usize]]) * f64::from(pb.w[[o, c, k]]);
                }
            }
        }
        // the f32 sum of 9 products of bf16 values is exact to ~1e-7 relative, far below
        // bf16's half ulp: one rounding of the true value (barring a tie)
        let want = bf16::from_f64(s);
        assert!(
            *v == want || (f64::from(*v) - s).abs() <= f64::from(want.to_f32().abs()) * 4e-3,
            "[{n},{o},{l}]: {v} vs {s}"
        );
    }
    Ok(())
}

mithril! {
    /// Convolutions whose bias add and ReLU the optimizer fuses into the kernel's store: the
    /// implicit GEMM (`a`: 27-long reductions, stride 1), bias only (`b`, an output), ReLU
    /// only (`c`, no bias), the direct kernel (`d`: a 1x1 over 3 channels) and a stride-2
    /// convolution (`e`, the panel path), a 1-D one (`f`), and one whose biased output has
    /// two users (`g`: the bias add fused, the ReLU not).
    model ConvEpi {
        input x: f32[B, 3, 9, 7];
        input s: f32[B, 3, 12];
        let a = relu(Conv2d(16, 3, padding = 1)(x));
        output b = Conv2d(8, 3, padding = 1)(a);
        output c = relu(Conv2d(6, 3, padding = 1, use_bias = false)(x));
        output d = relu(Conv2d(5, 1)(x));
        output e = relu(Conv2d(4, 3, stride = 2, padding = 1)(x));
        output f = relu(Conv1d(7, 3, padding = 1)(s));
        let gc = Conv2d(4, 3)(x);
        output g = relu(gc) + gc;
        // the 2x2 max pool fused too (`+max_pool2d`): the direct kernel pooling its tiles
        // (`h`, a 1x1 over 3 channels, 9x7 -> 4x3: an odd row and column dropped), the
        // implicit GEMM through a scratch buffer (`i`, 16 input channels), a plain convolution
        // (`j`, no bias or ReLU); not `k` (a stride-1 pool)
        output h = MaxPool2d(2)(relu(Conv2d(8, 1)(x)));
        output i = MaxPool2d(2)(relu(Conv2d(4, 3, padding = 1)(a)));
        output j = MaxPool2d(2)(Conv2d(6, 3, padding = 1, use_bias = false)(x));
        output k = MaxPool2d(2, stride = 1)(relu(Conv2d(4, 1)(x)));
    }
    compile ConvEpiOn = ConvEpi {};
    compile ConvEpiOff = ConvEpi { optimizations: { operator_fusion: false } };
    compile ConvEpiStatic = ConvEpi { shapes: { x: [2, 3, 9, 7], s: [2, 3, 12] }, static_shapes: true };
    compile ConvEpiQ = ConvEpi { quantization: int8 };
    compile ConvEpiQOff = ConvEpi { quantization: int8, optimizations: { operator_fusion: false } };
}

#[test]
fn fused_conv_epilogues_match_the_unfused_graph() -> mithril::Result<()> {
    let (on, off, st) = (ConvEpiOn::new()?, ConvEpiOff::new()?, ConvEpiStatic::new()?);
    // the pass fused a, b, c, d, e, f and g's bias (not g's ReLU: `relu(gc) + gc`)
    let fused = ConvEpiOn::SUMMARY.matches("+epilogue").count();
    assert_eq!(fused, 11, "{}", ConvEpiOn::SUMMARY);
    // and the pools of h, i and j
    let pooled = ConvEpiOn::SUMMARY.matches("+epilogue+max_pool2d").count();
    assert_eq!(pooled, 3, "{}", ConvEpiOn::SUMMARY);
    assert_eq!(
        ConvEpiStatic::SUMMARY
            .matches("+epilogue+max_pool2d")
            .count(),
        3,
        "{}",
        ConvEpiStatic::SUMMARY
    );
    assert!(
        ConvEpiOn::SUMMARY.contains("fused[add(relu(#0), #0)]"),
        "{}",
        ConvEpiOn::SUMMARY
    );
    assert!(
        ConvEpiOn::SUMMARY.contains("conv1d+epilogue"),
        "{}",
        ConvEpiOn::SUMMARY
    );
    assert!(
        !ConvEpiOff::SUMMARY.contains("+epilogue"),
        "{}",
        ConvEpiOff::SUMMARY
    );
    assert!(
        ConvEpiStatic::SUMMARY.contains("conv2d+epilogue"),
        "{}",
        ConvEpiStatic::SUMMARY
    );
    let p = on.randomize_params(5);
    let q = off.randomize_params(5);
    assert_eq!(p.conv2d_0.weight, q.conv2d_0.weight);
    let x: ndarray::Array4<f32> = pat(IxDyn(&[2, 3, 9, 7]), 1.3)
        .mapv(|v| v as f32)
        .into_dimensionality()
        .unwrap();
    let s: ndarray::Array3<f32> = pat(IxDyn(&[2, 3, 12]), 0.7)
        .mapv(|v| v as f32)
        .into_dimensionality()
        .unwrap();
    let yo = on.evaluate(
        &p,
        ConvEpiOnInputs {
            x: x.view(),
            s: s.view(),
        },
    )?;
    let yf = off.evaluate(
        &q,
        ConvEpiOffInputs {
            x: x.view(),
            s: s.view(),
        },
    )?;
    let ps = st.randomize_params(5);
    let ys = st.evaluate(
        &ps,
        ConvEpiStaticInputs {
            x: x.view(),
            s: s.view(),
        },
    )?;
    // the same arithmetic (the sums, then one add and the ReLU): bit for bit
    assert_eq!(yo.b, yf.b);
    assert_eq!(yo.c, yf.c);
    assert_eq!(yo.d, yf.d);
    assert_eq!(yo.e, yf.e);
    assert_eq!(yo.f, yf.f);
    assert_eq!(yo.g, yf.g);
    assert_eq!(ys.b, yf.b);
    assert_eq!(ys.f, yf.f);
    assert_eq!(yo.h.dim(), (2, 8, 4, 3));
    assert_eq!(yo.h, yf.h);
    assert_eq!(yo.i, yf.i);
    assert_eq!(yo.j, yf.j);
    assert_eq!(yo.k, yf.k);
    assert_eq!((&ys.h, &ys.i, &ys.j), (&yf.h, &yf.i, &yf.j));
    assert!(yo.h.iter().any(|&v| v == 0.0) && yo.j.iter().any(|&v| v < 0.0));
    // int8: the quantized convolution, then the epilogue over its output (as the unfused graph)
    let (mq, mqo) = (ConvEpiQ::new()?, ConvEpiQOff::new()?);
    let (pq, pqo) = (mq.randomize_params(5), mqo.randomize_params(5));
    let (qp, qpo) = (mq.quantize(&pq)?, mqo.quantize(&pqo)?);
    assert_eq!(qp.quantized(), qpo.quantized());
    assert_eq!(qp.quantized().len(), 11);
    let yq = mq.evaluate_quantized(
        &qp,
        ConvEpiQInputs {
            x: x.view(),
            s: s.view(),
        },
    )?;
    let qo = mqo.evaluate_quantized(
        &qpo,
        ConvEpiQOffInputs {
            x: x.view(),
            s: s.view(),
        },
    )?;
    assert_eq!(
        (&yq.b, &yq.c, &yq.d, &yq.e, &yq.f, &yq.g),
        (&qo.b, &qo.c, &qo.d, &qo.e, &qo.f, &qo.g)
    );
    assert_eq!((&yq.h, &yq.i, &yq.j), (&qo.h, &qo.i, &qo.j));
    assert_ne!(yq.h, yo.h);
    assert_ne!(yq.b, yo.b); // (it did run in int8)
    // the ReLUs did clip something (the test would be weak otherwise)
    assert!(yo.c.iter().any(|&v| v == 0.0) && yo.c.iter().any(|&v| v > 0.0));
    // gradients through the fused nodes: as the unfused graph's
    let seeds = |o: &ConvEpiOnOutputs| {
        let w = |a: &ArrayD<f32>, k: f64| pat(IxDyn(a.shape()), k).mapv(|v| v as f32);
        (
            w(&o.b.clone().into_dyn(), 0.4),
            w(&o.c.clone().into_dyn(), 0.8),
            w(&o.d.clone().into_dyn(), 1.2),
            w(&o.e.clone().into_dyn(), 1.6),
            w(&o.f.clone().into_dyn(), 2.0),
            w(&o.g.clone().into_dyn(), 2.4),
            [&o.h, &o.i, &o.j, &o.k].map(|a| w(&a.clone().into_dyn(), 2.8)),
        )
    };
    let (sb, sc, sd, se, sf, sg, [sh, si, sj, sk]) = seeds(&yo);
    fn dim<D: ndarray::Dimension>(a: ArrayD<f32>) -> ndarray::Array<f32, D> {
        a.into_dimensionality().unwrap()
    }
    let (_, go) = on.evaluate_gradients(
        &p,
        ConvEpiOnInputs {
            x: x.view(),
            s: s.view(),
        },
        ConvEpiOnOutputs {
            b: dim(sb.clone()),
            c: dim(sc.clone()),
            d: dim(sd.clone()),
            e: dim(se.clone()),
            f: dim(sf.clone()),
            g: dim(sg.clone()),
            h: dim(sh.clone()),
            i: dim(si.clone()),
            j: dim(sj.clone()),
            k: dim(sk.clone()),
        },
    )?;
    let (_, gf) = off.evaluate_gradients(
        &q,
        ConvEpiOffInputs {
            x: x.view(),
            s: s.view(),
        },
        ConvEpiOffOutputs {
            b: dim(sb),
            c: dim(sc),
            d: dim(sd),
            e: dim(se),
            f: dim(sf),
            g: dim(sg),
            h: dim(sh),
            i: dim(si),
            j: dim(sj),
            k: dim(sk),
        },
    )?;
    let close = |a: &ArrayD<f32>, b: &ArrayD<f32>, what: &str| {
        for (u, v) in a.iter().zip(b) {
            assert!(
                (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
                "{what}: {u} vs {v}"
            );
        }
    };
    close(
        &go.conv2d_0.weight.clone().into_dyn(),
        &gf.conv2d_0.weight.clone().into_dyn(),
        "a.weight",
    );
    close(
        &go.conv2d_0.bias.clone().into_dyn(),
        &gf.conv2d_0.bias.clone().into_dyn(),
        "a.bias",
    );
    close(
        &go.conv2d_1.weight.clone().into_dyn(),
        &gf.conv2d_1.weight.clone().into_dyn(),
        "b.weight",
    );
    close(
        &go.conv1d_0.weight.clone().into_dyn(),
        &gf.conv1d_0.weight.clone().into_dyn(),
        "f.weight",
    );
    close(
        &go.gc.bias.clone().into_dyn(),
        &gf.gc.bias.clone().into_dyn(),
        "g.bias",
    );
    // through the pooled convolutions (their training graph keeps the pools unfused)
    close(
        &go.conv2d_5.weight.clone().into_dyn(),
        &gf.conv2d_5.weight.clone().into_dyn(),
        "h.weight",
    );
    close(
        &go.conv2d_6.bias.clone().into_dyn(),
        &gf.conv2d_6.bias.clone().into_dyn(),
        "i.bias",
    );
    close(
        &go.conv2d_7.weight.clone().into_dyn(),
        &gf.conv2d_7.weight.clone().into_dyn(),
        "j.weight",
    );
    assert!(go.conv2d_5.weight.iter().any(|&v| v != 0.0));
    Ok(())
}
