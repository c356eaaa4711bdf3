//! One-pass forms of the most common programs (a bias add with an activation, an activation,
//! a binary op, the `relu` gradient's `where(x > 0, g, 0)`): [`recognize`] finds them once when
//! a program is built, [`run`] executes them as one loop per chunk that reads its operands where
//! they lie and writes the output in place — where the general interpreter makes one pass per
//! instruction (loads and the store included). The element functions are the interpreter's
//! (`f32` domain only), so results are bitwise the same.

use super::{src_len, Arg, Dom, EwOp, Ins, Mode, Out, Reg, St};
use crate::ew::{Src, CH};
// `Isa` names only the x86 and NEON arms (see `isa`).
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_imports))]
use crate::isa::{self, Isa};
use crate::scalar::{self as s, Num};
use crate::vmath;
use half::{bf16, f16};
use std::cell::RefCell;

/// An operand of a one-pass program.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Opnd {
    /// operand `k` of the call (widened to `f32`)
    Arg(usize),
    /// an `f32` literal
    Lit(f32),
}

/// The one-pass form of a program (all in the `f32` domain).
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Fast {
    /// none: the general interpreter runs it
    No,
    /// `post(op(x, y))`; `op: None` is `post(x)`; `post: None` is `op(x, y)`
    Map {
        op: Option<EwOp>,
        post: Option<EwOp>,
        x: Opnd,
        y: Opnd,
    },
    /// `cmp(x, k) ? y : z`
    Sel {
        cmp: EwOp,
        x: Opnd,
        k: Opnd,
        y: Opnd,
        z: Opnd,
    },
    /// `op2(op1(x, y), z)` (`inner_first`) or `op2(z, op1(x, y))`: a matmul epilogue adding a
    /// bias and a residual (`x + (out + b)`). Only [`Rows`] runs it (the interpreter otherwise).
    Chain {
        op1: EwOp,
        op2: EwOp,
        inner_first: bool,
        x: Opnd,
        y: Opnd,
        z: Opnd,
    },
}

fn is_bin(op: EwOp) -> bool {
    matches!(op, EwOp::Add | EwOp::Sub | EwOp::Mul)
}

fn is_post(op: EwOp) -> bool {
    matches!(
        op,
        EwOp::Relu | EwOp::Gelu | EwOp::GeluTanh | EwOp::Tanh | EwOp::Sigmoid
    )
}

fn is_cmp(op: EwOp) -> bool {
    matches!(op, EwOp::Gt | EwOp::Ge | EwOp::Lt | EwOp::Le)
}

fn dst(i: &Ins) -> Reg {
    match i {
        Ins::Load { dst, .. } | Ins::Lit { dst, .. } | Ins::Conv { dst, .. } => *dst,
        Ins::Op { dst, .. } => *dst,
    }
}

/// The one-pass form of the program `ins` with result `out`, if it is one of the shapes above
/// and has no other instruction.
pub(super) fn recognize(ins: &[Ins], out: Reg) -> Fast {
    let mut used = vec![false; ins.len()];
    // the instruction defining `r` before instruction `before` (SSA: the only one)
    let def = |r: Reg, before: usize| ins[..before].iter().rposition(|i| dst(i) == r);
    let f = (|| -> Option<Fast> {
        if out.dom != Dom::F32 {
            return None;
        }
        let opnd = |r: Reg, before: usize, used: &mut Vec<bool>| -> Option<Opnd> {
            if r.dom != Dom::F32 {
                return None;
            }
            let k = def(r, before)?;
            let o = match ins[k] {
                Ins::Load { arg, .. } => Opnd::Arg(arg),
                Ins::Lit {
                    lit: super::Lit::F32(v),
                    ..
                } => Opnd::Lit(v),
                _ => return None,
            };
            used[k] = true;
            Some(o)
        };
        let op_at = |r: Reg, before: usize| -> Option<(usize, EwOp, Dom, [Reg; 3])> {
            let k = def(r, before)?;
            match ins[k] {
                Ins::Op { op, dom, args, .. } => Some((k, op, dom, args)),
                _ => None,
            }
        };
        let (k0, op0, dom0, a0) = op_at(out, ins.len())?;
        if dom0 != Dom::F32 {
            return None;
        }
        used[k0] = true;
        if is_post(op0) {
            if let Some(x) = opnd(a0[0], k0, &mut used) {
                return Some(Fast::Map {
                    op: None,
                    post: Some(op0),
                    x,
                    y: x,
                });
            }
            let (k1, op1, dom1, a1) = op_at(a0[0], k0)?;
            if dom1 != Dom::F32 || !is_bin(op1) {
                return None;
            }
            used[k1] = true;
            let x = opnd(a1[0], k1, &mut used)?;
            let y = opnd(a1[1], k1, &mut used)?;
            Some(Fast::Map {
                op: Some(op1),
                post: Some(op0),
                x,
                y,
            })
        } else if is_bin(op0) {
            // `op0(op1(x, y), z)` or `op0(z, op1(x, y))`, `op0` an add or a multiply
            let inner = |q: usize| op_at(a0[q], k0).filter(|i| i.2 == Dom::F32 && is_bin(i.1));
            let chain = |q: usize, used: &mut Vec<bool>| -> Option<Fast> {
                let (k1, op1, _, a1) = inner(q)?;
                if !matches!(op0, EwOp::Add | EwOp::Mul) {
                    return None;
                }
                used[k1] = true;
                Some(Fast::Chain {
                    op1,
                    op2: op0,
                    inner_first: q == 0,
                    x: opnd(a1[0], k1, used)?,
                    y: opnd(a1[1], k1, used)?,
                    z: opnd(a0[1 - q], k0, used)?,
                })
            };
            if inner(0).is_some() {
                return chain(0, &mut used);
            }
            if inner(1).is_some() {
                return chain(1, &mut used);
            }
            let x = opnd(a0[0], k0, &mut used)?;
            let y = opnd(a0[1], k0, &mut used)?;
            Some(Fast::Map {
                op: Some(op0),
                post: None,
                x,
                y,
            })
        } else if op0 == EwOp::Where {
            if a0[0].dom != Dom::Bool {
                return None;
            }
            let (k1, cmp, dom1, a1) = op_at(a0[0], k0)?;
            if dom1 != Dom::F32 || !is_cmp(cmp) {
                return None;
            }
            used[k1] = true;
            let x = opnd(a1[0], k1, &mut used)?;
            let k = opnd(a1[1], k1, &mut used)?;
            let y = opnd(a0[1], k0, &mut used)?;
            let z = opnd(a0[2], k0, &mut used)?;
            Some(Fast::Sel { cmp, x, k, y, z })
        } else {
            None
        }
    })();
    match f {
        Some(f) if used.iter().all(|&u| u) => f,
        _ => Fast::No,
    }
}

/// How the output buffer's values are rounded when read and written (a matmul epilogue of a
/// narrow type holds `f32` accumulators).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Round {
    No,
    Bf16,
    F16,
}

/// Where the operand of a slot comes from.
#[derive(Clone, Copy)]
enum Kind<'a> {
    /// the output buffer itself (read before it is written, element by element)
    Out,
    /// an `f32` slice read in place
    Direct(&'a [f32]),
    /// a constant, filled into the slot's register once
    Const,
    /// gathered (broadcast pattern, widening) into the slot's register per chunk
    Gather(Arg<'a>),
    /// the output buffer copied into the slot's register per chunk (a second use of it)
    OutCopy,
    /// a slot the program does not read
    Unused,
    /// a `bf16` slice read in place and widened in the pass (the second slot of a `Map` over
    /// the output: a narrow epilogue's bias)
    Bf16(&'a [bf16]),
    /// as `Bf16`, for `f16`
    F16(&'a [f16]),
}

/// Slot registers (thread-local scratch).
struct Regs([[f32; CH]; 4]);

thread_local! {
    static REGS: RefCell<Regs> = const { RefCell::new(Regs([[0.0; CH]; 4])) };
}

/// Runs `f` over `out` when it is a one-pass program and the operands suit it (`f32` output,
/// operands of the `f32` domain of the right lengths); otherwise gives `out` back for the
/// general interpreter (which also reports every malformed case).
pub(super) fn run<'o>(f: Fast, args: &[Arg<'_>], out: Out<'o>, mode: Mode) -> Result<(), Out<'o>> {
    let slots: [Opnd; 4] = match f {
        Fast::No | Fast::Chain { .. } => return Err(out),
        Fast::Map { x, y, .. } => [x, y, Opnd::Lit(0.0), Opnd::Lit(0.0)],
        Fast::Sel { x, k, y, z, .. } => [x, k, y, z],
    };
    let o = match out {
        Out::F32(o) => o,
        out => return Err(out),
    };
    let round = match mode {
        Mode::Plain | Mode::InPlace(_) | Mode::Epilogue(St::F32) => Round::No,
        Mode::Epilogue(St::BF16) => Round::Bf16,
        Mode::Epilogue(St::F16) => Round::F16,
        Mode::Epilogue(_) => return Err(Out::F32(o)),
    };
    let n = o.len();
    let out_k = mode.out_operand();
    let mut kinds = [Kind::Const; 4];
    let mut consts = [0f32; 4];
    let mut p = 4;
    let used = if matches!(f, Fast::Map { .. }) { 2 } else { 4 };
    for (q, s) in slots.iter().enumerate() {
        if q >= used {
            kinds[q] = Kind::Unused;
            continue;
        }
        let k = match *s {
            Opnd::Lit(v) => {
                consts[q] = v;
                continue;
            }
            Opnd::Arg(k) => k,
        };
        if Some(k) == out_k {
            if p == 4 {
                p = q;
                kinds[q] = Kind::Out;
            } else {
                kinds[q] = Kind::OutCopy;
            }
            continue;
        }
        let Some(a) = args.get(k) else {
            return Err(Out::F32(o));
        };
        let (len, full) = match a {
            Arg::F32(s) => src_len(s),
            Arg::F16(s) => src_len(s),
            Arg::BF16(s) => src_len(s),
            _ => return Err(Out::F32(o)),
        };
        if n > 0 && ((full && len < n) || (!full && len == 0)) {
            return Err(Out::F32(o));
        }
        kinds[q] = match *a {
            Arg::F32(Src::Full(x)) => Kind::Direct(x),
            Arg::F32(Src::Scalar(v)) => {
                consts[q] = v;
                Kind::Const
            }
            Arg::F16(Src::Scalar(v)) => {
                consts[q] = v.to_f32();
                Kind::Const
            }
            Arg::BF16(Src::Scalar(v)) => {
                consts[q] = v.to_f32();
                Kind::Const
            }
            Arg::BF16(Src::Full(y)) if q == 1 && p == 0 && used == 2 => Kind::Bf16(y),
            Arg::F16(Src::Full(y)) if q == 1 && p == 0 && used == 2 => Kind::F16(y),
            a => Kind::Gather(a),
        };
    }
    // no scratch registers needed: skip the thread-local
    if kinds.iter().all(|k| {
        matches!(
            k,
            Kind::Out | Kind::Direct(_) | Kind::Unused | Kind::Bf16(_) | Kind::F16(_)
        )
    }) {
        let mut none = NoRegs;
        dispatch(f, &kinds, &consts, p, round, o, &mut none);
        return Ok(());
    }
    REGS.with(|r| {
        let mut fresh;
        let mut guard = r.try_borrow_mut();
        let regs: &mut Regs = match guard.as_mut() {
            Ok(g) => g,
            Err(_) => {
                fresh = Box::new(Regs([[0.0; CH]; 4]));
                &mut fresh
            }
        };
        dispatch(f, &kinds, &consts, p, round, o, regs)
    });
    Ok(())
}

/// [`drive`] on the active ISA.
fn dispatch<R: Scratch>(
    f: Fast,
    kinds: &[Kind<'_>; 4],
    consts: &[f32; 4],
    p: usize,
    round: Round,
    o: &mut [f32],
    regs: &mut R,
) {
    match isa::active() {
        // SAFETY: `active` only returns levels the CPU supports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { drive_avx512(f, kinds, consts, p, round, o, regs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { drive_avx2(f, kinds, consts, p, round, o, regs) },
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => drive::<R, true>(f, kinds, consts, p, round, o, regs),
        _ => drive::<R, false>(f, kinds, consts, p, round, o, regs),
    }
}

/// What a slot reads when it needs no register (never read: [`pass`] only slices it).
static UNUSED: [f32; CH] = [0.0; CH];

/// Scratch registers of the slots: [`Regs`], or none when every slot reads in place.
trait Scratch {
    /// register `q`, writable (`None` for [`NoRegs`])
    fn reg(&mut self, q: usize) -> Option<&mut [f32; CH]>;
    /// register `q` ([`UNUSED`] for [`NoRegs`])
    fn get(&self, q: usize) -> &[f32; CH];
}

impl Scratch for Regs {
    #[inline(always)]
    fn reg(&mut self, q: usize) -> Option<&mut [f32; CH]> {
        Some(&mut self.0[q])
    }
    #[inline(always)]
    fn get(&self, q: usize) -> &[f32; CH] {
        &self.0[q]
    }
}

/// No registers (every slot reads in place or is unused).
struct NoRegs;

impl Scratch for NoRegs {
    #[inline(always)]
    fn reg(&mut self, _: usize) -> Option<&mut [f32; CH]> {
        None
    }
    #[inline(always)]
    fn get(&self, _: usize) -> &[f32; CH] {
        &UNUSED
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn drive_avx512<R: Scratch>(
    f: Fast,
    kinds: &[Kind<'_>; 4],
    consts: &[f32; 4],
    p: usize,
    round: Round,
    o: &mut [f32],
    regs: &mut R,
) {
    drive::<R, false>(f, kinds, consts, p, round, o, regs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn drive_avx2<R: Scratch>(
    f: Fast,
    kinds: &[Kind<'_>; 4],
    consts: &[f32; 4],
    p: usize,
    round: Round,
    o: &mut [f32],
    regs: &mut R,
) {
    drive::<R, false>(f, kinds, consts, p, round, o, regs)
}

#[inline(always)]
fn round_in_place(o: &mut [f32], round: Round) {
    match round {
        Round::No => {}
        // `half`'s rounding, branch-free so that it vectorizes (identical bits:
        // `tests::the_bf16_rounding_is_halfs`)
        Round::Bf16 => o
            .iter_mut()
            .for_each(|x| *x = crate::cvt::bf16_to_f32(crate::cvt::f32_to_bf16(*x))),
        Round::F16 => o
            .iter_mut()
            .for_each(|x| *x = crate::cvt::f16_to_f32(crate::cvt::f32_to_f16(*x))),
    }
}

/// The one-pass loop; `NEON`: the `Map` kernels run [`neon::kernel`] (aarch64 intrinsics).
#[inline(always)]
fn drive<R: Scratch, const NEON: bool>(
    f: Fast,
    kinds: &[Kind<'_>; 4],
    consts: &[f32; 4],
    p: usize,
    round: Round,
    o: &mut [f32],
    regs: &mut R,
) {
    let total = o.len();
    for q in 0..4 {
        if let (Kind::Const, Some(r)) = (kinds[q], regs.reg(q)) {
            r[..CH.min(total)].fill(consts[q]);
        }
    }
    // (the rounding of a narrow epilogue stays in passes of its own: inside the pass it costs
    // more, measured on bf16 `bench_mlp`)
    let mut start = 0;
    while start < total {
        let n = CH.min(total - start);
        let d = &mut o[start..start + n];
        round_in_place(d, round);
        for (q, k) in kinds.iter().enumerate() {
            match (*k, regs.reg(q)) {
                (Kind::Gather(a), Some(r)) => super::load_f32(&a, r, start, n),
                (Kind::OutCopy, Some(r)) => r[..n].copy_from_slice(d),
                _ => {}
            }
        }
        let src = |q: usize| -> &[f32] {
            match kinds[q] {
                Kind::Direct(x) => &x[start..start + n],
                _ => &regs.get(q)[..n],
            }
        };
        let s = [src(0), src(1), src(2), src(3)];
        match kinds[1] {
            Kind::Bf16(y) => kernel_narrow(f, d, &y[start..start + n], |v: bf16| {
                crate::cvt::bf16_to_f32(v.to_bits())
            }),
            Kind::F16(y) => kernel_narrow(f, d, &y[start..start + n], |v: f16| {
                crate::cvt::f16_to_f32(v.to_bits())
            }),
            _ if NEON => neon::kernel(f, p, d, s),
            _ => kernel(f, p, d, s),
        }
        round_in_place(d, round);
        start += n;
    }
}

/// `d[i] = f(slot values at i)`, slot `P` (`< 4`) being `d` itself.
#[inline(always)]
fn pass<const P: usize>(d: &mut [f32], s: [&[f32]; 4], f: impl Fn(f32, f32, f32, f32) -> f32) {
    let n = d.len();
    let (a, b, c, e) = (&s[0][..n], &s[1][..n], &s[2][..n], &s[3][..n]);
    for i in 0..n {
        let o = d[i];
        let v0 = if P == 0 { o } else { a[i] };
        let v1 = if P == 1 { o } else { b[i] };
        let v2 = if P == 2 { o } else { c[i] };
        let v3 = if P == 3 { o } else { e[i] };
        d[i] = f(v0, v1, v2, v3);
    }
}

/// [`pass`] for programs of two slots.
#[inline(always)]
fn pass2(p: usize, d: &mut [f32], s: [&[f32]; 4], f: impl Fn(f32, f32, f32, f32) -> f32) {
    match p {
        0 => pass::<0>(d, s, f),
        1 => pass::<1>(d, s, f),
        _ => pass::<4>(d, s, f),
    }
}

/// [`pass`] for programs of four slots.
#[inline(always)]
fn pass4(p: usize, d: &mut [f32], s: [&[f32]; 4], f: impl Fn(f32, f32, f32, f32) -> f32) {
    match p {
        0 => pass::<0>(d, s, f),
        1 => pass::<1>(d, s, f),
        2 => pass::<2>(d, s, f),
        3 => pass::<3>(d, s, f),
        _ => pass::<4>(d, s, f),
    }
}

/// `d[i] = f(d[i], w(y[i]))`.
#[inline(always)]
fn pass_narrow<Y: Copy>(d: &mut [f32], y: &[Y], w: impl Fn(Y) -> f32, f: impl Fn(f32, f32) -> f32) {
    let n = d.len();
    let y = &y[..n];
    for i in 0..n {
        d[i] = f(d[i], w(y[i]));
    }
}

/// One chunk of a `Map` over the output (slot 0) and a narrow operand `y` (slot 1) widened by
/// `w` (the element functions of [`kernel`]).
#[inline(always)]
fn kernel_narrow<Y: Copy>(f: Fast, d: &mut [f32], y: &[Y], w: impl Fn(Y) -> f32) {
    use EwOp::*;
    let Fast::Map { op, post, .. } = f else {
        return;
    };
    macro_rules! post {
        ($g:expr) => {
            match op {
                None => pass_narrow(d, y, w, |x, _| $g(x)),
                Some(Add) => pass_narrow(d, y, w, |x, y| $g(Num::add(x, y))),
                Some(Sub) => pass_narrow(d, y, w, |x, y| $g(Num::sub(x, y))),
                Some(Mul) => pass_narrow(d, y, w, |x, y| $g(Num::mul(x, y))),
                _ => {}
            }
        };
    }
    match post {
        None => post!(|v: f32| v),
        Some(Relu) => post!(|v: f32| s::relu(v)),
        Some(Gelu) => post!(vmath::gelu_erf),
        Some(GeluTanh) => post!(vmath::gelu_tanh),
        Some(Tanh) => post!(vmath::tanh),
        Some(Sigmoid) => post!(vmath::sigmoid),
        _ => {}
    }
}

/// One chunk of `f` (the element functions of the interpreter's `f32` domain).
#[inline(always)]
fn kernel(f: Fast, p: usize, d: &mut [f32], s: [&[f32]; 4]) {
    use EwOp::*;
    match f {
        Fast::No | Fast::Chain { .. } => {}
        Fast::Map { op, post, .. } => {
            macro_rules! post {
                ($g:expr) => {
                    match op {
                        None => pass2(p, d, s, |x, _, _, _| $g(x)),
                        Some(Add) => pass2(p, d, s, |x, y, _, _| $g(Num::add(x, y))),
                        Some(Sub) => pass2(p, d, s, |x, y, _, _| $g(Num::sub(x, y))),
                        Some(Mul) => pass2(p, d, s, |x, y, _, _| $g(Num::mul(x, y))),
                        _ => {}
                    }
                };
            }
            match post {
                None => post!(|v: f32| v),
                Some(Relu) => post!(|v: f32| s::relu(v)),
                Some(Gelu) => post!(vmath::gelu_erf),
                Some(GeluTanh) => post!(vmath::gelu_tanh),
                Some(Tanh) => post!(vmath::tanh),
                Some(Sigmoid) => post!(vmath::sigmoid),
                _ => {}
            }
        }
        Fast::Sel { cmp, .. } => match cmp {
            Gt => pass4(p, d, s, |x, k, y, z| if x > k { y } else { z }),
            Ge => pass4(p, d, s, |x, k, y, z| if x >= k { y } else { z }),
            Lt => pass4(p, d, s, |x, k, y, z| if x < k { y } else { z }),
            Le => pass4(p, d, s, |x, k, y, z| if x <= k { y } else { z }),
            _ => {}
        },
    }
}

/// A one-pass program prepared for many calls over `f32` rows whose layout does not change
/// between calls (a matmul epilogue, called once per row of each block of the product): which
/// operand feeds which slot is decided once, so a call only slices its operands and runs the
/// loop — no slot analysis, no scratch registers, no literal fills per call.
///
/// Two forms, those of the common epilogues: `post(op(out, y))` (a bias add with an activation;
/// `op: None` is `post(out)`) and `cmp(x, k) ? out : z` with literal `k`, `z` (the `relu`
/// gradient). The element functions are those of the one-pass runner, so results are bitwise the same.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rows {
    f: Fast,
    /// the call operand read in place (`y` of a map, `x` of a select, the first other leaf of
    /// a chain; `usize::MAX`: none)
    arg: usize,
    /// a chain's second other leaf (`usize::MAX`: none)
    arg2: usize,
    /// a chain: which of its leaves `x, y, z` is the output
    pos: u8,
    /// the literals `k`, `z` of a select
    k: f32,
    z: f32,
}

impl Rows {
    /// The prepared form of `f` over an output that stands for operand `out_k` (`None` when the
    /// program has another shape; the general [`run`] then handles it).
    pub(super) fn new(f: Fast, out_k: usize) -> Option<Rows> {
        match f {
            Fast::Map {
                op,
                x: Opnd::Arg(x),
                y,
                ..
            } if x == out_k => {
                let arg = match (op, y) {
                    (None, _) => usize::MAX,
                    (Some(_), Opnd::Arg(k)) if k != out_k => k,
                    _ => return None,
                };
                Some(Rows {
                    f,
                    arg,
                    arg2: usize::MAX,
                    pos: 0,
                    k: 0.0,
                    z: 0.0,
                })
            }
            Fast::Chain {
                x: Opnd::Arg(x),
                y: Opnd::Arg(y),
                z: Opnd::Arg(z),
                ..
            } => {
                let leaves = [x, y, z];
                let pos = leaves.iter().position(|&l| l == out_k)?;
                let mut others = leaves.iter().enumerate().filter(|&(i, _)| i != pos);
                let (&a, &b) = (others.next()?.1, others.next()?.1);
                if a == out_k || b == out_k {
                    return None;
                }
                Some(Rows {
                    f,
                    arg: a,
                    arg2: b,
                    pos: pos as u8,
                    k: 0.0,
                    z: 0.0,
                })
            }
            Fast::Sel {
                x: Opnd::Arg(x),
                k: Opnd::Lit(k),
                y: Opnd::Arg(y),
                z: Opnd::Lit(z),
                ..
            } if y == out_k && x != out_k => Some(Rows {
                f,
                arg: x,
                arg2: usize::MAX,
                pos: 0,
                k,
                z,
            }),
            _ => None,
        }
    }

    /// Runs the program over `out` with operands `args` (the output's own operand is not
    /// read); `false`, with `out` untouched, when the operand it reads in place is not an
    /// `f32` slice covering `out` (the caller then runs the general [`super::run`]).
    #[inline]
    pub fn run(&self, args: &[Arg<'_>], out: &mut [f32]) -> bool {
        let n = out.len();
        let slice = |k: usize| -> Option<&[f32]> {
            if k == usize::MAX {
                return Some(&[]);
            }
            match args.get(k) {
                Some(Arg::F32(Src::Full(x))) if x.len() >= n => Some(&x[..n]),
                _ => None,
            }
        };
        let (Some(x), Some(x2)) = (slice(self.arg), slice(self.arg2)) else {
            return false;
        };
        match isa::active() {
            // SAFETY: `active` only returns levels the CPU supports.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { rows_avx512(self, out, x, x2) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { rows_avx2(self, out, x, x2) },
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::rows(self, out, x, x2),
            _ => rows_kernel(self, out, x, x2),
        }
        true
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
unsafe fn rows_avx512(r: &Rows, d: &mut [f32], x: &[f32], x2: &[f32]) {
    rows_kernel(r, d, x, x2)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn rows_avx2(r: &Rows, d: &mut [f32], x: &[f32], x2: &[f32]) {
    rows_kernel(r, d, x, x2)
}

/// `d[i] = f(d[i], y[i])` (`y` covers `d`: checked by [`Rows::run`]).
#[inline(always)]
fn map_rows(d: &mut [f32], y: &[f32], f: impl Fn(f32, f32) -> f32) {
    let y = &y[..d.len()];
    for (v, &w) in d.iter_mut().zip(y) {
        *v = f(*v, w);
    }
}

/// `d[i] = if c(x[i], k) { d[i] } else { z }`.
#[inline(always)]
fn sel_rows(d: &mut [f32], x: &[f32], k: f32, z: f32, c: impl Fn(f32, f32) -> bool) {
    let x = &x[..d.len()];
    for (v, &a) in d.iter_mut().zip(x) {
        *v = if c(a, k) { *v } else { z };
    }
}

/// `d[i] = f(leaves)` with the output at leaf `pos` of `f(l0, l1, l2)` and `a`, `b` the other
/// two in order (both cover `d`: checked by [`Rows::run`]).
#[inline(always)]
fn chain_rows(pos: u8, d: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    let n = d.len();
    let (a, b) = (&a[..n], &b[..n]);
    // plain loops: `for_each` is a `fold` LLVM may leave un-inlined, compiled for the baseline
    match pos {
        0 => {
            for ((v, &p), &q) in d.iter_mut().zip(a).zip(b) {
                *v = f(*v, p, q);
            }
        }
        1 => {
            for ((v, &p), &q) in d.iter_mut().zip(a).zip(b) {
                *v = f(p, *v, q);
            }
        }
        _ => {
            for ((v, &p), &q) in d.iter_mut().zip(a).zip(b) {
                *v = f(p, q, *v);
            }
        }
    }
}

/// One call of a [`Rows`] program (the element functions of [`kernel`]; a chain's are the
/// plain operations, exact on every ISA).
#[inline(always)]
fn rows_kernel(r: &Rows, d: &mut [f32], x: &[f32], x2: &[f32]) {
    use EwOp::*;
    match r.f {
        Fast::No => {}
        Fast::Chain {
            op1,
            op2,
            inner_first,
            ..
        } => {
            macro_rules! outer {
                ($f1:expr) => {{
                    let f1 = $f1;
                    match (op2, inner_first) {
                        (Add, true) => chain_rows(r.pos, d, x, x2, |a, b, c| f1(a, b) + c),
                        (Add, false) => chain_rows(r.pos, d, x, x2, |a, b, c| c + f1(a, b)),
                        (Mul, true) => chain_rows(r.pos, d, x, x2, |a, b, c| f1(a, b) * c),
                        (Mul, false) => chain_rows(r.pos, d, x, x2, |a, b, c| c * f1(a, b)),
                        _ => {}
                    }
                }};
            }
            match op1 {
                Add => outer!(|a: f32, b: f32| a + b),
                Sub => outer!(|a: f32, b: f32| a - b),
                Mul => outer!(|a: f32, b: f32| a * b),
                _ => {}
            }
        }
        Fast::Map { op, post, .. } => {
            macro_rules! post {
                ($g:expr) => {
                    match op {
                        None => d.iter_mut().for_each(|v| *v = $g(*v)),
                        Some(Add) => map_rows(d, x, |a, b| $g(Num::add(a, b))),
                        Some(Sub) => map_rows(d, x, |a, b| $g(Num::sub(a, b))),
                        Some(Mul) => map_rows(d, x, |a, b| $g(Num::mul(a, b))),
                        _ => {}
                    }
                };
            }
            match post {
                None => post!(|v: f32| v),
                Some(Relu) => post!(|v: f32| s::relu(v)),
                Some(Gelu) => post!(vmath::gelu_erf),
                Some(GeluTanh) => post!(vmath::gelu_tanh),
                Some(Tanh) => post!(vmath::tanh),
                Some(Sigmoid) => post!(vmath::sigmoid),
                _ => {}
            }
        }
        Fast::Sel { cmp, .. } => {
            let (k, z) = (r.k, r.z);
            match cmp {
                Gt => sel_rows(d, x, k, z, |a, k| a > k),
                Ge => sel_rows(d, x, k, z, |a, k| a >= k),
                Lt => sel_rows(d, x, k, z, |a, k| a < k),
                Le => sel_rows(d, x, k, z, |a, k| a <= k),
                _ => {}
            }
        }
    }
}

/// The NEON forms of the `Map` kernels: the same element functions four lanes at a time
/// ([`crate::vmath::neon`]), bit for bit those of [`kernel`] / [`rows_kernel`]; the selects
/// (one compare and a blend, which the baseline copy vectorizes as well) run those.
#[cfg(target_arch = "aarch64")]
mod neon {
    use super::{rows_kernel, s, vmath, EwOp, Fast, Num, Rows};
    use crate::vmath::neon::{self as v, ops};
    use std::arch::aarch64::float32x4_t;

    /// Calls `$body!(fv, fs)` with the vector and scalar forms of `post(op(x, y))`; `$none`
    /// when `op` or `post` has no vector form here.
    macro_rules! with_map {
        ($op:expr, $post:expr, $body:ident, $none:expr) => {{
            use EwOp::*;
            macro_rules! with_post {
                ($gv:expr, $gs:expr) => {
                    match $op {
                        None => $body!(
                            |x: float32x4_t, _y: float32x4_t| $gv(x),
                            |x: f32, _y: f32| $gs(x)
                        ),
                        Some(Add) => $body!(
                            |x: float32x4_t, y: float32x4_t| $gv(ops::vadd(x, y)),
                            |x: f32, y: f32| $gs(Num::add(x, y))
                        ),
                        Some(Sub) => $body!(
                            |x: float32x4_t, y: float32x4_t| $gv(ops::vsub(x, y)),
                            |x: f32, y: f32| $gs(Num::sub(x, y))
                        ),
                        Some(Mul) => $body!(
                            |x: float32x4_t, y: float32x4_t| $gv(ops::vmul(x, y)),
                            |x: f32, y: f32| $gs(Num::mul(x, y))
                        ),
                        _ => $none,
                    }
                };
            }
            match $post {
                None => with_post!(|x: float32x4_t| x, |x: f32| x),
                Some(Relu) => with_post!(v::relu, |x: f32| s::relu(x)),
                Some(Gelu) => with_post!(v::gelu_erf, vmath::gelu_erf),
                Some(GeluTanh) => with_post!(v::gelu_tanh, vmath::gelu_tanh),
                Some(Tanh) => with_post!(v::tanh, vmath::tanh),
                Some(Sigmoid) => with_post!(v::sigmoid, vmath::sigmoid),
                _ => $none,
            }
        }};
    }

    /// One chunk of `f` (see [`super::kernel`]): slot `p` is `d` itself.
    #[inline(always)]
    pub(super) fn kernel(f: Fast, p: usize, d: &mut [f32], sl: [&[f32]; 4]) {
        let Fast::Map { op, post, .. } = f else {
            return super::kernel(f, p, d, sl);
        };
        let n = d.len();
        let (a, b) = (&sl[0][..n], &sl[1][..n]);
        macro_rules! body {
            ($fv:expr, $fs:expr) => {{
                let (fv, fs) = ($fv, $fs);
                match p {
                    0 => v::map2_inplace(d, b, fv, fs),
                    1 => v::map2_inplace(d, a, |o, x| fv(x, o), |o, x| fs(x, o)),
                    _ => v::map2(a, b, d, fv, fs),
                }
            }};
        }
        with_map!(op, post, body, super::kernel(f, p, d, sl))
    }

    /// One call of a [`Rows`] program (see [`rows_kernel`]).
    #[inline(always)]
    pub(super) fn rows(r: &Rows, d: &mut [f32], x: &[f32], x2: &[f32]) {
        let Fast::Map { op, post, .. } = r.f else {
            return rows_kernel(r, d, x, x2);
        };
        let n = d.len();
        macro_rules! body {
            ($fv:expr, $fs:expr) => {{
                let (fv, fs) = ($fv, $fs);
                if op.is_none() {
                    v::map1_inplace(d, |o| fv(o, o), |o| fs(o, o))
                } else {
                    v::map2_inplace(d, &x[..n], fv, fs)
                }
            }};
        }
        with_map!(op, post, body, rows_kernel(r, d, x, x2))
    }
}

/// Never taken: the NEON level exists on aarch64 only.
#[cfg(not(target_arch = "aarch64"))]
mod neon {
    pub(super) use super::kernel;
}

#[cfg(test)]
mod tests {
    use super::super::{run, run_general, Builder, Lit, Prog};
    use super::*;

    const Z: [Lit; 2] = [Lit::F32(0.0); 2];

    fn data(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.731 + seed).sin() * 3.0)
            .map(|v| if v.abs() < 0.2 { 0.0 } else { v })
            .collect()
    }

    /// Runs `prog` through its one-pass form and through the interpreter on every ISA, from the
    /// same initial output `init`; asserts the one-pass form was taken and the bits agree.
    fn same(prog: &Prog, args: &[Arg<'_>], mode: Mode, init: &[f32]) -> Vec<f32> {
        assert_ne!(prog.fast, Fast::No, "{:?}", prog.ins);
        let mut first: Option<Vec<f32>> = None;
        for isa in Isa::available() {
            let (mut a, mut b) = (init.to_vec(), init.to_vec());
            isa::with_isa(isa, || {
                assert!(super::run(prog.fast, args, Out::F32(&mut a), mode).is_ok());
                run_general(prog, args, Out::F32(&mut b), mode).unwrap();
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{isa:?} {:?} {mode:?}", prog.fast);
            if let Some(f) = first.as_deref() {
                assert_eq!(bits(f), bits(&a), "{isa:?} differs from the first ISA");
            }
            first = Some(a);
        }
        first.unwrap_or_default()
    }

    fn map(op: Option<EwOp>, post: Option<EwOp>, lit_y: Option<f32>) -> Prog {
        let mut b = Builder::default();
        let x = b.load(0, St::F32);
        let mut r = x;
        if let Some(op) = op {
            let y = match lit_y {
                Some(v) => b.lit(Lit::F32(v)),
                None => b.load(1, St::F32),
            };
            r = b.op(op, Dom::F32, &[x, y], Z);
        }
        if let Some(p) = post {
            r = b.op(p, Dom::F32, &[r], Z);
        }
        b.finish(r)
    }

    /// `where(cmp(load a, 0), load c, literal)`
    fn sel(cmp: EwOp, a: usize, c: usize) -> Prog {
        let mut b = Builder::default();
        let x = b.load(a, St::F32);
        let k = b.lit(Lit::F32(0.0));
        let m = b.op(cmp, Dom::F32, &[x, k], Z);
        let y = if c == a { x } else { b.load(c, St::F32) };
        let z = b.lit(Lit::F32(-0.5));
        let w = b.op(EwOp::Where, Dom::F32, &[m, y, z], Z);
        b.finish(w)
    }

    #[test]
    fn bias_and_activation_maps_match_the_interpreter() {
        use EwOp::*;
        let n = 1000;
        let (x, y) = (data(n, 0.3), data(n, 1.7));
        let row = data(13, 2.1);
        let zero = vec![0f32; n];
        for op in [None, Some(Add), Some(Sub), Some(Mul)] {
            for post in [
                None,
                Some(Relu),
                Some(Gelu),
                Some(GeluTanh),
                Some(Tanh),
                Some(Sigmoid),
            ] {
                if op.is_none() && post.is_none() {
                    continue;
                }
                let p = map(op, post, None);
                let full = [Arg::F32(Src::Full(&x)), Arg::F32(Src::Full(&y))];
                same(&p, &full, Mode::Plain, &zero);
                let bcast = [Arg::F32(Src::Row(&row)), Arg::F32(Src::Col(&row, 7))];
                same(&p, &bcast, Mode::Plain, &zero);
                let scalar = [Arg::F32(Src::Full(&x)), Arg::F32(Src::Scalar(0.25))];
                same(&p, &scalar, Mode::Plain, &zero[..7]);
                // the output as either operand
                same(&p, &full, Mode::InPlace(0), &y);
                same(&p, &full, Mode::InPlace(1), &y);
                if op.is_some() {
                    same(&map(op, post, Some(-0.75)), &full, Mode::Plain, &zero);
                }
            }
        }
    }

    #[test]
    fn relu_of_a_bias_add_by_hand() {
        let x = [1.0f32, -2.0, 0.5, -0.25];
        let bias = [0.5f32, 1.0];
        let got = same(
            &map(Some(EwOp::Add), Some(EwOp::Relu), None),
            &[Arg::F32(Src::Full(&x)), Arg::F32(Src::Row(&bias))],
            Mode::Plain,
            &[0.0; 4],
        );
        assert_eq!(got, vec![1.5, 0.0, 1.0, 0.75]);
    }

    #[test]
    fn epilogues_round_like_the_interpreter() {
        let n = 700;
        let acc = data(n, 0.9);
        let bias = data(n, 4.2);
        let half_bias: Vec<bf16> = bias.iter().map(|&v| bf16::from_f32(v)).collect();
        let f16_bias: Vec<f16> = bias.iter().map(|&v| f16::from_f32(v)).collect();
        let relu_add = map(Some(EwOp::Add), Some(EwOp::Relu), None);
        let dummy = Arg::F32(Src::Scalar(0.0));
        for st in [St::F32, St::BF16, St::F16] {
            let b = match st {
                St::BF16 => Arg::BF16(Src::Full(&half_bias)),
                St::F16 => Arg::F16(Src::Full(&f16_bias)),
                _ => Arg::F32(Src::Full(&bias)),
            };
            same(&relu_add, &[dummy, b], Mode::Epilogue(st), &acc);
            // every map over the product and a (narrow) operand read in place
            for op in [Some(EwOp::Add), Some(EwOp::Sub), Some(EwOp::Mul)] {
                for post in [
                    None,
                    Some(EwOp::Gelu),
                    Some(EwOp::Tanh),
                    Some(EwOp::Sigmoid),
                ] {
                    same(&map(op, post, None), &[dummy, b], Mode::Epilogue(st), &acc);
                }
            }
            // the product is operand 0; a narrow operand in slot 0 is gathered
            let mut bld = Builder::default();
            let y = bld.load(1, st);
            let x = bld.load(0, st);
            let r = bld.op(EwOp::Sub, Dom::F32, &[y, x], Z);
            same(&bld.finish(r), &[dummy, b], Mode::Epilogue(st), &acc);
            // the relu gradient: where(x > 0, product, -0.5), and the product as both operands
            same(&sel(EwOp::Gt, 1, 0), &[dummy, b], Mode::Epilogue(st), &acc);
            same(&sel(EwOp::Le, 0, 0), &[dummy, b], Mode::Epilogue(st), &acc);
        }
        // by hand: bf16 rounding of the accumulator before and after
        let r = |v: f32| bf16::from_f32(v).to_f32();
        let mut a = vec![1.0039f32, -2.0];
        let b = [bf16::from_f32(0.5)];
        run(
            &relu_add,
            &[dummy, Arg::BF16(Src::Scalar(b[0]))],
            Out::F32(&mut a),
            Mode::Epilogue(St::BF16),
        )
        .unwrap();
        assert_eq!(a, vec![r(r(1.0039) + 0.5), 0.0]);
    }

    #[test]
    fn selects_match_the_interpreter() {
        let n = 1000;
        let (x, y) = (data(n, 0.1), data(n, 2.2));
        let col = data(9, 0.4);
        let zero = vec![0f32; n];
        for cmp in [EwOp::Gt, EwOp::Ge, EwOp::Lt, EwOp::Le] {
            let p = sel(cmp, 0, 1);
            let full = [Arg::F32(Src::Full(&x)), Arg::F32(Src::Full(&y))];
            same(&p, &full, Mode::Plain, &zero);
            same(&p, &full, Mode::InPlace(0), &y);
            same(&p, &full, Mode::InPlace(1), &x);
            let b = [Arg::F32(Src::Col(&col, 11)), Arg::F32(Src::Full(&y))];
            same(&p, &b, Mode::Plain, &zero);
        }
        // by hand
        let got = same(
            &sel(EwOp::Gt, 0, 1),
            &[
                Arg::F32(Src::Full(&[1.0, -1.0, 0.0])),
                Arg::F32(Src::Full(&[5.0, 6.0, 7.0])),
            ],
            Mode::Plain,
            &[0.0; 3],
        );
        assert_eq!(got, vec![5.0, -0.5, -0.5]);
    }

    /// `prog` prepared as [`Rows`] for `mode` on every ISA against the interpreter, from the
    /// output `init`: bitwise the same.
    fn same_rows(prog: &Prog, args: &[Arg<'_>], mode: Mode, init: &[f32]) -> Vec<f32> {
        let r = prog.rows_f32(mode).expect("a Rows form");
        let mut first: Option<Vec<f32>> = None;
        for isa in Isa::available() {
            let (mut a, mut b) = (init.to_vec(), init.to_vec());
            isa::with_isa(isa, || {
                assert!(r.run(args, &mut a));
                run_general(prog, args, Out::F32(&mut b), mode).unwrap();
            });
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&a), bits(&b), "{isa:?} {r:?} {mode:?}");
            if let Some(f) = first.as_deref() {
                assert_eq!(bits(f), bits(&a), "{isa:?} differs from the first ISA");
            }
            first = Some(a);
        }
        first.unwrap_or_default()
    }

    #[test]
    fn prepared_rows_match_the_interpreter() {
        use EwOp::*;
        let dummy = Arg::F32(Src::Scalar(0.0));
        for n in [1, 7, 16, 255, 256, 300, 1000] {
            let (acc, y) = (data(n, 0.9), data(n, 4.2));
            // the maps over the product (operand 0) and a row operand, and a lone activation
            for op in [None, Some(Add), Some(Sub), Some(Mul)] {
                for post in [
                    None,
                    Some(Relu),
                    Some(Gelu),
                    Some(GeluTanh),
                    Some(Tanh),
                    Some(Sigmoid),
                ] {
                    if op.is_none() && post.is_none() {
                        continue;
                    }
                    let p = map(op, post, None);
                    let args = [dummy, Arg::F32(Src::Full(&y))];
                    same_rows(&p, &args, Mode::Epilogue(St::F32), &acc);
                    // in place over operand 0
                    same_rows(&p, &args, Mode::InPlace(0), &acc);
                }
            }
            // the relu gradient where(x cmp 0, product, -0.5), x read in place
            for cmp in [Gt, Ge, Lt, Le] {
                let p = sel(cmp, 1, 0);
                let args = [dummy, Arg::F32(Src::Full(&y))];
                same_rows(&p, &args, Mode::Epilogue(St::F32), &acc);
                same_rows(&p, &args, Mode::InPlace(0), &acc);
            }
        }
        // by hand: relu(acc + y) and where(x > 0, acc, -0.5)
        let args = [dummy, Arg::F32(Src::Full(&[0.5, 1.0, -3.0]))];
        let got = same_rows(
            &map(Some(Add), Some(Relu), None),
            &args,
            Mode::Epilogue(St::F32),
            &[1.0, -2.0, 2.5],
        );
        assert_eq!(got, vec![1.5, 0.0, 0.0]);
        let got = same_rows(
            &sel(Gt, 1, 0),
            &args,
            Mode::Epilogue(St::F32),
            &[1.0, -2.0, 2.5],
        );
        assert_eq!(got, vec![1.0, -2.0, -0.5]);
    }

    /// `op2(op1(a, b), c)` (`inner_first`) or `op2(c, op1(a, b))` over loads of operands
    /// `leaves`.
    fn chain(op1: EwOp, op2: EwOp, inner_first: bool, leaves: [usize; 3]) -> Prog {
        let mut b = Builder::default();
        let l = leaves.map(|k| b.load(k, St::F32));
        let t = b.op(op1, Dom::F32, &[l[0], l[1]], Z);
        let args = if inner_first { [t, l[2]] } else { [l[2], t] };
        let r = b.op(op2, Dom::F32, &args, Z);
        b.finish(r)
    }

    #[test]
    fn chained_epilogues_match_the_interpreter() {
        use EwOp::*;
        let dummy = Arg::F32(Src::Scalar(0.0));
        for n in [1, 7, 16, 255, 256, 300, 1000] {
            let (acc, x, y) = (data(n, 0.9), data(n, 4.2), data(n, 2.6));
            let mut acc_nan = acc.clone();
            acc_nan[n / 2] = f32::NAN;
            let args = [dummy, Arg::F32(Src::Full(&x)), Arg::F32(Src::Full(&y))];
            for op1 in [Add, Sub, Mul] {
                for op2 in [Add, Mul] {
                    for inner_first in [true, false] {
                        // the product (operand 0) at each leaf, the others in either order
                        for leaves in [[0, 1, 2], [1, 0, 2], [1, 2, 0], [2, 1, 0], [0, 2, 1]] {
                            let p = chain(op1, op2, inner_first, leaves);
                            assert!(matches!(p.fast, Fast::Chain { .. }), "{:?}", p.fast);
                            same_rows(&p, &args, Mode::Epilogue(St::F32), &acc);
                            same_rows(&p, &args, Mode::Epilogue(St::F32), &acc_nan);
                            same_rows(&p, &args, Mode::InPlace(0), &acc);
                        }
                    }
                }
            }
        }
        // by hand: the residual epilogue x + (product + bias)
        let (x, bias) = ([1.0f32, -2.0, 0.5], [0.25f32, 0.5, -1.0]);
        let args = [dummy, Arg::F32(Src::Full(&x)), Arg::F32(Src::Full(&bias))];
        let p = chain(Add, Add, false, [0, 2, 1]);
        let got = same_rows(&p, &args, Mode::Epilogue(St::F32), &[2.0, 4.0, -8.0]);
        assert_eq!(got, vec![3.25, 2.5, -8.5]);
        // (product - x) * bias
        let p = chain(Sub, Mul, true, [0, 1, 2]);
        let got = same_rows(&p, &args, Mode::Epilogue(St::F32), &[2.0, 4.0, -8.0]);
        assert_eq!(got, vec![0.25, 3.0, 8.5]);
        // not covered: a literal leaf, the product twice, a subtraction outside, a broadcast
        // operand (the interpreter runs those, with the same results)
        let mut b = Builder::default();
        let (o, l) = (b.load(0, St::F32), b.lit(Lit::F32(0.5)));
        let t = b.op(Add, Dom::F32, &[o, l], Z);
        let y1 = b.load(1, St::F32);
        let r = b.op(Add, Dom::F32, &[t, y1], Z);
        assert_eq!(b.finish(r).rows_f32(Mode::Epilogue(St::F32)), None);
        let p = chain(Add, Add, true, [0, 1, 0]);
        assert_eq!(p.rows_f32(Mode::Epilogue(St::F32)), None);
        assert!(!matches!(
            chain(Add, Sub, true, [0, 1, 2]).fast,
            Fast::Chain { .. }
        ));
        let r = chain(Add, Add, true, [0, 1, 2])
            .rows_f32(Mode::Epilogue(St::F32))
            .unwrap();
        let mut out = vec![1.0f32; 3];
        assert!(!r.run(&[dummy, args[1], Arg::F32(Src::Row(&bias))], &mut out));
        assert_eq!(out, vec![1.0; 3]);
        // a chain outside an epilogue runs in the interpreter
        let mut o = vec![0f32; 3];
        run(&p, &args, Out::F32(&mut o), Mode::Plain).unwrap();
        assert_eq!(o, x.to_vec()); // (0 + x) + 0
    }

    #[test]
    fn prepared_rows_decline_what_they_do_not_cover() {
        use EwOp::*;
        let dummy = Arg::F32(Src::Scalar(0.0));
        let y = data(8, 1.0);
        // no Rows form: a literal operand, the product as the second operand, a plain output,
        // a select reading the product as its condition, narrow epilogues
        assert_eq!(
            map(Some(Add), None, Some(0.5)).rows_f32(Mode::Epilogue(St::F32)),
            None
        );
        assert_eq!(map(Some(Sub), None, None).rows_f32(Mode::InPlace(1)), None);
        assert_eq!(map(Some(Add), None, None).rows_f32(Mode::Plain), None);
        assert_eq!(sel(Gt, 0, 1).rows_f32(Mode::Epilogue(St::F32)), None);
        assert_eq!(
            map(Some(Add), None, None).rows_f32(Mode::Epilogue(St::BF16)),
            None
        );
        // operands it cannot read in place: the caller runs the interpreter, `out` untouched
        let r = map(Some(Add), Some(Relu), None)
            .rows_f32(Mode::Epilogue(St::F32))
            .unwrap();
        let mut out = vec![1.0f32; 8];
        for a in [
            Arg::F32(Src::Scalar(2.0)),
            Arg::F32(Src::Full(&y[..4])),
            Arg::BF16(Src::Full(&[bf16::ONE; 8])),
        ] {
            assert!(!r.run(&[dummy, a], &mut out));
            assert!(!r.run(&[dummy], &mut out));
        }
        assert_eq!(out, vec![1.0; 8]);
    }

    #[test]
    fn other_shapes_are_left_to_the_interpreter() {
        let mut b = Builder::default();
        let x = b.load(0, St::F32);
        let y = b.load(1, St::F32);
        let s = b.op(EwOp::Add, Dom::F32, &[x, y], Z);
        let r = b.op(EwOp::Relu, Dom::F32, &[s], Z);
        let m = b.op(EwOp::Mul, Dom::F32, &[r, y], Z);
        assert_eq!(b.finish(m).fast, Fast::No);
        // an unused instruction
        let mut b = Builder::default();
        let x = b.load(0, St::F32);
        let _ = b.load(1, St::F32);
        let r = b.op(EwOp::Relu, Dom::F32, &[x], Z);
        assert_eq!(b.finish(r).fast, Fast::No);
        // f64
        let mut b = Builder::default();
        let x = b.load(0, St::F64);
        let r = b.op(EwOp::Relu, Dom::F64, &[x], Z);
        assert_eq!(b.finish(r).fast, Fast::No);
        // an f16 output runs in the interpreter, with the same result
        let p = map(None, Some(EwOp::Relu), None);
        let x = [1.5f32, -1.0];
        let mut o = [f16::ZERO; 2];
        run(
            &p,
            &[Arg::F32(Src::Full(&x))],
            Out::F16(&mut o),
            Mode::Plain,
        )
        .unwrap();
        assert_eq!(o, [f16::from_f32(1.5), f16::ZERO]);
    }

    #[test]
    fn the_bf16_rounding_is_halfs() {
        // specials, every rounding boundary pattern around a few exponents, and a sweep
        let mut v: Vec<f32> = vec![
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001),
            f32::from_bits(0xff80_8000),
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1),
            f32::from_bits(0x7f7f_ffff),
        ];
        for hi in [
            0x3f80u32, 0x3f81, 0x0000, 0x0001, 0x7f7f, 0xbf80, 0xff7f, 0x4b00,
        ] {
            for lo in [0u32, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x4000, 0xc000] {
                v.push(f32::from_bits(hi << 16 | lo));
            }
        }
        let mut s = 0x9e37_79b9u32;
        for _ in 0..20_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            v.push(f32::from_bits(s));
        }
        let mut got = v.clone();
        round_in_place(&mut got, Round::Bf16);
        for (x, g) in v.iter().zip(&got) {
            let want = bf16::from_f32(*x).to_f32();
            assert_eq!(g.to_bits(), want.to_bits(), "{:#010x}", x.to_bits());
        }
    }
}
