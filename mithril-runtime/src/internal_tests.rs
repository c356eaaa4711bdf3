//! The runtime's unit tests, compiled into the library (feature `internal-tests`) and run by
//! `tests/internal.rs`, a test target without the libtest harness.
//!
//! Why: a crate's `#[test]` functions exist only in its test-harness build, a second full
//! compile of the crate. The runtime is the largest crate of the workspace, so
//! `cargo test --workspace` compiled it twice. Its unit tests are instead ordinary
//! `pub(crate)` functions marked `#[cfg_attr(test, test)]` inside
//! `#[cfg(any(test, feature = "internal-tests"))]` modules; `build.rs` lists them, and
//! [`main`] runs the list with libtest's command line (filters, `--exact`, `--skip`, `--list`,
//! `--test-threads`) and output. The feature is a default of this package (so
//! `cargo test -p mithril-runtime` and `cargo test --workspace` run the tests) and off in
//! users' builds (the facade depends on the runtime without default features).

use std::io::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

include!(concat!(env!("OUT_DIR"), "/internal_tests.rs"));

struct Args {
    filters: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    list: bool,
    ignored_only: bool,
    threads: usize,
}

fn parse(args: impl Iterator<Item = String>) -> Args {
    let mut a = Args {
        filters: Vec::new(),
        skip: Vec::new(),
        exact: false,
        list: false,
        ignored_only: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if let Some(n) = std::env::var("RUST_TEST_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        a.threads = n;
    }
    let mut it = args.peekable();
    while let Some(s) = it.next() {
        match s.as_str() {
            "--exact" => a.exact = true,
            "--list" => a.list = true,
            "--ignored" => a.ignored_only = true,
            "--skip" => a.skip.extend(it.next()),
            "--test-threads" => {
                if let Some(n) = it.next().and_then(|v| v.parse().ok()) {
                    a.threads = n;
                }
            }
            // libtest flags that change nothing here (output is not captured; no test is
            // ignored, benchmarked or timed)
            "--nocapture" | "--show-output" | "--include-ignored" | "-q" | "--quiet"
            | "--bench" | "--test" => {}
            "--format" | "--color" | "--logfile" | "-Z" | "--report-time" => {
                if !s.contains('=') && s != "--report-time" {
                    it.next();
                }
            }
            _ => {
                if let Some(n) = s.strip_prefix("--test-threads=") {
                    if let Ok(n) = n.parse() {
                        a.threads = n;
                    }
                } else if let Some(p) = s.strip_prefix("--skip=") {
                    a.skip.push(p.to_string());
                } else if !s.starts_with('-') {
                    a.filters.push(s);
                }
            }
        }
    }
    a.threads = a.threads.max(1);
    a
}

/// Runs the selected tests of [`TESTS`] on `--test-threads` threads and exits as libtest does
/// (status 101 when a test failed).
pub fn main() -> ! {
    let a = parse(std::env::args().skip(1));
    let picked: Vec<&(&str, fn())> = TESTS
        .iter()
        .filter(|(name, _)| {
            let hit = |f: &String| {
                if a.exact {
                    name == f
                } else {
                    name.contains(f.as_str())
                }
            };
            (a.filters.is_empty() || a.filters.iter().any(hit))
                && !a.skip.iter().any(|s| name.contains(s.as_str()))
                && !a.ignored_only
        })
        .collect();
    let filtered = TESTS.len() - picked.len();
    let mut out = std::io::stdout();
    if a.list {
        for (name, _) in &picked {
            let _ = writeln!(out, "{name}: test");
        }
        let _ = writeln!(out, "\n{} tests, 0 benchmarks", picked.len());
        std::process::exit(0);
    }
    let _ = writeln!(out, "\nrunning {} tests", picked.len());
    let start = Instant::now();
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::channel::<(&str, bool)>();
    let mut failed = Vec::new();
    std::thread::scope(|s| {
        for _ in 0..a.threads.min(picked.len()) {
            let tx = tx.clone();
            let (next, picked) = (&next, &picked);
            std::thread::Builder::new()
                .stack_size(8 << 20)
                .spawn_scoped(s, move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&&(name, f)) = picked.get(i) else {
                        break;
                    };
                    let ok = catch_unwind(AssertUnwindSafe(f)).is_ok();
                    if tx.send((name, ok)).is_err() {
                        break;
                    }
                })
                .expect("spawn a test thread");
        }
        drop(tx);
        for (name, ok) in rx {
            let _ = writeln!(out, "test {name} ... {}", if ok { "ok" } else { "FAILED" });
            if !ok {
                failed.push(name);
            }
        }
    });
    if !failed.is_empty() {
        let _ = writeln!(out, "\nfailures:");
        for f in &failed {
            let _ = writeln!(out, "    {f}");
        }
    }
    let _ = writeln!(
        out,
        "\ntest result: {}. {} passed; {} failed; 0 ignored; 0 measured; {filtered} filtered out; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        picked.len() - failed.len(),
        failed.len(),
        start.elapsed().as_secs_f64()
    );
    let _ = out.flush();
    std::process::exit(if failed.is_empty() { 0 } else { 101 });
}
