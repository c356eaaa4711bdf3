//! x86-64 kernels: AVX-512 and AVX2+FMA microkernels (f32, f64, bf16 via `vdpbf16ps`), their
//! packing routines, the no-packing small-matrix kernels and the GEMV instantiations.
//!
//! Every entry point is a `#[target_feature]` function; the generic driver, store path and
//! epilogue are inlined into it and compiled for that ISA.

use super::driver::{self, store_tile, Kernel, Partial, MAX_TILE};
use super::gemv;
use super::sealed::Sealed;
use super::{Args, Isa};
use half::{bf16, f16};
use std::arch::x86_64::*;
use std::marker::PhantomData;

// Feature sets (kept in one place; the `#[target_feature]` attributes below repeat them
// literally because attributes cannot take constants).
// AVX-512: "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"
// AVX-512 + BF16: "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16"
// AVX2: "avx2,fma,f16c"

/// Element types whose packs are `f32` (`f32` itself, and `f16`/`bf16` converted while packing).
pub(crate) trait Src32: Sealed<A = f32> {
    /// `dst[0..n] = src[0..n]` converted to f32 (contiguous).
    unsafe fn cvt(src: *const Self, n: usize, dst: *mut f32);
}

impl Src32 for f32 {
    #[inline(always)]
    unsafe fn cvt(src: *const f32, n: usize, dst: *mut f32) {
        std::ptr::copy_nonoverlapping(src, dst, n);
    }
}

impl Src32 for bf16 {
    #[inline(always)]
    unsafe fn cvt(src: *const bf16, n: usize, dst: *mut f32) {
        let s = src as *const u16;
        for t in 0..n {
            *dst.add(t) = f32::from_bits((*s.add(t) as u32) << 16);
        }
    }
}

impl Src32 for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn cvt(src: *const f16, n: usize, dst: *mut f32) {
        let mut t = 0;
        while t + 8 <= n {
            let h = _mm_loadu_si128(src.add(t) as *const __m128i);
            _mm256_storeu_ps(dst.add(t), _mm256_cvtph_ps(h));
            t += 8;
        }
        while t < n {
            *dst.add(t) = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                *(src.add(t) as *const u16) as i32,
            )));
            t += 1;
        }
    }
}

/// Packs `w <= W` lanes (rows of A / columns of B) × `kc` k indices of `src(lane, q) =
/// src[lane*rs + q*cs]` as `dst[q*W + lane]` in f32, zero padded.
#[inline(always)]
unsafe fn pack32<T: Src32>(
    src: *const T,
    rs: usize,
    cs: usize,
    w: usize,
    kc: usize,
    width: usize,
    dst: *mut f32,
) {
    if rs == 1 {
        for q in 0..kc {
            let d = dst.add(q * width);
            // Constant widths: inlined copies instead of memcpy calls.
            match w {
                32 => T::cvt(src.add(q * cs), 32, d),
                16 => T::cvt(src.add(q * cs), 16, d),
                12 => T::cvt(src.add(q * cs), 12, d),
                6 => T::cvt(src.add(q * cs), 6, d),
                _ => T::cvt(src.add(q * cs), w, d),
            }
            for l in w..width {
                *d.add(l) = 0.0;
            }
        }
    } else if cs == 1 {
        if w < width {
            for q in 0..kc {
                for l in w..width {
                    *dst.add(q * width + l) = 0.0;
                }
            }
        }
        let mut tmp = [0f32; 128];
        for l in 0..w {
            let s = src.add(l * rs);
            let mut q0 = 0;
            while q0 < kc {
                let len = 128.min(kc - q0);
                T::cvt(s.add(q0), len, tmp.as_mut_ptr());
                for (t, v) in tmp[..len].iter().enumerate() {
                    *dst.add((q0 + t) * width + l) = *v;
                }
                q0 += len;
            }
        }
    } else {
        for q in 0..kc {
            let d = dst.add(q * width);
            for l in 0..w {
                *d.add(l) = (*src.add(l * rs + q * cs)).to_acc();
            }
            for l in w..width {
                *d.add(l) = 0.0;
            }
        }
    }
}

/// Stores four rows of 16 32-bit lanes (`rows[r]` holds lane `r`'s k indices `0..16`)
/// transposed: `dst[k*width + r] = rows[r][k]`, with 4×4 transposes in each 128-bit lane. Only
/// bits are moved, so it serves f32 and bf16 pairs alike.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn transpose_4x16(rows: [__m512; 4], dst: *mut f32, width: usize) {
    let [r0, r1, r2, r3] = rows;
    let t0 = _mm512_castps_pd(_mm512_unpacklo_ps(r0, r1));
    let t1 = _mm512_castps_pd(_mm512_unpackhi_ps(r0, r1));
    let t2 = _mm512_castps_pd(_mm512_unpacklo_ps(r2, r3));
    let t3 = _mm512_castps_pd(_mm512_unpackhi_ps(r2, r3));
    // c_t holds, in 128-bit lane L, the four lanes at k = 4L + t.
    let cols = [
        _mm512_castpd_ps(_mm512_unpacklo_pd(t0, t2)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(t0, t2)),
        _mm512_castpd_ps(_mm512_unpacklo_pd(t1, t3)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(t1, t3)),
    ];
    for (t, c) in cols.iter().enumerate() {
        let d = dst.add(t * width);
        _mm_storeu_ps(d, _mm512_castps512_ps128(*c));
        _mm_storeu_ps(d.add(4 * width), _mm512_extractf32x4_ps::<1>(*c));
        _mm_storeu_ps(d.add(8 * width), _mm512_extractf32x4_ps::<2>(*c));
        _mm_storeu_ps(d.add(12 * width), _mm512_extractf32x4_ps::<3>(*c));
    }
}

/// How far ahead (in f32 elements along k) [`pack_lanes_512`] prefetches each row.
const PACK_PF: usize = 64;

/// Packs `4*G` lanes (rows of A, or columns of a transposed B) with contiguous k (`src(l, q) =
/// src[l*rs + q]`) as `dst[q*4G + l]`: blocks of 16 k are transposed in registers (4×4
/// transposes in each 128-bit lane); `f16`/`bf16` lanes are converted into a small f32 buffer
/// first. Also packs attention's `Q` and `K` tiles (`attention::fused_x86`).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
pub(crate) unsafe fn pack_lanes_512<T: Src32, const G: usize>(
    src: *const T,
    rs: usize,
    kc: usize,
    dst: *mut f32,
) {
    let width = 4 * G;
    let direct = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
    let mut tmp = [0f32; 4 * 16];
    let mut q0 = 0;
    while q0 + 16 <= kc {
        for g in 0..G {
            let (base, stride) = if direct {
                (src.add(4 * g * rs + q0) as *const f32, rs)
            } else {
                for r in 0..4 {
                    T::cvt(
                        src.add((4 * g + r) * rs + q0),
                        16,
                        tmp.as_mut_ptr().add(r * 16),
                    );
                }
                (tmp.as_ptr(), 16)
            };
            let row = |r: usize| _mm512_loadu_ps(base.add(r * stride));
            if direct {
                // the rows are `rs` apart (a weight read as `Wᵀ`, from L3 or memory): fetch each
                // row's line `PF` floats ahead, as 4·G separate streams outrun the hardware
                // prefetcher (`wrapping_add`: a prefetch past the end is harmless, and the
                // pointer is never dereferenced)
                for r in 0..4 {
                    _mm_prefetch::<_MM_HINT_T0>(
                        base.wrapping_add(r * stride + PACK_PF) as *const i8
                    );
                }
            }
            transpose_4x16(
                [row(0), row(1), row(2), row(3)],
                dst.add(q0 * width + 4 * g),
                width,
            );
        }
        q0 += 16;
    }
    for q in q0..kc {
        for l in 0..width {
            *dst.add(q * width + l) = (*src.add(l * rs + q)).to_acc();
        }
    }
}

/// The AVX2 form of [`pack_lanes_512`]: blocks of 8 k, 4×4 transposes in each 128-bit lane.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn pack_lanes_256<T: Src32, const G: usize>(
    src: *const T,
    rs: usize,
    kc: usize,
    dst: *mut f32,
) {
    let width = 4 * G;
    let direct = std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
    let mut tmp = [0f32; 4 * 8];
    let mut q0 = 0;
    while q0 + 8 <= kc {
        for g in 0..G {
            let (base, stride) = if direct {
                (src.add(4 * g * rs + q0) as *const f32, rs)
            } else {
                for r in 0..4 {
                    T::cvt(
                        src.add((4 * g + r) * rs + q0),
                        8,
                        tmp.as_mut_ptr().add(r * 8),
                    );
                }
                (tmp.as_ptr(), 8)
            };
            let row = |r: usize| _mm256_loadu_ps(base.add(r * stride));
            let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
            let t0 = _mm256_castps_pd(_mm256_unpacklo_ps(r0, r1));
            let t1 = _mm256_castps_pd(_mm256_unpackhi_ps(r0, r1));
            let t2 = _mm256_castps_pd(_mm256_unpacklo_ps(r2, r3));
            let t3 = _mm256_castps_pd(_mm256_unpackhi_ps(r2, r3));
            let cols = [
                _mm256_castpd_ps(_mm256_unpacklo_pd(t0, t2)),
                _mm256_castpd_ps(_mm256_unpackhi_pd(t0, t2)),
                _mm256_castpd_ps(_mm256_unpacklo_pd(t1, t3)),
                _mm256_castpd_ps(_mm256_unpackhi_pd(t1, t3)),
            ];
            for (t, c) in cols.iter().enumerate() {
                let d = dst.add((q0 + t) * width + 4 * g);
                _mm_storeu_ps(d, _mm256_castps256_ps128(*c));
                _mm_storeu_ps(d.add(4 * width), _mm256_extractf128_ps::<1>(*c));
            }
        }
        q0 += 8;
    }
    for q in q0..kc {
        for l in 0..width {
            *dst.add(q * width + l) = (*src.add(l * rs + q)).to_acc();
        }
    }
}

/// f64 packing (no conversion).
#[inline(always)]
unsafe fn pack64(
    src: *const f64,
    rs: usize,
    cs: usize,
    w: usize,
    kc: usize,
    width: usize,
    dst: *mut f64,
) {
    for q in 0..kc {
        let d = dst.add(q * width);
        if rs == 1 {
            std::ptr::copy_nonoverlapping(src.add(q * cs), d, w);
        } else {
            for l in 0..w {
                *d.add(l) = *src.add(l * rs + q * cs);
            }
        }
        for l in w..width {
            *d.add(l) = 0.0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 f32 12×32.

pub(crate) struct K512<T>(PhantomData<T>);

impl<T: Src32> Kernel<T> for K512<T> {
    type P = f32;
    const MR: usize = 12;
    const NR: usize = 32;
    const KP: usize = 1;
    const MC: usize = 36;
    const KC: usize = 1024;
    const NC: usize = 2048;

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
    unsafe fn pack_a(a: *const T, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut f32) {
        if cs == 1 && mr == 12 {
            pack_lanes_512::<T, 3>(a, rs, kc, dst)
        } else {
            pack32(a, rs, cs, mr, kc, 12, dst)
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
    unsafe fn pack_b(b: *const T, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut f32) {
        if rs == 1 && cs != 1 && nr == 32 {
            // A transposed B (Linear's `Wᵀ`): k is contiguous within each column.
            pack_lanes_512::<T, 8>(b, cs, kc, dst)
        } else {
            pack32(b, cs, rs, nr, kc, 32, dst)
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
    unsafe fn kernel(steps: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        tile_512::<12, 2>(steps, a, b, tile)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
    unsafe fn kernel_edge(
        mr: usize,
        nr: usize,
        steps: usize,
        a: *const f32,
        b: *const f32,
        tile: *mut f32,
    ) {
        edge_tiles!(tile_512, mr, nr, steps, a, b, tile)
    }
}

/// Calls `$f::<R, V>` for the smallest even `R >= mr` rows and `V` = 1 or 2 vectors of 16
/// columns covering `nr`: an edge tile computes only what it stores.
macro_rules! edge_tiles {
    ($f:ident, $mr:expr, $nr:expr, $($arg:expr),*) => {
        match ($mr.div_ceil(2), $nr <= 16) {
            (0 | 1, true) => $f::<2, 1>($($arg),*),
            (2, true) => $f::<4, 1>($($arg),*),
            (3, true) => $f::<6, 1>($($arg),*),
            (4, true) => $f::<8, 1>($($arg),*),
            (5, true) => $f::<10, 1>($($arg),*),
            (_, true) => $f::<12, 1>($($arg),*),
            (0 | 1, false) => $f::<2, 2>($($arg),*),
            (2, false) => $f::<4, 2>($($arg),*),
            (3, false) => $f::<6, 2>($($arg),*),
            (4, false) => $f::<8, 2>($($arg),*),
            (5, false) => $f::<10, 2>($($arg),*),
            (_, false) => $f::<12, 2>($($arg),*),
        }
    };
}
use edge_tiles;

/// The AVX-512 f32 register tile: `R` rows (of the 12-wide packed A) × `16V` columns (of the
/// 32-wide packed B); writes rows `0..R`, vectors `0..V` of the 12×32 `tile`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn tile_512<const R: usize, const V: usize>(
    steps: usize,
    a: *const f32,
    b: *const f32,
    tile: *mut f32,
) {
    let mut c = [[_mm512_setzero_ps(); V]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..steps {
        let mut bv = [_mm512_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_ps(b.add(16 * v));
        }
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r));
            for v in 0..V {
                cr[v] = _mm512_fmadd_ps(av, bv[v], cr[v]);
            }
        }
        a = a.add(12);
        b = b.add(32);
    }
    for (r, cr) in c.iter().enumerate() {
        for (v, x) in cr.iter().enumerate() {
            _mm512_storeu_ps(tile.add(r * 32 + 16 * v), *x);
        }
    }
}

// AVX2 f32 6×16.

pub(crate) struct K256<T>(PhantomData<T>);

impl<T: Src32> Kernel<T> for K256<T> {
    type P = f32;
    const MR: usize = 6;
    const NR: usize = 16;
    const KP: usize = 1;
    const MC: usize = 48;
    const KC: usize = 512;
    const NC: usize = 2048;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_a(a: *const T, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut f32) {
        pack32(a, rs, cs, mr, kc, 6, dst)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_b(b: *const T, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut f32) {
        if rs == 1 && cs != 1 && nr == 16 {
            pack_lanes_256::<T, 4>(b, cs, kc, dst)
        } else {
            pack32(b, cs, rs, nr, kc, 16, dst)
        }
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel(steps: usize, a: *const f32, b: *const f32, tile: *mut f32) {
        tile_256::<6, 2>(steps, a, b, tile)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel_edge(
        mr: usize,
        nr: usize,
        steps: usize,
        a: *const f32,
        b: *const f32,
        tile: *mut f32,
    ) {
        match (mr.div_ceil(2), nr <= 8) {
            (0 | 1, true) => tile_256::<2, 1>(steps, a, b, tile),
            (2, true) => tile_256::<4, 1>(steps, a, b, tile),
            (_, true) => tile_256::<6, 1>(steps, a, b, tile),
            (0 | 1, false) => tile_256::<2, 2>(steps, a, b, tile),
            (2, false) => tile_256::<4, 2>(steps, a, b, tile),
            (_, false) => tile_256::<6, 2>(steps, a, b, tile),
        }
    }
}

/// The AVX2 f32 register tile: `R` rows (of the 6-wide packed A) × `8V` columns (of the 16-wide
/// packed B); writes rows `0..R`, vectors `0..V` of the 6×16 `tile`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_256<const R: usize, const V: usize>(
    steps: usize,
    a: *const f32,
    b: *const f32,
    tile: *mut f32,
) {
    let mut c = [[_mm256_setzero_ps(); V]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..steps {
        let mut bv = [_mm256_setzero_ps(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm256_loadu_ps(b.add(8 * v));
        }
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(r));
            for v in 0..V {
                cr[v] = _mm256_fmadd_ps(av, bv[v], cr[v]);
            }
        }
        a = a.add(6);
        b = b.add(16);
    }
    for (r, cr) in c.iter().enumerate() {
        for (v, x) in cr.iter().enumerate() {
            _mm256_storeu_ps(tile.add(r * 16 + 8 * v), *x);
        }
    }
}

// AVX-512 f64 12×16.

pub(crate) struct K512d;

impl Kernel<f64> for K512d {
    type P = f64;
    const MR: usize = 12;
    const NR: usize = 16;
    const KP: usize = 1;
    const MC: usize = 36;
    const KC: usize = 512;
    const NC: usize = 2048;

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
    unsafe fn pack_a(a: *const f64, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut f64) {
        pack64(a, rs, cs, mr, kc, 12, dst)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
    unsafe fn pack_b(b: *const f64, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut f64) {
        pack64(b, cs, rs, nr, kc, 16, dst)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
    unsafe fn kernel(steps: usize, a: *const f64, b: *const f64, tile: *mut f64) {
        let mut c = [[_mm512_setzero_pd(); 2]; 12];
        let (mut a, mut b) = (a, b);
        for _ in 0..steps {
            let b0 = _mm512_loadu_pd(b);
            let b1 = _mm512_loadu_pd(b.add(8));
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm512_set1_pd(*a.add(r));
                cr[0] = _mm512_fmadd_pd(av, b0, cr[0]);
                cr[1] = _mm512_fmadd_pd(av, b1, cr[1]);
            }
            a = a.add(12);
            b = b.add(16);
        }
        for (r, cr) in c.iter().enumerate() {
            _mm512_storeu_pd(tile.add(r * 16), cr[0]);
            _mm512_storeu_pd(tile.add(r * 16 + 8), cr[1]);
        }
    }
}

// AVX2 f64 6×8.

pub(crate) struct K256d;

impl Kernel<f64> for K256d {
    type P = f64;
    const MR: usize = 6;
    const NR: usize = 8;
    const KP: usize = 1;
    const MC: usize = 48;
    const KC: usize = 512;
    const NC: usize = 2048;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_a(a: *const f64, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut f64) {
        pack64(a, rs, cs, mr, kc, 6, dst)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn pack_b(b: *const f64, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut f64) {
        pack64(b, cs, rs, nr, kc, 8, dst)
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn kernel(steps: usize, a: *const f64, b: *const f64, tile: *mut f64) {
        let mut c = [[_mm256_setzero_pd(); 2]; 6];
        let (mut a, mut b) = (a, b);
        for _ in 0..steps {
            let b0 = _mm256_loadu_pd(b);
            let b1 = _mm256_loadu_pd(b.add(4));
            for (r, cr) in c.iter_mut().enumerate() {
                let av = _mm256_broadcast_sd(&*a.add(r));
                cr[0] = _mm256_fmadd_pd(av, b0, cr[0]);
                cr[1] = _mm256_fmadd_pd(av, b1, cr[1]);
            }
            a = a.add(6);
            b = b.add(8);
        }
        for (r, cr) in c.iter().enumerate() {
            _mm256_storeu_pd(tile.add(r * 8), cr[0]);
            _mm256_storeu_pd(tile.add(r * 8 + 4), cr[1]);
        }
    }
}

// AVX512_BF16 12×32 on k-pairs.

pub(crate) struct KBf16;

#[inline(always)]
unsafe fn bits(p: *const bf16) -> u32 {
    *(p as *const u16) as u32
}

impl Kernel<bf16> for KBf16 {
    /// A pair `(x[2q], x[2q+1])` of bf16 bits, low half first.
    type P = u32;
    const MR: usize = 12;
    const NR: usize = 32;
    const KP: usize = 2;
    const MC: usize = 36;
    const KC: usize = 2048;
    const NC: usize = 2048;

    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
    unsafe fn pack_a(a: *const bf16, rs: usize, cs: usize, mr: usize, kc: usize, dst: *mut u32) {
        if cs == 1 && mr == 12 {
            pack_pair_lanes::<3>(a, rs, kc, dst)
        } else {
            pack_pairs(a, rs, cs, mr, kc, 12, dst)
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
    unsafe fn pack_b(b: *const bf16, rs: usize, cs: usize, nr: usize, kc: usize, dst: *mut u32) {
        if cs == 1 && nr == 32 {
            // Rows contiguous: interleave rows 2q and 2q+1 with two permutes.
            let lo_idx = _mm512_set_epi16(
                47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5,
                36, 4, 35, 3, 34, 2, 33, 1, 32, 0,
            );
            let hi_idx = _mm512_set_epi16(
                63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23, 54, 22, 53,
                21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16,
            );
            let mut q = 0;
            while 2 * q < kc {
                let r0 = _mm512_loadu_si512(b.add(2 * q * rs) as *const _);
                let r1 = if 2 * q + 1 < kc {
                    _mm512_loadu_si512(b.add((2 * q + 1) * rs) as *const _)
                } else {
                    _mm512_setzero_si512()
                };
                let d = dst.add(q * 32);
                _mm512_storeu_si512(d as *mut _, _mm512_permutex2var_epi16(r0, lo_idx, r1));
                _mm512_storeu_si512(
                    d.add(16) as *mut _,
                    _mm512_permutex2var_epi16(r0, hi_idx, r1),
                );
                q += 1;
            }
        } else if rs == 1 && nr == 32 {
            // A transposed B (Linear's `Wᵀ`): k is contiguous within each column.
            pack_pair_lanes::<8>(b, cs, kc, dst)
        } else {
            pack_pairs(b, cs, rs, nr, kc, 32, dst)
        }
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
    unsafe fn kernel(steps: usize, a: *const u32, b: *const u32, tile: *mut f32) {
        tile_bf16::<12, 2>(steps, a, b, tile)
    }
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
    unsafe fn kernel_edge(
        mr: usize,
        nr: usize,
        steps: usize,
        a: *const u32,
        b: *const u32,
        tile: *mut f32,
    ) {
        edge_tiles!(tile_bf16, mr, nr, steps, a, b, tile)
    }
}

/// The `vdpbf16ps` register tile: `R` rows × `16V` columns of k-pairs (see [`tile_512`]).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
unsafe fn tile_bf16<const R: usize, const V: usize>(
    steps: usize,
    a: *const u32,
    b: *const u32,
    tile: *mut f32,
) {
    let mut c = [[_mm512_setzero_ps(); V]; R];
    let (mut a, mut b) = (a, b);
    for _ in 0..steps {
        let mut bv: [__m512bh; V] = std::mem::zeroed();
        for (v, x) in bv.iter_mut().enumerate() {
            *x = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                b.add(16 * v) as *const _
            ));
        }
        for (r, cr) in c.iter_mut().enumerate() {
            let av: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
            for v in 0..V {
                cr[v] = _mm512_dpbf16_ps(cr[v], av, bv[v]);
            }
        }
        a = a.add(12);
        b = b.add(32);
    }
    for (r, cr) in c.iter().enumerate() {
        for (v, x) in cr.iter().enumerate() {
            _mm512_storeu_ps(tile.add(r * 32 + 16 * v), *x);
        }
    }
}

/// Packs `4*G` full lanes with contiguous k (`src(l, q) = src[l*rs + q]`) as k-pairs,
/// `dst[q*4G + l] = bits(src(l, 2q)) | bits(src(l, 2q+1)) << 16`: a pair is one 32-bit lane, so
/// blocks of 16 pairs go through [`transpose_4x16`] (no scatter stores), the rest lane by lane.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
unsafe fn pack_pair_lanes<const G: usize>(src: *const bf16, rs: usize, kc: usize, dst: *mut u32) {
    let width = 4 * G;
    let full = kc / 2;
    let mut q0 = 0;
    while q0 + 16 <= full {
        for g in 0..G {
            let row = |r: usize| _mm512_loadu_ps(src.add((4 * g + r) * rs + 2 * q0) as *const f32);
            transpose_4x16(
                [row(0), row(1), row(2), row(3)],
                dst.add(q0 * width + 4 * g) as *mut f32,
                width,
            );
        }
        q0 += 16;
    }
    for q in q0..kc.div_ceil(2) {
        let d = dst.add(q * width);
        for l in 0..width {
            let s = src.add(l * rs + 2 * q);
            *d.add(l) = if 2 * q + 1 < kc {
                (s as *const u32).read_unaligned()
            } else {
                bits(s)
            };
        }
    }
}

/// `dst[q*W + l] = bits(src(l, 2q)) | bits(src(l, 2q+1)) << 16`, zero padded (lanes past `w`,
/// the odd k index past `kc`).
#[inline(always)]
unsafe fn pack_pairs(
    src: *const bf16,
    rs: usize,
    cs: usize,
    w: usize,
    kc: usize,
    width: usize,
    dst: *mut u32,
) {
    let steps = kc.div_ceil(2);
    let full = kc / 2;
    if cs == 1 {
        // k outer: contiguous stores (lane outer compiled to scatter stores, slow on Zen 5).
        for q in 0..full {
            for l in 0..w {
                *dst.add(q * width + l) = (src.add(l * rs + 2 * q) as *const u32).read_unaligned();
            }
        }
        if full < steps {
            for l in 0..w {
                *dst.add(full * width + l) = bits(src.add(l * rs + 2 * full));
            }
        }
    } else {
        for q in 0..steps {
            for l in 0..w {
                let s = src.add(l * rs + 2 * q * cs);
                let hi = if 2 * q + 1 < kc { bits(s.add(cs)) } else { 0 };
                *dst.add(q * width + l) = bits(s) | hi << 16;
            }
        }
    }
    if w < width {
        for q in 0..steps {
            for l in w..width {
                *dst.add(q * width + l) = 0;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points per ISA (the driver inlined into a function compiled with that ISA).

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn packed_512<T: Sealed, K: Kernel<T>, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    epi: &E,
) {
    driver::packed::<T, K, E>(args, epi)
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
unsafe fn packed_512bf16<T: Sealed, K: Kernel<T>, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    epi: &E,
) {
    driver::packed::<T, K, E>(args, epi)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn packed_256<T: Sealed, K: Kernel<T>, E: Fn(usize, usize, &mut [T::A])>(
    args: &Args<T>,
    epi: &E,
) {
    driver::packed::<T, K, E>(args, epi)
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn gemv_512<T: Sealed, E: Fn(usize, usize, &mut [T::A]), const L: usize>(
    args: &Args<T>,
    epi: &E,
) {
    gemv::gemv_impl::<T, E, true, L>(args, epi)
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_256<T: Sealed, E: Fn(usize, usize, &mut [T::A]), const L: usize>(
    args: &Args<T>,
    epi: &E,
) {
    gemv::gemv_impl::<T, E, true, L>(args, epi)
}

// ---------------------------------------------------------------------------------------------
// Small path (f32, B rows contiguous): the microkernel reads A and B in place.

/// 12×32 tile of `A(rows, 0..k)·B(0..k, 0..nr)` with masked B loads at the right edge; rows
/// past the edge repeat row 0 (their results are discarded).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn small_kernel_512(
    k: usize,
    rows: &[*const f32; 12],
    csa: usize,
    b: *const f32,
    rsb: usize,
    nr: usize,
    tile: *mut f32,
) {
    let m0: __mmask16 = if nr >= 16 {
        0xffff
    } else {
        (1u32 << nr) as u16 - 1
    };
    let m1: __mmask16 = if nr >= 32 {
        0xffff
    } else if nr > 16 {
        (1u32 << (nr - 16)) as u16 - 1
    } else {
        0
    };
    let mut c = [[_mm512_setzero_ps(); 2]; 12];
    for p in 0..k {
        let bp = b.add(p * rsb);
        let b0 = _mm512_maskz_loadu_ps(m0, bp);
        let b1 = _mm512_maskz_loadu_ps(m1, bp.add(16));
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*rows[r].add(p * csa));
            cr[0] = _mm512_fmadd_ps(av, b0, cr[0]);
            cr[1] = _mm512_fmadd_ps(av, b1, cr[1]);
        }
    }
    for (r, cr) in c.iter().enumerate() {
        _mm512_storeu_ps(tile.add(r * 32), cr[0]);
        _mm512_storeu_ps(tile.add(r * 32 + 16), cr[1]);
    }
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn small_kernel_256(
    k: usize,
    rows: &[*const f32; 6],
    csa: usize,
    b: *const f32,
    rsb: usize,
    nr: usize,
    tile: *mut f32,
) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr as i32), lanes);
    let m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr as i32 - 8), lanes);
    let mut c = [[_mm256_setzero_ps(); 2]; 6];
    for p in 0..k {
        let bp = b.add(p * rsb);
        let b0 = _mm256_maskload_ps(bp, m0);
        let b1 = _mm256_maskload_ps(bp.add(8), m1);
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*rows[r].add(p * csa));
            cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
            cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
        }
    }
    for (r, cr) in c.iter().enumerate() {
        _mm256_storeu_ps(tile.add(r * 16), cr[0]);
        _mm256_storeu_ps(tile.add(r * 16 + 8), cr[1]);
    }
}

macro_rules! small_driver {
    ($name:ident, $feat:literal, $kern:ident, $mr:literal, $nr:literal) => {
        #[target_feature(enable = $feat)]
        unsafe fn $name<E: Fn(usize, usize, &mut [f32])>(args: &Args<f32>, epi: &E) {
            let mut tile = [0f32; MAX_TILE];
            let tile = tile.as_mut_ptr();
            let mut j = 0;
            while j < args.n {
                let nr = $nr.min(args.n - j);
                let b = args.b.add(j);
                let mut i = 0;
                while i < args.m {
                    let mr = $mr.min(args.m - i);
                    let mut rows = [args.a.add(i * args.rsa); $mr];
                    for (r, row) in rows.iter_mut().enumerate().take(mr) {
                        *row = args.a.add((i + r) * args.rsa);
                    }
                    $kern(args.k, &rows, args.csa, b, args.rsb, nr, tile);
                    let part = Partial {
                        ptr: args.c.add(i * args.ldc + j),
                        ld: args.ldc,
                    };
                    store_tile(args, tile, $nr, mr, nr, i, j, true, true, part, Some(epi));
                    i += $mr;
                }
                j += $nr;
            }
        }
    };
}

small_driver!(
    small_512,
    "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c",
    small_kernel_512,
    12,
    32
);
small_driver!(small_256, "avx2,fma,f16c", small_kernel_256, 6, 16);

// ---------------------------------------------------------------------------------------------
// Batch-1 f32 GEMV, dot layout: `y(j) = x · W(j, :)` with every `W(j, :)` contiguous.

/// `out[j] = sum_p x[p]·w[j*so + p]` for `j < rows`: blocks of `J` rows, each with two
/// accumulators (`2·J` independent FMA chains), masked tail.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn dot_rows_512(
    k: usize,
    x: *const f32,
    w: *const f32,
    so: usize,
    rows: usize,
    out: *mut f32,
) {
    let mut j = 0;
    while j + 8 <= rows {
        dot_block_512::<8>(k, x, w.add(j * so), so, out.add(j));
        j += 8;
    }
    while j + 4 <= rows {
        dot_block_512::<4>(k, x, w.add(j * so), so, out.add(j));
        j += 4;
    }
    while j < rows {
        dot_block_512::<1>(k, x, w.add(j * so), so, out.add(j));
        j += 1;
    }
}

#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn dot_block_512<const J: usize>(
    k: usize,
    x: *const f32,
    w: *const f32,
    so: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; J];
    let mut p = 0;
    while p + 32 <= k {
        let x0 = _mm512_loadu_ps(x.add(p));
        let x1 = _mm512_loadu_ps(x.add(p + 16));
        for (jj, a) in acc.iter_mut().enumerate() {
            let wr = w.add(jj * so + p);
            a[0] = _mm512_fmadd_ps(x0, _mm512_loadu_ps(wr), a[0]);
            a[1] = _mm512_fmadd_ps(x1, _mm512_loadu_ps(wr.add(16)), a[1]);
        }
        p += 32;
    }
    while p < k {
        let len = (k - p).min(16);
        let mask: __mmask16 = ((1u32 << len) - 1) as u16;
        let x0 = _mm512_maskz_loadu_ps(mask, x.add(p));
        for (jj, a) in acc.iter_mut().enumerate() {
            a[0] = _mm512_fmadd_ps(x0, _mm512_maskz_loadu_ps(mask, w.add(jj * so + p)), a[0]);
        }
        p += len;
    }
    for (jj, a) in acc.iter().enumerate() {
        *out.add(jj) = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
    }
}

/// The AVX2 form of [`dot_rows_512`]: blocks of 4 rows with two 8-lane accumulators each (8
/// independent FMA chains in 10 of the 16 registers), then 1-row blocks; a masked tail.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_rows_256(
    k: usize,
    x: *const f32,
    w: *const f32,
    so: usize,
    rows: usize,
    out: *mut f32,
) {
    let mut j = 0;
    while j + 4 <= rows {
        dot_block_256::<4>(k, x, w.add(j * so), so, out.add(j));
        j += 4;
    }
    while j < rows {
        dot_block_256::<1>(k, x, w.add(j * so), so, out.add(j));
        j += 1;
    }
}

/// The lanes of `v` summed (halves, then pairs).
#[inline(always)]
unsafe fn hsum_256(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_block_256<const J: usize>(
    k: usize,
    x: *const f32,
    w: *const f32,
    so: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; J];
    let mut p = 0;
    while p + 16 <= k {
        let x0 = _mm256_loadu_ps(x.add(p));
        let x1 = _mm256_loadu_ps(x.add(p + 8));
        for (jj, a) in acc.iter_mut().enumerate() {
            let wr = w.add(jj * so + p);
            a[0] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(wr), a[0]);
            a[1] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(wr.add(8)), a[1]);
        }
        p += 16;
    }
    while p < k {
        let len = (k - p).min(8);
        // Lane i is loaded when i < len (the mask's sign bit).
        let mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(len as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        let x0 = _mm256_maskload_ps(x.add(p), mask);
        for (jj, a) in acc.iter_mut().enumerate() {
            a[0] = _mm256_fmadd_ps(x0, _mm256_maskload_ps(w.add(jj * so + p), mask), a[0]);
        }
        p += len;
    }
    for (jj, a) in acc.iter().enumerate() {
        *out.add(jj) = hsum_256(_mm256_add_ps(a[0], a[1]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv1_dot_256<E: Fn(usize, usize, &mut [f32])>(args: &Args<f32>, epi: &E) {
    let mut y = [0f32; 64];
    let mut j = 0;
    while j < args.n {
        let len = 64.min(args.n - j);
        dot_rows_256(
            args.k,
            args.a,
            args.b.add(j * args.csb),
            args.csb,
            len,
            y.as_mut_ptr(),
        );
        gemv::finish_row(args, 0, j, &mut y[..len], epi);
        j += len;
    }
}

// Batch-1 f16 GEMV, dot layout: the weights widened by `vcvtph2ps` as they are loaded (no
// conversion pass), the input row widened once into scratch (zero-padded to whole vectors).

/// `out[j] = sum_p x[p]·w[j*so + p]` with `w` in f16 and `x` in f32, padded with zeros to a
/// multiple of 16: blocks of `J` rows, two accumulators each, a masked tail.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn dot_block_512_f16<const J: usize>(
    k: usize,
    x: *const f32,
    w: *const u16,
    so: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; J];
    let mut p = 0;
    while p + 32 <= k {
        let x0 = _mm512_loadu_ps(x.add(p));
        let x1 = _mm512_loadu_ps(x.add(p + 16));
        for (jj, a) in acc.iter_mut().enumerate() {
            let wr = w.add(jj * so + p);
            let w0 = _mm512_cvtph_ps(_mm256_loadu_si256(wr as *const __m256i));
            let w1 = _mm512_cvtph_ps(_mm256_loadu_si256(wr.add(16) as *const __m256i));
            a[0] = _mm512_fmadd_ps(x0, w0, a[0]);
            a[1] = _mm512_fmadd_ps(x1, w1, a[1]);
        }
        p += 32;
    }
    while p < k {
        let len = (k - p).min(16);
        let mask: __mmask16 = ((1u32 << len) - 1) as u16;
        let x0 = _mm512_loadu_ps(x.add(p));
        for (jj, a) in acc.iter_mut().enumerate() {
            let wr = w.add(jj * so + p) as *const i16;
            let w0 = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, wr));
            a[0] = _mm512_fmadd_ps(x0, w0, a[0]);
        }
        p += len;
    }
    for (jj, a) in acc.iter().enumerate() {
        *out.add(jj) = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
    }
}

/// The AVX2 + F16C form of [`dot_block_512_f16`] (4-row blocks, two 8-lane accumulators per
/// row; the tail's weights copied into a zeroed vector).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_block_256_f16<const J: usize>(
    k: usize,
    x: *const f32,
    w: *const u16,
    so: usize,
    out: *mut f32,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; J];
    let mut p = 0;
    while p + 16 <= k {
        let x0 = _mm256_loadu_ps(x.add(p));
        let x1 = _mm256_loadu_ps(x.add(p + 8));
        for (jj, a) in acc.iter_mut().enumerate() {
            let wr = w.add(jj * so + p);
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(wr as *const __m128i));
            let w1 = _mm256_cvtph_ps(_mm_loadu_si128(wr.add(8) as *const __m128i));
            a[0] = _mm256_fmadd_ps(x0, w0, a[0]);
            a[1] = _mm256_fmadd_ps(x1, w1, a[1]);
        }
        p += 16;
    }
    while p < k {
        let len = (k - p).min(8);
        let x0 = _mm256_loadu_ps(x.add(p));
        for (jj, a) in acc.iter_mut().enumerate() {
            let mut t = [0u16; 8];
            std::ptr::copy_nonoverlapping(w.add(jj * so + p), t.as_mut_ptr(), len);
            let w0 = _mm256_cvtph_ps(_mm_loadu_si128(t.as_ptr() as *const __m128i));
            a[0] = _mm256_fmadd_ps(x0, w0, a[0]);
        }
        p += len;
    }
    for (jj, a) in acc.iter().enumerate() {
        *out.add(jj) = hsum_256(_mm256_add_ps(a[0], a[1]));
    }
}

/// `m == 1`, `T = f16`, B in the dot layout (`rsb == 1`: the `x · Wᵀ` of an f16 `Linear`), A's
/// row contiguous. False when the shape is not that.
#[inline(always)]
unsafe fn gemv1_f16<T: Sealed, E: Fn(usize, usize, &mut [f32])>(
    isa: Isa,
    args: &Args<T>,
    epi: &E,
) -> bool {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f16>()
        || args.m != 1
        || args.rsb != 1
        || args.csa != 1
        || isa < Isa::Avx2
    {
        return false;
    }
    // SAFETY: T is f16 (checked above).
    let args = &*(args as *const Args<T> as *const Args<f16>);
    let k = args.k;
    let mut scratch = super::buf::take();
    // The input row widened once, zero-padded to whole 16-lane vectors.
    let x: *mut f32 = scratch.get(2, k.next_multiple_of(16));
    let xs = std::slice::from_raw_parts_mut(x, k.next_multiple_of(16));
    crate::cvt::f16_to_f32_slice(std::slice::from_raw_parts(args.a, k), &mut xs[..k]);
    xs[k..].fill(0.0);
    let mut y = [0f32; 64];
    let mut j = 0;
    while j < args.n {
        let len = 64.min(args.n - j);
        let w = args.b.add(j * args.csb) as *const u16;
        if isa == Isa::Avx2 {
            dot_rows_f16::<false>(k, x, w, args.csb, len, y.as_mut_ptr());
        } else {
            dot_rows_f16::<true>(k, x, w, args.csb, len, y.as_mut_ptr());
        }
        gemv::finish_row(args, 0, j, &mut y[..len], epi);
        j += len;
    }
    super::buf::put(scratch);
    true
}

/// Rows `0..rows` of the f16 dot GEMV in blocks of 4 (then 1) on the AVX-512 (`W`) or AVX2
/// kernel.
#[inline(always)]
unsafe fn dot_rows_f16<const W: bool>(
    k: usize,
    x: *const f32,
    w: *const u16,
    so: usize,
    rows: usize,
    out: *mut f32,
) {
    let mut j = 0;
    while j + 4 <= rows {
        if W {
            dot_block_512_f16::<4>(k, x, w.add(j * so), so, out.add(j));
        } else {
            dot_block_256_f16::<4>(k, x, w.add(j * so), so, out.add(j));
        }
        j += 4;
    }
    while j < rows {
        if W {
            dot_block_512_f16::<1>(k, x, w.add(j * so), so, out.add(j));
        } else {
            dot_block_256_f16::<1>(k, x, w.add(j * so), so, out.add(j));
        }
        j += 1;
    }
}

/// `m == 1`, B in the dot layout (`rsb == 1`, e.g. `x · Wᵀ` with a row-major `Linear` weight),
/// A's row contiguous: the batch-1 inference case. False when the shape is not that.
#[inline(always)]
unsafe fn gemv1_f32<T: Sealed, E: Fn(usize, usize, &mut [f32])>(
    isa: Isa,
    args: &Args<T>,
    epi: &E,
) -> bool {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>()
        || args.m != 1
        || args.rsb != 1
        || args.csa != 1
    {
        return false;
    }
    // SAFETY: T is f32 (checked above).
    let args = &*(args as *const Args<T> as *const Args<f32>);
    match isa {
        Isa::Scalar => return false,
        Isa::Avx2 => gemv1_dot_256(args, epi),
        _ => gemv1_dot_512(args, epi),
    }
    true
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn gemv1_dot_512<E: Fn(usize, usize, &mut [f32])>(args: &Args<f32>, epi: &E) {
    let mut y = [0f32; 64];
    let mut j = 0;
    while j < args.n {
        let len = 64.min(args.n - j);
        dot_rows_512(
            args.k,
            args.a,
            args.b.add(j * args.csb),
            args.csb,
            len,
            y.as_mut_ptr(),
        );
        gemv::finish_row(args, 0, j, &mut y[..len], epi);
        j += len;
    }
}

// ---------------------------------------------------------------------------------------------
// Batch-1 bf16 GEMV, dot layout, with `vdpbf16ps`: the bf16 weights are read as they are
// stored (32 k per instruction), no conversion pass; 8 rows at a time (measured faster than 16:
// fewer concurrent weight streams), one accumulator each, reduced together by a transposing
// tree into one vector of 8 outputs. The order of the sums
// is the one every bf16 GEMV path shares (`gemv::reduce_bf16_lanes`).

/// Row `i` of the result = the sum of `acc[i]`'s lanes as `(Q0 + Q1) + (Q2 + Q3)`,
/// `Qq = (l0 + l2) + (l1 + l3)` over the lanes `4q..4q+4` (24 shuffles and adds for 8 rows).
#[inline(always)]
unsafe fn reduce8_512(acc: &[__m512; 8]) -> __m256 {
    let mut u = [_mm512_setzero_ps(); 4];
    for (t, ut) in u.iter_mut().enumerate() {
        let (a, b) = (acc[2 * t], acc[2 * t + 1]);
        *ut = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    }
    let mut v = [_mm512_setzero_ps(); 2];
    for (t, vt) in v.iter_mut().enumerate() {
        let (a, b) = (_mm512_castps_pd(u[2 * t]), _mm512_castps_pd(u[2 * t + 1]));
        *vt = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
            _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)),
        );
    }
    let w0 = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(v[0], v[1]),
        _mm512_shuffle_f32x4::<0xdd>(v[0], v[1]),
    );
    _mm512_castps512_ps256(_mm512_add_ps(
        _mm512_shuffle_f32x4::<0x88>(w0, w0),
        _mm512_shuffle_f32x4::<0xdd>(w0, w0),
    ))
}

/// `out[j] = sum_p x[p]·w[j*so + p]` for `J <= 8` rows (a masked last step; zero pairs add
/// nothing but `+0`).
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
unsafe fn dot_block_bf16<const J: usize>(
    k: usize,
    x: *const bf16,
    w: *const bf16,
    so: usize,
    out: *mut f32,
) {
    #[inline(always)]
    unsafe fn ld(p: *const bf16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(p as *const _))
    }
    #[inline(always)]
    unsafe fn ldm(m: __mmask32, p: *const bf16) -> __m512bh {
        std::mem::transmute::<__m512i, __m512bh>(_mm512_maskz_loadu_epi16(m, p as *const _))
    }
    let mut acc = [_mm512_setzero_ps(); 8];
    let mut p = 0;
    while p + 32 <= k {
        let x0 = ld(x.add(p));
        for (jj, a) in acc.iter_mut().enumerate().take(J) {
            *a = _mm512_dpbf16_ps(*a, x0, ld(w.add(jj * so + p)));
        }
        p += 32;
    }
    if p < k {
        let mask: __mmask32 = (1u32 << (k - p)) - 1;
        let x0 = ldm(mask, x.add(p));
        for (jj, a) in acc.iter_mut().enumerate().take(J) {
            *a = _mm512_dpbf16_ps(*a, x0, ldm(mask, w.add(jj * so + p)));
        }
    }
    if J == 8 {
        _mm256_storeu_ps(out, reduce8_512(&acc));
    } else {
        let r = _mm512_castps256_ps512(reduce8_512(&acc));
        _mm512_mask_storeu_ps(out, ((1u32 << J) - 1) as u16, r);
    }
}

/// The batch-1 bf16 GEMV (`gemv::as_bf16_gemv1`'s case) on this ISA: `vdpbf16ps` with
/// AVX512_BF16, else by widening (in the same order). False when the shape is not that case.
#[inline(always)]
unsafe fn gemv1_bf16<T: Sealed, E: Fn(usize, usize, &mut [f32])>(
    isa: Isa,
    args: &Args<T>,
    epi: &E,
) -> bool {
    let Some(args) = gemv::as_bf16_gemv1(args) else {
        return false;
    };
    match isa {
        Isa::Avx512Bf16 => gemv1_dot_bf16(args, epi),
        _ => gemv1_bf16_wide_256(args, epi),
    }
    true
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv1_bf16_wide_256<E: Fn(usize, usize, &mut [f32])>(args: &Args<bf16>, epi: &E) {
    gemv::gemv1_bf16_wide::<E, true, 4>(args, epi)
}

#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c,avx512bf16")]
unsafe fn gemv1_dot_bf16<E: Fn(usize, usize, &mut [f32])>(args: &Args<bf16>, epi: &E) {
    let mut y = [0f32; 64];
    let (k, so) = (args.k, args.csb);
    let mut j = 0;
    while j < args.n {
        let len = 64.min(args.n - j);
        let w = args.b.add(j * so);
        let mut o = 0;
        while o + 8 <= len {
            dot_block_bf16::<8>(k, args.a, w.add(o * so), so, y.as_mut_ptr().add(o));
            o += 8;
        }
        while o + 4 <= len {
            dot_block_bf16::<4>(k, args.a, w.add(o * so), so, y.as_mut_ptr().add(o));
            o += 4;
        }
        while o < len {
            dot_block_bf16::<1>(k, args.a, w.add(o * so), so, y.as_mut_ptr().add(o));
            o += 1;
        }
        gemv::finish_row(args, 0, j, &mut y[..len], epi);
        j += len;
    }
}

// ---------------------------------------------------------------------------------------------
// Per-type dispatch.

/// x86 entry points of one element type.
pub(crate) trait X86: Sealed {
    /// Packed GEMM (single thread).
    unsafe fn packed<E: Fn(usize, usize, &mut [Self::A])>(isa: Isa, args: &Args<Self>, epi: &E);
    /// GEMV.
    unsafe fn gemv<E: Fn(usize, usize, &mut [Self::A])>(isa: Isa, args: &Args<Self>, epi: &E);
    /// Small path; false when there is none for this type/layout.
    unsafe fn small<E: Fn(usize, usize, &mut [Self::A])>(
        isa: Isa,
        args: &Args<Self>,
        epi: &E,
    ) -> bool;
}

macro_rules! x86_f32like {
    ($t:ty, $bf16:expr) => {
        impl X86 for $t {
            unsafe fn packed<E: Fn(usize, usize, &mut [f32])>(
                isa: Isa,
                args: &Args<Self>,
                epi: &E,
            ) {
                match isa {
                    Isa::Scalar | Isa::Avx2 => packed_256::<$t, K256<$t>, E>(args, epi),
                    Isa::Avx512Bf16 if $bf16 => bf16_dp(args, epi),
                    _ if rows_f32(args, epi) => {}
                    _ => packed_512::<$t, K512<$t>, E>(args, epi),
                }
            }
            unsafe fn gemv<E: Fn(usize, usize, &mut [f32])>(isa: Isa, args: &Args<Self>, epi: &E) {
                match isa {
                    _ if $bf16 && gemv1_bf16(isa, args, epi) => {}
                    _ if gemv1_f32(isa, args, epi) => {}
                    _ if gemv1_f16(isa, args, epi) => {}
                    Isa::Scalar | Isa::Avx2 => gemv_256::<$t, E, 8>(args, epi),
                    _ => gemv_512::<$t, E, 16>(args, epi),
                }
            }
            unsafe fn small<E: Fn(usize, usize, &mut [f32])>(
                isa: Isa,
                args: &Args<Self>,
                epi: &E,
            ) -> bool {
                small_f32(isa, args, epi)
            }
        }
    };
}

x86_f32like!(f32, false);
x86_f32like!(f16, false);
x86_f32like!(bf16, true);

/// Small path: only for `f32` with contiguous B rows.
#[inline(always)]
unsafe fn small_f32<T: Sealed, E: Fn(usize, usize, &mut [f32])>(
    isa: Isa,
    args: &Args<T>,
    epi: &E,
) -> bool {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() || args.csb != 1 {
        return false;
    }
    // SAFETY: T is f32 (checked above), so Args<T> is Args<f32>.
    let args = &*(args as *const Args<T> as *const Args<f32>);
    match isa {
        Isa::Scalar | Isa::Avx2 => small_256(args, epi),
        _ => small_512(args, epi),
    }
    true
}

/// The row-major-A `f32` path ([`super::rows`]) where it applies; false otherwise.
#[inline(always)]
unsafe fn rows_f32<T: Sealed, E: Fn(usize, usize, &mut [f32])>(args: &Args<T>, epi: &E) -> bool {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
        return false;
    }
    // SAFETY: T is f32 (checked above), so Args<T> is Args<f32>.
    let args = &*(args as *const Args<T> as *const Args<f32>);
    if !super::rows::applies(args) {
        return false;
    }
    super::rows::rows_512(args, epi);
    true
}

/// bf16 with `vdpbf16ps` (only reached for `T = bf16`).
#[inline(always)]
unsafe fn bf16_dp<T: Sealed<A = f32>, E: Fn(usize, usize, &mut [f32])>(args: &Args<T>, epi: &E) {
    debug_assert!(std::any::TypeId::of::<T>() == std::any::TypeId::of::<bf16>());
    // SAFETY: only instantiated for T = bf16 (the macro's `$bf16` flag).
    let args = &*(args as *const Args<T> as *const Args<bf16>);
    packed_512bf16::<bf16, KBf16, E>(args, epi)
}

impl X86 for f64 {
    unsafe fn packed<E: Fn(usize, usize, &mut [f64])>(isa: Isa, args: &Args<Self>, epi: &E) {
        match isa {
            Isa::Scalar | Isa::Avx2 => packed_256::<f64, K256d, E>(args, epi),
            _ => packed_512::<f64, K512d, E>(args, epi),
        }
    }
    unsafe fn gemv<E: Fn(usize, usize, &mut [f64])>(isa: Isa, args: &Args<Self>, epi: &E) {
        match isa {
            Isa::Scalar | Isa::Avx2 => gemv_256::<f64, E, 4>(args, epi),
            _ => gemv_512::<f64, E, 8>(args, epi),
        }
    }
    unsafe fn small<E: Fn(usize, usize, &mut [f64])>(
        _isa: Isa,
        _args: &Args<Self>,
        _epi: &E,
    ) -> bool {
        false
    }
}
