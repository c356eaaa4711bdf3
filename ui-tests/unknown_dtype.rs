mithril::mithril! {
    model Net {
        input x: f31[B, 4];
        output y = x;
    }
}

fn main() {}
