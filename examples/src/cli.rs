//! What the example client binaries share: how to reach a host (`--connect`, `--ca`,
//! `--token-file` or `--cert`/`--key`, or the `DURABLE_*` environment variables).

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
    /// The file holding the client token (DATA_DIR/tls/token). Not needed with a
    /// client certificate the host trusts (`--cert`, `--key`).
    #[arg(long, env = "DURABLE_TOKEN_FILE", required_unless_present = "cert")]
    pub token_file: Option<PathBuf>,
    /// A client certificate (PEM) for hosts started with `--client-ca`, e.g. from
    /// `host client-cert --out PREFIX` (PREFIX.pem).
    #[arg(long, env = "DURABLE_CERT", requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PREFIX.key).
    #[arg(long, env = "DURABLE_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
    /// Per-call deadline in milliseconds.
    #[arg(long, env = "DURABLE_DEADLINE_MS", default_value_t = 30_000)]
    pub deadline_ms: u64,
}

impl ConnectArgs {
    /// Connect a client, or exit with a message.
    pub async fn client(&self) -> durable::Client {
        let read = |path: &PathBuf| {
            std::fs::read(path).unwrap_or_else(|e| fail(format!("reading {}: {e}", path.display())))
        };
        let token = match &self.token_file {
            Some(path) => String::from_utf8_lossy(&read(path)).trim().to_string(),
            None => String::new(),
        };
        let mut config = durable::ClientConfig::new(self.connect, read(&self.ca), token);
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            config = config.with_client_cert(read(cert), read(key));
        }
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

/// Print a failed call as `error: {message}` to stderr and exit with status 1: the
/// method's own error if it returned one, otherwise what went wrong with the call.
pub fn fail_call<E: std::fmt::Display>(e: durable::CallError<E>) -> ! {
    match e {
        durable::CallError::Application(e) => fail(e),
        other => fail(other),
    }
}

/// `t` in UTC as RFC 3339 with whole seconds, like `2026-11-23T14:00:02Z` (instants
/// before 1970 print as the epoch).
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// The proleptic Gregorian date `days` days after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn formats_utc_instants() {
        let at = |s: u64| rfc3339(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_442_402), "2026-11-23T14:00:02Z");
        assert_eq!(at(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_millis(1_795_442_402_999)),
            "2026-11-23T14:00:02Z"
        );
    }
}
