//! Run-time instrumentation of CPU models: what the compile options `profile`,
//! `code_transformers` and `save_intermediates` generate calls into.
//!
//! A model compiled with `profile: true` or `code_transformers: [...]` keeps a [`State`] and
//! runs its plans through [`run`], which calls [`plan::run_hooked`] with the built-in hook
//! ([`Builtin`]: the per-op profile, the `trace` log, the `nan_check`) and the user's
//! [`OpHook`] when one is given; with only `timing` (or nothing per op) it calls the plain
//! [`plan::run`] and times the call. A model compiled without these options has no `State`
//! and its generated code calls [`plan::run`] directly, whose per-op probe compiles to nothing.
//!
//! [`Intermediates`] is what `evaluate_with_intermediates` returns (`save_intermediates: true`).

use crate::elem::DType;
use crate::params::{ParamTree, TensorView, TensorViewMut};
use crate::plan::{self, AnyArray, OpHook, OpInfo, POp, Plan, PlanElem};
use crate::workspace::Workspace;
use crate::{Error, Result};
use ndarray::ArrayViewD;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which built-in instrumentation a model was compiled with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `profile: true`: per-op time, bytes and FLOPs over all calls
    pub profile: bool,
    /// `code_transformers: [timing]`: per-call wall time
    pub timing: bool,
    /// `code_transformers: [trace]`: one `log` record per op (target `mithril::trace`, level
    /// `trace`)
    pub trace: bool,
    /// `code_transformers: [nan_check]`: an `Err` naming the first op whose result holds a
    /// NaN or an infinity
    pub nan_check: bool,
}

/// Per-call wall times (`code_transformers: [timing]`), over all calls since the model was
/// made (or [`State::reset`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CallTiming {
    /// calls timed
    pub calls: u64,
    /// the last call's wall time
    pub last: Duration,
    /// the fastest call
    pub min: Duration,
    /// the slowest call
    pub max: Duration,
    /// all calls together
    pub total: Duration,
}

impl CallTiming {
    fn record(&mut self, d: Duration) {
        if self.calls == 0 || d < self.min {
            self.min = d;
        }
        self.max = self.max.max(d);
        self.calls += 1;
        self.last = d;
        self.total += d;
    }

    /// The mean wall time of a call (zero before the first).
    pub fn mean(&self) -> Duration {
        if self.calls == 0 {
            Duration::ZERO
        } else {
            self.total / self.calls as u32
        }
    }
}

/// One op's accumulated profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpStats {
    /// times the op ran
    pub calls: u64,
    /// time inside the op, nanoseconds
    pub nanos: u128,
    /// bytes moved: every operand's and the result's logical size (a broadcast operand counts
    /// once at its own size)
    pub bytes: u128,
    /// floating-point (or integer) operations, estimated from the shapes: `2·M·N·K` per matrix
    /// product, one per element per instruction of a fused program, one per input element of a
    /// reduction, five per element of a softmax; data movement (reshape, slice, ...) counts none
    pub flops: u128,
}

/// A row of [`Profile::rows`].
#[derive(Clone, Debug, PartialEq)]
pub struct ProfileRow {
    /// the function whose plan holds the op (`evaluate`, `evaluate_gradients`, ...)
    pub function: &'static str,
    /// the op's index in that plan
    pub index: usize,
    /// [`OpInfo::kind`]
    pub kind: &'static str,
    /// [`OpInfo::label`]: how errors name the node (a fused group lists its ops)
    pub label: &'static str,
    /// the numbers
    pub stats: OpStats,
}

impl ProfileRow {
    /// Achieved GFLOP/s (0 when the op took no measurable time).
    pub fn gflops(&self) -> f64 {
        rate(self.stats.flops, self.stats.nanos)
    }
    /// Achieved GB/s (0 when the op took no measurable time).
    pub fn gbytes(&self) -> f64 {
        rate(self.stats.bytes, self.stats.nanos)
    }
}

fn rate(n: u128, nanos: u128) -> f64 {
    if nanos == 0 {
        0.0
    } else {
        n as f64 / nanos as f64
    }
}

struct PlanProf {
    plan: &'static Plan,
    function: &'static str,
    rows: Vec<OpStats>,
    calls: u64,
    wall: Duration,
}

/// A trace event: an op (`node` < `u32::MAX`) or a whole call.
#[derive(Clone, Copy)]
struct Event {
    plan: u16,
    node: u32,
    start: u64,
    dur: u64,
}

/// The most events a [`Profile`] keeps for its trace (later ones are counted, not kept).
pub const MAX_TRACE_EVENTS: usize = 1 << 20;

/// The run-time profile of a model compiled with `profile: true`: per op of each plan, time,
/// bytes, FLOPs over every call, and the events of its Chrome trace.
pub struct Profile {
    model: &'static str,
    epoch: Instant,
    plans: Vec<PlanProf>,
    events: Vec<Event>,
    dropped: u64,
    compile: &'static str,
}

impl std::fmt::Debug for Profile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Profile")
            .field("model", &self.model)
            .field("calls", &self.calls())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl Profile {
    fn new(model: &'static str, compile: &'static str) -> Profile {
        Profile {
            model,
            epoch: Instant::now(),
            plans: Vec::new(),
            events: Vec::new(),
            dropped: 0,
            compile,
        }
    }

    fn plan_ix(&mut self, plan: &'static Plan, function: &'static str) -> usize {
        if let Some(k) = self.plans.iter().position(|p| std::ptr::eq(p.plan, plan)) {
            return k;
        }
        self.plans.push(PlanProf {
            plan,
            function,
            rows: vec![OpStats::default(); plan.nodes.len()],
            calls: 0,
            wall: Duration::ZERO,
        });
        self.plans.len() - 1
    }

    fn event(&mut self, e: Event) {
        if self.events.len() < MAX_TRACE_EVENTS {
            self.events.push(e);
        } else {
            self.dropped += 1;
        }
    }

    fn nanos_since_epoch(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Calls profiled, over all functions.
    pub fn calls(&self) -> u64 {
        self.plans.iter().map(|p| p.calls).sum()
    }

    /// The compile-time step timings (the `verbose` report with durations) of this build.
    pub fn compile_timings(&self) -> &'static str {
        self.compile
    }

    /// Every op that ran at least once, slowest first.
    pub fn rows(&self) -> Vec<ProfileRow> {
        let mut rows: Vec<ProfileRow> = self
            .plans
            .iter()
            .flat_map(|p| {
                p.rows
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.calls > 0)
                    .map(|(i, s)| {
                        let step = &p.plan.nodes[i];
                        ProfileRow {
                            function: p.function,
                            index: i,
                            kind: step.op.kind(),
                            label: step.what,
                            stats: *s,
                        }
                    })
            })
            .collect();
        rows.sort_by(|a, b| {
            b.stats
                .nanos
                .cmp(&a.stats.nanos)
                .then(a.function.cmp(b.function))
                .then(a.index.cmp(&b.index))
        });
        rows
    }

    /// The profile as a text table: per function its calls and wall time, then every op sorted
    /// by time (share of the ops' time, mean per call, GFLOP/s, GB/s), then the ops summed by
    /// kind (`fused` rows are the fusion groups).
    pub fn report(&self) -> String {
        let mut s = format!("profile of `{}`\n", self.model);
        for p in &self.plans {
            let ops: u128 = p.rows.iter().map(|r| r.nanos).sum();
            let _ = writeln!(
                s,
                "  {}: {} call(s), {:.3} ms wall, {:.3} ms in ops",
                p.function,
                p.calls,
                p.wall.as_secs_f64() * 1e3,
                ops as f64 / 1e6
            );
        }
        let rows = self.rows();
        let total: u128 = rows.iter().map(|r| r.stats.nanos).sum::<u128>().max(1);
        let _ = writeln!(
            s,
            "{:>10} {:>6} {:>7} {:>10} {:>9} {:>8}  {:<12} op",
            "time ms", "share", "calls", "mean us", "GFLOP/s", "GB/s", "kind"
        );
        for r in &rows {
            let st = &r.stats;
            let _ = writeln!(
                s,
                "{:>10.3} {:>5.1}% {:>7} {:>10.2} {:>9.2} {:>8.2}  {:<12} {}#{} {}",
                st.nanos as f64 / 1e6,
                100.0 * st.nanos as f64 / total as f64,
                st.calls,
                st.nanos as f64 / 1e3 / st.calls.max(1) as f64,
                r.gflops(),
                r.gbytes(),
                r.kind,
                short(r.function),
                r.index,
                r.label
            );
        }
        // by kind
        let mut kinds: Vec<(&str, OpStats)> = Vec::new();
        for r in &rows {
            let k = match kinds.iter_mut().find(|(k, _)| *k == r.kind) {
                Some(k) => k,
                None => {
                    kinds.push((r.kind, OpStats::default()));
                    kinds.last_mut().expect("just pushed")
                }
            };
            k.1.calls += r.stats.calls;
            k.1.nanos += r.stats.nanos;
            k.1.bytes += r.stats.bytes;
            k.1.flops += r.stats.flops;
        }
        kinds.sort_by_key(|k| std::cmp::Reverse(k.1.nanos));
        let _ = writeln!(s, "by kind:");
        for (k, st) in kinds {
            let _ = writeln!(
                s,
                "{:>10.3} {:>5.1}% {:>7} {:>10} {:>9.2} {:>8.2}  {}",
                st.nanos as f64 / 1e6,
                100.0 * st.nanos as f64 / total as f64,
                st.calls,
                "",
                rate(st.flops, st.nanos),
                rate(st.bytes, st.nanos),
                k
            );
        }
        if self.dropped > 0 {
            let _ = writeln!(
                s,
                "({} trace events beyond {MAX_TRACE_EVENTS} not kept)",
                self.dropped
            );
        }
        s
    }

    /// The profile as Chrome trace-event JSON (the "JSON object format": `traceEvents`, one
    /// complete event (`"ph": "X"`, `ts` / `dur` in microseconds) per op run and per call,
    /// `args` with the op's bytes and FLOPs): opens in Perfetto and `chrome://tracing`. The
    /// compile-time step timings are in `otherData.compile`.
    pub fn chrome_trace(&self) -> String {
        let mut s = String::from("{\"traceEvents\":[");
        let mut first = true;
        for e in &self.events {
            let Some(p) = self.plans.get(e.plan as usize) else {
                continue;
            };
            if !first {
                s.push(',');
            }
            first = false;
            let (ts, dur) = (e.start as f64 / 1e3, e.dur as f64 / 1e3);
            if e.node == u32::MAX {
                let _ = write!(
                    s,
                    "{{\"name\":\"{}\",\"cat\":\"call\",\"ph\":\"X\",\"ts\":{ts:.3},\"dur\":{dur:.3},\"pid\":1,\"tid\":1}}",
                    json_escape(p.function)
                );
                continue;
            }
            let i = e.node as usize;
            let Some(step) = p.plan.nodes.get(i) else {
                continue;
            };
            let st = p.rows.get(i).copied().unwrap_or_default();
            let per = st.calls.max(1) as u128;
            let _ = write!(
                s,
                "{{\"name\":\"{}\",\"cat\":\"{}\",\"ph\":\"X\",\"ts\":{ts:.3},\"dur\":{dur:.3},\"pid\":1,\"tid\":1,\"args\":{{\"function\":\"{}\",\"node\":{i},\"bytes\":{},\"flops\":{}}}}}",
                json_escape(step.what),
                step.op.kind(),
                p.function,
                st.bytes / per,
                st.flops / per
            );
        }
        let _ = write!(
            s,
            "],\"displayTimeUnit\":\"ms\",\"otherData\":{{\"model\":\"{}\",\"dropped_events\":{},\"compile\":\"{}\"}}}}",
            json_escape(self.model),
            self.dropped,
            json_escape(self.compile)
        );
        s
    }
}

fn short(function: &str) -> &str {
    match function {
        "evaluate" => "",
        "evaluate_gradients" => "grad",
        "evaluate_with_intermediates" => "int",
        f => f,
    }
}

fn json_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o
}

/// The instrumentation state of a model compiled with `profile` or `code_transformers` (a
/// field of the model; what its `profile_report`, `call_timing`, ... read).
pub struct State {
    model: &'static str,
    flags: Flags,
    profile: Profile,
    timing: CallTiming,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("model", &self.model)
            .field("flags", &self.flags)
            .finish_non_exhaustive()
    }
}

impl State {
    /// The state of a fresh model; `compile` is its compile-time step timings (`profile`).
    pub fn new(model: &'static str, flags: Flags, compile: &'static str) -> State {
        State {
            model,
            flags,
            profile: Profile::new(model, compile),
            timing: CallTiming::default(),
        }
    }

    /// The flags it was compiled with.
    pub fn flags(&self) -> Flags {
        self.flags
    }

    /// The profile so far (`profile: true`; empty otherwise).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// The per-call wall times so far (`timing`; zero otherwise).
    pub fn timing(&self) -> CallTiming {
        self.timing
    }

    /// Forget the profile and the timings.
    pub fn reset(&mut self) {
        self.profile = Profile::new(self.model, self.profile.compile);
        self.timing = CallTiming::default();
    }

    /// Writes [`Profile::chrome_trace`] to `path` (creating its directory).
    pub fn write_trace(&self, path: &Path) -> Result<()> {
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| io_err("create", d, e))?;
        }
        std::fs::write(path, self.profile.chrome_trace()).map_err(|e| io_err("write", path, e))
    }
}

fn io_err(what: &str, p: &Path, e: std::io::Error) -> Error {
    Error::op("profile", format!("cannot {what} `{}`: {e}", p.display()))
}

/// Locks a model's state (a poisoned lock is still usable: the state is plain numbers).
pub fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs `plan` (as [`plan::run`]) for the function `function` of a model with instrumentation
/// `state`, and `user`'s hook when given. Calls of one model are serialized while its state is
/// held (an instrumented model is a debugging build).
#[allow(clippy::too_many_arguments)]
pub fn run(
    state: &Mutex<State>,
    function: &'static str,
    user: Option<&mut dyn OpHook>,
    plan: &'static Plan,
    ws: &Mutex<Workspace>,
    fallback: impl FnOnce() -> Workspace,
    views: &[TensorView<'_>],
    outs: &mut [Option<AnyArray>],
) -> Result<()> {
    let mut st = lock(state);
    let f = st.flags;
    let t0 = Instant::now();
    let r = if f.profile || f.trace || f.nan_check || user.is_some() {
        let plan_ix = if f.profile {
            st.profile.plan_ix(plan, function)
        } else {
            0
        };
        let mut h = Builtin {
            st: &mut st,
            plan_ix,
            user,
            t: t0,
            in_bytes: 0,
            in_elems: 0,
            k: 0,
        };
        plan::run_hooked(plan, ws, fallback, views, outs, &mut h)
    } else {
        plan::run(plan, ws, fallback, views, outs)
    };
    let dt = t0.elapsed();
    if f.timing {
        st.timing.record(dt);
    }
    if f.profile {
        let k = st.profile.plan_ix(plan, function);
        let start = st.profile.nanos_since_epoch(t0);
        let p = &mut st.profile.plans[k];
        p.calls += 1;
        p.wall += dt;
        st.profile.event(Event {
            plan: k as u16,
            node: u32::MAX,
            start,
            dur: dt.as_nanos() as u64,
        });
    }
    r
}

/// The built-in hook: the profile, the `trace` log, the `nan_check`, then the user's hook.
struct Builtin<'s, 'u> {
    st: &'s mut State,
    plan_ix: usize,
    user: Option<&'u mut dyn OpHook>,
    t: Instant,
    in_bytes: u128,
    in_elems: u128,
    /// the contracted dim of a matrix product
    k: u128,
}

fn bytes_of(v: &TensorView<'_>) -> u128 {
    let n: usize = v.shape().iter().product();
    (n * v.dtype().size()) as u128
}

fn elems(v: &TensorView<'_>) -> u128 {
    v.shape().iter().product::<usize>() as u128
}

/// Compute instructions of a fused program (per element).
fn prog_ops(p: &mithril_kernels::prog::Prog) -> u128 {
    p.ins
        .iter()
        .filter(|i| matches!(i, mithril_kernels::prog::Ins::Op { .. }))
        .count() as u128
}

impl OpHook for Builtin<'_, '_> {
    fn before(&mut self, op: &OpInfo<'_>, inputs: &[&TensorView<'_>]) -> Result<()> {
        if let Some(u) = self.user.as_deref_mut() {
            u.before(op, inputs)?;
        }
        if self.st.flags.profile {
            self.in_bytes = inputs.iter().map(|v| bytes_of(v)).sum();
            self.in_elems = inputs.first().map(|v| elems(v)).unwrap_or(0);
            self.k = match &op.step.op {
                POp::Matmul { ta, .. } | POp::FusedMatmul { ta, .. } => inputs
                    .first()
                    .and_then(|a| {
                        let s = a.shape();
                        let n = s.len();
                        if n == 0 {
                            None
                        } else if *ta && n >= 2 {
                            s.get(n - 2).copied()
                        } else {
                            s.get(n - 1).copied()
                        }
                    })
                    .unwrap_or(0)
                    as u128,
                _ => 0,
            };
            self.t = Instant::now();
        }
        Ok(())
    }

    fn after(&mut self, op: &OpInfo<'_>, output: &TensorView<'_>) -> Result<()> {
        let f = self.st.flags;
        if f.profile {
            let end = Instant::now();
            let dur = end.saturating_duration_since(self.t);
            let out_n = elems(output);
            let flops = match &op.step.op {
                POp::Matmul { .. } => 2 * out_n * self.k,
                POp::FusedMatmul { prog, .. } => 2 * out_n * self.k + out_n * prog_ops(prog),
                POp::Fused(_, p) => out_n * prog_ops(p),
                POp::Reduce(..) | POp::ArgReduce { .. } | POp::SumLike => self.in_elems,
                POp::Variance(..) => 3 * self.in_elems,
                POp::Softmax(_) | POp::LogSoftmax(_) => 5 * self.in_elems,
                _ => 0,
            };
            let start = self.st.profile.nanos_since_epoch(self.t);
            let row = self
                .st
                .profile
                .plans
                .get_mut(self.plan_ix)
                .and_then(|p| p.rows.get_mut(op.index));
            if let Some(r) = row {
                r.calls += 1;
                r.nanos += dur.as_nanos();
                r.bytes += self.in_bytes + bytes_of(output);
                r.flops += flops;
            }
            self.st.profile.event(Event {
                plan: self.plan_ix as u16,
                node: op.index as u32,
                start,
                dur: dur.as_nanos() as u64,
            });
        }
        if f.trace {
            log::trace!(
                target: "mithril::trace",
                "`{}` op {} {}: {} -> {}{:?}",
                op.model,
                op.index,
                op.kind(),
                op.label(),
                output.dtype(),
                output.shape()
            );
        }
        if f.nan_check {
            if let Some((at, v)) = first_non_finite(output) {
                let idx = unravel(at, output.shape());
                return Err(Error::op(
                    op.kind(),
                    format!(
                        "`nan_check`: the result ({}{:?}) holds {v} at {idx:?}, the first op of the call to produce a NaN or an infinity",
                        output.dtype(),
                        output.shape()
                    ),
                ));
            }
        }
        if let Some(u) = self.user.as_deref_mut() {
            u.after(op, output)?;
        }
        Ok(())
    }
}

/// The flat (logical, row-major) index and value of the first NaN or infinity of a float view.
pub fn first_non_finite(v: &TensorView<'_>) -> Option<(usize, f64)> {
    fn find<T: crate::Elem>(a: &ArrayViewD<'_, T>) -> Option<(usize, f64)> {
        a.iter()
            .map(|x| x.to_f64())
            .enumerate()
            .find(|(_, x)| !x.is_finite())
    }
    match v {
        TensorView::F32(a) => a
            .iter()
            .position(|x| !x.is_finite())
            .and_then(|i| a.iter().nth(i).map(|x| (i, *x as f64))),
        TensorView::F64(a) => find(a),
        TensorView::F16(a) => find(a),
        TensorView::BF16(a) => find(a),
        _ => None,
    }
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[k] = i % d;
            i /= d;
        }
    }
    idx
}

/// The named intermediate values of one call (`save_intermediates: true`): every `let`-bound
/// value of the model and of its submodels (by instance path: `fc1.h`), and the outputs, with
/// shape, dtype and data. A [`ParamTree`], so `save_safetensors` writes them all.
#[derive(Debug, Default)]
pub struct Intermediates {
    model: &'static str,
    values: Vec<(String, AnyArray)>,
}

impl Intermediates {
    /// An empty collection for `model`.
    pub fn new(model: &'static str) -> Intermediates {
        Intermediates {
            model,
            values: Vec::new(),
        }
    }

    /// Adds `value` as `name` (generated code; `None` is an internal error).
    #[doc(hidden)]
    pub fn push(&mut self, name: &str, value: Option<AnyArray>) -> Result<()> {
        let v = value.ok_or_else(|| {
            Error::op(
                self.model,
                format!("internal: intermediate `{name}` not computed"),
            )
        })?;
        self.values.push((name.to_string(), v));
        Ok(())
    }

    /// The names, in schedule order.
    pub fn names(&self) -> Vec<&str> {
        self.values.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// How many values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// No values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value `name`, untyped.
    pub fn view(&self, name: &str) -> Result<TensorView<'_>> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a.view())
            .ok_or_else(|| {
                Error::op(
                    self.model,
                    format!(
                        "no intermediate named `{name}`; the named values are: {}",
                        self.names().join(", ")
                    ),
                )
            })
    }

    /// The value `name` as a view of `T`; `Err` naming the values there are, or the value's
    /// dtype when it is not `T`.
    pub fn get<T: PlanElem>(&self, name: &str) -> Result<ArrayViewD<'_, T>> {
        let dt = self.view(name)?.dtype();
        let a = self
            .values
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, a)| T::pick_array_ref(a));
        a.map(|a| a.view()).ok_or_else(|| {
            Error::op(
                self.model,
                format!("intermediate `{name}` is {dt}, not {}", T::DTYPE),
            )
        })
    }

    /// The shape and dtype of `name`.
    pub fn describe(&self, name: &str) -> Result<(Vec<usize>, DType)> {
        let v = self.view(name)?;
        Ok((v.shape().to_vec(), v.dtype()))
    }

    /// The file `save_to_dir` writes in `dir`: `<dir>/<model>.intermediates.safetensors`.
    pub fn file_in(&self, dir: &Path) -> PathBuf {
        dir.join(format!("{}.intermediates.safetensors", self.model))
    }

    /// Saves every value to [`Self::file_in`] `dir` (creating `dir`), as safetensors
    /// (little-endian, row-major, `{"format": "pt"}`: NumPy's and PyTorch's loaders read it).
    pub fn save_to_dir(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Params(format!(
                "cannot create intermediate_dir `{}`: {e}",
                dir.display()
            ))
        })?;
        let path = self.file_in(dir);
        self.save_safetensors(&path)?;
        Ok(path)
    }
}

impl ParamTree for Intermediates {
    fn visit(&self, f: &mut dyn FnMut(&str, TensorView<'_>)) {
        for (n, a) in &self.values {
            f(n, a.view());
        }
    }
    fn visit_mut(
        &mut self,
        f: &mut dyn FnMut(&str, TensorViewMut<'_>) -> Result<()>,
    ) -> Result<()> {
        for (n, a) in &mut self.values {
            f(n, a.view_mut())?;
        }
        Ok(())
    }
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;
    use ndarray::{array, ArrayD, IxDyn};

    #[cfg_attr(test, test)]
    pub(crate) fn first_non_finite_finds_the_first_in_logical_order() {
        let a = array![[1.0f32, 2.0], [f32::INFINITY, f32::NAN]];
        // a transposed view: logical order is column-major of the storage
        let t = a.t();
        let v = TensorView::F32(t.into_dyn());
        assert_eq!(first_non_finite(&v), Some((1, f64::INFINITY)));
        let h = ArrayD::from_elem(IxDyn(&[3]), half::bf16::from_f32(1.0));
        assert_eq!(first_non_finite(&TensorView::BF16(h.view())), None);
        let i = ArrayD::from_elem(IxDyn(&[2]), 7i64);
        assert_eq!(first_non_finite(&TensorView::I64(i.view())), None);
        assert_eq!(unravel(5, &[2, 3]), vec![1, 2]);
        assert_eq!(unravel(0, &[]), Vec::<usize>::new());
    }

    #[cfg_attr(test, test)]
    pub(crate) fn call_timing_keeps_min_max_total() {
        let mut t = CallTiming::default();
        assert_eq!(t.mean(), Duration::ZERO);
        for ms in [3, 1, 2] {
            t.record(Duration::from_millis(ms));
        }
        assert_eq!(t.calls, 3);
        assert_eq!(t.last, Duration::from_millis(2));
        assert_eq!(t.min, Duration::from_millis(1));
        assert_eq!(t.max, Duration::from_millis(3));
        assert_eq!(t.total, Duration::from_millis(6));
        assert_eq!(t.mean(), Duration::from_millis(2));
    }

    #[cfg_attr(test, test)]
    pub(crate) fn json_strings_are_escaped() {
        assert_eq!(
            json_escape("`a` \"b\"\\\n\t\u{1}"),
            "`a` \\\"b\\\"\\\\\\n\\t\\u0001"
        );
    }
}
