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
//!
//! A class whose first new object ran its migrations on such a file, and whose
//! migrations did only what they would do on every new file (schema changes, their
//! own rows, deterministic functions: see `Db::end_schema_watch`), gets sets of its
//! own with those migrations applied ahead ([`Spares::learn`]): its next new objects'
//! `migrate` finds them done. Such sets are named `c<n>` and never kept across a
//! restart (the class's migrations may have changed): the next start deletes them.

use rusqlite::Connection;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::Duration;

/// Opens a made set's database ahead of its use, with a class's migrations applied if
/// given (`None` if it cannot).
pub(crate) type Preopen = fn(&Path, Option<&Migrations>) -> Option<Connection>;

/// A class's migrations, as its sets are made with them applied.
pub(crate) struct Migrations {
    pub(crate) list: Vec<String>,
    /// [`crate::db::migrations_digest`] of `list`.
    pub(crate) digest: u64,
}

/// A complete set in the pool, and its connection if the filler opened one.
struct Spare {
    n: u64,
    conn: Option<Connection>,
}

/// A spare set moved into place: its connection, if one was opened ahead, and the
/// class's migrations it was made with, if any.
pub(crate) struct Taken {
    pub(crate) conn: Option<Connection>,
    pub(crate) migrated: Option<Arc<Migrations>>,
}

/// The sets ready: plain ones, and those of classes with migrations applied.
struct Pool {
    plain: Vec<Spare>,
    /// The next number to make.
    next: u64,
    classes: HashMap<&'static str, ClassPool>,
}

/// A class's sets, each with its migrations applied and its connection open.
struct ClassPool {
    migrations: Arc<Migrations>,
    ready: Vec<Spare>,
    /// Making a set failed (the migrations do not apply to the template alone, say):
    /// none is made again, and the class's new objects take plain sets.
    failed: bool,
}

impl Pool {
    /// The class whose sets are made with `migrations`.
    fn class_made_with(&mut self, migrations: &Arc<Migrations>) -> Option<&mut ClassPool> {
        self.classes
            .values_mut()
            .find(|c| Arc::ptr_eq(&c.migrations, migrations))
    }

    /// What to make next: a plain set while fewer than `KEEP` are ready, then the
    /// class pool most in need, if any is short of `CLASS_KEEP`.
    fn wanted(&self) -> Option<Option<Arc<Migrations>>> {
        if self.plain.len() < KEEP {
            return Some(None);
        }
        self.classes
            .values()
            .filter(|c| !c.failed && c.ready.len() < CLASS_KEEP)
            .min_by_key(|c| c.ready.len())
            .map(|c| Some(c.migrations.clone()))
    }
}

/// Sets of files kept ready.
const KEEP: usize = 32;

/// Sets kept ready for each class with migrations applied ahead.
const CLASS_KEEP: usize = 8;

/// Most classes given sets of their own (each set holds an open connection: three
/// descriptors and a few pages of memory).
const CLASSES_MAX: usize = 8;

/// How many times a take tries the pool's lock before it creates a file instead.
const TRIES: usize = 64;

/// How often the filler looks at the pool without being woken.
const LOOK: Duration = Duration::from_millis(500);

/// The spare files of one data directory.
pub(crate) struct Spares {
    dir: PathBuf,
    template: &'static [u8],
    preopen: Preopen,
    /// The complete sets in `dir`.
    ready: Mutex<Pool>,
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
            ready: Mutex::new(Pool {
                plain: ready,
                next,
                classes: HashMap::new(),
            }),
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
    /// A set of `class`'s own (its migrations applied) if one is ready, else a plain one.
    pub(crate) fn take(&self, class: &str, path: &Path) -> Option<Taken> {
        let (Spare { n, conn }, migrated) = {
            // The filler runs at the lowest priority: if it holds the lock (briefly, to
            // count or add a set) and the CPU is busy, waiting for it could take
            // milliseconds. Creating the file here costs less than that.
            let mut pool = self.lock_briefly()?;
            let own = pool
                .classes
                .get_mut(class)
                .and_then(|c| Some((c.ready.pop()?, c.migrations.clone())));
            let (spare, migrated, left) = match own {
                Some((spare, m)) => {
                    let left = pool.classes[class].ready.len() * KEEP / CLASS_KEEP;
                    (Some(spare), Some(m), left)
                }
                None => (pool.plain.pop(), None, pool.plain.len()),
            };
            // Wake the filler only once a pool is half empty: a wake costs the
            // caller a system call (tens of microseconds on a busy VM), and the
            // filler also looks every `LOOK` on its own.
            if left < KEEP / 2 {
                self.wanted.notify_one();
            }
            (spare?, migrated)
        };
        let prefix = if migrated.is_some() { CLASS_PREFIX } else { "" };
        let from = |suffix: &str| self.dir.join(format!("{prefix}{n}.{suffix}"));
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
        Some(Taken { conn, migrated })
    }

    /// `class`'s migrations `list` ran on a new object's file made from the template
    /// and would do the same on every one: make sets of the class with them applied.
    /// The first list learnt for a class stays (a class's objects all pass the same).
    pub(crate) fn learn(&self, class: &'static str, list: Vec<String>) {
        let mut pool = self.ready.lock().unwrap_or_else(|e| e.into_inner());
        if pool.classes.contains_key(class) || pool.classes.len() >= CLASSES_MAX {
            return;
        }
        let digest = crate::db::migrations_digest(&list);
        pool.classes.insert(
            class,
            ClassPool {
                migrations: Arc::new(Migrations { list, digest }),
                ready: Vec::new(),
                failed: false,
            },
        );
        self.wanted.notify_one();
    }

    /// The pool, unless the filler keeps it locked for more than a few tries.
    fn lock_briefly(&self) -> Option<std::sync::MutexGuard<'_, Pool>> {
        for _ in 0..TRIES {
            match self.ready.try_lock() {
                Ok(ready) => return Some(ready),
                Err(std::sync::TryLockError::Poisoned(e)) => return Some(e.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
        None
    }

    /// Make one set of spare files numbered `n`. The files are created in `make/` and
    /// then renamed into the pool: creating a file holds its directory's lock for as
    /// long as the file system takes to find a free inode (over a millisecond on an
    /// ext4 that has seen many files deleted), and a take renaming out of the same
    /// directory waited that long for each of its three renames. The `-wal` and
    /// `-shm` move first and the database last, so a set whose database is in the
    /// pool is complete. Its connection is opened in `make/` too, and a class's
    /// migrations applied there.
    fn make(&self, n: u64, migrations: Option<&Migrations>) -> std::io::Result<Option<Connection>> {
        let make = self.dir.join(MAKE_DIR);
        let prefix = if migrations.is_some() {
            CLASS_PREFIX
        } else {
            ""
        };
        let made = |suffix: &str| make.join(format!("{prefix}{n}.{suffix}"));
        let path = |suffix: &str| self.dir.join(format!("{prefix}{n}.{suffix}"));
        let result = (|| {
            crate::files::create_db_from(&made("db"), self.template)?;
            for suffix in ["db-wal", "db-shm"] {
                crate::files::precreate_db(&made(suffix))?;
            }
            let conn = (self.preopen)(&made("db"), migrations);
            if migrations.is_some() && conn.is_none() {
                return Err(std::io::Error::other(
                    "applying the class's migrations failed",
                ));
            }
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

/// What a class's set's number is prefixed with (a start deletes such sets).
const CLASS_PREFIX: &str = "c";

#[cfg(test)]
impl Spares {
    /// How many ready sets have a connection opened ahead.
    pub(crate) fn preopened(&self) -> usize {
        let ready = self.ready.lock().unwrap();
        ready.plain.iter().filter(|s| s.conn.is_some()).count()
    }

    /// How many sets of `class`'s own are ready.
    pub(crate) fn ready_for(&self, class: &str) -> usize {
        let ready = self.ready.lock().unwrap();
        ready.classes.get(class).map_or(0, |c| c.ready.len())
    }
}

fn complete(dir: &Path, n: u64) -> bool {
    ["db", "db-wal", "db-shm"]
        .iter()
        .all(|suffix| dir.join(format!("{n}.{suffix}")).exists())
}

/// The filling thread: keep `KEEP` sets ready while the host holds its handle.
fn fill(spares: Weak<Spares>) {
    lowest_priority();
    loop {
        let Some(spares) = spares.upgrade() else {
            return;
        };
        let (n, migrations) = {
            let mut pool = spares.ready.lock().unwrap_or_else(|e| e.into_inner());
            let mut wanted = pool.wanted();
            if wanted.is_none() {
                // Wake on a take, or now and then to notice the host is gone.
                let (guard, _) = spares
                    .wanted
                    .wait_timeout(pool, LOOK)
                    .unwrap_or_else(|e| e.into_inner());
                pool = guard;
                wanted = pool.wanted();
            }
            let Some(migrations) = wanted else {
                continue;
            };
            pool.next += 1;
            (pool.next - 1, migrations)
        };
        match spares.make(n, migrations.as_deref()) {
            Ok(conn) => {
                let mut pool = spares.ready.lock().unwrap_or_else(|e| e.into_inner());
                let spare = Spare { n, conn };
                match migrations {
                    None => pool.plain.push(spare),
                    Some(m) => {
                        if let Some(class) = pool.class_made_with(&m) {
                            class.ready.push(spare);
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "making a spare object file failed");
                if let Some(m) = &migrations {
                    // Not for lack of disk alone: the class's list may not apply to the
                    // template by itself. Its new objects take plain sets from now on.
                    let mut pool = spares.ready.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(class) = pool.class_made_with(m) {
                        class.failed = true;
                    }
                    continue;
                }
                drop(spares);
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Run the calling thread at the lowest priority (nice 19): making a set is a few
/// milliseconds of CPU here, mostly the file system finding free inodes, and on a
/// machine with few cores it took them from the threads answering calls (a new
/// object's first call p50 1.9-2.1 ms with it at normal priority, 1.2-1.5 ms without,
/// alternated). It gets the CPU whenever those threads leave some; a pool that runs
/// dry under sustained load only means new objects create their files themselves.
fn lowest_priority() {
    // SAFETY: gettid takes no arguments; setpriority with PRIO_PROCESS and a thread id
    // changes only that thread's nice value on Linux, and fails harmlessly otherwise.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "lowering the spare filler's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_spare_is_a_complete_set_in_place_and_the_pool_refills() {
        let dir = tempfile::tempdir().unwrap();
        let template: &'static [u8] = b"template bytes";
        let spares = Spares::start(dir.path(), template, |_, _| None).unwrap();
        let deadline = crate::clock::monotonic() + Duration::from_secs(10);
        while spares.ready.lock().unwrap().plain.len() < KEEP {
            assert!(
                crate::clock::monotonic() < deadline,
                "the pool never filled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let target = dir.path().join("obj.db");
        assert!(spares.take("C", &target).is_some());
        assert_eq!(std::fs::read(&target).unwrap(), template);
        assert_eq!(std::fs::read(dir.path().join("obj.db-wal")).unwrap(), b"");
        assert_eq!(std::fs::read(dir.path().join("obj.db-shm")).unwrap(), b"");
        while spares.ready.lock().unwrap().plain.len() < KEEP {
            assert!(
                crate::clock::monotonic() < deadline,
                "the pool never refilled"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A restart keeps the complete sets and deletes a half-made one.
        drop(spares);
        std::fs::write(dir.path().join("spare/999.db-wal"), b"").unwrap();
        // A class's set: its migrations may have changed since.
        for suffix in ["db", "db-wal", "db-shm"] {
            std::fs::write(dir.path().join(format!("spare/c5.{suffix}")), b"").unwrap();
        }
        std::fs::write(dir.path().join("spare/998.tmp"), b"x").unwrap();
        std::fs::write(dir.path().join("spare/make/997.db-shm"), b"").unwrap();
        let again = Spares::start(dir.path(), template, |_, _| None).unwrap();
        assert!(again.ready.lock().unwrap().plain.len() >= KEEP);
        assert!(!dir.path().join("spare/999.db-wal").exists());
        assert!(!dir.path().join("spare/c5.db").exists());
        assert!(!dir.path().join("spare/998.tmp").exists());
        assert!(!dir.path().join("spare/make/997.db-shm").exists());
    }
}
