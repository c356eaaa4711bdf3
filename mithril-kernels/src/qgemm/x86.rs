//! x86-64 int8 kernels: AVX512_VNNI (`vpdpbusd`) and AVX2 (`i16` widening, `vpmaddwd`), plus
//! the multiversioned activation helpers.

use super::{PANEL, TILE_W};
use std::arch::x86_64::*;

/// The `vpdpbusd` tile (see `super::Kern`): `R` rows × `V` panels, one zmm accumulator each.
/// A's bytes are `q + 128`, so the sums are corrected by `128 · Σ_p qb(p, j)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
pub(super) unsafe fn k_vnni<const R: usize, const V: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    pstride: usize,
    sums: *const i32,
    tile: *mut i32,
) {
    let mut acc = [[_mm512_setzero_si512(); V]; R];
    for g in 0..kg {
        let mut bv = [_mm512_setzero_si512(); V];
        for (v, x) in bv.iter_mut().enumerate() {
            *x = _mm512_loadu_si512(b.add(v * pstride + g * 64) as *const _);
        }
        for (r, ar) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((a.add(r * lda + 4 * g) as *const i32).read_unaligned());
            for (x, bx) in ar.iter_mut().zip(bv.iter()) {
                *x = _mm512_dpbusd_epi32(*x, av, *bx);
            }
        }
    }
    for (v, _) in acc[0].iter().enumerate() {
        let corr = _mm512_slli_epi32::<7>(_mm512_loadu_si512(sums.add(v * PANEL) as *const _));
        for (r, ar) in acc.iter().enumerate() {
            _mm512_storeu_si512(
                tile.add(r * TILE_W + v * PANEL) as *mut _,
                _mm512_sub_epi32(ar[v], corr),
            );
        }
    }
}

/// The AVX2 tile: each 16-byte quarter of a 64-byte k-group (4 columns × 4 k) widened to
/// `i16`, multiplied with A's 4 k (also `i16`, `q + 128 - 128`) by `vpmaddwd` into pairs, the
/// pairs added at the end.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn k_avx2<const R: usize, const V: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    pstride: usize,
    _sums: *const i32,
    tile: *mut i32,
) {
    let off = _mm256_set1_epi16(128);
    for v in 0..V {
        let bp = b.add(v * pstride);
        let mut acc = [[_mm256_setzero_si256(); 4]; R];
        for g in 0..kg {
            let mut av = [_mm256_setzero_si256(); R];
            for (r, x) in av.iter_mut().enumerate() {
                let w = (a.add(r * lda + 4 * g) as *const i32).read_unaligned();
                *x = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_set1_epi32(w)), off);
            }
            for c in 0..4 {
                let bc = _mm256_cvtepi8_epi16(_mm_loadu_si128(bp.add(g * 64 + c * 16) as *const _));
                for (ar, x) in acc.iter_mut().zip(av.iter()) {
                    ar[c] = _mm256_add_epi32(ar[c], _mm256_madd_epi16(bc, *x));
                }
            }
        }
        for (r, ar) in acc.iter().enumerate() {
            // [c0 c1 c4 c5 | c2 c3 c6 c7] -> c0..c7
            let lo = _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(ar[0], ar[1]));
            let hi = _mm256_permute4x64_epi64::<0xD8>(_mm256_hadd_epi32(ar[2], ar[3]));
            let t = tile.add(r * TILE_W + v * PANEL);
            _mm256_storeu_si256(t as *mut _, lo);
            _mm256_storeu_si256(t.add(8) as *mut _, hi);
        }
    }
}

/// `max_abs` over contiguous rows (AVX2 copy of the portable loop).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn max_abs_rows(m: usize, k: usize, a: *const f32, rsa: usize) -> f32 {
    let mut best = 0f32;
    for i in 0..m {
        let r = std::slice::from_raw_parts(a.add(i * rsa), k);
        best = best.max(super::max_abs_row(r));
    }
    best
}

/// `quantize_row` (AVX2 copy).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row(r: &[f32], inv: f32, o: &mut [u8]) {
    super::quantize_row(r, inv, o)
}

/// `max_abs` over contiguous rows with AVX-512 (NaNs skipped, as the portable loop does).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn max_abs_rows_512(m: usize, k: usize, a: *const f32, rsa: usize) -> f32 {
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut best = 0f32;
    for i in 0..m {
        let r = a.add(i * rsa);
        let mut p = 0;
        while p + 64 <= k {
            for (u, x) in acc.iter_mut().enumerate() {
                // `max(v, acc)` keeps `acc` when `v` is NaN (the second operand wins)
                *x = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(r.add(p + 16 * u))), *x);
            }
            p += 64;
        }
        while p < k {
            let len = (k - p).min(16);
            let mask: __mmask16 = ((1u32 << len) - 1) as u16;
            let v = _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, r.add(p)));
            acc[0] = _mm512_max_ps(v, acc[0]);
            p += len;
        }
    }
    for x in acc {
        let mut l = [0f32; 16];
        _mm512_storeu_ps(l.as_mut_ptr(), x);
        for v in l {
            if v > best {
                best = v;
            }
        }
    }
    best
}

/// `quantize_row` with AVX-512, equal to `quantize_one` for every input: NaN to 0, clamped to
/// ±127 in float before the conversion (which rounds to nearest even), `+ 128`, narrowed.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
pub(super) unsafe fn quantize_row_512(r: &[f32], inv: f32, o: &mut [u8]) {
    let k = r.len().min(o.len());
    let (iv, lo, hi, off) = (
        _mm512_set1_ps(inv),
        _mm512_set1_ps(-127.0),
        _mm512_set1_ps(127.0),
        _mm512_set1_epi32(128),
    );
    let mut p = 0;
    while p < k {
        let len = (k - p).min(16);
        let mask: __mmask16 = ((1u32 << len) - 1) as u16;
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, r.as_ptr().add(p)), iv);
        let ord = _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v, v);
        let v = _mm512_min_ps(_mm512_max_ps(_mm512_maskz_mov_ps(ord, v), lo), hi);
        let q = _mm512_add_epi32(_mm512_cvtps_epi32(v), off);
        _mm512_mask_cvtepi32_storeu_epi8(o.as_mut_ptr().add(p) as *mut _, mask, q);
        p += len;
    }
}
