//! Every path (direct and implicit GEMM, on every ISA level this CPU has) against a naive
//! reference written from the definition, at odd sizes, strides, dilations, paddings and groups.

use super::*;
use crate::isa::Isa;

struct Lcg(u64);
impl Lcg {
    fn unit(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f64 / (1u64 << 24) as f64) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f64> {
        (0..n).map(|_| self.unit()).collect()
    }
}

/// `y[n, o, i, j] = Σ_{c in group, ti, tj} x[n, c, i·s + ti·d - p, j·s + tj·d - p] · w[o, c', ti, tj]`,
/// and, term by term, its gradients given `gy`: `gx += gy · w`, `gw += gy · x`.
fn naive(g: &Geom, x: &[f64], w: &[f64], gy: &[f64]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (cg, og) = (g.cg(), g.og());
    let mut y = vec![0.0; g.lens().2];
    let (mut gx, mut gw) = (vec![0.0; x.len()], vec![0.0; w.len()]);
    for n in 0..g.n {
        for o in 0..g.o {
            let gr = o / og;
            for i in 0..g.out[0] {
                for j in 0..g.out[1] {
                    let yi = ((n * g.o + o) * g.out[0] + i) * g.out[1] + j;
                    for c in 0..cg {
                        for ti in 0..g.k[0] {
                            for tj in 0..g.k[1] {
                                let ih = (i * g.stride[0] + ti * g.dil[0]) as i64 - g.pad[0] as i64;
                                let iw = (j * g.stride[1] + tj * g.dil[1]) as i64 - g.pad[1] as i64;
                                if ih < 0
                                    || iw < 0
                                    || ih >= g.inp[0] as i64
                                    || iw >= g.inp[1] as i64
                                {
                                    continue;
                                }
                                let xi = ((n * g.c + gr * cg + c) * g.inp[0] + ih as usize)
                                    * g.inp[1]
                                    + iw as usize;
                                let wi = ((o * cg + c) * g.k[0] + ti) * g.k[1] + tj;
                                y[yi] += x[xi] * w[wi];
                                gx[xi] += gy[yi] * w[wi];
                                gw[wi] += gy[yi] * x[xi];
                            }
                        }
                    }
                }
            }
        }
    }
    (y, gx, gw)
}

#[allow(clippy::too_many_arguments)]
fn geom(
    n: usize,
    c: usize,
    o: usize,
    groups: usize,
    inp: [usize; 2],
    k: [usize; 2],
    s: [usize; 2],
    p: [usize; 2],
    d: [usize; 2],
) -> Geom {
    let out = [0, 1].map(|i| (inp[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) / s[i] + 1);
    Geom {
        n,
        c,
        o,
        groups,
        inp,
        k,
        out,
        stride: s,
        pad: p,
        dil: d,
    }
}

fn cases() -> Vec<Geom> {
    vec![
        geom(2, 3, 5, 1, [7, 9], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 4, 6, 2, [8, 7], [3, 2], [2, 1], [1, 0], [1, 2]),
        geom(2, 6, 6, 6, [9, 5], [3, 3], [1, 2], [2, 1], [2, 1]),
        geom(1, 3, 6, 3, [6, 6], [2, 2], [2, 2], [0, 1], [1, 1]),
        geom(1, 5, 3, 1, [4, 6], [1, 1], [1, 1], [0, 0], [1, 1]),
        geom(2, 7, 4, 1, [1, 11], [1, 3], [1, 2], [0, 2], [1, 1]),
        geom(1, 9, 17, 1, [15, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
        // the register-blocked direct kernel: rows of 21 (a chunk of 16 and an overlapping
        // tail), 7 output channels (a partial block), 23 chunks (a partial group of chunks)
        geom(2, 1, 7, 1, [9, 21], [3, 3], [1, 1], [1, 1], [1, 1]),
        // row stride 2, dilation, uneven kernel, groups, 3 input channels per group
        geom(1, 6, 10, 2, [11, 37], [2, 3], [2, 1], [0, 2], [2, 2]),
        // padding wider than the kernel's reach (padded rows and columns never read)
        geom(1, 1, 5, 1, [3, 17], [1, 1], [1, 1], [2, 3], [1, 1]),
    ]
}

fn close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

#[test]
fn every_path_matches_the_naive_reference() {
    let mut r = Lcg(7);
    for g in cases() {
        let (lx, lw, ly) = g.lens();
        let (x, w, gy) = (r.vec(lx), r.vec(lw), r.vec(ly));
        let (want, gx_want, gw_want) = naive(&g, &x, &w, &gy);
        for isa in Isa::available() {
            for direct in [false, true] {
                let what = format!("{g:?} {isa:?} direct={direct}");
                crate::isa::with_isa(isa, || {
                    let mut y = vec![f64::NAN; ly];
                    forward_algo(&g, &x, &w, &mut y, direct);
                    close(&y, &want, 1e-12, &format!("fwd {what}"));
                    let mut gx = vec![f64::NAN; lx];
                    backward_data_algo(&g, &gy, &w, &mut gx, direct);
                    close(&gx, &gx_want, 1e-12, &format!("gx {what}"));
                    let mut gw = vec![f64::NAN; lw];
                    backward_weight_algo(&g, &x, &gy, &mut gw, direct);
                    close(&gw, &gw_want, 1e-12, &format!("gw {what}"));
                    // f32 through the same paths
                    let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
                    let mut y32 = vec![f32::NAN; ly];
                    forward_algo(&g, &f(&x), &f(&w), &mut y32, direct);
                    let y32: Vec<f64> = y32.iter().map(|&a| a as f64).collect();
                    close(&y32, &want, 1e-4, &format!("fwd f32 {what}"));
                });
            }
        }
    }
}

/// A panel boundary inside an output row (`PANEL` not a multiple of the width) and more than
/// one panel per image.
#[test]
fn panels_split_output_rows() {
    let mut r = Lcg(3);
    let g = geom(1, 4, 3, 1, [23, 19], [3, 3], [1, 1], [1, 1], [1, 1]);
    assert!(g.out_plane() > 2 * PANEL && !PANEL.is_multiple_of(g.out[1]));
    let (lx, lw, ly) = g.lens();
    let (x, w, gy) = (r.vec(lx), r.vec(lw), r.vec(ly));
    let mut y = vec![0.0; ly];
    forward_algo(&g, &x, &w, &mut y, false);
    close(&y, &naive(&g, &x, &w, &gy).0, 1e-12, "fwd");
    let mut gw = vec![0.0; lw];
    backward_weight_algo(&g, &x, &gy, &mut gw, false);
    let mut gw2 = vec![0.0; lw];
    backward_weight_algo(&g, &x, &gy, &mut gw2, true);
    close(&gw, &gw2, 1e-12, "gw gemm vs direct");
    let mut gx = vec![0.0; lx];
    backward_data_algo(&g, &gy, &w, &mut gx, false);
    let mut gx2 = vec![0.0; lx];
    backward_data_algo(&g, &gy, &w, &mut gx2, true);
    close(&gx, &gx2, 1e-12, "gx gemm vs direct");
}

/// The int8 forward pass against a scalar reference written from the definition: the input
/// quantized per tensor (`round_ties_even(x · 127 / max|x|)`), the weights per output channel,
/// the integer sums over the taps inside the input in `i64`, dequantized as
/// `acc · (s_x · s_w[o])`: **bitwise** on every int8 path this CPU has (VNNI, AVX2, `sdot`,
/// scalar), on the geometries above plus one with several panels per image, dynamic and static
/// (clamping) activation scales. And within the quantization error of the f32 convolution.
#[test]
fn int8_forward_matches_the_scalar_reference_bitwise() {
    use crate::qgemm::{quantize_one, QIsa};
    let mut r = Lcg(11);
    let mut gs = cases();
    gs.push(geom(1, 4, 19, 1, [23, 19], [3, 3], [1, 1], [1, 1], [1, 1]));
    gs.push(geom(2, 2, 3, 1, [1, 9], [1, 4], [1, 1], [0, 1], [1, 1]));
    for g in gs {
        let (lx, lw, ly) = g.lens();
        let x: Vec<f32> = r.vec(lx).iter().map(|&v| (v * 3.0) as f32).collect();
        let w: Vec<f32> = r.vec(lw).iter().map(|&v| v as f32).collect();
        let (cg, og, red) = (g.cg(), g.og(), g.cg() * g.taps());
        let qw = QConvWeight::quantize(g.o, g.groups, red, &w);
        assert!(qw.fits(&g));
        // the weight quantization from the definition
        let mut sw = vec![0f32; g.o];
        for o in 0..g.o {
            let m = w[o * red..(o + 1) * red]
                .iter()
                .fold(0f32, |m, v| m.max(v.abs()));
            let (inv, s) = crate::qgemm::inv_and_scale(m);
            sw[o] = s;
            for k in 0..red {
                assert_eq!(
                    qw.get(o, k),
                    quantize_one(w[o * red + k], inv),
                    "w[{o}, {k}]"
                );
            }
        }
        assert_eq!(qw.scales(), sw);
        let mx = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        // dynamic, then a static scale below the range (clamps)
        for act in [None, Some(crate::qgemm::inv_and_scale(mx * 0.5))] {
            let (inv, sa) = act.unwrap_or_else(|| crate::qgemm::inv_and_scale(mx));
            let xq: Vec<i64> = x.iter().map(|&v| i64::from(quantize_one(v, inv))).collect();
            let mut want = vec![0f32; ly];
            for n in 0..g.n {
                for o in 0..g.o {
                    let gr = o / og;
                    for i in 0..g.out[0] {
                        for j in 0..g.out[1] {
                            let mut acc = 0i64;
                            for c in 0..cg {
                                for ti in 0..g.k[0] {
                                    for tj in 0..g.k[1] {
                                        let ih = (i * g.stride[0] + ti * g.dil[0]) as i64
                                            - g.pad[0] as i64;
                                        let iw = (j * g.stride[1] + tj * g.dil[1]) as i64
                                            - g.pad[1] as i64;
                                        if ih < 0
                                            || iw < 0
                                            || ih >= g.inp[0] as i64
                                            || iw >= g.inp[1] as i64
                                        {
                                            continue;
                                        }
                                        let xi = ((n * g.c + gr * cg + c) * g.inp[0] + ih as usize)
                                            * g.inp[1]
                                            + iw as usize;
                                        let k = (c * g.k[0] + ti) * g.k[1] + tj;
                                        acc += xq[xi] * i64::from(qw.get(o, k));
                                    }
                                }
                            }
                            want[((n * g.o + o) * g.out[0] + i) * g.out[1] + j] =
                                acc as i32 as f32 * (sa * sw[o]);
                        }
                    }
                }
            }
            for isa in QIsa::ALL {
                let mut y = vec![f32::NAN; ly];
                let used = forward_q8(isa, &g, &x, &qw, act, &mut y);
                assert_eq!(used, sa);
                for (k, (a, b)) in y.iter().zip(&want).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{g:?} {isa:?} {act:?} y[{k}]: {a} vs {b}"
                    );
                }
            }
            if act.is_none() {
                // near the f32 result: |error| per term <= (s_x/2)|w| + (s_w/2)|x| + ...
                let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
                let (want32, _, _) = naive(&g, &f(&x), &f(&w), &vec![0.0; ly]);
                let mut y = vec![0f32; ly];
                forward_q8(QIsa::active(), &g, &x, &qw, None, &mut y);
                for (k, (a, b)) in y.iter().zip(&want32).enumerate() {
                    let o = (k / g.out_plane()) % g.o;
                    let bound = red as f64
                        * (sa as f64 * 0.5 * 1.0
                            + sw[o] as f64 * 0.5 * mx as f64
                            + 0.25 * sa as f64 * sw[o] as f64)
                        + 1e-5;
                    assert!((*a as f64 - b).abs() <= bound, "{g:?} y[{k}]: {a} vs {b}");
                }
            }
        }
    }
}

/// The cases above that exercise the register-blocked direct kernel do reach it.
#[test]
fn blocked_direct_cases_reach_the_blocked_kernel() {
    let c = cases();
    let n = c.len();
    for g in &c[n - 3..] {
        assert!(g.blocked_direct(), "{g:?}");
    }
    assert!(!c[0].blocked_direct());
}

#[test]
fn int8_patch_gather_matches_the_scalar_gather() {
    let mut gs = cases();
    gs.push(geom(1, 4, 19, 1, [23, 19], [3, 3], [1, 1], [1, 1], [1, 1]));
    gs.push(geom(2, 2, 3, 1, [1, 9], [1, 4], [1, 1], [0, 1], [1, 1]));
    // every fixed-size row copy (kw 1, 2, 3, 5, 7) and a general one (kw 4), padded and not
    for kw in 1..=7 {
        gs.push(geom(1, 3, 2, 1, [6, 13], [2, kw], [1, 1], [1, 1], [1, 1]));
        gs.push(geom(1, 2, 2, 1, [5, 11], [3, kw], [1, 2], [0, 0], [1, 1]));
    }
    for g in gs {
        let (cg, q, p) = (g.cg(), g.in_plane(), g.out_plane());
        let red = cg * g.taps();
        let kp = red.div_ceil(4) * 4;
        let xg: Vec<u8> = (0..cg * q).map(|i| (i * 37 % 251) as u8).collect();
        // a panel from the middle and the whole plane
        for (j0, nc) in [(0, p), (p / 3, p - p / 3)] {
            let mut a = vec![7u8; nc * kp];
            let mut b = vec![9u8; nc * kp];
            q8::im2col_t_u8(&g, &xg, j0, nc, &mut a, kp);
            q8::im2col_t_u8_scalar(&g, &xg, j0, nc, &mut b, kp);
            assert_eq!(a, b, "{g:?} j0 {j0}");
        }
    }
}

/// The padded-grid implicit GEMM (`igemm`, f32, stride 1) on every tile it has (AVX-512 8×32
/// and 8×48, AVX2 6×16), split over 1 and 3 threads, with and without the fused bias and ReLU,
/// against the naive reference: output channels that are not a multiple of the tile's rows,
/// rows narrower than a vector, dilation, uneven kernels and paddings, groups, a 1×1 kernel
/// with padding, batch 1 and 3.
#[test]
fn padded_grid_igemm_matches_the_naive_reference() {
    let mut r = Lcg(11);
    let cases = [
        geom(3, 5, 13, 1, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 8, 19, 1, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(2, 6, 10, 2, [11, 23], [2, 3], [1, 1], [0, 2], [2, 2]),
        geom(1, 4, 9, 1, [5, 40], [1, 5], [1, 1], [2, 2], [1, 1]),
        geom(1, 20, 8, 1, [6, 6], [1, 1], [1, 1], [1, 0], [1, 1]),
        geom(2, 16, 17, 1, [33, 3], [3, 3], [1, 1], [1, 1], [1, 1]),
    ];
    for g in cases {
        assert!(!g.direct(), "{g:?}");
        let (lx, lw, ly) = g.lens();
        let (x, w, gy) = (r.vec(lx), r.vec(lw), r.vec(ly));
        let bias = r.vec(g.o);
        let want = naive(&g, &x, &w, &gy).0;
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32, b32) = (f(&x), f(&w), f(&bias));
        let mut ran = 0;
        for isa in Isa::available() {
            crate::isa::with_isa(isa, || {
                if !igemm::applies(&g) {
                    return;
                }
                let tiles: &[usize] = if isa >= Isa::Avx512 { &[32, 48] } else { &[16] };
                for &nr in tiles {
                    for threads in [1, 3] {
                        for fused in [false, true] {
                            let what = format!("{g:?} {isa:?} nr {nr} threads {threads} {fused}");
                            let epi = igemm::Epi {
                                bias: fused.then_some(&b32[..]),
                                relu: fused,
                            };
                            let mut y = vec![f32::NAN; ly];
                            igemm::forward_with(
                                &g,
                                &x32,
                                &w32,
                                &mut y,
                                epi,
                                Some(nr),
                                Some(threads),
                            );
                            let want: Vec<f64> = want
                                .iter()
                                .enumerate()
                                .map(|(i, &v)| {
                                    let o = (i / g.out_plane()) % g.o;
                                    if fused {
                                        (v + bias[o]).max(0.0)
                                    } else {
                                        v
                                    }
                                })
                                .collect();
                            let y: Vec<f64> = y.iter().map(|&a| a as f64).collect();
                            close(&y, &want, 1e-4, &what);
                            ran += 1;
                        }
                    }
                }
            });
        }
        if cfg!(target_arch = "x86_64") && Isa::Avx2.supported() {
            assert!(ran > 0, "{g:?}: igemm never ran");
        }
        // the public fused entry (igemm where it applies, else forward + one pass), f32 and f64
        let mut y = vec![f32::NAN; ly];
        forward_fused(&g, &x32, &w32, Some(&b32), true, &mut y);
        let mut y64 = vec![f64::NAN; ly];
        forward_fused(&g, &x, &w, Some(&bias), true, &mut y64);
        for (i, &v) in want.iter().enumerate() {
            let e = (v + bias[(i / g.out_plane()) % g.o]).max(0.0);
            assert!(
                (y[i] as f64 - e).abs() <= 1e-4 * (1.0 + e.abs()),
                "fused f32 {g:?}[{i}]"
            );
            assert!(
                (y64[i] - e).abs() <= 1e-12 * (1.0 + e.abs()),
                "fused f64 {g:?}[{i}]"
            );
        }
    }
}

/// The int8 transposed convolution against a scalar reference written from the definition:
/// `x` quantized per tensor, the weight per output channel of the transposed convolution
/// (`max |w[·, c, ·]|` over its group's rows and taps), the integer sums `Σ_o x_q[o, j] ·
/// w_q[o, r]` in `i64`, dequantized as `acc · (s_x · s_w[c])` and added into `y` at the
/// position tap `r` of `j` reads, in the kernel's documented order (panel, `r`, `j`):
/// **bitwise** on every int8 path this CPU has, dynamic and static (clamping) scales, one
/// geometry with several panels; the weights saved as int8 + scales and packed again give the
/// same result. And within the quantization error of the f32 transposed convolution.
#[test]
fn int8_transpose_matches_the_scalar_reference_bitwise() {
    use crate::qgemm::{quantize_one, QIsa};
    let mut r = Lcg(17);
    let mut gs = cases();
    gs.push(geom(1, 3, 5, 1, [23, 19], [3, 3], [1, 1], [1, 1], [1, 1]));
    for g in gs {
        let (ly, lw, lx) = g.lens(); // x: the forward conv's output gradient shape
        let x: Vec<f32> = r.vec(lx).iter().map(|&v| (v * 3.0) as f32).collect();
        let w: Vec<f32> = r.vec(lw).iter().map(|&v| v as f32).collect();
        let (cg, og, taps) = (g.cg(), g.og(), g.taps());
        let red = cg * taps;
        let qw = QConvTransposeWeight::quantize(g.o, g.groups, cg, taps, &w);
        assert!(qw.fits(&g) && qw.o() == g.o && qw.red() == red);
        // the weight quantization from the definition
        let mut sw = vec![0f32; g.c];
        for (c, swc) in sw.iter_mut().enumerate() {
            let (gr, cl) = (c / cg, c % cg);
            let rows = gr * og..(gr + 1) * og;
            let m = rows
                .clone()
                .flat_map(|o| w[o * red + cl * taps..][..taps].iter())
                .fold(0f32, |m, v| m.max(v.abs()));
            let (inv, s) = crate::qgemm::inv_and_scale(m);
            *swc = s;
            for o in rows {
                for t in 0..taps {
                    let k = cl * taps + t;
                    assert_eq!(
                        qw.get(o, k),
                        quantize_one(w[o * red + k], inv),
                        "w[{o}, {k}]"
                    );
                }
            }
        }
        assert_eq!(qw.scales(), sw);
        let q: Vec<i8> = (0..g.o * red).map(|i| qw.get(i / red, i % red)).collect();
        let reloaded = QConvTransposeWeight::from_i8(g.o, g.groups, cg, taps, &q, &sw).unwrap();
        assert_eq!(reloaded, qw);
        let mx = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        let p = g.out_plane();
        for act in [None, Some(crate::qgemm::inv_and_scale(mx * 0.5))] {
            let (inv, sa) = act.unwrap_or_else(|| crate::qgemm::inv_and_scale(mx));
            let xq: Vec<i64> = x.iter().map(|&v| i64::from(quantize_one(v, inv))).collect();
            let mut want = vec![0f32; ly];
            for n in 0..g.n {
                for gr in 0..g.groups {
                    for j0 in (0..p).step_by(PANEL) {
                        for rr in 0..red {
                            let (cl, t) = (rr / taps, rr % taps);
                            let (ti, tj) = (t / g.k[1], t % g.k[1]);
                            let c = gr * cg + cl;
                            for j in j0..(j0 + PANEL).min(p) {
                                let (oh, ow) = (j / g.out[1], j % g.out[1]);
                                let ih =
                                    (oh * g.stride[0] + ti * g.dil[0]) as i64 - g.pad[0] as i64;
                                let iw =
                                    (ow * g.stride[1] + tj * g.dil[1]) as i64 - g.pad[1] as i64;
                                if ih < 0
                                    || iw < 0
                                    || ih >= g.inp[0] as i64
                                    || iw >= g.inp[1] as i64
                                {
                                    continue;
                                }
                                let mut acc = 0i64;
                                for ol in 0..og {
                                    let o = gr * og + ol;
                                    acc += xq[(n * g.o + o) * p + j] * i64::from(qw.get(o, rr));
                                }
                                let yi = ((n * g.c + c) * g.inp[0] + ih as usize) * g.inp[1]
                                    + iw as usize;
                                want[yi] += acc as i32 as f32 * (sa * sw[c]);
                            }
                        }
                    }
                }
            }
            for isa in QIsa::ALL {
                for wt in [&qw, &reloaded] {
                    let mut y = vec![f32::NAN; ly];
                    let used = transpose_q8(isa, &g, &x, wt, act, &mut y);
                    assert_eq!(used, sa);
                    for (k, (a, b)) in y.iter().zip(&want).enumerate() {
                        assert_eq!(
                            a.to_bits(),
                            b.to_bits(),
                            "{g:?} {isa:?} {act:?} y[{k}]: {a} vs {b}"
                        );
                    }
                }
            }
            if act.is_none() {
                // near the f32 transposed convolution (the forward conv's input gradient)
                let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
                let (_, want32, _) = naive(&g, &vec![0.0; ly], &f(&w), &f(&x));
                let mut y = vec![0f32; ly];
                transpose_q8(QIsa::active(), &g, &x, &qw, None, &mut y);
                for (k, (a, b)) in y.iter().zip(&want32).enumerate() {
                    let c = (k / g.in_plane()) % g.c;
                    let bound = (og * taps) as f64
                        * (sa as f64 * 0.5 * 1.0
                            + sw[c] as f64 * 0.5 * mx as f64
                            + 0.25 * sa as f64 * sw[c] as f64)
                        + 1e-5;
                    assert!((*a as f64 - b).abs() <= bound, "{g:?} y[{k}]: {a} vs {b}");
                }
            }
        }
    }
}

/// Winograd's F(2×2, 3×3) (`winograd`, f32) on every ISA (the GEMM's and the transforms'
/// multiversioned copies), over 1 and 3 threads, with and without the fused bias and ReLU,
/// against the naive reference: odd output heights and widths (partial 2×2 tiles), paddings 0,
/// 1 and 2, channels that are not multiples of the GEMM's tiles, a 2×2 output, rows wider than
/// 64 columns, and more tile rows than one chunk holds (chunks across images).
#[test]
fn winograd_matches_the_naive_reference() {
    let mut r = Lcg(13);
    let cases = [
        geom(3, 16, 17, 1, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(2, 19, 16, 1, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 16, 21, 1, [6, 5], [3, 3], [1, 1], [0, 0], [1, 1]),
        geom(1, 17, 16, 1, [4, 4], [3, 3], [1, 1], [0, 0], [1, 1]),
        geom(2, 16, 18, 1, [5, 70], [3, 3], [1, 1], [2, 2], [1, 1]),
        geom(5, 16, 16, 1, [23, 9], [3, 3], [1, 1], [1, 0], [1, 1]),
        // the anchor CNN's conv2 at batch 1 (7×7 tiles, 64 = 4 row blocks of the AVX-512 GEMM)
        geom(1, 32, 64, 1, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
        // 17 tiles per row (3 segments of the AVX-512 transforms, the last with one tile),
        // 33 output channels (an overlapping last row block), an odd 17-row output
        geom(1, 20, 33, 1, [17, 33], [3, 3], [1, 1], [1, 1], [1, 1]),
        // exactly 8 tiles per row, no padding: the input windows end on the row's last column
        geom(3, 16, 16, 1, [18, 18], [3, 3], [1, 1], [0, 0], [1, 1]),
    ];
    let mut worst = 0.0f64;
    for g in cases {
        assert!(winograd::applies(&g), "{g:?}");
        let (lx, lw, ly) = g.lens();
        let (x, w, gy) = (r.vec(lx), r.vec(lw), r.vec(ly));
        let bias = r.vec(g.o);
        let want = naive(&g, &x, &w, &gy).0;
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32, b32) = (f(&x), f(&w), f(&bias));
        for isa in Isa::available() {
            crate::isa::with_isa(isa, || {
                for threads in [1, 3] {
                    for fused in [false, true] {
                        let what = format!("{g:?} {isa:?} threads {threads} {fused}");
                        let mut y = vec![f32::NAN; ly];
                        let b = fused.then_some(&b32[..]);
                        assert!(forward_winograd(
                            &g,
                            &x32,
                            &w32,
                            b,
                            fused,
                            &mut y,
                            Some(threads)
                        ));
                        let want: Vec<f64> = want
                            .iter()
                            .enumerate()
                            .map(|(i, &v)| {
                                let o = (i / g.out_plane()) % g.o;
                                if fused {
                                    (v + bias[o]).max(0.0)
                                } else {
                                    v
                                }
                            })
                            .collect();
                        let y: Vec<f64> = y.iter().map(|&a| a as f64).collect();
                        for (a, b) in y.iter().zip(&want) {
                            worst = worst.max((a - b).abs() / (1.0 + b.abs()));
                        }
                        close(&y, &want, 1e-5, &what);
                    }
                }
            });
        }
    }
    // The measured error (inputs and weights in [-1, 1), up to 20 channels, outputs up to
    // about 10): at most 3.9e-6 relative (`--nocapture` prints it; the direct f32 sum is about
    // 1e-6), the transforms' extra roundings; the bound above is 1e-5.
    println!("winograd: largest relative difference from the f64 reference {worst:.2e}");
}

/// [`forward`] and [`forward_fused`] choose the Winograd form exactly where
/// `winograd::chosen` says (AVX-512, f32, 3×3 stride 1, at least 16 channels) and then give
/// bit for bit [`forward_winograd4`]'s results where `winograd::chosen4` says (the anchor
/// CNN's conv2), else [`forward_winograd`]'s; elsewhere (another ISA, 15 input channels, a
/// stride of 2) they give the implicit GEMM's.
#[test]
fn forward_chooses_winograd_on_avx512() {
    if winograd::allowed() != winograd::Allowed::F4 {
        println!("SKIPPED forward_chooses_winograd_on_avx512: MITHRIL_CONV_WINOGRAD restricts the choice");
        return;
    }
    let mut r = Lcg(19);
    let cases = [
        geom(2, 32, 64, 1, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 15, 16, 1, [9, 9], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 16, 16, 1, [9, 9], [3, 3], [2, 2], [1, 1], [1, 1]),
        // F(2×2) rather than F(4×4): 4 tiles of 4×4 fill a quarter of F(4×4)'s vector
        geom(1, 32, 32, 1, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
    ];
    let mut seen = false;
    for g in cases {
        let (lx, lw, ly) = g.lens();
        let f = |v: Vec<f64>| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x, w, b) = (f(r.vec(lx)), f(r.vec(lw)), f(r.vec(g.o)));
        for isa in Isa::available() {
            crate::isa::with_isa(isa, || {
                let what = format!("{g:?} {isa:?}");
                let wino = winograd::chosen(&g);
                assert_eq!(
                    wino,
                    isa == Isa::Avx512 && g.c >= 16 && g.stride == [1, 1],
                    "{what}"
                );
                seen |= wino;
                for (bias, relu) in [(false, false), (true, true)] {
                    let bias = bias.then_some(&b[..]);
                    let mut y = vec![f32::NAN; ly];
                    forward_fused(&g, &x, &w, bias, relu, &mut y);
                    let mut want = vec![f32::NAN; ly];
                    // F(4×4) on the anchor CNN's conv2, F(2×2) on 7×7 at batch 1
                    assert_eq!(winograd::chosen4(&g), wino && g.out[0] == 14, "{what}");
                    if winograd::chosen4(&g) {
                        assert!(forward_winograd4(
                            &g, &x, &w, bias, relu, false, &mut want, None
                        ));
                    } else if wino {
                        assert!(forward_winograd(&g, &x, &w, bias, relu, &mut want, None));
                    } else {
                        forward_algo(&g, &x, &w, &mut want, false);
                        apply_epilogue(&g, bias, relu, &mut want);
                    }
                    assert_eq!(y, want, "{what} {relu}");
                    if !relu {
                        forward(&g, &x, &w, &mut y);
                        assert_eq!(y, want, "{what}");
                    }
                }
            });
        }
    }
    if !seen {
        println!("SKIPPED: forward_chooses_winograd_on_avx512 (no AVX-512 on this CPU)");
    }
}

/// `forward_fused` is bit for bit `forward` then `apply_epilogue` on every path and ISA (the
/// direct kernels, the register-blocked one, the implicit GEMMs with the epilogue in their
/// tile store), f32 and f64, with and without a bias and the ReLU.
#[test]
fn fused_forward_is_forward_then_the_epilogue() {
    let mut r = Lcg(17);
    let mut cs = cases();
    // the register-blocked direct kernel with a partial block of output channels
    cs.push(geom(2, 1, 7, 1, [9, 21], [3, 3], [1, 1], [1, 1], [1, 1]));
    cs.push(geom(3, 1, 32, 1, [28, 28], [3, 3], [1, 1], [1, 1], [1, 1]));
    assert!(cs.iter().any(|g| g.blocked_direct()));
    // the Winograd form on AVX-512
    cs.push(geom(2, 16, 17, 1, [9, 11], [3, 3], [1, 1], [1, 1], [1, 1]));
    for g in cs {
        let (lx, lw, ly) = g.lens();
        let (x, w, b) = (r.vec(lx), r.vec(lw), r.vec(g.o));
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32, b32) = (f(&x), f(&w), f(&b));
        for isa in Isa::available() {
            crate::isa::with_isa(isa, || {
                for (bias, relu) in [(true, true), (true, false), (false, true)] {
                    let what = format!("{g:?} {isa:?} bias {bias} relu {relu}");
                    let mut want = vec![f32::NAN; ly];
                    forward(&g, &x32, &w32, &mut want);
                    apply_epilogue(&g, bias.then_some(&b32[..]), relu, &mut want);
                    let mut y = vec![f32::NAN; ly];
                    forward_fused(&g, &x32, &w32, bias.then_some(&b32[..]), relu, &mut y);
                    assert_eq!(y, want, "f32 {what}");
                    if relu {
                        assert!(y.contains(&0.0), "{what}");
                    }
                    let mut want = vec![f64::NAN; ly];
                    forward(&g, &x, &w, &mut want);
                    apply_epilogue(&g, bias.then_some(&b[..]), relu, &mut want);
                    let mut y = vec![f64::NAN; ly];
                    forward_fused(&g, &x, &w, bias.then_some(&b[..]), relu, &mut y);
                    assert_eq!(y, want, "f64 {what}");
                }
            });
        }
    }
}

/// The Winograd form's per-thread cache of transformed weights is never stale: weights
/// changed in place between calls, and more weight sets than the cache holds taken in turn,
/// each give the naive reference's result.
#[test]
fn winograd_weight_cache_is_never_stale() {
    let mut r = Lcg(23);
    let g = geom(1, 16, 18, 1, [6, 7], [3, 3], [1, 1], [1, 1], [1, 1]);
    let (lx, lw, ly) = g.lens();
    let x = r.vec(lx);
    let sets: Vec<Vec<f64>> = (0..6).map(|_| r.vec(lw)).collect();
    let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let x32 = f(&x);
    let mut w32 = f(&sets[0]);
    for round in 0..2 {
        for (i, w) in sets.iter().enumerate() {
            let mut w = w.clone();
            w32.copy_from_slice(&f(&w));
            if round == 1 && i == 2 {
                // the same buffer, one weight changed after a call with it
                let mut y = vec![f32::NAN; ly];
                assert!(forward_winograd(
                    &g,
                    &x32,
                    &w32,
                    None,
                    false,
                    &mut y,
                    Some(1)
                ));
                w[5] = 0.75;
                w32[5] = 0.75;
            }
            let mut y = vec![f32::NAN; ly];
            assert!(forward_winograd(
                &g,
                &x32,
                &w32,
                None,
                false,
                &mut y,
                Some(1)
            ));
            let want = naive(&g, &x, &w, &vec![0.0; ly]).0;
            let y: Vec<f64> = y.iter().map(|&a| a as f64).collect();
            close(&y, &want, 1e-5, &format!("round {round} set {i}"));
        }
    }
    // a layer too large to be cached (more than 2^14 kernels): computed every call
    let g = geom(1, 128, 129, 1, [2, 3], [3, 3], [1, 1], [1, 1], [1, 1]);
    let (lx, lw, ly) = g.lens();
    let x = r.vec(lx);
    for _ in 0..2 {
        let w = r.vec(lw);
        let mut y = vec![f32::NAN; ly];
        assert!(forward_winograd(
            &g,
            &f(&x),
            &f(&w),
            None,
            false,
            &mut y,
            Some(1)
        ));
        let want = naive(&g, &x, &w, &vec![0.0; ly]).0;
        let y: Vec<f64> = y.iter().map(|&a| a as f64).collect();
        close(&y, &want, 1e-5, "large layer");
    }
}

/// The 2×2 / stride-2 floor-mode max pool of `[n, o, h, w]` planes with PyTorch's rule (a larger
/// value or a NaN replaces the running maximum), written from the definition.
fn naive_pool<T: Copy + PartialOrd>(g: &Geom, y: &[T]) -> Vec<T> {
    let [ph, pw] = g.pooled();
    let (h, w) = (g.out[0], g.out[1]);
    let mut out = Vec::with_capacity(g.pooled_len());
    for plane in y[..g.lens().2].chunks_exact(h * w) {
        for i in 0..ph {
            for j in 0..pw {
                let mut m = plane[2 * i * w + 2 * j];
                for (di, dj) in [(0, 1), (1, 0), (1, 1)] {
                    let v = plane[(2 * i + di) * w + 2 * j + dj];
                    #[allow(clippy::eq_op)]
                    if v > m || v != v {
                        m = v;
                    }
                }
                out.push(m);
            }
        }
    }
    out
}

/// `forward_fused_pool` against the naive convolution and pool (f64, on every path and ISA),
/// and bit for bit `forward_fused` then the pool (the pooled direct kernel sums as the
/// unpooled direct kernels, blocked or not; the others pool the unpooled output): odd output sizes (a dropped
/// row and column), pooled rows narrower than, equal to and wider than a vector chunk,
/// dilation, padding, groups and depthwise, partial channel blocks, several scratch chunks.
#[test]
fn pooled_forward_is_fused_forward_then_the_pool() {
    let mut r = Lcg(23);
    let mut cs: Vec<Geom> = cases()
        .into_iter()
        .filter(|g| g.out[0] >= 2 && g.out[1] >= 2)
        .collect();
    // conv1 of the anchor CNN (fewer rows: the test also runs under qemu); pooled rows of
    // exactly 16 and of 20 (an overlapping tail)
    cs.push(geom(1, 1, 32, 1, [10, 28], [3, 3], [1, 1], [1, 1], [1, 1]));
    cs.push(geom(1, 1, 5, 1, [5, 32], [3, 3], [1, 1], [1, 1], [1, 1]));
    cs.push(geom(1, 2, 9, 1, [7, 41], [3, 3], [1, 1], [1, 1], [1, 1]));
    // dilation 2 with an odd kernel width, no padding; depthwise
    cs.push(geom(1, 3, 4, 1, [9, 12], [2, 3], [1, 1], [0, 0], [2, 2]));
    cs.push(geom(2, 4, 8, 4, [7, 10], [3, 3], [1, 1], [1, 1], [1, 1]));
    // the implicit GEMM over three scratch chunks
    cs.push(geom(3, 8, 16, 1, [9, 9], [3, 3], [1, 1], [1, 1], [1, 1]));
    assert!(cs.iter().any(|g| g.pooled_direct() && g.blocked_direct()));
    assert!(cs.iter().any(|g| g.pooled_direct() && !g.blocked_direct()));
    assert!(cs.iter().any(|g| !g.pooled_direct()));
    for g in cs {
        let (lx, lw, ly) = g.lens();
        let (x, w, b) = (r.vec(lx), r.vec(lw), r.vec(g.o));
        let (full, _, _) = naive(&g, &x, &w, &vec![0.0; ly]);
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32, b32) = (f(&x), f(&w), f(&b));
        for isa in Isa::available() {
            crate::isa::with_isa(isa, || {
                for (bias, relu) in [(true, true), (true, false), (false, true), (false, false)] {
                    let what = format!("{g:?} {isa:?} bias {bias} relu {relu}");
                    let mut want = full.clone();
                    for (i, v) in want.iter_mut().enumerate() {
                        let s = *v
                            + if bias {
                                b[i / g.out_plane() % g.o]
                            } else {
                                0.0
                            };
                        *v = if relu && s < 0.0 { 0.0 } else { s };
                    }
                    let want = naive_pool(&g, &want);
                    let mut y = vec![f64::NAN; g.pooled_len()];
                    forward_fused_pool(&g, &x, &w, bias.then_some(&b[..]), relu, &mut y);
                    close(&y, &want, 1e-12, &format!("f64 {what}"));
                    // the pooled direct kernel: the same values
                    let mut yd = vec![f64::NAN; g.pooled_len()];
                    if forward_pool_direct(&g, &x, &w, bias.then_some(&b[..]), relu, &mut yd) {
                        assert_eq!(yd, y, "f64 direct {what}");
                        let mut yd = vec![f32::NAN; g.pooled_len()];
                        forward_pool_direct(
                            &g,
                            &x32,
                            &w32,
                            bias.then_some(&b32[..]),
                            relu,
                            &mut yd,
                        );
                        let mut yp = vec![f32::NAN; g.pooled_len()];
                        forward_fused_pool(&g, &x32, &w32, bias.then_some(&b32[..]), relu, &mut yp);
                        assert_eq!(yd, yp, "f32 direct {what}");
                    }
                    let mut y32 = vec![f32::NAN; g.pooled_len()];
                    forward_fused_pool(&g, &x32, &w32, bias.then_some(&b32[..]), relu, &mut y32);
                    let y64: Vec<f64> = y32.iter().map(|&a| a as f64).collect();
                    close(&y64, &want, 1e-4, &format!("f32 {what}"));
                    let mut u = vec![f32::NAN; ly];
                    forward_fused(&g, &x32, &w32, bias.then_some(&b32[..]), relu, &mut u);
                    assert_eq!(y32, naive_pool(&g, &u), "f32 bitwise {what}");
                    let mut u = vec![f64::NAN; ly];
                    forward_fused(&g, &x, &w, bias.then_some(&b[..]), relu, &mut u);
                    assert_eq!(y, naive_pool(&g, &u), "f64 bitwise {what}");
                }
                // the pool alone over a computed output
                let mut u = vec![f32::NAN; ly];
                forward(&g, &x32, &w32, &mut u);
                let mut p = vec![f32::NAN; g.pooled_len()];
                max_pool2_output(&g, &u, &mut p);
                assert_eq!(p, naive_pool(&g, &u), "pool alone {g:?} {isa:?}");
            });
        }
    }
}

/// A NaN in the input reaches the pooled output as in the unfused ops (a window holding a NaN
/// sum pools to NaN, and the ReLU keeps it).
#[test]
fn pooled_forward_propagates_nan() {
    let g = geom(1, 1, 4, 1, [6, 20], [3, 3], [1, 1], [1, 1], [1, 1]);
    let (lx, lw, _) = g.lens();
    let mut x = vec![0.5f32; lx];
    x[2 * 20 + 7] = f32::NAN;
    let w = vec![-1.0f32; lw];
    for isa in Isa::available() {
        crate::isa::with_isa(isa, || {
            let mut y = vec![0.0f32; g.pooled_len()];
            forward_fused_pool(&g, &x, &w, None, true, &mut y);
            let mut yd = vec![0.0f32; g.pooled_len()];
            assert!(forward_pool_direct(&g, &x, &w, None, true, &mut yd));
            assert_eq!(
                yd.iter().map(|v| v.is_nan()).collect::<Vec<_>>(),
                y.iter().map(|v| v.is_nan()).collect::<Vec<_>>()
            );
            let mut u = vec![0.0f32; g.lens().2];
            forward_fused(&g, &x, &w, None, true, &mut u);
            let want = naive_pool(&g, &u);
            assert_eq!(
                y.iter().map(|v| v.is_nan()).collect::<Vec<_>>(),
                want.iter().map(|v| v.is_nan()).collect::<Vec<_>>(),
                "{isa:?}"
            );
            assert!(y.iter().any(|v| v.is_nan()) && y.contains(&0.0));
        });
    }
}

/// Winograd's F(4×4, 3×3) (`winograd4_x86.rs`, f32, AVX-512) against the naive reference, over
/// 1 and 3 threads, with and without the fused bias and ReLU, and with the 2×2 max pool in its
/// output transform bit for bit its unpooled output (with the epilogue) pooled: partial 4×4
/// tiles (odd heights and widths, widths 5 to 70: runs of tiles that straddle tile rows and
/// images inside a vector of 16 tiles, runs split at 7 tiles), paddings 0, 1 and 2, channel
/// counts that are not multiples of 16 (an overlapping last block of output channels), more
/// tile rows than one chunk holds, the anchor CNN's conv2 at batch 1 and 2.
#[test]
fn winograd4_matches_the_naive_reference() {
    if !Isa::available().any(|i| i == Isa::Avx512) {
        println!("SKIPPED: winograd4_matches_the_naive_reference (no AVX-512 on this CPU)");
        return;
    }
    let mut r = Lcg(29);
    let cases = [
        geom(1, 32, 64, 1, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(2, 32, 64, 1, [14, 14], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(3, 16, 17, 1, [9, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(2, 19, 16, 1, [13, 10], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 16, 21, 1, [6, 5], [3, 3], [1, 1], [0, 0], [1, 1]),
        geom(1, 17, 16, 1, [4, 4], [3, 3], [1, 1], [0, 0], [1, 1]),
        geom(2, 16, 18, 1, [5, 70], [3, 3], [1, 1], [2, 2], [1, 1]),
        geom(5, 16, 16, 1, [23, 9], [3, 3], [1, 1], [1, 0], [1, 1]),
        geom(1, 20, 33, 1, [17, 33], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(3, 16, 16, 1, [18, 18], [3, 3], [1, 1], [0, 0], [1, 1]),
        // 128 channels (the error grows with the reduction), 7×7 (one partial tile per row)
        geom(1, 128, 128, 1, [7, 7], [3, 3], [1, 1], [1, 1], [1, 1]),
    ];
    let (mut worst, mut worst_conv2) = (0.0f64, 0.0f64);
    for g in cases {
        assert!(winograd::applies(&g), "{g:?}");
        let (lx, lw, ly) = g.lens();
        let (x, w, gy) = (r.vec(lx), r.vec(lw), r.vec(ly));
        let bias = r.vec(g.o);
        let exact = naive(&g, &x, &w, &gy).0;
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (x32, w32, b32) = (f(&x), f(&w), f(&bias));
        for threads in [1, 3] {
            for (bias_on, relu) in [(false, false), (true, true), (true, false), (false, true)] {
                let what = format!("{g:?} threads {threads} bias {bias_on} relu {relu}");
                let b = bias_on.then_some(&b32[..]);
                let mut y = vec![f32::NAN; ly];
                assert!(forward_winograd4(
                    &g,
                    &x32,
                    &w32,
                    b,
                    relu,
                    false,
                    &mut y,
                    Some(threads)
                ));
                let want: Vec<f64> = exact
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        let s = v + if bias_on {
                            bias[(i / g.out_plane()) % g.o]
                        } else {
                            0.0
                        };
                        if relu && s < 0.0 {
                            0.0
                        } else {
                            s
                        }
                    })
                    .collect();
                let y64: Vec<f64> = y.iter().map(|&a| a as f64).collect();
                for (a, b) in y64.iter().zip(&want) {
                    let d = (a - b).abs() / (1.0 + b.abs());
                    worst = worst.max(d);
                    if g.c == 32 {
                        worst_conv2 = worst_conv2.max(d);
                    }
                }
                close(&y64, &want, 2e-4, &what);
                // the pool in the output transform: the unpooled output pooled, bit for bit
                let mut yp = vec![f32::NAN; g.pooled_len()];
                assert!(forward_winograd4(
                    &g,
                    &x32,
                    &w32,
                    b,
                    relu,
                    true,
                    &mut yp,
                    Some(threads)
                ));
                assert_eq!(yp, naive_pool(&g, &y), "pooled {what}");
                // and what `forward_fused` / `forward_fused_pool` choose: the same results
                if threads == 1 && winograd::chosen4(&g) {
                    let mut u = vec![f32::NAN; ly];
                    forward_fused(&g, &x32, &w32, b, relu, &mut u);
                    assert_eq!(u, y, "forward_fused {what}");
                    let mut u = vec![f32::NAN; g.pooled_len()];
                    forward_fused_pool(&g, &x32, &w32, b, relu, &mut u);
                    assert_eq!(u, yp, "forward_fused_pool {what}");
                }
            }
        }
    }
    // Measured (inputs and weights in [-1, 1), 16 to 128 channels): at most 7.9e-5 relative
    // (`|a - b| / (1 + |b|)`, on the anchor CNN's conv2 shape), against 3.9e-6 for F(2×2) and
    // about 1e-6 for the direct f32 sum (`--nocapture` prints it): the transforms'
    // coefficients (up to 5 in `B`, 8 in `A`) amplify the GEMM's rounding; the bound above
    // is 2e-4.
    println!(
        "winograd4: largest relative difference from the f64 reference {worst:.2e} (conv2 shape {worst_conv2:.2e})"
    );
}

/// The two Winograd forms share the per-thread cache of transformed weights without mixing
/// their entries (F(2×2)'s 16 points, F(4×4)'s 36, same weights and shape), and F(4×4)'s are
/// never stale either: both forms in turn on one weight buffer, changed in place between
/// calls, each against the naive reference.
#[test]
fn winograd4_weight_cache_is_never_stale() {
    if !Isa::available().any(|i| i == Isa::Avx512) {
        println!("SKIPPED: winograd4_weight_cache_is_never_stale (no AVX-512 on this CPU)");
        return;
    }
    let mut r = Lcg(31);
    let g = geom(1, 16, 18, 1, [6, 7], [3, 3], [1, 1], [1, 1], [1, 1]);
    let (lx, lw, ly) = g.lens();
    let x = r.vec(lx);
    let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let x32 = f(&x);
    let mut w = r.vec(lw);
    let mut w32 = f(&w);
    for round in 0..6 {
        let want = naive(&g, &x, &w, &vec![0.0; ly]).0;
        for four in [round % 2 == 0, round % 2 == 1] {
            let mut y = vec![f32::NAN; ly];
            if four {
                assert!(forward_winograd4(
                    &g,
                    &x32,
                    &w32,
                    None,
                    false,
                    false,
                    &mut y,
                    Some(1)
                ));
            } else {
                assert!(forward_winograd(
                    &g,
                    &x32,
                    &w32,
                    None,
                    false,
                    &mut y,
                    Some(1)
                ));
            }
            let y: Vec<f64> = y.iter().map(|&a| a as f64).collect();
            close(&y, &want, 1e-4, &format!("round {round} four {four}"));
        }
        // one weight changed in place
        let k = (7 * round + 3) % lw;
        w[k] = -w[k] + 0.25;
        w32[k] = w[k] as f32;
    }
}

/// The pooled direct kernel's `f32` AVX-512 image loop (`pooled::x86::image_512`, in-register
/// pool, epilogue and masked stores) is bit for bit its generic block on AVX2 (the same fused
/// multiply-adds in the same order) and the naive reference within rounding: the anchor CNN's
/// conv1 (its 28-wide rows, 12 of them, two images: the test also runs under qemu), odd widths
/// (pooled rows of 8, 16, 19 and 21: partial stores, an exact chunk, overlapping tails), uneven
/// paddings, partial channel blocks, groups, a NaN input; the unpooled blocked kernel's
/// AVX-512 and AVX2 blocks (`block_fwd_512`, `block_fwd_256`: the same FMAs) likewise. A
/// machine without AVX-512 checks only the reference.
#[test]
fn pooled_direct_avx512_is_the_generic_block() {
    let mut r = Lcg(29);
    let cs = [
        geom(2, 1, 32, 1, [12, 28], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 1, 7, 1, [9, 17], [3, 3], [1, 1], [1, 1], [1, 1]),
        geom(1, 1, 6, 1, [6, 33], [3, 3], [1, 1], [0, 1], [1, 1]),
        geom(1, 3, 5, 1, [5, 35], [2, 2], [1, 1], [1, 2], [1, 1]),
        geom(2, 2, 12, 2, [7, 42], [3, 3], [1, 1], [1, 1], [1, 1]),
    ];
    for (i, g) in cs.iter().enumerate() {
        assert!(g.pooled_direct() && g.blocked_direct(), "{g:?}");
        let (lx, lw, ly) = g.lens();
        let (x, w, b) = (r.vec(lx), r.vec(lw), r.vec(g.o));
        let f = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
        let (mut x32, w32, b32) = (f(&x), f(&w), f(&b));
        if i == 1 {
            x32[2 * 17 + 3] = f32::NAN;
        }
        let (full, _, _) = naive(g, &x, &w, &vec![0.0; ly]);
        for (bias, relu) in [(true, true), (true, false), (false, true), (false, false)] {
            let what = format!("{g:?} bias {bias} relu {relu}");
            let run = |isa| {
                crate::isa::with_isa(isa, || {
                    let mut y = vec![f32::NAN; g.pooled_len()];
                    assert!(forward_pool_direct(
                        g,
                        &x32,
                        &w32,
                        bias.then_some(&b32[..]),
                        relu,
                        &mut y
                    ));
                    y
                })
            };
            let isas: Vec<Isa> = Isa::available().collect();
            if isas.contains(&Isa::Avx512) && isas.contains(&Isa::Avx2) {
                let (a, c) = (run(Isa::Avx512), run(Isa::Avx2));
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
                assert_eq!(
                    bits(&a),
                    bits(&c),
                    "AVX-512 against the generic block: {what}"
                );
                // the unpooled blocked kernel's AVX-512 block (`block_fwd_512`) likewise
                let full = |isa| {
                    crate::isa::with_isa(isa, || {
                        let mut u = vec![f32::NAN; ly];
                        forward_fused(g, &x32, &w32, bias.then_some(&b32[..]), relu, &mut u);
                        u
                    })
                };
                let (a, c) = (full(Isa::Avx512), full(Isa::Avx2));
                assert_eq!(bits(&a), bits(&c), "unpooled AVX-512 block: {what}");
            }
            if i != 1 {
                let mut want = full.clone();
                for (k, v) in want.iter_mut().enumerate() {
                    let s = *v
                        + if bias {
                            b[k / g.out_plane() % g.o]
                        } else {
                            0.0
                        };
                    *v = if relu && s < 0.0 { 0.0 } else { s };
                }
                let want = naive_pool(g, &want);
                let y = run(Isa::available().last().unwrap());
                let y: Vec<f64> = y.iter().map(|&a| a as f64).collect();
                close(&y, &want, 1e-4, &what);
            }
        }
    }
}

/// The pool of [`max_pool2_output`] (the scratch path's `pool_planes`, in AVX-512 intrinsics
/// for `f32`) is bit for bit the naive pool on every ISA: planes narrower than, equal to and
/// wider than a 16-window chunk, odd sizes (a dropped row and column), NaNs and signed zeros.
#[test]
fn pool_planes_match_the_naive_pool_bitwise() {
    let mut r = Lcg(31);
    for (h, w) in [(5, 5), (4, 14), (7, 32), (3, 33), (6, 67)] {
        let g = geom(2, 3, 3, 1, [h, w], [1, 1], [1, 1], [0, 0], [1, 1]);
        let mut u: Vec<f32> = r.vec(g.lens().2).iter().map(|&a| a as f32).collect();
        for (k, v) in u.iter_mut().enumerate() {
            match k % 23 {
                0 => *v = f32::NAN,
                5 | 6 => *v = -0.0,
                7 => *v = 0.0,
                _ => {}
            }
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let want = bits(&naive_pool(&g, &u));
        for isa in Isa::available() {
            crate::isa::with_isa(isa, || {
                let mut p = vec![1.5f32; g.pooled_len()];
                max_pool2_output(&g, &u, &mut p);
                assert_eq!(bits(&p), want, "{g:?} {isa:?}");
            });
        }
    }
}

/// `MITHRIL_CONV_WINOGRAD`'s values: `off` / `0` / `none` / `false` turn both Winograd forms
/// off, `2x2` keeps F(2×2) only, anything else (or nothing) allows both.
#[test]
fn winograd_knob_parses() {
    use super::winograd::{parse_allowed, Allowed};
    for v in ["off", "0", "none", " OFF ", "false"] {
        assert_eq!(parse_allowed(Some(v)), Allowed::None, "{v}");
    }
    for v in ["2x2", "F2x2", "f2"] {
        assert_eq!(parse_allowed(Some(v)), Allowed::F2, "{v}");
    }
    for v in [None, Some(""), Some("4x4"), Some("on")] {
        assert_eq!(parse_allowed(v), Allowed::F4, "{v:?}");
    }
}
