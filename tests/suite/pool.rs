//! Pooling, `pad` and `upsample` (the pool family): forward results against naive references
//! written here (PyTorch's rules spelled out per element), gradients against f64 central
//! differences (stride != kernel, padding, ceil_mode, count_include_pad, every pad mode,
//! nearest and bilinear), symbolic output dims checked at run time, the library models.

use crate::common::fd::{dot, gradcheck, pat};
use mithril::prelude::*;
use ndarray::{Array3, Array4, ArrayD, IxDyn};
use std::marker::PhantomData;

mithril! {
    model Pools {
        param x: f64[2, 3, 7, 8];
        param v: f64[2, 3, 9];
        output mx = max_pool2d(x, kernel_size = 3, stride = 2, padding = 1, ceil_mode = true);
        output mxd = max_pool2d(x, kernel_size = (2, 3), stride = (1, 2), dilation = (2, 1));
        output av = avg_pool2d(x, kernel_size = (3, 2), stride = (2, 3), padding = (1, 1), ceil_mode = true);
        output avn = avg_pool2d(x, 3, 2, 1, count_include_pad = false);
        output ad = adaptive_avg_pool2d(x, output_size = (3, 5));
        output gl = adaptive_avg_pool2d(x, 1);
        output pc = pad(x, pad = (1, 2, 0, 1), value = 0.5);
        output pr = pad(x, pad = (2, 1, 3, 1), mode = "reflect");
        output pe = pad(x, pad = (1, 0, 2, 2), mode = "replicate");
        output un = upsample(x, scale_factor = 2);
        output ub = upsample(x, size = (5, 11), mode = "bilinear");
        output ua = upsample(x, scale_factor = (1.5, 2), mode = "bilinear", align_corners = true);
        output m1 = max_pool1d(v, kernel_size = 4, stride = 3, padding = 2, ceil_mode = true);
        output a1 = avg_pool1d(v, kernel_size = 3, stride = 2, padding = 1);
        output d1 = adaptive_avg_pool1d(v, 4);
        output p1 = pad(v, pad = (3, 2), mode = "reflect");
        output u1 = upsample(v, size = 4, mode = "linear");
    }

    model SymPool {
        input x: f32[B, C, H, W];
        output y = max_pool2d(x, kernel_size = 2);
        output z = upsample(avg_pool2d(x, 3, stride = 1, padding = 1), scale_factor = 2);
    }

    model HalfPool {
        input x: f16[1, 1, 2, 4];
        output m = max_pool2d(x, kernel_size = 2);
        output a = avg_pool1d(x[0], kernel_size = 2, stride = 1, padding = 1, count_include_pad = false);
        output u = upsample(x, scale_factor = 2, mode = "bilinear");
    }

    model PoolNet {
        input x: f32[B, 2, H, W];
        let h = MaxPool2d(2)(x);
        let h = AvgPool2d(kernel_size = 3, stride = 1, padding = 1)(h);
        let h = Upsample(scale_factor = 2, mode = "nearest")(h);
        output y = AdaptiveAvgPool2d((1, 1))(h);
    }
}

/// PyTorch's output size of a window (the last window of ceil mode dropped when it would start
/// in the right padding).
fn out_len(n: usize, k: usize, s: usize, p: usize, d: usize, ceil: bool) -> usize {
    let span = (n + 2 * p - (d * (k - 1) + 1)) as f64 / s as f64;
    let mut o = if ceil { span.ceil() } else { span.floor() } as usize + 1;
    if ceil && (o - 1) * s >= n + p {
        o -= 1;
    }
    o
}

/// Naive max / avg pooling over the last two dims of a 4-D array.
#[allow(clippy::too_many_arguments)]
fn window2(
    x: &Array4<f64>,
    max: bool,
    k: (usize, usize),
    s: (usize, usize),
    p: (usize, usize),
    d: (usize, usize),
    ceil: bool,
    count_pad: bool,
) -> Array4<f64> {
    let (b, c, h, w) = x.dim();
    let oh = out_len(h, k.0, s.0, p.0, d.0, ceil);
    let ow = out_len(w, k.1, s.1, p.1, d.1, ceil);
    Array4::from_shape_fn((b, c, oh, ow), |(n, ch, oy, ox)| {
        let (mut m, mut sum, mut cnt) = (f64::NEG_INFINITY, 0.0, 0.0);
        for ky in 0..k.0 {
            for kx in 0..k.1 {
                let iy = (oy * s.0 + ky * d.0) as isize - p.0 as isize;
                let ix = (ox * s.1 + kx * d.1) as isize - p.1 as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    let v = x[[n, ch, iy as usize, ix as usize]];
                    m = m.max(v);
                    sum += v;
                    cnt += 1.0;
                }
            }
        }
        if max {
            return m;
        }
        let ext = |o: usize, s: usize, p: usize, k: usize, n: usize| {
            let st = (o * s) as isize - p as isize;
            ((st + k as isize).min((n + p) as isize) - st) as f64
        };
        let div = if count_pad {
            ext(oy, s.0, p.0, k.0, h) * ext(ox, s.1, p.1, k.1, w)
        } else {
            cnt
        };
        sum / div
    })
}

fn adaptive2(x: &Array4<f64>, oh: usize, ow: usize) -> Array4<f64> {
    let (b, c, h, w) = x.dim();
    Array4::from_shape_fn((b, c, oh, ow), |(n, ch, oy, ox)| {
        let (ys, ye) = (oy * h / oh, ((oy + 1) * h).div_ceil(oh));
        let (xs, xe) = (ox * w / ow, ((ox + 1) * w).div_ceil(ow));
        let mut s = 0.0;
        for iy in ys..ye {
            for ix in xs..xe {
                s += x[[n, ch, iy, ix]];
            }
        }
        s / ((ye - ys) * (xe - xs)) as f64
    })
}

/// The source index of padded index `i` (`None`: the constant).
fn src(i: usize, left: usize, n: usize, mode: &str) -> Option<usize> {
    let p = i as isize - left as isize;
    let n = n as isize;
    if (0..n).contains(&p) {
        return Some(p as usize);
    }
    match mode {
        "reflect" if p < 0 => Some((-p) as usize),
        "reflect" => Some((2 * (n - 1) - p) as usize),
        "replicate" => Some(p.clamp(0, n - 1) as usize),
        _ => None,
    }
}

fn pad2(x: &Array4<f64>, pads: [usize; 4], mode: &str, value: f64) -> Array4<f64> {
    let (b, c, h, w) = x.dim();
    let [l, r, t, bo] = pads;
    Array4::from_shape_fn((b, c, h + t + bo, w + l + r), |(n, ch, y, xx)| {
        match (src(y, t, h, mode), src(xx, l, w, mode)) {
            (Some(iy), Some(ix)) => x[[n, ch, iy, ix]],
            _ => value,
        }
    })
}

/// PyTorch's interpolation source of output `o`: `(i0, i1, weight of i1)`.
fn interp(
    o: usize,
    n: usize,
    on: usize,
    scale: Option<f64>,
    linear: bool,
    align: bool,
) -> (usize, usize, f64) {
    let sc = scale.map(|s| 1.0 / s).unwrap_or(n as f64 / on as f64);
    if !linear {
        let i = ((o as f64 * sc).floor() as usize).min(n - 1);
        return (i, i, 0.0);
    }
    let s = if align {
        if on > 1 {
            o as f64 * (n - 1) as f64 / (on - 1) as f64
        } else {
            0.0
        }
    } else {
        ((o as f64 + 0.5) * sc - 0.5).max(0.0)
    };
    let i0 = (s.floor() as usize).min(n - 1);
    let i1 = (i0 + 1).min(n - 1);
    (i0, i1, s - i0 as f64)
}

fn up2(
    x: &Array4<f64>,
    (oh, ow): (usize, usize),
    scale: Option<(f64, f64)>,
    linear: bool,
    align: bool,
) -> Array4<f64> {
    let (b, c, h, w) = x.dim();
    Array4::from_shape_fn((b, c, oh, ow), |(n, ch, oy, ox)| {
        let (y0, y1, ly) = interp(oy, h, oh, scale.map(|s| s.0), linear, align);
        let (x0, x1, lx) = interp(ox, w, ow, scale.map(|s| s.1), linear, align);
        let at = |y, xx| x[[n, ch, y, xx]];
        (1.0 - ly) * ((1.0 - lx) * at(y0, x0) + lx * at(y0, x1))
            + ly * ((1.0 - lx) * at(y1, x0) + lx * at(y1, x1))
    })
}

/// A 3-D `[B, C, L]` array as `[B, C, 1, L]`.
fn as4(v: &Array3<f64>) -> Array4<f64> {
    let (b, c, l) = v.dim();
    v.clone().into_shape_with_order((b, c, 1, l)).unwrap()
}

fn close(got: &ArrayD<f64>, want: &Array4<f64>, what: &str) {
    let want = want.clone().into_dyn();
    let want = if got.ndim() == 3 {
        let s = want.shape().to_vec();
        want.into_shape_with_order(IxDyn(&[s[0], s[1], s[3]]))
            .unwrap()
    } else {
        want
    };
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (a, b)) in got.iter().zip(want.iter()).enumerate() {
        assert!((a - b).abs() <= 1e-12, "{what}[{i}]: {a} vs {b}");
    }
}

fn params() -> PoolsParams {
    let m = Pools::new().unwrap();
    let mut p = m.randomize_params(0);
    p.x = pat(ndarray::Ix4(2, 3, 7, 8), 0.3);
    p.v = pat(ndarray::Ix3(2, 3, 9), 1.1);
    p
}

#[test]
fn pooling_pad_and_upsample_match_naive_references() {
    let m = Pools::new().unwrap();
    let p = params();
    let o = m
        .evaluate(
            &p,
            PoolsInputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    let x = &p.x;
    close(
        &o.mx.into_dyn(),
        &window2(x, true, (3, 3), (2, 2), (1, 1), (1, 1), true, true),
        "mx",
    );
    close(
        &o.mxd.into_dyn(),
        &window2(x, true, (2, 3), (1, 2), (0, 0), (2, 1), false, true),
        "mxd",
    );
    close(
        &o.av.into_dyn(),
        &window2(x, false, (3, 2), (2, 3), (1, 1), (1, 1), true, true),
        "av",
    );
    close(
        &o.avn.into_dyn(),
        &window2(x, false, (3, 3), (2, 2), (1, 1), (1, 1), false, false),
        "avn",
    );
    close(&o.ad.into_dyn(), &adaptive2(x, 3, 5), "ad");
    close(&o.gl.into_dyn(), &adaptive2(x, 1, 1), "gl");
    close(
        &o.pc.into_dyn(),
        &pad2(x, [1, 2, 0, 1], "constant", 0.5),
        "pc",
    );
    close(
        &o.pr.into_dyn(),
        &pad2(x, [2, 1, 3, 1], "reflect", 0.0),
        "pr",
    );
    close(
        &o.pe.into_dyn(),
        &pad2(x, [1, 0, 2, 2], "replicate", 0.0),
        "pe",
    );
    close(
        &o.un.into_dyn(),
        &up2(x, (14, 16), Some((2.0, 2.0)), false, false),
        "un",
    );
    close(&o.ub.into_dyn(), &up2(x, (5, 11), None, true, false), "ub");
    close(
        &o.ua.into_dyn(),
        &up2(x, (10, 16), Some((1.5, 2.0)), true, true),
        "ua",
    );
    let v = as4(&p.v);
    close(
        &o.m1.into_dyn(),
        &window2(&v, true, (1, 4), (1, 3), (0, 2), (1, 1), true, true),
        "m1",
    );
    close(
        &o.a1.into_dyn(),
        &window2(&v, false, (1, 3), (1, 2), (0, 1), (1, 1), false, true),
        "a1",
    );
    close(&o.d1.into_dyn(), &adaptive2(&v, 1, 4), "d1");
    close(
        &o.p1.into_dyn(),
        &pad2(&v, [3, 2, 0, 0], "reflect", 0.0),
        "p1",
    );
    close(&o.u1.into_dyn(), &up2(&v, (1, 4), None, true, false), "u1");
    // a hand-computed value: the first 3x3 window (padding 1) of plane 0 covers x[0..2, 0..2]
    let want = [[0, 0], [0, 1], [1, 0], [1, 1]]
        .iter()
        .map(|&[i, j]| x[[0, 0, i, j]])
        .fold(f64::NEG_INFINITY, f64::max);
    assert_eq!(
        m.evaluate(
            &p,
            PoolsInputs {
                _marker: PhantomData
            }
        )
        .unwrap()
        .mx[[0, 0, 0, 0]],
        want
    );
}

#[test]
fn pooling_pad_and_upsample_gradients_match_central_differences() {
    let m = Pools::new().unwrap();
    let p = params();
    let o = m
        .evaluate(
            &p,
            PoolsInputs {
                _marker: PhantomData,
            },
        )
        .unwrap();
    let mut k = 0.0;
    let mut seed = |a: &ndarray::ArrayD<f64>| {
        k += 1.0;
        pat(a.raw_dim(), k + 0.37)
    };
    macro_rules! seeds {
        ($($f:ident),*) => {
            PoolsOutputs { $($f: seed(&o.$f.clone().into_dyn()).into_dimensionality().unwrap()),* }
        };
    }
    let s = seeds!(
        mx, mxd, av, avn, ad, gl, pc, pr, pe, un, ub, ua, m1, a1, d1, p1, u1
    );
    let loss = |q: &PoolsParams| {
        let o = m
            .evaluate(
                q,
                PoolsInputs {
                    _marker: PhantomData,
                },
            )
            .unwrap();
        macro_rules! sum {
            ($($f:ident),*) => { 0.0 $(+ dot(&o.$f, &s.$f))* };
        }
        sum!(
            mx, mxd, av, avn, ad, gl, pc, pr, pe, un, ub, ua, m1, a1, d1, p1, u1
        )
    };
    let (_, g) = m
        .evaluate_gradients(
            &p,
            PoolsInputs {
                _marker: PhantomData,
            },
            s.clone(),
        )
        .unwrap();
    assert_eq!(gradcheck("pool", &p, &g, loss), 2 * 3 * 7 * 8 + 2 * 3 * 9);
}

#[test]
fn symbolic_pool_dims_are_computed_and_checked_at_run_time() {
    let m = SymPool::new().unwrap();
    let x =
        ndarray::Array4::from_shape_fn((2, 3, 7, 9), |(a, b, c, d)| (a + b * 3 + c * 5 + d) as f32);
    let o = m
        .evaluate(&m.randomize_params(0), SymPoolInputs { x: x.view() })
        .unwrap();
    assert_eq!(o.y.shape(), &[2, 3, 3, 4]);
    assert_eq!(o.z.shape(), &[2, 3, 14, 18]);
    // max of the 2x2 window at (1, 1): rows 2..4, cols 2..4 of plane (1, 2)
    assert_eq!(o.y[[1, 2, 1, 1]], (1 + 2 * 3 + 3 * 5 + 3) as f32);
    // a 1-row input has no 2x2 window: an error naming the op and the input
    let x1 = ndarray::Array4::<f32>::zeros((1, 1, 1, 5));
    let e = m
        .evaluate(&m.randomize_params(0), SymPoolInputs { x: x1.view() })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_pool2d") && e.contains("[1, 1, 1, 5]"),
        "{e}"
    );
}

#[test]
fn library_pool_models_compose() {
    let m = PoolNet::new().unwrap();
    let x =
        ndarray::Array4::from_shape_fn((1, 2, 4, 6), |(_, c, h, w)| (c * 100 + h * 6 + w) as f32);
    let o = m
        .evaluate(&m.randomize_params(0), PoolNetInputs { x: x.view() })
        .unwrap();
    // MaxPool2d(2): [2, 3] per channel; AvgPool2d(3, 1, 1) and nearest x2 keep the mean of a
    // constant-free plane only approximately, so recompute it naively here
    let mp = window2(
        &x.mapv(|v| v as f64),
        true,
        (2, 2),
        (2, 2),
        (0, 0),
        (1, 1),
        false,
        true,
    );
    let ap = window2(&mp, false, (3, 3), (1, 1), (1, 1), (1, 1), false, true);
    let up = up2(&ap, (4, 6), Some((2.0, 2.0)), false, false);
    let want = adaptive2(&up, 1, 1);
    assert_eq!(o.y.shape(), &[1, 2, 1, 1]);
    for c in 0..2 {
        assert!((o.y[[0, c, 0, 0]] as f64 - want[[0, c, 0, 0]]).abs() < 1e-4);
    }
}

#[test]
fn f16_pooling_computes_in_f32() {
    use mithril::half::f16;
    let m = HalfPool::new().unwrap();
    let x = ndarray::Array4::from_shape_fn((1, 1, 2, 4), |(_, _, h, w)| {
        f16::from_f32((4 * h + w) as f32 * 0.5)
    });
    let o = m
        .evaluate(&m.randomize_params(0), HalfPoolInputs { x: x.view() })
        .unwrap();
    assert_eq!(
        o.m.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
        [2.5, 3.5]
    );
    // rows [0, .5, 1, 1.5] and [2, 2.5, 3, 3.5]: windows of 2 with one pad each side
    let a: Vec<f32> = o.a.iter().map(|v| v.to_f32()).collect();
    assert_eq!(a, [0.0, 0.25, 0.75, 1.25, 1.5, 2.0, 2.25, 2.75, 3.25, 3.5]);
    let xf = x.mapv(|v| v.to_f64());
    let want = up2(&xf, (4, 8), Some((2.0, 2.0)), true, false);
    for (g, w) in o.u.iter().zip(want.iter()) {
        assert!((g.to_f64() - w).abs() < 4e-3, "{g} vs {w}");
    }
}
