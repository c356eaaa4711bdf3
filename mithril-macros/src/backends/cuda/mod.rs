//! Step 6 for `backend: cuda`: the typed API of a physical model whose work runs on a CUDA
//! device.
//!
//! The host-side types are the CPU backend's (`MInputs<'a>` of ndarray views, `MOutputs`,
//! `MParams`, `MGrads`, built by [`codegen::Gen`]'s helpers), so initialisation, safetensors and
//! optimizers work unchanged. Next to them: `MDeviceParams` / `MDeviceGrads` (the same tree with
//! `DeviceTensor` leaves), `MDeviceInputs<'a>` (borrowed device tensors), `MDeviceOutputs`, and
//! `evaluate_device` / `evaluate_gradients_device`, which never copy through the host.
//!
//! Lowering, node by node: every fused elementwise group (and `FusedMatmul` epilogue) becomes one
//! CUDA C kernel through [`kernel_text`]; all kernels of the model form one module, `M::CUDA_SOURCE`,
//! compiled by NVRTC at the first launch (cached on disk). Matrix products go to cuBLAS
//! (`cublasGemmEx`: strict f32 unless `tf32: true`, bf16 with f32 results under `amp: true`) or
//! to cuBLASLt with the bias / ReLU / GELU epilogue for f16 / bf16 when the epilogue matches;
//! reductions, softmax, log_softmax, take_along, gather (embedding) and their gradients call
//! `mithril::rt::cuda`. A node without a lowering is a compile error spanned on the tokens that
//! made it, naming the primitive and listing what is supported.

pub(crate) mod kernel_text;

use crate::backends::common::{ix, v, CodegenInput, Tree};
use crate::codegen::Gen;
use crate::ir::{DType, Dim, FExpr, Graph, NodeId, Op};
use crate::options::CudaOptions;
use crate::placement::Placed;
use crate::prims::{literal, storage_type, Prim, ReduceKind};
use kernel_text::{Extent, IndexMode, KernelArg};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use std::collections::BTreeMap;
use syn::Ident;

/// What `backend: cuda` lowers (listed in the error for a node it does not).
pub const SUPPORTED: &str = "elementwise groups (every elementwise primitive; operands of the output's shape, scalars, trailing broadcasts like a bias `[C]`, leading ones like `[N, 1]`), \
2-D matmul (either operand transposed; with its fused epilogue), sum / mean / max / min over trailing axes and sum over leading axes (f32, f16, bf16), \
softmax / log_softmax over the last axis (f32, f16, bf16), take_along and its gradient, gather with axis = 0 on a 2-D table (embedding), \
reshape / flatten, and the gradient helpers (broadcast, size ratio)";

fn rt() -> TokenStream {
    quote!(::mithril::rt::cuda)
}

/// A broadcast operand's read pattern, at compile time (kernel side) and run time.
struct Read {
    mode: IndexMode,
    runtime: TokenStream,
}

/// Code generator of one cuda physical model.
pub struct CudaGen<'a> {
    g: &'a Graph,
    train: Option<&'a Graph>,
    inp: &'a CodegenInput<'a>,
    opts: &'a CudaOptions,
    /// CUDA C kernels of the module, in order, and their entry names.
    kernels: Vec<String>,
    entries: Vec<String>,
    errors: Vec<syn::Error>,
}

/// The graph being lowered: forward (`f`) or forward+backward (`g`) kernels.
struct Ctx<'a> {
    g: &'a Graph,
    gen: Gen<'a>,
    prefix: &'static str,
    uses: Vec<usize>,
    is_output: Vec<bool>,
    /// Nodes held as owned `DeviceTensor`s (the others are `&DeviceTensor`s).
    owned: Vec<bool>,
    /// Device values are named `dN` (mixed models, where `vN` is the host value).
    dev_names: bool,
}

impl<'a> Ctx<'a> {
    /// The local holding a node's device value.
    fn name(&self, id: NodeId) -> Ident {
        if self.dev_names {
            format_ident!("d{}", id)
        } else {
            v(id)
        }
    }
    /// The expression of a node's value as `&DeviceTensor<T>`.
    fn r(&self, id: NodeId) -> TokenStream {
        let vid = self.name(id);
        if self.owned[id] {
            quote!((&#vid))
        } else {
            quote!(#vid)
        }
    }
    fn dt(&self, id: NodeId) -> DType {
        self.g.dtype_of(id).unwrap_or(DType::F32)
    }
    fn ty(&self, id: NodeId) -> TokenStream {
        storage_type(self.dt(id))
    }
    fn label(&self, id: NodeId) -> String {
        self.g.nodes[id]
            .label
            .clone()
            .unwrap_or_else(|| format!("%{id}"))
    }
    /// Resolved dims, or `Err` for an open rank.
    fn dims(&self, id: NodeId) -> Result<Vec<Dim>, String> {
        match self.g.shape_of(id) {
            Some(s) if s.rest.is_none() => Ok(s.dims.iter().map(|d| self.g.env.dim(d)).collect()),
            _ => Err(format!(
                "its operand {} has an open rank (`...`)",
                self.g.describe(id)
            )),
        }
    }
}

fn known(d: &Dim) -> Option<u64> {
    match d {
        Dim::Known(n) => Some(*n),
        _ => None,
    }
}

/// How an operand of shape `arg` is read against an output of shape `out`.
fn read_mode(out: &[Dim], arg: &[Dim]) -> Result<Read, String> {
    if arg.len() > out.len() {
        return Err("an operand has more dims than the result".into());
    }
    let off = out.len() - arg.len();
    // per output axis: Some(true) same extent, Some(false) broadcast, None size 1 (either)
    let mut kinds = Vec::with_capacity(out.len());
    for (k, o) in out.iter().enumerate() {
        let a = (k >= off).then(|| &arg[k - off]);
        let kind = match (a, known(o)) {
            (_, Some(1)) => None,
            (None, _) => Some(false),
            (Some(a), _) if a == o => Some(true),
            (Some(a), _) if known(a) == Some(1) => Some(false),
            (Some(a), _) => {
                return Err(format!(
                    "an operand dim `{a:?}` is not provably equal to the result's `{o:?}` or 1 (a broadcast decided at run time)"
                ))
            }
        };
        kinds.push(kind);
    }
    let same: Vec<usize> = (0..out.len()).filter(|&k| kinds[k] == Some(true)).collect();
    let bcast: Vec<usize> = (0..out.len())
        .filter(|&k| kinds[k] == Some(false))
        .collect();
    let prod = |axes: &[usize]| -> Option<u64> {
        axes.iter().try_fold(1u64, |acc, &k| {
            known(&out[k]).map(|n| acc.saturating_mul(n))
        })
    };
    let ext = |v: Option<u64>| match v {
        Some(n) => Extent::Known(n),
        None => Extent::Runtime,
    };
    let baked = |v: Option<u64>| match v {
        Some(n) => {
            let n = n as usize;
            quote!(::std::option::Option::Some(#n))
        }
        None => quote!(::std::option::Option::None),
    };
    let fi = quote!(::mithril::rt::cuda::exec::FusedIndex);
    if bcast.is_empty() {
        return Ok(Read {
            mode: IndexMode::Full,
            runtime: quote!(#fi::Full),
        });
    }
    if same.is_empty() {
        return Ok(Read {
            mode: IndexMode::Scalar,
            runtime: quote!(#fi::Scalar),
        });
    }
    let (first_s, last_s) = (same[0], same[same.len() - 1]);
    // the same-extent axes must be contiguous (ignoring size-1 axes)
    if bcast.iter().any(|&b| b > first_s && b < last_s) {
        return Err("the operand broadcasts over an axis between two axes it does not broadcast over (only leading and trailing broadcasts are lowered)".into());
    }
    let len = prod(&same);
    if bcast.iter().all(|&b| b < first_s) {
        let b = baked(len);
        return Ok(Read {
            mode: IndexMode::Period(ext(len)),
            runtime: quote!(#fi::Period(#b)),
        });
    }
    let tail_axes: Vec<usize> = (last_s + 1..out.len()).collect();
    let tail = tail_axes.len();
    let inner = prod(&tail_axes);
    let (bi, bl) = (baked(inner), baked(len));
    Ok(Read {
        mode: IndexMode::Block {
            inner: ext(inner),
            len: ext(len),
        },
        runtime: quote!(#fi::Block { tail: #tail, inner: #bi, len: #bl }),
    })
}

/// The Lt epilogue of a f16/bf16 `FusedMatmul` when `expr` is `act(#0 + bias)` / `act(#0)` with
/// a bias `[N]`: `(bias arg index in expr, activation tokens)`.
fn lt_epilogue(
    expr: &FExpr,
    bias_is_row: &dyn Fn(usize) -> bool,
) -> Option<(Option<usize>, TokenStream)> {
    let act_of = |p: &Prim| match p {
        Prim::Relu => Some(quote!(::mithril::rt::cuda::Activation::Relu)),
        Prim::GeluTanh => Some(quote!(::mithril::rt::cuda::Activation::Gelu)),
        _ => None,
    };
    let none = quote!(::mithril::rt::cuda::Activation::None);
    let bias = |e: &FExpr| -> Option<Option<usize>> {
        match e {
            FExpr::Arg(0) => Some(None),
            FExpr::Op(Prim::Add, a, _, _) => match (&a[0], &a[1]) {
                (FExpr::Arg(0), FExpr::Arg(i)) | (FExpr::Arg(i), FExpr::Arg(0))
                    if *i > 0 && bias_is_row(*i) =>
                {
                    Some(Some(*i))
                }
                _ => None,
            },
            _ => None,
        }
    };
    match expr {
        FExpr::Op(p, a, _, _) if a.len() == 1 => {
            let act = act_of(p)?;
            Some((bias(&a[0])?, act))
        }
        e => bias(e)?.map(|i| (Some(i), none)),
    }
}

impl<'a> CudaGen<'a> {
    /// A generator for the forward graph `g` (and the forward+backward graph `train`).
    pub fn new(
        g: &'a Graph,
        train: Option<&'a Graph>,
        inp: &'a CodegenInput<'a>,
        opts: &'a CudaOptions,
    ) -> Self {
        CudaGen {
            g,
            train,
            inp,
            opts,
            kernels: Vec::new(),
            entries: Vec::new(),
            errors: Vec::new(),
        }
    }

    fn ctx(&self, g: &'a Graph, prefix: &'static str) -> Ctx<'a> {
        let mut is_output = vec![false; g.nodes.len()];
        for o in &g.outputs {
            is_output[o.node] = true;
        }
        Ctx {
            g,
            gen: Gen::new(g, self.inp),
            prefix,
            uses: g.use_counts(),
            is_output,
            owned: vec![false; g.nodes.len()],
            dev_names: false,
        }
    }

    /// A kernel of the module: its entry name (`<prefix><id><suffix>`).
    fn add_kernel(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        suffix: &str,
        expr: &FExpr,
        args: &[KernelArg],
        out: DType,
    ) -> Result<String, String> {
        let name = format!("{}{id}{suffix}", cx.prefix);
        let mut k = format!("// {} = {}\n", name, cx.label(id));
        k.push_str(&kernel_text::fused_kernel(&name, expr, args, out)?);
        self.kernels.push(k);
        self.entries.push(name.clone());
        Ok(name)
    }

    /// A launch of a new generated elementwise kernel over `operands` (value expressions,
    /// dtypes, dims) into a tensor of `out_dims` (`out_shape` at run time).
    #[allow(clippy::too_many_arguments)]
    fn fused_launch(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        suffix: &str,
        expr: &FExpr,
        operands: &[(TokenStream, DType, Vec<Dim>)],
        out_dims: &[Dim],
        out_dt: DType,
        out_shape: TokenStream,
    ) -> Result<TokenStream, String> {
        if operands.len() > 16 {
            return Err("a fused group with more than 16 operands".into());
        }
        let mut kargs = Vec::new();
        let mut launch = Vec::new();
        for (val, dt, dims) in operands {
            let r = read_mode(out_dims, dims)?;
            kargs.push(KernelArg {
                dtype: *dt,
                mode: r.mode,
            });
            let m = r.runtime;
            launch.push(quote!((#val as &dyn ::mithril::rt::cuda::exec::Operand, #m)));
        }
        let name = self.add_kernel(cx, id, suffix, expr, &kargs, out_dt)?;
        let ty = storage_type(out_dt);
        let label = cx.label(id);
        let c = rt();
        Ok(quote! {{
            let __f = self.__k.get(__dev, #name)?;
            let __shape: ::std::vec::Vec<usize> = #out_shape;
            #c::exec::launch_fused::<#ty>(__dev, &__f, #label, &__shape, &[#(#launch),*])?
        }})
    }

    /// A fused elementwise node (`args` its operands): output shape = their broadcast.
    fn elementwise(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        suffix: &str,
        expr: &FExpr,
        ops: &[(TokenStream, DType, Vec<Dim>)],
    ) -> Result<TokenStream, String> {
        let out_dims = cx.dims(id)?;
        let label = cx.label(id);
        let shapes: Vec<TokenStream> = ops.iter().map(|(val, ..)| quote!(#val.shape())).collect();
        let c = rt();
        let shape = quote!(#c::exec::broadcast_shapes(#label, &[#(#shapes),*])?);
        self.fused_launch(cx, id, suffix, expr, ops, &out_dims, cx.dt(id), shape)
    }

    fn operand(&self, cx: &Ctx, a: NodeId) -> Result<(TokenStream, DType, Vec<Dim>), String> {
        Ok((cx.r(a), cx.dt(a), cx.dims(a)?))
    }

    /// A cast kernel of node `a`'s value to `to` (kernel `<prefix><id><suffix>`).
    fn cast(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        suffix: &str,
        a: NodeId,
        to: DType,
    ) -> Result<TokenStream, String> {
        let from = cx.dt(a);
        let e = FExpr::Op(Prim::Cast(to), vec![FExpr::Arg(0)], to, from);
        let dims = cx.dims(a)?;
        let val = cx.r(a);
        self.fused_launch(
            cx,
            id,
            suffix,
            &e,
            &[(val.clone(), from, dims.clone())],
            &dims,
            to,
            quote!(#val.shape().to_vec()),
        )
    }

    /// The product of a (fused) matmul node: `(tokens of the product, dtype of the product)`.
    fn matmul(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        ta: bool,
        tb: bool,
    ) -> Result<(TokenStream, DType), String> {
        let n = &cx.g.nodes[id];
        let (a, b) = (n.args[0], n.args[1]);
        for x in [a, b] {
            if cx.dims(x)?.len() != 2 {
                return Err(format!(
                    "matmul operands must be 2-D on cuda, this one is {}",
                    cx.g.describe(x)
                ));
            }
        }
        let t = cx.dt(id);
        let c = rt();
        let prec = if self.opts.tf32 {
            quote!(#c::F32Precision::Tf32)
        } else {
            quote!(#c::F32Precision::Strict)
        };
        match t {
            DType::F32 if self.opts.amp => {
                let ca = self.cast(cx, id, "_amp_a", a, DType::BF16)?;
                let cb = self.cast(cx, id, "_amp_b", b, DType::BF16)?;
                Ok((
                    quote!({
                        let __a = #ca;
                        let __b = #cb;
                        #c::exec::matmul::<::mithril::half::bf16, f32>(__dev, &__a, &__b, #ta, #tb, #prec)?
                    }),
                    DType::F32,
                ))
            }
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => {
                let ty = storage_type(t);
                let (ra, rb) = (cx.r(a), cx.r(b));
                Ok((
                    quote!(#c::exec::matmul::<#ty, #ty>(__dev, #ra, #rb, #ta, #tb, #prec)?),
                    t,
                ))
            }
            other => Err(format!("matmul of {other} has no cuBLAS lowering")),
        }
    }

    fn fused_matmul(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        ta: bool,
        tb: bool,
        expr: &FExpr,
    ) -> Result<TokenStream, String> {
        let n = &cx.g.nodes[id];
        let args = n.args.clone();
        let t = cx.dt(id);
        let out_dims = cx.dims(id)?;
        let c = rt();
        if matches!(t, DType::F16 | DType::BF16) {
            let last = out_dims.last().cloned();
            let is_row = |i: usize| {
                args.get(i + 1).is_some_and(|&x| {
                    cx.dt(x) == t
                        && cx
                            .dims(x)
                            .is_ok_and(|d| d.len() == 1 && Some(&d[0]) == last.as_ref())
                })
            };
            if let Some((bias, act)) = lt_epilogue(expr, &is_row) {
                let ty = storage_type(t);
                let (ra, rb) = (cx.r(args[0]), cx.r(args[1]));
                let bias = match bias {
                    Some(i) => {
                        let rbias = cx.r(args[i + 1]);
                        quote!(::std::option::Option::Some(#rbias))
                    }
                    None => quote!(::std::option::Option::None),
                };
                return Ok(
                    quote!(#c::exec::matmul_epilogue::<#ty>(__dev, #ra, #rb, #ta, #tb, #bias, #act)?),
                );
            }
        }
        let (prod, pdt) = self.matmul(cx, id, ta, tb)?;
        let mut ops = vec![(quote!((&__p)), pdt, out_dims.clone())];
        for &x in &args[2..] {
            ops.push(self.operand(cx, x)?);
        }
        let launch = self.elementwise(cx, id, "", expr, &ops)?;
        Ok(quote!({
            let __p = #prod;
            #launch
        }))
    }

    /// Target dims of a reshape node (`-1` for the one computed at run time).
    fn reshape_dims(&self, cx: &Ctx, id: NodeId) -> Result<TokenStream, String> {
        let dims = cx.dims(id)?;
        let mut out = Vec::new();
        let mut open = 0;
        for d in &dims {
            match cx.gen.dim_expr(d) {
                Some(e) => out.push(quote!((#e) as isize)),
                None => {
                    open += 1;
                    out.push(quote!(-1isize))
                }
            }
        }
        if open > 1 {
            return Err(
                "more than one target dim is only known at run time; name them with symbols".into(),
            );
        }
        Ok(quote!(::std::vec![#(#out),*]))
    }

    /// A reshape of `a` to `dims` (a `Vec<isize>` expression): moves a dead owned value, copies
    /// otherwise.
    fn reshape_to(&self, cx: &Ctx, a: NodeId, dims: TokenStream) -> TokenStream {
        let c = rt();
        if cx.owned[a] && cx.uses[a] == 1 && !cx.is_output[a] {
            let va = cx.name(a);
            quote!({ let __d: ::std::vec::Vec<isize> = #dims; #c::exec::reshape_owned(#va, &__d)? })
        } else {
            let ra = cx.r(a);
            quote!({ let __d: ::std::vec::Vec<isize> = #dims; #c::exec::reshape(__dev, #ra, &__d)? })
        }
    }

    fn float3(cx: &Ctx, a: NodeId, what: &str) -> Result<(), String> {
        match cx.dt(a) {
            DType::F32 | DType::F16 | DType::BF16 => Ok(()),
            t => Err(format!(
                "{what} on cuda takes f32, f16 or bf16, this operand is {t}"
            )),
        }
    }

    /// Indices as `i64` (a cast kernel for other integer types).
    fn index_i64(&mut self, cx: &Ctx, id: NodeId, a: NodeId) -> Result<TokenStream, String> {
        match cx.dt(a) {
            DType::I64 => Ok(cx.r(a)),
            DType::I32 => {
                let c = self.cast(cx, id, "_idx", a, DType::I64)?;
                Ok(quote!((&#c)))
            }
            t => Err(format!("indices must be integers, got {t}")),
        }
    }

    /// The value of one node (an owned `DeviceTensor` expression), or `None` for nodes bound
    /// by reference (inputs, params, seeds, boundaries).
    fn node(&mut self, cx: &Ctx, id: NodeId) -> Result<Option<TokenStream>, String> {
        let n = &cx.g.nodes[id];
        let c = rt();
        let args = n.args.clone();
        let ty = cx.ty(id);
        Ok(Some(match &n.op {
            Op::Input(_) | Op::Param(_) | Op::Seed(_) | Op::Boundary(_) => return Ok(None),
            Op::Const(s) => {
                let lit = literal(*s, cx.dt(id));
                quote!(#c::exec::scalar::<#ty>(__dev, <#ty as ::mithril::rt::Elem>::from_acc(#lit))?)
            }
            Op::Fused(e) => {
                let ops = args
                    .iter()
                    .map(|&a| self.operand(cx, a))
                    .collect::<Result<Vec<_>, _>>()?;
                self.elementwise(cx, id, "", &e.clone(), &ops)?
            }
            Op::FusedMatmul { ta, tb, expr } => {
                let (ta, tb, expr) = (*ta, *tb, expr.clone());
                self.fused_matmul(cx, id, ta, tb, &expr)?
            }
            Op::Prim(p) if p.is_elementwise() => {
                let arg_dts: Vec<DType> = args.iter().map(|&a| cx.dt(a)).collect();
                let out = cx.dt(id);
                let e = FExpr::Op(
                    p.clone(),
                    (0..args.len()).map(FExpr::Arg).collect(),
                    out,
                    p.compute_dtype(&arg_dts, out),
                );
                let ops = args
                    .iter()
                    .map(|&a| self.operand(cx, a))
                    .collect::<Result<Vec<_>, _>>()?;
                self.elementwise(cx, id, "", &e, &ops)?
            }
            Op::Prim(Prim::Matmul { ta, tb }) => {
                let (prod, pdt) = self.matmul(cx, id, *ta, *tb)?;
                if pdt != cx.dt(id) {
                    return Err("internal: matmul product type".into());
                }
                prod
            }
            Op::Prim(Prim::Reshape(_)) => {
                let dims = self.reshape_dims(cx, id)?;
                self.reshape_to(cx, args[0], dims)
            }
            Op::Prim(Prim::Flatten(s, e)) => {
                let (ra, label) = (cx.r(args[0]), cx.label(id));
                self.reshape_to(
                    cx,
                    args[0],
                    quote!(#c::exec::flatten_dims(#label, #ra.shape(), #s, #e)?),
                )
            }
            Op::Prim(Prim::Unsqueeze(axes)) => {
                let ra = cx.r(args[0]);
                let axes = axes.clone();
                self.reshape_to(
                    cx,
                    args[0],
                    quote!(#c::exec::unsqueeze_dims(#ra.shape(), &[#(#axes),*])),
                )
            }
            Op::Prim(Prim::ReshapeLike) => {
                let rl = cx.r(args[1]);
                self.reshape_to(
                    cx,
                    args[0],
                    quote!(#rl.shape().iter().map(|&d| d as isize).collect()),
                )
            }
            Op::Prim(Prim::Reduce(kind, axes, keep)) => {
                Self::float3(cx, args[0], "a reduction")?;
                let r = cx.dims(args[0])?.len();
                let mut ax: Vec<usize> = if axes.is_empty() {
                    (0..r).collect()
                } else {
                    axes.iter()
                        .map(|&a| {
                            if a < 0 {
                                (a + r as i64) as usize
                            } else {
                                a as usize
                            }
                        })
                        .collect()
                };
                ax.sort_unstable();
                ax.dedup();
                let ra = cx.r(args[0]);
                let trailing = ax.iter().enumerate().all(|(i, &a)| a == r - ax.len() + i);
                let leading = ax.iter().enumerate().all(|(i, &a)| a == i);
                let rk = match kind {
                    ReduceKind::Sum => Some(quote!(#c::RowReduce::Sum)),
                    ReduceKind::Mean => Some(quote!(#c::RowReduce::Mean)),
                    ReduceKind::Max => Some(quote!(#c::RowReduce::Max)),
                    ReduceKind::Min => Some(quote!(#c::RowReduce::Min)),
                    ReduceKind::Prod => None,
                };
                match rk {
                    Some(rk) if trailing => {
                        let split = r - ax.len();
                        quote!(#c::exec::reduce_trailing(__dev, #ra, #rk, #split, #keep)?)
                    }
                    Some(_) if leading && *kind == ReduceKind::Sum => {
                        let split = ax.len();
                        quote!(#c::exec::sum_leading(__dev, #ra, #split, #keep)?)
                    }
                    _ => {
                        return Err(format!(
                            "{} over axes {ax:?} of a rank-{r} tensor (lowered: sum / mean / max / min over trailing axes, sum over leading axes)",
                            p_name(&n.op)
                        ))
                    }
                }
            }
            Op::Prim(p @ (Prim::Softmax(axis) | Prim::LogSoftmax(axis))) => {
                Self::float3(cx, args[0], p.name())?;
                let r = cx.dims(args[0])?.len() as i64;
                if r == 0 || (*axis != -1 && *axis != r - 1) {
                    return Err(format!(
                        "{} over axis {axis} (lowered: the last axis)",
                        p.name()
                    ));
                }
                let ra = cx.r(args[0]);
                let f = format_ident!("{}", p.name());
                quote!(#c::#f(__dev, #ra)?)
            }
            Op::Prim(Prim::TakeAlong) => {
                Self::float3(cx, args[0], "take_along")?;
                let idx = self.index_i64(cx, id, args[1])?;
                let ra = cx.r(args[0]);
                quote!(#c::take_along(__dev, #ra, #idx)?)
            }
            Op::Prim(Prim::TakeAlongGrad) => {
                Self::float3(cx, args[0], "take_along's gradient")?;
                let idx = self.index_i64(cx, id, args[1])?;
                let (rg, rl) = (cx.r(args[0]), cx.r(args[2]));
                quote!(#c::exec::take_along_backward(__dev, #rg, #idx, #rl.shape())?)
            }
            Op::Prim(Prim::Gather(axis)) => {
                Self::float3(cx, args[0], "gather")?;
                if *axis != 0 || cx.dims(args[0])?.len() != 2 {
                    return Err(format!(
                        "gather with axis = {axis} on {} (lowered: axis = 0 on a 2-D table, an embedding)",
                        cx.g.describe(args[0])
                    ));
                }
                let idx = self.index_i64(cx, id, args[1])?;
                let ra = cx.r(args[0]);
                quote!(#c::embedding(__dev, #ra, #idx)?)
            }
            Op::Prim(Prim::SizeRatio) => {
                let (ra, rb) = (cx.r(args[0]), cx.r(args[1]));
                quote!(#c::exec::size_ratio::<#ty>(__dev, #ra, #rb)?)
            }
            Op::Prim(Prim::BroadcastLike) => {
                let out_dims = cx.dims(id)?;
                let op = self.operand(cx, args[0])?;
                let rl = cx.r(args[1]);
                let t = cx.dt(id);
                self.fused_launch(
                    cx,
                    id,
                    "",
                    &FExpr::Arg(0),
                    &[op],
                    &out_dims,
                    t,
                    quote!(#rl.shape().to_vec()),
                )?
            }
            Op::Prim(_) => {
                return Err("there is no CUDA kernel for it yet".into());
            }
        }))
    }

    /// Shape checks and node code of a graph, with the output values: `(checks, body, outputs)`.
    fn body(
        &mut self,
        cx: &mut Ctx<'a>,
    ) -> (
        Vec<TokenStream>,
        Vec<TokenStream>,
        Vec<(String, TokenStream)>,
    ) {
        let g = cx.g;
        let mut checks = Vec::new();
        for i in &g.inputs {
            let f = format_ident!("{}", i.name);
            checks.push(cx.gen.check(
                i.node,
                &format!("input `{}`", i.name),
                quote!(inputs.#f.shape()),
            ));
        }
        for p in &g.params {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            checks.push(cx.gen.check(
                p.node,
                &format!("param `{}`", p.dotted()),
                quote!(params.#(#fields).*.shape()),
            ));
        }
        for (id, n) in g.nodes.iter().enumerate() {
            if let Op::Seed(i) = n.op {
                let f = format_ident!("{}", g.outputs[i].name);
                checks.push(cx.gen.check(
                    id,
                    &format!("output gradient `{}`", g.outputs[i].name),
                    quote!(output_grads.#f.shape()),
                ));
            }
        }
        let mut body = Vec::new();
        let model = self.inp.name.to_string();
        for id in 0..g.nodes.len() {
            let vid = v(id);
            let n = &g.nodes[id];
            let code = match &n.op {
                Op::Input(i) => {
                    let f = format_ident!("{}", g.inputs[*i].name);
                    quote!(let #vid = inputs.#f;)
                }
                Op::Param(i) => {
                    let fields = g.params[*i].path.iter().map(|p| format_ident!("{}", p));
                    quote!(let #vid = &params.#(#fields).*;)
                }
                Op::Seed(i) => {
                    let f = format_ident!("{}", g.outputs[*i].name);
                    quote!(let #vid = &output_grads.#f;)
                }
                Op::Boundary(_) => {
                    let r = cx.r(n.args[0]);
                    quote!(let #vid = #r;)
                }
                _ => match self.node(cx, id) {
                    Ok(Some(val)) => {
                        cx.owned[id] = true;
                        let ty = cx.ty(id);
                        quote!(let #vid: ::mithril::rt::cuda::DeviceTensor<#ty> = #val;)
                    }
                    Ok(None) => quote!(),
                    Err(why) => {
                        let what = p_name(&n.op);
                        self.errors.push(g.error_at(
                            id,
                            format!(
                                "`{model}` has `backend: cuda`, which cannot lower this `{what}` yet: {why}\nlowered on cuda: {SUPPORTED}"
                            ),
                        ));
                        quote!()
                    }
                },
            };
            body.push(code);
        }
        // outputs: owned values move out (the last use of a node), the others are copied
        let mut outs = Vec::new();
        let c = rt();
        for (k, o) in g.outputs.iter().enumerate() {
            let later = g.outputs[k + 1..].iter().any(|x| x.node == o.node);
            let vid = v(o.node);
            let val = if cx.owned[o.node] && !later {
                quote!(#vid)
            } else {
                let r = cx.r(o.node);
                quote!(#c::exec::copy(__dev, #r)?)
            };
            outs.push((o.name.clone(), val));
        }
        (checks, body, outs)
    }

    fn device_struct_tree(
        &self,
        gen: &Gen,
        tree: &Tree,
        path: &mut Vec<String>,
        kind: &str,
        out: &mut Vec<TokenStream>,
    ) {
        let name = gen.struct_name(path, kind);
        let vis = self.inp.vis;
        let mut fields = Vec::new();
        for key in &tree.order {
            let f = format_ident!("{}", key);
            if let Some(&i) = tree.leaves.get(key) {
                let node = self.g.params[i].node;
                let ty = gen.elem_ty(node);
                let doc = format!(
                    "`{}`: `{}` on the device",
                    self.g.params[i].dotted(),
                    self.g.describe(node)
                );
                fields.push(quote!(#[doc = #doc] pub #f: ::mithril::rt::cuda::DeviceTensor<#ty>));
            } else if let Some(sub) = tree.subs.get(key) {
                path.push(key.clone());
                let sn = gen.struct_name(path, kind);
                self.device_struct_tree(gen, sub, path, kind, out);
                path.pop();
                let doc = format!("The device tensors of `{key}`.");
                fields.push(quote!(#[doc = #doc] pub #f: #sn));
            }
        }
        let what = if kind == "DeviceParams" {
            "Params"
        } else {
            "Gradients"
        };
        let doc = if path.is_empty() {
            format!(
                "{what} of `{}` in device memory (fields mirror the host struct).",
                self.inp.name
            )
        } else {
            format!(
                "{what} of `{}` inside `{}`, in device memory.",
                path.join("."),
                self.inp.name
            )
        };
        out.push(quote! {
            #[doc = #doc]
            #[derive(Debug)]
            #vis struct #name { #(#fields,)* }
        });
    }

    /// `host -> device` (`to_device`) or `device -> host` conversion of a param-shaped tree.
    fn convert_tree(
        &self,
        gen: &Gen,
        tree: &Tree,
        path: &mut Vec<String>,
        kind: &str,
        src: &TokenStream,
        to_device: bool,
    ) -> TokenStream {
        let name = gen.struct_name(path, kind);
        let mut fields = Vec::new();
        for key in &tree.order {
            let f = format_ident!("{}", key);
            path.push(key.clone());
            let fs: Vec<Ident> = path.iter().map(|p| format_ident!("{}", p)).collect();
            if let Some(&i) = tree.leaves.get(key) {
                let node = self.g.params[i].node;
                let d = ix(gen.rank(node));
                let dotted = self.g.params[i].dotted();
                let val = if to_device {
                    quote!(::mithril::rt::cuda::DeviceTensor::to_device(&self.__dev, &#src.#(#fs).*.view())?)
                } else {
                    quote!(#src.#(#fs).*.to_host()?.into_dimensionality::<#d>().map_err(|e| ::mithril::rt::Error::op(#dotted, e.to_string()))?)
                };
                fields.push(quote!(#f: #val));
            } else if let Some(sub) = tree.subs.get(key) {
                let e = self.convert_tree(gen, sub, path, kind, src, to_device);
                fields.push(quote!(#f: #e));
            }
            path.pop();
        }
        quote!(#name { #(#fields,)* })
    }

    /// Generate all items; also returns the CUDA C module (for `file_path`).
    pub fn generate(mut self) -> Result<(TokenStream, String), Vec<syn::Error>> {
        let g = self.g;
        let name = self.inp.name;
        let vis = self.inp.vis;
        let model = name.to_string();
        let inputs_name = format_ident!("{}Inputs", name);
        let outputs_name = format_ident!("{}Outputs", name);
        let params_name = format_ident!("{}Params", name);
        let dinputs_name = format_ident!("{}DeviceInputs", name);
        let doutputs_name = format_ident!("{}DeviceOutputs", name);
        let dparams_name = format_ident!("{}DeviceParams", name);
        let c = rt();

        // ---- the forward graph on the device
        let mut cx = self.ctx(g, "f");
        let (checks, body, outs) = self.body(&mut cx);
        let syms: Vec<&str> = g.syms.iter().map(|s| s.as_str()).collect();
        let out_fields: Vec<TokenStream> = outs
            .iter()
            .map(|(n, val)| {
                let f = format_ident!("{}", n);
                quote!(#f: #val)
            })
            .collect();
        let mut gen = Gen::new(g, self.inp);

        // ---- host-side types (as on the CPU)
        let input_fields: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let t = gen.elem_ty(i.node);
                let d = ix(gen.rank(i.node));
                let doc = format!("input `{}`: `{}`", i.name, g.describe(i.node));
                quote!(#[doc = #doc] pub #f: ::mithril::ndarray::ArrayView<'a, #t, #d>)
            })
            .collect();
        let dinput_fields: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let t = gen.elem_ty(i.node);
                let doc = format!("input `{}`: `{}` on the device", i.name, g.describe(i.node));
                quote!(#[doc = #doc] pub #f: &'a ::mithril::rt::cuda::DeviceTensor<#t>)
            })
            .collect();
        let phantom = if g.inputs.is_empty() {
            quote!(#[doc = "(this model has no inputs)"] pub _marker: ::std::marker::PhantomData<&'a ()>,)
        } else {
            quote!()
        };
        let phantom_init = if g.inputs.is_empty() {
            quote!(_marker: ::std::marker::PhantomData,)
        } else {
            quote!()
        };
        let output_fields: Vec<TokenStream> = g
            .outputs
            .iter()
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let ty = gen.array_ty(o.node);
                let doc = format!("output `{}`: `{}`", o.name, g.describe(o.node));
                quote!(#[doc = #doc] pub #f: #ty)
            })
            .collect();
        let doutput_fields: Vec<TokenStream> = g
            .outputs
            .iter()
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let t = gen.elem_ty(o.node);
                let doc = format!(
                    "output `{}`: `{}` on the device",
                    o.name,
                    g.describe(o.node)
                );
                quote!(#[doc = #doc] pub #f: ::mithril::rt::cuda::DeviceTensor<#t>)
            })
            .collect();
        let mut tree = Tree::default();
        for (i, p) in g.params.iter().enumerate() {
            tree.insert(&p.path, i);
        }
        let mut param_structs = Vec::new();
        gen.param_structs(&tree, &mut vec![], &mut param_structs);
        self.device_struct_tree(&gen, &tree, &mut vec![], "DeviceParams", &mut param_structs);
        let randomize = gen.randomize_expr(&tree, &mut vec![]);
        self.errors.append(&mut gen.errors);
        let params_to_device = self.convert_tree(
            &gen,
            &tree,
            &mut vec![],
            "DeviceParams",
            &quote!(params),
            true,
        );
        let params_to_host =
            self.convert_tree(&gen, &tree, &mut vec![], "Params", &quote!(params), false);
        let visits: Vec<TokenStream> = g.params.iter().map(|p| {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            let dotted = p.dotted();
            quote!(f(#dotted, ::mithril::rt::TensorView::from(self.#(#fields).*.view().into_dyn()));)
        }).collect();
        let visits_mut: Vec<TokenStream> = g.params.iter().map(|p| {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            let dotted = p.dotted();
            quote!(f(#dotted, ::mithril::rt::TensorViewMut::from(self.#(#fields).*.view_mut().into_dyn()))?;)
        }).collect();
        let to_dev_inputs: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let l = format_ident!("__in_{}", i.name.trim_start_matches("r#"));
                quote!(let #l = #c::DeviceTensor::to_device(&self.__dev, &inputs.#f)?;)
            })
            .collect();
        let dev_input_init: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let l = format_ident!("__in_{}", i.name.trim_start_matches("r#"));
                quote!(#f: &#l)
            })
            .collect();
        let outputs_to_host: Vec<TokenStream> = g
            .outputs
            .iter()
            .map(|o| {
                let f = format_ident!("{}", o.name);
                let d = ix(gen.rank(o.node));
                let on = o.name.clone();
                quote!(#f: outputs.#f.to_host()?.into_dimensionality::<#d>().map_err(|e| ::mithril::rt::Error::op(#on, e.to_string()))?)
            })
            .collect();

        // ---- gradients
        let grads = self.gradients(&tree, &gen);

        // ---- the module
        let source = kernel_text::fused_module(&self.kernels);
        let entries = &self.entries;
        let n_kernels = entries.len();
        let file = format!("{model}.cu");
        let device = self.opts.device;
        let arch = match &self.opts.arch {
            Some(a) => quote!(::std::option::Option::Some(#a)),
            None => quote!(::std::option::Option::None),
        };
        let options = device_options(self.opts);
        let optimize_for = self.inp.optimize_for.name();
        let precision = if self.opts.amp {
            "bf16 with f32 accumulation (`amp: true`)"
        } else if self.opts.tf32 {
            "TF32 (`tf32: true`)"
        } else {
            "strict f32"
        };

        // ---- docs
        let mut doc = String::new();
        for a in self.inp.docs {
            if a.path().is_ident("doc") {
                if let syn::Meta::NameValue(nv) = &a.meta {
                    if let syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) = &nv.value
                    {
                        doc.push_str(s.value().trim_start_matches(' '));
                        doc.push('\n');
                    }
                }
            }
        }
        if !doc.is_empty() {
            doc.push('\n');
        }
        doc.push_str(&format!(
            "Physical model `{name}` generated by `mithril!` from `{}` for `backend: cuda` \
             (device {device}; {n_kernels} generated kernels in [`Self::CUDA_SOURCE`]; f32 matrix products: {precision}).\n\n",
            self.inp.logical
        ));
        doc.push_str("| terminal | kind | type |\n|---|---|---|\n");
        for i in &g.inputs {
            doc.push_str(&format!(
                "| `{}` | input | `{}` |\n",
                i.name,
                g.describe(i.node)
            ));
        }
        for p in &g.params {
            doc.push_str(&format!(
                "| `{}` | param | `{}` |\n",
                p.dotted(),
                g.describe(p.node)
            ));
        }
        for o in &g.outputs {
            doc.push_str(&format!(
                "| `{}` | output | `{}` |\n",
                o.name,
                g.describe(o.node)
            ));
        }
        let summary = &self.inp.summary;
        let text = &self.inp.graph_text;
        let dot = &self.inp.graph_dot;
        let json = &self.inp.graph_json;
        let n_ops = g
            .nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Prim(_) | Op::Fused(_) | Op::FusedMatmul { .. }))
            .count();
        let inputs_derive = if g
            .inputs
            .iter()
            .all(|i| gen.rank(i.node).is_some_and(|r| r <= 6))
        {
            quote!(#[derive(Clone, Copy, Debug)])
        } else {
            quote!(#[derive(Clone, Debug)])
        };
        let inputs_doc = format!("Inputs of [`{name}`]: one `ndarray` view per input terminal.");
        let dinputs_doc = format!(
            "Inputs of [`{name}::evaluate_device`]: one borrowed device tensor per input terminal."
        );
        let outputs_doc = format!("Outputs of [`{name}`].");
        let doutputs_doc = format!("Outputs of [`{name}::evaluate_device`], in device memory.");
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let grads_items = grads.items;
        let grads_methods = grads.methods;
        let module = source.clone();
        let tokens = quote! {
            #[doc = #doc]
            #vis struct #name {
                __dev: ::mithril::rt::cuda::CudaDevice,
                __k: ::mithril::rt::cuda::exec::ModelKernels,
            }

            impl ::std::fmt::Debug for #name {
                fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                    f.debug_struct(#model).field("device", &self.__dev).finish_non_exhaustive()
                }
            }

            #[doc = #inputs_doc]
            #inputs_derive
            #vis struct #inputs_name<'a> { #(#input_fields,)* #phantom }

            #[doc = #dinputs_doc]
            #[derive(Clone, Copy, Debug)]
            #vis struct #dinputs_name<'a> { #(#dinput_fields,)* #phantom }

            #[doc = #outputs_doc]
            #[derive(Clone, Debug)]
            #vis struct #outputs_name { #(#output_fields,)* }

            #[doc = #doutputs_doc]
            #[derive(Debug)]
            #vis struct #doutputs_name { #(#doutput_fields,)* }

            #(#param_structs)*

            impl ::mithril::rt::ParamTree for #params_name {
                fn visit(&self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorView<'_>)) {
                    #(#visits)*
                }
                fn visit_mut(&mut self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorViewMut<'_>) -> ::mithril::rt::Result<()>) -> ::mithril::rt::Result<()> {
                    #(#visits_mut)*
                    Ok(())
                }
            }

            #grads_items

            impl #name {
                /// The summary table: every op of the flattened, optimized graph with its shapes and dtypes.
                pub const SUMMARY: &'static str = #summary;
                /// The optimized graph as text.
                pub const GRAPH_TEXT: &'static str = #text;
                /// The optimized graph in Graphviz DOT.
                pub const GRAPH_DOT: &'static str = #dot;
                /// The optimized graph as JSON.
                pub const GRAPH_JSON: &'static str = #json;
                /// Number of ops (primitives and fused groups) after optimization.
                pub const NUM_OPS: usize = #n_ops;
                /// Names of the symbolic dims, in binding order.
                pub const SYMBOLS: &'static [&'static str] = &[#(#syms),*];
                /// The model's CUDA C module: every generated kernel (fused elementwise groups,
                /// matmul epilogues, casts), compiled by NVRTC at the first launch.
                pub const CUDA_SOURCE: &'static str = #source;
                /// The kernel entry names of [`Self::CUDA_SOURCE`].
                pub const CUDA_KERNELS: &'static [&'static str] = &[#(#entries),*];
                /// The architecture kernels are compiled for (`cuda: { arch }` or
                /// `target_hardware`); `None`: the device's own.
                pub const CUDA_ARCH: ::std::option::Option<&'static str> = #arch;
                /// The device [`Self::new`] opens (`cuda: { device }`).
                pub const CUDA_DEVICE: usize = #device;
                /// `optimize_for` as compiled (`"latency"` or `"throughput"`). Recorded only: on
                /// cuda it changes no generated code yet (one stream, cuBLAS's default
                /// heuristics either way).
                pub const OPTIMIZE_FOR: &'static str = #optimize_for;

                /// Open the model on its CUDA device (`cuda: { device }`, default 0). `Err` —
                /// never a panic — naming what is missing when the CUDA libraries, the driver
                /// or the device are not there.
                pub fn new() -> ::mithril::rt::Result<Self> {
                    Self::on_device(Self::CUDA_DEVICE)
                }

                /// Open the model on CUDA device `ordinal`.
                pub fn on_device(ordinal: usize) -> ::mithril::rt::Result<Self> {
                    let dev = #c::exec::open_model(#model, "backend: cuda", ordinal, #options)?;
                    Ok(#name { __dev: dev, __k: #c::exec::ModelKernels::new(#file, Self::CUDA_SOURCE) })
                }

                /// The device the model runs on.
                pub fn device(&self) -> &::mithril::rt::cuda::CudaDevice {
                    &self.__dev
                }

                /// The summary table (same as [`Self::SUMMARY`]).
                pub fn summary(&self) -> &'static str {
                    Self::SUMMARY
                }

                /// Fresh params on the host, deterministic per `seed` (the CPU backend's values).
                pub fn randomize_params(&self, seed: u64) -> #params_name {
                    let _ = seed;
                    #randomize
                }

                /// Copy params to the device (do it once, then call [`Self::evaluate_device`]).
                pub fn params_to_device(&self, params: &#params_name) -> ::mithril::rt::Result<#dparams_name> {
                    Ok(#params_to_device)
                }

                /// Copy device params back to the host.
                pub fn params_to_host(&self, params: &#dparams_name) -> ::mithril::rt::Result<#params_name> {
                    Ok(#params_to_host)
                }

                /// Copy device outputs to the host.
                pub fn outputs_to_host(&self, outputs: #doutputs_name) -> ::mithril::rt::Result<#outputs_name> {
                    Ok(#outputs_name { #(#outputs_to_host,)* })
                }

                /// Run the model on host data: params and inputs are copied to the device, the
                /// outputs back (same signature as the CPU backend). For repeated calls keep
                /// the params on the device and use [`Self::evaluate_device`].
                pub fn evaluate(&self, params: &#params_name, inputs: #inputs_name<'_>) -> ::mithril::rt::Result<#outputs_name> {
                    let __params = self.params_to_device(params)?;
                    #(#to_dev_inputs)*
                    let outputs = self.evaluate_device(&__params, #dinputs_name { #(#dev_input_init,)* #phantom_init })?;
                    self.outputs_to_host(outputs)
                }

                /// Run the model on device data; nothing goes through the host. Work is issued
                /// on the device's stream (copy the outputs back, or synchronize, to wait).
                #[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision)]
                pub fn evaluate_device(&self, params: &#dparams_name, inputs: #dinputs_name<'_>) -> ::mithril::rt::Result<#doutputs_name> {
                    let __dev: &::mithril::rt::cuda::CudaDevice = &self.__dev;
                    let mut __env = ::mithril::rt::SymEnv::new(&[#(#syms),*]);
                    #(#checks)*
                    let _ = &__env;
                    #(#body)*
                    Ok(#doutputs_name { #(#out_fields,)* })
                }

                #grads_methods
            }
        };
        Ok((tokens, module))
    }
}

/// Items and methods of the gradient API.
struct GradParts {
    items: TokenStream,
    methods: TokenStream,
}

impl<'a> CudaGen<'a> {
    fn gradients(&mut self, tree: &Tree, gen: &Gen) -> GradParts {
        let Some(t) = self.train else {
            return GradParts {
                items: quote!(),
                methods: quote!(),
            };
        };
        let g = self.g;
        let name = self.inp.name;
        let vis = self.inp.vis;
        let params_name = format_ident!("{}Params", name);
        let grads_name = format_ident!("{}Grads", name);
        let dparams_name = format_ident!("{}DeviceParams", name);
        let dgrads_name = format_ident!("{}DeviceGrads", name);
        let inputs_name = format_ident!("{}Inputs", name);
        let outputs_name = format_ident!("{}Outputs", name);
        let dinputs_name = format_ident!("{}DeviceInputs", name);
        let doutputs_name = format_ident!("{}DeviceOutputs", name);
        let c = rt();

        let mut items = Vec::new();
        gen.param_structs_named(tree, &mut vec![], &mut items, "Grads");
        self.device_struct_tree(gen, tree, &mut vec![], "DeviceGrads", &mut items);
        let visits: Vec<TokenStream> = g.params.iter().map(|p| {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            let dotted = p.dotted();
            quote!(f(#dotted, ::mithril::rt::TensorView::from(self.#(#fields).*.view().into_dyn()));)
        }).collect();
        let visits_mut: Vec<TokenStream> = g.params.iter().map(|p| {
            let fields = p.path.iter().map(|s| format_ident!("{}", s));
            let dotted = p.dotted();
            quote!(f(#dotted, ::mithril::rt::TensorViewMut::from(self.#(#fields).*.view_mut().into_dyn()))?;)
        }).collect();
        let grads_to_host =
            self.convert_tree(gen, tree, &mut vec![], "Grads", &quote!(grads), false);

        // the forward+backward graph; a node without a lowering makes the whole model fail
        let before = self.errors.len();
        let kernels_before = self.kernels.len();
        let mut cx = self.ctx(t, "g");
        let (checks, body, outs) = self.body(&mut cx);
        let errs: Vec<syn::Error> = self.errors.drain(before..).collect();
        if !errs.is_empty() {
            self.kernels.truncate(kernels_before);
            self.entries.truncate(kernels_before);
        }
        let train_model = self.inp.train_model;
        if !errs.is_empty() && train_model {
            // a train model exists for its gradient: that is a compile error
            self.errors.extend(errs.iter().cloned());
        }
        let mut fwd = Vec::new();
        let mut grad_vals: BTreeMap<usize, TokenStream> = BTreeMap::new();
        for (n, val) in outs {
            match n
                .strip_prefix(crate::autodiff::GRAD_PREFIX)
                .and_then(|i| i.parse::<usize>().ok())
            {
                Some(i) => {
                    grad_vals.insert(i, val);
                }
                None => {
                    let f = format_ident!("{}", n);
                    fwd.push(quote!(#f: #val));
                }
            }
        }
        let dgrads = grads_expr(gen, tree, &mut vec![], &grad_vals);
        let syms: Vec<&str> = t.syms.iter().map(|s| s.as_str()).collect();
        let seed_arg = if train_model {
            quote!()
        } else {
            quote!(output_grads: #doutputs_name,)
        };
        let host_seed_arg = if train_model {
            quote!()
        } else {
            quote!(output_grads: #outputs_name,)
        };
        let seed_upload: Vec<TokenStream> = if train_model {
            vec![]
        } else {
            g.outputs
                .iter()
                .map(|o| {
                    let f = format_ident!("{}", o.name);
                    quote!(#f: #c::DeviceTensor::to_device(&self.__dev, &output_grads.#f.view())?)
                })
                .collect()
        };
        let seed_pass = if train_model {
            quote!()
        } else {
            quote!(#doutputs_name { #(#seed_upload,)* },)
        };
        let to_dev_inputs: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let l = format_ident!("__in_{}", i.name.trim_start_matches("r#"));
                quote!(let #l = #c::DeviceTensor::to_device(&self.__dev, &inputs.#f)?;)
            })
            .collect();
        let dev_input_init: Vec<TokenStream> = g
            .inputs
            .iter()
            .map(|i| {
                let f = format_ident!("{}", i.name);
                let l = format_ident!("__in_{}", i.name.trim_start_matches("r#"));
                quote!(#f: &#l)
            })
            .collect();
        let phantom_init = if g.inputs.is_empty() {
            quote!(_marker: ::std::marker::PhantomData,)
        } else {
            quote!()
        };
        let grad_doc = if train_model {
            "Run the train model on device data and differentiate its `loss` (seeded with 1): the outputs and the gradient of every param, all in device memory (no host round trip)."
        } else {
            "Run the model on device data and differentiate it: the outputs and the gradient of `sum(output * output_grads)` with respect to every param, all in device memory."
        };
        let device_body = if errs.is_empty() {
            quote! {
                let __dev: &::mithril::rt::cuda::CudaDevice = &self.__dev;
                let mut __env = ::mithril::rt::SymEnv::new(&[#(#syms),*]);
                #(#checks)*
                let _ = &__env;
                #(#body)*
                Ok((#doutputs_name { #(#fwd,)* }, #dgrads))
            }
        } else {
            let why = errs
                .iter()
                .map(|e| e.to_string().lines().next().unwrap_or("").to_string())
                .collect::<Vec<_>>()
                .join("; ");
            let msg = format!("the gradient of `{name}` is not lowered on cuda: {why}");
            quote! {
                let _ = (params, inputs);
                Err(::mithril::rt::Error::op(::std::stringify!(#name), #msg))
            }
        };
        let (out_ty, grad_ty) = (quote!(#outputs_name), quote!(#grads_name));
        let items = quote! {
            #(#items)*
            impl ::mithril::rt::ParamTree for #grads_name {
                fn visit(&self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorView<'_>)) {
                    #(#visits)*
                }
                fn visit_mut(&mut self, f: &mut dyn FnMut(&str, ::mithril::rt::TensorViewMut<'_>) -> ::mithril::rt::Result<()>) -> ::mithril::rt::Result<()> {
                    #(#visits_mut)*
                    Ok(())
                }
            }
        };
        let _ = vis;
        let methods = quote! {
            #[doc = #grad_doc]
            #[allow(unused_variables, unused_mut, clippy::let_and_return, clippy::redundant_clone, clippy::needless_borrow, clippy::approx_constant, clippy::excessive_precision)]
            pub fn evaluate_gradients_device(&self, params: &#dparams_name, inputs: #dinputs_name<'_>, #seed_arg) -> ::mithril::rt::Result<(#doutputs_name, #dgrads_name)> {
                #device_body
            }

            /// Copy device gradients to the host.
            pub fn grads_to_host(&self, grads: &#dgrads_name) -> ::mithril::rt::Result<#grads_name> {
                Ok(#grads_to_host)
            }

            /// [`Self::evaluate_gradients_device`] on host data (same signature as the CPU
            /// backend): params, inputs and seeds are copied to the device, results back.
            pub fn evaluate_gradients(&self, params: &#params_name, inputs: #inputs_name<'_>, #host_seed_arg) -> ::mithril::rt::Result<(#out_ty, #grad_ty)> {
                let __params = self.params_to_device(params)?;
                #(#to_dev_inputs)*
                let (outputs, grads) = self.evaluate_gradients_device(&__params, #dinputs_name { #(#dev_input_init,)* #phantom_init }, #seed_pass)?;
                Ok((self.outputs_to_host(outputs)?, self.grads_to_host(&grads)?))
            }
        };
        GradParts { items, methods }
    }
}

fn grads_expr(
    gen: &Gen,
    tree: &Tree,
    path: &mut Vec<String>,
    vals: &BTreeMap<usize, TokenStream>,
) -> TokenStream {
    let name = gen.struct_name(path, "DeviceGrads");
    let mut fields = Vec::new();
    for key in &tree.order {
        let f = format_ident!("{}", key);
        if let Some(&i) = tree.leaves.get(key) {
            let val = vals
                .get(&i)
                .cloned()
                .unwrap_or_else(|| quote!(compile_error!("internal: missing gradient")));
            fields.push(quote!(#f: #val));
        } else if let Some(sub) = tree.subs.get(key) {
            path.push(key.clone());
            let e = grads_expr(gen, sub, path, vals);
            path.pop();
            fields.push(quote!(#f: #e));
        }
    }
    quote!(#name { #(#fields,)* })
}

/// The DSL name of what a node computes.
fn p_name(op: &Op) -> &'static str {
    match op {
        Op::Prim(p) => p.name(),
        Op::Fused(_) => "fused elementwise group",
        Op::FusedMatmul { .. } => "matmul",
        Op::Const(_) => "constant",
        _ => "value",
    }
}

/// The `DeviceOptions` a model opens its device with (`cuda: { arch }`, `cache`, `cache_dir`).
pub(crate) fn device_options(opts: &CudaOptions) -> TokenStream {
    let c = rt();
    let cache = match (&opts.cache, &opts.cache_dir) {
        (false, _) => quote!(#c::CacheConfig::memory_only()),
        (true, Some(d)) => quote!(#c::CacheConfig::in_dir(#d)),
        (true, None) => quote!(::std::default::Default::default()),
    };
    quote!(#c::DeviceOptions {
        arch: Self::CUDA_ARCH.map(::std::string::String::from),
        cache: #cache,
        ptx: false,
    })
}

/// The device side of one graph of a mixed model (`backend_map`): [`codegen::Gen`] generates
/// the host code and asks this for every node placed on cuda (the lowering of [`CudaGen`],
/// unchanged), for the uploads of host values that a device op reads and for the downloads of
/// device values that a host op reads or that are returned. Host values are `vN`, device values
/// `dN`.
pub(crate) struct Mixed<'a> {
    cg: CudaGen<'a>,
    cx: Ctx<'a>,
    /// Where each node is computed and where its value exists.
    pub placed: Placed,
    /// The forward graph (`evaluate`): a node placed on cuda without a lowering is a compile
    /// error. In the forward+backward graph such a (gradient) node runs on the CPU instead.
    forward: bool,
    /// Forward graph: the params its device ops read (indices into `Graph::params`), which
    /// `M::prepare` uploads once; `evaluate` uploads them per call.
    pub prepared: Vec<usize>,
}

impl<'a> Mixed<'a> {
    /// The device side of `g`; `forward`: the graph of `evaluate` (kernels `f<id>`), else of
    /// `evaluate_gradients` (kernels `g<id>`).
    pub fn new(
        g: &'a Graph,
        inp: &'a CodegenInput<'a>,
        opts: &'a CudaOptions,
        forward: bool,
    ) -> Self {
        let prefix = if forward { "f" } else { "g" };
        let mut forced = vec![false; g.nodes.len()];
        if !forward {
            // a gradient op without a CUDA lowering runs on the CPU
            let mut scratch = CudaGen::new(g, None, inp, opts);
            let cx = scratch.ctx(g, prefix);
            for (id, f) in forced.iter_mut().enumerate() {
                if g.on_cuda(id) && !matches!(g.nodes[id].op, Op::Const(_)) {
                    *f = scratch.node(&cx, id).is_err();
                }
            }
        }
        let placed = Placed::new(g, &forced);
        let cg = CudaGen::new(g, None, inp, opts);
        let mut cx = cg.ctx(g, prefix);
        cx.dev_names = true;
        Mixed {
            cg,
            cx,
            placed,
            forward,
            prepared: Vec::new(),
        }
    }

    /// The code of node `id`, computed on the device; `dest` is the host destination of its
    /// download, when the host reads it.
    pub fn device_node(&mut self, id: NodeId, dest: Option<TokenStream>) -> TokenStream {
        let g = self.cx.g;
        match self.cg.node(&self.cx, id) {
            Ok(Some(val)) => {
                self.cx.owned[id] = true;
                let d = self.cx.name(id);
                let ty = self.cx.ty(id);
                let mut code = quote!(let #d: ::mithril::rt::cuda::DeviceTensor<#ty> = #val;);
                if let Some(dest) = dest {
                    let vid = v(id);
                    let label = self.cx.label(id);
                    code.extend(quote! {
                        let #vid = ::mithril::rt::cuda::exec::download(&#d, #dest, #label)?;
                    });
                }
                code
            }
            Ok(None) => quote!(),
            Err(why) => {
                let what = p_name(&g.nodes[id].op);
                let model = self.cg.inp.name.to_string();
                let scope = &g.nodes[id].scope;
                let msg = if self.forward {
                    format!("`{model}` places this `{what}` (instance `{scope}`) on cuda with `backend_map`, which cannot lower it yet: {why}\nlowered on cuda: {SUPPORTED}")
                } else {
                    format!("internal: gradient op `{what}` kept on cuda without a lowering: {why}")
                };
                self.cg.errors.push(g.error_at(id, msg));
                quote!()
            }
        }
    }

    /// What follows the host code of node `id`: its upload when a device op reads it, or its
    /// device scalar when it is a constant a device op reads.
    pub fn after_host(&mut self, id: NodeId) -> TokenStream {
        let d = self.cx.name(id);
        if let (true, true, Op::Param(i)) = (
            self.forward,
            self.placed.upload(id),
            &self.cx.g.nodes[id].op,
        ) {
            // `evaluate_prepared` reads the copy `prepare` made; `evaluate` uploads it
            let i = *i;
            if !self.prepared.contains(&i) {
                self.prepared.push(i);
            }
            let field = format_ident!("p{}", i);
            let tmp = format_ident!("__up{}", id);
            let vid = v(id);
            return quote! {
                let #tmp;
                let #d = match __prep {
                    ::std::option::Option::Some(p) => &p.#field,
                    ::std::option::Option::None => {
                        #tmp = ::mithril::rt::cuda::DeviceTensor::to_device(__dev, &#vid.view())?;
                        &#tmp
                    }
                };
            };
        }
        if self.placed.upload(id) {
            self.cx.owned[id] = true;
            let vid = v(id);
            return quote! {
                let #d = ::mithril::rt::cuda::DeviceTensor::to_device(__dev, &#vid.view())?;
            };
        }
        if self.placed.device_const(id) {
            if let Ok(Some(val)) = self.cg.node(&self.cx, id) {
                self.cx.owned[id] = true;
                let ty = self.cx.ty(id);
                return quote!(let #d: ::mithril::rt::cuda::DeviceTensor<#ty> = #val;);
            }
        }
        quote!()
    }

    /// Errors met so far (taken).
    pub fn take_errors(&mut self) -> Vec<syn::Error> {
        std::mem::take(&mut self.cg.errors)
    }

    /// Kernels of another graph of the same model (its `evaluate_gradients`) join this module.
    pub fn absorb(&mut self, other: Mixed<'a>) {
        self.cg.kernels.extend(other.cg.kernels);
        self.cg.entries.extend(other.cg.entries);
        self.cg.errors.extend(other.cg.errors);
    }

    /// The module source and its entry names.
    pub fn module(&self) -> (String, &[String]) {
        (
            kernel_text::fused_module(&self.cg.kernels),
            &self.cg.entries,
        )
    }
}
