mithril::mithril! {
    model A {
        input x: [N, 4];
        output y = B(x);
    }

    model B {
        input x: [N, 4];
        output y = A(x) + 1.0;
    }

    model Net {
        input x: f32[4, 4];
        output y = A(x);
    }
}

fn main() {}
