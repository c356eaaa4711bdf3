// The linear-algebra primitives have no CUDA lowering yet: a compile error under the op.
mithril::mithril! {
    model Net {
        input a: f32[N, N];
        output l = cholesky(a);
    }

    compile NetGpu = Net {
        backend: cuda,
    };
}

fn main() {}
