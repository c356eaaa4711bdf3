//! The hand-written kernels of `mithril_kernels::cuda` as typed operations on
//! [`DeviceTensor`]s. Each returns a new tensor on the device's stream (asynchronously, except
//! the gathers, which wait to check their out-of-range flag).

use super::launch::{elementwise_config, row_config};
use super::{dev_err, CudaDevice, DeviceElem, DeviceTensor};
use crate::{Error, Result};
use cudarc::driver::{CudaFunction, LaunchArgs, LaunchConfig, PushKernelArg};
use half::{bf16, f16};

/// A float storage type the hand-written kernels exist for: `f32`, `f16`, `bf16`.
pub trait FloatElem: DeviceElem {}
impl FloatElem for f32 {}
impl FloatElem for f16 {}
impl FloatElem for bf16 {}

/// A reduction over the last axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowReduce {
    /// Sum (0 for an empty row).
    Sum,
    /// Mean (NaN for an empty row).
    Mean,
    /// Maximum (NaN propagates; −∞ for an empty row).
    Max,
    /// Minimum (NaN propagates; +∞ for an empty row).
    Min,
}

/// Which GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GeluKind {
    /// `0.5 x (1 + erf(x / √2))`
    Erf,
    /// The tanh approximation.
    Tanh,
}

/// `(rows, cols)` of a tensor seen as `[prod(leading dims), last dim]`.
fn rows_cols(op: &str, shape: &[usize]) -> Result<(usize, usize)> {
    match shape.split_last() {
        Some((&c, lead)) => Ok((lead.iter().product(), c)),
        None => Err(Error::op(op, "needs a tensor of rank at least 1")),
    }
}

fn i64_of(op: &str, n: usize) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::op(op, format!("size {n} exceeds i64")))
}

fn launch(op: &str, mut lb: LaunchArgs<'_>, cfg: LaunchConfig) -> Result<()> {
    // SAFETY: every caller pushes the arguments of the kernel's C signature in order, with
    // buffers of the sizes the kernel reads and writes (checked by the caller).
    unsafe { lb.launch(cfg) }
        .map(|_| ())
        .map_err(|e| dev_err(&format!("launch {op}"), e))
}

fn row_launch(
    dev: &CudaDevice,
    op: &str,
    f: &CudaFunction,
    x: &DeviceTensor<impl DeviceElem>,
    out: &mut DeviceTensor<impl DeviceElem>,
) -> Result<()> {
    let (rows, cols) = rows_cols(op, x.shape())?;
    if rows == 0 {
        return Ok(());
    }
    let (r, c) = (i64_of(op, rows)?, i64_of(op, cols)?);
    let mut lb = dev.stream().launch_builder(f);
    lb.arg(x.slice()).arg(out.slice_mut()).arg(&r).arg(&c);
    launch(op, lb, row_config(rows, cols))
}

/// A reduction over the last axis: the result has `x`'s shape without its last axis.
pub fn row_reduce<T: FloatElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    kind: RowReduce,
) -> Result<DeviceTensor<T>> {
    let op = match kind {
        RowReduce::Sum => "row_sum",
        RowReduce::Mean => "row_mean",
        RowReduce::Max => "row_max",
        RowReduce::Min => "row_min",
    };
    rows_cols(op, x.shape())?;
    let mut out = DeviceTensor::zeros(dev, &x.shape()[..x.shape().len() - 1])?;
    let f = dev.kernel(op, T::DTYPE)?;
    row_launch(dev, op, &f, x, &mut out)?;
    Ok(out)
}

/// Sums over every axis but the last: `[..., C]` → `[C]`.
pub fn col_sum<T: FloatElem>(dev: &CudaDevice, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    const OP: &str = "col_sum";
    let (rows, cols) = rows_cols(OP, x.shape())?;
    let mut out = DeviceTensor::zeros(dev, &[cols])?;
    if cols == 0 {
        return Ok(out);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let (r, c) = (i64_of(OP, rows)?, i64_of(OP, cols)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(x.slice()).arg(out.slice_mut()).arg(&r).arg(&c);
    launch(OP, lb, elementwise_config(cols, dev.sm_count()))?;
    Ok(out)
}

fn same_shape_row_op<T: FloatElem>(
    dev: &CudaDevice,
    op: &str,
    x: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    rows_cols(op, x.shape())?;
    let mut y = DeviceTensor::zeros(dev, x.shape())?;
    let f = dev.kernel(op, T::DTYPE)?;
    row_launch(dev, op, &f, x, &mut y)?;
    Ok(y)
}

/// softmax over the last axis.
pub fn softmax<T: FloatElem>(dev: &CudaDevice, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    same_shape_row_op(dev, "softmax", x)
}

/// log_softmax over the last axis.
pub fn log_softmax<T: FloatElem>(dev: &CudaDevice, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    same_shape_row_op(dev, "log_softmax", x)
}

fn check_vec<T: DeviceElem>(
    op: &str,
    what: &str,
    v: Option<&DeviceTensor<T>>,
    n: usize,
) -> Result<()> {
    match v {
        Some(v) if v.shape() != [n] => Err(Error::op(
            op,
            format!("{what} has shape {:?}, expected [{n}]", v.shape()),
        )),
        _ => Ok(()),
    }
}

/// Push an optional buffer: the slice, or a null pointer.
fn opt_arg<'a, T: DeviceElem>(
    lb: &mut LaunchArgs<'a>,
    v: Option<&'a DeviceTensor<T>>,
    null: &'a u64,
) {
    match v {
        Some(t) => lb.arg(t.slice()),
        None => lb.arg(null),
    };
}

/// LayerNorm over the last axis: `(x - mean) / sqrt(var + eps) * gamma + beta` (biased
/// variance); `gamma`/`beta` of shape `[C]` or `None` (1 / 0).
pub fn layernorm<T: FloatElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    gamma: Option<&DeviceTensor<T>>,
    beta: Option<&DeviceTensor<T>>,
    eps: f32,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "layernorm";
    let (rows, cols) = rows_cols(OP, x.shape())?;
    check_vec(OP, "gamma", gamma, cols)?;
    check_vec(OP, "beta", beta, cols)?;
    let mut y = DeviceTensor::zeros(dev, x.shape())?;
    if rows == 0 {
        return Ok(y);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let (r, c, null) = (i64_of(OP, rows)?, i64_of(OP, cols)?, 0u64);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(x.slice());
    opt_arg(&mut lb, gamma, &null);
    opt_arg(&mut lb, beta, &null);
    lb.arg(y.slice_mut())
        .arg(&null)
        .arg(&null)
        .arg(&r)
        .arg(&c)
        .arg(&eps);
    launch(OP, lb, row_config(rows, cols))?;
    Ok(y)
}

/// RMSNorm over the last axis: `x / sqrt(mean(x²) + eps) * gamma`; `gamma` of shape `[C]` or
/// `None`.
pub fn rmsnorm<T: FloatElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    gamma: Option<&DeviceTensor<T>>,
    eps: f32,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "rmsnorm";
    let (rows, cols) = rows_cols(OP, x.shape())?;
    check_vec(OP, "gamma", gamma, cols)?;
    let mut y = DeviceTensor::zeros(dev, x.shape())?;
    if rows == 0 {
        return Ok(y);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let (r, c, null) = (i64_of(OP, rows)?, i64_of(OP, cols)?, 0u64);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(x.slice());
    opt_arg(&mut lb, gamma, &null);
    lb.arg(y.slice_mut()).arg(&null).arg(&r).arg(&c).arg(&eps);
    launch(OP, lb, row_config(rows, cols))?;
    Ok(y)
}

/// GELU, elementwise.
pub fn gelu<T: FloatElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    kind: GeluKind,
) -> Result<DeviceTensor<T>> {
    let op = match kind {
        GeluKind::Erf => "gelu",
        GeluKind::Tanh => "gelu_tanh",
    };
    let mut y = DeviceTensor::zeros(dev, x.shape())?;
    let n = x.len();
    if n == 0 {
        return Ok(y);
    }
    let f = dev.kernel(op, T::DTYPE)?;
    let n64 = i64_of(op, n)?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(x.slice()).arg(y.slice_mut()).arg(&n64);
    launch(op, lb, elementwise_config(n, dev.sm_count()))?;
    Ok(y)
}

/// Read back the out-of-range flag of a gather (waits for the stream).
fn check_flag(dev: &CudaDevice, op: &str, flag: &cudarc::driver::CudaSlice<i32>) -> Result<()> {
    let v = dev
        .stream()
        .clone_dtoh(flag)
        .map_err(|e| dev_err("copy to host", e))?;
    if v.first().copied().unwrap_or(0) != 0 {
        return Err(Error::op(
            op,
            "an index is out of range (indices must lie in 0..n; negative ones are errors)",
        ));
    }
    Ok(())
}

/// `out[..., :] = table[idx[...], :]` for a `[vocab, dim]` table (an index outside
/// `0..vocab`, negative ones included, is an error). The result has shape `idx.shape() + [dim]`.
pub fn embedding<T: FloatElem>(
    dev: &CudaDevice,
    table: &DeviceTensor<T>,
    idx: &DeviceTensor<i64>,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "embedding";
    let &[vocab, dim] = table.shape() else {
        return Err(Error::op(
            OP,
            format!("table must be [vocab, dim], got {:?}", table.shape()),
        ));
    };
    let mut shape = idx.shape().to_vec();
    shape.push(dim);
    let mut out = DeviceTensor::zeros(dev, &shape)?;
    let n = out.len();
    if n == 0 {
        return Ok(out);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let mut bad = dev
        .stream()
        .alloc_zeros::<i32>(1)
        .map_err(|e| dev_err("cuMemAlloc", e))?;
    let (ni, v, d) = (i64_of(OP, idx.len())?, i64_of(OP, vocab)?, i64_of(OP, dim)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(idx.slice()).arg(table.slice()).arg(out.slice_mut());
    lb.arg(&ni).arg(&v).arg(&d).arg(&mut bad);
    launch(OP, lb, elementwise_config(n, dev.sm_count()))?;
    check_flag(dev, OP, &bad)?;
    Ok(out)
}

/// The gradient of [`embedding`] (`gather(table, idx, axis = 0)`): an f32 `[vocab, dim]`
/// table of zeros with `dtable[idx[i], :] += g[i, :]` (atomic adds: the order of a repeated
/// index's sums depends on the run). `g` has shape `idx.shape() + [dim]`. The indices are not
/// checked again (the forward gather of the same call checked them; an index outside
/// `0..vocab` adds nothing).
pub fn embedding_backward<T: FloatElem>(
    dev: &CudaDevice,
    g: &DeviceTensor<T>,
    idx: &DeviceTensor<i64>,
    table: &[usize],
) -> Result<DeviceTensor<f32>> {
    const OP: &str = "embedding_backward";
    let &[vocab, dim] = table else {
        return Err(Error::op(
            OP,
            format!("table must be [vocab, dim], got {table:?}"),
        ));
    };
    let mut want = idx.shape().to_vec();
    want.push(dim);
    if g.shape() != want {
        return Err(Error::op(
            OP,
            format!(
                "the gradient has shape {:?}, the gather of {:?} by indices {:?} has {want:?}",
                g.shape(),
                table,
                idx.shape()
            ),
        ));
    }
    let mut dt = DeviceTensor::<f32>::zeros(dev, table)?;
    if g.is_empty() || dt.is_empty() {
        return Ok(dt);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let mut bad = dev
        .stream()
        .alloc_zeros::<i32>(1)
        .map_err(|e| dev_err("cuMemAlloc", e))?;
    let (ni, v, d) = (i64_of(OP, idx.len())?, i64_of(OP, vocab)?, i64_of(OP, dim)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(idx.slice()).arg(g.slice()).arg(dt.slice_mut());
    lb.arg(&ni).arg(&v).arg(&d).arg(&mut bad);
    launch(OP, lb, elementwise_config(g.len(), dev.sm_count()))?;
    Ok(dt)
}

/// `out[p] = x[p, idx[p]]` along the last axis; `idx` has `x`'s shape without the last axis.
pub fn take_along<T: FloatElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    idx: &DeviceTensor<i64>,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "take_along";
    let (rows, cols) = rows_cols(OP, x.shape())?;
    if idx.shape() != &x.shape()[..x.shape().len() - 1] {
        return Err(Error::op(
            OP,
            format!(
                "indices {:?} must have the input's shape {:?} without its last axis",
                idx.shape(),
                x.shape()
            ),
        ));
    }
    let mut out = DeviceTensor::zeros(dev, idx.shape())?;
    if rows == 0 {
        return Ok(out);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let mut bad = dev
        .stream()
        .alloc_zeros::<i32>(1)
        .map_err(|e| dev_err("cuMemAlloc", e))?;
    let (n, c) = (i64_of(OP, rows)?, i64_of(OP, cols)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(x.slice())
        .arg(idx.slice())
        .arg(out.slice_mut())
        .arg(&n)
        .arg(&c)
        .arg(&mut bad);
    launch(OP, lb, elementwise_config(rows, dev.sm_count()))?;
    check_flag(dev, OP, &bad)?;
    Ok(out)
}

fn check_targets(op: &str, logits: &[usize], target: &[usize]) -> Result<(usize, usize)> {
    let (rows, cols) = rows_cols(op, logits)?;
    if target != &logits[..logits.len() - 1] {
        return Err(Error::op(
            op,
            format!(
                "targets {target:?} must have the logits' shape {logits:?} without its last axis"
            ),
        ));
    }
    Ok((rows, cols))
}

/// Softmax cross-entropy per row, fused: `loss = logsumexp(x) - x[target]` (the DSL's
/// `cross_entropy`). Returns the loss (shape of `target`) and the per-row log-sum-exp (f32,
/// for [`softmax_cross_entropy_backward`]). A target out of range is an error.
pub fn softmax_cross_entropy<T: FloatElem>(
    dev: &CudaDevice,
    logits: &DeviceTensor<T>,
    target: &DeviceTensor<i64>,
) -> Result<(DeviceTensor<T>, DeviceTensor<f32>)> {
    const OP: &str = "softmax_xent";
    let (rows, cols) = check_targets(OP, logits.shape(), target.shape())?;
    let mut loss = DeviceTensor::zeros(dev, target.shape())?;
    let mut lse = DeviceTensor::<f32>::zeros(dev, target.shape())?;
    if rows == 0 {
        return Ok((loss, lse));
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let mut bad = dev
        .stream()
        .alloc_zeros::<i32>(1)
        .map_err(|e| dev_err("cuMemAlloc", e))?;
    let (r, c) = (i64_of(OP, rows)?, i64_of(OP, cols)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(logits.slice())
        .arg(target.slice())
        .arg(loss.slice_mut())
        .arg(lse.slice_mut());
    lb.arg(&r).arg(&c).arg(&mut bad);
    launch(OP, lb, row_config(rows, cols))?;
    check_flag(dev, OP, &bad)?;
    Ok((loss, lse))
}

/// The gradient of [`softmax_cross_entropy`] with respect to the logits:
/// `dloss[r] * (softmax(x)[r] - onehot(target[r]))`. `lse` from the forward pass, or `None` to
/// recompute it.
pub fn softmax_cross_entropy_backward<T: FloatElem>(
    dev: &CudaDevice,
    logits: &DeviceTensor<T>,
    target: &DeviceTensor<i64>,
    lse: Option<&DeviceTensor<f32>>,
    dloss: &DeviceTensor<T>,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "softmax_xent_backward";
    let (rows, cols) = check_targets(OP, logits.shape(), target.shape())?;
    for (what, s) in [
        ("dloss", dloss.shape()),
        ("lse", lse.map_or(target.shape(), |l| l.shape())),
    ] {
        if s != target.shape() {
            return Err(Error::op(
                OP,
                format!("{what} has shape {s:?}, expected {:?}", target.shape()),
            ));
        }
    }
    let mut dx = DeviceTensor::zeros(dev, logits.shape())?;
    if rows == 0 {
        return Ok(dx);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let mut bad = dev
        .stream()
        .alloc_zeros::<i32>(1)
        .map_err(|e| dev_err("cuMemAlloc", e))?;
    let (r, c, null) = (i64_of(OP, rows)?, i64_of(OP, cols)?, 0u64);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(logits.slice()).arg(target.slice());
    opt_arg(&mut lb, lse, &null);
    lb.arg(dloss.slice())
        .arg(dx.slice_mut())
        .arg(&r)
        .arg(&c)
        .arg(&mut bad);
    launch(OP, lb, row_config(rows, cols))?;
    check_flag(dev, OP, &bad)?;
    Ok(dx)
}
