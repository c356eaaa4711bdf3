//! Run-time instruction-set selection shared by every multiversioned kernel.
//!
//! On x86-64 each kernel is compiled three times — an AVX-512 copy, an AVX2+FMA copy and a
//! baseline ("scalar", i.e. plain x86-64) copy — and picks one per call with [`active`]. On
//! aarch64 the levels are [`Isa::Neon`] and the baseline: the hand-written NEON kernels (the GEMM
//! microkernel and GEMV, the narrow-float conversions, the fused elementwise programs' common
//! `f32` ops and activations in `prog`, the `f32` row kernels in `rows`) run on `Neon`, their
//! portable versions on the baseline (which rustc auto-vectorizes with NEON: Advanced SIMD is
//! part of the aarch64 baseline). The `ew` drivers, whose element function is an opaque
//! closure, have the one baseline copy there. The CPU is probed once
//! ([`detected`], cached in an atomic); tests force a path with
//! [`with_isa`], which is thread-local and never selects an ISA the CPU lacks.

use std::cell::Cell;
use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction-set level a kernel can be compiled for. Ordered: `Scalar < Neon < Avx2 <
/// Avx512`; [`Isa::Neon`] exists on aarch64 only, the AVX levels on x86-64 only (each is simply
/// never [`Isa::supported`] on the other architecture).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Baseline code: no target features beyond the compile target's defaults. Always available.
    Scalar,
    /// aarch64 with `neon` (Advanced SIMD: 128-bit vectors, FMA, f16 conversions).
    Neon,
    /// x86-64 with `avx2,fma,f16c`.
    Avx2,
    /// x86-64 with `avx512f,avx512bw,avx512vl,avx512dq` plus the AVX2 set.
    Avx512,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Neon, Isa::Avx2, Isa::Avx512];

    /// True when this CPU can run code compiled for `self`.
    pub fn supported(self) -> bool {
        let neon = self == Isa::Neon;
        let x86 = !neon && self != Isa::Scalar;
        let arch_ok =
            (!neon || cfg!(target_arch = "aarch64")) && (!x86 || cfg!(target_arch = "x86_64"));
        arch_ok && self <= detected()
    }

    /// The levels this CPU supports, lowest first (always starts with [`Isa::Scalar`]).
    pub fn available() -> impl Iterator<Item = Isa> {
        Isa::ALL.into_iter().filter(|i| i.supported())
    }

    fn to_u8(self) -> u8 {
        match self {
            Isa::Scalar => 1,
            Isa::Avx2 => 2,
            Isa::Avx512 => 3,
            Isa::Neon => 4,
        }
    }

    fn from_u8(v: u8) -> Option<Isa> {
        match v {
            1 => Some(Isa::Scalar),
            2 => Some(Isa::Avx2),
            3 => Some(Isa::Avx512),
            4 => Some(Isa::Neon),
            _ => None,
        }
    }
}

static DETECTED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    static FORCED: Cell<u8> = const { Cell::new(0) };
}

#[cfg(target_arch = "x86_64")]
fn probe() -> Isa {
    if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Isa::Avx512
    } else if is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
    {
        Isa::Avx2
    } else {
        Isa::Scalar
    }
}

#[cfg(target_arch = "aarch64")]
fn probe() -> Isa {
    if std::arch::is_aarch64_feature_detected!("neon") {
        Isa::Neon
    } else {
        Isa::Scalar
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn probe() -> Isa {
    Isa::Scalar
}

/// The best level this CPU supports (probed once, then cached).
#[inline]
pub fn detected() -> Isa {
    match Isa::from_u8(DETECTED.load(Ordering::Relaxed)) {
        Some(i) => i,
        None => {
            let i = probe();
            DETECTED.store(i.to_u8(), Ordering::Relaxed);
            i
        }
    }
}

/// The level kernels called on this thread use now: the one forced by an enclosing [`with_isa`],
/// else [`detected`].
#[inline]
pub fn active() -> Isa {
    match Isa::from_u8(FORCED.with(|f| f.get())) {
        Some(i) => i,
        None => detected(),
    }
}

/// Runs `f` with kernels on this thread forced to `isa`, clamped to what the CPU supports (asking
/// for AVX-512 on an AVX2 machine runs AVX2, on an aarch64 machine NEON; asking for NEON on
/// x86-64 runs the baseline copy), and returns its result. Nests; the previous choice
/// is restored afterwards, also when `f` panics. Meant for tests and benchmarks.
pub fn with_isa<R>(isa: Isa, f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            let v = self.0;
            FORCED.with(|c| c.set(v));
        }
    }
    let eff = Isa::ALL
        .into_iter()
        .rev()
        .find(|&i| i <= isa && i.supported())
        .unwrap_or(Isa::Scalar);
    let _restore = Restore(FORCED.with(|c| c.replace(eff.to_u8())));
    f()
}

/// Forces kernels on this thread to `isa` while the returned guard lives (the scoped form of
/// [`with_isa`], for a model's calls: `cpu: { simd: .. }`). Unlike [`with_isa`] it does not
/// clamp: when `isa` is above what this thread may run — the CPU's best level, or a lower one
/// an enclosing [`with_isa`] or guard set (so a test can stand in for a lesser CPU) — it
/// returns `Err` with that level. Guards nest; dropping one restores the previous choice. Not
/// `Send` (the choice belongs to this thread; the GEMM thread pool runs a call's parts under
/// the calling thread's choice).
pub fn force(isa: Isa) -> Result<IsaGuard, Isa> {
    let ceiling = active();
    if isa > ceiling {
        return Err(ceiling);
    }
    Ok(IsaGuard {
        prev: FORCED.with(|c| c.replace(isa.to_u8())),
        _not_send: std::marker::PhantomData,
    })
}

/// The guard of [`force`]: restores the previous choice when dropped.
#[derive(Debug)]
pub struct IsaGuard {
    prev: u8,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for IsaGuard {
    fn drop(&mut self) {
        let v = self.prev;
        FORCED.with(|c| c.set(v));
    }
}

/// Defines `$vis fn $name<T: $bound>(args)` dispatching to `$imp::<T>(args)` compiled three
/// times: for AVX-512, for AVX2 (both x86-64 only, `#[target_feature]` copies into which `$imp`,
/// an `#[inline(always)]` function, is inlined) and for the baseline, chosen by [`active`] on
/// each call. The kernels of `rows`, `pool`, `conv` and `attention` use it. The form
/// `=> $imp, neon: $neon;` also runs `$neon::<T>(args)` on [`Isa::Neon`] (the row kernels'
/// hand-written NEON forms).
macro_rules! multiversion {
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident<T: $bound:path>($($a:ident : $t:ty),* $(,)?) => $imp:ident;
    ) => {
        $(#[$m])*
        $vis fn $name<T: $bound>($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn avx512<T: $bound>($($a: $t),*) {
                $imp::<T>($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2<T: $bound>($($a: $t),*) {
                $imp::<T>($($a),*)
            }
            match $crate::isa::active() {
                // SAFETY: `active` only returns levels the CPU supports.
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx512 => unsafe { avx512::<T>($($a),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx2 => unsafe { avx2::<T>($($a),*) },
                _ => $imp::<T>($($a),*),
            }
        }
    };
    // The same with a NEON form: `$neon::<T>(args)` runs when the active level is
    // `Isa::Neon` (aarch64 only; it decides itself what to do for each `T`).
    (
        $(#[$m:meta])*
        $vis:vis fn $name:ident<T: $bound:path>($($a:ident : $t:ty),* $(,)?) => $imp:ident, neon: $neon:ident;
    ) => {
        $(#[$m])*
        $vis fn $name<T: $bound>($($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            unsafe fn avx512<T: $bound>($($a: $t),*) {
                $imp::<T>($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            unsafe fn avx2<T: $bound>($($a: $t),*) {
                $imp::<T>($($a),*)
            }
            match $crate::isa::active() {
                // SAFETY: `active` only returns levels the CPU supports.
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx512 => unsafe { avx512::<T>($($a),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::isa::Isa::Avx2 => unsafe { avx2::<T>($($a),*) },
                #[cfg(target_arch = "aarch64")]
                $crate::isa::Isa::Neon => $neon::<T>($($a),*),
                _ => $imp::<T>($($a),*),
            }
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forcing_is_scoped_and_clamped() {
        let d = detected();
        assert_eq!(active(), d);
        with_isa(Isa::Scalar, || {
            assert_eq!(active(), Isa::Scalar);
            with_isa(Isa::Avx512, || assert_eq!(active(), d));
            assert_eq!(active(), Isa::Scalar);
        });
        assert_eq!(active(), d);
        {
            let _g = force(d).unwrap();
            assert_eq!(active(), d);
            {
                // a nested guard may go lower, not higher than the one it is in
                let _h = force(Isa::Scalar).unwrap();
                assert_eq!(active(), Isa::Scalar);
                if d > Isa::Scalar {
                    assert_eq!(force(d).unwrap_err(), Isa::Scalar);
                }
            }
            assert_eq!(active(), d);
        }
        assert_eq!(active(), d);
        // inside `with_isa`, its level is the ceiling (a stand-in for a lesser CPU)
        with_isa(Isa::Scalar, || {
            if d > Isa::Scalar {
                assert_eq!(force(Isa::Avx2).unwrap_err(), Isa::Scalar);
            }
            assert!(force(Isa::Scalar).is_ok());
        });
        // a level above the CPU's is refused (not clamped), naming what the CPU has
        if d < Isa::Avx512 {
            assert_eq!(force(Isa::Avx512).unwrap_err(), d);
            assert_eq!(active(), d);
        }
        assert!(Isa::Scalar.supported());
        assert_eq!(Isa::available().next(), Some(Isa::Scalar));
        // the other architecture's levels are never available, and forcing one clamps
        #[cfg(target_arch = "x86_64")]
        {
            assert!(!Isa::Neon.supported());
            with_isa(Isa::Neon, || assert_eq!(active(), Isa::Scalar));
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert_eq!(d, Isa::Neon);
            assert!(!Isa::Avx2.supported() && !Isa::Avx512.supported());
            with_isa(Isa::Avx2, || assert_eq!(active(), Isa::Neon));
        }
    }
}
