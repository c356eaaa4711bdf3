//! Layout ops on the device (`layout.cu` of `mithril_kernels::cuda`): slices (Python / NumPy
//! basic indexing: ranges with any step, integer indices, new axes), their gradient (the slice
//! written into zeros), permutes (`transpose`), `concat` / `stack` and the gradient of a
//! `concat` part, and `arange`, with the CPU ops' semantics and error messages
//! (`mithril::rt::ops::slice_to`, `transpose_to`, `slice_backward_to`, `concat_to`,
//! `stack_to`, `concat_part_to`, `arange_to`).
//!
//! A slice and a permute are one geometry, [`Strided`]: the output's dims, the input stride
//! of each output axis (negative for a reversed range, 0 for a new axis) and the offset of the
//! first element. The host computes it ([`slice_geometry`], [`permute_geometry`]); the kernels
//! `mt_strided_gather_*` / `mt_strided_scatter_*` walk it (one thread per output element,
//! bit copies by element width). `concat` / `stack` are one scatter per part into the result
//! ([`concat_geometry`], [`stack_geometry`]); a part's gradient is a gather of its block. [`Strided::source`] is the kernels' index arithmetic on the
//! host, unit-tested against the CPU ops.

use super::launch::elementwise_config;
use super::nn::{launch, Longs};
use super::{CudaDevice, DeviceElem, DeviceTensor};
use crate::ops::shape::py_slice;
use crate::ops::SliceArg;
use crate::{DType, Error, Result};
use cudarc::driver::PushKernelArg;

/// The largest rank the strided kernels take (`MT_LAYOUT_MAX_RANK`).
pub const MAX_RANK: usize = 8;

fn fmt_shape(s: &[usize]) -> String {
    crate::ops::fmt_shape(s)
}

/// A strided view of a row-major tensor: output element `i` (row-major over `dims`) is input
/// element `offset + Σ_k idx_k(i) · strides[k]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Strided {
    /// The output's dims.
    pub dims: Vec<usize>,
    /// The input element of output element 0.
    pub offset: i64,
    /// The input stride (in elements) of each output axis.
    pub strides: Vec<i64>,
}

impl Strided {
    /// The number of output elements.
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }

    /// Whether the output is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input element output element `i` reads (`mt_strided_source`, the last axis
    /// fastest).
    pub fn source(&self, mut i: usize) -> usize {
        let mut src = self.offset;
        for (&d, &s) in self.dims.iter().zip(&self.strides).rev() {
            let (q, r) = (i / d.max(1), i % d.max(1));
            src += r as i64 * s;
            i = q;
        }
        src as usize
    }

    /// The kernels' `mt_strided` struct: `n, rank, offset, dims[8], strides[8]`.
    fn longs(&self, op: &str) -> Result<Longs<19>> {
        let rank = self.dims.len();
        if rank > MAX_RANK {
            return Err(Error::op(
                op,
                format!("rank {rank} on cuda (the layout kernels take at most {MAX_RANK} axes)"),
            ));
        }
        let big =
            |v: usize| i64::try_from(v).map_err(|_| Error::op(op, format!("size {v} exceeds i64")));
        let mut a = [0i64; 19];
        a[0] = big(self.len())?;
        a[1] = rank as i64;
        a[2] = self.offset;
        for k in 0..rank {
            a[3 + k] = big(self.dims[k])?;
            a[3 + MAX_RANK + k] = self.strides[k];
        }
        // unused axes: dims 1, so the index walk ignores them
        for k in rank..MAX_RANK {
            a[3 + k] = 1;
        }
        Ok(Longs(a))
    }
}

/// The row-major strides of `shape`.
fn row_major(shape: &[usize]) -> Vec<i64> {
    let mut s = vec![1i64; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1] as i64;
    }
    s
}

/// The geometry of `x[args...]` for `x` of shape `shape` (Python / NumPy basic indexing, the
/// CPU's `slice`): the same errors (a zero step, an index out of range, more indices than
/// axes).
pub fn slice_geometry(shape: &[usize], args: &[SliceArg]) -> Result<Strided> {
    const OP: &str = "slice";
    let consumed = args
        .iter()
        .filter(|s| !matches!(s, SliceArg::NewAxis))
        .count();
    if consumed > shape.len() {
        return Err(Error::op(
            OP,
            format!(
                "{consumed} indices given for an array of rank {} (shape {})",
                shape.len(),
                fmt_shape(shape)
            ),
        ));
    }
    let strides = row_major(shape);
    let (mut dims, mut out_strides, mut offset) = (Vec::new(), Vec::new(), 0i64);
    let mut axis = 0usize; // the input axis the next arg applies to
    for arg in args {
        match *arg {
            SliceArg::Range { start, end, step } => {
                if step == 0 {
                    return Err(Error::op(
                        OP,
                        format!("slice step cannot be zero (axis {axis})"),
                    ));
                }
                let (s, count) = py_slice(start, end, step, shape[axis]);
                if count > 0 {
                    offset += s as i64 * strides[axis];
                }
                dims.push(count as usize);
                out_strides.push(strides[axis] * step as i64);
                axis += 1;
            }
            SliceArg::Index(i) => {
                let j = crate::ops::shape::py_index(OP, i, shape[axis], axis, shape)?;
                offset += j as i64 * strides[axis];
                axis += 1;
            }
            SliceArg::NewAxis => {
                dims.push(1);
                out_strides.push(0);
            }
        }
    }
    dims.extend_from_slice(&shape[axis..]);
    out_strides.extend_from_slice(&strides[axis..]);
    Ok(Strided {
        dims,
        offset,
        strides: out_strides,
    })
}

/// The geometry of `transpose(x, perm)` (`perm` empty: the axes reversed), with the CPU's
/// error for a `perm` that is no permutation of the axes.
pub fn permute_geometry(shape: &[usize], perm: &[usize]) -> Result<Strided> {
    let nd = shape.len();
    let p: Vec<usize> = if perm.is_empty() {
        (0..nd).rev().collect()
    } else {
        perm.to_vec()
    };
    let mut seen = vec![false; nd];
    let valid = p.len() == nd
        && p.iter()
            .all(|&q| q < nd && !std::mem::replace(&mut seen[q], true));
    if !valid {
        return Err(Error::op(
            "transpose",
            format!(
                "{perm:?} is not a permutation of the {nd} axes of shape {}",
                fmt_shape(shape)
            ),
        ));
    }
    let strides = row_major(shape);
    Ok(Strided {
        dims: p.iter().map(|&q| shape[q]).collect(),
        offset: 0,
        strides: p.iter().map(|&q| strides[q]).collect(),
    })
}

/// The strided copy kernel for `T`'s width (`gather` or `scatter`).
fn copy_kernel<T: DeviceElem>(dev: &CudaDevice, op: &str) -> Result<cudarc::driver::CudaFunction> {
    let k = mithril_kernels::cuda::LAYOUT;
    match std::mem::size_of::<T>() {
        4 => dev.kernel(op, DType::F32),
        8 => dev.kernel(op, DType::F64),
        2 => dev.function("layout.cu", k, &format!("mt_{op}_u16")),
        _ => Err(Error::op(
            op,
            format!("no CUDA layout copy for {} elements", T::DTYPE.name()),
        )),
    }
}

/// The output of `geo` read from `x` (one launch).
pub fn strided_gather<T: DeviceElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    geo: &Strided,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "strided_gather";
    let mut y = DeviceTensor::<T>::zeros(dev, &geo.dims)?;
    if geo.is_empty() {
        return Ok(y);
    }
    let g = geo.longs(OP)?;
    let f = copy_kernel::<T>(dev, OP)?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&g).arg(x.slice()).arg(y.slice_mut());
    launch(OP, lb, elementwise_config(geo.len(), dev.sm_count()))?;
    Ok(y)
}

/// `x[args...]`: a new tensor (one launch), the CPU's `slice` semantics and errors.
pub fn slice<T: DeviceElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    args: &[SliceArg],
) -> Result<DeviceTensor<T>> {
    strided_gather(dev, x, &slice_geometry(x.shape(), args)?)
}

/// `transpose(x, perm)` (`perm` empty: the axes reversed): a new tensor (one launch).
pub fn transpose<T: DeviceElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    perm: &[usize],
) -> Result<DeviceTensor<T>> {
    strided_gather(dev, x, &permute_geometry(x.shape(), perm)?)
}

/// The gradient of `x[args...]` for `x` of shape `like`: zeros with `g` written at the
/// slice's positions (one launch after the zero fill; the positions are distinct, so each
/// element is written at most once).
pub fn slice_grad<T: DeviceElem>(
    dev: &CudaDevice,
    g: &DeviceTensor<T>,
    like: &[usize],
    args: &[SliceArg],
) -> Result<DeviceTensor<T>> {
    const OP: &str = "strided_scatter";
    let geo = slice_geometry(like, args)?;
    if geo.dims != g.shape() {
        return Err(Error::op(
            "slice_grad",
            format!(
                "the gradient has shape {}, the slice of {} has {}",
                fmt_shape(g.shape()),
                fmt_shape(like),
                fmt_shape(&geo.dims)
            ),
        ));
    }
    let mut x = DeviceTensor::<T>::zeros(dev, like)?;
    if geo.is_empty() {
        return Ok(x);
    }
    let a = geo.longs(OP)?;
    let f = copy_kernel::<T>(dev, OP)?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&a).arg(g.slice()).arg(x.slice_mut());
    launch(OP, lb, elementwise_config(geo.len(), dev.sm_count()))?;
    Ok(x)
}

/// The output shape of `concat(parts, axis)` and, for each part, the geometry that places it
/// (element `i` of the part, row-major, goes to output element `source(i)`): the CPU's
/// `concat` rules and errors (the same rank, the same dims outside `axis`).
pub fn concat_geometry(shapes: &[&[usize]], axis: isize) -> Result<(Vec<usize>, Vec<Strided>)> {
    const OP: &str = "concat";
    let Some(first) = shapes.first() else {
        return Err(Error::op(OP, "nothing to concatenate (no parts)"));
    };
    let nd = first.len();
    if nd == 0 {
        return Err(Error::op(OP, "cannot concatenate 0-D arrays"));
    }
    let ax = crate::ops::norm_axis(OP, axis, nd, first)?;
    let mut out = first.to_vec();
    out[ax] = 0;
    for p in shapes {
        let same = p.len() == nd
            && p.iter()
                .zip(first.iter())
                .enumerate()
                .all(|(i, (x, y))| i == ax || x == y);
        if !same {
            return Err(Error::op(
                OP,
                format!(
                    "shapes {} and {} differ outside axis {axis}",
                    fmt_shape(first),
                    fmt_shape(p)
                ),
            ));
        }
        out[ax] = out[ax]
            .checked_add(p[ax])
            .ok_or_else(|| Error::op(OP, "result is too large"))?;
    }
    crate::ops::checked_size(OP, &out)?;
    let strides = row_major(&out);
    let mut at = 0i64;
    let geos = shapes
        .iter()
        .map(|p| {
            let g = Strided {
                dims: p.to_vec(),
                offset: at * strides[ax],
                strides: strides.clone(),
            };
            at += p[ax] as i64;
            g
        })
        .collect();
    Ok((out, geos))
}

/// The output shape of `stack(parts, axis)` and, for each part, the geometry that places it
/// in the output (as [`concat_geometry`]): the CPU's `stack` rules and errors.
pub fn stack_geometry(shapes: &[&[usize]], axis: isize) -> Result<(Vec<usize>, Vec<Strided>)> {
    const OP: &str = "stack";
    let Some(first) = shapes.first() else {
        return Err(Error::op(OP, "nothing to stack (no parts)"));
    };
    for p in shapes {
        if p != first {
            return Err(Error::op(
                OP,
                format!(
                    "all parts need the same shape, got {} and {}",
                    fmt_shape(first),
                    fmt_shape(p)
                ),
            ));
        }
    }
    let ax = crate::ops::norm_axis(OP, axis, first.len() + 1, first)?;
    let mut out = first.to_vec();
    out.insert(ax, shapes.len());
    crate::ops::checked_size(OP, &out)?;
    let mut strides = row_major(&out);
    let step = strides.remove(ax);
    let geos = (0..shapes.len())
        .map(|k| Strided {
            dims: first.to_vec(),
            offset: k as i64 * step,
            strides: strides.clone(),
        })
        .collect();
    Ok((out, geos))
}

/// The geometry of part `k`'s gradient in `concat(parts, axis)`'s gradient of shape
/// `g_shape`: the block of `g` along `axis` that part `k` filled (the CPU's `concat_part`).
pub fn concat_part_geometry(
    g_shape: &[usize],
    part_shapes: &[&[usize]],
    axis: isize,
    k: usize,
) -> Result<Strided> {
    const OP: &str = "concat (gradient)";
    let ax = crate::ops::norm_axis(OP, axis, g_shape.len(), g_shape)?;
    let offset: usize = part_shapes
        .iter()
        .take(k)
        .map(|s| s.get(ax).copied().unwrap_or(0))
        .sum();
    let len = part_shapes
        .get(k)
        .and_then(|s| s.get(ax))
        .copied()
        .ok_or_else(|| Error::op(OP, "no such part"))?;
    if offset + len > g_shape[ax] {
        return Err(Error::op(OP, "parts do not fit the gradient"));
    }
    let strides = row_major(g_shape);
    let mut dims = g_shape.to_vec();
    dims[ax] = len;
    Ok(Strided {
        dims,
        offset: offset as i64 * strides[ax],
        strides,
    })
}

/// Writes the contiguous `y` at `geo`'s positions of `x` (one strided-scatter launch).
fn scatter_into<T: DeviceElem>(
    dev: &CudaDevice,
    y: &DeviceTensor<T>,
    x: &mut DeviceTensor<T>,
    geo: &Strided,
) -> Result<()> {
    const OP: &str = "strided_scatter";
    if geo.is_empty() {
        return Ok(());
    }
    let a = geo.longs(OP)?;
    let f = copy_kernel::<T>(dev, OP)?;
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&a).arg(y.slice()).arg(x.slice_mut());
    launch(OP, lb, elementwise_config(geo.len(), dev.sm_count()))
}

/// `concat(parts, axis)`: one strided-scatter launch per part into the result (the CPU's
/// semantics and errors; every dtype of 2, 4 or 8 bytes).
pub fn concat<T: DeviceElem>(
    dev: &CudaDevice,
    parts: &[&DeviceTensor<T>],
    axis: isize,
) -> Result<DeviceTensor<T>> {
    let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
    let (out, geos) = concat_geometry(&shapes, axis)?;
    let mut y = DeviceTensor::<T>::zeros(dev, &out)?;
    for (p, g) in parts.iter().zip(&geos) {
        scatter_into(dev, p, &mut y, g)?;
    }
    Ok(y)
}

/// `stack(parts, axis)`: one strided-scatter launch per part into the result (the CPU's
/// semantics and errors).
pub fn stack<T: DeviceElem>(
    dev: &CudaDevice,
    parts: &[&DeviceTensor<T>],
    axis: isize,
) -> Result<DeviceTensor<T>> {
    let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
    let (out, geos) = stack_geometry(&shapes, axis)?;
    let mut y = DeviceTensor::<T>::zeros(dev, &out)?;
    for (p, g) in parts.iter().zip(&geos) {
        scatter_into(dev, p, &mut y, g)?;
    }
    Ok(y)
}

/// The gradient of part `k` of `concat(parts, axis)` from the result's gradient `g`: its
/// block along `axis` (one strided-gather launch).
pub fn concat_part<T: DeviceElem>(
    dev: &CudaDevice,
    g: &DeviceTensor<T>,
    part_shapes: &[&[usize]],
    axis: isize,
    k: usize,
) -> Result<DeviceTensor<T>> {
    strided_gather(
        dev,
        g,
        &concat_part_geometry(g.shape(), part_shapes, axis, k)?,
    )
}

/// `len` values `start + i · step` (computed in f64, then converted as the CPU's `arange_to`):
/// f32, f64, i64, i32.
pub fn arange<T: DeviceElem>(
    dev: &CudaDevice,
    start: f64,
    step: f64,
    len: i64,
) -> Result<DeviceTensor<T>> {
    const OP: &str = "arange";
    let n = usize::try_from(len)
        .map_err(|_| Error::op(OP, format!("a length of {len} is not known at run time")))?;
    let mut y = DeviceTensor::<T>::zeros(dev, &[n])?;
    if n == 0 {
        return Ok(y);
    }
    let f = match T::DTYPE {
        DType::F32 | DType::F64 => dev.kernel(OP, T::DTYPE)?,
        DType::I64 | DType::I32 => dev.function(
            "layout.cu",
            mithril_kernels::cuda::LAYOUT,
            &format!("mt_arange_{}", T::DTYPE.name()),
        )?,
        t => {
            return Err(Error::op(
                OP,
                format!("no CUDA arange of {} (f32, f64, i64, i32)", t.name()),
            ))
        }
    };
    let mut lb = dev.stream().launch_builder(&f);
    lb.arg(&len).arg(&start).arg(&step).arg(y.slice_mut());
    launch(OP, lb, elementwise_config(n, dev.sm_count()))?;
    Ok(y)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use ndarray::{ArrayD, IxDyn};

    fn iota(shape: &[usize]) -> ArrayD<f64> {
        let n: usize = shape.iter().product();
        ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f64).collect()).unwrap()
    }

    fn r(start: Option<isize>, end: Option<isize>, step: isize) -> SliceArg {
        SliceArg::Range { start, end, step }
    }

    /// The strided gather's index arithmetic, run on the host over every output element,
    /// reads exactly what the CPU's `slice` returns: ranges with positive, negative and
    /// clipped bounds and steps on every axis, integer indices (negative ones too), new axes,
    /// empty slices; the errors are the CPU's.
    #[cfg_attr(test, test)]
    pub(crate) fn slice_geometry_is_the_cpus() {
        let shape = [3usize, 4, 5];
        let x = iota(&shape);
        let per_axis = [
            SliceArg::FULL,
            r(Some(1), None, 1),
            r(None, Some(-1), 1),
            r(Some(1), Some(3), 1),
            r(None, None, 2),
            r(None, None, -1),
            r(Some(-1), None, -2),
            r(Some(3), Some(0), -1),
            r(Some(10), Some(20), 1),
            r(Some(-10), Some(2), 1),
            r(Some(2), Some(2), 1),
            SliceArg::Index(0),
            SliceArg::Index(-1),
            SliceArg::Index(1),
        ];
        let mut cases: Vec<Vec<SliceArg>> = Vec::new();
        for axis in 0..3 {
            for a in per_axis {
                let mut args = vec![SliceArg::FULL; axis];
                args.push(a);
                cases.push(args);
            }
        }
        cases.push(vec![]);
        cases.push(vec![SliceArg::NewAxis]);
        cases.push(vec![SliceArg::FULL, SliceArg::NewAxis, r(None, None, -2)]);
        cases.push(vec![
            SliceArg::Index(2),
            SliceArg::NewAxis,
            SliceArg::Index(-2),
        ]);
        cases.push(vec![
            r(None, None, -1),
            r(Some(1), Some(4), 2),
            r(Some(4), Some(0), -3),
        ]);
        // the library's in-projection split: a column block of the last axis
        cases.push(vec![SliceArg::FULL, SliceArg::FULL, r(Some(2), Some(4), 1)]);
        for args in &cases {
            let want = crate::ops::slice(&x.view(), args).unwrap();
            let geo = slice_geometry(&shape, args).unwrap();
            assert_eq!(geo.dims, want.shape(), "{args:?}");
            let xd = x.as_slice().unwrap();
            let got: Vec<f64> = (0..geo.len()).map(|i| xd[geo.source(i)]).collect();
            assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{args:?}");
        }
        for bad in [
            vec![r(None, None, 0)],
            vec![SliceArg::Index(3)],
            vec![SliceArg::FULL, SliceArg::Index(-5)],
            vec![SliceArg::Index(0); 4],
        ] {
            let want = crate::ops::slice(&x.view(), &bad).unwrap_err().to_string();
            let got = slice_geometry(&shape, &bad).unwrap_err().to_string();
            assert_eq!(got, want, "{bad:?}");
        }
    }

    /// The scatter of the slice gradient (the same arithmetic, writing) writes each position
    /// of the slice exactly once and nothing else, and gives the CPU's `slice_backward`.
    #[cfg_attr(test, test)]
    pub(crate) fn slice_grad_writes_each_element_once() {
        let shape = [4usize, 3, 6];
        for args in [
            vec![SliceArg::FULL, SliceArg::FULL, r(Some(2), Some(4), 1)],
            vec![r(None, None, -1), SliceArg::Index(1), r(Some(5), None, -2)],
            vec![SliceArg::NewAxis, r(Some(1), Some(3), 1)],
            vec![SliceArg::FULL, r(Some(7), None, 1)],
        ] {
            let geo = slice_geometry(&shape, &args).unwrap();
            let g = iota(&geo.dims).mapv(|v| v + 1.0);
            let mut got = vec![0.0f64; shape.iter().product()];
            let mut hits = vec![0usize; got.len()];
            for (i, &v) in g.iter().enumerate() {
                let at = geo.source(i);
                got[at] = v;
                hits[at] += 1;
            }
            assert!(hits.iter().all(|&h| h <= 1), "{args:?}: written twice");
            assert_eq!(hits.iter().sum::<usize>(), geo.len(), "{args:?}");
            let like = ArrayD::<f64>::zeros(IxDyn(&shape));
            let want = crate::ops::slice_backward(&g.view(), &like.view(), &args).unwrap();
            assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{args:?}");
        }
    }

    /// The permute's arithmetic reads each input element exactly once and gives the CPU's
    /// `transpose` for every permutation of 4 axes (and the default reversal); a bad `perm` is
    /// the CPU's error.
    #[cfg_attr(test, test)]
    pub(crate) fn permute_geometry_is_the_cpus() {
        let shape = [2usize, 3, 4, 5];
        let x = iota(&shape);
        let xd = x.as_slice().unwrap();
        let mut perms: Vec<Vec<usize>> = vec![vec![]];
        for a in 0..4 {
            for b in 0..4 {
                for c in 0..4 {
                    for d in 0..4 {
                        let p = vec![a, b, c, d];
                        let mut s = p.clone();
                        s.sort_unstable();
                        if s == [0, 1, 2, 3] {
                            perms.push(p);
                        }
                    }
                }
            }
        }
        assert_eq!(perms.len(), 25);
        for p in &perms {
            let want = crate::ops::transpose(&x.view(), p).unwrap();
            let geo = permute_geometry(&shape, p).unwrap();
            assert_eq!(geo.dims, want.shape(), "{p:?}");
            let mut hits = vec![0usize; xd.len()];
            let got: Vec<f64> = (0..geo.len())
                .map(|i| {
                    hits[geo.source(i)] += 1;
                    xd[geo.source(i)]
                })
                .collect();
            assert!(hits.iter().all(|&h| h == 1), "{p:?}");
            assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{p:?}");
        }
        for bad in [vec![0usize, 1, 2], vec![0, 1, 1, 2], vec![0, 1, 2, 4]] {
            let want = crate::ops::transpose(&x.view(), &bad)
                .unwrap_err()
                .to_string();
            let got = permute_geometry(&shape, &bad).unwrap_err().to_string();
            assert_eq!(got, want, "{bad:?}");
        }
        // the kernels' struct: unused axes are 1s, a rank over 8 is an Err
        let l = permute_geometry(&shape, &[]).unwrap().longs("t").unwrap().0;
        assert_eq!(&l[..7], &[120, 4, 0, 5, 4, 3, 2]);
        assert_eq!(&l[7..11], &[1, 1, 1, 1]);
        assert!(permute_geometry(&[1; 9], &[]).unwrap().longs("t").is_err());
    }

    /// `concat` / `stack` placed by the scatter arithmetic on the host give the CPU's results
    /// (every axis, negative axes, parts of different lengths), write each output element
    /// exactly once, and `concat_part`'s gather reads each part back; the errors are the CPU's.
    #[cfg_attr(test, test)]
    pub(crate) fn concat_and_stack_geometry_are_the_cpus() {
        let place = |out: &[usize], geos: &[Strided], parts: &[ArrayD<f64>]| {
            let mut got = vec![f64::NAN; out.iter().product()];
            let mut hits = vec![0usize; got.len()];
            for (g, p) in geos.iter().zip(parts) {
                assert_eq!(g.dims, p.shape());
                for (i, &v) in p.iter().enumerate() {
                    got[g.source(i)] = v;
                    hits[g.source(i)] += 1;
                }
            }
            assert!(hits.iter().all(|&h| h == 1), "{out:?}");
            got
        };
        for axis in [-3isize, -2, -1, 0, 1, 2] {
            let ax = axis.rem_euclid(3) as usize;
            let parts: Vec<ArrayD<f64>> = [1usize, 3, 2]
                .iter()
                .enumerate()
                .map(|(k, &n)| {
                    let mut s = vec![2usize, 3, 4];
                    s[ax] = n;
                    iota(&s).mapv(|v| v + 100.0 * k as f64)
                })
                .collect();
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
            let want = crate::ops::concat(&views, axis).unwrap();
            let (out, geos) = concat_geometry(&shapes, axis).unwrap();
            assert_eq!(out, want.shape());
            let got = place(&out, &geos, &parts);
            assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{axis}");
            for (k, p) in parts.iter().enumerate() {
                let g = concat_part_geometry(&out, &shapes, axis, k).unwrap();
                let cpu = crate::ops::concat_part(&want.view(), &shapes, axis, k).unwrap();
                assert_eq!(g.dims, cpu.shape());
                let back: Vec<f64> = (0..g.len()).map(|i| got[g.source(i)]).collect();
                assert_eq!(back, p.iter().copied().collect::<Vec<_>>(), "{axis} {k}");
            }
        }
        for axis in [-4isize, -1, 0, 1, 2, 3] {
            let parts: Vec<ArrayD<f64>> = (0..3)
                .map(|k| iota(&[2, 3, 4]).mapv(|v| v + 100.0 * k as f64))
                .collect();
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
            let want = crate::ops::stack(&views, axis).unwrap();
            let (out, geos) = stack_geometry(&shapes, axis).unwrap();
            assert_eq!(out, want.shape());
            let got = place(&out, &geos, &parts);
            assert_eq!(got, want.iter().copied().collect::<Vec<_>>(), "{axis}");
        }
        // the errors: the CPU's messages
        let (a, b, c) = (iota(&[2, 3]), iota(&[2, 4]), iota(&[3]));
        for (parts, axis) in [
            (vec![a.view(), b.view()], 0isize),
            (vec![a.view(), c.view()], 1),
            (vec![a.view()], 2),
            (vec![], 0),
        ] {
            let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
            let want = crate::ops::concat(&parts, axis).unwrap_err().to_string();
            let got = concat_geometry(&shapes, axis).unwrap_err().to_string();
            assert_eq!(got, want);
        }
        for (parts, axis) in [
            (vec![a.view(), b.view()], 0isize),
            (vec![a.view()], 3),
            (vec![], 0),
        ] {
            let shapes: Vec<&[usize]> = parts.iter().map(|p| p.shape()).collect();
            let want = crate::ops::stack(&parts, axis).unwrap_err().to_string();
            let got = stack_geometry(&shapes, axis).unwrap_err().to_string();
            assert_eq!(got, want);
        }
        let zero = iota(&[]);
        let shapes: Vec<&[usize]> = vec![zero.shape()];
        assert_eq!(
            concat_geometry(&shapes, 0).unwrap_err().to_string(),
            crate::ops::concat(&[zero.view()], 0)
                .unwrap_err()
                .to_string()
        );
    }
}
