//! The mode of a call: PyTorch's `train()` / `eval()`, chosen per call.
//!
//! A model reads it as `is_training` (a scalar `bool`). `evaluate` runs in [`Mode::Eval`],
//! `evaluate_gradients` in [`Mode::Train`]; a model that reads `is_training` also gets
//! `evaluate_mode` and `evaluate_gradients_mode`, which take the mode explicitly. The mode is an
//! argument, not state: a model stays `Send + Sync` and two threads may run it in different
//! modes at once.
//!
//! A training call also carries the seed of its random ops (`dropout`): [`Mode::TrainSeeded`]
//! gives it (a reproducible call), [`Mode::Train`] draws a fresh one per call ([`fresh_seed`]).

use ndarray::{ArrayView0, ArrayViewD};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Training or evaluation behaviour of a call (what `is_training` reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Training behaviour: `is_training` is true (dropout active, batch statistics, ...); the
    /// random ops of the call get a fresh seed ([`fresh_seed`]): masks differ from call to call.
    Train,
    /// Evaluation behaviour: `is_training` is false.
    Eval,
    /// [`Mode::Train`] with the seed of the call's random ops given: the same seed, inputs and
    /// params give the same dropout masks (a reproducible training call).
    TrainSeeded(u64),
}

static TRUE: bool = true;
static FALSE: bool = false;

/// A seed no earlier call of this process got: a process-wide counter, started at a random
/// point per process (from the OS-seeded `RandomState`), mixed (SplitMix64) so that
/// consecutive seeds share no bit patterns.
pub fn fresh_seed() -> u64 {
    static START: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id() as u64);
        h.finish()
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    splitmix64(start.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Mode {
    /// `true` for [`Mode::Train`] and [`Mode::TrainSeeded`].
    pub fn is_training(self) -> bool {
        matches!(self, Mode::Train | Mode::TrainSeeded(_))
    }

    /// The mode as the scalar `bool` view a plan reads (`is_training`).
    pub fn view(self) -> ArrayViewD<'static, bool> {
        let v: ArrayView0<'static, bool> =
            ndarray::aview0(if self.is_training() { &TRUE } else { &FALSE });
        v.into_dyn()
    }

    /// The seed of this call's random ops: the given one ([`Mode::TrainSeeded`]), a fresh one
    /// ([`Mode::Train`], [`fresh_seed`]; each call of this function draws a new one), 0 in
    /// [`Mode::Eval`] (random ops do no random work then).
    pub fn seed(self) -> u64 {
        match self {
            Mode::TrainSeeded(s) => s,
            Mode::Train => fresh_seed(),
            Mode::Eval => 0,
        }
    }

    /// The call's seed ([`Mode::seed`]) as the `i64` scalar a plan's random ops read (the
    /// bits of the `u64`).
    pub fn seed_array(self) -> ndarray::Array0<i64> {
        ndarray::arr0(self.seed() as i64)
    }
}
