//! Pins what `#[durable_object]` accepts and every error message it reports: each
//! file in `ui/fail/` breaks one rule and its `.stderr` holds the expected
//! diagnostic; the files in `ui/pass/` must compile and run.
//!
//! After changing a message, regenerate with
//! `TRYBUILD=overwrite cargo test -p durable-tests --test macro_ui` and read the diff.

#[test]
fn macro_ui() {
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
