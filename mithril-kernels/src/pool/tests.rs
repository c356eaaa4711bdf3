//! Every ISA path of the window kernels against a naive per-element reference, on odd sizes.

use super::*;
use crate::isa::with_isa;
use crate::isa::Isa;

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // few distinct values: ties exercise the first-maximum rule
            ((s % 17) as f32 - 8.0) * 0.25
        })
        .collect()
}

fn out_dim(n: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let span = (n + 2 * p) as isize - (d * (k - 1) + 1) as isize;
    let mut o = if ceil {
        (span + s as isize - 1).div_euclid(s as isize) + 1
    } else {
        span.div_euclid(s as isize) + 1
    };
    if ceil && ((o - 1) * s as isize) >= (n + p) as isize {
        o -= 1;
    }
    o as usize
}

/// Naive max / avg pooling of one plane and the first-max index of each window.
fn naive(x: &[f32], g: &Win, max: bool, count_pad: bool) -> (Vec<f32>, Vec<Option<usize>>) {
    let mut out = vec![0.0; g.oh * g.ow];
    let mut arg = vec![None; g.oh * g.ow];
    for oy in 0..g.oh {
        for ox in 0..g.ow {
            let (mut m, mut s, mut n) = (f32::NEG_INFINITY, 0.0f64, 0usize);
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                        continue;
                    }
                    let i = iy as usize * g.w + ix as usize;
                    if arg[oy * g.ow + ox].is_none() || x[i] > m {
                        m = x[i];
                        arg[oy * g.ow + ox] = Some(i);
                    }
                    s += x[i] as f64;
                    n += 1;
                }
            }
            let hs = (oy * g.sh) as isize - g.ph as isize;
            let ws = (ox * g.sw) as isize - g.pw as isize;
            let he = (hs + g.kh as isize).min((g.h + g.ph) as isize);
            let we = (ws + g.kw as isize).min((g.w + g.pw) as isize);
            let div = if count_pad {
                ((he - hs) * (we - ws)) as f64
            } else {
                n as f64
            };
            out[oy * g.ow + ox] = if max { m } else { (s / div) as f32 };
        }
    }
    (out, arg)
}

fn geometries() -> Vec<Win> {
    let mut v = Vec::new();
    for &(h, w) in &[(7, 9), (5, 17), (1, 13), (4, 4), (6, 41)] {
        for &(kh, kw, sh, sw, ph, pw, dh, dw, ceil) in &[
            (2, 2, 2, 2, 0, 0, 1, 1, false),
            (2, 2, 2, 2, 0, 0, 1, 1, true),
            (3, 3, 1, 1, 1, 1, 1, 1, false),
            (3, 2, 2, 3, 1, 1, 1, 1, true),
            (1, 3, 1, 2, 0, 1, 1, 2, false),
            (2, 3, 1, 1, 1, 1, 2, 1, true),
        ] {
            if h + 2 * ph < dh * (kh - 1) + 1 || w + 2 * pw < dw * (kw - 1) + 1 {
                continue;
            }
            v.push(Win {
                h,
                w,
                oh: out_dim(h, kh, sh, ph, dh, ceil),
                ow: out_dim(w, kw, sw, pw, dw, ceil),
                kh,
                kw,
                sh,
                sw,
                ph,
                pw,
                dh,
                dw,
            });
        }
    }
    v
}

#[test]
fn max_and_avg_pool_match_the_naive_reference_on_every_path() {
    for (gi, g) in geometries().into_iter().enumerate() {
        let planes = 3;
        let x = data(planes * g.h * g.w, gi as u64 + 1);
        let mut want_max = Vec::new();
        let mut want_avg = Vec::new();
        let mut want_avg_np = Vec::new();
        let mut want_gx = vec![0.0f32; x.len()];
        let gy = data(planes * g.oh * g.ow, 99 + gi as u64);
        for p in 0..planes {
            let xp = &x[p * g.h * g.w..(p + 1) * g.h * g.w];
            let (m, arg) = naive(xp, &g, true, true);
            want_max.extend(m);
            for (o, a) in arg.iter().enumerate() {
                if let Some(i) = a {
                    want_gx[p * g.h * g.w + i] += gy[p * g.oh * g.ow + o];
                }
            }
            if g.dh == 1 && g.dw == 1 {
                want_avg.extend(naive(xp, &g, false, true).0);
                want_avg_np.extend(naive(xp, &g, false, false).0);
            }
        }
        for isa in Isa::available() {
            with_isa(isa, || {
                let mut out = vec![0.0f32; planes * g.oh * g.ow];
                max_pool(&x, &g, &mut out).unwrap();
                assert_eq!(out, want_max, "max {isa:?} {g:?}");
                // (a stale buffer: the backward overwrites every element)
                let mut gx = vec![f32::NAN; x.len()];
                max_pool_backward(&x, &gy, &g, &mut gx).unwrap();
                assert_eq!(gx, want_gx, "max backward {isa:?} {g:?}");
                if g.dh == 1 && g.dw == 1 {
                    for (cp, want) in [(true, &want_avg), (false, &want_avg_np)] {
                        avg_pool(&x, &g, cp, &mut out).unwrap();
                        for (a, b) in out.iter().zip(want.iter()) {
                            assert!((a - b).abs() <= 1e-5, "avg {isa:?} {g:?} {cp}");
                        }
                    }
                }
            });
        }
    }
}

#[test]
fn avg_pool_backward_is_the_transpose_of_the_forward() {
    // <avg(x), g> == <x, avg_backward(g)> for every path
    for (gi, g) in geometries().into_iter().enumerate() {
        if g.dh != 1 || g.dw != 1 {
            continue;
        }
        let x: Vec<f64> = data(2 * g.h * g.w, gi as u64 + 5)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let gy: Vec<f64> = data(2 * g.oh * g.ow, gi as u64 + 7)
            .iter()
            .map(|&v| v as f64)
            .collect();
        for isa in Isa::available() {
            with_isa(isa, || {
                for cp in [true, false] {
                    let mut y = vec![0.0; gy.len()];
                    avg_pool(&x, &g, cp, &mut y).unwrap();
                    let mut gx = vec![0.0; x.len()];
                    avg_pool_backward(&gy, &g, cp, &mut gx).unwrap();
                    let l: f64 = y.iter().zip(&gy).map(|(a, b)| a * b).sum();
                    let r: f64 = x.iter().zip(&gx).map(|(a, b)| a * b).sum();
                    assert!((l - r).abs() < 1e-9, "{isa:?} {g:?} {cp}: {l} vs {r}");
                }
            });
        }
    }
}

#[test]
fn max_pool_propagates_nan() {
    let g = Win {
        h: 2,
        w: 4,
        oh: 1,
        ow: 2,
        kh: 2,
        kw: 2,
        sh: 2,
        sw: 2,
        ph: 0,
        pw: 0,
        dh: 1,
        dw: 1,
    };
    let x = [1.0, f32::NAN, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    for isa in Isa::available() {
        with_isa(isa, || {
            let mut out = [0.0f32; 2];
            max_pool(&x, &g, &mut out).unwrap();
            assert!(out[0].is_nan() && out[1] == 8.0, "{isa:?} {out:?}");
            // the gradient goes to the NaN (the 2x2 fast path and the general rule agree)
            let mut gx = [9.0f32; 8];
            max_pool_backward(&x, &[0.5, 0.25], &g, &mut gx).unwrap();
            assert_eq!(gx, [0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.25], "{isa:?}");
        });
    }
}

#[test]
fn pad_maps_and_adaptive_ranges_follow_pytorch() {
    let s = |v: Vec<Option<usize>>| {
        v.into_iter()
            .map(|o| o.map(|i| i as i64).unwrap_or(-1))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        s(pad_map(3, 2, 1, PadMode::Reflect).unwrap()),
        [2, 1, 0, 1, 2, 1]
    );
    assert_eq!(
        s(pad_map(3, 2, 2, PadMode::Replicate).unwrap()),
        [0, 0, 0, 1, 2, 2, 2]
    );
    assert_eq!(s(pad_map(2, 1, 0, PadMode::Constant).unwrap()), [-1, 0, 1]);
    assert!(pad_map(3, 3, 0, PadMode::Reflect).is_err());
    // 5 -> 3: [0, 2), [1, 4), [3, 5)
    let r: Vec<_> = (0..3).map(|o| adaptive_range(o, 5, 3)).collect();
    assert_eq!(r, [(0, 2), (1, 4), (3, 5)]);
    // a 2-D replicate pad of a [2, 3] plane by (1, 1, 1, 0)
    let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let maps = [
        pad_map(2, 1, 0, PadMode::Replicate).unwrap(),
        pad_map(3, 1, 1, PadMode::Replicate).unwrap(),
    ];
    let mut y = vec![0.0f32; 15];
    pad(&x, &[2, 3], &maps, 0.0, false, &mut y).unwrap();
    assert_eq!(
        y,
        [1., 1., 2., 3., 3., 1., 1., 2., 3., 3., 4., 4., 5., 6., 6.]
    );
    let mut gx = vec![0.0f32; 6];
    pad(&y, &[2, 3], &maps, 0.0, true, &mut gx).unwrap();
    assert_eq!(gx, [1. * 4., 2. * 2., 3. * 4., 4. * 2., 5., 6. * 2.]);
}

#[test]
fn bilinear_taps_follow_pytorch() {
    // 2 -> 4 without align_corners: sources -0.25 (clamped 0), 0.25, 0.75, 1.25
    let t = interp_map(2, 4, Some(0.5), true, false);
    let got: Vec<_> = t.iter().map(|t| (t.i0, t.i1, t.l)).collect();
    assert_eq!(got, [(0, 1, 0.0), (0, 1, 0.25), (0, 1, 0.75), (1, 1, 0.25)]);
    // with align_corners: 0, 1/3, 2/3, 1
    let t = interp_map(2, 4, None, true, true);
    assert!((t[1].l - 1.0 / 3.0).abs() < 1e-12 && t[3].i0 == 1);
    // nearest 3 -> 5 (size given): floor(o * 0.6)
    let t = interp_map(3, 5, None, false, false);
    assert_eq!(t.iter().map(|t| t.i0).collect::<Vec<_>>(), [0, 0, 1, 1, 2]);
}
