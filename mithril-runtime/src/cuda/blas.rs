//! Row-major matrix products on cuBLAS (strict f32 SGEMM, TF32 on request) and cuBLASLt (f16 /
//! bf16 with fused bias / ReLU / GELU epilogues). cuBLAS is column-major; a row-major
//! `C[m,n] = A[m,k]·B[k,n]` is computed as the column-major `Cᵀ = Bᵀ·Aᵀ` (operands swapped, see
//! [`row_major_gemm`]).

use super::{dev_err, CudaDevice, DeviceElem, DeviceTensor};
use crate::{Error, Result};
use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasOperation_t, cudaDataType_t,
};
use cudarc::cublas::{Gemm, GemmConfig};
use cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
use cudarc::driver::{DevicePtr, DevicePtrMut};
use half::{bf16, f16};

/// How an f32 matrix product may compute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum F32Precision {
    /// IEEE f32 multiply-adds (`cublasSgemm`, default math mode): matches CPU results to f32
    /// rounding.
    #[default]
    Strict,
    /// TF32 tensor cores (`CUBLAS_COMPUTE_32F_FAST_TF32`): faster on sm_80+, about 1e-3
    /// relative error. Only when asked for.
    Tf32,
}

/// The activation a cuBLASLt epilogue applies after the (optional) bias.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Activation {
    /// None.
    #[default]
    None,
    /// `max(x, 0)`.
    Relu,
    /// cuBLASLt's GELU epilogue (NVIDIA's approximation; compare with `gelu_tanh`
    /// tolerances).
    Gelu,
}

/// Column-major GEMM parameters for a row-major `C[m,n] = A[m,k]·B[k,n]`: cuBLAS is called with
/// `(m, n, k) = (n, m, k)`, first operand `B` (leading dimension `n`), second `A` (`k`), output
/// leading dimension `n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmDims {
    /// cuBLAS `m` (= row-major `n`).
    pub m: i32,
    /// cuBLAS `n` (= row-major `m`).
    pub n: i32,
    /// `k`.
    pub k: i32,
    /// Leading dimension of the first operand (`B`): `n`.
    pub lda: i32,
    /// Leading dimension of the second operand (`A`): `k`.
    pub ldb: i32,
    /// Leading dimension of the output: `n`.
    pub ldc: i32,
}

/// The swap trick's parameters for a row-major `[m,k]·[k,n]`; `Err` when a size exceeds
/// cuBLAS's `i32`.
pub fn row_major_gemm(m: usize, n: usize, k: usize) -> Result<GemmDims> {
    let c = |v: usize| {
        i32::try_from(v)
            .map_err(|_| Error::op("matmul", format!("dimension {v} exceeds cuBLAS's i32")))
    };
    let (m, n, k) = (c(m)?, c(n)?, c(k)?);
    Ok(GemmDims {
        m: n,
        n: m,
        k,
        lda: n.max(1),
        ldb: k.max(1),
        ldc: n.max(1),
    })
}

/// `(m, k, n)` of a row-major product, checking ranks and the inner dimension.
fn mkn(a: &[usize], b: &[usize]) -> Result<(usize, usize, usize)> {
    match (a, b) {
        (&[m, k], &[k2, n]) if k == k2 => Ok((m, k, n)),
        _ => Err(Error::op(
            "matmul",
            format!("expects [m, k] · [k, n], got {a:?} · {b:?}"),
        )),
    }
}

/// Row-major `a[m,k] · b[k,n]` in f32 on cuBLAS.
pub fn matmul_f32(
    dev: &CudaDevice,
    a: &DeviceTensor<f32>,
    b: &DeviceTensor<f32>,
    precision: F32Precision,
) -> Result<DeviceTensor<f32>> {
    let (m, k, n) = mkn(a.shape(), b.shape())?;
    let d = row_major_gemm(m, n, k)?;
    let mut c = DeviceTensor::<f32>::zeros(dev, &[m, n])?;
    if m == 0 || n == 0 || k == 0 {
        return Ok(c);
    }
    let op_n = cublasOperation_t::CUBLAS_OP_N;
    match precision {
        F32Precision::Strict => {
            let cfg = GemmConfig {
                transa: op_n,
                transb: op_n,
                m: d.m,
                n: d.n,
                k: d.k,
                alpha: 1.0f32,
                lda: d.lda,
                ldb: d.ldb,
                beta: 0.0f32,
                ldc: d.ldc,
            };
            // SAFETY: the buffers hold [k,n], [m,k] and [m,n] elements, as the dims say.
            unsafe { dev.blas().gemm(cfg, b.slice(), a.slice(), c.slice_mut()) }
                .map_err(|e| dev_err("cublasSgemm", e))?;
        }
        F32Precision::Tf32 => {
            let stream = dev.stream();
            let (pb, _rb) = b.slice().device_ptr(stream);
            let (pa, _ra) = a.slice().device_ptr(stream);
            let (pc, _rc) = c.slice_mut().device_ptr_mut(stream);
            let (alpha, beta) = (1.0f32, 0.0f32);
            // SAFETY: as above; the guards keep the buffers' events alive across the call.
            unsafe {
                cudarc::cublas::result::gemm_ex(
                    *dev.blas().handle(),
                    op_n,
                    op_n,
                    d.m,
                    d.n,
                    d.k,
                    (&alpha) as *const f32 as *const _,
                    pb as *const _,
                    cudaDataType_t::CUDA_R_32F,
                    d.lda,
                    pa as *const _,
                    cudaDataType_t::CUDA_R_32F,
                    d.ldb,
                    (&beta) as *const f32 as *const _,
                    pc as *mut _,
                    cudaDataType_t::CUDA_R_32F,
                    d.ldc,
                    cublasComputeType_t::CUBLAS_COMPUTE_32F_FAST_TF32,
                    cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                )
            }
            .map_err(|e| dev_err("cublasGemmEx (TF32)", e))?;
        }
    }
    Ok(c)
}

/// The element types of [`matmul_lt`]: `f16` and `bf16` (f32 accumulation).
pub trait LtElem: DeviceElem {}
impl LtElem for f16 {}
impl LtElem for bf16 {}

/// Row-major `act(x[m,k] · w[k,n] + bias[n])` on cuBLASLt with the bias and activation fused
/// into the epilogue; `bias` may be `None`.
pub fn matmul_lt<T: LtElem>(
    dev: &CudaDevice,
    x: &DeviceTensor<T>,
    w: &DeviceTensor<T>,
    bias: Option<&DeviceTensor<T>>,
    act: Activation,
) -> Result<DeviceTensor<T>>
where
    CudaBlasLT: Matmul<T>,
{
    let (m, k, n) = mkn(x.shape(), w.shape())?;
    if let Some(b) = bias {
        if b.shape() != [n] {
            return Err(Error::op(
                "matmul",
                format!("bias has shape {:?}, expected [{n}]", b.shape()),
            ));
        }
    }
    let d = row_major_gemm(m, n, k)?;
    let mut y = DeviceTensor::<T>::zeros(dev, &[m, n])?;
    if m == 0 || n == 0 || k == 0 {
        // k == 0 still has an epilogue; leave it to the caller to add bias on empty products
        return Ok(y);
    }
    let lt = dev.blas_lt()?;
    let cfg = MatmulConfig {
        transa: false,
        transb: false,
        transc: false,
        m: d.m as u64,
        n: d.n as u64,
        k: d.k as u64,
        alpha: 1.0,
        lda: d.lda as i64,
        ldb: d.ldb as i64,
        beta: 0.0,
        ldc: d.ldc as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    let act = match act {
        Activation::None => None,
        Activation::Relu => Some(cudarc::cublaslt::Activation::Relu),
        Activation::Gelu => Some(cudarc::cublaslt::Activation::Gelu),
    };
    // SAFETY: buffers sized as the dims say; the bias has `n` = cuBLAS `m` elements.
    unsafe {
        lt.matmul(
            cfg,
            w.slice(),
            x.slice(),
            y.slice_mut(),
            bias.map(|b| b.slice()),
            act.as_ref(),
        )
    }
    .map_err(|e| dev_err("cublasLtMatmul", e))?;
    Ok(y)
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    /// A column-major reference GEMM, fed exactly what the swap trick passes cuBLAS, must give
    /// the row-major product.
    #[cfg_attr(test, test)]
    pub(crate) fn swap_trick_computes_row_major_product() {
        let (m, k, n) = (3usize, 4usize, 5usize);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 2.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 - 3.0).collect();
        let d = row_major_gemm(m, n, k).unwrap();
        // column-major C(i,j) = sum_l A'(i,l) B'(l,j) with A' = b (ld lda), B' = a (ld ldb)
        let mut c = vec![0f32; m * n];
        for j in 0..d.n as usize {
            for i in 0..d.m as usize {
                let mut s = 0.0;
                for l in 0..d.k as usize {
                    s += b[i + l * d.lda as usize] * a[l + j * d.ldb as usize];
                }
                c[i + j * d.ldc as usize] = s;
            }
        }
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                assert_eq!(c[i * n + j], r);
            }
        }
        assert!(row_major_gemm(1 << 31, 1, 1).is_err());
        assert!(mkn(&[2, 3], &[4, 5]).is_err());
        assert!(mkn(&[2, 3, 1], &[3, 5]).is_err());
    }
}
