mithril::mithril! {
    model Scale {
        input x: f32[N, 5, 3];
        input s: f32[4, 1];
        output y = x * s;
    }
}

fn main() {}
