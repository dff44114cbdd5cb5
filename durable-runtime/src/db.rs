//! An object's SQLite connection, with the runtime's own statements kept prepared.
//!
//! rusqlite's statement cache costs, on every use, a trim and a hash of the SQL, an
//! `Arc<str>` allocated for its key, and a second hash to put the statement back: ~5%
//! of a host's time under increments (BENCHMARKS.md, session 14). The runtime runs a
//! handful of fixed statements on every call and batch (savepoints, the request record,
//! the batch number, key-value storage, the change capture's row reads), so [`Db`]
//! keeps those in a short list scanned by length and text: nothing hashed, nothing
//! allocated. Users' own SQL keeps going through rusqlite's cache (its texts are
//! unbounded, and its least recently used statements go first).

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::{Connection, Params, PrepFlags, Statement};
use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

/// A connection and the runtime statements prepared on it. Dereferences to the
/// [`Connection`] for everything else.
pub(crate) struct Db {
    /// Declared before `conn`: every statement is finalized before the connection
    /// closes (SQLite refuses to close a connection with live statements).
    held: RefCell<HeldList>,
    /// The same for the statements a class's methods execute (`Sql::execute`), apart:
    /// a class that builds its SQL text per call fills only these.
    user_held: RefCell<HeldList>,
    /// Boxed so that its address, which the held statements borrow, never moves
    /// (also if the `Db` itself is moved with statements in `held`).
    conn: Box<Connection>,
    /// On while a read-only method runs on this connection (see [`Db::read_scope`]).
    read_scope: Arc<AtomicBool>,
    /// Whether statements are being watched, and whether one was seen that could do
    /// something else on another new object's file (see [`Db::start_schema_watch`]).
    schema_watch: Arc<AtomicU8>,
    /// The schema version `migrate` would read, known without reading it, with the
    /// connection's count of changed rows at the time (see [`Db::assume_schema_version`]).
    assumed_version: Cell<Option<(Assumed, u64)>>,
    /// Migrations that ran, watched, on a new object's file from the template: any new
    /// file of the class may be made with them applied (see the spare files module).
    pub(crate) template_made: RefCell<Option<Vec<String>>>,
    /// Rows written as the preupdate hook sees them, where [`Db::count_row_writes`]
    /// installed it: a blob written in place (`sqlite3_blob_write`) counts here but
    /// not in SQLite's own count of changes. Declared after `conn`, so that the
    /// connection (and its hook) is gone before the counter it points to.
    row_writes: std::cell::OnceCell<Box<Cell<u64>>>,
}

/// What a new object's file holds of `migrate`'s migrations (see
/// [`Db::assume_schema_version`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Assumed {
    /// The stored schema version.
    pub(crate) version: i64,
    /// For a file made with a class's migrations applied ahead, the digest of those
    /// migrations' texts ([`migrations_digest`]).
    pub(crate) digest: Option<u64>,
}

impl Assumed {
    /// A file as the template made it: no schema version stored.
    pub(crate) const TEMPLATE: Assumed = Assumed {
        version: 0,
        digest: None,
    };
}

/// A digest of a list of migrations' texts (FNV-1a, each text ended by a zero byte).
pub(crate) fn migrations_digest<S: AsRef<str>>(migrations: &[S]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for m in migrations {
        for b in m.as_ref().bytes().chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

const WATCH_OFF: u8 = 0;
const WATCH_ON: u8 = 1;
const WATCH_SEEN: u8 = 2;
const WATCH_BEFORE: u8 = 3;

/// Most statement texts a [`Db`] keeps; others go through rusqlite's cache.
const HELD_MAX: usize = 24;

/// Most texts of a class's own statements a [`Db`] keeps (see [`Db::exec_user`]).
const USER_HELD_MAX: usize = 8;

/// Kept statements, and apart from them their texts' [`text_key`]s: a lookup reads a
/// few cache lines of keys (not every entry, which an object's call finds out of the
/// CPU's caches under load) and compares whole texts only where a key matches.
/// Entries are never removed, so an index stays valid.
#[derive(Default)]
struct HeldList {
    keys: Vec<u64>,
    entries: Vec<Held>,
}

impl HeldList {
    fn len(&self) -> usize {
        self.entries.len()
    }

    /// Where `sql` (whose key is `key`) is held.
    fn find(&self, key: u64, sql: &str) -> Option<usize> {
        (0..self.keys.len()).find(|&i| self.keys[i] == key && *self.entries[i].sql == *sql)
    }
}

struct Held {
    /// Shared by every connection that keeps this text ([`shared_text`]).
    sql: Arc<str>,
    /// `None` while lent out.
    stmt: Option<Statement<'static>>,
}

impl Db {
    pub(crate) fn new(mut conn: Connection) -> Db {
        let read_scope = Arc::new(AtomicBool::new(false));
        let scope = read_scope.clone();
        let schema_watch = Arc::new(AtomicU8::new(WATCH_OFF));
        let watch = schema_watch.clone();
        // Installed once, on a connection with no statements yet (installing one
        // expires every prepared statement).
        let installed = conn.authorizer(Some(move |ctx: AuthContext<'_>| {
            let seen = match watch.load(Ordering::Relaxed) {
                WATCH_BEFORE => shapes_the_file(&ctx.action),
                WATCH_ON => !same_on_every_new_file(&ctx.action),
                _ => false,
            };
            if seen {
                watch.store(WATCH_SEEN, Ordering::Relaxed);
            }
            if scope.load(Ordering::Relaxed) && !reads_only(&ctx.action) {
                Authorization::Deny
            } else {
                Authorization::Allow
            }
        }));
        if let Err(e) = installed {
            tracing::warn!(error = %e, "could not install the read-only methods' authorizer");
        }
        Db {
            held: RefCell::default(),
            user_held: RefCell::default(),
            conn: Box::new(conn),
            read_scope,
            schema_watch,
            assumed_version: Cell::new(None),
            template_made: RefCell::new(None),
            row_writes: std::cell::OnceCell::new(),
        }
    }

    /// Count every row write of this connection from now on, blobs written in place
    /// included, in [`Db::total_changes`]. For a connection without a change capture
    /// (the capture is the connection's one preupdate hook where there is one, and it
    /// sees those writes itself). Returns false if another preupdate hook is in place
    /// (which is then kept).
    pub(crate) fn count_row_writes(&self) -> bool {
        if self.row_writes.get().is_some() {
            return true;
        }
        let counter: Box<Cell<u64>> = Box::default();
        let ctx = &*counter as *const Cell<u64> as *mut std::ffi::c_void;
        // SAFETY: the handle of this live connection; `ctx` points into the box, which
        // (stored in `row_writes` below) lives at a fixed address until after the
        // connection closes.
        let db = unsafe { self.conn.handle() };
        let before =
            unsafe { rusqlite::ffi::sqlite3_preupdate_hook(db, Some(count_row_write), ctx) };
        if !before.is_null() {
            // SAFETY: puts back the hook that was there (its context unchanged).
            unsafe { rusqlite::ffi::sqlite3_preupdate_hook(db, Some(count_row_write), before) };
            return false;
        }
        let _ = self.row_writes.set(counter);
        true
    }

    /// SQLite's count of rows this connection changed, plus the row writes counted by
    /// [`Db::count_row_writes`] (so that a blob written in place moves it too): a
    /// marker that moves whenever a statement writes. Only compared, never subtracted.
    pub(crate) fn total_changes(&self) -> u64 {
        self.conn.total_changes() + self.row_writes.get().map_or(0, |c| c.get())
    }

    /// Watch the statements prepared from now on, if nothing prepared since the file's
    /// version was assumed (for a file made from the template) changed its schema, set
    /// a pragma or attached a database (see [`shapes_the_file`]); whether it does.
    pub(crate) fn start_schema_watch(&self) -> bool {
        self.schema_watch
            .compare_exchange(WATCH_BEFORE, WATCH_ON, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Stop watching; whether every statement prepared since
    /// [`Db::start_schema_watch`] would do the same on every new object's file: schema
    /// changes, and reads and writes of the tables they make, with no function but
    /// the deterministic ones in [`SAME_FUNCTIONS`] and nothing of the runtime's own
    /// tables (which hold the object's identity).
    pub(crate) fn end_schema_watch(&self) -> bool {
        self.schema_watch.swap(WATCH_OFF, Ordering::Relaxed) == WATCH_ON
    }

    /// The file's stored schema version (`migrate`'s) is `version`, known without a
    /// statement (a new object's file, made from the template, stores none): the next
    /// [`Db::take_assumed_schema_version`] answers it unless a row changed since.
    /// A file made from the template (version 0, no digest) is watched from here on,
    /// for anything that would make `migrate` run on another schema than the
    /// template's (see [`Db::start_schema_watch`]).
    pub(crate) fn assume_schema_version(&self, assumed: Assumed) {
        self.assumed_version
            .set(Some((assumed, self.conn.total_changes())));
        let watch = if assumed == Assumed::TEMPLATE {
            WATCH_BEFORE
        } else {
            WATCH_OFF
        };
        self.schema_watch.store(watch, Ordering::Relaxed);
    }

    /// What [`Db::take_assumed_schema_version`] would answer, without taking it.
    #[cfg(test)]
    pub(crate) fn assumed_schema_version(&self) -> Option<Assumed> {
        let kept = self.assumed_version.get()?;
        (kept.1 == self.conn.total_changes()).then_some(kept.0)
    }

    /// The version [`Db::assume_schema_version`] gave, once, if no statement of this
    /// connection has changed a row since (a write, a rolled-back write or an applied
    /// changeset each count; after one the version is read from the file again).
    pub(crate) fn take_assumed_schema_version(&self) -> Option<Assumed> {
        let (assumed, changes) = self.assumed_version.take()?;
        (changes == self.conn.total_changes()).then_some(assumed)
    }

    /// While on, SQLite refuses to prepare any statement on this connection that does
    /// more than read: writes, schema changes, transaction control and savepoints,
    /// `ATTACH`/`DETACH`, `ANALYZE`, and pragmas other than the schema and status
    /// reads in [`PRAGMAS_ARG`] and [`PRAGMAS_READ`] (also nested ones, such as
    /// `PRAGMA optimize`'s `ANALYZE`). A read-only method runs with it on. Statements prepared before are
    /// not checked again: the read-only methods' SQL view refuses those that write
    /// (`sqlite3_stmt_readonly`), and the raw connection lent to a read-only method
    /// has `PRAGMA query_only` set (see [`RawGuard`]).
    pub(crate) fn read_scope(&self, on: bool) {
        self.read_scope.store(on, Ordering::Relaxed);
    }

    /// [`Db::read_scope`] on until the returned guard is dropped.
    pub(crate) fn enter_read_scope(&self) -> ReadScope<'_> {
        self.read_scope(true);
        ReadScope(self)
    }
}

/// A read-only method's scope on a connection (see [`Db::enter_read_scope`]).
pub(crate) struct ReadScope<'a>(&'a Db);

impl Drop for ReadScope<'_> {
    fn drop(&mut self) {
        self.0.read_scope(false);
    }
}

/// How a read-only method running as a turn on the writer's connection is kept from
/// writing. While it runs, SQLite refuses to prepare any statement that does more than
/// read ([`Db::read_scope`], an authorizer), and its queries through
/// `ReadSql` that were prepared earlier are checked one by one (a statement that
/// would write is refused before it runs); only if it takes the raw connection
/// (`ReadSql::connection`) is `PRAGMA query_only` set too, until the turn ends.
/// (Setting that pragma on every such read, and clearing it after, cost ~3 µs of a
/// 47 µs read: SQLite expires every prepared statement of the connection each time.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RawGuard {
    /// Not in a read-only turn on a writable connection.
    #[default]
    Off,
    /// In one; the raw connection has not been lent.
    Armed,
    /// In one, and `query_only` is set on the connection.
    Set,
}

/// The error a write gets in a read-only handler: SQLite's own for a write under
/// `PRAGMA query_only`.
pub(crate) fn write_refused() -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
        Some(
            "attempt to write a readonly database (a read-only method may only read: no \
             writes, transaction control, ATTACH or pragmas that set)"
                .into(),
        ),
    )
}

/// Pragmas a read-only method may run with an argument (`PRAGMA table_info(t)`): they
/// read the schema or check the file, and change nothing.
const PRAGMAS_ARG: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
    "foreign_key_check",
    "integrity_check",
    "quick_check",
];

/// Pragmas a read-only method may run without a value only (with one, most set).
const PRAGMAS_READ: &[&str] = &[
    "user_version",
    "schema_version",
    "data_version",
    "page_count",
    "page_size",
    "freelist_count",
    "collation_list",
    "function_list",
    "module_list",
    "pragma_list",
    "database_list",
    "compile_options",
];

/// Whether a statement doing `action` only reads.
fn reads_only(action: &AuthAction<'_>) -> bool {
    match action {
        AuthAction::Select
        | AuthAction::Read { .. }
        | AuthAction::Function { .. }
        | AuthAction::Recursive => true,
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } => {
            let is = |p: &&str| p.eq_ignore_ascii_case(pragma_name);
            PRAGMAS_ARG.iter().any(is) || (pragma_value.is_none() && PRAGMAS_READ.iter().any(is))
        }
        _ => false,
    }
}

/// Functions whose result depends only on their arguments, which a migration may call
/// and still do the same on every new object's file.
const SAME_FUNCTIONS: &[&str] = &[
    "abs",
    "coalesce",
    "glob",
    "hex",
    "ifnull",
    "iif",
    "instr",
    "length",
    "like",
    "lower",
    "ltrim",
    "max",
    "min",
    "nullif",
    "printf",
    "format",
    "quote",
    "replace",
    "round",
    "rtrim",
    "substr",
    "substring",
    "trim",
    "typeof",
    "unhex",
    "unicode",
    "upper",
    "count",
    "sum",
    "total",
    "avg",
    "group_concat",
    "json",
    "json_array",
    "json_object",
    "json_extract",
    "json_valid",
    "json_type",
    "json_quote",
    "char",
    "zeroblob",
    // What SQLite itself calls to rewrite the schema for `ALTER TABLE ... RENAME` and
    // `DROP COLUMN`.
    "sqlite_rename_column",
    "sqlite_rename_table",
    "sqlite_rename_test",
    "sqlite_rename_quotefix",
    "sqlite_drop_column",
];

/// Whether a statement doing `action`, prepared before `migrate`, could make the
/// migrations run on another schema or with other settings than on a file fresh from
/// the template: a schema change, a pragma that sets, `ATTACH`. (Rows written are seen
/// by the change count instead; transaction control and reads are the runtime's own
/// business before a turn.)
fn shapes_the_file(action: &AuthAction<'_>) -> bool {
    !matches!(
        action,
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. }
    ) && !reads_only(action)
}

/// Whether a statement doing `action`, prepared on a new object's file, does the same on
/// every other one: schema changes and what they read and write, reads and writes of
/// users' tables, deterministic functions. Not the runtime's own tables (they hold the
/// object's identity and bookkeeping), pragmas, transaction control, `ATTACH`, virtual
/// or temporary objects, or other functions (`random()`, the time, ...).
fn same_on_every_new_file(action: &AuthAction<'_>) -> bool {
    let users = |table: &str| !table.starts_with("_durable_");
    match action {
        AuthAction::CreateView { .. }
        | AuthAction::DropView { .. }
        | AuthAction::Reindex { .. }
        | AuthAction::Select
        | AuthAction::Recursive => true,
        // Virtual tables that read the file's pages or the connection's state.
        AuthAction::Read { table_name, .. }
            if ["dbstat", "sqlite_dbpage", "sqlite_stmt"].contains(table_name)
                || table_name.starts_with("pragma_") =>
        {
            false
        }
        AuthAction::CreateTable { table_name }
        | AuthAction::CreateIndex { table_name, .. }
        | AuthAction::CreateTrigger { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::DropIndex { table_name, .. }
        | AuthAction::DropTrigger { table_name, .. }
        | AuthAction::AlterTable { table_name, .. }
        | AuthAction::Read { table_name, .. }
        | AuthAction::Insert { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::Delete { table_name } => users(table_name),
        AuthAction::Function { function_name } => SAME_FUNCTIONS
            .iter()
            .any(|f| f.eq_ignore_ascii_case(function_name)),
        _ => false,
    }
}

/// Running the runtime's own statements: kept by a [`Db`], and through rusqlite's
/// cache on a bare [`Connection`] (recovery, restores, tools).
pub(crate) trait Statements {
    /// Run `f` on the statement for `sql`, prepared once and kept. `f` must leave it
    /// reset (rusqlite's `execute`, `query_row` and dropped `Rows` do).
    fn with<R>(
        &self,
        sql: &str,
        f: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R>;

    /// The connection.
    fn conn(&self) -> &Connection;

    /// Execute `sql` with `params`; the number of rows changed.
    fn exec(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
        self.with(sql, |stmt| stmt.execute(params))
    }

    /// Execute `sql`, which takes no parameters (`BEGIN`, a savepoint, `COMMIT`, ...).
    fn run(&self, sql: &str) -> rusqlite::Result<()> {
        self.exec(sql, []).map(drop)
    }
}

impl Statements for Connection {
    fn conn(&self) -> &Connection {
        self
    }

    fn with<R>(
        &self,
        sql: &str,
        f: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        let mut stmt = self.prepare_cached(sql)?;
        f(&mut stmt)
    }
}

impl Statements for Db {
    fn conn(&self) -> &Connection {
        &self.conn
    }

    /// Prepared on the text's first use on this connection and kept (the first
    /// [`HELD_MAX`] texts; later ones through rusqlite's cache). Re-entrant: a nested
    /// use of the same text prepares a second statement for the while.
    fn with<R>(
        &self,
        sql: &str,
        f: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        self.with_in(&self.held, HELD_MAX, sql, f)
    }
}

impl Db {
    /// Execute a statement of a class's method: kept by text as the runtime's own are
    /// ([`Statements::with`]), in a list of its own of [`USER_HELD_MAX`] texts (past
    /// those, rusqlite's cache), so that SQL text built per call cannot push the
    /// runtime's statements out.
    pub(crate) fn exec_user(&self, sql: &str, params: impl Params) -> rusqlite::Result<usize> {
        self.with_in(&self.user_held, USER_HELD_MAX, sql, |st| st.execute(params))
    }

    /// [`Statements::with`] over the kept statements `list`, which keeps at most `max`
    /// texts.
    fn with_in<R>(
        &self,
        list: &RefCell<HeldList>,
        max: usize,
        sql: &str,
        f: impl FnOnce(&mut Statement<'_>) -> rusqlite::Result<R>,
    ) -> rusqlite::Result<R> {
        let key = text_key(sql);
        // Where the text is held (entries are never removed, so it stays there).
        let at = list.borrow().find(key, sql);
        let taken = {
            let mut held = list.borrow_mut();
            let full = held.len() >= max;
            match at.map(|i| &mut held.entries[i]) {
                Some(h) => h.stmt.take(),
                // Past the bound: rusqlite's cache.
                None if full => {
                    drop(held);
                    let mut stmt = self.conn.prepare_cached(sql)?;
                    return f(&mut stmt);
                }
                None => None,
            }
        };
        let mut stmt = match taken {
            Some(stmt) => stmt,
            None => {
                let stmt = self
                    .conn
                    .prepare_with_flags(sql, PrepFlags::SQLITE_PREPARE_PERSISTENT)?;
                // SAFETY: the statement borrows `*self.conn`, which is boxed (it never
                // moves) and outlives every statement in `held` and `user_held` (field
                // order). The statement is lent out only to `f`, for a lifetime `f`
                // cannot name, and is either put back into `list` or dropped here.
                unsafe { std::mem::transmute::<Statement<'_>, Statement<'static>>(stmt) }
            }
        };
        let result = f(&mut stmt);
        // As rusqlite's cache does: a kept statement holds no copy of its last values
        // (a value of megabytes, or a named parameter the next use leaves unbound).
        stmt.clear_bindings();
        let mut held = list.borrow_mut();
        let room = held.len() < max;
        // Held since (by a nested use of the same text) if not before.
        let at = at.or_else(|| held.find(key, sql));
        match at.map(|i| &mut held.entries[i]) {
            Some(h) if h.stmt.is_none() => h.stmt = Some(stmt),
            None if room => {
                held.keys.push(key);
                held.entries.push(Held {
                    sql: shared_text(sql),
                    stmt: Some(stmt),
                });
            }
            _ => drop(stmt),
        }
        result
    }
}

/// Most distinct statement texts [`shared_text`] keeps (past them, a text is copied
/// per connection): a class that builds SQL text per call cannot grow it for ever.
const SHARED_TEXTS_MAX: usize = 4096;

/// One copy of a statement text for every connection of the process that keeps it.
/// A lookup compares the caller's text with the kept one; under load over many objects
/// a copy per connection was out of the CPU's caches at each call (the comparisons were
/// 3.5% of the shard threads' samples over 256 counters), while the one copy every
/// object's calls read stays in them. Taken only when a statement is first kept.
fn shared_text(sql: &str) -> Arc<str> {
    static TEXTS: std::sync::LazyLock<std::sync::Mutex<std::collections::HashSet<Arc<str>>>> =
        std::sync::LazyLock::new(Default::default);
    let mut texts = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(text) = texts.get(sql) {
        return text.clone();
    }
    let text: Arc<str> = sql.into();
    if texts.len() < SHARED_TEXTS_MAX {
        texts.insert(text.clone());
    }
    text
}

/// A statement text's length and its first and last 8 bytes, mixed into one word:
/// texts kept by a [`Db`] differ in these far more often than not (two `SELECT ...
/// FROM _durable_meta` of one length differ in their ends), at the cost of two loads,
/// not of a pass over the text. Equal keys of different texts cost a text comparison.
fn text_key(sql: &str) -> u64 {
    let b = sql.as_bytes();
    let word = |at: usize| match b.get(at..at + 8) {
        // One load (nearly every statement is longer than 8 bytes).
        Some(w) => u64::from_le_bytes(w.try_into().expect("8 bytes")),
        None => {
            let mut w = [0u8; 8];
            w[..b.len() - at].copy_from_slice(&b[at..]);
            u64::from_le_bytes(w)
        }
    };
    let mixed = (b.len() as u64)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(word(0))
        .rotate_left(29)
        ^ word(b.len().saturating_sub(8));
    mixed.wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("held", &self.held.borrow().len())
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for Db {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.conn
    }
}

/// The preupdate hook of [`Db::count_row_writes`]: one more row written.
unsafe extern "C" fn count_row_write(
    ctx: *mut std::ffi::c_void,
    _db: *mut rusqlite::ffi::sqlite3,
    _op: std::ffi::c_int,
    _zdb: *const std::ffi::c_char,
    _table: *const std::ffi::c_char,
    _key1: i64,
    _key2: i64,
) {
    // SAFETY: `ctx` is the counter `count_row_writes` installed with, alive while the
    // connection is; SQLite calls the hook on the connection's own thread.
    let counter = unsafe { &*(ctx as *const Cell<u64>) };
    counter.set(counter.get() + 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_assumed_schema_version_holds_once_and_only_until_a_row_changes() {
        let db = Db::new(Connection::open_in_memory().unwrap());
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        let zero = Assumed {
            version: 0,
            digest: None,
        };
        let three = Assumed {
            version: 3,
            digest: None,
        };
        db.assume_schema_version(zero);
        assert_eq!(db.take_assumed_schema_version(), Some(zero));
        assert_eq!(db.take_assumed_schema_version(), None, "once");
        db.assume_schema_version(three);
        db.execute("INSERT INTO t VALUES (1)", []).unwrap();
        assert_eq!(db.take_assumed_schema_version(), None, "a write since");
        // A write rolled back counts too: what it wrote is gone, but so may be a
        // version it stored.
        db.assume_schema_version(three);
        db.execute_batch("BEGIN; INSERT INTO t VALUES (2); ROLLBACK;")
            .unwrap();
        assert_eq!(
            db.take_assumed_schema_version(),
            None,
            "a rolled-back write"
        );
        db.assume_schema_version(three);
        db.query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
            .unwrap();
        assert_eq!(
            db.take_assumed_schema_version(),
            Some(three),
            "a read changes nothing"
        );
    }

    /// A Db as a new object's file from the template opens: the runtime's table, no
    /// schema version, and the version assumed.
    fn new_file() -> Db {
        let db = Db::new(Connection::open_in_memory().unwrap());
        db.execute_batch(
            "CREATE TABLE _durable_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
             INSERT INTO _durable_meta VALUES ('id', 'abc');",
        )
        .unwrap();
        db.assume_schema_version(Assumed {
            version: 0,
            digest: None,
        });
        db
    }

    fn migrate(db: &Db, list: &[&str]) -> Result<usize, crate::Error> {
        let force_image = Cell::new(false);
        let sql = crate::context::Sql {
            conn: db,
            force_image: &force_image,
            read_only: false,
        };
        sql.migrate(list)
    }

    #[test]
    fn migrations_that_do_the_same_on_every_new_file_are_learnt_and_no_others() {
        let same: &[&[&str]] = &[
            &["CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER NOT NULL DEFAULT 0)"],
            &[
                "CREATE TABLE t(x); CREATE INDEX t_x ON t(lower(x))",
                "INSERT INTO t VALUES ('a'), (upper('b')); ALTER TABLE t ADD COLUMN y",
                "CREATE VIEW v AS SELECT count(*) FROM t; CREATE TRIGGER g AFTER INSERT ON t BEGIN SELECT 1; END",
                "ALTER TABLE t RENAME COLUMN y TO z; ALTER TABLE t RENAME TO u",
            ],
        ];
        for list in same {
            let db = new_file();
            assert_eq!(migrate(&db, list).unwrap(), list.len());
            let learnt = db.template_made.borrow_mut().take();
            assert_eq!(
                learnt.as_deref(),
                Some(&list.iter().map(|m| m.to_string()).collect::<Vec<_>>()[..]),
                "{list:?}"
            );
        }
        let different: &[&[&str]] = &[
            &["CREATE TABLE t(x); INSERT INTO t VALUES (random())"],
            &[
                "CREATE TABLE t(x)",
                "INSERT INTO t VALUES (datetime('now'))",
            ],
            // The object's identity.
            &["CREATE TABLE t(x); INSERT INTO t SELECT value FROM _durable_meta"],
            &["PRAGMA foreign_keys = ON; CREATE TABLE t(x)"],
            &["CREATE TEMP TABLE t(x)"],
            &["CREATE TABLE t(x)", "ATTACH ':memory:' AS other"],
            // The file's own pages or settings, through a table-valued pragma.
            &["CREATE TABLE t(x); INSERT INTO t SELECT count(*) FROM pragma_table_info('_durable_meta')"],
        ];
        for list in different {
            let db = new_file();
            // They run (only their file is not taken as any other new file's).
            assert_eq!(migrate(&db, list).unwrap(), list.len(), "{list:?}");
            assert!(db.template_made.borrow().is_none(), "{list:?}");
            // The watch is off again: the read-only scope's authorizer is unaffected.
            assert!(!db.end_schema_watch());
        }
        // Only on a file the template made: not on one opened otherwise.
        let db = new_file();
        db.take_assumed_schema_version();
        migrate(&db, &["CREATE TABLE t(x)"]).unwrap();
        assert!(db.template_made.borrow().is_none());
        // Nor if the file's schema or settings changed before `migrate` (the list would
        // then not do on another new file what it did on this one); the runtime's own
        // transaction control and schema reads before it do not count.
        for before in [
            "CREATE TABLE IF NOT EXISTS kv(x)",
            "PRAGMA foreign_keys = ON",
        ] {
            let db = new_file();
            db.execute_batch(before).unwrap();
            migrate(&db, &["CREATE TABLE t(x)"]).unwrap();
            assert!(db.template_made.borrow().is_none(), "{before}");
        }
        let db = new_file();
        db.execute_batch("BEGIN; SAVEPOINT s; PRAGMA schema_version; RELEASE s;")
            .unwrap();
        migrate(&db, &["CREATE TABLE t(x)"]).unwrap();
        assert!(
            db.template_made.borrow().is_some(),
            "runtime statements before"
        );
    }

    #[test]
    fn a_file_made_with_other_migrations_is_recognised_after_a_rolled_back_activation() {
        // As the filler makes a class's set (version 2 of list `old`, its digest kept).
        let old = ["CREATE TABLE old(x)", "INSERT INTO old VALUES (1)"];
        let made = |db: &Db| {
            db.execute_batch("CREATE TABLE old(x); INSERT INTO old VALUES (1);")
                .unwrap();
            db.execute(
                "INSERT INTO _durable_meta VALUES ('schema_version', 2), ('schema_digest', ?1)",
                [crate::db::migrations_digest(&old) as i64],
            )
            .unwrap();
        };
        let names = |db: &Db| -> Vec<String> {
            db.prepare(
                "SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
        };
        let new = [
            "CREATE TABLE a(x)",
            "CREATE TABLE b(x)",
            "CREATE TABLE c(x)",
        ];
        let db = new_file();
        made(&db);
        db.assume_schema_version(Assumed {
            version: 2,
            digest: Some(crate::db::migrations_digest(&old)),
        });
        // The first activation passes another list, then fails: all of it rolls back.
        db.execute_batch("BEGIN").unwrap();
        assert_eq!(migrate(&db, &new).unwrap(), 3);
        db.execute_batch("ROLLBACK").unwrap();
        assert_eq!(names(&db), ["_durable_meta", "old"]);
        // The next one reads the digest from the file: back to the template again.
        assert_eq!(migrate(&db, &new).unwrap(), 3);
        assert_eq!(names(&db), ["_durable_meta", "a", "b", "c"]);
        // Once a batch of the object is in the log, its file is its own: a digest left
        // there is not looked at (a later build appending a migration only runs it).
        let db = new_file();
        made(&db);
        db.execute("INSERT INTO _durable_meta VALUES ('log_seq', 4)", [])
            .unwrap();
        db.take_assumed_schema_version();
        let appended = [old[0], old[1], "CREATE TABLE more(y)"];
        assert_eq!(migrate(&db, &appended).unwrap(), 3);
        assert_eq!(names(&db), ["_durable_meta", "more", "old"]);
        let kept: i64 = db
            .query_row("SELECT count(*) FROM old", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 1);
    }

    #[test]
    fn a_file_made_with_other_migrations_goes_back_to_the_template_first() {
        let db = new_file();
        db.execute_batch(
            "CREATE TABLE old(x); CREATE VIEW old_v AS SELECT x FROM old;
             CREATE TABLE seq(id INTEGER PRIMARY KEY AUTOINCREMENT);
             INSERT INTO _durable_meta VALUES ('schema_version', 2);",
        )
        .unwrap();
        let made_with = crate::db::migrations_digest(&["CREATE TABLE old(x)", "..."]);
        db.assume_schema_version(Assumed {
            version: 2,
            digest: Some(made_with),
        });
        assert_eq!(migrate(&db, &["CREATE TABLE new(y)"]).unwrap(), 1);
        let names: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(names, ["_durable_meta", "new"]);
        let version: i64 = db
            .query_row(
                "SELECT value FROM _durable_meta WHERE key = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 1);
        // The same list it was made with: taken as applied, nothing runs.
        let db = new_file();
        let list = ["CREATE TABLE a(x)"];
        db.assume_schema_version(Assumed {
            version: 1,
            digest: Some(crate::db::migrations_digest(&list)),
        });
        assert_eq!(migrate(&db, &list).unwrap(), 1);
        let made: i64 = db
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'a'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(made, 0, "taken as made ahead (this file was not)");
    }

    #[test]
    fn migrate_takes_an_assumed_schema_version_instead_of_reading_it() {
        let db = Db::new(Connection::open_in_memory().unwrap());
        db.execute_batch(
            "CREATE TABLE _durable_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID",
        )
        .unwrap();
        let force_image = Cell::new(false);
        let sql = crate::context::Sql {
            conn: &db,
            force_image: &force_image,
            read_only: false,
        };
        // Told (wrongly, to see it used) that the first migration is applied.
        db.assume_schema_version(Assumed {
            version: 1,
            digest: None,
        });
        assert_eq!(
            sql.migrate(&["CREATE TABLE a(x)", "CREATE TABLE b(x)"])
                .unwrap(),
            2
        );
        let tables: Vec<String> = db
            .prepare("SELECT name FROM sqlite_master WHERE name IN ('a', 'b')")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(tables, ["b"]);
        // Used up: the next call reads the stored version (2), and runs nothing.
        assert_eq!(
            sql.migrate(&["CREATE TABLE a(x)", "CREATE TABLE b(x)"])
                .unwrap(),
            2
        );
    }

    #[test]
    fn in_read_scope_only_statements_that_read_prepare() {
        let db = Db::new(Connection::open_in_memory().unwrap());
        db.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1)")
            .unwrap();
        let scope = db.enter_read_scope();
        for sql in [
            "SELECT x FROM t",
            "PRAGMA table_info(t)",
            "PRAGMA user_version",
            "WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 3) SELECT n FROM c",
        ] {
            assert!(db.prepare(sql).is_ok(), "{sql} is a read");
        }
        for sql in [
            "INSERT INTO t VALUES (2)",
            "CREATE TABLE u(y)",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT s",
            "PRAGMA user_version = 7",
            "PRAGMA query_only = 1",
            "PRAGMA optimize",
            "ANALYZE",
            "ATTACH ':memory:' AS o",
        ] {
            assert!(db.prepare(sql).is_err(), "{sql} is refused in a read scope");
        }
        drop(scope);
        db.execute_batch("INSERT INTO t VALUES (2); PRAGMA user_version = 7")
            .unwrap();
        let n: i64 = db
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn statements_are_kept_by_text_reused_and_finalized_before_the_connection_closes() {
        let db = Db::new(Connection::open_in_memory().unwrap());
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        const INSERT: &str = "INSERT INTO t VALUES (?1)";
        for x in 0..3 {
            db.exec(INSERT, [x]).unwrap();
        }
        assert_eq!(db.held.borrow().len(), 1, "one statement for one text");
        // A nested use of the same text works (a second statement for the while).
        const COUNT: &str = "SELECT count(*) FROM t";
        let n: i64 = db
            .with(COUNT, |outer| {
                let inner: i64 = db.with(COUNT, |s| s.query_row([], |r| r.get(0)))?;
                let again: i64 = outer.query_row([], |r| r.get(0))?;
                assert_eq!(inner, again);
                Ok(again)
            })
            .unwrap();
        assert_eq!(n, 3);
        assert_eq!(db.held.borrow().len(), 2);
        // Found by text, wherever it is.
        db.exec(&String::from(INSERT), [4]).unwrap();
        assert_eq!(db.held.borrow().len(), 2);
        // A failed preparation keeps nothing and says why.
        const BAD: &str = "SELECT * FROM missing";
        assert!(db.exec(BAD, []).is_err());
        assert_eq!(db.held.borrow().len(), 2);
        // A class's statements are kept apart, up to their own bound: SQL text built
        // per call fills those and leaves the runtime's alone.
        for x in 0..(USER_HELD_MAX as i64 + 5) {
            let sql = format!("INSERT INTO t VALUES ({x})");
            assert_eq!(db.exec_user(&sql, []).unwrap(), 1);
            assert_eq!(db.exec_user(&sql, []).unwrap(), 1);
        }
        assert_eq!(db.user_held.borrow().len(), USER_HELD_MAX);
        assert_eq!(db.held.borrow().len(), 2);
        // A kept statement forgets its values: unbound, a parameter reads NULL.
        const ECHO: &str = "SELECT ?1";
        let first: Option<String> = db
            .with(ECHO, |s| {
                s.raw_bind_parameter(1, "a large value")?;
                s.raw_query().next()?.unwrap().get(0)
            })
            .unwrap();
        assert_eq!(first.as_deref(), Some("a large value"));
        let again: Option<String> = db
            .with(ECHO, |s| s.raw_query().next()?.unwrap().get(0))
            .unwrap();
        assert_eq!(again, None);
        // Past the bound, statements go through rusqlite's cache.
        for i in 0..HELD_MAX + 4 {
            let n: i64 = db
                .with(&format!("SELECT {i}"), |s| s.query_row([], |r| r.get(0)))
                .unwrap();
            assert_eq!(n, i as i64);
        }
        assert_eq!(db.held.borrow().len(), HELD_MAX);
        // Texts alike in length and in their first and last 8 bytes are still told apart
        // (the key only spares comparing texts that differ there).
        let other = Db::new(Connection::open_in_memory().unwrap());
        let (one, two) = ("SELECT 1 + 10 AS value", "SELECT 1 + 20 AS value");
        assert_eq!(text_key(one), text_key(two));
        for (sql, expect) in [(one, 11), (two, 21), (one, 11), (two, 21)] {
            let n: i64 = other.with(sql, |s| s.query_row([], |r| r.get(0))).unwrap();
            assert_eq!(n, expect, "{sql}");
        }
        assert_eq!(other.held.borrow().len(), 2);
        // Texts shorter than a key's words: zero-padded, the length kept apart.
        assert_ne!(text_key(""), text_key("\0"));
        assert_ne!(text_key("ab"), text_key("ac"));
        assert_ne!(text_key("a"), text_key("a\0"));
        // Connections that keep one text share one copy of it.
        let third = Db::new(Connection::open_in_memory().unwrap());
        let _: i64 = third.with(one, |s| s.query_row([], |r| r.get(0))).unwrap();
        assert!(Arc::ptr_eq(
            &other.held.borrow().entries[0].sql,
            &third.held.borrow().entries[0].sql
        ));
        // Kept statements do not block a transaction's commit (they are reset).
        db.execute_batch("BEGIN").unwrap();
        db.exec(INSERT, [9]).unwrap();
        db.execute_batch("COMMIT").unwrap();
        // Dropping finalizes the statements, then closes the connection (a close with
        // live statements would be refused, and the connection leaked).
        drop(db);
    }
}
