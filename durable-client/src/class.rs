//! The description of a class that both sides share: its name, its remote methods
//! with their schema fingerprints, and the stub type that calls it.

use crate::client::ObjectRef;

/// A remote method of a class, as the macro describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodInfo {
    /// The method's name, as sent on the wire.
    pub name: &'static str,
    /// FNV-1a 64 over [`MethodInfo::signature`]. A client and host that disagree
    /// get [`CallError::SchemaMismatch`](crate::CallError::SchemaMismatch).
    pub fingerprint: u64,
    /// The canonical signature, `name(arg types,...)->return type`, each type
    /// without spaces and each path cut to its last segment
    /// (`increment(i64)->Result<i64,Error>`; see `docs/wire.md`).
    pub signature: &'static str,
}

/// A class of durable objects. Implemented by `#[durable_object]`; not by hand.
pub trait ObjectClass: 'static {
    /// The class name on the wire and on disk.
    const CLASS: &'static str;
    /// The remote methods, in declaration order.
    const METHODS: &'static [MethodInfo];
    /// The generated typed client stub (`{Class}Client`).
    type Client: From<ObjectRef>;
}
