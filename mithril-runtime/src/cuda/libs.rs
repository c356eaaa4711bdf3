//! Which CUDA libraries can be loaded, without ever letting cudarc panic.

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Environment variable naming a directory that holds `libnvrtc.so.13` and
/// `libnvrtc-builtins.so.13.*` (for example the `nvidia/cu13/lib` folder of the
/// `nvidia-cuda-nvrtc` PyPI wheel). When set, NVRTC is preloaded from there before first use,
/// so it need not be on `LD_LIBRARY_PATH`.
pub const NVRTC_DIR_ENV: &str = "MITHRIL_NVRTC_DIR";

/// A CUDA library the backend loads at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CudaLib {
    /// The driver API (`libcuda.so.1`, installed with the NVIDIA driver).
    Driver,
    /// The run-time compiler (`libnvrtc.so.13`).
    Nvrtc,
    /// cuBLAS (`libcublas.so.13`).
    Cublas,
    /// cuBLASLt (`libcublasLt.so.13`).
    CublasLt,
}

impl CudaLib {
    /// A human name: `libcuda (driver)`, `libnvrtc`, ...
    pub fn name(self) -> &'static str {
        match self {
            CudaLib::Driver => "libcuda (driver)",
            CudaLib::Nvrtc => "libnvrtc",
            CudaLib::Cublas => "libcublas",
            CudaLib::CublasLt => "libcublasLt",
        }
    }
}

/// Whether `lib` can be loaded (a `dlopen` of cudarc's candidate names; no CUDA call is made).
/// For NVRTC this first applies [`NVRTC_DIR_ENV`] (once).
pub fn library_present(lib: CudaLib) -> bool {
    // SAFETY: is_culib_present only dlopen()s and drops cudarc's candidate library names.
    unsafe {
        match lib {
            CudaLib::Driver => cudarc::driver::sys::is_culib_present(),
            CudaLib::Nvrtc => {
                env_preload();
                cudarc::nvrtc::sys::is_culib_present()
            }
            CudaLib::Cublas => cudarc::cublas::sys::is_culib_present(),
            CudaLib::CublasLt => cudarc::cublaslt::sys::is_culib_present(),
        }
    }
}

/// Whether NVRTC can be loaded (see [`library_present`]).
pub fn nvrtc_available() -> bool {
    library_present(CudaLib::Nvrtc)
}

/// `Ok` when NVRTC can be loaded, else an [`Error::Device`] saying how to provide it.
pub fn require_nvrtc() -> Result<()> {
    if nvrtc_available() {
        return Ok(());
    }
    let env_note = match env_preload() {
        Some(Err(e)) => format!(" ({NVRTC_DIR_ENV}: {e})"),
        _ => String::new(),
    };
    Err(Error::Device(format!(
        "NVRTC not found: libnvrtc.so.13 is not on the loader path{env_note}; install the CUDA \
         13 toolkit or `pip install nvidia-cuda-nvrtc==13.0.*` and set LD_LIBRARY_PATH or \
         {NVRTC_DIR_ENV} to its nvidia/cu13/lib directory"
    )))
}

/// Handles of preloaded libraries: kept for the life of the process so their sonames stay
/// resolvable by cudarc's later `dlopen("libnvrtc.so.13")`.
static PRELOADED: Mutex<Vec<libloading::Library>> = Mutex::new(Vec::new());

/// Load NVRTC (and its builtins library, which NVRTC itself opens by soname) from `dir` by
/// absolute path, so that cudarc finds it without `LD_LIBRARY_PATH`. Must run before the first
/// NVRTC call of the process (cudarc keeps the first library it loads).
pub fn preload_nvrtc(dir: &Path) -> Result<()> {
    let builtins = find_lib(dir, "libnvrtc-builtins.so.")?;
    let nvrtc = ["libnvrtc.so.13", "libnvrtc.so"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Device(format!("no libnvrtc.so.13 in {}", dir.display())))?;
    let mut held = PRELOADED.lock().unwrap_or_else(|p| p.into_inner());
    for path in [builtins, nvrtc] {
        // SAFETY: loading NVRTC runs no initialisers with preconditions we could violate.
        let lib = unsafe { libloading::Library::new(&path) }
            .map_err(|e| Error::Device(format!("cannot load {}: {e}", path.display())))?;
        held.push(lib);
    }
    Ok(())
}

fn find_lib(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Error::Device(format!("cannot read {}: {e}", dir.display())))?;
    let mut found: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && !n.contains(".alt."))
        })
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| Error::Device(format!("no {prefix}* in {}", dir.display())))
}

/// Preload from [`NVRTC_DIR_ENV`] once; `None` when the variable is unset.
fn env_preload() -> Option<&'static std::result::Result<(), String>> {
    static ONCE: OnceLock<Option<std::result::Result<(), String>>> = OnceLock::new();
    ONCE.get_or_init(|| {
        let dir = std::env::var_os(NVRTC_DIR_ENV)?;
        Some(preload_nvrtc(Path::new(&dir)).map_err(|e| e.to_string()))
    })
    .as_ref()
}

/// Whether a CUDA device is usable: `Ok("<n> CUDA device(s)")`, or `Err(reason)` naming the
/// missing libraries or the driver's complaint. Never panics.
pub fn gpu_status() -> std::result::Result<String, String> {
    let missing: Vec<&str> = [
        CudaLib::Driver,
        CudaLib::Nvrtc,
        CudaLib::Cublas,
        CudaLib::CublasLt,
    ]
    .into_iter()
    .filter(|l| !library_present(*l))
    .map(CudaLib::name)
    .collect();
    if !missing.is_empty() {
        return Err(format!(
            "CUDA libraries not loadable: {}",
            missing.join(", ")
        ));
    }
    // The driver library is present: from here cudarc returns Err instead of panicking.
    match cudarc::driver::CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(format!("{n} CUDA device(s)")),
        Ok(_) => Err("CUDA driver loaded but no device visible".into()),
        Err(e) => Err(format!("cuInit/cuDeviceGetCount failed: {e}")),
    }
}
