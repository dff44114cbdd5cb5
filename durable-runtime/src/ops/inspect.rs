//! `host inspect` and `host alarms`: an object's tables, key-value entries and
//! pending alarms, read from its file while the host runs.

use super::utc;
use crate::tables::{has_table, Lazy};
use durable_client::ObjectId;
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use std::fmt::Write as _;
use std::path::Path;

/// Most rows printed per table (the rest are counted).
const MAX_ROWS: usize = 1000;

/// One SQLite value as a line of text: NULL, a number, a JSON string, or x'hex'.
fn render(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => {
            serde_json::Value::String(String::from_utf8_lossy(t).into_owned()).to_string()
        }
        ValueRef::Blob(b) => hex(b),
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(3 + 2 * b.len());
    s.push_str("x'");
    for byte in b {
        let _ = write!(s, "{byte:02x}");
    }
    s.push('\'');
    s
}

/// A key-value entry's value (postcard bytes): shown as text too when it is exactly
/// one postcard string (a varint length, then that many bytes of UTF-8).
fn render_kv(b: &[u8]) -> String {
    if let Ok((text, rest)) = postcard::take_from_bytes::<String>(b) {
        if rest.is_empty() {
            return format!("{} (text {})", hex(b), serde_json::Value::String(text));
        }
    }
    hex(b)
}

/// `host inspect`: print the object's identity, every table of its own (schema and
/// rows), and its key-value entries, as the host has made them durable (its file
/// brought forward with the host log: [`super::current`]).
pub(crate) fn inspect(data_dir: &Path, class: &str, id: ObjectId) -> Result<String, String> {
    let current = super::current(data_dir, class, id)?;
    let conn = &current.conn;
    let err = |e: rusqlite::Error| format!("reading {class} {id}: {e}");
    let tx = conn.unchecked_transaction().map_err(err)?;
    let mut out = String::new();
    let meta = |key: &str| -> Option<String> {
        tx.query_row(
            "SELECT CAST(value AS TEXT) FROM _durable_meta WHERE key = ?1",
            [key],
            |r| r.get(0),
        )
        .ok()
    };
    let _ = writeln!(
        out,
        "object {class} {id} name {} batch {} ({} in its file, {} from the host log)",
        meta("name")
            .map(|n| serde_json::Value::String(n).to_string())
            .unwrap_or_else(|| "-".into()),
        meta("log_seq").unwrap_or_else(|| "0".into()),
        current.file_seq,
        current.from_log
    );
    let tables: Vec<(String, String)> = {
        let mut stmt = tx
            .prepare(
                "SELECT name, sql FROM sqlite_schema WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_durable\\_%' ESCAPE '\\' \
                 ORDER BY name",
            )
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                ))
            })
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    for (table, sql) in &tables {
        let _ = writeln!(out, "\ntable {table}\n{sql}");
        print_rows(&tx, table, &mut out).map_err(err)?;
    }
    let entries: Vec<(String, Vec<u8>)> = if !has_table(&tx, Lazy::Kv).map_err(err)? {
        Vec::new()
    } else {
        let mut stmt = tx
            .prepare("SELECT key, value FROM _durable_kv ORDER BY key")
            .map_err(err)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(err)?;
        rows.collect::<Result<_, _>>().map_err(err)?
    };
    let _ = writeln!(out, "\nkey-value entries: {}", entries.len());
    for (key, value) in entries {
        let _ = writeln!(
            out,
            "{}\t{}",
            serde_json::Value::String(key),
            render_kv(&value)
        );
    }
    Ok(out)
}

fn print_rows(conn: &Connection, table: &str, out: &mut String) -> rusqlite::Result<()> {
    let quoted = format!("\"{}\"", table.replace('"', "\"\""));
    let mut stmt = conn.prepare(&format!("SELECT * FROM {quoted}"))?;
    let columns: Vec<String> = stmt.column_names().map(|c| c.to_string()).collect();
    let _ = writeln!(out, "{}", columns.join("\t"));
    let mut rows = stmt.query([])?;
    let mut n = 0usize;
    while let Some(row) = rows.next()? {
        n += 1;
        if n > MAX_ROWS {
            continue;
        }
        let cells: Vec<String> = (0..columns.len())
            .map(|i| row.get_ref(i).map(render))
            .collect::<Result<_, _>>()?;
        let _ = writeln!(out, "{}", cells.join("\t"));
    }
    let _ = writeln!(
        out,
        "({n} row{}{})",
        if n == 1 { "" } else { "s" },
        if n > MAX_ROWS {
            format!(", first {MAX_ROWS} shown")
        } else {
            String::new()
        }
    );
    Ok(())
}

/// One alarm line as read: name, key, a time in ms, a number, a text.
type AlarmRow = (String, String, i64, Option<i64>, Option<String>);

/// `host alarms`: one line per pending alarm, soonest first (name, key, due time,
/// repeat interval, attempts so far), then the alarms that gave up.
pub(crate) fn alarms(data_dir: &Path, class: &str, id: ObjectId) -> Result<String, String> {
    let current = super::current(data_dir, class, id)?;
    let err = |e: rusqlite::Error| format!("reading {class} {id}: {e}");
    let rows = |table: Lazy, sql: &str| -> rusqlite::Result<Vec<AlarmRow>> {
        if !has_table(&current.conn, table)? {
            return Ok(Vec::new());
        }
        let mut stmt = current.conn.prepare(sql)?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect()
    };
    let mut out = String::new();
    let _ = writeln!(out, "name\tkey\tdue\tevery_ms\tattempt");
    let pending = rows(
        Lazy::Alarms,
        "SELECT name, key, due_ms, every_ms, CAST(attempt AS TEXT) FROM _durable_alarms ORDER BY due_ms, name, key",
    )
    .map_err(err)?;
    for (name, key, due, every, attempt) in pending {
        let _ = writeln!(
            out,
            "{name}\t{}\t{}\t{}\t{}",
            serde_json::Value::String(key),
            utc(due.max(0) as u64),
            every.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            attempt.unwrap_or_default(),
        );
    }
    let failed = rows(
        Lazy::AlarmFailures,
        "SELECT name, key, failed_ms, attempts, error FROM _durable_alarm_failures ORDER BY failed_ms",
    )
    .map_err(err)?;
    if !failed.is_empty() {
        let _ = writeln!(
            out,
            "\nfailed alarms (gave up after their attempts): {}",
            failed.len()
        );
        for (name, key, at, attempts, error) in failed {
            let _ = writeln!(
                out,
                "{name}\t{}\t{} attempts\t{}\t{}",
                serde_json::Value::String(key),
                attempts.unwrap_or_default(),
                utc(at.max(0) as u64),
                serde_json::Value::String(error.unwrap_or_default())
            );
        }
    }
    Ok(out)
}
