//! An object's slot: what the shard's router and the object's task share (its pure
//! core, the bell that wakes it, its read path), and the work it queues.

use super::outcomes::Reply;
use crate::core::object::{ObjectCore, Work as CoreWork};
use crate::shard_config::Call;
use durable_client::wire::{Response, WireError};
use std::cell::{Cell, RefCell};
use tokio::sync::Notify;

/// What the router and an object's task share: the object's pure core (queue,
/// batches, output gate) and the bell that wakes its task.
pub(super) struct Slot {
    pub(super) core: RefCell<ObjectCore<Work, Reply>>,
    pub(super) notify: Notify,
    /// How many times the object rewound since it attached its log: a refusal the log
    /// reports with an older count was already undone (see [`DurablePos::epoch`](crate::durability::DurablePos::epoch)).
    pub(super) rewinds: Cell<u64>,
    /// Changes whenever the object lets go of its log handle (closing its connection
    /// when quiet, a restore): a durability watch on the handle before then sees its
    /// channel close, which is no failure of the log.
    pub(super) detaches: Cell<u64>,
    /// The object's file lacks batches the log holds (poisoned, or its commit keeps
    /// failing): it must not be evicted, it heals and commits itself (until then every
    /// checkpoint stays below those batches).
    pub(super) pinned: Cell<bool>,
    /// Its read-only calls (see [`crate::reads`]).
    pub(super) reads: crate::reads::ReadState,
}

impl Slot {
    /// No work queued or running, no output waiting, no read in flight.
    pub(super) fn idle(&self) -> bool {
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
    fn fallback(&self, now: u64, call: Box<Call>) {
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

/// Work for an object: a call (boxed as it entered the shard: it is moved through the
/// router, the object's queue and its batch), or a wake-up to run due alarms.
pub(super) enum Work {
    Call(Box<Call>),
    Alarm,
}

impl CoreWork for Work {
    fn is_call(&self) -> bool {
        matches!(self, Work::Call(_))
    }
}

/// The retry-after hint for a call refused because its object's queue is full.
pub(super) const QUEUE_FULL_RETRY_MS: u64 = 50;
