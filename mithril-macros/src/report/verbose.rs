//! `verbose: true` and `trace_shapes: true`: the compile report of one physical model (each
//! pipeline step `compile_one` in `lib.rs` runs, with what it did and how long it took) and the
//! shape-inference trace.
//!
//! The report is written twice: printed to the build's stderr with each step's duration, and
//! kept as `M::COMPILE_REPORT` without them (durations differ from build to build, and a
//! constant that changes with them would make the compiled binary differ too).

use crate::infer::shapes::Trace;
use crate::ir::{Graph, Op};
use std::time::{Duration, Instant};

/// The steps of one physical model's compilation, recorded as they run.
pub struct Log {
    head: String,
    steps: Vec<(String, Duration, String)>,
    start: Instant,
    last: Instant,
}

impl Log {
    /// A log for physical model `model` (of logical model `logical`), started now.
    pub fn new(model: &str, logical: &str) -> Log {
        let now = Instant::now();
        Log {
            head: format!("mithril: compile report of `{model}` (model `{logical}`)"),
            steps: Vec::new(),
            start: now,
            last: now,
        }
    }

    /// Step `name` ended now (it began when the previous one ended); `what` it did.
    pub fn step(&mut self, name: &str, what: impl Into<String>) {
        let now = Instant::now();
        self.steps
            .push((name.to_string(), now - self.last, what.into()));
        self.last = now;
    }

    /// Set what step `name` (the last one of that name) did, then restart the clock, so that
    /// describing a step is charged to no step.
    pub fn detail(&mut self, name: &str, what: impl Into<String>) {
        if let Some(s) = self.steps.iter_mut().rev().find(|s| s.0 == name) {
            s.2 = what.into();
        }
        self.resume();
    }

    /// Restart the clock of the next step (time spent on the report itself is no step's).
    pub fn resume(&mut self) {
        self.last = Instant::now();
    }

    /// The steps' total time so far.
    pub fn total(&self) -> Duration {
        self.steps.iter().map(|s| s.1).sum()
    }

    /// The report: one line per step (`durations`: with the time each took, and the total).
    pub fn render(&self, durations: bool) -> String {
        let w = self.steps.iter().map(|s| s.0.len()).max().unwrap_or(0);
        let mut out = format!("{}\n", self.head);
        for (name, d, what) in &self.steps {
            let mut lines = what.lines();
            let first = lines.next().unwrap_or("");
            if durations {
                out.push_str(&format!("  {name:<w$} {:>9}  {first}\n", ms(*d)));
            } else {
                out.push_str(&format!("  {name:<w$}  {first}\n"));
            }
            let pad = if durations { w + 13 } else { w + 4 };
            for l in lines {
                out.push_str(&format!("{}{l}\n", " ".repeat(pad)));
            }
        }
        if durations {
            out.push_str(&format!(
                "  {:<w$} {:>9}  (wall time since the model's compilation began: {})\n",
                "total",
                ms(self.total()),
                ms(self.start.elapsed())
            ));
        }
        out
    }
}

/// `1.234 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// `12 ops (3 params)`: what a graph holds, for the report.
pub fn counts(g: &Graph) -> String {
    format!(
        "{} nodes, {} ops; {} inputs, {} params, {} outputs",
        g.nodes.len(),
        super::op_count(g),
        g.inputs.len(),
        g.params.len(),
        g.outputs.len()
    )
}

/// The fused groups (`fused[..]`) or matmul epilogues of `g`, one per line (at most `max`).
pub fn groups(g: &Graph, epilogues: bool, max: usize) -> (usize, String) {
    let found: Vec<String> = (0..g.nodes.len())
        .filter(|&id| match g.nodes[id].op {
            Op::Fused(_) => !epilogues,
            Op::FusedMatmul { .. } => epilogues,
            _ => false,
        })
        .map(|id| match &g.nodes[id].label {
            Some(l) => format!("%{id} {l}: {}", super::op_name(g, id)),
            None => format!("%{id}: {}", super::op_name(g, id)),
        })
        .collect();
    let n = found.len();
    let mut text: Vec<String> = found.into_iter().take(max).collect();
    if n > max {
        text.push(format!("... and {} more", n - max));
    }
    (n, text.join("\n"))
}

/// The shape trace as text (`M::SHAPE_TRACE`): the symbols (declared where, changed by which
/// node, what each is in the end), then every node as inference saw it. `g` is the graph after
/// `shapes::finish` (for the symbols' final values).
pub fn shape_trace(t: &Trace, g: &Graph, model: &str) -> String {
    let mut out = format!("shape trace of `{model}`\nsymbols:\n");
    if t.syms.is_empty() {
        out.push_str("  (none)\n");
    }
    for s in &t.syms {
        let end = match g.syms.iter().position(|x| *x == s.name) {
            Some(k) => format!("stays symbolic: bound at run time (slot {k})"),
            None => {
                let var = g.sym_vars.iter().find(|(n, _)| *n == s.name).map(|x| &x.1);
                match var {
                    Some(v) => format!("compile-time: {}", g.fmt_dim(v)),
                    None => "?".into(),
                }
            }
        };
        out.push_str(&format!("  {}: {end}\n", s.name));
        if s.start != s.name {
            out.push_str(&format!("    fixed before inference: {}\n", s.start));
        }
        match s.declared.first() {
            Some(first) => out.push_str(&format!("    bound by {first}\n")),
            None => out.push_str("    declared by no input or param\n"),
        }
        for d in s.declared.iter().skip(1) {
            out.push_str(&format!("    also in {d}\n"));
        }
        for e in &s.events {
            out.push_str(&format!("    unified {e}\n"));
        }
    }
    out.push_str("nodes:\n");
    for l in &t.nodes {
        out.push_str(&format!("  {l}\n"));
    }
    out
}
