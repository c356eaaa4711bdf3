// Every dim is static, so the planned memory is known at compile time: over `max_memory_gb` it
// is a compile error on the option.
mithril::mithril! {
    model Wide {
        input x: f32[B, 4096];
        let h = relu(Linear(4096)(x));
        output y = Linear(4096)(h);
    }

    compile Small = Wide { shapes: { x: [1024, 4096] }, static_shapes: true, max_memory_gb: 0.001 };
}

fn main() {}
