//! Deterministic parameter initialisation.
//!
//! [`Rng`] is xoshiro256** seeded through splitmix64: small, fast, and the same stream on every
//! platform (transcendental functions come from `libm`, not the system math library, so
//! [`Rng::normal`] is bit-reproducible too). [`Rng::for_param`] gives every param its own
//! stream, derived from the seed and the param's dotted name, so adding a param elsewhere in a
//! model does not change the initial values of the others.

use ndarray::{ArrayD, IxDyn};

use crate::elem::Elem;

/// splitmix64 step: advances `state` and returns the next output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// 64-bit FNV-1a hash of `s`.
fn fnv1a64(s: &str) -> u64 {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// Deterministic RNG: xoshiro256** seeded through splitmix64.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
    /// The second value of the last Box–Muller pair, not yet returned.
    spare_normal: Option<f64>,
}

impl Rng {
    /// A generator seeded with `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let s = [
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
            splitmix64(&mut sm),
        ];
        // splitmix64 is a bijection of its counter, so four consecutive outputs are never all
        // zero; the all-zero state (the one fixed point of xoshiro) cannot occur.
        Rng {
            s,
            spare_normal: None,
        }
    }

    /// A stream for one param: `seed` mixed with an FNV-1a hash of the dotted `name`, so adding a
    /// param elsewhere does not change the others.
    pub fn for_param(seed: u64, name: &str) -> Self {
        let mut sm = seed;
        let mixed_seed = splitmix64(&mut sm);
        let mut sh = fnv1a64(name);
        let mixed_name = splitmix64(&mut sh);
        Rng::new(mixed_seed ^ mixed_name.rotate_left(17))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn uniform01(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal (Box–Muller; the two values of each pair are returned in turn).
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // u1 in (0, 1] so that ln(u1) is finite.
        let u1 = 1.0 - self.uniform01();
        let u2 = self.uniform01();
        let r = libm::sqrt(-2.0 * libm::log(u1));
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare_normal = Some(r * libm::sin(theta));
        r * libm::cos(theta)
    }
}

/// An array of zeros.
///
/// Like every constructor here, panics only if the element count overflows `isize` (as
/// `ndarray` does).
pub fn zeros<T: Elem>(shape: &[usize]) -> ArrayD<T> {
    full(shape, 0.0)
}

/// An array of ones (`true` for `bool`).
pub fn ones<T: Elem>(shape: &[usize]) -> ArrayD<T> {
    full(shape, 1.0)
}

/// An array filled with `v` converted to `T` (see [`Elem::from_f64`]).
pub fn full<T: Elem>(shape: &[usize], v: f64) -> ArrayD<T> {
    ArrayD::from_elem(IxDyn(shape), T::from_f64(v))
}

/// Independent samples of `U(lo, hi)` (converted to `T` by [`Elem::from_f64`], so narrow
/// types round and integers truncate), drawn in row-major order.
pub fn uniform<T: Elem>(rng: &mut Rng, shape: &[usize], lo: f64, hi: f64) -> ArrayD<T> {
    let width = hi - lo;
    ArrayD::from_shape_simple_fn(IxDyn(shape), || {
        let v = lo + width * rng.uniform01();
        // Rounding of `lo + width * u` may land exactly on `hi`; keep the interval half-open.
        T::from_f64(if v >= hi && hi > lo {
            lo.max(prev_f64(hi))
        } else {
            v
        })
    })
}

/// The largest f64 below a finite `x`.
fn prev_f64(x: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    if x == 0.0 {
        return -f64::from_bits(1);
    }
    let b = x.to_bits();
    f64::from_bits(if x > 0.0 { b - 1 } else { b + 1 })
}

/// Independent samples of `N(mean, std²)` converted to `T`, drawn in row-major order.
pub fn normal<T: Elem>(rng: &mut Rng, shape: &[usize], mean: f64, std: f64) -> ArrayD<T> {
    ArrayD::from_shape_simple_fn(IxDyn(shape), || T::from_f64(mean + std * rng.normal()))
}

/// PyTorch's default for Linear/Conv weights and biases: `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`.
/// `fan_in == 0` gives bound 0 (all zeros; no division by zero).
pub fn fan_in_uniform<T: Elem>(rng: &mut Rng, shape: &[usize], fan_in: usize) -> ArrayD<T> {
    if fan_in == 0 {
        // A zero-width interval: all zeros, and no randomness consumed.
        return zeros(shape);
    }
    let bound = 1.0 / (fan_in as f64).sqrt();
    uniform(rng, shape, -bound, bound)
}

/// How a param is initialized (the DSL's `init`), for [`param`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Spec {
    /// all zeros
    Zeros,
    /// all ones
    Ones,
    /// one value
    Full(f64),
    /// normal with mean and standard deviation
    Normal(f64, f64),
    /// uniform in `[lo, hi)`
    Uniform(f64, f64),
    /// PyTorch's default: uniform in `±1/sqrt(fan_in)`
    FanIn(usize),
}

/// A fresh param named `name` of `shape`, deterministic per `seed` (what generated
/// `randomize_params` calls, one line per param). The result's dimensionality `D` comes from
/// the params struct field; a rank mismatch (never produced by the compiler) gives an empty
/// array rather than a panic.
pub fn param<T: Elem, D: ndarray::Dimension>(
    seed: u64,
    name: &str,
    shape: &[usize],
    spec: Spec,
) -> ndarray::Array<T, D> {
    let a: ArrayD<T> = match spec {
        Spec::Zeros => zeros(shape),
        Spec::Ones => ones(shape),
        Spec::Full(v) => full(shape, v),
        Spec::Normal(m, sd) => normal(&mut Rng::for_param(seed, name), shape, m, sd),
        Spec::Uniform(lo, hi) => uniform(&mut Rng::for_param(seed, name), shape, lo, hi),
        Spec::FanIn(f) => fan_in_uniform(&mut Rng::for_param(seed, name), shape, f),
    };
    a.into_dimensionality::<D>().unwrap_or_default()
}

/// Copy `src` (in logical order) into a new array of the static dimensionality `D` with `shape`.
/// Used by generated `randomize_params`; elements beyond `src` stay at `T::default()`, so this
/// never fails or panics even if the two shapes disagree.
pub fn shaped<T: Elem, D: ndarray::Dimension, Sh: ndarray::ShapeBuilder<Dim = D>>(
    src: &ArrayD<T>,
    shape: Sh,
) -> ndarray::Array<T, D> {
    let mut out = ndarray::Array::from_elem(shape, T::default());
    out.iter_mut().zip(src.iter()).for_each(|(d, s)| *d = *s);
    out
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use half::bf16;

    #[cfg_attr(test, test)]
    pub(crate) fn reference_vector_splitmix_and_xoshiro() {
        // splitmix64 from seed 0: known first output.
        let mut s = 0u64;
        assert_eq!(splitmix64(&mut s), 0xE220_A839_7B1D_CDAF);
        // xoshiro256** with state [1, 2, 3, 4]: reference outputs from the C implementation.
        let mut r = Rng {
            s: [1, 2, 3, 4],
            spare_normal: None,
        };
        let got: Vec<u64> = (0..3).map(|_| r.next_u64()).collect();
        assert_eq!(got, vec![11520, 0, 1509978240]);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn fnv_reference() {
        assert_eq!(fnv1a64(""), 0xCBF2_9CE4_8422_2325);
        assert_eq!(fnv1a64("a"), 0xAF63_DC4C_8601_EC8C);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn same_seed_same_arrays() {
        let a: ArrayD<f32> = normal(&mut Rng::new(42), &[4, 5], 0.0, 1.0);
        let b: ArrayD<f32> = normal(&mut Rng::new(42), &[4, 5], 0.0, 1.0);
        assert_eq!(a, b);
        let c: ArrayD<f32> = normal(&mut Rng::new(43), &[4, 5], 0.0, 1.0);
        assert_ne!(a, c);
        let a: ArrayD<f64> = uniform(&mut Rng::for_param(7, "fc1.weight"), &[10], -1.0, 1.0);
        let b: ArrayD<f64> = uniform(&mut Rng::for_param(7, "fc1.weight"), &[10], -1.0, 1.0);
        assert_eq!(a, b);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn different_names_different_streams() {
        let mut a = Rng::for_param(0, "fc1.weight");
        let mut b = Rng::for_param(0, "fc1.bias");
        let mut c = Rng::for_param(1, "fc1.weight");
        let xa: Vec<u64> = (0..4).map(|_| a.next_u64()).collect();
        let xb: Vec<u64> = (0..4).map(|_| b.next_u64()).collect();
        let xc: Vec<u64> = (0..4).map(|_| c.next_u64()).collect();
        assert_ne!(xa, xb);
        assert_ne!(xa, xc);
        assert_ne!(xb, xc);
        // A param stream differs from the plain seed stream.
        let mut d = Rng::new(0);
        assert_ne!(xa, (0..4).map(|_| d.next_u64()).collect::<Vec<_>>());
    }

    #[cfg_attr(test, test)]
    pub(crate) fn uniform01_range_and_moments() {
        let mut r = Rng::new(1);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| r.uniform01()).collect();
        assert!(xs.iter().all(|&x| (0.0..1.0).contains(&x)));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.005, "mean {mean}");
        assert!((var - 1.0 / 12.0).abs() < 0.002, "var {var}");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn uniform_bounds_and_moments() {
        let (lo, hi) = (-3.0, 5.0);
        let a: ArrayD<f64> = uniform(&mut Rng::new(2), &[100_000], lo, hi);
        assert!(a.iter().all(|&x| x >= lo && x < hi));
        let n = a.len() as f64;
        let mean = a.sum() / n;
        let var = a.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        let tv = (hi - lo) * (hi - lo) / 12.0;
        assert!((var - tv).abs() / tv < 0.02, "var {var} vs {tv}");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn normal_moments() {
        let mut r = Rng::new(3);
        let n = 100_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        assert!(xs.iter().all(|x| x.is_finite()));
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.015, "mean {mean}");
        assert!((var.sqrt() - 1.0).abs() < 0.015, "std {}", var.sqrt());
        let a: ArrayD<f32> = normal(&mut Rng::new(4), &[100_000], 2.0, 0.5);
        let m = a.iter().map(|&x| x as f64).sum::<f64>() / 100_000.0;
        let v = a.iter().map(|&x| (x as f64 - m).powi(2)).sum::<f64>() / 100_000.0;
        assert!((m - 2.0).abs() < 0.01, "mean {m}");
        assert!((v.sqrt() - 0.5).abs() < 0.01, "std {}", v.sqrt());
    }

    #[cfg_attr(test, test)]
    pub(crate) fn fan_in_bound() {
        let a: ArrayD<f32> = fan_in_uniform(&mut Rng::new(5), &[64, 100], 100);
        let bound = 0.1f32;
        assert!(a.iter().all(|&x| x.abs() <= bound));
        // Covers most of the interval.
        let max = a.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        assert!(max > 0.099, "max {max}");
        let b: ArrayD<bf16> = fan_in_uniform(&mut Rng::new(5), &[16], 4);
        assert!(b.iter().all(|x| x.to_f32().abs() <= 0.5));
        let z: ArrayD<f32> = fan_in_uniform(&mut Rng::new(5), &[3, 0], 0);
        assert_eq!(z.shape(), &[3, 0]);
        let z: ArrayD<f32> = fan_in_uniform(&mut Rng::new(5), &[3], 0);
        assert!(z.iter().all(|&x| x == 0.0));
    }

    #[cfg_attr(test, test)]
    pub(crate) fn constants() {
        let z: ArrayD<f32> = zeros(&[2, 3]);
        assert_eq!(z.shape(), &[2, 3]);
        assert!(z.iter().all(|&x| x == 0.0));
        let o: ArrayD<bf16> = ones(&[4]);
        assert!(o.iter().all(|&x| x == bf16::ONE));
        let f: ArrayD<i64> = full(&[2], 7.9);
        assert_eq!(f.as_slice().unwrap(), &[7, 7]);
        let b: ArrayD<bool> = ones(&[]);
        assert_eq!(b.ndim(), 0);
        assert!(b[IxDyn(&[])]);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn degenerate_uniform_interval() {
        let a: ArrayD<f64> = uniform(&mut Rng::new(6), &[8], 2.0, 2.0);
        assert!(a.iter().all(|&x| x == 2.0));
        assert_eq!(prev_f64(1.0), 1.0 - f64::EPSILON / 2.0);
        assert!(prev_f64(0.0) < 0.0);
        assert!(prev_f64(-1.0) < -1.0);
    }
}
