mithril::mithril! {
    model Add {
        input a: f32[B, 4];
        input b: f32[B, 8];
        output y = a + b;
    }
}

fn main() {}
