//! **durable**: Durable Objects for any machine.
//!
//! Put `#[durable_object]` on a struct's `impl` block and every object of that class
//! gets exactly one live instance that writes, handles one call at a time (read-only
//! methods run beside it, on a reader of its committed state), owns a private SQLite
//! database whose writes are durable before anyone hears of them, and is called by
//! other services through a generated, typed client stub over QUIC, or by curl and
//! browsers through the host's HTTP/JSON gateway (`serve --http`).
//!
//! ```no_run
//! use durable::{durable_object, Context, Error};
//!
//! pub struct Counter;
//!
//! #[durable_object]
//! impl Counter {
//!     fn activate(ctx: &mut Context) -> Result<Self, Error> {
//!         ctx.sql().migrate(&["CREATE TABLE counter(v INTEGER NOT NULL)"])?;
//!         Ok(Counter)
//!     }
//!
//!     pub async fn increment(&mut self, ctx: &mut Context, by: i64) -> Result<i64, Error> {
//!         let v: i64 = ctx.storage().get("v")?.unwrap_or(0) + by;
//!         ctx.storage().put("v", &v)?;
//!         Ok(v)
//!     }
//! }
//!
//! // A host:   durable::cli::main(|host| host.register::<Counter>())
//! // A caller: client.get::<Counter>("hits").increment(1).await?
//! # fn main() {}
//! ```
//!
//! An alarm handler and the typed helpers the macro generates for it:
//!
//! ```no_run
//! use durable::{alarm, durable_object, Context, Error};
//! use std::time::Duration;
//!
//! pub struct Reservation;
//!
//! #[durable_object]
//! impl Reservation {
//!     fn activate(_ctx: &mut Context) -> Result<Self, Error> {
//!         Ok(Reservation)
//!     }
//!
//!     pub async fn hold(&mut self, ctx: &mut Context, seat: u32, user: String) -> Result<(), Error> {
//!         Self::schedule_release(ctx, Duration::from_secs(600), &seat.to_string(), seat, user)
//!     }
//!
//!     #[alarm]
//!     async fn release(&mut self, _ctx: &mut Context, _seat: u32, _user: String) -> Result<(), Error> {
//!         Ok(())
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! See the `docs/` folder of the repository for one page per concept.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

pub use durable_client::{
    wire, CallError, Client, ClientCert, ClientConfig, ConnectError, Follower, MethodInfo, NoError,
    ObjectClass, ObjectId, ObjectRef, Retry, StreamItem, Transport, TransportFuture, ALPN,
};
pub use durable_macros::{alarm, durable_object, on_close, on_connect, on_message};
pub use durable_runtime::{
    alarms, clock, feed, restore, testing, AlarmConfig, Allocator, Clock, DurabilityMode,
    LogConfig, PendingAlarm, VirtualClock, When,
};
pub use durable_runtime::{
    cli, http, list_objects, rusqlite, Caller, Context, Deny, Error, ErrorKind, Host, HostError,
    Hosted, HttpAuth, JsonArg, JsonArgs, JsonMethod, Limits, ListOptions, ReadContext, ReadSql,
    ReadStorage, RunningHost, Sql, Storage, DEFAULT_MAX_OBJECT_BYTES,
};
pub use durable_runtime::{valid_stream_name, StreamState, MAX_STREAM_ITEM, MAX_STREAM_NAME};
pub use durable_runtime::{
    CallerRate, Lanes, LogRecord, Owner, Placement, RecordKind, RecoveryReport, SingleHost,
    SystemClock, TailProblem, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
pub use durable_runtime::{
    FromWsMessage, Socket, SocketHandlers, SocketId, WsMessage, CLOSE_INTERNAL, CLOSE_NO_PONG,
    CLOSE_REFUSED, CLOSE_SLOW_CLIENT, CLOSE_TRY_AGAIN, DEFAULT_MAX_SOCKETS, MAX_ATTACHMENT_BYTES,
    MAX_AUTO_RESPONSE_BYTES, MAX_TAGS, MAX_TAG_BYTES, SEND_QUEUE,
};

#[doc(hidden)]
pub mod __private {
    pub use durable_client::__private::*;
    pub use durable_runtime::__private::*;
}
