// Convolution over 1-D / 2-D NCHW planes (a 1-D conv is a 2-D one of height 1), PyTorch's
// semantics and weight layouts; the CPU twin is mithril_kernels::conv. f32 and f64 storage,
// accumulated in the storage type. Straightforward direct kernels, no shared-memory tiling:
//   forward:         one thread per output element (n, o, oy, ox), summing its group's
//                    input channels and taps;
//   backward_data:   one thread per input element (n, c, iy, ix) gathering the output
//                    positions whose window covers it (the transposed convolution; also
//                    `conv_transpose`, whose input is this op's output gradient);
//   backward_weight: one block per weight element (o, c, ky, kx), its threads striding over
//                    (n, oy, ox) and reducing in shared memory (no atomics: deterministic).
// The geometry is passed by value as 16 longs, in this order:
//   n c o groups  h w  oh ow  kh kw  sh sw  ph pw  dh dw

struct mt_conv_geom {
    long n, c, o, groups, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

template <typename T>
__device__ __forceinline__ void mt_conv_forward(mt_conv_geom g, const T* __restrict__ x,
                                                const T* __restrict__ wt, T* __restrict__ y) {
    const long cg = g.c / g.groups, og = g.o / g.groups;
    const long total = g.n * g.o * g.oh * g.ow;
    MT_GRID_STRIDE(i, total) {
        const long ox = i % g.ow;
        const long oy = (i / g.ow) % g.oh;
        const long o = (i / (g.ow * g.oh)) % g.o;
        const long n = i / (g.ow * g.oh * g.o);
        const long grp = o / og;
        T acc = T(0);
        for (long c = 0; c < cg; ++c) {
            const T* xp = x + ((n * g.c + grp * cg + c) * g.h) * g.w;
            const T* wp = wt + ((o * cg + c) * g.kh) * g.kw;
            for (long ky = 0; ky < g.kh; ++ky) {
                const long iy = oy * g.sh + ky * g.dh - g.ph;
                if (iy < 0 || iy >= g.h) continue;
                for (long kx = 0; kx < g.kw; ++kx) {
                    const long ix = ox * g.sw + kx * g.dw - g.pw;
                    if (ix < 0 || ix >= g.w) continue;
                    acc += xp[iy * g.w + ix] * wp[ky * g.kw + kx];
                }
            }
        }
        y[i] = acc;
    }
}

template <typename T>
__device__ __forceinline__ void mt_conv_backward_data(mt_conv_geom g, const T* __restrict__ gy,
                                                      const T* __restrict__ wt,
                                                      T* __restrict__ gx) {
    const long cg = g.c / g.groups, og = g.o / g.groups;
    const long total = g.n * g.c * g.h * g.w;
    MT_GRID_STRIDE(i, total) {
        const long ix = i % g.w;
        const long iy = (i / g.w) % g.h;
        const long c = (i / (g.w * g.h)) % g.c;
        const long n = i / (g.w * g.h * g.c);
        const long grp = c / cg, cl = c % cg;
        T acc = T(0);
        for (long ol = 0; ol < og; ++ol) {
            const long o = grp * og + ol;
            const T* gp = gy + ((n * g.o + o) * g.oh) * g.ow;
            const T* wp = wt + ((o * cg + cl) * g.kh) * g.kw;
            for (long ky = 0; ky < g.kh; ++ky) {
                const long ty = iy + g.ph - ky * g.dh;
                if (ty < 0 || ty % g.sh != 0) continue;
                const long oy = ty / g.sh;
                if (oy >= g.oh) continue;
                for (long kx = 0; kx < g.kw; ++kx) {
                    const long tx = ix + g.pw - kx * g.dw;
                    if (tx < 0 || tx % g.sw != 0) continue;
                    const long ox = tx / g.sw;
                    if (ox >= g.ow) continue;
                    acc += gp[oy * g.ow + ox] * wp[ky * g.kw + kx];
                }
            }
        }
        gx[i] = acc;
    }
}

// A block-wide sum in the storage type (blockDim.x a power of two, at most 1024).
template <typename T> __device__ __forceinline__ T mt_conv_block_sum(T v) {
    __shared__ T sh[1024];
    sh[threadIdx.x] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
        __syncthreads();
    }
    const T r = sh[0];
    __syncthreads();
    return r;
}

template <typename T>
__device__ __forceinline__ void mt_conv_backward_weight(mt_conv_geom g, const T* __restrict__ x,
                                                        const T* __restrict__ gy,
                                                        T* __restrict__ gw) {
    const long cg = g.c / g.groups, og = g.o / g.groups;
    const long nw = g.o * cg * g.kh * g.kw;
    const long per = g.n * g.oh * g.ow;
    for (long e = blockIdx.x; e < nw; e += gridDim.x) {
        const long kx = e % g.kw;
        const long ky = (e / g.kw) % g.kh;
        const long cl = (e / (g.kw * g.kh)) % cg;
        const long o = e / (g.kw * g.kh * cg);
        const long c = (o / og) * cg + cl;
        T acc = T(0);
        for (long j = threadIdx.x; j < per; j += blockDim.x) {
            const long ox = j % g.ow;
            const long oy = (j / g.ow) % g.oh;
            const long n = j / (g.ow * g.oh);
            const long iy = oy * g.sh + ky * g.dh - g.ph;
            const long ix = ox * g.sw + kx * g.dw - g.pw;
            if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
            acc += x[((n * g.c + c) * g.h + iy) * g.w + ix] *
                   gy[((n * g.o + o) * g.oh + oy) * g.ow + ox];
        }
        acc = mt_conv_block_sum(acc);
        if (threadIdx.x == 0) gw[e] = acc;
    }
}

#define MT_CONV_KERNELS(S, T)                                                                   \
    extern "C" __global__ void mt_conv_forward_##S(mt_conv_geom g, const T* x, const T* w,     \
                                                   T* y) {                                      \
        mt_conv_forward<T>(g, x, w, y);                                                         \
    }                                                                                           \
    extern "C" __global__ void mt_conv_backward_data_##S(mt_conv_geom g, const T* gy,          \
                                                         const T* w, T* gx) {                   \
        mt_conv_backward_data<T>(g, gy, w, gx);                                                 \
    }                                                                                           \
    extern "C" __global__ void mt_conv_backward_weight_##S(mt_conv_geom g, const T* x,         \
                                                           const T* gy, T* gw) {                \
        mt_conv_backward_weight<T>(g, x, gy, gw);                                               \
    }
MT_FOR_F32_F64(MT_CONV_KERNELS)
