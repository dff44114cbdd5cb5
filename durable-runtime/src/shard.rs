//! Shards: a few threads, each with a single-threaded executor that owns its objects,
//! their SQLite connections and their queues. An object is pinned to one shard by its
//! id, so turns need no locks; the network runtime only moves frames in and out.
//!
//! Each object runs one task that takes the calls waiting in its bounded queue as a
//! batch: one SQLite transaction, one savepoint per call (a failing call rolls back
//! only itself), one commit, then the durability component makes the batch durable
//! and only then are the batch's replies released (the output gate).

use crate::capture::ChangeCapture;
use crate::chain::CallChain;
use crate::class::{ClassEntry, Instance, TurnOutcome};
use crate::clock::Clock;
use crate::context::Context;
use crate::core::object::{Action, CoreLimits, Input, ObjectCore, Work as CoreWork};
use crate::core::outbox::{Effects, Outbox, TurnEnd};
use crate::durability::{Change, DurablePos, ObjectLog, Refusal};
use crate::outgoing::FlushRequest;
use crate::restore_target::RestoreTarget;
pub(crate) use crate::shard_config::{panic_message, Call, LocalSlot, ShardConfig};
use crate::store::{self, Recorded};
use durable_client::wire::{Response, WireError};
use durable_client::ObjectId;
use futures_util::FutureExt;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// The shard threads and the channels into them.
pub(crate) struct Shards {
    senders: Vec<mpsc::UnboundedSender<Message>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

pub(crate) enum Message {
    /// A call from a client.
    Call(Call),
    /// Run the object's due alarms.
    Alarm(&'static str, ObjectId),
    /// Evict the object if it is idle; answers whether it was active.
    Evict(&'static str, ObjectId, oneshot::Sender<bool>),
    /// Finish queued work (or, with `false`, drop it as a crash would) and stop.
    Close(bool),
}

impl Shards {
    pub(crate) fn start(n: usize, config: ShardConfig) -> std::io::Result<Shards> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let config = config.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(64)
                .thread_name(format!("durable-shard-{i}-io"))
                .build()?;
            let handle = std::thread::Builder::new()
                .name(format!("durable-shard-{i}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, route(rx, Rc::new(config)));
                    // Let every object finish its queue and release its replies.
                    rt.block_on(local);
                })?;
            senders.push(tx);
            threads.push(handle);
        }
        Ok(Shards {
            senders,
            threads: std::sync::Mutex::new(threads),
        })
    }

    /// Hand a call to the shard that owns its object.
    pub(crate) fn send(&self, call: Call) {
        let (class, id) = (call.class.name, call.request.object);
        if let Err(Message::Call(call)) = self
            .send_message(class, id, Message::Call(call))
            .map_err(|m| *m)
        {
            let _ = call.reply.send(Response::Error(WireError::ShuttingDown));
        }
    }

    /// Hand a message to the shard that owns the object; gives it back if the shard
    /// has stopped.
    pub(crate) fn send_message(
        &self,
        class: &str,
        id: ObjectId,
        message: Message,
    ) -> Result<(), Box<Message>> {
        let b = id.as_bytes();
        let h = u64::from_le_bytes(b[..8].try_into().unwrap()) ^ fnv(class.as_bytes());
        let shard = (h % self.senders.len() as u64) as usize;
        self.senders[shard].send(message).map_err(|e| Box::new(e.0))
    }

    /// Stop taking calls, finish every queued one (or drop them all, with `drain`
    /// false), close every database and join the shard threads (blocking).
    pub(crate) fn shutdown(&self, drain: bool) {
        for tx in &self.senders {
            let _ = tx.send(Message::Close(drain));
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// What the router and an object's task share: the object's pure core (queue,
/// batches, output gate) and the bell that wakes its task.
struct Slot {
    core: RefCell<ObjectCore<Work, Reply>>,
    notify: Notify,
    /// How many times the object rewound since it attached its log: a refusal the log
    /// reports with an older count was already undone (see [`DurablePos::epoch`]).
    rewinds: Cell<u64>,
    /// The object's file lacks batches the log holds (poisoned, or its commit keeps
    /// failing): it must not be evicted, it heals and commits itself (until then every
    /// checkpoint stays below those batches).
    pinned: Cell<bool>,
    /// Its read-only calls (see [`crate::reads`]).
    reads: crate::reads::ReadState,
}

impl Slot {
    /// No work queued or running, no output waiting, no read in flight.
    fn idle(&self) -> bool {
        self.core.borrow().is_idle() && !self.reads.busy()
    }
}

impl crate::reads::Writer for Slot {
    fn reads(&self) -> &crate::reads::ReadState {
        &self.reads
    }
    fn durable(&self) -> u64 {
        self.core.borrow().durable()
    }
    fn fallback(&self, now: u64, call: Call) {
        match self.core.borrow_mut().arrive(now, Work::Call(call)) {
            Ok(()) => self.notify.notify_one(),
            Err(Work::Call(call)) => {
                let _ = call.reply.send(Response::Error(WireError::OverloadedRetry {
                    retry_after_ms: QUEUE_FULL_RETRY_MS,
                }));
            }
            Err(Work::Alarm) => {}
        }
    }
    fn touch(&self, now: u64) {
        self.core.borrow_mut().touch(now);
    }
}

/// Work for an object: a call, or a wake-up to run due alarms.
enum Work {
    Call(Call),
    Alarm,
}

impl CoreWork for Work {
    fn is_call(&self) -> bool {
        matches!(self, Work::Call(_))
    }
}

fn spawn_object(config: &Rc<ShardConfig>, class: Arc<ClassEntry>, id: ObjectId) -> Rc<Slot> {
    let limits = CoreLimits {
        max_queue: config.max_queue,
        max_batch: config.max_batch,
    };
    let slot = Rc::new(Slot {
        core: RefCell::new(ObjectCore::new(limits, 0, config.clock.now_ms())),
        notify: Notify::new(),
        rewinds: Cell::new(0),
        pinned: Cell::new(false),
        reads: Default::default(),
    });
    let (flush_tx, flush_rx) = mpsc::unbounded_channel();
    let object = Object {
        slot: slot.clone(),
        class,
        id,
        config: config.clone(),
        spare_capture: None,
        ctx: None,
        conn: None,
        instance: None,
        log: None,
        seq: 0,
        needs_image: false,
        last_image_seq: 0,
        last_image_ms: 0,
        reported_due: None,
        poisoned: false,
        heal_after: 0,
        unservable: None,
        first_activation: false,
        commit_retry_at: 0,
        commit_backoff: 0,
        txn_open: false,
        deferred: 0,
        holds_memory: false,
        digest_seq: 0,
        flush_tx,
        flush_rx: Some(flush_rx),
        turns: 0,
        request_max: None,
    };
    tokio::task::spawn_local(object.run());
    crate::telemetry::object_active(1.0, false);
    slot
}

/// Evict: close the object (its task finishes its work and drops it).
fn close_slot(slot: &Slot, now: u64) {
    slot.core.borrow_mut().handle(now, Input::Close);
    slot.notify.notify_one();
    crate::telemetry::object_active(-1.0, true);
}

/// Evict objects idle past the timeout, then the least recently used idle ones while
/// more than `max_active - room` are active. Never an object with queued or running work.
fn sweep(
    objects: &mut HashMap<(&'static str, ObjectId), Rc<Slot>>,
    config: &ShardConfig,
    room: usize,
) {
    let now = config.clock.now_ms();
    let timeout = config.idle_timeout.as_millis() as u64;
    objects.retain(|_, slot| {
        let last_used = slot.core.borrow().last_used();
        let keep = slot.pinned.get() || !(slot.idle() && now.saturating_sub(last_used) >= timeout);
        if !keep {
            close_slot(slot, now);
        }
        keep
    });
    let limit = config.max_active.saturating_sub(room);
    if objects.len() > limit {
        let mut candidates: Vec<_> = objects
            .iter()
            .filter(|(_, s)| s.idle() && !s.pinned.get())
            .map(|(k, s)| (s.core.borrow().last_used(), *k))
            .collect();
        let excess = (objects.len() - limit).min(candidates.len());
        if excess > 0 && excess < candidates.len() {
            // The `excess` least recently used, in linear time.
            candidates.select_nth_unstable(excess - 1);
        }
        for (_, key) in candidates.into_iter().take(excess) {
            if let Some(slot) = objects.remove(&key) {
                close_slot(&slot, now);
            }
        }
    }
}

async fn route(mut rx: mpsc::UnboundedReceiver<Message>, config: Rc<ShardConfig>) {
    let mut objects: HashMap<(&'static str, ObjectId), Rc<Slot>> = HashMap::new();
    let period = (config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut sweeper = tokio::time::interval(period);
    sweeper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let drain = loop {
        let message = tokio::select! {
            m = rx.recv() => m,
            _ = sweeper.tick() => {
                sweep(&mut objects, &config, 0);
                continue;
            }
        };
        let (class, id, work) = match message {
            None => break true,
            Some(Message::Close(drain)) => break drain,
            Some(Message::Call(call)) => {
                // A read-only call to a busy object runs at once on its reader. An idle
                // object (nothing running, queued or waiting for its sync) takes it as a
                // turn, which runs and answers at once: its writer's state is then exactly
                // the durable state, and that path is the shorter one (no second
                // connection, no read transaction to begin and end).
                let call = match objects.get(&(call.class.name, call.request.object)) {
                    Some(slot)
                        if call.class.is_read(call.method) && !slot.core.borrow().is_idle() =>
                    {
                        match crate::reads::offer(slot, &config, call) {
                            None => continue,
                            Some(call) => call,
                        }
                    }
                    _ => call,
                };
                (call.class.clone(), call.request.object, Work::Call(call))
            }
            Some(Message::Alarm(class, id)) => {
                let Some(entry) = config.classes.get(class) else {
                    config.alarms.wake_done();
                    continue;
                };
                (entry.clone(), id, Work::Alarm)
            }
            Some(Message::Evict(class, id, done)) => {
                let active = match objects.get(&(class, id)) {
                    Some(slot) if slot.idle() && !slot.pinned.get() => {
                        close_slot(slot, config.clock.now_ms());
                        objects.remove(&(class, id));
                        true
                    }
                    _ => false,
                };
                let _ = done.send(active);
                continue;
            }
        };
        let key = (class.name, id);
        if !objects.contains_key(&key) && objects.len() >= config.max_active {
            // At the cap: make room before opening another database.
            sweep(&mut objects, &config, 1);
        }
        let slot = objects
            .entry(key)
            .or_insert_with(|| spawn_object(&config, class, id));
        let refused = slot.core.borrow_mut().arrive(config.clock.now_ms(), work);
        match refused {
            Ok(()) => slot.notify.notify_one(),
            Err(Work::Call(call)) => {
                let _ = call.reply.send(Response::Error(WireError::OverloadedRetry {
                    retry_after_ms: QUEUE_FULL_RETRY_MS,
                }));
            }
            Err(Work::Alarm) => config.alarms.wake_done(),
        }
    };
    let now = config.clock.now_ms();
    for slot in objects.values() {
        let input = if drain { Input::Close } else { Input::Crash };
        slot.core.borrow_mut().handle(now, input);
        slot.notify.notify_one();
    }
    crate::telemetry::object_active(-(objects.len() as f64), false);
}

/// One object's state on its shard.
struct Object {
    slot: Rc<Slot>,
    class: Arc<ClassEntry>,
    id: ObjectId,
    config: Rc<ShardConfig>,
    /// A change capture left empty by a read-only batch, reused by the next one.
    /// Declared before `ctx`: it must be dropped before the connection closes.
    spare_capture: Option<ChangeCapture>,
    ctx: Option<Context>,
    /// The object's connection while it is open (the one `ctx` holds): the batch
    /// machinery reaches it through here, also while a turn holds `ctx`.
    conn: Option<Rc<rusqlite::Connection>>,
    instance: Option<Box<dyn Instance>>,
    log: Option<Box<dyn ObjectLog>>,
    /// The last batch committed (and handed to the log); stored in the database.
    seq: u64,
    /// The next commit must ship a whole image (the object is new to the log).
    needs_image: bool,
    /// The last batch shipped as a whole image: if the log refuses it, the next batch
    /// must ship one again.
    last_image_seq: u64,
    /// When the object last shipped a whole image (ms since the epoch).
    last_image_ms: u64,
    /// The earliest alarm due time last written to the host's alarm index.
    reported_due: Option<u64>,
    /// The log holds batches the object's file lacks (its commit failed and SQLite
    /// dropped the transaction): no call runs until [`Object::heal`] re-applies them
    /// from the log (at the next call, or the next restart's replay).
    poisoned: bool,
    /// When the next attempt to rebuild a poisoned object from the log may run (ms).
    heal_after: u64,
    /// The object's file is missing or damaged and could not be rebuilt: why.
    unservable: Option<String>,
    /// This is the object's first activation in this process: make sure the catalog
    /// lists it (objects stored before the catalog existed). Later activations skip
    /// that write.
    first_activation: bool,
    /// After the file's commit failed: not before this time (ms) again, with a backoff
    /// that doubles (ms) while it keeps failing.
    commit_retry_at: u64,
    commit_backoff: u64,
    /// An SQLite transaction is open on the object's database. Under the host log it
    /// stays open across batches (each batch a savepoint in it): the log already
    /// makes a batch durable, so the file commits only every few batches or when the
    /// object goes quiet, and the WAL writes of many batches become one.
    txn_open: bool,
    /// Batches in the open transaction that the file has not committed: handed to the
    /// log (durable, or on their way), committed to the file once the log has them.
    deferred: usize,
    /// The connection may hold cached pages (a batch ran since it last gave them back).
    holds_memory: bool,
    /// The batch number whose content digest the catalog is known to hold: a quiet
    /// object kept warm for a coming alarm passes the idle check every second, and
    /// asking the catalog each time cost a query.
    digest_seq: u64,
    /// Where the running turn asks for its writes so far to be made durable before it
    /// calls another object (see [`crate::outgoing`]); taken while a turn runs.
    flush_tx: mpsc::UnboundedSender<FlushRequest>,
    flush_rx: Option<mpsc::UnboundedReceiver<FlushRequest>>,
    /// Turns run so far (a stub kept past its turn is refused).
    turns: u64,
    /// The largest request id recorded in the object's database, once read: a call
    /// whose id is larger cannot have been applied, and skips the lookup (ids are in
    /// time order, so most are). `None` until read, and again whenever something other
    /// than a call may have recorded ids (activation, healing, a restore). A stale
    /// larger value only costs lookups.
    request_max: Option<[u8; 16]>,
}

/// A batch in progress: what its commit needs. A turn that calls another object
/// commits the batch so far in the middle ([`Object::flush_turn`]) and starts these
/// over.
struct Pending {
    capture: Option<ChangeCapture>,
    /// The write marker when the (remaining) batch began.
    before: (u64, i64),
    /// Request ids the (remaining) batch recorded.
    recorded: Vec<store::RecordedCall>,
    /// A commit in the middle of the batch failed: the batch fails with this.
    broken: Option<CommitError>,
}

/// A batch runs at most this long before it lets the shard's other tasks in.
const BATCH_SLICE: Duration = Duration::from_micros(30);

/// The retry-after hint for a call refused because its object's queue is full.
const QUEUE_FULL_RETRY_MS: u64 = 50;

/// How long an object stays quiet before its connection gives back its page cache.
const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// A quiet object whose next alarm is due within this keeps its page cache: an alarm
/// turn that reads its pages back from the OS runs up to milliseconds late when many
/// objects' alarms come due together.
const ALARM_WARM: Duration = Duration::from_secs(10);

/// Most batches an object keeps in its open transaction before committing its file.
const DEFER_MAX_BATCHES: usize = 64;

/// Largest object whose content digest is recorded when it stops, and when it goes
/// quiet (see `Object::record_digest`).
const DIGEST_STOP_MAX: i64 = 4 << 20;
const DIGEST_QUIET_MAX: i64 = 1 << 20;

/// How long an object with deferred batches waits, quiet, before committing its file.
const DEFER_IDLE: Duration = Duration::from_millis(100);

/// A reply decided by a batch, waiting for the batch to be durable.
/// The flag marks a recorded answer (a resent request id that an earlier batch
/// applied): true whatever becomes of this batch, except that if this batch is refused
/// the earlier one may have been too.
type Reply = (ReplyTo, Response, bool);

/// Where a batch's output goes once the gate releases it: a caller, or the host's
/// WebSockets (the batch's socket effects, applied only if released as a success).
enum ReplyTo {
    Caller(oneshot::Sender<Response>),
    Sockets(SocketOutput),
    Streams(StreamOutput),
}

/// A batch's stream items, waiting in the output gate with its replies.
struct StreamOutput {
    hub: Arc<crate::streams::Hub>,
    class: &'static str,
    id: ObjectId,
    ops: Vec<crate::streams::StreamOp>,
}

/// A batch's socket effects, waiting in the output gate with its replies.
struct SocketOutput {
    registry: Arc<crate::sockets::Registry>,
    class: &'static str,
    id: ObjectId,
    ops: Vec<crate::sockets::SocketOp>,
}

impl ReplyTo {
    /// Hand over the output: a caller gets `response`; socket effects are applied if
    /// `response` says the batch is durable, dropped otherwise.
    fn send(self, response: Response) -> Result<(), Response> {
        match self {
            ReplyTo::Caller(tx) => tx.send(response),
            ReplyTo::Sockets(out) => {
                if let Response::Return(_) = response {
                    out.registry.apply(out.class, out.id, out.ops);
                }
                Ok(())
            }
            ReplyTo::Streams(out) => {
                if let Response::Return(_) = response {
                    out.hub.apply(out.class, out.id, out.ops);
                }
                Ok(())
            }
        }
    }
}

impl From<oneshot::Sender<Response>> for ReplyTo {
    fn from(tx: oneshot::Sender<Response>) -> Self {
        ReplyTo::Caller(tx)
    }
}

/// A failure before anything of the batch could reach the log: nothing applied.
fn internal(message: impl Into<String>) -> Response {
    Response::Error(WireError::Internal {
        message: message.into(),
    })
}

/// A failure after the batch may have reached the log or the object's file: the
/// calls may have been applied (retry only with the same request id).
fn indeterminate(message: impl Into<String>) -> Response {
    Response::Error(WireError::Indeterminate {
        message: message.into(),
    })
}

/// The log refused a batch, so nothing of it is on disk: not applied.
fn refused(full: bool) -> Response {
    if full {
        Response::Error(WireError::StorageFull {
            message: "the host's disk is full: the call's writes were undone; writes work again once space is freed".into(),
        })
    } else {
        internal("the host log could not be written: the call's writes were undone")
    }
}

/// Wait until batch `target` is settled in `watch` (see [`settled`]); a closed log
/// reads as failed.
async fn settled_pos(
    mut watch: tokio::sync::watch::Receiver<DurablePos>,
    slot: &Slot,
    target: u64,
) -> DurablePos {
    watch
        .wait_for(|p| settled(p, target, slot.rewinds.get()))
        .await
        .map(|p| *p)
        .unwrap_or(DurablePos {
            failed: true,
            ..DurablePos::default()
        })
}

/// Whether the log has dealt with an object's batches up to `target`, as the object
/// must learn: durable, failed, or refused (a refusal counts only if the object has
/// not already undone it).
fn settled(p: &DurablePos, target: u64, rewinds: u64) -> bool {
    p.failed || p.durable >= target || (p.rejected.is_some() && p.epoch == rewinds)
}

/// How committing the file's open transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileCommit {
    /// Committed (or nothing to commit, or kept open to try again later).
    Done,
    /// The log refused some of the batches: they must be undone first (the core asks
    /// for a [`Action::Rewind`]).
    Refused,
    /// The object had to stop: batches only the log holds are missing from the file.
    Stopped,
}

/// Why a batch could not commit, by whether its writes may survive.
#[derive(Debug, Clone)]
enum CommitError {
    /// Rolled back before anything reached the log or the file.
    NotApplied(String),
    /// The batch may be in the log or the file: it may be applied after a restart.
    Indeterminate(String),
}

impl CommitError {
    fn response(&self) -> Response {
        match self {
            CommitError::NotApplied(m) => internal(m.clone()),
            CommitError::Indeterminate(m) => indeterminate(m.clone()),
        }
    }
}

impl std::fmt::Display for CommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommitError::NotApplied(m) => write!(f, "{m} (rolled back)"),
            CommitError::Indeterminate(m) => write!(f, "{m} (may be applied)"),
        }
    }
}

impl Object {
    /// The object's open connection.
    fn db(&self) -> &rusqlite::Connection {
        self.conn.as_deref().expect("opened")
    }

    async fn run(mut self) {
        loop {
            self.slot
                .pinned
                .set(self.poisoned || (self.deferred > 0 && self.commit_backoff > 0));
            let action = self.slot.core.borrow_mut().poll();
            match action {
                None if self.poisoned => {
                    // Heal without waiting for a call: until then no checkpoint passes
                    // the batches its file lacks, and its alarms may be missing.
                    let wait = Duration::from_millis(
                        self.heal_after
                            .saturating_sub(self.config.clock.now_ms())
                            .max(50),
                    );
                    let woken = tokio::time::timeout(wait, self.slot.notify.notified());
                    if woken.await.is_err() {
                        self.heal(None).await;
                    }
                }
                None if self.deferred == 0 && !self.holds_memory => {
                    self.slot.notify.notified().await
                }
                None if self.deferred == 0 => {
                    // Quiet for a while: give back cached pages, unless an alarm is due
                    // soon (its turn would read them all back first, late).
                    let quiet = tokio::time::timeout(IDLE_RELEASE, self.slot.notify.notified());
                    if quiet.await.is_err() {
                        // Quiet and committed: a digest of what the file now holds, so
                        // that a crash from here on is checked against it. Not at the
                        // deferred commit 100 ms after a write: an object written every
                        // few hundred milliseconds would pay a digest (~120 µs, more than
                        // its writes) after almost every call.
                        self.record_digest(DIGEST_QUIET_MAX);
                        if !self.alarm_due_soon() {
                            if let Some(ctx) = self.ctx.as_ref() {
                                store::release_idle_memory(&ctx.conn);
                            }
                            self.holds_memory = false;
                        }
                    }
                }
                None => {
                    // Quiet with batches only in the log: commit the file if nothing
                    // arrives soon.
                    // After a failed commit (a full disk), wait out the backoff first.
                    let wait = DEFER_IDLE.max(Duration::from_millis(
                        self.commit_retry_at
                            .saturating_sub(self.config.clock.now_ms()),
                    ));
                    let quiet = tokio::time::timeout(wait, self.slot.notify.notified());
                    if quiet.await.is_err() {
                        self.commit_deferred(false).await;
                    }
                }
                Some(Action::Run(batch)) => {
                    self.holds_memory = true;
                    let alarm_wakes = batch.iter().filter(|w| !w.is_call()).count();
                    let seq_before = self.seq;
                    let (outputs, requeue) = self.run_batch(batch).await;
                    let requeued = requeue.iter().filter(|w| !w.is_call()).count();
                    // Wakes put back are counted when they run again.
                    for _ in 0..alarm_wakes - requeued {
                        self.config.alarms.wake_done();
                    }
                    let committed = (self.seq != seq_before).then_some(self.seq);
                    let now = self.config.clock.now_ms();
                    self.slot.core.borrow_mut().handle(
                        now,
                        Input::BatchEnded {
                            committed,
                            outputs,
                            requeue,
                        },
                    );
                    self.watch_durability();
                }
                Some(Action::Release(replies)) => {
                    for (tx, response, _) in replies {
                        let _ = tx.send(response);
                    }
                }
                Some(Action::Indeterminate(replies)) => {
                    for (tx, _, _) in replies {
                        // Committed to the file but not synced: it may or may not
                        // survive a crash.
                        let _ = tx.send(indeterminate(
                            "the write could not be made durable (sync failed)",
                        ));
                    }
                }
                Some(Action::Refused { outputs, full }) => {
                    for (tx, _, recorded) in outputs {
                        // A recorded answer's own batch may be among those refused:
                        // applied or not, only the same request id may tell.
                        let _ = tx.send(if recorded {
                            indeterminate("the host log refused a write on this object; this call may or may not have been applied earlier")
                        } else {
                            refused(full)
                        });
                    }
                }
                Some(Action::Rewind(durable)) => self.rewind(durable),
                Some(Action::Dropped(work)) => {
                    // A simulated crash: callers see their call end unanswered.
                    for w in work {
                        if let Work::Alarm = w {
                            self.config.alarms.wake_done();
                        }
                    }
                }
                Some(Action::Stopped) => {
                    if self.commit_deferred(true).await == FileCommit::Refused {
                        // Only an alarm's batch (no replies) can be refused this late.
                        let durable = self.log.as_ref().map(|l| l.watch().borrow().durable);
                        self.rewind(durable.unwrap_or(self.seq));
                        self.commit_deferred(true).await;
                    }
                    if self.poisoned || (self.txn_open && self.deferred > 0) {
                        // The file lacks batches the log holds: whoever activates the
                        // object next rebuilds them first.
                        self.config
                            .behind
                            .borrow_mut()
                            .insert((self.class.name, self.id));
                    } else {
                        self.record_digest(DIGEST_STOP_MAX);
                    }
                    return;
                }
            }
        }
    }

    /// Tell the core how far this object's batches are durable: now if the log
    /// already covers them, else from a task that waits for the log.
    fn watch_durability(&self) {
        let core = self.slot.core.borrow();
        let target = core.committed();
        if target <= core.durable() {
            return;
        }
        drop(core);
        let Some(log) = self.log.as_ref() else {
            // Detached after a restore, which waited for its own record.
            let now = self.config.clock.now_ms();
            self.slot
                .core
                .borrow_mut()
                .handle(now, Input::Durable(target));
            self.slot.notify.notify_one();
            return;
        };
        let mut watch = log.watch();
        let feed = |slot: &Slot, clock: &dyn Clock, pos: DurablePos| {
            let input = if pos.failed {
                Input::SyncFailed
            } else if let (Some(why), true) = (pos.rejected, pos.epoch == slot.rewinds.get()) {
                Input::Refused {
                    durable: pos.durable,
                    full: why == Refusal::Full,
                }
            } else {
                Input::Durable(pos.durable)
            };
            slot.core.borrow_mut().handle(clock.now_ms(), input);
            slot.notify.notify_one();
        };
        let pos = *watch.borrow();
        if settled(&pos, target, self.slot.rewinds.get()) {
            feed(&self.slot, self.config.clock.as_ref(), pos);
            return;
        }
        let slot = self.slot.clone();
        let clock = self.config.clock.clone();
        tokio::task::spawn_local(async move {
            let ready = |p: &DurablePos| settled(p, target, slot.rewinds.get());
            let pos = match watch.wait_for(ready).await {
                Ok(p) => *p,
                Err(_) => DurablePos {
                    failed: true,
                    ..DurablePos::default()
                },
            };
            feed(&slot, clock.as_ref(), pos);
        });
    }

    /// The object stopped because batches the log holds are missing from its file (the
    /// file's commit failed and SQLite rolled the transaction back, or the object was
    /// evicted that way: a full disk). Read them back from the log and apply them in a
    /// new open transaction, as if they had been deferred: the object serves again at
    /// once, reads included, and its file commits once the disk takes it. A failed
    /// attempt waits a second before the next.
    async fn heal(&mut self, name: Option<&str>) {
        let now = self.config.clock.now_ms();
        if now < self.heal_after || !self.config.durability.captures_changes() {
            return;
        }
        if self.open(name).is_err() {
            self.heal_after = now + 1000;
            return;
        }
        // Every batch the object numbered must be settled, and durable.
        let target = self.seq;
        let slot = self.slot.clone();
        let log = self.log.as_ref().expect("opened");
        let pos = match log
            .watch()
            .wait_for(|p| settled(p, target, slot.rewinds.get()))
            .await
        {
            Ok(p) => *p,
            Err(_) => return,
        };
        if pos.failed || (pos.rejected.is_some() && pos.epoch == self.slot.rewinds.get()) {
            return;
        }
        self.heal_after = now + 1000;
        let ctx = self.ctx.as_ref().expect("opened");
        if !ctx.conn.is_autocommit() {
            let _ = ctx.conn.run("ROLLBACK");
        }
        self.txn_open = false;
        self.deferred = 0;
        let file_seq = match store::stored_seq(&ctx.conn) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "healing: reading the file's batch number");
                return;
            }
        };
        let (data_dir, class, id) = (self.config.data_dir.clone(), self.class.name, self.id);
        let records = tokio::task::spawn_blocking(move || {
            crate::log::object_records(&data_dir, class, id, file_seq)
        })
        .await;
        let records = match records {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "healing: reading the host log");
                return;
            }
            Err(_) => return,
        };
        let healed_seq = file_seq + records.len() as u64;
        let contiguous = records
            .iter()
            .zip(file_seq + 1..)
            .all(|(r, seq)| r.seq == seq)
            && healed_seq >= target;
        if !contiguous {
            tracing::warn!(class = self.class.name, id = %self.id, file_seq, target, "healing: the log lacks some of the object's batches; the next restart replays what it has");
            return;
        }
        let ctx = self.ctx.as_ref().expect("opened");
        let window = self.config.request_window;
        self.request_max = None;
        let applied = if records.is_empty() {
            Ok(())
        } else {
            ctx.conn
                .run("BEGIN IMMEDIATE")
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    records
                        .iter()
                        .try_for_each(|r| store::apply_record_in_txn(&ctx.conn, r, window))
                })
        };
        if let Err(e) = applied {
            let _ = ctx.conn.run("ROLLBACK");
            tracing::warn!(class = self.class.name, id = %self.id, error = %e, "healing: applying the log's records failed; will try again");
            return;
        }
        if !records.is_empty() {
            self.txn_open = true;
            self.needs_image = false;
        }
        if let Ok(due) = crate::alarms::earliest_due(&ctx.conn) {
            self.index_alarms_after(due);
            self.config.alarms.notify_due(self.class.name, self.id, due);
        }
        self.deferred = records.len();
        self.seq = healed_seq;
        let lsns: Vec<u64> = records.iter().map(|r| r.lsn).collect();
        self.log.as_ref().expect("opened").adopt(healed_seq, &lsns);
        self.instance = None;
        self.spare_capture = None;
        self.poisoned = false;
        self.heal_after = 0;
        self.config
            .behind
            .borrow_mut()
            .remove(&(self.class.name, self.id));
        tracing::warn!(class = self.class.name, id = %self.id, batches = records.len(), "rebuilt the object's missing batches from the host log; it serves again");
    }

    /// Open the database and attach the object's log if needed.
    fn ensure_open(&mut self, name: Option<&str>) -> Result<(), Response> {
        if self.poisoned {
            // Not "not applied": this very call may be in the logged batch (a retry
            // with the same request id), and the restart's replay applies it.
            return Err(indeterminate(
                "this object's last batches are in the host log but not in its file (its commit failed: is the disk full?); it is rebuilt from the log as soon as that works, or at the next restart",
            ));
        }
        self.open(name)
    }

    /// Before the object's file is first opened: a file that is missing though the
    /// object existed (the catalog knows it), or, after an unclean stop, whose content
    /// no longer matches the digest recorded when it last stopped cleanly, is never
    /// served. It is rebuilt from the log archive (the latest retained image and the
    /// changes after it) and the damaged file is kept beside it as
    /// `<id>.db.damaged-<ms>`; if the archive cannot rebuild it, the object refuses
    /// every call until an operator restores it.
    async fn check_file(&mut self) -> Result<(), Response> {
        let key = (self.class.name, self.id);
        if let Some(message) = &self.unservable {
            return Err(internal(message.clone()));
        }
        if self.config.verified.borrow().contains(&key) {
            return Ok(());
        }
        let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
        let catalog = self.config.catalog.clone();
        let problem = if !path.exists() {
            match catalog.knows(self.class.name, self.id) {
                Ok(true) => Some("missing"),
                Ok(false) => None,
                Err(e) => return Err(internal(format!("reading the object catalog: {e}"))),
            }
        } else if self.config.unclean_start {
            let digest = catalog
                .digest(self.class.name, self.id)
                .map_err(|e| internal(format!("reading the object catalog: {e}")))?;
            match digest {
                Some(recorded) => {
                    let p = path.clone();
                    let damaged = tokio::task::spawn_blocking(move || {
                        crate::log::recovery::damaged(&p, recorded)
                    })
                    .await
                    .unwrap_or(false);
                    damaged.then_some("damaged")
                }
                None => None,
            }
        } else {
            None
        };
        self.first_activation = true;
        let Some(problem) = problem else {
            self.config.verified.borrow_mut().insert(key);
            return Ok(());
        };
        tracing::error!(class = self.class.name, id = %self.id, problem, "the object's file is {problem}; rebuilding it from the log archive");
        if problem == "damaged" {
            crate::log::recovery::move_aside(&path, self.config.clock.now_ms());
        }
        self.log = Some(
            self.config
                .durability
                .attach(self.class.name, self.id, &path, 0),
        );
        self.slot.rewinds.set(0);
        let rebuilt = if self.config.durability.captures_changes() {
            self.restore(RestoreTarget::Bookmark(u64::MAX)).await
        } else {
            Err("rebuilding needs the host log".into())
        };
        self.log = None;
        match rebuilt {
            Ok(()) => {
                tracing::warn!(class = self.class.name, id = %self.id, problem, "rebuilt the object's file from the log archive");
                self.config.verified.borrow_mut().insert(key);
                Ok(())
            }
            Err(e) => {
                let message = format!(
                    "the object's stored state is {problem} and cannot be rebuilt from the log ({e}); it refuses calls until an operator restores it (restore-object, or a backup)"
                );
                tracing::error!(class = self.class.name, id = %self.id, "{message}");
                self.unservable = Some(message.clone());
                Err(internal(message))
            }
        }
    }

    /// Open the database and attach the object's log if not open yet.
    fn open(&mut self, name: Option<&str>) -> Result<(), Response> {
        if self.ctx.is_none() {
            let durability = &self.config.durability;
            let sync_new = !durability.captures_changes();
            let (mut ctx, opened) = store::open(
                &self.config.data_dir,
                self.class.name,
                self.id,
                name,
                sync_new,
                self.config.spares.as_deref(),
            )
            .map_err(|e| {
                // The message names host paths: the log gets it, the client does not.
                tracing::error!(class = self.class.name, id = %self.id, error = %e, "opening the object's database");
                let full = e.contains("full");
                if full {
                    refused(true)
                } else {
                    internal("opening the object's database failed (the host log says why)")
                }
            })?;
            self.seq = opened.seq;
            self.last_image_ms = opened.image_ms;
            ctx.bookmarks = self.config.bookmarks.clone();
            ctx.clock = self.config.clock.clone();
            ctx.sockets = self.config.sockets.clone();
            self.reported_due = opened.earliest_due;
            // An object the log has never seen a batch of ships a whole image first.
            self.needs_image = (opened.upgraded || self.seq == 0) && durability.captures_changes();
            let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
            self.log = Some(durability.attach(self.class.name, self.id, &path, self.seq));
            self.slot.rewinds.set(0);
            self.slot.reads.writer_opened();
            // A new file, or the first activation since the host started (an object
            // stored before the catalog existed): the catalog lists it from now on.
            if opened.upgraded || std::mem::take(&mut self.first_activation) {
                if let Err(e) = self.config.catalog.add(self.class.name, self.id) {
                    tracing::warn!(class = self.class.name, id = %self.id, error = %e, "adding the object to the catalog");
                    // The next activation checks the file again, and tries again.
                    self.config
                        .verified
                        .borrow_mut()
                        .remove(&(self.class.name, self.id));
                }
            }
            self.conn = Some(ctx.conn.clone());
            self.ctx = Some(ctx);
            self.request_max = None;
        }
        Ok(())
    }

    /// Activate the instance inside the batch's open transaction. Returns the
    /// constructor's effects, or the error every call of the batch gets.
    /// Whether request `id` is larger than every id recorded in the object's database
    /// (and so cannot have been applied before).
    fn unseen_request(
        &mut self,
        conn: &rusqlite::Connection,
        id: &[u8; 16],
    ) -> rusqlite::Result<bool> {
        let max = match self.request_max {
            Some(max) => max,
            None => *self.request_max.insert(store::max_request_id(conn)?),
        };
        Ok(*id > max)
    }

    /// Request `id` was just recorded.
    fn recorded_request(&mut self, id: &[u8; 16]) {
        if let Some(max) = &mut self.request_max {
            *max = (*max).max(*id);
        }
    }

    fn activate(&mut self) -> Result<Effects, Response> {
        let ctx = self.ctx.as_mut().expect("opened");
        let activate = self.class.activate;
        ctx.effects = Effects::default();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| activate(ctx)));
        let effects = std::mem::take(&mut ctx.effects);
        match result {
            Ok(Ok(instance)) => {
                self.instance = Some(instance);
                Ok(effects)
            }
            Ok(Err(e)) => Err(Response::Error(WireError::ObjectReset {
                message: format!("activation failed: {}", e.0),
            })),
            Err(panic) => Err(Response::Error(WireError::ObjectReset {
                message: format!("activation panicked: {}", panic_message(&panic)),
            })),
        }
    }

    /// Before the batch can become durable: if its alarms changed (or an alarm wake ran,
    /// `woken`), lower the index entry to the earlier of the old and new earliest due
    /// time, so that no durable alarm is ever missing from the index whatever happens
    /// next. Returns the new earliest due time to publish after the commit. Also turns
    /// a migration or `delete_all` into an image, so their bookkeeping is logged.
    fn index_alarms_before(
        &mut self,
        woken: bool,
        effects: &Effects,
    ) -> Result<Option<Option<u64>>, String> {
        let conn = self.conn.clone().expect("active");
        if effects.ship_image.get() {
            self.needs_image = true;
        }
        if !(woken || effects.alarms_changed) {
            return Ok(None);
        }
        let due = crate::alarms::earliest_due(&conn).map_err(|e| format!("reading alarms: {e}"))?;
        if effects.alarms_changed {
            // Parse the statements an alarm turn runs now, off its due time.
            crate::alarms::prepare_wake(&conn);
        }
        let provisional = match (self.reported_due, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if provisional != self.reported_due {
            self.config
                .alarms
                .index_due(self.class.name, self.id, provisional)
                .map_err(|e| format!("updating the alarm index: {e}"))?;
            self.reported_due = provisional;
        }
        Ok(Some(due))
    }

    /// Whether the object's earliest alarm is due within [`ALARM_WARM`].
    fn alarm_due_soon(&self) -> bool {
        let horizon = self.config.clock.now_ms() + ALARM_WARM.as_millis() as u64;
        self.reported_due.is_some_and(|due| due <= horizon)
    }

    /// After the commit: the exact earliest due time, to the index and the scheduler.
    fn index_alarms_after(&mut self, due: Option<u64>) {
        if due != self.reported_due {
            match self.config.alarms.index_due(self.class.name, self.id, due) {
                Ok(()) => self.reported_due = due,
                // The index keeps the earlier value: at worst one needless wake.
                Err(e) => {
                    tracing::warn!(class = self.class.name, id = %self.id, error = %e, "updating the alarm index")
                }
            }
        }
        self.config.alarms.notify_due(self.class.name, self.id, due);
    }

    /// An alarm wake could not run (activation or the batch failed): wake again after
    /// one backoff period rather than lose the alarms.
    fn retry_alarms_later(&self) {
        let retry =
            self.config.clock.now_ms() + self.config.alarms.config.backoff.as_millis() as u64;
        self.config
            .alarms
            .notify_due(self.class.name, self.id, Some(retry));
    }

    /// Start a batch: begin capturing changes (if the log wants them) and the transaction.
    fn begin(&mut self) -> Result<Option<ChangeCapture>, Response> {
        let ctx = self.ctx.as_mut().expect("opened");
        // Requests from an earlier, failed batch do not carry over.
        ctx.effects = Effects::default();
        let ctx = &*ctx;
        let wants = self.log.as_ref().expect("attached").captures_changes();
        let spare = self.spare_capture.take();
        let capture = if wants {
            Some(match spare {
                Some(mut c) => {
                    c.reset();
                    c
                }
                None => ChangeCapture::start(&ctx.conn).map_err(internal)?,
            })
        } else {
            None
        };
        if !self.txn_open {
            ctx.conn
                .run("BEGIN IMMEDIATE")
                .map_err(|e| internal(e.to_string()))?;
            self.txn_open = true;
        }
        ctx.conn
            .run("SAVEPOINT durable_batch")
            .map_err(|e| internal(e.to_string()))?;
        Ok(capture)
    }

    /// Undo the running batch, keeping the batches deferred before it. If even that
    /// fails, the whole transaction goes, and with deferred batches lost from the file
    /// the object is poisoned until [`Object::heal`] re-applies them from the log.
    fn rollback_batch(&mut self) {
        let conn = self.db();
        let undone = conn
            .run("ROLLBACK TO durable_batch")
            .and_then(|_| conn.run("RELEASE durable_batch"));
        if undone.is_ok() && self.deferred > 0 {
            return;
        }
        let _ = conn.run("ROLLBACK");
        self.txn_open = false;
        if self.deferred > 0 {
            tracing::error!(class = self.class.name, id = %self.id, "rolling back a batch undid deferred ones; the object rebuilds them from the log on its next call");
            self.deferred = 0;
            self.poisoned = true;
        }
    }

    /// End the running batch's savepoint; commit the file now if nothing is deferred
    /// (or `now` is set), else leave the transaction open for the next batch.
    fn release_batch(&mut self, now: bool) -> rusqlite::Result<()> {
        let conn = self.db();
        conn.run("RELEASE durable_batch")?;
        if now || self.deferred == 0 {
            conn.run("COMMIT")?;
            self.txn_open = false;
        }
        Ok(())
    }

    /// Commit the file's open transaction, if any, once the log holds every batch in
    /// it (the log is written ahead of the file), and tell the log the file holds them
    /// (so checkpoints may pass them). If the log refused some of them, leave them for
    /// the rewind the core asks for. A commit that fails with the transaction still
    /// open (SQLite could not write its WAL: a full disk) is tried again later. The
    /// object stops only if batches the log holds are lost from the file (a restart
    /// replays them) or the log failed.
    async fn commit_deferred(&mut self, force: bool) -> FileCommit {
        if !self.txn_open || self.conn.is_none() {
            return if self.poisoned {
                FileCommit::Stopped
            } else {
                FileCommit::Done
            };
        }
        let mut lsn = None;
        if self.deferred > 0 {
            let target = self.seq;
            let log = self
                .log
                .as_ref()
                .expect("attached while batches are deferred");
            if self.config.clock.now_ms() < self.commit_retry_at && !force {
                return FileCommit::Done;
            }
            let pos = settled_pos(log.watch(), &self.slot, target).await;
            if pos.failed {
                tracing::error!(class = self.class.name, id = %self.id, "the host log failed with batches not yet in the file; the object is stopped until a restart");
                self.abandon_txn();
                return FileCommit::Stopped;
            }
            if pos.durable < target {
                return FileCommit::Refused;
            }
            lsn = Some(pos.lsn);
        }
        let conn = self.db();
        // The file records the last batch it holds as it commits them (a batch does
        // not: an `UPDATE` per batch was a twelfth of a write's shard time).
        let committed = match lsn {
            Some(_) => store::set_stored_seq(conn, self.seq),
            None => Ok(()),
        }
        .and_then(|()| conn.run("COMMIT"));
        match committed {
            Ok(()) => {
                self.txn_open = false;
                self.deferred = 0;
                self.commit_backoff = 0;
                if let (Some(lsn), Some(log)) = (lsn, self.log.as_ref()) {
                    log.applied(lsn);
                }
                FileCommit::Done
            }
            Err(e) if !conn.is_autocommit() => {
                self.back_off_commits();
                // SQLite kept the transaction: the batches stay in it, durable in the
                // log, and the commit is tried again later.
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "committing the object's file failed; will try again");
                FileCommit::Done
            }
            Err(e) => {
                // The log holds the batches, the file does not: they stay unapplied (no
                // checkpoint passes them) and the object is poisoned: no call builds
                // on the gap until `heal` re-applies them from the log.
                tracing::error!(class = self.class.name, id = %self.id, error = %e, "SQLite commit failed after the log write and dropped the transaction; the object rebuilds those batches from the log on its next call");
                self.back_off_commits();
                self.abandon_txn();
                FileCommit::Stopped
            }
        }
    }

    /// The log refused this object's batches after `durable` (none of them is on
    /// disk) and their replies went out as not applied: roll the file's open
    /// transaction back (refused and deferred batches alike), drop the instance (it
    /// may hold their state), renumber from `durable`, and tell the log to take this
    /// object's batches again. The durable batches the rollback took from the file are
    /// re-applied from the log by [`Object::heal`] before the next call runs. (A
    /// savepoint per deferred batch would undo just the refused ones, but nested
    /// savepoints cost every write a sub-journal page: a rare fault pays instead.)
    fn rewind(&mut self, durable: u64) {
        if self.seq > durable && self.ctx.is_some() {
            self.abandon_txn();
            let file_seq = self
                .ctx
                .as_ref()
                .and_then(|c| store::stored_seq(&c.conn).ok());
            // Poisoned only if the file now lacks durable batches.
            self.poisoned = file_seq != Some(durable);
            self.seq = durable;
            // Batch numbers after `durable` will be reused for other content.
            self.digest_seq = self.digest_seq.min(durable);
        }
        // A refused image leaves whatever called for it (a new object, a migration):
        // ship one again. Changesets need nothing: each batch captures from its start.
        if self.last_image_seq > durable {
            self.needs_image = true;
        }
        self.instance = None;
        self.spare_capture = None;
        self.slot.rewinds.set(self.slot.rewinds.get() + 1);
        if let Some(log) = self.log.as_ref() {
            log.rewind();
        }
        // Alarms set or cancelled by the undone batches: publish what the file says, once
        // it holds every durable batch again (a poisoned file lacks some: `heal`
        // publishes them; the index keeps its earlier value till then).
        if let (Some(ctx), false) = (self.ctx.as_ref(), self.poisoned) {
            if let Ok(due) = crate::alarms::earliest_due(&ctx.conn) {
                self.index_alarms_after(due);
                self.config.alarms.notify_due(self.class.name, self.id, due);
            }
        }
        tracing::info!(class = self.class.name, id = %self.id, durable, "undid the batches the log refused");
    }

    /// With the file committed (the object stopping, or quiet): record a digest of its
    /// content, so that after an unclean stop damage to it is detected before it is
    /// served (objects up to `max_bytes`; larger ones are not checked there, their
    /// digest would cost too much).
    fn record_digest(&mut self, max_bytes: i64) {
        let Some(ctx) = self.ctx.as_ref() else {
            return;
        };
        if self.seq == 0 || self.seq == self.digest_seq || !ctx.conn.is_autocommit() {
            return;
        }
        // Unchanged since its digest was recorded (an object that was only read since
        // its last stop): the recorded digest still stands.
        if let Ok(Some((seq, _))) = self.config.catalog.digest(self.class.name, self.id) {
            if seq == self.seq {
                self.digest_seq = seq;
                return;
            }
        }
        let size: rusqlite::Result<i64> = ctx.conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        );
        if !size.is_ok_and(|s| s <= max_bytes) {
            return;
        }
        let recorded = crate::catalog::content_digest(&ctx.conn).and_then(|d| {
            self.config
                .catalog
                .record_digest(self.class.name, self.id, self.seq, d)
        });
        match recorded {
            Ok(()) => self.digest_seq = self.seq,
            Err(e) => {
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "recording the object's digest")
            }
        }
    }

    /// The file's commit failed: try again only after a backoff (250 ms, doubling to
    /// 5 s), so that a full disk is not hammered by every quiet object.
    fn back_off_commits(&mut self) {
        self.commit_backoff = (self.commit_backoff * 2).clamp(250, 5_000);
        self.commit_retry_at = self.config.clock.now_ms() + self.commit_backoff;
    }

    /// Drop the open transaction and everything deferred in it; with deferred batches
    /// the object is poisoned until [`Object::heal`] re-applies them from the log.
    fn abandon_txn(&mut self) {
        if let Some(conn) = self.conn.as_ref() {
            let _ = conn.run("ROLLBACK");
        }
        self.txn_open = false;
        if self.deferred > 0 {
            self.deferred = 0;
            self.poisoned = true;
        }
        self.instance = None;
    }

    /// End the running batch. If it wrote anything, number the batch and store the
    /// number in the same transaction. With a log that captures changes, the batch's
    /// changeset (or the whole database, when the schema changed or the object is new to
    /// the log) goes to the log and the batch stays in the open transaction; the file
    /// commits later, only once the log holds it (see [`Object::commit_deferred`]), so
    /// the object's file never holds a change the log lacks. Otherwise (`--durability
    /// fsync`) the file commits now and its sync makes the batch durable. Either way
    /// the replies wait in the core's output gate.
    async fn commit(
        &mut self,
        before: (u64, i64),
        capture: Option<ChangeCapture>,
        recorded: &[store::RecordedCall],
    ) -> Result<(), CommitError> {
        let not_applied = |e: rusqlite::Error| CommitError::NotApplied(e.to_string());
        let conn = self.conn.clone().expect("opened");
        let after = write_marker(&conn);
        if after == before && !self.needs_image {
            // Nothing was written: the capture is still empty, keep it for next time.
            self.spare_capture = capture;
            // A batch that wrote nothing: whatever happens to its end, nothing of it
            // can survive.
            return self.release_batch(false).map_err(not_applied);
        }
        let seq = self.seq + 1;
        let log = self.log.as_ref().expect("attached");
        if !log.captures_changes() {
            store::set_stored_seq(&conn, seq).map_err(not_applied)?;
            drop(capture);
            // The file is the durability: commit every batch. A failed COMMIT may have
            // left the commit frame in the WAL: indeterminate.
            self.release_batch(true)
                .map_err(|e| CommitError::Indeterminate(format!("commit failed: {e}")))?;
            self.seq = seq;
            let log = self.log.as_ref().expect("attached");
            log.submit(seq, None);
            return Ok(());
        }
        let now = self.config.clock.now_ms();
        let snapshot_due = self.config.snapshot_every.is_some_and(|every| {
            now.saturating_sub(self.last_image_ms) >= every.as_millis() as u64
        });
        let mut capture = capture;
        let change = match &mut capture {
            Some(c) if !self.needs_image && !snapshot_due && after.1 == before.1 => {
                Change::Changeset(store::encode_changes(
                    &c.changeset(&conn, after.1)
                        .map_err(CommitError::NotApplied)?,
                    recorded,
                ))
            }
            _ => {
                // An image carries its batch number: replaying it sets the file's.
                store::set_stored_seq(&conn, seq).map_err(not_applied)?;
                store::set_image_time(&conn, now).map_err(not_applied)?;
                self.last_image_ms = now;
                self.last_image_seq = seq;
                let data = store::serialize_copy(&conn).map_err(|e| {
                    CommitError::NotApplied(format!("serializing the database: {e}"))
                })?;
                Change::Image(data)
            }
        };
        // The capture is empty again (or reset when next taken): keep it, with the
        // table layouts it has read.
        self.spare_capture = capture;
        log.submit(seq, Some(change));
        // The batch is on its way to the log and cannot be called back: from here on it
        // is numbered, whatever happens. Its replies wait for the log (the output gate);
        // the next batch need not: it runs on top in the same open transaction, and
        // the file commits only once the log holds every batch in it.
        self.seq = seq;
        self.needs_image = false;
        self.deferred += 1;
        if let Err(e) = conn.run("RELEASE durable_batch") {
            tracing::error!(class = self.class.name, id = %self.id, error = %e, "ending a batch failed after its log write; the object rebuilds it from the log on its next call");
            self.abandon_txn();
            return Err(CommitError::Indeterminate(format!(
                "the batch is in the host log but its commit failed: {e}"
            )));
        }
        // With readers about, the file commits as soon as the batch is durable: before
        // its replies leave (see `crate::reads`).
        let read_friendly = self.slot.reads.friendly(now);
        if (!self.config.defer_commits || self.deferred >= DEFER_MAX_BATCHES || read_friendly)
            && self.commit_deferred(false).await == FileCommit::Stopped
        {
            return Err(CommitError::Indeterminate(
                "the batch may be in the host log but its commit failed".into(),
            ));
        }
        Ok(())
    }

    /// What the next turn needs to call other objects (`None` when the host has no
    /// call entry, as in a bare shard).
    fn turn_info(
        &mut self,
        chain: Option<Arc<CallChain>>,
        deadline_ms: Option<u64>,
        request_id: Option<[u8; 16]>,
        span: u64,
    ) -> Option<crate::outgoing::TurnInfo> {
        self.turns += 1;
        let local = self.config.local.get()?.clone();
        Some(crate::outgoing::TurnInfo {
            local,
            chain,
            deadline_ms,
            request_id,
            span,
            turn: self.turns,
            flush: self.flush_tx.clone(),
            clock: self.config.clock.clone(),
            sent: Default::default(),
        })
    }

    /// Run a turn to its end, and meanwhile answer its requests to make the object's
    /// writes so far durable before it calls another object.
    async fn drive<F: std::future::Future>(
        &mut self,
        conn: &rusqlite::Connection,
        bs: &mut Pending,
        savepoint: &str,
        turn: F,
    ) -> F::Output {
        let mut requests = self.flush_rx.take().expect("one turn at a time");
        let mut turn = std::pin::pin!(turn);
        let output = loop {
            tokio::select! {
                biased;
                output = &mut turn => break output,
                Some((n, answer)) = requests.recv() => {
                    let result = if n != self.turns {
                        Err("the stub was made by an earlier turn".to_string())
                    } else {
                        self.flush_turn(conn, bs, savepoint).await
                    };
                    let _ = answer.send(result);
                }
            }
        };
        self.flush_rx = Some(requests);
        output
    }

    /// The output gate for an outgoing call: commit the batch so far (the turns
    /// before this one and this turn's writes until now) as a batch of its own, wait
    /// until everything the object committed is durable, commit the file (so that a
    /// read-only call along the chain, which runs beside this waiting turn, sees those
    /// writes), and start the rest of the batch in fresh savepoints (the turn's own
    /// named `savepoint`). A failure breaks the batch: it fails as a whole once the
    /// turn ends.
    async fn flush_turn(
        &mut self,
        conn: &rusqlite::Connection,
        bs: &mut Pending,
        savepoint: &str,
    ) -> Result<(), String> {
        if let Some(broken) = &bs.broken {
            return Err(broken.to_string());
        }
        let result = self.flush_turn_inner(conn, bs).await;
        if let Err(e) = &result {
            bs.broken.get_or_insert_with(|| e.clone());
        }
        // Whatever happened, the turn goes on inside its savepoints (its end rolls back
        // to them).
        let restarted = self
            .begin_savepoints(conn, savepoint)
            .and_then(|()| self.start_capture(conn));
        match restarted {
            Ok(capture) => bs.capture = capture,
            Err(e) => {
                bs.broken
                    .get_or_insert(CommitError::Indeterminate(e.clone()));
                return Err(e);
            }
        }
        bs.before = write_marker(conn);
        result.map_err(|e| e.to_string())
    }

    async fn flush_turn_inner(
        &mut self,
        conn: &rusqlite::Connection,
        bs: &mut Pending,
    ) -> Result<(), CommitError> {
        let wrote = write_marker(conn) != bs.before || self.needs_image;
        let due = if wrote {
            self.index_alarms_before(true, &Effects::default())
                .map_err(CommitError::NotApplied)?
        } else {
            None
        };
        // Ends the batch's savepoint (and the turn's inside it); ships what it wrote.
        self.commit(bs.before, bs.capture.take(), &bs.recorded)
            .await?;
        if let Some(due) = due {
            self.index_alarms_after(due);
        }
        bs.recorded.clear();
        let target = self.seq;
        if let Some(log) = self.log.as_ref() {
            if target > self.slot.core.borrow().durable() {
                let pos = settled_pos(log.watch(), &self.slot, target).await;
                if pos.failed || pos.durable < target {
                    return Err(CommitError::Indeterminate(
                        "the object's writes could not be made durable before its call to another object".into(),
                    ));
                }
            }
        }
        if self.commit_deferred(true).await != FileCommit::Done {
            return Err(CommitError::Indeterminate(
                "the object's file could not commit its durable writes before its call to another object".into(),
            ));
        }
        Ok(())
    }

    /// After a commit in the middle of a batch: its transaction (if the commit closed
    /// it), the batch's savepoint and the running turn's.
    fn begin_savepoints(&mut self, conn: &rusqlite::Connection, turn: &str) -> Result<(), String> {
        let e = |e: rusqlite::Error| e.to_string();
        if !self.txn_open {
            conn.run("BEGIN IMMEDIATE").map_err(e)?;
            self.txn_open = true;
        }
        conn.run("SAVEPOINT durable_batch").map_err(e)?;
        conn.run(&format!("SAVEPOINT {turn}")).map_err(e)
    }

    /// A fresh change capture, if the log wants changes.
    fn start_capture(
        &mut self,
        conn: &rusqlite::Connection,
    ) -> Result<Option<ChangeCapture>, String> {
        let wants = self.log.as_ref().is_some_and(|l| l.captures_changes());
        if !wants {
            return Ok(None);
        }
        match self.spare_capture.take() {
            Some(mut c) => {
                c.reset();
                Ok(Some(c))
            }
            None => ChangeCapture::start(conn).map(Some),
        }
    }

    /// Run one batch: returns the replies it decided (to be released once the batch
    /// is durable) and the work it did not reach (after a panic), to run next.
    async fn run_batch(&mut self, batch: Vec<Work>) -> (Vec<Reply>, Vec<Work>) {
        let name = batch.iter().find_map(|w| match w {
            Work::Call(c) => c.request.name.clone(),
            Work::Alarm => None,
        });
        let has_alarm_wake = batch.iter().any(|w| matches!(w, Work::Alarm));
        let fail_all = |batch: Vec<Work>, response: Response| -> Vec<Reply> {
            batch
                .into_iter()
                .filter_map(|w| match w {
                    Work::Call(c) => Some((c.reply.into(), response.clone(), false)),
                    Work::Alarm => None,
                })
                .collect()
        };
        if self.ctx.is_none() {
            if let Err(response) = self.check_file().await {
                if has_alarm_wake {
                    self.retry_alarms_later();
                }
                return (fail_all(batch, response), Vec::new());
            }
            if self
                .config
                .behind
                .borrow()
                .contains(&(self.class.name, self.id))
            {
                self.poisoned = true;
            }
        }
        if self.poisoned {
            self.heal(name.as_deref()).await;
        }
        if let Err(response) = self.ensure_open(name.as_deref()) {
            if has_alarm_wake {
                self.retry_alarms_later();
            }
            return (fail_all(batch, response), Vec::new());
        }
        if !self.poisoned
            && self.instance.is_some()
            && batch
                .iter()
                .all(|w| matches!(w, Work::Call(c) if c.class.is_read(c.method)))
        {
            return self.run_reads(batch).await;
        }
        let capture = match self.begin() {
            Ok(c) => c,
            Err(response) => return (fail_all(batch, response), Vec::new()),
        };
        let mut bs = Pending {
            capture,
            before: write_marker(self.db()),
            recorded: Vec::new(),
            broken: None,
        };
        // Each reply with whether it is a recorded answer (kept if the batch fails).
        let mut outbox: Outbox<((oneshot::Sender<Response>, Response), bool)> = Outbox::default();
        if self.instance.is_none() {
            let activated = self.activate();
            let wrote = write_marker(self.db()) != bs.before;
            match activated {
                // The constructor of an object new to the log wrote (its tables): that
                // state goes to the log as the object's first image, on its own, so
                // the change feed shows the batch's calls as row changes after it.
                Ok(effects) if wrote && self.needs_image => {
                    let committed = match self.index_alarms_before(false, &effects) {
                        Ok(due) => self
                            .commit(bs.before, bs.capture.take(), &[])
                            .await
                            .map(|()| due)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    let started = match committed {
                        Ok(due) => {
                            if let Some(due) = due {
                                self.index_alarms_after(due);
                            }
                            self.begin()
                        }
                        // No call of the batch has run yet: whatever became of the
                        // activation's own writes, the calls were not applied.
                        Err(e) => Err(internal(format!("committing activation: {e}"))),
                    };
                    match started {
                        Ok(c) => {
                            bs.capture = c;
                            bs.before = write_marker(self.db());
                        }
                        Err(response) => {
                            self.instance = None;
                            self.rollback_batch();
                            if has_alarm_wake {
                                self.retry_alarms_later();
                            }
                            return (fail_all(batch, response), Vec::new());
                        }
                    }
                }
                Ok(effects) => outbox.finish_turn(TurnEnd::Ok, effects, None),
                Err(response) => {
                    drop(bs.capture.take());
                    self.rollback_batch();
                    if has_alarm_wake {
                        self.retry_alarms_later();
                    }
                    return (fail_all(batch, response), Vec::new());
                }
            }
        }
        let mut work = batch.into_iter();
        let mut failure: Option<CommitError> = None;
        let mut alarms_ran = false;
        let mut requeue = Vec::new();
        let mut items = 0usize;
        // A long batch lets the shard's other tasks in between its turns: reads of this
        // object (they run beside the batch, on the committed state), other objects'
        // calls and replies need not wait for the whole batch. Its transaction simply
        // stays open meanwhile. (Yielding only while the object is being read left
        // read_under_write at 2x idle instead of 1.3x, for no measurable gain.)
        let mut ran_since = crate::clock::monotonic();
        while let Some(item) = work.next() {
            items += 1;
            if crate::clock::monotonic().saturating_sub(ran_since) >= BATCH_SLICE {
                tokio::task::yield_now().await;
                ran_since = crate::clock::monotonic();
            }
            // Out of `self` while the turn runs, so that the turn can wait on another
            // object while the batch so far commits (`flush_turn`).
            let mut instance = self.instance.take().expect("active");
            let mut ctx = self.ctx.take().expect("active");
            ctx.effects = Effects::default();
            let (reply, result) = match item {
                Work::Call(call) => {
                    let result = run_call(self, instance.as_mut(), &mut ctx, &call, &mut bs).await;
                    (Some(call.reply), result)
                }
                Work::Alarm => {
                    alarms_ran = true;
                    let result = run_due_alarms(self, instance.as_mut(), &mut ctx, &mut bs).await;
                    (None, result)
                }
            };
            let effects = std::mem::take(&mut ctx.effects);
            self.ctx = Some(ctx);
            self.instance = Some(instance);
            let result = match bs.broken.clone() {
                // The batch so far could not be made durable when the turn called out:
                // the batch fails as a whole.
                Some(broken) => Err(broken),
                None => result.map_err(CommitError::NotApplied),
            };
            match result {
                Ok(CallResult::Reply(response)) => {
                    let end = match response {
                        Response::Return(_) | Response::Welcome => TurnEnd::Ok,
                        _ => TurnEnd::Err,
                    };
                    outbox.finish_turn(end, effects, reply.map(|tx| ((tx, response), false)));
                }
                Ok(CallResult::Recorded(response)) => {
                    outbox.finish_turn(
                        TurnEnd::Ok,
                        effects,
                        reply.map(|tx| ((tx, response), true)),
                    );
                }
                Ok(CallResult::Panicked(message)) => {
                    let response = Response::Error(WireError::ObjectReset { message });
                    // An alarm wake leaves only its successful handlers' effects.
                    let end = match reply {
                        Some(_) => TurnEnd::Panicked,
                        None => TurnEnd::Ok,
                    };
                    outbox.finish_turn(end, effects, reply.map(|tx| ((tx, response), false)));
                    // The instance may be half-changed: drop it. The work behind this
                    // goes back to the front of the queue and meets a fresh activation.
                    self.instance = None;
                    requeue.extend(work.by_ref());
                    break;
                }
                Err(e) => {
                    let response = e.response();
                    outbox.finish_turn(
                        TurnEnd::Err,
                        effects,
                        reply.map(|tx| ((tx, response), false)),
                    );
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut new_due = None;
        if failure.is_none() {
            match self.index_alarms_before(alarms_ran, &outbox.effects) {
                Ok(due) => new_due = due,
                Err(e) => failure = Some(CommitError::NotApplied(e)),
            }
        }
        crate::telemetry::batch(items);
        if failure.is_none() {
            if let Err(e) = self
                .commit(bs.before, bs.capture.take(), &bs.recorded)
                .await
            {
                failure = Some(e);
            }
        }
        if let Some(failure) = failure {
            // Nothing of this batch is stored (or, if indeterminate, it may be replayed
            // on restart): every reply becomes the batch's error, the calls not reached
            // get it too, and the instance is rebuilt from storage next time. A recorded
            // answer (a retry of a call an earlier batch applied) stays: it is true.
            if self.txn_open {
                self.rollback_batch();
            }
            self.instance = None;
            tracing::error!(class = self.class.name, id = %self.id, %failure, "batch failed");
            if has_alarm_wake {
                self.retry_alarms_later();
            }
            let failed = failure.response();
            let replies = outbox
                .fail()
                .into_iter()
                .map(|((tx, response), recorded)| {
                    let response = if recorded { response } else { failed.clone() };
                    (tx.into(), response, recorded)
                })
                .chain(work.chain(requeue).filter_map(|w| match w {
                    Work::Call(c) => Some((c.reply.into(), failed.clone(), false)),
                    Work::Alarm => None,
                }))
                .collect();
            return (replies, Vec::new());
        }
        if let Some(due) = new_due {
            self.index_alarms_after(due);
        }
        let Outbox { effects, replies } = outbox;
        let mut replies: Vec<Reply> = replies
            .into_iter()
            .map(|((tx, response), recorded)| (tx.into(), response, recorded))
            .collect();
        if let (false, Some(registry)) = (effects.sockets.is_empty(), &self.config.sockets) {
            let out = SocketOutput {
                registry: registry.clone(),
                class: self.class.name,
                id: self.id,
                ops: effects.sockets,
            };
            // First: a caller (the gateway awaiting a socket's connect turn) must find
            // the tags and attachment that turn set once it has its reply.
            replies.insert(
                0,
                (ReplyTo::Sockets(out), Response::Return(Vec::new()), false),
            );
        }
        if let (false, Some(hub)) = (effects.streams.is_empty(), &self.config.streams) {
            let out = StreamOutput {
                hub: hub.clone(),
                class: self.class.name,
                id: self.id,
                ops: effects.streams,
            };
            replies.push((ReplyTo::Streams(out), Response::Return(Vec::new()), false));
        }
        if effects.reset_instance {
            self.instance = None;
        }
        if let Some(target) = effects.restore {
            // The restore replaces the file: everything deferred goes in first.
            if self.commit_deferred(true).await != FileCommit::Done || self.txn_open {
                tracing::error!(class = self.class.name, id = %self.id, "restore skipped: the object's earlier writes could not be stored");
            } else if let Err(e) = self.restore(target).await {
                tracing::error!(class = self.class.name, id = %self.id, error = %e, "restore failed; the object keeps its state");
            }
        }
        (replies, requeue)
    }

    /// A batch of read-only calls on an active object: each turn runs as it is, with
    /// none of a writing batch's machinery (no transaction of its own to begin and
    /// commit, no change capture, no savepoints, no request ids): SQLite refuses
    /// writes while a read-only method runs, so there is nothing to undo, record or
    /// log. The replies go through the output gate like any batch's: they show the
    /// state the object's earlier batches left, and leave once those are durable.
    /// A panic resets the instance, as in a writing batch, and the calls after it run
    /// again on a fresh activation.
    async fn run_reads(&mut self, batch: Vec<Work>) -> (Vec<Reply>, Vec<Work>) {
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let mut work = batch.into_iter();
        let mut requeue = Vec::new();
        let mut items = 0usize;
        while let Some(item) = work.next() {
            let Work::Call(call) = item else {
                unreachable!("run_reads takes read-only calls only")
            };
            items += 1;
            let response = if self.config.clock.now_ms() > call.deadline_ms {
                Response::Error(WireError::Timeout)
            } else {
                let instance = self.instance.as_mut().expect("active");
                let ctx = self.ctx.as_mut().expect("active");
                ctx.effects = Effects::default();
                ctx.turn = None;
                let started = crate::clock::monotonic();
                let outcome =
                    AssertUnwindSafe(instance.dispatch(ctx, call.method, &call.request.args))
                        .catch_unwind()
                        .await;
                crate::telemetry::turn(
                    call.class.name,
                    crate::clock::monotonic().saturating_sub(started),
                );
                match outcome {
                    Ok(outcome) => turn_response(outcome, &call),
                    Err(panic) => {
                        let message = call_panicked(&call, &panic);
                        replies.push((
                            call.reply.into(),
                            Response::Error(WireError::ObjectReset { message }),
                            false,
                        ));
                        // The instance may be half-changed: drop it. The calls behind
                        // this one meet a fresh activation.
                        self.instance = None;
                        requeue.extend(work.by_ref());
                        break;
                    }
                }
            };
            replies.push((call.reply.into(), response, false));
        }
        crate::telemetry::batch(items);
        (replies, requeue)
    }

    /// Replace the object's state with its state at `target` (see [`crate::restore`]):
    /// log the rebuilt image, then install it and reset the instance.
    async fn restore(&mut self, target: RestoreTarget) -> Result<(), String> {
        // Reading the retained log is slow: off the shard thread, so the shard's other
        // objects carry on meanwhile (this one waits: its restore is its turn's effect).
        let (data_dir, class, id, seq, window) = (
            self.config.data_dir.clone(),
            self.class.name,
            self.id,
            self.seq,
            self.config.request_window,
        );
        let (image, report) = tokio::task::spawn_blocking(move || {
            crate::restore::rebuild(&data_dir, class, id, target, seq, window)
        })
        .await
        .map_err(|e| format!("the restore task failed: {e}"))??;
        let log = self.log.as_ref().expect("attached");
        if !log.captures_changes() {
            return Err("restoring needs the host log".into());
        }
        let mut watch = log.watch();
        log.submit(report.new_seq, Some(Change::Image(image.clone())));
        let slot = self.slot.clone();
        let pos = match watch
            .wait_for(|p| settled(p, report.new_seq, slot.rewinds.get()))
            .await
        {
            Ok(p) if !p.failed && p.durable >= report.new_seq => *p,
            Ok(p) if p.rejected.is_some() => {
                // Refused, nothing on disk: the object keeps its state and the log
                // takes its batches again.
                drop(p);
                self.slot.rewinds.set(self.slot.rewinds.get() + 1);
                log.rewind();
                return Err("the host log could not store the restored state (refused)".into());
            }
            _ => return Err("the host log could not make the restored state durable".into()),
        };
        // The restored state is in the log: the batch numbers move past it whatever
        // happens to the file below.
        self.seq = report.new_seq;
        self.instance = None;
        self.spare_capture = None;
        self.ctx = None;
        self.conn = None;
        self.request_max = None;
        let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
        self.slot.reads.file_replaced();
        if let Err(e) = store::write_image(&path, &image) {
            self.poisoned = true;
            return Err(format!(
                "installing the restored state (replayed on restart): {e}"
            ));
        }
        if let Some(log) = self.log.take() {
            log.applied(pos.lsn);
        }
        // The restored state has its own alarms: index them.
        let due = rusqlite::Connection::open(&path)
            .and_then(|c| crate::alarms::earliest_due(&c))
            .map_err(|e| format!("reading the restored alarms: {e}"))?;
        self.config
            .alarms
            .index_due(self.class.name, self.id, due)
            .map_err(|e| format!("indexing the restored alarms: {e}"))?;
        self.reported_due = due;
        self.config.alarms.notify_due(self.class.name, self.id, due);
        tracing::info!(class = self.class.name, id = %self.id, ?report, "object restored");
        Ok(())
    }
}

/// Statements the runtime runs on every batch, prepared once per connection. (Not the
/// per-batch savepoints: their names carry the batch number, and caching them would
/// push every other statement out of the connection's cache.)
trait Run {
    fn run(&self, sql: &str) -> rusqlite::Result<()>;
}

impl Run for rusqlite::Connection {
    fn run(&self, sql: &str) -> rusqlite::Result<()> {
        self.prepare_cached(sql)?.execute([]).map(drop)
    }
}

/// Something that changes whenever a transaction writes rows or the schema.
fn write_marker(conn: &rusqlite::Connection) -> (u64, i64) {
    let schema: i64 = conn
        .prepare_cached("PRAGMA schema_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .unwrap_or(-1);
    (conn.total_changes(), schema)
}

enum CallResult {
    Reply(Response),
    /// The request id was applied by an earlier batch: its recorded answer stands,
    /// whatever becomes of this batch.
    Recorded(Response),
    Panicked(String),
}

/// Run one call inside its own savepoint. `Err` means the batch machinery failed.
async fn run_call(
    obj: &mut Object,
    instance: &mut dyn Instance,
    ctx: &mut Context,
    call: &Call,
    bs: &mut Pending,
) -> Result<CallResult, String> {
    let window = obj.config.request_window;
    let request = &call.request;
    if ctx.clock.now_ms() > call.deadline_ms {
        return Ok(CallResult::Reply(Response::Error(WireError::Timeout)));
    }
    let db = |e: rusqlite::Error| e.to_string();
    let digest = store::call_digest(&request.method, &request.args);
    // A read-only method writes nothing, so nothing is recorded under its id: it just
    // runs (looking its id up cost a read on an idle object a sixth of its shard time).
    let recorded = if call.class.is_read(call.method)
        || obj
            .unseen_request(&ctx.conn, &request.request_id)
            .map_err(db)?
    {
        None
    } else {
        store::lookup_request(&ctx.conn, &request.request_id).map_err(db)?
    };
    if let Some((first, recorded)) = recorded {
        if first != 0 && first != digest {
            // Not the call that used this id first: answering with that call's
            // result would tell this caller its own call happened.
            return Ok(CallResult::Reply(Response::Error(WireError::RequestReused)));
        }
        return Ok(CallResult::Recorded(match recorded {
            Recorded::Return(b) => Response::Return(b),
            Recorded::AppError(b) => Response::AppError(b),
        }));
    }
    ctx.conn.run("SAVEPOINT durable_call").map_err(db)?;
    let before = ctx.conn.total_changes();
    // One span per call (at debug level: free unless asked for with
    // RUST_LOG=durable_runtime=debug); what the method logs is inside it.
    let span = tracing::debug_span!(
        "call",
        class = call.class.name,
        id = %request.object,
        method = %request.method,
        request_id = %durable_client::ObjectId::from_bytes(request.request_id),
        caller_span = call.chain.as_ref().map_or(0, |c| c.caller_span),
    );
    ctx.turn = obj.turn_info(
        call.chain.clone(),
        Some(call.deadline_ms),
        Some(request.request_id),
        span.id().map_or(0, |i| i.into_u64()),
    );
    let conn = ctx.conn.clone();
    let turn =
        tracing::Instrument::instrument(instance.dispatch(ctx, call.method, &request.args), span);
    let started = crate::clock::monotonic();
    let outcome = obj
        .drive(
            &conn,
            bs,
            "durable_call",
            AssertUnwindSafe(turn).catch_unwind(),
        )
        .await;
    ctx.turn = None;
    crate::telemetry::turn(
        call.class.name,
        crate::clock::monotonic().saturating_sub(started),
    );
    let rollback = |ctx: &Context| {
        ctx.conn
            .run("ROLLBACK TO durable_call")
            .and_then(|_| ctx.conn.run("RELEASE durable_call"))
            .map_err(db)
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(panic) => {
            rollback(ctx)?;
            return Ok(CallResult::Panicked(call_panicked(call, &panic)));
        }
    };
    let wrote = ctx.conn.total_changes() != before;
    let response = match outcome {
        TurnOutcome::Return(bytes) => {
            if wrote {
                if let Some(size) = crate::size_check::over_size(
                    &ctx.conn,
                    obj.config.max_object_bytes,
                    &ctx.size_counted,
                )
                .map_err(db)?
                {
                    rollback(ctx)?;
                    return Ok(CallResult::Reply(Response::Error(
                        WireError::ObjectTooLarge {
                            size,
                            limit: obj.config.max_object_bytes,
                        },
                    )));
                }
            }
            ctx.conn.run("RELEASE durable_call").map_err(db)?;
            if wrote {
                // Recorded in the batch's savepoint, not the call's: the request
                // table's pages are then saved for a rollback once per batch instead
                // of once per call (a failure here fails the whole batch anyway).
                let outcome = Recorded::Return(bytes.clone());
                store::record_request(&ctx.conn, &request.request_id, digest, &outcome, window)
                    .map_err(db)?;
                obj.recorded_request(&request.request_id);
                bs.recorded.push((request.request_id, digest, outcome));
            }
            return Ok(CallResult::Reply(Response::Return(bytes)));
        }
        TurnOutcome::AppError(bytes) => {
            rollback(ctx)?;
            if wrote {
                let outcome = Recorded::AppError(bytes.clone());
                store::record_request(&ctx.conn, &request.request_id, digest, &outcome, window)
                    .map_err(db)?;
                obj.recorded_request(&request.request_id);
                bs.recorded.push((request.request_id, digest, outcome));
            }
            Response::AppError(bytes)
        }
        failed => {
            rollback(ctx)?;
            turn_response(failed, call)
        }
    };
    Ok(CallResult::Reply(response))
}

/// What a call's caller hears of its turn's outcome.
fn turn_response(outcome: TurnOutcome, call: &Call) -> Response {
    match outcome {
        TurnOutcome::Return(bytes) => Response::Return(bytes),
        TurnOutcome::AppError(bytes) => Response::AppError(bytes),
        TurnOutcome::BadArguments(message) => Response::Error(WireError::BadArguments { message }),
        TurnOutcome::EncodeFailed(message) => internal(format!("encoding the result: {message}")),
        TurnOutcome::UnknownMethod => Response::Error(WireError::UnknownMethod {
            class: call.class.name.into(),
            method: call.request.method.clone(),
        }),
    }
}

/// A call's turn panicked: say so in the log, and return what its caller is told
/// (the object is reset).
fn call_panicked(call: &Call, panic: &Box<dyn std::any::Any + Send>) -> String {
    let message = format!(
        "{}.{} panicked: {}",
        call.class.name,
        call.request.method,
        panic_message(panic)
    );
    tracing::warn!(id = %call.request.object, "{message}; object reset");
    message
}

/// Run the object's due alarms, each in its own savepoint: a handler that returns `Ok`
/// removes its alarm (or moves a recurring one to its next period); one that fails is
/// rolled back and retried later with exponential backoff, or given up on and recorded
/// after the last attempt. A panic resets the object after recording the attempt.
async fn run_due_alarms(
    obj: &mut Object,
    instance: &mut dyn Instance,
    ctx: &mut Context,
    bs: &mut Pending,
) -> Result<CallResult, String> {
    let db = |e: rusqlite::Error| e.to_string();
    let class = obj.class.clone();
    let config = obj.config.clone();
    let now = config.clock.now_ms();
    let settings = &config.alarms.config;
    // Only the effects of handlers that return `Ok` are kept (left in `ctx.effects`
    // for the batch's outbox).
    let mut kept = Effects::default();
    for alarm in crate::alarms::due_alarms(&ctx.conn, now, 256).map_err(db)? {
        let attempt = alarm.attempt + 1;
        let (error, panicked) = match class.alarms.get(alarm.name.as_str()) {
            None => (format!("no alarm handler named {:?}", alarm.name), None),
            Some(&index) => {
                ctx.conn.run("SAVEPOINT durable_alarm").map_err(db)?;
                ctx.alarm_attempt = Some(attempt);
                ctx.effects = Effects::default();
                ctx.turn = obj.turn_info(None, None, None, 0);
                let conn = ctx.conn.clone();
                let turn = AssertUnwindSafe(instance.dispatch_alarm(ctx, index, &alarm.args))
                    .catch_unwind();
                let outcome = obj.drive(&conn, bs, "durable_alarm", turn).await;
                ctx.turn = None;
                ctx.alarm_attempt = None;
                let effects = std::mem::take(&mut ctx.effects);
                let failed = match outcome {
                    Ok(TurnOutcome::Return(_)) => crate::size_check::over_size(&ctx.conn, config.max_object_bytes, &ctx.size_counted)
                        .map_err(db)?
                        .map(|size| {
                            (
                                format!(
                                    "the handler's writes would take the object to {size} bytes, past its limit of {}",
                                    config.max_object_bytes
                                ),
                                None,
                            )
                        }),
                    Ok(TurnOutcome::AppError(bytes)) => Some((
                        format!("the handler returned an error ({} bytes)", bytes.len()),
                        None,
                    )),
                    Ok(other) => Some((format!("the handler failed: {other:?}"), None)),
                    Err(panic) => {
                        let m = format!(
                            "{}.{} panicked: {}",
                            class.name,
                            alarm.name,
                            panic_message(&panic)
                        );
                        Some((m.clone(), Some(m)))
                    }
                };
                match failed {
                    None => {
                        kept.absorb(effects);
                        ctx.conn.run("RELEASE durable_alarm").map_err(db)?;
                        crate::alarms::finish(&ctx.conn, &alarm, now).map_err(db)?;
                        continue;
                    }
                    Some(f) => {
                        ctx.conn.run("ROLLBACK TO durable_alarm").map_err(db)?;
                        ctx.conn.run("RELEASE durable_alarm").map_err(db)?;
                        f
                    }
                }
            }
        };
        if attempt >= settings.max_attempts {
            tracing::error!(class = class.name, id = %ctx.id, alarm = %alarm.name, key = %alarm.key, attempt, %error, "alarm failed for the last time; recorded in _durable_alarm_failures");
            crate::alarms::give_up(&ctx.conn, &alarm, attempt, &error, now).map_err(db)?;
        } else {
            let delay = settings.backoff.as_millis() as u64 * (1u64 << (attempt - 1).min(20));
            tracing::warn!(class = class.name, id = %ctx.id, alarm = %alarm.name, key = %alarm.key, attempt, %error, retry_in_ms = delay, "alarm failed; will retry");
            crate::alarms::retry(&ctx.conn, &alarm, attempt, now + delay).map_err(db)?;
        }
        if let Some(message) = panicked {
            ctx.effects = kept;
            return Ok(CallResult::Panicked(message));
        }
    }
    ctx.effects = kept;
    Ok(CallResult::Reply(Response::Welcome))
}
