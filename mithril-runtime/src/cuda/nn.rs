//! The CNN, attention and dropout kernels of `mithril_kernels::cuda` (`conv.cu`, `pool.cu`,
//! `attention.cu`, `dropout.cu`; f32 and f64) as typed operations on [`DeviceTensor`]s, with
//! the CPU ops' semantics and shape checks (the shapes, geometries, pad maps and upsampling
//! taps are computed on the host by the same code as the CPU's: `ops::conv::plan`,
//! `ops::PoolSpec`). Each returns a new tensor on the device's stream.

use super::launch::elementwise_config;
use super::{dev_err, CudaDevice, DeviceElem, DeviceTensor};
use crate::ops::conv::{plan, ConvSpec, Pass};
use crate::ops::pool::{hw, pad_maps, taps, win_of};
use crate::ops::{AttnPart, PoolSpec};
use crate::{Error, Result};
use cudarc::driver::{CudaFunction, DeviceRepr, LaunchArgs, LaunchConfig, PushKernelArg};
use ndarray::ArrayView1;

/// The element types of the f32 / f64 kernels (`f32`, `f64`).
pub trait NnElem: DeviceElem {}
impl NnElem for f32 {}
impl NnElem for f64 {}

/// `N` longs passed by value (the kernels' geometry structs).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub(super) struct Longs<const N: usize>(pub(super) [i64; N]);
// SAFETY: plain old data with the layout of the kernels' structs of N `long`s.
unsafe impl<const N: usize> DeviceRepr for Longs<N> {}

pub(super) fn i64s<const N: usize>(op: &str, v: [usize; N]) -> Result<Longs<N>> {
    let mut out = [0i64; N];
    for (o, x) in out.iter_mut().zip(v) {
        *o = i64::try_from(x).map_err(|_| Error::op(op, format!("size {x} exceeds i64")))?;
    }
    Ok(Longs(out))
}

pub(super) fn launch(op: &str, mut lb: LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
    // SAFETY: every caller pushes the arguments of the kernel's C signature in order, with
    // buffers of the sizes the kernel reads and writes (checked by the caller).
    unsafe { lb.launch(cfg) }
        .map(|_| ())
        .map_err(|e| dev_err(&format!("launch {op}"), e))
}

fn kernel<T: NnElem>(dev: &CudaDevice, op: &str) -> Result<CudaFunction> {
    dev.kernel(op, T::DTYPE)
}

fn upload_i64(dev: &CudaDevice, v: &[i64]) -> Result<DeviceTensor<i64>> {
    DeviceTensor::to_device(dev, &ArrayView1::from(v))
}

fn upload<T: NnElem>(dev: &CudaDevice, v: &[T]) -> Result<DeviceTensor<T>> {
    DeviceTensor::to_device(dev, &ArrayView1::from(v))
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

/// Convolution op `spec` (forward, transposed, input or weight gradient; see
/// [`crate::ops::conv::ConvKind`]) on the device: `like` is the shape operand of the
/// gradients. Direct kernels (no tiling): see `conv.cu`.
pub fn conv<T: NnElem>(
    dev: &CudaDevice,
    spec: &ConvSpec,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
    like: Option<&DeviceTensor<T>>,
) -> Result<DeviceTensor<T>> {
    conv_shaped(dev, spec, a, b, like.map(|l| l.shape()))
}

/// [`conv`] with the gradients' shape operand given as its shape (so an f16 / bf16 model can
/// run the f32 kernels on widened operands without widening the shape operand).
pub fn conv_shaped<T: NnElem>(
    dev: &CudaDevice,
    spec: &ConvSpec,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
    like: Option<&[usize]>,
) -> Result<DeviceTensor<T>> {
    let op = spec.name();
    let (shape, g, pass) = plan(spec, a.shape(), b.shape(), like)?;
    let mut out = DeviceTensor::zeros(dev, &shape)?;
    let geom = i64s(
        op,
        [
            g.n,
            g.c,
            g.o,
            g.groups,
            g.inp[0],
            g.inp[1],
            g.out[0],
            g.out[1],
            g.k[0],
            g.k[1],
            g.stride[0],
            g.stride[1],
            g.pad[0],
            g.pad[1],
            g.dil[0],
            g.dil[1],
        ],
    )?;
    let (name, work) = match pass {
        Pass::Forward => ("conv_forward", g.n * g.o * g.out_plane()),
        Pass::Data => ("conv_backward_data", g.n * g.c * g.in_plane()),
        Pass::Weight => ("conv_backward_weight", g.o * g.cg() * g.taps()),
    };
    if work == 0 || numel(&shape) == 0 {
        return Ok(out);
    }
    let f = kernel::<T>(dev, name)?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&geom)
        .arg(a.slice())
        .arg(b.slice())
        .arg(out.slice_mut());
    let cfg = if pass == Pass::Weight {
        // one block per weight element, its threads reducing over (n, oy, ox)
        LaunchConfig {
            grid_dim: (work.min(1 << 24) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    } else {
        elementwise_config(work, dev.sm_count())
    };
    launch(op, lb, cfg)?;
    Ok(out)
}

fn spec_of(word: &str) -> Result<PoolSpec> {
    PoolSpec::parse(word).map_err(|e| Error::op("pool", format!("internal: {e}")))
}

/// The pad table of `pool.cu` (`ins, outs, offs, maps`; -1 for the constant) and the planes'
/// sizes `(in_plane, out_plane)`.
fn pad_table(
    shape: &[usize],
    pads: &[usize],
    mode: mithril_kernels::pool::PadMode,
) -> std::result::Result<(Vec<i64>, usize, usize), String> {
    let maps = pad_maps(shape, pads, mode)?;
    let m = maps.len();
    let r = shape.len();
    let ins: Vec<usize> = shape[r - m..].to_vec();
    let mut tab: Vec<i64> = ins.iter().map(|&x| x as i64).collect();
    tab.extend(maps.iter().map(|v| v.len() as i64));
    let mut off = 0i64;
    for v in &maps {
        tab.push(off);
        off += v.len() as i64;
    }
    for v in &maps {
        tab.extend(v.iter().map(|s| s.map_or(-1, |s| s as i64)));
    }
    let out_plane = maps.iter().map(|v| v.len()).product();
    Ok((tab, numel(&ins), out_plane))
}

/// The upsampling tables of `pool.cu`: source indices `y0 y1 x0 x1` and weights.
fn upsample_tables<T: NnElem>(
    shape: &[usize],
    oshape: &[usize],
    scale: &[f64],
    linear: bool,
    align: bool,
) -> (Vec<i64>, Vec<T>) {
    let (ty, tx) = taps(shape, oshape, scale, linear, align);
    let mut idx: Vec<i64> = ty.iter().map(|t| t.i0 as i64).collect();
    idx.extend(ty.iter().map(|t| t.i1 as i64));
    idx.extend(tx.iter().map(|t| t.i0 as i64));
    idx.extend(tx.iter().map(|t| t.i1 as i64));
    let mut wt = Vec::with_capacity(2 * (ty.len() + tx.len()));
    for t in ty.iter().chain(&tx) {
        wt.push(T::from_f64(1.0 - t.l));
        wt.push(T::from_f64(t.l));
    }
    (idx, wt)
}

/// A pooling-family op (`spec`: the plan word of `mithril::rt::ops::PoolSpec::parse`) on the
/// device: max / average / adaptive average pooling, pad, upsample.
pub fn pool<T: NnElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    spec: &str,
) -> Result<DeviceTensor<T>> {
    let spec = spec_of(spec)?;
    pool_run(dev, &spec, x, None)
}

/// The gradient of [`pool`]: `g` (the op's output shape) into the shape of `x` (the op's input;
/// max pooling reads it to find each window's first maximum).
pub fn pool_backward<T: NnElem>(
    dev: &CudaDevice,
    g: &DeviceTensor<T>,
    x: &DeviceTensor<T>,
    spec: &str,
) -> Result<DeviceTensor<T>> {
    let spec = spec_of(spec)?;
    pool_run(dev, &spec, x, Some(g))
}

fn pool_run<T: NnElem>(
    dev: &CudaDevice,
    spec: &PoolSpec,
    x: &DeviceTensor<T>,
    grad: Option<&DeviceTensor<T>>,
) -> Result<DeviceTensor<T>> {
    let op = spec.name();
    let shape = x.shape().to_vec();
    let oshape = spec.out_shape(&shape)?;
    if let Some(g) = grad {
        if g.shape() != oshape.as_slice() {
            return Err(Error::op(
                op,
                format!(
                    "gradient {:?} does not match the output {oshape:?} of input {shape:?}",
                    g.shape()
                ),
            ));
        }
    }
    let back = grad.is_some();
    let mut out = DeviceTensor::zeros(dev, if back { &shape } else { &oshape })?;
    if numel(&shape) == 0 || numel(&oshape) == 0 {
        return Ok(out);
    }
    let n_out = numel(&oshape);
    let cfg = elementwise_config(n_out, dev.sm_count());
    let src = grad.unwrap_or(x);
    match spec {
        PoolSpec::Window {
            max,
            k,
            s,
            p,
            d,
            count_pad,
            ..
        } => {
            let w = win_of(&shape, &oshape, k, s, p, d, *max);
            let planes = numel(&shape) / (w.h * w.w);
            let geom = i64s(
                op,
                [
                    planes, w.h, w.w, w.oh, w.ow, w.kh, w.kw, w.sh, w.sw, w.ph, w.pw, w.dh, w.dw,
                ],
            )?;
            let name = match (max, back) {
                (true, false) => "max_pool",
                (true, true) => "max_pool_backward",
                (false, false) => "avg_pool",
                (false, true) => "avg_pool_backward",
            };
            let f = kernel::<T>(dev, name)?;
            let cp = i32::from(*count_pad);
            let mut lb = dev.stream().launch_builder(&f);
            lb.arg(&geom);
            if *max {
                if back {
                    lb.arg(x.slice());
                }
            } else {
                lb.arg(&cp);
            }
            lb.arg(src.slice()).arg(out.slice_mut());
            launch(op, lb, cfg)
        }
        PoolSpec::Adaptive(o) => {
            let ((h, w), (oh, ow)) = (hw(&shape, o.len()), hw(&oshape, o.len()));
            let dims = i64s(op, [numel(&shape) / (h * w), h, w, oh, ow])?;
            let name = if back {
                "adaptive_avg_pool_backward"
            } else {
                "adaptive_avg_pool"
            };
            let f = kernel::<T>(dev, name)?;
            let mut lb = dev.stream().launch_builder(&f);
            for v in &dims.0 {
                lb.arg(v);
            }
            lb.arg(src.slice()).arg(out.slice_mut());
            launch(op, lb, cfg)
        }
        PoolSpec::Pad { pads, mode, value } => {
            let (tab, in_plane, out_plane) =
                pad_table(&shape, pads, *mode).map_err(|m| Error::op(op, m))?;
            let m = (pads.len() / 2) as i64;
            if m == 0 {
                return super::exec::copy(dev, src);
            }
            let tab = upload_i64(dev, &tab)?;
            let dims = i64s(op, [n_out, in_plane, out_plane])?;
            let f = kernel::<T>(dev, if back { "pad_backward" } else { "pad" })?;
            let v = T::from_f64(*value);
            let mut lb = dev.stream().launch_builder(&f);
            for d in &dims.0 {
                lb.arg(d);
            }
            lb.arg(&m).arg(tab.slice());
            if !back {
                lb.arg(&v);
            }
            lb.arg(src.slice()).arg(out.slice_mut());
            launch(op, lb, cfg)
        }
        PoolSpec::Upsample {
            scale,
            linear,
            align_corners,
            ..
        } => {
            let r = shape.len();
            let (h, w) = hw(&shape, r - 2);
            let (oh, ow) = hw(&oshape, r - 2);
            let (idx, wt) = upsample_tables::<T>(&shape, &oshape, scale, *linear, *align_corners);
            let (idx, wt) = (upload_i64(dev, &idx)?, upload(dev, &wt)?);
            let dims = i64s(op, [numel(&shape) / (h * w), h, w, oh, ow])?;
            let lin = i32::from(*linear);
            let f = kernel::<T>(
                dev,
                if back {
                    "upsample_backward"
                } else {
                    "upsample"
                },
            )?;
            let mut lb = dev.stream().launch_builder(&f);
            for d in &dims.0 {
                lb.arg(d);
            }
            lb.arg(&lin).arg(idx.slice()).arg(wt.slice());
            lb.arg(src.slice()).arg(out.slice_mut());
            launch(op, lb, cfg)
        }
    }?;
    Ok(out)
}

/// The mask operand of [`attention`] on the device.
#[derive(Clone, Copy, Debug)]
pub enum DeviceAttnMask<'a, T: NnElem> {
    /// None.
    None,
    /// Added to the scaled scores.
    Add(&'a DeviceTensor<T>),
    /// `false` excludes a score.
    Bool(&'a DeviceTensor<bool>),
}

impl<T: NnElem> DeviceAttnMask<'_, T> {
    fn shape(&self) -> Option<&[usize]> {
        match self {
            DeviceAttnMask::None => None,
            DeviceAttnMask::Add(m) => Some(m.shape()),
            DeviceAttnMask::Bool(m) => Some(m.shape()),
        }
    }
}

/// Rows of query / key staged per block and the key tile (as `attention.cu`).
pub(super) const ATT_ROWS: usize = 4;
pub(super) const ATT_TILE: usize = 32;
/// The largest head dims (32 lanes × `MT_ATT_MAXC` registers).
pub(super) const ATT_MAX_HEAD: usize = 256;
/// Dynamic shared memory without opting in.
const SMEM_DEFAULT: usize = 48 * 1024;
/// The most an sm_80 / sm_90 block may opt in to.
const SMEM_MAX: usize = 163 * 1024;

/// The checked dims of an attention call: `(lead, [batch, hq, hkv, sq, sk, d, dv])`.
pub(super) fn attn_dims(
    op: &str,
    q: &[usize],
    k: &[usize],
    v: &[usize],
) -> Result<(Vec<usize>, [usize; 7])> {
    let err = |why: &str| {
        Error::op(
            op,
            format!(
                "{why}: query {q:?}, key {k:?}, value {v:?} (expected [..., Hq, Sq, D], [..., Hkv, Sk, D], [..., Hkv, Sk, Dv])"
            ),
        )
    };
    let r = q.len();
    if r < 3 || k.len() != r || v.len() != r {
        return Err(err(
            "query, key and value must have the same rank, at least 3",
        ));
    }
    if q[..r - 3] != k[..r - 3] || q[..r - 3] != v[..r - 3] {
        return Err(err("the leading (batch) dims differ"));
    }
    let (hq, sq, d) = (q[r - 3], q[r - 2], q[r - 1]);
    let (hkv, sk, dv) = (k[r - 3], k[r - 2], v[r - 1]);
    if v[r - 3] != hkv || v[r - 2] != sk {
        return Err(err("key and value differ in heads or length"));
    }
    if k[r - 1] != d {
        return Err(err("query and key differ in head_dim"));
    }
    if (hkv == 0 && hq != 0) || (hkv != 0 && !hq.is_multiple_of(hkv)) {
        return Err(err(
            "the query heads must be a multiple of the key/value heads",
        ));
    }
    if d > ATT_MAX_HEAD || dv > ATT_MAX_HEAD {
        return Err(err(&format!(
            "the CUDA kernel takes head dims up to {ATT_MAX_HEAD}"
        )));
    }
    let lead = q[..r - 3].to_vec();
    Ok((lead.clone(), [numel(&lead), hq, hkv.max(1), sq, sk, d, dv]))
}

/// The mask's offsets per (batch, query head) and its query / key strides, broadcast to
/// `[lead..., hq, sq, sk]`.
fn mask_offsets(
    op: &str,
    m: &[usize],
    lead: &[usize],
    hq: usize,
    sq: usize,
    sk: usize,
) -> Result<(Vec<i64>, i64, i64)> {
    let mut full = lead.to_vec();
    full.extend([hq, sq, sk]);
    let bad = || {
        Error::op(
            op,
            format!("the mask of shape {m:?} does not broadcast to [..., Hq, Sq, Sk] = {full:?}"),
        )
    };
    if m.len() > full.len() {
        return Err(bad());
    }
    let r = full.len();
    let off = r - m.len();
    let mut st = vec![0i64; r];
    let mut acc = 1i64;
    for i in (0..m.len()).rev() {
        let (md, fd) = (m[i], full[off + i]);
        if md == fd {
            st[off + i] = if md == 1 { 0 } else { acc };
        } else if md != 1 {
            return Err(bad());
        }
        acc *= md as i64;
    }
    let nl = lead.len();
    let batch = numel(lead);
    let mut offs = Vec::with_capacity(batch * hq);
    let mut idx = vec![0usize; nl];
    for _ in 0..batch {
        let base: i64 = idx.iter().zip(&st).map(|(&i, &s)| i as i64 * s).sum();
        for h in 0..hq {
            offs.push(base + h as i64 * st[r - 3]);
        }
        for a in (0..nl).rev() {
            idx[a] += 1;
            if idx[a] < full[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    Ok((offs, st[r - 2], st[r - 1]))
}

/// The mask arguments of the attention kernels (buffers kept alive by the caller).
struct MaskArgs<T: NnElem> {
    add: Option<DeviceTensor<T>>,
    boolean: Option<DeviceTensor<bool>>,
    offs: DeviceTensor<i64>,
    si: i64,
    sj: i64,
    mode: i32,
}

fn mask_args<T: NnElem>(
    dev: &CudaDevice,
    op: &str,
    mask: DeviceAttnMask<'_, T>,
    lead: &[usize],
    [_, hq, _, sq, sk, ..]: [usize; 7],
) -> Result<MaskArgs<T>> {
    let (offs, si, sj) = match mask.shape() {
        Some(s) => mask_offsets(op, s, lead, hq, sq, sk)?,
        None => (vec![0], 0, 0),
    };
    let mode = match mask {
        DeviceAttnMask::None => 0,
        DeviceAttnMask::Add(_) => 1,
        DeviceAttnMask::Bool(_) => 2,
    };
    Ok(MaskArgs {
        add: match mask {
            DeviceAttnMask::Add(_) => None,
            _ => Some(DeviceTensor::zeros(dev, &[1])?),
        },
        boolean: match mask {
            DeviceAttnMask::Bool(_) => None,
            _ => Some(DeviceTensor::zeros(dev, &[1])?),
        },
        offs: upload_i64(dev, &offs)?,
        si,
        sj,
        mode,
    })
}

fn push_mask<'a, T: NnElem>(
    lb: &mut LaunchArgs<'a>,
    mask: DeviceAttnMask<'a, T>,
    ma: &'a MaskArgs<T>,
) {
    match (mask, &ma.add) {
        (DeviceAttnMask::Add(m), _) => lb.arg(m.slice()),
        (_, Some(d)) => lb.arg(d.slice()),
        (_, None) => lb,
    };
    match (mask, &ma.boolean) {
        (DeviceAttnMask::Bool(m), _) => lb.arg(m.slice()),
        (_, Some(d)) => lb.arg(d.slice()),
        (_, None) => lb,
    };
    lb.arg(ma.offs.slice())
        .arg(&ma.si)
        .arg(&ma.sj)
        .arg(&ma.mode);
}

/// A block-tiled launch of an attention kernel over `(outer, rows)`, with `smem` bytes of
/// dynamic shared memory (opted in above 48 KiB).
pub(super) fn att_config(
    op: &str,
    f: &CudaFunction,
    outer: usize,
    rows: usize,
    smem: usize,
) -> Result<LaunchConfig> {
    let gy = rows.div_ceil(ATT_ROWS);
    if outer > i32::MAX as usize || gy > 65535 {
        return Err(Error::op(
            op,
            format!("{outer} heads x {rows} rows exceed the CUDA grid"),
        ));
    }
    if smem > SMEM_MAX {
        return Err(Error::op(
            op,
            format!("the head dims need {smem} bytes of shared memory, more than {SMEM_MAX}"),
        ));
    }
    if smem > SMEM_DEFAULT {
        use cudarc::driver::sys::CUfunction_attribute_enum as A;
        f.set_attribute(
            A::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            smem as i32,
        )
        .map_err(|e| dev_err(&format!("{op}: shared memory of {smem} bytes"), e))?;
    }
    Ok(LaunchConfig {
        grid_dim: (outer.max(1) as u32, gy.max(1) as u32, 1),
        block_dim: ((32 * ATT_ROWS) as u32, 1, 1),
        shared_mem_bytes: smem as u32,
    })
}

pub(super) fn scale_of<T: NnElem>(scale: Option<f64>, d: usize) -> T {
    T::from_f64(scale.unwrap_or(1.0 / (d as f64).sqrt()))
}

/// The row log-sum-exps (`lse`, `[batch · hq · sq]`) or also the output (`o`) of attention.
#[allow(clippy::too_many_arguments)]
fn att_forward<T: NnElem>(
    dev: &CudaDevice,
    op: &str,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    mask: DeviceAttnMask<'_, T>,
    causal: bool,
    dims: [usize; 7],
    lead: &[usize],
    scale: T,
    o: Option<&mut DeviceTensor<T>>,
    lse: &mut DeviceTensor<T>,
) -> Result<()> {
    let [b, hq, _, sq, _, d, dv] = dims;
    let ma = mask_args(dev, op, mask, lead, dims)?;
    let sz = std::mem::size_of::<T>();
    let smem = (ATT_ROWS * d + ATT_TILE * (d + 1) + ATT_TILE * dv) * sz;
    let f = kernel::<T>(
        dev,
        if o.is_some() {
            "attention"
        } else {
            "attention_lse"
        },
    )?;
    let cfg = att_config(op, &f, b * hq, sq, smem)?;
    let ad = i64s(op, dims)?;
    let c = i32::from(causal);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&ad).arg(q.slice()).arg(k.slice()).arg(v.slice());
    push_mask(&mut lb, mask, &ma);
    lb.arg(&c).arg(&scale);
    if let Some(o) = o {
        lb.arg(o.slice_mut());
    }
    lb.arg(lse.slice_mut());
    launch(op, lb, cfg)
}

/// `softmax(scale · q·kᵀ + mask) · v` on the device (`scale` defaults to `1/√D`; see
/// `mithril::rt::ops::attention_to` for the shapes): the tiled online-softmax kernel of
/// `attention.cu`, no `[Sq, Sk]` buffer. Head dims up to 256.
pub fn attention<T: NnElem>(
    dev: &CudaDevice,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    mask: DeviceAttnMask<'_, T>,
    causal: bool,
    scale: Option<f64>,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "attention";
    let (lead, dims) = attn_dims(OP, q.shape(), k.shape(), v.shape())?;
    let [b, hq, _, sq, _, d, dv] = dims;
    let mut oshape = lead.clone();
    oshape.extend([hq, sq, dv]);
    let mut out = DeviceTensor::zeros(dev, &oshape)?;
    if numel(&oshape) == 0 {
        return Ok(out);
    }
    let mut lse = DeviceTensor::<T>::zeros(dev, &[b * hq * sq])?;
    let s = scale_of::<T>(scale, d);
    att_forward(
        dev,
        OP,
        q,
        k,
        v,
        mask,
        causal,
        dims,
        &lead,
        s,
        Some(&mut out),
        &mut lse,
    )?;
    Ok(out)
}

/// One gradient of [`attention`] given its output `o` and the output's gradient `go`: the row
/// log-sum-exps are recomputed (the forward kernel without its output), then the part's
/// kernel recomputes the probabilities tile by tile from them.
#[allow(clippy::too_many_arguments)]
pub fn attention_grad<T: NnElem>(
    dev: &CudaDevice,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    mask: DeviceAttnMask<'_, T>,
    o: &DeviceTensor<T>,
    go: &DeviceTensor<T>,
    causal: bool,
    scale: Option<f64>,
    part: AttnPart,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "attention gradient";
    let (lead, dims) = attn_dims(OP, q.shape(), k.shape(), v.shape())?;
    let [b, hq, hkv, sq, sk, d, dv] = dims;
    let mut oshape = lead.clone();
    oshape.extend([hq, sq, dv]);
    if o.shape() != oshape.as_slice() || go.shape() != oshape.as_slice() {
        return Err(Error::op(
            OP,
            format!(
                "the output {:?} and its gradient {:?} must be {oshape:?}",
                o.shape(),
                go.shape()
            ),
        ));
    }
    let rshape: Vec<usize> = match part {
        AttnPart::Q => q.shape().to_vec(),
        AttnPart::K => k.shape().to_vec(),
        AttnPart::V => v.shape().to_vec(),
        AttnPart::KV => {
            if d != dv {
                return Err(Error::op(
                    OP,
                    format!("internal: stacked key/value gradients need D == Dv ({d} vs {dv})"),
                ));
            }
            std::iter::once(2)
                .chain(k.shape().iter().copied())
                .collect()
        }
        AttnPart::Scores => {
            let mut s = lead.clone();
            s.extend([hq, sq, sk]);
            s
        }
    };
    let mut res = DeviceTensor::zeros(dev, &rshape)?;
    if numel(&rshape) == 0 || numel(&oshape) == 0 {
        return Ok(res);
    }
    let s = scale_of::<T>(scale, d);
    let rows = b * hq * sq;
    let mut lse = DeviceTensor::<T>::zeros(dev, &[rows])?;
    att_forward(
        dev, OP, q, k, v, mask, causal, dims, &lead, s, None, &mut lse,
    )?;
    let mut delta = DeviceTensor::<T>::zeros(dev, &[rows])?;
    {
        let f = kernel::<T>(dev, "attention_delta")?;
        let (r, c) = (rows as i64, dv as i64);
        let mut lb = dev.stream().launch_builder(&f);
        lb.arg(&r)
            .arg(&c)
            .arg(o.slice())
            .arg(go.slice())
            .arg(delta.slice_mut());
        let cfg = LaunchConfig {
            grid_dim: (rows.div_ceil(8).clamp(1, 1 << 20) as u32, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        launch(OP, lb, cfg)?;
    }
    let ma = mask_args(dev, OP, mask, &lead, dims)?;
    let ad = i64s(OP, dims)?;
    let c = i32::from(causal);
    let sz = std::mem::size_of::<T>();
    match part {
        AttnPart::Q => {
            let f = kernel::<T>(dev, "attention_bwd_q")?;
            let smem = (ATT_ROWS * (d + dv) + ATT_TILE * (d + 1) + ATT_TILE * (dv + 1)) * sz;
            let cfg = att_config(OP, &f, b * hq, sq, smem)?;
            let mut lb = dev.stream().launch_builder(&f);
            lb.arg(&ad).arg(q.slice()).arg(k.slice()).arg(v.slice());
            push_mask(&mut lb, mask, &ma);
            lb.arg(&c)
                .arg(&s)
                .arg(go.slice())
                .arg(lse.slice())
                .arg(delta.slice());
            lb.arg(res.slice_mut());
            launch(OP, lb, cfg)?;
        }
        AttnPart::K | AttnPart::V | AttnPart::KV => {
            let f = kernel::<T>(dev, "attention_bwd_kv")?;
            let smem =
                (ATT_ROWS * (d + dv) + ATT_TILE * (d + 1) + ATT_TILE * (dv + 1) + 2 * ATT_TILE)
                    * sz;
            let cfg = att_config(OP, &f, b * hkv, sk, smem)?;
            let (nk, nv) = (numel(k.shape()), numel(v.shape()));
            // the other gradient of K / V goes to a scratch buffer; KV writes both into `res`
            let mut tmp = DeviceTensor::<T>::zeros(
                dev,
                &[match part {
                    AttnPart::K => nv,
                    AttnPart::V => nk,
                    _ => 1,
                }],
            )?;
            let dv_in_dk: i64 = if part == AttnPart::KV { nk as i64 } else { -1 };
            let mut lb = dev.stream().launch_builder(&f);
            lb.arg(&ad).arg(q.slice()).arg(k.slice()).arg(v.slice());
            push_mask(&mut lb, mask, &ma);
            lb.arg(&c)
                .arg(&s)
                .arg(go.slice())
                .arg(lse.slice())
                .arg(delta.slice());
            if part == AttnPart::V {
                lb.arg(tmp.slice_mut()).arg(res.slice_mut());
            } else {
                lb.arg(res.slice_mut()).arg(tmp.slice_mut());
            }
            lb.arg(&dv_in_dk);
            launch(OP, lb, cfg)?;
        }
        AttnPart::Scores => {
            let f = kernel::<T>(dev, "attention_bwd_scores")?;
            let cfg = elementwise_config(numel(&rshape), dev.sm_count());
            let mut lb = dev.stream().launch_builder(&f);
            lb.arg(&ad).arg(q.slice()).arg(k.slice()).arg(v.slice());
            push_mask(&mut lb, mask, &ma);
            lb.arg(&c)
                .arg(&s)
                .arg(go.slice())
                .arg(lse.slice())
                .arg(delta.slice());
            lb.arg(res.slice_mut());
            launch(OP, lb, cfg)?;
        }
    }
    Ok(res)
}

/// `dropout` on the device: in a training call each element `i` (row-major) is kept (scaled by
/// `1 / (1 - p)`) when its Philox4x32-10 word under (`seed`, `op`) is at least
/// `mithril_kernels::philox::threshold(p)`, the CPU's rule and words (bit-identical masks);
/// else a copy. The gradient is the same call over the output gradient.
pub fn dropout<T: NnElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    p: f64,
    op: u32,
    seed: u64,
    training: bool,
) -> Result<DeviceTensor<T>> {
    if !(0.0..=1.0).contains(&p) {
        return Err(Error::op(
            "dropout",
            format!("drop probability p = {p} is outside [0, 1]"),
        ));
    }
    if !training || p == 0.0 || x.is_empty() {
        return super::exec::copy(dev, x);
    }
    let thr = mithril_kernels::philox::threshold(p);
    let mut out = DeviceTensor::zeros(dev, x.shape())?;
    let f = kernel::<T>(dev, "dropout")?;
    let n = x.len() as i64;
    let (t, all) = (thr.unwrap_or(0), i32::from(thr.is_none()));
    let scale = T::from_f64(1.0 / (1.0 - p));
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&n).arg(&seed).arg(&op).arg(&t).arg(&all).arg(&scale);
    lb.arg(x.slice()).arg(out.slice_mut());
    launch("dropout", lb, elementwise_config(x.len(), dev.sm_count()))?;
    Ok(out)
}

/// `x[i]` over the leading axis (`i < 0` counts from the end): a device-to-device copy of one
/// contiguous block.
pub fn select_leading<T: DeviceElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    i: i64,
) -> Result<DeviceTensor<T>> {
    let s = x.shape();
    let Some((&n, rest)) = s.split_first() else {
        return Err(Error::op("slice", "indexes a 0-d tensor"));
    };
    let j = if i < 0 { i + n as i64 } else { i };
    if j < 0 || j >= n as i64 {
        return Err(Error::op(
            "slice",
            format!("index {i} is out of range for axis 0 of size {n} (shape {s:?})"),
        ));
    }
    let mut y = DeviceTensor::<T>::zeros(dev, rest)?;
    let len = numel(rest);
    if len > 0 {
        let j = j as usize;
        let src = x.slice().slice(j * len..(j + 1) * len);
        dev.stream()
            .memcpy_dtod(&src, y.slice_mut())
            .map_err(|e| dev_err("copy on device", e))?;
    }
    Ok(y)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn attention_mask_offsets_broadcast() {
        // [Sq, Sk] mask over [2, 3 heads, 4, 5]: every (batch, head) at offset 0
        let (o, si, sj) = mask_offsets("t", &[4, 5], &[2], 3, 4, 5).unwrap();
        assert_eq!((o, si, sj), (vec![0; 6], 5, 1));
        // [B, 1, 1, Sk] (a key padding mask)
        let (o, si, sj) = mask_offsets("t", &[2, 1, 1, 5], &[2], 3, 4, 5).unwrap();
        assert_eq!((o, si, sj), (vec![0, 0, 0, 5, 5, 5], 0, 1));
        // a full mask
        let (o, ..) = mask_offsets("t", &[2, 3, 4, 5], &[2], 3, 4, 5).unwrap();
        assert_eq!(o, vec![0, 20, 40, 60, 80, 100]);
        assert!(mask_offsets("t", &[3, 5], &[2], 3, 4, 5).is_err());
    }

    #[cfg_attr(test, test)]
    pub(crate) fn pool_tables() {
        use mithril_kernels::pool::PadMode;
        // reflect pad (1, 2) of the last dim of [2, 3]: 1 0 1 2 1 0
        let (tab, ip, op) = pad_table(&[2, 3], &[1, 2], PadMode::Reflect).unwrap();
        assert_eq!(tab, vec![3, 6, 0, 1, 0, 1, 2, 1, 0]);
        assert_eq!((ip, op), (3, 6));
        // constant pad of the last two dims: -1 outside
        let (tab, ip, op) = pad_table(&[1, 2, 2], &[1, 0, 0, 1], PadMode::Constant).unwrap();
        assert_eq!(tab, vec![2, 2, 3, 3, 0, 3, 0, 1, -1, -1, 0, 1]);
        assert_eq!((ip, op), (4, 9));
        // nearest 2x upsampling of [1, 1, 2, 2]
        let (idx, wt) = upsample_tables::<f32>(&[1, 1, 2, 2], &[1, 1, 4, 4], &[], false, false);
        assert_eq!(idx, vec![0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 0, 0, 1, 1]);
        assert!(wt.iter().step_by(2).all(|&w| w == 1.0));
    }
}
