//! Object files' WAL index in the host's memory: a SQLite VFS, [`VFS_NAME`], that is
//! the platform's `unix` VFS except for the shared-memory methods and the database's
//! locks. Files open through SQLite's `unix-none` (the `unix` VFS without `fcntl`
//! locks and without its list of open files, which every open walks); a main
//! database's locks are kept by the `file_locks` module with the `unix` VFS's
//! semantics between connections of one process.
//!
//! A WAL database needs an index of its WAL shared by every connection to it. The
//! `unix` VFS keeps it in a `-shm` file mapped into memory, and coordinates through
//! `fcntl` locks on that file: the first connection to a file truncates it, grows it
//! page by page and maps it; every read transaction locks and unlocks a byte of it.
//! For an object, whose connections all live in the host, that is about forty system
//! calls per activation (half of all an activation makes) for no sharing at all.
//!
//! Here the index of each file (keyed by device and inode, so a spare renamed into
//! place keeps its index) is heap memory shared by the connections of this process,
//! with the same lock semantics under a mutex. One `fcntl` lock keeps other processes
//! out: while the host has a file's index, it holds a write lock on the byte of the
//! file's `-shm` that SQLite's `unix` VFS takes first ("dead man switch"), so a
//! `sqlite3` shell or another program opening the file meanwhile is refused
//! (`SQLITE_BUSY`, or `SQLITE_PROTOCOL` once SQLite's retries give up) rather than
//! given an index of its own that would not see the host's writes. (Operator
//! commands read object files by copying them instead: the `file_copy` module.) The
//! other way round, a program that opened a file through SQLite while the host had it
//! closed makes the host's next open of it fail at once, with a log line naming it.
//!
//! **Rule.** Every connection of this process to an object file must use this VFS
//! ([`open`]): a connection through `unix` would build an
//! index of its own, and closing it would release the process's `fcntl` lock on the
//! `-shm` (POSIX drops every lock a process holds on a file when it closes any of its
//! descriptors).

use crate::file_locks;
use rusqlite::ffi;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::{Arc, Mutex, OnceLock};

/// The VFS's name, for `sqlite3_open_v2`.
pub(crate) const VFS_NAME: &str = "durable-objects";

/// SQLite's shared-memory lock slots (`SQLITE_SHM_NLOCK`).
const NLOCK: usize = 8;

/// The byte of a `-shm` file the `unix` VFS locks to learn whether it is the first
/// connection (`UNIX_SHM_DMS`: `(22 + SQLITE_SHM_NLOCK) * 4 + SQLITE_SHM_NLOCK`).
const DMS_BYTE: i64 = 128;

/// One file's index, shared by its connections in this process.
struct Node {
    state: Mutex<State>,
    /// The file's `-shm`, write-locked at [`DMS_BYTE`] while the node lives (closing
    /// it releases the lock).
    _lock: std::fs::File,
}

#[derive(Default)]
struct State {
    /// The index's regions (32 KiB each, as 8-byte words: SQLite reads them as
    /// aligned integers); a region's memory never moves.
    regions: Vec<Box<[u64]>>,
    /// Per lock slot: connections holding it shared.
    shared: [u32; NLOCK],
    /// Per lock slot: whether a connection holds it exclusively.
    exclusive: [bool; NLOCK],
}

impl Drop for State {
    fn drop(&mut self) {
        spare_regions().give_back(std::mem::take(&mut self.regions));
    }
}

/// Regions kept for reuse: a closed file's index gives its regions back, and the next
/// file opened takes one instead of new memory. (New memory costs a page fault per 4
/// KiB page as SQLite first writes it: with the allocation's own zeroing, about a
/// twentieth of an activation's time on the shard.)
struct SpareRegions {
    regions: Mutex<Vec<Box<[u64]>>>,
    /// The most regions kept.
    cap: usize,
}

impl SpareRegions {
    const fn new(cap: usize) -> SpareRegions {
        SpareRegions {
            regions: Mutex::new(Vec::new()),
            cap,
        }
    }

    /// A zeroed region of `words` 8-byte words: a spare one cleared, else new memory.
    fn take(&self, words: usize) -> Box<[u64]> {
        let spare = {
            let mut spare = self.regions.lock().unwrap_or_else(|e| e.into_inner());
            spare
                .iter()
                .rposition(|r| r.len() == words)
                .map(|i| spare.swap_remove(i))
        };
        match spare {
            Some(mut region) => {
                region.fill(0);
                region
            }
            None => vec![0u64; words].into_boxed_slice(),
        }
    }

    /// Keep `regions`, up to the cap; free the rest.
    fn give_back(&self, regions: Vec<Box<[u64]>>) {
        if regions.is_empty() {
            return;
        }
        let mut spare = self.regions.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.cap.saturating_sub(spare.len());
        spare.extend(regions.into_iter().take(room));
    }
}

/// The host's spare regions: up to 64 (2 MiB).
fn spare_regions() -> &'static SpareRegions {
    static SPARE: SpareRegions = SpareRegions::new(64);
    &SPARE
}

type Key = (u64, u64);

fn nodes() -> &'static Mutex<HashMap<Key, Arc<Node>>> {
    static NODES: OnceLock<Mutex<HashMap<Key, Arc<Node>>>> = OnceLock::new();
    NODES.get_or_init(Default::default)
}

/// Files marked for a WAL compaction ([`mark_compaction`]), by key. Locked only
/// while [`nodes`] is, or alone (never the other way round).
fn marks() -> &'static Mutex<HashMap<Key, Mark>> {
    static MARKS: OnceLock<Mutex<HashMap<Key, Mark>>> = OnceLock::new();
    MARKS.get_or_init(Default::default)
}

/// Signalled when a truncation ends ([`Mark::Truncating`] removed).
fn truncated() -> &'static std::sync::Condvar {
    static TRUNCATED: std::sync::Condvar = std::sync::Condvar::new();
    &TRUNCATED
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mark {
    /// Marked with this token; no connection has mapped the file's index since.
    Marked(u64),
    /// Its WAL is being truncated: a connection that maps the index waits.
    Truncating,
}

std::thread_local! {
    /// The file whose compaction this thread is running ([`compacting`]): its own
    /// connection's mapping does not cancel the mark.
    static COMPACTING: std::cell::Cell<Option<Key>> = const { std::cell::Cell::new(None) };
}

/// An object file marked for a WAL compaction: its WAL is to be copied into it, the
/// file synced and the WAL truncated, off the shard (by the store module).
#[derive(Debug)]
pub(crate) struct Compaction {
    key: Key,
    token: u64,
}

/// Mark the object file at `path` for a WAL compaction, as its object's connection
/// closes. From here on, any connection of this process that maps the file's index
/// (other than the compaction's own, see [`compacting`]) cancels the mark: it may
/// write new frames, or hold the index where the truncation would pull the WAL from
/// under it.
pub(crate) fn mark_compaction(path: &std::path::Path) -> std::io::Result<Compaction> {
    static TOKENS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    if !register() {
        // Connections then open through `unix`, whose index this module cannot see.
        return Err(std::io::Error::other("no WAL index of this process's own"));
    }
    let m = std::fs::metadata(path)?;
    let key = (m.dev(), m.ino());
    let token = TOKENS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nodes = nodes().lock().unwrap_or_else(|e| e.into_inner());
    // The map's reference and the closing connection's: another connection that mapped
    // the index before the mark would never cancel it (it maps once), so none may have.
    if nodes.get(&key).is_some_and(|n| Arc::strong_count(n) > 2) {
        return Err(std::io::Error::other(
            "another connection has the file open",
        ));
    }
    let mut marks = marks().lock().unwrap_or_else(|e| e.into_inner());
    if marks.get(&key) == Some(&Mark::Truncating) {
        return Err(std::io::Error::other("a truncation is under way"));
    }
    marks.insert(key, Mark::Marked(token));
    Ok(Compaction { key, token })
}

/// Run `f` (which opens the compaction's own connection to the file, copies its WAL
/// and closes it) without that connection cancelling the mark.
pub(crate) fn compacting<T>(c: &Compaction, f: impl FnOnce() -> T) -> T {
    /// Clears [`COMPACTING`] however `f` ends (a panic included).
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            COMPACTING.with(|k| k.set(None));
        }
    }
    COMPACTING.with(|k| k.set(Some(c.key)));
    let _clear = Clear;
    f()
}

/// A compaction dropped unfinished (a failed copy, a panic, a task that never ran)
/// takes its mark with it. (After [`finish_compaction`] the mark is gone already.)
impl Drop for Compaction {
    fn drop(&mut self) {
        let _nodes = nodes().lock().unwrap_or_else(|e| e.into_inner());
        let mut marks = marks().lock().unwrap_or_else(|e| e.into_inner());
        if marks.get(&self.key) == Some(&Mark::Marked(self.token)) {
            marks.remove(&self.key);
        }
    }
}

/// Truncate the WAL of the file at `path` to nothing, if that is still safe: its mark
/// is the one [`mark_compaction`] gave (no other connection of this process mapped the
/// file's index since), no connection has it mapped now, and `path` still names that
/// file (a restore may have replaced it). The caller has copied every frame into the
/// file with SQLite's own ordering (the WAL synced, then the file, see
/// the store module's compaction): the file holds every frame the WAL does,
/// durably, and the WAL's frames are durable too (should the truncation itself not
/// survive a power cut, they replay onto the same pages). Returns whether it
/// truncated. A connection that maps the file's index meanwhile waits for the
/// truncation (a system call) to end; others never do.
pub(crate) fn finish_compaction(path: &std::path::Path, c: Compaction) -> std::io::Result<bool> {
    let wal = {
        let nodes = nodes().lock().unwrap_or_else(|e| e.into_inner());
        let mut marks = marks().lock().unwrap_or_else(|e| e.into_inner());
        if marks.get(&c.key) != Some(&Mark::Marked(c.token)) {
            return Ok(false);
        }
        if nodes.contains_key(&c.key) {
            marks.remove(&c.key);
            return Ok(false);
        }
        let not_found = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(false)
            } else {
                Err(e)
            }
        };
        match std::fs::metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == c.key => {}
            other => {
                marks.remove(&c.key);
                return other.map(|_| false).or_else(not_found);
            }
        }
        // Opened here, where the file is known to be the marked one: a WAL that a
        // restore puts in place once the locks are let go is never touched.
        match std::fs::OpenOptions::new()
            .write(true)
            .open(crate::files::wal_path(path))
        {
            Ok(f) => {
                marks.insert(c.key, Mark::Truncating);
                f
            }
            Err(e) => {
                marks.remove(&c.key);
                return not_found(e);
            }
        }
    };
    let result = wal.set_len(0).map(|()| true);
    marks()
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&c.key);
    truncated().notify_all();
    result
}

/// How many valid frames the WAL of the database open on `conn` holds, as the WAL
/// index in this process's memory says (`mxFrame` of SQLite's `WalIndexHdr`, at byte
/// 16 of the index's first region, in native byte order). No system call: what the
/// connection's last read transaction built or found. `None` if the connection is not
/// through this VFS, has not mapped the index, or the index is not initialized.
pub(crate) fn wal_frames(conn: &rusqlite::Connection) -> Option<u32> {
    let mut file: *mut ffi::sqlite3_file = std::ptr::null_mut();
    // SAFETY: `conn` is open; SQLITE_FCNTL_FILE_POINTER writes the main database's open
    // file (owned by SQLite, valid while the connection is) into `file`. It is one of
    // ours only if its methods are this VFS's, and then it starts with a `File` whose
    // node, if set, came from `Arc::into_raw` and lives until the file's `xClose`.
    unsafe {
        let rc = ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            ffi::SQLITE_FCNTL_FILE_POINTER,
            (&mut file as *mut *mut ffi::sqlite3_file).cast(),
        );
        if rc != ffi::SQLITE_OK || file.is_null() || !std::ptr::eq((*file).pMethods, &METHODS) {
            return None;
        }
        let f = &*(file as *const File);
        if f.node.is_null() {
            return None;
        }
        let state = (*f.node).state.lock().unwrap_or_else(|e| e.into_inner());
        let words = state.regions.first()?;
        // Bytes 12..16: `isInit` (byte 12); bytes 16..20: `mxFrame`.
        let [w1, w2] = [words.get(1)?, words.get(2)?].map(|w| w.to_ne_bytes());
        if w1[4] != 1 {
            return None;
        }
        Some(u32::from_ne_bytes(w2[..4].try_into().expect("4 bytes")))
    }
}

/// Our part of a `sqlite3_file`; the `unix` VFS's file follows at [`HEADER`].
#[repr(C)]
struct File {
    base: ffi::sqlite3_file,
    /// The file's name as SQLite gave it to `xOpen` (valid until `xClose`), for a main
    /// database; null otherwise.
    path: *const c_char,
    /// Device and inode of a main database.
    key: Key,
    /// The node of this connection (from `Arc::into_raw`), once it mapped the index.
    node: *const Node,
    /// Lock slots this connection holds shared / exclusively (bit i: slot i).
    shared: u8,
    exclusive: u8,
    /// The database lock this connection holds (`SQLITE_LOCK_*`), if `locked`.
    level: c_int,
    /// Whether this main database's locks are kept in `file_locks` (attached at open,
    /// detached at close).
    locked: bool,
}

const HEADER: usize = (std::mem::size_of::<File>() + 15) & !15;

/// The VFS files open through, found once, and whether our own methods keep main
/// databases' locks: `unix-none` (no `fcntl` locks, no list of open files to walk at
/// each open; `file_locks` keeps the locks instead), else `unix` with its own.
fn inner() -> (*mut ffi::sqlite3_vfs, bool) {
    static INNER: OnceLock<(Vfs, bool)> = OnceLock::new();
    let (vfs, own_locks) = INNER.get_or_init(|| {
        // SAFETY: a NUL-terminated name; returns null or a registered VFS.
        let none = unsafe { ffi::sqlite3_vfs_find(c"unix-none".as_ptr()) };
        // The same file object (its size is what `register` reserved).
        // SAFETY: both are registered VFS objects.
        if !none.is_null() && unsafe { (*none).szOsFile == (*unix()).szOsFile } {
            (Vfs(none), true)
        } else {
            (Vfs(unix()), false)
        }
    });
    (vfs.0, *own_locks)
}

/// A registered VFS, kept in a static.
struct Vfs(*mut ffi::sqlite3_vfs);
// SAFETY: VFS objects are registered once and never freed; SQLite reads them from any
// thread.
unsafe impl Send for Vfs {}
unsafe impl Sync for Vfs {}

/// The `unix` VFS, found once.
fn unix() -> *mut ffi::sqlite3_vfs {
    static UNIX: OnceLock<Vfs> = OnceLock::new();
    UNIX.get_or_init(|| {
        // SAFETY: a NUL-terminated name; returns null or a registered VFS.
        Vfs(unsafe { ffi::sqlite3_vfs_find(c"unix".as_ptr()) })
    })
    .0
}

/// Register the VFS (once; after SQLite's process-wide configuration, since
/// registering initializes SQLite). Returns false if it could not be (no `unix` VFS):
/// object files then open through the default VFS.
pub(crate) fn register() -> bool {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    *REGISTERED.get_or_init(|| {
        let unix = unix();
        if unix.is_null() {
            return false;
        }
        // SAFETY: `unix` is a registered VFS; the copy is leaked (VFS objects must live
        // as long as the process) and only its open method and file size differ.
        unsafe {
            let mut vfs = *unix;
            vfs.szOsFile = HEADER as c_int + (*unix).szOsFile;
            vfs.zName = c"durable-objects".as_ptr();
            vfs.pNext = std::ptr::null_mut();
            vfs.xOpen = Some(x_open);
            vfs.xFullPathname = Some(x_full_pathname);
            let vfs = Box::leak(Box::new(vfs));
            ffi::sqlite3_vfs_register(vfs, 0) == ffi::SQLITE_OK
        }
    })
}

/// Open an object file (or a spare, or a copy being made into one) through this VFS:
/// the only way this process may open one (see the module's rule).
pub(crate) fn open(
    path: &std::path::Path,
    flags: rusqlite::OpenFlags,
) -> rusqlite::Result<rusqlite::Connection> {
    if register() {
        rusqlite::Connection::open_with_flags_and_vfs(path, flags, VFS_NAME)
    } else {
        rusqlite::Connection::open_with_flags(path, flags)
    }
}

/// An absolute path is used as it is (the `unix` VFS resolves symbolic links one path
/// element at a time, a system call each, so that a database reached through a link
/// gets its WAL beside the link's target: object files are never links, and a link
/// among their directories leads their WAL to the same place either way). Others are
/// resolved by `unix`.
unsafe extern "C" fn x_full_pathname(
    vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    n_out: c_int,
    out: *mut c_char,
) -> c_int {
    // SAFETY: `name` is NUL-terminated; `out` has room for `n_out` bytes.
    unsafe {
        let bytes = CStr::from_ptr(name).to_bytes_with_nul();
        if bytes.first() == Some(&b'/') {
            if bytes.len() > n_out.max(0) as usize {
                return ffi::SQLITE_CANTOPEN;
            }
            std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, out, bytes.len());
            return ffi::SQLITE_OK;
        }
        let unix = unix();
        let _ = vfs;
        ((*unix).xFullPathname.expect("unix xFullPathname"))(unix, name, n_out, out)
    }
}

/// A NUL-terminated path as a `Path` (any bytes).
///
/// # Safety
/// `name` is a NUL-terminated string that outlives the result.
unsafe fn path_of<'a>(name: *const c_char) -> &'a std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(unsafe {
        CStr::from_ptr(name).to_bytes()
    }))
}

/// The file (device and inode) the path `name` names now, if any.
///
/// # Safety
/// As [`path_of`].
unsafe fn key_at(name: *const c_char) -> Option<Key> {
    let m = std::fs::metadata(unsafe { path_of(name) }).ok()?;
    Some((m.dev(), m.ino()))
}

/// The `unix` file inside ours.
///
/// # Safety
/// `f` points to a file this VFS opened.
unsafe fn real(f: *mut ffi::sqlite3_file) -> *mut ffi::sqlite3_file {
    unsafe { (f as *mut u8).add(HEADER) as *mut ffi::sqlite3_file }
}

/// The `unix` file's methods.
///
/// # Safety
/// `f` points to a file this VFS opened successfully.
unsafe fn methods(f: *mut ffi::sqlite3_file) -> &'static ffi::sqlite3_io_methods {
    unsafe { &*(*real(f)).pMethods }
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    // SAFETY: SQLite hands us `szOsFile` bytes for `file`; `name` is null or a
    // NUL-terminated path valid until `xClose`.
    unsafe {
        std::ptr::write(
            file as *mut File,
            File {
                base: ffi::sqlite3_file {
                    pMethods: std::ptr::null(),
                },
                path: std::ptr::null(),
                key: (0, 0),
                node: std::ptr::null(),
                shared: 0,
                exclusive: 0,
                level: file_locks::NONE,
                locked: false,
            },
        );
        let main = flags & ffi::SQLITE_OPEN_MAIN_DB != 0 && !name.is_null();
        // The inode the path names before the open and after it: the descriptor opened
        // in between is that file's (a file renamed onto the path meanwhile would give
        // this connection another file's index and locks).
        let before = if main { key_at(name) } else { None };
        let (inner, own_locks) = inner();
        let rc = ((*inner).xOpen.expect("xOpen"))(inner, name, real(file), flags, out_flags);
        if rc != ffi::SQLITE_OK || (*real(file)).pMethods.is_null() {
            return rc;
        }
        let f = &mut *(file as *mut File);
        f.base.pMethods = &METHODS;
        if main {
            match key_at(name) {
                Some(key) if before.is_none_or(|b| b == key) => {
                    f.path = name;
                    f.key = key;
                    if own_locks {
                        file_locks::attach(key);
                        f.locked = true;
                    }
                }
                // Renamed over, or gone (a database without locks would be left).
                _ if own_locks || before.is_some() => {
                    x_close(file);
                    return ffi::SQLITE_CANTOPEN;
                }
                _ => {}
            }
        }
        rc
    }
}

static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(x_close),
    xRead: Some(x_read),
    xWrite: Some(x_write),
    xTruncate: Some(x_truncate),
    xSync: Some(x_sync),
    xFileSize: Some(x_file_size),
    xLock: Some(x_lock),
    xUnlock: Some(x_unlock),
    xCheckReservedLock: Some(x_check_reserved_lock),
    xFileControl: Some(x_file_control),
    xSectorSize: Some(x_sector_size),
    xDeviceCharacteristics: Some(x_device_characteristics),
    xShmMap: Some(x_shm_map),
    xShmLock: Some(x_shm_lock),
    xShmBarrier: Some(x_shm_barrier),
    xShmUnmap: Some(x_shm_unmap),
    xFetch: Some(x_fetch),
    xUnfetch: Some(x_unfetch),
};

// Everything but shared memory goes to the `unix` file as it is.
// SAFETY (all forwarding methods): SQLite calls them only on a file this VFS opened
// successfully, whose `unix` part has its methods set.

unsafe extern "C" fn x_close(f: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        release(f);
        let file = &mut *(f as *mut File);
        if file.locked {
            file_locks::detach(file.key, file.level);
            file.locked = false;
        }
        let rc = (methods(f).xClose.expect("xClose"))(real(f));
        (*f).pMethods = std::ptr::null();
        rc
    }
}
unsafe extern "C" fn x_read(f: *mut ffi::sqlite3_file, b: *mut c_void, n: c_int, o: i64) -> c_int {
    unsafe { (methods(f).xRead.expect("xRead"))(real(f), b, n, o) }
}
unsafe extern "C" fn x_write(
    f: *mut ffi::sqlite3_file,
    b: *const c_void,
    n: c_int,
    o: i64,
) -> c_int {
    unsafe { (methods(f).xWrite.expect("xWrite"))(real(f), b, n, o) }
}
unsafe extern "C" fn x_truncate(f: *mut ffi::sqlite3_file, size: i64) -> c_int {
    unsafe { (methods(f).xTruncate.expect("xTruncate"))(real(f), size) }
}
unsafe extern "C" fn x_sync(f: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    unsafe { (methods(f).xSync.expect("xSync"))(real(f), flags) }
}
unsafe extern "C" fn x_file_size(f: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    unsafe { (methods(f).xFileSize.expect("xFileSize"))(real(f), size) }
}
// A main database's locks are in `file_locks` when its inner file takes none
// (`unix-none`); other files (a temporary database) are this connection's alone.
unsafe extern "C" fn x_lock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe {
        let file = &mut *(f as *mut File);
        if !file.locked {
            return (methods(f).xLock.expect("xLock"))(real(f), level);
        }
        match file_locks::lock(file.key, &mut file.level, level) {
            Ok(()) => ffi::SQLITE_OK,
            Err(file_locks::Busy) => ffi::SQLITE_BUSY,
        }
    }
}
unsafe extern "C" fn x_unlock(f: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    unsafe {
        let file = &mut *(f as *mut File);
        if !file.locked {
            return (methods(f).xUnlock.expect("xUnlock"))(real(f), level);
        }
        file_locks::unlock(file.key, &mut file.level, level);
        ffi::SQLITE_OK
    }
}
unsafe extern "C" fn x_check_reserved_lock(f: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    unsafe {
        let file = &*(f as *const File);
        if !file.locked {
            return (methods(f).xCheckReservedLock.expect("xCheckReservedLock"))(real(f), out);
        }
        *out = file_locks::reserved(file.key) as c_int;
        ffi::SQLITE_OK
    }
}
unsafe extern "C" fn x_file_control(
    f: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    unsafe {
        let file = &*(f as *const File);
        // `unix-none` has no inode to compare and always answers "not moved": answer
        // as `unix` does (the path gone, or naming another file), for the pager's
        // checks before a closing checkpoint and a journal.
        if op == ffi::SQLITE_FCNTL_HAS_MOVED && file.locked {
            *(arg as *mut c_int) = (key_at(file.path) != Some(file.key)) as c_int;
            return ffi::SQLITE_OK;
        }
        (methods(f).xFileControl.expect("xFileControl"))(real(f), op, arg)
    }
}
unsafe extern "C" fn x_sector_size(f: *mut ffi::sqlite3_file) -> c_int {
    unsafe { (methods(f).xSectorSize.expect("xSectorSize"))(real(f)) }
}
unsafe extern "C" fn x_device_characteristics(f: *mut ffi::sqlite3_file) -> c_int {
    unsafe {
        (methods(f)
            .xDeviceCharacteristics
            .expect("xDeviceCharacteristics"))(real(f))
    }
}
unsafe extern "C" fn x_fetch(
    f: *mut ffi::sqlite3_file,
    o: i64,
    n: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    unsafe {
        match methods(f).xFetch {
            Some(fetch) if methods(f).iVersion >= 3 => fetch(real(f), o, n, pp),
            _ => {
                *pp = std::ptr::null_mut();
                ffi::SQLITE_OK
            }
        }
    }
}
unsafe extern "C" fn x_unfetch(f: *mut ffi::sqlite3_file, o: i64, p: *mut c_void) -> c_int {
    unsafe {
        match methods(f).xUnfetch {
            Some(unfetch) if methods(f).iVersion >= 3 => unfetch(real(f), o, p),
            _ => ffi::SQLITE_OK,
        }
    }
}

/// This connection's node, found or made (taking the `-shm` lock).
fn acquire(f: &mut File) -> Result<*const Node, c_int> {
    if !f.node.is_null() {
        return Ok(f.node);
    }
    if f.path.is_null() {
        return Err(ffi::SQLITE_IOERR_SHMOPEN);
    }
    // This connection may write the WAL: a truncation marked before must not happen,
    // and one under way must end before SQLite reads the WAL (waited for without the
    // lock every other file's connections take).
    let mut nodes = loop {
        let nodes = nodes().lock().unwrap_or_else(|e| e.into_inner());
        let mut marks = marks().lock().unwrap_or_else(|e| e.into_inner());
        if marks.get(&f.key) == Some(&Mark::Truncating) {
            drop(nodes);
            while marks.get(&f.key) == Some(&Mark::Truncating) {
                marks = truncated().wait(marks).unwrap_or_else(|e| e.into_inner());
            }
            continue;
        }
        if !marks.is_empty() && COMPACTING.with(|k| k.get()) != Some(f.key) {
            marks.remove(&f.key);
        }
        break nodes;
    };
    let node = match nodes.get(&f.key) {
        Some(node) => node.clone(),
        None => {
            // SAFETY: `path` is the NUL-terminated name SQLite opened the file by,
            // valid until `xClose`.
            let mut shm = unsafe { path_of(f.path) }.as_os_str().to_owned();
            shm.push("-shm");
            let lock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(crate::files::FILE_MODE)
                .open(&shm)
                .map_err(|_| ffi::SQLITE_IOERR_SHMOPEN)?;
            if !write_lock(&lock) {
                // Another process has the file open through SQLite's own index. Not
                // `SQLITE_BUSY`: SQLite would retry that for seconds (on a shard thread).
                tracing::error!(file = ?shm, "another process has this object's file open through SQLite (a `sqlite3` shell?); the host cannot open it until that process closes it");
                return Err(ffi::SQLITE_IOERR_SHMOPEN);
            }
            let node = Arc::new(Node {
                state: Mutex::new(State::default()),
                _lock: lock,
            });
            nodes.insert(f.key, node.clone());
            node
        }
    };
    f.node = Arc::into_raw(node);
    Ok(f.node)
}

/// Take the write lock on [`DMS_BYTE`] of `file` without waiting.
fn write_lock(file: &std::fs::File) -> bool {
    // SAFETY: a zeroed `flock` is valid; F_SETLK reads it and nothing else.
    unsafe {
        let mut lock: libc::flock = std::mem::zeroed();
        lock.l_type = libc::F_WRLCK as _;
        lock.l_whence = libc::SEEK_SET as _;
        lock.l_start = DMS_BYTE;
        lock.l_len = 1;
        libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) == 0
    }
}

/// Let go of this connection's locks and node (the last user drops the index and its
/// `-shm` lock).
///
/// # Safety
/// `f` points to a file this VFS opened.
unsafe fn release(f: *mut ffi::sqlite3_file) {
    let f = unsafe { &mut *(f as *mut File) };
    if f.node.is_null() {
        return;
    }
    let mut nodes = nodes().lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: `node` came from `Arc::into_raw` in `acquire` and is released once.
    let node = unsafe { Arc::from_raw(f.node) };
    f.node = std::ptr::null();
    {
        let mut state = node.state.lock().unwrap_or_else(|e| e.into_inner());
        for i in 0..NLOCK {
            if f.shared & (1 << i) != 0 {
                state.shared[i] -= 1;
            }
            if f.exclusive & (1 << i) != 0 {
                state.exclusive[i] = false;
            }
        }
    }
    f.shared = 0;
    f.exclusive = 0;
    // The map's reference and ours: we are the last user.
    if Arc::strong_count(&node) == 2 {
        nodes.remove(&f.key);
    }
}

unsafe extern "C" fn x_shm_map(
    f: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite passes a file this VFS opened and a pointer to write the region to.
    unsafe {
        *pp = std::ptr::null_mut();
        let file = &mut *(f as *mut File);
        let node = match acquire(file) {
            Ok(node) => &*node,
            Err(rc) => return rc,
        };
        let (region, size) = (region.max(0) as usize, size.max(0) as usize);
        let mut state = node.state.lock().unwrap_or_else(|e| e.into_inner());
        while state.regions.len() <= region {
            if extend == 0 {
                return ffi::SQLITE_OK;
            }
            state.regions.push(spare_regions().take(size.div_ceil(8)));
        }
        *pp = state.regions[region].as_mut_ptr() as *mut c_void;
        ffi::SQLITE_OK
    }
}

unsafe extern "C" fn x_shm_lock(
    f: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite passes a file this VFS opened; it locks only after mapping.
    let file = unsafe { &mut *(f as *mut File) };
    if file.node.is_null() || offset < 0 || n < 1 || (offset + n) as usize > NLOCK {
        return ffi::SQLITE_IOERR_SHMLOCK;
    }
    // SAFETY: a node stays alive while this connection holds it.
    let node = unsafe { &*file.node };
    let mut state = node.state.lock().unwrap_or_else(|e| e.into_inner());
    let slots = offset as usize..(offset + n) as usize;
    let mine = |mask: u8, i: usize| mask & (1 << i) != 0;
    if flags & ffi::SQLITE_SHM_UNLOCK != 0 {
        for i in slots {
            if mine(file.shared, i) {
                state.shared[i] -= 1;
                file.shared &= !(1 << i);
            }
            if mine(file.exclusive, i) {
                state.exclusive[i] = false;
                file.exclusive &= !(1 << i);
            }
        }
        return ffi::SQLITE_OK;
    }
    if flags & ffi::SQLITE_SHM_SHARED != 0 {
        for i in slots.clone() {
            if state.exclusive[i] && !mine(file.exclusive, i) {
                return ffi::SQLITE_BUSY;
            }
        }
        for i in slots {
            if !mine(file.shared, i) && !mine(file.exclusive, i) {
                state.shared[i] += 1;
                file.shared |= 1 << i;
            }
        }
        return ffi::SQLITE_OK;
    }
    // Exclusive: nobody else may hold any of the slots, in either mode.
    for i in slots.clone() {
        let others_shared = state.shared[i] - u32::from(mine(file.shared, i));
        if others_shared > 0 || (state.exclusive[i] && !mine(file.exclusive, i)) {
            return ffi::SQLITE_BUSY;
        }
    }
    for i in slots {
        if mine(file.shared, i) {
            state.shared[i] -= 1;
            file.shared &= !(1 << i);
        }
        state.exclusive[i] = true;
        file.exclusive |= 1 << i;
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn x_shm_barrier(_f: *mut ffi::sqlite3_file) {
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
}

unsafe extern "C" fn x_shm_unmap(f: *mut ffi::sqlite3_file, _delete: c_int) -> c_int {
    // SAFETY: SQLite passes a file this VFS opened. The `-shm` file stays (it is only
    // the lock's file here).
    unsafe { release(f) };
    ffi::SQLITE_OK
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::{Connection, OpenFlags};

    fn wal(path: &std::path::Path) -> Connection {
        let c = open(path, OpenFlags::default()).unwrap();
        c.busy_timeout(std::time::Duration::ZERO).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c
    }

    #[test]
    fn a_region_given_back_is_taken_again_cleared_and_the_spares_stay_bounded() {
        let spares = SpareRegions::new(2);
        let region = vec![7u64; 3].into_boxed_slice();
        let at = region.as_ptr();
        spares.give_back(vec![region]);
        // A pool of this test's own: no other test takes from it or fills it.
        let again = spares.take(3);
        assert_eq!(again.as_ptr(), at, "the spare region is reused");
        assert!(again.iter().all(|&w| w == 0), "and cleared");
        let fresh = spares.take(3);
        assert_ne!(fresh.as_ptr(), at);
        assert_eq!(fresh.len(), 3);
        // Only a region of the size asked for is taken.
        spares.give_back(vec![vec![5u64; 4].into_boxed_slice()]);
        assert_eq!(spares.take(3).len(), 3);
        assert_eq!(spares.regions.lock().unwrap().len(), 1);
        spares.give_back((0..5).map(|_| vec![0u64; 2].into_boxed_slice()).collect());
        assert_eq!(
            spares.regions.lock().unwrap().len(),
            2,
            "kept up to the cap"
        );
    }

    #[test]
    fn a_closing_connection_checkpoints_only_when_no_other_has_the_file_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let wal_len = || std::fs::metadata(crate::files::wal_path(&path)).map(|m| m.len());
        let a = wal(&path);
        a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let b = wal(&path);
        let count: i64 = b
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1);
        let written = wal_len().unwrap();
        assert!(written > 0);
        // `a` closes while `b` holds its shared lock: SQLite's exclusive lock for the
        // closing checkpoint is refused, so the WAL stays as it is.
        drop(a);
        assert_eq!(wal_len().unwrap(), written, "no checkpoint under a reader");
        let count: i64 = b
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1);
        // The last connection gets it: SQLite checkpoints and removes the WAL.
        drop(b);
        assert!(wal_len().is_err(), "the last close removes the WAL");
        let c = wal(&path);
        let count: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(count, 1, "what the WAL held is in the file");
    }

    #[test]
    fn a_connection_learns_that_its_file_was_renamed_over_or_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let a = wal(&path);
        a.execute_batch("CREATE TABLE t(x)").unwrap();
        let moved = |c: &Connection| -> c_int {
            let mut moved: c_int = -1;
            // SAFETY: HAS_MOVED writes one int.
            let rc = unsafe {
                ffi::sqlite3_file_control(
                    c.handle(),
                    c"main".as_ptr(),
                    ffi::SQLITE_FCNTL_HAS_MOVED,
                    (&mut moved as *mut c_int).cast(),
                )
            };
            assert_eq!(rc, ffi::SQLITE_OK);
            moved
        };
        assert_eq!(moved(&a), 0);
        let other = dir.path().join("other.db");
        wal(&other).execute_batch("CREATE TABLE u(y)").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_eq!(moved(&a), 1, "another file at the path");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(moved(&a), 1, "no file at the path");
    }

    #[test]
    fn a_closed_files_regions_serve_the_next_file_opened() {
        let dir = tempfile::tempdir().unwrap();
        let a = wal(&dir.path().join("a.db"));
        a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(a);
        let b = wal(&dir.path().join("b.db"));
        b.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (2);")
            .unwrap();
        let sum: i64 = b
            .query_row("SELECT sum(x) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sum, 2, "the reused index holds none of a's frames");
    }

    #[test]
    fn connections_of_one_file_share_its_index_and_snapshots_hold() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let a = wal(&path);
        a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        let b = wal(&path);
        let count = |c: &Connection| -> i64 {
            c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&b), 1);
        // A read transaction keeps its snapshot while the other connection writes.
        b.execute_batch("BEGIN").unwrap();
        assert_eq!(count(&b), 1);
        a.execute("INSERT INTO t VALUES (2)", []).unwrap();
        assert_eq!(count(&b), 1);
        b.execute_batch("COMMIT").unwrap();
        assert_eq!(count(&b), 2);
        // One writer at a time: the second `BEGIN IMMEDIATE` is refused, not lost.
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        let e = b.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        a.execute_batch("COMMIT").unwrap();
        b.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (3); COMMIT")
            .unwrap();
        assert_eq!(count(&a), 3);
        // A checkpoint while nobody reads copies the WAL into the file.
        a.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
        assert_eq!(count(&b), 3);
    }

    #[test]
    fn the_index_goes_with_its_last_connection_and_is_rebuilt_from_the_wal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let a = wal(&path);
        a.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        let key = {
            let m = std::fs::metadata(&path).unwrap();
            (m.dev(), m.ino())
        };
        assert!(nodes().lock().unwrap().contains_key(&key));
        // Kept on close, as the host keeps it: the WAL still holds the rows.
        a.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
        unsafe {
            let mut on: c_int = 1;
            ffi::sqlite3_file_control(
                a.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_PERSIST_WAL,
                &mut on as *mut c_int as *mut c_void,
            );
            ffi::sqlite3_db_config(
                a.handle(),
                ffi::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
                1 as c_int,
                std::ptr::null_mut::<c_int>(),
            );
        }
        drop(a);
        assert!(!nodes().lock().unwrap().contains_key(&key));
        assert!(
            std::fs::metadata(dir.path().join("o.db-wal"))
                .unwrap()
                .len()
                > 0
        );
        let b = wal(&path);
        let n: i64 = b
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_file_renamed_with_its_connection_open_keeps_one_index() {
        // A spare is opened ahead under its own name and renamed into place.
        let dir = tempfile::tempdir().unwrap();
        let spare = dir.path().join("spare.db");
        let a = wal(&spare);
        a.execute_batch("CREATE TABLE t(x);").unwrap();
        let placed = dir.path().join("object.db");
        for suffix in ["", "-wal", "-shm"] {
            std::fs::rename(
                format!("{}{suffix}", spare.display()),
                format!("{}{suffix}", placed.display()),
            )
            .unwrap();
        }
        let b = wal(&placed);
        a.execute("INSERT INTO t VALUES (7)", []).unwrap();
        let x: i64 = b.query_row("SELECT x FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(x, 7);
    }

    #[test]
    fn readers_checkpoints_and_two_writers_on_threads_keep_every_snapshot_whole() {
        // The writer moves one unit between two rows per transaction (their sum never
        // changes) and checkpoints now and then, restarting the WAL; readers on their
        // own threads and connections check the sum inside read transactions. A lock
        // that let a checkpoint overwrite a frame a reader still used, or two writers
        // in, would show a wrong sum or a corrupt page.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.db");
        let setup = wal(&path);
        setup
            .execute_batch(
                "CREATE TABLE t(k INTEGER PRIMARY KEY, v INTEGER, pad BLOB);
                 INSERT INTO t VALUES (1, 1000, zeroblob(600)), (2, 0, zeroblob(600));",
            )
            .unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy_wait = std::time::Duration::from_secs(5);
        let mut threads = Vec::new();
        for _ in 0..3 {
            let (path, stop) = (path.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                let c = open(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
                c.busy_timeout(busy_wait).unwrap();
                let mut reads = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.execute_batch("BEGIN").unwrap();
                    let sum: i64 = c
                        .query_row("SELECT sum(v) FROM t", [], |r| r.get(0))
                        .unwrap();
                    std::thread::sleep(std::time::Duration::from_micros(200));
                    let again: i64 = c
                        .query_row("SELECT sum(v) FROM t", [], |r| r.get(0))
                        .unwrap();
                    c.execute_batch("COMMIT").unwrap();
                    assert_eq!((sum, again), (1000, 1000));
                    reads += 1;
                }
                reads
            }));
        }
        // Two writers (a lock that let both in would lose transfers) and a thread
        // checkpointing with WAL restarts (one that ignored a reader's mark would
        // overwrite frames the reader still reads).
        let writers: Vec<_> = (0..2)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let c = open(&path, OpenFlags::default()).unwrap();
                    c.busy_timeout(busy_wait).unwrap();
                    for _ in 0..1500 {
                        c.execute_batch(
                            "BEGIN IMMEDIATE;
                             UPDATE t SET v = v - 1, pad = randomblob(600) WHERE k = 1;
                             UPDATE t SET v = v + 1, pad = randomblob(600) WHERE k = 2;
                             COMMIT;",
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        let checkpointer = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let c = open(&path, OpenFlags::default()).unwrap();
                c.busy_timeout(std::time::Duration::from_millis(20))
                    .unwrap();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ =
                        c.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| r.get::<_, i64>(0));
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        checkpointer.join().unwrap();
        let reads: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(reads > 0);
        let (a, b): (i64, i64) = setup
            .query_row(
                "SELECT (SELECT v FROM t WHERE k = 1), (SELECT v FROM t WHERE k = 2)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!((a, b), (1000 - 3000, 3000));
        let check: String = setup
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
