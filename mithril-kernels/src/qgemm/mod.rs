//! int8 GEMM for quantized inference: `C = dequant(A_q · B_q)` with `u8 × i8 → i32`
//! accumulation and the dequantization fused into the store, then an f32 epilogue per row.
//!
//! Quantization (post-training, symmetric):
//!
//! - **weights** (`B`, `k × n`): per output column `j`, `scale[j] = max_p |B(p, j)| / 127` and
//!   `q = round_ties_even(B(p, j) · (127 / max_p |B(p, j)|))` clamped to `[-127, 127]` (a zero
//!   column gets scale 0 and zeros). Packed once ([`QPackedB`]): panels of [`PANEL`] = 16
//!   columns, in each panel groups of 4 consecutive k for every column (64 bytes per k-group,
//!   the operand layout of `vpdpbusd`), k padded with zero weights to a multiple of 4, columns
//!   padded with zero weights to a multiple of 16; plus each column's weight sum.
//! - **activations** (`A`, `m × k`, per tensor): one scale `s = max|A| / 127` (dynamic: from the
//!   call's data, [`max_abs`]; or static, from calibration), `q = round_ties_even(x · inv)`
//!   clamped to `[-127, 127]` with `inv = 127 / max|A|`, stored as `u8` `q + 128`
//!   ([`quantize_a`]; rows padded to the packed `k`).
//!
//! The integer part `acc(i, j) = Σ_p qa(i, p)·qb(p, j)` (exact in `i32`, wrapping only beyond
//! `k` ≈ 133,000) is computed by one of four paths, chosen at run time ([`QIsa`]), all equal
//! bit for bit:
//!
//! | path | inner step |
//! | --- | --- |
//! | AVX512_VNNI | `vpdpbusd` (64 `u8·i8` products per instruction) on `q + 128`, minus `128·Σ_p qb(p, j)`; up to 8 rows × 32 columns (2 to 4 rows: × 64; one row: 1 × 128, eight independent sums) |
//! | AVX2 | both operands widened to `i16`, `vpmaddwd` (no saturation), 3 rows × 16 columns |
//! | aarch64 `sdot` (`FEAT_DotProd`) | `sdot` by lane on the signed `q` (`u8 ^ 0x80`): 16 `i8·i8` products per instruction into 4 columns of one row; up to 4 rows × 16 columns (2 rows: × 32; one row: × 64) |
//! | scalar | plain `i32` loops |
//!
//! The store converts `acc` to f32 and multiplies by `s · scale[j]` (one rounding each, the same
//! in every path), then the caller's epilogue (bias, activation) runs once per finished row of
//! C, while it is in cache. Single-threaded: the caller's thread does all the work.

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Columns per packed panel (one zmm of `i32` accumulators).
pub const PANEL: usize = 16;

/// The instruction set of an int8 GEMM path. Ordered: a later variant needs every feature of
/// the earlier ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QIsa {
    /// Portable `i32` loops.
    Scalar,
    /// x86-64 AVX2: `i16` widening and `vpmaddwd`.
    Avx2,
    /// x86-64 AVX-512 with AVX512_VNNI: `vpdpbusd`.
    Avx512Vnni,
    /// aarch64 with the dot-product extension: `sdot` (`FEAT_DotProd`).
    NeonDot,
}

impl QIsa {
    /// Every path, scalar first (each clamped to [`QIsa::detected`] when run).
    pub const ALL: [QIsa; 4] = [QIsa::Scalar, QIsa::Avx2, QIsa::Avx512Vnni, QIsa::NeonDot];

    /// The best path this CPU runs (probed once).
    pub fn detected() -> QIsa {
        static D: std::sync::OnceLock<QIsa> = std::sync::OnceLock::new();
        *D.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("avx512f") && has!("avx512bw") && has!("avx512vnni") {
                    return QIsa::Avx512Vnni;
                }
                if has!("avx2") {
                    return QIsa::Avx2;
                }
            }
            #[cfg(target_arch = "aarch64")]
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return QIsa::NeonDot;
            }
            QIsa::Scalar
        })
    }

    /// The path calls on this thread take: the crate-wide choice ([`crate::isa::active`], so
    /// [`crate::isa::with_isa`] forces it too: `Avx512` means VNNI where the CPU has it, else
    /// AVX2; `Neon` means `sdot` where the CPU has it), clamped by [`QIsa::clamp_to_cpu`].
    pub fn active() -> QIsa {
        let want = match crate::isa::active() {
            crate::isa::Isa::Scalar => QIsa::Scalar,
            crate::isa::Isa::Neon => QIsa::NeonDot,
            crate::isa::Isa::Avx2 => QIsa::Avx2,
            crate::isa::Isa::Avx512 => QIsa::Avx512Vnni,
        };
        want.clamp_to_cpu()
    }

    /// The path a request for `self` runs on this CPU: the scalar path stays scalar; an x86
    /// level is lowered to the CPU's best x86 level; on a CPU of the other architecture (or
    /// one without the vector extension) any vector request runs that CPU's best path, as
    /// [`crate::isa::with_isa`] does for the float kernels.
    pub fn clamp_to_cpu(self) -> QIsa {
        let d = QIsa::detected();
        match (self, d) {
            (QIsa::Scalar, _) | (_, QIsa::Scalar) => QIsa::Scalar,
            (_, QIsa::NeonDot) | (QIsa::NeonDot, _) => d,
            _ => self.min(d),
        }
    }
}

/// Weights quantized per output column and packed for [`qgemm`] (see the module docs for the
/// layout). Built once (at quantize or load time) and read by every call.
#[derive(Clone, Debug, PartialEq)]
pub struct QPackedB {
    k: usize,
    n: usize,
    /// k-groups of 4 (`k` padded up to a multiple of 4, divided by 4)
    kg: usize,
    /// panels × kg × 64 bytes
    data: Vec<i8>,
    /// per padded column: `Σ_p q(p, j)`
    col_sums: Vec<i32>,
    /// per column: the dequantization scale
    scales: Vec<f32>,
}

/// The quantization of one value with multiplier `inv` (`127 / max|x|`): nearest, ties to even,
/// clamped to `[-127, 127]` (NaN gives 0).
#[inline(always)]
pub fn quantize_one(x: f32, inv: f32) -> i8 {
    (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// The multiplier and the scale of a tensor whose largest magnitude is `max_abs`:
/// `(127 / max_abs, max_abs / 127)`, or `(0, 0)` when it is 0 or not finite.
pub fn inv_and_scale(max_abs: f32) -> (f32, f32) {
    if max_abs > 0.0 && max_abs.is_finite() {
        (127.0 / max_abs, max_abs / 127.0)
    } else {
        (0.0, 0.0)
    }
}

impl QPackedB {
    /// Quantizes `B` (`k × n`, `B(p, j) = b[p*rsb + j*csb]`) per output column and packs it.
    ///
    /// # Panics
    /// When `b` is too short for the dimensions and strides.
    pub fn quantize(k: usize, n: usize, b: &[f32], rsb: usize, csb: usize) -> QPackedB {
        if k > 0 && n > 0 {
            let last = (k - 1) * rsb + (n - 1) * csb;
            assert!(last < b.len(), "QPackedB::quantize: B too short");
        }
        let mut scales = vec![0f32; n];
        let mut invs = vec![0f32; n];
        for j in 0..n {
            let mut m = 0f32;
            for p in 0..k {
                let v = b[p * rsb + j * csb].abs();
                if v > m {
                    m = v;
                }
            }
            let (inv, s) = inv_and_scale(m);
            invs[j] = inv;
            scales[j] = s;
        }
        Self::from_fn(k, n, scales, |p, j| {
            quantize_one(b[p * rsb + j * csb], invs[j])
        })
    }

    /// Packs already quantized weights (`Q(p, j) = q[p*rsq + j*csq]`, `k × n`) with their
    /// per-column `scales` (e.g. read from a file). `Err` when `q` is too short or
    /// `scales.len() != n`.
    pub fn from_i8(
        k: usize,
        n: usize,
        q: &[i8],
        rsq: usize,
        csq: usize,
        scales: Vec<f32>,
    ) -> Result<QPackedB, String> {
        if scales.len() != n {
            return Err(format!("{} scales for {n} columns", scales.len()));
        }
        if k > 0 && n > 0 && (k - 1) * rsq + (n - 1) * csq >= q.len() {
            return Err(format!("{} int8 values for a {k} × {n} matrix", q.len()));
        }
        Ok(Self::from_fn(k, n, scales, |p, j| q[p * rsq + j * csq]))
    }

    pub(crate) fn from_fn(
        k: usize,
        n: usize,
        scales: Vec<f32>,
        f: impl Fn(usize, usize) -> i8,
    ) -> QPackedB {
        let kg = k.div_ceil(4);
        let panels = n.div_ceil(PANEL);
        let mut data = vec![0i8; panels * kg * 64];
        let mut col_sums = vec![0i32; panels * PANEL];
        for (j, cs) in col_sums.iter_mut().enumerate().take(n) {
            let (pn, c) = (j / PANEL, j % PANEL);
            let mut sum = 0i32;
            for p in 0..k {
                let v = f(p, j);
                sum += i32::from(v);
                data[pn * kg * 64 + (p / 4) * 64 + c * 4 + p % 4] = v;
            }
            *cs = sum;
        }
        QPackedB {
            k,
            n,
            kg,
            data,
            col_sums,
            scales,
        }
    }

    /// Rows of B (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of B (outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// `k` padded to a multiple of 4: the row length of a quantized A ([`quantize_a`]).
    pub fn k_padded(&self) -> usize {
        self.kg * 4
    }

    /// The per-column dequantization scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales
    }

    /// The quantized weight `Q(p, j)`.
    ///
    /// # Panics
    /// When `p >= k` or `j >= n`.
    pub fn get(&self, p: usize, j: usize) -> i8 {
        assert!(p < self.k && j < self.n, "QPackedB::get out of range");
        self.data[(j / PANEL) * self.kg * 64 + (p / 4) * 64 + (j % PANEL) * 4 + p % 4]
    }

    /// Bytes held (packed weights, column sums, scales).
    pub fn bytes(&self) -> usize {
        self.data.len() + 4 * self.col_sums.len() + 4 * self.scales.len()
    }
}

/// The largest magnitude of `A` (`m × k`, `A(i, p) = a[i*rsa + p*csa]`); NaNs are skipped.
///
/// # Panics
/// When `a` is too short.
pub fn max_abs(m: usize, k: usize, a: &[f32], rsa: usize, csa: usize) -> f32 {
    if m == 0 || k == 0 {
        return 0.0;
    }
    assert!(
        (m - 1) * rsa + (k - 1) * csa < a.len(),
        "max_abs: A too short"
    );
    #[cfg(target_arch = "x86_64")]
    if csa == 1 && crate::isa::active() >= crate::isa::Isa::Avx512 {
        // SAFETY: AVX-512 checked; bounds checked above.
        return unsafe { x86::max_abs_rows_512(m, k, a.as_ptr(), rsa) };
    }
    #[cfg(target_arch = "x86_64")]
    if csa == 1 && crate::isa::active() >= crate::isa::Isa::Avx2 {
        // SAFETY: AVX2 checked; bounds checked above.
        return unsafe { x86::max_abs_rows(m, k, a.as_ptr(), rsa) };
    }
    let mut best = 0f32;
    for i in 0..m {
        if csa == 1 {
            best = best.max(max_abs_row(&a[i * rsa..i * rsa + k]));
        } else {
            for p in 0..k {
                let v = a[i * rsa + p * csa].abs();
                if v > best {
                    best = v;
                }
            }
        }
    }
    best
}

/// The largest magnitude of a contiguous row (16 lanes, so it vectorizes).
#[inline(always)]
pub(crate) fn max_abs_row(r: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut ch = r.chunks_exact(16);
    for c in &mut ch {
        for l in 0..16 {
            let v = c[l].abs();
            lanes[l] = if v > lanes[l] { v } else { lanes[l] };
        }
    }
    let mut best = 0f32;
    for &v in lanes.iter().chain(ch.remainder().iter()) {
        let v = v.abs();
        if v > best {
            best = v;
        }
    }
    best
}

/// Quantizes `A` (`m × k`, strides as in [`max_abs`]) with multiplier `inv` into `out` as `u8`
/// `q + 128`, rows of `kp >= k` bytes (the padding is 128, i.e. zero).
///
/// # Panics
/// When `a` or `out` is too short, or `kp < k`.
#[allow(clippy::too_many_arguments)]
pub fn quantize_a(
    m: usize,
    k: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    inv: f32,
    out: &mut [u8],
    kp: usize,
) {
    assert!(kp >= k, "quantize_a: kp < k");
    assert!(out.len() >= m * kp, "quantize_a: out too short");
    if m == 0 {
        return;
    }
    if k > 0 {
        assert!(
            (m - 1) * rsa + (k - 1) * csa < a.len(),
            "quantize_a: A too short"
        );
    }
    for i in 0..m {
        let o = &mut out[i * kp..(i + 1) * kp];
        if csa == 1 {
            let r = &a[i * rsa..i * rsa + k];
            #[cfg(target_arch = "x86_64")]
            if crate::isa::active() >= crate::isa::Isa::Avx512 {
                // SAFETY: AVX-512 checked.
                unsafe { x86::quantize_row_512(r, inv, &mut o[..k]) };
                o[k..].fill(128);
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            if crate::isa::active() >= crate::isa::Isa::Avx2 {
                // SAFETY: AVX2 checked.
                unsafe { x86::quantize_row(r, inv, &mut o[..k]) };
                o[k..].fill(128);
                continue;
            }
            quantize_row(r, inv, &mut o[..k]);
        } else {
            for p in 0..k {
                o[p] = (i32::from(quantize_one(a[i * rsa + p * csa], inv)) + 128) as u8;
            }
        }
        o[k..].fill(128);
    }
}

#[inline(always)]
pub(crate) fn quantize_row(r: &[f32], inv: f32, o: &mut [u8]) {
    for (d, &x) in o.iter_mut().zip(r) {
        *d = (i32::from(quantize_one(x, inv)) + 128) as u8;
    }
}

/// A register-tile kernel: `tile[r*64 + c] = Σ_p qa(r, p)·qb(p, j0 + c)` for `r < R`,
/// `c < 16·V`. Arguments: k-groups, A rows (`u8`, stride `lda`), the first panel, the panel
/// stride (bytes), the panels' column sums, the tile.
type Kern = unsafe fn(usize, *const u8, usize, *const i8, usize, *const i32, *mut i32);

/// The widest tile row (columns) any kernel writes.
const TILE_W: usize = 128;
/// The most rows of any kernel.
const TILE_R: usize = 8;

/// Rows and panels per tile of `isa` for a problem of `m` rows.
fn shape(isa: QIsa, m: usize) -> (usize, usize) {
    match isa {
        QIsa::Avx512Vnni if m <= 1 => (1, 8),
        QIsa::Avx512Vnni if m <= 4 => (m, 4),
        QIsa::Avx512Vnni => (8, 2),
        QIsa::Avx2 => (3, 1),
        QIsa::NeonDot if m <= 1 => (1, 4),
        QIsa::NeonDot if m <= 2 => (2, 2),
        QIsa::NeonDot => (4, 1),
        QIsa::Scalar => (4, 1),
    }
}

// (off x86-64 and aarch64 only the scalar kernel exists: `v` and the vector macro go unused)
#[cfg_attr(
    not(any(target_arch = "x86_64", target_arch = "aarch64")),
    allow(unused_variables, unused_macros)
)]
fn kernel(isa: QIsa, r: usize, v: usize) -> Kern {
    // `V` is 1, 2 or 4 (8 for one row; `drive` halves it at the last panels)
    macro_rules! v3 {
        ($k:ident, $r:literal) => {
            match v {
                1 => $k::<$r, 1> as Kern,
                2 => $k::<$r, 2> as Kern,
                _ => $k::<$r, 4> as Kern,
            }
        };
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        QIsa::Avx512Vnni => {
            use x86::k_vnni;
            match r {
                1 if v == 8 => k_vnni::<1, 8> as Kern,
                1 => v3!(k_vnni, 1),
                2 => v3!(k_vnni, 2),
                3 => v3!(k_vnni, 3),
                4 => v3!(k_vnni, 4),
                // 5..8 rows: at most 2 panels (shape)
                5 if v == 1 => k_vnni::<5, 1> as Kern,
                5 => k_vnni::<5, 2> as Kern,
                6 if v == 1 => k_vnni::<6, 1> as Kern,
                6 => k_vnni::<6, 2> as Kern,
                7 if v == 1 => k_vnni::<7, 1> as Kern,
                7 => k_vnni::<7, 2> as Kern,
                _ if v == 1 => k_vnni::<8, 1> as Kern,
                _ => k_vnni::<8, 2> as Kern,
            }
        }
        #[cfg(target_arch = "x86_64")]
        QIsa::Avx2 => match r {
            1 => x86::k_avx2::<1, 1> as Kern,
            2 => x86::k_avx2::<2, 1> as Kern,
            _ => x86::k_avx2::<3, 1> as Kern,
        },
        #[cfg(target_arch = "aarch64")]
        QIsa::NeonDot => match r {
            1 => {
                use neon::k_sdot;
                v3!(k_sdot, 1)
            }
            2 if v == 1 => neon::k_sdot::<2, 1> as Kern,
            2 => neon::k_sdot::<2, 2> as Kern,
            3 => neon::k_sdot::<3, 1> as Kern,
            _ => neon::k_sdot::<4, 1> as Kern,
        },
        _ => match r {
            1 => k_scalar::<1, 1> as Kern,
            2 => k_scalar::<2, 1> as Kern,
            3 => k_scalar::<3, 1> as Kern,
            _ => k_scalar::<4, 1> as Kern,
        },
    }
}

/// The scalar kernel (see [`Kern`]).
unsafe fn k_scalar<const R: usize, const V: usize>(
    kg: usize,
    a: *const u8,
    lda: usize,
    b: *const i8,
    pstride: usize,
    _sums: *const i32,
    tile: *mut i32,
) {
    for r in 0..R {
        for v in 0..V {
            let bp = b.add(v * pstride);
            for c in 0..PANEL {
                let mut acc = 0i32;
                for g in 0..kg {
                    for t in 0..4 {
                        let x = i32::from(*a.add(r * lda + 4 * g + t)) - 128;
                        let w = i32::from(*bp.add(g * 64 + c * 4 + t));
                        acc = acc.wrapping_add(x * w);
                    }
                }
                *tile.add(r * TILE_W + v * PANEL + c) = acc;
            }
        }
    }
}

/// Runs the integer GEMM over all rows and panels, handing each finished tile to
/// `sink(i0, rows, j0, cols, tile)` (tile row stride [`TILE_W`]) and each finished block of rows
/// to `rows_done(i0, rows)`. Only the tile's first `rows` rows are written, so only those are
/// zeroed (at batch 1, 512 bytes instead of 4 KiB per call).
fn drive(
    isa: QIsa,
    m: usize,
    a: &[u8],
    lda: usize,
    b: &QPackedB,
    mut sink: impl FnMut(usize, usize, usize, usize, &[i32]),
    mut rows_done: impl FnMut(usize, usize),
) {
    let isa = isa.clamp_to_cpu();
    let (mr, vmax) = shape(isa, m);
    let panels = b.n.div_ceil(PANEL);
    let pstride = b.kg * 64;
    let mut tile_buf = std::mem::MaybeUninit::<[i32; TILE_R * TILE_W]>::uninit();
    let len = mr.clamp(1, TILE_R) * TILE_W;
    // SAFETY: the first `len <= TILE_R * TILE_W` ints are zeroed before they are viewed.
    let tile: &mut [i32] = unsafe {
        let p = tile_buf.as_mut_ptr() as *mut i32;
        std::ptr::write_bytes(p, 0, len);
        std::slice::from_raw_parts_mut(p, len)
    };
    let mut i0 = 0;
    while i0 < m {
        let rows = mr.min(m - i0);
        let mut pn = 0;
        while pn < panels {
            let mut v = vmax;
            while v > panels - pn {
                v /= 2;
            }
            let k = kernel(isa, rows, v);
            // SAFETY: A has `m` rows of `lda >= 4·kg` bytes (checked by the callers); panels
            // `pn..pn + v` exist; the tile holds `rows × 16v <= TILE_R × TILE_W`.
            unsafe {
                k(
                    b.kg,
                    a.as_ptr().add(i0 * lda),
                    lda,
                    b.data.as_ptr().add(pn * pstride),
                    pstride,
                    b.col_sums.as_ptr().add(pn * PANEL),
                    tile.as_mut_ptr(),
                );
            }
            let j0 = pn * PANEL;
            let cols = (v * PANEL).min(b.n - j0);
            sink(i0, rows, j0, cols, tile);
            pn += v;
        }
        rows_done(i0, rows);
        i0 += rows;
    }
}

fn check_a(m: usize, a: &[u8], lda: usize, b: &QPackedB) {
    assert!(lda >= b.k_padded(), "qgemm: lda < the padded k");
    assert!(
        m == 0 || (m - 1) * lda + b.k_padded() <= a.len(),
        "qgemm: A too short"
    );
}

/// The integer part alone: `C(i, j) = Σ_p qa(i, p)·qb(p, j)` (`qa = a - 128`), `m × n` into
/// `c` with row stride `ldc`, by path `isa` (clamped to the CPU's). For tests and tools.
///
/// # Panics
/// When a slice is too short, `lda` is less than [`QPackedB::k_padded`] or `ldc < n`.
pub fn qgemm_i32(
    isa: QIsa,
    m: usize,
    a: &[u8],
    lda: usize,
    b: &QPackedB,
    c: &mut [i32],
    ldc: usize,
) {
    check_a(m, a, lda, b);
    assert!(
        ldc >= b.n && (m == 0 || (m - 1) * ldc + b.n <= c.len()),
        "qgemm: C too short"
    );
    drive(
        isa,
        m,
        a,
        lda,
        b,
        |i0, rows, j0, cols, t| {
            for r in 0..rows {
                let row = &mut c[(i0 + r) * ldc + j0..(i0 + r) * ldc + j0 + cols];
                row.copy_from_slice(&t[r * TILE_W..r * TILE_W + cols]);
            }
        },
        |_, _| {},
    );
}

/// `C(i, j) = acc(i, j) as f32 · col_scale[j]` (`col_scale[j]` = the activation scale times
/// the weight's column scale), then `epilogue(i, 0, C(i, ..))` once per row: `m × n` C with
/// row stride `ldc`; A already quantized ([`quantize_a`], rows of `lda` bytes).
///
/// # Panics
/// As [`qgemm_i32`], or when `col_scale.len() < n`.
#[allow(clippy::too_many_arguments)]
pub fn qgemm<E: FnMut(usize, usize, &mut [f32])>(
    isa: QIsa,
    m: usize,
    a: &[u8],
    lda: usize,
    b: &QPackedB,
    col_scale: &[f32],
    c: &mut [f32],
    ldc: usize,
    mut epilogue: E,
) {
    check_a(m, a, lda, b);
    let n = b.n;
    assert!(col_scale.len() >= n, "qgemm: too few column scales");
    assert!(
        ldc >= n && (m == 0 || (m - 1) * ldc + n <= c.len()),
        "qgemm: C too short"
    );
    let cp = c.as_mut_ptr();
    drive(
        isa,
        m,
        a,
        lda,
        b,
        |i0, rows, j0, cols, t| {
            for r in 0..rows {
                // SAFETY: row `i0 + r` columns `j0..j0 + cols` lie in C (checked above).
                let row =
                    unsafe { std::slice::from_raw_parts_mut(cp.add((i0 + r) * ldc + j0), cols) };
                dequant(
                    &t[r * TILE_W..r * TILE_W + cols],
                    &col_scale[j0..j0 + cols],
                    row,
                );
            }
        },
        |i0, rows| {
            for i in i0..i0 + rows {
                // SAFETY: as above; the tiles' borrows of C have ended.
                let row = unsafe { std::slice::from_raw_parts_mut(cp.add(i * ldc), n) };
                epilogue(i, 0, row);
            }
        },
    );
}

#[inline(always)]
fn dequant(acc: &[i32], s: &[f32], out: &mut [f32]) {
    for ((o, &a), &s) in out.iter_mut().zip(acc).zip(s) {
        *o = a as f32 * s;
    }
}
