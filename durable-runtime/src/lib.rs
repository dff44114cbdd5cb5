//! Hosting for durable objects: activation, strict one-at-a-time turns with group
//! commit, per-object SQLite storage, the output gate, the QUIC server, the HTTP/JSON
//! gateway, and the operator CLI.
//!
//! Most applications depend on the `durable` facade crate instead, which re-exports
//! this crate, the client and the `#[durable_object]` macro.
#![warn(missing_docs, unreachable_pub, rust_2018_idioms)]

mod admission;
pub mod alarms;
mod allocator;
mod answer;
mod answering;
mod calls;
mod capture;
mod catalog;
mod chain;
mod class;
pub mod cli;
pub mod clock;
mod context;
mod core;
mod db;
mod durability;
mod error;
pub mod feed;
mod file_copy;
mod file_locks;
mod files;
mod follow;
mod gateway;
mod host;
mod host_db;
mod log;
mod ops;
mod outgoing;
mod pipe;
mod placement;
mod read_context;
mod reads;
mod record;
pub mod restore;
mod restore_target;
mod running;
mod server;
mod shard;
mod shard_config;
mod size_check;
mod sockets;
mod spares;
mod sqlite_memory;
mod store;
mod streams;
mod tables;
mod telemetry;
pub mod testing;
mod tls;
mod wal_index;

pub use admission::CallerRate;
pub use alarms::{AlarmConfig, PendingAlarm, When};
pub use allocator::Allocator;
pub use calls::Caller;
pub use class::{ActivateError, BoxTurn, Hosted, JsonArg, JsonArgs, JsonMethod, TurnOutcome};
pub use clock::{Clock, SystemClock, VirtualClock};
pub use context::{Context, ListOptions, Sql, Storage, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use error::{Error, ErrorKind, HostError};
pub use gateway::{Deny, HttpAuth};
pub use host::{DurabilityMode, Host, Lanes, Limits, RunningHost, DEFAULT_MAX_OBJECT_BYTES};
pub use log::recovery::RecoveryReport;
pub use log::{LogConfig, LogRecord, RecordKind, TailProblem};
pub use placement::{Owner, Placement, SingleHost};
pub use read_context::{ReadContext, ReadSql, ReadStorage};
pub use sockets::{
    FromWsMessage, Socket, SocketHandlers, SocketId, WsMessage, CLOSE_INTERNAL, CLOSE_NO_PONG,
    CLOSE_REFUSED, CLOSE_SLOW_CLIENT, CLOSE_TRY_AGAIN, DEFAULT_MAX_SOCKETS, MAX_ATTACHMENT_BYTES,
    MAX_AUTO_RESPONSE_BYTES, MAX_TAGS, MAX_TAG_BYTES, SEND_QUEUE,
};
pub use store::list_objects;
pub use streams::{valid_stream_name, StreamState, MAX_STREAM_ITEM, MAX_STREAM_NAME};

/// Re-exported so that applications use the same SQLite types (`params!`, `Row`, ...).
pub use rusqlite;

/// Re-exported for HTTP auth checks ([`Host::http_auth`] gets an [`http::HeaderMap`]).
pub use http;

/// The host log's direct writer, for `durable-bench`'s `log_sync` probe (not an API).
#[doc(hidden)]
pub mod __bench {
    pub use crate::log::direct::DirectAppender;
}

#[doc(hidden)]
pub mod __private {
    pub use crate::alarms::When;
    pub use crate::class::{
        decode_args, encode_json_args, encode_result, encode_value, json_arg, no_json_error,
        postcard_to_json, ActivateError, BoxTurn, Hosted, JsonArg, JsonArgs, JsonMethod,
        TurnOutcome,
    };
    pub use crate::context::Context;
    pub use crate::error::Error;
    pub use crate::read_context::ReadContext;
    pub use crate::sockets::{FromWsMessage, SocketEvent, SocketHandlers};
}
