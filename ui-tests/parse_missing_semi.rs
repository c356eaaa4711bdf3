mithril::mithril! {
    model Net {
        input x: f32[B, 4]
        output y = relu(x);
    }
}

fn main() {}
