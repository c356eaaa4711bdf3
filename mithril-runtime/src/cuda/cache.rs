//! The kernel cache: NVRTC output kept in memory and on disk, keyed by a hash of the source, the
//! architecture, the output kind, the NVRTC version and the compile options. A hit never calls
//! NVRTC's compiler.

use super::compile::{compile, nvrtc_version, ModuleImage, Output, BASE_OPTIONS};
use crate::Result;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where and whether compiled kernels are kept across processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// The cache directory; `None` is [`default_cache_dir`].
    pub dir: Option<PathBuf>,
    /// Read and write the disk cache (the in-memory cache of a [`KernelCache`] is always on).
    pub disk: bool,
}

impl Default for CacheConfig {
    /// The default directory, disk cache on unless `MITHRIL_CUDA_CACHE` is `0`, `off` or `false`.
    fn default() -> Self {
        let off = std::env::var("MITHRIL_CUDA_CACHE")
            .map(|v| {
                matches!(
                    v.to_ascii_lowercase().as_str(),
                    "0" | "off" | "false" | "no"
                )
            })
            .unwrap_or(false);
        CacheConfig {
            dir: None,
            disk: !off,
        }
    }
}

impl CacheConfig {
    /// A disk cache in `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        CacheConfig {
            dir: Some(dir.into()),
            disk: true,
        }
    }
    /// No disk cache (memory only).
    pub fn memory_only() -> Self {
        CacheConfig {
            dir: None,
            disk: false,
        }
    }
}

/// The per-user cache directory: `$MITHRIL_CUDA_CACHE_DIR`, else `$XDG_CACHE_HOME/mithril/cuda`,
/// else `$HOME/.cache/mithril/cuda`; `None` when none of them is set.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("MITHRIL_CUDA_CACHE_DIR")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("mithril").join("cuda")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("mithril").join("cuda")))
}

/// A 128-bit cache key (FNV-1a over length-prefixed fields; stable across runs and Rust
/// versions, unlike `std`'s hasher).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CacheKey(pub u128);

impl std::fmt::Display for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// The key of one compilation: source text, architecture, output kind, NVRTC version and the
/// complete option list.
pub fn cache_key(
    source: &str,
    arch: &str,
    output: Output,
    nvrtc: (i32, i32),
    options: &[String],
) -> CacheKey {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut h = OFFSET;
    let mut field = |bytes: &[u8]| {
        for &b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
            h ^= b as u128;
            h = h.wrapping_mul(PRIME);
        }
    };
    field(b"mithril-cuda-cache-v1");
    field(source.as_bytes());
    field(arch.as_bytes());
    field(output.ext().as_bytes());
    field(format!("{}.{}", nvrtc.0, nvrtc.1).as_bytes());
    for o in BASE_OPTIONS
        .iter()
        .copied()
        .chain(options.iter().map(String::as_str))
    {
        field(o.as_bytes());
    }
    CacheKey(h)
}

/// Where a module image came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// This cache's memory (compiled or read earlier in the process).
    Memory,
    /// A file of the disk cache.
    Disk,
    /// A fresh NVRTC compilation.
    Compiled,
}

/// Compiled kernels in memory and (optionally) on disk. Thread-safe; cheap to share by
/// reference. Disk writes are best effort (an unwritable directory only costs recompiles) and
/// atomic (a temporary file renamed into place).
#[derive(Debug)]
pub struct KernelCache {
    dir: Option<PathBuf>,
    mem: Mutex<HashMap<(CacheKey, Output), Arc<ModuleImage>>>,
    compiles: AtomicU64,
}

impl KernelCache {
    /// A cache as configured (`disk: false`, or no directory to be found, is memory only).
    pub fn new(config: &CacheConfig) -> Self {
        let dir = if config.disk {
            config.dir.clone().or_else(default_cache_dir)
        } else {
            None
        };
        KernelCache {
            dir,
            mem: Mutex::new(HashMap::new()),
            compiles: AtomicU64::new(0),
        }
    }

    /// The disk cache directory, when the disk cache is on.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// How many times this cache has run a compilation (NVRTC, or the closure given to
    /// [`get_or_insert_with`](Self::get_or_insert_with)).
    pub fn compile_count(&self) -> u64 {
        self.compiles.load(Ordering::Relaxed)
    }

    /// The module image for `source` compiled for `arch`: from memory, from disk, or compiled
    /// by NVRTC (then stored in both). `name` is only used in diagnostics.
    pub fn get_or_compile(
        &self,
        source: &str,
        name: &str,
        arch: &str,
        output: Output,
    ) -> Result<(Arc<ModuleImage>, Origin)> {
        super::compile::check_arch(arch, output)?;
        let key = cache_key(source, arch, output, nvrtc_version()?, &[]);
        self.get_or_insert_with(key, output, || compile(source, name, arch, output, &[]))
    }

    /// The cache logic on its own: look `key` up in memory, then on disk, else run `make`
    /// (counted in [`compile_count`](Self::compile_count)) and store its result.
    pub fn get_or_insert_with(
        &self,
        key: CacheKey,
        output: Output,
        make: impl FnOnce() -> Result<ModuleImage>,
    ) -> Result<(Arc<ModuleImage>, Origin)> {
        let mem_key = (key, output);
        if let Some(img) = self.lock().get(&mem_key) {
            return Ok((img.clone(), Origin::Memory));
        }
        let file = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{key}.{}", output.ext())));
        if let Some(img) = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|b| ModuleImage::from_bytes(output, b))
        {
            let img = Arc::new(img);
            self.lock().insert(mem_key, img.clone());
            return Ok((img, Origin::Disk));
        }
        self.compiles.fetch_add(1, Ordering::Relaxed);
        let img = Arc::new(make()?);
        if let (Some(dir), Some(file)) = (&self.dir, &file) {
            let _ = write_atomic(dir, file, img.bytes());
        }
        self.lock().insert(mem_key, img.clone());
        Ok((img, Origin::Compiled))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(CacheKey, Output), Arc<ModuleImage>>> {
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn write_atomic(dir: &Path, file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(dir)?;
    let tmp = file.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    fn tmp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "mithril-cuda-cache-test-{tag}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[cfg_attr(test, test)]
    pub(crate) fn key_depends_on_every_field() {
        let base = cache_key("src", "sm_90", Output::Cubin, (13, 0), &[]);
        assert_eq!(base, cache_key("src", "sm_90", Output::Cubin, (13, 0), &[]));
        let others = [
            cache_key("src ", "sm_90", Output::Cubin, (13, 0), &[]),
            cache_key("src", "sm_80", Output::Cubin, (13, 0), &[]),
            cache_key("src", "sm_90", Output::Ptx, (13, 0), &[]),
            cache_key("src", "sm_90", Output::Cubin, (13, 1), &[]),
            cache_key("src", "sm_90", Output::Cubin, (13, 0), &["-G".into()]),
            // length prefixes: moving bytes between fields changes the key
            cache_key("srcs", "m_90", Output::Cubin, (13, 0), &[]),
        ];
        for k in others {
            assert_ne!(k, base);
        }
        assert_eq!(base.to_string().len(), 32);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn memory_then_disk_then_recompile() {
        let dir = tmp_dir("logic");
        let key = CacheKey(42);
        let img = || Ok(ModuleImage::Ptx(".version 9.0\n".into()));
        let a = KernelCache::new(&CacheConfig::in_dir(&dir));
        let (x, o) = a.get_or_insert_with(key, Output::Ptx, img).unwrap();
        assert_eq!(o, Origin::Compiled);
        assert_eq!(a.compile_count(), 1);
        let (y, o) = a
            .get_or_insert_with(key, Output::Ptx, || panic!("must not compile"))
            .unwrap();
        assert_eq!((o, &x), (Origin::Memory, &y));
        // a second cache (another process) reads the file
        let b = KernelCache::new(&CacheConfig::in_dir(&dir));
        let (z, o) = b
            .get_or_insert_with(key, Output::Ptx, || panic!("must not compile"))
            .unwrap();
        assert_eq!((o, &*z), (Origin::Disk, &*x));
        assert_eq!(b.compile_count(), 0);
        // same key, other output kind: a different entry
        let (_, o) = b
            .get_or_insert_with(key, Output::Cubin, || Ok(ModuleImage::Cubin(vec![1, 2, 3])))
            .unwrap();
        assert_eq!(o, Origin::Compiled);
        // an empty (corrupt) file is recompiled
        std::fs::write(dir.join(format!("{}.ptx", CacheKey(7))), b"").unwrap();
        let c = KernelCache::new(&CacheConfig::in_dir(&dir));
        let (_, o) = c.get_or_insert_with(CacheKey(7), Output::Ptx, img).unwrap();
        assert_eq!(o, Origin::Compiled);
        // no temporary files are left behind
        for e in std::fs::read_dir(&dir).unwrap() {
            let n = e.unwrap().file_name().into_string().unwrap();
            assert!(n.ends_with(".ptx") || n.ends_with(".cubin"), "{n}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn disabled_disk_and_errors() {
        let m = KernelCache::new(&CacheConfig::memory_only());
        assert!(m.dir().is_none());
        let err = m.get_or_insert_with(CacheKey(1), Output::Ptx, || {
            Err(crate::Error::Device("boom".into()))
        });
        assert!(err.is_err());
        // a failed compile is not cached
        let (_, o) = m
            .get_or_insert_with(CacheKey(1), Output::Ptx, || {
                Ok(ModuleImage::Ptx("x".into()))
            })
            .unwrap();
        assert_eq!(o, Origin::Compiled);
        assert_eq!(m.compile_count(), 2);
        // an unwritable directory only costs recompiles
        let file = tmp_dir("file");
        std::fs::write(&file, b"not a dir").unwrap();
        let u = KernelCache::new(&CacheConfig::in_dir(&file));
        let (_, o) = u
            .get_or_insert_with(CacheKey(1), Output::Ptx, || {
                Ok(ModuleImage::Ptx("x".into()))
            })
            .unwrap();
        assert_eq!(o, Origin::Compiled);
        let _ = std::fs::remove_file(&file);
    }

    #[cfg_attr(test, test)]
    pub(crate) fn default_dir_is_per_user() {
        // HOME or XDG_CACHE_HOME is set on every CI machine; the path ends in mithril/cuda
        // unless MITHRIL_CUDA_CACHE_DIR overrides it.
        if std::env::var_os("MITHRIL_CUDA_CACHE_DIR").is_none() {
            if let Some(d) = default_cache_dir() {
                assert!(d.ends_with("mithril/cuda"), "{}", d.display());
            }
        }
    }
}
