//! Which shard threads are running: lets the host log's writer hold a round open
//! while a shard is still making batches that would join it.
//!
//! Most of a host log round's CPU is the round itself, whatever it holds: a write
//! that exits to the hypervisor, its completion, and a sleep and wake of the writer
//! (on the project's 2-vCPU VMs those were most of the writer's ~11 µs per call at
//! ~7 records a round). With callers waiting on many objects, a round started the
//! moment its first record came holds a handful of records; the rest come a few
//! microseconds later and wait a whole round. A shard thread that is running (not
//! parked) is about to hand over more: the writer waits for the shards to park, for
//! at most a bound, and then writes everything at once. A shard that parks is out of
//! work, so waiting for it costs the round nothing it could have had sooner.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::Thread;
use std::time::Duration;

/// The count of running shard threads, and the writer waiting for it to reach zero.
pub(crate) struct Running {
    count: AtomicUsize,
    waiting: AtomicBool,
    waiter: OnceLock<Thread>,
}

impl Running {
    /// None running yet: each shard thread counts itself from its start
    /// ([`Running::started`]).
    pub(crate) fn new() -> Running {
        Running {
            count: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            waiter: OnceLock::new(),
        }
    }

    /// A shard thread woke up (its runtime's `on_thread_unpark`).
    pub(crate) fn resumed(&self) {
        self.count.fetch_add(1, Ordering::SeqCst);
    }

    /// A shard thread is about to park (its runtime's `on_thread_park`): the last one
    /// to park wakes a waiting writer.
    pub(crate) fn parking(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.waiting.load(Ordering::SeqCst) {
            if let Some(t) = self.waiter.get() {
                t.unpark();
            }
        }
    }

    /// A shard thread starts, running: it counts until the guard drops, when the
    /// thread ends (its runtime's last hook was an unpark) or unwinds.
    pub(crate) fn started(self: &Arc<Self>) -> Stopped {
        self.resumed();
        Stopped(self.clone())
    }

    /// Whether any shard thread is running.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::SeqCst) > 0
    }

    /// Wait until no shard thread runs, for at most `limit`. Called by one thread
    /// only (the writer). May return early (a wake left from an earlier wait): the
    /// caller then writes what it has, as it would have without waiting.
    pub(crate) fn wait_parked(&self, limit: Duration) {
        let me = self.waiter.get_or_init(std::thread::current);
        debug_assert_eq!(me.id(), std::thread::current().id());
        self.waiting.store(true, Ordering::SeqCst);
        // Checked after announcing the wait: a shard that parks from here on sees it.
        if self.any() {
            std::thread::park_timeout(limit);
        }
        self.waiting.store(false, Ordering::SeqCst);
    }
}

/// See [`Running::started`].
pub(crate) struct Stopped(Arc<Running>);

impl Drop for Stopped {
    fn drop(&mut self) {
        self.0.parking();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_shard_to_park_ends_the_wait() {
        // Two shard threads running.
        let running = Arc::new(Running::new());
        running.resumed();
        running.resumed();
        running.parking();
        assert!(running.any());
        let r = running.clone();
        let writer = std::thread::spawn(move || {
            // Long enough that only the shard's park can end it within the test.
            r.wait_parked(Duration::from_secs(600));
        });
        // Wait until the writer announced its wait; then the park must wake it.
        while !running.waiting.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        running.parking();
        writer.join().unwrap();
        assert!(!running.any());
    }

    #[test]
    fn a_shard_thread_that_ends_stops_counting() {
        let running = Arc::new(Running::new());
        let r = running.clone();
        std::thread::spawn(move || {
            let _stopped = r.started();
            // A runtime's park and unpark, then the thread ends running.
            r.parking();
            r.resumed();
        })
        .join()
        .unwrap();
        assert!(!running.any());
        // A thread that panics outside its runtime's park.
        let r = running.clone();
        let _ = std::thread::spawn(move || {
            let _stopped = r.started();
            panic!("a shard thread that panics");
        })
        .join();
        assert!(!running.any(), "a panicked thread still counted");
    }

    #[test]
    fn no_wait_when_every_shard_is_parked() {
        let running = Running::new();
        running.resumed();
        running.parking();
        // Would sleep 600 s if it waited.
        running.wait_parked(Duration::from_secs(600));
        running.resumed();
        assert!(running.any());
    }
}
