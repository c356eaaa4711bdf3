mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile Net64 = Net {
        dtype: f64,
        dtype: f16,
    };
}

fn main() {}
