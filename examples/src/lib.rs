//! Runnable applications built on durable, one per use case in the seed articles.
//! Each class lives in its own module; [`register_all`] serves them all from the
//! `host` binary (with the web pages of [`web::serve_pages`]), and each has a client
//! binary of its own.
#![warn(missing_docs, rust_2018_idioms)]

pub mod ai;
pub mod auction;
pub mod chat;
pub mod cli;
pub mod counter;
pub mod doc;
pub mod eventlog;
pub mod lock;
pub mod order;
pub mod ratelimit;
pub mod reservation;
pub mod session;
pub mod subscription;
pub mod twin;
pub mod web;

/// Register every example class on a host.
pub fn register_all(host: durable::Host) -> durable::Host {
    let host = ai::register(host);
    host.register::<counter::Counter>()
        .register::<reservation::Flight>()
        .register::<subscription::Subscription>()
        .register::<session::SessionStore>()
        .register::<ratelimit::RateLimiter>()
        .register::<auction::Auction>()
        .register::<chat::ChatRoom>()
        .register::<eventlog::EventLog>()
        .register::<lock::LockTable>()
        .register::<twin::DeviceTwin>()
        .register::<doc::Document>()
        .register::<order::Order>()
        .register::<order::Inventory>()
        .register::<order::Wallet>()
}

/// Unsigned integers in SQLite, which stores signed 64-bit integers (rusqlite maps
/// `u64` only with its `fallible_uint` feature, which this workspace does not enable).
pub(crate) mod sql {
    use durable::rusqlite::{self, Row};

    /// `v` as an SQLite integer. Callers keep values at most `i64::MAX` (times in
    /// milliseconds do; amounts are checked); larger ones saturate.
    pub(crate) fn int(v: u64) -> i64 {
        i64::try_from(v).unwrap_or(i64::MAX)
    }

    /// Column `idx` of `row` as a `u64` (an error if negative).
    pub(crate) fn uint(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
        let v: i64 = row.get(idx)?;
        u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
    }
}

/// Instants as the examples store them: whole milliseconds since the Unix epoch, in
/// SQLite `INTEGER` columns and alarm due times alike.
pub(crate) mod time {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// Milliseconds since the Unix epoch of `t` (0 before the epoch).
    pub(crate) fn millis(t: SystemTime) -> u64 {
        t.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The instant `ms` milliseconds after the Unix epoch.
    pub(crate) fn instant(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }
}
