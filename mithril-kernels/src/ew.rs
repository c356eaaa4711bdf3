//! Fused elementwise drivers: `out[i] = f(a[i], b[i], …)` over up to five broadcast sources.
//!
//! The compiler emits the fused scalar expression as a closure and calls one driver; the driver
//! is multiversioned — an AVX-512 copy, an AVX2+FMA copy and a baseline copy, chosen per call by
//! [`crate::isa::active`] — and the closure is inlined into each copy, so its body (built from
//! [`crate::scalar`], [`crate::vmath`] and [`crate::cvt`] functions) is auto-vectorized with that
//! copy's instructions. Mark big closures `#[inline(always)]` (allowed on closure expressions) so
//! LLVM never keeps them out of line.
//!
//! # Broadcasting without materializing
//!
//! A [`Src`] says how source element `i` of the flat output index is found. Every broadcast of a
//! contiguous tensor whose broadcast axes form one group is expressible:
//!
//! | case (output `[B, N]` unless said)      | `Src`                                          |
//! |-----------------------------------------|------------------------------------------------|
//! | same shape                              | `Full(x)`                                      |
//! | scalar                                  | `Scalar(v)`                                    |
//! | bias row `[N]`                          | `Row(bias)` — element `i % N`                  |
//! | per-row value `[B, 1]`                  | `Col(v, N)` — element `(i / N) % B`            |
//! | channel `[C,1,1]` over `[B,C,H,W]`      | `Col(v, H*W)`                                  |
//! | `[B,1,W]` over `[B,H,W]`                | `Tile { data, inner: W, rep: H }`              |
//!
//! Internally the drivers walk the output in chunks (≤ 256 elements, aligned to the broadcast
//! period when it is long enough): full sources are sliced in place, everything else is gathered
//! into a stack buffer only when a chunk is not already one contiguous run (a bias row is sliced,
//! a per-row value is splatted once per row, a short row is tiled once and reused). The chunk
//! loop itself is the plain `for i { out[i] = f(a[i], …) }` LLVM vectorizes. No heap allocation.
//!
//! # Preconditions (all debug-asserted; violating them may panic but is never unsound)
//!
//! `Full(x)`: `x.len() >= out.len()`. `Row(r)`, `Col(c, _)`, `Tile { data, .. }`: non-empty data
//! when `out` is non-empty. `Col(_, inner)`, `Tile { inner, rep, .. }`: `inner, rep >= 1`;
//! `Tile`: `data.len()` a multiple of `inner`.

// `Isa` names only the x86 arms: the closure drivers have the one baseline copy on aarch64 (see `isa`).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::isa::{self, Isa};
use std::mem::MaybeUninit;

/// How a driver reads one source at flat output index `i` (see the module docs).
#[derive(Clone, Copy, Debug)]
pub enum Src<'a, T> {
    /// `x[i]`: same shape as the output.
    Full(&'a [T]),
    /// The same value everywhere.
    Scalar(T),
    /// `r[i % r.len()]`: a trailing-axes tensor repeated (bias `[N]` over `[B, N]`).
    Row(&'a [T]),
    /// `c[(i / inner) % c.len()]`: each element repeated `inner` times (`[B, 1]` over `[B, N]`
    /// is `Col(c, N)`).
    Col(&'a [T], usize),
    /// Blocks of `inner` contiguous elements, each block repeated `rep` times, cycling over
    /// `data`: `data[((i / (inner * rep)) * inner + i % inner) % data.len()]` (`[B, 1, W]` over
    /// `[B, H, W]` is `inner: W, rep: H`). `Row` and `Col` are the cases `rep = 1` and `inner = 1`.
    Tile {
        /// the source tensor, contiguous
        data: &'a [T],
        /// length of a contiguous run
        inner: usize,
        /// how many times each run repeats
        rep: usize,
    },
}

pub(crate) const CH: usize = 256;

/// Normalized source: `Full`, a constant, or a tile pattern with `inner >= 1, rep >= 1`.
enum Pat<'a, T> {
    Full(&'a [T]),
    Const(T),
    Tile {
        data: &'a [T],
        inner: usize,
        rep: usize,
        blocks: usize,
    },
}

struct Feed<'a, T> {
    pat: Pat<'a, T>,
    buf: [MaybeUninit<T>; CH],
    /// `buf[..cached_len]` holds what `cached_key` describes (see `get`)
    cached_key: (u8, usize),
    cached_len: usize,
}

impl<'a, T: Copy> Feed<'a, T> {
    #[inline(always)]
    fn new(src: Src<'a, T>, n: usize) -> Self {
        let tile = |data: &'a [T], inner: usize, rep: usize| -> Pat<'a, T> {
            debug_assert!(!data.is_empty() && inner >= 1 && rep >= 1);
            debug_assert!(
                data.len().is_multiple_of(inner),
                "Tile data length must be a multiple of inner"
            );
            let inner = inner.max(1);
            let rep = rep.max(1);
            if data.len() == 1 {
                Pat::Const(data[0])
            } else if rep == 1 && data.len() >= n {
                Pat::Full(data)
            } else if inner >= n {
                // the output lies inside the first run
                Pat::Full(data)
            } else {
                Pat::Tile {
                    data,
                    inner,
                    rep,
                    blocks: (data.len() / inner).max(1),
                }
            }
        };
        let pat = match src {
            Src::Full(x) => {
                debug_assert!(x.len() >= n, "Src::Full shorter than the output");
                Pat::Full(x)
            }
            Src::Scalar(v) => Pat::Const(v),
            Src::Row(r) => tile(r, r.len(), 1),
            Src::Col(c, inner) => {
                if inner <= 1 {
                    tile(c, c.len(), 1)
                } else {
                    tile(c, 1, inner)
                }
            }
            Src::Tile { data, inner, rep } => {
                if rep <= 1 {
                    tile(data, data.len(), 1)
                } else {
                    tile(data, inner, rep)
                }
            }
        };
        Feed {
            pat,
            buf: [const { MaybeUninit::uninit() }; CH],
            cached_key: (0, 0),
            cached_len: 0,
        }
    }

    fn is_full(&self) -> bool {
        matches!(self.pat, Pat::Full(_))
    }

    /// Length of the runs this source is made of, if it is a tile pattern (for chunk alignment).
    fn run_len(&self) -> Option<usize> {
        match self.pat {
            Pat::Tile { inner, rep, .. } => Some(if inner == 1 { rep } else { inner }),
            _ => None,
        }
    }

    fn period(&self) -> usize {
        match self.pat {
            Pat::Tile {
                inner, rep, blocks, ..
            } => inner.saturating_mul(rep).saturating_mul(blocks),
            _ => usize::MAX,
        }
    }

    /// The source's elements for flat indices `start .. start + len` (`len <= CH` unless the
    /// source is full).
    #[inline(always)]
    fn get(&mut self, start: usize, len: usize) -> &[T] {
        match self.pat {
            Pat::Full(x) => &x[start..start + len],
            Pat::Const(v) => {
                if self.cached_len < len {
                    for b in &mut self.buf[self.cached_len..len] {
                        b.write(v);
                    }
                    self.cached_len = len;
                }
                // SAFETY: buf[..cached_len] is initialized and len <= cached_len.
                unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const T, len) }
            }
            Pat::Tile {
                data,
                inner,
                rep,
                blocks,
            } => {
                let q = start / inner;
                let off = start - q * inner;
                let b = (q / rep) % blocks;
                if inner > 1 && off + len <= inner {
                    // one contiguous run
                    return &data[b * inner + off..b * inner + off + len];
                }
                // What the buffer must hold depends only on `key`: the repeated element for a chunk
                // inside one constant run, else the phase within the whole pattern's period.
                let key = if inner == 1 && rep - q % rep >= len {
                    (1, b)
                } else {
                    (2, start % self.period())
                };
                if self.cached_key != key || self.cached_len < len {
                    self.fill(start, len);
                    self.cached_key = key;
                    self.cached_len = len;
                }
                // SAFETY: buf[..cached_len] is initialized and len <= cached_len.
                unsafe { std::slice::from_raw_parts(self.buf.as_ptr() as *const T, len) }
            }
        }
    }

    #[inline(always)]
    fn fill(&mut self, start: usize, len: usize) {
        let Pat::Tile {
            data,
            inner,
            rep,
            blocks,
        } = self.pat
        else {
            return;
        };
        let mut i = start;
        let mut k = 0;
        while k < len {
            let q = i / inner;
            let off = i - q * inner;
            let b = (q / rep) % blocks;
            let run;
            if inner == 1 {
                run = (rep - q % rep).min(len - k);
                let v = data[b];
                for d in &mut self.buf[k..k + run] {
                    d.write(v);
                }
            } else {
                run = (inner - off).min(len - k);
                let s = &data[b * inner + off..b * inner + off + run];
                for (d, v) in self.buf[k..k + run].iter_mut().zip(s) {
                    d.write(*v);
                }
            }
            k += run;
            i += run;
        }
    }
}

/// Chunking: full-range when every source is full; else chunks of at most `CH`, cut at multiples
/// of the shortest run length when that is long enough to matter, or of a multiple of a short row
/// period (so a short row's tiled buffer is reused by every chunk).
struct Plan {
    all_full: bool,
    align: usize,
    chunk: usize,
}

impl Plan {
    fn new(runs: &[Option<usize>], periods: &[usize], all_full: bool) -> Plan {
        let min_run = runs.iter().flatten().copied().min();
        let min_period = periods.iter().copied().min().unwrap_or(usize::MAX);
        match min_run {
            Some(r) if r >= 64 => Plan {
                all_full,
                align: r,
                chunk: CH,
            },
            _ if min_period < CH => Plan {
                all_full,
                align: usize::MAX,
                chunk: (CH / min_period) * min_period,
            },
            _ => Plan {
                all_full,
                align: usize::MAX,
                chunk: CH,
            },
        }
    }

    #[inline(always)]
    fn next_len(&self, start: usize, n: usize) -> usize {
        if self.all_full {
            return n - start;
        }
        let mut len = self.chunk.min(n - start);
        if self.align != usize::MAX {
            len = len.min(self.align - start % self.align);
        }
        len
    }
}

macro_rules! driver {
    (
        $(#[$doc:meta])*
        $name:ident, $generic:ident, $avx512:ident, $avx2:ident;
        inplace: false; fargs: ($($fa:ident),*);
        $($s:ident : $T:ident),*
    ) => {
        $(#[$doc])*
        #[inline]
        pub fn $name<$($T: Copy,)* O: Copy, F: Fn($($fa),*) -> O>(
            $($s: Src<'_, $T>,)* out: &mut [O], f: F
        ) {
            driver!(@dispatch $generic, $avx512, $avx2; out, f; $($s),*);
        }
        driver!(@impl $generic, $avx512, $avx2; inplace: false; fargs: ($($fa),*); $($s: $T),*);
    };
    (
        $(#[$doc:meta])*
        $name:ident, $generic:ident, $avx512:ident, $avx2:ident;
        inplace: true; fargs: ($($fa:ident),*);
        $($s:ident : $T:ident),*
    ) => {
        $(#[$doc])*
        #[inline]
        pub fn $name<$($T: Copy,)* O: Copy, F: Fn($($fa),*) -> O>(
            out: &mut [O], $($s: Src<'_, $T>,)* f: F
        ) {
            driver!(@dispatch $generic, $avx512, $avx2; out, f; $($s),*);
        }
        driver!(@impl $generic, $avx512, $avx2; inplace: true; fargs: ($($fa),*); $($s: $T),*);
    };
    (@dispatch $generic:ident, $avx512:ident, $avx2:ident; $out:ident, $f:ident; $($s:ident),*) => {
        match isa::active() {
            // SAFETY: `active` only returns levels the CPU supports.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { $avx512($($s,)* $out, &$f) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { $avx2($($s,)* $out, &$f) },
            _ => $generic($($s,)* $out, &$f),
        }
    };
    (
        @impl $generic:ident, $avx512:ident, $avx2:ident;
        inplace: $inplace:tt; fargs: ($($fa:ident),*);
        $($s:ident : $T:ident),*
    ) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
        unsafe fn $avx512<$($T: Copy,)* O: Copy, F: Fn($($fa),*) -> O>(
            $($s: Src<'_, $T>,)* out: &mut [O], f: &F
        ) {
            $generic($($s,)* out, f)
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $avx2<$($T: Copy,)* O: Copy, F: Fn($($fa),*) -> O>(
            $($s: Src<'_, $T>,)* out: &mut [O], f: &F
        ) {
            $generic($($s,)* out, f)
        }

        #[inline(always)]
        #[allow(unused_mut)]
        fn $generic<$($T: Copy,)* O: Copy, F: Fn($($fa),*) -> O>(
            $($s: Src<'_, $T>,)* out: &mut [O], f: &F
        ) {
            let n = out.len();
            if n == 0 {
                return;
            }
            $(let mut $s = Feed::new($s, n);)*
            let plan = Plan::new(
                &[$($s.run_len(),)* None],
                &[$($s.period(),)* usize::MAX],
                true $(&& $s.is_full())*,
            );
            let mut start = 0;
            while start < n {
                let len = plan.next_len(start, n);
                $(let $s = $s.get(start, len); let $s = &$s[..len];)*
                let o = &mut out[start..start + len];
                driver!(@body $inplace; o, f, len; $($s),*);
                start += len;
            }
        }
    };
    (@body false; $o:ident, $f:ident, $len:ident; $($s:ident),*) => {
        for i in 0..$len {
            $o[i] = $f($($s[i]),*);
        }
    };
    (@body true; $o:ident, $f:ident, $len:ident; $($s:ident),*) => {
        for i in 0..$len {
            $o[i] = $f($o[i] $(, $s[i])*);
        }
    };
}

driver!(
    /// `out[i] = f(a[i])` for every `i < out.len()`.
    map1, map1_generic, map1_avx512, map1_avx2; inplace: false; fargs: (A); a: A);
driver!(
    /// `out[i] = f(a[i], b[i])` for every `i < out.len()`.
    map2, map2_generic, map2_avx512, map2_avx2; inplace: false; fargs: (A, B); a: A, b: B);
driver!(
    /// `out[i] = f(a[i], b[i], c[i])` for every `i < out.len()`.
    map3, map3_generic, map3_avx512, map3_avx2; inplace: false; fargs: (A, B, C); a: A, b: B, c: C);
driver!(
    /// `out[i] = f(a[i], b[i], c[i], d[i])` for every `i < out.len()`.
    map4, map4_generic, map4_avx512, map4_avx2; inplace: false; fargs: (A, B, C, D); a: A, b: B, c: C, d: D);
driver!(
    /// `out[i] = f(a[i], b[i], c[i], d[i], e[i])` for every `i < out.len()`.
    map5, map5_generic, map5_avx512, map5_avx2; inplace: false; fargs: (A, B, C, D, E); a: A, b: B, c: C, d: D, e: E);
driver!(
    /// `out[i] = f(out[i])`: the output overwrites its (dead) only input.
    map1_inplace, map1_inplace_generic, map1_inplace_avx512, map1_inplace_avx2; inplace: true; fargs: (O););
driver!(
    /// `out[i] = f(out[i], b[i])`: the output overwrites its dead first input.
    map2_inplace, map2_inplace_generic, map2_inplace_avx512, map2_inplace_avx2; inplace: true; fargs: (O, B);
    b: B);
driver!(
    /// `out[i] = f(out[i], b[i], c[i])`: the output overwrites its dead first input.
    map3_inplace, map3_inplace_generic, map3_inplace_avx512, map3_inplace_avx2; inplace: true; fargs: (O, B, C);
    b: B, c: C);
driver!(
    /// `out[i] = f(out[i], b[i], c[i], d[i])`: the output overwrites its dead first input.
    map4_inplace, map4_inplace_generic, map4_inplace_avx512, map4_inplace_avx2; inplace: true; fargs: (O, B, C, D);
    b: B, c: C, d: D);
driver!(
    /// `out[i] = f(out[i], b[i], c[i], d[i], e[i])`: the output overwrites its dead first input.
    map5_inplace, map5_inplace_generic, map5_inplace_avx512, map5_inplace_avx2; inplace: true; fargs: (O, B, C, D, E);
    b: B, c: C, d: D, e: E);
