//! `backend: cuda` models without a GPU (and with one when present): they build, `new()` is an
//! `Err` that names what is missing, and every model's generated module (`M::CUDA_SOURCE`)
//! compiles with the real NVRTC for sm_80 and sm_90. With a GPU, `evaluate` (and
//! `evaluate_gradients`) are compared with the same model on the CPU.
//!
//! Lines starting with `SKIPPED` (on the real stderr, so `cargo test` shows them) say what did
//! not run and why.

use mithril::prelude::*;
use mithril::rt::cuda;

use crate::common::{self, gpu, say};

mithril! {
    /// The MNIST perceptron.
    pub model Mlp {
        input x: f32[B, 784];
        let h = relu(Linear(256)(x));
        let h = relu(Linear(128)(h));
        output logits = Linear(10)(h);
    }

    /// Its training loss.
    pub train MlpTrain {
        input x: f32[B, 784];
        input target: i64[B];
        loss cross_entropy(Mlp(x), target).mean();
    }

    /// LayerNorm, GELU, softmax and log_softmax.
    pub model Block {
        input x: f32[B, 64];
        let h = LayerNorm()(x);
        let h = gelu(Linear(64)(h));
        output probs = softmax(h, axis = -1);
        output logp = log_softmax(h * 0.5, axis = -1);
        output total = h.sum(axis = 0);
    }

    /// A bf16 MLP block (cuBLASLt with the bias + ReLU epilogue) and an f16 tanh-GELU layer.
    pub model Half {
        input x: bf16[B, 32];
        input y: f16[B, 16];
        let h = relu(Linear(64)(x));
        output out = Linear(8)(h);
        output z = gelu(Linear(16)(y), approximate = true);
    }

    /// An embedding with i32 token ids (forward and gradient lowered; the gradient is the
    /// scatter-add `rt::cuda::embedding_backward`).
    pub model Embed {
        input tokens: i32[B, T];
        let e = Embedding(num_embeddings = 100, dim = 16)(tokens);
        output y = e.mean(axis = -1);
    }

    pub compile MlpGpu = Mlp { backend: cuda };
    pub compile EmbedGpu = Embed { backend: cuda };
    pub compile MlpTrainGpu = MlpTrain { backend: cuda };
    pub compile BlockGpu = Block { backend: cuda, cuda: { device: 0, arch: "sm_90" }, cache: false };
    pub compile HalfGpu = Half { target_hardware: "nvidia_h100" };
    pub compile MlpTf32 = Mlp { backend: cuda, cuda: { tf32: true }, cache_dir: "target/mithril-cuda-cache" };
    pub compile MlpAmp = Mlp { backend: cuda, cuda: { amp: true } };
    /// A CPU target name only validates (CPU kernels pick their ISA at run time).
    pub compile MlpZen5 = Mlp { target_hardware: "zen5" };
}

/// Every cuda model of this file: name, module source, kernel entries.
const MODELS: &[(&str, &str, &[&str])] = &[
    ("MlpGpu", MlpGpu::CUDA_SOURCE, MlpGpu::CUDA_KERNELS),
    (
        "MlpTrainGpu",
        MlpTrainGpu::CUDA_SOURCE,
        MlpTrainGpu::CUDA_KERNELS,
    ),
    ("BlockGpu", BlockGpu::CUDA_SOURCE, BlockGpu::CUDA_KERNELS),
    ("HalfGpu", HalfGpu::CUDA_SOURCE, HalfGpu::CUDA_KERNELS),
    ("MlpTf32", MlpTf32::CUDA_SOURCE, MlpTf32::CUDA_KERNELS),
    ("MlpAmp", MlpAmp::CUDA_SOURCE, MlpAmp::CUDA_KERNELS),
    ("EmbedGpu", EmbedGpu::CUDA_SOURCE, EmbedGpu::CUDA_KERNELS),
];

#[test]
fn every_generated_module_compiles_with_nvrtc_for_sm80_and_sm90() {
    require_nvrtc!();
    common::compile_modules(MODELS, "generated cuda modules");
}

#[test]
fn cuda_models_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<MlpGpu>();
    check::<MlpTrainGpu>();
    check::<MlpGpuDeviceParams>();
    check::<MlpGpuDeviceOutputs>();
}

#[test]
fn generated_kernels_follow_the_graph() {
    // forward: one epilogue kernel per Linear (bias read with period 256 / 128 / 10; ReLU on
    // the first two); backward: the relu masks, the log_softmax gradient reading a per-row
    // [B, 1] sum as blocks of 10
    let src = MlpTrainGpu::CUDA_SOURCE;
    assert!(src.contains("a1[i % 256L]"), "{src}");
    assert!(src.contains("a1[i % 128L]"), "{src}");
    assert!(src.contains("a1[i % 10L]"), "{src}");
    // the forward kernels of the inference part (f4, f7); in the train graph the pre-activation
    // is kept for the backward pass, so the ReLU is its own kernel there (g5, g9)
    assert_eq!(src.matches("mt_relu(mt_add(x0, x1))").count(), 2, "{src}");
    assert_eq!(src.matches("out[i] = mt_relu(x0);").count(), 2, "{src}");
    assert!(src.contains("((x1 > 0.0f) ? x0 : 0.0f)"), "{src}");
    assert!(src.contains("[(i / 10L) % p2]"), "{src}");
    // evaluate of the inference model launches only its three epilogues (the `g*` kernels are
    // its evaluate_gradients)
    let fwd: Vec<&str> = MlpGpu::CUDA_KERNELS
        .iter()
        .copied()
        .filter(|k| k.starts_with('f'))
        .collect();
    assert_eq!(fwd, ["f3", "f6", "f9"]);
    // bf16 / f16 Linear layers whose epilogue is bias (+ ReLU / tanh-GELU) run on cuBLASLt
    // with the epilogue fused: no forward kernel at all
    assert!(
        HalfGpu::CUDA_KERNELS.iter().all(|k| !k.starts_with('f')),
        "{:?}",
        HalfGpu::CUDA_KERNELS
    );
    // amp: every f32 product casts its operands to bf16 first
    assert!(MlpAmp::CUDA_KERNELS.contains(&"f3_amp_a"));
    assert!(MlpAmp::CUDA_SOURCE.contains("mt_f2b(x0)"));
    // LayerNorm: (x - mu) reads mu [B, 1] as blocks of 64 rows with B known at run time
    assert!(
        BlockGpu::CUDA_SOURCE.contains("[(i / 64L) % p1]"),
        "{}",
        BlockGpu::CUDA_SOURCE
    );
    // i32 token ids are cast to i64 for the embedding kernel (forward: that cast only); the
    // gradient graph casts them for its gather and for the embedding's gradient
    let fwd: Vec<&str> = EmbedGpu::CUDA_KERNELS
        .iter()
        .copied()
        .filter(|k| k.starts_with('f'))
        .collect();
    assert_eq!(fwd, ["f2_idx"]);
    assert_eq!(
        EmbedGpu::CUDA_KERNELS
            .iter()
            .filter(|k| k.starts_with('g') && k.ends_with("_idx"))
            .count(),
        2,
        "{:?}",
        EmbedGpu::CUDA_KERNELS
    );
    assert!(
        EmbedGpu::CUDA_SOURCE
            .contains("f2_idx(const int* __restrict__ a0, long long* __restrict__ out")
    );
    // options
    assert_eq!(HalfGpu::CUDA_ARCH, Some("sm_90"));
    assert_eq!(BlockGpu::CUDA_ARCH, Some("sm_90"));
    assert_eq!(MlpGpu::CUDA_ARCH, None);
    assert_eq!(MlpGpu::CUDA_DEVICE, 0);
}

#[test]
fn new_is_an_err_naming_what_is_missing_without_a_gpu() {
    if cuda::gpu_status().is_ok() {
        say("(a GPU is present: new() is expected to succeed; see the gpu_* tests)");
        assert!(MlpGpu::new().is_ok());
        return;
    }
    for (name, r) in [
        ("MlpGpu", MlpGpu::new().map(|_| ())),
        ("MlpTrainGpu", MlpTrainGpu::new().map(|_| ())),
        ("BlockGpu", BlockGpu::new().map(|_| ())),
        ("HalfGpu", HalfGpu::new().map(|_| ())),
        ("MlpAmp", MlpAmp::on_device(3).map(|_| ())),
    ] {
        let e = r.expect_err(name).to_string();
        assert!(
            e.contains(&format!("`{name}` (backend: cuda) cannot open CUDA device")),
            "{e}"
        );
        // what is missing: the libraries (this machine), or the driver / a device
        assert!(
            e.contains("CUDA libraries not loadable")
                || e.contains("driver")
                || e.contains("no CUDA device"),
            "{e}"
        );
        if e.contains("not loadable") {
            assert!(e.contains("libcuda"), "{e}");
        }
    }
    say(&format!(
        "new() without a GPU: {}",
        MlpGpu::new().expect_err("no gpu")
    ));
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

fn batch(b: usize, d: usize, seed: u64) -> ndarray::Array2<f32> {
    let mut s = seed;
    ndarray::Array2::from_shape_fn((b, d), |_| {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    })
}

/// Tolerance for f32 on the GPU against the CPU: strict SGEMM and CUDA's libm differ from the
/// CPU's by rounding only.
const F32_TOL: f32 = 1e-4;

#[test]
fn gpu_mlp_evaluate_and_gradients_match_the_cpu() {
    if !gpu("gpu_mlp_evaluate_and_gradients_match_the_cpu") {
        return;
    }
    let cpu = Mlp::new().unwrap();
    let gpu = MlpGpu::new().unwrap();
    // the same seed gives the same values on every physical model of `Mlp`
    let (params, gparams) = (cpu.randomize_params(7), gpu.randomize_params(7));
    let x = batch(33, 784, 1);
    let want = cpu.evaluate(&params, MlpInputs { x: x.view() }).unwrap();
    let got = gpu
        .evaluate(&gparams, MlpGpuInputs { x: x.view() })
        .unwrap();
    let d = max_rel_diff(&got.logits, &want.logits);
    say(&format!("MlpGpu vs CPU: max rel diff {d:e}"));
    assert!(d < F32_TOL, "{d}");

    let cpu_t = MlpTrain::new().unwrap();
    let gpu_t = MlpTrainGpu::new().unwrap();
    let (tp, gtp) = (cpu_t.randomize_params(3), gpu_t.randomize_params(3));
    let target = ndarray::Array1::from_shape_fn(33, |i| (i * 7 % 10) as i64);
    let (lo, g) = cpu_t
        .evaluate_gradients(
            &tp,
            MlpTrainInputs {
                x: x.view(),
                target: target.view(),
            },
        )
        .unwrap();
    let (lo2, g2) = gpu_t
        .evaluate_gradients(
            &gtp,
            MlpTrainGpuInputs {
                x: x.view(),
                target: target.view(),
            },
        )
        .unwrap();
    assert!(max_rel_diff(&lo2.loss, &lo.loss) < F32_TOL);
    let d = max_rel_diff(&g2.mlp_0.linear_0.weight, &g.mlp_0.linear_0.weight).max(max_rel_diff(
        &g2.mlp_0.linear_2.bias,
        &g.mlp_0.linear_2.bias,
    ));
    say(&format!("MlpTrainGpu gradients vs CPU: max rel diff {d:e}"));
    assert!(d < F32_TOL, "{d}");
}

#[test]
fn gpu_block_and_half_match_the_cpu() {
    if !gpu("gpu_block_and_half_match_the_cpu") {
        return;
    }
    let (cpu, gpu) = (Block::new().unwrap(), BlockGpu::new().unwrap());
    let (params, gparams) = (cpu.randomize_params(5), gpu.randomize_params(5));
    let x = batch(17, 64, 2);
    let want = cpu.evaluate(&params, BlockInputs { x: x.view() }).unwrap();
    let got = gpu
        .evaluate(&gparams, BlockGpuInputs { x: x.view() })
        .unwrap();
    for (a, b) in [(&got.probs, &want.probs), (&got.logp, &want.logp)] {
        assert!(max_rel_diff(a, b) < F32_TOL);
    }
    assert!(max_rel_diff(&got.total, &want.total) < 1e-3);

    // bf16 / f16: results rounded to 8 / 11 bits; cuBLASLt's GELU is its own approximation
    let (cpu, gpu) = (Half::new().unwrap(), HalfGpu::new().unwrap());
    let (params, gparams) = (cpu.randomize_params(9), gpu.randomize_params(9));
    let xb = batch(16, 32, 3).mapv(half::bf16::from_f32);
    let yh = batch(16, 16, 4).mapv(half::f16::from_f32);
    let want = cpu
        .evaluate(
            &params,
            HalfInputs {
                x: xb.view(),
                y: yh.view(),
            },
        )
        .unwrap();
    let got = gpu
        .evaluate(
            &gparams,
            HalfGpuInputs {
                x: xb.view(),
                y: yh.view(),
            },
        )
        .unwrap();
    let d1 = max_rel_diff(&got.out.mapv(f32::from), &want.out.mapv(f32::from));
    let d2 = max_rel_diff(&got.z.mapv(f32::from), &want.z.mapv(f32::from));
    say(&format!("HalfGpu vs CPU: bf16 {d1:e}, f16 {d2:e}"));
    assert!(d1 < 3e-2 && d2 < 1e-2, "{d1} {d2}");
}

mithril! {
    /// Every convolution, pooling, pad and upsampling form on cuda, forward and (a `train`
    /// model: every gradient op must lower) backward: grouped, depthwise, strided, dilated,
    /// "same"-padded and transposed convolutions (with `output_padding`), max / average pooling
    /// with `ceil_mode` and `count_include_pad = false`, adaptive pooling, the three pad modes,
    /// nearest and bilinear upsampling (with and without `align_corners`).
    pub train CnnOps {
        input x: f32[B, 4, 9, 9];
        input s: f32[B, 4, 10];
        param w1: f32[6, 2, 3, 3];
        param w2: f32[4, 1, 3, 3];
        param wt: f32[4, 3, 2, 2];
        param w1d: f32[3, 4, 3];
        param wt1: f32[4, 2, 3];
        let a = conv2d(x, w1, stride = 2, padding = 1, groups = 2);
        let b = conv2d(x, w2, padding = "same", dilation = 2, groups = 4);
        let c = conv_transpose2d(x, wt, stride = 2, padding = 1, output_padding = 1);
        let d = conv1d(s, w1d, stride = 2, padding = 1, dilation = 2);
        let e = conv_transpose1d(s, wt1, stride = 3, groups = 2);
        output ya = max_pool2d(relu(a), kernel_size = 3, stride = 2, padding = 1, ceil_mode = true);
        output yb = avg_pool2d(b, kernel_size = 3, stride = 2, padding = 1, ceil_mode = true, count_include_pad = false);
        output yc = adaptive_avg_pool2d(c, output_size = (3, 4));
        output yd = max_pool1d(d, kernel_size = 2, dilation = 2);
        output ye = avg_pool1d(e, kernel_size = 3, stride = 2, padding = 1);
        output yf = pad(b, pad = (2, 1, 3, 1), mode = "reflect");
        output yg = pad(d, pad = (1, 2), value = 0.5);
        output yh = pad(a, pad = (1, 0, 2, 2), mode = "replicate");
        output yi = upsample(a, scale_factor = 2);
        output yj = upsample(b, size = (5, 11), mode = "bilinear");
        output yk = upsample(c, scale_factor = (1.5, 2), mode = "bilinear", align_corners = true);
        output yl = adaptive_avg_pool1d(e, 4);
        // a library conv with its bias (whose gradient sums over axes 0, 2, 3)
        output ym = Conv2d(5, 3, stride = 2)(x);
        loss (ym * ym).mean() + (ya * ya).mean() + (yb * yb).mean() + (yc * yc).mean() + (yd * yd).mean()
            + (ye * ye).mean() + (yf * yf).mean() + (yg * yg).mean() + (yh * yh).mean()
            + (yi * yi).mean() + (yj * yj).mean() + (yk * yk).mean() + (yl * yl).mean();
    }

    /// Attention on cuda: plain, causal, an additive mask (a param: its gradient is the
    /// scores' gradient summed to its shape), a boolean key mask, grouped-query (4 query heads
    /// over 2 key/value heads); `D == Dv` (the stacked key/value gradient and its slices) and
    /// `Dv != D` (separate key and value gradients).
    pub train AttnOps {
        input keep: bool[2, 1, 1, 5];
        param q: f32[2, 4, 6, 8];
        param k: f32[2, 2, 5, 8];
        param v: f32[2, 2, 5, 8];
        param v2: f32[2, 2, 5, 3];
        param bias: f32[6, 5];
        output plain = attention(q, k, v);
        output causal = attention(q, k, v2, causal = true);
        output biased = attention(q, k, v, bias, scale = 0.5);
        output kept = attention(q, k, v2, keep, causal = true);
        loss (plain * plain).mean() + (causal * causal).mean() + (biased * biased).mean()
            + (kept * kept).mean();
    }

    pub compile CnnOpsGpu = CnnOps { backend: cuda };
    pub compile AttnOpsGpu = AttnOps { backend: cuda };
}

#[test]
fn cnn_and_attention_modules_compile_with_nvrtc() {
    require_nvrtc!();
    common::compile_modules(
        &[
            ("CnnOpsGpu", CnnOpsGpu::CUDA_SOURCE, CnnOpsGpu::CUDA_KERNELS),
            (
                "AttnOpsGpu",
                AttnOpsGpu::CUDA_SOURCE,
                AttnOpsGpu::CUDA_KERNELS,
            ),
        ],
        "cnn / attention cuda modules",
    );
}

#[test]
fn cnn_and_attention_models_build_for_cuda() {
    // the models build (every op and gradient op lowered: a `train` model fails the build
    // otherwise); without a GPU `new()` is an `Err` naming CUDA
    fn check<T: Send + Sync>() {}
    check::<CnnOpsGpu>();
    check::<AttnOpsGpu>();
    if let Err(e) = CnnOpsGpu::new() {
        assert!(e.to_string().contains("CUDA"), "{e}");
    }
}

fn pattern(shape: &[usize], seed: f32) -> ndarray::ArrayD<f32> {
    ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(shape), |ix| {
        let k: usize = ndarray::Dimension::slice(&ix)
            .iter()
            .enumerate()
            .map(|(i, &v)| (i + 3) * v)
            .sum();
        ((k as f32 * 0.37 + seed).sin() * 0.8).clamp(-1.0, 1.0)
    })
}

fn close_dyn(what: &str, got: &ndarray::ArrayD<f32>, want: &ndarray::ArrayD<f32>, tol: f32) {
    assert_eq!(got.shape(), want.shape(), "{what}");
    let d = got
        .iter()
        .zip(want.iter())
        .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
        .fold(0.0f32, f32::max);
    assert!(d < tol, "{what}: max rel diff {d} (tolerance {tol})");
}

#[test]
fn gpu_cnn_ops_match_the_cpu() {
    if !gpu("gpu_cnn_ops_match_the_cpu") {
        return;
    }
    let (cpu, gpu) = (CnnOps::new().unwrap(), CnnOpsGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(11), gpu.randomize_params(11));
    let x: ndarray::Array4<f32> = pattern(&[3, 4, 9, 9], 0.1).into_dimensionality().unwrap();
    let s: ndarray::Array3<f32> = pattern(&[3, 4, 10], 0.7).into_dimensionality().unwrap();
    let want = cpu
        .evaluate(
            &p,
            CnnOpsInputs {
                x: x.view(),
                s: s.view(),
            },
        )
        .unwrap();
    let got = gpu
        .evaluate(
            &gp,
            CnnOpsGpuInputs {
                x: x.view(),
                s: s.view(),
            },
        )
        .unwrap();
    macro_rules! cmp {
        ($($f:ident),*) => {$(
            close_dyn(stringify!($f), &got.$f.clone().into_dyn(), &want.$f.clone().into_dyn(), F32_TOL);
        )*};
    }
    cmp!(ya, yb, yc, yd, ye, yf, yg, yh, yi, yj, yk, yl, ym, loss);
    let (lo, g) = cpu
        .evaluate_gradients(
            &p,
            CnnOpsInputs {
                x: x.view(),
                s: s.view(),
            },
        )
        .unwrap();
    let (lo2, g2) = gpu
        .evaluate_gradients(
            &gp,
            CnnOpsGpuInputs {
                x: x.view(),
                s: s.view(),
            },
        )
        .unwrap();
    close_dyn("loss", &lo2.loss.into_dyn(), &lo.loss.into_dyn(), F32_TOL);
    // gradients: sums in other orders (atomics in the pooling backward kernels)
    macro_rules! cmpg {
        ($($f:ident),*) => {$(
            close_dyn(stringify!($f), &g2.$f.clone().into_dyn(), &g.$f.clone().into_dyn(), 1e-3);
        )*};
    }
    cmpg!(w1, w2, wt, w1d, wt1);
    close_dyn(
        "conv2d_0.bias",
        &g2.conv2d_0.bias.clone().into_dyn(),
        &g.conv2d_0.bias.clone().into_dyn(),
        1e-3,
    );
    close_dyn(
        "conv2d_0.weight",
        &g2.conv2d_0.weight.clone().into_dyn(),
        &g.conv2d_0.weight.clone().into_dyn(),
        1e-3,
    );
    say("CnnOpsGpu: outputs and gradients match the CPU");
}

#[test]
fn gpu_attention_matches_the_cpu() {
    if !gpu("gpu_attention_matches_the_cpu") {
        return;
    }
    let (cpu, gpu) = (AttnOps::new().unwrap(), AttnOpsGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(5), gpu.randomize_params(5));
    // key 0 always kept (a causal row 0 sees only it)
    let keep =
        ndarray::Array4::from_shape_fn((2, 1, 1, 5), |(b, _, _, j)| j == 0 || (j + b) % 3 != 1);
    let want = cpu
        .evaluate(&p, AttnOpsInputs { keep: keep.view() })
        .unwrap();
    let got = gpu
        .evaluate(&gp, AttnOpsGpuInputs { keep: keep.view() })
        .unwrap();
    macro_rules! cmp {
        ($($f:ident),*) => {$(
            close_dyn(stringify!($f), &got.$f.clone().into_dyn(), &want.$f.clone().into_dyn(), F32_TOL);
        )*};
    }
    cmp!(plain, causal, biased, kept, loss);
    let (_, g) = cpu
        .evaluate_gradients(&p, AttnOpsInputs { keep: keep.view() })
        .unwrap();
    let (_, g2) = gpu
        .evaluate_gradients(&gp, AttnOpsGpuInputs { keep: keep.view() })
        .unwrap();
    macro_rules! cmpg {
        ($($f:ident),*) => {$(
            close_dyn(stringify!($f), &g2.$f.clone().into_dyn(), &g.$f.clone().into_dyn(), 1e-3);
        )*};
    }
    cmpg!(q, k, v, v2, bias);
    say("AttnOpsGpu: outputs and gradients match the CPU");
}

#[test]
fn gpu_dropout_masks_are_the_cpus() {
    if !gpu("gpu_dropout_masks_are_the_cpus") {
        return;
    }
    use mithril::rt::ops::dropout::{DropoutCall, dropout_to};
    let dev = cuda::CudaDevice::open(0).unwrap();
    let x = ndarray::ArrayD::from_shape_fn(ndarray::IxDyn(&[3, 1031]), |ix| {
        1.0 + (ix[0] * 1031 + ix[1]) as f32 * 1e-3
    });
    for (p, op, seed) in [
        (0.5, 0, 1u64),
        (0.1, 3, 0xdead_beef_1234),
        (0.9, 7, u64::MAX),
        (1.0, 1, 5),
    ] {
        let mut want = ndarray::ArrayD::<f32>::zeros(x.shape());
        dropout_to(
            &x.view(),
            DropoutCall {
                p,
                op,
                seed,
                training: true,
            },
            mithril::rt::Dest::View(want.view_mut()),
        )
        .unwrap();
        let dx = cuda::DeviceTensor::to_device(&dev, &x.view()).unwrap();
        let got = cuda::dropout(&dev, &dx, p, op, seed, true)
            .unwrap()
            .to_host()
            .unwrap();
        // the same mask, bit for bit (the kept values are x * the same f32 scale)
        assert_eq!(got, want, "p {p} op {op} seed {seed}");
    }
    say("dropout on cuda: the CPU's masks, bit for bit");
}

// ---- run-time control flow, modes and loops on `backend: cuda` (the host drives the device:
// `mithril-macros/src/backends/cuda/flow.rs`)

use mithril::rt::Mode;

mithril! {
    /// A run-time `if` on an input flag, then one on a condition the model computes (read back
    /// from the device).
    pub model CfIf {
        input x: f32[B, 4];
        input flag: bool[];
        param w: f32[4, 4];
        let h = matmul(x, w);
        if flag {
            let h = relu(h) + 1.0;
        } else {
            let h = h * 2.0;
        }
        if sum(h) > 0.0 {
            let h = tanh(h);
        }
        output y = h;
    }

    /// The seed's recurrent `While`, bounded by `max_steps`.
    pub model CfWhile {
        input x: f32[B, 3];
        input n: i64[];
        param w: f32[3, 3];
        let h = x;
        let step = 0;
        while step < n, max_steps = 20 {
            let h = tanh(matmul(h, w)) + x;
            let step = step + 1;
        }
        output y = h;
        output steps = step;
    }

    /// Its training loss: the gradient runs a reversed loop over the taped carries.
    pub train CfWhileTrain {
        input x: f32[B, 3];
        input n: i64[];
        param w: f32[3, 3];
        let h = x;
        let step = 0;
        while step < n, max_steps = 20 {
            let h = tanh(matmul(h, w)) + x;
            let step = step + 1;
        }
        loss (h * h).mean();
    }

    /// A scan over the sequence axis: step reads `xs[(.., t)]`, a carried `h`, stacked outputs.
    pub model CfScan {
        input xs: f32[B, T, 3];
        param w: f32[3, 3];
        param v: f32[3];
        let h = xs[(.., 0)] * 0.0;
        for t in 0..T {
            let h = tanh(matmul(h, w) + xs[(.., t)]);
            stack hs[(.., t)] = h * v;
        }
        output hs = hs;
        output last = h;
    }

    /// The scan's training loss (gradients through the stacked writes and the step reads).
    pub train CfScanTrain {
        input xs: f32[B, T, 3];
        param w: f32[3, 3];
        param v: f32[3];
        let h = xs[(.., 0)] * 0.0;
        for t in 0..T {
            let h = tanh(matmul(h, w) + xs[(.., t)]);
            stack hs[(.., t)] = h * v;
        }
        loss (hs * hs).mean() + h.mean();
    }

    /// Nested loops, and a run-time `if` in a loop's body.
    pub model CfNest {
        input xs: f32[B, T, 2];
        param w: f32[2, 2];
        param v: f32[2];
        let h = xs[(.., 0)] * 0.0;
        for t in 0..T {
            let k = 0;
            let g = xs[(.., t)];
            while k < 2 {
                let g = tanh(matmul(g, w)) + h;
                let k = k + 1;
            }
            if sum(g) > 0.0 {
                let h = h * v + g;
            } else {
                let h = h - g * v;
            }
        }
        output y = h;
    }

    /// `is_training`: the call's mode (a host value on cuda: no transfer).
    pub model CfMode {
        input x: f32[B, 4];
        param w: f32[4, 4];
        let h = matmul(x, w);
        if is_training {
            let h = h * 0.5;
        }
        output y = h;
    }

    pub compile CfIfGpu = CfIf { backend: cuda };
    pub compile CfWhileGpu = CfWhile { backend: cuda };
    pub compile CfWhileTrainGpu = CfWhileTrain { backend: cuda };
    pub compile CfScanGpu = CfScan { backend: cuda };
    pub compile CfScanTrainGpu = CfScanTrain { backend: cuda };
    pub compile CfNestGpu = CfNest { backend: cuda };
    pub compile CfModeGpu = CfMode { backend: cuda };
}

/// The control-flow models of this file.
const CF_MODELS: &[(&str, &str, &[&str])] = &[
    ("CfIfGpu", CfIfGpu::CUDA_SOURCE, CfIfGpu::CUDA_KERNELS),
    (
        "CfWhileGpu",
        CfWhileGpu::CUDA_SOURCE,
        CfWhileGpu::CUDA_KERNELS,
    ),
    (
        "CfWhileTrainGpu",
        CfWhileTrainGpu::CUDA_SOURCE,
        CfWhileTrainGpu::CUDA_KERNELS,
    ),
    ("CfScanGpu", CfScanGpu::CUDA_SOURCE, CfScanGpu::CUDA_KERNELS),
    (
        "CfScanTrainGpu",
        CfScanTrainGpu::CUDA_SOURCE,
        CfScanTrainGpu::CUDA_KERNELS,
    ),
    ("CfNestGpu", CfNestGpu::CUDA_SOURCE, CfNestGpu::CUDA_KERNELS),
    ("CfModeGpu", CfModeGpu::CUDA_SOURCE, CfModeGpu::CUDA_KERNELS),
];

#[test]
fn control_flow_modules_compile_with_nvrtc() {
    // the scan's step reads and stacked writes are generated indexing kernels (`_ax`)
    for (name, src, entries) in CF_MODELS {
        assert!(!entries.is_empty(), "{name}");
        assert_eq!(src.matches("__global__").count(), entries.len(), "{name}");
    }
    for m in [CfScanGpu::CUDA_KERNELS, CfScanTrainGpu::CUDA_KERNELS] {
        assert!(m.iter().any(|e| e.ends_with("_ax")), "{m:?}");
    }
    require_nvrtc!();
    common::compile_modules(CF_MODELS, "control-flow cuda modules");
}

#[test]
fn control_flow_api_mirrors_the_cpu() {
    // `is_training`: `evaluate_mode` / `evaluate_gradients_mode` as on the CPU, and their
    // device forms; without a GPU `new()` is the usual `Err`
    fn check<T: Send + Sync>() {}
    check::<CfModeGpu>();
    check::<CfScanTrainGpu>();
    let _eval: fn(&CfModeGpu, &CfModeGpuParams, CfModeGpuInputs<'_>, Mode) -> _ =
        CfModeGpu::evaluate_mode;
    let _dev: fn(&CfModeGpu, &CfModeGpuDeviceParams, CfModeGpuDeviceInputs<'_>, Mode) -> _ =
        CfModeGpu::evaluate_device_mode;
    let _cpu: fn(&CfMode, &CfModeParams, CfModeInputs<'_>, Mode) -> _ = CfMode::evaluate_mode;
    if cuda::gpu_status().is_err() {
        assert!(CfWhileGpu::new().is_err());
    }
}

fn seq(b: usize, t: usize, d: usize, seed: u64) -> ndarray::Array3<f32> {
    batch(b * t, d, seed)
        .into_shape_with_order((b, t, d))
        .unwrap()
}

#[test]
fn gpu_if_while_and_mode_match_the_cpu() {
    if !gpu("gpu_if_while_and_mode_match_the_cpu") {
        return;
    }
    let (cpu, gpu) = (CfIf::new().unwrap(), CfIfGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(2), gpu.randomize_params(2));
    for (flag, sign) in [(true, 1.0f32), (false, 1.0), (false, -1.0)] {
        let x = batch(5, 4, 11).mapv(|v| v * sign);
        let f = ndarray::arr0(flag);
        let want = cpu
            .evaluate(
                &p,
                CfIfInputs {
                    x: x.view(),
                    flag: f.view(),
                },
            )
            .unwrap();
        let got = gpu
            .evaluate(
                &gp,
                CfIfGpuInputs {
                    x: x.view(),
                    flag: f.view(),
                },
            )
            .unwrap();
        let d = max_rel_diff(&got.y, &want.y);
        say(&format!(
            "CfIfGpu flag {flag} sign {sign}: max rel diff {d:e}"
        ));
        assert!(d < F32_TOL, "{d}");
    }

    let (cpu, gpu) = (CfWhile::new().unwrap(), CfWhileGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(3), gpu.randomize_params(3));
    let x = batch(4, 3, 12);
    for n in [0i64, 1, 7, 20] {
        let nn = ndarray::arr0(n);
        let want = cpu
            .evaluate(
                &p,
                CfWhileInputs {
                    x: x.view(),
                    n: nn.view(),
                },
            )
            .unwrap();
        let got = gpu
            .evaluate(
                &gp,
                CfWhileGpuInputs {
                    x: x.view(),
                    n: nn.view(),
                },
            )
            .unwrap();
        assert_eq!(got.steps, want.steps, "n = {n}");
        let d = max_rel_diff(&got.y, &want.y);
        assert!(d < F32_TOL, "n = {n}: {d}");
    }
    // past `max_steps`: an `Err` on both backends, never a hang
    let nn = ndarray::arr0(21i64);
    let e = gpu
        .evaluate(
            &gp,
            CfWhileGpuInputs {
                x: x.view(),
                n: nn.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_steps = 20"), "{e}");
    assert!(
        cpu.evaluate(
            &p,
            CfWhileInputs {
                x: x.view(),
                n: nn.view()
            }
        )
        .is_err()
    );

    let (cpu, gpu) = (CfMode::new().unwrap(), CfModeGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(4), gpu.randomize_params(4));
    let x = batch(3, 4, 13);
    for mode in [Mode::Eval, Mode::Train, Mode::TrainSeeded(5)] {
        let want = cpu
            .evaluate_mode(&p, CfModeInputs { x: x.view() }, mode)
            .unwrap();
        let got = gpu
            .evaluate_mode(&gp, CfModeGpuInputs { x: x.view() }, mode)
            .unwrap();
        assert!(max_rel_diff(&got.y, &want.y) < F32_TOL, "{mode:?}");
    }
}

#[test]
fn gpu_scans_and_gradients_through_loops_match_the_cpu() {
    if !gpu("gpu_scans_and_gradients_through_loops_match_the_cpu") {
        return;
    }
    let xs = seq(3, 6, 3, 21);
    let (cpu, gpu) = (CfScan::new().unwrap(), CfScanGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(6), gpu.randomize_params(6));
    let want = cpu.evaluate(&p, CfScanInputs { xs: xs.view() }).unwrap();
    let reads = cuda::flow::readbacks();
    let got = gpu
        .evaluate(&gp, CfScanGpuInputs { xs: xs.view() })
        .unwrap();
    // the counter, condition and step index are host values: no device read in 6 steps
    assert_eq!(cuda::flow::readbacks(), reads);
    assert!(max_rel_diff(&got.hs, &want.hs) < F32_TOL);
    assert!(max_rel_diff(&got.last, &want.last) < F32_TOL);

    let (cpu, gpu) = (CfScanTrain::new().unwrap(), CfScanTrainGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(7), gpu.randomize_params(7));
    let (lo, g) = cpu
        .evaluate_gradients(&p, CfScanTrainInputs { xs: xs.view() })
        .unwrap();
    let reads = cuda::flow::readbacks();
    let (lo2, g2) = gpu
        .evaluate_gradients(&gp, CfScanTrainGpuInputs { xs: xs.view() })
        .unwrap();
    // the forward loop and the reversed one: no device read either
    assert_eq!(cuda::flow::readbacks(), reads);
    assert!(max_rel_diff(&lo2.loss, &lo.loss) < F32_TOL);
    let d = max_rel_diff(&g2.w, &g.w).max(max_rel_diff(&g2.v, &g.v));
    say(&format!(
        "CfScanTrainGpu gradients vs CPU: max rel diff {d:e}"
    ));
    assert!(d < 1e-3, "{d}");

    let (cpu, gpu) = (
        CfWhileTrain::new().unwrap(),
        CfWhileTrainGpu::new().unwrap(),
    );
    let (p, gp) = (cpu.randomize_params(8), gpu.randomize_params(8));
    let x = batch(4, 3, 22);
    for n in [0i64, 1, 9] {
        let nn = ndarray::arr0(n);
        let (lo, g) = cpu
            .evaluate_gradients(
                &p,
                CfWhileTrainInputs {
                    x: x.view(),
                    n: nn.view(),
                },
            )
            .unwrap();
        let (lo2, g2) = gpu
            .evaluate_gradients(
                &gp,
                CfWhileTrainGpuInputs {
                    x: x.view(),
                    n: nn.view(),
                },
            )
            .unwrap();
        assert!(max_rel_diff(&lo2.loss, &lo.loss) < F32_TOL, "n = {n}");
        let d = max_rel_diff(&g2.w, &g.w);
        assert!(d < 1e-3, "n = {n}: {d}");
    }

    let xs = seq(2, 5, 2, 23);
    let (cpu, gpu) = (CfNest::new().unwrap(), CfNestGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(9), gpu.randomize_params(9));
    let want = cpu.evaluate(&p, CfNestInputs { xs: xs.view() }).unwrap();
    let got = gpu
        .evaluate(&gp, CfNestGpuInputs { xs: xs.view() })
        .unwrap();
    assert!(max_rel_diff(&got.y, &want.y) < F32_TOL);
}

// ---- `dropout` on `backend: cuda`: the mask kernel (`dropout.cu`) keyed by the call's seed and
// the op's number, the mode read on the host

mithril! {
    /// Two dropout ops (different masks per op) in a `train` model: the gradient runs the same
    /// mask over the output gradient.
    pub train CfDrop {
        input x: f32[B, 8];
        input t: f32[B, 4];
        param w: f32[8, 4];
        let h = dropout(x, p = 0.25);
        output y = dropout(matmul(h, w), p = 0.5);
        loss mean(square(y - t));
    }
    pub compile CfDropGpu = CfDrop { backend: cuda };
}

#[test]
fn dropout_on_cuda_compiles_with_nvrtc() {
    require_nvrtc!();
    common::compile_modules(
        &[("CfDropGpu", CfDropGpu::CUDA_SOURCE, CfDropGpu::CUDA_KERNELS)],
        "dropout cuda module",
    );
}

#[test]
fn gpu_dropout_model_matches_the_cpu() {
    if !gpu("gpu_dropout_model_matches_the_cpu") {
        return;
    }
    let (cpu, gpu) = (CfDrop::new().unwrap(), CfDropGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(6), gpu.randomize_params(6));
    let (x, t) = (batch(5, 8, 31), batch(5, 4, 32));
    // evaluation is the identity; a seeded training call draws the CPU's masks on the device
    for mode in [Mode::Eval, Mode::TrainSeeded(9), Mode::TrainSeeded(10)] {
        let want = cpu
            .evaluate_mode(
                &p,
                CfDropInputs {
                    x: x.view(),
                    t: t.view(),
                },
                mode,
            )
            .unwrap();
        let got = gpu
            .evaluate_mode(
                &gp,
                CfDropGpuInputs {
                    x: x.view(),
                    t: t.view(),
                },
                mode,
            )
            .unwrap();
        assert!(max_rel_diff(&got.y, &want.y) < F32_TOL, "{mode:?}");
    }
    let inputs = CfDropInputs {
        x: x.view(),
        t: t.view(),
    };
    let (_, want) = cpu
        .evaluate_gradients_mode(&p, inputs, Mode::TrainSeeded(3))
        .unwrap();
    let (_, got) = gpu
        .evaluate_gradients_mode(
            &gp,
            CfDropGpuInputs {
                x: x.view(),
                t: t.view(),
            },
            Mode::TrainSeeded(3),
        )
        .unwrap();
    assert!(max_rel_diff(&got.w, &want.w) < 1e-3);
    say("dropout on cuda: a train model's outputs and gradients are the CPU's");
}

#[test]
fn counted_loops_keep_their_counter_on_the_host() {
    // the generated host code's loops, as the summary reports them (one line per loop, for
    // `evaluate` or `evaluate_gradients`)
    fn loops<'s>(summary: &'s str, which: &str) -> Vec<&'s str> {
        summary
            .lines()
            .filter(|l| l.starts_with(&format!("cuda {which}: run-time loop")))
            .collect()
    }
    let host =
        "counter, condition and step indices on the host, no device-to-host read per iteration";
    // a scan: `for t in 0..T` with step reads `xs[(.., t)]` and stacked writes
    let scan = loops(CfScanGpu::SUMMARY, "evaluate");
    assert_eq!(scan.len(), 1, "{}", CfScanGpu::SUMMARY);
    assert!(
        scan[0].contains("`for t`") && scan[0].contains(host),
        "{scan:?}"
    );
    // its gradient: the forward loop (taping the counter on the host) and the reversed loop
    // (reading the tapes at a host index)
    let train = loops(CfScanTrainGpu::SUMMARY, "evaluate_gradients");
    assert_eq!(train.len(), 2, "{}", CfScanTrainGpu::SUMMARY);
    assert!(
        train[0].contains("`for t`") && train[1].contains("reversed"),
        "{train:?}"
    );
    assert!(train.iter().all(|l| l.contains(host)), "{train:?}");
    // `while step < n` over an input `n`: the device computes the condition, read back each
    // iteration (one read in its body); the reversed loop of its gradient reads nothing
    let w = loops(CfWhileGpu::SUMMARY, "evaluate");
    assert_eq!(w.len(), 1, "{}", CfWhileGpu::SUMMARY);
    assert!(
        w[0].contains("`while`") && w[0].contains("1 device-to-host read(s)"),
        "{w:?}"
    );
    let wt = loops(CfWhileTrainGpu::SUMMARY, "evaluate_gradients");
    assert_eq!(wt.len(), 2, "{}", CfWhileTrainGpu::SUMMARY);
    assert!(
        wt[0].contains("1 device-to-host read(s)") && wt[1].contains(host),
        "{wt:?}"
    );
    // nested: the inner `while k < 2` is all on the host; the outer `for t` reads back only
    // its run-time `if`'s condition `sum(g) > 0.0`
    let nest = loops(CfNestGpu::SUMMARY, "evaluate");
    assert_eq!(nest.len(), 2, "{}", CfNestGpu::SUMMARY);
    assert!(
        nest.iter()
            .any(|l| l.contains("`while`") && l.contains(host)),
        "{nest:?}"
    );
    assert!(
        nest.iter().any(|l| l.contains("`for t`")
            && l.contains("1 device-to-host read(s)")
            && l.contains("its counter on the host")),
        "{nest:?}"
    );
}

mithril! {
    /// f16 / bf16 storage for the f32 kernels of convolution, pooling, pad, upsampling,
    /// dropout and attention on cuda (widened by generated kernels, computed in f32, narrowed
    /// back), forward and (a `train` model: every gradient op must lower) backward.
    pub train PoolHalf {
        input x: f16[B, 4, 9, 9];
        param w: f16[4, 9, 9];
        param wc: f16[4, 2, 3, 3];
        let a = conv2d(x, wc, padding = 1, groups = 2) * w;
        output ya = max_pool2d(relu(a), kernel_size = 3, stride = 2, padding = 1, ceil_mode = true);
        output yb = avg_pool2d(a, kernel_size = 3, stride = 2, padding = 1, count_include_pad = false);
        output yc = adaptive_avg_pool2d(a, output_size = (3, 4));
        output yf = pad(a, pad = (2, 1, 3, 1), mode = "reflect");
        output yi = upsample(a, scale_factor = 2, mode = "bilinear");
        output yd = dropout(a, p = 0.25);
        loss (ya * ya).mean() + (yb * yb).mean() + (yc * yc).mean() + (yf * yf).mean()
            + (yi * yi).mean() + (yd * yd).mean();
    }

    pub train PoolBf16 {
        input x: bf16[B, 3, 10];
        param w: bf16[3, 10];
        param q: bf16[2, 4, 5, 8];
        param kv: bf16[2, 2, 5, 8];
        let a = x * w;
        output ya = max_pool1d(a, kernel_size = 2, dilation = 2);
        output yd = dropout(a, p = 0.5);
        output yq = attention(q, kv, kv, causal = true);
        loss (ya * ya).mean() + (yd * yd).mean() + (yq * yq).mean();
    }

    pub compile PoolHalfGpu = PoolHalf { backend: cuda };
    pub compile PoolBf16Gpu = PoolBf16 { backend: cuda };
}

#[test]
fn half_cnn_ops_build_for_cuda_and_compile_with_nvrtc() {
    // every op and gradient op lowered in f16 / bf16 (a `train` model fails the build
    // otherwise), through widening kernels around the f32 ones
    fn check<T: Send + Sync>() {}
    check::<PoolHalfGpu>();
    check::<PoolBf16Gpu>();
    assert!(PoolHalfGpu::CUDA_KERNELS.iter().any(|k| k.ends_with("_c0")));
    assert!(PoolHalfGpu::CUDA_KERNELS.iter().any(|k| k.ends_with("_cy")));
    assert!(PoolBf16Gpu::CUDA_SOURCE.contains("mt_f2b("));
    require_nvrtc!();
    common::compile_modules(
        &[
            (
                "PoolHalfGpu",
                PoolHalfGpu::CUDA_SOURCE,
                PoolHalfGpu::CUDA_KERNELS,
            ),
            (
                "PoolBf16Gpu",
                PoolBf16Gpu::CUDA_SOURCE,
                PoolBf16Gpu::CUDA_KERNELS,
            ),
        ],
        "f16 / bf16 convolution, pooling, dropout and attention cuda modules",
    );
}

#[test]
fn gpu_half_cnn_ops_match_the_cpu() {
    if !gpu("gpu_half_cnn_ops_match_the_cpu") {
        return;
    }
    let (cpu, gpu) = (PoolHalf::new().unwrap(), PoolHalfGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(3), gpu.randomize_params(3));
    let x: ndarray::Array4<half::f16> = pattern(&[2, 4, 9, 9], 0.4)
        .mapv(half::f16::from_f32)
        .into_dimensionality()
        .unwrap();
    let want = cpu.evaluate(&p, PoolHalfInputs { x: x.view() }).unwrap();
    let got = gpu
        .evaluate(&gp, PoolHalfGpuInputs { x: x.view() })
        .unwrap();
    // f16 results: the same f32 math rounded to 11 bits (sums in another order)
    let f = |a: ndarray::ArrayD<half::f16>| a.mapv(f32::from);
    macro_rules! cmp {
        ($($o:ident),*) => {$(
            close_dyn(stringify!($o), &f(got.$o.clone().into_dyn()), &f(want.$o.clone().into_dyn()), 1e-2);
        )*};
    }
    cmp!(ya, yb, yc, yf, yi, yd);
    // a seeded training call: the same dropout masks, and the gradients
    let (_, g) = cpu
        .evaluate_gradients_mode(&p, PoolHalfInputs { x: x.view() }, Mode::TrainSeeded(7))
        .unwrap();
    let (_, g2) = gpu
        .evaluate_gradients_mode(&gp, PoolHalfGpuInputs { x: x.view() }, Mode::TrainSeeded(7))
        .unwrap();
    close_dyn("w", &f(g2.w.into_dyn()), &f(g.w.into_dyn()), 2e-2);
    close_dyn("wc", &f(g2.wc.into_dyn()), &f(g.wc.into_dyn()), 2e-2);
    say("PoolHalfGpu: outputs and gradients match the CPU");
}

mithril! {
    /// The decode primitives on cuda: two caches appended at `pos` (along axis 2 and the same
    /// axis counted from the end), grouped-query cached attention (4 query heads over 2
    /// key/value heads) with the default scale and `scale = 0.5`.
    pub model DecodeOps {
        input q: f32[B, 4, S, 8];
        input kn: f32[B, 2, S, 8];
        input vn: f32[B, 2, S, 8];
        input pos: i64[];
        input k: f32[B, 2, M, 8];
        input v: f32[B, 2, M, 8];
        let k2 = update_slice(k, kn, pos, axis = 2);
        let v2 = update_slice(v, vn * 2.0, pos, axis = -2);
        output o = cached_attention(q, k2, v2, pos);
        output o2 = cached_attention(q, k2, v2, pos, scale = 0.5);
        output k_out = k2;
        output v_out = v2;
    }

    /// bf16 and f64 caches (bf16: widened to f32 around the f32 kernel; the update copies
    /// 16-bit words), `Dv != D`.
    pub model DecodeTypes {
        input q: bf16[B, 2, S, 4];
        input kn: bf16[B, 2, S, 4];
        input vn: bf16[B, 2, S, 6];
        input k: bf16[B, 2, M, 4];
        input v: bf16[B, 2, M, 6];
        input qd: f64[B, 2, S, 4];
        input kd: f64[B, 2, M, 4];
        input pos: i64[];
        let k2 = update_slice(k, kn, pos, axis = 2);
        let v2 = update_slice(v, vn, pos, axis = 2);
        output o = cached_attention(q, k2, v2, pos);
        output od = cached_attention(qd, update_slice(kd, qd, pos, axis = 2), kd, pos);
        output k_out = k2;
    }

    /// A GPT decode step in the shape of `examples/bench_decode.rs`'s (token and position
    /// embeddings, pre-LN blocks with a key/value cache per layer, a GELU MLP, final LayerNorm
    /// and head), small, written with the primitives cuda lowers: one head (so the head split
    /// is a reshape, no transpose), batch 1, 2-D projections, the positions `pos .. pos + S`
    /// an input.
    pub model TinyGpt {
        input tokens: i64[S];
        input positions: i64[S];
        input pos: i64[];
        input k0: f32[1, M, 8];
        input v0: f32[1, M, 8];
        input k1: f32[1, M, 8];
        input v1: f32[1, M, 8];
        let x = Embedding(num_embeddings = 11, dim = 8)(tokens)
            + Embedding(num_embeddings = 16, dim = 8)(positions);
        let h = LayerNorm()(x);
        let k0n = update_slice(k0, reshape(Linear(8)(h), [1, -1, 8]), pos, axis = 1);
        let v0n = update_slice(v0, reshape(Linear(8)(h), [1, -1, 8]), pos, axis = 1);
        let a = cached_attention(reshape(Linear(8)(h), [1, -1, 8]), k0n, v0n, pos);
        let x = x + Linear(8)(reshape(a, [-1, 8]));
        let x = x + Linear(8)(gelu(Linear(16)(LayerNorm()(x)), approximate = true));
        let h = LayerNorm()(x);
        let k1n = update_slice(k1, reshape(Linear(8)(h), [1, -1, 8]), pos, axis = 1);
        let v1n = update_slice(v1, reshape(Linear(8)(h), [1, -1, 8]), pos, axis = 1);
        let a = cached_attention(reshape(Linear(8)(h), [1, -1, 8]), k1n, v1n, pos);
        let x = x + Linear(8)(reshape(a, [-1, 8]));
        let x = x + Linear(8)(gelu(Linear(16)(LayerNorm()(x)), approximate = true));
        output logits = Linear(11)(LayerNorm()(x));
        output k0_out = k0n;
        output v0_out = v0n;
        output k1_out = k1n;
        output v1_out = v1n;
    }

    pub compile DecodeOpsGpu = DecodeOps { backend: cuda, inference: true };
    pub compile DecodeTypesGpu = DecodeTypes { backend: cuda, inference: true };
    pub compile TinyGptGpu = TinyGpt {
        backend: cuda,
        inference: true,
        donate: [k0, v0, k1, v1],
        file_path: "target/mithril-test/tiny_gpt_gpu.rs",
    };
}

#[test]
fn decode_modules_compile_with_nvrtc() {
    require_nvrtc!();
    common::compile_modules(
        &[
            (
                "DecodeOpsGpu",
                DecodeOpsGpu::CUDA_SOURCE,
                DecodeOpsGpu::CUDA_KERNELS,
            ),
            (
                "DecodeTypesGpu",
                DecodeTypesGpu::CUDA_SOURCE,
                DecodeTypesGpu::CUDA_KERNELS,
            ),
            (
                "TinyGptGpu",
                TinyGptGpu::CUDA_SOURCE,
                TinyGptGpu::CUDA_KERNELS,
            ),
        ],
        "decode cuda modules",
    );
}

#[test]
fn donated_caches_are_appended_in_place() {
    // the generated code (`file_path`): in `evaluate_device_donating` each of the 4 donated
    // caches is read only by its `update_slice`, which writes into it (`update_slice_in`, no
    // copy); `evaluate_device` copies the donated inputs once and forwards
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mithril-test");
    let rs = std::fs::read_to_string(dir.join("tiny_gpt_gpu.rs")).expect("tiny_gpt_gpu.rs");
    let flat: String = rs.split_whitespace().collect();
    let body = &flat[flat
        .find("pubfnevaluate_device_donating")
        .expect("no donating fn")..];
    assert_eq!(body.matches("decode::update_slice_in(").count(), 4, "{rs}");
    assert_eq!(body.matches("decode::update_slice(").count(), 0, "{rs}");
    assert_eq!(body.matches("decode::cached_attention(").count(), 2, "{rs}");
    let fwd = &flat[flat.find("pubfnevaluate_device(").unwrap()..];
    let fwd = &fwd[..fwd.find("pubfnevaluate_device_donating").unwrap()];
    assert_eq!(fwd.matches("exec::copy(").count(), 4, "{fwd}");
}

#[test]
fn gpu_decode_prefill_and_steps_match_the_cpu() {
    if !gpu("gpu_decode_prefill_and_steps_match_the_cpu") {
        return;
    }
    // the decode primitives alone: a prefill of 3 positions, then 1 position per call, the
    // caches carried from call to call; then a position past the cache is an Err on both
    let (cpu, gpu) = (DecodeOps::new().unwrap(), DecodeOpsGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(0), gpu.randomize_params(0));
    let m = 7;
    let mut kc = ndarray::Array4::<f32>::zeros((2, 2, m, 8));
    let mut vc = kc.clone();
    let (mut kg, mut vg) = (kc.clone(), kc.clone());
    for (at, n) in [(0usize, 3usize), (3, 1), (4, 1), (5, 2)] {
        let q: ndarray::Array4<f32> = pattern(&[2, 4, n, 8], at as f32)
            .into_dimensionality()
            .unwrap();
        let kn: ndarray::Array4<f32> = pattern(&[2, 2, n, 8], 0.3 + at as f32)
            .into_dimensionality()
            .unwrap();
        let vn: ndarray::Array4<f32> = pattern(&[2, 2, n, 8], 0.6 + at as f32)
            .into_dimensionality()
            .unwrap();
        let pos = ndarray::arr0(at as i64);
        let want = cpu
            .evaluate(
                &p,
                DecodeOpsInputs {
                    q: q.view(),
                    kn: kn.view(),
                    vn: vn.view(),
                    pos: pos.view(),
                    k: kc.view(),
                    v: vc.view(),
                },
            )
            .unwrap();
        let got = gpu
            .evaluate(
                &gp,
                DecodeOpsGpuInputs {
                    q: q.view(),
                    kn: kn.view(),
                    vn: vn.view(),
                    pos: pos.view(),
                    k: kg.view(),
                    v: vg.view(),
                },
            )
            .unwrap();
        for (w, g, what) in [
            (&want.o, &got.o, "o"),
            (&want.o2, &got.o2, "o2"),
            (&want.k_out, &got.k_out, "k"),
            (&want.v_out, &got.v_out, "v"),
        ] {
            close_dyn(
                &format!("{what} at {at}"),
                &g.clone().into_dyn(),
                &w.clone().into_dyn(),
                F32_TOL,
            );
        }
        (kc, vc, kg, vg) = (want.k_out, want.v_out, got.k_out, got.v_out);
    }
    let (q, kn) = (
        ndarray::Array4::<f32>::zeros((2, 4, 1, 8)),
        ndarray::Array4::<f32>::zeros((2, 2, 1, 8)),
    );
    let pos = ndarray::arr0(m as i64);
    let e = gpu
        .evaluate(
            &gp,
            DecodeOpsGpuInputs {
                q: q.view(),
                kn: kn.view(),
                vn: kn.view(),
                pos: pos.view(),
                k: kg.view(),
                v: vg.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("the cache is full"), "{e}");

    // bf16 and f64 caches, one prefill call at position 2 of a 5-row cache
    let (cpu, gpu) = (DecodeTypes::new().unwrap(), DecodeTypesGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(0), gpu.randomize_params(0));
    let bf = |s: &[usize], seed: f32| -> ndarray::Array4<half::bf16> {
        pattern(s, seed)
            .mapv(half::bf16::from_f32)
            .into_dimensionality()
            .unwrap()
    };
    let f64s = |s: &[usize], seed: f32| -> ndarray::Array4<f64> {
        pattern(s, seed)
            .mapv(f64::from)
            .into_dimensionality()
            .unwrap()
    };
    let (q, kn, vn, k, v) = (
        bf(&[1, 2, 2, 4], 0.1),
        bf(&[1, 2, 2, 4], 0.2),
        bf(&[1, 2, 2, 6], 0.3),
        bf(&[1, 2, 5, 4], 0.4),
        bf(&[1, 2, 5, 6], 0.5),
    );
    let (qd, kd) = (f64s(&[1, 2, 2, 4], 0.6), f64s(&[1, 2, 5, 4], 0.7));
    let pos = ndarray::arr0(2i64);
    let want = cpu
        .evaluate(
            &p,
            DecodeTypesInputs {
                q: q.view(),
                kn: kn.view(),
                vn: vn.view(),
                k: k.view(),
                v: v.view(),
                qd: qd.view(),
                kd: kd.view(),
                pos: pos.view(),
            },
        )
        .unwrap();
    let got = gpu
        .evaluate(
            &gp,
            DecodeTypesGpuInputs {
                q: q.view(),
                kn: kn.view(),
                vn: vn.view(),
                k: k.view(),
                v: v.view(),
                qd: qd.view(),
                kd: kd.view(),
                pos: pos.view(),
            },
        )
        .unwrap();
    assert_eq!(got.k_out, want.k_out, "the bf16 update is a bit copy");
    close_dyn(
        "bf16 cached attention",
        &got.o.mapv(f32::from).into_dyn(),
        &want.o.mapv(f32::from).into_dyn(),
        1e-2,
    );
    let dd = got
        .od
        .iter()
        .zip(want.od.iter())
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f64, f64::max);
    assert!(dd < 1e-12, "f64 cached attention: {dd}");

    // the GPT step: a prefill of 4 tokens, then 3 tokens one per call, logits and caches
    // against the CPU model with the same params
    let (cpu, gpu) = (TinyGpt::new().unwrap(), TinyGptGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(3), gpu.randomize_params(3));
    let toks = [3i64, 1, 4, 1, 5, 9, 2];
    let m = 10;
    let zero = ndarray::Array3::<f32>::zeros((1, m, 8));
    let (mut c, mut g) = (
        [zero.clone(), zero.clone(), zero.clone(), zero.clone()],
        [zero.clone(), zero.clone(), zero.clone(), zero],
    );
    for (at, n) in [(0usize, 4usize), (4, 1), (5, 1), (6, 1)] {
        let t = ndarray::Array1::from(toks[at..at + n].to_vec());
        let positions = ndarray::Array1::from_iter((at..at + n).map(|i| i as i64));
        let pos = ndarray::arr0(at as i64);
        let want = cpu
            .evaluate(
                &p,
                TinyGptInputs {
                    tokens: t.view(),
                    positions: positions.view(),
                    pos: pos.view(),
                    k0: c[0].view(),
                    v0: c[1].view(),
                    k1: c[2].view(),
                    v1: c[3].view(),
                },
            )
            .unwrap();
        let got = gpu
            .evaluate(
                &gp,
                TinyGptGpuInputs {
                    tokens: t.view(),
                    positions: positions.view(),
                    pos: pos.view(),
                    k0: g[0].view(),
                    v0: g[1].view(),
                    k1: g[2].view(),
                    v1: g[3].view(),
                },
            )
            .unwrap();
        close_dyn(
            &format!("logits at {at}"),
            &got.logits.clone().into_dyn(),
            &want.logits.clone().into_dyn(),
            1e-3,
        );
        c = [want.k0_out, want.v0_out, want.k1_out, want.v1_out];
        g = [got.k0_out, got.v0_out, got.k1_out, got.v1_out];
        for (x, y) in c.iter().zip(&g) {
            close_dyn(
                &format!("cache at {at}"),
                &y.clone().into_dyn(),
                &x.clone().into_dyn(),
                1e-3,
            );
        }
    }

    // the same steps on device data with the caches donated: each call appends into the
    // caller's cache (the output is the same device allocation) and the logits are the same
    let dev = gpu.device();
    let dp = gpu.params_to_device(&gp).unwrap();
    let zero = ndarray::Array3::<f32>::zeros((1, m, 8));
    let up = |a: &ndarray::Array3<f32>| cuda::DeviceTensor::to_device(dev, &a.view()).unwrap();
    let mut caches = [up(&zero), up(&zero), up(&zero), up(&zero)];
    let ptr = |t: &cuda::DeviceTensor<f32>| {
        use cuda::cudarc::driver::DevicePtr;
        t.slice().device_ptr(dev.stream()).0
    };
    let ptrs: Vec<_> = caches.iter().map(ptr).collect();
    c = [zero.clone(), zero.clone(), zero.clone(), zero.clone()];
    for (at, n) in [(0usize, 4usize), (4, 1), (5, 1), (6, 1)] {
        let t = ndarray::Array1::from(toks[at..at + n].to_vec());
        let positions = ndarray::Array1::from_iter((at..at + n).map(|i| i as i64));
        let pos = ndarray::arr0(at as i64);
        let (dt, dpos, dpp) = (
            cuda::DeviceTensor::to_device(dev, &t.view()).unwrap(),
            cuda::DeviceTensor::to_device(dev, &positions.view()).unwrap(),
            cuda::DeviceTensor::to_device(dev, &pos.view()).unwrap(),
        );
        let [k0, v0, k1, v1] = caches;
        let o = gpu
            .evaluate_device_donating(
                &dp,
                TinyGptGpuDeviceDonatingInputs {
                    tokens: &dt,
                    positions: &dpos,
                    pos: &dpp,
                    k0,
                    v0,
                    k1,
                    v1,
                },
            )
            .unwrap();
        let want = cpu
            .evaluate(
                &p,
                TinyGptInputs {
                    tokens: t.view(),
                    positions: positions.view(),
                    pos: pos.view(),
                    k0: c[0].view(),
                    v0: c[1].view(),
                    k1: c[2].view(),
                    v1: c[3].view(),
                },
            )
            .unwrap();
        let got = o.logits.to_host().unwrap();
        close_dyn(
            &format!("donated logits at {at}"),
            &got,
            &want.logits.clone().into_dyn(),
            1e-3,
        );
        caches = [o.k0_out, o.v0_out, o.k1_out, o.v1_out];
        let now: Vec<_> = caches.iter().map(ptr).collect();
        assert_eq!(now, ptrs, "the caches are appended in place");
        c = [want.k0_out, want.v0_out, want.k1_out, want.v1_out];
    }
    say(
        "decode on cuda: prefill + steps match the CPU (DecodeOps, DecodeTypes, TinyGpt), donated caches appended in place",
    );
}

mithril! {
    /// The library GPT of `examples/bench_decode.rs` / `examples/train_gpt.rs` (`CharGptStep`),
    /// small: token embeddings, learned positions at `pos ..` (`CachedPositionalEmbedding`:
    /// `arange`), a `CachedTransformerBlock` (the `[3 d]` in-projection split by slices, the head
    /// split by `transpose`, `[B, S, d]` products), final LayerNorm and head; 2 heads of 4.
    pub model LibGpt {
        input tokens: i64[B, S];
        input pos: i64[];
        input k0: f32[B, 2, M, 4];
        input v0: f32[B, 2, M, 4];
        let wte = Embedding(num_embeddings = 11, dim = 8);
        let wpe = CachedPositionalEmbedding(16, 8);
        let block0 = CachedTransformerBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh");
        let (h, k0n, v0n) = block0(wpe(wte(tokens), pos), k0, v0, pos);
        let ln_f = LayerNorm();
        let head = Linear(11);
        output logits = head(ln_f(h));
        output k0_out = k0n;
        output v0_out = v0n;
    }

    /// The same GPT over a whole window, trained (`examples/train_gpt.rs`'s `CharGpt`, with the
    /// params of `LibGpt`): `PositionalEmbedding` (`arange`), a causal `TransformerEncoderBlock`
    /// (slices of the in-projection and their gradient, `transpose`, batched products and their
    /// gradients), the embedding's gradient.
    pub train LibGptTrain {
        input tokens: i64[B, S];
        input targets: i64[B, S];
        let wte = Embedding(num_embeddings = 11, dim = 8);
        let wpe = PositionalEmbedding(16, 8);
        let block0 = TransformerEncoderBlock(8, 2, dim_feedforward = 16, activation = "gelu_tanh", causal = true);
        let ln_f = LayerNorm();
        let head = Linear(11);
        output logits = head(ln_f(block0(wpe(wte(tokens)))));
        loss cross_entropy(logits, targets).mean();
    }

    pub compile LibGptGpu = LibGpt {
        backend: cuda,
        inference: true,
        donate: [k0, v0],
        file_path: "target/mithril-test/lib_gpt_gpu.rs",
    };
    pub compile LibGptTrainGpu = LibGptTrain { backend: cuda };
}

#[test]
fn library_gpt_modules_compile_with_nvrtc() {
    require_nvrtc!();
    common::compile_modules(
        &[
            ("LibGptGpu", LibGptGpu::CUDA_SOURCE, LibGptGpu::CUDA_KERNELS),
            (
                "LibGptTrainGpu",
                LibGptTrainGpu::CUDA_SOURCE,
                LibGptTrainGpu::CUDA_KERNELS,
            ),
        ],
        "library GPT cuda modules",
    );
}

#[test]
fn library_gpt_reads_its_position_once_per_call() {
    // the generated code (`file_path`): `pos` is read back once at the start of
    // `evaluate_device_donating` and the cache update and cached attention take that host
    // value; each donated cache is appended in place; the slices, head splits and positions
    // are the layout kernels
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/mithril-test");
    let rs = std::fs::read_to_string(dir.join("lib_gpt_gpu.rs")).expect("lib_gpt_gpu.rs");
    let flat: String = rs.split_whitespace().collect();
    let body = &flat[flat
        .find("pubfnevaluate_device_donating")
        .expect("no donating fn")..];
    assert_eq!(body.matches("flow::read_index(").count(), 1, "{rs}");
    assert_eq!(body.matches("decode::update_slice_in(").count(), 2, "{rs}");
    assert_eq!(body.matches("decode::update_slice(").count(), 0, "{rs}");
    assert_eq!(body.matches("decode::cached_attention(").count(), 1, "{rs}");
    assert_eq!(body.matches("layout::arange::<i64>(").count(), 1, "{rs}");
    // q, k, v and the merged heads
    assert_eq!(body.matches("layout::transpose(").count(), 4, "{rs}");
    assert!(body.matches("layout::slice(").count() >= 3, "{rs}");
}

#[test]
fn gpu_library_gpt_matches_the_cpu() {
    if !gpu("gpu_library_gpt_matches_the_cpu") {
        return;
    }
    // decoding: a prefill of 3 tokens (batch 2), then 2 tokens one per call, the caches
    // carried from call to call; logits and caches against the CPU model with the same params
    let (cpu, gpu) = (LibGpt::new().unwrap(), LibGptGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(5), gpu.randomize_params(5));
    let toks = [[3i64, 1, 4, 1, 5], [9, 2, 6, 5, 3]];
    let m = 8;
    let zero = ndarray::Array4::<f32>::zeros((2, 2, m, 4));
    let (mut c, mut g) = ([zero.clone(), zero.clone()], [zero.clone(), zero.clone()]);
    for (at, n) in [(0usize, 3usize), (3, 1), (4, 1)] {
        let t = ndarray::Array2::from_shape_fn((2, n), |(b, s)| toks[b][at + s]);
        let pos = ndarray::arr0(at as i64);
        let want = cpu
            .evaluate(
                &p,
                LibGptInputs {
                    tokens: t.view(),
                    pos: pos.view(),
                    k0: c[0].view(),
                    v0: c[1].view(),
                },
            )
            .unwrap();
        let got = gpu
            .evaluate(
                &gp,
                LibGptGpuInputs {
                    tokens: t.view(),
                    pos: pos.view(),
                    k0: g[0].view(),
                    v0: g[1].view(),
                },
            )
            .unwrap();
        close_dyn(
            &format!("logits at {at}"),
            &got.logits.clone().into_dyn(),
            &want.logits.clone().into_dyn(),
            1e-3,
        );
        c = [want.k0_out, want.v0_out];
        g = [got.k0_out, got.v0_out];
        for (x, y) in c.iter().zip(&g) {
            close_dyn(
                &format!("cache at {at}"),
                &y.clone().into_dyn(),
                &x.clone().into_dyn(),
                1e-3,
            );
        }
    }

    // the same on device data with the caches donated: appended in place, the same logits
    let dev = gpu.device();
    let dp = gpu.params_to_device(&gp).unwrap();
    let up = |a: &ndarray::Array4<f32>| cuda::DeviceTensor::to_device(dev, &a.view()).unwrap();
    let mut caches = [up(&zero), up(&zero)];
    let ptr = |t: &cuda::DeviceTensor<f32>| {
        use cuda::cudarc::driver::DevicePtr;
        t.slice().device_ptr(dev.stream()).0
    };
    let ptrs: Vec<_> = caches.iter().map(ptr).collect();
    c = [zero.clone(), zero.clone()];
    for (at, n) in [(0usize, 3usize), (3, 1), (4, 1)] {
        let t = ndarray::Array2::from_shape_fn((2, n), |(b, s)| toks[b][at + s]);
        let pos = ndarray::arr0(at as i64);
        let (dt, dpp) = (
            cuda::DeviceTensor::to_device(dev, &t.view()).unwrap(),
            cuda::DeviceTensor::to_device(dev, &pos.view()).unwrap(),
        );
        let [k0, v0] = caches;
        let o = gpu
            .evaluate_device_donating(
                &dp,
                LibGptGpuDeviceDonatingInputs {
                    tokens: &dt,
                    pos: &dpp,
                    k0,
                    v0,
                },
            )
            .unwrap();
        let want = cpu
            .evaluate(
                &p,
                LibGptInputs {
                    tokens: t.view(),
                    pos: pos.view(),
                    k0: c[0].view(),
                    v0: c[1].view(),
                },
            )
            .unwrap();
        close_dyn(
            &format!("donated logits at {at}"),
            &o.logits.to_host().unwrap(),
            &want.logits.clone().into_dyn(),
            1e-3,
        );
        caches = [o.k0_out, o.v0_out];
        let now: Vec<_> = caches.iter().map(ptr).collect();
        assert_eq!(now, ptrs, "the caches are appended in place");
        c = [want.k0_out, want.v0_out];
    }
    // a position past the cache is the CPU's Err
    let t = ndarray::Array2::from_elem((2, 1), 1i64);
    let pos = ndarray::arr0(m as i64);
    let e = gpu
        .evaluate(
            &gp,
            LibGptGpuInputs {
                tokens: t.view(),
                pos: pos.view(),
                k0: zero.view(),
                v0: zero.view(),
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the cache is full") || e.contains("out of range"),
        "{e}"
    );

    // training: the loss and the gradients of the embeddings (the gather's and the position
    // table's), the in-projection (through the slices) and the head against the CPU
    let (cpu, gpu) = (LibGptTrain::new().unwrap(), LibGptTrainGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(5), gpu.randomize_params(5));
    let t = ndarray::Array2::from_shape_fn((2, 5), |(b, s)| toks[b][s]);
    let y = ndarray::Array2::from_shape_fn((2, 5), |(b, s)| toks[1 - b][s]);
    let (lo, gr) = cpu
        .evaluate_gradients(
            &p,
            LibGptTrainInputs {
                tokens: t.view(),
                targets: y.view(),
            },
        )
        .unwrap();
    let (lo2, gr2) = gpu
        .evaluate_gradients(
            &gp,
            LibGptTrainGpuInputs {
                tokens: t.view(),
                targets: y.view(),
            },
        )
        .unwrap();
    close_dyn(
        "loss",
        &lo2.loss.clone().into_dyn(),
        &lo.loss.clone().into_dyn(),
        1e-3,
    );
    for (what, got, want) in [
        ("wte", &gr2.wte.weight, &gr.wte.weight),
        ("wpe", &gr2.wpe.weight, &gr.wpe.weight),
        (
            "in_proj_weight",
            &gr2.block0.self_attn.in_proj_weight,
            &gr.block0.self_attn.in_proj_weight,
        ),
        ("head", &gr2.head.weight, &gr.head.weight),
    ] {
        close_dyn(
            what,
            &got.clone().into_dyn(),
            &want.clone().into_dyn(),
            1e-3,
        );
    }
    say(
        "library GPT on cuda: prefill + steps, donated caches and training gradients match the CPU",
    );
}

mithril! {
    /// `concat` and `stack` on cuda: the library's rotary embedding at a run-time position
    /// (`CachedRoPE`: `concat` of the angles and of the rotated halves), and `concat` /
    /// `stack` over other axes, negative ones too.
    pub model RopeDecode {
        input q: f32[B, H, S, 8];
        input pos: i64[];
        let rope = CachedRoPE(8);
        let r = rope(q, pos);
        output rotated = r;
        output joined = concat(r, q, q * 2.0, axis = -2);
        output stacked = stack(q, r, axis = 1);
    }

    /// Their gradients: `RoPE` (the gradient of each `concat` part: a gather of its block) and
    /// `stack` (a slice per part), trained.
    pub train RopeTrain {
        input x: f32[2, 2, 5, 8];
        param w: f32[8];
        param y: f32[2, 5, 8];
        let rope = RoPE(8);
        let r = rope(x * w);
        let j = concat(r, x * w, axis = 1);
        let s = stack(y, y * 3.0, axis = -1);
        output joined = j;
        output stacked = s;
        loss (j * j).mean() + (s * s * s).mean() + (r * x).mean();
    }

    pub compile RopeDecodeGpu = RopeDecode { backend: cuda };
    pub compile RopeTrainGpu = RopeTrain { backend: cuda };
}

#[test]
fn concat_and_stack_modules_compile_with_nvrtc() {
    require_nvrtc!();
    common::compile_modules(
        &[
            (
                "RopeDecodeGpu",
                RopeDecodeGpu::CUDA_SOURCE,
                RopeDecodeGpu::CUDA_KERNELS,
            ),
            (
                "RopeTrainGpu",
                RopeTrainGpu::CUDA_SOURCE,
                RopeTrainGpu::CUDA_KERNELS,
            ),
        ],
        "concat / stack cuda modules",
    );
}

#[test]
fn gpu_concat_and_stack_match_the_cpu() {
    if !gpu("gpu_concat_and_stack_match_the_cpu") {
        return;
    }
    let (cpu, gpu) = (RopeDecode::new().unwrap(), RopeDecodeGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(3), gpu.randomize_params(3));
    let q: ndarray::Array4<f32> = pattern(&[2, 3, 4, 8], 0.3).into_dimensionality().unwrap();
    for at in [0i64, 5] {
        let pos = ndarray::arr0(at);
        let want = cpu
            .evaluate(
                &p,
                RopeDecodeInputs {
                    q: q.view(),
                    pos: pos.view(),
                },
            )
            .unwrap();
        let got = gpu
            .evaluate(
                &gp,
                RopeDecodeGpuInputs {
                    q: q.view(),
                    pos: pos.view(),
                },
            )
            .unwrap();
        close_dyn(
            "rotated",
            &got.rotated.clone().into_dyn(),
            &want.rotated.clone().into_dyn(),
            1e-5,
        );
        // `concat` and `stack` are bit copies
        assert_eq!(got.joined, want.joined, "joined at {at}");
        assert_eq!(got.stacked, want.stacked, "stacked at {at}");
    }
    let (cpu, gpu) = (RopeTrain::new().unwrap(), RopeTrainGpu::new().unwrap());
    let (p, gp) = (cpu.randomize_params(7), gpu.randomize_params(7));
    let x: ndarray::Array4<f32> = pattern(&[2, 2, 5, 8], 0.9).into_dimensionality().unwrap();
    let (lo, gr) = cpu
        .evaluate_gradients(&p, RopeTrainInputs { x: x.view() })
        .unwrap();
    let (lo2, gr2) = gpu
        .evaluate_gradients(&gp, RopeTrainGpuInputs { x: x.view() })
        .unwrap();
    close_dyn(
        "loss",
        &lo2.loss.clone().into_dyn(),
        &lo.loss.clone().into_dyn(),
        1e-4,
    );
    close_dyn(
        "w",
        &gr2.w.clone().into_dyn(),
        &gr.w.clone().into_dyn(),
        1e-4,
    );
    close_dyn(
        "y",
        &gr2.y.clone().into_dyn(),
        &gr.y.clone().into_dyn(),
        1e-4,
    );
    say("concat / stack on cuda: CachedRoPE, RoPE's and stack's gradients match the CPU");
}
