mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = rleu(x);
    }
}

fn main() {}
