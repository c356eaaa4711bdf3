//! The tiled kernels against a naive f64 reference (full score matrix, softmax, products) on odd
//! sizes that cross tile edges, on every ISA path this CPU has.

use super::*;
use crate::isa::{self, Isa};

/// A small deterministic generator (xorshift) in [-1, 1).
fn data(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect()
}

enum RefMask<'a> {
    None,
    Add(&'a [f64]),
    Bool(&'a [bool]),
}

/// Naive attention in f64 with a full `[sq, sk]` mask per (b, h) (given dense), returning the
/// output, the probabilities and the logits.
fn naive(
    dm: &Dims,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: &RefMask<'_>,
    causal: bool,
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    } = *dm;
    let mut out = vec![0.0; batch * hq * sq * dv];
    let mut probs = vec![0.0; batch * hq * sq * sk];
    for b in 0..batch {
        for h in 0..hq {
            let bh = b * hq + h;
            let g = b * hkv + h / (hq / hkv);
            for i in 0..sq {
                let mut s = vec![f64::NEG_INFINITY; sk];
                for (j, sj) in s.iter_mut().enumerate() {
                    let mut dot = 0.0;
                    for c in 0..d {
                        dot += q[(bh * sq + i) * d + c] * k[(g * sk + j) * d + c];
                    }
                    let at = (bh * sq + i) * sk + j;
                    let keep = !(causal && j > i)
                        && match mask {
                            RefMask::Bool(m) => m[at],
                            _ => true,
                        };
                    if keep {
                        *sj = dot * scale
                            + match mask {
                                RefMask::Add(m) => m[at],
                                _ => 0.0,
                            };
                    }
                }
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|&x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for j in 0..sk {
                    let p = e[j] / z;
                    probs[(bh * sq + i) * sk + j] = p;
                    for c in 0..dv {
                        out[(bh * sq + i) * dv + c] += p * v[(g * sk + j) * dv + c];
                    }
                }
            }
        }
    }
    (out, probs)
}

/// The dense dropout factors of the `[batch, hq, sq, sk]` weights (0 or `1 / (1 - p)`), drawn
/// element by element with `philox::element_bits` (1 everywhere without dropout).
fn dense_drop(n: usize, drop: Option<Dropout>) -> Vec<f64> {
    (0..n)
        .map(|i| match drop {
            None => 1.0,
            Some(z) => match crate::philox::threshold(z.p) {
                Some(t) if crate::philox::element_bits(z.seed, z.op, i as u64) >= t => {
                    1.0 / (1.0 - z.p)
                }
                _ => 0.0,
            },
        })
        .collect()
}

/// The output `(Z ∘ P)·V` from the probabilities and the dropout factors `z`.
fn naive_dropped(dm: &Dims, v: &[f64], probs: &[f64], z: &[f64]) -> Vec<f64> {
    let Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        dv,
        ..
    } = *dm;
    let mut out = vec![0.0; batch * hq * sq * dv];
    for b in 0..batch {
        for h in 0..hq {
            let bh = b * hq + h;
            let g = b * hkv + h / (hq / hkv);
            for i in 0..sq {
                for j in 0..sk {
                    let w = probs[(bh * sq + i) * sk + j] * z[(bh * sq + i) * sk + j];
                    for c in 0..dv {
                        out[(bh * sq + i) * dv + c] += w * v[(g * sk + j) * dv + c];
                    }
                }
            }
        }
    }
    out
}

/// Naive gradients from the probabilities and the dropout factors `z` (the weights are
/// `z ∘ probs`): (dq, dk, dv, ds).
#[allow(clippy::too_many_arguments)]
fn naive_grad(
    dm: &Dims,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    probs: &[f64],
    z: &[f64],
    go: &[f64],
    scale: f64,
) -> [Vec<f64>; 4] {
    let Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    } = *dm;
    let mut dq = vec![0.0; batch * hq * sq * d];
    let mut dk = vec![0.0; batch * hkv * sk * d];
    let mut dvv = vec![0.0; batch * hkv * sk * dv];
    let mut ds = vec![0.0; batch * hq * sq * sk];
    for b in 0..batch {
        for h in 0..hq {
            let bh = b * hq + h;
            let g = b * hkv + h / (hq / hkv);
            for i in 0..sq {
                let p = &probs[(bh * sq + i) * sk..(bh * sq + i + 1) * sk];
                let zr = &z[(bh * sq + i) * sk..(bh * sq + i + 1) * sk];
                // the gradient of the softmax output: dropout's factor times dO·V
                let dp: Vec<f64> = (0..sk)
                    .map(|j| {
                        zr[j]
                            * (0..dv)
                                .map(|c| go[(bh * sq + i) * dv + c] * v[(g * sk + j) * dv + c])
                                .sum::<f64>()
                    })
                    .collect();
                let dot: f64 = (0..sk).map(|j| p[j] * dp[j]).sum();
                for j in 0..sk {
                    let dsj = p[j] * (dp[j] - dot);
                    ds[(bh * sq + i) * sk + j] = dsj;
                    for c in 0..dv {
                        dvv[(g * sk + j) * dv + c] += p[j] * zr[j] * go[(bh * sq + i) * dv + c];
                    }
                    for c in 0..d {
                        dq[(bh * sq + i) * d + c] += scale * dsj * k[(g * sk + j) * d + c];
                        dk[(g * sk + j) * d + c] += scale * dsj * q[(bh * sq + i) * d + c];
                    }
                }
            }
        }
    }
    [dq, dk, dvv, ds]
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

struct Case {
    dims: Dims,
    causal: bool,
    mask: u8, // 0 none, 1 additive (full), 2 bool (broadcast over heads and rows: [sk])
}

fn run_case<T: AttnElem + Into<f64>>(c: &Case, tol: f64, isa: Isa) {
    run_case_dropout::<T>(c, tol, isa, None)
}

fn run_case_dropout<T: AttnElem + Into<f64>>(c: &Case, tol: f64, isa: Isa, drop: Option<Dropout>) {
    let dm = c.dims;
    let nq = dm.batch * dm.hq * dm.sq * dm.d;
    let nk = dm.batch * dm.hkv * dm.sk * dm.d;
    let nv = dm.batch * dm.hkv * dm.sk * dm.dv;
    let no = dm.batch * dm.hq * dm.sq * dm.dv;
    let ns = dm.batch * dm.hq * dm.sq * dm.sk;
    let (q, k, v, go) = (data(nq, 1), data(nk, 2), data(nv, 3), data(no, 4));
    let add: Vec<f64> = data(ns, 5).iter().map(|x| 2.0 * x).collect();
    // a bool mask over keys only, shared by every (b, h, i); key 0 always visible
    let keys: Vec<bool> = (0..dm.sk).map(|j| j == 0 || j % 3 != 1).collect();
    let dense_bool: Vec<bool> = (0..ns).map(|x| keys[x % dm.sk]).collect();
    let scale = 1.0 / (dm.d as f64).sqrt();
    let rm = match c.mask {
        1 => RefMask::Add(&add),
        2 => RefMask::Bool(&dense_bool),
        _ => RefMask::None,
    };
    let (want, probs) = naive(&dm, &q, &k, &v, &rm, c.causal, scale);
    let z = dense_drop(ns, drop);
    let want = if drop.is_some() {
        naive_dropped(&dm, &v, &probs, &z)
    } else {
        want
    };
    let [gq, gk, gv, gs] = naive_grad(&dm, &q, &k, &v, &probs, &z, &go, scale);
    let cv = |x: &[f64]| x.iter().map(|&a| T::of(a)).collect::<Vec<T>>();
    let (tq, tk, tv, tgo, tadd) = (cv(&q), cv(&k), cv(&v), cv(&go), cv(&add));
    let offs_full: Vec<usize> = (0..dm.batch * dm.hq).map(|bh| bh * dm.sq * dm.sk).collect();
    let offs_zero = vec![0usize; dm.batch * dm.hq];
    let mask = match c.mask {
        1 => Mask::Add(MaskView {
            data: &tadd,
            offs: &offs_full,
            si: dm.sk,
            sj: 1,
        }),
        2 => Mask::Bool(MaskView {
            data: &keys,
            offs: &offs_zero,
            si: 0,
            sj: 1,
        }),
        _ => Mask::None,
    };
    let up = |x: &[T]| x.iter().map(|&a| a.into()).collect::<Vec<f64>>();
    isa::with_isa(isa, || {
        let mut out = vec![T::ZERO; no];
        let mut lse = vec![T::ZERO; dm.batch * dm.hq * dm.sq];
        forward_dropout(
            &dm,
            &tq,
            &tk,
            &tv,
            mask,
            c.causal,
            scale,
            drop,
            &mut out,
            Some(&mut lse),
        );
        close("out", &up(&out), &want, tol);
        // the output of the kernel, not the reference, feeds its backward (as in a model)
        let o = out.clone();
        let (mut dq, mut dk, mut dv) = (vec![T::ZERO; nq], vec![T::ZERO; nk], vec![T::ZERO; nv]);
        let mut ds = vec![T::ZERO; ns];
        let want_all = Want { q: true, kv: true };
        backward_dropout(
            &dm,
            &tq,
            &tk,
            &tv,
            mask,
            c.causal,
            scale,
            drop,
            &o,
            &tgo,
            want_all,
            &mut dq,
            &mut dk,
            &mut dv,
            Some(&mut ds),
        );
        close("dq", &up(&dq), &gq, tol);
        close("dk", &up(&dk), &gk, tol);
        close("dv", &up(&dv), &gv, tol);
        close("ds", &up(&ds), &gs, tol);
        // asking for dq alone gives the same dq
        let mut dq2 = vec![T::ZERO; nq];
        backward_dropout(
            &dm,
            &tq,
            &tk,
            &tv,
            mask,
            c.causal,
            scale,
            drop,
            &o,
            &tgo,
            Want { q: true, kv: false },
            &mut dq2,
            &mut [],
            &mut [],
            None,
        );
        assert_eq!(up(&dq2), up(&dq));
    });
}

fn cases() -> Vec<Case> {
    let dims = |batch, hq, hkv, sq, sk, d, dv| Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    };
    vec![
        // crosses both tile edges (BR = 72, BC = 128), odd head dims
        Case {
            dims: dims(1, 1, 1, 75, 131, 7, 5),
            causal: false,
            mask: 0,
        },
        Case {
            dims: dims(2, 2, 2, 77, 77, 9, 9),
            causal: true,
            mask: 0,
        },
        // GQA: 4 query heads on 2 key/value heads, causal with sk > sq
        Case {
            dims: dims(1, 4, 2, 13, 150, 8, 3),
            causal: true,
            mask: 1,
        },
        Case {
            dims: dims(2, 3, 1, 5, 9, 4, 6),
            causal: false,
            mask: 2,
        },
        Case {
            dims: dims(1, 2, 1, 130, 130, 16, 16),
            causal: true,
            mask: 2,
        },
    ]
}

#[test]
fn attention_matches_naive_on_every_path_f64() {
    for isa in Isa::available() {
        for c in cases() {
            run_case::<f64>(&c, 1e-11, isa);
        }
    }
}

#[test]
fn attention_matches_naive_on_every_path_f32() {
    for isa in Isa::available() {
        for c in cases() {
            run_case::<f32>(&c, 2e-5, isa);
        }
    }
}

/// The ISA paths agree with each other to rounding (the row updates are the same arithmetic;
/// the GEMM paths may sum in another order).
#[test]
fn attention_paths_agree_f32() {
    let dm = Dims {
        batch: 1,
        hq: 2,
        hkv: 1,
        sq: 77,
        sk: 140,
        d: 12,
        dv: 12,
    };
    let q: Vec<f32> = data(2 * 77 * 12, 7).iter().map(|&x| x as f32).collect();
    let k: Vec<f32> = data(140 * 12, 8).iter().map(|&x| x as f32).collect();
    let v: Vec<f32> = data(140 * 12, 9).iter().map(|&x| x as f32).collect();
    let run = |isa| {
        isa::with_isa(isa, || {
            let mut out = vec![0f32; 2 * 77 * 12];
            forward(&dm, &q, &k, &v, Mask::None, true, 0.3, &mut out, None);
            out
        })
    };
    let base = run(Isa::Scalar);
    for isa in Isa::available() {
        let o = run(isa);
        for (a, b) in o.iter().zip(&base) {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                "{isa:?}: {a} vs {b}"
            );
        }
    }
}

/// A fully masked row gives NaN (as PyTorch), and its gradient is 0.
#[test]
fn fully_masked_row_is_nan() {
    let dm = Dims {
        batch: 1,
        hq: 1,
        hkv: 1,
        sq: 2,
        sk: 3,
        d: 2,
        dv: 2,
    };
    let keys = [false, false, false, true, true, false];
    let offs = [0usize];
    let m = Mask::Bool(MaskView {
        data: &keys,
        offs: &offs,
        si: 3,
        sj: 1,
    });
    let (q, k, v) = ([1.0f64; 4], [0.5f64; 6], [2.0f64, 1.0, 3.0, 1.0, 4.0, 1.0]);
    let mut out = [0.0f64; 4];
    forward(&dm, &q, &k, &v, m, false, 1.0, &mut out, None);
    assert!(out[0].is_nan() && out[1].is_nan());
    // row 1 sees keys 0 and 1 with equal scores: the mean of their values
    assert_eq!(&out[2..], &[2.5, 1.0]);
}

/// Dropout on the weights: the kernels against the naive reference that builds the whole
/// weight matrix and multiplies it by the mask drawn element by element (forward and every
/// gradient), on every path, tile edges crossed; `p = 1` drops every weight.
#[test]
fn attention_dropout_matches_naive_on_every_path() {
    for isa in Isa::available() {
        for (n, c) in cases().iter().enumerate() {
            let drop = Dropout {
                p: [0.3, 0.5, 0.1][n % 3],
                seed: 0x1234_5678_9abc + n as u64,
                op: n as u32,
            };
            run_case_dropout::<f64>(c, 1e-11, isa, Some(drop));
            run_case_dropout::<f32>(c, 2e-5, isa, Some(drop));
        }
        let all = Dropout {
            p: 1.0,
            seed: 3,
            op: 0,
        };
        run_case_dropout::<f64>(&cases()[0], 1e-11, isa, Some(all));
    }
}

/// The mask is keyed by the seed and the op: another seed or op gives another output.
#[test]
fn attention_dropout_depends_on_seed_and_op() {
    let dm = Dims {
        batch: 1,
        hq: 1,
        hkv: 1,
        sq: 9,
        sk: 11,
        d: 4,
        dv: 4,
    };
    let (q, k, v) = (data(36, 1), data(44, 2), data(44, 3));
    let run = |seed, op| {
        let mut out = vec![0.0f64; 36];
        let z = Dropout { p: 0.5, seed, op };
        forward_dropout(
            &dm,
            &q,
            &k,
            &v,
            Mask::None,
            false,
            0.5,
            Some(z),
            &mut out,
            None,
        );
        out
    };
    assert_eq!(run(1, 0), run(1, 0));
    assert_ne!(run(1, 0), run(2, 0));
    assert_ne!(run(1, 0), run(1, 1));
}

/// The cost of dropout on the weights (a measurement, not a check): causal attention at
/// seq 512, head_dim 64, 4 heads, f32, forward and backward (dq, dk, dv) with and without
/// dropout, medians of thread CPU time over repeated runs on this CPU's best path:
/// `cargo test -p mithril-kernels --lib attention_dropout_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn attention_dropout_cost() {
    fn cpu_ns() -> u128 {
        let mut t = libc_timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes the timespec it is given
        unsafe { clock_gettime(3, &mut t) }; // CLOCK_THREAD_CPUTIME_ID
        t.tv_sec as u128 * 1_000_000_000 + t.tv_nsec as u128
    }
    #[repr(C)]
    struct libc_timespec {
        tv_sec: i64,
        tv_nsec: i64,
    }
    extern "C" {
        fn clock_gettime(clk: i32, t: *mut libc_timespec) -> i32;
    }
    let dm = Dims {
        batch: 1,
        hq: 4,
        hkv: 4,
        sq: 512,
        sk: 512,
        d: 64,
        dv: 64,
    };
    let n = 4 * 512 * 64;
    let f = |s| data(n, s).iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (q, k, v, go) = (f(1), f(2), f(3), f(4));
    let median = |mut xs: Vec<u128>| {
        xs.sort();
        xs[xs.len() / 2] as f64 / 1e6
    };
    for drop in [
        None,
        Some(Dropout {
            p: 0.1,
            seed: 5,
            op: 0,
        }),
    ] {
        let (mut fw, mut bw) = (Vec::new(), Vec::new());
        let mut out = vec![0f32; n];
        let (mut dq, mut dk, mut dv) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        for _ in 0..15 {
            let t = cpu_ns();
            forward_dropout(
                &dm,
                &q,
                &k,
                &v,
                Mask::None,
                true,
                0.125,
                drop,
                &mut out,
                None,
            );
            fw.push(cpu_ns() - t);
            let t = cpu_ns();
            backward_dropout(
                &dm,
                &q,
                &k,
                &v,
                Mask::None,
                true,
                0.125,
                drop,
                &out,
                &go,
                Want { q: true, kv: true },
                &mut dq,
                &mut dk,
                &mut dv,
                None,
            );
            bw.push(cpu_ns() - t);
        }
        println!(
            "attention causal 4x512x64 f32, dropout {:?}: forward {:.2} ms, backward {:.2} ms (median of 15, thread CPU time, {:?})",
            drop.map(|z| z.p),
            median(fw),
            median(bw),
            crate::isa::active()
        );
    }
}

/// The fused forward (`f32` on every x86 path: AVX-512 12 × 32, AVX2 6 × 16, the portable
/// form on the baseline) against the naive f64 reference on shapes that cross every edge of its
/// tiles: several query tiles and row groups with a partial last one, key blocks and strips
/// with a partial last one, `d` and `dv` not multiples of a vector (`dv` over two output
/// chunks plus a narrow one), causal with `sk` above and below `sq`, masks, GQA and dropout;
/// and the portable form in `f64` (the scalar reference itself) at f64 tolerance.
#[test]
fn fused_forward_matches_naive_across_tile_edges() {
    let dims = |batch, hq, hkv, sq, sk, d, dv| Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    };
    let cases = [
        (dims(1, 2, 1, 150, 300, 67, 70), true, 0u8, None),
        (dims(1, 1, 1, 150, 100, 19, 33), true, 1, None),
        (dims(1, 2, 2, 80, 261, 64, 64), false, 2, None),
        (
            dims(2, 2, 1, 77, 140, 9, 17),
            true,
            1,
            Some(Dropout {
                p: 0.2,
                seed: 11,
                op: 3,
            }),
        ),
    ];
    for (dm, causal, mk, drop) in cases {
        let nq = dm.batch * dm.hq * dm.sq * dm.d;
        let nk = dm.batch * dm.hkv * dm.sk * dm.d;
        let nv = dm.batch * dm.hkv * dm.sk * dm.dv;
        let ns = dm.batch * dm.hq * dm.sq * dm.sk;
        // larger scores than `data` alone gives (the exponentials reach far below the max)
        let q: Vec<f64> = data(nq, 21).iter().map(|x| 3.0 * x).collect();
        let (k, v) = (data(nk, 22), data(nv, 23));
        let add: Vec<f64> = data(ns, 24).iter().map(|x| 4.0 * x).collect();
        let keys: Vec<bool> = (0..dm.sk).map(|j| j % 5 != 2).collect();
        let dense_bool: Vec<bool> = (0..ns).map(|x| keys[x % dm.sk]).collect();
        let scale = 1.0 / (dm.d as f64).sqrt();
        let rm = match mk {
            1 => RefMask::Add(&add),
            2 => RefMask::Bool(&dense_bool),
            _ => RefMask::None,
        };
        let (want, probs) = naive(&dm, &q, &k, &v, &rm, causal, scale);
        let want = match drop {
            Some(_) => naive_dropped(&dm, &v, &probs, &dense_drop(ns, drop)),
            None => want,
        };
        let offs_full: Vec<usize> = (0..dm.batch * dm.hq).map(|bh| bh * dm.sq * dm.sk).collect();
        let offs_zero = vec![0usize; dm.batch * dm.hq];
        fn mask_of<'a, T>(
            mk: u8,
            add: &'a [T],
            keys: &'a [bool],
            full: &'a [usize],
            zero: &'a [usize],
            sk: usize,
        ) -> Mask<'a, T> {
            match mk {
                1 => Mask::Add(MaskView {
                    data: add,
                    offs: full,
                    si: sk,
                    sj: 1,
                }),
                2 => Mask::Bool(MaskView {
                    data: keys,
                    offs: zero,
                    si: 0,
                    sj: 1,
                }),
                _ => Mask::None,
            }
        }
        // f32 through the public entry, on every path
        let f = |x: &[f64]| x.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (tq, tk, tv, tadd) = (f(&q), f(&k), f(&v), f(&add));
        let mask = mask_of(mk, &tadd, &keys, &offs_full, &offs_zero, dm.sk);
        for isa in Isa::available() {
            isa::with_isa(isa, || {
                let mut out = vec![0f32; dm.batch * dm.hq * dm.sq * dm.dv];
                let mut lse = vec![0f32; dm.batch * dm.hq * dm.sq];
                forward_dropout(
                    &dm,
                    &tq,
                    &tk,
                    &tv,
                    mask,
                    causal,
                    scale,
                    drop,
                    &mut out,
                    Some(&mut lse),
                );
                let got: Vec<f64> = out.iter().map(|&x| x as f64).collect();
                close(&format!("{isa:?} {dm:?} out"), &got, &want, 2e-5);
                // the row statistics against the GEMM-based statistics pass in f64
                let mut lse64 = vec![0f64; lse.len()];
                let mut o64 = vec![0f64; out.len()];
                let m64 = mask_of(mk, &add, &keys, &offs_full, &offs_zero, dm.sk);
                forward(
                    &dm,
                    &q,
                    &k,
                    &v,
                    m64,
                    causal,
                    scale,
                    &mut o64,
                    Some(&mut lse64),
                );
                let got: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
                close(&format!("{isa:?} {dm:?} lse"), &got, &lse64, 2e-5);
            });
        }
        // the portable form in f64: the scalar reference at f64 tolerance
        let mask = mask_of(mk, &add, &keys, &offs_full, &offs_zero, dm.sk);
        let mut out = vec![0f64; dm.batch * dm.hq * dm.sq * dm.dv];
        // SAFETY: the portable form needs no ISA; the slices match `dm`
        unsafe {
            fused::run::<f64, fused::Portable>(
                &dm,
                (&q, Layout::contiguous(dm.hq, dm.sq, dm.d)),
                (&k, Layout::contiguous(dm.hkv, dm.sk, dm.d)),
                (&v, Layout::contiguous(dm.hkv, dm.sk, dm.dv)),
                mask,
                causal,
                scale,
                drop.as_ref(),
                (&mut out, Layout::contiguous(dm.hq, dm.sq, dm.dv)),
                None,
            )
        };
        close(&format!("portable f64 {dm:?}"), &out, &want, 1e-11);
    }
}

/// A NaN score makes its row NaN in the fused forward (as in the GEMM-based one and PyTorch),
/// on every path; the other rows are untouched.
#[test]
fn fused_forward_propagates_nan() {
    let dm = Dims {
        batch: 1,
        hq: 1,
        hkv: 1,
        sq: 20,
        sk: 40,
        d: 8,
        dv: 8,
    };
    let mut q: Vec<f32> = data(160, 31).iter().map(|&x| x as f32).collect();
    let k: Vec<f32> = data(320, 32).iter().map(|&x| x as f32).collect();
    let v: Vec<f32> = data(320, 33).iter().map(|&x| x as f32).collect();
    q[5 * 8 + 3] = f32::NAN;
    for isa in Isa::available() {
        isa::with_isa(isa, || {
            let mut out = vec![0f32; 160];
            forward(&dm, &q, &k, &v, Mask::None, false, 0.5, &mut out, None);
            for (i, row) in out.chunks(8).enumerate() {
                assert_eq!(row.iter().all(|x| x.is_nan()), i == 5, "{isa:?} row {i}");
                assert!(
                    i == 5 || row.iter().all(|x| x.is_finite()),
                    "{isa:?} row {i}"
                );
            }
        });
    }
}

/// The fused forward against the GEMM-based tiles (a measurement, not a check), `f32`, d 64,
/// on this CPU's best path, alternated, medians of thread CPU time, with the share of the
/// single-core AVX-512 FMA peak (24 independent chains) over the non-masked work: seq 2048
/// causal (2 heads) and the encoder's seq 128 (4 heads, no mask):
/// `cargo test --release -p mithril-kernels --lib attention_fused_cost -- --ignored --nocapture`.
#[test]
#[ignore]
fn attention_fused_cost() {
    // the FMA peak (24 independent zmm chains), x86-64 with AVX-512 only
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn peak_run(iters: usize) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = [_mm512_set1_ps(0.0); 24];
        let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        for _ in 0..iters {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        let mut s = _mm512_setzero_ps();
        for a in acc {
            s = _mm512_add_ps(s, a);
        }
        _mm512_reduce_add_ps(s)
    }
    #[cfg(target_arch = "x86_64")]
    let peak = Isa::Avx512.supported().then(|| {
        let it = 1_000_000;
        let ts: Vec<f64> = (0..7)
            .map(|_| {
                let t = thread_cpu();
                // SAFETY: AVX-512F checked
                std::hint::black_box(unsafe { peak_run(std::hint::black_box(it)) });
                thread_cpu() - t
            })
            .collect();
        24.0 * 32.0 * it as f64 / median_of(ts) / 1e9
    });
    #[cfg(not(target_arch = "x86_64"))]
    let peak = None;
    // `ATTN_COST_ISA=avx2` (or `scalar`): that path instead of the best
    let want = match std::env::var("ATTN_COST_ISA").as_deref() {
        Ok("avx2") => Isa::Avx2,
        Ok("scalar") => Isa::Scalar,
        _ => isa::detected(),
    };
    isa::with_isa(want, || fused_cost_cases(peak));
}

/// This thread's CPU time in seconds.
fn thread_cpu() -> f64 {
    #[repr(C)]
    struct Ts {
        s: i64,
        ns: i64,
    }
    extern "C" {
        fn clock_gettime(clk: i32, t: *mut Ts) -> i32;
    }
    let mut t = Ts { s: 0, ns: 0 };
    // SAFETY: clock_gettime writes the timespec it is given
    unsafe { clock_gettime(3, &mut t) }; // CLOCK_THREAD_CPUTIME_ID
    t.s as f64 + t.ns as f64 * 1e-9
}

/// The median of `xs` (the upper one of an even count).
fn median_of(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// The cases of [`attention_fused_cost`].
fn fused_cost_cases(peak: Option<f64>) {
    let (cpu, median) = (thread_cpu, median_of);
    println!("FMA peak {peak:?} GFLOP/s, {:?}", isa::active());
    // `ATTN_COST_SEQ=128` (or 2048): that case only
    let only: Option<usize> = std::env::var("ATTN_COST_SEQ")
        .ok()
        .and_then(|x| x.parse().ok());
    for (s, h, causal, reps) in [(2048usize, 2usize, true, 15), (128, 4, false, 301)] {
        if only.is_some_and(|o| o != s) {
            continue;
        }
        let dm = Dims {
            batch: 1,
            hq: h,
            hkv: h,
            sq: s,
            sk: s,
            d: 64,
            dv: 64,
        };
        let n = h * s * 64;
        let f = |x| data(n, x).iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (q, k, v) = (f(1), f(2), f(3));
        let pairs = if causal { s * (s + 1) / 2 } else { s * s };
        let flops = (h * pairs) as f64 * 4.0 * 64.0;
        let (mut tf, mut tt) = (Vec::new(), Vec::new());
        let mut out = vec![0f32; n];
        // `ATTN_COST_REPS=N`: N calls of each form (for a profile)
        let reps = std::env::var("ATTN_COST_REPS")
            .ok()
            .and_then(|x| x.parse().ok())
            .unwrap_or(reps);
        for _ in 0..reps {
            let t = cpu();
            forward(&dm, &q, &k, &v, Mask::None, causal, 0.125, &mut out, None);
            tf.push(cpu() - t);
            let t = cpu();
            forward_tiles(
                &dm,
                &q,
                &k,
                &v,
                Mask::None,
                causal,
                0.125,
                None,
                &mut out,
                None,
            );
            tt.push(cpu() - t);
        }
        // seq 128: also the encoder block's layout, q / k / v read as column blocks of the
        // `[128, 3·h·64]` in-projection and the output written `[128, h·64]`
        let mut tb = Vec::new();
        if s == 128 {
            let e = h * 64;
            let qkv: Vec<f32> = data(s * 3 * e, 4).iter().map(|&a| a as f32).collect();
            let lay = |off| Layout {
                off,
                batch: s * 3 * e,
                head: 64,
                row: 3 * e,
            };
            let ol = Layout {
                off: 0,
                batch: s * e,
                head: 64,
                row: e,
            };
            for _ in 0..reps {
                let t = cpu();
                forward_strided(
                    &dm,
                    (&qkv, lay(0)),
                    (&qkv, lay(e)),
                    (&qkv, lay(2 * e)),
                    Mask::None,
                    false,
                    0.125,
                    None,
                    (&mut out, ol),
                    None,
                );
                tb.push(cpu() - t);
            }
        }
        let mut rows = vec![("fused", median(tf)), ("gemm tiles", median(tt))];
        if !tb.is_empty() {
            rows.push(("fused, the block's strided layout", median(tb)));
        }
        for (name, t) in rows {
            let g = flops / t / 1e9;
            println!(
                "seq {s} x {h} heads causal {causal}: {name} {:.1} us, {g:.1} GFLOP/s, of peak {}",
                t * 1e6,
                peak.map(|p| format!("{:.2}", g / p)).unwrap_or_default()
            );
        }
    }
}

/// [`forward_strided`] reading the heads out of row-interleaved buffers (`[batch, seq, heads ·
/// d]` with extra columns, keys and values side by side in one buffer, as a fused
/// in-projection) and writing `[batch, sq, hq · dv]` gives bit for bit [`forward`] on the
/// contiguous `[batch, heads, seq, d]` copies, touches no column outside its heads, on every
/// ISA path, f32 and f64.
#[test]
fn strided_layouts_are_bitwise_the_contiguous_forward() {
    fn go<T: AttnElem + Into<f64>>(c: &Case, isa: Isa) {
        let dm = c.dims;
        let Dims {
            batch,
            hq,
            hkv,
            sq,
            sk,
            d,
            dv,
        } = dm;
        let of = |x: &[f64]| -> Vec<T> { x.iter().map(|&v| T::of(v)).collect() };
        let q = of(&data(batch * hq * sq * d, 11));
        let k = of(&data(batch * hkv * sk * d, 12));
        let v = of(&data(batch * hkv * sk * dv, 13));
        let bm: Vec<bool> = (0..sk).map(|j| j % 3 != 1).collect();
        let offs = vec![0usize; batch * hq];
        let mask = if c.mask == 2 {
            Mask::Bool(MaskView {
                data: &bm,
                offs: &offs,
                si: 0,
                sj: 1,
            })
        } else {
            Mask::None
        };
        let mut want = vec![T::ZERO; batch * hq * sq * dv];
        isa::with_isa(isa, || {
            forward(&dm, &q, &k, &v, mask, c.causal, 0.37, &mut want, None)
        });
        // q: [batch, sq, 2 + hq·d + 3], heads from column 2
        let qrow = hq * d + 5;
        let mut qb = vec![T::of(7.0); batch * sq * qrow];
        // k and v side by side: [batch, sk, hkv·d + hkv·dv + 1]
        let kvrow = hkv * (d + dv) + 1;
        let mut kvb = vec![T::of(7.0); batch * sk * kvrow];
        for b in 0..batch {
            for h in 0..hq {
                for i in 0..sq {
                    for e in 0..d {
                        qb[(b * sq + i) * qrow + 2 + h * d + e] =
                            q[((b * hq + h) * sq + i) * d + e];
                    }
                }
            }
            for g in 0..hkv {
                for j in 0..sk {
                    for e in 0..d {
                        kvb[(b * sk + j) * kvrow + g * d + e] = k[((b * hkv + g) * sk + j) * d + e];
                    }
                    for e in 0..dv {
                        kvb[(b * sk + j) * kvrow + hkv * d + g * dv + e] =
                            v[((b * hkv + g) * sk + j) * dv + e];
                    }
                }
            }
        }
        let ql = Layout {
            off: 2,
            batch: sq * qrow,
            head: d,
            row: qrow,
        };
        let kl = Layout {
            off: 0,
            batch: sk * kvrow,
            head: d,
            row: kvrow,
        };
        let vl = Layout {
            off: hkv * d,
            head: dv,
            ..kl
        };
        // out: [batch, sq, 1 + hq·dv + 2], heads from column 1
        let orow = hq * dv + 3;
        let ol = Layout {
            off: 1,
            batch: sq * orow,
            head: dv,
            row: orow,
        };
        let sentinel = T::of(-3.5);
        let mut out = vec![sentinel; batch * sq * orow];
        isa::with_isa(isa, || {
            forward_strided(
                &dm,
                (&qb, ql),
                (&kvb, kl),
                (&kvb, vl),
                mask,
                c.causal,
                0.37,
                None,
                (&mut out, ol),
                None,
            )
        });
        for b in 0..batch {
            for i in 0..sq {
                let r = &out[(b * sq + i) * orow..(b * sq + i + 1) * orow];
                assert!(r[0] == sentinel && r[orow - 2..].iter().all(|&x| x == sentinel));
                for h in 0..hq {
                    for e in 0..dv {
                        let (g, w) = (r[1 + h * dv + e], want[((b * hq + h) * sq + i) * dv + e]);
                        assert!(
                            g.into().to_bits() == w.into().to_bits(),
                            "{isa:?} {dm:?} b {b} h {h} i {i} e {e}: {} vs {}",
                            g.into(),
                            w.into()
                        );
                    }
                }
            }
        }
    }
    for isa in Isa::available() {
        for c in cases() {
            go::<f32>(&c, isa);
            go::<f64>(&c, isa);
        }
    }
}

/// The fused forward's fixed-cost paths against the naive f64 reference through
/// [`forward_strided`], on every ISA path: query tiles whose keys fit one block (the encoder's
/// seq 128 × 4 heads of 64, `P·V` started from 0 and stored normalized, the running output never
/// used) and tiles over several key blocks (first / middle / last block of a row group, under
/// `causal` a group's last block before the tile's); partial row groups of every register-tile
/// height (a tile's last group of 3, 5, 8 and 4 rows); `Q` read in place (its rows 3 KiB apart,
/// the encoder's in-projection) and packed (4 KiB apart, where the rows would crowd one L1 set);
/// GQA; `lse` against `m + ln l` of the reference.
#[test]
fn fused_fixed_cost_paths_match_naive() {
    let dims = |batch, hq, hkv, sq, sk, d, dv| Dims {
        batch,
        hq,
        hkv,
        sq,
        sk,
        d,
        dv,
    };
    // (dims, causal, Q's row stride in floats)
    let cases = [
        (dims(1, 4, 4, 128, 128, 64, 64), false, 768),
        (dims(1, 4, 4, 128, 128, 64, 64), false, 1024),
        (dims(1, 3, 1, 75, 100, 16, 24), true, 768),
        (dims(2, 2, 1, 5, 128, 8, 40), false, 1024),
        (dims(1, 2, 2, 88, 300, 12, 20), false, 768),
        (dims(1, 4, 2, 140, 270, 20, 36), true, 1024),
    ];
    for (dm, causal, qrow) in cases {
        let Dims {
            batch,
            hq,
            hkv,
            sq,
            sk,
            d,
            dv,
        } = dm;
        let q: Vec<f64> = data(batch * hq * sq * d, 41)
            .iter()
            .map(|x| 3.0 * x)
            .collect();
        let (k, v) = (
            data(batch * hkv * sk * d, 42),
            data(batch * hkv * sk * dv, 43),
        );
        let scale = 1.0 / (d as f64).sqrt();
        let (want, probs) = naive(&dm, &q, &k, &v, &RefMask::None, causal, scale);
        // the reference log-sum-exp: ln Σ_j exp(s_ij) from the logits
        let mut want_lse = vec![0.0; batch * hq * sq];
        for b in 0..batch {
            for h in 0..hq {
                let (bh, g) = (b * hq + h, b * hkv + h / (hq / hkv));
                for i in 0..sq {
                    let s: Vec<f64> = (0..sk)
                        .filter(|&j| !(causal && j > i))
                        .map(|j| {
                            (0..d)
                                .map(|c| q[(bh * sq + i) * d + c] * k[(g * sk + j) * d + c])
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    want_lse[bh * sq + i] = mx + s.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
                }
            }
        }
        assert!(probs.iter().all(|p| p.is_finite()));
        // q: [batch, sq, qrow], heads from column 3; k and v side by side: [batch, sk, kvrow]
        assert!(3 + hq * d <= qrow);
        let mut qb = vec![9f32; batch * sq * qrow];
        let kvrow = hkv * (d + dv) + 2;
        let mut kvb = vec![9f32; batch * sk * kvrow];
        for b in 0..batch {
            for h in 0..hq {
                for i in 0..sq {
                    for e in 0..d {
                        qb[(b * sq + i) * qrow + 3 + h * d + e] =
                            q[((b * hq + h) * sq + i) * d + e] as f32;
                    }
                }
            }
            for g in 0..hkv {
                for j in 0..sk {
                    for e in 0..d {
                        kvb[(b * sk + j) * kvrow + g * d + e] =
                            k[((b * hkv + g) * sk + j) * d + e] as f32;
                    }
                    for e in 0..dv {
                        kvb[(b * sk + j) * kvrow + hkv * d + g * dv + e] =
                            v[((b * hkv + g) * sk + j) * dv + e] as f32;
                    }
                }
            }
        }
        let ql = Layout {
            off: 3,
            batch: sq * qrow,
            head: d,
            row: qrow,
        };
        let kl = Layout {
            off: 0,
            batch: sk * kvrow,
            head: d,
            row: kvrow,
        };
        let vl = Layout {
            off: hkv * d,
            head: dv,
            ..kl
        };
        // out: [batch, sq, hq·dv + 1], heads from column 0 (column hq·dv a sentinel)
        let orow = hq * dv + 1;
        let ol = Layout {
            off: 0,
            batch: sq * orow,
            head: dv,
            row: orow,
        };
        for isa in Isa::available() {
            let mut out = vec![-3.5f32; batch * sq * orow];
            let mut lse = vec![0f32; batch * hq * sq];
            isa::with_isa(isa, || {
                forward_strided(
                    &dm,
                    (&qb, ql),
                    (&kvb, kl),
                    (&kvb, vl),
                    Mask::None,
                    causal,
                    scale,
                    None,
                    (&mut out, ol),
                    Some(&mut lse),
                )
            });
            let mut got = vec![0f64; want.len()];
            for b in 0..batch {
                for i in 0..sq {
                    let r = &out[(b * sq + i) * orow..(b * sq + i + 1) * orow];
                    assert_eq!(r[orow - 1], -3.5, "{isa:?} {dm:?}: sentinel of row {i}");
                    for h in 0..hq {
                        for e in 0..dv {
                            got[((b * hq + h) * sq + i) * dv + e] = r[h * dv + e] as f64;
                        }
                    }
                }
            }
            let what = format!("{isa:?} {dm:?} causal {causal} q row {qrow}");
            close(&format!("{what} out"), &got, &want, 2e-5);
            let got: Vec<f64> = lse.iter().map(|&x| x as f64).collect();
            close(&format!("{what} lse"), &got, &want_lse, 2e-5);
        }
    }
}
