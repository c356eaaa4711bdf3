//! Compile-fail cases: every `ui-tests/*.rs` must fail to build with exactly the diagnostics in
//! its `.stderr` (the macro's errors, spanned on the offending tokens). Re-bless after a
//! deliberate wording change with `TRYBUILD=overwrite cargo test --test ui`, then review the
//! diff of every `.stderr`.
//!
//! The passing counterparts of some cases live here as ordinary tests.

use mithril::prelude::*;

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.compile_fail("ui-tests/*.rs");
}

mithril! {
    // `let` may shadow an earlier `let` (as in Rust): not a duplicate, unlike inputs, params
    // and outputs (`ui-tests/duplicate_*.rs`).
    model Shadow {
        input x: f32[N];
        let h = x * 2.0;
        let h = h + 1.0;
        let h = relu(h - 4.0);
        output y = h;
    }

    // A destructuring with as many names as outputs, and a field pick of a known output (the
    // passing forms of `destructure_count.rs` and `unknown_output_field.rs`).
    model Split {
        input x: [N];
        output pos = relu(x);
        output neg = relu(-x);
    }

    model UseSplit {
        input x: f32[N];
        let (p, n) = Split(x);
        output both = p - n;
        output neg = Split(x).neg;
    }
}

#[test]
fn let_shadowing_is_not_an_error() {
    let m = Shadow::new().unwrap();
    let params = m.randomize_params(0);
    let x = ndarray::arr1(&[1.0f32, 2.0, 3.0]);
    let out = m.evaluate(&params, ShadowInputs { x: x.view() }).unwrap();
    // relu(2x + 1 - 4)
    assert_eq!(out.y.to_vec(), vec![0.0, 1.0, 3.0]);
}

#[test]
fn destructuring_and_field_picks() {
    let m = UseSplit::new().unwrap();
    let params = m.randomize_params(0);
    let x = ndarray::arr1(&[-2.0f32, 0.5, 3.0]);
    let out = m.evaluate(&params, UseSplitInputs { x: x.view() }).unwrap();
    // relu(x) - relu(-x) == x; relu(-x)
    assert_eq!(out.both.to_vec(), vec![-2.0, 0.5, 3.0]);
    assert_eq!(out.neg.to_vec(), vec![2.0, 0.0, 0.0]);
}
