//! Pins what `#[durable_object]` accepts and every error message it reports: each
//! file in `ui/fail/` breaks one rule and its `.stderr` holds the expected
//! diagnostic; the files in `ui/pass/` must compile and run.
//!
//! After changing a message, regenerate with
//! `TRYBUILD=overwrite cargo test -p durable-tests --test macro_ui` and read the diff.

#[test]
fn macro_ui() {
    // trybuild builds the whole stack again in its own target directory, without the
    // workspace's profiles: without debug info it takes 1.2 GB of disk instead of 2.5.
    // The nested cargo inherits this test's environment.
    if std::env::var_os("CARGO_PROFILE_DEV_DEBUG").is_none() {
        std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "0");
    }
    let t = trybuild::TestCases::new();
    t.pass("ui/pass/*.rs");
    t.compile_fail("ui/fail/*.rs");
}
