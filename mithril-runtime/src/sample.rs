//! Picking the next token from a model's logits: greedy ([`argmax`]) or random with a
//! temperature and a top-k cut ([`Sampler`], deterministic for a seed).
//!
//! ```
//! use mithril_runtime::sample::{argmax, Sampler};
//! let logits = [0.5f32, 2.0, -1.0, 1.9];
//! assert_eq!(argmax(&logits).unwrap(), 1);
//! let mut a = Sampler::new(7);
//! let mut b = Sampler::new(7);
//! let xs: Vec<usize> = (0..20).map(|_| a.sample(&logits, 0.8, 2).unwrap()).collect();
//! let ys: Vec<usize> = (0..20).map(|_| b.sample(&logits, 0.8, 2).unwrap()).collect();
//! assert_eq!(xs, ys); // the same seed, the same tokens
//! assert!(xs.iter().all(|&t| t == 1 || t == 3)); // top-2 only
//! ```

use crate::{Error, Result};

/// The index of the largest logit (the first of equal ones); an `Err` for an empty slice or
/// a NaN.
pub fn argmax(logits: &[f32]) -> Result<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in logits.iter().enumerate() {
        if x.is_nan() {
            return Err(Error::op("argmax", format!("logit {i} is NaN")));
        }
        if best.is_none_or(|(_, b)| x > b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
        .ok_or_else(|| Error::op("argmax", "no logits (an empty slice)"))
}

/// A seeded sampler (SplitMix64): the same seed and logits give the same tokens.
#[derive(Clone, Debug)]
pub struct Sampler {
    state: u64,
    /// scratch: the candidates of one draw (kept, so a draw allocates nothing after the first)
    idx: Vec<usize>,
}

impl Sampler {
    /// A sampler whose draws are a function of `seed`.
    pub fn new(seed: u64) -> Self {
        Sampler {
            state: seed,
            idx: Vec::new(),
        }
    }

    /// A uniform number in `[0, 1)`.
    pub fn uniform(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A token drawn from `softmax(logits / temperature)` restricted to the `top_k` largest
    /// logits (`top_k = 0`: all). `temperature = 0` is [`argmax`]. An `Err` for no logits, a
    /// NaN, or a negative or non-finite temperature.
    pub fn sample(&mut self, logits: &[f32], temperature: f32, top_k: usize) -> Result<usize> {
        if !(temperature >= 0.0 && temperature.is_finite()) {
            return Err(Error::op(
                "sample",
                format!("the temperature must be finite and >= 0, found {temperature}"),
            ));
        }
        let best = argmax(logits)?;
        if temperature == 0.0 {
            return Ok(best);
        }
        let k = if top_k == 0 {
            logits.len()
        } else {
            top_k.min(logits.len())
        };
        self.idx.clear();
        self.idx.extend(0..logits.len());
        // the k largest first (ties by index), in order
        self.idx
            .sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        let r = self.uniform();
        let top = &self.idx[..k];
        let mx = logits[best] as f64;
        let t = temperature as f64;
        let z: f64 = top
            .iter()
            .map(|&i| ((logits[i] as f64 - mx) / t).exp())
            .sum();
        let mut u = r * z;
        for &i in top {
            let w = ((logits[i] as f64 - mx) / t).exp();
            if u < w {
                return Ok(i);
            }
            u -= w;
        }
        Ok(top[k - 1])
    }
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn sampling_frequencies_follow_the_softmax() {
        // logits ln(1), ln(2), ln(3), ln(4) at temperature 1: probabilities 0.1 .. 0.4; top-3
        // keeps 2/9, 3/9, 4/9
        let logits = [1f32.ln(), 2f32.ln(), 3f32.ln(), 4f32.ln()];
        let mut s = Sampler::new(3);
        let n = 40_000;
        let mut c = [0usize; 4];
        for _ in 0..n {
            c[s.sample(&logits, 1.0, 0).unwrap()] += 1;
        }
        for (i, &ci) in c.iter().enumerate() {
            let p = (i + 1) as f64 / 10.0;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((ci as f64 / n as f64 - p).abs() < 5.0 * sd, "{c:?}");
        }
        let mut c = [0usize; 4];
        for _ in 0..n {
            c[s.sample(&logits, 1.0, 3).unwrap()] += 1;
        }
        assert_eq!(c[0], 0);
        for (i, &ci) in c.iter().enumerate().skip(1) {
            let p = (i + 1) as f64 / 9.0;
            let sd = (p * (1.0 - p) / n as f64).sqrt();
            assert!((ci as f64 / n as f64 - p).abs() < 5.0 * sd, "{c:?}");
        }
        // temperature 0 and top-1 are greedy; errors instead of panics
        assert_eq!(s.sample(&logits, 0.0, 0).unwrap(), 3);
        assert_eq!(s.sample(&logits, 5.0, 1).unwrap(), 3);
        assert!(s.sample(&[], 1.0, 0).is_err());
        assert!(s.sample(&[1.0, f32::NAN], 1.0, 0).is_err());
        assert!(s.sample(&logits, -1.0, 0).is_err());
        assert_eq!(argmax(&[2.0, 5.0, 5.0]).unwrap(), 1);
    }
}
