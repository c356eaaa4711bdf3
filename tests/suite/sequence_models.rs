//! The sequence models of the library (`MultiHeadAttention`, `RoPE`, `PositionalEmbedding`,
//! the pre-LN transformer blocks, `LSTMCell` / `GRUCell`, `LSTM` / `GRU`): outputs against naive
//! references written here, gradients of `RoPE` and the recurrent scans against central
//! differences, and a PyTorch-layout `MultiheadAttention` state dict (hand-built safetensors)
//! loaded by name.
#![allow(clippy::needless_range_loop)]

use crate::attention::{arr, naive};
use crate::common::fd::{dot, gradcheck, pat, set, wave};
use mithril::prelude::*;
use ndarray::{Array1, Array2, Array3, ArrayD, Axis, Ix3, Ix4, IxDyn, s};
use std::marker::PhantomData;

mithril! {
    compile Mha = MultiHeadAttention(8, 2) { dtype: f64 };
    compile MhaCausal = MultiHeadAttention(8, 4, causal = true) { dtype: f64 };
    compile Enc = TransformerEncoderBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh") { dtype: f64 };
    compile Dec = TransformerDecoderBlock(8, 2, dim_feedforward = 12) { dtype: f64 };
    compile PosEmb = PositionalEmbedding(6, 3) { dtype: f64 };
    compile Lstm = LSTM(2, 3) { dtype: f64 };
    compile Gru = GRU(2, 3) { dtype: f64 };
    compile LstmCell3 = LSTMCell(2, 3) { dtype: f64 };
    compile GruCell3 = GRUCell(2, 3) { dtype: f64 };

    model RopeGrad {
        param x: f64[1, 2, 3, 4];
        output y = RoPE(4)(x);
    }

    model RopeAt {
        param x: f64[1, 2, 3, 4];
        input pos: i64[];
        output y = CachedRoPE(4, base = 100.0)(x, pos);
    }

    // `norm_fusion` and `head_fusion` (on by default) against the unfused graphs
    compile EncNoNorm = TransformerEncoderBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh") { dtype: f64, optimizations: { norm_fusion: false } };
    compile EncOff = TransformerEncoderBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh") { dtype: f64, optimizations: { norm_fusion: false, head_fusion: false } };
    compile MhaOff = MultiHeadAttention(8, 2) { dtype: f64, optimizations: { head_fusion: false } };

    /// Layer norms with and without scale and bias, an RMS norm, and a layer norm whose mean
    /// is also an output (its pattern has another user: not fused as a layer norm).
    model Norms {
        input x: f32[N, 3, 20];
        output ln = LayerNorm()(x);
        output plain = LayerNorm(use_scale = false, use_bias = false, eps = 0.01)(x + 1.0);
        output rms = RMSNorm()(x * 2.0);
        let z = x * 3.0;
        output mu = z.mean(axis = -1, keepdim = true);
        output shared = (z - mu) / sqrt(((z - mu) * (z - mu)).mean(axis = -1, keepdim = true) + 1e-5);
    }
    compile NormsOff = Norms { optimizations: { norm_fusion: false } };
    compile NormsStatic = Norms { static_shapes: true, shapes: { x: [2, 3, 20] } };
}

fn lin(x: &Array2<f64>, w: &Array2<f64>, b: &Array1<f64>) -> Array2<f64> {
    x.dot(&w.t()) + b
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

fn close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

/// Naive `nn.MultiheadAttention` (batch first) from its PyTorch params.
#[allow(clippy::too_many_arguments)]
fn naive_mha(
    xq: &Array3<f64>,
    xkv: &Array3<f64>,
    w_in: &Array2<f64>,
    b_in: &Array1<f64>,
    w_o: &Array2<f64>,
    b_o: &Array1<f64>,
    heads: usize,
    causal: bool,
) -> Array3<f64> {
    let (b, s, e) = xq.dim();
    let t = xkv.dim().1;
    let hd = e / heads;
    let split = |x: &Array3<f64>, n: usize, part: usize| {
        let w = w_in.slice(s![part * e..(part + 1) * e, ..]).to_owned();
        let bb = b_in.slice(s![part * e..(part + 1) * e]).to_owned();
        let mut out = ArrayD::zeros(IxDyn(&[b, heads, n, hd]));
        for bi in 0..b {
            let p = lin(&x.index_axis(Axis(0), bi).to_owned(), &w, &bb);
            for h in 0..heads {
                for i in 0..n {
                    for c in 0..hd {
                        out[[bi, h, i, c].as_slice()] = p[[i, h * hd + c]];
                    }
                }
            }
        }
        out
    };
    let (q, k, v) = (split(xq, s, 0), split(xkv, t, 1), split(xkv, t, 2));
    let a = naive(&q, &k, &v, None, None, causal, None);
    let mut out = Array3::zeros((b, s, e));
    for bi in 0..b {
        let mut m = Array2::zeros((s, e));
        for h in 0..heads {
            for i in 0..s {
                for c in 0..hd {
                    m[[i, h * hd + c]] = a[[bi, h, i, c].as_slice()];
                }
            }
        }
        out.index_axis_mut(Axis(0), bi).assign(&lin(&m, w_o, b_o));
    }
    out
}

fn layer_norm(x: &Array3<f64>, g: &Array1<f64>, b: &Array1<f64>) -> Array3<f64> {
    let mut y = x.clone();
    for mut row in y.lanes_mut(Axis(2)) {
        let n = row.len() as f64;
        let mu = row.sum() / n;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
        for (i, v) in row.iter_mut().enumerate() {
            *v = (*v - mu) / (var + 1e-5).sqrt() * g[i] + b[i];
        }
    }
    y
}

/// A safetensors file as `safetensors.torch.save_file` writes it (f64 tensors, names sorted).
fn safetensors_f64(mut tensors: Vec<(&str, Vec<usize>, Vec<f64>)>) -> Vec<u8> {
    tensors.sort_by(|a, b| a.0.cmp(b.0));
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut off = 0;
    for (n, shape, data) in &tensors {
        let sh: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
        header.push_str(&format!(
            r#","{n}":{{"dtype":"F64","shape":[{}],"data_offsets":[{off},{}]}}"#,
            sh.join(","),
            off + data.len() * 8
        ));
        off += data.len() * 8;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for (_, _, data) in &tensors {
        for v in data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// A PyTorch `nn.MultiheadAttention(8, 2, batch_first=True)` state dict (its names and the
/// `[3E, E]` in-projection) loads by name; self- and cross-attention match the reference.
#[test]
fn multi_head_attention_loads_a_pytorch_state_dict() {
    let m = Mha::new().unwrap();
    let mut p = m.randomize_params(0);
    assert_eq!(
        p.names(),
        [
            "in_proj_weight",
            "in_proj_bias",
            "out_proj.weight",
            "out_proj.bias"
        ]
    );
    let e = 8;
    let vals = |n: usize, salt: f64| (0..n).map(|i| 0.4 * wave(i, salt)).collect::<Vec<f64>>();
    let (w_in, b_in, w_o, b_o) = (
        vals(3 * e * e, 0.1),
        vals(3 * e, 0.2),
        vals(e * e, 0.3),
        vals(e, 0.4),
    );
    let bytes = safetensors_f64(vec![
        ("in_proj_weight", vec![3 * e, e], w_in.clone()),
        ("in_proj_bias", vec![3 * e], b_in.clone()),
        ("out_proj.weight", vec![e, e], w_o.clone()),
        ("out_proj.bias", vec![e], b_o.clone()),
    ]);
    p.load_safetensors_bytes(&bytes).unwrap();
    let w_in = Array2::from_shape_vec((3 * e, e), w_in).unwrap();
    let b_in = Array1::from_vec(b_in);
    let w_o = Array2::from_shape_vec((e, e), w_o).unwrap();
    let b_o = Array1::from_vec(b_o);
    assert_eq!(p.in_proj_weight, w_in);
    let x = arr(&[2, 5, e], 0.7).into_dimensionality::<Ix3>().unwrap();
    let mem = arr(&[2, 7, e], 0.9).into_dimensionality::<Ix3>().unwrap();
    let o = m
        .evaluate(
            &p,
            MhaInputs {
                query: x.view(),
                key: x.view(),
                value: x.view(),
            },
        )
        .unwrap();
    let want = naive_mha(&x, &x, &w_in, &b_in, &w_o, &b_o, 2, false);
    close(
        o.output.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-12,
        "self-attention",
    );
    let o = m
        .evaluate(
            &p,
            MhaInputs {
                query: x.view(),
                key: mem.view(),
                value: mem.view(),
            },
        )
        .unwrap();
    let want = naive_mha(&x, &mem, &w_in, &b_in, &w_o, &b_o, 2, false);
    assert_eq!(o.output.shape(), &[2, 5, e]);
    close(
        o.output.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-12,
        "cross-attention",
    );
    // 4 heads, causal
    let mc = MhaCausal::new().unwrap();
    let pc = mc.randomize_params(3);
    let o = mc
        .evaluate(
            &pc,
            MhaCausalInputs {
                query: x.view(),
                key: x.view(),
                value: x.view(),
            },
        )
        .unwrap();
    let want = naive_mha(
        &x,
        &x,
        &pc.in_proj_weight,
        &pc.in_proj_bias,
        &pc.out_proj.weight,
        &pc.out_proj.bias,
        4,
        true,
    );
    close(
        o.output.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-12,
        "causal, 4 heads",
    );
}

fn gelu_tanh(x: f64) -> f64 {
    0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
}

/// The pre-LN encoder block (PyTorch's names) against the reference; the decoder block runs
/// and names its params as `nn.TransformerDecoderLayer`.
#[test]
fn transformer_blocks() {
    let m = Enc::new().unwrap();
    let p = m.randomize_params(5);
    assert_eq!(
        p.names(),
        [
            "norm1.weight",
            "norm1.bias",
            "self_attn.in_proj_weight",
            "self_attn.in_proj_bias",
            "self_attn.out_proj.weight",
            "self_attn.out_proj.bias",
            "norm2.weight",
            "norm2.bias",
            "linear1.weight",
            "linear1.bias",
            "linear2.weight",
            "linear2.bias",
        ]
    );
    let x = arr(&[2, 6, 8], 0.3).into_dimensionality::<Ix3>().unwrap();
    let o = m.evaluate(&p, EncInputs { input: x.view() }).unwrap();
    let sa = &p.self_attn;
    let h = layer_norm(&x, &p.norm1.weight, &p.norm1.bias);
    let a = naive_mha(
        &h,
        &h,
        &sa.in_proj_weight,
        &sa.in_proj_bias,
        &sa.out_proj.weight,
        &sa.out_proj.bias,
        2,
        false,
    );
    let x1 = &x + &a;
    let h2 = layer_norm(&x1, &p.norm2.weight, &p.norm2.bias);
    let mut want = x1.clone();
    for b in 0..2 {
        let u = lin(
            &h2.index_axis(Axis(0), b).to_owned(),
            &p.linear1.weight,
            &p.linear1.bias,
        )
        .mapv(gelu_tanh);
        let f = lin(&u, &p.linear2.weight, &p.linear2.bias);
        want.index_axis_mut(Axis(0), b).scaled_add(1.0, &f);
    }
    close(
        o.output.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-10,
        "encoder block",
    );

    let d = Dec::new().unwrap();
    let pd = d.randomize_params(6);
    let names = pd.names();
    for n in [
        "self_attn.in_proj_weight",
        "multihead_attn.out_proj.bias",
        "norm3.weight",
        "linear2.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
    let mem = arr(&[2, 4, 8], 0.8).into_dimensionality::<Ix3>().unwrap();
    let od = d
        .evaluate(
            &pd,
            DecInputs {
                input: x.view(),
                memory: mem.view(),
            },
        )
        .unwrap();
    // causal self-attention: the first position does not depend on the later ones
    let mut x2 = x.clone();
    x2[[0, 5, 0]] += 1.0;
    let od2 = d
        .evaluate(
            &pd,
            DecInputs {
                input: x2.view(),
                memory: mem.view(),
            },
        )
        .unwrap();
    assert_eq!(
        od.output.slice(s![0, 0..5, ..]),
        od2.output.slice(s![0, 0..5, ..])
    );
    assert_ne!(
        od.output.slice(s![0, 5, ..]),
        od2.output.slice(s![0, 5, ..])
    );
}

/// `RoPE`: the rotation against a reference, and its gradient against central differences.
#[test]
fn rope_rotates_and_differentiates() {
    let m = RopeGrad::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "x", |i| wave(i, 0.5));
    let o = m
        .evaluate(
            &p,
            RopeGradInputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    let x = &p.x;
    for h in 0..2 {
        for s in 0..3 {
            for i in 0..2 {
                let th = s as f64 * 10000f64.powf(-2.0 * i as f64 / 4.0);
                let (a, b) = (x[[0, h, s, i]], x[[0, h, s, i + 2]]);
                let (ya, yb) = (a * th.cos() - b * th.sin(), b * th.cos() + a * th.sin());
                assert!((o.y[[0, h, s, i]] - ya).abs() < 1e-6, "{h} {s} {i}");
                assert!((o.y[[0, h, s, i + 2]] - yb).abs() < 1e-6);
            }
        }
    }
    let seed = || pat(Ix4(1, 2, 3, 4), 0.2);
    let loss = |p: &RopeGradParams| {
        dot(
            &m.evaluate(
                p,
                RopeGradInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap()
            .y,
            &seed(),
        )
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            RopeGradInputs {
                _marker: PhantomData,
            },
            RopeGradOutputs { y: seed() },
        )
        .unwrap();
    assert_eq!(gradcheck("rope", &p, &g, loss), 24);
}

#[test]
fn positional_embedding_adds_rows() {
    let m = PosEmb::new().unwrap();
    let p = m.randomize_params(1);
    let x = arr(&[2, 4, 3], 0.1).into_dimensionality::<Ix3>().unwrap();
    let o = m.evaluate(&p, PosEmbInputs { input: x.view() }).unwrap();
    for b in 0..2 {
        for s in 0..4 {
            for c in 0..3 {
                assert_eq!(o.output[[b, s, c]], x[[b, s, c]] + p.weight[[s, c]]);
            }
        }
    }
    // longer than max_len: an error, not a panic
    let long = Array3::<f64>::zeros((1, 7, 3));
    assert!(m.evaluate(&p, PosEmbInputs { input: long.view() }).is_err());
}

/// Naive LSTM step (PyTorch's gate order i, f, g, o).
fn lstm_ref(
    x: &Array2<f64>,
    h: &Array2<f64>,
    c: &Array2<f64>,
    w: [&Array2<f64>; 2],
    b: [&Array1<f64>; 2],
) -> (Array2<f64>, Array2<f64>) {
    let n = h.dim().1;
    let g = lin(x, w[0], b[0]) + lin(h, w[1], b[1]);
    let mut hn = h.clone();
    let mut cn = c.clone();
    for r in 0..h.dim().0 {
        for j in 0..n {
            let (i, f, gg, o) = (
                sigmoid(g[[r, j]]),
                sigmoid(g[[r, n + j]]),
                g[[r, 2 * n + j]].tanh(),
                sigmoid(g[[r, 3 * n + j]]),
            );
            cn[[r, j]] = f * c[[r, j]] + i * gg;
            hn[[r, j]] = o * cn[[r, j]].tanh();
        }
    }
    (hn, cn)
}

/// Naive GRU step (PyTorch's gate order r, z, n).
fn gru_ref(
    x: &Array2<f64>,
    h: &Array2<f64>,
    w: [&Array2<f64>; 2],
    b: [&Array1<f64>; 2],
) -> Array2<f64> {
    let n = h.dim().1;
    let gi = lin(x, w[0], b[0]);
    let gh = lin(h, w[1], b[1]);
    let mut hn = h.clone();
    for r in 0..h.dim().0 {
        for j in 0..n {
            let rr = sigmoid(gi[[r, j]] + gh[[r, j]]);
            let z = sigmoid(gi[[r, n + j]] + gh[[r, n + j]]);
            let nn = (gi[[r, 2 * n + j]] + rr * gh[[r, 2 * n + j]]).tanh();
            hn[[r, j]] = (1.0 - z) * nn + z * h[[r, j]];
        }
    }
    hn
}

/// The cells and the scans against step-by-step references; the scans' gradients over 4 steps
/// against central differences.
#[test]
fn lstm_and_gru_match_references_and_differentiate() {
    let (b, t, i, n) = (2, 4, 2, 3);
    let xs = arr(&[b, t, i], 0.4).into_dimensionality::<Ix3>().unwrap();
    // the cells
    let lc = LstmCell3::new().unwrap();
    let pl = lc.randomize_params(1);
    assert_eq!(pl.names(), ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]);
    let (h0, c0) = (
        arr(&[b, n], 0.1).into_dimensionality().unwrap(),
        arr(&[b, n], 0.2).into_dimensionality().unwrap(),
    );
    let x0 = xs.index_axis(Axis(1), 0).to_owned();
    let o = lc
        .evaluate(
            &pl,
            LstmCell3Inputs {
                input: x0.view(),
                h: h0.view(),
                c: c0.view(),
            },
        )
        .unwrap();
    let (hw, cw) = lstm_ref(
        &x0,
        &h0,
        &c0,
        [&pl.weight_ih, &pl.weight_hh],
        [&pl.bias_ih, &pl.bias_hh],
    );
    close(
        o.h_next.as_slice().unwrap(),
        hw.as_slice().unwrap(),
        1e-12,
        "LSTMCell h",
    );
    close(
        o.c_next.as_slice().unwrap(),
        cw.as_slice().unwrap(),
        1e-12,
        "LSTMCell c",
    );
    let gc = GruCell3::new().unwrap();
    let pg = gc.randomize_params(2);
    let o = gc
        .evaluate(
            &pg,
            GruCell3Inputs {
                input: x0.view(),
                h: h0.view(),
            },
        )
        .unwrap();
    let hw = gru_ref(
        &x0,
        &h0,
        [&pg.weight_ih, &pg.weight_hh],
        [&pg.bias_ih, &pg.bias_hh],
    );
    close(
        o.h_next.as_slice().unwrap(),
        hw.as_slice().unwrap(),
        1e-12,
        "GRUCell",
    );

    // the scans
    let lm = Lstm::new().unwrap();
    let mut p = lm.randomize_params(3);
    assert_eq!(
        p.names(),
        ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    );
    set(&mut p, "weight_hh_l0", |k| 0.8 * wave(k, 1.1));
    let o = lm.evaluate(&p, LstmInputs { input: xs.view() }).unwrap();
    let (mut h, mut c) = (Array2::zeros((b, n)), Array2::zeros((b, n)));
    for s in 0..t {
        let x = xs.index_axis(Axis(1), s).to_owned();
        (h, c) = lstm_ref(
            &x,
            &h,
            &c,
            [&p.weight_ih_l0, &p.weight_hh_l0],
            [&p.bias_ih_l0, &p.bias_hh_l0],
        );
        close(
            o.output
                .index_axis(Axis(1), s)
                .to_owned()
                .as_slice()
                .unwrap(),
            h.as_slice().unwrap(),
            1e-12,
            "LSTM output",
        );
    }
    close(
        o.h_n.as_slice().unwrap(),
        h.as_slice().unwrap(),
        1e-12,
        "LSTM h_n",
    );
    close(
        o.c_n.as_slice().unwrap(),
        c.as_slice().unwrap(),
        1e-12,
        "LSTM c_n",
    );
    // PyTorch's `[num_layers, B, H]` layout: one layer
    assert_eq!(o.h_n_layers.dim(), (1, b, n));
    assert_eq!(o.h_n_layers.as_slice(), o.h_n.as_slice());
    assert_eq!(o.c_n_layers.as_slice(), o.c_n.as_slice());
    let seeds = || LstmOutputs {
        output: pat(Ix3(b, t, n), 0.3),
        h_n: pat(ndarray::Ix2(b, n), 0.6),
        c_n: pat(ndarray::Ix2(b, n), 0.9),
        h_n_layers: pat(Ix3(1, b, n), 0.2),
        c_n_layers: pat(Ix3(1, b, n), 0.7),
    };
    let loss = |p: &LstmParams| {
        let o = lm.evaluate(p, LstmInputs { input: xs.view() }).unwrap();
        let s = seeds();
        dot(&o.output, &s.output)
            + dot(&o.h_n, &s.h_n)
            + dot(&o.c_n, &s.c_n)
            + dot(&o.h_n_layers, &s.h_n_layers)
            + dot(&o.c_n_layers, &s.c_n_layers)
    };
    let (_, g) = lm
        .evaluate_gradients(&p, LstmInputs { input: xs.view() }, seeds())
        .unwrap();
    assert_eq!(gradcheck("LSTM", &p, &g, loss), 24 + 36 + 12 + 12);

    let gm = Gru::new().unwrap();
    let p = gm.randomize_params(4);
    let o = gm.evaluate(&p, GruInputs { input: xs.view() }).unwrap();
    let mut h = Array2::zeros((b, n));
    for s in 0..t {
        let x = xs.index_axis(Axis(1), s).to_owned();
        h = gru_ref(
            &x,
            &h,
            [&p.weight_ih_l0, &p.weight_hh_l0],
            [&p.bias_ih_l0, &p.bias_hh_l0],
        );
        close(
            o.output
                .index_axis(Axis(1), s)
                .to_owned()
                .as_slice()
                .unwrap(),
            h.as_slice().unwrap(),
            1e-12,
            "GRU output",
        );
    }
    close(
        o.h_n.as_slice().unwrap(),
        h.as_slice().unwrap(),
        1e-12,
        "GRU h_n",
    );
    assert_eq!(o.h_n_layers.dim(), (1, b, n));
    assert_eq!(o.h_n_layers.as_slice(), o.h_n.as_slice());
    let seeds = || GruOutputs {
        output: pat(Ix3(b, t, n), 0.4),
        h_n: pat(ndarray::Ix2(b, n), 0.8),
        h_n_layers: pat(Ix3(1, b, n), 0.1),
    };
    let loss = |p: &GruParams| {
        let o = gm.evaluate(p, GruInputs { input: xs.view() }).unwrap();
        let s = seeds();
        dot(&o.output, &s.output) + dot(&o.h_n, &s.h_n) + dot(&o.h_n_layers, &s.h_n_layers)
    };
    let (_, g) = gm
        .evaluate_gradients(&p, GruInputs { input: xs.view() }, seeds())
        .unwrap();
    assert_eq!(gradcheck("GRU", &p, &g, loss), 18 + 27 + 9 + 9);
}

// ---- stacked layers (`num_layers`) and given initial states (`LSTMWithState`, `GRUWithState`)

mithril! {
    compile Lstm2s = LSTMWithState(2, 3, num_layers = 2) { dtype: f64 };
    compile Lstm2 = LSTM(2, 3, num_layers = 2) { dtype: f64 };
    compile Gru2s = GRUWithState(2, 3, num_layers = 2) { dtype: f64 };
}

/// Two stacked layers from given states against the step-by-step references (layer 1 reads
/// layer 0's outputs; PyTorch's `weight_ih_l1: [4 H, H]` names), gradients of every param over
/// 3 steps against central differences; `LSTM(num_layers = 2)` is the same from zero states.
#[test]
fn stacked_lstm_and_gru_from_initial_states() {
    let (b, t, i, n) = (2, 3, 2, 3);
    let xs = arr(&[b, t, i], 0.45).into_dimensionality::<Ix3>().unwrap();
    let h0 = arr(&[2, b, n], 0.15).into_dimensionality::<Ix3>().unwrap();
    let c0 = arr(&[2, b, n], 0.25).into_dimensionality::<Ix3>().unwrap();
    let m = Lstm2s::new().unwrap();
    let p = m.randomize_params(5);
    assert_eq!(
        p.names(),
        [
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
            "weight_ih_l1",
            "weight_hh_l1",
            "bias_ih_l1",
            "bias_hh_l1"
        ]
    );
    assert_eq!(p.weight_ih_l1.dim(), (12, 3));
    let inputs = || Lstm2sInputs {
        input: xs.view(),
        h0: h0.view(),
        c0: c0.view(),
    };
    let o = m.evaluate(&p, inputs()).unwrap();
    // the reference: layer 0 over the sequence, then layer 1 over its outputs
    let w = [
        (
            [&p.weight_ih_l0, &p.weight_hh_l0],
            [&p.bias_ih_l0, &p.bias_hh_l0],
        ),
        (
            [&p.weight_ih_l1, &p.weight_hh_l1],
            [&p.bias_ih_l1, &p.bias_hh_l1],
        ),
    ];
    let mut seq: Vec<Array2<f64>> = (0..t)
        .map(|s| xs.index_axis(Axis(1), s).to_owned())
        .collect();
    let (mut h, mut c) = (Array2::zeros((b, n)), Array2::zeros((b, n)));
    let mut finals = Vec::new();
    for (l, (wl, bl)) in w.iter().enumerate() {
        h = h0.index_axis(Axis(0), l).to_owned();
        c = c0.index_axis(Axis(0), l).to_owned();
        for x in seq.iter_mut() {
            (h, c) = lstm_ref(x, &h, &c, *wl, *bl);
            *x = h.clone();
        }
        finals.push((h.clone(), c.clone()));
    }
    for s in 0..t {
        close(
            o.output
                .index_axis(Axis(1), s)
                .to_owned()
                .as_slice()
                .unwrap(),
            seq[s].as_slice().unwrap(),
            1e-12,
            "2-layer LSTM output",
        );
    }
    close(
        o.h_n.as_slice().unwrap(),
        h.as_slice().unwrap(),
        1e-12,
        "h_n",
    );
    close(
        o.c_n.as_slice().unwrap(),
        c.as_slice().unwrap(),
        1e-12,
        "c_n",
    );
    // PyTorch's `h_n`, `c_n: [num_layers, B, H]`: layer l's last state at index l
    assert_eq!(o.h_n_layers.dim(), (2, b, n));
    assert_eq!(o.c_n_layers.dim(), (2, b, n));
    for (l, (hl, cl)) in finals.iter().enumerate() {
        close(
            o.h_n_layers
                .index_axis(Axis(0), l)
                .to_owned()
                .as_slice()
                .unwrap(),
            hl.as_slice().unwrap(),
            1e-12,
            &format!("h_n_layers[{l}]"),
        );
        close(
            o.c_n_layers
                .index_axis(Axis(0), l)
                .to_owned()
                .as_slice()
                .unwrap(),
            cl.as_slice().unwrap(),
            1e-12,
            &format!("c_n_layers[{l}]"),
        );
    }
    let seeds = || Lstm2sOutputs {
        output: pat(Ix3(b, t, n), 0.35),
        h_n: pat(ndarray::Ix2(b, n), 0.65),
        c_n: pat(ndarray::Ix2(b, n), 0.95),
        h_n_layers: pat(Ix3(2, b, n), 0.15),
        c_n_layers: pat(Ix3(2, b, n), 0.55),
    };
    let loss = |p: &Lstm2sParams| {
        let o = m.evaluate(p, inputs()).unwrap();
        let s = seeds();
        dot(&o.output, &s.output)
            + dot(&o.h_n, &s.h_n)
            + dot(&o.c_n, &s.c_n)
            + dot(&o.h_n_layers, &s.h_n_layers)
            + dot(&o.c_n_layers, &s.c_n_layers)
    };
    let (_, g) = m.evaluate_gradients(&p, inputs(), seeds()).unwrap();
    assert_eq!(gradcheck("2-layer LSTM", &p, &g, loss), 84 + 96);

    // LSTM(num_layers = 2): the same params from zero states
    let z = Lstm2::new().unwrap();
    let mut pz = z.randomize_params(0);
    pz.load_safetensors_bytes(&p.to_safetensors_bytes().unwrap())
        .unwrap();
    let zeros = Array3::<f64>::zeros((2, b, n));
    let oz = z.evaluate(&pz, Lstm2Inputs { input: xs.view() }).unwrap();
    let os = m
        .evaluate(
            &p,
            Lstm2sInputs {
                input: xs.view(),
                h0: zeros.view(),
                c0: zeros.view(),
            },
        )
        .unwrap();
    assert_eq!((oz.output, oz.h_n, oz.c_n), (os.output, os.h_n, os.c_n));
    assert_eq!(
        (oz.h_n_layers, oz.c_n_layers),
        (os.h_n_layers, os.c_n_layers)
    );

    // GRUWithState, two layers
    let gm = Gru2s::new().unwrap();
    let p = gm.randomize_params(6);
    let gin = || Gru2sInputs {
        input: xs.view(),
        h0: h0.view(),
    };
    let o = gm.evaluate(&p, gin()).unwrap();
    let w = [
        (
            [&p.weight_ih_l0, &p.weight_hh_l0],
            [&p.bias_ih_l0, &p.bias_hh_l0],
        ),
        (
            [&p.weight_ih_l1, &p.weight_hh_l1],
            [&p.bias_ih_l1, &p.bias_hh_l1],
        ),
    ];
    let mut seq: Vec<Array2<f64>> = (0..t)
        .map(|s| xs.index_axis(Axis(1), s).to_owned())
        .collect();
    let mut h = Array2::zeros((b, n));
    let mut finals = Vec::new();
    for (l, (wl, bl)) in w.iter().enumerate() {
        h = h0.index_axis(Axis(0), l).to_owned();
        for x in seq.iter_mut() {
            h = gru_ref(x, &h, *wl, *bl);
            *x = h.clone();
        }
        finals.push(h.clone());
    }
    for s in 0..t {
        close(
            o.output
                .index_axis(Axis(1), s)
                .to_owned()
                .as_slice()
                .unwrap(),
            seq[s].as_slice().unwrap(),
            1e-12,
            "2-layer GRU output",
        );
    }
    close(
        o.h_n.as_slice().unwrap(),
        h.as_slice().unwrap(),
        1e-12,
        "GRU h_n",
    );
    assert_eq!(o.h_n_layers.dim(), (2, b, n));
    for (l, hl) in finals.iter().enumerate() {
        close(
            o.h_n_layers
                .index_axis(Axis(0), l)
                .to_owned()
                .as_slice()
                .unwrap(),
            hl.as_slice().unwrap(),
            1e-12,
            &format!("GRU h_n_layers[{l}]"),
        );
    }
    let seeds = || Gru2sOutputs {
        output: pat(Ix3(b, t, n), 0.45),
        h_n: pat(ndarray::Ix2(b, n), 0.85),
        h_n_layers: pat(Ix3(2, b, n), 0.25),
    };
    let loss = |p: &Gru2sParams| {
        let o = gm.evaluate(p, gin()).unwrap();
        let s = seeds();
        dot(&o.output, &s.output) + dot(&o.h_n, &s.h_n) + dot(&o.h_n_layers, &s.h_n_layers)
    };
    let (_, g) = gm.evaluate_gradients(&p, gin(), seeds()).unwrap();
    assert_eq!(gradcheck("2-layer GRU", &p, &g, loss), 63 + 72);
}

mithril! {
    /// A two-layer character GPT, full sequence (causal blocks).
    pub model KvGptFull {
        input tokens: i64[B, S];
        let wte = Embedding(num_embeddings = 11, dim = 8);
        let wpe = PositionalEmbedding(32, 8);
        let block0 = TransformerEncoderBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh", causal = true);
        let block1 = TransformerEncoderBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh", causal = true);
        let ln_f = LayerNorm();
        let head = Linear(11);
        output logits = head(ln_f(block1(block0(wpe(wte(tokens))))));
    }

    /// The same model at positions `pos ..` with a key/value cache per layer.
    pub model KvGptStep {
        input tokens: i64[B, S];
        input pos: i64[];
        input k0: f32[B, 2, M, 4];
        input v0: f32[B, 2, M, 4];
        input k1: f32[B, 2, M, 4];
        input v1: f32[B, 2, M, 4];
        let wte = Embedding(num_embeddings = 11, dim = 8);
        let wpe = CachedPositionalEmbedding(32, 8);
        let block0 = CachedTransformerBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh");
        let block1 = CachedTransformerBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh");
        let (h, k0n, v0n) = block0(wpe(wte(tokens), pos), k0, v0, pos);
        let (h, k1n, v1n) = block1(h, k1, v1, pos);
        let ln_f = LayerNorm();
        let head = Linear(11);
        output logits = head(ln_f(h));
        output k0_out = k0n;
        output v0_out = v0n;
        output k1_out = k1n;
        output v1_out = v1n;
    }

    pub compile KvGptDecode = KvGptStep { donate: [k0, v0, k1, v1] };
}

/// Decoding through the cache (a prefill of 4 tokens, then one token per call) gives the logits
/// of the full-sequence forward at every position. Tolerance 1e-5 on logits of size ~1: both
/// compute the same f32 expression and differ only in summation order (the tiled attention
/// kernel against the cache kernel's dot products, a GEMM over 10 rows against one), a few ulps
/// per sum of at most 16 terms.
#[test]
fn kv_cache_decoding_matches_the_full_forward() {
    let full = KvGptFull::new().unwrap();
    let pf = full.randomize_params(3);
    let dec = KvGptDecode::new().unwrap();
    let mut pd = dec.randomize_params(0);
    pd.load_safetensors_bytes(&pf.to_safetensors_bytes().unwrap())
        .unwrap();
    let toks = ndarray::array![[1i64, 5, 2, 9, 0, 3, 3, 7, 10, 4]];
    let want = full
        .evaluate(
            &pf,
            KvGptFullInputs {
                tokens: toks.view(),
            },
        )
        .unwrap()
        .logits;
    let z = || ndarray::Array4::<f32>::zeros((1, 2, 16, 4));
    let (mut k0, mut v0, mut k1, mut v1) = (z(), z(), z(), z());
    let ptr = k1.as_ptr();
    let close = |got: ndarray::ArrayView2<f32>, at: usize| {
        for (i, row) in got.rows().into_iter().enumerate() {
            for (c, g) in row.iter().enumerate() {
                let w = want[[0, at + i, c]];
                assert!(
                    (g - w).abs() < 1e-5,
                    "position {} logit {c}: {g} vs {w}",
                    at + i
                );
            }
        }
    };
    let mut at = 0usize;
    for n in [4usize, 1, 1, 1, 1, 1, 1] {
        let t = toks.slice(s![.., at..at + n]).to_owned();
        let pos = ndarray::arr0(at as i64);
        let o = dec
            .evaluate_donating(
                &pd,
                KvGptDecodeDonatingInputs {
                    tokens: t.view(),
                    pos: pos.view(),
                    k0,
                    v0,
                    k1,
                    v1,
                },
            )
            .unwrap();
        close(o.logits.index_axis(Axis(0), 0), at);
        // the cache came back in the caller's buffer: appended, not copied
        assert_eq!(o.k1_out.as_ptr(), ptr);
        (k0, v0, k1, v1) = (o.k0_out, o.v0_out, o.k1_out, o.v1_out);
        at += n;
    }
    // the rows after the last position are untouched (still zero)
    assert!(k0.slice(s![.., .., at.., ..]).iter().all(|&x| x == 0.0));
    assert!(v1.slice(s![.., .., ..at, ..]).iter().any(|&x| x != 0.0));
    // `evaluate` computes the same, into new arrays
    let pos = ndarray::arr0(at as i64 - 1);
    let last = toks.slice(s![.., at - 1..at]).to_owned();
    let o = dec
        .evaluate(
            &pd,
            KvGptDecodeInputs {
                tokens: last.view(),
                pos: pos.view(),
                k0: k0.view(),
                v0: v0.view(),
                k1: k1.view(),
                v1: v1.view(),
            },
        )
        .unwrap();
    close(o.logits.index_axis(Axis(0), 0), at - 1);
    // a full cache is an error, not a panic
    let pos = ndarray::arr0(16i64);
    let e = dec
        .evaluate(
            &pd,
            KvGptDecodeInputs {
                tokens: last.view(),
                pos: pos.view(),
                k0: k0.view(),
                v0: v0.view(),
                k1: k1.view(),
                v1: v1.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("16"), "{e}");
    let two = toks.slice(s![.., 0..2]).to_owned();
    let pos = ndarray::arr0(15i64);
    let e = dec
        .evaluate(
            &pd,
            KvGptDecodeInputs {
                tokens: two.view(),
                pos: pos.view(),
                k0: k0.view(),
                v0: v0.view(),
                k1: k1.view(),
                v1: v1.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("full"), "{e}");
}

/// `CachedRoPE`: position `pos + s` against the rotation written here (at `pos = 0` it is
/// `RoPE`), and its gradient against central differences at an offset.
#[test]
fn cached_rope_rotates_from_an_offset() {
    let m = RopeAt::new().unwrap();
    let mut p = m.randomize_params(0);
    set(&mut p, "x", |i| wave(i, 0.3));
    let x = p.x.clone();
    // the angles are in the default float type (f32), as in `rope_rotates_and_differentiates`
    for pos in [0i64, 5] {
        let at = ndarray::arr0(pos);
        let o = m.evaluate(&p, RopeAtInputs { pos: at.view() }).unwrap();
        for h in 0..2 {
            for s in 0..3 {
                for i in 0..2 {
                    let th = (pos as f64 + s as f64) * 100f64.powf(-2.0 * i as f64 / 4.0);
                    let (a, b) = (x[[0, h, s, i]], x[[0, h, s, i + 2]]);
                    let (ya, yb) = (a * th.cos() - b * th.sin(), b * th.cos() + a * th.sin());
                    assert!((o.y[[0, h, s, i]] - ya).abs() < 1e-6, "{pos} {h} {s} {i}");
                    assert!(
                        (o.y[[0, h, s, i + 2]] - yb).abs() < 1e-6,
                        "{pos} {h} {s} {i}"
                    );
                }
            }
        }
    }
    let at = ndarray::arr0(7i64);
    let seed = || pat(Ix4(1, 2, 3, 4), 0.4);
    let loss = |p: &RopeAtParams| {
        dot(
            &m.evaluate(p, RopeAtInputs { pos: at.view() }).unwrap().y,
            &seed(),
        )
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            RopeAtInputs { pos: at.view() },
            RopeAtOutputs { y: seed() },
        )
        .unwrap();
    assert_eq!(gradcheck("cached rope", &p, &g, loss), 24);
}

/// f64 reference of a layer norm (`rms`: an RMS norm) over the last axis, then `· w + b`.
fn norm_ref(
    x: &[f64],
    d: usize,
    eps: f64,
    rms: bool,
    w: Option<&[f64]>,
    b: Option<&[f64]>,
) -> Vec<f64> {
    let mut out = Vec::with_capacity(x.len());
    for row in x.chunks(d) {
        let n = d as f64;
        let mu = if rms {
            0.0
        } else {
            row.iter().sum::<f64>() / n
        };
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
        for (i, v) in row.iter().enumerate() {
            let y = (v - mu) / (var + eps).sqrt();
            out.push(y * w.map_or(1.0, |w| w[i]) + b.map_or(0.0, |b| b[i]));
        }
    }
    out
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .map(|(&g, w)| (g as f64 - w).abs() / (1.0 + w.abs()))
        .fold(0.0, f64::max)
}

/// `norm_fusion`: the library `LayerNorm` (with and without scale and bias) and `RMSNorm` each
/// become one row-kernel node, within f32 rounding of an f64 reference (the fused kernels
/// accumulate the statistics in f64; measured here ~1e-7 relative, the unfused ops alike),
/// while a pattern whose mean has another user is fused as the RMS norm of the centred input;
/// the params' gradients match an f64 reference as the unfused compile's do; `static_shapes`
/// runs it too (its generic path).
#[test]
fn norm_fusion_matches_the_unfused_graph_and_an_f64_reference() {
    assert!(
        Norms::SUMMARY.contains("norm_fusion: 4"),
        "{}",
        Norms::SUMMARY
    );
    assert!(!NormsOff::SUMMARY.contains("norm_fusion: 4"));
    let (m, off, st) = (
        Norms::new().unwrap(),
        NormsOff::new().unwrap(),
        NormsStatic::new().unwrap(),
    );
    let p = m.randomize_params(4);
    let po = off.randomize_params(4);
    let ps = st.randomize_params(4);
    assert_eq!(p.layer_norm_0.weight, po.layer_norm_0.weight);
    let x = pat(Ix3(2, 3, 20), 0.3).mapv(|v| (3.0 * v + 0.5) as f32);
    let o = m.evaluate(&p, NormsInputs { x: x.view() }).unwrap();
    let u = off.evaluate(&po, NormsOffInputs { x: x.view() }).unwrap();
    let so = st.evaluate(&ps, NormsStaticInputs { x: x.view() }).unwrap();
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let f = |a: &Array1<f32>| a.iter().map(|&v| v as f64).collect::<Vec<f64>>();
    let (w, b) = (f(&p.layer_norm_0.weight), f(&p.layer_norm_0.bias));
    let sc = |k: f64, a: f64| xd.iter().map(|v| v * k + a).collect::<Vec<f64>>();
    let cases = [
        (
            "ln",
            &o.ln,
            &u.ln,
            &so.ln,
            norm_ref(&xd, 20, 1e-5, false, Some(&w), Some(&b)),
        ),
        (
            "plain",
            &o.plain,
            &u.plain,
            &so.plain,
            norm_ref(&sc(1.0, 1.0), 20, 0.01, false, None, None),
        ),
        (
            "rms",
            &o.rms,
            &u.rms,
            &so.rms,
            norm_ref(
                &sc(2.0, 0.0),
                20,
                1e-6,
                true,
                Some(&f(&p.rmsnorm_0.weight)),
                None,
            ),
        ),
        (
            "shared",
            &o.shared,
            &u.shared,
            &so.shared,
            norm_ref(&sc(3.0, 0.0), 20, 1e-5, false, None, None),
        ),
    ];
    for (what, fused, unfused, stat, want) in cases {
        let (ef, eu) = (
            max_err(fused.as_slice().unwrap(), &want),
            max_err(unfused.as_slice().unwrap(), &want),
        );
        println!("{what}: fused {ef:.2e}, unfused {eu:.2e} (relative to the f64 reference)");
        assert!(
            ef <= 1e-6 && eu <= 1e-6,
            "{what}: fused {ef:.2e}, unfused {eu:.2e}"
        );
        assert_eq!(fused.as_slice(), stat.as_slice(), "{what}: static_shapes");
    }
    // the gradients: the training graph keeps the unfused ops
    let seeds = || NormsOutputs {
        ln: pat(Ix3(2, 3, 20), 0.1).mapv(|v| v as f32),
        plain: pat(Ix3(2, 3, 20), 0.2).mapv(|v| v as f32),
        rms: pat(Ix3(2, 3, 20), 0.3).mapv(|v| v as f32),
        mu: pat(Ix3(2, 3, 1), 0.4).mapv(|v| v as f32),
        shared: pat(Ix3(2, 3, 20), 0.5).mapv(|v| v as f32),
    };
    let seeds_off = || {
        let s = seeds();
        NormsOffOutputs {
            ln: s.ln,
            plain: s.plain,
            rms: s.rms,
            mu: s.mu,
            shared: s.shared,
        }
    };
    let (_, g) = m
        .evaluate_gradients(&p, NormsInputs { x: x.view() }, seeds())
        .unwrap();
    let (_, gu) = off
        .evaluate_gradients(&po, NormsOffInputs { x: x.view() }, seeds_off())
        .unwrap();
    // by hand in f64: d/dw = Σ_rows seed · x̂, d/db = Σ_rows seed (x̂ the normalized input)
    let sd = seeds();
    let wsum = |seed: &ndarray::Array3<f32>, xh: &[f64]| -> Vec<f64> {
        let mut acc = vec![0.0; 20];
        for (k, (&s, &v)) in seed.iter().zip(xh).enumerate() {
            acc[k % 20] += s as f64 * v;
        }
        acc
    };
    let ones = vec![1.0; 6 * 20];
    let cases = [
        (
            "ln weight",
            &g.layer_norm_0.weight,
            &gu.layer_norm_0.weight,
            wsum(&sd.ln, &norm_ref(&xd, 20, 1e-5, false, None, None)),
        ),
        (
            "ln bias",
            &g.layer_norm_0.bias,
            &gu.layer_norm_0.bias,
            wsum(&sd.ln, &ones),
        ),
        (
            "rms weight",
            &g.rmsnorm_0.weight,
            &gu.rmsnorm_0.weight,
            wsum(
                &sd.rms,
                &norm_ref(&sc(2.0, 0.0), 20, 1e-6, true, None, None),
            ),
        ),
    ];
    // (the training graph fuses a norm too where the backward reads none of its intermediates:
    // here each quotient, whose input needs no gradient)
    for (what, fused, unfused, want) in cases {
        let (ef, eu) = (
            max_err(fused.as_slice().unwrap(), &want),
            max_err(unfused.as_slice().unwrap(), &want),
        );
        println!(
            "gradient of {what}: fused {ef:.2e}, unfused {eu:.2e} (relative to the f64 reference)"
        );
        assert!(
            ef <= 1e-6 && eu <= 1e-6,
            "gradient of {what}: fused {ef:.2e}, unfused {eu:.2e}"
        );
    }
}

/// `head_fusion`: the attention of the encoder block (its `[B, S, 3E]` in-projection sliced
/// into heads) and of `MultiHeadAttention` (three projections) reads its heads through
/// strides and writes `[B, S, E]`: bit for bit the unfused graph (the f64 references of
/// `transformer_blocks` and `multi_head_attention_loads_a_pytorch_state_dict` run the fused
/// forms); the gradients match the unfused compile's (the training graph keeps the head
/// copies, which the attention's gradient reads, but fuses `norm1`'s quotient, whose input
/// needs no gradient: f64 rounding).
#[test]
fn head_fusion_is_bitwise_the_unfused_graph() {
    assert!(Enc::SUMMARY.contains("head_fusion: 1"), "{}", Enc::SUMMARY);
    assert!(Enc::SUMMARY.contains("norm_fusion: 2"), "{}", Enc::SUMMARY);
    assert!(Mha::SUMMARY.contains("head_fusion: 1"), "{}", Mha::SUMMARY);
    let (a, b, c) = (
        Enc::new().unwrap(),
        EncNoNorm::new().unwrap(),
        EncOff::new().unwrap(),
    );
    let (pa, pb, pc) = (
        a.randomize_params(5),
        b.randomize_params(5),
        c.randomize_params(5),
    );
    assert_eq!(pa.self_attn.in_proj_weight, pc.self_attn.in_proj_weight);
    let x = arr(&[2, 6, 8], 0.3).into_dimensionality::<Ix3>().unwrap();
    let ob = b
        .evaluate(&pb, EncNoNormInputs { input: x.view() })
        .unwrap();
    let oc = c.evaluate(&pc, EncOffInputs { input: x.view() }).unwrap();
    assert_eq!(ob.output, oc.output);
    let oa = a.evaluate(&pa, EncInputs { input: x.view() }).unwrap();
    close(
        oa.output.as_slice().unwrap(),
        oc.output.as_slice().unwrap(),
        1e-14,
        "norm fusion, f64",
    );
    let seed = pat(Ix3(2, 6, 8), 0.7);
    let (_, ga) = a
        .evaluate_gradients(
            &pa,
            EncInputs { input: x.view() },
            EncOutputs {
                output: seed.clone(),
            },
        )
        .unwrap();
    let (_, gc) = c
        .evaluate_gradients(
            &pc,
            EncOffInputs { input: x.view() },
            EncOffOutputs { output: seed },
        )
        .unwrap();
    close(
        ga.self_attn.in_proj_weight.as_slice().unwrap(),
        gc.self_attn.in_proj_weight.as_slice().unwrap(),
        1e-12,
        "in_proj_weight gradient",
    );
    close(
        ga.norm1.weight.as_slice().unwrap(),
        gc.norm1.weight.as_slice().unwrap(),
        1e-12,
        "norm1.weight gradient",
    );
    // cross-attention through three projections, and 4 heads on a causal mask
    let (m, mo) = (Mha::new().unwrap(), MhaOff::new().unwrap());
    let (p, po) = (m.randomize_params(2), mo.randomize_params(2));
    let xq = arr(&[2, 5, 8], 0.7).into_dimensionality::<Ix3>().unwrap();
    let mem = arr(&[2, 7, 8], 0.9).into_dimensionality::<Ix3>().unwrap();
    let o = m
        .evaluate(
            &p,
            MhaInputs {
                query: xq.view(),
                key: mem.view(),
                value: mem.view(),
            },
        )
        .unwrap();
    let u = mo
        .evaluate(
            &po,
            MhaOffInputs {
                query: xq.view(),
                key: mem.view(),
                value: mem.view(),
            },
        )
        .unwrap();
    assert_eq!(o.output, u.output);
}
