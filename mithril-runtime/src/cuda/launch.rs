//! Launch shapes for the two kernel kinds of `mithril_kernels::cuda` and generated fused
//! kernels. Pure functions (usable and tested without a GPU).

use cudarc::driver::LaunchConfig;

/// Threads per block of 1-D elementwise (grid-stride) kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Blocks per multiprocessor an elementwise launch asks for at most (the grid-stride loop
/// covers the rest).
pub const BLOCKS_PER_SM: u32 = 32;
/// The largest block of a row kernel.
pub const ROW_BLOCK_MAX: u32 = 512;
/// The largest grid dimension x the launch helpers use (the kernels stride over the rest).
pub const GRID_MAX: u32 = i32::MAX as u32;

/// A 1-D grid-stride launch over `n` elements: 256 threads per block, enough blocks to cover
/// `n` but at most `BLOCKS_PER_SM` per multiprocessor (`sm_count`, at least 1), at least one
/// block.
pub fn elementwise_config(n: usize, sm_count: u32) -> LaunchConfig {
    let blocks = n.div_ceil(ELEMENTWISE_BLOCK as usize);
    let cap = (sm_count.max(1) as usize).saturating_mul(BLOCKS_PER_SM as usize);
    let grid = blocks.min(cap).clamp(1, GRID_MAX as usize) as u32;
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A row launch over a contiguous `[rows, cols]` array: one block per row (the kernels stride
/// over rows beyond the grid), `cols` rounded up to a multiple of 32 threads, between 32 and
/// [`ROW_BLOCK_MAX`] (the row kernels' block reductions need whole warps).
pub fn row_config(rows: usize, cols: usize) -> LaunchConfig {
    let threads = cols
        .div_ceil(32)
        .saturating_mul(32)
        .clamp(32, ROW_BLOCK_MAX as usize) as u32;
    let grid = rows.clamp(1, GRID_MAX as usize) as u32;
    LaunchConfig {
        grid_dim: (grid, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(any(test, feature = "internal-tests"))]
pub(crate) mod tests {
    use super::*;

    #[cfg_attr(test, test)]
    pub(crate) fn elementwise_shapes() {
        let c = elementwise_config(0, 132);
        assert_eq!((c.grid_dim.0, c.block_dim.0), (1, 256));
        assert_eq!(elementwise_config(257, 132).grid_dim.0, 2);
        assert_eq!(elementwise_config(1 << 30, 132).grid_dim.0, 132 * 32);
        assert_eq!(elementwise_config(1 << 30, 0).grid_dim.0, 32);
        assert_eq!(
            elementwise_config(usize::MAX, u32::MAX).grid_dim.0,
            GRID_MAX
        );
    }

    #[cfg_attr(test, test)]
    pub(crate) fn row_shapes() {
        let c = row_config(10, 1);
        assert_eq!((c.grid_dim.0, c.block_dim.0), (10, 32));
        assert_eq!(row_config(10, 33).block_dim.0, 64);
        assert_eq!(row_config(10, 100_000).block_dim.0, ROW_BLOCK_MAX);
        assert_eq!(row_config(0, 0).grid_dim.0, 1);
        assert_eq!(row_config(usize::MAX, 8).grid_dim.0, GRID_MAX);
        for cols in [0, 1, 31, 32, 33, 511, 512, 513, 4096] {
            let b = row_config(1, cols).block_dim.0;
            assert!(b.is_multiple_of(32) && (32..=ROW_BLOCK_MAX).contains(&b));
        }
    }
}
