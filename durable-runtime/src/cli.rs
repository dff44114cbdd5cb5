//! The standard host command line: `serve` runs a host with the application's classes;
//! `objects` lists the objects stored in a data directory. An application's host binary
//! is one line: `durable::cli::main(|host| host.register::<MyClass>())`.

use crate::host::Host;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(about = "A durable objects host", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve this binary's classes over QUIC until SIGINT or SIGTERM.
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
        /// Calls that may wait per object before callers get Overloaded.
        #[arg(long, env = "DURABLE_MAX_QUEUE", default_value_t = 1024)]
        max_queue: usize,
        /// Largest frame accepted, in bytes.
        #[arg(long, env = "DURABLE_MAX_FRAME", default_value_t = durable_client::wire::DEFAULT_MAX_FRAME)]
        max_frame: usize,
        /// Extra DNS name or IP for the generated certificate (repeatable).
        #[arg(long = "tls-name")]
        tls_names: Vec<String>,
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
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    match cli.command {
        Command::Serve {
            data_dir,
            listen,
            shards,
            max_queue,
            max_frame,
            tls_names,
        } => {
            let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                let mut host = configure(Host::builder(data_dir)).listen(listen).with_limits(|l| {
                    l.max_queue = max_queue;
                    l.max_frame = max_frame;
                    if let Some(s) = shards {
                        l.shards = s;
                    }
                });
                for name in tls_names {
                    host = host.tls_name(name);
                }
                let running = match host.start().await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                println!("listening on {}", running.local_addr());
                use std::io::Write;
                let _ = std::io::stdout().flush();
                wait_for_signal().await;
                tracing::info!("shutting down");
                running.shutdown().await;
                ExitCode::SUCCESS
            })
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

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
