mithril::mithril! {
    model Net {
        input x: f32[B, 4, 3];
        output y = transpose(x, axes = [0, 2, 2]);
    }
}

fn main() {}
