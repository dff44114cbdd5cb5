//! The `log_sync` probe: what one durable round of the host log costs on this disk,
//! written three ways.
//!
//! Appending a round to a file and syncing it also journals the file's new size.
//! Overwriting blocks a file already holds (a segment zero-filled ahead of time)
//! leaves no metadata to journal. A direct, synchronous write (`O_DIRECT | O_DSYNC`)
//! over such blocks skips the page cache and its writeback as well, and needs no
//! `fdatasync`. The patterns run alternately in one process, on the benchmark's own
//! directory, so the rows say what each step gains on this machine. The host log
//! does the last: a thread zero-fills its segments ahead of the writer, which writes
//! each round directly (buffered writes and `fdatasync` where the file system takes
//! no direct I/O or `DURABLE_LOG_DIRECT=0` says so; the direct rows are then left out).

use crate::Row;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// Bytes per round: about twenty increments' records.
const ROUND: usize = 2048;

/// Per-sync latencies and the thread's CPU time per sync, for one pattern.
#[derive(Default)]
struct Measured {
    latencies: Vec<Duration>,
    cpu: Duration,
    syncs: u32,
}

fn thread_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// How a trial writes its rounds.
#[derive(Clone, Copy)]
enum Pattern {
    /// Appended to a new file, each followed by `fdatasync`.
    Append,
    /// Written over a file zero-filled and synced first, each followed by `fdatasync`.
    Preallocated,
    /// Written over such a file by the host log's own direct writer (`O_DIRECT |
    /// O_DSYNC`: the last partial block again, then the round, in whole blocks; no
    /// `fdatasync`).
    Direct,
}

/// Room past the rounds for a direct write's last block.
const SLACK: usize = 2 * 4096;

/// `syncs` rounds written to a new file as `pattern` says.
fn trial(path: &Path, syncs: usize, pattern: Pattern, into: &mut Measured) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .append(matches!(pattern, Pattern::Append))
        .open(path)?;
    if !matches!(pattern, Pattern::Append) {
        let zeros = vec![0u8; 1 << 20];
        let mut left = syncs * ROUND + SLACK;
        while left > 0 {
            let n = left.min(zeros.len());
            file.write_all(&zeros[..n])?;
            left -= n;
        }
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
    }
    let mut direct = match pattern {
        Pattern::Direct => Some(
            durable_runtime::__bench::DirectAppender::open(path, &file, 0)?
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?,
        ),
        _ => None,
    };
    let round = vec![0x5a_u8; ROUND];
    let mut size = 0u64;
    let cpu = thread_cpu();
    for _ in 0..syncs {
        let started = Instant::now();
        match &mut direct {
            Some(d) => {
                d.append(size, &round)?;
                size += ROUND as u64;
            }
            None => {
                file.write_all(&round)?;
                file.sync_data()?;
            }
        }
        into.latencies.push(started.elapsed());
    }
    into.cpu += thread_cpu().saturating_sub(cpu);
    into.syncs += syncs as u32;
    drop(file);
    std::fs::remove_file(path)
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e6
}

/// The rows: median latency and CPU per sync, appending and direct writes against
/// preallocated.
pub(crate) fn log_sync(dir: &Path, quick: bool) -> Result<Vec<Row>, String> {
    let (syncs, trials) = if quick { (200, 2) } else { (2000, 3) };
    let path = dir.join("segment");
    let mut append = Measured::default();
    let mut zeroed = Measured::default();
    let mut direct = Measured::default();
    let mut direct_ok = true;
    for _ in 0..trials {
        trial(&path, syncs, Pattern::Append, &mut append)
            .map_err(|e| format!("append trial: {e}"))?;
        trial(&path, syncs, Pattern::Preallocated, &mut zeroed)
            .map_err(|e| format!("preallocated trial: {e}"))?;
        match trial(&path, syncs, Pattern::Direct, &mut direct) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                let _ = std::fs::remove_file(&path);
                direct_ok = false;
            }
            r => r.map_err(|e| format!("direct trial: {e}"))?,
        }
    }
    let against = "the same round, preallocated file";
    let cpu = |m: &Measured| m.cpu.as_secs_f64() * 1e6 / f64::from(m.syncs.max(1));
    let zeroed_p50 = median(&mut zeroed.latencies);
    let mut rows = vec![
        Row::lower(
            "log_sync",
            median(&mut append.latencies),
            "us median, append",
            Some(zeroed_p50),
            against,
        ),
        Row::lower(
            "log_sync",
            cpu(&append),
            "us CPU/sync, append",
            Some(cpu(&zeroed)),
            against,
        ),
    ];
    if !direct_ok {
        return Ok(rows);
    }
    rows.extend([
        Row::lower(
            "log_sync",
            median(&mut direct.latencies),
            "us median, direct",
            Some(zeroed_p50),
            against,
        ),
        Row::lower(
            "log_sync",
            cpu(&direct),
            "us CPU/sync, direct",
            Some(cpu(&zeroed)),
            against,
        ),
    ]);
    Ok(rows)
}
