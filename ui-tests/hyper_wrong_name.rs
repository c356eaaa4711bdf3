mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = Linear(dim = 3)(x);
    }
}

fn main() {}
