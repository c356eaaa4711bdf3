// A name the loop's body binds but that has no value before the loop cannot be read by the
// condition (or by the body before its `let`).
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        let h = x;
        while total < 10.0, max_steps = 20 {
            let h = h * 2.0;
            let total = sum(h);
        }
        output y = h;
    }
}

fn main() {}
