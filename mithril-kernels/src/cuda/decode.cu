// Incremental decoding with a key/value cache (the CPU twins: mithril::rt::ops::update_slice_in
// and mithril_kernels::attention::decode), f32 and f64, computed in the storage type.
//
// update_slice: x viewed as [outer, m, inner] (m the cache's length along the updated axis),
//   the values as [outer, n, inner]; rows start .. start + n of x are overwritten in place,
//   nothing else is touched (the host checked start + n <= m). A 1-D grid-stride loop over the
//   values' elements (mithril_runtime::cuda::launch::elementwise_config). Also instantiated
//   for 16-bit storage (f16 / bf16 bits, copied as unsigned short): mt_update_slice_u16.
//
// cached_attention: causal attention of the queries q [B, Hq, Sq, D] at positions
//   pos .. pos + Sq over the first pos + Sq rows of a cache k [B, Hkv, M, D],
//   v [B, Hkv, M, Dv]: query i sees keys j <= pos + i; rows after pos + Sq are never read.
//   The forward scheme of attention.cu: a block of MT_DEC_ROWS warps owns MT_DEC_ROWS query
//   rows of one (batch, head); key/value tiles of 32 rows in shared memory; lane j scores key
//   j0 + j; the warp keeps the online-softmax max / sum; each lane accumulates output columns
//   lane, lane + 32, ... (Dv <= 32 * MT_DEC_MAXC). Grouped-query: query head h reads
//   key/value head h / (Hq / Hkv). Launch: grid (B * Hq, ceil(Sq / MT_DEC_ROWS)), block
//   32 * MT_DEC_ROWS threads, dynamic shared memory
//   (MT_DEC_ROWS * D + MT_DEC_TILE * (D + 1) + MT_DEC_TILE * Dv) * sizeof(T).
//
// f16 / bf16 caches run the f32 kernel on widened copies of the rows in use only (as the CPU):
//   mt_widen_rows_<f16|bf16>: rows 0 .. used of each of `outer` blocks of m rows (inner elements
//   a row) into a compact f32 [outer, used, inner]; mt_narrow_<f16|bf16>: f32 -> half, round
//   to nearest even. 1-D grid-stride loops.

#define MT_DEC_ROWS 4
#define MT_DEC_TILE 32
#define MT_DEC_MAXC 8

// The cache geometry: m the cache's rows per (batch, head), pos the first query's position.
struct mt_dec_dims {
    long batch, hq, hkv, sq, m, d, dv, pos;
};

extern __shared__ __align__(16) unsigned char mt_dec_smem[];


template <typename T>
__device__ __forceinline__ void mt_update_slice(long outer, long n, long m, long inner,
                                                long start, const T* __restrict__ vals,
                                                T* __restrict__ x) {
    const long row = n * inner, total = outer * row;
    for (long t = (long)blockIdx.x * blockDim.x + threadIdx.x; t < total;
         t += (long)gridDim.x * blockDim.x) {
        const long o = t / row, r = t % row;
        x[(o * m + start) * inner + r] = vals[t];
    }
}

template <typename T>
__device__ __forceinline__ void mt_cached_attention(mt_dec_dims a, const T* __restrict__ q,
                                                    const T* __restrict__ k,
                                                    const T* __restrict__ v, T scale,
                                                    T* __restrict__ o) {
    const long D = a.d, DV = a.dv;
    T* s_q = (T*)mt_dec_smem;                 // [ROWS][D]
    T* s_k = s_q + MT_DEC_ROWS * D;           // [TILE][D + 1]
    T* s_v = s_k + MT_DEC_TILE * (D + 1);     // [TILE][DV]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long bh = blockIdx.x, b = bh / a.hq, h = bh % a.hq;
    const long kvh = h / (a.hq / a.hkv);
    const long i0 = (long)blockIdx.y * MT_DEC_ROWS, i = i0 + warp;
    const bool valid = i < a.sq;
    // the cache rows of this (batch, key/value head): m rows, the first pos + sq in use
    const T* kb = k + (b * a.hkv + kvh) * a.m * D;
    const T* vb = v + (b * a.hkv + kvh) * a.m * DV;
    const long used = a.pos + a.sq;
    for (long t = threadIdx.x; t < MT_DEC_ROWS * D; t += blockDim.x) {
        const long r = t / D;
        s_q[t] = i0 + r < a.sq ? q[(bh * a.sq + i0 + r) * D + t % D] : T(0);
    }
    const T ninf = mt_neg_inf<T>();
    T m = ninf, l = T(0);
    T acc[MT_DEC_MAXC];
#pragma unroll
    for (int t = 0; t < MT_DEC_MAXC; ++t) acc[t] = T(0);
    // the block's last row sees keys up to pos + i0 + ROWS - 1
    long jend = a.pos + i0 + MT_DEC_ROWS;
    if (jend > used) jend = used;
    for (long j0 = 0; j0 < jend; j0 += MT_DEC_TILE) {
        __syncthreads();
        for (long t = threadIdx.x; t < MT_DEC_TILE * D; t += blockDim.x) {
            const long r = t / D, c = t % D;
            s_k[r * (D + 1) + c] = j0 + r < jend ? kb[(j0 + r) * D + c] : T(0);
        }
        for (long t = threadIdx.x; t < MT_DEC_TILE * DV; t += blockDim.x) {
            const long r = t / DV;
            s_v[t] = j0 + r < jend ? vb[(j0 + r) * DV + t % DV] : T(0);
        }
        __syncthreads();
        if (!valid) continue;
        const long j = j0 + lane;
        T s = ninf;
        if (j < jend && j <= a.pos + i) {
            T dot = T(0);
            for (long c = 0; c < D; ++c) dot += s_q[warp * D + c] * s_k[lane * (D + 1) + c];
            s = dot * scale;
        }
        mt_online_tile<T, MT_DEC_TILE, MT_DEC_MAXC>(s, m, l, acc, s_v, DV, lane);
    }
    if (!valid) return;
#pragma unroll
    for (int t = 0; t < MT_DEC_MAXC; ++t) {
        const long c = lane + 32 * t;
        if (c < DV) o[(bh * a.sq + i) * DV + c] = acc[t] / l;
    }
}

#define MT_DECODE_UPDATE(S, T)                                                                  \
    extern "C" __global__ void mt_update_slice_##S(long outer, long n, long m, long inner,      \
                                                   long start, const T* vals, T* x) {           \
        mt_update_slice<T>(outer, n, m, inner, start, vals, x);                                 \
    }
#define MT_DECODE_KERNELS(S, T)                                                                 \
    MT_DECODE_UPDATE(S, T)                                                                      \
    extern "C" __global__ void mt_cached_attention_##S(mt_dec_dims a, const T* q, const T* k,  \
                                                       const T* v, T scale, T* o) {             \
        mt_cached_attention<T>(a, q, k, v, scale, o);                                           \
    }
MT_FOR_F32_F64(MT_DECODE_KERNELS)
MT_DECODE_UPDATE(u16, unsigned short)

#define MT_DECODE_HALF(S, H)                                                                    \
    extern "C" __global__ void mt_widen_rows_##S(long outer, long used, long m, long inner,     \
                                                 const H* src, float* dst) {                    \
        const long row = used * inner, total = outer * row;                                     \
        for (long t = (long)blockIdx.x * blockDim.x + threadIdx.x; t < total;                   \
             t += (long)gridDim.x * blockDim.x) {                                               \
            const long o = t / row, r = t % row;                                                \
            dst[t] = mt_load(src[o * m * inner + r]);                                           \
        }                                                                                       \
    }                                                                                           \
    extern "C" __global__ void mt_narrow_##S(long n, const float* src, H* dst) {               \
        for (long t = (long)blockIdx.x * blockDim.x + threadIdx.x; t < n;                       \
             t += (long)gridDim.x * blockDim.x)                                                 \
            dst[t] = mt_store<H>(src[t]);                                                       \
    }
MT_DECODE_HALF(f16, mt_half)
MT_DECODE_HALF(bf16, mt_bfloat)
