//! What an operator runs against a data directory, beside `serve`: look inside an
//! object (`inspect`, `alarms`), copy every object while the host serves (`backup`)
//! and fill a new data directory from such a copy (`restore`), and call a method of
//! a running host from the shell (`call`). Every command here reads object files by
//! copying them (`file_copy`), which runs beside the host and never blocks it.

mod backup;
mod call;
mod inspect;

pub(crate) use backup::{backup, restore};
pub(crate) use call::{call, CallTarget};
pub(crate) use inspect::{alarms, inspect};

use durable_client::ObjectId;
use rusqlite::Connection;
use std::path::Path;

/// The id a command line names: 32 hex digits, or a name within the class.
pub(crate) fn object_id(class: &str, name: &str) -> ObjectId {
    name.parse()
        .unwrap_or_else(|_| ObjectId::from_name(class, name))
}

/// An object as its host has made it durable: a snapshot of its file (one read
/// transaction) brought forward, in memory, with the contiguous run of batches the
/// host log holds past it. Whole batches only: never half a turn.
pub(crate) struct Current {
    /// The object's database, in memory.
    pub(crate) conn: Connection,
    /// The batch number the file held.
    pub(crate) file_seq: u64,
    /// Batches applied from the host log on top of it.
    pub(crate) from_log: usize,
}

/// Read the object's current state (see [`Current`]).
pub(crate) fn current(data_dir: &Path, class: &str, id: ObjectId) -> Result<Current, String> {
    let path = crate::files::object_path(data_dir, class, id);
    if !path.exists() {
        return Err(format!(
            "no stored object {class} {id} in {}",
            data_dir.display()
        ));
    }
    let mut conn =
        crate::file_copy::open_snapshot(&path).map_err(|e| format!("reading {class} {id}: {e}"))?;
    let err = |e: String| format!("bringing {class} {id} forward from the host log: {e}");
    let file_seq = crate::store::stored_seq(&conn).map_err(|e| err(e.to_string()))?;
    let records = crate::log::object_records(data_dir, class, id, file_seq)
        .map_err(|e| err(e.to_string()))?;
    // A gap means a checkpoint retired batches past the snapshot meanwhile (the file
    // holds them now): keep the snapshot rather than skip a batch.
    let run = records
        .iter()
        .zip(file_seq + 1..)
        .take_while(|(r, seq)| r.seq == *seq)
        .count();
    if run > 0 {
        let tx = conn.transaction().map_err(|e| err(e.to_string()))?;
        for r in &records[..run] {
            crate::store::apply_record_in_txn(&tx, r, crate::store::DEFAULT_REQUEST_WINDOW)
                .map_err(err)?;
        }
        tx.commit().map_err(|e| err(e.to_string()))?;
    }
    Ok(Current {
        conn,
        file_seq,
        from_log: run,
    })
}

/// `ms` since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_civil_time() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(super::utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(super::utc(1_795_966_496_789), "2026-11-29T15:34:56.789Z");
    }
}
