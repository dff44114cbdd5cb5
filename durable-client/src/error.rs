//! [`CallError`]: what a stub call returns when it does not return the method's value,
//! keeping the method's own error type apart from framework errors.

use crate::retry::Retry;
use crate::wire::WireError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The error type of methods that cannot fail (methods that return a plain value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NoError {}

impl fmt::Display for NoError {
    fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {}
    }
}

impl std::error::Error for NoError {}

/// Why a call did not return the method's `Ok` value.
///
/// [`CallError::Application`] carries the method's own error intact; every other
/// variant is the framework's. [`CallError::retry`] tells which of the three retry
/// classes holds; [`CallError::is_retry_safe`] whether the call was certainly not
/// applied, so that issuing it again cannot apply it twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError<E = NoError> {
    /// The method returned `Err(e)`; its writes were rolled back.
    #[error("the method returned an error: {0}")]
    Application(E),
    /// The object's queue was full, the host's bounds on calls in flight were
    /// reached, or the caller exceeded its rate on this object; nothing was applied.
    /// `retry_after` is the host's hint of when a retry may get in (`None` from hosts
    /// that give none).
    #[error("the object is overloaded; nothing was applied")]
    Overloaded {
        /// When a retry may get in, as the host estimates it.
        retry_after: Option<std::time::Duration>,
    },
    /// The deadline passed while the client waited: the call may have been applied.
    /// The client resends with the same request id until the deadline, so the call is
    /// applied at most once; to learn its outcome, resend the same request id.
    #[error("the call's deadline passed; it may have been applied")]
    Timeout,
    /// The host dropped the call because its deadline had passed before its turn
    /// started; nothing was applied.
    #[error("the call's deadline passed before it started; nothing was applied")]
    Expired,
    /// The host has no class of this name.
    #[error("the host has no class {0:?}")]
    UnknownClass(String),
    /// The class has no such remote method.
    #[error("class {class} has no remote method {method:?}")]
    UnknownMethod {
        /// The class.
        class: String,
        /// The method.
        method: String,
    },
    /// Client and host were compiled with different signatures for this method.
    #[error("schema mismatch for {class}.{method}: client and host disagree on its signature")]
    SchemaMismatch {
        /// The class.
        class: String,
        /// The method.
        method: String,
    },
    /// The object panicked or could not activate; it was reset and the call rolled back.
    #[error("the object was reset: {0}")]
    ObjectReset(String),
    /// The host rejected the token.
    #[error("the host rejected the client token")]
    Unauthenticated,
    /// A frame exceeded the size limit.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Frame size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// The connection failed and could not be re-established before the deadline.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// Another host serves this object; nothing was applied.
    #[error("the object is served by the host at {0}")]
    Moved(String),
    /// The host is shutting down; nothing was applied.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// The object has no stream of that name ([`crate::Client::follow`]).
    #[error("no such stream: {0}")]
    UnknownStream(String),
    /// The arguments could not be encoded, or did not decode on the host as the
    /// method's argument types; nothing was applied.
    #[error("bad arguments: {0}")]
    BadArguments(String),
    /// The host could not read the request frame (malformed, or a protocol version it
    /// does not speak); nothing was applied.
    #[error("the host rejected the request: {0}")]
    Rejected(String),
    /// The client could not encode the call or decode the answer. If the answer was
    /// undecodable the call may have been applied.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The host failed and the call's writes were undone: before anything reached the
    /// log (for example a storage read), or a log write that failed and was cut off
    /// (a full disk is [`CallError::StorageFull`]). Nothing was applied.
    #[error("host error (nothing applied): {0}")]
    Internal(String),
    /// The host's disk is full: the call's writes were undone, nothing was applied.
    /// Reads still work; writes work again once the operator frees space (the host
    /// recovers by itself), so retrying later is safe.
    #[error("the host's storage is full (nothing applied): {0}")]
    StorageFull(String),
    /// The request id was used before by a different call (another method or other
    /// arguments) to this object; this call was not applied. Send a new call under a
    /// new request id.
    #[error("the request id was used before by a different call; this one was not applied")]
    RequestReused,
    /// The host failed after the call's writes may have reached the log or the object's
    /// file (a log write the host could not cut off, a failed sync in `--durability
    /// fsync`, a batch the log holds but the object's file lost), or the call is the
    /// retry of one whose fate is unknown: it may have been applied. Retry only with
    /// the same request id.
    #[error("the call may or may not have been applied: {0}")]
    Indeterminate(String),
    /// The call would have waited on a turn that waits on it (A calls B calls A): the
    /// chain, from the first caller to the object called again. Nothing was applied.
    #[error("call cycle: {}", .0.join(" -> "))]
    CallCycle(Vec<String>),
    /// The call's writes would have taken the object past the host's size limit per
    /// object; they were rolled back, nothing was applied. Delete data (calls that
    /// delete still work) or raise the limit (`--max-object-bytes`).
    #[error("the object would hold {size} bytes, past its limit of {limit}; nothing was applied")]
    ObjectTooLarge {
        /// The bytes the object would have held.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

impl<E> CallError<E> {
    /// Which of the three retry classes this failure is in.
    pub fn retry(&self) -> Retry {
        match self {
            CallError::Application(_) | CallError::ObjectReset(_) => Retry::FailedInMethod,
            CallError::Overloaded { .. }
            | CallError::Expired
            | CallError::UnknownClass(_)
            | CallError::UnknownMethod { .. }
            | CallError::SchemaMismatch { .. }
            | CallError::Unauthenticated
            | CallError::TooLarge { .. }
            | CallError::ShuttingDown
            | CallError::UnknownStream(_)
            | CallError::Moved(_)
            | CallError::BadArguments(_)
            | CallError::Rejected(_)
            | CallError::StorageFull(_)
            | CallError::RequestReused
            | CallError::CallCycle(_)
            | CallError::ObjectTooLarge { .. }
            | CallError::Internal(_) => Retry::NotApplied,
            CallError::Timeout
            | CallError::ConnectionLost(_)
            | CallError::Protocol(_)
            | CallError::Indeterminate(_) => Retry::Indeterminate,
        }
    }

    /// True when the call was certainly not applied (its class is
    /// [`Retry::NotApplied`] or [`Retry::FailedInMethod`]), so that sending it again,
    /// even under a new request id, cannot apply it twice. Whether sending it again
    /// can succeed is another matter: an unknown class stays unknown.
    pub fn is_retry_safe(&self) -> bool {
        self.retry() != Retry::Indeterminate
    }

    /// The method's own error, if that is what this is.
    pub fn application(&self) -> Option<&E> {
        match self {
            CallError::Application(e) => Some(e),
            _ => None,
        }
    }

    /// Map the application error type, keeping framework errors.
    pub fn map_app<F>(self, f: impl FnOnce(E) -> F) -> CallError<F> {
        match self {
            CallError::Application(e) => CallError::Application(f(e)),
            CallError::Overloaded { retry_after } => CallError::Overloaded { retry_after },
            CallError::Timeout => CallError::Timeout,
            CallError::Expired => CallError::Expired,
            CallError::UnknownClass(c) => CallError::UnknownClass(c),
            CallError::UnknownMethod { class, method } => {
                CallError::UnknownMethod { class, method }
            }
            CallError::SchemaMismatch { class, method } => {
                CallError::SchemaMismatch { class, method }
            }
            CallError::ObjectReset(m) => CallError::ObjectReset(m),
            CallError::Unauthenticated => CallError::Unauthenticated,
            CallError::TooLarge { size, limit } => CallError::TooLarge { size, limit },
            CallError::ConnectionLost(m) => CallError::ConnectionLost(m),
            CallError::ShuttingDown => CallError::ShuttingDown,
            CallError::UnknownStream(s) => CallError::UnknownStream(s),
            CallError::Moved(o) => CallError::Moved(o),
            CallError::BadArguments(m) => CallError::BadArguments(m),
            CallError::Rejected(m) => CallError::Rejected(m),
            CallError::Protocol(m) => CallError::Protocol(m),
            CallError::Internal(m) => CallError::Internal(m),
            CallError::StorageFull(m) => CallError::StorageFull(m),
            CallError::RequestReused => CallError::RequestReused,
            CallError::Indeterminate(m) => CallError::Indeterminate(m),
            CallError::CallCycle(c) => CallError::CallCycle(c),
            CallError::ObjectTooLarge { size, limit } => CallError::ObjectTooLarge { size, limit },
        }
    }
}

impl<E> From<WireError> for CallError<E> {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Unauthenticated => CallError::Unauthenticated,
            WireError::UnknownClass { class } => CallError::UnknownClass(class),
            WireError::UnknownMethod { class, method } => {
                CallError::UnknownMethod { class, method }
            }
            WireError::SchemaMismatch { class, method } => {
                CallError::SchemaMismatch { class, method }
            }
            WireError::Overloaded => CallError::Overloaded { retry_after: None },
            WireError::OverloadedRetry { retry_after_ms } => CallError::Overloaded {
                retry_after: Some(std::time::Duration::from_millis(retry_after_ms)),
            },
            WireError::Timeout => CallError::Expired,
            WireError::ObjectReset { message } => CallError::ObjectReset(message),
            WireError::TooLarge { size, limit } => CallError::TooLarge { size, limit },
            WireError::Malformed { message } => CallError::Rejected(message),
            WireError::UnsupportedVersion { got } => {
                CallError::Rejected(format!("the host does not speak protocol version {got}"))
            }
            WireError::ShuttingDown => CallError::ShuttingDown,
            WireError::BadArguments { message } => CallError::BadArguments(message),
            WireError::Internal { message } => CallError::Internal(message),
            WireError::Indeterminate { message } => CallError::Indeterminate(message),
            WireError::Moved { owner } => CallError::Moved(owner),
            WireError::StorageFull { message } => CallError::StorageFull(message),
            WireError::RequestReused => CallError::RequestReused,
            WireError::CallCycle { chain } => CallError::CallCycle(chain),
            WireError::ObjectTooLarge { size, limit } => CallError::ObjectTooLarge { size, limit },
        }
    }
}
