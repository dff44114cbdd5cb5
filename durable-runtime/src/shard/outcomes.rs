//! How a batch's work ends: the replies waiting in the output gate and where they go,
//! the errors a failed batch answers with (by whether its writes may survive), and how
//! the file's commit ended.

use durable_client::wire::{Response, WireError};
use durable_client::ObjectId;
use std::sync::Arc;

/// A reply decided by a batch, waiting for the batch to be durable, with what becomes
/// of it if the batch fails or the log refuses it.
pub(super) type Reply = (ReplyTo, Response, Fate);

/// What becomes of a reply whose batch fails after deciding it, or whose batch the log
/// refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Fate {
    /// It goes with its batch: the batch's error (not applied, or indeterminate if the
    /// batch may survive) takes its place.
    WithBatch,
    /// A recorded answer (a resent request id that an earlier batch applied): true
    /// whatever becomes of this batch, except that if this batch is refused the earlier
    /// one may have been too (indeterminate).
    Recorded,
    /// Its call's writes, or the part before its turn called another object, were made
    /// durable at that call (see `Object::flush_turn`): if the rest of the batch fails
    /// or is refused, the call was applied, or partly: indeterminate, never "not
    /// applied".
    Durable,
}

/// The answer of a call its batch made durable before the batch failed (see
/// [`Fate::Durable`]).
pub(super) fn durable_before_failure() -> Response {
    indeterminate(
        "the call's writes (or those before it called another object) were made durable, \
         then the rest of its batch failed: it may have been applied",
    )
}

/// Where a batch's output goes once the gate releases it: a caller, or the host's
/// WebSockets (the batch's socket effects, applied only if released as a success).
pub(super) enum ReplyTo {
    Caller(crate::answering::Answer),
    Sockets(SocketOutput),
    Streams(StreamOutput),
}

/// A batch's stream items, waiting in the output gate with its replies.
pub(super) struct StreamOutput {
    pub(super) hub: Arc<crate::streams::Hub>,
    pub(super) class: &'static str,
    pub(super) id: ObjectId,
    pub(super) ops: Vec<crate::streams::StreamOp>,
    /// What of `ops` may be durable even if the batch fails (see
    /// [`crate::streams::maybe_durable`]; a turn's part before its call to another
    /// object): handed over whatever the batch's outcome.
    pub(super) if_failed: Vec<crate::streams::StreamOp>,
}

/// A batch's socket effects, waiting in the output gate with its replies.
pub(super) struct SocketOutput {
    pub(super) registry: Arc<crate::sockets::Registry>,
    pub(super) class: &'static str,
    pub(super) id: ObjectId,
    pub(super) ops: Vec<crate::sockets::SocketOp>,
}

impl ReplyTo {
    /// Whether this is a batch's socket messages or stream items (not a caller's
    /// reply): sent only with `Response::Return`.
    pub(super) fn is_output(&self) -> bool {
        !matches!(self, ReplyTo::Caller(_))
    }

    /// Hand over the output: a caller gets `response`; socket effects are applied if
    /// `response` says the batch is durable, dropped otherwise.
    pub(super) fn send(self, response: Response) -> Result<(), Response> {
        match self {
            ReplyTo::Caller(tx) => tx.send(response),
            ReplyTo::Sockets(out) => {
                if let Response::Return(_) = response {
                    out.registry.apply(out.class, out.id, out.ops);
                }
                Ok(())
            }
            ReplyTo::Streams(out) => {
                match response {
                    Response::Return(_) => out.hub.apply(out.class, out.id, out.ops),
                    // Perhaps applied (a sync failed): a deletion may stand, so its
                    // followers end (if it did not, they end needlessly, and a new
                    // follow finds the stream: never two streams taken for one); so
                    // may items and ends, so their streams' followers read again what
                    // stands.
                    Response::Error(WireError::Indeterminate { .. }) => {
                        let ops = crate::streams::maybe_durable(&out.ops);
                        out.hub.apply(out.class, out.id, ops);
                    }
                    // Not applied (refused by the log, say): only what a turn made
                    // durable at a call to another object stands.
                    _ => out.hub.apply(out.class, out.id, out.if_failed),
                }
                Ok(())
            }
        }
    }
}

impl From<crate::answering::Answer> for ReplyTo {
    fn from(tx: crate::answering::Answer) -> Self {
        ReplyTo::Caller(tx)
    }
}

/// A failure before anything of the batch could reach the log: nothing applied.
pub(super) fn internal(message: impl Into<String>) -> Response {
    Response::Error(WireError::Internal {
        message: message.into(),
    })
}

/// A failure after the batch may have reached the log or the object's file: the
/// calls may have been applied (retry only with the same request id).
pub(super) fn indeterminate(message: impl Into<String>) -> Response {
    Response::Error(WireError::Indeterminate {
        message: message.into(),
    })
}

/// The log refused a batch, so nothing of it is on disk: not applied.
pub(super) fn refused(full: bool) -> Response {
    if full {
        Response::Error(WireError::StorageFull {
            message: "the host's disk is full: the call's writes were undone; writes work again once space is freed".into(),
        })
    } else {
        internal("the host log could not be written: the call's writes were undone")
    }
}

/// How committing the file's open transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileCommit {
    /// Committed (or nothing to commit, or kept open to try again later).
    Done,
    /// The log refused some of the batches: they must be undone first (the core asks
    /// for a [`Action::Rewind`](crate::core::object::Action::Rewind)).
    Refused,
    /// The object had to stop: batches only the log holds are missing from the file.
    Stopped,
    /// Stopped as above, but only after the log made every batch in the transaction
    /// durable: they are applied (the object rebuilds them from the log), and their
    /// callers can be told so.
    StoppedDurable,
}

/// Why a batch could not commit, by whether its writes may survive.
#[derive(Debug, Clone)]
pub(super) enum CommitError {
    /// Rolled back before anything reached the log or the file.
    NotApplied(String),
    /// The batch may be in the log or the file: it may be applied after a restart.
    Indeterminate(String),
}

impl CommitError {
    pub(super) fn response(&self) -> Response {
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

pub(super) enum CallResult {
    Reply(Response),
    /// The request id was applied by an earlier batch: its recorded answer stands,
    /// whatever becomes of this batch.
    Recorded(Response),
    Panicked(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::{Hub, Live, StreamOp};

    /// A batch's stream output is handed over whole when the batch is durable; when
    /// its outcome is unknown, as deletions and rechecks; when it was not applied (the
    /// log refused it), only what its turns made durable at calls to other objects.
    #[test]
    fn a_stream_output_gives_followers_what_stands_for_each_outcome() {
        let hub = Arc::new(Hub::default());
        let id = ObjectId::from_name("Chat", "a");
        let item = StreamOp::Item {
            stream: "s".into(),
            seq: 3,
            json: Arc::from("x"),
        };
        let end = StreamOp::End {
            stream: "t".into(),
            seq: 1,
        };
        let output = |if_failed: Vec<StreamOp>| {
            ReplyTo::Streams(StreamOutput {
                hub: hub.clone(),
                class: "Chat",
                id,
                ops: vec![item.clone(), end.clone()],
                if_failed,
            })
        };
        let (mut s, mut t) = (hub.follow("Chat", id, "s"), hub.follow("Chat", id, "t"));
        output(Vec::new())
            .send(Response::Return(Vec::new()))
            .unwrap();
        assert!(matches!(s.rx.try_recv(), Ok(Live::Item { seq: 3, .. })));
        assert_eq!(t.rx.try_recv().unwrap(), Live::End { seq: 1 });
        // Refused with nothing made durable before: the followers hear nothing.
        output(Vec::new()).send(refused(true)).unwrap();
        assert!(s.rx.try_recv().is_err() && !s.rx.is_closed());
        assert!(t.rx.try_recv().is_err() && !t.rx.is_closed());
        // Refused, but `t` ended before a call to another object: its followers read
        // it again from the object; `s`'s hear nothing.
        let recheck_t = StreamOp::Recheck { stream: "t".into() };
        output(vec![recheck_t]).send(refused(false)).unwrap();
        assert!(t.rx.try_recv().is_err() && t.rx.is_closed());
        assert!(s.rx.try_recv().is_err() && !s.rx.is_closed());
        // Indeterminate: every stream the batch touched is read again.
        hub.refollow(&mut t);
        output(Vec::new())
            .send(indeterminate("sync failed"))
            .unwrap();
        assert!(s.rx.try_recv().is_err() && s.rx.is_closed());
        assert!(t.rx.try_recv().is_err() && t.rx.is_closed());
    }
}
