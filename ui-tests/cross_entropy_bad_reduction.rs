mithril::mithril! {
    model Classify {
        input logits: f32[B, 4];
        input labels: i64[B];
        output loss = cross_entropy(logits, labels, reduction = "avg");
    }
}

fn main() {}
