// Models that call each other in a cycle: flattening reports the recursion once, at the call
// that closes the cycle (`B2` has a required hyperparameter, so only `A` is compiled).
use mithril::prelude::*;

mithril! {
    model A {
        input x: f32[B, 4];
        output y = B2(k = 2)(x);
    }
    model B2(k: int) {
        input x: [N, D];
        output y = A(x) * 2.0;
    }
}

fn main() {}
