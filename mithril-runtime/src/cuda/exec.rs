//! What code generated for `backend: cuda` calls: the model's kernel module compiled at first
//! use, launches of generated fused elementwise kernels with run-time checked broadcasts, shape
//! ops, reductions over trailing / leading axes, and matrix products with transposes.
//!
//! Every function checks the sizes it hands a kernel against the buffers, so a launch never reads
//! or writes outside a buffer, whatever the caller passes; a mismatch is an `Err`.

use super::blas::{Activation, F32Precision, LtElem};
use super::launch::{elementwise_config, row_config};
use super::ops::{FloatElem, RowReduce};
use super::{dev_err, CudaDevice, DeviceElem, DeviceTensor};
use crate::{Error, Result};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, LaunchArgs, PushKernelArg};
use half::{bf16, f16};
use std::sync::Mutex;

/// The generated kernel module of one physical model (all its fused kernels in one CUDA C
/// source), compiled by NVRTC at the first launch through the device's kernel cache (a disk hit
/// skips NVRTC), with the functions kept per entry name.
#[derive(Debug)]
pub struct ModelKernels {
    file: &'static str,
    source: &'static str,
    funcs: Mutex<Vec<(&'static str, CudaFunction)>>,
}

impl ModelKernels {
    /// The module `source`, named `file` in diagnostics and in the cache.
    pub const fn new(file: &'static str, source: &'static str) -> Self {
        ModelKernels {
            file,
            source,
            funcs: Mutex::new(Vec::new()),
        }
    }

    /// The source text.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Kernel `entry`, compiled and loaded on `dev` at first use.
    pub fn get(&self, dev: &CudaDevice, entry: &'static str) -> Result<CudaFunction> {
        let lock = || self.funcs.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, f)) = lock().iter().find(|(e, _)| *e == entry) {
            return Ok(f.clone());
        }
        let f = dev.function(self.file, self.source, entry)?;
        lock().push((entry, f.clone()));
        Ok(f)
    }
}

/// A device tensor of any element type, as a kernel argument.
pub trait Operand {
    /// The shape.
    fn dims(&self) -> &[usize];
    /// Push the buffer as a kernel pointer argument.
    fn push<'a>(&'a self, lb: &mut LaunchArgs<'a>);
}

impl<T: DeviceElem> Operand for DeviceTensor<T> {
    fn dims(&self) -> &[usize] {
        self.shape()
    }
    fn push<'a>(&'a self, lb: &mut LaunchArgs<'a>) {
        lb.arg(self.slice());
    }
}

/// How a generated fused kernel reads one argument (the run-time side of the macro's
/// `backends::cuda::kernel_text::IndexMode`): extents written `Some(v)` are baked into the
/// kernel source as `v` (checked here against the argument), `None` ones are passed as `long`
/// parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FusedIndex {
    /// Same shape as the output: element `i`.
    Full,
    /// One element.
    Scalar,
    /// Element `i % len`, `len` = the argument's element count.
    Period(Option<usize>),
    /// Element `(i / inner) % len`, `inner` = the product of the output's last `tail` dims,
    /// `len` = the argument's element count.
    Block {
        /// How many trailing output dims the argument broadcasts over.
        tail: usize,
        /// `inner` when baked.
        inner: Option<usize>,
        /// `len` when baked.
        len: Option<usize>,
    },
}

fn numel(s: &[usize]) -> usize {
    s.iter().product()
}

fn long(op: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::op(op, format!("size {v} exceeds i64")))
}

/// NumPy broadcasting of several shapes.
pub fn broadcast_shapes(op: &str, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for s in shapes {
        for (k, &d) in s.iter().enumerate() {
            let o = &mut out[rank - s.len() + k];
            if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(Error::op(
                    op,
                    format!("shapes {shapes:?} do not broadcast together"),
                ));
            }
        }
    }
    Ok(out)
}

/// Launch the generated fused kernel `f` (`name` in errors) writing a new tensor of
/// `out_shape` from `args` read as `modes` say. The kernel's parameters are the arguments, the
/// output, the element count, then the run-time extents in argument order (see
/// `mithril-macros/src/backends/cuda/kernel_text.rs`).
pub fn launch_fused<T: DeviceElem>(
    dev: &CudaDevice,
    f: &CudaFunction,
    name: &str,
    out_shape: &[usize],
    args: &[(&dyn Operand, FusedIndex)],
) -> Result<DeviceTensor<T>> {
    let mut out = DeviceTensor::<T>::zeros(dev, out_shape)?;
    let n = numel(out_shape);
    let mut ext: Vec<i64> = Vec::new();
    for (k, (a, mode)) in args.iter().enumerate() {
        let len = numel(a.dims());
        let bad = |what: String| {
            Err(Error::op(
                name,
                format!(
                    "argument {k} of shape {:?} cannot be read as {what} of an output {out_shape:?}",
                    a.dims()
                ),
            ))
        };
        match *mode {
            FusedIndex::Full if len != n => return bad("the same shape".into()),
            FusedIndex::Scalar if len != 1 => return bad("a scalar".into()),
            FusedIndex::Period(baked) => {
                if len == 0 || !n.is_multiple_of(len) || baked.is_some_and(|b| b != len) {
                    return bad(format!("a period of {len}"));
                }
                if baked.is_none() {
                    ext.push(long(name, len)?);
                }
            }
            FusedIndex::Block {
                tail,
                inner,
                len: blen,
            } => {
                if tail > out_shape.len() {
                    return bad(format!("a block over {tail} trailing dims"));
                }
                let q = numel(&out_shape[out_shape.len() - tail..]);
                if len == 0
                    || q == 0
                    || q.checked_mul(len).is_none_or(|p| !n.is_multiple_of(p))
                    || inner.is_some_and(|b| b != q)
                    || blen.is_some_and(|b| b != len)
                {
                    return bad(format!("blocks of {q} x {len}"));
                }
                if inner.is_none() {
                    ext.push(long(name, q)?);
                }
                if blen.is_none() {
                    ext.push(long(name, len)?);
                }
            }
            _ => {}
        }
    }
    if n == 0 {
        return Ok(out);
    }
    let n64 = long(name, n)?;
    let mut lb = dev.stream().launch_builder(f);
    for (a, _) in args {
        a.push(&mut lb);
    }
    lb.arg(out.slice_mut());
    lb.arg(&n64);
    for e in &ext {
        lb.arg(e);
    }
    // SAFETY: the generated kernel's parameters are exactly these (pointers in argument order,
    // out, n, the run-time extents), and every index it forms is below the sizes checked above.
    unsafe { lb.launch(elementwise_config(n, dev.sm_count())) }
        .map_err(|e| dev_err(&format!("launch {name}"), e))?;
    Ok(out)
}

/// Opens the device of a generated model: `Err(Error::Device)` — never a panic — that names the
/// model, what runs on cuda (`what`: `backend: cuda`, or the `backend_map` entries), the
/// ordinal and what is missing (the CUDA libraries, the driver, the device).
pub fn open_model(
    model: &str,
    what: &str,
    ordinal: usize,
    options: super::DeviceOptions,
) -> Result<CudaDevice> {
    CudaDevice::open_with(ordinal, options).map_err(|e| {
        let why = match e {
            Error::Device(m) => m,
            other => other.to_string(),
        };
        Error::Device(format!(
            "`{model}` ({what}) cannot open CUDA device {ordinal}: {why}"
        ))
    })
}

/// Copies a device value into a host destination (mixed models, `backend_map`: a value
/// crossing from the device to the host, or a returned one); waits for the stream's pending
/// work, so the host result is complete when this returns.
pub fn download<'w, T: DeviceElem>(
    x: &DeviceTensor<T>,
    dest: crate::Dest<'w, T>,
    op: &str,
) -> Result<ndarray::ArrayViewMutD<'w, T>> {
    let mut v = dest.get(op, x.shape())?;
    let n = x.len();
    if n == 0 {
        return Ok(v);
    }
    let host = v
        .as_slice_mut()
        .filter(|h| h.len() == n)
        .ok_or_else(|| Error::op(op, "internal: the host destination of a download is not a contiguous buffer of the tensor's size"))?;
    x.slice()
        .stream()
        .memcpy_dtoh(&x.slice().slice(0..n), host)
        .map_err(|e| dev_err("copy to host", e))?;
    Ok(v)
}

/// A 0-d tensor holding `v`.
pub fn scalar<T: DeviceElem>(dev: &CudaDevice, v: T) -> Result<DeviceTensor<T>> {
    DeviceTensor::to_device(dev, &ndarray::arr0(v).view())
}

/// `dims` with at most one `-1` resolved against `len` elements.
fn resolve_dims(op: &str, from: &[usize], dims: &[isize]) -> Result<Vec<usize>> {
    let len = numel(from);
    let known: usize = dims
        .iter()
        .filter(|&&d| d >= 0)
        .map(|&d| d as usize)
        .product();
    let free = dims.iter().filter(|&&d| d < 0).count();
    let fail = || {
        Error::op(
            op,
            format!("cannot view a tensor of shape {from:?} as {dims:?}"),
        )
    };
    let fill = match free {
        0 if known == len => 0,
        1 if known > 0 && len.is_multiple_of(known) => len / known,
        1 if known == 0 && len == 0 => 0,
        _ => return Err(fail()),
    };
    Ok(dims
        .iter()
        .map(|&d| if d < 0 { fill } else { d as usize })
        .collect())
}

/// A copy of `x` under another shape (`-1` for one dim inferred).
pub fn reshape<T: DeviceElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    dims: &[isize],
) -> Result<DeviceTensor<T>> {
    let shape = resolve_dims("reshape", x.shape(), dims)?;
    let mut y = DeviceTensor::<T>::zeros(dev, &shape)?;
    if !x.is_empty() {
        dev.stream()
            .memcpy_dtod(x.slice(), y.slice_mut())
            .map_err(|e| dev_err("copy on device", e))?;
    }
    Ok(y)
}

/// `x` under another shape without a copy (`-1` for one dim inferred).
pub fn reshape_owned<T: DeviceElem>(x: DeviceTensor<T>, dims: &[isize]) -> Result<DeviceTensor<T>> {
    let shape = resolve_dims("reshape", x.shape(), dims)?;
    x.reshape(&shape)
}

/// A copy of `x` (same shape).
pub fn copy<T: DeviceElem>(dev: &CudaDevice, x: &DeviceTensor<T>) -> Result<DeviceTensor<T>> {
    let dims: Vec<isize> = x.shape().iter().map(|&d| d as isize).collect();
    reshape(dev, x, &dims)
}

/// `x`'s shape with `1`s inserted at the (sorted) output positions `axes`.
pub fn unsqueeze_dims(x: &[usize], axes: &[usize]) -> Vec<isize> {
    let mut out: Vec<isize> = Vec::with_capacity(x.len() + axes.len());
    let mut src = x.iter();
    for k in 0..x.len() + axes.len() {
        if axes.contains(&k) {
            out.push(1);
        } else if let Some(&d) = src.next() {
            out.push(d as isize);
        }
    }
    out
}

/// `x`'s shape with the dims `start..=end` (negative: from the end) merged into one.
pub fn flatten_dims(op: &str, x: &[usize], start: i64, end: i64) -> Result<Vec<isize>> {
    let r = x.len() as i64;
    let norm = |a: i64| if a < 0 { a + r } else { a };
    let (s, e) = (norm(start), norm(end));
    if r == 0 || s < 0 || e >= r || s > e {
        return Err(Error::op(
            op,
            format!("cannot flatten dims {start}..={end} of {x:?}"),
        ));
    }
    let (s, e) = (s as usize, e as usize);
    let mut out: Vec<isize> = x[..s].iter().map(|&d| d as isize).collect();
    out.push(numel(&x[s..=e]) as isize);
    out.extend(x[e + 1..].iter().map(|&d| d as isize));
    Ok(out)
}

fn reduce_shape(x: &[usize], from: usize, to: usize, keepdim: bool) -> Vec<usize> {
    x.iter()
        .enumerate()
        .filter_map(|(k, &d)| {
            if (from..to).contains(&k) {
                keepdim.then_some(1)
            } else {
                Some(d)
            }
        })
        .collect()
}

/// Reduce the axes `split..` of `x` (a row reduction over `[prod(dims[..split]),
/// prod(dims[split..])]`); reduced axes are kept as `1` when `keepdim`.
pub fn reduce_trailing<T: FloatElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    kind: RowReduce,
    split: usize,
    keepdim: bool,
) -> Result<DeviceTensor<T>> {
    let op = match kind {
        RowReduce::Sum => "row_sum",
        RowReduce::Mean => "row_mean",
        RowReduce::Max => "row_max",
        RowReduce::Min => "row_min",
    };
    let s = x.shape();
    if split > s.len() {
        return Err(Error::op(
            op,
            format!("axis {split} out of range for {s:?}"),
        ));
    }
    let (rows, cols) = (numel(&s[..split]), numel(&s[split..]));
    let mut out = DeviceTensor::<T>::zeros(dev, &reduce_shape(s, split, s.len(), keepdim))?;
    if rows == 0 {
        return Ok(out);
    }
    let f = dev.kernel(op, T::DTYPE)?;
    let (r, c) = (long(op, rows)?, long(op, cols)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(x.slice()).arg(out.slice_mut()).arg(&r).arg(&c);
    // SAFETY: `x` holds rows * cols elements, `out` rows (the kernel's contract).
    unsafe { lb.launch(row_config(rows, cols)) }
        .map_err(|e| dev_err(&format!("launch {op}"), e))?;
    Ok(out)
}

/// Sum the axes `..split` of `x` (column sums of `[prod(dims[..split]), prod(dims[split..])]`).
pub fn sum_leading<T: FloatElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    split: usize,
    keepdim: bool,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "col_sum";
    let s = x.shape();
    if split > s.len() {
        return Err(Error::op(
            OP,
            format!("axis {split} out of range for {s:?}"),
        ));
    }
    let (rows, cols) = (numel(&s[..split]), numel(&s[split..]));
    let mut out = DeviceTensor::<T>::zeros(dev, &reduce_shape(s, 0, split, keepdim))?;
    if cols == 0 {
        return Ok(out);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let (r, c) = (long(OP, rows)?, long(OP, cols)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(x.slice()).arg(out.slice_mut()).arg(&r).arg(&c);
    // SAFETY: `x` holds rows * cols elements, `out` cols.
    unsafe { lb.launch(elementwise_config(cols, dev.sm_count())) }
        .map_err(|e| dev_err("launch col_sum", e))?;
    Ok(out)
}

/// The gradient of `take_along` over the last axis: `dx[p, j] = (j == idx[p]) ? g[p] : 0`, `dx`
/// of shape `like`.
pub fn take_along_backward<T: FloatElem>(
    dev: &CudaDevice,
    g: &DeviceTensor<T>,
    idx: &DeviceTensor<i64>,
    like: &[usize],
) -> Result<DeviceTensor<T>> {
    const OP: &str = "take_along_backward";
    let Some((&c, lead)) = like.split_last() else {
        return Err(Error::op(OP, "needs a tensor of rank at least 1"));
    };
    if idx.shape() != lead || g.shape() != lead {
        return Err(Error::op(
            OP,
            format!(
                "gradient {:?} and indices {:?} must have the shape {lead:?}",
                g.shape(),
                idx.shape()
            ),
        ));
    }
    let mut dx = DeviceTensor::<T>::zeros(dev, like)?;
    let rows = numel(lead);
    if rows == 0 || c == 0 {
        return Ok(dx);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let (n, cc) = (long(OP, rows)?, long(OP, c)?);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(idx.slice())
        .arg(g.slice())
        .arg(dx.slice_mut())
        .arg(&n)
        .arg(&cc);
    // SAFETY: idx and g hold `rows` elements, dx rows * c.
    unsafe { lb.launch(elementwise_config(rows * c, dev.sm_count())) }
        .map_err(|e| dev_err("launch take_along_backward", e))?;
    Ok(dx)
}

/// `numel(a) / numel(b)` as a 0-d tensor (the `N` of a mean's gradient).
pub fn size_ratio<T: DeviceElem>(
    dev: &CudaDevice,
    a: &dyn Operand,
    b: &dyn Operand,
) -> Result<DeviceTensor<T>> {
    let (x, y) = (numel(a.dims()), numel(b.dims()));
    let r = if y == 0 { 0.0 } else { x as f64 / y as f64 };
    scalar(dev, T::from_f64(r))
}

/// The cuBLAS call of a (batched) row-major product `op(a) · op(b)`: `count` products of
/// `[m, k] · [k, n]`, operand `x`'s `i`-th at element `i * stride_x` (0: one matrix shared by
/// the batch), the result's at `i * m * n`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchedGemm {
    /// Rows of each product (the batch folded in when `b` is one matrix and `a` not transposed).
    pub m: usize,
    /// The inner dim.
    pub k: usize,
    /// Columns of each product.
    pub n: usize,
    /// The number of products.
    pub count: usize,
    /// `a`'s batch stride in elements.
    pub stride_a: usize,
    /// `b`'s batch stride in elements.
    pub stride_b: usize,
    /// The result's shape: the broadcast batch dims, then one matrix's `[M, N]`.
    pub out_shape: Vec<usize>,
}

/// NumPy's broadcast of two batch shapes (right-aligned; equal dims or 1s).
fn broadcast_batch(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let at = |s: &[usize], i: usize| {
        if i + s.len() >= r {
            s[i + s.len() - r]
        } else {
            1
        }
    };
    (0..r)
        .map(|i| match (at(a, i), at(b, i)) {
            (x, y) if x == y || y == 1 => Some(x),
            (1, y) => Some(y),
            _ => None,
        })
        .collect()
}

/// The cuBLAS call of `op(a) · op(b)` for operands of rank 2 or more (NumPy's `matmul`:
/// leading dims are batch dims, broadcast): `[.., M, K] · [K, N]` (`b` one matrix, `a` not
/// transposed) folds the batch into the rows, one GEMM; otherwise a strided batch, each
/// operand's batch either the whole broadcast batch or absent (all 1s) — a partial broadcast
/// (`[2, 1, M, K] · [1, 3, K, N]`) is an `Err` on cuda.
pub fn batched_geometry(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<BatchedGemm> {
    if a.len() < 2 || b.len() < 2 {
        return Err(Error::op(
            "matmul",
            format!("operands of rank 2 or more on cuda, got {a:?} · {b:?}"),
        ));
    }
    let (ba, bb) = (&a[..a.len() - 2], &b[..b.len() - 2]);
    let (m, k, n) = mkn_t(&a[a.len() - 2..], &b[b.len() - 2..], ta, tb).map_err(|_| {
        Error::op(
            "matmul",
            format!("inner dims differ: {a:?} · {b:?} (transposed: {ta}, {tb})"),
        )
    })?;
    let mut out_shape = broadcast_batch(ba, bb).ok_or_else(|| {
        Error::op(
            "matmul",
            format!("batch dims do not broadcast: {a:?} · {b:?}"),
        )
    })?;
    let count: usize = out_shape.iter().product();
    out_shape.extend([m, n]);
    let (pa, pb): (usize, usize) = (ba.iter().product(), bb.iter().product());
    if pb == 1 && !ta {
        // `b` one matrix: the batch of `a` is more rows
        return Ok(BatchedGemm {
            m: m * pa,
            k,
            n,
            count: 1,
            stride_a: 0,
            stride_b: 0,
            out_shape,
        });
    }
    // an operand whose batch has the broadcast batch's size is that batch (a broadcast
    // expanding one of its dims would make it smaller)
    let stride = |p: usize, size: usize| -> Result<usize> {
        if p == count {
            Ok(size)
        } else if p == 1 {
            Ok(0)
        } else {
            Err(Error::op(
                "matmul",
                format!("on cuda a batch operand is broadcast only when it is whole or absent, got {a:?} · {b:?}"),
            ))
        }
    };
    Ok(BatchedGemm {
        m,
        k,
        n,
        count,
        stride_a: stride(pa, m * k)?,
        stride_b: stride(pb, k * n)?,
        out_shape,
    })
}

/// `(m, k, n)` of `op(a) · op(b)` for 2-D operands.
fn mkn_t(a: &[usize], b: &[usize], ta: bool, tb: bool) -> Result<(usize, usize, usize)> {
    let fail = || {
        Error::op(
            "matmul",
            format!("expects 2-D operands with matching inner dims, got {a:?} · {b:?} (transposed: {ta}, {tb})"),
        )
    };
    let (&[a0, a1], &[b0, b1]) = (a, b) else {
        return Err(fail());
    };
    let (m, k) = if ta { (a1, a0) } else { (a0, a1) };
    let (k2, n) = if tb { (b1, b0) } else { (b0, b1) };
    if k != k2 {
        return Err(fail());
    }
    Ok((m, k, n))
}

/// The column-major call for a row-major `C[m,n] = op(A)·op(B)` (operands swapped):
/// `(transa, transb, lda, ldb)` of the first (B) and second (A) operand.
fn swap_params(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> (bool, bool, usize, usize) {
    (tb, ta, if tb { k } else { n }, if ta { m } else { k })
}

fn i32_of(v: usize) -> Result<i32> {
    i32::try_from(v.max(1))
        .map_err(|_| Error::op("matmul", format!("dimension {v} exceeds cuBLAS's i32")))
}

fn op_t(t: bool) -> cublasOperation_t {
    if t {
        cublasOperation_t::CUBLAS_OP_T
    } else {
        cublasOperation_t::CUBLAS_OP_N
    }
}

/// The element types [`matmul`] takes: `f32` (strict SGEMM, or TF32 when asked), `f64`,
/// `f16` and `bf16` (f32 accumulation).
pub trait GemmElem: DeviceElem {
    /// The cuBLAS data type.
    const CUDA_TYPE: cudaDataType_t;
}
impl GemmElem for f32 {
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_32F;
}
impl GemmElem for f64 {
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_64F;
}
impl GemmElem for f16 {
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_16F;
}
impl GemmElem for bf16 {
    const CUDA_TYPE: cudaDataType_t = cudaDataType_t::CUDA_R_16BF;
}

/// Row-major `op(a) · op(b)` (`op` transposes when `ta` / `tb`) on cuBLAS `cublasGemmEx`, into
/// a new tensor of element type `O`: `T = O = f32` is strict f32 unless `precision` is TF32;
/// `f64` computes in f64; `f16` / `bf16` inputs accumulate in f32 and may write `f32` (`O =
/// f32`, the mixed-precision path of `amp: true`) or their own type.
pub fn matmul<T: GemmElem, O: GemmElem>(
    dev: &CudaDevice,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
    ta: bool,
    tb: bool,
    precision: F32Precision,
) -> Result<DeviceTensor<O>> {
    let BatchedGemm {
        m,
        k,
        n,
        count,
        stride_a,
        stride_b,
        out_shape,
    } = batched_geometry(a.shape(), b.shape(), ta, tb)?;
    let mut c = DeviceTensor::<O>::zeros(dev, &out_shape)?;
    if m == 0 || n == 0 || k == 0 || count == 0 {
        return Ok(c);
    }
    let (transa, transb, lda, ldb) = swap_params(m, n, k, ta, tb);
    let compute = match (T::DTYPE, O::DTYPE) {
        (crate::DType::F64, crate::DType::F64) => cublasComputeType_t::CUBLAS_COMPUTE_64F,
        (crate::DType::F32, crate::DType::F32) if precision == F32Precision::Tf32 => {
            cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32
        }
        (crate::DType::F64, _) | (_, crate::DType::F64) => {
            return Err(Error::op("matmul", "f64 products write f64"))
        }
        (crate::DType::F32, o) if o != crate::DType::F32 => {
            return Err(Error::op("matmul", "f32 products write f32"))
        }
        (t, o) if t != o && o != crate::DType::F32 => {
            return Err(Error::op(
                "matmul",
                format!("{t:?} products write {t:?} or f32"),
            ))
        }
        _ => cublasComputeType_t::CUBLAS_COMPUTE_32F,
    };
    let stream = dev.stream();
    {
        let (pb, _rb) = b.slice().device_ptr(stream);
        let (pa, _ra) = a.slice().device_ptr(stream);
        let (pc, _rc) = c.slice_mut().device_ptr_mut(stream);
        let (one64, zero64) = (1.0f64, 0.0f64);
        let (one32, zero32) = (1.0f32, 0.0f32);
        let (alpha, beta) = if compute == cublasComputeType_t::CUBLAS_COMPUTE_64F {
            (
                (&one64) as *const f64 as *const _,
                (&zero64) as *const f64 as *const _,
            )
        } else {
            (
                (&one32) as *const f32 as *const _,
                (&zero32) as *const f32 as *const _,
            )
        };
        // SAFETY: the buffers hold op(b) [k,n], op(a) [m,k] and c [m,n] elements with the leading
        // dimensions passed (`count` of each at its batch stride, `batched_geometry`); the guards keep the buffers' events alive across the call; alpha/beta
        // have the compute type's scalar type.
        // (batched: each operand's batch stride, 0 for one shared by the batch; c's is m * n)
        if count == 1 {
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *dev.blas().handle(),
                    op_t(transa),
                    op_t(transb),
                    i32_of(n)?,
                    i32_of(m)?,
                    i32_of(k)?,
                    alpha,
                    pb as *const _,
                    T::CUDA_TYPE,
                    i32_of(lda)?,
                    pa as *const _,
                    T::CUDA_TYPE,
                    i32_of(ldb)?,
                    beta,
                    pc as *mut _,
                    O::CUDA_TYPE,
                    i32_of(n)?,
                    compute,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| dev_err("cublasGemmEx", e))?;
        } else {
            let big = |v: usize| {
                i64::try_from(v).map_err(|_| Error::op("matmul", format!("stride {v} exceeds i64")))
            };
            unsafe {
                cudarc::cublas::result::gemm_strided_batched_ex(
                    *dev.blas().handle(),
                    op_t(transa),
                    op_t(transb),
                    i32_of(n)?,
                    i32_of(m)?,
                    i32_of(k)?,
                    alpha,
                    pb as *const _,
                    T::CUDA_TYPE,
                    i32_of(lda)?,
                    big(stride_b)?,
                    pa as *const _,
                    T::CUDA_TYPE,
                    i32_of(ldb)?,
                    big(stride_a)?,
                    beta,
                    pc as *mut _,
                    O::CUDA_TYPE,
                    i32_of(n)?,
                    big(m * n)?,
                    i32_of(count)?,
                    compute,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| dev_err("cublasGemmStridedBatchedEx", e))?;
        }
    }
    Ok(c)
}

/// Row-major `act(op(a) · op(b) + bias[n])` on cuBLASLt with the bias and activation in the
/// epilogue (`f16` / `bf16`, f32 accumulation); `bias` may be `None`.
pub fn matmul_epilogue<T: LtElem>(
    dev: &CudaDevice,
    a: &DeviceTensor<T>,
    b: &DeviceTensor<T>,
    ta: bool,
    tb: bool,
    bias: Option<&DeviceTensor<T>>,
    act: Activation,
) -> Result<DeviceTensor<T>>
where
    CudaBlasLT: Matmul<T>,
{
    let (m, k, n) = mkn_t(a.shape(), b.shape(), ta, tb)?;
    if let Some(bv) = bias {
        if bv.shape() != [n] {
            return Err(Error::op(
                "matmul",
                format!("bias has shape {:?}, expected [{n}]", bv.shape()),
            ));
        }
    }
    let mut y = DeviceTensor::<T>::zeros(dev, &[m, n])?;
    if m == 0 || n == 0 {
        return Ok(y);
    }
    if k == 0 {
        return Err(Error::op(
            "matmul",
            format!("the epilogue path needs a non-empty inner dim, got [{m}, 0] · [0, {n}]"),
        ));
    }
    let (transa, transb, lda, ldb) = swap_params(m, n, k, ta, tb);
    let lt = dev.blas_lt()?;
    let cfg = MatmulConfig {
        transa,
        transb,
        transc: false,
        m: n as u64,
        n: m as u64,
        k: k as u64,
        alpha: 1.0,
        lda: lda as i64,
        ldb: ldb as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    let act = match act {
        Activation::None => None,
        Activation::Relu => Some(cudarc::cublaslt::Activation::Relu),
        Activation::Gelu => Some(cudarc::cublaslt::Activation::Gelu),
    };
    // SAFETY: buffers sized as the dims say (checked above); the bias has `n` elements.
    unsafe {
        lt.matmul(
            cfg,
            b.slice(),
            a.slice(),
            y.slice_mut(),
            bias.map(|v| v.slice()),
            act.as_ref(),
        )
    }
    .map_err(|e| dev_err("cublasLtMatmul", e))?;
    Ok(y)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    /// The swap parameters, fed to a column-major reference GEMM, give the row-major
    /// `op(A)·op(B)` for all four transpose combinations.
    #[cfg_attr(test, test)]
    pub(crate) fn swap_params_compute_row_major_products() {
        let (m, k, n) = (3usize, 4usize, 5usize);
        for ta in [false, true] {
            for tb in [false, true] {
                // logical op(A) [m,k], op(B) [k,n]; storage is A or A^T row-major
                let opa = |i: usize, l: usize| (i * 7 + l * 3) as f32 - 5.0;
                let opb = |l: usize, j: usize| (l * 2 + j * 5 % 7) as f32 - 3.0;
                let a: Vec<f32> = if ta {
                    (0..k * m).map(|x| opa(x % m, x / m)).collect() // stored [k, m]
                } else {
                    (0..m * k).map(|x| opa(x / k, x % k)).collect()
                };
                let b: Vec<f32> = if tb {
                    (0..n * k).map(|x| opb(x % k, x / k)).collect() // stored [n, k]
                } else {
                    (0..k * n).map(|x| opb(x / n, x % n)).collect()
                };
                let (tra, trb, lda, ldb) = swap_params(m, n, k, ta, tb);
                // column-major: C'(i,j) (n x m, ld n) = sum_l X(i,l) Y(l,j),
                // X = op_tra(first = b), Y = op_trb(second = a)
                let x = |i: usize, l: usize| if tra { b[l + i * lda] } else { b[i + l * lda] };
                let y = |l: usize, j: usize| if trb { a[j + l * ldb] } else { a[l + j * ldb] };
                for i in 0..n {
                    for j in 0..m {
                        let c: f32 = (0..k).map(|l| x(i, l) * y(l, j)).sum();
                        let r: f32 = (0..k).map(|l| opa(j, l) * opb(l, i)).sum();
                        assert_eq!(c, r, "ta {ta} tb {tb}");
                    }
                }
                let (sa, sb) = (
                    if ta { vec![k, m] } else { vec![m, k] },
                    if tb { vec![n, k] } else { vec![k, n] },
                );
                assert_eq!(mkn_t(&sa, &sb, ta, tb).unwrap(), (m, k, n));
            }
        }
        assert!(mkn_t(&[2, 3], &[2, 3], false, false).is_err());
    }

    #[cfg_attr(test, test)]
    pub(crate) fn shape_helpers() {
        assert_eq!(
            broadcast_shapes("t", &[&[4, 1], &[3], &[]]).unwrap(),
            vec![4, 3]
        );
        assert!(broadcast_shapes("t", &[&[4, 2], &[3]]).is_err());
        assert_eq!(resolve_dims("t", &[2, 6], &[3, -1]).unwrap(), vec![3, 4]);
        assert!(resolve_dims("t", &[2, 6], &[5, -1]).is_err());
        assert!(resolve_dims("t", &[2, 6], &[-1, -1]).is_err());
        assert_eq!(unsqueeze_dims(&[4, 5], &[0, 2]), vec![1, 4, 1, 5]);
        assert_eq!(flatten_dims("t", &[2, 3, 4], 1, -1).unwrap(), vec![2, 12]);
        assert!(flatten_dims("t", &[2, 3], 1, 0).is_err());
        assert_eq!(reduce_shape(&[2, 3, 4], 1, 3, true), vec![2, 1, 1]);
        assert_eq!(reduce_shape(&[2, 3, 4], 0, 1, false), vec![3, 4]);
    }

    /// The batched product's geometry, run on the host as cuBLAS reads it (product `i` of
    /// `op(A_i) [m, k] · op(B_i) [k, n]`, `A_i` at `i * stride_a`, `B_i` at `i * stride_b`, row
    /// major, `C_i` at `i * m * n`), gives the CPU's `matmul` for batched, folded (`b` one
    /// matrix), broadcast (a batch of 1s) and transposed operands; a partial broadcast and
    /// mismatched dims are `Err`s.
    #[cfg_attr(test, test)]
    pub(crate) fn batched_geometry_gives_the_cpus_products() {
        use ndarray::{ArrayD, IxDyn};
        let arr = |s: &[usize], seed: f64| {
            let n: usize = s.iter().product();
            ArrayD::from_shape_vec(
                IxDyn(s),
                (0..n)
                    .map(|i| ((i * 7 + 3) % 11) as f64 - 5.0 + seed)
                    .collect(),
            )
            .unwrap()
        };
        let cases: &[(&[usize], &[usize], bool, bool)] = &[
            (&[2, 3, 4], &[4, 5], false, false), // [B, S, E] @ [E, N]: folded
            (&[2, 3, 4], &[5, 4], false, true),  // x @ W^T (Linear)
            (&[2, 3, 4], &[2, 3, 5], true, false), // the weight gradient: x^T @ gy per batch
            (&[2, 3, 4], &[2, 5, 4], false, true),
            (&[2, 4, 3], &[2, 5, 4], true, true),
            (&[3, 4], &[2, 3, 5], true, false), // a shared by the batch
            (&[1, 2, 3, 4], &[2, 4, 5], false, false),
            (&[2, 2, 3, 4], &[1, 1, 4, 5], false, false),
            (&[2, 4, 3], &[1, 4, 5], true, false), // a transposed: a batch, b shared
        ];
        for &(sa, sb, ta, tb) in cases {
            let (a, b) = (arr(sa, 0.0), arr(sb, 0.5));
            let want = crate::ops::matmul(&a.view(), &b.view(), ta, tb).unwrap();
            let g = batched_geometry(sa, sb, ta, tb).unwrap();
            assert_eq!(g.out_shape, want.shape(), "{sa:?} {sb:?}");
            let (ad, bd) = (a.as_slice().unwrap(), b.as_slice().unwrap());
            let (m, k, n) = (g.m, g.k, g.n);
            let mut c = vec![0.0f64; g.count * m * n];
            for p in 0..g.count {
                let (oa, ob) = (p * g.stride_a, p * g.stride_b);
                for i in 0..m {
                    for j in 0..n {
                        let mut acc = 0.0;
                        for l in 0..k {
                            let x = if ta {
                                ad[oa + l * m + i]
                            } else {
                                ad[oa + i * k + l]
                            };
                            let y = if tb {
                                bd[ob + j * k + l]
                            } else {
                                bd[ob + l * n + j]
                            };
                            acc += x * y;
                        }
                        c[p * m * n + i * n + j] = acc;
                    }
                }
            }
            assert_eq!(c, want.iter().copied().collect::<Vec<_>>(), "{sa:?} {sb:?}");
        }
        assert!(batched_geometry(&[2, 1, 3, 4], &[1, 3, 4, 5], false, false).is_err());
        assert!(batched_geometry(&[2, 3, 4], &[2, 5, 4], false, false).is_err());
        assert!(batched_geometry(&[3, 4], &[4], false, false).is_err());
        assert!(batched_geometry(&[2, 3, 4], &[3, 4, 5], false, false).is_err());
    }
}
