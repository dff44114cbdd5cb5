//! The host's own SQLite databases (the alarm index, the object catalog): opened in
//! WAL mode, written by the shards on their way through a call, and checkpointed by a
//! thread of their own.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses 1,000 WAL pages,
//! on the committing thread: it syncs the WAL, copies the pages into the database and
//! syncs that (two `fsync`s, milliseconds here), while holding the database's mutex.
//! For these databases that thread is a shard, and the mutex is shared by every shard:
//! each automatic checkpoint stalled all of them (alarm turns due in those
//! milliseconds ran that much late). So the writer's connection never checkpoints
//! (`wal_autocheckpoint=0`); a background thread runs a passive checkpoint through a
//! connection of its own once a second (nothing to do is a no-op); closing the last
//! connection folds in the rest, as SQLite always does. Durability is unchanged: commits are
//! `synchronous=NORMAL` as before, and the host log's checkpoint syncs these files.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// How often the background thread checkpoints a host database's WAL.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// One of the host's databases: its writer connection, and the thread that
/// checkpoints it (stopped and joined on drop).
pub(crate) struct HostDb {
    conn: Mutex<Connection>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostDb {
    /// Open (creating it 0600 if needed) the database at `path` in WAL mode with
    /// `schema` applied; `what` names it in errors.
    pub(crate) fn open(path: &Path, what: &str, schema: &str) -> rusqlite::Result<HostDb> {
        crate::files::precreate_db(path)
            .map_err(|e| cannot_open(format!("creating {what}: {e}")))?;
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.execute_batch(schema)?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let thread = {
            let stop = stop.clone();
            let path = path.to_owned();
            let name = what.to_owned();
            std::thread::Builder::new()
                .name("durable-hostdb".into())
                .spawn(move || checkpoint_loop(path, name, stop))
                .map_err(|e| cannot_open(format!("starting the checkpoints of {what}: {e}")))?
        };
        Ok(HostDb {
            conn: Mutex::new(conn),
            stop,
            thread: Some(thread),
        })
    }

    /// The writer connection.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An open failure carrying `message`.
fn cannot_open(message: String) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
        Some(message),
    )
}

impl Drop for HostDb {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Passive checkpoints once a second through a connection of this thread's own.
fn checkpoint_loop(path: PathBuf, what: String, stop: Arc<(Mutex<bool>, Condvar)>) {
    let mut conn: Option<Connection> = None;
    let (flag, cv) = &*stop;
    let mut stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
    while !*stopped {
        stopped = cv
            .wait_timeout(stopped, CHECKPOINT_EVERY)
            .unwrap_or_else(|e| e.into_inner())
            .0;
        if *stopped {
            break;
        }
        drop(stopped);
        if conn.is_none() {
            conn = Connection::open(&path)
                .and_then(|c| c.pragma_update(None, "synchronous", "NORMAL").map(|_| c))
                .map_err(|e| tracing::warn!(error = %e, "opening {what} to checkpoint it"))
                .ok();
        }
        if let Some(c) = &conn {
            if let Err(e) = checkpoint(c) {
                tracing::warn!(error = %e, "checkpointing {what}");
            }
        }
        stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
    }
}

/// Copy what the WAL holds into the database, without waiting on its writer
/// (`synchronous=NORMAL`: the WAL is synced before, the database after).
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's commits never checkpoint; the background thread does, so the
    /// database file takes the rows without anyone closing the writer.
    #[test]
    fn the_background_thread_checkpoints_what_the_writer_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host.db");
        let db = HostDb::open(
            &path,
            "a test database",
            "CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)",
        )
        .unwrap();
        let autocheckpoint: i64 = db
            .lock()
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(
            autocheckpoint, 0,
            "the writer's connection must not checkpoint"
        );
        let before = std::fs::metadata(&path).unwrap().len();
        {
            let conn = db.lock();
            for k in 0..200 {
                conn.execute("INSERT INTO t(k, v) VALUES (?1, zeroblob(4000))", [k])
                    .unwrap();
            }
        }
        // The rows are in the WAL; the background thread copies them into the file.
        let deadline = crate::clock::monotonic() + Duration::from_secs(20);
        while std::fs::metadata(&path).unwrap().len() < before + 200 * 4000 {
            assert!(
                crate::clock::monotonic() < deadline,
                "the database file was never checkpointed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(db);
        let conn = Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 200);
    }
}
