//! mithril's model library, written in the DSL itself (`library/*.mth`) and compiled into the
//! macro. Every model here is an ordinary DSL model: the compiler has no special cases for them.

use crate::frontend::flatten::{DefEntry, Origin, Scope};
use crate::frontend::syntax::{File, Item};
use std::rc::Rc;

/// The library's source.
pub const SOURCE: &str = include_str!("library/models.mth");

/// The library as a scope of definitions.
pub fn scope() -> Scope {
    let mut s = Scope::default();
    let file: File = match syn::parse_str(SOURCE) {
        Ok(f) => f,
        Err(_) => return s, // a library parse error is caught by the crate's tests
    };
    let empty = Rc::new(Scope::default());
    for item in file.items {
        if let Item::Model(m) = item {
            s.defs.insert(
                m.name.to_string(),
                Rc::new(DefEntry {
                    def: m,
                    origin: Origin::Library,
                    scope: empty.clone(),
                }),
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn library_parses() {
        let f: crate::frontend::syntax::File =
            syn::parse_str(super::SOURCE).expect("library parses");
        assert!(f.items.len() >= 12);
    }
}
