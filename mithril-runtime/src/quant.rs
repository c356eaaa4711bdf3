//! int8 inference (`quantization: int8` models): post-training quantization of the weights of
//! the matrix products, calibration of the activation scales, and the quantized params'
//! safetensors form.
//!
//! **What is quantized.** Every f32 `matmul` of a plan (with or without a fused epilogue)
//! whose second operand is a 2-D param (read as is or transposed, as `Linear`'s
//! `matmul(input, weight.T)` does) and whose first operand is not transposed: its weight is
//! quantized per output channel (symmetric, `scale[j] = max |W(·, j)| / 127`, int8 values in
//! `[-127, 127]`) and packed once ([`mithril_kernels::qgemm::QPackedB`]); at run time the
//! activation operand is quantized per tensor (`u8`/`i8` in `[-127, 127]`) with either
//!
//! - a **dynamic** scale: `max |A| / 127` of the call's own values ([`Quantized::new`] without
//!   a calibration; what a model's `quantize` makes), or
//! - a **static** scale from a calibration run over user batches ([`Calibration`]; a model's
//!   `calibrate`): `max |A| / 127` over every batch, values beyond it clamped at run time.
//!
//! The product accumulates in `i32`; the dequantization (`acc · s_A · scale[j]`) is fused into
//! the GEMM's store and the matmul's epilogue (bias, activation, ...) runs on the result in
//! f32, as in the f32 model. Every other op (and a product whose first operand is not a
//! 2-D matrix at run time) runs in f32, unchanged.
//!
//! **Convolutions**: the param weight of every f32 forward convolution is quantized per output
//! channel (its dim 0), that of every f32 transposed convolution per output channel of the
//! transposed convolution (dim 1 × groups: [`QConvTransposeWeight`]); the input per tensor as
//! above. The saved `_scale` has one value per output channel in both cases.
//!
//! **Saved form** ([`Quantized::save_safetensors`]): a quantized weight `fc1.weight` is stored
//! as an `I8` tensor of the param's shape under its own name, with `fc1.weight_scale` (`F32`,
//! one per output channel) and, when calibrated, `fc1.weight_input_scale` (`F32`, shape `[]`:
//! the static activation scale); every other param as in [`ParamTree::save_safetensors`]. The
//! header's metadata says `"mithril.quantization": "int8"`.

use crate::elem::DType;
use crate::params::{
    decode_into, io_at, st_dtype, write_atomic, Leaf, ParamTree, TensorView, TensorViewMut,
};
use crate::plan::{POp, Plan};
use crate::{Error, Result};
use mithril_kernels::conv::{Geom, QConvTransposeWeight, QConvWeight};
use mithril_kernels::qgemm::{self, QPackedB};
use safetensors::tensor::{Dtype, SafeTensors};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

/// What a plan run does about quantization (generated code passes it to [`run`]).
#[derive(Clone, Copy, Debug, Default)]
pub enum Run<'q> {
    /// The f32 model.
    #[default]
    Off,
    /// The f32 model, recording the activation ranges of the quantizable products.
    Calibrate(&'q Calibration),
    /// int8 products with these weights.
    Int8(&'q QState),
    /// The model's own products, with these prepacked weights ([`crate::prepack`]).
    Packed(&'q crate::prepack::Packs),
}

/// The activation ranges seen by calibration runs: per weight, the largest `|A|` over every
/// product that reads it, over every batch.
#[derive(Debug, Default)]
pub struct Calibration {
    max: Mutex<HashMap<usize, f32>>,
}

impl Calibration {
    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn record(&self, view: usize, m: f32) {
        if let Ok(mut g) = self.max.lock() {
            let e = g.entry(view).or_insert(0.0);
            if m > *e {
                *e = m;
            }
        }
    }

    fn max_abs(&self, view: usize) -> Option<f32> {
        self.max.lock().ok().and_then(|g| g.get(&view).copied())
    }

    fn is_empty(&self) -> bool {
        self.max.lock().map(|g| g.is_empty()).unwrap_or(true)
    }
}

/// One quantized weight.
#[derive(Clone, Debug)]
pub struct QWeight {
    pub(crate) packed: QPackedB,
    /// the product reads the param transposed (`W[n, k]` as `B = Wᵀ`)
    pub(crate) tb: bool,
    /// static activation `(multiplier, scale)`; `None`: dynamic
    pub(crate) act: Option<(f32, f32)>,
}

/// One quantized convolution weight (`[o, c / groups, *kernel]`).
#[derive(Clone, Debug)]
pub struct QConv {
    pub(crate) w: QConvW,
    /// the param's shape
    pub(crate) shape: Vec<usize>,
    /// static activation `(multiplier, scale)`; `None`: dynamic
    pub(crate) act: Option<(f32, f32)>,
}

/// A quantized convolution weight: of a forward convolution (scales per output channel `o`,
/// the weight's dim 0) or of a transposed one (scales per output channel `c`: dim 1 × groups).
#[derive(Clone, Debug)]
pub(crate) enum QConvW {
    Forward(QConvWeight),
    Transpose(QConvTransposeWeight),
}

impl QConvW {
    /// The weight's dim 0 (all groups).
    fn o(&self) -> usize {
        match self {
            QConvW::Forward(w) => w.o(),
            QConvW::Transpose(w) => w.o(),
        }
    }
    /// Values per dim-0 row.
    fn red(&self) -> usize {
        match self {
            QConvW::Forward(w) => w.red(),
            QConvW::Transpose(w) => w.red(),
        }
    }
    /// The int8 value at row `o`, position `r` of the row.
    fn get(&self, o: usize, r: usize) -> i8 {
        match self {
            QConvW::Forward(w) => w.get(o, r),
            QConvW::Transpose(w) => w.get(o, r),
        }
    }
    /// Per output channel.
    fn scales(&self) -> Vec<f32> {
        match self {
            QConvW::Forward(w) => w.scales(),
            QConvW::Transpose(w) => w.scales(),
        }
    }
    fn bytes(&self) -> usize {
        match self {
            QConvW::Forward(w) => w.bytes(),
            QConvW::Transpose(w) => w.bytes(),
        }
    }
    /// Whether it fits geometry `g` (a transposed convolution's: the forward convolution it
    /// is the input gradient of) of a convolution of kind `transpose`.
    pub(crate) fn fits(&self, g: &Geom, transpose: bool) -> bool {
        match self {
            QConvW::Forward(w) => !transpose && w.fits(g),
            QConvW::Transpose(w) => transpose && w.fits(g),
        }
    }
}

/// The quantized weights of a model, by plan view.
#[derive(Clone, Debug, Default)]
pub struct QState {
    weights: Vec<Option<QWeight>>,
    convs: Vec<Option<QConv>>,
}

impl QState {
    pub(crate) fn weight(&self, view: usize) -> Option<&QWeight> {
        self.weights.get(view).and_then(|w| w.as_ref())
    }

    pub(crate) fn conv(&self, view: usize) -> Option<&QConv> {
        self.convs.get(view).and_then(|w| w.as_ref())
    }

    /// The static activation scale of the quantized weight at `view` (`None`: dynamic, or
    /// not quantized).
    fn act(&self, view: usize) -> Option<(f32, f32)> {
        self.weight(view)
            .and_then(|w| w.act)
            .or_else(|| self.conv(view).and_then(|c| c.act))
    }
}

/// The param views `plan` quantizes as convolution weights (views `params`), each with its
/// convolution's groups and whether it is transposed: the weight (read as is) of every f32
/// forward or transposed convolution (the first convolution that reads a weight decides).
fn conv_views(plan: &Plan, params: std::ops::Range<usize>) -> HashMap<usize, (usize, bool)> {
    use crate::ops::conv::ConvKind;
    let mut out = HashMap::new();
    for s in &plan.nodes {
        let (POp::Conv(spec) | POp::ConvEpi { spec, .. }) = &s.op else {
            continue;
        };
        let transpose = match spec.kind {
            ConvKind::Forward => false,
            ConvKind::Transpose => true,
            _ => continue,
        };
        if s.dt != DType::F32 {
            continue;
        }
        if let Some((v, false)) = s.args.get(1).and_then(|&b| b_view(plan, b)) {
            if params.contains(&v) {
                out.entry(v).or_insert((spec.groups, transpose));
            }
        }
    }
    out
}

/// The view (and whether it is read transposed) behind operand node `id`, through aliases and
/// 2-D transposes.
pub(crate) fn b_view(plan: &Plan, mut id: usize) -> Option<(usize, bool)> {
    let mut t = false;
    for _ in 0..8 {
        let s = plan.nodes.get(id)?;
        match &s.op {
            POp::View(k) => return Some((*k, t)),
            POp::Alias => id = *s.args.first()?,
            POp::Transpose(p) if p[..] == [1, 0] => {
                t = !t;
                id = *s.args.first()?;
            }
            _ => return None,
        }
    }
    None
}

/// The param views `plan` quantizes (views `params`), each with whether it is read transposed:
/// the second operand of every f32 matmul without a transposed first operand.
fn weight_views(plan: &Plan, params: std::ops::Range<usize>) -> HashMap<usize, bool> {
    let mut out = HashMap::new();
    for s in &plan.nodes {
        let ta = match &s.op {
            POp::FusedMatmul { ta, .. } | POp::Matmul { ta, .. } => *ta,
            _ => continue,
        };
        if ta || s.dt != DType::F32 {
            continue;
        }
        let tb = match &s.op {
            POp::FusedMatmul { tb, .. } | POp::Matmul { tb, .. } => *tb,
            _ => false,
        };
        if let Some((v, t)) = s.args.get(1).and_then(|&b| b_view(plan, b)) {
            if params.contains(&v) {
                out.entry(v).or_insert(tb ^ t);
            }
        }
    }
    out
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

/// A model's params with its quantized weights: what `evaluate_quantized` runs with. Made by
/// a `quantization: int8` model's `quantize` (dynamic activation scales), `calibrate`
/// (static ones) or `load_quantized`.
///
/// It keeps the f32 params too (the quantized weights dequantized, when loaded from a
/// quantized file): the shape checks read them, and a product that cannot run in int8 at run
/// time (its activation is not a 2-D matrix) falls back to them.
#[derive(Clone, Debug)]
pub struct Quantized<P> {
    params: P,
    state: QState,
    /// (view, name) of every quantized weight, in the params' order
    names: Vec<(usize, String)>,
}

impl<P: ParamTree + Clone> Quantized<P> {
    /// Quantizes the weights of `params` that `plan` multiplies (see the module docs); with
    /// `cal`, the activation scales are static (from its ranges; a weight it never saw keeps a
    /// dynamic scale), else dynamic. `n_inputs`: the number of input views before the params.
    /// `Err` when `cal` saw no batch at all.
    pub fn new(
        model: &str,
        plan: &Plan,
        n_inputs: usize,
        params: &P,
        cal: Option<&Calibration>,
    ) -> Result<Self> {
        if cal.is_some_and(|c| c.is_empty()) {
            return Err(Error::op(
                model,
                "calibrate: no batch reached a quantized matrix product (give at least one batch)",
            ));
        }
        let n_params = params.names().len();
        let wv = weight_views(plan, n_inputs..n_inputs + n_params);
        let cv = conv_views(plan, n_inputs..n_inputs + n_params);
        let mut weights: Vec<Option<QWeight>> = vec![None; n_inputs + n_params];
        let mut convs: Vec<Option<QConv>> = vec![None; n_inputs + n_params];
        let mut names = Vec::new();
        let mut idx = 0;
        params.visit(&mut |name, v| {
            let view = n_inputs + idx;
            idx += 1;
            if let (Some(&(groups, transpose)), TensorView::F32(a)) = (cv.get(&view), &v) {
                let o = a.shape()[0];
                if a.ndim() < 3 || groups == 0 || !o.is_multiple_of(groups) {
                    return;
                }
                let red: usize = a.shape()[1..].iter().product();
                let a = a.as_standard_layout();
                let Some(s) = a.as_slice() else {
                    return;
                };
                let act = cal.and_then(|c| c.max_abs(view)).map(static_scale);
                let w = if transpose {
                    let taps: usize = a.shape()[2..].iter().product();
                    QConvW::Transpose(QConvTransposeWeight::quantize(
                        o,
                        groups,
                        a.shape()[1],
                        taps,
                        s,
                    ))
                } else {
                    QConvW::Forward(QConvWeight::quantize(o, groups, red, s))
                };
                convs[view] = Some(QConv {
                    w,
                    shape: a.shape().to_vec(),
                    act,
                });
                names.push((view, name.to_string()));
                return;
            }
            let (Some(&tb), TensorView::F32(a)) = (wv.get(&view), v) else {
                return;
            };
            if a.ndim() != 2 {
                return;
            }
            let (d0, d1) = (a.shape()[0], a.shape()[1]);
            let a = a.as_standard_layout();
            let Some(s) = a.as_slice() else {
                return;
            };
            let (k, n, rs, cs) = b_layout(d0, d1, tb);
            let act = cal.and_then(|c| c.max_abs(view)).map(static_scale);
            weights[view] = Some(QWeight {
                packed: QPackedB::quantize(k, n, s, rs, cs),
                tb,
                act,
            });
            names.push((view, name.to_string()));
        });
        Ok(Quantized {
            params: params.clone(),
            state: QState { weights, convs },
            names,
        })
    }

    /// The f32 params (shape checks, and the products that stay f32).
    pub fn params(&self) -> &P {
        &self.params
    }

    /// What generated code hands the plan run.
    pub fn run(&self) -> Run<'_> {
        Run::Int8(&self.state)
    }

    /// The dotted names of the quantized weights, in the params' order.
    pub fn quantized(&self) -> Vec<&str> {
        self.names.iter().map(|(_, n)| n.as_str()).collect()
    }

    /// Whether the activation scales are static (calibrated), for every quantized weight.
    pub fn is_static(&self) -> bool {
        !self.names.is_empty() && self.names.iter().all(|(v, _)| self.state.act(*v).is_some())
    }

    /// The int8 values of weight `name` in the param's own shape (row-major) and its
    /// per-output-channel scales; `None` when `name` is not quantized.
    pub fn weight(&self, name: &str) -> Option<(Vec<usize>, Vec<i8>, Vec<f32>)> {
        let (v, _) = self.names.iter().find(|(_, n)| n == name)?;
        if let Some(c) = self.state.conv(*v) {
            let (o, red) = (c.w.o(), c.w.red());
            let q = (0..o * red).map(|i| c.w.get(i / red, i % red)).collect();
            return Some((c.shape.clone(), q, c.w.scales()));
        }
        let w = self.state.weight(*v)?;
        let (k, n) = (w.packed.k(), w.packed.n());
        let (d0, d1) = if w.tb { (n, k) } else { (k, n) };
        let mut q = Vec::with_capacity(d0 * d1);
        for r in 0..d0 {
            for c in 0..d1 {
                q.push(if w.tb {
                    w.packed.get(c, r)
                } else {
                    w.packed.get(r, c)
                });
            }
        }
        Some((vec![d0, d1], q, w.packed.scales().to_vec()))
    }

    /// The static activation scale of weight `name`'s products (`None`: dynamic, or not
    /// quantized).
    pub fn input_scale(&self, name: &str) -> Option<f32> {
        let (v, _) = self.names.iter().find(|(_, n)| n == name)?;
        self.state.act(*v).map(|(_, s)| s)
    }

    /// Bytes of the packed int8 weights (with their scales and column sums).
    pub fn quantized_bytes(&self) -> usize {
        self.state
            .weights
            .iter()
            .flatten()
            .map(|w| w.packed.bytes())
            .sum::<usize>()
            + self
                .state
                .convs
                .iter()
                .flatten()
                .map(|c| c.w.bytes())
                .sum::<usize>()
    }

    /// The quantized params as safetensors bytes (names in the module docs).
    pub fn to_safetensors_bytes(&self) -> Result<Vec<u8>> {
        let mut leaves: Vec<(String, Leaf)> = Vec::new();
        self.params.visit(&mut |name, v| {
            if let Some((shape, q, scales)) = self.weight(name) {
                let n = scales.len();
                leaves.push((
                    name.to_string(),
                    Leaf {
                        dtype: Dtype::I8,
                        shape,
                        data: q.iter().map(|&x| x as u8).collect(),
                    },
                ));
                leaves.push((
                    format!("{name}_scale"),
                    Leaf {
                        dtype: Dtype::F32,
                        shape: vec![n],
                        data: scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
                    },
                ));
                if let Some(s) = self.input_scale(name) {
                    leaves.push((
                        format!("{name}_input_scale"),
                        Leaf {
                            dtype: Dtype::F32,
                            shape: vec![],
                            data: s.to_le_bytes().to_vec(),
                        },
                    ));
                }
            } else {
                leaves.push((
                    name.to_string(),
                    Leaf {
                        dtype: st_dtype(v.dtype()),
                        shape: v.shape().to_vec(),
                        data: v.to_le_bytes(),
                    },
                ));
            }
        });
        let meta = HashMap::from([
            ("format".to_string(), "pt".to_string()),
            ("mithril.quantization".to_string(), "int8".to_string()),
        ]);
        safetensors::serialize(leaves, Some(meta))
            .map_err(|e| Error::Params(format!("cannot serialize to safetensors: {e}")))
    }

    /// Saves [`Self::to_safetensors_bytes`] to `path` (atomically, as
    /// [`ParamTree::save_safetensors`]).
    pub fn save_safetensors(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path.as_ref(), &self.to_safetensors_bytes()?)
    }

    /// Loads quantized params saved by [`Self::save_safetensors`] into `params` (a tree of the
    /// model's layout, e.g. `randomize_params(0)`): a weight the plan quantizes may be stored
    /// as `I8` with its `_scale` (and optional `_input_scale`) — used as is, and dequantized
    /// into the f32 params — or as a float tensor (then quantized here, with dynamic
    /// activation scales); every other param as [`ParamTree::load_safetensors_bytes`] reads it.
    /// Every problem is an [`Error::Params`] naming the tensor.
    pub fn load_bytes(
        model: &str,
        plan: &Plan,
        n_inputs: usize,
        mut params: P,
        bytes: &[u8],
    ) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::Params(format!("not a valid safetensors file: {e}")))?;
        let n_params = params.names().len();
        let wv = weight_views(plan, n_inputs..n_inputs + n_params);
        let cv = conv_views(plan, n_inputs..n_inputs + n_params);
        let mut loaded: Vec<Option<QWeight>> = vec![None; n_inputs + n_params];
        let mut loaded_convs: Vec<Option<QConv>> = vec![None; n_inputs + n_params];
        let mut idx = 0;
        params.visit_mut(&mut |name, dst| {
            let view = n_inputs + idx;
            idx += 1;
            let t = st.tensor(name).map_err(|_| {
                Error::Params(format!(
                    "missing tensor `{name}` (expected {}{})",
                    dst.dtype(),
                    crate::check::format_shape(dst.shape())
                ))
            })?;
            if dst.shape() != t.shape() {
                return Err(Error::Params(format!(
                    "tensor `{name}`: expected shape {}, found {} in the file",
                    crate::check::format_shape(dst.shape()),
                    crate::check::format_shape(t.shape())
                )));
            }
            match (wv.get(&view), t.dtype(), dst) {
                (Some(&tb), Dtype::I8, TensorViewMut::F32(mut a)) if a.ndim() == 2 => {
                    let (d0, d1) = (a.shape()[0], a.shape()[1]);
                    let (k, n, rs, cs) = b_layout(d0, d1, tb);
                    let scales = read_scales(&st, name, n)?;
                    let q: Vec<i8> = t.data().iter().map(|&b| b as i8).collect();
                    let packed = QPackedB::from_i8(k, n, &q, rs, cs, scales.clone())
                        .map_err(|e| Error::Params(format!("tensor `{name}`: {e}")))?;
                    for ((r, c), x) in a.indexed_iter_mut().map(|(ix, x)| ((ix[0], ix[1]), x)) {
                        let j = if tb { r } else { c };
                        *x = f32::from(q[r * d1 + c]) * scales[j];
                    }
                    let act = read_input_scale(&st, name)?;
                    loaded[view] = Some(QWeight { packed, tb, act });
                    Ok(())
                }
                (None, Dtype::I8, TensorViewMut::F32(mut a))
                    if a.ndim() >= 3 && cv.contains_key(&view) =>
                {
                    let (o, (groups, transpose)) = (a.shape()[0], cv[&view]);
                    let red: usize = a.shape()[1..].iter().product();
                    let q: Vec<i8> = t.data().iter().map(|&b| b as i8).collect();
                    let bad = |e: String| Error::Params(format!("tensor `{name}`: {e}"));
                    let w = if transpose {
                        // scales per output channel: dim 1 × groups
                        let (cg, taps) = (a.shape()[1], a.shape()[2..].iter().product::<usize>());
                        let scales = read_scales(&st, name, cg * groups)?;
                        let w = QConvTransposeWeight::from_i8(o, groups, cg, taps, &q, &scales)
                            .map_err(bad)?;
                        let og = o / groups;
                        for (x, (i, &v)) in a.iter_mut().zip(q.iter().enumerate()) {
                            let (row, r) = (i / red.max(1), i % red.max(1));
                            *x = f32::from(v) * scales[row / og * cg + r / taps.max(1)];
                        }
                        QConvW::Transpose(w)
                    } else {
                        let scales = read_scales(&st, name, o)?;
                        let w = QConvWeight::from_i8(o, groups, red, &q, scales.clone())
                            .map_err(bad)?;
                        for (x, (i, &v)) in a.iter_mut().zip(q.iter().enumerate()) {
                            *x = f32::from(v) * scales[i / red.max(1)];
                        }
                        QConvW::Forward(w)
                    };
                    let act = read_input_scale(&st, name)?;
                    loaded_convs[view] = Some(QConv {
                        w,
                        shape: a.shape().to_vec(),
                        act,
                    });
                    Ok(())
                }
                (_, Dtype::I8, _) => Err(Error::Params(format!(
                    "tensor `{name}` is int8, but this model does not quantize it (only the 2-D f32 weights of its matrix products are)"
                ))),
                (_, dt, dst) => decode_into(name, dst, dt, t.data()),
            }
        })
        .map_err(|e| match e {
            Error::Params(m) => Error::Params(format!("{model}: {m}")),
            e => e,
        })?;
        // weights stored as floats: quantized now (dynamic scales)
        let fresh = Self::new(model, plan, n_inputs, &params, None)?;
        let mut weights = fresh.state.weights;
        for (w, l) in weights.iter_mut().zip(loaded) {
            if l.is_some() {
                *w = l;
            }
        }
        let mut convs = fresh.state.convs;
        for (w, l) in convs.iter_mut().zip(loaded_convs) {
            if l.is_some() {
                *w = l;
            }
        }
        Ok(Quantized {
            params,
            state: QState { weights, convs },
            names: fresh.names,
        })
    }

    /// [`Self::load_bytes`] from a file; an I/O error names the path.
    pub fn load(
        model: &str,
        plan: &Plan,
        n_inputs: usize,
        params: P,
        path: impl AsRef<Path>,
    ) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| io_at("cannot read", path, e))?;
        Self::load_bytes(model, plan, n_inputs, params, &bytes)
    }
}

/// The per-output-channel scales `{name}_scale` (`F32[n]`) of int8 tensor `name`.
fn read_scales(st: &SafeTensors<'_>, name: &str, n: usize) -> Result<Vec<f32>> {
    let sname = format!("{name}_scale");
    let s = st
        .tensor(&sname)
        .map_err(|_| Error::Params(format!("tensor `{name}` is int8 but `{sname}` is missing")))?;
    if s.dtype() != Dtype::F32 || s.shape() != [n] {
        return Err(Error::Params(format!(
            "tensor `{sname}`: expected F32[{n}] (one scale per output channel), found {}{}",
            s.dtype(),
            crate::check::format_shape(s.shape())
        )));
    }
    Ok(s.data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The optional static activation scale `{name}_input_scale` of int8 tensor `name`, as
/// `(multiplier, scale)`.
fn read_input_scale(st: &SafeTensors<'_>, name: &str) -> Result<Option<(f32, f32)>> {
    let iname = format!("{name}_input_scale");
    match st.tensor(&iname) {
        Ok(i) if i.dtype() == Dtype::F32 && i.data().len() == 4 => {
            let d = i.data();
            let s = f32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            if !(s >= 0.0 && s.is_finite()) {
                return Err(Error::Params(format!(
                    "tensor `{iname}`: {s} is not a scale (a finite value >= 0)"
                )));
            }
            Ok(Some(if s > 0.0 { (1.0 / s, s) } else { (0.0, 0.0) }))
        }
        Ok(i) => Err(Error::Params(format!(
            "tensor `{iname}`: expected one F32 value, found {}{}",
            i.dtype(),
            crate::check::format_shape(i.shape())
        ))),
        Err(_) => Ok(None),
    }
}

/// The static `(multiplier, scale)` of a calibrated range: `scale = max / 127`, multiplier
/// `1 / scale` (what a saved scale gives back exactly); `None`-like zeros for an all-zero range.
fn static_scale(max: f32) -> (f32, f32) {
    let (_, s) = qgemm::inv_and_scale(max);
    if s > 0.0 {
        (1.0 / s, s)
    } else {
        (0.0, 0.0)
    }
}
