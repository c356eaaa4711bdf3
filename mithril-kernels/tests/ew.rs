//! Every ISA path of the elementwise drivers against a naive per-element reference: all sizes in
//! `SIZES`, aligned and unaligned (offset by one element) slices, every `Src` kind, in-place
//! variants, all element types. Results must be bit-identical (the closures are the same scalar
//! code on every path; NaNs only need to be NaN).

use half::{bf16, f16};
use mithril_kernels::cvt;
use mithril_kernels::ew::*;
use mithril_kernels::isa::{with_isa, Isa};
use mithril_kernels::{scalar, vmath};

const SIZES: [usize; 12] = [0, 1, 7, 15, 16, 17, 31, 33, 100, 1000, 257, 5000];

fn at<T: Copy>(s: &Src<'_, T>, i: usize) -> T {
    match *s {
        Src::Full(x) => x[i],
        Src::Scalar(v) => v,
        Src::Row(r) => r[i % r.len()],
        Src::Col(c, inner) => c[(i / inner) % c.len()],
        Src::Tile { data, inner, rep } => {
            data[((i / (inner * rep)) * inner + i % inner) % data.len()]
        }
    }
}

trait Same: Copy + std::fmt::Debug {
    fn same(self, o: Self) -> bool;
}
macro_rules! same_float {
    ($($t:ty),*) => {$(
        impl Same for $t {
            fn same(self, o: Self) -> bool {
                (self.is_nan() && o.is_nan()) || self.to_bits() == o.to_bits()
            }
        }
    )*};
}
same_float!(f32, f64, f16, bf16);
macro_rules! same_eq {
    ($($t:ty),*) => {$(
        impl Same for $t {
            fn same(self, o: Self) -> bool { self == o }
        }
    )*};
}
same_eq!(i32, i64, u8, bool);

fn check<O: Same>(got: &[O], want: &[O], what: &str) {
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.same(*w), "{what}: element {i}: got {g:?}, want {w:?}");
    }
}

/// Deterministic data in roughly [-4, 4] with a few specials mixed in.
fn data_f32(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            match i % 97 {
                13 => -0.0,
                41 => 1e-40,
                _ => (s as f32 / u32::MAX as f32) * 8.0 - 4.0,
            }
        })
        .collect()
}

/// The broadcast sources to try for an output of `n` elements, built over `pool` (which is at
/// least `n + 1` long; `off` shifts every slice by that many elements).
fn sources<T: Copy>(pool: &[T], n: usize, off: usize) -> Vec<(String, Src<'_, T>)> {
    let p = &pool[off..];
    let mut v = vec![
        ("full".to_string(), Src::Full(&p[..n])),
        ("scalar".to_string(), Src::Scalar(p[0])),
    ];
    for len in [1, 3, 7, 64, 100, 300] {
        v.push((format!("row{len}"), Src::Row(&p[..len])));
    }
    for (len, inner) in [
        (1, 5),
        (3, 1),
        (5, 3),
        (4, 64),
        (3, 100),
        (2, 300),
        (7, 1000),
    ] {
        v.push((format!("col{len}x{inner}"), Src::Col(&p[..len], inner)));
    }
    for (inner, rep, blocks) in [
        (3, 5, 2),
        (70, 4, 3),
        (1, 9, 4),
        (300, 2, 2),
        (7, 3, 1),
        (1200, 3, 1),
        (5, 1, 3),
    ] {
        v.push((
            format!("tile{inner}x{rep}x{blocks}"),
            Src::Tile {
                data: &p[..inner * blocks],
                inner,
                rep,
            },
        ));
    }
    v
}

fn isas() -> Vec<Isa> {
    Isa::available().collect()
}

#[test]
fn map2_every_src_pair_every_isa() {
    let pool_a = data_f32(6000, 1);
    let pool_b = data_f32(6000, 2);
    let f = |a: f32, b: f32| scalar::relu(a + b) * vmath::exp(b * 0.25) - vmath::tanh(a);
    for n in SIZES {
        for off in [0, 1] {
            for (na, a) in sources(&pool_a, n, off) {
                for (nb, b) in sources(&pool_b, n, off) {
                    let want: Vec<f32> = (0..n).map(|i| f(at(&a, i), at(&b, i))).collect();
                    for isa in isas() {
                        let mut out = vec![f32::NAN; n + 1];
                        with_isa(isa, || map2(a, b, &mut out[off..off + n], f));
                        check(
                            &out[off..off + n],
                            &want,
                            &format!("{isa:?} n={n} off={off} {na} {nb}"),
                        );
                        assert!(out[..off].iter().chain(&out[off + n..]).all(|x| x.is_nan()));
                    }
                }
            }
        }
    }
}

#[test]
fn map5_and_inplace_every_isa() {
    let pools: Vec<Vec<f32>> = (0..5).map(|k| data_f32(6000, 10 + k)).collect();
    let f5 =
        |a: f32, b: f32, c: f32, d: f32, e: f32| a.mul_add(b, c) * vmath::sigmoid(d) + e.max(0.5);
    for n in SIZES {
        for off in [0, 1] {
            let srcs: Vec<Vec<(String, Src<'_, f32>)>> =
                pools.iter().map(|p| sources(p, n, off)).collect();
            let k = srcs[0].len();
            // a rotating selection of kinds per position, so every kind appears at every position
            for r in 0..k {
                let pick: Vec<&(String, Src<'_, f32>)> =
                    (0..5).map(|j| &srcs[j][(r + 3 * j) % k]).collect();
                let (a, b, c, d, e) = (pick[0].1, pick[1].1, pick[2].1, pick[3].1, pick[4].1);
                let what = pick
                    .iter()
                    .map(|p| p.0.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                let want: Vec<f32> = (0..n)
                    .map(|i| f5(at(&a, i), at(&b, i), at(&c, i), at(&d, i), at(&e, i)))
                    .collect();
                for isa in isas() {
                    let mut out = vec![0f32; n + off];
                    with_isa(isa, || map5(a, b, c, d, e, &mut out[off..], f5));
                    check(&out[off..], &want, &format!("map5 {isa:?} n={n} {what}"));
                    // in place: the output starts as the first input
                    let mut io: Vec<f32> = (0..n + off)
                        .map(|i| if i < off { 0.0 } else { at(&a, i - off) })
                        .collect();
                    with_isa(isa, || map5_inplace(&mut io[off..], b, c, d, e, f5));
                    check(
                        &io[off..],
                        &want,
                        &format!("map5_inplace {isa:?} n={n} {what}"),
                    );
                    let mut io: Vec<f32> = (0..n).map(|i| at(&a, i)).collect();
                    with_isa(isa, || map2_inplace(&mut io, b, |x, y| x * y + 1.0));
                    let w2: Vec<f32> = (0..n).map(|i| at(&a, i) * at(&b, i) + 1.0).collect();
                    check(&io, &w2, &format!("map2_inplace {isa:?} n={n} {what}"));
                    let mut io: Vec<f32> = (0..n).map(|i| at(&a, i)).collect();
                    with_isa(isa, || map1_inplace(&mut io, vmath::gelu_erf));
                    let w1: Vec<f32> = (0..n).map(|i| vmath::gelu_erf(at(&a, i))).collect();
                    check(&io, &w1, &format!("map1_inplace {isa:?} n={n}"));
                    let mut o3 = vec![0f32; n];
                    with_isa(isa, || map3(a, b, c, &mut o3, |x, y, z| x - y * z));
                    let w3: Vec<f32> = (0..n).map(|i| at(&a, i) - at(&b, i) * at(&c, i)).collect();
                    check(&o3, &w3, &format!("map3 {isa:?} n={n} {what}"));
                    let mut o4 = vec![0f32; n];
                    with_isa(isa, || {
                        map4(a, b, c, d, &mut o4, |x, y, z, w| x * y + z * w)
                    });
                    let w4: Vec<f32> = (0..n)
                        .map(|i| at(&a, i) * at(&b, i) + at(&c, i) * at(&d, i))
                        .collect();
                    check(&o4, &w4, &format!("map4 {isa:?} n={n} {what}"));
                    let mut io: Vec<f32> = (0..n).map(|i| at(&a, i)).collect();
                    with_isa(isa, || map3_inplace(&mut io, b, c, |x, y, z| x + y - z));
                    let w3: Vec<f32> = (0..n).map(|i| at(&a, i) + at(&b, i) - at(&c, i)).collect();
                    check(&io, &w3, &format!("map3_inplace {isa:?} n={n} {what}"));
                    let mut io: Vec<f32> = (0..n).map(|i| at(&a, i)).collect();
                    with_isa(isa, || {
                        map4_inplace(&mut io, b, c, d, |x, y, z, w| x * y * z * w)
                    });
                    let w4: Vec<f32> = (0..n)
                        .map(|i| at(&a, i) * at(&b, i) * at(&c, i) * at(&d, i))
                        .collect();
                    check(&io, &w4, &format!("map4_inplace {isa:?} n={n} {what}"));
                }
            }
        }
    }
}

/// One closure per element type, each path against the reference.
fn typed<A: Copy, B: Copy, O: Same + Default>(
    pa: &[A],
    pb: &[B],
    f: impl Fn(A, B) -> O + Copy,
    name: &str,
) {
    for n in SIZES {
        for off in [0, 1] {
            for (na, a) in sources(pa, n, off).into_iter().step_by(3) {
                for (nb, b) in sources(pb, n, off).into_iter().step_by(2) {
                    let want: Vec<O> = (0..n).map(|i| f(at(&a, i), at(&b, i))).collect();
                    for isa in isas() {
                        let mut out = vec![O::default(); n + off];
                        with_isa(isa, || map2(a, b, &mut out[off..], f));
                        check(
                            &out[off..],
                            &want,
                            &format!("{name} {isa:?} n={n} {na} {nb}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn element_types() {
    let fa = data_f32(6000, 3);
    let fb = data_f32(6000, 4);
    let da: Vec<f64> = fa.iter().map(|&x| x as f64 * 1.1).collect();
    let ia: Vec<i32> = fa.iter().map(|&x| (x * 1000.0) as i32).collect();
    let ib: Vec<i32> = fb.iter().map(|&x| (x * 10.0) as i32).collect();
    let la: Vec<i64> = ia.iter().map(|&x| x as i64 * 100_003).collect();
    let ua: Vec<u8> = ia.iter().map(|&x| x as u8).collect();
    let ba: Vec<bool> = ia.iter().map(|&x| x % 3 == 0).collect();
    let ha: Vec<f16> = fa.iter().map(|&x| f16::from_f32(x)).collect();
    let hb: Vec<bf16> = fb.iter().map(|&x| bf16::from_f32(x)).collect();

    typed(
        &da,
        &da,
        |a: f64, b: f64| (a * b).vexp_like() + a.max(b),
        "f64",
    );
    typed(
        &ia,
        &ib,
        |a: i32, b: i32| scalar::Num::div(a, b).wrapping_add(a >> 2),
        "i32",
    );
    typed(
        &la,
        &ia,
        |a: i64, b: i32| a.wrapping_mul(b as i64) ^ (a >> 3),
        "i64",
    );
    typed(
        &ua,
        &ba,
        |a: u8, b: bool| if b { a.wrapping_add(7) } else { a / 3 },
        "u8/bool",
    );
    typed(&fa, &fb, |a: f32, b: f32| a > b, "f32->bool");
    typed(
        &ha,
        &hb,
        |a: f16, b: bf16| {
            let x = cvt::f16_to_f32(a.to_bits());
            let y = cvt::bf16_to_f32(b.to_bits());
            f16::from_bits(cvt::f32_to_f16(vmath::silu(x) + y))
        },
        "f16,bf16->f16",
    );
    typed(
        &ha,
        &fb,
        |a: f16, b: f32| bf16::from_bits(cvt::f32_to_bf16(cvt::f16_to_f32(a.to_bits()) * b)),
        "f16,f32->bf16",
    );
}

trait ExpLike {
    fn vexp_like(self) -> Self;
}
impl ExpLike for f64 {
    fn vexp_like(self) -> f64 {
        use vmath::VFloat;
        self.vexp()
    }
}

#[test]
fn fused_relu_bias_matches_unfused() {
    // [B, N] + bias [N], relu, and a per-row scale [B, 1]
    let (b, n) = (37, 301);
    let x = data_f32(b * n, 7);
    let bias = data_f32(n, 8);
    let scale = data_f32(b, 9);
    for isa in isas() {
        let mut out = vec![0f32; b * n];
        with_isa(isa, || {
            map3(
                Src::Full(&x),
                Src::Row(&bias),
                Src::Col(&scale, n),
                &mut out,
                |x, b, s| scalar::relu(x + b) * s,
            )
        });
        for r in 0..b {
            for c in 0..n {
                let want = scalar::relu(x[r * n + c] + bias[c]) * scale[r];
                assert_eq!(out[r * n + c].to_bits(), want.to_bits());
            }
        }
    }
}
