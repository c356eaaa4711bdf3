mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile Net32 = Net {
        static_shape: true,
    };
}

fn main() {}
