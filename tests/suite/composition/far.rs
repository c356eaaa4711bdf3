//! Models defined in another file of the test crate (`#[path = "composition/far.rs"] mod far;`).

use mithril::prelude::*;

mithril! {
    /// `y = x @ w` with `w: [D, 2]`.
    model FarProj {
        input x: [N, D];
        param w: [D, 2];
        output y = matmul(x, w);
    }
}

/// A user in this file of a model defined in the main test file (`crate::composition::chain::leaf::Leaf`).
pub mod back {
    use mithril::prelude::*;
    mithril! {
        pub model FarUsesMain {
            input x: f32[B, 3];
            output y = crate::composition::chain::leaf::Leaf(x) * 3.0;
        }
    }
}
