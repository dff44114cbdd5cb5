//! `counter`: call Counter objects on a host through the typed stub.
//!
//! ```text
//! counter --connect ADDR --ca DIR/tls/ca.pem --token-file DIR/tls/token increment NAME [BY]
//! counter ... get NAME
//! counter ... bench --objects N --concurrency C --seconds S [--reads]
//! ```

use clap::{Parser, Subcommand};
use durable_examples::cli::{fail, ConnectArgs};
use durable_examples::counter::Counter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Call Counter objects on a durable host")]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Add BY (default 1) to the counter NAME and print the new value.
    Increment { name: String, by: Option<i64> },
    /// Print the value of the counter NAME.
    Get { name: String },
    /// Drive increments (with `--reads`: reads) with C calls in flight over N objects
    /// for S seconds.
    Bench {
        #[arg(long, default_value_t = 256)]
        objects: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Read the counters (`get`, a read-only call) instead of incrementing them,
        /// and print the calls' latency percentiles.
        #[arg(long)]
        reads: bool,
    },
}

// One thread for the calls and the client's I/O: with a worker per CPU, the pipe's
// tasks and the callers wake each other across threads, which doubled the client's
// CPU per call on two vCPUs (docs/clients.md).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    let client = cli.connect.client().await;
    match cli.command {
        Command::Increment { name, by } => match client
            .get::<Counter>(&name)
            .increment(by.unwrap_or(1))
            .await
        {
            Ok(v) => println!("{v}"),
            Err(e) => fail(e),
        },
        Command::Get { name } => match client.get::<Counter>(&name).get().await {
            Ok(v) => println!("{v}"),
            Err(e) => fail(e),
        },
        Command::Bench {
            objects,
            concurrency,
            seconds,
            reads,
        } => {
            let (objects, concurrency) = (objects.max(1), concurrency.max(1));
            if reads {
                read_bench(client, objects, concurrency, seconds).await
            } else {
                bench(client, objects, concurrency, seconds).await
            }
        }
    }
}

async fn bench(client: durable::Client, objects: usize, concurrency: usize, seconds: f64) {
    let run: u32 = rand::random();
    let names: Vec<String> = (0..objects)
        .map(|i| format!("bench-{run:08x}-{i}"))
        .collect();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..objects).map(|_| AtomicU64::new(0)).collect());
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..objects).map(|_| AtomicU64::new(0)).collect());
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let stubs: Vec<_> = names.iter().map(|n| client.get::<Counter>(n)).collect();
        let (sent, acked, errors) = (sent.clone(), acked.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = t;
            while Instant::now() < stop {
                let o = i % stubs.len();
                i += concurrency;
                sent[o].fetch_add(1, Ordering::Relaxed);
                match stubs[o].increment(1).await {
                    Ok(_) => drop(acked[o].fetch_add(1, Ordering::Relaxed)),
                    Err(_) => drop(errors.fetch_add(1, Ordering::Relaxed)),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = 0;
    for (o, name) in names.iter().enumerate() {
        let value = match client.get::<Counter>(name).get().await {
            Ok(v) => v as u64,
            Err(e) => fail(format!("reading {name}: {e}")),
        };
        let (lo, hi) = (
            acked[o].load(Ordering::Relaxed),
            sent[o].load(Ordering::Relaxed),
        );
        if value < lo || value > hi {
            fail(format!(
                "{name} holds {value}, outside acknowledged {lo} ..= sent {hi}"
            ));
        }
        total += lo;
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("{errors} calls failed");
    }
    println!(
        "increments={total} seconds={elapsed:.2} per_second={:.0}",
        total as f64 / elapsed
    );
}

/// Read `objects` counters (made first, one increment each) with `concurrency` calls in
/// flight for `seconds`; prints the reads per second and their latency percentiles.
async fn read_bench(client: durable::Client, objects: usize, concurrency: usize, seconds: f64) {
    let run: u32 = rand::random();
    let stubs: Arc<Vec<_>> = Arc::new(
        (0..objects)
            .map(|i| client.get::<Counter>(&format!("reads-{run:08x}-{i}")))
            .collect(),
    );
    for s in stubs.iter() {
        if let Err(e) = s.increment(1).await {
            fail(format!("making the counters: {e}"));
        }
    }
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::with_capacity(concurrency);
    for t in 0..concurrency {
        let stubs = stubs.clone();
        tasks.push(tokio::spawn(async move {
            let mut took = Vec::new();
            let mut i = t;
            while Instant::now() < stop {
                let begun = Instant::now();
                match stubs[i % stubs.len()].get().await {
                    Ok(_) => took.push(begun.elapsed().as_secs_f64() * 1e6),
                    Err(e) => fail(format!("a read failed: {e}")),
                }
                i += concurrency;
            }
            took
        }));
    }
    let mut took = Vec::new();
    for t in tasks {
        took.extend(t.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    took.sort_by(f64::total_cmp);
    let at = |q: f64| {
        took.get(((took.len() as f64 * q) as usize).min(took.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    println!(
        "reads={} seconds={elapsed:.2} per_second={:.0} p50_us={:.0} p99_us={:.0}",
        took.len(),
        took.len() as f64 / elapsed,
        at(0.5),
        at(0.99)
    );
}
