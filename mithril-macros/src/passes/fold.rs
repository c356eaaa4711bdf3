//! Constant folding: a primitive whose operands are all constants is evaluated at compile time
//! (by its family's `fold`, in f64 / i64 / bool, then rounded to the node's dtype) and replaced
//! by a constant. A run-time `if` whose condition folds is resolved: its phis become the taken
//! branch's values and that branch's ops run unguarded (DCE then removes the other branch).

use crate::ir::{DType, Graph, Op, Scalar, DT};
use crate::prims::Prim;

pub fn run(g: &mut Graph) -> usize {
    let mut n = 0;
    for id in 0..g.nodes.len() {
        let konst = |g: &Graph, a: usize| match g.nodes[a].op {
            Op::Const(Scalar::Bool(b)) => Some(b),
            _ => None,
        };
        if let Some(w) = g.nodes[id].guard {
            if konst(g, w) == Some(true) {
                g.nodes[id].guard = None;
            }
        }
        let Op::Prim(p) = &g.nodes[id].op else {
            continue;
        };
        if *p == Prim::Phi {
            if let Some(b) = konst(g, g.nodes[id].args[0]) {
                let taken = g.nodes[id].args[if b { 2 } else { 3 }];
                g.replace_uses(id, taken);
                n += 1;
            }
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
        if let Some(s) = p.fold(&vals, out) {
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
