// Every bad `cuda: { ... }` setting is an error on the offending tokens.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile NotAMap = Net { backend: cuda, cuda: 3 };
    compile BadDevice = Net { backend: cuda, cuda: { device: "0" } };
    compile OldArch = Net { backend: cuda, cuda: { arch: "sm_60" } };
    compile ArchIdent = Net { backend: cuda, cuda: { arch: sm_90 } };
    compile Unknown = Net { backend: cuda, cuda: { fast: true } };
    compile NotBool = Net { backend: cuda, cuda: { tf32: 1 } };
    compile Both = Net { backend: cuda, cuda: { tf32: true, amp: true } };
    compile BadBackend = Net { backend: tpu };
}

fn main() {}
