// Scaled dot-product attention over [B, H, S, D] (the CPU twin: mithril_kernels::attention),
// f32 and f64, computed in the storage type. FlashAttention's scheme, without an [Sq, Sk]
// buffer:
//   forward:  a block of MT_ATT_ROWS warps owns MT_ATT_ROWS query rows of one (batch, head);
//             key/value tiles of 32 rows are staged in shared memory; in each tile lane j
//             scores key j0 + j, the warp keeps the row's running max / sum (online softmax)
//             and each lane accumulates output columns lane, lane + 32, ... in registers
//             (Dv <= 32 * MT_ATT_MAXC). Causal blocks stop at their last row's key; tiles
//             that are masked out entirely for a row are skipped. Optionally writes each
//             row's log-sum-exp (-inf for a row with no admitted key, whose output is 0/0 =
//             NaN, as on the CPU).
//   backward: the row statistics are recomputed by the forward kernel (lse only), delta_i =
//             dO_i . O_i by a row kernel, then dQ (warp per query row, key tiles) and dK / dV
//             (warp per key row, query tiles over the group's query heads) recompute
//             p = exp(s - lse) tile by tile; dS (the scores' gradient, for a float mask) is one
//             thread per score.
// Grouped-query attention: query head h reads key/value head h / (Hq / Hkv). Masks: mode 0
// none, 1 additive (T, added to the scaled scores), 2 boolean (bytes, 0 excludes), read at
// madd/mbool[moff[b * Hq + h] + i * si + j * sj] (broadcast strides). Causal: key j > i
// excluded. Launch: grid (B * Hq [B * Hkv for dK/dV], ceil(S / MT_ATT_ROWS)), block
// 32 * MT_ATT_ROWS threads, dynamic shared memory as mithril_runtime::cuda::nn computes it.

#define MT_ATT_ROWS 4
#define MT_ATT_TILE 32
#define MT_ATT_MAXC 8

struct mt_attn_dims {
    long batch, hq, hkv, sq, sk, d, dv;
};

struct mt_attn_mask {
    const void* data;       // T (additive) or unsigned char (boolean); unused for mode 0
    const long long* offs;  // per (batch, query head)
    long si, sj;
    int mode;
};

// The kernels' mask parameters (both buffers are passed; the mode says which one is read).
#define MT_ATT_MASK_PARAMS(T)                                                                   \
    const T *madd, const unsigned char *mbool, const long long *moff, long si, long sj, int mode
#define MT_ATT_MASK                                                                             \
    mt_attn_mask mk;                                                                            \
    mk.data = mode == 1 ? (const void*)madd : (const void*)mbool;                               \
    mk.offs = moff;                                                                             \
    mk.si = si;                                                                                 \
    mk.sj = sj;                                                                                 \
    mk.mode = mode;

extern __shared__ __align__(16) unsigned char mt_att_smem[];


// The scaled, masked score of (row i, key j) given the dot product; -inf when excluded.
template <typename T>
__device__ __forceinline__ T mt_att_score(const mt_attn_mask& mk, long bh, long i, long j,
                                          T dot, T scale) {
    T s = dot * scale;
    if (mk.mode != 0) {
        const long at = (long)mk.offs[bh] + i * mk.si + j * mk.sj;
        if (mk.mode == 1) {
            s += ((const T*)mk.data)[at];
        } else if (((const unsigned char*)mk.data)[at] == 0) {
            s = mt_neg_inf<T>();
        }
    }
    return s;
}

template <typename T>
__device__ __forceinline__ void mt_attention_fwd(mt_attn_dims a, const T* __restrict__ q,
                                                 const T* __restrict__ k,
                                                 const T* __restrict__ v, mt_attn_mask mk,
                                                 int causal, T scale, T* __restrict__ o,
                                                 T* __restrict__ lse) {
    const long D = a.d, DV = a.dv;
    T* s_q = (T*)mt_att_smem;                 // [ROWS][D]
    T* s_k = s_q + MT_ATT_ROWS * D;           // [TILE][D + 1]
    T* s_v = s_k + MT_ATT_TILE * (D + 1);     // [TILE][DV]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long bh = blockIdx.x, b = bh / a.hq, h = bh % a.hq;
    const long kvh = h / (a.hq / a.hkv);
    const long i0 = (long)blockIdx.y * MT_ATT_ROWS, i = i0 + warp;
    const bool valid = i < a.sq;
    const T* kb = k + (b * a.hkv + kvh) * a.sk * D;
    const T* vb = v + (b * a.hkv + kvh) * a.sk * DV;
    for (long t = threadIdx.x; t < MT_ATT_ROWS * D; t += blockDim.x) {
        const long r = t / D;
        s_q[t] = i0 + r < a.sq ? q[(bh * a.sq + i0 + r) * D + t % D] : T(0);
    }
    const T ninf = mt_neg_inf<T>();
    T m = ninf, l = T(0);
    T acc[MT_ATT_MAXC];
#pragma unroll
    for (int t = 0; t < MT_ATT_MAXC; ++t) acc[t] = T(0);
    long jend = a.sk;
    if (causal && i0 + MT_ATT_ROWS < jend) jend = i0 + MT_ATT_ROWS;
    for (long j0 = 0; j0 < jend; j0 += MT_ATT_TILE) {
        __syncthreads();
        for (long t = threadIdx.x; t < MT_ATT_TILE * D; t += blockDim.x) {
            const long r = t / D, c = t % D;
            s_k[r * (D + 1) + c] = j0 + r < a.sk ? kb[(j0 + r) * D + c] : T(0);
        }
        for (long t = threadIdx.x; t < MT_ATT_TILE * DV; t += blockDim.x) {
            const long r = t / DV;
            s_v[t] = j0 + r < a.sk ? vb[(j0 + r) * DV + t % DV] : T(0);
        }
        __syncthreads();
        if (!valid) continue;
        const long j = j0 + lane;
        T s = ninf;
        if (j < a.sk && !(causal && j > i)) {
            T dot = T(0);
            for (long c = 0; c < D; ++c) dot += s_q[warp * D + c] * s_k[lane * (D + 1) + c];
            s = mt_att_score(mk, bh, i, j, dot, scale);
        }
        mt_online_tile<T, MT_ATT_TILE, MT_ATT_MAXC>(s, m, l, acc, s_v, DV, lane);
    }
    if (!valid) return;
    if (o != 0) {
#pragma unroll
        for (int t = 0; t < MT_ATT_MAXC; ++t) {
            const long c = lane + 32 * t;
            if (c < DV) o[(bh * a.sq + i) * DV + c] = acc[t] / l;
        }
    }
    if (lse != 0 && lane == 0) lse[bh * a.sq + i] = l == T(0) ? ninf : m + mt_log(l);
}

// delta[r] = dO[r] . O[r] over rows of dv columns; a warp per row.
template <typename T>
__device__ __forceinline__ void mt_attention_delta(long rows, long dv, const T* __restrict__ o,
                                                   const T* __restrict__ go,
                                                   T* __restrict__ delta) {
    const long lane = threadIdx.x & 31;
    const long wpb = blockDim.x >> 5;
    for (long r = (long)blockIdx.x * wpb + (threadIdx.x >> 5); r < rows;
         r += (long)gridDim.x * wpb) {
        T s = T(0);
        for (long c = lane; c < dv; c += 32) s += o[r * dv + c] * go[r * dv + c];
        s = mt_attn_wsum(s);
        if (lane == 0) delta[r] = s;
    }
}

// p = exp(s - lse) (0 when excluded or when the row admits no key)
template <typename T> __device__ __forceinline__ T mt_att_prob(T s, T l) {
    const T ninf = mt_neg_inf<T>();
    return (s == ninf || l == ninf) ? T(0) : mt_exp(s - l);
}

template <typename T>
__device__ __forceinline__ void mt_attention_bwd_q(mt_attn_dims a, const T* __restrict__ q,
                                                   const T* __restrict__ k,
                                                   const T* __restrict__ v, mt_attn_mask mk,
                                                   int causal, T scale,
                                                   const T* __restrict__ go,
                                                   const T* __restrict__ lse,
                                                   const T* __restrict__ delta,
                                                   T* __restrict__ dq) {
    const long D = a.d, DV = a.dv;
    T* s_q = (T*)mt_att_smem;                  // [ROWS][D]
    T* s_g = s_q + MT_ATT_ROWS * D;            // [ROWS][DV]
    T* s_k = s_g + MT_ATT_ROWS * DV;           // [TILE][D + 1]
    T* s_v = s_k + MT_ATT_TILE * (D + 1);      // [TILE][DV + 1]
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long bh = blockIdx.x, b = bh / a.hq, h = bh % a.hq;
    const long kvh = h / (a.hq / a.hkv);
    const long i0 = (long)blockIdx.y * MT_ATT_ROWS, i = i0 + warp;
    const bool valid = i < a.sq;
    const T* kb = k + (b * a.hkv + kvh) * a.sk * D;
    const T* vb = v + (b * a.hkv + kvh) * a.sk * DV;
    for (long t = threadIdx.x; t < MT_ATT_ROWS * D; t += blockDim.x) {
        const long r = t / D;
        s_q[t] = i0 + r < a.sq ? q[(bh * a.sq + i0 + r) * D + t % D] : T(0);
    }
    for (long t = threadIdx.x; t < MT_ATT_ROWS * DV; t += blockDim.x) {
        const long r = t / DV;
        s_g[t] = i0 + r < a.sq ? go[(bh * a.sq + i0 + r) * DV + t % DV] : T(0);
    }
    const T li = valid ? lse[bh * a.sq + i] : T(0);
    const T di = valid ? delta[bh * a.sq + i] : T(0);
    T acc[MT_ATT_MAXC];
#pragma unroll
    for (int t = 0; t < MT_ATT_MAXC; ++t) acc[t] = T(0);
    long jend = a.sk;
    if (causal && i0 + MT_ATT_ROWS < jend) jend = i0 + MT_ATT_ROWS;
    for (long j0 = 0; j0 < jend; j0 += MT_ATT_TILE) {
        __syncthreads();
        for (long t = threadIdx.x; t < MT_ATT_TILE * D; t += blockDim.x) {
            const long r = t / D, c = t % D;
            s_k[r * (D + 1) + c] = j0 + r < a.sk ? kb[(j0 + r) * D + c] : T(0);
        }
        for (long t = threadIdx.x; t < MT_ATT_TILE * DV; t += blockDim.x) {
            const long r = t / DV, c = t % DV;
            s_v[r * (DV + 1) + c] = j0 + r < a.sk ? vb[(j0 + r) * DV + c] : T(0);
        }
        __syncthreads();
        if (!valid) continue;
        const long j = j0 + lane;
        T ds = T(0);
        if (j < a.sk && !(causal && j > i)) {
            T dot = T(0);
            for (long c = 0; c < D; ++c) dot += s_q[warp * D + c] * s_k[lane * (D + 1) + c];
            const T p = mt_att_prob(mt_att_score(mk, bh, i, j, dot, scale), li);
            if (p != T(0)) {
                T dp = T(0);
                for (long c = 0; c < DV; ++c) dp += s_g[warp * DV + c] * s_v[lane * (DV + 1) + c];
                ds = p * (dp - di);
            }
        }
        for (int jj = 0; jj < MT_ATT_TILE; ++jj) {
            const T dj = __shfl_sync(MT_FULL_MASK, ds, jj);
            if (dj == T(0)) continue;
#pragma unroll
            for (int t = 0; t < MT_ATT_MAXC; ++t) {
                const long c = lane + 32 * t;
                if (c < D) acc[t] += dj * s_k[jj * (D + 1) + c];
            }
        }
    }
    if (!valid) return;
#pragma unroll
    for (int t = 0; t < MT_ATT_MAXC; ++t) {
        const long c = lane + 32 * t;
        if (c < D) dq[(bh * a.sq + i) * D + c] = acc[t] * scale;
    }
}

template <typename T>
__device__ __forceinline__ void mt_attention_bwd_kv(mt_attn_dims a, const T* __restrict__ q,
                                                    const T* __restrict__ k,
                                                    const T* __restrict__ v, mt_attn_mask mk,
                                                    int causal, T scale,
                                                    const T* __restrict__ go,
                                                    const T* __restrict__ lse,
                                                    const T* __restrict__ delta, T* dk, T* dv,
                                                    long dv_in_dk) {
    const long D = a.d, DV = a.dv;
    if (dv_in_dk >= 0) dv = dk + dv_in_dk; // the stacked [2, ...] gradient
    T* s_k = (T*)mt_att_smem;                  // [ROWS][D]
    T* s_v = s_k + MT_ATT_ROWS * D;            // [ROWS][DV]
    T* s_q = s_v + MT_ATT_ROWS * DV;           // [TILE][D + 1]
    T* s_g = s_q + MT_ATT_TILE * (D + 1);      // [TILE][DV + 1]
    T* s_l = s_g + MT_ATT_TILE * (DV + 1);     // [TILE] lse
    T* s_d = s_l + MT_ATT_TILE;                // [TILE] delta
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const long bk = blockIdx.x, b = bk / a.hkv, kvh = bk % a.hkv;
    const long group = a.hq / a.hkv;
    const long j0 = (long)blockIdx.y * MT_ATT_ROWS, j = j0 + warp;
    const bool valid = j < a.sk;
    for (long t = threadIdx.x; t < MT_ATT_ROWS * D; t += blockDim.x) {
        const long r = t / D;
        s_k[t] = j0 + r < a.sk ? k[(bk * a.sk + j0 + r) * D + t % D] : T(0);
    }
    for (long t = threadIdx.x; t < MT_ATT_ROWS * DV; t += blockDim.x) {
        const long r = t / DV;
        s_v[t] = j0 + r < a.sk ? v[(bk * a.sk + j0 + r) * DV + t % DV] : T(0);
    }
    T ak[MT_ATT_MAXC], av[MT_ATT_MAXC];
#pragma unroll
    for (int t = 0; t < MT_ATT_MAXC; ++t) ak[t] = av[t] = T(0);
    // causal: query i sees key j only when i >= j; the block's first key bounds the tiles
    const long istart = causal ? (j0 / MT_ATT_TILE) * MT_ATT_TILE : 0;
    for (long hh = 0; hh < group; ++hh) {
        const long h = kvh * group + hh, bh = b * a.hq + h;
        const T* qb = q + bh * a.sq * D;
        const T* gb = go + bh * a.sq * DV;
        for (long i0 = istart; i0 < a.sq; i0 += MT_ATT_TILE) {
            __syncthreads();
            for (long t = threadIdx.x; t < MT_ATT_TILE * D; t += blockDim.x) {
                const long r = t / D, c = t % D;
                s_q[r * (D + 1) + c] = i0 + r < a.sq ? qb[(i0 + r) * D + c] : T(0);
            }
            for (long t = threadIdx.x; t < MT_ATT_TILE * DV; t += blockDim.x) {
                const long r = t / DV, c = t % DV;
                s_g[r * (DV + 1) + c] = i0 + r < a.sq ? gb[(i0 + r) * DV + c] : T(0);
            }
            for (long t = threadIdx.x; t < MT_ATT_TILE; t += blockDim.x) {
                const bool in = i0 + t < a.sq;
                s_l[t] = in ? lse[bh * a.sq + i0 + t] : mt_neg_inf<T>();
                s_d[t] = in ? delta[bh * a.sq + i0 + t] : T(0);
            }
            __syncthreads();
            if (!valid) continue;
            const long i = i0 + lane;
            T p = T(0), ds = T(0);
            if (i < a.sq && !(causal && j > i)) {
                T dot = T(0);
                for (long c = 0; c < D; ++c) dot += s_k[warp * D + c] * s_q[lane * (D + 1) + c];
                p = mt_att_prob(mt_att_score(mk, bh, i, j, dot, scale), s_l[lane]);
                if (p != T(0)) {
                    T dp = T(0);
                    for (long c = 0; c < DV; ++c)
                        dp += s_v[warp * DV + c] * s_g[lane * (DV + 1) + c];
                    ds = p * (dp - s_d[lane]);
                }
            }
            for (int ii = 0; ii < MT_ATT_TILE; ++ii) {
                const T pi = __shfl_sync(MT_FULL_MASK, p, ii);
                const T di = __shfl_sync(MT_FULL_MASK, ds, ii);
                if (pi == T(0) && di == T(0)) continue;
#pragma unroll
                for (int t = 0; t < MT_ATT_MAXC; ++t) {
                    const long c = lane + 32 * t;
                    if (c < DV) av[t] += pi * s_g[ii * (DV + 1) + c];
                    if (c < D) ak[t] += di * s_q[ii * (D + 1) + c];
                }
            }
        }
    }
    if (!valid) return;
#pragma unroll
    for (int t = 0; t < MT_ATT_MAXC; ++t) {
        const long c = lane + 32 * t;
        if (c < D) dk[(bk * a.sk + j) * D + c] = ak[t] * scale;
        if (c < DV) dv[(bk * a.sk + j) * DV + c] = av[t];
    }
}

// The scores' gradient dS[b, h, i, j] = p (dp - delta_i): one thread per score.
template <typename T>
__device__ __forceinline__ void mt_attention_bwd_scores(mt_attn_dims a, const T* __restrict__ q,
                                                        const T* __restrict__ k,
                                                        const T* __restrict__ v,
                                                        mt_attn_mask mk, int causal, T scale,
                                                        const T* __restrict__ go,
                                                        const T* __restrict__ lse,
                                                        const T* __restrict__ delta,
                                                        T* __restrict__ ds) {
    const long D = a.d, DV = a.dv;
    MT_GRID_STRIDE(e, a.batch * a.hq * a.sq * a.sk) {
        const long j = e % a.sk, i = (e / a.sk) % a.sq, bh = e / (a.sk * a.sq);
        const long b = bh / a.hq, h = bh % a.hq, kvh = h / (a.hq / a.hkv);
        T out = T(0);
        if (!(causal && j > i)) {
            const T* qr = q + (bh * a.sq + i) * D;
            const T* kr = k + ((b * a.hkv + kvh) * a.sk + j) * D;
            T dot = T(0);
            for (long c = 0; c < D; ++c) dot += qr[c] * kr[c];
            const T p = mt_att_prob(mt_att_score(mk, bh, i, j, dot, scale), lse[bh * a.sq + i]);
            if (p != T(0)) {
                const T* gr = go + (bh * a.sq + i) * DV;
                const T* vr = v + ((b * a.hkv + kvh) * a.sk + j) * DV;
                T dp = T(0);
                for (long c = 0; c < DV; ++c) dp += gr[c] * vr[c];
                out = p * (dp - delta[bh * a.sq + i]);
            }
        }
        ds[e] = out;
    }
}

#define MT_ATTENTION_KERNELS(S, T)                                                              \
    extern "C" __global__ void mt_attention_##S(mt_attn_dims a, const T* q, const T* k,        \
                                                const T* v, MT_ATT_MASK_PARAMS(T), int causal,        \
                                                T scale, T* o, T* lse) {                        \
        MT_ATT_MASK mt_attention_fwd<T>(a, q, k, v, mk, causal, scale, o, lse);                             \
    }                                                                                           \
    extern "C" __global__ void mt_attention_lse_##S(mt_attn_dims a, const T* q, const T* k,    \
                                                    const T* v, MT_ATT_MASK_PARAMS(T), int causal,    \
                                                    T scale, T* lse) {                          \
        MT_ATT_MASK mt_attention_fwd<T>(a, q, k, v, mk, causal, scale, (T*)0, lse);                         \
    }                                                                                           \
    extern "C" __global__ void mt_attention_delta_##S(long rows, long dv, const T* o,          \
                                                      const T* go, T* delta) {                  \
        mt_attention_delta<T>(rows, dv, o, go, delta);                                          \
    }                                                                                           \
    extern "C" __global__ void mt_attention_bwd_q_##S(                                         \
        mt_attn_dims a, const T* q, const T* k, const T* v, MT_ATT_MASK_PARAMS(T), int causal,        \
        T scale, const T* go, const T* lse, const T* delta, T* dq) {                            \
        MT_ATT_MASK mt_attention_bwd_q<T>(a, q, k, v, mk, causal, scale, go, lse, delta, dq);               \
    }                                                                                           \
    extern "C" __global__ void mt_attention_bwd_kv_##S(                                        \
        mt_attn_dims a, const T* q, const T* k, const T* v, MT_ATT_MASK_PARAMS(T), int causal,        \
        T scale, const T* go, const T* lse, const T* delta, T* dk, T* dv, long dv_in_dk) {      \
        MT_ATT_MASK mt_attention_bwd_kv<T>(a, q, k, v, mk, causal, scale, go, lse, delta, dk, dv,   \
                                           dv_in_dk);          \
    }                                                                                           \
    extern "C" __global__ void mt_attention_bwd_scores_##S(                                    \
        mt_attn_dims a, const T* q, const T* k, const T* v, MT_ATT_MASK_PARAMS(T), int causal,        \
        T scale, const T* go, const T* lse, const T* delta, T* ds) {                            \
        MT_ATT_MASK mt_attention_bwd_scores<T>(a, q, k, v, mk, causal, scale, go, lse, delta, ds);          \
    }
MT_FOR_F32_F64(MT_ATTENTION_KERNELS)
