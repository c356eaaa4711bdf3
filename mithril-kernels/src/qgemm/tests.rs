//! Every int8 path against a naive `i32` triple loop over independently quantized operands:
//! odd sizes (k not a multiple of 4, n not a multiple of 16, m across the tile heights),
//! strided and transposed weights; the f32 store and epilogue; the quantization rules.

use super::*;

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (((self.0 >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0) as f32
    }
}

/// The test's own quantization of one value: nearest (ties to even) of `x·127/max`, clamped.
fn q_ref(x: f32, max: f32) -> i32 {
    if max == 0.0 {
        return 0;
    }
    let v = (x * (127.0 / max)) as f64;
    let r = v.round();
    // ties to even
    let r = if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    };
    r.clamp(-127.0, 127.0) as i32
}

fn rand_mat(g: &mut Lcg, len: usize) -> Vec<f32> {
    (0..len).map(|_| g.next()).collect()
}

#[test]
fn weights_quantize_per_column() {
    let (k, n) = (7, 19);
    let mut g = Lcg(3);
    // B stored transposed (a Linear weight W[n, k], B = Wᵀ): rsb = 1, csb = k
    let w = rand_mat(&mut g, k * n);
    let b = QPackedB::quantize(k, n, &w, 1, k);
    for j in 0..n {
        let max = (0..k).map(|p| w[j * k + p].abs()).fold(0f32, f32::max);
        assert_eq!(b.scales()[j], max / 127.0);
        for p in 0..k {
            assert_eq!(
                i32::from(b.get(p, j)),
                q_ref(w[j * k + p], max),
                "({p}, {j})"
            );
        }
        // the largest magnitude maps to ±127
        assert!((0..k).any(|p| b.get(p, j).unsigned_abs() == 127));
    }
    // a zero column: scale 0, zeros
    let z = QPackedB::quantize(3, 2, &[0.0, 1.0, 0.0, -2.0, 0.0, 4.0], 2, 1);
    assert_eq!(z.scales()[0], 0.0);
    assert_eq!((0..3).map(|p| z.get(p, 0)).collect::<Vec<_>>(), [0, 0, 0]);
    assert_eq!(z.get(2, 1), 127);
    // the same weights from their int8 form
    let q: Vec<i8> = (0..k * n).map(|t| b.get(t % k, t / k)).collect();
    let b2 = QPackedB::from_i8(k, n, &q, 1, k, b.scales().to_vec()).unwrap();
    assert_eq!(b2, b);
    assert!(QPackedB::from_i8(k, n, &q, 1, k, vec![1.0; n - 1]).is_err());
    assert!(QPackedB::from_i8(k, n, &q[1..], 1, k, vec![1.0; n]).is_err());
}

#[test]
fn activations_quantize_with_offset_and_padding() {
    let a = [0.5f32, -1.0, 0.25, 1.0, 0.0, -0.004, 0.006];
    let (inv, s) = inv_and_scale(max_abs(1, 7, &a, 7, 1));
    assert_eq!(s, 1.0 / 127.0);
    for isa in [
        crate::isa::Isa::Scalar,
        crate::isa::Isa::Avx2,
        crate::isa::Isa::Avx512,
    ] {
        crate::isa::with_isa(isa, || {
            let mut out = [0u8; 8];
            quantize_a(1, 7, &a, 7, 1, inv, &mut out, 8);
            let want: Vec<u8> = a
                .iter()
                .map(|&x| (q_ref(x, 1.0) + 128) as u8)
                .chain([128])
                .collect();
            assert_eq!(out.to_vec(), want, "{isa:?}");
            assert_eq!(&out[..4], &[192, 1, 160, 255]);
        });
    }
    // strided, and the 16-lane max
    let mut g = Lcg(9);
    let big = rand_mat(&mut g, 3 * 40);
    let want = big.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_eq!(max_abs(3, 40, &big, 40, 1), want);
    assert_eq!(max_abs(40, 3, &big, 1, 40), want);
    assert_eq!(inv_and_scale(0.0), (0.0, 0.0));
    assert_eq!(inv_and_scale(f32::INFINITY), (0.0, 0.0));
}

/// Random `u8` A rows (`q + 128`, pad 128) and a packed B with its naive integer product.
fn problem(
    m: usize,
    n: usize,
    k: usize,
    seed: u64,
    tb: bool,
) -> (Vec<u8>, usize, QPackedB, Vec<i32>) {
    let mut g = Lcg(seed);
    let kp = k.div_ceil(4) * 4;
    let lda = kp + 4;
    let mut a = vec![128u8; m * lda];
    for i in 0..m {
        for p in 0..k {
            // the full range [-127, 127]
            a[i * lda + p] = (128.0 + (g.next() * 127.0).round()) as u8;
        }
    }
    let w = rand_mat(&mut g, k * n);
    let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
    let b = QPackedB::quantize(k, n, &w, rsb, csb);
    let mut want = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let max = (0..k)
                .map(|p| w[p * rsb + j * csb].abs())
                .fold(0f32, f32::max);
            want[i * n + j] = (0..k)
                .map(|p| (i32::from(a[i * lda + p]) - 128) * q_ref(w[p * rsb + j * csb], max))
                .sum();
        }
    }
    (a, lda, b, want)
}

#[test]
fn every_path_matches_the_naive_product_bitwise() {
    let sizes = [1usize, 2, 3, 4, 5, 7, 9, 17, 33];
    let mut seed = 1;
    for &m in &sizes {
        for &(n, k) in &[
            (1usize, 1usize),
            (10, 7),
            (16, 4),
            (17, 33),
            (33, 64),
            (70, 130),
        ] {
            for tb in [false, true] {
                seed += 1;
                let (a, lda, b, want) = problem(m, n, k, seed, tb);
                for isa in QIsa::ALL {
                    let mut c = vec![i32::MIN; m * (n + 3)];
                    qgemm_i32(isa, m, &a, lda, &b, &mut c, n + 3);
                    for i in 0..m {
                        assert_eq!(
                            &c[i * (n + 3)..i * (n + 3) + n],
                            &want[i * n..(i + 1) * n],
                            "{isa:?} m={m} n={n} k={k} tb={tb} row {i}"
                        );
                        // the row padding is untouched
                        assert!(c[i * (n + 3) + n..(i + 1) * (n + 3)]
                            .iter()
                            .all(|&x| x == i32::MIN));
                    }
                }
            }
        }
    }
}

#[test]
fn extreme_values_do_not_saturate() {
    // every product at its largest magnitude: qa = ±127, qb = ±127, k = 1000
    let (m, n, k) = (5usize, 20usize, 1000usize);
    let kp = k.div_ceil(4) * 4;
    for (av, bv) in [(255u8, 1.0f32), (1u8, 1.0), (255, -1.0), (1, -1.0)] {
        let a = vec![av; m * kp];
        let b = QPackedB::quantize(k, n, &vec![bv; k * n], n, 1);
        let want = (i32::from(av) - 128) * 127 * (if bv > 0.0 { 1 } else { -1 }) * k as i32;
        for isa in QIsa::ALL {
            let mut c = vec![0i32; m * n];
            qgemm_i32(isa, m, &a, kp, &b, &mut c, n);
            assert!(c.iter().all(|&x| x == want), "{isa:?}: {} vs {want}", c[0]);
        }
    }
}

#[test]
fn f32_store_dequantizes_and_runs_the_epilogue_once_per_row() {
    let (m, n, k) = (11, 37, 29);
    let (a, lda, b, want) = problem(m, n, k, 77, true);
    let sa = 0.0125f32;
    let cs: Vec<f32> = b.scales().iter().map(|s| sa * s).collect();
    for isa in QIsa::ALL {
        let ldc = n + 1;
        let mut c = vec![f32::NAN; m * ldc];
        let mut calls = vec![0usize; m];
        qgemm(
            isa,
            m,
            &a,
            lda,
            &b,
            &cs,
            &mut c,
            ldc,
            |i, j0, row: &mut [f32]| {
                assert_eq!((j0, row.len()), (0, n));
                for (j, x) in row.iter().enumerate() {
                    assert_eq!(*x, want[i * n + j] as f32 * cs[j], "{isa:?} ({i}, {j})");
                }
                calls[i] += 1;
                row[0] = -1.0;
            },
        );
        assert!(calls.iter().all(|&c| c == 1), "{isa:?}: {calls:?}");
        for i in 0..m {
            assert_eq!(c[i * ldc], -1.0);
            assert!(c[i * ldc + n].is_nan());
        }
    }
}

#[test]
fn dequantized_product_is_close_to_f32() {
    // per-channel weights and a per-tensor activation scale: error bounded by the two
    // quantization steps
    let (m, n, k) = (6, 24, 96);
    let mut g = Lcg(5);
    let x = rand_mat(&mut g, m * k);
    let w = rand_mat(&mut g, n * k);
    let b = QPackedB::quantize(k, n, &w, 1, k);
    let amax = max_abs(m, k, &x, k, 1);
    let (inv, sa) = inv_and_scale(amax);
    let kp = b.k_padded();
    let mut aq = vec![0u8; m * kp];
    quantize_a(m, k, &x, k, 1, inv, &mut aq, kp);
    let cs: Vec<f32> = b.scales().iter().map(|s| sa * s).collect();
    let mut c = vec![0f32; m * n];
    qgemm(QIsa::active(), m, &aq, kp, &b, &cs, &mut c, n, |_, _, _| {});
    for i in 0..m {
        for j in 0..n {
            let exact: f64 = (0..k)
                .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                .sum();
            let wmax = (0..k).map(|p| w[j * k + p].abs()).fold(0f32, f32::max) as f64;
            // |Δ| <= Σ (|x|·sb/2 + |w|·sa/2 + sa·sb/4)
            let bound: f64 = (0..k)
                .map(|p| {
                    (x[i * k + p].abs() as f64) * wmax / 254.0
                        + (w[j * k + p].abs() as f64) * sa as f64 / 2.0
                        + sa as f64 * wmax / 127.0 / 4.0
                })
                .sum();
            let got = c[i * n + j] as f64;
            assert!(
                (got - exact).abs() <= bound * 1.001 + 1e-6,
                "({i}, {j}): {got} vs {exact}, bound {bound}"
            );
        }
    }
}

#[test]
fn activation_paths_agree_on_special_values() {
    // ties (x·inv = ±0.5, 1.5, 2.5), beyond the static range, infinities, NaN; every length
    // up to 40 (masked tails) and row strides with padding
    let mut g = Lcg(21);
    let specials = [
        0.5f32,
        -0.5,
        1.5,
        2.5,
        -2.5,
        300.0,
        -1e30,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -0.0,
    ];
    for k in 1..=40usize {
        let m = 3;
        let rsa = k + 2;
        let a: Vec<f32> = (0..m * rsa)
            .map(|t| {
                if t % 5 == 0 {
                    specials[t % specials.len()]
                } else {
                    g.next() * 200.0
                }
            })
            .collect();
        let inv = 1.0f32;
        let kp = k.div_ceil(4) * 4;
        let mut outs = Vec::new();
        let mut maxes = Vec::new();
        for isa in [
            crate::isa::Isa::Scalar,
            crate::isa::Isa::Avx2,
            crate::isa::Isa::Avx512,
        ] {
            crate::isa::with_isa(isa, || {
                let mut out = vec![7u8; m * kp];
                quantize_a(m, k, &a, rsa, 1, inv, &mut out, kp);
                outs.push(out);
                maxes.push(max_abs(m, k, &a, rsa, 1));
            });
        }
        let want: Vec<u8> = (0..m)
            .flat_map(|i| {
                let a = &a;
                (0..kp).map(move |p| {
                    if p < k {
                        (i32::from(quantize_one(a[i * rsa + p], inv)) + 128) as u8
                    } else {
                        128
                    }
                })
            })
            .collect();
        for o in &outs {
            assert_eq!(o, &want, "k = {k}");
        }
        let wmax = (0..m)
            .flat_map(|i| (0..k).map(move |p| i * rsa + p))
            .map(|t| a[t].abs())
            .filter(|v| !v.is_nan())
            .fold(0f32, f32::max);
        assert!(
            maxes.iter().all(|&x| x == wmax),
            "k = {k}: {maxes:?} vs {wmax}"
        );
    }
    assert_eq!(quantize_one(0.5, 1.0), 0);
    assert_eq!(quantize_one(1.5, 1.0), 2);
    assert_eq!(quantize_one(-2.5, 1.0), -2);
    assert_eq!(quantize_one(f32::NAN, 1.0), 0);
    assert_eq!(quantize_one(1e30, 1.0), 127);
}

#[test]
fn the_detected_path_follows_the_cpu() {
    let d = QIsa::detected();
    println!("qgemm path on this CPU: {d:?}");
    #[cfg(target_arch = "aarch64")]
    assert_eq!(
        d == QIsa::NeonDot,
        std::arch::is_aarch64_feature_detected!("dotprod")
    );
    #[cfg(target_arch = "x86_64")]
    assert!(d != QIsa::NeonDot);
    // a request for another architecture's path runs this CPU's best path
    for isa in QIsa::ALL {
        let c = isa.clamp_to_cpu();
        assert!(c == QIsa::Scalar || c == d || (c < d && d != QIsa::NeonDot));
    }
}
