//! Elementwise maps with NumPy broadcasting: the loops every fused elementwise kernel runs in.
//!
//! Strategy (the same for every arity):
//!
//! 0. the output is contiguous and every input is a contiguous tensor broadcast along at most one
//!    group of axes (same shape, a single value, a bias row `[N]`, a per-row column `[B, 1]`, a
//!    `[B, 1, W]` tile, with any leading broadcast axes): the fused closure runs in a
//!    [`mithril_kernels::ew`] driver, whose AVX-512 / AVX2+FMA / baseline copies are chosen at run
//!    time ([`mithril_kernels::isa`]) — the closure is inlined into each copy and vectorized with
//!    its instructions; broadcasts are read in place, never materialized;
//! 1. (fallback, for strided inputs or outputs) every input is either the whole output in
//!    standard layout or a single value: the driver over chunks of plain slices (single values
//!    are splatted into a small buffer);
//! 2. otherwise, when the innermost output axis is long enough, a loop over output rows, each row
//!    handled like case 1 (an input row is a slice, a single broadcast value, or is gathered into
//!    a buffer when strided);
//! 3. otherwise an `ndarray::Zip` over the broadcast views (baseline code: the `vmath` functions
//!    the compiler emits for `f32` are slow there, so only short strided rows end up here).
//!
//! The output is a fresh array in standard (C) layout (`mapK`), a planned destination
//! (`mapK_to`), or the first input itself (`mapK_inplace`). Nothing here allocates on the heap
//! apart from the owned results of `mapK`.

use mithril_kernels::ew::{self, Src};
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
/// error names `op` and lists every shape, e.g. ``"`add` failed: shapes [3, 4] and [5] cannot be
/// broadcast together (dim -1: 4 vs 5)"``.
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

/// How input `x` reads at each flat index of a contiguous output of shape `out` (which `x`
/// broadcasts to), when that is one [`Src`]: `x` is a single value, or `x` is contiguous and its
/// non-trivial axes, after any leading broadcast axes, are one group of matching axes, then at
/// most one group of broadcast axes, then at most one more group of matching axes. `None` sends
/// the op to the fallback loops.
#[inline]
#[doc(hidden)]
pub fn src_of<'a, T: Copy>(x: &ArrayViewD<'a, T>, out: &[usize], n: usize) -> Option<Src<'a, T>> {
    if x.len() == 1 {
        return x.first().map(|&v| Src::Scalar(v));
    }
    let data = x.to_slice()?;
    if data.len() == n {
        return Some(Src::Full(data));
    }
    let xs = x.shape();
    if xs.len() > out.len() || data.is_empty() {
        return None;
    }
    let pad = out.len() - xs.len();
    // Walk the axes left to right through the states: 0 leading broadcast, 1 first matching
    // group, 2 broadcast group, 3 second matching group.
    let (mut state, mut rep, mut inner) = (0u8, 1usize, 1usize);
    for (i, &d) in out.iter().enumerate() {
        if d == 1 {
            continue;
        }
        let xd = if i < pad { 1 } else { xs[i - pad] };
        let bcast = xd == 1;
        if !bcast && xd != d {
            return None;
        }
        state = match (state, bcast) {
            (0, true) => 0,
            (0 | 1, false) => 1,
            (1 | 2, true) => {
                rep *= d;
                2
            }
            (2 | 3, false) => {
                inner *= d;
                3
            }
            _ => return None,
        };
    }
    Some(match state {
        // all leading broadcast (single value: handled above) or one matching group repeated
        0 | 1 => Src::Row(data),
        2 => Src::Col(data, rep),
        _ => Src::Tile { data, inner, rep },
    })
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
    if let (Some(o), Some(x)) = (out.as_slice_mut(), a.as_slice()) {
        ew::map1(Src::Full(x), o, &f);
    } else if a.shape().last().copied().unwrap_or(1) >= MIN_ROW {
        // strided: row by row through the driver, strided rows gathered chunk by chunk
        let mut buf = [A::default(); CHUNK];
        Zip::from(out.rows_mut())
            .and(a.rows())
            .for_each(|mut o, x| match o.as_slice_mut() {
                Some(o) => {
                    let x = Lane::row(x);
                    x.prepare(&mut buf);
                    let mut off = 0;
                    while off < o.len() {
                        let len = CHUNK.min(o.len() - off);
                        let x = &x.chunk(&mut buf, off, len)[..len];
                        ew::map1(Src::Full(x), &mut o[off..off + len], &f);
                        off += len;
                    }
                }
                None => Zip::from(&mut o).and(&x).for_each(|o, &x| *o = f(x)),
            });
    } else {
        Zip::from(&mut out).and(a).for_each(|o, &x| *o = f(x));
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
        Some(s) => ew::map1_inplace(s, &f),
        None => a.map_inplace(|x| *x = f(*x)),
    }
    a
}

/// The loop every `mapK`, `mapK_to` and `mapK_inplace` runs: `out = f(inputs)` with inputs
/// already broadcast-compatible with `out` (whose shape is `shape`).
macro_rules! map_body {
    ($op:expr, $out:ident, $f:ident, $ew:path, $shape:expr, $n:expr; $($x:ident: $X:ident / $buf:ident),+) => {{
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
                    // the multiversioned driver, so the closure runs vectorized here too
                    $ew($(Src::Full($x),)+ oc, &$f);
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
        #[allow(clippy::too_many_arguments)]
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
            if n > 0 {
                if let Some(o) = out.as_slice_mut() {
                    if let (Some(s0), $(Some($x),)+) = (src_of($x0, shape, n), $(src_of($x, shape, n),)+) {
                        ew::$name(s0, $($x,)+ o, &f);
                        return Ok(out);
                    }
                }
            }
            map_body!(op, out, f, ew::$name, shape, n; $x0: $X0 / buf0, $($x: $X / $buf),+);
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
                if let Some(o) = $x0.as_slice_mut() {
                    if let ($(Some($x),)+) = ($(src_of($x, shape, n),)+) {
                        ew::$name_in(o, $($x,)+ &f);
                        return Ok($x0);
                    }
                }
                // Fallback for strided inputs: row by row through the driver (strided rows
                // gathered chunk by chunk), or element by element for short rows.
                $(let $x = bcast(op, $x, shape)?;)+
                if shape.last().copied().unwrap_or(1) >= MIN_ROW {
                    $(let mut $buf: [$X; CHUNK] = [$X::default(); CHUNK];)+
                    Zip::from($x0.rows_mut())$(.and($x.rows()))+.for_each(|mut o, $($x),+| {
                        match o.as_slice_mut() {
                            Some(o) => {
                                $(let $x = Lane::row($x); $x.prepare(&mut $buf);)+
                                let mut off = 0;
                                while off < o.len() {
                                    let len = CHUNK.min(o.len() - off);
                                    $(let $x = &$x.chunk(&mut $buf, off, len)[..len];)+
                                    ew::$name_in(&mut o[off..off + len], $(Src::Full($x),)+ &f);
                                    off += len;
                                }
                            }
                            None => Zip::from(&mut o)$(.and(&$x))+.for_each(|o, $(&$x),+| *o = f(*o, $($x),+)),
                        }
                    });
                } else {
                    Zip::from(&mut $x0)$(.and(&$x))+.for_each(|o, $(&$x),+| *o = f(*o, $($x),+));
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

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod src_tests {
    use super::*;

    fn kind(x_shape: &[usize], out: &[usize]) -> String {
        let n: usize = out.iter().product();
        let x = ArrayD::from_elem(IxDyn(x_shape), 1.0f32);
        match src_of(&x.view(), out, n) {
            None => "none".into(),
            Some(Src::Full(_)) => "full".into(),
            Some(Src::Scalar(_)) => "scalar".into(),
            Some(Src::Row(r)) => format!("row{}", r.len()),
            Some(Src::Col(c, inner)) => format!("col{}x{inner}", c.len()),
            Some(Src::Tile { data, inner, rep }) => format!("tile{}:{inner}x{rep}", data.len()),
        }
    }

    #[cfg_attr(test, test)]
    pub(crate) fn broadcasts_map_to_sources() {
        let o = [4, 5, 6];
        assert_eq!(kind(&[4, 5, 6], &o), "full");
        assert_eq!(kind(&[], &o), "scalar");
        assert_eq!(kind(&[1, 1, 1], &o), "scalar");
        assert_eq!(kind(&[6], &o), "row6");
        assert_eq!(kind(&[5, 6], &o), "row30");
        assert_eq!(kind(&[4, 1, 1], &o), "col4x30");
        assert_eq!(kind(&[4, 5, 1], &o), "col20x6");
        assert_eq!(kind(&[5, 1], &o), "col5x6");
        assert_eq!(kind(&[4, 1, 6], &o), "tile24:6x5");
        assert_eq!(kind(&[1, 5, 1], &o), "col5x6");
        assert_eq!(kind(&[4, 5, 1, 1], &[4, 5, 3, 2]), "col20x6");
        assert_eq!(kind(&[4, 1, 3, 1], &[4, 5, 3, 2]), "none");
        // strided input: fallback
        let x = ArrayD::from_elem(IxDyn(&[6, 5]), 1.0f32);
        assert!(src_of(&x.t().into_dyn(), &[5, 6], 30).is_none());
    }
}
