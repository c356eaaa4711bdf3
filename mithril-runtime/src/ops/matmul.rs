//! Matrix multiplication with NumPy `matmul` semantics.
//!
//! * `f32`/`f64`/`f16`/`bf16`: the packed, cache-blocked kernel GEMM of `mithril-kernels`
//!   (AVX-512 / AVX2 / scalar chosen at run time, GEMV and small-matrix paths, threads above a
//!   size threshold), which reads transposed and strided views in place; `f16`/`bf16` stay
//!   narrow in memory and accumulate in `f32` (`vdpbf16ps` where the CPU has AVX512_BF16);
//! * integers: a plain `i-k-j` loop with wrapping arithmetic.
//!
//! Nothing here allocates (the kernel's packing buffers are thread-local and reused), except a
//! standard-layout copy of an operand with a negative stride (a reversed view): the kernel reads
//! non-negative strides in place, and packing a reversed operand into a copy first makes the
//! result bitwise the same as for the same values stored contiguously (which is what a
//! `static_shapes` model computes).

use std::any::TypeId;

use ndarray::{
    ArrayD, ArrayView2, ArrayViewD, ArrayViewMut2, ArrayViewMutD, Axis, CowArray, Dimension, Ix2,
    IxDyn,
};

use super::{broadcast_dims, checked_size, fmt_shape};
use crate::prepack::{PackOf, PackedW};
use crate::scalar::Num;
use crate::{DType, Dest, Elem, Error, Result};
use mithril_kernels::ew::Src;

/// Matrix product of `a` and `b` with NumPy `matmul` semantics.
///
/// * `trans_a` / `trans_b` first swap the last two axes of that operand (ignored for a 1-D
///   operand);
/// * a 1-D `a` of length `k` acts as a `[1, k]` row and a 1-D `b` as a `[k, 1]` column; the
///   added axis is removed from the result (1-D @ 1-D is a 0-D dot product);
/// * leading (batch) axes broadcast against each other with NumPy rules:
///   `[2, 1, m, k] @ [3, k, n] -> [2, 3, m, n]`.
///
/// Fails when an operand is 0-D, when the inner dimensions differ or when the batch axes do
/// not broadcast; the error names both shapes.
pub fn matmul<T: Elem>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    trans_a: bool,
    trans_b: bool,
) -> Result<ArrayD<T>>
where
    T::Acc: Num,
{
    crate::owned(|d| matmul_to(a, b, trans_a, trans_b, d).map(|_| ()))
}

/// [`matmul`] into a destination.
pub fn matmul_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    trans_a: bool,
    trans_b: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Num,
{
    const OP: &str = "matmul";
    let (a_c, b_c) = (no_negative_strides(OP, a)?, no_negative_strides(OP, b)?);
    let (a_v, b_v) = (a_c.view(), b_c.view());
    let (a, b) = (&a_v, &b_v);
    let flags = match (trans_a, trans_b) {
        (false, false) => "",
        (true, false) => " (with trans_a)",
        (false, true) => " (with trans_b)",
        (true, true) => " (with trans_a, trans_b)",
    };
    if a.ndim() == 0 || b.ndim() == 0 {
        return Err(Error::op(
            OP,
            format!(
                "operands must have rank >= 1, got shapes {} and {}",
                fmt_shape(a.shape()),
                fmt_shape(b.shape())
            ),
        ));
    }
    let mut av = a.view();
    let mut bv = b.view();
    let (nda, ndb) = (av.ndim(), bv.ndim());
    if trans_a && nda >= 2 {
        av.swap_axes(nda - 2, nda - 1);
    }
    if trans_b && ndb >= 2 {
        bv.swap_axes(ndb - 2, ndb - 1);
    }
    let a_vec = nda == 1;
    let b_vec = ndb == 1;
    if a_vec {
        av = av.insert_axis(Axis(0));
    }
    if b_vec {
        bv = bv.insert_axis(Axis(1));
    }
    let (nda, ndb) = (av.ndim(), bv.ndim());
    let (m, k) = (av.shape()[nda - 2], av.shape()[nda - 1]);
    let (k2, n) = (bv.shape()[ndb - 2], bv.shape()[ndb - 1]);
    if k != k2 {
        return Err(Error::op(
            OP,
            format!(
                "inner dimensions differ: {} @ {}{flags} ({k} vs {k2})",
                fmt_shape(a.shape()),
                fmt_shape(b.shape())
            ),
        ));
    }
    let batch =
        broadcast_dims(OP, &[&av.shape()[..nda - 2], &bv.shape()[..ndb - 2]]).map_err(|_| {
            Error::op(
                OP,
                format!(
                    "batch dimensions of {} and {}{flags} do not broadcast",
                    fmt_shape(a.shape()),
                    fmt_shape(b.shape())
                ),
            )
        })?;
    let nbd = batch.ndim();
    let mut final_shape = IxDyn::zeros(nbd + usize::from(!a_vec) + usize::from(!b_vec));
    final_shape.slice_mut()[..nbd].copy_from_slice(batch.slice());
    let mut fi = nbd;
    if !a_vec {
        final_shape[fi] = m;
        fi += 1;
    }
    if !b_vec {
        final_shape[fi] = n;
    }
    // the batch dims come from two operands: their product may overflow
    let nb = checked_size(OP, batch.slice())?;
    checked_size(OP, &[nb, m, n])?;
    let mut out = dest.get(OP, final_shape.slice())?;
    if k == 0 || !is_gemm_type::<T>() {
        // the fallback loops accumulate into zeros; the kernel GEMM overwrites
        out.fill(T::default());
    }
    let reshape_err = |_| Error::op(OP, "internal reshape failed");

    if nb > 0 && m > 0 && n > 0 && k > 0 {
        let mut out3 = out
            .view_mut()
            .into_shape_with_order((nb, m, n))
            .map_err(reshape_err)?;
        if nbd == 0 {
            // Plain 2-D @ 2-D.
            let a2 = av
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(reshape_err)?;
            let b2 = bv
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(reshape_err)?;
            gemm2(&a2, &b2, out3.index_axis_mut(Axis(0), 0));
        } else if ndb == 2 && av.is_standard_layout() {
            // A batch of `a` against one shared `b` (a linear layer): one GEMM with the batch
            // folded into the rows.
            let a2 = av
                .view()
                .into_shape_with_order((nb * m, k))
                .map_err(reshape_err)?;
            let b2 = bv
                .view()
                .into_dimensionality::<Ix2>()
                .map_err(reshape_err)?;
            let c2 = out3
                .view_mut()
                .into_shape_with_order((nb * m, n))
                .map_err(reshape_err)?;
            gemm2(&a2, &b2, c2);
        } else {
            let mut ashape = IxDyn::zeros(nbd + 2);
            ashape.slice_mut()[..nbd].copy_from_slice(batch.slice());
            ashape[nbd] = m;
            ashape[nbd + 1] = k;
            let mut bshape = ashape.clone();
            bshape[nbd] = k;
            bshape[nbd + 1] = n;
            let ab = av.broadcast(ashape.clone()).ok_or_else(|| {
                Error::op(
                    OP,
                    format!(
                        "cannot broadcast {} to {}",
                        fmt_shape(av.shape()),
                        fmt_shape(ashape.slice())
                    ),
                )
            })?;
            let bb = bv.broadcast(bshape.clone()).ok_or_else(|| {
                Error::op(
                    OP,
                    format!(
                        "cannot broadcast {} to {}",
                        fmt_shape(bv.shape()),
                        fmt_shape(bshape.slice())
                    ),
                )
            })?;
            for (bi, idx) in ndarray::indices(batch.clone()).into_iter().enumerate() {
                let mut sa = ab.view();
                let mut sb = bb.view();
                for &i in idx.slice() {
                    sa = sa.index_axis_move(Axis(0), i);
                    sb = sb.index_axis_move(Axis(0), i);
                }
                let sa = sa.into_dimensionality::<Ix2>().map_err(reshape_err)?;
                let sb = sb.into_dimensionality::<Ix2>().map_err(reshape_err)?;
                gemm2(&sa, &sb, out3.index_axis_mut(Axis(0), bi));
            }
        }
    }
    Ok(out)
}

/// `a` itself, or a standard-layout copy of it (fallibly allocated) when one of its strides is
/// negative: the kernel GEMM reads only non-negative strides in place, and a copy keeps the
/// result independent of the layout (see the module docs).
fn no_negative_strides<'a, T: Elem>(
    op: &str,
    a: &'a ArrayViewD<'_, T>,
) -> Result<CowArray<'a, T, IxDyn>> {
    if a.strides().iter().all(|&s| s >= 0) {
        return Ok(CowArray::from(a.view()));
    }
    let mut v = crate::alloc::zeroed_vec::<T>(op, a.len())?;
    for (o, &x) in v.iter_mut().zip(a.iter()) {
        *o = x;
    }
    ArrayD::from_shape_vec(a.raw_dim(), v)
        .map(CowArray::from)
        .map_err(|e| Error::op(op, format!("internal: operand copy: {e}")))
}

/// `&ArrayView2<T>` as `&ArrayView2<U>` when `T` and `U` are the same type.
fn same_view<'b, 'a, T: 'static, U: 'static>(
    v: &'b ArrayView2<'a, T>,
) -> Option<&'b ArrayView2<'a, U>> {
    if TypeId::of::<T>() == TypeId::of::<U>() {
        // SAFETY: `T` and `U` are the same type (equal `TypeId`s of `'static` types), so
        // `ArrayView2<'a, T>` and `ArrayView2<'a, U>` are the same type as well.
        Some(unsafe { &*(v as *const ArrayView2<'a, T>).cast::<ArrayView2<'a, U>>() })
    } else {
        None
    }
}

/// `&mut ArrayViewMut2<T>` as `&mut ArrayViewMut2<U>` when `T` and `U` are the same type.
fn same_view_mut<'b, 'a, T: 'static, U: 'static>(
    v: &'b mut ArrayViewMut2<'a, T>,
) -> Option<&'b mut ArrayViewMut2<'a, U>> {
    if TypeId::of::<T>() == TypeId::of::<U>() {
        // SAFETY: as in `same_view`: the two types are identical.
        Some(unsafe { &mut *(v as *mut ArrayViewMut2<'a, T>).cast::<ArrayViewMut2<'a, U>>() })
    } else {
        None
    }
}

/// Whether `T` has a kernel GEMM (`f32`, `f64`, `f16`, `bf16`).
fn is_gemm_type<T: Elem>() -> bool {
    matches!(T::DTYPE, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
}

/// The elements a 2-D view with non-negative strides spans, as one slice starting at its first
/// element (`None` for negative strides).
fn span<'s, T>(v: &'s ArrayView2<'_, T>) -> Option<(&'s [T], usize, usize)> {
    let (r, c) = v.dim();
    let (rs, cs) = (v.strides()[0], v.strides()[1]);
    if rs < 0 || cs < 0 {
        return None;
    }
    let len = if r == 0 || c == 0 {
        0
    } else {
        (r - 1) * rs as usize + (c - 1) * cs as usize + 1
    };
    // SAFETY: every element of the view lies in `ptr .. ptr + len` (non-negative strides) and
    // the view's array owns or borrows all of that range.
    Some((
        unsafe { std::slice::from_raw_parts(v.as_ptr(), len) },
        rs as usize,
        cs as usize,
    ))
}

/// `c = a @ b` with the packed kernel GEMM of `mithril-kernels` (runtime-dispatched AVX-512 /
/// AVX2 / scalar; f16/bf16 stored narrow with f32 accumulation). `false` when the layout does
/// not fit it (negative strides, a non-row-major `c`).
fn kernel_gemm<G: mithril_kernels::gemm::GemmElem>(
    a: &ArrayView2<'_, G>,
    b: &ArrayView2<'_, G>,
    c: &mut ArrayViewMut2<'_, G>,
) -> bool {
    let Some(o) = operands(a, b, c) else {
        return false;
    };
    mithril_kernels::gemm::gemm_plain(
        o.m,
        o.n,
        o.k,
        <G::Acc as mithril_kernels::gemm::AccElem>::ONE,
        o.a,
        o.rsa,
        o.csa,
        o.b,
        o.rsb,
        o.csb,
        false,
        o.c,
        o.ldc,
    );
    true
}

/// The kernel GEMM's view of `c = a @ b`: dims, operand spans with their strides, and `c` as
/// a row-major slice.
struct Operands<'s, G> {
    m: usize,
    n: usize,
    k: usize,
    a: &'s [G],
    rsa: usize,
    csa: usize,
    b: &'s [G],
    rsb: usize,
    csb: usize,
    c: &'s mut [G],
    ldc: usize,
}

/// [`Operands`] of 2-D views, or `None` when the layout does not fit the kernel (negative
/// strides, a `c` whose rows are not contiguous).
fn operands<'s, G>(
    a: &'s ArrayView2<'_, G>,
    b: &'s ArrayView2<'_, G>,
    c: &'s mut ArrayViewMut2<'_, G>,
) -> Option<Operands<'s, G>> {
    let (m, k) = a.dim();
    let n = b.dim().1;
    let ((sa, rsa, csa), (sb, rsb, csb)) = (span(a)?, span(b)?);
    let ldc = c.strides()[0];
    if c.strides()[1] != 1 && n > 1 || ldc < 0 {
        return None;
    }
    let cs = c.as_slice_memory_order_mut()?;
    Some(Operands {
        m,
        n,
        k,
        a: sa,
        rsa,
        csa,
        b: sb,
        rsb,
        csb,
        c: cs,
        ldc: (ldc as usize).max(n),
    })
}

/// `c = a @ b` for 2-D views (shapes already checked; `c` starts zeroed unless the type has a
/// kernel GEMM, which overwrites it).
fn gemm2<T: Elem>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>, mut c: ArrayViewMut2<'_, T>)
where
    T::Acc: Num,
{
    macro_rules! kernel {
        ($t:ty) => {
            if let (Some(a), Some(b), Some(c)) = (
                same_view::<T, $t>(a),
                same_view::<T, $t>(b),
                same_view_mut::<T, $t>(&mut c),
            ) {
                if kernel_gemm(a, b, c) {
                    return;
                }
                c.fill(<$t>::default());
                naive_gemm(a, b, c.view_mut());
                return;
            }
        };
    }
    kernel!(f32);
    kernel!(f64);
    kernel!(half::f16);
    kernel!(half::bf16);
    naive_gemm(a, b, c);
}

/// `c = a @ b` by an `i-k-j` loop in `T::Acc` (wrapping for integers).
fn naive_gemm<T: Elem>(a: &ArrayView2<'_, T>, b: &ArrayView2<'_, T>, mut c: ArrayViewMut2<'_, T>)
where
    T::Acc: Num,
{
    // Columns in blocks of 64 accumulated on the stack (no allocation).
    const NB: usize = 64;
    let n = b.ncols();
    for (arow, mut crow) in a.outer_iter().zip(c.outer_iter_mut()) {
        for j0 in (0..n).step_by(NB) {
            let w = NB.min(n - j0);
            let mut acc = [<T::Acc as Num>::ZERO; NB];
            for (&aip, brow) in arow.iter().zip(b.outer_iter()) {
                let aip = aip.to_acc();
                for (o, &x) in acc[..w]
                    .iter_mut()
                    .zip(brow.slice(ndarray::s![j0..j0 + w]).iter())
                {
                    *o = o.add(aip.mul(x.to_acc()));
                }
            }
            for (o, &v) in crow
                .slice_mut(ndarray::s![j0..j0 + w])
                .iter_mut()
                .zip(&acc[..w])
            {
                *o = T::from_acc(v);
            }
        }
    }
}

/// The type-erased epilogue handed to the kernel GEMM.
type Epilogue<'a, A> = dyn Fn(usize, usize, &mut [A]) + Sync + 'a;

/// A raw pointer with its 2-D strides, readable from the GEMM's epilogue threads.
#[derive(Clone, Copy)]
pub(crate) struct Strided<T> {
    pub(crate) ptr: *const T,
    pub(crate) rs: usize,
    pub(crate) cs: usize,
}

// SAFETY: only read, while the borrowed views it comes from are alive (inside one call).
unsafe impl<T> Sync for Strided<T> {}
unsafe impl<T> Send for Strided<T> {}

/// `out = f(a @ b, others...)` for 2-D operands: the product with an elementwise epilogue
/// (`others` broadcast to the product's shape), applied by the kernel GEMM to each tile while it
/// is hot — a `Linear` + bias + activation is one pass over the output. Other ranks and
/// element types run the product first and the epilogue over the result.
///
/// `seg(v, srcs)` applies the epilogue to one finished row segment: `v` holds the accumulator
/// values of `C(i, j0..j0 + v.len())` and is rewritten in place; `srcs[q]` reads operand `q` at
/// the same positions (`Full` over the segment, `Scalar` when the operand is constant along the
/// row). The compiler emits `seg` as one call of a multiversioned `ew` in-place driver, so the
/// epilogue is vectorized with the CPU's widest instructions. It must round the product to `T`
/// first (as the unfused graph would store it) and return the result widened again.
pub fn matmul_epi_to<'w, T: Elem, const K: usize>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    trans_a: bool,
    trans_b: bool,
    others: [&ArrayViewD<'_, T>; K],
    dest: Dest<'w, T>,
    seg: impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Num,
{
    const OP: &str = "matmul";
    let (a_c, b_c) = (no_negative_strides(OP, a)?, no_negative_strides(OP, b)?);
    let (a_v, b_v) = (a_c.view(), b_c.view());
    let (a, b) = (&a_v, &b_v);
    let fallback = |dest: Dest<'w, T>| -> Result<ArrayViewMutD<'w, T>> {
        let mut out = matmul_to(a, b, trans_a, trans_b, dest)?;
        if out.ndim() == 2 {
            let (m, n) = (out.shape()[0], out.shape()[1]);
            if let Some(ptrs) = epilogue_operands(&others, m, n)? {
                crate::alloc::check(OP, out.len(), std::mem::size_of::<T>())?;
                let prod = out.to_owned();
                fallback_into(&mut out, &prod, &ptrs, &seg);
                return Ok(out);
            }
        }
        // other ranks: element by element through one-element segments
        let shape = out.raw_dim();
        let mut bs: [Option<ArrayViewD<'_, T>>; K] = [const { None }; K];
        for (q, o) in others.iter().enumerate() {
            bs[q] = Some(o.broadcast(shape.clone()).ok_or_else(|| {
                Error::op(
                    OP,
                    format!(
                        "epilogue operand {} does not broadcast to {}",
                        fmt_shape(o.shape()),
                        fmt_shape(shape.slice())
                    ),
                )
            })?);
        }
        for (idx, x) in out.indexed_iter_mut() {
            let srcs: [Src<'_, T>; K] = std::array::from_fn(|q| match &bs[q] {
                Some(bq) => Src::Scalar(bq[&idx]),
                None => Src::Scalar(T::default()),
            });
            let mut v = [x.to_acc()];
            seg(&mut v, srcs);
            *x = T::from_acc(v[0]);
        }
        Ok(out)
    };
    // an `a` of rank > 2 whose leading axes merge into rows: one 2-D product
    let dest = if a.ndim() > 2 {
        match matmul_epi_2d_to(a, b, trans_a, trans_b, others, dest, &seg) {
            Ok(r) => return r,
            Err(d) => d,
        }
    } else {
        dest
    };
    if a.ndim() != 2 || b.ndim() != 2 || !is_gemm_type::<T>() {
        return fallback(dest);
    }
    let mut av = a
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|e| Error::op(OP, e.to_string()))?;
    let mut bv = b
        .view()
        .into_dimensionality::<Ix2>()
        .map_err(|e| Error::op(OP, e.to_string()))?;
    if trans_a {
        av.swap_axes(0, 1);
    }
    if trans_b {
        bv.swap_axes(0, 1);
    }
    let ((m, k), (k2, n)) = (av.dim(), bv.dim());
    if k != k2 {
        return Err(Error::op(
            OP,
            format!(
                "inner dimensions differ: {} @ {} ({k} vs {k2})",
                fmt_shape(a.shape()),
                fmt_shape(b.shape())
            ),
        ));
    }
    let Some(ptrs) = epilogue_operands(&others, m, n)? else {
        return fallback(dest);
    };
    let mut out = dest.get(OP, &[m, n])?;
    if m == 0 || n == 0 {
        return Ok(out);
    }
    let mut o2 = out
        .view_mut()
        .into_dimensionality::<Ix2>()
        .map_err(|e| Error::op(OP, e.to_string()))?;
    macro_rules! kernel {
        ($t:ty) => {
            if let (Some(a2), Some(b2), Some(c2)) = (
                same_view::<T, $t>(&av),
                same_view::<T, $t>(&bv),
                same_view_mut::<T, $t>(&mut o2),
            ) {
                if epi_gemm::<T, $t, K>(a2, b2, c2, &ptrs, &seg) {
                    return Ok(out);
                }
            }
        };
    }
    kernel!(f32);
    kernel!(f64);
    kernel!(half::f16);
    kernel!(half::bf16);
    // layouts the kernel does not take: product, then the epilogue
    let prod = crate::owned(|d| matmul_to(a, b, trans_a, trans_b, d).map(|_| ()))?;
    fallback_into(&mut out, &prod, &ptrs, &seg);
    Ok(out)
}

/// [`matmul_epi_to`] for its common case, without the general layout handling (what a fused
/// matmul of a compiled plan calls first): 2-D operands of a kernel GEMM type with non-negative
/// strides, epilogue operands that broadcast to the product. An `a` of rank `r > 2` (without
/// `trans_a`) times a 2-D `b` — a `Linear` over `[B, S, IN]` — is one 2-D product when `a`'s
/// leading axes merge into rows (one row stride, as in any contiguous tensor): the result
/// `[.., m, n]` is then written as `[B·S, n]`, and an epilogue operand must either repeat over
/// all the leading axes (a bias) or span them with rows that merge the same way (a residual).
/// Gives `dest` back untouched (`Err`) for any other case, which [`matmul_epi_to`] then takes —
/// including every error. The result is bitwise that of [`matmul_epi_to`]: the same GEMM call
/// and the same epilogue over the same values.
#[allow(clippy::type_complexity)]
pub fn matmul_epi_2d_to<'w, T: Elem, const K: usize>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    trans_a: bool,
    trans_b: bool,
    others: [&ArrayViewD<'_, T>; K],
    dest: Dest<'w, T>,
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
) -> std::result::Result<Result<ArrayViewMutD<'w, T>>, Dest<'w, T>>
where
    T::Acc: Num,
{
    matmul_epi_2d_impl(a, b, trans_a, trans_b, others, dest, seg, false, None)
}

/// [`matmul_epi_2d_to`] with `b` possibly prepacked (`pre`, prepared params): bitwise the
/// same result (the GEMM reads the pack only where it fits the call).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn matmul_epi_2d_pre_to<'w, T: Elem, const K: usize>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    trans_a: bool,
    trans_b: bool,
    others: [&ArrayViewD<'_, T>; K],
    dest: Dest<'w, T>,
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
    pre: Option<&PackedW>,
) -> std::result::Result<Result<ArrayViewMutD<'w, T>>, Dest<'w, T>>
where
    T::Acc: Num,
{
    matmul_epi_2d_impl(a, b, trans_a, trans_b, others, dest, seg, false, pre)
}

/// [`matmul_to`] with `b` prepacked (prepared params): bitwise its result. The layouts
/// [`matmul_to`] runs as one GEMM with `b` as is (a 2-D `a`, or a standard-layout one of
/// higher rank with its leading axes folded into rows, against a 2-D `b`) make the same
/// kernel call with the pack; every other case is [`matmul_to`] itself.
pub(crate) fn matmul_prepacked_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    trans_a: bool,
    trans_b: bool,
    dest: Dest<'w, T>,
    pre: &PackedW,
) -> Result<ArrayViewMutD<'w, T>>
where
    T::Acc: Num,
{
    if a.ndim() > 2 && !a.is_standard_layout() {
        return matmul_to(a, b, trans_a, trans_b, dest);
    }
    let seg = |_: &mut [T::Acc], _: [Src<'_, T>; 0]| {};
    match matmul_epi_2d_impl(a, b, trans_a, trans_b, [], dest, &seg, true, Some(pre)) {
        Ok(r) => r,
        Err(d) => matmul_to(a, b, trans_a, trans_b, d),
    }
}

/// [`matmul_epi_2d_to`], plain (no epilogue: `seg` unused, [`matmul_to`]'s kernel call) or
/// not, with `b` possibly prepacked.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn matmul_epi_2d_impl<'w, T: Elem, const K: usize>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    trans_a: bool,
    trans_b: bool,
    others: [&ArrayViewD<'_, T>; K],
    dest: Dest<'w, T>,
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
    plain: bool,
    pre: Option<&PackedW>,
) -> std::result::Result<Result<ArrayViewMutD<'w, T>>, Dest<'w, T>>
where
    T::Acc: Num,
{
    const OP: &str = "matmul";
    let r = a.ndim();
    if r < 2 || (r > 2 && trans_a) || b.ndim() != 2 || !is_gemm_type::<T>() {
        return Err(dest);
    }
    // (rows, cols, row stride, col stride) as the product reads it
    let dims = |v: &ArrayViewD<'_, T>, t: bool| -> Option<(usize, usize, usize, usize)> {
        let (sh, st) = (v.shape(), v.strides());
        let (r, c, rs, cs) = if t {
            (sh[1], sh[0], st[1], st[0])
        } else {
            let (rows, rs) = merged_rows(&sh[..sh.len() - 1], &st[..st.len() - 1])?;
            (rows, sh[sh.len() - 1], rs, st[st.len() - 1])
        };
        (rs >= 0 && cs >= 0).then_some((r, c, rs as usize, cs as usize))
    };
    let (Some((m, k, rsa, csa)), Some((k2, n, rsb, csb))) = (dims(a, trans_a), dims(b, trans_b))
    else {
        return Err(dest);
    };
    if k != k2 {
        return Err(dest);
    }
    // the result's shape: `a`'s leading axes (`[m]` for a 2-D `a`, transposed or not), then `n`
    let mut lead: SmallDims = SmallDims::new();
    if r == 2 {
        lead.push(m);
    } else {
        lead.extend_from_slice(&a.shape()[..r - 1]);
    }
    let mut out_shape = lead.clone();
    out_shape.push(n);
    let mut ptrs = [Strided {
        ptr: std::ptr::null::<T>(),
        rs: 0,
        cs: 0,
    }; K];
    for (p, o) in ptrs.iter_mut().zip(others.iter()) {
        let (sh, st) = (o.shape(), o.strides());
        if st.iter().any(|&s| s < 0) {
            return Err(dest);
        }
        // the stride of a dim of extent `d` broadcast to `want`
        let axis = |d: usize, s: isize, want: usize| -> Option<usize> {
            if d == want {
                Some(s as usize)
            } else if d == 1 {
                Some(0)
            } else {
                None
            }
        };
        // the row stride: 0 when the operand repeats over every leading axis of the result,
        // else its leading axes must be the result's and merge into rows
        let q = sh.len();
        let (rs, cs) = match q {
            0 => (Some(0), Some(0)),
            _ if q > r => (None, None),
            _ => {
                let (osh, ost) = (&sh[..q - 1], &st[..q - 1]);
                let rs = if osh.iter().all(|&d| d == 1) {
                    Some(0)
                } else if *osh == lead[r - q..] && lead[..r - q].iter().all(|&d| d == 1) {
                    merged_rows(osh, ost).and_then(|(_, s)| usize::try_from(s).ok())
                } else {
                    None
                };
                (rs, axis(sh[q - 1], st[q - 1], n))
            }
        };
        let (Some(rs), Some(cs)) = (rs, cs) else {
            return Err(dest);
        };
        *p = Strided {
            ptr: o.as_ptr(),
            rs,
            cs,
        };
    }
    let span = |p: *const T, r: usize, c: usize, rs: usize, cs: usize| -> &[T] {
        let len = if r == 0 || c == 0 {
            0
        } else {
            (r - 1) * rs + (c - 1) * cs + 1
        };
        // SAFETY: every element of the view lies in `p .. p + len` (non-negative strides) and
        // the view borrows all of that range.
        unsafe { std::slice::from_raw_parts(p, len) }
    };
    let (sa, sb) = (
        span(a.as_ptr(), m, k, rsa, csa),
        span(b.as_ptr(), k, n, rsb, csb),
    );
    Ok((|| {
        let mut out = dest.get(OP, &out_shape)?;
        if m == 0 || n == 0 {
            return Ok(out);
        }
        let sc = out
            .as_slice_mut()
            .ok_or_else(|| Error::op(OP, "internal: destination not contiguous"))?;
        gemm_epi_raw(
            plain,
            m,
            n,
            k,
            (sa, rsa, csa),
            (sb, rsb, csb),
            sc,
            &ptrs,
            seg,
            pre,
        )?;
        Ok(out)
    })())
}

/// A row-major `C[m, n]` (row stride `n`) = `seg`(`A[m, k]` · `B[k, n]`) by the kernel GEMM:
/// the core of [`matmul_epi_2d_to`] on raw slices (`(slice, row stride, col stride)` of `A`
/// and `B`; every element in range, non-negative strides), shared with the plans' product
/// chains (`plan::chain`) so that both give bitwise the same result. `ptrs` are the epilogue
/// operands broadcast to `[m, n]`. `plain`: no epilogue at all (`seg` unused), the kernel
/// call of [`matmul_to`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_epi_raw<T: Elem, const K: usize>(
    plain: bool,
    m: usize,
    n: usize,
    k: usize,
    (sa, rsa, csa): (&[T], usize, usize),
    (sb, rsb, csb): (&[T], usize, usize),
    sc: &mut [T],
    ptrs: &[Strided<T>; K],
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
    pre: Option<&PackedW>,
) -> Result<()>
where
    T::Acc: Num,
{
    const OP: &str = "matmul";
    if m == 0 || n == 0 {
        return Ok(());
    }
    if sa.len() < span_len(m, k, rsa, csa)
        || sb.len() < span_len(k, n, rsb, csb)
        || sc.len() < m * n
    {
        return Err(Error::op(OP, "internal: an operand shorter than its shape"));
    }
    macro_rules! kernel {
        ($t:ty) => {
            if TypeId::of::<T>() == TypeId::of::<$t>() {
                type Acc = <$t as mithril_kernels::gemm::GemmElem>::Acc;
                // SAFETY: `T` is `$t` (equal `TypeId`s), and so are their accumulators.
                let (sa, sb, sc) = unsafe {
                    (
                        std::slice::from_raw_parts(sa.as_ptr() as *const $t, sa.len()),
                        std::slice::from_raw_parts(sb.as_ptr() as *const $t, sb.len()),
                        std::slice::from_raw_parts_mut(sc.as_mut_ptr() as *mut $t, sc.len()),
                    )
                };
                let epi = |i: usize, j0: usize, v: &mut [Acc]| {
                    // SAFETY: as above; the pointers describe [m, n] broadcast views and
                    // (i, j0..) is inside C.
                    unsafe {
                        let v: &mut [T::Acc] =
                            std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T::Acc, v.len());
                        apply_segment(i, j0, v, ptrs, seg);
                    }
                };
                let one = <Acc as mithril_kernels::gemm::AccElem>::ONE;
                let pre = pre.and_then(<$t as PackOf>::of);
                if plain {
                    match pre {
                        Some(p) => mithril_kernels::gemm::gemm_plain_prepacked(
                            m, n, k, one, sa, rsa, csa, sb, rsb, csb, p, false, sc, n,
                        ),
                        None => mithril_kernels::gemm::gemm_plain(
                            m, n, k, one, sa, rsa, csa, sb, rsb, csb, false, sc, n,
                        ),
                    }
                    return Ok(());
                }
                // the same instantiation as `epi_gemm`'s
                let epi: &Epilogue<'_, Acc> = &epi;
                if let Some(p) = pre {
                    mithril_kernels::gemm::gemm_prepacked(
                        m, n, k, one, sa, rsa, csa, sb, rsb, csb, p, false, sc, n, epi,
                    );
                    return Ok(());
                }
                mithril_kernels::gemm::gemm(
                    m,
                    n,
                    k,
                    <Acc as mithril_kernels::gemm::AccElem>::ONE,
                    sa,
                    rsa,
                    csa,
                    sb,
                    rsb,
                    csb,
                    false,
                    sc,
                    n,
                    epi,
                );
                return Ok(());
            }
        };
    }
    kernel!(f32);
    kernel!(f64);
    kernel!(half::f16);
    kernel!(half::bf16);
    Err(Error::op(OP, "internal: no kernel GEMM for the type"))
}

/// The number of elements a `[r, c]` view with non-negative strides `(rs, cs)` spans.
pub(crate) fn span_len(r: usize, c: usize, rs: usize, cs: usize) -> usize {
    if r == 0 || c == 0 {
        0
    } else {
        (r - 1) * rs + (c - 1) * cs + 1
    }
}

/// A result shape on the stack (a matmul's rank is small).
type SmallDims = smallvec::SmallVec<[usize; 6]>;

/// The row count and row stride of the axes `sh` (strides `st`) read as one axis of rows: the
/// product of the extents, and the stride of the innermost axis longer than 1 (without one,
/// the innermost axis's stride, or 0 for no axes); `None` when the axes do not merge (an outer
/// axis's stride is not the inner's times its extent, as in a transposed or sliced view).
fn merged_rows(sh: &[usize], st: &[isize]) -> Option<(usize, isize)> {
    let innermost = st.last().copied().unwrap_or(0);
    if sh.contains(&0) {
        return Some((0, innermost));
    }
    let (mut rows, mut rs, mut next) = (1usize, innermost, None);
    for (&d, &s) in sh.iter().zip(st).rev() {
        if d == 1 {
            continue;
        }
        match next {
            None => rs = s,
            Some(e) if e != s => return None,
            Some(_) => {}
        }
        rows = rows.checked_mul(d)?;
        next = Some(s.checked_mul(d as isize)?);
    }
    Some((rows, rs))
}

/// The epilogue operands broadcast to `[m, n]` as pointers with element strides; `None` when
/// one has a negative stride (the caller then takes the slow path).
fn epilogue_operands<T: Elem, const K: usize>(
    others: &[&ArrayViewD<'_, T>; K],
    m: usize,
    n: usize,
) -> Result<Option<[Strided<T>; K]>> {
    let mut ptrs = [Strided {
        ptr: std::ptr::null::<T>(),
        rs: 0,
        cs: 0,
    }; K];
    for (p, o) in ptrs.iter_mut().zip(others.iter()) {
        let bq = o.broadcast((m, n)).ok_or_else(|| {
            Error::op(
                "matmul",
                format!(
                    "epilogue operand {} does not broadcast to [{m}, {n}]",
                    fmt_shape(o.shape())
                ),
            )
        })?;
        let (rs, cs) = (bq.strides()[0], bq.strides()[1]);
        if rs < 0 || cs < 0 {
            return Ok(None);
        }
        *p = Strided {
            ptr: bq.as_ptr(),
            rs: rs as usize,
            cs: cs as usize,
        };
    }
    Ok(Some(ptrs))
}

/// Longest segment gathered on the stack when an operand is strided along the row.
const SEG: usize = 64;

/// Applies `seg` to `v` = `C(i, j0..j0 + v.len())`, building each operand's source: a slice of
/// it when it is contiguous along the row, its value when it is constant along the row, else
/// gathered chunk by chunk into a stack buffer.
///
/// # Safety
/// Every `ptrs[q]` must be readable at `(i, j)` for `j` in `j0..j0 + v.len()`.
#[inline]
unsafe fn apply_segment<T: Elem, const K: usize>(
    i: usize,
    j0: usize,
    v: &mut [T::Acc],
    ptrs: &[Strided<T>; K],
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
) {
    if ptrs.iter().all(|p| p.cs <= 1) {
        let srcs: [Src<'_, T>; K] = std::array::from_fn(|q| {
            let p = ptrs[q];
            let base = p.ptr.add(i * p.rs + j0 * p.cs);
            if p.cs == 0 {
                Src::Scalar(*base)
            } else {
                Src::Full(std::slice::from_raw_parts(base, v.len()))
            }
        });
        seg(v, srcs);
        return;
    }
    let mut bufs = [[T::default(); SEG]; K];
    let mut t0 = 0;
    while t0 < v.len() {
        let len = SEG.min(v.len() - t0);
        for (buf, p) in bufs.iter_mut().zip(ptrs) {
            for (t, x) in buf[..len].iter_mut().enumerate() {
                *x = *p.ptr.add(i * p.rs + (j0 + t0 + t) * p.cs);
            }
        }
        let srcs: [Src<'_, T>; K] = std::array::from_fn(|q| Src::Full(&bufs[q][..len]));
        seg(&mut v[t0..t0 + len], srcs);
        t0 += len;
    }
}

/// `out[i, j] = epilogue(prod[i, j], others at (i, j))` for 2-D `out` and `prod`, row by row
/// through `seg` in chunks of [`SEG`].
fn fallback_into<T: Elem, const K: usize>(
    out: &mut ArrayViewMutD<'_, T>,
    prod: &ArrayD<T>,
    ptrs: &[Strided<T>; K],
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
) {
    let n = out.shape().get(1).copied().unwrap_or(1);
    let mut acc = [T::default().to_acc(); SEG];
    for (i, (mut orow, prow)) in out.rows_mut().into_iter().zip(prod.rows()).enumerate() {
        let mut j0 = 0;
        while j0 < n {
            let len = SEG.min(n - j0);
            for t in 0..len {
                acc[t] = prow[j0 + t].to_acc();
            }
            // SAFETY: the pointers describe [m, n] broadcast views (epilogue_operands).
            unsafe { apply_segment(i, j0, &mut acc[..len], ptrs, seg) };
            for t in 0..len {
                orow[j0 + t] = T::from_acc(acc[t]);
            }
            j0 += len;
        }
    }
}

/// The kernel GEMM with `seg` as its epilogue. `G` is `T` (checked by the caller through
/// `same_view`), named concretely so its accumulator type is known.
fn epi_gemm<T: Elem, G, const K: usize>(
    a: &ArrayView2<'_, G>,
    b: &ArrayView2<'_, G>,
    c: &mut ArrayViewMut2<'_, G>,
    ptrs: &[Strided<T>; K],
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
) -> bool
where
    G: mithril_kernels::gemm::GemmElem + Elem<Acc = <G as mithril_kernels::gemm::GemmElem>::Acc>,
{
    debug_assert_eq!(TypeId::of::<T>(), TypeId::of::<G>());
    let Some(o) = operands(a, b, c) else {
        return false;
    };
    let epi = |i: usize, j0: usize, v: &mut [<G as mithril_kernels::gemm::GemmElem>::Acc]| {
        // SAFETY: `T` and `G` are the same type (checked by the caller), so are their
        // accumulators; the pointers describe [m, n] views and (i, j0..) is inside C.
        unsafe {
            let v: &mut [T::Acc] =
                std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T::Acc, v.len());
            apply_segment(i, j0, v, ptrs, seg);
        }
    };
    // One GEMM instantiation per element type for every epilogue of every model: the epilogue
    // is called once per finished row segment of a tile, so the indirect call costs a few
    // percent at most, while a generic epilogue would compile the whole GEMM (every ISA and
    // path) again for each fused matmul of each model.
    let epi: &Epilogue<'_, <G as mithril_kernels::gemm::GemmElem>::Acc> = &epi;
    mithril_kernels::gemm::gemm(
        o.m,
        o.n,
        o.k,
        <<G as mithril_kernels::gemm::GemmElem>::Acc as mithril_kernels::gemm::AccElem>::ONE,
        o.a,
        o.rsa,
        o.csa,
        o.b,
        o.rsb,
        o.csb,
        false,
        o.c,
        o.ldc,
        epi,
    );
    true
}

thread_local! {
    /// The quantized activations and column scales of [`qmatmul_epi_to`], grown, never shrunk.
    static QBUF: std::cell::RefCell<(Vec<u8>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The int8 form of [`matmul_epi_2d_to`] for a 2-D f32 `a` (not transposed) times a quantized
/// weight: `a` quantized per tensor (with the weight's static scale, or a dynamic one from
/// `max |a|`), the `u8 × i8` GEMM with `i32` sums dequantized in its store
/// ([`mithril_kernels::qgemm`]), then `seg` with the epilogue operands on each finished row, as
/// in the f32 form. `Err` (an internal error) when `a` is not 2-D or its `k` is not the
/// weight's.
pub fn qmatmul_epi_to<'w, T: Elem, const K: usize>(
    a: &ArrayViewD<'_, T>,
    w: &crate::quant::QWeight,
    others: [&ArrayViewD<'_, T>; K],
    dest: Dest<'w, T>,
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "matmul";
    if TypeId::of::<T>() != TypeId::of::<f32>() {
        return Err(Error::op(
            OP,
            "internal: an int8 product of a non-f32 operand",
        ));
    }
    let b = &w.packed;
    let (m, k, n) = match a.shape() {
        [m, k] => (*m, *k, b.n()),
        s => {
            return Err(Error::op(
                OP,
                format!("internal: int8 product of a {} operand", fmt_shape(s)),
            ))
        }
    };
    if k != b.k() {
        return Err(Error::op(
            OP,
            format!(
                "the operands do not multiply: {} by an int8 weight of {} rows",
                fmt_shape(a.shape()),
                b.k()
            ),
        ));
    }
    let ptrs = epilogue_operands(&others, m, n)?
        .ok_or_else(|| Error::op(OP, "internal: an epilogue operand with a negative stride"))?;
    let mut out = dest.get(OP, &[m, n])?;
    if m == 0 || n == 0 {
        return Ok(out);
    }
    let c = out
        .as_slice_mut()
        .ok_or_else(|| Error::op(OP, "internal: destination not contiguous"))?;
    // SAFETY: `T` is f32 (checked above)
    let c = unsafe { std::slice::from_raw_parts_mut(c.as_mut_ptr() as *mut f32, c.len()) };
    let std_a;
    let a2 = if a.strides().iter().all(|&s| s >= 0) {
        a.view()
    } else {
        std_a = a.as_standard_layout().into_owned();
        std_a.view()
    };
    let (rsa, csa) = (a2.strides()[0] as usize, a2.strides()[1] as usize);
    // SAFETY: every element (i, p) lies at i*rsa + p*csa inside the view's memory
    // (non-negative strides).
    let sa = unsafe {
        let len = if k == 0 {
            0
        } else {
            (m - 1) * rsa + (k - 1) * csa + 1
        };
        std::slice::from_raw_parts(a2.as_ptr() as *const f32, len)
    };
    qgemm_epi_raw(m, k, (sa, rsa, csa), w, c, &ptrs, seg)?;
    Ok(out)
}

/// `C[m, n]` (row-major, row stride `n`) = `seg`(`A[m, k]` · `w`) with `A` f32 quantized per
/// tensor: the core of [`qmatmul_epi_to`] on raw slices (`A` as `(slice, row stride, col
/// stride)`, every element in range), shared with the plans' product chains (`plan::chain`)
/// so that both give bitwise the same result. `T` must be f32.
pub(crate) fn qgemm_epi_raw<T: Elem, const K: usize>(
    m: usize,
    k: usize,
    (sa, rsa, csa): (&[f32], usize, usize),
    w: &crate::quant::QWeight,
    c: &mut [f32],
    ptrs: &[Strided<T>; K],
    seg: &(impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync),
) -> Result<()> {
    use mithril_kernels::qgemm;
    const OP: &str = "matmul";
    let b = &w.packed;
    let n = b.n();
    if TypeId::of::<T>() != TypeId::of::<f32>() || k != b.k() {
        return Err(Error::op(OP, "internal: an int8 product of other operands"));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if sa.len() < span_len(m, k, rsa, csa) || c.len() < m * n {
        return Err(Error::op(OP, "internal: an operand shorter than its shape"));
    }
    let (inv, scale) = match w.act {
        Some(s) => s,
        None => qgemm::inv_and_scale(qgemm::max_abs(m, k, sa, rsa, csa)),
    };
    let kp = b.k_padded();
    QBUF.with(|q| {
        let mut q = q.borrow_mut();
        let (aq, cs) = &mut *q;
        let need = m
            .checked_mul(kp)
            .ok_or_else(|| Error::op(OP, "the quantized activation's size overflows"))?;
        if aq.len() < need {
            aq.resize(need, 0);
        }
        cs.clear();
        cs.extend(b.scales().iter().map(|s| scale * s));
        qgemm::quantize_a(m, k, sa, rsa, csa, inv, &mut aq[..need], kp);
        qgemm::qgemm(
            qgemm::QIsa::active(),
            m,
            &aq[..need],
            kp,
            b,
            cs,
            c,
            n,
            |i, j0, v: &mut [f32]| {
                // SAFETY: the pointers describe [m, n] broadcast views and (i, j0..) is in C;
                // `T::Acc` is f32.
                unsafe {
                    let v: &mut [T::Acc] =
                        std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T::Acc, v.len());
                    apply_segment(i, j0, v, ptrs, seg)
                }
            },
        );
        Ok::<(), Error>(())
    })?;
    Ok(())
}
