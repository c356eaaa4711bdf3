//! Helpers shared by the modules of the test suite (`tests/suite/main.rs` includes this module
//! once, with `#[macro_use]`): NVRTC and GPU detection for the CUDA tests (`cuda`,
//! `cuda_backend`, `multi_backend`) and, in [`fd`], the central-difference gradient harness.
//! Lines starting with `SKIPPED` go to the real stderr, so `cargo test` shows what did not run.

// Not every helper is used by every build of the suite.
#![allow(dead_code, unused_macros)]

pub mod fd;

use mithril::rt::cuda;
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

/// A line on the real stderr (libtest does not capture it), so skips show in `cargo test`.
pub fn say(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// Make NVRTC loadable if the CI install (`target/nvrtc`, by `.ci/run`) is there;
/// `Err(reason)` when it is not found.
pub fn nvrtc() -> Result<(), String> {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    READY
        .get_or_init(|| {
            if !cuda::nvrtc_available() {
                let dir =
                    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/nvrtc/nvidia/cu13/lib");
                if dir.is_dir() {
                    cuda::preload_nvrtc(&dir).map_err(|e| e.to_string())?;
                }
            }
            cuda::require_nvrtc().map_err(|e| e.to_string())?;
            let (a, b) = cuda::nvrtc_version().map_err(|e| e.to_string())?;
            say(&format!("NVRTC {a}.{b} loaded"));
            Ok(())
        })
        .clone()
}

/// Returns from the test, with a `SKIPPED` line, when NVRTC cannot be loaded.
macro_rules! require_nvrtc {
    () => {
        if let Err(why) = $crate::common::nvrtc() {
            $crate::common::say(&format!(
                "SKIPPED: NVRTC not found (run .ci/run or set {} / LD_LIBRARY_PATH): {why}",
                mithril::rt::cuda::NVRTC_DIR_ENV
            ));
            return;
        }
    };
}

/// A GPU is present (`true`), or the reason is printed as `SKIPPED {test} on a GPU`.
pub fn gpu(test: &str) -> bool {
    let _ = nvrtc(); // preload NVRTC from target/nvrtc when it is there
    match cuda::gpu_status() {
        Ok(_) => true,
        Err(why) => {
            say(&format!("SKIPPED {test} on a GPU: no CUDA device ({why})"));
            false
        }
    }
}

/// Compiles every `(name, CUDA source, kernel entries)` module to PTX for sm_80 and sm_90 and
/// checks that each has exactly its entries; says how many modules and kernels (`what` names
/// them) and returns the kernel count.
pub fn compile_modules(modules: &[(&str, &str, &[&str])], what: &str) -> usize {
    let mut total = 0;
    for (name, src, entries) in modules {
        for arch in ["sm_80", "sm_90"] {
            let ptx = cuda::compile_ptx(src, &format!("{name}.cu"), arch)
                .unwrap_or_else(|e| panic!("{name} for {arch}: {e}"));
            assert!(ptx.contains(&format!(".target {arch}")), "{name} {arch}");
            assert_eq!(
                ptx.matches(".entry ").count(),
                entries.len(),
                "{name} {arch}"
            );
            for e in *entries {
                assert!(
                    ptx.contains(&format!(".entry {e}(")),
                    "{name} {arch}: no {e}"
                );
            }
        }
        total += entries.len();
    }
    say(&format!(
        "NVRTC compiled {} {what} ({total} kernels) for sm_80 and sm_90",
        modules.len()
    ));
    total
}

/// Returns from the test, with a `SKIPPED: no CUDA device` line, when there is no GPU.
macro_rules! require_gpu {
    () => {
        let _ = $crate::common::nvrtc(); // preload NVRTC from target/nvrtc when it is there
        if let Err(why) = mithril::rt::cuda::gpu_status() {
            $crate::common::say(&format!("SKIPPED: no CUDA device ({why})"));
            return;
        }
    };
}
