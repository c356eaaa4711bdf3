//! The runtime's unit tests (compiled into the library under the `internal-tests` feature; see
//! `mithril_runtime::__internal_tests`), run with libtest's command line and output.

fn main() {
    mithril_runtime::__internal_tests::main()
}
