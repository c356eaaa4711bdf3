//! Random ops: `dropout(x, p = 0.5)`. CPU: `mithril::rt::ops::dropout::dropout_to` (the
//! Philox4x32-10 kernels of `mithril_kernels::philox`); the CUDA C twin of the generator is
//! `mt_philox` in `kernel_text::FUSED_PRELUDE`; on `backend: cuda` the op runs the mask kernel
//! `mithril::rt::cuda::dropout` (`dropout.cu`, the seed and op number as kernel arguments, the
//! call's mode the host `__training`), whose masks are the CPU's bit for bit.
//!
//! The flattener adds the call's mode (`is_training`) as operand 1 and numbers the model's
//! dropout ops (`op`), so masks differ per op; the plan reads the call's seed from the view
//! after the mode's. The gradient is the same op over the output gradient: the same seed, op
//! and element indices give the same mask.

use super::attrs::{get, sig, AttrVal, Sig, UN};
use super::cuda::CudaCx;
use super::grad::Builder;
use super::plan::{f64_lit, PlanCx};
use super::rules::{float_only, ArgDt};
use super::{CallCx, Family};
use crate::ir::{DType, Env, NodeId, Shape, DT};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// The random-op family.
pub struct Rules;

impl Family for Rules {
    fn names(&self) -> &'static [&'static str] {
        &["dropout"]
    }

    fn cuda(&self, p: &Prim, cx: &mut dyn CudaCx) -> Result<TokenStream, String> {
        let Prim::Dropout { p, op } = p else {
            return Err("internal: not a random op".into());
        };
        // operand 1 is the call's mode: the host `__training` (no device read), and the
        // call's seed; the mask kernel computes the CPU's Philox words
        let (c, seed) = (super::cuda::rt(), cx.seed());
        super::cuda::via_f32(cx, "dropout", &[0], |ops| {
            let x = &ops[0];
            quote!(#c::dropout(__dev, #x, #p, #op, #seed, __training)?)
        })
    }

    fn lookup(&self, name: &str) -> Option<Sig> {
        (name == "dropout").then(|| sig(UN, &["p"]))
    }

    fn build(&self, _: &str, attrs: &[(&str, AttrVal)], _: usize) -> Result<Prim, String> {
        let p = match get(attrs, "p") {
            None => 0.5,
            Some(AttrVal::Float(x)) => *x,
            Some(AttrVal::Int(i)) => *i as f64,
            Some(_) => return Err("`dropout`'s `p` must be a number in [0, 1]".into()),
        };
        if !(0.0..=1.0).contains(&p) {
            return Err(format!(
                "`dropout`'s drop probability `p` must be in [0, 1], found {p}"
            ));
        }
        Ok(Prim::Dropout { p, op: 0 })
    }

    fn name(&self, _: &Prim) -> &'static str {
        "dropout"
    }

    fn shape(&self, _: &Prim, _: &mut Env, ins: &[Shape]) -> Result<Shape, String> {
        Ok(ins[0].clone())
    }

    fn dtype(&self, p: &Prim, env: &mut Env, ins: &[ArgDt], default: DType) -> Result<DT, String> {
        float_only(p.name(), env, &ins[..1], default)
    }

    fn vjp(
        &self,
        b: &mut Builder,
        p: &Prim,
        args: &[NodeId],
        _: NodeId,
        gy: NodeId,
    ) -> Vec<Option<NodeId>> {
        // the same mask (same seed, op and element indices) over the output gradient
        vec![Some(b.op(p.clone(), &[gy, args[1]])), None]
    }

    fn plan(&self, p: &Prim, cx: &PlanCx<'_>) -> Result<String, String> {
        match p {
            Prim::Dropout { p, op } => Ok(format!("dropout {} {op} {}", f64_lit(*p), cx.seed_view)),
            _ => Err("internal: not a random op".into()),
        }
    }

    fn call(&self, _: &Prim, _: &CallCx<'_>) -> Result<TokenStream, String> {
        Err("`dropout` runs in the plan form of CPU models only (it reads the call's mode)".into())
    }
}
