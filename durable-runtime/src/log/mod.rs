//! The host log: one append-only log shared by every object of a host, the way a
//! database's WAL serves all its tables.
//!
//! - Objects commit to their own SQLite files with `synchronous=NORMAL` (no fsync) and
//!   hand each batch's session changeset (or a database image after a schema change or
//!   on creation) to [`HostLog`].
//! - One writer thread appends whatever is waiting in one synchronous write (direct,
//!   see [`direct`]; a buffered write and `fdatasync` where the file system takes no
//!   direct I/O), and only then marks those batches durable, which releases their replies. The
//!   segment is zero-filled ahead of it by another thread ([`Prealloc`]), so that sync
//!   has no file size to journal; each round's first record is marked, which lets
//!   recovery tell a torn last round from damage ([`crate::record`]).
//! - A checkpointer periodically makes the changed object files durable, records the
//!   checkpoint lsn, and retires (or, with retention, archives) older segments.
//! - On start, [`recovery::recover`] replays the records after the last checkpoint into
//!   objects whose stored batch number is behind, so replay is idempotent.

pub(crate) mod direct;
pub(crate) mod history;
pub(crate) mod recovery;

use crate::record;
pub(crate) use crate::record::{list_segments, read_segment, segment_name};
pub use crate::record::{LogRecord, RecordKind, TailProblem};

use crate::clock::Clock;
use crate::durability::{Change, Durability, DurablePos, ObjectLog, Refusal};
use crate::running::Running;
use durable_client::ObjectId;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// A segment is closed once it holds this many bytes.
const SEGMENT_BYTES: u64 = 64 << 20;
/// Checkpoint early once this much log has been written since the last one.
const CHECKPOINT_BYTES: u64 = 256 << 20;

/// How the host log behaves.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// How often to checkpoint (`None`: only on shutdown and when the log grows past
    /// 256 MiB). Default 30 s.
    pub checkpoint_interval: Option<Duration>,
    /// Keep retired segments under `DATA_DIR/archive/` this long for point-in-time
    /// recovery and the change feed (`None`: delete them at checkpoint). Default 30 days.
    pub retention: Option<Duration>,
    /// With retention, an object's next write ships a whole image (a snapshot to
    /// restore from) once its last one is older than this. Default one day.
    pub snapshot_interval: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            checkpoint_interval: Some(Duration::from_secs(30)),
            retention: Some(Duration::from_secs(30 * 24 * 3600)),
            snapshot_interval: Duration::from_secs(24 * 3600),
        }
    }
}

pub(crate) fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

pub(crate) fn archive_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("archive")
}

/// The last checkpoint lsn recorded in `DATA_DIR/log/checkpoint` (0 if none).
pub(crate) fn read_checkpoint(data_dir: &Path) -> std::io::Result<u64> {
    match std::fs::read_to_string(log_dir(data_dir).join("checkpoint")) {
        Ok(s) => s.trim().parse().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("bad checkpoint file {s:?}"),
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// Durably record `lsn` as the checkpoint (write, fsync, rename, fsync the directory).
pub(crate) fn write_checkpoint(data_dir: &Path, lsn: u64) -> std::io::Result<()> {
    let dir = log_dir(data_dir);
    let tmp = dir.join("checkpoint.tmp");
    let mut f = crate::files::private_file()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    writeln!(f, "{lsn}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("checkpoint"))?;
    crate::files::sync_dir(&dir)
}

/// fsync an object's database and WAL files, whichever exist.
pub(crate) fn sync_object_files(db_path: &Path) -> std::io::Result<()> {
    let mut wal = db_path.as_os_str().to_owned();
    wal.push("-wal");
    for path in [PathBuf::from(wal), db_path.to_owned()] {
        match File::open(&path) {
            Ok(f) => f.sync_data()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Retire every segment wholly at or below `lsn` except the newest, and never the one
/// the writer appends to (first lsn `live`; `u64::MAX` with no writer): move it to the
/// archive (with retention) or delete it; then drop archived segments past retention.
///
/// The newest by name is not always the writer's: a round that starts a new segment
/// creates its file before the round is durable, and if the round fails the file is
/// removed and the writer goes on in the segment before it.
pub(crate) fn retire_segments(
    data_dir: &Path,
    lsn: u64,
    retention: Option<Duration>,
    now_ms: u64,
    live: u64,
) -> std::io::Result<()> {
    let dir = log_dir(data_dir);
    let segments = list_segments(&dir)?;
    let archive = archive_dir(data_dir);
    let mut moved = false;
    for pair in segments.windows(2) {
        let (first, path) = &pair[0];
        let (next_first, _) = pair[1];
        if next_first.saturating_sub(1) > lsn || *first >= live {
            break;
        }
        if retention.is_some() {
            crate::files::create_dirs(&archive)?;
            std::fs::rename(path, archive.join(path.file_name().unwrap()))?;
            moved = true;
        } else {
            std::fs::remove_file(path)?;
        }
    }
    crate::files::sync_dir(&dir)?;
    if moved {
        crate::files::sync_dir(&archive)?;
    }
    if let Some(keep) = retention {
        let cutoff = crate::clock::time_of(now_ms) - keep;
        for (_, path) in list_segments(&archive)? {
            let old = std::fs::metadata(&path)?.modified()? < cutoff;
            if old {
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Append one image record as its own segment while no host runs (offline restore).
pub(crate) fn append_offline(
    data_dir: &Path,
    lsn: u64,
    class: &str,
    object: ObjectId,
    seq: u64,
    image: &[u8],
    now_ms: u64,
) -> std::io::Result<()> {
    let dir = log_dir(data_dir);
    crate::files::create_dirs(&dir)?;
    let mut buf = Vec::with_capacity(image.len() + 64);
    let header = record::Header {
        lsn,
        time_ms: now_ms,
        kind: RecordKind::Image,
        class,
        object,
        seq,
        round_start: true,
    };
    record::encode(&mut buf, &header, image);
    let mut f = crate::files::private_file()
        .create_new(true)
        .write(true)
        .open(dir.join(segment_name(lsn)))?;
    f.write_all(&buf)?;
    f.sync_all()?;
    crate::files::sync_dir(&dir)
}

/// One scan of the live log at a time ([`object_records`]): each reads whole segments
/// (64 MiB apiece), and many objects healing at once (a failed file commit can stop
/// several) would hold a segment each.
static SCANS: Mutex<()> = Mutex::new(());

/// Every record of one object in the live log (the segments not yet retired) with a
/// batch number above `after_seq`, oldest first. The records an object's file lacks are
/// always there: no checkpoint passes a record its object has not committed. Scans run
/// one at a time, host-wide ([`SCANS`]).
pub(crate) fn object_records(
    data_dir: &Path,
    class: &str,
    object: ObjectId,
    after_seq: u64,
) -> std::io::Result<Vec<LogRecord>> {
    let _one = SCANS.lock().unwrap_or_else(|p| p.into_inner());
    #[cfg(test)]
    let _scanning = tests::Scanning::enter();
    let mut out = Vec::new();
    for (_, path) in list_segments(&log_dir(data_dir))? {
        // The newest segment may end in a record being written: what precedes it is
        // whole, and this object's records are all durable already.
        let read = read_segment(&path)?;
        out.extend(
            read.records
                .into_iter()
                .filter(|r| r.object == object && r.class == class && r.seq > after_seq),
        );
    }
    Ok(out)
}

struct Entry {
    class: &'static str,
    object: ObjectId,
    seq: u64,
    kind: RecordKind,
    payload: Vec<u8>,
    pos: Arc<watch::Sender<DurablePos>>,
    /// The object's durable records its file does not hold yet (lsns, increasing).
    written: Arc<Mutex<Vec<u64>>>,
}

enum Msg {
    Append(Entry),
    /// An object undid its refused batches (see [`ObjectLog::rewind`]).
    Rewind(Arc<watch::Sender<DurablePos>>),
    Shutdown(mpsc::Sender<()>),
}

/// Records are durable in the log before their object commits them to its own file.
/// A checkpoint may only cover records that objects have committed: `unapplied` holds
/// the durable records not yet committed, `dirty` the objects that committed records
/// since the last checkpoint (an object adds itself *before* removing its lsn from
/// `unapplied`, under its stripe's lock). Striped by object id, so objects on different
/// shards do not contend; a checkpoint holds every stripe at once.
#[derive(Default)]
struct Applied {
    unapplied: std::collections::BTreeSet<u64>,
    dirty: HashMap<(&'static str, ObjectId), Arc<PathBuf>>,
}

const APPLIED_STRIPES: usize = 16;

fn stripe(id: &ObjectId) -> usize {
    id.as_bytes()[0] as usize % APPLIED_STRIPES
}

struct Shared {
    data_dir: PathBuf,
    retention: Option<Duration>,
    durable_lsn: watch::Sender<u64>,
    /// What a checkpoint may cover: see [`Applied`].
    applied: Vec<Mutex<Applied>>,
    bytes_since_checkpoint: AtomicU64,
    last_checkpoint: AtomicU64,
    failed: AtomicBool,
    /// A checkpoint's sync of an object's file (or a directory, or a host file) failed:
    /// no checkpoint runs again in this process. After a failed writeback the kernel
    /// may have dropped the pages and reports the error once: a later sync that
    /// succeeds proves nothing, and a checkpoint past those records would retire the
    /// only durable copy of writes the file may lack. The log keeps them; the next
    /// start (unclean: the running marker stays) replays them with its checks.
    checkpoints_halted: AtomicBool,
    feed: broadcast::Sender<Arc<LogRecord>>,
    /// Other files a checkpoint makes durable (the alarm index).
    also_sync: Vec<PathBuf>,
    /// Wakes the checkpointer early; `true` asks it to stop.
    wake: (Mutex<bool>, Condvar),
    checkpoint_lock: Mutex<()>,
    /// Stamps records with their time (the host clock).
    clock: Arc<dyn Clock>,
    /// The first lsn of the segment the writer appends to: a checkpoint never retires
    /// it (see [`retire_segments`]).
    live_segment: AtomicU64,
}

impl Shared {
    /// Make every object file changed up to the durable lsn durable, record that lsn
    /// as the checkpoint, and retire the segments it covers.
    fn checkpoint(&self) -> std::io::Result<u64> {
        let _one_at_a_time = self.checkpoint_lock.lock().unwrap();
        if self.checkpoints_halted.load(Ordering::Acquire) {
            return Err(std::io::Error::other(
                "checkpoints stopped after a failed sync; the log keeps every record for the next start",
            ));
        }
        // Under the lock: every durable record <= lsn is either still unapplied (then
        // lsn stops below it) or committed by an object that is in `dirty`.
        let (lsn, dirty) = {
            let mut stripes: Vec<_> = self.applied.iter().map(|m| m.lock().unwrap()).collect();
            let durable = *self.durable_lsn.borrow();
            let first = stripes
                .iter()
                .filter_map(|a| a.unapplied.first().copied())
                .min();
            let lsn = match first {
                Some(first) => durable.min(first - 1),
                None => durable,
            };
            let mut dirty = HashMap::new();
            for a in stripes.iter_mut() {
                dirty.extend(a.dirty.drain());
            }
            (lsn, dirty)
        };
        let restore = |dirty: &HashMap<(&'static str, ObjectId), Arc<PathBuf>>| {
            for (k, p) in dirty {
                let mut applied = self.applied[stripe(&k.1)].lock().unwrap();
                applied.dirty.entry(*k).or_insert_with(|| p.clone());
            }
        };
        if lsn <= self.last_checkpoint.load(Ordering::Acquire) && dirty.is_empty() {
            return Ok(lsn);
        }
        let mut dirs = std::collections::BTreeSet::new();
        for (key, path) in &dirty {
            if let Some(dir) = path.parent() {
                dirs.insert(dir.to_owned());
            }
            if let Err(e) = sync_object_files(path) {
                restore(&dirty);
                tracing::error!(class = key.0, id = %key.1, error = %e, "checkpoint: syncing an object failed");
                return Err(self.halt(e));
            }
        }
        // New object files (and WAL files SQLite recreates after an eviction) are
        // directory entries: make them durable too.
        for dir in &dirs {
            if let Err(e) = crate::files::sync_dir(dir) {
                restore(&dirty);
                return Err(self.halt(e));
            }
        }
        if !dirs.is_empty() {
            // A new class's directory is an entry of `objects`.
            if let Err(e) = crate::files::sync_dir(&self.data_dir.join("objects")) {
                restore(&dirty);
                return Err(self.halt(e));
            }
        }
        for path in &self.also_sync {
            sync_object_files(path).map_err(|e| self.halt(e))?;
        }
        if lsn <= self.last_checkpoint.load(Ordering::Acquire) {
            return Ok(lsn);
        }
        write_checkpoint(&self.data_dir, lsn)?;
        self.last_checkpoint.store(lsn, Ordering::Release);
        self.bytes_since_checkpoint.store(0, Ordering::Release);
        retire_segments(
            &self.data_dir,
            lsn,
            self.retention,
            self.clock.now_ms(),
            self.live_segment.load(Ordering::Acquire),
        )?;
        tracing::debug!(lsn, objects = dirty.len(), "checkpoint");
        Ok(lsn)
    }

    /// A checkpoint's sync failed with `e`: no checkpoint runs again in this process
    /// (see `checkpoints_halted`).
    fn halt(&self, e: std::io::Error) -> std::io::Error {
        if !self.checkpoints_halted.swap(true, Ordering::AcqRel) {
            crate::telemetry::checkpoints_halted();
            tracing::error!(error = %e, "a checkpoint could not sync what it covers: checkpoints stop until the host restarts (the log grows; the next start replays it and checks the objects' files)");
        }
        e
    }
}

/// The host-wide log: the default durability component.
pub(crate) struct HostLog {
    sender: mpsc::Sender<Msg>,
    /// Whether rounds are written directly (see [`direct`]).
    direct: bool,
    stopped: AtomicBool,
    shared: Arc<Shared>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
}

impl HostLog {
    /// Start the writer (appending to a new segment that begins at `next_lsn`) and the
    /// checkpointer. Recovery must have run first.
    pub(crate) fn start(
        data_dir: &Path,
        next_lsn: u64,
        config: &LogConfig,
        also_sync: Vec<PathBuf>,
        clock: Arc<dyn Clock>,
        running: Arc<Running>,
    ) -> std::io::Result<HostLog> {
        let dir = log_dir(data_dir);
        crate::files::create_dirs(&dir)?;
        let segment = Segment::create(&dir, next_lsn)?;
        let direct = segment.direct.is_some();
        let prealloc = Arc::new(Prealloc::new(&segment));
        let checkpoint = read_checkpoint(data_dir)?;
        let shared = Arc::new(Shared {
            data_dir: data_dir.to_owned(),
            retention: config.retention,
            durable_lsn: watch::channel(next_lsn - 1).0,
            applied: (0..APPLIED_STRIPES)
                .map(|_| Mutex::new(Applied::default()))
                .collect(),
            bytes_since_checkpoint: AtomicU64::new(0),
            last_checkpoint: AtomicU64::new(checkpoint),
            failed: AtomicBool::new(false),
            checkpoints_halted: AtomicBool::new(false),
            feed: broadcast::channel(4096).0,
            also_sync,
            wake: (Mutex::new(false), Condvar::new()),
            checkpoint_lock: Mutex::new(()),
            clock,
            live_segment: AtomicU64::new(next_lsn),
        });
        let (tx, rx) = mpsc::channel();
        let writer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("durable-log-writer".into())
                .spawn({
                    let prealloc = prealloc.clone();
                    move || writer_loop(rx, shared, next_lsn, segment, &prealloc, &running)
                })?
        };
        let preparer = std::thread::Builder::new()
            .name("durable-log-prep".into())
            .spawn({
                let prealloc = prealloc.clone();
                move || prealloc.run()
            })?;
        let checkpointer = {
            let shared = shared.clone();
            let interval = config.checkpoint_interval;
            std::thread::Builder::new()
                .name("durable-checkpoint".into())
                .spawn(move || checkpointer_loop(shared, interval))?
        };
        Ok(HostLog {
            sender: tx,
            direct,
            stopped: AtomicBool::new(false),
            shared,
            threads: Mutex::new(vec![writer, checkpointer, preparer]),
        })
    }

    /// Run a checkpoint now; returns its lsn.
    pub(crate) fn checkpoint(&self) -> std::io::Result<u64> {
        self.shared.checkpoint()
    }

    /// Whether checkpoints stopped after a failed sync: the next start must replay
    /// the log with its checks, as after a crash.
    pub(crate) fn checkpoints_halted(&self) -> bool {
        self.shared.checkpoints_halted.load(Ordering::Acquire)
    }

    /// How rounds reach the disk: `direct` (`O_DIRECT | O_DSYNC`) or `buffered` (a
    /// write and `fdatasync`).
    pub(crate) fn writes(&self) -> &'static str {
        if self.direct {
            "direct"
        } else {
            "buffered"
        }
    }

    /// The highest lsn that is durable.
    pub(crate) fn durable_lsn(&self) -> u64 {
        *self.shared.durable_lsn.borrow()
    }

    /// Every record from now on, as it becomes durable.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.shared.feed.subscribe()
    }
}

impl Durability for HostLog {
    fn captures_changes(&self) -> bool {
        true
    }

    fn attach(
        &self,
        class: &'static str,
        id: ObjectId,
        db_path: &Path,
        durable_seq: u64,
    ) -> Box<dyn ObjectLog> {
        Box::new(HostObjectLog {
            tx: self.sender.clone(),
            shared: self.shared.clone(),
            class,
            id,
            db_path: Arc::new(db_path.to_owned()),
            pos: Arc::new(
                watch::channel(DurablePos {
                    durable: durable_seq,
                    ..DurablePos::default()
                })
                .0,
            ),
            written: Arc::default(),
        })
    }

    fn shutdown(&self, checkpoint: bool) {
        if self.stopped.swap(true, Ordering::AcqRel) {
            return;
        }
        let (ack_tx, ack_rx) = mpsc::channel();
        if self.sender.send(Msg::Shutdown(ack_tx)).is_ok() {
            let _ = ack_rx.recv();
        }
        {
            let (stop, cv) = &self.shared.wake;
            *stop.lock().unwrap() = true;
            cv.notify_all();
        }
        for t in std::mem::take(&mut *self.threads.lock().unwrap()) {
            let _ = t.join();
        }
        if checkpoint {
            if let Err(e) = self.shared.checkpoint() {
                tracing::error!(error = %e, "final checkpoint failed; the next start replays the log");
            }
        }
    }
}

struct HostObjectLog {
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    class: &'static str,
    id: ObjectId,
    db_path: Arc<PathBuf>,
    pos: Arc<watch::Sender<DurablePos>>,
    written: Arc<Mutex<Vec<u64>>>,
}

impl ObjectLog for HostObjectLog {
    fn captures_changes(&self) -> bool {
        true
    }

    fn submit(&self, seq: u64, change: Option<Change>) {
        let (kind, payload) = match change {
            Some(Change::Changeset(c)) => (RecordKind::Changes, c),
            Some(Change::Image(i)) => (RecordKind::Image, i),
            None => (RecordKind::Changes, Vec::new()),
        };
        let entry = Entry {
            class: self.class,
            object: self.id,
            seq,
            kind,
            payload,
            pos: self.pos.clone(),
            written: self.written.clone(),
        };
        if self.tx.send(Msg::Append(entry)).is_err() {
            self.pos.send_modify(|p| p.failed = true);
        }
    }

    fn watch(&self) -> watch::Receiver<DurablePos> {
        self.pos.subscribe()
    }

    fn adopt(&self, seq: u64, lsns: &[u64]) {
        {
            let mut written = self.written.lock().unwrap();
            for &lsn in lsns {
                if let Err(at) = written.binary_search(&lsn) {
                    written.insert(at, lsn);
                }
            }
        }
        let last = lsns.last().copied().unwrap_or(0);
        self.pos.send_modify(|p| {
            if seq >= p.durable {
                p.durable = seq;
                p.lsn = p.lsn.max(last);
            }
        });
    }

    fn rewind(&self) {
        if self.tx.send(Msg::Rewind(self.pos.clone())).is_err() {
            self.pos.send_modify(|p| p.failed = true);
        }
    }

    fn applied(&self, lsn: u64) {
        let mut applied = self.shared.applied[stripe(&self.id)].lock().unwrap();
        applied
            .dirty
            .entry((self.class, self.id))
            .or_insert_with(|| self.db_path.clone());
        let mut written = self.written.lock().unwrap();
        let through = written.partition_point(|&l| l <= lsn);
        for l in written.drain(..through) {
            applied.unapplied.remove(&l);
        }
    }
}

struct Segment {
    file: Arc<File>,
    /// The same file opened again, for the preparer's zero-filling and its syncs: an
    /// open file description of its own, so that a failed writeback its sync reports
    /// is reported to the writer's sync too (Linux reports such an error once to each
    /// open file description; on a shared one, the preparer's sync would take it and
    /// the writer's would then succeed over a round that is not on disk).
    prep_file: Arc<File>,
    /// Where the next round is written: the end of the segment's records (the file
    /// may go on in zeros, preallocated).
    size: u64,
    /// The rounds' direct, synchronous writes (`None`: buffered writes and
    /// `fdatasync`, where the file system takes no direct I/O).
    direct: Option<direct::DirectAppender>,
}

impl Segment {
    /// The end of what writing `len` more bytes touches: the records' end, or with
    /// direct writes the end of the block holding it (whole blocks are written). The
    /// preparer zero-fills only above it.
    fn claim_end(&self, len: usize) -> u64 {
        match self.direct {
            Some(_) => direct::padded_end(self.size, len),
            None => self.size + len as u64,
        }
    }

    fn create(dir: &Path, first_lsn: u64) -> std::io::Result<Segment> {
        let path = dir.join(segment_name(first_lsn));
        let file = crate::files::private_file()
            .create(true)
            .read(true)
            .write(true)
            .open(&path)?;
        // A segment of this name from before holds no records (they would have lsns
        // from `first_lsn` on, and the log goes on after the last one), but may hold
        // the zeros of its preallocation: writing resumes where its records end.
        let mut size = file.metadata()?.len();
        if size > 0 {
            let end = read_segment(&path)?.good_len;
            if end < size {
                file.set_len(end)?;
                file.sync_all()?;
                size = end;
            }
        }
        crate::files::sync_dir(dir)?;
        let direct = direct::DirectAppender::open(&path, &file, size)?;
        let prep_file = Arc::new(crate::files::private_file().write(true).open(&path)?);
        Ok(Segment {
            file: Arc::new(file),
            prep_file,
            size,
            direct,
        })
    }
}

/// Free space the log leaves on its filesystem: below it, rounds are refused as
/// `StorageFull` (not applied) though the preallocated segment could still take them,
/// so that a filling disk stops writes at the log, cleanly, and the objects' files keep
/// room to commit what the log already holds.
const LOG_RESERVE: u64 = 8 << 20;

/// How long a free-space reading stands before the writer asks again.
const FREE_SPACE_EVERY: Duration = Duration::from_millis(10);

/// Whether the filesystem of `dir` has less than [`LOG_RESERVE`] free (for unprivileged
/// writers), read at most every [`FREE_SPACE_EVERY`]. A failed reading counts as room.
fn below_reserve(dir: &Path, last: &mut Option<(Duration, bool)>) -> bool {
    let now = crate::clock::monotonic();
    if let Some((at, low)) = *last {
        if now.saturating_sub(at) < FREE_SPACE_EVERY {
            return low;
        }
    }
    use std::os::unix::ffi::OsStrExt;
    let low = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .ok()
        .and_then(|path| {
            let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
            // SAFETY: a NUL-terminated path and a struct statvfs fills.
            let rc = unsafe { libc::statvfs(path.as_ptr(), st.as_mut_ptr()) };
            // SAFETY: filled when rc is 0.
            (rc == 0).then(|| unsafe { st.assume_init() })
        })
        .is_some_and(|st| st.f_bavail.saturating_mul(st.f_frsize) < LOG_RESERVE);
    *last = Some((now, low));
    low
}

/// Bytes the preparer zero-fills (and syncs) at a time.
const PREPARE_CHUNK: u64 = 1 << 20;
/// How far ahead of the writer the preparer keeps the segment zero-filled.
const PREPARE_LEAD: u64 = 2 << 20;

/// Preallocation of the segment being written: a thread zero-fills and syncs it ahead
/// of the writer, so a round's synchronous write overwrites blocks the file already holds and
/// has no metadata (the file's size) to journal (`durable-bench log_sync`: about a third
/// less time and CPU per sync here). The writer claims each round's range before it
/// writes; the preparer zero-fills only above every claim, and a round that would
/// overlap the range being zero-filled waits for it. Behind the preparer, the writer
/// extends the file as it would without it. Best effort: a failure stops preparing
/// that segment.
struct Prealloc {
    state: Mutex<Prepared>,
    changed: Condvar,
}

#[derive(Default)]
struct Prepared {
    /// The segment being written, and a number that changes with it.
    file: Option<Arc<File>>,
    generation: u64,
    /// The writer writes only below this.
    claimed: u64,
    /// Zero-filled and synced below this.
    zeroed: u64,
    /// Being zero-filled: (generation, start, end).
    zeroing: Option<(u64, u64, u64)>,
    /// Preparing this segment failed (a full disk): the writer extends it.
    failed: bool,
    stop: bool,
}

impl Prealloc {
    fn new(segment: &Segment) -> Prealloc {
        Prealloc {
            state: Mutex::new(Prepared {
                file: Some(segment.prep_file.clone()),
                claimed: segment.claim_end(0),
                ..Prepared::default()
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Prepared> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer is about to write `[start, end)` of the current segment.
    fn claim(&self, start: u64, end: u64) {
        let mut p = self.lock();
        while matches!(p.zeroing, Some((g, a, b)) if g == p.generation && start < b && a < end) {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.claimed = p.claimed.max(end);
        if p.zeroed < p.claimed + PREPARE_LEAD / 2 {
            self.changed.notify_all();
        }
    }

    /// The writer moved to `segment`.
    fn switch(&self, segment: &Segment) {
        let mut p = self.lock();
        p.file = Some(segment.prep_file.clone());
        p.generation += 1;
        p.claimed = segment.claim_end(0);
        p.zeroed = 0;
        p.failed = false;
        self.changed.notify_all();
    }

    /// Stop preparing and wait for a chunk in progress; then `file` may be cut.
    fn stop(&self) {
        let mut p = self.lock();
        p.stop = true;
        self.changed.notify_all();
        while p.zeroing.is_some() {
            p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn run(&self) {
        let zeros = vec![0u8; PREPARE_CHUNK as usize];
        let mut p = self.lock();
        loop {
            if p.stop {
                return;
            }
            let start = p.zeroed.max(p.claimed);
            let wanted = !p.failed
                && p.file.is_some()
                && start < p.claimed + PREPARE_LEAD
                && start + PREPARE_CHUNK <= SEGMENT_BYTES;
            if !wanted {
                p = self.changed.wait(p).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let (file, generation) = (p.file.clone().expect("checked"), p.generation);
            let end = start + PREPARE_CHUNK;
            p.zeroing = Some((generation, start, end));
            drop(p);
            let done = {
                use std::os::unix::fs::FileExt;
                file.write_all_at(&zeros, start)
                    .and_then(|()| file.sync_data())
            };
            p = self.lock();
            if p.generation == generation {
                match done {
                    Ok(()) => p.zeroed = end,
                    Err(e) => {
                        tracing::warn!(error = %e, "preallocating the host log failed; the writer extends the segment instead");
                        p.failed = true;
                        // Give back what was allocated past every claim.
                        let _ = file.set_len(p.claimed.max(p.zeroed));
                    }
                }
            }
            p.zeroing = None;
            self.changed.notify_all();
        }
    }
}

fn writer_loop(
    rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    next_lsn: u64,
    mut segment: Segment,
    prealloc: &Prealloc,
    running: &Running,
) {
    write_rounds(rx, &shared, next_lsn, &mut segment, prealloc, running);
    // The zeros past the records are not needed any more (they read as the end).
    prealloc.stop();
    let _ = segment.file.set_len(segment.size);
}

/// The longest a round waits for running shards to hand over their batches (and never
/// longer than the last round took to write).
const LINGER_MAX: Duration = Duration::from_micros(200);

/// How many records the last round must have held (of more than one object) for the
/// next to wait: with a few callers a round holds all of their calls already, and a
/// wait would only put them in lock-step.
const LINGER_AFTER: usize = 5;

/// Move what is waiting in the channel into the round, up to a control message or 16
/// MiB of records.
fn take_waiting(
    rx: &mpsc::Receiver<Msg>,
    batch: &mut Vec<Entry>,
    pending: &mut usize,
    control: &mut Option<Msg>,
) {
    while control.is_none() && *pending < (16 << 20) {
        match rx.try_recv() {
            Ok(Msg::Append(e)) => {
                *pending += e.payload.len();
                batch.push(e);
            }
            Ok(other) => *control = Some(other),
            Err(_) => break,
        }
    }
}

fn write_rounds(
    rx: mpsc::Receiver<Msg>,
    shared: &Shared,
    mut next_lsn: u64,
    segment: &mut Segment,
    prealloc: &Prealloc,
    running: &Running,
) {
    let dir = log_dir(&shared.data_dir);
    let mut last_round_shared = false;
    let mut last_took = Duration::ZERO;
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut batch: Vec<Entry> = Vec::new();
    let mut free_space = None;
    loop {
        // A control message ends the round: what came before it is written first.
        let mut control = None;
        // Group commit: a round takes whatever is waiting and starts at once. What
        // arrives while it syncs makes the next round. No fixed linger for more: with
        // the callers waiting on this round, a blind wait only delays them
        // (increments_hot 39k -> 45k incr/s without a 125-250 µs linger).
        let first = match rx.recv() {
            Ok(m) => m,
            Err(_) => return,
        };
        match first {
            Msg::Append(e) => batch.push(e),
            other => control = Some(other),
        }
        let mut pending: usize = batch.iter().map(|e| e.payload.len()).sum();
        take_waiting(&rx, &mut batch, &mut pending, &mut control);
        // But under load from many objects (the last round held LINGER_AFTER records
        // or more, of more than one object) and while a shard is still running, their
        // next batches are microseconds away: wait for the shards to park (see
        // `running`), then take what they handed over. Not for one busy object: its
        // next batch runs while this round is written, and waiting for it would undo
        // that overlap.
        if control.is_none() && last_round_shared && running.any() {
            // No longer than a round takes: where syncs are fast, so is the wait.
            running.wait_parked(last_took.min(LINGER_MAX));
            take_waiting(&rx, &mut batch, &mut pending, &mut control);
        }
        // An object whose earlier batch the log refused builds on state that was
        // undone: refuse its later batches too, until it rewinds.
        batch.retain(|e| e.pos.borrow().rejected.is_none());
        last_round_shared = batch.len() >= LINGER_AFTER
            && batch.iter().any(|e| !Arc::ptr_eq(&e.pos, &batch[0].pos));
        if !batch.is_empty() {
            if shared.failed.load(Ordering::Acquire) {
                batch
                    .drain(..)
                    .for_each(|e| e.pos.send_modify(|p| p.failed = true));
            } else if below_reserve(&dir, &mut free_space) {
                tracing::warn!(
                    records = batch.len(),
                    reserve = LOG_RESERVE,
                    "the host log's disk is nearly full; those batches are refused (not applied)"
                );
                batch
                    .drain(..)
                    .for_each(|e| e.pos.send_modify(|p| p.rejected = Some(Refusal::Full)));
            } else {
                last_took = write_round(
                    shared,
                    &dir,
                    segment,
                    prealloc,
                    &mut buf,
                    &mut batch,
                    &mut next_lsn,
                );
            }
        }
        match control {
            Some(Msg::Shutdown(ack)) => {
                let _ = ack.send(());
                return;
            }
            Some(Msg::Rewind(pos)) => pos.send_modify(|p| {
                p.rejected = None;
                p.epoch += 1;
            }),
            _ => {}
        }
    }
}

/// Append one round of records in one synchronous write, then mark them durable. If the
/// write or the sync fails, cut the segment back to where the round began and sync
/// that: then none of the round is on disk, its batches are refused (their objects
/// undo them and carry on), and the log keeps going, so a disk that fills up and is
/// freed again needs no restart. Only if even the cut fails is the outcome unknown:
/// then nothing more is acknowledged until a restart replays the log. Returns how long
/// the write took (zero if it failed).
fn write_round(
    shared: &Shared,
    dir: &Path,
    segment: &mut Segment,
    prealloc: &Prealloc,
    buf: &mut Vec<u8>,
    batch: &mut Vec<Entry>,
    next_lsn: &mut u64,
) -> Duration {
    let first = *next_lsn;
    let now = shared.clock.now_ms();
    buf.clear();
    for e in batch.iter() {
        let header = record::Header {
            lsn: *next_lsn,
            time_ms: now,
            kind: e.kind,
            class: e.class,
            object: e.object,
            seq: e.seq,
            round_start: *next_lsn == first,
        };
        record::encode(buf, &header, &e.payload);
        *next_lsn += 1;
    }
    // A round that does not fit starts a new segment, which replaces the current one
    // only once the round is durable in it.
    let rollover = segment.size > 0 && segment.size + buf.len() as u64 > SEGMENT_BYTES;
    let mut fresh = None;
    let started = crate::clock::monotonic();
    let result = (|| {
        use std::os::unix::fs::FileExt;
        let target = if rollover {
            fresh.insert(Segment::create(dir, first)?)
        } else {
            prealloc.claim(segment.size, segment.claim_end(buf.len()));
            &mut *segment
        };
        if let Some(d) = &mut target.direct {
            match d.append(target.size, buf) {
                // A file system that opened the file for direct I/O but refuses the
                // write's alignment: write buffered from now on (the whole round again,
                // from the segment's end, over whatever part of it got written).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(error = %e, "the host log's direct write was refused; writing through the page cache and fdatasync instead");
                    target.direct = None;
                }
                done => return done,
            }
        }
        target.file.write_all_at(buf, target.size)?;
        target.file.sync_data()
    })();
    if let Err(e) = result {
        // The round's lsns are not reused: lsns never repeat, gaps are allowed.
        let cut = if rollover {
            // No segment may be left behind empty (its name would sort after the
            // segments a restart writes, and retiring could take the live one).
            drop(fresh);
            match std::fs::remove_file(dir.join(segment_name(first))) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => crate::files::sync_dir(dir),
            }
        } else {
            segment
                .file
                .set_len(segment.size)
                .and_then(|_| segment.file.sync_data())
        };
        match cut {
            Ok(()) => {
                let why = Refusal::of(&e);
                tracing::warn!(error = %e, records = batch.len(), "writing the host log failed; those batches are refused (not applied) and the log carries on");
                batch
                    .drain(..)
                    .for_each(|e| e.pos.send_modify(|p| p.rejected = Some(why)));
            }
            Err(cut_error) => {
                tracing::error!(error = %e, %cut_error, "writing the host log failed and the partial write could not be cut off; no further writes are acknowledged until a restart");
                shared.failed.store(true, Ordering::Release);
                batch
                    .drain(..)
                    .for_each(|e| e.pos.send_modify(|p| p.failed = true));
            }
        }
        return Duration::ZERO;
    }
    let took = crate::clock::monotonic().saturating_sub(started);
    crate::telemetry::log_round(batch.len(), took);
    if let Some(fresh) = fresh {
        shared.live_segment.store(first, Ordering::Release);
        let old = std::mem::replace(segment, fresh);
        segment.size += buf.len() as u64;
        prealloc.switch(segment);
        // The old segment's zeros past its records (no sync needed: they read as its
        // end) unless the preparer is still writing some.
        let busy = prealloc.lock().zeroing.is_some();
        if !busy {
            let _ = old.file.set_len(old.size);
        }
    } else {
        segment.size += buf.len() as u64;
    }
    let since = shared
        .bytes_since_checkpoint
        .fetch_add(buf.len() as u64, Ordering::AcqRel);
    // Durable, not yet committed by their objects: no checkpoint may cover them until
    // each object reports it has.
    for (i, e) in batch.iter().enumerate() {
        let lsn = first + i as u64;
        shared.applied[stripe(&e.object)]
            .lock()
            .unwrap()
            .unapplied
            .insert(lsn);
        e.written.lock().unwrap().push(lsn);
    }
    shared.durable_lsn.send_replace(*next_lsn - 1);
    let publish = shared.feed.receiver_count() > 0;
    for (i, e) in batch.drain(..).enumerate() {
        let lsn = first + i as u64;
        e.pos.send_modify(|p| {
            if e.seq >= p.durable {
                p.durable = e.seq;
                p.lsn = lsn;
            }
        });
        if publish {
            let _ = shared.feed.send(Arc::new(LogRecord {
                lsn,
                time_ms: now,
                kind: e.kind,
                class: e.class.to_string(),
                object: e.object,
                seq: e.seq,
                payload: e.payload,
            }));
        }
    }
    if since + buf.len() as u64 > CHECKPOINT_BYTES
        && !shared.checkpoints_halted.load(Ordering::Relaxed)
    {
        shared.wake.1.notify_all();
    }
    took
}

fn checkpointer_loop(shared: Arc<Shared>, interval: Option<Duration>) {
    let (stop, cv) = &shared.wake;
    let mut stopped = stop.lock().unwrap();
    loop {
        if *stopped {
            return;
        }
        let wait = interval.unwrap_or(Duration::from_secs(3600));
        stopped = cv.wait_timeout(stopped, wait).unwrap().0;
        if *stopped {
            return;
        }
        let due = interval.is_some()
            || shared.bytes_since_checkpoint.load(Ordering::Acquire) > CHECKPOINT_BYTES;
        // Halted after a failed sync: said once, when it halted.
        if due && !shared.checkpoints_halted.load(Ordering::Acquire) {
            drop(stopped);
            if let Err(e) = shared.checkpoint() {
                tracing::error!(error = %e, "checkpoint failed");
            }
            stopped = stop.lock().unwrap();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Scans in progress, and the most at once (see [`object_records`]).
    static SCANNING: (AtomicUsize, AtomicUsize) = (AtomicUsize::new(0), AtomicUsize::new(0));

    pub(super) struct Scanning;

    impl Scanning {
        pub(super) fn enter() -> Scanning {
            let now = SCANNING.0.fetch_add(1, Ordering::SeqCst) + 1;
            SCANNING.1.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(5));
            Scanning
        }
    }

    impl Drop for Scanning {
        fn drop(&mut self) {
            SCANNING.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn objects_scan_the_log_one_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(log_dir(dir.path())).unwrap();
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let data = dir.path();
                s.spawn(move || {
                    object_records(data, "C", ObjectId::from_bytes([i; 16]), 0).unwrap()
                });
            }
        });
        assert_eq!(SCANNING.1.load(Ordering::SeqCst), 1);
    }

    /// The preparer zero-fills and syncs the segment through an open file description
    /// of its own: one file offset (and one record of writeback errors) per open, so
    /// moving one's offset leaves the other's alone.
    #[test]
    fn the_preparer_syncs_through_its_own_open_of_the_segment() {
        use std::io::{Seek, SeekFrom};
        let dir = tempfile::tempdir().unwrap();
        let segment = Segment::create(dir.path(), 1).unwrap();
        let prealloc = Prealloc::new(&segment);
        let prep = prealloc.lock().file.clone().unwrap();
        assert!(!Arc::ptr_eq(&prep, &segment.file));
        (&*prep).seek(SeekFrom::Start(4096)).unwrap();
        assert_eq!((&*segment.file).stream_position().unwrap(), 0);
        assert_eq!((&*prep).stream_position().unwrap(), 4096);
    }

    /// A round that starts a new segment creates its file before the round is
    /// durable; a checkpoint meanwhile sees that file as the newest. If the round then
    /// fails, the writer goes on in the segment before it: the checkpoint must not have
    /// retired that one.
    #[test]
    fn a_checkpoint_never_retires_the_segment_the_writer_appends_to() {
        let dir = tempfile::tempdir().unwrap();
        let log = log_dir(dir.path());
        std::fs::create_dir_all(&log).unwrap();
        for first in [1u64, 100] {
            std::fs::write(log.join(segment_name(first)), b"").unwrap();
        }
        let names = || -> Vec<u64> {
            list_segments(&log)
                .unwrap()
                .into_iter()
                .map(|(f, _)| f)
                .collect()
        };
        // Everything up to 99 is checkpointed; the writer is still in segment 1.
        retire_segments(dir.path(), 99, None, 0, 1).unwrap();
        assert_eq!(names(), vec![1, 100]);
        // Once the writer moved to segment 100, segment 1 goes.
        retire_segments(dir.path(), 99, None, 0, 100).unwrap();
        assert_eq!(names(), vec![100]);
    }
}
