//! Elementwise maps with NumPy broadcasting: the loops every fused elementwise kernel runs in.
//!
//! Strategy (the same for every arity):
//!
//! 1. every input is either the whole output in standard layout or a single value: one flat loop
//!    over plain slices, in chunks (single values are splatted into a small buffer), which the
//!    compiler vectorizes;
//! 2. otherwise, when the innermost output axis is long enough, a loop over output rows, each row
//!    handled like case 1 (an input row is a slice, a single broadcast value, or is gathered into
//!    a buffer when strided) — this covers bias-style row and column broadcasts;
//! 3. otherwise an `ndarray::Zip` over the broadcast views.
//!
//! The output is always a fresh array in standard (C) layout.

use ndarray::{ArrayD, ArrayView1, ArrayViewD, IxDyn, Zip};

use super::{checked_size, fmt_shape};
use crate::{Elem, Error, Result};

/// Elements per inner loop chunk (bounds the size of the splat buffers).
const CHUNK: usize = 1024;
/// Innermost lengths below this use the plain `Zip` path instead of the row path.
const MIN_ROW: usize = 16;

/// The broadcast shape of `shapes` under NumPy rules (right-aligned; each dim equal or 1).
///
/// Fails when two dims of an axis differ and neither is 1, or when the result is too large; the
/// error names `op` and lists every shape, e.g. "`add` failed: shapes [3, 4] and [5] cannot be
/// broadcast together (dim -1: 4 vs 5)".
pub fn broadcast_shapes(op: &str, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = vec![1usize; rank];
    for (i, o) in out.iter_mut().enumerate() {
        // `from_right` counts axes from the right: 0 is the last axis.
        let from_right = rank - 1 - i;
        let mut r = 1usize;
        for s in shapes {
            if from_right >= s.len() {
                continue;
            }
            let d = s[s.len() - 1 - from_right];
            if d != 1 {
                if r != 1 && r != d {
                    let list: Vec<String> = shapes.iter().map(|s| fmt_shape(s)).collect();
                    return Err(Error::op(
                        op,
                        format!(
                            "shapes {} cannot be broadcast together (dim -{}: {r} vs {d})",
                            list.join(" and "),
                            from_right + 1
                        ),
                    ));
                }
                r = d;
            }
        }
        *o = r;
    }
    checked_size(op, &out)?;
    Ok(out)
}

/// One input's contribution to a run of output elements.
enum Lane<'a, T> {
    /// Contiguous elements, one per output element.
    Slice(&'a [T]),
    /// One value broadcast over the whole run.
    Scalar(T),
    /// Strided elements (gathered into a buffer before use).
    Strided(ArrayView1<'a, T>),
}

impl<'a, T: Copy> Lane<'a, T> {
    /// The whole input as one run, when it is the whole output in standard layout or one value.
    #[inline]
    fn whole(x: &ArrayViewD<'a, T>, n: usize) -> Option<Self> {
        if x.len() == n {
            if let Some(s) = x.to_slice() {
                return Some(Lane::Slice(s));
            }
        }
        if x.len() == 1 {
            return x.first().map(|&v| Lane::Scalar(v));
        }
        None
    }

    /// One row of a broadcast view.
    #[inline]
    fn row(v: ArrayView1<'a, T>) -> Self {
        if let Some(s) = v.to_slice() {
            return Lane::Slice(s);
        }
        if v.strides().first() == Some(&0) {
            if let Some(&x) = v.first() {
                return Lane::Scalar(x);
            }
        }
        Lane::Strided(v)
    }

    /// Fills `buf` so that [`Lane::chunk`] can serve a run of `n` elements.
    #[inline]
    fn prepare(&self, buf: &mut Vec<T>, n: usize) {
        match self {
            Lane::Slice(_) => {}
            Lane::Scalar(x) => {
                buf.clear();
                buf.resize(n.min(CHUNK), *x);
            }
            Lane::Strided(v) => {
                buf.clear();
                buf.extend(v.iter().copied());
            }
        }
    }

    /// Elements `off .. off + len` of the run (`len <= CHUNK`).
    #[inline(always)]
    fn chunk<'s>(&'s self, buf: &'s [T], off: usize, len: usize) -> &'s [T] {
        match self {
            Lane::Slice(s) => &s[off..off + len],
            Lane::Scalar(_) => &buf[..len],
            Lane::Strided(_) => &buf[off..off + len],
        }
    }
}

/// Broadcasts `x` to `shape` (which `broadcast_shapes` produced from it).
fn bcast<'v, T>(op: &str, x: &'v ArrayViewD<'_, T>, shape: &[usize]) -> Result<ArrayViewD<'v, T>> {
    x.broadcast(IxDyn(shape)).ok_or_else(|| {
        Error::op(
            op,
            format!(
                "cannot broadcast shape {} to {}",
                fmt_shape(x.shape()),
                fmt_shape(shape)
            ),
        )
    })
}

/// Applies `f` to every element; the result has `a`'s shape in standard layout.
#[inline]
pub fn map1<A: Elem, R: Elem>(a: &ArrayViewD<'_, A>, f: impl Fn(A) -> R + Sync) -> ArrayD<R> {
    if a.is_standard_layout() {
        return a.map(|&x| f(x));
    }
    let mut out = ArrayD::from_elem(a.raw_dim(), R::default());
    Zip::from(&mut out).and(a).for_each(|o, &x| *o = f(x));
    out
}

macro_rules! define_map {
    ($(#[$doc:meta])* $name:ident; $($x:ident: $X:ident / $buf:ident),+) => {
        $(#[$doc])*
        #[inline]
        pub fn $name<$($X: Elem,)+ R: Elem>(
            op: &str,
            $($x: &ArrayViewD<'_, $X>,)+
            f: impl Fn($($X),+) -> R + Sync,
        ) -> Result<ArrayD<R>> {
            let shape = broadcast_shapes(op, &[$($x.shape()),+])?;
            let n = checked_size(op, &shape)?;
            let mut out = ArrayD::from_elem(IxDyn(&shape), R::default());
            if n == 0 {
                return Ok(out);
            }
            $(let mut $buf: Vec<$X> = Vec::new();)+
            // Runs `f` over one run of output elements, chunk by chunk, on plain slices.
            let mut run = |o: &mut [R], $($x: Lane<'_, $X>),+| {
                let len_all = o.len();
                $($x.prepare(&mut $buf, len_all);)+
                let mut off = 0;
                while off < len_all {
                    let len = CHUNK.min(len_all - off);
                    let oc = &mut o[off..off + len];
                    $(let $x = &$x.chunk(&$buf, off, len)[..len];)+
                    for (i, o) in oc.iter_mut().enumerate() {
                        *o = f($($x[i]),+);
                    }
                    off += len;
                }
            };
            // 1. whole contiguous inputs and single values: one flat run.
            if let ($(Some($x),)+) = ($(Lane::whole($x, n),)+) {
                if let Some(o) = out.as_slice_mut() {
                    run(o, $($x),+);
                    return Ok(out);
                }
            }
            $(let $x = bcast(op, $x, &shape)?;)+
            let inner = shape.last().copied().unwrap_or(1);
            if inner >= MIN_ROW {
                // 2. row by row.
                Zip::from(out.rows_mut())$(.and($x.rows()))+.for_each(|mut o, $($x),+| {
                    match o.as_slice_mut() {
                        Some(s) => run(s, $(Lane::row($x)),+),
                        // Rows of a fresh standard-layout array are contiguous; kept for safety.
                        None => Zip::from(&mut o)$(.and(&$x))+.for_each(|o, $(&$x),+| *o = f($($x),+)),
                    }
                });
            } else {
                // 3. element by element.
                Zip::from(&mut out)$(.and(&$x))+.for_each(|o, $(&$x),+| *o = f($($x),+));
            }
            Ok(out)
        }
    };
}

define_map!(
    /// Applies `f` elementwise to `a` and `b` broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and both shapes.
    map2; a: A / buf_a, b: B / buf_b
);
define_map!(
    /// Applies `f` elementwise to three inputs broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and every shape.
    map3; a: A / buf_a, b: B / buf_b, c: C / buf_c
);
define_map!(
    /// Applies `f` elementwise to four inputs broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and every shape.
    map4; a: A / buf_a, b: B / buf_b, c: C / buf_c, d: D / buf_d
);
define_map!(
    /// Applies `f` elementwise to five inputs broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and every shape.
    map5; a: A / buf_a, b: B / buf_b, c: C / buf_c, d: D / buf_d, e: E / buf_e
);
