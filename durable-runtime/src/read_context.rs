//! [`ReadContext`]: what a read-only handler sees of its object (read-only SQL and
//! key-value views over a connection), and the guard that makes a connection refuse
//! writes. The read path that runs these handlers lives beside the shards.

use crate::context::{Context, ListOptions, Sql, Storage};
use crate::db::RawGuard;
use crate::error::Error;
use durable_client::ObjectId;
use rusqlite::{Connection, Params, Row};
use serde::de::DeserializeOwned;
use std::cell::Cell;

/// What a read-only handler sees of its object: identity, the clock, and read-only
/// SQL and key-value views of the object's last committed, durable state. Nothing
/// written through it is possible in a read-only method: there is no `execute`, no
/// `put`, no alarms, and SQLite itself refuses any statement that does more than read
/// (a write, transaction control, `ATTACH`, a pragma that sets), also through
/// [`ReadSql::connection`]. (A writing turn lending its context with
/// [`Context::as_read`] keeps its connection writable.)
///
/// A `&self` remote method takes `ctx: &ReadContext`:
///
/// ```no_run
/// # use durable_runtime::{ReadContext, Error};
/// # struct Counter { value: i64 }
/// # impl Counter {
/// pub async fn get(&self, ctx: &ReadContext) -> Result<i64, Error> {
///     ctx.sql().query_row("SELECT value FROM counter WHERE id = 1", [], |r| r.get(0))
/// }
/// # }
/// ```
///
/// A `&mut self` method can lend its [`Context`] to helpers written for reads with
/// [`Context::as_read`].
#[repr(transparent)]
pub struct ReadContext {
    inner: Context,
}

impl std::fmt::Debug for ReadContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadContext")
            .field("class", &self.inner.class)
            .field("id", &self.inner.id)
            .field("name", &self.inner.name)
            .finish()
    }
}

impl Context {
    /// This context as the read-only view a `&self` method gets.
    pub fn as_read(&self) -> &ReadContext {
        // SAFETY: `ReadContext` is `repr(transparent)` over `Context`.
        unsafe { &*(self as *const Context as *const ReadContext) }
    }
}

impl ReadContext {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.inner.id
    }

    /// The name the object was first addressed by, if it was addressed by name.
    pub fn name(&self) -> Option<&str> {
        self.inner.name.as_deref()
    }

    /// The class name.
    pub fn class(&self) -> &'static str {
        self.inner.class
    }

    /// Now, as the host's clock says (a virtual clock under the test harness).
    pub fn now(&self) -> std::time::SystemTime {
        self.inner.now()
    }

    /// A bookmark for the object's state as of now (see [`Context::bookmark`]).
    pub fn bookmark(&self) -> Option<u64> {
        self.inner.bookmark()
    }

    /// The object's pending alarms, soonest first.
    pub fn pending_alarms(&self) -> Result<Vec<crate::alarms::PendingAlarm>, Error> {
        self.inner.pending_alarms()
    }

    /// The object's open WebSockets carrying `tag` (all with `None`), as the gateway
    /// holds them now.
    pub fn sockets(&self, tag: Option<&str>) -> Vec<crate::sockets::Socket> {
        self.inner.sockets(tag)
    }

    /// One of the object's open WebSockets.
    pub fn socket(&self, socket: crate::sockets::SocketId) -> Option<crate::sockets::Socket> {
        self.inner.socket(socket)
    }

    /// Where the object's stream `stream` stands (`None`: no item yet and not ended).
    pub fn stream_state(&self, stream: &str) -> Result<Option<crate::StreamState>, Error> {
        self.inner.stream_state(stream)
    }

    /// Read-only SQL on the object's database.
    pub fn sql(&self) -> ReadSql<'_> {
        ReadSql {
            sql: Sql {
                conn: &self.inner.conn,
                force_image: &self.inner.effects.ship_image,
                read_only: true,
            },
            raw_guard: &self.inner.raw_guard,
        }
    }

    /// Read-only key-value storage on the object's database.
    pub fn storage(&self) -> ReadStorage<'_> {
        ReadStorage {
            storage: Storage {
                conn: &self.inner.conn,
            },
        }
    }
}

/// Queries on the object's database, from a read-only handler: the same calls as
/// [`Sql`] without `execute`, `execute_batch` or `migrate`. Statements are prepared
/// once and cached per connection.
#[derive(Debug)]
pub struct ReadSql<'a> {
    sql: Sql<'a>,
    raw_guard: &'a Cell<RawGuard>,
}

impl ReadSql<'_> {
    /// Run a query expected to return exactly one row, mapping it with `f` (see
    /// [`Sql::query_row`]).
    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T, Error>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.sql.query_row(sql, params, f)
    }

    /// Run a query returning at most one row (see [`Sql::query_opt`]).
    pub fn query_opt<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<Option<T>, Error>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.sql.query_opt(sql, params, f)
    }

    /// Run a query and map every row with `f` (see [`Sql::query`]).
    pub fn query<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<Vec<T>, Error>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.sql.query(sql, params, f)
    }

    /// Run a query and map at most `max` rows with `f` (see [`Sql::query_limit`]:
    /// prefer it to a `LIMIT ?` parameter).
    pub fn query_limit<T, P, F>(
        &self,
        sql: &str,
        params: P,
        max: usize,
        f: F,
    ) -> Result<Vec<T>, Error>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.sql.query_limit(sql, params, max, f)
    }

    /// Run a query and turn every row into a `T` by column name (see
    /// [`Sql::query_as`]).
    pub fn query_as<T: DeserializeOwned, P: Params>(
        &self,
        sql: &str,
        params: P,
    ) -> Result<Vec<T>, Error> {
        self.sql.query_as(sql, params)
    }

    /// Like [`ReadSql::query_as`] for a query returning at most one row.
    pub fn query_opt_as<T: DeserializeOwned, P: Params>(
        &self,
        sql: &str,
        params: P,
    ) -> Result<Option<T>, Error> {
        self.sql.query_opt_as(sql, params)
    }

    /// The underlying connection, for what this API does not cover. In a read-only
    /// method it is read-only: SQLite refuses any write through it ("not authorized",
    /// or "attempt to write a readonly database" for a statement prepared earlier).
    pub fn connection(&self) -> &Connection {
        if self.raw_guard.get() == RawGuard::Armed {
            // The writer's connection, lent to a read-only method running as a turn:
            // its statements prepared before the method are not checked again.
            self.sql.conn.read_scope(false);
            if let Err(e) = self.sql.conn.pragma_update(None, "query_only", true) {
                tracing::warn!(error = %e, "could not make a connection query-only");
            }
            self.sql.conn.read_scope(true);
            self.raw_guard.set(RawGuard::Set);
        }
        self.sql.conn
    }
}

/// Key-value reads on the object's database, from a read-only handler: the reads of
/// [`Storage`].
#[derive(Debug)]
pub struct ReadStorage<'a> {
    storage: Storage<'a>,
}

impl ReadStorage<'_> {
    /// The value under `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        self.storage.get(key)
    }

    /// Get many keys at once; missing keys are left out.
    pub fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<(String, T)>, Error> {
        self.storage.get_many(keys)
    }

    /// Entries in key order, filtered by `opts` (see [`Storage::list`]).
    pub fn list<T: DeserializeOwned>(
        &self,
        opts: &ListOptions<'_>,
    ) -> Result<Vec<(String, T)>, Error> {
        self.storage.list(opts)
    }
}

/// The read-only turn's scope on `ctx`: arms the guard, and clears `query_only` when
/// dropped if it was set (also if the method panics or its future is dropped).
pub(crate) struct ReadTurnScope<'a>(&'a Context);

impl<'a> ReadTurnScope<'a> {
    pub(crate) fn enter(ctx: &'a Context) -> Self {
        ctx.raw_guard.set(RawGuard::Armed);
        ctx.conn.read_scope(true);
        ReadTurnScope(ctx)
    }
}

impl Drop for ReadTurnScope<'_> {
    fn drop(&mut self) {
        self.0.conn.read_scope(false);
        if self.0.raw_guard.replace(RawGuard::Off) == RawGuard::Set {
            if let Err(e) = self.0.conn.pragma_update(None, "query_only", false) {
                tracing::error!(error = %e, "could not make a connection writable again");
            }
        }
    }
}
