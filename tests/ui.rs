//! Compile-fail cases: every `ui-tests/*.rs` must fail to build with exactly the diagnostics in
//! its `.stderr` (the macro's errors, spanned on the offending tokens). Re-bless after a
//! deliberate wording change with `TRYBUILD=overwrite cargo test --test ui`, then review the
//! diff of every `.stderr`.
//!
//! The passing counterparts of some cases are ordinary tests in the suite
//! (`tests/suite/frontend.rs`, module `ui_counterparts`). This binary holds this one test only, so
//! that it may set an environment variable for the cargo processes trybuild starts (below).

/// trybuild checks the cases' dependencies (the facade, the runtime, ndarray, cudarc, ...) twice
/// in its own target dir: once with its rustflags `--cfg trybuild --verbose -A dead_code`, then,
/// for the cases, with `--diagnostic-width=140` added, and a change of rustflags invalidates every
/// unit. `CARGO_ENCODED_RUSTFLAGS` outranks the `--config` rustflags trybuild passes, so setting
/// it to the second list gives both runs the same flags and the dependencies are checked once
/// (the cases' diagnostics are rendered exactly as before).
const TRYBUILD_RUSTFLAGS: &[&str] = &[
    "--cfg",
    "trybuild",
    "--verbose",
    "-A",
    "dead_code",
    "--diagnostic-width=140",
];

#[test]
fn ui() {
    if std::env::var_os("CARGO_ENCODED_RUSTFLAGS").is_none()
        && std::env::var_os("RUSTFLAGS").is_none()
    {
        // SAFETY: this is the only test of this binary and it starts no thread before this
        // line, so nothing reads the environment concurrently.
        unsafe { std::env::set_var("CARGO_ENCODED_RUSTFLAGS", TRYBUILD_RUSTFLAGS.join("\x1f")) };
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("ui-tests/*.rs");
}
