//! Run-time shape contract checks.
//!
//! Every generated `evaluate` starts by checking each input and param against the model's
//! declared shape with [`check_shape`]. Symbolic dims (`B`, `N`, ...) are bound in a [`SymEnv`]
//! by the first terminal that mentions them and must agree everywhere after that. A failure is
//! an [`Error::Shape`] that says exactly which dim disagrees and why.

use crate::error::{Error, Result};

/// One dim of a declared shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DimSpec {
    /// A literal size, e.g. the `784` of `f32[B, 784]`.
    Fixed(usize),
    /// A symbolic dim: the slot index of the symbol in the [`SymEnv`].
    Sym(usize),
    /// Any size (`_`), not bound to anything.
    Any,
}

/// Bindings of the model's symbolic dims (`B`, `N`, ...) for one call.
#[derive(Clone, Debug)]
pub struct SymEnv {
    names: &'static [&'static str],
    /// Per slot: the bound value and the terminal that bound it (inline for the first
    /// [`INLINE_SYMS`] symbols, so that a check allocates nothing).
    inline: [Option<(usize, &'static str)>; INLINE_SYMS],
    spill: Vec<Option<(usize, &'static str)>>,
}

/// Symbols kept without a heap allocation.
const INLINE_SYMS: usize = 16;

impl SymEnv {
    /// An environment with every symbol of `names` (indexed by slot) unbound.
    pub fn new(names: &'static [&'static str]) -> Self {
        SymEnv {
            names,
            inline: [None; INLINE_SYMS],
            spill: vec![None; names.len().saturating_sub(INLINE_SYMS)],
        }
    }

    fn slot(&self, slot: usize) -> Option<&Option<(usize, &'static str)>> {
        if slot >= self.names.len() {
            None
        } else if slot < INLINE_SYMS {
            self.inline.get(slot)
        } else {
            self.spill.get(slot - INLINE_SYMS)
        }
    }

    fn slot_mut(&mut self, slot: usize) -> Option<&mut Option<(usize, &'static str)>> {
        if slot >= self.names.len() {
            None
        } else if slot < INLINE_SYMS {
            self.inline.get_mut(slot)
        } else {
            self.spill.get_mut(slot - INLINE_SYMS)
        }
    }

    /// The symbol names, by slot.
    pub fn names(&self) -> &'static [&'static str] {
        self.names
    }

    /// Name of the symbol in `slot` (`"?"` for a slot out of range).
    pub fn name(&self, slot: usize) -> &'static str {
        self.names.get(slot).copied().unwrap_or("?")
    }

    /// Value of the symbol in `slot`, if bound (`None` also for a slot out of range).
    pub fn get(&self, slot: usize) -> Option<usize> {
        self.slot(slot).and_then(|v| v.as_ref().map(|(n, _)| *n))
    }

    /// The terminal (`input `x``, ...) that bound the symbol in `slot`, if bound.
    pub fn bound_by(&self, slot: usize) -> Option<&str> {
        self.slot(slot).and_then(|v| v.as_ref().map(|(_, t)| *t))
    }

    /// Value of a symbol; [`Error::Op`] naming the symbol if it was never bound (cannot happen
    /// for well-formed generated code, but never panics).
    pub fn value(&self, slot: usize) -> Result<usize> {
        match self.slot(slot) {
            Some(Some((n, _))) => Ok(*n),
            Some(None) => Err(Error::op(
                "shape",
                format!(
                    "symbolic dim `{}` is used before any input or param binds it",
                    self.name(slot)
                ),
            )),
            None => Err(Error::op(
                "shape",
                format!(
                    "symbol slot {slot} is out of range (the model has {} symbols)",
                    self.names.len()
                ),
            )),
        }
    }

    /// Binds the symbol in `slot` to `value` on behalf of `by` (a terminal description), or
    /// checks that it already has that value. On disagreement returns the current binding
    /// `(value, bound_by)` as the error.
    fn bind(
        &mut self,
        slot: usize,
        value: usize,
        by: &'static str,
    ) -> std::result::Result<(), (usize, &'static str)> {
        match self.slot_mut(slot) {
            Some(Some((n, t))) => {
                if *n == value {
                    Ok(())
                } else {
                    Err((*n, *t))
                }
            }
            Some(v @ None) => {
                *v = Some((value, by));
                Ok(())
            }
            // Unreachable for checked slots; callers test the range first.
            None => Ok(()),
        }
    }
}

/// Formats a concrete shape as `[8, 100]`.
pub fn format_shape(shape: &[usize]) -> String {
    let mut s = String::from("[");
    for (i, d) in shape.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&d.to_string());
    }
    s.push(']');
    s
}

/// Checks `given` against `spec`, binding unbound symbols in `env`.
///
/// `expected` is the pretty declared shape, e.g. `"f32[B, 784]"`; `terminal` names what is being
/// checked, e.g. ``"input `x`"`` or ``"param `fc1.weight`"``. If `leading_ellipsis`, `spec`
/// describes only the trailing dims and any number (>= 0) of leading dims is accepted; dim
/// indices in messages always count from the start of `given`.
///
/// Returns [`Error::Shape`] whose `detail` says exactly what disagrees: `rank 3 != 2`,
/// `dim 1 is 100, expected 784`, or ``dim 0 is 5, but B = 8 from input `x` ``.
pub fn check_shape(
    env: &mut SymEnv,
    model: &'static str,
    terminal: &'static str,
    expected: &'static str,
    given: &[usize],
    spec: &[DimSpec],
    leading_ellipsis: bool,
) -> Result<()> {
    let fail = |detail: String| Error::Shape {
        model,
        terminal,
        expected,
        given: format_shape(given),
        detail,
    };
    if leading_ellipsis {
        if given.len() < spec.len() {
            return Err(fail(format!(
                "rank {} < {} (at least {} dims expected)",
                given.len(),
                spec.len(),
                spec.len()
            )));
        }
    } else if given.len() != spec.len() {
        return Err(fail(format!("rank {} != {}", given.len(), spec.len())));
    }
    let offset = given.len() - spec.len();
    for (j, ds) in spec.iter().enumerate() {
        let i = offset + j;
        let g = given[i];
        match *ds {
            DimSpec::Any => {}
            DimSpec::Fixed(n) => {
                if g != n {
                    return Err(fail(format!("dim {i} is {g}, expected {n}")));
                }
            }
            DimSpec::Sym(slot) => {
                if slot >= env.names.len() {
                    return Err(Error::op(
                        "shape",
                        format!(
                            "checking {terminal} of model `{model}`: symbol slot {slot} is out of range (the model has {} symbols)",
                            env.names.len()
                        ),
                    ));
                }
                if let Err((v, by)) = env.bind(slot, g, terminal) {
                    let name = env.name(slot);
                    return Err(fail(format!("dim {i} is {g}, but {name} = {v} from {by}")));
                }
            }
        }
    }
    Ok(())
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use DimSpec::{Any, Fixed, Sym};

    const NAMES: &[&str] = &["B", "N"];

    fn detail(e: Error) -> String {
        match e {
            Error::Shape { detail, .. } => detail,
            other => panic!("expected Error::Shape, got {other:?}"),
        }
    }

    #[cfg_attr(test, test)]
    pub(crate) fn ok_binds_symbols() {
        let mut env = SymEnv::new(NAMES);
        assert_eq!(env.get(0), None);
        check_shape(
            &mut env,
            "M",
            "input `x`",
            "f32[B, 784]",
            &[8, 784],
            &[Sym(0), Fixed(784)],
            false,
        )
        .unwrap();
        assert_eq!(env.get(0), Some(8));
        assert_eq!(env.value(0).unwrap(), 8);
        assert_eq!(env.bound_by(0), Some("input `x`"));
        // Same value again is fine.
        check_shape(&mut env, "M", "input `y`", "f32[B]", &[8], &[Sym(0)], false).unwrap();
        assert_eq!(env.bound_by(0), Some("input `x`"));
    }

    #[cfg_attr(test, test)]
    pub(crate) fn rank_mismatch() {
        let mut env = SymEnv::new(NAMES);
        let e = check_shape(
            &mut env,
            "M",
            "input `x`",
            "f32[B, 784]",
            &[8, 784, 1],
            &[Sym(0), Fixed(784)],
            false,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert_eq!(detail(e), "rank 3 != 2");
        assert!(msg.contains("model `M`"), "{msg}");
        assert!(msg.contains("input `x`"), "{msg}");
        assert!(msg.contains("f32[B, 784]"), "{msg}");
        assert!(msg.contains("[8, 784, 1]"), "{msg}");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn fixed_mismatch() {
        let mut env = SymEnv::new(NAMES);
        let e = check_shape(
            &mut env,
            "M",
            "input `x`",
            "f32[B, 784]",
            &[8, 100],
            &[Sym(0), Fixed(784)],
            false,
        )
        .unwrap_err();
        match e {
            Error::Shape {
                model,
                terminal,
                expected,
                given,
                detail,
            } => {
                assert_eq!(model, "M");
                assert_eq!(terminal, "input `x`");
                assert_eq!(expected, "f32[B, 784]");
                assert_eq!(given, "[8, 100]");
                assert_eq!(detail, "dim 1 is 100, expected 784");
            }
            other => panic!("{other:?}"),
        }
    }

    #[cfg_attr(test, test)]
    pub(crate) fn symbol_conflict_names_binder() {
        let mut env = SymEnv::new(NAMES);
        check_shape(
            &mut env,
            "M",
            "input `x`",
            "f32[B, 784]",
            &[8, 784],
            &[Sym(0), Fixed(784)],
            false,
        )
        .unwrap();
        let e =
            check_shape(&mut env, "M", "input `y`", "i64[B]", &[5], &[Sym(0)], false).unwrap_err();
        assert_eq!(detail(e), "dim 0 is 5, but B = 8 from input `x`");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn symbol_conflict_within_one_shape() {
        let mut env = SymEnv::new(NAMES);
        let e = check_shape(
            &mut env,
            "M",
            "param `w`",
            "f32[N, N]",
            &[3, 4],
            &[Sym(1), Sym(1)],
            false,
        )
        .unwrap_err();
        assert_eq!(detail(e), "dim 1 is 4, but N = 3 from param `w`");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn any_accepts_anything() {
        let mut env = SymEnv::new(NAMES);
        check_shape(
            &mut env,
            "M",
            "input `x`",
            "f32[_, 3]",
            &[17, 3],
            &[Any, Fixed(3)],
            false,
        )
        .unwrap();
        check_shape(
            &mut env,
            "M",
            "input `x`",
            "f32[_, 3]",
            &[0, 3],
            &[Any, Fixed(3)],
            false,
        )
        .unwrap();
        assert_eq!(env.get(0), None);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn scalar_shape() {
        let mut env = SymEnv::new(NAMES);
        check_shape(&mut env, "M", "input `s`", "f32[]", &[], &[], false).unwrap();
        let e = check_shape(&mut env, "M", "input `s`", "f32[]", &[1], &[], false).unwrap_err();
        assert_eq!(detail(e), "rank 1 != 0");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn leading_ellipsis() {
        let mut env = SymEnv::new(NAMES);
        let spec = [Sym(1), Fixed(4)];
        // Zero leading dims.
        check_shape(
            &mut env,
            "M",
            "input `x`",
            "f32[..., N, 4]",
            &[2, 4],
            &spec,
            true,
        )
        .unwrap();
        // Several leading dims.
        check_shape(
            &mut env,
            "M",
            "input `y`",
            "f32[..., N, 4]",
            &[7, 9, 2, 4],
            &spec,
            true,
        )
        .unwrap();
        // Too few dims.
        let e = check_shape(
            &mut env,
            "M",
            "input `z`",
            "f32[..., N, 4]",
            &[4],
            &spec,
            true,
        )
        .unwrap_err();
        assert_eq!(detail(e), "rank 1 < 2 (at least 2 dims expected)");
        // Dim indices count from the start of the given shape.
        let e = check_shape(
            &mut env,
            "M",
            "input `z`",
            "f32[..., N, 4]",
            &[7, 9, 2, 5],
            &spec,
            true,
        )
        .unwrap_err();
        assert_eq!(detail(e), "dim 3 is 5, expected 4");
        let e = check_shape(
            &mut env,
            "M",
            "input `z`",
            "f32[..., N, 4]",
            &[7, 3, 4],
            &spec,
            true,
        )
        .unwrap_err();
        assert_eq!(detail(e), "dim 1 is 3, but N = 2 from input `x`");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn unbound_symbol_value_is_error() {
        let env = SymEnv::new(NAMES);
        match env.value(1).unwrap_err() {
            Error::Op { msg, .. } => assert!(msg.contains("`N`"), "{msg}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(env.value(7), Err(Error::Op { .. })));
        assert_eq!(env.get(7), None);
        assert_eq!(env.name(7), "?");
        assert_eq!(env.names(), NAMES);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn bad_slot_in_spec_is_error_not_panic() {
        let mut env = SymEnv::new(NAMES);
        let e =
            check_shape(&mut env, "M", "input `x`", "f32[?]", &[3], &[Sym(9)], false).unwrap_err();
        assert!(matches!(e, Error::Op { .. }), "{e:?}");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn format_shapes() {
        assert_eq!(format_shape(&[]), "[]");
        assert_eq!(format_shape(&[8]), "[8]");
        assert_eq!(format_shape(&[8, 100]), "[8, 100]");
    }
}
