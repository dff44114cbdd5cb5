//! The `reservation`, `ratelimit` and `counter` client binaries against a real `host` process:
//! each run is a separate process that connects, calls, prints and exits, so these
//! pin the output contract the binaries' docs promise.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, SystemTime};

/// `host serve` on `data_dir`, on a free loopback port, with `args` after.
fn serve(data_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_host"));
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--listen", "127.0.0.1:0"])
        .args(args);
    command
}

/// A `host serve` process on a temporary data directory, killed when dropped.
struct Host {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Host {
    fn start() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let mut child = serve(dir.path(), &[])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the host");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("reading the host's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("the host's address");
        Host { child, addr, dir }
    }

    /// Run client binary `exe` with the connection flags, then `args`.
    fn run(&self, exe: &str, args: &[&str]) -> Output {
        let tls = self.dir.path().join("tls");
        Command::new(exe)
            .arg("--connect")
            .arg(self.addr.to_string())
            .arg("--ca")
            .arg(tls.join("ca.pem"))
            .arg("--token-file")
            .arg(tls.join("token"))
            .args(args)
            .env_remove("DURABLE_CONNECT")
            .output()
            .expect("running the client")
    }

    /// Run `exe`, expect success, and return its stdout.
    fn ok(&self, exe: &str, args: &[&str]) -> String {
        let out = self.run(exe, args);
        assert!(
            out.status.success(),
            "{exe} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const RESERVATION: &str = env!("CARGO_BIN_EXE_reservation");
const RATELIMIT: &str = env!("CARGO_BIN_EXE_ratelimit");

#[test]
fn reservation_holds_reports_and_confirms_a_seat() {
    let host = Host::start();
    assert!(host.data_dir().join("tls/token").exists());
    let before = SystemTime::now() + Duration::from_secs(600);
    let held = host.ok(
        RESERVATION,
        &["hold", "LH400", "14", "ada", "--for-secs", "600"],
    );
    let after = SystemTime::now() + Duration::from_secs(600);
    let until = held
        .strip_prefix("held seat 14 on LH400 for ada until ")
        .and_then(|rest| rest.strip_suffix('\n'))
        .unwrap_or_else(|| panic!("unexpected hold output {held:?}"));
    // RFC 3339 in UTC with whole seconds sorts like the instants it names.
    let (lo, hi) = (
        durable_examples::cli::rfc3339(before),
        durable_examples::cli::rfc3339(after),
    );
    assert!(
        lo.as_str() <= until && until <= hi.as_str(),
        "{until} not in {lo} ..= {hi}"
    );

    assert_eq!(
        host.ok(RESERVATION, &["status", "LH400", "14"]),
        "held by ada\n"
    );
    assert_eq!(host.ok(RESERVATION, &["status", "LH400", "15"]), "free\n");

    let taken = host.run(RESERVATION, &["hold", "LH400", "14", "bob"]);
    assert_eq!(taken.status.code(), Some(1));
    assert!(taken.stdout.is_empty());
    assert_eq!(
        String::from_utf8_lossy(&taken.stderr),
        "error: seat 14 is held by someone else\n"
    );

    assert_eq!(
        host.ok(RESERVATION, &["confirm", "LH400", "14", "ada"]),
        "confirmed\n"
    );
    assert_eq!(
        host.ok(RESERVATION, &["status", "LH400", "14"]),
        "confirmed by ada\n"
    );
    // Another flight is another object.
    assert_eq!(host.ok(RESERVATION, &["status", "BA117", "14"]), "free\n");
}

#[test]
fn ratelimit_allows_up_to_the_capacity_then_limits() {
    let host = Host::start();
    // Defaults (10 per minute) for a key never configured.
    assert_eq!(host.ok(RATELIMIT, &["hit", "ip-10.0.0.1"]), "allowed\n");

    // A slow refill, so real time passing between the runs cannot add a token.
    assert_eq!(
        host.ok(RATELIMIT, &["configure", "user-ada", "3", "3600"]),
        "configured\n"
    );
    for _ in 0..3 {
        assert_eq!(host.ok(RATELIMIT, &["hit", "user-ada"]), "allowed\n");
    }
    assert_eq!(host.ok(RATELIMIT, &["hit", "user-ada"]), "limited\n");
    assert_eq!(host.ok(RATELIMIT, &["hit", "user-ada"]), "limited\n");

    let bad = host.run(RATELIMIT, &["configure", "user-ada", "0", "60"]);
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&bad.stderr),
        "error: invalid request: the capacity must be at least 1\n"
    );
}

const COUNTER: &str = env!("CARGO_BIN_EXE_counter");

#[test]
fn counter_bench_reads_prints_rate_and_percentiles() {
    let host = Host::start();
    let out = host.ok(
        COUNTER,
        &[
            "bench",
            "--reads",
            "--objects",
            "3",
            "--concurrency",
            "2",
            "--seconds",
            "0.3",
        ],
    );
    // reads=N seconds=S per_second=R p50_us=A p99_us=B
    let fields: Vec<(&str, f64)> = out
        .trim()
        .split(' ')
        .map(|f| {
            let (k, v) = f.split_once('=').unwrap_or_else(|| panic!("{out:?}"));
            (k, v.parse().unwrap_or_else(|_| panic!("{out:?}")))
        })
        .collect();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(
        keys,
        ["reads", "seconds", "per_second", "p50_us", "p99_us"],
        "{out:?}"
    );
    let (reads, p50, p99) = (fields[0].1, fields[3].1, fields[4].1);
    assert!(reads > 0.0, "{out:?}");
    assert!(0.0 < p50 && p50 <= p99, "{out:?}");
}

/// The `host started` line a `host serve` with `args` logs (stderr, `RUST_LOG=info`).
fn started_line(args: &[&str]) -> String {
    started_line_with(args, &[])
}

/// [`started_line`] with environment variables for the host.
fn started_line_with(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve(dir.path(), args)
        .env("RUST_LOG", "info")
        .env_remove("TOKIO_WORKER_THREADS")
        .env_remove("DURABLE_NET_THREADS")
        .env_remove("DURABLE_LOG_DIRECT")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the host");
    let line = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("host started"));
    let _ = child.kill();
    let _ = child.wait();
    line.expect("the host logged no `host started` line")
}

#[test]
fn serve_starts_as_many_network_threads_as_asked() {
    let line = started_line(&["--net-threads", "3", "--shards", "2"]);
    assert!(line.contains(" shards=2 network_threads=3 "), "{line}");
    let cpus = std::thread::available_parallelism().unwrap().get();
    let line = started_line(&[]);
    assert!(
        line.contains(&format!(" network_threads={cpus} ")),
        "{line}"
    );
}

/// The `host started` line says how the host log reaches the disk: directly where the
/// data directory's file system takes `O_DIRECT` writes, else (or with
/// `DURABLE_LOG_DIRECT=0`) buffered with `fdatasync`; no log under `--durability fsync`.
#[test]
fn serve_names_how_the_host_log_is_written() {
    use std::os::unix::fs::OpenOptionsExt;
    let probe = tempfile::tempdir().unwrap();
    let direct_works = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .custom_flags(libc::O_DIRECT)
        .open(probe.path().join("probe"))
        .is_ok();
    let expected = if direct_works { "direct" } else { "buffered" };
    let line = started_line(&[]);
    assert!(line.ends_with(&format!("log_writes={expected}")), "{line}");
    let line = started_line_with(&[], &[("DURABLE_LOG_DIRECT", "0")]);
    assert!(line.ends_with("log_writes=buffered"), "{line}");
    let line = started_line(&["--durability", "fsync"]);
    assert!(line.ends_with("log_writes=none"), "{line}");
}
