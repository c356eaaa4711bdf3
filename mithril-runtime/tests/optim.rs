//! Optimizers, schedules and clipping against PyTorch's update rules written out by hand.

use half::{bf16, f16};
use mithril_runtime::optim::{clip_grad_norm, Adam, AdamW, LrSchedule, Optimizer, Scheduler, Sgd};
use mithril_runtime::params::global_norm;
use mithril_runtime::{Error, ParamTree, Result, TensorView, TensorViewMut};
use ndarray::{ArrayD, IxDyn, ShapeBuilder};

// ---------------------------------------------------------------------------------------------
// A hand-written param tree (what `mithril!` generates for `MParams`/`MGrads`).

#[derive(Clone, Debug, PartialEq)]
enum Leaf {
    F64(ArrayD<f64>),
    F32(ArrayD<f32>),
    F16(ArrayD<f16>),
    BF16(ArrayD<bf16>),
    I32(ArrayD<i32>),
}

#[derive(Clone, Debug, PartialEq)]
struct Tree(Vec<(String, Leaf)>);

impl ParamTree for Tree {
    fn visit(&self, f: &mut dyn FnMut(&str, TensorView<'_>)) {
        for (n, l) in &self.0 {
            match l {
                Leaf::F64(a) => f(n, a.view().into()),
                Leaf::F32(a) => f(n, a.view().into()),
                Leaf::F16(a) => f(n, a.view().into()),
                Leaf::BF16(a) => f(n, a.view().into()),
                Leaf::I32(a) => f(n, a.view().into()),
            }
        }
    }
    fn visit_mut(
        &mut self,
        f: &mut dyn FnMut(&str, TensorViewMut<'_>) -> Result<()>,
    ) -> Result<()> {
        for (n, l) in &mut self.0 {
            match l {
                Leaf::F64(a) => f(n, a.view_mut().into())?,
                Leaf::F32(a) => f(n, a.view_mut().into())?,
                Leaf::F16(a) => f(n, a.view_mut().into())?,
                Leaf::BF16(a) => f(n, a.view_mut().into())?,
                Leaf::I32(a) => f(n, a.view_mut().into())?,
            }
        }
        Ok(())
    }
}

fn arr<T: Clone>(shape: &[usize], v: &[T]) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

/// Params: `fc.weight` f64 [2, 2], `fc.bias` f32 [2], `scale` f64 [].
fn params() -> Tree {
    Tree(vec![
        (
            "fc.weight".into(),
            Leaf::F64(arr(&[2, 2], &[0.5, -1.25, 2.0, 0.1])),
        ),
        ("fc.bias".into(), Leaf::F32(arr(&[2], &[0.3f32, -0.7]))),
        ("scale".into(), Leaf::F64(arr(&[], &[1.5]))),
    ])
}

/// Grads for step `k` (1-based): different at every step so that momentum and moments matter.
fn grads(k: usize) -> Tree {
    let s = k as f64;
    Tree(vec![
        (
            "fc.weight".into(),
            Leaf::F64(arr(
                &[2, 2],
                &[0.2 * s, -0.4 + 0.1 * s, 1.5 / s, -0.05 * s * s],
            )),
        ),
        (
            "fc.bias".into(),
            Leaf::F32(arr(&[2], &[0.6f32 - 0.25 * s as f32, 0.125 * s as f32])),
        ),
        ("scale".into(), Leaf::F64(arr(&[], &[-0.3 + 0.2 * s]))),
    ])
}

/// All float values of a tree, flattened in leaf order, as f64.
fn flat(t: &Tree) -> Vec<f64> {
    let mut out = Vec::new();
    for (_, l) in &t.0 {
        match l {
            Leaf::F64(a) => out.extend(a.iter().copied()),
            Leaf::F32(a) => out.extend(a.iter().map(|&x| x as f64)),
            Leaf::F16(a) => out.extend(a.iter().map(|x| x.to_f64())),
            Leaf::BF16(a) => out.extend(a.iter().map(|x| x.to_f64())),
            Leaf::I32(a) => out.extend(a.iter().map(|&x| x as f64)),
        }
    }
    out
}

/// Which flattened positions are f32 (the two bias elements).
fn is_f32(i: usize) -> bool {
    i == 4 || i == 5
}

/// Compares a tree with a reference: within 1e-12 on f64 leaves, within f32 rounding (relative
/// 1e-6, which a few f32 roundings per step stay far below) on the f32 leaf.
fn assert_matches(t: &Tree, reference: &[f64], what: &str) {
    let got = flat(t);
    assert_eq!(got.len(), reference.len());
    for (i, (&g, &r)) in got.iter().zip(reference).enumerate() {
        let tol = if is_f32(i) {
            1e-6 * r.abs().max(1.0)
        } else {
            1e-12
        };
        assert!(
            (g - r).abs() <= tol,
            "{what}: element {i}: got {g}, reference {r} (diff {})",
            (g - r).abs()
        );
    }
}

fn params_err(r: Result<()>) -> String {
    match r {
        Err(Error::Params(m)) => m,
        other => panic!("expected Error::Params, got {other:?}"),
    }
}

fn op_err<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(Error::Op { msg, .. }) => msg,
        other => panic!("expected Error::Op, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// References: PyTorch's update rules (torch.optim docs / single-tensor implementations) in f64.

struct SgdRef {
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    buf: Option<Vec<f64>>,
}

impl SgdRef {
    fn step(&mut self, p: &mut [f64], g: &[f64]) {
        let d: Vec<f64> = p
            .iter()
            .zip(g)
            .map(|(&p, &g)| {
                if self.weight_decay != 0.0 {
                    g + self.weight_decay * p
                } else {
                    g
                }
            })
            .collect();
        let d = if self.momentum != 0.0 {
            let b: Vec<f64> = match &self.buf {
                None => d.clone(),
                Some(b) => b
                    .iter()
                    .zip(&d)
                    .map(|(&b, &d)| self.momentum * b + (1.0 - self.dampening) * d)
                    .collect(),
            };
            self.buf = Some(b.clone());
            if self.nesterov {
                d.iter()
                    .zip(&b)
                    .map(|(&d, &b)| d + self.momentum * b)
                    .collect()
            } else {
                b
            }
        } else {
            d
        };
        for (p, d) in p.iter_mut().zip(d) {
            *p -= self.lr * d;
        }
    }
}

struct AdamRef {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    t: i32,
    m: Vec<f64>,
    v: Vec<f64>,
}

impl AdamRef {
    fn new(lr: f64, weight_decay: f64, decoupled: bool, n: usize) -> Self {
        AdamRef {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            decoupled,
            t: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }
    fn step(&mut self, p: &mut [f64], g: &[f64]) {
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t);
        let bc2 = 1.0 - self.beta2.powi(self.t);
        for i in 0..p.len() {
            let mut g = g[i];
            if self.decoupled {
                p[i] *= 1.0 - self.lr * self.weight_decay;
            } else {
                g += self.weight_decay * p[i];
            }
            self.m[i] = self.beta1 * self.m[i] + (1.0 - self.beta1) * g;
            self.v[i] = self.beta2 * self.v[i] + (1.0 - self.beta2) * g * g;
            let m_hat = self.m[i] / bc1;
            let v_hat = self.v[i] / bc2;
            p[i] -= self.lr * m_hat / (v_hat.sqrt() + self.eps);
        }
    }
}

/// Runs `opt` for three steps on [`params`]/[`grads`] and checks every step against `reference`.
fn check_three_steps(opt: &mut dyn Optimizer, reference: &mut dyn FnMut(&mut [f64], &[f64])) {
    let mut p = params();
    let mut r = flat(&p);
    for k in 1..=3 {
        let g = grads(k);
        opt.step(&mut p, &g).unwrap();
        reference(&mut r, &flat(&g));
        assert_matches(&p, &r, &format!("step {k}"));
        assert_eq!(opt.steps(), k as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// SGD.

#[test]
fn sgd_plain_matches_reference() {
    let mut opt = Sgd::new(0.1);
    let mut r = SgdRef {
        lr: 0.1,
        momentum: 0.0,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: false,
        buf: None,
    };
    check_three_steps(&mut opt, &mut |p, g| r.step(p, g));
    // A hand-computed value: fc.weight[0,0] = 0.5 - 0.1 * (0.2 + 0.4 + 0.6) = 0.38.
    let mut p = params();
    let mut opt = Sgd::new(0.1);
    for k in 1..=3 {
        opt.step(&mut p, &grads(k)).unwrap();
    }
    assert!((flat(&p)[0] - 0.38).abs() < 1e-15);
}

#[test]
fn sgd_f32_leaf_is_updated_in_f32_arithmetic() {
    let mut p = params();
    Sgd::new(0.1).step(&mut p, &grads(1)).unwrap();
    let Leaf::F32(b) = &p.0[1].1 else {
        unreachable!()
    };
    // p - lr * g with lr rounded to f32 and f32 arithmetic, bit for bit.
    let lr = 0.1f32;
    assert_eq!(b[[0]], 0.3f32 - lr * (0.6f32 - 0.25));
    assert_eq!(b[[1]], -0.7f32 - lr * 0.125f32);
}

#[test]
fn sgd_momentum_dampening_weight_decay_match_reference() {
    let mut opt = Sgd::new(0.05)
        .momentum(0.9)
        .dampening(0.1)
        .weight_decay(0.01);
    let mut r = SgdRef {
        lr: 0.05,
        momentum: 0.9,
        dampening: 0.1,
        weight_decay: 0.01,
        nesterov: false,
        buf: None,
    };
    check_three_steps(&mut opt, &mut |p, g| r.step(p, g));
    // Hand-computed, first element: d1 = 0.2 + 0.01*0.5 = 0.205, b1 = d1 (no dampening on the
    // first step), p1 = 0.5 - 0.05*0.205 = 0.48975.
    let mut p = params();
    let mut opt = Sgd::new(0.05)
        .momentum(0.9)
        .dampening(0.1)
        .weight_decay(0.01);
    opt.step(&mut p, &grads(1)).unwrap();
    assert!((flat(&p)[0] - 0.48975).abs() < 1e-15);
    // Step 2: d2 = 0.4 + 0.01*0.48975, b2 = 0.9*0.205 + 0.9*d2, p2 = p1 - 0.05*b2.
    opt.step(&mut p, &grads(2)).unwrap();
    let d2 = 0.4 + 0.01 * 0.48975;
    let b2 = 0.9 * 0.205 + 0.9 * d2;
    assert!((flat(&p)[0] - (0.48975 - 0.05 * b2)).abs() < 1e-15);
}

#[test]
fn sgd_weight_decay_alone() {
    // With a zero grad, weight decay alone shrinks every param by (1 - lr*wd) per step.
    let mut p = params();
    let before = flat(&p);
    let mut zero = grads(1);
    for (_, l) in &mut zero.0 {
        match l {
            Leaf::F64(a) => a.fill(0.0),
            Leaf::F32(a) => a.fill(0.0),
            _ => unreachable!(),
        }
    }
    let mut opt = Sgd::new(0.1).weight_decay(0.5);
    opt.step(&mut p, &zero).unwrap();
    opt.step(&mut p, &zero).unwrap();
    for (i, (&a, &b)) in flat(&p).iter().zip(&before).enumerate() {
        let tol = if is_f32(i) { 1e-6 } else { 1e-15 };
        assert!(
            (a - b * 0.95 * 0.95).abs() <= tol,
            "element {i}: {a} vs {b}"
        );
    }
}

#[test]
fn sgd_nesterov_differs_from_plain_momentum_as_expected() {
    let mu = 0.9;
    let lr = 0.1;
    let mut nest = Sgd::new(lr).momentum(mu).nesterov(true);
    let mut r = SgdRef {
        lr,
        momentum: mu,
        dampening: 0.0,
        weight_decay: 0.0,
        nesterov: true,
        buf: None,
    };
    check_three_steps(&mut nest, &mut |p, g| r.step(p, g));

    // After one step from the same point: plain moves by lr*g, Nesterov by lr*(1+mu)*g.
    let (mut a, mut b) = (params(), params());
    let start = flat(&a);
    let g = flat(&grads(1));
    Sgd::new(lr).momentum(mu).step(&mut a, &grads(1)).unwrap();
    Sgd::new(lr)
        .momentum(mu)
        .nesterov(true)
        .step(&mut b, &grads(1))
        .unwrap();
    let (fa, fb) = (flat(&a), flat(&b));
    for i in 0..g.len() {
        let tol = if is_f32(i) { 1e-6 } else { 1e-14 };
        assert!((start[i] - fa[i] - lr * g[i]).abs() <= tol);
        assert!((start[i] - fb[i] - lr * (1.0 + mu) * g[i]).abs() <= tol);
        assert!(g[i] == 0.0 || fa[i] != fb[i]);
    }
}

#[test]
fn sgd_hyperparameters_are_validated() {
    let mut p = params();
    let before = p.clone();
    let g = grads(1);
    let m = op_err(Sgd::new(0.1).nesterov(true).step(&mut p, &g));
    assert!(m.contains("Nesterov"), "{m}");
    let m = op_err(
        Sgd::new(0.1)
            .momentum(0.9)
            .dampening(0.5)
            .nesterov(true)
            .step(&mut p, &g),
    );
    assert!(m.contains("dampening"), "{m}");
    let m = op_err(Sgd::new(-1.0).step(&mut p, &g));
    assert!(m.contains("learning rate"), "{m}");
    assert_eq!(p, before);
}

// ---------------------------------------------------------------------------------------------
// Adam and AdamW.

#[test]
fn adam_matches_reference() {
    let mut opt = Adam::new(0.01);
    let mut r = AdamRef::new(0.01, 0.0, false, 7);
    check_three_steps(&mut opt, &mut |p, g| r.step(p, g));
    // Hand-computed: the first Adam step moves by lr * g / (|g| + eps) ~ lr * sign(g).
    let mut p = params();
    Adam::new(0.01).step(&mut p, &grads(1)).unwrap();
    let expect = 0.5 - 0.01 * 0.2 / (0.2 + 1e-8);
    assert!((flat(&p)[0] - expect).abs() < 1e-15);
}

#[test]
fn adam_l2_weight_decay_matches_reference() {
    let mut opt = Adam::new(0.01).weight_decay(0.1);
    let mut r = AdamRef::new(0.01, 0.1, false, 7);
    check_three_steps(&mut opt, &mut |p, g| r.step(p, g));
}

#[test]
fn adam_custom_betas_and_eps_match_reference() {
    let mut opt = Adam::new(0.02).betas(0.5, 0.75).eps(1e-3);
    let mut r = AdamRef::new(0.02, 0.0, false, 7);
    (r.beta1, r.beta2, r.eps) = (0.5, 0.75, 1e-3);
    check_three_steps(&mut opt, &mut |p, g| r.step(p, g));
}

#[test]
fn adamw_matches_reference() {
    let mut opt = AdamW::new(0.01).weight_decay(0.1);
    let mut r = AdamRef::new(0.01, 0.1, true, 7);
    check_three_steps(&mut opt, &mut |p, g| r.step(p, g));
    // PyTorch's default AdamW weight decay is 1e-2.
    let mut opt = AdamW::new(0.01);
    let mut r = AdamRef::new(0.01, 1e-2, true, 7);
    check_three_steps(&mut opt, &mut |p, g| r.step(p, g));
}

#[test]
fn adamw_differs_from_adam_only_through_weight_decay() {
    // Without weight decay they are the same algorithm, bit for bit.
    let (mut a, mut b) = (params(), params());
    let (mut adam, mut adamw) = (Adam::new(0.01), AdamW::new(0.01).weight_decay(0.0));
    for k in 1..=3 {
        adam.step(&mut a, &grads(k)).unwrap();
        adamw.step(&mut b, &grads(k)).unwrap();
    }
    assert_eq!(a, b);

    // With weight decay: one step from the same point. Adam's L2 term enters the normalised
    // gradient (so on its first step it moves by ~lr * sign(g + wd*p)), AdamW shrinks p by
    // (1 - lr*wd) and then moves by ~lr * sign(g).
    let (lr, wd) = (0.01, 0.3);
    let (mut a, mut b) = (params(), params());
    Adam::new(lr)
        .weight_decay(wd)
        .step(&mut a, &grads(1))
        .unwrap();
    AdamW::new(lr)
        .weight_decay(wd)
        .step(&mut b, &grads(1))
        .unwrap();
    let (p0, g, fa, fb) = (flat(&params()), flat(&grads(1)), flat(&a), flat(&b));
    for i in 0..p0.len() {
        if is_f32(i) {
            continue;
        }
        let ga = g[i] + wd * p0[i];
        let ea = p0[i] - lr * ga / (ga.abs() + 1e-8);
        let pb = p0[i] * (1.0 - lr * wd);
        let eb = pb - lr * g[i] / (g[i].abs() + 1e-8);
        assert!((fa[i] - ea).abs() < 1e-15, "adam element {i}");
        assert!((fb[i] - eb).abs() < 1e-15, "adamw element {i}");
        assert_ne!(fa[i], fb[i]);
    }
}

#[test]
fn adam_hyperparameters_are_validated() {
    let mut p = params();
    let g = grads(1);
    let m = op_err(Adam::new(0.1).betas(1.0, 0.999).step(&mut p, &g));
    assert!(m.contains("beta1"), "{m}");
    let m = op_err(AdamW::new(0.1).betas(0.9, -0.1).step(&mut p, &g));
    assert!(m.contains("beta2"), "{m}");
    let m = op_err(Adam::new(0.1).eps(-1.0).step(&mut p, &g));
    assert!(m.contains("eps"), "{m}");
    assert_eq!(p, params());
}

// ---------------------------------------------------------------------------------------------
// Narrow floats, integer leaves, layouts.

#[test]
fn bf16_and_f16_leaves_are_updated_in_f32_and_rounded() {
    let mk = |b: f32, h: f32| {
        Tree(vec![
            (
                "b".into(),
                Leaf::BF16(arr(&[2], &[bf16::from_f32(b), bf16::from_f32(-b)])),
            ),
            ("h".into(), Leaf::F16(arr(&[1], &[f16::from_f32(h)]))),
        ])
    };
    let mut p = mk(1.0, 2.0);
    let g = mk(0.3, 0.7);
    Sgd::new(0.1).step(&mut p, &g).unwrap();
    let (Leaf::BF16(b), Leaf::F16(h)) = (&p.0[0].1, &p.0[1].1) else {
        unreachable!()
    };
    // The grads themselves are bf16/f16 values; the update is f32 math, then one rounding.
    let gb = bf16::from_f32(0.3).to_f32();
    let gh = f16::from_f32(0.7).to_f32();
    assert_eq!(b[[0]], bf16::from_f32(1.0 - 0.1 * gb));
    assert_eq!(b[[1]], bf16::from_f32(-1.0 + 0.1 * gb));
    assert_eq!(h[[0]], f16::from_f32(2.0 - 0.1 * gh));
    // ... which is within half a bf16 ulp (2^-8 near 1) of the exact f64 result.
    let exact = 1.0 - 0.1 * 0.3;
    assert!((b[[0]].to_f64() - exact).abs() <= 2f64.powi(-9) + 1e-3 * 0.1);

    // Adam on bf16: the moments are f32, so the result is the f32 Adam step rounded once.
    let mut p = mk(1.0, 2.0);
    Adam::new(0.01).step(&mut p, &g).unwrap();
    let Leaf::BF16(b) = &p.0[0].1 else {
        unreachable!()
    };
    let step = 0.01f32 * gb / (gb + 1e-8);
    assert_eq!(b[[0]], bf16::from_f32(1.0 - step));
    assert_eq!(b[[0]].to_f32(), 0.98828125); // 0.99 rounded to bf16
}

#[test]
fn integer_leaves_are_skipped_and_grad_dtypes_converted() {
    let mut p = Tree(vec![
        ("w".into(), Leaf::F32(arr(&[2], &[1.0f32, 2.0]))),
        ("step".into(), Leaf::I32(arr(&[1], &[7]))),
        ("v".into(), Leaf::F64(arr(&[1], &[3.0]))),
    ]);
    // The grads carry f64 for the f32 leaf and f32 for the f64 leaf; the int grad is ignored.
    let g = Tree(vec![
        ("w".into(), Leaf::F64(arr(&[2], &[0.5, -0.5]))),
        ("step".into(), Leaf::I32(arr(&[3], &[1, 1, 1]))),
        ("v".into(), Leaf::F32(arr(&[1], &[0.25f32]))),
    ]);
    let mut opt = Sgd::new(0.5).momentum(0.5);
    opt.step(&mut p, &g).unwrap();
    opt.step(&mut p, &g).unwrap();
    // b1 = g, b2 = 1.5 g; total movement 0.5 * 2.5 * g.
    assert_eq!(flat(&p), vec![1.0 - 0.625, 2.0 + 0.625, 7.0, 3.0 - 0.3125]);
}

#[test]
fn non_contiguous_params_pair_with_grads_in_logical_order() {
    // A [2, 3] param stored column-major.
    let w = ArrayD::from_shape_vec(IxDyn(&[2, 3]).f(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
    assert!(!w.is_standard_layout());
    let mut p = Tree(vec![("w".into(), Leaf::F64(w))]);
    let g = Tree(vec![(
        "w".into(),
        Leaf::F64(arr(&[2, 3], &[10.0, 20.0, 30.0, 40.0, 50.0, 60.0])),
    )]);
    Sgd::new(0.1).momentum(0.9).step(&mut p, &g).unwrap();
    let expect: Vec<f64> = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
        .iter()
        .zip([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
        .map(|(p, g)| p - 0.1 * g)
        .collect();
    assert_eq!(flat(&p), expect);
}

// ---------------------------------------------------------------------------------------------
// Mismatches.

#[test]
fn name_mismatch_is_an_error_and_modifies_nothing() {
    let mut p = params();
    let mut g = grads(1);
    g.0[1].0 = "fc.b".into();
    let mut opt = Adam::new(0.1);
    let m = params_err(opt.step(&mut p, &g));
    assert!(m.contains("`fc.b`") && m.contains("`fc.bias`"), "{m}");
    assert_eq!(p, params());
    assert_eq!(opt.steps(), 0);
    // The optimizer is still usable with the right grads.
    opt.step(&mut p, &grads(1)).unwrap();
    assert_eq!(opt.steps(), 1);
}

#[test]
fn leaf_count_shape_and_dtype_mismatches_are_errors() {
    let mut p = params();
    let mut opt = Sgd::new(0.1);

    let mut g = grads(1);
    g.0.pop();
    let m = params_err(opt.step(&mut p, &g));
    assert!(m.contains("3 leaves") && m.contains("2"), "{m}");

    let mut g = grads(1);
    g.0.push(("extra".into(), Leaf::F64(arr(&[1], &[1.0]))));
    let m = params_err(opt.step(&mut p, &g));
    assert!(m.contains("4"), "{m}");

    let mut g = grads(1);
    g.0[0].1 = Leaf::F64(arr(&[4], &[1.0, 2.0, 3.0, 4.0]));
    let m = params_err(opt.step(&mut p, &g));
    assert!(
        m.contains("`fc.weight`") && m.contains("[4]") && m.contains("[2, 2]"),
        "{m}"
    );

    let mut g = grads(1);
    g.0[2].1 = Leaf::I32(arr(&[], &[1]));
    let m = params_err(opt.step(&mut p, &g));
    assert!(m.contains("`scale`") && m.contains("i32"), "{m}");

    assert_eq!(p, params());
    assert_eq!(opt.steps(), 0);
}

#[test]
fn a_later_step_with_other_shapes_is_an_error_until_reset() {
    let mut opt = Adam::new(0.1);
    let mut p = params();
    opt.step(&mut p, &grads(1)).unwrap();
    let mut q = Tree(vec![(
        "fc.weight".into(),
        Leaf::F64(arr(&[3], &[1.0, 2.0, 3.0])),
    )]);
    let gq = Tree(vec![(
        "fc.weight".into(),
        Leaf::F64(arr(&[3], &[1.0, 1.0, 1.0])),
    )]);
    let m = params_err(opt.step(&mut q, &gq));
    assert!(m.contains("changed since the first step"), "{m}");
    // Same names, another shape.
    let mut q = params();
    q.0[1].1 = Leaf::F32(arr(&[3], &[0.0f32; 3]));
    let mut gq = grads(2);
    gq.0[1].1 = Leaf::F32(arr(&[3], &[1.0f32; 3]));
    let m = params_err(opt.step(&mut q, &gq));
    assert!(
        m.contains("`fc.bias`") && m.contains("[2]") && m.contains("[3]"),
        "{m}"
    );
    assert_eq!(opt.steps(), 1);
    // After a reset the new tree is accepted, and Adam starts again at t = 1.
    opt.reset();
    assert_eq!(opt.steps(), 0);
    opt.step(&mut q, &gq).unwrap();
    let Leaf::F32(b) = &q.0[1].1 else {
        unreachable!()
    };
    assert!((b[[0]] + 0.1).abs() < 1e-6);
}

// ---------------------------------------------------------------------------------------------
// Schedules.

#[test]
fn step_schedule_closed_form() {
    let s = LrSchedule::Step {
        step_size: 3,
        gamma: 0.1,
    };
    let expect = [
        (0, 0.5),
        (1, 0.5),
        (2, 0.5),
        (3, 0.05),
        (5, 0.05),
        (6, 0.005),
        (10, 0.0005),
    ];
    for (step, lr) in expect {
        let got = s.lr_at(0.5, step);
        assert!((got - lr).abs() <= 1e-14 * lr, "step {step}: {got} vs {lr}");
    }
    assert_eq!(LrSchedule::Constant.lr_at(0.3, 1000), 0.3);
}

#[test]
fn cosine_schedule_closed_form() {
    let s = LrSchedule::Cosine {
        t_max: 8,
        eta_min: 0.1,
    };
    let base = 1.1;
    // eta_min + (base - eta_min) * (1 + cos(pi t / 8)) / 2, with cos values written out.
    let half_sqrt2 = std::f64::consts::FRAC_1_SQRT_2;
    let expect = [
        (0, 1.1),
        (2, 0.1 + (1.0 + half_sqrt2) / 2.0),
        (4, 0.6),
        (6, 0.1 + (1.0 - half_sqrt2) / 2.0),
        (8, 0.1),
        // Past t_max the closed form keeps following the cosine (as CosineAnnealingLR's).
        (12, 0.6),
        (16, 1.1),
    ];
    for (step, lr) in expect {
        let got = s.lr_at(base, step);
        assert!((got - lr).abs() <= 1e-14, "step {step}: {got} vs {lr}");
    }
}

#[test]
fn scheduler_sets_the_lr_before_each_step() {
    // SGD with g = 1 moves the param by exactly the lr of each step.
    let one = |v: f64| Tree(vec![("x".into(), Leaf::F64(arr(&[], &[v])))]);
    let sched = LrSchedule::Step {
        step_size: 2,
        gamma: 0.5,
    };
    let mut opt = Scheduler::new(Sgd::new(0.4), sched);
    assert_eq!(opt.base_lr(), 0.4);
    let mut p = one(0.0);
    let mut moved = Vec::new();
    for _ in 0..5 {
        let before = flat(&p)[0];
        let lr = opt.lr();
        opt.step(&mut p, &one(1.0)).unwrap();
        moved.push(before - flat(&p)[0]);
        assert_eq!(opt.optimizer.lr, lr);
    }
    let expect = [0.4, 0.4, 0.2, 0.2, 0.1];
    for (m, e) in moved.iter().zip(expect) {
        assert!((m - e).abs() < 1e-15, "{moved:?}");
    }
    assert_eq!(opt.steps(), 5);
    // A boxed optimizer chosen at run time works the same way.
    let inner: Box<dyn Optimizer> = Box::new(Adam::new(0.2));
    let mut opt = Scheduler::new(
        inner,
        LrSchedule::Cosine {
            t_max: 2,
            eta_min: 0.0,
        },
    );
    let mut p = one(0.0);
    opt.step(&mut p, &one(1.0)).unwrap();
    assert!((flat(&p)[0] + 0.2).abs() < 1e-8);
    assert!((opt.lr() - 0.1).abs() < 1e-15);
}

// ---------------------------------------------------------------------------------------------
// Clipping.

#[test]
fn clip_grad_norm_scales_to_max_norm() {
    // Norm sqrt(9 + 16 + 144) = 13.
    let mut g = Tree(vec![
        ("a".into(), Leaf::F64(arr(&[2], &[3.0, -4.0]))),
        ("b".into(), Leaf::F64(arr(&[], &[12.0]))),
    ]);
    let norm = clip_grad_norm(&mut g, 2.0).unwrap();
    assert!((norm - 13.0).abs() < 1e-12);
    let coef = 2.0 / (13.0 + 1e-6);
    assert_eq!(flat(&g), vec![3.0 * coef, -4.0 * coef, 12.0 * coef]);
    // The new norm is max_norm * norm / (norm + 1e-6): max_norm up to the 1e-6 term.
    let new = global_norm(&g);
    assert!((new - 2.0 * 13.0 / (13.0 + 1e-6)).abs() < 1e-12);
    assert!((new - 2.0).abs() <= 2.0 * 1e-6 / 13.0 + 1e-12);

    // A large norm: the scaled norm equals max_norm within 1e-9.
    let mut g = Tree(vec![("a".into(), Leaf::F64(arr(&[2], &[3000.0, 4000.0])))]);
    let norm = clip_grad_norm(&mut g, 1.0).unwrap();
    assert_eq!(norm, 5000.0);
    assert!((global_norm(&g) - 1.0).abs() < 1e-9);
}

#[test]
fn clip_grad_norm_mixed_dtypes_and_no_scaling_below() {
    let mk = || {
        Tree(vec![
            ("a".into(), Leaf::F32(arr(&[2], &[3.0f32, 4.0]))),
            ("i".into(), Leaf::I32(arr(&[1], &[100]))),
            ("b".into(), Leaf::BF16(arr(&[1], &[bf16::from_f32(12.0)]))),
        ])
    };
    // Below (and at) max_norm nothing changes.
    let mut g = mk();
    assert!((clip_grad_norm(&mut g, 13.5).unwrap() - 13.0).abs() < 1e-12);
    assert_eq!(g, mk());
    // Above: float leaves scaled in f32 (bf16 rounded back), the integer leaf untouched.
    let mut g = mk();
    let norm = clip_grad_norm(&mut g, 6.5).unwrap();
    assert!((norm - 13.0).abs() < 1e-12);
    let c = (6.5 / (13.0 + 1e-6)) as f32;
    assert_eq!(
        g.0,
        vec![
            ("a".to_string(), Leaf::F32(arr(&[2], &[3.0 * c, 4.0 * c]))),
            ("i".to_string(), Leaf::I32(arr(&[1], &[100]))),
            (
                "b".to_string(),
                Leaf::BF16(arr(&[1], &[bf16::from_f32(12.0 * c)]))
            ),
        ]
    );
    assert!((global_norm(&g) - 6.5).abs() < 0.05); // bf16 rounding of the 6-ish element
}

#[test]
fn clip_grad_norm_edge_cases() {
    let mut g = Tree(vec![(
        "a".into(),
        Leaf::F64(arr(&[2], &[f64::INFINITY, 1.0])),
    )]);
    let before = g.clone();
    assert!(clip_grad_norm(&mut g, 1.0).unwrap().is_infinite());
    assert_eq!(g, before);
    let mut g = grads(1);
    let m = op_err(clip_grad_norm(&mut g, -1.0));
    assert!(m.contains("max_norm"), "{m}");
    assert_eq!(g, grads(1));
    // max_norm 0 zeroes the grads.
    clip_grad_norm(&mut g, 0.0).unwrap();
    assert!(flat(&g).iter().all(|&x| x == 0.0));
}
