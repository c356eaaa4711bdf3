//! The CUDA backend without a GPU: every hand-written kernel source is compiled to PTX for
//! sm_80 and sm_90 (and to an sm_90 CUBIN) by the real NVRTC, the kernel cache is exercised
//! against NVRTC, and opening a device fails cleanly. Tests that need a device print
//! `SKIPPED: no CUDA device (<reason>)` and return when there is none.
//!
//! NVRTC comes from the loader path, `MITHRIL_NVRTC_DIR`, or `target/nvrtc` (where `.ci/run`
//! installs the `nvidia-cuda-nvrtc` wheel). Without it the NVRTC tests print
//! `SKIPPED: NVRTC not found ...` and pass.

use mithril::rt::cuda::{self, CacheConfig, KernelCache, ModuleImage, Origin, Output, kernels};

use crate::common::say;

const ARCHS: &[&str] = &["sm_80", "sm_90"];

#[test]
fn nvrtc_compiles_every_handwritten_source() {
    require_nvrtc!();
    let mut compiled = 0;
    let mut entries = 0;
    for (file, src) in kernels::SOURCES {
        let ops = kernels::ENTRIES.iter().find(|(f, _)| f == file).unwrap().1;
        for arch in ARCHS {
            let ptx = cuda::compile_ptx(src, file, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(ptx.contains(&format!(".target {arch}")), "{file} {arch}");
            for op in ops {
                for dt in kernels::DTYPES {
                    let name = kernels::entry_name(op, dt);
                    assert!(
                        ptx.contains(&format!(".entry {name}(")),
                        "{file} {arch}: no {name}"
                    );
                    entries += 1;
                }
            }
            compiled += 1;
        }
        // machine code too: ptxas runs inside NVRTC for a CUBIN
        match cuda::compile(src, file, "sm_90", Output::Cubin, &[]).unwrap() {
            ModuleImage::Cubin(b) => assert!(b.starts_with(b"\x7fELF"), "{file}"),
            ModuleImage::Ptx(_) => panic!("asked for a CUBIN"),
        }
        compiled += 1;
    }
    say(&format!(
        "NVRTC compiled {compiled} hand-written module(s) ({} sources x PTX sm_80/sm_90 + CUBIN sm_90), {entries} kernel entries checked",
        kernels::SOURCES.len()
    ));
    assert_eq!(compiled, kernels::SOURCES.len() * 3);
}

#[test]
fn kernel_cache_hit_skips_nvrtc() {
    require_nvrtc!();
    let dir = std::env::temp_dir().join(format!("mithril-cuda-test-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = kernels::GELU;
    let first = KernelCache::new(&CacheConfig::in_dir(&dir));
    let (img, o) = first
        .get_or_compile(src, "gelu.cu", "sm_90", Output::Cubin)
        .unwrap();
    assert_eq!((o, first.compile_count()), (Origin::Compiled, 1));
    let (again, o) = first
        .get_or_compile(src, "gelu.cu", "sm_90", Output::Cubin)
        .unwrap();
    assert_eq!((o, first.compile_count()), (Origin::Memory, 1));
    assert_eq!(img, again);
    // a fresh cache on the same directory (another process): read from disk, no NVRTC
    let second = KernelCache::new(&CacheConfig::in_dir(&dir));
    let (disk, o) = second
        .get_or_compile(src, "gelu.cu", "sm_90", Output::Cubin)
        .unwrap();
    assert_eq!((o, second.compile_count()), (Origin::Disk, 0));
    assert_eq!(*disk, *img);
    // another arch or output kind is another entry
    let (_, o) = second
        .get_or_compile(src, "gelu.cu", "sm_80", Output::Cubin)
        .unwrap();
    assert_eq!((o, second.compile_count()), (Origin::Compiled, 1));
    let (ptx, o) = second
        .get_or_compile(src, "gelu.cu", "sm_90", Output::Ptx)
        .unwrap();
    assert_eq!(o, Origin::Compiled);
    assert!(matches!(&*ptx, ModuleImage::Ptx(t) if t.contains(".entry mt_gelu_f32(")));
    // disk cache off: every new cache compiles
    let mem = KernelCache::new(&CacheConfig::memory_only());
    let (_, o) = mem
        .get_or_compile(src, "gelu.cu", "sm_90", Output::Cubin)
        .unwrap();
    assert_eq!((o, mem.compile_count()), (Origin::Compiled, 1));
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 3, "sm_90 cubin, sm_80 cubin, sm_90 ptx");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_errors_are_errors_with_the_log() {
    require_nvrtc!();
    let e = cuda::compile_ptx(
        "extern \"C\" __global__ void k() { undefined_thing(); }",
        "bad.cu",
        "sm_90",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("bad.cu") && e.contains("undefined_thing"), "{e}");
    // a virtual arch gives an empty CUBIN in NVRTC: rejected up front
    assert!(cuda::compile("", "x.cu", "compute_90", Output::Cubin, &[]).is_err());
    assert!(cuda::compile_ptx("", "x.cu", "sm_9x").is_err());
}

#[test]
fn opening_a_device_never_panics() {
    match cuda::gpu_status() {
        Err(why) => {
            let e = cuda::CudaDevice::open(0).unwrap_err();
            assert!(matches!(e, mithril::Error::Device(_)), "{e}");
            say(&format!(
                "no GPU: CudaDevice::open(0) = Err({e}); status: {why}"
            ));
        }
        Ok(s) => {
            let dev = cuda::CudaDevice::open(0).unwrap();
            say(&format!("{s}: {dev:?}, driver {}", dev.driver_version()));
            assert!(cuda::CudaDevice::open(1 << 20).is_err());
        }
    }
}

// ---- tests that need a GPU (not run yet on one: see docs/cuda.md) ----

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

#[test]
fn gpu_tensor_round_trip() {
    require_gpu!();
    let dev = cuda::CudaDevice::open(0).unwrap();
    let x = ndarray::Array::from_shape_fn((3, 5), |(i, j)| (i * 5 + j) as f32 - 7.0).into_dyn();
    let d = cuda::DeviceTensor::to_device(&dev, &x.view()).unwrap();
    assert_eq!(d.to_host().unwrap(), x);
    let t = x.t().to_owned();
    let dt = cuda::DeviceTensor::to_device(&dev, &x.t()).unwrap();
    assert_eq!(dt.to_host().unwrap(), t);
    let e = ndarray::ArrayD::<half::bf16>::zeros(vec![0, 4]);
    assert_eq!(
        cuda::DeviceTensor::to_device(&dev, &e.view())
            .unwrap()
            .to_host()
            .unwrap(),
        e
    );
    let i = ndarray::arr1(&[3i64, -1, 0]).into_dyn();
    assert_eq!(
        cuda::DeviceTensor::to_device(&dev, &i.view())
            .unwrap()
            .to_host()
            .unwrap(),
        i
    );
}

#[test]
fn gpu_row_kernels_match_reference() {
    require_gpu!();
    let dev = cuda::CudaDevice::open(0).unwrap();
    let (rows, cols) = (37usize, 1000usize);
    let x = ndarray::Array::from_shape_fn((rows, cols), |(i, j)| {
        ((i * 31 + j * 17) % 97) as f32 / 13.0 - 3.0
    })
    .into_dyn();
    let dx = cuda::DeviceTensor::to_device(&dev, &x.view()).unwrap();
    let sm = cuda::softmax(&dev, &dx).unwrap().to_host().unwrap();
    let sums = cuda::row_reduce(&dev, &dx, cuda::RowReduce::Sum)
        .unwrap()
        .to_host()
        .unwrap();
    let maxs = cuda::row_reduce(&dev, &dx, cuda::RowReduce::Max)
        .unwrap()
        .to_host()
        .unwrap();
    for r in 0..rows {
        let row: Vec<f32> = (0..cols).map(|c| x[[r, c]]).collect();
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let z: f32 = row.iter().map(|v| (v - m).exp()).sum();
        for c in 0..cols {
            assert!(close(sm[[r, c]], (row[c] - m).exp() / z, 1e-5));
        }
        assert!(close(sums[[r]], row.iter().sum(), 1e-4));
        assert_eq!(maxs[[r]], m);
    }
    // bf16 storage, f32 math
    let xb = x.mapv(half::bf16::from_f32);
    let db = cuda::DeviceTensor::to_device(&dev, &xb.view()).unwrap();
    let lsm = cuda::log_softmax(&dev, &db).unwrap().to_host().unwrap();
    assert!(lsm.iter().all(|v| v.to_f32() <= 0.0));
    let ln = cuda::layernorm(&dev, &dx, None, None, 1e-5)
        .unwrap()
        .to_host()
        .unwrap();
    let mean: f32 = (0..cols).map(|c| ln[[0, c]]).sum::<f32>() / cols as f32;
    assert!(mean.abs() < 1e-4);
}

#[test]
fn gpu_gathers_and_cross_entropy() {
    require_gpu!();
    let dev = cuda::CudaDevice::open(0).unwrap();
    let table = ndarray::Array::from_shape_fn((10, 4), |(i, j)| (i * 4 + j) as f32).into_dyn();
    let dt = cuda::DeviceTensor::to_device(&dev, &table.view()).unwrap();
    let idx = ndarray::arr1(&[2i64, 9, 0]).into_dyn();
    let di = cuda::DeviceTensor::to_device(&dev, &idx.view()).unwrap();
    let e = cuda::embedding(&dev, &dt, &di).unwrap().to_host().unwrap();
    assert_eq!(e.shape(), &[3, 4]);
    assert_eq!(e[[1, 3]], 39.0);
    let bad =
        cuda::DeviceTensor::to_device(&dev, &ndarray::arr1(&[10i64]).into_dyn().view()).unwrap();
    assert!(cuda::embedding(&dev, &dt, &bad).is_err());
    // a negative id or target is an error, not the last row / class (as on the CPU)
    let neg = cuda::DeviceTensor::to_device(&dev, &ndarray::arr1(&[0i64, -1, 0]).into_dyn().view())
        .unwrap();
    assert!(cuda::embedding(&dev, &dt, &neg).is_err());
    let logits = ndarray::Array::from_shape_fn((3, 10), |(i, j)| (i + j) as f32 * 0.1).into_dyn();
    let dl = cuda::DeviceTensor::to_device(&dev, &logits.view()).unwrap();
    assert!(cuda::softmax_cross_entropy(&dev, &dl, &neg).is_err());
    let (loss, lse) = cuda::softmax_cross_entropy(&dev, &dl, &di).unwrap();
    let loss = loss.to_host().unwrap();
    for (r, &t) in [2usize, 9, 0].iter().enumerate() {
        let row: Vec<f32> = (0..10).map(|c| logits[[r, c]]).collect();
        let l = row.iter().map(|v| v.exp()).sum::<f32>().ln() - row[t];
        assert!(close(loss[[r]], l, 1e-5));
    }
    let ones =
        cuda::DeviceTensor::to_device(&dev, &ndarray::ArrayD::<f32>::ones(vec![3]).view()).unwrap();
    let g = cuda::softmax_cross_entropy_backward(&dev, &dl, &di, Some(&lse), &ones).unwrap();
    let g = g.to_host().unwrap();
    for r in 0..3 {
        assert!((0..10).map(|c| g[[r, c]]).sum::<f32>().abs() < 1e-5);
    }
}

#[test]
fn gpu_matmuls() {
    require_gpu!();
    let dev = cuda::CudaDevice::open(0).unwrap();
    let (m, k, n) = (17usize, 33usize, 9usize);
    let a = ndarray::Array::from_shape_fn((m, k), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
    let b = ndarray::Array::from_shape_fn((k, n), |(i, j)| ((i * 5 + j) % 13) as f32 * 0.25 - 1.0);
    let want = a.dot(&b);
    let da = cuda::DeviceTensor::to_device(&dev, &a.view()).unwrap();
    let db = cuda::DeviceTensor::to_device(&dev, &b.view()).unwrap();
    let c = cuda::matmul_f32(&dev, &da, &db, cuda::F32Precision::Strict)
        .unwrap()
        .to_host()
        .unwrap();
    for ((i, j), w) in want.indexed_iter() {
        assert!(close(c[[i, j]], *w, 1e-6));
    }
    let c = cuda::matmul_f32(&dev, &da, &db, cuda::F32Precision::Tf32)
        .unwrap()
        .to_host()
        .unwrap();
    for ((i, j), w) in want.indexed_iter() {
        assert!(close(c[[i, j]], *w, 1e-2));
    }
    // f16 with bias + ReLU fused
    let bias = ndarray::Array::from_shape_fn(n, |j| j as f32 - 4.0);
    let h = |x: f32| half::f16::from_f32(x);
    let ah = cuda::DeviceTensor::to_device(&dev, &a.mapv(h).view()).unwrap();
    let bh = cuda::DeviceTensor::to_device(&dev, &b.mapv(h).view()).unwrap();
    let biash = cuda::DeviceTensor::to_device(&dev, &bias.mapv(h).view()).unwrap();
    let y = cuda::matmul_lt(&dev, &ah, &bh, Some(&biash), cuda::Activation::Relu).unwrap();
    let y = y.to_host().unwrap();
    for ((i, j), w) in want.indexed_iter() {
        let r = (w + bias[j]).max(0.0);
        assert!(
            close(y[[i, j]].to_f32(), r, 1e-2),
            "{i},{j}: {} vs {r}",
            y[[i, j]]
        );
    }
}

#[test]
fn nn_kernel_sources_compile_with_nvrtc_for_sm80_and_sm90() {
    require_nvrtc!();
    let mut entries = 0;
    for (file, src) in kernels::NN_SOURCES {
        let ops = kernels::NN_ENTRIES
            .iter()
            .find(|(f, _)| f == file)
            .unwrap()
            .1;
        for arch in ARCHS {
            let ptx = cuda::compile_ptx(src, file, arch).unwrap_or_else(|e| panic!("{e}"));
            for op in ops {
                for dt in kernels::NN_DTYPES {
                    let name = kernels::entry_name(op, dt);
                    assert!(
                        ptx.contains(&format!(".entry {name}(")),
                        "{file} {arch}: no {name}"
                    );
                    entries += 1;
                }
            }
            if *file == "decode.cu" {
                // the 16-bit cache update (f16 / bf16 caches)
                assert!(ptx.contains(".entry mt_update_slice_u16("), "{arch}");
                for e in ["widen_rows", "narrow"] {
                    for h in ["f16", "bf16"] {
                        assert!(
                            ptx.contains(&format!(".entry mt_{e}_{h}(")),
                            "{arch} {e} {h}"
                        );
                    }
                }
            }
            if *file == "layout.cu" {
                // the 16-bit strided copies (f16 / bf16) and the integer aranges
                for e in [
                    "strided_gather_u16",
                    "strided_scatter_u16",
                    "arange_i64",
                    "arange_i32",
                ] {
                    assert!(ptx.contains(&format!(".entry mt_{e}(")), "{arch} {e}");
                }
            }
        }
        match cuda::compile(src, file, "sm_90", Output::Cubin, &[]).unwrap() {
            cuda::ModuleImage::Cubin(b) => assert!(!b.is_empty(), "{file}"),
            other => panic!("{file}: {other:?}"),
        }
    }
    say(&format!(
        "NVRTC compiled {} f32/f64 module(s) (conv, pool, attention, dropout, decode, layout) for sm_80/sm_90 + CUBIN sm_90, {entries} kernel entries checked",
        kernels::NN_SOURCES.len()
    ));
}

#[test]
fn dropout_kernel_uses_the_fused_preludes_philox() {
    // the hand-written mask kernel repeats the fused prelude's generator under its own names:
    // the round function must be the same text
    let src = crate::cuda_backend::CnnOpsGpu::CUDA_SOURCE;
    let body = |s: &str, start: &str| -> String {
        let i = s.find(start).unwrap_or_else(|| panic!("no {start}"));
        let rest = &s[i..];
        let j = rest.find("return o;").unwrap();
        rest[rest.find('{').unwrap()..j]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let fused = body(src, "mt_u4 mt_philox(").replace("mt_u4", "U4");
    let ours = body(kernels::DROPOUT, "mt_dr_u4 mt_dr_philox(").replace("mt_dr_u4", "U4");
    assert_eq!(fused, ours);
}
