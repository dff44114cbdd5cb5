//! Point-in-time recovery of one object: rebuild its database as of a bookmark (an
//! lsn) or a moment, from the latest retained image at or before the target plus the
//! changesets after it, then install it as the object's new state — logged as an image
//! record with a batch number above every earlier one, so replay never undoes it.

use crate::log::{self, LogRecord, RecordKind};
use crate::store;
use durable_client::ObjectId;
use std::path::Path;

/// Where to restore an object to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The state after every record up to and including this lsn (a bookmark).
    Bookmark(u64),
    /// The state as of this moment, milliseconds since the Unix epoch.
    Time(u64),
}

impl RestoreTarget {
    fn includes(&self, r: &LogRecord) -> bool {
        match *self {
            RestoreTarget::Bookmark(lsn) => r.lsn <= lsn,
            RestoreTarget::Time(ms) => r.time_ms <= ms,
        }
    }
}

impl std::str::FromStr for RestoreTarget {
    type Err = String;
    /// A bookmark is a number (`1234`); a time is RFC 3339 in UTC
    /// (`2026-11-23T14:00:00Z`, fractional seconds allowed).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(lsn) = s.parse::<u64>() {
            return Ok(RestoreTarget::Bookmark(lsn));
        }
        parse_rfc3339_utc(s)
            .map(RestoreTarget::Time)
            .ok_or_else(|| format!("{s:?} is neither a bookmark (a number) nor a UTC time like 2026-11-23T14:00:00Z"))
    }
}

/// Milliseconds since the epoch of `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn parse_rfc3339_utc(s: &str) -> Option<u64> {
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':');
    let (hh, mm, ss): (i64, i64, i64) = (
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
        t.next()?.parse().ok()?,
    );
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let ms: i64 = format!("{frac:0<3}")[..3].parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let total = ((days * 24 + hh) * 60 + mm) * 60 + ss;
    u64::try_from(total * 1000 + ms).ok()
}

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
) -> Result<(Vec<u8>, RestoreReport), String> {
    let (records, _) =
        crate::feed::read_records(data_dir, 0).map_err(|e| format!("reading the log: {e}"))?;
    let mine: Vec<&LogRecord> = records
        .iter()
        .filter(|r| r.class == class && r.object == id)
        .collect();
    let max_seq = mine
        .iter()
        .map(|r| r.seq)
        .max()
        .unwrap_or(0)
        .max(current_seq);
    let included: Vec<&LogRecord> = mine
        .iter()
        .copied()
        .filter(|r| target.includes(r))
        .collect();
    let start = included
        .iter()
        .rposition(|r| r.kind == RecordKind::Image)
        .ok_or("no image of the object at or before the target is retained (is retention on?)")?;
    let tmp_dir = data_dir.join("restore-tmp");
    let _ = std::fs::remove_dir_all(&tmp_dir);
    let tmp = tmp_dir.join(format!("{id}.db"));
    let to_apply: Vec<LogRecord> = included[start..].iter().map(|r| (*r).clone()).collect();
    store::replay(&tmp, &to_apply, crate::Limits::default().request_window)?;
    let new_seq = max_seq + 1;
    let image = {
        let mut conn = rusqlite::Connection::open(&tmp).map_err(|e| e.to_string())?;
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

/// Restore one object of a stopped host (the CLI's `restore-object`). Fails if a host
/// holds the data directory's lock.
pub fn restore_object(
    data_dir: &Path,
    class: &str,
    id: ObjectId,
    target: RestoreTarget,
) -> Result<RestoreReport, String> {
    let _lock = crate::host::DirLock::acquire(data_dir).map_err(|e| {
        format!("{e}: stop the host first, or restore from code (Context::restore_to)")
    })?;
    // Bring the objects and the log to a clean state first (a crash may have left a
    // torn tail that must be cut before anything is appended).
    // (With the default retention: segments it retires are archived, not deleted.)
    let recovered = crate::log::recovery::recover(
        data_dir,
        crate::LogConfig::default().retention,
        crate::Limits::default().request_window,
    )
    .map_err(|e| format!("recovering the log first: {e}"))?;
    let path = store::object_path(data_dir, class, id);
    let current_seq = if path.exists() {
        let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
        store::stored_seq(&conn).map_err(|e| e.to_string())?
    } else {
        0
    };
    let (image, report) = rebuild(data_dir, class, id, target, current_seq)?;
    // Log the new state first, so that a crash before the file is replaced still ends
    // with the restored state after replay.
    // Recovery above left the log ending at its last good lsn.
    let lsn = recovered.last_lsn + 1;
    log::append_offline(data_dir, lsn, class, id, report.new_seq, &image)
        .map_err(|e| e.to_string())?;
    store::write_image(&path, &image).map_err(|e| e.to_string())?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        assert_eq!(
            "42".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Bookmark(42)
        );
        assert_eq!(
            "1970-01-01T00:00:01.5Z".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Time(1500)
        );
        assert_eq!(
            "2026-11-23T14:00:00Z".parse::<RestoreTarget>().unwrap(),
            RestoreTarget::Time(1_795_442_400_000)
        );
        assert!("yesterday".parse::<RestoreTarget>().is_err());
    }
}
