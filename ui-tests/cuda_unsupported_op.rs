// An op without a CUDA lowering yet is a compile error on the tokens that made it, naming the
// primitive and listing what `backend: cuda` lowers.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        let y = relu(x);
        output both = concat(y, x, axis = 1);
    }

    compile NetGpu = Net {
        backend: cuda,
    };
}

fn main() {}
