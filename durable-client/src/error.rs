//! [`CallError`]: what a stub call returns when it does not return the method's value,
//! keeping the method's own error type apart from framework errors.

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
/// variant is the framework's. [`CallError::is_retry_safe`] tells whether the call
/// was certainly not applied, so that issuing it again cannot apply it twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError<E = NoError> {
    /// The method returned `Err(e)`; its writes were rolled back.
    #[error("the method returned an error: {0}")]
    Application(E),
    /// The object's queue was full; nothing was applied.
    #[error("the object is overloaded (its queue is full); nothing was applied")]
    Overloaded,
    /// The deadline passed. If the host had not started the call it was not applied;
    /// otherwise it may have been. The stub retries with the same request id before
    /// giving up, so the call is applied at most once.
    #[error("the call's deadline passed")]
    Timeout,
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
    /// The host is shutting down; nothing was applied.
    #[error("the host is shutting down")]
    ShuttingDown,
    /// A message could not be decoded (a protocol or version problem).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The host failed internally (for example storage I/O); the call was rolled back.
    #[error("host error: {0}")]
    Internal(String),
}

impl<E> CallError<E> {
    /// True when the call was certainly not applied, so sending it again is safe.
    pub fn is_retry_safe(&self) -> bool {
        matches!(
            self,
            CallError::Overloaded
                | CallError::ShuttingDown
                | CallError::ObjectReset(_)
                | CallError::Internal(_)
                | CallError::Application(_)
        )
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
            CallError::Overloaded => CallError::Overloaded,
            CallError::Timeout => CallError::Timeout,
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
            CallError::Protocol(m) => CallError::Protocol(m),
            CallError::Internal(m) => CallError::Internal(m),
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
            WireError::Overloaded => CallError::Overloaded,
            WireError::Timeout => CallError::Timeout,
            WireError::ObjectReset { message } => CallError::ObjectReset(message),
            WireError::TooLarge { size, limit } => CallError::TooLarge { size, limit },
            WireError::Malformed { message } => CallError::Protocol(message),
            WireError::UnsupportedVersion { got } => {
                CallError::Protocol(format!("host does not speak protocol version {got}"))
            }
            WireError::ShuttingDown => CallError::ShuttingDown,
            WireError::BadArguments { message } => {
                CallError::Protocol(format!("bad arguments: {message}"))
            }
            WireError::Internal { message } => CallError::Internal(message),
        }
    }
}
