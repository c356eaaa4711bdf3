// Every bad `quantization` value or combination is an error on the offending tokens.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(Linear(3)(x));
    }

    compile Int4 = Net { quantization: int4 };
    compile Quoted = Net { quantization: "int8" };
    compile OnCuda = Net { backend: cuda, quantization: int8 };
    compile Static = Net { shapes: { x: [2, 4] }, static_shapes: true, quantization: int8 };
    compile Double = Net { dtype: f64, quantization: int8 };
    compile Mixed = Net { backend_map: { linear_0: cuda }, quantization: int8 };
}

fn main() {}
