mithril::mithril! {
    model Split {
        input x: [N, 4];
        output pos = relu(x);
        output neg = relu(-x);
    }

    model Net {
        input x: f32[B, 4];
        output y = Split(x).negative;
    }
}

fn main() {}
