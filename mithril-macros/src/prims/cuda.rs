//! The CUDA lowering's interface (`backend: cuda` and the device side of mixed models): what a
//! family's [`super::Family::cuda`] may ask about the node it lowers and the launch helpers it
//! lowers with. [`CudaCx`] is implemented by the CUDA generator (`crate::backends::cuda`); the
//! families decide which runtime call a primitive becomes, with which attributes, and which
//! operands they reject (with the error text).

use crate::ir::{DType, Dim, FExpr};
use proc_macro2::TokenStream;
use quote::quote;

/// An operand of a generated kernel: its value (a `&DeviceTensor` expression), dtype and dims.
pub type Operand = (TokenStream, DType, Vec<Dim>);

/// The node a family's CUDA lowering lowers, and the plumbing to lower it with. Operands are
/// numbered as the node's arguments (`0..n_args()`). The generated value is an owned
/// `DeviceTensor` expression; `__dev` is the device in scope.
pub trait CudaCx {
    /// The number of operands.
    fn n_args(&self) -> usize;
    /// Operand `k` as a `&DeviceTensor<T>` expression.
    fn r(&self, k: usize) -> TokenStream;
    /// Operand `k`'s dtype.
    fn dt(&self, k: usize) -> DType;
    /// The node's dtype.
    fn out_dt(&self) -> DType;
    /// Operand `k`'s resolved dims (`Err`: an open rank, with the message).
    fn dims(&self, k: usize) -> Result<Vec<Dim>, String>;
    /// The node's resolved dims (`Err`: an open rank).
    fn out_dims(&self) -> Result<Vec<Dim>, String>;
    /// The node's label (for run-time errors).
    fn label(&self) -> String;
    /// Operand `k` as the compiler describes it in errors.
    fn describe(&self, k: usize) -> String;
    /// Operand `k` as an operand of a generated kernel.
    fn operand(&self, k: usize) -> Result<Operand, String>;
    /// A generated elementwise kernel computing `expr` over `ops`, into the broadcast of their
    /// shapes.
    fn elementwise(&mut self, expr: &FExpr, ops: &[Operand]) -> Result<TokenStream, String>;
    /// A generated elementwise kernel computing `expr` over `ops` into a tensor of `out_dims`,
    /// dtype `out_dt` and run-time shape `out_shape` (a `Vec<usize>` expression).
    fn fused_launch(
        &mut self,
        expr: &FExpr,
        ops: &[Operand],
        out_dims: &[Dim],
        out_dt: DType,
        out_shape: TokenStream,
    ) -> Result<TokenStream, String>;
    /// The matrix product of operands 0 and 1 (either transposed): `(value, its dtype)`.
    fn matmul(&mut self, ta: bool, tb: bool) -> Result<(TokenStream, DType), String>;
    /// The node's dims as a `Vec<isize>` expression (`-1` for the one known only at run time).
    fn reshape_dims(&self) -> Result<TokenStream, String>;
    /// Operand `k` reshaped to `dims` (a `Vec<isize>` expression): moved when it is dead,
    /// copied otherwise.
    fn reshape_to(&self, k: usize, dims: TokenStream) -> TokenStream;
    /// Operand `k` as `i64` indices (a cast kernel for other integer types).
    fn index_i64(&mut self, k: usize) -> Result<TokenStream, String>;
    /// Operand `k` cast to `to` by a generated kernel: an owned `DeviceTensor` expression.
    fn cast_operand(&mut self, k: usize, to: DType) -> Result<TokenStream, String>;
    /// `value` (a `&DeviceTensor` expression of dtype `from` and dims `dims`) cast to `to` by a
    /// generated kernel (one per node).
    fn cast_value(
        &mut self,
        value: TokenStream,
        from: DType,
        dims: &[Dim],
        to: DType,
    ) -> Result<TokenStream, String>;
    /// The call's seed of random ops, a `u64` expression (`Mode::seed`: 0 in evaluation,
    /// fresh per training call unless `Mode::TrainSeeded`), in scope in the generated code of
    /// a model that reads `is_training` (`dropout` does); `__training` is the mode as a host
    /// `bool`.
    #[allow(dead_code)]
    fn seed(&self) -> TokenStream {
        quote!(__seed)
    }
    /// Operand `k` as an owned `DeviceTensor` the node may consume (write in place and return):
    /// `Some` when it is an owned value dead after this node (or a donated input read only
    /// here), `None` otherwise (then [`Self::r`] borrows it).
    fn take(&self, _k: usize) -> Option<TokenStream> {
        None
    }
    /// Operand `k` (an integer scalar) as a host `i64` expression: a host value where the
    /// generator holds one (a counted loop's counter; an input read back once at the start of
    /// the call, `CudaGen::body`), else a read back from the device here (`flow::read_index`,
    /// one 8-byte copy that waits for the stream).
    fn host_index(&mut self, k: usize) -> TokenStream {
        let (r, label, c) = (self.r(k), self.label(), rt());
        quote!(#c::flow::read_index(#r, #label)?)
    }
}

/// The runtime's CUDA module, `::mithril::rt::cuda`.
pub fn rt() -> TokenStream {
    quote!(::mithril::rt::cuda)
}

/// `Err` unless `t` is one of the float types the hand-written kernels take (`what` names the
/// op in the message).
pub fn float3(t: DType, what: &str) -> Result<(), String> {
    match t {
        DType::F32 | DType::F16 | DType::BF16 => Ok(()),
        t => Err(format!(
            "{what} on cuda takes f32, f16 or bf16, this operand is {t}"
        )),
    }
}

/// The lowering of an op whose hand-written kernels exist in f32 and f64 only (convolution,
/// pooling, dropout, attention), for every float storage type: f32 / f64 operands go straight
/// to `body`; f16 / bf16 ones (of the operands in `floats`) are widened to f32 by generated
/// kernels, `body` computes in f32, and its result is narrowed back to the node's dtype
/// (round to nearest even) — the CPU's f32 compute type for half storage. `body` gets every
/// operand as a `&DeviceTensor` expression. Any other dtype among `floats` is an error naming
/// `what` and the operand.
pub fn via_f32(
    cx: &mut dyn CudaCx,
    what: &str,
    floats: &[usize],
    body: impl FnOnce(&[TokenStream]) -> TokenStream,
) -> Result<TokenStream, String> {
    let half = |t: DType| matches!(t, DType::F16 | DType::BF16);
    for &k in floats {
        if !matches!(cx.dt(k), DType::F32 | DType::F64) && !half(cx.dt(k)) {
            return Err(format!(
                "`{what}` on cuda takes f32, f64, f16 or bf16 operands, not {}",
                cx.describe(k)
            ));
        }
    }
    if !floats.iter().any(|&k| half(cx.dt(k))) {
        let ops: Vec<TokenStream> = (0..cx.n_args()).map(|k| cx.r(k)).collect();
        return Ok(body(&ops));
    }
    let mut lets = Vec::new();
    let mut ops = Vec::new();
    for k in 0..cx.n_args() {
        if floats.contains(&k) && half(cx.dt(k)) {
            let wide = cx.cast_operand(k, DType::F32)?;
            let v = quote::format_ident!("__wide{}", k);
            lets.push(quote!(let #v = #wide;));
            ops.push(quote!((&#v)));
        } else {
            ops.push(cx.r(k));
        }
    }
    let y = body(&ops);
    let out = cx.out_dt();
    if !half(out) {
        return Ok(quote!({ #(#lets)* #y }));
    }
    let dims = cx.out_dims()?;
    let back = cx.cast_value(quote!((&__narrow)), DType::F32, &dims, out)?;
    Ok(quote!({
        #(#lets)*
        let __narrow = #y;
        #back
    }))
}
