mithril::mithril! {
    model Counts {
        input n: i32[B, 4];
        output y = exp(n);
    }
}

fn main() {}
