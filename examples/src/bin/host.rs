//! `host serve --data-dir DIR --listen ADDR`: serves every example class (and, with
//! `--http`, the AI chat page at `/ai/`, whose class it opens to callers without the
//! token).

fn main() -> std::process::ExitCode {
    durable::cli::main(|host| {
        durable_examples::ai::open_to_browsers(durable_examples::register_all(host))
    })
}
