// `target_hardware`: an unsupported target lists the supported ones; a target must agree with
// `backend` and `cuda: { arch }`.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile Tpu = Net { target_hardware: "tpu_v4" };
    compile Phone = Net { target_hardware: "apple_a17" };
    compile NotString = Net { target_hardware: nvidia_h100 };
    compile GpuOnCpu = Net { backend: cpu, target_hardware: "nvidia_a100" };
    compile CpuOnGpu = Net { backend: cuda, target_hardware: "x86_64_v4" };
    compile ArchConflict = Net { target_hardware: "nvidia_a100", cuda: { arch: "sm_90" } };
}

fn main() {}
