//! The small-batch fast path: a plan that is only a chain of matrix products (an MLP:
//! `matmul` + bias + activation, layer after layer) runs as a list of kernel calls on raw
//! slices, without the generic executor's per-node work (the value table, operand views,
//! `Dest`s, `ndarray` views of every operand and result).
//!
//! At batch 1 a product is a GEMV of a few microseconds, and that per-node work was about
//! 2 µs of an MLP call (a third of an int8 call). The chain is found once per plan
//! ([`analyse`], kept in [`Plan::chain`]); each call checks its operands' shapes and strides
//! against it ([`run`]) and falls back to the generic executor for anything it does not
//! take, which then reports the errors. Each product calls the same kernel cores
//! ([`ops::gemm_epi_raw`], [`ops::qgemm_epi_raw`]) with the same epilogue
//! ([`super::exec::epi_seg`]) on the same memory (the planned workspace slots) as the generic
//! path, so the results are bitwise the same (`suite::quant::a_chain_of_products_*`).

use super::exec::{epi_rows, epi_seg, prog_err, ProgElem};
use super::AnyArray;
use super::{Home, POp, Plan, PlanElem};
use crate::elem::DType;
use crate::ops::{self, Strided};
use crate::params::TensorView;
use crate::quant::{self, QWeight, Run};
use crate::scalar::Num;
use crate::workspace::Workspace;
use crate::{Error, Result};
use half::{bf16, f16};
use mithril_kernels::prog::Prog;
use smallvec::SmallVec;
use std::sync::Mutex;

thread_local! {
    /// Whether this thread's plan runs take chains ([`set_chains`]).
    static ON: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
    /// The plan runs this thread made as chains ([`chain_runs`]).
    static RUNS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many plan runs of the calling thread ran as a chain so far (what the tests check the
/// fast path with).
#[doc(hidden)]
pub fn chain_runs() -> u64 {
    RUNS.with(|c| c.get())
}

/// Turns the chain fast path off (`false`) or on again for the plan runs of the calling
/// thread (on by default): what the tests and benchmarks compare it against. The results are
/// bitwise the same either way.
#[doc(hidden)]
pub fn set_chains(on: bool) {
    ON.with(|c| c.set(on));
}

pub(super) fn enabled() -> bool {
    ON.with(|c| c.get())
}

/// A plan that is a chain of products (see the module docs).
#[derive(Debug)]
pub(crate) struct Chain {
    /// the view the first product multiplies
    input: usize,
    /// the products' element type
    dt: DType,
    layers: Vec<Layer>,
}

/// One product of a [`Chain`]: `A · W` (its `A` the chain's input or the previous product)
/// with an epilogue over the views `epi`.
#[derive(Debug)]
struct Layer {
    /// the plan node
    node: usize,
    /// the weight's view, and whether the product reads it transposed
    w: usize,
    wt: bool,
    /// the epilogue operands' views (at most 4)
    epi: SmallVec<[usize; 4]>,
    /// the workspace slot of the result; `None` for the last product (the returned output)
    slot: Option<usize>,
}

/// The chain `plan` is, if it is one: nodes that are views, aliases and 2-D transposes of
/// views (read only as weights and epilogue operands) and products (`matmul`, with or without
/// an epilogue, the first operand not transposed) each reading the one before, in one float
/// type, the last one the plan's only output; no run-time `if` or loop.
pub(crate) fn analyse(plan: &Plan) -> Option<Chain> {
    let mut layers: Vec<Layer> = Vec::new();
    let mut input = None;
    let mut dt = None;
    // how often each node is read, by products (their `A` operands only)
    let mut last: Option<usize> = None;
    for (id, s) in plan.nodes.iter().enumerate() {
        if s.guard.is_some() {
            return None;
        }
        let (ta, tb, nepi) = match &s.op {
            POp::View(_) | POp::Alias => continue,
            POp::Transpose(p) if p[..] == [1, 0] && s.home == Home::View => continue,
            POp::Matmul { ta, tb } => (*ta, *tb, 0),
            POp::FusedMatmul { ta, tb, .. } => (*ta, *tb, s.args.len().checked_sub(2)?),
            _ => return None,
        };
        if ta || nepi > 4 || s.args.len() != nepi + 2 {
            return None;
        }
        if !matches!(s.dt, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
            || dt.is_some_and(|d| d != s.dt)
        {
            return None;
        }
        dt = Some(s.dt);
        // `A`: the chain's input (a view read as is), or the product before
        match last {
            None => match quant::b_view(plan, s.args[0])? {
                (v, false) => input = Some(v),
                _ => return None,
            },
            Some(p) if s.args[0] == p => {}
            _ => return None,
        }
        let (w, t) = quant::b_view(plan, s.args[1])?;
        let mut epi = SmallVec::new();
        for &e in &s.args[2..] {
            match quant::b_view(plan, e)? {
                (v, false) => epi.push(v),
                _ => return None,
            }
        }
        // the product before becomes a slot read only here
        if let Some(prev) = layers.last_mut() {
            match plan.nodes[prev.node].home {
                Home::Slot(k) => prev.slot = Some(k),
                _ => return None,
            }
        }
        layers.push(Layer {
            node: id,
            w,
            wt: tb ^ t,
            epi,
            slot: None,
        });
        last = Some(id);
    }
    let last = last?;
    // the products read only as the next one's `A`, and the last one the only output
    let products: SmallVec<[usize; 8]> = layers.iter().map(|l| l.node).collect();
    for (id, s) in plan.nodes.iter().enumerate() {
        for (j, &a) in s.args.iter().enumerate() {
            if products.contains(&a) && !(j == 0 && products.contains(&id)) {
                return None;
            }
        }
    }
    if plan.outputs[..] != [last] || plan.nodes[last].home != Home::Owned {
        return None;
    }
    Some(Chain {
        input: input?,
        dt: dt?,
        layers,
    })
}

/// Runs `plan` as its chain when it is one and the call's operands fit it (2-D, non-negative
/// strides, dims that multiply); `None` when the generic executor must run it instead
/// (nothing has been written to `outs` then). `q` must not be a calibration.
pub(crate) fn run(
    plan: &'static Plan,
    ws: &Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
    q: Run<'_>,
) -> Option<Result<()>> {
    let ch = plan.chain.get_or_init(|| analyse(plan)).as_ref()?;
    if outs.len() != 1 || matches!(q, Run::Calibrate(_)) {
        return None;
    }
    match ch.dt {
        DType::F32 => go::<f32>(ch, plan, ws, views, outs, q),
        DType::F64 => go::<f64>(ch, plan, ws, views, outs, q),
        DType::F16 => go::<f16>(ch, plan, ws, views, outs, q),
        DType::BF16 => go::<bf16>(ch, plan, ws, views, outs, q),
        _ => None,
    }
}

/// A 2-D view as `(slice, rows, cols, row stride, col stride)`, read transposed when `t`;
/// `None` for another rank or a negative stride.
fn raw2<'a, T>(
    v: &ndarray::ArrayViewD<'a, T>,
    t: bool,
) -> Option<(&'a [T], usize, usize, usize, usize)> {
    let (sh, st) = (v.shape(), v.strides());
    if sh.len() != 2 || st.iter().any(|&s| s < 0) {
        return None;
    }
    let (r, c, rs, cs) = if t {
        (sh[1], sh[0], st[1] as usize, st[0] as usize)
    } else {
        (sh[0], sh[1], st[0] as usize, st[1] as usize)
    };
    let len = ops::span_len(r, c, rs, cs);
    // SAFETY: every element of the view lies in `ptr .. ptr + len` (non-negative strides),
    // and the view borrows that memory for 'a.
    let s = unsafe { std::slice::from_raw_parts(v.as_ptr(), len) };
    Some((s, r, c, rs, cs))
}

/// One layer prepared for a call.
struct Prep<'q, T> {
    /// `W` as `(slice, row stride, col stride)` (float products)
    b: (&'q [T], usize, usize),
    k: usize,
    n: usize,
    /// the int8 weight, when the product runs in int8
    qw: Option<&'q QWeight>,
    /// the prepacked `W` of a prepared run
    pre: Option<&'q crate::prepack::PackedW>,
    epi: [Strided<T>; 4],
    nepi: usize,
    prog: Option<&'static Prog>,
}

/// Layer `l` of a call prepared (its `A` has `k` columns, `m` rows); `None` when its operands
/// do not fit the chain.
fn prep<'q, T>(
    l: &Layer,
    plan: &'static Plan,
    views: &'q [TensorView<'_>],
    q: Run<'q>,
    m: usize,
    k: usize,
) -> Option<Prep<'q, T>>
where
    T: PlanElem + ProgElem,
{
    let step = &plan.nodes[l.node];
    let wv = T::pick(views.get(l.w)?)?;
    let qw = match q {
        Run::Int8(s) if step.dt == DType::F32 => s.weight(l.w).filter(|w| w.tb == l.wt),
        _ => None,
    };
    let pre = match q {
        Run::Packed(s) => s.get(l.w, l.wt),
        _ => None,
    };
    let (b, wk, n) = match qw {
        Some(w) => ((&[][..], 0, 0), w.packed.k(), w.packed.n()),
        None => {
            let (sb, wk, n, rsb, csb) = raw2(wv, l.wt)?;
            ((sb, rsb, csb), wk, n)
        }
    };
    if wk != k {
        return None;
    }
    let mut epi = [Strided {
        ptr: std::ptr::null::<T>(),
        rs: 0,
        cs: 0,
    }; 4];
    for (p, &e) in epi.iter_mut().zip(&l.epi) {
        let o = T::pick(views.get(e)?)?;
        let (sh, st) = (o.shape(), o.strides());
        if st.iter().any(|&s| s < 0) {
            return None;
        }
        // the stride of a dim of extent `d` broadcast to `want`
        let axis = |d: usize, s: isize, want: usize| -> Option<usize> {
            if d == want {
                Some(s as usize)
            } else if d == 1 {
                Some(0)
            } else {
                None
            }
        };
        let (rs, cs) = match sh.len() {
            0 => (0, 0),
            1 => (0, axis(sh[0], st[0], n)?),
            2 => (axis(sh[0], st[0], m)?, axis(sh[1], st[1], n)?),
            _ => return None,
        };
        *p = Strided {
            ptr: o.as_ptr(),
            rs,
            cs,
        };
    }
    let prog = match &step.op {
        POp::FusedMatmul { prog, .. } => Some(prog),
        _ => None,
    };
    Some(Prep {
        b,
        k,
        n,
        qw,
        pre,
        epi,
        nepi: l.epi.len(),
        prog,
    })
}

fn go<T>(
    ch: &Chain,
    plan: &'static Plan,
    ws: &Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
    q: Run<'_>,
) -> Option<Result<()>>
where
    T: PlanElem + ProgElem,
    T::Acc: Num,
{
    let x = T::pick(views.get(ch.input)?)?;
    let (sx, m, k0, rsx, csx) = raw2(x, false)?;
    // every layer checked before anything runs (and prepared again as it runs: no per-call
    // storage, whatever the depth)
    let mut k = k0;
    for l in &ch.layers {
        k = prep::<T>(l, plan, views, q, m, k)?.n;
    }
    Some(exec::<T>(
        ch,
        plan,
        ws,
        views,
        q,
        (sx, rsx, csx, k0),
        m,
        outs,
    ))
}

/// Runs the layers (checked by [`go`]).
#[allow(clippy::too_many_arguments)]
fn exec<T>(
    ch: &Chain,
    plan: &'static Plan,
    ws: &Workspace,
    views: &[TensorView<'_>],
    q: Run<'_>,
    (sx, rsx, csx, k0): (&[T], usize, usize, usize),
    m: usize,
    outs: &mut [Option<AnyArray>],
) -> Result<()>
where
    T: PlanElem + ProgElem,
    T::Acc: Num,
{
    let n = ch.layers.len();
    let (mut a, mut k) = ((sx, rsx, csx), k0);
    for (i, l) in ch.layers.iter().enumerate() {
        let what = plan.nodes[l.node].what;
        let p = prep::<T>(l, plan, views, q, m, k)
            .ok_or_else(|| Error::op(plan.model, "internal: a chain layer changed"))?;
        if i + 1 < n {
            let slot = l.slot.ok_or_else(|| {
                Error::op(plan.model, "internal: a chain product without its slot")
            })?;
            let c = ws
                .slice::<T>("matmul", slot, m * p.n)
                .map_err(|e| e.at(plan.model, what))?;
            layer::<T>(&p, m, a, c).map_err(|e| e.at(plan.model, what))?;
            (a, k) = ((&*c, p.n, 1), p.n);
            continue;
        }
        // the last product: the returned output
        let mut o =
            crate::alloc::zeros::<T>("matmul", &[m, p.n]).map_err(|e| e.at(plan.model, what))?;
        let c = o
            .as_slice_mut()
            .ok_or_else(|| Error::op("matmul", "internal: a fresh array not contiguous"))?;
        layer::<T>(&p, m, a, c).map_err(|e| e.at(plan.model, what))?;
        outs[0] = Some(T::any_array(o));
        RUNS.with(|c| c.set(c.get() + 1));
        return Ok(());
    }
    Err(Error::op(plan.model, "internal: an empty chain"))
}

/// One product into `c` (`[m, p.n]`, row-major).
fn layer<T>(p: &Prep<'_, T>, m: usize, a: (&[T], usize, usize), c: &mut [T]) -> Result<()>
where
    T: PlanElem + ProgElem,
    T::Acc: Num,
{
    let err: Mutex<Option<mithril_kernels::prog::ProgError>> = Mutex::new(None);
    let none = |_: &mut [T::Acc], _: [mithril_kernels::ew::Src<'_, T>; 0]| {};
    macro_rules! go {
        ($k:literal) => {{
            let ptrs: &[Strided<T>; $k] = p.epi[..$k]
                .try_into()
                .map_err(|_| Error::op("matmul", "internal: epilogue operands"))?;
            match p.prog {
                Some(prog) => {
                    let rows = epi_rows::<T>(prog);
                    let seg = epi_seg::<T, $k>(prog, &rows, &err);
                    product::<T, $k>(p, m, a, c, ptrs, &seg)?;
                }
                None => return Err(Error::op("matmul", "internal: epilogue without a program")),
            }
        }};
    }
    match (p.prog, p.nepi) {
        (None, 0) => product::<T, 0>(p, m, a, c, &[], &none)?,
        (_, 0) => go!(0),
        (_, 1) => go!(1),
        (_, 2) => go!(2),
        (_, 3) => go!(3),
        (_, 4) => go!(4),
        _ => {
            return Err(Error::op(
                "matmul",
                "internal: more than 4 epilogue operands",
            ))
        }
    }
    if let Some(e) = err.lock().ok().and_then(|mut g| g.take()) {
        return Err(prog_err("matmul", e));
    }
    Ok(())
}

/// The product's kernel call: the int8 or the float core, as the generic executor calls them.
fn product<T, const K: usize>(
    p: &Prep<'_, T>,
    m: usize,
    (sa, rsa, csa): (&[T], usize, usize),
    c: &mut [T],
    ptrs: &[Strided<T>; K],
    seg: &(impl Fn(&mut [T::Acc], [mithril_kernels::ew::Src<'_, T>; K]) + Sync),
) -> Result<()>
where
    T: PlanElem + ProgElem,
    T::Acc: Num,
{
    match p.qw {
        Some(w) => {
            // an int8 weight is only taken for f32 products (`go`); checked, not assumed
            if T::DTYPE != DType::F32 {
                return Err(Error::op(
                    "plan",
                    "internal: an int8 weight on a non-f32 chain",
                ));
            }
            // SAFETY: `T` is f32 (checked above), so both casts keep the element type.
            let (sa, c) = unsafe {
                (
                    std::slice::from_raw_parts(sa.as_ptr() as *const f32, sa.len()),
                    std::slice::from_raw_parts_mut(c.as_mut_ptr() as *mut f32, c.len()),
                )
            };
            ops::qgemm_epi_raw::<T, K>(m, p.k, (sa, rsa, csa), w, c, ptrs, seg)
        }
        None => ops::gemm_epi_raw::<T, K>(
            p.prog.is_none(),
            m,
            p.n,
            p.k,
            (sa, rsa, csa),
            p.b,
            c,
            ptrs,
            seg,
            p.pre,
        ),
    }
}
