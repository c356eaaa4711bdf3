// softmax / log_softmax over the last axis of a contiguous [rows, cols] array, and their
// backward passes. One block per row, f32 accumulation, max-subtracted (stable).

template <typename T, bool LOG>
__device__ __forceinline__ void mt_softmax_rows(const T* __restrict__ x, T* __restrict__ y,
                                                long rows, long cols) {
    MT_ROWS(r, rows) {
        const T* xr = x + r * cols;
        T* yr = y + r * cols;
        float m = -MT_INF;
        MT_COLS(c, cols) m = mt_max(m, mt_load(xr[c]));
        m = mt_block_max(m);
        float s = 0.0f;
        MT_COLS(c, cols) s += expf(mt_load(xr[c]) - m);
        s = mt_block_sum(s);
        if (LOG) {
            const float ls = logf(s);
            MT_COLS(c, cols) yr[c] = mt_store<T>(mt_load(xr[c]) - m - ls);
        } else {
            const float inv = 1.0f / s;
            MT_COLS(c, cols) yr[c] = mt_store<T>(expf(mt_load(xr[c]) - m) * inv);
        }
    }
}

// softmax: dx = y * (dy - sum(dy * y)); log_softmax (y = log-probabilities): dx = dy - exp(y) * sum(dy).
template <typename T, bool LOG>
__device__ __forceinline__ void mt_softmax_backward_rows(const T* __restrict__ y,
                                                         const T* __restrict__ dy,
                                                         T* __restrict__ dx, long rows, long cols) {
    MT_ROWS(r, rows) {
        const T* yr = y + r * cols;
        const T* dyr = dy + r * cols;
        T* dxr = dx + r * cols;
        float s = 0.0f;
        MT_COLS(c, cols) s += LOG ? mt_load(dyr[c]) : mt_load(dyr[c]) * mt_load(yr[c]);
        s = mt_block_sum(s);
        MT_COLS(c, cols) {
            const float yv = mt_load(yr[c]), g = mt_load(dyr[c]);
            dxr[c] = mt_store<T>(LOG ? g - expf(yv) * s : yv * (g - s));
        }
    }
}

#define MT_SOFTMAX_KERNELS(S, T)                                                                \
    extern "C" __global__ void mt_softmax_##S(const T* x, T* y, long rows, long cols) {        \
        mt_softmax_rows<T, false>(x, y, rows, cols);                                            \
    }                                                                                           \
    extern "C" __global__ void mt_log_softmax_##S(const T* x, T* y, long rows, long cols) {    \
        mt_softmax_rows<T, true>(x, y, rows, cols);                                             \
    }                                                                                           \
    extern "C" __global__ void mt_softmax_backward_##S(const T* y, const T* dy, T* dx,         \
                                                       long rows, long cols) {                  \
        mt_softmax_backward_rows<T, false>(y, dy, dx, rows, cols);                              \
    }                                                                                           \
    extern "C" __global__ void mt_log_softmax_backward_##S(const T* y, const T* dy, T* dx,     \
                                                           long rows, long cols) {              \
        mt_softmax_backward_rows<T, true>(y, dy, dx, rows, cols);                               \
    }
MT_FOR_FLOATS(MT_SOFTMAX_KERNELS)
