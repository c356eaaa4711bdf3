//! Scalar math: the element functions every fused elementwise loop is built from.
//!
//! [`Num`] covers `i32 i64 f32 f64` (integer arithmetic wraps and never panics: division by zero
//! gives 0, as a defined result instead of a trap); [`Real`] adds the transcendental functions for
//! `f32 f64`. `f16`/`bf16` compute in `f32`.
//!
//! Approximations: `erf` is `libm`'s (max error about 1 ulp); `gelu_tanh` is the tanh form used by
//! PyTorch's `approximate="tanh"`.

/// Arithmetic shared by integers and floats.
pub trait Num: Copy + PartialOrd + Send + Sync + std::fmt::Debug + 'static {
    /// 0
    const ZERO: Self;
    /// 1
    const ONE: Self;
    /// Lowest value (−∞ for floats): the identity of `max`.
    const LOWEST: Self;
    /// Highest value (+∞ for floats): the identity of `min`.
    const HIGHEST: Self;
    /// `a + b` (wrapping for integers).
    fn add(self, o: Self) -> Self;
    /// `a - b` (wrapping for integers).
    fn sub(self, o: Self) -> Self;
    /// `a * b` (wrapping for integers).
    fn mul(self, o: Self) -> Self;
    /// `a / b` (integers: truncating, 0 when `b == 0`).
    fn div(self, o: Self) -> Self;
    /// `floor(a / b)` (integers: floor division, 0 when `b == 0`).
    fn floor_div(self, o: Self) -> Self;
    /// `a mod b` with the sign of `b`, as NumPy (integers: 0 when `b == 0`).
    fn rem(self, o: Self) -> Self;
    /// `-a` (wrapping for integers).
    fn neg(self) -> Self;
    /// `|a|` (wrapping for integers).
    fn abs(self) -> Self;
    /// Minimum; NaN propagates.
    fn min(self, o: Self) -> Self;
    /// Maximum; NaN propagates.
    fn max(self, o: Self) -> Self;
    /// −1, 0 or 1 (NaN for NaN).
    fn sign(self) -> Self;
    /// Conversion from f64 (integers truncate toward zero and saturate).
    fn from_f64(v: f64) -> Self;
    /// Conversion to f64.
    fn to_f64(self) -> f64;
}

/// Floating-point functions.
pub trait Real: Num {
    /// e^x
    fn exp(self) -> Self;
    /// natural log
    fn ln(self) -> Self;
    /// square root
    fn sqrt(self) -> Self;
    /// sine
    fn sin(self) -> Self;
    /// cosine
    fn cos(self) -> Self;
    /// hyperbolic tangent
    fn tanh(self) -> Self;
    /// error function
    fn erf(self) -> Self;
    /// x^y
    fn powf(self, y: Self) -> Self;
    /// floor
    fn floor(self) -> Self;
    /// ln(1 + x), accurate near 0
    fn ln_1p(self) -> Self;
    /// true when NaN
    fn is_nan(self) -> bool;
}

macro_rules! num_int {
    ($t:ty) => {
        impl Num for $t {
            const ZERO: Self = 0;
            const ONE: Self = 1;
            const LOWEST: Self = <$t>::MIN;
            const HIGHEST: Self = <$t>::MAX;
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self.wrapping_add(o)
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self.wrapping_sub(o)
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self.wrapping_mul(o)
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                if o == 0 {
                    0
                } else {
                    self.wrapping_div(o)
                }
            }
            #[inline(always)]
            fn floor_div(self, o: Self) -> Self {
                if o == 0 {
                    return 0;
                }
                let q = self.wrapping_div(o);
                // `wrapping_rem`: `MIN % -1` overflows (and panics) with `%`
                if (self.wrapping_rem(o) != 0) && ((self < 0) != (o < 0)) {
                    q.wrapping_sub(1)
                } else {
                    q
                }
            }
            #[inline(always)]
            fn rem(self, o: Self) -> Self {
                if o == 0 {
                    return 0;
                }
                let r = self.wrapping_rem(o);
                if r != 0 && ((r < 0) != (o < 0)) {
                    r.wrapping_add(o)
                } else {
                    r
                }
            }
            #[inline(always)]
            fn neg(self) -> Self {
                self.wrapping_neg()
            }
            #[inline(always)]
            fn abs(self) -> Self {
                self.wrapping_abs()
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                Ord::min(self, o)
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                Ord::max(self, o)
            }
            #[inline(always)]
            fn sign(self) -> Self {
                self.signum()
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
    };
}
num_int!(i32);
num_int!(i64);

macro_rules! num_float {
    ($t:ty, $erf:path, $pow:path) => {
        impl Num for $t {
            const ZERO: Self = 0.0;
            const ONE: Self = 1.0;
            const LOWEST: Self = <$t>::NEG_INFINITY;
            const HIGHEST: Self = <$t>::INFINITY;
            #[inline(always)]
            fn add(self, o: Self) -> Self {
                self + o
            }
            #[inline(always)]
            fn sub(self, o: Self) -> Self {
                self - o
            }
            #[inline(always)]
            fn mul(self, o: Self) -> Self {
                self * o
            }
            #[inline(always)]
            fn div(self, o: Self) -> Self {
                self / o
            }
            #[inline(always)]
            fn floor_div(self, o: Self) -> Self {
                (self / o).floor()
            }
            #[inline(always)]
            fn rem(self, o: Self) -> Self {
                let r = self % o;
                if r != 0.0 && ((r < 0.0) != (o < 0.0)) {
                    r + o
                } else {
                    r
                }
            }
            #[inline(always)]
            fn neg(self) -> Self {
                -self
            }
            #[inline(always)]
            fn abs(self) -> Self {
                <$t>::abs(self)
            }
            #[inline(always)]
            fn min(self, o: Self) -> Self {
                if self.is_nan() || o.is_nan() {
                    <$t>::NAN
                } else {
                    <$t>::min(self, o)
                }
            }
            #[inline(always)]
            fn max(self, o: Self) -> Self {
                if self.is_nan() || o.is_nan() {
                    <$t>::NAN
                } else {
                    <$t>::max(self, o)
                }
            }
            #[inline(always)]
            fn sign(self) -> Self {
                if self > 0.0 {
                    1.0
                } else if self < 0.0 {
                    -1.0
                } else {
                    self
                }
            }
            #[inline(always)]
            fn from_f64(v: f64) -> Self {
                v as $t
            }
            #[inline(always)]
            fn to_f64(self) -> f64 {
                self as f64
            }
        }
        impl Real for $t {
            #[inline(always)]
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            #[inline(always)]
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            #[inline(always)]
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
            #[inline(always)]
            fn sin(self) -> Self {
                <$t>::sin(self)
            }
            #[inline(always)]
            fn cos(self) -> Self {
                <$t>::cos(self)
            }
            #[inline(always)]
            fn tanh(self) -> Self {
                <$t>::tanh(self)
            }
            #[inline(always)]
            fn erf(self) -> Self {
                $erf(self)
            }
            #[inline(always)]
            fn powf(self, y: Self) -> Self {
                $pow(self, y)
            }
            #[inline(always)]
            fn floor(self) -> Self {
                <$t>::floor(self)
            }
            #[inline(always)]
            fn ln_1p(self) -> Self {
                <$t>::ln_1p(self)
            }
            #[inline(always)]
            fn is_nan(self) -> bool {
                <$t>::is_nan(self)
            }
        }
    };
}
num_float!(f32, libm::erff, libm::powf);
num_float!(f64, libm::erf, libm::pow);

/// max(x, 0)
#[inline(always)]
pub fn relu<T: Num>(x: T) -> T {
    // NaN (unordered) passes through
    if x > T::ZERO || x.partial_cmp(&T::ZERO).is_none() {
        x
    } else {
        T::ZERO
    }
}

/// x if x > 0 else slope * x
#[inline(always)]
pub fn leaky_relu<T: Num>(x: T, slope: T) -> T {
    if x > T::ZERO {
        x
    } else {
        x.mul(slope)
    }
}

/// 1 / (1 + e^-x), computed without overflow for large |x|.
#[inline(always)]
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::ZERO {
        T::ONE.div(T::ONE.add(x.neg().exp()))
    } else {
        let e = x.exp();
        e.div(T::ONE.add(e))
    }
}

/// ln(1 + e^x), stable for large |x|.
#[inline(always)]
pub fn softplus<T: Real>(x: T) -> T {
    // max(x, 0) + ln(1 + e^-|x|)
    relu(x).add(x.abs().neg().exp().ln_1p())
}

/// x * Φ(x) = 0.5 x (1 + erf(x / √2))
#[inline(always)]
pub fn gelu_erf<T: Real>(x: T) -> T {
    let half = T::from_f64(0.5);
    let inv_sqrt2 = T::from_f64(std::f64::consts::FRAC_1_SQRT_2);
    half.mul(x).mul(T::ONE.add(x.mul(inv_sqrt2).erf()))
}

/// 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³)))
#[inline(always)]
pub fn gelu_tanh<T: Real>(x: T) -> T {
    let half = T::from_f64(0.5);
    let k = T::from_f64(0.797_884_560_802_865_4);
    let c = T::from_f64(0.044715);
    let inner = k.mul(x.add(c.mul(x).mul(x).mul(x)));
    half.mul(x).mul(T::ONE.add(inner.tanh()))
}

/// x²
#[inline(always)]
pub fn square<T: Num>(x: T) -> T {
    x.mul(x)
}

/// min(max(x, lo), hi)
#[inline(always)]
pub fn clamp<T: Num>(x: T, lo: T, hi: T) -> T {
    x.max(lo).min(hi)
}

/// Mithril's `robust_sqrt`: `sqrt(|x|)`, and the line `|x| / sqrt(c)` below the threshold
/// `|x| < c` (finite slope `1 / sqrt(c)` at 0 instead of an infinite one).
#[inline(always)]
pub fn robust_sqrt<T: Real>(x: T, c: T) -> T {
    let a = x.abs();
    if a < c {
        a.div(c.sqrt())
    } else {
        a.sqrt()
    }
}

/// Mithril's `robust_log`: `ln |x|`, and the tangent line `ln c + |x| / c - 1` below the
/// threshold `|x| < c` (finite at 0: `ln c - 1`).
#[inline(always)]
pub fn robust_log<T: Real>(x: T, c: T) -> T {
    let a = x.abs();
    if a < c {
        c.ln().add(a.div(c)).sub(T::ONE)
    } else {
        a.ln()
    }
}

/// Mithril's `stable_reciprocal`: `1 / x`, and below the threshold `|x| < c` the line
/// `(sign(x) + (1 - sign(|x|))) * 2 / c - x / c²` (`2 / c` at 0, continuous at `±c`).
#[inline(always)]
pub fn stable_reciprocal<T: Real>(x: T, c: T) -> T {
    let a = x.abs();
    if a < c {
        let s = x.sign().add(T::ONE.sub(a.sign()));
        s.mul(T::from_f64(2.0).div(c)).sub(x.div(c.mul(c)))
    } else {
        T::ONE.div(x)
    }
}

/// Mithril's `robust_power`: `|b|^e`, and `|b| / c` where `|b| < c` and
/// `e < 1 - ln c / ln |b|` (where `|b|^e` would exceed `|b| / c`: the region of a steep or
/// infinite slope at 0).
#[inline(always)]
pub fn robust_power<T: Real>(b: T, e: T, c: T) -> T {
    let a = b.abs();
    if robust_power_below(a, e, c) {
        a.div(c)
    } else {
        a.powf(e)
    }
}

/// The condition of [`robust_power`]'s linear branch, for `a = |b|`.
#[inline(always)]
pub fn robust_power_below<T: Real>(a: T, e: T, c: T) -> bool {
    a < c && e < T::ONE.sub(c.ln().div(a.ln()))
}

/// Integer power by squaring (wrapping); a negative exponent gives 0 except for bases ±1.
#[inline]
pub fn int_pow<T: Num>(base: T, exp: T) -> T {
    let e = exp.to_f64();
    if e < 0.0 {
        let b = base.to_f64();
        return if b == 1.0 {
            T::ONE
        } else if b == -1.0 {
            if (e as i64) % 2 == 0 {
                T::ONE
            } else {
                T::ONE.neg()
            }
        } else {
            T::ZERO
        };
    }
    let mut e = e as u64;
    let mut b = base;
    let mut acc = T::ONE;
    while e > 0 {
        if e & 1 == 1 {
            acc = acc.mul(b);
        }
        b = b.mul(b);
        e >>= 1;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_ops_never_panic() {
        assert_eq!(Num::div(7i32, 0), 0);
        assert_eq!(Num::floor_div(-7i32, 2), -4);
        assert_eq!(Num::rem(-7i32, 3), 2);
        assert_eq!(Num::add(i32::MAX, 1), i32::MIN);
        assert_eq!(Num::abs(i64::MIN), i64::MIN);
    }

    #[test]
    fn float_functions() {
        assert!((sigmoid(0.0f64) - 0.5).abs() < 1e-15);
        assert!((sigmoid(-800.0f64)).abs() < 1e-300);
        assert!((softplus(1000.0f64) - 1000.0).abs() < 1e-9);
        assert!((softplus(0.0f64) - std::f64::consts::LN_2).abs() < 1e-15);
        // gelu(1) = 0.5 * (1 + erf(1/sqrt 2)) = 0.8413447460685429
        assert!((gelu_erf(1.0f64) - 0.841_344_746_068_542_9).abs() < 1e-12);
        assert!((gelu_tanh(1.0f64) - 0.841_191_990_607_735_6).abs() < 1e-12);
        assert_eq!(Num::floor_div(-7.0f64, 2.0), -4.0);
        assert!(Num::max(f32::NAN, 1.0).is_nan());
        assert_eq!(relu(-2i64), 0);
    }
}
