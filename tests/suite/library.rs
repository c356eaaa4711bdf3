//! The model library (Linear, MLP, LayerNorm, RMSNorm, Embedding, losses) against references
//! computed here with plain loops, plus weight sharing, param dtypes and nested user models.

use mithril::ndarray::{Array1, Array2, ArrayD, Dimension, IxDyn, arr1};
use mithril::prelude::*;

mithril! {
    model Lin {
        input x: f32[B, 5];
        let fc = Linear(3);
        output y = fc(x);
    }

    model LinNoBias {
        input x: f32[B, 5];
        output y = Linear(3, use_bias = false)(x);
    }

    model Lin3d {
        input x: f32[B, T, 4];
        output y = Linear(dimension = 2)(x);
    }

    model Lin64 {
        input x: f64[B, 4];
        output y = Linear(2)(x);
    }

    model Shared {
        input x: f32[B, 4];
        let fc = Linear(4);
        output y = fc(fc(x));
    }

    model Mlp3 {
        input x: f32[B, 6];
        output y = MLP(dimensions = [8, 5, 2], activations = [relu, tanh])(x);
    }

    model Norms {
        input x: f32[B, 6];
        output ln = LayerNorm()(x);
        output ln_plain = LayerNorm(use_scale = false, use_bias = false)(x);
        output ln_scale_only = LayerNorm(eps = 0.1, use_bias = false)(x);
        output rms = RMSNorm()(x);
    }

    model Embed {
        input ids: i64[B, T];
        let emb = Embedding(num_embeddings = 10, dim = 3);
        output y = emb(ids);
    }

    model Regression {
        input p: f32[B, N];
        input t: f32[B, N];
        output se = squared_error(p, t);
        output ae = absolute_error(input = p, target = t);
        output hinge = hinge_loss(p, t);
        output q50 = quantile_loss(p, t);
        output q10 = quantile_loss(p, t, quantile = 0.1);
        output q90 = quantile_loss(p, t, quantile = 0.9);
    }

    model Classification {
        input logits: f32[B, C];
        input probs: f32[B, C];
        input logp: f32[B, C];
        input target: i64[B];
        output ce_logits = cross_entropy(logits, target);
        output ce_probs = cross_entropy(probs, target, input_type = "probs");
        output ce_logp = cross_entropy(logp, target, input_type = "log_probs");
    }

    model Binary {
        input p: f32[N];
        input z: f32[N];
        input t: f32[N];
        output bce = binary_cross_entropy(p, t);
        output bce_logits = binary_cross_entropy(z, t, input_type = "logits");
    }

    model Kl {
        input logq: f32[N];
        input p: f32[N];
        input logp: f32[N];
        output kl = kl_divergence(logq, p);
        output kl_log = kl_divergence(logq, logp, log_target = true);
    }

    model Block(width: int) {
        input x: [B, D];
        let fc = Linear(width);
        let norm = LayerNorm();
        output y = relu(norm(fc(x)));
    }

    model Net {
        input x: f32[B, 6];
        let block = Block(8);
        let h = block(x);
        output out = Linear(2)(Block(width = 8)(h));
    }
}

// ------------------------------------------------------------------------------------------
// references
// ------------------------------------------------------------------------------------------

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15).wrapping_add(7);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn mat(r: usize, c: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_vec((r, c), values(r * c, seed)).unwrap()
}

/// `x @ w^T + b` with plain loops, in f64; `x: [n, in]`, `w: [out, in]`.
fn linear_ref(x: &[f64], n: usize, w: &Array2<f64>, b: Option<&[f64]>) -> Vec<f64> {
    let (out, inn) = (w.shape()[0], w.shape()[1]);
    let mut y = vec![0.0; n * out];
    for i in 0..n {
        for o in 0..out {
            let mut s = b.map(|b| b[o]).unwrap_or(0.0);
            for k in 0..inn {
                s += x[i * inn + k] * w[[o, k]];
            }
            y[i * out + o] = s;
        }
    }
    y
}

fn to64<D: Dimension>(a: &mithril::ndarray::Array<f32, D>) -> Vec<f64> {
    a.iter().map(|&v| v as f64).collect()
}

fn w64(a: &Array2<f32>) -> Array2<f64> {
    a.mapv(|v| v as f64)
}

fn assert_close<D: Dimension>(
    got: &mithril::ndarray::Array<f32, D>,
    shape: &[usize],
    want: &[f64],
    tol: f64,
    what: &str,
) {
    assert_eq!(got.shape(), shape, "{what}: shape");
    assert_eq!(got.len(), want.len(), "{what}: len");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let g = *g as f64;
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Layer norm of each row (biased variance), optionally scaled and shifted.
fn layer_norm_ref(x: &[f64], d: usize, eps: f64, w: Option<&[f64]>, b: Option<&[f64]>) -> Vec<f64> {
    let mut out = vec![];
    for row in x.chunks(d) {
        let mu = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / d as f64;
        for (k, v) in row.iter().enumerate() {
            let mut y = (v - mu) / (var + eps).sqrt();
            if let Some(w) = w {
                y *= w[k];
            }
            if let Some(b) = b {
                y += b[k];
            }
            out.push(y);
        }
    }
    out
}

// ------------------------------------------------------------------------------------------
// Linear
// ------------------------------------------------------------------------------------------

#[test]
fn linear_is_x_wt_plus_b() {
    let m = Lin::new().unwrap();
    let p = m.randomize_params(1);
    assert_eq!(p.fc.weight.shape(), &[3, 5]);
    assert_eq!(p.fc.bias.shape(), &[3]);
    assert_eq!(p.names(), vec!["fc.weight", "fc.bias"]);
    let x = mat(4, 5, 2);
    let y = m.evaluate(&p, LinInputs { x: x.view() }).unwrap().y;
    let b: Vec<f64> = p.fc.bias.iter().map(|&v| v as f64).collect();
    let want = linear_ref(&to64(&x), 4, &w64(&p.fc.weight), Some(&b));
    assert_close(&y, &[4, 3], &want, 1e-5, "linear");

    // hand-set weights: y = x @ W^T + b exactly
    let mut p = p;
    p.fc.weight = Array2::from_shape_vec((3, 5), (0..15).map(|v| v as f32).collect()).unwrap();
    p.fc.bias = arr1(&[1.0, -1.0, 0.5]);
    let x = Array2::from_shape_vec((1, 5), vec![1.0, 0.0, 0.0, 0.0, 2.0]).unwrap();
    let y = m.evaluate(&p, LinInputs { x: x.view() }).unwrap().y;
    // rows of W: [0..5], [5..10], [10..15]: dot with [1,0,0,0,2] = w0 + 2 w4
    assert_eq!(
        y.as_slice().unwrap(),
        &[0.0 + 8.0 + 1.0, 5.0 + 18.0 - 1.0, 10.0 + 28.0 + 0.5]
    );
}

#[test]
fn linear_without_bias() {
    let m = LinNoBias::new().unwrap();
    let p = m.randomize_params(3);
    assert_eq!(p.names(), vec!["linear_0.weight"], "no bias param");
    let x = mat(2, 5, 4);
    let y = m.evaluate(&p, LinNoBiasInputs { x: x.view() }).unwrap().y;
    let want = linear_ref(&to64(&x), 2, &w64(&p.linear_0.weight), None);
    assert_close(&y, &[2, 3], &want, 1e-5, "linear no bias");
}

#[test]
fn linear_on_rank_3_input() {
    let m = Lin3d::new().unwrap();
    let p = m.randomize_params(5);
    let x = mithril::ndarray::Array3::from_shape_vec((2, 3, 4), values(24, 6)).unwrap();
    let y = m.evaluate(&p, Lin3dInputs { x: x.view() }).unwrap().y;
    let b: Vec<f64> = p.linear_0.bias.iter().map(|&v| v as f64).collect();
    let want = linear_ref(&to64(&x), 6, &w64(&p.linear_0.weight), Some(&b));
    assert_close(&y, &[2, 3, 2], &want, 1e-5, "linear over leading dims");
}

#[test]
fn linear_fed_f64_has_f64_weights() {
    let m = Lin64::new().unwrap();
    let p = m.randomize_params(7);
    let w: Array2<f64> = p.linear_0.weight.clone();
    let b: Array1<f64> = p.linear_0.bias.clone();
    let x =
        Array2::from_shape_vec((3, 4), values(12, 8).into_iter().map(f64::from).collect()).unwrap();
    let y: Array2<f64> = m.evaluate(&p, Lin64Inputs { x: x.view() }).unwrap().y;
    let want = linear_ref(x.as_slice().unwrap(), 3, &w, b.as_slice());
    for (g, w) in y.iter().zip(&want) {
        assert!((g - w).abs() < 1e-12, "f64 linear: {g} vs {w}");
    }
}

#[test]
fn one_instance_called_twice_shares_weights() {
    let m = Shared::new().unwrap();
    let p = m.randomize_params(9);
    assert_eq!(p.names(), vec!["fc.weight", "fc.bias"], "a single weight");
    let x = mat(3, 4, 10);
    let y = m.evaluate(&p, SharedInputs { x: x.view() }).unwrap().y;
    let w = w64(&p.fc.weight);
    let b: Vec<f64> = p.fc.bias.iter().map(|&v| v as f64).collect();
    let h = linear_ref(&to64(&x), 3, &w, Some(&b));
    let want = linear_ref(&h, 3, &w, Some(&b));
    assert_close(&y, &[3, 4], &want, 1e-5, "fc(fc(x))");
}

// ------------------------------------------------------------------------------------------
// MLP
// ------------------------------------------------------------------------------------------

#[test]
fn mlp_layers_and_activations() {
    let m = Mlp3::new().unwrap();
    let p = m.randomize_params(11);
    let names = p.names();
    // the anonymous instance `Linear(..)(h)` in `let h = ...` is named after the `let` (with a
    // numeric suffix when re-bound in the unrolled loop)
    assert_eq!(
        names,
        vec![
            "mlp_0.h.weight",
            "mlp_0.h.bias",
            "mlp_0.h_1.weight",
            "mlp_0.h_1.bias",
            "mlp_0.h_2.weight",
            "mlp_0.h_2.bias"
        ],
        "three layers, weight + bias each"
    );
    // collect the layer params in order through the generic visitor
    let mut ws: Vec<(String, Vec<usize>, Vec<f64>)> = vec![];
    p.visit(&mut |name, t| {
        let v: Vec<f64> = match t {
            mithril::rt::TensorView::F32(a) => a.iter().map(|&x| x as f64).collect(),
            _ => panic!("f32 params expected"),
        };
        ws.push((name.to_string(), t_shape(name, &p), v));
    });
    let shapes: Vec<Vec<usize>> = ws.iter().map(|w| w.1.clone()).collect();
    assert_eq!(
        shapes,
        vec![
            vec![8, 6],
            vec![8],
            vec![5, 8],
            vec![5],
            vec![2, 5],
            vec![2]
        ]
    );
    let x = mat(4, 6, 12);
    let y = m.evaluate(&p, Mlp3Inputs { x: x.view() }).unwrap().y;
    let mut h = to64(&x);
    let dims = [6, 8, 5, 2];
    for l in 0..3 {
        let w = Array2::from_shape_vec((dims[l + 1], dims[l]), ws[2 * l].2.clone()).unwrap();
        h = linear_ref(&h, 4, &w, Some(&ws[2 * l + 1].2));
        match l {
            0 => h.iter_mut().for_each(|v| *v = v.max(0.0)),
            1 => h.iter_mut().for_each(|v| *v = v.tanh()),
            _ => {}
        }
    }
    assert_close(&y, &[4, 2], &h, 1e-5, "mlp");
}

fn t_shape(name: &str, p: &impl ParamTree) -> Vec<usize> {
    let mut out = vec![];
    p.visit(&mut |n, t| {
        if n == name {
            out = t.shape().to_vec();
        }
    });
    out
}

// ------------------------------------------------------------------------------------------
// norms, embedding
// ------------------------------------------------------------------------------------------

#[test]
fn layer_norm_and_rms_norm() {
    let m = Norms::new().unwrap();
    let mut p = m.randomize_params(13);
    // LayerNorm starts at weight 1, bias 0; set other values to test the affine part
    let names = p.names();
    assert_eq!(
        names,
        vec![
            "layer_norm_0.weight",
            "layer_norm_0.bias",
            "layer_norm_2.weight",
            "rmsnorm_0.weight"
        ]
    );
    assert!(p.layer_norm_0.weight.iter().all(|&v| v == 1.0));
    assert!(p.layer_norm_0.bias.iter().all(|&v| v == 0.0));
    p.layer_norm_0.weight = Array1::from(values(6, 14));
    p.layer_norm_0.bias = Array1::from(values(6, 15));
    p.layer_norm_2.weight = Array1::from(values(6, 16));
    p.rmsnorm_0.weight = Array1::from(values(6, 17));
    let x = mat(3, 6, 18);
    let o = m.evaluate(&p, NormsInputs { x: x.view() }).unwrap();
    let xs = to64(&x);
    let f = |a: &Array1<f32>| a.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let want = layer_norm_ref(
        &xs,
        6,
        1e-5,
        Some(&f(&p.layer_norm_0.weight)),
        Some(&f(&p.layer_norm_0.bias)),
    );
    assert_close(&o.ln, &[3, 6], &want, 1e-5, "layer norm");
    let want = layer_norm_ref(&xs, 6, 1e-5, None, None);
    assert_close(
        &o.ln_plain,
        &[3, 6],
        &want,
        1e-5,
        "layer norm without affine",
    );
    let want = layer_norm_ref(&xs, 6, 0.1, Some(&f(&p.layer_norm_2.weight)), None);
    assert_close(
        &o.ln_scale_only,
        &[3, 6],
        &want,
        1e-5,
        "layer norm eps 0.1 scale only",
    );
    let w = f(&p.rmsnorm_0.weight);
    let mut want = vec![];
    for row in xs.chunks(6) {
        let ms = row.iter().map(|v| v * v).sum::<f64>() / 6.0;
        for (k, v) in row.iter().enumerate() {
            want.push(v / (ms + 1e-6).sqrt() * w[k]);
        }
    }
    assert_close(&o.rms, &[3, 6], &want, 1e-5, "rms norm");
}

#[test]
fn embedding_lookup() {
    let m = Embed::new().unwrap();
    let p = m.randomize_params(19);
    assert_eq!(p.emb.weight.shape(), &[10, 3]);
    let ids = Array2::from_shape_vec((2, 3), vec![0i64, 9, 4, 4, 1, 7]).unwrap();
    let y = m.evaluate(&p, EmbedInputs { ids: ids.view() }).unwrap().y;
    assert_eq!(y.shape(), &[2, 3, 3]);
    for i in 0..2 {
        for j in 0..3 {
            for k in 0..3 {
                assert_eq!(y[[i, j, k]], p.emb.weight[[ids[[i, j]] as usize, k]]);
            }
        }
    }
    // normal(0, 1) init: not all equal, roughly centred
    let w = &p.emb.weight;
    let mean = w.iter().map(|&v| v as f64).sum::<f64>() / w.len() as f64;
    assert!(mean.abs() < 0.6, "embedding init mean {mean}");
    assert!(w.iter().any(|&v| v != w[[0, 0]]));
}

// ------------------------------------------------------------------------------------------
// losses
// ------------------------------------------------------------------------------------------

#[test]
fn regression_losses() {
    let (b, n) = (3, 4);
    let pr = mat(b, n, 20);
    let t = mat(b, n, 21);
    // hinge targets in {-1, 1}
    let m = Regression::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            RegressionInputs {
                p: pr.view(),
                t: t.view(),
            },
        )
        .unwrap();
    let (ps, ts) = (to64(&pr), to64(&t));
    let map = |f: &dyn Fn(f64, f64) -> f64| {
        ps.iter()
            .zip(&ts)
            .map(|(a, b)| f(*a, *b))
            .collect::<Vec<_>>()
    };
    assert_close(
        &o.se,
        &[b, n],
        &map(&|a, b| (a - b) * (a - b)),
        1e-6,
        "squared_error",
    );
    assert_close(
        &o.ae,
        &[b, n],
        &map(&|a, b| (a - b).abs()),
        1e-6,
        "absolute_error",
    );
    assert_close(
        &o.hinge,
        &[b, n],
        &map(&|a, b| (1.0 - a * b).max(0.0)),
        1e-6,
        "hinge",
    );
    let pinball = |q: f64| {
        move |a: f64, b: f64| {
            let e = b - a;
            if e >= 0.0 { q * e } else { (q - 1.0) * e }
        }
    };
    assert_close(&o.q50, &[b, n], &map(&pinball(0.5)), 1e-6, "quantile 0.5");
    assert_close(&o.q10, &[b, n], &map(&pinball(0.1)), 1e-6, "quantile 0.1");
    assert_close(&o.q90, &[b, n], &map(&pinball(0.9)), 1e-6, "quantile 0.9");
}

#[test]
fn cross_entropy_from_logits_probs_and_log_probs() {
    let (b, c) = (4, 5);
    let logits = mat(b, c, 22);
    // probs: a softmax computed here; log-probs its log
    let mut probs = Array2::<f32>::zeros((b, c));
    let mut logp = Array2::<f32>::zeros((b, c));
    let mut lse = vec![0.0f64; b];
    for i in 0..b {
        let mx = logits.row(i).iter().fold(f32::MIN, |a, &v| a.max(v)) as f64;
        let z: f64 = logits.row(i).iter().map(|&v| (v as f64 - mx).exp()).sum();
        lse[i] = mx + z.ln();
        for j in 0..c {
            let lp = logits[[i, j]] as f64 - lse[i];
            logp[[i, j]] = lp as f32;
            probs[[i, j]] = lp.exp() as f32;
        }
    }
    let target = arr1(&[0i64, 4, 2, 2]);
    let m = Classification::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            ClassificationInputs {
                logits: logits.view(),
                probs: probs.view(),
                logp: logp.view(),
                target: target.view(),
            },
        )
        .unwrap();
    let want: Vec<f64> = (0..b)
        .map(|i| lse[i] - logits[[i, target[i] as usize]] as f64)
        .collect();
    assert_close(&o.ce_logits, &[b], &want, 1e-5, "cross_entropy logits");
    let want_p: Vec<f64> = (0..b)
        .map(|i| -(probs[[i, target[i] as usize]] as f64).ln())
        .collect();
    assert_close(&o.ce_probs, &[b], &want_p, 1e-5, "cross_entropy probs");
    let want_l: Vec<f64> = (0..b)
        .map(|i| -(logp[[i, target[i] as usize]] as f64))
        .collect();
    assert_close(&o.ce_logp, &[b], &want_l, 1e-6, "cross_entropy log_probs");
    // a zero probability is clamped at log = -100, not infinite
    let mut probs0 = probs.clone();
    probs0[[0, 0]] = 0.0;
    let o = m
        .evaluate(
            &m.randomize_params(0),
            ClassificationInputs {
                logits: logits.view(),
                probs: probs0.view(),
                logp: logp.view(),
                target: target.view(),
            },
        )
        .unwrap();
    assert_eq!(o.ce_probs[0], 100.0);
}

#[test]
fn binary_cross_entropy_probs_and_logits() {
    let p = arr1(&[0.1f32, 0.5, 0.9, 0.999, 1e-4, 0.0, 1.0]);
    let t = arr1(&[0.0f32, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]);
    let z = arr1(&[-3.0f32, 0.0, 2.0, 50.0, -50.0, 1.0, -1.0]);
    let m = Binary::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            BinaryInputs {
                p: p.view(),
                z: z.view(),
                t: t.view(),
            },
        )
        .unwrap();
    let clog = |v: f64| v.ln().max(-100.0);
    let want: Vec<f64> = (0..p.len())
        .map(|i| {
            let (pi, ti) = (p[i] as f64, t[i] as f64);
            -(ti * clog(pi) + (1.0 - ti) * clog(1.0 - pi))
        })
        .collect();
    // inputs are f32: 1 - p is computed in f32 too, so compare loosely for p near 1
    assert_close(&o.bce, &[7], &want, 1e-4, "bce probs");
    let want: Vec<f64> = (0..z.len())
        .map(|i| {
            let (zi, ti) = (z[i] as f64, t[i] as f64);
            // -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))), stably
            let log_sig = -((-zi).exp().ln_1p());
            let log_sig = if zi < -30.0 { zi } else { log_sig };
            let log_1m = if zi > 30.0 { -zi } else { -(zi.exp().ln_1p()) };
            -(ti * log_sig + (1.0 - ti) * log_1m)
        })
        .collect();
    assert_close(&o.bce_logits, &[7], &want, 1e-5, "bce logits");
}

#[test]
fn kl_divergence_both_modes() {
    let q = [0.1f64, 0.2, 0.3, 0.4, 0.0001];
    let pp = [0.25f64, 0.25, 0.0, 0.5, 0.0];
    let logq = Array1::from_iter(q.iter().map(|v| v.ln() as f32));
    let p = Array1::from_iter(pp.iter().map(|&v| v as f32));
    let logp = Array1::from_iter(pp.iter().map(|v| v.ln() as f32));
    let m = Kl::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            KlInputs {
                logq: logq.view(),
                p: p.view(),
                logp: logp.view(),
            },
        )
        .unwrap();
    // pointwise p * (log p - log q), 0 where p == 0
    let want: Vec<f64> = (0..5)
        .map(|i| {
            if pp[i] > 0.0 {
                pp[i] * (pp[i].ln() - logq[i] as f64)
            } else {
                0.0
            }
        })
        .collect();
    assert_close(&o.kl, &[5], &want, 1e-6, "kl probs");
    assert!(o.kl.iter().all(|v| v.is_finite()));
    // log_target: exp(logp) * (logp - logq); -inf log targets give NaN in PyTorch too, so
    // compare only where p > 0
    for i in 0..5 {
        if pp[i] > 0.0 {
            let w = pp[i] * (logp[i] as f64 - logq[i] as f64);
            assert!(
                ((o.kl_log[i] as f64) - w).abs() < 1e-6,
                "kl log_target[{i}]"
            );
        }
    }
}

// ------------------------------------------------------------------------------------------
// nested user models
// ------------------------------------------------------------------------------------------

#[test]
fn nested_user_models_flatten_with_dotted_params() {
    let m = Net::new().unwrap();
    let p = m.randomize_params(23);
    assert_eq!(
        p.names(),
        vec![
            "block.fc.weight",
            "block.fc.bias",
            "block.norm.weight",
            "block.norm.bias",
            "block_0.fc.weight",
            "block_0.fc.bias",
            "block_0.norm.weight",
            "block_0.norm.bias",
            "linear_0.weight",
            "linear_0.bias",
        ]
    );
    assert_eq!(p.block.fc.weight.shape(), &[8, 6]);
    assert_eq!(p.block_0.fc.weight.shape(), &[8, 8]);
    assert_eq!(p.linear_0.weight.shape(), &[2, 8]);
    let x = mat(3, 6, 24);
    let y = m.evaluate(&p, NetInputs { x: x.view() }).unwrap().out;
    let f = |a: &Array1<f32>| a.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let block =
        |h: &[f64], fc_w: &Array2<f32>, fc_b: &Array1<f32>, nw: &Array1<f32>, nb: &Array1<f32>| {
            let z = linear_ref(h, 3, &w64(fc_w), Some(&f(fc_b)));
            let z = layer_norm_ref(&z, 8, 1e-5, Some(&f(nw)), Some(&f(nb)));
            z.into_iter().map(|v| v.max(0.0)).collect::<Vec<_>>()
        };
    let h = block(
        &to64(&x),
        &p.block.fc.weight,
        &p.block.fc.bias,
        &p.block.norm.weight,
        &p.block.norm.bias,
    );
    let h = block(
        &h,
        &p.block_0.fc.weight,
        &p.block_0.fc.bias,
        &p.block_0.norm.weight,
        &p.block_0.norm.bias,
    );
    let want = linear_ref(&h, 3, &w64(&p.linear_0.weight), Some(&f(&p.linear_0.bias)));
    assert_close(&y, &[3, 2], &want, 1e-5, "net");
    let _ = ArrayD::<f32>::zeros(IxDyn(&[0]));
}

// ------------------------------------------------------------------------------------------
// initialisation
// ------------------------------------------------------------------------------------------

mithril! {
    model Inits {
        param z: [4] = zeros;
        param o: [2, 3] = ones;
        param f: [5] = full(0.25);
        param u: [1000] = uniform(-3.0, 2.0);
        param n: [4000] = normal(1.0, 0.5);
        param k: [8, 50] = fan_in(50);
        param d: [100, 400];
        output total = z.sum() + o.sum() + f.sum() + u.sum() + n.sum() + k.sum() + d.sum();
    }
}

#[test]
fn randomize_params_follows_the_declared_initialisers() {
    let m = Inits::new().unwrap();
    let p = m.randomize_params(1234);
    assert!(p.z.iter().all(|&v| v == 0.0));
    assert!(p.o.iter().all(|&v| v == 1.0));
    assert!(p.f.iter().all(|&v| v == 0.25));
    assert!(
        p.u.iter().all(|&v| (-3.0..2.0).contains(&v)),
        "uniform bounds"
    );
    let mean = |a: &[f32]| a.iter().map(|&v| v as f64).sum::<f64>() / a.len() as f64;
    let std = |a: &[f32]| {
        let m = mean(a);
        (a.iter().map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / a.len() as f64).sqrt()
    };
    let u = p.u.as_slice().unwrap();
    assert!((mean(u) + 0.5).abs() < 0.15, "uniform mean {}", mean(u));
    // U(a, b) has std (b - a) / sqrt(12)
    assert!(
        (std(u) - 5.0 / 12f64.sqrt()).abs() < 0.1,
        "uniform std {}",
        std(u)
    );
    let n = p.n.as_slice().unwrap();
    assert!((mean(n) - 1.0).abs() < 0.05, "normal mean {}", mean(n));
    assert!((std(n) - 0.5).abs() < 0.05, "normal std {}", std(n));
    // fan-in: U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the default uses the product of all dims but
    // the first (PyTorch's rule for Linear weights)
    let bound = 1.0 / 50f32.sqrt();
    assert!(p.k.iter().all(|&v| v.abs() <= bound));
    assert!(
        p.k.iter().any(|&v| v.abs() > bound * 0.8),
        "uses the whole range"
    );
    let bound = 1.0 / 400f32.sqrt();
    assert!(
        p.d.iter().all(|&v| v.abs() <= bound),
        "default init of a [100, 400] param"
    );
    assert!(p.d.iter().any(|&v| v.abs() > bound * 0.9));
    // deterministic per seed, different across seeds, different across params
    let q = m.randomize_params(1234);
    assert_eq!(p.u, q.u);
    assert_eq!(p.d, q.d);
    let r = m.randomize_params(1235);
    assert_ne!(p.u, r.u);
    assert_ne!(p.k.as_slice().unwrap()[..8], p.d.as_slice().unwrap()[..8]);
    // the model still runs
    let o = m
        .evaluate(
            &p,
            InitsInputs {
                _marker: std::marker::PhantomData,
            },
        )
        .unwrap();
    let want: f64 = [
        p.z.sum(),
        p.o.sum(),
        p.f.sum(),
        p.u.sum(),
        p.n.sum(),
        p.k.sum(),
        p.d.sum(),
    ]
    .iter()
    .map(|&v| v as f64)
    .sum();
    assert!((o.total[()] as f64 - want).abs() < 1e-2);
}

#[test]
fn linear_init_is_fan_in_scaled() {
    let m = Lin::new().unwrap();
    let p = m.randomize_params(99);
    let bound = 1.0 / 5f32.sqrt();
    assert!(p.fc.weight.iter().all(|&v| v.abs() <= bound));
    assert!(p.fc.bias.iter().all(|&v| v.abs() <= bound));
    assert!(p.fc.bias.iter().any(|&v| v != 0.0));
}

// ------------------------------------------------------------------------------------------
// library models on higher-rank inputs
// ------------------------------------------------------------------------------------------

mithril! {
    model Tokens {
        input ids: i32[B, T];
        input target: i64[B, T];
        let emb = Embedding(num_embeddings = 6, dim = 4);
        let h = LayerNorm(use_bias = false)(emb(ids));
        output logits = Linear(5)(h);
        output loss = cross_entropy(logits, target);
        output mean_loss = cross_entropy(logits, target).mean();
    }
}

#[test]
fn per_token_pipeline_on_rank_3() {
    let m = Tokens::new().unwrap();
    let p = m.randomize_params(77);
    let ids = Array2::from_shape_vec((2, 3), vec![0i32, 5, 2, 3, 3, 1]).unwrap();
    let target = Array2::from_shape_vec((2, 3), vec![4i64, 0, 1, 2, 3, 0]).unwrap();
    let o = m
        .evaluate(
            &p,
            TokensInputs {
                ids: ids.view(),
                target: target.view(),
            },
        )
        .unwrap();
    assert_eq!(o.logits.shape(), &[2, 3, 5]);
    assert_eq!(o.loss.shape(), &[2, 3]);
    let names = p.names();
    assert_eq!(
        names,
        vec!["emb.weight", "h.weight", "linear_0.weight", "linear_0.bias"],
        "instances named after their `let`, anonymous ones by type"
    );
    let f = |a: &Array1<f32>| a.iter().map(|&v| v as f64).collect::<Vec<_>>();
    let mut total = 0.0;
    for i in 0..2 {
        for j in 0..3 {
            let row: Vec<f64> = (0..4)
                .map(|k| p.emb.weight[[ids[[i, j]] as usize, k]] as f64)
                .collect();
            let h = layer_norm_ref(&row, 4, 1e-5, Some(&f(&p.h.weight)), None);
            let z = linear_ref(&h, 1, &w64(&p.linear_0.weight), Some(&f(&p.linear_0.bias)));
            for (c, zc) in z.iter().enumerate() {
                assert!((o.logits[[i, j, c]] as f64 - zc).abs() < 1e-5);
            }
            let mx = z.iter().copied().fold(f64::MIN, f64::max);
            let lse = mx + z.iter().map(|v| (v - mx).exp()).sum::<f64>().ln();
            let l = lse - z[target[[i, j]] as usize];
            assert!((o.loss[[i, j]] as f64 - l).abs() < 1e-5, "loss[{i},{j}]");
            total += l;
        }
    }
    assert!((o.mean_loss[()] as f64 - total / 6.0).abs() < 1e-5);
}
