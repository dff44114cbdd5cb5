//! One object's task on its shard: its state, and the loop that takes its core's
//! actions (run a batch, release outputs, commit the file when quiet, give back
//! memory) and watches the log's durability.

use super::outcomes::{
    durable_before_failure, indeterminate, refused, CommitError, Fate, FileCommit,
};
use super::slot::{Slot, Work};
use crate::capture::ChangeCapture;
use crate::class::{ClassEntry, Instance};
use crate::clock::Clock;
use crate::context::Context;
use crate::core::object::{Action, Input, Work as CoreWork};
use crate::durability::{DurablePos, ObjectLog, Refusal};
use crate::outgoing::FlushRequest;
use crate::shard_config::ShardConfig;
use crate::store;
use crate::telemetry::{self, Stage};
use durable_client::ObjectId;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// One object's state on its shard.
pub(super) struct Object {
    /// Committed batches whose durability is awaited, with when each was handed to
    /// the log (for `durable_gate_seconds`), oldest first.
    pub(super) gated_since: VecDeque<(u64, Duration)>,
    pub(super) slot: Rc<Slot>,
    pub(super) class: Arc<ClassEntry>,
    pub(super) id: ObjectId,
    pub(super) config: Rc<ShardConfig>,
    /// A change capture left empty by a read-only batch, reused by the next one.
    /// Declared before `ctx`: it must be dropped before the connection closes.
    pub(super) spare_capture: Option<ChangeCapture>,
    pub(super) ctx: Option<Context>,
    /// The object's connection while it is open (the one `ctx` holds): the batch
    /// machinery reaches it through here, also while a turn holds `ctx`.
    pub(super) conn: Option<Rc<crate::db::Db>>,
    pub(super) instance: Option<Box<dyn Instance>>,
    pub(super) log: Option<Box<dyn ObjectLog>>,
    /// The last batch committed (and handed to the log); stored in the database.
    pub(super) seq: u64,
    /// The next commit must ship a whole image (the object is new to the log).
    pub(super) needs_image: bool,
    /// The last batch shipped as a whole image: if the log refuses it, the next batch
    /// must ship one again.
    pub(super) last_image_seq: u64,
    /// When the object last shipped a whole image (ms since the epoch).
    pub(super) last_image_ms: u64,
    /// The earliest alarm due time last written to the host's alarm index.
    pub(super) reported_due: Option<u64>,
    /// A later (or no) earliest due time decided by a batch not yet durable: the
    /// batch's number and the due time, written to the index once the batch is
    /// durable ([`Object::publish_raised_due`]). Until then the index keeps the earlier
    /// time: written ahead, a raise would outlive a crash that loses the batch, and
    /// the alarms the file still holds would never be woken for.
    pub(super) raised_due: Option<(u64, Option<u64>)>,
    /// The log holds batches the object's file lacks (its commit failed and SQLite
    /// dropped the transaction): no call runs until [`Object::heal`] re-applies them
    /// from the log (at the next call, or the next restart's replay).
    pub(super) poisoned: bool,
    /// When the next attempt to rebuild a poisoned object from the log may run (ms).
    pub(super) heal_after: u64,
    /// The object's file is missing or damaged and could not be rebuilt: why.
    pub(super) unservable: Option<String>,
    /// This is the object's first activation in this process: make sure the catalog
    /// lists it (objects stored before the catalog existed). Later activations skip
    /// that write.
    pub(super) first_activation: bool,
    /// After the file's commit failed: not before this time (ms) again, with a backoff
    /// that doubles (ms) while it keeps failing.
    pub(super) commit_retry_at: u64,
    pub(super) commit_backoff: u64,
    /// An SQLite transaction is open on the object's database. Under the host log it
    /// stays open across batches (each batch a savepoint in it): the log already
    /// makes a batch durable, so the file commits only every few batches or when the
    /// object goes quiet, and the WAL writes of many batches become one.
    pub(super) txn_open: bool,
    /// Batches in the open transaction that the file has not committed: handed to the
    /// log (durable, or on their way), committed to the file once the log has them.
    pub(super) deferred: usize,
    /// The connection may hold cached pages (a batch ran since it last gave them back),
    /// and the unfiled request records the memory of their last file commit.
    pub(super) holds_memory: bool,
    /// The batch number whose content digest the catalog is known to hold: a quiet
    /// object kept warm for a coming alarm passes the idle check every second, and
    /// asking the catalog each time cost a query.
    pub(super) digest_seq: u64,
    /// Where the running turn asks for its writes so far to be made durable before it
    /// calls another object (see [`crate::outgoing`]); taken while a turn runs.
    pub(super) flush_tx: mpsc::UnboundedSender<FlushRequest>,
    pub(super) flush_rx: Option<mpsc::UnboundedReceiver<FlushRequest>>,
    /// Turns run so far (a stub kept past its turn is refused).
    pub(super) turns: u64,
    /// The largest request id recorded in the object's database, once read: a call
    /// whose id is larger cannot have been applied, and skips the lookup (ids are in
    /// time order, so most are). `None` until read, and again whenever something other
    /// than a call may have recorded ids (activation, healing, a restore). A stale
    /// larger value only costs lookups.
    pub(super) request_max: Option<[u8; 16]>,
    /// Request records of the deferred batches, not yet written to the file's request
    /// tables (see [`super::unfiled`]): written as the file commits, dropped whenever the
    /// open transaction is.
    pub(super) unfiled: super::unfiled::Unfiled,
    /// The write marker the last batch's commit read after it, kept for the next
    /// batch's start (one `PRAGMA schema_version` per batch instead of two). Used only
    /// while the connection's change count still matches; cleared whenever the
    /// transaction is rolled back or the connection replaced. A stale schema version
    /// could only make a batch look as if it changed the schema (it then ships an
    /// image), never hide a change: the version only grows, except by a rollback.
    pub(super) marker: Option<(u64, i64)>,
    /// The alarm due time a closed connection was last reopened ahead of (see
    /// [`Object::reopen_wait`]): a failed reopen is not tried again for the same alarm.
    pub(super) reopened_for: Option<u64>,
    /// The connection runs with `synchronous=OFF` until the file's next commit (its WAL
    /// was empty when opened: see [`store::Opened::sync_off`]).
    pub(super) sync_off: bool,
    /// Whether a failed call can be undone from the batch's change capture (see
    /// [`Pending::undo`]), for the schema version it was checked at: not with triggers
    /// (re-applying the batch's earlier changes would run them again) or foreign keys.
    pub(super) undo_checked: Option<(i64, bool)>,
    /// A failed call could not be undone from the capture (its batch failed as a
    /// whole): from then on every call of this object gets a savepoint of its own.
    pub(super) savepoint_calls: bool,
}

/// A batch in progress: what its commit needs. A turn that calls another object
/// commits the batch so far in the middle ([`Object::flush_turn`]) and starts these
/// over.
pub(super) struct Pending {
    pub(super) capture: Option<ChangeCapture>,
    /// The write marker when the (remaining) batch began.
    pub(super) before: (u64, i64),
    /// Request ids the (remaining) batch recorded.
    pub(super) recorded: Vec<store::RecordedCall>,
    /// A commit in the middle of the batch failed: the batch fails with this.
    pub(super) broken: Option<CommitError>,
    /// Successful commits of the batch so far in the middle of a turn (a call to
    /// another object, see `Object::flush_turn`).
    pub(super) flushes: u32,
    /// Nothing has run in the batch's savepoint yet: the next call can use it as its
    /// own (most batches hold one call), saving a savepoint and its release.
    pub(super) fresh: bool,
    /// The schema version the batch's calls started from, when the calls after the
    /// first run without a savepoint of their own: one that fails is undone from the
    /// change capture instead (the batch rolled back to its start and the changes made
    /// before the call re-applied; see [`crate::capture::ChangeCapture::changes_until`]).
    /// `None`: each call gets a savepoint (no capture, a batch that activated the
    /// object, triggers or foreign keys in the schema, or an earlier undo that could not
    /// be exact).
    pub(super) undo: Option<i64>,
    /// Commits in the middle of a turn tried so far, made or failed: a call's undo
    /// holds only while none was tried since it began.
    pub(super) flush_tries: u32,
    /// The host clock (ms) when the batch began or last let the shard's other tasks
    /// in (at most [`BATCH_SLICE`] of turns ago): calls' deadlines are checked against
    /// it, one clock read per slice instead of one per call.
    pub(super) now_ms: u64,
    /// When the last turn ended ([`crate::clock::monotonic`]), or the batch began:
    /// the batch's time slice is measured to it, without reading the clock again.
    pub(super) turn_ended: Duration,
}

/// A batch runs at most this long before it lets the shard's other tasks in.
pub(super) const BATCH_SLICE: Duration = Duration::from_micros(30);

/// How long an object stays quiet before its connection gives back its page cache.
pub(super) const IDLE_RELEASE: Duration = Duration::from_secs(1);

/// A quiet object whose next alarm is due within this keeps its page cache: an alarm
/// turn that reads its pages back from the OS runs up to milliseconds late when many
/// objects' alarms come due together.
pub(super) const ALARM_WARM: Duration = Duration::from_secs(10);

/// A quiet object that closed its connection reopens it this long before its next
/// alarm is due, so that the alarm's turn does not pay the open (and the parse of the
/// alarm statements) late.
pub(super) const ALARM_REOPEN_LEAD: Duration = Duration::from_secs(2);

/// Most batches an object keeps in its open transaction before committing its file.
/// Each commit holds the shard while it writes the batches' request records and the
/// WAL, and a hot object's pipeline of batches and log rounds takes a while to refill
/// after it: 128 gave one hot object about 4% more calls per second than 64 (0-8%
/// across five alternated comparisons, BENCHMARKS.md, session 41), for a commit about
/// twice as long, half as often.
pub(super) const DEFER_MAX_BATCHES: usize = 128;

/// Largest object whose content digest is recorded when it stops, and when it goes
/// quiet (see `Object::record_digest`).
pub(super) const DIGEST_STOP_MAX: i64 = 4 << 20;
pub(super) const DIGEST_QUIET_MAX: i64 = 1 << 20;

/// How long an object with deferred batches waits, quiet, before committing its file.
pub(super) const DEFER_IDLE: Duration = Duration::from_millis(100);

impl Object {
    /// The object's open connection.
    pub(super) fn db(&self) -> &crate::db::Db {
        self.conn.as_deref().expect("opened")
    }

    /// Replies were released at `now` (taken before they were sent, so that a thread
    /// switch while sending them does not count as waiting): the batches now durable
    /// left the output gate.
    fn gate_passed(&mut self, now: Duration) {
        let durable = self.slot.core.borrow().durable();
        while let Some(&(seq, since)) = self.gated_since.front() {
            if seq > durable {
                break;
            }
            self.gated_since.pop_front();
            telemetry::stage(self.class.name, Stage::Gate, now.saturating_sub(since));
        }
    }

    pub(super) async fn run(mut self) {
        loop {
            self.publish_raised_due();
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
                    match self.connection_idle_wait() {
                        // Quiet, pages given back: close the connection once quiet
                        // for `connection_idle` (reads served beside it count).
                        Some(wait) => {
                            let quiet = tokio::time::timeout(wait, self.slot.notify.notified());
                            if quiet.await.is_err()
                                && self.connection_idle_wait() == Some(Duration::ZERO)
                            {
                                self.close_connection();
                            }
                        }
                        // Closed (or not closable): wake to reopen ahead of an alarm.
                        None => match self.reopen_wait() {
                            Some(wait) => {
                                let quiet = tokio::time::timeout(wait, self.slot.notify.notified());
                                if quiet.await.is_err() {
                                    self.reopen_for_alarm();
                                }
                            }
                            None => self.slot.notify.notified().await,
                        },
                    }
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
                        // The request records' memory, kept across file commits under
                        // load (an alarm's turn needs none of it).
                        self.unfiled.release();
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
                    let began = crate::clock::monotonic();
                    let waits = batch.iter().filter_map(|w| match w {
                        Work::Call(call) => Some(began.saturating_sub(call.arrived)),
                        Work::Alarm => None,
                    });
                    telemetry::stages(self.class.name, Stage::Queue, waits);
                    let alarm_wakes = batch.iter().filter(|w| !w.is_call()).count();
                    let seq_before = self.seq;
                    let (outputs, requeue) = self.run_batch(batch).await;
                    let requeued = requeue.iter().filter(|w| !w.is_call()).count();
                    // Wakes put back are counted when they run again.
                    for _ in 0..alarm_wakes - requeued {
                        self.config.alarms.wake_done();
                    }
                    let committed = (self.seq != seq_before).then_some(self.seq);
                    let ended = crate::clock::monotonic();
                    telemetry::stage(self.class.name, Stage::Batch, ended.saturating_sub(began));
                    if let Some(seq) = committed.filter(|_| !outputs.is_empty()) {
                        self.gated_since.push_back((seq, ended));
                    }
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
                    let released = crate::clock::monotonic();
                    for (tx, response, _) in replies {
                        let _ = tx.send(response);
                    }
                    self.gate_passed(released);
                }
                Some(Action::Indeterminate(replies)) => {
                    for (tx, _, fate) in replies {
                        // Committed to the file but not synced: it may or may not
                        // survive a crash. (Outputs made durable before the rest of
                        // their batch go out.)
                        let response = if fate == Fate::Durable && tx.is_output() {
                            durable_client::wire::Response::Return(Vec::new())
                        } else {
                            indeterminate("the write could not be made durable (sync failed)")
                        };
                        let _ = tx.send(response);
                    }
                    self.gated_since.clear();
                }
                Some(Action::Refused { outputs, full }) => {
                    for (tx, _, fate) in outputs {
                        let output = tx.is_output();
                        let _ = tx.send(match fate {
                            // Socket messages and stream items made durable before the
                            // refused rest of their batch go out.
                            Fate::Durable if output => {
                                durable_client::wire::Response::Return(Vec::new())
                            }
                            Fate::WithBatch => refused(full),
                            // A recorded answer's own batch may be among those refused:
                            // applied or not, only the same request id may tell.
                            Fate::Recorded => indeterminate("the host log refused a write on this object; this call may or may not have been applied earlier"),
                            // Made durable before the refused rest of its batch.
                            Fate::Durable => durable_before_failure(),
                        });
                    }
                    self.gated_since.clear();
                }
                Some(Action::Rewind(durable)) => {
                    self.gated_since.clear();
                    self.rewind(durable)
                }
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
                        self.close_compacting();
                    }
                    // A raise whose batch is durable by now (else the index keeps the
                    // earlier time: one needless wake).
                    self.publish_raised_due();
                    // The connection closes (if it did not above) as this task ends: its
                    // memory goes back.
                    crate::sqlite_memory::collect_soon();
                    return;
                }
            }
        }
    }

    /// Tell the core how far this object's batches are durable: now if the log
    /// already covers them, else from a task that waits for the log.
    pub(super) fn watch_durability(&self) {
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
        let detaches = self.slot.detaches.get();
        tokio::task::spawn_local(async move {
            let ready = |p: &DurablePos| settled(p, target, slot.rewinds.get());
            let pos = match watch.wait_for(ready).await {
                Ok(p) => *p,
                // The object let go of this handle (it waits for a batch a refusal
                // undid): nothing to report.
                Err(_) if slot.detaches.get() != detaches => return,
                Err(_) => DurablePos {
                    failed: true,
                    ..DurablePos::default()
                },
            };
            feed(&slot, clock.as_ref(), pos);
        });
    }
}

/// Wait until batch `target` is settled in `watch` (see [`settled`]); a closed log
/// reads as failed.
pub(super) async fn settled_pos(
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
pub(super) fn settled(p: &DurablePos, target: u64, rewinds: u64) -> bool {
    p.failed || p.durable >= target || (p.rejected.is_some() && p.epoch == rewinds)
}
