//! CUDA C for fused elementwise groups: the GPU counterpart of `backends::cpu_elem`'s `lower_fexpr` /
//! `Prim::scalar` (both defined with the primitive in `prims::elementwise`: `scalar` and
//! `scalar_c`), as a pure function from the IR to source text.
//!
//! [`fused_kernel`] turns one `Op::Fused(FExpr)` node into
//!
//! ```text
//! extern "C" __global__ void <name>(const T0* __restrict__ a0, ..., T* __restrict__ out, long n
//!                                   [, long p<i> / long q<i>, long p<i> for run-time extents])
//! ```
//!
//! a 1-D grid-stride loop over the `n` output elements (launch it with
//! `mithril_runtime::cuda::launch::elementwise_config`). Each argument is read once per element
//! through its [`IndexMode`] (`Full`: `i`; `Scalar`: `0`; `Period`: `i % len`, a trailing-dims
//! broadcast such as a bias `[C]` against `[N, C]`; `Block`: `(i / inner) % len`, e.g. a column
//! `[N, 1]` against `[N, C]`) and widened to its compute type exactly as on the CPU: `f16` /
//! `bf16` to `float`, `f32` float, `f64` double, `i32` int, `i64` long long, `bool` bool. The
//! expression is the CPU's, operation by operation: the same operand conversions
//! (`Prim::operand_dtype`), and every primitive (its `scalar_c` lowering, defined with the
//! primitive in `prims::elementwise`) calls an overloaded `mt_*` device function of
//! [`FUSED_PRELUDE`] with the semantics of `mithril_kernels::scalar` (wrapping integer
//! arithmetic, 0 for integer division by zero, NumPy `floor_divide` / `remainder` signs,
//! NaN-propagating `minimum`/`maximum`/`clamp`, the overflow-safe `sigmoid` / `softplus`, erf
//! and tanh GELU with the CPU's constants). The result is narrowed to the output's storage type
//! (`f16`/`bf16` round to nearest even, like `half`).
//!
//! Differences from the CPU that remain: CUDA's `erff`/`expf`/`tanhf`/... are not `libm`'s (a
//! few ulp apart), and NVRTC contracts `a * b + c` into FMAs by default (compile with
//! `--fmad=false` for closer agreement). Results are close, not bitwise equal.
//!
//! A module is [`fused_module`]: the prelude once, then any number of kernels. The runtime
//! compiles it with NVRTC (`mithril_runtime::cuda::KernelCache`). The CUDA backend ([`super`])
//! emits one module per `backend: cuda` model (`M::CUDA_SOURCE`); the unit tests below check the
//! text and compile it with the real NVRTC when it is available.

use crate::ir::{DType, FExpr};
use crate::prims::lower::c_literal as literal;
use crate::prims::{acc_dtype, Prim};
use std::fmt::Write;

/// A size known when the kernel is generated, or passed at launch as a `long` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Extent {
    /// Baked into the source as a literal.
    Known(u64),
    /// A `long` kernel parameter after `n` (see [`fused_kernel`] for the order).
    Runtime,
}

/// How an argument's element is found from the output's flat index `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexMode {
    /// Same shape as the output: element `i`.
    Full,
    /// One element (a scalar or all-ones shape): element `0`.
    Scalar,
    /// Repeats with period `len` along the flat index: element `i % len` (the arg's shape is a
    /// suffix of the output's, e.g. a bias `[C]` against `[N, C]`).
    Period(Extent),
    /// Each element repeated `inner` times, `len` distinct values cycling: element
    /// `(i / inner) % len` (e.g. `[N, 1]` against `[N, C]`: `inner = C`, `len = N`).
    Block {
        /// Consecutive output elements that share one arg element.
        inner: Extent,
        /// Distinct arg elements before the pattern repeats.
        len: Extent,
    },
}

/// One argument of a fused kernel: its storage dtype and how it is indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelArg {
    /// Storage dtype of the argument buffer.
    pub dtype: DType,
    /// Index mode.
    pub mode: IndexMode,
}

/// Device functions every fused kernel uses, with the semantics of `mithril_kernels::scalar`.
/// Header-free: `f16_t`/`bf16_t` are `unsigned short` converted with PTX `cvt` / bit
/// operations, so NVRTC needs no include path.
pub const FUSED_PRELUDE: &str = r#"// mithril fused-kernel prelude (mithril-macros/src/backends/cuda/kernel_text.rs)
typedef unsigned short f16_t;
typedef unsigned short bf16_t;
__device__ __forceinline__ float mt_h2f(f16_t h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ f16_t mt_f2h(float f) { f16_t h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
__device__ __forceinline__ float mt_b2f(bf16_t h) { return __uint_as_float(((unsigned int)h) << 16); }
__device__ __forceinline__ bf16_t mt_f2b(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (bf16_t)((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}
#define MT_INT_OPS(T, U, MIN)                                                                \
__device__ __forceinline__ T mt_add(T a, T b) { return (T)((U)a + (U)b); }                  \
__device__ __forceinline__ T mt_sub(T a, T b) { return (T)((U)a - (U)b); }                  \
__device__ __forceinline__ T mt_mul(T a, T b) { return (T)((U)a * (U)b); }                  \
__device__ __forceinline__ T mt_neg(T a) { return (T)((U)0 - (U)a); }                       \
__device__ __forceinline__ T mt_abs(T a) { return a < 0 ? mt_neg(a) : a; }                  \
__device__ __forceinline__ T mt_wdiv(T a, T b) { return (a == MIN && b == -1) ? MIN : a / b; } \
__device__ __forceinline__ T mt_wrem(T a, T b) { return b == -1 ? (T)0 : a % b; }            \
__device__ __forceinline__ T mt_div(T a, T b) { return b == 0 ? (T)0 : mt_wdiv(a, b); }     \
__device__ __forceinline__ T mt_floordiv(T a, T b) {                                         \
    if (b == 0) return 0;                                                                    \
    T q = mt_wdiv(a, b);                                                                     \
    return (mt_wrem(a, b) != 0 && ((a < 0) != (b < 0))) ? mt_sub(q, (T)1) : q;               \
}                                                                                            \
__device__ __forceinline__ T mt_rem(T a, T b) {                                              \
    if (b == 0) return 0;                                                                    \
    T r = mt_wrem(a, b);                                                                     \
    return (r != 0 && ((r < 0) != (b < 0))) ? mt_add(r, b) : r;                              \
}                                                                                            \
__device__ __forceinline__ T mt_min(T a, T b) { return a < b ? a : b; }                     \
__device__ __forceinline__ T mt_max(T a, T b) { return a > b ? a : b; }                     \
__device__ __forceinline__ T mt_sign(T a) { return (T)((a > 0) - (a < 0)); }                \
__device__ __forceinline__ T mt_square(T a) { return mt_mul(a, a); }                        \
__device__ __forceinline__ T mt_relu(T a) { return a > 0 ? a : (T)0; }                     \
__device__ __forceinline__ T mt_leaky_relu(T a, T s) { return a > 0 ? a : mt_mul(a, s); }  \
__device__ __forceinline__ T mt_clamp(T a, T lo, T hi) { return mt_min(mt_max(a, lo), hi); } \
__device__ __forceinline__ T mt_ipow(T b, T e) {                                             \
    if (e < 0) return b == 1 ? (T)1 : (b == -1 ? ((e % 2 == 0) ? (T)1 : (T)-1) : (T)0);     \
    T acc = 1;                                                                               \
    while (e > 0) { if (e & 1) acc = mt_mul(acc, b); b = mt_mul(b, b); e >>= 1; }           \
    return acc;                                                                              \
}
MT_INT_OPS(int, unsigned int, (-2147483647 - 1))
MT_INT_OPS(long long, unsigned long long, (-9223372036854775807LL - 1))
#define MT_FLOAT_OPS(T, EXP, LOG, SQRT, SIN, COS, TANH, ERF, POW, FLOOR, FMOD, LOG1P, FABS) \
__device__ __forceinline__ T mt_add(T a, T b) { return a + b; }                             \
__device__ __forceinline__ T mt_sub(T a, T b) { return a - b; }                             \
__device__ __forceinline__ T mt_mul(T a, T b) { return a * b; }                             \
__device__ __forceinline__ T mt_div(T a, T b) { return a / b; }                             \
__device__ __forceinline__ T mt_neg(T a) { return -a; }                                     \
__device__ __forceinline__ T mt_abs(T a) { return FABS(a); }                                \
__device__ __forceinline__ T mt_floordiv(T a, T b) { return FLOOR(a / b); }                 \
__device__ __forceinline__ T mt_rem(T a, T b) {                                              \
    T r = FMOD(a, b);                                                                        \
    return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;                                     \
}                                                                                            \
__device__ __forceinline__ T mt_min(T a, T b) { return (a != a || b != b) ? (a + b) : (a < b ? a : b); } \
__device__ __forceinline__ T mt_max(T a, T b) { return (a != a || b != b) ? (a + b) : (a > b ? a : b); } \
__device__ __forceinline__ T mt_sign(T a) { return a > 0 ? (T)1 : (a < 0 ? (T)-1 : a); }   \
__device__ __forceinline__ T mt_square(T a) { return a * a; }                               \
__device__ __forceinline__ T mt_exp(T a) { return EXP(a); }                                 \
__device__ __forceinline__ T mt_log(T a) { return LOG(a); }                                 \
__device__ __forceinline__ T mt_sqrt(T a) { return SQRT(a); }                               \
__device__ __forceinline__ T mt_sin(T a) { return SIN(a); }                                 \
__device__ __forceinline__ T mt_cos(T a) { return COS(a); }                                 \
__device__ __forceinline__ T mt_tanh(T a) { return TANH(a); }                               \
__device__ __forceinline__ T mt_erf(T a) { return ERF(a); }                                 \
__device__ __forceinline__ T mt_pow(T a, T b) { return POW(a, b); }                         \
__device__ __forceinline__ T mt_relu(T a) { return (a > 0 || a != a) ? a : (T)0; }          \
__device__ __forceinline__ T mt_leaky_relu(T a, T s) { return a > 0 ? a : a * s; }          \
__device__ __forceinline__ T mt_clamp(T a, T lo, T hi) { return mt_min(mt_max(a, lo), hi); } \
__device__ __forceinline__ T mt_sigmoid(T a) {                                               \
    if (a >= 0) return (T)1 / ((T)1 + EXP(-a));                                             \
    T e = EXP(a); return e / ((T)1 + e);                                                     \
}                                                                                            \
__device__ __forceinline__ T mt_softplus(T a) { return mt_relu(a) + LOG1P(EXP(-FABS(a))); } \
__device__ __forceinline__ T mt_gelu_erf(T a) {                                              \
    return ((T)0.5 * a) * ((T)1 + ERF(a * (T)0.7071067811865476));                        \
}                                                                                            \
__device__ __forceinline__ T mt_gelu_tanh(T a) {                                             \
    T inner = (T)0.7978845608028654 * (a + (((T)0.044715 * a) * a) * a);               \
    return ((T)0.5 * a) * ((T)1 + TANH(inner));                                              \
}                                                                                            \
__device__ __forceinline__ T mt_robust_sqrt(T x, T c) {                                      \
    T a = FABS(x); return a < c ? a / SQRT(c) : SQRT(a);                                     \
}                                                                                            \
__device__ __forceinline__ T mt_robust_log(T x, T c) {                                       \
    T a = FABS(x); return a < c ? (LOG(c) + a / c) - (T)1 : LOG(a);                          \
}                                                                                            \
__device__ __forceinline__ T mt_stable_reciprocal(T x, T c) {                                \
    T a = FABS(x);                                                                           \
    if (a < c) return (mt_sign(x) + ((T)1 - mt_sign(a))) * ((T)2 / c) - x / (c * c);         \
    return (T)1 / x;                                                                         \
}                                                                                            \
__device__ __forceinline__ T mt_robust_power(T b, T e, T c) {                                \
    T a = FABS(b);                                                                           \
    if (a < c && e < (T)1 - LOG(c) / LOG(a)) return a / c;                                   \
    return POW(a, e);                                                                        \
}
MT_FLOAT_OPS(float, expf, logf, sqrtf, sinf, cosf, tanhf, erff, powf, floorf, fmodf, log1pf, fabsf)
MT_FLOAT_OPS(double, exp, log, sqrt, sin, cos, tanh, erf, pow, floor, fmod, log1p, fabs)
// norm / dropout: Philox4x32-10, the counter-based generator of `mithril_kernels::philox`
// (the same words as the CPU): the four random words of counter (c0..c3) under key (k0, k1).
struct mt_u4 { unsigned int x, y, z, w; };
__device__ __forceinline__ mt_u4 mt_philox(unsigned int c0, unsigned int c1, unsigned int c2,
                                           unsigned int c3, unsigned int k0, unsigned int k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
    mt_u4 o = {c0, c1, c2, c3};
    return o;
}
// dropout's mask: element `i` of op `op` under the call's `seed` is kept when word i % 4 of
// block (i / 4, op) is at least `thr` (`mithril_kernels::philox::threshold(p)`).
__device__ __forceinline__ bool mt_dropout_keep(unsigned long long seed, unsigned int op,
                                                unsigned long long i, unsigned int thr) {
    unsigned long long b = i >> 2;
    mt_u4 w = mt_philox((unsigned int)b, (unsigned int)(b >> 32), op, 0u, (unsigned int)seed,
                        (unsigned int)(seed >> 32));
    unsigned int k = (unsigned int)(i & 3ull);
    unsigned int r = k == 0u ? w.x : k == 1u ? w.y : k == 2u ? w.z : w.w;
    return r >= thr;
}
"#;

/// The C storage type of a dtype (kernel parameters).
fn storage_c(t: DType) -> &'static str {
    match t {
        DType::F16 => "f16_t",
        DType::BF16 => "bf16_t",
        DType::F32 => "float",
        DType::F64 => "double",
        DType::I32 => "int",
        DType::I64 => "long long",
        DType::Bool => "bool",
    }
}

/// The C compute type of a dtype (`f16`/`bf16` compute in `float`).
fn acc_c(t: DType) -> &'static str {
    storage_c(acc_dtype(t))
}

/// Widen a stored element to its compute type.
fn load(t: DType, v: &str) -> String {
    match t {
        DType::F16 => format!("mt_h2f({v})"),
        DType::BF16 => format!("mt_b2f({v})"),
        _ => v.to_string(),
    }
}

/// Narrow a compute value to storage.
fn store(t: DType, v: &str) -> String {
    match t {
        DType::F16 => format!("mt_f2h({v})"),
        DType::BF16 => format!("mt_f2b({v})"),
        _ => v.to_string(),
    }
}

/// `prims`' `convert` in C: a value of compute type `from` as compute type `to`.
fn convert(v: String, from: DType, to: DType) -> String {
    let (from, to) = (acc_dtype(from), acc_dtype(to));
    if from == to {
        return v;
    }
    match (from, to) {
        (DType::Bool, DType::F32) => format!("({v} ? 1.0f : 0.0f)"),
        (DType::Bool, DType::F64) => format!("({v} ? 1.0 : 0.0)"),
        (_, DType::Bool) => format!("({v} != 0)"),
        _ => format!("(({}){v})", acc_c(to)),
    }
}

/// `cpu_elem::lower_fexpr` in C. `loaded[i]` is the local holding arg `i` in its compute type.
fn lower(e: &FExpr, arg_dts: &[DType]) -> Result<(String, DType), String> {
    match e {
        FExpr::Arg(i) => match arg_dts.get(*i) {
            Some(&d) => Ok((format!("x{i}"), d)),
            None => Err(format!(
                "the expression reads arg {i}, the kernel has {}",
                arg_dts.len()
            )),
        },
        FExpr::Lit(s, t) => Ok((literal(*s, *t), *t)),
        FExpr::Op(p, args, out, compute) => {
            let lowered = args
                .iter()
                .map(|a| lower(a, arg_dts))
                .collect::<Result<Vec<_>, _>>()?;
            let conv: Vec<String> = lowered
                .iter()
                .enumerate()
                .map(|(i, (v, d))| convert(v.clone(), *d, p.operand_dtype(i, *compute, *d)))
                .collect();
            let body = p.scalar_c(&conv, *compute)?;
            Ok(match p {
                Prim::Cast(_) => (convert(body, lowered[0].1, *out), *out),
                _ => (body, *out),
            })
        }
    }
}

fn is_c_ident(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c == b'_' || c.is_ascii_alphabetic())
        && b.all(|c| c == b'_' || c.is_ascii_alphanumeric())
}

fn extent(e: Extent, name: &str, params: &mut Vec<String>) -> Result<String, String> {
    match e {
        Extent::Known(0) => Err(format!("extent `{name}` is 0")),
        Extent::Known(v) => Ok(format!("{v}L")),
        Extent::Runtime => {
            params.push(format!("long {name}"));
            Ok(name.to_string())
        }
    }
}

/// The CUDA C kernel `name` computing the fused group `expr` over `args` into an `out` of
/// storage dtype `out`. Parameters: `a0..` (`const` storage pointers, in arg order), `out`,
/// `long n` (output elements), then one `long` per [`Extent::Runtime`], in arg order: `p<i>`
/// for a `Period` length, `q<i>` then `p<i>` for a `Block`'s inner size and length.
/// `Err` for a name that is not a C identifier, an arg index out of range, a non-elementwise
/// primitive or a zero extent. The text needs [`FUSED_PRELUDE`] before it ([`fused_module`]).
pub fn fused_kernel(
    name: &str,
    expr: &FExpr,
    args: &[KernelArg],
    out: DType,
) -> Result<String, String> {
    if !is_c_ident(name) {
        return Err(format!("`{name}` is not a C identifier"));
    }
    let arg_dts: Vec<DType> = args.iter().map(|a| a.dtype).collect();
    let (body, body_dt) = lower(expr, &arg_dts)?;
    let value = store(out, &convert(body, body_dt, out));

    let mut params: Vec<String> = args
        .iter()
        .enumerate()
        .map(|(i, a)| format!("const {}* __restrict__ a{i}", storage_c(a.dtype)))
        .collect();
    params.push(format!("{}* __restrict__ out", storage_c(out)));
    params.push("long n".into());
    let mut loads = String::new();
    for (i, a) in args.iter().enumerate() {
        let index = match a.mode {
            IndexMode::Full => "i".to_string(),
            IndexMode::Scalar => "0".to_string(),
            IndexMode::Period(len) => {
                let p = extent(len, &format!("p{i}"), &mut params)?;
                format!("i % {p}")
            }
            IndexMode::Block { inner, len } => {
                let q = extent(inner, &format!("q{i}"), &mut params)?;
                let p = extent(len, &format!("p{i}"), &mut params)?;
                format!("(i / {q}) % {p}")
            }
        };
        let _ = writeln!(
            loads,
            "        const {} x{i} = {};",
            acc_c(a.dtype),
            load(a.dtype, &format!("a{i}[{index}]"))
        );
    }
    let mut src = String::new();
    let _ = writeln!(
        src,
        "extern \"C\" __global__ void {name}({}) {{",
        params.join(", ")
    );
    let _ = writeln!(
        src,
        "    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) {{"
    );
    src.push_str(&loads);
    let _ = writeln!(src, "        out[i] = {value};");
    src.push_str("    }\n}\n");
    Ok(src)
}

/// A complete translation unit: [`FUSED_PRELUDE`] followed by the given kernels.
pub fn fused_module(kernels: &[String]) -> String {
    let mut s = String::from(FUSED_PRELUDE);
    for k in kernels {
        s.push('\n');
        s.push_str(k);
    }
    s
}

/// The indexing kernels of run-time loops (`mithril::rt::cuda::flow`), on a tensor viewed as
/// `[outer, len, inner]` around the indexed axis, at host index `i` (checked by the caller):
/// `Read` — `out[o, k] = x[o, i, k]` (a scan's step read `x[(.., t)]`, `gather` at a scalar
/// index), parameters `(const T* x, T* out, long n, long len, long inner, long i)`;
/// `Write { add }` — `acc[o, i, k] = v[o, k]` (`add`: `+=`, in the accumulation type),
/// parameters `(const T* v, T* acc, long n, long len, long inner, long i)`. `n` is
/// `outer * inner`.
pub enum AxisKernel {
    Read,
    Write { add: bool },
}

/// The CUDA C text of an [`AxisKernel`] named `name` on storage dtype `t`.
pub fn axis_kernel(name: &str, kind: AxisKernel, t: DType) -> Result<String, String> {
    if !is_c_ident(name) {
        return Err(format!("`{name}` is not a C identifier"));
    }
    let ty = storage_c(t);
    let (params, body) = match kind {
        AxisKernel::Read => (
            format!("const {ty}* __restrict__ x, {ty}* __restrict__ out"),
            "out[j] = x[(o * len + i) * inner + k];".to_string(),
        ),
        AxisKernel::Write { add: false } => (
            format!("const {ty}* __restrict__ v, {ty}* __restrict__ acc"),
            "acc[(o * len + i) * inner + k] = v[j];".to_string(),
        ),
        AxisKernel::Write { add: true } => {
            if t == DType::Bool {
                return Err("an accumulating write of bool values".into());
            }
            let at = "acc[(o * len + i) * inner + k]";
            let sum = format!("({}) + ({})", load(t, at), load(t, "v[j]"));
            (
                format!("const {ty}* __restrict__ v, {ty}* __restrict__ acc"),
                format!("{at} = {};", store(t, &format!("({})({sum})", acc_c(t)))),
            )
        }
    };
    let mut src = String::new();
    let _ = writeln!(
        src,
        "extern \"C\" __global__ void {name}({params}, long n, long len, long inner, long i) {{"
    );
    let _ = writeln!(
        src,
        "    for (long j = (long)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += (long)blockDim.x * gridDim.x) {{"
    );
    let _ = writeln!(src, "        const long o = j / inner, k = j % inner;");
    let _ = writeln!(src, "        {body}");
    src.push_str("    }\n}\n");
    Ok(src)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Scalar;

    fn op(p: Prim, args: Vec<FExpr>, t: DType) -> FExpr {
        FExpr::Op(p, args, t, t)
    }
    fn full(t: DType) -> KernelArg {
        KernelArg {
            dtype: t,
            mode: IndexMode::Full,
        }
    }

    /// `relu(x * w + b)` in f32 with a row-period bias.
    fn linear_relu() -> (FExpr, Vec<KernelArg>) {
        let e = op(
            Prim::Relu,
            vec![op(
                Prim::Add,
                vec![
                    op(Prim::Mul, vec![FExpr::Arg(0), FExpr::Arg(1)], DType::F32),
                    FExpr::Arg(2),
                ],
                DType::F32,
            )],
            DType::F32,
        );
        let args = vec![
            full(DType::F32),
            full(DType::F32),
            KernelArg {
                dtype: DType::F32,
                mode: IndexMode::Period(Extent::Known(768)),
            },
        ];
        (e, args)
    }

    #[test]
    fn robust_forms_carry_the_dtype_thresholds() {
        let x = ["x0".to_string(), "x1".to_string()];
        let c = |p: Prim, t: DType| p.scalar_c(&x, t).unwrap();
        assert_eq!(
            c(Prim::RobustLog(None), DType::F32),
            "mt_robust_log(x0, 1.1754944e-38f)"
        );
        assert_eq!(
            c(Prim::RobustSqrt(None), DType::F64),
            "mt_robust_sqrt(x0, 2.2250738585072014e-308)"
        );
        assert_eq!(
            c(Prim::StableReciprocal(None), DType::F16),
            "mt_stable_reciprocal(x0, 0.00781281f)"
        );
        assert_eq!(
            c(Prim::RobustPower(Some(0.5)), DType::F64),
            "mt_robust_power(x0, x1, 0.5)"
        );
        assert_eq!(c(Prim::StopGradient, DType::BF16), "x0");
        for f in [
            "mt_robust_sqrt",
            "mt_robust_log",
            "mt_stable_reciprocal",
            "mt_robust_power",
        ] {
            assert_eq!(FUSED_PRELUDE.matches(&format!("T {f}(")).count(), 1, "{f}");
        }
    }

    /// norm / dropout: the Philox generator dropout's masks come from is in the prelude (every
    /// generated module, compiled by NVRTC in `tests/suite/cuda_backend.rs`).
    #[test]
    fn prelude_has_the_philox_generator() {
        assert_eq!(FUSED_PRELUDE.matches("mt_u4 mt_philox(").count(), 1);
        assert_eq!(FUSED_PRELUDE.matches("bool mt_dropout_keep(").count(), 1);
        // the constants of `mithril_kernels::philox`
        for c in ["0xD2511F53u", "0xCD9E8D57u", "0x9E3779B9u", "0xBB67AE85u"] {
            assert!(FUSED_PRELUDE.contains(c), "{c}");
        }
    }

    #[test]
    fn f32_group_with_row_broadcast() {
        let (e, args) = linear_relu();
        let k = fused_kernel("fused_linear_relu", &e, &args, DType::F32).unwrap();
        assert_eq!(
            k,
            "extern \"C\" __global__ void fused_linear_relu(const float* __restrict__ a0, const float* __restrict__ a1, const float* __restrict__ a2, float* __restrict__ out, long n) {\n\
             \x20   for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)blockDim.x * gridDim.x) {\n\
             \x20       const float x0 = a0[i];\n\
             \x20       const float x1 = a1[i];\n\
             \x20       const float x2 = a2[i % 768L];\n\
             \x20       out[i] = mt_relu(mt_add(mt_mul(x0, x1), x2));\n\
             \x20   }\n\
             }\n"
        );
    }

    #[test]
    fn bf16_gelu_with_scalar_and_runtime_block() {
        // gelu(x * 0.5) + y, x bf16 full, y bf16 [N, 1] against [N, C] with C known at run time
        let e = op(
            Prim::Add,
            vec![
                op(
                    Prim::Gelu,
                    vec![op(
                        Prim::Mul,
                        vec![FExpr::Arg(0), FExpr::Lit(Scalar::Float(0.5), DType::F32)],
                        DType::BF16,
                    )],
                    DType::BF16,
                ),
                FExpr::Arg(1),
            ],
            DType::BF16,
        );
        let args = [
            full(DType::BF16),
            KernelArg {
                dtype: DType::BF16,
                mode: IndexMode::Block {
                    inner: Extent::Runtime,
                    len: Extent::Known(32),
                },
            },
        ];
        let k = fused_kernel("k", &e, &args, DType::BF16).unwrap();
        assert!(k.contains("(const bf16_t* __restrict__ a0, const bf16_t* __restrict__ a1, bf16_t* __restrict__ out, long n, long q1)"), "{k}");
        assert!(k.contains("const float x0 = mt_b2f(a0[i]);"), "{k}");
        assert!(
            k.contains("const float x1 = mt_b2f(a1[(i / q1) % 32L]);"),
            "{k}"
        );
        assert!(
            k.contains("out[i] = mt_f2b(mt_add(mt_gelu_erf(mt_mul(x0, 0.5f)), x1));"),
            "{k}"
        );
    }

    #[test]
    fn mixed_dtypes_casts_comparisons_and_where() {
        // where(x > 0, cast<f32>(i), 1e-3) with x f16, i i32 (scalar), out f16
        let e = FExpr::Op(
            Prim::Where,
            vec![
                FExpr::Op(
                    Prim::Gt,
                    vec![FExpr::Arg(0), FExpr::Lit(Scalar::Int(0), DType::F16)],
                    DType::Bool,
                    DType::F16,
                ),
                FExpr::Op(
                    Prim::Cast(DType::F32),
                    vec![FExpr::Arg(1)],
                    DType::F32,
                    DType::I32,
                ),
                FExpr::Lit(Scalar::Float(1e-3), DType::F32),
            ],
            DType::F32,
            DType::F32,
        );
        let args = [
            full(DType::F16),
            KernelArg {
                dtype: DType::I32,
                mode: IndexMode::Scalar,
            },
        ];
        let k = fused_kernel("w", &e, &args, DType::F16).unwrap();
        assert!(k.contains("const float x0 = mt_h2f(a0[i]);"), "{k}");
        assert!(k.contains("const int x1 = a1[0];"), "{k}");
        assert!(
            k.contains("out[i] = mt_f2h(((x0 > 0.0f) ? ((float)x1) : 0.001f));"),
            "{k}"
        );
    }

    #[test]
    fn integer_and_bool_semantics() {
        // floor_divide(a, b) == 3 for i64, stored as bool; min of bools is &&
        let e = FExpr::Op(
            Prim::Minimum,
            vec![
                FExpr::Op(
                    Prim::Eq,
                    vec![
                        op(
                            Prim::FloorDiv,
                            vec![FExpr::Arg(0), FExpr::Arg(1)],
                            DType::I64,
                        ),
                        FExpr::Lit(Scalar::Int(3), DType::I64),
                    ],
                    DType::Bool,
                    DType::I64,
                ),
                FExpr::Arg(2),
            ],
            DType::Bool,
            DType::Bool,
        );
        let args = [full(DType::I64), full(DType::I64), full(DType::Bool)];
        let k = fused_kernel("ints", &e, &args, DType::Bool).unwrap();
        assert!(
            k.contains("out[i] = ((mt_floordiv(x0, x1) == 3LL) && x2);"),
            "{k}"
        );
        // bool -> f32 conversion and i32 clamp bounds
        let c = FExpr::Op(
            Prim::Clamp(-1.0, f64::INFINITY),
            vec![FExpr::Arg(0)],
            DType::I32,
            DType::I32,
        );
        let k = fused_kernel("cl", &c, &[full(DType::I32)], DType::F32).unwrap();
        assert!(
            k.contains("out[i] = ((float)mt_clamp(x0, -1, 2147483647));"),
            "{k}"
        );
        let b = FExpr::Op(
            Prim::Cast(DType::F32),
            vec![FExpr::Arg(0)],
            DType::F32,
            DType::Bool,
        );
        let k = fused_kernel("b", &b, &[full(DType::Bool)], DType::F32).unwrap();
        assert!(k.contains("out[i] = (x0 ? 1.0f : 0.0f);"), "{k}");
    }

    #[test]
    fn literals() {
        assert_eq!(literal(Scalar::Float(0.1), DType::F32), "0.1f");
        assert_eq!(literal(Scalar::Float(1.0), DType::BF16), "1.0f");
        assert_eq!(literal(Scalar::Float(1e20), DType::F64), "1e20");
        assert_eq!(literal(Scalar::Int(-5), DType::I64), "-5LL");
        assert_eq!(
            literal(Scalar::Int(i64::MIN), DType::I64),
            "(-9223372036854775807LL - 1)"
        );
        assert_eq!(
            literal(Scalar::Float(f64::NEG_INFINITY), DType::F32),
            "(-(float)__longlong_as_double(0x7ff0000000000000LL))"
        );
        assert_eq!(literal(Scalar::Bool(true), DType::Bool), "true");
    }

    #[test]
    fn errors() {
        let (e, args) = linear_relu();
        assert!(fused_kernel("1bad", &e, &args, DType::F32).is_err());
        assert!(fused_kernel("k", &e, &args[..2], DType::F32).is_err());
        let t = FExpr::Op(
            Prim::Softmax(-1),
            vec![FExpr::Arg(0)],
            DType::F32,
            DType::F32,
        );
        assert!(fused_kernel("k", &t, &args, DType::F32).is_err());
        let zero = [KernelArg {
            dtype: DType::F32,
            mode: IndexMode::Period(Extent::Known(0)),
        }];
        assert!(fused_kernel("k", &FExpr::Arg(0), &zero, DType::F32).is_err());
    }

    #[test]
    fn axis_kernel_text() {
        let r = axis_kernel("f3_ax", AxisKernel::Read, DType::F32).unwrap();
        assert!(
            r.contains("void f3_ax(const float* __restrict__ x, float* __restrict__ out, long n, long len, long inner, long i)"),
            "{r}"
        );
        assert!(r.contains("out[j] = x[(o * len + i) * inner + k];"), "{r}");
        let w = axis_kernel("g4_ax", AxisKernel::Write { add: false }, DType::I64).unwrap();
        assert!(w.contains("acc[(o * len + i) * inner + k] = v[j];"), "{w}");
        let a = axis_kernel("g5_ax", AxisKernel::Write { add: true }, DType::BF16).unwrap();
        assert!(
            a.contains(
                "= mt_f2b((float)((mt_b2f(acc[(o * len + i) * inner + k])) + (mt_b2f(v[j]))));"
            ),
            "{a}"
        );
        assert!(axis_kernel("not a name", AxisKernel::Read, DType::F32).is_err());
        assert!(axis_kernel("b", AxisKernel::Write { add: true }, DType::Bool).is_err());
    }

    /// Generated groups covering every elementwise primitive and dtype, compiled by the real
    /// NVRTC for sm_80 and sm_90 (skipped, with a visible line, when NVRTC is not found).
    #[test]
    fn nvrtc_compiles_generated_kernels() {
        use mithril_runtime::cuda;
        use std::io::Write as _;
        if !cuda::nvrtc_available() {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/nvrtc/nvidia/cu13/lib");
            if dir.is_dir() {
                let _ = cuda::preload_nvrtc(&dir);
            }
        }
        if let Err(e) = cuda::require_nvrtc() {
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: NVRTC not found (run .ci/run or set {}): {e}",
                cuda::NVRTC_DIR_ENV
            );
            return;
        }
        let unary = [
            Prim::Neg,
            Prim::Abs,
            Prim::Exp,
            Prim::Log,
            Prim::Sqrt,
            Prim::Sin,
            Prim::Cos,
            Prim::Tanh,
            Prim::Erf,
            Prim::Square,
            Prim::Sign,
            Prim::Relu,
            Prim::Sigmoid,
            Prim::Softplus,
            Prim::Gelu,
            Prim::GeluTanh,
            Prim::LeakyRelu(0.01),
            Prim::Clamp(-1.0, 1.0),
            Prim::StopGradient,
            Prim::RobustSqrt(None),
            Prim::RobustLog(Some(1e-3)),
            Prim::StableReciprocal(None),
        ];
        let binary = [
            Prim::Add,
            Prim::Sub,
            Prim::Mul,
            Prim::Div,
            Prim::FloorDiv,
            Prim::Rem,
            Prim::Pow,
            Prim::Minimum,
            Prim::Maximum,
        ];
        let mut kernels = Vec::new();
        for (ti, t) in [DType::F32, DType::F64, DType::F16, DType::BF16]
            .into_iter()
            .enumerate()
        {
            for (pi, p) in unary.iter().enumerate() {
                let e = op(p.clone(), vec![FExpr::Arg(0)], t);
                kernels.push(fused_kernel(&format!("u{ti}_{pi}"), &e, &[full(t)], t).unwrap());
            }
        }
        for (ti, t) in [DType::F32, DType::F64, DType::I32, DType::I64, DType::BF16]
            .into_iter()
            .enumerate()
        {
            for (pi, p) in binary.iter().enumerate() {
                let e = op(p.clone(), vec![FExpr::Arg(0), FExpr::Arg(1)], t);
                let args = [
                    full(t),
                    KernelArg {
                        dtype: t,
                        mode: IndexMode::Period(Extent::Runtime),
                    },
                ];
                kernels.push(fused_kernel(&format!("b{ti}_{pi}"), &e, &args, t).unwrap());
            }
            let cmp = FExpr::Op(Prim::Le, vec![FExpr::Arg(0), FExpr::Arg(1)], DType::Bool, t);
            kernels.push(
                fused_kernel(&format!("c{ti}"), &cmp, &[full(t), full(t)], DType::Bool).unwrap(),
            );
        }
        for (ti, t) in [DType::F32, DType::F64, DType::F16, DType::BF16]
            .into_iter()
            .enumerate()
        {
            let e = op(
                Prim::RobustPower(None),
                vec![FExpr::Arg(0), FExpr::Arg(1)],
                t,
            );
            kernels.push(fused_kernel(&format!("rp{ti}"), &e, &[full(t), full(t)], t).unwrap());
        }
        for (i, p) in [Prim::And, Prim::Or, Prim::Xor].into_iter().enumerate() {
            for (j, t) in [DType::Bool, DType::I32].into_iter().enumerate() {
                let e = op(p.clone(), vec![FExpr::Arg(0), FExpr::Arg(1)], t);
                kernels
                    .push(fused_kernel(&format!("l{i}_{j}"), &e, &[full(t), full(t)], t).unwrap());
            }
        }
        for (j, t) in [DType::Bool, DType::I64].into_iter().enumerate() {
            let e = op(Prim::Not, vec![FExpr::Arg(0)], t);
            kernels.push(fused_kernel(&format!("n{j}"), &e, &[full(t)], t).unwrap());
        }
        let (e, args) = linear_relu();
        kernels.push(fused_kernel("linear_relu", &e, &args, DType::F16).unwrap());
        // the indexing kernels of run-time loops (step reads, stacked writes, their gradients)
        for (ti, t) in [
            DType::F32,
            DType::F64,
            DType::F16,
            DType::BF16,
            DType::I32,
            DType::I64,
            DType::Bool,
        ]
        .into_iter()
        .enumerate()
        {
            kernels.push(axis_kernel(&format!("ar{ti}"), AxisKernel::Read, t).unwrap());
            kernels.push(
                axis_kernel(&format!("aw{ti}"), AxisKernel::Write { add: false }, t).unwrap(),
            );
            if t != DType::Bool {
                kernels.push(
                    axis_kernel(&format!("aa{ti}"), AxisKernel::Write { add: true }, t).unwrap(),
                );
            }
        }
        let n = kernels.len();
        let src = fused_module(&kernels);
        for arch in ["sm_80", "sm_90"] {
            let ptx = cuda::compile_ptx(&src, "fused.cu", arch).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(ptx.matches(".entry ").count(), n, "{arch}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "NVRTC compiled a generated module of {n} fused kernels for sm_80 and sm_90"
        );
    }
}
