// A name rebound in a run-time `if` must keep one dtype across the branches.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input flag: bool[];
        let h = x;
        if flag {
            let h = cast(h, dtype = f64);
        }
        output y = h;
    }
}

fn main() {}
