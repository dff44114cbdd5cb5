//! Spare object files, made ahead of need. A new object's first call used to create
//! three inodes (its database, then SQLite's `-wal` and `-shm`), and on a file system
//! that has seen many files come and go, ext4 spends hundreds of microseconds per new
//! inode looking for one not recently deleted (`find_inode_bit`, `recently_deleted`):
//! most of a new object's first call. A background thread keeps a few sets of files
//! ready under `DATA_DIR/spare/` (the new-object template and empty `-wal` and `-shm`
//! files, made in `spare/make/` and renamed into the pool); a new object takes one
//! with three renames into place, which allocate nothing. Nothing here needs syncing:
//! a new object's file is made durable through the host log like any new file (its
//! first batch ships an image), and a spare left half-made by a crash is deleted at
//! the next start.
//!
//! The filler also opens each set's SQLite connection ahead (WAL mode entered, its
//! shared memory set up: about a quarter of a new object's first call here). The
//! connection's descriptors follow the files through the renames; SQLite names the
//! files by path again only to delete them, which an object's connection never does
//! (see `store::keep_wal_on_close`).

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// Opens a made set's database ahead of its use (`None` if it cannot).
pub(crate) type Preopen = fn(&Path) -> Option<Connection>;

/// A complete set in the pool, and its connection if the filler opened one.
struct Spare {
    n: u64,
    conn: Option<Connection>,
}

/// A spare set moved into place: its connection, if one was opened ahead.
pub(crate) struct Taken {
    pub(crate) conn: Option<Connection>,
}

/// Sets of files kept ready.
const KEEP: usize = 32;

/// The spare files of one data directory.
pub(crate) struct Spares {
    dir: PathBuf,
    template: &'static [u8],
    preopen: Preopen,
    /// The complete sets in `dir`, and the next number to make.
    ready: Mutex<(Vec<Spare>, u64)>,
    wanted: Condvar,
}

impl Spares {
    /// Keep spares under `data_dir/spare/`, filled from `template` (and each opened
    /// with `preopen`) by a thread that ends once the returned handle is dropped.
    /// Complete sets left by an earlier run are used (without a connection); anything
    /// else there is deleted.
    pub(crate) fn start(
        data_dir: &Path,
        template: &'static [u8],
        preopen: Preopen,
    ) -> std::io::Result<Arc<Spares>> {
        let dir = data_dir.join("spare");
        crate::files::create_dirs(&dir.join(MAKE_DIR))?;
        let mut ready = Vec::new();
        let mut next = 0;
        let mut leftovers = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_dir() {
                // `make/`: what a crash left there never joined the pool.
                for made in std::fs::read_dir(&path)? {
                    let _ = std::fs::remove_file(made?.path());
                }
                continue;
            }
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let (stem, suffix) = name.split_once('.').unwrap_or((name, ""));
            let Ok(n) = stem.parse::<u64>() else {
                leftovers.push(path);
                continue;
            };
            next = next.max(n + 1);
            if suffix == "db" && complete(&dir, n) {
                ready.push(Spare { n, conn: None });
            } else if !(matches!(suffix, "db-wal" | "db-shm") && complete(&dir, n)) {
                leftovers.push(path);
            }
        }
        for path in leftovers {
            let _ = std::fs::remove_file(path);
        }
        let spares = Arc::new(Spares {
            dir,
            template,
            preopen,
            ready: Mutex::new((ready, next)),
            wanted: Condvar::new(),
        });
        let weak = Arc::downgrade(&spares);
        std::thread::Builder::new()
            .name("durable-spares".into())
            .spawn(move || fill(weak))?;
        Ok(spares)
    }

    /// Put a spare set at `path` (a new object's database, which must not exist) and
    /// beside it. `None` if none is ready or the renames failed: create it instead.
    pub(crate) fn take(&self, path: &Path) -> Option<Taken> {
        let Spare { n, conn } = {
            let mut ready = self.ready.lock().unwrap_or_else(|e| e.into_inner());
            let spare = ready.0.pop();
            self.wanted.notify_one();
            spare?
        };
        let from = |suffix: &str| self.dir.join(format!("{n}.{suffix}"));
        let to = |suffix: &str| {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            PathBuf::from(p)
        };
        // The database last: until it is in place, the object does not exist (empty
        // `-wal` and `-shm` files beside nothing are harmless and replaced next time).
        let moved = std::fs::rename(from("db-wal"), to("-wal"))
            .and_then(|_| std::fs::rename(from("db-shm"), to("-shm")))
            .and_then(|_| std::fs::rename(from("db"), path));
        if let Err(e) = moved {
            tracing::debug!(error = %e, "using a spare object file failed; creating one");
            drop(conn);
            for suffix in ["db", "db-wal", "db-shm"] {
                let _ = std::fs::remove_file(from(suffix));
            }
            return None;
        }
        Some(Taken { conn })
    }

    /// Make one set of spare files numbered `n`. The files are created in `make/` and
    /// then renamed into the pool: creating a file holds its directory's lock for as
    /// long as the file system takes to find a free inode (over a millisecond on an
    /// ext4 that has seen many files deleted), and a take renaming out of the same
    /// directory waited that long for each of its three renames. The `-wal` and
    /// `-shm` move first and the database last, so a set whose database is in the
    /// pool is complete. Its connection is opened in `make/` too.
    fn make(&self, n: u64) -> std::io::Result<Option<Connection>> {
        let make = self.dir.join(MAKE_DIR);
        let made = |suffix: &str| make.join(format!("{n}.{suffix}"));
        let path = |suffix: &str| self.dir.join(format!("{n}.{suffix}"));
        let result = (|| {
            crate::files::create_db_from(&made("db"), self.template)?;
            for suffix in ["db-wal", "db-shm"] {
                crate::files::precreate_db(&made(suffix))?;
            }
            let conn = (self.preopen)(&made("db"));
            for suffix in ["db-wal", "db-shm", "db"] {
                std::fs::rename(made(suffix), path(suffix))?;
            }
            Ok(conn)
        })();
        if result.is_err() {
            // Numbers are not reused: what this attempt left in `make/` goes now.
            for suffix in ["db-wal", "db-shm", "db"] {
                let _ = std::fs::remove_file(made(suffix));
            }
        }
        result
    }
}

/// The directory under `spare/` in which sets are made before they join the pool.
const MAKE_DIR: &str = "make";

#[cfg(test)]
impl Spares {
    /// How many ready sets have a connection opened ahead.
    pub(crate) fn preopened(&self) -> usize {
        let ready = self.ready.lock().unwrap();
        ready.0.iter().filter(|s| s.conn.is_some()).count()
    }
}

fn complete(dir: &Path, n: u64) -> bool {
    ["db", "db-wal", "db-shm"]
        .iter()
        .all(|suffix| dir.join(format!("{n}.{suffix}")).exists())
}

/// The filling thread: keep `KEEP` sets ready while the host holds its handle.
fn fill(spares: Weak<Spares>) {
    loop {
        let Some(spares) = spares.upgrade() else {
            return;
        };
        let n = {
            let mut ready = spares.ready.lock().unwrap_or_else(|e| e.into_inner());
            if ready.0.len() >= KEEP {
                // Wake on a take, or now and then to notice the host is gone.
                let (guard, _) = spares
                    .wanted
                    .wait_timeout(ready, Duration::from_millis(500))
                    .unwrap_or_else(|e| e.into_inner());
                ready = guard;
                if ready.0.len() >= KEEP {
                    continue;
                }
            }
            ready.1 += 1;
            ready.1 - 1
        };
        match spares.make(n) {
            Ok(conn) => spares
                .ready
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .0
                .push(Spare { n, conn }),
            Err(e) => {
                tracing::debug!(error = %e, "making a spare object file failed");
                drop(spares);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_spare_is_a_complete_set_in_place_and_the_pool_refills() {
        let dir = tempfile::tempdir().unwrap();
        let template: &'static [u8] = b"template bytes";
        let spares = Spares::start(dir.path(), template, |_| None).unwrap();
        let deadline = crate::clock::monotonic() + Duration::from_secs(10);
        while spares.ready.lock().unwrap().0.len() < KEEP {
            assert!(
                crate::clock::monotonic() < deadline,
                "the pool never filled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let target = dir.path().join("obj.db");
        assert!(spares.take(&target).is_some());
        assert_eq!(std::fs::read(&target).unwrap(), template);
        assert_eq!(std::fs::read(dir.path().join("obj.db-wal")).unwrap(), b"");
        assert_eq!(std::fs::read(dir.path().join("obj.db-shm")).unwrap(), b"");
        while spares.ready.lock().unwrap().0.len() < KEEP {
            assert!(
                crate::clock::monotonic() < deadline,
                "the pool never refilled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A restart keeps the complete sets and deletes a half-made one.
        drop(spares);
        std::fs::write(dir.path().join("spare/999.db-wal"), b"").unwrap();
        std::fs::write(dir.path().join("spare/998.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("spare/make/997.db-shm"), b"").unwrap();
        let again = Spares::start(dir.path(), template, |_| None).unwrap();
        assert!(again.ready.lock().unwrap().0.len() >= KEEP);
        assert!(!dir.path().join("spare/999.db-wal").exists());
        assert!(!dir.path().join("spare/998.tmp").exists());
        assert!(!dir.path().join("spare/make/997.db-shm").exists());
    }
}
