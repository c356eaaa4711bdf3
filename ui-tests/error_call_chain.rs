// An error inside a submodel that only one call's hyperparameters cause: the error points into
// the submodel, and one note per call (innermost first) says which call it was. Both kinds: a
// shape error (found by inference) and an error found while instantiating (a negative dim).
use mithril::prelude::*;

mithril! {
    model Block(k: int) {
        input x: [B, 8];
        param w: [k, 8];
        output y = matmul(x, w);
    }

    model Stack(k: int) {
        input x: [B, 8];
        let inner = Block(k);
        output y = relu(inner(x));
    }

    model Pad(p: int) {
        input x: [B, 8];
        param b: [p - 2];
        output y = x * b.sum();
    }

    model Net {
        input x: f32[B, 8];
        let s1 = Stack(8);
        let s2 = Stack(16);
        output y = s2(s1(x)) + Pad(4)(x) + Pad(p = 1)(x);
    }
}

fn main() {}
