//! Linear algebra over the last two axes (leading axes are batch dims): `cholesky`,
//! `solve_triangular`, `eigvalsh` and the eigenvectors its gradient needs; and the triangle
//! masks `tril` / `triu`.
//!
//! Each matrix is converted to `f64`, factorized or solved by [`mithril_kernels::linalg`], and
//! rounded back once to the element type (so `f32` results are `f64` results rounded). Failures
//! on values are errors naming the op and the batch index of the matrix: a matrix that is not
//! positive-definite (`cholesky`), a zero on the diagonal (`solve_triangular`), a NaN or infinity
//! (`eigvalsh`).

use mithril_kernels::linalg::{self as kernels, LinalgError, Tri};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD};

use super::{checked_size, fmt_shape};
use crate::{Dest, Elem, Error, Result};

/// The batch count and `(rows, cols)` of a tensor of matrices (rank >= 2).
fn mats(op: &str, shape: &[usize]) -> Result<(usize, usize, usize)> {
    let r = shape.len();
    if r < 2 {
        return Err(Error::op(
            op,
            format!(
                "needs a tensor of matrices [..., n, m], got shape {}",
                fmt_shape(shape)
            ),
        ));
    }
    let batch = checked_size(op, &shape[..r - 2])?;
    Ok((batch, shape[r - 2], shape[r - 1]))
}

/// The batch count and `n` of a tensor of square matrices.
fn square(op: &str, shape: &[usize]) -> Result<(usize, usize)> {
    let (b, n, m) = mats(op, shape)?;
    if n != m {
        return Err(Error::op(
            op,
            format!(
                "needs square matrices [..., n, n], got shape {}",
                fmt_shape(shape)
            ),
        ));
    }
    Ok((b, n))
}

/// ` (batch index [i, j])` for matrix `b` of a batch of shape `batch`, or nothing when unbatched.
fn at(batch: &[usize], mut b: usize) -> String {
    if batch.is_empty() {
        return String::new();
    }
    let mut idx = vec![0; batch.len()];
    for (i, &d) in batch.iter().enumerate().rev() {
        idx[i] = b % d.max(1);
        b /= d.max(1);
    }
    format!(" (the matrix at batch index {idx:?})")
}

/// The matrices of `a` in `f64`, row-major, one after another.
fn to_f64<T: Elem>(a: &ArrayViewD<'_, T>) -> Vec<f64> {
    let s = a.as_standard_layout();
    s.iter().map(|v| v.to_f64()).collect()
}

/// Writes `f64` values into a standard-layout destination.
fn store<T: Elem>(out: &mut ArrayViewMutD<'_, T>, vals: &[f64]) {
    for (o, v) in out.iter_mut().zip(vals) {
        *o = T::from_f64(*v);
    }
}

/// The lower Cholesky factor `L` of each symmetric positive-definite matrix (`A = L Lᵀ`) of
/// `a` (`[..., n, n]`); only the lower triangle of `A` is read. A matrix that is not
/// positive-definite is an error naming the leading minor that fails (PyTorch's
/// `torch.linalg.cholesky` raises likewise).
pub fn cholesky<T: Elem>(a: &ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
    crate::owned(|d| cholesky_to(a, d).map(|_| ()))
}

/// [`cholesky`] into a destination.
pub fn cholesky_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "cholesky";
    let shape = a.shape();
    let (batch, n) = square(OP, shape)?;
    let mut vals = to_f64(a);
    for b in 0..batch {
        let m = &mut vals[b * n * n..(b + 1) * n * n];
        if let Err(LinalgError::NotPositiveDefinite(k)) = kernels::cholesky(m, n) {
            return Err(Error::op(
                OP,
                format!(
                    "the matrix is not positive-definite: its leading minor of order {k} is not{} (shape {})",
                    at(&shape[..shape.len() - 2], b),
                    fmt_shape(shape)
                ),
            ));
        }
    }
    let mut out = dest.get(OP, shape)?;
    store(&mut out, &vals);
    Ok(out)
}

/// Solves the triangular systems `op(A) X = B` (`left`) or `X op(A) = B`, with `op(A) = A`, or
/// `Aᵀ` when `trans`, for `A` of shape `[..., n, n]` (only its upper triangle is read when
/// `upper`, else its lower one) and `B` of shape `[..., n, k]` (`left`) or `[..., k, n]`, with
/// the same batch dims. A zero on the diagonal of `A` is an error.
pub fn solve_triangular<T: Elem>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    upper: bool,
    left: bool,
    trans: bool,
) -> Result<ArrayD<T>> {
    crate::owned(|d| solve_triangular_to(a, b, upper, left, trans, d).map(|_| ()))
}

/// [`solve_triangular`] into a destination.
pub fn solve_triangular_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    upper: bool,
    left: bool,
    trans: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    const OP: &str = "solve_triangular";
    let (sa, sb) = (a.shape(), b.shape());
    let (batch, n) = square(OP, sa)?;
    let (_, br, bc) = mats(OP, sb)?;
    let (k, inner) = if left { (bc, br) } else { (br, bc) };
    let r = sa.len();
    if sb.len() != r || sa[..r - 2] != sb[..r - 2] || inner != n {
        return Err(Error::op(
            OP,
            format!(
                "the triangular matrix of shape {} needs a right-hand side of shape [{}] with the same batch dims, got {}",
                fmt_shape(sa),
                sa[..r - 2]
                    .iter()
                    .map(|d| d.to_string())
                    .chain(if left {
                        [n.to_string(), "k".into()]
                    } else {
                        ["k".into(), n.to_string()]
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                fmt_shape(sb)
            ),
        ));
    }
    let av = to_f64(a);
    let mut bv = to_f64(b);
    let tri = Tri { upper, trans, left };
    for i in 0..batch {
        let am = &av[i * n * n..(i + 1) * n * n];
        let bm = &mut bv[i * n * k..(i + 1) * n * k];
        if let Err(LinalgError::ZeroPivot(p)) = kernels::solve_triangular(am, n, bm, k, tri) {
            return Err(Error::op(
                OP,
                format!(
                    "the triangular matrix is singular: its diagonal entry [{p}, {p}] is zero{} (shape {})",
                    at(&sa[..r - 2], i),
                    fmt_shape(sa)
                ),
            ));
        }
    }
    let mut out = dest.get(OP, sb)?;
    store(&mut out, &bv);
    Ok(out)
}

fn eigh_common<'w, T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    vectors: bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let shape = a.shape();
    let (batch, n) = square(op, shape)?;
    let r = shape.len();
    let mut vals = to_f64(a);
    let mut res = vec![0.0; batch * if vectors { n * n } else { n }];
    let mut w = vec![0.0; n];
    for b in 0..batch {
        let m = &mut vals[b * n * n..(b + 1) * n * n];
        let got = if vectors {
            kernels::eigh(m, n, &mut w, Some(&mut res[b * n * n..(b + 1) * n * n]))
        } else {
            kernels::eigh(m, n, &mut res[b * n..(b + 1) * n], None)
        };
        if let Err(e) = got {
            let what = match e {
                LinalgError::NoConvergence => "the eigenvalue iteration did not converge",
                _ => "the matrix holds a NaN or an infinity in its lower triangle",
            };
            return Err(Error::op(
                op,
                format!(
                    "{what}{} (shape {})",
                    at(&shape[..r - 2], b),
                    fmt_shape(shape)
                ),
            ));
        }
    }
    let out_shape = if vectors { shape } else { &shape[..r - 1] };
    let mut out = dest.get(op, out_shape)?;
    store(&mut out, &res);
    Ok(out)
}

/// The eigenvalues, ascending, of each symmetric matrix of `a` (`[..., n, n]` → `[..., n]`);
/// only the lower triangle is read (as `torch.linalg.eigvalsh`). A NaN or infinity is an error.
pub fn eigvalsh<T: Elem>(a: &ArrayViewD<'_, T>) -> Result<ArrayD<T>> {
    crate::owned(|d| eigvalsh_to(a, d).map(|_| ()))
}

/// [`eigvalsh`] into a destination.
pub fn eigvalsh_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    eigh_common("eigvalsh", a, false, dest)
}

/// The orthonormal eigenvectors (columns, in the order of [`eigvalsh`]'s ascending eigenvalues)
/// of each symmetric matrix of `a` (`[..., n, n]`); used by the gradient of `eigvalsh`.
pub fn eigh_vectors_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    eigh_common("eigvalsh", a, true, dest)
}

fn tri_mask<'w, T: Elem>(
    op: &str,
    a: &ArrayViewD<'_, T>,
    keep: impl Fn(i64) -> bool,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    let (_, n, m) = mats(op, a.shape())?;
    let mut out = dest.get(op, a.shape())?;
    out.assign(a);
    for (idx, o) in out.iter_mut().enumerate() {
        let (i, j) = ((idx / m.max(1)) % n.max(1), idx % m.max(1));
        if !keep(j as i64 - i as i64) {
            *o = T::default();
        }
    }
    Ok(out)
}

/// The lower triangle of each matrix of `a` (`[..., n, m]`): entries `[i, j]` with
/// `j - i <= diagonal` are kept, the others zeroed (`torch.tril`).
pub fn tril<T: Elem>(a: &ArrayViewD<'_, T>, diagonal: i64) -> Result<ArrayD<T>> {
    crate::owned(|d| tril_to(a, diagonal, d).map(|_| ()))
}

/// [`tril`] into a destination.
pub fn tril_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    diagonal: i64,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    tri_mask("tril", a, |d| d <= diagonal, dest)
}

/// The upper triangle of each matrix of `a` (`[..., n, m]`): entries `[i, j]` with
/// `j - i >= diagonal` are kept, the others zeroed (`torch.triu`).
pub fn triu<T: Elem>(a: &ArrayViewD<'_, T>, diagonal: i64) -> Result<ArrayD<T>> {
    crate::owned(|d| triu_to(a, diagonal, d).map(|_| ()))
}

/// [`triu`] into a destination.
pub fn triu_to<'w, T: Elem>(
    a: &ArrayViewD<'_, T>,
    diagonal: i64,
    dest: Dest<'w, T>,
) -> Result<ArrayViewMutD<'w, T>> {
    tri_mask("triu", a, |d| d >= diagonal, dest)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use ndarray::array;

    #[cfg_attr(test, test)]
    pub(crate) fn batched_cholesky_and_errors_name_the_matrix() {
        let a = array![[[4.0f32, 0.0], [2.0, 2.0]], [[1.0, 0.0], [0.0, -1.0]]].into_dyn();
        let e = cholesky(&a.view()).unwrap_err().to_string();
        assert!(e.contains("`cholesky` failed"), "{e}");
        assert!(
            e.contains("order 2") && e.contains("batch index [1]"),
            "{e}"
        );
        let l = cholesky(&a.slice(ndarray::s![0..1, .., ..]).into_dyn()).unwrap();
        // [[4, 2], [2, 2]] = L Lᵀ with L = [[2, 0], [1, 1]]
        assert_eq!(l.as_slice().unwrap(), &[2.0, 0.0, 1.0, 1.0]);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn solve_checks_shapes_and_pivots() {
        let a = array![[2.0f64, 0.0], [1.0, 4.0]].into_dyn();
        let b = array![[2.0f64], [9.0]].into_dyn();
        let x = solve_triangular(&a.view(), &b.view(), false, true, false).unwrap();
        assert_eq!(x.as_slice().unwrap(), &[1.0, 2.0]);
        let bad = array![[1.0f64, 2.0, 3.0]].into_dyn();
        let e = solve_triangular(&a.view(), &bad.view(), false, true, false).unwrap_err();
        assert!(e.to_string().contains("[1, 3]"), "{e}");
        let z = array![[0.0f64, 0.0], [1.0, 4.0]].into_dyn();
        let e = solve_triangular(&z.view(), &b.view(), false, true, false).unwrap_err();
        assert!(e.to_string().contains("[0, 0] is zero"), "{e}");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn masks_and_eigenvalues() {
        let a = array![[1i64, 2, 3], [4, 5, 6]].into_dyn();
        assert_eq!(
            tril(&a.view(), 0).unwrap().as_slice().unwrap(),
            &[1, 0, 0, 4, 5, 0]
        );
        assert_eq!(
            triu(&a.view(), 1).unwrap().as_slice().unwrap(),
            &[0, 2, 3, 0, 0, 6]
        );
        assert_eq!(
            tril(&a.view(), -1).unwrap().as_slice().unwrap(),
            &[0, 0, 0, 4, 0, 0]
        );
        let s = array![[2.0f64, 99.0], [1.0, 2.0]].into_dyn();
        let w = eigvalsh(&s.view()).unwrap();
        assert!((w[[0]] - 1.0).abs() < 1e-15 && (w[[1]] - 3.0).abs() < 1e-15);
        assert!(eigvalsh(&array![1.0f32].into_dyn().view()).is_err());
    }
}
