//! Convolution over 1-D and 2-D spatial dims, NCHW, PyTorch semantics (cross-correlation),
//! `f32` / `f64`: the forward pass, the data gradient (which is also the transposed
//! convolution's forward pass) and the weight gradient.
//!
//! Two algorithms, chosen per call by [`Geom`]:
//!
//! - **implicit GEMM** on the packed GEMM of [`crate::gemm`]: per image and group, the output
//!   `Y[O_g, P]` (`P` output positions) is `W[O_g, C_g·K] · col[C_g·K, P]`, where `col` is the
//!   image's patch matrix. `col` is never built whole: it is filled a panel of at most
//!   [`PANEL`] output positions at a time (a bounded buffer that stays in L2) and each panel
//!   is one GEMM writing its columns of `Y` in place. A 1×1 convolution with stride 1 and no
//!   padding multiplies the image itself (no copy). The data gradient is `col = Wᵀ · gY` a panel
//!   at a time, scattered back (`col2im`); the weight gradient accumulates `gY · colᵀ` over the
//!   panels of every image;
//! - **direct**: for depthwise convolutions (one input channel per group) and tiny reductions
//!   (`C_g · K <` [`DIRECT_MAX_RED`]): each (output channel, input channel, tap) adds the shifted
//!   input rows times one weight to the output rows, a contiguous multiply-add loop at stride 1
//!   that the compiler vectorizes; multiversioned (AVX-512 / AVX2 / baseline) through
//!   [`crate::isa`].
//!
//! A 1-D convolution is the 2-D one with `H = 1` and a kernel height of 1.

use crate::gemm::{self, GemmElem};
use std::cell::RefCell;

mod igemm;
mod pooled;
mod q8;
#[cfg(test)]
mod tests;
mod winograd;

pub use q8::{forward_q8, transpose_q8, QConvTransposeWeight, QConvWeight};

/// Output positions per im2col panel.
pub const PANEL: usize = 192;
/// Reductions (`C_g · kh · kw`) below this run the direct kernel.
pub const DIRECT_MAX_RED: usize = 16;

/// An element type the convolution kernels support (`f32`, `f64`).
pub trait ConvElem:
    GemmElem<Acc = Self>
    + Copy
    + Default
    + PartialEq
    + PartialOrd
    + Send
    + Sync
    + std::ops::Add<Output = Self>
    + std::ops::Mul<Output = Self>
    + 'static
{
    /// 1.
    const ONE: Self;
    /// `self · b + c` with one rounding (an FMA instruction where the calling copy was compiled
    /// with FMA, a libm call otherwise).
    fn madd(self, b: Self, c: Self) -> Self;
    /// Takes this thread's scratch vector of this type out of its slot (empty if none), for
    /// kernels that must not run their loops inside a closure (a closure is compiled without
    /// the calling copy's target features); give it back with [`ConvElem::put_scratch`].
    fn take_scratch() -> Vec<Self>;
    /// Puts a scratch vector taken with [`ConvElem::take_scratch`] back.
    fn put_scratch(v: Vec<Self>);
    /// The thread-local panel buffer of this type.
    fn with_buf<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

thread_local! {
    static BUF32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static BUF64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

thread_local! {
    static SCRATCH32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static SCRATCH64: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

macro_rules! conv_elem {
    ($t:ty, $buf:ident, $scratch:ident) => {
        impl ConvElem for $t {
            const ONE: Self = 1.0;
            #[inline(always)]
            fn madd(self, b: Self, c: Self) -> Self {
                self.mul_add(b, c)
            }
            fn take_scratch() -> Vec<Self> {
                $scratch.with(|b| b.take())
            }
            fn put_scratch(v: Vec<Self>) {
                $scratch.with(|b| *b.borrow_mut() = v)
            }
            fn with_buf<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R {
                $buf.with(|b| match b.try_borrow_mut() {
                    Ok(mut v) => {
                        if v.len() < len {
                            v.resize(len, 0.0);
                        }
                        f(&mut v[..len])
                    }
                    // re-entered (never in practice): a buffer of its own
                    Err(_) => f(&mut vec![0.0; len]),
                })
            }
        }
    };
}
conv_elem!(f32, BUF32, SCRATCH32);
conv_elem!(f64, BUF64, SCRATCH64);

/// The geometry of one convolution `y = conv(x, w)`: `x: [n, c, h, w]`, `w: [o, c / groups,
/// kh, kw]`, `y: [n, o, oh, ow]`. `pad` is the padding before each spatial dim (the padding
/// after it is whatever makes `out` come out: `out = (in + pad_lo + pad_hi - dil·(k - 1) - 1)
/// / stride + 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geom {
    pub n: usize,
    pub c: usize,
    pub o: usize,
    pub groups: usize,
    /// input spatial dims `[h, w]`
    pub inp: [usize; 2],
    /// kernel dims `[kh, kw]`
    pub k: [usize; 2],
    /// output spatial dims `[oh, ow]`
    pub out: [usize; 2],
    pub stride: [usize; 2],
    pub pad: [usize; 2],
    pub dil: [usize; 2],
}

impl Geom {
    /// Input channels per group.
    pub fn cg(&self) -> usize {
        self.c / self.groups
    }
    /// Output channels per group.
    pub fn og(&self) -> usize {
        self.o / self.groups
    }
    /// Taps per channel (`kh · kw`).
    pub fn taps(&self) -> usize {
        self.k[0] * self.k[1]
    }
    /// Input elements per image channel.
    pub fn in_plane(&self) -> usize {
        self.inp[0] * self.inp[1]
    }
    /// Output positions per image channel.
    pub fn out_plane(&self) -> usize {
        self.out[0] * self.out[1]
    }
    /// `x`, `w`, `y` element counts.
    pub fn lens(&self) -> (usize, usize, usize) {
        (
            self.n * self.c * self.in_plane(),
            self.o * self.cg() * self.taps(),
            self.n * self.o * self.out_plane(),
        )
    }
    /// Whether the geometry is consistent (channels divisible by `groups`, strides and
    /// dilations at least 1).
    pub fn valid(&self) -> bool {
        self.groups > 0
            && self.c.is_multiple_of(self.groups)
            && self.o.is_multiple_of(self.groups)
            && self.stride.iter().all(|&s| s > 0)
            && self.dil.iter().all(|&d| d > 0)
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> usize {
        self.n * self.o * self.out_plane() * self.cg() * self.taps()
    }
    /// Whether [`forward`] and the gradients run the direct kernel.
    pub fn direct(&self) -> bool {
        self.cg() == 1 || self.cg() * self.taps() < DIRECT_MAX_RED
    }
    fn pointwise(&self) -> bool {
        self.k == [1, 1] && self.stride == [1, 1] && self.pad == [0, 0] && self.out == self.inp
    }
    /// The input index along spatial dim `d` read by output index `o` at tap `t` (`None`:
    /// padding).
    #[inline(always)]
    fn src(&self, d: usize, o: usize, t: usize) -> Option<usize> {
        let i = (o * self.stride[d] + t * self.dil[d]) as isize - self.pad[d] as isize;
        (i >= 0 && (i as usize) < self.inp[d]).then_some(i as usize)
    }
    /// The output indices `lo..hi` along dim `d` whose tap `t` reads inside the input.
    #[inline(always)]
    fn valid_range(&self, d: usize, t: usize) -> (usize, usize) {
        let (s, off) = (
            self.stride[d] as isize,
            (t * self.dil[d]) as isize - self.pad[d] as isize,
        );
        // o*s + off >= 0  and  o*s + off <= in - 1
        let lo = if off >= 0 { 0 } else { ((-off) + s - 1) / s };
        let top = self.inp[d] as isize - 1 - off;
        let hi = if top < 0 { 0 } else { top / s + 1 };
        let hi = (hi as usize).min(self.out[d]);
        ((lo as usize).min(hi), hi)
    }
}

fn check<T>(g: &Geom, x: &[T], w: &[T], y: &[T]) {
    let (lx, lw, ly) = g.lens();
    assert!(g.valid(), "conv: invalid geometry {g:?}");
    assert!(
        x.len() >= lx && w.len() >= lw && y.len() >= ly,
        "conv: slices too short for {g:?}"
    );
}

/// `y = conv(x, w)` (overwrites `y`). The algorithm: the direct kernel for small reductions
/// ([`Geom::direct`]); for `f32` 3×3 stride-1 convolutions with at least 16 input and output
/// channels on AVX-512, Winograd's F(2×2, 3×3) (about 4e-6 from the exact sum on unit-scale
/// data), or F(4×4, 3×3) where its GEMMs run on fewer tile vectors (about 8e-5; see
/// [`forward_winograd4`]); else the implicit GEMM (`f32` stride 1 on x86-64) or the panel GEMM.
/// The environment variable `MITHRIL_CONV_WINOGRAD` (read once) restricts the Winograd forms:
/// `2x2` allows F(2×2) only, `off` neither.
///
/// # Panics
/// When a slice is shorter than `g` needs or `g` is not [`Geom::valid`].
pub fn forward<T: ConvElem>(g: &Geom, x: &[T], w: &[T], y: &mut [T]) {
    forward_algo(g, x, w, y, g.direct())
}

/// [`forward`] with the algorithm chosen by the caller (`direct`: the direct kernel, else the
/// implicit GEMM), for tests and benchmarks.
pub fn forward_algo<T: ConvElem>(g: &Geom, x: &[T], w: &[T], y: &mut [T], direct: bool) {
    check(g, x, w, y);
    if g.macs() == 0 {
        y[..g.lens().2].fill(T::default());
        return;
    }
    if direct {
        return direct_fwd(g, x, w, y);
    }
    if let Some((x, w, y)) = as_f32(x, w, y) {
        if winograd::chosen(g) {
            return winograd::forward_chosen(g, x, w, y, None, false, None);
        }
        if igemm::applies(g) {
            let epi = igemm::Epi {
                bias: None,
                relu: false,
            };
            return igemm::forward(g, x, w, y, epi);
        }
    }
    forward_panels(g, x, w, y)
}

/// `y = conv(x, w) + bias` (`bias[o]` added to output channel `o`), then `max(y, 0)` when
/// `relu` (overwrites `y`): on the `f32` implicit GEMM of stride-1 convolutions on x86-64 the
/// bias and the ReLU are applied as the register tiles are stored, on the Winograd form in its
/// output transform (same algorithm choice as [`forward`]); elsewhere in one pass over `y`
/// after [`forward`].
///
/// # Panics
/// As [`forward`], and when `bias` is shorter than the output channels.
pub fn forward_fused<T: ConvElem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    check(g, x, w, y);
    if let Some(b) = bias {
        assert!(b.len() >= g.o, "conv: bias shorter than {} channels", g.o);
    }
    if !g.direct() && g.macs() > 0 && igemm::applies(g) {
        if let (Some((x, w, y)), true) = (
            as_f32(x, w, y),
            bias.is_none_or(|b| as_f32_ref(b).is_some()),
        ) {
            if winograd::chosen(g) {
                let b = bias.and_then(as_f32_ref);
                return winograd::forward_chosen(g, x, w, y, b, relu, None);
            }
            let epi = igemm::Epi {
                bias: bias.and_then(as_f32_ref),
                relu,
            };
            return igemm::forward(g, x, w, y, epi);
        }
    }
    forward(g, x, w, y);
    apply_epilogue(g, bias, relu, y);
}

/// The epilogue of [`forward_fused`] as its own pass over a computed output `y` (`[n, o,
/// out_plane]`): `y = y + bias[o]`, then `max(y, 0)` when `relu` (a NaN stays NaN, as an
/// unfused ReLU). For outputs another kernel computed (the int8 convolution).
///
/// # Panics
/// When `y` is shorter than `g`'s output or `bias` than its channels.
pub fn apply_epilogue<T: ConvElem>(g: &Geom, bias: Option<&[T]>, relu: bool, y: &mut [T]) {
    let p = g.out_plane();
    if p == 0 {
        return;
    }
    for (i, yo) in y[..g.lens().2].chunks_exact_mut(p).enumerate() {
        let b = bias.map_or(T::default(), |b| b[i % g.o]);
        for v in yo.iter_mut() {
            let s = *v + b;
            // `s < 0` (not `max`): a NaN stays NaN, as an unfused ReLU
            *v = if relu && s < T::default() {
                T::default()
            } else {
                s
            };
        }
    }
}

/// [`forward_fused`] followed by a 2×2 / stride-2 max pool (floor mode, PyTorch's NaN rule):
/// `y = maxpool2x2(relu(conv(x, w) + bias))` with `y` of [`Geom::pooled_len`] elements (`[n,
/// o, out[0] / 2, out[1] / 2]`): [`forward`] computes a few images at a time into a scratch
/// buffer that stays in cache, and the pool reads them from there and applies the epilogue to
/// the maxima; where the unpooled path runs Winograd's F(4×4, 3×3), its output transform pools
/// each 4×4 tile in registers and stores only the pooled quarter (no scratch buffer); for
/// `f32` on AVX-512, a small reduction with unit strides that the unpooled
/// path runs on its register-blocked direct kernel (a first layer's one input channel) runs
/// the pooled direct kernel instead ([`forward_pool_direct`]), which pools its register blocks.
/// Bit for bit the unpooled [`forward_fused`] followed by the pool (pooling commutes with the
/// bias add and the ReLU).
///
/// # Panics
/// As [`forward_fused`], and when `y` is shorter than the pooled output.
pub fn forward_fused_pool<T: ConvElem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) {
    let (lx, lw, _) = g.lens();
    assert!(g.valid(), "conv: invalid geometry {g:?}");
    assert!(
        x.len() >= lx && w.len() >= lw && y.len() >= g.pooled_len(),
        "conv: slices too short for {g:?} (pooled)"
    );
    if let Some(b) = bias {
        assert!(b.len() >= g.o, "conv: bias shorter than {} channels", g.o);
    }
    if g.pooled_len() == 0 {
        return;
    }
    if pooled::direct_chosen::<T>(g) {
        return pooled::direct_pool(g, x, w, bias, relu, y);
    }
    // F(4×4, 3×3) pools its output tiles in registers (the pool in its output transform)
    if winograd::chosen4(g) && bias.is_none_or(|b| as_f32_ref(b).is_some()) {
        if let Some((x, w, y)) = as_f32(x, w, y) {
            let b = bias.and_then(as_f32_ref);
            if winograd::forward4(g, x, w, y, b, relu, true, None) {
                return;
            }
        }
    }
    pooled::via_scratch(g, x, w, bias, relu, y)
}

/// [`forward_fused_pool`] on the pooled direct kernel (for tests and benchmarks;
/// [`forward_fused_pool`] chooses it for `f32` on AVX-512, where its register block is written
/// in intrinsics: elsewhere the generic block compiles to scalar code and measured several
/// times slower than the direct kernel plus the pool from a scratch buffer, see BENCHMARKS.md,
/// task cnn14e and session 15). Returns `false` (and leaves `y`) where it does not apply
/// (a direct convolution with unit strides, a reduction of at most 64, an output of at least
/// 2×2).
///
/// # Panics
/// As [`forward_fused_pool`].
pub fn forward_pool_direct<T: ConvElem>(
    g: &Geom,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    relu: bool,
    y: &mut [T],
) -> bool {
    if !g.pooled_direct() || g.macs() == 0 {
        return false;
    }
    let (lx, lw, _) = g.lens();
    assert!(
        x.len() >= lx && w.len() >= lw && y.len() >= g.pooled_len(),
        "conv: slices too short for {g:?} (pooled)"
    );
    if let Some(b) = bias {
        assert!(b.len() >= g.o, "conv: bias shorter than {} channels", g.o);
    }
    pooled::direct_pool(g, x, w, bias, relu, y);
    true
}

/// The 2×2 / stride-2 max pool of [`forward_fused_pool`] alone, over `y_full`, a computed
/// output of `g` (for outputs another kernel computed: the int8 convolution), into `y`
/// ([`Geom::pooled_len`] elements).
///
/// # Panics
/// When a slice is shorter than `g` needs.
pub fn max_pool2_output<T: ConvElem>(g: &Geom, y_full: &[T], y: &mut [T]) {
    assert!(
        y_full.len() >= g.lens().2 && y.len() >= g.pooled_len(),
        "conv: slices too short for {g:?} (pool)"
    );
    pooled::pool_only(g, y_full, y)
}

/// The `f32` stride-1 forward pass on the implicit-GEMM tile `tile` (for benchmarks and
/// tests): 32 or 48 (the AVX-512 8-row tiles on the padded grid), 16 (the AVX2 one), or
/// `1000·V + NB` (the AVX-512 channel-vector tiles: 4006, 2012, 3008, 1024). Returns `false`
/// (and leaves `y`) where that path does not apply.
pub fn forward_igemm(g: &Geom, x: &[f32], w: &[f32], y: &mut [f32], tile: usize) -> bool {
    check(g, x, w, y);
    if g.macs() == 0 || !igemm::applies(g) {
        return false;
    }
    let epi = igemm::Epi {
        bias: None,
        relu: false,
    };
    igemm::forward_with(g, x, w, y, epi, Some(tile), None);
    true
}

/// The `f32` forward pass by Winograd's F(2×2, 3×3) (for benchmarks and tests; [`forward`]
/// and [`forward_fused`] choose it on AVX-512, its register form; on other ISAs this runs the
/// portable form, which they do not choose), with the epilogue of [`forward_fused`] and the
/// thread count forced when given. Returns `false` (and
/// leaves `y`) where that path does not apply (a 3×3 kernel, unit strides and dilations, one
/// group, at least 16 input and output channels, an output of at least 2×2).
pub fn forward_winograd(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    threads: Option<usize>,
) -> bool {
    check(g, x, w, y);
    if g.macs() == 0 || g.direct() || !winograd::applies(g) {
        return false;
    }
    if let Some(b) = bias {
        assert!(b.len() >= g.o, "conv: bias shorter than {} channels", g.o);
    }
    winograd::forward(g, x, w, y, bias, relu, threads);
    true
}

/// The `f32` forward pass by Winograd's F(4×4, 3×3) on AVX-512 (for benchmarks and tests;
/// [`forward`], [`forward_fused`] and [`forward_fused_pool`] choose it where F(2×2, 3×3) would
/// run and the shape favours it), with the epilogue of [`forward_fused`] and, with `pool`, the
/// 2×2 max pool of [`forward_fused_pool`] in its output transform (`y` then
/// [`Geom::pooled_len`] long); the thread count forced when given. Returns `false` (and leaves
/// `y`) where it does not apply (as [`forward_winograd`], or an output below 2×2 with `pool`)
/// or without AVX-512.
///
/// # Panics
/// When a slice is shorter than `g` needs or `g` is not [`Geom::valid`].
#[allow(clippy::too_many_arguments)]
pub fn forward_winograd4(
    g: &Geom,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    relu: bool,
    pool: bool,
    y: &mut [f32],
    threads: Option<usize>,
) -> bool {
    let (lx, lw, ly) = g.lens();
    assert!(g.valid(), "conv: invalid geometry {g:?}");
    let ly = if pool { g.pooled_len() } else { ly };
    assert!(
        x.len() >= lx && w.len() >= lw && y.len() >= ly,
        "conv: slices too short for {g:?}"
    );
    if g.macs() == 0 || g.direct() || !winograd::applies(g) || (pool && g.pooled_len() == 0) {
        return false;
    }
    if let Some(b) = bias {
        assert!(b.len() >= g.o, "conv: bias shorter than {} channels", g.o);
    }
    winograd::forward4(g, x, w, y, bias, relu, pool, threads)
}

/// `b` as `f32` when `T` is `f32`.
fn as_f32_ref<T: 'static>(b: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: `T` is `f32`.
        .then(|| unsafe { std::slice::from_raw_parts(b.as_ptr() as *const f32, b.len()) })
}

/// The three slices as `f32` when `T` is `f32`.
fn as_f32<'a, T: 'static>(
    x: &'a [T],
    w: &'a [T],
    y: &'a mut [T],
) -> Option<(&'a [f32], &'a [f32], &'a mut [f32])> {
    if std::any::TypeId::of::<T>() != std::any::TypeId::of::<f32>() {
        return None;
    }
    // SAFETY: `T` is `f32`.
    unsafe {
        Some((
            std::slice::from_raw_parts(x.as_ptr() as *const f32, x.len()),
            std::slice::from_raw_parts(w.as_ptr() as *const f32, w.len()),
            std::slice::from_raw_parts_mut(y.as_mut_ptr() as *mut f32, y.len()),
        ))
    }
}

/// The forward implicit GEMM over bounded im2col panels (every ISA and element type).
fn forward_panels<T: ConvElem>(g: &Geom, x: &[T], w: &[T], y: &mut [T]) {
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let red = cg * g.taps();
    for n in 0..g.n {
        for gr in 0..g.groups {
            let xg = &x[(n * g.c + gr * cg) * q..][..cg * q];
            let wg = &w[gr * og * red..][..og * red];
            let yg = &mut y[(n * g.o + gr * og) * p..][..og * p];
            if g.pointwise() {
                gemm::gemm_plain(og, p, cg, T::ONE, wg, red, 1, xg, p, 1, false, yg, p);
                continue;
            }
            let panel = PANEL.min(p);
            T::with_buf(red * panel, |col| {
                let mut j0 = 0;
                while j0 < p {
                    let nc = panel.min(p - j0);
                    im2col(g, xg, j0, nc, col);
                    gemm::gemm_plain(
                        og,
                        nc,
                        red,
                        T::ONE,
                        wg,
                        red,
                        1,
                        col,
                        nc,
                        1,
                        false,
                        &mut yg[j0..],
                        p,
                    );
                    j0 += nc;
                }
            });
        }
    }
}

/// `gx = convᵀ(gy, w)`: the gradient of [`forward`] with respect to `x` given `gy`, which is
/// also the transposed convolution of `gy` by `w` (overwrites `gx`).
///
/// # Panics
/// As [`forward`].
pub fn backward_data<T: ConvElem>(g: &Geom, gy: &[T], w: &[T], gx: &mut [T]) {
    backward_data_algo(g, gy, w, gx, g.direct())
}

/// [`backward_data`] with the algorithm chosen by the caller (`direct`: the direct kernel, else the
/// implicit GEMM), for tests and benchmarks.
pub fn backward_data_algo<T: ConvElem>(g: &Geom, gy: &[T], w: &[T], gx: &mut [T], direct: bool) {
    check(g, gx, w, gy);
    gx[..g.lens().0].fill(T::default());
    if g.macs() == 0 {
        return;
    }
    if direct {
        return direct_bwd_data(g, gy, w, gx);
    }
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let red = cg * g.taps();
    for n in 0..g.n {
        for gr in 0..g.groups {
            let gxg = &mut gx[(n * g.c + gr * cg) * q..][..cg * q];
            let wg = &w[gr * og * red..][..og * red];
            let gyg = &gy[(n * g.o + gr * og) * p..][..og * p];
            if g.pointwise() {
                gemm::gemm_plain(cg, p, og, T::ONE, wg, 1, red, gyg, p, 1, false, gxg, p);
                continue;
            }
            let panel = PANEL.min(p);
            T::with_buf(red * panel, |col| {
                let mut j0 = 0;
                while j0 < p {
                    let nc = panel.min(p - j0);
                    gemm::gemm_plain(
                        red,
                        nc,
                        og,
                        T::ONE,
                        wg,
                        1,
                        red,
                        &gyg[j0..],
                        p,
                        1,
                        false,
                        col,
                        nc,
                    );
                    col2im(g, col, j0, nc, gxg);
                    j0 += nc;
                }
            });
        }
    }
}

/// `gw = dconv/dw` given `gy` (overwrites `gw`).
///
/// # Panics
/// As [`forward`].
pub fn backward_weight<T: ConvElem>(g: &Geom, x: &[T], gy: &[T], gw: &mut [T]) {
    backward_weight_algo(g, x, gy, gw, g.direct())
}

/// [`backward_weight`] with the algorithm chosen by the caller (`direct`: the direct kernel, else the
/// implicit GEMM), for tests and benchmarks.
pub fn backward_weight_algo<T: ConvElem>(g: &Geom, x: &[T], gy: &[T], gw: &mut [T], direct: bool) {
    check(g, x, gw, gy);
    gw[..g.lens().1].fill(T::default());
    if g.macs() == 0 {
        return;
    }
    if direct {
        return direct_bwd_weight(g, x, gy, gw);
    }
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let red = cg * g.taps();
    for n in 0..g.n {
        for gr in 0..g.groups {
            let xg = &x[(n * g.c + gr * cg) * q..][..cg * q];
            let gwg = &mut gw[gr * og * red..][..og * red];
            let gyg = &gy[(n * g.o + gr * og) * p..][..og * p];
            if g.pointwise() {
                gemm::gemm_plain(og, cg, p, T::ONE, gyg, p, 1, xg, 1, p, true, gwg, red);
                continue;
            }
            let panel = PANEL.min(p);
            T::with_buf(red * panel, |col| {
                let mut j0 = 0;
                while j0 < p {
                    let nc = panel.min(p - j0);
                    im2col(g, xg, j0, nc, col);
                    gemm::gemm_plain(
                        og,
                        red,
                        nc,
                        T::ONE,
                        &gyg[j0..],
                        p,
                        1,
                        col,
                        1,
                        nc,
                        true,
                        gwg,
                        red,
                    );
                    j0 += nc;
                }
            });
        }
    }
}

/// Fills `col[r * nc + j]` (`r = c·taps + ti·kw + tj`, `j` in `0..nc`) with the input value the
/// output position `j0 + j` reads at row `r` (0 in the padding), for one group's channels `xg`.
fn im2col<T: ConvElem>(g: &Geom, xg: &[T], j0: usize, nc: usize, col: &mut [T]) {
    let (q, ow, iw) = (g.in_plane(), g.out[1], g.inp[1]);
    let z = T::default();
    let mut r = 0;
    for c in 0..g.cg() {
        let xc = &xg[c * q..][..q];
        for ti in 0..g.k[0] {
            for tj in 0..g.k[1] {
                let dst = &mut col[r * nc..][..nc];
                r += 1;
                let (lo, hi) = g.valid_range(1, tj);
                // walk the panel one output row at a time
                let mut j = 0;
                while j < nc {
                    let pos = j0 + j;
                    let (oh, ow0) = (pos / ow, pos % ow);
                    let len = (ow - ow0).min(nc - j);
                    let seg = &mut dst[j..j + len];
                    match g.src(0, oh, ti) {
                        None => seg.fill(z),
                        Some(ih) => {
                            let row = &xc[ih * iw..][..iw];
                            let (a, b) = (lo.max(ow0), hi.min(ow0 + len).max(lo.max(ow0)));
                            seg[..a - ow0].fill(z);
                            seg[b - ow0..].fill(z);
                            let s = g.stride[1];
                            let first = a * s + tj * g.dil[1] - g.pad[1];
                            if s == 1 {
                                seg[a - ow0..b - ow0].copy_from_slice(&row[first..first + (b - a)]);
                            } else {
                                for (k, v) in seg[a - ow0..b - ow0].iter_mut().enumerate() {
                                    *v = row[first + k * s];
                                }
                            }
                        }
                    }
                    j += len;
                }
            }
        }
    }
}

/// Adds `col` (laid out as [`im2col`] writes it) back into the input positions it came from.
fn col2im<T: ConvElem>(g: &Geom, col: &[T], j0: usize, nc: usize, gxg: &mut [T]) {
    let (q, ow, iw) = (g.in_plane(), g.out[1], g.inp[1]);
    let mut r = 0;
    for c in 0..g.cg() {
        let xc = &mut gxg[c * q..][..q];
        for ti in 0..g.k[0] {
            for tj in 0..g.k[1] {
                let src = &col[r * nc..][..nc];
                r += 1;
                let (lo, hi) = g.valid_range(1, tj);
                let mut j = 0;
                while j < nc {
                    let pos = j0 + j;
                    let (oh, ow0) = (pos / ow, pos % ow);
                    let len = (ow - ow0).min(nc - j);
                    if let Some(ih) = g.src(0, oh, ti) {
                        let row = &mut xc[ih * iw..][..iw];
                        let (a, b) = (lo.max(ow0), hi.min(ow0 + len).max(lo.max(ow0)));
                        let s = g.stride[1];
                        let first = a * s + tj * g.dil[1] - g.pad[1];
                        let seg = &src[j + a - ow0..j + b - ow0];
                        if s == 1 {
                            for (d, &v) in row[first..first + (b - a)].iter_mut().zip(seg) {
                                *d = *d + v;
                            }
                        } else {
                            for (k, &v) in seg.iter().enumerate() {
                                let d = &mut row[first + k * s];
                                *d = *d + v;
                            }
                        }
                    }
                    j += len;
                }
            }
        }
    }
}

use crate::isa::multiversion;

multiversion! {
    fn direct_fwd<T: ConvElem>(g: &Geom, x: &[T], w: &[T], y: &mut [T]) => direct_fwd_impl;
}
multiversion! {
    fn direct_bwd_data<T: ConvElem>(g: &Geom, gy: &[T], w: &[T], gx: &mut [T]) => direct_bwd_data_impl;
}
multiversion! {
    fn direct_bwd_weight<T: ConvElem>(g: &Geom, x: &[T], gy: &[T], gw: &mut [T]) => direct_bwd_weight_impl;
}

/// Calls `f(out row oh, in row ih, (lo, hi) output columns in range, first input column)` for
/// every output row that tap `(ti, tj)` reads inside the input.
#[inline(always)]
fn for_rows(g: &Geom, ti: usize, tj: usize, mut f: impl FnMut(usize, usize, usize, usize, usize)) {
    let (rlo, rhi) = g.valid_range(0, ti);
    let (lo, hi) = g.valid_range(1, tj);
    if lo >= hi {
        return;
    }
    for oh in rlo..rhi {
        let ih = oh * g.stride[0] + ti * g.dil[0] - g.pad[0];
        let first = lo * g.stride[1] + tj * g.dil[1] - g.pad[1];
        f(oh, ih, lo, hi, first);
    }
}

#[inline(always)]
fn direct_fwd_impl<T: ConvElem>(g: &Geom, x: &[T], w: &[T], y: &mut [T]) {
    if g.blocked_direct() {
        // FMA where the copy was compiled with it (AVX2 / AVX-512); the baseline copy keeps
        // the separate multiply and add (`mul_add` would be a libm call there)
        return if crate::isa::active() == crate::isa::Isa::Scalar {
            direct_fwd_blocked::<T, false>(g, x, w, y)
        } else {
            direct_fwd_blocked::<T, true>(g, x, w, y)
        };
    }
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let (ow, iw, s, taps) = (g.out[1], g.inp[1], g.stride[1], g.taps());
    for n in 0..g.n {
        for o in 0..g.o {
            let gr = o / og;
            let yo = &mut y[(n * g.o + o) * p..][..p];
            yo.fill(T::default());
            for c in 0..cg {
                let xc = &x[(n * g.c + gr * cg + c) * q..][..q];
                let wc = &w[(o * cg + c) * taps..][..taps];
                for ti in 0..g.k[0] {
                    for tj in 0..g.k[1] {
                        let wv = wc[ti * g.k[1] + tj];
                        for_rows(g, ti, tj, |oh, ih, lo, hi, first| {
                            let dst = &mut yo[oh * ow + lo..oh * ow + hi];
                            let row = &xc[ih * iw..][..iw];
                            if s == 1 {
                                for (d, &v) in dst.iter_mut().zip(&row[first..first + (hi - lo)]) {
                                    *d = *d + wv * v;
                                }
                            } else {
                                for (k, d) in dst.iter_mut().enumerate() {
                                    *d = *d + wv * row[first + k * s];
                                }
                            }
                        });
                    }
                }
            }
        }
    }
}

/// Output positions per vector chunk of the blocked direct kernel.
const DL: usize = 16;
/// Output channels per register block of the blocked direct kernel.
const DOB: usize = 4;
/// Chunks per register block of the blocked direct kernel (`DOB · DNC` accumulators of `DL`).
const DNC: usize = 4;
/// Reductions (`C_g · kh · kw`) up to which the blocked direct kernel runs.
const DBLOCK_MAX_RED: usize = 64;

impl Geom {
    /// Whether the direct forward pass and weight gradient run the register-blocked kernels
    /// ([`direct_fwd_blocked`], [`direct_bwd_weight_blocked`]): unit column stride, output rows at least [`DL`] wide, at least
    /// [`DOB`] output channels per group and a small reduction.
    fn blocked_direct(&self) -> bool {
        self.stride[1] == 1
            && self.out[1] >= DL
            && self.og() >= DOB
            && self.cg() * self.taps() <= DBLOCK_MAX_RED
    }
}

/// The layout the register-blocked direct kernels share: the zero-padded plane of one image
/// group's input channels (`ph × pw` per channel), each tap's offset in it, and the output
/// chunks.
struct Blocked {
    ph: usize,
    pw: usize,
    /// tap `r = (c·kh + ti)·kw + tj` reads the padded input at `base + offs[r]`
    offs: Vec<usize>,
    /// `(output row, first column, lanes already covered by the row's previous chunk)`, a
    /// multiple of [`DNC`] long (the tail repeats the last chunk with every lane covered)
    chunks: Vec<(usize, usize, usize)>,
}

impl Blocked {
    /// The padded plane and the tap offsets, no chunks (for [`igemm`]).
    fn new_grid(g: &Geom) -> Blocked {
        let (ohn, ow) = (g.out[0], g.out[1]);
        // the padded plane covers every position a tap reads
        let ph = (ohn - 1) * g.stride[0] + (g.k[0] - 1) * g.dil[0] + 1;
        let pw = (ow - 1) + (g.k[1] - 1) * g.dil[1] + 1;
        let mut offs = Vec::with_capacity(g.cg() * g.taps());
        for c in 0..g.cg() {
            for ti in 0..g.k[0] {
                for tj in 0..g.k[1] {
                    offs.push(c * ph * pw + ti * g.dil[0] * pw + tj * g.dil[1]);
                }
            }
        }
        Blocked {
            ph,
            pw,
            offs,
            chunks: Vec::new(),
        }
    }

    fn new(g: &Geom) -> Blocked {
        let Blocked { ph, pw, offs, .. } = Blocked::new_grid(g);
        let (ohn, ow) = (g.out[0], g.out[1]);
        let mut chunks = Vec::with_capacity(ohn * ow.div_ceil(DL) + DNC);
        for oh in 0..ohn {
            let mut s = 0;
            while s + DL <= ow {
                chunks.push((oh, s, 0));
                s += DL;
            }
            if s < ow {
                chunks.push((oh, ow - DL, s - (ow - DL)));
            }
        }
        let (oh, s, _) = chunks[chunks.len() - 1];
        while !chunks.len().is_multiple_of(DNC) {
            chunks.push((oh, s, DL));
        }
        Blocked {
            ph,
            pw,
            offs,
            chunks,
        }
    }

    /// Elements of the padded input of one image group.
    fn plane_len(&self, g: &Geom) -> usize {
        g.cg() * self.ph * self.pw
    }

    /// Copies image `n`'s group `gr` channels into the zero-padded `xp`.
    #[inline(always)]
    fn pad<T: ConvElem>(&self, g: &Geom, x: &[T], n: usize, gr: usize, xp: &mut [T]) {
        let (cg, q, plane) = (g.cg(), g.in_plane(), self.ph * self.pw);
        let cols = g.inp[1].min(self.pw.saturating_sub(g.pad[1]));
        xp.fill(T::default());
        if cols == 0 {
            return;
        }
        for c in 0..cg {
            let xc = &x[(n * g.c + gr * cg + c) * q..][..q];
            for ih in 0..g.inp[0] {
                let pr = ih + g.pad[0];
                if pr >= self.ph {
                    break;
                }
                xp[c * plane + pr * self.pw + g.pad[1]..][..cols]
                    .copy_from_slice(&xc[ih * g.inp[1]..][..cols]);
            }
        }
    }

    /// The padded-input positions of the chunks' first outputs.
    #[inline(always)]
    fn bases(&self, g: &Geom, cs: &[(usize, usize, usize)]) -> [usize; DNC] {
        let mut base = [0usize; DNC];
        for (b, &(oh, s, _)) in base.iter_mut().zip(cs) {
            *b = oh * g.stride[0] * self.pw + s;
        }
        base
    }
}

/// The register-blocked direct forward pass for small reductions (a first layer's one or three
/// input channels): per image and group, the group's input channels are copied once into a
/// zero-padded buffer (so every tap is a constant offset and no bounds are checked) and the
/// weights into blocks of [`DOB`] output channels (`[block][tap][DOB]`); each output row is
/// cut into chunks of [`DL`] positions (the last chunk of a row ends at the row's end,
/// overlapping the one before it: those values are written twice, the same values). A register
/// block is [`DOB`] output channels × [`DNC`] chunks: per tap, [`DNC`] vector loads and
/// [`DOB`] broadcasts feed `DOB · DNC` multiply-adds, and each output is stored once.
/// Group `gr`'s weights in blocks of `B` output channels, for the register-blocked direct
/// kernels: `wp[(ob·red + r)·B + j]` is output channel `ob·B + j`'s weight at reduction index
/// `r` (0 past the group's last channel).
#[inline(always)]
pub(super) fn pack_oblocks<T: ConvElem, const B: usize>(
    g: &Geom,
    gr: usize,
    w: &[T],
    wp: &mut [T],
) {
    let (og, red) = (g.og(), g.cg() * g.taps());
    for ob in 0..og.div_ceil(B) {
        for r in 0..red {
            for j in 0..B {
                let o = ob * B + j;
                wp[(ob * red + r) * B + j] = if o < og {
                    w[(gr * og + o) * red + r]
                } else {
                    T::default()
                };
            }
        }
    }
}

#[inline(always)]
fn direct_fwd_blocked<T: ConvElem, const FMA: bool>(g: &Geom, x: &[T], w: &[T], y: &mut [T]) {
    let (og, red) = (g.og(), g.cg() * g.taps());
    let (ohn, ow) = (g.out[0], g.out[1]);
    let bl = Blocked::new(g);
    let nob = og.div_ceil(DOB);
    let plane = bl.plane_len(g);
    // the f32 register block in AVX-512 / AVX2 intrinsics (`pooled::x86::block_fwd_512` /
    // `block_fwd_256`, the same sums): the generic one relies on the vectorizer, which a build
    // turned into scalar code
    let simd = cfg!(target_arch = "x86_64")
        && FMA
        && DL == 16
        && DOB == 4
        && DNC == 4
        && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && crate::isa::active() >= crate::isa::Isa::Avx2;
    let avx512 = simd && crate::isa::active() >= crate::isa::Isa::Avx512;
    // (read only on x86-64)
    let _ = avx512;
    // (a scratch vector, not `with_buf`: the loops must not sit in a closure)
    let mut buf = T::take_scratch();
    buf.clear();
    buf.resize(plane + nob * red * DOB, T::default());
    {
        let (xp, wp) = buf.split_at_mut(plane);
        for gr in 0..g.groups {
            pack_oblocks::<T, DOB>(g, gr, w, wp);
            for n in 0..g.n {
                bl.pad(g, x, n, gr, xp);
                let xp = &*xp;
                for ob in 0..nob {
                    let wb = &wp[ob * red * DOB..][..red * DOB];
                    for cs in bl.chunks.chunks_exact(DNC) {
                        let base = bl.bases(g, cs);
                        let mut acc = [[T::default(); DL]; DOB * DNC];
                        #[cfg(target_arch = "x86_64")]
                        if simd {
                            let xe = base.iter().max().unwrap_or(&0)
                                + bl.offs.iter().max().unwrap_or(&0)
                                + DL;
                            assert!(xe <= xp.len() && wb.len() >= bl.offs.len() * DOB);
                            let (wb, xp) = (wb.as_ptr() as *const f32, xp.as_ptr() as *const f32);
                            // SAFETY: T is f32 (`simd` checks it), as `[[f32; 16]; 16]`.
                            let out = unsafe {
                                &mut *(&mut acc as *mut [[T; DL]; DOB * DNC]
                                    as *mut [[f32; 16]; 16])
                            };
                            // SAFETY: AVX-512 (or AVX2 and FMA) is active, every read is
                            // inside `xp` / `wb` (checked above).
                            unsafe {
                                if avx512 {
                                    pooled::x86::block_fwd_512(&bl.offs, wb, xp, base, out);
                                } else {
                                    pooled::x86::block_fwd_256(&bl.offs, wb, xp, base, out);
                                }
                            }
                        }
                        for (r, &off) in bl.offs.iter().enumerate() {
                            if simd {
                                break;
                            }
                            let wv: &[T; DOB] = wb[r * DOB..][..DOB].try_into().unwrap();
                            for c in 0..DNC {
                                let xv: &[T; DL] = xp[base[c] + off..][..DL].try_into().unwrap();
                                for j in 0..DOB {
                                    let a = &mut acc[j * DNC + c];
                                    for l in 0..DL {
                                        a[l] = if FMA {
                                            wv[j].madd(xv[l], a[l])
                                        } else {
                                            a[l] + wv[j] * xv[l]
                                        };
                                    }
                                }
                            }
                        }
                        for j in 0..DOB.min(og - ob * DOB) {
                            let yo = (n * g.o + gr * og + ob * DOB + j) * ohn * ow;
                            for (c, &(oh, s, _)) in cs.iter().enumerate() {
                                y[yo + oh * ow + s..][..DL].copy_from_slice(&acc[j * DNC + c]);
                            }
                        }
                    }
                }
            }
        }
    }
    T::put_scratch(buf);
}

/// Taps per register block of the blocked weight gradient.
const DRB: usize = 3;

/// The register-blocked direct weight gradient (the layout of [`direct_fwd_blocked`]): a
/// register block is [`DOB`] output channels × [`DRB`] taps, each a vector of [`DL`] partial
/// sums over the output positions; per chunk, [`DOB`] output-gradient loads (the lanes an
/// earlier chunk of the row covered set to zero) and [`DRB`] input loads feed `DOB · DRB`
/// multiply-adds. The partial sums are reduced once per image.
#[inline(always)]
fn direct_bwd_weight_blocked<T: ConvElem, const FMA: bool>(
    g: &Geom,
    x: &[T],
    gy: &[T],
    gw: &mut [T],
) {
    let (og, red, p) = (g.og(), g.cg() * g.taps(), g.out_plane());
    let ow = g.out[1];
    let bl = Blocked::new(g);
    let nob = og.div_ceil(DOB);
    let plane = bl.plane_len(g);
    let mut xp = T::take_scratch();
    xp.clear();
    xp.resize(plane, T::default());
    {
        for gr in 0..g.groups {
            for n in 0..g.n {
                bl.pad(g, x, n, gr, &mut xp);
                let xp = &*xp;
                for ob in 0..nob {
                    let ol = DOB.min(og - ob * DOB);
                    let gyo = |j: usize| (n * g.o + gr * og + ob * DOB + j.min(ol - 1)) * p;
                    let mut r0 = 0;
                    while r0 < red {
                        let rl = DRB.min(red - r0);
                        let mut offs = [0usize; DRB];
                        for (k, o) in offs.iter_mut().enumerate() {
                            *o = bl.offs[r0 + k.min(rl - 1)];
                        }
                        let mut acc = [[T::default(); DL]; DOB * DRB];
                        for &(oh, s, skip) in &bl.chunks {
                            let base = oh * g.stride[0] * bl.pw + s;
                            let mut gv = [[T::default(); DL]; DOB];
                            for (j, v) in gv.iter_mut().enumerate() {
                                let src: &[T; DL] =
                                    gy[gyo(j) + oh * ow + s..][..DL].try_into().unwrap();
                                for l in 0..DL {
                                    v[l] = if l >= skip { src[l] } else { T::default() };
                                }
                            }
                            for (k, &off) in offs.iter().enumerate() {
                                let xv: &[T; DL] = xp[base + off..][..DL].try_into().unwrap();
                                for j in 0..DOB {
                                    let a = &mut acc[j * DRB + k];
                                    for l in 0..DL {
                                        a[l] = if FMA {
                                            gv[j][l].madd(xv[l], a[l])
                                        } else {
                                            a[l] + gv[j][l] * xv[l]
                                        };
                                    }
                                }
                            }
                        }
                        for j in 0..ol {
                            for k in 0..rl {
                                let mut sum = T::default();
                                for &v in &acc[j * DRB + k] {
                                    sum = sum + v;
                                }
                                let d = &mut gw[(gr * og + ob * DOB + j) * red + r0 + k];
                                *d = *d + sum;
                            }
                        }
                        r0 += rl;
                    }
                }
            }
        }
    }
    T::put_scratch(xp);
}

#[inline(always)]
fn direct_bwd_data_impl<T: ConvElem>(g: &Geom, gy: &[T], w: &[T], gx: &mut [T]) {
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let (ow, iw, s, taps) = (g.out[1], g.inp[1], g.stride[1], g.taps());
    for n in 0..g.n {
        for o in 0..g.o {
            let gr = o / og;
            let go = &gy[(n * g.o + o) * p..][..p];
            for c in 0..cg {
                let xc = &mut gx[(n * g.c + gr * cg + c) * q..][..q];
                let wc = &w[(o * cg + c) * taps..][..taps];
                for ti in 0..g.k[0] {
                    for tj in 0..g.k[1] {
                        let wv = wc[ti * g.k[1] + tj];
                        for_rows(g, ti, tj, |oh, ih, lo, hi, first| {
                            let src = &go[oh * ow + lo..oh * ow + hi];
                            let row = &mut xc[ih * iw..][..iw];
                            if s == 1 {
                                for (d, &v) in row[first..first + (hi - lo)].iter_mut().zip(src) {
                                    *d = *d + wv * v;
                                }
                            } else {
                                for (k, &v) in src.iter().enumerate() {
                                    let d = &mut row[first + k * s];
                                    *d = *d + wv * v;
                                }
                            }
                        });
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn direct_bwd_weight_impl<T: ConvElem>(g: &Geom, x: &[T], gy: &[T], gw: &mut [T]) {
    if g.blocked_direct() {
        return if crate::isa::active() == crate::isa::Isa::Scalar {
            direct_bwd_weight_blocked::<T, false>(g, x, gy, gw)
        } else {
            direct_bwd_weight_blocked::<T, true>(g, x, gy, gw)
        };
    }
    let (cg, og, p, q) = (g.cg(), g.og(), g.out_plane(), g.in_plane());
    let (ow, iw, s, taps) = (g.out[1], g.inp[1], g.stride[1], g.taps());
    for n in 0..g.n {
        for o in 0..g.o {
            let gr = o / og;
            let go = &gy[(n * g.o + o) * p..][..p];
            for c in 0..cg {
                let xc = &x[(n * g.c + gr * cg + c) * q..][..q];
                let wc = &mut gw[(o * cg + c) * taps..][..taps];
                for ti in 0..g.k[0] {
                    for tj in 0..g.k[1] {
                        let mut acc = T::default();
                        for_rows(g, ti, tj, |oh, ih, lo, hi, first| {
                            let src = &go[oh * ow + lo..oh * ow + hi];
                            let row = &xc[ih * iw..][..iw];
                            if s == 1 {
                                // eight partial sums, so the loop vectorizes
                                let row = &row[first..first + (hi - lo)];
                                let mut part = [T::default(); 8];
                                let (rc, sc) = (row.chunks_exact(8), src.chunks_exact(8));
                                let (rr, sr) = (rc.remainder(), sc.remainder());
                                for (a8, b8) in rc.zip(sc) {
                                    for k in 0..8 {
                                        part[k] = part[k] + a8[k] * b8[k];
                                    }
                                }
                                for (&a, &b) in rr.iter().zip(sr) {
                                    part[0] = part[0] + a * b;
                                }
                                for p in part {
                                    acc = acc + p;
                                }
                            } else {
                                for (k, &b) in src.iter().enumerate() {
                                    acc = acc + row[first + k * s] * b;
                                }
                            }
                        });
                        let d = &mut wc[ti * g.k[1] + tj];
                        *d = *d + acc;
                    }
                }
            }
        }
    }
}
