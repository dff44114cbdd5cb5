//! The standard host command line: `serve` runs a host with the application's classes,
//! and the operator's tools beside it (`call`, `objects`, `inspect`, `alarms`,
//! `changes`, `backup`, `restore`, `restore-object`, `salvage-log`, `classes`,
//! `client-cert`; docs/operations.md has each). An application's host binary is one
//! line: `durable::cli::main(|host| host.register::<MyClass>())`.

use crate::host::{DurabilityMode, Host};
use crate::log::LogConfig;
use crate::restore::RestoreTarget;
use clap::{Parser, Subcommand};
use durable_client::ObjectId;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "A durable objects host", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve this binary's classes over QUIC (and HTTP with --http) until SIGINT or
    /// SIGTERM.
    Serve {
        /// Where object databases, TLS material and logs live.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
        /// The UDP address to listen on.
        #[arg(long, env = "DURABLE_LISTEN", default_value = "127.0.0.1:4433")]
        listen: SocketAddr,
        /// Shard threads that run turns (default: number of CPUs).
        #[arg(long, env = "DURABLE_SHARDS")]
        shards: Option<usize>,
        /// Threads that serve the network: QUIC, TLS, the HTTP/WebSocket gateway
        /// (default: number of CPUs). See "Sizing a host" in docs/operations.md.
        #[arg(long, env = "DURABLE_NET_THREADS")]
        net_threads: Option<usize>,
        /// The shard threads' own QUIC endpoints ("lanes"), where the Rust client
        /// sends each call to the thread that owns its object: `auto` (ports the
        /// system picks, on the --listen address), a first port (one per shard from
        /// it), or `off`. See "Lanes" in docs/clients.md.
        #[arg(long, env = "DURABLE_LANES", default_value = "auto")]
        lanes: crate::host::Lanes,
        /// Calls that may wait per object before callers get Overloaded.
        #[arg(long, env = "DURABLE_MAX_QUEUE", default_value_t = 1024)]
        max_queue: usize,
        /// Largest frame accepted, in bytes.
        #[arg(long, env = "DURABLE_MAX_FRAME", default_value_t = durable_client::wire::DEFAULT_MAX_FRAME)]
        max_frame: usize,
        /// Extra DNS name or IP for the generated certificate (repeatable).
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
        /// How writes are made durable: `log` (one host-wide log, the default) or
        /// `fsync` (an fsync of each object's own file per batch).
        #[arg(long, env = "DURABLE_DURABILITY", default_value = "log", value_parser = ["log", "fsync"])]
        durability: String,
        /// Seconds between checkpoints of the host log (0: only at shutdown and when
        /// the log grows past 256 MiB).
        #[arg(long, env = "DURABLE_CHECKPOINT_SECS", default_value_t = 30)]
        checkpoint_secs: u64,
        /// Days to keep retired log segments for point-in-time recovery and the change
        /// feed (0: delete them at checkpoint).
        #[arg(long, env = "DURABLE_RETENTION_DAYS", default_value_t = 30.0)]
        retention_days: f64,
        /// Evict objects idle this many seconds (their next call re-activates them).
        #[arg(long, env = "DURABLE_IDLE_TIMEOUT_SECS", default_value_t = 30.0)]
        idle_timeout_secs: f64,
        /// Close the database connection of an active object quiet this many seconds
        /// (it keeps its in-memory state; the next call reopens the file).
        #[arg(long, env = "DURABLE_CONNECTION_IDLE_SECS", default_value_t = 10.0)]
        connection_idle_secs: f64,
        /// Most active objects; the least recently used idle ones are evicted first.
        /// 0 (the default): as many as the open-file limit allows, up to 3 files each.
        #[arg(long, env = "DURABLE_MAX_ACTIVE", default_value_t = 0)]
        max_active: usize,
        /// Close a connection that has not presented the token this many milliseconds
        /// after connecting.
        #[arg(long, env = "DURABLE_AUTH_TIMEOUT_MS", default_value_t = 5000)]
        auth_timeout_ms: u64,
        /// Most connections waiting to authenticate at once from one IP address.
        #[arg(long, env = "DURABLE_MAX_UNAUTHENTICATED_PER_IP", default_value_t = 64)]
        max_unauthenticated_per_ip: usize,
        /// Most calls in flight on the host; past it callers get Overloaded at once.
        #[arg(long, env = "DURABLE_MAX_INFLIGHT_CALLS", default_value_t = 100_000)]
        max_inflight_calls: usize,
        /// Most bytes of arguments held by calls in flight; past it callers get
        /// Overloaded at once.
        #[arg(long, env = "DURABLE_MAX_INFLIGHT_BYTES", default_value_t = 1 << 30)]
        max_inflight_bytes: usize,
        /// A rate each caller may sustain on one object, `PER_SECOND[:BURST]`; past
        /// it that caller gets Overloaded at once (default: no rate).
        #[arg(long, env = "DURABLE_CALLER_RATE")]
        caller_rate: Option<crate::admission::CallerRate>,
        /// Most WebSockets held open at once by the HTTP gateway.
        #[arg(long, env = "DURABLE_MAX_SOCKETS", default_value_t = crate::sockets::DEFAULT_MAX_SOCKETS)]
        max_sockets: usize,
        /// Seconds between the gateway's pings of each WebSocket (0: none); a socket
        /// that answers nothing for two intervals is closed.
        #[arg(long, env = "DURABLE_WS_PING_SECS", default_value_t = 30.0)]
        ws_ping_secs: f64,
        /// Most bytes one object's database may hold; a call that would take it past
        /// this is rolled back with ObjectTooLarge.
        #[arg(long, env = "DURABLE_MAX_OBJECT_BYTES", default_value_t = crate::host::DEFAULT_MAX_OBJECT_BYTES)]
        max_object_bytes: u64,
        /// Accept client certificates signed by the CA in this PEM file instead of the
        /// token (token clients still connect unless --require-client-cert). Not set:
        /// no client certificate is trusted, not even from the host's own dev CA.
        #[arg(long, env = "DURABLE_CLIENT_CA")]
        client_ca: Option<PathBuf>,
        /// Refuse every connection without a client certificate signed by the
        /// --client-ca (in the TLS handshake): the token alone no longer admits.
        #[arg(long, env = "DURABLE_REQUIRE_CLIENT_CERT")]
        require_client_cert: bool,
        /// Also serve the HTTP/JSON gateway on this TCP address (plain HTTP:
        /// loopback, or behind a TLS proxy). Calls are `POST
        /// /v1/objects/{class}/{name}/{method}` with `Authorization: Bearer TOKEN`;
        /// see docs/gateway.md. Off when not set.
        #[arg(long, env = "DURABLE_HTTP")]
        http: Option<SocketAddr>,
    },
    /// Sign a client certificate with the data directory's development CA
    /// (`tls/ca.key`), for hosts started with `--client-ca DATA_DIR/tls/ca.pem`.
    /// Writes PREFIX.pem (the certificate) and PREFIX.key (its key, mode 0600).
    ClientCert {
        /// The data directory whose CA signs.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
        /// The client's name (the certificate's common name; the host names the
        /// caller `cert:NAME`).
        #[arg(long)]
        name: String,
        /// Where to write: PREFIX.pem and PREFIX.key (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// Days the certificate is valid (the host cannot revoke one: keep it short
        /// and mint a new one before it expires).
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
    /// Print committed changes from the host log as JSON lines (lsn, time, class,
    /// object, table, op, old, new).
    Changes {
        /// The data directory.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
        /// Only changes with an lsn above this.
        #[arg(long, default_value_t = 0)]
        since: u64,
        /// Keep printing new changes as they are committed.
        #[arg(long)]
        follow: bool,
    },
    /// Restore one object of a stopped host to a bookmark (an lsn) or a UTC time.
    RestoreObject {
        /// The data directory.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
        /// The class.
        class: String,
        /// The object's name (or its 32-hex-digit id).
        name: String,
        /// A bookmark (a number) or a time like 2026-11-23T14:00:00Z.
        #[arg(long)]
        to: String,
    },
    /// Cut the host log of a stopped host at damage that keeps it from starting: the
    /// bytes after the damage (and later segments) are moved to
    /// `DATA_DIR/log/damaged-<time>/`, not applied; no lsn is ever reused.
    SalvageLog {
        /// The data directory.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// List the classes this binary serves: CLASS, METHOD, its schema fingerprint
    /// (16 hex digits) and the canonical signature it is computed over, tab-separated.
    Classes,
    /// Call a method of an object on a running host over QUIC, with the arguments as
    /// a JSON object by name (`'{"by": 5}'`). Prints the JSON result; on failure
    /// prints `{"error": {"kind", "message", "retry", ...}}` and exits 1.
    Call {
        /// The class.
        class: String,
        /// The object's name (or its 32-hex-digit id).
        name: String,
        /// The method.
        method: String,
        /// The arguments, a JSON object by name (default `{}`).
        #[arg(default_value = "{}")]
        args: String,
        /// The host's data directory, for its CA and token (`tls/ca.pem`, `tls/token`).
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// The host's QUIC address.
        #[arg(long, env = "DURABLE_CONNECT", default_value = "127.0.0.1:4433")]
        connect: SocketAddr,
        /// The CA certificate to trust (default: DATA_DIR/tls/ca.pem).
        #[arg(long, env = "DURABLE_CA")]
        ca: Option<PathBuf>,
        /// The file holding the client token (default: DATA_DIR/tls/token).
        #[arg(long, env = "DURABLE_TOKEN_FILE")]
        token_file: Option<PathBuf>,
        /// A client certificate (PEM) for hosts started with `--client-ca`.
        #[arg(long, env = "DURABLE_CERT", requires = "key")]
        cert: Option<PathBuf>,
        /// The client certificate's private key.
        #[arg(long, env = "DURABLE_KEY", requires = "cert")]
        key: Option<PathBuf>,
        /// Give up after this many milliseconds.
        #[arg(long, default_value_t = 30_000)]
        deadline_ms: u64,
        /// The call's request id (32 hex digits): the same id sent again is applied
        /// at most once (default: a new random id).
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Print a stored object's tables and key-value entries, read-only (safe while
    /// the host runs). Shows everything the host has acknowledged: a snapshot of the
    /// object's file brought forward, in memory, with the host log's batches past it;
    /// the first line says how many came from each.
    Inspect {
        /// The data directory.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
        /// The class.
        class: String,
        /// The object's name (or its 32-hex-digit id).
        name: String,
    },
    /// List a stored object's pending alarms, soonest first, and those that gave up
    /// (read-only, safe while the host runs).
    Alarms {
        /// The data directory.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
        /// The class.
        class: String,
        /// The object's name (or its 32-hex-digit id).
        name: String,
    },
    /// Copy every object of a data directory, consistently, while the host serves:
    /// each object as of the moment it is copied (its file and the host log's
    /// batches past it), with the catalog, alarm index and TLS material.
    Backup {
        /// The data directory.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
        /// Where to write the backup (a new or empty directory).
        #[arg(long)]
        to: PathBuf,
    },
    /// Fill a new (or empty) data directory from a backup made by `backup`.
    Restore {
        /// The backup.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to fill (new or empty).
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
    },
    /// List the objects stored in a data directory: class, id, name.
    Objects {
        /// The data directory.
        #[arg(long, env = "DURABLE_DATA_DIR")]
        data_dir: PathBuf,
    },
}

/// Run the host command line with the classes `configure` registers.
pub fn main(configure: impl FnOnce(Host) -> Host) -> ExitCode {
    run(std::env::args_os(), configure)
}

/// Like [`main`], with the arguments given (the first is the program name).
pub fn run<I, T>(args: I, configure: impl FnOnce(Host) -> Host) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colour codes only on a terminal, never in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            shards,
            net_threads,
            lanes,
            max_queue,
            max_frame,
            tls_names,
            durability,
            checkpoint_secs,
            retention_days,
            idle_timeout_secs,
            connection_idle_secs,
            max_active,
            auth_timeout_ms,
            max_unauthenticated_per_ip,
            max_inflight_calls,
            max_inflight_bytes,
            caller_rate,
            max_sockets,
            ws_ping_secs,
            max_object_bytes,
            client_ca,
            require_client_cert,
            http,
        } => {
            let client_ca = match client_ca.map(|path| {
                std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))
            }) {
                Some(Err(e)) => {
                    eprintln!("error: --client-ca {e}");
                    return ExitCode::FAILURE;
                }
                Some(Ok(pem)) => Some(pem),
                None => None,
            };
            let mut runtime = tokio::runtime::Builder::new_multi_thread();
            runtime.enable_all();
            // Without the flag, tokio's default: `TOKIO_WORKER_THREADS`, else one per CPU.
            if let Some(n) = net_threads {
                runtime.worker_threads(n.max(1));
            }
            let rt = match runtime.build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let mut host = configure(Host::builder(data_dir))
                    .listen(listen)
                    .with_limits(|l| {
                        l.max_queue = max_queue;
                        l.max_frame = max_frame;
                        l.idle_timeout = seconds(idle_timeout_secs);
                        l.connection_idle = seconds(connection_idle_secs);
                        l.max_active = max_active;
                        l.auth_timeout = Duration::from_millis(auth_timeout_ms.max(1));
                        l.max_unauthenticated_per_ip = max_unauthenticated_per_ip.max(1);
                        l.max_inflight_calls = max_inflight_calls.max(1);
                        l.max_inflight_bytes = max_inflight_bytes.max(1);
                        l.caller_rate = caller_rate;
                        l.max_sockets = max_sockets;
                        l.max_object_bytes = max_object_bytes.max(1);
                        l.ws_ping_interval = if ws_ping_secs.is_finite() && ws_ping_secs > 0.0 {
                            Duration::from_secs_f64(ws_ping_secs.min(86_400.0))
                        } else {
                            Duration::ZERO
                        };
                        if let Some(s) = shards {
                            l.shards = s;
                        }
                    });
                for name in tls_names {
                    host = host.tls_name(name);
                }
                if let Some(pem) = client_ca {
                    host = host.client_ca(pem);
                }
                host = host.require_client_cert(require_client_cert).lanes(lanes);
                if let Some(addr) = http {
                    host = host.http(addr);
                }
                host = host
                    .durability(if durability == "fsync" {
                        DurabilityMode::ObjectFsync
                    } else {
                        DurabilityMode::HostLog
                    })
                    .log_config(LogConfig {
                        checkpoint_interval: (checkpoint_secs > 0)
                            .then(|| Duration::from_secs(checkpoint_secs)),
                        retention: (retention_days > 0.0)
                            .then(|| seconds(retention_days * 86_400.0)),
                        ..LogConfig::default()
                    });
                let running = match host.start().await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                // The handlers are in place before anyone learns the address: a signal
                // sent right after "listening on" still shuts down gracefully.
                let signalled = match shutdown_signal() {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("error: installing signal handlers: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!("listening on {}", running.local_addr());
                if let Some(addr) = running.http_addr() {
                    println!("http listening on {addr}");
                }
                use std::io::Write;
                let _ = std::io::stdout().flush();
                signalled.await;
                tracing::info!("shutting down");
                running.shutdown().await;
                ExitCode::SUCCESS
            })
        }
        Command::Changes {
            data_dir,
            since,
            follow,
        } => changes(&data_dir, since, follow),
        Command::ClientCert {
            data_dir,
            name,
            out,
            days,
        } => {
            let written = crate::tls::mint_client_cert(&data_dir, &name, days)
                .and_then(|(cert, key)| crate::tls::write_client_cert(&out, &cert, &key));
            match written {
                Ok((cert, key)) => {
                    println!(
                        "wrote {} and {} (client {name:?}, signed by {})",
                        cert.display(),
                        key.display(),
                        data_dir.join("tls/ca.pem").display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::SalvageLog { data_dir } => {
            use crate::clock::Clock;
            match crate::log::recovery::salvage_log(&data_dir, crate::clock::SystemClock.now_ms()) {
                Ok(r) => {
                    match (&r.cut, &r.moved_to) {
                        (Some((segment, offset)), Some(aside)) => println!(
                            "cut {} at byte {offset}; {} intact records after the damage moved to {} (not applied); the next lsn is {}",
                            segment.display(),
                            r.moved_records,
                            aside.display(),
                            r.next_lsn
                        ),
                        _ => println!("no damage that recovery needs; nothing cut"),
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::RestoreObject {
            data_dir,
            class,
            name,
            to,
        } => {
            let target: RestoreTarget = match to.parse() {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("error: --to {e}");
                    return ExitCode::FAILURE;
                }
            };
            let id = name
                .parse()
                .unwrap_or_else(|_| ObjectId::from_name(&class, &name));
            match crate::restore::restore_object(&data_dir, &class, id, target) {
                Ok(report) => {
                    println!(
                        "restored {class} {id} to lsn {} (image at lsn {} + {} changesets)",
                        report.restored_to, report.from_image, report.changes_applied
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Classes => {
            for (class, methods) in configure(Host::builder(".")).describe() {
                for m in methods {
                    println!(
                        "{class}\t{}\t{:016x}\t{}",
                        m.name, m.fingerprint, m.signature
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Command::Call {
            class,
            name,
            method,
            args,
            data_dir,
            connect,
            ca,
            token_file,
            cert,
            key,
            deadline_ms,
            request_id,
        } => {
            let target = crate::ops::CallTarget {
                connect,
                data_dir,
                ca,
                token_file,
                cert,
                key,
                deadline: Duration::from_millis(deadline_ms.max(1)),
                request_id,
            };
            let host = configure(Host::builder("."));
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match rt.block_on(crate::ops::call(
                &host, &target, &class, &name, &method, &args,
            )) {
                Ok(value) => {
                    println!("{value}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    println!("{error}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Inspect {
            data_dir,
            class,
            name,
        } => print_or_fail(crate::ops::inspect(
            &data_dir,
            &class,
            crate::ops::object_id(&class, &name),
        )),
        Command::Alarms {
            data_dir,
            class,
            name,
        } => print_or_fail(crate::ops::alarms(
            &data_dir,
            &class,
            crate::ops::object_id(&class, &name),
        )),
        Command::Backup { data_dir, to } => {
            print_or_fail(crate::ops::backup(&data_dir, &to).map(|r| {
                format!(
                    "backed up {} objects to {} ({} batches from the host log)\n",
                    r.objects,
                    to.display(),
                    r.batches_from_log
                )
            }))
        }
        Command::Restore { from, data_dir } => {
            print_or_fail(crate::ops::restore(&from, &data_dir).map(|n| {
                format!(
                    "restored {n} objects into {}; start a host on it with `serve --data-dir`\n",
                    data_dir.display()
                )
            }))
        }
        Command::Objects { data_dir } => match crate::store::list_objects(&data_dir) {
            Ok(objects) => {
                for (class, id, name) in objects {
                    println!("{class}\t{id}\t{}", name.unwrap_or_default());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: reading {}: {e}", data_dir.display());
                ExitCode::FAILURE
            }
        },
    }
}

/// Print a command's output, or its error on stderr and fail.
fn print_or_fail(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn changes(data_dir: &std::path::Path, mut since: u64, follow: bool) -> ExitCode {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    loop {
        // Printed as read, a log segment at a time: memory does not grow with the log.
        let mut closed = false;
        let read = crate::feed::for_each_change(data_dir, since, |c| {
            let line = serde_json::to_string(&c).expect("changes serialize");
            closed = writeln!(out, "{line}").is_err();
            !closed
        });
        let last = match read {
            Ok(last) => last,
            Err(e) => {
                eprintln!("error: reading the log in {}: {e}", data_dir.display());
                return ExitCode::FAILURE;
            }
        };
        if closed {
            return ExitCode::SUCCESS;
        }
        let _ = out.flush();
        since = last;
        if !follow {
            return ExitCode::SUCCESS;
        }
        // Tailing files written by another process: poll.
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Install the SIGTERM and SIGINT handlers now; the future resolves at the first signal.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    })
}

/// A duration flag given in seconds, kept between 1 ms and 10^9 s (NaN reads as 1 ms:
/// `Duration::from_secs_f64` panics on NaN, infinities and negatives).
fn seconds(s: f64) -> Duration {
    Duration::from_secs_f64(if s.is_nan() {
        0.001
    } else {
        s.clamp(0.001, 1e9)
    })
}
