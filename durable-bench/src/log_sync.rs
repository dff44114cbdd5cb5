//! The `log_sync` probe: what one `fdatasync` of the host log's pattern costs on this
//! disk, against the same write into a preallocated, zero-filled file.
//!
//! The host log appends each round to its segment and syncs it: every sync also
//! journals the file's new size. Overwriting blocks a file already holds (a segment
//! zero-filled ahead of time) leaves no metadata to journal. Both patterns run here
//! alternately in one process, on the benchmark's own directory, so the row says
//! what preallocated segments gain on this machine. (The host log preallocates its
//! segments: a thread zero-fills them ahead of the writer.)

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

/// `syncs` rounds appended to a new file (`preallocated`: written over a file
/// zero-filled and synced first), each followed by `fdatasync`.
fn trial(
    path: &Path,
    syncs: usize,
    preallocated: bool,
    into: &mut Measured,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    let mut file = File::options()
        .create_new(true)
        .write(true)
        .append(!preallocated)
        .open(path)?;
    if preallocated {
        let zeros = vec![0u8; 1 << 20];
        let mut left = syncs * ROUND + ROUND;
        while left > 0 {
            let n = left.min(zeros.len());
            file.write_all(&zeros[..n])?;
            left -= n;
        }
        file.sync_all()?;
        file.seek(SeekFrom::Start(0))?;
    }
    let round = vec![0x5a_u8; ROUND];
    let cpu = thread_cpu();
    for _ in 0..syncs {
        let started = Instant::now();
        file.write_all(&round)?;
        file.sync_data()?;
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

/// The rows: median latency and CPU per sync, appending against preallocated.
pub(crate) fn log_sync(dir: &Path, quick: bool) -> Result<Vec<Row>, String> {
    let (syncs, trials) = if quick { (200, 2) } else { (2000, 3) };
    let path = dir.join("segment");
    let (mut append, mut zeroed) = (Measured::default(), Measured::default());
    for _ in 0..trials {
        trial(&path, syncs, false, &mut append).map_err(|e| format!("append trial: {e}"))?;
        trial(&path, syncs, true, &mut zeroed).map_err(|e| format!("preallocated trial: {e}"))?;
    }
    let against = "the same round, preallocated file";
    let cpu = |m: &Measured| m.cpu.as_secs_f64() * 1e6 / f64::from(m.syncs.max(1));
    Ok(vec![
        Row::lower(
            "log_sync",
            median(&mut append.latencies),
            "us median, append",
            Some(median(&mut zeroed.latencies)),
            against,
        ),
        Row::lower(
            "log_sync",
            cpu(&append),
            "us CPU/sync, append",
            Some(cpu(&zeroed)),
            against,
        ),
    ])
}
