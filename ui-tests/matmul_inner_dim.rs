mithril::mithril! {
    model Proj {
        input x: f32[B, 4];
        param w: [8, 3];
        output y = matmul(x, w);
    }
}

fn main() {}
