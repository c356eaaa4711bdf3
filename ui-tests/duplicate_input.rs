mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input x: f32[B, 4];
        output y = x;
    }
}

fn main() {}
