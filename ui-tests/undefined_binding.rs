mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        let hidden = relu(x);
        output y = hiden * 2.0;
    }
}

fn main() {}
