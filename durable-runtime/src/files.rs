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
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("creating {}: {e}", data_dir.display()))?;
        let path = data_dir.join("host.lock");
        let f = std::fs::OpenOptions::new()
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
