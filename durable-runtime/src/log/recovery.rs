//! Recovery on start: read the log after the last checkpoint, cut a torn or corrupt
//! tail at the last good record, and replay each record into its object if the
//! object's stored batch number is behind. Start-up work is proportional to the log
//! since the last checkpoint, not to the number of objects.

use super::history::{Located, ReplayError, SegmentFiles, Segments};
use super::{
    list_segments, log_dir, read_checkpoint, retire_segments, sync_object_files, write_checkpoint,
};
use super::{RecordKind, TailProblem};
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
    /// Damaged segments wholly before the checkpoint (reported, not needed).
    pub damaged_unneeded: Vec<(PathBuf, u64, TailProblem)>,
    /// Objects whose file is missing and that no retained image can rebuild (also in
    /// `replayed`): they stay missing and are refused until an operator restores them.
    pub unrecoverable: Vec<(String, ObjectId)>,
}

/// Where the object's records from its latest retained image on lie (archive, then
/// the live log), or `None` if no image of it is retained (see
/// [`super::history::object_history`]).
fn from_latest_image(
    data_dir: &Path,
    class: &str,
    id: ObjectId,
) -> std::io::Result<Option<(Segments, Vec<Located>)>> {
    let (segments, mine) = super::history::object_history(data_dir, class, id)?;
    Ok(super::history::from_last_image(&mine).map(|from| (segments, from.to_vec())))
}

/// `DATA_DIR/log/lsn-floor`: the highest lsn a salvage moved aside (0 if none).
fn lsn_floor_path(data_dir: &Path) -> PathBuf {
    log_dir(data_dir).join("lsn-floor")
}

fn read_lsn_floor(data_dir: &Path) -> std::io::Result<u64> {
    match std::fs::read_to_string(lsn_floor_path(data_dir)) {
        // Garbage here must not read as 0: the lsns it holds back may have been
        // published (the records salvage moved aside), and must never be reused.
        Ok(s) => s.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "bad lsn floor file {:?} (log/lsn-floor): fix or remove it by hand",
                    s.trim()
                ),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// What `salvage-log` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SalvageReport {
    /// The damaged segment and the offset it was cut at, if one was.
    pub(crate) cut: Option<(PathBuf, u64)>,
    /// Intact records found after the damage and moved aside (not applied).
    pub(crate) moved_records: usize,
    /// Where the bytes after the damage (and any later segments) were moved.
    pub(crate) moved_to: Option<PathBuf>,
    /// The next lsn the host will write.
    pub(crate) next_lsn: u64,
}

/// Cut the log of a stopped host at its first damage that recovery needs: the bytes
/// after it, and every later segment, go to `DATA_DIR/log/damaged-<time>/` (kept, not
/// applied), and the highest lsn among them becomes a floor so that no lsn is ever
/// written twice. The host then starts with what precedes the damage.
pub(crate) fn salvage_log(data_dir: &Path, now_ms: u64) -> Result<SalvageReport, String> {
    let _lock = crate::files::DirLock::acquire(data_dir)
        .map_err(|e| format!("{e}: stop the host first"))?;
    let dir = log_dir(data_dir);
    let checkpoint = read_checkpoint(data_dir).map_err(|e| e.to_string())?;
    let segments = list_segments(&dir).map_err(|e| e.to_string())?;
    let mut floor = read_lsn_floor(data_dir).map_err(|e| e.to_string())?;
    let mut last_good = checkpoint;
    for (i, (_, path)) in segments.iter().enumerate() {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let read = crate::record::parse_segment(&bytes);
        if let Some(l) = read.records.last() {
            last_good = last_good.max(l.lsn);
        }
        let needed = if i + 1 == segments.len() {
            read.records.last().is_some_and(|r| r.lsn > checkpoint)
                || read.valid_after.is_none_or(|(_, lsn)| lsn > checkpoint)
        } else {
            segments[i + 1].0 > checkpoint + 1
        };
        if read.problem.is_none() || !needed {
            continue;
        }
        let aside = dir.join(format!("damaged-{now_ms}"));
        crate::files::create_dirs(&aside).map_err(|e| e.to_string())?;
        let cut_at = read.good_len as usize;
        let name = path.file_name().expect("segment file name");
        std::fs::write(aside.join(name), &bytes[cut_at..]).map_err(|e| e.to_string())?;
        let mut moved = crate::record::intact_lsns(&bytes[cut_at..]);
        for (_, later) in &segments[i + 1..] {
            let later_bytes = std::fs::read(later).map_err(|e| e.to_string())?;
            moved.extend(crate::record::intact_lsns(&later_bytes));
            std::fs::rename(later, aside.join(later.file_name().expect("name")))
                .map_err(|e| e.to_string())?;
        }
        floor = floor.max(moved.iter().copied().max().unwrap_or(0));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| e.to_string())?;
        f.set_len(cut_at as u64)
            .and_then(|_| f.sync_all())
            .map_err(|e| e.to_string())?;
        let floor_path = lsn_floor_path(data_dir);
        let tmp = floor_path.with_extension("tmp");
        crate::files::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| {
                use std::io::Write;
                f.write_all(floor.to_string().as_bytes())?;
                f.sync_all()
            })
            .and_then(|_| std::fs::rename(&tmp, &floor_path))
            .and_then(|_| crate::files::sync_dir(&dir))
            .map_err(|e| e.to_string())?;
        return Ok(SalvageReport {
            cut: Some((path.clone(), cut_at as u64)),
            moved_records: moved.len(),
            moved_to: Some(aside),
            next_lsn: last_good.max(floor) + 1,
        });
    }
    Ok(SalvageReport {
        cut: None,
        moved_records: 0,
        moved_to: None,
        next_lsn: last_good.max(floor) + 1,
    })
}

/// The digest recorded for an object: (batch number, content digest).
pub(crate) type DigestOf<'a> = &'a dyn Fn(&str, ObjectId) -> Option<(u64, u64)>;

/// Whether the object file at `path` is damaged: its batch number is below the one its
/// digest was recorded at (committed batches lost), or equal with other content, or
/// SQLite cannot read it. For a file whose log records have been replayed (or that has
/// none in the live log); before that, see [`damaged_before_replay`].
pub(crate) fn damaged(path: &Path, recorded: (u64, u64)) -> bool {
    damaged_before_replay(path, recorded, &[])
}

/// [`damaged`] for a file about to have its live log `records` replayed: a file behind
/// its digest by batches those records hold is not damaged. That is how a power cut
/// leaves an object that went quiet (its digest recorded) after its file's last sync:
/// the file's commits are synced only at checkpoints, and the log holds every batch
/// since. Replay brings them back, and the object's first activation checks the digest
/// again.
pub(crate) fn damaged_before_replay(
    path: &Path,
    recorded: (u64, u64),
    records: &[(RecordKind, u64)],
) -> bool {
    let read = || -> rusqlite::Result<(u64, u64)> {
        let conn = crate::wal_index::open(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        Ok((
            store::stored_seq(&conn)?,
            crate::catalog::content_digest(&conn)?,
        ))
    };
    match read() {
        // Behind the batch it held when its digest was recorded, by batches the log
        // does not hold: committed batches were lost, as when a damaged WAL frame makes
        // SQLite stop reading the WAL there. Or at that batch with other content.
        Ok((seq, _)) if seq < recorded.0 => !log_brings(records, seq, recorded.0),
        Ok((seq, digest)) => seq == recorded.0 && digest != recorded.1,
        // Only what SQLite reports as a damaged file counts: a passing error (too many
        // open files, a full disk, an I/O error) must not move a healthy file aside.
        Err(rusqlite::Error::SqliteFailure(e, _)) => matches!(
            e.code,
            rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase
        ),
        Err(_) => false,
    }
}

/// Whether replaying `records` (one object's kinds and batch numbers, in log order)
/// onto a file at batch `from` brings it to batch `to` or past it without a gap: an
/// image (it replaces the file), or the batch right after `from` and every one after
/// it up to `to`.
fn log_brings(records: &[(RecordKind, u64)], from: u64, to: u64) -> bool {
    let mut at = from;
    for &(kind, seq) in records {
        match kind {
            RecordKind::Image => at = at.max(seq),
            RecordKind::Changes if seq <= at => {}
            RecordKind::Changes if seq == at + 1 => at = seq,
            RecordKind::Changes => return false,
        }
        if at >= to {
            return true;
        }
    }
    false
}

/// [`super::history::replay_located`], its failures as the host's errors.
fn replay_located(
    path: &Path,
    files: &mut SegmentFiles<'_>,
    located: &[Located],
    window: usize,
) -> Result<(usize, Option<u64>), HostError> {
    super::history::replay_located(path, files, located, window).map_err(|e| match e {
        ReplayError::Read(e) => HostError::io("reading a log record again for replay", e),
        ReplayError::Apply(e) => {
            HostError::Config(format!("replaying the log into {}: {e}", path.display()))
        }
    })
}

/// Move a damaged object file (and its `-wal`, `-shm`) aside as `ID.db.damaged-<ms>`.
pub(crate) fn move_aside(path: &Path, now_ms: u64) {
    let aside = path.with_extension(format!("db.damaged-{now_ms}"));
    for suffix in ["", "-wal", "-shm"] {
        let mut from = path.as_os_str().to_owned();
        from.push(suffix);
        let mut to = aside.as_os_str().to_owned();
        to.push(suffix);
        let _ = std::fs::rename(&from, &to);
    }
}

/// What the host records about the objects a replay changed, durably, before the
/// checkpoint that drops their records from the log: given the objects replayed and
/// each one's earliest alarm due time after replay (for the alarm index). Recorded
/// after the checkpoint, a crash in between would leave them unrecorded for good: the
/// next start replays nothing of them.
pub(crate) type Publish<'a> =
    &'a mut dyn FnMut(&[(String, ObjectId)], &[Option<u64>]) -> Result<(), HostError>;

/// Replay the log into the objects under `data_dir`, hand what changed to `publish`,
/// then checkpoint. With `verify` (the last stop was unclean), each object the log
/// touches is first checked against its recorded digest; a damaged file is moved aside
/// and rebuilt from the archive.
pub(crate) fn recover(
    data_dir: &Path,
    retention: Option<Duration>,
    window: usize,
    now_ms: u64,
    verify: Option<DigestOf<'_>>,
    publish: Publish<'_>,
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
    let mut segments = list_segments(&dir).map_err(io("listing log segments"))?;
    // An empty segment (a rollover whose first write failed) holds nothing, and its
    // name would sort after the segment this start writes: remove it.
    let before = segments.len();
    segments.retain(|(_, path)| {
        let empty = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
        !(empty && std::fs::remove_file(path).is_ok())
    });
    if segments.len() != before {
        crate::files::sync_dir(&dir).map_err(io("syncing the log directory"))?;
    }
    // Where each object's records lie, not the records: the log past a checkpoint can
    // be far larger than memory (checkpoints halted by a failed sync let it grow).
    let mut by_object: HashMap<(String, ObjectId), Vec<Located>> = HashMap::new();
    let mut order: Vec<(String, ObjectId)> = Vec::new();
    for (i, (_, path)) in segments.iter().enumerate() {
        // Where the records lie (their payloads are read back at replay).
        let read = crate::record::read_segment_places(path).map_err(io("reading a log segment"))?;
        let last_read = read.records.last().map(|r| r.lsn);
        if read.problem.is_none() {
            // The zeros of a preallocated segment past its records (a host that was
            // killed leaves them): not needed, and they would be archived with it.
            if std::fs::metadata(path).is_ok_and(|m| m.len() > read.good_len) {
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(read.good_len));
            }
        }
        for (record, &(offset, len)) in read.records.into_iter().zip(&read.spans) {
            report.last_lsn = report.last_lsn.max(record.lsn);
            if record.lsn <= checkpoint {
                continue;
            }
            report.records += 1;
            let key = (record.class, record.object);
            let list = match by_object.get_mut(&key) {
                Some(list) => list,
                None => {
                    order.push(key.clone());
                    by_object.entry(key).or_default()
                }
            };
            list.push(Located {
                segment: i,
                offset,
                len,
                kind: record.kind,
                seq: record.seq,
                lsn: record.lsn,
                time_ms: record.time_ms,
            });
        }
        if let Some(problem) = read.problem {
            let newest = i + 1 == segments.len();
            // Segment i holds lsns below the next segment's first: it is needed only if
            // some of them are past the checkpoint. For the newest segment, judge by the
            // records on both sides of the damage.
            let needed = if newest {
                last_read.is_some_and(|lsn| lsn > checkpoint)
                    || read.valid_after.is_none_or(|(_, lsn)| lsn > checkpoint)
            } else {
                segments[i + 1].0 > checkpoint + 1
            };
            if !needed {
                tracing::warn!(segment = %path.display(), offset = read.good_len, %problem, "a log segment wholly before the checkpoint is damaged; recovery does not need it (point-in-time restores that reach into it may fail)");
                report
                    .damaged_unneeded
                    .push((path.clone(), read.good_len, problem));
                continue;
            }
            // In the newest segment, intact records after the damage that can only be
            // the rest of its last round were never acknowledged: a torn round.
            let torn_round = newest && read.torn_round;
            if let (Some((offset, lsn)), false) = (read.valid_after, torn_round) {
                return Err(HostError::Config(format!(
                    "log segment {} is damaged at byte {} ({problem}) but intact records follow \
                     (the next at byte {offset}, lsn {lsn}); starting would drop them. Keep a copy \
                     of the data directory, then run `salvage-log --data-dir DIR` to cut the log at \
                     the damage (the records after it are moved aside, not applied)",
                    path.display(),
                    read.good_len
                )));
            }
            if !newest {
                // Damage before the newest segment is not a torn tail: applying what
                // follows would skip records. Refuse to start rather than guess.
                return Err(HostError::Config(format!(
                    "log segment {} is damaged at byte {} ({problem}) and later segments exist; \
                     the records after it cannot be applied safely. Keep a copy of the data \
                     directory, then run `salvage-log --data-dir DIR` to cut the log at the \
                     damage (what follows is moved aside, not applied)",
                    path.display(),
                    read.good_len
                )));
            }
            // A torn tail of the newest segment: never apply anything past the last good
            // record; cut it there.
            if torn_round {
                tracing::warn!(segment = %path.display(), offset = read.good_len, %problem, "the log's last round is torn (a power cut while it was written; none of it was acknowledged): cut at the last good record");
            }
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
    // Lsns never repeat: a salvage leaves the highest lsn it moved aside.
    report.last_lsn = report
        .last_lsn
        .max(read_lsn_floor(data_dir).map_err(io("reading the lsn floor"))?);
    let mut files = SegmentFiles::new(data_dir, &segments);
    for key in &order {
        let located = &by_object[key];
        let steps: Vec<(RecordKind, u64)> = located.iter().map(|r| (r.kind, r.seq)).collect();
        let path = store::object_path(data_dir, &key.0, key.1);
        if let Some(recorded) = verify.and_then(|digest_of| digest_of(&key.0, key.1)) {
            if path.exists() && damaged_before_replay(&path, recorded, &steps) {
                tracing::error!(class = %key.0, id = %key.1, "the object's file is damaged; rebuilding it from the log archive");
                move_aside(&path, now_ms);
            }
        }
        if !path.exists()
            && steps
                .first()
                .is_some_and(|(kind, _)| *kind != RecordKind::Image)
        {
            // The object's file is gone (deleted, lost) and the live log holds only
            // changes for it: rebuild it from its latest retained image instead.
            match from_latest_image(data_dir, &key.0, key.1) {
                Ok(Some((_, located))) if super::history::first_gap(&located).is_some() => {
                    // Rebuilt across the gap, it would hold a state it never had: left
                    // missing, and refused, as below.
                    let (before, after) = super::history::first_gap(&located).unwrap_or_default();
                    tracing::error!(class = %key.0, id = %key.1, missing_from = before + 1, missing_to = after - 1, "the object's file is missing and the retained log lacks some of its batches since its latest image (a damaged or lost segment, or batches made while the host ran without its log); it is refused until an operator restores it");
                    report.unrecoverable.push(key.clone());
                    report.replayed_due.push(None);
                    continue;
                }
                Ok(Some((segments, located))) => {
                    tracing::error!(class = %key.0, id = %key.1, "the object's file is missing; rebuilding it from the log archive");
                    let mut files = SegmentFiles::new(data_dir, &segments);
                    let (applied, due) = replay_located(&path, &mut files, &located, window)?;
                    report.applied += applied;
                    report.replayed_due.push(due);
                    sync_object_files(&path).map_err(io("syncing a replayed object"))?;
                    continue;
                }
                Ok(None) => {
                    // Nothing to rebuild from: leave it missing. The catalog knows the
                    // object, so its activation refuses it rather than start it empty.
                    tracing::error!(class = %key.0, id = %key.1, "the object's file is missing and no image of it is retained; it is refused until an operator restores it");
                    report.unrecoverable.push(key.clone());
                    report.replayed_due.push(None);
                    continue;
                }
                Err(e) => return Err(HostError::io("reading the log archive", e)),
            }
        }
        let (applied, due) = replay_located(&path, &mut files, located, window)?;
        report.applied += applied;
        report.replayed_due.push(due);
        sync_object_files(&path).map_err(io("syncing a replayed object"))?;
    }
    drop(files);
    report.objects = order.len();
    report.replayed = order.clone();
    if !order.is_empty() {
        publish(&report.replayed, &report.replayed_due)?;
    }
    if report.records > 0 || report.cut.is_some() {
        write_checkpoint(data_dir, report.last_lsn).map_err(io("writing the checkpoint"))?;
    }
    // No writer runs yet: the newest segment is the one kept.
    retire_segments(data_dir, report.last_lsn, retention, now_ms, u64::MAX)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_lsn_floor_is_refused_not_read_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(log_dir(dir.path())).unwrap();
        assert_eq!(read_lsn_floor(dir.path()).unwrap(), 0, "no floor yet");
        std::fs::write(lsn_floor_path(dir.path()), "1234\n").unwrap();
        assert_eq!(read_lsn_floor(dir.path()).unwrap(), 1234);
        std::fs::write(lsn_floor_path(dir.path()), "12\u{0}x").unwrap();
        let e = read_lsn_floor(dir.path()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[test]
    fn the_log_brings_a_file_forward_only_without_a_gap() {
        let changes = |seqs: &[u64]| -> Vec<(RecordKind, u64)> {
            seqs.iter().map(|&s| (RecordKind::Changes, s)).collect()
        };
        // The batches right after the file's, up to the digest's (and past it).
        assert!(log_brings(&changes(&[4, 5, 6]), 3, 6));
        assert!(log_brings(&changes(&[2, 3, 4, 5, 6, 7]), 3, 6));
        // Short of the digest's batch, or with a gap after the file's.
        assert!(!log_brings(&changes(&[4, 5]), 3, 6));
        assert!(!log_brings(&changes(&[5, 6]), 3, 6));
        assert!(!log_brings(&[], 3, 6));
        // An image replaces the file: changes go on from it.
        let mut from_image = vec![(RecordKind::Image, 5)];
        from_image.extend(changes(&[6]));
        assert!(log_brings(&from_image, 1, 6));
    }
}
