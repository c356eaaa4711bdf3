//! Property tests of shape inference on the IR level: every shape rule against an independent
//! reference written here (NumPy broadcasting, matmul, reductions, reshape with -1, Python
//! slicing by explicit iteration) and the laws of symbolic unification.

use crate::ir::{Dim, Env, Shape};
use crate::prims::rules::broadcast;
use crate::prims::shape::slice_len;
use crate::prims::{Prim, ReduceKind, ReshapeDim};
use proptest::prelude::*;

/// A dim for the references: a size or a named symbol.
#[derive(Clone, Debug, PartialEq)]
enum RefDim {
    N(u64),
    S(&'static str),
}

impl RefDim {
    fn ir(&self) -> Dim {
        match self {
            RefDim::N(n) => Dim::Known(*n),
            RefDim::S(s) => Dim::Sym(s.to_string()),
        }
    }
}

fn ir_shape(dims: &[RefDim]) -> Shape {
    Shape::fixed(dims.iter().map(RefDim::ir).collect())
}

fn known(dims: &[u64]) -> Shape {
    Shape::fixed(dims.iter().map(|&n| Dim::Known(n)).collect())
}

fn resolved(env: &Env, s: &Shape) -> Vec<Dim> {
    let s = env.shape(s);
    assert!(s.rest.is_none());
    s.dims
}

/// NumPy broadcasting, written from its definition: right-align, every position's dims other
/// than 1 must agree; a position where all are 1 (or absent) is 1.
fn ref_broadcast(shapes: &[Vec<RefDim>]) -> Option<Vec<RefDim>> {
    let rank = shapes.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut out = Vec::new();
    for pos in 0..rank {
        // distance from the right end
        let from_right = rank - pos;
        let mut non_one: Vec<&RefDim> = Vec::new();
        for s in shapes {
            if s.len() >= from_right {
                let d = &s[s.len() - from_right];
                if *d != RefDim::N(1) {
                    non_one.push(d);
                }
            }
        }
        match non_one.first() {
            None => out.push(RefDim::N(1)),
            Some(first) => {
                if non_one.iter().all(|d| d == first) {
                    out.push((*first).clone());
                } else {
                    return None;
                }
            }
        }
    }
    Some(out)
}

fn dim_strategy() -> impl Strategy<Value = RefDim> {
    prop_oneof![
        4 => (0u64..5).prop_map(RefDim::N),
        1 => prop_oneof![Just("B"), Just("N")].prop_map(RefDim::S),
    ]
}

fn shape_strategy(max_rank: usize) -> impl Strategy<Value = Vec<RefDim>> {
    prop::collection::vec(dim_strategy(), 0..=max_rank)
}

fn numeric_shape(max_rank: usize) -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(1u64..5, 0..=max_rank)
}

/// Python's `range(*slice(lo, hi, step).indices(n))`, by iterating over the candidates.
fn ref_slice(n: i64, lo: Option<i64>, hi: Option<i64>, step: i64) -> Vec<i64> {
    let norm = |v: i64| if v < 0 { v + n } else { v };
    let mut out = Vec::new();
    if step > 0 {
        let start = lo.map(norm).unwrap_or(0).clamp(0, n);
        let stop = hi.map(norm).unwrap_or(n).clamp(0, n);
        let mut i = start;
        while i < stop {
            out.push(i);
            i += step;
        }
    } else {
        let start = lo.map(norm).unwrap_or(n - 1).clamp(-1, n - 1);
        let stop = hi.map(norm).unwrap_or(-1).clamp(-1, n - 1);
        let mut i = start;
        while i > stop {
            out.push(i);
            i += step;
        }
    }
    out
}

/// Every index 0..n picked by the slice, checked one by one (the slow definition).
fn ref_slice_by_membership(n: i64, lo: Option<i64>, hi: Option<i64>, step: i64) -> usize {
    // an index i is selected iff it is start + k*step for some k >= 0, strictly before stop
    let v = ref_slice(n, lo, hi, step);
    let mut count = 0;
    for i in 0..n.max(0) {
        if v.contains(&i) {
            count += 1;
        }
    }
    count
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn broadcast_matches_numpy(shapes in prop::collection::vec(shape_strategy(4), 1..4)) {
        let mut env = Env::default();
        let ir: Vec<Shape> = shapes.iter().map(|s| ir_shape(s)).collect();
        let got = broadcast(&mut env, &ir);
        match ref_broadcast(&shapes) {
            Some(want) => {
                let got = got.map_err(|e| TestCaseError::fail(format!("{shapes:?}: {e}")))?;
                let want: Vec<Dim> = want.iter().map(RefDim::ir).collect();
                prop_assert_eq!(resolved(&env, &got), want);
            }
            None => prop_assert!(got.is_err(), "{:?} should not broadcast, got {:?}", shapes, got),
        }
    }

    #[test]
    fn broadcast_is_symmetric(a in shape_strategy(4), b in shape_strategy(4)) {
        let mut e1 = Env::default();
        let mut e2 = Env::default();
        let ab = broadcast(&mut e1, &[ir_shape(&a), ir_shape(&b)]);
        let ba = broadcast(&mut e2, &[ir_shape(&b), ir_shape(&a)]);
        match (ab, ba) {
            (Ok(x), Ok(y)) => prop_assert_eq!(resolved(&e1, &x), resolved(&e2, &y)),
            (Err(_), Err(_)) => {}
            (x, y) => prop_assert!(false, "asymmetric: {:?} vs {:?}", x, y),
        }
    }

    #[test]
    fn broadcast_binds_a_variable_to_what_it_meets(n in 2u64..6, lead in numeric_shape(2)) {
        let mut env = Env::default();
        let v = env.new_dim_var("_");
        let mut a = lead.iter().map(|&d| Dim::Known(d)).collect::<Vec<_>>();
        a.push(v.clone());
        let out = broadcast(&mut env, &[Shape::fixed(a), known(&[n])]).unwrap();
        prop_assert_eq!(env.dim(&v), Dim::Known(n));
        prop_assert_eq!(resolved(&env, &out).last().cloned(), Some(Dim::Known(n)));
        // a 1 never binds a variable
        let mut env = Env::default();
        let v = env.new_dim_var("_");
        let out = broadcast(&mut env, &[Shape::fixed(vec![v.clone()]), known(&[1])]).unwrap();
        prop_assert_eq!(env.dim(&v), v.clone());
        prop_assert_eq!(resolved(&env, &out), vec![v]);
    }

    #[test]
    fn matmul_shape_rule(
        batch_a in numeric_shape(3),
        batch_b in numeric_shape(3),
        m in 1u64..5, k in 1u64..5, k2 in 1u64..5, n in 1u64..5,
        a_vec in any::<bool>(), b_vec in any::<bool>(),
    ) {
        let (batch_a, batch_b) = (
            if a_vec { vec![] } else { batch_a },
            if b_vec { vec![] } else { batch_b },
        );
        let mut a = batch_a.clone();
        if !a_vec {
            a.push(m);
        }
        a.push(k);
        let mut b = batch_b.clone();
        b.push(k2);
        if !b_vec {
            b.push(n);
        }
        let mut env = Env::default();
        let got = Prim::Matmul { ta: false, tb: false }.infer_shape(&mut env, &[known(&a), known(&b)]);
        let to_ref = |v: &Vec<u64>| v.iter().map(|&d| RefDim::N(d)).collect::<Vec<_>>();
        let batch = ref_broadcast(&[to_ref(&batch_a), to_ref(&batch_b)]);
        match (k == k2, batch) {
            (true, Some(batch)) => {
                let got = got.map_err(|e| TestCaseError::fail(format!("{a:?} @ {b:?}: {e}")))?;
                let mut want: Vec<Dim> = batch.iter().map(RefDim::ir).collect();
                if !a_vec {
                    want.push(Dim::Known(m));
                }
                if !b_vec {
                    want.push(Dim::Known(n));
                }
                prop_assert_eq!(resolved(&env, &got), want);
            }
            _ => prop_assert!(got.is_err(), "{:?} @ {:?} should fail, got {:?}", a, b, got),
        }
        // transpose flags: a^T with a given as [.., k, m] is the same product
        if !a_vec && !b_vec && k == k2 {
            let mut at = batch_a.clone();
            at.push(k);
            at.push(m);
            let mut bt = batch_b.clone();
            bt.push(n);
            bt.push(k);
            let mut e1 = Env::default();
            let mut e2 = Env::default();
            let plain = Prim::Matmul { ta: false, tb: false }.infer_shape(&mut e1, &[known(&a), known(&b)]);
            let flagged = Prim::Matmul { ta: true, tb: true }.infer_shape(&mut e2, &[known(&at), known(&bt)]);
            match (plain, flagged) {
                (Ok(x), Ok(y)) => prop_assert_eq!(resolved(&e1, &x), resolved(&e2, &y)),
                (Err(_), Err(_)) => {}
                (x, y) => prop_assert!(false, "flags change validity: {:?} vs {:?}", x, y),
            }
        }
    }

    #[test]
    fn reduce_shape_rule(
        shape in numeric_shape(5),
        picks in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 0..4),
        keepdim in any::<bool>(),
        kind in prop_oneof![Just(ReduceKind::Sum), Just(ReduceKind::Mean), Just(ReduceKind::Max), Just(ReduceKind::Min), Just(ReduceKind::Prod)],
    ) {
        let r = shape.len();
        let mut axes: Vec<i64> = Vec::new();
        if r > 0 {
            for (ix, neg) in &picks {
                let a = ix.index(r) as i64;
                axes.push(if *neg { a - r as i64 } else { a });
            }
        }
        let mut env = Env::default();
        let got = Prim::Reduce(kind, axes.clone(), keepdim).infer_shape(&mut env, &[known(&shape)]);
        // reference: normalise, reject duplicates, then drop or keep as 1
        let norm: Vec<usize> = axes.iter().map(|&a| if a < 0 { (a + r as i64) as usize } else { a as usize }).collect();
        let mut dup = false;
        for i in 0..norm.len() {
            for j in 0..i {
                dup |= norm[i] == norm[j];
            }
        }
        if dup {
            prop_assert!(got.is_err(), "duplicate axes {:?} must fail", axes);
        } else {
            let reduce_all = axes.is_empty();
            let mut want = Vec::new();
            for (i, &d) in shape.iter().enumerate() {
                let reduced = reduce_all || norm.contains(&i);
                if !reduced {
                    want.push(Dim::Known(d));
                } else if keepdim {
                    want.push(Dim::Known(1));
                }
            }
            let got = got.map_err(|e| TestCaseError::fail(format!("{shape:?} {axes:?}: {e}")))?;
            prop_assert_eq!(resolved(&env, &got), want);
        }
        // argmax over one axis follows the same rule
        if r > 0 {
            let a = axes.first().copied().unwrap_or(-1);
            let mut env = Env::default();
            let arg = Prim::ArgReduce { max: true, axis: a, keepdim }.infer_shape(&mut env, &[known(&shape)]).unwrap();
            let mut env2 = Env::default();
            let red = Prim::Reduce(ReduceKind::Sum, vec![a], keepdim).infer_shape(&mut env2, &[known(&shape)]).unwrap();
            prop_assert_eq!(resolved(&env, &arg), resolved(&env2, &red));
        }
    }

    #[test]
    fn reduce_axis_out_of_range_is_an_error(shape in numeric_shape(4), off in 0i64..3, neg in any::<bool>()) {
        let r = shape.len() as i64;
        let axis = if neg { -r - 1 - off } else { r + off };
        let mut env = Env::default();
        prop_assert!(Prim::Reduce(ReduceKind::Sum, vec![axis], false).infer_shape(&mut env, &[known(&shape)]).is_err());
        prop_assert!(Prim::Variance(vec![axis], true, 1.0).infer_shape(&mut env, &[known(&shape)]).is_err());
    }

    #[test]
    fn reshape_infers_the_minus_one(
        shape in prop::collection::vec(1u64..5, 1..5),
        target in prop::collection::vec(1u64..5, 0..4),
        at in any::<prop::sample::Index>(),
    ) {
        let total: u64 = shape.iter().product();
        let known_prod: u64 = target.iter().product();
        let pos = at.index(target.len() + 1);
        let mut dims: Vec<ReshapeDim> = target.iter().map(|&d| ReshapeDim::Dim(Dim::Known(d))).collect();
        dims.insert(pos, ReshapeDim::Infer);
        let mut env = Env::default();
        let got = Prim::Reshape(dims).infer_shape(&mut env, &[known(&shape)]);
        if total.is_multiple_of(known_prod) {
            let got = got.map_err(|e| TestCaseError::fail(format!("{shape:?} -> {target:?}: {e}")))?;
            let mut want: Vec<Dim> = target.iter().map(|&d| Dim::Known(d)).collect();
            want.insert(pos, Dim::Known(total / known_prod));
            prop_assert_eq!(resolved(&env, &got), want);
        } else {
            // NumPy: "cannot reshape array of size 6 into shape (4,newaxis)"
            prop_assert!(got.is_err(), "{:?} -> {:?} with -1 must fail, got {:?}", shape, target, got);
        }
        // without -1: valid iff the products agree
        let mut env = Env::default();
        let exact: Vec<ReshapeDim> = target.iter().map(|&d| ReshapeDim::Dim(Dim::Known(d))).collect();
        let got = Prim::Reshape(exact).infer_shape(&mut env, &[known(&shape)]);
        prop_assert_eq!(got.is_ok(), total == known_prod, "{:?} -> {:?}", shape, target);
    }

    #[test]
    fn reshape_minus_one_with_a_symbol(lead in 1u64..5, tail in prop::collection::vec(1u64..4, 1..3)) {
        // [B, tail...] -> [B, -1]: the -1 is the product of the tail
        let mut env = Env::default();
        let mut dims = vec![Dim::Sym("B".into())];
        dims.extend(tail.iter().map(|&d| Dim::Known(d)));
        let t = Prim::Reshape(vec![ReshapeDim::Dim(Dim::Sym("B".into())), ReshapeDim::Infer])
            .infer_shape(&mut env, &[Shape::fixed(dims.clone())])
            .unwrap();
        let prod: u64 = tail.iter().product();
        prop_assert_eq!(resolved(&env, &t), vec![Dim::Sym("B".into()), Dim::Known(prod)]);
        // [B, tail...] -> [-1, lead]: B*prod/lead, a product with B when it divides
        let t = Prim::Reshape(vec![ReshapeDim::Infer, ReshapeDim::Dim(Dim::Known(lead))])
            .infer_shape(&mut env, &[Shape::fixed(dims)])
            .unwrap();
        let got = resolved(&env, &t);
        prop_assert_eq!(&got[1], &Dim::Known(lead));
        if prod.is_multiple_of(lead) {
            let want = env.dim(&Dim::Prod(prod / lead, vec![Dim::Sym("B".into())]));
            prop_assert_eq!(&got[0], &want);
        }
    }

    #[test]
    fn slice_len_matches_python(
        n in 0i64..20,
        lo in prop::option::of(-25i64..25),
        hi in prop::option::of(-25i64..25),
        step in prop_oneof![-5i64..0, 1i64..6],
    ) {
        let want = ref_slice_by_membership(n, lo, hi, step);
        prop_assert_eq!(slice_len(n, lo, hi, step) as usize, want, "n={} {:?}:{:?}:{}", n, lo, hi, step);
        // through the shape rule, on a known dim
        let mut env = Env::default();
        let s = Prim::Slice(vec![crate::prims::SliceArg::Range(lo, hi, step)])
            .infer_shape(&mut env, &[known(&[n as u64, 3])])
            .unwrap();
        prop_assert_eq!(resolved(&env, &s), vec![Dim::Known(want as u64), Dim::Known(3)]);
    }

    #[test]
    fn slice_index_range_check(n in 1i64..10, idx in -12i64..12) {
        let mut env = Env::default();
        let r = Prim::Slice(vec![crate::prims::SliceArg::Index(idx)]).infer_shape(&mut env, &[known(&[n as u64, 2])]);
        let in_range = (-n..n).contains(&idx);
        prop_assert_eq!(r.is_ok(), in_range, "index {} into {}", idx, n);
        if let Ok(s) = r {
            prop_assert_eq!(resolved(&env, &s), vec![Dim::Known(2)]);
        }
    }
}

// ------------------------------------------------------------------------------------------
// unification laws
// ------------------------------------------------------------------------------------------

/// A dim over an environment with three free variables (0, 1, 2).
#[derive(Clone, Debug)]
enum UDim {
    K(u64),
    S(&'static str),
    V(u32),
}

fn udim() -> impl Strategy<Value = UDim> {
    prop_oneof![
        (0u64..4).prop_map(UDim::K),
        prop_oneof![Just("B"), Just("T")].prop_map(UDim::S),
        (0u32..3).prop_map(UDim::V),
    ]
}

fn fresh_env() -> (Env, Vec<Dim>) {
    let mut env = Env::default();
    let vars = (0..3).map(|i| env.new_dim_var(format!("v{i}"))).collect();
    (env, vars)
}

fn to_dim(d: &UDim, vars: &[Dim]) -> Dim {
    match d {
        UDim::K(n) => Dim::Known(*n),
        UDim::S(s) => Dim::Sym(s.to_string()),
        UDim::V(i) => vars[*i as usize].clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn unify_is_reflexive_and_idempotent(pre in prop::collection::vec((udim(), udim()), 0..3), a in udim(), b in udim()) {
        let (mut env, vars) = fresh_env();
        for (x, y) in &pre {
            let _ = env.unify_dim(&to_dim(x, &vars), &to_dim(y, &vars));
        }
        let da = to_dim(&a, &vars);
        // reflexive: a dim unifies with itself, to itself, changing nothing
        let before: Vec<Dim> = vars.iter().map(|v| env.dim(v)).collect();
        prop_assert_eq!(env.unify_dim(&da, &da), Ok(env.dim(&da)));
        let after: Vec<Dim> = vars.iter().map(|v| env.dim(v)).collect();
        prop_assert_eq!(&before, &after);
        // idempotent: once unified, unifying again gives the same answer and binds nothing new
        let db = to_dim(&b, &vars);
        if let Ok(r) = env.unify_dim(&da, &db) {
            let snapshot: Vec<Dim> = vars.iter().map(|v| env.dim(v)).collect();
            prop_assert_eq!(env.dim(&da), env.dim(&db));
            prop_assert_eq!(env.dim(&r), env.dim(&da));
            let again = env.unify_dim(&da, &db);
            prop_assert_eq!(again.map(|d| env.dim(&d)), Ok(env.dim(&r)));
            let snapshot2: Vec<Dim> = vars.iter().map(|v| env.dim(v)).collect();
            prop_assert_eq!(snapshot, snapshot2);
        }
    }

    #[test]
    fn unify_is_symmetric(pre in prop::collection::vec((udim(), udim()), 0..3), a in udim(), b in udim()) {
        let (mut env, vars) = fresh_env();
        for (x, y) in &pre {
            let _ = env.unify_dim(&to_dim(x, &vars), &to_dim(y, &vars));
        }
        let mut e1 = env.clone();
        let mut e2 = env;
        let (da, db) = (to_dim(&a, &vars), to_dim(&b, &vars));
        let r1 = e1.unify_dim(&da, &db).map(|d| e1.dim(&d));
        let r2 = e2.unify_dim(&db, &da).map(|d| e2.dim(&d));
        match (&r1, &r2) {
            (Ok(x), Ok(y)) => {
                // the same value up to which of two free variables is the representative
                prop_assert_eq!(e1.dim(&da), e1.dim(&db));
                prop_assert_eq!(e2.dim(&da), e2.dim(&db));
                let free = |d: &Dim| matches!(d, Dim::Var(_));
                prop_assert!(x == y || (free(x) && free(y)), "{:?} vs {:?}", x, y);
                // both environments agree on every variable up to renaming of free ones
                for v in &vars {
                    let (p, q) = (e1.dim(v), e2.dim(v));
                    prop_assert!(p == q || (free(&p) && free(&q)), "{:?}: {:?} vs {:?}", v, p, q);
                }
            }
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "asymmetric: {:?} vs {:?}", r1, r2),
        }
    }

    #[test]
    fn unify_distinct_constants_fails(a in 0u64..6, b in 0u64..6) {
        let mut env = Env::default();
        let r = env.unify_dim(&Dim::Known(a), &Dim::Known(b));
        prop_assert_eq!(r.is_ok(), a == b);
        let r = env.unify_dim(&Dim::Sym("B".into()), &Dim::Known(b));
        prop_assert!(r.is_err());
    }

    #[test]
    fn unify_is_transitive(a in udim(), b in udim(), c in udim()) {
        let (mut env, vars) = fresh_env();
        let (da, db, dc) = (to_dim(&a, &vars), to_dim(&b, &vars), to_dim(&c, &vars));
        if env.unify_dim(&da, &db).is_ok() && env.unify_dim(&db, &dc).is_ok() {
            prop_assert_eq!(env.dim(&da), env.dim(&dc));
            prop_assert!(env.unify_dim(&da, &dc).is_ok());
        }
    }
}

#[test]
fn matmul_of_an_open_rank_row_by_a_matrix() {
    // `[..., K] @ [K, N]` is `[..., N]` whether `...` is empty or not (Linear on `[..., IN]`)
    let mut env = Env::default();
    let r = env.new_rest_var("...");
    let k = env.new_dim_var("K");
    let a = Shape {
        rest: Some(r),
        dims: vec![k.clone()],
    };
    let out = Prim::Matmul {
        ta: false,
        tb: false,
    }
    .infer_shape(&mut env, &[a.clone(), known(&[4, 2])])
    .unwrap();
    assert_eq!(out.rest, Some(r));
    assert_eq!(resolved_open(&env, &out), vec![Dim::Known(2)]);
    assert_eq!(env.dim(&k), Dim::Known(4), "K binds to the matrix rows");
    // by a vector: `[...]`
    let out = Prim::Matmul {
        ta: false,
        tb: false,
    }
    .infer_shape(&mut env, &[a.clone(), known(&[4])])
    .unwrap();
    assert_eq!(out.rest, Some(r));
    assert!(out.dims.is_empty());
    // inner dims that differ, and a batched right operand (ambiguous), are errors
    assert!(Prim::Matmul {
        ta: false,
        tb: false
    }
    .infer_shape(&mut env, &[a.clone(), known(&[3, 2])])
    .is_err());
    assert!(Prim::Matmul {
        ta: false,
        tb: false
    }
    .infer_shape(&mut env, &[a, known(&[5, 4, 2])])
    .is_err());
}

fn resolved_open(env: &Env, s: &Shape) -> Vec<Dim> {
    env.shape(s).dims
}

#[test]
fn broadcast_rejects_mismatch_with_message() {
    let mut env = Env::default();
    let e = broadcast(&mut env, &[known(&[2, 3]), known(&[4])]).unwrap_err();
    assert!(e.contains("broadcast"), "{e}");
}

#[test]
fn ref_slice_spot_checks() {
    // Python: list(range(10))[::-3] == [9, 6, 3, 0]; [8:2:-2] == [8, 6, 4]; [-2:] == [8, 9]
    assert_eq!(ref_slice(10, None, None, -3), vec![9, 6, 3, 0]);
    assert_eq!(ref_slice(10, Some(8), Some(2), -2), vec![8, 6, 4]);
    assert_eq!(ref_slice(10, Some(-2), None, 1), vec![8, 9]);
    assert_eq!(ref_slice(10, Some(-20), Some(3), 1), vec![0, 1, 2]);
    assert_eq!(ref_slice(0, None, None, -1), Vec::<i64>::new());
}
