// An op without a CUDA lowering yet is a compile error on the tokens that made it, naming the
// primitive and listing what `backend: cuda` lowers. A bool cache update is one (the cache
// update takes float and integer tensors); `donate` on a cuda model names its inputs.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        let y = relu(x);
        output both = y.argmax(axis = 1);
    }

    compile NetGpu = Net {
        backend: cuda,
    };

    model Cache {
        input c: bool[4, M];
        input r: bool[4, 1];
        input pos: i64[];
        output y = update_slice(c, r, pos, axis = 1);
    }

    compile CacheGpu = Cache { backend: cuda, donate: [c, z] };
}

fn main() {}
