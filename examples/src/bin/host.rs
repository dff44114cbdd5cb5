//! `host serve --data-dir DIR --listen ADDR [--http ADDR]`: serves every example
//! class, and with `--http` the pages at `/chat/`, `/doc/` and `/ai/`.

#[global_allocator]
static GLOBAL: durable::Allocator = durable::Allocator;

fn main() -> std::process::ExitCode {
    durable::cli::main(|host| {
        durable_examples::web::serve_pages(durable_examples::register_all(host))
    })
}
