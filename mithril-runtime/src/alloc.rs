//! Fallible allocation for buffers whose size comes from the user's shapes.
//!
//! Every buffer a model call allocates for a run-time shape (returned outputs, workspace slots
//! and arenas, gradients, temporary copies) goes through this module, so an impossible size is
//! an [`Error::Alloc`] naming the op and the bytes instead of an aborted process:
//!
//! * the byte count is computed with overflow checks;
//! * it is compared with a process-wide ceiling, [`max_alloc_bytes`]: by default the machine's
//!   memory (physical memory plus swap, read from `/proc/meminfo` on Linux; no ceiling where it
//!   cannot be read), settable with [`set_max_alloc_bytes`]. A single buffer larger than all
//!   memory can never be used, and on systems that overcommit memory the allocator would
//!   otherwise hand it out and the process would be killed when the op writes to it;
//! * the allocation itself is fallible (a null pointer from the allocator is an error too).
//!
//! The check is one comparison per allocation, never per element.

use std::alloc::Layout;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ndarray::{ArrayD, IxDyn};

use crate::{Elem, Error, Result};

/// The ceiling set by [`set_max_alloc_bytes`]; `0` means the default.
static MAX_ALLOC: AtomicU64 = AtomicU64::new(0);

/// The machine's memory (physical plus swap) in bytes, or `u64::MAX` when unknown.
fn machine_bytes() -> u64 {
    static MACHINE: OnceLock<u64> = OnceLock::new();
    *MACHINE.get_or_init(|| {
        let Ok(info) = std::fs::read_to_string("/proc/meminfo") else {
            return u64::MAX;
        };
        let field = |name: &str| -> Option<u64> {
            let line = info.lines().find(|l| l.starts_with(name))?;
            let kb: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()?;
            kb.checked_mul(1024)
        };
        match field("MemTotal:") {
            Some(mem) if mem > 0 => mem.saturating_add(field("SwapTotal:").unwrap_or(0)),
            _ => u64::MAX,
        }
    })
}

/// The largest single buffer, in bytes, a model call may allocate for a run-time shape: the
/// value of [`set_max_alloc_bytes`], or by default the machine's memory (physical plus swap;
/// `u64::MAX` where it cannot be read).
pub fn max_alloc_bytes() -> u64 {
    match MAX_ALLOC.load(Ordering::Relaxed) {
        0 => machine_bytes(),
        n => n,
    }
}

/// Sets the process-wide ceiling of [`max_alloc_bytes`] (`None` restores the default, the
/// machine's memory). A buffer above it is refused with [`Error::Alloc`] before the allocator
/// is asked. For a limit on a model's planned intermediate memory use the `max_memory_gb`
/// compile option instead.
pub fn set_max_alloc_bytes(bytes: Option<u64>) {
    let v = match bytes {
        Some(b) => b.max(1),
        None => 0,
    };
    MAX_ALLOC.store(v, Ordering::Relaxed);
}

/// `n` elements of `elem` bytes each, as a byte count for error messages (saturating).
fn bytes_of(n: u128, elem: usize) -> u128 {
    n.saturating_mul(elem as u128)
}

/// The number of elements of `shape` (saturating at `u128::MAX`, for messages).
fn elems_of(shape: &[usize]) -> u128 {
    shape
        .iter()
        .fold(1u128, |acc, &d| acc.saturating_mul(d as u128))
}

/// Checks that a buffer of `n` elements of `elem` bytes each may be allocated for `op`:
/// returns its size in bytes, or [`Error::Alloc`] when the size overflows or exceeds
/// [`max_alloc_bytes`]. Call it before an allocation that cannot fail gracefully.
pub fn check(op: &str, n: usize, elem: usize) -> Result<usize> {
    let limit = max_alloc_bytes();
    match n.checked_mul(elem) {
        Some(b) if b <= isize::MAX as usize && (b as u64) <= limit => Ok(b),
        Some(b) if b <= isize::MAX as usize => Err(Error::Alloc {
            op: op.to_string(),
            bytes: b as u128,
            detail: format!("more than the allocation ceiling of {limit} bytes (the machine's memory unless set by rt::alloc::set_max_alloc_bytes)"),
        }),
        _ => Err(Error::Alloc {
            op: op.to_string(),
            bytes: bytes_of(n as u128, elem),
            detail: "the size does not fit in the address space".into(),
        }),
    }
}

/// [`check`] for an array of `shape` with elements of `elem` bytes: the element count
/// (overflow is an [`Error::Alloc`] too).
pub fn check_shape(op: &str, shape: &[usize], elem: usize) -> Result<usize> {
    let n = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::Alloc {
            op: op.to_string(),
            bytes: bytes_of(elems_of(shape), elem),
            detail: format!("a buffer of shape {shape:?} does not fit in the address space"),
        })?;
    check(op, n, elem).map_err(|e| match e {
        Error::Alloc { op, bytes, detail } => Error::Alloc {
            op,
            bytes,
            detail: format!("for shape {shape:?}: {detail}"),
        },
        e => e,
    })?;
    Ok(n)
}

/// A zero-filled vector of `n` values of `T`.
///
/// # Safety
/// The all-zero bit pattern must be a valid `T`.
unsafe fn zeroed_raw<T>(op: &str, n: usize) -> Result<Vec<T>> {
    let size = std::mem::size_of::<T>();
    check(op, n, size)?;
    if n == 0 || size == 0 {
        return Ok(Vec::new());
    }
    let layout = Layout::array::<T>(n).map_err(|_| Error::Alloc {
        op: op.to_string(),
        bytes: bytes_of(n as u128, size),
        detail: "the size does not fit in the address space".into(),
    })?;
    // SAFETY: `layout` has a non-zero size (n > 0, size > 0).
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) } as *mut T;
    if ptr.is_null() {
        return Err(Error::Alloc {
            op: op.to_string(),
            bytes: layout.size() as u128,
            detail: "the allocator has no memory for it".into(),
        });
    }
    // SAFETY: `ptr` was allocated by the global allocator with the layout of `[T; n]`, and its
    // `n` elements are initialised (all-zero is a valid `T`, the caller's promise).
    Ok(unsafe { Vec::from_raw_parts(ptr, n, n) })
}

/// A zero-filled (`T::default()`) vector of `n` elements, or [`Error::Alloc`] naming `op` and
/// the bytes when it cannot be allocated (see the module docs).
pub fn zeroed_vec<T: Elem>(op: &str, n: usize) -> Result<Vec<T>> {
    // SAFETY: every `Elem` is a plain number type (or `bool`) whose all-zero bit pattern is
    // valid and equal to its `Default` (0, 0.0, false).
    unsafe { zeroed_raw::<T>(op, n) }
}

/// A zero-filled array of `shape`, or [`Error::Alloc`] (see [`zeroed_vec`]).
pub fn zeros<T: Elem>(op: &str, shape: &[usize]) -> Result<ArrayD<T>> {
    let n = check_shape(op, shape, std::mem::size_of::<T>())?;
    let v = zeroed_vec::<T>(op, n)?;
    ArrayD::from_shape_vec(IxDyn(shape), v)
        .map_err(|e| Error::op(op, format!("internal: zeros of shape {shape:?}: {e}")))
}

/// A zero-filled vector of `n` 64-byte blocks (the workspace's storage).
pub(crate) fn zeroed_blocks<B: Copy>(op: &str, n: usize) -> Result<Vec<B>> {
    // SAFETY: only called with the workspace's `Block`, a byte array (any bits valid).
    unsafe { zeroed_raw::<B>(op, n) }
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn impossible_sizes_are_errors_naming_op_and_bytes() {
        // 2^40 f32: 4 TiB, more than any test machine has; refused before the allocator runs
        let e = zeroed_vec::<f32>("add", 1 << 40).unwrap_err();
        match &e {
            Error::Alloc { op, bytes, .. } => {
                assert_eq!(op, "add");
                assert_eq!(*bytes, 4u128 << 40);
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("4398046511104"), "{e}");
        // a shape whose element count overflows usize
        let e = zeros::<f64>("matmul", &[1 << 40, 1 << 40]).unwrap_err();
        match &e {
            Error::Alloc { op, bytes, .. } => {
                assert_eq!(op, "matmul");
                assert_eq!(*bytes, 8u128 << 80);
            }
            other => panic!("{other:?}"),
        }
        // bytes that overflow usize although the count does not
        assert!(matches!(
            check("x", usize::MAX / 2, 8),
            Err(Error::Alloc { .. })
        ));
    }

    #[cfg_attr(test, test)]
    pub(crate) fn possible_sizes_are_zeroed() {
        let v = zeroed_vec::<half::bf16>("t", 1000).unwrap();
        assert!(v.iter().all(|&x| x == half::bf16::ZERO));
        let a = zeros::<bool>("t", &[3, 0]).unwrap();
        assert_eq!(a.shape(), &[3, 0]);
        let a = zeros::<i64>("t", &[2, 3]).unwrap();
        assert_eq!(a.as_slice().unwrap(), &[0; 6]);
    }
}
