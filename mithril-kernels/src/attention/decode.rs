//! Attention of new queries over a key/value cache (incremental decoding).
//!
//! The queries are at absolute positions `offset .. offset + sq` of a sequence whose keys and
//! values fill rows `0 .. offset + sq` of a cache of `sk` rows (`offset + sq <= sk`); query `i`
//! sees keys `j <= offset + i` (causal, aligned at the cache's start), so the cache's unused tail
//! is never read. Each query row runs an online softmax over chunks of [`CHUNK`] keys with its
//! scores on the stack and the output row as the accumulator: no heap memory, and `O(sq · (offset
//! + sq))` work per head, which at `sq = 1` (a decode step) is a pass over the cache's rows in use.
//! The row loops are multiversioned (AVX-512 / AVX2 / baseline, [`crate::isa::active`]).

use super::AttnElem;
use crate::isa::multiversion;

/// Keys per chunk of a row's online softmax.
pub const CHUNK: usize = 128;

/// The layout of one [`forward_at`] call. `k`, `v` are contiguous `[batch, hkv, sk, d | dv]`,
/// `out` contiguous `[batch, hq, sq, dv]`; `q` is `[batch, hq, sq, d]` with the element
/// `(b, h, i, e)` at `b * q_strides[0] + h * q_strides[1] + i * q_strides[2] + e` (a transposed
/// view of `[batch, sq, hq, d]` needs no copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedDims {
    pub batch: usize,
    pub hq: usize,
    pub hkv: usize,
    pub sq: usize,
    pub sk: usize,
    pub d: usize,
    pub dv: usize,
    pub q_strides: [usize; 3],
}

/// `out[b, h, i] = softmax_j(scale · q[b, h, i]·k[b, g, j]) · v[b, g, j]` over `j <= offset + i`,
/// `g = h / (hq / hkv)`.
///
/// # Panics
/// When `offset + sq > sk`, a slice is shorter than `dims` says, or `hq % hkv != 0` (the runtime
/// checks all three first).
pub fn forward_at<T: AttnElem>(
    dims: &CachedDims,
    q: &[T],
    k: &[T],
    v: &[T],
    offset: usize,
    scale: f64,
    out: &mut [T],
) {
    let CachedDims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
        q_strides: [sb, sh, si],
    } = *dims;
    assert!(offset + sq <= sk, "offset + sq > sk");
    assert!(hkv > 0 && hq.is_multiple_of(hkv), "hq % hkv");
    assert!(k.len() >= batch * hkv * sk * d, "k too short");
    assert!(v.len() >= batch * hkv * sk * dv, "v too short");
    assert!(out.len() >= batch * hq * sq * dv, "out too short");
    if batch * hq * sq == 0 {
        return;
    }
    let last = (batch - 1) * sb + (hq - 1) * sh + (sq - 1) * si + d;
    assert!(q.len() >= last, "q too short");
    let group = hq / hkv;
    let scale = T::of(scale);
    for b in 0..batch {
        for h in 0..hq {
            let g = b * hkv + h / group;
            let kh = &k[g * sk * d..(g + 1) * sk * d];
            let vh = &v[g * sk * dv..(g + 1) * sk * dv];
            for i in 0..sq {
                let q0 = b * sb + h * sh + i * si;
                let o0 = ((b * hq + h) * sq + i) * dv;
                row(
                    &q[q0..q0 + d],
                    kh,
                    vh,
                    offset + i + 1,
                    d,
                    dv,
                    scale,
                    &mut out[o0..o0 + dv],
                );
            }
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn row<T: AttnElem>(
        q: &[T],
        k: &[T],
        v: &[T],
        n: usize,
        d: usize,
        dv: usize,
        scale: T,
        o: &mut [T],
    ) => row_impl;
}

/// `q · k` in 8 lanes (vectorizable).
#[inline(always)]
fn dot<T: AttnElem>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] = acc[l] + x[l] * y[l];
        }
    }
    let mut s = T::ZERO;
    for (x, y) in ra.iter().zip(rb) {
        s = s + *x * *y;
    }
    let h = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    s + ((h[0] + h[2]) + (h[1] + h[3]))
}

/// One query row over keys `0..n`: an online softmax over chunks of [`CHUNK`] keys, `o` the
/// accumulator.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn row_impl<T: AttnElem>(
    q: &[T],
    k: &[T],
    v: &[T],
    n: usize,
    d: usize,
    dv: usize,
    scale: T,
    o: &mut [T],
) {
    o.fill(T::ZERO);
    let (mut m, mut l) = (T::NEG_INF, T::ZERO);
    let mut s = [T::ZERO; CHUNK];
    for j0 in (0..n).step_by(CHUNK) {
        let c = CHUNK.min(n - j0);
        let mut mc = T::NEG_INF;
        for (t, sv) in s[..c].iter_mut().enumerate() {
            let j = j0 + t;
            let x = dot(q, &k[j * d..(j + 1) * d]) * scale;
            *sv = x;
            if x > mc {
                mc = x;
            }
        }
        let mn = if mc > m { mc } else { m };
        if mn == T::NEG_INF {
            continue;
        }
        if m != mn {
            let alpha = (m - mn).exp();
            l = l * alpha;
            for x in o.iter_mut() {
                *x = *x * alpha;
            }
            m = mn;
        }
        for (t, sv) in s[..c].iter().enumerate() {
            let p = (*sv - m).exp();
            l = l + p;
            let vr = &v[(j0 + t) * dv..(j0 + t + 1) * dv];
            for (x, &y) in o.iter_mut().zip(vr) {
                *x = *x + p * y;
            }
        }
    }
    let inv = T::ONE / l;
    for x in o.iter_mut() {
        *x = *x * inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::isa::{self, Isa};

    fn data(n: usize, seed: u64) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
            })
            .collect()
    }

    /// Softmax over the first `offset + i + 1` keys, in f64, from the definition.
    #[allow(clippy::too_many_arguments)]
    fn naive(
        dm: &CachedDims,
        q: &[f64],
        k: &[f64],
        v: &[f64],
        offset: usize,
        scale: f64,
    ) -> Vec<f64> {
        let CachedDims {
            batch,
            hq,
            hkv,
            sq,
            sk,
            d,
            dv,
            q_strides: [sb, sh, si],
        } = *dm;
        let mut out = vec![0.0; batch * hq * sq * dv];
        for b in 0..batch {
            for h in 0..hq {
                let g = b * hkv + h / (hq / hkv);
                for i in 0..sq {
                    let n = offset + i + 1;
                    let sc: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..d)
                                .map(|e| q[b * sb + h * sh + i * si + e] * k[(g * sk + j) * d + e])
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|s| (s - mx).exp()).sum();
                    for c in 0..dv {
                        let o: f64 = (0..n)
                            .map(|j| (sc[j] - mx).exp() / z * v[(g * sk + j) * dv + c])
                            .sum();
                        out[((b * hq + h) * sq + i) * dv + c] = o;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn cached_attention_matches_naive_on_every_path() {
        // (batch, hq, hkv, sq, sk, d, dv, offset): decode steps, a prefill, GQA, several chunks
        let cases = [
            (1, 2, 2, 1, 16, 8, 8, 0),
            (1, 2, 2, 1, 16, 8, 8, 15),
            (2, 4, 2, 3, 40, 12, 5, 7),
            (1, 3, 1, 5, 300, 16, 16, 290),
            (1, 2, 2, 9, 9, 4, 4, 0),
        ];
        for &(batch, hq, hkv, sq, sk, d, dv, offset) in &cases {
            // q stored as [batch, sq, hq, d] and read transposed (strided)
            let dm = CachedDims {
                batch,
                hq,
                hkv,
                sq,
                sk,
                d,
                dv,
                q_strides: [sq * hq * d, d, hq * d],
            };
            let q = data(batch * sq * hq * d, 1);
            let k = data(batch * hkv * sk * d, 2);
            let v = data(batch * hkv * sk * dv, 3);
            let scale = 1.0 / (d as f64).sqrt();
            let want = naive(&dm, &q, &k, &v, offset, scale);
            for level in [Isa::Avx512, Isa::Avx2, Isa::Scalar] {
                isa::with_isa(level, || {
                    let mut out = vec![0.0f64; want.len()];
                    forward_at(&dm, &q, &k, &v, offset, scale, &mut out);
                    for (a, b) in out.iter().zip(&want) {
                        assert!((a - b).abs() < 1e-12, "{level:?} {a} vs {b}");
                    }
                    let f = |x: &[f64]| x.iter().map(|&y| y as f32).collect::<Vec<f32>>();
                    let mut out32 = vec![0.0f32; want.len()];
                    forward_at(&dm, &f(&q), &f(&k), &f(&v), offset, scale, &mut out32);
                    for (a, b) in out32.iter().zip(&want) {
                        assert!((*a as f64 - b).abs() < 1e-5, "{level:?} f32 {a} vs {b}");
                    }
                });
            }
            // the cache's tail is never read: NaN there changes nothing
            let mut k2 = k.clone();
            let mut v2 = v.clone();
            for g in 0..batch * hkv {
                for j in offset + sq..sk {
                    k2[(g * sk + j) * d..(g * sk + j + 1) * d].fill(f64::NAN);
                    v2[(g * sk + j) * dv..(g * sk + j + 1) * dv].fill(f64::NAN);
                }
            }
            let mut out = vec![0.0f64; want.len()];
            forward_at(&dm, &q, &k2, &v2, offset, scale, &mut out);
            assert!(out.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12));
        }
    }
}
