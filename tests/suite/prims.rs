//! Every primitive through the macro, compared against independent references computed here
//! with plain loops (never with mithril's runtime ops).

use mithril::half::{bf16, f16};
use mithril::ndarray::{Array, Array1, Array2, Array3, ArrayD, Dimension, IxDyn, arr0, arr1};
use mithril::prelude::*;

mithril! {
    model Broadcast {
        input a: f32[B, N];
        input row: f32[N];
        input col: f32[B, 1];
        input s: f32[];
        input t: f32[2, B, N];
        output add_row = a + row;
        output sub_col = a - col;
        output mul_scalar = a * s;
        output div_lit = a / 4.0;
        output outer = col * row;
        output rank_up = t + a;
        output lit_left = 1.0 - a;
        output min_row = minimum(a, row);
        output max_col = maximum(a, col);
        output fn_add = add(a, row);
        output fn_sub = subtract(row, a);
        output fn_mul = multiply(col, 3.0);
        output fn_div = divide(a, col);
        output neg = -a;
    }

    model Unary {
        input x: f32[N];
        output relu_ = relu(x);
        output sigmoid_ = sigmoid(x);
        output softplus_ = softplus(x);
        output gelu_ = gelu(x);
        output gelu_erf = gelu(x, approximate = "erf");
        output gelu_tanh = gelu(x, approximate = "tanh");
        output erf_ = erf(x);
        output leaky = leaky_relu(x, slope = 0.2);
        output leaky_default = x.leaky_relu();
        output clamped = clamp(x, min = -1.0, max = 2.5);
        output clamp_lo = clamp(x, min = 0.0);
        output sign_ = sign(x);
        output abs_ = abs(x);
        output neg_ = negate(x);
        output tanh_ = tanh(x);
        output square_ = square(x);
        output sin_ = sin(x);
        output cos_ = cos(x);
        output relu_method = x.relu();
    }

    model Positive {
        input x: f32[N];
        output exp_ = exp(x);
        output log_ = log(x);
        output sqrt_ = sqrt(x);
        output ln_method = x.log();
    }

    model Compare {
        input a: f32[N];
        input b: f32[N];
        input p: bool[N];
        input q: bool[N];
        output lt = a < b;
        output le = a <= b;
        output gt = a > b;
        output ge = a >= b;
        output eq = a == b;
        output ne = a != b;
        output lt_fn = less(a, b);
        output ge_fn = greater_equal(a, b);
        output eq_fn = equal(a, 1.0);
        output and_ = p && q;
        output or_ = p || q;
        output xor_ = p ^ q;
        output not_ = !p;
        output and_fn = logical_and(p, q);
        output or_fn = logical_or(p, q);
        output xor_fn = logical_xor(p, q);
        output not_fn = logical_not(q);
        output pick = where_(a > b, a, b * 2.0);
        output pick_lit = where_(p, a, 0.0);
        output masked_gt = (a > 0.0) && p;
    }

    model FloorRem {
        input a: f32[N];
        input b: f32[N];
        input i: i32[N];
        input j: i32[N];
        input k: i64[N];
        input l: i64[N];
        output fdiv = floor_divide(a, b);
        output frem = a % b;
        output frem_fn = remainder(a, b);
        output idiv = floor_divide(i, j);
        output irem = i % j;
        output ldiv = floor_divide(k, l);
        output lrem = remainder(k, l);
        output irem_lit = i % 3;
    }

    model Powers {
        input a: f32[N];
        input b: f32[N];
        input i: i64[N];
        output pw = power(a, b);
        output pw_half = power(a, 0.5);
        output pw_int = power(i, 3);
        output pw_two = power(a, 2.0);
    }

    model IntArith {
        input i: i32[N];
        input j: i32[N];
        input k: i64[N];
        output add32 = i + j;
        output sub32 = i - j;
        output mul32 = i * j;
        output lit32 = i * 3 + 1;
        output mixed = i + k;
        output neg32 = -i;
        output abs32 = abs(i);
        output max32 = maximum(i, j);
        output sq64 = square(k);
        output sum32 = i.sum();
        output relu32 = relu(i);
        output clamp32 = clamp(i, min = -2, max = 3);
        output sign64 = sign(k);
    }

    model Casts {
        input x: f32[N];
        input h: f16[N];
        input bh: bf16[N];
        input k: i64[N];
        input p: bool[N];
        output to_i32 = cast(x, dtype = i32);
        output to_f16 = x as f16;
        output to_bf16 = cast(x, dtype = bf16);
        output to_f64 = x as f64;
        output to_bool = x as bool;
        output h_to_f32 = h as f32;
        output bh_to_f32 = bh as f32;
        output k_to_f32 = k as f32;
        output p_to_f32 = p as f32;
        output p_to_i64 = p as i64;
        output h_mul = h * 3.0;
        output h_exp = exp(h);
        output h_add = h + h;
        output bh_mul = bh * bh;
        output bh_sig = sigmoid(bh);
        output h_to_bf16 = h as bf16;
    }

    model Matmuls {
        input a: f32[M, K];
        input b: f32[K, N];
        input ab: f32[2, M, K];
        input bb: f32[2, K, N];
        input a4: f32[3, 1, M, K];
        input b3: f32[4, K, N];
        input v: f32[K];
        input w: f32[N, K];
        output mm = matmul(a, b);
        output bmm = matmul(ab, bb);
        output bcast_left = matmul(ab, b);
        output bcast_batch = matmul(a4, b3);
        output vec_mat = matmul(v, b);
        output mat_vec = matmul(a, v);
        output dot = matmul(v, v);
        output xwt = matmul(a, w.T);
        output xwt_fn = matmul(a, transpose(w));
    }

    model Shapes {
        input x: f32[2, 3, 4];
        input m: f32[B, 6];
        output t_axes = transpose(x, axes = [1, 2, 0]);
        output t_rev = transpose(x);
        output m_t = m.T;
        output r_infer = reshape(x, shape = [-1, 4]);
        output r_front = reshape(x, [4, -1]);
        output r_sym = reshape(m, [B, 2, 3]);
        output r_sym_infer = reshape(m, [B, -1, 2]);
        output f_all = flatten(x);
        output f_tail = flatten(x, start_dim = 1);
        output f_head = flatten(x, start_dim = 0, end_dim = 1);
    }

    model Concats {
        input a: f32[B, 2];
        input b: f32[B, 3];
        input c: f32[1, 2];
        input d: f32[C, 3];
        output along1 = concat(a, b, axis = 1);
        output along0 = concat(a, c, axis = 0);
        output neg_axis = concat(b, a, b, axis = -1);
        output sym0 = concat(b, d);
    }

    model Slices {
        input x: f32[5, 4];
        input v: f32[N];
        output range_ = x[1..3];
        output last = x[-1];
        output rev = v.slice((..).step_by(-1));
        output rev_part = v.slice((3..0).step_by(-1));
        output stepped = x.slice(.., (0..4).step_by(2));
        output idx_col = x.slice(.., -2);
        output newaxis = x.slice(None, 1..4, 1..);
        output mixed = x.slice((..).step_by(-2), 2, None);
        output from_neg = v.slice(-3..);
        output incl = x[0..=1];
    }

    model Gathers {
        input table: f32[V, D];
        input ids: i64[B, T];
        input ids32: i32[T];
        input x: f32[B, C];
        input cls: i64[B];
        input cls32: i32[B];
        output emb = gather(table, ids, axis = 0);
        output emb32 = gather(table, ids32);
        output cols = gather(x, ids32, axis = 1);
        output picked = take_along(x, cls);
        output picked32 = take_along(x, cls32);
    }

    model Reductions {
        input x: f32[2, 3, 4];
        output sum_all = x.sum();
        output sum1 = x.sum(axis = 1);
        output sum_list = sum(x, axis = [0, 2]);
        output sum_neg = x.sum(axis = -1, keepdim = true);
        output mean_all = x.mean();
        output mean_keep = x.mean(axis = [1, 2], keepdim = true);
        output max0 = x.max(axis = 0);
        output min_neg = min(x, axis = -2);
        output max_all = x.max();
        output prod2 = x.prod(axis = 2);
        output var0 = variance(x, axis = -1);
        output var1 = variance(x, axis = -1, correction = 1);
        output var_all = x.variance(correction = 1.0);
        output var_keep = variance(x, axis = [0, 1], keepdim = true);
        output amax = argmax(x, axis = 1);
        output amin = argmin(x);
        output amax_keep = x.argmax(axis = 0, keepdim = true);
        output sm_last = softmax(x);
        output sm0 = softmax(x, axis = 0);
        output lsm = log_softmax(x, axis = 1);
        output lsm_last = x.log_softmax(axis = -1);
    }
}

// ------------------------------------------------------------------------------------------
// helpers
// ------------------------------------------------------------------------------------------

fn assert_close<D: Dimension>(got: &Array<f32, D>, want: &ArrayD<f64>, tol: f64, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (g, w)) in got.iter().zip(want.iter()).enumerate() {
        let g = *g as f64;
        let ok = if w.is_nan() {
            g.is_nan()
        } else if w.is_infinite() {
            g == *w
        } else {
            (g - w).abs() <= tol * (1.0 + w.abs())
        };
        assert!(ok, "{what}[{i}]: got {g}, want {w}");
    }
}

fn assert_eq_arr<T: PartialEq + std::fmt::Debug, D: Dimension>(
    got: &Array<T, D>,
    shape: &[usize],
    want: &[T],
    what: &str,
) {
    assert_eq!(got.shape(), shape, "{what}: shape");
    let g: Vec<&T> = got.iter().collect();
    let w: Vec<&T> = want.iter().collect();
    assert_eq!(g, w, "{what}");
}

/// Maps an f32 array elementwise in f64 into a reference.
fn map64<D: Dimension>(x: &Array<f32, D>, f: impl Fn(f64) -> f64) -> ArrayD<f64> {
    x.mapv(|v| f(v as f64)).into_dyn()
}

/// erf in f64: `2/sqrt(pi) * exp(-x^2) * sum x^(2n+1) 2^n / (1*3*...*(2n+1))` (all terms
/// positive, so no cancellation).
fn erf_ref(x: f64) -> f64 {
    if x.abs() > 6.0 {
        return x.signum();
    }
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    loop {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
        if term.abs() <= 1e-17 * sum.abs() {
            break;
        }
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}

/// Deterministic pseudo-random values in [-2, 2).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

fn arr_f32(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let n = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(shape), values(n, seed)).unwrap()
}

/// Plain-loop reference reduction of a 3-D array over the axes in `mask` (true = reduced),
/// in f64; `f` folds a list of values.
fn reduce3(x: &Array3<f32>, mask: [bool; 3], keep: bool, f: impl Fn(&[f64]) -> f64) -> ArrayD<f64> {
    let s = x.shape();
    let out_full: Vec<usize> = (0..3).map(|k| if mask[k] { 1 } else { s[k] }).collect();
    let mut out = Vec::new();
    for i in 0..out_full[0] {
        for j in 0..out_full[1] {
            for k in 0..out_full[2] {
                let mut vals = Vec::new();
                for a in 0..s[0] {
                    for b in 0..s[1] {
                        for c in 0..s[2] {
                            if (mask[0] || a == i) && (mask[1] || b == j) && (mask[2] || c == k) {
                                vals.push(x[[a, b, c]] as f64);
                            }
                        }
                    }
                }
                out.push(f(&vals));
            }
        }
    }
    let shape: Vec<usize> = if keep {
        out_full
    } else {
        (0..3).filter(|&k| !mask[k]).map(|k| s[k]).collect()
    };
    ArrayD::from_shape_vec(IxDyn(&shape), out).unwrap()
}

// ------------------------------------------------------------------------------------------
// elementwise binary with broadcasting
// ------------------------------------------------------------------------------------------

#[test]
fn broadcasting_binary_ops() {
    let (b, n) = (3, 4);
    let a = Array2::from_shape_vec((b, n), values(b * n, 1)).unwrap();
    let row = Array1::from(values(n, 2));
    let col = Array2::from_shape_vec((b, 1), values(b, 3)).unwrap();
    let s = arr0(1.5f32);
    let t = Array3::from_shape_vec((2, b, n), values(2 * b * n, 4)).unwrap();
    let m = Broadcast::new().unwrap();
    let out = m
        .evaluate(
            &m.randomize_params(0),
            BroadcastInputs {
                a: a.view(),
                row: row.view(),
                col: col.view(),
                s: s.view(),
                t: t.view(),
            },
        )
        .unwrap();
    let mut add_row = vec![];
    let mut sub_col = vec![];
    let mut mul_s = vec![];
    let mut div_lit = vec![];
    let mut outer = vec![];
    let mut lit_left = vec![];
    let mut min_row = vec![];
    let mut max_col = vec![];
    let mut fn_sub = vec![];
    let mut fn_mul = vec![];
    let mut fn_div = vec![];
    let mut neg = vec![];
    for i in 0..b {
        for j in 0..n {
            let x = a[[i, j]];
            add_row.push(x + row[j]);
            sub_col.push(x - col[[i, 0]]);
            mul_s.push(x * 1.5);
            div_lit.push(x / 4.0);
            outer.push(col[[i, 0]] * row[j]);
            lit_left.push(1.0 - x);
            min_row.push(x.min(row[j]));
            max_col.push(x.max(col[[i, 0]]));
            fn_sub.push(row[j] - x);
            fn_mul.push(col[[i, 0]] * 3.0);
            fn_div.push(x / col[[i, 0]]);
            neg.push(-x);
        }
    }
    let mut rank_up = vec![];
    for k in 0..2 {
        for i in 0..b {
            for j in 0..n {
                rank_up.push(t[[k, i, j]] + a[[i, j]]);
            }
        }
    }
    assert_eq_arr(&out.add_row, &[b, n], &add_row, "add_row");
    assert_eq_arr(&out.fn_add, &[b, n], &add_row, "fn_add");
    assert_eq_arr(&out.sub_col, &[b, n], &sub_col, "sub_col");
    assert_eq_arr(&out.mul_scalar, &[b, n], &mul_s, "mul_scalar");
    assert_eq_arr(&out.div_lit, &[b, n], &div_lit, "div_lit");
    assert_eq_arr(&out.outer, &[b, n], &outer, "outer");
    assert_eq_arr(&out.rank_up, &[2, b, n], &rank_up, "rank_up");
    assert_eq_arr(&out.lit_left, &[b, n], &lit_left, "lit_left");
    assert_eq_arr(&out.min_row, &[b, n], &min_row, "min_row");
    assert_eq_arr(&out.max_col, &[b, n], &max_col, "max_col");
    assert_eq_arr(&out.fn_sub, &[b, n], &fn_sub, "fn_sub");
    assert_eq_arr(
        &out.fn_mul,
        &[b, 1],
        &fn_mul[..].iter().step_by(n).copied().collect::<Vec<_>>(),
        "fn_mul",
    );
    assert_eq_arr(&out.fn_div, &[b, n], &fn_div, "fn_div");
    assert_eq_arr(&out.neg, &[b, n], &neg, "neg");
}

#[test]
fn symbolic_dims_take_any_size_per_call() {
    let m = Broadcast::new().unwrap();
    let p = m.randomize_params(0);
    for (b, n) in [(1, 1), (5, 2), (2, 7)] {
        let a = Array2::<f32>::ones((b, n));
        let row = Array1::<f32>::from_elem(n, 2.0);
        let col = Array2::<f32>::from_elem((b, 1), 3.0);
        let s = arr0(0.5f32);
        let t = Array3::<f32>::zeros((2, b, n));
        let out = m
            .evaluate(
                &p,
                BroadcastInputs {
                    a: a.view(),
                    row: row.view(),
                    col: col.view(),
                    s: s.view(),
                    t: t.view(),
                },
            )
            .unwrap();
        assert_eq_arr(&out.add_row, &[b, n], &vec![3.0; b * n], "add_row");
        assert_eq_arr(&out.outer, &[b, n], &vec![6.0; b * n], "outer");
        assert_eq_arr(&out.rank_up, &[2, b, n], &vec![1.0; 2 * b * n], "rank_up");
    }
}

// ------------------------------------------------------------------------------------------
// unary
// ------------------------------------------------------------------------------------------

const HAND: [f32; 15] = [
    -1000.0, -30.0, -5.0, -2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0, 5.0, 30.0, 1000.0,
];

#[test]
fn unary_activations_on_hand_values() {
    let x = arr1(&HAND);
    let m = Unary::new().unwrap();
    let o = m
        .evaluate(&m.randomize_params(0), UnaryInputs { x: x.view() })
        .unwrap();
    let tol = 2e-6;
    assert_close(&o.relu_, &map64(&x, |v| v.max(0.0)), 0.0, "relu");
    assert_close(
        &o.relu_method,
        &map64(&x, |v| v.max(0.0)),
        0.0,
        "relu method",
    );
    assert_close(
        &o.sigmoid_,
        &map64(&x, |v| 1.0 / (1.0 + (-v).exp())),
        tol,
        "sigmoid",
    );
    // softplus = ln(1 + e^x), computed stably in f64
    let sp = |v: f64| {
        if v > 30.0 {
            v + (-v).exp()
        } else {
            v.exp().ln_1p()
        }
    };
    assert_close(&o.softplus_, &map64(&x, sp), tol, "softplus");
    assert_eq!(o.softplus_[14], 1000.0, "softplus(1000) must not overflow");
    assert_eq!(o.softplus_[0], 0.0, "softplus(-1000)");
    assert!(o.sigmoid_.iter().all(|v| v.is_finite()), "sigmoid finite");
    let gelu = |v: f64| 0.5 * v * (1.0 + erf_ref(v / std::f64::consts::SQRT_2));
    assert_close(&o.gelu_, &map64(&x, gelu), tol, "gelu");
    assert_close(&o.gelu_erf, &map64(&x, gelu), tol, "gelu erf");
    let gt = |v: f64| {
        let k = (2.0 / std::f64::consts::PI).sqrt();
        0.5 * v * (1.0 + (k * (v + 0.044715 * v * v * v)).tanh())
    };
    assert_close(&o.gelu_tanh, &map64(&x, gt), tol, "gelu tanh");
    assert_close(&o.erf_, &map64(&x, erf_ref), tol, "erf");
    assert_close(
        &o.leaky,
        &map64(&x, |v| if v > 0.0 { v } else { 0.2 * v }),
        1e-7,
        "leaky",
    );
    assert_close(
        &o.leaky_default,
        &map64(&x, |v| if v > 0.0 { v } else { 0.01 * v }),
        1e-7,
        "leaky default slope",
    );
    assert_close(&o.clamped, &map64(&x, |v| v.clamp(-1.0, 2.5)), 0.0, "clamp");
    assert_close(
        &o.clamp_lo,
        &map64(&x, |v| v.max(0.0)),
        0.0,
        "clamp min only",
    );
    let sign = |v: f64| {
        if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        }
    };
    assert_close(&o.sign_, &map64(&x, sign), 0.0, "sign");
    assert_close(&o.abs_, &map64(&x, f64::abs), 0.0, "abs");
    assert_close(&o.neg_, &map64(&x, |v| -v), 0.0, "negate");
    assert_close(&o.tanh_, &map64(&x, f64::tanh), tol, "tanh");
    assert_close(&o.square_, &map64(&x, |v| v * v), 1e-7, "square");
    // sin/cos of +-1000 in f32 lose absolute precision; compare on the f32 argument
    assert_close(&o.sin_, &map64(&x, f64::sin), 1e-5, "sin");
    assert_close(&o.cos_, &map64(&x, f64::cos), 1e-5, "cos");
}

#[test]
fn unary_on_positive_values() {
    let x = arr1(&[1e-6f32, 0.25, 1.0, 2.0, 10.0, 80.0]);
    let m = Positive::new().unwrap();
    let o = m
        .evaluate(&m.randomize_params(0), PositiveInputs { x: x.view() })
        .unwrap();
    assert_close(&o.exp_, &map64(&x, f64::exp), 1e-6, "exp");
    assert_close(&o.log_, &map64(&x, f64::ln), 1e-6, "log");
    assert_close(&o.ln_method, &map64(&x, f64::ln), 1e-6, "log method");
    assert_close(&o.sqrt_, &map64(&x, f64::sqrt), 1e-6, "sqrt");
    // zero and negative: log(0) = -inf, sqrt(-1) = NaN (IEEE, no panic)
    let z = arr1(&[0.0f32, -1.0, 100.0]);
    let o = m
        .evaluate(&m.randomize_params(0), PositiveInputs { x: z.view() })
        .unwrap();
    assert_eq!(o.log_[0], f32::NEG_INFINITY);
    assert!(o.sqrt_[1].is_nan());
    assert_eq!(o.exp_[2], f32::INFINITY);
}

// ------------------------------------------------------------------------------------------
// comparisons, logic, where_
// ------------------------------------------------------------------------------------------

#[test]
fn comparisons_logic_and_where() {
    let a = arr1(&[1.0f32, -2.0, 3.0, 0.0, 5.0, -1.0]);
    let b = arr1(&[1.0f32, 2.0, -3.0, 0.0, 4.0, 0.0]);
    let p = arr1(&[true, true, false, false, true, false]);
    let q = arr1(&[true, false, true, false, false, true]);
    let m = Compare::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            CompareInputs {
                a: a.view(),
                b: b.view(),
                p: p.view(),
                q: q.view(),
            },
        )
        .unwrap();
    let n = a.len();
    let cmp = |f: fn(f32, f32) -> bool| -> Vec<bool> { (0..n).map(|i| f(a[i], b[i])).collect() };
    let lg = |f: fn(bool, bool) -> bool| -> Vec<bool> { (0..n).map(|i| f(p[i], q[i])).collect() };
    assert_eq_arr(&o.lt, &[n], &cmp(|x, y| x < y), "lt");
    assert_eq_arr(&o.lt_fn, &[n], &cmp(|x, y| x < y), "less");
    assert_eq_arr(&o.le, &[n], &cmp(|x, y| x <= y), "le");
    assert_eq_arr(&o.gt, &[n], &cmp(|x, y| x > y), "gt");
    assert_eq_arr(&o.ge, &[n], &cmp(|x, y| x >= y), "ge");
    assert_eq_arr(&o.ge_fn, &[n], &cmp(|x, y| x >= y), "greater_equal");
    assert_eq_arr(&o.eq, &[n], &cmp(|x, y| x == y), "eq");
    assert_eq_arr(&o.ne, &[n], &cmp(|x, y| x != y), "ne");
    let eq1: Vec<bool> = a.iter().map(|&x| x == 1.0).collect();
    assert_eq_arr(&o.eq_fn, &[n], &eq1, "equal literal");
    assert_eq_arr(&o.and_, &[n], &lg(|x, y| x && y), "and");
    assert_eq_arr(&o.and_fn, &[n], &lg(|x, y| x && y), "logical_and");
    assert_eq_arr(&o.or_, &[n], &lg(|x, y| x || y), "or");
    assert_eq_arr(&o.or_fn, &[n], &lg(|x, y| x || y), "logical_or");
    assert_eq_arr(&o.xor_, &[n], &lg(|x, y| x ^ y), "xor");
    assert_eq_arr(&o.xor_fn, &[n], &lg(|x, y| x ^ y), "logical_xor");
    assert_eq_arr(
        &o.not_,
        &[n],
        &p.iter().map(|x| !x).collect::<Vec<_>>(),
        "not",
    );
    assert_eq_arr(
        &o.not_fn,
        &[n],
        &q.iter().map(|x| !x).collect::<Vec<_>>(),
        "logical_not",
    );
    let pick: Vec<f32> = (0..n)
        .map(|i| if a[i] > b[i] { a[i] } else { b[i] * 2.0 })
        .collect();
    assert_eq_arr(&o.pick, &[n], &pick, "where_");
    let pick_lit: Vec<f32> = (0..n).map(|i| if p[i] { a[i] } else { 0.0 }).collect();
    assert_eq_arr(&o.pick_lit, &[n], &pick_lit, "where_ literal");
    let masked: Vec<bool> = (0..n).map(|i| a[i] > 0.0 && p[i]).collect();
    assert_eq_arr(&o.masked_gt, &[n], &masked, "compare and mask");
}

// ------------------------------------------------------------------------------------------
// floor_divide / remainder (Python semantics), power, integer arithmetic
// ------------------------------------------------------------------------------------------

fn py_floordiv(a: i64, b: i64) -> i64 {
    // explicit: the greatest q with q * b <= a (b > 0) / q * b >= a (b < 0)
    let mut q = a / b;
    if q * b != a && ((a < 0) != (b < 0)) {
        q -= 1;
    }
    q
}

fn py_mod(a: i64, b: i64) -> i64 {
    a - b * py_floordiv(a, b)
}

#[test]
fn floor_divide_and_remainder_follow_python() {
    let pairs: [(i64, i64); 10] = [
        (7, 2),
        (-7, 2),
        (7, -2),
        (-7, -2),
        (6, 3),
        (-6, 3),
        (0, 5),
        (1, -5),
        (-1, 5),
        (13, 4),
    ];
    // Python: -7 // 2 == -4, -7 % 2 == 1, 7 % -2 == -1
    assert_eq!(py_floordiv(-7, 2), -4);
    assert_eq!(py_mod(-7, 2), 1);
    assert_eq!(py_mod(7, -2), -1);
    let a = Array1::from_iter(pairs.iter().map(|p| p.0 as f32));
    let b = Array1::from_iter(pairs.iter().map(|p| p.1 as f32));
    let i = Array1::from_iter(pairs.iter().map(|p| p.0 as i32));
    let j = Array1::from_iter(pairs.iter().map(|p| p.1 as i32));
    let k = Array1::from_iter(pairs.iter().map(|p| p.0));
    let l = Array1::from_iter(pairs.iter().map(|p| p.1));
    let m = FloorRem::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            FloorRemInputs {
                a: a.view(),
                b: b.view(),
                i: i.view(),
                j: j.view(),
                k: k.view(),
                l: l.view(),
            },
        )
        .unwrap();
    let n = pairs.len();
    let fd: Vec<i64> = pairs.iter().map(|&(x, y)| py_floordiv(x, y)).collect();
    let md: Vec<i64> = pairs.iter().map(|&(x, y)| py_mod(x, y)).collect();
    assert_eq_arr(
        &o.fdiv,
        &[n],
        &fd.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        "float floor_divide",
    );
    assert_eq_arr(
        &o.frem,
        &[n],
        &md.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        "float %",
    );
    assert_eq_arr(
        &o.frem_fn,
        &[n],
        &md.iter().map(|&v| v as f32).collect::<Vec<_>>(),
        "float remainder",
    );
    assert_eq_arr(
        &o.idiv,
        &[n],
        &fd.iter().map(|&v| v as i32).collect::<Vec<_>>(),
        "i32 floor_divide",
    );
    assert_eq_arr(
        &o.irem,
        &[n],
        &md.iter().map(|&v| v as i32).collect::<Vec<_>>(),
        "i32 %",
    );
    assert_eq_arr(&o.ldiv, &[n], &fd, "i64 floor_divide");
    assert_eq_arr(&o.lrem, &[n], &md, "i64 remainder");
    let m3: Vec<i32> = pairs.iter().map(|&(x, _)| py_mod(x, 3) as i32).collect();
    assert_eq_arr(&o.irem_lit, &[n], &m3, "i32 % literal");

    // non-integral float operands
    let a = arr1(&[5.5f32, -5.5, 5.5, -5.5]);
    let b = arr1(&[2.0f32, 2.0, -2.0, -2.0]);
    let z = Array1::<i32>::ones(4);
    let zl = Array1::<i64>::ones(4);
    let o = m
        .evaluate(
            &m.randomize_params(0),
            FloorRemInputs {
                a: a.view(),
                b: b.view(),
                i: z.view(),
                j: z.view(),
                k: zl.view(),
                l: zl.view(),
            },
        )
        .unwrap();
    // Python: 5.5 // 2 = 2, -5.5 // 2 = -3, 5.5 // -2 = -3, -5.5 // -2 = 2
    // Python: 5.5 % 2 = 1.5, -5.5 % 2 = 0.5, 5.5 % -2 = -0.5, -5.5 % -2 = -1.5
    assert_eq_arr(
        &o.fdiv,
        &[4],
        &[2.0, -3.0, -3.0, 2.0],
        "fractional floor_divide",
    );
    assert_eq_arr(
        &o.frem,
        &[4],
        &[1.5, 0.5, -0.5, -1.5],
        "fractional remainder",
    );
}

#[test]
fn power_float_and_integer() {
    let a = arr1(&[2.0f32, 0.5, 9.0, 1.5, 0.0, 4.0]);
    let b = arr1(&[3.0f32, -1.0, 0.5, 2.0, 2.0, -0.5]);
    let i = arr1(&[2i64, -3, 0, 1, 10, -1]);
    let m = Powers::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            PowersInputs {
                a: a.view(),
                b: b.view(),
                i: i.view(),
            },
        )
        .unwrap();
    let pw: ArrayD<f64> = ArrayD::from_shape_vec(
        IxDyn(&[6]),
        (0..6).map(|k| (a[k] as f64).powf(b[k] as f64)).collect(),
    )
    .unwrap();
    assert_close(&o.pw, &pw, 1e-6, "power");
    assert_close(&o.pw_half, &map64(&a, f64::sqrt), 1e-6, "power 0.5");
    assert_close(&o.pw_two, &map64(&a, |v| v * v), 1e-6, "power 2.0");
    assert_eq_arr(
        &o.pw_int,
        &[6],
        &[8i64, -27, 0, 1, 1000, -1],
        "integer power",
    );
}

#[test]
fn integer_arithmetic_i32_i64() {
    let i = arr1(&[3i32, -4, 0, 7, -1]);
    let j = arr1(&[2i32, 5, -3, -7, -1]);
    let k = arr1(&[10i64, -20, 30, 1 << 40, -5]);
    let m = IntArith::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            IntArithInputs {
                i: i.view(),
                j: j.view(),
                k: k.view(),
            },
        )
        .unwrap();
    let n = i.len();
    let zip = |f: fn(i32, i32) -> i32| (0..n).map(|t| f(i[t], j[t])).collect::<Vec<_>>();
    assert_eq_arr(&o.add32, &[n], &zip(|x, y| x + y), "i32 add");
    assert_eq_arr(&o.sub32, &[n], &zip(|x, y| x - y), "i32 sub");
    assert_eq_arr(&o.mul32, &[n], &zip(|x, y| x * y), "i32 mul");
    assert_eq_arr(&o.max32, &[n], &zip(|x, y| x.max(y)), "i32 maximum");
    assert_eq_arr(
        &o.lit32,
        &[n],
        &i.iter().map(|x| x * 3 + 1).collect::<Vec<_>>(),
        "i32 literal",
    );
    let mixed: Vec<i64> = (0..n).map(|t| i[t] as i64 + k[t]).collect();
    assert_eq_arr(&o.mixed, &[n], &mixed, "i32 + i64 -> i64");
    assert_eq_arr(
        &o.neg32,
        &[n],
        &i.iter().map(|x| -x).collect::<Vec<_>>(),
        "i32 neg",
    );
    assert_eq_arr(
        &o.abs32,
        &[n],
        &i.iter().map(|x| x.abs()).collect::<Vec<_>>(),
        "i32 abs",
    );
    assert_eq_arr(
        &o.sq64,
        &[n],
        &k.iter().map(|x| x.wrapping_mul(*x)).collect::<Vec<_>>(),
        "i64 square",
    );
    assert_eq_arr(&o.sum32, &[], &[i.iter().sum::<i32>()], "i32 sum");
    assert_eq_arr(
        &o.relu32,
        &[n],
        &i.iter().map(|x| (*x).max(0)).collect::<Vec<_>>(),
        "i32 relu",
    );
    assert_eq_arr(
        &o.clamp32,
        &[n],
        &i.iter().map(|x| (*x).clamp(-2, 3)).collect::<Vec<_>>(),
        "i32 clamp",
    );
    assert_eq_arr(
        &o.sign64,
        &[n],
        &k.iter().map(|x| x.signum()).collect::<Vec<_>>(),
        "i64 sign",
    );
}

// ------------------------------------------------------------------------------------------
// casts and narrow floats
// ------------------------------------------------------------------------------------------

#[test]
fn casts_between_dtypes() {
    let xs = [-2.7f32, -0.5, 0.0, 0.4, 1.0, 3.999, 65504.0, 1.0e-3];
    let x = arr1(&xs);
    let h = x.mapv(f16::from_f32);
    let bh = x.mapv(bf16::from_f32);
    let k = arr1(&[-3i64, 0, 1, 2, 1 << 20, 7, -1, 100]);
    let p = arr1(&[true, false, true, true, false, false, true, false]);
    let m = Casts::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            CastsInputs {
                x: x.view(),
                h: h.view(),
                bh: bh.view(),
                k: k.view(),
                p: p.view(),
            },
        )
        .unwrap();
    let n = xs.len();
    // float -> int truncates toward zero (like NumPy's astype)
    assert_eq_arr(
        &o.to_i32,
        &[n],
        &xs.iter().map(|v| v.trunc() as i32).collect::<Vec<_>>(),
        "f32->i32",
    );
    assert_eq_arr(
        &o.to_f16,
        &[n],
        &xs.iter().map(|v| f16::from_f32(*v)).collect::<Vec<_>>(),
        "f32->f16",
    );
    assert_eq_arr(
        &o.to_bf16,
        &[n],
        &xs.iter().map(|v| bf16::from_f32(*v)).collect::<Vec<_>>(),
        "f32->bf16",
    );
    assert_eq_arr(
        &o.to_f64,
        &[n],
        &xs.iter().map(|v| *v as f64).collect::<Vec<_>>(),
        "f32->f64",
    );
    assert_eq_arr(
        &o.to_bool,
        &[n],
        &xs.iter().map(|v| *v != 0.0).collect::<Vec<_>>(),
        "f32->bool",
    );
    assert_eq_arr(
        &o.h_to_f32,
        &[n],
        &h.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
        "f16->f32",
    );
    assert_eq_arr(
        &o.bh_to_f32,
        &[n],
        &bh.iter().map(|v| v.to_f32()).collect::<Vec<_>>(),
        "bf16->f32",
    );
    assert_eq_arr(
        &o.k_to_f32,
        &[n],
        &k.iter().map(|v| *v as f32).collect::<Vec<_>>(),
        "i64->f32",
    );
    assert_eq_arr(
        &o.p_to_f32,
        &[n],
        &p.iter().map(|v| *v as u8 as f32).collect::<Vec<_>>(),
        "bool->f32",
    );
    assert_eq_arr(
        &o.p_to_i64,
        &[n],
        &p.iter().map(|v| *v as i64).collect::<Vec<_>>(),
        "bool->i64",
    );
    assert_eq_arr(
        &o.h_to_bf16,
        &[n],
        &h.iter()
            .map(|v| bf16::from_f32(v.to_f32()))
            .collect::<Vec<_>>(),
        "f16->bf16",
    );
    // narrow-float ops compute in f32 and round once on store
    let hm: Vec<f16> = h.iter().map(|v| f16::from_f32(v.to_f32() * 3.0)).collect();
    assert_eq_arr(&o.h_mul, &[n], &hm, "f16 * 3.0");
    let hadd: Vec<f16> = h
        .iter()
        .map(|v| f16::from_f32(v.to_f32() + v.to_f32()))
        .collect();
    assert_eq_arr(&o.h_add, &[n], &hadd, "f16 + f16");
    let bm: Vec<bf16> = bh
        .iter()
        .map(|v| bf16::from_f32(v.to_f32() * v.to_f32()))
        .collect();
    assert_eq_arr(&o.bh_mul, &[n], &bm, "bf16 * bf16");
    for t in 0..n {
        let want = f16::from_f32((h[t].to_f32() as f64).exp() as f32);
        let got = o.h_exp[t];
        // exp in f32 may differ from the f64 reference in the last f32 bit; after rounding to
        // f16 this is at most one f16 ulp
        let ulp = (want.to_f32() - got.to_f32()).abs();
        assert!(
            got == want || ulp <= want.to_f32().abs() * 1e-3,
            "f16 exp[{t}]: got {got}, want {want}"
        );
        let s = 1.0 / (1.0 + (-(bh[t].to_f32() as f64)).exp());
        let want = bf16::from_f32(s as f32);
        let got = o.bh_sig[t];
        assert!(
            got == want || (got.to_f32() - want.to_f32()).abs() <= want.to_f32().abs() * 8e-3,
            "bf16 sigmoid[{t}]: got {got}, want {want}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// matmul
// ------------------------------------------------------------------------------------------

/// Plain triple loop, in f64.
fn mm_ref(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
    let mut c = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for t in 0..k {
                s += a[i * k + t] as f64 * b[t * n + j] as f64;
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn flat(x: &ArrayD<f32>) -> Vec<f32> {
    x.iter().copied().collect()
}

#[test]
fn matmul_all_forms() {
    let (mm, k, n) = (3, 5, 4);
    let a = arr_f32(&[mm, k], 10);
    let b = arr_f32(&[k, n], 11);
    let ab = arr_f32(&[2, mm, k], 12);
    let bb = arr_f32(&[2, k, n], 13);
    let a4 = arr_f32(&[3, 1, mm, k], 14);
    let b3 = arr_f32(&[4, k, n], 15);
    let v = arr_f32(&[k], 16);
    let w = arr_f32(&[n, k], 17);
    let a2 = a.clone().into_dimensionality().unwrap();
    let b2 = b.clone().into_dimensionality().unwrap();
    let ab3 = ab.clone().into_dimensionality().unwrap();
    let bb3 = bb.clone().into_dimensionality().unwrap();
    let a44 = a4.clone().into_dimensionality().unwrap();
    let b33 = b3.clone().into_dimensionality().unwrap();
    let v1 = v.clone().into_dimensionality().unwrap();
    let w2 = w.clone().into_dimensionality().unwrap();
    let model = Matmuls::new().unwrap();
    let o = model
        .evaluate(
            &model.randomize_params(0),
            MatmulsInputs {
                a: a2.view(),
                b: b2.view(),
                ab: ab3.view(),
                bb: bb3.view(),
                a4: a44.view(),
                b3: b33.view(),
                v: v1.view(),
                w: w2.view(),
            },
        )
        .unwrap();
    let tol = 1e-5;
    let to = |shape: &[usize], v: Vec<f64>| ArrayD::from_shape_vec(IxDyn(shape), v).unwrap();
    let (fa, fb) = (flat(&a), flat(&b));
    assert_close(&o.mm, &to(&[mm, n], mm_ref(&fa, &fb, mm, k, n)), tol, "2-D");
    // batched, both batched
    let mut want = vec![];
    for t in 0..2 {
        let fa = &flat(&ab)[t * mm * k..(t + 1) * mm * k];
        let fb = &flat(&bb)[t * k * n..(t + 1) * k * n];
        want.extend(mm_ref(fa, fb, mm, k, n));
    }
    assert_close(&o.bmm, &to(&[2, mm, n], want), tol, "batched");
    // batched left, 2-D right broadcast
    let mut want = vec![];
    for t in 0..2 {
        let fa = &flat(&ab)[t * mm * k..(t + 1) * mm * k];
        want.extend(mm_ref(fa, &fb, mm, k, n));
    }
    assert_close(
        &o.bcast_left,
        &to(&[2, mm, n], want),
        tol,
        "broadcast right",
    );
    // [3, 1, M, K] @ [4, K, N] -> [3, 4, M, N]
    let mut want = vec![];
    let (f4, f3) = (flat(&a4), flat(&b3));
    for s in 0..3 {
        for t in 0..4 {
            want.extend(mm_ref(
                &f4[s * mm * k..(s + 1) * mm * k],
                &f3[t * k * n..(t + 1) * k * n],
                mm,
                k,
                n,
            ));
        }
    }
    assert_close(
        &o.bcast_batch,
        &to(&[3, 4, mm, n], want),
        tol,
        "broadcast batch dims",
    );
    let fv = flat(&v);
    assert_close(
        &o.vec_mat,
        &to(&[n], mm_ref(&fv, &fb, 1, k, n)),
        tol,
        "vector @ matrix",
    );
    assert_close(
        &o.mat_vec,
        &to(&[mm], mm_ref(&fa, &fv, mm, k, 1)),
        tol,
        "matrix @ vector",
    );
    assert_close(
        &o.dot,
        &to(&[], mm_ref(&fv, &fv, 1, k, 1)),
        tol,
        "vector @ vector",
    );
    // x @ w.T with w: [N, K]
    let mut wt = vec![0.0f32; k * n];
    for i in 0..n {
        for j in 0..k {
            wt[j * n + i] = w[[i, j]];
        }
    }
    let want = to(&[mm, n], mm_ref(&fa, &wt, mm, k, n));
    assert_close(&o.xwt, &want, tol, "x @ w.T");
    assert_close(&o.xwt_fn, &want, tol, "x @ transpose(w)");
}

// ------------------------------------------------------------------------------------------
// transpose, reshape, flatten, concat
// ------------------------------------------------------------------------------------------

#[test]
fn transpose_reshape_flatten() {
    let x = Array3::from_shape_vec((2, 3, 4), (0..24).map(|v| v as f32).collect()).unwrap();
    let b = 3;
    let m6 = Array2::from_shape_vec((b, 6), (0..18).map(|v| v as f32 * 0.5).collect()).unwrap();
    let m = Shapes::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            ShapesInputs {
                x: x.view(),
                m: m6.view(),
            },
        )
        .unwrap();
    // transpose(axes = [1, 2, 0]): out[j, k, i] = x[i, j, k]
    let mut want = vec![];
    for j in 0..3 {
        for k in 0..4 {
            for i in 0..2 {
                want.push(x[[i, j, k]]);
            }
        }
    }
    assert_eq_arr(&o.t_axes, &[3, 4, 2], &want, "transpose axes");
    let mut want = vec![];
    for k in 0..4 {
        for j in 0..3 {
            for i in 0..2 {
                want.push(x[[i, j, k]]);
            }
        }
    }
    assert_eq_arr(&o.t_rev, &[4, 3, 2], &want, "transpose default reverses");
    let mut want = vec![];
    for j in 0..6 {
        for i in 0..b {
            want.push(m6[[i, j]]);
        }
    }
    assert_eq_arr(&o.m_t, &[6, b], &want, ".T");
    let rowmajor: Vec<f32> = (0..24).map(|v| v as f32).collect();
    assert_eq_arr(&o.r_infer, &[6, 4], &rowmajor, "reshape [-1, 4]");
    assert_eq_arr(&o.r_front, &[4, 6], &rowmajor, "reshape [4, -1]");
    let mrow: Vec<f32> = (0..18).map(|v| v as f32 * 0.5).collect();
    assert_eq_arr(&o.r_sym, &[b, 2, 3], &mrow, "reshape [B, 2, 3]");
    assert_eq_arr(&o.r_sym_infer, &[b, 3, 2], &mrow, "reshape [B, -1, 2]");
    assert_eq_arr(&o.f_all, &[24], &rowmajor, "flatten");
    assert_eq_arr(&o.f_tail, &[2, 12], &rowmajor, "flatten(start_dim = 1)");
    assert_eq_arr(&o.f_head, &[6, 4], &rowmajor, "flatten(0, 1)");
    // the output types carry the static ranks
    let _: &Array3<f32> = &o.t_axes;
    let _: &Array2<f32> = &o.f_tail;
    let _: &Array1<f32> = &o.f_all;
}

#[test]
fn concat_with_symbolic_dims() {
    let (b, c) = (2, 3);
    let a = Array2::from_shape_vec((b, 2), values(b * 2, 20)).unwrap();
    let bb = Array2::from_shape_vec((b, 3), values(b * 3, 21)).unwrap();
    let cc = Array2::from_shape_vec((1, 2), values(2, 22)).unwrap();
    let d = Array2::from_shape_vec((c, 3), values(c * 3, 23)).unwrap();
    let m = Concats::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            ConcatsInputs {
                a: a.view(),
                b: bb.view(),
                c: cc.view(),
                d: d.view(),
            },
        )
        .unwrap();
    let mut want = vec![];
    for i in 0..b {
        want.extend(a.row(i).iter().copied());
        want.extend(bb.row(i).iter().copied());
    }
    assert_eq_arr(&o.along1, &[b, 5], &want, "concat axis 1");
    let mut want: Vec<f32> = a.iter().copied().collect();
    want.extend(cc.iter().copied());
    assert_eq_arr(&o.along0, &[b + 1, 2], &want, "concat axis 0");
    let mut want = vec![];
    for i in 0..b {
        want.extend(bb.row(i).iter().copied());
        want.extend(a.row(i).iter().copied());
        want.extend(bb.row(i).iter().copied());
    }
    assert_eq_arr(&o.neg_axis, &[b, 8], &want, "concat axis -1 of three");
    let mut want: Vec<f32> = bb.iter().copied().collect();
    want.extend(d.iter().copied());
    assert_eq_arr(&o.sym0, &[b + c, 3], &want, "concat of B and C rows");
}

// ------------------------------------------------------------------------------------------
// slicing and indexing
// ------------------------------------------------------------------------------------------

/// Python's `range(*slice(lo, hi, step).indices(n))`, by explicit iteration over candidates.
fn py_slice(n: i64, lo: Option<i64>, hi: Option<i64>, step: i64) -> Vec<usize> {
    let norm = |v: i64| if v < 0 { v + n } else { v };
    let mut out = vec![];
    if step > 0 {
        let start = lo.map(norm).unwrap_or(0).clamp(0, n);
        let stop = hi.map(norm).unwrap_or(n).clamp(0, n);
        let mut i = start;
        while i < stop {
            out.push(i as usize);
            i += step;
        }
    } else {
        let start = lo.map(norm).unwrap_or(n - 1).clamp(-1, n - 1);
        let stop = hi.map(norm).unwrap_or(-1).clamp(-1, n - 1);
        let mut i = start;
        while i > stop {
            out.push(i as usize);
            i += step;
        }
    }
    out
}

#[test]
fn slicing_and_indexing() {
    let x = Array2::from_shape_vec((5, 4), (0..20).map(|v| v as f32).collect()).unwrap();
    let n = 6;
    let v = Array1::from_iter((0..n).map(|i| 10.0 * i as f32));
    let m = Slices::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            SlicesInputs {
                x: x.view(),
                v: v.view(),
            },
        )
        .unwrap();
    let pick2 = |rows: &[usize], cols: &[usize]| -> Vec<f32> {
        let mut out = vec![];
        for &r in rows {
            for &c in cols {
                out.push(x[[r, c]]);
            }
        }
        out
    };
    let all4: Vec<usize> = (0..4).collect();
    assert_eq_arr(
        &o.range_,
        &[2, 4],
        &pick2(&py_slice(5, Some(1), Some(3), 1), &all4),
        "x[1..3]",
    );
    assert_eq_arr(&o.last, &[4], &pick2(&[4], &all4), "x[-1]");
    let rev = py_slice(n as i64, None, None, -1);
    assert_eq_arr(
        &o.rev,
        &[n],
        &rev.iter().map(|&i| v[i]).collect::<Vec<_>>(),
        "v[::-1]",
    );
    let rp = py_slice(n as i64, Some(3), Some(0), -1);
    assert_eq!(rp, vec![3, 2, 1]);
    assert_eq_arr(
        &o.rev_part,
        &[3],
        &rp.iter().map(|&i| v[i]).collect::<Vec<_>>(),
        "v[3:0:-1]",
    );
    let st = py_slice(4, Some(0), Some(4), 2);
    assert_eq_arr(
        &o.stepped,
        &[5, 2],
        &pick2(&(0..5).collect::<Vec<_>>(), &st),
        "x[:, 0:4:2]",
    );
    assert_eq_arr(
        &o.idx_col,
        &[5],
        &pick2(&(0..5).collect::<Vec<_>>(), &[2]),
        "x[:, -2]",
    );
    assert_eq_arr(
        &o.newaxis,
        &[1, 3, 3],
        &pick2(
            &py_slice(5, Some(1), Some(4), 1),
            &py_slice(4, Some(1), None, 1),
        ),
        "x[None, 1:4, 1:]",
    );
    let rows = py_slice(5, None, None, -2);
    assert_eq!(rows, vec![4, 2, 0]);
    assert_eq_arr(&o.mixed, &[3, 1], &pick2(&rows, &[2]), "x[::-2, 2, None]");
    let fneg = py_slice(n as i64, Some(-3), None, 1);
    assert_eq_arr(
        &o.from_neg,
        &[3],
        &fneg.iter().map(|&i| v[i]).collect::<Vec<_>>(),
        "v[-3:]",
    );
    assert_eq_arr(&o.incl, &[2, 4], &pick2(&[0, 1], &all4), "x[0..=1]");
}

// ------------------------------------------------------------------------------------------
// gather / take_along
// ------------------------------------------------------------------------------------------

#[test]
fn gather_and_take_along() {
    let (v, d, b, t, c) = (7, 3, 2, 4, 5);
    let table = Array2::from_shape_vec((v, d), values(v * d, 30)).unwrap();
    let ids = Array2::from_shape_vec((b, t), vec![0i64, 6, 2, 2, 5, 1, 0, 3]).unwrap();
    let ids32 = arr1(&[4i32, 0, 4, 1]);
    let x = Array2::from_shape_vec((b, c), values(b * c, 31)).unwrap();
    let cls = arr1(&[3i64, 0]);
    let cls32 = arr1(&[4i32, 2]);
    let m = Gathers::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            GathersInputs {
                table: table.view(),
                ids: ids.view(),
                ids32: ids32.view(),
                x: x.view(),
                cls: cls.view(),
                cls32: cls32.view(),
            },
        )
        .unwrap();
    let mut want = vec![];
    for i in 0..b {
        for j in 0..t {
            for k in 0..d {
                want.push(table[[ids[[i, j]] as usize, k]]);
            }
        }
    }
    assert_eq_arr(&o.emb, &[b, t, d], &want, "embedding lookup (i64)");
    let mut want = vec![];
    for j in 0..t {
        for k in 0..d {
            want.push(table[[ids32[j] as usize, k]]);
        }
    }
    assert_eq_arr(&o.emb32, &[t, d], &want, "embedding lookup (i32)");
    let mut want = vec![];
    for i in 0..b {
        for j in 0..t {
            want.push(x[[i, ids32[j] as usize]]);
        }
    }
    assert_eq_arr(&o.cols, &[b, t], &want, "gather axis 1");
    let want: Vec<f32> = (0..b).map(|i| x[[i, cls[i] as usize]]).collect();
    assert_eq_arr(&o.picked, &[b], &want, "take_along i64");
    let want: Vec<f32> = (0..b).map(|i| x[[i, cls32[i] as usize]]).collect();
    assert_eq_arr(&o.picked32, &[b], &want, "take_along i32");
}

// ------------------------------------------------------------------------------------------
// reductions, softmax
// ------------------------------------------------------------------------------------------

fn sum(v: &[f64]) -> f64 {
    v.iter().sum()
}
fn mean(v: &[f64]) -> f64 {
    sum(v) / v.len() as f64
}
fn var(v: &[f64], corr: f64) -> f64 {
    let m = mean(v);
    v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() as f64 - corr)
}
fn fmax(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
fn fmin(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

#[test]
fn reductions_with_axes_and_keepdim() {
    let x = Array3::from_shape_vec((2, 3, 4), values(24, 40)).unwrap();
    let m = Reductions::new().unwrap();
    let o = m
        .evaluate(&m.randomize_params(0), ReductionsInputs { x: x.view() })
        .unwrap();
    let tol = 1e-5;
    let all = [true, true, true];
    assert_close(&o.sum_all, &reduce3(&x, all, false, sum), tol, "sum all");
    assert_close(
        &o.sum1,
        &reduce3(&x, [false, true, false], false, sum),
        tol,
        "sum axis 1",
    );
    assert_close(
        &o.sum_list,
        &reduce3(&x, [true, false, true], false, sum),
        tol,
        "sum [0, 2]",
    );
    assert_close(
        &o.sum_neg,
        &reduce3(&x, [false, false, true], true, sum),
        tol,
        "sum -1 keepdim",
    );
    assert_close(&o.mean_all, &reduce3(&x, all, false, mean), tol, "mean all");
    assert_close(
        &o.mean_keep,
        &reduce3(&x, [false, true, true], true, mean),
        tol,
        "mean [1,2] keepdim",
    );
    assert_close(
        &o.max0,
        &reduce3(&x, [true, false, false], false, fmax),
        0.0,
        "max 0",
    );
    assert_close(
        &o.min_neg,
        &reduce3(&x, [false, true, false], false, fmin),
        0.0,
        "min -2",
    );
    assert_close(&o.max_all, &reduce3(&x, all, false, fmax), 0.0, "max all");
    let prod = |v: &[f64]| v.iter().product::<f64>();
    assert_close(
        &o.prod2,
        &reduce3(&x, [false, false, true], false, prod),
        tol,
        "prod 2",
    );
    assert_close(
        &o.var0,
        &reduce3(&x, [false, false, true], false, |v| var(v, 0.0)),
        tol,
        "variance c=0",
    );
    assert_close(
        &o.var1,
        &reduce3(&x, [false, false, true], false, |v| var(v, 1.0)),
        tol,
        "variance c=1",
    );
    assert_close(
        &o.var_all,
        &reduce3(&x, all, false, |v| var(v, 1.0)),
        tol,
        "variance all c=1",
    );
    assert_close(
        &o.var_keep,
        &reduce3(&x, [true, true, false], true, |v| var(v, 0.0)),
        tol,
        "variance [0,1] keepdim",
    );
    // the ranks are static in the output types
    let _: &Array2<f32> = &o.sum1;
    let _: &Array1<f32> = &o.sum_list;
    let _: &Array3<f32> = &o.sum_neg;
    let _: &Array<f32, mithril::ndarray::Ix0> = &o.sum_all;

    // argmax / argmin: first index of the extreme, as NumPy
    let mut amax = vec![];
    for i in 0..2 {
        for k in 0..4 {
            let mut best = 0;
            for j in 1..3 {
                if x[[i, j, k]] > x[[i, best, k]] {
                    best = j;
                }
            }
            amax.push(best as i64);
        }
    }
    assert_eq_arr(&o.amax, &[2, 4], &amax, "argmax axis 1");
    let mut amin = vec![];
    for i in 0..2 {
        for j in 0..3 {
            let mut best = 0;
            for k in 1..4 {
                if x[[i, j, k]] < x[[i, j, best]] {
                    best = k;
                }
            }
            amin.push(best as i64);
        }
    }
    assert_eq_arr(&o.amin, &[2, 3], &amin, "argmin default axis -1");
    let mut amk = vec![];
    for j in 0..3 {
        for k in 0..4 {
            amk.push(if x[[1, j, k]] > x[[0, j, k]] { 1i64 } else { 0 });
        }
    }
    assert_eq_arr(&o.amax_keep, &[1, 3, 4], &amk, "argmax axis 0 keepdim");
}

#[test]
fn argmax_ties_pick_first() {
    let x = Array3::from_shape_vec((2, 3, 4), vec![1.0f32; 24]).unwrap();
    let m = Reductions::new().unwrap();
    let o = m
        .evaluate(&m.randomize_params(0), ReductionsInputs { x: x.view() })
        .unwrap();
    assert!(o.amax.iter().all(|&v| v == 0));
    assert!(o.amin.iter().all(|&v| v == 0));
    assert!(o.var1.iter().all(|&v| v == 0.0));
}

#[test]
fn softmax_and_log_softmax_along_axes() {
    // large magnitudes: a naive exp overflows
    let mut vals = values(24, 41);
    vals[0] = 1000.0;
    vals[5] = -1000.0;
    vals[13] = 500.0;
    let x = Array3::from_shape_vec((2, 3, 4), vals).unwrap();
    let m = Reductions::new().unwrap();
    let o = m
        .evaluate(&m.randomize_params(0), ReductionsInputs { x: x.view() })
        .unwrap();
    // reference: for each lane along `axis`, exp(v - max) / sum
    let sm = |axis: usize, log: bool| -> ArrayD<f64> {
        let s = [2usize, 3, 4];
        let mut out = ArrayD::<f64>::zeros(IxDyn(&s));
        for i in 0..s[0] {
            for j in 0..s[1] {
                for k in 0..s[2] {
                    let idx = [i, j, k];
                    let lane: Vec<f64> = (0..s[axis])
                        .map(|t| {
                            let mut q = idx;
                            q[axis] = t;
                            x[q] as f64
                        })
                        .collect();
                    let mx = fmax(&lane);
                    let z: f64 = lane.iter().map(|v| (v - mx).exp()).sum();
                    let v = x[idx] as f64;
                    out[IxDyn(&idx)] = if log {
                        v - mx - z.ln()
                    } else {
                        (v - mx).exp() / z
                    };
                }
            }
        }
        out
    };
    assert_close(&o.sm_last, &sm(2, false), 1e-6, "softmax axis -1");
    assert_close(&o.sm0, &sm(0, false), 1e-6, "softmax axis 0");
    assert_close(&o.lsm, &sm(1, true), 1e-6, "log_softmax axis 1");
    assert_close(&o.lsm_last, &sm(2, true), 1e-6, "log_softmax axis -1");
    assert!(o.lsm.iter().all(|v| v.is_finite()));
}

// ------------------------------------------------------------------------------------------
// edge cases: layouts, empty arrays, integer corner cases, symbolic slicing, bigger matmuls
// ------------------------------------------------------------------------------------------

mithril! {
    model Edge {
        input a: f32[B, N];
        input r: f32[N];
        output y = a * 2.0 + r;
        output s = a.sum(axis = 0);
        output m = a.max(axis = 1, keepdim = true);
        output t = a.T;
    }

    model IntCorners {
        input i: i32[N];
        input j: i32[N];
        output fdiv = floor_divide(i, j);
        output rem = i % j;
        output neg = -i;
        output sum = i.sum();
    }

    model SymSlices {
        input v: f32[N];
        input x: f32[B, M];
        output evens = v.slice((..).step_by(2));
        output tail = v[1..];
        output rev = v.slice((..).step_by(-1));
        output last_col = x.slice(.., -1);
        output joined = concat(x, x.slice(.., (..).step_by(-1)), axis = 1);
        output head_rows = x.slice(0..2);
    }

    model Big {
        input a: f32[M, K];
        input b: f32[K, N];
        output c = matmul(a, b);
        output ct = matmul(a.T, a);
    }

    model Big64 {
        input a: f64[M, K];
        input b: f64[K, N];
        output c = matmul(a, b);
    }

    model HalfMatmul {
        input a: f16[M, K];
        input b: f16[K, N];
        output c = matmul(a, b);
    }

    model Take3 {
        input x: f32[B, T, C];
        input idx: i64[B, T];
        output picked = take_along(x, idx);
        output neg_idx = gather(x, idx, axis = 0);
    }

    model Passthrough {
        input x: f32[N];
        output same = x;
        output doubled = x * 2.0;
        output again = doubled;
        output twice = doubled + 0.0;
    }
}

#[test]
fn non_contiguous_and_broadcast_input_views() {
    // a transposed view, a reversed view and a broadcast (stride 0) view
    let base = Array2::from_shape_vec((4, 3), (0..12).map(|v| v as f32).collect()).unwrap();
    let a_t = base.t(); // [3, 4], column-major
    let r_full = Array1::from_iter((0..8).map(|v| v as f32 * 0.5));
    let r_rev = r_full.slice(mithril::ndarray::s![..;-2]); // [3.5, 2.5, 1.5, 0.5]
    let m = Edge::new().unwrap();
    let p = m.randomize_params(0);
    let o = m.evaluate(&p, EdgeInputs { a: a_t, r: r_rev }).unwrap();
    let mut want = vec![];
    for i in 0..3 {
        for j in 0..4 {
            want.push(base[[j, i]] * 2.0 + r_rev[j]);
        }
    }
    assert_eq_arr(&o.y, &[3, 4], &want, "transposed + reversed views");
    let s: Vec<f32> = (0..4).map(|j| (0..3).map(|i| base[[j, i]]).sum()).collect();
    assert_eq_arr(&o.s, &[4], &s, "sum of a transposed view");
    let mx: Vec<f32> = (0..3)
        .map(|i| (0..4).map(|j| base[[j, i]]).fold(f32::MIN, f32::max))
        .collect();
    assert_eq_arr(&o.m, &[3, 1], &mx, "max of a transposed view");
    assert_eq_arr(
        &o.t,
        &[4, 3],
        &base.iter().copied().collect::<Vec<_>>(),
        ".T of a transposed view",
    );
    // a broadcast view as input
    let row = Array1::from(vec![1.0f32, 2.0, 3.0, 4.0]);
    let a_b = row.broadcast((2, 4)).unwrap();
    let r = Array1::<f32>::zeros(4);
    let o = m
        .evaluate(
            &p,
            EdgeInputs {
                a: a_b,
                r: r.view(),
            },
        )
        .unwrap();
    assert_eq_arr(
        &o.y,
        &[2, 4],
        &[2.0, 4.0, 6.0, 8.0, 2.0, 4.0, 6.0, 8.0],
        "broadcast view",
    );
    assert_eq_arr(&o.s, &[4], &[2.0, 4.0, 6.0, 8.0], "sum of a broadcast view");
}

#[test]
fn empty_batch() {
    let m = Edge::new().unwrap();
    let a = Array2::<f32>::zeros((0, 4));
    let r = Array1::<f32>::ones(4);
    let o = m
        .evaluate(
            &m.randomize_params(0),
            EdgeInputs {
                a: a.view(),
                r: r.view(),
            },
        )
        .unwrap();
    assert_eq!(o.y.shape(), &[0, 4]);
    assert_eq_arr(&o.s, &[4], &[0.0; 4], "sum over an empty axis");
    assert_eq!(o.m.shape(), &[0, 1]);
    assert_eq!(o.t.shape(), &[4, 0]);
    // max over an empty axis has no value: an error, not a panic
    let a = Array2::<f32>::zeros((2, 0));
    let r = Array1::<f32>::ones(0);
    let res = m.evaluate(
        &m.randomize_params(0),
        EdgeInputs {
            a: a.view(),
            r: r.view(),
        },
    );
    assert!(res.is_err(), "max over an empty axis");
}

#[test]
fn integer_corner_cases_do_not_panic() {
    let i = arr1(&[i32::MIN, 7, -7, i32::MAX, 5]);
    let j = arr1(&[-1i32, 0, 0, -1, 3]);
    let m = IntCorners::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            IntCornersInputs {
                i: i.view(),
                j: j.view(),
            },
        )
        .unwrap();
    // integer arithmetic wraps (i32::MIN // -1 and -i32::MIN wrap to i32::MIN)
    assert_eq!(o.fdiv[0], i32::MIN);
    assert_eq!(o.neg[0], i32::MIN);
    assert_eq!(o.fdiv[3], -i32::MAX);
    assert_eq!(o.rem[0], 0);
    assert_eq!(o.fdiv[4], 1);
    assert_eq!(o.rem[4], 2);
    let want = i.iter().fold(0i32, |a, &b| a.wrapping_add(b));
    assert_eq!(o.sum[()], want);
}

#[test]
fn slicing_symbolic_dims() {
    let n = 7;
    let v = Array1::from_iter((0..n).map(|i| i as f32));
    let x = Array2::from_shape_vec((3, 4), (0..12).map(|v| v as f32).collect()).unwrap();
    let m = SymSlices::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            SymSlicesInputs {
                v: v.view(),
                x: x.view(),
            },
        )
        .unwrap();
    let ev = py_slice(n as i64, None, None, 2);
    assert_eq_arr(
        &o.evens,
        &[ev.len()],
        &ev.iter().map(|&i| v[i]).collect::<Vec<_>>(),
        "v[::2]",
    );
    assert_eq_arr(
        &o.tail,
        &[n - 1],
        &(1..n).map(|i| v[i]).collect::<Vec<_>>(),
        "v[1:]",
    );
    assert_eq_arr(
        &o.rev,
        &[n],
        &(0..n).rev().map(|i| v[i]).collect::<Vec<_>>(),
        "v[::-1]",
    );
    assert_eq_arr(&o.last_col, &[3], &[3.0, 7.0, 11.0], "x[:, -1]");
    let mut want = vec![];
    for r in 0..3 {
        for c in 0..4 {
            want.push(x[[r, c]]);
        }
        for c in (0..4).rev() {
            want.push(x[[r, c]]);
        }
    }
    assert_eq_arr(&o.joined, &[3, 8], &want, "concat with a reversed copy");
    assert_eq_arr(
        &o.head_rows,
        &[2, 4],
        &(0..8).map(|v| v as f32).collect::<Vec<_>>(),
        "x[0:2]",
    );
    // fewer rows than the slice asks for: Python clamps
    let x1 = Array2::from_shape_vec((1, 2), vec![5.0f32, 6.0]).unwrap();
    let v1 = Array1::from(vec![9.0f32]);
    let o = m
        .evaluate(
            &m.randomize_params(0),
            SymSlicesInputs {
                v: v1.view(),
                x: x1.view(),
            },
        )
        .unwrap();
    assert_eq_arr(&o.head_rows, &[1, 2], &[5.0, 6.0], "x[0:2] of one row");
    assert_eq_arr(&o.tail, &[0], &[], "v[1:] of one element");
    assert_eq_arr(&o.evens, &[1], &[9.0], "v[::2] of one element");
}

#[test]
fn larger_matmuls_against_a_triple_loop() {
    let (mm, k, n) = (37, 129, 23);
    let a = Array2::from_shape_vec((mm, k), values(mm * k, 50)).unwrap();
    let b = Array2::from_shape_vec((k, n), values(k * n, 51)).unwrap();
    let m = Big::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            BigInputs {
                a: a.view(),
                b: b.view(),
            },
        )
        .unwrap();
    let fa: Vec<f32> = a.iter().copied().collect();
    let fb: Vec<f32> = b.iter().copied().collect();
    let want = ArrayD::from_shape_vec(IxDyn(&[mm, n]), mm_ref(&fa, &fb, mm, k, n)).unwrap();
    assert_close(&o.c, &want, 1e-4, "37x129 @ 129x23");
    let mut at = vec![0.0f32; k * mm];
    for i in 0..mm {
        for j in 0..k {
            at[j * mm + i] = a[[i, j]];
        }
    }
    let want = ArrayD::from_shape_vec(IxDyn(&[k, k]), mm_ref(&at, &fa, k, mm, k)).unwrap();
    assert_close(&o.ct, &want, 1e-4, "a.T @ a");

    let a64 = a.mapv(|v| v as f64);
    let b64 = b.mapv(|v| v as f64);
    let m = Big64::new().unwrap();
    let c = m
        .evaluate(
            &m.randomize_params(0),
            Big64Inputs {
                a: a64.view(),
                b: b64.view(),
            },
        )
        .unwrap()
        .c;
    let want = mm_ref(&fa, &fb, mm, k, n);
    for (g, w) in c.iter().zip(&want) {
        assert!(
            (g - w).abs() < 1e-10 * (1.0 + w.abs()),
            "f64 matmul: {g} vs {w}"
        );
    }

    // f16: widened to f32, rounded once per result
    let (mm, k, n) = (5, 8, 3);
    let ah = Array2::from_shape_vec((mm, k), values(mm * k, 52))
        .unwrap()
        .mapv(f16::from_f32);
    let bh = Array2::from_shape_vec((k, n), values(k * n, 53))
        .unwrap()
        .mapv(f16::from_f32);
    let m = HalfMatmul::new().unwrap();
    let c = m
        .evaluate(
            &m.randomize_params(0),
            HalfMatmulInputs {
                a: ah.view(),
                b: bh.view(),
            },
        )
        .unwrap()
        .c;
    let fa: Vec<f32> = ah.iter().map(|v| v.to_f32()).collect();
    let fb: Vec<f32> = bh.iter().map(|v| v.to_f32()).collect();
    let want = mm_ref(&fa, &fb, mm, k, n);
    for (g, w) in c.iter().zip(&want) {
        let w16 = f16::from_f64(*w);
        assert!(
            (g.to_f64() - w16.to_f64()).abs() <= 1e-3 * (1.0 + w.abs()),
            "f16 matmul: {g} vs {w16}"
        );
    }
}

#[test]
fn take_along_and_gather_on_rank_3() {
    let (b, t, c) = (2, 3, 4);
    let x = Array3::from_shape_vec((b, t, c), values(b * t * c, 60)).unwrap();
    // indices in [0, 2): valid classes for take_along and rows for the gather along axis 0
    let idx = Array2::from_shape_vec((b, t), vec![0i64, 1, 1, 0, 1, 0]).unwrap();
    let m = Take3::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            Take3Inputs {
                x: x.view(),
                idx: idx.view(),
            },
        )
        .unwrap();
    let mut want = vec![];
    for i in 0..b {
        for j in 0..t {
            want.push(x[[i, j, idx[[i, j]] as usize]]);
        }
    }
    assert_eq_arr(&o.picked, &[b, t], &want, "take_along rank 3");
    // gather along axis 0 with indices in [0, 2)
    let idx0 = idx.clone();
    let mut want = vec![];
    for i in 0..b {
        for j in 0..t {
            let r = idx0[[i, j]] as usize;
            for tt in 0..t {
                for cc in 0..c {
                    want.push(x[[r, tt, cc]]);
                }
            }
        }
    }
    assert_eq_arr(&o.neg_idx, &[b, t, t, c], &want, "gather axis 0");
    // negative indices are errors (not counted from the end, as in PyTorch), naming the
    // position
    let mut neg = idx;
    neg[[1, 2]] = -1;
    let e = m
        .evaluate(
            &m.randomize_params(0),
            Take3Inputs {
                x: x.view(),
                idx: neg.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("index -1 at position [1, 2]"), "{e}");
}

#[test]
fn outputs_that_alias_inputs_or_each_other() {
    let x = arr1(&[1.0f32, -2.0, 3.5]);
    let m = Passthrough::new().unwrap();
    let o = m
        .evaluate(&m.randomize_params(0), PassthroughInputs { x: x.view() })
        .unwrap();
    assert_eq_arr(&o.same, &[3], &[1.0, -2.0, 3.5], "output = input");
    assert_eq_arr(&o.doubled, &[3], &[2.0, -4.0, 7.0], "doubled");
    assert_eq_arr(&o.again, &[3], &[2.0, -4.0, 7.0], "output named twice");
    assert_eq_arr(&o.twice, &[3], &[2.0, -4.0, 7.0], "x * 2 + 0");
}

// ------------------------------------------------------------------------------------------
// narrow floats: reductions accumulate in f32, mixed comparisons, softmax
// ------------------------------------------------------------------------------------------

mithril! {
    model Narrow {
        input h: f16[N];
        input b: bf16[N];
        input x: f32[N];
        output h_sum = h.sum();
        output h_mean = h.mean();
        output b_sum = b.sum();
        output h_var = variance(h);
        output h_max = h.max();
        output h_arg = h.argmax();
        output h_gt_x = h > x;
        output mixed_where = where_(h > x, h, x);
        output h_where_lit = where_(h > 0.0, h, 0.0);
        output hb = h + b;
        output h_soft = softmax(h);
        output b_cat = concat(b, b);
    }
}

#[test]
fn narrow_float_reductions_accumulate_wide() {
    let n = 4096;
    // 0.1 in f16 is 0.0999755859375; a sum kept in f16 stalls near 256
    let h = Array1::from_elem(n, f16::from_f32(0.1));
    let b = Array1::from_elem(n, bf16::from_f32(0.1));
    let x = Array1::from_iter((0..n).map(|i| if i % 2 == 0 { 0.0f32 } else { 1.0 }));
    let m = Narrow::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            NarrowInputs {
                h: h.view(),
                b: b.view(),
                x: x.view(),
            },
        )
        .unwrap();
    let hv = f16::from_f32(0.1).to_f64();
    let bv = bf16::from_f32(0.1).to_f64();
    let want = f16::from_f64(hv * n as f64);
    let got: f16 = o.h_sum[()];
    assert!(
        (got.to_f64() - want.to_f64()).abs() <= 0.5,
        "f16 sum: got {got}, want {want}"
    );
    let gb: bf16 = o.b_sum[()];
    let wb = bf16::from_f64(bv * n as f64);
    assert!(
        (gb.to_f64() - wb.to_f64()).abs() <= 2.0,
        "bf16 sum: got {gb}, want {wb}"
    );
    let gm: f16 = o.h_mean[()];
    assert_eq!(gm, f16::from_f64(hv), "f16 mean");
    let gv: f16 = o.h_var[()];
    assert_eq!(gv.to_f32(), 0.0, "variance of a constant");
    assert_eq!(o.h_max[()], f16::from_f32(0.1));
    assert_eq!(o.h_arg[()], 0i64);
}

#[test]
fn narrow_floats_mixed_with_f32() {
    let hs = [0.5f32, -1.0, 2.0, 0.1, 65504.0, -0.0];
    let xs = [0.25f32, -1.0, 3.0, 0.1, 1.0e6, 0.0];
    let h = Array1::from_iter(hs.iter().map(|&v| f16::from_f32(v)));
    let b = Array1::from_iter(hs.iter().map(|&v| bf16::from_f32(v * 0.5)));
    let x = Array1::from(xs.to_vec());
    let m = Narrow::new().unwrap();
    let o = m
        .evaluate(
            &m.randomize_params(0),
            NarrowInputs {
                h: h.view(),
                b: b.view(),
                x: x.view(),
            },
        )
        .unwrap();
    let n = hs.len();
    // comparisons of f16 with f32 happen in f32 (0.1 as f16 is below 0.1 as f32)
    let gt: Vec<bool> = (0..n).map(|i| h[i].to_f32() > xs[i]).collect();
    assert!(!gt[3]);
    assert_eq_arr(&o.h_gt_x, &[n], &gt, "f16 > f32");
    // where_ of f16 and f32 branches promotes to f32
    let mw: Vec<f32> = (0..n)
        .map(|i| if gt[i] { h[i].to_f32() } else { xs[i] })
        .collect();
    let _: &Array1<f32> = &o.mixed_where;
    assert_eq_arr(&o.mixed_where, &[n], &mw, "where_(f16, f32)");
    // a literal branch stays f16
    let wl: Vec<f16> = (0..n)
        .map(|i| {
            if h[i].to_f32() > 0.0 {
                h[i]
            } else {
                f16::from_f32(0.0)
            }
        })
        .collect();
    let _: &Array1<f16> = &o.h_where_lit;
    assert_eq_arr(&o.h_where_lit, &[n], &wl, "where_(f16, literal)");
    // f16 + bf16 -> f32
    let _: &Array1<f32> = &o.hb;
    let hb: Vec<f32> = (0..n).map(|i| h[i].to_f32() + b[i].to_f32()).collect();
    assert_eq_arr(&o.hb, &[n], &hb, "f16 + bf16");
    let cat: Vec<bf16> = b.iter().chain(b.iter()).copied().collect();
    assert_eq_arr(&o.b_cat, &[2 * n], &cat, "concat bf16");
    // softmax of f16 in f32, rounded once: 65504 dominates
    let hf: Vec<f64> = h.iter().map(|v| v.to_f64()).collect();
    let mx = hf.iter().copied().fold(f64::MIN, f64::max);
    let z: f64 = hf.iter().map(|v| (v - mx).exp()).sum();
    for (i, v) in hf.iter().enumerate() {
        let want = f16::from_f64((v - mx).exp() / z);
        assert_eq!(o.h_soft[i], want, "f16 softmax[{i}]");
    }
}

// ------------------------------------------------------------------------------------------
// reshapes of computed values are views of their slots (no copy)
// ------------------------------------------------------------------------------------------

mithril! {
    model ReshapeViews {
        input x: f64[B, 6];
        param w: f64[2, 3];
        let a = tanh(x);
        // views of `a`'s slot: `a` must not be overwritten while they are read
        let r = reshape(a, [B, 2, 3]);
        let u = flatten(r, start_dim = 1);
        let c = exp(a) * 3.0;
        let q = r * w;
        let f = flatten(q, start_dim = 1);
        output y = f + c + u;
    }
}

#[test]
fn reshapes_of_computed_values_are_views_and_keep_their_values() {
    // the plan gives the reshape and the two flattens no buffer of their own: two buffers,
    // `a` and `q` (`exp(a) * 3` is fused into the output's group); with copies it was four
    let line = ReshapeViews::SUMMARY
        .lines()
        .find(|l| l.starts_with("evaluate memory:"))
        .unwrap_or_else(|| panic!("no memory line in\n{}", ReshapeViews::SUMMARY));
    assert!(line.contains("(2 buffers"), "{line}");
    let b = 3;
    let x = Array2::from_shape_fn((b, 6), |(i, j)| 0.3 * i as f64 - 0.2 * j as f64 + 0.1);
    let m = ReshapeViews::new().unwrap();
    let p = m.randomize_params(3);
    let y = m
        .evaluate(&p, ReshapeViewsInputs { x: x.view() })
        .unwrap()
        .y;
    assert_eq!(y.shape(), &[b, 6]);
    for i in 0..b {
        for j in 0..6 {
            let a = x[[i, j]].tanh();
            let want = a * p.w[[j / 3, j % 3]] + a.exp() * 3.0 + a;
            assert!(
                (y[[i, j]] - want).abs() < 1e-14,
                "[{i},{j}] {} vs {want}",
                y[[i, j]]
            );
        }
    }
    // the backward pass reshapes the gradients back (`reshape_like`, also views)
    let s = Array2::from_shape_fn((b, 6), |(i, j)| 1.0 + 0.1 * (i * 6 + j) as f64);
    let (_, g) = m
        .evaluate_gradients(
            &p,
            ReshapeViewsInputs { x: x.view() },
            ReshapeViewsOutputs { y: s.clone() },
        )
        .unwrap();
    let loss = |q: &ReshapeViewsParams| {
        (&m.evaluate(q, ReshapeViewsInputs { x: x.view() }).unwrap().y * &s).sum()
    };
    assert_eq!(
        crate::common::fd::gradcheck("reshape views", &p, &g, loss),
        6
    );
}

mithril! {
    model ReshapeInput {
        input x: f64[B, 2, 3];
        output y = flatten(x, start_dim = 1) * 2.0;
    }
}

#[test]
fn a_reshape_of_an_input_is_a_view_in_any_layout() {
    // no buffer: the flatten views the caller's array, the product writes the output
    let line = ReshapeInput::SUMMARY
        .lines()
        .find(|l| l.starts_with("evaluate memory:"))
        .unwrap_or_else(|| panic!("no memory line in\n{}", ReshapeInput::SUMMARY));
    assert!(line.contains("(0 buffers"), "{line}");
    let m = ReshapeInput::new().unwrap();
    let p = m.randomize_params(0);
    let b = 4;
    let std = Array3::from_shape_fn((b, 2, 3), |(i, j, k)| (i * 6 + j * 3 + k) as f64);
    // the same values in another memory layout (a permuted view)
    let other = Array3::from_shape_fn((3, 2, b), |(k, j, i)| (i * 6 + j * 3 + k) as f64);
    let other = other.view().permuted_axes([2, 1, 0]);
    assert!(!other.is_standard_layout());
    for x in [std.view(), other] {
        let y = m.evaluate(&p, ReshapeInputInputs { x }).unwrap().y;
        assert_eq!(y.shape(), &[b, 6]);
        let want: Vec<f64> = (0..b * 6).map(|v| 2.0 * v as f64).collect();
        assert_eq!(y.iter().copied().collect::<Vec<_>>(), want);
    }
}
