//! `visualize: true` (`viz_options`) and `template_path` (issue 16, items 5 and 6): the SVG of
//! the optimized graph is well-formed XML holding the expected node labels (ops, shapes,
//! dtypes, bytes, fused groups, `if` branches), written to `output_path`; a model compiled
//! through the shipped template `examples/templates/doc_table.jinja` keeps its behaviour and
//! gains the template's items.

use mithril::ndarray::Array2;
use mithril::prelude::*;

mithril! {
    pub model Viz {
        input x: f32[B, 16];
        input flag: bool[];
        let h = relu(Linear(8)(x));
        let y = h * 2.0;
        if flag {
            let y = sigmoid(y) + 1.0;
        }
        output out = y;
    }
    pub compile VizSvg = Viz {
        visualize: true,
        viz_options: { format: svg, show_memory: true, output_path: "target/mithril-tests/viz.svg" },
    };
    pub compile VizBare = Viz {
        visualize: true,
        viz_options: { show_shapes: false, show_types: false, show_memory: false },
    };
    pub compile VizStatic = Viz { visualize: true, shapes: { x: [4, 16] } };

    pub model Tmpl {
        input x: f32[B, 4];
        let h = tanh(Linear(3)(x));
        output y = h + 1.0;
    }
    pub compile Templated = Tmpl { template_path: "examples/templates/doc_table.jinja" };
}

/// The text of every `<text>` element (their `<tspan>` lines joined by newlines), after
/// checking that the document is well-formed XML with an `<svg>` root (a small checker: tags
/// balance, attributes are quoted, entities are the five XML ones).
fn svg_texts(svg: &str) -> Vec<String> {
    let body = svg
        .strip_prefix(r#"<?xml version="1.0" encoding="UTF-8" standalone="no"?>"#)
        .expect("XML declaration");
    let mut stack: Vec<String> = Vec::new();
    let mut texts = Vec::new();
    let mut cur: Option<String> = None;
    let mut i = 0;
    let b = body.as_bytes();
    let mut root_seen = false;
    while i < b.len() {
        if b[i] == b'<' {
            let end = body[i..].find('>').expect("unclosed tag") + i;
            let tag = &body[i + 1..end];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().expect("close without open");
                assert_eq!(open, name.trim(), "mismatched tags");
                if open == "text" {
                    texts.push(cur.take().unwrap());
                }
            } else {
                let self_closing = tag.ends_with('/');
                let name: String = tag
                    .trim_end_matches('/')
                    .split_whitespace()
                    .next()
                    .unwrap()
                    .to_string();
                // attributes: name="value" pairs
                let attrs = tag.trim_end_matches('/')[name.len()..].trim();
                assert_eq!(
                    attrs.matches('"').count() % 2,
                    0,
                    "unquoted attribute in <{tag}>"
                );
                if stack.is_empty() {
                    assert_eq!(name, "svg", "root element");
                    assert!(!root_seen, "two roots");
                    root_seen = true;
                }
                if !self_closing {
                    if name == "text" {
                        cur = Some(String::new());
                    } else if name == "tspan"
                        && let Some(c) = cur.as_mut()
                        && !c.is_empty()
                    {
                        c.push('\n');
                    }
                    stack.push(name);
                }
            }
            i = end + 1;
        } else {
            let next = body[i..].find('<').map_or(b.len(), |k| k + i);
            let raw = &body[i..next];
            for (k, _) in raw.match_indices('&') {
                let ent = &raw[k..raw[k..].find(';').expect("bare &") + k + 1];
                assert!(
                    ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&ent),
                    "entity {ent}"
                );
            }
            if let Some(c) = cur.as_mut() {
                c.push_str(
                    &raw.replace("&lt;", "<")
                        .replace("&gt;", ">")
                        .replace("&quot;", "\"")
                        .replace("&apos;", "'")
                        .replace("&amp;", "&"),
                );
            }
            i = next;
        }
    }
    assert!(stack.is_empty(), "unclosed: {stack:?}");
    assert!(root_seen);
    texts
}

#[test]
fn visualize_draws_the_optimized_graph_as_svg() {
    let texts = svg_texts(VizSvg::GRAPH_SVG);
    let all = texts.join("\n---\n");
    let has = |s: &str| texts.iter().any(|t| t.contains(s));
    // the title, the inputs with their types, the params
    assert!(has("VizSvg: optimized graph"), "{all}");
    assert!(has("f32[B, 16]"), "{all}");
    assert!(has("bool[]"), "{all}");
    assert!(has("linear_0.weight"), "{all}");
    // the matmul and its fused epilogue (bias + relu), drawn as a fused group
    assert!(has("fused group"), "{all}");
    assert!(has("matmul"), "{all}");
    // the `if` branch as a box
    assert!(has("runs if %"), "{all}");
    assert!(has("sigmoid"), "{all}");
    // planned bytes of a computed [B, 8] f32 value, as a formula over B
    assert!(has("32·B B"), "{all}");
    assert!(has("output out"), "{all}");
    // written to output_path (relative to the crate), the same text
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/target/mithril-tests/viz.svg");
    assert_eq!(std::fs::read_to_string(path).unwrap(), VizSvg::GRAPH_SVG);

    // without shapes, types and memory: the ops only
    let bare = svg_texts(VizBare::GRAPH_SVG);
    assert!(bare.iter().any(|t| t.contains("sigmoid")));
    assert!(!bare.iter().any(|t| t.contains("f32[") || t.contains(" B")));

    // static shapes: bytes as numbers (a [4, 8] f32 value is 128 B)
    let st = svg_texts(VizStatic::GRAPH_SVG);
    assert!(
        st.iter().any(|t| t.contains("128 B")),
        "{}",
        st.join("\n---\n")
    );
}

#[test]
fn the_doc_table_template_keeps_the_model_and_adds_its_items() {
    // the template's constant: one row per op, with its type
    let t = Templated::DOC_TABLE;
    assert!(t.starts_with("| # | name | op | type |"), "{t}");
    assert!(t.contains("matmul"), "{t}");
    assert!(t.contains("`f32[B, 3]`"), "{t}");
    assert!(!t.contains("| param |"), "{t}");
    // the model still computes `tanh(x W^T + b) + 1`
    let m = Templated::new().unwrap();
    let p = m.randomize_params(3);
    let x = Array2::from_shape_fn((2, 4), |(i, j)| i as f32 * 0.5 - j as f32 * 0.25);
    let y = m.evaluate(&p, TemplatedInputs { x: x.view() }).unwrap().y;
    for i in 0..2 {
        for o in 0..3 {
            let z: f32 = (0..4)
                .map(|k| x[[i, k]] * p.linear_0.weight[[o, k]])
                .sum::<f32>()
                + p.linear_0.bias[o];
            assert!((y[[i, o]] - (z.tanh() + 1.0)).abs() < 1e-5);
        }
    }
}
