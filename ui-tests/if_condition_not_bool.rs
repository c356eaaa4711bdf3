// A run-time `if` condition must be a scalar `bool`: a float is an error (compare it), and so
// is a bool with dims (reduce it, or choose element by element with `where_`).
mithril::mithril! {
    model NotBool {
        input x: f32[B, 4];
        input t: f32[];
        let h = x;
        if t {
            let h = h * 2.0;
        }
        output y = h;
    }

    model NotScalar {
        input x: f32[B, 4];
        let h = x;
        if x > 0.0 {
            let h = h * 2.0;
        }
        output y = h;
    }
}

fn main() {}
