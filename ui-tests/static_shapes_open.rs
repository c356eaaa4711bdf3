mithril::mithril! {
    model Mlp {
        input x: f32[B, 784];
        output y = relu(x);
    }

    compile MlpStatic = Mlp {
        static_shapes: true,
    };
}

fn main() {}
