//! An append-only event log (seed 001: event sourcing, audit trails): one object per
//! stream, events numbered from 1 in the order the object accepted them, read back
//! by range. Appends are idempotent per client-chosen event id, so a producer that
//! retries after a lost reply does not append twice even with a new request id.

use durable::{durable_object, Context, Error, ErrorKind, ReadContext};
use serde::{Deserialize, Serialize};

/// The most events one read returns.
pub const MAX_READ: u32 = 1000;

/// Longest event body, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// One stream of events.
pub struct EventLog {
    last: u64,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Its position in the stream (from 1).
    pub seq: u64,
    /// The producer's id for it (appending the same id again is a no-op).
    pub event_id: String,
    /// What happened.
    pub body: String,
    /// When the object accepted it (ms since the epoch).
    pub at_ms: u64,
}

#[durable_object]
impl EventLog {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        let sql = ctx.sql();
        sql.migrate(&["CREATE TABLE events(seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, body TEXT NOT NULL, at_ms INTEGER NOT NULL)"])?;
        let last: i64 =
            sql.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
        Ok(EventLog { last: last as u64 })
    }

    /// Append an event; returns its position. Appending an `event_id` the stream
    /// already holds returns that event's position and appends nothing.
    pub async fn append(
        &mut self,
        ctx: &mut Context,
        event_id: String,
        body: String,
    ) -> Result<u64, Error> {
        if event_id.is_empty() || event_id.len() > 256 {
            return Err(Error::new(
                ErrorKind::Invalid,
                "an event id has 1 to 256 bytes",
            ));
        }
        if body.len() > MAX_BODY {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!("an event body has at most {MAX_BODY} bytes"),
            ));
        }
        let sql = ctx.sql();
        if let Some(seq) = sql.query_opt(
            "SELECT seq FROM events WHERE event_id = ?1",
            [&event_id],
            |r| r.get::<_, i64>(0),
        )? {
            return Ok(seq as u64);
        }
        let seq = self.last + 1;
        let at_ms = crate::time::millis(ctx.now());
        ctx.sql().execute(
            "INSERT INTO events(seq, event_id, body, at_ms) VALUES (?1, ?2, ?3, ?4)",
            durable::rusqlite::params![seq as i64, event_id, body, at_ms as i64],
        )?;
        self.last = seq;
        Ok(seq)
    }

    /// Events with positions in `from..=to` (`to` 0: up to the last), oldest first,
    /// at most `limit` (≤ [`MAX_READ`]). Read on from the last position returned + 1.
    pub async fn read(
        &self,
        ctx: &ReadContext,
        from: u64,
        to: u64,
        limit: u32,
    ) -> Result<Vec<Event>, Error> {
        let to = if to == 0 {
            self.last
        } else {
            to.min(self.last)
        };
        let limit = limit.clamp(1, MAX_READ);
        ctx.sql().query_limit(
            "SELECT seq, event_id, body, at_ms FROM events WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
            durable::rusqlite::params![from as i64, to as i64],
            limit as usize,
            |r| {
                Ok(Event {
                    seq: r.get::<_, i64>(0)? as u64,
                    event_id: r.get(1)?,
                    body: r.get(2)?,
                    at_ms: r.get::<_, i64>(3)? as u64,
                })
            },
        )
    }

    /// The position of the last event (0: none yet).
    pub async fn last(&self, _ctx: &ReadContext) -> u64 {
        self.last
    }
}
