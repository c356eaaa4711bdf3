//! Mixed models (`backend_map`): a submodel instance placed on cuda while the rest runs on the
//! CPU. Without a GPU (this machine): they build, `new()` is an `Err` naming CUDA, the summary
//! shows the backend of every op and the transfers, the generated CUDA C module of the cuda part
//! compiles with the real NVRTC for sm_80 and sm_90, and `file_path` writes it next to the Rust.
//! With a GPU: `evaluate` and `evaluate_gradients` equal the all-CPU model within `F32_TOL`.
//!
//! Lines starting with `SKIPPED` (on the real stderr, so `cargo test` shows them) say what did
//! not run and why.

use mithril::prelude::*;
use mithril::rt::cuda;
use std::path::PathBuf;

use crate::common::{self, gpu, say};

mithril! {
    /// An encoder block.
    pub model Enc {
        input x: f32[B, 16];
        let fc = Linear(32);
        output h = relu(fc(x));
    }

    /// The encoder (instance `enc`), then a head (instance `head`) and a softmax at top level.
    pub model Net {
        input x: f32[B, 16];
        let enc = Enc(x);
        let head = Linear(4);
        output y = softmax(head(enc), axis = -1);
    }

    /// Its training loss.
    pub train NetTrain {
        input x: f32[B, 16];
        input target: i64[B];
        let net = Net(x);
        loss cross_entropy(log(net), target).mean();
    }

    /// `enc` on cuda; `head` and the softmax on the CPU.
    pub compile NetEncGpu = Net { backend_map: { "enc": cuda } };
    /// Everything on cuda but `head` (a glob key and a name key).
    pub compile NetHeadCpu = Net { backend: cuda, backend_map: { head: cpu, "enc.*": cuda } };
    /// Training with the encoder's forward and backward ops on cuda.
    pub compile NetTrainEncGpu = NetTrain {
        backend_map: { "net.enc": cuda },
        cuda: { device: 0 },
        cache: false,
    };
    /// A backend_map entry equal to `backend` changes nothing: a plain CPU model.
    pub compile NetAllCpu = Net { backend_map: { enc: cpu } };
    /// `file_path` on a mixed model also writes its CUDA C module (`.cu`) next to the Rust.
    pub compile NetEncGpuFile = Net {
        backend_map: { "enc": cuda },
        file_path: "target/mithril-test/net_enc_gpu.rs",
    };
    /// `static_shapes` keeps the generic evaluate for a mixed model; `optimize_for` applies to
    /// its CPU part.
    pub compile NetEncGpuStatic = Net {
        backend_map: { "enc": cuda },
        shapes: { x: [4, 16] },
        static_shapes: true,
        optimize_for: throughput,
    };
    /// ... and on a cuda model.
    pub compile EncGpuFile = Enc { backend: cuda, file_path: "target/mithril-test/enc_gpu.rs" };

    /// The encoder, then a `reshape` to a symbolic batch dim and an `arange` whose length is
    /// the input's batch size: with `enc` on cuda, both are per-op Rust on the host (their
    /// families' `call`, with the run-time dims).
    pub model Frames {
        input x: f32[B, 16];
        let enc = Enc(x);
        output y = reshape(enc, [B, 4, 8]).sum(axis = 2);
        output r = arange(B);
    }
    /// `enc` on cuda; the reshape, the sum and the arange on the CPU.
    pub compile FramesEncGpu = Frames { backend_map: { "enc": cuda } };
}

/// The summary row of the first op whose op column starts with `op`.
fn row<'a>(summary: &'a str, op: &str) -> &'a str {
    summary
        .lines()
        .find(|l| {
            l.split('|')
                .nth(2)
                .is_some_and(|c| c.trim().starts_with(op))
        })
        .unwrap_or_else(|| panic!("no `{op}` row in\n{summary}"))
}

fn backend(row: &str) -> &str {
    row.split('|').nth(5).map(str::trim).unwrap_or("")
}

#[test]
fn the_summary_shows_each_ops_backend_and_the_transfers() {
    let s = NetEncGpu::SUMMARY;
    say(s);
    // enc's Linear + ReLU (one matmul with its epilogue) on cuda, downloaded for the head
    let first = row(s, "matmul(b^T)+epilogue[relu(");
    assert_eq!(backend(first), "cuda -> cpu", "{s}");
    // the head's Linear and the softmax on the CPU
    let head = row(s, "matmul(b^T)+epilogue[add(");
    assert_eq!(backend(head), "cpu", "{s}");
    assert_eq!(backend(row(s, "softmax")), "cpu", "{s}");
    // the input and enc's params go up; the head's params stay on the host
    assert_eq!(backend(row(s, "input")), "host -> cuda", "{s}");
    assert!(
        s.lines()
            .any(|l| l.contains("enc.fc.weight") && l.ends_with("host -> cuda")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.contains("head.weight") && l.ends_with("host")),
        "{s}"
    );
    assert!(
        s.contains("backends (evaluate): 1 ops on cuda, 2 on cpu; transfers: 4 (3 uploads: x, enc.fc.weight, enc.fc.bias, 1 download: enc.h)"),
        "{s}"
    );
    assert_eq!(NetEncGpu::TRANSFERS, (3, 1));

    // the other way round: the head on the CPU, everything else on cuda
    let s = NetHeadCpu::SUMMARY;
    assert_eq!(
        backend(row(s, "matmul(b^T)+epilogue[relu(")),
        "cuda -> cpu",
        "{s}"
    );
    assert_eq!(
        backend(row(s, "matmul(b^T)+epilogue[add(")),
        "cpu -> cuda",
        "{s}"
    );
    assert_eq!(backend(row(s, "softmax")), "cuda -> cpu", "{s}");
    assert!(
        s.contains("backends (evaluate): 2 ops on cuda, 1 on cpu; transfers: 6 (4 uploads: x, enc.fc.weight, enc.fc.bias, head.output, 2 downloads: enc.h, y)"),
        "{s}"
    );
    assert_eq!(NetHeadCpu::TRANSFERS, (4, 2));

    // training: the backward ops of the encoder run on cuda too
    let s = NetTrainEncGpu::SUMMARY;
    assert!(s.contains("backends (evaluate_gradients): "), "{s}");
    let s = NetEncGpuStatic::SUMMARY;
    assert!(
        s.contains("static_shapes: evaluate keeps the generic path (not specialized: ops placed by `backend_map`)"),
        "{s}"
    );
    assert_eq!(NetEncGpuStatic::OPTIMIZE_FOR, "throughput");
    assert_eq!(NetEncGpuStatic::TRANSFERS, (3, 1));
    // a backend_map that agrees with `backend` leaves a plain model: no column, no line
    assert!(!NetAllCpu::SUMMARY.contains("backends ("));
    assert!(!NetAllCpu::SUMMARY.contains("host -> cuda"));
}

#[test]
fn a_host_reshape_and_arange_of_run_time_dims_stay_on_the_cpu() {
    let s = FramesEncGpu::SUMMARY;
    say(s);
    assert_eq!(
        backend(row(s, "matmul(b^T)+epilogue[relu(")),
        "cuda -> cpu",
        "{s}"
    );
    assert_eq!(backend(row(s, "reshape")), "cpu", "{s}");
    assert_eq!(backend(row(s, "arange")), "cpu", "{s}");
    if cuda::gpu_status().is_ok() {
        return; // evaluated in gpu_mixed_models_match_the_all_cpu_model
    }
    let e = FramesEncGpu::new()
        .map(|_| ())
        .expect_err("no gpu")
        .to_string();
    assert!(
        e.contains("`FramesEncGpu` (backend_map: enc on cuda) cannot open CUDA device"),
        "{e}"
    );
}

#[test]
fn new_is_an_err_naming_cuda_without_a_gpu() {
    if cuda::gpu_status().is_ok() {
        say("(a GPU is present: new() is expected to succeed; see the gpu_* tests)");
        assert!(NetEncGpu::new().is_ok());
        return;
    }
    for (name, what, r) in [
        (
            "NetEncGpu",
            "backend_map: enc on cuda",
            NetEncGpu::new().map(|_| ()),
        ),
        (
            "NetHeadCpu",
            "backend: cuda, backend_map: head on cpu",
            NetHeadCpu::new().map(|_| ()),
        ),
        (
            "NetTrainEncGpu",
            "backend_map: net.enc on cuda",
            NetTrainEncGpu::on_device(1).map(|_| ()),
        ),
    ] {
        let e = r.expect_err(name).to_string();
        assert!(
            e.contains(&format!("`{name}` ({what}) cannot open CUDA device")),
            "{e}"
        );
        assert!(
            e.contains("CUDA libraries not loadable")
                || e.contains("driver")
                || e.contains("no CUDA device"),
            "{e}"
        );
    }
    say(&format!(
        "NetEncGpu::new() without a GPU: {}",
        NetEncGpu::new().expect_err("no gpu")
    ));
    // the all-CPU model opens anywhere
    assert!(NetAllCpu::new().is_ok());
}

#[test]
fn mixed_models_are_send_and_sync_and_keep_the_host_api() {
    fn check<T: Send + Sync>() {}
    check::<NetEncGpu>();
    check::<NetTrainEncGpu>();
    // the host types are the CPU backend's: the same tree, the same dotted names
    let src = Net::new().unwrap().randomize_params(1);
    let p = NetEncGpuParams {
        enc: NetEncGpuParamsEnc {
            fc: NetEncGpuParamsEncFc {
                weight: src.enc.fc.weight.clone(),
                bias: src.enc.fc.bias.clone(),
            },
        },
        head: NetEncGpuParamsHead {
            weight: src.head.weight.clone(),
            bias: src.head.bias.clone(),
        },
    };
    assert_eq!(
        p.names(),
        ["enc.fc.weight", "enc.fc.bias", "head.weight", "head.bias"]
    );
    // prepared params: the signatures (what runs needs a GPU)
    type Prep = fn(&NetEncGpu, &NetEncGpuParams) -> mithril::Result<NetEncGpuPrepared>;
    type EvalPrep = fn(
        &NetEncGpu,
        &NetEncGpuPrepared,
        NetEncGpuInputs<'_>,
    ) -> mithril::Result<NetEncGpuOutputs>;
    let _: (Prep, EvalPrep) = (NetEncGpu::prepare, NetEncGpu::evaluate_prepared);
    check::<NetEncGpuPrepared>();
    assert_eq!(NetEncGpu::OPTIMIZE_FOR, "latency");
    assert_eq!(NetEncGpu::CUDA_DEVICE, 0);
    assert_eq!(NetEncGpu::CUDA_ARCH, None);
}

/// Every mixed model of this file: name, module source, kernel entries.
const MODELS: &[(&str, &str, &[&str])] = &[
    ("NetEncGpu", NetEncGpu::CUDA_SOURCE, NetEncGpu::CUDA_KERNELS),
    (
        "NetHeadCpu",
        NetHeadCpu::CUDA_SOURCE,
        NetHeadCpu::CUDA_KERNELS,
    ),
    (
        "NetTrainEncGpu",
        NetTrainEncGpu::CUDA_SOURCE,
        NetTrainEncGpu::CUDA_KERNELS,
    ),
];

#[test]
fn the_cuda_part_compiles_with_nvrtc_for_sm80_and_sm90() {
    // what the modules hold, with or without NVRTC: the encoder's bias + ReLU epilogue (bias
    // read with period 32) in evaluate's kernels, nothing of the head (bias period 4)
    assert!(
        NetEncGpu::CUDA_SOURCE.contains("mt_relu(mt_add(x0, x1))"),
        "{}",
        NetEncGpu::CUDA_SOURCE
    );
    assert!(NetEncGpu::CUDA_SOURCE.contains("a1[i % 32L]"));
    assert!(!NetEncGpu::CUDA_SOURCE.contains("a1[i % 4L]"));
    assert!(NetEncGpu::CUDA_KERNELS.iter().any(|k| k.starts_with('f')));
    assert!(NetEncGpu::CUDA_KERNELS.iter().any(|k| k.starts_with('g')));
    // with the head on the CPU, the head's epilogue is not a kernel either
    assert!(!NetHeadCpu::CUDA_SOURCE.contains("a1[i % 4L]"));
    // the train model's backward kernels: the ReLU mask of the encoder
    assert!(
        NetTrainEncGpu::CUDA_KERNELS
            .iter()
            .any(|k| k.starts_with('g'))
    );
    require_nvrtc!();
    common::compile_modules(MODELS, "mixed-model modules");
}

#[test]
fn file_path_writes_the_cuda_module_next_to_the_rust() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mithril-test");
    for (stem, src) in [
        ("net_enc_gpu", NetEncGpuFile::CUDA_SOURCE),
        ("enc_gpu", EncGpuFile::CUDA_SOURCE),
    ] {
        let cu = std::fs::read_to_string(dir.join(format!("{stem}.cu"))).expect(stem);
        assert_eq!(cu, src, "{stem}");
        let rs = std::fs::read_to_string(dir.join(format!("{stem}.rs"))).expect(stem);
        assert!(rs.starts_with("// @generated by mithril!"), "{stem}");
        assert!(rs.contains("CUDA_SOURCE"), "{stem}");
    }
}

fn batch(b: usize, d: usize, seed: u64) -> ndarray::Array2<f32> {
    let mut s = seed;
    ndarray::Array2::from_shape_fn((b, d), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

fn max_rel_diff<D: ndarray::Dimension>(
    a: &ndarray::Array<f32, D>,
    b: &ndarray::Array<f32, D>,
) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0, f32::max)
}

/// Tolerance for f32 on the GPU against the CPU: strict SGEMM and CUDA's libm differ from the
/// CPU's by rounding only.
const F32_TOL: f32 = 1e-4;

#[test]
fn gpu_mixed_models_match_the_all_cpu_model() {
    if !gpu("gpu_mixed_models_match_the_all_cpu_model") {
        return;
    }
    let cpu = Net::new().unwrap();
    let x = batch(9, 16, 1);
    let params = cpu.randomize_params(4);
    let want = cpu.evaluate(&params, NetInputs { x: x.view() }).unwrap();
    let m = NetEncGpu::new().unwrap();
    let got = m
        .evaluate(&m.randomize_params(4), NetEncGpuInputs { x: x.view() })
        .unwrap();
    let d = max_rel_diff(&got.y, &want.y);
    // prepared params give the same results, and keep their own copy of the host params
    let mut mp = m.randomize_params(4);
    let prepared = m.prepare(&mp).unwrap();
    mp.head.bias.fill(100.0);
    let got_p = m
        .evaluate_prepared(&prepared, NetEncGpuInputs { x: x.view() })
        .unwrap();
    assert_eq!(got_p.y, got.y);
    let m2 = NetHeadCpu::new().unwrap();
    let got2 = m2
        .evaluate(&m2.randomize_params(4), NetHeadCpuInputs { x: x.view() })
        .unwrap();
    let d2 = max_rel_diff(&got2.y, &want.y);
    say(&format!("mixed vs CPU: NetEncGpu {d:e}, NetHeadCpu {d2:e}"));
    assert!(d < F32_TOL && d2 < F32_TOL, "{d} {d2}");

    let cpu_t = NetTrain::new().unwrap();
    let gpu_t = NetTrainEncGpu::new().unwrap();
    let target = ndarray::Array1::from_shape_fn(9, |i| (i * 3 % 4) as i64);
    let (lo, g) = cpu_t
        .evaluate_gradients(
            &cpu_t.randomize_params(2),
            NetTrainInputs {
                x: x.view(),
                target: target.view(),
            },
        )
        .unwrap();
    let (lo2, g2) = gpu_t
        .evaluate_gradients(
            &gpu_t.randomize_params(2),
            NetTrainEncGpuInputs {
                x: x.view(),
                target: target.view(),
            },
        )
        .unwrap();
    let d = max_rel_diff(&lo2.loss, &lo.loss)
        .max(max_rel_diff(&g2.net.enc.fc.weight, &g.net.enc.fc.weight))
        .max(max_rel_diff(&g2.net.head.bias, &g.net.head.bias));
    say(&format!(
        "NetTrainEncGpu gradients vs CPU: max rel diff {d:e}"
    ));
    assert!(d < F32_TOL, "{d}");

    // a host reshape to [B, 4, 8] and arange(B) after the encoder on cuda
    let cpu_f = Frames::new().unwrap();
    let want = cpu_f
        .evaluate(&cpu_f.randomize_params(5), FramesInputs { x: x.view() })
        .unwrap();
    let m = FramesEncGpu::new().unwrap();
    let got = m
        .evaluate(&m.randomize_params(5), FramesEncGpuInputs { x: x.view() })
        .unwrap();
    assert_eq!(got.y.shape(), &[9, 4]);
    let d = max_rel_diff(&got.y, &want.y);
    assert!(d < F32_TOL, "{d}");
    assert_eq!(got.r.to_vec(), (0..9).collect::<Vec<i64>>());
}
