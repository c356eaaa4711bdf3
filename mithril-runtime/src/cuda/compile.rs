//! NVRTC: CUDA C source → PTX text or a CUBIN for one `sm_XX`.

use super::{dev_err, libs::require_nvrtc};
use crate::{Error, Result};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::sync::OnceLock;

/// What NVRTC produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Output {
    /// PTX text (JIT-compiled by the driver at load time; must not be newer than the driver).
    Ptx,
    /// A CUBIN (machine code) for a real `sm_XX`: no driver JIT, the recommended cache format.
    Cubin,
}

impl Output {
    /// `ptx` / `cubin` (the cache file extension).
    pub fn ext(self) -> &'static str {
        match self {
            Output::Ptx => "ptx",
            Output::Cubin => "cubin",
        }
    }
}

/// A compiled module image, ready for `CudaContext::load_module`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModuleImage {
    /// PTX text (without a trailing NUL).
    Ptx(String),
    /// CUBIN bytes (an ELF image).
    Cubin(Vec<u8>),
}

impl ModuleImage {
    /// The image as bytes (PTX as its UTF-8 text).
    pub fn bytes(&self) -> &[u8] {
        match self {
            ModuleImage::Ptx(s) => s.as_bytes(),
            ModuleImage::Cubin(b) => b,
        }
    }
    /// Rebuild from bytes read from the cache; `None` if PTX bytes are not UTF-8 or empty.
    pub fn from_bytes(output: Output, bytes: Vec<u8>) -> Option<ModuleImage> {
        if bytes.is_empty() {
            return None;
        }
        match output {
            Output::Ptx => String::from_utf8(bytes).ok().map(ModuleImage::Ptx),
            Output::Cubin => Some(ModuleImage::Cubin(bytes)),
        }
    }
    /// The cudarc value `load_module` takes.
    pub fn to_cudarc(&self) -> cudarc::nvrtc::Ptx {
        match self {
            ModuleImage::Ptx(s) => cudarc::nvrtc::Ptx::from_src(s.clone()),
            ModuleImage::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b.clone()),
        }
    }
}

/// Check an architecture name: `sm_<digits>` (real, for PTX or CUBIN) or `compute_<digits>`
/// (virtual, PTX only — NVRTC silently returns an empty CUBIN for it).
pub fn check_arch(arch: &str, output: Output) -> Result<()> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match (arch.strip_prefix("sm_"), arch.strip_prefix("compute_")) {
        (Some(d), _) => digits(d),
        (_, Some(d)) => digits(d) && output == Output::Ptx,
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::Device(format!(
            "invalid CUDA architecture `{arch}` for {}: expected sm_<NN> (e.g. sm_90){}",
            output.ext(),
            if output == Output::Ptx {
                " or compute_<NN>"
            } else {
                ""
            }
        )))
    }
}

/// The NVRTC version `(major, minor)` (loads NVRTC; no compilation).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    static VERSION: OnceLock<(i32, i32)> = OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(*v);
    }
    require_nvrtc()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loadable (checked above); plain out-parameters.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| dev_err("nvrtcVersion", e))?;
    Ok(*VERSION.get_or_init(|| (major, minor)))
}

/// The NVRTC options mithril compiles with, besides the architecture.
pub(crate) const BASE_OPTIONS: &[&str] = &["--std=c++17"];

/// Compile `source` (named `name` in diagnostics) for `arch` (`sm_90`, ...) with NVRTC, without
/// any cache (see [`KernelCache`](super::KernelCache) for the cached path). `extra` options are
/// appended to mithril's. A compile error returns NVRTC's log in the error message.
pub fn compile(
    source: &str,
    name: &str,
    arch: &str,
    output: Output,
    extra: &[String],
) -> Result<ModuleImage> {
    check_arch(arch, output)?;
    require_nvrtc()?;
    let csrc = CString::new(source)
        .map_err(|_| Error::Device(format!("CUDA source {name} contains a NUL byte")))?;
    let cname = CString::new(name.replace('\0', "?")).unwrap_or_default();
    let mut opts: Vec<String> = vec![format!("--gpu-architecture={arch}")];
    opts.extend(BASE_OPTIONS.iter().map(|s| s.to_string()));
    opts.extend(extra.iter().map(|s| s.replace('\0', "")));
    let prog = result::create_program(&csrc, Some(&cname))
        .map_err(|e| dev_err(&format!("nvrtcCreateProgram({name})"), e))?;
    // SAFETY: `prog` was created above and is destroyed exactly once, below.
    let out = unsafe { compile_program(prog, name, arch, output, &opts) };
    // SAFETY: as above.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// # Safety
/// `prog` is a live NVRTC program.
unsafe fn compile_program(
    prog: sys::nvrtcProgram,
    name: &str,
    arch: &str,
    output: Output,
    opts: &[String],
) -> Result<ModuleImage> {
    if let Err(e) = result::compile_program(prog, opts) {
        let log = result::get_program_log(prog)
            .map(|l| {
                let bytes: Vec<u8> = l
                    .iter()
                    .take_while(|&&c| c != 0)
                    .map(|&c| c as u8)
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        return Err(Error::Device(format!(
            "NVRTC failed to compile {name} for {arch} ({e:?}):\n{log}"
        )));
    }
    match output {
        Output::Ptx => {
            let ptx = result::get_ptx(prog).map_err(|e| dev_err("nvrtcGetPTX", e))?;
            let bytes: Vec<u8> = ptx
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c as u8)
                .collect();
            let text = String::from_utf8(bytes)
                .map_err(|_| Error::Device("NVRTC returned non-UTF-8 PTX".into()))?;
            Ok(ModuleImage::Ptx(text))
        }
        Output::Cubin => {
            let mut size = 0usize;
            sys::nvrtcGetCUBINSize(prog, &mut size)
                .result()
                .map_err(|e| dev_err("nvrtcGetCUBINSize", e))?;
            if size == 0 {
                return Err(Error::Device(format!(
                    "NVRTC produced an empty CUBIN for {name} ({arch} is not a real architecture?)"
                )));
            }
            let mut cubin = vec![0u8; size];
            sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut std::ffi::c_char)
                .result()
                .map_err(|e| dev_err("nvrtcGetCUBIN", e))?;
            Ok(ModuleImage::Cubin(cubin))
        }
    }
}

/// Compile to PTX text for `arch` (no cache): `compile(source, name, arch, Output::Ptx, &[])`.
pub fn compile_ptx(source: &str, name: &str, arch: &str) -> Result<String> {
    match compile(source, name, arch, Output::Ptx, &[])? {
        ModuleImage::Ptx(s) => Ok(s),
        ModuleImage::Cubin(_) => Err(Error::Device("NVRTC returned a CUBIN for PTX".into())),
    }
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn arch_names() {
        assert!(check_arch("sm_90", Output::Cubin).is_ok());
        assert!(check_arch("sm_80", Output::Ptx).is_ok());
        assert!(check_arch("compute_90", Output::Ptx).is_ok());
        assert!(check_arch("compute_90", Output::Cubin).is_err());
        assert!(check_arch("sm_", Output::Ptx).is_err());
        assert!(check_arch("sm_9a", Output::Ptx).is_err());
        assert!(check_arch("90", Output::Ptx).is_err());
    }

    #[cfg_attr(test, test)]
    pub(crate) fn image_bytes_round_trip() {
        let p = ModuleImage::Ptx(".version 9.0".into());
        assert_eq!(
            ModuleImage::from_bytes(Output::Ptx, p.bytes().to_vec()),
            Some(p)
        );
        assert_eq!(ModuleImage::from_bytes(Output::Cubin, vec![]), None);
        assert_eq!(ModuleImage::from_bytes(Output::Ptx, vec![0xff]), None);
    }
}
