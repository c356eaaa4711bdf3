//! The CPU element lowering both CPU generators share ([`super::cpu`]'s per-op path and
//! [`super::cpu_static`]): a fused elementwise expression as an inlined Rust scalar expression
//! ([`lower_fexpr`]) and a fused matmul's row-segment epilogue ([`epilogue_seg`]). Pure
//! functions of the IR; no backend below them.

use crate::ir::{DType, FExpr};
use crate::prims::{convert, literal, storage_type, Prim};
use proc_macro2::TokenStream;
use quote::{format_ident, quote};
use syn::Ident;

/// Lower a fused expression; returns the tokens and the dtype whose compute domain they are in.
pub(crate) fn lower_fexpr(e: &FExpr, arg_dts: &[DType]) -> (TokenStream, DType) {
    match e {
        FExpr::Arg(i) => {
            let a = format_ident!("a{}", i);
            (quote!(::mithril::rt::Elem::to_acc(#a)), arg_dts[*i])
        }
        FExpr::Lit(s, t) => (literal(*s, *t), *t),
        FExpr::Op(p, args, out, compute) => {
            let lowered: Vec<(TokenStream, DType)> =
                args.iter().map(|a| lower_fexpr(a, arg_dts)).collect();
            let conv: Vec<TokenStream> = lowered
                .iter()
                .enumerate()
                .map(|(i, (t, d))| convert(t.clone(), *d, p.operand_dtype(i, *compute, *d)))
                .collect();
            let body = p.scalar(&conv, *compute);
            match p {
                Prim::Cast(_) => (convert(body, lowered[0].1, *out), *out),
                _ => (body, *out),
            }
        }
    }
}

/// The row-segment epilogue closure of a fused matmul of dtype `t` (`expr`'s `Arg(0)` is
/// the product, `Arg(i)` the `i`-th other operand, of dtypes `others`): one call of the
/// multiversioned in-place `ew` driver over the accumulators of a finished row segment.
pub(crate) fn epilogue_seg(t: DType, expr: &FExpr, others: &[DType]) -> TokenStream {
    let out_ty = storage_type(t);
    let mut arg_dts = vec![t];
    arg_dts.extend_from_slice(others);
    let (body, body_dt) = lower_fexpr(expr, &arg_dts);
    let body = convert(body, body_dt, t);
    let k = others.len();
    let srcs: Vec<Ident> = (1..=k).map(|i| format_ident!("__s{}", i)).collect();
    let params: Vec<TokenStream> = others
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let a = format_ident!("a{}", i + 1);
            let ty = storage_type(d);
            quote!(#a: #ty)
        })
        .collect();
    let drv = format_ident!("map{}_inplace", k + 1);
    let acc = quote!(<#out_ty as ::mithril::rt::Elem>::Acc);
    quote! {
        |__v: &mut [#acc], __s: [::mithril::rt::fixed::Src<'_, #out_ty>; #k]| {
            let [#(#srcs),*] = __s;
            ::mithril::rt::fixed::ew::#drv(__v, #(#srcs,)* |__p: #acc, #(#params),*| -> #acc {
                // the product rounded to the storage type, as the unfused graph stores it
                let a0: #out_ty = <#out_ty as ::mithril::rt::Elem>::from_acc(__p);
                <#out_ty as ::mithril::rt::Elem>::to_acc(<#out_ty as ::mithril::rt::Elem>::from_acc(#body))
            });
        }
    }
}
