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
//! The output is a fresh array in standard (C) layout (`mapK`), a planned destination
//! (`mapK_to`), or the first input itself (`mapK_inplace`). Nothing here allocates on the heap
//! apart from the owned results of `mapK`.

use ndarray::{ArrayD, ArrayView1, ArrayViewD, ArrayViewMutD, Dimension, IxDyn, Zip};

use super::{checked_size, fmt_shape};
use crate::{Dest, Elem, Error, Result};

/// Elements per inner loop chunk (bounds the size of the splat buffers).
const CHUNK: usize = 256;
/// Innermost lengths below this use the plain `Zip` path instead of the row path.
const MIN_ROW: usize = 16;

/// The broadcast shape of `shapes` under NumPy rules (right-aligned; each dim equal or 1).
///
/// Fails when two dims of an axis differ and neither is 1, or when the result is too large; the
/// error names `op` and lists every shape, e.g. "`add` failed: shapes [3, 4] and [5] cannot be
/// broadcast together (dim -1: 4 vs 5)".
pub fn broadcast_shapes(op: &str, shapes: &[&[usize]]) -> Result<Vec<usize>> {
    Ok(broadcast_dims(op, shapes)?.as_array_view().to_vec())
}

/// [`broadcast_shapes`] as an `IxDyn` (no heap allocation up to rank 4).
pub fn broadcast_dims(op: &str, shapes: &[&[usize]]) -> Result<IxDyn> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = IxDyn::zeros(rank);
    for i in 0..rank {
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
        out[i] = r;
    }
    checked_size(op, out.slice())?;
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

    /// Fills `buf` once per run so that [`Lane::chunk`] can serve it (splatted single values).
    #[inline]
    fn prepare(&self, buf: &mut [T; CHUNK]) {
        if let Lane::Scalar(x) = self {
            buf.fill(*x);
        }
    }

    /// Elements `off .. off + len` of the run (`len <= CHUNK`); strided elements are gathered
    /// into `buf`.
    #[inline(always)]
    fn chunk<'s>(&'s self, buf: &'s mut [T; CHUNK], off: usize, len: usize) -> &'s [T] {
        match self {
            Lane::Slice(s) => &s[off..off + len],
            Lane::Scalar(_) => &buf[..len],
            Lane::Strided(v) => {
                for (b, x) in buf
                    .iter_mut()
                    .zip(v.slice(ndarray::s![off..off + len]).iter())
                {
                    *b = *x;
                }
                &buf[..len]
            }
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

/// [`map1`] into a destination.
#[inline]
pub fn map1_to<'w, A: Elem, R: Elem>(
    a: &ArrayViewD<'_, A>,
    dest: Dest<'w, R>,
    f: impl Fn(A) -> R + Sync,
) -> Result<ArrayViewMutD<'w, R>> {
    let mut out = dest.get("map", a.shape())?;
    match (out.as_slice_mut(), a.as_slice()) {
        (Some(o), Some(x)) => {
            for (o, &x) in o.iter_mut().zip(x) {
                *o = f(x);
            }
        }
        _ => Zip::from(&mut out).and(a).for_each(|o, &x| *o = f(x)),
    }
    Ok(out)
}

/// Applies `f` to every element of `a` in place (the memory planner's in-place reuse of a dead
/// input) and returns the same view.
#[inline]
pub fn map1_inplace<'w, A: Elem>(
    mut a: ArrayViewMutD<'w, A>,
    f: impl Fn(A) -> A + Sync,
) -> ArrayViewMutD<'w, A> {
    match a.as_slice_mut() {
        Some(s) => s.iter_mut().for_each(|x| *x = f(*x)),
        None => a.map_inplace(|x| *x = f(*x)),
    }
    a
}

/// The loop every `mapK`, `mapK_to` and `mapK_inplace` runs: `out = f(inputs)` with inputs
/// already broadcast-compatible with `out` (whose shape is `shape`).
macro_rules! map_body {
    ($op:expr, $out:ident, $f:ident, $shape:expr, $n:expr; $($x:ident: $X:ident / $buf:ident),+) => {{
        let n = $n;
        if n > 0 {
            $(let mut $buf: [$X; CHUNK] = [$X::default(); CHUNK];)+
            // Runs `f` over one run of output elements, chunk by chunk, on plain slices.
            let mut run = |o: &mut [_], $($x: Lane<'_, $X>),+| {
                let len_all = o.len();
                $($x.prepare(&mut $buf);)+
                let mut off = 0;
                while off < len_all {
                    let len = CHUNK.min(len_all - off);
                    let oc = &mut o[off..off + len];
                    $(let $x = &$x.chunk(&mut $buf, off, len)[..len];)+
                    for (i, o) in oc.iter_mut().enumerate() {
                        *o = $f($($x[i]),+);
                    }
                    off += len;
                }
            };
            let whole = ($(Lane::whole($x, n),)+);
            let mut done = false;
            if let ($(Some($x),)+) = whole {
                if let Some(o) = $out.as_slice_mut() {
                    run(o, $($x),+);
                    done = true;
                }
            }
            if !done {
                $(let $x = bcast($op, $x, $shape)?;)+
                let inner = $shape.last().copied().unwrap_or(1);
                if inner >= MIN_ROW {
                    // 2. row by row.
                    Zip::from($out.rows_mut())$(.and($x.rows()))+.for_each(|mut o, $($x),+| {
                        match o.as_slice_mut() {
                            Some(s) => run(s, $(Lane::row($x)),+),
                            None => Zip::from(&mut o)$(.and(&$x))+.for_each(|o, $(&$x),+| *o = $f($($x),+)),
                        }
                    });
                } else {
                    // 3. element by element.
                    Zip::from(&mut $out)$(.and(&$x))+.for_each(|o, $(&$x),+| *o = $f($($x),+));
                }
            }
        }
    }};
}

macro_rules! define_map {
    ($(#[$doc:meta])* $name:ident, $name_to:ident, $name_in:ident; $x0:ident: $X0:ident; $($x:ident: $X:ident / $buf:ident),+) => {
        $(#[$doc])*
        #[inline]
        pub fn $name<$X0: Elem, $($X: Elem,)+ R: Elem>(
            op: &str,
            $x0: &ArrayViewD<'_, $X0>,
            $($x: &ArrayViewD<'_, $X>,)+
            f: impl Fn($X0, $($X),+) -> R + Sync,
        ) -> Result<ArrayD<R>> {
            crate::owned(|d| $name_to(op, $x0, $($x,)+ d, f).map(|_| ()))
        }

        #[doc = concat!("[`", stringify!($name), "`] into a destination.")]
        #[inline]
        pub fn $name_to<'w, $X0: Elem, $($X: Elem,)+ R: Elem>(
            op: &str,
            $x0: &ArrayViewD<'_, $X0>,
            $($x: &ArrayViewD<'_, $X>,)+
            dest: Dest<'w, R>,
            f: impl Fn($X0, $($X),+) -> R + Sync,
        ) -> Result<ArrayViewMutD<'w, R>> {
            let shape = broadcast_dims(op, &[$x0.shape(), $($x.shape()),+])?;
            let n = checked_size(op, shape.slice())?;
            let mut out = dest.get(op, shape.slice())?;
            let shape = shape.slice();
            map_body!(op, out, f, shape, n; $x0: $X0 / buf0, $($x: $X / $buf),+);
            Ok(out)
        }

        #[doc = concat!("[`", stringify!($name), "`] writing over its first input (whose shape must be the broadcast shape): the memory planner's in-place reuse of a dead input.")]
        #[inline]
        pub fn $name_in<'w, $X0: Elem, $($X: Elem,)+>(
            op: &str,
            mut $x0: ArrayViewMutD<'w, $X0>,
            $($x: &ArrayViewD<'_, $X>,)+
            f: impl Fn($X0, $($X),+) -> $X0 + Sync,
        ) -> Result<ArrayViewMutD<'w, $X0>> {
            let shape = broadcast_dims(op, &[$x0.shape(), $($x.shape()),+])?;
            if shape.slice() != $x0.shape() {
                return Err(Error::op(op, format!("internal: in-place result shape {} differs from its input {}", fmt_shape(shape.slice()), fmt_shape($x0.shape()))));
            }
            let shape = shape.slice();
            let n = $x0.len();
            if n > 0 {
                $(let $x = bcast(op, $x, shape)?;)+
                match $x0.as_slice_mut() {
                    Some(o) if true $(&& $x.as_slice().is_some())+ => {
                        $(let $x = $x.as_slice().unwrap_or(&[]);)+
                        for (i, o) in o.iter_mut().enumerate() {
                            *o = f(*o, $($x[i]),+);
                        }
                    }
                    _ => {
                        Zip::from(&mut $x0)$(.and(&$x))+.for_each(|o, $(&$x),+| *o = f(*o, $($x),+));
                    }
                }
            }
            Ok($x0)
        }
    };
}

define_map!(
    /// Applies `f` elementwise to `a` and `b` broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and both shapes.
    map2, map2_to, map2_inplace; a: A; b: B / buf_b
);
define_map!(
    /// Applies `f` elementwise to three inputs broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and every shape.
    map3, map3_to, map3_inplace; a: A; b: B / buf_b, c: C / buf_c
);
define_map!(
    /// Applies `f` elementwise to four inputs broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and every shape.
    map4, map4_to, map4_inplace; a: A; b: B / buf_b, c: C / buf_c, d: D / buf_d
);
define_map!(
    /// Applies `f` elementwise to five inputs broadcast together (NumPy rules).
    ///
    /// Fails when the shapes do not broadcast; the error names `op` and every shape.
    map5, map5_to, map5_inplace; a: A; b: B / buf_b, c: C / buf_c, d: D / buf_d, e: E / buf_e
);
