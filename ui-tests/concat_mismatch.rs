mithril::mithril! {
    model Net {
        input a: f32[B, 4];
        input c: f32[B, 3, 4];
        output y = concat(a, c, axis = 1);
    }
}

fn main() {}
