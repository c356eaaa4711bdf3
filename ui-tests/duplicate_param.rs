mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        param w: [4];
        param w: [4];
        output y = x * w;
    }
}

fn main() {}
