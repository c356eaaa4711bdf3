mithril::mithril! {
    model Net {
        input x: f32[B, 2.5];
        output y = x;
    }
}

fn main() {}
