//! mithril's model library, written in the DSL itself (`library/*.mth`) and compiled into the
//! macro. Every model here is an ordinary DSL model: the compiler has no special cases for them.
//!
//! The library is parsed lazily, one model at a time: every `mithril!` invocation used to parse
//! the whole source (54 KB, some 60 models) whether it called one library model or none; now
//! only the models a flattening actually reaches are parsed, each once per invocation. The
//! split into per-model texts is a plain scan of the source (no tokens, no spans), made once per
//! process.

use crate::frontend::flatten::{DefEntry, Origin, Scope};
use crate::frontend::syntax::{File, Item};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::OnceLock;

/// The library's source.
pub const SOURCE: &str = include_str!("library/models.mth");

/// Each top-level model of [`SOURCE`]: its name and its text (the `model` item with the doc
/// comments and attributes directly above it), in source order.
fn index() -> &'static [(&'static str, &'static str)] {
    static INDEX: OnceLock<Vec<(&'static str, &'static str)>> = OnceLock::new();
    INDEX.get_or_init(|| split(SOURCE))
}

/// Splits a library source into its top-level `model` items. An item starts at a line that
/// begins with `model ` (column 0), extended upwards over the `///` and `#[` lines right above
/// it; it ends where the next item starts. Text before the first item (comments) is dropped.
fn split(src: &'static str) -> Vec<(&'static str, &'static str)> {
    // byte offsets of the line starts
    let mut lines: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for line in src.split_inclusive('\n') {
        lines.push((at, line));
        at += line.len();
    }
    let mut starts: Vec<(usize, &'static str)> = Vec::new();
    for (i, (_, line)) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("model ") else {
            continue;
        };
        let name_len = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &src[lines[i].0 + 6..lines[i].0 + 6 + name_len];
        let mut first = i;
        while first > 0 {
            let above = lines[first - 1].1.trim_start();
            if above.starts_with("///") || above.starts_with("#[") {
                first -= 1;
            } else {
                break;
            }
        }
        starts.push((lines[first].0, name));
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(start, name)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(src.len(), |s| s.0);
        out.push((name, &src[start..end]));
    }
    out
}

/// The library as seen by one invocation: every name is known up front, a definition is parsed
/// the first time it is looked up.
pub struct Library {
    parsed: RefCell<BTreeMap<&'static str, Option<Rc<DefEntry>>>>,
    empty: Rc<Scope>,
}

impl Library {
    /// A library with nothing parsed yet.
    pub fn new() -> Library {
        Library {
            parsed: RefCell::new(BTreeMap::new()),
            empty: Rc::new(Scope::default()),
        }
    }

    /// The names of every library model, in source order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> {
        index().iter().map(|(n, _)| *n)
    }

    /// Whether the library defines `name`.
    pub fn contains(&self, name: &str) -> bool {
        index().iter().any(|(n, _)| *n == name)
    }

    /// The definition of `name`, parsed on first use.
    pub fn get(&self, name: &str) -> Option<Rc<DefEntry>> {
        let &(key, text) = index().iter().find(|(n, _)| *n == name)?;
        if let Some(hit) = self.parsed.borrow().get(key) {
            return hit.clone();
        }
        // a library parse error is caught by the crate's tests
        let entry = syn::parse_str::<File>(text).ok().and_then(|file| {
            file.items.into_iter().find_map(|item| match item {
                Item::Model(m) if m.name == key => Some(Rc::new(DefEntry {
                    def: m,
                    origin: Origin::Library,
                    scope: self.empty.clone(),
                })),
                _ => None,
            })
        });
        self.parsed.borrow_mut().insert(key, entry.clone());
        entry
    }
}

#[cfg(test)]
mod tests {
    use crate::frontend::syntax::{File, Item};

    #[test]
    fn library_parses() {
        let f: File = syn::parse_str(super::SOURCE).expect("library parses");
        assert!(f.items.len() >= 12);
    }

    /// The per-model split finds exactly the models of a whole-file parse, in order, and each
    /// piece parses alone into that one model (with its docs).
    #[test]
    fn the_split_matches_the_whole_parse() {
        let f: File = syn::parse_str(super::SOURCE).expect("library parses");
        let whole: Vec<String> = f
            .items
            .iter()
            .filter_map(|i| match i {
                Item::Model(m) => Some(m.name.to_string()),
                _ => None,
            })
            .collect();
        let split: Vec<&str> = super::index().iter().map(|(n, _)| *n).collect();
        assert_eq!(whole, split);
        let lib = super::Library::new();
        for (name, text) in super::index() {
            let piece: File = syn::parse_str(text)
                .unwrap_or_else(|e| panic!("library model `{name}` does not parse alone: {e}"));
            assert_eq!(piece.items.len(), 1, "`{name}`: {text}");
            let def = lib.get(name).expect("parsed");
            assert_eq!(def.def.name, name);
            assert!(
                text.trim_start().starts_with("///"),
                "`{name}` lost its docs"
            );
        }
        assert!(lib.get("NoSuchModel").is_none());
        assert!(lib.contains("Linear") && !lib.contains("NoSuchModel"));
    }
}
