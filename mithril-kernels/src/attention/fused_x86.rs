//! The x86-64 forms of the fused tile kernel ([`super::fused`]): AVX-512 on 12 query rows ×
//! 32 keys (scores) / 32 output columns (`P·V`), AVX2 on 6 × 16; 24 / 12 accumulators.
//!
//! Both forms work in base 2 ([`TileOps::LOG2`]): the score tile is scaled by `scale · log2 e`
//! in its registers, so the row update's exponential is `2^(s − m)` with no multiplication:
//! `n = round(x)`, a degree-6 polynomial for `2^f` on `[-½, ½]` (relative error under 1e-7,
//! fitted to `2^f`), then `· 2ⁿ` (`vscalefps` on AVX-512, exponent bits on AVX2); arguments
//! below `-126` give 0 (a masked `-∞` too), NaN stays NaN. The scalar `alpha = 2^(m_old −
//! m_new)` per row is [`crate::vmath::exp`] of it times `ln 2`.
//!
//! A full row group reads its 12 `Q` rows in place when their stride lets them share the L1
//! with the key strip ([`rows_fit_l1`], the GEMM rows path's rule); partial groups and crowded
//! strides are packed. Partial groups run on register tiles of 8 or 4 rows (AVX2: 3).

use super::fused::{PvIo, TileOps, SLD};
use super::{Dims, Dropout, Layout, Mask};
use crate::gemm::x86::{pack_lanes_256, pack_lanes_512};
use std::arch::x86_64::*;

// 2^f ≈ 1 + f·(C1 + f·(C2 + … + f·C6)) on [-½, ½]
const C1: f32 = std::f32::consts::LN_2;
const C2: f32 = 0.240_226_48;
const C3: f32 = 0.055_503_324;
const C4: f32 = 0.009_618_437;
const C5: f32 = 0.001_339_887_5;
const C6: f32 = 0.000_153_533_62;

/// Whether 12 `Q` rows `ld` floats apart can be broadcast from in place (the GEMM rows path's
/// rule for A: at most 4 rows per L1 set). The encoder's in-projection (`ld` 768, 3 KiB) puts 3
/// rows in each of 4 sets; a 4 KiB stride would put all 12 in one set and is packed instead.
#[inline(always)]
fn rows_fit_l1(ld: usize) -> bool {
    crate::gemm::rows::rows_fit_l1(12, ld)
}

/// The AVX-512 form.
pub(crate) struct X512;

/// The AVX2 form.
pub(crate) struct X256;

impl TileOps<f32> for X512 {
    const G: usize = 12;
    const LOG2: bool = true;
    const W: usize = 32;
    const DW: usize = 32;

    #[inline(always)]
    unsafe fn pack_q(rows: usize, src: *const f32, ld: usize, d: usize, dst: *mut f32) {
        if rows == 12 {
            pack_lanes_512::<f32, 3>(src, ld, d, dst)
        } else {
            super::fused::pack_scalar(rows, 12, 12, src, ld, d, dst)
        }
    }
    #[inline(always)]
    unsafe fn pack_k(n: usize, src: *const f32, ld: usize, d: usize, dst: *mut f32) {
        if n == 32 {
            pack_lanes_512::<f32, 8>(src, ld, d, dst)
        } else {
            super::fused::pack_scalar(n, n, 32, src, ld, d, dst)
        }
    }
    #[inline(always)]
    fn q_in_place(ld: usize) -> bool {
        rows_fit_l1(ld)
    }
    #[inline(always)]
    unsafe fn scores(
        rows: usize,
        d: usize,
        qp: *const f32,
        qld: usize,
        kt: *const f32,
        scale: f32,
        lim0: isize,
        s: *mut f32,
    ) {
        match rows {
            _ if qld != 0 => scores_512::<12, true>(d, qp, qld, kt, scale, lim0, s),
            9.. => scores_512::<12, false>(d, qp, 1, kt, scale, lim0, s),
            5..=8 => scores_512::<8, false>(d, qp, 1, kt, scale, lim0, s),
            _ => scores_512::<4, false>(d, qp, 1, kt, scale, lim0, s),
        }
    }
    #[inline(always)]
    unsafe fn update(rows: usize, bc: usize, s: *mut f32, m: *mut f32, l: *mut f32, al: *mut f32) {
        update_512(rows, bc, s, m, l, al)
    }
    #[inline(always)]
    unsafe fn pv(
        bc: usize,
        p: *const f32,
        v: *const f32,
        ldv: usize,
        ncols: usize,
        io: &PvIo<f32>,
    ) {
        match (ncols > 16, io.rows) {
            (true, 9..) => pv_512::<2, 12>(bc, p, v, ldv, ncols, io),
            (true, 5..=8) => pv_512::<2, 8>(bc, p, v, ldv, ncols, io),
            (true, _) => pv_512::<2, 4>(bc, p, v, ldv, ncols, io),
            (false, 9..) => pv_512::<1, 12>(bc, p, v, ldv, ncols, io),
            (false, 5..=8) => pv_512::<1, 8>(bc, p, v, ldv, ncols, io),
            (false, _) => pv_512::<1, 4>(bc, p, v, ldv, ncols, io),
        }
    }
}

impl TileOps<f32> for X256 {
    const G: usize = 6;
    const LOG2: bool = true;
    const W: usize = 16;
    const DW: usize = 16;

    #[inline(always)]
    unsafe fn pack_k(n: usize, src: *const f32, ld: usize, d: usize, dst: *mut f32) {
        if n == 16 {
            pack_lanes_256::<f32, 4>(src, ld, d, dst)
        } else {
            super::fused::pack_scalar(n, n, 16, src, ld, d, dst)
        }
    }
    #[inline(always)]
    unsafe fn scores(
        rows: usize,
        d: usize,
        qp: *const f32,
        _qld: usize,
        kt: *const f32,
        scale: f32,
        lim0: isize,
        s: *mut f32,
    ) {
        if rows > 3 {
            scores_256::<6>(d, qp, kt, scale, lim0, s)
        } else {
            scores_256::<3>(d, qp, kt, scale, lim0, s)
        }
    }
    #[inline(always)]
    unsafe fn update(rows: usize, bc: usize, s: *mut f32, m: *mut f32, l: *mut f32, al: *mut f32) {
        update_256(rows, bc, s, m, l, al)
    }
    #[inline(always)]
    unsafe fn pv(
        bc: usize,
        p: *const f32,
        v: *const f32,
        ldv: usize,
        ncols: usize,
        io: &PvIo<f32>,
    ) {
        match (ncols, io.rows > 3) {
            (16, true) => pv_256::<2, true, 6>(bc, p, v, ldv, ncols, io),
            (9.., true) => pv_256::<2, false, 6>(bc, p, v, ldv, ncols, io),
            (_, true) => pv_256::<1, false, 6>(bc, p, v, ldv, ncols, io),
            (16, false) => pv_256::<2, true, 3>(bc, p, v, ldv, ncols, io),
            (9.., false) => pv_256::<2, false, 3>(bc, p, v, ldv, ncols, io),
            (_, false) => pv_256::<1, false, 3>(bc, p, v, ldv, ncols, io),
        }
    }
}

/// The fused forward on AVX-512 (see [`super::fused::run`]).
///
/// # Safety
/// AVX-512 (F, VL, BW, DQ), AVX2 and FMA present; `dims` checked against the slices.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_512(
    dims: &Dims,
    q: (&[f32], Layout),
    k: (&[f32], Layout),
    v: (&[f32], Layout),
    mask: Mask<'_, f32>,
    causal: bool,
    scale: f32,
    drop: Option<&Dropout>,
    out: (&mut [f32], Layout),
    lse: Option<&mut [f32]>,
) {
    super::fused::run::<f32, X512>(dims, q, k, v, mask, causal, scale, drop, out, lse)
}

/// The fused forward on AVX2 (see [`super::fused::run`]).
///
/// # Safety
/// AVX2 and FMA present; `dims` checked against the slices.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn run_256(
    dims: &Dims,
    q: (&[f32], Layout),
    k: (&[f32], Layout),
    v: (&[f32], Layout),
    mask: Mask<'_, f32>,
    causal: bool,
    scale: f32,
    drop: Option<&Dropout>,
    out: (&mut [f32], Layout),
    lse: Option<&mut [f32]>,
) {
    super::fused::run::<f32, X256>(dims, q, k, v, mask, causal, scale, drop, out, lse)
}

// ---------------------------------------------------------------------------------------------
// AVX-512

/// The lanes `0..n` (`n ≤ 16`).
#[inline(always)]
fn lanes(n: usize) -> u16 {
    ((1u32 << n.min(16)) - 1) as u16
}

/// `2^x2` for `x2 ≤ 0` (0 below `2^-126`, NaN kept), 16 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
unsafe fn exp2_512(x2: __m512) -> __m512 {
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x2);
    let f = _mm512_sub_ps(x2, n);
    let mut p = _mm512_fmadd_ps(_mm512_set1_ps(C6), f, _mm512_set1_ps(C5));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C4));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C3));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C2));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(C1));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0));
    let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x2, _mm512_set1_ps(-126.0));
    _mm512_maskz_scalef_ps(keep, p, n)
}

/// [`TileOps::scores`] on AVX-512: an `R` × 32 register tile over `d` steps (`R` ≤ 12 of the
/// packed group's 12 rows: a partial group computes only the rows it has, rounded up to 4).
/// `INPLACE`: `Q(r, c) = qp[r·qld + c]` (a full group's rows in place, as the GEMM's rows path
/// reads A), else the packed `qp[c·12 + r]`.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[inline(never)]
unsafe fn scores_512<const R: usize, const INPLACE: bool>(
    d: usize,
    qp: *const f32,
    qld: usize,
    kt: *const f32,
    scale: f32,
    lim0: isize,
    s: *mut f32,
) {
    let mut c = [[_mm512_setzero_ps(); 2]; R];
    let (mut a, mut b) = (qp, kt);
    for _ in 0..d {
        let b0 = _mm512_loadu_ps(b);
        let b1 = _mm512_loadu_ps(b.add(16));
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(if INPLACE { r * qld } else { r }));
            cr[0] = _mm512_fmadd_ps(av, b0, cr[0]);
            cr[1] = _mm512_fmadd_ps(av, b1, cr[1]);
        }
        a = a.add(if INPLACE { 1 } else { 12 });
        b = b.add(32);
    }
    // the tile stored whole (a register loop the compiler unrolls: the accumulators never go
    // through memory), then a causal diagonal's keys after each query set to -∞ in `s`
    let sc = _mm512_set1_ps(scale);
    for (r, cr) in c.iter().enumerate() {
        for (v, x) in cr.iter().enumerate() {
            _mm512_storeu_ps(s.add(r * SLD + 16 * v), _mm512_mul_ps(*x, sc));
        }
    }
    if lim0 < 32 {
        let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
        for r in 0..R {
            for v in 0..2 {
                let lim = lim0.saturating_add(r as isize - 16 * v as isize);
                if lim < 16 {
                    let drop = !lanes(lim.max(0) as usize);
                    _mm512_mask_storeu_ps(s.add(r * SLD + 16 * v), drop, ninf);
                }
            }
        }
    }
}

/// Four rows' 16-lane partial maxima (`MAX`) or sums reduced at once: quad `k` (lanes
/// `4k..4k + 4`) of the result holds row `k`'s total in each lane. A transposed reduction
/// (two `vshuff32x4` steps, then two in-lane permutes): 6 shuffles and 4 operations for the
/// four rows, where reducing each row alone takes 6 and 4 per row.
#[inline(always)]
unsafe fn reduce4_512<const MAX: bool>(v: [__m512; 4]) -> __m512 {
    let op = |a: __m512, b: __m512| {
        if MAX {
            _mm512_max_ps(a, b)
        } else {
            _mm512_add_ps(a, b)
        }
    };
    // quads [r0 x, r0 y, r1 x, r1 y] and [r2 x, r2 y, r3 x, r3 y] (x: quads 0+2, y: 1+3)
    let c01 = op(
        _mm512_shuffle_f32x4::<0x44>(v[0], v[1]),
        _mm512_shuffle_f32x4::<0xEE>(v[0], v[1]),
    );
    let c23 = op(
        _mm512_shuffle_f32x4::<0x44>(v[2], v[3]),
        _mm512_shuffle_f32x4::<0xEE>(v[2], v[3]),
    );
    // quad k: row k's 4 partials
    let d = op(
        _mm512_shuffle_f32x4::<0x88>(c01, c23),
        _mm512_shuffle_f32x4::<0xDD>(c01, c23),
    );
    let d = op(d, _mm512_permute_ps::<0x4E>(d));
    op(d, _mm512_permute_ps::<0xB1>(d))
}

/// The twelve rows' totals of [`reduce4_512`]: row `r` at `out[4r]`.
#[inline(always)]
unsafe fn reduce12_512<const MAX: bool>(v: &[__m512; 12], out: &mut [f32; 48]) {
    for k in 0..3 {
        let x = reduce4_512::<MAX>([v[4 * k], v[4 * k + 1], v[4 * k + 2], v[4 * k + 3]]);
        _mm512_storeu_ps(out.as_mut_ptr().add(16 * k), x);
    }
}

/// [`TileOps::update`] on AVX-512: the twelve rows' maxima in one pass (their horizontal
/// maxima by [`reduce12_512`]), then each row's exponentials, then their sums reduced together.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[inline(never)]
unsafe fn update_512(rows: usize, bc: usize, s: *mut f32, m: *mut f32, l: *mut f32, al: *mut f32) {
    let (nfull, tk) = (bc / 16, lanes(bc % 16));
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    let rows = rows.min(12);
    // each row's 16-lane maximum (a NaN score is ignored, as `f32::max` does); padded rows -∞
    let mut mv = [ninf; 12];
    for (r, mr) in mv.iter_mut().enumerate().take(rows) {
        let row = s.add(r * SLD);
        let (mut m0, mut m1) = (ninf, ninf);
        let mut q = 0;
        while q + 2 <= nfull {
            m0 = _mm512_max_ps(_mm512_loadu_ps(row.add(16 * q)), m0);
            m1 = _mm512_max_ps(_mm512_loadu_ps(row.add(16 * q + 16)), m1);
            q += 2;
        }
        if q < nfull {
            m0 = _mm512_max_ps(_mm512_loadu_ps(row.add(16 * q)), m0);
        }
        m1 = _mm512_max_ps(_mm512_mask_loadu_ps(ninf, tk, row.add(16 * nfull)), m1);
        *mr = _mm512_max_ps(m0, m1);
    }
    let mut red = [0f32; 48];
    reduce12_512::<true>(&mv, &mut red);
    let mut sv = [_mm512_setzero_ps(); 12];
    let mut mnew = [f32::NEG_INFINITY; 12];
    for r in 0..12 {
        let row = s.add(r * SLD);
        let m_new = if r < rows {
            let (mx, m_old) = (red[4 * r], *m.add(r));
            if mx > m_old {
                mx
            } else {
                m_old
            }
        } else {
            f32::NEG_INFINITY
        };
        mnew[r] = m_new;
        if m_new == f32::NEG_INFINITY {
            // a padded or (so far) fully masked row: P = 0
            for q in 0..nfull {
                _mm512_storeu_ps(row.add(16 * q), _mm512_setzero_ps());
            }
            _mm512_mask_storeu_ps(row.add(16 * nfull), tk, _mm512_setzero_ps());
            continue;
        }
        let mb = _mm512_set1_ps(m_new);
        let (mut s0, mut s1) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        let mut q = 0;
        while q + 2 <= nfull {
            let p0 = exp2_512(_mm512_sub_ps(_mm512_loadu_ps(row.add(16 * q)), mb));
            let p1 = exp2_512(_mm512_sub_ps(_mm512_loadu_ps(row.add(16 * q + 16)), mb));
            _mm512_storeu_ps(row.add(16 * q), p0);
            _mm512_storeu_ps(row.add(16 * q + 16), p1);
            s0 = _mm512_add_ps(s0, p0);
            s1 = _mm512_add_ps(s1, p1);
            q += 2;
        }
        if q < nfull {
            let p0 = exp2_512(_mm512_sub_ps(_mm512_loadu_ps(row.add(16 * q)), mb));
            _mm512_storeu_ps(row.add(16 * q), p0);
            s0 = _mm512_add_ps(s0, p0);
        }
        if tk != 0 {
            let x = _mm512_mask_loadu_ps(ninf, tk, row.add(16 * nfull));
            let p = exp2_512(_mm512_sub_ps(x, mb));
            _mm512_mask_storeu_ps(row.add(16 * nfull), tk, p);
            s1 = _mm512_add_ps(s1, p);
        }
        sv[r] = _mm512_add_ps(s0, s1);
    }
    reduce12_512::<false>(&sv, &mut red);
    for r in 0..12 {
        let m_new = mnew[r];
        if m_new == f32::NEG_INFINITY {
            *al.add(r) = 1.0;
            continue;
        }
        let m_old = *m.add(r);
        let a = if m_old == f32::NEG_INFINITY {
            0.0
        } else {
            crate::vmath::exp((m_old - m_new) * std::f32::consts::LN_2)
        };
        *al.add(r) = a;
        *l.add(r) = *l.add(r) * a + red[4 * r];
        *m.add(r) = m_new;
    }
}

/// [`TileOps::pv`] on AVX-512: an `R` × `16·NV` register tile over `bc` steps (`R` ≤ 12: the
/// group's rows rounded up to 4), started and stored as `io` says.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")]
#[inline(never)]
unsafe fn pv_512<const NV: usize, const R: usize>(
    bc: usize,
    p: *const f32,
    v: *const f32,
    ldv: usize,
    ncols: usize,
    io: &PvIo<f32>,
) {
    let km = [lanes(ncols), lanes(ncols.saturating_sub(16))];
    let mut c = [[_mm512_setzero_ps(); NV]; R];
    if !io.first {
        for (r, cr) in c.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*io.alpha.add(r));
            for (x, cx) in cr.iter_mut().enumerate() {
                let at = io.o.add(r * io.ldo + 16 * x);
                *cx = _mm512_mul_ps(_mm512_maskz_loadu_ps(km[x], at), a);
            }
        }
    }
    let (mut pp, mut vp) = (p, v);
    for _ in 0..bc {
        let mut b = [_mm512_setzero_ps(); NV];
        for (x, bx) in b.iter_mut().enumerate() {
            *bx = _mm512_maskz_loadu_ps(km[x], vp.add(16 * x));
        }
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*pp.add(r * SLD));
            for x in 0..NV {
                cr[x] = _mm512_fmadd_ps(av, b[x], cr[x]);
            }
        }
        pp = pp.add(1);
        vp = vp.add(ldv);
    }
    if io.last {
        for (r, cr) in c.iter().enumerate() {
            if r < io.rows {
                let inv = _mm512_set1_ps(*io.inv.add(r));
                for (x, cx) in cr.iter().enumerate() {
                    let at = io.dst.add(r * io.ldd + 16 * x);
                    _mm512_mask_storeu_ps(at, km[x], _mm512_mul_ps(*cx, inv));
                }
            }
        }
    } else {
        for (r, cr) in c.iter().enumerate() {
            for (x, cx) in cr.iter().enumerate() {
                _mm512_mask_storeu_ps(io.o.add(r * io.ldo + 16 * x), km[x], *cx);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2

/// Lane `i` all ones for `i < n` (`n ≤ 8`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn mask_256(n: usize) -> __m256i {
    let idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    _mm256_cmpgt_epi32(_mm256_set1_epi32(n.min(8) as i32), idx)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_256(v: __m256) -> f32 {
    let x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_max_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_max_ss(x, _mm_movehdup_ps(x));
    _mm_cvtss_f32(x)
}

#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_256(v: __m256) -> f32 {
    let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    let x = _mm_add_ss(x, _mm_movehdup_ps(x));
    _mm_cvtss_f32(x)
}

/// `2^x2` for `x2 ≤ 0` (0 below `2^-126`, NaN kept), 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn exp2_256(x2: __m256) -> __m256 {
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x2);
    let f = _mm256_sub_ps(x2, n);
    let mut p = _mm256_fmadd_ps(_mm256_set1_ps(C6), f, _mm256_set1_ps(C5));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(C4));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(C3));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(C2));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(C1));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0));
    // 2ⁿ from its exponent bits (n ≥ -126 where kept; the clamp keeps -∞ / NaN lanes harmless)
    let ni = _mm256_cvtps_epi32(_mm256_max_ps(n, _mm256_set1_ps(-127.0)));
    let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        ni,
        _mm256_set1_epi32(127),
    )));
    let keep = _mm256_cmp_ps::<_CMP_NLT_UQ>(x2, _mm256_set1_ps(-126.0));
    _mm256_and_ps(_mm256_mul_ps(p, pow), keep)
}

/// [`TileOps::scores`] on AVX2: an `R` × 16 register tile over `d` steps (`R` ≤ 6 of the
/// packed group's 6 rows: 3 for a group of at most 3).
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
unsafe fn scores_256<const R: usize>(
    d: usize,
    qp: *const f32,
    kt: *const f32,
    scale: f32,
    lim0: isize,
    s: *mut f32,
) {
    let mut c = [[_mm256_setzero_ps(); 2]; R];
    let (mut a, mut b) = (qp, kt);
    for _ in 0..d {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(r));
            cr[0] = _mm256_fmadd_ps(av, b0, cr[0]);
            cr[1] = _mm256_fmadd_ps(av, b1, cr[1]);
        }
        a = a.add(6);
        b = b.add(16);
    }
    // the tile stored whole, then a causal diagonal's keys after each query set to -∞ in `s`
    // (see `scores_512`)
    let sc = _mm256_set1_ps(scale);
    for (r, cr) in c.iter().enumerate() {
        for (v, x) in cr.iter().enumerate() {
            _mm256_storeu_ps(s.add(r * SLD + 8 * v), _mm256_mul_ps(*x, sc));
        }
    }
    if lim0 < 16 {
        let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
        for r in 0..R {
            for v in 0..2 {
                let lim = lim0.saturating_add(r as isize - 8 * v as isize);
                if lim < 8 {
                    // lanes at or past `lim` masked
                    let drop =
                        _mm256_xor_si256(mask_256(lim.max(0) as usize), _mm256_set1_epi32(-1));
                    _mm256_maskstore_ps(s.add(r * SLD + 8 * v), drop, ninf);
                }
            }
        }
    }
}

/// [`TileOps::update`] on AVX2.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
unsafe fn update_256(rows: usize, bc: usize, s: *mut f32, m: *mut f32, l: *mut f32, al: *mut f32) {
    let (nfull, tail) = (bc / 8, bc % 8);
    let tm = mask_256(tail);
    let tmf = _mm256_castsi256_ps(tm);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    for r in 0..6 {
        let row = s.add(r * SLD);
        let zero_row = || {
            for q in 0..nfull {
                _mm256_storeu_ps(row.add(8 * q), _mm256_setzero_ps());
            }
            _mm256_maskstore_ps(row.add(8 * nfull), tm, _mm256_setzero_ps());
        };
        if r >= rows {
            zero_row();
            *al.add(r) = 1.0;
            continue;
        }
        let (mut m0, mut m1) = (ninf, ninf);
        let mut q = 0;
        while q + 2 <= nfull {
            m0 = _mm256_max_ps(_mm256_loadu_ps(row.add(8 * q)), m0);
            m1 = _mm256_max_ps(_mm256_loadu_ps(row.add(8 * q + 8)), m1);
            q += 2;
        }
        if q < nfull {
            m0 = _mm256_max_ps(_mm256_loadu_ps(row.add(8 * q)), m0);
        }
        let t = _mm256_blendv_ps(ninf, _mm256_maskload_ps(row.add(8 * nfull), tm), tmf);
        m1 = _mm256_max_ps(t, m1);
        let mx = hmax_256(_mm256_max_ps(m0, m1));
        let m_old = *m.add(r);
        let m_new = if mx > m_old { mx } else { m_old };
        if m_new == f32::NEG_INFINITY {
            zero_row();
            *al.add(r) = 1.0;
            continue;
        }
        let mv = _mm256_set1_ps(m_new);
        let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut q = 0;
        while q + 2 <= nfull {
            let p0 = exp2_256(_mm256_sub_ps(_mm256_loadu_ps(row.add(8 * q)), mv));
            let p1 = exp2_256(_mm256_sub_ps(_mm256_loadu_ps(row.add(8 * q + 8)), mv));
            _mm256_storeu_ps(row.add(8 * q), p0);
            _mm256_storeu_ps(row.add(8 * q + 8), p1);
            s0 = _mm256_add_ps(s0, p0);
            s1 = _mm256_add_ps(s1, p1);
            q += 2;
        }
        if q < nfull {
            let p0 = exp2_256(_mm256_sub_ps(_mm256_loadu_ps(row.add(8 * q)), mv));
            _mm256_storeu_ps(row.add(8 * q), p0);
            s0 = _mm256_add_ps(s0, p0);
        }
        if tail != 0 {
            let x = _mm256_blendv_ps(ninf, _mm256_maskload_ps(row.add(8 * nfull), tm), tmf);
            let p = exp2_256(_mm256_sub_ps(x, mv));
            _mm256_maskstore_ps(row.add(8 * nfull), tm, p);
            s1 = _mm256_add_ps(s1, p);
        }
        let sum = hsum_256(_mm256_add_ps(s0, s1));
        let a = if m_old == f32::NEG_INFINITY {
            0.0
        } else {
            crate::vmath::exp((m_old - m_new) * std::f32::consts::LN_2)
        };
        *al.add(r) = a;
        *l.add(r) = *l.add(r) * a + sum;
        *m.add(r) = m_new;
    }
}

/// [`TileOps::pv`] on AVX2: an `R` × `8·NV` register tile over `bc` steps (`R` ≤ 6: 3 for a
/// group of at most 3; `FULL`: all `8·NV` columns, plain loads and stores), started and stored
/// as `io` says.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline(never)]
unsafe fn pv_256<const NV: usize, const FULL: bool, const R: usize>(
    bc: usize,
    p: *const f32,
    v: *const f32,
    ldv: usize,
    ncols: usize,
    io: &PvIo<f32>,
) {
    let km = [mask_256(ncols), mask_256(ncols.saturating_sub(8))];
    let load = |x: usize, at: *const f32| {
        if FULL {
            _mm256_loadu_ps(at)
        } else {
            _mm256_maskload_ps(at, km[x])
        }
    };
    let store = |x: usize, at: *mut f32, y: __m256| {
        if FULL {
            _mm256_storeu_ps(at, y);
        } else {
            _mm256_maskstore_ps(at, km[x], y);
        }
    };
    let mut c = [[_mm256_setzero_ps(); NV]; R];
    if !io.first {
        for (r, cr) in c.iter_mut().enumerate() {
            let a = _mm256_set1_ps(*io.alpha.add(r));
            for (x, cx) in cr.iter_mut().enumerate() {
                *cx = _mm256_mul_ps(load(x, io.o.add(r * io.ldo + 8 * x)), a);
            }
        }
    }
    let (mut pp, mut vp) = (p, v);
    for _ in 0..bc {
        let mut b = [_mm256_setzero_ps(); NV];
        for (x, bx) in b.iter_mut().enumerate() {
            *bx = load(x, vp.add(8 * x));
        }
        for (r, cr) in c.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*pp.add(r * SLD));
            for x in 0..NV {
                cr[x] = _mm256_fmadd_ps(av, b[x], cr[x]);
            }
        }
        pp = pp.add(1);
        vp = vp.add(ldv);
    }
    if io.last {
        for (r, cr) in c.iter().enumerate() {
            if r < io.rows {
                let inv = _mm256_set1_ps(*io.inv.add(r));
                for (x, cx) in cr.iter().enumerate() {
                    store(x, io.dst.add(r * io.ldd + 8 * x), _mm256_mul_ps(*cx, inv));
                }
            }
        }
    } else {
        for (r, cr) in c.iter().enumerate() {
            for (x, cx) in cr.iter().enumerate() {
                store(x, io.o.add(r * io.ldo + 8 * x), *cx);
            }
        }
    }
}
