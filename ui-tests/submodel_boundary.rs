mithril::mithril! {
    model Block {
        input x: [N, 16];
        output y = relu(x);
    }

    model Net {
        input a: f32[B, 8];
        output y = Block(a);
    }
}

fn main() {}
