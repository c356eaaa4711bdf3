mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = Linear(dimension = 2.5)(x);
    }
}

fn main() {}
