//! Prometheus metrics, served at `GET /metrics` on the HTTP address: what the host
//! does, by class, method and outcome. Recorded through the `metrics` crate into its
//! Prometheus recorder, installed once per process (an application that installed
//! its own recorder first keeps it: then `/metrics` says so). Every name starts with
//! `durable_`; `docs/operations.md` lists them.

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rustc_hash::FxHashMap;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// The handles of the metrics recorded on every call, per thread, by their labels
/// (`&'static str`s, keyed by address, hashed with FxHash: the keys are the runtime's
/// own): looking a metric up in the registry by name and labels on each call cost a
/// few percent of the host's CPU per call.
#[derive(Default)]
struct Handles {
    calls: FxHashMap<(usize, usize, usize), Counter>,
    /// The per-call histograms: this thread's bins (our recorder), or the
    /// application's recorder's handles.
    timings: FxHashMap<(usize, Timing), Timed>,
    batch_calls: Option<Histogram>,
    in_flight: Option<Gauge>,
}

/// A per-call histogram's handle on this thread.
enum Timed {
    Bins(Arc<Bins>),
    Recorder(Histogram),
}

impl Timed {
    fn record(&self, seconds: f64) {
        match self {
            Timed::Bins(bins) => bins.record(seconds),
            Timed::Recorder(h) => h.record(seconds),
        }
    }
}

/// The histograms recorded on every call or batch, by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Timing {
    Call,
    Turn,
    Queue,
    Batch,
    Gate,
}

impl Timing {
    const ALL: [Timing; 5] = [
        Timing::Call,
        Timing::Turn,
        Timing::Queue,
        Timing::Batch,
        Timing::Gate,
    ];

    fn name(self) -> &'static str {
        match self {
            Timing::Call => "durable_call_seconds",
            Timing::Turn => "durable_turn_seconds",
            Timing::Queue => "durable_call_queue_seconds",
            Timing::Batch => "durable_batch_seconds",
            Timing::Gate => "durable_gate_seconds",
        }
    }

    fn help(self) -> &'static str {
        match self {
            Timing::Call => "Time from a call's arrival to its answer (durability included), by class.",
            Timing::Turn => "Time a method ran (its turn, without the commit), by class.",
            Timing::Queue => "Time a call waited in its object's queue (from its arrival until its batch began), by class.",
            Timing::Batch => "Time a batch ran (its turns and its commit, until handed to the host log), by class.",
            Timing::Gate => "Time a committed batch's replies waited in the output gate for the host log to make it durable, by class.",
        }
    }
}

/// The bucket bounds of every histogram (seconds, or counts).
const BOUNDS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// One thread's counts of one per-call histogram (one class): written by that thread
/// only, summed over threads when `/metrics` is rendered. A sample costs a bucket
/// search and two plain stores; through the recorder it cost ~80 ns (an append to a
/// shared sample list folded later), about 1.5% of a hot object's shard per histogram.
struct Bins {
    timing: Timing,
    class: &'static str,
    /// Samples per bucket (not cumulative): `counts[i]` holds those at most
    /// `BOUNDS[i]` and above the bound before; the last, those above every bound.
    counts: [AtomicU64; BOUNDS.len() + 1],
    /// The samples' sum, as `f64` bits.
    sum: AtomicU64,
}

impl Bins {
    /// Only the owning thread records.
    fn record(&self, v: f64) {
        let count = &self.counts[BOUNDS.partition_point(|b| *b < v)];
        count.store(count.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        let sum = f64::from_bits(self.sum.load(Ordering::Relaxed)) + v;
        self.sum.store(sum.to_bits(), Ordering::Relaxed);
    }

    /// Add these counts and sum to `summed`.
    fn add_to(&self, (counts, sum): &mut Summed) {
        for (c, b) in counts.iter_mut().zip(&self.counts) {
            *c += b.load(Ordering::Relaxed);
        }
        *sum += f64::from_bits(self.sum.load(Ordering::Relaxed));
    }
}

/// The counts of one histogram and class: per bucket (not cumulative), and the sum.
type Summed = ([u64; BOUNDS.len() + 1], f64);

/// Every live thread's bins, and what threads that ended had counted (a thread's
/// bins are folded in here when it ends, so that threads that come and go do not
/// pile bins up).
struct AllBins {
    live: Vec<Arc<Bins>>,
    ended: std::collections::BTreeMap<(Timing, &'static str), Summed>,
}

static ALL_BINS: Mutex<AllBins> = Mutex::new(AllBins {
    live: Vec::new(),
    ended: std::collections::BTreeMap::new(),
});

fn all_bins() -> std::sync::MutexGuard<'static, AllBins> {
    ALL_BINS.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Handles {
    /// The thread ends: its counts move to the ended threads' totals.
    fn drop(&mut self) {
        let mut all = all_bins();
        for timed in self.timings.values() {
            if let Timed::Bins(bins) = timed {
                all.live.retain(|b| !Arc::ptr_eq(b, bins));
                bins.add_to(all.ended.entry((bins.timing, bins.class)).or_default());
            }
        }
    }
}

/// This thread's handle of `timing` for `class`.
fn timed<'h>(h: &'h mut Handles, timing: Timing, class: &'static str) -> &'h Timed {
    h.timings.entry((key(class), timing)).or_insert_with(|| {
        if handle().is_some() {
            let bins = Arc::new(Bins {
                timing,
                class,
                counts: Default::default(),
                sum: AtomicU64::new(0f64.to_bits()),
            });
            all_bins().live.push(bins.clone());
            Timed::Bins(bins)
        } else {
            Timed::Recorder(histogram!(timing.name(), "class" => class))
        }
    })
}

/// The per-call histograms, in the Prometheus text format, summed over threads.
fn render_bins(out: &mut String) {
    use std::fmt::Write;
    let summed = {
        let all = all_bins();
        let mut summed = all.ended.clone();
        for bins in &all.live {
            bins.add_to(summed.entry((bins.timing, bins.class)).or_default());
        }
        summed
    };
    for timing in Timing::ALL {
        let mut rows = summed
            .range((timing, "")..)
            .take_while(|((t, _), _)| *t == timing);
        let Some(first) = rows.next() else {
            continue;
        };
        let name = timing.name();
        let _ = writeln!(out, "# HELP {name} {}", timing.help());
        let _ = writeln!(out, "# TYPE {name} histogram");
        for ((_, class), (counts, sum)) in std::iter::once(first).chain(rows) {
            let class = class
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            let mut cumulative = 0;
            for (bound, count) in BOUNDS.iter().zip(counts) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{class=\"{class}\",le=\"{bound}\"}} {cumulative}"
                );
            }
            cumulative += counts[BOUNDS.len()];
            let _ = writeln!(
                out,
                "{name}_bucket{{class=\"{class}\",le=\"+Inf\"}} {cumulative}"
            );
            let _ = writeln!(out, "{name}_sum{{class=\"{class}\"}} {sum}");
            let _ = writeln!(out, "{name}_count{{class=\"{class}\"}} {cumulative}");
        }
        out.push('\n');
    }
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::default();
}

/// Run `f` on this thread's handles. A handle is made once a recorder is installed
/// (ours, or the application's): a handle made before would record nowhere.
fn with_handles(f: impl FnOnce(&mut Handles)) {
    let _ = handle();
    HANDLES.with(|h| f(&mut h.borrow_mut()));
}

fn key(s: &'static str) -> usize {
    s.as_ptr() as usize
}

/// The process's Prometheus handle, installing the recorder on first use; `None` if
/// another recorder was installed before.
pub(crate) fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&BOUNDS)
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            start_upkeep(handle.clone());
            Some(handle)
        })
        .as_ref()
}

/// How often the recorder's histograms are folded into their buckets.
const UPKEEP_EVERY: Duration = if cfg!(test) {
    Duration::from_millis(50)
} else {
    Duration::from_secs(1)
};

/// The recorder keeps every histogram sample (8 bytes and more each, three per call)
/// until something folds them into the buckets: a scrape of `/metrics`, or this
/// thread. Without it a host that nobody scraped grew by ~3.4 MB a second at 80,000
/// calls a second (`durable-bench increments_hot`, the host's RSS: 17 MB to 59 MB in
/// 10 s; with a fold every 5 s it stayed between 25 and 39 MB). If the thread cannot
/// start, scrapes still fold them; that is logged.
fn start_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new()
        .name("durable-metrics".into())
        .spawn(move || loop {
            std::thread::sleep(UPKEEP_EVERY);
            handle.run_upkeep();
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "could not start folding the metrics' histograms; only scrapes of /metrics will");
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "durable_calls_total",
        "Calls answered, by class, method and outcome."
    );
    for timing in Timing::ALL {
        describe_histogram!(timing.name(), Unit::Seconds, timing.help());
    }
    describe_histogram!(
        "durable_batch_calls",
        "Calls per batch (one commit, one log record)."
    );
    describe_counter!(
        "durable_log_syncs_total",
        "Durable rounds written to the host log."
    );
    describe_histogram!(
        "durable_log_sync_seconds",
        Unit::Seconds,
        "Time of one host log round (its write until it is durable)."
    );
    describe_histogram!(
        "durable_log_round_records",
        "Batches made durable by one host log sync."
    );
    describe_gauge!(
        "durable_objects_active",
        "Objects with an instance in memory."
    );
    describe_counter!(
        "durable_objects_evicted_total",
        "Objects evicted (idle or past the active cap)."
    );
    describe_gauge!(
        "durable_alarms_pending",
        "Objects with pending alarms (the host's due index)."
    );
    describe_gauge!(
        "durable_checkpoints_halted",
        "1 once a checkpoint's sync failed: checkpoints stop (the host log grows) until the host restarts."
    );
    describe_histogram!(
        "durable_alarm_lateness_seconds",
        Unit::Seconds,
        "How long after its due time an alarm turn started."
    );
    describe_counter!(
        "durable_new_object_files_total",
        "New objects' files, by how they were made: `class` (a spare set with the class's migrations applied ahead), `spare` (a plain spare set) or `created` (none was ready)."
    );
    describe_counter!(
        "durable_wal_compactions_total",
        "Closing objects' WALs (64 KiB or more) copied into their files, synced and truncated, so that the next activation need not index them."
    );
    describe_counter!(
        "durable_connections_total",
        "QUIC connections that authenticated, by endpoint: `address` (the host's `--listen` address) or `lane` (a shard's lane)."
    );
    describe_gauge!("durable_sockets_open", "WebSockets held by the gateway.");
    describe_gauge!(
        "durable_calls_in_flight",
        "Calls admitted and not yet answered."
    );
}

/// The `outcome` label of an answer: `ok`, `app_error`, or the framework error's name.
pub(crate) fn outcome(response: &durable_client::wire::Response) -> &'static str {
    use durable_client::wire::{Response, WireError};
    match response {
        Response::Return(_) | Response::Welcome | Response::Lanes(_) => "ok",
        Response::AppError(_) => "app_error",
        Response::Error(e) => match e {
            WireError::Unauthenticated => "unauthenticated",
            WireError::UnknownClass { .. } => "unknown_class",
            WireError::UnknownMethod { .. } => "unknown_method",
            WireError::SchemaMismatch { .. } => "schema_mismatch",
            WireError::Overloaded | WireError::OverloadedRetry { .. } => "overloaded",
            WireError::Timeout => "timeout",
            WireError::ObjectReset { .. } => "object_reset",
            WireError::TooLarge { .. } => "too_large",
            WireError::Malformed { .. } => "malformed",
            WireError::UnsupportedVersion { .. } => "unsupported_version",
            WireError::ShuttingDown => "shutting_down",
            WireError::BadArguments { .. } => "bad_arguments",
            WireError::Internal { .. } => "internal",
            WireError::Indeterminate { .. } => "indeterminate",
            WireError::Moved { .. } => "moved",
            WireError::StorageFull { .. } => "storage_full",
            WireError::RequestReused => "request_reused",
            WireError::CallCycle { .. } => "call_cycle",
            WireError::ObjectTooLarge { .. } => "object_too_large",
        },
    }
}

/// A call was answered with `outcome` after `took`.
pub(crate) fn call_answered(
    class: &'static str,
    method: &'static str,
    outcome: &'static str,
    took: Duration,
) {
    with_handles(|h| {
        h.calls
            .entry((key(class), key(method), key(outcome)))
            .or_insert_with(|| {
                counter!("durable_calls_total", "class" => class, "method" => method, "outcome" => outcome)
            })
            .increment(1);
        timed(h, Timing::Call, class).record(took.as_secs_f64());
    });
}

/// A method ran for `took`.
pub(crate) fn turn(class: &'static str, took: Duration) {
    with_handles(|h| timed(h, Timing::Turn, class).record(took.as_secs_f64()));
}

/// Where a call's time in its shard goes, stage by stage (see [`stage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Stage {
    /// From the call's arrival (its hand-off to the shard, or on a pipe the read that
    /// brought it) until the call's batch began.
    Queue,
    /// A batch running: its turns and its commit, until its record is handed to the
    /// host log.
    Batch,
    /// A committed batch's replies held in the output gate until the host log made
    /// the batch durable.
    Gate,
}

/// A call or batch spent `took` in `stage`.
pub(crate) fn stage(class: &'static str, stage: Stage, took: Duration) {
    stages(class, stage, [took]);
}

/// Calls or batches spent each of `took` in `stage` (one handle lookup for them all:
/// a batch's calls record their queue waits together).
pub(crate) fn stages(class: &'static str, stage: Stage, took: impl IntoIterator<Item = Duration>) {
    let timing = match stage {
        Stage::Queue => Timing::Queue,
        Stage::Batch => Timing::Batch,
        Stage::Gate => Timing::Gate,
    };
    with_handles(|h| {
        let histogram = timed(h, timing, class);
        for t in took {
            histogram.record(t.as_secs_f64());
        }
    });
}

/// A batch of `calls` calls was committed.
pub(crate) fn batch(calls: usize) {
    with_handles(|h| {
        h.batch_calls
            .get_or_insert_with(|| histogram!("durable_batch_calls"))
            .record(calls as f64);
    });
}

/// One host log round (its write until durable) of `records` records took `took`.
pub(crate) fn log_round(records: usize, took: Duration) {
    counter!("durable_log_syncs_total").increment(1);
    histogram!("durable_log_sync_seconds").record(took.as_secs_f64());
    histogram!("durable_log_round_records").record(records as f64);
}

/// A QUIC connection authenticated on `endpoint` (`address` or `lane`).
pub(crate) fn connection_authenticated(endpoint: &'static str) {
    counter!("durable_connections_total", "endpoint" => endpoint).increment(1);
}

/// An object became active (`+1`) or was closed (`-1`); `evicted` counts the latter
/// when it was an eviction.
pub(crate) fn object_active(delta: f64, evicted: bool) {
    gauge!("durable_objects_active").increment(delta);
    if evicted {
        counter!("durable_objects_evicted_total").increment(1);
    }
}

/// A new object's file was made: `made` is `class`, `spare` or `created` (see
/// `durable_new_object_files_total`).
pub(crate) fn new_object_file(made: &'static str) {
    counter!("durable_new_object_files_total", "made" => made).increment(1);
}

/// A closed object's WAL was copied into its file, synced and truncated (see
/// `durable_wal_compactions_total`).
pub(crate) fn wal_compacted() {
    counter!("durable_wal_compactions_total").increment(1);
}

/// Checkpoints stopped after a failed sync (see `log::Shared::halt`).
pub(crate) fn checkpoints_halted() {
    gauge!("durable_checkpoints_halted").set(1.0);
}

/// The due index holds `n` objects with pending alarms.
pub(crate) fn alarms_pending(n: usize) {
    gauge!("durable_alarms_pending").set(n as f64);
}

/// An alarm turn started `late` after its due time.
pub(crate) fn alarm_lateness(late: Duration) {
    histogram!("durable_alarm_lateness_seconds").record(late.as_secs_f64());
}

/// The gateway holds `n` WebSockets.
pub(crate) fn sockets_open(n: usize) {
    gauge!("durable_sockets_open").set(n as f64);
}

/// `n` calls are in flight.
pub(crate) fn calls_in_flight(n: usize) {
    with_handles(|h| {
        h.in_flight
            .get_or_insert_with(|| gauge!("durable_calls_in_flight"))
            .set(n as f64);
    });
}

/// The Prometheus text exposition of everything recorded in this process, with
/// SQLite's memory (every object's connections: page caches, schemas, statements)
/// read as it is rendered.
pub(crate) fn render() -> Option<String> {
    let handle = handle()?;
    let used = crate::sqlite_memory::sqlite_memory_used();
    gauge!("durable_sqlite_memory_bytes").set(used as f64);
    let mut text = handle.render();
    render_bins(&mut text);
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The process's resident memory (Linux), in bytes.
    fn rss_bytes() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap();
        kb * 1024
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix)?.strip_prefix(' '))
    }

    /// The per-call histograms are kept by each thread and summed when rendered, in
    /// the exposition format of the recorder's own histograms (cumulative buckets, a
    /// sample on a bound counted in that bound's bucket).
    #[test]
    fn per_call_histograms_sum_over_threads_as_prometheus_histograms() {
        assert!(handle().is_some(), "the runtime's recorder is installed");
        let class = "TelemetryTestClass";
        turn(class, Duration::from_micros(100));
        std::thread::spawn(move || {
            turn(class, Duration::from_millis(3));
            turn(class, Duration::from_secs(20));
            stage(class, Stage::Gate, Duration::from_millis(1));
        })
        .join()
        .unwrap();
        let text = render().unwrap();
        assert!(
            text.contains("# TYPE durable_turn_seconds histogram"),
            "{text}"
        );
        assert!(text.contains("# HELP durable_gate_seconds "), "{text}");
        let bucket = |le: &str| {
            line(
                &text,
                &format!("durable_turn_seconds_bucket{{class=\"{class}\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("0.0001"), Some("1"));
        assert_eq!(bucket("0.0025"), Some("1"));
        assert_eq!(bucket("0.005"), Some("2"));
        assert_eq!(bucket("10"), Some("2"));
        assert_eq!(bucket("+Inf"), Some("3"));
        let count = line(
            &text,
            &format!("durable_turn_seconds_count{{class=\"{class}\"}}"),
        );
        assert_eq!(count, Some("3"));
        let sum: f64 = line(
            &text,
            &format!("durable_turn_seconds_sum{{class=\"{class}\"}}"),
        )
        .unwrap()
        .parse()
        .unwrap();
        assert!((sum - 20.0031).abs() < 1e-9, "{sum}");
        let gate = line(
            &text,
            &format!("durable_gate_seconds_count{{class=\"{class}\"}}"),
        );
        assert_eq!(gate, Some("1"));
        // The thread that ended left its counts, not its bins.
        let live = |timing| {
            all_bins()
                .live
                .iter()
                .filter(|b| b.class == class && b.timing == timing)
                .count()
        };
        assert_eq!(live(Timing::Gate), 0);
        assert_eq!(live(Timing::Turn), 1);
    }

    /// Histogram samples that nobody scrapes are folded into their buckets, not kept:
    /// recording ten million of them (80 MB and more if kept) leaves the process about
    /// as large as before.
    #[cfg(target_os = "linux")]
    #[test]
    fn unscraped_histogram_samples_do_not_pile_up() {
        assert!(handle().is_some(), "the runtime's recorder is installed");
        let h = histogram!("durable_test_upkeep_seconds");
        for _ in 0..250_000 {
            h.record(0.001);
        }
        std::thread::sleep(UPKEEP_EVERY * 3);
        let before = rss_bytes();
        for _ in 0..40 {
            for _ in 0..250_000 {
                h.record(0.001);
            }
            std::thread::sleep(UPKEEP_EVERY * 2);
        }
        let grown = rss_bytes().saturating_sub(before);
        assert!(
            grown < 40 << 20,
            "RSS grew by {} MB over 10,000,000 unscraped samples",
            grown >> 20
        );
    }
}
