//! The plan text: whitespace-separated tokens; strings are `"..."` with `\"`, `\\` and `\n`
//! escapes. Written by `mithril-macros` (`plan_gen.rs`, each primitive's part by its family's
//! `Family::plan` in `prims/`), read here.
//!
//! ```text
//! M "<model>" <nsyms> "<sym>"...
//! C <view> "<terminal>" "<expected>" <ell 0|1> <ndims> <spec>...   spec: f<n> | s<slot> | a
//! R <program>                                                      (programs @0, @1, ... in order)
//! W <node>                                                         (the next N runs only when <node> is true)
//! N <dtype> <home> <op...> <nargs> <arg>... <ctx>                   home: v | s<slot> | i<pos> | o
//! O <n> <node>...
//! ```
//!
//! Literals: `f:<f32 bits, hex>`, `d:<f64 bits, hex>`, `i:<i32>`, `l:<i64>`, `b:<0|1>`. Dims:
//! `k<n>`, `y<slot>`, `in<view>:<axis>`, `ib<view>:<from the end>`, `p<c>:<n>` then `n` dims.
//! Programs: `<n>` instructions then the result's instruction index; an instruction is
//! `L <arg> <st>`, `K <lit>`, `V <ins> <dom>` or `P <op> <lit> <lit> <dom> <n> <ins>...`;
//! `@<k>` instead refers to the `k`-th `R` record. A node's `<ctx>` is `-` (views and aliases of
//! another node's value) or `"<op>" "<label>" "<scope>"`, from which the parser composes how
//! errors name the node (`` `matmul` of input `x`, param `fc.weight` for `h` in `fc` ``).

use super::{Check, DimE, Home, POp, Plan, RKind, Step};
use crate::check::DimSpec;
use crate::elem::DType;
use crate::ops::SliceArg;
use mithril_kernels::prog::{Builder, Dom, EwOp, Lit, Prog, Reg, St};
use std::sync::OnceLock;

type R<T> = std::result::Result<T, String>;

struct Toks {
    src: &'static str,
    pos: usize,
    /// the programs defined by `R` records, referred to as `@<k>`
    progs: Vec<Prog>,
}

impl Toks {
    fn skip_ws(&mut self) {
        let b = self.src.as_bytes();
        while self.pos < b.len() && b[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
    }
    fn done(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.src.len()
    }
    fn word(&mut self) -> R<&'static str> {
        self.skip_ws();
        let b = self.src.as_bytes();
        let start = self.pos;
        if start >= b.len() {
            return Err("unexpected end".into());
        }
        if b[start] == b'"' {
            return Err(format!("string where a word was expected at {start}"));
        }
        while self.pos < b.len() && !b[self.pos].is_ascii_whitespace() {
            self.pos += 1;
        }
        let w = self.src.get(start..self.pos).unwrap_or("");
        // words are ASCII (strings are quoted), so byte indexing below never splits a char
        if !w.is_ascii() {
            return Err(format!("non-ASCII word at {start}"));
        }
        Ok(w)
    }
    fn string(&mut self) -> R<&'static str> {
        self.skip_ws();
        let b = self.src.as_bytes();
        if self.pos >= b.len() || b[self.pos] != b'"' {
            return Err(format!("string expected at {}", self.pos));
        }
        self.pos += 1;
        let start = self.pos;
        let mut escaped = false;
        while self.pos < b.len() && b[self.pos] != b'"' {
            if b[self.pos] == b'\\' {
                escaped = true;
                self.pos += 1;
            }
            self.pos += 1;
        }
        if self.pos >= b.len() {
            return Err("unterminated string".into());
        }
        let raw = &self.src[start..self.pos];
        self.pos += 1;
        if !escaped {
            return Ok(raw);
        }
        let mut s = String::with_capacity(raw.len());
        let mut it = raw.chars();
        while let Some(c) = it.next() {
            if c == '\\' {
                match it.next() {
                    Some('n') => s.push('\n'),
                    Some(c) => s.push(c),
                    None => {}
                }
            } else {
                s.push(c);
            }
        }
        Ok(Box::leak(s.into_boxed_str()))
    }
    fn num<T: std::str::FromStr>(&mut self) -> R<T> {
        let w = self.word()?;
        w.parse()
            .map_err(|_| format!("number expected, found `{w}`"))
    }
    fn flag(&mut self) -> R<bool> {
        Ok(self.num::<u8>()? != 0)
    }
    fn list<T: std::str::FromStr>(&mut self) -> R<Vec<T>> {
        let n: usize = self.num()?;
        (0..n).map(|_| self.num()).collect()
    }
}

pub(super) fn parse(src: &'static str) -> R<Plan> {
    let mut t = Toks {
        src,
        pos: 0,
        progs: Vec::new(),
    };
    if t.word()? != "M" {
        return Err("plan must start with M".into());
    }
    let model = t.string()?;
    let nsyms: usize = t.num()?;
    let syms: Vec<&'static str> = (0..nsyms).map(|_| t.string()).collect::<R<_>>()?;
    let syms: &'static [&'static str] = Box::leak(syms.into_boxed_slice());
    let mut plan = Plan {
        model,
        syms,
        checks: Vec::new(),
        nodes: Vec::new(),
        outputs: Vec::new(),
        chain: OnceLock::new(),
    };
    let mut ctx = Vec::new();
    // `W <node>`: the next node runs only when that node's value is true
    let mut guard = None;
    while !t.done() {
        match t.word()? {
            "W" => {
                let w: usize = t.num()?;
                if w >= plan.nodes.len() {
                    return Err(format!("node {}: guard after it", plan.nodes.len()));
                }
                guard = Some(w);
            }
            "C" => plan.checks.push(check(&mut t)?),
            "R" => {
                let p = prog(&mut t).map_err(|e| format!("program {}: {e}", t.progs.len()))?;
                t.progs.push(p);
            }
            "N" => {
                let (s, c) = step(&mut t).map_err(|e| format!("node {}: {e}", plan.nodes.len()))?;
                if s.args.iter().any(|&a| a >= plan.nodes.len()) {
                    return Err(format!("node {}: operand after it", plan.nodes.len()));
                }
                let mut s = s;
                s.guard = guard.take();
                plan.nodes.push(s);
                ctx.push(c);
            }
            "O" => plan.outputs = t.list()?,
            w => return Err(format!("unknown record `{w}`")),
        }
    }
    if plan.outputs.iter().any(|&o| o >= plan.nodes.len()) {
        return Err("output out of range".into());
    }
    // each loop test jumps past its loop's end
    let ends: Vec<(usize, usize)> = plan
        .nodes
        .iter()
        .enumerate()
        .filter(|(_, s)| matches!(s.op, POp::LoopEnd))
        .filter_map(|(i, s)| Some((*s.args.get(1)?, i)))
        .collect();
    for (i, s) in plan.nodes.iter_mut().enumerate() {
        if let POp::LoopTest { end, .. } = &mut s.op {
            *end = ends
                .iter()
                .find(|(t, _)| *t == i)
                .map(|(_, e)| *e)
                .ok_or_else(|| format!("node {i}: a loop test without its end"))?;
        }
    }
    let mut terms = Vec::new();
    for c in &plan.checks {
        if terms.len() <= c.view {
            terms.resize(c.view + 1, None);
        }
        terms[c.view] = Some(c.terminal);
    }
    let names = Names {
        plan: &plan,
        ctx: &ctx,
        terms,
    };
    let whats: Vec<Option<String>> = (0..plan.nodes.len())
        .map(|id| ctx[id].as_ref().map(|c| names.what(id, c)))
        .collect();
    for (step, w) in plan.nodes.iter_mut().zip(whats) {
        if let Some(w) = w {
            step.what = Box::leak(w.into_boxed_str());
        }
    }
    Ok(plan)
}

/// How errors name a computed node: its op (`op`), its operands as the user names them, the
/// value it computes (`label`) and the instance it belongs to (`scope`) — composed here, once
/// per plan, from the plan's own records rather than written out per node by the compiler.
struct Ctx {
    op: &'static str,
    label: &'static str,
    scope: &'static str,
}

/// What composes the error names: the plan, each node's context, each view's terminal.
struct Names<'p> {
    plan: &'p Plan,
    ctx: &'p [Option<Ctx>],
    terms: Vec<Option<&'static str>>,
}

impl Names<'_> {
    fn what(&self, id: usize, c: &Ctx) -> String {
        let args: Vec<String> = self.plan.nodes[id]
            .args
            .iter()
            .map(|&a| self.value_desc(a))
            .collect();
        let mut s = if args.is_empty() {
            format!("`{}`", c.op)
        } else {
            format!("`{}` of {}", c.op, args.join(", "))
        };
        if !c.label.is_empty() && !c.label.starts_with('#') {
            if c.label.contains('`') {
                s += &format!(" for {}", c.label);
            } else {
                s += &format!(" for `{}`", c.label);
            }
        }
        if !c.scope.is_empty() {
            s += &format!(" in `{}`", c.scope);
        }
        s
    }

    /// The terminal behind view `k` (``input `x` ``, ``param `fc.weight` ``,
    /// ``output gradient `y` ``).
    fn terminal(&self, k: usize) -> Option<&'static str> {
        self.terms.get(k).copied().flatten()
    }

    /// An operand as a user would name it: ``input `ids` ``, ``param `fc1.weight` ``, a named
    /// value and the inputs it derives from.
    fn value_desc(&self, id: usize) -> String {
        let n = &self.plan.nodes[id];
        match (&self.ctx[id], &n.op) {
            (None, POp::View(k)) => match self.terminal(*k) {
                Some(t) => match t.strip_prefix("output gradient ") {
                    Some(out) => format!("the gradient of output {out}"),
                    None => t.to_string(),
                },
                None => "an intermediate value".to_string(),
            },
            (None, _) => match n.args.first() {
                Some(&a) => self.value_desc(a),
                None => "an intermediate value".to_string(),
            },
            (Some(c), _) => {
                let own = match c.label {
                    l if l.is_empty() || l.starts_with('#') => "an intermediate value".to_string(),
                    l if l.contains('`') => l.to_string(),
                    l => format!("`{l}`"),
                };
                let from = self.inputs_behind(id);
                if from.is_empty() {
                    own
                } else {
                    format!("{own} (from input {})", from.join(", "))
                }
            }
        }
    }

    /// The model inputs a computed value derives from (`ids` behind `where_(ids == -100, 0,
    /// ids)`), looking at most 64 nodes back.
    fn inputs_behind(&self, id: usize) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        let mut stack = vec![id];
        let mut names = Vec::new();
        while let Some(k) = stack.pop() {
            if !seen.insert(k) || seen.len() > 64 {
                continue;
            }
            let n = &self.plan.nodes[k];
            match &n.op {
                POp::View(v) => {
                    if let Some(t) = self.terminal(*v).and_then(|t| t.strip_prefix("input ")) {
                        let name = t.to_string();
                        if !names.contains(&name) {
                            names.push(name);
                        }
                    }
                }
                _ => stack.extend(n.args.iter().copied()),
            }
        }
        names
    }
}

/// The `C` records of `src` alone (a model's `__mithril_terminals()`).
pub(super) fn parse_checks(src: &'static str) -> R<Vec<Check>> {
    let mut t = Toks {
        src,
        pos: 0,
        progs: Vec::new(),
    };
    let mut checks = Vec::new();
    while !t.done() {
        match t.word()? {
            "C" => checks.push(check(&mut t)?),
            w => return Err(format!("`C` record expected, found `{w}`")),
        }
    }
    Ok(checks)
}

fn check(t: &mut Toks) -> R<Check> {
    let view = t.num()?;
    let terminal = t.string()?;
    let expected = t.string()?;
    let ell = t.flag()?;
    let n: usize = t.num()?;
    let mut spec = Vec::with_capacity(n);
    for _ in 0..n {
        let w = t.word()?;
        spec.push(match (w.as_bytes()[0], &w[1..]) {
            (b'f', n) => DimSpec::Fixed(n.parse().map_err(|_| format!("bad dim `{w}`"))?),
            (b's', n) => DimSpec::Sym(n.parse().map_err(|_| format!("bad dim `{w}`"))?),
            (b'a', _) => DimSpec::Any,
            _ => return Err(format!("bad dim spec `{w}`")),
        });
    }
    Ok(Check {
        view,
        terminal,
        expected,
        spec,
        ell,
    })
}

fn dtype(w: &str) -> R<DType> {
    Ok(match w {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        "i32" => DType::I32,
        "i64" => DType::I64,
        "bool" => DType::Bool,
        _ => return Err(format!("unknown dtype `{w}`")),
    })
}

fn st(w: &str) -> R<St> {
    Ok(match dtype(w)? {
        DType::F32 => St::F32,
        DType::F64 => St::F64,
        DType::F16 => St::F16,
        DType::BF16 => St::BF16,
        DType::I32 => St::I32,
        DType::I64 => St::I64,
        DType::Bool => St::Bool,
    })
}

fn dom(w: &str) -> R<Dom> {
    Ok(match w {
        "f32" => Dom::F32,
        "f64" => Dom::F64,
        "i32" => Dom::I32,
        "i64" => Dom::I64,
        "bool" => Dom::Bool,
        _ => return Err(format!("unknown domain `{w}`")),
    })
}

fn lit(w: &str) -> R<Lit> {
    let bad = || format!("bad literal `{w}`");
    let (k, v) = w.split_once(':').ok_or_else(bad)?;
    Ok(match k {
        "f" => Lit::F32(f32::from_bits(
            u32::from_str_radix(v, 16).map_err(|_| bad())?,
        )),
        "d" => Lit::F64(f64::from_bits(
            u64::from_str_radix(v, 16).map_err(|_| bad())?,
        )),
        "i" => Lit::I32(v.parse().map_err(|_| bad())?),
        "l" => Lit::I64(v.parse().map_err(|_| bad())?),
        "b" => Lit::Bool(v == "1"),
        _ => return Err(bad()),
    })
}

fn f64_lit(t: &mut Toks) -> R<f64> {
    match lit(t.word()?)? {
        Lit::F64(v) => Ok(v),
        _ => Err("f64 literal expected".into()),
    }
}

fn dim(t: &mut Toks) -> R<DimE> {
    let w = t.word()?;
    let bad = || format!("bad dim `{w}`");
    let num = |s: &str| s.parse::<usize>().map_err(|_| bad());
    if let Some(v) = w.strip_prefix("in") {
        let (a, b) = v.split_once(':').ok_or_else(bad)?;
        return Ok(DimE::In {
            view: num(a)?,
            axis: num(b)?,
            back: false,
        });
    }
    if let Some(v) = w.strip_prefix("ib") {
        let (a, b) = v.split_once(':').ok_or_else(bad)?;
        return Ok(DimE::In {
            view: num(a)?,
            axis: num(b)?,
            back: true,
        });
    }
    if let Some(v) = w.strip_prefix('k') {
        return Ok(DimE::K(num(v)?));
    }
    if let Some(v) = w.strip_prefix('y') {
        return Ok(DimE::Sym(num(v)?));
    }
    if let Some(v) = w.strip_prefix('p') {
        let (c, n) = v.split_once(':').ok_or_else(bad)?;
        let (c, n) = (num(c)?, num(n)?);
        let ds = (0..n).map(|_| dim(t)).collect::<R<_>>()?;
        return Ok(DimE::Prod(c, ds));
    }
    Err(bad())
}

fn slice_args(t: &mut Toks) -> R<Vec<SliceArg>> {
    let n: usize = t.num()?;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let w = t.word()?;
        let bad = || format!("bad slice `{w}`");
        let opt = |s: &str| -> R<Option<isize>> {
            if s == "_" {
                Ok(None)
            } else {
                s.parse().map(Some).map_err(|_| bad())
            }
        };
        v.push(match w.as_bytes()[0] {
            b'N' => SliceArg::NewAxis,
            b'I' => SliceArg::Index(w[1..].parse().map_err(|_| bad())?),
            b'R' => {
                let mut p = w[1..].split(':');
                let (a, b, c) = (p.next(), p.next(), p.next());
                let (Some(a), Some(b), Some(c)) = (a, b, c) else {
                    return Err(bad());
                };
                SliceArg::Range {
                    start: opt(a)?,
                    end: opt(b)?,
                    step: c.parse().map_err(|_| bad())?,
                }
            }
            _ => return Err(bad()),
        });
    }
    Ok(v)
}

fn ew_op(w: &str) -> R<EwOp> {
    use EwOp::*;
    Ok(match w {
        "add" => Add,
        "sub" => Sub,
        "mul" => Mul,
        "div" => Div,
        "floor_div" => FloorDiv,
        "rem" => Rem,
        "pow" => Pow,
        "minimum" => Minimum,
        "maximum" => Maximum,
        "eq" => Eq,
        "ne" => Ne,
        "lt" => Lt,
        "le" => Le,
        "gt" => Gt,
        "ge" => Ge,
        "and" => And,
        "or" => Or,
        "xor" => Xor,
        "not" => Not,
        "neg" => Neg,
        "abs" => Abs,
        "exp" => Exp,
        "log" => Log,
        "sqrt" => Sqrt,
        "sin" => Sin,
        "cos" => Cos,
        "tanh" => Tanh,
        "erf" => Erf,
        "square" => Square,
        "sign" => Sign,
        "relu" => Relu,
        "sigmoid" => Sigmoid,
        "softplus" => Softplus,
        "gelu" => Gelu,
        "gelu_tanh" => GeluTanh,
        "leaky_relu" => LeakyRelu,
        "clamp" => Clamp,
        "robust_sqrt" => RobustSqrt,
        "robust_log" => RobustLog,
        "stable_reciprocal" => StableReciprocal,
        "robust_power" => RobustPower,
        "where" => Where,
        _ => return Err(format!("unknown elementwise op `{w}`")),
    })
}

fn prog(t: &mut Toks) -> R<Prog> {
    let w = t.word()?;
    if let Some(k) = w.strip_prefix('@') {
        let k: usize = k
            .parse()
            .map_err(|_| format!("bad program reference `{w}`"))?;
        return t
            .progs
            .get(k)
            .cloned()
            .ok_or_else(|| format!("program {k} not defined"));
    }
    let n: usize = w
        .parse()
        .map_err(|_| format!("number expected, found `{w}`"))?;
    let mut b = Builder::default();
    let mut regs: Vec<Reg> = Vec::with_capacity(n);
    let get = |regs: &Vec<Reg>, k: usize| regs.get(k).copied().ok_or("register used before set");
    for _ in 0..n {
        let r = match t.word()? {
            "L" => {
                let arg = t.num()?;
                b.load(arg, st(t.word()?)?)
            }
            "K" => b.lit(lit(t.word()?)?),
            "V" => {
                let src = get(&regs, t.num()?)?;
                b.conv(src, dom(t.word()?)?)
            }
            "P" => {
                let op = ew_op(t.word()?)?;
                let imm = [lit(t.word()?)?, lit(t.word()?)?];
                let d = dom(t.word()?)?;
                let k: usize = t.num()?;
                let args = (0..k)
                    .map(|_| {
                        t.num::<usize>()
                            .and_then(|i| get(&regs, i).map_err(String::from))
                    })
                    .collect::<R<Vec<Reg>>>()?;
                b.op(op, d, &args, imm)
            }
            w => return Err(format!("unknown instruction `{w}`")),
        };
        regs.push(r);
    }
    let out = get(&regs, t.num()?)?;
    Ok(b.finish(out))
}

/// A convolution's attributes: kind, groups, "same" flag, stride, padding, dilation, output
/// padding.
fn conv_spec(t: &mut Toks) -> R<crate::ops::conv::ConvSpec> {
    use crate::ops::conv::{ConvKind, ConvSpec};
    let kind = match t.word()? {
        "f" => ConvKind::Forward,
        "t" => ConvKind::Transpose,
        "d" => ConvKind::GradData,
        "w" => ConvKind::GradWeight,
        w => return Err(format!("unknown conv kind `{w}`")),
    };
    let groups = t.num()?;
    let same = t.flag()?;
    let stride: Vec<usize> = t.list()?;
    let pad: Vec<usize> = t.list()?;
    let dilation: Vec<usize> = t.list()?;
    let output_padding: Vec<usize> = t.list()?;
    let nd = stride.len();
    if !(1..=2).contains(&nd)
        || dilation.len() != nd
        || output_padding.len() != nd
        || (!same && pad.len() != nd)
    {
        return Err("bad conv attributes".into());
    }
    Ok(ConvSpec {
        kind,
        stride,
        padding: (!same).then_some(pad),
        dilation,
        groups,
        output_padding,
    })
}

fn step(t: &mut Toks) -> R<(Step, Option<Ctx>)> {
    let dt = dtype(t.word()?)?;
    let h = t.word()?;
    let home = match (h.as_bytes()[0], &h[1..]) {
        (b'v', _) => Home::View,
        (b'o', _) => Home::Owned,
        (b's', k) => Home::Slot(k.parse().map_err(|_| format!("bad home `{h}`"))?),
        (b'i', k) => Home::InPlace(k.parse().map_err(|_| format!("bad home `{h}`"))?),
        _ => return Err(format!("bad home `{h}`")),
    };
    let op = match t.word()? {
        "view" => POp::View(t.num()?),
        "alias" => POp::Alias,
        "phi" => POp::Phi,
        "const" => POp::Const(lit(t.word()?)?),
        "fused" => POp::Fused(t.string()?, prog(t)?),
        "fmm" => {
            let (ta, tb) = (t.flag()?, t.flag()?);
            POp::FusedMatmul {
                ta,
                tb,
                prog: prog(t)?,
            }
        }
        "mm" => POp::Matmul {
            ta: t.flag()?,
            tb: t.flag()?,
        },
        "transpose" => POp::Transpose(t.list()?),
        "reshape" => {
            let n: usize = t.num()?;
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                t.skip_ws();
                if t.src[t.pos..].starts_with('?') {
                    t.word()?;
                    v.push(None);
                } else {
                    v.push(Some(dim(t)?));
                }
            }
            POp::Reshape(v)
        }
        "flatten" => POp::Flatten(t.num()?, t.num()?),
        "concat" => POp::Concat(t.num()?),
        "slice" => POp::Slice(slice_args(t)?),
        "gather" => POp::Gather(t.num()?),
        "take_along" => POp::TakeAlong,
        "reduce" => {
            let kind = match t.word()? {
                "sum" => RKind::Sum,
                "mean" => RKind::Mean,
                "max" => RKind::Max,
                "min" => RKind::Min,
                "prod" => RKind::Prod,
                w => return Err(format!("unknown reduction `{w}`")),
            };
            POp::Reduce(kind, t.list()?, t.flag()?)
        }
        "variance" => POp::Variance(t.list()?, t.flag()?, f64_lit(t)?),
        "argreduce" => POp::ArgReduce {
            max: t.flag()?,
            axis: t.num()?,
            keep: t.flag()?,
        },
        "softmax" => POp::Softmax(t.num()?),
        "log_softmax" => POp::LogSoftmax(t.num()?),
        // row normalisations: eps, rms, scale, bias
        "norm" => POp::Norm {
            eps: f64_lit(t)?,
            rms: t.flag()?,
            scale: t.flag()?,
            bias: t.flag()?,
        },
        "unsqueeze" => POp::Unsqueeze(t.list()?),
        "broadcast_like" => POp::BroadcastLike,
        "reshape_like" => POp::ReshapeLike,
        "sum_like" => POp::SumLike,
        "size_ratio" => POp::SizeRatio,
        "take_along_grad" => POp::TakeAlongGrad,
        "gather_grad" => POp::GatherGrad(t.num()?),
        "slice_grad" => POp::SliceGrad(slice_args(t)?),
        "concat_part" => POp::ConcatPart(t.num()?, t.num()?),
        "tril" => POp::Tril(t.num()?),
        "triu" => POp::Triu(t.num()?),
        "full_like" => POp::FullLike(f64_lit(t)?),
        "stack" => POp::Stack(t.num()?),
        "cholesky" => POp::Cholesky,
        "eigvalsh" => POp::Eigvalsh,
        "eigh_vectors" => POp::EighVectors,
        "solve_tri" => POp::SolveTriangular {
            upper: t.flag()?,
            left: t.flag()?,
            trans: t.flag()?,
        },
        "arange" => POp::Arange {
            start: f64_lit(t)?,
            step: f64_lit(t)?,
            len: dim(t)?,
        },
        "carry" => {
            let n: usize = t.num()?;
            POp::Carry((0..n).map(|_| dim(t)).collect::<R<_>>()?)
        }
        "loop_head" => POp::LoopHead,
        "loop_test" => POp::LoopTest {
            max: match t.word()? {
                "-" => None,
                w => Some(w.parse().map_err(|_| format!("bad max_steps `{w}`"))?),
            },
            tape: t.num()?,
            end: usize::MAX,
        },
        "loop_next" => POp::LoopNext,
        "loop_end" => POp::LoopEnd,
        "loop_exit" => POp::LoopExit,
        "tape_read" => POp::TapeRead(t.num()?),
        "dim_value" => POp::DimValue(dim(t)?),
        "set_at" => POp::SetAt {
            axis: t.num()?,
            add: t.flag()?,
        },
        // pooling, pad, upsample (the pool family)
        "pool" => POp::Pool(crate::ops::PoolSpec::parse(t.word()?)?),
        "pool_grad" => POp::PoolGrad(crate::ops::PoolSpec::parse(t.word()?)?),
        // attention
        "attention" => POp::Attention {
            causal: t.flag()?,
            scale: match t.word()? {
                "-" => None,
                w => match lit(w)? {
                    Lit::F64(v) => Some(v),
                    _ => return Err("f64 literal expected".into()),
                },
            },
            part: t.num()?,
            // dropout on the weights: `-`, or p, the op's id and the seed view
            dropout: match t.word()? {
                "-" => None,
                w => match lit(w)? {
                    Lit::F64(p) => Some((p, t.num()?, t.num()?)),
                    _ => return Err("f64 literal expected".into()),
                },
            },
        },
        // attention with the head split / merge folded in: causal, scale, merge, then heads,
        // width and first column of q, k, v (heads 0: a plain `[B, H, S, D]` operand)
        "attention_heads" => {
            let causal = t.flag()?;
            let scale = match t.word()? {
                "-" => None,
                w => match lit(w)? {
                    Lit::F64(v) => Some(v),
                    _ => return Err("f64 literal expected".into()),
                },
            };
            let merge = t.flag()?;
            let mut col = || -> R<crate::ops::HeadCols> {
                let (heads, width, off): (usize, usize, usize) = (t.num()?, t.num()?, t.num()?);
                Ok(if heads == 0 {
                    crate::ops::HeadCols::Plain
                } else {
                    crate::ops::HeadCols::Split { heads, width, off }
                })
            };
            let cols = [col()?, col()?, col()?];
            POp::AttentionHeads {
                causal,
                scale,
                merge,
                cols,
            }
        }
        // norm / dropout (random ops)
        "dropout" => POp::Dropout {
            p: f64_lit(t)?,
            op: t.num()?,
            seed: t.num()?,
        },
        // ---- convolution: kind, groups, "same" flag, stride, padding, dilation, output padding
        "conv" => POp::Conv(Box::new(conv_spec(t)?)),
        // a forward convolution with its epilogue: bias and relu flags, then as `conv`
        // (`conv_epi_pool`: then the 2×2 max pool)
        w @ ("conv_epi" | "conv_epi_pool") => {
            let (bias, relu) = (t.flag()?, t.flag()?);
            let spec = conv_spec(t)?;
            if spec.kind != crate::ops::conv::ConvKind::Forward {
                return Err("a conv epilogue needs a forward convolution".into());
            }
            POp::ConvEpi {
                spec: Box::new(spec),
                bias,
                relu,
                pool: w == "conv_epi_pool",
            }
        }
        // incremental decoding
        "update_slice" => POp::UpdateSlice { axis: t.num()? },
        "cached_attention" => POp::CachedAttention {
            scale: match t.word()? {
                "-" => None,
                w => match lit(w)? {
                    Lit::F64(v) => Some(v),
                    _ => return Err("f64 literal expected".into()),
                },
            },
        },
        w => return Err(format!("unknown op `{w}`")),
    };
    let args = t.list()?;
    t.skip_ws();
    let ctx = if t.src.as_bytes().get(t.pos) == Some(&b'-') {
        t.word()?;
        None
    } else {
        Some(Ctx {
            op: t.string()?,
            label: t.string()?,
            scope: t.string()?,
        })
    };
    let step = Step {
        dt,
        home,
        op,
        args,
        what: "",
        guard: None,
    };
    Ok((step, ctx))
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn a_small_plan_parses() {
        let src = "M \"Net\" 1 \"B\"\n\
                   C 0 \"input `x`\" \"f32[B, 4]\" 0 2 s0 f4\n\
                   N f32 v view 0 0 -\n\
                   R 2 L 0 f32 P relu f:0 f:0 f32 1 0 1\n\
                   N f32 s0 fused \"relu\" @0 1 0 \"relu\" \"h\" \"\"\n\
                   N f32 o fused \"relu\" 2 L 0 f32 P relu f:0 f:0 f32 1 0 1 1 1 \"relu\" \"#3\" \"fc\"\n\
                   O 1 2\n";
        let p = parse(src).unwrap();
        assert_eq!(p.model, "Net");
        assert_eq!(p.syms, &["B"]);
        assert_eq!(p.checks.len(), 1);
        assert_eq!(p.checks[0].spec, vec![DimSpec::Sym(0), DimSpec::Fixed(4)]);
        assert_eq!(p.nodes.len(), 3);
        assert_eq!(p.nodes[2].home, Home::Owned);
        assert_eq!(p.nodes[2].args, vec![1]);
        assert_eq!(p.outputs, vec![2]);
        assert!(matches!(&p.nodes[1].op, POp::Fused("relu", prog) if prog.ins.len() == 2));
        assert!(matches!(&p.nodes[2].op, POp::Fused("relu", prog) if prog.ins.len() == 2));
        // error names composed from the records
        assert_eq!(p.nodes[0].what, "");
        assert_eq!(p.nodes[1].what, "`relu` of input `x` for `h`");
        assert_eq!(p.nodes[2].what, "`relu` of `h` (from input `x`) in `fc`");
    }

    #[cfg_attr(test, test)]
    pub(crate) fn malformed_plans_are_errors_not_panics() {
        for bad in [
            "",
            "X",
            "M \"Net\" 0\nN f32 v view",
            "M \"Net\" 0\nN f32 v alias 1 5 \"\"",
            "M \"Net\" 0\nN f99 v view 0 0 \"\"",
            "M \"Net\" 0\nN f32 é view 0 0 \"\"",
            "M \"Net\" 0\nN f32 o fused \"x\" 1 P relu f:0 f:0 f32 1 7 0 0 0 \"\"",
            "M \"Net\" 0\nO 1 3",
            "M \"unterminated",
            "M \"Net\" 0\nN f32 v view 0 0 -\nN f32 o fused \"x\" @0 1 0 \"x\" \"\" \"\"",
            "M \"Net\" 0\nN f32 v view 0 0 \"x\"",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
