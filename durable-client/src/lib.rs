//! The client side of durable: object ids, the wire protocol, the error type shared
//! by stubs and runtime, and the QUIC [`Client`] that generated stubs call through.
//!
//! A calling service links this crate plus the crate that declares the class (the
//! one with the `#[durable_object]` impl); `client.get::<Counter>("name")` returns
//! the generated `CounterClient` stub. See `docs/clients.md`.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

mod class;
mod client;
mod error;
mod id;
mod pipe;
mod retry;
pub mod wire;

pub use class::{MethodInfo, ObjectClass};
pub use client::{
    Client, ClientCert, ClientConfig, ConnectError, Follower, ObjectRef, StreamItem, Transport,
    TransportFuture,
};
pub use error::{CallError, NoError};
pub use id::{ObjectId, ParseIdError};
pub use retry::Retry;

/// The ALPN protocol id spoken by durable hosts and clients.
pub const ALPN: &[u8] = b"durable/1";

#[doc(hidden)]
pub mod __private {
    pub use crate::{CallError, MethodInfo, NoError, ObjectClass, ObjectId, ObjectRef};
}
