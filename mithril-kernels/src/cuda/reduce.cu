// Row reductions over the last axis of a contiguous [rows, cols] array (one block per row) and
// column sums (one thread per column). f32 accumulation; empty rows give the identity
// (sum 0, mean NaN, max -inf, min +inf). max/min propagate NaN.

enum { MT_SUM = 0, MT_MEAN = 1, MT_MAX = 2, MT_MIN = 3 };

template <typename T, int OP>
__device__ __forceinline__ void mt_row_reduce(const T* __restrict__ x, T* __restrict__ out,
                                              long rows, long cols) {
    MT_ROWS(r, rows) {
        const T* xr = x + r * cols;
        float acc = OP == MT_MAX ? -MT_INF : (OP == MT_MIN ? MT_INF : 0.0f);
        MT_COLS(c, cols) {
            const float v = mt_load(xr[c]);
            acc = OP == MT_MAX ? mt_max(acc, v) : (OP == MT_MIN ? mt_min(acc, v) : acc + v);
        }
        acc = OP == MT_MAX ? mt_block_max(acc) : (OP == MT_MIN ? mt_block_min(acc) : mt_block_sum(acc));
        if (OP == MT_MEAN) acc = acc / (float)cols;
        if (threadIdx.x == 0) out[r] = mt_store<T>(acc);
    }
}

template <typename T>
__device__ __forceinline__ void mt_col_sum(const T* __restrict__ x, T* __restrict__ out, long rows,
                                           long cols) {
    MT_GRID_STRIDE(c, cols) {
        float acc = 0.0f;
        for (long r = 0; r < rows; ++r) acc += mt_load(x[r * cols + c]);
        out[c] = mt_store<T>(acc);
    }
}

#define MT_REDUCE_KERNELS(S, T)                                                                 \
    extern "C" __global__ void mt_row_sum_##S(const T* x, T* out, long rows, long cols) {      \
        mt_row_reduce<T, MT_SUM>(x, out, rows, cols);                                           \
    }                                                                                           \
    extern "C" __global__ void mt_row_mean_##S(const T* x, T* out, long rows, long cols) {     \
        mt_row_reduce<T, MT_MEAN>(x, out, rows, cols);                                          \
    }                                                                                           \
    extern "C" __global__ void mt_row_max_##S(const T* x, T* out, long rows, long cols) {      \
        mt_row_reduce<T, MT_MAX>(x, out, rows, cols);                                           \
    }                                                                                           \
    extern "C" __global__ void mt_row_min_##S(const T* x, T* out, long rows, long cols) {      \
        mt_row_reduce<T, MT_MIN>(x, out, rows, cols);                                           \
    }                                                                                           \
    extern "C" __global__ void mt_col_sum_##S(const T* x, T* out, long rows, long cols) {      \
        mt_col_sum<T>(x, out, rows, cols);                                                      \
    }
MT_FOR_FLOATS(MT_REDUCE_KERNELS)
