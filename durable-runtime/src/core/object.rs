//! [`ObjectCore`]: one object's turns and output gate as a pure state machine.
//!
//! It owns the object's bounded queue, decides which work runs next as one batch
//! (one transaction, one sync), and holds each batch's outputs until the batch is
//! durable: outputs leave in the order their batches committed, never before, and a
//! batch that wrote nothing waits only for the object's earlier writes. Events come
//! in ([`ObjectCore::arrive`], [`ObjectCore::handle`]) with `now` in milliseconds;
//! actions come out of [`ObjectCore::poll`]. The shard glue runs the batches, talks to
//! SQLite and the log, and feeds back what happened.

use std::collections::VecDeque;

/// Work an object can be given: a call from a caller, or a wake for its alarms.
pub(crate) trait Work {
    /// Calls count against the queue bound; alarm wakes do not (the scheduler bounds
    /// them host-wide).
    fn is_call(&self) -> bool;
}

/// A batch of at least this many items, taken while nothing of the object waits for
/// the disk, is split in two (see [`ObjectCore::poll`]).
const SPLIT_AT: usize = 8;

/// Limits of one object's core.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoreLimits {
    /// Calls that may wait; past it new calls are refused at once.
    pub(crate) max_queue: usize,
    /// Most work items run as one batch.
    pub(crate) max_batch: usize,
}

/// What happened, fed back into the core.
#[derive(Debug)]
pub(crate) enum Input<W, R> {
    /// The batch handed out by [`Action::Run`] ended. `committed` is its batch number
    /// if it wrote (and so must be durable before its outputs leave); `outputs` are
    /// the replies it decided, in order; `requeue` is work it did not reach (after a
    /// panic) and that must run next, in order.
    BatchEnded {
        committed: Option<u64>,
        outputs: Vec<R>,
        requeue: Vec<W>,
    },
    /// Every batch up to this number is durable.
    Durable(u64),
    /// Making batches durable failed: whatever committed and is not durable may or may
    /// not survive.
    SyncFailed,
    /// The log refused every batch after `durable` and none of them is on disk (a full
    /// disk: `full`). Their outputs are answered as not applied, and once no batch is
    /// running the glue must undo them ([`Action::Rewind`]). Ignored while an earlier
    /// refusal is still being undone.
    Refused { durable: u64, full: bool },
    /// Finish the queue, then stop (eviction, shutdown).
    Close,
    /// Stop now as a crash would: queued work and gated outputs are dropped.
    Crash,
}

/// What the glue must do next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Action<W, R> {
    /// Run this work as one batch, then feed back [`Input::BatchEnded`].
    Run(Vec<W>),
    /// Send these outputs: their batch is durable.
    Release(Vec<R>),
    /// These outputs' batch committed but could not be made durable: answer each as
    /// indeterminate.
    Indeterminate(Vec<R>),
    /// The log refused these outputs' batch (nothing of it is on disk): answer each as
    /// not applied (`full`: because the disk is full).
    Refused { outputs: Vec<R>, full: bool },
    /// Undo every batch after this number (the log refused them), number the next
    /// batch after it again, and tell the log; before any further batch runs.
    Rewind(u64),
    /// A crash dropped this work unanswered.
    Dropped(Vec<W>),
    /// Nothing is left: close the object.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Active,
    Closing,
    Crashed,
    Stopped,
}

/// One object's queue, batches and output gate.
#[derive(Debug)]
pub(crate) struct ObjectCore<W, R> {
    limits: CoreLimits,
    queue: VecDeque<W>,
    queued_calls: usize,
    /// A batch is out being run.
    running: bool,
    /// The last batch number that committed.
    committed: u64,
    /// Every batch up to this one is durable.
    durable: u64,
    sync_failed: bool,
    /// A refusal not yet undone: the durable batch to go back to, and whether the
    /// disk was full.
    refused: Option<(u64, bool)>,
    /// Outputs waiting for their batch to be durable, in commit order.
    gated: VecDeque<(u64, Vec<R>)>,
    actions: VecDeque<Action<W, R>>,
    last_used: u64,
    life: Life,
}

impl<W: Work, R> ObjectCore<W, R> {
    /// A core for an object whose batches up to `durable_seq` are durable.
    pub(crate) fn new(limits: CoreLimits, durable_seq: u64, now: u64) -> Self {
        ObjectCore {
            limits,
            queue: VecDeque::new(),
            queued_calls: 0,
            running: false,
            committed: durable_seq,
            durable: durable_seq,
            sync_failed: false,
            refused: None,
            gated: VecDeque::new(),
            actions: VecDeque::new(),
            last_used: now,
            life: Life::Active,
        }
    }

    /// Work arrives. A call past the queue bound, or any work after a stop, is handed
    /// back at once (the caller answers `Overloaded` or `ShuttingDown`).
    pub(crate) fn arrive(&mut self, now: u64, work: W) -> Result<(), W> {
        if matches!(self.life, Life::Crashed | Life::Stopped) {
            return Err(work);
        }
        if work.is_call() {
            if self.queued_calls >= self.limits.max_queue {
                return Err(work);
            }
            self.queued_calls += 1;
        }
        self.last_used = now;
        self.queue.push_back(work);
        Ok(())
    }

    /// Feed back what happened.
    pub(crate) fn handle(&mut self, now: u64, input: Input<W, R>) {
        match input {
            Input::BatchEnded {
                committed,
                outputs,
                requeue,
            } => {
                debug_assert!(self.running, "a batch ended that was not running");
                self.running = false;
                self.last_used = now;
                for w in requeue.into_iter().rev() {
                    if w.is_call() {
                        self.queued_calls += 1;
                    }
                    self.queue.push_front(w);
                }
                if let Some(seq) = committed {
                    assert!(seq > self.committed, "batch numbers only grow");
                    self.committed = seq;
                }
                if self.life == Life::Crashed {
                    return; // a crash drops what it finds
                }
                // A batch that wrote nothing still waits for the object's earlier writes.
                let target = self.committed;
                if outputs.is_empty() {
                } else if target <= self.durable {
                    self.actions.push_back(Action::Release(outputs));
                } else if let Some((_, full)) = self.refused {
                    self.actions.push_back(Action::Refused { outputs, full });
                } else if self.sync_failed {
                    self.actions.push_back(Action::Indeterminate(outputs));
                } else {
                    self.gated.push_back((target, outputs));
                }
            }
            Input::Durable(seq) => {
                self.durable = self.durable.max(seq.min(self.committed));
                while let Some((target, _)) = self.gated.front() {
                    if *target > self.durable {
                        break;
                    }
                    let (_, outputs) = self.gated.pop_front().expect("peeked");
                    self.actions.push_back(Action::Release(outputs));
                }
            }
            Input::SyncFailed => {
                self.sync_failed = true;
                for (_, outputs) in self.gated.drain(..) {
                    self.actions.push_back(Action::Indeterminate(outputs));
                }
            }
            Input::Refused { durable, full } => {
                if self.refused.is_some() || self.life == Life::Crashed {
                    return;
                }
                self.durable = self.durable.max(durable);
                self.refused = Some((self.durable, full));
                for (target, outputs) in self.gated.drain(..) {
                    if target <= self.durable {
                        self.actions.push_back(Action::Release(outputs));
                    } else {
                        self.actions.push_back(Action::Refused { outputs, full });
                    }
                }
            }
            Input::Close => {
                if self.life == Life::Active {
                    self.life = Life::Closing;
                }
            }
            Input::Crash => {
                if !matches!(self.life, Life::Crashed | Life::Stopped) {
                    self.life = Life::Crashed;
                    self.refused = None;
                    self.gated.clear();
                    self.queued_calls = 0;
                    let dropped: Vec<W> = self.queue.drain(..).collect();
                    self.actions.push_back(Action::Dropped(dropped));
                }
            }
        }
    }

    /// The next action, if any: outputs first, then the next batch, then the stop.
    pub(crate) fn poll(&mut self) -> Option<Action<W, R>> {
        if let Some(a) = self.actions.pop_front() {
            return Some(a);
        }
        if self.running {
            return None;
        }
        if let Some((durable, _)) = self.refused.take() {
            self.committed = durable;
            return Some(Action::Rewind(durable));
        }
        match self.life {
            Life::Active | Life::Closing if !self.queue.is_empty() => {
                let mut n = self.queue.len().min(self.limits.max_batch.max(1));
                if n >= SPLIT_AT && self.committed <= self.durable {
                    // Nothing of this object is on its way to disk: the first half goes
                    // now, and its sync runs while the second half does (which then
                    // joins the next round). One batch of everything would leave the
                    // shard idle through the sync, and its callers all waiting.
                    n = n.div_ceil(2);
                }
                let batch: Vec<W> = self.queue.drain(..n).collect();
                self.queued_calls -= batch.iter().filter(|w| w.is_call()).count();
                self.running = true;
                Some(Action::Run(batch))
            }
            Life::Closing if self.gated.is_empty() => {
                self.life = Life::Stopped;
                Some(Action::Stopped)
            }
            Life::Crashed => {
                self.life = Life::Stopped;
                Some(Action::Stopped)
            }
            _ => None,
        }
    }

    /// No work queued or running, no output waiting, and everything committed is
    /// durable: the object may be evicted. (A batch with no outputs, an alarm's,
    /// may still be on its way to disk; a fresh activation must not read it early.)
    pub(crate) fn is_idle(&self) -> bool {
        !self.running
            && self.queue.is_empty()
            && self.gated.is_empty()
            && self.durable >= self.committed
    }

    /// The object was used without work (a read-only call served beside it): it is
    /// not idle as of `now`.
    pub(crate) fn touch(&mut self, now: u64) {
        self.last_used = self.last_used.max(now);
    }

    /// When work last arrived or a batch last ended (ms).
    pub(crate) fn last_used(&self) -> u64 {
        self.last_used
    }

    /// The last batch number that committed (replies wait for it to be durable).
    pub(crate) fn committed(&self) -> u64 {
        self.committed
    }

    /// Every batch up to this one is durable.
    pub(crate) fn durable(&self) -> u64 {
        self.durable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum W {
        Call(u32),
        Alarm,
    }

    impl Work for W {
        fn is_call(&self) -> bool {
            matches!(self, W::Call(_))
        }
    }

    fn core(max_queue: usize, max_batch: usize) -> ObjectCore<W, u32> {
        ObjectCore::new(
            CoreLimits {
                max_queue,
                max_batch,
            },
            0,
            0,
        )
    }

    #[test]
    fn calls_past_the_bound_are_refused_and_alarm_wakes_are_not_counted() {
        let mut c = core(2, 8);
        assert!(c.arrive(0, W::Call(1)).is_ok());
        assert!(c.arrive(0, W::Alarm).is_ok());
        assert!(c.arrive(0, W::Call(2)).is_ok());
        assert_eq!(c.arrive(0, W::Call(3)), Err(W::Call(3)));
        assert_eq!(
            c.poll(),
            Some(Action::Run(vec![W::Call(1), W::Alarm, W::Call(2)]))
        );
        assert!(c.arrive(0, W::Call(3)).is_ok());
    }

    #[test]
    fn one_batch_at_a_time_of_at_most_max_batch() {
        let mut c = core(100, 2);
        for i in 0..5 {
            c.arrive(0, W::Call(i)).unwrap();
        }
        assert_eq!(c.poll(), Some(Action::Run(vec![W::Call(0), W::Call(1)])));
        assert_eq!(c.poll(), None, "one batch at a time");
        c.handle(
            1,
            Input::BatchEnded {
                committed: None,
                outputs: vec![],
                requeue: vec![],
            },
        );
        assert_eq!(c.poll(), Some(Action::Run(vec![W::Call(2), W::Call(3)])));
    }

    #[test]
    fn a_long_queue_taken_while_the_disk_is_idle_goes_in_two_batches() {
        let mut c = core(100, 256);
        for i in 0..10 {
            c.arrive(0, W::Call(i)).unwrap();
        }
        // Nothing on its way to disk: half now, so that its sync overlaps the rest.
        let first: Vec<W> = (0..5).map(W::Call).collect();
        assert_eq!(c.poll(), Some(Action::Run(first)));
        c.handle(
            1,
            Input::BatchEnded {
                committed: Some(1),
                outputs: vec![1],
                requeue: vec![],
            },
        );
        // Batch 1 is not durable yet: everything else goes at once.
        let rest: Vec<W> = (5..10).map(W::Call).collect();
        assert_eq!(c.poll(), Some(Action::Run(rest)));
        c.handle(
            2,
            Input::BatchEnded {
                committed: Some(2),
                outputs: vec![2],
                requeue: vec![],
            },
        );
        c.handle(3, Input::Durable(2));
        assert_eq!(c.poll(), Some(Action::Release(vec![1])));
        assert_eq!(c.poll(), Some(Action::Release(vec![2])));
        // A short queue is never split.
        for i in 10..17 {
            c.arrive(4, W::Call(i)).unwrap();
        }
        let all: Vec<W> = (10..17).map(W::Call).collect();
        assert_eq!(c.poll(), Some(Action::Run(all)));
    }

    #[test]
    fn outputs_wait_for_durability_in_commit_order_and_reads_wait_for_earlier_writes() {
        let mut c = core(100, 1);
        for i in 0..3 {
            c.arrive(0, W::Call(i)).unwrap();
        }
        let end = |c: &mut ObjectCore<W, u32>, committed, out| {
            assert!(matches!(c.poll(), Some(Action::Run(_))));
            c.handle(
                0,
                Input::BatchEnded {
                    committed,
                    outputs: vec![out],
                    requeue: vec![],
                },
            );
        };
        end(&mut c, Some(1), 10);
        end(&mut c, None, 11); // a read: waits for batch 1
        end(&mut c, Some(2), 12);
        assert_eq!(c.poll(), None);
        assert!(!c.is_idle());
        c.handle(0, Input::Durable(1));
        assert_eq!(c.poll(), Some(Action::Release(vec![10])));
        assert_eq!(c.poll(), Some(Action::Release(vec![11])));
        assert_eq!(c.poll(), None);
        c.handle(0, Input::SyncFailed);
        assert_eq!(c.poll(), Some(Action::Indeterminate(vec![12])));
        // Batch 2 is in the file but not durable: a fresh activation must not read it.
        assert!(!c.is_idle());
    }

    #[test]
    fn a_refusal_answers_what_it_undoes_and_rewinds_before_the_next_batch() {
        let mut c = core(100, 1);
        for i in 0..4 {
            c.arrive(0, W::Call(i)).unwrap();
        }
        let end = |c: &mut ObjectCore<W, u32>, committed, out| {
            c.handle(
                0,
                Input::BatchEnded {
                    committed,
                    outputs: vec![out],
                    requeue: vec![],
                },
            );
        };
        assert!(matches!(c.poll(), Some(Action::Run(_))));
        end(&mut c, Some(1), 10);
        assert!(matches!(c.poll(), Some(Action::Run(_))));
        end(&mut c, Some(2), 11);
        assert!(matches!(c.poll(), Some(Action::Run(_))));
        // The log refuses batch 2 (and anything after) while batch 3 runs.
        c.handle(
            0,
            Input::Refused {
                durable: 1,
                full: true,
            },
        );
        c.handle(
            0,
            Input::Refused {
                durable: 1,
                full: true,
            },
        ); // said twice: once
        assert_eq!(c.poll(), Some(Action::Release(vec![10])));
        assert_eq!(
            c.poll(),
            Some(Action::Refused {
                outputs: vec![11],
                full: true
            })
        );
        assert_eq!(c.poll(), None, "no rewind while a batch runs");
        end(&mut c, Some(3), 12);
        assert_eq!(
            c.poll(),
            Some(Action::Refused {
                outputs: vec![12],
                full: true
            })
        );
        assert_eq!(c.poll(), Some(Action::Rewind(1)));
        assert_eq!(c.committed(), 1);
        assert!(c.is_idle() || !c.queue.is_empty());
        // Numbering starts again after the durable batch.
        assert!(matches!(c.poll(), Some(Action::Run(_))));
        end(&mut c, Some(2), 13);
        c.handle(0, Input::Durable(2));
        assert_eq!(c.poll(), Some(Action::Release(vec![13])));
    }

    #[test]
    fn work_not_reached_after_a_panic_runs_next_in_order() {
        let mut c = core(100, 8);
        for i in 0..3 {
            c.arrive(0, W::Call(i)).unwrap();
        }
        let Some(Action::Run(batch)) = c.poll() else {
            panic!()
        };
        c.arrive(0, W::Call(9)).unwrap();
        c.handle(
            0,
            Input::BatchEnded {
                committed: None,
                outputs: vec![0],
                requeue: batch[1..].to_vec(),
            },
        );
        assert_eq!(c.poll(), Some(Action::Release(vec![0])));
        assert_eq!(
            c.poll(),
            Some(Action::Run(vec![W::Call(1), W::Call(2), W::Call(9)]))
        );
    }

    #[test]
    fn close_finishes_the_queue_and_crash_drops_it() {
        let mut c = core(100, 1);
        c.arrive(0, W::Call(1)).unwrap();
        c.arrive(0, W::Call(2)).unwrap();
        c.handle(0, Input::Close);
        assert!(matches!(c.poll(), Some(Action::Run(_))));
        c.handle(
            0,
            Input::BatchEnded {
                committed: Some(1),
                outputs: vec![1],
                requeue: vec![],
            },
        );
        c.handle(0, Input::Durable(1));
        assert_eq!(c.poll(), Some(Action::Release(vec![1])));
        assert!(matches!(c.poll(), Some(Action::Run(_))));
        c.handle(0, Input::Crash);
        assert_eq!(c.poll(), Some(Action::Dropped(vec![])));
        c.handle(
            0,
            Input::BatchEnded {
                committed: Some(2),
                outputs: vec![2],
                requeue: vec![],
            },
        );
        assert_eq!(c.poll(), Some(Action::Stopped));
        assert_eq!(c.arrive(0, W::Call(3)), Err(W::Call(3)));
    }
}
