//! Composition of models across invocations, modules, files and crates (the carrier protocol).
//! Every test evaluates the composed model and checks it against an ndarray reference computed
//! from the same parameters.

use mithril::prelude::*;
use ndarray::{Array1, Array2, Axis};

#[path = "composition/far.rs"]
mod far;

fn x_of(rows: usize, cols: usize) -> Array2<f32> {
    Array2::from_shape_fn((rows, cols), |(i, j)| {
        ((i * cols + j) as f32 * 0.37).sin() * 1.5 - 0.2
    })
}

fn close(a: &Array2<f32>, b: &Array2<f32>) {
    assert_eq!(a.shape(), b.shape(), "shapes differ");
    for (x, y) in a.iter().zip(b.iter()) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()), "{a:?}\n!=\n{b:?}");
    }
}

fn relu(a: Array2<f32>) -> Array2<f32> {
    a.mapv(|v| v.max(0.0))
}

fn add_row(a: &Array2<f32>, b: &Array1<f32>) -> Array2<f32> {
    a + &b.view().insert_axis(Axis(0))
}

// ------------------------------------------------------------------ 1. the same invocation

mod same_invocation {
    use super::*;

    mithril! {
        model Double {
            input x: [B, D];
            output y = x * 2.0;
        }

        /// Uses `Double` (defined before) and `Shift` (defined after).
        pub model SameInv {
            input x: f32[B, 3];
            let a = Double(x);
            let b = Shift(a);
            output y = b;
        }

        model Shift {
            input x: [B, D];
            param bias: [D];
            output y = x + bias;
        }
    }

    #[test]
    fn before_and_after_in_one_invocation() {
        let m = SameInv::new().unwrap();
        let p = m.randomize_params(1);
        let x = x_of(4, 3);
        let out = m.evaluate(&p, SameInvInputs { x: x.view() }).unwrap();
        assert_eq!(p.b.bias.shape(), &[3]);
        close(&out.y, &add_row(&(&x * 2.0), &p.b.bias));
    }
}

// ------------------------------------------------------------------ 2. another invocation

mod other_invocation {
    use super::*;

    // the user comes first, the definitions in later invocations
    mithril! {
        pub model UsesLater {
            input x: f32[B, 3];
            let h = LaterLinear(x);
            output y = relu(h);
        }
    }

    mithril! {
        model LaterLinear {
            input x: [B, D];
            param w: [D, 5];
            param b: [5];
            output y = matmul(x, w) + b;
        }
    }

    mithril! {
        pub model UsesEarlier {
            input x: f32[B, 3];
            let first = LaterLinear(x);
            output y = first * first;
        }
    }

    #[test]
    fn user_before_definition() {
        let m = UsesLater::new().unwrap();
        let p = m.randomize_params(2);
        let x = x_of(2, 3);
        let out = m.evaluate(&p, UsesLaterInputs { x: x.view() }).unwrap();
        assert_eq!(p.h.w.shape(), &[3, 5]);
        close(&out.y, &relu(add_row(&x.dot(&p.h.w), &p.h.b)));
    }

    #[test]
    fn user_after_definition() {
        let m = UsesEarlier::new().unwrap();
        let p = m.randomize_params(3);
        let x = x_of(3, 3);
        let out = m.evaluate(&p, UsesEarlierInputs { x: x.view() }).unwrap();
        let h = add_row(&x.dot(&p.first.w), &p.first.b);
        close(&out.y, &(&h * &h));
    }
}

// ------------------------------------------------------------------ 3. another module

mod blocks {
    use mithril::prelude::*;
    mithril! {
        /// `y = relu(x @ w)`, `w: [D, 4]`.
        model Block {
            input x: [B, D];
            param w: [D, 4];
            output y = relu(matmul(x, w));
        }

        /// A public model (carried through a `#[macro_export]` carrier).
        pub model PubScale {
            input x: [B, D];
            param s: [D] = ones;
            output y = x * s;
        }
    }
}

mod module_users {
    use super::*;
    use crate::composition::blocks::Block;

    mithril! {
        pub model ViaUse {
            input x: f32[B, 3];
            let blk = Block(x);
            output y = blk + 1.0;
        }

        pub model ViaPath {
            input x: f32[B, 3];
            let blk = crate::composition::blocks::Block(x);
            let s = crate::composition::blocks::PubScale(blk);
            output y = s;
        }
    }

    pub mod inner {
        use mithril::prelude::*;
        mithril! {
            pub model ViaSuper {
                input x: f32[B, 2];
                let blk = super::super::blocks::Block(x);
                output y = blk;
            }
        }
    }

    #[test]
    fn imported_with_use() {
        let m = ViaUse::new().unwrap();
        let p = m.randomize_params(4);
        let x = x_of(3, 3);
        let out = m.evaluate(&p, ViaUseInputs { x: x.view() }).unwrap();
        close(&out.y, &(relu(x.dot(&p.blk.w)) + 1.0));
    }

    #[test]
    fn called_by_path() {
        let m = ViaPath::new().unwrap();
        let mut p = m.randomize_params(5);
        p.s.s = Array1::from(vec![0.5, -1.0, 2.0, 3.0]);
        let x = x_of(2, 3);
        let out = m.evaluate(&p, ViaPathInputs { x: x.view() }).unwrap();
        let h = relu(x.dot(&p.blk.w));
        close(&out.y, &(&h * &p.s.s.view().insert_axis(Axis(0))));
    }

    #[test]
    fn called_through_super() {
        let m = inner::ViaSuper::new().unwrap();
        let p = m.randomize_params(6);
        let x = x_of(5, 2);
        let out = m
            .evaluate(&p, inner::ViaSuperInputs { x: x.view() })
            .unwrap();
        assert_eq!(p.blk.w.shape(), &[2, 4]);
        close(&out.y, &relu(x.dot(&p.blk.w)));
    }
}

// ------------------------------------------------------------------ 4. another file

mod far_users {
    use super::*;

    mithril! {
        pub model UsesFar {
            input x: f32[B, 3];
            let p = crate::composition::far::FarProj(x);
            output y = p - 1.0;
        }
    }

    #[test]
    fn model_from_another_file() {
        let m = UsesFar::new().unwrap();
        let p = m.randomize_params(7);
        let x = x_of(4, 3);
        let out = m.evaluate(&p, UsesFarInputs { x: x.view() }).unwrap();
        assert_eq!(p.p.w.shape(), &[3, 2]);
        close(&out.y, &(x.dot(&p.p.w) - 1.0));
    }

    #[test]
    fn other_file_uses_this_file() {
        let m = crate::composition::far::back::FarUsesMain::new().unwrap();
        let p = m.randomize_params(8);
        let x = x_of(2, 3);
        let out = m
            .evaluate(
                &p,
                crate::composition::far::back::FarUsesMainInputs { x: x.view() },
            )
            .unwrap();
        let names = p.names();
        assert_eq!(names.len(), 1, "{names:?}");
        let leaf = crate::composition::chain::leaf::leaf_ref(&x, &p.leaf_0.w);
        close(&out.y, &(leaf * 3.0));
    }
}

// ------------------------------------------------------------------ 5. another crate

mod cross_crate {
    use super::*;
    use mithril_testlib::blocks::Residual;

    mithril! {
        pub model CrossPath {
            input x: f32[B, 4];
            let d = mithril_testlib::layers::Dense(x);
            output y = relu(d);
        }

        /// `Residual` itself uses `crate::layers::Affine` of the fixture crate.
        pub model CrossUse {
            input x: f32[B, 3];
            let r = Residual(x);
            output y = r * 2.0;
        }

        /// A carried model with a required hyperparameter, and one that uses an imported model.
        pub model CrossHyper {
            input x: f32[B, 4];
            let proj = mithril_testlib::layers::Project(units = 2);
            let a = proj(x);
            let b = mithril_testlib::blocks::DenseTanh(x);
            output ya = a;
            output yb = b;
        }
    }

    #[test]
    fn dense_by_path() {
        let m = CrossPath::new().unwrap();
        let p = m.randomize_params(9);
        let x = x_of(3, 4);
        let out = m.evaluate(&p, CrossPathInputs { x: x.view() }).unwrap();
        assert_eq!(p.d.weight.shape(), &[3, 4]);
        close(&out.y, &relu(add_row(&x.dot(&p.d.weight.t()), &p.d.bias)));
    }

    #[test]
    fn residual_via_use_with_its_own_dependency() {
        let m = CrossUse::new().unwrap();
        let mut p = m.randomize_params(10);
        // Affine's params live under the instance path `r.h`
        p.r.h.scale = Array1::from(vec![1.5, -0.5, 2.0]);
        p.r.h.shift = Array1::from(vec![0.1, 0.2, -0.3]);
        let x = x_of(2, 3);
        let out = m.evaluate(&p, CrossUseInputs { x: x.view() }).unwrap();
        let s = p.r.h.scale.view().insert_axis(Axis(0));
        let h = add_row(&(&x * &s), &p.r.h.shift);
        close(&out.y, &((relu(h) + &x) * 2.0));
        assert_eq!(
            p.names(),
            vec!["r.h.scale".to_string(), "r.h.shift".to_string()]
        );
    }

    #[test]
    fn hyperparameters_and_transitive_imports() {
        let m = CrossHyper::new().unwrap();
        let p = m.randomize_params(11);
        let x = x_of(5, 4);
        let out = m.evaluate(&p, CrossHyperInputs { x: x.view() }).unwrap();
        assert_eq!(p.proj.weight.shape(), &[4, 2]);
        close(&out.ya, &x.dot(&p.proj.weight));
        let d = add_row(&x.dot(&p.b.d.weight.t()), &p.b.d.bias);
        close(&out.yb, &d.mapv(f32::tanh));
    }
}

// ------------------------------------------------------------------ 6. a chain across modules

pub mod chain {
    pub mod leaf {
        use mithril::prelude::*;
        use ndarray::Array2;
        mithril! {
            /// `sigmoid(x @ w)`, `w: [D, 3]`.
            pub model Leaf {
                input x: [N, D];
                param w: [D, 3];
                output y = sigmoid(matmul(x, w));
            }
        }
        pub fn leaf_ref(x: &Array2<f32>, w: &Array2<f32>) -> Array2<f32> {
            x.dot(w).mapv(|v| 1.0 / (1.0 + (-v).exp()))
        }
    }
    pub mod mid {
        use super::leaf::Leaf;
        use mithril::prelude::*;
        mithril! {
            /// `Leaf(Leaf(x) + b)` with two distinct instances.
            model Mid {
                input x: [N, D];
                param b: [3];
                let l1 = Leaf(x);
                let l2 = Leaf(l1 + b);
                output y = l2;
            }
        }
    }
    pub mod top {
        use super::mid::Mid; // only Mid: Leaf arrives inside Mid's bundle
        use mithril::prelude::*;
        mithril! {
            pub model Top {
                input x: f32[B, 2];
                let m = Mid(x);
                output y = m;
            }
        }
    }
}

#[test]
fn chain_top_mid_leaf() {
    use chain::leaf::leaf_ref;
    let m = chain::top::Top::new().unwrap();
    let p = m.randomize_params(12);
    let x = x_of(3, 2);
    let out = m
        .evaluate(&p, chain::top::TopInputs { x: x.view() })
        .unwrap();
    assert_eq!(p.m.l1.w.shape(), &[2, 3]);
    assert_eq!(p.m.l2.w.shape(), &[3, 3]);
    let l1 = leaf_ref(&x, &p.m.l1.w);
    let expect = leaf_ref(&add_row(&l1, &p.m.b), &p.m.l2.w);
    close(&out.y, &expect);
    assert_eq!(
        p.names(),
        vec![
            "m.b".to_string(),
            "m.l1.w".to_string(),
            "m.l2.w".to_string()
        ]
    );
}

// ------------------------------------------------------------------ 7. shapes across the boundary

mod shapes_across {
    use super::*;

    mod defs {
        use mithril::prelude::*;
        mithril! {
            /// Both inputs share `N` and `D`: calling it unifies the caller's dims.
            model Pair {
                input a: [N, D];
                input b: [N, D];
                param w: [D];
                output y = (a + b) * w;
            }
            /// `K` is fixed by a hyperparameter of the caller's choosing.
            model Widen(k: int = 6) {
                input x: [N, D];
                param w: [D, k];
                output y = matmul(x, w);
            }
        }
    }
    use defs::Pair;

    mithril! {
        pub model Unify {
            input x: f32[B, 3];
            input z: f32[C, E];
            let pr = Pair(x, z);
            let wd = self::defs::Widen(k = 2)(pr);
            output y = wd;
        }

        pub compile UnifyB2 = Unify {
            shapes: { x: [2, 3] },
        };

        /// A physical model compiled straight from a model of another module.
        pub compile WidenDefault = defs::Widen {
            shapes: { x: [_, 4] },
        };
    }

    #[test]
    fn symbols_unified_through_carried_model() {
        let m = Unify::new().unwrap();
        // `Pair(x, z)` unifies C with B and E with 3: only B is left free
        assert_eq!(Unify::SYMBOLS, &["B"]);
        let p = m.randomize_params(13);
        // D of Pair is E = 3 (from `x`), and Widen's D is Pair's output width
        assert_eq!(p.pr.w.shape(), &[3]);
        assert_eq!(p.wd.w.shape(), &[3, 2]);
        let x = x_of(4, 3);
        let z = x_of(4, 3).mapv(|v| v * 0.5 + 0.25);
        let out = m
            .evaluate(
                &p,
                UnifyInputs {
                    x: x.view(),
                    z: z.view(),
                },
            )
            .unwrap();
        close(
            &out.y,
            &((&x + &z) * p.pr.w.view().insert_axis(Axis(0))).dot(&p.wd.w),
        );
        // C must equal B and E must equal 3: a mismatch is a runtime error
        let bad = x_of(5, 3);
        let e = m
            .evaluate(
                &p,
                UnifyInputs {
                    x: x.view(),
                    z: bad.view(),
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains('z'), "{e}");
        let bad = x_of(4, 2);
        let e = m
            .evaluate(
                &p,
                UnifyInputs {
                    x: x.view(),
                    z: bad.view(),
                },
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains('z'), "{e}");
    }

    #[test]
    fn compile_option_and_compile_of_foreign_module_model() {
        let m = UnifyB2::new().unwrap();
        let p = m.randomize_params(14);
        let x = x_of(2, 3);
        let z = x_of(2, 3);
        let out = m
            .evaluate(
                &p,
                UnifyB2Inputs {
                    x: x.view(),
                    z: z.view(),
                },
            )
            .unwrap();
        close(
            &out.y,
            &((&x + &z) * p.pr.w.view().insert_axis(Axis(0))).dot(&p.wd.w),
        );
        let bad = x_of(3, 3);
        assert!(
            m.evaluate(
                &p,
                UnifyB2Inputs {
                    x: bad.view(),
                    z: bad.view()
                }
            )
            .is_err()
        );

        let w = WidenDefault::new().unwrap();
        let wp = w.randomize_params(15);
        assert_eq!(wp.w.shape(), &[4, 6]);
        let x = x_of(3, 4);
        let out = w.evaluate(&wp, WidenDefaultInputs { x: x.view() }).unwrap();
        close(&out.y, &x.dot(&wp.w));
    }
}

// ------------------------------------------------------------------ carried hyperparameter models

mod carried_hyper {
    use super::*;

    mithril! {
        /// `Stack(n)` is never flattened in its own crate: its dependency must still travel.
        pub model Stacked {
            input x: f32[B, 3];
            let st = mithril_testlib::blocks::Stack(n = 2);
            output y = st(x);
        }

        /// `Maybe(dense = true)` takes a branch its own crate never compiled.
        pub model MaybeDense {
            input x: f32[B, 4];
            let m = mithril_testlib::blocks::Maybe(dense = true);
            output y = m(x);
        }
    }

    #[test]
    fn required_hyperparameter_model_with_foreign_dependency() {
        let m = Stacked::new().unwrap();
        let mut p = m.randomize_params(16);
        assert_eq!(
            p.names(),
            ["st.h.scale", "st.h.shift", "st.h_1.scale", "st.h_1.shift"]
        );
        p.st.h.scale = Array1::from(vec![2.0, 3.0, -1.0]);
        p.st.h_1.shift = Array1::from(vec![1.0, 0.0, 0.5]);
        let x = x_of(2, 3);
        let out = m.evaluate(&p, StackedInputs { x: x.view() }).unwrap();
        let h = add_row(
            &(&x * &p.st.h.scale.view().insert_axis(Axis(0))),
            &p.st.h.shift,
        );
        let h = add_row(
            &(&h * &p.st.h_1.scale.view().insert_axis(Axis(0))),
            &p.st.h_1.shift,
        );
        close(&out.y, &h);
    }

    #[test]
    fn branch_not_taken_by_the_default() {
        let m = MaybeDense::new().unwrap();
        let p = m.randomize_params(17);
        let x = x_of(3, 4);
        let out = m.evaluate(&p, MaybeDenseInputs { x: x.view() }).unwrap();
        assert_eq!(p.names(), ["m.dense_0.weight", "m.dense_0.bias"]);
        close(
            &out.y,
            &add_row(&x.dot(&p.m.dense_0.weight.t()), &p.m.dense_0.bias),
        );
    }
}

// ------------------------------------------------------------------ more scoping forms

mithril! {
    /// A public model at the root of this module, used by its absolute path
    /// `crate::composition::RootHalf(..)`.
    pub model RootHalf {
        input x: [N, D];
        output y = x * 0.5;
    }
}

mod twins_a {
    use mithril::prelude::*;
    mithril! {
        /// Two `pub model Twin` in different modules: their `#[macro_export]` carriers must not
        /// collide at the crate root.
        pub model Twin {
            input x: [N, D];
            output y = x + 1.0;
        }
    }
}

mod twins_b {
    use mithril::prelude::*;
    mithril! {
        pub model Twin {
            input x: [N, D];
            output y = x * 10.0;
        }
    }
}

mod multi {
    use mithril::prelude::*;
    mithril! {
        /// Two outputs, picked by field or destructured in declaration order.
        model Split {
            input a: [N, D];
            input b: [N, D];
            param w: [D];
            output sum = a + b * w;
            output diff = a - b;
        }
    }
}

mod scoping {
    use super::*;
    use crate::composition::blocks::Block as Blk;
    use crate::composition::multi::*;

    mithril! {
        pub model Forms {
            input x: f32[B, 3];
            input z: f32[B, 3];
            // the root model and both twins, by path
            let r = crate::composition::RootHalf(x);
            let t = crate::composition::twins_a::Twin(r) + super::twins_b::Twin(r);
            // a glob import; a field of a multi-output model and named terminals
            let s = Split(b = z, a = t).diff;
            let (u, v) = Split(t, z);
            // the same model by an alias and by its path; one (foreign) instance called twice
            // shares its weights
            let blk = Blk(x);
            let blk2 = crate::composition::blocks::Block(z);
            let shared = mithril_testlib::layers::Project(units = 3);
            let s1 = shared(u);
            let s2 = shared(v);
            output o1 = s;
            output o2 = blk + blk2;
            output o3 = s1 - s2;
        }

        /// A second model of the invocation fetching the same keys again.
        pub model Again {
            input x: f32[B, 3];
            output y = Blk(crate::composition::RootHalf(x));
        }
    }

    #[test]
    fn paths_aliases_globs_and_shared_instances() {
        let m = Forms::new().unwrap();
        let p = m.randomize_params(18);
        assert_eq!(
            p.names(),
            ["split_0.w", "split_1.w", "blk.w", "blk2.w", "shared.weight"],
            "{:?}",
            p.names()
        );
        let x = x_of(4, 3);
        let z = x_of(4, 3).mapv(|v| 1.0 - v);
        let out = m
            .evaluate(
                &p,
                FormsInputs {
                    x: x.view(),
                    z: z.view(),
                },
            )
            .unwrap();
        let r = &x * 0.5;
        let t = (&r + 1.0) + (&r * 10.0);
        close(&out.o1, &(&t - &z));
        let w = p.split_1.w.view().insert_axis(Axis(0));
        let u = &t + &(&z * &w);
        let v = &t - &z;
        close(&out.o2, &(relu(x.dot(&p.blk.w)) + relu(z.dot(&p.blk2.w))));
        close(
            &out.o3,
            &(u.dot(&p.shared.weight) - v.dot(&p.shared.weight)),
        );

        let a = Again::new().unwrap();
        let ap = a.randomize_params(19);
        let out = a.evaluate(&ap, AgainInputs { x: x.view() }).unwrap();
        close(&out.y, &relu((&x * 0.5).dot(&ap.block_0.w)));
    }
}

// ------------------------------------------------------------------ models inside fn bodies

#[test]
fn models_inside_a_fn_body() {
    mithril! {
        model InFnLeaf {
            input x: [N, D];
            param w: [D, 2];
            output y = matmul(x, w);
        }
        pub model InFnPub {
            input x: [N, D];
            output y = x - 2.0;
        }
    }
    mithril! {
        model InFn {
            input x: f32[B, 3];
            let l = InFnLeaf(InFnPub(x));
            output y = l;
        }
    }
    let m = InFn::new().unwrap();
    let p = m.randomize_params(20);
    let x = x_of(3, 3);
    let out = m.evaluate(&p, InFnInputs { x: x.view() }).unwrap();
    close(&out.y, &(&x - 2.0).dot(&p.l.w));
}

// ------------------------------------------------------------------ a diamond

mod diamond {
    use super::*;
    mod left {
        use mithril::prelude::*;
        mithril! {
            model Left {
                input x: [N, D];
                output y = crate::composition::chain::leaf::Leaf(x) * 2.0;
            }
        }
    }
    mod right {
        use crate::composition::chain::leaf::Leaf;
        use mithril::prelude::*;
        mithril! {
            model Right {
                input x: [N, D];
                output y = Leaf(x) + 1.0;
            }
        }
    }
    use left::Left;

    mithril! {
        pub model Diamond {
            input x: f32[B, 2];
            let l = Left(x);
            let r = self::right::Right(x);
            output y = l + r;
        }
    }

    #[test]
    fn diamond_dependency() {
        use crate::composition::chain::leaf::leaf_ref;
        let m = Diamond::new().unwrap();
        let p = m.randomize_params(21);
        assert_eq!(p.names(), ["l.leaf_0.w", "r.leaf_0.w"]);
        let x = x_of(2, 2);
        let out = m.evaluate(&p, DiamondInputs { x: x.view() }).unwrap();
        let expect = leaf_ref(&x, &p.l.leaf_0.w) * 2.0 + (leaf_ref(&x, &p.r.leaf_0.w) + 1.0);
        close(&out.y, &expect);
    }
}

// ------------------------------------------------------------------ models passed by name

mod passed_by_name {
    use super::*;

    mod acts {
        use mithril::prelude::*;
        mithril! {
            /// `x * sigmoid(x)`, passed by name and never called in the user's text.
            model Swish {
                input x: [N, D];
                output y = x * sigmoid(x);
            }
        }
    }
    use acts::Swish;

    mithril! {
        model Cube {
            input x: [N, D];
            output y = x * x * x;
        }

        /// Models passed as `fn` values into the library's `MLP` and another crate's `Twice`.
        pub model Passing {
            input x: f32[B, 3];
            let mlp = MLP(dimensions = [4, 2], activations = [Swish, Cube]);
            let tw = mithril_testlib::layers::Twice(f = Cube);
            let sw = mithril_testlib::layers::Twice(f = Swish);
            output a = mlp(x);
            output b = tw(x);
            output c = sw(x);
        }
    }

    #[test]
    fn models_as_fn_hyperparameters_across_boundaries() {
        let m = Passing::new().unwrap();
        let p = m.randomize_params(22);
        let x = x_of(3, 3);
        let out = m.evaluate(&p, PassingInputs { x: x.view() }).unwrap();
        let swish = |a: Array2<f32>| a.mapv(|v| v / (1.0 + (-v).exp()));
        let cube = |a: Array2<f32>| a.mapv(|v| v * v * v);
        let names = p.names();
        assert_eq!(names.len(), 4, "{names:?}");
        let h = swish(add_row(&x.dot(&p.mlp.h.weight.t()), &p.mlp.h.bias));
        // (`h_1` is the activation's instance, which has no params)
        let h = cube(add_row(&h.dot(&p.mlp.h_2.weight.t()), &p.mlp.h_2.bias));
        close(&out.a, &h);
        close(&out.b, &cube(cube(x.clone())));
        close(&out.c, &swish(swish(x.clone())));
    }
}
