//! Fused elementwise programs: one precompiled interpreter for every fused elementwise group.
//!
//! The compiler describes a fused group as a small register program ([`Prog`]: loads of the
//! group's operands, literals, conversions and elementwise ops, in SSA form). [`run`] walks the
//! output in chunks of at most 256 elements and executes the whole program on each chunk: every
//! instruction is one tight loop over the chunk's registers (which stay in L1), so the loops
//! vectorize like the closures of [`crate::ew`] did, and the per-instruction dispatch costs a
//! branch per 256 elements. Like the `ew` drivers, `run` is multiversioned (AVX-512, AVX2+FMA,
//! baseline, picked by [`crate::isa::active`]; on aarch64 a NEON level whose arithmetic,
//! `neg`/`abs`/`square`/`sqrt`/`relu`, `exp`/`tanh`/`erf`/`sigmoid`/`gelu` instructions — and the
//! one-pass forms' bias-add-and-activation loops — are `core::arch::aarch64` intrinsics, bit for
//! bit the baseline); operands are read through the same broadcast sources ([`Src`]), never
//! materialized.
//!
//! Semantics are those of the element functions in [`crate::scalar`] / [`crate::vmath`] on the
//! compute ("accumulator") type of each value: `f16`/`bf16` load widened to `f32` and are rounded
//! only when stored, `f32` uses the `vmath` functions, `f64` `libm`'s; results are bitwise those
//! of the same expression written as one closure.

use crate::ew::{Src, CH};
// `Isa` names only the x86 and NEON arms (see `isa`).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::isa::{self, Isa};
use crate::scalar::{self as s, Num, Real};
use crate::vmath;
use half::{bf16, f16};
use std::cell::RefCell;

mod fast;
use fast::Fast;
pub use fast::Rows;

/// A compute domain: the type values of a program are held in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dom {
    /// `f32` (also the domain of `f16` and `bf16`)
    F32,
    /// `f64`
    F64,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `bool`
    Bool,
}

/// A storage type: what operand and output buffers hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum St {
    /// `f32`
    F32,
    /// `f64`
    F64,
    /// `half::f16`
    F16,
    /// `half::bf16`
    BF16,
    /// `i32`
    I32,
    /// `i64`
    I64,
    /// `bool`
    Bool,
}

impl St {
    /// The domain values of this storage type are computed in.
    pub fn dom(self) -> Dom {
        match self {
            St::F32 | St::F16 | St::BF16 => Dom::F32,
            St::F64 => Dom::F64,
            St::I32 => Dom::I32,
            St::I64 => Dom::I64,
            St::Bool => Dom::Bool,
        }
    }
}

/// A literal in its domain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lit {
    /// an `f32` value
    F32(f32),
    /// an `f64` value
    F64(f64),
    /// an `i32` value
    I32(i32),
    /// an `i64` value
    I64(i64),
    /// a `bool`
    Bool(bool),
}

impl Lit {
    /// The literal's domain.
    pub fn dom(self) -> Dom {
        match self {
            Lit::F32(_) => Dom::F32,
            Lit::F64(_) => Dom::F64,
            Lit::I32(_) => Dom::I32,
            Lit::I64(_) => Dom::I64,
            Lit::Bool(_) => Dom::Bool,
        }
    }
}

/// Elementwise operations (the compiler's elementwise primitives).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum EwOp {
    Add,
    Sub,
    Mul,
    Div,
    FloorDiv,
    Rem,
    Pow,
    Minimum,
    Maximum,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
    Xor,
    Not,
    Neg,
    Abs,
    Exp,
    Log,
    Sqrt,
    Sin,
    Cos,
    Tanh,
    Erf,
    Square,
    Sign,
    Relu,
    Sigmoid,
    Softplus,
    Gelu,
    GeluTanh,
    /// `imm[0]`: the slope
    LeakyRelu,
    /// `imm[0]`, `imm[1]`: the bounds
    Clamp,
    /// `imm[0]`: the threshold
    RobustSqrt,
    /// `imm[0]`: the threshold
    RobustLog,
    /// `imm[0]`: the threshold
    StableReciprocal,
    /// `imm[0]`: the threshold
    RobustPower,
    /// `a ? b : c` (`a` is a `bool` register)
    Where,
}

impl EwOp {
    /// Comparisons produce `bool` whatever their compute domain.
    pub fn is_comparison(self) -> bool {
        matches!(
            self,
            EwOp::Eq | EwOp::Ne | EwOp::Lt | EwOp::Le | EwOp::Gt | EwOp::Ge
        )
    }

    /// Number of register operands.
    pub fn arity(self) -> usize {
        use EwOp::*;
        match self {
            Add | Sub | Mul | Div | FloorDiv | Rem | Pow | Minimum | Maximum | Eq | Ne | Lt
            | Le | Gt | Ge | And | Or | Xor | RobustPower => 2,
            Where => 3,
            _ => 1,
        }
    }
}

/// A register: its domain and its index in that domain's bank.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reg {
    /// the domain
    pub dom: Dom,
    /// index within the domain's registers
    pub idx: u16,
}

/// One instruction. Registers are written once (SSA).
#[derive(Clone, Debug, PartialEq)]
pub enum Ins {
    /// Operand `arg`, widened to its domain.
    Load {
        /// operand index
        arg: usize,
        /// destination (domain: the operand's)
        dst: Reg,
    },
    /// A constant.
    Lit {
        /// the value (its domain is `dst`'s)
        lit: Lit,
        /// destination
        dst: Reg,
    },
    /// A conversion between domains (`as` casts; to `bool`: `!= 0`; from `bool`: 0 / 1).
    Conv {
        /// source
        src: Reg,
        /// destination (another domain)
        dst: Reg,
    },
    /// An elementwise op computed in `dom` (comparisons write a `bool` register; `Where`'s
    /// first operand is `bool`).
    Op {
        /// the operation
        op: EwOp,
        /// compute domain
        dom: Dom,
        /// operands (`arity` of them are used)
        args: [Reg; 3],
        /// immediates (see [`EwOp`])
        imm: [Lit; 2],
        /// destination
        dst: Reg,
    },
}

/// A fused elementwise program.
#[derive(Clone, Debug, PartialEq)]
pub struct Prog {
    /// instructions, in order
    pub ins: Vec<Ins>,
    /// the register holding the result (in the output storage type's domain)
    pub out: Reg,
    /// registers per domain: `[f32, f64, i32, i64, bool]`
    pub regs: [u16; 5],
    /// the one-pass form of the program, when it has one (found by [`Builder::finish`])
    fast: Fast,
}

fn dom_ix(d: Dom) -> usize {
    match d {
        Dom::F32 => 0,
        Dom::F64 => 1,
        Dom::I32 => 2,
        Dom::I64 => 3,
        Dom::Bool => 4,
    }
}

/// Builds a [`Prog`], allocating registers.
#[derive(Default)]
pub struct Builder {
    ins: Vec<Ins>,
    regs: [u16; 5],
}

impl Builder {
    /// A fresh register of domain `dom`.
    pub fn reg(&mut self, dom: Dom) -> Reg {
        let k = dom_ix(dom);
        let idx = self.regs[k];
        self.regs[k] += 1;
        Reg { dom, idx }
    }
    /// Append an instruction.
    pub fn push(&mut self, i: Ins) {
        self.ins.push(i);
    }
    /// Load operand `arg` of storage type `st`.
    pub fn load(&mut self, arg: usize, st: St) -> Reg {
        let dst = self.reg(st.dom());
        self.push(Ins::Load { arg, dst });
        dst
    }
    /// A literal.
    pub fn lit(&mut self, lit: Lit) -> Reg {
        let dst = self.reg(lit.dom());
        self.push(Ins::Lit { lit, dst });
        dst
    }
    /// `src` converted to `to` (no instruction when already there).
    pub fn conv(&mut self, src: Reg, to: Dom) -> Reg {
        if src.dom == to {
            return src;
        }
        let dst = self.reg(to);
        self.push(Ins::Conv { src, dst });
        dst
    }
    /// An op; returns its result register.
    pub fn op(&mut self, op: EwOp, dom: Dom, args: &[Reg], imm: [Lit; 2]) -> Reg {
        let out_dom = if op.is_comparison() { Dom::Bool } else { dom };
        let dst = self.reg(out_dom);
        let mut a = [Reg {
            dom: Dom::Bool,
            idx: u16::MAX,
        }; 3];
        for (i, r) in args.iter().take(3).enumerate() {
            a[i] = *r;
        }
        self.push(Ins::Op {
            op,
            dom,
            args: a,
            imm,
            dst,
        });
        dst
    }
    /// The finished program with result `out`.
    pub fn finish(self, out: Reg) -> Prog {
        let fast = fast::recognize(&self.ins, out);
        Prog {
            ins: self.ins,
            out,
            regs: self.regs,
            fast,
        }
    }
}

/// An operand of a program: a broadcast source of one storage type.
#[derive(Clone, Copy, Debug)]
#[allow(missing_docs)]
pub enum Arg<'a> {
    F32(Src<'a, f32>),
    F64(Src<'a, f64>),
    F16(Src<'a, f16>),
    BF16(Src<'a, bf16>),
    I32(Src<'a, i32>),
    I64(Src<'a, i64>),
    Bool(Src<'a, bool>),
}

/// The output buffer of a program.
#[allow(missing_docs)]
pub enum Out<'a> {
    F32(&'a mut [f32]),
    F64(&'a mut [f64]),
    F16(&'a mut [f16]),
    BF16(&'a mut [bf16]),
    I32(&'a mut [i32]),
    I64(&'a mut [i64]),
    Bool(&'a mut [bool]),
}

impl Out<'_> {
    fn len(&self) -> usize {
        match self {
            Out::F32(o) => o.len(),
            Out::F64(o) => o.len(),
            Out::F16(o) => o.len(),
            Out::BF16(o) => o.len(),
            Out::I32(o) => o.len(),
            Out::I64(o) => o.len(),
            Out::Bool(o) => o.len(),
        }
    }
}

/// How the output relates to the operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The output is a separate buffer.
    Plain,
    /// The output overwrites operand `.0` (whose `Arg` is ignored: the output buffer is read).
    InPlace(usize),
    /// A matmul epilogue: the output holds accumulators (`f32` for `f16`/`bf16` results) and
    /// is operand 0; operand 0 is read rounded to the storage type `St` and the result is
    /// rounded to it before it is stored back widened (as the unfused graph would store it).
    Epilogue(St),
}

impl Mode {
    /// The operand the output buffer stands for.
    fn out_operand(self) -> Option<usize> {
        match self {
            Mode::Plain => None,
            Mode::InPlace(k) => Some(k),
            Mode::Epilogue(_) => Some(0),
        }
    }
}

/// Register banks (thread-local scratch, grown on demand).
#[derive(Default)]
struct Banks {
    f32: Vec<f32>,
    f64: Vec<f64>,
    i32: Vec<i32>,
    i64: Vec<i64>,
    bool: Vec<bool>,
}

impl Banks {
    fn fit(&mut self, regs: [u16; 5]) {
        let grow = |n: u16| n as usize * CH;
        if self.f32.len() < grow(regs[0]) {
            self.f32.resize(grow(regs[0]), 0.0);
        }
        if self.f64.len() < grow(regs[1]) {
            self.f64.resize(grow(regs[1]), 0.0);
        }
        if self.i32.len() < grow(regs[2]) {
            self.i32.resize(grow(regs[2]), 0);
        }
        if self.i64.len() < grow(regs[3]) {
            self.i64.resize(grow(regs[3]), 0);
        }
        if self.bool.len() < grow(regs[4]) {
            self.bool.resize(grow(regs[4]), false);
        }
    }
}

thread_local! {
    static BANKS: RefCell<Banks> = RefCell::new(Banks::default());
}

/// Errors of [`run`]: a malformed program or operands that do not match it (the compiler's
/// bug, never the user's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgError(pub String);

impl Prog {
    /// The one-pass form of this program prepared for repeated calls over `f32` output rows
    /// in `mode` (an `f32` matmul epilogue or an in-place `f32` program), when it has one of
    /// [`Rows`]' forms. [`Rows::run`] then gives the same bits as [`run`].
    pub fn rows_f32(&self, mode: Mode) -> Option<Rows> {
        match mode {
            Mode::Epilogue(St::F32) => Rows::new(self.fast, 0),
            Mode::InPlace(k) => Rows::new(self.fast, k),
            _ => None,
        }
    }
}

/// Run `prog` over `out` (see [`Mode`]); operand `i` is `args[i]`.
pub fn run(prog: &Prog, args: &[Arg<'_>], out: Out<'_>, mode: Mode) -> Result<(), ProgError> {
    match fast::run(prog.fast, args, out, mode) {
        Ok(()) => Ok(()),
        Err(out) => run_general(prog, args, out, mode),
    }
}

/// [`run`] without the one-pass forms: the interpreter proper.
fn run_general(prog: &Prog, args: &[Arg<'_>], out: Out<'_>, mode: Mode) -> Result<(), ProgError> {
    validate(prog, args, &out, mode)?;
    BANKS.with(|b| {
        // a program inside a program never happens, but stay safe if it did
        let mut fresh;
        let mut guard = b.try_borrow_mut();
        let banks: &mut Banks = match guard.as_mut() {
            Ok(g) => g,
            Err(_) => {
                fresh = Banks::default();
                &mut fresh
            }
        };
        banks.fit(prog.regs);
        match isa::active() {
            // SAFETY: `active` only returns levels the CPU supports.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { run_avx512(prog, args, out, mode, banks) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { run_avx2(prog, args, out, mode, banks) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => run_generic::<true>(prog, args, out, mode, banks),
            _ => run_generic::<false>(prog, args, out, mode, banks),
        }
    });
    Ok(())
}

fn validate(prog: &Prog, args: &[Arg<'_>], out: &Out<'_>, mode: Mode) -> Result<(), ProgError> {
    let bad = |m: String| Err(ProgError(m));
    let ok_reg = |r: Reg| r.idx < prog.regs[dom_ix(r.dom)];
    let n = out.len();
    for (k, a) in args.iter().enumerate() {
        if Some(k) == mode.out_operand() {
            continue;
        }
        let (len, full) = match a {
            Arg::F32(s) => src_len(s),
            Arg::F64(s) => src_len(s),
            Arg::F16(s) => src_len(s),
            Arg::BF16(s) => src_len(s),
            Arg::I32(s) => src_len(s),
            Arg::I64(s) => src_len(s),
            Arg::Bool(s) => src_len(s),
        };
        if n > 0 && ((full && len < n) || (!full && len == 0)) {
            return bad(format!(
                "operand {k} has {len} elements for an output of {n}"
            ));
        }
    }
    for i in &prog.ins {
        match i {
            Ins::Load { arg, dst } => {
                let Some(a) = args.get(*arg) else {
                    return bad(format!("load of missing operand {arg}"));
                };
                let st = if Some(*arg) == mode.out_operand() {
                    match (mode, out) {
                        (Mode::Epilogue(st), _) => st,
                        (_, o) => out_st(o),
                    }
                } else {
                    arg_st(a)
                };
                if st.dom() != dst.dom || !ok_reg(*dst) {
                    return bad(format!("load of operand {arg} into a wrong register"));
                }
            }
            Ins::Lit { lit, dst } => {
                if lit.dom() != dst.dom || !ok_reg(*dst) {
                    return bad("literal into a wrong register".into());
                }
            }
            Ins::Conv { src, dst } => {
                if !ok_reg(*src) || !ok_reg(*dst) {
                    return bad("conversion with a wrong register".into());
                }
            }
            Ins::Op {
                op,
                dom,
                args: a,
                dst,
                ..
            } => {
                for (k, r) in a.iter().take(op.arity()).enumerate() {
                    let want = if *op == EwOp::Where && k == 0 {
                        Dom::Bool
                    } else {
                        *dom
                    };
                    if r.dom != want || !ok_reg(*r) {
                        return bad(format!("{op:?}: operand {k} in a wrong register"));
                    }
                }
                let want = if op.is_comparison() { Dom::Bool } else { *dom };
                if dst.dom != want || !ok_reg(*dst) {
                    return bad(format!("{op:?}: result in a wrong register"));
                }
                if !supported(*op, *dom) {
                    return bad(format!("{op:?} is not defined on {dom:?}"));
                }
            }
        }
    }
    let want = match (mode, out) {
        (Mode::Epilogue(st), _) => st.dom(),
        (_, o) => out_st(o).dom(),
    };
    if prog.out.dom != want || !ok_reg(prog.out) {
        return bad("result register of a wrong domain".into());
    }
    if let (Mode::Epilogue(st), o) = (mode, out) {
        let acc_ok = matches!(
            (st, o),
            (St::F32 | St::F16 | St::BF16, Out::F32(_)) | (St::F64, Out::F64(_))
        );
        if !acc_ok {
            return bad("epilogue over a wrong accumulator type".into());
        }
    }
    Ok(())
}

fn src_len<T>(s: &Src<'_, T>) -> (usize, bool) {
    match s {
        Src::Full(x) => (x.len(), true),
        Src::Scalar(_) => (1, false),
        Src::Row(r) => (r.len(), false),
        Src::Col(c, _) => (c.len(), false),
        Src::Tile { data, inner, .. } => (if *inner == 0 { 0 } else { data.len() }, false),
    }
}

fn arg_st(a: &Arg<'_>) -> St {
    match a {
        Arg::F32(_) => St::F32,
        Arg::F64(_) => St::F64,
        Arg::F16(_) => St::F16,
        Arg::BF16(_) => St::BF16,
        Arg::I32(_) => St::I32,
        Arg::I64(_) => St::I64,
        Arg::Bool(_) => St::Bool,
    }
}

fn out_st(o: &Out<'_>) -> St {
    match o {
        Out::F32(_) => St::F32,
        Out::F64(_) => St::F64,
        Out::F16(_) => St::F16,
        Out::BF16(_) => St::BF16,
        Out::I32(_) => St::I32,
        Out::I64(_) => St::I64,
        Out::Bool(_) => St::Bool,
    }
}

/// Whether `op` computes in `dom` (what the compiler emits).
pub fn supported(op: EwOp, dom: Dom) -> bool {
    use EwOp::*;
    let float = matches!(dom, Dom::F32 | Dom::F64);
    let int = matches!(dom, Dom::I32 | Dom::I64);
    match op {
        Eq | Ne | Lt | Le | Gt | Ge | Where => true,
        And | Or | Xor | Not | Minimum | Maximum => true,
        Add | Sub | Mul | Div | FloorDiv | Rem | Pow | Neg | Abs | Square | Sign | Relu
        | LeakyRelu | Clamp => float || int,
        _ => float,
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn run_avx512(prog: &Prog, args: &[Arg<'_>], out: Out<'_>, mode: Mode, b: &mut Banks) {
    run_generic::<false>(prog, args, out, mode, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2(prog: &Prog, args: &[Arg<'_>], out: Out<'_>, mode: Mode, b: &mut Banks) {
    run_generic::<false>(prog, args, out, mode, b)
}

/// The interpreter's chunk loop; `NEON`: the common `f32` ops run their aarch64 intrinsic
/// forms ([`exec_neon`]).
#[inline(always)]
fn run_generic<const NEON: bool>(
    prog: &Prog,
    args: &[Arg<'_>],
    mut out: Out<'_>,
    mode: Mode,
    b: &mut Banks,
) {
    let n = out.len();
    let mut start = 0;
    while start < n {
        let len = CH.min(n - start);
        chunk::<NEON>(prog, args, &mut out, mode, b, start, len);
        start += len;
    }
}

/// Pointer to register `r` (a `CH`-element block of its bank).
macro_rules! reg_ptr {
    ($b:expr, $r:expr, f32) => {
        $b.f32.as_mut_ptr().add($r.idx as usize * CH)
    };
    ($b:expr, $r:expr, f64) => {
        $b.f64.as_mut_ptr().add($r.idx as usize * CH)
    };
    ($b:expr, $r:expr, i32) => {
        $b.i32.as_mut_ptr().add($r.idx as usize * CH)
    };
    ($b:expr, $r:expr, i64) => {
        $b.i64.as_mut_ptr().add($r.idx as usize * CH)
    };
    ($b:expr, $r:expr, bool) => {
        $b.bool.as_mut_ptr().add($r.idx as usize * CH)
    };
}

/// The first `n` elements of register `r`, read-only.
macro_rules! rd {
    ($b:expr, $r:expr, $n:expr, $t:tt) => {
        // SAFETY: `validate` checked the register exists; registers are disjoint blocks of
        // `CH` elements and `n <= CH`; a program never reads its destination (SSA).
        unsafe { std::slice::from_raw_parts(reg_ptr!($b, $r, $t) as *const _, $n) }
    };
}

/// The first `n` elements of register `r`, writable.
macro_rules! wr {
    ($b:expr, $r:expr, $n:expr, $t:tt) => {
        // SAFETY: as `rd!`; the destination register differs from every operand (SSA).
        unsafe { std::slice::from_raw_parts_mut(reg_ptr!($b, $r, $t), $n) }
    };
}

#[inline(always)]
fn chunk<const NEON: bool>(
    prog: &Prog,
    args: &[Arg<'_>],
    out: &mut Out<'_>,
    mode: Mode,
    b: &mut Banks,
    start: usize,
    n: usize,
) {
    for i in &prog.ins {
        match i {
            Ins::Load { arg, dst } => {
                if Some(*arg) == mode.out_operand() {
                    load_out(out, mode, b, *dst, start, n)
                } else {
                    load(&args[*arg], b, *dst, start, n)
                }
            }
            Ins::Lit { lit, dst } => match *lit {
                Lit::F32(v) => wr!(b, dst, n, f32).fill(v),
                Lit::F64(v) => wr!(b, dst, n, f64).fill(v),
                Lit::I32(v) => wr!(b, dst, n, i32).fill(v),
                Lit::I64(v) => wr!(b, dst, n, i64).fill(v),
                Lit::Bool(v) => wr!(b, dst, n, bool).fill(v),
            },
            Ins::Conv { src, dst } => conv(b, *src, *dst, n),
            Ins::Op {
                op,
                dom,
                args,
                imm,
                dst,
            } => {
                if !(NEON && *dom == Dom::F32 && exec_neon(b, *op, args, *dst, n)) {
                    exec(b, *op, *dom, args, imm, *dst, n)
                }
            }
        }
    }
    store(out, mode, b, prog.out, start, n);
}

#[inline(always)]
fn widen<T: Copy, U: Copy>(src: &[T], dst: &mut [U], f: impl Fn(T) -> U) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f(*s);
    }
}

/// `dst[k] = f(element start + k of src)` for `k < n`, straight from the broadcast pattern.
#[inline(always)]
fn fill<T: Copy, U: Copy>(
    src: &Src<'_, T>,
    start: usize,
    n: usize,
    dst: &mut [U],
    f: impl Fn(T) -> U,
) {
    let dst = &mut dst[..n];
    let (data, inner, rep) = match *src {
        Src::Full(x) => {
            for (d, s) in dst.iter_mut().zip(&x[start..start + n]) {
                *d = f(*s);
            }
            return;
        }
        Src::Scalar(v) => {
            dst.fill(f(v));
            return;
        }
        Src::Row(r) => (r, r.len(), 1),
        Src::Col(c, inner) => (c, 1, inner),
        Src::Tile { data, inner, rep } => (data, inner, rep),
    };
    let (inner, rep) = (inner.max(1), rep.max(1));
    let blocks = (data.len() / inner).max(1);
    let (mut i, mut k) = (start, 0);
    while k < n {
        let q = i / inner;
        let off = i - q * inner;
        let blk = (q / rep) % blocks;
        let run;
        if inner == 1 {
            run = (rep - q % rep).min(n - k);
            dst[k..k + run].fill(f(data[blk]));
        } else {
            run = (inner - off).min(n - k);
            let s = &data[blk * inner + off..blk * inner + off + run];
            for (d, s) in dst[k..k + run].iter_mut().zip(s) {
                *d = f(*s);
            }
        }
        k += run;
        i += run;
    }
}

// The narrow conversions below are `crate::cvt`'s branch-free functions (bit for bit `half`'s),
// which vectorize in these loops; `half`'s own (a run-time F16C check and a call per element
// unless the crate is built with `f16c`) do not.

/// `x` rounded to `f16` and widened back.
#[inline(always)]
fn round_f16(x: f32) -> f32 {
    crate::cvt::f16_to_f32(crate::cvt::f32_to_f16(x))
}

/// `x` rounded to `bf16` and widened back.
#[inline(always)]
fn round_bf16(x: f32) -> f32 {
    crate::cvt::bf16_to_f32(crate::cvt::f32_to_bf16(x))
}

#[inline(always)]
fn load(arg: &Arg<'_>, b: &mut Banks, dst: Reg, start: usize, n: usize) {
    match arg {
        Arg::F32(s) => fill(s, start, n, wr!(b, dst, n, f32), |x| x),
        Arg::F64(s) => fill(s, start, n, wr!(b, dst, n, f64), |x| x),
        Arg::F16(s) => fill(s, start, n, wr!(b, dst, n, f32), |x: f16| {
            crate::cvt::f16_to_f32(x.to_bits())
        }),
        Arg::BF16(s) => fill(s, start, n, wr!(b, dst, n, f32), |x: bf16| {
            crate::cvt::bf16_to_f32(x.to_bits())
        }),
        Arg::I32(s) => fill(s, start, n, wr!(b, dst, n, i32), |x| x),
        Arg::I64(s) => fill(s, start, n, wr!(b, dst, n, i64), |x| x),
        Arg::Bool(s) => fill(s, start, n, wr!(b, dst, n, bool), |x| x),
    }
}

/// `dst[..n]` = elements `start..start + n` of an operand of the `f32` domain, widened (other
/// domains leave `dst` as it is).
#[inline(always)]
fn load_f32(arg: &Arg<'_>, dst: &mut [f32], start: usize, n: usize) {
    match arg {
        Arg::F32(s) => fill(s, start, n, dst, |x| x),
        Arg::F16(s) => fill(s, start, n, dst, |x: f16| {
            crate::cvt::f16_to_f32(x.to_bits())
        }),
        Arg::BF16(s) => fill(s, start, n, dst, |x: bf16| {
            crate::cvt::bf16_to_f32(x.to_bits())
        }),
        _ => {}
    }
}

/// Operand `k` of an in-place or epilogue program: the output buffer's current contents.
#[inline(always)]
fn load_out(out: &Out<'_>, mode: Mode, b: &mut Banks, dst: Reg, start: usize, n: usize) {
    let r = start..start + n;
    match (out, mode) {
        (Out::F32(o), Mode::Epilogue(St::F16)) => widen(&o[r], wr!(b, dst, n, f32), round_f16),
        (Out::F32(o), Mode::Epilogue(St::BF16)) => widen(&o[r], wr!(b, dst, n, f32), round_bf16),
        (Out::F32(o), _) => wr!(b, dst, n, f32).copy_from_slice(&o[r]),
        (Out::F64(o), _) => wr!(b, dst, n, f64).copy_from_slice(&o[r]),
        (Out::F16(o), _) => widen(&o[r], wr!(b, dst, n, f32), |x: f16| {
            crate::cvt::f16_to_f32(x.to_bits())
        }),
        (Out::BF16(o), _) => widen(&o[r], wr!(b, dst, n, f32), |x: bf16| {
            crate::cvt::bf16_to_f32(x.to_bits())
        }),
        (Out::I32(o), _) => wr!(b, dst, n, i32).copy_from_slice(&o[r]),
        (Out::I64(o), _) => wr!(b, dst, n, i64).copy_from_slice(&o[r]),
        (Out::Bool(o), _) => wr!(b, dst, n, bool).copy_from_slice(&o[r]),
    }
}

#[inline(always)]
fn store(out: &mut Out<'_>, mode: Mode, b: &mut Banks, res: Reg, start: usize, n: usize) {
    let r = start..start + n;
    match (out, mode) {
        (Out::F32(o), Mode::Epilogue(St::F16)) => widen(rd!(b, res, n, f32), &mut o[r], round_f16),
        (Out::F32(o), Mode::Epilogue(St::BF16)) => {
            widen(rd!(b, res, n, f32), &mut o[r], round_bf16)
        }
        (Out::F32(o), _) => o[r].copy_from_slice(rd!(b, res, n, f32)),
        (Out::F64(o), _) => o[r].copy_from_slice(rd!(b, res, n, f64)),
        (Out::F16(o), _) => widen(rd!(b, res, n, f32), &mut o[r], |x| {
            f16::from_bits(crate::cvt::f32_to_f16(x))
        }),
        (Out::BF16(o), _) => widen(rd!(b, res, n, f32), &mut o[r], |x| {
            bf16::from_bits(crate::cvt::f32_to_bf16(x))
        }),
        (Out::I32(o), _) => o[r].copy_from_slice(rd!(b, res, n, i32)),
        (Out::I64(o), _) => o[r].copy_from_slice(rd!(b, res, n, i64)),
        (Out::Bool(o), _) => o[r].copy_from_slice(rd!(b, res, n, bool)),
    }
}

#[inline(always)]
fn conv(b: &mut Banks, src: Reg, dst: Reg, n: usize) {
    use Dom::*;
    macro_rules! cv {
        ($ts:tt, $td:tt, $x:ident => $e:expr) => {
            widen(rd!(b, src, n, $ts), wr!(b, dst, n, $td), |$x: $ts| -> $td {
                $e
            })
        };
    }
    match (src.dom, dst.dom) {
        (F32, F64) => cv!(f32, f64, x => x as f64),
        (F32, I32) => cv!(f32, i32, x => x as i32),
        (F32, I64) => cv!(f32, i64, x => x as i64),
        (F32, Bool) => cv!(f32, bool, x => x != 0.0),
        (F64, F32) => cv!(f64, f32, x => x as f32),
        (F64, I32) => cv!(f64, i32, x => x as i32),
        (F64, I64) => cv!(f64, i64, x => x as i64),
        (F64, Bool) => cv!(f64, bool, x => x != 0.0),
        (I32, F32) => cv!(i32, f32, x => x as f32),
        (I32, F64) => cv!(i32, f64, x => x as f64),
        (I32, I64) => cv!(i32, i64, x => x as i64),
        (I32, Bool) => cv!(i32, bool, x => x != 0),
        (I64, F32) => cv!(i64, f32, x => x as f32),
        (I64, F64) => cv!(i64, f64, x => x as f64),
        (I64, I32) => cv!(i64, i32, x => x as i32),
        (I64, Bool) => cv!(i64, bool, x => x != 0),
        (Bool, F32) => cv!(bool, f32, x => if x { 1.0 } else { 0.0 }),
        (Bool, F64) => cv!(bool, f64, x => if x { 1.0 } else { 0.0 }),
        (Bool, I32) => cv!(bool, i32, x => x as i32),
        (Bool, I64) => cv!(bool, i64, x => x as i64),
        // same domain: a copy (the builder never emits it)
        (F32, F32) => cv!(f32, f32, x => x),
        (F64, F64) => cv!(f64, f64, x => x),
        (I32, I32) => cv!(i32, i32, x => x),
        (I64, I64) => cv!(i64, i64, x => x),
        (Bool, Bool) => cv!(bool, bool, x => x),
    }
}

#[inline(always)]
fn map1<T: Copy, U: Copy>(a: &[T], d: &mut [U], f: impl Fn(T) -> U) {
    for (d, a) in d.iter_mut().zip(a) {
        *d = f(*a);
    }
}

#[inline(always)]
fn map2<T: Copy, U: Copy>(a: &[T], c: &[T], d: &mut [U], f: impl Fn(T, T) -> U) {
    for ((d, a), c) in d.iter_mut().zip(a).zip(c) {
        *d = f(*a, *c);
    }
}

/// The ops of one numeric domain (`kind`: `float32`, `float64` or `int`).
macro_rules! ops_dom {
    ($b:ident, $op:ident, $a:ident, $dst:ident, $n:ident, $t:tt, $i0:ident, $i1:ident, $kind:tt) => {{
        use EwOp::*;
        macro_rules! u {
            ($f:expr) => {
                map1(rd!($b, $a[0], $n, $t), wr!($b, $dst, $n, $t), $f)
            };
        }
        macro_rules! bi {
            ($f:expr) => {
                map2(
                    rd!($b, $a[0], $n, $t),
                    rd!($b, $a[1], $n, $t),
                    wr!($b, $dst, $n, $t),
                    $f,
                )
            };
        }
        macro_rules! cmp {
            ($f:expr) => {
                map2(
                    rd!($b, $a[0], $n, $t),
                    rd!($b, $a[1], $n, $t),
                    wr!($b, $dst, $n, bool),
                    $f,
                )
            };
        }
        match $op {
            Add => bi!(|x: $t, y| Num::add(x, y)),
            Sub => bi!(|x: $t, y| Num::sub(x, y)),
            Mul => bi!(|x: $t, y| Num::mul(x, y)),
            Div => bi!(|x: $t, y| Num::div(x, y)),
            FloorDiv => bi!(|x: $t, y| Num::floor_div(x, y)),
            Rem => bi!(|x: $t, y| Num::rem(x, y)),
            Minimum => bi!(|x: $t, y| Num::min(x, y)),
            Maximum => bi!(|x: $t, y| Num::max(x, y)),
            Eq => cmp!(|x: $t, y| x == y),
            Ne => cmp!(|x: $t, y| x != y),
            Lt => cmp!(|x: $t, y| x < y),
            Le => cmp!(|x: $t, y| x <= y),
            Gt => cmp!(|x: $t, y| x > y),
            Ge => cmp!(|x: $t, y| x >= y),
            Neg => u!(|x: $t| Num::neg(x)),
            Abs => u!(|x: $t| Num::abs(x)),
            Square => u!(|x: $t| s::square(x)),
            Sign => u!(|x: $t| Num::sign(x)),
            Relu => u!(|x: $t| s::relu(x)),
            LeakyRelu => u!(|x: $t| s::leaky_relu(x, $i0)),
            Clamp => u!(|x: $t| s::clamp(x, $i0, $i1)),
            Where => {
                let c = rd!($b, $a[0], $n, bool);
                let (y, z) = (rd!($b, $a[1], $n, $t), rd!($b, $a[2], $n, $t));
                let d = wr!($b, $dst, $n, $t);
                for i in 0..$n {
                    d[i] = if c[i] { y[i] } else { z[i] };
                }
            }
            _ => ops_dom!(@more $kind, $b, $op, $a, $dst, $n, $t, $i0, $i1),
        }
    }};
    (@more int, $b:ident, $op:ident, $a:ident, $dst:ident, $n:ident, $t:tt, $i0:ident, $i1:ident) => {{
        let _ = ($i0, $i1);
        match $op {
            Pow => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: $t, y| s::int_pow(x, y)),
            And => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: $t, y| x & y),
            Or => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: $t, y| x | y),
            Xor => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: $t, y| x ^ y),
            Not => map1(rd!($b, $a[0], $n, $t), wr!($b, $dst, $n, $t), |x: $t| !x),
            _ => {}
        }
    }};
    (@more float32, $b:ident, $op:ident, $a:ident, $dst:ident, $n:ident, $t:tt, $i0:ident, $i1:ident) => {{
        let _ = $i1;
        macro_rules! u {
            ($f:expr) => {
                map1(rd!($b, $a[0], $n, $t), wr!($b, $dst, $n, $t), $f)
            };
        }
        match $op {
            Pow => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: f32, y| Real::powf(x, y)),
            RobustPower => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: f32, y| s::robust_power(x, y, $i0)),
            // f32: the branch-free `vmath` functions (sin/cos stay on libm)
            Exp => u!(vmath::exp),
            Log => u!(vmath::ln),
            Tanh => u!(vmath::tanh),
            Erf => u!(vmath::erf),
            Sigmoid => u!(vmath::sigmoid),
            Softplus => u!(vmath::softplus),
            Gelu => u!(vmath::gelu_erf),
            GeluTanh => u!(vmath::gelu_tanh),
            Sqrt => u!(|x: f32| Real::sqrt(x)),
            Sin => u!(|x: f32| Real::sin(x)),
            Cos => u!(|x: f32| Real::cos(x)),
            RobustSqrt => u!(|x: f32| s::robust_sqrt(x, $i0)),
            RobustLog => u!(|x: f32| s::robust_log(x, $i0)),
            StableReciprocal => u!(|x: f32| s::stable_reciprocal(x, $i0)),
            _ => {}
        }
    }};
    (@more float64, $b:ident, $op:ident, $a:ident, $dst:ident, $n:ident, $t:tt, $i0:ident, $i1:ident) => {{
        let _ = $i1;
        macro_rules! u {
            ($f:expr) => {
                map1(rd!($b, $a[0], $n, $t), wr!($b, $dst, $n, $t), $f)
            };
        }
        match $op {
            Pow => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: f64, y| Real::powf(x, y)),
            RobustPower => map2(rd!($b, $a[0], $n, $t), rd!($b, $a[1], $n, $t), wr!($b, $dst, $n, $t), |x: f64, y| s::robust_power(x, y, $i0)),
            Exp => u!(|x: f64| Real::exp(x)),
            Log => u!(|x: f64| Real::ln(x)),
            Tanh => u!(|x: f64| Real::tanh(x)),
            Erf => u!(|x: f64| Real::erf(x)),
            Sigmoid => u!(|x: f64| s::sigmoid(x)),
            Softplus => u!(|x: f64| s::softplus(x)),
            Gelu => u!(|x: f64| s::gelu_erf(x)),
            GeluTanh => u!(|x: f64| s::gelu_tanh(x)),
            Sqrt => u!(|x: f64| Real::sqrt(x)),
            Sin => u!(|x: f64| Real::sin(x)),
            Cos => u!(|x: f64| Real::cos(x)),
            RobustSqrt => u!(|x: f64| s::robust_sqrt(x, $i0)),
            RobustLog => u!(|x: f64| s::robust_log(x, $i0)),
            StableReciprocal => u!(|x: f64| s::stable_reciprocal(x, $i0)),
            _ => {}
        }
    }};
}

#[inline(always)]
fn exec(b: &mut Banks, op: EwOp, dom: Dom, a: &[Reg; 3], imm: &[Lit; 2], dst: Reg, n: usize) {
    match dom {
        Dom::F32 => {
            let (i0, i1) = (lit_f32(imm[0]), lit_f32(imm[1]));
            ops_dom!(b, op, a, dst, n, f32, i0, i1, float32)
        }
        Dom::F64 => {
            let (i0, i1) = (lit_f64(imm[0]), lit_f64(imm[1]));
            ops_dom!(b, op, a, dst, n, f64, i0, i1, float64)
        }
        Dom::I32 => {
            let (i0, i1) = (lit_i32(imm[0]), lit_i32(imm[1]));
            ops_dom!(b, op, a, dst, n, i32, i0, i1, int)
        }
        Dom::I64 => {
            let (i0, i1) = (lit_i64(imm[0]), lit_i64(imm[1]));
            ops_dom!(b, op, a, dst, n, i64, i0, i1, int)
        }
        Dom::Bool => bool_ops(b, op, a, dst, n),
    }
}

/// The NEON form of an `f32`-domain op, when it has one (`false`: run [`exec`]): the
/// arithmetic, `neg`/`abs`/`square`/`sqrt`/`relu` and the `vmath` functions `exp`, `tanh`,
/// `erf`, `sigmoid`, `gelu` (both forms), four lanes at a time by [`crate::vmath::neon`], bit for
/// bit the scalar forms.
#[cfg(target_arch = "aarch64")]
#[inline(always)]
fn exec_neon(b: &mut Banks, op: EwOp, a: &[Reg; 3], dst: Reg, n: usize) -> bool {
    use crate::vmath::neon::{self as v, ops};
    use EwOp::*;
    macro_rules! u {
        ($fv:expr, $fs:expr) => {
            v::map1(rd!(b, a[0], n, f32), wr!(b, dst, n, f32), $fv, $fs)
        };
    }
    macro_rules! bi {
        ($fv:expr, $fs:expr) => {
            v::map2(
                rd!(b, a[0], n, f32),
                rd!(b, a[1], n, f32),
                wr!(b, dst, n, f32),
                $fv,
                $fs,
            )
        };
    }
    match op {
        Add => bi!(ops::vadd, |x: f32, y| Num::add(x, y)),
        Sub => bi!(ops::vsub, |x: f32, y| Num::sub(x, y)),
        Mul => bi!(ops::vmul, |x: f32, y| Num::mul(x, y)),
        Div => bi!(ops::vdiv, |x: f32, y| Num::div(x, y)),
        Neg => u!(ops::vneg, |x: f32| Num::neg(x)),
        Abs => u!(ops::vabs, |x: f32| Num::abs(x)),
        Square => u!(ops::vsquare, |x: f32| s::square(x)),
        Sqrt => u!(ops::vsqrt, |x: f32| Real::sqrt(x)),
        Relu => u!(v::relu, |x: f32| s::relu(x)),
        Exp => u!(v::exp, vmath::exp),
        Tanh => u!(v::tanh, vmath::tanh),
        Erf => u!(v::erf, vmath::erf),
        Sigmoid => u!(v::sigmoid, vmath::sigmoid),
        Gelu => u!(v::gelu_erf, vmath::gelu_erf),
        GeluTanh => u!(v::gelu_tanh, vmath::gelu_tanh),
        _ => return false,
    }
    true
}

/// Never called: the NEON level exists on aarch64 only.
#[cfg(not(target_arch = "aarch64"))]
#[inline(always)]
fn exec_neon(_: &mut Banks, _: EwOp, _: &[Reg; 3], _: Reg, _: usize) -> bool {
    false
}

fn lit_f32(l: Lit) -> f32 {
    match l {
        Lit::F32(v) => v,
        _ => 0.0,
    }
}
fn lit_f64(l: Lit) -> f64 {
    match l {
        Lit::F64(v) => v,
        _ => 0.0,
    }
}
fn lit_i32(l: Lit) -> i32 {
    match l {
        Lit::I32(v) => v,
        _ => 0,
    }
}
fn lit_i64(l: Lit) -> i64 {
    match l {
        Lit::I64(v) => v,
        _ => 0,
    }
}

#[inline(always)]
fn bool_ops(b: &mut Banks, op: EwOp, a: &[Reg; 3], dst: Reg, n: usize) {
    use EwOp::*;
    macro_rules! bb {
        ($f:expr) => {
            map2(
                rd!(b, a[0], n, bool),
                rd!(b, a[1], n, bool),
                wr!(b, dst, n, bool),
                $f,
            )
        };
    }
    match op {
        Minimum | And => bb!(|x: bool, y: bool| x & y),
        Maximum | Or => bb!(|x: bool, y: bool| x | y),
        Xor => bb!(|x: bool, y: bool| x ^ y),
        Eq => bb!(|x: bool, y: bool| x == y),
        Ne => bb!(|x: bool, y: bool| x != y),
        Lt => bb!(|x: bool, y: bool| !x & y),
        Le => bb!(|x: bool, y: bool| x <= y),
        Gt => bb!(|x: bool, y: bool| x & !y),
        Ge => bb!(|x: bool, y: bool| x >= y),
        Not => map1(rd!(b, a[0], n, bool), wr!(b, dst, n, bool), |x: bool| !x),
        Where => {
            let c = rd!(b, a[0], n, bool);
            let (y, z) = (rd!(b, a[1], n, bool), rd!(b, a[2], n, bool));
            let d = wr!(b, dst, n, bool);
            for i in 0..n {
                d[i] = if c[i] { y[i] } else { z[i] };
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relu_add() -> Prog {
        let mut b = Builder::default();
        let x = b.load(0, St::F32);
        let y = b.load(1, St::F32);
        let s = b.op(EwOp::Add, Dom::F32, &[x, y], [Lit::F32(0.0); 2]);
        let r = b.op(EwOp::Relu, Dom::F32, &[s], [Lit::F32(0.0); 2]);
        b.finish(r)
    }

    #[test]
    fn relu_of_add_with_a_bias_row_on_every_isa() {
        let x: Vec<f32> = (0..1000).map(|i| (i as f32 * 0.37).sin()).collect();
        let bias: Vec<f32> = (0..10).map(|i| i as f32 * 0.1 - 0.5).collect();
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| s::relu(v + bias[i % 10]))
            .collect();
        for isa in Isa::available() {
            let mut out = vec![0f32; 1000];
            isa::with_isa(isa, || {
                run(
                    &relu_add(),
                    &[Arg::F32(Src::Full(&x)), Arg::F32(Src::Row(&bias))],
                    Out::F32(&mut out),
                    Mode::Plain,
                )
                .unwrap()
            });
            assert_eq!(out, want, "{isa:?}");
        }
    }

    #[test]
    fn mixed_domains_where_and_f16_rounding() {
        // where(m, x * 2, cast<f64>(i)) stored as f16
        let mut b = Builder::default();
        let m = b.load(0, St::Bool);
        let x = b.load(1, St::F16);
        let i = b.load(2, St::I64);
        let two = b.lit(Lit::F32(2.0));
        let p = b.op(EwOp::Mul, Dom::F32, &[x, two], [Lit::F32(0.0); 2]);
        let c = b.conv(i, Dom::F32);
        let w = b.op(EwOp::Where, Dom::F32, &[m, p, c], [Lit::F32(0.0); 2]);
        let prog = b.finish(w);
        let mask = [true, false, true, false];
        let xs: Vec<f16> = [0.1f32, 0.2, 0.3, 0.4]
            .iter()
            .map(|&v| f16::from_f32(v))
            .collect();
        let is = [7i64, -3, 9, 100000];
        let mut out = vec![f16::ZERO; 4];
        run(
            &prog,
            &[
                Arg::Bool(Src::Full(&mask)),
                Arg::F16(Src::Full(&xs)),
                Arg::I64(Src::Full(&is)),
            ],
            Out::F16(&mut out),
            Mode::Plain,
        )
        .unwrap();
        let want = [
            f16::from_f32(xs[0].to_f32() * 2.0),
            f16::from_f32(-3.0),
            f16::from_f32(xs[2].to_f32() * 2.0),
            f16::from_f32(100000.0),
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn in_place_and_epilogue_rounding() {
        let mut b = Builder::default();
        let x = b.load(0, St::BF16);
        let y = b.load(1, St::BF16);
        let s = b.op(EwOp::Add, Dom::F32, &[x, y], [Lit::F32(0.0); 2]);
        let prog = b.finish(s);
        let mut acc = vec![1.0039f32, 2.0, 3.0];
        let bias = [bf16::from_f32(0.5)];
        run(
            &prog,
            &[Arg::F32(Src::Scalar(0.0)), Arg::BF16(Src::Scalar(bias[0]))],
            Out::F32(&mut acc),
            Mode::Epilogue(St::BF16),
        )
        .unwrap();
        let r = |v: f32| bf16::from_f32(v).to_f32();
        assert_eq!(acc, vec![r(r(1.0039) + 0.5), r(2.5), r(3.5)]);
    }

    #[test]
    fn broadcast_patterns_read_like_their_definition() {
        // out[i] = a[i] + c[i]: a a `Tile`, c a `Col`, over 1000 elements (several chunks)
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let col: Vec<f32> = (0..7).map(|i| 100.0 * i as f32).collect();
        let (inner, rep) = (3usize, 5usize);
        let mut b = Builder::default();
        let x = b.load(0, St::F32);
        let y = b.load(1, St::F32);
        let s = b.op(EwOp::Add, Dom::F32, &[x, y], [Lit::F32(0.0); 2]);
        let prog = b.finish(s);
        let mut out = vec![0f32; 1000];
        run(
            &prog,
            &[
                Arg::F32(Src::Tile {
                    data: &data,
                    inner,
                    rep,
                }),
                Arg::F32(Src::Col(&col, 9)),
            ],
            Out::F32(&mut out),
            Mode::Plain,
        )
        .unwrap();
        for (i, o) in out.iter().enumerate() {
            let t = data[((i / (inner * rep)) * inner + i % inner) % data.len()];
            let c = col[(i / 9) % col.len()];
            assert_eq!(*o, t + c, "element {i}");
        }
    }

    #[test]
    fn malformed_programs_are_errors() {
        let prog = relu_add();
        let mut out = vec![0f32; 4];
        let x = [1f32; 4];
        // a missing operand
        assert!(run(
            &prog,
            &[Arg::F32(Src::Full(&x))],
            Out::F32(&mut out),
            Mode::Plain
        )
        .is_err());
        // an operand of the wrong type
        let xi = [1i32; 4];
        assert!(run(
            &prog,
            &[Arg::F32(Src::Full(&x)), Arg::I32(Src::Full(&xi))],
            Out::F32(&mut out),
            Mode::Plain
        )
        .is_err());
        // a short operand
        assert!(run(
            &prog,
            &[Arg::F32(Src::Full(&x[..2])), Arg::F32(Src::Full(&x))],
            Out::F32(&mut out),
            Mode::Plain
        )
        .is_err());
    }
}
