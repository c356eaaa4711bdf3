//! Kernel launches and library calls: generated elementwise kernels over broadcast operands,
//! casts, matrix products (cuBLAS, cuBLASLt epilogues), reshapes, index conversions.

use super::kernel_text::{self, KernelArg};
use super::read::{lt_epilogue, read_mode};
use super::{rt, Ctx, CudaGen};
use crate::ir::{DType, Dim, FExpr, NodeId};
use crate::prims::{storage_type, Prim};
use proc_macro2::TokenStream;
use quote::quote;

impl<'a> CudaGen<'a> {
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
    pub(super) fn fused_launch(
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
    pub(super) fn elementwise(
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

    pub(super) fn operand(
        &self,
        cx: &Ctx,
        a: NodeId,
    ) -> Result<(TokenStream, DType, Vec<Dim>), String> {
        Ok((cx.r(a), cx.dt(a), cx.dims(a)?))
    }

    /// A cast kernel of node `a`'s value to `to` (kernel `<prefix><id><suffix>`).
    pub(super) fn cast(
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
    pub(super) fn matmul(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        ta: bool,
        tb: bool,
    ) -> Result<(TokenStream, DType), String> {
        let n = &cx.g.nodes[id];
        let (a, b) = (n.args[0], n.args[1]);
        // rank 2, or batches of matrices (`exec::matmul`: `[.., M, K] @ [K, N]` folded into one
        // GEMM, other batches one strided-batched GEMM)
        for x in [a, b] {
            if cx.dims(x)?.len() < 2 {
                return Err(format!(
                    "matmul operands must have rank 2 or more on cuda, this one is {}",
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

    pub(super) fn fused_matmul(
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
        // the Lt epilogue takes 2-D products; a `[.., M, K] @ [K, N]` one runs as product, then
        // the elementwise group
        if matches!(t, DType::F16 | DType::BF16) && out_dims.len() == 2 {
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
    pub(super) fn reshape_dims(&self, cx: &Ctx, id: NodeId) -> Result<TokenStream, String> {
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
    pub(super) fn reshape_to(
        &self,
        cx: &Ctx,
        user: NodeId,
        a: NodeId,
        dims: TokenStream,
    ) -> TokenStream {
        let c = rt();
        if cx.movable(a, user) {
            let va = cx.name(a);
            quote!({ let __d: ::std::vec::Vec<isize> = #dims; #c::exec::reshape_owned(#va, &__d)? })
        } else {
            let ra = cx.r(a);
            quote!({ let __d: ::std::vec::Vec<isize> = #dims; #c::exec::reshape(__dev, #ra, &__d)? })
        }
    }

    /// Indices as `i64` (a cast kernel for other integer types).
    pub(super) fn index_i64(
        &mut self,
        cx: &Ctx,
        id: NodeId,
        a: NodeId,
    ) -> Result<TokenStream, String> {
        match cx.dt(a) {
            DType::I64 => Ok(cx.r(a)),
            DType::I32 => {
                let c = self.cast(cx, id, "_idx", a, DType::I64)?;
                Ok(quote!((&#c)))
            }
            t => Err(format!("indices must be integers, got {t}")),
        }
    }
}
