// Softmax cross-entropy over the last axis, per row, fused (the DSL's
// `-take_along(log_softmax(x), target)`): one block per row, f32 accumulation.
//   forward:  loss[r] = lse_r - x[r, t_r],  lse_r = max_r + log(sum_c exp(x[r, c] - max_r))
//   backward: dx[r, c] = dloss[r] * (exp(x[r, c] - lse_r) - (c == t_r))
// Targets are i64 in 0..cols; out of range (negative included) sets *bad = 1 (may be null)
// and gives a NaN loss / zero gradient row. `lse` (f32 per row) is written by the forward pass
// when non-null; the backward pass recomputes it when given null.

template <typename T>
__device__ __forceinline__ float mt_row_lse(const T* __restrict__ xr, long cols) {
    float m = -MT_INF;
    MT_COLS(c, cols) m = mt_max(m, mt_load(xr[c]));
    m = mt_block_max(m);
    float s = 0.0f;
    MT_COLS(c, cols) s += expf(mt_load(xr[c]) - m);
    return m + logf(mt_block_sum(s));
}

template <typename T>
__device__ __forceinline__ void mt_xent_rows(const T* __restrict__ x,
                                             const long long* __restrict__ target,
                                             T* __restrict__ loss, float* __restrict__ lse_out,
                                             long rows, long cols, int* bad) {
    MT_ROWS(r, rows) {
        const T* xr = x + r * cols;
        const float lse = mt_row_lse(xr, cols);
        if (threadIdx.x == 0) {
            const long t = mt_check_index(target[r], cols);
            if (t < 0 && bad) *bad = 1;
            loss[r] = mt_store<T>(t < 0 ? MT_NAN : lse - mt_load(xr[t]));
            if (lse_out) lse_out[r] = lse;
        }
    }
}

template <typename T>
__device__ __forceinline__ void mt_xent_backward_rows(const T* __restrict__ x,
                                                      const long long* __restrict__ target,
                                                      const float* __restrict__ lse_in,
                                                      const T* __restrict__ dloss,
                                                      T* __restrict__ dx, long rows, long cols,
                                                      int* bad) {
    MT_ROWS(r, rows) {
        const T* xr = x + r * cols;
        T* dxr = dx + r * cols;
        const float lse = lse_in ? lse_in[r] : mt_row_lse(xr, cols);
        const long t = mt_check_index(target[r], cols);
        if (t < 0 && bad && threadIdx.x == 0) *bad = 1;
        const float g = mt_load(dloss[r]);
        MT_COLS(c, cols) {
            const float p = expf(mt_load(xr[c]) - lse);
            dxr[c] = mt_store<T>(t < 0 ? 0.0f : g * (p - (c == t ? 1.0f : 0.0f)));
        }
    }
}

#define MT_XENT_KERNELS(S, T)                                                                   \
    extern "C" __global__ void mt_softmax_xent_##S(const T* x, const long long* target,        \
                                                   T* loss, float* lse, long rows, long cols,   \
                                                   int* bad) {                                  \
        mt_xent_rows<T>(x, target, loss, lse, rows, cols, bad);                                 \
    }                                                                                           \
    extern "C" __global__ void mt_softmax_xent_backward_##S(                                   \
        const T* x, const long long* target, const float* lse, const T* dloss, T* dx,          \
        long rows, long cols, int* bad) {                                                       \
        mt_xent_backward_rows<T>(x, target, lse, dloss, dx, rows, cols, bad);                   \
    }
MT_FOR_FLOATS(MT_XENT_KERNELS)
