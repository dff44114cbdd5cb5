//! `host serve --data-dir DIR --listen ADDR`: serves every example class.

fn main() -> std::process::ExitCode {
    durable::cli::main(durable_examples::register_all)
}
