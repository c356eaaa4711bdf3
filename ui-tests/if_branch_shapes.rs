// The branches of a run-time `if` must give a rebound name the same shape (and dtype): the
// error points at the name's binding and shows both shapes.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input flag: bool[];
        let h = x;
        if flag {
            let h = concat(h, x, axis = 1);
        } else {
            let h = h * 2.0;
        }
        output y = h;
    }
}

fn main() {}
