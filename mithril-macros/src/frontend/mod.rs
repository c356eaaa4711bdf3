//! The front end: DSL source to the flat graph IR. [`syntax`] parses, [`options`] reads the
//! `compile` options, [`carrier`] carries definitions across invocations, modules and crates,
//! [`library`] is the model library written in the DSL, [`flatten`] (with [`hyper`] for
//! compile-time values and [`resolve`] for terminal binding) instantiates a model into one
//! [`crate::ir::Graph`]. It uses the IR and the primitive definitions (`prims`), nothing later in
//! the pipeline.

pub mod carrier;
pub mod flatten;
pub mod hyper;
pub mod library;
pub mod options;
pub mod resolve;
pub mod syntax;
