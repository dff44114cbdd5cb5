//! [`Context`]: what a turn sees of its object — identity, synchronous SQL
//! ([`Sql`]) and key-value storage ([`Storage`]) on the object's own SQLite
//! database, all inside the turn's transaction.

use crate::db::{Db, Statements};
use crate::error::{Error, ErrorKind};
use crate::tables::{self, Lazy};
use durable_client::ObjectId;
use rusqlite::{Connection, OptionalExtension, Params, Row};
use serde::{de::DeserializeOwned, Serialize};

/// Largest key accepted by [`Storage`], in bytes.
pub const MAX_KEY_BYTES: usize = 2048;
/// Largest value accepted by [`Storage`], in bytes (encoded).
pub const MAX_VALUE_BYTES: usize = 2 << 20;

/// The object a turn runs on, and its storage.
pub struct Context {
    /// Shared with the shard, which commits the batch so far while a turn waits on
    /// another object (see [`crate::outgoing`]).
    pub(crate) conn: std::rc::Rc<crate::db::Db>,
    pub(crate) class: &'static str,
    pub(crate) id: ObjectId,
    pub(crate) name: Option<String>,
    pub(crate) bookmarks: Option<std::sync::Arc<dyn Fn() -> u64 + Send + Sync>>,
    pub(crate) clock: std::sync::Arc<dyn crate::clock::Clock>,
    pub(crate) alarm_attempt: Option<u32>,
    /// What the running turn asked for beyond its writes (see [`crate::core::outbox`]).
    pub(crate) effects: crate::core::outbox::Effects,
    /// Open [`Context::transaction`]s (for the savepoints' names).
    pub(crate) savepoints: u32,
    /// The last exact page count of the size limit check (see [`crate::size_check`]).
    pub(crate) size_counted: std::cell::Cell<Option<crate::size_check::Counted>>,
    /// The host's WebSockets (set by the shard; `None` outside a host).
    pub(crate) sockets: Option<std::sync::Arc<crate::sockets::Registry>>,
    /// What the running turn's calls to other objects need (set by the shard for
    /// each turn; `None` in activation).
    pub(crate) turn: Option<crate::outgoing::TurnInfo>,
    /// Whether a read-only method running as a turn on this (writable) connection has
    /// been lent the raw connection (see [`crate::db::RawGuard`]).
    pub(crate) raw_guard: std::cell::Cell<crate::db::RawGuard>,
}

impl Context {
    /// A context on `conn` for object `id` of `class` (first addressed as `name`), with
    /// the system clock and nothing else attached: the shard sets the rest.
    pub(crate) fn new(
        conn: Connection,
        class: &'static str,
        id: ObjectId,
        name: Option<String>,
    ) -> Context {
        Context {
            conn: std::rc::Rc::new(crate::db::Db::new(conn)),
            class,
            id,
            name,
            bookmarks: None,
            clock: std::sync::Arc::new(crate::clock::SystemClock),
            alarm_attempt: None,
            effects: Default::default(),
            savepoints: 0,
            size_counted: std::cell::Cell::new(None),
            sockets: None,
            turn: None,
            raw_guard: Default::default(),
        }
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("class", &self.class)
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl Context {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The name the object was first addressed by, if it was addressed by name.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The class name.
    pub fn class(&self) -> &'static str {
        self.class
    }

    /// A bookmark for the object's state as of now (an lsn of the host log): pass it to
    /// [`Context::restore_to`] later, or to `host restore-object --to`. `None` when the
    /// host runs without its log.
    pub fn bookmark(&self) -> Option<u64> {
        self.bookmarks.as_ref().map(|f| f())
    }

    /// Restore this object to the state it had at `bookmark`, once the current turn has
    /// committed: the object is then reset and re-activated from the restored state.
    /// Needs the host log with retention on (the default). If the restore fails, the
    /// object keeps its state and the failure is logged. If the turn returns `Err` or
    /// panics, the request is dropped with the turn's writes.
    pub fn restore_to(&mut self, bookmark: u64) {
        self.effects.restore = Some(crate::restore_target::RestoreTarget::Bookmark(bookmark));
    }

    /// A typed stub for object `name` of class `C` on this host, for calls from this
    /// turn (`ctx.object::<Inventory>("sku-1").reserve(3).await`).
    ///
    /// Each call first makes the writes this object made so far durable (they are
    /// committed as a batch of their own): the callee never acts on a write the caller
    /// could still lose. So an outgoing call is a commit point of the turn: if the
    /// method later returns `Err` or panics, only the writes after its last outgoing
    /// call are rolled back. While the turn waits, no other turn enters this object
    /// (a call back into it, directly or through others, fails at once with
    /// `CallError::CallCycle`, unless the method called is read-only: those run beside
    /// the waiting turn, on a reader that sees the writes committed before this call;
    /// under `--durability fsync` they queue as turns, so they fail too). The call
    /// carries what is left of this turn's deadline, and a request id derived from this
    /// turn's own, so that a turn run again after a crash (its caller resent its
    /// request id) does not apply its calls twice.
    ///
    /// The stub works only during this turn; outside a host's turn (in activation)
    /// its calls fail with `CallError::Internal`.
    pub fn object<C: durable_client::ObjectClass>(&self, name: &str) -> C::Client {
        self.stub(crate::outgoing::Target::Local).get::<C>(name)
    }

    /// Like [`Context::object`], addressing the object by id.
    pub fn object_by_id<C: durable_client::ObjectClass>(&self, id: ObjectId) -> C::Client {
        self.stub(crate::outgoing::Target::Local).get_by_id::<C>(id)
    }

    /// Like [`Context::object`], for object `name` of class `C` served by another
    /// host, reached through `client` (connected to that host). The call carries the
    /// chain of waiting objects across hosts (a cycle through several hosts is found
    /// too) and this turn's tracing span id.
    pub fn object_via<C: durable_client::ObjectClass>(
        &self,
        client: &durable_client::Client,
        name: &str,
    ) -> C::Client {
        self.stub(crate::outgoing::Target::Remote(client.clone()))
            .get::<C>(name)
    }

    fn stub(&self, target: crate::outgoing::Target) -> durable_client::Client {
        let mut config = durable_client::ClientConfig::new(
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            Vec::new(),
            String::new(),
        );
        if let crate::outgoing::Target::Remote(client) = &target {
            config.deadline = client.config().deadline;
        }
        durable_client::Client::over(
            std::sync::Arc::new(crate::outgoing::TurnTransport {
                link: self.turn.as_ref().map(|t| {
                    t.link(durable_client::wire::ChainLink {
                        class: self.class.to_owned(),
                        object: self.id,
                        name: self.name.clone(),
                    })
                }),
                target,
            }),
            config,
        )
    }

    /// Now, as the host's clock says (a virtual clock under the test harness).
    pub fn now(&self) -> std::time::SystemTime {
        crate::clock::time_of(self.clock.now_ms())
    }

    /// In an alarm handler, which attempt this is (1 for the first); `None` elsewhere.
    pub fn alarm_attempt(&self) -> Option<u32> {
        self.alarm_attempt
    }

    /// Schedule alarm handler `name` under `key` (replacing a pending one with the
    /// same name and key), part of the current turn. Generated `schedule_*` helpers
    /// call this with typed arguments; prefer them.
    pub fn schedule_alarm<A: Serialize + ?Sized>(
        &mut self,
        name: &str,
        key: &str,
        when: crate::alarms::When,
        every: Option<std::time::Duration>,
        args: &A,
    ) -> Result<(), Error> {
        check_key(key)?;
        let due = when.due_ms(self.clock.now_us());
        if every.is_some_and(|p| p.is_zero()) {
            return Err(Error::new(
                ErrorKind::Invalid,
                "an alarm period must be longer than zero",
            ));
        }
        let args = postcard::to_stdvec(args)?;
        tables::ensure_table(&self.conn, Lazy::Alarms)?;
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO _durable_alarms(name, key, due_ms, every_ms, args, attempt) VALUES (?1, ?2, ?3, ?4, ?5, 0)",
            )?
            .execute(rusqlite::params![
                name,
                key,
                due as i64,
                every.map(|p| p.as_millis() as i64),
                args
            ])?;
        self.effects.alarms_changed = true;
        Ok(())
    }

    /// Cancel the pending alarm `name` under `key`; returns whether one was pending.
    pub fn cancel_alarm(&mut self, name: &str, key: &str) -> Result<bool, Error> {
        if !tables::has_table(&self.conn, Lazy::Alarms)? {
            return Ok(false);
        }
        let n = self
            .conn
            .prepare_cached("DELETE FROM _durable_alarms WHERE name = ?1 AND key = ?2")?
            .execute([name, key])?;
        self.effects.alarms_changed = true;
        Ok(n > 0)
    }

    /// Erase the object: drop every table it created, every key-value entry, every
    /// pending alarm, every stream and its schema version, inside the current turn. When the turn
    /// commits, the in-memory instance is dropped; the next call activates a fresh one
    /// (whose constructor runs its migrations again).
    pub fn delete_all(&mut self) -> Result<(), Error> {
        let streams = crate::streams::deleted_all(&self.conn)?;
        drop_users_schema(&self.conn)?;
        for table in Lazy::ALL {
            if tables::has_table(&self.conn, table)? {
                self.conn.execute_batch(table.clear())?;
            }
        }
        self.effects.streams.extend(streams);
        self.effects.alarms_changed = true;
        self.effects.reset_instance = true;
        self.effects.ship_image.set(true);
        Ok(())
    }

    /// The object's pending alarms, soonest first.
    pub fn pending_alarms(&self) -> Result<Vec<crate::alarms::PendingAlarm>, Error> {
        Ok(crate::alarms::pending(&self.conn)?)
    }

    /// Synchronous SQL on the object's database, inside the current turn.
    pub fn sql(&mut self) -> Sql<'_> {
        Sql {
            conn: &self.conn,
            force_image: &self.effects.ship_image,
            read_only: false,
        }
    }

    /// Key-value storage of serde values on the same database, inside the current turn.
    pub fn storage(&mut self) -> Storage<'_> {
        Storage { conn: &self.conn }
    }

    /// Run `f` as a sub-unit of the turn that can fail alone: if it returns `Err`,
    /// everything it did is undone (its SQL and key-value writes, alarms it set or
    /// cancelled, socket messages it sent, stream items it pushed, a restore or `delete_all` it asked for)
    /// and the error is returned to the method, which may go on and still commit the
    /// rest of the turn; if it returns `Ok`, its writes stay part of the turn (and
    /// are still undone if the turn itself fails). Transactions nest. Implemented
    /// with an SQLite savepoint.
    ///
    /// ```no_run
    /// # use durable_runtime::{Context, Error};
    /// # fn example(ctx: &mut Context) -> Result<(), Error> {
    /// let reserved: Result<(), Error> = ctx.transaction(|ctx| {
    ///     ctx.sql().execute("UPDATE stock SET n = n - 1 WHERE item = 'a'", [])?;
    ///     ctx.sql().execute("INSERT INTO holds(item) VALUES ('a')", [])?;
    ///     Ok(())
    /// });
    /// if reserved.is_err() {
    ///     ctx.sql().execute("INSERT INTO waitlist(item) VALUES ('a')", [])?;
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn transaction<T, E: From<Error>>(
        &mut self,
        f: impl FnOnce(&mut Context) -> Result<T, E>,
    ) -> Result<T, E> {
        self.savepoints += 1;
        let name = format!("durable_tx_{}", self.savepoints);
        let started = self
            .conn
            .execute_batch(&format!("SAVEPOINT {name}"))
            .map_err(Error::from);
        if let Err(e) = started {
            self.savepoints -= 1;
            return Err(e.into());
        }
        let sockets = self.effects.sockets.len();
        let streams = self.effects.streams.len();
        let restore = self.effects.restore;
        let reset_instance = self.effects.reset_instance;
        let result = f(self);
        self.savepoints -= 1;
        let end = match &result {
            Ok(_) => format!("RELEASE {name}"),
            Err(_) => {
                self.effects.sockets.truncate(sockets);
                self.effects.streams.truncate(streams);
                self.effects.restore = restore;
                self.effects.reset_instance = reset_instance;
                // Alarms may have changed and back: recompute the due index anyway.
                self.effects.alarms_changed = true;
                format!("ROLLBACK TO {name}; RELEASE {name}")
            }
        };
        match self.conn.execute_batch(&end) {
            Ok(()) => result,
            // The savepoint could not be closed: fail the whole turn rather than
            // leave part of it applied.
            Err(e) => Err(Error::from(e).into()),
        }
    }
}

/// One row as a `T`, through a JSON object of its columns by name.
fn row_as<T: DeserializeOwned>(names: &[String], row: &Row<'_>) -> Result<T, Error> {
    use rusqlite::types::ValueRef;
    use serde_json::Value;
    let mut object = serde_json::Map::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let value = match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::from(n),
            ValueRef::Real(f) => Value::from(f),
            ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
            ValueRef::Blob(b) => Value::from(b.to_vec()),
        };
        object.insert(name.clone(), value);
    }
    serde_json::from_value(Value::Object(object)).map_err(|e| {
        Error::new(
            ErrorKind::Codec,
            format!(
                "a row with columns ({}) does not fit: {e}",
                names.join(", ")
            ),
        )
    })
}

/// Stores the schema version `migrate` brought the file to.
pub(crate) const WRITE_SCHEMA_VERSION: &str =
    "INSERT OR REPLACE INTO _durable_meta(key, value) VALUES ('schema_version', ?1)";

/// Drop every table, view and trigger of the user's (the runtime's own stay), the
/// stored schema version and the digest of the migrations the file was made with:
/// what `delete_all` erases of the schema, and what takes a new object's file made
/// with other migrations back to the template's.
fn drop_users_schema(conn: &crate::db::Db) -> rusqlite::Result<()> {
    let objects: Vec<(String, String)> = conn
        .prepare(
            "SELECT type, name FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%' AND name NOT LIKE '\\_durable\\_%' ESCAPE '\\'
             AND type IN ('table', 'view', 'trigger')",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (kind, name) in objects {
        let kind = kind.to_uppercase();
        conn.execute_batch(&format!(
            "DROP {kind} IF EXISTS \"{}\"",
            name.replace('"', "\"\"")
        ))?;
    }
    conn.execute_batch(
        "DELETE FROM _durable_meta WHERE key IN ('schema_version', 'schema_digest');",
    )
}

/// SQL on the object's own database. Every call runs inside the turn's transaction:
/// it commits when the method returns `Ok` and rolls back on `Err` or panic (an
/// outgoing call through [`Context::object`] is a commit point: writes before it stay).
/// Prepared statements are cached on the object's connection (the most recent 32; the
/// cache goes with the connection when the object is evicted or goes quiet).
///
/// Do not issue `BEGIN`, `COMMIT`, `ROLLBACK` or `SAVEPOINT` yourself; the runtime owns
/// the transaction. Table names starting with `_durable` are reserved.
#[derive(Debug)]
pub struct Sql<'a> {
    pub(crate) conn: &'a Db,
    pub(crate) force_image: &'a std::cell::Cell<bool>,
    /// Queries only (a read-only handler's [`crate::ReadSql`]): a statement that would
    /// write is refused before it runs.
    pub(crate) read_only: bool,
}

impl Sql<'_> {
    /// The cached statement for `sql`; refused if this is a read-only view and the
    /// statement writes (the error SQLite gives a write under `PRAGMA query_only`,
    /// without that pragma's cost: setting it expires every prepared statement).
    fn query_statement(&self, sql: &str) -> Result<rusqlite::CachedStatement<'_>, Error> {
        let stmt = match self.conn.prepare_cached(sql) {
            Ok(stmt) => stmt,
            // The read-only methods' authorizer refused it (see `Db::read_scope`).
            Err(rusqlite::Error::SqliteFailure(e, _))
                if self.read_only
                    && e.code == rusqlite::ErrorCode::AuthorizationForStatementDenied =>
            {
                return Err(crate::db::write_refused().into())
            }
            Err(e) => return Err(e.into()),
        };
        if self.read_only && !stmt.readonly() {
            return Err(crate::db::write_refused().into());
        }
        Ok(stmt)
    }

    /// Execute one statement; returns the number of rows changed.
    pub fn execute<P: Params>(&self, sql: &str, params: P) -> Result<usize, Error> {
        // Kept by text, apart from the runtime's statements: rusqlite's cache hashes
        // the text and relinks an LRU list at every use (1.8% of the host's samples
        // under `counter bench`).
        Ok(self.conn.exec_user(sql, params)?)
    }

    /// Execute several statements separated by `;` (no parameters).
    pub fn execute_batch(&self, sql: &str) -> Result<(), Error> {
        Ok(self.conn.execute_batch(sql)?)
    }

    /// Run a query expected to return exactly one row, mapping it with `f`.
    /// No row gives an error of kind [`ErrorKind::NotFound`].
    pub fn query_row<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<T, Error>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        Ok(self.query_statement(sql)?.query_row(params, f)?)
    }

    /// Run a query returning at most one row.
    pub fn query_opt<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<Option<T>, Error>
    where
        P: Params,
        F: FnOnce(&Row<'_>) -> rusqlite::Result<T>,
    {
        Ok(self.query_statement(sql)?.query_row(params, f).optional()?)
    }

    /// Run a query and turn every row into a `T` by column name: each row becomes
    /// an object of its columns (integers and reals as numbers, text as strings,
    /// blobs as arrays of bytes, NULL as null) deserialized into `T`, so a struct
    /// with `#[derive(Deserialize)]` whose fields are named like the columns (use
    /// `AS` to rename) maps without a closure. A row that does not fit `T` is an
    /// error of kind [`ErrorKind::Codec`] naming the column set.
    ///
    /// ```no_run
    /// # use durable_runtime::{Context, Error};
    /// #[derive(serde::Deserialize)]
    /// struct Line { seq: i64, user: String, text: String }
    /// # fn example(ctx: &mut Context) -> Result<(), Error> {
    /// let lines: Vec<Line> = ctx.sql().query_as("SELECT seq, user, text FROM lines ORDER BY seq", [])?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn query_as<T: DeserializeOwned, P: Params>(
        &self,
        sql: &str,
        params: P,
    ) -> Result<Vec<T>, Error> {
        let mut stmt = self.query_statement(sql)?;
        let names: Vec<String> = stmt.column_names().map(String::from).collect();
        let mut rows = stmt.query(params)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            out.push(row_as(&names, row)?);
        }
        Ok(out)
    }

    /// Like [`Sql::query_as`] for a query returning at most one row.
    pub fn query_opt_as<T: DeserializeOwned, P: Params>(
        &self,
        sql: &str,
        params: P,
    ) -> Result<Option<T>, Error> {
        let mut stmt = self.query_statement(sql)?;
        let names: Vec<String> = stmt.column_names().map(String::from).collect();
        let mut rows = stmt.query(params)?;
        match rows.next()? {
            Some(row) => Ok(Some(row_as(&names, row)?)),
            None => Ok(None),
        }
    }

    /// Run a query and map every row with `f`.
    pub fn query<T, P, F>(&self, sql: &str, params: P, f: F) -> Result<Vec<T>, Error>
    where
        P: Params,
        F: FnMut(&Row<'_>) -> rusqlite::Result<T>,
    {
        self.query_limit(sql, params, usize::MAX, f)
    }

    /// Like [`Sql::query`], reading at most `max` rows. SQLite produces rows lazily,
    /// so this is `LIMIT max` without its cost: a statement with a bound `LIMIT ?`
    /// is prepared again on every run (SQLite as built here, with STAT4, re-plans
    /// it for each limit value), which costs more than most queries themselves.
    ///
    /// ```no_run
    /// # fn f(sql: durable_runtime::Sql<'_>) -> Result<(), durable_runtime::Error> {
    /// // The newest ten lines, without `LIMIT ?`.
    /// let lines: Vec<String> =
    ///     sql.query_limit("SELECT text FROM lines ORDER BY seq DESC", [], 10, |r| r.get(0))?;
    /// # Ok(()) }
    /// ```
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
        let mut stmt = self.query_statement(sql)?;
        let rows = stmt.query_map(params, f)?;
        Ok(rows.take(max).collect::<rusqlite::Result<Vec<T>>>()?)
    }

    /// Bring the schema up to date: `migrations[i]` runs once, in order, for every
    /// `i` at or beyond the stored schema version. Returns the new version.
    ///
    /// Call it from the activation constructor with the whole list every time;
    /// append new migrations, never edit applied ones.
    pub fn migrate(&self, migrations: &[&str]) -> Result<usize, Error> {
        let assumed = self.conn.take_assumed_schema_version();
        // The version, and for a file made with its class's migrations applied ahead
        // that no batch of has reached the log yet, the digest of those migrations.
        let (current, made_with): (i64, Option<u64>) = match assumed {
            Some(a) => (a.version, a.digest),
            None => {
                let (version, digest, logged): (i64, Option<i64>, Option<i64>) =
                    self.conn.query_row(
                        "SELECT coalesce((SELECT value FROM _durable_meta WHERE key = 'schema_version'), 0),
                                (SELECT value FROM _durable_meta WHERE key = 'schema_digest'),
                                (SELECT value FROM _durable_meta WHERE key = 'log_seq')",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )?;
                let fresh = logged.unwrap_or(0) <= 0;
                (version, digest.filter(|_| fresh).map(|d| d as u64))
            }
        };
        let current = match made_with {
            // Made with other migrations than this call passes (and holding nothing of
            // the object's own yet): back to the template's schema, then as usual.
            Some(digest) if digest != crate::db::migrations_digest(migrations) => {
                drop_users_schema(self.conn)?;
                0
            }
            _ => current,
        };
        let current = current.max(0) as usize;
        if current > migrations.len() {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!(
                    "stored schema version {current} is newer than the {} migrations this build knows",
                    migrations.len()
                ),
            ));
        }
        // Every migration, on a new object's file made from the template: if they
        // would do the same on every such file, the class's next new objects get
        // theirs with them applied ahead (see `crate::spares`).
        // (Only if nothing run on the file since it was opened changed its schema or
        // its settings: the migrations then ran as on any new file.)
        let learn = !migrations.is_empty()
            && assumed == Some(crate::db::Assumed::TEMPLATE)
            && self.conn.start_schema_watch();
        let ran = migrations[current..]
            .iter()
            .try_for_each(|m| self.conn.execute_batch(m));
        let same = learn && self.conn.end_schema_watch();
        ran?;
        if same {
            *self.conn.template_made.borrow_mut() =
                Some(migrations.iter().map(|m| m.to_string()).collect());
        }
        if current < migrations.len() {
            // The version lives in the runtime's own table, which changesets leave
            // out: ship this batch as a whole image so replay and restore carry it.
            self.force_image.set(true);
        }
        if current < migrations.len() {
            self.conn
                .execute(WRITE_SCHEMA_VERSION, [migrations.len() as i64])?;
        }
        Ok(migrations.len())
    }

    /// The underlying connection, for what this API does not cover (read-only use is
    /// safest; the transaction rules above still apply). A blob written in place
    /// (`blob_open`, with rusqlite's `blob` feature) is a write like any other: logged,
    /// durable before the reply, recorded under the request id. The connection's
    /// hooks are the runtime's: do not replace them (its preupdate hook is how it sees
    /// such writes).
    pub fn connection(&self) -> &Connection {
        self.conn
    }
}

/// Key-value storage of serde values (postcard-encoded) in the object's database,
/// inside the turn's transaction. Keys are strings of at most [`MAX_KEY_BYTES`];
/// encoded values at most [`MAX_VALUE_BYTES`].
#[derive(Debug)]
pub struct Storage<'a> {
    pub(crate) conn: &'a Db,
}

fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::new(
            ErrorKind::LimitExceeded,
            format!(
                "key of {} bytes exceeds the limit of {MAX_KEY_BYTES}",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// Options for [`Storage::list`].
#[derive(Debug, Clone, Default)]
pub struct ListOptions<'k> {
    /// Only keys starting with this.
    pub prefix: Option<&'k str>,
    /// Only keys `>= start`.
    pub start: Option<&'k str>,
    /// Only keys `< end`.
    pub end: Option<&'k str>,
    /// Only keys after this one in the listing's order (`>` forward, `<` with
    /// `reverse`): pass the last key of one page to get the next.
    pub start_after: Option<&'k str>,
    /// Descending key order.
    pub reverse: bool,
    /// At most this many entries.
    pub limit: Option<usize>,
}

impl Storage<'_> {
    /// The value under `key`, if any.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, Error> {
        check_key(key)?;
        if !tables::has_table(self.conn, Lazy::Kv)? {
            return Ok(None);
        }
        let bytes: Option<Vec<u8>> = self
            .conn
            .with("SELECT value FROM _durable_kv WHERE key = ?1", |s| {
                s.query_row([key], |r| r.get(0)).optional()
            })?;
        bytes
            .map(|b| postcard::from_bytes(&b).map_err(Error::from))
            .transpose()
    }

    /// Store `value` under `key`, replacing any previous value.
    pub fn put<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), Error> {
        check_key(key)?;
        let bytes = postcard::to_stdvec(value)?;
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "value of {} bytes exceeds the limit of {MAX_VALUE_BYTES}",
                    bytes.len()
                ),
            ));
        }
        tables::ensure_table(self.conn, Lazy::Kv)?;
        self.conn.exec(
            "INSERT INTO _durable_kv(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            rusqlite::params![key, bytes],
        )?;
        Ok(())
    }

    /// Remove `key`; returns whether it was there.
    pub fn delete(&self, key: &str) -> Result<bool, Error> {
        check_key(key)?;
        if !tables::has_table(self.conn, Lazy::Kv)? {
            return Ok(false);
        }
        Ok(self
            .conn
            .exec("DELETE FROM _durable_kv WHERE key = ?1", [key])?
            > 0)
    }

    /// Get many keys at once; missing keys are left out.
    pub fn get_many<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<Vec<(String, T)>, Error> {
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = self.get(k)? {
                out.push((k.to_string(), v));
            }
        }
        Ok(out)
    }

    /// Remove many keys at once; returns how many were there.
    pub fn delete_many(&self, keys: &[&str]) -> Result<usize, Error> {
        let mut removed = 0;
        for k in keys {
            removed += usize::from(self.delete(k)?);
        }
        Ok(removed)
    }

    /// Put many entries at once.
    pub fn put_many<T: Serialize>(&self, entries: &[(&str, T)]) -> Result<(), Error> {
        entries.iter().try_for_each(|(k, v)| self.put(k, v))
    }

    /// Entries in key order, filtered by `opts`.
    pub fn list<T: DeserializeOwned>(
        &self,
        opts: &ListOptions<'_>,
    ) -> Result<Vec<(String, T)>, Error> {
        if !tables::has_table(self.conn, Lazy::Kv)? {
            return Ok(Vec::new());
        }
        let (order, after) = if opts.reverse {
            ("DESC", "<")
        } else {
            ("ASC", ">")
        };
        let sql = format!(
            "SELECT key, value FROM _durable_kv WHERE (?1 IS NULL OR substr(key, 1, length(?1)) = ?1) \
             AND (?2 IS NULL OR key >= ?2) AND (?3 IS NULL OR key < ?3) AND (?4 IS NULL OR key {after} ?4) \
             ORDER BY key {order}"
        );
        // No `LIMIT ?`: SQLite re-prepares a statement with a bound limit on every run;
        // rows come lazily in key order, so reading only `limit` of them is the same.
        let limit = opts.limit.unwrap_or(usize::MAX);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt
            .query_map(
                rusqlite::params![opts.prefix, opts.start, opts.end, opts.start_after],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )?
            .take(limit);
        let mut out = Vec::new();
        for row in rows {
            let (k, bytes) = row?;
            out.push((k, postcard::from_bytes(&bytes)?));
        }
        Ok(out)
    }
}
