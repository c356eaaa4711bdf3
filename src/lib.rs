//! # mithril
//!
//! A machine-learning compiler that lives inside `rustc`. Models are written in the [`mithril!`]
//! macro; at build time the macro flattens nested models, resolves their connections, infers
//! shapes and dtypes, optimizes the graph and expands to Rust that calls specialized kernels. A
//! shape mistake is a compile error under the tokens that caused it.
//!
//! ```
//! use mithril::prelude::*;
//!
//! mithril! {
//!     /// Two-layer perceptron for 28x28 digits.
//!     pub model Mlp {
//!         input x: f32[B, 784];            // B: a symbolic dim, fixed per call
//!         let fc1 = Linear(256);           // a model instance (weights live under `fc1`)
//!         let h = relu(fc1(x));
//!         let h = relu(Linear(dimension = 128)(h));   // an anonymous instance
//!         output logits = Linear(10)(h);
//!     }
//!
//!     /// The same logical model, compiled again with other options.
//!     pub compile MlpB32 = Mlp {
//!         shapes: { x: [32, 784] },
//!         static_shapes: true,
//!         optimizations: { operator_fusion: true },
//!     };
//! }
//!
//! fn main() -> mithril::Result<()> {
//!     let model = Mlp::new()?;
//!     let params = model.randomize_params(42);      // typed: params.fc1.weight, ...
//!     let x = ndarray::Array2::<f32>::zeros((8, 784));
//!     let out = model.evaluate(&params, MlpInputs { x: x.view() })?;
//!     assert_eq!(out.logits.shape(), &[8, 10]);
//!     assert_eq!(params.fc1.weight.shape(), &[256, 784]);
//!     Ok(())
//! }
//! ```
//!
//! The rest of this page is the language reference: every form of the DSL with an example that
//! is compiled and run as a test. `cargo run --release --example mlp` runs a complete model;
//! `ARCHITECTURE.md` describes the compiler on one page, `docs/internals.md` in full.
#![doc = include_str!("../docs/language.md")]

pub use mithril_macros::mithril;
/// The runtime: errors, element types, tensor ops, param trees, initialisers.
pub use mithril_runtime as rt;
pub use mithril_runtime::{Error, ParamTree, Result};

pub use half;
pub use ndarray;

/// Macros named after the CamelCase library models, glob-imported by the prelude. A model name
/// that is neither local, imported nor in the library becomes a carrier call (`Nope! {..}`),
/// which rustc reports as "cannot find macro `Nope`"; with these in scope its message adds
/// "a macro with a similar name exists: `Linear`" for a misspelled library model. They are
/// never expanded by the carrier protocol (library names resolve inside the compiler first);
/// written by hand they say what they are.
#[doc(hidden)]
pub mod library_names {
    #[doc(hidden)]
    pub use crate::__mithril_library_BasicBlock as BasicBlock;
    #[doc(hidden)]
    pub use crate::__mithril_library_Embedding as Embedding;
    #[doc(hidden)]
    pub use crate::__mithril_library_KernelizedSVM as KernelizedSVM;
    #[doc(hidden)]
    pub use crate::__mithril_library_LayerNorm as LayerNorm;
    #[doc(hidden)]
    pub use crate::__mithril_library_Linear as Linear;
    #[doc(hidden)]
    pub use crate::__mithril_library_LinearSVM as LinearSVM;
    #[doc(hidden)]
    pub use crate::__mithril_library_LogisticRegression as LogisticRegression;
    #[doc(hidden)]
    pub use crate::__mithril_library_MDS as MDS;
    #[doc(hidden)]
    pub use crate::__mithril_library_MLP as MLP;
    #[doc(hidden)]
    pub use crate::__mithril_library_PolynomialKernel as PolynomialKernel;
    #[doc(hidden)]
    pub use crate::__mithril_library_PolynomialRegression as PolynomialRegression;
    #[doc(hidden)]
    pub use crate::__mithril_library_RBFKernel as RBFKernel;
    #[doc(hidden)]
    pub use crate::__mithril_library_RMSNorm as RMSNorm;
    #[doc(hidden)]
    pub use crate::__mithril_library_TSNE as TSNE;
    // norm / dropout
    #[doc(hidden)]
    pub use crate::__mithril_library_BatchNorm1d as BatchNorm1d;
    #[doc(hidden)]
    pub use crate::__mithril_library_BatchNorm2d as BatchNorm2d;
    #[doc(hidden)]
    pub use crate::__mithril_library_Dropout as Dropout;
    #[doc(hidden)]
    pub use crate::__mithril_library_GroupNorm as GroupNorm;
    // convolution, pooling, sequence models, ResNet
    #[doc(hidden)]
    pub use crate::__mithril_library_AdaptiveAvgPool1d as AdaptiveAvgPool1d;
    #[doc(hidden)]
    pub use crate::__mithril_library_AdaptiveAvgPool2d as AdaptiveAvgPool2d;
    #[doc(hidden)]
    pub use crate::__mithril_library_AvgPool1d as AvgPool1d;
    #[doc(hidden)]
    pub use crate::__mithril_library_AvgPool2d as AvgPool2d;
    #[doc(hidden)]
    pub use crate::__mithril_library_CachedPositionalEmbedding as CachedPositionalEmbedding;
    #[doc(hidden)]
    pub use crate::__mithril_library_CachedRoPE as CachedRoPE;
    #[doc(hidden)]
    pub use crate::__mithril_library_CachedSelfAttention as CachedSelfAttention;
    #[doc(hidden)]
    pub use crate::__mithril_library_CachedTransformerBlock as CachedTransformerBlock;
    #[doc(hidden)]
    pub use crate::__mithril_library_Conv1d as Conv1d;
    #[doc(hidden)]
    pub use crate::__mithril_library_Conv2d as Conv2d;
    #[doc(hidden)]
    pub use crate::__mithril_library_ConvTranspose2d as ConvTranspose2d;
    #[doc(hidden)]
    pub use crate::__mithril_library_GRU as GRU;
    #[doc(hidden)]
    pub use crate::__mithril_library_GRUCell as GRUCell;
    #[doc(hidden)]
    pub use crate::__mithril_library_LSTM as LSTM;
    #[doc(hidden)]
    pub use crate::__mithril_library_LSTMCell as LSTMCell;
    #[doc(hidden)]
    pub use crate::__mithril_library_MaxPool1d as MaxPool1d;
    #[doc(hidden)]
    pub use crate::__mithril_library_MaxPool2d as MaxPool2d;
    #[doc(hidden)]
    pub use crate::__mithril_library_MultiHeadAttention as MultiHeadAttention;
    #[doc(hidden)]
    pub use crate::__mithril_library_PositionalEmbedding as PositionalEmbedding;
    #[doc(hidden)]
    pub use crate::__mithril_library_RoPE as RoPE;
    #[doc(hidden)]
    pub use crate::__mithril_library_TransformerDecoderBlock as TransformerDecoderBlock;
    #[doc(hidden)]
    pub use crate::__mithril_library_TransformerEncoderBlock as TransformerEncoderBlock;
    #[doc(hidden)]
    pub use crate::__mithril_library_Upsample as Upsample;
    // recurrent layers from given initial states
    #[doc(hidden)]
    pub use crate::__mithril_library_GRUWithState as GRUWithState;
    #[doc(hidden)]
    pub use crate::__mithril_library_LSTMWithState as LSTMWithState;
    // the identity (the other branch of the seed's conditional dropout)
    #[doc(hidden)]
    pub use crate::__mithril_library_Identity as Identity;
    // self-attention with one in-projection product
    #[doc(hidden)]
    pub use crate::__mithril_library_SelfAttention as SelfAttention;
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_Linear {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`Linear` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_MLP {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`MLP` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_LayerNorm {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`LayerNorm` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_RMSNorm {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`RMSNorm` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_Embedding {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`Embedding` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_RBFKernel {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`RBFKernel` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_PolynomialKernel {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`PolynomialKernel` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_LogisticRegression {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`LogisticRegression` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_LinearSVM {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`LinearSVM` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_KernelizedSVM {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`KernelizedSVM` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_PolynomialRegression {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`PolynomialRegression` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_MDS {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`MDS` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_TSNE {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`TSNE` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

// norm / dropout
#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_BatchNorm1d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`BatchNorm1d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_BatchNorm2d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`BatchNorm2d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_GroupNorm {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`GroupNorm` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_Dropout {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`Dropout` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_MaxPool2d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`MaxPool2d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_MaxPool1d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`MaxPool1d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_AvgPool2d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`AvgPool2d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_AvgPool1d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`AvgPool1d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_AdaptiveAvgPool2d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`AdaptiveAvgPool2d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_AdaptiveAvgPool1d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`AdaptiveAvgPool1d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_Upsample {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`Upsample` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_MultiHeadAttention {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`MultiHeadAttention` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_RoPE {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`RoPE` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_PositionalEmbedding {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`PositionalEmbedding` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_TransformerEncoderBlock {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`TransformerEncoderBlock` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_TransformerDecoderBlock {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`TransformerDecoderBlock` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_LSTMCell {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`LSTMCell` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_GRUCell {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`GRUCell` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_LSTM {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`LSTM` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_GRU {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`GRU` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_Conv1d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`Conv1d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_Conv2d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`Conv2d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_ConvTranspose2d {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`ConvTranspose2d` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_BasicBlock {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`BasicBlock` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_LSTMWithState {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`LSTMWithState` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_GRUWithState {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`GRUWithState` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

/// `use mithril::prelude::*;` brings the macro, the error types, the param-tree trait and
/// `ndarray` into scope.
pub mod prelude {
    #[doc(hidden)]
    pub use crate::library_names::*;
    pub use crate::rt::{DType, Elem, TensorView, TensorViewMut};
    pub use crate::{Error, ParamTree, Result, mithril};
    pub use half::{bf16, f16};
    pub use ndarray;
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_CachedSelfAttention {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`CachedSelfAttention` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_CachedTransformerBlock {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`CachedTransformerBlock` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_CachedPositionalEmbedding {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`CachedPositionalEmbedding` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_CachedRoPE {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`CachedRoPE` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_Identity {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`Identity` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mithril_library_SelfAttention {
    ($($t:tt)*) => {
        ::core::compile_error!(
            "`SelfAttention` is a mithril library model: call it inside `mithril! { .. }`"
        );
    };
}

#[cfg(test)]
mod tests {
    /// Every CamelCase model of the DSL library has its name macro in `library_names`, so a
    /// misspelled one gets rustc's similar-name suggestion.
    #[test]
    fn library_names_cover_the_library() {
        let lib = include_str!("../mithril-macros/src/frontend/library/models.mth");
        let src = include_str!("lib.rs");
        for line in lib.lines() {
            let Some(rest) = line.strip_prefix("model ") else {
                continue;
            };
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                let want = format!("pub use crate::__mithril_library_{name} as {name};");
                assert!(
                    src.contains(&want),
                    "library model `{name}` has no name macro in library_names"
                );
            }
        }
    }
}
