//! The change feed: committed changes decoded from the host log (and its archive) as
//! row changes — lsn, time, class, object, table, operation, old and new values — for
//! streaming object state into another database. `host changes` prints them as JSON
//! lines; [`for_each_change`], [`read_changes`] and [`decode_record`] give the same to
//! code.

use crate::log::{self, LogRecord, RecordKind};
use durable_client::ObjectId;
use rusqlite::hooks::Action;
use rusqlite::session::ChangesetIter;
use rusqlite::types::ValueRef;
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One decoded change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RowChange {
    /// The log record's lsn.
    pub lsn: u64,
    /// When it was logged, milliseconds since the Unix epoch.
    pub time: u64,
    /// The object's class.
    pub class: String,
    /// The object's id.
    pub object: String,
    /// The table (`null` for `snapshot`).
    pub table: Option<String>,
    /// `insert`, `update`, `delete`, or `snapshot` (the object's whole state was
    /// replaced: a new object, or a schema change; re-read its tables).
    pub op: &'static str,
    /// Column values before (deletes; for updates the key and the changed columns).
    pub old: Option<Map<String, Value>>,
    /// Column values after (inserts; for updates the changed columns).
    pub new: Option<Map<String, Value>>,
}

/// Column names of object tables, looked up read-only in the object databases.
#[derive(Debug, Default)]
pub struct ColumnNames {
    data_dir: PathBuf,
    cache: HashMap<(String, ObjectId, String), Vec<String>>,
}

impl ColumnNames {
    /// Look names up under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        ColumnNames {
            data_dir: data_dir.to_owned(),
            cache: HashMap::new(),
        }
    }

    fn get(&mut self, class: &str, object: ObjectId, table: &str) -> Option<&Vec<String>> {
        let key = (class.to_string(), object, table.to_string());
        if !self.cache.contains_key(&key) {
            let path = crate::store::object_path(&self.data_dir, class, object);
            // From a copy: the host may have the file open (see `file_copy`).
            let conn = crate::file_copy::open_snapshot(&path).ok()?;
            let mut stmt = conn
                .prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")
                .ok()?;
            let names: Vec<String> = stmt
                .query_map([table], |r| r.get(0))
                .ok()?
                .collect::<Result<_, _>>()
                .ok()?;
            if names.is_empty() {
                return None;
            }
            self.cache.insert(key.clone(), names);
        }
        self.cache.get(&key)
    }
}

fn json(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Value::from(f),
        ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            serde_json::json!({ "blob": hex })
        }
    }
}

/// Tables the runtime keeps for itself (bookkeeping and alarms), left out of the feed;
/// `_durable_kv` holds user data and stays in.
fn internal_table(table: &str) -> bool {
    table.starts_with("_durable_") && table != "_durable_kv"
}

/// The defined values of a changeset row, by column name.
fn row_values(cols: &[String], get: impl Fn(usize) -> Option<Value>) -> Map<String, Value> {
    cols.iter()
        .enumerate()
        .filter_map(|(i, c)| get(i).map(|v| (c.clone(), v)))
        .collect()
}

/// Decode one log record into row changes.
pub fn decode_record(
    record: &LogRecord,
    names: &mut ColumnNames,
) -> Result<Vec<RowChange>, String> {
    let base = |table: Option<String>, op: &'static str| RowChange {
        lsn: record.lsn,
        time: record.time_ms,
        class: record.class.clone(),
        object: record.object.to_string(),
        table,
        op,
        old: None,
        new: None,
    };
    if record.kind == RecordKind::Image {
        return Ok(vec![base(None, "snapshot")]);
    }
    let mut out = Vec::new();
    let (changeset, _) = crate::store::decode_changes(&record.payload)?;
    let mut input: &[u8] = changeset;
    let reader: &mut dyn std::io::Read = &mut input;
    let mut iter = ChangesetIter::start_strm(&reader).map_err(|e| e.to_string())?;
    use fallible_streaming_iterator::FallibleStreamingIterator;
    while let Some(item) = iter.next().map_err(|e| e.to_string())? {
        let op = item.op().map_err(|e| e.to_string())?;
        let table = op.table_name().to_string();
        if internal_table(&table) {
            continue;
        }
        let n = op.number_of_columns() as usize;
        let (kind, has_old, has_new) = match op.code() {
            Action::SQLITE_INSERT => ("insert", false, true),
            Action::SQLITE_DELETE => ("delete", true, false),
            Action::SQLITE_UPDATE => ("update", true, true),
            _ => continue,
        };
        let cols: Vec<String> = match names.get(&record.class, record.object, &table) {
            Some(c) if c.len() == n => c.clone(),
            _ => (0..n).map(|i| format!("c{i}")).collect(),
        };
        let mut change = base(Some(table), kind);
        if has_old {
            change.old = Some(row_values(&cols, |i| item.old_value(i).ok().map(json)));
        }
        if has_new {
            change.new = Some(row_values(&cols, |i| item.new_value(i).ok().map(json)));
        }
        out.push(change);
    }
    Ok(out)
}

/// Every log record with lsn above `since` still kept (archive, then live log), in lsn
/// order, and the highest lsn read. Holds them all: for a long log, see
/// [`for_each_record`].
pub fn read_records(data_dir: &Path, since: u64) -> std::io::Result<(Vec<LogRecord>, u64)> {
    let mut out = Vec::new();
    let last = for_each_record(data_dir, since, |r| {
        out.push(r);
        true
    })?;
    Ok((out, last))
}

/// Hand every log record with lsn above `since` still kept (archive, then live log) to
/// `f`, in lsn order, one segment read at a time (a retained log can be far larger
/// than memory), until `f` returns false. Returns the highest lsn handed over (`since`
/// if none).
pub fn for_each_record(
    data_dir: &Path,
    since: u64,
    mut f: impl FnMut(LogRecord) -> bool,
) -> std::io::Result<u64> {
    // The live log before the archive: a segment a live host's checkpoint retires
    // meanwhile (a rename into the archive) is in one of the two lists, and read from
    // the archive if it moved after the listing.
    let archive = log::archive_dir(data_dir);
    let segments = log::history::retained_segments(data_dir)?;
    let mut last = since;
    for (i, (_, path)) in segments.iter().enumerate() {
        // Skip whole segments that end at or before `since`.
        if let Some((next_first, _)) = segments.get(i + 1) {
            if next_first.saturating_sub(1) <= since {
                continue;
            }
        }
        let read = match log::history::open_or_archived(path, &archive)
            .and_then(crate::record::read_segment_file)
        {
            Ok(r) => r,
            // Gone past retention since it was listed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for r in read.records {
            if r.lsn > since {
                last = last.max(r.lsn);
                if !f(r) {
                    return Ok(last);
                }
            }
        }
        if read.problem.is_some() {
            // A torn tail (or a record still being written): stop here.
            break;
        }
    }
    Ok(last)
}

/// Hand every decoded change with lsn above `since` to `f`, in order, a log segment at
/// a time, until `f` returns false; returns the highest lsn read. `host changes` prints
/// them this way: its memory does not grow with the log. A stop in the middle of a
/// record's changes still returns that record's lsn: resuming from it skips the rest of
/// that record.
pub fn for_each_change(
    data_dir: &Path,
    since: u64,
    mut f: impl FnMut(RowChange) -> bool,
) -> std::io::Result<u64> {
    let mut names = ColumnNames::new(data_dir);
    for_each_record(data_dir, since, |r| match decode_record(&r, &mut names) {
        Ok(changes) => changes.into_iter().all(&mut f),
        Err(e) => {
            tracing::warn!(lsn = r.lsn, error = %e, "undecodable changeset");
            true
        }
    })
}

/// Decoded changes with lsn above `since`, and the highest lsn read. Holds them all:
/// for a long log, see [`for_each_change`].
pub fn read_changes(data_dir: &Path, since: u64) -> std::io::Result<(Vec<RowChange>, u64)> {
    let mut out = Vec::new();
    let last = for_each_change(data_dir, since, |c| {
        out.push(c);
        true
    })?;
    Ok((out, last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_segment(dir: &Path, records: &[LogRecord]) {
        std::fs::create_dir_all(dir).unwrap();
        let name = log::segment_name(records[0].lsn);
        std::fs::write(dir.join(name), crate::record::encode_round(records)).unwrap();
    }

    /// A segment a checkpoint retires into the archive while the feed is being read
    /// (after the listing: a slow reader of `host changes --follow`) is read from the
    /// archive, not skipped.
    #[test]
    fn a_segment_retired_while_the_feed_is_read_is_read_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let record = |lsn: u64| LogRecord {
            lsn,
            time_ms: lsn,
            kind: RecordKind::Image,
            class: "C".into(),
            object: ObjectId::from_name("C", "a"),
            seq: lsn,
            payload: vec![1, 2, 3],
        };
        let (log_dir, archive) = (log::log_dir(dir.path()), log::archive_dir(dir.path()));
        write_segment(&archive, &[record(1), record(2)]);
        write_segment(&log_dir, &[record(3), record(4)]);
        write_segment(&log_dir, &[record(5)]);
        let mut seen = Vec::new();
        let last = for_each_record(dir.path(), 0, |r| {
            if r.lsn == 1 {
                let name = log::segment_name(3);
                std::fs::rename(log_dir.join(&name), archive.join(&name)).unwrap();
            }
            seen.push(r.lsn);
            true
        })
        .unwrap();
        assert_eq!(seen, vec![1, 2, 3, 4, 5]);
        assert_eq!(last, 5);
        // Stopped early: the lsn of the last record handed over.
        let last = for_each_record(dir.path(), 1, |r| r.lsn < 3).unwrap();
        assert_eq!(last, 3);
    }
}
