// Every bad `cpu: { ... }` and `donate: [...]` value is an error on the offending tokens.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        input b: f32[4];
        output y = relu(x) + b;
        output s = x.sum();
    }

    compile NotAMap = Net { cpu: 4 };
    compile ZeroThreads = Net { cpu: { threads: 0 } };
    compile BadSimd = Net { cpu: { simd: neon } };
    compile NotBool = Net { cpu: { deterministic: 1 } };
    compile Unknown = Net { cpu: { cores: 2 } };
    compile Throughput = Net { cpu: { threads: 2 }, optimize_for: throughput };
    compile OnCuda = Net { backend: cuda, cpu: { threads: 2 } };
    compile DonateNotList = Net { donate: x };
    compile DonateEmpty = Net { donate: [] };
    compile DonateTwice = Net { donate: [x, x] };
    compile DonateUnknown = Net { donate: [z] };
    compile DonateNoMatch = Net { donate: [b] };
    compile DonateStatic = Net { donate: [x], static_shapes: true, shapes: { x: [2, 4] } };
}

fn main() {}
