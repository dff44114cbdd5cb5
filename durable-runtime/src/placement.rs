//! The placement seam: before an object is activated, the host asks its
//! [`Placement`] whether it owns the object's id. A single host owns every id
//! ([`SingleHost`]); cluster mode will answer from etcd leases with the owner to
//! redirect to.

use durable_client::ObjectId;

/// Who serves an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This host: activate it here.
    Here,
    /// Another host, at this address: the caller should go there.
    Elsewhere(String),
}

/// Decides which host serves each object.
pub trait Placement: Send + Sync + 'static {
    /// Who serves object `id` of `class`.
    fn owner(&self, class: &str, id: ObjectId) -> Owner;
}

/// One host serving every object (the default).
#[derive(Debug, Default, Clone, Copy)]
pub struct SingleHost;

impl Placement for SingleHost {
    fn owner(&self, _class: &str, _id: ObjectId) -> Owner {
        Owner::Here
    }
}
