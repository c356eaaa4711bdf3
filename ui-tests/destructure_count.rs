mithril::mithril! {
    model Split {
        input x: [N, 4];
        output pos = relu(x);
        output neg = relu(-x);
    }

    model Net {
        input x: f32[B, 4];
        let (p, n, extra) = Split(x);
        output y = p + n;
    }
}

fn main() {}
