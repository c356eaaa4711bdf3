//! Step 5: graph optimization. One pass per module; each reads and rewrites only the IR and
//! returns how many changes it made (the summary reports them).

pub mod checkpoint;
pub mod cse;
pub mod dce;
pub mod elide;
pub mod epilogue;
pub mod fold;
pub mod fuse;
