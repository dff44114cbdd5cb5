//! Reading an object's file from a process that is not its host (`host inspect`,
//! `alarms`, `backup`, `objects`, `changes`): by copying it, never by opening it.
//!
//! A running host keeps each open object file's WAL index in its own memory and locks
//! other processes out of the file ([`crate::wal_index`]); and a reader here must never
//! make the host wait. So the database and its WAL are copied into a private directory
//! and the copy is opened there (SQLite's recovery applies the copied WAL). The copy is
//! taken between two looks at both files: the database's inode, size and times, and
//! the WAL's header (its salts change whenever the WAL restarts). When neither moved,
//! the copy is whole: every page a concurrent checkpoint wrote into the database during
//! the copy is also in the copied WAL (which was not restarted), and frames appended
//! after the WAL's header was read end in a torn frame that recovery ignores. Without a
//! WAL, the database must read the same twice. Otherwise the copy is taken again.

use rusqlite::Connection;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How many times a copy is tried before giving up.
const ATTEMPTS: u32 = 200;

/// The file's identity and the moments it changed, as `stat` gives them.
fn stamp(path: &Path) -> std::io::Result<(u64, u64, i64, i64, i64, i64)> {
    let m = std::fs::metadata(path)?;
    Ok((
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// The first 32 bytes of the WAL (its header), if it has them.
fn wal_header(wal: &Path) -> Option<[u8; 32]> {
    let mut h = [0u8; 32];
    std::fs::File::open(wal).ok()?.read_exact(&mut h).ok()?;
    Some(h)
}

/// The database at `path` (an object's file) as its last commit left it, WAL applied,
/// serialized (`sqlite3_serialize`).
pub(crate) fn snapshot(path: &Path) -> Result<Vec<u8>, String> {
    let wal = crate::files::wal_path(path);
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(
                1 + u64::from(attempt / 20),
            ));
        }
        let before = (stamp(path).map_err(|e| e.to_string())?, wal_header(&wal));
        let db = std::fs::read(path).map_err(|e| e.to_string())?;
        let log = match std::fs::read(&wal) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        let after = (stamp(path).map_err(|e| e.to_string())?, wal_header(&wal));
        let copied_header = log.get(..32).map(|h| <[u8; 32]>::try_from(h).expect("32"));
        if before != after || before.1 != copied_header {
            continue;
        }
        // Without a WAL nothing covers a write to the database during the copy (a WAL
        // made, checkpointed and deleted meanwhile, inside the clock's granularity): the
        // database must read the same twice.
        if log.is_empty() && std::fs::read(path).map_err(|e| e.to_string())? != db {
            continue;
        }
        return materialize(&db, &log);
    }
    Err("the file kept changing under the copy; try again".into())
}

/// [`snapshot`] opened as an in-memory database (writable, the file untouched).
pub(crate) fn open_snapshot(path: &Path) -> Result<Connection, String> {
    let mut bytes = snapshot(path)?;
    if bytes.len() > 19 {
        // The in-memory VFS has no WAL: read the snapshot as a rollback-journal file.
        bytes[18] = 1;
        bytes[19] = 1;
    }
    let mut conn = Connection::open_in_memory().map_err(|e| e.to_string())?;
    conn.deserialize_read_exact("main", &bytes[..], bytes.len(), false)
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

/// The database `db` with the WAL `log` applied, through a copy in a new directory
/// only this user can enter (removed after).
fn materialize(db: &[u8], log: &[u8]) -> Result<Vec<u8>, String> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let dir = loop {
        let dir = std::env::temp_dir().join(format!(
            "durable-copy-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        // `create`, not `create_all`: a directory someone else made first is refused.
        match std::fs::DirBuilder::new()
            .mode(crate::files::DIR_MODE)
            .create(&dir)
        {
            Ok(()) => break dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("making a private directory: {e}")),
        }
    };
    let copy = dir.join("copy.db");
    let read = || -> Result<Vec<u8>, String> {
        let write = |path: &Path, bytes: &[u8]| -> std::io::Result<()> {
            crate::files::private_file()
                .write(true)
                .create_new(true)
                .open(path)?
                .write_all(bytes)
        };
        write(&copy, db).map_err(|e| e.to_string())?;
        if !log.is_empty() {
            write(&crate::files::wal_path(&copy), log).map_err(|e| e.to_string())?;
        }
        let mut conn = crate::wal_index::open(&copy, rusqlite::OpenFlags::default())
            .map_err(|e| e.to_string())?;
        let bytes = conn.serialize("main").map_err(|e| e.to_string())?;
        Ok(bytes.to_vec())
    };
    let bytes = read();
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_has_what_the_wal_holds_and_leaves_no_directory_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let live = crate::wal_index::open(&path, Default::default()).unwrap();
        live.pragma_update(None, "journal_mode", "WAL").unwrap();
        live.execute_batch(
            "PRAGMA wal_autocheckpoint = 0;
             CREATE TABLE t(x); INSERT INTO t VALUES (1), (2), (3);",
        )
        .unwrap();
        // Everything is still in the WAL: the main file alone has no table `t`.
        assert!(
            std::fs::metadata(crate::files::wal_path(&path))
                .unwrap()
                .len()
                > 0
        );
        let before: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("durable-copy-"))
            .map(|e| e.path())
            .collect();
        let copy = open_snapshot(&path).unwrap();
        let n: i64 = copy
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
        // The live file is untouched and still writable by its owner.
        live.execute("INSERT INTO t VALUES (4)", []).unwrap();
        let after: Vec<_> = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("durable-copy-"))
            .map(|e| e.path())
            .filter(|p| !before.contains(p))
            .collect();
        assert!(after.is_empty(), "{after:?}");
    }
}
