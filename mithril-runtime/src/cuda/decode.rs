//! Incremental decoding on the device (`decode.cu` of `mithril_kernels::cuda`): the in-place
//! key/value cache update ([`update_slice_in`]) and causal attention over the cache rows in use
//! ([`cached_attention`]), with the CPU ops' semantics and error messages
//! (`mithril::rt::ops::update_slice_in`, `cached_attention_to`).
//!
//! The position (`start` / `pos`) is a host integer: the generated code reads a device `pos`
//! back once per op (`flow::read_index`), checks it here and passes it to the kernel by value.
//! The index arithmetic the kernels do is [`update_target`] and [`cached_key_range`] (pure
//! functions, unit-tested on the host against the CPU ops).

use super::launch::elementwise_config;
use super::nn::{att_config, attn_dims, i64s, launch, scale_of, Longs, NnElem, ATT_ROWS, ATT_TILE};
use super::{CudaDevice, DeviceElem, DeviceTensor};
use crate::{DType, Error, Result};
use cudarc::driver::PushKernelArg;

fn fmt_shape(s: &[usize]) -> String {
    format!(
        "[{}]",
        s.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The geometry of `update_slice` of a tensor of shape `x` by values of shape `v` along
/// `axis` (negative from the end) at row `start`: `[outer, n, m, inner]` (`x` viewed as
/// `[outer, m, inner]`, the values as `[outer, n, inner]`). `Err` with the CPU's messages for
/// a rank or shape mismatch and for rows past the end ("the cache is full").
pub fn update_geometry(x: &[usize], v: &[usize], axis: isize, start: i64) -> Result<[usize; 4]> {
    const OP: &str = "update_slice";
    let r = x.len();
    let ax = if axis < 0 { axis + r as isize } else { axis };
    if ax < 0 || ax as usize >= r || v.len() != r {
        return Err(Error::op(
            OP,
            format!(
                "axis {axis} of a rank-{r} tensor updated by a rank-{} value",
                v.len()
            ),
        ));
    }
    let ax = ax as usize;
    let (m, n) = (x[ax], v[ax]);
    if !(0..r).all(|a| a == ax || x[a] == v[a]) {
        return Err(Error::op(
            OP,
            format!(
                "a value of shape {} does not fit a slice of {} along axis {ax}",
                fmt_shape(v),
                fmt_shape(x)
            ),
        ));
    }
    if start < 0 || start as u64 + n as u64 > m as u64 {
        return Err(Error::op(
            OP,
            format!(
                "the cache is full: {n} new row(s) from position {start} do not fit its {m} rows (axis {ax} of {})",
                fmt_shape(x)
            ),
        ));
    }
    let outer = x[..ax].iter().product();
    let inner = x[ax + 1..].iter().product();
    Ok([outer, n, m, inner])
}

/// Where the update kernel writes value element `t` (row-major in the values): the element
/// index in the cache (`mt_update_slice`'s arithmetic).
pub fn update_target(t: usize, [_, n, m, inner]: [usize; 4], start: usize) -> usize {
    let row = n * inner;
    let (o, r) = (t / row, t % row);
    (o * m + start) * inner + r
}

/// The update kernel for `T`'s width (a bit copy: f32 / i32 through the f32 kernel, f64 / i64
/// through the f64 one, f16 / bf16 through the 16-bit one).
fn update_kernel<T: DeviceElem>(dev: &CudaDevice) -> Result<cudarc::driver::CudaFunction> {
    match std::mem::size_of::<T>() {
        4 => dev.kernel("update_slice", DType::F32),
        8 => dev.kernel("update_slice", DType::F64),
        2 => {
            let k = mithril_kernels::cuda::DECODE;
            dev.function("decode.cu", k, "mt_update_slice_u16")
        }
        _ => Err(Error::op(
            "update_slice",
            format!("no CUDA cache update for {} elements", T::DTYPE.name()),
        )),
    }
}

/// Write `values` into rows `start .. start + n` of `x` along `axis`, in place: only the new
/// rows are written (one launch; nothing else of `x` is read or copied). `Err` (nothing
/// written) when the rows do not fit or the shapes disagree, with the CPU's messages.
pub fn update_slice_in<T: DeviceElem>(
    dev: &CudaDevice,
    x: &mut DeviceTensor<T>,
    values: &DeviceTensor<T>,
    axis: isize,
    start: i64,
) -> Result<()> {
    const OP: &str = "update_slice";
    let geo = update_geometry(x.shape(), values.shape(), axis, start)?;
    let [outer, n, m, inner] = geo;
    let total = outer * n * inner;
    if total == 0 {
        return Ok(());
    }
    let f = update_kernel::<T>(dev)?;
    let Longs(a) = i64s(OP, [outer, n, m, inner, start as usize])?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&a[0]).arg(&a[1]).arg(&a[2]).arg(&a[3]).arg(&a[4]);
    lb.arg(values.slice()).arg(x.slice_mut());
    launch(OP, lb, elementwise_config(total, dev.sm_count()))
}

/// [`update_slice_in`] into a copy of `x` (when `x` is still read later or is not the call's
/// to consume): one device-to-device copy of `x`, then the rows.
pub fn update_slice<T: DeviceElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    values: &DeviceTensor<T>,
    axis: isize,
    start: i64,
) -> Result<DeviceTensor<T>> {
    update_geometry(x.shape(), values.shape(), axis, start)?;
    let mut y = super::exec::copy(dev, x)?;
    update_slice_in(dev, &mut y, values, axis, start)?;
    Ok(y)
}

/// The keys query row `i` of a block whose first row is `i0` reads (`mt_cached_attention`):
/// the block stages rows `0 .. end` of the cache (`end = min(pos + i0 + ROWS, pos + sq)`, so
/// never a row at or past `pos + sq`) and row `i` admits keys `0 ..= pos + i`.
pub fn cached_key_range(pos: usize, sq: usize, i0: usize, i: usize) -> (usize, usize) {
    let end = (pos + i0 + ATT_ROWS).min(pos + sq);
    (end, (pos + i + 1).min(end))
}

/// Causal attention of `q: [..., Hq, Sq, D]` at positions `pos .. pos + Sq` over the first
/// `pos + Sq` rows of the cache `k: [..., Hkv, M, D]`, `v: [..., Hkv, M, Dv]` (query `i` sees
/// keys `j <= pos + i`; rows after `pos + Sq` are not read): `[..., Hq, Sq, Dv]`. `scale`
/// defaults to `1/√D`. `Err` when `pos + Sq > M` ("the cache is full"), as on the CPU. Head
/// dims up to 256.
pub fn cached_attention<T: NnElem>(
    dev: &CudaDevice,
    q: &DeviceTensor<T>,
    k: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    pos: i64,
    scale: Option<f64>,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "cached_attention";
    let (lead, [b, hq, hkv, sq, m, d, dv]) = attn_dims(OP, q.shape(), k.shape(), v.shape())?;
    if pos < 0 || pos as u64 + sq as u64 > m as u64 {
        return Err(Error::op(
            OP,
            format!(
                "the cache is full: {sq} new position(s) from position {pos} do not fit its {m} rows"
            ),
        ));
    }
    let mut oshape = lead;
    oshape.extend([hq, sq, dv]);
    let mut out = DeviceTensor::zeros(dev, &oshape)?;
    if out.is_empty() {
        return Ok(out);
    }
    let f = dev.kernel(OP, T::DTYPE)?;
    let smem = (ATT_ROWS * d + ATT_TILE * (d + 1) + ATT_TILE * dv) * std::mem::size_of::<T>();
    let cfg = att_config(OP, &f, b * hq, sq, smem)?;
    let dims = i64s(OP, [b, hq, hkv, sq, m, d, dv, pos as usize])?;
    let s: T = scale_of(scale, d);
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&dims).arg(q.slice()).arg(k.slice()).arg(v.slice());
    lb.arg(&s).arg(out.slice_mut());
    launch(OP, lb, cfg)?;
    Ok(out)
}

/// The half-precision storage types of a cache (`f16`, `bf16`): their kernels' suffix.
pub trait HalfElem: DeviceElem {
    /// `"f16"` or `"bf16"` (`mt_widen_rows_<suffix>`, `mt_narrow_<suffix>`).
    const SUFFIX: &'static str;
}
impl HalfElem for half::f16 {
    const SUFFIX: &'static str = "f16";
}
impl HalfElem for half::bf16 {
    const SUFFIX: &'static str = "bf16";
}

fn half_kernel<H: HalfElem>(dev: &CudaDevice, op: &str) -> Result<cudarc::driver::CudaFunction> {
    let entry = format!("mt_{op}_{}", H::SUFFIX);
    dev.function("decode.cu", mithril_kernels::cuda::DECODE, &entry)
}

/// Rows `0 .. used` of each of `outer` blocks of `m` rows (`inner` elements a row) of `x`,
/// widened to a compact f32 tensor of `shape` (`[.., used, inner]`).
fn widen_rows<H: HalfElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<H>,
    [outer, used, m, inner]: [usize; 4],
    shape: &[usize],
) -> Result<DeviceTensor<f32>> {
    const OP: &str = "cached_attention (widen)";
    let mut out = DeviceTensor::<f32>::zeros(dev, shape)?;
    let total = outer * used * inner;
    if total == 0 {
        return Ok(out);
    }
    let f = half_kernel::<H>(dev, "widen_rows")?;
    let Longs(a) = i64s(OP, [outer, used, m, inner])?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&a[0]).arg(&a[1]).arg(&a[2]).arg(&a[3]);
    lb.arg(x.slice()).arg(out.slice_mut());
    launch(OP, lb, elementwise_config(total, dev.sm_count()))?;
    Ok(out)
}

/// [`cached_attention`] for f16 / bf16 tensors, as the CPU computes it: the f32 kernel on
/// widened copies of the queries and of **the cache rows in use only** (`pos + Sq` of each
/// (batch, head)'s `M`), the result rounded once to `H` (nearest even).
pub fn cached_attention_half<H: HalfElem>(
    dev: &CudaDevice,
    q: &DeviceTensor<H>,
    k: &DeviceTensor<H>,
    v: &DeviceTensor<H>,
    pos: i64,
    scale: Option<f64>,
) -> Result<DeviceTensor<H>> {
    const OP: &str = "cached_attention";
    let (lead, [b, _, hkv, sq, m, d, dv]) = attn_dims(OP, q.shape(), k.shape(), v.shape())?;
    if pos < 0 || pos as u64 + sq as u64 > m as u64 {
        return Err(Error::op(
            OP,
            format!(
                "the cache is full: {sq} new position(s) from position {pos} do not fit its {m} rows"
            ),
        ));
    }
    let used = pos as usize + sq;
    let nq = q.len();
    let q32 = widen_rows(dev, q, [1, nq, nq, 1], q.shape())?;
    let mut ks = lead.clone();
    ks.extend([hkv, used, d]);
    let k32 = widen_rows(dev, k, [b * hkv, used, m, d], &ks)?;
    let mut vs = lead;
    vs.extend([hkv, used, dv]);
    let v32 = widen_rows(dev, v, [b * hkv, used, m, dv], &vs)?;
    let o32 = cached_attention(dev, &q32, &k32, &v32, pos, scale)?;
    let mut out = DeviceTensor::<H>::zeros(dev, o32.shape())?;
    let n = o32.len();
    if n == 0 {
        return Ok(out);
    }
    let f = half_kernel::<H>(dev, "narrow")?;
    let Longs([n64]) = i64s(OP, [n])?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&n64).arg(o32.slice()).arg(out.slice_mut());
    launch(OP, lb, elementwise_config(n, dev.sm_count()))?;
    Ok(out)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    /// The update kernel's index arithmetic, run on the host over every element of the values,
    /// writes exactly what the CPU's `update_slice_in` writes, for every axis (and a negative
    /// one), at the first, a middle and the last fitting start; the checks are the CPU's.
    #[cfg_attr(test, test)]
    pub(crate) fn update_kernel_arithmetic_is_the_cpus() {
        let xs = [2usize, 3, 7, 4];
        for axis in [0isize, 1, 2, 3, -2] {
            let ax = axis.rem_euclid(4) as usize;
            let mut vs = xs;
            vs[ax] = 2.min(xs[ax]);
            let n = vs[ax];
            for start in [0, (xs[ax] - n) / 2, xs[ax] - n] {
                let x = ArrayD::from_shape_fn(IxDyn(&xs), |i| {
                    (i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as f32
                });
                let v = ArrayD::from_shape_fn(IxDyn(&vs), |i| {
                    -1.0 - (i[0] * 1000 + i[1] * 100 + i[2] * 10 + i[3]) as f32
                });
                let mut want = x.clone();
                crate::ops::update_slice_in(&mut want.view_mut(), &v.view(), axis, start as i64)
                    .unwrap();
                let geo = update_geometry(&xs, &vs, axis, start as i64).unwrap();
                let (xd, vd) = (x.as_slice().unwrap(), v.as_slice().unwrap());
                let mut got = xd.to_vec();
                let mut hit = vec![false; got.len()];
                for (t, &val) in vd.iter().enumerate() {
                    let at = update_target(t, geo, start);
                    assert!(!hit[at], "axis {axis} start {start}: {at} written twice");
                    hit[at] = true;
                    got[at] = val;
                }
                assert_eq!(
                    got.as_slice(),
                    want.as_slice().unwrap(),
                    "axis {axis} start {start}"
                );
                // only the new rows are written
                assert_eq!(hit.iter().filter(|&&h| h).count(), vd.len());
            }
        }
        // the CPU's errors: the cache is full, a negative start, shapes that do not fit
        for (x, v, ax, s, msg) in [
            (vec![1, 2, 8, 4], vec![1, 2, 1, 4], 2isize, 8i64, "the cache is full: 1 new row(s) from position 8 do not fit its 8 rows (axis 2 of [1, 2, 8, 4])"),
            (vec![1, 2, 8, 4], vec![1, 2, 3, 4], 2, 6, "the cache is full: 3 new row(s)"),
            (vec![1, 2, 8, 4], vec![1, 2, 1, 4], 2, -1, "from position -1"),
            (vec![1, 2, 8, 4], vec![1, 3, 1, 4], 2, 0, "does not fit a slice of [1, 2, 8, 4] along axis 2"),
            (vec![1, 2, 8, 4], vec![2, 1, 4], 2, 0, "updated by a rank-3 value"),
        ] {
            let e = update_geometry(&x, &v, ax, s).unwrap_err().to_string();
            assert!(e.contains(msg) && e.contains("update_slice"), "{e}");
            let mut c = ArrayD::<f32>::zeros(IxDyn(&x));
            if v.len() == x.len() {
                let cpu = crate::ops::update_slice_in(
                    &mut c.view_mut(),
                    &ArrayD::<f32>::zeros(IxDyn(&v)).view(),
                    ax,
                    s,
                )
                .unwrap_err()
                .to_string();
                assert_eq!(cpu, e);
            }
        }
    }

    /// The attention kernel's key range: each query row of each block admits exactly the keys
    /// `0 ..= pos + i` and no block stages a row at or past `pos + sq`, for prefills (`pos` 0,
    /// several blocks of rows) and decode steps (`sq` 1) at every position of a 9-row cache.
    #[cfg_attr(test, test)]
    pub(crate) fn cached_key_range_reads_only_the_rows_in_use() {
        let m = 9;
        for sq in 1..=m {
            for pos in 0..=m - sq {
                for i0 in (0..sq).step_by(ATT_ROWS) {
                    for i in i0..(i0 + ATT_ROWS).min(sq) {
                        let (staged, admitted) = cached_key_range(pos, sq, i0, i);
                        assert!(staged <= pos + sq, "pos {pos} sq {sq} i {i}");
                        assert_eq!(admitted, pos + i + 1, "pos {pos} sq {sq} i {i}");
                    }
                }
            }
        }
    }
}
