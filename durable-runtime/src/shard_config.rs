//! What every shard shares: its settings, and the call routed to an object (below the
//! shard and its read path, so neither imports the other for them).

use crate::alarms::AlarmService;
use crate::chain::CallChain;
use crate::class::ClassEntry;
use crate::clock::Clock;
use crate::durability::Durability;
use crate::outgoing::LocalCalls;
use durable_client::wire::CallRequest;
use durable_client::ObjectId;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// One call routed to an object.
pub(crate) struct Call {
    pub(crate) class: Arc<ClassEntry>,
    pub(crate) method: usize,
    pub(crate) request: CallRequest,
    /// Drop the call unrun after this (ms, the host clock).
    pub(crate) deadline_ms: u64,
    /// For a call made by another object's turn: the objects waiting on it.
    pub(crate) chain: Option<Arc<CallChain>>,
    pub(crate) reply: crate::answering::Answer,
    /// When it arrived ([`crate::clock::monotonic`], as its transport read it):
    /// its wait in the object's queue is measured from here
    /// (`durable_call_queue_seconds`).
    pub(crate) arrived: std::time::Duration,
}

/// How the objects' turns reach the host's other objects (set once the host's call
/// entry exists, after the shards).
pub(crate) type LocalSlot = Arc<std::sync::OnceLock<Arc<dyn LocalCalls>>>;

/// Settings every shard shares.
#[derive(Clone)]
pub(crate) struct ShardConfig {
    pub(crate) data_dir: PathBuf,
    pub(crate) max_queue: usize,
    pub(crate) max_batch: usize,
    pub(crate) request_window: usize,
    pub(crate) durability: Arc<dyn Durability>,
    /// With retention: ship a whole image when the last one is older than this.
    pub(crate) snapshot_every: Option<std::time::Duration>,
    /// The host log's durable lsn, for bookmarks.
    pub(crate) bookmarks: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
    /// Every class the host serves (alarm wakes name only the class).
    pub(crate) classes: crate::class::NameMap<Arc<ClassEntry>>,
    pub(crate) alarms: Arc<AlarmService>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Objects idle this long are evicted.
    pub(crate) idle_timeout: Duration,
    /// Active objects quiet this long close their database connection.
    pub(crate) connection_idle: Duration,
    /// At most this many active objects per shard; the least recently used idle ones go first.
    pub(crate) max_active: usize,
    /// Keep an object's SQLite transaction open across batches (host log only; off
    /// under the test harness, whose `storage()` reads the files directly).
    pub(crate) defer_commits: bool,
    /// Objects that stopped with batches the log holds and their file lacks (the file's
    /// commit failed): their next activation rebuilds those from the log first.
    pub(crate) behind: RefCell<std::collections::HashSet<(&'static str, ObjectId)>>,
    /// Which objects exist, and digests of the content of those that stopped cleanly.
    pub(crate) catalog: Arc<crate::catalog::Catalog>,
    /// The previous host stopped uncleanly: check each object's file against its
    /// digest when it first activates.
    pub(crate) unclean_start: bool,
    /// Objects whose file was checked this run.
    pub(crate) verified: RefCell<std::collections::HashSet<(&'static str, ObjectId)>>,
    /// The host's WebSockets (turns list them; released batches act on them).
    pub(crate) sockets: Option<Arc<crate::sockets::Registry>>,
    /// The followers of the host's streams (released batches hand them items).
    pub(crate) streams: Option<Arc<crate::streams::Hub>>,
    /// How turns call the host's other objects.
    pub(crate) local: LocalSlot,
    /// Most bytes of pages in use per object database.
    pub(crate) max_object_bytes: u64,
    /// Files made ahead for new objects.
    pub(crate) spares: Option<Arc<crate::spares::Spares>>,
}

/// The text of a caught panic, for the `Panicked` reply and the log.
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
