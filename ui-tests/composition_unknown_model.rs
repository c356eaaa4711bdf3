// A model that is neither defined nor imported: rustc's own error, under the user's tokens.
use mithril::prelude::*;

mithril! {
    model Net {
        input x: f32[B, 4];
        let y = Nope(x);
        let z = nowhere::Gone(y);
        output z;
    }
}

fn main() {}
