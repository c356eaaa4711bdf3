//! Greedy offset planning of buffers with known lifetimes into one arena.
//!
//! Used twice with the same code: by the `mithril!` macro when every dim is static (the planned
//! peak goes into the model summary, and `max_memory_gb` is checked at compile time), and by the
//! runtime workspace when a model meets a new input shape.
//!
//! The algorithm is the "greedy by size" plan of TensorFlow Lite's arena planner: buffers are
//! placed largest first (ties: earlier first use first), each at the lowest offset where it
//! overlaps in memory with no already placed buffer whose lifetime overlaps its own. It is not
//! optimal (the problem is NP-hard) but is within a few percent on the layered graphs of neural
//! networks, and it never does worse than the naive sum.

/// Alignment of every planned offset, in bytes (one AVX-512 register, one cache line).
pub const ALIGN: usize = 64;

/// One buffer to place: `bytes` long, live from schedule step `first` to step `last` (both
/// inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Buffer {
    /// Size in bytes (rounded up to [`ALIGN`] by the planner).
    pub bytes: usize,
    /// First schedule step at which the buffer is written.
    pub first: u32,
    /// Last schedule step at which the buffer is read.
    pub last: u32,
}

/// Rounds `n` up to a multiple of [`ALIGN`].
pub fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// Places `bufs` into one arena: writes each buffer's byte offset into `offsets` (same length
/// as `bufs`) and returns the arena size (the planned peak), in bytes.
///
/// `order` is scratch of the same length (so that the runtime can plan without allocating when
/// it re-plans into existing vectors). Zero-sized buffers get offset 0 and occupy nothing.
pub fn greedy(bufs: &[Buffer], offsets: &mut [usize], order: &mut [u32]) -> usize {
    debug_assert_eq!(bufs.len(), offsets.len());
    debug_assert_eq!(bufs.len(), order.len());
    for (i, o) in order.iter_mut().enumerate() {
        *o = i as u32;
    }
    order.sort_by(|&a, &b| {
        let (x, y) = (&bufs[a as usize], &bufs[b as usize]);
        y.bytes
            .cmp(&x.bytes)
            .then(x.first.cmp(&y.first))
            .then(a.cmp(&b))
    });
    let mut peak = 0usize;
    for (placed, &i) in order.iter().enumerate() {
        let b = bufs[i as usize];
        let size = round_up(b.bytes);
        if size == 0 {
            offsets[i as usize] = 0;
            continue;
        }
        // Candidate offsets: 0 and the end of every placed, time-overlapping buffer; take the
        // lowest one that fits between all of them.
        let mut best = usize::MAX;
        let overlaps = |j: u32| {
            let o = bufs[j as usize];
            round_up(o.bytes) > 0 && o.first <= b.last && b.first <= o.last
        };
        let fits = |at: usize| {
            order[..placed].iter().all(|&j| {
                !overlaps(j) || {
                    let (lo, hi) = (
                        offsets[j as usize],
                        offsets[j as usize] + round_up(bufs[j as usize].bytes),
                    );
                    at + size <= lo || hi <= at
                }
            })
        };
        if fits(0) {
            best = 0;
        }
        for &j in &order[..placed] {
            if overlaps(j) {
                let at = offsets[j as usize] + round_up(bufs[j as usize].bytes);
                if at < best && fits(at) {
                    best = at;
                }
            }
        }
        offsets[i as usize] = best;
        peak = peak.max(best + size);
    }
    peak
}

/// The naive total: every buffer in its own allocation (rounded to [`ALIGN`]).
pub fn naive(bufs: &[Buffer]) -> usize {
    bufs.iter().map(|b| round_up(b.bytes)).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(bufs: &[Buffer]) -> (Vec<usize>, usize) {
        let mut off = vec![0; bufs.len()];
        let mut ord = vec![0; bufs.len()];
        let peak = greedy(bufs, &mut off, &mut ord);
        (off, peak)
    }

    fn check_disjoint(bufs: &[Buffer], off: &[usize]) {
        for i in 0..bufs.len() {
            for j in i + 1..bufs.len() {
                let (a, b) = (bufs[i], bufs[j]);
                if a.bytes == 0 || b.bytes == 0 || a.last < b.first || b.last < a.first {
                    continue;
                }
                let (ai, bi) = (off[i]..off[i] + a.bytes, off[j]..off[j] + b.bytes);
                assert!(
                    ai.end <= bi.start || bi.end <= ai.start,
                    "{i} and {j} overlap"
                );
            }
        }
    }

    #[test]
    fn chain_reuses_two_buffers() {
        // a -> b -> c -> d, each read only by the next: two slots suffice.
        let bufs: Vec<Buffer> = (0..4)
            .map(|i| Buffer {
                bytes: 1000,
                first: i,
                last: i + 1,
            })
            .collect();
        let (off, peak) = plan(&bufs);
        check_disjoint(&bufs, &off);
        assert_eq!(peak, 2 * round_up(1000));
        assert_eq!(naive(&bufs), 4 * round_up(1000));
    }

    #[test]
    fn all_live_is_the_naive_sum() {
        let bufs: Vec<Buffer> = (1..6)
            .map(|i| Buffer {
                bytes: i * 100,
                first: 0,
                last: 10,
            })
            .collect();
        let (off, peak) = plan(&bufs);
        check_disjoint(&bufs, &off);
        assert_eq!(peak, naive(&bufs));
        assert!(off.iter().all(|o| o % ALIGN == 0));
    }

    #[test]
    fn random_plans_are_disjoint_and_bounded() {
        let mut s = 0x9e3779b97f4a7c15u64;
        let mut rnd = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        for _ in 0..200 {
            let n = 1 + rnd(30) as usize;
            let bufs: Vec<Buffer> = (0..n)
                .map(|_| {
                    let f = rnd(40) as u32;
                    Buffer {
                        bytes: rnd(5000) as usize,
                        first: f,
                        last: f + rnd(10) as u32,
                    }
                })
                .collect();
            let (off, peak) = plan(&bufs);
            check_disjoint(&bufs, &off);
            assert!(peak <= naive(&bufs));
            // The peak is at least the largest set of simultaneously live buffers.
            for t in 0..50u32 {
                let live: usize = bufs
                    .iter()
                    .filter(|b| b.first <= t && t <= b.last)
                    .map(|b| round_up(b.bytes))
                    .sum();
                assert!(peak >= live);
            }
        }
    }
}
