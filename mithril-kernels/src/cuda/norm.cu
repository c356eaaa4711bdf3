// LayerNorm and RMSNorm forward over the last axis of a contiguous [rows, cols] array, one block
// per row, f32 accumulation; the same formulas as the DSL library models:
//   layernorm: y = (x - mean) / sqrt(var + eps) * gamma + beta   (biased variance, two passes)
//   rmsnorm:   y = x / sqrt(mean(x^2) + eps) * gamma
// gamma / beta may be null (scale 1 / shift 0). mean / rstd (f32, one per row, for the backward
// pass) may be null.

template <typename T>
__device__ __forceinline__ void mt_layernorm_rows(const T* __restrict__ x, const T* __restrict__ gamma,
                                                  const T* __restrict__ beta, T* __restrict__ y,
                                                  float* __restrict__ mean_out,
                                                  float* __restrict__ rstd_out, long rows,
                                                  long cols, float eps) {
    MT_ROWS(r, rows) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        float s = 0.0f;
        MT_COLS(c, cols) s += mt_load(xr[c]);
        const float mean = mt_block_sum(s) / (float)cols;
        float q = 0.0f;
        MT_COLS(c, cols) {
            const float d = mt_load(xr[c]) - mean;
            q += d * d;
        }
        const float rstd = 1.0f / sqrtf(mt_block_sum(q) / (float)cols + eps);
        MT_COLS(c, cols) {
            float v = (mt_load(xr[c]) - mean) * rstd;
            if (gamma) v *= mt_load(gamma[c]);
            if (beta) v += mt_load(beta[c]);
            yr[c] = mt_store<T>(v);
        }
        if (threadIdx.x == 0) {
            if (mean_out) mean_out[r] = mean;
            if (rstd_out) rstd_out[r] = rstd;
        }
    }
}

template <typename T>
__device__ __forceinline__ void mt_rmsnorm_rows(const T* __restrict__ x, const T* __restrict__ gamma,
                                                T* __restrict__ y, float* __restrict__ rstd_out,
                                                long rows, long cols, float eps) {
    MT_ROWS(r, rows) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        float q = 0.0f;
        MT_COLS(c, cols) {
            const float v = mt_load(xr[c]);
            q += v * v;
        }
        const float rstd = 1.0f / sqrtf(mt_block_sum(q) / (float)cols + eps);
        MT_COLS(c, cols) {
            float v = mt_load(xr[c]) * rstd;
            if (gamma) v *= mt_load(gamma[c]);
            yr[c] = mt_store<T>(v);
        }
        if (threadIdx.x == 0 && rstd_out) rstd_out[r] = rstd;
    }
}

#define MT_NORM_KERNELS(S, T)                                                                   \
    extern "C" __global__ void mt_layernorm_##S(const T* x, const T* gamma, const T* beta,     \
                                                T* y, float* mean, float* rstd, long rows,      \
                                                long cols, float eps) {                         \
        mt_layernorm_rows<T>(x, gamma, beta, y, mean, rstd, rows, cols, eps);                   \
    }                                                                                           \
    extern "C" __global__ void mt_rmsnorm_##S(const T* x, const T* gamma, T* y, float* rstd,   \
                                              long rows, long cols, float eps) {                \
        mt_rmsnorm_rows<T>(x, gamma, y, rstd, rows, cols, eps);                                 \
    }
MT_FOR_FLOATS(MT_NORM_KERNELS)
