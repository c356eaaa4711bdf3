mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile A = Net { save_intermediates: 1 };
    compile B = Net { save_intermediates: true, intermediate_dir: 3 };
    compile C = Net { intermediate_dir: "out" };
    compile D = Net { profile: "yes" };
    compile E = Net { profile: true, profile_output: "" };
    compile F = Net { profile_output: "p.json" };
    compile G = Net { code_transformers: timing };
    compile H = Net { code_transformers: [timing, speed] };
    compile I = Net { code_transformers: [trace, nan_check, trace] };
    compile J = Net { backend: cuda, profile: true };
    compile K = Net { static_shapes: true, shapes: { x: [2, 4] }, save_intermediates: true };
    compile L = Net { backend_map: { "*": cuda }, code_transformers: [hook] };
}

fn main() {}
