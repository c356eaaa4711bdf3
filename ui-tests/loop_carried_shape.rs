// A loop variable keeps its shape (and dtype) from one iteration to the next: the error names
// the variable and both shapes.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input n: i64[];
        let h = x;
        let step = 0;
        while step < n {
            let h = sum(h, axis = 1);
            let step = step + 1;
        }
        output y = h;
    }

    model Typed {
        input x: f32[B, 4];
        input n: i64[];
        let step = 0;
        while step < n {
            let step = step + 1.5;
        }
        output y = x;
        output s = step;
    }
}

fn main() {}
