//! Introspection: the summary table, the graph as text / DOT / JSON, graph dumps and the
//! generated source written by `dump_graph:` and `file_path:`.

use mithril::prelude::*;
use std::collections::BTreeMap;

mithril! {
    /// The introspected model.
    pub model Intro {
        input x: f32[B, 784];
        let fc1 = Linear(256);
        let h = relu(fc1(x));
        output logits = Linear(10)(h);
        output probs = softmax(logits, axis = -1);
    }

    pub compile IntroDot = Intro {
        dump_graph: { path: "target/mithril-test/x.dot", format: dot },
    };
    pub compile IntroJson = Intro {
        dump_graph: { path: "target/mithril-test/x.json", format: json },
    };
    pub compile IntroText = Intro {
        dump_graph: { path: "target/mithril-test/x.txt", format: text },
        file_path: "target/mithril-test/gen.rs",
    };
    pub compile IntroUnfused = Intro {
        optimizations: { operator_fusion: false },
    };
    pub compile IntroStatic = Intro {
        shapes: { x: [32, 784] },
        static_shapes: true,
    };
}

// ------------------------------------------------------------------ summary

#[test]
fn summary_lists_every_op_with_shapes_and_dtypes() {
    let s = Intro::SUMMARY;
    assert!(s.starts_with("Model `Intro`:"), "{s}");
    // header line: op count, params and their element count (784*256+256 + 256*10+10)
    let n_elems = 784 * 256 + 256 + 256 * 10 + 10;
    assert!(
        s.lines()
            .next()
            .unwrap()
            .contains(&format!("4 params ({n_elems} elements)")),
        "{s}"
    );
    for needle in [
        "f32[B, 784]",
        "f32[256, 784]",
        "f32[256]",
        "f32[B, 256]",
        "f32[10, 256]",
        "f32[B, 10]",
        "fc1.weight",
        "fc1.bias",
        "linear_0.weight",
        "linear_0.bias",
        "matmul(b^T)",
        "relu",
        "softmax",
        "input",
        "param",
        "outputs: logits = %",
        "probs = %",
        "passes: ",
        "operator_fusion",
    ] {
        assert!(s.contains(needle), "summary lacks `{needle}`:\n{s}");
    }
    // one row per node: every row of the table starts with its `%id`
    let rows: Vec<&str> = s.lines().filter(|l| l.starts_with('%')).collect();
    assert_eq!(
        rows.len(),
        Intro::GRAPH_TEXT
            .lines()
            .filter(|l| l.starts_with('%'))
            .count()
    );
    // the row of the first matmul: the op, its inputs and its type
    let mm = rows.iter().find(|r| r.contains("matmul")).unwrap();
    assert!(mm.contains("f32[B, 256]"), "{mm}");
    // `summary()` is the same text
    let m = Intro::new().unwrap();
    assert_eq!(m.summary(), Intro::SUMMARY);
}

#[test]
fn static_shapes_show_in_the_summary() {
    let s = IntroStatic::SUMMARY;
    assert!(s.contains("f32[32, 784]"), "{s}");
    assert!(s.contains("f32[32, 256]"), "{s}");
    assert!(s.contains("f32[32, 10]"), "{s}");
    assert!(!s.contains("[B,"), "{s}");
    assert!(s.starts_with("Model `IntroStatic`:"), "{s}");
}

#[test]
fn fusion_shows_in_the_summary_and_op_count() {
    // fused: the bias add and the relu are the epilogue of the matmul (one pass over its tiles)
    assert!(
        Intro::SUMMARY.contains("matmul(b^T)+epilogue[relu(add(#0, #1))]"),
        "{}",
        Intro::SUMMARY
    );
    // unfused: separate `add` and `relu` rows, more ops
    let u = IntroUnfused::SUMMARY;
    assert!(!u.contains("fused["), "{u}");
    assert!(
        u.lines()
            .any(|l| l.split('|').nth(2).is_some_and(|op| op.trim() == "relu")),
        "{u}"
    );
    assert!(
        u.lines()
            .any(|l| l.split('|').nth(2).is_some_and(|op| op.trim() == "add")),
        "{u}"
    );
    const { assert!(IntroUnfused::NUM_OPS > Intro::NUM_OPS) };
    // NUM_OPS counts the op rows (everything but inputs, params and constants)
    let ops = Intro::GRAPH_TEXT
        .lines()
        .filter(|l| l.starts_with('%'))
        .filter(|l| {
            let op = l.split(" = ").nth(1).unwrap_or("");
            !(op.starts_with("input(") || op.starts_with("param(") || op.starts_with("const "))
        })
        .count();
    assert_eq!(ops, Intro::NUM_OPS);
}

#[test]
fn symbols_are_listed() {
    assert_eq!(Intro::SYMBOLS, &["B"]);
}

// ------------------------------------------------------------------ text

#[test]
fn graph_text_has_one_line_per_node_and_the_outputs() {
    let t = Intro::GRAPH_TEXT;
    let first = t.lines().next().unwrap();
    assert_eq!(first, "%0 = input() : f32[B, 784]  # x");
    assert!(t.contains("param() : f32[256, 784]  # fc1.weight"), "{t}");
    assert!(t.contains("param() : f32[10]  # linear_0.bias"), "{t}");
    assert!(t.lines().any(|l| l.starts_with("output logits = %")), "{t}");
    assert!(t.lines().any(|l| l.starts_with("output probs = %")), "{t}");
    // every argument refers to an earlier node (topological order)
    for (i, l) in t.lines().filter(|l| l.starts_with('%')).enumerate() {
        let id: usize = l[1..l.find(' ').unwrap()].parse().unwrap();
        assert_eq!(id, i);
        // `%4 = fused[relu(add(#0, #1))](%3, %2) : f32[B, 256]  # h`: the args are the last
        // parenthesised list before the type
        let head = &l[..l.find(" : ").unwrap()];
        let args = &head[head.rfind('(').unwrap() + 1..head.len() - 1];
        for a in args.split(", ").filter(|a| !a.is_empty()) {
            let n: usize = a.strip_prefix('%').unwrap().parse().unwrap();
            assert!(n < id, "{l}");
        }
    }
}

// ------------------------------------------------------------------ DOT

#[test]
fn graph_dot_is_a_digraph_with_every_node_and_edge() {
    let d = Intro::GRAPH_DOT;
    assert!(d.starts_with("digraph Intro {\n"), "{d}");
    assert!(d.trim_end().ends_with('}'), "{d}");
    assert!(
        d.contains("n0 [shape=invhouse, label=\"x\\ninput\\nf32[B, 784]\"];"),
        "{d}"
    );
    assert!(
        d.contains("shape=cylinder, label=\"fc1.weight\\nparam\\nf32[256, 784]\""),
        "{d}"
    );
    assert!(d.contains("[shape=house, label=\"logits\"]"), "{d}");
    assert!(d.contains("[shape=house, label=\"probs\"]"), "{d}");
    // one node statement per graph node, one edge per argument
    let n_nodes = Intro::GRAPH_TEXT
        .lines()
        .filter(|l| l.starts_with('%'))
        .count();
    for i in 0..n_nodes {
        assert!(d.contains(&format!("  n{i} [")), "node n{i} missing:\n{d}");
    }
    let n_args: usize = json_nodes(Intro::GRAPH_JSON)
        .iter()
        .map(|n| n["inputs"].as_array().len())
        .sum();
    let n_edges = d.lines().filter(|l| l.contains(" -> n")).count();
    assert_eq!(n_edges, n_args);
    // braces and quotes balance
    assert_eq!(d.matches('{').count(), d.matches('}').count());
    assert_eq!(d.replace("\\\"", "").matches('"').count() % 2, 0);
}

// ------------------------------------------------------------------ JSON

/// A minimal JSON value and parser (enough to check the graph dump is valid JSON).
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(BTreeMap<String, Json>),
}

impl Json {
    fn as_array(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("not an array: {other:?}"),
        }
    }
    fn as_str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("not a string: {other:?}"),
        }
    }
    fn as_num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            other => panic!("not a number: {other:?}"),
        }
    }
}

impl std::ops::Index<&str> for Json {
    type Output = Json;
    fn index(&self, k: &str) -> &Json {
        match self {
            Json::Obj(m) => m.get(k).unwrap_or_else(|| panic!("no key `{k}` in {m:?}")),
            other => panic!("not an object: {other:?}"),
        }
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn parse(text: &str) -> Result<Json, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            i: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.i != p.s.len() {
            return Err(format!("trailing characters at {}", p.i));
        }
        Ok(v)
    }
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\n' | b'\r' | b'\t') {
            self.i += 1;
        }
    }
    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at {}", c as char, self.i))
        }
    }
    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut m = BTreeMap::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(m));
                }
                loop {
                    self.ws();
                    let k = self.string()?;
                    self.eat(b':')?;
                    let v = self.value()?;
                    if m.insert(k.clone(), v).is_some() {
                        return Err(format!("duplicate key `{k}`"));
                    }
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(m));
                        }
                        _ => return Err(format!("expected `,` or `}}` at {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut a = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(a));
                }
                loop {
                    a.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(a));
                        }
                        _ => return Err(format!("expected `,` or `]` at {}", self.i)),
                    }
                }
            }
            Some(b'"') => Ok(Json::Str(self.string()?)),
            Some(b't') if self.s[self.i..].starts_with(b"true") => {
                self.i += 4;
                Ok(Json::Bool(true))
            }
            Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                self.i += 5;
                Ok(Json::Bool(false))
            }
            Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                self.i += 4;
                Ok(Json::Null)
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                let start = self.i;
                while self.i < self.s.len()
                    && matches!(
                        self.s[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                let t = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                t.parse()
                    .map(Json::Num)
                    .map_err(|e| format!("bad number `{t}`: {e}"))
            }
            _ => Err(format!("unexpected character at {}", self.i)),
        }
    }
    fn string(&mut self) -> Result<String, String> {
        if self.s.get(self.i) != Some(&b'"') {
            return Err(format!("expected a string at {}", self.i));
        }
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.s.get(self.i) {
                None => return Err("unterminated string".into()),
                Some(b'"') => {
                    self.i += 1;
                    return String::from_utf8(out).map_err(|e| e.to_string());
                }
                Some(b'\\') => {
                    let c = *self.s.get(self.i + 1).ok_or("bad escape")?;
                    out.push(match c {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'n' => b'\n',
                        b't' => b'\t',
                        b'r' => b'\r',
                        _ => return Err(format!("unsupported escape `\\{}`", c as char)),
                    });
                    self.i += 2;
                }
                Some(c) if *c < 0x20 => return Err("control character in a string".into()),
                Some(c) => {
                    out.push(*c);
                    self.i += 1;
                }
            }
        }
    }
}

fn json_nodes(text: &str) -> Vec<Json> {
    let v = Parser::parse(text).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{text}"));
    v["nodes"].as_array().to_vec()
}

#[test]
fn json_parser_self_check() {
    assert_eq!(
        Parser::parse(r#"{"a": [1, -2.5e1, "x\"y"], "b": {}, "c": true, "d": null}"#).unwrap(),
        Json::Obj(BTreeMap::from([
            (
                "a".to_string(),
                Json::Arr(vec![
                    Json::Num(1.0),
                    Json::Num(-25.0),
                    Json::Str("x\"y".into())
                ])
            ),
            ("b".to_string(), Json::Obj(BTreeMap::new())),
            ("c".to_string(), Json::Bool(true)),
            ("d".to_string(), Json::Null),
        ]))
    );
    for bad in [r#"{"a": 1,}"#, r#"[1 2]"#, r#"{"a" 1}"#, r#""open"#, "{} x"] {
        assert!(Parser::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn graph_json_is_valid_and_matches_the_graph() {
    let v = Parser::parse(Intro::GRAPH_JSON).unwrap();
    assert_eq!(v["model"].as_str(), "Intro");
    let nodes = v["nodes"].as_array();
    let text_rows: Vec<&str> = Intro::GRAPH_TEXT
        .lines()
        .filter(|l| l.starts_with('%'))
        .collect();
    assert_eq!(nodes.len(), text_rows.len());
    for (i, n) in nodes.iter().enumerate() {
        assert_eq!(n["id"].as_num(), i as f64);
        for a in n["inputs"].as_array() {
            assert!((a.as_num() as usize) < i, "inputs come first: {n:?}");
        }
        // the same op and type as the text dump
        let row = text_rows[i];
        assert!(
            row.contains(&format!(" = {}(", n["op"].as_str())),
            "{row} vs {n:?}"
        );
        assert!(
            row.contains(&format!(" : {}  # ", n["type"].as_str())),
            "{row} vs {n:?}"
        );
        assert!(
            row.ends_with(&format!("# {}", n["name"].as_str())),
            "{row} vs {n:?}"
        );
        let _ = n["scope"].as_str();
    }
    assert_eq!(nodes[0]["op"].as_str(), "input");
    assert_eq!(nodes[0]["name"].as_str(), "x");
    assert_eq!(nodes[0]["type"].as_str(), "f32[B, 784]");
    let w = nodes
        .iter()
        .find(|n| n["name"].as_str() == "fc1.weight")
        .unwrap();
    assert_eq!(w["op"].as_str(), "param");
    assert_eq!(w["type"].as_str(), "f32[256, 784]");
    assert_eq!(w["scope"].as_str(), "fc1");
    // outputs name nodes
    let outs = &v["outputs"];
    let l = outs["logits"].as_num() as usize;
    let p = outs["probs"].as_num() as usize;
    assert_eq!(nodes[l]["type"].as_str(), "f32[B, 10]");
    assert_eq!(nodes[p]["op"].as_str(), "softmax");
    assert_eq!(nodes[p]["inputs"].as_array(), &[Json::Num(l as f64)]);
}

// ------------------------------------------------------------------ files

fn read(rel: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn dump_graph_writes_dot_relative_to_the_manifest_dir() {
    assert_eq!(read("target/mithril-test/x.dot"), IntroDot::GRAPH_DOT);
    assert!(IntroDot::GRAPH_DOT.starts_with("digraph IntroDot {"));
}

#[test]
fn dump_graph_writes_json() {
    let j = read("target/mithril-test/x.json");
    assert_eq!(j, IntroJson::GRAPH_JSON);
    let v = Parser::parse(&j).unwrap();
    assert_eq!(v["model"].as_str(), "IntroJson");
}

#[test]
fn dump_graph_writes_text() {
    assert_eq!(read("target/mithril-test/x.txt"), IntroText::GRAPH_TEXT);
    // the same graph as the default physical model
    assert_eq!(IntroText::GRAPH_TEXT, Intro::GRAPH_TEXT);
}

#[test]
fn file_path_writes_the_generated_rust() {
    let src = read("target/mithril-test/gen.rs");
    assert!(
        src.starts_with("// @generated by mithril!"),
        "{}",
        &src[..200.min(src.len())]
    );
    for needle in [
        "pub struct IntroText",
        "pub struct IntroTextInputs<'a>",
        "pub struct IntroTextOutputs",
        "pub struct IntroTextParams",
        "pub fn new()",
        "pub fn randomize_params(",
        "fn evaluate",
        "pub const SUMMARY",
        "pub const GRAPH_DOT",
        "impl ::mithril::rt::ParamTree for IntroTextParams",
        // the dotted names: the init table's rows and the struct visits' keys
        "fc1.weight ",
        ".__visit(p, \"fc1\", f)",
    ] {
        assert!(src.contains(needle), "generated source lacks `{needle}`");
    }
    // pretty-printed: many lines, indented, not one token stream on a single line
    assert!(src.lines().count() > 50);
    assert!(src.lines().any(|l| l.starts_with("    pub fn ")));
}

#[test]
fn dumped_models_evaluate_like_the_default_one() {
    let x = ndarray::Array2::from_shape_fn((3, 784), |(i, j)| ((i * 784 + j) as f32 * 0.01).sin());
    let m = Intro::new().unwrap();
    let p = m.randomize_params(9);
    let a = m.evaluate(&p, IntroInputs { x: x.view() }).unwrap();
    let mt = IntroText::new().unwrap();
    let pt = mt.randomize_params(9);
    // the same seed gives the same params under the same dotted names
    assert_eq!(pt.fc1.weight, p.fc1.weight);
    let b = mt.evaluate(&pt, IntroTextInputs { x: x.view() }).unwrap();
    assert_eq!(a.logits, b.logits);
    let mu = IntroUnfused::new().unwrap();
    let pu = mu.randomize_params(9);
    let c = mu
        .evaluate(&pu, IntroUnfusedInputs { x: x.view() })
        .unwrap();
    for (u, v) in a.probs.iter().zip(c.probs.iter()) {
        assert!((u - v).abs() < 1e-6);
    }
    // probabilities sum to one per row
    for r in a.probs.rows() {
        assert!((r.sum() - 1.0).abs() < 1e-5);
    }
}

mithril! {
    /// Three identical layers and a different head: the layers share one params struct.
    model Stack3 {
        input x: f32[B, 4];
        let h = x;
        for i in 0..3 {
            let h = tanh(Linear(4)(h));
        }
        output y = Linear(2)(h);
    }
}

#[test]
fn identical_instances_share_one_struct_and_keep_their_names() {
    let m = Stack3::new().unwrap();
    let p = m.randomize_params(5);
    // the per-instance names are still types: a struct literal through an alias builds one
    let l1: Stack3ParamsLinear1 = Stack3ParamsLinear1 {
        weight: p.linear_1.weight.clone(),
        bias: p.linear_1.bias.clone(),
    };
    // the same type as the first instance's struct
    let same: Stack3ParamsLinear0 = l1;
    assert_eq!(same.weight, p.linear_1.weight);
    // the visit order and dotted names are the declaration order
    assert_eq!(
        p.names(),
        [
            "linear_0.weight",
            "linear_0.bias",
            "linear_1.weight",
            "linear_1.bias",
            "linear_2.weight",
            "linear_2.bias",
            "linear_3.weight",
            "linear_3.bias"
        ]
    );
    // the init table gives each param its own stream (as `init::param` by name)
    let w0: ndarray::Array2<f32> = mithril::rt::init::param(
        5,
        "linear_2.weight",
        &[4, 4],
        mithril::rt::init::Spec::FanIn(4),
    );
    assert_eq!(p.linear_2.weight, w0);
    assert_ne!(p.linear_0.weight, p.linear_1.weight);
    // gradients have the params' type, field for field
    let x = ndarray::Array2::<f32>::ones((2, 4));
    let y = m.evaluate(&p, Stack3Inputs { x: x.view() }).unwrap();
    let (_, g) = m
        .evaluate_gradients(&p, Stack3Inputs { x: x.view() }, y.clone())
        .unwrap();
    let g: Stack3Params = g;
    assert_eq!(g.names(), p.names());
    assert_eq!(g.linear_3.weight.shape(), &[2, 4]);
    // seeded with y: d sum(y * seed) / d bias of the head = the seed summed over the batch
    let want = y.y.sum_axis(ndarray::Axis(0));
    for (a, b) in g.linear_3.bias.iter().zip(want.iter()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
    }
}

// ------------------------------------------------------------------ packed texts

mithril! {
    /// Deep enough for every long text of its generated code (the four introspection
    /// constants, both plans, the shape checks, the init table) to be packed.
    pub model Packed40 {
        input x: f64[B, 4];
        let h = x;
        for i in 0..40 {
            let h = tanh(Linear(4)(h));
        }
        output y = h;
    }

    pub compile Packed40Json = Packed40 {
        dump_graph: { path: "target/mithril-test/packed40.json", format: json },
    };
    pub compile Packed40Dot = Packed40 {
        dump_graph: { path: "target/mithril-test/packed40.dot", format: dot },
    };
    pub compile Packed40Text = Packed40 {
        dump_graph: { path: "target/mithril-test/packed40.txt", format: text },
        file_path: "target/mithril-test/packed40.rs",
    };
}

// the four constants are still constants: usable in const items and as `&'static str`
const PACKED_JSON: &str = Packed40Json::GRAPH_JSON;
const PACKED_SUMMARY_LEN: usize = Packed40::SUMMARY.len();

#[test]
fn long_texts_are_packed_and_stay_static_str_consts() {
    let texts: [&'static str; 4] = [
        Packed40::SUMMARY,
        Packed40::GRAPH_TEXT,
        Packed40::GRAPH_DOT,
        Packed40::GRAPH_JSON,
    ];
    for t in texts {
        assert!(t.len() >= 2048, "{} bytes: too short to be packed", t.len());
    }
    assert_eq!(PACKED_SUMMARY_LEN, Packed40::SUMMARY.len());
    // the unpacked constants are the texts the macro wrote to the dumps, byte for byte
    assert_eq!(read("target/mithril-test/packed40.json"), PACKED_JSON);
    assert_eq!(
        read("target/mithril-test/packed40.dot"),
        Packed40Dot::GRAPH_DOT
    );
    assert_eq!(
        read("target/mithril-test/packed40.txt"),
        Packed40Text::GRAPH_TEXT
    );
    assert_eq!(Packed40Text::GRAPH_TEXT, Packed40::GRAPH_TEXT);
    let v = Parser::parse(PACKED_JSON).unwrap();
    assert_eq!(v["model"].as_str(), "Packed40Json");
    // the summary: a row per param, the last layer's too
    for i in [0, 17, 39] {
        for p in ["weight", "bias"] {
            let name = format!("linear_{i}.{p}");
            assert!(
                Packed40::SUMMARY.contains(&name),
                "no `{name}` in the summary"
            );
        }
    }
    // in the generated source the texts are packed: not one summary row is there as it is
    let src = read("target/mithril-test/packed40.rs");
    assert!(
        src.contains("::mithril::rt::pack::unpack::<"),
        "constants not packed"
    );
    assert!(
        src.contains("::mithril::rt::pack::Packed::new("),
        "plans not packed"
    );
    for row in Packed40::SUMMARY.lines().filter(|l| l.contains("linear_")) {
        assert!(
            !src.contains(row),
            "a plain summary row in the source: {row}"
        );
    }
}

#[test]
fn packed_plans_and_init_table_run() {
    use crate::common::fd::{gradcheck, leaves};
    let m = Packed40::new().unwrap();
    let params = m.randomize_params(7);
    // the init table (packed) gave every layer its fan-in uniform params
    let ls = leaves(&params);
    assert_eq!(ls.len(), 80);
    for (name, shape, vals) in &ls {
        let expect: &[usize] = if name.ends_with("weight") {
            &[4, 4]
        } else {
            &[4]
        };
        assert_eq!(shape.as_slice(), expect, "{name}");
        assert!(vals.iter().all(|v| v.abs() <= 0.5), "{name}: {vals:?}");
        assert!(vals.iter().any(|&v| v != 0.0), "{name}: {vals:?}");
    }
    // `evaluate` (its plan and the shared shape checks packed) against a naive forward pass
    let x = ndarray::Array2::from_shape_fn((3, 4), |(i, j)| ((i * 4 + j) as f64 * 0.7).sin());
    let out = m.evaluate(&params, Packed40Inputs { x: x.view() }).unwrap();
    let get = |n: &str| &ls.iter().find(|l| l.0 == n).unwrap().2;
    let mut h: Vec<[f64; 4]> = (0..3).map(|i| [0, 1, 2, 3].map(|j| x[[i, j]])).collect();
    for l in 0..40 {
        let (w, b) = (
            get(&format!("linear_{l}.weight")),
            get(&format!("linear_{l}.bias")),
        );
        for row in h.iter_mut() {
            let r = *row;
            *row = [0, 1, 2, 3]
                .map(|o| (b[o] + (0..4).map(|k| w[o * 4 + k] * r[k]).sum::<f64>()).tanh());
        }
    }
    for (i, row) in h.iter().enumerate() {
        for (j, &e) in row.iter().enumerate() {
            let a = out.y[[i, j]];
            assert!(
                (a - e).abs() <= 1e-12 * (1.0 + e.abs()),
                "y[{i},{j}] = {a}, naive {e}"
            );
        }
    }
    // a wrong input shape is still reported through the packed shape checks
    let bad = ndarray::Array2::<f64>::zeros((3, 5));
    let e = m
        .evaluate(&params, Packed40Inputs { x: bad.view() })
        .unwrap_err()
        .to_string();
    assert!(e.contains('x') && e.contains('4') && e.contains('5'), "{e}");
    // `evaluate_gradients` (its own packed plan) against central differences
    let seed =
        ndarray::Array2::from_shape_fn((3, 4), |(i, j)| 0.5 + ((i + 2 * j) as f64 * 0.3).cos());
    let loss = |p: &Packed40Params| -> f64 {
        let o = m.evaluate(p, Packed40Inputs { x: x.view() }).unwrap();
        (&o.y * &seed).sum()
    };
    let (o2, grads) = m
        .evaluate_gradients(
            &params,
            Packed40Inputs { x: x.view() },
            Packed40Outputs { y: seed.clone() },
        )
        .unwrap();
    assert_eq!(o2.y, out.y);
    gradcheck("Packed40", &params, &grads, loss);
}
