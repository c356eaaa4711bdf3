// An op that `backend_map` places on cuda but the CUDA backend does not lower is an error under
// the op's tokens; the same op on the CPU is fine.
mithril::mithril! {
    model Join {
        input a: f32[B, 4];
        input b: f32[B, 4];
        output y = (a * b).prod(axis = 1, keepdim = true);
    }

    model Net {
        input x: f32[B, 4];
        let j = Join(x, x * 2.0);
        output y = Linear(2)(j);
    }

    compile JoinOnGpu = Net { backend_map: { j: cuda } };
    compile HeadOnGpu = Net { backend_map: { linear_0: cuda } };
}

fn main() {}
