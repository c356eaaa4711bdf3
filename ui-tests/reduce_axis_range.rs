mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = x.sum(axis = 2);
    }
}

fn main() {}
