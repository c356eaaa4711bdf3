mithril::mithril! {
    model Net {
        input s: f32[];
        output y = Linear(4)(s);
    }
}

fn main() {}
