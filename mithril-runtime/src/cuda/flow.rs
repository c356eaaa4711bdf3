//! What the code generated for run-time control flow on `backend: cuda` calls: the loop runs on
//! the host (structured Rust `loop { .. }` / `if { } else { }` around the body's launches), so
//! the device side is small — reading a device-computed condition or index back to the host
//! (one scalar copy each), the values of a branch that may not have run, the per-iteration tapes
//! of the reversed loops of `evaluate_gradients`, and the two indexing kernels of scans (a step
//! read `x[(.., t)]` and a stacked write `stack ys[(.., t)] = y`, whose CUDA C the generator
//! emits into the model's module, see `kernel_text::axis_kernels` in `mithril-macros`).
//!
//! Like `exec`, every launch checks the sizes it hands a kernel against the buffers; an index
//! out of range is an `Err` naming the op, never an out-of-bounds access.

use super::launch::elementwise_config;
use super::{dev_err, CudaDevice, DeviceElem, DeviceTensor};
use crate::{Error, Result};
use cudarc::driver::{CudaFunction, PushKernelArg};

fn long(op: &str, v: usize) -> Result<i64> {
    i64::try_from(v).map_err(|_| Error::op(op, format!("size {v} exceeds i64")))
}

/// The value of a node computed under a run-time guard (a branch of a run-time `if`): `Err`
/// when the branch did not run (the generated code reads such a value only under the same
/// guard, so this is an internal error, never a panic).
pub fn taken<'v, X>(v: &'v Option<X>, what: &str) -> Result<&'v X> {
    v.as_ref().ok_or_else(|| {
        Error::op(
            what,
            "internal: read the value of a branch of a run-time `if` that did not run",
        )
    })
}

/// The single element of a device tensor, copied to the host (waits for the stream's pending
/// work). `Err` unless the tensor has exactly one element.
pub fn read_scalar<T: DeviceElem>(x: &DeviceTensor<T>, what: &str) -> Result<T> {
    if x.len() != 1 {
        return Err(Error::op(
            what,
            format!(
                "a run-time condition or index must be a single value, found shape {:?}",
                x.shape()
            ),
        ));
    }
    READBACKS.with(|c| c.set(c.get() + 1));
    let h = x
        .slice()
        .stream()
        .clone_dtoh(&x.slice().slice(0..1))
        .map_err(|e| dev_err("copy to host", e))?;
    h.first()
        .copied()
        .ok_or_else(|| Error::op(what, "internal: empty copy"))
}

thread_local! {
    static READBACKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many device values the generated control-flow code has read back to the host
/// ([`read_bool`], [`read_index`]) on this thread: a counted loop's counter, condition and step
/// index live on the host, so its iterations add nothing here.
pub fn readbacks() -> u64 {
    READBACKS.with(|c| c.get())
}

/// Entry `i` of a host scalar's tape (the value a host-held loop counter had at the start of
/// iteration `i`), for the reversed loop of `evaluate_gradients`; `Err` when the loop did not
/// run that iteration.
pub fn host_tape_at<T: Copy>(tape: &[T], i: i64, what: &str) -> Result<T> {
    usize::try_from(i)
        .ok()
        .and_then(|i| tape.get(i))
        .copied()
        .ok_or_else(|| {
            Error::op(
                what,
                format!(
                    "internal: tape read of iteration {i}, the loop ran {} iterations",
                    tape.len()
                ),
            )
        })
}

/// A device-computed condition (a scalar `bool`) read back to the host: the one transfer per
/// `if`, and per iteration of a `while` whose condition the device computes.
pub fn read_bool(x: &DeviceTensor<bool>, what: &str) -> Result<bool> {
    read_scalar(x, what)
}

/// A device-computed integer index (`i64` or `i32` scalar) read back to the host.
pub fn read_index<T: DeviceElem + Into<i64>>(x: &DeviceTensor<T>, what: &str) -> Result<i64> {
    read_scalar(x, what).map(Into::into)
}

/// Entry `i` of a loop's tape (the value a carry had at the start of iteration `i`); `Err`
/// when the loop did not run that iteration.
pub fn tape_at<'t, T: DeviceElem>(
    tape: &'t [DeviceTensor<T>],
    i: i64,
    what: &str,
) -> Result<&'t DeviceTensor<T>> {
    usize::try_from(i)
        .ok()
        .and_then(|i| tape.get(i))
        .ok_or_else(|| {
            Error::op(
                what,
                format!(
                    "internal: tape read of iteration {i}, the loop ran {} iterations",
                    tape.len()
                ),
            )
        })
}

/// The trip count check of a loop with `max_steps = m`: `Err` when the condition still holds at
/// the start of iteration `m + 1` (the same message as the CPU plan's).
pub fn check_max_steps(n: u64, max: u64, model: &str) -> Result<()> {
    if n >= max {
        return Err(Error::op(
            model,
            format!("a run-time loop did not end within its `max_steps = {max}` iterations (its condition still held at the start of iteration {})", n + 1),
        ));
    }
    Ok(())
}

/// `(outer, len, inner)` of `shape` around `axis` (negative: from the end), or `Err`.
pub fn axis_split(shape: &[usize], axis: i64, what: &str) -> Result<(usize, usize, usize)> {
    let r = shape.len() as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(Error::op(
            what,
            format!("axis {axis} out of range for shape {shape:?}"),
        ));
    }
    let a = a as usize;
    Ok((
        shape[..a].iter().product(),
        shape[a],
        shape[a + 1..].iter().product(),
    ))
}

fn norm_index(i: i64, len: usize, what: &str) -> Result<usize> {
    let l = len as i64;
    let j = if i < 0 { i + l } else { i };
    if j < 0 || j >= l {
        return Err(Error::op(
            what,
            format!("index {i} out of range for an axis of length {len}"),
        ));
    }
    Ok(j as usize)
}

/// `x`'s slice `i` along `axis` (the axis removed): a scan's step read `x[(.., t)]`, `gather`
/// at a scalar index. `f` is the generated kernel `(const T* x, T* out, long n, long len,
/// long inner, long i)`.
pub fn gather_at<T: DeviceElem>(
    dev: &CudaDevice,
    f: &CudaFunction,
    what: &str,
    x: &DeviceTensor<T>,
    axis: i64,
    i: i64,
) -> Result<DeviceTensor<T>> {
    let (outer, len, inner) = axis_split(x.shape(), axis, what)?;
    let i = norm_index(i, len, what)?;
    let a = (if axis < 0 {
        axis + x.shape().len() as i64
    } else {
        axis
    }) as usize;
    let mut shape = x.shape().to_vec();
    shape.remove(a);
    let mut out = DeviceTensor::<T>::zeros(dev, &shape)?;
    let n = outer * inner;
    if n == 0 {
        return Ok(out);
    }
    let (n64, l64, q64, i64_) = (
        long(what, n)?,
        long(what, len)?,
        long(what, inner)?,
        long(what, i)?,
    );
    let mut lb = dev.stream().launch_builder(f);
    lb.arg(x.slice());
    lb.arg(out.slice_mut());
    lb.arg(&n64);
    lb.arg(&l64);
    lb.arg(&q64);
    lb.arg(&i64_);
    // SAFETY: the kernel reads x[(o * len + i) * inner + k] for o < outer, k < inner (i < len
    // checked above, x has outer * len * inner elements) and writes out[o * inner + k].
    unsafe { lb.launch(elementwise_config(n, dev.sm_count())) }
        .map_err(|e| dev_err(&format!("launch {what}"), e))?;
    Ok(out)
}

/// `acc`'s slice `i` along `axis` replaced by (`add`: increased by) `v`, in place: a scan's
/// stacked output and the gradient of a step read. `f` is the generated kernel `(const T* v,
/// T* acc, long n, long len, long inner, long i)`.
#[allow(clippy::too_many_arguments)]
pub fn set_at_in<T: DeviceElem>(
    dev: &CudaDevice,
    f: &CudaFunction,
    what: &str,
    acc: &mut DeviceTensor<T>,
    v: &DeviceTensor<T>,
    axis: i64,
    i: i64,
) -> Result<()> {
    let (outer, len, inner) = axis_split(acc.shape(), axis, what)?;
    let i = norm_index(i, len, what)?;
    let a = (if axis < 0 {
        axis + acc.shape().len() as i64
    } else {
        axis
    }) as usize;
    let mut want = acc.shape().to_vec();
    want.remove(a);
    if v.shape() != want.as_slice() {
        return Err(Error::op(
            what,
            format!(
                "a value of shape {:?} cannot be written at index {i} of axis {a} of {:?} (expected {want:?})",
                v.shape(),
                acc.shape()
            ),
        ));
    }
    let n = outer * inner;
    if n == 0 {
        return Ok(());
    }
    let (n64, l64, q64, i64_) = (
        long(what, n)?,
        long(what, len)?,
        long(what, inner)?,
        long(what, i)?,
    );
    let mut lb = dev.stream().launch_builder(f);
    lb.arg(v.slice());
    lb.arg(acc.slice_mut());
    lb.arg(&n64);
    lb.arg(&l64);
    lb.arg(&q64);
    lb.arg(&i64_);
    // SAFETY: the kernel reads v[o * inner + k] and writes acc[(o * len + i) * inner + k] for
    // o < outer, k < inner; both sizes and i < len are checked above.
    unsafe { lb.launch(elementwise_config(n, dev.sm_count())) }
        .map_err(|e| dev_err(&format!("launch {what}"), e))?;
    Ok(())
}

/// `set_at_in` on a copy of `acc` (when the accumulator is read again after the write).
#[allow(clippy::too_many_arguments)]
pub fn set_at<T: DeviceElem>(
    dev: &CudaDevice,
    f: &CudaFunction,
    what: &str,
    acc: &DeviceTensor<T>,
    v: &DeviceTensor<T>,
    axis: i64,
    i: i64,
) -> Result<DeviceTensor<T>> {
    let mut out = super::exec::copy(dev, acc)?;
    set_at_in(dev, f, what, &mut out, v, axis, i)?;
    Ok(out)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn flow_helpers() {
        assert_eq!(axis_split(&[2, 5, 3], 1, "t").unwrap(), (2, 5, 3));
        assert_eq!(axis_split(&[2, 5, 3], -1, "t").unwrap(), (10, 3, 1));
        assert_eq!(axis_split(&[4], 0, "t").unwrap(), (1, 4, 1));
        assert!(axis_split(&[2, 5], 2, "t").is_err());
        assert_eq!(norm_index(-1, 5, "t").unwrap(), 4);
        assert_eq!(norm_index(0, 5, "t").unwrap(), 0);
        assert!(norm_index(5, 5, "t").is_err());
        assert!(norm_index(-6, 5, "t").is_err());
        assert!(check_max_steps(2, 3, "m").is_ok());
        let e = check_max_steps(3, 3, "m").unwrap_err().to_string();
        assert!(
            e.contains("max_steps = 3") && e.contains("iteration 4"),
            "{e}"
        );
        let some: Option<u8> = Some(7);
        assert_eq!(*taken(&some, "x").unwrap(), 7);
        assert!(taken(&None::<u8>, "x").is_err());
        assert_eq!(host_tape_at(&[3i64, 4, 5], 2, "t").unwrap(), 5);
        assert!(host_tape_at(&[3i64], 1, "t").is_err());
        assert!(host_tape_at(&[3i64], -1, "t").is_err());
        assert_eq!(readbacks(), 0);
        let empty: Vec<DeviceTensor<f32>> = Vec::new();
        assert!(tape_at(&empty, 0, "t").is_err());
        assert!(tape_at(&empty, -1, "t").is_err());
    }
}
