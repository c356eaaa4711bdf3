//! `visualize: true`: the optimized graph as an SVG picture, laid out by `layout-rs` (a pure-Rust
//! Sugiyama-style layered layout with crossing reduction and an SVG backend; no dependencies).
//!
//! Each node is a box with its name, op, shape and dtype and (for a computed value) its size in
//! bytes and where the memory plan puts it (`viz_options` chooses the lines). A fused elementwise
//! group is drawn as a cluster holding one small node per primitive of its expression; a run-time
//! `if`'s branches are nested dashed clusters (as in the DOT dump); in a mixed model
//! (`backend_map`) the nodes placed on cuda are a cluster of their own.
//!
//! `layout-rs` lays out nodes and edges but not clusters (its docs: "lacks ... nested graphs"),
//! so a cluster is drawn here as the bounding box of its members' laid-out boxes, behind them,
//! with its title above. The layout does not keep the members together: when an unrelated node
//! lands inside a cluster's box it is drawn over it. The draw calls of the layout are recorded
//! and replayed after the clusters, so the picture is one SVG document from `layout-rs`'s own
//! writer.

use super::op_name;
use crate::ir::{DType, FExpr, Graph, NodeId, Op, RDim};
use crate::options::render::VizOptions;
use crate::passes::memplan;
use layout::backends::svg::SVGWriter;
use layout::core::base::Orientation;
use layout::core::color::Color;
use layout::core::format::{ClipHandle, RenderBackend};
use layout::core::geometry::{get_size_for_str, pad_shape_scalar, Point};
use layout::core::style::StyleAttr;
use layout::std_shapes::shapes::{Arrow, Element, ShapeKind};
use layout::topo::layout::VisualGraph;

/// A recorded draw call of the layout (replayed after the clusters are drawn).
enum Call {
    Rect(Point, Point, StyleAttr, Option<String>, Option<ClipHandle>),
    Line(Point, Point, StyleAttr, Option<String>),
    Circle(Point, Point, StyleAttr, Option<String>),
    Text(Point, String, StyleAttr),
    Arrow(
        Vec<(Point, Point)>,
        bool,
        (bool, bool),
        StyleAttr,
        Option<String>,
        String,
    ),
    Clip(Point, Point, usize),
}

#[derive(Default)]
struct Recorder {
    calls: Vec<Call>,
    clips: usize,
}

impl RenderBackend for Recorder {
    fn draw_rect(
        &mut self,
        xy: Point,
        size: Point,
        look: &StyleAttr,
        p: Option<String>,
        clip: Option<ClipHandle>,
    ) {
        self.calls.push(Call::Rect(xy, size, look.clone(), p, clip));
    }
    fn draw_line(&mut self, a: Point, b: Point, look: &StyleAttr, p: Option<String>) {
        self.calls.push(Call::Line(a, b, look.clone(), p));
    }
    fn draw_circle(&mut self, xy: Point, size: Point, look: &StyleAttr, p: Option<String>) {
        self.calls.push(Call::Circle(xy, size, look.clone(), p));
    }
    fn draw_text(&mut self, xy: Point, text: &str, look: &StyleAttr) {
        self.calls
            .push(Call::Text(xy, text.to_string(), look.clone()));
    }
    fn draw_arrow(
        &mut self,
        path: &[(Point, Point)],
        dashed: bool,
        head: (bool, bool),
        look: &StyleAttr,
        p: Option<String>,
        text: &str,
    ) {
        self.calls.push(Call::Arrow(
            path.to_vec(),
            dashed,
            head,
            look.clone(),
            p,
            text.to_string(),
        ));
    }
    fn create_clip(&mut self, xy: Point, size: Point, rounded: usize) -> ClipHandle {
        self.calls.push(Call::Clip(xy, size, rounded));
        self.clips += 1;
        self.clips - 1
    }
}

fn replay(calls: Vec<Call>, w: &mut SVGWriter) {
    for c in calls {
        match c {
            Call::Rect(a, b, l, p, clip) => w.draw_rect(a, b, &l, p, clip),
            Call::Line(a, b, l, p) => w.draw_line(a, b, &l, p),
            Call::Circle(a, b, l, p) => w.draw_circle(a, b, &l, p),
            Call::Text(a, t, l) => w.draw_text(a, &t, &l),
            Call::Arrow(path, d, h, l, p, t) => w.draw_arrow(&path, d, h, &l, p, &t),
            Call::Clip(a, b, r) => {
                w.create_clip(a, b, r);
            }
        }
    }
}

/// A cluster: its title, members (layout handles), dashed or solid, fill, and nesting depth.
struct Cluster {
    title: String,
    members: Vec<layout::adt::dag::NodeHandle>,
    dashed: bool,
    fill: &'static str,
    depth: usize,
}

fn dtype_bytes(t: DType) -> u64 {
    match t {
        DType::F64 | DType::I64 => 8,
        DType::F32 | DType::I32 => 4,
        DType::F16 | DType::BF16 => 2,
        DType::Bool => 1,
    }
}

/// `3136 B` / `4·B·784 B`: the size of node `id`'s value (a formula over run-time dims).
fn bytes(g: &Graph, id: NodeId) -> Option<String> {
    let t = g.dtype_of(id)?;
    let dims = g.rdims(id)?;
    let mut k = dtype_bytes(t);
    let mut syms: Vec<String> = Vec::new();
    for d in dims {
        match d {
            RDim::Known(n) => k = k.saturating_mul(n),
            RDim::Sym(c, names) => {
                k = k.saturating_mul(c);
                syms.extend(names);
            }
            RDim::Dynamic => syms.push("_".into()),
        }
    }
    Some(if syms.is_empty() {
        human(k)
    } else {
        format!("{k}·{} B", syms.join("·"))
    })
}

fn human(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let t: String = s.chars().take(max - 1).collect();
        format!("{t}…")
    }
}

/// The lines of node `id`'s box.
fn label(g: &Graph, id: NodeId, v: &VizOptions, plan: &memplan::Plan) -> String {
    let n = &g.nodes[id];
    let mut lines = vec![match &n.label {
        Some(l) => format!("{l} (%{id})"),
        None => format!("%{id}"),
    }];
    let op = match &n.op {
        Op::Fused(_) => "fused group".to_string(),
        Op::FusedMatmul { .. } => short(&op_name(g, id), 40),
        _ => short(&op_name(g, id), 40),
    };
    lines.push(op);
    let desc = g.describe(id);
    let (dt, shape) = match desc.find('[') {
        Some(i) => (desc[..i].to_string(), desc[i..].to_string()),
        None => (desc.clone(), String::new()),
    };
    match (v.show_types, v.show_shapes) {
        (true, true) => lines.push(desc),
        (true, false) => lines.push(dt),
        (false, true) => lines.push(shape),
        (false, false) => {}
    }
    let computed = !matches!(n.op, Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Mode);
    if v.show_memory && computed {
        let place = match plan.home.get(id) {
            Some(memplan::Home::Slot {
                slot,
                inplace: Some(_),
            }) => format!("slot {slot}, in place"),
            Some(memplan::Home::Slot { slot, .. }) => format!("slot {slot}"),
            Some(memplan::Home::Output) => "returned".into(),
            Some(memplan::Home::View) | None => "view".into(),
        };
        if let Some(b) = bytes(g, id) {
            lines.push(format!("{b} · {place}"));
        }
    }
    lines.join("\n")
}

fn element(text: &str, shape: ShapeKind, fill: &str, font: usize) -> Element {
    let look = StyleAttr::new(Color::fast("black"), 1, Some(Color::fast(fill)), 4, font);
    let sz = pad_shape_scalar(get_size_for_str(text, font), 14.0);
    Element::create(shape, look, Orientation::TopToBottom, sz)
}

/// The SVG of `g` (an optimized graph) for model `model`.
// (node ids index several tables at once)
#[allow(clippy::needless_range_loop)]
pub fn svg(g: &Graph, model: &str, v: &VizOptions, planning: bool) -> String {
    let plan = memplan::plan(g, planning);
    let mut vg = VisualGraph::new(Orientation::TopToBottom);
    // the handle whose box edges leave from / arrive at, per node
    let mut out_of = Vec::with_capacity(g.nodes.len());
    let mut into: Vec<Vec<(usize, layout::adt::dag::NodeHandle)>> =
        Vec::with_capacity(g.nodes.len());
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut fused_members: Vec<Option<usize>> = vec![None; g.nodes.len()];
    for id in 0..g.nodes.len() {
        let text = label(g, id, v, &plan);
        let (shape, fill) = match g.nodes[id].op {
            Op::Input(_) => (ShapeKind::new_box(&text), "lightyellow"),
            Op::Param(_) => (ShapeKind::new_box(&text), "lavender"),
            Op::Const(_) => (ShapeKind::new_circle(&text), "whitesmoke"),
            Op::Fused(_) | Op::FusedMatmul { .. } => (ShapeKind::new_box(&text), "honeydew"),
            _ => (ShapeKind::new_box(&text), "white"),
        };
        let h = vg.add_node(element(&text, shape, fill, 13));
        out_of.push(h);
        let mut ins = Vec::new();
        // a fused group: its expression's primitives as small nodes, in a cluster with the
        // group's own box (which holds the result)
        if let Op::Fused(e) | Op::FusedMatmul { expr: e, .. } = &g.nodes[id].op {
            let mut members = vec![h];
            let mut args: Vec<(usize, layout::adt::dag::NodeHandle)> = Vec::new();
            let top = expr_nodes(&mut vg, e, &mut members, &mut args);
            if let Some(top) = top {
                vg.add_edge(Arrow::simple(""), top, h);
            }
            if matches!(g.nodes[id].op, Op::FusedMatmul { .. }) {
                // the matmul itself reads operands 0 and 1; the epilogue's operand 0 is its
                // accumulator, operand k >= 1 the node's operand k + 1
                let mm = vg.add_node(element("matmul", ShapeKind::new_box("matmul"), "white", 11));
                members.push(mm);
                ins.push((0, mm));
                ins.push((1, mm));
                if top.is_none() {
                    vg.add_edge(Arrow::simple(""), mm, h);
                }
                for (k, r) in args {
                    if k == 0 {
                        vg.add_edge(Arrow::simple(""), mm, r);
                    } else {
                        ins.push((k + 1, r));
                    }
                }
            } else {
                ins.extend(args);
            }
            fused_members[id] = Some(clusters.len());
            clusters.push(Cluster {
                title: format!("fused group %{id}"),
                members,
                dashed: false,
                fill: "#eef8ee",
                depth: 2,
            });
        }
        into.push(ins);
    }
    // edges: operand k of node id
    for id in 0..g.nodes.len() {
        let ins = &into[id];
        for (k, &a) in g.nodes[id].args.iter().enumerate() {
            let targets: Vec<_> = if ins.is_empty() {
                vec![out_of[id]]
            } else {
                ins.iter()
                    .filter(|(j, _)| *j == k)
                    .map(|(_, h)| *h)
                    .collect()
            };
            for t in targets {
                vg.add_edge(Arrow::simple(""), out_of[a], t);
            }
        }
    }
    // outputs
    let mut all = out_of.clone();
    for o in &g.outputs {
        let text = format!("output {}", o.name);
        let h = vg.add_node(element(&text, ShapeKind::new_box(&text), "mistyrose", 13));
        vg.add_edge(Arrow::simple(""), out_of[o.node], h);
        all.push(h);
    }
    // run-time `if` branches: nested dashed clusters
    let guards = super::branch_guards(g);
    for &w in &guards {
        let mut depth = 1;
        let mut p = super::guard_parent(g, w);
        while let Some(q) = p {
            depth += 1;
            p = super::guard_parent(g, q);
        }
        // a branch holds its own nodes and those of the branches nested in it
        let members: Vec<_> = (0..g.nodes.len())
            .filter(|&id| {
                let mut gd = g.nodes[id].guard;
                while let Some(x) = gd {
                    if x == w {
                        return true;
                    }
                    gd = super::guard_parent(g, x);
                }
                false
            })
            .flat_map(|id| {
                let mut hs = vec![out_of[id]];
                if let Some(c) = fused_members[id] {
                    hs.extend(clusters[c].members.iter().copied());
                }
                hs
            })
            .collect();
        clusters.push(Cluster {
            title: format!("runs if %{w}"),
            members,
            dashed: true,
            fill: "none",
            depth: 3 + 2 * depth,
        });
    }
    // a mixed model's cuda part
    if g.placement.is_mixed() {
        let placed = crate::passes::placement::Placed::new(g, &[]);
        let members: Vec<_> = (0..g.nodes.len())
            .filter(|&id| placed.column(g, id) == "cuda")
            .map(|id| out_of[id])
            .collect();
        if !members.is_empty() {
            clusters.push(Cluster {
                title: "backend: cuda".into(),
                members,
                dashed: false,
                fill: "#eef2fb",
                depth: 12,
            });
        }
    }
    let mut rec = Recorder::default();
    vg.do_it(false, false, false, &mut rec);
    let mut w = SVGWriter::new();
    // the title
    let title = format!(
        "{model}: optimized graph ({} ops){}",
        super::op_count(g),
        if g.placement.is_mixed() {
            ""
        } else {
            ", backend: cpu"
        }
    );
    let tl = StyleAttr::new(Color::fast("black"), 1, None, 0, 16);
    // clusters, outermost (largest margin) first
    let mut order: Vec<usize> = (0..clusters.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(clusters[i].depth));
    for &i in &order {
        let c = &clusters[i];
        if c.members.is_empty() {
            continue;
        }
        let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
        for &h in &c.members {
            let p = vg.pos(h);
            x0 = x0.min(p.left(false));
            x1 = x1.max(p.right(false));
            y0 = y0.min(p.top(false));
            y1 = y1.max(p.bottom(false));
        }
        let m = 4.0 * c.depth as f64;
        // a title band of 18 px above the members, and twice the margin on top so that a
        // cluster's title clears the clusters nested in it
        let (xy, size) = (
            Point::new(x0 - m, y0 - 2.0 * m - 18.0),
            Point::new(x1 - x0 + 2.0 * m, y1 - y0 + 3.0 * m + 18.0),
        );
        let fill = if c.fill == "none" {
            None
        } else {
            Some(Color::fast(c.fill))
        };
        let look = StyleAttr::new(Color::fast("dimgray"), 1, fill, 6, 12);
        let props = c.dashed.then(|| "stroke-dasharray=\"6,4\"".to_string());
        w.draw_rect(xy, size, &look, props, None);
        let tlook = StyleAttr::new(Color::fast("dimgray"), 1, None, 0, 12);
        w.draw_text(
            // (`draw_text` centers its lines around y, one line below)
            Point::new(xy.x + size.x / 2.0, xy.y + 14.0),
            &c.title,
            &tlook,
        );
    }
    replay(rec.calls, &mut w);
    // the title, under the graph
    let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0.0f64);
    for &h in &all {
        let p = vg.pos(h);
        x0 = x0.min(p.left(false));
        x1 = x1.max(p.right(false));
        y1 = y1.max(p.bottom(false));
    }
    let cx = if x0 <= x1 { (x0 + x1) / 2.0 } else { 100.0 };
    w.draw_text(Point::new(cx, y1 + 40.0), &title, &tl);
    sorted_style(w.finalize())
}

/// `svg` with the lines of its `<style>` block sorted: the layout crate emits its font classes
/// from a hash map, in an order that changes from one compile to the next, and a build's output
/// should not.
fn sorted_style(svg: String) -> String {
    let Some(a) = svg.find("<style>\n") else {
        return svg;
    };
    let body = a + "<style>\n".len();
    let Some(len) = svg[body..].find("</style>") else {
        return svg;
    };
    let mut lines: Vec<&str> = svg[body..body + len].lines().collect();
    lines.sort_unstable();
    let mut out = String::with_capacity(svg.len());
    out.push_str(&svg[..body]);
    for l in lines {
        out.push_str(l);
        out.push('\n');
    }
    out.push_str(&svg[body + len..]);
    out
}

/// Small nodes for the primitives of a fused expression (operands `#k` are collected into
/// `args` as the nodes that read them); the node of the expression's root, if any.
fn expr_nodes(
    vg: &mut VisualGraph,
    e: &FExpr,
    members: &mut Vec<layout::adt::dag::NodeHandle>,
    args: &mut Vec<(usize, layout::adt::dag::NodeHandle)>,
) -> Option<layout::adt::dag::NodeHandle> {
    let FExpr::Op(p, xs, ..) = e else {
        return None;
    };
    let text = p.name().to_string();
    let h = vg.add_node(element(&text, ShapeKind::new_box(&text), "white", 11));
    members.push(h);
    for x in xs {
        match x {
            FExpr::Arg(k) => args.push((*k, h)),
            FExpr::Lit(..) => {}
            op => {
                if let Some(c) = expr_nodes(vg, op, members, args) {
                    vg.add_edge(Arrow::simple(""), c, h);
                }
            }
        }
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    #[test]
    fn style_lines_are_sorted_and_the_rest_kept() {
        let a = "<svg><defs/><style>\n.a13 { x }\n.a11 { y }\n</style>\n<g/></svg>";
        let b = "<svg><defs/><style>\n.a11 { y }\n.a13 { x }\n</style>\n<g/></svg>";
        assert_eq!(super::sorted_style(a.into()), b);
        assert_eq!(super::sorted_style(b.into()), b);
        assert_eq!(super::sorted_style("<svg/>".into()), "<svg/>");
    }
}
