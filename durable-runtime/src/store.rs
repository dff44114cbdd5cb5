//! Object database files: where they live under the data directory, how they are
//! opened (WAL, `synchronous=NORMAL`; durability comes from the durability
//! component), the runtime's own tables, and the record of recent request ids.

use crate::context::Context;
use crate::db::Statements;
use crate::tables::{has_table, Lazy};
use durable_client::ObjectId;
use rusqlite::{Connection, OptionalExtension};
use std::path::{Path, PathBuf};

pub(crate) use crate::files::{object_path, sync_dir};

/// Recent writing calls whose request ids an object remembers at least, by default.
pub(crate) const DEFAULT_REQUEST_WINDOW: usize = 1000;

/// The page size of new object databases.
const PAGE_SIZE: i64 = 1024;

/// Each object connection's page cache: at most 256 KiB (`PRAGMA cache_size`).
const CACHE_KIB: i64 = -256;

/// Bump when `SCHEMA` changes, and bring older files up in [`upgrade_schema`]
/// (revision 2 files may lack the lazily created tables: they are created on first
/// use: see [`crate::tables`]; revision 3 kept request records in two generations of
/// a row each, revision 4 in blocks without their first record's number, 5 with it).
const SCHEMA_REVISION: i64 = 5;

/// The runtime's tables every object has: its metadata, and its request records in
/// blocks (see [`record_requests`]).
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS _durable_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _durable_request_blocks(block INTEGER PRIMARY KEY, first INTEGER NOT NULL, records BLOB NOT NULL);
";

/// Bring the runtime's tables of a file at `revision` up to [`SCHEMA_REVISION`], inside
/// the caller's transaction. Request records of earlier revisions move into blocks,
/// oldest first, and their tables go: revision 2 kept them in one table,
/// `_durable_requests`, in the order recorded; revision 3 in two generations,
/// `_durable_requests_0` and `_durable_requests_1` (the older first, each in id order:
/// ids begin with the time they were made), with the current generation and the
/// largest id in the `_durable_meta` row `requests`. All of them are kept until
/// `window` records were appended after them.
fn upgrade_schema(conn: &Connection, revision: i64) -> rusqlite::Result<()> {
    // Revision 4's blocks (no `first` column; numbered from 0, 64 records each, in the
    // order recorded, with its count and largest id in `request_log`): read before the
    // table is made again.
    let mut records = Vec::new();
    let mut max = [0u8; 16];
    let old_blocks = revision < 5
        && conn.table_exists(Some(c"main"), c"_durable_request_blocks")?
        && !conn.column_exists(Some(c"main"), c"_durable_request_blocks", c"first")?;
    if old_blocks {
        let blocks: Vec<Vec<u8>> = conn
            .prepare("SELECT records FROM _durable_request_blocks ORDER BY block")?
            .query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for block in &blocks {
            records.extend(RecordIter(block).map(|r| (r.0, r.1, r.to_recorded())));
        }
        let state: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM _durable_meta WHERE key = 'request_log'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(v) = state.filter(|v| v.len() == 24) {
            max = v[8..].try_into().expect("16 bytes");
        }
        conn.execute_batch(
            "DROP TABLE _durable_request_blocks; DELETE FROM _durable_meta WHERE key = 'request_log';",
        )?;
    }
    conn.execute_batch(SCHEMA)?;
    if revision < 5 {
        let read = |sql: &str| -> rusqlite::Result<Vec<RecordedCall>> {
            let mut st = conn.prepare(sql)?;
            let rows = st.query_map([], |r| {
                let id: Vec<u8> = r.get(0)?;
                let (digest, app_error) = unpack_kind(r.get(1)?);
                Ok((max_id(Some(id)), digest, Recorded::of(app_error, r.get(2)?)))
            })?;
            rows.collect()
        };
        if conn.table_exists(Some(c"main"), c"_durable_requests")? {
            records.extend(read(
                "SELECT id, kind, body FROM _durable_requests ORDER BY seq",
            )?);
            conn.execute_batch("DROP TABLE _durable_requests")?;
        }
        let generations = [
            (c"_durable_requests_0", "_durable_requests_0"),
            (c"_durable_requests_1", "_durable_requests_1"),
        ];
        if conn.table_exists(Some(c"main"), generations[0].0)? {
            let state: Option<Vec<u8>> = conn
                .query_row(
                    "SELECT value FROM _durable_meta WHERE key = 'requests'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            // 8 bytes (count * 2 + current generation) and the largest id.
            let current = match &state {
                Some(v) if v.len() == 24 => (v[0] & 1) as usize,
                _ => 0,
            };
            if let Some(v) = state.filter(|v| v.len() == 24) {
                max = v[8..].try_into().expect("16 bytes");
            }
            for (exists, table) in [generations[1 - current], generations[current]] {
                if conn.table_exists(Some(c"main"), exists)? {
                    records.extend(read(&format!(
                        "SELECT id, kind, body FROM {table} ORDER BY id"
                    ))?);
                    conn.execute_batch(&format!("DROP TABLE {table}"))?;
                }
            }
            conn.execute("DELETE FROM _durable_meta WHERE key = 'requests'", [])?;
        }
        // One block before the first, numbered -1 and not counted: revision 3 kept its
        // records in id order, not in the order recorded, so the block goes only
        // once `window` records were appended after it (see `record_requests`).
        if !records.is_empty() {
            let mut bytes = Vec::new();
            for record in &records {
                encode_record(&mut bytes, record);
                max = max.max(record.0);
            }
            conn.execute(
                "INSERT OR REPLACE INTO _durable_request_blocks(block, first, records) VALUES (-1, 0, ?1)",
                [&bytes[..]],
            )?;
        }
        let mut log = RequestLog::load(conn)?;
        if max > log.max {
            log.max = max;
            log.store(conn)?;
        }
    }
    conn.pragma_update(None, "user_version", SCHEMA_REVISION)
}

/// Process-wide SQLite settings for hosting many small connections, applied once
/// before the first connection opens: no bulk page-cache allocation per connection
/// (SQLite's default pre-allocates 20 pages for every cache; most objects touch a few).
/// If SQLite was already initialized in this process (a connection opened first),
/// the defaults stay and only memory use differs.
pub(crate) fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_PAGECACHE takes (void*, int, int); with a NULL buffer
        // and N = 0 it only turns off the initial bulk allocation. sqlite3_config
        // refuses (SQLITE_MISUSE) rather than misbehaves once SQLite is initialized.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_PAGECACHE,
                std::ptr::null_mut::<std::os::raw::c_void>(),
                0 as std::os::raw::c_int,
                0 as std::os::raw::c_int,
            )
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(
                rc,
                "SQLite was initialized already; page cache defaults kept"
            );
        }
        if std::env::var_os("DURABLE_SQLITE_SYSTEM_MALLOC").is_none() {
            crate::sqlite_memory::use_mimalloc();
        }
        // Last: registering a VFS initializes SQLite.
        crate::wal_index::register();
    });
}

/// What a new object's file starts as: an empty database with the runtime's tables,
/// 1 KiB pages and WAL mode already set, built once per process and written with
/// one `write`. Opening it is then like opening any stored object: SQLite need not
/// create and delete a rollback journal to switch the new file to WAL, nor parse
/// and run the schema (together about half the cost of a first call, and on ext4 a
/// created-and-deleted inode per object). `None` if it could not be built (never
/// expected): new files then start empty and are set up as before.
pub(crate) fn template() -> Option<&'static [u8]> {
    static TEMPLATE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
    TEMPLATE
        .get_or_init(|| match build_template() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!("could not build the new-object template: {e}");
                None
            }
        })
        .as_deref()
}

fn build_template() -> rusqlite::Result<Vec<u8>> {
    let mut conn = Connection::open_in_memory()?;
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_REVISION)?;
    let mut bytes = conn.serialize("main")?.to_vec();
    // The file format's write and read versions (header bytes 18 and 19): 2 is WAL.
    if bytes.len() < 100 || &bytes[..16] != b"SQLite format 3\0" {
        return Err(rusqlite::Error::InvalidQuery);
    }
    bytes[18] = 2;
    bytes[19] = 2;
    Ok(bytes)
}

/// Give back the cached pages of an idle object's connection (they come back from the
/// OS page cache on the next call). Prepared statements stay: parsing them again costs
/// more CPU than they hold memory (flushing them too made alarms that wake quiet
/// objects run 100 ms late at p99).
pub(crate) fn release_idle_memory(conn: &Connection) {
    // Prepared statements are kept (rusqlite's cache and the runtime's own in `Db`):
    // dropping them here (about 16 KB per object) made
    // every alarm wake re-parse them, and alarm lateness p99 grew from ~20 ms to
    // 100-190 ms (BENCHMARKS.md).
    // SAFETY: a live connection owned by this thread.
    unsafe {
        rusqlite::ffi::sqlite3_db_release_memory(conn.handle());
    }
    crate::sqlite_memory::collect_soon();
}

/// Under the host log, closing an object's connection (eviction) writes and syncs
/// nothing: SQLite neither checkpoints its WAL into the file on close (that costs an
/// fsync of the file) nor deletes the WAL and shared-memory files (two unlinks, and
/// new inodes at the next open). The WAL's frames stay valid (checksummed; the next
/// open indexes them again), the log holds every batch until a log checkpoint has
/// synced the object's file and WAL, and a restore removes a stale WAL before it
/// installs a file. SQLite still checkpoints as the WAL grows, with its own ordering,
/// and a large WAL is folded into the file as its object closes ([`compact_on_close`]).
fn keep_wal_on_close(conn: &Connection) {
    use rusqlite::ffi;
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: a live connection with no statements yet; the config and file-control
    // calls take a pointer to an int that outlives them.
    unsafe {
        let rc = ffi::sqlite3_db_config(
            conn.handle(),
            ffi::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            1 as std::os::raw::c_int,
            std::ptr::null_mut::<std::os::raw::c_int>(),
        );
        if rc != ffi::SQLITE_OK {
            tracing::debug!(rc, "could not turn off the checkpoint on close");
        }
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::os::raw::c_int).cast(),
        );
        if rc != ffi::SQLITE_OK {
            tracing::debug!(rc, "could not keep the WAL file on close");
        }
    }
}

/// Whether the WAL file beside the object file at `path` is empty (no older frames
/// at all, not only none valid). Asked only when the WAL index says it holds no frames.
/// (If SQLite just created it, the next log checkpoint syncs its directory entry before
/// it retires any batch of it.)
fn wal_is_empty(path: &Path) -> bool {
    std::fs::metadata(crate::files::wal_path(path)).is_ok_and(|m| m.len() == 0)
}

/// SQLite's automatic checkpoint, in WAL pages (its default, which object connections
/// keep except while [`Opened::sync_off`]).
const AUTOCHECKPOINT_PAGES: i64 = 1000;

/// Leave `conn` at `synchronous=OFF` with no automatic checkpoint, until
/// [`sync_normal`]: see [`Opened::sync_off`].
fn sync_off(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)
}

/// Back to `synchronous=NORMAL`, and SQLite's automatic checkpoint, after the commit
/// an open left at `OFF` (see [`Opened::sync_off`]).
pub(crate) fn sync_normal(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "wal_autocheckpoint", AUTOCHECKPOINT_PAGES)
}

/// A closing object's WAL at least this large is copied into its file and truncated
/// ([`compact_on_close`]). Smaller ones stay: a WAL's cost at the next open is about a
/// microsecond a frame, and compacting costs a sync of the file.
const COMPACT_WAL_BYTES: u64 = 64 << 10;

/// Compactions under way in this process at most ([`compact_on_close`]). Each reads
/// the WAL and syncs twice on a blocking thread: when more objects close at once (a
/// sweep of many idle objects, a shutdown), the others keep their WAL, as they would
/// without compaction, rather than queue syncs against the host log's.
const MAX_COMPACTIONS: usize = 4;

static COMPACTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An object file marked for a WAL compaction, holding one of the
/// [`MAX_COMPACTIONS`] places until it is finished or dropped.
#[derive(Debug)]
pub(crate) struct Compaction {
    path: PathBuf,
    mark: Option<crate::wal_index::Compaction>,
}

/// Gives its place back; an unfinished mark goes with it (see the `Drop` of
/// [`crate::wal_index::Compaction`]).
impl Drop for Compaction {
    fn drop(&mut self) {
        COMPACTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// As an object's connection closes under the host log (eviction, or a quiet object
/// closing it): if its WAL holds at least [`COMPACT_WAL_BYTES`], mark the file for a
/// compaction, which [`Compaction::finish`] then runs off the shard. Otherwise the WAL
/// stays as it is (see [`keep_wal_on_close`]), and the next open reads and checksums
/// every frame again: for an object written a few thousand times that is most of its
/// activation (a WAL of ~1,000 frames, 1 MB, costs ~350 µs of CPU to index), and it
/// keeps up to a megabyte on disk per object. `None`: nothing worth doing, a
/// transaction is open on `conn`, or [`MAX_COMPACTIONS`] are under way.
pub(crate) fn compact_on_close(conn: &Connection, path: &Path) -> Option<Compaction> {
    use std::sync::atomic::Ordering;
    let wal = std::fs::metadata(crate::files::wal_path(path)).ok()?;
    if wal.len() < COMPACT_WAL_BYTES || !conn.is_autocommit() {
        return None;
    }
    COMPACTIONS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < MAX_COMPACTIONS).then_some(n + 1)
        })
        .ok()?;
    // Holds its place from here: dropped, it gives it back.
    let mut c = Compaction {
        path: path.to_owned(),
        mark: None,
    };
    c.mark = Some(crate::wal_index::mark_compaction(path).ok()?);
    Some(c)
}

impl Compaction {
    /// Off the shard, after [`compact_on_close`] and the object's connection closed:
    /// copy the WAL into the file through a connection of its own, with
    /// `synchronous=NORMAL`'s ordering (a passive checkpoint: the WAL synced, its frames
    /// copied, the file synced, and only then are the frames counted as copied), close
    /// it, and truncate the WAL if no other connection has opened the file since the
    /// mark (see [`crate::wal_index::finish_compaction`]). A connection opened meanwhile
    /// on the shard works beside the checkpoint, which never blocks it, and keeps the
    /// WAL. A failure only leaves the WAL as it was. Returns whether the WAL was
    /// truncated.
    pub(crate) fn finish(mut self) -> bool {
        let mark = self.mark.take().expect("marked");
        let path = self.path.as_path();
        let copied = crate::wal_index::compacting(&mark, || -> rusqlite::Result<bool> {
            // Not created if missing; closing it neither checkpoints again nor deletes
            // the WAL.
            let conn = connect_existing(path, true)?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let (busy, frames, done) =
                conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, i64>(2)?,
                    ))
                })?;
            Ok(busy == 0 && frames > 0 && frames == done)
        });
        // A mark not finished is dropped, and with it from the index's marks.
        let truncated = match copied {
            Ok(true) => crate::wal_index::finish_compaction(path, mark),
            Ok(false) => Ok(false),
            Err(e) => Err(std::io::Error::other(e)),
        };
        truncated.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "compacting a closed object's WAL");
            false
        })
    }
}

/// SQLite gives every connection 120 KiB of lookaside memory by default; a host
/// keeps thousands of connections open, so turn it off. Its small blocks come from
/// the allocator instead (mimalloc, see `configure_sqlite`), which is as fast here:
/// 8 KiB of lookaside per connection against none gave the same increments/s and
/// host CPU per call (`durable-bench increments_many increments_hot`, alternated)
/// and 9 KiB more memory per active object. Call before the connection prepares any
/// statement.
pub(crate) fn disable_lookaside(conn: &Connection) {
    // SAFETY: a live connection with no statements yet; a NULL buffer with a zero
    // slot size and count turns lookaside off.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::os::raw::c_void>(),
            0 as std::os::raw::c_int,
            0 as std::os::raw::c_int,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "could not turn the lookaside memory off");
    }
}

/// Open (creating if needed) the database of one object and wrap it in a [`Context`].
/// Returns whether the runtime's tables were created or changed by opening (a new
/// object, or one written by an older version): its next batch must ship an image. With `sync_new`, a new file and its directory
/// entries are made durable before returning (when no log will carry its image).
#[cfg(test)]
pub(crate) fn open(
    data_dir: &Path,
    class: &'static str,
    id: ObjectId,
    name: Option<&str>,
    sync_new: bool,
    spares: Option<&crate::spares::Spares>,
) -> Result<(Context, Opened), String> {
    open_with(data_dir, class, id, name, sync_new, spares, &mut || Ok(()))
}

/// [`open`], calling `before_upgrade` just before the runtime's tables of an existing
/// file written by an older version are brought up to date (not for a new file, nor for
/// a current one). The upgrade changes the file's content under the same batch number,
/// so the activation forgets the file's recorded content digest there: before, so that
/// neither a failure to forget it nor a crash right after the upgrade leaves a digest the
/// file no longer matches. If it fails, the file is left as it was and the open fails.
pub(crate) fn open_with(
    data_dir: &Path,
    class: &'static str,
    id: ObjectId,
    name: Option<&str>,
    sync_new: bool,
    spares: Option<&crate::spares::Spares>,
    before_upgrade: &mut dyn FnMut() -> rusqlite::Result<()>,
) -> Result<(Context, Opened), String> {
    let path = object_path(data_dir, class, id);
    let dir = path.parent().expect("object path has a parent");
    // A stored object's file opens at once, without a `stat` first (in an activation
    // each system call costs microseconds); a missing one is made below and opened
    // then. (Not found: checked by `stat`, so that a file that would not open for
    // another reason is never taken for a new one.)
    let mut preopened = match connect_existing(&path, !sync_new) {
        Ok(conn) => Some(conn),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::CannotOpen && !path.exists() =>
        {
            None
        }
        Err(e) => return Err(format!("opening {}: {e}", path.display())),
    };
    let fresh = preopened.is_none();
    let mut migrated = None;
    if fresh {
        crate::files::create_dirs(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        // A spare set of files (the template, empty `-wal` and `-shm`) renamed into
        // place allocates no inode, and usually comes with its connection open;
        // without one, create the file.
        match spares
            .filter(|_| !sync_new)
            .and_then(|s| s.take(class, &path))
        {
            Some(taken) => {
                crate::telemetry::new_object_file(if taken.migrated.is_some() {
                    "class"
                } else {
                    "spare"
                });
                preopened = taken.conn;
                migrated = taken.migrated;
            }
            None => {
                crate::telemetry::new_object_file("created");
                match template() {
                    Some(bytes) => crate::files::create_db_from(&path, bytes),
                    None => crate::files::precreate_db(&path),
                }
                .map_err(|e| format!("creating {}: {e}", path.display()))?
            }
        }
    }
    // A spare opened ahead is the template as [`preopen`] left it: the runtime's tables
    // at this revision, WAL mode, the connection's settings made, nothing stored.
    let ready = fresh && preopened.is_some();
    let conn = match preopened {
        Some(conn) => conn,
        None => {
            connect(&path, !sync_new).map_err(|e| format!("opening {}: {e}", path.display()))?
        }
    };
    // A new object ships a whole image with its first batch.
    let mut upgraded = fresh;
    // A new file under the host log needs no sync of its own: its first batch ships a
    // whole image to the log, recovery recreates the file from it, and the next log
    // checkpoint syncs the file and its directory entries. (Creating it with SQLite's
    // default syncs cost six fsyncs before the first reply.)
    let lazy_create = fresh && !sync_new;
    let mut state = State::default();
    let mut from_header = false;
    let mut sync_off = false;
    let mut setup = || -> rusqlite::Result<()> {
        if ready {
            // What the statements below would find and do on such a file, without
            // their six statements (a new object's first call waits for them), through
            // statements [`preopen`] parsed.
            conn.prepare_cached(BEGIN)?.execute([])?;
            let written = write_identity(&conn, class, id)
                .and_then(|()| name.map_or(Ok(()), |name| write_name(&conn, name)))
                .and_then(|()| conn.prepare_cached(COMMIT)?.execute([]))
                // Set when prepared, so never from the statement cache (see `preopen`).
                .and_then(|_| conn.pragma_update(None, "synchronous", "NORMAL"));
            if let Err(e) = written {
                if !conn.is_autocommit() {
                    let _ = conn.execute_batch("ROLLBACK");
                }
                return Err(e);
            }
            state.name = name.map(str::to_owned);
            return Ok(());
        }
        if !fresh && header_is_current(&conn) {
            // A file this runtime made and brought up to date before: in WAL mode (a
            // lasting setting of the file), its runtime tables at this revision (both
            // read from its header, which SQLite reads anyway), so the connection's
            // settings and one read are all an activation needs (`PRAGMA
            // journal_mode`, `PRAGMA user_version` and a transaction around them were
            // four statements more on a connection whose every statement is parsed
            // afresh).
            connection_settings(&conn, "NORMAL")?;
            state = read_state(&conn)?;
            if name.is_none() || state.name.is_some() {
                // An empty WAL (compacted when the object last closed), as the first
                // statement found it: its first commit runs with `OFF` too (see
                // [`Opened::sync_off`]).
                if !sync_new
                    && crate::wal_index::wal_frames(&conn) == Some(0)
                    && wal_is_empty(&path)
                {
                    self::sync_off(&conn)?;
                    sync_off = true;
                }
                from_header = true;
                return Ok(());
            }
            // The first open that knows the object's name: stored below, with the
            // settings and the read again (once in an object's life).
        }
        if fresh {
            // Objects are small: 1 KiB pages cut the bytes each commit writes to the
            // WAL and the page cache each connection holds (4 KiB is SQLite's default).
            conn.pragma_update(None, "page_size", PAGE_SIZE)?;
        }
        let sync = if lazy_create { "OFF" } else { "NORMAL" };
        if fresh {
            // Set before the switch to WAL too (for a lazily created file that is `OFF`:
            // the switch then syncs nothing).
            conn.pragma_update(None, "synchronous", sync)?;
        }
        settings(&conn, sync)?;
        let tx = conn.unchecked_transaction()?;
        // The runtime's tables, created or brought up to date once (user_version
        // records the revision; `migrate` keeps its own version in `_durable_meta`).
        let revision: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if revision < SCHEMA_REVISION {
            if !fresh {
                before_upgrade()?;
            }
            upgrade_schema(&tx, revision)?;
            upgraded = true;
        }
        if fresh {
            write_identity(&tx, class, id)?;
        }
        // What an activation needs to know of the file, read in this transaction.
        state = read_state(&tx)?;
        // A name is stored once, by the first open that knows it (every open by name
        // writing it again cost a write transaction per activation).
        if let (Some(name), None) = (name, &state.name) {
            write_name(&tx, name)?;
            state.name = Some(name.to_owned());
        }
        tx.commit()?;
        if lazy_create {
            // From here on SQLite orders its own WAL checkpoints safely.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
        }
        Ok(())
    };
    setup().map_err(|e| format!("preparing {}: {e}", path.display()))?;
    if fresh && sync_new {
        // Make the new file's directory entries durable before anything is acknowledged.
        conn.execute_batch("PRAGMA wal_checkpoint(FULL)")
            .map_err(|e| format!("checkpointing {}: {e}", path.display()))?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .and_then(|_| sync_dir(dir))
            .and_then(|_| sync_dir(dir.parent().unwrap()))
            .map_err(|e| format!("syncing {}: {e}", path.display()))?;
    }
    let seq = state.seq.unwrap_or(0).max(0) as u64;
    let opened = Opened {
        upgraded,
        from_header,
        sync_off,
        seq,
        image_ms: state.image_ms.unwrap_or(0).max(0) as u64,
        earliest_due: state.due.map(|d| d.max(0) as u64),
    };
    let ctx = Context::new(conn, class, id, state.name);
    // The class's schema version and migrations' digest, read above: the constructor's
    // `migrate` need not read them again (a statement parsed on every activation).
    // What `migrate` makes of a file that stores neither is left to it (it may learn
    // the class's migrations from a new file, see `crate::spares`).
    let known = crate::db::Assumed {
        version: state.schema_version,
        digest: state.schema_digest.filter(|_| seq == 0).map(|d| d as u64),
    };
    if !ready && known != crate::db::Assumed::TEMPLATE {
        ctx.conn.assume_schema_version(known);
    }
    if ready {
        // The template stores no schema version, a class's set that of the migrations
        // it was made with: `migrate` need not read it.
        ctx.conn.assume_schema_version(crate::db::Assumed {
            version: migrated.as_ref().map_or(0, |m| m.list.len() as i64),
            digest: migrated.as_ref().map(|m| m.digest),
        });
    }
    Ok((ctx, opened))
}

/// The transaction [`open`] writes a new file's identity in, on a connection opened
/// ahead.
const BEGIN: &str = "BEGIN";
const COMMIT: &str = "COMMIT";

/// Records a new file's class and id in its runtime table.
const WRITE_IDENTITY: &str =
    "INSERT OR IGNORE INTO _durable_meta(key, value) VALUES ('class', ?1), ('id', ?2)";

/// Records the object's name (an open writes it only if the file has none it can read,
/// see [`stored_name`]). Bound as the text's bytes: `value` has numeric affinity, which
/// would store a name that looks like a number (`"123"`, `"007"`) as that number.
const WRITE_NAME: &str = "INSERT OR REPLACE INTO _durable_meta(key, value) VALUES ('name', ?1)";

/// Record a new file's class and id in its runtime table.
fn write_identity(conn: &Connection, class: &str, id: ObjectId) -> rusqlite::Result<()> {
    conn.prepare_cached(WRITE_IDENTITY)?
        .execute(rusqlite::params![class, id.to_string()])?;
    Ok(())
}

/// Record the object's name, unless the file has one.
fn write_name(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(WRITE_NAME)?
        .execute([name.as_bytes()])?;
    Ok(())
}

/// An object's name as its file stores it: text, or the bytes of the text (what
/// [`write_name`] stores). `None` for none, or for a number: an earlier runtime stored
/// names as text, and SQLite made those that look like numbers into numbers (`"007"`
/// into 7), which cannot be read back; the next open that knows the name replaces it.
pub(crate) fn stored_name(value: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Text(b) | ValueRef::Blob(b) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    }
}

/// Open a spare set's database ahead of a new object (see [`crate::spares`]): as
/// [`open`] opens a new file under the host log (lookaside off, the WAL kept on
/// close, nothing synced), with WAL mode entered, so its shared memory is set up.
/// `None` if that fails (the object then opens its file itself).
pub(crate) fn preopen(
    path: &Path,
    migrations: Option<&crate::spares::Migrations>,
) -> Option<Connection> {
    let conn = connect(path, true).ok()?;
    // [`open`] takes such a connection for the template as built: make sure it is.
    let revision: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .ok()?;
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM _durable_meta", [], |r| r.get(0))
        .ok()?;
    if revision != SCHEMA_REVISION || rows != 0 {
        return None;
    }
    // `OFF` before the switch to WAL too: the switch then syncs nothing.
    conn.pragma_update(None, "synchronous", "OFF").ok()?;
    settings(&conn, "OFF").ok()?;
    if let Some(m) = migrations {
        // As `migrate` would on the new object's file (where they did the same).
        let tx = conn.unchecked_transaction().ok()?;
        for sql in &m.list {
            tx.execute_batch(sql).ok()?;
        }
        tx.execute(crate::context::WRITE_SCHEMA_VERSION, [m.list.len() as i64])
            .ok()?;
        // Kept in the file too: should the object's first activation roll back, the
        // next `migrate` still knows which list made the file (see `Sql::migrate`).
        tx.execute(
            "INSERT INTO _durable_meta(key, value) VALUES ('schema_digest', ?1)",
            [m.digest as i64],
        )
        .ok()?;
        tx.commit().ok()?;
        // The WAL has its header now: from here on SQLite orders its own checkpoints
        // and WAL restarts safely.
        conn.pragma_update(None, "synchronous", "NORMAL").ok()?;
    }
    // Without migrations, left `OFF` for [`open`], which sets `NORMAL` after the
    // object's first commit. With `NORMAL`, a commit that writes the WAL's header
    // syncs the WAL and, the first time, its directory: here the first commit into an
    // empty WAL, two fsyncs the new object's first call waited for on its shard
    // thread. That sync orders a new header before the frames after it, against older
    // frames still in the file; an empty WAL (made with the set) has none. (SQLite
    // sets `synchronous` when the pragma is prepared, so it is not among the
    // statements parsed below.)
    // The statements [`open`] runs on such a file, parsed here rather than in the new
    // object's first call (they stay prepared: nothing changes the schema before).
    for sql in [BEGIN, WRITE_IDENTITY, WRITE_NAME, COMMIT] {
        conn.prepare_cached(sql).ok()?;
    }
    Some(conn)
}

/// The settings of an object's connection: WAL mode, `synchronous` as given, its page
/// cache, temporary tables in memory.
fn settings(conn: &Connection, sync: &str) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    connection_settings(conn, sync)
}

/// The settings of [`settings`] that last only as long as the connection.
fn connection_settings(conn: &Connection, sync: &str) -> rusqlite::Result<()> {
    conn.pragma_update(None, "synchronous", sync)?;
    conn.pragma_update(None, "cache_size", CACHE_KIB)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
}

/// Whether the database file open on `conn` says, in its header, that it is in WAL
/// mode (read and write versions 2, bytes 18 and 19) with the runtime's tables at
/// [`SCHEMA_REVISION`] or later (`PRAGMA user_version`, bytes 60 to 63). Read through
/// the connection's own descriptor (opening the file again and closing it would drop
/// every POSIX lock this process holds on it, a reader connection's too).
///
/// The header in the file can be older than the newest page 1, which may still be in
/// the WAL. The journal mode in it is WAL for as long as the file is: leaving WAL mode
/// rewrites the file itself. The revision only rises as the runtime upgrades a file
/// (an image of an older revision applied to it is brought up to date in the same
/// transaction, see [`apply_image_in_txn`]); a method that sets `user_version` itself
/// meddles with the runtime's own field, and at worst makes an open ship an image it
/// need not. Anything else (a short file, a read that fails): `false`, and [`open`]
/// asks SQLite.
fn header_is_current(conn: &Connection) -> bool {
    use rusqlite::ffi;
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    let mut header = [0u8; 64];
    // SAFETY: `conn` is open; SQLITE_FCNTL_FILE_POINTER writes the main database's
    // open file (owned by SQLite, valid while the connection is) into `file`, and its
    // `xRead` fills at most `header.len()` bytes of `header`.
    let read = unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        );
        if rc != ffi::SQLITE_OK || file.is_null() || (*file).pMethods.is_null() {
            return false;
        }
        match (*(*file).pMethods).xRead {
            Some(x_read) => x_read(file, header.as_mut_ptr().cast(), header.len() as i32, 0),
            None => return false,
        }
    };
    read == ffi::SQLITE_OK
        && header.starts_with(b"SQLite format 3\0")
        && header[18] == 2
        && header[19] == 2
        && i64::from(i32::from_be_bytes(
            header[60..64].try_into().expect("4 bytes"),
        )) >= SCHEMA_REVISION
}

/// What an activation reads of an object's file ([`read_state`]).
#[derive(Debug, Default)]
struct State {
    name: Option<String>,
    seq: Option<i64>,
    image_ms: Option<i64>,
    due: Option<i64>,
    schema_version: i64,
    schema_digest: Option<i64>,
}

/// Everything an activation needs to know of the file: its name, last batch, last
/// image, earliest alarm, and the class's schema version and migrations' digest (for
/// `migrate`). One plain scan of the small `_durable_meta` table (and, if the object
/// has alarms, one read of their earliest): on a new connection every statement is
/// parsed afresh, and this one parses in a fraction of the time one subquery per key
/// took.
fn read_state(conn: &Connection) -> rusqlite::Result<State> {
    let mut state = State::default();
    let mut stmt = conn.prepare("SELECT key, value FROM _durable_meta")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        match row.get_ref(0)?.as_str().unwrap_or_default() {
            "name" => state.name = stored_name(row.get_ref(1)?),
            "log_seq" => state.seq = row.get(1)?,
            "image_ms" => state.image_ms = row.get(1)?,
            "schema_version" => state.schema_version = row.get::<_, Option<i64>>(1)?.unwrap_or(0),
            "schema_digest" => state.schema_digest = row.get(1)?,
            _ => {}
        }
    }
    // The alarm table is made lazily.
    if has_table(conn, Lazy::Alarms)? {
        state.due = conn.query_row("SELECT min(due_ms) FROM _durable_alarms", [], |r| r.get(0))?;
    }
    Ok(state)
}

/// A connection to an object's file as the runtime holds one: lookaside off, room for
/// 32 cached statements and, under the host log (`keep_wal`), the WAL and shared
/// memory kept on close.
fn connect(path: &Path, keep_wal: bool) -> rusqlite::Result<Connection> {
    connect_with(path, keep_wal, Default::default())
}

/// [`connect`] to a file that must exist already (`SQLITE_CANTOPEN` if it does not).
fn connect_existing(path: &Path, keep_wal: bool) -> rusqlite::Result<Connection> {
    let flags = rusqlite::OpenFlags::default() - rusqlite::OpenFlags::SQLITE_OPEN_CREATE;
    connect_with(path, keep_wal, flags)
}

fn connect_with(
    path: &Path,
    keep_wal: bool,
    flags: rusqlite::OpenFlags,
) -> rusqlite::Result<Connection> {
    let conn = crate::wal_index::open(path, flags)?;
    disable_lookaside(&conn);
    conn.set_prepared_statement_cache_capacity(32);
    if keep_wal {
        keep_wal_on_close(&conn);
    }
    Ok(conn)
}

/// What [`open`] read of an object's file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opened {
    /// The runtime's tables were created or brought up to date (the object's next batch
    /// ships a whole image).
    pub(crate) upgraded: bool,
    /// The file's header said WAL mode and this revision: only the connection's
    /// settings and one read ran ([`header_is_current`]).
    pub(crate) from_header: bool,
    /// The connection was left at `synchronous=OFF`, because the WAL file is empty: the
    /// caller sets `NORMAL` ([`sync_normal`]) right after the file's next commit, before
    /// the log may count that commit's batches as in the file. With `NORMAL`, the first
    /// commit into an empty WAL writes its header and syncs it (and, the first time,
    /// its directory) on the shard thread: that sync orders a new header before the
    /// frames after it, against older frames still in the file, and an empty WAL has
    /// none. SQLite's automatic checkpoint is off until then too: at `OFF` it would copy
    /// frames into the file with no sync at all, and the next commit (at `NORMAL`) could
    /// restart the WAL over them. (As a new object's first commit, see `preopen`.)
    pub(crate) sync_off: bool,
    /// The last batch the file holds ([`stored_seq`]).
    pub(crate) seq: u64,
    /// When it last shipped a whole image (ms since the epoch; 0 if never).
    pub(crate) image_ms: u64,
    /// Its earliest alarm ([`crate::alarms::earliest_due`]).
    pub(crate) earliest_due: Option<u64>,
}

/// The number of the last batch the object's database holds (0 if none).
pub(crate) fn stored_seq(conn: &impl Statements) -> rusqlite::Result<u64> {
    // A kept statement: a reader checks this before every read.
    let seq: Option<i64> = conn.with(
        "SELECT value FROM _durable_meta WHERE key = 'log_seq'",
        |s| s.query_row([], |r| r.get(0)).optional(),
    )?;
    Ok(seq.unwrap_or(0).max(0) as u64)
}

/// Record `seq` as the last batch the database holds (inside the batch's transaction).
pub(crate) fn set_stored_seq(conn: &impl Statements, seq: u64) -> rusqlite::Result<()> {
    // In place: every batch after an object's first finds the row (`INSERT OR
    // REPLACE` deleted and re-inserted it, twice the b-tree work per batch).
    let updated = conn.exec(
        "UPDATE _durable_meta SET value = ?1 WHERE key = 'log_seq'",
        [seq as i64],
    )?;
    if updated == 0 {
        conn.exec(
            "INSERT INTO _durable_meta(key, value) VALUES ('log_seq', ?1)",
            [seq as i64],
        )?;
    }
    Ok(())
}

/// Record `seq` as the last batch the database holds, and that this batch ships a
/// whole image, made at `ms`: one statement (an object's first image found neither
/// row, and paid for three statements parsed on its new connection).
pub(crate) fn set_image_seq(conn: &Connection, seq: u64, ms: u64) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR REPLACE INTO _durable_meta(key, value) VALUES ('log_seq', ?1), ('image_ms', ?2)",
    )?
    .execute([seq as i64, ms as i64])?;
    Ok(())
}

/// Replace an object's database with `image` (a serialized SQLite database), durably.
pub(crate) fn write_image(path: &Path, image: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("object path has a parent");
    crate::files::create_dirs(dir)?;
    // A stale WAL must never meet the new file: remove it first.
    for suffix in ["-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        match std::fs::remove_file(PathBuf::from(p)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let tmp = path.with_extension("db.tmp");
    let mut f = crate::files::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    f.write_all(image)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Apply log records to the object at `path`, each only if the object's stored batch
/// number is below the record's. Returns how many were applied, and the object's
/// earliest alarm due time afterwards (for the host's alarm index).
pub(crate) fn replay(
    path: &Path,
    records: &[crate::record::LogRecord],
    window: usize,
) -> Result<(usize, Option<u64>), String> {
    use crate::record::RecordKind;
    let open = |path: &Path| -> Result<Connection, String> {
        let c = crate::wal_index::open(path, Default::default()).map_err(|e| e.to_string())?;
        c.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| e.to_string())?;
        c.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| e.to_string())?;
        Ok(c)
    };
    let mut applied = 0;
    let mut conn: Option<Connection> = None;
    for record in records {
        let readable = match &conn {
            Some(c) => stored_seq(c).map_err(|e| e.to_string()),
            None if path.exists() => open(path).and_then(|c| {
                let seq = stored_seq(&c).map_err(|e| e.to_string())?;
                conn = Some(c);
                Ok(seq)
            }),
            None => Ok(0),
        };
        let stored = match readable {
            Ok(seq) => seq,
            // A file created lazily (see `open`) and cut short by a power loss before
            // any checkpoint: an image record rebuilds it whole.
            Err(_) if record.kind == RecordKind::Image => {
                drop(conn.take());
                0
            }
            Err(e) => return Err(e),
        };
        if record.seq <= stored {
            continue;
        }
        match record.kind {
            RecordKind::Image => {
                drop(conn.take());
                write_image(path, &record.payload).map_err(|e| format!("writing image: {e}"))?;
            }
            RecordKind::Changes => {
                let Some(c) = &conn else {
                    return Err(format!(
                        "lsn {}: changes for an object that has no database",
                        record.lsn
                    ));
                };
                let tx = c.unchecked_transaction().map_err(|e| e.to_string())?;
                apply_changes(c, record, window)?;
                tx.commit().map_err(|e| e.to_string())?;
            }
        }
        applied += 1;
    }
    let conn = match conn {
        Some(c) => c,
        None => open(path)?,
    };
    let due = crate::alarms::earliest_due(&conn).map_err(|e| e.to_string())?;
    Ok((applied, due))
}

/// Make an object's database hold exactly what a logged `image` holds, inside the
/// caller's open transaction (the file is not rewritten: this works on a full disk as
/// long as the pages fit in the cache). Schema objects the image lacks or defines
/// differently are dropped, the image's are created, and every table's rows (rowids
/// included: changesets of rowid tables name rows by rowid) are copied.
pub(crate) fn apply_image_in_txn(c: &Connection, image: &[u8]) -> Result<(), String> {
    use rusqlite::types::Value;
    let err = |e: rusqlite::Error| e.to_string();
    let mut bytes = image.to_vec();
    if bytes.len() > 19 {
        // The in-memory VFS has no WAL: read the image as a rollback-journal database.
        bytes[18] = 1;
        bytes[19] = 1;
    }
    let mut mem = Connection::open_in_memory().map_err(err)?;
    mem.deserialize_read_exact("main", &bytes[..], bytes.len(), true)
        .map_err(|e| format!("reading the image: {e}"))?;
    type Object = (String, String, Option<String>);
    let objects = |conn: &Connection| -> Result<Vec<Object>, String> {
        let mut st = conn
            .prepare(
                "SELECT type, name, sql FROM main.sqlite_master WHERE name NOT LIKE 'sqlite_%'",
            )
            .map_err(err)?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    };
    let quote = |name: &str| format!("\"{}\"", name.replace('"', "\"\""));
    let image_objects = objects(&mem)?;
    let current = objects(c)?;
    // Triggers must not fire while rows are copied; the image's come back at the end.
    for (ty, name, sql) in &current {
        let same = image_objects.iter().any(|o| &o.1 == name && &o.2 == sql);
        if ty == "trigger" || !same {
            let kind = match ty.as_str() {
                "table" => "TABLE",
                "index" => "INDEX",
                "view" => "VIEW",
                _ => "TRIGGER",
            };
            c.execute_batch(&format!("DROP {kind} IF EXISTS main.{}", quote(name)))
                .map_err(err)?;
        }
    }
    let remaining = objects(c)?;
    let exists = |name: &str| remaining.iter().any(|o| o.1 == name);
    for (_, name, sql) in image_objects.iter().filter(|o| o.0 == "table") {
        if !exists(name) {
            let sql = sql.as_deref().ok_or("a table without SQL")?;
            c.execute_batch(sql).map_err(err)?;
        }
    }
    let mut tables: Vec<String> = image_objects
        .iter()
        .filter(|o| o.0 == "table")
        .map(|o| o.1.clone())
        .collect();
    let has_sequence = mem
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_sequence'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)?
        > 0;
    if has_sequence {
        tables.push("sqlite_sequence".into());
    }
    for table in &tables {
        let q = quote(table);
        let columns: Vec<String> = {
            let mut st = mem
                .prepare(&format!("PRAGMA main.table_info({q})"))
                .map_err(err)?;
            let names = st.query_map([], |r| r.get::<_, String>(1)).map_err(err)?;
            names.collect::<Result<_, _>>().map_err(err)?
        };
        let mut list: Vec<String> = columns.iter().map(|n| quote(n)).collect();
        if mem
            .prepare(&format!("SELECT _rowid_ FROM main.{q} LIMIT 0"))
            .is_ok()
        {
            list.insert(0, "_rowid_".into());
        }
        let list = list.join(", ");
        c.execute_batch(&format!("DELETE FROM main.{q}"))
            .map_err(err)?;
        let marks = vec!["?"; list.split(", ").count()].join(", ");
        let mut insert = c
            .prepare(&format!("INSERT INTO main.{q} ({list}) VALUES ({marks})"))
            .map_err(err)?;
        let mut select = mem
            .prepare(&format!("SELECT {list} FROM main.{q}"))
            .map_err(err)?;
        let width = select.column_count();
        let mut rows = select.query([]).map_err(err)?;
        while let Some(row) = rows.next().map_err(err)? {
            let values = (0..width)
                .map(|i| row.get::<_, Value>(i))
                .collect::<Result<Vec<_>, _>>()
                .map_err(err)?;
            insert
                .execute(rusqlite::params_from_iter(values))
                .map_err(err)?;
        }
    }
    for (ty, name, sql) in &image_objects {
        if ty == "table" || exists(name) && ty != "trigger" {
            continue;
        }
        if let Some(sql) = sql {
            c.execute_batch(sql).map_err(err)?;
        }
    }
    let version: i64 = mem
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if version < SCHEMA_REVISION {
        // An image an earlier runtime logged: its file comes out at this revision, as
        // opening it would make it (and as `open` reads from its header).
        upgrade_schema(c, version).map_err(err)
    } else {
        c.pragma_update(None, "user_version", version).map_err(err)
    }
}

/// Apply one record of the log (changes or a whole image) to an object's open
/// database inside the caller's transaction.
pub(crate) fn apply_record_in_txn(
    c: &Connection,
    record: &crate::record::LogRecord,
    window: usize,
) -> Result<(), String> {
    match record.kind {
        crate::record::RecordKind::Changes => apply_changes(c, record, window),
        crate::record::RecordKind::Image => apply_image_in_txn(c, &record.payload),
    }
}

/// Apply one `Changes` record of the log to an object's database inside the caller's
/// transaction: its row changes, the request ids it answered, its batch number.
pub(crate) fn apply_changes(
    c: &Connection,
    record: &crate::record::LogRecord,
    window: usize,
) -> Result<(), String> {
    use rusqlite::session::{ConflictAction, ConflictType};
    let (changeset, calls) = decode_changes(&record.payload)?;
    // A file an earlier runtime wrote (or an image it logged, just written by a
    // replay): brought up to this revision first, as opening it would, so that the
    // request records below have their tables.
    let revision: i64 = c
        .prepare_cached("PRAGMA user_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(|e| e.to_string())?;
    if revision < SCHEMA_REVISION {
        upgrade_schema(c, revision).map_err(|e| format!("lsn {}: upgrading: {e}", record.lsn))?;
    }
    c.apply_strm(
        &mut &changeset[..],
        None::<fn(&str) -> bool>,
        |conflict, _item| match conflict {
            ConflictType::SQLITE_CHANGESET_DATA | ConflictType::SQLITE_CHANGESET_CONFLICT => {
                ConflictAction::SQLITE_CHANGESET_REPLACE
            }
            _ => ConflictAction::SQLITE_CHANGESET_OMIT,
        },
    )
    .map_err(|e| format!("lsn {}: applying changes: {e}", record.lsn))?;
    record_requests(c, &calls, window, |_| {}).map_err(|e| e.to_string())?;
    set_stored_seq(c, record.seq).map_err(|e| e.to_string())
}

/// A recorded outcome of an earlier call with the same request id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Recorded {
    Return(Vec<u8>),
    AppError(Vec<u8>),
}

impl Recorded {
    /// The outcome stored with an error bit and a body.
    fn of(app_error: bool, body: Vec<u8>) -> Recorded {
        if app_error {
            Recorded::AppError(body)
        } else {
            Recorded::Return(body)
        }
    }
}

/// A stored record's `kind`: the call's digest (62 bits) above the outcome's error bit.
fn pack_kind(digest: u64, outcome: &Recorded) -> (i64, &[u8]) {
    let digest = (digest & ((1 << 62) - 1)) as i64;
    match outcome {
        Recorded::Return(b) => (digest << 1, b),
        Recorded::AppError(b) => (digest << 1 | 1, b),
    }
}

/// The digest and the error bit of a stored `kind` (see [`pack_kind`]).
fn unpack_kind(kind: i64) -> (u64, bool) {
    ((kind as u64) >> 1, kind & 1 == 1)
}

/// The payload of a `Changes` log record: the session changeset of the batch's user
/// tables, and the request ids the batch recorded (the runtime's own tables are left
/// out of the changeset: capturing them would cost a session table per batch).
///
/// Layout: `changeset_len: u32 LE`, changeset, then per recorded call:
/// `id: [u8; 16]`, `kind: u8` (0 return, 1 error), `len: u32 LE`, body.
pub(crate) fn encode_changes(changeset: &[u8], calls: &[RecordedCall]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + changeset.len() + calls.len() * 40);
    out.extend_from_slice(&(changeset.len() as u32).to_le_bytes());
    out.extend_from_slice(changeset);
    for (id, digest, rec) in calls {
        let (kind, body) = match rec {
            Recorded::Return(b) => (0u8, b),
            Recorded::AppError(b) => (1u8, b),
        };
        out.extend_from_slice(id);
        // Kinds 2 and 3 carry the call's digest (8 bytes) before the body's length;
        // records written before digests existed have kinds 0 and 1 and none.
        out.push(kind | 2);
        out.extend_from_slice(&digest.to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// One call a batch recorded: its request id, its [`call_digest`] (0: unknown, from
/// a record older than digests) and its outcome.
pub(crate) type RecordedCall = ([u8; 16], u64, Recorded);

/// What identifies a call's content beside its request id: a 62-bit FNV-1a of its
/// method and argument bytes, never 0. A request id sent again with another digest
/// is a different call reusing the id, refused with `RequestReused` rather than
/// answered with the first call's result.
pub(crate) fn call_digest(method: &str, args: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in method.bytes().chain([0u8]).chain(args.iter().copied()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 2).max(1)
}

/// The parts of a `Changes` payload.
pub(crate) type ChangesPayload<'a> = (&'a [u8], Vec<RecordedCall>);

pub(crate) fn decode_changes(payload: &[u8]) -> Result<ChangesPayload<'_>, String> {
    let bad = || "malformed changes payload".to_string();
    let n = u32::from_le_bytes(payload.get(..4).ok_or_else(bad)?.try_into().unwrap()) as usize;
    let changeset = payload.get(4..4 + n).ok_or_else(bad)?;
    let mut rest = &payload[4 + n..];
    let mut calls = Vec::new();
    while !rest.is_empty() {
        let id: [u8; 16] = rest.get(..16).ok_or_else(bad)?.try_into().unwrap();
        let kind = *rest.get(16).ok_or_else(bad)?;
        if kind > 3 {
            return Err(bad());
        }
        let (digest, at) = if kind & 2 != 0 {
            let d = u64::from_le_bytes(rest.get(17..25).ok_or_else(bad)?.try_into().unwrap());
            (d, 25)
        } else {
            (0, 17)
        };
        let len =
            u32::from_le_bytes(rest.get(at..at + 4).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let body = rest.get(at + 4..at + 4 + len).ok_or_else(bad)?.to_vec();
        calls.push((id, digest, Recorded::of(kind & 1 == 1, body)));
        rest = &rest[at + 4 + len..];
    }
    Ok((changeset, calls))
}

/// The recorded outcome of request `id`, with the digest of the call that made it
/// (0 if recorded before digests existed), from the file's request records: the
/// blocks are read newest first (an id recorded again, after it left the window, has
/// its latest outcome). Reads every block for an id not recorded: the object keeps its
/// recent records in memory and asks the file only for ids older than those (see
/// `shard::unfiled`).
pub(crate) fn lookup_request(
    conn: &impl Statements,
    id: &[u8; 16],
) -> rusqlite::Result<Option<(u64, Recorded)>> {
    conn.with(
        "SELECT records FROM _durable_request_blocks ORDER BY block DESC",
        |s| {
            let mut rows = s.query([])?;
            while let Some(row) = rows.next()? {
                let block = row.get_ref(0)?.as_blob()?;
                if let Some(found) = RecordIter(block).find(|r| r.0 == *id) {
                    return Ok(Some((found.1, found.to_recorded())));
                }
            }
            Ok(None)
        },
    )
}

/// The largest request id recorded (all zeros if none), as [`record_requests`] keeps
/// it beside the records (it may be larger than any id still held: that only costs
/// lookups).
pub(crate) fn max_request_id(conn: &impl Statements) -> rusqlite::Result<[u8; 16]> {
    RequestLog::load(conn).map(|t| t.max)
}

/// A request id as stored, 16 bytes; anything else (never written by the runtime)
/// reads as larger than every id, which only costs lookups.
fn max_id(value: Option<Vec<u8>>) -> [u8; 16] {
    match value {
        None => [0; 16],
        Some(v) => v.try_into().unwrap_or([0xff; 16]),
    }
}

/// Most request records per block (see [`record_requests`]).
const BLOCK_RECORDS: usize = 64;

/// Most bytes of a block, but for its first record (see [`record_requests`]).
const BLOCK_BYTES: usize = 4096;

/// How many request records were ever appended, and the largest id recorded. One
/// `_durable_meta` row, `request_log`: the count (8 bytes, little-endian) and the
/// 16-byte id; absent in a file that recorded none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RequestLog {
    count: u64,
    max: [u8; 16],
}

impl RequestLog {
    fn load(conn: &impl Statements) -> rusqlite::Result<RequestLog> {
        let value: Option<Vec<u8>> = conn.with(
            "SELECT value FROM _durable_meta WHERE key = 'request_log'",
            |s| s.query_row([], |r| r.get(0)).optional(),
        )?;
        Ok(match value {
            Some(v) if v.len() == 24 => RequestLog {
                count: u64::from_le_bytes(v[..8].try_into().expect("8 bytes")),
                max: v[8..].try_into().expect("16 bytes"),
            },
            None => RequestLog {
                count: 0,
                max: [0; 16],
            },
            // Not the runtime's: every id looks possibly seen, and the next records
            // start a block after the last one held.
            Some(_) => {
                let last: Option<(i64, Vec<u8>)> = conn.with(
                    "SELECT first, records FROM _durable_request_blocks ORDER BY block DESC LIMIT 1",
                    |s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))).optional(),
                )?;
                RequestLog {
                    count: last.map_or(0, |(first, records)| {
                        first.max(0) as u64 + RecordIter(&records).count() as u64
                    }),
                    max: [0xff; 16],
                }
            }
        })
    }

    fn store(&self, conn: &impl Statements) -> rusqlite::Result<()> {
        let mut value = [0u8; 24];
        value[..8].copy_from_slice(&self.count.to_le_bytes());
        value[8..].copy_from_slice(&self.max);
        conn.exec(
            "INSERT OR REPLACE INTO _durable_meta(key, value) VALUES ('request_log', ?1)",
            [&value[..]],
        )
        .map(|_| ())
    }
}

/// One request record as a block holds it: the id (16 bytes), the outcome in the low
/// bit of `kind` and the call's digest above it (8 bytes, little-endian), the body's
/// length (4 bytes, little-endian) and the body.
fn encode_record(out: &mut Vec<u8>, (id, digest, outcome): &RecordedCall) {
    let (kind, body) = pack_kind(*digest, outcome);
    out.extend_from_slice(id);
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
}

/// A record read from a block, its body borrowed.
struct BlockRecord<'a>([u8; 16], u64, bool, &'a [u8]);

impl BlockRecord<'_> {
    fn to_recorded(&self) -> Recorded {
        Recorded::of(self.2, self.3.to_vec())
    }
}

/// The records of a block, in order; a block cut short (never written so by the
/// runtime) ends at its last whole record.
struct RecordIter<'a>(&'a [u8]);

impl<'a> Iterator for RecordIter<'a> {
    type Item = BlockRecord<'a>;

    fn next(&mut self) -> Option<BlockRecord<'a>> {
        let head = self.0.get(..28)?;
        let id: [u8; 16] = head[..16].try_into().expect("16 bytes");
        let kind = i64::from_le_bytes(head[16..24].try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(head[24..28].try_into().expect("4 bytes")) as usize;
        let body = self.0.get(28..28 + len)?;
        self.0 = &self.0[28 + len..];
        let (digest, app_error) = unpack_kind(kind);
        Some(BlockRecord(id, digest, app_error, body))
    }
}

/// The first `n` records of a block, as bytes.
fn first_records(block: &[u8], n: usize) -> &[u8] {
    let mut rest = RecordIter(block);
    for _ in 0..n {
        if rest.next().is_none() {
            break;
        }
    }
    &block[..block.len() - rest.0.len()]
}

/// Record calls' outcomes and digests, in order, appended to the object's request
/// records: blocks of up to [`BLOCK_RECORDS`] records and [`BLOCK_BYTES`] bytes (a
/// record larger than that has a block of its own), one row and one blob each, with
/// the number of the block's first record among all ever appended (`first`). The
/// last block is rewritten as it fills. Blocks whose records are all older than the
/// newest `window` are deleted, so at least the last `window` records are kept (at
/// most a block's worth more).
///
/// What the blocks hold depends only on the records in order, not on how they were
/// split between calls (a live object appends many batches' records at a file commit,
/// a replay one batch's at a time): the content digest of a replayed file matches the
/// live one's. An id recorded again (a retry after it left the window) is appended
/// again; lookups read the newest blocks first. One row per 64 records instead of a
/// B-tree entry each (and a row deleted per record that aged out) made a hot object's
/// file commits several times cheaper; the bound on bytes keeps a block's rewrite
/// small when calls return large results.
///
/// `done` hears how many records were appended once they all were; a failure leaves
/// the records as they were (the append runs in a savepoint of its own), for a retry.
pub(crate) fn record_requests(
    conn: &impl Statements,
    records: &[RecordedCall],
    window: usize,
    mut done: impl FnMut(usize),
) -> rusqlite::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    // All or nothing: a failure after the `DELETE` (the count's write, on a full disk)
    // must not leave the blocks it deleted gone and the count as it was, or the retry
    // would start from a tail that is no longer there.
    conn.run("SAVEPOINT durable_records")?;
    match append_requests(conn, records, window) {
        Ok(()) => {
            conn.run("RELEASE durable_records")?;
            done(records.len());
            Ok(())
        }
        Err(e) => {
            let _ = conn
                .run("ROLLBACK TO durable_records")
                .and_then(|()| conn.run("RELEASE durable_records"));
            Err(e)
        }
    }
}

/// [`record_requests`]' work, inside its savepoint.
fn append_requests(
    conn: &impl Statements,
    records: &[RecordedCall],
    window: usize,
) -> rusqlite::Result<()> {
    let mut log = RequestLog::load(conn)?;
    let max = records.iter().map(|r| r.0).max().expect("not empty");
    log.max = log.max.max(max);
    // The block that holds the last record appended (blocks a failed try wrote past
    // it start at or after the count: they are written again below).
    let tail: Option<(i64, i64, Vec<u8>)> = conn.with(
        "SELECT block, first, records FROM _durable_request_blocks
         WHERE first < ?1 ORDER BY block DESC LIMIT 1",
        |s| {
            s.query_row([log.count as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()
        },
    )?;
    let (mut block, mut first, mut buf, mut held) = match tail {
        Some((block, first, bytes)) => {
            let held = (log.count as i64 - first) as usize;
            (block, first, first_records(&bytes, held).to_vec(), held)
        }
        None => (0, log.count as i64, Vec::new(), 0),
    };
    let write = |block: i64, first: i64, bytes: &[u8]| {
        conn.exec(
            "INSERT OR REPLACE INTO _durable_request_blocks(block, first, records) VALUES (?1, ?2, ?3)",
            rusqlite::params![block, first, bytes],
        )
    };
    // Whether the block in `buf` took records here (else the file holds it as it is).
    let mut changed = false;
    for record in records {
        let start = buf.len();
        encode_record(&mut buf, record);
        if held > 0 && (held >= BLOCK_RECORDS || buf.len() > BLOCK_BYTES) {
            // Full: the record starts the next block.
            let next = buf.split_off(start);
            if changed {
                write(block, first, &buf)?;
            }
            (block, first, buf, held) = (block + 1, log.count as i64, next, 0);
        }
        changed = true;
        held += 1;
        log.count += 1;
    }
    write(block, first, &buf)?;
    // Every block before the one that holds the oldest of the newest `window` records.
    if let Some(keep_from) = log.count.checked_sub(window.max(1) as u64) {
        conn.exec(
            "DELETE FROM _durable_request_blocks WHERE block <
               (SELECT max(block) FROM _durable_request_blocks WHERE first <= ?1)",
            [keep_from as i64],
        )?;
    }
    log.store(conn)
}

/// Every request id the file's records hold (for an object that must tell, for many
/// ids, whether its file recorded them: see `shard::unfiled`).
pub(crate) fn recorded_ids(
    conn: &impl Statements,
) -> rusqlite::Result<std::collections::HashSet<[u8; 16]>> {
    conn.with("SELECT records FROM _durable_request_blocks", |s| {
        let mut ids = std::collections::HashSet::new();
        let mut rows = s.query([])?;
        while let Some(row) = rows.next()? {
            ids.extend(RecordIter(row.get_ref(0)?.as_blob()?).map(|r| r.0));
        }
        Ok(ids)
    })
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
            let Some(id) = f
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            // From a copy: the host may have the file open (see `file_copy`).
            let name = crate::file_copy::open_snapshot(&f).ok().and_then(|c| {
                c.query_row(
                    "SELECT value FROM _durable_meta WHERE key = 'name'",
                    [],
                    |r| Ok(stored_name(r.get_ref(0)?)),
                )
                .optional()
                .ok()
                .flatten()
                .flatten()
            });
            out.push((class_name.clone(), id, name));
        }
    }
    out.sort();
    Ok(out)
}

/// A copy of the whole database `main` of `conn`, as `sqlite3_serialize` lays it out
/// (the bytes of a database file). Takes a shared borrow, unlike rusqlite's
/// `serialize`: the copy is made before this returns.
pub(crate) fn serialize_copy(conn: &Connection) -> Result<Vec<u8>, String> {
    use rusqlite::ffi;
    let mut size: ffi::sqlite3_int64 = 0;
    // SAFETY: a live connection handle; with flags 0 SQLite returns a fresh buffer
    // (or null), which is copied and then freed with sqlite3_free.
    unsafe {
        let ptr = ffi::sqlite3_serialize(conn.handle(), c"main".as_ptr(), &mut size, 0);
        if ptr.is_null() {
            return Err("sqlite3_serialize returned no data (out of memory?)".into());
        }
        let bytes = std::slice::from_raw_parts(ptr, size as usize).to_vec();
        ffi::sqlite3_free(ptr.cast());
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request records of `conn`: each block's number and ids, in order.
    fn blocks(conn: &Connection) -> Vec<(i64, Vec<[u8; 16]>)> {
        conn.prepare("SELECT block, records FROM _durable_request_blocks ORDER BY block")
            .unwrap()
            .query_map([], |r| {
                let records: Vec<u8> = r.get(1)?;
                Ok((r.get(0)?, RecordIter(&records).map(|r| r.0).collect()))
            })
            .unwrap()
            .map(|r| r.unwrap())
            .collect()
    }

    /// Records appended in pieces of every size, with ids recorded just before among
    /// them (a replay): the newest `window` records are always all kept, and at most
    /// 63 more; blocks hold 64 records each, in order, the last one the rest; each id
    /// looks up its own outcome; the count in `_durable_meta` is every record appended;
    /// and the same records appended in other pieces (all at once, as a live object's
    /// file commit; a batch's worth at a time, as a replay; one by one) leave the same
    /// blocks.
    #[test]
    fn request_records_keep_the_window_in_blocks_the_same_however_they_come() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let window = 100;
        let id = |n: u32| {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&n.to_be_bytes());
            id
        };
        let mut next = 0u32;
        let mut all = Vec::new();
        for piece in [1usize, 7, 16, 33, 5, 64, 21, 2, 90, 3, 17, 40, 250, 1, 99] {
            let mut records = Vec::new();
            for k in 0..piece {
                // Every fifth record repeats the id recorded before it (a replay).
                let n = if k % 5 == 4 && next > 0 {
                    next - 1
                } else {
                    next
                };
                if n == next {
                    next += 1;
                }
                records.push((id(n), u64::from(n), Recorded::Return(vec![n as u8])));
            }
            let mut counted = 0;
            record_requests(&conn, &records, window, |n| counted += n).unwrap();
            assert_eq!(counted, piece);
            all.extend(records);
            let held = blocks(&conn);
            let ids: Vec<[u8; 16]> = held.iter().flat_map(|(_, ids)| ids.clone()).collect();
            // The newest `window` records, and no more than 63 older ones.
            assert_eq!(
                ids[..],
                all[all.len() - ids.len()..]
                    .iter()
                    .map(|r| r.0)
                    .collect::<Vec<_>>()[..]
            );
            assert!(
                ids.len() >= window.min(all.len()) && ids.len() < window + 64,
                "{}",
                ids.len()
            );
            for (i, (block, in_block)) in held.iter().enumerate() {
                assert_eq!(*block as usize, (all.len() - ids.len()) / 64 + i);
                assert!(in_block.len() == 64 || i == held.len() - 1);
            }
            assert_eq!(RequestLog::load(&conn).unwrap().count, all.len() as u64);
            for r in &all[all.len() - window.min(all.len())..] {
                assert_eq!(
                    lookup_request(&conn, &r.0).unwrap(),
                    Some((r.1, r.2.clone()))
                );
            }
        }
        assert!(next > 500);
        assert_eq!(lookup_request(&conn, &id(next)).unwrap(), None);
        assert_eq!(max_request_id(&conn).unwrap(), id(next - 1));
        let rows = |conn: &Connection| -> Vec<(i64, Vec<u8>)> {
            conn.prepare("SELECT block, records FROM _durable_request_blocks ORDER BY block")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        for size in [all.len(), 23, 1] {
            let other = Connection::open_in_memory().unwrap();
            other.execute_batch(SCHEMA).unwrap();
            for piece in all.chunks(size) {
                record_requests(&other, piece, window, |_| {}).unwrap();
            }
            assert_eq!(rows(&other), rows(&conn), "in pieces of {size}");
            assert_eq!(
                RequestLog::load(&other).unwrap(),
                RequestLog::load(&conn).unwrap()
            );
            assert_eq!(
                crate::catalog::content_digest(&other).unwrap(),
                crate::catalog::content_digest(&conn).unwrap()
            );
        }
        // An append that fails at its end (its blocks written, the old ones deleted
        // past the window, the count not written) leaves the records as they were, and
        // tried again leaves what one append leaves.
        let other = Connection::open_in_memory().unwrap();
        other.execute_batch(SCHEMA).unwrap();
        // The retry also carries records that came after (a live object's next commit).
        let (head, tail) = all.split_at(all.len() - 160);
        let failing = &tail[..150];
        record_requests(&other, head, window, |_| {}).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER fail BEFORE INSERT ON _durable_meta BEGIN SELECT RAISE(ABORT, 'full'); END;
                 CREATE TRIGGER fail2 BEFORE UPDATE ON _durable_meta BEGIN SELECT RAISE(ABORT, 'full'); END;",
            )
            .unwrap();
        let mut counted = 0;
        assert!(record_requests(&other, failing, window, |n| counted += n).is_err());
        assert_eq!(counted, 0);
        other
            .execute_batch("DROP TRIGGER fail; DROP TRIGGER fail2;")
            .unwrap();
        record_requests(&other, tail, window, |n| counted += n).unwrap();
        assert_eq!(counted, tail.len());
        assert_eq!(rows(&other), rows(&conn));
    }

    /// Records with large bodies: a block closes before it would pass 4 KiB (a larger
    /// record has one of its own), so rewriting the last block stays small; the blocks
    /// are the same however the records come, and the window holds.
    #[test]
    fn blocks_close_by_bytes_for_large_results() {
        let sizes = [
            10usize, 3000, 900, 900, 900, 900, 10_000, 5, 5, 2000, 2100, 1, 4000,
        ];
        let all: Vec<RecordedCall> = (0..120u32)
            .map(|n| {
                let mut id = [0u8; 16];
                id[..4].copy_from_slice(&n.to_be_bytes());
                let body = vec![n as u8; sizes[n as usize % sizes.len()]];
                (id, u64::from(n), Recorded::AppError(body))
            })
            .collect();
        let window = 30;
        let mut layouts = Vec::new();
        for size in [all.len(), 7, 1] {
            let conn = Connection::open_in_memory().unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            for piece in all.chunks(size) {
                record_requests(&conn, piece, window, |_| {}).unwrap();
            }
            let rows: Vec<(i64, i64, Vec<u8>)> = conn
                .prepare("SELECT block, first, records FROM _durable_request_blocks ORDER BY block")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect();
            let mut next = rows[0].1;
            for (_, first, bytes) in &rows {
                let n = RecordIter(bytes).count() as i64;
                assert_eq!(*first, next, "blocks follow each other");
                assert!(
                    n == 1 || bytes.len() <= BLOCK_BYTES,
                    "{n} records, {} bytes",
                    bytes.len()
                );
                next += n;
            }
            assert_eq!(next, all.len() as i64);
            assert!(all.len() as i64 - rows[0].1 >= window as i64);
            assert!(
                all.len() as i64 - rows[1].1 < window as i64,
                "no block more than needed"
            );
            for r in &all[all.len() - window..] {
                assert_eq!(
                    lookup_request(&conn, &r.0).unwrap(),
                    Some((r.1, r.2.clone()))
                );
            }
            layouts.push(rows);
        }
        assert_eq!(layouts[0], layouts[1]);
        assert_eq!(layouts[0], layouts[2]);
    }

    /// Turn a new object's file into one an older runtime left: `sql`, then each
    /// statement with its blob, all in the main file (the WAL checkpointed).
    fn older_file(dir: &Path, id: ObjectId, sql: &str, rows: &[(&str, &[u8])]) {
        let (ctx, _) = open(dir, "Counter", id, None, false, None).unwrap();
        ctx.conn.execute_batch(sql).unwrap();
        for (statement, blob) in rows {
            ctx.conn.execute(statement, [blob]).unwrap();
        }
        ctx.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }

    /// A file of revision 4 (blocks without `first`) opens with its records in the
    /// block before the first, in order, its largest id kept.
    #[test]
    fn a_revision_4_files_blocks_move_before_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let rid = |n: u8| [n; 16];
        let mut block = Vec::new();
        for n in [4u8, 2, 7] {
            encode_record(
                &mut block,
                &(rid(n), u64::from(n), Recorded::Return(vec![n])),
            );
        }
        let mut state = Vec::new();
        state.extend_from_slice(&3u64.to_le_bytes());
        state.extend_from_slice(&rid(8));
        older_file(
            dir.path(),
            id,
            "DROP TABLE _durable_request_blocks;
             CREATE TABLE _durable_request_blocks(block INTEGER PRIMARY KEY, records BLOB NOT NULL);
             PRAGMA user_version = 4;",
            &[
                (
                    "INSERT INTO _durable_request_blocks(block, records) VALUES (0, ?1)",
                    &block,
                ),
                (
                    "INSERT OR REPLACE INTO _durable_meta(key, value) VALUES ('request_log', ?1)",
                    &state,
                ),
            ],
        );
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(opened.upgraded);
        let conn: &Connection = ctx.conn.conn();
        assert_legacy_block(conn, &[rid(4), rid(2), rid(7)], rid(8));
        assert_eq!(
            lookup_request(conn, &rid(2)).unwrap(),
            Some((2, Recorded::Return(vec![2])))
        );
        record_requests(conn, &[(rid(9), 9, Recorded::Return(vec![]))], 1000, |_| {}).unwrap();
        assert_eq!(blocks(conn).last(), Some(&(0, vec![rid(9)])));
    }

    /// An upgraded file holds its older records, `ids` in order, in the block before
    /// the first (not counted, until `window` records come after it), and keeps `max`
    /// as the largest id recorded.
    fn assert_legacy_block(conn: &Connection, ids: &[[u8; 16]], max: [u8; 16]) {
        assert_eq!(blocks(conn), vec![(-1, ids.to_vec())]);
        assert_eq!(
            RequestLog::load(conn).unwrap(),
            RequestLog { count: 0, max }
        );
    }

    /// A file of revision 3 (request records in two generations, the current one and
    /// the largest id in `_durable_meta`) opens with every record in blocks, the older
    /// generation's first, the largest id kept, and the old tables and row gone.
    #[test]
    fn a_revision_3_files_two_generations_move_into_blocks_older_first() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let rid = |n: u8| [n; 16];
        // Generation 1 is current (head: count 1 * 2 + 1); the largest id ever recorded
        // (0x09..) is no longer held.
        let mut head = Vec::new();
        head.extend_from_slice(&3u64.to_le_bytes());
        head.extend_from_slice(&rid(9));
        older_file(
            dir.path(),
            id,
            "DROP TABLE _durable_request_blocks;
                 CREATE TABLE _durable_requests_0(id BLOB PRIMARY KEY, kind INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
                 CREATE TABLE _durable_requests_1(id BLOB PRIMARY KEY, kind INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
                 INSERT INTO _durable_requests_0 VALUES
                   (x'02020202020202020202020202020202', 4, x'aa'),
                   (x'01010101010101010101010101010101', 2, x'bb');
                 INSERT INTO _durable_requests_1 VALUES
                   (x'03030303030303030303030303030303', 7, x'cc');
                 PRAGMA user_version = 3;",
            &[(
                "INSERT OR REPLACE INTO _durable_meta(key, value) VALUES ('requests', ?1)",
                &head,
            )],
        );
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(opened.upgraded);
        let conn: &Connection = ctx.conn.conn();
        assert_legacy_block(conn, &[rid(1), rid(2), rid(3)], rid(9));
        assert_eq!(
            lookup_request(conn, &rid(3)).unwrap(),
            Some((3, Recorded::AppError(vec![0xcc])))
        );
        assert_eq!(
            lookup_request(conn, &rid(2)).unwrap(),
            Some((2, Recorded::Return(vec![0xaa])))
        );
        for gone in [c"_durable_requests_0", c"_durable_requests_1"] {
            assert!(!conn.table_exists(Some(c"main"), gone).unwrap());
        }
        let old: Option<Vec<u8>> = conn
            .query_row(
                "SELECT value FROM _durable_meta WHERE key = 'requests'",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        assert_eq!(old, None);
        // The old records stay until `window` new ones were appended (a record made
        // last may sort first by id), then go.
        let window = 2;
        let new = |n: u8| vec![(rid(n), 1, Recorded::Return(vec![]))];
        record_requests(conn, &new(10), window, |_| {}).unwrap();
        assert_eq!(
            lookup_request(conn, &rid(1)).unwrap(),
            Some((1, Recorded::Return(vec![0xbb])))
        );
        record_requests(conn, &new(11), window, |_| {}).unwrap();
        assert_eq!(blocks(conn), vec![(0, vec![rid(10), rid(11)])]);
    }

    /// The hook an activation forgets the file's digest in runs only before an older
    /// file's upgrade, with the file still at its old revision; if it fails, the open
    /// fails and the file is left as it was, and the next open upgrades it.
    #[test]
    fn an_older_files_upgrade_waits_for_the_hook_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let revision = |path: &Path| -> i64 {
            Connection::open(path)
                .unwrap()
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        let path = object_path(dir.path(), "Counter", id);
        let calls = std::cell::Cell::new(0);
        // An open whose hook only counts its calls.
        let open_counted = || {
            open_with(dir.path(), "Counter", id, None, false, None, &mut || {
                calls.set(calls.get() + 1);
                Ok(())
            })
            .unwrap()
        };
        // A new file: no hook.
        let (ctx, opened) = open_counted();
        assert!(opened.upgraded);
        assert_eq!(calls.get(), 0, "a new file has no digest to forget");
        ctx.conn
            .execute_batch(
                "DROP TABLE _durable_request_blocks;
                 CREATE TABLE _durable_requests(seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, kind INTEGER NOT NULL, body BLOB NOT NULL);
                 PRAGMA user_version = 2; PRAGMA wal_checkpoint(TRUNCATE);",
            )
            .unwrap();
        drop(ctx);
        // The hook fails: no upgrade, the open fails.
        let failed = open_with(dir.path(), "Counter", id, None, false, None, &mut || {
            calls.set(calls.get() + 1);
            assert_eq!(revision(&path), 2, "the hook runs before the upgrade");
            Err(rusqlite::Error::InvalidQuery)
        });
        assert!(failed.is_err());
        assert_eq!(calls.get(), 1);
        assert_eq!(
            revision(&path),
            2,
            "a failed hook leaves the file as it was"
        );
        // Then it succeeds: upgraded, the hook run once more.
        let (ctx, opened) = open_counted();
        assert!(opened.upgraded);
        assert_eq!(calls.get(), 2);
        drop(ctx);
        assert_eq!(revision(&path), SCHEMA_REVISION);
        // A current file: no hook.
        let (_ctx, opened) = open_counted();
        assert!(!opened.upgraded);
        assert_eq!(calls.get(), 2);
    }

    /// A file of revision 2 (one request table, ordered by `seq`) opens with its
    /// records in the first generation and the old table gone; an image of revision 2
    /// applied to a file, or replayed with a batch after it, comes out the same way.
    #[test]
    fn an_older_request_table_is_brought_over_on_open_from_an_image_and_in_a_replay() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let (ctx, _) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        let revision_2 = "DROP TABLE _durable_request_blocks;
             CREATE TABLE _durable_requests(seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, kind INTEGER NOT NULL, body BLOB NOT NULL);
             INSERT INTO _durable_requests(seq, id, kind, body) VALUES
               (7, x'02000000000000000000000000000000', 4, x'aa'),
               (8, x'01000000000000000000000000000000', 7, x'bb');
             PRAGMA user_version = 2;";
        let mut one = [0u8; 16];
        one[0] = 1;
        let mut two = [0u8; 16];
        two[0] = 2;
        let check = |conn: &Connection| {
            let revision: i64 = conn
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            assert_eq!(revision, SCHEMA_REVISION);
            assert!(!conn
                .table_exists(Some(c"main"), c"_durable_requests")
                .unwrap());
            assert_eq!(RequestLog::load(conn).unwrap().count, 0);
            assert_eq!(blocks(conn), vec![(-1, vec![two, one])]);
            assert_eq!(
                lookup_request(conn, &one).unwrap(),
                Some((3, Recorded::AppError(vec![0xbb])))
            );
            assert_eq!(
                lookup_request(conn, &two).unwrap(),
                Some((2, Recorded::Return(vec![0xaa])))
            );
            assert_eq!(max_request_id(conn).unwrap(), two);
        };
        ctx.conn
            .execute_batch(&format!("{revision_2} PRAGMA wal_checkpoint(TRUNCATE);"))
            .unwrap();
        drop(ctx);
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(opened.upgraded);
        check(&ctx.conn);
        // The same from an image of revision 2.
        let old = Connection::open_in_memory().unwrap();
        old.execute_batch(SCHEMA).unwrap();
        old.execute_batch(revision_2).unwrap();
        let image = serialize_copy(&old).unwrap();
        let (other, _) =
            open(dir.path(), "Counter", ObjectId::random(), None, false, None).unwrap();
        other.conn.execute_batch("BEGIN").unwrap();
        apply_image_in_txn(&other.conn, &image).unwrap();
        other.conn.execute_batch("COMMIT").unwrap();
        check(&other.conn);
        // A replay (recovery, a rebuild, a restore) of a revision-2 image followed by a
        // batch that recorded a call: the file is brought up before the call's record
        // goes in, and holds all three.
        let path = dir.path().join("replayed.db");
        let mut three = [0u8; 16];
        three[0] = 3;
        let record = |seq: u64, kind: crate::record::RecordKind, payload: Vec<u8>| {
            crate::record::LogRecord {
                lsn: seq,
                time_ms: 0,
                kind,
                class: "Counter".into(),
                object: id,
                seq,
                payload,
            }
        };
        let records = [
            record(1, crate::record::RecordKind::Image, image.clone()),
            record(
                2,
                crate::record::RecordKind::Changes,
                encode_changes(&[], &[(three, 5, Recorded::Return(vec![0xcc]))]),
            ),
        ];
        let (applied, _) = replay(&path, &records, 1000).unwrap();
        assert_eq!(applied, 2);
        let replayed = Connection::open(&path).unwrap();
        let log = RequestLog::load(&replayed).unwrap();
        assert_eq!((log.count, log.max), (1, three));
        assert_eq!(
            lookup_request(&replayed, &three).unwrap(),
            Some((5, Recorded::Return(vec![0xcc])))
        );
        assert_eq!(
            lookup_request(&replayed, &one).unwrap(),
            Some((3, Recorded::AppError(vec![0xbb])))
        );
    }

    #[test]
    fn a_new_object_starts_from_the_template_in_wal_mode_with_the_runtime_tables() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let (ctx, opened) = open(dir.path(), "Counter", id, Some("n"), false, None).unwrap();
        assert!(
            opened.upgraded,
            "a new object's first batch must ship an image"
        );
        assert_eq!(
            (opened.seq, opened.image_ms, opened.earliest_due),
            (0, 0, None)
        );
        let mode: String = ctx
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let page: i64 = ctx
            .conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, PAGE_SIZE);
        let tables: i64 = ctx
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name LIKE '\\_durable\\_%' ESCAPE '\\'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let created = SCHEMA.matches("CREATE ").count() as i64;
        assert_eq!(created, 2);
        assert_eq!(
            tables, created,
            "the runtime tables every object has, no others"
        );
        for lazy in crate::tables::Lazy::ALL {
            assert!(!has_table(&ctx.conn, lazy).unwrap(), "{lazy:?}");
        }
        assert_eq!(ctx.name.as_deref(), Some("n"));
        set_image_seq(&ctx.conn, 7, 1234).unwrap();
        crate::tables::ensure_table(&ctx.conn, Lazy::Alarms).unwrap();
        ctx.conn
            .execute_batch(
                "INSERT INTO _durable_alarms(name, key, due_ms, args) VALUES ('a', '', 99, x''), ('b', '', 42, x'')",
            )
            .unwrap();
        drop(ctx);
        // Opened again, it is a stored object: no image, and what it holds is read back.
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(!opened.upgraded);
        assert_eq!(
            (opened.seq, opened.image_ms, opened.earliest_due),
            (7, 1234, Some(42))
        );
        assert_eq!(opened.seq, stored_seq(&*ctx.conn).unwrap());
        assert_eq!(
            ctx.name.as_deref(),
            Some("n"),
            "the stored name, not asked for"
        );
    }

    #[test]
    fn a_name_that_looks_like_a_number_is_stored_as_written_and_a_converted_one_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let (ctx, _) = open(dir.path(), "Counter", id, Some("007"), false, None).unwrap();
        assert_eq!(ctx.name.as_deref(), Some("007"));
        drop(ctx);
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(opened.from_header);
        assert_eq!(ctx.name.as_deref(), Some("007"));
        // What an earlier runtime stored: the text, which the column made a number.
        ctx.conn
            .execute_batch("UPDATE _durable_meta SET value = '007' WHERE key = 'name'")
            .unwrap();
        let kind: String = ctx
            .conn
            .query_row(
                "SELECT typeof(value) FROM _durable_meta WHERE key = 'name'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(kind, "integer");
        drop(ctx);
        // Unreadable as a name, not an error; the next open that knows the name fixes it.
        let (ctx, _) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert_eq!(ctx.name, None);
        drop(ctx);
        let (ctx, _) = open(dir.path(), "Counter", id, Some("007"), false, None).unwrap();
        assert_eq!(ctx.name.as_deref(), Some("007"));
        drop(ctx);
        let (ctx, _) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert_eq!(ctx.name.as_deref(), Some("007"));
    }

    #[test]
    fn a_stored_object_reopens_from_its_header_and_one_read_and_an_old_one_is_upgraded() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let (mut ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(!opened.from_header, "a new file");
        assert!(
            header_is_current(&ctx.conn),
            "the template's header: WAL, this revision"
        );
        ctx.sql().migrate(&["CREATE TABLE t(x)"]).unwrap();
        set_image_seq(&ctx.conn, 3, 1000).unwrap();
        drop(ctx);
        // Reopened by a name it does not store yet: the name is written (the one read
        // is not all this open needs).
        let (ctx, opened) = open(dir.path(), "Counter", id, Some("late"), false, None).unwrap();
        assert!(!opened.upgraded);
        assert!(!opened.from_header, "the name had to be written");
        assert_eq!((opened.seq, opened.image_ms), (3, 1000));
        assert_eq!(ctx.name.as_deref(), Some("late"));
        drop(ctx);
        // Reopened again: from the header and one read, the name read back, and the
        // schema version read with it is what `migrate` goes by (no read of its own).
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(opened.from_header);
        assert!(!opened.upgraded);
        assert_eq!((opened.seq, opened.image_ms), (3, 1000));
        assert_eq!(ctx.name.as_deref(), Some("late"));
        assert_eq!(
            ctx.conn.assumed_schema_version(),
            Some(crate::db::Assumed {
                version: 1,
                digest: None
            })
        );
        // Run `sql` on the open file, whose header then no longer says it is current,
        // and reopen it: SQLite is asked.
        let reopen_after = |ctx: Context, sql: &str| {
            ctx.conn.execute_batch(sql).unwrap();
            assert!(!header_is_current(&ctx.conn), "{sql}");
            drop(ctx);
            let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
            assert!(!opened.from_header, "{sql}");
            (ctx, opened)
        };
        let revision = |conn: &Connection| -> i64 {
            conn.query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap()
        };
        // An older revision in the header (as an earlier runtime left it): the
        // runtime's tables are brought up to date.
        let (ctx, opened) = reopen_after(
            ctx,
            "PRAGMA user_version = 1; PRAGMA wal_checkpoint(TRUNCATE);",
        );
        assert!(opened.upgraded, "an upgraded file ships an image");
        assert_eq!(revision(&ctx.conn), SCHEMA_REVISION);
        assert_eq!(ctx.name.as_deref(), Some("late"));
        // A file in rollback-journal mode is not taken for one in WAL mode.
        let (ctx, _) = reopen_after(
            ctx,
            "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;",
        );
        let mode: String = ctx
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // An image an earlier runtime logged comes out at this revision: the next open
        // may go by the header.
        let image = serialize_copy(&ctx.conn).unwrap();
        let old = {
            let mut bytes = image.clone();
            bytes[60..64].copy_from_slice(&1i32.to_be_bytes());
            bytes
        };
        ctx.conn.execute_batch("BEGIN").unwrap();
        apply_image_in_txn(&ctx.conn, &old).unwrap();
        ctx.conn.execute_batch("COMMIT").unwrap();
        assert_eq!(revision(&ctx.conn), SCHEMA_REVISION);
    }

    #[test]
    fn a_class_that_taught_its_migrations_gets_files_with_them_applied() {
        let dir = tempfile::tempdir().unwrap();
        let spares =
            crate::spares::Spares::start(dir.path(), template().unwrap(), preopen).unwrap();
        let list = [
            "CREATE TABLE c(n INTEGER NOT NULL)",
            "INSERT INTO c VALUES (0)",
        ];
        spares.learn("Counter", list.iter().map(|m| m.to_string()).collect());
        let deadline = crate::clock::monotonic() + std::time::Duration::from_secs(10);
        while spares.ready_for("Counter") == 0 {
            assert!(
                crate::clock::monotonic() < deadline,
                "no set made for the class"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let id = ObjectId::random();
        let (mut ctx, _) =
            open(dir.path(), "Counter", id, Some("n"), false, Some(&spares)).unwrap();
        let named = ctx.conn.path().unwrap_or_default().to_owned();
        assert!(named.contains("make/c"), "a class's set: {named}");
        // `migrate` finds them applied (and runs nothing: the row is not doubled).
        assert_eq!(ctx.sql().migrate(&list).unwrap(), 2);
        let rows = |ctx: &Context| -> i64 {
            ctx.conn
                .query_row("SELECT count(*) FROM c", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(rows(&ctx), 1);
        let name: String = ctx
            .conn
            .query_row(
                "SELECT value FROM _durable_meta WHERE key = 'id'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(name, id.to_string());
        ctx.conn.execute("UPDATE c SET n = 5", []).unwrap();
        drop(ctx);
        // Another class's new object gets a plain file.
        let other = ObjectId::random();
        let (mut plain, _) = open(dir.path(), "Other", other, None, false, Some(&spares)).unwrap();
        assert_eq!(plain.sql().migrate(&["CREATE TABLE o(x)"]).unwrap(), 1);
        let c: i64 = plain
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'c'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(c, 0);
        drop(plain);
        // Reopened from its own path: what it holds is its own.
        let (mut ctx, opened) =
            open(dir.path(), "Counter", id, None, false, Some(&spares)).unwrap();
        assert!(!opened.upgraded);
        assert_eq!(ctx.sql().migrate(&list).unwrap(), 2);
        let n: i64 = ctx
            .conn
            .query_row("SELECT n FROM c", [], |r| r.get(0))
            .unwrap();
        assert_eq!((rows(&ctx), n), (1, 5));
    }

    #[test]
    fn a_class_whose_migrations_do_not_apply_alone_gets_no_sets_and_blocks_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let spares =
            crate::spares::Spares::start(dir.path(), template().unwrap(), preopen).unwrap();
        // Learnt from a file its constructor had given a table first: alone, it fails.
        spares.learn("Bad", vec!["ALTER TABLE kv ADD COLUMN y".into()]);
        spares.learn("Good", vec!["CREATE TABLE g(x)".into()]);
        let deadline = crate::clock::monotonic() + std::time::Duration::from_secs(10);
        while spares.ready_for("Good") == 0 {
            assert!(
                crate::clock::monotonic() < deadline,
                "the other class got no set"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(spares.ready_for("Bad"), 0);
        let (mut ctx, _) = open(
            dir.path(),
            "Bad",
            ObjectId::random(),
            None,
            false,
            Some(&spares),
        )
        .unwrap();
        assert_eq!(ctx.sql().migrate(&["CREATE TABLE kv(x)"]).unwrap(), 1);
    }

    #[test]
    fn a_spare_opened_ahead_has_the_statements_of_open_prepared() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spare.db");
        crate::files::create_db_from(&path, template().unwrap()).unwrap();
        let conn = preopen(&path, None).unwrap();
        let prepared = |sql: &str| -> bool {
            // SAFETY: walks the connection's own list of statements, read only, while
            // no other thread uses it.
            unsafe {
                let db = conn.handle();
                let mut st = rusqlite::ffi::sqlite3_next_stmt(db, std::ptr::null_mut());
                while !st.is_null() {
                    let text = std::ffi::CStr::from_ptr(rusqlite::ffi::sqlite3_sql(st));
                    if text.to_str() == Ok(sql) {
                        return true;
                    }
                    st = rusqlite::ffi::sqlite3_next_stmt(db, st);
                }
            }
            false
        };
        for sql in [BEGIN, WRITE_IDENTITY, WRITE_NAME, COMMIT] {
            assert!(prepared(sql), "{sql}");
        }
        // Left `OFF` until `open` has made the object's first commit, which then syncs
        // neither the WAL (whose header it writes) nor the WAL's directory.
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 0, "OFF");
        // A class's set: its migrations' commit wrote the WAL's header; `NORMAL` after.
        drop(conn);
        let path = dir.path().join("class.db");
        crate::files::create_db_from(&path, template().unwrap()).unwrap();
        let migrations = crate::spares::Migrations {
            list: vec!["CREATE TABLE t(x)".into()],
            digest: 7,
        };
        let conn = preopen(&path, Some(&migrations)).unwrap();
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 1, "NORMAL");
    }

    #[test]
    fn a_new_object_on_a_spare_opened_ahead_writes_its_own_files() {
        let dir = tempfile::tempdir().unwrap();
        let spares =
            crate::spares::Spares::start(dir.path(), template().unwrap(), preopen).unwrap();
        let deadline = crate::clock::monotonic() + std::time::Duration::from_secs(10);
        while spares.preopened() == 0 {
            assert!(
                crate::clock::monotonic() < deadline,
                "no spare was opened ahead"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let id = ObjectId::random();
        let (mut ctx, opened) =
            open(dir.path(), "Counter", id, Some("n"), false, Some(&spares)).unwrap();
        assert!(opened.upgraded);
        // The connection is the one opened ahead: SQLite still names the file where
        // it was made.
        let named = ctx.conn.path().unwrap_or_default().to_owned();
        assert!(named.contains("make"), "{named}");
        // Set up as a file opened here would be: settings, and the runtime's records.
        let pragma = |p: &str| -> i64 { ctx.conn.query_row(p, [], |r| r.get(0)).unwrap() };
        assert_eq!(pragma("PRAGMA synchronous"), 1, "NORMAL");
        assert_eq!(pragma("PRAGMA cache_size"), CACHE_KIB);
        assert_eq!(pragma("PRAGMA temp_store"), 2, "MEMORY");
        assert_eq!(pragma("PRAGMA user_version"), SCHEMA_REVISION);
        let meta = |k: &str| -> String {
            ctx.conn
                .query_row("SELECT value FROM _durable_meta WHERE key = ?1", [k], |r| {
                    Ok(stored_name(r.get_ref(0)?).unwrap_or_default())
                })
                .unwrap()
        };
        assert_eq!(meta("class"), "Counter");
        assert_eq!(meta("id"), id.to_string());
        assert_eq!(meta("name"), "n");
        // `migrate` knows the file's version (none) without a statement of its own.
        assert_eq!(
            ctx.conn.assumed_schema_version(),
            Some(crate::db::Assumed {
                version: 0,
                digest: None
            })
        );
        let migrations = ["CREATE TABLE t(x)", "INSERT INTO t VALUES (42)"];
        assert_eq!(ctx.sql().migrate(&migrations).unwrap(), 2);
        let version: i64 = ctx
            .conn
            .query_row(
                "SELECT value FROM _durable_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 2);
        // Its writes are in the object's own files (the WAL beside the database).
        let path = object_path(dir.path(), "Counter", id);
        let other = crate::wal_index::open(&path, Default::default()).unwrap();
        let x: i64 = other
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 42);
        drop(other);
        drop(ctx);
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            assert!(std::path::Path::new(&p).exists(), "{suffix}");
        }
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, Some(&spares)).unwrap();
        assert!(!opened.upgraded);
        assert_eq!(ctx.name.as_deref(), Some("n"));
        let x: i64 = ctx
            .conn
            .query_row("SELECT x FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(x, 42);
    }

    /// An object with a WAL of `rows` writes (1 KiB each), closed and reopened.
    fn written(dir: &Path, id: ObjectId, rows: i64) -> Context {
        let (mut ctx, _) = open(dir, "Counter", id, None, false, None).unwrap();
        ctx.sql()
            .migrate(&["CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)"])
            .unwrap();
        for k in 0..rows {
            ctx.conn
                .execute("INSERT INTO t VALUES (?1, zeroblob(1000))", [k])
                .unwrap();
        }
        ctx
    }

    fn wal_len(path: &Path) -> u64 {
        std::fs::metadata(crate::files::wal_path(path))
            .unwrap()
            .len()
    }

    fn rows(path: &Path) -> i64 {
        // As the host's connections are: closing it leaves the WAL where it is.
        let conn = connect(path, true).unwrap();
        conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_closing_objects_large_wal_is_copied_into_its_file_and_truncated_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let path = object_path(dir.path(), "Counter", id);
        let ctx = written(dir.path(), id, 200);
        assert!(wal_len(&path) >= COMPACT_WAL_BYTES);
        let marked = compact_on_close(&ctx.conn, &path).expect("a WAL worth compacting");
        drop(ctx);
        assert!(
            wal_len(&path) >= COMPACT_WAL_BYTES,
            "nothing truncated before the sync"
        );
        assert!(marked.finish());
        assert_eq!(wal_len(&path), 0);
        assert_eq!(rows(&path), 200, "every row is in the file");
        // The next open finds an empty WAL: its first commit writes the WAL's header
        // unsynced (`OFF`), and the caller sets `NORMAL` after it.
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(opened.from_header);
        assert!(opened.sync_off);
        let sync = |c: &Connection| -> i64 {
            c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap()
        };
        let autocheckpoint = |c: &Connection| -> i64 {
            c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(sync(&ctx.conn), 0, "OFF");
        assert_eq!(autocheckpoint(&ctx.conn), 0, "no checkpoint at OFF");
        ctx.conn
            .execute("INSERT INTO t VALUES (1000, zeroblob(10))", [])
            .unwrap();
        sync_normal(&ctx.conn).unwrap();
        assert_eq!(sync(&ctx.conn), 1, "NORMAL");
        assert_eq!(autocheckpoint(&ctx.conn), AUTOCHECKPOINT_PAGES);
        drop(ctx);
        assert_eq!(rows(&path), 201);
        // A WAL with frames: `NORMAL` from the start.
        let (ctx, opened) = open(dir.path(), "Counter", id, None, false, None).unwrap();
        assert!(!opened.sync_off);
        assert_eq!(sync(&ctx.conn), 1, "NORMAL");
    }

    #[test]
    fn a_compaction_is_dropped_when_a_connection_opens_the_file_before_it_finishes() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (ObjectId::random(), ObjectId::random());
        let (path_a, path_b) = (
            object_path(dir.path(), "Counter", a),
            object_path(dir.path(), "Counter", b),
        );
        // Reopened, written and closed between the mark and the compaction: the WAL
        // stays (the compaction copies it, but does not truncate it).
        let ctx = written(dir.path(), a, 100);
        let marked = compact_on_close(&ctx.conn, &path_a).unwrap();
        drop(ctx);
        let (ctx, _) = open(dir.path(), "Counter", a, None, false, None).unwrap();
        ctx.conn
            .execute("INSERT INTO t VALUES (1000, zeroblob(10))", [])
            .unwrap();
        drop(ctx);
        let before = wal_len(&path_a);
        assert!(!marked.finish());
        assert_eq!(wal_len(&path_a), before);
        assert_eq!(rows(&path_a), 101);
        // A reader that has the file open as its object closes: no mark (a connection
        // that mapped the index before the mark could never cancel it), and the WAL
        // stays.
        let ctx = written(dir.path(), b, 100);
        let reader = connect(&path_b, true).unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 100);
        assert!(compact_on_close(&ctx.conn, &path_b).is_none());
        // Gone before the mark: marked.
        drop(reader);
        let marked = compact_on_close(&ctx.conn, &path_b).expect("marked");
        // Opened after the mark, still open when the copy is done: the WAL stays.
        let reader = connect(&path_b, true).unwrap();
        let n: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 100);
        drop(ctx);
        let before = wal_len(&path_b);
        assert!(!marked.finish());
        assert_eq!(wal_len(&path_b), before);
        drop(reader);
        assert_eq!(rows(&path_b), 100);
    }

    #[test]
    fn a_compacted_object_opened_by_a_name_it_does_not_store_yet_keeps_sqlites_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let path = object_path(dir.path(), "Counter", id);
        let ctx = written(dir.path(), id, 100);
        let marked = compact_on_close(&ctx.conn, &path).unwrap();
        drop(ctx);
        assert!(marked.finish());
        // The name's write commits in `open` itself: `NORMAL` and the automatic
        // checkpoint from there on.
        let (ctx, opened) = open(dir.path(), "Counter", id, Some("late"), false, None).unwrap();
        assert!(!opened.sync_off);
        let pragma = |sql: &str| -> i64 { ctx.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(pragma("PRAGMA synchronous"), 1, "NORMAL");
        assert_eq!(pragma("PRAGMA wal_autocheckpoint"), AUTOCHECKPOINT_PAGES);
    }

    #[test]
    fn a_compacted_files_truncation_lost_to_a_power_cut_replays_its_wal_onto_the_same_pages() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let path = object_path(dir.path(), "Counter", id);
        let ctx = written(dir.path(), id, 200);
        // Rows rewritten and deleted, so that the WAL holds several versions of pages.
        ctx.conn
            .execute_batch(
                "UPDATE t SET v = zeroblob(500) WHERE k % 3 = 0; DELETE FROM t WHERE k % 7 = 0;",
            )
            .unwrap();
        let expected: i64 = ctx
            .conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        let marked = compact_on_close(&ctx.conn, &path).unwrap();
        drop(ctx);
        // The WAL as the compaction synced it before copying.
        let wal = std::fs::read(crate::files::wal_path(&path)).unwrap();
        assert!(marked.finish());
        assert_eq!(wal_len(&path), 0);
        // The truncation did not reach the disk: the WAL is back beside the file.
        std::fs::write(crate::files::wal_path(&path), &wal).unwrap();
        let conn = connect(&path, true).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, expected);
    }

    #[test]
    fn a_small_wal_or_an_open_transaction_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let id = ObjectId::random();
        let path = object_path(dir.path(), "Counter", id);
        let ctx = written(dir.path(), id, 5);
        assert!(compact_on_close(&ctx.conn, &path).is_none(), "a small WAL");
        for k in 5..200 {
            ctx.conn
                .execute("INSERT INTO t VALUES (?1, zeroblob(1000))", [k])
                .unwrap();
        }
        ctx.conn.execute_batch("BEGIN").unwrap();
        assert!(
            compact_on_close(&ctx.conn, &path).is_none(),
            "a transaction"
        );
        ctx.conn.execute_batch("COMMIT").unwrap();
        assert!(compact_on_close(&ctx.conn, &path).is_some());
    }

    #[test]
    fn at_most_a_few_compactions_run_at_once_and_a_dropped_one_gives_its_place_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Vec::new();
        let mut refused = None;
        for _ in 0..MAX_COMPACTIONS + 1 {
            let id = ObjectId::random();
            let ctx = written(dir.path(), id, 100);
            let path = object_path(dir.path(), "Counter", id);
            match compact_on_close(&ctx.conn, &path) {
                Some(c) => held.push(c),
                None => {
                    refused = Some((ctx, path));
                    break;
                }
            }
        }
        // (Other tests of this process may hold a place meanwhile.)
        assert!(!held.is_empty() && held.len() <= MAX_COMPACTIONS);
        let (ctx, path) = refused.expect("one past the most is refused");
        held.pop();
        assert!(compact_on_close(&ctx.conn, &path).is_some());
    }
}
