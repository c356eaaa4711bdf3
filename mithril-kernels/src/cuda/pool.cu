// Pooling, padding and upsampling over the trailing spatial dims of NCHW tensors (PyTorch's
// semantics; the CPU twin is mithril_kernels::pool). f32 and f64. Every leading dim is a
// plane; a 1-D op is the 2-D one with height 1. Forward kernels: one thread per output
// element. Backward kernels: one thread per output-gradient element, adding into the input
// gradient (zero-filled by the caller) with atomicAdd (so sums may differ from the CPU's in
// the last bits, in an order that varies run to run).
//
// Window geometry (by value): planes h w oh ow kh kw sh sw ph pw dh dw.

struct mt_pool_win {
    long planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw;
};

// 1 / (the divisor of an average window along one dim), as the CPU's avg_factors.
__device__ __forceinline__ double mt_avg_factor(long o, long n, long k, long s, long p,
                                                bool count_pad) {
    const long start = o * s - p;
    long end = start + k;
    if (end > n + p) end = n + p;
    const long full = end - start;
    const long valid = (end < n ? end : n) - (start > 0 ? start : 0);
    const long c = count_pad ? full : valid;
    return c > 0 ? 1.0 / (double)c : 0.0;
}

// The first maximum of a window in scan order (a NaN counts as the maximum): its flat index
// in the plane, -1 when the window holds no input element.
template <typename T>
__device__ __forceinline__ long mt_window_argmax(const mt_pool_win& g, const T* xp, long oy,
                                                 long ox, T* best_v) {
    long best = -1;
    T m = mt_neg_inf<T>();
    for (long ky = 0; ky < g.kh; ++ky) {
        const long iy = oy * g.sh + ky * g.dh - g.ph;
        if (iy < 0 || iy >= g.h) continue;
        for (long kx = 0; kx < g.kw; ++kx) {
            const long ix = ox * g.sw + kx * g.dw - g.pw;
            if (ix < 0 || ix >= g.w) continue;
            const T v = xp[iy * g.w + ix];
            if (best < 0 || v > m || mt_isnan(v)) {
                best = iy * g.w + ix;
                m = v;
            }
        }
    }
    *best_v = m;
    return best;
}

template <typename T>
__device__ __forceinline__ void mt_max_pool(mt_pool_win g, const T* __restrict__ x,
                                            T* __restrict__ y) {
    const long po = g.oh * g.ow;
    MT_GRID_STRIDE(i, g.planes * po) {
        const long p = i / po, r = i % po;
        T m;
        mt_window_argmax(g, x + p * g.h * g.w, r / g.ow, r % g.ow, &m);
        y[i] = m;
    }
}

template <typename T>
__device__ __forceinline__ void mt_max_pool_backward(mt_pool_win g, const T* __restrict__ x,
                                                     const T* __restrict__ gy,
                                                     T* __restrict__ gx) {
    const long po = g.oh * g.ow, pi = g.h * g.w;
    MT_GRID_STRIDE(i, g.planes * po) {
        const long p = i / po, r = i % po;
        T m;
        const long b = mt_window_argmax(g, x + p * pi, r / g.ow, r % g.ow, &m);
        if (b >= 0) atomicAdd(gx + p * pi + b, gy[i]);
    }
}

template <typename T>
__device__ __forceinline__ void mt_avg_pool(mt_pool_win g, bool count_pad,
                                            const T* __restrict__ x, T* __restrict__ y) {
    const long po = g.oh * g.ow;
    MT_GRID_STRIDE(i, g.planes * po) {
        const long p = i / po, oy = (i % po) / g.ow, ox = i % g.ow;
        const T* xp = x + p * g.h * g.w;
        T s = T(0);
        for (long ky = 0; ky < g.kh; ++ky) {
            const long iy = oy * g.sh + ky - g.ph;
            if (iy < 0 || iy >= g.h) continue;
            for (long kx = 0; kx < g.kw; ++kx) {
                const long ix = ox * g.sw + kx - g.pw;
                if (ix < 0 || ix >= g.w) continue;
                s += xp[iy * g.w + ix];
            }
        }
        const T fh = (T)mt_avg_factor(oy, g.h, g.kh, g.sh, g.ph, count_pad);
        const T fw = (T)mt_avg_factor(ox, g.w, g.kw, g.sw, g.pw, count_pad);
        y[i] = s * fh * fw;
    }
}

template <typename T>
__device__ __forceinline__ void mt_avg_pool_backward(mt_pool_win g, bool count_pad,
                                                     const T* __restrict__ gy,
                                                     T* __restrict__ gx) {
    const long po = g.oh * g.ow, pi = g.h * g.w;
    MT_GRID_STRIDE(i, g.planes * po) {
        const long p = i / po, oy = (i % po) / g.ow, ox = i % g.ow;
        const T fh = (T)mt_avg_factor(oy, g.h, g.kh, g.sh, g.ph, count_pad);
        const T fw = (T)mt_avg_factor(ox, g.w, g.kw, g.sw, g.pw, count_pad);
        const T v = gy[i] * fh * fw;
        for (long ky = 0; ky < g.kh; ++ky) {
            const long iy = oy * g.sh + ky - g.ph;
            if (iy < 0 || iy >= g.h) continue;
            for (long kx = 0; kx < g.kw; ++kx) {
                const long ix = ox * g.sw + kx - g.pw;
                if (ix < 0 || ix >= g.w) continue;
                atomicAdd(gx + p * pi + iy * g.w + ix, v);
            }
        }
    }
}

// adaptive windows [floor(o·n/on), ceil((o+1)·n/on))
template <typename T>
__device__ __forceinline__ void mt_adaptive_avg_pool(long planes, long h, long w, long oh,
                                                     long ow, const T* __restrict__ x,
                                                     T* __restrict__ y) {
    const long po = oh * ow;
    MT_GRID_STRIDE(i, planes * po) {
        const long p = i / po, oy = (i % po) / ow, ox = i % ow;
        const long ys = oy * h / oh, ye = ((oy + 1) * h + oh - 1) / oh;
        const long xs = ox * w / ow, xe = ((ox + 1) * w + ow - 1) / ow;
        const T* xp = x + p * h * w;
        T s = T(0);
        for (long iy = ys; iy < ye; ++iy)
            for (long ix = xs; ix < xe; ++ix) s += xp[iy * w + ix];
        y[i] = s * (T)(1.0 / (double)((ye - ys) * (xe - xs)));
    }
}

template <typename T>
__device__ __forceinline__ void mt_adaptive_avg_pool_backward(long planes, long h, long w,
                                                              long oh, long ow,
                                                              const T* __restrict__ gy,
                                                              T* __restrict__ gx) {
    const long po = oh * ow;
    MT_GRID_STRIDE(i, planes * po) {
        const long p = i / po, oy = (i % po) / ow, ox = i % ow;
        const long ys = oy * h / oh, ye = ((oy + 1) * h + oh - 1) / oh;
        const long xs = ox * w / ow, xe = ((ox + 1) * w + ow - 1) / ow;
        const T v = gy[i] * (T)(1.0 / (double)((ye - ys) * (xe - xs)));
        for (long iy = ys; iy < ye; ++iy)
            for (long ix = xs; ix < xe; ++ix) atomicAdd(gx + p * h * w + iy * w + ix, v);
    }
}

// pad over the last m dims. `tab` (device, longs): ins[m], outs[m], offs[m], then the maps
// (maps[offs[j] + o]: the source index of output index o of padded dim j, -1 = the constant).
// Forward: x unpadded -> y padded. Backward: gy padded -> gx unpadded (atomicAdd).
__device__ __forceinline__ long mt_pad_src(long r, long m, const long long* tab) {
    long src = 0, stride = 1;
    for (long j = m - 1; j >= 0; --j) {
        const long on = (long)tab[m + j], in = (long)tab[j];
        const long o = r % on;
        r /= on;
        const long s = (long)tab[3 * m + (long)tab[2 * m + j] + o];
        if (s < 0) return -1;
        src += s * stride;
        stride *= in;
    }
    return src;
}

template <typename T>
__device__ __forceinline__ void mt_pad(long n_out, long in_plane, long out_plane, long m,
                                       const long long* __restrict__ tab, T value,
                                       const T* __restrict__ x, T* __restrict__ y) {
    MT_GRID_STRIDE(i, n_out) {
        const long src = mt_pad_src(i % out_plane, m, tab);
        y[i] = src < 0 ? value : x[(i / out_plane) * in_plane + src];
    }
}

template <typename T>
__device__ __forceinline__ void mt_pad_backward(long n_out, long in_plane, long out_plane,
                                                long m, const long long* __restrict__ tab,
                                                const T* __restrict__ gy, T* __restrict__ gx) {
    MT_GRID_STRIDE(i, n_out) {
        const long src = mt_pad_src(i % out_plane, m, tab);
        if (src >= 0) atomicAdd(gx + (i / out_plane) * in_plane + src, gy[i]);
    }
}

// upsample [h, w] planes to [oh, ow]: `idx` (longs) holds y0[oh] y1[oh] x0[ow] x1[ow], `wt`
// (T) holds (1 - ly, ly) per output row then (1 - lx, lx) per output column (computed in f64
// on the host, as the CPU's interp_map). Nearest reads (y0, x0).
template <typename T>
__device__ __forceinline__ void mt_upsample(long planes, long h, long w, long oh, long ow,
                                            bool linear, const long long* __restrict__ idx,
                                            const T* __restrict__ wt, const T* __restrict__ x,
                                            T* __restrict__ y) {
    const long po = oh * ow;
    MT_GRID_STRIDE(i, planes * po) {
        const long p = i / po, oy = (i % po) / ow, ox = i % ow;
        const T* xp = x + p * h * w;
        const long y0 = (long)idx[oy], y1 = (long)idx[oh + oy];
        const long x0 = (long)idx[2 * oh + ox], x1 = (long)idx[2 * oh + ow + ox];
        if (!linear) {
            y[i] = xp[y0 * w + x0];
            continue;
        }
        const T a = wt[2 * oy], b = wt[2 * oy + 1];
        const T c = wt[2 * oh + 2 * ox], d = wt[2 * oh + 2 * ox + 1];
        const T r0 = xp[y0 * w + x0] * a + xp[y1 * w + x0] * b;
        const T r1 = xp[y0 * w + x1] * a + xp[y1 * w + x1] * b;
        y[i] = r0 * c + r1 * d;
    }
}

template <typename T>
__device__ __forceinline__ void mt_upsample_backward(long planes, long h, long w, long oh,
                                                     long ow, bool linear,
                                                     const long long* __restrict__ idx,
                                                     const T* __restrict__ wt,
                                                     const T* __restrict__ gy,
                                                     T* __restrict__ gx) {
    const long po = oh * ow;
    MT_GRID_STRIDE(i, planes * po) {
        const long p = i / po, oy = (i % po) / ow, ox = i % ow;
        T* gp = gx + p * h * w;
        const long y0 = (long)idx[oy], y1 = (long)idx[oh + oy];
        const long x0 = (long)idx[2 * oh + ox], x1 = (long)idx[2 * oh + ow + ox];
        const T g = gy[i];
        if (!linear) {
            atomicAdd(gp + y0 * w + x0, g);
            continue;
        }
        const T a = wt[2 * oy], b = wt[2 * oy + 1];
        const T c = wt[2 * oh + 2 * ox], d = wt[2 * oh + 2 * ox + 1];
        atomicAdd(gp + y0 * w + x0, g * c * a);
        atomicAdd(gp + y1 * w + x0, g * c * b);
        atomicAdd(gp + y0 * w + x1, g * d * a);
        atomicAdd(gp + y1 * w + x1, g * d * b);
    }
}

#define MT_POOL_KERNELS(S, T)                                                                   \
    extern "C" __global__ void mt_max_pool_##S(mt_pool_win g, const T* x, T* y) {              \
        mt_max_pool<T>(g, x, y);                                                                \
    }                                                                                           \
    extern "C" __global__ void mt_max_pool_backward_##S(mt_pool_win g, const T* x,             \
                                                        const T* gy, T* gx) {                   \
        mt_max_pool_backward<T>(g, x, gy, gx);                                                  \
    }                                                                                           \
    extern "C" __global__ void mt_avg_pool_##S(mt_pool_win g, int count_pad, const T* x,       \
                                               T* y) {                                          \
        mt_avg_pool<T>(g, count_pad != 0, x, y);                                                \
    }                                                                                           \
    extern "C" __global__ void mt_avg_pool_backward_##S(mt_pool_win g, int count_pad,          \
                                                        const T* gy, T* gx) {                   \
        mt_avg_pool_backward<T>(g, count_pad != 0, gy, gx);                                     \
    }                                                                                           \
    extern "C" __global__ void mt_adaptive_avg_pool_##S(long planes, long h, long w, long oh,  \
                                                        long ow, const T* x, T* y) {            \
        mt_adaptive_avg_pool<T>(planes, h, w, oh, ow, x, y);                                    \
    }                                                                                           \
    extern "C" __global__ void mt_adaptive_avg_pool_backward_##S(                              \
        long planes, long h, long w, long oh, long ow, const T* gy, T* gx) {                    \
        mt_adaptive_avg_pool_backward<T>(planes, h, w, oh, ow, gy, gx);                         \
    }                                                                                           \
    extern "C" __global__ void mt_pad_##S(long n_out, long in_plane, long out_plane, long m,   \
                                          const long long* tab, T value, const T* x, T* y) {    \
        mt_pad<T>(n_out, in_plane, out_plane, m, tab, value, x, y);                             \
    }                                                                                           \
    extern "C" __global__ void mt_pad_backward_##S(long n_out, long in_plane, long out_plane,  \
                                                   long m, const long long* tab, const T* gy,   \
                                                   T* gx) {                                     \
        mt_pad_backward<T>(n_out, in_plane, out_plane, m, tab, gy, gx);                         \
    }                                                                                           \
    extern "C" __global__ void mt_upsample_##S(long planes, long h, long w, long oh, long ow,  \
                                               int linear, const long long* idx, const T* wt,   \
                                               const T* x, T* y) {                              \
        mt_upsample<T>(planes, h, w, oh, ow, linear != 0, idx, wt, x, y);                       \
    }                                                                                           \
    extern "C" __global__ void mt_upsample_backward_##S(long planes, long h, long w, long oh,  \
                                                        long ow, int linear,                    \
                                                        const long long* idx, const T* wt,      \
                                                        const T* gy, T* gx) {                   \
        mt_upsample_backward<T>(planes, h, w, oh, ow, linear != 0, idx, wt, gy, gx);            \
    }
MT_FOR_F32_F64(MT_POOL_KERNELS)
