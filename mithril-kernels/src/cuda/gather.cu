// Gathers with i64 indices in 0..n (as on the CPU). An index out of range (negative ones
// included) writes 0 and sets *bad = 1 (`bad` may be null); the host checks the flag and reports
// the error, since a kernel cannot return one.
//
// embedding:  out[i, :] = table[idx[i], :]              idx [n_idx], table [vocab, dim]
// embedding_backward: dtable[idx[i], :] += dout[i, :]   (f32 dtable, atomics; zero it first)
// take_along: out[p] = x[p, idx[p]]                     x [n, c], idx [n] (last axis)
// take_along_backward: dx[p, j] = (j == idx[p]) ? dout[p] : 0   (writes all of dx)

template <typename T>
__device__ __forceinline__ void mt_embedding(const long long* __restrict__ idx,
                                             const T* __restrict__ table, T* __restrict__ out,
                                             long n_idx, long vocab, long dim, int* bad) {
    MT_GRID_STRIDE(e, n_idx * dim) {
        const long i = e / dim, j = e - i * dim;
        const long k = mt_check_index(idx[i], vocab);
        if (k < 0) {
            out[e] = mt_store<T>(0.0f);
            if (bad) *bad = 1;
        } else {
            out[e] = table[k * dim + j];
        }
    }
}

template <typename T>
__device__ __forceinline__ void mt_embedding_backward(const long long* __restrict__ idx,
                                                      const T* __restrict__ dout,
                                                      float* __restrict__ dtable, long n_idx,
                                                      long vocab, long dim, int* bad) {
    MT_GRID_STRIDE(e, n_idx * dim) {
        const long i = e / dim, j = e - i * dim;
        const long k = mt_check_index(idx[i], vocab);
        if (k < 0) {
            if (bad) *bad = 1;
        } else {
            atomicAdd(dtable + k * dim + j, mt_load(dout[e]));
        }
    }
}

template <typename T>
__device__ __forceinline__ void mt_take_along(const T* __restrict__ x,
                                              const long long* __restrict__ idx,
                                              T* __restrict__ out, long n, long c, int* bad) {
    MT_GRID_STRIDE(p, n) {
        const long k = mt_check_index(idx[p], c);
        if (k < 0) {
            out[p] = mt_store<T>(0.0f);
            if (bad) *bad = 1;
        } else {
            out[p] = x[p * c + k];
        }
    }
}

template <typename T>
__device__ __forceinline__ void mt_take_along_backward(const long long* __restrict__ idx,
                                                       const T* __restrict__ dout,
                                                       T* __restrict__ dx, long n, long c) {
    MT_GRID_STRIDE(e, n * c) {
        const long p = e / c, j = e - p * c;
        dx[e] = (mt_check_index(idx[p], c) == j) ? dout[p] : mt_store<T>(0.0f);
    }
}

#define MT_GATHER_KERNELS(S, T)                                                                 \
    extern "C" __global__ void mt_embedding_##S(const long long* idx, const T* table, T* out,  \
                                                long n_idx, long vocab, long dim, int* bad) {   \
        mt_embedding<T>(idx, table, out, n_idx, vocab, dim, bad);                               \
    }                                                                                           \
    extern "C" __global__ void mt_embedding_backward_##S(const long long* idx, const T* dout,  \
                                                         float* dtable, long n_idx, long vocab, \
                                                         long dim, int* bad) {                  \
        mt_embedding_backward<T>(idx, dout, dtable, n_idx, vocab, dim, bad);                    \
    }                                                                                           \
    extern "C" __global__ void mt_take_along_##S(const T* x, const long long* idx, T* out,     \
                                                 long n, long c, int* bad) {                    \
        mt_take_along<T>(x, idx, out, n, c, bad);                                               \
    }                                                                                           \
    extern "C" __global__ void mt_take_along_backward_##S(const long long* idx, const T* dout, \
                                                          T* dx, long n, long c) {              \
        mt_take_along_backward<T>(idx, dout, dx, n, c);                                         \
    }
MT_FOR_FLOATS(MT_GATHER_KERNELS)
