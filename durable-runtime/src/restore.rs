//! Point-in-time recovery of one object: rebuild its database as of a bookmark (an
//! lsn) or a moment, from the latest retained image at or before the target plus the
//! changesets after it, then install it as the object's new state — logged as an image
//! record with a batch number above every earlier one, so replay never undoes it.

use crate::clock::{Clock, SystemClock};
use crate::log;
use crate::store;
use durable_client::ObjectId;
use std::path::Path;

pub use crate::restore_target::RestoreTarget;

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreReport {
    /// The lsn of the image the restore started from.
    pub from_image: u64,
    /// Changesets applied on top of it.
    pub changes_applied: usize,
    /// The lsn of the last record included.
    pub restored_to: u64,
    /// The batch number the restored state was given.
    pub new_seq: u64,
}

/// Rebuild the object's database as of `target`; returns the image (its stored batch
/// number set to one above any the object ever had) and a report.
pub(crate) fn rebuild(
    data_dir: &Path,
    class: &str,
    id: ObjectId,
    target: RestoreTarget,
    current_seq: u64,
    window: usize,
) -> Result<(Vec<u8>, RestoreReport), String> {
    // Only where the object's records lie: the retained log can be far larger than
    // memory. They are read back a chunk at a time below.
    let (segments, mine) = log::history::object_history(data_dir, class, id)
        .map_err(|e| format!("reading the log: {e}"))?;
    let max_seq = mine
        .iter()
        .map(|r| r.seq)
        .max()
        .unwrap_or(0)
        .max(current_seq);
    let included = as_of(&mine, target);
    let to_apply = log::history::from_last_image(included)
        .ok_or("no image of the object at or before the target is retained (is retention on?)")?;
    if let Some((before, after)) = log::history::first_gap(to_apply) {
        return Err(format!(
            "the retained log lacks the object's batches {} to {} (a damaged or lost log segment, or batches made while the host ran without its log): restoring across them would build a state the object never had",
            before + 1,
            after - 1
        ));
    }
    // A directory of this restore's own: restores run concurrently, off the shards.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp_dir = scratch_dir(data_dir).join(format!("{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp_dir);
    let tmp = tmp_dir.join(format!("{id}.db"));
    let mut files = log::history::SegmentFiles::new(data_dir, &segments);
    log::history::replay_located(&tmp, &mut files, to_apply, window).map_err(|e| match e {
        log::history::ReplayError::Read(e) => format!("reading the log: {e}"),
        log::history::ReplayError::Apply(e) => e,
    })?;
    let new_seq = max_seq + 1;
    let image = {
        let mut conn =
            crate::wal_index::open(&tmp, Default::default()).map_err(|e| e.to_string())?;
        store::set_stored_seq(&conn, new_seq).map_err(|e| e.to_string())?;
        let data = conn.serialize("main").map_err(|e| e.to_string())?;
        data.to_vec()
    };
    let _ = std::fs::remove_dir_all(&tmp_dir);
    let report = RestoreReport {
        from_image: to_apply[0].lsn,
        changes_applied: to_apply.len() - 1,
        restored_to: to_apply.last().map(|r| r.lsn).unwrap_or(0),
        new_seq,
    };
    Ok((image, report))
}

/// The records (in lsn order) of the state at `target`: those before the first one
/// past it. For a moment, the first record stamped after it ends the state, even if
/// a later one (after the wall clock stepped back) is stamped before it.
fn as_of(located: &[log::history::Located], target: RestoreTarget) -> &[log::history::Located] {
    let n = located
        .iter()
        .take_while(|r| target.includes(r.lsn, r.time_ms))
        .count();
    &located[..n]
}

/// Where restores rebuild databases; whatever is left there from a crash is removed
/// when a host starts ([`clear_scratch`]).
pub(crate) fn scratch_dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("restore-tmp")
}

/// Remove what interrupted restores left behind (a host that holds the directory's
/// lock and has not started any restore yet).
pub(crate) fn clear_scratch(data_dir: &Path) {
    let _ = std::fs::remove_dir_all(scratch_dir(data_dir));
}

/// Record what a replay of the log changed, durably (see
/// [`crate::log::recovery::Publish`]): each replayed object's earliest alarm in the
/// alarm index (replay may have set or cancelled alarms the index has not seen), and
/// the object in the catalog; then both files are synced.
pub(crate) fn publish_replayed(
    data_dir: &Path,
    index: &crate::alarms::AlarmIndex,
    catalog: &crate::catalog::Catalog,
    replayed: &[(String, ObjectId)],
    due: &[Option<u64>],
) -> Result<(), crate::error::HostError> {
    use crate::error::HostError;
    for ((class, id), due) in replayed.iter().zip(due) {
        index.set(class, *id, *due)?;
        catalog
            .add(class, *id)
            .map_err(|e| HostError::Config(format!("updating the object catalog: {e}")))?;
    }
    crate::log::sync_object_files(&data_dir.join("alarms.db"))
        .map_err(|e| HostError::io("syncing the alarm index", e))?;
    crate::log::sync_object_files(&crate::catalog::catalog_path(data_dir))
        .map_err(|e| HostError::io("syncing the object catalog", e))
}

/// Restore one object of a stopped host (the CLI's `restore-object`). Fails if a host
/// holds the data directory's lock.
pub fn restore_object(
    data_dir: &Path,
    class: &str,
    id: ObjectId,
    target: RestoreTarget,
) -> Result<RestoreReport, String> {
    let _lock = crate::files::DirLock::acquire(data_dir).map_err(|e| {
        format!("{e}: stop the host first, or restore from code (Context::restore_to)")
    })?;
    // Bring the objects and the log to a clean state first (a crash may have left a
    // torn tail that must be cut before anything is appended).
    // (With the default retention: segments it retires are archived, not deleted.)
    // The objects it replays have their alarms indexed as a starting host's would.
    let index = crate::alarms::AlarmIndex::open(data_dir)
        .map_err(|e| format!("opening the alarm index: {e}"))?;
    let catalog = crate::catalog::Catalog::open(data_dir)
        .map_err(|e| format!("opening the object catalog: {e}"))?;
    let mut publish = |replayed: &[(String, ObjectId)], due: &[Option<u64>]| {
        publish_replayed(data_dir, &index, &catalog, replayed, due)
    };
    let recovered = crate::log::recovery::recover(
        data_dir,
        log::LogConfig::default().retention,
        store::DEFAULT_REQUEST_WINDOW,
        SystemClock.now_ms(),
        None,
        &mut publish,
    )
    .map_err(|e| format!("recovering the log first: {e}"))?;
    let path = store::object_path(data_dir, class, id);
    let current_seq = if path.exists() {
        let conn = crate::wal_index::open(&path, Default::default()).map_err(|e| e.to_string())?;
        store::stored_seq(&conn).map_err(|e| e.to_string())?
    } else {
        0
    };
    let (image, report) = rebuild(
        data_dir,
        class,
        id,
        target,
        current_seq,
        store::DEFAULT_REQUEST_WINDOW,
    )?;
    // Log the new state first, so that a crash before the file is replaced still ends
    // with the restored state after replay.
    // Recovery above left the log ending at its last good lsn.
    let lsn = recovered.last_lsn + 1;
    log::append_offline(
        data_dir,
        lsn,
        class,
        id,
        report.new_seq,
        &image,
        SystemClock.now_ms(),
    )
    .map_err(|e| e.to_string())?;
    store::write_image(&path, &image).map_err(|e| e.to_string())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::history::Located;
    use crate::log::RecordKind;

    #[test]
    fn the_state_at_a_moment_ends_at_the_first_record_past_it() {
        let at = |lsn: u64, time_ms: u64| Located {
            segment: 0,
            offset: 0,
            len: 0,
            kind: RecordKind::Changes,
            seq: lsn,
            lsn,
            time_ms,
        };
        // The wall clock stepped back between lsns 6 and 7.
        let history = [at(4, 70), at(5, 80), at(6, 100), at(7, 90), at(8, 120)];
        let lsns = |r: &[Located]| r.iter().map(|r| r.lsn).collect::<Vec<_>>();
        assert_eq!(lsns(as_of(&history, RestoreTarget::Time(95))), vec![4, 5]);
        assert_eq!(
            lsns(as_of(&history, RestoreTarget::Time(100))),
            vec![4, 5, 6, 7]
        );
        assert_eq!(
            lsns(as_of(&history, RestoreTarget::Bookmark(6))),
            vec![4, 5, 6]
        );
        assert!(as_of(&history, RestoreTarget::Time(10)).is_empty());
    }
}
