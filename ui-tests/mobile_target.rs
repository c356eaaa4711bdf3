// `target_hardware: "mobile"` with `mobile: { platform, arch, quantization, optimize_size }`:
// every unsupported setting or combination is an error that lists the supported ones.
mithril::mithril! {
    model Net {
        input x: f32[B, 4];
        output y = relu(x);
    }

    compile Ios = Net { target_hardware: "mobile", mobile: { platform: ios } };
    compile Armv7 = Net { target_hardware: "mobile", mobile: { arch: "armeabi-v7a" } };
    compile Int8F64 = Net { target_hardware: "mobile", mobile: { quantization: int8 }, dtype: f64 };
    compile Fp16 = Net { target_hardware: "mobile", mobile: { quantization: fp16 } };
    compile SizeWord = Net { target_hardware: "mobile", mobile: { optimize_size: yes } };
    compile Abi = Net { target_hardware: "mobile", mobile: { abi: "arm64-v8a" } };
    compile NotMap = Net { target_hardware: "mobile", mobile: android };
    compile NoTarget = Net { mobile: { platform: android } };
    compile OtherTarget = Net { target_hardware: "x86_64", mobile: { platform: linux } };
    compile OnGpu = Net { backend: cuda, target_hardware: "mobile" };
    compile SizeAndStatic = Net {
        target_hardware: "mobile",
        mobile: { optimize_size: true },
        static_shapes: true,
        shapes: { x: [2, 4] },
    };
}

fn main() {}
