//! The error types of the runtime: [`Error`], a serializable error that object
//! methods can return and that storage calls produce, and [`HostError`] for
//! starting and running a host.

use serde::{Deserialize, Serialize};
use std::fmt;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// SQLite or storage I/O failed.
    Storage,
    /// A value could not be encoded or decoded.
    Codec,
    /// A key, value or object exceeded a size limit.
    LimitExceeded,
    /// The input was invalid.
    Invalid,
    /// Something asked for was not there.
    NotFound,
    /// Anything else (application-defined).
    Other,
    /// A call to another object failed (see the message; from `CallError` by `?`).
    Call,
    /// A call to another object would have closed a cycle (A calls B calls A); the
    /// message names the chain.
    CallCycle,
}

/// A serializable error with a kind and a message.
///
/// Storage calls return it, and methods may use it as their own error type: it
/// travels to the caller intact as `CallError::Application(Error)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
        }
    }

    /// An application error with `message`.
    pub fn msg(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Other, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e {
            rusqlite::Error::QueryReturnedNoRows => {
                Error::new(ErrorKind::NotFound, "query returned no rows")
            }
            other => Error::new(ErrorKind::Storage, other.to_string()),
        }
    }
}

impl From<postcard::Error> for Error {
    fn from(e: postcard::Error) -> Self {
        Error::new(ErrorKind::Codec, e.to_string())
    }
}

/// A failed call to another object, as the calling method's own error (so that `?`
/// works on a stub's result in a method returning `Result<_, Error>`): the callee's
/// own [`Error`] passes through intact (so a cycle found further down the chain stays
/// [`ErrorKind::CallCycle`]); a cycle is [`ErrorKind::CallCycle`]; anything else
/// [`ErrorKind::Call`] with the call error's text.
impl<E: fmt::Display + 'static> From<durable_client::CallError<E>> for Error {
    fn from(e: durable_client::CallError<E>) -> Self {
        if let durable_client::CallError::Application(inner) = &e {
            if let Some(own) = (inner as &dyn std::any::Any).downcast_ref::<Error>() {
                return own.clone();
            }
        }
        let kind = match &e {
            durable_client::CallError::CallCycle(_) => ErrorKind::CallCycle,
            _ => ErrorKind::Call,
        };
        Error::new(kind, e.to_string())
    }
}

/// Why a host could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// File-system or socket I/O.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Generating or loading TLS material failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The builder was given an invalid setting.
    #[error("configuration: {0}")]
    Config(String),
    /// A storage operation on a data directory failed (the alarm index, for one).
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
}

impl HostError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        HostError::Io {
            context: context.into(),
            source,
        }
    }
}

#[cfg(test)]
mod wire_form {
    use super::*;

    /// docs/wire.md spells these bytes out for clients in other languages.
    #[test]
    fn the_documented_encoding_of_error_holds() {
        let e = Error::new(ErrorKind::NotFound, "no");
        assert_eq!(postcard::to_stdvec(&e).unwrap(), [0x04, 0x02, b'n', b'o']);
        let kinds = [
            ErrorKind::Storage,
            ErrorKind::Codec,
            ErrorKind::LimitExceeded,
            ErrorKind::Invalid,
            ErrorKind::NotFound,
            ErrorKind::Other,
            ErrorKind::Call,
            ErrorKind::CallCycle,
        ];
        for (i, k) in kinds.into_iter().enumerate() {
            assert_eq!(postcard::to_stdvec(&k).unwrap(), [i as u8]);
        }
        // Signed integers are zig-zag varints, in replies as in arguments.
        assert_eq!(postcard::to_stdvec(&5i64).unwrap(), [0x0a]);
        assert_eq!(postcard::to_stdvec(&-1i64).unwrap(), [0x01]);
    }
}
