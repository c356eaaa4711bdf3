//! Scaled dot-product attention, tiled with an online softmax (the FlashAttention scheme).
//!
//! `out = softmax(scale · Q·Kᵀ + mask) · V` per (batch, query head), with `K`/`V` shared by
//! `hq / hkv` query heads (grouped-query attention). Tensors are contiguous row-major
//! `[batch, heads, seq, dim]`. The forward pass walks a block of [`BR`] query rows against blocks
//! of [`BC`] key rows: the score tile `scale · Q_i·K_jᵀ` and the update `O_i += P·V_j` are
//! products of the packed GEMM ([`crate::gemm::gemm_plain`], its AVX-512 / AVX2 / scalar
//! microkernels), the row update between them (mask, running max, rescale, exponentials) is a
//! multiversioned loop (AVX-512 / AVX2 / baseline copies, chosen by [`crate::isa::active`]).
//! `K` is transposed once per key head into `[d, BC]` blocks, so the score tile's `B = K_jᵀ` is
//! packed from contiguous rows (not by a transposing pack of `K_j` for every query tile); the
//! row update's exponential is [`crate::vmath::exp_nonpos`] (0 below the normal range).
//! For `f32` on x86-64 the forward pass runs the fused tile kernel of `fused.rs` instead (no
//! GEMM call: `Q_i` packed once per query tile, `K` in strips, the score tile, the row update
//! and `P·V` on its own register tiles per group of query rows; `fused_x86.rs` holds the
//! AVX-512 and AVX2 forms); `f64` and NEON keep the GEMM-based tiles (`forward_tiles`).
//! Only one `[BR, BC]` tile exists at a time: no `[seq, seq]` buffer. Under `causal`
//! (top-left aligned, as PyTorch's `is_causal`: query `i` sees keys `j <= i`) the key blocks
//! wholly above the diagonal are never visited.
//!
//! The backward pass ([`backward`]) is FlashAttention's: each row's log-sum-exp is recomputed by
//! a statistics pass (scores only, no `P·V`), then for each key block and each query block the
//! probabilities are rebuilt from it, `dV += Pᵀ·dO`, `dP = dO·Vᵀ`, `dS = P∘(dP − rowsum(dO∘O))`,
//! `dQ += scale·dS·K`, `dK += scale·dS·Qᵀ`.
//!
//! A row whose every score is masked (`-∞`) gives NaN, as PyTorch's `scaled_dot_product_attention`
//! and `softmax` of an all `-∞` row do.

use crate::gemm::{gemm_plain, gemm_with, GemmConfig, GemmElem, Path};

pub mod decode;
mod fused;
#[cfg(target_arch = "x86_64")]
mod fused_x86;

#[cfg(test)]
mod tests;

/// Query rows per tile: a multiple of every GEMM microkernel's row count (12 on AVX-512, 6 on
/// AVX2, 8 on NEON, 4 scalar), so the score tile `Q_i·K_jᵀ` and the update `P·V_j` have no
/// partial row tile (64 rows left a 4-row edge tile, computed at a third of its cost's use).
pub const BR: usize = 72;
/// Key rows per tile.
pub const BC: usize = 128;

/// `K` of one head (`[sk, d]`, row-major) transposed into key blocks of [`BC`] columns: block
/// `jb` is `[d, BC]` row-major at `kt[jb · BC · d ..]` (columns past `sk` are left as they
/// are), so the score tile `Q_i·K_jᵀ` reads `B = K_jᵀ` with contiguous rows: packing it is a
/// copy of rows, not the transposing pack of `K_j` it was, and it is done once per key head
/// instead of once per query tile.
/// `kh`'s rows are `ldk` apart (`d` for a contiguous head).
fn transpose_k<T: Copy>(kh: &[T], sk: usize, d: usize, ldk: usize, kt: &mut [T]) {
    for j0 in (0..sk).step_by(BC) {
        let bc = BC.min(sk - j0);
        let blk = &mut kt[j0 * d..(j0 + BC) * d];
        for (c, row) in blk.chunks_exact_mut(BC).enumerate() {
            for (jj, x) in row[..bc].iter_mut().enumerate() {
                *x = kh[(j0 + jj) * ldk + c];
            }
        }
    }
}

/// Length of [`transpose_k`]'s output for `sk` keys of width `d`.
fn kt_len(sk: usize, d: usize) -> usize {
    sk.div_ceil(BC) * BC * d
}

/// The score tile `st = scale · Q_i·K_jᵀ` (`br × bc`, row stride `bc`) from `br` query rows
/// (`qi`, `d` wide, `ldq` apart) and the key block `ktj` transposed by [`transpose_k`]. Always the packed
/// GEMM: its small path (operands read in place, chosen by size for `f32` since `Kᵀ`'s rows are
/// contiguous) was slower here, its 12 query rows and the 512-byte-strided `Kᵀ` rows being
/// read in place for every key column panel.
#[allow(clippy::too_many_arguments)]
fn scores<T: AttnElem>(
    br: usize,
    bc: usize,
    d: usize,
    scale: T,
    qi: &[T],
    ldq: usize,
    ktj: &[T],
    st: &mut [T],
) {
    let cfg = GemmConfig {
        path: Path::Packed,
        ..GemmConfig::default()
    };
    gemm_with(
        cfg,
        br,
        bc,
        d,
        scale,
        qi,
        ldq,
        1,
        ktj,
        BC,
        1,
        false,
        st,
        bc,
        |_, _, _: &mut [T::Acc]| {},
    );
}

/// An element type attention runs in: `f32` or `f64` (accumulated in the same type).
pub trait AttnElem:
    GemmElem<Acc = Self>
    + Copy
    + PartialOrd
    + Send
    + Sync
    + 'static
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    /// 0.
    const ZERO: Self;
    /// 1.
    const ONE: Self;
    /// −∞.
    const NEG_INF: Self;
    /// From `f64` (rounded).
    fn of(v: f64) -> Self;
    /// eˣ (vectorizable for `f32`: [`crate::vmath::exp`]).
    fn exp(self) -> Self;
    /// ln x.
    fn ln(self) -> Self;
    /// eˣ for a softmax argument (`x ≤ 0` or `-∞`): [`AttnElem::exp`], except that `f32`
    /// flushes results below the normal range to 0 ([`crate::vmath::exp_nonpos`]).
    #[inline(always)]
    fn exp_nonpos(self) -> Self {
        self.exp()
    }
}

impl AttnElem for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f32::NEG_INFINITY;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn exp(self) -> Self {
        crate::vmath::exp(self)
    }
    #[inline(always)]
    fn exp_nonpos(self) -> Self {
        crate::vmath::exp_nonpos(self)
    }
    #[inline(always)]
    fn ln(self) -> Self {
        self.ln()
    }
}

impl AttnElem for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;
    const NEG_INF: Self = f64::NEG_INFINITY;
    #[inline(always)]
    fn of(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn exp(self) -> Self {
        self.exp()
    }
    #[inline(always)]
    fn ln(self) -> Self {
        self.ln()
    }
}

/// The sizes of one attention call: `q [batch, hq, sq, d]`, `k [batch, hkv, sk, d]`,
/// `v [batch, hkv, sk, dv]`, `out [batch, hq, sq, dv]`; `hq` a multiple of `hkv`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dims {
    pub batch: usize,
    pub hq: usize,
    pub hkv: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub dv: usize,
}

impl Dims {
    /// The [`Layout`]s of contiguous `q`, `k`, `v` and `out` (`[batch, heads, seq, width]`).
    fn contiguous(&self) -> [Layout; 4] {
        let Dims {
            hq,
            hkv,
            sq,
            sk,
            d,
            dv,
            ..
        } = *self;
        [
            Layout::contiguous(hq, sq, d),
            Layout::contiguous(hkv, sk, d),
            Layout::contiguous(hkv, sk, dv),
            Layout::contiguous(hq, sq, dv),
        ]
    }

    fn check<T>(&self, q: &[T], k: &[T], v: &[T]) {
        assert!(self.hkv > 0 && self.hq.is_multiple_of(self.hkv), "hq % hkv");
        assert!(
            q.len() >= self.batch * self.hq * self.sq * self.d,
            "q too short"
        );
        assert!(
            k.len() >= self.batch * self.hkv * self.sk * self.d,
            "k too short"
        );
        assert!(
            v.len() >= self.batch * self.hkv * self.sk * self.dv,
            "v too short"
        );
    }
}

/// A mask operand broadcast over `[batch, hq, sq, sk]`: element `(b, h, i, j)` is
/// `data[offs[b * hq + h] + i * si + j * sj]` (a stride is 0 along a broadcast axis).
#[derive(Clone, Copy, Debug)]
pub struct MaskView<'a, M> {
    pub data: &'a [M],
    pub offs: &'a [usize],
    pub si: usize,
    pub sj: usize,
}

/// The mask of an attention call.
#[derive(Clone, Copy, Debug)]
pub enum Mask<'a, T> {
    /// No mask operand.
    None,
    /// Added to the scaled scores.
    Add(MaskView<'a, T>),
    /// `false` entries are excluded (score `-∞`).
    Bool(MaskView<'a, bool>),
}

/// Dropout on the attention weights (training calls): weight `(b, h, i, j)` of the
/// `[batch, hq, sq, sk]` softmax is kept with probability `1 - p` and scaled by `1 / (1 - p)`,
/// else zeroed. The mask is `dropout`'s: Philox4x32-10 ([`crate::philox`]) keyed by `seed`,
/// counting the op id `op` and the element index `((b · hq + h) · sq + i) · sk + j`, so a
/// naive reference that builds the whole weight matrix draws the same mask, and the backward
/// pass regenerates it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dropout {
    /// Drop probability in `[0, 1]`.
    pub p: f64,
    /// The call's seed.
    pub seed: u64,
    /// The op's id among its model's random ops.
    pub op: u32,
}

/// Multiplies `row`, the weights from element index `i0` on, by the dropout mask.
fn drop_row<T: AttnElem>(row: &mut [T], dr: &Dropout, i0: u64) {
    let Some(thr) = crate::philox::threshold(dr.p) else {
        row.fill(T::ZERO);
        return;
    };
    let sc = T::of(1.0 / (1.0 - dr.p));
    let key = [dr.seed as u32, (dr.seed >> 32) as u32];
    let (mut k, mut idx) = (0usize, i0);
    while k < row.len() {
        let b = idx / 4;
        let w = crate::philox::philox4x32_10([b as u32, (b >> 32) as u32, dr.op, 0], key);
        for &bits in &w[(idx % 4) as usize..] {
            if k >= row.len() {
                break;
            }
            row[k] = if bits >= thr { row[k] * sc } else { T::ZERO };
            k += 1;
            idx += 1;
        }
    }
}

/// The mask of one tile: rows `i0..`, columns `j0..` of head `bh` (`b * hq + h`).
#[derive(Clone, Copy)]
struct TileMask<'a, T> {
    mask: Mask<'a, T>,
    bh: usize,
    causal: bool,
    i0: usize,
    j0: usize,
}

impl<T: AttnElem> TileMask<'_, T> {
    /// Applies the mask to row `r` of the tile (`row.len()` columns).
    #[inline(always)]
    fn apply(&self, r: usize, row: &mut [T]) {
        let i = self.i0 + r;
        match self.mask {
            Mask::None => {}
            Mask::Add(m) => {
                let base = m.offs[self.bh] + i * m.si + self.j0 * m.sj;
                let n = row.len();
                if m.sj == 1 {
                    for (s, &a) in row.iter_mut().zip(&m.data[base..base + n]) {
                        *s = *s + a;
                    }
                } else {
                    for (c, s) in row.iter_mut().enumerate() {
                        *s = *s + m.data[base + c * m.sj];
                    }
                }
            }
            Mask::Bool(m) => {
                let base = m.offs[self.bh] + i * m.si + self.j0 * m.sj;
                for (c, s) in row.iter_mut().enumerate() {
                    if !m.data[base + c * m.sj] {
                        *s = T::NEG_INF;
                    }
                }
            }
        }
        if self.causal && self.j0 + row.len() > i + 1 {
            let from = (i + 1).saturating_sub(self.j0);
            for s in &mut row[from..] {
                *s = T::NEG_INF;
            }
        }
    }
}

use crate::isa::multiversion;

/// Row maximum (NaN-ignoring like `f32::max`; −∞ for an empty row), in 8 lanes.
#[inline(always)]
fn row_max<T: AttnElem>(row: &[T]) -> T {
    let mut acc = [T::NEG_INF; 8];
    let mut ch = row.chunks_exact(8);
    for c in &mut ch {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a = if v > *a { v } else { *a };
        }
    }
    let mut m = T::NEG_INF;
    for &v in ch.remainder().iter().chain(acc.iter()) {
        m = if v > m { v } else { m };
    }
    m
}

/// The online-softmax step of one score tile (`br` rows of `bc` columns in `s`): mask, new
/// running max `m`, `s ← exp(s − m)` (0 where masked), running sum `l` and the rescale of the
/// output rows `o` (`ldo` apart, `dv` wide) by `exp(m_old − m_new)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn online_impl<T: AttnElem>(
    s: &mut [T],
    br: usize,
    bc: usize,
    tm: &TileMask<'_, T>,
    m: &mut [T],
    l: &mut [T],
    o: &mut [T],
    dv: usize,
    ldo: usize,
) {
    for r in 0..br {
        let row = &mut s[r * bc..(r + 1) * bc];
        tm.apply(r, row);
        let mx = row_max(row);
        let m_old = m[r];
        let m_new = if mx > m_old { mx } else { m_old };
        if m_new == T::NEG_INF {
            row.fill(T::ZERO);
            continue;
        }
        // branch-free (a masked `-∞` gives 0 inside `exp_nonpos`, by a select), so the loop
        // vectorizes (with the exp inside a branch it ran scalar)
        let mut acc = [T::ZERO; 16];
        let mut sum = T::ZERO;
        let mut ch = row.chunks_exact_mut(16);
        for c in &mut ch {
            for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
                let p = (*v - m_new).exp_nonpos();
                *v = p;
                *a = *a + p;
            }
        }
        for v in ch.into_remainder() {
            let p = (*v - m_new).exp_nonpos();
            *v = p;
            sum = sum + p;
        }
        for a in acc {
            sum = sum + a;
        }
        if m_old == T::NEG_INF {
            l[r] = sum;
        } else {
            let corr = (m_old - m_new).exp();
            l[r] = l[r] * corr + sum;
            if !(corr == T::ONE) {
                for x in &mut o[r * ldo..r * ldo + dv] {
                    *x = *x * corr;
                }
            }
        }
        m[r] = m_new;
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn online<T: AttnElem>(
        s: &mut [T],
        br: usize,
        bc: usize,
        tm: &TileMask<'_, T>,
        m: &mut [T],
        l: &mut [T],
        o: &mut [T],
        dv: usize,
        ldo: usize,
    ) => online_impl;
}

/// The probabilities of one tile from saved row log-sum-exps (`s ← exp(s − lse)`, 0 where
/// masked or where the row's `lse` is −∞), then, with `dp` holding `dO·Vᵀ`,
/// `dp ← s ∘ (dp − delta)`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn probs_impl<T: AttnElem>(
    s: &mut [T],
    dp: &mut [T],
    br: usize,
    bc: usize,
    tm: &TileMask<'_, T>,
    lse: &[T],
    delta: &[T],
    ds_only: bool,
) {
    for r in 0..br {
        let row = &mut s[r * bc..(r + 1) * bc];
        if !ds_only {
            tm.apply(r, row);
            let x = lse[r];
            if x == T::NEG_INF {
                row.fill(T::ZERO);
            } else {
                // branch-free, as in `online_impl`
                for v in row.iter_mut() {
                    let e = (*v - x).exp();
                    *v = if *v == T::NEG_INF { T::ZERO } else { e };
                }
            }
        } else {
            let dr = &mut dp[r * bc..(r + 1) * bc];
            let d = delta[r];
            for (g, &p) in dr.iter_mut().zip(row.iter()) {
                *g = p * (*g - d);
            }
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn probs<T: AttnElem>(
        s: &mut [T],
        dp: &mut [T],
        br: usize,
        bc: usize,
        tm: &TileMask<'_, T>,
        lse: &[T],
        delta: &[T],
        ds_only: bool,
    ) => probs_impl;
}

/// The row strides of one head's `q`, `v` and output rows (`d`, `dv`, `dv` when contiguous).
#[derive(Clone, Copy)]
struct Ld {
    q: usize,
    v: usize,
    o: usize,
}

/// One query head's forward pass (or, without `o`, only its row statistics). The rows of
/// `qh`, `vh` and `o` are `ld` apart; `o`'s rows are written only in their `dv` columns.
#[allow(clippy::too_many_arguments)]
fn head_forward<T: AttnElem>(
    dims: &Dims,
    qh: &[T],
    kt: &[T],
    vh: &[T],
    mask: Mask<'_, T>,
    bh: usize,
    causal: bool,
    scale: T,
    mut o: Option<&mut [T]>,
    lse: &mut [T],
    s: &mut [T],
    drop: Option<&Dropout>,
    ld: Ld,
) {
    let Dims { sq, sk, d, dv, .. } = *dims;
    let (mut m, mut l) = ([T::NEG_INF; BR], [T::ZERO; BR]);
    // rows `i0 .. i0 + br` of `o`
    let rows = |i0: usize, br: usize| i0 * ld.o..(i0 + br - 1) * ld.o + dv;
    for i0 in (0..sq).step_by(BR) {
        let br = BR.min(sq - i0);
        m[..br].fill(T::NEG_INF);
        l[..br].fill(T::ZERO);
        if let Some(o) = o.as_deref_mut() {
            for r in i0..i0 + br {
                o[r * ld.o..r * ld.o + dv].fill(T::ZERO);
            }
        }
        let jend = if causal { sk.min(i0 + br) } else { sk };
        for j0 in (0..jend).step_by(BC) {
            let bc = BC.min(jend - j0);
            let st = &mut s[..br * bc];
            scores(br, bc, d, scale, &qh[i0 * ld.q..], ld.q, &kt[j0 * d..], st);
            let tm = TileMask {
                mask,
                bh,
                causal,
                i0,
                j0,
            };
            let mut none: [T; 0] = [];
            let (orows, odv, ldo) = match o.as_deref_mut() {
                Some(o) => (&mut o[rows(i0, br)], dv, ld.o),
                None => (&mut none[..], 0, 0),
            };
            online(st, br, bc, &tm, &mut m[..br], &mut l[..br], orows, odv, ldo);
            // dropout acts on the weights after the row sums `l` took them (the softmax is
            // normalized before dropout)
            if let (Some(dr), true) = (drop, o.is_some()) {
                for r in 0..br {
                    let at = ((bh * sq + i0 + r) * sk + j0) as u64;
                    drop_row(&mut st[r * bc..(r + 1) * bc], dr, at);
                }
            }
            if let Some(o) = o.as_deref_mut() {
                gemm_plain(
                    br,
                    dv,
                    bc,
                    T::ONE,
                    st,
                    bc,
                    1,
                    &vh[j0 * ld.v..],
                    ld.v,
                    1,
                    true,
                    &mut o[rows(i0, br)],
                    ld.o,
                );
            }
        }
        for r in 0..br {
            if let Some(o) = o.as_deref_mut() {
                let inv = l[r];
                for x in &mut o[(i0 + r) * ld.o..(i0 + r) * ld.o + dv] {
                    *x = *x / inv;
                }
            }
            lse[i0 + r] = if l[r] == T::ZERO {
                T::NEG_INF
            } else {
                m[r] + l[r].ln()
            };
        }
    }
}

/// Attention forward: `out[b, h] = softmax(scale · q[b, h]·k[b, g]ᵀ + mask[b, h]) · v[b, g]`,
/// `g = h / (hq / hkv)`, with key `j` excluded from query `i` when `causal` and `j > i`.
/// `lse`, when given (`batch · hq · sq` long), receives each row's log-sum-exp of the masked
/// scaled scores (−∞ for a fully masked row).
///
/// # Panics
/// When a slice is shorter than `dims` says, or `hq % hkv != 0` (the runtime checks both first).
#[allow(clippy::too_many_arguments)]
pub fn forward<T: AttnElem>(
    dims: &Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    out: &mut [T],
    lse: Option<&mut [T]>,
) {
    forward_dropout(dims, q, k, v, mask, causal, scale, None, out, lse)
}

/// [`forward`] with dropout on the weights (`drop`; see [`Dropout`]): `out = (Z ∘ P) · V` with
/// `P` the softmax and `Z` the scaled keep mask. `lse` is the softmax's, before dropout.
///
/// # Panics
/// As [`forward`].
#[allow(clippy::too_many_arguments)]
pub fn forward_dropout<T: AttnElem>(
    dims: &Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    drop: Option<Dropout>,
    out: &mut [T],
    lse: Option<&mut [T]>,
) {
    dims.check(q, k, v);
    let Dims {
        batch, hq, sq, dv, ..
    } = *dims;
    assert!(out.len() >= batch * hq * sq * dv, "out too short");
    let [ql, kl, vl, ol] = dims.contiguous();
    forward_strided(
        dims,
        (q, ql),
        (k, kl),
        (v, vl),
        mask,
        causal,
        scale,
        drop,
        (out, ol),
        lse,
    )
}

/// [`forward_dropout`] on the GEMM-based tiles of [`head_forward`] whatever `T` and the ISA
/// (the fused kernel's cost test compares the two).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn forward_tiles<T: AttnElem>(
    dims: &Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    drop: Option<Dropout>,
    out: &mut [T],
    lse: Option<&mut [T]>,
) {
    dims.check(q, k, v);
    let [ql, kl, vl, ol] = dims.contiguous();
    tiles_strided(
        dims,
        (q, ql),
        (k, kl),
        (v, vl),
        mask,
        causal,
        scale,
        drop,
        (out, ol),
        lse,
    )
}

/// Where the rows of one operand of [`forward_strided`] are: row `i` of head `h` of batch `b`
/// starts at element `off + b · batch + h · head + i · row` of its slice, and its `d` (or
/// `dv`) elements are contiguous. A `[batch, heads, seq, d]` tensor is
/// [`Layout::contiguous`]; the query heads of a `[batch, seq, 3 · heads · d]` in-projection
/// (the heads side by side in each row) are `{ off: 0, batch: seq · 3 · heads · d, head: d,
/// row: 3 · heads · d }`, its keys the same with `off: heads · d`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// the first element
    pub off: usize,
    /// from one batch entry to the next
    pub batch: usize,
    /// from one head to the next
    pub head: usize,
    /// from one row (position) to the next
    pub row: usize,
}

impl Layout {
    /// The layout of a contiguous `[batch, heads, seq, width]` tensor.
    pub fn contiguous(heads: usize, seq: usize, width: usize) -> Layout {
        Layout {
            off: 0,
            batch: heads * seq * width,
            head: seq * width,
            row: width,
        }
    }

    /// The start of head `h` of batch entry `b`.
    fn at(&self, b: usize, h: usize) -> usize {
        self.off + b * self.batch + h * self.head
    }

    /// Whether `len` elements hold `batch × heads` heads of `seq` rows `width` wide
    /// (`row >= width`).
    fn fits(&self, batch: usize, heads: usize, seq: usize, width: usize, len: usize) -> bool {
        if batch == 0 || heads == 0 || seq == 0 || width == 0 {
            return true;
        }
        self.row >= width && self.at(batch - 1, heads - 1) + (seq - 1) * self.row + width <= len
    }
}

/// [`forward_dropout`] over operands in any [`Layout`] (their rows contiguous): the heads may
/// be read from the column blocks of one `[batch, seq, 3 · heads · d]` in-projection, and the
/// output written as `[batch, seq, hq · dv]` (`Layout { off: 0, batch: sq · hq · dv, head: dv,
/// row: hq · dv }`), so the head split and merge copy nothing. The output rows of distinct
/// heads must not overlap (each head writes only its `dv` columns of its rows). The mask,
/// dropout and `lse` are indexed by the logical `(b, h, i, j)` as in [`forward`].
///
/// # Panics
/// When an operand's layout reaches past its slice, a row stride is below the row's width, or
/// `hq % hkv != 0` (the runtime checks all first).
#[allow(clippy::too_many_arguments)]
pub fn forward_strided<T: AttnElem>(
    dims: &Dims,
    (q, ql): (&[T], Layout),
    (k, kl): (&[T], Layout),
    (v, vl): (&[T], Layout),
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    drop: Option<Dropout>,
    (out, ol): (&mut [T], Layout),
    mut lse: Option<&mut [T]>,
) {
    let Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    } = *dims;
    assert!(hkv > 0 && hq.is_multiple_of(hkv), "hq % hkv");
    assert!(ql.fits(batch, hq, sq, d, q.len()), "q too short");
    assert!(kl.fits(batch, hkv, sk, d, k.len()), "k too short");
    assert!(vl.fits(batch, hkv, sk, dv, v.len()), "v too short");
    assert!(ol.fits(batch, hq, sq, dv, out.len()), "out too short");
    if let Some(lse) = lse.as_deref() {
        assert!(lse.len() >= batch * hq * sq, "lse too short");
    }
    if batch == 0 || hq == 0 || sq == 0 {
        return;
    }
    if fused_f32(
        dims,
        (q, ql),
        (k, kl),
        (v, vl),
        mask,
        causal,
        scale,
        drop,
        (out, ol),
        lse.as_deref_mut(),
    ) {
        return;
    }
    tiles_strided(
        dims,
        (q, ql),
        (k, kl),
        (v, vl),
        mask,
        causal,
        scale,
        drop,
        (out, ol),
        lse,
    )
}

/// [`forward_strided`] on the GEMM-based tiles of [`head_forward`] (`f64`, NEON; `f32` on
/// x86 runs the fused kernel instead). The operands are checked.
#[allow(clippy::too_many_arguments)]
fn tiles_strided<T: AttnElem>(
    dims: &Dims,
    (q, ql): (&[T], Layout),
    (k, kl): (&[T], Layout),
    (v, vl): (&[T], Layout),
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    drop: Option<Dropout>,
    (out, ol): (&mut [T], Layout),
    mut lse: Option<&mut [T]>,
) {
    let Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    } = *dims;
    if batch == 0 || hq == 0 || sq == 0 {
        return;
    }
    let group = hq / hkv;
    let mut s = vec![T::ZERO; BR * BC];
    let mut own = vec![T::ZERO; sq];
    let mut kt = vec![T::ZERO; kt_len(sk, d)];
    let ld = Ld {
        q: ql.row,
        v: vl.row,
        o: ol.row,
    };
    for b in 0..batch {
        for h in 0..hq {
            let bh = b * hq + h;
            let g = h / group;
            if h % group == 0 && sk > 0 {
                transpose_k(&k[kl.at(b, g)..], sk, d, kl.row, &mut kt);
            }
            let lse_h = match lse.as_deref_mut() {
                Some(x) => &mut x[bh * sq..(bh + 1) * sq],
                None => &mut own[..],
            };
            // (empty heads, `d` or `dv` 0, start at most at their slice's end)
            let (qo, vo) = (ql.at(b, h).min(q.len()), vl.at(b, g).min(v.len()));
            let oe = (ol.at(b, h) + (sq - 1) * ol.row + dv).min(out.len());
            let oo = ol.at(b, h).min(oe);
            head_forward(
                dims,
                &q[qo..],
                &kt,
                &v[vo..],
                mask,
                bh,
                causal,
                T::of(scale),
                Some(&mut out[oo..oe]),
                lse_h,
                &mut s,
                drop.as_ref(),
                ld,
            );
        }
    }
}

/// The forward pass on the fused tile kernel ([`fused`]) when `T` is `f32` and the active ISA
/// is an x86-64 level (AVX-512, AVX2 or the baseline); `false` (nothing done) otherwise: `f64`
/// and NEON run [`head_forward`]'s GEMM-based tiles.
#[allow(clippy::too_many_arguments)]
fn fused_f32<T: AttnElem>(
    dims: &Dims,
    (q, ql): (&[T], Layout),
    (k, kl): (&[T], Layout),
    (v, vl): (&[T], Layout),
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    drop: Option<Dropout>,
    (out, ol): (&mut [T], Layout),
    lse: Option<&mut [T]>,
) -> bool {
    use crate::isa::Isa;
    use std::any::TypeId;
    if TypeId::of::<T>() != TypeId::of::<f32>() || !cfg!(target_arch = "x86_64") {
        return false;
    }
    let f = |x: &[T]| {
        // SAFETY: `T` is `f32`
        unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<f32>(), x.len()) }
    };
    let (q, k, v) = ((f(q), ql), (f(k), kl), (f(v), vl));
    // SAFETY: `T` is `f32`: the same type
    let mask: Mask<'_, f32> = unsafe { std::mem::transmute_copy(&mask) };
    // SAFETY: as above
    let out = unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<f32>(), out.len()) };
    let out = (out, ol);
    let lse = lse.map(|x| unsafe {
        // SAFETY: as above
        std::slice::from_raw_parts_mut(x.as_mut_ptr().cast::<f32>(), x.len())
    });
    let (scale, drop) = (scale as f32, drop.as_ref());
    match crate::isa::active() {
        // SAFETY: `active` only returns levels the CPU supports; the layouts checked
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            fused_x86::run_512(dims, q, k, v, mask, causal, scale, drop, out, lse)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            fused_x86::run_256(dims, q, k, v, mask, causal, scale, drop, out, lse)
        },
        // SAFETY: the portable form needs no ISA; the layouts checked
        Isa::Scalar => unsafe {
            fused::run::<f32, fused::Portable>(dims, q, k, v, mask, causal, scale, drop, out, lse)
        },
        _ => return false,
    }
    true
}

/// What [`backward`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    /// `dq`.
    pub q: bool,
    /// `dk` and `dv`.
    pub kv: bool,
}

/// The gradients of [`forward`] given the output `o` and its gradient `go` (`[batch, hq, sq,
/// dv]`): `dq` (`[batch, hq, sq, d]`) when `want.q`, `dk`/`dv` (`[batch, hkv, sk, d / dv]`) when
/// `want.kv` (each overwritten; the others may be empty), and, when `ds` is given
/// (`batch · hq · sq · sk` long), the gradient of the masked scores `scale·QKᵀ + mask` (what an
/// additive mask receives; 0 where excluded).
///
/// # Panics
/// As [`forward`], and when an output asked for is too short.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: AttnElem>(
    dims: &Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    o: &[T],
    go: &[T],
    want: Want,
    dq: &mut [T],
    dk: &mut [T],
    dvv: &mut [T],
    ds: Option<&mut [T]>,
) {
    backward_dropout(
        dims, q, k, v, mask, causal, scale, None, o, go, want, dq, dk, dvv, ds,
    )
}

/// The gradients of [`forward_dropout`] (as [`backward`]'s), regenerating its mask `Z`:
/// `dV += (Z ∘ P)ᵀ·dO`, `dP = Z ∘ (dO·Vᵀ)`, `dS = P ∘ (dP − rowsum(dO ∘ O))` (the row sum
/// `Σⱼ Pᵢⱼ dPᵢⱼ` is still `dOᵢ · Oᵢ`).
///
/// # Panics
/// As [`backward`].
#[allow(clippy::too_many_arguments)]
pub fn backward_dropout<T: AttnElem>(
    dims: &Dims,
    q: &[T],
    k: &[T],
    v: &[T],
    mask: Mask<'_, T>,
    causal: bool,
    scale: f64,
    drop: Option<Dropout>,
    o: &[T],
    go: &[T],
    want: Want,
    dq: &mut [T],
    dk: &mut [T],
    dvv: &mut [T],
    mut ds: Option<&mut [T]>,
) {
    dims.check(q, k, v);
    let Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    } = *dims;
    assert!(o.len() >= batch * hq * sq * dv && go.len() >= batch * hq * sq * dv);
    if want.q {
        assert!(dq.len() >= batch * hq * sq * d, "dq too short");
        dq[..batch * hq * sq * d].fill(T::ZERO);
    }
    if want.kv {
        assert!(dk.len() >= batch * hkv * sk * d, "dk too short");
        assert!(dvv.len() >= batch * hkv * sk * dv, "dv too short");
        dk[..batch * hkv * sk * d].fill(T::ZERO);
        dvv[..batch * hkv * sk * dv].fill(T::ZERO);
    }
    if let Some(x) = ds.as_deref_mut() {
        assert!(x.len() >= batch * hq * sq * sk, "ds too short");
        x[..batch * hq * sq * sk].fill(T::ZERO);
    }
    let group = hq / hkv;
    let scale_t = T::of(scale);
    // the score and dP tiles, on the heap (128 KiB for f64: not for the stack)
    #[allow(clippy::useless_vec)]
    let mut tiles = vec![T::ZERO; 2 * BR * BC];
    let (s, dp) = tiles.split_at_mut(BR * BC);
    let mut lse = vec![T::ZERO; group * sq];
    let mut delta = vec![T::ZERO; group * sq];
    let mut kt = vec![T::ZERO; kt_len(sk, d)];
    for b in 0..batch {
        for g in 0..hkv {
            let gk = b * hkv + g;
            let kh = &k[gk * sk * d..(gk + 1) * sk * d];
            let vh = &v[gk * sk * dv..(gk + 1) * sk * dv];
            transpose_k(kh, sk, d, d, &mut kt);
            // row statistics of the group's query heads
            for t in 0..group {
                let bh = b * hq + g * group + t;
                head_forward(
                    dims,
                    &q[bh * sq * d..(bh + 1) * sq * d],
                    &kt,
                    vh,
                    mask,
                    bh,
                    causal,
                    scale_t,
                    None,
                    &mut lse[t * sq..(t + 1) * sq],
                    s,
                    None,
                    Ld { q: d, v: dv, o: dv },
                );
                for i in 0..sq {
                    let (ro, rg) = (
                        &o[(bh * sq + i) * dv..(bh * sq + i + 1) * dv],
                        &go[(bh * sq + i) * dv..(bh * sq + i + 1) * dv],
                    );
                    let mut acc = T::ZERO;
                    for (&a, &c) in ro.iter().zip(rg) {
                        acc = acc + a * c;
                    }
                    delta[t * sq + i] = acc;
                }
            }
            for j0 in (0..sk).step_by(BC) {
                let bc = BC.min(sk - j0);
                for t in 0..group {
                    let bh = b * hq + g * group + t;
                    let qh = &q[bh * sq * d..(bh + 1) * sq * d];
                    let goh = &go[bh * sq * dv..(bh + 1) * sq * dv];
                    let istart = if causal { j0.min(sq) } else { 0 };
                    // align to the forward's tiles is not needed: any row split works
                    let mut i0 = istart;
                    while i0 < sq {
                        let br = BR.min(sq - i0);
                        let st = &mut s[..br * bc];
                        let dpt = &mut dp[..br * bc];
                        scores(br, bc, d, scale_t, &qh[i0 * d..], d, &kt[j0 * d..], st);
                        let tm = TileMask {
                            mask,
                            bh,
                            causal,
                            i0,
                            j0,
                        };
                        let lr = &lse[t * sq + i0..t * sq + i0 + br];
                        let dr = &delta[t * sq + i0..t * sq + i0 + br];
                        probs(st, dpt, br, bc, &tm, lr, dr, false);
                        // dP = dO_i·V_jᵀ
                        gemm_plain(
                            br,
                            bc,
                            dv,
                            T::ONE,
                            &goh[i0 * dv..],
                            dv,
                            1,
                            &vh[j0 * dv..],
                            1,
                            dv,
                            false,
                            dpt,
                            bc,
                        );
                        let row_at = |r: usize| ((bh * sq + i0 + r) * sk + j0) as u64;
                        if let Some(z) = &drop {
                            // dP = Z ∘ (dO·Vᵀ)
                            for r in 0..br {
                                drop_row(&mut dpt[r * bc..(r + 1) * bc], z, row_at(r));
                            }
                        }
                        probs(st, dpt, br, bc, &tm, lr, dr, true);
                        if want.kv {
                            // dV_j += Pᵀ·dO_i, or (Z ∘ P)ᵀ·dO_i with dropout (the dS pass above
                            // reads P and writes only dP, so P is still in `st`)
                            if let Some(z) = &drop {
                                for r in 0..br {
                                    drop_row(&mut st[r * bc..(r + 1) * bc], z, row_at(r));
                                }
                            }
                            gemm_plain(
                                bc,
                                dv,
                                br,
                                T::ONE,
                                st,
                                1,
                                bc,
                                &goh[i0 * dv..],
                                dv,
                                1,
                                true,
                                &mut dvv[(gk * sk + j0) * dv..(gk * sk + j0 + bc) * dv],
                                dv,
                            );
                        }
                        if let Some(x) = ds.as_deref_mut() {
                            for r in 0..br {
                                let at = (bh * sq + i0 + r) * sk + j0;
                                x[at..at + bc].copy_from_slice(&dpt[r * bc..(r + 1) * bc]);
                            }
                        }
                        if want.q {
                            gemm_plain(
                                br,
                                d,
                                bc,
                                scale_t,
                                dpt,
                                bc,
                                1,
                                &kh[j0 * d..],
                                d,
                                1,
                                true,
                                &mut dq[(bh * sq + i0) * d..(bh * sq + i0 + br) * d],
                                d,
                            );
                        }
                        if want.kv {
                            gemm_plain(
                                bc,
                                d,
                                br,
                                scale_t,
                                dpt,
                                1,
                                bc,
                                &qh[i0 * d..],
                                d,
                                1,
                                true,
                                &mut dk[(gk * sk + j0) * d..(gk * sk + j0 + bc) * d],
                                d,
                            );
                        }
                        i0 += br;
                    }
                }
            }
        }
    }
}
