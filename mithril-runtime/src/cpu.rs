//! What generated code of a model compiled with `cpu: { threads, simd, deterministic }` holds
//! around each call: the GEMM thread cap ([`crate::threads::limit_call_threads`]) and the forced
//! instruction set ([`force_simd`]). Both are thread-local guards, set at the start of a call
//! and restored when it returns, so two models with different settings can run at once on
//! different threads (or one inside another) without a global switch.

use crate::{Error, Result};
use mithril_kernels::isa::{self, Isa, IsaGuard};

/// Forces the kernels of this thread (and the GEMM pool threads working for it) to `isa` while
/// the guard lives: `cpu: { simd: avx512 | avx2 | scalar }`. A CPU without `isa` is an `Err`
/// naming `model`, the level asked for and the best one this thread may run (the CPU's, or a
/// lower one set by an enclosing `isa::with_isa`, which tests use to stand in for a lesser CPU).
pub fn force_simd(model: &str, isa: Isa) -> Result<IsaGuard> {
    isa::force(isa).map_err(|best| {
        Error::op(
            model,
            format!(
                "compiled with `cpu: {{ simd: {} }}`, but this CPU (or an enclosing `isa::with_isa`) allows at most {}",
                name(isa),
                name(best)
            ),
        )
    })
}

/// The option's spelling of an ISA level.
pub fn name(isa: Isa) -> &'static str {
    match isa {
        Isa::Scalar => "scalar",
        Isa::Neon => "neon",
        Isa::Avx2 => "avx2",
        Isa::Avx512 => "avx512",
    }
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn unsupported_simd_is_an_error_naming_both_levels() {
        let best = isa::detected();
        {
            let _g = force_simd("M", Isa::Scalar).unwrap();
            assert_eq!(isa::active(), Isa::Scalar);
        }
        assert_eq!(isa::active(), best);
        if best < Isa::Avx512 {
            let e = force_simd("M", Isa::Avx512).unwrap_err().to_string();
            assert!(
                e.contains("M") && e.contains("avx512") && e.contains(name(best)),
                "{e}"
            );
        }
    }
}
