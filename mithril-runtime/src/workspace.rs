//! Planned memory for generated `evaluate` / `evaluate_gradients`: one arena per model function,
//! laid out by the greedy offset plan of [`mithril_kernels::memplan`].
//!
//! How it works:
//!
//! * the macro numbers every intermediate buffer of the scheduled graph (a *slot*) and emits
//!   each slot's lifetime (first and last schedule step) as a constant; elementwise ops that may
//!   overwrite a dead input do so in place and share its slot, views (reshape, boundaries) extend
//!   their source's lifetime instead of taking a slot;
//! * the first call for a given set of input shapes runs in *recording* mode: every slot gets its
//!   own fresh buffer and its size is recorded; at the end ([`Workspace::finish`]) the sizes and
//!   lifetimes are planned into one arena (greedy by size), which is allocated once;
//! * later calls with the same shapes hand out views at the planned offsets: no heap allocation
//!   happens except for the returned outputs (which are owned by the caller and never planned);
//! * a new shape re-plans (the arena only grows);
//! * `memory_planning: none` keeps recording mode forever (every buffer allocated per call: the
//!   naive baseline), and `max_memory_gb` makes [`Workspace::finish`] return [`Error::Memory`]
//!   when a plan exceeds it;
//! * `max_memory_gb` is also enforced *before* allocating: a recording call refuses a slot
//!   (with [`Error::Memory`], nothing allocated for it) as soon as the slots live at its first
//!   step — which the plan must keep apart, so their sum is a lower bound of the planned peak —
//!   exceed the limit (without planning: as soon as the sum of all slots does);
//! * every buffer (slot, arena, owned output) is allocated fallibly through [`crate::alloc`]:
//!   an impossible size is an [`Error::Alloc`] naming the op and the bytes.
//!
//! Soundness rests on the plan: two slots share bytes only when their lifetimes are disjoint, and
//! a slot is written before it is read. Ops write every element of their destination.

use std::cell::UnsafeCell;

use mithril_kernels::memplan::{self, Buffer};
use ndarray::{ArrayD, ArrayViewMutD, IxDyn};

use crate::{DType, Elem, Error, Result};

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Block([u8; 64]);

fn blocks(bytes: usize) -> usize {
    bytes.div_ceil(64)
}

/// The memory numbers of the last plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryReport {
    /// Arena size: the planned peak of intermediate buffers, in bytes.
    pub planned_bytes: usize,
    /// Sum of all intermediate buffers, each in its own allocation (no reuse), in bytes.
    pub naive_bytes: usize,
    /// Number of intermediate buffers (slots).
    pub slots: usize,
}

struct Inner {
    /// The model, for errors ([`Workspace::named`]).
    model: &'static str,
    planning: bool,
    max_bytes: Option<u64>,
    life: &'static [(u32, u32)],
    /// Input shapes the current plan is for (flattened, with each rank first).
    key: Vec<usize>,
    planned: bool,
    /// Per slot: bytes requested in this call (recording) or planned.
    bytes: Vec<usize>,
    /// Recording mode: one buffer per slot.
    bufs: Vec<Vec<Block>>,
    /// Planned mode: the arena and each slot's offset in bytes.
    arena: Vec<Block>,
    offsets: Vec<usize>,
    report: Option<MemoryReport>,
    /// A planned call asked for a slot the plan had never seen used (a run-time `if`'s branch
    /// that had not run before): it got a buffer of its own, and `finish` plans again.
    replan: bool,
    /// A call has begun (`key` holds its shapes).
    begun: bool,
    /// The loop variables' temporaries of [`Workspace::carry_temp`] (8-byte words), kept
    /// between iterations and calls.
    carry_tmp: Vec<Vec<u64>>,
}

/// The memory of one generated model function (see the module docs). Generated code owns one
/// per function inside a `Mutex`; users reach its numbers through the model's `memory_report`.
pub struct Workspace {
    inner: UnsafeCell<Inner>,
    scratch: Option<Box<dyn std::any::Any>>,
}

// SAFETY: the raw interior is only reached through `&mut self` methods or, for the views handed
// out by `&self` methods, by the single thread that holds the `&Workspace` (it is not `Sync`).
unsafe impl Send for Workspace {}

impl Workspace {
    /// A workspace for a function whose slots have the lifetimes `life` (schedule steps, both
    /// inclusive). `planning: false` allocates every buffer on every call (no plan).
    pub fn new(life: &'static [(u32, u32)], planning: bool, max_memory_gb: Option<f64>) -> Self {
        Workspace {
            inner: UnsafeCell::new(Inner {
                model: "",
                planning,
                max_bytes: max_memory_gb.map(|g| (g * (1u64 << 30) as f64) as u64),
                life,
                key: Vec::new(),
                planned: false,
                bytes: vec![0; life.len()],
                bufs: Vec::new(),
                arena: Vec::new(),
                offsets: vec![0; life.len()],
                report: None,
                replan: false,
                begun: false,
                carry_tmp: Vec::new(),
            }),
            scratch: None,
        }
    }

    /// Per-call scratch of the plan interpreter (`crate::plan`), kept between calls so that a
    /// planned call allocates nothing but its outputs.
    pub(crate) fn scratch_mut(&mut self) -> &mut Option<Box<dyn std::any::Any>> {
        &mut self.scratch
    }

    /// Names the model the workspace belongs to (used in [`Error::Memory`] raised before a
    /// slot is allocated).
    pub fn named(mut self, model: &'static str) -> Self {
        self.inner_mut().model = model;
        self
    }

    fn inner_mut(&mut self) -> &mut Inner {
        self.inner.get_mut()
    }

    /// Starts a call whose inputs (and params, and seeds) have `shapes`: keeps the plan when they
    /// equal the last planned ones, otherwise switches to recording mode.
    pub fn begin(&mut self, shapes: &[&[usize]]) {
        self.begin_with(shapes.iter().copied());
    }

    /// [`Workspace::begin`] with the shapes from an iterator (no allocation when the plan is
    /// kept).
    pub fn begin_with<'s>(&mut self, shapes: impl Iterator<Item = &'s [usize]> + Clone) {
        let w = self.inner_mut();
        let same = w.planned && {
            let mut it = w.key.iter();
            shapes
                .clone()
                .all(|s| it.next() == Some(&s.len()) && s.iter().all(|d| it.next() == Some(d)))
                && it.next().is_none()
        };
        if same {
            return;
        }
        w.planned = false;
        w.begun = true;
        w.key.clear();
        for s in shapes {
            w.key.push(s.len());
            w.key.extend_from_slice(s);
        }
        w.bufs.clear();
        w.bufs.resize_with(w.life.len(), Vec::new);
        w.bytes.iter_mut().for_each(|b| *b = 0);
    }

    /// Ends a call: after a recording call, plans the arena for the recorded sizes. Fails with
    /// [`Error::Memory`] when the plan exceeds `max_memory_gb`.
    pub fn finish(&mut self, model: &str) -> Result<()> {
        let w = self.inner_mut();
        if w.planned && !w.replan {
            return Ok(());
        }
        w.replan = false;
        let bufs: Vec<Buffer> = w
            .life
            .iter()
            .zip(&w.bytes)
            .map(|(&(first, last), &bytes)| Buffer { bytes, first, last })
            .collect();
        let mut order = vec![0u32; bufs.len()];
        let peak = memplan::greedy(&bufs, &mut w.offsets, &mut order);
        let naive = memplan::naive(&bufs);
        let report = MemoryReport {
            planned_bytes: if w.planning { peak } else { naive },
            naive_bytes: naive,
            slots: bufs.len(),
        };
        w.report = Some(report);
        w.bufs.clear();
        if let Some(max) = w.max_bytes {
            let used = if w.planning { peak } else { report.naive_bytes } as u64;
            if used > max {
                return Err(Error::Memory {
                    model: model.to_string(),
                    needed: used,
                    limit: max,
                });
            }
        }
        if w.planning {
            if w.arena.len() < blocks(peak) {
                w.arena = Vec::new();
                w.arena = crate::alloc::zeroed_blocks::<Block>("memory plan (arena)", blocks(peak))
                    .map_err(|e| e.at(model, "the arena of the memory plan"))?;
            }
            w.planned = true;
        }
        Ok(())
    }

    /// The shapes of the views (inputs, params, ...) of the last call that ran with this
    /// workspace, in the order the call gave them (`None` before the first call). What
    /// `plan::last_symbols` binds the model's symbols from: the workspace keeps them anyway
    /// (its plan is for them), so keeping them costs a call nothing.
    pub fn last_shapes(&mut self) -> Option<Vec<Vec<usize>>> {
        let w = self.inner_mut();
        if !w.begun {
            return None;
        }
        let mut out = Vec::new();
        let mut i = 0;
        while i < w.key.len() {
            let rank = w.key[i];
            out.push(w.key.get(i + 1..i + 1 + rank)?.to_vec());
            i += 1 + rank;
        }
        Some(out)
    }

    /// The numbers of the last plan (`None` before the first call).
    pub fn report(&self) -> Option<MemoryReport> {
        // SAFETY: reads a `Copy` field; no view aliases it.
        unsafe { (*self.inner.get()).report }
    }

    /// A view of `shape` over slot `slot` (contents unspecified: the op writes every element).
    fn slot<'w, T: Elem>(
        &'w self,
        op: &str,
        slot: usize,
        shape: &[usize],
    ) -> Result<ArrayViewMutD<'w, T>> {
        let n = crate::alloc::check_shape(op, shape, std::mem::size_of::<T>())?;
        let data = self.slice::<T>(op, slot, n)?;
        ArrayViewMutD::from_shape(IxDyn(shape), data)
            .map_err(|e| Error::op(op, format!("internal: slot view: {e}")))
    }

    /// Slot `slot` as a slice of `n` elements (what `static_shapes` models use; [`Dest::Slot`]
    /// is the same memory as an array view). The generated code asks for each slot only while
    /// the plan says no other live value uses its memory.
    #[allow(clippy::mut_from_ref)]
    pub fn slice<'w, T: Elem>(&'w self, op: &str, slot: usize, n: usize) -> Result<&'w mut [T]> {
        let ptr = self.slot_ptr::<T>(op, slot, n)?;
        if T::DTYPE == DType::Bool && self.is_planned() {
            // Another slot's bytes may not be valid `bool`s.
            // SAFETY: the region is inside the arena (see `slot_ptr`).
            unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, n * std::mem::size_of::<T>()) };
        }
        // SAFETY: `ptr` is aligned to 64 and valid for `n` elements of `T` (every `Elem` is a
        // plain number type valid for any bit pattern, bools zeroed above); no other live view
        // overlaps it (the plan only shares bytes between slots with disjoint lifetimes).
        Ok(unsafe { std::slice::from_raw_parts_mut(ptr, n) })
    }

    /// At the end of a run-time loop's iteration (`static_shapes` models): the value `src`
    /// carried into loop variable slot `slot`, which already holds a value of `src.len()`
    /// elements (nothing is copied when `src` is that memory: an update computed in place).
    pub fn carry_into<T: Elem>(&self, op: &str, slot: usize, src: &[T]) -> Result<()> {
        let ptr = self.slot_ptr::<T>(op, slot, src.len())?;
        if std::ptr::eq(ptr as *const T, src.as_ptr()) {
            return Ok(());
        }
        // SAFETY: as in `slice`, and the slot holds the loop variable's current (valid)
        // values, so no zeroing; `src` is another value's memory (checked above; the plan never
        // overlaps two live values partly).
        unsafe { std::ptr::copy(src.as_ptr(), ptr, src.len()) };
        Ok(())
    }

    /// At the end of a run-time loop's iteration (`static_shapes` models): a copy of `src`,
    /// another loop variable's value that an update reads (a swap: the simultaneous assignment
    /// reads the old values, so they are copied before any loop variable is written), in the
    /// workspace's temporary `k`. The temporaries are kept between iterations and calls, so a
    /// steady loop allocates nothing. The generated code asks for each `k` once per iteration,
    /// and reads the copy before it asks for `k` again.
    pub fn carry_temp<T: Elem>(&self, op: &str, k: usize, src: &[T]) -> Result<&[T]> {
        if std::mem::align_of::<T>() > std::mem::align_of::<u64>() {
            return Err(Error::op(
                op,
                "internal: a loop variable's element is over-aligned",
            ));
        }
        let bytes = crate::alloc::check(op, src.len(), std::mem::size_of::<T>())?;
        // SAFETY: `carry_tmp` is not aliased by any view handed out: the slices this returns
        // point into the heap blocks of its inner vectors, and block `k` is only resized here,
        // when the copy previously returned for `k` is no longer read (see above); resizing the
        // outer vector moves the inner vectors' headers, not their blocks.
        let w = unsafe { &mut *self.inner.get() };
        if w.carry_tmp.len() <= k {
            w.carry_tmp.resize_with(k + 1, Vec::new);
        }
        let buf = &mut w.carry_tmp[k];
        let words = bytes.div_ceil(8);
        if buf.len() < words {
            buf.try_reserve_exact(words - buf.len())
                .map_err(|_| Error::op(op, format!("cannot allocate {bytes} bytes")))?;
            buf.resize(words, 0);
        }
        let p = buf.as_mut_ptr().cast::<T>();
        // SAFETY: the block holds at least `bytes` bytes, aligned for `T` (checked above); `src`
        // is a value's memory, never this block; every bit pattern copied is a valid `T` (it
        // is one).
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr(), p, src.len());
            Ok(std::slice::from_raw_parts(p, src.len()))
        }
    }

    fn is_planned(&self) -> bool {
        // SAFETY: reads a `Copy` field; no view aliases it.
        unsafe { (*self.inner.get()).planned }
    }

    /// The memory of slot `slot` for `n` elements of `T` (see [`Workspace::slice`]).
    fn slot_ptr<T: Elem>(&self, op: &str, slot: usize, n: usize) -> Result<*mut T> {
        let bytes = crate::alloc::check(op, n, std::mem::size_of::<T>())?;
        // SAFETY: the bookkeeping fields touched here are not aliased by any view handed out
        // (views point into `bufs[k]`'s heap blocks or into `arena`'s heap blocks, which are
        // never reallocated while views exist: `arena` only changes in `finish`, `bufs[k]` only
        // when slot `k` is requested, which the generated code does once per call, or once per
        // iteration of a run-time loop whose body holds it, when the previous iteration's
        // value in it is dead).
        let w = unsafe { &mut *self.inner.get() };
        if slot >= w.life.len() {
            return Err(Error::op(
                op,
                format!("internal: memory slot {slot} out of range"),
            ));
        }
        let ptr: *mut T = if w.planned && w.bytes[slot] == 0 && bytes > 0 {
            // a slot no call for these shapes has used yet (a run-time `if`'s other branch):
            // its own buffer for this call; `finish` plans the arena again with it
            if w.bufs.len() < w.life.len() {
                w.bufs.resize_with(w.life.len(), Vec::new);
            }
            w.bufs[slot] = crate::alloc::zeroed_blocks::<Block>(op, blocks(bytes))?;
            w.bytes[slot] = bytes;
            w.replan = true;
            w.bufs[slot].as_mut_ptr() as *mut T
        } else if w.planned && w.replan && w.bufs.get(slot).is_some_and(|b| !b.is_empty()) {
            // a slot first used in this call, asked for again (a loop's next iteration): the
            // buffer it got then
            if blocks(bytes) > w.bufs[slot].len() {
                return Err(Error::op(
                    op,
                    format!("internal: memory slot {slot} grew within a call to {bytes} bytes"),
                ));
            }
            w.bufs[slot].as_mut_ptr() as *mut T
        } else if w.planned {
            if bytes != w.bytes[slot] {
                return Err(Error::op(
                    op,
                    format!(
                        "internal: memory slot {slot} was planned for {} bytes, asked for {bytes}",
                        w.bytes[slot]
                    ),
                ));
            }
            // SAFETY: offset + bytes <= planned peak <= arena length (the plan places every slot
            // inside the peak), offsets are 64-aligned.
            unsafe { (w.arena.as_mut_ptr() as *mut u8).add(w.offsets[slot]) as *mut T }
        } else {
            if let Some(max) = w.max_bytes {
                let needed = w.needed_with(slot, bytes);
                if needed > max {
                    return Err(Error::Memory {
                        model: w.model.to_string(),
                        needed,
                        limit: max,
                    });
                }
            }
            // a run-time loop asks for its body's slots once per iteration: the buffer of the
            // previous iteration (whose values are dead) is reused
            if w.bufs[slot].len() != blocks(bytes).max(1) {
                w.bufs[slot] = Vec::new();
                w.bufs[slot] = crate::alloc::zeroed_blocks::<Block>(op, blocks(bytes).max(1))?;
            }
            w.bytes[slot] = bytes;
            w.bufs[slot].as_mut_ptr() as *mut T
        };
        Ok(ptr)
    }
}

impl Inner {
    /// Recording mode: a lower bound of the memory the plan will need once slot `slot` holds
    /// `bytes` — with planning, the sum of the slots recorded so far that are live at `slot`'s
    /// first step (their lifetimes overlap there, so the plan keeps them apart); without, the
    /// sum of every slot.
    fn needed_with(&self, slot: usize, bytes: usize) -> u64 {
        let at = self.life[slot].0;
        let others: u64 = self
            .bytes
            .iter()
            .zip(self.life)
            .enumerate()
            .filter(|&(j, (_, &(first, last)))| {
                j != slot && (!self.planning || (first <= at && at <= last))
            })
            .map(|(_, (&b, _))| b as u64)
            .sum();
        others + bytes as u64
    }
}

/// Where an op writes its result: a caller-owned array (returned outputs, and every op called
/// outside generated code) or a planned slot of a [`Workspace`].
pub enum Dest<'w, T> {
    /// A fresh owned array, stored into the option.
    Owned(&'w mut Option<ArrayD<T>>),
    /// Slot `.1` of a workspace.
    Slot(&'w Workspace, usize),
    /// A given standard-layout view (reshaped to the op's result shape, same element count).
    View(ArrayViewMutD<'w, T>),
}

impl<'w, T: Elem> Dest<'w, T> {
    /// The destination as a standard-layout view of `shape`. `Owned` starts zeroed; a `Slot`'s
    /// contents are unspecified — the op must write every element.
    pub fn get(self, op: &str, shape: &[usize]) -> Result<ArrayViewMutD<'w, T>> {
        match self {
            Dest::Owned(o) => {
                let a = o.insert(crate::alloc::zeros(op, shape)?);
                Ok(a.view_mut())
            }
            Dest::Slot(w, k) => w.slot(op, k, shape),
            Dest::View(v) => {
                let n: usize = shape.iter().product();
                if v.len() != n {
                    return Err(Error::op(
                        op,
                        format!(
                            "internal: destination has {} elements, the result {n}",
                            v.len()
                        ),
                    ));
                }
                v.into_shape_with_order(IxDyn(shape))
                    .map_err(|e| Error::op(op, format!("internal: destination view: {e}")))
            }
        }
    }
}

/// Runs an op that writes into a [`Dest`] and returns its result as an owned array.
pub fn owned<T: Elem>(f: impl FnOnce(Dest<'_, T>) -> Result<()>) -> Result<ArrayD<T>> {
    let mut o = None;
    f(Dest::Owned(&mut o))?;
    o.ok_or_else(|| Error::op("op", "internal: the op produced no result"))
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    static LIFE: [(u32, u32); 3] = [(0, 1), (1, 2), (2, 3)];

    #[cfg_attr(test, test)]
    pub(crate) fn records_then_plans_then_reuses() {
        let mut ws = Workspace::new(&LIFE, true, None);
        for call in 0..3 {
            ws.begin(&[&[4, 8]]);
            {
                let w = &ws;
                let mut a = Dest::<f32>::Slot(w, 0).get("t", &[4, 8]).unwrap();
                a.fill(1.0);
                let mut b = Dest::<f32>::Slot(w, 1).get("t", &[4, 8]).unwrap();
                b.assign(&a);
                b += 1.0;
                let mut c = Dest::<f32>::Slot(w, 2).get("t", &[4, 8]).unwrap();
                c.assign(&b);
                c *= 2.0;
                assert!(c.iter().all(|&x| x == 4.0), "call {call}");
            }
            ws.finish("m").unwrap();
        }
        let r = ws.report().unwrap();
        assert_eq!(r.naive_bytes, 3 * 128);
        assert_eq!(r.planned_bytes, 2 * 128);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn last_shapes_are_those_of_the_last_call() {
        let mut ws = Workspace::new(&LIFE, true, None);
        assert_eq!(ws.last_shapes(), None);
        // a scalar view (rank 0) between two others
        ws.begin(&[&[2, 3], &[], &[5]]);
        assert_eq!(ws.last_shapes(), Some(vec![vec![2, 3], vec![], vec![5]]));
        ws.finish("m").unwrap();
        // the same shapes again (the plan is kept), then others
        ws.begin(&[&[2, 3], &[], &[5]]);
        assert_eq!(ws.last_shapes(), Some(vec![vec![2, 3], vec![], vec![5]]));
        ws.finish("m").unwrap();
        ws.begin(&[&[7, 3], &[], &[1]]);
        assert_eq!(ws.last_shapes(), Some(vec![vec![7, 3], vec![], vec![1]]));
        // a model without views still has had a call
        let mut ws = Workspace::new(&LIFE, false, None);
        ws.begin(&[]);
        assert_eq!(ws.last_shapes(), Some(vec![]));
    }

    #[cfg_attr(test, test)]
    pub(crate) fn over_the_limit_is_an_error() {
        let mut ws = Workspace::new(&LIFE, true, Some(1e-9));
        ws.begin(&[&[1000]]);
        let e = Dest::<f64>::Slot(&ws, 0).get("t", &[1000]).unwrap_err();
        assert!(matches!(e, Error::Memory { needed: 8000, .. }), "{e:?}");
        // each slot alone fits, the plan (slots 0 and 1 live together at step 1) does not:
        // refused when the call finishes
        let mut ws = Workspace::new(&LIFE, true, Some(5000.0 / (1u64 << 30) as f64));
        ws.begin(&[&[1000]]);
        Dest::<f32>::Slot(&ws, 1).get("t", &[750]).unwrap();
        Dest::<f32>::Slot(&ws, 0).get("t", &[750]).unwrap();
        let e = ws.finish("m").unwrap_err().to_string();
        assert!(e.contains("model `m`") && e.contains("6016"), "{e}");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn over_the_limit_is_refused_before_allocating() {
        // limit: 1000 bytes; slots 0 and 1 are live together at step 1, slot 2 only with 1
        let mut ws = Workspace::new(&LIFE, true, Some(1000.0 / (1u64 << 30) as f64)).named("m");
        ws.begin(&[&[100]]);
        {
            let w = &ws;
            Dest::<f32>::Slot(w, 0).get("t", &[100]).unwrap(); // 400 bytes
            let e = Dest::<f32>::Slot(w, 1)
                .get("t", &[200]) // 800 more, live with slot 0: refused
                .unwrap_err();
            match e {
                Error::Memory {
                    model,
                    needed,
                    limit,
                } => {
                    assert_eq!((model.as_str(), needed, limit), ("m", 1200, 1000));
                }
                other => panic!("{other:?}"),
            }
            // nothing was allocated or recorded for the refused slot
            let inner = unsafe { &*w.inner.get() };
            assert!(inner.bufs[1].is_empty() && inner.bytes[1] == 0);
        }
        // without planning every slot counts
        let mut ws = Workspace::new(&LIFE, false, Some(1000.0 / (1u64 << 30) as f64));
        ws.begin(&[&[100]]);
        Dest::<f32>::Slot(&ws, 0).get("t", &[100]).unwrap();
        Dest::<f32>::Slot(&ws, 2).get("t", &[100]).unwrap(); // 800 in all
        assert!(matches!(
            Dest::<f32>::Slot(&ws, 1).get("t", &[100]),
            Err(Error::Memory { needed: 1200, .. })
        ));
    }

    #[cfg_attr(test, test)]
    pub(crate) fn impossible_slot_and_owned_sizes_are_alloc_errors() {
        let mut ws = Workspace::new(&LIFE, true, None);
        ws.begin(&[&[1]]);
        // 2^40 x 2^10 f32 = 4 PiB; never handed to the allocator
        let e = Dest::<f32>::Slot(&ws, 0)
            .get("relu", &[1 << 40, 1 << 10])
            .unwrap_err();
        assert!(
            matches!(&e, Error::Alloc { op, bytes, .. } if op == "relu" && *bytes == 1u128 << 52),
            "{e:?}"
        );
        let e = owned::<f64>(|d| d.get("add", &[1 << 20, 1 << 20]).map(|_| ())).unwrap_err();
        assert!(
            matches!(&e, Error::Alloc { op, bytes, .. } if op == "add" && *bytes == 8u128 << 40),
            "{e:?}"
        );
        let e = owned::<f64>(|d| d.get("add", &[1 << 40, 1 << 40]).map(|_| ())).unwrap_err();
        assert!(matches!(&e, Error::Alloc { .. }), "{e:?}");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn owned_dest() {
        let a = owned::<i64>(|d| {
            let mut v = d.get("t", &[2, 3])?;
            v.fill(7);
            Ok(())
        })
        .unwrap();
        assert_eq!(a.shape(), &[2, 3]);
        assert!(a.iter().all(|&x| x == 7));
    }
}
