//! Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC 2011): a
//! counter-based generator — the random bits of element `i` are a pure function of
//! (key, counter), so any element can be drawn independently, in any order, on any device.
//!
//! `dropout` draws its masks with it, keyed by the call's seed (`key = (seed_lo, seed_hi)`) and
//! counting `(i / 4 as two words, op id, 0)` for element `i`, which takes word `i % 4` of the
//! block. The CUDA C twin (`mt_philox` in the CUDA backend's fused prelude) computes the same
//! words; [`dropout_f32`] / [`dropout_f64`] are the CPU kernels (8 blocks, 32 elements, per
//! iteration in independent lanes, which the compiler vectorizes).

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// One Philox4x32-10 block: the four random words of counter `c` under key `k`.
#[inline(always)]
pub fn philox4x32_10(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for r in 0..10 {
        if r > 0 {
            k[0] = k[0].wrapping_add(W0);
            k[1] = k[1].wrapping_add(W1);
        }
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        c = [
            ((p1 >> 32) as u32) ^ c[1] ^ k[0],
            p1 as u32,
            ((p0 >> 32) as u32) ^ c[3] ^ k[1],
            p0 as u32,
        ];
    }
    c
}

/// The 32 random bits of element `i` of op `op` under `seed` (what the kernels use).
#[inline]
pub fn element_bits(seed: u64, op: u32, i: u64) -> u32 {
    let b = i / 4;
    let w = philox4x32_10(
        [b as u32, (b >> 32) as u32, op, 0],
        [seed as u32, (seed >> 32) as u32],
    );
    w[(i % 4) as usize]
}

/// The keep threshold of drop probability `p`: element `i` is kept when its bits are `>=` it
/// (`None`: every element dropped, `p >= 1`).
pub fn threshold(p: f64) -> Option<u32> {
    if p >= 1.0 {
        return None;
    }
    if p <= 0.0 || p.is_nan() {
        return Some(0);
    }
    Some(((p * 4294967296.0).round() as u64).min(u32::MAX as u64) as u32)
}

const LANES: usize = 8;

macro_rules! dropout_kernel {
    ($name:ident, $t:ty) => {
        /// Dropout of `x` into `out` (same length): element `i` (in logical order, `i0 + k`
        /// for `x[k]`) is `x[k] * scale` when its Philox bits are at least `thr`, else 0.
        /// `thr = None` drops every element.
        pub fn $name(
            x: &[$t],
            out: &mut [$t],
            seed: u64,
            op: u32,
            i0: u64,
            thr: Option<u32>,
            scale: $t,
        ) {
            let n = x.len().min(out.len());
            let Some(thr) = thr else {
                out[..n].iter_mut().for_each(|o| *o = 0.0);
                return;
            };
            let key = [seed as u32, (seed >> 32) as u32];
            let mut k = 0usize;
            // the unaligned head (until element index is a multiple of 4)
            while k < n && (i0 + k as u64) % 4 != 0 {
                let r = element_bits(seed, op, i0 + k as u64);
                out[k] = if r >= thr { x[k] * scale } else { 0.0 };
                k += 1;
            }
            // blocks of LANES * 4 elements: LANES independent Philox blocks
            while k + LANES * 4 <= n {
                let b0 = (i0 + k as u64) / 4;
                let mut c = [[0u32; LANES]; 4];
                for l in 0..LANES {
                    let b = b0 + l as u64;
                    c[0][l] = b as u32;
                    c[1][l] = (b >> 32) as u32;
                    c[2][l] = op;
                }
                let mut kk = key;
                for r in 0..10 {
                    if r > 0 {
                        kk[0] = kk[0].wrapping_add(W0);
                        kk[1] = kk[1].wrapping_add(W1);
                    }
                    let mut nc = [[0u32; LANES]; 4];
                    for l in 0..LANES {
                        let p0 = (M0 as u64) * (c[0][l] as u64);
                        let p1 = (M1 as u64) * (c[2][l] as u64);
                        nc[0][l] = ((p1 >> 32) as u32) ^ c[1][l] ^ kk[0];
                        nc[1][l] = p1 as u32;
                        nc[2][l] = ((p0 >> 32) as u32) ^ c[3][l] ^ kk[1];
                        nc[3][l] = p0 as u32;
                    }
                    c = nc;
                }
                for l in 0..LANES {
                    for w in 0..4 {
                        let j = k + l * 4 + w;
                        out[j] = if c[w][l] >= thr { x[j] * scale } else { 0.0 };
                    }
                }
                k += LANES * 4;
            }
            while k < n {
                let r = element_bits(seed, op, i0 + k as u64);
                out[k] = if r >= thr { x[k] * scale } else { 0.0 };
                k += 1;
            }
        }
    };
}

dropout_kernel!(dropout_f32, f32);
dropout_kernel!(dropout_f64, f64);

#[cfg(test)]
mod tests {
    use super::*;

    /// The Random123 known-answer vectors of Philox4x32-10.
    #[test]
    fn known_answers() {
        assert_eq!(
            philox4x32_10([0, 0, 0, 0], [0, 0]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox4x32_10([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox4x32_10(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    /// Throughput of the lane kernel against the element-by-element loop (a measurement, not
    /// a check): `cargo test -p mithril-kernels --lib philox -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn measure_lanes_vs_scalar() {
        let n = 1 << 22;
        let x = vec![1.0f32; n];
        let mut out = vec![0.0f32; n];
        let thr = threshold(0.5);
        let t = std::time::Instant::now();
        for r in 0..5 {
            dropout_f32(&x, &mut out, r, 0, 0, thr, 2.0);
        }
        let lanes = t.elapsed().as_secs_f64() / 5.0;
        let t = std::time::Instant::now();
        for r in 0..5 {
            for (k, o) in out.iter_mut().enumerate() {
                *o = if element_bits(r, 0, k as u64) >= thr.unwrap() {
                    2.0
                } else {
                    0.0
                };
            }
        }
        let scalar = t.elapsed().as_secs_f64() / 5.0;
        std::hint::black_box(&out);
        println!(
            "dropout f32, {n} elements: lanes {:.2} ns/element, scalar {:.2} ns/element ({:.1}x)",
            lanes * 1e9 / n as f64,
            scalar * 1e9 / n as f64,
            scalar / lanes
        );
    }

    /// The lane kernel against the element-by-element definition, on odd sizes and offsets.
    #[test]
    fn lanes_match_scalar() {
        for (n, i0) in [(0usize, 0u64), (1, 3), (37, 1), (100, 6), (257, 4)] {
            let x: Vec<f32> = (0..n).map(|i| i as f32 + 1.0).collect();
            let mut out = vec![7.0f32; n];
            let thr = threshold(0.3);
            dropout_f32(&x, &mut out, 0xdead_beef_0123, 5, i0, thr, 2.0);
            for k in 0..n {
                let keep = element_bits(0xdead_beef_0123, 5, i0 + k as u64) >= thr.unwrap();
                assert_eq!(
                    out[k],
                    if keep { x[k] * 2.0 } else { 0.0 },
                    "n {n} i0 {i0} k {k}"
                );
            }
        }
    }
}
