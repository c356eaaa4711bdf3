//! Introspection: the summary table and the graph as text, DOT and JSON, all made from the
//! optimized IR at compile time.

pub mod files;
pub mod svg;
pub mod template;
pub mod verbose;

use crate::ir::{FExpr, Graph, NodeId, Op};

/// A short op name for a node.
pub fn op_name(g: &Graph, id: NodeId) -> String {
    match &g.nodes[id].op {
        Op::Input(_) => "input".into(),
        Op::Param(_) => "param".into(),
        Op::Const(s) => format!(
            "const {}",
            match s {
                crate::ir::Scalar::Float(f) => format!("{f}"),
                crate::ir::Scalar::Int(i) => format!("{i}"),
                crate::ir::Scalar::Bool(b) => format!("{b}"),
            }
        ),
        Op::Prim(crate::prims::Prim::Matmul { ta, tb }) => match (ta, tb) {
            (false, false) => "matmul".into(),
            (false, true) => "matmul(b^T)".into(),
            (true, false) => "matmul(a^T)".into(),
            (true, true) => "matmul(a^T, b^T)".into(),
        },
        Op::Prim(p) => p.name().into(),
        Op::Boundary(_) => "boundary".into(),
        Op::Seed(_) => "seed".into(),
        Op::Mode => "is_training".into(),
        Op::Fused(e) => format!("fused[{}]", fexpr(e)),
        Op::FusedMatmul { ta, tb, expr } => format!(
            "matmul{}+epilogue[{}]",
            match (ta, tb) {
                (false, false) => "",
                (false, true) => "(b^T)",
                (true, false) => "(a^T)",
                (true, true) => "(a^T, b^T)",
            },
            fexpr(expr)
        ),
    }
}

fn fexpr(e: &FExpr) -> String {
    match e {
        FExpr::Arg(i) => format!("#{i}"),
        FExpr::Lit(s, _) => format!("{}", s.as_f64()),
        FExpr::Op(p, xs, ..) => format!(
            "{}({})",
            p.name(),
            xs.iter().map(fexpr).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn name(g: &Graph, id: NodeId) -> String {
    let n = &g.nodes[id];
    match &n.label {
        Some(l) => l.clone(),
        None => format!("%{id}"),
    }
}

/// Counts of each kind of op (for tests and the summary footer).
pub fn op_count(g: &Graph) -> usize {
    g.nodes
        .iter()
        .filter(|n| matches!(n.op, Op::Prim(_) | Op::Fused(_) | Op::FusedMatmul { .. }))
        .count()
}

/// The summary table: every node with its op, inputs, shape and dtype.
/// A mixed model (`backend_map`) gets a `backend` column (`cuda`, `cpu`, `host` for inputs and
/// params, `a -> b` where the value is copied) and a line with the transfers of one call.
pub fn summary(g: &Graph, model: &str, passes: &[(&str, usize)]) -> String {
    let placed = g
        .placement
        .is_mixed()
        .then(|| crate::passes::placement::Placed::new(g, &[]));
    let mut head: Vec<String> = vec![
        "#".into(),
        "name".into(),
        "op".into(),
        "inputs".into(),
        "type".into(),
    ];
    if placed.is_some() {
        head.push("backend".into());
    }
    let guarded = g.has_guards();
    if guarded {
        head.push("runs if".into());
    }
    let looped = g.has_loops();
    if looped {
        head.push("in loop".into());
    }
    let mut rows: Vec<Vec<String>> = vec![head];
    for id in 0..g.nodes.len() {
        let ins = g.nodes[id]
            .args
            .iter()
            .map(|&a| format!("%{a}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut row = vec![
            format!("%{id}"),
            name(g, id),
            op_name(g, id),
            ins,
            g.describe(id),
        ];
        if let Some(p) = &placed {
            row.push(p.column(g, id).to_string());
        }
        if guarded {
            row.push(
                g.nodes[id]
                    .guard
                    .map(|w| format!("%{w}"))
                    .unwrap_or_default(),
            );
        }
        if looped {
            row.push(
                g.nodes[id]
                    .region
                    .map(|h| format!("%{h}"))
                    .unwrap_or_default(),
            );
        }
        rows.push(row);
    }
    let mut w = vec![0usize; rows[0].len()];
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count()).min(60);
        }
    }
    let mut out = format!(
        "Model `{model}`: {} ops, {} params ({} elements)\n",
        op_count(g),
        g.params.len(),
        param_elems(g)
    );
    for (ri, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<width$}", c, width = w[i]))
            .collect();
        out.push_str(line.join(" | ").trim_end());
        out.push('\n');
        if ri == 0 {
            out.push_str(
                &w.iter()
                    .map(|&n| "-".repeat(n))
                    .collect::<Vec<_>>()
                    .join("-+-"),
            );
            out.push('\n');
        }
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|o| format!("{} = %{}", o.name, o.node))
        .collect();
    out.push_str(&format!("outputs: {}\n", outs.join(", ")));
    if let Some(p) = &placed {
        out.push_str(&p.line(g, "evaluate"));
    }
    if !passes.is_empty() {
        let p: Vec<String> = passes.iter().map(|(n, c)| format!("{n}: {c}")).collect();
        out.push_str(&format!("passes: {}\n", p.join(", ")));
    }
    out
}

fn param_elems(g: &Graph) -> u64 {
    g.params
        .iter()
        .map(|p| match g.rdims(p.node) {
            Some(d) => d
                .iter()
                .map(|x| match x {
                    crate::ir::RDim::Known(n) => *n,
                    _ => 0,
                })
                .fold(1u64, |a, b| a.saturating_mul(b)),
            None => 0,
        })
        .fold(0u64, |a, b| a.saturating_add(b))
}

/// Plain text: one line per node.
pub fn text(g: &Graph) -> String {
    let mut out = String::new();
    for id in 0..g.nodes.len() {
        let ins = g.nodes[id]
            .args
            .iter()
            .map(|&a| format!("%{a}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut when = match g.nodes[id].guard {
            Some(w) => format!(" if %{w}"),
            None => String::new(),
        };
        if let Some(h) = g.nodes[id].region {
            when.push_str(&format!(" in loop %{h}"));
        }
        out.push_str(&format!(
            "%{id} = {}({ins}) : {}{when}  # {}\n",
            op_name(g, id),
            g.describe(id),
            name(g, id)
        ));
    }
    for o in &g.outputs {
        out.push_str(&format!("output {} = %{}\n", o.name, o.node));
    }
    out
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Graphviz DOT.
pub fn dot(g: &Graph, model: &str) -> String {
    let mut out =
        format!("digraph {model} {{\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n");
    let edges = |id: NodeId, out: &mut String| {
        for &a in &g.nodes[id].args {
            out.push_str(&format!("  n{a} -> n{id};\n"));
        }
    };
    for id in 0..g.nodes.len() {
        if g.nodes[id].guard.is_none() && g.nodes[id].region.is_none() {
            dot_node(g, id, "  ", &mut out);
        }
        if g.nodes[id].guard.is_none() {
            edges(id, &mut out);
        }
    }
    // a run-time loop's body: one cluster per loop, nested as the loops are
    for h in 0..g.nodes.len() {
        if matches!(g.nodes[h].op, Op::Prim(crate::prims::Prim::LoopHead))
            && g.nodes[h].region.is_none()
        {
            dot_loop(g, h, 1, &mut out);
        }
    }
    // a run-time `if`'s branches: one cluster per guard, nested as the `if`s are
    let guards = branch_guards(g);
    for &w in guards.iter().filter(|&&w| guard_parent(g, w).is_none()) {
        dot_cluster(g, w, &guards, 1, &mut out);
    }
    for id in 0..g.nodes.len() {
        if g.nodes[id].guard.is_some() {
            edges(id, &mut out);
        }
    }
    for (i, o) in g.outputs.iter().enumerate() {
        out.push_str(&format!(
            "  out{i} [shape=house, label=\"{}\"];\n  n{} -> out{i};\n",
            esc(&o.name),
            o.node
        ));
    }
    out.push_str("}\n");
    out
}

fn dot_node(g: &Graph, id: NodeId, ind: &str, out: &mut String) {
    let shape = match g.nodes[id].op {
        Op::Input(_) => "invhouse",
        Op::Param(_) => "cylinder",
        Op::Const(_) => "ellipse",
        _ => "box",
    };
    out.push_str(&format!(
        "{ind}n{id} [shape={shape}, label=\"{}\\n{}\\n{}\"];\n",
        esc(&name(g, id)),
        esc(&op_name(g, id)),
        esc(&g.describe(id))
    ));
}

/// The guards of a run-time `if`'s branches, in graph order.
fn branch_guards(g: &Graph) -> Vec<NodeId> {
    let mut gs: Vec<NodeId> = g.nodes.iter().filter_map(|n| n.guard).collect();
    // a nested branch's guard is `phi(outer, outer, cond, false)`: its outer one too
    let mut i = 0;
    while i < gs.len() {
        if let Some(p) = guard_parent(g, gs[i]) {
            gs.push(p);
        }
        i += 1;
    }
    gs.sort_unstable();
    gs.dedup();
    gs
}

/// The guard of the enclosing `if`'s branch of a nested `if`'s guard.
fn guard_parent(g: &Graph, w: NodeId) -> Option<NodeId> {
    let n = &g.nodes[w];
    match (&n.op, &n.args[..]) {
        (Op::Prim(crate::prims::Prim::Phi), [a, b, ..]) if a == b => Some(*a),
        _ => None,
    }
}

fn dot_loop(g: &Graph, h: NodeId, depth: usize, out: &mut String) {
    let ind = "  ".repeat(depth);
    out.push_str(&format!(
        "{ind}subgraph cluster_loop_{h} {{\n{ind}  label=\"loop %{h} (once per iteration)\";\n{ind}  style=rounded;\n"
    ));
    let inner = format!("{ind}  ");
    for id in 0..g.nodes.len() {
        if g.nodes[id].region == Some(h) && g.nodes[id].guard.is_none() {
            dot_node(g, id, &inner, out);
        }
    }
    for k in 0..g.nodes.len() {
        if matches!(g.nodes[k].op, Op::Prim(crate::prims::Prim::LoopHead))
            && g.nodes[k].region == Some(h)
        {
            dot_loop(g, k, depth + 1, out);
        }
    }
    out.push_str(&format!("{ind}}}\n"));
}

fn dot_cluster(g: &Graph, w: NodeId, guards: &[NodeId], depth: usize, out: &mut String) {
    let ind = "  ".repeat(depth);
    out.push_str(&format!(
        "{ind}subgraph cluster_if{w} {{\n{ind}  label=\"runs if %{w}\";\n{ind}  style=dashed;\n"
    ));
    let inner = format!("{ind}  ");
    for id in 0..g.nodes.len() {
        if g.nodes[id].guard == Some(w) {
            dot_node(g, id, &inner, out);
        }
    }
    for &c in guards.iter().filter(|&&c| guard_parent(g, c) == Some(w)) {
        dot_cluster(g, c, guards, depth + 1, out);
    }
    out.push_str(&format!("{ind}}}\n"));
}

/// JSON: `{"model": .., "nodes": [{"id", "name", "op", "inputs", "type"}], "outputs": {..}}`
/// (a node of a run-time `if`'s branch also has `"guard"`: the node whose value it runs under;
/// a node of a run-time loop's body `"loop"`: the loop's head).
pub fn json(g: &Graph, model: &str) -> String {
    let mut nodes = Vec::new();
    for id in 0..g.nodes.len() {
        let ins = g.nodes[id]
            .args
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut guard = match g.nodes[id].guard {
            Some(w) => format!(", \"guard\": {w}"),
            None => String::new(),
        };
        if let Some(h) = g.nodes[id].region {
            guard.push_str(&format!(", \"loop\": {h}"));
        }
        nodes.push(format!(
            "    {{\"id\": {id}, \"name\": \"{}\", \"scope\": \"{}\", \"op\": \"{}\", \"inputs\": [{ins}], \"type\": \"{}\"{guard}}}",
            esc(&name(g, id)),
            esc(&g.nodes[id].scope),
            esc(&op_name(g, id)),
            esc(&g.describe(id))
        ));
    }
    let outs: Vec<String> = g
        .outputs
        .iter()
        .map(|o| format!("\"{}\": {}", esc(&o.name), o.node))
        .collect();
    format!(
        "{{\n  \"model\": \"{model}\",\n  \"nodes\": [\n{}\n  ],\n  \"outputs\": {{{}}}\n}}\n",
        nodes.join(",\n"),
        outs.join(", ")
    )
}
