// An `output` inside a run-time `if` is an error: outputs exist whatever branch runs.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input flag: bool[];
        if flag {
            output y = x * 2.0;
        }
    }
}

fn main() {}
