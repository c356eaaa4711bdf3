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
