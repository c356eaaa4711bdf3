//! How the operands of a generated kernel are read (broadcast patterns, decided at compile time
//! where the dims are known) and which matmul epilogues cuBLASLt runs itself.

use super::kernel_text::{Extent, IndexMode};
use crate::ir::{Dim, FExpr};
use crate::prims::Prim;
use proc_macro2::TokenStream;
use quote::quote;

/// A broadcast operand's read pattern, at compile time (kernel side) and run time.
pub(super) struct Read {
    pub(super) mode: IndexMode,
    pub(super) runtime: TokenStream,
}

fn known(d: &Dim) -> Option<u64> {
    match d {
        Dim::Known(n) => Some(*n),
        _ => None,
    }
}

/// How an operand of shape `arg` is read against an output of shape `out`.
pub(super) fn read_mode(out: &[Dim], arg: &[Dim]) -> Result<Read, String> {
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
pub(super) fn lt_epilogue(
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
