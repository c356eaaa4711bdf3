mithril::mithril! {
    model Classify {
        input logits: f32[B, 4];
        input labels: i64[B];
        output loss = cross_entropy(logits, labels, reduction = "avg");
    }

    model Deep {
        input x: f32[B, T, 2];
        let (y, h, c, _hl, _cl) = LSTM(2, 3, num_layers = 4)(x);
        output out = y + h.sum() + c.sum();
    }
}

fn main() {}
