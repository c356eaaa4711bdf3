mithril::mithril! {
    model Pair {
        input x: [N, 4];
        input gate: [N, 4];
        output y = x * sigmoid(gate);
    }

    model Net {
        input a: f32[B, 4];
        output y = Pair(a);
    }
}

fn main() {}
