//! Shards: a few threads, each with a single-threaded executor that owns its objects,
//! their SQLite connections and their queues. An object is pinned to one shard by its
//! id ([`durable_client::wire::lane_of`]), so turns need no locks; the network runtime
//! only moves frames in and out. Each shard's executor also serves the shard's *lane*
//! (its own QUIC endpoint, started through [`Shards::run_on`]): a call that comes in on
//! the lane of its object's shard never leaves that thread.
//!
//! Each object runs one task that takes the calls waiting in its bounded queue as a
//! batch: one SQLite transaction, one savepoint per call (a failing call rolls back
//! only itself), one commit, then the durability component makes the batch durable
//! and only then are the batch's replies released (the output gate).
//!
//! This module routes: it starts the shard threads, finds or starts an object's task
//! for each message, and evicts idle objects. The rest, from the ground up:
//! [`outcomes`] (replies waiting in the output gate, commit errors by retry class),
//! [`slot`] (what the router and an object's task share), [`object`] (the object's
//! state and its task's loop), and the object's work in [`activation`] (opening and
//! healing its file, its alarm index entries), [`file_txn`] (the open transaction,
//! batch commits, deferred file commits, rewinds), [`turns`] and [`alarm_turns`]
//! (running a batch's calls and due alarms) and [`restore`].

mod activation;
mod alarm_turns;
mod file_txn;
mod object;
mod outcomes;
mod restore;
mod slot;
mod turns;
mod unfiled;

use self::object::Object;
use self::slot::{Slot, Work, QUEUE_FULL_RETRY_MS};
use crate::class::ClassEntry;
use crate::core::object::{CoreLimits, Input, ObjectCore};
use crate::running::Running;
pub(crate) use crate::shard_config::{Call, LocalSlot, ShardConfig};
use durable_client::wire::{Response, WireError};
use durable_client::ObjectId;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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
    Call(Box<Call>),
    /// Run the object's due alarms.
    Alarm(&'static str, ObjectId),
    /// Evict the object if it is idle; answers whether it was active.
    Evict(&'static str, ObjectId, oneshot::Sender<bool>),
    /// Finish queued work (or, with `false`, drop it as a crash would) and stop.
    Close(bool),
    /// Run this on the shard's thread, in its runtime (see [`Shards::run_on`]).
    Run(Box<dyn FnOnce() + Send>),
}

impl Shards {
    pub(crate) fn start(
        n: usize,
        config: ShardConfig,
        running: Arc<Running>,
    ) -> std::io::Result<Shards> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let config = config.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(64)
                .thread_name(format!("durable-shard-{i}-io"))
                .on_thread_park({
                    let running = running.clone();
                    move || running.parking()
                })
                .on_thread_unpark({
                    let running = running.clone();
                    move || running.resumed()
                })
                .build()?;
            let running = running.clone();
            let handle = std::thread::Builder::new()
                .name(format!("durable-shard-{i}"))
                .spawn(move || {
                    // Counted as running until it stops (or panics).
                    let _running = running.started();
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
            .send_message(class, id, Message::Call(Box::new(call)))
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
        let shard = durable_client::wire::lane_of(class, &id, self.senders.len());
        self.senders[shard].send(message).map_err(|e| Box::new(e.0))
    }

    /// Run `setup` on shard `i`'s thread, inside its runtime (a lane's endpoint is
    /// made there, so that its tasks run on that thread). Gives it back if the shard
    /// has stopped.
    pub(crate) fn run_on(&self, i: usize, setup: Box<dyn FnOnce() + Send>) -> Result<(), ()> {
        self.senders[i].send(Message::Run(setup)).map_err(|_| ())
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

fn spawn_object(config: &Rc<ShardConfig>, class: Arc<ClassEntry>, id: ObjectId) -> Rc<Slot> {
    let limits = CoreLimits {
        max_queue: config.max_queue,
        max_batch: config.max_batch,
    };
    let slot = Rc::new(Slot {
        core: RefCell::new(ObjectCore::new(limits, 0, config.clock.now_ms())),
        notify: Notify::new(),
        rewinds: Cell::new(0),
        detaches: Cell::new(0),
        pinned: Cell::new(false),
        reads: Default::default(),
    });
    let (flush_tx, flush_rx) = mpsc::unbounded_channel();
    let object = Object {
        gated_since: Default::default(),
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
        raised_due: None,
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
        unfiled: Default::default(),
        marker: None,
        reopened_for: None,
        sync_off: false,
        undo_checked: None,
        savepoint_calls: false,
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

/// A shard's active objects, hashed with foldhash (seeded per map and per process; a
/// few times cheaper than SipHash on every call). Ids may be the callers' own (an
/// object without a name), and foldhash does not claim resistance to a caller that
/// searches for collisions; the map holds at most `max_active` objects, and each new
/// one opens a database file, which costs far more than a longer probe.
type Objects = HashMap<(&'static str, ObjectId), Rc<Slot>, foldhash::quality::RandomState>;

/// Evict objects idle past the timeout, then the least recently used idle ones while
/// more than `max_active - room` are active. Never an object with queued or running work.
fn sweep(objects: &mut Objects, config: &ShardConfig, room: usize) {
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

/// See `route`.
const DRAIN_MAX: usize = 64;

async fn route(mut rx: mpsc::UnboundedReceiver<Message>, config: Rc<ShardConfig>) {
    let mut objects = Objects::default();
    let period = (config.idle_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut sweeper = tokio::time::interval(period);
    sweeper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The clock as read when the router last woke: the messages queued by then arrived
    // within the same few microseconds (one read per wake, not per call).
    let mut now = config.clock.now_ms();
    // Messages taken without waiting since the router last waited; it waits (and so
    // looks at the sweeper) at least every `DRAIN_MAX`.
    let mut drained = 0usize;
    let drain = loop {
        // A message already queued, taken without a `select!` (and without polling the
        // sweeper's timer) for each. Through `poll_recv`, so that each counts against
        // the task's budget (the router still yields to the shard's other tasks) and a
        // send in progress on another thread is waited for, not spun on.
        let queued = if drained < DRAIN_MAX {
            std::future::poll_fn(|cx| std::task::Poll::Ready(rx.poll_recv(cx))).await
        } else {
            std::task::Poll::Pending
        };
        let message = match queued {
            std::task::Poll::Ready(m) => {
                drained += 1;
                m
            }
            std::task::Poll::Pending => {
                drained = 0;
                let m = tokio::select! {
                    m = rx.recv() => m,
                    _ = sweeper.tick() => {
                        sweep(&mut objects, &config, 0);
                        now = config.clock.now_ms();
                        continue;
                    }
                };
                now = config.clock.now_ms();
                m
            }
        };
        let (class, id, work) = match message {
            None => break true,
            Some(Message::Close(drain)) => break drain,
            Some(Message::Run(setup)) => {
                setup();
                continue;
            }
            Some(Message::Call(call)) => {
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
        // One lookup for a call to an active object (the common case).
        let slot = match objects.get(&key) {
            Some(slot) => slot.clone(),
            None => {
                if objects.len() >= config.max_active {
                    // At the cap: make room before opening another database.
                    sweep(&mut objects, &config, 1);
                }
                let slot = spawn_object(&config, class, id);
                objects.insert(key, slot.clone());
                slot
            }
        };
        // A read-only call to a busy object runs at once on its reader. An idle object
        // (nothing running, queued or waiting for its sync) takes it as a turn, which
        // runs and answers at once: its writer's state is then exactly the durable
        // state, and that path is the shorter one (no second connection, no read
        // transaction to begin and end).
        let work = match work {
            Work::Call(call)
                if call.class.is_read(call.method) && !slot.core.borrow().is_idle() =>
            {
                match crate::reads::offer(&slot, &config, call) {
                    None => continue,
                    Some(call) => Work::Call(call),
                }
            }
            work => work,
        };
        let refused = slot.core.borrow_mut().arrive(now, work);
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
    // The shard stops once its tasks end: none may wait to give memory back.
    crate::sqlite_memory::stop_collecting();
    let now = config.clock.now_ms();
    for slot in objects.values() {
        let input = if drain { Input::Close } else { Input::Crash };
        slot.core.borrow_mut().handle(now, input);
        slot.notify.notify_one();
    }
    crate::telemetry::object_active(-(objects.len() as f64), false);
}
