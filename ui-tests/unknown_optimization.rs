mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile NetFast = Net {
        optimizations: { operator_fusion: true, loop_unrolling: true },
    };
}

fn main() {}
