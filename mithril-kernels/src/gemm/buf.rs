//! Thread-local scratch: packing buffers allocated once per thread and grown, never per call.

use std::cell::Cell;

/// One cache line; buffers are vectors of these so every buffer is 64-byte aligned.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
pub(crate) struct Line(pub(crate) [u8; 64]);

/// What pack mode ([`super::pack_b`]) fills: the micro-panels per K block and the packs.
#[derive(Clone, Debug, Default)]
pub(crate) struct PackOut {
    pub(crate) panels: usize,
    pub(crate) lines: Vec<Line>,
}

/// The three scratch buffers of one thread (packed A, packed B, partial sums / vectors).
#[derive(Default)]
pub(crate) struct Scratch {
    bufs: [Vec<Line>; 3],
}

thread_local! {
    static SCRATCH: Cell<Scratch> = const { Cell::new(Scratch { bufs: [Vec::new(), Vec::new(), Vec::new()] }) };
}

impl Scratch {
    /// Buffer `which` (0, 1, 2) with room for at least `len` elements of `T`, 64-byte aligned.
    /// The contents are unspecified (previous calls' data or zeros).
    pub(crate) fn get<T: Copy>(&mut self, which: usize, len: usize) -> *mut T {
        let bytes = len * std::mem::size_of::<T>();
        let lines = bytes.div_ceil(64) + 1;
        let v = &mut self.bufs[which];
        if v.len() < lines {
            // Grow geometrically so a slowly growing size does not reallocate every call.
            let want = lines.max(v.len() * 3 / 2);
            v.resize(want, Line([0; 64]));
        }
        v.as_mut_ptr().cast()
    }
}

/// Takes this thread's scratch out (a nested GEMM from an epilogue then gets fresh buffers
/// instead of aliasing these); hand it back with [`put`]. Not a closure-taking helper on
/// purpose: closures do not inherit `#[target_feature]`, and the hot loops must.
#[inline]
pub(crate) fn take() -> Scratch {
    SCRATCH.with(|c| c.take())
}

/// Returns scratch taken with [`take`] to this thread.
#[inline]
pub(crate) fn put(s: Scratch) {
    SCRATCH.with(|c| drop(c.replace(s)));
}
