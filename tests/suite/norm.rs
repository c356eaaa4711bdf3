//! Batch norm with running statistics (`buffer`, `update`, the `&mut` entry points), group norm
//! and dropout (the Philox masks, `Mode::TrainSeeded`), against references computed here by hand
//! with PyTorch's formulas, and gradients against f64 central differences.

use crate::common::fd;
use mithril::prelude::*;
use mithril::rt::optim::{Adam, Optimizer, Sgd};
use mithril::rt::{Mode, TensorView};
use ndarray::{Array1, Array2, Array4, Axis};

mithril! {
    /// `BatchNorm1d` behind a trainable nonlinearity (so that the gradient flows through the
    /// batch statistics into `a`; a plain scale would be normalized away).
    pub model Bn1 {
        input x: f64[N, 3];
        param a: f64[3] = ones;
        let bn = BatchNorm1d()(x * tanh(x * a) + x);
        output y = bn;
    }

    pub model Bn2 {
        input x: f64[N, 2, H, W];
        let bn = BatchNorm2d(momentum = 0.2, eps = 1e-3)(x);
        output y = bn;
    }

    /// PyTorch's `nn.BatchNorm1d(3)` state dict, in f32.
    pub model BnTorch {
        input x: f32[N, 3];
        let bn = BatchNorm1d()(x);
        output y = bn;
    }

    pub model Gn {
        input x: f64[N, 4, 3, 1];
        param a: f64[4, 3, 1] = ones;
        let gn = GroupNorm(num_groups = 2)(x * a);
        output y = gn;
    }

    pub model Drops {
        input x: f64[N, 100];
        param w: f64[100] = ones;
        let h = x * w;
        output y = dropout(h, p = 0.25);
        output z = Dropout(p = 0.25)(h);
    }

    /// A buffer read, never updated, in a model that reads the mode: the `&mut` entry points
    /// with nothing to write back.
    pub model ReadBuffer {
        input x: f64[N];
        buffer scale: f64[] = full(2.0);
        output y = dropout(x * scale, p = 0.5);
    }

    /// A buffer in a model without modes: `evaluate_gradients` still takes `&mut` params.
    pub model PlainBuffer {
        input x: f64[2];
        param w: f64[2] = ones;
        buffer scale: f64[] = full(3.0);
        output y = x * w * scale;
    }

    pub model DropAll {
        input x: f32[N];
        output zero = dropout(x, p = 1.0);
        output same = dropout(x, p = 0.0);
    }
}

/// Per-column batch statistics of `x` (rows are samples): mean, biased and unbiased variance.
fn stats(cols: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut m = Vec::new();
    let mut vb = Vec::new();
    let mut vu = Vec::new();
    for c in cols {
        let n = c.len() as f64;
        let mean = c.iter().sum::<f64>() / n;
        let ss: f64 = c.iter().map(|v| (v - mean) * (v - mean)).sum();
        m.push(mean);
        vb.push(ss / n);
        vu.push(ss / (n - 1.0));
    }
    (m, vb, vu)
}

fn columns(x: &Array2<f64>) -> Vec<Vec<f64>> {
    x.axis_iter(Axis(1)).map(|c| c.to_vec()).collect()
}

/// `(x - mean) / sqrt(var + eps) * w + b`, column by column.
fn bn_ref(
    x: &Array2<f64>,
    mean: &[f64],
    var: &[f64],
    w: &[f64],
    b: &[f64],
    eps: f64,
) -> Array2<f64> {
    Array2::from_shape_fn(x.dim(), |(i, j)| {
        (x[[i, j]] - mean[j]) / (var[j] + eps).sqrt() * w[j] + b[j]
    })
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
    }
}

fn x1() -> Array2<f64> {
    ndarray::array![
        [1.0, 2.0, 3.0],
        [3.0, 0.5, -1.0],
        [2.0, 4.0, 1.5],
        [-0.5, 1.0, 2.0]
    ]
}

#[test]
fn batch_norm_train_and_eval_against_hand_computation() -> mithril::Result<()> {
    let m = Bn1::new()?;
    let mut p = m.randomize_params(0);
    p.bn.weight = ndarray::array![0.5, 2.0, -1.0];
    p.bn.bias = ndarray::array![0.1, 0.0, 0.3];
    let (w, b) = (p.bn.weight.to_vec(), p.bn.bias.to_vec());
    assert_eq!(p.bn.running_mean.to_vec(), vec![0.0; 3]);
    assert_eq!(p.bn.running_var.to_vec(), vec![1.0; 3]);
    assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), 0);
    let x = x1();
    // what the batch norm sees (`a` is 1)
    let h = x.mapv(|v| v * v.tanh() + v);
    let (mean, vb, vu) = stats(&columns(&h));
    // training: the batch's mean and biased variance normalize
    let o = m.evaluate_mode(&mut p, Bn1Inputs { x: x.view() }, Mode::Train)?;
    let want = bn_ref(&h, &mean, &vb, &w, &b, 1e-5);
    close(
        o.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-12,
        "train",
    );
    // ... and the running statistics move by momentum 0.1, the variance unbiased
    let rm: Vec<f64> = mean.iter().map(|v| 0.1 * v).collect();
    let rv: Vec<f64> = vu.iter().map(|v| 0.9 + 0.1 * v).collect();
    close(
        p.bn.running_mean.as_slice().unwrap(),
        &rm,
        1e-15,
        "running_mean",
    );
    close(
        p.bn.running_var.as_slice().unwrap(),
        &rv,
        1e-15,
        "running_var",
    );
    assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), 1);
    // evaluation: the running statistics normalize, and nothing changes
    let o = m.evaluate(&p, Bn1Inputs { x: x.view() })?;
    let want = bn_ref(&h, &rm, &rv, &w, &b, 1e-5);
    close(
        o.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-12,
        "eval",
    );
    let before = p.bn.running_mean.clone();
    let o2 = m.evaluate_mode(&mut p, Bn1Inputs { x: x.view() }, Mode::Eval)?;
    assert_eq!(o2.y, o.y);
    assert_eq!(p.bn.running_mean, before, "running_mean after eval");
    assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), 1);
    // an evaluation-mode gradient call reads the running statistics and leaves them
    let seed = Bn1Outputs {
        y: Array2::ones((4, 3)),
    };
    let (o3, _) = m.evaluate_gradients_mode(&mut p, Bn1Inputs { x: x.view() }, seed, Mode::Eval)?;
    assert_eq!(o3.y, o.y);
    assert_eq!(p.bn.num_batches_tracked.into_scalar(), 1);
    Ok(())
}

/// `[N, 2, H, W]` batch `k` of the three training calls.
fn x2(k: usize) -> Array4<f64> {
    Array4::from_shape_fn((2, 2, 2, 3), |(n, c, h, w)| {
        fd::wave(n * 12 + c * 6 + h * 3 + w, k as f64 + 0.5) * (1.0 + c as f64) + k as f64
    })
}

#[test]
fn running_statistics_over_three_training_calls() -> mithril::Result<()> {
    let m = Bn2::new()?;
    let mut p = m.randomize_params(0);
    let (mom, eps) = (0.2, 1e-3);
    let (mut rm, mut rv) = (vec![0.0; 2], vec![1.0; 2]);
    for k in 0..3 {
        let x = x2(k);
        let cols: Vec<Vec<f64>> = (0..2)
            .map(|c| x.index_axis(Axis(1), c).iter().copied().collect())
            .collect();
        let (mean, vb, vu) = stats(&cols);
        let inputs = Bn2Inputs { x: x.view() };
        // three kinds of training call: evaluate_gradients, evaluate_mode(Train), TrainSeeded
        let y = match k {
            0 => {
                let seed = Bn2Outputs {
                    y: Array4::zeros((2, 2, 2, 3)),
                };
                m.evaluate_gradients(&mut p, inputs, seed)?.0.y
            }
            1 => m.evaluate_mode(&mut p, inputs, Mode::Train)?.y,
            _ => m.evaluate_mode(&mut p, inputs, Mode::TrainSeeded(7))?.y,
        };
        // the output used this batch's statistics (weight 1, bias 0)
        for ((n, c, h, w), v) in y.indexed_iter() {
            let want = (x[[n, c, h, w]] - mean[c]) / (vb[c] + eps).sqrt();
            assert!(
                (v - want).abs() < 1e-12,
                "call {k} [{n},{c},{h},{w}]: {v} vs {want}"
            );
        }
        for c in 0..2 {
            rm[c] = (1.0 - mom) * rm[c] + mom * mean[c];
            rv[c] = (1.0 - mom) * rv[c] + mom * vu[c];
        }
        close(
            p.bn.running_mean.as_slice().unwrap(),
            &rm,
            1e-14,
            "running_mean",
        );
        close(
            p.bn.running_var.as_slice().unwrap(),
            &rv,
            1e-14,
            "running_var",
        );
        assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), k as i64 + 1);
    }
    // evaluation after training: the running statistics
    let x = x2(5);
    let y = m.evaluate(&p, Bn2Inputs { x: x.view() })?.y;
    for ((n, c, h, w), v) in y.indexed_iter() {
        let want = (x[[n, c, h, w]] - rm[c]) / (rv[c] + eps).sqrt();
        assert!((v - want).abs() < 1e-12, "eval [{n},{c},{h},{w}]");
    }
    Ok(())
}

/// The bytes `safetensors.torch.save_file(nn.BatchNorm1d(3).state_dict())` writes (with
/// `bn.` prefixes, as inside a `Sequential` named `bn`): tensors sorted by name, `int64`
/// `num_batches_tracked` of shape `[]`.
fn torch_bn_file(w: &[f32], b: &[f32], rm: &[f32], rv: &[f32], nbt: i64) -> Vec<u8> {
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors: Vec<(&str, &str, &str, Vec<u8>)> = vec![
        ("bn.bias", "F32", "3", f(b)),
        (
            "bn.num_batches_tracked",
            "I64",
            "",
            nbt.to_le_bytes().to_vec(),
        ),
        ("bn.running_mean", "F32", "3", f(rm)),
        ("bn.running_var", "F32", "3", f(rv)),
        ("bn.weight", "F32", "3", f(w)),
    ];
    let mut header = String::from(r#"{"__metadata__":{"format":"pt"}"#);
    let mut off = 0;
    for (name, dt, shape, data) in &tensors {
        header.push_str(&format!(
            r#","{name}":{{"dtype":"{dt}","shape":[{shape}],"data_offsets":[{off},{}]}}"#,
            off + data.len()
        ));
        off += data.len();
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    for t in &tensors {
        out.extend_from_slice(&t.3);
    }
    out
}

#[test]
fn state_dict_round_trip_with_pytorch_names() -> mithril::Result<()> {
    let m = BnTorch::new()?;
    let mut p = m.randomize_params(3);
    assert_eq!(
        p.names(),
        [
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked"
        ]
    );
    assert!(p.is_buffer("bn.running_var") && p.is_buffer("bn.num_batches_tracked"));
    assert!(!p.is_buffer("bn.weight") && !p.is_buffer("bn.bias"));
    let (w, b, rm, rv) = (
        [1.5f32, -0.5, 2.0],
        [0.25f32, 0.0, -1.0],
        [0.5f32, -1.0, 2.0],
        [4.0f32, 0.25, 1.0],
    );
    p.load_safetensors_bytes(&torch_bn_file(&w, &b, &rm, &rv, 42))?;
    assert_eq!(p.bn.running_var.to_vec(), rv.to_vec());
    assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), 42);
    // eval mode uses the loaded statistics
    let x = ndarray::array![[1.0f32, 2.0, 3.0], [0.0, -2.0, 1.0]];
    let y = m.evaluate(&p, BnTorchInputs { x: x.view() })?.y;
    for ((i, j), v) in y.indexed_iter() {
        let want = (x[[i, j]] as f64 - rm[j] as f64) / (rv[j] as f64 + 1e-5).sqrt() * w[j] as f64
            + b[j] as f64;
        assert!((*v as f64 - want).abs() < 1e-5, "[{i},{j}] {v} vs {want}");
    }
    // saved and loaded back: the same tree, PyTorch's names and dtypes
    let bytes = p.to_safetensors_bytes()?;
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains(r#""bn.num_batches_tracked":{"dtype":"I64","shape":[]"#),
        "{text}"
    );
    let mut q = m.randomize_params(9);
    q.load_safetensors_bytes(&bytes)?;
    assert_eq!(q.bn.running_mean, p.bn.running_mean);
    assert_eq!(q.bn.running_var, p.bn.running_var);
    assert_eq!(q.bn.num_batches_tracked, p.bn.num_batches_tracked);
    assert_eq!(q.bn.weight, p.bn.weight);
    Ok(())
}

#[test]
fn optimizers_and_clipping_leave_buffers_untouched() -> mithril::Result<()> {
    let m = Bn1::new()?;
    let x = x1();
    let seed = || Bn1Outputs {
        y: Array2::from_shape_fn((4, 3), |(i, j)| fd::wave(i * 3 + j, 0.3)),
    };
    let mut opts: Vec<Box<dyn Optimizer>> = vec![
        Box::new(Sgd::new(0.1).momentum(0.9).weight_decay(0.5)),
        Box::new(Adam::new(0.1).weight_decay(0.5)),
    ];
    for opt in opts.iter_mut() {
        let mut p = m.randomize_params(0);
        for _ in 0..2 {
            let (_, mut g) = m.evaluate_gradients(&mut p, Bn1Inputs { x: x.view() }, seed())?;
            // buffers get zero gradients
            assert_eq!(g.bn.running_mean.to_vec(), vec![0.0; 3]);
            assert_eq!(g.bn.running_var.to_vec(), vec![0.0; 3]);
            mithril::rt::optim::clip_grad_norm(&mut g, 1e-3)?;
            let before = p.clone();
            opt.step(&mut p, &g)?;
            assert_eq!(p.bn.running_mean, before.bn.running_mean);
            assert_eq!(p.bn.running_var, before.bn.running_var);
            assert_eq!(p.bn.num_batches_tracked, before.bn.num_batches_tracked);
            assert_ne!(p.bn.weight, before.bn.weight);
            assert_ne!(p.a, before.a);
        }
        assert_eq!(p.bn.num_batches_tracked.into_scalar(), 2);
    }
    Ok(())
}

/// Central differences of `loss` over every `f64` leaf of `p` (integer leaves skipped), against
/// `grads`; returns the number of elements checked.
fn fd_check<P: ParamTree + Clone>(what: &str, p: &P, grads: &P, loss: impl Fn(&P) -> f64) -> usize {
    let mut names = Vec::new();
    p.visit(&mut |n, t| {
        if matches!(t, TensorView::F64(_)) {
            names.push(n.to_string());
        }
    });
    let mut checked = 0;
    let h = 1e-6;
    for name in names {
        let mut g = Vec::new();
        grads.visit(&mut |n, t| {
            if let (true, TensorView::F64(a)) = (n == name, t) {
                g = a.iter().copied().collect();
            }
        });
        for (i, &an) in g.iter().enumerate() {
            let mut plus = p.clone();
            fd::update(&mut plus, &name, i, &|v| v + h);
            let mut minus = p.clone();
            fd::update(&mut minus, &name, i, &|v| v - h);
            let num = (loss(&plus) - loss(&minus)) / (2.0 * h);
            let err = (num - an).abs() / (1.0 + num.abs().max(an.abs()));
            assert!(err < 1e-6, "{what}: {name}[{i}]: fd {num} vs gradient {an}");
            checked += 1;
        }
    }
    checked
}

#[test]
fn batch_norm_training_gradient_against_central_differences() -> mithril::Result<()> {
    let m = Bn1::new()?;
    let mut p = m.randomize_params(0);
    p.a = ndarray::array![0.7, -1.3, 2.1];
    p.bn.weight = ndarray::array![0.5, 2.0, -1.0];
    p.bn.bias = ndarray::array![0.1, 0.0, 0.3];
    let x = x1();
    let s = Array2::from_shape_fn((4, 3), |(i, j)| fd::wave(i * 3 + j, 1.7));
    let (_, g) = m.evaluate_gradients_mode(
        &mut p.clone(),
        Bn1Inputs { x: x.view() },
        Bn1Outputs { y: s.clone() },
        Mode::Train,
    )?;
    let loss = |q: &Bn1Params| {
        let y = m
            .evaluate_mode(&mut q.clone(), Bn1Inputs { x: x.view() }, Mode::Train)
            .unwrap()
            .y;
        (&y * &s).sum()
    };
    // through the batch statistics: `a`'s gradient is not the eval-mode one
    assert!(g.a.iter().any(|v| v.abs() > 1e-3));
    let n = fd_check("batch norm (train)", &p, &g, loss);
    assert_eq!(n, 3 + 3 + 3 + 3 + 3); // a, weight, bias, buffers (zero both ways)
    Ok(())
}

/// Group norm by hand: `[N, 4, 3, 1]` in 2 groups of 2 channels.
fn gn_ref(x: &Array4<f64>, w: &Array1<f64>, b: &Array1<f64>) -> Array4<f64> {
    let mut y = x.clone();
    for n in 0..x.dim().0 {
        for g in 0..2 {
            let vals: Vec<f64> = (2 * g..2 * g + 2)
                .flat_map(|c| {
                    x.slice(ndarray::s![n, c, .., ..])
                        .iter()
                        .copied()
                        .collect::<Vec<_>>()
                })
                .collect();
            let k = vals.len() as f64;
            let mean = vals.iter().sum::<f64>() / k;
            let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / k;
            for c in 2 * g..2 * g + 2 {
                for h in 0..3 {
                    y[[n, c, h, 0]] = (x[[n, c, h, 0]] - mean) / (var + 1e-5).sqrt() * w[c] + b[c];
                }
            }
        }
    }
    y
}

#[test]
fn group_norm_against_hand_computation_and_central_differences() -> mithril::Result<()> {
    let m = Gn::new()?;
    let mut p = m.randomize_params(0);
    p.gn.weight = ndarray::array![0.5, 2.0, -1.0, 1.5];
    p.gn.bias = ndarray::array![0.1, 0.0, 0.3, -0.2];
    p.a = Array4::from_shape_fn((1, 4, 3, 1), |(_, c, h, _)| 1.0 + fd::wave(c * 3 + h, 0.9))
        .into_shape_with_order((4, 3, 1))
        .unwrap();
    let x = Array4::from_shape_fn((2, 4, 3, 1), |(n, c, h, _)| {
        fd::wave(n * 12 + c * 3 + h, 0.2) * 3.0
    });
    let o = m.evaluate(&p, GnInputs { x: x.view() })?;
    let xa = &x * &p.a.clone().insert_axis(Axis(0));
    let want = gn_ref(&xa, &p.gn.weight, &p.gn.bias);
    close(
        o.y.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-12,
        "group norm",
    );
    let s = Array4::from_shape_fn((2, 4, 3, 1), |(n, c, h, _)| {
        fd::wave(n * 12 + c * 3 + h, 2.3)
    });
    let (_, g) = m.evaluate_gradients(&p, GnInputs { x: x.view() }, GnOutputs { y: s.clone() })?;
    let loss = |q: &GnParams| (&m.evaluate(q, GnInputs { x: x.view() }).unwrap().y * &s).sum();
    assert_eq!(fd::gradcheck("group norm", &p, &g, loss), 12 + 4 + 4);
    Ok(())
}

fn drops_x() -> Array2<f64> {
    Array2::from_shape_fn((200, 100), |(i, j)| 1.0 + ((i * 100 + j) % 7) as f64)
}

#[test]
fn dropout_is_the_identity_in_eval_mode() -> mithril::Result<()> {
    let m = Drops::new()?;
    let p = m.randomize_params(0);
    let x = drops_x();
    let o = m.evaluate(&p, DropsInputs { x: x.view() })?;
    assert_eq!(o.y, x);
    assert_eq!(o.z, x);
    let o = m.evaluate_mode(&p, DropsInputs { x: x.view() }, Mode::Eval)?;
    assert_eq!(o.y, x);
    Ok(())
}

#[test]
fn dropout_keep_rate_scaling_and_seeds() -> mithril::Result<()> {
    let m = Drops::new()?;
    let p = m.randomize_params(0);
    let x = drops_x();
    let run = |mode| {
        m.evaluate_mode(&p, DropsInputs { x: x.view() }, mode)
            .unwrap()
    };
    let a = run(Mode::TrainSeeded(11));
    let n = x.len() as f64;
    for out in [&a.y, &a.z] {
        let mut kept = 0usize;
        for (v, xv) in out.iter().zip(x.iter()) {
            if *v != 0.0 {
                // a kept element is scaled by 1 / (1 - p)
                assert!((v - xv / 0.75).abs() < 1e-12, "{v} vs {xv}");
                kept += 1;
            }
        }
        // keep rate 0.75 within 5 standard deviations (sd = sqrt(0.75 * 0.25 / n))
        let rate = kept as f64 / n;
        let sd = (0.75f64 * 0.25 / n).sqrt();
        assert!((rate - 0.75).abs() < 5.0 * sd, "keep rate {rate}");
    }
    let mask = |o: &Array2<f64>| o.mapv(|v| v != 0.0);
    // two ops of one call: different masks
    assert_ne!(mask(&a.y), mask(&a.z));
    // the same seed: the same masks
    let b = run(Mode::TrainSeeded(11));
    assert_eq!((&a.y, &a.z), (&b.y, &b.z));
    // another seed, and two unseeded training calls: other masks
    let c = run(Mode::TrainSeeded(12));
    assert_ne!(mask(&a.y), mask(&c.y));
    let (d, e) = (run(Mode::Train), run(Mode::Train));
    assert_ne!(mask(&d.y), mask(&e.y));
    assert_ne!(mask(&d.z), mask(&e.z));
    // the mask is Philox4x32-10 keyed by (seed, op id, element index), as the kernels define it
    for (i, v) in a.y.iter().enumerate().take(64) {
        let bits = mithril_kernels_philox(11, 0, i as u64);
        assert_eq!(
            *v != 0.0,
            bits >= (0.25f64 * 4294967296.0) as u32,
            "element {i}"
        );
    }
    // p = 1 drops everything, p = 0 keeps everything
    let dm = DropAll::new()?;
    let xs = ndarray::Array1::from_shape_fn(37, |i| i as f32 + 1.0);
    let o = dm.evaluate_mode(
        &dm.randomize_params(0),
        DropAllInputs { x: xs.view() },
        Mode::Train,
    )?;
    assert!(o.zero.iter().all(|v| *v == 0.0));
    assert_eq!(o.same, xs);
    Ok(())
}

/// Philox4x32-10 word `i % 4` of block `(i / 4, op)` under `seed`, written out here from the
/// published algorithm (Salmon et al. 2011), independently of the kernels.
pub(crate) fn mithril_kernels_philox(seed: u64, op: u32, i: u64) -> u32 {
    let b = i / 4;
    let mut c = [b as u32, (b >> 32) as u32, op, 0u32];
    let mut k = [seed as u32, (seed >> 32) as u32];
    for r in 0..10 {
        if r > 0 {
            k[0] = k[0].wrapping_add(0x9E37_79B9);
            k[1] = k[1].wrapping_add(0xBB67_AE85);
        }
        let p0 = 0xD251_1F53u64 * c[0] as u64;
        let p1 = 0xCD9E_8D57u64 * c[2] as u64;
        c = [
            (p1 >> 32) as u32 ^ c[1] ^ k[0],
            p1 as u32,
            (p0 >> 32) as u32 ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c[(i % 4) as usize]
}

#[test]
fn dropout_gradient_uses_the_forward_mask() -> mithril::Result<()> {
    let m = Drops::new()?;
    let p = m.randomize_params(0);
    let x = Array2::from_shape_fn((3, 100), |(i, j)| 1.0 + (i * 100 + j) as f64 * 0.01);
    let s = Array2::from_shape_fn((3, 100), |(i, j)| fd::wave(i * 100 + j, 0.4));
    let seeds = || DropsOutputs {
        y: s.clone(),
        z: s.clone(),
    };
    let mode = Mode::TrainSeeded(5);
    let (o, g) = m.evaluate_gradients_mode(&p, DropsInputs { x: x.view() }, seeds(), mode)?;
    // y = dropout(x * w) with w = 1: d/dw_j sum(s * (y + z)) = sum_i s_ij (y_ij + z_ij) / w_j
    let want = (&(&o.y + &o.z) * &s).sum_axis(Axis(0));
    close(
        g.w.as_slice().unwrap(),
        want.as_slice().unwrap(),
        1e-12,
        "dropout gradient",
    );
    // and against central differences under the same seed
    let loss = |q: &DropsParams| {
        let o = m
            .evaluate_mode(q, DropsInputs { x: x.view() }, mode)
            .unwrap();
        (&(&o.y + &o.z) * &s).sum()
    };
    assert_eq!(fd::gradcheck("dropout", &p, &g, loss), 100);
    Ok(())
}

#[test]
fn buffers_without_updates_keep_their_values() -> mithril::Result<()> {
    let m = ReadBuffer::new()?;
    let mut p = m.randomize_params(0);
    assert_eq!(p.scale.clone().into_scalar(), 2.0);
    let x = ndarray::array![1.0, -2.0, 3.0, 0.5];
    assert_eq!(
        m.evaluate(&p, ReadBufferInputs { x: x.view() })?.y,
        &x * 2.0
    );
    let y = m
        .evaluate_mode(
            &mut p,
            ReadBufferInputs { x: x.view() },
            Mode::TrainSeeded(1),
        )?
        .y;
    for (v, xv) in y.iter().zip(x.iter()) {
        assert!(*v == 0.0 || *v == xv * 4.0, "{v}");
    }
    assert_eq!(p.scale.clone().into_scalar(), 2.0);
    let m = PlainBuffer::new()?;
    let mut p = m.randomize_params(0);
    let x = ndarray::array![1.0, 2.0];
    let seed = PlainBufferOutputs {
        y: ndarray::array![1.0, 1.0],
    };
    let (o, g) = m.evaluate_gradients(&mut p, PlainBufferInputs { x: x.view() }, seed)?;
    assert_eq!(o.y, ndarray::array![3.0, 6.0]);
    assert_eq!(g.w, ndarray::array![3.0, 6.0]);
    assert_eq!(g.scale.into_scalar(), 0.0); // never differentiated
    assert_eq!(p.scale.into_scalar(), 3.0);
    Ok(())
}

// ---- batch norm on [N, C, L] and group norm on other ranks (`[N, C, ...]` inputs)

mithril! {
    /// `BatchNorm1d` after a conv-like `[N, C, L]`, behind a trainable scale.
    pub model Bn1L {
        input x: f64[N, 2, 3];
        param a: f64[3] = ones;
        let bn = BatchNorm1d(momentum = 0.2)(x * a);
        output y = bn;
    }

    /// `GroupNorm` on `[N, C, L]` and on `[N, C]`.
    pub model GnRanks {
        input x: f64[N, 4, 3];
        input z: f64[M, 4];
        let g3 = GroupNorm(num_groups = 2)(x);
        let g2 = GroupNorm(num_groups = 2, affine = false)(z);
        output y = g3;
        output w = g2;
    }
}

fn x3(k: usize) -> ndarray::Array3<f64> {
    ndarray::Array3::from_shape_fn((4, 2, 3), |(n, c, l)| {
        fd::wave(n * 6 + c * 3 + l, k as f64 + 0.25) * (1.0 + c as f64) + 0.5 * k as f64
    })
}

/// PyTorch's `BatchNorm1d` on `[N, C, L]`: the statistics over `N` and `L` (the running
/// variance unbiased over `N·L` values), eval mode with the running statistics, gradients
/// against central differences.
#[test]
fn batch_norm_1d_over_n_c_l() -> mithril::Result<()> {
    let m = Bn1L::new()?;
    let mut p = m.randomize_params(0);
    p.bn.weight = ndarray::array![0.5, -2.0];
    p.bn.bias = ndarray::array![0.1, 0.3];
    p.a = ndarray::array![1.0, 0.5, 2.0];
    let (mom, eps) = (0.2, 1e-5);
    let (mut rm, mut rv) = (vec![0.0; 2], vec![1.0; 2]);
    for k in 0..2 {
        let x = x3(k);
        let h = &x * &p.a;
        let cols: Vec<Vec<f64>> = (0..2)
            .map(|c| h.index_axis(Axis(1), c).iter().copied().collect())
            .collect();
        let (mean, vb, vu) = stats(&cols);
        let y = m
            .evaluate_mode(&mut p, Bn1LInputs { x: x.view() }, Mode::Train)?
            .y;
        assert_eq!(y.dim(), (4, 2, 3));
        for ((n, c, l), v) in y.indexed_iter() {
            let want =
                (h[[n, c, l]] - mean[c]) / (vb[c] + eps).sqrt() * p.bn.weight[c] + p.bn.bias[c];
            assert!(
                (v - want).abs() < 1e-12,
                "train {k} [{n},{c},{l}]: {v} vs {want}"
            );
        }
        for c in 0..2 {
            rm[c] = (1.0 - mom) * rm[c] + mom * mean[c];
            rv[c] = (1.0 - mom) * rv[c] + mom * vu[c];
        }
        close(
            p.bn.running_mean.as_slice().unwrap(),
            &rm,
            1e-14,
            "running_mean",
        );
        close(
            p.bn.running_var.as_slice().unwrap(),
            &rv,
            1e-14,
            "running_var",
        );
    }
    assert_eq!(p.bn.num_batches_tracked.clone().into_scalar(), 2);
    let x = x3(3);
    let y = m.evaluate(&p, Bn1LInputs { x: x.view() })?.y;
    for ((n, c, l), v) in y.indexed_iter() {
        let want =
            (x[[n, c, l]] * p.a[l] - rm[c]) / (rv[c] + eps).sqrt() * p.bn.weight[c] + p.bn.bias[c];
        assert!((v - want).abs() < 1e-12, "eval [{n},{c},{l}]");
    }
    // gradients in training mode (batch statistics) against central differences
    let s = ndarray::Array3::from_shape_fn((4, 2, 3), |(n, c, l)| fd::wave(n * 6 + c * 3 + l, 1.3));
    let (_, g) = m.evaluate_gradients(
        &mut p.clone(),
        Bn1LInputs { x: x.view() },
        Bn1LOutputs { y: s.clone() },
    )?;
    let loss = |q: &Bn1LParams| {
        let o = m
            .evaluate_mode(&mut q.clone(), Bn1LInputs { x: x.view() }, Mode::Train)
            .unwrap();
        (&o.y * &s).sum()
    };
    // through the batch statistics
    assert!(g.a.iter().any(|v| v.abs() > 1e-3));
    // a, weight, bias, and the f64 buffers (zero both ways)
    let n = fd_check("batch norm 1d [N, C, L]", &p, &g, loss);
    assert_eq!(n, 3 + 2 + 2 + 2 + 2);
    Ok(())
}

/// `GroupNorm` on `[N, C, L]` and `[N, C]` against the same formula by hand.
#[test]
fn group_norm_on_ranks_2_and_3() -> mithril::Result<()> {
    let m = GnRanks::new()?;
    let mut p = m.randomize_params(0);
    p.g3.weight = ndarray::array![0.5, 2.0, -1.0, 1.5];
    p.g3.bias = ndarray::array![0.1, 0.0, 0.3, -0.2];
    let x = ndarray::Array3::from_shape_fn((2, 4, 3), |(n, c, l)| {
        fd::wave(n * 12 + c * 3 + l, 0.7) * 2.0
    });
    let z = Array2::from_shape_fn((3, 4), |(n, c)| fd::wave(n * 4 + c, 1.9) + c as f64);
    let o = m.evaluate(
        &p,
        GnRanksInputs {
            x: x.view(),
            z: z.view(),
        },
    )?;
    for n in 0..2 {
        for g in 0..2 {
            let vals: Vec<f64> = (2 * g..2 * g + 2)
                .flat_map(|c| (0..3).map(move |l| (c, l)))
                .map(|(c, l)| x[[n, c, l]])
                .collect();
            let (mean, var, _) = stats(&[vals]);
            for c in 2 * g..2 * g + 2 {
                for l in 0..3 {
                    let want = (x[[n, c, l]] - mean[0]) / (var[0] + 1e-5).sqrt() * p.g3.weight[c]
                        + p.g3.bias[c];
                    assert!(
                        (o.y[[n, c, l]] - want).abs() < 1e-12,
                        "rank 3 [{n},{c},{l}]"
                    );
                }
            }
        }
    }
    for n in 0..3 {
        for g in 0..2 {
            let vals = vec![z[[n, 2 * g]], z[[n, 2 * g + 1]]];
            let (mean, var, _) = stats(&[vals]);
            for c in 2 * g..2 * g + 2 {
                let want = (z[[n, c]] - mean[0]) / (var[0] + 1e-5).sqrt();
                assert!((o.w[[n, c]] - want).abs() < 1e-12, "rank 2 [{n},{c}]");
            }
        }
    }
    Ok(())
}
