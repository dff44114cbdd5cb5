//! What the example client binaries share: how to reach a host (`--connect`, `--ca`,
//! `--token-file`, or the `DURABLE_*` environment variables).

use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Connection flags shared by every example client.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The host's QUIC address.
    #[arg(long, env = "DURABLE_CONNECT", default_value = "127.0.0.1:4433")]
    pub connect: SocketAddr,
    /// The host's CA certificate (DATA_DIR/tls/ca.pem).
    #[arg(long, env = "DURABLE_CA")]
    pub ca: PathBuf,
    /// The file holding the client token (DATA_DIR/tls/token).
    #[arg(long, env = "DURABLE_TOKEN_FILE")]
    pub token_file: PathBuf,
    /// Per-call deadline in milliseconds.
    #[arg(long, env = "DURABLE_DEADLINE_MS", default_value_t = 30_000)]
    pub deadline_ms: u64,
}

impl ConnectArgs {
    /// Connect a client, or exit with a message.
    pub async fn client(&self) -> durable::Client {
        let mut config =
            match durable::ClientConfig::from_files(self.connect, &self.ca, &self.token_file) {
                Ok(c) => c,
                Err(e) => fail(format!(
                    "reading {} / {}: {e}",
                    self.ca.display(),
                    self.token_file.display()
                )),
            };
        config.deadline = std::time::Duration::from_millis(self.deadline_ms);
        match durable::Client::connect(config).await {
            Ok(c) => c,
            Err(e) => fail(format!("connecting to {}: {e}", self.connect)),
        }
    }
}

/// Print `error: {message}` to stderr and exit with status 1.
pub fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
