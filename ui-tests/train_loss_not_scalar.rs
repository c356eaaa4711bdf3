use mithril::mithril;

mithril! {
    train PerSample {
        input x: f32[B, 4];
        input y: i64[B];
        let logits = Linear(3)(x);
        loss cross_entropy(logits, y);
    }
}

fn main() {}
