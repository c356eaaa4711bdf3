//! Prepared params (`prepare` / `evaluate_prepared` of a CPU model): the weights of the matrix
//! products packed once for the GEMM, instead of at every call.
//!
//! **What is packed.** The second operand of every matrix product of the plan (with or without
//! a fused epilogue) that is a 2-D param, read as is or transposed (`Linear`'s
//! `matmul(input, weight.T)`): it is packed as the GEMM's `B` panels
//! ([`mithril_kernels::gemm::PackedB`]) for the ISA the calls run on now. At run time a product
//! whose `B` is such a param reads the panels in place where the GEMM takes its packed path;
//! the result is **bitwise** that of `evaluate` (the same kernel, blocking and values). Every
//! other product (and a product that takes the GEMV or small path) runs as in `evaluate`.
//!
//! **Why a prepared value can never be stale.** [`Prepared`] owns its own copy of the params,
//! taken when it was made, and gives no mutable access to it: the packed panels are made from
//! that copy and never change, and nothing can change the copy after them. A changed params
//! tree is a different value that has to be prepared again; the prepared one keeps computing
//! with the params it was made from. Each pack also records the address, strides and shape of
//! the param it was packed from, and a product whose operand is not exactly that memory packs
//! its operand itself (so even a plan that copied the param would stay correct).
//!
//! A prepared value is `Send + Sync` (no interior mutation); calls on several threads share it.

use crate::elem::DType;
use crate::params::{ParamTree, TensorView};
use crate::plan::{POp, Plan};
use crate::quant::{b_view, Run};
use half::{bf16, f16};
use mithril_kernels::gemm::{pack_b, GemmElem, PackedB};
use ndarray::ArrayViewD;

/// One packed weight.
#[derive(Clone, Debug)]
pub(crate) enum PackedW {
    F32(PackedB<f32>),
    F64(PackedB<f64>),
    F16(PackedB<f16>),
    BF16(PackedB<bf16>),
}

impl PackedW {
    fn bytes(&self) -> usize {
        match self {
            PackedW::F32(p) => p.bytes(),
            PackedW::F64(p) => p.bytes(),
            PackedW::F16(p) => p.bytes(),
            PackedW::BF16(p) => p.bytes(),
        }
    }
}

/// The element types a [`PackedW`] holds.
pub(crate) trait PackOf: GemmElem {
    /// The pack when it is of this type.
    fn of(p: &PackedW) -> Option<&PackedB<Self>>;
}

macro_rules! pack_of {
    ($t:ty, $v:ident) => {
        impl PackOf for $t {
            fn of(p: &PackedW) -> Option<&PackedB<Self>> {
                match p {
                    PackedW::$v(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}
pack_of!(f32, F32);
pack_of!(f64, F64);
pack_of!(f16, F16);
pack_of!(bf16, BF16);

/// The packed weights of a model, by plan view: `[read as is, read transposed]`.
#[derive(Clone, Debug, Default)]
pub struct Packs {
    by_view: Vec<[Option<PackedW>; 2]>,
}

impl Packs {
    /// The pack of view `view` read transposed (`tb`) or not.
    pub(crate) fn get(&self, view: usize, tb: bool) -> Option<&PackedW> {
        self.by_view
            .get(view)
            .and_then(|w| w[usize::from(tb)].as_ref())
    }

    /// The pack the product `step` of `plan` reads its `B` from (`tb`: the product's own
    /// transpose flag), if any.
    pub(crate) fn for_product(&self, plan: &Plan, b: usize, tb: bool) -> Option<&PackedW> {
        let (view, t) = b_view(plan, b)?;
        self.get(view, tb ^ t)
    }
}

/// `(k, n, row stride, col stride)` of `B` over a row-major `[d0, d1]` param read transposed
/// or not.
fn b_layout(d0: usize, d1: usize, tb: bool) -> (usize, usize, usize, usize) {
    if tb {
        (d1, d0, 1, d1)
    } else {
        (d0, d1, d1, 1)
    }
}

/// The pack of a 2-D standard-layout param read as `B` (transposed or not).
fn pack_view<T: GemmElem>(a: &ArrayViewD<'_, T>, tb: bool) -> Option<PackedB<T>> {
    if a.ndim() != 2 {
        return None;
    }
    let s = a.as_slice()?;
    let (k, n, rs, cs) = b_layout(a.shape()[0], a.shape()[1], tb);
    Some(pack_b(k, n, s, rs, cs))
}

/// Per view, whether a product of `plan` reads it as `B` as is (`[0]`) or transposed (`[1]`):
/// the params' views (`n_inputs..n_inputs + n_params`) that a float product reads as `B`.
fn wanted(plan: &Plan, n_inputs: usize, n_params: usize) -> Vec<[bool; 2]> {
    let mut want = vec![[false; 2]; n_inputs + n_params];
    for s in &plan.nodes {
        let tb = match &s.op {
            POp::FusedMatmul { tb, .. } | POp::Matmul { tb, .. } => *tb,
            _ => continue,
        };
        if !matches!(s.dt, DType::F32 | DType::F64 | DType::F16 | DType::BF16) {
            continue;
        }
        if let Some((v, t)) = s.args.get(1).and_then(|&b| b_view(plan, b)) {
            if (n_inputs..n_inputs + n_params).contains(&v) {
                want[v][usize::from(tb ^ t)] = true;
            }
        }
    }
    want
}

/// The packs of one param leaf: as is (`[0]`) and transposed (`[1]`), where `want` asks.
#[inline(never)]
fn pack_leaf(want: [bool; 2], v: &TensorView<'_>) -> [Option<PackedW>; 2] {
    let pack = |tb: bool| -> Option<PackedW> {
        if !want[usize::from(tb)] {
            return None;
        }
        match v {
            TensorView::F32(a) => pack_view(a, tb).map(PackedW::F32),
            TensorView::F64(a) => pack_view(a, tb).map(PackedW::F64),
            TensorView::F16(a) => pack_view(a, tb).map(PackedW::F16),
            TensorView::BF16(a) => pack_view(a, tb).map(PackedW::BF16),
            _ => None,
        }
    };
    [pack(false), pack(true)]
}

/// A model's params with the weights of its matrix products packed once: what
/// `evaluate_prepared` runs with (made by a model's `prepare`). See the module docs.
///
/// Not `Clone` on purpose: a clone's params would live at other addresses, which its packs
/// (tied to the memory they were packed from) would not fit; prepare again instead.
#[derive(Debug)]
pub struct Prepared<P> {
    params: P,
    packs: Packs,
    /// (name, transposed) of every packed weight, in the params' order
    names: Vec<(String, bool)>,
}

impl<P: ParamTree + Clone> Prepared<P> {
    /// Copies `params` and packs, from the copy, the weights `plan`'s matrix products read
    /// as `B` (`n_inputs`: the number of input views before the params).
    pub fn new(plan: &Plan, n_inputs: usize, params: &P) -> Self {
        // (the work is in the non-generic `wanted` / `pack_leaf`, compiled once in this crate:
        // only this walk is instantiated per model, in the model's crate)
        let params = params.clone();
        let n_params = params.names().len();
        let want = wanted(plan, n_inputs, n_params);
        let mut by_view: Vec<[Option<PackedW>; 2]> = vec![[None, None]; n_inputs + n_params];
        let mut names = Vec::new();
        let mut idx = 0;
        params.visit(&mut |name, v| {
            let view = n_inputs + idx;
            idx += 1;
            let packs = pack_leaf(want[view], &v);
            for (tb, p) in packs.iter().enumerate() {
                if p.is_some() {
                    names.push((name.to_string(), tb == 1));
                }
            }
            by_view[view] = packs;
        });
        Prepared {
            params,
            packs: Packs { by_view },
            names,
        }
    }

    /// The params it was made from (its own copy; read-only).
    pub fn params(&self) -> &P {
        &self.params
    }

    /// What generated code hands the plan run.
    pub fn run(&self) -> Run<'_> {
        Run::Packed(&self.packs)
    }

    /// The dotted names of the packed weights, in the params' order (a weight that products
    /// read both as is and transposed is packed twice and named twice).
    pub fn packed(&self) -> Vec<&str> {
        self.names.iter().map(|(n, _)| n.as_str()).collect()
    }

    /// Bytes the packed copies take (besides the params' own copy).
    pub fn packed_bytes(&self) -> usize {
        self.packs
            .by_view
            .iter()
            .flatten()
            .flatten()
            .map(PackedW::bytes)
            .sum()
    }
}
