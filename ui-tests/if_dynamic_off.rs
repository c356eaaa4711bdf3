// `dynamic_control_flow: false`: a run-time `if` is an error that says how to make the
// condition compile-time.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input flag: bool[];
        let h = x;
        if flag {
            let h = h * 2.0;
        }
        output y = h;
    }

    compile NetStatic = Net { dynamic_control_flow: false };
}

fn main() {}
