//! The passes over the inferred graph: [`autodiff`] (the backward graph), the optimizations
//! (step 5: one pass per module; each reads and rewrites only the IR and returns how many
//! changes it made, which the summary reports), [`checkpoint`], [`placement`] (mixed backends)
//! and [`memplan`] (slot lifetimes).

pub mod autodiff;
pub mod checkpoint;
pub mod conv_epilogue;
pub mod cse;
pub mod dce;
pub mod elide;
pub mod epilogue;
pub mod fold;
pub mod fuse;
pub mod heads;
pub mod memplan;
pub mod norm;
pub mod placement;
