mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile A = Net { verbose: 3 };
    compile B = Net { trace_shapes: "x" };
}

fn main() {}
