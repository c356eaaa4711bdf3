//! Optimizers, learning-rate schedules and gradient clipping over [`ParamTree`]s.
//!
//! A generated model's `evaluate_gradients(&params, inputs, output_grads)` returns its outputs
//! and an `MGrads` tree that mirrors `MParams` leaf for leaf. An [`Optimizer`] pairs the two
//! trees by position (checking that the dotted names agree) and updates the params in place:
//!
//! - [`Sgd`]: SGD with momentum, dampening, Nesterov momentum and L2 weight decay,
//!   as `torch.optim.SGD`;
//! - [`Adam`]: Adam with L2 weight decay added to the gradient, as `torch.optim.Adam`;
//! - [`AdamW`]: Adam with decoupled weight decay, as `torch.optim.AdamW`;
//! - [`LrSchedule`] and [`Scheduler`]: step decay and cosine annealing, the closed forms of
//!   `torch.optim.lr_scheduler.StepLR` and `CosineAnnealingLR`;
//! - [`clip_grad_norm`]: clipping by global L2 norm, as `torch.nn.utils.clip_grad_norm_`.
//!
//! # Numerics
//!
//! `f32` params are updated in `f32` arithmetic and `f64` params in `f64`, with the
//! hyperparameters converted to that type, as PyTorch does. `f16` and `bf16` params are widened
//! to `f32`, updated, and stored back rounded to nearest even; their optimizer state (momentum
//! buffers, Adam moments) is kept in `f32`, so small updates still accumulate in the state even
//! when one step does not move the stored value. Integer and `bool` leaves are skipped (their
//! grad leaf, whatever it holds, is ignored). A grad leaf may have another float dtype than its
//! param; it is converted to the param's compute type. Each step copies the grads once (that
//! conversion) and otherwise works in place.
//!
//! State is created on the first step, for the tree it is given; a later step with a tree whose
//! leaf names, shapes or float widths differ is an error (call [`Optimizer::reset`] to start
//! over). Every mismatch is reported as an [`Error::Params`] *before* anything is modified;
//! invalid hyperparameters (a negative learning rate, `beta1 >= 1`, ...) are an [`Error::Op`].
//!
//! # Example
//!
//! ```
//! use mithril_runtime::optim::{clip_grad_norm, Adam, LrSchedule, Optimizer, Scheduler};
//! use mithril_runtime::{ParamTree, Result, TensorView, TensorViewMut};
//! use ndarray::{ArrayD, IxDyn};
//!
//! // What `mithril!` generates for a model's params and grads, written by hand.
//! struct Net {
//!     w: ArrayD<f32>,
//!     b: ArrayD<f32>,
//! }
//! impl ParamTree for Net {
//!     fn visit(&self, f: &mut dyn FnMut(&str, TensorView<'_>)) {
//!         f("fc.weight", self.w.view().into());
//!         f("fc.bias", self.b.view().into());
//!     }
//!     fn visit_mut(
//!         &mut self,
//!         f: &mut dyn FnMut(&str, TensorViewMut<'_>) -> Result<()>,
//!     ) -> Result<()> {
//!         f("fc.weight", self.w.view_mut().into())?;
//!         f("fc.bias", self.b.view_mut().into())
//!     }
//! }
//!
//! let mut params = Net { w: ArrayD::ones(IxDyn(&[2, 2])), b: ArrayD::zeros(IxDyn(&[2])) };
//! // In a real program: `let (_, mut grads) = model.evaluate_gradients(&params, inputs, dy)?;`
//! let mut grads = Net {
//!     w: ArrayD::from_elem(IxDyn(&[2, 2]), 3.0),
//!     b: ArrayD::from_elem(IxDyn(&[2]), -4.0),
//! };
//!
//! // The global norm is sqrt(4 * 9 + 2 * 16) = sqrt(68); the grads are scaled down to norm ~1.
//! let norm = clip_grad_norm(&mut grads, 1.0)?;
//! assert!((norm - 68f64.sqrt()).abs() < 1e-6);
//!
//! // Adam with a cosine-annealed learning rate; the first step sets lr to the base lr.
//! let mut opt = Scheduler::new(Adam::new(1e-2), LrSchedule::Cosine { t_max: 100, eta_min: 0.0 });
//! opt.step(&mut params, &grads)?;
//! assert_eq!(opt.steps(), 1);
//! // Adam's first step moves every element by about lr against the sign of its grad.
//! assert!((params.w[[0, 0]] - 0.99).abs() < 1e-6);
//! assert!((params.b[[1]] - 0.01).abs() < 1e-6);
//! # Ok::<(), mithril_runtime::Error>(())
//! ```
//!
//! # Why `step` takes trait objects
//!
//! [`Optimizer::step`] takes `&mut dyn ParamTree` and `&dyn ParamTree` rather than generic
//! params, so that `Optimizer` is object safe: `Box<dyn Optimizer>` can be chosen at run time
//! (from a config, say) and wrapped in a [`Scheduler`]. Nothing is lost: `ParamTree` hands out
//! its leaves through `&mut dyn FnMut` callbacks anyway, and `opt.step(&mut params, &grads)`
//! coerces a generated `MParams`/`MGrads` to the trait objects at the call site.

use std::ops::{Add, Div, Mul, Sub};

use ndarray::{ArrayViewD, ArrayViewMutD};

use crate::check::format_shape;
use crate::elem::{DType, Elem};
use crate::error::{Error, Result};
use crate::params::{global_norm, ParamTree, TensorView, TensorViewMut};

// ---------------------------------------------------------------------------------------------
// The optimizer trait.

/// Updates a param tree in place from a grad tree that mirrors it.
///
/// Object safe; see the [module docs](self#why-step-takes-trait-objects).
pub trait Optimizer {
    /// One update of `params` from `grads`.
    ///
    /// The trees are paired leaf by leaf, by position; the dotted names must agree, and so must
    /// the shapes of float leaves. On error (an [`Error::Params`] for any mismatch, an
    /// [`Error::Op`] for invalid hyperparameters) nothing is modified and [`steps`](Self::steps)
    /// does not advance.
    fn step(&mut self, params: &mut dyn ParamTree, grads: &dyn ParamTree) -> Result<()>;

    /// The learning rate the next step uses.
    fn lr(&self) -> f64;

    /// Sets the learning rate of the following steps.
    fn set_lr(&mut self, lr: f64);

    /// The number of successful steps so far.
    fn steps(&self) -> u64;

    /// Forgets all state (momentum buffers, moments, the step count); the next step starts
    /// afresh and may be given a differently shaped tree.
    fn reset(&mut self);
}

impl<O: Optimizer + ?Sized> Optimizer for Box<O> {
    fn step(&mut self, params: &mut dyn ParamTree, grads: &dyn ParamTree) -> Result<()> {
        (**self).step(params, grads)
    }
    fn lr(&self) -> f64 {
        (**self).lr()
    }
    fn set_lr(&mut self, lr: f64) {
        (**self).set_lr(lr)
    }
    fn steps(&self) -> u64 {
        (**self).steps()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

impl<O: Optimizer + ?Sized> Optimizer for &mut O {
    fn step(&mut self, params: &mut dyn ParamTree, grads: &dyn ParamTree) -> Result<()> {
        (**self).step(params, grads)
    }
    fn lr(&self) -> f64 {
        (**self).lr()
    }
    fn set_lr(&mut self, lr: f64) {
        (**self).set_lr(lr)
    }
    fn steps(&self) -> u64 {
        (**self).steps()
    }
    fn reset(&mut self) {
        (**self).reset()
    }
}

// ---------------------------------------------------------------------------------------------
// SGD.

/// Stochastic gradient descent, exactly as `torch.optim.SGD` (with `maximize=False`).
///
/// For every float element, with grad `g`, param `p` and momentum buffer `b`:
///
/// ```text
/// g = g + weight_decay * p                       (if weight_decay != 0)
/// b = g                                          (the first step with momentum != 0)
/// b = momentum * b + (1 - dampening) * g         (later steps)
/// g = g + momentum * b  if nesterov,  else  g = b (if momentum != 0)
/// p = p - lr * g
/// ```
///
/// ```
/// use mithril_runtime::optim::Sgd;
/// let opt = Sgd::new(0.1).momentum(0.9).nesterov(true).weight_decay(1e-4);
/// assert_eq!((opt.lr, opt.momentum, opt.dampening), (0.1, 0.9, 0.0));
/// ```
#[derive(Clone, Debug)]
pub struct Sgd {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (default 0: no momentum, no buffer).
    pub momentum: f64,
    /// Dampening of the gradient added to the momentum buffer (default 0).
    pub dampening: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    /// Nesterov momentum (default false; needs `momentum > 0` and `dampening == 0`).
    pub nesterov: bool,
    state: State,
}

impl Sgd {
    /// SGD with learning rate `lr` and PyTorch's defaults for the rest: no momentum, no
    /// dampening, no weight decay, no Nesterov.
    pub fn new(lr: f64) -> Self {
        Sgd {
            lr,
            momentum: 0.0,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            state: State::default(),
        }
    }

    /// Sets the momentum factor.
    pub fn momentum(mut self, momentum: f64) -> Self {
        self.momentum = momentum;
        self
    }

    /// Sets the dampening.
    pub fn dampening(mut self, dampening: f64) -> Self {
        self.dampening = dampening;
        self
    }

    /// Sets the L2 weight decay.
    pub fn weight_decay(mut self, weight_decay: f64) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Enables or disables Nesterov momentum.
    pub fn nesterov(mut self, nesterov: bool) -> Self {
        self.nesterov = nesterov;
        self
    }

    fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::op("sgd", msg));
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad(format!(
                "invalid learning rate {} (must be finite and >= 0)",
                self.lr
            ));
        }
        if !(self.momentum >= 0.0 && self.momentum.is_finite()) {
            return bad(format!(
                "invalid momentum {} (must be finite and >= 0)",
                self.momentum
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "invalid weight_decay {} (must be finite and >= 0)",
                self.weight_decay
            ));
        }
        if !self.dampening.is_finite() {
            return bad(format!(
                "invalid dampening {} (must be finite)",
                self.dampening
            ));
        }
        if self.nesterov && (self.momentum <= 0.0 || self.dampening != 0.0) {
            return bad(format!(
                "Nesterov momentum requires momentum > 0 and dampening == 0 \
                 (momentum is {}, dampening is {})",
                self.momentum, self.dampening
            ));
        }
        Ok(())
    }
}

/// The per-element SGD rule in compute type `A`.
struct SgdKernel<A> {
    lr: A,
    momentum: A,
    one_minus_dampening: A,
    weight_decay: A,
    use_momentum: bool,
    use_weight_decay: bool,
    nesterov: bool,
    /// The momentum buffer was just created: it takes the gradient as is.
    fresh: bool,
}

impl<A: Real> SgdKernel<A> {
    fn new(o: &Sgd, fresh: bool) -> Self {
        SgdKernel {
            lr: A::of(o.lr),
            momentum: A::of(o.momentum),
            one_minus_dampening: A::of(1.0 - o.dampening),
            weight_decay: A::of(o.weight_decay),
            use_momentum: o.momentum != 0.0,
            use_weight_decay: o.weight_decay != 0.0,
            nesterov: o.nesterov,
            fresh,
        }
    }
}

impl<A: Real> Kernel<A> for SgdKernel<A> {
    #[inline]
    fn apply(&self, p: A, g: A, s: &mut [A]) -> A {
        let mut d = g;
        if self.use_weight_decay {
            d = d + self.weight_decay * p;
        }
        if self.use_momentum {
            let b = if self.fresh {
                d
            } else {
                s[0] * self.momentum + self.one_minus_dampening * d
            };
            s[0] = b;
            d = if self.nesterov {
                d + self.momentum * b
            } else {
                b
            };
        }
        p - self.lr * d
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut dyn ParamTree, grads: &dyn ParamTree) -> Result<()> {
        self.validate()?;
        let slots = usize::from(self.momentum != 0.0);
        let (g, fresh) = self.state.prepare("sgd", params, grads, slots)?;
        let (k32, k64) = (SgdKernel::new(self, fresh), SgdKernel::new(self, fresh));
        self.state.apply(params, g, &k32, &k64)
    }
    fn lr(&self) -> f64 {
        self.lr
    }
    fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn steps(&self) -> u64 {
        self.state.steps
    }
    fn reset(&mut self) {
        self.state = State::default();
    }
}

// ---------------------------------------------------------------------------------------------
// Adam and AdamW.

/// Adam, exactly as `torch.optim.Adam` (with `amsgrad=False, maximize=False`): weight decay is
/// an L2 penalty added to the gradient. For decoupled weight decay use [`AdamW`].
///
/// For every float element, at step `t = 1, 2, ...`, with moments `m` and `v` starting at 0:
///
/// ```text
/// g = g + weight_decay * p                       (if weight_decay != 0)
/// m = m + (1 - beta1) * (g - m)                  (= beta1 * m + (1 - beta1) * g; torch's lerp)
/// v = beta2 * v + (1 - beta2) * g * g
/// step_size = lr / (1 - beta1^t)                 (in f64)
/// denom = sqrt(v) / sqrt(1 - beta2^t) + eps
/// p = p - step_size * (m / denom)
/// ```
///
/// ```
/// use mithril_runtime::optim::Adam;
/// let opt = Adam::new(1e-3).betas(0.9, 0.98);
/// assert_eq!((opt.beta1, opt.beta2, opt.eps, opt.weight_decay), (0.9, 0.98, 1e-8, 0.0));
/// ```
#[derive(Clone, Debug)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// L2 penalty added to the gradient (default 0).
    pub weight_decay: f64,
    state: State,
}

/// Adam with decoupled weight decay, exactly as `torch.optim.AdamW` (with `amsgrad=False,
/// maximize=False`): before the Adam update of [`Adam`] (without the L2 term),
/// `p = p * (1 - lr * weight_decay)`.
///
/// ```
/// use mithril_runtime::optim::AdamW;
/// let opt = AdamW::new(1e-3);
/// assert_eq!((opt.beta1, opt.beta2, opt.eps, opt.weight_decay), (0.9, 0.999, 1e-8, 1e-2));
/// ```
#[derive(Clone, Debug)]
pub struct AdamW {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment (default 0.9).
    pub beta1: f64,
    /// Decay of the second moment (default 0.999).
    pub beta2: f64,
    /// Added to the denominator (default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay (default 1e-2, as PyTorch).
    pub weight_decay: f64,
    state: State,
}

macro_rules! adam_like {
    ($ty:ident, $name:literal, $wd:expr, $decoupled:expr) => {
        impl $ty {
            #[doc = concat!(
                        "`", stringify!($ty), "` with learning rate `lr` and PyTorch's defaults: ",
                        "betas (0.9, 0.999), eps 1e-8, weight decay ", stringify!($wd), "."
                    )]
            pub fn new(lr: f64) -> Self {
                $ty {
                    lr,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: $wd,
                    state: State::default(),
                }
            }

            /// Sets the moment decays `(beta1, beta2)`.
            pub fn betas(mut self, beta1: f64, beta2: f64) -> Self {
                self.beta1 = beta1;
                self.beta2 = beta2;
                self
            }

            /// Sets the denominator epsilon.
            pub fn eps(mut self, eps: f64) -> Self {
                self.eps = eps;
                self
            }

            /// Sets the weight decay.
            pub fn weight_decay(mut self, weight_decay: f64) -> Self {
                self.weight_decay = weight_decay;
                self
            }

            fn hyper(&self) -> AdamHyper {
                AdamHyper {
                    lr: self.lr,
                    beta1: self.beta1,
                    beta2: self.beta2,
                    eps: self.eps,
                    weight_decay: self.weight_decay,
                    decoupled: $decoupled,
                }
            }
        }

        impl Optimizer for $ty {
            fn step(&mut self, params: &mut dyn ParamTree, grads: &dyn ParamTree) -> Result<()> {
                let h = self.hyper();
                h.validate($name)?;
                let (g, _) = self.state.prepare($name, params, grads, 2)?;
                let t = self.state.steps + 1;
                let (k32, k64) = (AdamKernel::new(&h, t), AdamKernel::new(&h, t));
                self.state.apply(params, g, &k32, &k64)
            }
            fn lr(&self) -> f64 {
                self.lr
            }
            fn set_lr(&mut self, lr: f64) {
                self.lr = lr;
            }
            fn steps(&self) -> u64 {
                self.state.steps
            }
            fn reset(&mut self) {
                self.state = State::default();
            }
        }
    };
}
adam_like!(Adam, "adam", 0.0, false);
adam_like!(AdamW, "adamw", 1e-2, true);

/// The hyperparameters shared by [`Adam`] and [`AdamW`].
struct AdamHyper {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
}

impl AdamHyper {
    fn validate(&self, who: &str) -> Result<()> {
        let bad = |msg: String| Err(Error::op(who, msg));
        if !(self.lr >= 0.0 && self.lr.is_finite()) {
            return bad(format!(
                "invalid learning rate {} (must be finite and >= 0)",
                self.lr
            ));
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad(format!("invalid beta1 {} (must be in [0, 1))", self.beta1));
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad(format!("invalid beta2 {} (must be in [0, 1))", self.beta2));
        }
        if !(self.eps >= 0.0 && self.eps.is_finite()) {
            return bad(format!(
                "invalid eps {} (must be finite and >= 0)",
                self.eps
            ));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad(format!(
                "invalid weight_decay {} (must be finite and >= 0)",
                self.weight_decay
            ));
        }
        Ok(())
    }
}

/// The per-element Adam/AdamW rule in compute type `A`; state slots are `[m, v]`.
struct AdamKernel<A> {
    beta2: A,
    /// `1 - beta1`, the weight of torch's `exp_avg.lerp_(grad, 1 - beta1)`.
    lerp_weight: A,
    one_minus_beta2: A,
    eps: A,
    /// `lr / (1 - beta1^t)`.
    step_size: A,
    /// `sqrt(1 - beta2^t)`.
    bias_correction2_sqrt: A,
    /// The L2 coefficient (Adam) or 0.
    l2: Option<A>,
    /// `1 - lr * weight_decay` (AdamW) or none.
    decay: Option<A>,
}

impl<A: Real> AdamKernel<A> {
    fn new(h: &AdamHyper, t: u64) -> Self {
        // As torch (non-capturable): the bias corrections are Python floats, i.e. f64.
        let t = t as f64;
        let bias_correction1 = 1.0 - h.beta1.powf(t);
        let bias_correction2 = 1.0 - h.beta2.powf(t);
        let wd = h.weight_decay != 0.0;
        AdamKernel {
            beta2: A::of(h.beta2),
            lerp_weight: A::of(1.0 - h.beta1),
            one_minus_beta2: A::of(1.0 - h.beta2),
            eps: A::of(h.eps),
            step_size: A::of(h.lr / bias_correction1),
            bias_correction2_sqrt: A::of(bias_correction2.sqrt()),
            l2: (wd && !h.decoupled).then(|| A::of(h.weight_decay)),
            decay: (wd && h.decoupled).then(|| A::of(1.0 - h.lr * h.weight_decay)),
        }
    }
}

impl<A: Real> Kernel<A> for AdamKernel<A> {
    #[inline]
    fn apply(&self, p: A, g: A, s: &mut [A]) -> A {
        let mut p = p;
        if let Some(decay) = self.decay {
            p = p * decay;
        }
        let g = match self.l2 {
            Some(wd) => g + wd * p,
            None => g,
        };
        // torch's lerp: `self + w * (end - self)` for w < 0.5, else `end - (end - self) * (1 - w)`.
        let (m, v) = (s[0], s[1]);
        let w = self.lerp_weight;
        let m = if w < A::of(0.5) {
            m + w * (g - m)
        } else {
            g - (g - m) * (A::ONE - w)
        };
        let v = v * self.beta2 + self.one_minus_beta2 * (g * g);
        s[0] = m;
        s[1] = v;
        let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        p - self.step_size * (m / denom)
    }
}

// ---------------------------------------------------------------------------------------------
// Learning-rate schedules.

/// A learning rate as a function of the step count, in closed form.
///
/// `step` counts the scheduler steps taken so far (PyTorch's `last_epoch`); with a [`Scheduler`]
/// it is the number of optimizer steps already done, so the first step uses `lr_at(base, 0)`.
///
/// ```
/// use mithril_runtime::optim::LrSchedule;
/// let s = LrSchedule::Step { step_size: 10, gamma: 0.5 };
/// assert_eq!(s.lr_at(1.0, 9), 1.0);
/// assert_eq!(s.lr_at(1.0, 25), 0.25);
/// let c = LrSchedule::Cosine { t_max: 100, eta_min: 0.0 };
/// assert!((c.lr_at(1.0, 50) - 0.5).abs() < 1e-15);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LrSchedule {
    /// The base learning rate throughout.
    Constant,
    /// `base_lr * gamma^floor(step / step_size)`, as `StepLR` (`step_size` 0 is taken as 1).
    Step {
        /// Steps between decays.
        step_size: u64,
        /// Multiplicative decay.
        gamma: f64,
    },
    /// `eta_min + (base_lr - eta_min) * (1 + cos(pi * step / t_max)) / 2`, the closed form of
    /// `CosineAnnealingLR` (which keeps following the cosine after `t_max`; `t_max` 0 gives
    /// `eta_min` from the start).
    Cosine {
        /// Half period of the cosine, in steps.
        t_max: u64,
        /// The minimum learning rate.
        eta_min: f64,
    },
}

impl LrSchedule {
    /// The learning rate after `step` scheduler steps, for base learning rate `base_lr`.
    pub fn lr_at(&self, base_lr: f64, step: u64) -> f64 {
        match *self {
            LrSchedule::Constant => base_lr,
            LrSchedule::Step { step_size, gamma } => {
                let k = step / step_size.max(1);
                base_lr * gamma.powf(k as f64)
            }
            LrSchedule::Cosine { t_max, eta_min } => {
                if t_max == 0 {
                    return eta_min;
                }
                let phase = std::f64::consts::PI * step as f64 / t_max as f64;
                eta_min + (base_lr - eta_min) * (1.0 + phase.cos()) / 2.0
            }
        }
    }
}

/// An optimizer whose learning rate follows an [`LrSchedule`]: before every step, the inner
/// optimizer's lr is set to `schedule.lr_at(base_lr, optimizer.steps())`.
///
/// `Scheduler` is itself an [`Optimizer`]: [`lr`](Optimizer::lr) is the lr the next step will
/// use and [`set_lr`](Optimizer::set_lr) changes the base lr. The base lr is the inner
/// optimizer's lr when the scheduler is made.
#[derive(Clone, Debug)]
pub struct Scheduler<O> {
    /// The wrapped optimizer.
    pub optimizer: O,
    /// The schedule.
    pub schedule: LrSchedule,
    base_lr: f64,
}

impl<O: Optimizer> Scheduler<O> {
    /// Wraps `optimizer`; its current lr becomes the base lr.
    pub fn new(optimizer: O, schedule: LrSchedule) -> Self {
        let base_lr = optimizer.lr();
        Scheduler {
            optimizer,
            schedule,
            base_lr,
        }
    }

    /// The base learning rate the schedule scales.
    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// The inner optimizer.
    pub fn into_inner(self) -> O {
        self.optimizer
    }
}

impl<O: Optimizer> Optimizer for Scheduler<O> {
    fn step(&mut self, params: &mut dyn ParamTree, grads: &dyn ParamTree) -> Result<()> {
        let lr = self.lr();
        self.optimizer.set_lr(lr);
        self.optimizer.step(params, grads)
    }
    fn lr(&self) -> f64 {
        self.schedule.lr_at(self.base_lr, self.optimizer.steps())
    }
    fn set_lr(&mut self, lr: f64) {
        self.base_lr = lr;
    }
    fn steps(&self) -> u64 {
        self.optimizer.steps()
    }
    fn reset(&mut self) {
        self.optimizer.reset();
    }
}

// ---------------------------------------------------------------------------------------------
// Gradient clipping.

/// Scales `grads` so that their global L2 norm is at most `max_norm`, as
/// `torch.nn.utils.clip_grad_norm_`, and returns the norm before clipping.
///
/// The norm is [`global_norm`] (over float leaves, accumulated in f64). When
/// `max_norm / (norm + 1e-6) < 1`, every float leaf is multiplied by that factor (`f16`/`bf16`
/// leaves in f32, rounded back), so the new norm is `max_norm * norm / (norm + 1e-6)`, just
/// below `max_norm`. A non-finite norm (an `inf` or `NaN` grad) is returned as is and the grads
/// are left untouched — check it, as PyTorch's `error_if_nonfinite` would. A negative or `NaN`
/// `max_norm` is an [`Error::Op`].
pub fn clip_grad_norm<G: ParamTree + ?Sized>(grads: &mut G, max_norm: f64) -> Result<f64> {
    if max_norm.is_nan() || max_norm < 0.0 {
        return Err(Error::op(
            "clip_grad_norm",
            format!("invalid max_norm {max_norm} (must be >= 0)"),
        ));
    }
    let norm = global_norm(grads);
    if !norm.is_finite() {
        return Ok(norm);
    }
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        fn scale<T: Elem>(a: &mut ArrayViewMutD<'_, T>, c: T::Acc)
        where
            T::Acc: Real,
        {
            a.map_inplace(|x| *x = T::from_acc(x.to_acc() * c));
        }
        let (c32, c64) = (coef as f32, coef);
        let buffers: Vec<bool> = {
            let mut b = Vec::new();
            grads.visit(&mut |name, _| b.push(grads.is_buffer(name)));
            b
        };
        let mut i = 0usize;
        grads.visit_mut(&mut |_, v| {
            i += 1;
            if buffers.get(i - 1).copied().unwrap_or(false) {
                return Ok(());
            }
            match v {
                TensorViewMut::F32(mut a) => scale(&mut a, c32),
                TensorViewMut::F64(mut a) => scale(&mut a, c64),
                TensorViewMut::F16(mut a) => scale(&mut a, c32),
                TensorViewMut::BF16(mut a) => scale(&mut a, c32),
                TensorViewMut::I32(_) | TensorViewMut::I64(_) | TensorViewMut::Bool(_) => {}
            }
            Ok(())
        })?;
    }
    Ok(norm)
}

// ---------------------------------------------------------------------------------------------
// The shared machinery: pairing leaves, state, per-element kernels.

/// The compute types of updates: `f32` and `f64`.
trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Send
    + Sync
    + 'static
{
    const ONE: Self;
    /// From an f64 hyperparameter (rounding to nearest).
    fn of(x: f64) -> Self;
    fn sqrt(self) -> Self;
    /// The state vector of this type, if `s` holds one.
    fn slots(s: &mut Slots) -> Option<&mut Vec<Self>>;
    /// The grad vector of this type, if `g` holds one.
    fn grad(g: &Grad) -> Option<&[Self]>;
}

impl Real for f32 {
    const ONE: Self = 1.0;
    #[inline(always)]
    fn of(x: f64) -> Self {
        x as f32
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn slots(s: &mut Slots) -> Option<&mut Vec<Self>> {
        match s {
            Slots::F32(v) => Some(v),
            _ => None,
        }
    }
    fn grad(g: &Grad) -> Option<&[Self]> {
        match *g {
            Grad::F32(ref v) => Some(v),
            // SAFETY: see `Grad::F32Ref` (valid while the step's grads are borrowed).
            Grad::F32Ref(p, n) => Some(unsafe { std::slice::from_raw_parts(p, n) }),
            _ => None,
        }
    }
}

impl Real for f64 {
    const ONE: Self = 1.0;
    #[inline(always)]
    fn of(x: f64) -> Self {
        x
    }
    #[inline(always)]
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn slots(s: &mut Slots) -> Option<&mut Vec<Self>> {
        match s {
            Slots::F64(v) => Some(v),
            _ => None,
        }
    }
    fn grad(g: &Grad) -> Option<&[Self]> {
        match *g {
            Grad::F64(ref v) => Some(v),
            // SAFETY: see `Grad::F32Ref` (valid while the step's grads are borrowed).
            Grad::F64Ref(p, n) => Some(unsafe { std::slice::from_raw_parts(p, n) }),
            _ => None,
        }
    }
}

/// A per-element update rule: the new param value from the old one, its grad, and the
/// element's state slots (as many as the optimizer asked [`State::prepare`] for).
trait Kernel<A> {
    fn apply(&self, p: A, g: A, s: &mut [A]) -> A;
}

/// How a leaf is updated: skipped (integer/bool), in f32 (f32/f16/bf16) or in f64.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Skip,
    F32,
    F64,
}

impl Class {
    fn of(d: DType) -> Class {
        match d {
            DType::F64 => Class::F64,
            DType::F32 | DType::F16 | DType::BF16 => Class::F32,
            DType::I32 | DType::I64 | DType::Bool => Class::Skip,
        }
    }
}

/// One param leaf as the optimizer saw it.
#[derive(Clone, Debug, PartialEq)]
struct LeafInfo {
    name: String,
    dtype: DType,
    shape: Vec<usize>,
    /// a buffer (`ParamTree::is_buffer`): never updated, like an integer leaf
    buffer: bool,
}

impl LeafInfo {
    fn class(&self) -> Class {
        if self.buffer {
            return Class::Skip;
        }
        Class::of(self.dtype)
    }
}

/// The optimizer state of one leaf: `n * slots` values, element-major (an element's slots are
/// adjacent), in the leaf's logical (row-major) element order.
#[derive(Clone, Debug)]
enum Slots {
    None,
    F32(Vec<f32>),
    F64(Vec<f64>),
}

/// A grad leaf copied out of the grad tree, converted to its param's compute type, in logical
/// element order.
#[derive(Clone, Debug)]
enum Grad {
    Skip,
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// A contiguous grad leaf of the param's own accumulator type, read in place (no copy):
    /// valid only inside the `step` call whose `grads` tree it points into.
    F32Ref(*const f32, usize),
    /// As `F32Ref`, for f64.
    F64Ref(*const f64, usize),
}

// SAFETY: the `*Ref` variants only live inside one `step` call, which holds the borrow of the
// grads tree they point into; they are replaced by `Skip` before the state is kept.
unsafe impl Send for Grad {}
unsafe impl Sync for Grad {}

/// What every optimizer keeps: the layout of the tree it was first given, the per-leaf state
/// slots, and the step count.
#[derive(Clone, Debug, Default)]
struct State {
    layout: Option<Vec<LeafInfo>>,
    slots: Vec<Slots>,
    nslots: usize,
    steps: u64,
    /// The last step's gradient copies, reused as buffers by the next step.
    grad_bufs: Vec<Grad>,
}

fn describe(t: &dyn ParamTree) -> Vec<LeafInfo> {
    let mut out = Vec::new();
    t.visit(&mut |name, v| {
        out.push(LeafInfo {
            name: name.to_string(),
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            buffer: t.is_buffer(name),
        })
    });
    out
}

/// `a` widened into `out` (cleared first; its capacity is reused from step to step, so a
/// steady training loop does not allocate here).
fn widen<T: Elem, A: Real>(a: &ArrayViewD<'_, T>, mut out: Vec<A>) -> Vec<A> {
    out.clear();
    // contiguous leaves (the usual case) convert as a flat slice, which vectorizes
    match a.as_slice() {
        Some(xs) => out.extend(xs.iter().map(|x| A::of(x.to_f64()))),
        None => out.extend(a.iter().map(|x| A::of(x.to_f64()))),
    }
    out
}

/// Copies the grad leaves out of `grads` (into the buffers of `reuse`, the previous step's
/// copies), checking them against the params' leaves.
fn collect_grads(
    who: &str,
    params: &[LeafInfo],
    grads: &dyn ParamTree,
    reuse: Vec<Grad>,
) -> Result<Vec<Grad>> {
    let mut old = reuse.into_iter();
    let mut out = Vec::with_capacity(params.len());
    let mut problem: Option<String> = None;
    let mut count = 0usize;
    grads.visit(&mut |name, v| {
        let i = count;
        count += 1;
        if problem.is_some() {
            return;
        }
        let Some(p) = params.get(i) else {
            return;
        };
        if p.name != name {
            problem = Some(format!(
                "leaf {i} of the grads is `{name}` but leaf {i} of the params is `{}` \
                 (the grad tree must mirror the param tree leaf for leaf)",
                p.name
            ));
            return;
        }
        let class = p.class();
        if class == Class::Skip {
            out.push(Grad::Skip);
            return;
        }
        if v.shape() != p.shape.as_slice() {
            problem = Some(format!(
                "grad `{name}` has shape {} but the param has shape {}",
                format_shape(v.shape()),
                format_shape(&p.shape)
            ));
            return;
        }
        let (b32, b64) = match old.next() {
            Some(Grad::F32(v)) => (v, Vec::new()),
            Some(Grad::F64(v)) => (Vec::new(), v),
            _ => (Vec::new(), Vec::new()),
        };
        let g = match (&v, class) {
            // the grad's own type and contiguous: read in place during the step
            (TensorView::F32(a), Class::F32) if a.as_slice().is_some() => {
                Grad::F32Ref(a.as_ptr(), a.len())
            }
            (TensorView::F64(a), Class::F64) if a.as_slice().is_some() => {
                Grad::F64Ref(a.as_ptr(), a.len())
            }
            (TensorView::F32(a), Class::F32) => Grad::F32(widen(a, b32)),
            (TensorView::F64(a), Class::F32) => Grad::F32(widen(a, b32)),
            (TensorView::F16(a), Class::F32) => Grad::F32(widen(a, b32)),
            (TensorView::BF16(a), Class::F32) => Grad::F32(widen(a, b32)),
            (TensorView::F32(a), _) => Grad::F64(widen(a, b64)),
            (TensorView::F64(a), _) => Grad::F64(widen(a, b64)),
            (TensorView::F16(a), _) => Grad::F64(widen(a, b64)),
            (TensorView::BF16(a), _) => Grad::F64(widen(a, b64)),
            (TensorView::I32(_) | TensorView::I64(_) | TensorView::Bool(_), _) => {
                problem = Some(format!(
                    "grad `{name}` is {} but its param is {}; a float grad is needed",
                    v.dtype(),
                    p.dtype
                ));
                return;
            }
        };
        out.push(g);
    });
    if let Some(m) = problem {
        return Err(Error::Params(format!("{who}: {m}")));
    }
    if count != params.len() {
        return Err(Error::Params(format!(
            "{who}: the params have {} leaves but the grads have {count}",
            params.len()
        )));
    }
    Ok(out)
}

impl State {
    /// Validates the trees against each other and against the state, copies the grads out,
    /// and makes sure every float leaf has `nslots` state slots per element. Returns the grads
    /// and whether the slots were (re)created by this call (all zero).
    fn prepare(
        &mut self,
        who: &str,
        params: &dyn ParamTree,
        grads: &dyn ParamTree,
        nslots: usize,
    ) -> Result<(Vec<Grad>, bool)> {
        let info = describe(params);
        if let Some(layout) = &self.layout {
            if let Some(m) = layout_change(layout, &info) {
                return Err(Error::Params(format!(
                    "{who}: the param tree changed since the first step: {m} \
                     (call `reset()` to start over with a new tree)"
                )));
            }
        }
        let g = collect_grads(who, &info, grads, std::mem::take(&mut self.grad_bufs))?;
        let fresh = self.layout.is_none() || self.nslots != nslots;
        if fresh {
            self.slots = info
                .iter()
                .map(|l| {
                    let n = l.shape.iter().product::<usize>() * nslots;
                    match l.class() {
                        Class::Skip => Slots::None,
                        _ if nslots == 0 => Slots::None,
                        Class::F32 => Slots::F32(vec![0.0; n]),
                        Class::F64 => Slots::F64(vec![0.0; n]),
                    }
                })
                .collect();
            self.nslots = nslots;
            self.layout = Some(info);
        }
        Ok((g, fresh))
    }

    /// Runs the kernel over every float leaf and counts the step.
    fn apply<K32: Kernel<f32>, K64: Kernel<f64>>(
        &mut self,
        params: &mut dyn ParamTree,
        grads: Vec<Grad>,
        k32: &K32,
        k64: &K64,
    ) -> Result<()> {
        let n = self.nslots;
        let slots = &mut self.slots;
        let mut i = 0usize;
        params.visit_mut(&mut |name, v| {
            let (Some(g), Some(s)) = (grads.get(i), slots.get_mut(i)) else {
                return Err(inconsistent(name));
            };
            i += 1;
            if matches!(g, Grad::Skip) {
                // integer leaves and buffers: never updated (not even weight decay)
                return Ok(());
            }
            match v {
                TensorViewMut::F32(a) => update(name, a, g, s, n, k32),
                TensorViewMut::F16(a) => update(name, a, g, s, n, k32),
                TensorViewMut::BF16(a) => update(name, a, g, s, n, k32),
                TensorViewMut::F64(a) => update(name, a, g, s, n, k64),
                TensorViewMut::I32(_) | TensorViewMut::I64(_) | TensorViewMut::Bool(_) => Ok(()),
            }
        })?;
        self.steps += 1;
        let mut grads = grads;
        for g in grads.iter_mut() {
            if matches!(g, Grad::F32Ref(..) | Grad::F64Ref(..)) {
                *g = Grad::Skip;
            }
        }
        self.grad_bufs = grads;
        Ok(())
    }
}

/// A tree whose `visit_mut` does not hand out what its `visit` did.
fn inconsistent(name: &str) -> Error {
    Error::Params(format!(
        "leaf `{name}`: the param tree's `visit_mut` disagrees with its `visit`"
    ))
}

/// Why `now` cannot use the state made for `first`, if it cannot.
fn layout_change(first: &[LeafInfo], now: &[LeafInfo]) -> Option<String> {
    if first.len() != now.len() {
        return Some(format!(
            "it had {} leaves and now has {}",
            first.len(),
            now.len()
        ));
    }
    first.iter().zip(now).find_map(|(a, b)| {
        if a.name != b.name {
            Some(format!("leaf `{}` is now named `{}`", a.name, b.name))
        } else if a.shape != b.shape && a.class() != Class::Skip {
            Some(format!(
                "leaf `{}` had shape {} and now has shape {}",
                a.name,
                format_shape(&a.shape),
                format_shape(&b.shape)
            ))
        } else if a.class() != b.class() {
            Some(format!(
                "leaf `{}` was {} and is now {}",
                a.name, a.dtype, b.dtype
            ))
        } else {
            None
        }
    })
}

/// Applies `k` to every element of one param leaf.
fn update<T: Elem, K: Kernel<T::Acc>>(
    name: &str,
    mut p: ArrayViewMutD<'_, T>,
    g: &Grad,
    s: &mut Slots,
    nslots: usize,
    k: &K,
) -> Result<()>
where
    T::Acc: Real,
{
    let Some(g) = <T::Acc as Real>::grad(g) else {
        return Err(inconsistent(name));
    };
    if g.len() != p.len() {
        return Err(inconsistent(name));
    }
    // A grad read in place that is the param's own memory (the same tree passed twice): copy
    // it first, so the update never reads what it is writing.
    let own;
    let g = {
        let (gp, pp) = (g.as_ptr() as usize, p.as_ptr() as usize);
        let (gb, pb) = (std::mem::size_of_val(g), p.len() * std::mem::size_of::<T>());
        if gp < pp + pb && pp < gp + gb {
            own = g.to_vec();
            &own[..]
        } else {
            g
        }
    };
    if nslots == 0 {
        // `iter_mut` walks in logical order, as the grads were copied; a contiguous leaf is
        // walked as a flat slice (same order, much faster than the n-d iterator).
        match p.as_slice_mut() {
            Some(ps) => {
                for (x, &gi) in ps.iter_mut().zip(g) {
                    *x = T::from_acc(k.apply(x.to_acc(), gi, &mut []));
                }
            }
            None => {
                for (x, &gi) in p.iter_mut().zip(g) {
                    *x = T::from_acc(k.apply(x.to_acc(), gi, &mut []));
                }
            }
        }
        return Ok(());
    }
    let Some(s) = <T::Acc as Real>::slots(s) else {
        return Err(inconsistent(name));
    };
    if s.len() != g.len() * nslots {
        return Err(inconsistent(name));
    }
    match p.as_slice_mut() {
        Some(ps) => {
            for ((x, &gi), si) in ps.iter_mut().zip(g).zip(s.chunks_exact_mut(nslots)) {
                *x = T::from_acc(k.apply(x.to_acc(), gi, si));
            }
        }
        None => {
            for ((x, &gi), si) in p.iter_mut().zip(g).zip(s.chunks_exact_mut(nslots)) {
                *x = T::from_acc(k.apply(x.to_acc(), gi, si));
            }
        }
    }
    Ok(())
}
