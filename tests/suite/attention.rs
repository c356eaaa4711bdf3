//! `attention`: outputs against a naive reference written here (full score matrix, softmax,
//! products, in f64), and gradients (query, key, value, an additive mask) against central
//! differences, with and without `causal`, with additive and bool masks, and grouped-query
//! attention (fewer key/value heads than query heads).
#![allow(clippy::needless_range_loop)]

use crate::common::fd::{dot, gradcheck, pat, set, wave};
use mithril::prelude::*;
use mithril::rt::Mode;
use ndarray::{ArrayD, Ix4, IxDyn};
use std::marker::PhantomData;

mithril! {
    model AttnFwd {
        input q: f64[B, 6, S, D];
        input k: f64[B, 2, T, D];
        input v: f64[B, 2, T, E];
        input add: f64[S, T];
        input keep: bool[B, 1, 1, T];
        output plain = attention(q, k, v);
        output causal = attention(q, k, v, causal = true);
        output added = attention(q, k, v, add, scale = 0.5);
        output kept = attention(q, k, v, mask = keep, causal = true);
    }

    model AttnF32 {
        input q: f32[B, H, S, D];
        input k: f32[B, H, T, D];
        input v: f32[B, H, T, D];
        output out = attention(q, k, v, causal = true);
    }

    model AttnGrad {
        param q: f64[1, 4, 3, 2];
        param k: f64[1, 2, 5, 2];
        param v: f64[1, 2, 5, 3];
        param bias: f64[3, 5];
        output plain = attention(q, k, v);
        output causal = attention(q, k, v, causal = true);
        output biased = attention(q, k, v, bias, scale = 0.8);
    }

    model AttnGradOpen {
        param q: f64[2, 3, 2];
        param k: f64[2, 4, 2];
        param v: f64[2, 4, 2];
        input keep: bool[3, 4];
        output out = attention(q.reshape([1, 2, 3, 2]), k.reshape([1, 2, 4, 2]), v.reshape([1, 2, 4, 2]), keep, causal = true);
    }

    model AttnRank {
        param q: f64[2, 3, 2];
        param k: f64[2, 4, 2];
        param v: f64[2, 4, 3];
        output out = attention(q, k, v, causal = true);
    }
}

/// Naive attention in f64: `[B, H, S, D]` query, `[B, G, T, D]` key, `[B, G, T, E]` value.
pub(crate) fn naive(
    q: &ArrayD<f64>,
    k: &ArrayD<f64>,
    v: &ArrayD<f64>,
    add: Option<&ArrayD<f64>>,
    keep: Option<&ArrayD<bool>>,
    causal: bool,
    scale: Option<f64>,
) -> ArrayD<f64> {
    let (b, h, s, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (g, t, e) = (k.shape()[1], k.shape()[2], v.shape()[3]);
    let scale = scale.unwrap_or(1.0 / (d as f64).sqrt());
    let mut out = ArrayD::zeros(IxDyn(&[b, h, s, e]));
    let full = [b, h, s, t];
    let addb = add.map(|a| a.broadcast(IxDyn(&full)).unwrap());
    let keepb = keep.map(|a| a.broadcast(IxDyn(&full)).unwrap());
    for bi in 0..b {
        for hi in 0..h {
            let gi = hi / (h / g);
            for i in 0..s {
                let mut sc = vec![f64::NEG_INFINITY; t];
                for j in 0..t {
                    if causal && j > i {
                        continue;
                    }
                    if let Some(m) = &keepb
                        && !m[[bi, hi, i, j].as_slice()]
                    {
                        continue;
                    }
                    let mut x = 0.0;
                    for c in 0..d {
                        x += q[[bi, hi, i, c].as_slice()] * k[[bi, gi, j, c].as_slice()];
                    }
                    sc[j] = x * scale + addb.as_ref().map_or(0.0, |a| a[[bi, hi, i, j].as_slice()]);
                }
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                for j in 0..t {
                    let p = (sc[j] - mx).exp() / z;
                    for c in 0..e {
                        out[[bi, hi, i, c].as_slice()] += p * v[[bi, gi, j, c].as_slice()];
                    }
                }
            }
        }
    }
    out
}

fn close(got: &ArrayD<f64>, want: &ArrayD<f64>, tol: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
        // a fully masked row is NaN on both sides (as PyTorch)
        if b.is_nan() {
            assert!(a.is_nan(), "{what}[{i}]: {a} vs NaN");
            continue;
        }
        assert!(
            (a - b).abs() <= tol * (1.0 + b.abs()),
            "{what}[{i}]: {a} vs {b}"
        );
    }
}

pub(crate) fn arr(shape: &[usize], salt: f64) -> ArrayD<f64> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| 1.5 * wave(i, salt)).collect()).unwrap()
}

/// Outputs on sizes that cross the kernel's tiles (64 query rows, 128 key rows), with
/// grouped-query attention (6 query heads on 2 key/value heads), an additive mask broadcast over
/// batch and heads, and a bool mask over keys per batch.
#[test]
fn attention_matches_naive_reference() {
    let m = AttnFwd::new().unwrap();
    let (b, h, g, s, t, d, e) = (2, 6, 2, 70, 131, 5, 3);
    let (q, k, v) = (
        arr(&[b, h, s, d], 0.1),
        arr(&[b, g, t, d], 0.2),
        arr(&[b, g, t, e], 0.3),
    );
    let add = arr(&[s, t], 0.4);
    let keep = ArrayD::from_shape_fn(IxDyn(&[b, 1, 1, t]), |ix| (ix[3] + ix[0]) % 4 != 1);
    let o = m
        .evaluate(
            &m.randomize_params(0),
            AttnFwdInputs {
                q: q.view().into_dimensionality::<Ix4>().unwrap(),
                k: k.view().into_dimensionality::<Ix4>().unwrap(),
                v: v.view().into_dimensionality::<Ix4>().unwrap(),
                add: add.view().into_dimensionality().unwrap(),
                keep: keep.view().into_dimensionality::<Ix4>().unwrap(),
            },
        )
        .unwrap();
    let dynd = |a: &ndarray::Array4<f64>| a.clone().into_dyn();
    close(
        &dynd(&o.plain),
        &naive(&q, &k, &v, None, None, false, None),
        1e-12,
        "plain",
    );
    close(
        &dynd(&o.causal),
        &naive(&q, &k, &v, None, None, true, None),
        1e-12,
        "causal",
    );
    close(
        &dynd(&o.added),
        &naive(&q, &k, &v, Some(&add), None, false, Some(0.5)),
        1e-12,
        "additive mask",
    );
    close(
        &dynd(&o.kept),
        &naive(&q, &k, &v, None, Some(&keep), true, None),
        1e-12,
        "bool mask, causal",
    );
    // batch 1 masks key 0, so its query 0 (causal: sees key 0 only) is fully masked: NaN
    assert!(o.kept[[1, 0, 0, 0]].is_nan() && !o.kept[[0, 0, 0, 0]].is_nan());
}

/// f32 against the f64 reference.
#[test]
fn attention_f32_matches_reference() {
    let m = AttnF32::new().unwrap();
    let (q, k, v) = (
        arr(&[1, 2, 33, 8], 0.5),
        arr(&[1, 2, 40, 8], 0.6),
        arr(&[1, 2, 40, 8], 0.7),
    );
    let f = |a: &ArrayD<f64>| a.mapv(|x| x as f32).into_dimensionality::<Ix4>().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            AttnF32Inputs {
                q: f(&q).view(),
                k: f(&k).view(),
                v: f(&v).view(),
            },
        )
        .unwrap();
    close(
        &o.out.mapv(|x| x as f64).into_dyn(),
        &naive(&q, &k, &v, None, None, true, None),
        2e-6,
        "f32",
    );
}

/// Run-time shape errors name the op and the shapes.
#[test]
fn attention_runtime_shape_error() {
    let m = AttnF32::new().unwrap();
    let q = ndarray::Array4::<f32>::zeros((1, 2, 3, 4));
    let k = ndarray::Array4::<f32>::zeros((1, 2, 5, 4));
    let v = ndarray::Array4::<f32>::zeros((1, 2, 5, 4));
    // T = 5 from k; v with 6 rows breaks the model's own contract first
    let v6 = ndarray::Array4::<f32>::zeros((1, 2, 6, 4));
    let e = m
        .evaluate(
            &m.randomize_params(0),
            AttnF32Inputs {
                q: q.view(),
                k: k.view(),
                v: v6.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("v") && e.contains("6"), "{e}");
    assert!(
        m.evaluate(
            &m.randomize_params(0),
            AttnF32Inputs {
                q: q.view(),
                k: k.view(),
                v: v.view(),
            },
        )
        .is_ok()
    );
    // the runtime op itself: heads that do not divide
    let (q3, k2) = (
        ndarray::ArrayD::<f32>::zeros(IxDyn(&[3, 2, 4])),
        ndarray::ArrayD::<f32>::zeros(IxDyn(&[2, 5, 4])),
    );
    let e = mithril::rt::owned::<f32>(|d| {
        mithril::rt::ops::attention_to(
            &q3.view(),
            &k2.view(),
            &k2.view(),
            mithril::rt::ops::AttnMask::None,
            false,
            None,
            d,
        )
        .map(|_| ())
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("attention") && e.contains("multiple") && e.contains("[3, 2, 4]"),
        "{e}"
    );
}

/// Gradients of query, key, value and an additive mask (broadcast over batch and heads:
/// its gradient sums them) against central differences; GQA (4 query heads, 2 key/value heads).
#[test]
fn attention_gradients_match_finite_differences() {
    let m = AttnGrad::new().unwrap();
    let mut p = m.randomize_params(1);
    set(&mut p, "q", |i| 1.2 * wave(i, 0.3));
    set(&mut p, "k", |i| 1.1 * wave(i, 0.9));
    set(&mut p, "v", |i| wave(i, 1.7));
    set(&mut p, "bias", |i| 0.7 * wave(i, 2.2));
    let seeds = || AttnGradOutputs {
        plain: pat(Ix4(1, 4, 3, 3), 1.0),
        causal: pat(Ix4(1, 4, 3, 3), 2.0),
        biased: pat(Ix4(1, 4, 3, 3), 3.0),
    };
    let loss = |p: &AttnGradParams| {
        let o = m
            .evaluate(
                p,
                AttnGradInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        let sd = seeds();
        dot(&o.plain, &sd.plain) + dot(&o.causal, &sd.causal) + dot(&o.biased, &sd.biased)
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            AttnGradInputs {
                _marker: PhantomData,
            },
            seeds(),
        )
        .unwrap();
    assert_eq!(gradcheck("attention", &p, &g, loss), 24 + 20 + 30 + 15);
}

/// With a bool mask (no gradient) and causal, through reshapes.
#[test]
fn attention_gradients_bool_mask_causal() {
    let m = AttnGradOpen::new().unwrap();
    let mut p = m.randomize_params(2);
    set(&mut p, "q", |i| 1.3 * wave(i, 0.1));
    set(&mut p, "k", |i| wave(i, 0.5));
    set(&mut p, "v", |i| wave(i, 0.8));
    let keep = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| !(i == 2 && j == 1));
    let seed = || pat(Ix4(1, 2, 3, 2), 0.4);
    let loss = |p: &AttnGradOpenParams| {
        let o = m
            .evaluate(p, AttnGradOpenInputs { keep: keep.view() })
            .unwrap();
        dot(&o.out, &seed())
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            AttnGradOpenInputs { keep: keep.view() },
            AttnGradOpenOutputs { out: seed() },
        )
        .unwrap();
    assert_eq!(gradcheck("attention bool mask", &p, &g, loss), 12 + 16 + 16);
}

/// Rank 3 (no batch dims) with a value head_dim that differs from the key's: the key and
/// value gradients are separate primitives.
#[test]
fn attention_gradients_rank3_dv_differs() {
    let m = AttnRank::new().unwrap();
    let mut p = m.randomize_params(3);
    set(&mut p, "q", |i| 1.3 * wave(i, 0.6));
    set(&mut p, "k", |i| wave(i, 0.2));
    set(&mut p, "v", |i| wave(i, 0.9));
    let seed = || pat(ndarray::Ix3(2, 3, 3), 0.7);
    let loss = |p: &AttnRankParams| {
        let o = m
            .evaluate(
                p,
                AttnRankInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        dot(&o.out, &seed())
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            AttnRankInputs {
                _marker: PhantomData,
            },
            AttnRankOutputs { out: seed() },
        )
        .unwrap();
    assert_eq!(gradcheck("attention rank 3", &p, &g, loss), 12 + 16 + 24);
}

// ---- dropout on the attention weights (training calls only)

mithril! {
    model AttnDrop {
        input q: f64[B, 4, S, D];
        input k: f64[B, 2, T, D];
        input v: f64[B, 2, T, E];
        input add: f64[S, T];
        output dropped = attention(q, k, v, add, causal = true, dropout = 0.3);
        output plain = attention(q, k, v, add, causal = true);
        output second = attention(q, k, v, dropout = 0.5);
    }

    model AttnDropGrad {
        param q: f64[1, 4, 3, 2];
        param k: f64[1, 2, 5, 2];
        param v: f64[1, 2, 5, 3];
        param bias: f64[3, 5];
        output out = attention(q, k, v, bias, causal = true, dropout = 0.4);
    }

    compile MhaDrop = MultiHeadAttention(8, 2, dropout = 0.25) { dtype: f64 };
    compile MhaPlain = MultiHeadAttention(8, 2) { dtype: f64 };
}

/// Naive attention with dropout on the weights: the full `[B, H, S, T]` weight matrix (softmax
/// of the masked scaled scores), each weight times its factor (0, or `1 / (1 - p)` where the
/// Philox bits of its element index under `(seed, op)` reach the keep threshold), times `v`.
#[allow(clippy::too_many_arguments)]
fn naive_dropped(
    q: &ArrayD<f64>,
    k: &ArrayD<f64>,
    v: &ArrayD<f64>,
    add: Option<&ArrayD<f64>>,
    causal: bool,
    p: f64,
    seed: u64,
    op: u32,
) -> ArrayD<f64> {
    let (b, h, s, d) = (q.shape()[0], q.shape()[1], q.shape()[2], q.shape()[3]);
    let (g, t, e) = (k.shape()[1], k.shape()[2], v.shape()[3]);
    let scale = 1.0 / (d as f64).sqrt();
    let thr = (p * 4294967296.0).round() as u64;
    let mut out = ArrayD::zeros(IxDyn(&[b, h, s, e]));
    for bi in 0..b {
        for hi in 0..h {
            let gi = hi / (h / g);
            for i in 0..s {
                let mut sc = vec![f64::NEG_INFINITY; t];
                for j in 0..t {
                    if causal && j > i {
                        continue;
                    }
                    let mut x = 0.0;
                    for c in 0..d {
                        x += q[[bi, hi, i, c].as_slice()] * k[[bi, gi, j, c].as_slice()];
                    }
                    sc[j] = x * scale + add.map_or(0.0, |a| a[[i, j].as_slice()]);
                }
                let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = sc.iter().map(|x| (x - mx).exp()).sum();
                for j in 0..t {
                    let idx = (((bi * h + hi) * s + i) * t + j) as u64;
                    let bits = crate::norm::mithril_kernels_philox(seed, op, idx) as u64;
                    let factor = if bits >= thr { 1.0 / (1.0 - p) } else { 0.0 };
                    let w = (sc[j] - mx).exp() / z * factor;
                    for c in 0..e {
                        out[[bi, hi, i, c].as_slice()] += w * v[[bi, gi, j, c].as_slice()];
                    }
                }
            }
        }
    }
    out
}

/// Training calls against the naive reference with the same mask (the op ids number the
/// model's random ops: 0 and 1), on sizes crossing the kernel's tiles; the identity (the
/// undropped attention, bit for bit) in evaluation calls; the seed picks the mask.
#[test]
fn attention_dropout_matches_naive_reference_and_is_off_in_eval() -> mithril::Result<()> {
    let m = AttnDrop::new()?;
    let p = m.randomize_params(0);
    let (b, s, t, d, e) = (2, 70, 131, 5, 3);
    let (q, k, v) = (
        arr(&[b, 4, s, d], 0.3),
        arr(&[b, 2, t, d], 0.7),
        arr(&[b, 2, t, e], 1.1),
    );
    let add = arr(&[s, t], 1.9);
    let inputs = || AttnDropInputs {
        q: q.view().into_dimensionality().unwrap(),
        k: k.view().into_dimensionality().unwrap(),
        v: v.view().into_dimensionality().unwrap(),
        add: add.view().into_dimensionality().unwrap(),
    };
    let o = m.evaluate_mode(&p, inputs(), Mode::TrainSeeded(9))?;
    let want = naive_dropped(&q, &k, &v, Some(&add), true, 0.3, 9, 0);
    close(&o.dropped.clone().into_dyn(), &want, 1e-12, "dropped");
    let want2 = naive_dropped(&q, &k, &v, None, false, 0.5, 9, 1);
    close(&o.second.clone().into_dyn(), &want2, 1e-12, "second");
    // the undropped output is untouched by training
    let plain = naive(&q, &k, &v, Some(&add), None, true, None);
    close(&o.plain.clone().into_dyn(), &plain, 1e-12, "plain");
    assert_ne!(o.dropped, o.plain);
    // another seed, another mask; the same seed, the same output
    let o2 = m.evaluate_mode(&p, inputs(), Mode::TrainSeeded(10))?;
    assert_ne!(o2.dropped, o.dropped);
    let o3 = m.evaluate_mode(&p, inputs(), Mode::TrainSeeded(9))?;
    assert_eq!(o3.dropped, o.dropped);
    // evaluation: the identity, bit for bit the undropped attention
    for e in [
        m.evaluate(&p, inputs())?,
        m.evaluate_mode(&p, inputs(), Mode::Eval)?,
    ] {
        assert_eq!(e.dropped, e.plain);
        close(
            &e.second.clone().into_dyn(),
            &naive(&q, &k, &v, None, None, false, None),
            1e-12,
            "eval",
        );
    }
    Ok(())
}

/// Gradients under a fixed seed (the backward regenerates the forward's mask) against central
/// differences of training calls with the same seed, with causal and an additive mask.
#[test]
fn attention_dropout_gradients_match_finite_differences() -> mithril::Result<()> {
    let m = AttnDropGrad::new()?;
    let mut p = m.randomize_params(1);
    set(&mut p, "q", |i| 1.2 * wave(i, 0.3));
    set(&mut p, "k", |i| 1.1 * wave(i, 0.9));
    set(&mut p, "v", |i| wave(i, 1.7));
    set(&mut p, "bias", |i| 0.7 * wave(i, 2.2));
    let seed = || pat(Ix4(1, 4, 3, 3), 1.3);
    let none = || AttnDropGradInputs {
        _marker: PhantomData,
    };
    let mode = Mode::TrainSeeded(21);
    let loss =
        |p: &AttnDropGradParams| dot(&m.evaluate_mode(p, none(), mode).unwrap().out, &seed());
    let (o, g) =
        m.evaluate_gradients_mode(&p, none(), AttnDropGradOutputs { out: seed() }, mode)?;
    // dropout is on: the training output differs from the evaluation one
    assert_ne!(o.out, m.evaluate(&p, none())?.out);
    assert_eq!(
        gradcheck("attention dropout", &p, &g, loss),
        24 + 20 + 30 + 15
    );
    Ok(())
}

/// `MultiHeadAttention(dropout = p)`: evaluation calls ignore it; training calls drop weights
/// (reproducibly under a seed).
#[test]
fn multi_head_attention_dropout_only_in_training() -> mithril::Result<()> {
    let m = MhaDrop::new()?;
    let p = m.randomize_params(4);
    let x = ndarray::Array3::from_shape_fn((2, 5, 8), |(a, b, c)| wave(a * 40 + b * 8 + c, 0.6));
    let run = |mode| {
        m.evaluate_mode(
            &p,
            MhaDropInputs {
                query: x.view(),
                key: x.view(),
                value: x.view(),
            },
            mode,
        )
        .unwrap()
        .output
    };
    let plain = MhaPlain::new()?;
    let mut pp = plain.randomize_params(0);
    pp.load_safetensors_bytes(&p.to_safetensors_bytes()?)?;
    let undropped = plain
        .evaluate(
            &pp,
            MhaPlainInputs {
                query: x.view(),
                key: x.view(),
                value: x.view(),
            },
        )?
        .output;
    assert_eq!(run(Mode::Eval), undropped);
    let (a, b) = (run(Mode::TrainSeeded(3)), run(Mode::TrainSeeded(3)));
    assert_eq!(a, b);
    assert_ne!(a, undropped);
    Ok(())
}

// ---- grouped-query attention with symbolic head counts (checked at run time)

mithril! {
    model AttnGqaOpen {
        input q: f64[B, H, S, D];
        input k: f64[B, G, T, D];
        input v: f64[B, G, T, E];
        output out = attention(q, k, v, causal = true);
    }
}

/// Query heads `H` and key/value heads `G` as symbols: 6 on 2 and 3 on 3 against the naive
/// reference; 5 on 2 is an `Err` naming both counts.
#[test]
fn gqa_with_symbolic_heads_is_checked_at_run_time() -> mithril::Result<()> {
    let m = AttnGqaOpen::new()?;
    let p = m.randomize_params(0);
    for (h, g) in [(6, 2), (3, 3), (4, 1)] {
        let (q, k, v) = (
            arr(&[2, h, 5, 4], 0.2),
            arr(&[2, g, 7, 4], 0.5),
            arr(&[2, g, 7, 3], 0.8),
        );
        let o = m.evaluate(
            &p,
            AttnGqaOpenInputs {
                q: q.view().into_dimensionality().unwrap(),
                k: k.view().into_dimensionality().unwrap(),
                v: v.view().into_dimensionality().unwrap(),
            },
        )?;
        close(
            &o.out.into_dyn(),
            &naive(&q, &k, &v, None, None, true, None),
            1e-12,
            "gqa",
        );
    }
    let (q, k) = (
        ndarray::Array4::<f64>::zeros((1, 5, 3, 4)),
        ndarray::Array4::<f64>::zeros((1, 2, 3, 4)),
    );
    let e = m
        .evaluate(
            &p,
            AttnGqaOpenInputs {
                q: q.view(),
                k: k.view(),
                v: k.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attention")
            && e.contains("query heads (5)")
            && e.contains("key/value heads (2)"),
        "{e}"
    );
    Ok(())
}

mithril! {
    /// Half-storage attention (f16, bf16) and the same model in f32: causal with a bool key
    /// mask, and an additive mask with grouped-query heads.
    pub model AttnH16 {
        input q: f16[2, 4, 5, 8];
        input k: f16[2, 2, 6, 8];
        input v: f16[2, 2, 6, 8];
        input keep: bool[2, 1, 1, 6];
        param add: f16[5, 6];
        output a = attention(q, k, v, keep, causal = true);
        output b = attention(q, k, v, add, scale = 0.5);
    }

    pub model AttnH32 {
        input q: f32[2, 4, 5, 8];
        input k: f32[2, 2, 6, 8];
        input v: f32[2, 2, 6, 8];
        input keep: bool[2, 1, 1, 6];
        param add: f32[5, 6];
        output a = attention(q, k, v, keep, causal = true);
        output b = attention(q, k, v, add, scale = 0.5);
    }

    pub model AttnBf16 {
        input q: bf16[1, 2, 3, 4];
        input k: bf16[1, 2, 3, 4];
        input v: bf16[1, 2, 3, 4];
        output a = attention(q, k, v);
    }
}

/// f16 / bf16 attention runs the f32 kernel on the widened values and rounds each result
/// once: its outputs are bit for bit the f32 attention of the same values, rounded; its
/// gradients (the flash kernel's backward, widened the same way) the f32 ones to f16's
/// precision.
#[test]
fn half_storage_attention_is_the_f32_one_rounded() -> mithril::Result<()> {
    use mithril::half::{bf16, f16};
    let h = |shape: &[usize], salt: f64| pat(IxDyn(shape), salt).mapv(f16::from_f64);
    let q = h(&[2, 4, 5, 8], 0.3).into_dimensionality::<Ix4>().unwrap();
    let k = h(&[2, 2, 6, 8], 1.3).into_dimensionality::<Ix4>().unwrap();
    let v = h(&[2, 2, 6, 8], 2.1).into_dimensionality::<Ix4>().unwrap();
    let keep =
        ndarray::Array4::from_shape_fn((2, 1, 1, 6), |(b, _, _, j)| j == 0 || (j + b) % 3 != 1);
    let (mh, mf) = (AttnH16::new()?, AttnH32::new()?);
    let mut ph = mh.randomize_params(0);
    ph.add = h(&[5, 6], 0.7).into_dimensionality().unwrap();
    let mut pf = mf.randomize_params(0);
    pf.add = ph.add.mapv(f32::from);
    let w = |a: &ndarray::Array4<f16>| a.mapv(f32::from);
    let oh = mh.evaluate(
        &ph,
        AttnH16Inputs {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            keep: keep.view(),
        },
    )?;
    let (qf, kf, vf) = (w(&q), w(&k), w(&v));
    let of = mf.evaluate(
        &pf,
        AttnH32Inputs {
            q: qf.view(),
            k: kf.view(),
            v: vf.view(),
            keep: keep.view(),
        },
    )?;
    assert_eq!(oh.a, of.a.mapv(f16::from_f32));
    assert_eq!(oh.b, of.b.mapv(f16::from_f32));
    // the additive mask's gradient (the scores' gradient summed to its shape): the half model
    // reads its f16-rounded output and sums the 8 per-head gradients in f16 storage, so it is
    // the f32 gradient to f16's precision (a few 2^-11 roundings), not bit for bit
    let sa = h(&[2, 4, 5, 8], 1.9).into_dimensionality::<Ix4>().unwrap();
    let sb = h(&[2, 4, 5, 8], 0.1).into_dimensionality::<Ix4>().unwrap();
    let (_, gh) = mh.evaluate_gradients(
        &ph,
        AttnH16Inputs {
            q: q.view(),
            k: k.view(),
            v: v.view(),
            keep: keep.view(),
        },
        AttnH16Outputs {
            a: sa.clone(),
            b: sb.clone(),
        },
    )?;
    let (_, gf) = mf.evaluate_gradients(
        &pf,
        AttnH32Inputs {
            q: qf.view(),
            k: kf.view(),
            v: vf.view(),
            keep: keep.view(),
        },
        AttnH32Outputs {
            a: w(&sa),
            b: w(&sb),
        },
    )?;
    for (g16, g32) in gh.add.iter().zip(gf.add.iter()) {
        let (a, b) = (f32::from(*g16), *g32);
        assert!(
            (a - b).abs() <= 2e-3 + 1e-2 * b.abs(),
            "mask gradient {a} vs f32 {b}"
        );
    }
    // bf16 against the naive f64 reference (one rounding of a value the f32 kernel gets to
    // ~1e-6 relative, far below bf16's half ulp of 2^-9)
    let b = |salt: f64| {
        pat(IxDyn(&[1, 2, 3, 4]), salt)
            .mapv(bf16::from_f64)
            .into_dimensionality::<Ix4>()
            .unwrap()
    };
    let (qb, kb, vb) = (b(0.5), b(1.5), b(2.5));
    let mb = AttnBf16::new()?;
    let ob = mb.evaluate(
        &mb.randomize_params(0),
        AttnBf16Inputs {
            q: qb.view(),
            k: kb.view(),
            v: vb.view(),
        },
    )?;
    for hh in 0..2 {
        for i in 0..3 {
            let s: Vec<f64> = (0..3)
                .map(|j| {
                    (0..4)
                        .map(|d| f64::from(qb[[0, hh, i, d]]) * f64::from(kb[[0, hh, j, d]]))
                        .sum::<f64>()
                        / 2.0
                })
                .collect();
            let mx = s.iter().cloned().fold(f64::MIN, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
            let z: f64 = e.iter().sum();
            for d in 0..4 {
                let want: f64 = (0..3)
                    .map(|j| e[j] / z * f64::from(vb[[0, hh, j, d]]))
                    .sum();
                let got = f64::from(ob.a[[0, hh, i, d]]);
                assert!(
                    (got - want).abs() <= want.abs() * 2f64.powi(-8) + 1e-6,
                    "[{hh},{i},{d}]: {got} vs {want}"
                );
            }
        }
    }
    Ok(())
}

mithril! {
    pub model CachedH {
        input q: bf16[1, 2, 2, 4];
        input k: bf16[1, 1, 8, 4];
        input v: bf16[1, 1, 8, 4];
        input pos: i64[];
        output y = cached_attention(q, k, v, pos);
    }

    pub model CachedF {
        input q: f32[1, 2, 2, 4];
        input k: f32[1, 1, 8, 4];
        input v: f32[1, 1, 8, 4];
        input pos: i64[];
        output y = cached_attention(q, k, v, pos);
    }
}

/// bf16 decoding over a cache: the f32 kernel on the widened rows in use, each result rounded
/// once (bit for bit the f32 model's, rounded); a step past the cache's end is the same `Err`.
#[test]
fn half_storage_cached_attention_is_the_f32_one_rounded() -> mithril::Result<()> {
    use mithril::half::bf16;
    let b = |shape: &[usize], salt: f64| {
        pat(IxDyn(shape), salt)
            .mapv(bf16::from_f64)
            .into_dimensionality::<Ix4>()
            .unwrap()
    };
    let (q, k, v) = (
        b(&[1, 2, 2, 4], 0.2),
        b(&[1, 1, 8, 4], 0.9),
        b(&[1, 1, 8, 4], 1.6),
    );
    let w = |a: &ndarray::Array4<bf16>| a.mapv(f32::from);
    let (qf, kf, vf) = (w(&q), w(&k), w(&v));
    let (mh, mf) = (CachedH::new()?, CachedF::new()?);
    let (ph, pf) = (mh.randomize_params(0), mf.randomize_params(0));
    for pos in [0i64, 3, 6] {
        let p = ndarray::arr0(pos);
        let yh = mh
            .evaluate(
                &ph,
                CachedHInputs {
                    q: q.view(),
                    k: k.view(),
                    v: v.view(),
                    pos: p.view(),
                },
            )?
            .y;
        let yf = mf
            .evaluate(
                &pf,
                CachedFInputs {
                    q: qf.view(),
                    k: kf.view(),
                    v: vf.view(),
                    pos: p.view(),
                },
            )?
            .y;
        assert_eq!(yh, yf.mapv(bf16::from_f32), "pos {pos}");
    }
    let p = ndarray::arr0(7i64);
    let e = mh
        .evaluate(
            &ph,
            CachedHInputs {
                q: q.view(),
                k: k.view(),
                v: v.view(),
                pos: p.view(),
            },
        )
        .unwrap_err()
        .to_string();
    let ef = mf
        .evaluate(
            &pf,
            CachedFInputs {
                q: qf.view(),
                k: kf.view(),
                v: vf.view(),
                pos: p.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert_eq!(e.replace("CachedH", "CachedF"), ef);
    Ok(())
}
