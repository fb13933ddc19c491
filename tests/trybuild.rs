//! Compile-time behaviour of `#[bnn]`: every `tests/ui/*.rs` must fail to compile with exactly the
//! errors in its `.stderr` file. The declarations that must compile without a warning are a test of
//! their own, `tests/macro_hygiene.rs`; with no passing case here, trybuild only type-checks (`cargo
//! check`) instead of building and linking every case.
//!
//! Regenerate the expected output after a deliberate change with
//! `TRYBUILD=overwrite cargo test --release --test trybuild`, then read every changed `.stderr` to
//! check that each error still points at the offending token.

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    let mut cases: Vec<std::path::PathBuf> = std::fs::read_dir("tests/ui")
        .expect("tests/ui exists")
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no UI cases found");
    for case in cases {
        t.compile_fail(case);
    }
}
