//! Running a [`Plan`]: shape checks, the workspace, then every node in schedule order.

use super::{AnyArray, DimE, Home, POp, Plan, PlanElem, RKind, Step};
use crate::check::{check_shape, SymEnv};
use crate::elem::DType;
use crate::ops;
use crate::params::TensorView;
use crate::prepack::PackedW;
use crate::quant::{self, QWeight, Run};
use crate::workspace::{Dest, Workspace};
use crate::{Elem, Error, Result};
use half::{bf16, f16};
use mithril_kernels::ew::Src;
use mithril_kernels::prog::{self, Arg, Mode, Out, Prog, St};
use ndarray::{ArrayD, ArrayViewD, ArrayViewMutD, Dimension, IxDyn};
use smallvec::SmallVec;
use std::cell::RefCell;

/// Operand views of one op (inline up to 6).
type Ops<'v> = SmallVec<[TensorView<'v>; 6]>;
/// Borrowed operand views of one op.
type Refs<'v, 'w> = SmallVec<[&'v TensorView<'w>; 6]>;
use std::sync::Mutex;

/// A node's value during a run.
enum Val<'w> {
    Empty,
    /// user memory, or an owned output (read-only)
    Ro(TensorView<'w>),
    /// a workspace slot, writable by an in-place successor (made by [`rw`]; an entry as small
    /// as `Ro`, so that moving values costs no more)
    Rw(TensorView<'w>),
    /// the value of another node
    Alias(usize),
    /// view `k` of `run`'s `views`
    View(usize),
    /// a run-time loop's head: the iterations begun so far
    Count(u64),
}

/// A writable workspace value, kept as a view whose pointer came from the writable one.
fn rw<T: PlanElem>(v: ArrayViewMutD<'_, T>) -> Val<'_> {
    // SAFETY: the same memory for the same lifetime (the writable view is consumed); it is
    // written again only through [`writable`], by an in-place successor that takes the entry
    // out of the table first.
    let r: ArrayViewD<'_, T> = unsafe { v.raw_view().deref_into_view() };
    Val::Rw(T::any(r))
}

/// The writable view of a value made by [`rw`] (`None` if it is not standard-layout, which a
/// workspace slot always is).
///
/// SAFETY (callers): `v` comes from a `Val::Rw` taken out of the table, so that nothing else
/// reads or writes its memory while the result lives.
unsafe fn writable<'w, T>(v: &ArrayViewD<'w, T>) -> Option<ArrayViewMutD<'w, T>> {
    if !v.is_standard_layout() {
        return None;
    }
    ArrayViewMutD::from_shape_ptr(v.raw_dim(), v.as_ptr() as *mut T).into()
}

/// Run `plan` over `views` (inputs, then params, then output-gradient seeds, as the plan's
/// checks number them) with the planned workspace `ws` (or, when another call holds it, a
/// fresh unplanned one from `fallback`), writing output `k` into `outs[k]`.
///
/// After a call that kept the memory plan, nothing is allocated but the returned outputs: the
/// per-node value table is kept in the workspace and per-op operand lists are inline.
pub fn run(
    plan: &'static Plan,
    ws: &Mutex<Workspace>,
    fallback: impl FnOnce() -> Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
) -> Result<()> {
    run_probed(
        plan,
        ws,
        fallback,
        views,
        outs,
        Extra {
            donate: &[],
            donated: &mut [],
            q: Run::Off,
        },
        &mut Off,
    )
}

/// [`run`] with donated inputs (`donate: [x]`, `evaluate_donating`): each pair `(k, v)` of
/// `donate` offers the memory of view `v` (an input the caller owns and gives up, passed
/// through [`super::donor_view`]) for output `k`. The output is computed straight into that
/// memory when it is safe: the output's node is a returned, unguarded value of the input's
/// dtype and shape, no later node (nor any output) reads the input or a view of it, and the
/// node either does not read the input or is an elementwise group reading it element for
/// element (then it runs in place over it). `donated[i]` tells whether pair `i` was used;
/// output `k` of a used pair is left `None` in `outs` (the caller's array now holds it).
/// Otherwise the output is allocated as in [`run`]: donation never changes a result.
pub fn run_donating(
    plan: &'static Plan,
    ws: &Mutex<Workspace>,
    fallback: impl FnOnce() -> Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
    donate: &[(usize, usize)],
    donated: &mut [bool],
) -> Result<()> {
    run_probed(
        plan,
        ws,
        fallback,
        views,
        outs,
        Extra {
            donate,
            donated,
            q: Run::Off,
        },
        &mut Off,
    )
}

/// [`run`] with `hook` called before and after every op (see [`OpHook`]): the instrumented
/// path of models compiled with `profile`, `code_transformers` or a user hook. An `Err` from
/// the hook stops the run and is returned (with the model and the op's label added).
///
/// [`run`] itself is this loop with a probe whose calls compile to nothing: the per-op
/// instrumentation costs models compiled without it no check at run time.
pub fn run_hooked(
    plan: &'static Plan,
    ws: &Mutex<Workspace>,
    fallback: impl FnOnce() -> Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
    hook: &mut dyn OpHook,
) -> Result<()> {
    run_probed(
        plan,
        ws,
        fallback,
        views,
        outs,
        Extra {
            donate: &[],
            donated: &mut [],
            q: Run::Off,
        },
        &mut On(hook),
    )
}

/// [`run`] with quantization: `q` says whether the f32 products with a param weight run in
/// int8 (with `q`'s weights), record their activation ranges (calibration) or stay f32
/// ([`crate::quant`]).
pub fn run_with(
    plan: &'static Plan,
    ws: &Mutex<Workspace>,
    fallback: impl FnOnce() -> Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
    q: Run<'_>,
) -> Result<()> {
    run_probed(
        plan,
        ws,
        fallback,
        views,
        outs,
        Extra {
            donate: &[],
            donated: &mut [],
            q,
        },
        &mut Off,
    )
}

/// What an [`OpHook`] is told about an op.
#[derive(Clone, Copy, Debug)]
pub struct OpInfo<'p> {
    /// the physical model
    pub model: &'static str,
    /// the node's index in the plan (stable across calls: a key for per-op statistics)
    pub index: usize,
    /// the plan node (its op, attributes, dtype, operands)
    pub step: &'p Step,
}

impl OpInfo<'_> {
    /// The op's kind: `matmul`, `fused`, `fused_matmul`, `sum`, `softmax`, `reshape`, ...
    pub fn kind(&self) -> &'static str {
        self.step.op.kind()
    }

    /// How errors name the node (`` `matmul` of input `x`, param `fc.weight` for `h` in `fc` ``).
    pub fn label(&self) -> &'static str {
        self.step.what
    }
}

/// Called by [`run_hooked`] at op boundaries: `before` with the op's operands, `after` with
/// its result. Ops only: the views of inputs and params, aliases and the `phi` of a run-time
/// `if` are no ops, and a node skipped by a run-time `if` calls neither. `after` is not given
/// the operands, because an op computed in place has overwritten one of them by then.
///
/// An `Err` stops the run: [`run_hooked`] returns it with the model and the op's label added.
pub trait OpHook {
    /// Before the op runs.
    fn before(&mut self, op: &OpInfo<'_>, inputs: &[&TensorView<'_>]) -> Result<()> {
        let _ = (op, inputs);
        Ok(())
    }
    /// After the op ran; `output` is its result.
    fn after(&mut self, op: &OpInfo<'_>, output: &TensorView<'_>) -> Result<()> {
        let _ = (op, output);
        Ok(())
    }
}

/// The executor's view of instrumentation: [`Off`] (the plain [`run`]) compiles to nothing.
trait Probe {
    const ON: bool;
    fn before(&mut self, op: &OpInfo<'_>, inputs: &[&TensorView<'_>]) -> Result<()>;
    fn after(&mut self, op: &OpInfo<'_>, output: &TensorView<'_>) -> Result<()>;
}

struct Off;

impl Probe for Off {
    const ON: bool = false;
    #[inline(always)]
    fn before(&mut self, _: &OpInfo<'_>, _: &[&TensorView<'_>]) -> Result<()> {
        Ok(())
    }
    #[inline(always)]
    fn after(&mut self, _: &OpInfo<'_>, _: &TensorView<'_>) -> Result<()> {
        Ok(())
    }
}

struct On<'h>(&'h mut dyn OpHook);

impl Probe for On<'_> {
    const ON: bool = true;
    fn before(&mut self, op: &OpInfo<'_>, inputs: &[&TensorView<'_>]) -> Result<()> {
        self.0.before(op, inputs)
    }
    fn after(&mut self, op: &OpInfo<'_>, output: &TensorView<'_>) -> Result<()> {
        self.0.after(op, output)
    }
}

/// What some runs add to a plain one: donated inputs ([`run_donating`]) and quantization
/// ([`run_with`]).
struct Extra<'x> {
    donate: &'x [(usize, usize)],
    donated: &'x mut [bool],
    q: Run<'x>,
}

fn run_probed<P: Probe>(
    plan: &'static Plan,
    ws: &Mutex<Workspace>,
    fallback: impl FnOnce() -> Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
    extra: Extra<'_>,
    probe: &mut P,
) -> Result<()> {
    let Extra { donate, donated, q } = extra;
    donated.iter_mut().for_each(|d| *d = false);
    let donors = donors(plan, views, donate);
    let mut env = SymEnv::new(plan.syms);
    for c in &plan.checks {
        let v = views
            .get(c.view)
            .ok_or_else(|| Error::op(plan.model, "internal: plan checks a missing view"))?;
        check_shape(
            &mut env,
            plan.model,
            c.terminal,
            c.expected,
            v.shape(),
            &c.spec,
            c.ell,
        )?;
    }
    if outs.len() != plan.outputs.len() {
        return Err(Error::op(plan.model, "internal: output count"));
    }
    let mut guard;
    let mut tmp;
    let ws: &mut Workspace = match ws.try_lock() {
        Ok(g) => {
            guard = g;
            &mut guard
        }
        Err(_) => {
            tmp = fallback();
            &mut tmp
        }
    };
    ws.begin_with(views.iter().map(|v| v.shape()));
    // a chain of products (an MLP) runs without the per-node work (`super::chain`)
    if !P::ON && donate.is_empty() && super::chain::enabled() {
        if let Some(r) = super::chain::run(plan, ws, views, outs, q) {
            r?;
            ws.finish(plan.model)?;
            return Ok(());
        }
    }
    // the value table and the loops' tapes, reused across calls (the table is empty between
    // calls; the tapes keep their memory)
    let Scratch { mut table, tapes } = ws
        .scratch_mut()
        .as_mut()
        .and_then(|b| b.downcast_mut::<Scratch>())
        .map(std::mem::take)
        .unwrap_or_default();
    table.clear();
    let tapes = RefCell::new(tapes);
    // the copies of reshapes of user memory not in standard layout (declared before the
    // values, which may view them)
    let copies = RefCell::new(Vec::new());
    let r = {
        // SAFETY: the table is empty; a `Vec` of values of a shorter lifetime has the same layout.
        let vals: Vec<Val<'_>> =
            unsafe { std::mem::transmute::<Vec<Val<'static>>, Vec<Val<'_>>>(table) };
        let cx = Cx {
            plan,
            ws: &*ws,
            env: &env,
            views,
            outs: RefCell::new(outs),
            tapes: &tapes,
            donors: &donors,
            donated: RefCell::new(donated),
            q,
            copies: &copies,
        };
        let (r, mut vals) = cx.run_nodes(vals, probe);
        vals.clear();
        // SAFETY: empty again (see above).
        table = unsafe { std::mem::transmute::<Vec<Val<'_>>, Vec<Val<'static>>>(vals) };
        r
    };
    let back = Scratch {
        table,
        tapes: tapes.into_inner(),
    };
    match ws
        .scratch_mut()
        .as_mut()
        .and_then(|b| b.downcast_mut::<Scratch>())
    {
        Some(slot) => *slot = back,
        None => *ws.scratch_mut() = Some(Box::new(back)),
    }
    r?;
    ws.finish(plan.model)?;
    Ok(())
}

/// What a run keeps in its workspace between calls.
#[derive(Default)]
struct Scratch {
    table: Vec<Val<'static>>,
    tapes: Vec<Tape>,
}

/// The saved values of one carry of a run-time loop, one entry per iteration (what the
/// backward pass reads in reverse). Its memory is kept between calls: a loop that runs as
/// many iterations as before allocates nothing.
struct Tape {
    /// the loop's test node and the carry's position among the head's operands
    test: usize,
    j: usize,
    dt: DType,
    shape: Vec<usize>,
    /// bytes per entry
    bytes: usize,
    entries: usize,
    /// 8-byte aligned storage (every element type is at most 8 bytes)
    data: Vec<u64>,
}

struct Cx<'p, 'a, 'w> {
    tapes: &'p RefCell<Vec<Tape>>,
    plan: &'static Plan,
    ws: &'w Workspace,
    env: &'p SymEnv,
    views: &'p [TensorView<'a>],
    /// the returned outputs; an owned result goes straight into its first output
    outs: RefCell<&'p mut [Option<AnyArray>]>,
    /// the outputs computed into a donated input's memory ([`run_donating`])
    donors: &'p [Donor],
    /// which donation pairs were used
    donated: RefCell<&'p mut [bool]>,
    /// int8 products, calibration, or neither
    q: Run<'p>,
    /// reshapes planned as views of user memory that is not in standard layout: their
    /// copies, kept until the run ends ([`Cx::reshape_view`])
    copies: &'p RefCell<Vec<AnyArray>>,
}

/// An output computed into a donated input's memory.
#[derive(Clone, Copy, Debug)]
struct Donor {
    /// the output's node
    node: usize,
    /// the index of the pair in `donate` (and `donated`)
    pair: usize,
    /// the donated input's view
    view: usize,
    /// `Some(p)`: the node is an elementwise group that reads the input as its operand `p`
    /// and runs in place over it; `None`: it does not read it
    pos: Option<usize>,
}

/// The donation pairs that are safe for `plan` (see [`run_donating`]).
fn donors(
    plan: &Plan,
    views: &[TensorView<'_>],
    donate: &[(usize, usize)],
) -> SmallVec<[Donor; 2]> {
    let mut found: SmallVec<[Donor; 2]> = SmallVec::new();
    // the alias marks, in a per-thread buffer reused across calls (no allocation per call
    // once it has grown to the plan's size)
    let mut alias = ALIAS.with(|c| c.take());
    for (pair, &(k, view)) in donate.iter().enumerate() {
        let Some(&o) = plan.outputs.get(k) else {
            continue;
        };
        let Some(step) = plan.nodes.get(o) else {
            continue;
        };
        if plan.outputs.iter().filter(|&&x| x == o).count() != 1
            || step.home != Home::Owned
            || step.guard.is_some()
            || views
                .get(view)
                .is_none_or(|v| v.dtype() != step.dt || !v.is_standard_layout())
            || found.iter().any(|d| d.view == view || d.node == o)
        {
            continue;
        }
        let Some(d) = plan
            .nodes
            .iter()
            .position(|s| matches!(s.op, POp::View(v) if v == view))
        else {
            continue;
        };
        // the input's memory: its node and every view of it
        alias.clear();
        alias.resize(plan.nodes.len(), false);
        alias[d] = true;
        for (i, s) in plan.nodes.iter().enumerate() {
            if s.home == Home::View && s.args.iter().any(|&a| alias.get(a) == Some(&true)) {
                alias[i] = true;
            }
        }
        let reads = |s: &Step| s.args.iter().any(|&a| alias.get(a) == Some(&true));
        if plan.nodes[o + 1..].iter().any(reads)
            || plan.outputs.iter().any(|&x| alias.get(x) == Some(&true))
        {
            continue;
        }
        let at: SmallVec<[usize; 2]> = (0..step.args.len())
            .filter(|&p| alias.get(step.args[p]) == Some(&true))
            .collect();
        let pos = match at[..] {
            [] => None,
            [p] if step.args[p] == d && matches!(step.op, POp::Fused(..)) => Some(p),
            // a cache written in place: only the new rows (the value and start do not alias it)
            [0] if step.args[0] == d && matches!(step.op, POp::UpdateSlice { .. }) => Some(0),
            _ => continue,
        };
        found.push(Donor {
            node: o,
            pair,
            view,
            pos,
        });
    }
    ALIAS.with(|c| c.replace(alias));
    found
}

thread_local! {
    /// [`donors`]' alias marks, kept between calls.
    static ALIAS: std::cell::Cell<Vec<bool>> = const { std::cell::Cell::new(Vec::new()) };
}

/// A `match` on a dtype binding `$T` to the storage type of each listed variant in `$e`, then
/// the `$rest` arms.
macro_rules! dispatch {
    ($dt:expr, $T:ident => $e:expr; $($v:ident = $t:ty),*; $($rest:tt)*) => {
        match $dt {
            $(DType::$v => {
                type $T = $t;
                $e
            })*
            $($rest)*
        }
    };
}

/// `$T` bound to the storage type of `$dt` in `$e`.
macro_rules! any_t {
    ($dt:expr, $T:ident => $e:expr) => {
        dispatch!($dt, $T => $e;
            F32 = f32, F64 = f64, F16 = f16, BF16 = bf16, I32 = i32, I64 = i64, Bool = bool;)
    };
}

/// [`any_t`] over the numeric types (`bool` is an internal error naming `$what`).
macro_rules! num_t {
    ($dt:expr, $what:expr, $T:ident => $e:expr) => {
        dispatch!($dt, $T => $e;
            F32 = f32, F64 = f64, F16 = f16, BF16 = bf16, I32 = i32, I64 = i64;
            DType::Bool => Err(internal($what, "bool operand")),)
    };
}

/// [`any_t`] over the float types.
macro_rules! real_t {
    ($dt:expr, $what:expr, $T:ident => $e:expr) => {
        dispatch!($dt, $T => $e;
            F32 = f32, F64 = f64, F16 = f16, BF16 = bf16;
            _ => Err(internal($what, "non-float operand")),)
    };
}

fn internal(what: &str, msg: &str) -> Error {
    Error::op("plan", format!("internal: {msg} (computing {what})"))
}

/// A view with its lifetime extended to the run.
///
/// SAFETY (callers): the data outlives `'w` — it is workspace memory (borrowed for `'w`) or the
/// heap buffer of an array kept in `Cx::outs` until the run ends — and the memory plan gives no
/// other live value write access to it.
unsafe fn extend<'w, T>(v: ArrayViewMutD<'_, T>) -> ArrayViewMutD<'w, T> {
    let mut v = v;
    v.raw_view_mut().deref_into_view_mut()
}

impl AnyArray {
    /// The element type.
    pub fn dtype(&self) -> DType {
        self.view().dtype()
    }
    /// The array's shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            AnyArray::F32(v) => v.shape(),
            AnyArray::F64(v) => v.shape(),
            AnyArray::F16(v) => v.shape(),
            AnyArray::BF16(v) => v.shape(),
            AnyArray::I32(v) => v.shape(),
            AnyArray::I64(v) => v.shape(),
            AnyArray::Bool(v) => v.shape(),
        }
    }
    /// A writable view of the array.
    pub fn view_mut(&mut self) -> crate::params::TensorViewMut<'_> {
        use crate::params::TensorViewMut as M;
        match self {
            AnyArray::F32(v) => M::F32(v.view_mut()),
            AnyArray::F64(v) => M::F64(v.view_mut()),
            AnyArray::F16(v) => M::F16(v.view_mut()),
            AnyArray::BF16(v) => M::BF16(v.view_mut()),
            AnyArray::I32(v) => M::I32(v.view_mut()),
            AnyArray::I64(v) => M::I64(v.view_mut()),
            AnyArray::Bool(v) => M::Bool(v.view_mut()),
        }
    }
    /// A view of the array.
    pub fn view(&self) -> TensorView<'_> {
        match self {
            AnyArray::F32(v) => TensorView::F32(v.view()),
            AnyArray::F64(v) => TensorView::F64(v.view()),
            AnyArray::F16(v) => TensorView::F16(v.view()),
            AnyArray::BF16(v) => TensorView::BF16(v.view()),
            AnyArray::I32(v) => TensorView::I32(v.view()),
            AnyArray::I64(v) => TensorView::I64(v.view()),
            AnyArray::Bool(v) => TensorView::Bool(v.view()),
        }
    }
    fn cloned(&self) -> AnyArray {
        self.view().to_owned()
    }
}

impl<'a> TensorView<'a> {
    /// The same view with a shorter lifetime.
    pub fn reborrow<'b>(self) -> TensorView<'b>
    where
        'a: 'b,
    {
        match self {
            TensorView::F32(v) => TensorView::F32(v.reborrow()),
            TensorView::F64(v) => TensorView::F64(v.reborrow()),
            TensorView::F16(v) => TensorView::F16(v.reborrow()),
            TensorView::BF16(v) => TensorView::BF16(v.reborrow()),
            TensorView::I32(v) => TensorView::I32(v.reborrow()),
            TensorView::I64(v) => TensorView::I64(v.reborrow()),
            TensorView::Bool(v) => TensorView::Bool(v.reborrow()),
        }
    }
    fn to_owned(&self) -> AnyArray {
        match self {
            TensorView::F32(v) => AnyArray::F32(v.to_owned()),
            TensorView::F64(v) => AnyArray::F64(v.to_owned()),
            TensorView::F16(v) => AnyArray::F16(v.to_owned()),
            TensorView::BF16(v) => AnyArray::BF16(v.to_owned()),
            TensorView::I32(v) => AnyArray::I32(v.to_owned()),
            TensorView::I64(v) => AnyArray::I64(v.to_owned()),
            TensorView::Bool(v) => AnyArray::Bool(v.to_owned()),
        }
    }
}

/// The storage types a fused program reads and writes.
pub(super) trait ProgElem: PlanElem {
    const ST: St;
    fn arg(s: Src<'_, Self>) -> Arg<'_>;
    fn out(s: &mut [Self]) -> Out<'_>;
    fn acc_out(s: &mut [Self::Acc]) -> Out<'_>;
}

macro_rules! prog_elem {
    ($t:ty, $v:ident, $acc:ident) => {
        impl ProgElem for $t {
            const ST: St = St::$v;
            fn arg(s: Src<'_, Self>) -> Arg<'_> {
                Arg::$v(s)
            }
            fn out(s: &mut [Self]) -> Out<'_> {
                Out::$v(s)
            }
            fn acc_out(s: &mut [Self::Acc]) -> Out<'_> {
                Out::$acc(s)
            }
        }
    };
}
prog_elem!(f32, F32, F32);
prog_elem!(f64, F64, F64);
prog_elem!(f16, F16, F32);
prog_elem!(bf16, BF16, F32);
prog_elem!(i32, I32, I32);
prog_elem!(i64, I64, I64);
prog_elem!(bool, Bool, Bool);

impl<'p, 'a: 'w, 'w> Cx<'p, 'a, 'w> {
    /// The int8 weight an f32 product `step` (`a` its first operand) runs with, if any; in a
    /// calibration run, records `max |a|` for its weight and gives `None`.
    fn int8_weight(
        &self,
        step: &Step,
        ta: bool,
        tb: bool,
        a: &TensorView<'_>,
    ) -> Option<&'p QWeight> {
        if matches!(self.q, Run::Off | Run::Packed(_)) || ta || step.dt != DType::F32 {
            return None;
        }
        let (view, t) = step
            .args
            .get(1)
            .and_then(|&b| quant::b_view(self.plan, b))?;
        let TensorView::F32(a) = a else {
            return None;
        };
        match self.q {
            Run::Off | Run::Packed(_) => None,
            Run::Calibrate(c) => {
                c.record(view, max_abs(a));
                None
            }
            Run::Int8(s) => {
                let w = s.weight(view)?;
                (w.tb == (tb ^ t) && a.ndim() == 2).then_some(w)
            }
        }
    }

    /// The prepacked `B` of a product `step` (its own transpose flag `tb`) in a prepared run.
    fn packed_b(&self, step: &Step, tb: bool) -> Option<&'p PackedW> {
        let Run::Packed(p) = self.q else {
            return None;
        };
        p.for_product(self.plan, *step.args.get(1)?, tb)
    }

    /// The int8 weight a forward or transposed f32 convolution `step` (`x` its input) runs
    /// with, if any; in a calibration run, records `max |x|` for its weight and gives `None`.
    fn int8_conv(
        &self,
        step: &Step,
        spec: &ops::conv::ConvSpec,
        x: &TensorView<'_>,
    ) -> Option<&'p quant::QConv> {
        if matches!(self.q, Run::Off | Run::Packed(_))
            || !matches!(
                spec.kind,
                ops::conv::ConvKind::Forward | ops::conv::ConvKind::Transpose
            )
        {
            return None;
        }
        let (view, false) = step
            .args
            .get(1)
            .and_then(|&b| quant::b_view(self.plan, b))?
        else {
            return None;
        };
        let TensorView::F32(x) = x else {
            return None;
        };
        match self.q {
            Run::Off | Run::Packed(_) => None,
            Run::Calibrate(c) => {
                c.record(view, max_abs(x));
                None
            }
            Run::Int8(s) => s.conv(view),
        }
    }

    fn run_nodes<P: Probe>(
        &self,
        mut vals: Vec<Val<'w>>,
        probe: &mut P,
    ) -> (Result<()>, Vec<Val<'w>>) {
        let r = self.nodes(&mut vals, probe);
        (r, vals)
    }

    fn nodes<P: Probe>(&self, vals: &mut Vec<Val<'w>>, probe: &mut P) -> Result<()> {
        let steps = &self.plan.nodes;
        // the program counter: run-time loops jump back (see `POp::LoopEnd`)
        let mut pc = 0;
        while pc < steps.len() {
            let (id, step) = (pc, &steps[pc]);
            pc += 1;
            if vals.len() != id {
                return Err(internal(step.what, "value table out of step"));
            }
            if let Some(g) = step.guard {
                if !truth(vals, self.views(), g)? {
                    // a loop inside a branch that does not run: skipped as a whole (as when
                    // its test fails at once)
                    let end = match step.op {
                        POp::LoopHead => steps[id..].iter().find_map(|s| match s.op {
                            POp::LoopTest { end, .. } if s.args.first() == Some(&id) => Some(end),
                            _ => None,
                        }),
                        _ => None,
                    };
                    let Some(end) = end else {
                        vals.push(Val::Empty);
                        continue;
                    };
                    for k in id..=end {
                        vals.push(match steps.get(k).map(|s| &s.op) {
                            Some(POp::View(v)) => Val::View(*v),
                            _ => Val::Empty,
                        });
                    }
                    pc = end + 1;
                    continue;
                }
            }
            match &step.op {
                POp::LoopHead => {
                    vals.push(Val::Count(0));
                    continue;
                }
                POp::LoopTest { max, tape, end } => {
                    let (head, c) = match step.args[..] {
                        [h, c] => (h, c),
                        _ => return Err(internal(step.what, "loop test operands")),
                    };
                    if !truth(vals, self.views(), c)? {
                        // leave the loop: the body's values are not computed (terminals a
                        // body first used are views, which stay readable after the loop)
                        for k in id..=*end {
                            vals.push(match steps.get(k).map(|s| &s.op) {
                                Some(POp::View(v)) => Val::View(*v),
                                _ => Val::Empty,
                            });
                        }
                        pc = end + 1;
                        continue;
                    }
                    let n = match vals.get(head) {
                        Some(Val::Count(n)) => *n,
                        _ => return Err(internal(step.what, "loop test without its head")),
                    };
                    if let Some(m) = max {
                        if n >= *m {
                            return Err(Error::op(
                                self.plan.model,
                                format!("a run-time loop did not end within its `max_steps = {m}` iterations (its condition still held at the start of iteration {})", n + 1),
                            ));
                        }
                    }
                    vals[head] = Val::Count(n + 1);
                    if *tape != 0 {
                        self.tape_push(id, head, *tape, n, vals)
                            .map_err(|e| e.at(self.plan.model, step.what))?;
                    }
                    vals.push(Val::Empty);
                    continue;
                }
                POp::LoopEnd => {
                    let (Some(&head), Some(nexts)) = (step.args.first(), step.args.get(2..)) else {
                        return Err(internal(step.what, "loop end operands"));
                    };
                    let carries = steps.get(head).map(|s| &s.args[..]).unwrap_or(&[]);
                    // an update that is another carry's value (a swap) is read before any carry
                    // is overwritten (the assignments are simultaneous): kept aside first
                    let mut kept: SmallVec<[(usize, AnyArray); 2]> = SmallVec::new();
                    for &nx in nexts {
                        if let Some([c, u]) = steps.get(nx).map(|s| &s.args[..]) {
                            let mut src = *u;
                            while let Some(Val::Alias(j)) = vals.get(src) {
                                src = *j;
                            }
                            if src != *c && carries.contains(&src) {
                                kept.push((*c, arg_ref(vals, self.views(), src)?.to_owned()));
                            }
                        }
                    }
                    for &nx in nexts {
                        let (c, u) = match steps.get(nx).map(|s| &s.args[..]) {
                            Some([c, u]) => (*c, *u),
                            _ => return Err(internal(step.what, "loop end operands")),
                        };
                        match kept.iter().position(|k| k.0 == c) {
                            Some(i) => self.carry_from(step, c, &kept[i].1, vals)?,
                            None => self.carry_over(step, c, u, vals)?,
                        }
                    }
                    vals.truncate(head + 1);
                    pc = head + 1;
                    continue;
                }
                _ => {}
            }
            // instrumented runs only (`P::ON` is a constant: the plain `run` has no check here)
            let watched = P::ON
                && !matches!(
                    step.op,
                    POp::View(_)
                        | POp::Alias
                        | POp::Phi
                        | POp::Const(_)
                        | POp::LoopNext
                        | POp::LoopExit
                        // a view of a tape; its operand (the forward loop's test) is not a
                        // value after the loop
                        | POp::TapeRead(_)
                );
            let info = OpInfo {
                model: self.plan.model,
                index: id,
                step,
            };
            if watched {
                let ins = self.refs(step, vals)?;
                probe
                    .before(&info, &ins)
                    .map_err(|e| e.at(self.plan.model, step.what))?;
            }
            let donor = self.donors.iter().find(|d| d.node == id).copied();
            let v = match step.home {
                _ if donor.is_some_and(|d| d.pos.is_some()) => self
                    .donated_in_place(step, donor, vals)
                    .map_err(|e| e.at(self.plan.model, step.what))?,
                Home::InPlace(pos) => {
                    let target = step.args.get(pos).copied().unwrap_or(usize::MAX);
                    let t = match vals
                        .get_mut(target)
                        .map(|v| std::mem::replace(v, Val::Empty))
                    {
                        Some(Val::Rw(t)) => t,
                        _ => return Err(internal(step.what, "in-place target is not a slot")),
                    };
                    self.in_place(step, pos, vals, t)?
                }
                _ => self
                    .node(id, step, vals)
                    .map_err(|e| e.at(self.plan.model, step.what))?,
            };
            vals.push(v);
            if watched {
                let out = arg_ref(vals, self.views(), id)?;
                probe
                    .after(&info, out)
                    .map_err(|e| e.at(self.plan.model, step.what))?;
            }
        }
        let mut outs = self.outs.borrow_mut();
        let donated = self.donated.borrow();
        for (k, &o) in self.plan.outputs.iter().enumerate() {
            let given = self
                .donors
                .iter()
                .any(|d| d.node == o && donated.get(d.pair) == Some(&true));
            if outs[k].is_some() || given {
                continue;
            }
            let first = self.plan.outputs[..k].iter().position(|&x| x == o);
            outs[k] = Some(match first.and_then(|j| outs[j].as_ref()) {
                Some(a) => a.cloned(),
                None => arg_ref(vals, self.views(), o)?.to_owned(),
            });
        }
        Ok(())
    }

    /// The value of a node computed by `f` into its planned destination.
    fn put<T: PlanElem>(
        &self,
        id: usize,
        home: Home,
        f: impl FnOnce(Dest<'_, T>) -> Result<ArrayViewMutD<'_, T>>,
    ) -> Result<Val<'w>> {
        match home {
            Home::Slot(k) => {
                let v = f(Dest::Slot(self.ws, k))?;
                // SAFETY: workspace memory, borrowed for 'w (see `extend`).
                Ok(rw(unsafe { extend(v) }))
            }
            _ if self.donors.iter().any(|d| d.node == id) => {
                // into the donated input's memory (a donor that does not read it)
                let d = self.donors.iter().find(|d| d.node == id).copied();
                let (pair, view) = d.map(|d| (d.pair, d.view)).unwrap_or_default();
                let tv = self
                    .views()
                    .get(view)
                    .and_then(T::pick)
                    // SAFETY: the caller gave this memory up (`donor_view` of an array it owns,
                    // writable provenance), and no node after this one reads it (`donors`)
                    .and_then(|v| unsafe { writable(v) })
                    .ok_or_else(|| Error::op("plan", "internal: donated input not writable"))?;
                let want: SmallVec<[usize; 6]> = tv.shape().into();
                let v = f(Dest::View(tv))?;
                if v.shape() != &want[..] {
                    return Err(Error::op(
                        "plan",
                        "internal: a donated output of another shape than its input",
                    ));
                }
                if let Some(u) = self.donated.borrow_mut().get_mut(pair) {
                    *u = true;
                }
                // SAFETY: the donated memory outlives the run (the caller keeps its array).
                let r: ArrayViewD<'w, T> = unsafe { v.raw_view().deref_into_view() };
                Ok(Val::Ro(T::any(r)))
            }
            _ => {
                let mut o: Option<ArrayD<T>> = None;
                f(Dest::Owned(&mut o)).map(|_| ())?;
                let a = o.ok_or_else(|| Error::op("plan", "internal: no result"))?;
                // SAFETY: the array's heap buffer stays in `self.outs` until the run ends
                // (moving the array does not move its buffer).
                let v: ArrayViewD<'w, T> = unsafe { a.view().raw_view().deref_into_view() };
                let k = self
                    .plan
                    .outputs
                    .iter()
                    .position(|&o| o == id)
                    .ok_or_else(|| Error::op("plan", "internal: owned value that is no output"))?;
                self.outs.borrow_mut()[k] = Some(T::any_array(a));
                Ok(Val::Ro(T::any(v)))
            }
        }
    }

    fn dim(&self, d: &DimE) -> Result<usize> {
        Ok(match d {
            DimE::K(n) => *n,
            DimE::Sym(s) => self.env.value(*s)?,
            DimE::In { view, axis, back } => {
                let s = self
                    .views
                    .get(*view)
                    .map(|v| v.shape())
                    .ok_or_else(|| Error::op("plan", "internal: dim of a missing view"))?;
                let k = if *back {
                    s.len().checked_sub(*axis)
                } else {
                    Some(*axis)
                };
                k.and_then(|k| s.get(k).copied())
                    .ok_or_else(|| Error::op("plan", "internal: dim out of range"))?
            }
            DimE::Prod(c, ds) => {
                let mut p = *c;
                for d in ds {
                    p = p.saturating_mul(self.dim(d)?);
                }
                p
            }
        })
    }

    /// `run`'s views, with the run's lifetime.
    fn views(&self) -> &[TensorView<'w>] {
        // SAFETY: `'a: 'w`: the views live at least as long as the run, and are only read.
        unsafe { std::mem::transmute::<&[TensorView<'a>], &[TensorView<'w>]>(self.views) }
    }

    /// The operands of `step`, borrowed.
    fn refs<'v>(&'v self, step: &Step, vals: &'v [Val<'w>]) -> Result<Refs<'v, 'w>> {
        step.args
            .iter()
            .map(|&i| arg_ref(vals, self.views(), i))
            .collect()
    }

    fn node(&self, id: usize, step: &Step, vals: &[Val<'w>]) -> Result<Val<'w>> {
        let (h, dt, args) = (step.home, step.dt, &step.args);
        if h == Home::View
            && matches!(
                step.op,
                POp::Reshape(_) | POp::Flatten(..) | POp::Unsqueeze(_) | POp::ReshapeLike
            )
        {
            return self.reshape_view(step, vals);
        }
        let a = |k: usize| -> Result<TensorView<'_>> {
            args.get(k)
                .ok_or_else(|| internal(step.what, "missing operand"))
                .and_then(|&i| arg(vals, self.views(), i))
        };
        match &step.op {
            POp::View(k) => {
                if *k >= self.views.len() {
                    return Err(internal(step.what, "missing view"));
                }
                Ok(Val::View(*k))
            }
            POp::Alias => args
                .first()
                .map(|&a| Val::Alias(a))
                .ok_or_else(|| internal(step.what, "alias of nothing")),
            POp::LoopNext | POp::LoopExit => args
                .get(1)
                .map(|&a| Val::Alias(a))
                .ok_or_else(|| internal(step.what, "loop value without its operand")),
            POp::Carry(dims) => match args.first() {
                Some(_) => {
                    let x = a(0)?;
                    any_t!(dt, T => self.put::<T>(id, h, |d| {
                        let x = typed::<T>(&x)?;
                        let mut v = d.get("carry", x.shape())?;
                        v.assign(x);
                        Ok(v)
                    }))
                }
                None => {
                    let mut shape: SmallVec<[usize; 6]> = SmallVec::new();
                    for d in dims {
                        shape.push(self.dim(d)?);
                    }
                    any_t!(dt, T => self.put::<T>(id, h, |d| {
                        let mut v = d.get("carry", &shape)?;
                        v.fill(T::default());
                        Ok(v)
                    }))
                }
            },
            POp::DimValue(d) => {
                let n = self.dim(d)? as i64;
                self.put::<i64>(id, h, |d| {
                    let mut v = d.get("dim_value", &[])?;
                    v.fill(n);
                    Ok(v)
                })
            }
            POp::TapeRead(j) => self.tape_read(step, *j, vals),
            POp::SetAt { axis, add } => {
                let (acc, v) = (a(0)?, a(1)?);
                let i = index_value(&a(2)?, step.what)?;
                any_t!(dt, T => self.put::<T>(id, h, |d| {
                    let acc = typed::<T>(&acc)?;
                    let mut out = d.get("set_at", acc.shape())?;
                    out.assign(acc);
                    ops::shape::set_at_in(&mut out, typed::<T>(&v)?, *axis as isize, i, *add)?;
                    Ok(out)
                }))
            }
            POp::Phi => match args[..] {
                [g, _, t, e] => Ok(Val::Alias(if truth(vals, self.views(), g)? {
                    t
                } else {
                    e
                })),
                _ => Err(internal(step.what, "phi without its four operands")),
            },
            POp::Const(l) => any_t!(dt, T => self.put::<T>(id, h, |d| {
                let mut v = d.get("const", &[])?;
                v.fill(lit_value::<T>(*l));
                Ok(v)
            })),
            POp::Fused(label, p) => {
                let xs = self.refs(step, vals)?;
                any_t!(dt, T => self.put::<T>(id, h, |d| fused::<T>(p, &xs, d, label)))
            }
            POp::FusedMatmul { ta, tb, prog } => {
                let xs = self.refs(step, vals)?;
                let qw = xs.first().and_then(|x| self.int8_weight(step, *ta, *tb, x));
                let pre = self.packed_b(step, *tb);
                num_t!(dt, step.what, T => self.put::<T>(id, h, |d| fused_mm::<T>(*ta, *tb, prog, &xs, d, qw, pre)))
            }
            POp::Arange {
                start,
                step: st,
                len,
            } => {
                let n = self.dim(len)?;
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::arange_to(*start, *st, n, d)))
            }
            POp::Reshape(dims) => {
                let ds = self.reshape_dims(dims)?;
                let x = a(0)?;
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::reshape_to(typed::<T>(&x)?, &ds, d)))
            }
            op => self.prim(id, step, op, &a),
        }
    }

    fn prim<'v>(
        &self,
        id: usize,
        step: &Step,
        op: &POp,
        a: &dyn Fn(usize) -> Result<TensorView<'v>>,
    ) -> Result<Val<'w>> {
        let (h, dt, w) = (step.home, step.dt, step.what);
        let x = a(0)?;
        let xt = x.dtype();
        // an int8 product: the weight looked up (or, calibrating, the input range recorded) once
        if let POp::Matmul { ta, tb } = op {
            if let Some(qw) = self.int8_weight(step, *ta, *tb, &x) {
                return self.put::<f32>(id, h, |d| {
                    ops::qmatmul_epi_to::<f32, 0>(typed::<f32>(&x)?, qw, [], d, &|_, _| {})
                });
            }
        }
        match op {
            POp::Matmul { ta, tb } => {
                let y = a(1)?;
                match self.packed_b(step, *tb) {
                    Some(pre) => {
                        real_t!(dt, w, T => self.put::<T>(id, h, |d| ops::matmul_prepacked_to(typed::<T>(&x)?, typed::<T>(&y)?, *ta, *tb, d, pre)))
                    }
                    None => {
                        num_t!(dt, w, T => self.put::<T>(id, h, |d| ops::matmul_to(typed::<T>(&x)?, typed::<T>(&y)?, *ta, *tb, d)))
                    }
                }
            }
            POp::Transpose(p) => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::transpose_to(typed::<T>(&x)?, p, d)))
            }
            POp::Flatten(s, e) => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::flatten_to(typed::<T>(&x)?, *s, *e, d)))
            }
            POp::Concat(ax) | POp::Stack(ax) => {
                let n = step.args.len();
                let parts: Ops<'_> = (0..n).map(a).collect::<Result<_>>()?;
                let stack = matches!(op, POp::Stack(_));
                any_t!(dt, T => {
                    let ps: SmallVec<[ArrayViewD<'_, T>; 6]> = parts.iter().map(|p| typed::<T>(p).cloned()).collect::<Result<_>>()?;
                    if stack {
                        self.put::<T>(id, h, |d| ops::stack_to(&ps, *ax, d))
                    } else {
                        self.put::<T>(id, h, |d| ops::concat_to(&ps, *ax, d))
                    }
                })
            }
            POp::Slice(s) => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::slice_to(typed::<T>(&x)?, s, d)))
            }
            POp::Gather(ax) => {
                let i = a(1)?;
                any_t!(dt, T => num_t!(i.dtype(), w, I => self.put::<T>(id, h, |d| ops::gather_to(typed::<T>(&x)?, typed::<I>(&i)?, *ax, d))))
            }
            POp::TakeAlong => {
                let i = a(1)?;
                any_t!(dt, T => num_t!(i.dtype(), w, I => self.put::<T>(id, h, |d| ops::take_along_to(typed::<T>(&x)?, typed::<I>(&i)?, d))))
            }
            POp::Reduce(kind, axes, keep) => self.reduce(id, step, *kind, axes, *keep, &x),
            POp::Variance(axes, keep, corr) => real_t!(dt, w, T => {
                let c;
                let xv = if xt == dt { typed::<T>(&x)?.view() } else { c = cast_to::<T>(&x); c.view() };
                self.put::<T>(id, h, |d| ops::variance_to(&xv, axes, *keep, *corr, d))
            }),
            POp::ArgReduce { max, axis, keep } => num_t!(xt, w, T => self.put::<i64>(id, h, |d| {
                if *max { ops::argmax_to(typed::<T>(&x)?, *axis, *keep, d) } else { ops::argmin_to(typed::<T>(&x)?, *axis, *keep, d) }
            })),
            POp::Softmax(ax) => {
                real_t!(dt, w, T => self.put::<T>(id, h, |d| ops::softmax_to(typed::<T>(&x)?, *ax, d)))
            }
            POp::LogSoftmax(ax) => {
                real_t!(dt, w, T => self.put::<T>(id, h, |d| ops::log_softmax_to(typed::<T>(&x)?, *ax, d)))
            }
            POp::Norm {
                eps,
                rms,
                scale,
                bias,
            } => {
                let wt = if *scale { Some(a(1)?) } else { None };
                let bt = if *bias {
                    Some(a(1 + usize::from(*scale))?)
                } else {
                    None
                };
                real_t!(dt, w, T => self.put::<T>(id, h, |d| {
                    let wv = match &wt { Some(v) => Some(typed::<T>(v)?), None => None };
                    let bv = match &bt { Some(v) => Some(typed::<T>(v)?), None => None };
                    ops::norm_to(typed::<T>(&x)?, wv, bv, *eps, *rms, d)
                }))
            }
            // norm / dropout (random ops)
            POp::Dropout { p, op, seed } => {
                let training = match a(1)? {
                    TensorView::Bool(v) => v.iter().next().copied().unwrap_or(false),
                    _ => return Err(internal(w, "dropout's mode is not bool")),
                };
                let seed = match self.views().get(*seed) {
                    Some(v) => index_value(v, w)? as u64,
                    None => return Err(internal(w, "dropout's seed view is missing")),
                };
                let c = ops::dropout::DropoutCall {
                    p: *p,
                    op: *op,
                    seed,
                    training,
                };
                real_t!(dt, w, T => self.put::<T>(id, h, |d| ops::dropout::dropout_to(typed::<T>(&x)?, c, d)))
            }
            POp::Unsqueeze(axes) => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::unsqueeze_to(typed::<T>(&x)?, axes, d)))
            }
            POp::BroadcastLike
            | POp::ReshapeLike
            | POp::SumLike
            | POp::SizeRatio
            | POp::FullLike(_) => self.like(id, step, op, &x, a),
            POp::TakeAlongGrad => {
                let (i, l) = (a(1)?, a(2)?);
                num_t!(dt, w, T => num_t!(i.dtype(), w, I => self.put::<T>(id, h, |d| ops::take_along_backward_to(typed::<T>(&x)?, typed::<I>(&i)?, typed::<T>(&l)?, d))))
            }
            POp::GatherGrad(ax) => {
                let (i, l) = (a(1)?, a(2)?);
                num_t!(dt, w, T => num_t!(i.dtype(), w, I => self.put::<T>(id, h, |d| ops::gather_backward_to(typed::<T>(&x)?, typed::<I>(&i)?, typed::<T>(&l)?, *ax, d))))
            }
            POp::SliceGrad(s) => {
                let l = a(1)?;
                num_t!(dt, w, T => self.put::<T>(id, h, |d| ops::slice_backward_to(typed::<T>(&x)?, typed::<T>(&l)?, s, d)))
            }
            POp::ConcatPart(ax, k) => {
                let n = step.args.len();
                let parts: Ops<'_> = (1..n).map(a).collect::<Result<_>>()?;
                let shapes: SmallVec<[&[usize]; 6]> = parts.iter().map(|p| p.shape()).collect();
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::concat_part_to(typed::<T>(&x)?, &shapes, *ax, *k, d)))
            }
            POp::Tril(k) => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::tril_to(typed::<T>(&x)?, *k, d)))
            }
            POp::Triu(k) => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::triu_to(typed::<T>(&x)?, *k, d)))
            }
            POp::Cholesky => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::cholesky_to(typed::<T>(&x)?, d)))
            }
            POp::Eigvalsh => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::eigvalsh_to(typed::<T>(&x)?, d)))
            }
            POp::EighVectors => {
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::eigh_vectors_to(typed::<T>(&x)?, d)))
            }
            POp::SolveTriangular { upper, left, trans } => {
                let y = a(1)?;
                any_t!(dt, T => self.put::<T>(id, h, |d| ops::solve_triangular_to(typed::<T>(&x)?, typed::<T>(&y)?, *upper, *left, *trans, d)))
            }
            // pooling, pad, upsample (the pool family)
            POp::Pool(s) => {
                real_t!(dt, w, T => self.put::<T>(id, h, |d| ops::pool_to(typed::<T>(&x)?, s, d)))
            }
            POp::PoolGrad(s) => {
                let y = a(1)?;
                real_t!(dt, w, T => self.put::<T>(id, h, |d| ops::pool_backward_to(typed::<T>(&x)?, typed::<T>(&y)?, s, d)))
            }
            // attention
            POp::Attention {
                causal,
                scale,
                part,
                dropout,
            } => {
                // dropout: the mode is the last operand, the seed in its view
                let drop = match dropout {
                    None => None,
                    Some((p, op, seed)) => {
                        let training = match a(step.args.len() - 1)? {
                            TensorView::Bool(v) => v.iter().next().copied().unwrap_or(false),
                            _ => return Err(internal(w, "attention's mode is not bool")),
                        };
                        let seed = match self.views().get(*seed) {
                            Some(v) => index_value(v, w)? as u64,
                            None => return Err(internal(w, "attention's seed view is missing")),
                        };
                        training.then_some(ops::AttnDropout {
                            p: *p,
                            seed,
                            op: *op,
                        })
                    }
                };
                let n = step.args.len() - usize::from(dropout.is_some());
                self.attention(id, step, *causal, *scale, *part, drop, n, a)
            }
            POp::AttentionHeads {
                causal,
                scale,
                merge,
                cols,
            } => {
                let (q, k, v) = (a(0)?, a(1)?, a(2)?);
                let m = if step.args.len() > 3 {
                    Some(a(3)?)
                } else {
                    None
                };
                macro_rules! go {
                    ($T:ty) => {{
                        let mb;
                        let mf;
                        let mask = match &m {
                            None => ops::AttnMask::None,
                            Some(mv) if mv.dtype() == DType::Bool => {
                                mb = typed::<bool>(mv)?;
                                ops::AttnMask::Bool(mb)
                            }
                            Some(mv) => {
                                mf = typed::<$T>(mv)?;
                                ops::AttnMask::Add(mf)
                            }
                        };
                        let (q, k, v) = (typed::<$T>(&q)?, typed::<$T>(&k)?, typed::<$T>(&v)?);
                        self.put::<$T>(id, h, |d| {
                            ops::attention_heads_to(
                                (q, cols[0]),
                                (k, cols[1]),
                                (v, cols[2]),
                                mask,
                                *causal,
                                *scale,
                                *merge,
                                d,
                            )
                        })
                    }};
                }
                match dt {
                    DType::F32 => go!(f32),
                    DType::F64 => go!(f64),
                    _ => Err(internal(w, "the fused attention runs in f32 / f64")),
                }
            }
            // ---- convolution
            POp::Conv(spec) => {
                let y = a(1)?;
                let l = if step.args.len() > 2 {
                    Some(a(2)?)
                } else {
                    None
                };
                let qc = if dt == DType::F32 && l.is_none() {
                    self.int8_conv(step, spec, &x)
                } else {
                    None
                };
                if let Some(qc) = qc {
                    return self.put::<f32>(id, h, |d| {
                        ops::conv::qconv_to(spec, typed::<f32>(&x)?, typed::<f32>(&y)?, qc, d)
                    });
                }
                // f16 / bf16: the f32 kernels on widened operands
                macro_rules! conv {
                    ($T:ty, $f:ident) => {
                        self.put::<$T>(id, h, |d| {
                            let like = l.as_ref().map(typed::<$T>).transpose()?;
                            ops::conv::$f(spec, typed::<$T>(&x)?, typed::<$T>(&y)?, like, d)
                        })
                    };
                }
                match dt {
                    DType::F32 => conv!(f32, conv_to),
                    DType::F64 => conv!(f64, conv_to),
                    DType::F16 => conv!(f16, conv_half_to),
                    DType::BF16 => conv!(bf16, conv_half_to),
                    other => Err(Error::op(
                        spec.name(),
                        format!("{other:?} is not supported (f32, f64, f16 and bf16 are)"),
                    )),
                }
            }
            POp::ConvEpi {
                spec,
                bias,
                relu,
                pool,
            } => {
                let (spec, relu, pool) = (&**spec, *relu, *pool);
                let y = a(1)?;
                let b = if *bias { Some(a(2)?) } else { None };
                let qc = if dt == DType::F32 {
                    self.int8_conv(step, spec, &x)
                } else {
                    None
                };
                if let Some(qc) = qc {
                    if pool {
                        // the int8 convolution into a temporary, its epilogue, then the pool
                        return self.put::<f32>(id, h, |d| {
                            let (xv, wv) = (typed::<f32>(&x)?, typed::<f32>(&y)?);
                            let bv = b.as_ref().map(typed::<f32>).transpose()?;
                            ops::conv::qconv_epi_pool_to(spec, xv, wv, qc, bv, relu, d)
                        });
                    }
                    return self.put::<f32>(id, h, |d| {
                        let (xv, wv) = (typed::<f32>(&x)?, typed::<f32>(&y)?);
                        let mut out = ops::conv::qconv_to(spec, xv, wv, qc, d)?;
                        let bv = b.as_ref().map(typed::<f32>).transpose()?;
                        ops::conv::conv_epilogue_in_place(
                            spec,
                            xv.shape(),
                            wv.shape(),
                            bv,
                            relu,
                            &mut out,
                        )?;
                        Ok(out)
                    });
                }
                macro_rules! conv_epi {
                    ($T:ty) => {
                        self.put::<$T>(id, h, |d| {
                            let bv = b.as_ref().map(typed::<$T>).transpose()?;
                            let (xv, wv) = (typed::<$T>(&x)?, typed::<$T>(&y)?);
                            if pool {
                                ops::conv::conv_epi_pool_to(spec, xv, wv, bv, relu, d)
                            } else {
                                ops::conv::conv_epi_to(spec, xv, wv, bv, relu, d)
                            }
                        })
                    };
                }
                match dt {
                    DType::F32 => conv_epi!(f32),
                    DType::F64 => conv_epi!(f64),
                    other => Err(Error::op(
                        spec.name(),
                        format!(
                            "{other:?} is not supported with a fused epilogue (f32 and f64 are)"
                        ),
                    )),
                }
            }
            // incremental decoding
            POp::UpdateSlice { axis } => {
                let (acc, v) = (a(0)?, a(1)?);
                let i = index_value(&a(2)?, step.what)?;
                any_t!(dt, T => self.put::<T>(id, h, |d| {
                    let acc = typed::<T>(&acc)?;
                    let mut out = d.get("update_slice", acc.shape())?;
                    out.assign(acc);
                    ops::shape::update_slice_in(&mut out, typed::<T>(&v)?, *axis as isize, i)?;
                    Ok(out)
                }))
            }
            POp::CachedAttention { scale } => {
                let (q, k, v) = (a(0)?, a(1)?, a(2)?);
                let p = index_value(&a(3)?, step.what)?;
                // f16 / bf16: the f32 kernel on the widened rows in use
                macro_rules! cached {
                    ($T:ty, $f:ident) => {
                        self.put::<$T>(id, h, |d| {
                            let (q, k, v) = (typed::<$T>(&q)?, typed::<$T>(&k)?, typed::<$T>(&v)?);
                            ops::$f(q, k, v, p, *scale, d)
                        })
                    };
                }
                match dt {
                    DType::F32 => cached!(f32, cached_attention_to),
                    DType::F64 => cached!(f64, cached_attention_to),
                    DType::F16 => cached!(f16, cached_attention_half_to),
                    DType::BF16 => cached!(bf16, cached_attention_half_to),
                    _ => Err(internal(w, "cached_attention on a non-float operand")),
                }
            }
            _ => Err(internal(w, "op not handled")),
        }
    }

    /// `attention` and its gradients (`POp::Attention`): operands `q, k, v[, mask]` and for a
    /// gradient `out, out gradient` after them (`n` of them, the mode after them not counted).
    #[allow(clippy::too_many_arguments)]
    fn attention<'v>(
        &self,
        id: usize,
        step: &Step,
        causal: bool,
        scale: Option<f64>,
        part: u8,
        drop: Option<ops::AttnDropout>,
        n: usize,
        a: &dyn Fn(usize) -> Result<TensorView<'v>>,
    ) -> Result<Val<'w>> {
        let (h, dt, w) = (step.home, step.dt, step.what);
        let has_mask = if part == 0 { n == 4 } else { n == 6 };
        let (q, k, v) = (a(0)?, a(1)?, a(2)?);
        let m = if has_mask { Some(a(3)?) } else { None };
        let grads = if part == 0 {
            None
        } else {
            let at = if has_mask { 4 } else { 3 };
            Some((a(at)?, a(at + 1)?))
        };
        let gpart = match part {
            1 => ops::AttnPart::Q,
            2 => ops::AttnPart::K,
            3 => ops::AttnPart::V,
            4 => ops::AttnPart::KV,
            _ => ops::AttnPart::Scores,
        };
        // f16 / bf16 run the f32 kernel on widened operands (`attention_half_to`)
        macro_rules! go {
            ($T:ty, $fwd:ident, $bwd:ident) => {{
                let mb;
                let mf;
                let mask = match &m {
                    None => ops::AttnMask::None,
                    Some(mv) if mv.dtype() == DType::Bool => {
                        mb = typed::<bool>(mv)?;
                        ops::AttnMask::Bool(mb)
                    }
                    Some(mv) => {
                        mf = typed::<$T>(mv)?;
                        ops::AttnMask::Add(mf)
                    }
                };
                let (q, k, v) = (typed::<$T>(&q)?, typed::<$T>(&k)?, typed::<$T>(&v)?);
                match &grads {
                    None => {
                        self.put::<$T>(id, h, |d| ops::$fwd(q, k, v, mask, causal, scale, drop, d))
                    }
                    Some((o, g)) => {
                        let (o, g) = (typed::<$T>(o)?, typed::<$T>(g)?);
                        self.put::<$T>(id, h, |d| {
                            ops::$bwd(q, k, v, mask, o, g, causal, scale, drop, gpart, d)
                        })
                    }
                }
            }};
        }
        match dt {
            DType::F32 => go!(f32, attention_dropout_to, attention_grad_dropout_to),
            DType::F64 => go!(f64, attention_dropout_to, attention_grad_dropout_to),
            DType::F16 => go!(f16, attention_half_to, attention_grad_half_to),
            DType::BF16 => go!(bf16, attention_half_to, attention_grad_half_to),
            _ => Err(internal(w, "attention on a non-float operand")),
        }
    }

    /// A `reshape`'s target dims with the run's symbols resolved (`-1`: inferred), on the stack
    /// up to rank 8: a reshape allocates nothing per call.
    fn reshape_dims(&self, dims: &[Option<DimE>]) -> Result<SmallVec<[isize; 8]>> {
        dims.iter()
            .map(|d| match d {
                Some(d) => self.dim(d).map(|v| v as isize),
                None => Ok(-1),
            })
            .collect()
    }

    /// A reshape the plan made a view of its operand (a slot, an input or a param:
    /// `passes/memplan.rs` in the compiler): the operand's memory under the new shape, no copy
    /// (user memory not in standard layout is copied once for the run).
    fn reshape_view(&self, step: &Step, vals: &[Val<'w>]) -> Result<Val<'w>> {
        let operand = |k: usize| {
            step.args
                .get(k)
                .ok_or_else(|| internal(step.what, "missing operand"))
                .and_then(|&i| arg_ref(vals, self.views(), i))
        };
        let x = operand(0)?;
        let (from, n) = (x.shape(), x.num_elements());
        let shape = match &step.op {
            POp::Reshape(dims) => ops::shape::reshape_shape(from, n, &self.reshape_dims(dims)?)?,
            POp::Flatten(s, e) => ops::shape::flatten_shape(from, *s, *e),
            POp::Unsqueeze(axes) => ops::shape::unsqueeze_shape(from, axes),
            _ => {
                let like = operand(1)?;
                if like.num_elements() != n {
                    return Err(Error::op(
                        "reshape",
                        format!(
                            "cannot reshape {} into {}",
                            crate::check::format_shape(from),
                            crate::check::format_shape(like.shape())
                        ),
                    ));
                }
                IxDyn(like.shape())
            }
        };
        if let Some(v) = x.clone().reshaped(shape.slice()) {
            return Ok(Val::Ro(v));
        }
        // user memory (an input, a param) in another layout: a copy, kept for the run
        any_t!(step.dt, T => {
            let a = crate::owned(|d| ops::shape::copy_reshaped_to(typed::<T>(x)?, shape.slice(), d).map(|_| ()))?;
            // SAFETY: the array's heap buffer stays in `self.copies` until the run ends (moving
            // the array does not move its buffer), like an owned output's in `put`.
            let v: ArrayViewD<'w, T> = unsafe { a.view().raw_view().deref_into_view() };
            self.copies.borrow_mut().push(T::any_array(a));
            Ok(Val::Ro(T::any(v)))
        })
    }

    fn like<'v>(
        &self,
        id: usize,
        step: &Step,
        op: &POp,
        x: &TensorView<'_>,
        a: &dyn Fn(usize) -> Result<TensorView<'v>>,
    ) -> Result<Val<'w>> {
        let (h, dt, w) = (step.home, step.dt, step.what);
        match op {
            POp::FullLike(v) => {
                any_t!(dt, T => any_t!(x.dtype(), U => self.put::<T>(id, h, |d| ops::full_like_to(typed::<U>(x)?, *v, d))))
            }
            POp::SizeRatio => {
                let y = a(1)?;
                any_t!(dt, T => any_t!(x.dtype(), U => any_t!(y.dtype(), V => self.put::<T>(id, h, |d| ops::size_ratio_to::<T, U, V>(typed::<U>(x)?, typed::<V>(&y)?, d)))))
            }
            POp::BroadcastLike => {
                let y = a(1)?;
                any_t!(dt, T => any_t!(y.dtype(), U => self.put::<T>(id, h, |d| ops::broadcast_like_to(typed::<T>(x)?, typed::<U>(&y)?, d))))
            }
            POp::ReshapeLike => {
                let y = a(1)?;
                any_t!(dt, T => any_t!(y.dtype(), U => self.put::<T>(id, h, |d| ops::reshape_like_to(typed::<T>(x)?, typed::<U>(&y)?, d))))
            }
            POp::SumLike => {
                let y = a(1)?;
                num_t!(dt, w, T => any_t!(y.dtype(), U => self.put::<T>(id, h, |d| ops::sum_like_to(typed::<T>(x)?, typed::<U>(&y)?, d))))
            }
            _ => Err(internal(w, "op not handled")),
        }
    }

    fn reduce(
        &self,
        id: usize,
        step: &Step,
        kind: RKind,
        axes: &[isize],
        keep: bool,
        x: &TensorView<'_>,
    ) -> Result<Val<'w>> {
        let (h, dt, w) = (step.home, step.dt, step.what);
        // `mean` of integers and `sum`/`prod` of bools change the dtype: convert first
        let conv = x.dtype() != dt;
        macro_rules! red {
            ($T:ident, $f:path) => {{
                let c;
                let xv = if conv {
                    c = cast_to::<$T>(x);
                    c.view()
                } else {
                    typed::<$T>(x)?.view()
                };
                self.put::<$T>(id, h, |d| $f(&xv, axes, keep, d))
            }};
        }
        match kind {
            RKind::Mean => real_t!(dt, w, T => red!(T, ops::mean_to)),
            RKind::Sum => num_t!(dt, w, T => red!(T, ops::sum_to)),
            RKind::Prod => num_t!(dt, w, T => red!(T, ops::prod_to)),
            RKind::Max => num_t!(dt, w, T => red!(T, ops::max_to)),
            RKind::Min => num_t!(dt, w, T => red!(T, ops::min_to)),
        }
    }

    /// At a loop's end: update `u` becomes the value of carry `c` for the next iteration —
    /// nothing to do when `u` was computed in place over `c`'s memory (the carry's entry was
    /// taken by it), else a copy into `c`'s memory.
    fn carry_over(&self, step: &Step, c: usize, u: usize, vals: &mut [Val<'w>]) -> Result<()> {
        let mut src = u;
        while let Some(Val::Alias(j)) = vals.get(src) {
            src = *j;
        }
        if src == c {
            return Ok(());
        }
        match vals.get(c) {
            Some(Val::Empty) => {
                // taken in place by its update: the update's entry is the carry's memory
                match vals
                    .get_mut(src)
                    .map(|v| std::mem::replace(v, Val::Alias(c)))
                {
                    // (the update's entry now names the carry: another carry given the same
                    // update reads it there)
                    Some(v @ Val::Rw(_)) => {
                        vals[c] = v;
                        Ok(())
                    }
                    _ => Err(internal(step.what, "a loop variable lost its memory")),
                }
            }
            Some(Val::Rw(_)) => {
                let Some(Val::Rw(t)) = vals.get_mut(c).map(|v| std::mem::replace(v, Val::Empty))
                else {
                    return Err(internal(step.what, "loop variable"));
                };
                let r = (|| {
                    let from = arg_ref(vals, self.views(), src)?;
                    if from.shape() != t.shape() {
                        return Err(Error::op(
                            self.plan.model,
                            format!(
                                "internal: a loop variable of shape {:?} was given a value of shape {:?}",
                                t.shape(),
                                from.shape()
                            ),
                        ));
                    }
                    any_t!(t.dtype(), T => {
                        // SAFETY: `t` was taken out of the table (see `writable`).
                        let mut d = T::pick(&t).and_then(|v| unsafe { writable(v) }).ok_or_else(|| internal(step.what, "loop variable memory"))?;
                        d.assign(typed::<T>(from)?);
                        Ok(())
                    })
                })();
                vals[c] = Val::Rw(t);
                r
            }
            _ => Err(internal(step.what, "a loop variable without its memory")),
        }
    }

    /// At a loop's end: carry `c` given a value kept aside (another carry's, in a swap).
    fn carry_from(
        &self,
        step: &Step,
        c: usize,
        from: &AnyArray,
        vals: &mut [Val<'w>],
    ) -> Result<()> {
        let Some(Val::Rw(t)) = vals.get_mut(c).map(|v| std::mem::replace(v, Val::Empty)) else {
            return Err(internal(step.what, "a loop variable without its memory"));
        };
        let from = from.view();
        let r = if from.shape() != t.shape() {
            Err(internal(
                step.what,
                "a swapped loop variable changed its shape",
            ))
        } else {
            any_t!(t.dtype(), T => {
                // SAFETY: `t` was taken out of the table (see `writable`).
                let mut d = T::pick(&t).and_then(|v| unsafe { writable(v) }).ok_or_else(|| internal(step.what, "loop variable memory"))?;
                d.assign(typed::<T>(&from)?);
                Ok(())
            })
        };
        vals[c] = Val::Rw(t);
        r
    }

    /// At the start of iteration `n` of the loop of test `test`: the carries of `mask` saved.
    fn tape_push(
        &self,
        test: usize,
        head: usize,
        mask: u64,
        n: u64,
        vals: &[Val<'w>],
    ) -> Result<()> {
        let carries = &self.plan.nodes[head].args;
        let mut tapes = self.tapes.borrow_mut();
        for (j, &c) in carries.iter().enumerate() {
            if j >= 64 || mask & (1 << j) == 0 {
                continue;
            }
            let v = arg_ref(vals, self.views(), c)?;
            let k = match tapes.iter().position(|t| t.test == test && t.j == j) {
                Some(k) => k,
                None => {
                    tapes.push(Tape {
                        test,
                        j,
                        dt: v.dtype(),
                        shape: Vec::new(),
                        bytes: 0,
                        entries: 0,
                        data: Vec::new(),
                    });
                    tapes.len() - 1
                }
            };
            let tape = &mut tapes[k];
            if n == 0 {
                tape.entries = 0;
                tape.dt = v.dtype();
                tape.shape.clear();
                tape.shape.extend_from_slice(v.shape());
                tape.bytes = v.shape().iter().product::<usize>() * v.dtype().size();
            } else if tape.shape.as_slice() != v.shape() || tape.dt != v.dtype() {
                return Err(Error::op(
                    "loop",
                    "internal: a taped value changed its shape",
                ));
            }
            let words = tape.bytes.div_ceil(8);
            let need = (tape.entries + 1) * words;
            if tape.data.len() < need {
                crate::alloc::check("loop tape", need, 8)?;
                tape.data.resize(need, 0);
            }
            let at = tape.entries * words;
            any_t!(v.dtype(), T => {
                let src = typed::<T>(v)?;
                // SAFETY: the entry holds `bytes` bytes, 8-aligned, of a plain element type.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(
                        tape.data[at..].as_mut_ptr() as *mut T,
                        tape.bytes / std::mem::size_of::<T>(),
                    )
                };
                match src.as_slice() {
                    Some(s) => dst.copy_from_slice(s),
                    None => dst.iter_mut().zip(src.iter()).for_each(|(d, s)| *d = *s),
                }
                Ok::<(), Error>(())
            })?;
            tape.entries += 1;
        }
        Ok(())
    }

    /// A taped carry's value at iteration `args[1]` (a view of the tape).
    fn tape_read(&self, step: &Step, j: usize, vals: &[Val<'w>]) -> Result<Val<'w>> {
        let (test, i) = match step.args[..] {
            [t, i] => (t, i),
            _ => return Err(internal(step.what, "tape read operands")),
        };
        let i = index_value(&arg(vals, self.views(), i)?, step.what)?;
        let tapes = self.tapes.borrow();
        let tape = tapes
            .iter()
            .find(|t| t.test == test && t.j == j)
            .ok_or_else(|| internal(step.what, "no tape"))?;
        if i < 0 || i as usize >= tape.entries {
            return Err(internal(step.what, "tape read out of range"));
        }
        let words = tape.bytes.div_ceil(8);
        let ptr = tape.data[i as usize * words..].as_ptr();
        let shape = IxDyn(&tape.shape);
        // SAFETY: the tape's memory stays put until the run ends: it only grows while its loop
        // runs forward, and the backward loop that reads it runs after that loop ended.
        let v = any_t!(tape.dt, T => {
            let a: ArrayViewD<'w, T> = unsafe { ArrayViewD::from_shape_ptr(shape, ptr as *const T) };
            Ok::<TensorView<'w>, Error>(T::any(a))
        })?;
        Ok(Val::Ro(v))
    }

    /// An output computed in place over the donated input it reads (an elementwise group).
    fn donated_in_place(
        &self,
        step: &Step,
        donor: Option<Donor>,
        vals: &[Val<'w>],
    ) -> Result<Val<'w>> {
        let Some(Donor {
            pair,
            view,
            pos: Some(pos),
            ..
        }) = donor
        else {
            return Err(internal(step.what, "not an in-place donor"));
        };
        let t = self
            .views()
            .get(view)
            .cloned()
            .ok_or_else(|| internal(step.what, "missing donated view"))?;
        // (`in_place` runs the group over `t`, checking that the result has its shape)
        let v = self.in_place(step, pos, vals, t)?;
        if let Some(u) = self.donated.borrow_mut().get_mut(pair) {
            *u = true;
        }
        // read-only from here: no successor may write over an output
        Ok(match v {
            Val::Rw(t) => Val::Ro(t),
            other => other,
        })
    }

    /// An elementwise group writing over its dead operand `pos`.
    fn in_place(
        &self,
        step: &Step,
        pos: usize,
        vals: &[Val<'w>],
        t: TensorView<'w>,
    ) -> Result<Val<'w>> {
        if let POp::SetAt { axis, add } = &step.op {
            if pos != 0 {
                return Err(internal(step.what, "set_at in place over its value"));
            }
            let v = arg(vals, self.views(), step.args[1])?;
            let i = index_value(&arg(vals, self.views(), step.args[2])?, step.what)?;
            let r = any_t!(step.dt, T => {
                // SAFETY: `t` was taken out of the table (see `writable`).
                let mut tv = T::pick(&t).and_then(|v| unsafe { writable(v) }).ok_or_else(|| internal(step.what, "in-place target of another dtype"))?;
                ops::shape::set_at_in(&mut tv, typed::<T>(&v)?, *axis as isize, i, *add).map(|()| rw(tv))
            });
            return r.map_err(|e| e.at(self.plan.model, step.what));
        }
        if let POp::UpdateSlice { axis } = &step.op {
            if pos != 0 {
                return Err(internal(step.what, "update_slice in place over its value"));
            }
            let v = arg(vals, self.views(), step.args[1])?;
            let i = index_value(&arg(vals, self.views(), step.args[2])?, step.what)?;
            let r = any_t!(step.dt, T => {
                // SAFETY: `t` was taken out of the table or donated (see `writable`).
                let mut tv = T::pick(&t).and_then(|v| unsafe { writable(v) }).ok_or_else(|| internal(step.what, "in-place target of another dtype"))?;
                ops::shape::update_slice_in(&mut tv, typed::<T>(&v)?, *axis as isize, i).map(|()| rw(tv))
            });
            return r.map_err(|e| e.at(self.plan.model, step.what));
        }
        let POp::Fused(label, p) = &step.op else {
            return Err(internal(step.what, "in place on a non-elementwise op"));
        };
        let ph: TensorView<'w> = placeholder();
        let xs: Refs<'_, '_> = step
            .args
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                if k == pos {
                    Ok(&ph)
                } else {
                    arg_ref(vals, self.views(), i)
                }
            })
            .collect::<Result<_>>()?;
        let r = any_t!(step.dt, T => {
            // SAFETY: `t` was taken out of the table (see `writable`).
            let tv = T::pick(&t).and_then(|v| unsafe { writable(v) }).ok_or_else(|| internal(step.what, "in-place target of another dtype"))?;
            fused_in_place::<T>(p, &xs, pos, tv, label).map(rw)
        });
        r.map_err(|e| e.at(self.plan.model, step.what))
    }
}

/// A scalar integer operand (a loop step) as `i64`.
fn index_value(v: &TensorView<'_>, what: &str) -> Result<i64> {
    match v {
        TensorView::I64(a) => a.iter().next().copied(),
        TensorView::I32(a) => a.iter().next().map(|&x| x as i64),
        _ => None,
    }
    .ok_or_else(|| internal(what, "step index is not an integer scalar"))
}

fn placeholder<'x>() -> TensorView<'x> {
    TensorView::Bool(ArrayViewD::from_shape(IxDyn(&[0]), &[]).expect("empty view"))
}

fn arg<'v, 'w>(
    vals: &'v [Val<'w>],
    views: &'v [TensorView<'w>],
    i: usize,
) -> Result<TensorView<'v>> {
    arg_ref(vals, views, i).map(|v| v.clone().reborrow())
}

/// The value of a run-time `if`'s guard or condition: node `i`, a scalar `bool`.
fn truth<'w>(vals: &[Val<'w>], views: &[TensorView<'w>], i: usize) -> Result<bool> {
    match arg_ref(vals, views, i)? {
        TensorView::Bool(v) => v
            .iter()
            .next()
            .copied()
            .ok_or_else(|| internal("a run-time `if`", "empty condition")),
        _ => Err(internal("a run-time `if`", "condition is not bool")),
    }
}

/// The value of node `i`, borrowed from the table (or the views).
fn arg_ref<'v, 'w>(
    vals: &'v [Val<'w>],
    views: &'v [TensorView<'w>],
    mut i: usize,
) -> Result<&'v TensorView<'w>> {
    for _ in 0..vals.len() + 1 {
        match vals.get(i) {
            Some(Val::Ro(v)) | Some(Val::Rw(v)) => return Ok(v),
            Some(Val::View(k)) => match views.get(*k) {
                Some(v) => return Ok(v),
                None => break,
            },
            Some(Val::Alias(j)) => i = *j,
            _ => break,
        }
    }
    Err(Error::op(
        "plan",
        format!("internal: value {i} read before it is computed"),
    ))
}

fn typed<'a, 'v, T: PlanElem>(v: &'a TensorView<'v>) -> Result<&'a ArrayViewD<'v, T>> {
    T::pick(v).ok_or_else(|| {
        Error::op(
            "plan",
            format!("internal: operand is {}, expected {}", v.dtype(), T::DTYPE),
        )
    })
}

fn cast_to<T: PlanElem>(x: &TensorView<'_>) -> ArrayD<T> {
    any_t!(x.dtype(), U => match U::pick(x) {
        Some(v) => ops::cast::<U, T>(v),
        None => ArrayD::from_elem(IxDyn(&[0]), T::default()),
    })
}

/// A literal of `T`'s compute domain narrowed to `T` (as `Elem::from_acc`); integers exactly.
fn lit_value<T: Elem>(l: prog::Lit) -> T {
    use prog::Lit;
    let mut out = match l {
        Lit::F32(v) => T::from_f64(v as f64),
        Lit::F64(v) => T::from_f64(v),
        Lit::I32(v) => T::from_f64(v as f64),
        Lit::I64(v) => T::from_f64(v as f64),
        Lit::Bool(v) => T::from_f64(if v { 1.0 } else { 0.0 }),
    };
    // integers beyond f64's 53 bits: exactly
    let o: &mut dyn std::any::Any = &mut out;
    if let (Lit::I64(v), Some(x)) = (l, o.downcast_mut::<i64>()) {
        *x = v;
    }
    out
}

/// The `prog` operands of `xs` over an output of `shape`: broadcast sources read in place, or
/// (strided or irregular broadcasts) a standard-layout copy kept in `keep`. Operand `skip` (the
/// output itself, for in-place programs) is a placeholder.
fn sources<'a>(
    xs: &'a [&TensorView<'_>],
    shape: &[usize],
    keep: &'a mut Vec<AnyArray>,
    skip: Option<usize>,
) -> SmallVec<[Arg<'a>; 6]> {
    let n: usize = shape.iter().product();
    let placeholder = Arg::Bool(Src::Scalar(false));
    // read in place where a pattern describes the operand; `None` where it is copied
    let mut args: SmallVec<[Option<Arg<'a>>; 6]> = SmallVec::new();
    for (k, x) in xs.iter().enumerate() {
        if Some(k) == skip {
            args.push(Some(placeholder));
            continue;
        }
        args.push(any_t!(x.dtype(), T => match T::pick(x) {
            None => Some(placeholder),
            Some(v) => match ops::src_of(v, shape, n) {
                Some(src) => Some(T::arg(src)),
                None => match v.broadcast(IxDyn(shape)) {
                    Some(b) => {
                        keep.push(T::any_array(b.as_standard_layout().into_owned()));
                        None
                    }
                    // never: `shape` is the operands' broadcast; an empty operand fails validation
                    None => Some(T::arg(Src::Full(&[]))),
                },
            },
        }));
    }
    let keep: &'a Vec<AnyArray> = keep;
    let mut copies = keep.iter().map(|c| {
        any_t!(c.dtype(), T => T::arg(Src::Full(
            T::pick_array_ref(c).and_then(|a| a.as_slice()).unwrap_or(&[])
        )))
    });
    args.into_iter()
        .map(|a| a.or_else(|| copies.next()).unwrap_or(placeholder))
        .collect()
}

pub(super) fn prog_err(what: &str, e: prog::ProgError) -> Error {
    internal(what, &format!("fused program: {}", e.0))
}

fn fused<'d, T: PlanElem + ProgElem>(
    p: &Prog,
    xs: &[&TensorView<'_>],
    d: Dest<'d, T>,
    what: &str,
) -> Result<ArrayViewMutD<'d, T>> {
    let shapes: SmallVec<[&[usize]; 6]> = xs.iter().map(|x| x.shape()).collect();
    let shape = ops::broadcast_dims(what, &shapes)?;
    let mut out = d.get(what, shape.slice())?;
    let mut keep = Vec::new();
    let args = sources(xs, shape.slice(), &mut keep, None);
    let o = out
        .as_slice_mut()
        .ok_or_else(|| internal(what, "destination not contiguous"))?;
    prog::run(p, &args, T::out(o), Mode::Plain).map_err(|e| prog_err(what, e))?;
    Ok(out)
}

fn fused_in_place<'w, T: PlanElem + ProgElem>(
    p: &Prog,
    xs: &[&TensorView<'_>],
    pos: usize,
    mut t: ArrayViewMutD<'w, T>,
    what: &str,
) -> Result<ArrayViewMutD<'w, T>> {
    let ts: IxDyn = t.raw_dim();
    let mut shapes: SmallVec<[&[usize]; 6]> = xs.iter().map(|x| x.shape()).collect();
    match shapes.get_mut(pos) {
        Some(s) => *s = ts.slice(),
        None => return Err(internal(what, "in-place operand out of range")),
    }
    let shape = ops::broadcast_dims(what, &shapes)?;
    if shape.slice() != ts.slice() {
        return Err(internal(what, "in-place target is not the result's shape"));
    }
    let mut keep = Vec::new();
    let args = sources(xs, ts.slice(), &mut keep, Some(pos));
    let o = t
        .as_slice_mut()
        .ok_or_else(|| internal(what, "in-place target not contiguous"))?;
    prog::run(p, &args, T::out(o), Mode::InPlace(pos)).map_err(|e| prog_err(what, e))?;
    Ok(t)
}

fn fused_mm<'d, T: PlanElem + ProgElem>(
    ta: bool,
    tb: bool,
    p: &Prog,
    xs: &[&TensorView<'_>],
    d: Dest<'d, T>,
    qw: Option<&QWeight>,
    pre: Option<&PackedW>,
) -> Result<ArrayViewMutD<'d, T>>
where
    T::Acc: mithril_kernels::scalar::Num,
{
    if xs.len() < 2 {
        return Err(internal("matmul", "fewer than two operands"));
    }
    let (a, b) = (typed::<T>(xs[0])?, typed::<T>(xs[1])?);
    let others: SmallVec<[&ArrayViewD<'_, T>; 4]> = xs[2..]
        .iter()
        .map(|x| typed::<T>(x))
        .collect::<Result<_>>()?;
    let err: Mutex<Option<prog::ProgError>> = Mutex::new(None);
    let rows = epi_rows::<T>(p);
    macro_rules! go {
        ($k:literal) => {{
            let o: [&ArrayViewD<'_, T>; $k] = others[..]
                .try_into()
                .map_err(|_| internal("matmul", "epilogue operands"))?;
            let seg = epi_seg::<T, $k>(p, &rows, &err);
            if let Some(w) = qw {
                ops::qmatmul_epi_to(a, w, o, d, &seg)?
            } else {
                // the common case without the general layout handling (the same result)
                match ops::matmul_epi_2d_pre_to(a, b, ta, tb, o, d, &seg, pre) {
                    Ok(r) => r?,
                    Err(d) => ops::matmul_epi_to(a, b, ta, tb, o, d, seg)?,
                }
            }
        }};
    }
    let r = match others.len() {
        0 => go!(0),
        1 => go!(1),
        2 => go!(2),
        3 => go!(3),
        4 => go!(4),
        _ => return Err(internal("matmul", "more than 4 epilogue operands")),
    };
    if let Some(e) = err.lock().ok().and_then(|mut g| g.take()) {
        return Err(prog_err("matmul", e));
    }
    Ok(r)
}

/// The prepared form of an f32 epilogue `p` of a common form (run without the per-call
/// analysis), `None` for other programs and element types.
pub(super) fn epi_rows<T: ProgElem>(p: &Prog) -> Option<prog::Rows> {
    (T::ST == St::F32)
        .then(|| p.rows_f32(Mode::Epilogue(St::F32)))
        .flatten()
}

/// The segment epilogue of a fused matmul with program `p` (`rows`: [`epi_rows`]): operand 0
/// (the product) is the segment itself, the `K` others the sources. A program error is left
/// in `err`. What the generic executor and the product chains (`super::chain`) both run.
pub(super) fn epi_seg<'s, T: ProgElem, const K: usize>(
    p: &'s Prog,
    rows: &'s Option<prog::Rows>,
    err: &'s Mutex<Option<prog::ProgError>>,
) -> impl Fn(&mut [T::Acc], [Src<'_, T>; K]) + Sync + 's {
    move |acc: &mut [T::Acc], srcs: [Src<'_, T>; K]| {
        // operand 0 (the product) is the output itself; at most 4 others (`fused_mm`)
        let mut all = [Arg::Bool(Src::Scalar(false)); 5];
        for (a, s) in all[1..].iter_mut().zip(srcs) {
            *a = T::arg(s);
        }
        let args = &all[..(K + 1).min(5)];
        if let (Some(r), Out::F32(o)) = (rows, T::acc_out(&mut *acc)) {
            if r.run(args, o) {
                return;
            }
        }
        if let Err(e) = prog::run(p, args, T::acc_out(acc), Mode::Epilogue(T::ST)) {
            if let Ok(mut g) = err.lock() {
                *g = Some(e);
            }
        }
    }
}

/// `max |x|` over an f32 tensor (a calibration run's record of an int8 product's input).
fn max_abs(x: &ndarray::ArrayViewD<'_, f32>) -> f32 {
    match x.as_slice_memory_order() {
        Some(s) => mithril_kernels::qgemm::max_abs(1, s.len(), s, s.len(), 1),
        None => x
            .iter()
            .fold(0f32, |m, v| if v.abs() > m { v.abs() } else { m }),
    }
}
