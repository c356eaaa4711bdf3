//! # mithril-kernels
//!
//! Pure compute on slices: no allocation policy, no devices. The runtime owns memory and calls
//! these functions.

pub mod attention;
pub mod conv;
pub mod cuda;
pub mod cvt;
pub mod ew;
pub mod gemm;
pub mod isa;
#[cfg(test)]
mod isa_paths;
pub mod linalg;
pub mod memplan;
pub mod philox;
pub mod pool;
pub mod prog;
pub mod qgemm;
pub mod rows;
pub mod scalar;
pub mod vmath;
