// An error inside a model of another crate points at the local call, and the message says where
// inside that crate it happened (rustc cannot show another crate's tokens). The locations in the
// .stderr are lines of the `errors` module that opens tests/fixtures/mithril-testlib/src/lib.rs.
use mithril::prelude::*;

mithril! {
    // a shape error (found by shape inference)
    model Net {
        input x: f32[B, 4];
        let y = mithril_testlib::errors::Wide16(x);
        output y;
    }

    // an error found while inlining (a hyperparameter value that makes no dim)
    model Net2 {
        input x: f32[B, 4];
        let p = mithril_testlib::errors::Units(units = -1);
        output y = p(x);
    }
}

fn main() {}
