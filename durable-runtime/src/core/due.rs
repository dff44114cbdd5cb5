//! [`DueQueue`]: the host's pure alarm queue. It holds each object's earliest due
//! time, hands out the objects whose time has come (oldest first, at most
//! `max_in_flight` wakes at once), and says when to look again. No I/O, no clock: the
//! scheduler passes `now` in.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;

/// Each key's earliest due time (ms), and the wakes in flight.
#[derive(Debug)]
pub(crate) struct DueQueue<K> {
    heap: BinaryHeap<Reverse<(u64, K)>>,
    /// The live due time per key; heap entries that disagree are superseded.
    current: HashMap<K, u64>,
    in_flight: usize,
    max_in_flight: usize,
}

impl<K: Copy + Ord + Hash> DueQueue<K> {
    /// An empty queue delivering at most `max_in_flight` wakes at once (at least one).
    pub(crate) fn new(max_in_flight: usize) -> Self {
        DueQueue {
            heap: BinaryHeap::new(),
            current: HashMap::new(),
            in_flight: 0,
            max_in_flight: max_in_flight.max(1),
        }
    }

    /// Set (or, with `None`, clear) the earliest due time of `key`.
    pub(crate) fn set(&mut self, key: K, due: Option<u64>) {
        match due {
            Some(due) => {
                if self.current.insert(key, due) == Some(due) {
                    return;
                }
                self.heap.push(Reverse((due, key)));
                if self.heap.len() > 2 * self.current.len() + 1024 {
                    // Drop superseded entries.
                    self.heap = self
                        .current
                        .iter()
                        .map(|(&k, &d)| Reverse((d, k)))
                        .collect();
                }
            }
            None => {
                self.current.remove(&key);
            }
        }
    }

    /// The keys due at `now`, oldest first, as many as the in-flight bound allows; each
    /// leaves the queue (its turn re-enters its next due time) and counts as in flight
    /// until [`DueQueue::done`].
    #[cfg(test)]
    pub(crate) fn take_due(&mut self, now: u64) -> Vec<K> {
        self.take_due_timed(now)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// The keys due at `now`, oldest first, each with its due time, as many as the
    /// in-flight bound allows; each leaves the queue and counts as in flight until
    /// [`DueQueue::done`].
    pub(crate) fn take_due_timed(&mut self, now: u64) -> Vec<(K, u64)> {
        let mut out = Vec::new();
        while self.in_flight < self.max_in_flight {
            let Some(&Reverse((due, key))) = self.heap.peek() else {
                break;
            };
            if due > now {
                break;
            }
            self.heap.pop();
            if self.current.get(&key) != Some(&due) {
                continue; // superseded
            }
            self.current.remove(&key);
            self.in_flight += 1;
            out.push((key, due));
        }
        out
    }

    /// How many keys have a due time.
    pub(crate) fn len(&self) -> usize {
        self.current.len()
    }

    /// A wake handed out by [`Self::take_due_timed`] finished.
    pub(crate) fn done(&mut self) {
        debug_assert!(self.in_flight > 0, "done without a wake in flight");
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// The earliest live due time.
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.heap
            .iter()
            .filter(|Reverse((due, key))| self.current.get(key) == Some(due))
            .map(|Reverse((due, _))| *due)
            .min()
    }

    /// When the scheduler must look again: the head's due time, unless the in-flight
    /// bound is reached (then a finished wake must come first).
    pub(crate) fn wake_at(&self) -> Option<u64> {
        if self.in_flight >= self.max_in_flight {
            return None;
        }
        self.heap.peek().map(|Reverse((due, _))| *due)
    }

    /// Nothing is in flight and nothing is due at `now`.
    pub(crate) fn is_idle(&self, now: u64) -> bool {
        self.in_flight == 0 && self.heap.peek().is_none_or(|Reverse((due, _))| *due > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_keys_come_out_oldest_first_never_early_and_bounded() {
        let mut q = DueQueue::new(2);
        q.set(1, Some(30));
        q.set(2, Some(10));
        q.set(3, Some(20));
        assert!(q.take_due(9).is_empty());
        assert_eq!(q.wake_at(), Some(10));
        assert_eq!(q.take_due(25), vec![2, 3]);
        // At the bound: nothing more until a wake finishes.
        assert!(q.take_due(100).is_empty());
        assert_eq!(q.wake_at(), None);
        q.done();
        assert_eq!(q.take_due(100), vec![1]);
        q.done();
        q.done();
        assert!(q.is_idle(100));
    }

    #[test]
    fn a_later_setting_supersedes_and_none_clears() {
        let mut q = DueQueue::new(8);
        q.set('a', Some(10));
        q.set('a', Some(50));
        q.set('b', Some(20));
        q.set('b', None);
        assert_eq!(q.next_due(), Some(50));
        assert!(q.take_due(40).is_empty());
        assert_eq!(q.take_due(50), vec!['a']);
        assert_eq!(q.next_due(), None);
    }
}
