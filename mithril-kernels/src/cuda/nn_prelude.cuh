// Shared by the f32 / f64 sources (conv, pool, attention, dropout), after prelude.cuh: these
// kernels compute in their storage type (f64 stays f64).

#define MT_FOR_F32_F64(X) X(f32, float) X(f64, double)

__device__ __forceinline__ float mt_exp(float x) { return expf(x); }
__device__ __forceinline__ double mt_exp(double x) { return exp(x); }
__device__ __forceinline__ float mt_log(float x) { return logf(x); }
__device__ __forceinline__ double mt_log(double x) { return log(x); }
template <typename T> __device__ __forceinline__ T mt_neg_inf();
template <> __device__ __forceinline__ float mt_neg_inf<float>() { return -MT_INF; }
template <> __device__ __forceinline__ double mt_neg_inf<double>() {
    return __longlong_as_double(0xfff0000000000000ll);
}
__device__ __forceinline__ bool mt_isnan(float x) { return x != x; }
__device__ __forceinline__ bool mt_isnan(double x) { return x != x; }

// Warp-wide max / sum of `v` in the storage type, f32 or f64 (every lane gets the result), for
// attention's online softmax: the max is a plain comparison (a NaN score is not propagated as
// `prelude.cuh`'s f32 `mt_warp_max` does; attention's own semantics, kept as they were).
template <typename T> __device__ __forceinline__ T mt_attn_wmax(T v) {
    for (int o = 16; o > 0; o >>= 1) {
        const T u = __shfl_xor_sync(MT_FULL_MASK, v, o);
        v = u > v ? u : v;
    }
    return v;
}
template <typename T> __device__ __forceinline__ T mt_attn_wsum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(MT_FULL_MASK, v, o);
    return v;
}

// One key tile of the online softmax (FlashAttention's forward) for a warp's query row, shared
// by attention and cached attention: lane `j` holds the score `s` of the tile's key `j` (-inf:
// not admitted), `s_v` the tile's `TILE` value rows of `dv` columns, `acc[t]` the lane's output
// column `lane + 32 t`. Updates the running max `m`, the sum `l` and `acc`; leaves them as they
// are while no key has been admitted (a fully masked tile).
template <typename T, int TILE, int MAXC>
__device__ __forceinline__ void mt_online_tile(T s, T& m, T& l, T (&acc)[MAXC], const T* s_v,
                                               long dv, int lane) {
    const T ninf = mt_neg_inf<T>();
    const T mt = mt_attn_wmax(s);
    const T mn = mt > m ? mt : m;
    if (mn == ninf) return;
    const T alpha = mt_exp(m - mn);
    const T p = s == ninf ? T(0) : mt_exp(s - mn);
    l = l * alpha + mt_attn_wsum(p);
#pragma unroll
    for (int t = 0; t < MAXC; ++t) acc[t] *= alpha;
    for (int jj = 0; jj < TILE; ++jj) {
        const T pj = __shfl_sync(MT_FULL_MASK, p, jj);
        if (pj == T(0)) continue; // uniform across the warp
#pragma unroll
        for (int t = 0; t < MAXC; ++t) {
            const long c = lane + 32 * t;
            if (c < dv) acc[t] += pj * s_v[jj * dv + c];
        }
    }
    m = mn;
}
