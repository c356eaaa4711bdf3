//! Dense linear algebra on one row-major `n × n` matrix at a time, in `f64`: Cholesky
//! factorization, triangular solves and the symmetric eigendecomposition. The runtime
//! (`mithril_runtime::ops::linalg`) loops these over batch dims and converts other element types
//! to and from `f64` (so `f32` models get `f64`-accurate factorizations, rounded once).
//!
//! The algorithms are the textbook unblocked ones (O(n³), rows read contiguously): this module
//! is about correct results and clear failure reports (non-positive-definite matrices, zero
//! pivots, non-finite input), not about peak speed on large matrices.

/// Why a factorization or solve failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinalgError {
    /// Cholesky: the leading minor of this order (1-based) is not positive-definite (or is NaN).
    NotPositiveDefinite(usize),
    /// Triangular solve: the diagonal entry at this (0-based) index is zero.
    ZeroPivot(usize),
    /// The input holds a NaN or an infinity.
    NonFinite,
}

/// Cholesky factorization in place: reads the lower triangle of the symmetric matrix `a`
/// (`n × n`, row-major; the strict upper triangle is ignored) and overwrites `a` with the lower
/// factor `L` (`A = L Lᵀ`, strict upper triangle zeroed).
///
/// # Errors
/// [`LinalgError::NotPositiveDefinite`] with the order of the first leading minor that is not
/// positive-definite (a pivot `<= 0` or NaN); `a` is then partly overwritten.
///
/// # Panics
/// If `a.len() < n * n` (a caller bug, not a user input).
pub fn cholesky(a: &mut [f64], n: usize) -> Result<(), LinalgError> {
    assert!(a.len() >= n * n, "cholesky: buffer too small");
    for j in 0..n {
        // L[j][..j] is final; the diagonal pivot
        let lj = &mut a[j * n..(j + 1) * n];
        let s = lj[j] - dot(&lj[..j], &lj[..j]);
        if s.is_nan() || s <= 0.0 {
            return Err(LinalgError::NotPositiveDefinite(j + 1));
        }
        let d = s.sqrt();
        lj[j] = d;
        for x in &mut lj[j + 1..] {
            *x = 0.0;
        }
        // the entries below the pivot, column j
        for i in j + 1..n {
            let (top, bottom) = a.split_at_mut(i * n);
            let lj = &top[j * n..j * n + j];
            let li = &mut bottom[..n];
            li[j] = (li[j] - dot(&li[..j], lj)) / d;
        }
    }
    Ok(())
}

fn dot(x: &[f64], y: &[f64]) -> f64 {
    x.iter().zip(y).map(|(a, b)| a * b).sum()
}

/// Which triangle of `A` a triangular solve reads, and how it applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tri {
    /// Read the upper triangle of `A` (else the lower); the other triangle is ignored.
    pub upper: bool,
    /// Solve with `Aᵀ` instead of `A`.
    pub trans: bool,
    /// `op(A) X = B` (else `X op(A) = B`).
    pub left: bool,
}

/// Triangular solve in place: `op(A) X = B` (`left`) or `X op(A) = B`, where `A` is `n × n`
/// (row-major; only the triangle named by `tri.upper` is read) and `op(A)` is `A` or `Aᵀ`.
/// `b` is `n × k` when `left`, `k × n` otherwise, row-major, and is overwritten with `X`.
///
/// # Errors
/// [`LinalgError::ZeroPivot`] when a diagonal entry of `A` is zero (`b` is then unchanged).
///
/// # Panics
/// If a buffer is shorter than its matrix (a caller bug).
pub fn solve_triangular(
    a: &[f64],
    n: usize,
    b: &mut [f64],
    k: usize,
    tri: Tri,
) -> Result<(), LinalgError> {
    assert!(
        a.len() >= n * n && b.len() >= n * k,
        "solve_triangular: buffer too small"
    );
    if let Some(i) = (0..n).find(|&i| a[i * n + i] == 0.0) {
        return Err(LinalgError::ZeroPivot(i));
    }
    if tri.left {
        solve_left(a, n, b, k, tri.upper, tri.trans);
    } else {
        // X M = B  <=>  Mᵀ Xᵀ = Bᵀ
        let mut t = vec![0.0; n * k];
        for r in 0..k {
            for c in 0..n {
                t[c * k + r] = b[r * n + c];
            }
        }
        solve_left(a, n, &mut t, k, tri.upper, !tri.trans);
        for r in 0..k {
            for c in 0..n {
                b[r * n + c] = t[c * k + r];
            }
        }
    }
    Ok(())
}

/// `M X = B` with `M = A` or `Aᵀ`, `b` `n × k`.
fn solve_left(a: &[f64], n: usize, b: &mut [f64], k: usize, upper: bool, trans: bool) {
    let m = |i: usize, j: usize| if trans { a[j * n + i] } else { a[i * n + j] };
    // M is lower triangular when A's lower triangle is used as is, or A's upper one transposed
    let lower = upper == trans;
    let mut acc = vec![0.0; k];
    let mut step = |i: usize, js: &mut dyn Iterator<Item = usize>, b: &mut [f64]| {
        acc.copy_from_slice(&b[i * k..(i + 1) * k]);
        for j in js {
            let mij = m(i, j);
            if mij != 0.0 {
                let xj = &b[j * k..(j + 1) * k];
                for (s, x) in acc.iter_mut().zip(xj) {
                    *s -= mij * x;
                }
            }
        }
        let d = m(i, i);
        for (o, s) in b[i * k..(i + 1) * k].iter_mut().zip(&acc) {
            *o = s / d;
        }
    };
    if lower {
        for i in 0..n {
            step(i, &mut (0..i), b);
        }
    } else {
        for i in (0..n).rev() {
            step(i, &mut (i + 1..n), b);
        }
    }
}

/// Symmetric eigendecomposition by cyclic Jacobi rotations: reads the lower triangle of `a`
/// (`n × n`, row-major; the strict upper triangle is ignored), writes the eigenvalues in
/// ascending order to `w` (length `n`) and, when `v` is given, the matching orthonormal
/// eigenvectors as the columns of `v` (`n × n`, row-major). `a` is used as scratch.
///
/// # Errors
/// [`LinalgError::NonFinite`] when the lower triangle holds a NaN or an infinity.
///
/// # Panics
/// If a buffer is shorter than its matrix (a caller bug).
pub fn eigh(
    a: &mut [f64],
    n: usize,
    w: &mut [f64],
    v: Option<&mut [f64]>,
) -> Result<(), LinalgError> {
    assert!(a.len() >= n * n && w.len() >= n, "eigh: buffer too small");
    for i in 0..n {
        for j in 0..=i {
            if !a[i * n + j].is_finite() {
                return Err(LinalgError::NonFinite);
            }
            a[j * n + i] = a[i * n + j];
        }
    }
    let mut vs = vec![0.0; n * n];
    for i in 0..n {
        vs[i * n + i] = 1.0;
    }
    let frob2: f64 = a[..n * n].iter().map(|x| x * x).sum();
    let tol = (f64::EPSILON * f64::EPSILON) * frob2;
    for _sweep in 0..100 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off <= tol || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                let theta = (aqq - app) / (2.0 * apq);
                let t = if theta.abs() > 1e150 {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A <- A P (columns p, q), then A <- Pᵀ A (rows p, q), V <- V P
                for r in 0..n {
                    let (x, y) = (a[r * n + p], a[r * n + q]);
                    a[r * n + p] = c * x - s * y;
                    a[r * n + q] = s * x + c * y;
                }
                for col in 0..n {
                    let (x, y) = (a[p * n + col], a[q * n + col]);
                    a[p * n + col] = c * x - s * y;
                    a[q * n + col] = s * x + c * y;
                }
                a[p * n + q] = 0.0;
                a[q * n + p] = 0.0;
                for r in 0..n {
                    let (x, y) = (vs[r * n + p], vs[r * n + q]);
                    vs[r * n + p] = c * x - s * y;
                    vs[r * n + q] = s * x + c * y;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[i * n + i].total_cmp(&a[j * n + j]));
    for (o, &i) in w.iter_mut().zip(&order) {
        *o = a[i * n + i];
    }
    if let Some(v) = v {
        assert!(v.len() >= n * n, "eigh: buffer too small");
        for r in 0..n {
            for (c, &i) in order.iter().enumerate() {
                v[r * n + c] = vs[r * n + i];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix.
    fn rnd(n: usize, m: usize, seed: u64) -> Vec<f64> {
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (0..n * m)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
            })
            .collect()
    }

    fn matmul(a: &[f64], b: &[f64], n: usize, k: usize, m: usize) -> Vec<f64> {
        let mut c = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                c[i * m + j] = (0..k).map(|l| a[i * k + l] * b[l * m + j]).sum();
            }
        }
        c
    }

    fn tr(a: &[f64], n: usize, m: usize) -> Vec<f64> {
        let mut t = vec![0.0; n * m];
        for i in 0..n {
            for j in 0..m {
                t[j * n + i] = a[i * m + j];
            }
        }
        t
    }

    fn spd(n: usize, seed: u64) -> Vec<f64> {
        let w = rnd(n, n, seed);
        let mut a = matmul(&w, &tr(&w, n, n), n, n, n);
        for i in 0..n {
            a[i * n + i] += n as f64;
        }
        a
    }

    fn close(x: &[f64], y: &[f64], tol: f64) {
        assert_eq!(x.len(), y.len());
        for (i, (a, b)) in x.iter().zip(y).enumerate() {
            assert!((a - b).abs() <= tol * (1.0 + b.abs()), "at {i}: {a} vs {b}");
        }
    }

    #[test]
    fn cholesky_reconstructs_and_reads_the_lower_triangle() {
        for n in [1, 2, 5, 17] {
            let a = spd(n, n as u64);
            let mut l = a.clone();
            // garbage in the strict upper triangle is ignored
            for i in 0..n {
                for j in i + 1..n {
                    l[i * n + j] = 1e9;
                }
            }
            cholesky(&mut l, n).unwrap();
            for i in 0..n {
                assert!(l[i * n + i] > 0.0);
                for j in i + 1..n {
                    assert_eq!(l[i * n + j], 0.0);
                }
            }
            close(&matmul(&l, &tr(&l, n, n), n, n, n), &a, 1e-12);
        }
    }

    #[test]
    fn cholesky_reports_the_failing_minor() {
        // [[4, 2, 0], [2, 1, 0], [0, 0, 1]]: the 2×2 leading minor is singular
        let mut a = vec![4.0, 2.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(
            cholesky(&mut a, 3),
            Err(LinalgError::NotPositiveDefinite(2))
        );
        let mut b = vec![-1.0];
        assert_eq!(
            cholesky(&mut b, 1),
            Err(LinalgError::NotPositiveDefinite(1))
        );
        let mut c = vec![f64::NAN];
        assert_eq!(
            cholesky(&mut c, 1),
            Err(LinalgError::NotPositiveDefinite(1))
        );
    }

    #[test]
    fn solves_every_variant() {
        let (n, k) = (6, 3);
        for upper in [false, true] {
            for trans in [false, true] {
                for left in [false, true] {
                    let mut a = rnd(n, n, 7);
                    for i in 0..n {
                        a[i * n + i] = 2.0 + i as f64 * 0.1;
                    }
                    // the triangular matrix the solve should use
                    let mut t = a.clone();
                    for i in 0..n {
                        for j in 0..n {
                            if (upper && j < i) || (!upper && j > i) {
                                t[i * n + j] = 0.0;
                            }
                        }
                    }
                    let m = if trans { tr(&t, n, n) } else { t };
                    let b = rnd(n, k, 9);
                    let b = if left { b } else { tr(&b, n, k) };
                    let mut x = b.clone();
                    solve_triangular(&a, n, &mut x, k, Tri { upper, trans, left }).unwrap();
                    let back = if left {
                        matmul(&m, &x, n, n, k)
                    } else {
                        matmul(&x, &m, k, n, n)
                    };
                    close(&back, &b, 1e-12);
                }
            }
        }
        let mut z = vec![1.0, 0.0, 3.0, 0.0];
        let mut b = vec![1.0, 2.0];
        let tri = Tri {
            upper: false,
            trans: false,
            left: true,
        };
        assert_eq!(
            solve_triangular(&z, 2, &mut b, 1, tri),
            Err(LinalgError::ZeroPivot(1))
        );
        z[3] = 2.0;
        solve_triangular(&z, 2, &mut b, 1, tri).unwrap();
        assert_eq!(b, vec![1.0, (2.0 - 3.0) / 2.0]);
    }

    #[test]
    fn eigh_diagonalizes() {
        for n in [1, 2, 3, 8, 20] {
            let a = rnd(n, n, 100 + n as u64);
            let s: Vec<f64> = (0..n * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    a[i * n + j] + a[j * n + i]
                })
                .collect();
            let mut scratch = s.clone();
            let (mut w, mut v) = (vec![0.0; n], vec![0.0; n * n]);
            eigh(&mut scratch, n, &mut w, Some(&mut v)).unwrap();
            assert!(w.windows(2).all(|p| p[0] <= p[1]));
            // V diag(w) Vᵀ = S and Vᵀ V = I
            let mut vd = v.clone();
            for r in 0..n {
                for c in 0..n {
                    vd[r * n + c] *= w[c];
                }
            }
            close(&matmul(&vd, &tr(&v, n, n), n, n, n), &s, 1e-12);
            let mut eye = vec![0.0; n * n];
            for i in 0..n {
                eye[i * n + i] = 1.0;
            }
            close(&matmul(&tr(&v, n, n), &v, n, n, n), &eye, 1e-12);
            // the trace is the sum of the eigenvalues
            let trace: f64 = (0..n).map(|i| s[i * n + i]).sum();
            assert!((w.iter().sum::<f64>() - trace).abs() < 1e-10);
        }
        // a known spectrum: [[2, 1], [1, 2]] has eigenvalues 1 and 3
        let mut a = vec![2.0, 0.0, 1.0, 2.0];
        let mut w = vec![0.0; 2];
        eigh(&mut a, 2, &mut w, None).unwrap();
        close(&w, &[1.0, 3.0], 1e-15);
        let mut bad = vec![1.0, 0.0, f64::NAN, 1.0];
        assert_eq!(eigh(&mut bad, 2, &mut w, None), Err(LinalgError::NonFinite));
    }
}
