mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
        output y = sigmoid(x);
    }
}

fn main() {}
