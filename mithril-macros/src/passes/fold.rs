//! Constant folding: an elementwise primitive whose operands are all constants is evaluated at
//! compile time (in f64 / i64 / bool, then rounded to the node's dtype) and replaced by a
//! constant.

use crate::ir::{DType, Graph, Op, Scalar, DT};
use crate::prims::Prim;

pub fn run(g: &mut Graph) -> usize {
    let mut n = 0;
    for id in 0..g.nodes.len() {
        let Op::Prim(p) = &g.nodes[id].op else {
            continue;
        };
        if !p.is_elementwise() {
            continue;
        }
        let vals: Option<Vec<Scalar>> = g.nodes[id]
            .args
            .iter()
            .map(|&a| match g.nodes[a].op {
                Op::Const(s) => Some(s),
                _ => None,
            })
            .collect();
        let Some(vals) = vals else { continue };
        let Some(DT::Known(out)) = g.nodes[id].dtype.map(|t| g.env.dt(t)) else {
            continue;
        };
        if let Some(s) = eval(p, &vals, out) {
            g.nodes[id].op = Op::Const(round(s, out));
            g.nodes[id].args.clear();
            n += 1;
        }
    }
    n
}

fn round(s: Scalar, t: DType) -> Scalar {
    match t {
        DType::Bool => Scalar::Bool(s.as_f64() != 0.0),
        // integers wrap like the run-time arithmetic; floats saturate like `as`
        DType::I32 => match s {
            Scalar::Int(i) => Scalar::Int(i as i32 as i64),
            o => Scalar::Int(o.as_f64() as i32 as i64),
        },
        DType::I64 => match s {
            Scalar::Int(i) => Scalar::Int(i),
            o => Scalar::Int(o.as_f64() as i64),
        },
        DType::F32 => Scalar::Float(s.as_f64() as f32 as f64),
        DType::F16 => Scalar::Float(half_round(s.as_f64(), false)),
        DType::BF16 => Scalar::Float(half_round(s.as_f64(), true)),
        DType::F64 => Scalar::Float(s.as_f64()),
    }
}

// Round to the nearest f16/bf16 value (ties to even), without a dependency on `half` here.
fn half_round(x: f64, bf: bool) -> f64 {
    let f = x as f32;
    if !f.is_finite() || f == 0.0 {
        return f as f64;
    }
    if bf {
        let b = f.to_bits();
        let r = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
        f32::from_bits(r) as f64
    } else {
        // f16: 10 mantissa bits, exponent range [-14, 15]
        let e = f.abs().log2().floor().clamp(-14.0, 15.0);
        let q = 2f32.powf(e - 10.0);
        let v = (f / q).round_ties_even() * q;
        if v.abs() > 65504.0 {
            f32::INFINITY.copysign(f) as f64
        } else {
            v as f64
        }
    }
}

fn eval(p: &Prim, a: &[Scalar], out: DType) -> Option<Scalar> {
    use Scalar::*;
    let f = |i: usize| a[i].as_f64();
    let ints = a.iter().all(|s| matches!(s, Int(_) | Bool(_))) && !out.is_float();
    let int = |i: usize| match a[i] {
        Int(v) => v,
        Bool(b) => b as i64,
        Float(x) => x as i64,
    };
    let b = |i: usize| f(i) != 0.0;
    Some(match p {
        Prim::Add if ints => Int(int(0).wrapping_add(int(1))),
        Prim::Sub if ints => Int(int(0).wrapping_sub(int(1))),
        Prim::Mul if ints => Int(int(0).wrapping_mul(int(1))),
        Prim::Add => Float(f(0) + f(1)),
        Prim::Sub => Float(f(0) - f(1)),
        Prim::Mul => Float(f(0) * f(1)),
        Prim::Div => Float(f(0) / f(1)),
        Prim::Pow if !ints => Float(f(0).powf(f(1))),
        Prim::Minimum => Float(f(0).min(f(1))),
        Prim::Maximum => Float(f(0).max(f(1))),
        Prim::Eq => Bool(f(0) == f(1)),
        Prim::Ne => Bool(f(0) != f(1)),
        Prim::Lt => Bool(f(0) < f(1)),
        Prim::Le => Bool(f(0) <= f(1)),
        Prim::Gt => Bool(f(0) > f(1)),
        Prim::Ge => Bool(f(0) >= f(1)),
        Prim::And => Bool(b(0) && b(1)),
        Prim::Or => Bool(b(0) || b(1)),
        Prim::Xor => Bool(b(0) ^ b(1)),
        Prim::Not => Bool(!b(0)),
        Prim::Neg if ints => Int(int(0).wrapping_neg()),
        Prim::Neg => Float(-f(0)),
        Prim::Abs if ints => Int(int(0).wrapping_abs()),
        Prim::Abs => Float(f(0).abs()),
        Prim::Exp => Float(f(0).exp()),
        Prim::Log => Float(f(0).ln()),
        Prim::Sqrt => Float(f(0).sqrt()),
        Prim::Sin => Float(f(0).sin()),
        Prim::Cos => Float(f(0).cos()),
        Prim::Tanh => Float(f(0).tanh()),
        Prim::Square if ints => Int(int(0).wrapping_mul(int(0))),
        Prim::Square => Float(f(0) * f(0)),
        Prim::Relu if ints => Int(int(0).max(0)),
        Prim::Relu => Float(if f(0) > 0.0 { f(0) } else { 0.0 }),
        Prim::Sigmoid => Float(1.0 / (1.0 + (-f(0)).exp())),
        Prim::Cast(_) => a[0],
        Prim::Where => {
            if b(0) {
                a[1]
            } else {
                a[2]
            }
        }
        _ => return None,
    })
}
