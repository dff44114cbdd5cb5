//! Files and directories under a data directory: where object databases live,
//! syncing directory entries, and the data directory's lock. The ground floor: it
//! imports nothing of the crate.

use durable_client::ObjectId;
use std::path::{Path, PathBuf};

/// `DATA_DIR/objects/CLASS/ID.db`.
pub(crate) fn object_path(data_dir: &Path, class: &str, id: ObjectId) -> PathBuf {
    data_dir
        .join("objects")
        .join(class)
        .join(format!("{id}.db"))
}

/// The WAL beside a database file: `PATH-wal`.
pub(crate) fn wal_path(db: &Path) -> PathBuf {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// Files under a data directory are readable and writable by the host's user only.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Directories under a data directory are reachable by the host's user only.
pub(crate) const DIR_MODE: u32 = 0o700;

/// Create `dir` and its missing parents with mode 0700.
pub(crate) fn create_dirs(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

/// Options that create a file with mode 0600 (for writing; set the rest).
pub(crate) fn private_file() -> std::fs::OpenOptions {
    use std::os::unix::fs::OpenOptionsExt;
    let mut o = std::fs::OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Make sure the SQLite database at `path` exists with mode 0600 before SQLite opens
/// it: SQLite gives new files 0644 (less the umask), and its `-wal` and `-shm` files
/// copy the database file's mode.
pub(crate) fn precreate_db(path: &Path) -> std::io::Result<()> {
    match private_file().write(true).create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Create the SQLite database at `path` (mode 0600) holding `bytes`, unless it
/// exists. Not synced: the caller decides when the file must be durable.
pub(crate) fn create_db_from(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    match private_file().write(true).create_new(true).open(path) {
        Ok(mut f) => f.write_all(bytes).inspect_err(|_| {
            // A part-written file would be taken for a stored object: remove it.
            let _ = std::fs::remove_file(path);
        }),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// fsync a directory so that entries created in it survive power loss.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// An exclusive lock on a data directory (`DATA_DIR/host.lock`, flock), held by a
/// running host and by offline operator commands.
#[derive(Debug)]
pub(crate) struct DirLock(#[allow(dead_code)] std::fs::File);

impl DirLock {
    pub(crate) fn acquire(data_dir: &Path) -> Result<DirLock, String> {
        use std::os::fd::AsRawFd;
        create_dirs(data_dir).map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
        let path = data_dir.join("host.lock");
        let f = private_file()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        // SAFETY: flock on a descriptor we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "{} is in use by a running host",
                data_dir.display()
            ));
        }
        Ok(DirLock(f))
    }
}
