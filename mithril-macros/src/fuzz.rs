//! Fuzz test of the whole compiler: the macro must never panic (or hang) on any token stream.
//!
//! A deterministic generator (a seeded xorshift PRNG, no dependency) makes
//! (a) random programs from the DSL grammar: models with hyperparameters, inputs, params,
//!     consts, lets, compile-time `if`/`for`, outputs, primitive calls with attributes, method
//!     calls, slicing, casts, submodel calls (named, positional, field picks, destructuring),
//!     library models and `compile` items with random (valid and invalid) options, plus
//!     `@mithril_resume` inputs carrying definitions as the carrier protocol does;
//! (b) mutations of those programs on the token-tree level: deleting, duplicating, swapping,
//!     replacing tokens, truncating, wrapping runs of tokens in new groups, emptying groups,
//!     inserting punctuation, extreme literals and keywords.
//!
//! Each stream goes through [`crate::expand`] inside `catch_unwind`; every panic is reported
//! with the input that caused it.

use proc_macro2::{Delimiter, Group, Ident, Literal, Punct, Spacing, Span, TokenStream, TokenTree};
use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::str::FromStr;

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, percent: u32) -> bool {
        (self.next() % 100) < percent as u64
    }
    fn pick<'a, T: ?Sized>(&mut self, xs: &[&'a T]) -> &'a T {
        xs[self.below(xs.len())]
    }
}

const DTYPES: &[&str] = &["f32", "f64", "f16", "bf16", "i32", "i64", "bool"];
const BAD_DTYPES: &[&str] = &["f8", "u8", "float", "int", "F32"];
const SYMS: &[&str] = &["B", "N", "T", "IN", "D", "H2"];
const MODEL_NAMES: &[&str] = &["Net", "Block", "Head", "Enc", "Mix", "gate"];
const UNARY: &[&str] = &[
    "relu",
    "sigmoid",
    "tanh",
    "exp",
    "log",
    "sqrt",
    "abs",
    "negate",
    "sin",
    "cos",
    "erf",
    "square",
    "sign",
    "softplus",
    "gelu",
    "logical_not",
];
const BINARY: &[&str] = &[
    "add",
    "subtract",
    "multiply",
    "divide",
    "floor_divide",
    "remainder",
    "power",
    "minimum",
    "maximum",
    "equal",
    "less",
    "greater_equal",
    "logical_and",
    "logical_xor",
    "matmul",
];
const REDUCE: &[&str] = &[
    "sum",
    "mean",
    "max",
    "min",
    "prod",
    "variance",
    "argmax",
    "argmin",
    "softmax",
    "log_softmax",
];
const BINOPS: &[&str] = &[
    "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "^", "&", "|", "<<",
];
const INTS: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "4",
    "8",
    "16",
    "-1",
    "-2",
    "-3",
    "100",
    "784",
    "65536",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "-9223372036854775807",
    "-9223372036854775808",
    "0x10",
    "1_000",
    "3u8",
    "7i64",
];
const FLOATS: &[&str] = &[
    "0.0", "1.0", "2.5", "-1.5", "1e-5", "1e308", "1e400", "-1e400", "0.5f32", "3.0f64",
];
/// Identifiers mutations draw from. No `file_path` / `dump_graph`: the fuzzer must not write
/// files.
const IDENTS: &[&str] = &[
    "model",
    "train",
    "compile",
    "input",
    "param",
    "output",
    "loss",
    "regularize",
    "on",
    "let",
    "const",
    "if",
    "else",
    "for",
    "in",
    "pub",
    "crate",
    "self",
    "Self",
    "super",
    "fn",
    "as",
    "r#type",
    "r#match",
    "r#input",
    "x",
    "y",
    "h",
    "w",
    "B",
    "N",
    "IN",
    "None",
    "true",
    "false",
    "len",
    "step_by",
    "T",
    "f32",
    "f16",
    "i64",
    "bool",
    "int",
    "float",
    "list",
    "str",
    "any",
    "dtype",
    "Linear",
    "MLP",
    "LayerNorm",
    "RMSNorm",
    "Embedding",
    "cross_entropy",
    "squared_error",
    "kl_divergence",
    "Net",
    "Block",
    "Head",
    "relu",
    "matmul",
    "reshape",
    "transpose",
    "concat",
    "slice",
    "gather",
    "take_along",
    "sum",
    "softmax",
    "where_",
    "cast",
    "clamp",
    "flatten",
    "axis",
    "keepdim",
    "axes",
    "shape",
    "zeros",
    "ones",
    "full",
    "normal",
    "uniform",
    "fan_in",
    "backend",
    "cpu",
    "cuda",
    "shapes",
    "static_shapes",
    "types",
    "optimizations",
    "constant_folding",
    "operator_fusion",
    "dead_code_elimination",
    "common_subexpression",
    "mithril_resume",
    "deps",
];
const PUNCTS: &[&str] = &[
    ";", ",", ":", "=", ".", "..", "...", "..=", "+", "-", "*", "/", "%", "!", "&&", "||", "^",
    "<", ">", "==", "#", "@", "?", "::", "->", "=>", "_", "'",
];

/// Random programs from the DSL grammar.
struct ProgGen {
    rng: Rng,
    /// Deliberate mistakes (unknown names, bad dims, wrong dtypes) are made only when set.
    noisy: bool,
}

#[derive(Clone)]
struct ModelSig {
    name: String,
    hypers: Vec<(String, String)>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

/// The pieces of programs: numbers, dims, shapes, dtypes, literals, expressions.
impl ProgGen {
    fn int(&mut self) -> String {
        if self.rng.chance(85) {
            ["1", "2", "3", "4", "8", "16"][self.rng.below(6)].to_string()
        } else {
            self.rng.pick(INTS).to_string()
        }
    }

    fn dim(&mut self, hypers: &[(String, String)]) -> String {
        let n = if self.noisy { 60 } else { 50 };
        match self.rng.below(n) {
            0..=24 => self.rng.pick(SYMS).to_string(),
            25..=49 => ["4", "8", "16", "2", "1"][self.rng.below(5)].to_string(),
            50..=51 => "_".into(),
            52 => self.rng.pick(INTS).to_string(),
            53 => "2.5".into(),
            54 => "hidden".into(),
            55..=56 => {
                let ints: Vec<&(String, String)> = hypers.iter().filter(|h| h.1 == "int").collect();
                match ints.first() {
                    Some(h) => format!("{} * 2", h.0),
                    None => "dim".into(),
                }
            }
            57 => "(1 + 1)".into(),
            58 => "-3".into(),
            _ => "B".into(),
        }
    }

    fn shape(&mut self, hypers: &[(String, String)]) -> String {
        let rank = self.rng.below(4);
        let mut dims: Vec<String> = (0..rank).map(|_| self.dim(hypers)).collect();
        if self.rng.chance(15) {
            let at = if self.rng.chance(80) {
                0
            } else {
                self.rng.below(dims.len() + 1)
            };
            dims.insert(at, "...".into());
        }
        format!("[{}]", dims.join(", "))
    }

    fn dtype(&mut self) -> String {
        if !self.noisy || self.rng.chance(95) {
            self.rng.pick(DTYPES).to_string()
        } else {
            self.rng.pick(BAD_DTYPES).to_string()
        }
    }

    fn lit(&mut self) -> String {
        match self.rng.below(40) {
            0..=19 => self.rng.pick(FLOATS).to_string(),
            20..=35 => self.int(),
            36..=38 => ["true", "false"][self.rng.below(2)].to_string(),
            _ => "\"s\"".to_string(),
        }
    }

    fn attr_val(&mut self) -> String {
        match self.rng.below(12) {
            0..=3 => self.int(),
            4 => "-1".into(),
            5 => format!("[{}, {}]", self.int(), self.int()),
            6 => "[]".into(),
            7 => "true".into(),
            8 => "None".into(),
            9 => self.rng.pick(DTYPES).to_string(),
            10 => "\"tanh\"".into(),
            _ => self.rng.pick(FLOATS).to_string(),
        }
    }

    fn var(&mut self, vars: &[String]) -> String {
        if vars.is_empty() || self.noisy && self.rng.chance(3) {
            ["undefined", "xx", "B", "hidden"][self.rng.below(4)].to_string()
        } else {
            vars[self.rng.below(vars.len())].clone()
        }
    }

    fn expr(&mut self, vars: &[String], models: &[ModelSig], depth: u32) -> String {
        if depth == 0 {
            return if self.rng.chance(80) {
                self.var(vars)
            } else {
                self.lit()
            };
        }
        let d = depth - 1;
        match self.rng.below(26) {
            0..=2 => self.var(vars),
            3 => self.lit(),
            4..=6 => format!(
                "({} {} {})",
                self.expr(vars, models, d),
                self.rng.pick(BINOPS),
                self.expr(vars, models, d)
            ),
            7 => format!("-{}", self.expr(vars, models, d)),
            8 => format!("!{}", self.expr(vars, models, d)),
            9 => format!("({})", self.expr(vars, models, d)),
            10..=11 => format!("{}({})", self.rng.pick(UNARY), self.expr(vars, models, d)),
            12..=13 => format!(
                "{}({}, {})",
                self.rng.pick(BINARY),
                self.expr(vars, models, d),
                self.expr(vars, models, d)
            ),
            14 => self.reduce_expr(vars, models, d),
            15 => format!("{}.T", self.expr(vars, models, d)),
            16 => self.shape_expr(vars, models, d),
            17 => self.index_expr(vars, models, d),
            18 => format!("({} as {})", self.expr(vars, models, d), self.dtype()),
            19..=21 => self.library_call(vars, models, d),
            22..=24 if !models.is_empty() => self.model_call(vars, models, d),
            _ => format!("{}.{}()", self.expr(vars, models, d), self.rng.pick(UNARY)),
        }
    }

    /// A reduction, as a method or a function, with random attributes.
    fn reduce_expr(&mut self, vars: &[String], models: &[ModelSig], d: u32) -> String {
        let f = self.rng.pick(REDUCE);
        let mut args = Vec::new();
        if self.rng.chance(70) {
            args.push(format!("axis = {}", self.attr_val()));
        }
        if self.rng.chance(40) {
            args.push(format!(
                "keepdim = {}",
                ["true", "false", "1"][self.rng.below(3)]
            ));
        }
        if self.rng.chance(10) {
            args.push(format!(
                "{} = 1",
                ["correction", "axes", "bogus"][self.rng.below(3)]
            ));
        }
        if self.rng.chance(50) {
            format!("{}.{f}({})", self.expr(vars, models, d), args.join(", "))
        } else {
            args.insert(0, self.expr(vars, models, d));
            format!("{f}({})", args.join(", "))
        }
    }

    /// A shape or index primitive (`reshape`, `transpose`, `concat`, `gather`, ...).
    fn shape_expr(&mut self, vars: &[String], models: &[ModelSig], d: u32) -> String {
        let x = self.expr(vars, models, d);
        match self.rng.below(9) {
            0 => format!("reshape({x}, [{}, -1])", self.dim(&[])),
            1 => format!(
                "reshape({x}, shape = [{}, {}])",
                self.dim(&[]),
                self.dim(&[])
            ),
            2 => format!("transpose({x}, axes = {})", self.attr_val()),
            3 => format!(
                "concat({x}, {}, axis = {})",
                self.expr(vars, models, d),
                self.attr_val()
            ),
            4 => format!(
                "gather({x}, {}, axis = {})",
                self.expr(vars, models, d),
                self.attr_val()
            ),
            5 => format!(
                "where_({x}, {}, {})",
                self.expr(vars, models, d),
                self.expr(vars, models, d)
            ),
            6 => format!(
                "flatten({x}, start_dim = {}, end_dim = {})",
                self.attr_val(),
                self.attr_val()
            ),
            7 => format!(
                "clamp({x}, min = {}, max = {})",
                self.attr_val(),
                self.attr_val()
            ),
            _ => format!("take_along({x}, {})", self.expr(vars, models, d)),
        }
    }

    /// Indexing and slicing forms.
    fn index_expr(&mut self, vars: &[String], models: &[ModelSig], d: u32) -> String {
        let x = self.expr(vars, models, d);
        match self.rng.below(7) {
            0 => format!("{x}[{}]", self.int()),
            1 => format!("{x}[{}..{}]", self.int(), self.int()),
            2 => format!("{x}[(.., None)]"),
            3 => format!("{x}[(..=-{}, ..)]", self.int()),
            4 => format!(
                "{x}.slice(.., {}, ({}..{}).step_by({}), None)",
                self.int(),
                self.int(),
                self.int(),
                ["2", "-1", "0", "9223372036854775807"][self.rng.below(4)]
            ),
            5 => format!("slice({x}, ..{})", self.int()),
            _ => format!("{x}[(0, 1)]"),
        }
    }

    /// A call of a library model.
    fn library_call(&mut self, vars: &[String], models: &[ModelSig], d: u32) -> String {
        let x = self.expr(vars, models, d);
        match self.rng.below(10) {
            0 => format!("Linear({})({x})", self.int()),
            1 => format!("Linear(dimension = {}, use_bias = false)({x})", self.int()),
            2 => format!("MLP([{}, {}], [relu])({x})", self.int(), self.int()),
            3 => format!("LayerNorm()({x})"),
            4 => format!("RMSNorm(eps = 1e-3)({x})"),
            5 => format!("Embedding({}, {})({x})", self.int(), self.int()),
            6 => format!("cross_entropy({x}, {})", self.expr(vars, models, d)),
            7 => format!("squared_error({x}, target = {})", self.var(vars)),
            8 if self.noisy => format!("Linear(dim = 3)({x})"),
            8 => format!("Linear(3)({x})"),
            _ => format!("kl_divergence({x}, {}, log_target = true)", self.var(vars)),
        }
    }

    /// A call of one of the program's own models (`models` is not empty): hyperparameters,
    /// positional or named terminals, an output picked by name.
    fn model_call(&mut self, vars: &[String], models: &[ModelSig], d: u32) -> String {
        let m = models[self.rng.below(models.len())].clone();
        let mut hs: Vec<String> = Vec::new();
        for (n, ty) in &m.hypers {
            if !self.rng.chance(60) {
                continue;
            }
            let v = match ty.as_str() {
                "int" => self.int(),
                "bool" => "false".into(),
                "fn" => self.rng.pick(UNARY).to_string(),
                "float" => "0.5".into(),
                "list" => "[1, 2]".into(),
                _ => self.lit(),
            };
            hs.push(if self.rng.chance(50) {
                format!("{n} = {v}")
            } else {
                v
            });
        }
        let n_args = if self.rng.chance(85) {
            m.inputs.len()
        } else {
            self.rng.below(4)
        };
        let args: Vec<String> = (0..n_args)
            .map(|i| {
                let e = self.expr(vars, models, d);
                match (m.inputs.get(i), self.rng.chance(30)) {
                    (Some(n), true) => format!("{n} = {e}"),
                    (None, true) => format!("zz = {e}"),
                    _ => e,
                }
            })
            .collect();
        let call = if m.hypers.is_empty() {
            format!("{}({})", m.name, args.join(", "))
        } else if m.name.starts_with(char::is_uppercase) {
            // a constructor, then an application
            format!("{}({})({})", m.name, hs.join(", "), args.join(", "))
        } else {
            // snake_case: terminals and named hyperparameters in one call
            let mut all = args;
            all.extend(hs.into_iter().filter(|h| h.contains('=')));
            format!("{}({})", m.name, all.join(", "))
        };
        if m.outputs.len() > 1 || self.rng.chance(10) {
            let pick = if self.rng.chance(85) && !m.outputs.is_empty() {
                m.outputs[self.rng.below(m.outputs.len())].clone()
            } else {
                "nope".into()
            };
            format!("{call}.{pick}")
        } else {
            call
        }
    }
}

/// Statements, models and whole programs.
impl ProgGen {
    #[allow(clippy::too_many_arguments)]
    fn stmts(
        &mut self,
        out: &mut String,
        vars: &mut Vec<String>,
        models: &[ModelSig],
        hypers: &[(String, String)],
        n: usize,
        depth: u32,
        counter: &mut usize,
    ) {
        for _ in 0..n {
            *counter += 1;
            let k = *counter;
            match self.rng.below(14) {
                0..=6 => {
                    let name = if self.rng.chance(20) && !vars.is_empty() {
                        vars[self.rng.below(vars.len())].clone()
                    } else {
                        format!("h{k}")
                    };
                    let depth = 1 + self.rng.below(3) as u32;
                    let e = self.expr(vars, models, depth);
                    let _ = writeln!(out, "let {name} = {e};");
                    vars.push(name);
                }
                7 if depth > 0 => {
                    let cond = match self.rng.below(5) {
                        0 => "true".to_string(),
                        1 => "1 < 2".into(),
                        2 => hypers
                            .iter()
                            .find(|h| h.1 == "bool")
                            .map(|h| h.0.clone())
                            .unwrap_or_else(|| "false".into()),
                        3 => "len([1, 2]) == 2".into(),
                        _ => self.var(vars),
                    };
                    let _ = writeln!(out, "if {cond} {{");
                    let mut inner = vars.clone();
                    self.stmts(out, &mut inner, models, hypers, 2, depth - 1, counter);
                    if self.rng.chance(50) {
                        let _ = writeln!(out, "}} else {{");
                        self.stmts(out, &mut inner, models, hypers, 1, depth - 1, counter);
                    }
                    let _ = writeln!(out, "}}");
                    vars.extend(inner);
                }
                8 if depth > 0 => {
                    let iter = match self.rng.below(6) {
                        0 => format!("0..{}", self.int()),
                        1 => "[1, 2, 3]".into(),
                        2 => "0..=2".into(),
                        3 => "3..1".into(),
                        4 => "x".into(),
                        _ => "0..".into(),
                    };
                    let _ = writeln!(out, "for i in {iter} {{");
                    let mut inner = vars.clone();
                    inner.push("i".into());
                    self.stmts(out, &mut inner, models, hypers, 2, depth - 1, counter);
                    let _ = writeln!(out, "}}");
                }
                9 => {
                    let _ = writeln!(out, "const c{k}: {} = {};", self.dtype(), self.lit());
                    vars.push(format!("c{k}"));
                }
                10 => {
                    let init = match self.rng.below(8) {
                        0 => " = zeros".to_string(),
                        1 => " = ones".into(),
                        2 => " = normal(0.0, 0.02)".into(),
                        3 => " = uniform(-1, 1)".into(),
                        4 => " = fan_in(IN)".into(),
                        5 => " = full(2)".into(),
                        6 if self.noisy => " = bogus(1)".into(),
                        _ => String::new(),
                    };
                    let dt = if self.rng.chance(50) {
                        self.dtype()
                    } else {
                        String::new()
                    };
                    let _ = writeln!(out, "param p{k}: {dt}{}{init};", self.shape(hypers));
                    vars.push(format!("p{k}"));
                }
                11 if !models.is_empty() => {
                    let m = &models[self.rng.below(models.len())];
                    let names: Vec<String> = (0..m.outputs.len().max(1) + self.rng.below(2))
                        .map(|i| format!("d{k}_{i}"))
                        .collect();
                    let args: Vec<String> = m.inputs.iter().map(|_| self.var(vars)).collect();
                    let _ = writeln!(
                        out,
                        "let ({}) = {}({});",
                        names.join(", "),
                        m.name,
                        args.join(", ")
                    );
                    vars.extend(names);
                }
                12 => {
                    let _ = writeln!(out, "let inst{k} = Linear({});", self.int());
                    let x = self.var(vars);
                    let _ = writeln!(out, "let h{k} = inst{k}({x});");
                    if self.rng.chance(50) {
                        let _ = writeln!(out, "let g{k} = inst{k}(h{k});");
                        vars.push(format!("g{k}"));
                    }
                    vars.push(format!("h{k}"));
                }
                _ => {
                    let e = self.expr(vars, models, 2);
                    let _ = writeln!(out, "let e{k} = {e};");
                    vars.push(format!("e{k}"));
                }
            }
        }
    }

    /// A model definition; returns its source and signature.
    fn model(&mut self, name: &str, models: &[ModelSig]) -> (String, ModelSig) {
        let mut s = String::new();
        if self.rng.chance(20) {
            s.push_str("/// A model.\n");
        }
        if self.rng.chance(30) {
            s.push_str("pub ");
        }
        s.push_str(if self.rng.chance(3) {
            "train "
        } else {
            "model "
        });
        s.push_str(name);
        let mut hypers = Vec::new();
        if self.rng.chance(35) {
            let all = [
                ("hidden", "int", "8"),
                ("flag", "bool", "true"),
                ("act", "fn", "relu"),
                ("eps", "float", "1e-5"),
                ("sizes", "list", "[4, 8]"),
                ("kind", "str", "\"a\""),
                ("t", "dtype", "f32"),
                ("whatever", "any", "1"),
            ];
            let mut parts = Vec::new();
            for (n, ty, def) in all {
                if self.rng.chance(30) {
                    let d = if self.rng.chance(85) {
                        format!(" = {def}")
                    } else {
                        String::new()
                    };
                    parts.push(format!("{n}: {ty}{d}"));
                    hypers.push((n.to_string(), ty.to_string()));
                }
            }
            let _ = write!(s, "({})", parts.join(", "));
        }
        s.push_str(" {\n");
        let mut vars = Vec::new();
        let mut inputs = Vec::new();
        let n_in = 1 + self.rng.below(3);
        for i in 0..n_in {
            let name = if self.rng.chance(5) {
                "x0".to_string()
            } else {
                format!("x{i}")
            };
            let dt = if self.rng.chance(80) {
                self.dtype()
            } else {
                String::new()
            };
            let _ = writeln!(s, "input {name}: {dt}{};", self.shape(&hypers));
            vars.push(name.clone());
            inputs.push(name);
        }
        for (h, _) in &hypers {
            vars.push(h.clone());
        }
        let mut counter = 0;
        let n = 1 + self.rng.below(6);
        self.stmts(&mut s, &mut vars, models, &hypers, n, 2, &mut counter);
        let mut outputs = Vec::new();
        let n_out = if self.rng.chance(5) {
            0
        } else {
            1 + self.rng.below(2)
        };
        for i in 0..n_out {
            let oname = if self.rng.chance(5) {
                "y0".to_string()
            } else {
                format!("y{i}")
            };
            if self.rng.chance(25) {
                let v = self.var(&vars);
                let _ = writeln!(s, "output {v};");
                outputs.push(v);
            } else {
                let e = self.expr(&vars, models, 2);
                let _ = writeln!(s, "output {oname} = {e};");
                outputs.push(oname);
            }
        }
        if name.starts_with('T') || s.contains("train ") && self.rng.chance(50) {
            let _ = writeln!(s, "loss {};", self.var(&vars));
            let _ = writeln!(s, "regularize l2(1e-4) on \"*.weight\";");
        }
        s.push_str("}\n");
        let sig = ModelSig {
            name: name.to_string(),
            hypers,
            inputs,
            outputs,
        };
        (s, sig)
    }

    fn opt_value(&mut self, sigs: &[ModelSig]) -> String {
        let key = [
            "backend",
            "shapes",
            "static_shapes",
            "types",
            "dtype",
            "optimizations",
            "bakend",
            "shape",
            "unknown",
        ][self.rng.below(9)];
        let inputs: Vec<String> = sigs.iter().flat_map(|s| s.inputs.clone()).collect();
        let input = |rng: &mut Rng| {
            if inputs.is_empty() || rng.chance(10) {
                "nope".to_string()
            } else {
                inputs[rng.below(inputs.len())].clone()
            }
        };
        let val = match key {
            "backend" => ["cpu", "cuda", "tpu", "\"cpu\"", "1"][self.rng.below(5)].to_string(),
            "shapes" | "shape" => {
                let n = self.rng.below(3);
                let items: Vec<String> = (0..n)
                    .map(|_| {
                        let rank = self.rng.below(4);
                        let ds: Vec<String> = (0..rank)
                            .map(|_| match self.rng.below(6) {
                                0 => "_".into(),
                                1 => "None".into(),
                                2 => "-1".into(),
                                3 => "B".into(),
                                _ => self.int(),
                            })
                            .collect();
                        if self.rng.chance(5) {
                            format!("{}: 3", input(&mut self.rng))
                        } else {
                            format!("{}: [{}]", input(&mut self.rng), ds.join(", "))
                        }
                    })
                    .collect();
                format!("{{ {} }}", items.join(", "))
            }
            "static_shapes" => ["true", "false", "1", "yes"][self.rng.below(4)].to_string(),
            "types" => format!("{{ {}: {} }}", input(&mut self.rng), self.dtype()),
            "dtype" => self.dtype(),
            "optimizations" => {
                let names = [
                    "constant_folding",
                    "operator_fusion",
                    "dead_code_elimination",
                    "common_subexpression",
                    "loop_unrolling",
                    "norm_fusion",
                    "head_fusion",
                ];
                let mut items: Vec<String> = Vec::new();
                for n in names {
                    if self.rng.chance(50) {
                        items.push(format!(
                            "{n}: {}",
                            ["true", "false", "1"][self.rng.below(3)]
                        ));
                    }
                }
                format!("{{ {} }}", items.join(", "))
            }
            _ => self.lit(),
        };
        format!("{key}: {val}")
    }

    fn program(&mut self) -> String {
        let n = 1 + self.rng.below(3);
        let mut names: Vec<&str> = Vec::new();
        while names.len() < n {
            let m = self.rng.pick(MODEL_NAMES);
            if !names.contains(&m) || self.rng.chance(3) {
                names.push(m);
            }
        }
        // later models may use earlier ones (and, rarely, later ones: recursion)
        let mut sigs: Vec<ModelSig> = Vec::new();
        let mut src = String::new();
        for (i, name) in names.iter().enumerate() {
            let visible: Vec<ModelSig> = if self.rng.chance(5) && i + 1 < names.len() {
                // forward reference (possibly recursive)
                vec![ModelSig {
                    name: names[i + 1].to_string(),
                    hypers: vec![],
                    inputs: vec!["x0".into()],
                    outputs: vec!["y0".into()],
                }]
            } else {
                sigs.clone()
            };
            let (s, sig) = self.model(name, &visible);
            src.push_str(&s);
            sigs.push(sig);
        }
        let n_compile = self.rng.below(3);
        for i in 0..n_compile {
            let target = if self.rng.chance(90) {
                names[self.rng.below(names.len())].to_string()
            } else {
                ["Linear", "Missing", "other::Net", "LayerNorm"][self.rng.below(4)].to_string()
            };
            let n_opts = self.rng.below(4);
            let opts: Vec<String> = (0..n_opts).map(|_| self.opt_value(&sigs)).collect();
            let _ = writeln!(
                src,
                "{}compile C{i} = {target} {{ {} }};",
                if self.rng.chance(30) { "pub " } else { "" },
                opts.join(", ")
            );
        }
        src
    }

    /// A program entered through the carrier protocol's resume form.
    fn resume(&mut self) -> String {
        let (block, sig) = self.model("Block", &[]);
        let block = block.replace("pub ", "").replace("/// A model.\n", "");
        let user = ModelSig {
            name: sig.name.clone(),
            ..sig
        };
        let (net, _) = self.model("Net", &[user]);
        let key = ["Block", "m::Block", "Other"][self.rng.below(3)];
        let deps = if self.rng.chance(20) {
            "{ [Inner] { model Inner { input a: [N]; output b = a; } } deps [] crate \"k\" }"
        } else {
            ""
        };
        format!("@mithril_resume [ {{ [{key}] {{ {block} }} deps [{deps}] crate \"other_crate\" }} ] {net}")
    }
}

// ------------------------------------------------------------------------------ mutations

#[derive(Clone)]
enum T {
    Leaf(TokenTree),
    Group(Delimiter, Vec<T>),
}

fn to_tree(ts: TokenStream) -> Vec<T> {
    ts.into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => T::Group(g.delimiter(), to_tree(g.stream())),
            other => T::Leaf(other),
        })
        .collect()
}

fn from_tree(ts: &[T]) -> TokenStream {
    ts.iter()
        .map(|t| match t {
            T::Leaf(l) => l.clone(),
            T::Group(d, inner) => TokenTree::Group(Group::new(*d, from_tree(inner))),
        })
        .collect()
}

/// Every token list in the tree (the root and each group's contents), as index paths.
fn lists(ts: &[T], path: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(path.clone());
    for (i, t) in ts.iter().enumerate() {
        if let T::Group(_, inner) = t {
            path.push(i);
            lists(inner, path, out);
            path.pop();
        }
    }
}

fn list_at<'a>(ts: &'a mut Vec<T>, path: &[usize]) -> &'a mut Vec<T> {
    match path.split_first() {
        None => ts,
        Some((&i, rest)) => match &mut ts[i] {
            T::Group(_, inner) => list_at(inner, rest),
            T::Leaf(_) => unreachable!("paths only lead through groups"),
        },
    }
}

fn random_token(rng: &mut Rng) -> Vec<TokenTree> {
    let sp = Span::call_site();
    match rng.below(10) {
        0..=3 => {
            let s = rng.pick(IDENTS);
            let id = match s.strip_prefix("r#") {
                Some(raw) => Ident::new_raw(raw, sp),
                None => Ident::new(s, sp),
            };
            vec![TokenTree::Ident(id)]
        }
        4..=6 => {
            let p = rng.pick(PUNCTS);
            if p == "_" {
                return vec![TokenTree::Ident(Ident::new("_", sp))];
            }
            if p == "'" {
                return vec![
                    TokenTree::Punct(Punct::new('\'', Spacing::Joint)),
                    TokenTree::Ident(Ident::new("a", sp)),
                ];
            }
            let chars: Vec<char> = p.chars().collect();
            chars
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let spacing = if i + 1 < chars.len() {
                        Spacing::Joint
                    } else {
                        Spacing::Alone
                    };
                    TokenTree::Punct(Punct::new(c, spacing))
                })
                .collect()
        }
        7 => {
            let s = rng.pick(INTS);
            TokenStream::from_str(s)
                .map(|t| t.into_iter().collect())
                .unwrap_or_default()
        }
        8 => {
            let s = rng.pick(FLOATS);
            TokenStream::from_str(s)
                .map(|t| t.into_iter().collect())
                .unwrap_or_default()
        }
        _ => {
            let lit = match rng.below(6) {
                0 => Literal::string("s"),
                1 => Literal::character('c'),
                2 => Literal::byte_string(b"b"),
                3 => Literal::u64_suffixed(u64::MAX),
                4 => Literal::i64_unsuffixed(-7),
                _ => Literal::f64_unsuffixed(1e300),
            };
            vec![TokenTree::Literal(lit)]
        }
    }
}

fn mutate(ts: TokenStream, rng: &mut Rng) -> TokenStream {
    let mut tree = to_tree(ts);
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let mut paths = Vec::new();
        lists(&tree, &mut vec![], &mut paths);
        let path = paths[rng.below(paths.len())].clone();
        let list = list_at(&mut tree, &path);
        let n = list.len();
        match rng.below(10) {
            // delete a run of tokens
            0 | 1 if n > 0 => {
                let at = rng.below(n);
                let len = 1 + rng.below(3.min(n - at));
                list.drain(at..at + len);
            }
            // duplicate a token or group
            2 if n > 0 => {
                let at = rng.below(n);
                let t = list[at].clone();
                list.insert(at, t);
            }
            // swap two tokens
            3 if n > 1 => {
                let (a, b) = (rng.below(n), rng.below(n));
                list.swap(a, b);
            }
            // replace a token
            4 | 5 if n > 0 => {
                let at = rng.below(n);
                let new: Vec<T> = random_token(rng).into_iter().map(T::Leaf).collect();
                list.splice(at..at + 1, new);
            }
            // insert random tokens
            6 => {
                let at = rng.below(n + 1);
                let new: Vec<T> = random_token(rng).into_iter().map(T::Leaf).collect();
                list.splice(at..at, new);
            }
            // truncate
            7 if n > 0 => {
                let at = rng.below(n);
                list.truncate(at);
            }
            // wrap a run in a new group
            8 => {
                let at = rng.below(n + 1);
                let len = rng.below((n - at).min(4) + 1);
                let inner: Vec<T> = list.drain(at..at + len).collect();
                let d = [
                    Delimiter::Parenthesis,
                    Delimiter::Bracket,
                    Delimiter::Brace,
                    Delimiter::None,
                ][rng.below(4)];
                list.insert(at, T::Group(d, inner));
            }
            // empty a group, or change its delimiter
            _ => {
                let groups: Vec<usize> = (0..n)
                    .filter(|&i| matches!(list[i], T::Group(..)))
                    .collect();
                if let Some(&g) = groups.get(rng.below(groups.len().max(1))) {
                    if let T::Group(d, inner) = &mut list[g] {
                        if rng.chance(50) {
                            inner.clear();
                        } else {
                            *d = [
                                Delimiter::Parenthesis,
                                Delimiter::Bracket,
                                Delimiter::Brace,
                                Delimiter::None,
                            ][rng.below(4)];
                        }
                    }
                }
            }
        }
    }
    from_tree(&tree)
}

// ------------------------------------------------------------------------------ the test

thread_local! {
    static IN_FUZZ: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Hand-written cases around known edges (huge and negative numbers, empty lists, ...).
const EDGE_CASES: &[&str] = &[
    "",
    "model",
    "model M",
    "model M {}",
    "model M { output y; }",
    "model M { input x: f32[18446744073709551615, 18446744073709551615]; output y = x.sum(); }",
    "model M { input x: f32[4294967296, 4294967296, 4294967296]; output y = reshape(x, [-1]); }",
    "model M { input x: f32[4294967296, 4294967296]; output y = flatten(x); }",
    "model M { input x: f32[18446744073709551615]; input z: f32[18446744073709551615]; output y = concat(x, z); }",
    "model M { input x: f32[4]; output y = x.sum(axis = -9223372036854775807 - 1); }",
    "model M { input x: f32[...]; output y = x.sum(axis = -9223372036854775807 - 1); }",
    "model M { input x: f32[4]; output y = x.softmax(axis = -9223372036854775807 - 1); }",
    "model M { input x: f32[4]; output y = x[-9223372036854775807 - 1]; }",
    "model M { input x: f32[18446744073709551615]; output y = x[-9223372036854775807 - 1]; }",
    "model M { input x: f32[18446744073709551615]; output y = x[-5..]; }",
    "model M { input x: f32[4]; output y = x.slice((0..4).step_by(9223372036854775807)); }",
    "model M { input x: f32[4]; output y = x.slice((0..4).step_by(-9223372036854775807 - 1)); }",
    "model M { input x: f32[4]; output y = x[..=9223372036854775807]; }",
    "model M { input x: f32[4]; output y = x; for i in 0..=9223372036854775807 { } }",
    "model M { input x: f32[4]; output y = x; for i in 0..4294967296 { let z = x; } }",
    "model M { input x: f32[4]; for i in 0..100000 { let x = x + 1.0; } output y = x; }",
    "model M { input x: f32[4]; output y = x * -(-9223372036854775807 - 1); }",
    "model M { input x: f32[4]; output y = flatten(x, start_dim = -9223372036854775807 - 1); }",
    "model M { input x: f32[4]; output y = concat(x, axis = -9223372036854775807 - 1); }",
    "model M { input x: f32[4]; output y = gather(x, x, axis = -9223372036854775807 - 1); }",
    "model M { input x: f32[4]; output y = argmax(x, axis = -9223372036854775807 - 1); }",
    "model M { input x: f32[4]; output y = transpose(x, axes = []); }",
    "model M { input x: f32[]; output y = transpose(x); }",
    "model M { input x: f32[]; output y = matmul(x, x); }",
    "model M { input x: f32[...]; output y = matmul(x, x); }",
    "model M { input x: f32[4]; output y = reshape(x, []); }",
    "model M { input x: f32[0]; output y = reshape(x, [-1]); }",
    "model M { input x: f32[0, B]; output y = reshape(x, [-1, 0]); }",
    "model M { input x: f32[4]; output y = concat(); }",
    "model M { input x: f32[4]; output y = slice(); }",
    "model M { input x: f32[4]; output y = x[]; }",
    "model M { input x: f32[4]; output y = x[()]; }",
    "model M { input x: f32[4]; output y = Linear(18446744073709551615)(x); }",
    "model M { input x: f32[4]; output y = Linear(-1)(x); }",
    "model M { input x: f32[4]; output y = MLP([])(x); }",
    "model M { input x: f32[4]; output y = Embedding(9223372036854775807, 9223372036854775807)(x); }",
    "model M(n: int = 9223372036854775807) { input x: f32[n * 2]; output y = x; }",
    "model M(n: int = -1) { input x: f32[n]; output y = x; }",
    "model M { input x: f32[B]; param w: [B] = fan_in(B); output y = x + w; }",
    "model M { input x: f32[4]; param w: [4] = normal(1e400, 1); output y = x + w; }",
    "model r#Net { input r#type: f32[4]; param r#fn: [4]; output r#match = r#type + r#fn; }",
    "model Net { input r#type: f32[4]; input unused: f32[4]; output y = r#type; }",
    "model Net { input x: f32[4]; let r#loop = Linear(3); output y = r#loop(x); }",
    "model A { input x: [4]; output y = B(x); } model B { input x: [4]; output y = C(x); } model C { input x: [4]; output y = A(x) + B(x); }",
    "model A { input x: [4]; output y = A(x); }",
    "model A { input x: f32[4]; output y = x; } compile A = A {};",
    "model A { input x: f32[4]; output y = x; } compile C = A { shapes: { x: [] } };",
    "model A { input x: f32[...]; output y = x; } compile C = A { shapes: { x: [] }, static_shapes: true };",
    "model A { input x: f32[..., 4]; output y = x; } compile C = A { shapes: { x: [18446744073709551615, 4] } };",
    "model A { input x: f32[4]; output y = x; } compile C = A { shapes: { x: [18446744073709551616] } };",
    "model A { input x: f32[4]; output y = x; } compile C = A { optimizations: {} , types: {}, shapes: {} };",
    "compile C = Linear {};",
    "compile C = ::Linear {};",
    "compile C = a::b::c {};",
    "@mithril_resume [] model A { input x: [4]; output y = x; }",
    "@mithril_resume [ { [Block] { model Block { input x: [4]; output y = x; } } deps [] crate \"c\" } ] model A { input x: f32[4]; output y = Block(x); }",
    "@mithril_resume [ { [Block] { model Block { input x: [4]; output y = x; } } deps [] crate \"c\" } ] model A { input x: f32[4]; output y = Missing(x); }",
    "@mithril_resume [ { [Block] { compile X = Y {}; } deps [] crate \"c\" } ] model A { input x: f32[4]; output y = Block(x); }",
    "model r#Net { input r#type: f32[4]; output r#match = r#type + undefined; }",
    "model Net { input x: f32[4]; input x: f32[4]; output y = x; output y = x; }",
    "model A { input x: f32[4]; output y = x; } compile C = A { static_shapes: 1 };",
    "model A(n: int) { input x: f32[n]; output y = x; } compile C = A {};",
    "model A { input x: f32[B, 4]; input z: f32[B, 8]; let a = x + z; let b = nope; let c = x.sum(axis = 3); output y = a; }",
    "model A { input x: f32[batch]; input z: f31[4]; output y = x + z; }",
    "@mithril_resume",
    "@mithril_resume [",
];

/// Run `expand` on one input; `Err(message)` on a panic or when the expansion is not a valid
/// Rust file, `Ok(true)` when it produced a `compile_error!`.
fn run_one(ts: TokenStream) -> Result<bool, String> {
    IN_FUZZ.with(|f| f.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| crate::expand(ts)));
    IN_FUZZ.with(|f| f.set(false));
    match r {
        Ok(out) => {
            if let Err(e) = syn::parse2::<syn::File>(out.clone()) {
                if let Some(path) = std::env::var_os("MITHRIL_FUZZ_DUMP") {
                    let _ = std::fs::write(path, out.to_string());
                }
                return Err(format!("the expansion is not valid Rust: {e}"));
            }
            Ok(out.to_string().contains("compile_error"))
        }
        Err(_) => Err(LAST_PANIC.with(|l| l.borrow().clone())),
    }
}

/// The fuzz run is split in two halves (the programs of even and odd index; every program and
/// its mutants are generated in both, from the same seeds, so the inputs are those of one
/// sequential run), one per test, so that the two run on two threads.
#[test]
fn expand_never_panics() {
    fuzz_part(0, 2);
}

/// The other half of [`expand_never_panics`].
#[test]
fn expand_never_panics_odd_programs() {
    fuzz_part(1, 2);
}

/// Runs the programs `i` with `i % parts == part` (the edge cases in part 0).
fn fuzz_part(part: usize, parts: usize) {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if IN_FUZZ.with(|f| f.get()) {
            LAST_PANIC.with(|l| *l.borrow_mut() = info.to_string());
        } else {
            prev(info);
        }
    }));
    let start = std::time::Instant::now();
    let mut panics: Vec<(String, String)> = Vec::new();
    let (mut total, mut errors, mut code, mut unlexable) = (0usize, 0usize, 0usize, 0usize);
    let mut record = |src: String, r: Result<bool, String>, panics: &mut Vec<(String, String)>| {
        total += 1;
        match r {
            Ok(true) => errors += 1,
            Ok(false) => code += 1,
            Err(msg) => panics.push((src, msg)),
        }
    };

    for src in EDGE_CASES.iter().filter(|_| part == 0) {
        match TokenStream::from_str(src) {
            Ok(ts) => record(src.to_string(), run_one(ts), &mut panics),
            Err(_) => unlexable += 1,
        }
    }

    // MITHRIL_FUZZ_STATS=1: print which errors the generated (unmutated) programs hit
    let stats = std::env::var_os("MITHRIL_FUZZ_STATS").is_some();
    let mut hist: std::collections::HashMap<String, usize> = Default::default();
    // MITHRIL_FUZZ_SEED / MITHRIL_FUZZ_PROGRAMS: explore beyond the fixed default run
    let env_num = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let seed = env_num("MITHRIL_FUZZ_SEED", 7);
    let programs = env_num("MITHRIL_FUZZ_PROGRAMS", 3_000) as usize;
    let mut gen = ProgGen {
        rng: Rng::new(seed),
        noisy: true,
    };
    let mut mrng = Rng::new(seed ^ 1234);
    let mutants_per_program = 3;
    for i in 0..programs {
        gen.noisy = i % 2 == 0;
        let src = if i % 10 == 9 {
            gen.resume()
        } else {
            gen.program()
        };
        let Ok(ts) = TokenStream::from_str(&src) else {
            unlexable += usize::from(i % parts == part);
            continue;
        };
        if i % parts != part {
            // another part's program: advance the mutation generator as that part does
            for _ in 0..mutants_per_program {
                let _ = mutate(ts.clone(), &mut mrng);
            }
            continue;
        }
        if stats {
            let out = std::panic::catch_unwind(|| crate::expand(ts.clone()).to_string());
            let out = out.unwrap_or_default();
            let key = match out.find("compile_error") {
                Some(i) => out[i..].chars().take(70).collect::<String>(),
                None => "(code)".into(),
            };
            *hist.entry(key).or_insert(0usize) += 1;
        }
        record(src.clone(), run_one(ts.clone()), &mut panics);
        for _ in 0..mutants_per_program {
            let m = mutate(ts.clone(), &mut mrng);
            let shown = m.to_string();
            record(shown, run_one(m), &mut panics);
        }
    }
    let elapsed = start.elapsed();
    if stats {
        let mut v: Vec<_> = hist.into_iter().collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        for (k, n) in v.iter().take(40) {
            println!("{n:6}  {k}");
        }
    }
    println!(
        "fuzz (part {part} of {parts}): {total} token streams in {elapsed:.1?}: {code} expanded to code, {errors} to compile errors, {} failures (panics or invalid Rust; {unlexable} generated sources did not lex)",
        panics.len()
    );
    if !panics.is_empty() {
        // one example per panic site, the shortest input first
        let mut sites: std::collections::BTreeMap<String, (String, String)> = Default::default();
        for (src, msg) in &panics {
            let site = msg.lines().next().unwrap_or_default().to_string();
            let e = sites
                .entry(site)
                .or_insert_with(|| (src.clone(), msg.clone()));
            if src.len() < e.0.len() {
                *e = (src.clone(), msg.clone());
            }
        }
        let mut report = String::new();
        for (src, msg) in sites.values() {
            let _ = writeln!(report, "---- input:\n{src}\n---- panic: {msg}\n");
        }
        panic!(
            "{} of {total} inputs made the macro panic (or expand to invalid Rust) at {} sites:\n{report}",
            panics.len(),
            sites.len()
        );
    }
    assert!(total >= 10_000 / parts, "only {total} inputs were tried");
    assert!(
        code >= total / 50,
        "too few inputs compiled ({code} of {total}): the generator has drifted from the grammar"
    );
}
