// dropout's mask kernel: Philox4x32-10 (the words of mithril_kernels::philox, so the masks are
// bit-identical to the CPU's): element i of op `op` under the call's `seed` is kept (x * scale)
// when word i % 4 of counter block (i / 4, op) is at least `thr`, else 0; `drop_all` zeroes
// every element (p = 1). The generator is the fused prelude's mt_philox (kernel_text.rs),
// repeated here under its own names; a unit test checks the two texts agree. The gradient is
// the same kernel over the output gradient. f32 and f64; a grid-stride loop over n.

struct mt_dr_u4 { unsigned int x, y, z, w; };
__device__ __forceinline__ mt_dr_u4 mt_dr_philox(unsigned int c0, unsigned int c1, unsigned int c2,
                                           unsigned int c3, unsigned int k0, unsigned int k1) {
    for (int r = 0; r < 10; ++r) {
        if (r > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
        unsigned int hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        unsigned int n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
        c0 = n0; c1 = lo1; c2 = n2; c3 = lo0;
    }
    mt_dr_u4 o = {c0, c1, c2, c3};
    return o;
}

template <typename T>
__device__ __forceinline__ void mt_dropout(long n, unsigned long long seed, unsigned int op,
                                           unsigned int thr, int drop_all, T scale,
                                           const T* __restrict__ x, T* __restrict__ y) {
    MT_GRID_STRIDE(i, n) {
        const unsigned long long b = (unsigned long long)i >> 2;
        const mt_dr_u4 w = mt_dr_philox((unsigned int)b, (unsigned int)(b >> 32), op, 0u,
                                        (unsigned int)seed, (unsigned int)(seed >> 32));
        const unsigned int k = (unsigned int)(i & 3);
        const unsigned int r = k == 0u ? w.x : k == 1u ? w.y : k == 2u ? w.z : w.w;
        y[i] = (!drop_all && r >= thr) ? x[i] * scale : T(0);
    }
}

#define MT_DROPOUT_KERNELS(S, T)                                                                \
    extern "C" __global__ void mt_dropout_##S(long n, unsigned long long seed,                 \
                                              unsigned int op, unsigned int thr, int drop_all,  \
                                              T scale, const T* x, T* y) {                      \
        mt_dropout<T>(n, seed, op, thr, drop_all, scale, x, y);                                 \
    }
MT_FOR_F32_F64(MT_DROPOUT_KERNELS)
