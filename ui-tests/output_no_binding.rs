mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        let h = relu(x);
        output hidden;
    }
}

fn main() {}
