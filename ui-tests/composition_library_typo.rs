// A misspelled library model is not a model in scope: rustc's "cannot find macro" error
// suggests the library model with the similar name.
use mithril::prelude::*;

mithril! {
    model Net {
        input x: f32[B, 4];
        output y = LayerNrom()(x);
    }
}

fn main() {}
