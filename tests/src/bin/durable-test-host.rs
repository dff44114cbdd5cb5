//! The host the cross-process tests start: the standard host CLI serving every example
//! class plus the test classes.

fn main() -> std::process::ExitCode {
    durable::cli::main(durable_tests::register_all)
}
