//! Tests of the ops against independent references (hand values and plain loops).

use std::collections::BTreeMap;

use half::{bf16, f16};
use ndarray::{s, ArrayD, ArrayViewD, Axis, Dimension, IxDyn};

use super::*;
use crate::{Elem, Error};

// ---------------------------------------------------------------------------------------------
// helpers

fn arr<T: Clone>(shape: &[usize], f: impl Fn(usize) -> T) -> ArrayD<T> {
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), (0..n).map(f).collect()).unwrap()
}

/// Deterministic pseudo-random values in [-1, 1).
fn rnd(seed: u64) -> impl Fn(usize) -> f64 {
    move |i| {
        let mut x = (i as u64).wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^= x >> 33;
        (x >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
}

fn close(a: &ArrayD<f64>, b: &ArrayD<f64>, tol: f64) {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        let ok = (x.is_nan() && y.is_nan()) || x == y || (x - y).abs() <= tol * (1.0 + y.abs());
        assert!(ok, "element {i}: {x} vs {y} (tol {tol})\n{a:?}\nvs\n{b:?}");
    }
}

fn f64s<T: Elem>(a: &ArrayD<T>) -> ArrayD<f64> {
    a.mapv(|x| x.to_f64())
}

/// Index of `idx` (an output index) into an input of `shape` under broadcasting.
fn bidx(idx: &[usize], shape: &[usize]) -> Vec<usize> {
    let off = idx.len() - shape.len();
    shape
        .iter()
        .enumerate()
        .map(|(i, &d)| if d == 1 { 0 } else { idx[off + i] })
        .collect()
}

fn op_msg(e: Error) -> String {
    match e {
        Error::Op { msg, .. } => msg,
        other => panic!("expected Error::Op, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// elementwise

#[cfg_attr(test, test)]
pub(crate) fn broadcast_shape_rules() {
    assert_eq!(broadcast_shapes("t", &[&[3, 4], &[4]]).unwrap(), vec![3, 4]);
    assert_eq!(
        broadcast_shapes("t", &[&[3, 1], &[1, 4]]).unwrap(),
        vec![3, 4]
    );
    assert_eq!(
        broadcast_shapes("t", &[&[2, 1, 3], &[4, 1]]).unwrap(),
        vec![2, 4, 3]
    );
    assert_eq!(broadcast_shapes("t", &[&[], &[2]]).unwrap(), vec![2]);
    assert_eq!(broadcast_shapes("t", &[&[0], &[1]]).unwrap(), vec![0]);
    assert_eq!(broadcast_shapes("t", &[]).unwrap(), Vec::<usize>::new());
    let e = broadcast_shapes("add", &[&[3, 4], &[5]]).unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("`add`") && text.contains("[3, 4]") && text.contains("[5]"),
        "{text}"
    );
    assert!(broadcast_shapes("t", &[&[2], &[3], &[1]]).is_err());
    assert!(broadcast_shapes("t", &[&[usize::MAX, 1], &[1, 3]]).is_err());
}

/// Checks `map2(a, b, a * 10 + b)` against a loop with explicit broadcasting.
fn check_map2(a: &ArrayViewD<'_, f64>, b: &ArrayViewD<'_, f64>) {
    let out = map2("t", a, b, |x, y| x * 10.0 + y).unwrap();
    let shape = broadcast_shapes("t", &[a.shape(), b.shape()]).unwrap();
    assert_eq!(out.shape(), &shape[..]);
    assert!(out.is_standard_layout());
    for idx in ndarray::indices(IxDyn(&shape)) {
        let i = idx.slice();
        let want = a[IxDyn(&bidx(i, a.shape()))] * 10.0 + b[IxDyn(&bidx(i, b.shape()))];
        assert_eq!(
            out[IxDyn(i)],
            want,
            "at {i:?} for {:?} and {:?}",
            a.shape(),
            b.shape()
        );
    }
}

#[cfg_attr(test, test)]
pub(crate) fn map2_broadcasting() {
    let cases: &[(&[usize], &[usize])] = &[
        (&[3, 4], &[3, 4]),
        (&[3, 4], &[]),
        (&[], &[3, 4]),
        (&[3, 4], &[1]),
        (&[3, 4], &[4]),
        (&[3, 4], &[3, 1]),
        (&[2, 1, 4], &[3, 1]),
        (&[5, 40], &[40]),
        (&[5, 40], &[5, 1]),
        (&[1, 40], &[6, 1]),
        (&[2, 3, 20], &[3, 20]),
        (&[], &[]),
        (&[3000], &[1]),
        (&[2, 2000], &[2000]),
    ];
    for (sa, sb) in cases {
        let a = arr(sa, rnd(1));
        let b = arr(sb, rnd(2));
        check_map2(&a.view(), &b.view());
    }
    let a = arr(&[3, 4], rnd(1));
    let b = arr(&[5], rnd(2));
    let msg = op_msg(map2("mul", &a.view(), &b.view(), |x, y| x * y).unwrap_err());
    assert!(msg.contains("[3, 4]") && msg.contains("[5]"), "{msg}");
}

#[cfg_attr(test, test)]
pub(crate) fn map2_non_contiguous() {
    // transposed (Fortran-order) inputs, small and large inner dims
    for &(r, c) in &[(3usize, 4usize), (20, 33)] {
        let a = arr(&[c, r], rnd(3));
        let at = a.t().into_dyn();
        let b = arr(&[r, c], rnd(4));
        check_map2(&at, &b.view());
        check_map2(&b.view(), &at);
        check_map2(&at, &at);
        // stepped and reversed slices
        let big = arr(&[2 * r, 3 * c], rnd(5));
        let stepped = big.slice(s![..;2, ..;3]).into_dyn();
        check_map2(&stepped, &b.view());
        let rev = big.slice(s![..r;-1, ..c]).into_dyn();
        check_map2(&rev, &b.view());
        // a strided row broadcast over rows
        let row = big.slice(s![0, ..;3]).into_dyn();
        check_map2(&b.view(), &row);
        // a broadcast view as input
        let col = arr(&[r, 1], rnd(6));
        let colb = col.broadcast(IxDyn(&[r, c])).unwrap();
        check_map2(&colb, &b.view());
    }
}

#[cfg_attr(test, test)]
pub(crate) fn map_arities_and_types() {
    let a = arr(&[2, 3, 17], rnd(1));
    let b = arr(&[3, 1], rnd(2));
    let c = arr(&[17], rnd(3));
    let d = arr(&[2, 1, 1], |i| i as i32);
    let e = arr(&[2, 3, 17], |i| i % 3 == 0);
    let at = arr(&[17, 3, 2], rnd(4));
    let at = at.view().reversed_axes();
    let o3 = map3("t", &a.view(), &b.view(), &c.view(), |x, y, z| {
        x + 2.0 * y + 3.0 * z
    })
    .unwrap();
    let o4 = map4(
        "t",
        &a.view(),
        &b.view(),
        &c.view(),
        &d.view(),
        |x, y, z, w| x - y * z + w as f64,
    )
    .unwrap();
    let o5 = map5(
        "t",
        &a.view(),
        &b.view(),
        &c.view(),
        &e.view(),
        &at,
        |x, y, z, q, t| {
            if q {
                x + y + z
            } else {
                t
            }
        },
    )
    .unwrap();
    for idx in ndarray::indices(IxDyn(&[2, 3, 17])) {
        let i = idx.slice();
        let (x, y, z) = (a[i], b[[i[1], 0]], c[[i[2]]]);
        assert_eq!(o3[i], x + 2.0 * y + 3.0 * z);
        assert_eq!(o4[i], x - y * z + d[[i[0], 0, 0]] as f64);
        let want = if e[i] { x + y + z } else { at[i] };
        assert_eq!(o5[i], want);
    }
    assert!(map3(
        "t",
        &a.view(),
        &b.view(),
        &arr(&[4], rnd(0)).view(),
        |x, _, _| x
    )
    .is_err());
    // a comparison producing bool, then `where` on mixed types
    let m = map2("gt", &a.view(), &c.view(), |x, y| x > y).unwrap();
    let w = map3("where", &m.view(), &a.view(), &d.view(), |q, x, y| {
        if q {
            x
        } else {
            y as f64
        }
    })
    .unwrap();
    for idx in ndarray::indices(IxDyn(&[2, 3, 17])) {
        let i = idx.slice();
        assert_eq!(m[i], a[i] > c[[i[2]]]);
        assert_eq!(w[i], if m[i] { a[i] } else { d[[i[0], 0, 0]] as f64 });
    }
}

#[cfg_attr(test, test)]
pub(crate) fn map1_layouts_and_empty() {
    let a = arr(&[3, 5], |i| i as f32);
    let t = map1(&a.t().into_dyn(), |x| x * 2.0);
    assert!(t.is_standard_layout());
    assert_eq!(t.shape(), &[5, 3]);
    assert_eq!(t[[4, 2]], a[[2, 4]] * 2.0);
    let e = arr::<f32>(&[0, 3], |_| 0.0);
    assert_eq!(map1(&e.view(), |x| x + 1.0).shape(), &[0, 3]);
    let o = map2("t", &e.view(), &arr(&[3], |i| i as f32).view(), |x, y| {
        x + y
    })
    .unwrap();
    assert_eq!(o.shape(), &[0, 3]);
    assert!(map2("t", &e.view(), &arr(&[2], |_| 0f32).view(), |x, y| x + y).is_err());
    // integer arithmetic through the wrapping Num methods
    let i = arr(&[2], |k| if k == 0 { i32::MAX } else { 7 });
    let w = map2("t", &i.view(), &arr(&[2], |k| k as i32).view(), |x, y| {
        crate::scalar::Num::add(x, crate::scalar::Num::div(1, y))
    })
    .unwrap();
    assert_eq!(w.as_slice().unwrap(), &[i32::MAX, 8]);
    // f16 computed in f32
    let h = arr(&[3], |k| f16::from_f32(k as f32 + 0.5));
    let hh = map1(&h.view(), |x| f16::from_acc(x.to_acc() * 3.0));
    assert_eq!(hh.mapv(f16::to_f32).as_slice().unwrap(), &[1.5, 4.5, 7.5]);
}

// ---------------------------------------------------------------------------------------------
// matmul

/// Plain triple loop on 2-D f64 arrays.
fn naive_mm(a: &ArrayD<f64>, b: &ArrayD<f64>) -> ArrayD<f64> {
    let (m, k, n) = (a.shape()[0], a.shape()[1], b.shape()[1]);
    assert_eq!(b.shape()[0], k);
    let mut c = ArrayD::zeros(IxDyn(&[m, n]));
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0;
            for p in 0..k {
                s += a[[i, p]] * b[[p, j]];
            }
            c[[i, j]] = s;
        }
    }
    c
}

#[cfg_attr(test, test)]
pub(crate) fn matmul_2d_hand_values() {
    let a = arr(&[2, 2], |i| (i + 1) as f32);
    let b = arr(&[2, 2], |i| (i + 5) as f32);
    let c = matmul(&a.view(), &b.view(), false, false).unwrap();
    assert_eq!(c.as_slice().unwrap(), &[19.0, 22.0, 43.0, 50.0]);
    let c = matmul(&a.view(), &b.view(), true, false).unwrap(); // [[1,3],[2,4]] @ b
    assert_eq!(c.as_slice().unwrap(), &[26.0, 30.0, 38.0, 44.0]);
    let c = matmul(&a.view(), &b.view(), false, true).unwrap(); // a @ [[5,7],[6,8]]
    assert_eq!(c.as_slice().unwrap(), &[17.0, 23.0, 39.0, 53.0]);
    let c = matmul(&a.view(), &b.view(), true, true).unwrap();
    assert_eq!(c.as_slice().unwrap(), &[23.0, 31.0, 34.0, 46.0]);
}

#[cfg_attr(test, test)]
pub(crate) fn matmul_vectors() {
    let v = arr(&[3], |i| (i + 1) as f64); // [1,2,3]
    let m = arr(&[3, 2], |i| i as f64); // [[0,1],[2,3],[4,5]]
    let vm = matmul(&v.view(), &m.view(), false, false).unwrap();
    assert_eq!(vm.shape(), &[2]);
    assert_eq!(vm.as_slice().unwrap(), &[16.0, 22.0]);
    let mt = arr(&[2, 3], |i| i as f64); // [[0,1,2],[3,4,5]]
    let mv = matmul(&mt.view(), &v.view(), false, false).unwrap();
    assert_eq!(mv.shape(), &[2]);
    assert_eq!(mv.as_slice().unwrap(), &[8.0, 26.0]);
    // trans_b is ignored for a 1-D operand; trans_a applies to the matrix
    let mv2 = matmul(&m.view(), &v.view(), true, true).unwrap();
    assert_eq!(mv2.as_slice().unwrap(), &[16.0, 22.0]);
    let dot = matmul(&v.view(), &v.view(), false, false).unwrap();
    assert_eq!(dot.ndim(), 0);
    assert_eq!(dot[IxDyn(&[])], 14.0);
    // batched matrix @ vector
    let bm = arr(&[4, 2, 3], |i| i as f64);
    let bmv = matmul(&bm.view(), &v.view(), false, false).unwrap();
    assert_eq!(bmv.shape(), &[4, 2]);
    for b in 0..4 {
        for i in 0..2 {
            let want: f64 = (0..3).map(|p| bm[[b, i, p]] * v[[p]]).sum();
            assert_eq!(bmv[[b, i]], want);
        }
    }
    // vector @ batched matrix
    let vbm = matmul(
        &arr(&[2], |i| i as f64 + 1.0).view(),
        &bm.view(),
        false,
        false,
    )
    .unwrap();
    assert_eq!(vbm.shape(), &[4, 3]);
    assert_eq!(vbm[[1, 2]], bm[[1, 0, 2]] + 2.0 * bm[[1, 1, 2]]);
}

#[cfg_attr(test, test)]
pub(crate) fn matmul_f64_odd_sizes_against_loops() {
    let a = arr(&[37, 53], rnd(1));
    let b = arr(&[53, 29], rnd(2));
    let want = naive_mm(&a, &b);
    close(
        &matmul(&a.view(), &b.view(), false, false).unwrap(),
        &want,
        1e-12,
    );
    // the same product through transposed storage and the trans flags
    let at = a.t().as_standard_layout().into_owned(); // [53, 37]
    let bt = b.t().as_standard_layout().into_owned(); // [29, 53]
    close(
        &matmul(&at.view(), &b.view(), true, false).unwrap(),
        &want,
        1e-12,
    );
    close(
        &matmul(&a.view(), &bt.view(), false, true).unwrap(),
        &want,
        1e-12,
    );
    close(
        &matmul(&at.view(), &bt.view(), true, true).unwrap(),
        &want,
        1e-12,
    );
    // non-contiguous views (transposed, stepped)
    close(
        &matmul(&at.t().into_dyn(), &bt.t().into_dyn(), false, false).unwrap(),
        &want,
        1e-12,
    );
    let big = arr(&[74, 106], rnd(3));
    let sa = big.slice(s![..;2, ..;2]).into_dyn(); // [37, 53]
    let sb = big.slice(s![..53;-1, ..29]).into_dyn();
    let want2 = naive_mm(&sa.to_owned(), &sb.to_owned());
    close(&matmul(&sa, &sb, false, false).unwrap(), &want2, 1e-12);
    // f32 against the f64 reference
    let a32 = a.mapv(|x| x as f32);
    let b32 = b.mapv(|x| x as f32);
    let c32 = matmul(&a32.view(), &b32.view(), false, false).unwrap();
    close(&f64s(&c32), &want, 1e-5);
}

#[cfg_attr(test, test)]
pub(crate) fn matmul_batched_broadcast() {
    let a = arr(&[2, 1, 3, 4], rnd(1));
    let b = arr(&[3, 4, 5], rnd(2));
    let c = matmul(&a.view(), &b.view(), false, false).unwrap();
    assert_eq!(c.shape(), &[2, 3, 3, 5]);
    for i in 0..2 {
        for j in 0..3 {
            let ai = a.slice(s![i, 0, .., ..]).to_owned().into_dyn();
            let bj = b.slice(s![j, .., ..]).to_owned().into_dyn();
            let want = naive_mm(&ai, &bj);
            close(
                &c.slice(s![i, j, .., ..]).to_owned().into_dyn(),
                &want,
                1e-12,
            );
        }
    }
    // batch of a against a shared 2-D b (folded into one GEMM), with and without trans_b
    let x = arr(&[2, 3, 4], rnd(3));
    let w = arr(&[5, 4], rnd(4));
    let y = matmul(&x.view(), &w.view(), false, true).unwrap();
    assert_eq!(y.shape(), &[2, 3, 5]);
    let wt = w.t().as_standard_layout().into_owned().into_dyn();
    for i in 0..2 {
        let want = naive_mm(&x.slice(s![i, .., ..]).to_owned().into_dyn(), &wt);
        close(&y.slice(s![i, .., ..]).to_owned().into_dyn(), &want, 1e-12);
    }
    // trans_a on a batched operand
    let xt = arr(&[2, 4, 3], rnd(5));
    let y = matmul(&xt.view(), &wt.view(), true, false).unwrap();
    for i in 0..2 {
        let xi = xt.slice(s![i, .., ..]).t().to_owned().into_dyn();
        close(
            &y.slice(s![i, .., ..]).to_owned().into_dyn(),
            &naive_mm(&xi, &wt),
            1e-12,
        );
    }
    // 2-D a against a batched b
    let y = matmul(&w.view(), &arr(&[3, 4, 2], rnd(6)).view(), false, false).unwrap();
    assert_eq!(y.shape(), &[3, 5, 2]);
    // mismatches
    let e = matmul(&a.view(), &arr(&[3, 5, 5], rnd(0)).view(), false, false).unwrap_err();
    let msg = op_msg(e);
    assert!(
        msg.contains("[2, 1, 3, 4]") && msg.contains("[3, 5, 5]"),
        "{msg}"
    );
    assert!(matmul(
        &arr(&[2, 3, 4], rnd(0)).view(),
        &arr(&[4, 4, 5], rnd(0)).view(),
        false,
        false
    )
    .is_err());
    assert!(matmul(&arr(&[], rnd(0)).view(), &b.view(), false, false).is_err());
    assert!(matmul(
        &arr(&[3], rnd(0)).view(),
        &arr(&[4], rnd(0)).view(),
        false,
        false
    )
    .is_err());
}

#[cfg_attr(test, test)]
pub(crate) fn matmul_half_and_int() {
    let a = arr(&[7, 9], rnd(1));
    let b = arr(&[9, 5], rnd(2));
    let want = naive_mm(&a, &b);
    let ah = a.mapv(f16::from_f64);
    let bh = b.mapv(f16::from_f64);
    let want_h = naive_mm(&f64s(&ah), &f64s(&bh));
    close(
        &f64s(&matmul(&ah.view(), &bh.view(), false, false).unwrap()),
        &want_h,
        2e-3,
    );
    let ab = a.mapv(bf16::from_f64);
    let bb = b.mapv(bf16::from_f64);
    let want_b = naive_mm(&f64s(&ab), &f64s(&bb));
    close(
        &f64s(&matmul(&ab.view(), &bb.view(), false, false).unwrap()),
        &want_b,
        1e-2,
    );
    close(
        &f64s(&matmul(&ab.view(), &bb.view(), false, false).unwrap()),
        &want,
        5e-2,
    );

    let ai = arr(&[13, 11], |i| (i as i32 % 17) - 8);
    let bi = arr(&[11, 6], |i| (i as i32 % 5) - 2);
    let ci = matmul(&ai.view(), &bi.view(), false, false).unwrap();
    let want = naive_mm(&f64s(&ai), &f64s(&bi));
    assert_eq!(f64s(&ci), want);
    // trans on ints (strided rows of b)
    let bit = bi.t().as_standard_layout().into_owned();
    assert_eq!(matmul(&ai.view(), &bit.view(), false, true).unwrap(), ci);
    // wrapping overflow
    let big = arr(&[1, 2], |_| i32::MAX);
    let two = arr(&[2, 1], |_| 2i32);
    let w = matmul(&big.view(), &two.view(), false, false).unwrap();
    assert_eq!(w[[0, 0]], i32::MAX.wrapping_mul(2).wrapping_mul(2));
    let l = matmul(
        &arr(&[2, 3], |i| i as i64).view(),
        &arr(&[3], |i| i as i64).view(),
        false,
        false,
    )
    .unwrap();
    assert_eq!(l.as_slice().unwrap(), &[5, 14]);
}

#[cfg_attr(test, test)]
pub(crate) fn matmul_empty() {
    let c = matmul(
        &arr::<f32>(&[0, 3], |_| 0.0).view(),
        &arr(&[3, 4], |_| 1.0f32).view(),
        false,
        false,
    )
    .unwrap();
    assert_eq!(c.shape(), &[0, 4]);
    let c = matmul(
        &arr::<f64>(&[2, 0], |_| 0.0).view(),
        &arr::<f64>(&[0, 3], |_| 0.0).view(),
        false,
        false,
    )
    .unwrap();
    assert_eq!(c.shape(), &[2, 3]);
    assert!(c.iter().all(|&x| x == 0.0));
    let c = matmul(
        &arr::<i32>(&[0, 2, 0], |_| 0).view(),
        &arr::<i32>(&[0, 5], |_| 0).view(),
        false,
        false,
    )
    .unwrap();
    assert_eq!(c.shape(), &[0, 2, 5]);
}

// ---------------------------------------------------------------------------------------------
// reductions

/// Reference reduction on f64 data by grouping indices.
fn ref_reduce(
    a: &ArrayD<f64>,
    axes: &[usize],
    keepdim: bool,
    f: impl Fn(&[f64]) -> f64,
) -> ArrayD<f64> {
    let nd = a.ndim();
    let red: Vec<bool> = (0..nd)
        .map(|i| axes.is_empty() || axes.contains(&i))
        .collect();
    let mut groups: BTreeMap<Vec<usize>, Vec<f64>> = BTreeMap::new();
    for idx in ndarray::indices(a.raw_dim()) {
        let key: Vec<usize> = idx
            .slice()
            .iter()
            .zip(&red)
            .filter(|(_, &r)| !r)
            .map(|(&i, _)| i)
            .collect();
        groups.entry(key).or_default().push(a[idx.slice()]);
    }
    let kept: Vec<usize> = (0..nd).filter(|&i| !red[i]).map(|i| a.shape()[i]).collect();
    let mut out = ArrayD::zeros(IxDyn(&kept));
    for (k, v) in groups {
        out[IxDyn(&k)] = f(&v);
    }
    if keepdim {
        let mut shape = a.shape().to_vec();
        for (i, r) in red.iter().enumerate() {
            if *r {
                shape[i] = 1;
            }
        }
        out = out.into_shape_with_order(IxDyn(&shape)).unwrap();
    }
    out
}

fn var_ref(v: &[f64], corr: f64) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - corr)
}

/// Sums where every output reduces one element (axes of extent 1: the bias gradient at batch
/// 1) give `0 + x` bit for bit, as a sum of one element does: `-0.0` becomes `+0.0`, NaN stays.
#[cfg_attr(test, test)]
pub(crate) fn sums_of_one_element_are_zero_plus_x() {
    let vals = [
        1.5f32,
        -0.0,
        0.0,
        -2.25,
        f32::NAN,
        f32::INFINITY,
        1e-40,
        -3.0e38,
    ];
    let expect = |x: f32| (0.0f32 + x).to_bits();
    let n = vals.len();
    let a = ArrayD::from_shape_vec(IxDyn(&[1, n]), vals.to_vec()).unwrap();
    for keep in [false, true] {
        let got = sum(&a.view(), &[0], keep).unwrap();
        let want: &[usize] = if keep { &[1, n] } else { &[n] };
        assert_eq!(got.shape(), want);
        let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert_eq!(bits, vals.iter().map(|&x| expect(x)).collect::<Vec<_>>());
    }
    // [n, 1, 1] over the unit axes, and bf16 / f64
    let c = a.clone().into_shape_with_order(IxDyn(&[n, 1, 1])).unwrap();
    let got = sum(&c.view(), &[1, 2], false).unwrap();
    let bits: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
    assert_eq!(bits, vals.iter().map(|&x| expect(x)).collect::<Vec<_>>());
    let h = a.mapv(bf16::from_f32);
    let got = sum(&h.view(), &[0], false).unwrap();
    for (g, x) in got.iter().zip(h.iter()) {
        assert_eq!(g.to_bits(), bf16::from_f32(0.0 + x.to_f32()).to_bits());
    }
    let d = a.mapv(f64::from);
    let got = sum(&d.view(), &[0], false).unwrap();
    for (g, x) in got.iter().zip(d.iter()) {
        assert_eq!(g.to_bits(), (0.0f64 + x).to_bits());
    }
    // integers wrap as ever
    let i = ArrayD::from_shape_vec(IxDyn(&[1, 3]), vec![i64::MAX, -1, 0]).unwrap();
    assert_eq!(
        sum(&i.view(), &[0], false)
            .unwrap()
            .into_raw_vec_and_offset()
            .0,
        vec![i64::MAX, -1, 0]
    );
}

#[cfg_attr(test, test)]
pub(crate) fn reductions_against_reference() {
    let a = arr(&[3, 4, 5], rnd(7));
    let base = a.view();
    let transposed = a
        .view()
        .permuted_axes(vec![2, 0, 1])
        .as_standard_layout()
        .into_owned(); // [5, 3, 4]
    let tview = transposed.view().permuted_axes(vec![1, 2, 0]); // non-contiguous, logically == a
    let stepped_src = arr(&[6, 4, 10], rnd(7));
    let stepped = stepped_src.slice(s![..;2, .., ..;2]).into_dyn();
    let stepped_owned = stepped.to_owned();
    let axis_sets: &[(&[isize], &[usize])] = &[
        (&[0], &[0]),
        (&[1], &[1]),
        (&[2], &[2]),
        (&[-1], &[2]),
        (&[0, 1], &[0, 1]),
        (&[-1, 0], &[0, 2]),
        (&[1, 2], &[1, 2]),
        (&[], &[]),
        (&[0, 1, 2], &[0, 1, 2]),
    ];
    for (data, owned) in [
        (base, &a),
        (tview.view(), &a),
        (stepped.view(), &stepped_owned),
    ] {
        for &(axes, uaxes) in axis_sets {
            for keepdim in [false, true] {
                let r = |f: &dyn Fn(&[f64]) -> f64| ref_reduce(owned, uaxes, keepdim, f);
                close(
                    &sum(&data, axes, keepdim).unwrap(),
                    &r(&|v| v.iter().sum()),
                    1e-12,
                );
                close(
                    &mean(&data, axes, keepdim).unwrap(),
                    &r(&|v| v.iter().sum::<f64>() / v.len() as f64),
                    1e-12,
                );
                close(
                    &prod(&data, axes, keepdim).unwrap(),
                    &r(&|v| v.iter().product()),
                    1e-12,
                );
                close(
                    &max(&data, axes, keepdim).unwrap(),
                    &r(&|v| v.iter().cloned().fold(f64::MIN, f64::max)),
                    0.0,
                );
                close(
                    &min(&data, axes, keepdim).unwrap(),
                    &r(&|v| v.iter().cloned().fold(f64::MAX, f64::min)),
                    0.0,
                );
                for corr in [0.0, 1.0] {
                    close(
                        &variance(&data, axes, keepdim, corr).unwrap(),
                        &r(&|v| var_ref(v, corr)),
                        1e-12,
                    );
                }
            }
        }
    }
}

#[cfg_attr(test, test)]
pub(crate) fn reduction_errors_and_edges() {
    let a = arr(&[2, 3], |i| i as f32);
    assert!(sum(&a.view(), &[2], false).is_err());
    assert!(sum(&a.view(), &[-3], false).is_err());
    assert!(sum(&a.view(), &[1, -1], false).is_err());
    assert!(mean(&a.view(), &[0, 0], true).is_err());
    let e = arr::<f32>(&[0, 3], |_| 0.0);
    assert!(max(&e.view(), &[0], false).is_err());
    assert!(min(&e.view(), &[], false).is_err());
    assert_eq!(max(&e.view(), &[1], false).unwrap().shape(), &[0]);
    let s0 = sum(&e.view(), &[0], false).unwrap();
    assert_eq!(s0.as_slice().unwrap(), &[0.0, 0.0, 0.0]);
    assert_eq!(
        prod(&e.view(), &[0], true).unwrap().as_slice().unwrap(),
        &[1.0, 1.0, 1.0]
    );
    assert!(mean(&e.view(), &[0], false)
        .unwrap()
        .iter()
        .all(|x| x.is_nan()));
    // 0-d input: reducing "all axes" is the identity
    let z = arr(&[], |_| 5.0f64);
    assert_eq!(sum(&z.view(), &[], false).unwrap()[IxDyn(&[])], 5.0);
    assert!(sum(&z.view(), &[0], false).is_err());
    // all axes without keepdim -> 0-d; with keepdim -> [1, 1]
    assert_eq!(sum(&a.view(), &[], false).unwrap().ndim(), 0);
    assert_eq!(sum(&a.view(), &[], true).unwrap().shape(), &[1, 1]);
    // NaN propagates through max/min
    let n = arr(&[4], |i| if i == 2 { f32::NAN } else { i as f32 });
    assert!(max(&n.view(), &[], false).unwrap()[IxDyn(&[])].is_nan());
    assert!(min(&n.view(), &[0], false).unwrap()[IxDyn(&[])].is_nan());
    // integers wrap
    let i = arr(&[2], |k| if k == 0 { i32::MAX } else { 1 });
    assert_eq!(sum(&i.view(), &[], false).unwrap()[IxDyn(&[])], i32::MIN);
    assert_eq!(max(&i.view(), &[0], false).unwrap()[IxDyn(&[])], i32::MAX);
    let l = arr(&[3, 2], |k| k as i64 + 1);
    assert_eq!(
        prod(&l.view(), &[0], false).unwrap().as_slice().unwrap(),
        &[15, 48]
    );
}

#[cfg_attr(test, test)]
pub(crate) fn long_sums_stay_accurate() {
    // 2^20 values of 0.1: a naive f32 running sum is off by ~1e-2 relative.
    let n = 1 << 20;
    let a = arr(&[n], |_| 0.1f32);
    let s = sum(&a.view(), &[], false).unwrap()[IxDyn(&[])] as f64;
    let want = n as f64 * 0.1f32 as f64;
    assert!((s - want).abs() / want < 1e-5, "{s} vs {want}");
    // the leading-axis (row block) path
    let r = arr(&[n / 2, 2], |_| 0.1f32);
    let s = sum(&r.view(), &[0], false).unwrap();
    for &x in s.iter() {
        assert!((x as f64 - want / 2.0).abs() / want < 1e-5, "{x}");
    }
    // the mean of half values accumulates in f32
    let h = arr(&[4096], |i| {
        f16::from_f32(if i % 2 == 0 { 1.0 } else { 2.0 })
    });
    assert_eq!(
        mean(&h.view(), &[], false).unwrap()[IxDyn(&[])],
        f16::from_f32(1.5)
    );
    assert_eq!(
        sum(&h.view(), &[], false).unwrap()[IxDyn(&[])],
        f16::from_f32(6144.0)
    );
    let v = variance(&h.view(), &[0], false, 0.0).unwrap();
    assert_eq!(v[IxDyn(&[])], f16::from_f32(0.25));
}

#[cfg_attr(test, test)]
pub(crate) fn argmax_argmin() {
    // ties resolve to the first index
    let a = ArrayD::from_shape_vec(
        IxDyn(&[2, 4]),
        vec![1.0f32, 3.0, 3.0, -1.0, 0.0, -2.0, 5.0, -2.0],
    )
    .unwrap();
    assert_eq!(
        argmax(&a.view(), 1, false).unwrap().as_slice().unwrap(),
        &[1, 2]
    );
    assert_eq!(
        argmin(&a.view(), -1, false).unwrap().as_slice().unwrap(),
        &[3, 1]
    );
    assert_eq!(
        argmax(&a.view(), 0, false).unwrap().as_slice().unwrap(),
        &[0, 0, 1, 0]
    );
    assert_eq!(argmin(&a.view(), 0, true).unwrap().shape(), &[1, 4]);
    assert_eq!(argmax(&a.view(), 1, true).unwrap().shape(), &[2, 1]);
    // transposed input
    let at = a.t().into_dyn();
    assert_eq!(argmax(&at, 0, false).unwrap().as_slice().unwrap(), &[1, 2]);
    // NaN wins, first occurrence
    let n = arr(&[5], |i| if i == 1 || i == 3 { f64::NAN } else { i as f64 });
    assert_eq!(argmax(&n.view(), 0, false).unwrap()[IxDyn(&[])], 1);
    assert_eq!(argmin(&n.view(), 0, false).unwrap()[IxDyn(&[])], 1);
    let i = arr(&[3, 3], |k| ((k * 7) % 5) as i32);
    assert_eq!(
        argmax(&i.view(), 1, false).unwrap().as_slice().unwrap(),
        &[2, 1, 1]
    );
    assert!(argmax(&arr::<f32>(&[3, 0], |_| 0.0).view(), 1, false).is_err());
    assert_eq!(
        argmax(&arr::<f32>(&[0, 3], |_| 0.0).view(), 1, false)
            .unwrap()
            .shape(),
        &[0]
    );
    assert!(argmax(&a.view(), 2, false).is_err());
    let h = arr(&[3], |k| bf16::from_f32(k as f32));
    assert_eq!(argmax(&h.view(), 0, false).unwrap()[IxDyn(&[])], 2);
}

// ---------------------------------------------------------------------------------------------
// softmax

#[cfg_attr(test, test)]
pub(crate) fn softmax_rows() {
    let a = arr(&[3, 5], rnd(9)).mapv(|x| x * 4.0);
    for axis in [0isize, 1, -1] {
        let s = softmax(&a.view(), axis).unwrap();
        let ls = log_softmax(&a.view(), axis).unwrap();
        let ax = if axis < 0 { 1 } else { axis as usize };
        for lane in s.lanes(Axis(ax)) {
            assert!((lane.sum() - 1.0).abs() < 1e-12);
        }
        close(&ls, &s.mapv(f64::ln), 1e-12);
        // reference
        let want = ArrayD::from_shape_fn(a.raw_dim(), |idx| {
            let lane = a.index_axis(Axis(1 - ax), if ax == 0 { idx[1] } else { idx[0] });
            let denom: f64 = lane.iter().map(|x| x.exp()).sum();
            a[&idx].exp() / denom
        });
        close(&s, &want, 1e-12);
    }
    // large magnitudes stay finite
    let big = ArrayD::from_shape_vec(
        IxDyn(&[2, 3]),
        vec![1000.0f32, 1001.0, 1002.0, -1000.0, -5000.0, -1001.0],
    )
    .unwrap();
    let s = softmax(&big.view(), 1).unwrap();
    assert!(s.iter().all(|x| x.is_finite()));
    assert!((s[[0, 2]] - 0.665_240_9).abs() < 1e-6);
    assert!((s[[1, 0]] - 0.731_058_6).abs() < 1e-6);
    assert_eq!(s[[1, 1]], 0.0);
    let ls = log_softmax(&big.view(), 1).unwrap();
    assert!(ls.iter().all(|x| x.is_finite()));
    assert!((ls[[1, 1]] - -4_000.313_3).abs() < 1e-2);
    // -inf entries get probability 0
    let m = ArrayD::from_shape_vec(IxDyn(&[2]), vec![0.0f64, f64::NEG_INFINITY]).unwrap();
    assert_eq!(
        softmax(&m.view(), 0).unwrap().as_slice().unwrap(),
        &[1.0, 0.0]
    );
    // half precision, non-contiguous, empty, errors
    let h = a.mapv(f16::from_f64);
    let ht = h.t().into_dyn();
    let sh = softmax(&ht, 0).unwrap();
    let sf = softmax(&a.t().into_dyn(), 0).unwrap();
    close(&f64s(&sh), &sf, 3e-3);
    assert_eq!(
        softmax(&arr::<f32>(&[0, 4], |_| 0.0).view(), 1)
            .unwrap()
            .shape(),
        &[0, 4]
    );
    assert!(softmax(&a.view(), 2).is_err());
    assert!(log_softmax(&a.view(), -3).is_err());
}

// ---------------------------------------------------------------------------------------------
// shape ops

#[cfg_attr(test, test)]
pub(crate) fn transpose_and_reshape() {
    let a = arr(&[2, 3, 4], |i| i as i32);
    let t = transpose(&a.view(), &[2, 0, 1]).unwrap();
    assert_eq!(t.shape(), &[4, 2, 3]);
    assert!(t.is_standard_layout());
    for idx in ndarray::indices(IxDyn(&[4, 2, 3])) {
        let i = idx.slice();
        assert_eq!(t[i], a[[i[1], i[2], i[0]]]);
    }
    assert!(transpose(&a.view(), &[0, 1]).is_err());
    assert!(transpose(&a.view(), &[0, 1, 1]).is_err());
    assert!(transpose(&a.view(), &[0, 1, 3]).is_err());

    let r = reshape(&a.view(), &[4, -1]).unwrap();
    assert_eq!(r.shape(), &[4, 6]);
    assert_eq!(r.as_slice().unwrap(), a.as_slice().unwrap());
    assert_eq!(reshape(&a.view(), &[-1]).unwrap().shape(), &[24]);
    // reshape reads the logical (row-major) order of a transposed view
    let at = a.view().permuted_axes(vec![2, 1, 0]);
    let rt = reshape(&at, &[-1]).unwrap();
    let want: Vec<i32> = at.iter().copied().collect();
    assert_eq!(rt.as_slice().unwrap(), &want[..]);
    let msg = op_msg(reshape(&a.view(), &[5, -1]).unwrap_err());
    assert!(
        msg.contains("[2, 3, 4]") && msg.contains("[5, -1]"),
        "{msg}"
    );
    assert!(reshape(&a.view(), &[-1, -1]).is_err());
    assert!(reshape(&a.view(), &[4, 5]).is_err());
    assert!(reshape(&a.view(), &[-2, 12]).is_err());
    let e = arr::<f32>(&[0, 3], |_| 0.0);
    assert_eq!(reshape(&e.view(), &[3, 0]).unwrap().shape(), &[3, 0]);
    assert!(reshape(&e.view(), &[0, -1]).is_err());
    assert_eq!(
        reshape(&arr(&[1], |_| 1.0f32).view(), &[]).unwrap().ndim(),
        0
    );
}

#[cfg_attr(test, test)]
pub(crate) fn concat_parts() {
    let a = arr(&[2, 3], |i| i as f32);
    let b = arr(&[1, 3], |i| 10.0 + i as f32);
    let c = concat(&[a.view(), b.view()], 0).unwrap();
    assert_eq!(c.shape(), &[3, 3]);
    assert_eq!(
        c.as_slice().unwrap(),
        &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 11.0, 12.0]
    );
    let d = arr(&[3, 2], |i| 20.0 + i as f32);
    let dt = d.t().into_dyn(); // [2, 3], non-contiguous
    let c = concat(
        &[a.view(), dt.clone(), arr::<f32>(&[2, 0], |_| 0.0).view()],
        -1,
    )
    .unwrap();
    assert_eq!(c.shape(), &[2, 6]);
    for i in 0..2 {
        for j in 0..6 {
            let want = if j < 3 { a[[i, j]] } else { dt[[i, j - 3]] };
            assert_eq!(c[[i, j]], want);
        }
    }
    let msg = op_msg(concat(&[a.view(), b.view()], 1).unwrap_err());
    assert!(msg.contains("[2, 3]") && msg.contains("[1, 3]"), "{msg}");
    assert!(concat::<f32>(&[], 0).is_err());
    assert!(concat(&[a.view(), arr(&[3], |_| 0.0f32).view()], 0).is_err());
    assert!(concat(&[arr(&[], |_| 0.0f32).view()], 0).is_err());
    assert!(concat(&[a.view()], 2).is_err());
}

fn sl1(a: &ArrayD<i32>, start: Option<isize>, end: Option<isize>, step: isize) -> Vec<i32> {
    slice(&a.view(), &[SliceArg::Range { start, end, step }])
        .unwrap()
        .iter()
        .copied()
        .collect()
}

#[cfg_attr(test, test)]
pub(crate) fn slicing_python_semantics() {
    let a = arr(&[10], |i| i as i32);
    assert_eq!(sl1(&a, None, None, -1), vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(sl1(&a, Some(8), Some(2), -2), vec![8, 6, 4]);
    assert_eq!(sl1(&a, Some(-3), None, 1), vec![7, 8, 9]);
    assert_eq!(sl1(&a, None, Some(-100), 1), Vec::<i32>::new());
    assert_eq!(sl1(&a, Some(100), None, 1), Vec::<i32>::new());
    assert_eq!(sl1(&a, None, None, -3), vec![9, 6, 3, 0]);
    assert_eq!(
        sl1(&a, Some(-1), Some(-11), -1),
        vec![9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    );
    assert_eq!(sl1(&a, Some(100), Some(-100), -4), vec![9, 5, 1]);
    assert_eq!(sl1(&a, Some(2), Some(9), 3), vec![2, 5, 8]);
    assert_eq!(sl1(&a, Some(5), Some(2), 1), Vec::<i32>::new());
    assert_eq!(sl1(&a, Some(3), Some(4), isize::MIN), Vec::<i32>::new());
    assert_eq!(sl1(&a, Some(3), None, isize::MIN), vec![3]);
    assert_eq!(sl1(&a, None, None, isize::MAX), vec![0]);

    let m = arr(&[3, 4], |i| i as i32);
    let r = slice(
        &m.view(),
        &[
            SliceArg::Index(1),
            SliceArg::Range {
                start: None,
                end: None,
                step: -2,
            },
        ],
    )
    .unwrap();
    assert_eq!(r.shape(), &[2]);
    assert_eq!(r.as_slice().unwrap(), &[7, 5]);
    let r = slice(
        &m.view(),
        &[SliceArg::NewAxis, SliceArg::FULL, SliceArg::Index(-1)],
    )
    .unwrap();
    assert_eq!(r.shape(), &[1, 3]);
    assert_eq!(r.as_slice().unwrap(), &[3, 7, 11]);
    let r = slice(
        &m.view(),
        &[SliceArg::Range {
            start: Some(-2),
            end: None,
            step: 1,
        }],
    )
    .unwrap();
    assert_eq!(r.shape(), &[2, 4]);
    assert_eq!(r.as_slice().unwrap(), &[4, 5, 6, 7, 8, 9, 10, 11]);
    let r = slice(
        &m.view(),
        &[SliceArg::FULL, SliceArg::FULL, SliceArg::NewAxis],
    )
    .unwrap();
    assert_eq!(r.shape(), &[3, 4, 1]);
    assert_eq!(slice(&m.view(), &[]).unwrap(), m);
    // on a transposed view
    let mt = m.t().into_dyn(); // [4, 3]
    let r = slice(
        &mt,
        &[
            SliceArg::Range {
                start: Some(1),
                end: None,
                step: 2,
            },
            SliceArg::Index(0),
        ],
    )
    .unwrap();
    assert_eq!(r.as_slice().unwrap(), &[1, 3]);

    let msg = op_msg(slice(&m.view(), &[SliceArg::FULL, SliceArg::Index(4)]).unwrap_err());
    assert!(msg.contains("index 4") && msg.contains("size 4"), "{msg}");
    assert!(slice(&m.view(), &[SliceArg::Index(-4)]).is_err());
    assert!(slice(
        &m.view(),
        &[SliceArg::Range {
            start: None,
            end: None,
            step: 0
        }]
    )
    .is_err());
    assert!(slice(
        &m.view(),
        &[SliceArg::Index(0), SliceArg::Index(0), SliceArg::Index(0)]
    )
    .is_err());
    let e = arr::<i32>(&[0, 2], |_| 0);
    assert_eq!(
        slice(
            &e.view(),
            &[SliceArg::Range {
                start: None,
                end: None,
                step: -1
            }]
        )
        .unwrap()
        .shape(),
        &[0, 2]
    );
    assert!(slice(&e.view(), &[SliceArg::Index(0)]).is_err());
}

#[cfg_attr(test, test)]
pub(crate) fn gather_take() {
    let t = arr(&[4, 3], |i| i as f32);
    let idx = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0i64, 1, 2, 2]).unwrap();
    let g = gather(&t.view(), &idx.view(), 0).unwrap();
    assert_eq!(g.shape(), &[2, 2, 3]);
    for a in 0..2 {
        for b in 0..2 {
            let row = idx[[a, b]] as usize;
            for c in 0..3 {
                assert_eq!(g[[a, b, c]], t[[row, c]]);
            }
        }
    }
    let g1 = gather(&t.view(), &idx.view(), -1).unwrap();
    assert_eq!(g1.shape(), &[4, 2, 2]);
    for r in 0..4 {
        for a in 0..2 {
            for b in 0..2 {
                assert_eq!(g1[[r, a, b]], t[[r, idx[[a, b]] as usize]]);
            }
        }
    }
    // scalar index removes the axis; i32 and float indices; non-contiguous table
    let s0 = gather(&t.view(), &arr(&[], |_| 2i32).view(), 0).unwrap();
    assert_eq!(s0.as_slice().unwrap(), &[6.0, 7.0, 8.0]);
    let tt = t.t().into_dyn(); // [3, 4]
    let gf = gather(&tt, &arr(&[2], |i| i as f32 * 1.9).view(), 0).unwrap(); // indices 0, 1
    assert_eq!(
        gf.as_slice().unwrap(),
        &[0.0, 3.0, 6.0, 9.0, 1.0, 4.0, 7.0, 10.0]
    );
    let msg = op_msg(gather(&t.view(), &arr(&[2], |i| (i * 4) as i64).view(), 0).unwrap_err());
    assert!(msg.contains("index 4") && msg.contains("size 4"), "{msg}");
    assert!(gather(&t.view(), &arr(&[1], |_| -5i64).view(), 0).is_err());
    // a negative id is an error naming it and its position, not the last row (PyTorch raises)
    let neg = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0i64, 1, -1, 2]).unwrap();
    let msg = op_msg(gather(&t.view(), &neg.view(), 0).unwrap_err());
    assert!(
        msg.contains("index -1 at position [1, 0]") && msg.contains("negative"),
        "{msg}"
    );
    // and so in the gradient scatters (which would otherwise write the last row)
    let g = arr(&[2, 2, 3], |_| 1.0f64);
    let like = arr(&[4, 3], |_| 0.0f64);
    let msg = op_msg(gather_backward(&g.view(), &neg.view(), &like.view(), 0).unwrap_err());
    assert!(msg.contains("index -1 at position [1, 0]"), "{msg}");
    let gh = arr(&[2, 2, 3], |_| bf16::ONE);
    let likeh = arr(&[4, 3], |_| bf16::ZERO);
    let msg = op_msg(gather_backward(&gh.view(), &neg.view(), &likeh.view(), 0).unwrap_err());
    assert!(msg.contains("index -1 at position [1, 0]"), "{msg}");
    let scores = arr(&[2, 2, 4], |_| 0.0f64);
    let gt = arr(&[2, 2], |_| 1.0f64);
    let msg = op_msg(take_along_backward(&gt.view(), &neg.view(), &scores.view()).unwrap_err());
    assert!(msg.contains("index -1 at position [1, 0]"), "{msg}");
    assert!(gather(&t.view(), &idx.view(), 2).is_err());
    assert_eq!(
        gather(&t.view(), &arr::<i64>(&[0], |_| 0).view(), 0)
            .unwrap()
            .shape(),
        &[0, 3]
    );
    assert!(gather(
        &arr::<f32>(&[0, 3], |_| 0.0).view(),
        &arr(&[1], |_| 0i64).view(),
        0
    )
    .is_err());
}

#[cfg_attr(test, test)]
pub(crate) fn casts() {
    let f = ArrayD::from_shape_vec(IxDyn(&[5]), vec![1.9f32, -1.9, 3e10, f32::NAN, -3e10]).unwrap();
    let i: ArrayD<i32> = cast(&f.view());
    assert_eq!(i.as_slice().unwrap(), &[1, -1, i32::MAX, 0, i32::MIN]);
    let big = ArrayD::from_shape_vec(IxDyn(&[4]), vec![(1i64 << 53) + 1, i64::MAX, i64::MIN, -7])
        .unwrap();
    let same: ArrayD<i64> = cast(&big.view());
    assert_eq!(same, big);
    let n: ArrayD<i32> = cast(&big.view());
    assert_eq!(n.as_slice().unwrap(), &[i32::MAX, i32::MAX, i32::MIN, -7]);
    let w: ArrayD<i64> = cast(&arr(&[2], |k| if k == 0 { i32::MIN } else { i32::MAX }).view());
    assert_eq!(w.as_slice().unwrap(), &[i32::MIN as i64, i32::MAX as i64]);
    let f32s: ArrayD<f32> = cast(&big.view());
    assert_eq!(f32s[[0]], ((1i64 << 53) + 1) as f32);
    let f64s_: ArrayD<f64> = cast(&big.view());
    assert_eq!(f64s_[[3]], -7.0);
    let h: ArrayD<f16> = cast(&arr(&[2], |k| k as f32 + 0.1).view());
    assert_eq!(
        h.as_slice().unwrap(),
        &[f16::from_f32(0.1), f16::from_f32(1.1)]
    );
    let back: ArrayD<f32> = cast(&h.view());
    assert_eq!(back[[0]], f16::from_f32(0.1).to_f32());
    let bf: ArrayD<bf16> = cast(&h.view());
    assert_eq!(bf[[1]], bf16::from_f32(f16::from_f32(1.1).to_f32()));
    let b: ArrayD<bool> = cast(
        &ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.0f64, -0.5, f64::NAN])
            .unwrap()
            .view(),
    );
    assert_eq!(b.as_slice().unwrap(), &[false, true, true]);
    let bi: ArrayD<i64> = cast(&b.view());
    assert_eq!(bi.as_slice().unwrap(), &[0, 1, 1]);
    let ib: ArrayD<bool> = cast(&big.view());
    assert!(ib.iter().all(|&x| x));
    // same type from a transposed view: a standard-layout copy
    let m = arr(&[2, 3], |k| k as f32);
    let mt: ArrayD<f32> = cast(&m.t().into_dyn());
    assert!(mt.is_standard_layout());
    assert_eq!(mt.as_slice().unwrap(), &[0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    let it: ArrayD<i64> = cast(&arr(&[2, 3], |k| k as i32).t().into_dyn());
    assert_eq!(it.as_slice().unwrap(), &[0, 3, 1, 4, 2, 5]);
    let e: ArrayD<f64> = cast(&arr::<i32>(&[0, 2], |_| 0).view());
    assert_eq!(e.shape(), &[0, 2]);
}

/// The fused-epilogue matmul against product-then-map, for every way an operand can be read
/// along a row segment: contiguous (residual), constant (a `[m, 1]` column), strided (a
/// transposed residual: gathered), reversed (negative strides: the slow path), and the
/// non-GEMM fallback (i64).
#[cfg_attr(test, test)]
pub(crate) fn matmul_epilogue_operand_layouts() {
    let (m, n, k) = (7usize, 70usize, 5usize);
    let a = ArrayD::from_shape_fn(IxDyn(&[m, k]), |i| (i[0] * k + i[1]) as f64 * 0.25 - 2.0);
    let b = ArrayD::from_shape_fn(IxDyn(&[k, n]), |i| 1.0 - (i[0] * n + i[1]) as f64 * 0.125);
    let res = ArrayD::from_shape_fn(IxDyn(&[m, n]), |i| (i[0] * n + i[1]) as f64 * 0.01);
    let res_t_store = ArrayD::from_shape_fn(IxDyn(&[n, m]), |i| (i[1] * n + i[0]) as f64 * 0.01);
    let res_t = res_t_store.t().into_dyn();
    let col = ArrayD::from_shape_fn(IxDyn(&[m, 1]), |i| i[0] as f64 - 3.0);
    let mut res_rev = res.clone();
    res_rev.invert_axis(Axis(1));
    let prod = a
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap()
        .dot(&b.view().into_dimensionality::<ndarray::Ix2>().unwrap());
    let seg = |v: &mut [f64], [r, c]: [mithril_kernels::ew::Src<'_, f64>; 2]| {
        mithril_kernels::ew::map3_inplace(v, r, c, |p, r, c| (p * c).max(0.0) + r)
    };
    // `reversed` is read backwards along the row: it holds the same values as `res`
    for (name, r, reversed) in [
        ("contiguous", res.view(), false),
        ("transposed", res_t.view(), false),
        ("reversed", res_rev.view(), true),
    ] {
        let got = crate::owned(|d| {
            matmul_epi_to(
                &a.view(),
                &b.view(),
                false,
                false,
                [&r, &col.view()],
                d,
                seg,
            )
            .map(|_| ())
        })
        .unwrap();
        for ((idx, &g), &p) in got.indexed_iter().zip(prod.iter()) {
            let j = if reversed { n - 1 - idx[1] } else { idx[1] };
            let want = (p * col[[idx[0], 0]]).max(0.0) + res[[idx[0], j]];
            assert_eq!(g, want, "{name} at {idx:?}");
        }
    }
    // integers take the product-then-epilogue path
    let ai = a.mapv(|x| (x * 4.0) as i64);
    let bi = b.mapv(|x| (x * 8.0) as i64);
    let bias = ArrayD::from_shape_fn(IxDyn(&[n]), |i| i[0] as i64);
    let got = crate::owned(|d| {
        matmul_epi_to(
            &ai.view(),
            &bi.view(),
            false,
            false,
            [&bias.view()],
            d,
            |v: &mut [i64], [s]: [mithril_kernels::ew::Src<'_, i64>; 1]| {
                mithril_kernels::ew::map2_inplace(v, s, |p, b| p + b)
            },
        )
        .map(|_| ())
    })
    .unwrap();
    let pi = ai
        .view()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap()
        .dot(&bi.view().into_dimensionality::<ndarray::Ix2>().unwrap());
    for ((idx, &g), &p) in got.indexed_iter().zip(pi.iter()) {
        assert_eq!(g, p + idx[1] as i64, "i64 at {idx:?}");
    }
}

/// A reversed (negative-stride) operand gives bitwise the product of the same values stored
/// contiguously, for every GEMM type and with an epilogue too (the kernel GEMM and a naive loop
/// sum in different orders, so a layout-dependent path shows up in the last bits).
#[cfg_attr(test, test)]
pub(crate) fn matmul_reversed_operands_match_contiguous_bitwise() {
    fn check<T: Elem>(from: impl Fn(f64) -> T)
    where
        T::Acc: crate::scalar::Num,
    {
        let (m, k, n) = (9usize, 300usize, 13usize);
        let r = rnd(7);
        let a = arr(&[m, k], |i| from(r(i)));
        let b = arr(&[k, n], |i| from(r(i + 5000)));
        // the same values as `a`, stored reversed along both axes, read through a view that
        // reverses them back (strides negative)
        let mut a_store = a.clone();
        a_store.invert_axis(Axis(0));
        a_store.invert_axis(Axis(1));
        let a_store = a_store.as_standard_layout().into_owned();
        let mut a_rev = a_store.view();
        a_rev.invert_axis(Axis(0));
        a_rev.invert_axis(Axis(1));
        assert!(a_rev.strides().iter().all(|&s| s < 0));
        assert_eq!(a_rev, a.view());
        let mut b_store = b.clone();
        b_store.invert_axis(Axis(0));
        let b_store = b_store.as_standard_layout().into_owned();
        let mut b_rev = b_store.view();
        b_rev.invert_axis(Axis(0));
        assert_eq!(b_rev, b.view());
        let want = matmul(&a.view(), &b.view(), false, false).unwrap();
        let got = matmul(&a_rev, &b_rev, false, false).unwrap();
        let bits = |x: &ArrayD<T>| x.iter().map(|v| v.to_f64().to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got), bits(&want), "{:?}", T::DTYPE);
        let bias = arr(&[n], |i| from(i as f64 * 0.5));
        let seg = |v: &mut [T::Acc], [s]: [mithril_kernels::ew::Src<'_, T>; 1]| {
            mithril_kernels::ew::map2_inplace(v, s, |p: T::Acc, b: T| {
                crate::scalar::Num::add(T::from_acc(p).to_acc(), b.to_acc())
            })
        };
        let epi = |a: &ArrayViewD<'_, T>, b: &ArrayViewD<'_, T>| {
            crate::owned(|d| matmul_epi_to(a, b, false, false, [&bias.view()], d, seg).map(|_| ()))
                .unwrap()
        };
        assert_eq!(
            bits(&epi(&a_rev, &b_rev)),
            bits(&epi(&a.view(), &b.view())),
            "epilogue {:?}",
            T::DTYPE
        );
    }
    check::<f32>(|x| x as f32);
    check::<f64>(|x| x);
    check::<bf16>(bf16::from_f64);
    check::<f16>(f16::from_f64);
}

/// `matmul_epi_2d_to` (the plan's fast case) takes every 2-D layout it accepts with the result
/// of `matmul_epi_to` bit for bit, and of a plain loop within rounding; it hands back what it
/// does not take (3-D, negative strides, mismatched inner dims), which `matmul_epi_to` handles.
#[cfg_attr(test, test)]
pub(crate) fn matmul_epi_2d_matches_the_general_path() {
    use crate::scalar::Num;
    use crate::Dest;
    use mithril_kernels::ew::{map3_inplace, Src};
    fn check<T: Elem + std::fmt::Debug>(to: impl Fn(f64) -> T)
    where
        T::Acc: crate::scalar::Num + std::fmt::Debug,
    {
        let seg = |v: &mut [T::Acc], [r, c]: [Src<'_, T>; 2]| {
            map3_inplace(v, r, c, |p: T::Acc, r: T, c: T| {
                let q = Num::to_f64(p) * c.to_f64() + r.to_f64();
                T::from_f64(q.max(0.0)).to_acc()
            })
        };
        for (m, k, n) in [(1, 7, 5), (5, 7, 1), (70, 9, 33), (3, 0, 4)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = if ta {
                    arr(&[k, m], rnd(1))
                } else {
                    arr(&[m, k], rnd(1))
                }
                .mapv(&to);
                let b = if tb {
                    arr(&[n, k], rnd(2))
                } else {
                    arr(&[k, n], rnd(2))
                }
                .mapv(&to);
                let full = arr(&[m, n], rnd(3)).mapv(&to);
                let full_t = arr(&[n, m], rnd(4)).mapv(&to);
                let row = arr(&[n], rnd(5)).mapv(&to);
                let row2 = arr(&[1, n], rnd(6)).mapv(&to);
                let col = arr(&[m, 1], rnd(7)).mapv(&to);
                let one = arr(&[], |_| 0.5).mapv(&to);
                let ft = full_t.t();
                let prod = arr(&[m, n], |i| {
                    let (r, c) = (i / n, i % n);
                    (0..k)
                        .map(|p| {
                            let x = if ta { a[[p, r]] } else { a[[r, p]] };
                            let y = if tb { b[[c, p]] } else { b[[p, c]] };
                            x.to_f64() * y.to_f64()
                        })
                        .sum::<f64>()
                });
                for (name, r, c) in [
                    ("full, row", full.view(), row.view()),
                    ("transposed (strided), [1, n]", ft.view(), row2.view()),
                    ("col, scalar", col.view(), one.view()),
                ] {
                    let what = format!("{name} m={m} k={k} n={n} ta={ta} tb={tb}");
                    let fast = crate::owned(|d| {
                        match matmul_epi_2d_to(&a.view(), &b.view(), ta, tb, [&r, &c], d, &seg) {
                            Ok(r) => r.map(|_| ()),
                            Err(_) => panic!("not taken: {what}"),
                        }
                    })
                    .unwrap();
                    let general = crate::owned(|d| {
                        matmul_epi_to(&a.view(), &b.view(), ta, tb, [&r, &c], d, seg).map(|_| ())
                    })
                    .unwrap();
                    assert_eq!(fast, general, "{what}");
                    let rb = r.broadcast(IxDyn(&[m, n])).unwrap();
                    let cb = c.broadcast(IxDyn(&[m, n])).unwrap();
                    for ((idx, g), p) in fast.indexed_iter().zip(prod.iter()) {
                        let want = (p * cb[&idx].to_f64() + rb[&idx].to_f64()).max(0.0);
                        let g = g.to_f64();
                        assert!(
                            (g - want).abs() <= 2e-2 * (1.0 + want.abs()),
                            "{what} {idx:?}"
                        );
                    }
                }
            }
        }
        // not taken: a 3-D `b`, a reversed operand, mismatched inner dims
        let a = arr(&[4, 3], rnd(8)).mapv(&to);
        let b = arr(&[3, 5], rnd(9)).mapv(&to);
        let row = arr(&[5], rnd(10)).mapv(&to);
        let mut rev = row.clone();
        rev.invert_axis(Axis(0));
        let b3 = arr(&[1, 3, 5], rnd(8)).mapv(&to);
        let bad = arr(&[4, 5], rnd(9)).mapv(&to);
        let mut o = None;
        let cases: [(&ArrayD<T>, &ArrayD<T>, &ArrayD<T>); 3] =
            [(&a, &b3, &row), (&a, &b, &rev), (&a, &bad, &row)];
        for (x, y, z) in cases {
            let r = matmul_epi_2d_to(
                &x.view(),
                &y.view(),
                false,
                false,
                [&z.view(), &z.view()],
                Dest::Owned(&mut o),
                &seg,
            );
            assert!(r.is_err());
        }
        assert!(o.is_none());
    }
    check::<f32>(|x| x as f32);
    check::<f64>(|x| x);
    check::<bf16>(bf16::from_f64);
    check::<f16>(f16::from_f64);
}

/// A sum over leading and trailing axes of a contiguous array (the bias gradient of a
/// convolution: `[N, C, H, W]` over axes 0, 2, 3; the trailing runs gathered whole) against
/// naive f64 loops, with `keepdim`, a unit axis, and the other reductions over the same layout.
#[cfg_attr(test, test)]
pub(crate) fn sums_over_outer_and_inner_axes_match_loops() {
    let (n, c, h, w) = (3usize, 5usize, 4usize, 7usize);
    let v: Vec<f64> = (0..n * c * h * w)
        .map(|i| ((i as f64) * 0.37).sin())
        .collect();
    let a = ArrayD::from_shape_vec(IxDyn(&[n, c, h, w]), v.clone()).unwrap();
    let at = |i: usize, j: usize, k: usize, l: usize| v[((i * c + j) * h + k) * w + l];
    let mut want = vec![0.0; c];
    for (j, s) in want.iter_mut().enumerate() {
        for i in 0..n {
            for k in 0..h {
                for l in 0..w {
                    *s += at(i, j, k, l);
                }
            }
        }
    }
    for keep in [false, true] {
        let got = sum(&a.view(), &[0, 2, 3], keep).unwrap();
        let shape: &[usize] = if keep { &[1, c, 1, 1] } else { &[c] };
        assert_eq!(got.shape(), shape);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() <= 1e-12 * (1.0 + e.abs()), "{g} vs {e}");
        }
    }
    // f32, and the maximum over the same axes
    let a32 = a.mapv(|x| x as f32);
    let got = sum(&a32.view(), &[0, 2, 3], false).unwrap();
    for (g, e) in got.iter().zip(&want) {
        assert!(
            (*g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()),
            "{g} vs {e}"
        );
    }
    let mx = max(&a.view(), &[0, 2, 3], false).unwrap();
    for (j, m) in mx.iter().enumerate() {
        let mut e = f64::NEG_INFINITY;
        for i in 0..n {
            for k in 0..h {
                for l in 0..w {
                    e = e.max(at(i, j, k, l));
                }
            }
        }
        assert_eq!(*m, e);
    }
    // a unit axis inside the trailing runs, and the middle axis reduced with a kept one after
    let b = a
        .clone()
        .into_shape_with_order(IxDyn(&[n, c, 1, h * w]))
        .unwrap();
    let got = sum(&b.view(), &[0, 2, 3], false).unwrap();
    for (g, e) in got.iter().zip(&want) {
        assert!((g - e).abs() <= 1e-12 * (1.0 + e.abs()), "{g} vs {e}");
    }
    let got = sum(&a.view(), &[1, 3], false).unwrap();
    for i in 0..n {
        for k in 0..h {
            let mut e = 0.0;
            for j in 0..c {
                for l in 0..w {
                    e += at(i, j, k, l);
                }
            }
            let g = got[[i, k]];
            assert!((g - e).abs() <= 1e-12 * (1.0 + e.abs()), "{g} vs {e}");
        }
    }
}

/// A `[.., m, k] @ [k, n]` product with an epilogue (a `Linear` over `[B, S, IN]` with its bias
/// and a residual): `matmul_epi_2d_to` takes it as one `[B·S, k]` GEMM when `a`'s leading axes
/// merge, bit for bit the 2-D product of the same rows, and within rounding of a plain loop;
/// operands whose rows do not merge (a sliced `a`, a transposed residual, a `[S, n]` residual
/// over `B > 1`) are handed back, and `matmul_epi_to` gives the loop's values for them too.
#[cfg_attr(test, test)]
pub(crate) fn matmul_epi_merges_leading_axes() {
    use crate::Dest;
    use mithril_kernels::ew::{map3_inplace, Src};
    let seg = |v: &mut [f64], [r, c]: [Src<'_, f64>; 2]| {
        map3_inplace(v, r, c, |p: f64, r: f64, c: f64| (p + c).max(0.0) + r)
    };
    let (k, n) = (7, 5);
    for lead in [vec![2usize, 3], vec![1, 4], vec![3, 1, 2]] {
        let m: usize = lead.iter().product();
        let shape = |last: usize| [lead.clone(), vec![last]].concat();
        let a = arr(&shape(k), rnd(1));
        let b = arr(&[k, n], rnd(2));
        let bias = arr(&[n], rnd(3));
        let res = arr(&shape(n), rnd(4));
        // a residual stored with its leading axes reversed (its rows merge only when at most
        // one leading axis is longer than 1), and one over the last two axes
        let nl = lead.len();
        let rev_lead: Vec<usize> = lead.iter().rev().copied().collect();
        let mut perm: Vec<usize> = (0..nl).rev().collect();
        perm.push(nl);
        let res_rev = arr(&[rev_lead, vec![n]].concat(), rnd(5));
        let res_rev = res_rev.view().permuted_axes(IxDyn(&perm));
        let last2 = arr(&shape(n)[lead.len() - 1..], rnd(6));
        let want = |r: &ArrayViewD<'_, f64>| {
            let rb = r.broadcast(IxDyn(&shape(n))).unwrap();
            let a2 = a.to_shape(IxDyn(&[m, k])).unwrap();
            ArrayD::from_shape_fn(IxDyn(&shape(n)), |idx| {
                let row = (0..lead.len()).fold(0, |acc, d| acc * lead[d] + idx[d]);
                let c = idx[lead.len()];
                let p: f64 = (0..k).map(|q| a2[[row, q]] * b[[q, c]]).sum();
                (p + bias[[c]]).max(0.0) + rb[&idx]
            })
        };
        let run_fast = |a: &ArrayViewD<'_, f64>, r: &ArrayViewD<'_, f64>| {
            let mut o = None;
            let taken = matmul_epi_2d_to(
                a,
                &b.view(),
                false,
                false,
                [r, &bias.view()],
                Dest::Owned(&mut o),
                &seg,
            )
            .is_ok();
            (taken, o)
        };
        let general = |a: &ArrayViewD<'_, f64>, r: &ArrayViewD<'_, f64>| {
            crate::owned(|d| {
                matmul_epi_to(a, &b.view(), false, false, [r, &bias.view()], d, seg).map(|_| ())
            })
            .unwrap()
        };
        let near = |got: &ArrayD<f64>, want: &ArrayD<f64>, what: &str| {
            assert_eq!(got.shape(), want.shape(), "{what}");
            for (g, w) in got.iter().zip(want.iter()) {
                assert!(
                    (g - w).abs() <= 1e-12 * (1.0 + w.abs()),
                    "{what}: {g} vs {w}"
                );
            }
        };
        // contiguous `a` and residual: one 2-D GEMM, bitwise the `[m, k] @ [k, n]` product
        let (taken, o) = run_fast(&a.view(), &res.view());
        assert!(taken, "{lead:?}");
        let o = o.unwrap();
        near(&o, &want(&res.view()), "merged");
        let a2 = a.to_shape(IxDyn(&[m, k])).unwrap().into_owned();
        let r2 = res.to_shape(IxDyn(&[m, n])).unwrap().into_owned();
        let flat = crate::owned(|d| {
            match matmul_epi_2d_to(
                &a2.view(),
                &b.view(),
                false,
                false,
                [&r2.view(), &bias.view()],
                d,
                &seg,
            ) {
                Ok(r) => r.map(|_| ()),
                Err(_) => panic!("2-D not taken"),
            }
        })
        .unwrap();
        assert_eq!(o.as_slice().unwrap(), flat.as_slice().unwrap(), "{lead:?}");
        assert_eq!(general(&a.view(), &res.view()), o, "{lead:?}");
        // a residual over the last two axes: taken when the other leading axes are 1
        let (taken, o) = run_fast(&a.view(), &last2.view());
        assert_eq!(
            taken,
            lead[..lead.len() - 1].iter().all(|&d| d == 1),
            "{lead:?}"
        );
        if let Some(o) = o {
            near(&o, &want(&last2.view()), "last two axes");
        }
        near(
            &general(&a.view(), &last2.view()),
            &want(&last2.view()),
            "last two axes",
        );
        let (taken, o) = run_fast(&a.view(), &res_rev);
        assert_eq!(
            taken,
            lead.iter().filter(|&&d| d > 1).count() <= 1,
            "{lead:?}"
        );
        if let Some(o) = o {
            near(&o, &want(&res_rev), "reversed residual");
        }
        near(
            &general(&a.view(), &res_rev),
            &want(&res_rev),
            "reversed residual",
        );
        // a sliced `a` (rows of a longer axis): handed back, computed by the general path
        let mut big_shape = shape(k);
        big_shape[lead.len() - 1] += 2;
        let big = arr(&big_shape, rnd(7));
        let sl = big.slice_each_axis(|ax| {
            if ax.axis.index() == lead.len() - 1 {
                ndarray::Slice::from(0..lead[lead.len() - 1])
            } else {
                ndarray::Slice::from(..)
            }
        });
        let (taken, o) = run_fast(&sl, &res.view());
        let merges = lead[..lead.len() - 1].iter().all(|&d| d == 1);
        assert_eq!(taken, merges, "sliced {lead:?}");
        assert_eq!(o.is_some(), merges);
        let g = general(&sl, &res.view());
        let a_sl = sl.to_owned();
        let want_sl = {
            let a2 = a_sl.to_shape(IxDyn(&[m, k])).unwrap();
            ArrayD::from_shape_fn(IxDyn(&shape(n)), |idx| {
                let row = (0..lead.len()).fold(0, |acc, d| acc * lead[d] + idx[d]);
                let c = idx[lead.len()];
                let p: f64 = (0..k).map(|q| a2[[row, q]] * b[[q, c]]).sum();
                (p + bias[[c]]).max(0.0) + res[&idx]
            })
        };
        near(&g, &want_sl, "sliced a");
    }
}

/// `norm_to` (the plan op of the compiler's `norm_fusion`): a layer norm with and without
/// weight and bias and an RMS norm against f64 loops, on a permuted (non-standard) input;
/// a weight that is not `[D]`, an RMS norm with a bias and an integer tensor are `Err`s.
#[cfg_attr(test, test)]
pub(crate) fn norm_to_matches_loops_and_rejects_bad_operands() {
    use crate::Dest;
    let d = 13;
    let x = arr(&[d, 3, 2], rnd(21)).mapv(|v| 3.0 * v + 0.5);
    // [2, 3, d]: last axis `d`, not in standard layout
    let xp = x.view().permuted_axes(IxDyn(&[2, 1, 0]));
    let w = arr(&[d], rnd(22));
    let b = arr(&[d], rnd(23));
    for (rms, wt, bt) in [
        (false, true, true),
        (false, false, false),
        (false, true, false),
        (true, true, false),
        (true, false, false),
    ] {
        let eps = 1e-5;
        let mut want = xp.to_owned();
        for mut row in want.lanes_mut(Axis(2)) {
            let n = d as f64;
            let mu = if rms { 0.0 } else { row.sum() / n };
            let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / n;
            for (i, v) in row.iter_mut().enumerate() {
                let y = (*v - mu) / (var + eps).sqrt();
                *v = y * if wt { w[i] } else { 1.0 } + if bt { b[i] } else { 0.0 };
            }
        }
        let (wv, bv) = (w.view(), b.view());
        let mut o = None;
        norm_to(
            &xp,
            wt.then_some(&wv),
            bt.then_some(&bv),
            eps,
            rms,
            Dest::Owned(&mut o),
        )
        .unwrap();
        close(&o.unwrap(), &want, 1e-13);
    }
    let bad = arr(&[d + 1], rnd(24));
    let (bv, wv) = (bad.view(), w.view());
    let mut o = None;
    assert!(norm_to(&xp, Some(&bv), None, 1e-5, false, Dest::Owned(&mut o)).is_err());
    assert!(norm_to(&xp, None, Some(&wv), 1e-5, true, Dest::Owned(&mut o)).is_err());
    let xi = arr(&[2, d], |i| i as i64);
    let mut oi = None;
    let e = norm_to(&xi.view(), None, None, 1e-5, false, Dest::Owned(&mut oi)).unwrap_err();
    assert!(e.to_string().contains("i64"), "{e}");
}

/// `attention_heads_to` (the plan op of the compiler's `head_fusion`): heads read from the
/// column blocks of one `[B, S, 3·H·D]` tensor and the output written merged are bit for bit
/// `attention_to` on the split, transposed copies followed by the merge; GQA with a plain
/// `[B, H, S, D]` key; operands that do not fit are `Err`s.
#[cfg_attr(test, test)]
pub(crate) fn attention_heads_to_is_the_split_attention_bitwise() {
    use crate::Dest;
    let (bn, s, h, dd) = (2, 9, 3, 4);
    let qkv = arr(&[bn, s, 3 * h * dd], rnd(31));
    // the head split of column block `k`: [B, H, S, D]
    let split = |k: usize| {
        qkv.slice(s![.., .., k * h * dd..(k + 1) * h * dd])
            .to_owned()
            .into_shape_with_order(IxDyn(&[bn, s, h, dd]))
            .unwrap()
            .permuted_axes(IxDyn(&[0, 2, 1, 3]))
            .as_standard_layout()
            .to_owned()
    };
    let (q, k, v) = (split(0), split(1), split(2));
    for causal in [false, true] {
        let mut o = None;
        attention_to(
            &q.view(),
            &k.view(),
            &v.view(),
            AttnMask::None,
            causal,
            None,
            Dest::Owned(&mut o),
        )
        .unwrap();
        let heads = o.unwrap();
        let merged = heads
            .view()
            .permuted_axes(IxDyn(&[0, 2, 1, 3]))
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order(IxDyn(&[bn, s, h * dd]))
            .unwrap();
        let col = |k: usize| HeadCols::Split {
            heads: h,
            width: dd,
            off: k * h * dd,
        };
        let qv = qkv.view();
        for merge in [true, false] {
            let mut f = None;
            attention_heads_to(
                (&qv, col(0)),
                (&qv, col(1)),
                (&qv, col(2)),
                AttnMask::None,
                causal,
                None,
                merge,
                Dest::Owned(&mut f),
            )
            .unwrap();
            let want = if merge { &merged } else { &heads };
            assert_eq!(&f.unwrap(), want, "causal {causal}, merge {merge}");
        }
        // one key / value head, plain: grouped-query attention
        let (k1, v1) = (
            k.slice(s![.., 0..1, .., ..]).to_owned().into_dyn(),
            v.slice(s![.., 0..1, .., ..]).to_owned().into_dyn(),
        );
        let mut want = None;
        attention_to(
            &q.view(),
            &k1.view(),
            &v1.view(),
            AttnMask::None,
            causal,
            Some(0.3),
            Dest::Owned(&mut want),
        )
        .unwrap();
        let mut f = None;
        attention_heads_to(
            (&qv, col(0)),
            (&k1.view(), HeadCols::Plain),
            (&v1.view(), HeadCols::Plain),
            AttnMask::None,
            causal,
            Some(0.3),
            false,
            Dest::Owned(&mut f),
        )
        .unwrap();
        assert_eq!(f.unwrap(), want.unwrap());
    }
    // a split past the last column, a plain operand of rank 3
    let qv = qkv.view();
    let past = HeadCols::Split {
        heads: h,
        width: dd,
        off: 2 * h * dd + 1,
    };
    let ok = HeadCols::Split {
        heads: h,
        width: dd,
        off: 0,
    };
    let mut f = None;
    let e = attention_heads_to(
        (&qv, ok),
        (&qv, ok),
        (&qv, past),
        AttnMask::None,
        false,
        None,
        true,
        Dest::Owned(&mut f),
    )
    .unwrap_err();
    assert!(e.to_string().contains("value"), "{e}");
    assert!(attention_heads_to(
        (&qv, ok),
        (&qv, HeadCols::Plain),
        (&qv, ok),
        AttnMask::None,
        false,
        None,
        true,
        Dest::Owned(&mut f),
    )
    .is_err());
}
