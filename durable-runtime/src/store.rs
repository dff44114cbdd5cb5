//! Object database files: where they live under the data directory, how they are
//! opened (WAL, `synchronous=NORMAL`; durability comes from the durability
//! component), the runtime's own tables, and the record of recent request ids.

use crate::context::Context;
use durable_client::ObjectId;
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};

/// `DATA_DIR/objects/CLASS/ID.db`.
pub(crate) fn object_path(data_dir: &Path, class: &str, id: ObjectId) -> PathBuf {
    data_dir.join("objects").join(class).join(format!("{id}.db"))
}

/// fsync a directory so that entries created in it survive power loss.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _durable_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _durable_kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _durable_requests(seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, kind INTEGER NOT NULL, body BLOB NOT NULL);
";

/// Open (creating if needed) the database of one object and wrap it in a [`Context`].
pub(crate) fn open(data_dir: &Path, class: &'static str, id: ObjectId, name: Option<&str>) -> Result<Context, String> {
    let path = object_path(data_dir, class, id);
    let dir = path.parent().expect("object path has a parent");
    let fresh = !path.exists();
    if fresh {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let conn = Connection::open(&path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let setup = || -> rusqlite::Result<()> {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "cache_size", -512)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        conn.set_prepared_statement_cache_capacity(64);
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA)?;
        if fresh {
            tx.execute(
                "INSERT OR IGNORE INTO _durable_meta(key, value) VALUES ('class', ?1), ('id', ?2)",
                rusqlite::params![class, id.to_string()],
            )?;
        }
        if let Some(name) = name {
            tx.execute("INSERT OR IGNORE INTO _durable_meta(key, value) VALUES ('name', ?1)", [name])?;
        }
        tx.commit()
    };
    setup().map_err(|e| format!("preparing {}: {e}", path.display()))?;
    if fresh {
        // Make the new file's directory entries durable before anything is acknowledged.
        conn.execute_batch("PRAGMA wal_checkpoint(FULL)")
            .map_err(|e| format!("checkpointing {}: {e}", path.display()))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .and_then(|_| sync_dir(dir))
            .and_then(|_| sync_dir(dir.parent().unwrap()))
            .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    }
    let stored_name: Option<String> = conn
        .query_row("SELECT value FROM _durable_meta WHERE key = 'name'", [], |r| r.get(0))
        .optional()
        .map_err(|e| e.to_string())?;
    Ok(Context {
        conn,
        class,
        id,
        name: stored_name,
    })
}

/// A recorded outcome of an earlier call with the same request id.
pub(crate) enum Recorded {
    Return(Vec<u8>),
    AppError(Vec<u8>),
}

pub(crate) fn lookup_request(conn: &Connection, id: &[u8; 16]) -> rusqlite::Result<Option<Recorded>> {
    conn.prepare_cached("SELECT kind, body FROM _durable_requests WHERE id = ?1")?
        .query_row([&id[..]], |r| {
            let kind: i64 = r.get(0)?;
            let body: Vec<u8> = r.get(1)?;
            Ok(if kind == 0 {
                Recorded::Return(body)
            } else {
                Recorded::AppError(body)
            })
        })
        .optional()
}

/// Record a call's outcome; every 64 records, drop those older than `window`.
pub(crate) fn record_request(conn: &Connection, id: &[u8; 16], outcome: &Recorded, window: usize) -> rusqlite::Result<()> {
    let (kind, body) = match outcome {
        Recorded::Return(b) => (0i64, b),
        Recorded::AppError(b) => (1i64, b),
    };
    conn.prepare_cached("INSERT INTO _durable_requests(id, kind, body) VALUES (?1, ?2, ?3)")?
        .execute(rusqlite::params![&id[..], kind, body])?;
    let seq = conn.last_insert_rowid();
    if seq % 64 == 0 {
        conn.prepare_cached("DELETE FROM _durable_requests WHERE seq <= ?1")?
            .execute([seq - window as i64])?;
    }
    Ok(())
}

/// Objects stored under a data directory: (class, id, name).
pub fn list_objects(data_dir: &Path) -> std::io::Result<Vec<(String, ObjectId, Option<String>)>> {
    let mut out = Vec::new();
    let root = data_dir.join("objects");
    if !root.exists() {
        return Ok(out);
    }
    for class in std::fs::read_dir(&root)? {
        let class = class?;
        let class_name = class.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(class.path())? {
            let f = f?.path();
            if f.extension().and_then(|e| e.to_str()) != Some("db") {
                continue;
            }
            let Some(id) = f.file_stem().and_then(|s| s.to_str()).and_then(|s| s.parse().ok()) else {
                continue;
            };
            let name = Connection::open_with_flags(&f, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .ok()
                .and_then(|c| {
                    c.query_row("SELECT value FROM _durable_meta WHERE key = 'name'", [], |r| r.get(0))
                        .optional()
                        .ok()
                        .flatten()
                });
            out.push((class_name.clone(), id, name));
        }
    }
    out.sort();
    Ok(out)
}
