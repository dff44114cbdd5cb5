//! Where a call's answer goes once its shard decides it: a caller waiting on a
//! channel of its own, or a pipe's answers. A pipe runs many calls at once; its calls'
//! answers land together in one [`PipeAnswers`] and wake the pipe once, instead of
//! each call waiting in a future of its own (a task, a channel and ~1.4 KB moved per
//! call: ~5% of a hot object's shard thread).

use durable_client::wire::{Response, WireError};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use tokio::sync::oneshot;

/// Where one call's answer goes.
pub(crate) enum Answer {
    /// A caller waiting on its own channel.
    Caller(oneshot::Sender<Response>),
    /// A pipe's answers, under the pipe's key for the call.
    Pipe(PipeSlot),
}

impl Answer {
    /// Hand over the answer; gives it back if nobody waits for it any more.
    pub(crate) fn send(self, response: Response) -> Result<(), Response> {
        match self {
            Answer::Caller(tx) => tx.send(response),
            Answer::Pipe(slot) => slot.send(response),
        }
    }
}

/// The answer a call gets when its shard stopped (a crash, or a stop without draining)
/// after taking it: its batch may have reached the log.
pub(crate) fn stopped_before_answering() -> Response {
    Response::Error(WireError::Indeterminate {
        message: "the host stopped before answering".into(),
    })
}

/// The answers of one pipe's calls, as their shards decide them.
#[derive(Default)]
pub(crate) struct PipeAnswers(Mutex<Landed>);

#[derive(Default)]
struct Landed {
    answers: Vec<(usize, Response)>,
    /// The pipe's task, while it waits for answers.
    waker: Option<Waker>,
    /// The pipe is gone: answers are dropped.
    closed: bool,
}

impl PipeAnswers {
    /// Where the answer of the pipe's call `key` goes.
    pub(crate) fn slot(self: &Arc<Self>, key: usize) -> PipeSlot {
        PipeSlot {
            answers: Some(self.clone()),
            key,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Landed> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn land(&self, key: usize, response: Response) -> Result<(), Response> {
        let waker = {
            let mut landed = self.lock();
            if landed.closed {
                return Err(response);
            }
            landed.answers.push((key, response));
            landed.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// The answers landed so far, by key; pending (and woken when one lands) while
    /// there are none.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Vec<(usize, Response)>> {
        let mut landed = self.lock();
        if landed.answers.is_empty() {
            if !landed
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                landed.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        Poll::Ready(std::mem::take(&mut landed.answers))
    }

    /// The pipe is gone: answers landing from now on are dropped.
    pub(crate) fn close(&self) {
        let mut landed = self.lock();
        landed.closed = true;
        landed.answers.clear();
        landed.waker = None;
    }
}

/// Where one call of a pipe gets its answer. Dropped without an answer (its shard
/// stopped), it answers [`stopped_before_answering`].
pub(crate) struct PipeSlot {
    answers: Option<Arc<PipeAnswers>>,
    key: usize,
}

impl PipeSlot {
    fn send(mut self, response: Response) -> Result<(), Response> {
        match self.answers.take() {
            Some(answers) => answers.land(self.key, response),
            None => Err(response),
        }
    }
}

impl Drop for PipeSlot {
    fn drop(&mut self) {
        if let Some(answers) = self.answers.take() {
            let _ = answers.land(self.key, stopped_before_answering());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test]
    async fn answers_land_together_and_wake_the_pipe() {
        let answers = Arc::new(PipeAnswers::default());
        let waiting = {
            let answers = answers.clone();
            tokio::spawn(async move { poll_fn(|cx| answers.poll_take(cx)).await })
        };
        tokio::task::yield_now().await;
        assert!(Answer::Pipe(answers.slot(3))
            .send(Response::Return(vec![3]))
            .is_ok());
        let first = waiting.await.unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].0, 3);
        // Two land before the pipe looks: both come in one take.
        answers.slot(1).send(Response::Return(vec![1])).unwrap();
        answers.slot(2).send(Response::Return(vec![2])).unwrap();
        let got = poll_fn(|cx| answers.poll_take(cx)).await;
        assert_eq!(got.iter().map(|(k, _)| *k).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[tokio::test]
    async fn a_slot_dropped_unanswered_answers_indeterminate() {
        let answers = Arc::new(PipeAnswers::default());
        drop(Answer::Pipe(answers.slot(7)));
        let got = poll_fn(|cx| answers.poll_take(cx)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, 7);
        assert!(matches!(
            got[0].1,
            Response::Error(WireError::Indeterminate { .. })
        ));
    }

    #[test]
    fn a_closed_pipe_takes_no_answers() {
        let answers = Arc::new(PipeAnswers::default());
        let slot = answers.slot(1);
        answers.close();
        assert!(slot.send(Response::Return(vec![])).is_err());
        // Dropped unanswered after the close: nothing lands either.
        drop(answers.slot(2));
        assert!(answers.lock().answers.is_empty());
    }
}
