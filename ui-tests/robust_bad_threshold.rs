mithril::mithril! {
    model Guarded {
        input x: f32[B, 4];
        output y = robust_log(x, threshold = 0.0);
        output z = stable_reciprocal(x, threshold = -1e-3);
    }
}

fn main() {}
