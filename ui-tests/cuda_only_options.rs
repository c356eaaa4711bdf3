// The CUDA options on a CPU model, and bad cache settings.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile CacheOnCpu = Net { cache: false };
    compile DirOnCpu = Net { backend: cpu, cache_dir: "target/kernels" };
    compile CudaOnCpu = Net { cuda: { device: 1 } };
    compile EmptyDir = Net { backend: cuda, cache_dir: "" };
    compile CacheNotBool = Net { backend: cuda, cache: "yes" };
}

fn main() {}
