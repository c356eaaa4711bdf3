// A shape error inside a model of another module of the same crate points into that model's own
// source, with "in this macro invocation" at the call.
mod blocks {
    use mithril::prelude::*;
    mithril! {
        model Proj {
            input x: [N, D];
            param w: [16, 8];
            output y = matmul(x, w);
        }
    }
}

mod net {
    use crate::blocks::Proj;
    use mithril::prelude::*;
    mithril! {
        model Net {
            input x: f32[B, 4];
            let y = Proj(x);
            output y;
        }
    }
}

fn main() {}
