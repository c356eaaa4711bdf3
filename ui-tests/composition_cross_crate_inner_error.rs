// A shape error inside a model of another crate points at the local call, and the message says
// where inside that crate it happened (rustc cannot show another crate's tokens).
use mithril::prelude::*;

mithril! {
    model Net {
        input x: f32[B, 4];
        let y = mithril_testlib::layers::Wide16(x);
        output y;
    }
}

fn main() {}
