mithril::mithril! {
    model Mixed {
        input a: f32[B, 4];
        input b: f64[4, 2];
        output y = matmul(a, b);
    }
}

fn main() {}
