//! The mode of a call: PyTorch's `train()` / `eval()`, chosen per call.
//!
//! A model reads it as `is_training` (a scalar `bool`). `evaluate` runs in [`Mode::Eval`],
//! `evaluate_gradients` in [`Mode::Train`]; a model that reads `is_training` also gets
//! `evaluate_mode` and `evaluate_gradients_mode`, which take the mode explicitly. The mode is an
//! argument, not state: a model stays `Send + Sync` and two threads may run it in different
//! modes at once.

use ndarray::{ArrayView0, ArrayViewD};

/// Training or evaluation behaviour of a call (what `is_training` reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Training behaviour: `is_training` is true (dropout active, batch statistics, ...).
    Train,
    /// Evaluation behaviour: `is_training` is false.
    Eval,
}

static TRUE: bool = true;
static FALSE: bool = false;

impl Mode {
    /// `true` for [`Mode::Train`].
    pub fn is_training(self) -> bool {
        self == Mode::Train
    }

    /// The mode as the scalar `bool` view a plan reads (`is_training`).
    pub fn view(self) -> ArrayViewD<'static, bool> {
        let v: ArrayView0<'static, bool> =
            ndarray::aview0(if self.is_training() { &TRUE } else { &FALSE });
        v.into_dyn()
    }
}
