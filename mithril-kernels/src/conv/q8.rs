//! int8 convolution forward pass (quantized inference): per-output-channel symmetric int8
//! weights, the input quantized per tensor, `u8 × i8 → i32` accumulation on the int8 GEMM of
//! [`crate::qgemm`] (every path: VNNI, AVX2, `sdot`, scalar), dequantized in its store.
//!
//! **Algorithm: im2col into an int8 buffer.** The whole input is quantized once (`u8`
//! `q + 128`, [`qgemm::quantize_a`]); then, per image and group, a panel of at most
//! [`super::PANEL`] output positions is gathered from the quantized input into a `u8` patch
//! matrix `colᵀ[position, r]` (`r = c·taps + ti·kw + tj`, padding taps and the k padding are
//! 128, i.e. zero), one row per output position: the A operand of the int8 GEMM, whose B is
//! the group's weights `W_gᵀ[r, o]` packed once ([`QConvWeight`]). The GEMM's `[position, o]`
//! result (already `acc · s_x · s_w[o]` in f32) is written transposed into the NCHW output.

use super::Geom;
use crate::qgemm::{self, QIsa, QPackedB};
use std::cell::RefCell;

/// A convolution weight `[o, c / groups, kh, kw]` quantized per output channel and packed for
/// the int8 GEMM, one [`QPackedB`] per group (`k` = `c/groups · kh · kw`, `n` = `o / groups`).
#[derive(Clone, Debug, PartialEq)]
pub struct QConvWeight {
    groups: Vec<QPackedB>,
}

impl QConvWeight {
    /// Quantizes the row-major weight `w` (`o` output channels of `red = c/groups · kh · kw`
    /// values each) in `groups` groups: output channel `j` gets `scale[j] = max |w[j, ·]| / 127`.
    ///
    /// # Panics
    /// When `groups` does not divide `o` or `w` is shorter than `o · red`.
    pub fn quantize(o: usize, groups: usize, red: usize, w: &[f32]) -> QConvWeight {
        assert!(
            groups > 0 && o.is_multiple_of(groups),
            "QConvWeight: groups must divide o"
        );
        assert!(w.len() >= o * red, "QConvWeight: w too short");
        let og = o / groups;
        let groups = (0..groups)
            .map(|gr| QPackedB::quantize(red, og, &w[gr * og * red..][..og * red], 1, red))
            .collect();
        QConvWeight { groups }
    }

    /// Packs already quantized weights (`q`: `o` rows of `red` values, row-major) with their
    /// per-output-channel `scales` (e.g. read from a file). `Err` when `groups` does not
    /// divide `o`, `q` is too short or `scales.len() != o`.
    pub fn from_i8(
        o: usize,
        groups: usize,
        red: usize,
        q: &[i8],
        scales: Vec<f32>,
    ) -> Result<QConvWeight, String> {
        if groups == 0 || !o.is_multiple_of(groups) {
            return Err(format!("{groups} groups do not divide {o} output channels"));
        }
        if scales.len() != o {
            return Err(format!("{} scales for {o} output channels", scales.len()));
        }
        if q.len() < o * red {
            return Err(format!("{} int8 values for {o} × {red}", q.len()));
        }
        let og = o / groups;
        let groups = (0..groups)
            .map(|gr| {
                QPackedB::from_i8(
                    red,
                    og,
                    &q[gr * og * red..][..og * red],
                    1,
                    red,
                    scales[gr * og..(gr + 1) * og].to_vec(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(QConvWeight { groups })
    }

    /// The per-group packed weights.
    pub fn groups(&self) -> &[QPackedB] {
        &self.groups
    }

    /// The reduction length per output channel (`c/groups · kh · kw`).
    pub fn red(&self) -> usize {
        self.groups.first().map_or(0, |b| b.k())
    }

    /// Output channels (all groups).
    pub fn o(&self) -> usize {
        self.groups.iter().map(|b| b.n()).sum()
    }

    /// The quantized weight of output channel `o` at reduction index `r`.
    ///
    /// # Panics
    /// When out of range.
    pub fn get(&self, o: usize, r: usize) -> i8 {
        let og = self.groups[0].n();
        self.groups[o / og].get(r, o % og)
    }

    /// The per-output-channel scales, in channel order.
    pub fn scales(&self) -> Vec<f32> {
        self.groups
            .iter()
            .flat_map(|b| b.scales().iter().copied())
            .collect()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.groups.iter().map(|b| b.bytes()).sum()
    }

    /// Whether it fits geometry `g` (channels, groups, reduction length).
    pub fn fits(&self, g: &Geom) -> bool {
        self.groups.len() == g.groups
            && self.o() == g.o
            && self.groups.iter().all(|b| b.n() == g.og())
            && self.red() == g.cg() * g.taps()
    }
}

/// The scratch of [`forward_q8`]: the quantized input, the patch panel, the result panel
/// (`[position, o]`) and the column scales.
type Scratch = (Vec<u8>, Vec<u8>, Vec<f32>, Vec<f32>);

thread_local! {
    /// [`forward_q8`]'s scratch, grown, never shrunk.
    static QBUF: RefCell<Scratch> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new())) };
}

/// `y = conv(x, w)` in int8 (overwrites `y`): `x` quantized per tensor with `act`
/// (`(multiplier, scale)`, a static calibrated scale: values beyond it are clamped) or, with
/// `None`, with the dynamic scale of its own `max |x|`; see the module docs. Returns the
/// activation scale used.
///
/// # Panics
/// When `g` is not [`Geom::valid`], `w` does not fit it ([`QConvWeight::fits`]) or a slice is
/// shorter than `g` needs.
pub fn forward_q8(
    isa: QIsa,
    g: &Geom,
    x: &[f32],
    w: &QConvWeight,
    act: Option<(f32, f32)>,
    y: &mut [f32],
) -> f32 {
    let (lx, _, ly) = g.lens();
    assert!(g.valid(), "conv q8: invalid geometry {g:?}");
    assert!(w.fits(g), "conv q8: the weight does not fit {g:?}");
    assert!(x.len() >= lx && y.len() >= ly, "conv q8: slices too short");
    let (inv, sa) = match act {
        Some(s) => s,
        None => qgemm::inv_and_scale(qgemm::max_abs(1, lx, x, lx, 1)),
    };
    if ly == 0 {
        return sa;
    }
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let red = cg * g.taps();
    let kp = red.div_ceil(4) * 4;
    let panel = super::PANEL.min(p.max(1));
    QBUF.with(|b| {
        let mut b = b.borrow_mut();
        let (xq, col, tmp, cs) = &mut *b;
        if xq.len() < lx {
            xq.resize(lx, 0);
        }
        if col.len() < panel * kp {
            col.resize(panel * kp, 0);
        }
        if tmp.len() < panel * og {
            tmp.resize(panel * og, 0.0);
        }
        qgemm::quantize_a(1, lx, x, lx, 1, inv, &mut xq[..lx], lx);
        for n in 0..g.n {
            for gr in 0..g.groups {
                let bw = &w.groups[gr];
                cs.clear();
                cs.extend(bw.scales().iter().map(|s| sa * s));
                let xg = &xq[(n * g.c + gr * cg) * q..][..cg * q];
                let yg = &mut y[(n * g.o + gr * og) * p..][..og * p];
                let mut j0 = 0;
                while j0 < p {
                    let nc = panel.min(p - j0);
                    im2col_t_u8(g, xg, j0, nc, col, kp);
                    qgemm::qgemm(
                        isa,
                        nc,
                        &col[..nc * kp],
                        kp,
                        bw,
                        cs,
                        &mut tmp[..nc * og],
                        og,
                        |_, _, _| {},
                    );
                    for o in 0..og {
                        let dst = &mut yg[o * p + j0..][..nc];
                        for (j, d) in dst.iter_mut().enumerate() {
                            *d = tmp[j * og + o];
                        }
                    }
                    j0 += nc;
                }
            }
        }
    });
    sa
}

/// Fills `col[j * kp + r]` (`r = c·taps + ti·kw + tj`, `j` in `0..nc`) with the quantized input
/// byte that output position `j0 + j` reads at `r` (128, i.e. zero, in the padding and for
/// `r >= red`), for one group's quantized channels `xg`.
///
/// Written in `r` order: a tap row (`kw` taps of one channel and kernel row) that lies inside
/// the input with dilation 1 is one contiguous run of input bytes, copied as a block (and as
/// fixed-size copies for the common `kw` of 1, 2, 3, 5 and 7); a row in the vertical padding
/// is filled; only rows that cross the left or right border go tap by tap. The same bytes as
/// [`im2col_t_u8_scalar`] (`conv::tests::int8_patch_gather_matches_the_scalar_gather`).
pub(super) fn im2col_t_u8(g: &Geom, xg: &[u8], j0: usize, nc: usize, col: &mut [u8], kp: usize) {
    let (q, ow, iw) = (g.in_plane(), g.out[1], g.inp[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let cg = g.cg();
    let red = cg * kh * kw;
    /// a copy of a length known at compile time (inlined moves, no `memcpy` call)
    #[inline(always)]
    fn run<const K: usize>(d: &mut [u8], s: &[u8]) {
        d[..K].copy_from_slice(&s[..K]);
    }
    for j in 0..nc {
        let pos = j0 + j;
        let (oh, owp) = (pos / ow, pos % ow);
        let dst = &mut col[j * kp..(j + 1) * kp];
        dst[red..].fill(128);
        // the input column of tap 0, and whether every tap of a row lies inside the input
        let w0 = (owp * g.stride[1]) as isize - g.pad[1] as isize;
        let inside = g.dil[1] == 1 && w0 >= 0 && w0 as usize + kw <= iw;
        for c in 0..cg {
            let xc = &xg[c * q..(c + 1) * q];
            for ti in 0..kh {
                let d = &mut dst[(c * kh + ti) * kw..][..kw];
                let Some(ih) = g.src(0, oh, ti) else {
                    d.fill(128);
                    continue;
                };
                let row = &xc[ih * iw..(ih + 1) * iw];
                if inside {
                    let s = &row[w0 as usize..][..kw];
                    match kw {
                        1 => d[0] = s[0],
                        2 => run::<2>(d, s),
                        3 => run::<3>(d, s),
                        5 => run::<5>(d, s),
                        7 => run::<7>(d, s),
                        _ => d.copy_from_slice(s),
                    }
                } else {
                    for (tj, v) in d.iter_mut().enumerate() {
                        *v = match g.src(1, owp, tj) {
                            Some(b) => row[b],
                            None => 128,
                        };
                    }
                }
            }
        }
    }
}

/// The byte-at-a-time form of [`im2col_t_u8`] (in `(ti, tj, c)` order), what the tests check
/// it against.
#[cfg(test)]
pub(super) fn im2col_t_u8_scalar(
    g: &Geom,
    xg: &[u8],
    j0: usize,
    nc: usize,
    col: &mut [u8],
    kp: usize,
) {
    let (q, ow, iw) = (g.in_plane(), g.out[1], g.inp[1]);
    let (kh, kw) = (g.k[0], g.k[1]);
    let red = g.cg() * kh * kw;
    for j in 0..nc {
        let pos = j0 + j;
        let (oh, owp) = (pos / ow, pos % ow);
        let dst = &mut col[j * kp..(j + 1) * kp];
        dst[red..].fill(128);
        for ti in 0..kh {
            let ih = g.src(0, oh, ti);
            for tj in 0..kw {
                let iwp = g.src(1, owp, tj);
                for c in 0..g.cg() {
                    dst[(c * kh + ti) * kw + tj] = match (ih, iwp) {
                        (Some(a), Some(b)) => xg[c * q + a * iw + b],
                        _ => 128,
                    };
                }
            }
        }
    }
}

/// A transposed convolution's weight `[o, c / groups, kh, kw]` (`o`: its input channels, `c`:
/// its output channels; the forward convolution's `o` and `c` of the geometry it is the input
/// gradient of) quantized **per output channel** of the transposed convolution: channel `c`
/// gets `scale[c] = max |w[·, c, ·]| / 127` over its group's `o / groups` rows and every tap.
/// Packed per group as the int8 GEMM's B `W_g[o, r]` (`k` = `o / groups`, `n` = `red` =
/// `c/groups · kh · kw`, `r = c·taps + ti·kw + tj`; column `r` carries its channel's scale).
#[derive(Clone, Debug, PartialEq)]
pub struct QConvTransposeWeight {
    groups: Vec<QPackedB>,
    taps: usize,
}

impl QConvTransposeWeight {
    /// Quantizes the row-major weight `w` (`o` rows of `cg · taps` values: `cg` output channels
    /// per group, `taps` kernel positions each) in `groups` groups.
    ///
    /// # Panics
    /// When `groups` does not divide `o` or `w` is shorter than `o · cg · taps`.
    pub fn quantize(
        o: usize,
        groups: usize,
        cg: usize,
        taps: usize,
        w: &[f32],
    ) -> QConvTransposeWeight {
        assert!(
            groups > 0 && o.is_multiple_of(groups),
            "QConvTransposeWeight: groups must divide o"
        );
        let red = cg * taps;
        assert!(w.len() >= o * red, "QConvTransposeWeight: w too short");
        let og = o / groups;
        let groups = (0..groups)
            .map(|gr| {
                let wg = &w[gr * og * red..][..og * red];
                let mut invs = vec![0f32; red];
                let mut scales = vec![0f32; red];
                for c in 0..cg {
                    let mut m = 0f32;
                    for row in wg.chunks_exact(red) {
                        for &v in &row[c * taps..(c + 1) * taps] {
                            m = m.max(v.abs());
                        }
                    }
                    let (inv, s) = qgemm::inv_and_scale(m);
                    invs[c * taps..(c + 1) * taps].fill(inv);
                    scales[c * taps..(c + 1) * taps].fill(s);
                }
                QPackedB::from_fn(og, red, scales, |p, r| {
                    qgemm::quantize_one(wg[p * red + r], invs[r])
                })
            })
            .collect();
        QConvTransposeWeight { groups, taps }
    }

    /// Packs already quantized weights (`q`: `o` rows of `cg · taps` values, row-major) with
    /// their per-output-channel `scales` (`groups · cg` of them, e.g. read from a file). `Err`
    /// when `groups` does not divide `o`, `q` is too short or `scales.len() != groups · cg`.
    pub fn from_i8(
        o: usize,
        groups: usize,
        cg: usize,
        taps: usize,
        q: &[i8],
        scales: &[f32],
    ) -> Result<QConvTransposeWeight, String> {
        if groups == 0 || !o.is_multiple_of(groups) {
            return Err(format!("{groups} groups do not divide {o} input channels"));
        }
        if scales.len() != groups * cg {
            return Err(format!(
                "{} scales for {} output channels",
                scales.len(),
                groups * cg
            ));
        }
        let (og, red) = (o / groups, cg * taps);
        if q.len() < o * red {
            return Err(format!("{} int8 values for {o} × {red}", q.len()));
        }
        let groups = (0..groups)
            .map(|gr| {
                let cols = (0..red).map(|r| scales[gr * cg + r / taps.max(1)]);
                QPackedB::from_i8(
                    og,
                    red,
                    &q[gr * og * red..][..og * red],
                    red,
                    1,
                    cols.collect(),
                )
            })
            .collect::<Result<_, _>>()?;
        Ok(QConvTransposeWeight { groups, taps })
    }

    /// The per-group packed weights.
    pub fn groups(&self) -> &[QPackedB] {
        &self.groups
    }

    /// Input channels (the weight's dim 0, all groups).
    pub fn o(&self) -> usize {
        self.groups.iter().map(|b| b.k()).sum()
    }

    /// Values per weight row (`c/groups · taps`).
    pub fn red(&self) -> usize {
        self.groups.first().map_or(0, |b| b.n())
    }

    /// The quantized weight at row `o` (input channel), position `r` of its row.
    ///
    /// # Panics
    /// When out of range.
    pub fn get(&self, o: usize, r: usize) -> i8 {
        let og = self.groups[0].k();
        self.groups[o / og].get(o % og, r)
    }

    /// The per-output-channel scales, in channel order (`groups · c/groups`).
    pub fn scales(&self) -> Vec<f32> {
        let t = self.taps.max(1);
        self.groups
            .iter()
            .flat_map(|b| b.scales().iter().step_by(t).copied())
            .collect()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.groups.iter().map(|b| b.bytes()).sum()
    }

    /// Whether it fits geometry `g`, the forward convolution whose input gradient the
    /// transposed convolution is (channels, groups, taps).
    pub fn fits(&self, g: &Geom) -> bool {
        self.groups.len() == g.groups
            && self.taps == g.taps()
            && self.groups.iter().all(|b| b.k() == g.og())
            && self.red() == g.cg() * g.taps()
    }
}

/// [`transpose_q8`]'s scratch: the quantized input, the transposed input panel, the result
/// panel `[position, r]`, its transpose `[r, position]` and the column scales.
type TScratch = (Vec<u8>, Vec<u8>, Vec<f32>, Vec<f32>, Vec<f32>);

thread_local! {
    /// [`transpose_q8`]'s scratch, grown, never shrunk.
    static QTBUF: RefCell<TScratch> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new())) };
}

/// The transposed convolution in int8 (overwrites `y`): `y = conv_transpose(x, w)`, i.e. the
/// input gradient of the forward convolution `g` with `x` as its output gradient (`x`:
/// `[n, g.o, *g.out]`, `y`: `[n, g.c, *g.inp]`). `x` is quantized per tensor with `act`
/// (`(multiplier, scale)`, static: values beyond it clamp) or, with `None`, with the dynamic
/// scale of its own `max |x|`; `w` per output channel ([`QConvTransposeWeight`]).
///
/// Per image, group and panel of at most [`super::PANEL`] positions of `x`: the int8 GEMM
/// `col[j, r] = Σ_o x_q[o, j] · w_q[o, r]` in `i32`, dequantized in its store as
/// `acc · (s_x · s_w[c])`, then each `col[j, r]` added into `y` at the input position that tap
/// `r` of output position `j` reads (in the order panel, `r`, `j`: the f32 kernel's `col2im`).
/// Returns the activation scale used.
///
/// # Panics
/// When `g` is not [`Geom::valid`], `w` does not fit it or a slice is shorter than `g` needs.
pub fn transpose_q8(
    isa: QIsa,
    g: &Geom,
    x: &[f32],
    w: &QConvTransposeWeight,
    act: Option<(f32, f32)>,
    y: &mut [f32],
) -> f32 {
    let (ly, _, lx) = g.lens();
    assert!(g.valid(), "conv_transpose q8: invalid geometry {g:?}");
    assert!(
        w.fits(g),
        "conv_transpose q8: the weight does not fit {g:?}"
    );
    assert!(
        x.len() >= lx && y.len() >= ly,
        "conv_transpose q8: slices too short"
    );
    let (inv, sa) = match act {
        Some(s) => s,
        None => qgemm::inv_and_scale(qgemm::max_abs(1, lx, x, lx, 1)),
    };
    y[..ly].fill(0.0);
    if ly == 0 || lx == 0 {
        return sa;
    }
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let red = cg * g.taps();
    let panel = super::PANEL.min(p.max(1));
    QTBUF.with(|b| {
        let mut b = b.borrow_mut();
        let (xq, a, tmp, col, cs) = &mut *b;
        if xq.len() < lx {
            xq.resize(lx, 0);
        }
        qgemm::quantize_a(1, lx, x, lx, 1, inv, &mut xq[..lx], lx);
        for tmpv in [&mut *tmp, &mut *col] {
            if tmpv.len() < panel * red {
                tmpv.resize(panel * red, 0.0);
            }
        }
        for n in 0..g.n {
            for gr in 0..g.groups {
                let bw = &w.groups[gr];
                let kp = bw.k_padded();
                if a.len() < panel * kp {
                    a.resize(panel * kp, 0);
                }
                cs.clear();
                cs.extend(bw.scales().iter().map(|s| sa * s));
                let xg = &xq[(n * g.o + gr * og) * p..][..og * p];
                let yg = &mut y[(n * g.c + gr * cg) * q..][..cg * q];
                let mut j0 = 0;
                while j0 < p {
                    let nc = panel.min(p - j0);
                    // A[j, o] = x_q[o, j0 + j], the k padding 128 (zero)
                    for j in 0..nc {
                        a[j * kp + og..(j + 1) * kp].fill(128);
                    }
                    for o in 0..og {
                        for (j, &v) in xg[o * p + j0..][..nc].iter().enumerate() {
                            a[j * kp + o] = v;
                        }
                    }
                    qgemm::qgemm(
                        isa,
                        nc,
                        &a[..nc * kp],
                        kp,
                        bw,
                        cs,
                        &mut tmp[..nc * red],
                        red,
                        |_, _, _| {},
                    );
                    for r in 0..red {
                        for j in 0..nc {
                            col[r * nc + j] = tmp[j * red + r];
                        }
                    }
                    super::col2im(g, &col[..red * nc], j0, nc, yg);
                    j0 += nc;
                }
            }
        }
    });
    sa
}
