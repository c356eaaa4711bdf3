//! General matrix multiply: `C = epilogue(alpha * A·B + (accumulate ? C : 0))`.
//!
//! A BLIS-style packed, cache-blocked GEMM with register-tiled microkernels:
//!
//! | element | AVX-512 | AVX2 + FMA | scalar |
//! | --- | --- | --- | --- |
//! | `f32` | 12×32 zmm FMA | 6×16 ymm FMA | 4×8 |
//! | `f64` | 12×16 zmm FMA | 6×8 ymm FMA | 4×8 |
//! | `bf16` | 12×32 `vdpbf16ps` on k-pairs (AVX512_BF16), else f32 packs | f32 packs | f32 packs |
//! | `f16` | f32 packs (`vcvtph2ps`), f32 kernel | f32 packs (F16C) | f32 packs |
//!
//! On aarch64 ([`Isa::Neon`]): `f32` an 8×12 NEON `fmla`-by-lane kernel, `f16`/`bf16` f32 packs
//! (`fcvtl` / widening shifts) and the same kernel, `f64` the portable 4×8 kernel; GEMV with
//! fused multiply-adds; no small-matrix path (small products take the packed one).
//!
//! `f16`/`bf16` are stored narrow and accumulate in `f32` (partial sums over K blocks stay in
//! `f32`, in a scratch buffer); `f32`/`f64` accumulate in their own type.
//!
//! Edge tiles (the last rows or columns of C) run a register tile of their own size (AVX-512
//! `f32`/`bf16`: 2..12 rows × 16 or 32 columns; AVX2 `f32`: 2..6 × 8 or 16), so an `n = 10`
//! output layer computes 16 columns, not 32. Operands whose k is contiguous per lane (row-major
//! A, a transposed B such as `Linear`'s `Wᵀ`) are packed with in-register 4×16 transposes, for
//! `f32` lanes and `bf16` k-pairs alike.
//!
//! Paths, chosen per call: GEMV (`m <= 4` or `n == 1`: no packing, streams the matrix once;
//! both the "dot" layout — batch-1 `x · Wᵀ` with `W` row-major — and the "axpy" layout are
//! vectorized; the `f32` batch-1 dot case has a hand-written AVX-512 kernel that runs at about
//! 90% of the bandwidth of simply reading the weights; the `bf16` batch-1 dot case has one too,
//! `vdpbf16ps` on 8 rows at a time, and every ISA's `bf16` batch-1 dot GEMV — that one, AVX2 and
//! NEON by widening with shifts, the scalar loop — sums in one order, so they agree bitwise on
//! normal values), a small-matrix path (`f32`, B rows contiguous, small volume: the microkernel
//! reads A and B in place), and the packed path — on AVX-512, for `f32` with a row-major A of
//! at most 384 rows, in the form of `rows.rs` (A not packed: read in place, or copied without a
//! transpose where its rows would crowd one L1 set; full tiles stored from the registers; the
//! epilogue per finished 12 × 256 block; bitwise the packed path's results). The ISA is
//! detected once ([`detected_isa`]) and
//! can be forced per call ([`gemm_with`]) for tests and benchmarks.
//!
//! Blocking (AVX-512 `f32`): MC = 36, KC = 1024 (the whole K up to 1024: one pass over C),
//! NC = 2048, measured best on this machine (about 91% of the single-core FMA peak at n = 1024
//! and 2048, in thread CPU time). `bf16` with `vdpbf16ps`: KC = 2048 k (1024 pairs).
//!
//! Threads: large problems are split over [`num_threads`] threads of a small persistent pool of
//! our own (no allocation per call); below a size threshold everything runs on the calling
//! thread. [`limit_call_threads`] caps the count for the calls of one thread (what
//! `optimize_for: throughput` models do around each call). Packing buffers are thread-local,
//! allocated once and grown.
//!
//! Batched GEMM: the caller loops over the batch and calls [`gemm`] per matrix (each call is
//! allocation-free in steady state; large matrices are threaded inside each call).

mod buf;
mod driver;
mod gemv;
#[cfg(target_arch = "aarch64")]
mod neon;
mod pool;
#[cfg(target_arch = "x86_64")]
pub(crate) mod rows;
mod scalar;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
pub(crate) mod x86;

use half::{bf16, f16};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Instruction set a kernel path is compiled for. Ordered: a later variant needs every feature
/// of the earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// Portable code (any CPU, any architecture).
    Scalar,
    /// aarch64 NEON (Advanced SIMD). Never chosen on x86-64 (forcing it there runs
    /// [`Isa::Scalar`]); the x86 variants are never chosen on aarch64.
    Neon,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/VL/BW/DQ (+ FMA, F16C).
    Avx512,
    /// [`Isa::Avx512`] plus AVX512_BF16 (`vdpbf16ps` for `bf16` GEMM).
    Avx512Bf16,
}

impl Isa {
    /// Every variant, scalar first.
    pub const ALL: [Isa; 5] = [
        Isa::Scalar,
        Isa::Neon,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Bf16,
    ];

    /// True when this CPU can run `self` (the architecture matches and [`detected_isa`] is at
    /// least `self`).
    pub fn supported(self) -> bool {
        let neon = self == Isa::Neon;
        let x86 = !neon && self != Isa::Scalar;
        let arch_ok =
            (!neon || cfg!(target_arch = "aarch64")) && (!x86 || cfg!(target_arch = "x86_64"));
        arch_ok && self <= detected_isa()
    }

    /// The best supported ISA at most `self` (what forcing `self` runs).
    fn clamp(self) -> Isa {
        Isa::ALL
            .into_iter()
            .rev()
            .find(|&i| i <= self && i.supported())
            .unwrap_or(Isa::Scalar)
    }
}

/// The best ISA this CPU supports (detected once, then cached).
pub fn detected_isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(detect)
}

fn detect() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        let avx2 = has!("avx2") && has!("fma") && has!("f16c");
        let avx512 =
            avx2 && has!("avx512f") && has!("avx512vl") && has!("avx512bw") && has!("avx512dq");
        if avx512 && has!("avx512bf16") {
            return Isa::Avx512Bf16;
        }
        if avx512 {
            return Isa::Avx512;
        }
        if avx2 {
            return Isa::Avx2;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("neon") {
        return Isa::Neon;
    }
    Isa::Scalar
}

/// Which algorithm a call uses; [`Path::Auto`] picks by shape. Forcing is for tests and
/// benchmarks: every path is correct for every shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Path {
    /// Pick by shape (GEMV for `m <= 4` or `n == 1`, small path for small `f32`, else packed).
    #[default]
    Auto,
    /// Packed, cache-blocked GEMM.
    Packed,
    /// Matrix-vector kernels (one output row — or column when `n == 1` — at a time in blocks).
    Gemv,
    /// No packing: the microkernel reads A and B in place (`f32` with `csb == 1`; otherwise
    /// falls back to [`Path::Packed`]).
    Small,
}

/// Per-call overrides of the automatic choices ([`gemm_with`]). Without `isa`, the ISA is
/// [`crate::isa::active`] (so [`crate::isa::with_isa`] forces GEMM too), plus AVX512_BF16 when
/// the CPU has it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GemmConfig {
    /// Force an ISA (clamped to what the CPU supports); `None`: [`detected_isa`].
    pub isa: Option<Isa>,
    /// Force a thread count (1 = calling thread only; split only above the size threshold
    /// unless `force_split`); `None`: [`num_threads_for_call`].
    pub threads: Option<usize>,
    /// Split over `threads` even below the size threshold (tests).
    pub force_split: bool,
    /// Force an algorithm.
    pub path: Path,
}

static NUM_THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets the number of threads large GEMMs use (`0` restores the default: the environment
/// variable `MITHRIL_THREADS`, else the available parallelism; see [`num_threads`]).
pub fn set_num_threads(n: usize) {
    NUM_THREADS.store(n, Ordering::Relaxed);
}

/// The number of threads large GEMMs use: the value of [`set_num_threads`]; by default the
/// environment variable `MITHRIL_THREADS` (a positive integer, read once, at the first GEMM
/// that asks), else `std::thread::available_parallelism`. A `MITHRIL_THREADS` that is not a
/// positive integer is ignored.
pub fn num_threads() -> usize {
    match NUM_THREADS.load(Ordering::Relaxed) {
        0 => {
            static DEFAULT: OnceLock<usize> = OnceLock::new();
            *DEFAULT.get_or_init(|| {
                default_threads(
                    std::env::var("MITHRIL_THREADS").ok().as_deref(),
                    std::thread::available_parallelism().map_or(1, |n| n.get()),
                )
            })
        }
        n => n,
    }
}

/// The default thread count: `env` (the value of `MITHRIL_THREADS`) when it is a positive
/// integer, else `available`.
fn default_threads(env: Option<&str>, available: usize) -> usize {
    match env.map(|s| s.trim().parse::<usize>()) {
        Some(Ok(n)) if n > 0 => n,
        _ => available,
    }
}

thread_local! {
    /// The calling thread's cap on GEMM threads (0: none), set by [`limit_call_threads`].
    static CALL_LIMIT: Cell<usize> = const { Cell::new(0) };
    /// The thread budget the calling thread's last GEMM was given (0: none yet).
    static LAST_THREADS: Cell<usize> = const { Cell::new(0) };
    /// The instruction set of the calling thread's last GEMM (None: none yet).
    static LAST_ISA: Cell<Option<Isa>> = const { Cell::new(None) };
    /// How many of the calling thread's GEMMs read a prepacked B.
    static PREPACKED_CALLS: Cell<u64> = const { Cell::new(0) };
}

/// How many GEMM calls of this thread so far read their B from a [`PackedB`]. For tests and
/// diagnostics, like [`last_call_isa`]: the difference over a call shows how many of its
/// products used a prepacked weight.
pub fn prepacked_calls() -> u64 {
    PREPACKED_CALLS.with(Cell::get)
}

/// The instruction set this thread's last GEMM call ran (`None` before the first). For tests and
/// diagnostics, like [`last_call_threads`]: it shows what a per-call setting such as
/// `cpu: { simd: scalar }` reached the kernel with.
pub fn last_call_isa() -> Option<Isa> {
    LAST_ISA.with(Cell::get)
}

/// The number of threads a GEMM called now, on this thread, may use: [`num_threads`], capped
/// by the innermost live [`limit_call_threads`] guard of this thread.
pub fn num_threads_for_call() -> usize {
    let all = num_threads();
    match CALL_LIMIT.with(Cell::get) {
        0 => all,
        n => n.min(all),
    }
}

/// The thread budget of this thread's last GEMM call (after [`GemmConfig::threads`] and
/// [`limit_call_threads`]; `0` before the first). For tests and diagnostics: it shows what a
/// per-call setting such as `optimize_for: throughput` reached the kernel with.
pub fn last_call_threads() -> usize {
    LAST_THREADS.with(Cell::get)
}

/// Caps the GEMM threads of calls made on this thread while the returned guard lives (`n >= 1`;
/// `0` is treated as 1). Guards nest; dropping one restores the previous cap. Allocation-free:
/// a thread-local integer. Generated code of an `optimize_for: throughput` model holds
/// `limit_call_threads(1)` for the duration of each call, so concurrent calls on many threads
/// each use one core instead of contending for the pool.
pub fn limit_call_threads(n: usize) -> CallThreads {
    let prev = CALL_LIMIT.with(|c| c.replace(n.max(1)));
    CallThreads {
        prev,
        _not_send: std::marker::PhantomData,
    }
}

/// The guard of [`limit_call_threads`]: restores the previous cap when dropped. Not `Send`
/// (the cap belongs to the thread that set it).
#[derive(Debug)]
pub struct CallThreads {
    prev: usize,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl Drop for CallThreads {
    fn drop(&mut self) {
        CALL_LIMIT.with(|c| c.set(self.prev));
    }
}

/// Accumulator arithmetic (`f32`, `f64`).
pub trait AccElem:
    Copy
    + Send
    + Sync
    + Default
    + PartialEq
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + 'static
{
    /// 0
    const ZERO: Self;
    /// 1
    const ONE: Self;
    /// Widening to f64 (tests, diagnostics).
    fn to_f64(self) -> f64;
    /// Narrowing from f64.
    fn from_f64(v: f64) -> Self;
    /// `self * b + c`, fused (one rounding; a single instruction where compiled with FMA).
    fn fused(self, b: Self, c: Self) -> Self;
}

impl AccElem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn fused(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

impl AccElem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn fused(self, b: Self, c: Self) -> Self {
        self.mul_add(b, c)
    }
}

pub(crate) mod sealed {
    use super::{Args, Isa};
    /// The per-type kernel dispatch (not nameable outside the crate).
    pub trait Sealed: Sized + Copy + Send + Sync + 'static {
        /// Accumulator type.
        type A: super::AccElem;
        /// Stored narrow, accumulated wider (partial sums need a scratch buffer).
        const NARROW: bool;
        fn to_acc(self) -> Self::A;
        fn from_acc(v: Self::A) -> Self;
        /// Single-threaded packed GEMM on `args`.
        ///
        /// # Safety
        /// `args` describes valid, in-bounds, non-overlapping memory.
        unsafe fn packed<E: Fn(usize, usize, &mut [Self::A]) + Sync>(
            isa: Isa,
            args: &Args<Self>,
            epi: &E,
        );
        /// Single-threaded GEMV (`args.m <= 4` or `args.n == 1` is where it pays; correct for
        /// any shape).
        ///
        /// # Safety
        /// As [`Sealed::packed`].
        unsafe fn gemv<E: Fn(usize, usize, &mut [Self::A]) + Sync>(
            isa: Isa,
            args: &Args<Self>,
            epi: &E,
        );
        /// Small path (no packing); returns false when this type/layout has none.
        ///
        /// # Safety
        /// As [`Sealed::packed`].
        unsafe fn small<E: Fn(usize, usize, &mut [Self::A]) + Sync>(
            isa: Isa,
            args: &Args<Self>,
            epi: &E,
        ) -> bool;
        /// Register tile (rows, cols) of the packed kernel for `isa` (thread split alignment).
        fn tile(isa: Isa) -> (usize, usize);
    }
}

/// An element type [`gemm`] supports: `f32`, `f64` (accumulate in the same type), `half::f16`
/// and `half::bf16` (stored narrow, accumulate in `f32`).
pub trait GemmElem: sealed::Sealed<A = <Self as GemmElem>::Acc> {
    /// The type sums are accumulated in, and the epilogue sees.
    type Acc: AccElem;
}

impl GemmElem for f32 {
    type Acc = f32;
}
impl GemmElem for f64 {
    type Acc = f64;
}
impl GemmElem for f16 {
    type Acc = f32;
}
impl GemmElem for bf16 {
    type Acc = f32;
}

/// One GEMM problem in raw form (strides in elements; `i_off`/`j_off`: what to add to local row
/// and column indices before calling the epilogue, for sub-problems of a thread split).
#[derive(Debug)]
pub struct Args<T: sealed::Sealed> {
    pub(crate) m: usize,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) alpha: T::A,
    pub(crate) a: *const T,
    pub(crate) rsa: usize,
    pub(crate) csa: usize,
    pub(crate) b: *const T,
    pub(crate) rsb: usize,
    pub(crate) csb: usize,
    pub(crate) accumulate: bool,
    pub(crate) c: *mut T,
    pub(crate) ldc: usize,
    pub(crate) i_off: usize,
    pub(crate) j_off: usize,
    /// Whether the epilogue does anything (false for [`gemm_plain`]): a narrow C (f16/bf16)
    /// then goes through an f32 block buffer so the epilogue runs over whole block rows.
    pub(crate) epi: bool,
    /// B already packed for the packed path's kernel ([`PackedB`]'s words; null: pack B per
    /// call). Laid out per K block, then per `NR`-column micro-panel over all of the full
    /// problem's `pre_panels` panels, so a column split reads its own panels in place.
    pub(crate) pre: *const u8,
    /// Micro-panels of the whole prepacked B (`n.div_ceil(NR)` of the unsplit problem).
    pub(crate) pre_panels: usize,
    /// Pack mode ([`pack_b`]): pack all of B into this buffer and compute nothing.
    pub(crate) pack_out: *mut buf::PackOut,
}

impl<T: sealed::Sealed> Clone for Args<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T: sealed::Sealed> Copy for Args<T> {}
// SAFETY: the pointers describe disjoint regions handed to one thread each.
unsafe impl<T: sealed::Sealed> Send for Args<T> {}
unsafe impl<T: sealed::Sealed> Sync for Args<T> {}

/// `C = epilogue(alpha · A·B + (accumulate ? C : 0))`, row-major `m × n` C with row stride `ldc`.
///
/// `A(i, p) = a[i*rsa + p*csa]` (`m × k`), `B(p, j) = b[p*rsb + j*csb]` (`k × n`): arbitrary
/// strides, so transposed operands need no copy (e.g. a `Linear` weight `W[n, k]` used as `B = Wᵀ`
/// is `rsb = 1, csb = k`).
///
/// `epilogue(i, j, v)` is called exactly once for every finished contiguous row segment
/// `C(i, j..j + v.len())`, with the final accumulator values (after all of K, alpha and the
/// accumulated C) before they are converted and stored; it may rewrite them (bias, activation,
/// residual, scaling). On the packed path it runs once per row of each finished cache block
/// (up to 2048 values, still in cache; the values of a narrow C are kept in an f32 block buffer
/// until then; up to 256 values on the AVX-512 `f32` path for at most 384 rows of a row-major
/// A), on the small and GEMV paths once per row or microtile row; write it as a plain
/// loop over `v` so it vectorizes. Above the threading threshold it runs on several threads at
/// once (hence `Sync`; segments never overlap).
///
/// `k == 0` gives `C = epilogue(accumulate ? C : 0)`; `m == 0` or `n == 0` is a no-op.
///
/// # Panics
/// When a slice is too short for its dimensions and strides, or `ldc < n` (with `m > 1`).
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm<T: GemmElem, E>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    accumulate: bool,
    c: &mut [T],
    ldc: usize,
    epilogue: E,
) where
    E: Fn(usize, usize, &mut [T::Acc]) + Sync,
{
    gemm_with(
        GemmConfig::default(),
        m,
        n,
        k,
        alpha,
        a,
        rsa,
        csa,
        b,
        rsb,
        csb,
        accumulate,
        c,
        ldc,
        epilogue,
    )
}

/// [`gemm`] without an epilogue.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn gemm_plain<T: GemmElem>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    accumulate: bool,
    c: &mut [T],
    ldc: usize,
) {
    gemm_impl(
        GemmConfig::default(),
        m,
        n,
        k,
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        accumulate,
        (c, ldc),
        &|_, _, _: &mut [T::Acc]| {},
        false,
        None,
    )
}

/// Batched [`gemm`]: `batch` independent problems, matrix `t` of A/B/C starting at element
/// `t * stride_a` / `t * stride_b` / `t * stride_c`; the epilogue gets the batch index first.
#[allow(clippy::too_many_arguments)]
pub fn gemm_batched<T: GemmElem, E>(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: &[T],
    stride_a: usize,
    rsa: usize,
    csa: usize,
    b: &[T],
    stride_b: usize,
    rsb: usize,
    csb: usize,
    accumulate: bool,
    c: &mut [T],
    stride_c: usize,
    ldc: usize,
    epilogue: E,
) where
    E: Fn(usize, usize, usize, &mut [T::Acc]) + Sync,
{
    for t in 0..batch {
        let (oa, ob, oc) = (t * stride_a, t * stride_b, t * stride_c);
        gemm(
            m,
            n,
            k,
            alpha,
            a.get(oa..).unwrap_or(&[]),
            rsa,
            csa,
            b.get(ob..).unwrap_or(&[]),
            rsb,
            csb,
            accumulate,
            c.get_mut(oc..).unwrap_or(&mut []),
            ldc,
            |i, j, v: &mut [T::Acc]| epilogue(t, i, j, v),
        );
    }
}

/// Flops below which a GEMM stays on the calling thread (`2·m·n·k`).
pub const THREAD_MIN_FLOPS: usize = 2 * 160 * 160 * 160;
/// Volume (`m·n·k`) up to which `f32` with contiguous B rows skips packing.
pub const SMALL_MAX_VOLUME: usize = 96 * 96 * 96;

/// [`gemm`] with per-call overrides (forced ISA, thread count, algorithm).
#[allow(clippy::too_many_arguments)]
pub fn gemm_with<T: GemmElem, E>(
    cfg: GemmConfig,
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    accumulate: bool,
    c: &mut [T],
    ldc: usize,
    epilogue: E,
) where
    E: Fn(usize, usize, &mut [T::Acc]) + Sync,
{
    gemm_impl(
        cfg,
        m,
        n,
        k,
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        accumulate,
        (c, ldc),
        &epilogue,
        true,
        None,
    )
}

/// A `k × n` B operand packed once for the packed path ([`pack_b`]), to be passed to
/// [`gemm_prepacked`] / [`gemm_plain_prepacked`] by calls that multiply by the same B many
/// times (a layer's weight): those calls skip packing B, and give bitwise the results of
/// [`gemm`] / [`gemm_plain`] (the same kernel, blocking and packed values).
///
/// It is tied to the memory it was packed from: it records B's address, strides, `k` and `n`
/// and the ISA it was packed for, and a call whose B differs in any of them (or that takes
/// another path: GEMV, the small path, another ISA) ignores it and packs B itself. The caller
/// keeps B's values unchanged while the pack is used (the runtime's prepared params own an
/// immutable copy of the params they pack).
#[derive(Clone, Debug)]
pub struct PackedB<T> {
    isa: Isa,
    k: usize,
    n: usize,
    b: usize,
    rsb: usize,
    csb: usize,
    data: buf::PackOut,
    _t: std::marker::PhantomData<T>,
}

impl<T> PackedB<T> {
    /// Whether a call on this ISA with this B can read the pack.
    fn fits(&self, isa: Isa, k: usize, n: usize, b: *const T, rsb: usize, csb: usize) -> bool {
        self.isa == isa
            && self.k == k
            && self.n == n
            && self.b == b as usize
            && self.rsb == rsb
            && self.csb == csb
            && !self.data.lines.is_empty()
    }

    /// Bytes the packed copy holds.
    pub fn bytes(&self) -> usize {
        self.data.lines.len() * 64
    }
}

/// The ISA a call with this config runs on (as [`gemm_impl`] picks it).
fn call_isa(cfg: GemmConfig) -> Isa {
    let shared = match crate::isa::active() {
        crate::isa::Isa::Scalar => Isa::Scalar,
        crate::isa::Isa::Neon => Isa::Neon,
        crate::isa::Isa::Avx2 => Isa::Avx2,
        crate::isa::Isa::Avx512 => Isa::Avx512Bf16,
    };
    cfg.isa.unwrap_or(shared).clamp()
}

/// Packs `B(p, j) = b[p*rsb + j*csb]` (`k × n`) once for the packed path of the ISA calls on
/// this thread run with now (see [`PackedB`]).
///
/// # Panics
/// When `b` is too short for its dimensions and strides.
pub fn pack_b<T: GemmElem>(k: usize, n: usize, b: &[T], rsb: usize, csb: usize) -> PackedB<T> {
    pack_b_with(GemmConfig::default(), k, n, b, rsb, csb)
}

/// [`pack_b`] for the ISA of calls with `cfg`.
fn pack_b_with<T: GemmElem>(
    cfg: GemmConfig,
    k: usize,
    n: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
) -> PackedB<T> {
    let isa = call_isa(cfg);
    let mut data = buf::PackOut::default();
    if k > 0 && n > 0 {
        let bmax = (k - 1) * rsb + (n - 1) * csb;
        assert!(
            bmax < b.len(),
            "pack_b: B too short ({} <= {bmax})",
            b.len()
        );
        let args = Args::<T> {
            m: 1,
            n,
            k,
            alpha: <T::Acc as AccElem>::ONE,
            a: std::ptr::null(),
            rsa: 0,
            csa: 0,
            b: b.as_ptr(),
            rsb,
            csb,
            accumulate: false,
            c: std::ptr::null_mut(),
            ldc: n,
            i_off: 0,
            j_off: 0,
            epi: false,
            pre: std::ptr::null(),
            pre_panels: 0,
            pack_out: &mut data,
        };
        // SAFETY: pack mode reads only B (bounds checked above) and writes only `data`.
        unsafe { T::packed(isa, &args, &|_, _, _: &mut [T::Acc]| {}) };
    }
    PackedB {
        isa,
        k,
        n,
        b: b.as_ptr() as usize,
        rsb,
        csb,
        data,
        _t: std::marker::PhantomData,
    }
}

/// [`gemm`] reading B from `packed` where it fits the call (see [`PackedB`]): bitwise the
/// result of [`gemm`] with the same arguments.
#[allow(clippy::too_many_arguments)]
pub fn gemm_prepacked<T: GemmElem, E>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    packed: &PackedB<T>,
    accumulate: bool,
    c: &mut [T],
    ldc: usize,
    epilogue: E,
) where
    E: Fn(usize, usize, &mut [T::Acc]) + Sync,
{
    gemm_impl(
        GemmConfig::default(),
        m,
        n,
        k,
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        accumulate,
        (c, ldc),
        &epilogue,
        true,
        Some(packed),
    )
}

/// [`gemm_plain`] reading B from `packed` where it fits the call: bitwise the result of
/// [`gemm_plain`] with the same arguments.
#[allow(clippy::too_many_arguments)]
pub fn gemm_plain_prepacked<T: GemmElem>(
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    a: &[T],
    rsa: usize,
    csa: usize,
    b: &[T],
    rsb: usize,
    csb: usize,
    packed: &PackedB<T>,
    accumulate: bool,
    c: &mut [T],
    ldc: usize,
) {
    gemm_impl(
        GemmConfig::default(),
        m,
        n,
        k,
        alpha,
        (a, rsa, csa),
        (b, rsb, csb),
        accumulate,
        (c, ldc),
        &|_, _, _: &mut [T::Acc]| {},
        false,
        Some(packed),
    )
}

/// An epilogue behind a reference to a trait object: see [`gemm_impl`].
type DynEpilogue<'e, A> = dyn Fn(usize, usize, &mut [A]) + Sync + 'e;

/// [`gemm_with`], told whether the epilogue does anything (`has_epi`).
///
/// The epilogue arrives type-erased: the driver, the GEMV, small and packed paths and their
/// microkernels (every ISA) are instantiated once per element type, not once per caller's
/// closure type as a generic `E` made them (the runtime and the kernels' own convolution,
/// attention and test code pass dozens of distinct closures; each was a full copy of the GEMM
/// in the build). The epilogue runs once per finished row segment, so the indirect call costs
/// nothing measurable.
#[allow(clippy::too_many_arguments)]
fn gemm_impl<T: GemmElem>(
    cfg: GemmConfig,
    m: usize,
    n: usize,
    k: usize,
    alpha: T::Acc,
    (a, rsa, csa): (&[T], usize, usize),
    (b, rsb, csb): (&[T], usize, usize),
    accumulate: bool,
    (c, ldc): (&mut [T], usize),
    epilogue: &DynEpilogue<'_, T::Acc>,
    has_epi: bool,
    pre: Option<&PackedB<T>>,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Bounds: the largest index each operand touches.
    if k > 0 {
        let amax = (m - 1) * rsa + (k - 1) * csa;
        let bmax = (k - 1) * rsb + (n - 1) * csb;
        assert!(amax < a.len(), "gemm: A too short ({} <= {amax})", a.len());
        assert!(bmax < b.len(), "gemm: B too short ({} <= {bmax})", b.len());
    }
    assert!(m == 1 || ldc >= n, "gemm: ldc ({ldc}) < n ({n})");
    let cmax = (m - 1) * ldc + n - 1;
    assert!(cmax < c.len(), "gemm: C too short ({} <= {cmax})", c.len());

    let budget = cfg.threads.unwrap_or_else(num_threads_for_call).max(1);
    LAST_THREADS.with(|c| c.set(budget));
    // Default: the crate-wide choice (so `crate::isa::with_isa` forcing applies here too).
    let isa = call_isa(cfg);
    LAST_ISA.with(|c| c.set(Some(isa)));
    let args = Args::<T> {
        m,
        n,
        k,
        alpha,
        a: a.as_ptr(),
        rsa,
        csa,
        b: b.as_ptr(),
        rsb,
        csb,
        accumulate,
        c: c.as_mut_ptr(),
        ldc,
        i_off: 0,
        j_off: 0,
        epi: has_epi,
        pre: std::ptr::null(),
        pre_panels: 0,
        pack_out: std::ptr::null_mut(),
    };
    let mut args = args;
    // SAFETY: bounds checked above; C is exclusively borrowed.
    unsafe {
        if k == 0 {
            driver::no_k(&args, &epilogue);
            return;
        }
        let path = match cfg.path {
            Path::Auto if m <= 4 || n == 1 => Path::Gemv,
            Path::Auto if m * n * k <= SMALL_MAX_VOLUME => Path::Small,
            Path::Auto => Path::Packed,
            p => p,
        };
        match path {
            Path::Gemv => T::gemv(isa, &args, &epilogue),
            Path::Small if T::small(isa, &args, &epilogue) => {}
            _ => {
                // a prepacked B serves only the call it was packed for: the same ISA (so the
                // same kernel and blocking), dims, memory and strides
                if let Some(p) = pre.filter(|p| p.fits(isa, k, n, b.as_ptr(), rsb, csb)) {
                    args.pre = p.data.lines.as_ptr() as *const u8;
                    args.pre_panels = p.data.panels;
                    PREPACKED_CALLS.with(|c| c.set(c.get() + 1));
                }
                let threads = budget;
                let big = 2 * m * n * k >= THREAD_MIN_FLOPS;
                if threads > 1 && (big || cfg.force_split) {
                    split(isa, threads, &args, &epilogue);
                } else {
                    T::packed(isa, &args, &epilogue);
                }
            }
        }
    }
}

/// Splits a packed GEMM into `threads` row (or column) blocks, one per pool thread.
unsafe fn split<T: GemmElem, E>(isa: Isa, threads: usize, args: &Args<T>, epi: &E)
where
    E: Fn(usize, usize, &mut [T::Acc]) + Sync,
{
    let (mr, nr) = T::tile(isa);
    let by_rows = args.m.div_ceil(mr) >= threads && args.m >= args.n / 2;
    let (len, unit) = if by_rows { (args.m, mr) } else { (args.n, nr) };
    let units = len.div_ceil(unit);
    let parts = threads.min(units).max(1);
    let caller = crate::isa::active();
    if parts == 1 {
        T::packed(isa, args, epi);
        return;
    }
    let job = |t: usize| {
        let u0 = units * t / parts;
        let u1 = units * (t + 1) / parts;
        let (s, e) = ((u0 * unit).min(len), (u1 * unit).min(len));
        if s >= e {
            return;
        }
        let mut sub = *args;
        if by_rows {
            sub.m = e - s;
            sub.a = sub.a.wrapping_add(s * args.rsa);
            sub.c = sub.c.wrapping_add(s * args.ldc);
            sub.i_off = s;
        } else {
            sub.n = e - s;
            sub.b = sub.b.wrapping_add(s * args.csb);
            sub.c = sub.c.wrapping_add(s);
            sub.j_off = s;
        }
        // SAFETY: each part writes its own rows/columns of C. A pool thread runs its part (the
        // epilogue too) under the calling thread's ISA choice, so a forced ISA (`isa::force`,
        // `isa::with_isa`) covers the whole call.
        crate::isa::with_isa(caller, || unsafe { T::packed(isa, &sub, epi) })
    };
    pool::run(parts, &job);
}

/// Runs `job(t)` for `t in 0..parts` on the GEMM's thread pool (the calling thread takes part
/// 0) and returns when all are done; for kernels outside the GEMM that split their own work
/// (the convolution's implicit GEMM).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn parallel(parts: usize, job: &(dyn Fn(usize) + Sync)) {
    pool::run(parts, job);
}

// ---------------------------------------------------------------------------------------------
// Per-type dispatch.

macro_rules! dispatch {
    ($t:ty, $acc:ty, $narrow:expr, $to:expr, $from:expr, $tile:expr) => {
        impl sealed::Sealed for $t {
            type A = $acc;
            const NARROW: bool = $narrow;
            #[inline(always)]
            fn to_acc(self) -> $acc {
                ($to)(self)
            }
            #[inline(always)]
            fn from_acc(v: $acc) -> Self {
                ($from)(v)
            }
            unsafe fn packed<E: Fn(usize, usize, &mut [$acc]) + Sync>(
                isa: Isa,
                args: &Args<Self>,
                epi: &E,
            ) {
                #[cfg(target_arch = "x86_64")]
                if isa >= Isa::Avx2 {
                    <$t as x86::X86>::packed(isa, args, epi);
                    return;
                }
                #[cfg(target_arch = "aarch64")]
                if isa == Isa::Neon {
                    <$t as neon::Neon>::packed(args, epi);
                    return;
                }
                let _ = isa;
                scalar::packed(args, epi);
            }
            unsafe fn gemv<E: Fn(usize, usize, &mut [$acc]) + Sync>(
                isa: Isa,
                args: &Args<Self>,
                epi: &E,
            ) {
                #[cfg(target_arch = "x86_64")]
                if isa >= Isa::Avx2 {
                    <$t as x86::X86>::gemv(isa, args, epi);
                    return;
                }
                #[cfg(target_arch = "aarch64")]
                if isa == Isa::Neon {
                    <$t as neon::Neon>::gemv(args, epi);
                    return;
                }
                let _ = isa;
                gemv::gemv_scalar(args, epi);
            }
            unsafe fn small<E: Fn(usize, usize, &mut [$acc]) + Sync>(
                isa: Isa,
                args: &Args<Self>,
                epi: &E,
            ) -> bool {
                #[cfg(target_arch = "x86_64")]
                if isa >= Isa::Avx2 {
                    return <$t as x86::X86>::small(isa, args, epi);
                }
                let _ = (isa, args, epi);
                false
            }
            fn tile(isa: Isa) -> (usize, usize) {
                ($tile)(isa)
            }
        }
    };
}

fn tile32(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Scalar => (scalar::MR, scalar::NR),
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => (neon::MR, neon::NR),
        #[cfg(not(target_arch = "aarch64"))]
        Isa::Neon => (scalar::MR, scalar::NR),
        Isa::Avx2 => (6, 16),
        _ => (12, 32),
    }
}
fn tile64(isa: Isa) -> (usize, usize) {
    match isa {
        Isa::Scalar | Isa::Neon => (scalar::MR, scalar::NR),
        Isa::Avx2 => (6, 8),
        _ => (12, 16),
    }
}

dispatch!(f32, f32, false, |x| x, |x| x, tile32);
dispatch!(f64, f64, false, |x| x, |x| x, tile64);
// The narrow types convert with `crate::cvt`'s branch-free functions (bit for bit `half`'s):
// they vectorize inside the kernels' loops, where `half`'s `to_f32` / `from_f32` (a run-time
// F16C check and a call per element unless the crate is built with `f16c`) made the batch-1
// f16 GEMV ~20x slower than the f32 one.
dispatch!(
    f16,
    f32,
    true,
    |h: f16| crate::cvt::f16_to_f32(h.to_bits()),
    |v| f16::from_bits(crate::cvt::f32_to_f16(v)),
    tile32
);
dispatch!(
    bf16,
    f32,
    true,
    |h: bf16| crate::cvt::bf16_to_f32(h.to_bits()),
    |v| bf16::from_bits(crate::cvt::f32_to_bf16(v)),
    tile32
);
