//! Convolution, transposed convolution and their gradients over 1-D and 2-D spatial dims, NCHW
//! (PyTorch's semantics and weight layouts), `f32` / `f64`, on the kernels of
//! [`mithril_kernels::conv`]. Every shape is checked here: a mismatch is an [`Error::Op`]
//! naming the op, the shapes and the attributes.

use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, IxDyn};

use super::half_storage as half;
use crate::quant::QConvW;
use crate::{Dest, Elem, Error, Result};
use mithril_kernels::conv::{self as k, ConvElem, Geom};

/// Which of the four convolution computations an op is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvKind {
    /// `conv(x, w)`: `x: [N, C, *S]`, `w: [O, C / groups, *K]` → `[N, O, *S_out]`.
    Forward,
    /// `conv_transpose(x, w)`: `x: [N, C, *S]`, `w: [C, O / groups, *K]` → `[N, O, *S_out]`
    /// with `S_out = (S - 1)·stride - 2·padding + dilation·(K - 1) + output_padding + 1`.
    Transpose,
    /// The gradient of [`ConvKind::Forward`] with respect to its input: operands `(gy, w,
    /// like)`, the result shaped like `like` (the forward input).
    GradData,
    /// The gradient of [`ConvKind::Forward`] with respect to its weight: operands `(x, gy,
    /// like)`, the result shaped like `like` (the weight).
    GradWeight,
}

/// The attributes of a convolution op (one entry per spatial dim in each list).
#[derive(Clone, Debug, PartialEq)]
pub struct ConvSpec {
    pub kind: ConvKind,
    pub stride: Vec<usize>,
    /// padding before and after each spatial dim (`None`: `"same"`, resolved from the kernel
    /// size: `dilation·(K - 1)` in all, the smaller half before, as PyTorch)
    pub padding: Option<Vec<usize>>,
    pub dilation: Vec<usize>,
    pub groups: usize,
    /// [`ConvKind::Transpose`] only (zeros otherwise)
    pub output_padding: Vec<usize>,
}

impl ConvSpec {
    /// The op's name in errors.
    pub fn name(&self) -> &'static str {
        match self.kind {
            ConvKind::Forward => "conv",
            ConvKind::Transpose => "conv_transpose",
            ConvKind::GradData => "conv (input gradient)",
            ConvKind::GradWeight => "conv (weight gradient)",
        }
    }

    fn attrs(&self) -> String {
        let pad = match &self.padding {
            Some(p) => format!("{p:?}"),
            None => "\"same\"".into(),
        };
        let mut s = format!(
            "stride {:?}, padding {pad}, dilation {:?}, groups {}",
            self.stride, self.dilation, self.groups
        );
        if self.kind == ConvKind::Transpose {
            s += &format!(", output_padding {:?}", self.output_padding);
        }
        s
    }

    /// Padding before spatial dim `d` for a kernel of `kd` taps.
    fn pad_lo(&self, d: usize, kd: usize) -> usize {
        match &self.padding {
            Some(p) => p[d],
            None => self.dilation[d] * kd.saturating_sub(1) / 2,
        }
    }
    /// Padding before plus after spatial dim `d`.
    fn pad_total(&self, d: usize, kd: usize) -> usize {
        match &self.padding {
            Some(p) => 2 * p[d],
            None => self.dilation[d] * kd.saturating_sub(1),
        }
    }

    /// The forward geometry from the conv input shape `x`, the weight shape `w` (`[O, C/g,
    /// *K]`) and, when known, the conv output spatial dims `out`. `Err` names the shapes.
    fn geom(&self, x: &[usize], w: &[usize], out: Option<&[usize]>) -> Result<Geom> {
        let nd = self.stride.len();
        let e = |m: String| {
            Err(Error::op(
                self.name(),
                format!("{m} (input {x:?}, weight {w:?}; {})", self.attrs()),
            ))
        };
        if x.len() != nd + 2 || w.len() != nd + 2 || !(1..=2).contains(&nd) {
            return e(format!(
                "the input and the weight must have rank {}",
                nd + 2
            ));
        }
        let g = self.groups;
        if g == 0 || !x[1].is_multiple_of(g) || !w[0].is_multiple_of(g) || w[1] * g != x[1] {
            return e(format!(
                "the channels do not match: the input's {} must be the weight's {} times groups {g}, and the output channels {} divisible by it",
                x[1], w[1], w[0]
            ));
        }
        // inp, k, out, stride, pad in 2-D order (a 1-D conv is one of height 1: no padding)
        let mut dims = [[1, 1], [1, 1], [1, 1], [1, 1], [0, 0]];
        let mut dil = [1usize; 2];
        for d in 0..nd {
            let i = d + 2 - nd;
            let (inp, kd, s, dl) = (x[2 + d], w[2 + d], self.stride[d], self.dilation[d]);
            if s == 0 || dl == 0 {
                return e("stride and dilation must be at least 1".into());
            }
            let span = dl * kd.saturating_sub(1) + 1;
            let padded = inp + self.pad_total(d, kd);
            let o = if padded >= span {
                (padded - span) / s + 1
            } else {
                0
            };
            if let Some(out) = out {
                if out[d] != o {
                    return e(format!(
                        "spatial dim {d}: the output has {} positions, {o} expected",
                        out[d]
                    ));
                }
            }
            if o == 0 && inp > 0 {
                return e(format!(
                    "spatial dim {d}: the input's {inp} (padded {padded}) is shorter than the kernel's reach {span}"
                ));
            }
            dims[0][i] = inp;
            dims[1][i] = kd;
            dims[2][i] = o;
            dims[3][i] = s;
            dims[4][i] = self.pad_lo(d, kd);
            dil[i] = dl;
        }
        Ok(Geom {
            n: x[0],
            c: x[1],
            o: w[0],
            groups: g,
            inp: dims[0],
            k: dims[1],
            out: dims[2],
            stride: dims[3],
            pad: dims[4],
            dil,
        })
    }
}

fn slice<'a, T: Elem>(a: &'a ArrayViewD<'_, T>, buf: &'a mut Vec<T>) -> &'a [T] {
    if let Some(s) = a.as_slice() {
        return s;
    }
    *buf = a.iter().copied().collect();
    buf
}

/// Which kernel computes a convolution op (see [`plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pass {
    /// `y = conv(a, b)`
    Forward,
    /// the input gradient of the forward convolution of `geom`: `a` the output gradient, `b`
    /// the weight (also the transposed convolution)
    Data,
    /// the weight gradient: `a` the input, `b` the output gradient
    Weight,
}

/// The result shape, the forward geometry and the kernel of convolution op `spec` on operands
/// of shapes `a`, `b` (and `like`, the shape of a gradient's result). Every shape is checked
/// here (the CPU and the CUDA backend share it).
pub(crate) fn plan(
    spec: &ConvSpec,
    a: &[usize],
    b: &[usize],
    like: Option<&[usize]>,
) -> Result<(Vec<usize>, Geom, Pass)> {
    let op = spec.name();
    let nd = spec.stride.len();
    let like_shape = |what: &str| {
        like.map(|l| l.to_vec())
            .ok_or_else(|| Error::op(op, format!("internal: no {what} operand")))
    };
    match spec.kind {
        ConvKind::Forward => {
            let g = spec.geom(a, b, None)?;
            let mut shape = vec![g.n, g.o];
            shape.extend_from_slice(&g.out[2 - nd..]);
            Ok((shape, g, Pass::Forward))
        }
        ConvKind::Transpose => {
            // the conv whose input gradient this is: input [N, O, *S_out], output [N, C, *S]
            let (x, w) = (a, b);
            if x.len() != nd + 2 || w.len() != nd + 2 {
                return Err(Error::op(
                    op,
                    format!(
                        "the input {x:?} and the weight {w:?} must have rank {}",
                        nd + 2
                    ),
                ));
            }
            if spec.padding.is_none() {
                return Err(Error::op(
                    op,
                    "padding \"same\" is not defined for a transposed convolution",
                ));
            }
            let mut shape = vec![x[0], w[1] * spec.groups];
            for d in 0..nd {
                let s = (x[2 + d].max(1) - 1) * spec.stride[d]
                    + spec.dilation[d] * w[2 + d].saturating_sub(1)
                    + spec.output_padding[d]
                    + 1;
                let p = spec.pad_total(d, w[2 + d]);
                if s <= p {
                    return Err(Error::op(
                        op,
                        format!(
                            "spatial dim {d}: the output would have {} positions (input {x:?}, weight {w:?}; {})",
                            s as i64 - p as i64,
                            spec.attrs()
                        ),
                    ));
                }
                shape.push(if x[2 + d] == 0 { 0 } else { s - p });
            }
            if x[1] != w[0] {
                return Err(Error::op(
                    op,
                    format!(
                        "the input's channels ({}) must equal the weight's dim 0 (input {x:?}, weight {w:?}; {})",
                        x[1],
                        spec.attrs()
                    ),
                ));
            }
            let g = spec.geom(&shape, w, Some(&x[2..]))?;
            Ok((shape, g, Pass::Data))
        }
        ConvKind::GradData => {
            let shape = like_shape("input")?;
            let g = spec.geom(&shape, b, Some(&a[2.min(a.len())..]))?;
            check_shape(op, "the output gradient", a, &[g.n, g.o])?;
            Ok((shape, g, Pass::Data))
        }
        ConvKind::GradWeight => {
            let shape = like_shape("weight")?;
            let g = spec.geom(a, &shape, Some(&b[2.min(b.len())..]))?;
            check_shape(op, "the output gradient", b, &[g.n, g.o])?;
            Ok((shape, g, Pass::Weight))
        }
    }
}

/// Runs convolution op `spec` on operands `a`, `b` (and `like`, the shape of a gradient's
/// result) into `dest`: see [`ConvKind`] for what each kind takes.
pub fn conv_to<'w, T: Elem + ConvElem>(
    spec: &ConvSpec,
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    like: Option<&ArrayViewD<'_, T>>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let op = spec.name();
    let (shape, g, pass) = plan(spec, a.shape(), b.shape(), like.map(|l| l.shape()))?;
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    let (sa, sb) = (slice(a, &mut ba), slice(b, &mut bb));
    let mut out = dest.get(op, &shape)?;
    let y = contiguous(op, &mut out)?;
    match pass {
        Pass::Forward => k::forward(&g, sa, sb, y),
        Pass::Data => k::backward_data(&g, sa, sb, y),
        Pass::Weight => k::backward_weight(&g, sa, sb, y),
    }
    Ok(out)
}

/// A forward convolution ([`ConvKind::Forward`]) with its epilogue: `conv(x, w) + bias`
/// (`bias`: the output channels' values, in any shape holding exactly that many elements), then
/// `max(·, 0)` when `relu`, applied by the kernel as it stores its tiles
/// ([`mithril_kernels::conv::forward_fused`]); bit for bit the convolution followed by the
/// separate bias add and ReLU. The same shape checks and errors as [`conv_to`], and the bias's
/// element count against the output channels.
pub fn conv_epi_to<'w, T: Elem + ConvElem>(
    spec: &ConvSpec,
    x: &ArrayViewD<'_, T>,
    w: &ArrayViewD<'_, T>,
    bias: Option<&ArrayViewD<'_, T>>,
    relu: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    fused_to(spec, x, w, bias, relu, false, dest)
}

/// The body of [`conv_epi_to`] (`pool` false) and [`conv_epi_pool_to`] (`pool` true).
fn fused_to<'w, T: Elem + ConvElem>(
    spec: &ConvSpec,
    x: &ArrayViewD<'_, T>,
    w: &ArrayViewD<'_, T>,
    bias: Option<&ArrayViewD<'_, T>>,
    relu: bool,
    pool: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let op = spec.name();
    let (shape, g, pass) = plan(spec, x.shape(), w.shape(), None)?;
    if pass != Pass::Forward {
        return Err(Error::op(op, "internal: an epilogue on a gradient"));
    }
    let shape = if pool {
        pooled_shape(op, &shape, x.shape(), w.shape())?
    } else {
        shape
    };
    check_bias(op, &g, bias, x.shape(), w.shape())?;
    let (mut bx, mut bw, mut bb) = (Vec::new(), Vec::new(), Vec::new());
    let (sx, sw) = (slice(x, &mut bx), slice(w, &mut bw));
    let sb = bias.map(|b| slice(b, &mut bb));
    let mut out = dest.get(op, &shape)?;
    let y = contiguous(op, &mut out)?;
    if pool {
        k::forward_fused_pool(&g, sx, sw, sb, relu, y);
    } else {
        k::forward_fused(&g, sx, sw, sb, relu, y);
    }
    Ok(out)
}

/// The checks of a fused 2×2 max pool after a forward convolution: a 2-D convolution with
/// an output of at least 2×2; the pooled shape `[N, O, H / 2, W / 2]`.
fn pooled_shape(op: &str, shape: &[usize], x: &[usize], w: &[usize]) -> Result<Vec<usize>> {
    if shape.len() != 4 || shape[2] < 2 || shape[3] < 2 {
        return Err(Error::op(
            op,
            format!(
                "a fused 2x2 max pool needs a 2-D convolution output of at least 2x2, but it is {shape:?} (input {x:?}, weight {w:?})"
            ),
        ));
    }
    Ok(vec![shape[0], shape[1], shape[2] / 2, shape[3] / 2])
}

/// The bias check of the fused convolutions: `O` values.
fn check_bias<T: Elem>(
    op: &str,
    g: &Geom,
    bias: Option<&ArrayViewD<'_, T>>,
    x: &[usize],
    w: &[usize],
) -> Result<()> {
    match bias {
        Some(b) if b.len() != g.o => Err(Error::op(
            op,
            format!(
                "the bias has shape {:?} ({} values), expected {} (the output channels; input {x:?}, weight {w:?})",
                b.shape(),
                b.len(),
                g.o,
            ),
        )),
        _ => Ok(()),
    }
}

/// [`conv_epi_to`] followed by a 2×2 / stride-2 max pool (floor mode, PyTorch's NaN rule),
/// in one kernel ([`mithril_kernels::conv::forward_fused_pool`]): the result is `[N, O, H /
/// 2, W / 2]` for the convolution's output `[N, O, H, W]`, bit for bit the unfused ops'. The
/// same checks and errors as [`conv_epi_to`], and the convolution's output must be 2-D and at
/// least 2×2.
pub fn conv_epi_pool_to<'w, T: Elem + ConvElem>(
    spec: &ConvSpec,
    x: &ArrayViewD<'_, T>,
    w: &ArrayViewD<'_, T>,
    bias: Option<&ArrayViewD<'_, T>>,
    relu: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    fused_to(spec, x, w, bias, relu, true, dest)
}

/// The int8 form of [`conv_epi_pool_to`]: [`qconv_to`] into a temporary, the epilogue over
/// it, then the pool ([`mithril_kernels::conv::max_pool2_output`]).
pub(crate) fn qconv_epi_pool_to<'w>(
    spec: &ConvSpec,
    x: &ArrayViewD<'_, f32>,
    w: &ArrayViewD<'_, f32>,
    qc: &crate::quant::QConv,
    bias: Option<&ArrayViewD<'_, f32>>,
    relu: bool,
    dest: Dest<'w, f32>,
) -> Result<ArrayViewMutD<'w, f32>> {
    let op = spec.name();
    let (shape, g, _) = plan(spec, x.shape(), w.shape(), None)?;
    let pooled = pooled_shape(op, &shape, x.shape(), w.shape())?;
    let mut full = ArrayD::<f32>::zeros(IxDyn(&shape));
    let mut fv = qconv_to(spec, x, w, qc, Dest::View(full.view_mut()))?;
    conv_epilogue_in_place(spec, x.shape(), w.shape(), bias, relu, &mut fv)?;
    let mut out = dest.get(op, &pooled)?;
    let y = contiguous(op, &mut out)?;
    let src = full
        .as_slice()
        .ok_or_else(|| Error::op(op, "internal: a temporary is not contiguous"))?;
    k::max_pool2_output(&g, src, y);
    Ok(out)
}

/// [`conv_epi_to`]'s epilogue over `y`, the output of a forward convolution `spec` that
/// another kernel computed (the int8 one): `y + bias`, then the ReLU when `relu`.
pub(crate) fn conv_epilogue_in_place<T: Elem + ConvElem>(
    spec: &ConvSpec,
    x: &[usize],
    w: &[usize],
    bias: Option<&ArrayViewD<'_, T>>,
    relu: bool,
    y: &mut ArrayViewMutD<'_, T>,
) -> Result<()> {
    let op = spec.name();
    let (_, g, _) = plan(spec, x, w, None)?;
    let mut bb = Vec::new();
    let sb = bias.map(|b| slice(b, &mut bb));
    if sb.is_some_and(|b| b.len() != g.o) {
        return Err(Error::op(op, "the bias does not match the output channels"));
    }
    k::apply_epilogue(&g, sb, relu, contiguous(op, y)?);
    Ok(())
}

/// [`conv_to`] on f16 / bf16 storage: the operands widened to f32, the f32 kernels, each
/// result rounded once back to the storage type (nearest even) — f32 is the compute type of
/// half storage, as in the GEMM. The same shape checks and errors as [`conv_to`].
pub fn conv_half_to<'w, T: Elem<Acc = f32>>(
    spec: &ConvSpec,
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    like: Option<&ArrayViewD<'_, T>>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let op = spec.name();
    let (shape, g, pass) = plan(spec, a.shape(), b.shape(), like.map(|l| l.shape()))?;
    let (wa, wb) = (half::widen(a), half::widen(b));
    let mut y = ArrayD::<f32>::zeros(IxDyn(&shape));
    let internal = || Error::op(op, "internal: a widened operand is not contiguous");
    let (sa, sb) = (
        wa.as_slice().ok_or_else(internal)?,
        wb.as_slice().ok_or_else(internal)?,
    );
    let sy = y.as_slice_mut().ok_or_else(internal)?;
    match pass {
        Pass::Forward => k::forward(&g, sa, sb, sy),
        Pass::Data => k::backward_data(&g, sa, sb, sy),
        Pass::Weight => k::backward_weight(&g, sa, sb, sy),
    }
    half::narrow(op, Some(y), dest)
}

/// The int8 form of a forward or transposed convolution ([`ConvKind::Forward`],
/// [`ConvKind::Transpose`], f32): `x` quantized per tensor (the weight's static scale, or a
/// dynamic one from `max |x|`), the weight `qc` quantized per output channel, `i32` sums
/// through the int8 GEMM, dequantized in its store ([`mithril_kernels::conv::forward_q8`],
/// [`mithril_kernels::conv::transpose_q8`]). `w` is the f32 weight (its shape is checked as in
/// [`conv_to`]); when `qc` does not fit the call's geometry or kind the f32 convolution runs.
pub fn qconv_to<'w>(
    spec: &ConvSpec,
    x: &ArrayViewD<'_, f32>,
    w: &ArrayViewD<'_, f32>,
    qc: &crate::quant::QConv,
    dest: Dest<'w, f32>,
) -> Result<ArrayViewMutD<'w, f32>> {
    let op = spec.name();
    let (shape, g, pass) = plan(spec, x.shape(), w.shape(), None)?;
    let transpose = spec.kind == ConvKind::Transpose;
    if !(pass == Pass::Forward || transpose) || !qc.w.fits(&g, transpose) {
        return conv_to(spec, x, w, None, dest);
    }
    let mut bx = Vec::new();
    let sx = slice(x, &mut bx);
    let mut out = dest.get(op, &shape)?;
    let y = contiguous(op, &mut out)?;
    let isa = mithril_kernels::qgemm::QIsa::active();
    match &qc.w {
        QConvW::Forward(qw) => {
            k::forward_q8(isa, &g, sx, qw, qc.act, y);
        }
        QConvW::Transpose(qw) => {
            k::transpose_q8(isa, &g, sx, qw, qc.act, y);
        }
    }
    Ok(out)
}

fn check_shape(op: &str, what: &str, s: &[usize], lead: &[usize]) -> Result<()> {
    if s.len() < 2 || s[..2] != *lead {
        return Err(Error::op(
            op,
            format!(
                "{what} has shape {s:?}, expected [{}, {}, ...]",
                lead[0], lead[1]
            ),
        ));
    }
    Ok(())
}

fn contiguous<'a, T>(op: &str, a: &'a mut ArrayViewMutD<'_, T>) -> Result<&'a mut [T]> {
    a.as_slice_mut()
        .ok_or_else(|| Error::op(op, "internal: the destination is not contiguous"))
}
