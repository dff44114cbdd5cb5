//! `ratelimit`: check and configure RateLimiter objects, one per key.
//!
//! ```text
//! ratelimit --connect ADDR --ca DIR/tls/ca.pem --token-file DIR/tls/token hit KEY
//! ratelimit ... configure KEY CAPACITY PER_SECS
//! ```
//!
//! `hit` prints `allowed` or `limited`; `configure` prints `configured`. Failures
//! print `error: ...` on stderr and exit with status 1.

use clap::{Parser, Subcommand};
use durable_examples::cli::{fail_call, ConnectArgs};
use durable_examples::ratelimit::{Decision, RateLimiter};

#[derive(Parser, Debug)]
#[command(about = "Rate-limit keys with RateLimiter objects on a durable host")]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Take a token from KEY's bucket; print `allowed` or `limited`.
    Hit { key: String },
    /// Allow CAPACITY hits per PER_SECS seconds on KEY (default: 10 per 60).
    Configure {
        key: String,
        capacity: u32,
        per_secs: u64,
    },
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let client = cli.connect.client().await;
    match cli.command {
        Command::Hit { key } => match client.get::<RateLimiter>(&key).hit().await {
            Ok(Decision::Allowed { .. }) => println!("allowed"),
            Ok(Decision::Limited { .. }) => println!("limited"),
            Err(e) => fail_call(e),
        },
        Command::Configure {
            key,
            capacity,
            per_secs,
        } => match client
            .get::<RateLimiter>(&key)
            .configure(capacity, per_secs)
            .await
        {
            Ok(()) => println!("configured"),
            Err(e) => fail_call(e),
        },
    }
}
