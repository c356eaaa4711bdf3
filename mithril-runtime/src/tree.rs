//! The generated param and gradient structs' plumbing: one precompiled home for what every
//! struct needs, so the macro emits one short line per field.
//!
//! Each struct the macro generates (`MParams`, `MGrads` and one struct per distinct submodel
//! instance layout) gets hidden methods written with these helpers (and `__views`, which
//! pushes the plan's views into [`crate::plan::Views`]):
//! - `__visit` / `__visit_mut`: every leaf with its dotted name ([`Path`] builds the names on
//!   the stack) — what [`ParamTree`](crate::ParamTree) and the plan's input views use;
//! - `__build`: the struct filled leaf by leaf from a [`Build`] source: fresh params from the
//!   model's init table (`randomize_params`) or gradients from a plan run's outputs.
//!
//! Identical submodel instances (a `for` loop of `Linear(64)`) share one struct type (the
//! per-instance names stay as type aliases), so a 100-layer model emits the struct and its
//! methods once.

use crate::error::{Error, Result};
use crate::init::{self, Spec};
use crate::plan::{AnyArray, PlanElem};
use crate::{TensorView, TensorViewMut};
use ndarray::{Array, ArrayView, ArrayViewMut, Dimension};
use smallvec::SmallVec;

/// A dotted leaf name under construction (`block.fc.weight`), kept on the stack.
#[derive(Default)]
pub struct Path {
    buf: SmallVec<[u8; 128]>,
    /// names not wanted (the plan's views): every leaf is named `""`
    silent: bool,
}

impl Path {
    /// The empty path (the root of a tree).
    pub fn new() -> Self {
        Self::default()
    }

    /// A path that builds no names, for visits that only want the views.
    pub fn silent() -> Self {
        Path {
            buf: SmallVec::new(),
            silent: true,
        }
    }

    /// Appends `key` (after a `.` unless at the root); returns what [`Path::leave`] restores.
    pub fn enter(&mut self, key: &str) -> usize {
        let n = self.buf.len();
        if self.silent {
            return n;
        }
        if n > 0 {
            self.buf.push(b'.');
        }
        self.buf.extend_from_slice(key.as_bytes());
        n
    }

    /// Back to the length `n` that [`Path::enter`] returned.
    pub fn leave(&mut self, n: usize) {
        self.buf.truncate(n);
    }

    /// The dotted name so far.
    pub fn as_str(&self) -> &str {
        // only whole `&str` keys and `.` are ever appended
        std::str::from_utf8(&self.buf).unwrap_or("")
    }

    /// Calls `f` with the leaf `key` of this path and its view.
    pub fn leaf<'a, T: PlanElem, D: Dimension>(
        &mut self,
        key: &str,
        v: ArrayView<'a, T, D>,
        f: &mut dyn FnMut(&str, TensorView<'a>),
    ) {
        let n = self.enter(key);
        f(self.as_str(), T::any(v.into_dyn()));
        self.leave(n);
    }

    /// Calls `f` with the leaf `key` of this path and its writable view.
    pub fn leaf_mut<T: PlanElem, D: Dimension>(
        &mut self,
        key: &str,
        v: ArrayViewMut<'_, T, D>,
        f: &mut dyn FnMut(&str, TensorViewMut<'_>) -> Result<()>,
    ) -> Result<()> {
        let n = self.enter(key);
        let r = f(self.as_str(), T::any_mut(v.into_dyn()));
        self.leave(n);
        r
    }
}

/// Where a generated struct's `__build` takes its leaves from, in declaration order.
pub enum Build<'b> {
    /// Fresh params: one row of the model's init table per leaf (see [`Build::init`]).
    Init {
        /// the rows not yet used
        rows: std::str::Lines<'static>,
        /// the seed of `randomize_params`
        seed: u64,
    },
    /// Gradients: the outputs of a plan run, from index `next` on.
    Outs {
        /// the run's outputs
        outs: &'b mut [Option<AnyArray>],
        /// the next output to take
        next: usize,
    },
}

impl<'b> Build<'b> {
    /// Fresh params from `table` (one line per leaf: `dotted.name dims spec`, dims as
    /// `64,64` or `-` for a scalar, spec one of `z`, `o`, `f x`, `n mean std`,
    /// `u lo hi`, `k fan_in`), deterministic per `seed` and name as [`init::param`].
    pub fn init(table: &'static str, seed: u64) -> Self {
        Build::Init {
            rows: table.lines(),
            seed,
        }
    }

    /// Gradients from a plan run's `outs`, starting at output `first`.
    pub fn outs(outs: &'b mut [Option<AnyArray>], first: usize) -> Self {
        Build::Outs { outs, next: first }
    }

    /// The next leaf.
    pub fn leaf<T: PlanElem, D: Dimension>(&mut self) -> Result<Array<T, D>> {
        match self {
            Build::Init { rows, seed } => {
                let row = rows.next().ok_or_else(|| {
                    Error::op("randomize_params", "internal: init table too short")
                })?;
                let (name, shape, spec) = parse_row(row).ok_or_else(|| {
                    Error::op("randomize_params", format!("internal: init row `{row}`"))
                })?;
                Ok(init::param(*seed, name, &shape, spec))
            }
            Build::Outs { outs, next } => {
                let k = *next;
                *next += 1;
                crate::plan::take(outs, k, "gradient")
            }
        }
    }
}

/// `randomize_params`' result: a generated init table is well formed by construction, so an
/// error here is a compiler bug, reported as such.
pub fn built<P>(r: Result<P>) -> P {
    match r {
        Ok(p) => p,
        Err(e) => panic!("mithril: internal error in a generated init table: {e}"),
    }
}

fn parse_row(row: &str) -> Option<(&str, SmallVec<[usize; 6]>, Spec)> {
    let w: SmallVec<[&str; 6]> = row.split(' ').collect();
    let (name, dims, kind) = (*w.first()?, *w.get(1)?, *w.get(2)?);
    let mut shape = SmallVec::new();
    if dims != "-" {
        for d in dims.split(',') {
            shape.push(d.parse().ok()?);
        }
    }
    let num = |i: usize| -> Option<f64> { w.get(i)?.parse().ok() };
    let spec = match (kind, w.len()) {
        ("z", 3) => Spec::Zeros,
        ("o", 3) => Spec::Ones,
        ("f", 4) => Spec::Full(num(3)?),
        ("n", 5) => Spec::Normal(num(3)?, num(4)?),
        ("u", 5) => Spec::Uniform(num(3)?, num(4)?),
        ("k", 4) => Spec::FanIn(w[3].parse().ok()?),
        _ => return None,
    };
    Some((name, shape, spec))
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn path_builds_dotted_names_and_restores() {
        let mut p = Path::new();
        let a = p.enter("block");
        let b = p.enter("fc");
        assert_eq!(p.as_str(), "block.fc");
        p.leave(b);
        assert_eq!(p.as_str(), "block");
        p.leave(a);
        assert_eq!(p.as_str(), "");
        let mut q = Path::silent();
        q.enter("block");
        assert_eq!(q.as_str(), "");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn init_rows_give_the_same_arrays_as_init_param() {
        let table = "fc.weight 3,4 k 4\nfc.bias 3 n 0.5 0.02\ns - f 1.5\nz 2 z\nu 2,2 u -0.1 0.25";
        let mut b = Build::init(table, 7);
        let w: ndarray::Array2<f32> = b.leaf().unwrap();
        let want: ndarray::Array2<f32> = init::param(7, "fc.weight", &[3, 4], Spec::FanIn(4));
        assert_eq!(w, want);
        let bias: ndarray::Array1<f64> = b.leaf().unwrap();
        let want: ndarray::Array1<f64> = init::param(7, "fc.bias", &[3], Spec::Normal(0.5, 0.02));
        assert_eq!(bias, want);
        let s: ndarray::Array0<f32> = b.leaf().unwrap();
        assert_eq!(s.into_scalar(), 1.5);
        let z: ndarray::Array1<f32> = b.leaf().unwrap();
        assert_eq!(z.to_vec(), vec![0.0, 0.0]);
        let u: ndarray::Array2<f32> = b.leaf().unwrap();
        let want: ndarray::Array2<f32> = init::param(7, "u", &[2, 2], Spec::Uniform(-0.1, 0.25));
        assert_eq!(u, want);
        assert!(b.leaf::<f32, ndarray::Ix1>().is_err());
    }

    #[cfg_attr(test, test)]
    pub(crate) fn malformed_rows_are_errors() {
        for t in ["x", "x 2", "x 2 q", "x a z", "x 2 n 1"] {
            let mut b = Build::init(t, 0);
            assert!(b.leaf::<f32, ndarray::Ix1>().is_err(), "{t}");
        }
    }
}
