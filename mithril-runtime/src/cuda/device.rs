//! A CUDA device: context, stream, BLAS handles, kernel cache and loaded modules.

use super::cache::{CacheConfig, KernelCache, Origin};
use super::compile::{check_arch, nvrtc_version, Output};
use super::dev_err;
use super::libs::{library_present, CudaLib};
use crate::{DType, Error, Result};
use cudarc::cublas::CudaBlas;
use cudarc::cublaslt::CudaBlasLT;
use cudarc::driver::sys::CUdevice_attribute;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// How to open a device.
#[derive(Clone, Debug, Default)]
pub struct DeviceOptions {
    /// The architecture to compile kernels for (`"sm_90"`); `None` is the device's own
    /// (`sm_<major><minor>` from its compute capability).
    pub arch: Option<String>,
    /// The kernel cache.
    pub cache: CacheConfig,
    /// Compile kernels to PTX (JIT-compiled by the driver) instead of CUBINs. CUBIN (the
    /// default) avoids `CUDA_ERROR_UNSUPPORTED_PTX_VERSION` when NVRTC is newer than the driver.
    pub ptx: bool,
}

/// One CUDA device with its primary context, a stream all work of this handle runs on, cuBLAS
/// and (created at first use) cuBLASLt handles, a [`KernelCache`] and the modules loaded so far.
pub struct CudaDevice {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    lt: Mutex<Option<Arc<CudaBlasLT>>>,
    name: String,
    cc: (i32, i32),
    sm_count: u32,
    arch: String,
    output: Output,
    cache: KernelCache,
    modules: Mutex<HashMap<(String, u128), Arc<CudaModule>>>,
    // hand-written kernels by entry name: a launch does not rehash the source
    kernels: Mutex<HashMap<String, CudaFunction>>,
    driver_version: i32,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice")
            .field("ordinal", &self.ctx.ordinal())
            .field("name", &self.name)
            .field("compute_capability", &self.cc)
            .field("arch", &self.arch)
            .finish_non_exhaustive()
    }
}

/// `Err` naming every missing library the device needs.
fn require_libs() -> Result<()> {
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
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Device(format!(
            "CUDA libraries not loadable: {} (install the NVIDIA driver and the CUDA 13 \
             libraries, or put them on LD_LIBRARY_PATH)",
            missing.join(", ")
        )))
    }
}

impl CudaDevice {
    /// The number of visible devices; `Err` when the driver library is missing or the driver
    /// fails (never panics).
    pub fn count() -> Result<usize> {
        if !library_present(CudaLib::Driver) {
            return Err(Error::Device(
                "the CUDA driver library (libcuda.so.1) is not loadable".into(),
            ));
        }
        let n = CudaContext::device_count().map_err(|e| dev_err("cuDeviceGetCount", e))?;
        Ok(n.max(0) as usize)
    }

    /// Open device `ordinal` with the default options. `Err(Error::Device)` — never a panic —
    /// when the driver, NVRTC, cuBLAS or cuBLASLt library is missing, when there is no such
    /// device, or when the driver fails.
    pub fn open(ordinal: usize) -> Result<Self> {
        Self::open_with(ordinal, DeviceOptions::default())
    }

    /// Open device `ordinal` (see [`open`](Self::open)).
    pub fn open_with(ordinal: usize, options: DeviceOptions) -> Result<Self> {
        require_libs()?;
        let count = Self::count()?;
        if ordinal >= count {
            return Err(Error::Device(format!(
                "no CUDA device {ordinal}: {count} device(s) visible"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("cuCtx (primary context)", e))?;
        let stream = ctx.default_stream();
        let cc = ctx
            .compute_capability()
            .map_err(|e| dev_err("compute capability", e))?;
        let name = ctx.name().map_err(|e| dev_err("cuDeviceGetName", e))?;
        let sm_count = ctx
            .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(|e| dev_err("multiprocessor count", e))?
            .max(1) as u32;
        let output = if options.ptx {
            Output::Ptx
        } else {
            Output::Cubin
        };
        let arch = options
            .arch
            .unwrap_or_else(|| format!("sm_{}{}", cc.0, cc.1));
        check_arch(&arch, output)?;
        let mut driver_version = 0i32;
        // SAFETY: the driver library is loaded (checked); plain out-parameter.
        unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(|e| dev_err("cuDriverGetVersion", e))?;
        nvrtc_version()?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| dev_err("cublasCreate", e))?;
        Ok(CudaDevice {
            ctx,
            stream,
            blas,
            lt: Mutex::new(None),
            name,
            cc,
            sm_count,
            arch,
            output,
            cache: KernelCache::new(&options.cache),
            modules: Mutex::new(HashMap::new()),
            kernels: Mutex::new(HashMap::new()),
            driver_version,
        })
    }

    /// The device's name (`NVIDIA H100 80GB HBM3`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }
    /// Compute capability `(major, minor)`: `(9, 0)` on an H100.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.cc
    }
    /// The architecture kernels are compiled for (`sm_90`).
    pub fn arch(&self) -> &str {
        &self.arch
    }
    /// Number of multiprocessors.
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    /// The driver's CUDA version as `cuDriverGetVersion` reports it (`13000` for 13.0).
    pub fn driver_version(&self) -> i32 {
        self.driver_version
    }
    /// The context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
    /// The stream every operation of this handle is issued on.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    /// The kernel cache.
    pub fn cache(&self) -> &KernelCache {
        &self.cache
    }
    /// The cuBLAS handle (bound to [`stream`](Self::stream); default math mode: strict FP32).
    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }
    /// The cuBLASLt handle, created at first use (it allocates a 32 MiB workspace on sm_90+,
    /// 4 MiB else). `Err` when there is not that much free memory.
    pub fn blas_lt(&self) -> Result<Arc<CudaBlasLT>> {
        let mut lt = self.lt.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = lt.as_ref() {
            return Ok(h.clone());
        }
        // cudarc unwraps the workspace allocation: check the memory first so it cannot panic.
        let need = if self.cc.0 >= 9 {
            32usize << 20
        } else {
            4 << 20
        };
        let (free, _) = self
            .ctx
            .mem_get_info()
            .map_err(|e| dev_err("cuMemGetInfo", e))?;
        if free < need {
            return Err(Error::Device(format!(
                "cuBLASLt needs a {need}-byte workspace, {free} bytes are free"
            )));
        }
        let h = Arc::new(
            CudaBlasLT::new(self.stream.clone()).map_err(|e| dev_err("cublasLtCreate", e))?,
        );
        *lt = Some(h.clone());
        Ok(h)
    }

    /// Wait for all work issued on this device's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| dev_err("synchronize", e))
    }

    /// Kernel `entry` of `source` (named `file` in diagnostics): compiled through the cache on
    /// first use for [`arch`](Self::arch), the module loaded once per device.
    pub fn function(&self, file: &str, source: &str, entry: &str) -> Result<CudaFunction> {
        let key = super::cache::cache_key(source, &self.arch, self.output, nvrtc_version()?, &[]);
        let mkey = (file.to_string(), key.0);
        let module = {
            let cached = self
                .modules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&mkey)
                .cloned();
            match cached {
                Some(m) => m,
                None => {
                    let (img, _origin): (_, Origin) =
                        self.cache
                            .get_or_compile(source, file, &self.arch, self.output)?;
                    let m = self
                        .ctx
                        .load_module(img.to_cudarc())
                        .map_err(|e| dev_err(&format!("cuModuleLoadData({file})"), e))?;
                    self.modules
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(mkey, m.clone());
                    m
                }
            }
        };
        if entry.contains('\0') {
            return Err(Error::Device(format!("kernel name {entry:?} contains NUL")));
        }
        module
            .load_function(entry)
            .map_err(|e| dev_err(&format!("cuModuleGetFunction({entry})"), e))
    }

    /// A hand-written kernel of `mithril_kernels::cuda`: `op` (`"softmax"`, ...) for `dtype`
    /// (`F32`, `F16` or `BF16`; the ops of `NN_SOURCES`, `"conv_forward"`, ...: `F32` or `F64`).
    pub fn kernel(&self, op: &str, dtype: DType) -> Result<CudaFunction> {
        use mithril_kernels::cuda as k;
        let (file, source, dtypes) = match k::source_of(op) {
            Some((f, s)) => (f, s, k::DTYPES),
            None => {
                let (f, s) = k::nn_source_of(op)
                    .ok_or_else(|| Error::Device(format!("no CUDA kernel `{op}`")))?;
                (f, s, k::NN_DTYPES)
            }
        };
        let suffix = dtype.name();
        if !dtypes.contains(&suffix) {
            return Err(Error::Device(format!(
                "CUDA kernel `{op}` has no {suffix} version"
            )));
        }
        let entry = k::entry_name(op, suffix);
        let lock = || self.kernels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = lock().get(&entry) {
            return Ok(f.clone());
        }
        let f = self.function(file, source, &entry)?;
        lock().insert(entry, f.clone());
        Ok(f)
    }
}
