//! Lists the runtime's unit tests for `tests/internal.rs` (see `src/internal_tests.rs`).
//!
//! The unit tests are compiled into the library under the `internal-tests` feature, so that
//! `cargo test --workspace` compiles the runtime once instead of twice (the library, and the
//! library again as a test harness). This script scans `src/` and writes
//! `$OUT_DIR/internal_tests.rs`: every function marked `#[cfg_attr(test, test)]` with its
//! path. A plain `#[test]` or `#[cfg(test)]` in `src/` would be compiled out of that build and
//! its tests silently skipped, so they are build errors here.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/ops/mod.rs` -> `ops`, `src/plan/text.rs` -> `plan::text`, `src/lib.rs` -> ``.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("file name");
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

fn main() {
    let src = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir")).join("src");
    println!("cargo::rerun-if-changed=src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut tests: Vec<String> = Vec::new();
    let mut errors = Vec::new();
    for file in &all {
        println!("cargo::rerun-if-changed={}", file.display());
        let text = std::fs::read_to_string(file).expect("read source");
        let module = module_of(&src, file);
        let mut inner: Option<String> = None;
        let mut prev = "";
        let mut want_fn = false;
        for (n, line) in text.lines().enumerate() {
            let t = line.trim();
            let at = format!("{}:{}", file.display(), n + 1);
            if t == "#[test]" {
                errors.push(format!(
                    "{at}: write `#[cfg_attr(test, test)]` (see build.rs)"
                ));
            }
            if t == "#[cfg(test)]" {
                errors.push(format!(
                    "{at}: write `#[cfg(any(test, feature = \"internal-tests\"))]` (see build.rs)"
                ));
            }
            if prev == "#[cfg(any(test, feature = \"internal-tests\"))]" {
                if let Some(rest) = t.strip_prefix("pub(crate) mod ") {
                    if let Some(name) = rest.strip_suffix(" {") {
                        inner = Some(name.to_string());
                    }
                } else if t.starts_with("mod ") {
                    errors.push(format!("{at}: a test module must be `pub(crate) mod`"));
                }
            }
            if want_fn {
                match t
                    .strip_prefix("pub(crate) fn ")
                    .and_then(|r| r.split_once("()"))
                {
                    Some((name, _)) => {
                        let mut path = module.clone();
                        path.extend(inner.clone());
                        path.push(name.to_string());
                        tests.push(path.join("::"));
                    }
                    None => errors.push(format!(
                        "{at}: a unit test is `pub(crate) fn name() {{` right after `#[cfg_attr(test, test)]`"
                    )),
                }
                want_fn = false;
            }
            if t == "#[cfg_attr(test, test)]" {
                want_fn = true;
            }
            if !t.is_empty() {
                prev = t;
            }
        }
    }
    if !errors.is_empty() {
        panic!(
            "unit tests the internal runner would miss:\n{}",
            errors.join("\n")
        );
    }
    let mut out = String::from("/// Every unit test of the runtime: its path and function.\npub static TESTS: &[(&str, fn())] = &[\n");
    for t in &tests {
        writeln!(out, "    (\"{t}\", crate::{t}),").expect("write");
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").expect("out dir")).join("internal_tests.rs");
    std::fs::write(dest, out).expect("write the test list");
}
