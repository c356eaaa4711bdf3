//! Error bounds of `mithril_kernels::vmath` against f64 libm over dense sweeps of every f32 bit
//! pattern (every 509th, both signs, plus the specials). The bounds asserted here are the ones
//! documented in `vmath.rs`; run with `--nocapture` to see the measured maxima.

use mithril_kernels::vmath::{self, f64x, VFloat};

/// Error of `y` against the exact value `r`, in ulps of `r` rounded to f32 (the ulp of a
/// subnormal is 2⁻¹⁴⁹). NaN must match NaN, infinities must match exactly.
fn ulps(y: f32, r: f64) -> f64 {
    if r.is_nan() || y.is_nan() {
        return if r.is_nan() && y.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    let rf = r as f32;
    if rf.is_infinite() || y.is_infinite() {
        return if y == rf { 0.0 } else { f64::INFINITY };
    }
    let e = (rf.abs().max(f32::MIN_POSITIVE)).to_bits() >> 23;
    let ulp = 2f64.powi(e as i32 - 127 - 23);
    (y as f64 - r).abs() / ulp
}

fn sweep() -> impl Iterator<Item = f32> {
    const STEP: u32 = 509;
    (0..=u32::MAX / STEP)
        .map(|i| f32::from_bits(i.wrapping_mul(STEP)))
        .chain([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::MIN_POSITIVE,
            1.0,
            -1.0,
        ])
}

struct Case {
    name: &'static str,
    f: fn(f32) -> f32,
    r: fn(f64) -> f64,
    /// x where the ulp bound applies; elsewhere the absolute bound
    rel: fn(f32) -> bool,
    ulp: f64,
    abs: f64,
}

fn check(c: &Case) {
    let (mut wu, mut wa, mut at_u, mut at_a) = (0f64, 0f64, 0f32, 0f32);
    for x in sweep() {
        let y = (c.f)(x);
        let r = (c.r)(x as f64);
        if (c.rel)(x) || x.is_nan() || x.is_infinite() {
            let u = ulps(y, r);
            if u > wu || u.is_nan() {
                wu = u;
                at_u = x;
            }
        } else {
            let a = (y as f64 - r).abs();
            if a > wa || a.is_nan() {
                wa = a;
                at_a = x;
            }
        }
    }
    println!(
        "{:10} max {wu:.3} ulp (at {at_u:e}), outside: max abs {wa:.3e} (at {at_a:e})",
        c.name
    );
    assert!(wu <= c.ulp, "{}: {wu} ulp at {at_u:e} > {}", c.name, c.ulp);
    assert!(
        wa <= c.abs,
        "{}: abs {wa:e} at {at_a:e} > {}",
        c.name,
        c.abs
    );
}

#[test]
fn vmath_error_bounds() {
    let all: fn(f32) -> bool = |_| true;
    let cases = [
        Case {
            name: "exp",
            f: vmath::exp,
            r: f64::exp,
            rel: all,
            ulp: 1.5,
            abs: 0.0,
        },
        Case {
            name: "ln",
            f: vmath::ln,
            r: f64::ln,
            rel: all,
            ulp: 1.0,
            abs: 0.0,
        },
        Case {
            name: "tanh",
            f: vmath::tanh,
            r: f64::tanh,
            rel: all,
            ulp: 2.0,
            abs: 0.0,
        },
        Case {
            name: "sigmoid",
            f: vmath::sigmoid,
            r: f64x::sigmoid,
            rel: all,
            ulp: 3.0,
            abs: 0.0,
        },
        Case {
            name: "softplus",
            f: vmath::softplus,
            r: f64x::softplus,
            rel: all,
            ulp: 2.5,
            abs: 0.0,
        },
        Case {
            name: "erf",
            f: vmath::erf,
            r: libm::erf,
            rel: all,
            ulp: 3.0,
            abs: 0.0,
        },
        // below -87 sigmoid(x) is subnormal and x·sigmoid(x) keeps only its few bits
        Case {
            name: "silu",
            f: vmath::silu,
            r: f64x::silu,
            rel: |x| x >= -87.0,
            ulp: 4.0,
            abs: 1e-37,
        },
        // In the negative tails the functions' own conditioning dominates: the relative error of
        // x·Φ(x) grows like x² ulp (of x·sigmoid(u(x)) like |u(x)| ulp), since the rounding of x
        // itself is amplified. erfc is cut to 0 below -5.657 (there Φ < 7.7e-9).
        Case {
            name: "gelu_erf",
            f: vmath::gelu_erf,
            r: f64x::gelu_erf,
            rel: |x| x >= -2.0,
            ulp: 8.0,
            abs: 5e-8,
        },
        Case {
            name: "gelu_erf",
            f: vmath::gelu_erf,
            r: f64x::gelu_erf,
            rel: |x| x >= -5.6,
            ulp: 40.0,
            abs: 5e-8,
        },
        Case {
            name: "gelu_tanh",
            f: vmath::gelu_tanh,
            r: f64x::gelu_tanh,
            rel: |x| x >= -2.0,
            ulp: 8.0,
            abs: 5e-8,
        },
        Case {
            name: "gelu_tanh",
            f: vmath::gelu_tanh,
            r: f64x::gelu_tanh,
            rel: |x| x >= -10.0,
            ulp: 300.0,
            abs: 1e-30,
        },
        Case {
            name: "sin",
            f: vmath::sin,
            r: f64::sin,
            rel: |_| false,
            ulp: 0.0,
            abs: 1.2e-7,
        },
        Case {
            name: "cos",
            f: vmath::cos,
            r: f64::cos,
            rel: |_| false,
            ulp: 0.0,
            abs: 1.2e-7,
        },
    ];
    for c in &cases {
        if c.name == "sin" || c.name == "cos" {
            // the reduction is documented for |x| <= 8192 only
            let f = c.f;
            let r = c.r;
            let mut w = 0f64;
            for x in sweep().filter(|x| x.abs() <= 8192.0) {
                w = w.max((f(x) as f64 - r(x as f64)).abs());
            }
            println!("{:10} max abs {w:.3e} for |x| <= 8192", c.name);
            assert!(w <= c.abs, "{}: {w}", c.name);
            assert!(f(f32::INFINITY).is_nan() && f(f32::NAN).is_nan());
            continue;
        }
        check(c);
    }
}

#[test]
fn special_values() {
    use vmath::*;
    assert_eq!(exp(f32::INFINITY), f32::INFINITY);
    assert_eq!(exp(f32::NEG_INFINITY), 0.0);
    assert_eq!(exp(100.0), f32::INFINITY);
    assert_eq!(exp(-200.0), 0.0);
    assert_eq!(exp(0.0), 1.0);
    assert!(exp(f32::NAN).is_nan());
    assert_eq!(ln(0.0), f32::NEG_INFINITY);
    assert_eq!(ln(-0.0), f32::NEG_INFINITY);
    assert!(ln(-1.0).is_nan() && ln(f32::NAN).is_nan() && ln(f32::NEG_INFINITY).is_nan());
    assert_eq!(ln(f32::INFINITY), f32::INFINITY);
    assert_eq!(ln(1.0), 0.0);
    assert_eq!(tanh(f32::INFINITY), 1.0);
    assert_eq!(tanh(f32::NEG_INFINITY), -1.0);
    assert_eq!(tanh(-0.0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(sigmoid(f32::INFINITY), 1.0);
    assert_eq!(sigmoid(f32::NEG_INFINITY), 0.0);
    assert_eq!(softplus(f32::INFINITY), f32::INFINITY);
    assert_eq!(softplus(f32::NEG_INFINITY), 0.0);
    assert_eq!(erf(f32::INFINITY), 1.0);
    assert_eq!(erf(f32::NEG_INFINITY), -1.0);
    assert_eq!(gelu_erf(f32::INFINITY), f32::INFINITY);
    assert_eq!(gelu_erf(f32::NEG_INFINITY), 0.0);
    assert_eq!(gelu_tanh(f32::INFINITY), f32::INFINITY);
    assert_eq!(gelu_tanh(f32::NEG_INFINITY), 0.0);
    assert_eq!(silu(f32::NEG_INFINITY), 0.0);
    for f in [
        tanh, sigmoid, softplus, erf, gelu_erf, gelu_tanh, silu, sin, cos,
    ] {
        assert!(f(f32::NAN).is_nan());
    }
    // gelu_tanh's scaled quotient overflows for x >= 2^64: limited to x there; signed zeros kept
    for x in [1.8446744e19f32, 1e30, f32::MAX] {
        assert_eq!(gelu_tanh(x), x, "x = {x:e}");
    }
    assert_eq!(gelu_tanh(-0.0).to_bits(), (-0.0f32).to_bits());
    assert_eq!(gelu_tanh(0.0).to_bits(), 0);
    assert_eq!(gelu_tanh(-11.5).to_bits(), (-0.0f32).to_bits());
    assert_eq!(sigmoid(-105.5), 0.0);
    assert_eq!(sigmoid(18.5), 1.0);
}

#[test]
fn f64_trait_matches_libm() {
    assert_eq!(1.5f64.vexp(), 1.5f64.exp());
    assert_eq!(0.3f64.verf(), libm::erf(0.3));
    assert!((1.0f64.vgelu_erf() - 0.841_344_746_068_542_9).abs() < 1e-15);
    let g = 1.0f64.vgelu_tanh();
    assert!((g - 0.841_191_990_608_276_8).abs() < 1e-15, "{g}");
    assert!((2.0f32.vsigmoid() - 0.880_797_1).abs() < 1e-7);
}

/// `exp_nonpos` (attention's softmax exponential) is `exp` bit for bit wherever the result is
/// normal (`x` in `[-87.33, 0]`, every 1009th bit pattern there plus the ends), 0 below it and for
/// `-∞`, NaN for NaN; and within `exp`'s subnormal results (< 1.2e-38) of it below.
#[test]
fn exp_nonpos_is_exp_on_normal_results() {
    use vmath::{exp, exp_nonpos};
    let lo = (-87.33f32).to_bits();
    // negative floats: bit patterns from -0.0 (0x8000_0000) up to -87.33
    let mut n = 0;
    for bits in (0x8000_0000u32..=lo).step_by(1009).chain([lo, 0x8000_0000]) {
        let x = f32::from_bits(bits);
        assert_eq!(exp_nonpos(x).to_bits(), exp(x).to_bits(), "x = {x:e}");
        n += 1;
    }
    assert!(n > 150_000);
    assert_eq!(exp_nonpos(0.0), 1.0);
    for x in [-87.34f32, -90.0, -103.9, -104.0, -150.0, -1e30] {
        assert_eq!(exp_nonpos(x), 0.0, "x = {x}");
        assert!(exp(x) < 1.2e-38, "x = {x}");
    }
    assert_eq!(exp_nonpos(f32::NEG_INFINITY), 0.0);
    assert!(exp_nonpos(f32::NAN).is_nan());
}
