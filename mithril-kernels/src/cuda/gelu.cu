// GELU, exact (erf) and tanh forms, with their derivatives; 1-D grid-stride, f32 math, the same
// formulas as mithril_kernels::scalar::{gelu_erf, gelu_tanh}:
//   gelu(x)      = 0.5 x (1 + erf(x / sqrt 2))
//   gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

#define MT_SQRT1_2 0.70710678118654752440f
#define MT_INV_SQRT_2PI 0.39894228040143267794f
#define MT_GELU_K 0.7978845608028654f
#define MT_GELU_C 0.044715f

__device__ __forceinline__ float mt_gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * MT_SQRT1_2));
}
__device__ __forceinline__ float mt_gelu_erf_grad(float x) {
    return 0.5f * (1.0f + erff(x * MT_SQRT1_2)) + x * MT_INV_SQRT_2PI * expf(-0.5f * x * x);
}
__device__ __forceinline__ float mt_gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(MT_GELU_K * (x + MT_GELU_C * x * x * x)));
}
__device__ __forceinline__ float mt_gelu_tanh_grad(float x) {
    const float t = tanhf(MT_GELU_K * (x + MT_GELU_C * x * x * x));
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * MT_GELU_K * (1.0f + 3.0f * MT_GELU_C * x * x);
}

#define MT_GELU_KERNELS(S, T)                                                                   \
    extern "C" __global__ void mt_gelu_##S(const T* x, T* y, long n) {                         \
        MT_GRID_STRIDE(i, n) y[i] = mt_store<T>(mt_gelu_erf(mt_load(x[i])));                    \
    }                                                                                           \
    extern "C" __global__ void mt_gelu_tanh_##S(const T* x, T* y, long n) {                    \
        MT_GRID_STRIDE(i, n) y[i] = mt_store<T>(mt_gelu_tanh(mt_load(x[i])));                   \
    }                                                                                           \
    extern "C" __global__ void mt_gelu_backward_##S(const T* x, const T* dy, T* dx, long n) {  \
        MT_GRID_STRIDE(i, n)                                                                    \
        dx[i] = mt_store<T>(mt_load(dy[i]) * mt_gelu_erf_grad(mt_load(x[i])));                  \
    }                                                                                           \
    extern "C" __global__ void mt_gelu_tanh_backward_##S(const T* x, const T* dy, T* dx,       \
                                                         long n) {                              \
        MT_GRID_STRIDE(i, n)                                                                    \
        dx[i] = mt_store<T>(mt_load(dy[i]) * mt_gelu_tanh_grad(mt_load(x[i])));                 \
    }
MT_FOR_FLOATS(MT_GELU_KERNELS)
