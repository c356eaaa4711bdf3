// `update` names a buffer of its own model: an unknown name, a param (trained by gradients,
// not updated), and a new value of the wrong shape are compile errors.
use mithril::prelude::*;

mithril! {
    model UpdateUnknown {
        input x: f32[N, 3];
        buffer count: f32[3] = zeros;
        update cnt = count + 1.0;
        output y = x;
    }

    model UpdateParam {
        input x: f32[N, 3];
        param w: f32[3] = ones;
        update w = w * 0.5;
        output y = x * w;
    }

    model UpdateShape {
        input x: f32[N, 3];
        buffer total: f32[3] = zeros;
        update total = x;
        output y = x;
    }
}

fn main() {}
