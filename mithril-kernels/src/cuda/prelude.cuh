// mithril CUDA prelude, prepended to every hand-written kernel source (see mod.rs).
// Header-free on purpose: NVRTC needs no include path, so there is no header/NVRTC version skew.
//
// Storage types: f32 = float, f16 = mt_half, bf16 = mt_bfloat (2-byte structs with the bit
// layout of half::f16 / half::bf16, so the host passes CudaSlice<f16> / CudaSlice<bf16>).
// Arithmetic is always in f32: mt_load widens, mt_store narrows (round to nearest even).
// Kernels are `extern "C"` and named mt_<op>_<dtype> with dtype in {f32, f16, bf16}.

struct __align__(2) mt_half { unsigned short bits; };
struct __align__(2) mt_bfloat { unsigned short bits; };

__device__ __forceinline__ float mt_load(float x) { return x; }
__device__ __forceinline__ float mt_load(mt_half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
}
__device__ __forceinline__ float mt_load(mt_bfloat h) {
    return __uint_as_float(((unsigned int)h.bits) << 16);
}

template <typename T> __device__ __forceinline__ T mt_store(float f);
template <> __device__ __forceinline__ float mt_store<float>(float f) { return f; }
template <> __device__ __forceinline__ mt_half mt_store<mt_half>(float f) {
    mt_half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
// Software round-to-nearest-even (works on every arch; same result as half::bf16::from_f32).
template <> __device__ __forceinline__ mt_bfloat mt_store<mt_bfloat>(float f) {
    unsigned int u = __float_as_uint(f);
    mt_bfloat h;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        h.bits = (unsigned short)((u >> 16) | 0x40u); // quiet NaN, sign kept
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        h.bits = (unsigned short)(u >> 16);
    }
    return h;
}

#define MT_NAN __int_as_float(0x7fffffff)
#define MT_INF __int_as_float(0x7f800000)

// max / min that propagate NaN (the CPU kernels' semantics; fmaxf would drop it).
__device__ __forceinline__ float mt_max(float a, float b) {
    return (a != a || b != b) ? MT_NAN : fmaxf(a, b);
}
__device__ __forceinline__ float mt_min(float a, float b) {
    return (a != a || b != b) ? MT_NAN : fminf(a, b);
}

// Warp and block reductions. Row kernels are launched with blockDim.x a multiple of 32 and at
// most 1024 (see mithril_runtime::cuda::launch::row_config); every thread of the block must
// call them (the result is returned to every thread).
#define MT_FULL_MASK 0xffffffffu
__device__ __forceinline__ float mt_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(MT_FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float mt_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = mt_max(v, __shfl_xor_sync(MT_FULL_MASK, v, o));
    return v;
}
__device__ __forceinline__ float mt_warp_min(float v) {
    for (int o = 16; o > 0; o >>= 1) v = mt_min(v, __shfl_xor_sync(MT_FULL_MASK, v, o));
    return v;
}

#define MT_BLOCK_REDUCE(NAME, WARP, IDENTITY)                                                   \
    __device__ __forceinline__ float NAME(float v) {                                            \
        __shared__ float sh[32];                                                                \
        const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;                             \
        const int nwarps = (blockDim.x + 31) >> 5;                                              \
        v = WARP(v);                                                                            \
        __syncthreads(); /* an earlier call's readers of sh are done */                         \
        if (lane == 0) sh[warp] = v;                                                            \
        __syncthreads();                                                                        \
        return WARP(lane < nwarps ? sh[lane] : (IDENTITY));                                     \
    }
MT_BLOCK_REDUCE(mt_block_sum, mt_warp_sum, 0.0f)
MT_BLOCK_REDUCE(mt_block_max, mt_warp_max, -MT_INF)
MT_BLOCK_REDUCE(mt_block_min, mt_warp_min, MT_INF)

// Grid-stride loop over [0, n) for 1-D elementwise kernels.
#define MT_GRID_STRIDE(i, n)                                                                    \
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                         \
         i += (long)blockDim.x * gridDim.x)
// Block-stride loop over rows (one block per row, the grid may be smaller than `rows`).
#define MT_ROWS(r, rows) for (long r = blockIdx.x; r < (rows); r += gridDim.x)
// Thread-stride loop over the columns of one row.
#define MT_COLS(c, cols) for (long c = threadIdx.x; c < (cols); c += blockDim.x)

// Instantiate X(suffix, storage type) for the three float storage types.
#define MT_FOR_FLOATS(X) X(f32, float) X(f16, mt_half) X(bf16, mt_bfloat)

// An index checked against 0..n; -1 when outside (negative ones too: class targets and ids
// are not counted from the end, as in PyTorch).
__device__ __forceinline__ long mt_check_index(long long i, long n) {
    return (i < 0 || i >= n) ? -1 : (long)i;
}
