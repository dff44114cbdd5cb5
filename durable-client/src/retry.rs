//! [`Retry`]: the three retry classes every failed call falls into.

use serde::{Deserialize, Serialize};

/// Whether a failed call may have been applied: the three retry classes.
///
/// On the wire the class is implied by the `WireError` variant (see `docs/wire.md`);
/// [`CallError::retry`](crate::CallError::retry) and `WireError::retry` give it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Retry {
    /// Certainly not applied: the call never reached a turn, or its turn's writes were
    /// rolled back before anything could reach the log. Sending it again, under any
    /// request id, cannot apply it twice (it may of course fail again).
    NotApplied,
    /// Applied or not: the failure came after the call's batch may have reached the
    /// host log or the object's file (a commit or sync failure, a connection lost after
    /// sending, a deadline that passed while waiting). Retry only with the **same
    /// request id**: the host then answers with the first outcome if it was applied,
    /// and applies it once if it was not. The client's own resend does exactly that.
    Indeterminate,
    /// The method ran and returned its own error (or panicked); its writes were rolled
    /// back. Sending it again runs the method again.
    FailedInMethod,
}

impl Retry {
    /// The class's name in JSON errors and command output: `not_applied`,
    /// `indeterminate` or `failed_in_method`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Retry::NotApplied => "not_applied",
            Retry::Indeterminate => "indeterminate",
            Retry::FailedInMethod => "failed_in_method",
        }
    }
}
