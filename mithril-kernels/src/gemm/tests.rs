//! Every ISA × path against a naive f64 triple loop: odd sizes, all four transpose
//! combinations, slices offset by one element, accumulate, alpha, k = 0, the epilogue (called
//! exactly once per element, with the right indices), narrow types, threads.
//!
//! Tolerances (the reference uses the exact, already-rounded inputs, so only the summation and
//! the final store round): `|got - ref| <= out_eps·|ref| + acc_eps·(k + 2)·Σ|a·b|` with
//! `acc_eps` = 2⁻²³ (f32 accumulation: f32, f16, bf16) or 2⁻⁵² (f64) and `out_eps` the storage
//! type's unit roundoff (0 for f32/f64, 2⁻¹¹ for f16, 2⁻⁸ for bf16), plus 2⁻²⁵ absolute for
//! f16 (its subnormal spacing).

use super::*;
use std::sync::atomic::{AtomicU32, Ordering};

const SIZES: [usize; 8] = [1, 3, 17, 31, 33, 65, 100, 257];

struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as f64 / (1u64 << 31) as f64) * 2.0 - 1.0
    }
}

trait TestElem: GemmElem {
    const OUT_EPS: f64;
    const ACC_EPS: f64;
    /// Absolute rounding of the storage type near zero (f16 subnormals: half of 2⁻²⁴).
    const OUT_ABS: f64 = 0.0;
    fn of(v: f64) -> Self {
        Self::from_acc(<Self as GemmElem>::Acc::from_f64(v))
    }
    fn f(self) -> f64 {
        self.to_acc().to_f64()
    }
}
impl TestElem for f32 {
    const OUT_EPS: f64 = 0.0;
    const ACC_EPS: f64 = 1.2e-7;
}
impl TestElem for f64 {
    const OUT_EPS: f64 = 0.0;
    const ACC_EPS: f64 = 2.3e-16;
}
impl TestElem for f16 {
    const OUT_EPS: f64 = 4.9e-4;
    const OUT_ABS: f64 = 3.0e-8;
    const ACC_EPS: f64 = 1.2e-7;
}
impl TestElem for bf16 {
    const OUT_EPS: f64 = 3.9e-3;
    const ACC_EPS: f64 = 1.2e-7;
}

#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    ta: bool,
    tb: bool,
    accumulate: bool,
    alpha: f64,
    epilogue: bool,
}

/// Runs one case with `cfg` and checks it; returns C (for equality tests).
fn run_case<T: TestElem>(cfg: GemmConfig, cs: Case, seed: u64) -> Vec<T> {
    let Case {
        m, n, k, ta, tb, ..
    } = cs;
    let mut g = Lcg(seed);
    // A: m×k, stored row-major (rsa = k+1) or transposed (rsa = 1, csa = m+2); offset 1.
    let (rsa, csa, alen) = if ta {
        (1, m + 2, (k.max(1)) * (m + 2))
    } else {
        (k + 1, 1, m * (k + 1))
    };
    let (rsb, csb, blen) = if tb {
        (1, k + 1, n * (k + 1))
    } else {
        (n + 3, 1, k.max(1) * (n + 3))
    };
    let ldc = n + 1;
    let a: Vec<T> = (0..alen + 1).map(|_| T::of(g.next())).collect();
    let b: Vec<T> = (0..blen + 1).map(|_| T::of(g.next())).collect();
    let c0: Vec<T> = (0..m * ldc + 1).map(|_| T::of(g.next())).collect();
    let mut c = c0.clone();
    let counts: Vec<AtomicU32> = (0..m * n).map(|_| AtomicU32::new(0)).collect();
    let epi_f = |i: usize, j: usize, x: f64| x * 0.5 + i as f64 * 0.25 - j as f64 * 0.125;
    let alpha = <T as GemmElem>::Acc::from_f64(cs.alpha);
    if cs.epilogue {
        gemm_with(
            cfg,
            m,
            n,
            k,
            alpha,
            &a[1..],
            rsa,
            csa,
            &b[1..],
            rsb,
            csb,
            cs.accumulate,
            &mut c[1..],
            ldc,
            |i, j, v: &mut [<T as GemmElem>::Acc]| {
                for (t, x) in v.iter_mut().enumerate() {
                    counts[i * n + j + t].fetch_add(1, Ordering::Relaxed);
                    *x = <T as GemmElem>::Acc::from_f64(epi_f(i, j + t, x.to_f64()));
                }
            },
        );
    } else {
        gemm_with(
            cfg,
            m,
            n,
            k,
            alpha,
            &a[1..],
            rsa,
            csa,
            &b[1..],
            rsb,
            csb,
            cs.accumulate,
            &mut c[1..],
            ldc,
            |_, _, _: &mut [<T as GemmElem>::Acc]| {},
        );
    }
    let (a, b) = (&a[1..], &b[1..]);
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0f64, 0f64);
            for p in 0..k {
                let x = a[i * rsa + p * csa].f() * b[p * rsb + j * csb].f();
                s += x;
                sa += x.abs();
            }
            let prev = c0[1 + i * ldc + j].f();
            let mut r = cs.alpha * s + if cs.accumulate { prev } else { 0.0 };
            let mut scale = cs.alpha.abs() * sa + prev.abs();
            if cs.epilogue {
                r = epi_f(i, j, r);
                scale += 1.0 + (i + j) as f64;
                assert_eq!(
                    counts[i * n + j].load(Ordering::Relaxed),
                    1,
                    "epilogue calls at ({i},{j}) {cs:?} {cfg:?}"
                );
            }
            let got = c[1 + i * ldc + j].f();
            let tol =
                T::OUT_EPS * r.abs() + T::ACC_EPS * (k as f64 + 2.0) * scale + T::OUT_ABS + 1e-30;
            assert!(
                (got - r).abs() <= tol,
                "({i},{j}): got {got} want {r} (tol {tol}) {cs:?} {cfg:?}"
            );
        }
        // Padding columns untouched.
        if n < ldc && i + 1 < m {
            assert_eq!(c[1 + i * ldc + n].f(), c0[1 + i * ldc + n].f());
        }
    }
    assert_eq!(c[0].f(), c0[0].f(), "wrote before C");
    c
}

fn isas() -> Vec<Isa> {
    Isa::ALL
        .iter()
        .copied()
        .filter(|&i| i.supported())
        .collect()
}

const PATHS: [Path; 4] = [Path::Auto, Path::Packed, Path::Gemv, Path::Small];

fn sweep<T: TestElem>(sizes: &[usize], big: &[(usize, usize, usize)]) {
    let mut seed = 1;
    for isa in isas() {
        for path in PATHS {
            let cfg = GemmConfig {
                isa: Some(isa),
                threads: Some(1),
                force_split: false,
                path,
            };
            let mut shapes = vec![];
            for &m in sizes {
                for &n in sizes {
                    for &k in sizes {
                        shapes.push((m, n, k));
                    }
                }
            }
            shapes.extend_from_slice(big);
            for (idx, &(m, n, k)) in shapes.iter().enumerate() {
                for t in 0..4 {
                    seed += 1;
                    let variant = (idx + t) % 3;
                    let cs = Case {
                        m,
                        n,
                        k,
                        ta: t & 1 != 0,
                        tb: t & 2 != 0,
                        accumulate: variant == 1,
                        alpha: if variant == 2 { -1.5 } else { 1.0 },
                        epilogue: variant != 0,
                    };
                    run_case::<T>(cfg, cs, seed);
                }
            }
        }
    }
}

const BIG: [(usize, usize, usize); 8] = [
    // m > MC with k > KC (f32: 1024, bf16 pairs: 2048): partial sums over several row blocks
    (40, 33, 2100),
    (65, 100, 257),
    (257, 33, 100),
    (100, 257, 31),
    (300, 70, 600),
    (13, 2100, 5),
    (5, 37, 1100),
    (7, 40, 2100),
];

#[test]
fn f32_all_isas_paths() {
    sweep::<f32>(&[1, 3, 17, 33], &BIG);
    sweep::<f32>(&SIZES, &[]);
}

#[test]
fn f64_all_isas_paths() {
    sweep::<f64>(&[1, 3, 17, 33], &BIG);
}

#[test]
fn f16_all_isas_paths() {
    sweep::<f16>(&[1, 3, 17, 33], &BIG);
}

#[test]
fn bf16_all_isas_paths() {
    sweep::<bf16>(&[1, 2, 3, 17, 33], &BIG);
}

#[test]
fn k_zero_and_empty() {
    for isa in isas() {
        for acc in [false, true] {
            let cfg = GemmConfig {
                isa: Some(isa),
                ..Default::default()
            };
            let cs = Case {
                m: 5,
                n: 7,
                k: 0,
                ta: false,
                tb: false,
                accumulate: acc,
                alpha: 2.0,
                epilogue: true,
            };
            run_case::<f32>(cfg, cs, 9);
            run_case::<bf16>(cfg, cs, 9);
        }
    }
    // m or n == 0: no-op even with empty slices.
    let mut c: Vec<f32> = vec![];
    gemm_plain::<f32>(0, 5, 3, 1.0, &[], 3, 1, &[0.0; 15], 5, 1, false, &mut c, 5);
    gemm_plain::<f32>(4, 0, 3, 1.0, &[0.0; 12], 3, 1, &[], 0, 1, false, &mut c, 0);
}

#[test]
fn threaded_equals_single() {
    for isa in isas() {
        for (m, n, k) in [(257, 65, 300), (40, 301, 70), (3, 500, 20), (700, 700, 40)] {
            for t in 0..4 {
                let cs = Case {
                    m,
                    n,
                    k,
                    ta: t & 1 != 0,
                    tb: t & 2 != 0,
                    accumulate: t == 1,
                    alpha: 1.0,
                    epilogue: true,
                };
                let one = GemmConfig {
                    isa: Some(isa),
                    threads: Some(1),
                    force_split: false,
                    path: Path::Packed,
                };
                let c1 = run_case::<f32>(one, cs, 77);
                for threads in [2, 3] {
                    let many = GemmConfig {
                        threads: Some(threads),
                        force_split: true,
                        ..one
                    };
                    let c2 = run_case::<f32>(many, cs, 77);
                    assert!(c1 == c2, "threads {threads} differ {cs:?} {isa:?}");
                }
                let b1 = run_case::<bf16>(one, cs, 78);
                let b2 = run_case::<bf16>(
                    GemmConfig {
                        threads: Some(2),
                        force_split: true,
                        ..one
                    },
                    cs,
                    78,
                );
                assert!(b1 == b2);
            }
        }
    }
}

#[test]
fn batched_loops() {
    let (m, n, k, batch) = (3, 4, 5, 3);
    let a: Vec<f32> = (0..batch * m * k).map(|x| x as f32 * 0.1).collect();
    let b: Vec<f32> = (0..batch * k * n).map(|x| 1.0 - x as f32 * 0.05).collect();
    let mut c = vec![0f32; batch * m * n];
    gemm_batched(
        batch,
        m,
        n,
        k,
        1.0,
        &a,
        m * k,
        k,
        1,
        &b,
        k * n,
        n,
        1,
        false,
        &mut c,
        m * n,
        n,
        |t, _, _, v: &mut [f32]| v.iter_mut().for_each(|x| *x += t as f32),
    );
    for t in 0..batch {
        for i in 0..m {
            for j in 0..n {
                let s: f32 = (0..k)
                    .map(|p| a[t * m * k + i * k + p] * b[t * k * n + p * n + j])
                    .sum::<f32>()
                    + t as f32;
                assert!((c[t * m * n + i * n + j] - s).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn batch1_linear_layout() {
    // [1,784]·W[256,784]ᵀ: the batch-1 MLP layer (rsb = 1, csb = 784) plus bias + relu.
    let (k, n) = (784, 256);
    let mut g = Lcg(5);
    let x: Vec<f32> = (0..k).map(|_| g.next() as f32).collect();
    let w: Vec<f32> = (0..n * k).map(|_| g.next() as f32).collect();
    let bias: Vec<f32> = (0..n).map(|_| g.next() as f32).collect();
    for isa in isas() {
        let mut y = vec![0f32; n];
        gemm_with(
            GemmConfig {
                isa: Some(isa),
                ..Default::default()
            },
            1,
            n,
            k,
            1.0,
            &x,
            k,
            1,
            &w,
            1,
            k,
            false,
            &mut y,
            n,
            |_, j, v: &mut [f32]| {
                for (o, bb) in v.iter_mut().zip(&bias[j..]) {
                    *o = (*o + *bb).max(0.0)
                }
            },
        );
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| x[p] as f64 * w[j * k + p] as f64)
                .sum::<f64>()
                + bias[j] as f64;
            assert!((y[j] as f64 - s.max(0.0)).abs() < 1e-3, "{isa:?} {j}");
        }
    }
}

#[test]
fn call_thread_limit_reaches_the_kernel_and_nests() {
    let (m, n, k) = (8, 8, 8);
    let a = vec![1.0f32; m * k];
    let b = vec![1.0f32; k * n];
    let mut c = vec![0.0f32; m * n];
    let run = |c: &mut [f32]| gemm_plain(m, n, k, 1.0, &a, k, 1, &b, n, 1, false, c, n);
    run(&mut c);
    assert_eq!(last_call_threads(), num_threads());
    assert_eq!(num_threads_for_call(), num_threads());
    {
        let _one = limit_call_threads(1);
        assert_eq!(num_threads_for_call(), 1);
        run(&mut c);
        assert_eq!(last_call_threads(), 1);
        {
            // a larger inner cap never exceeds the pool size
            let _big = limit_call_threads(usize::MAX);
            assert_eq!(num_threads_for_call(), num_threads());
        }
        assert_eq!(num_threads_for_call(), 1);
        // another thread is not affected
        let other = std::thread::spawn(num_threads_for_call).join().unwrap();
        assert_eq!(other, num_threads());
    }
    run(&mut c);
    assert_eq!(last_call_threads(), num_threads());
    // an explicit GemmConfig::threads wins over the cap
    let _one = limit_call_threads(1);
    gemm_with(
        GemmConfig {
            threads: Some(3),
            ..Default::default()
        },
        m,
        n,
        k,
        1.0,
        &a,
        k,
        1,
        &b,
        n,
        1,
        false,
        &mut c,
        n,
        |_, _, _: &mut [f32]| {},
    );
    assert_eq!(last_call_threads(), 3);
    assert!(c.iter().all(|&x| x == 8.0));
}

#[test]
fn mithril_threads_sets_the_default() {
    assert_eq!(default_threads(Some("3"), 16), 3);
    assert_eq!(default_threads(Some(" 1 "), 16), 1);
    for bad in ["0", "-2", "two", ""] {
        assert_eq!(default_threads(Some(bad), 16), 16, "{bad:?}");
    }
    assert_eq!(default_threads(None, 16), 16);
}

/// Run by [`mithril_threads_reaches_num_threads`] in a child process with the variable set.
#[test]
fn mithril_threads_child() {
    if std::env::var_os("MITHRIL_THREADS_TEST_CHILD").is_some() {
        assert_eq!(num_threads(), 3);
        set_num_threads(2);
        assert_eq!(num_threads(), 2);
        set_num_threads(0);
        assert_eq!(num_threads(), 3);
    }
}

#[test]
fn mithril_threads_reaches_num_threads() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "gemm::tests::mithril_threads_child",
            "--exact",
            "--nocapture",
        ])
        .env("MITHRIL_THREADS", "3")
        .env("MITHRIL_THREADS_TEST_CHILD", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A split GEMM runs every part — its epilogue included — under the calling thread's ISA
/// choice, also on the pool threads (`cpu: { simd: .. }` forces a whole call).
#[test]
fn pool_threads_run_under_the_callers_isa_choice() {
    let (m, n, k) = (64, 64, 32);
    let a = vec![1.0f32; m * k];
    let b = vec![1.0f32; k * n];
    // the pool runs a call's parts on the caller when another test's GEMM holds it: try until
    // a call had the pool (every call's parts must run under the caller's choice)
    let mut pooled = false;
    for _ in 0..200 {
        let mut c = vec![0.0f32; m * n];
        let seen = std::sync::Mutex::new(Vec::new());
        crate::isa::with_isa(crate::isa::Isa::Scalar, || {
            gemm_with(
                GemmConfig {
                    threads: Some(2),
                    force_split: true,
                    ..Default::default()
                },
                m,
                n,
                k,
                1.0,
                &a,
                k,
                1,
                &b,
                n,
                1,
                false,
                &mut c,
                n,
                |_, _, _: &mut [f32]| {
                    seen.lock()
                        .unwrap()
                        .push((std::thread::current().id(), crate::isa::active()));
                },
            );
        });
        let seen = seen.into_inner().unwrap();
        assert!(!seen.is_empty());
        assert!(
            seen.iter().all(|&(_, i)| i == crate::isa::Isa::Scalar),
            "{seen:?}"
        );
        assert!(c.iter().all(|&x| x == k as f32));
        let me = std::thread::current().id();
        pooled = seen.iter().any(|&(t, _)| t != me);
        if pooled || num_threads() <= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(
        pooled || num_threads() <= 1,
        "no part ran on a pool thread in 200 calls"
    );
}

#[test]
fn bf16_batch1_dot_gemv_long_k() {
    // m = 1 with a transposed B (the `x · Wᵀ` of a bf16 `Linear`): the `vdpbf16ps` GEMV where
    // the CPU has AVX512_BF16 — 64-k steps, 32-k masked tails, row blocks of 8, 4 and 1
    let mut seed = 500;
    for isa in isas() {
        for (n, k) in [(70, 64), (13, 100), (9, 785), (64, 256), (3, 31)] {
            for accumulate in [false, true] {
                seed += 1;
                let cfg = GemmConfig {
                    isa: Some(isa),
                    threads: Some(1),
                    force_split: false,
                    path: Path::Auto,
                };
                let cs = Case {
                    m: 1,
                    n,
                    k,
                    ta: false,
                    tb: true,
                    accumulate,
                    alpha: if accumulate { -1.5 } else { 1.0 },
                    epilogue: true,
                };
                run_case::<bf16>(cfg, cs, seed);
            }
        }
    }
}

/// A B packed once ([`pack_b`]) gives bitwise the per-call packing's C: every ISA, f32 /
/// bf16 / f16 / f64, B plain and transposed (`Wᵀ`), with and without epilogue and
/// accumulation, K over several K blocks, N not a multiple of the tile, one thread and a
/// forced column split; and a pack is ignored (not misread) by a call on another B.
#[test]
fn prepacked_b_is_bitwise_the_per_call_pack() {
    fn check<T: TestElem>(isa: Isa, (m, n, k): (usize, usize, usize), tb: bool, seed: u64) {
        let mut g = Lcg(seed);
        let a: Vec<T> = (0..m * k).map(|_| T::of(g.next())).collect();
        let b: Vec<T> = (0..k * n).map(|_| T::of(g.next())).collect();
        let other: Vec<T> = (0..k * n).map(|_| T::of(g.next())).collect();
        let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
        let c0: Vec<T> = (0..m * n).map(|_| T::of(g.next())).collect();
        let bias: Vec<f64> = (0..n).map(|_| g.next()).collect();
        for threads in [1, 2] {
            let cfg = GemmConfig {
                isa: Some(isa),
                threads: Some(threads),
                force_split: threads > 1,
                path: Path::Auto,
            };
            let p = pack_b_with(cfg, k, n, &b, rsb, csb);
            for (acc, epi) in [(false, false), (true, true), (false, true)] {
                let run = |bb: &[T], pre: Option<&PackedB<T>>| {
                    let mut c = c0.clone();
                    let e = |_i: usize, j: usize, v: &mut [T::Acc]| {
                        for (t, x) in v.iter_mut().enumerate() {
                            let y = x.to_f64() + bias[j + t];
                            *x = T::Acc::from_f64(if y > 0.0 { y } else { 0.1 * y });
                        }
                    };
                    gemm_impl(
                        cfg,
                        m,
                        n,
                        k,
                        T::Acc::ONE,
                        (&a, k, 1),
                        (bb, rsb, csb),
                        acc,
                        (&mut c, n),
                        &e,
                        epi,
                        pre,
                    );
                    c.iter().map(|x| x.f().to_bits()).collect::<Vec<_>>()
                };
                let what =
                    format!("{isa:?} {m}x{n}x{k} tb {tb} threads {threads} acc {acc} epi {epi}");
                let before = prepacked_calls();
                let with = run(&b, Some(&p));
                // the packed path read the pack (the GEMV and the small path pack nothing)
                let small = m * n * k <= SMALL_MAX_VOLUME
                    && csb == 1
                    && cfg!(target_arch = "x86_64")
                    && isa >= Isa::Avx2
                    && std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>();
                let used = prepacked_calls() - before == 1;
                assert_eq!(used, m > 4 && !small, "{what}");
                assert_eq!(with, run(&b, None), "{what}");
                // a pack of `b` handed to a call on `other`: the call packs `other` itself
                assert_eq!(run(&other, Some(&p)), run(&other, None), "{what} (other B)");
            }
        }
    }
    // rows over several MC blocks; K over several K blocks (x86: f32 1024, bf16 pairs 2048;
    // NEON: 96 rows, 256 k, so smaller shapes cover the same cases there — they run under
    // qemu in CI); edge columns; the GEMV path
    let shapes: &[(usize, usize, usize)] = if cfg!(target_arch = "aarch64") {
        &[(100, 24, 40), (13, 33, 300), (3, 40, 50)]
    } else {
        &[(50, 100, 256), (13, 33, 2100), (100, 65, 40), (3, 40, 50)]
    };
    let mut seed = 500;
    for isa in isas() {
        for &sh in shapes {
            for tb in [false, true] {
                seed += 1;
                check::<f32>(isa, sh, tb, seed);
                check::<bf16>(isa, sh, tb, seed);
                check::<f16>(isa, sh, tb, seed);
                check::<f64>(isa, sh, tb, seed);
            }
        }
    }
    // the pack itself is not empty and a different-shape call ignores it
    let b = vec![1.0f32; 64 * 64];
    let p = pack_b(64, 64, &b, 64, 1);
    assert!(p.bytes() >= 64 * 64 * 4);
    let a = vec![1.0f32; 64 * 64];
    let mut c = vec![0.0f32; 64 * 32];
    gemm_plain_prepacked(64, 32, 64, 1.0, &a, 64, 1, &b, 64, 1, &p, false, &mut c, 32);
    assert!(c.iter().all(|&x| x == 64.0));
}

/// The batch-1 bf16 GEMV (`m = 1`, `x · Wᵀ`) in the order every path shares
/// (`gemv::reduce_bf16_lanes`), written out independently: 16 lanes per row, lane `i` adding
/// the odd then the even product of the k-pair `(p + 2i, p + 2i + 1)` of each 32-k step.
fn bf16_gemv1_model(x: &[bf16], w: &[bf16], so: usize, n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|j| {
            let mut lane = [0f32; 16];
            for p in (0..k).step_by(32) {
                for (i, l) in lane.iter_mut().enumerate() {
                    for q in [p + 2 * i + 1, p + 2 * i] {
                        if q < k {
                            *l += x[q].to_f32() * w[j * so + q].to_f32();
                        } else {
                            *l += 0.0;
                        }
                    }
                }
            }
            let q: Vec<f32> = (0..4)
                .map(|t| (lane[4 * t] + lane[4 * t + 2]) + (lane[4 * t + 1] + lane[4 * t + 3]))
                .collect();
            (q[0] + q[1]) + (q[2] + q[3])
        })
        .collect()
}

#[test]
fn bf16_batch1_gemv_is_bitwise_the_same_on_every_isa() {
    // The f32 sums (seen by the epilogue) of every ISA's path — `vdpbf16ps`, widening on
    // AVX2 / NEON, the scalar loop — against the model above, bitwise; then the whole call
    // (alpha, accumulate, epilogue, the bf16 store) against the scalar ISA's, bitwise.
    let mut g = Lcg(900);
    for (n, k) in [
        (70, 64),
        (13, 100),
        (9, 785),
        (64, 256),
        (3, 31),
        (33, 1),
        (21, 32),
    ] {
        let so = k + 3;
        let x: Vec<bf16> = (0..k).map(|_| bf16::of(g.next())).collect();
        let w: Vec<bf16> = (0..n * so).map(|_| bf16::of(g.next())).collect();
        let c0: Vec<bf16> = (0..n).map(|_| bf16::of(g.next())).collect();
        let want = bf16_gemv1_model(&x, &w, so, n, k);
        let mut whole: Vec<(Isa, Vec<bf16>)> = Vec::new();
        for isa in isas() {
            let cfg = GemmConfig {
                isa: Some(isa),
                threads: Some(1),
                force_split: false,
                path: Path::Auto,
            };
            let sums = std::sync::Mutex::new(vec![f32::NAN; n]);
            let mut c = c0.clone();
            gemm_with(
                cfg,
                1,
                n,
                k,
                1.0,
                &x,
                k,
                1,
                &w,
                1,
                so,
                false,
                &mut c,
                n,
                |i, j, v: &mut [f32]| {
                    assert_eq!(i, 0);
                    sums.lock().unwrap()[j..j + v.len()].copy_from_slice(v);
                },
            );
            let sums = sums.into_inner().unwrap();
            for j in 0..n {
                assert_eq!(
                    sums[j].to_bits(),
                    want[j].to_bits(),
                    "{isa:?} n={n} k={k} row {j}: {} vs the model's {}",
                    sums[j],
                    want[j]
                );
            }
            let mut c = c0.clone();
            gemm_with(
                cfg,
                1,
                n,
                k,
                -1.5,
                &x,
                k,
                1,
                &w,
                1,
                so,
                true,
                &mut c,
                n,
                |_, j, v: &mut [f32]| {
                    for (t, y) in v.iter_mut().enumerate() {
                        *y = (*y * 0.5 - (j + t) as f32 * 0.125).max(-0.75);
                    }
                },
            );
            whole.push((isa, c));
        }
        let (i0, c0) = &whole[0];
        for (isa, c) in &whole[1..] {
            let (a, b): (Vec<u16>, Vec<u16>) = (
                c.iter().map(|v| v.to_bits()).collect(),
                c0.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(a, b, "{isa:?} against {i0:?}, n={n} k={k}");
        }
    }
}

/// The AVX-512 row-major-A `f32` path (`rows.rs`: A read in place or copied without a
/// transpose, full tiles stored from the registers, the epilogue per 12 × 256 block) gives
/// bitwise the packed path's C: A in place and copied, the encoder's shapes (`M = 128`, a row
/// stride of 4 KiB among them), edge rows and columns, K over several K blocks, alpha,
/// accumulate, the epilogue (once per element), a prepacked B, and a forced column split.
#[cfg(target_arch = "x86_64")]
#[test]
fn rows_path_is_bitwise_the_packed_path() {
    use super::rows::MODE;
    if !Isa::Avx512.supported() {
        println!("SKIPPED rows_path_is_bitwise_the_packed_path: no AVX-512");
        return;
    }
    let shapes = [
        (128, 256, 1024),
        (128, 768, 256),
        (37, 70, 2100),
        (12, 32, 16),
        (25, 300, 33),
        (5, 17, 7),
    ];
    let mut seed = 900;
    for &(m, n, k) in &shapes {
        seed += 1;
        let mut g = Lcg(seed);
        let a: Vec<f32> = (0..m * k).map(|_| g.next() as f32).collect();
        let w: Vec<f32> = (0..k * n).map(|_| g.next() as f32).collect();
        let c0: Vec<f32> = (0..m * n).map(|_| g.next() as f32).collect();
        let bias: Vec<f32> = (0..n).map(|_| g.next() as f32).collect();
        for threads in [1, 2] {
            let cfg = GemmConfig {
                isa: Some(Isa::Avx512),
                threads: Some(threads),
                force_split: threads > 1,
                path: Path::Packed,
            };
            // B = Wᵀ (the Linear layout) and a row-major B
            for tb in [true, false] {
                let (rsb, csb) = if tb { (1, k) } else { (n, 1) };
                let p = pack_b_with(cfg, k, n, &w, rsb, csb);
                for (alpha, acc, epi) in [
                    (1.0, false, true),
                    (1.0, true, false),
                    (-1.5, false, true),
                    (1.0, false, false),
                ] {
                    let run = |mode: u8, pre: Option<&PackedB<f32>>| {
                        let mut c = c0.clone();
                        let counts: Vec<AtomicU32> =
                            (0..m * n).map(|_| AtomicU32::new(0)).collect();
                        let e = |i: usize, j: usize, v: &mut [f32]| {
                            for (t, x) in v.iter_mut().enumerate() {
                                counts[i * n + j + t].fetch_add(1, Ordering::Relaxed);
                                *x = (*x + bias[j + t]).max(0.1 * *x);
                            }
                        };
                        MODE.with(|c| c.set(mode));
                        // the pool threads run with mode 0 (automatic): a split checks the
                        // automatic choice on its parts
                        gemm_impl(
                            cfg,
                            m,
                            n,
                            k,
                            alpha,
                            (&a, k, 1),
                            (&w, rsb, csb),
                            acc,
                            (&mut c, n),
                            &e,
                            epi,
                            pre,
                        );
                        MODE.with(|c| c.set(0));
                        if epi {
                            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
                        }
                        c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
                    };
                    let what = format!(
                        "{m}x{n}x{k} threads {threads} tb {tb} alpha {alpha} acc {acc} epi {epi}"
                    );
                    let old = run(1, None);
                    for mode in [0, 2, 3] {
                        assert_eq!(run(mode, None), old, "{what} mode {mode}");
                        assert_eq!(run(mode, Some(&p)), old, "{what} mode {mode} prepacked");
                    }
                }
            }
        }
    }
}
