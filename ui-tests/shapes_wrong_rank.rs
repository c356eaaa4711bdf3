mithril::mithril! {
    model Mlp {
        input x: f32[B, 784];
        output y = relu(x);
    }

    compile Mlp32 = Mlp {
        shapes: { x: [32, 28, 28] },
    };
}

fn main() {}
