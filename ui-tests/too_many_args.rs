mithril::mithril! {
    model Block {
        input x: [N, 4];
        output y = relu(x);
    }

    model Net {
        input a: f32[B, 4];
        output y = Block(a, a);
    }
}

fn main() {}
