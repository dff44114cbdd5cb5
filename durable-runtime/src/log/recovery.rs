//! Recovery on start: read the log after the last checkpoint, cut a torn or corrupt
//! tail at the last good record, and replay each record into its object if the
//! object's stored batch number is behind. Start-up work is proportional to the log
//! since the last checkpoint, not to the number of objects.

use super::{
    list_segments, log_dir, read_checkpoint, read_segment, retire_segments, sync_object_files,
    write_checkpoint,
};
use super::{LogRecord, TailProblem};
use crate::error::HostError;
use crate::store;
use durable_client::ObjectId;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What recovery found and did.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The checkpoint lsn recovery started from.
    pub checkpoint: u64,
    /// Records after the checkpoint that were read.
    pub records: usize,
    /// Records applied to objects that were behind.
    pub applied: usize,
    /// Objects touched by replay.
    pub objects: usize,
    /// Which objects had records after the checkpoint: (class, id).
    pub replayed: Vec<(String, ObjectId)>,
    /// Their earliest alarm due times after replay, in the same order (for the index).
    pub(crate) replayed_due: Vec<Option<u64>>,
    /// The last good lsn (the next record gets this plus one).
    pub last_lsn: u64,
    /// A torn or corrupt tail that was cut: the segment, the byte offset kept, and why.
    pub cut: Option<(PathBuf, u64, TailProblem)>,
}

/// Replay the log into the objects under `data_dir`, then checkpoint.
pub(crate) fn recover(
    data_dir: &Path,
    retention: Option<Duration>,
    window: usize,
    now_ms: u64,
) -> Result<RecoveryReport, HostError> {
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| HostError::io(what.clone(), e)
    };
    let dir = log_dir(data_dir);
    crate::files::create_dirs(&dir).map_err(io("creating the log directory"))?;
    let checkpoint = read_checkpoint(data_dir).map_err(io("reading the checkpoint"))?;
    let mut report = RecoveryReport {
        checkpoint,
        last_lsn: checkpoint,
        ..Default::default()
    };
    let segments = list_segments(&dir).map_err(io("listing log segments"))?;
    let mut by_object: HashMap<(String, ObjectId), Vec<LogRecord>> = HashMap::new();
    let mut order: Vec<(String, ObjectId)> = Vec::new();
    for (i, (_, path)) in segments.iter().enumerate() {
        let read = read_segment(path).map_err(io("reading a log segment"))?;
        for record in read.records {
            report.last_lsn = report.last_lsn.max(record.lsn);
            if record.lsn <= checkpoint {
                continue;
            }
            report.records += 1;
            let key = (record.class.clone(), record.object);
            let list = by_object.entry(key.clone()).or_default();
            if list.is_empty() {
                order.push(key);
            }
            list.push(record);
        }
        if let Some(problem) = read.problem {
            if i + 1 < segments.len() {
                // Damage before the newest segment is not a torn tail: applying what
                // follows would skip records. Refuse to start rather than guess.
                return Err(HostError::Config(format!(
                    "log segment {} is damaged at byte {} ({problem}) and later segments exist; \
                     the records after it cannot be applied safely. Keep a copy of the data \
                     directory and truncate or remove the damaged segment by hand",
                    path.display(),
                    read.good_len
                )));
            }
            // A torn tail of the newest segment: never apply anything past the last good
            // record; cut it there.
            tracing::warn!(segment = %path.display(), offset = read.good_len, %problem, "log tail cut at the last good record");
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(io("opening a torn segment"))?;
            f.set_len(read.good_len)
                .and_then(|_| f.sync_all())
                .map_err(io("cutting a torn segment"))?;
            report.cut = Some((path.clone(), read.good_len, problem));
            break;
        }
    }
    for key in &order {
        let records = &by_object[key];
        let path = store::object_path(data_dir, &key.0, key.1);
        let (applied, due) = store::replay(&path, records, window).map_err(|e| {
            HostError::Config(format!("replaying the log into {}: {e}", path.display()))
        })?;
        report.applied += applied;
        report.replayed_due.push(due);
        sync_object_files(&path).map_err(io("syncing a replayed object"))?;
    }
    report.objects = order.len();
    report.replayed = order.clone();
    if report.records > 0 || report.cut.is_some() {
        write_checkpoint(data_dir, report.last_lsn).map_err(io("writing the checkpoint"))?;
    }
    retire_segments(data_dir, report.last_lsn, retention, now_ms)
        .map_err(io("retiring log segments"))?;
    if report.records > 0 || report.cut.is_some() {
        tracing::info!(
            checkpoint,
            records = report.records,
            applied = report.applied,
            objects = report.objects,
            last_lsn = report.last_lsn,
            "recovered from the host log"
        );
    }
    Ok(report)
}
