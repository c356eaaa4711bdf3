//! The fused forward tile kernel: one query tile of [`BR`] rows against key blocks of [`BC`]
//! columns, with no call into the GEMM and nothing packed per key block.
//!
//! Per query tile, `Q_i` is packed **once** into groups of [`TileOps::G`] rows (`[c][G]`, row
//! `r` of the group at lane `r`; rows past the end are zeros) — except the full groups of an
//! implementation that reads them in place ([`TileOps::q_in_place`]: the x86 forms, when the
//! row stride keeps the 12 rows from crowding one L1 set). Per key head, `K` is transposed
//! once into strips of [`TileOps::W`] keys (`[block][strip][c][W]`, see [`transpose_k_strips`]),
//! so a strip of the score tile reads one contiguous `d · W` run. Then for each key block and
//! each row group:
//!
//! 1. **scores**: the `G × W` register tiles `scale · Q_g·K_jᵀ` straight from `Q_g` and the
//!    strip, the scale applied in registers (times `log2 e` where the kernel works in base 2,
//!    [`TileOps::LOG2`]), stored into the group's score rows `S_g` (`G × BC`, [`SLD`] apart:
//!    an L1-sized buffer); on a causal diagonal strip the keys after each query are then set
//!    to `-∞` there; a partial group computes only its rows (register tiles of fewer rows);
//! 2. the additive / boolean mask, if any (on `S_g`, a scalar pass);
//! 3. **update**: the online-softmax row update reading `S_g` from L1: row max, the rescale
//!    factor `alpha = exp(m_old − m_new)`, `P = exp(S − m_new)` written **in place** (row-major
//!    rows, which is what the `P·V` kernel broadcasts from), the running sum `l`;
//! 4. dropout on `P`'s rows, if any;
//! 5. **pv**: `O_g ← alpha ∘ O_g + P_g·V_j` on `G × DW` register tiles ([`PvIo`]): on the
//!    group's first key block the tiles start from 0 (the running output is never zeroed),
//!    on later ones from the L1-sized `[BR, dv]` running output times `alpha` (applied once
//!    per key block, as the accumulators are loaded); on the group's last key block — after
//!    its update, when `l` is final — the tiles are multiplied by `1 / l` and stored straight
//!    into the output rows, and the rows' log-sum-exp `m + ln l` saved.
//!
//! So a query tile whose keys fit one block (the encoder's seq 128) writes its output once,
//! from the registers, normalized: no zeroing, no running-output round trip, no normalizing
//! pass. Under `causal` a row group only visits the key columns its last row sees (whole
//! strips past it are skipped, not masked; its last block may come before the tile's), and
//! key blocks past the tile's last row are never visited.
//!
//! [`Portable`] is the scalar reference (any [`AttnElem`]); the AVX-512 (12 × 32) and AVX2
//! (6 × 16) forms are in `fused_x86.rs`. `f32` runs this kernel on x86-64 at every ISA level;
//! `f64` and NEON keep the GEMM-based tiles of [`super::head_forward`].

use super::{drop_row, AttnElem, Dims, Dropout, Layout, Ld, Mask, TileMask, BC, BR};

/// Row stride of the score / probability rows `S_g` (elements): [`BC`] plus a cache line, so
/// the `G` rows a broadcast walks fall in different L1 sets.
pub(crate) const SLD: usize = BC + 16;

/// The three steps of a row group's work on one key block, for one element type and ISA.
///
/// # Safety (of every method)
/// The pointers are valid for the extents documented on each method; the ISA the
/// implementation is compiled for is present.
pub(crate) trait TileOps<T: AttnElem> {
    /// Query rows per group (the register tile's rows).
    const G: usize;
    /// Keys per score strip (the register tile's columns); divides [`BC`].
    const W: usize;
    /// Output columns per `P·V` register tile.
    const DW: usize;

    /// Packs rows `0..rows` of `src` (`ld` apart, `d` wide) as `dst[c·G + r]`, rows
    /// `rows..G` as zeros.
    #[inline(always)]
    unsafe fn pack_q(rows: usize, src: *const T, ld: usize, d: usize, dst: *mut T) {
        pack_scalar(rows, Self::G, Self::G, src, ld, d, dst)
    }

    /// Packs keys `0..n ≤ W` (rows of `src`, `ld` apart, `d` wide) as the strip
    /// `dst[c·W + j]` (lanes `n..W` left as they are).
    #[inline(always)]
    unsafe fn pack_k(n: usize, src: *const T, ld: usize, d: usize, dst: *mut T) {
        pack_scalar(n, n, Self::W, src, ld, d, dst)
    }

    /// Whether the scores and the row update work in base 2: [`Self::scores`] is given
    /// `scale · log2 e` (the additive mask's values are multiplied by `log2 e` too), `update`
    /// computes `P = 2^(s − m)` and keeps `m` in base-2 units (the log-sum-exp is `m · ln 2 +
    /// ln l`). Saves the row update's multiplication by `log2 e` per score.
    const LOG2: bool = false;

    /// Whether full row groups of `Q` rows `ld` apart are read in place by [`Self::scores`]
    /// (not packed); `false` unless an implementation says so.
    #[inline(always)]
    fn q_in_place(_ld: usize) -> bool {
        false
    }

    /// `s[r·SLD + w] = scale · Σ_c Q(r, c) · kt[c·W + w]` for `r < G`, `w < W`, with
    /// `s = -∞` where `w ≥ lim0 + r` (`lim0` ≥ `W` when nothing is masked); `Q(r, c) =
    /// qp[c·G + r]` (packed, `qld == 0`) or, for a full group of an implementation whose
    /// [`Self::q_in_place`] holds, `qp[r·qld + c]` (the rows in place). Only rows `0..rows`
    /// are needed: an implementation may leave the rows past them (the zero padding of a
    /// partial group) as they are.
    #[allow(clippy::too_many_arguments)]
    unsafe fn scores(
        rows: usize,
        d: usize,
        qp: *const T,
        qld: usize,
        kt: *const T,
        scale: T,
        lim0: isize,
        s: *mut T,
    );

    /// The online-softmax update of rows `0..rows` of `s` (`bc` columns each, `SLD` apart):
    /// `m`, `l` updated, `alpha[r]` set to the factor the row's output must be rescaled by, the
    /// row overwritten by its unnormalized probabilities. Rows `rows..G` get `P = 0`,
    /// `alpha = 1`.
    unsafe fn update(rows: usize, bc: usize, s: *mut T, m: *mut T, l: *mut T, alpha: *mut T);

    /// The register tile `acc[r][c] = init[r][c] + Σ_{j < bc} p[r·SLD + j] · v[j·ldv + c]`
    /// for `c < ncols ≤ DW`, started and stored as `io` says ([`PvIo`]): from 0 or from
    /// `alpha[r] · o[r·ldo + c]`, stored back into `o` or, scaled by `inv[r]`, into the
    /// output rows `dst[r·ldd + c]`, `r < io.rows`. An implementation may skip the rows
    /// `io.rows..G` (their values are never read).
    unsafe fn pv(bc: usize, p: *const T, v: *const T, ldv: usize, ncols: usize, io: &PvIo<T>);
}

/// Where a row group's `P·V` register tile starts and where it goes.
///
/// On the group's **first** key block the accumulators start at 0 (nothing is read: the
/// running output needs no zeroing); on later blocks at `alpha[r] · o[r·ldo + c]` (the
/// running output rescaled to the new row max). On the group's **last** key block the tile
/// is normalized while it is stored: `inv[r] · acc` into the output rows `dst` (`ldd` apart,
/// only the group's `rows` real rows); on earlier blocks it goes back into `o`. A query tile
/// whose keys fit one block ([`BC`]) never touches `o` at all.
#[derive(Clone, Copy)]
pub(crate) struct PvIo<T> {
    /// The group's first key block: start from 0 (`alpha` and `o` not read).
    pub(crate) first: bool,
    /// The rescale factor of each row (read unless `first`).
    pub(crate) alpha: *const T,
    /// The running output (`G` rows, `ldo` apart; read unless `first`, written unless `last`).
    pub(crate) o: *mut T,
    /// `o`'s row stride.
    pub(crate) ldo: usize,
    /// The group's last key block: store `inv[r] · acc` to `dst`.
    pub(crate) last: bool,
    /// The output rows (written when `last`; only `rows` of them).
    pub(crate) dst: *mut T,
    /// `dst`'s row stride.
    pub(crate) ldd: usize,
    /// `1 / l` of each row (read when `last`).
    pub(crate) inv: *const T,
    /// The group's real rows (`≤ G`).
    pub(crate) rows: usize,
}

/// `dst[c·width + l] = src[l·ld + c]` for lanes `l < n`, `c < d`, and 0 for lanes
/// `n..zero_to`. One lane at a time (no scatter generated).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_scalar<T: AttnElem>(
    n: usize,
    zero_to: usize,
    width: usize,
    src: *const T,
    ld: usize,
    d: usize,
    dst: *mut T,
) {
    for c in 0..d {
        let row = dst.add(c * width);
        for l in 0..n {
            *row.add(l) = *src.add(l * ld + c);
        }
        for l in n..zero_to {
            *row.add(l) = T::ZERO;
        }
    }
}

/// The scalar reference form (any element type): groups of 4 rows, strips of 16 keys.
pub(crate) struct Portable;

impl<T: AttnElem> TileOps<T> for Portable {
    const G: usize = 4;
    const W: usize = 16;
    const DW: usize = 16;

    #[inline(always)]
    unsafe fn scores(
        _rows: usize,
        d: usize,
        qp: *const T,
        _qld: usize,
        kt: *const T,
        scale: T,
        lim0: isize,
        s: *mut T,
    ) {
        const G: usize = 4;
        const W: usize = 16;
        let mut acc = [[T::ZERO; W]; G];
        for c in 0..d {
            let b = std::slice::from_raw_parts(kt.add(c * W), W);
            for (r, row) in acc.iter_mut().enumerate() {
                let a = *qp.add(c * G + r);
                for (x, &y) in row.iter_mut().zip(b) {
                    *x = *x + a * y;
                }
            }
        }
        for (r, row) in acc.iter().enumerate() {
            let dst = std::slice::from_raw_parts_mut(s.add(r * SLD), W);
            for (w, (o, &x)) in dst.iter_mut().zip(row).enumerate() {
                *o = if (w as isize) < lim0.saturating_add(r as isize) {
                    x * scale
                } else {
                    T::NEG_INF
                };
            }
        }
    }

    #[inline(always)]
    unsafe fn update(rows: usize, bc: usize, s: *mut T, m: *mut T, l: *mut T, alpha: *mut T) {
        for r in 0..<Self as TileOps<T>>::G {
            let row = std::slice::from_raw_parts_mut(s.add(r * SLD), bc);
            if r >= rows {
                row.fill(T::ZERO);
                *alpha.add(r) = T::ONE;
                continue;
            }
            let mx = super::row_max(row);
            let m_old = *m.add(r);
            let m_new = if mx > m_old { mx } else { m_old };
            if m_new == T::NEG_INF {
                row.fill(T::ZERO);
                *alpha.add(r) = T::ONE;
                continue;
            }
            let mut sum = T::ZERO;
            for v in row.iter_mut() {
                let p = (*v - m_new).exp_nonpos();
                *v = p;
                sum = sum + p;
            }
            let a = if m_old == T::NEG_INF {
                T::ZERO
            } else {
                (m_old - m_new).exp()
            };
            *alpha.add(r) = a;
            *l.add(r) = *l.add(r) * a + sum;
            *m.add(r) = m_new;
        }
    }

    #[inline(always)]
    unsafe fn pv(bc: usize, p: *const T, v: *const T, ldv: usize, ncols: usize, io: &PvIo<T>) {
        let mut acc = [T::ZERO; 16];
        let acc = &mut acc[..ncols];
        for r in 0..io.rows {
            if io.first {
                acc.fill(T::ZERO);
            } else {
                let a = *io.alpha.add(r);
                let orow = std::slice::from_raw_parts(io.o.add(r * io.ldo), ncols);
                for (x, &y) in acc.iter_mut().zip(orow) {
                    *x = y * a;
                }
            }
            for j in 0..bc {
                let pj = *p.add(r * SLD + j);
                let vrow = std::slice::from_raw_parts(v.add(j * ldv), ncols);
                for (x, &y) in acc.iter_mut().zip(vrow) {
                    *x = *x + pj * y;
                }
            }
            if io.last {
                let inv = *io.inv.add(r);
                let drow = std::slice::from_raw_parts_mut(io.dst.add(r * io.ldd), ncols);
                for (y, &x) in drow.iter_mut().zip(acc.iter()) {
                    *y = x * inv;
                }
            } else {
                std::slice::from_raw_parts_mut(io.o.add(r * io.ldo), ncols).copy_from_slice(acc);
            }
        }
    }
}

/// Length of [`transpose_k_strips`]'s output for `sk` keys of width `d`.
pub(crate) fn kts_len(sk: usize, d: usize) -> usize {
    sk.div_ceil(BC) * BC * d
}

/// `K` of one head (`sk` rows of `d`, rows `ldk` apart) transposed into strips of `K::W` keys
/// ([`TileOps::pack_k`]): key `j` (block `j / BC`, strip `(j % BC) / W`, lane `j % W`),
/// component `c` lands at `kts[(j / BC)·BC·d + ((j % BC) / W)·d·W + c·W + j % W]`. Keys past
/// `sk` in the last block are left as they are (the caller's zeros: never read into a result).
///
/// # Safety
/// `K`'s ISA is present; `kh` holds `sk` rows, `kts` [`kts_len`]`(sk, d)` elements.
#[inline(always)]
pub(crate) unsafe fn transpose_k_strips<T: AttnElem, K: TileOps<T>>(
    kh: &[T],
    ldk: usize,
    sk: usize,
    d: usize,
    kts: &mut [T],
) {
    let w = K::W;
    assert!((sk == 0 || kh.len() >= (sk - 1) * ldk + d) && kts.len() >= kts_len(sk, d));
    for j0 in (0..sk).step_by(w) {
        let base = (j0 / BC) * BC * d + ((j0 % BC) / w) * d * w;
        K::pack_k(
            w.min(sk - j0),
            kh.as_ptr().add(j0 * ldk),
            ldk,
            d,
            kts.as_mut_ptr().add(base),
        );
    }
}

/// A `Vec` holding at least `n` elements from a 64-byte aligned offset (returned).
fn aligned<T: AttnElem>(n: usize) -> (Vec<T>, usize) {
    let v = vec![T::ZERO; n + 64 / std::mem::size_of::<T>()];
    let off = v
        .as_ptr()
        .align_offset(64)
        .min(64 / std::mem::size_of::<T>());
    (v, off)
}

/// The per-call buffers of the fused forward.
pub(crate) struct Bufs<T> {
    kts: (Vec<T>, usize),
    qp: (Vec<T>, usize),
    s: (Vec<T>, usize),
    o: (Vec<T>, usize),
    m: [T; BR],
    l: [T; BR],
    alpha: [T; BR],
    inv: [T; BR],
}

impl<T: AttnElem> Bufs<T> {
    pub(crate) fn new(sk: usize, d: usize, dv: usize, g: usize) -> Self {
        Bufs {
            kts: aligned(kts_len(sk, d)),
            qp: aligned(BR.div_ceil(g) * g * d),
            s: aligned(g * SLD),
            o: aligned(BR.div_ceil(g) * g * dv),
            m: [T::NEG_INF; BR],
            l: [T::ZERO; BR],
            alpha: [T::ONE; BR],
            inv: [T::ONE; BR],
        }
    }
}

/// One query head's fused forward: `out` (`sq` rows of `dv`, contiguous) and `lse` (`sq`).
/// `q` holds the head's `sq × d` rows (contiguous), `kts` its key head transposed by
/// [`transpose_k_strips`] with `K::W`, `v` its `sk × dv` values (contiguous).
///
/// # Safety
/// `K`'s ISA is present; the slices are as long as `dims` says.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn head<T: AttnElem, K: TileOps<T>>(
    dims: &Dims,
    q: &[T],
    v: &[T],
    mask: Mask<'_, T>,
    bh: usize,
    causal: bool,
    scale: T,
    drop: Option<&Dropout>,
    out: &mut [T],
    lse: &mut [T],
    b: &mut Bufs<T>,
    ld: Ld,
) {
    let Dims { sq, sk, d, dv, .. } = *dims;
    let (g, w, dw) = (K::G, K::W, K::DW);
    let kts = b.kts.0[b.kts.1..].as_ptr();
    let qp = b.qp.0[b.qp.1..].as_mut_ptr();
    let s = b.s.0[b.s.1..].as_mut_ptr();
    let o = b.o.0[b.o.1..].as_mut_ptr();
    let qin = K::q_in_place(ld.q);
    // base 2 (`K::LOG2`): the scale takes `log2 e` in, except under an additive mask (whose
    // pass adds natural-unit values: the row is converted after it)
    let add_mask = matches!(mask, Mask::Add(_));
    let log2e = T::of(std::f64::consts::LOG2_E);
    let sc = if K::LOG2 && !add_mask {
        scale * log2e
    } else {
        scale
    };
    for i0 in (0..sq).step_by(BR) {
        let br = BR.min(sq - i0);
        let ng = br.div_ceil(g);
        // Q_i packed once: group `gi`, component `c`, row `r` at `(gi·d + c)·G + r` (full
        // groups read in place instead where the kernel does that at this stride)
        for gi in 0..ng {
            let rows = g.min(br - gi * g);
            if qin && rows == g {
                continue;
            }
            K::pack_q(
                rows,
                q.as_ptr().add((i0 + gi * g) * ld.q),
                ld.q,
                d,
                qp.add(gi * d * g),
            );
        }
        b.m[..br].fill(T::NEG_INF);
        b.l[..br].fill(T::ZERO);
        let jend = if causal { sk.min(i0 + br) } else { sk };
        if jend == 0 {
            // no keys: every row is 0 / 0 (NaN), its log-sum-exp -∞
            for r in 0..br {
                out[(i0 + r) * ld.o..(i0 + r) * ld.o + dv].fill(T::of(f64::NAN));
                lse[i0 + r] = T::NEG_INF;
            }
            continue;
        }
        let dst = out.as_mut_ptr().add(i0 * ld.o);
        for j0 in (0..jend).step_by(BC) {
            let bc = BC.min(jend - j0);
            let kblk = kts.add(j0 * d);
            for gi in 0..ng {
                let r0 = gi * g;
                let rows = g.min(br - r0);
                // the end of the keys the group sees (under `causal`, its last row's)
                let kend = if causal {
                    jend.min(i0 + r0 + rows)
                } else {
                    jend
                };
                if kend <= j0 {
                    continue;
                }
                let bcg = bc.min(kend - j0);
                for st in 0..bcg.div_ceil(w) {
                    let lim0 = if causal {
                        (i0 + r0) as isize - (j0 + st * w) as isize + 1
                    } else {
                        isize::MAX
                    };
                    let (qa, qld) = if qin && rows == g {
                        (q.as_ptr().add((i0 + r0) * ld.q), ld.q)
                    } else {
                        (qp.add(gi * d * g) as *const T, 0)
                    };
                    K::scores(
                        rows,
                        d,
                        qa,
                        qld,
                        kblk.add(st * d * w),
                        sc,
                        lim0,
                        s.add(st * w),
                    );
                }
                if !matches!(mask, Mask::None) {
                    for r in 0..rows {
                        let tm = TileMask {
                            mask,
                            bh,
                            causal: false,
                            i0: i0 + r0,
                            j0,
                        };
                        let row = std::slice::from_raw_parts_mut(s.add(r * SLD), bcg);
                        tm.apply(r, row);
                        if K::LOG2 && add_mask {
                            for x in row.iter_mut() {
                                *x = *x * log2e;
                            }
                        }
                    }
                }
                // `ng · G ≤ BR` (BR is a multiple of every G): the padded rows of the last
                // group have their slots too
                let (m, l, al) = (
                    b.m.as_mut_ptr().add(r0),
                    b.l.as_mut_ptr().add(r0),
                    b.alpha.as_mut_ptr().add(r0),
                );
                K::update(rows, bcg, s, m, l, al);
                if let Some(dr) = drop {
                    for r in 0..rows {
                        let at = ((bh * sq + i0 + r0 + r) * sk + j0) as u64;
                        drop_row(std::slice::from_raw_parts_mut(s.add(r * SLD), bcg), dr, at);
                    }
                }
                // the group's last key block: its rows are final after this update
                let last = kend <= j0 + BC;
                if last {
                    for r in r0..r0 + rows {
                        let l = b.l[r];
                        b.inv[r] = T::ONE / l;
                        let m = if K::LOG2 {
                            b.m[r] * T::of(std::f64::consts::LN_2)
                        } else {
                            b.m[r]
                        };
                        lse[i0 + r] = if l == T::ZERO { T::NEG_INF } else { m + l.ln() };
                    }
                }
                for c0 in (0..dv).step_by(dw) {
                    let io = PvIo {
                        first: j0 == 0,
                        alpha: al,
                        o: o.add(r0 * dv + c0),
                        ldo: dv,
                        last,
                        dst: dst.add(r0 * ld.o + c0),
                        ldd: ld.o,
                        inv: b.inv.as_ptr().add(r0),
                        rows,
                    };
                    K::pv(
                        bcg,
                        s,
                        v.as_ptr().add(j0 * ld.v + c0),
                        ld.v,
                        dw.min(dv - c0),
                        &io,
                    );
                }
            }
        }
    }
}

/// The fused forward over every (batch, head) with the kernel `K`.
///
/// # Safety
/// `K`'s ISA is present; `dims` checked against the slices.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(crate) unsafe fn run<T: AttnElem, K: TileOps<T>>(
    dims: &Dims,
    (q, ql): (&[T], Layout),
    (k, kl): (&[T], Layout),
    (v, vl): (&[T], Layout),
    mask: Mask<'_, T>,
    causal: bool,
    scale: T,
    drop: Option<&Dropout>,
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
    let group = hq / hkv;
    let mut b = Bufs::<T>::new(sk, d, dv, K::G);
    let mut own = vec![T::ZERO; sq];
    for bi in 0..batch {
        for h in 0..hq {
            let bh = bi * hq + h;
            let g = h / group;
            if h % group == 0 && sk > 0 {
                let off = b.kts.1;
                let k0 = kl.at(bi, g);
                transpose_k_strips::<T, K>(
                    &k[k0..k0 + (sk - 1) * kl.row + d],
                    kl.row,
                    sk,
                    d,
                    &mut b.kts.0[off..],
                );
            }
            let lse_h = match lse.as_deref_mut() {
                Some(x) => &mut x[bh * sq..(bh + 1) * sq],
                None => &mut own[..],
            };
            // (empty heads, `d` or `dv` 0, start at most at their slice's end)
            let (qo, vo) = (ql.at(bi, h).min(q.len()), vl.at(bi, g).min(v.len()));
            let oe = (ol.at(bi, h) + (sq - 1) * ol.row + dv).min(out.len());
            let oo = ol.at(bi, h).min(oe);
            head::<T, K>(
                dims,
                &q[qo..],
                &v[vo..],
                mask,
                bh,
                causal,
                scale,
                drop,
                &mut out[oo..oe],
                lse_h,
                &mut b,
                Ld {
                    q: ql.row,
                    v: vl.row,
                    o: ol.row,
                },
            );
        }
    }
}
