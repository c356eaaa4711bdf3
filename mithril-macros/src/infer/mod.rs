//! Inference over the flat graph: [`dtypes`] (step 3) then [`shapes`] (step 4), each applying
//! the primitives' own rules (`prims`) in graph order and reporting spanned errors.

pub mod dtypes;
pub mod shapes;
