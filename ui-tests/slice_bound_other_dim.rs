// A slice bound over a symbolic dim must be relative to the dim of the axis it slices.
use mithril::prelude::*;

mithril! {
    model Net {
        input x: f32[B, H];
        input z: f32[W];
        output y = x[(.., 0..(W - 1))] + z.sum();
    }
}

fn main() {}
