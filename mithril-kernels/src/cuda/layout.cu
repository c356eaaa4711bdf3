// Layout ops (the CPU twins: mithril::rt::ops::slice_to / transpose_to / concat_to / stack_to /
// arange_to and the slice and concat gradients of ops/grad.rs): one strided-copy geometry for
// slices (any steps, negative ones included, integer indices, new axes), permutes (transpose)
// and the parts of concat / stack, computed on the host by mithril_runtime::cuda::layout::
// {slice_geometry, permute_geometry, concat_geometry, stack_geometry, concat_part_geometry}.
//
// strided_gather:  y[i] = x[offset + sum_k idx_k(i) * strides[k]]   (i over y, row-major)
// strided_scatter: x[offset + sum_k idx_k(i) * strides[k]] = y[i]   (the slice's gradient into
//   a zeroed x, a concat / stack part into the result; the positions are distinct, so each
//   element is written once)
// where idx_k(i) is the multi-index of i over dims[0 .. rank] (the last axis fastest).
// Both are bit copies: f32 / i32 through the f32 kernels, f64 / i64 through the f64 ones,
// f16 / bf16 through the u16 ones. 1-D grid-stride loops over n = prod(dims).
//
// arange: y[i] = (T)(start + i * step), computed in double as the CPU (f32, f64; i64 and i32
// as mt_arange_i64 / mt_arange_i32).

#define MT_LAYOUT_MAX_RANK 8

// The geometry, passed by value: n elements, rank <= 8, the first element's offset in x, the
// output dims and the input strides (in elements, negative for a reversed axis; 0 for a new
// axis).
struct mt_strided {
    long n, rank, offset;
    long dims[MT_LAYOUT_MAX_RANK];
    long strides[MT_LAYOUT_MAX_RANK];
};

__device__ __forceinline__ long mt_strided_source(const mt_strided& g, long i) {
    long src = g.offset;
    for (long k = g.rank - 1; k >= 0; --k) {
        const long d = g.dims[k];
        const long q = i / d;
        src += (i - q * d) * g.strides[k];
        i = q;
    }
    return src;
}

#define MT_LAYOUT_COPY(S, T)                                                                    \
    extern "C" __global__ void mt_strided_gather_##S(mt_strided g, const T* x, T* y) {         \
        MT_GRID_STRIDE(i, g.n) y[i] = x[mt_strided_source(g, i)];                               \
    }                                                                                           \
    extern "C" __global__ void mt_strided_scatter_##S(mt_strided g, const T* y, T* x) {        \
        MT_GRID_STRIDE(i, g.n) x[mt_strided_source(g, i)] = y[i];                               \
    }
#define MT_LAYOUT_ARANGE(S, T)                                                                  \
    extern "C" __global__ void mt_arange_##S(long n, double start, double step, T* y) {        \
        MT_GRID_STRIDE(i, n) y[i] = (T)(start + (double)i * step);                              \
    }
#define MT_LAYOUT_KERNELS(S, T) MT_LAYOUT_COPY(S, T) MT_LAYOUT_ARANGE(S, T)
MT_FOR_F32_F64(MT_LAYOUT_KERNELS)
MT_LAYOUT_COPY(u16, unsigned short)
MT_LAYOUT_ARANGE(i64, long long)
MT_LAYOUT_ARANGE(i32, int)
