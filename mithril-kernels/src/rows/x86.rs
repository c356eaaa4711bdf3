//! x86-64 forms of the `f32` layer norm and RMS norm (AVX-512 and AVX2), chosen by
//! [`super::layer_norm`] / [`super::rms_norm`] when the element type is `f32`.
//!
//! They keep the portable form's structure exactly ([`super::f32_sums`]): element `i` of a
//! sub-block of [`SBF`] goes to `f32` lane `i % 32` (two `__m512` / four `__m256`
//! accumulators), the 32 lanes reduce by the same fixed tree (halves added: 16, 8, 4, 2, 1), the
//! sub-block totals add in `f64` in order; a sub-block's last `len % 32` elements are added one by
//! one into their lanes as the portable loop does. The per-row statistics are the shared
//! [`super::ln_stats`] / [`super::rms_rstd`], and the elementwise output uses the same operations
//! in the same order, without fused multiply-adds. So every path gives the baseline's bits
//! (`tests/rows.rs` and `isa_paths` check it). The AVX-512 layer norm sums four rows at once
//! (then two, then one), their additions interleaved so that the rows' dependency chains
//! overlap; its output stores full vectors unmasked and masks only the tail.

use super::{ln_stats, rms_rstd, NormStats, LF, SBF};
use std::arch::x86_64::*;

/// `a[0..4]` reduced by the tree's last two levels: `(a0 + a2) + (a1 + a3)`.
#[inline(always)]
unsafe fn tree4(s: __m128) -> f32 {
    let t = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)))
}

/// The 32 lanes (`a0` = lanes 0..16, `a1` = 16..32) reduced by the fixed tree.
#[inline(always)]
unsafe fn tree512(a0: __m512, a1: __m512) -> f32 {
    let s = _mm512_add_ps(a0, a1);
    let s = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps::<1>(s));
    tree4(_mm_add_ps(
        _mm256_castps256_ps128(s),
        _mm256_extractf128_ps::<1>(s),
    ))
}

/// The 32 lanes (four vectors of 8, lanes in order) reduced by the fixed tree.
#[inline(always)]
unsafe fn tree256(a: [__m256; 4]) -> f32 {
    let s = _mm256_add_ps(_mm256_add_ps(a[0], a[2]), _mm256_add_ps(a[1], a[3]));
    tree4(_mm_add_ps(
        _mm256_castps256_ps128(s),
        _mm256_extractf128_ps::<1>(s),
    ))
}

/// Adds the sub-block's tail (`t.len() < 32`) one by one into lanes `0..t.len()` of `lanes`.
#[inline(always)]
fn tail(lanes: &mut [[f32; LF]; 2], t: &[f32], fs: &impl Fn(f32) -> (f32, f32)) {
    for (j, &v) in t.iter().enumerate() {
        let (p, q) = fs(v);
        lanes[0][j] += p;
        lanes[1][j] += q;
    }
}

/// [`super::f32_sums`] on AVX-512 for `R` rows of one length at once (their additions
/// interleaved: the rows' dependency chains overlap): `fv(r, ·)` on 16 lanes of row `r`,
/// `fs(r, ·)` on one (the same operations); the second sum only when `TWO`.
#[inline(always)]
unsafe fn sums512<const R: usize, const TWO: bool>(
    xs: [&[f32]; R],
    fv: impl Fn(usize, __m512) -> (__m512, __m512),
    fs: impl Fn(usize, f32) -> (f32, f32),
) -> [(f64, f64); R] {
    let len = xs[0].len();
    let mut s = [(0f64, 0f64); R];
    let mut start = 0;
    while start < len {
        let end = (start + SBF).min(len);
        let z = _mm512_setzero_ps();
        let mut acc = [[z; 4]; R];
        let full = start + (end - start) / LF * LF;
        let mut i = start;
        while i < full {
            for r in 0..R {
                let p = xs[r].as_ptr().add(i);
                let (p0, q0) = fv(r, _mm512_loadu_ps(p));
                let (p1, q1) = fv(r, _mm512_loadu_ps(p.add(16)));
                let a = &mut acc[r];
                a[0] = _mm512_add_ps(a[0], p0);
                a[1] = _mm512_add_ps(a[1], p1);
                if TWO {
                    a[2] = _mm512_add_ps(a[2], q0);
                    a[3] = _mm512_add_ps(a[3], q1);
                }
            }
            i += LF;
        }
        for r in 0..R {
            let a = &mut acc[r];
            if full < end {
                let mut l = [[0f32; LF]; 2];
                _mm512_storeu_ps(l[0].as_mut_ptr(), a[0]);
                _mm512_storeu_ps(l[0].as_mut_ptr().add(16), a[1]);
                _mm512_storeu_ps(l[1].as_mut_ptr(), a[2]);
                _mm512_storeu_ps(l[1].as_mut_ptr().add(16), a[3]);
                tail(&mut l, &xs[r][full..end], &|v| fs(r, v));
                a[0] = _mm512_loadu_ps(l[0].as_ptr());
                a[1] = _mm512_loadu_ps(l[0].as_ptr().add(16));
                a[2] = _mm512_loadu_ps(l[1].as_ptr());
                a[3] = _mm512_loadu_ps(l[1].as_ptr().add(16));
            }
            s[r].0 += tree512(a[0], a[1]) as f64;
            if TWO {
                s[r].1 += tree512(a[2], a[3]) as f64;
            }
        }
        start = end;
    }
    s
}

/// [`super::f32_sums`] on AVX2: `fv` on 8 lanes, `fs` on one.
#[inline(always)]
unsafe fn sums256(
    x: &[f32],
    fv: impl Fn(__m256) -> (__m256, __m256),
    fs: impl Fn(f32) -> (f32, f32),
) -> (f64, f64) {
    let (mut s0, mut s1) = (0f64, 0f64);
    for sb in x.chunks(SBF) {
        let mut a = [_mm256_setzero_ps(); 4];
        let mut b = a;
        let mut it = sb.chunks_exact(LF);
        for c in &mut it {
            for k in 0..4 {
                let (p, q) = fv(_mm256_loadu_ps(c.as_ptr().add(8 * k)));
                a[k] = _mm256_add_ps(a[k], p);
                b[k] = _mm256_add_ps(b[k], q);
            }
        }
        let t = it.remainder();
        if !t.is_empty() {
            let mut l = [[0f32; LF]; 2];
            for k in 0..4 {
                _mm256_storeu_ps(l[0].as_mut_ptr().add(8 * k), a[k]);
                _mm256_storeu_ps(l[1].as_mut_ptr().add(8 * k), b[k]);
            }
            tail(&mut l, t, &fs);
            for k in 0..4 {
                a[k] = _mm256_loadu_ps(l[0].as_ptr().add(8 * k));
                b[k] = _mm256_loadu_ps(l[1].as_ptr().add(8 * k));
            }
        }
        s0 += tree256(a) as f64;
        s1 += tree256(b) as f64;
    }
    (s0, s1)
}

/// One output row of the layer norm, `o = ((x − m₀)·r + k)·γ + β` (the factors present), on
/// AVX-512: 16 lanes, the tail masked.
#[inline(always)]
unsafe fn ln_out512(
    xr: &[f32],
    g: Option<&[f32]>,
    b: Option<&[f32]>,
    m0: f32,
    rc: f32,
    k: f32,
    or: &mut [f32],
) {
    let n = xr.len();
    let (mv, rv, kv) = (_mm512_set1_ps(m0), _mm512_set1_ps(rc), _mm512_set1_ps(k));
    let one = |i: usize, m: __mmask16| {
        let xv = _mm512_maskz_loadu_ps(m, xr.as_ptr().add(i));
        let mut y = _mm512_add_ps(_mm512_mul_ps(_mm512_sub_ps(xv, mv), rv), kv);
        if let Some(g) = g {
            y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, g.as_ptr().add(i)));
        }
        if let Some(b) = b {
            y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(m, b.as_ptr().add(i)));
        }
        y
    };
    // full vectors with plain loads and stores (a constant all-ones mask folds away), the
    // tail masked
    let n16 = n / 16 * 16;
    let mut i = 0;
    while i < n16 {
        _mm512_storeu_ps(or.as_mut_ptr().add(i), one(i, 0xffff));
        i += 16;
    }
    if n16 < n {
        let m = ((1u32 << (n - n16)) - 1) as __mmask16;
        _mm512_mask_storeu_ps(or.as_mut_ptr().add(n16), m, one(n16, m));
    }
}

/// [`ln_out512`] on AVX2: 8 lanes, the tail one by one.
#[inline(always)]
unsafe fn ln_out256(
    xr: &[f32],
    g: Option<&[f32]>,
    b: Option<&[f32]>,
    m0: f32,
    rc: f32,
    k: f32,
    or: &mut [f32],
) {
    let n = xr.len();
    let (mv, rv, kv) = (_mm256_set1_ps(m0), _mm256_set1_ps(rc), _mm256_set1_ps(k));
    let n8 = n / 8 * 8;
    let mut i = 0;
    while i < n8 {
        let xv = _mm256_loadu_ps(xr.as_ptr().add(i));
        let mut y = _mm256_add_ps(_mm256_mul_ps(_mm256_sub_ps(xv, mv), rv), kv);
        if let Some(g) = g {
            y = _mm256_mul_ps(y, _mm256_loadu_ps(g.as_ptr().add(i)));
        }
        if let Some(b) = b {
            y = _mm256_add_ps(y, _mm256_loadu_ps(b.as_ptr().add(i)));
        }
        _mm256_storeu_ps(or.as_mut_ptr().add(i), y);
        i += 8;
    }
    for i in n8..n {
        let mut y = (xr[i] - m0) * rc + k;
        if let Some(g) = g {
            y *= g[i];
        }
        if let Some(b) = b {
            y += b[i];
        }
        or[i] = y;
    }
}

/// The `f32` layer norm on AVX-512 (see the module docs): rows in pairs (their sums
/// interleaved), an odd last row alone.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub(super) unsafe fn layer_norm_avx512(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut stats: Option<NormStats<'_, f32>>,
) {
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn rows_r<const R: usize>(
        x: &[f32],
        cols: usize,
        r0: usize,
        gamma: Option<&[f32]>,
        beta: Option<&[f32]>,
        eps: f64,
        out: &mut [f32],
        stats: &mut Option<NormStats<'_, f32>>,
    ) {
        let xs: [&[f32]; R] = std::array::from_fn(|k| &x[(r0 + k) * cols..(r0 + k + 1) * cols]);
        let s = sums512::<R, false>(xs, |_, v| (v, _mm512_setzero_ps()), |_, v| (v, 0.0));
        let m0: [f32; R] = std::array::from_fn(|k| (s[k].0 / cols as f64) as f32);
        let mv: [__m512; R] = std::array::from_fn(|k| _mm512_set1_ps(m0[k]));
        let sq = sums512::<R, true>(
            xs,
            |k, v| {
                let d = _mm512_sub_ps(v, mv[k]);
                (d, _mm512_mul_ps(d, d))
            },
            |k, v| {
                let d = v - m0[k];
                (d, d * d)
            },
        );
        for k in 0..R {
            let (mean, rc, kk) = ln_stats(cols, m0[k], sq[k].0, sq[k].1, eps);
            if let Some(st) = stats.as_mut() {
                st.mean[r0 + k] = mean;
                st.rstd[r0 + k] = rc;
            }
            let or = &mut out[(r0 + k) * cols..(r0 + k + 1) * cols];
            ln_out512(xs[k], gamma, beta, m0[k], rc, kk, or);
        }
    }
    let rows = out.len() / cols;
    let gamma = gamma.map(|g| &g[..cols]);
    let beta = beta.map(|b| &b[..cols]);
    let mut r = 0;
    while r + 4 <= rows {
        rows_r::<4>(x, cols, r, gamma, beta, eps, out, &mut stats);
        r += 4;
    }
    if r + 2 <= rows {
        rows_r::<2>(x, cols, r, gamma, beta, eps, out, &mut stats);
        r += 2;
    }
    if r < rows {
        rows_r::<1>(x, cols, r, gamma, beta, eps, out, &mut stats);
    }
}

/// The `f32` layer norm on AVX2 (see the module docs).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn layer_norm_avx2(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    beta: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut stats: Option<NormStats<'_, f32>>,
) {
    let rows = out.len() / cols;
    let gamma = gamma.map(|g| &g[..cols]);
    let beta = beta.map(|b| &b[..cols]);
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let or = &mut out[r * cols..(r + 1) * cols];
        let s = sums256(xr, |v| (v, _mm256_setzero_ps()), |v| (v, 0.0)).0;
        let m0 = (s / cols as f64) as f32;
        let mv = _mm256_set1_ps(m0);
        let (sd, sq) = sums256(
            xr,
            |v| {
                let d = _mm256_sub_ps(v, mv);
                (d, _mm256_mul_ps(d, d))
            },
            |v| {
                let d = v - m0;
                (d, d * d)
            },
        );
        let (mean, rc, k) = ln_stats(cols, m0, sd, sq, eps);
        if let Some(st) = stats.as_mut() {
            st.mean[r] = mean;
            st.rstd[r] = rc;
        }
        ln_out256(xr, gamma, beta, m0, rc, k, or);
    }
}

/// The `f32` RMS norm on AVX-512 (see the module docs).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
pub(super) unsafe fn rms_norm_avx512(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut rstd_out: Option<&mut [f32]>,
) {
    let rows = out.len() / cols;
    let gamma = gamma.map(|g| &g[..cols]);
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let or = &mut out[r * cols..(r + 1) * cols];
        let sq = sums512::<1, false>(
            [xr],
            |_, v| (_mm512_mul_ps(v, v), _mm512_setzero_ps()),
            |_, v| (v * v, 0.0),
        )[0]
        .0;
        let rc = rms_rstd(cols, sq, eps);
        if let Some(ro) = rstd_out.as_deref_mut() {
            ro[r] = rc;
        }
        let rv = _mm512_set1_ps(rc);
        let one = |i: usize, m: __mmask16| {
            let mut y = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, xr.as_ptr().add(i)), rv);
            if let Some(g) = gamma {
                y = _mm512_mul_ps(y, _mm512_maskz_loadu_ps(m, g.as_ptr().add(i)));
            }
            y
        };
        let n16 = cols / 16 * 16;
        let mut i = 0;
        while i < n16 {
            _mm512_storeu_ps(or.as_mut_ptr().add(i), one(i, 0xffff));
            i += 16;
        }
        if n16 < cols {
            let m = ((1u32 << (cols - n16)) - 1) as __mmask16;
            _mm512_mask_storeu_ps(or.as_mut_ptr().add(n16), m, one(n16, m));
        }
    }
}

/// The `f32` RMS norm on AVX2 (see the module docs).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rms_norm_avx2(
    x: &[f32],
    cols: usize,
    gamma: Option<&[f32]>,
    eps: f64,
    out: &mut [f32],
    mut rstd_out: Option<&mut [f32]>,
) {
    let rows = out.len() / cols;
    let gamma = gamma.map(|g| &g[..cols]);
    for r in 0..rows {
        let xr = &x[r * cols..(r + 1) * cols];
        let or = &mut out[r * cols..(r + 1) * cols];
        let sq = sums256(
            xr,
            |v| (_mm256_mul_ps(v, v), _mm256_setzero_ps()),
            |v| (v * v, 0.0),
        )
        .0;
        let rc = rms_rstd(cols, sq, eps);
        if let Some(ro) = rstd_out.as_deref_mut() {
            ro[r] = rc;
        }
        let rv = _mm256_set1_ps(rc);
        let n8 = cols / 8 * 8;
        let mut i = 0;
        while i < n8 {
            let mut y = _mm256_mul_ps(_mm256_loadu_ps(xr.as_ptr().add(i)), rv);
            if let Some(g) = gamma {
                y = _mm256_mul_ps(y, _mm256_loadu_ps(g.as_ptr().add(i)));
            }
            _mm256_storeu_ps(or.as_mut_ptr().add(i), y);
            i += 8;
        }
        for i in n8..cols {
            let mut y = xr[i] * rc;
            if let Some(g) = gamma {
                y *= g[i];
            }
            or[i] = y;
        }
    }
}
