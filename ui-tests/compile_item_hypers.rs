// A `compile` item sets the model's hyperparameters like a call; mistakes in them are the
// errors of a call (unknown name, wrong type, a required one missing).
use mithril::prelude::*;

mithril! {
    model Scale(k: int, bias: float = 0.0) {
        input x: [B, 4];
        output y = x * k + bias;
    }

    compile Bad1 = Scale(k = 2, gain = 3) {};
    compile Bad2 = Scale(k = "two") {};
    compile Bad3 = Scale(bias = 1.5) {};
    compile Bad4 = Scale {};
}

fn main() {}
