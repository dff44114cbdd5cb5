//! The durability seam. A turn commits its batch to the object's database and hands
//! the batch's sequence number to the object's [`ObjectLog`]; replies are released
//! only once [`ObjectLog::watch`] shows that number durable (the output gate). Turn code
//! does not know how durability is achieved.
//!
//! Two implementations:
//! - the host log, `log::HostLog` (the default): one append-only log for the whole host.
//!   Each batch hands over its changeset, in SQLite's session format (or a database
//!   image after a schema change); one `fdatasync` of the log covers every batch
//!   waiting, from every object.
//! - [`WalSync`] (`--durability fsync`): a committed batch is made durable by
//!   `fdatasync` of the object's own `-wal` file on a blocking thread. Syncs of one
//!   object coalesce. Kept as the baseline the host log is measured against.

use durable_client::ObjectId;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::watch;

/// The durable position of one object: batches up to `durable` are on disk; if
/// `failed`, syncing failed and nothing more may be acknowledged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct DurablePos {
    pub(crate) durable: u64,
    /// The log position of the object's latest durable record (host log only).
    pub(crate) lsn: u64,
    /// Whether what is past `durable` may or may not be on disk: nothing more may be
    /// acknowledged until a restart replays the log.
    pub(crate) failed: bool,
    /// The log refused the object's batches past `durable` and made sure none of them
    /// is on disk (host log only); it refuses every later one until
    /// [`ObjectLog::rewind`].
    pub(crate) rejected: Option<Refusal>,
    /// How many times the object rewound (see [`ObjectLog::rewind`]): a rejection
    /// seen with an older count is one the object already dealt with.
    pub(crate) epoch: u64,
}

/// Why the log refused a batch (nothing of it is on disk).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The disk (or the quota) is full.
    Full,
    /// Another I/O error.
    Io,
}

impl Refusal {
    /// Classify a failed write.
    pub(crate) fn of(e: &std::io::Error) -> Refusal {
        // ENOSPC, EDQUOT (Linux numbers).
        const ENOSPC: i32 = 28;
        const EDQUOT: i32 = 122;
        match e.raw_os_error() {
            Some(ENOSPC | EDQUOT) => Refusal::Full,
            _ if e.kind() == std::io::ErrorKind::StorageFull => Refusal::Full,
            _ => Refusal::Io,
        }
    }
}

/// What a committed batch changed, for durability components that ship changes.
#[derive(Debug)]
pub(crate) enum Change {
    /// The batch's changeset (SQLite's session format).
    Changeset(Vec<u8>),
    /// The whole database after the batch (new objects, schema changes).
    Image(Vec<u8>),
}

/// Makes one object's committed batches durable.
pub(crate) trait ObjectLog {
    /// Whether [`ObjectLog::submit`] needs the batch's [`Change`]; when false the
    /// object skips capturing it.
    fn captures_changes(&self) -> bool;
    /// Batch `seq` (increasing) has committed; make it durable.
    fn submit(&self, seq: u64, change: Option<Change>);
    /// Watch the durable position.
    fn watch(&self) -> watch::Receiver<DurablePos>;
    /// The object's file now holds every record of this object up to `lsn`
    /// (write-ahead logs must not checkpoint past a record until then).
    fn applied(&self, lsn: u64) {
        let _ = lsn;
    }
    /// After a rejection ([`DurablePos::rejected`]): the object has undone every batch
    /// past the durable one and numbers its next batch after it again; accept its
    /// batches from now on and count one more [`DurablePos::epoch`].
    fn rewind(&self) {}
    /// The object rebuilt its file's missing batches from the log records `lsns`, up
    /// to batch `seq`: they are durable, and the file holds them once it commits.
    fn adopt(&self, seq: u64, lsns: &[u64]) {
        let _ = (seq, lsns);
    }
}

/// A host-wide durability component.
pub(crate) trait Durability: Send + Sync + 'static {
    /// Whether objects must hand over their changes (see [`ObjectLog::captures_changes`]).
    fn captures_changes(&self) -> bool;
    /// The log of one object, whose database is at `db_path` and holds batches up to
    /// `durable_seq`.
    fn attach(
        &self,
        class: &'static str,
        id: ObjectId,
        db_path: &Path,
        durable_seq: u64,
    ) -> Box<dyn ObjectLog>;
    /// Make everything submitted durable and stop (after every object has stopped);
    /// with `checkpoint`, also checkpoint (a clean stop) rather than leave it to replay.
    fn shutdown(&self, checkpoint: bool) {
        let _ = checkpoint;
    }
}

/// fdatasync of each object's WAL file, off the turn's thread.
#[derive(Debug, Default)]
pub(crate) struct WalSync;

impl Durability for WalSync {
    fn captures_changes(&self) -> bool {
        false
    }

    fn attach(
        &self,
        _class: &'static str,
        _id: ObjectId,
        db_path: &Path,
        durable_seq: u64,
    ) -> Box<dyn ObjectLog> {
        let mut wal = db_path.as_os_str().to_owned();
        wal.push("-wal");
        Box::new(WalObjectLog(Arc::new(WalState {
            wal: PathBuf::from(wal),
            file: OnceLock::new(),
            requested: AtomicU64::new(durable_seq),
            in_flight: AtomicBool::new(false),
            pos: watch::channel(DurablePos {
                durable: durable_seq,
                lsn: 0,
                failed: false,
                rejected: None,
                epoch: 0,
            })
            .0,
        })))
    }
}

struct WalState {
    wal: PathBuf,
    file: OnceLock<File>,
    requested: AtomicU64,
    in_flight: AtomicBool,
    pos: watch::Sender<DurablePos>,
}

impl WalState {
    fn sync_once(&self) -> std::io::Result<()> {
        if self.file.get().is_none() {
            let f = match File::open(&self.wal) {
                Ok(f) => f,
                // No WAL: SQLite checkpointed it into the database (syncing it) and
                // removed it when the connection closed. Nothing is left to sync.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            // The WAL file is new to this process: make its directory entry durable too.
            if let Some(dir) = self.wal.parent() {
                crate::files::sync_dir(dir)?;
            }
            let _ = self.file.set(f);
        }
        self.file.get().expect("set above").sync_data()
    }

    fn sync_loop(&self) {
        loop {
            let target = self.requested.load(Ordering::Acquire);
            match self.sync_once() {
                Ok(()) => self.pos.send_modify(|p| p.durable = p.durable.max(target)),
                Err(e) => {
                    tracing::error!(wal = %self.wal.display(), error = %e, "fdatasync failed; the object stops acknowledging writes");
                    self.pos.send_modify(|p| p.failed = true);
                    return;
                }
            }
            self.in_flight.store(false, Ordering::Release);
            if self.requested.load(Ordering::Acquire) <= target
                || self.in_flight.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    }
}

struct WalObjectLog(Arc<WalState>);

impl ObjectLog for WalObjectLog {
    fn captures_changes(&self) -> bool {
        false
    }

    fn submit(&self, seq: u64, _change: Option<Change>) {
        self.0.requested.fetch_max(seq, Ordering::AcqRel);
        if !self.0.in_flight.swap(true, Ordering::AcqRel) {
            let state = self.0.clone();
            tokio::task::spawn_blocking(move || state.sync_loop());
        }
    }

    fn watch(&self) -> watch::Receiver<DurablePos> {
        self.0.pos.subscribe()
    }
}
