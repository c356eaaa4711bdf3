//! [`CudaCx`] for the families' CUDA lowerings (`prims::Family::cuda`): the node being lowered
//! and the generator's plumbing (operand references, dims, labels, dtypes, the launch helpers of
//! `launch`).

use super::{Ctx, CudaGen};
use crate::ir::{DType, Dim, FExpr, NodeId};
use crate::prims::cuda::{CudaCx, Operand};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// Node `id` of the graph of `cx`, lowered by `gen`.
pub(super) struct NodeCx<'x, 'a> {
    pub gen: &'x mut CudaGen<'a>,
    pub cx: &'x Ctx<'a>,
    pub id: NodeId,
}

impl NodeCx<'_, '_> {
    fn arg(&self, k: usize) -> NodeId {
        self.cx.g.nodes[self.id].args[k]
    }
}

impl CudaCx for NodeCx<'_, '_> {
    fn n_args(&self) -> usize {
        self.cx.g.nodes[self.id].args.len()
    }
    fn r(&self, k: usize) -> TokenStream {
        self.cx.r(self.arg(k))
    }
    fn dt(&self, k: usize) -> DType {
        self.cx.dt(self.arg(k))
    }
    fn out_dt(&self) -> DType {
        self.cx.dt(self.id)
    }
    fn dims(&self, k: usize) -> Result<Vec<Dim>, String> {
        self.cx.dims(self.arg(k))
    }
    fn out_dims(&self) -> Result<Vec<Dim>, String> {
        self.cx.dims(self.id)
    }
    fn label(&self) -> String {
        self.cx.label(self.id)
    }
    fn describe(&self, k: usize) -> String {
        self.cx.g.describe(self.arg(k))
    }
    fn operand(&self, k: usize) -> Result<Operand, String> {
        self.gen.operand(self.cx, self.arg(k))
    }
    fn elementwise(&mut self, expr: &FExpr, ops: &[Operand]) -> Result<TokenStream, String> {
        self.gen.elementwise(self.cx, self.id, "", expr, ops)
    }
    fn cast_operand(&mut self, k: usize, to: DType) -> Result<TokenStream, String> {
        let a = self.arg(k);
        self.gen.cast(self.cx, self.id, &format!("_c{k}"), a, to)
    }
    fn cast_value(
        &mut self,
        value: TokenStream,
        from: DType,
        dims: &[Dim],
        to: DType,
    ) -> Result<TokenStream, String> {
        let e = FExpr::Op(Prim::Cast(to), vec![FExpr::Arg(0)], to, from);
        let shape = quote!(#value.shape().to_vec());
        self.gen.fused_launch(
            self.cx,
            self.id,
            "_cy",
            &e,
            &[(value, from, dims.to_vec())],
            dims,
            to,
            shape,
        )
    }
    fn fused_launch(
        &mut self,
        expr: &FExpr,
        ops: &[Operand],
        out_dims: &[Dim],
        out_dt: DType,
        out_shape: TokenStream,
    ) -> Result<TokenStream, String> {
        self.gen
            .fused_launch(self.cx, self.id, "", expr, ops, out_dims, out_dt, out_shape)
    }
    fn matmul(&mut self, ta: bool, tb: bool) -> Result<(TokenStream, DType), String> {
        self.gen.matmul(self.cx, self.id, ta, tb)
    }
    fn reshape_dims(&self) -> Result<TokenStream, String> {
        self.gen.reshape_dims(self.cx, self.id)
    }
    fn reshape_to(&self, k: usize, dims: TokenStream) -> TokenStream {
        self.gen.reshape_to(self.cx, self.id, self.arg(k), dims)
    }
    fn index_i64(&mut self, k: usize) -> Result<TokenStream, String> {
        let a = self.arg(k);
        self.gen.index_i64(self.cx, self.id, a)
    }
    fn host_index(&mut self, k: usize) -> TokenStream {
        let (a, label) = (self.arg(k), self.cx.label(self.id));
        self.gen.host_index(self.cx, a, &label)
    }
    fn take(&self, k: usize) -> Option<TokenStream> {
        let a = self.arg(k);
        self.cx.movable(a, self.id).then(|| {
            let name = self.cx.name(a);
            quote!(#name)
        })
    }
}
