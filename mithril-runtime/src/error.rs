//! The one error type of the runtime. Every user-facing failure is a value of [`Error`]; no
//! public function panics on user input.

use std::fmt;

/// Result alias used throughout mithril.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong at run time.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An input or param does not satisfy the model's shape contract.
    Shape {
        /// The model (physical model name).
        model: &'static str,
        /// The terminal: `input x`, `param fc1.weight`, ...
        terminal: &'static str,
        /// The expected symbolic shape, e.g. `f32[B, 784]`.
        expected: &'static str,
        /// The shape given, e.g. `[8, 100]`.
        given: String,
        /// What exactly disagrees (dim index, symbol binding).
        detail: String,
    },
    /// An operation failed on run-time values (dynamic dims that do not broadcast,
    /// an index out of range, a reshape that does not fit, ...).
    Op {
        /// The operation (`add`, `matmul`, `gather`, ...).
        op: String,
        /// What went wrong, with the shapes involved.
        msg: String,
    },
    /// A model's planned memory exceeds its `max_memory_gb` compile option.
    Memory {
        /// The physical model.
        model: String,
        /// Bytes the plan needs for intermediate buffers: the planned peak, or, when the call
        /// was refused before its buffers were allocated, the buffers live at one step (a
        /// lower bound of the peak).
        needed: u64,
        /// The limit, in bytes.
        limit: u64,
    },
    /// A buffer for a run-time shape cannot be allocated: its size overflows, exceeds
    /// [`crate::alloc::max_alloc_bytes`] (by default the machine's memory), or the allocator
    /// refused it. Nothing was allocated for it.
    Alloc {
        /// The operation that needed the buffer (`matmul`, `gather`, ...), with the model and
        /// value when it comes from a generated model function.
        op: String,
        /// The bytes asked for (saturating at `u128::MAX`).
        bytes: u128,
        /// Why it was refused.
        detail: String,
    },
    /// Loading or saving params: missing tensor, wrong dtype or shape, bad file.
    Params(String),
    /// A device (CUDA) is not available or failed.
    Device(String),
    /// An I/O error while reading or writing a file.
    Io(std::io::Error),
}

impl Error {
    /// Shorthand for [`Error::Op`].
    pub fn op(op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Op {
            op: op.into(),
            msg: msg.into(),
        }
    }
}

impl Error {
    /// Adds where an op ran to an [`Error::Op`] or [`Error::Alloc`] (other errors are returned
    /// unchanged): generated model functions call it on every op's error with the model name
    /// and the value being computed, e.g. `` `gather` of input `table` by input `ids` ``.
    pub fn at(self, model: &str, what: &str) -> Self {
        match self {
            Error::Op { op, msg } => Error::Op {
                op,
                msg: format!("{msg} (in model `{model}`, computing {what})"),
            },
            Error::Alloc { op, bytes, detail } => Error::Alloc {
                op,
                bytes,
                detail: format!("{detail} (in model `{model}`, computing {what})"),
            },
            e => e,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { model, terminal, expected, given, detail } => write!(
                f,
                "model `{model}`: {terminal} expects shape {expected}, but was given {given} ({detail})"
            ),
            Error::Op { op, msg } => write!(f, "`{op}` failed: {msg}"),
            Error::Memory { model, needed, limit } => write!(
                f,
                "model `{model}`: the planned memory of at least {needed} bytes ({:.3} GB) exceeds max_memory_gb ({limit} bytes)",
                *needed as f64 / (1u64 << 30) as f64
            ),
            Error::Alloc { op, bytes, detail } => write!(
                f,
                "`{op}` failed: cannot allocate {bytes} bytes ({:.1} GiB): {detail}",
                *bytes as f64 / (1u64 << 30) as f64
            ),
            Error::Params(m) => write!(f, "params: {m}"),
            Error::Device(m) => write!(f, "device: {m}"),
            Error::Io(e) => write!(f, "i/o: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod size_tests {
    /// `mithril::Result` is what user functions return: an `Error` of 128 bytes or more makes
    /// clippy's `result_large_err` fire in every such function of a user's crate.
    #[cfg_attr(test, test)]
    pub(crate) fn error_stays_small() {
        assert!(std::mem::size_of::<super::Error>() < 128);
    }
}
