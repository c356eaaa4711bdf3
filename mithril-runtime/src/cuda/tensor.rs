//! Tensors in device memory, with explicit host ↔ device copies.

use super::{dev_err, CudaDevice};
use crate::{Elem, Error, Result};
use cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use half::{bf16, f16};
use ndarray::{ArrayD, ArrayView, Dimension, IxDyn};

/// An element type that can live in device memory: `f32 f64 f16 bf16 i32 i64 bool`.
pub trait DeviceElem: Elem + DeviceRepr + ValidAsZeroBits {}
impl DeviceElem for f32 {}
impl DeviceElem for f64 {}
impl DeviceElem for f16 {}
impl DeviceElem for bf16 {}
impl DeviceElem for i32 {}
impl DeviceElem for i64 {}
impl DeviceElem for bool {}

/// A dense, row-major (C-order) tensor in the memory of one device, bound to that device's
/// stream. Copies are explicit: [`to_device`](Self::to_device) and [`to_host`](Self::to_host).
#[derive(Debug)]
pub struct DeviceTensor<T: DeviceElem> {
    // at least one element is allocated (CUDA rejects empty allocations); `shape` is the truth
    data: CudaSlice<T>,
    shape: Vec<usize>,
}

fn numel(shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Device(format!("tensor shape {shape:?} overflows usize")))
}

impl<T: DeviceElem> DeviceTensor<T> {
    /// Copy a host array (any layout; non-contiguous views are gathered in logical order) into
    /// new device memory.
    pub fn to_device<D: Dimension>(dev: &CudaDevice, a: &ArrayView<'_, T, D>) -> Result<Self> {
        let shape = a.shape().to_vec();
        let std = a.as_standard_layout();
        let host: &[T] = std
            .as_slice()
            .ok_or_else(|| Error::Device("internal: standard layout is not contiguous".into()))?;
        let data = if host.is_empty() {
            dev.stream()
                .alloc_zeros::<T>(1)
                .map_err(|e| dev_err("cuMemAlloc", e))?
        } else {
            dev.stream()
                .clone_htod(host)
                .map_err(|e| dev_err("copy to device", e))?
        };
        Ok(DeviceTensor { data, shape })
    }

    /// A zero-filled tensor of `shape`.
    pub fn zeros(dev: &CudaDevice, shape: &[usize]) -> Result<Self> {
        let n = numel(shape)?;
        let data = dev
            .stream()
            .alloc_zeros::<T>(n.max(1))
            .map_err(|e| dev_err("cuMemAlloc", e))?;
        Ok(DeviceTensor {
            data,
            shape: shape.to_vec(),
        })
    }

    /// Copy back to a new host array (waits for the stream's pending work).
    pub fn to_host(&self) -> Result<ArrayD<T>> {
        let n = self.len();
        let host = if n == 0 {
            Vec::new()
        } else {
            self.data
                .stream()
                .clone_dtoh(&self.data.slice(0..n))
                .map_err(|e| dev_err("copy to host", e))?
        };
        ArrayD::from_shape_vec(IxDyn(&self.shape), host)
            .map_err(|e| Error::Device(format!("internal: {e}")))
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same data under another shape with the same number of elements.
    pub fn reshape(self, shape: &[usize]) -> Result<Self> {
        if numel(shape)? != self.len() {
            return Err(Error::op(
                "reshape",
                format!("cannot view {:?} as {shape:?}", self.shape),
            ));
        }
        Ok(DeviceTensor {
            data: self.data,
            shape: shape.to_vec(),
        })
    }

    /// The device buffer (for kernel launches; it may hold one element more than
    /// [`len`](Self::len) when the tensor is empty).
    pub fn slice(&self) -> &CudaSlice<T> {
        &self.data
    }

    /// The device buffer, mutably.
    pub fn slice_mut(&mut self) -> &mut CudaSlice<T> {
        &mut self.data
    }
}
