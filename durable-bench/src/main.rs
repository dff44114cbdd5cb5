//! `durable-bench`: durable's benchmark suite, side by side with the baselines a user
//! would otherwise pick, measured in one run on the same machine.
//!
//! ```text
//! cargo run --release -p durable-bench -- [SCENARIO...] [--quick] [--json FILE] [--load-threads N]
//! ```
//!
//! It starts what it needs itself: a real host process (this binary re-executed as
//! `__host`), Redis and PostgreSQL servers when installed, workerd when
//! `durable-bench/workerd/install.sh` has installed it, and a bare quinn echo server
//! (`__quinn-echo`), and a bare axum WebSocket fan-out server (`__ws-fanout`). Every row's ratio is > 1 when durable is better than the baseline.

mod baselines;
mod log_sync;
mod machine;
mod scenarios;

use clap::Parser;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

/// Every scenario, in run order.
pub const SCENARIOS: &[&str] = &[
    "increments_many",
    "increments_hot",
    "read_latency",
    "read_under_write",
    "activation",
    "alarm_lateness",
    "memory_idle",
    "startup_100k",
    "startup_1m",
    "increments_postgres",
    "http_call",
    "broadcast_1000",
    "memory_socket",
    "stream_resume",
    "log_sync",
];

#[derive(Parser, Debug)]
#[command(about = "durable's benchmark suite, side by side with its baselines")]
struct Args {
    /// Scenarios to run (default: all): increments_many, increments_hot, read_latency,
    /// read_under_write, activation, alarm_lateness, memory_idle, startup_100k, startup_1m,
    /// increments_postgres, http_call, broadcast_1000, memory_socket, stream_resume,
    /// log_sync.
    scenarios: Vec<String>,
    /// Short runs (under two minutes in all), for CI smoke use.
    #[arg(long)]
    quick: bool,
    /// Also write the rows as a JSON array to FILE.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Threads of the load generator (a tokio runtime), which drives durable and every
    /// baseline alike. The default, 2, is a multi-threaded runtime, as most applications
    /// run; 1 is a current-thread runtime, which spends about half the client CPU per
    /// call and so leaves more of a small machine to the servers. BENCHMARKS.md's tables
    /// use the default.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    load_threads: u16,
}

/// One figure of a scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The scenario id.
    pub scenario: String,
    /// durable's figure.
    pub value: f64,
    /// Its unit (and which statistic, for latencies).
    pub unit: String,
    /// The baseline's figure in the same unit, if one ran.
    pub baseline: Option<f64>,
    /// > 1 means better than the baseline (baseline/value for latencies and sizes).
    pub ratio: Option<f64>,
    /// What the baseline is (printed, not in the JSON).
    #[serde(skip)]
    pub against: String,
    /// The share of the machine's CPU time (%) the hypervisor gave to other guests
    /// while the scenario ran (`/proc/stat` steal); `None` where it cannot be read.
    pub stolen_pct: Option<f64>,
}

impl Row {
    /// A throughput-like row (higher is better).
    pub fn higher(
        scenario: &str,
        value: f64,
        unit: &str,
        baseline: Option<f64>,
        against: &str,
    ) -> Row {
        let ratio = baseline.filter(|b| *b > 0.0).map(|b| value / b);
        Row::new(scenario, value, unit, baseline, ratio, against)
    }

    /// A latency- or size-like row (lower is better).
    pub fn lower(
        scenario: &str,
        value: f64,
        unit: &str,
        baseline: Option<f64>,
        against: &str,
    ) -> Row {
        // No ratio against a perfect (zero) baseline or of a perfect value: 0x and
        // infinity say nothing a reader can compare.
        let ratio = baseline
            .filter(|b| value > 0.0 && *b > 0.0)
            .map(|b| b / value);
        Row::new(scenario, value, unit, baseline, ratio, against)
    }

    fn new(
        scenario: &str,
        value: f64,
        unit: &str,
        baseline: Option<f64>,
        ratio: Option<f64>,
        against: &str,
    ) -> Row {
        Row {
            scenario: scenario.into(),
            value,
            unit: unit.into(),
            baseline,
            ratio,
            against: against.into(),
            stolen_pct: None,
        }
    }
}

// The host runs as this binary (`__host`): the allocator a host should declare.
#[global_allocator]
static GLOBAL: durable::Allocator = durable::Allocator;

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    match raw.get(1).map(String::as_str) {
        Some("__host") => {
            let args = std::iter::once("host".to_string()).chain(raw[2..].iter().cloned());
            return durable::cli::run(args, durable_tests::register_all);
        }
        Some("__quinn-echo") => return baselines::quinn_echo_server(),
        Some("__ws-fanout") => return baselines::ws_fanout_server(),
        _ => {}
    }
    let args = Args::parse();
    let selected: Vec<&str> = if args.scenarios.is_empty() {
        SCENARIOS.to_vec()
    } else {
        let mut out = Vec::new();
        for s in &args.scenarios {
            match SCENARIOS.iter().find(|k| **k == s.as_str()) {
                Some(k) => out.push(*k),
                None => {
                    eprintln!(
                        "error: unknown scenario {s:?}; known: {}",
                        SCENARIOS.join(", ")
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        out
    };
    let rt = match args.load_threads {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.into())
            .enable_all()
            .build(),
    }
    .expect("tokio runtime");
    eprintln!("load generator: {} thread(s)", args.load_threads);
    let result = rt.block_on(scenarios::run_all(&selected, args.quick));
    let (rows, failures) = result;
    print_table(&rows);
    print_steal_warning(&rows);
    if rows.iter().any(|r| r.against == "workerd: not installed") {
        println!("{}", baselines::WORKERD_MISSING);
    }
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&rows).expect("rows serialize");
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("error: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        for (scenario, error) in &failures {
            eprintln!("error: scenario {scenario} failed: {error}");
        }
        ExitCode::FAILURE
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<20} {:>12} {:<14} {:>12}  {:<34} {:>7} {:>7}",
        "scenario", "value", "unit", "baseline", "baseline is", "ratio", "stolen"
    );
    for r in rows {
        println!(
            "{:<20} {:>12} {:<14} {:>12}  {:<34} {:>7} {:>7}",
            r.scenario,
            fmt(r.value),
            r.unit,
            r.baseline.map(fmt).unwrap_or_else(|| "-".into()),
            r.against,
            r.ratio
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into()),
            r.stolen_pct
                .map(|p| format!("{p:.1}%"))
                .unwrap_or_else(|| "-".into()),
        );
    }
}

/// Name the scenarios that ran while the hypervisor took much of the machine away.
fn print_steal_warning(rows: &[Row]) {
    let mut noisy: Vec<(&str, f64)> = Vec::new();
    for r in rows {
        if let Some(p) = r.stolen_pct.filter(|p| *p >= machine::STEAL_WARN_PCT) {
            if !noisy.iter().any(|(s, _)| *s == r.scenario) {
                noisy.push((&r.scenario, p));
            }
        }
    }
    if noisy.is_empty() {
        return;
    }
    let list: Vec<String> = noisy
        .iter()
        .map(|(s, p)| format!("{s} ({p:.1}%)"))
        .collect();
    println!(
        "note: the hypervisor gave other guests {:.0}% or more of this machine's CPU time during {}; \
         their tails and ratios say more about the neighbours than about durable: rerun them on a quiet machine",
        machine::STEAL_WARN_PCT,
        list.join(", ")
    );
}
