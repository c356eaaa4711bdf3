mithril::mithril! {
    model Net {
        input x: f32[batch, 4];
        output y = x;
    }
}

fn main() {}
