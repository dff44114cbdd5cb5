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
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// A connection and the runtime statements prepared on it. Dereferences to the
/// [`Connection`] for everything else.
pub(crate) struct Db {
    /// Declared before `conn`: every statement is finalized before the connection
    /// closes (SQLite refuses to close a connection with live statements).
    held: RefCell<Vec<Held>>,
    /// Boxed so that its address, which the held statements borrow, never moves
    /// (also if the `Db` itself is moved with statements in `held`).
    conn: Box<Connection>,
    /// On while a read-only method runs on this connection (see [`Db::read_scope`]).
    read_scope: Arc<AtomicBool>,
}

/// Most statement texts a [`Db`] keeps; others go through rusqlite's cache.
const HELD_MAX: usize = 24;

struct Held {
    sql: Box<str>,
    /// `None` while lent out.
    stmt: Option<Statement<'static>>,
}

impl Db {
    pub(crate) fn new(mut conn: Connection) -> Db {
        let read_scope = Arc::new(AtomicBool::new(false));
        let scope = read_scope.clone();
        // Installed once, on a connection with no statements yet (installing one
        // expires every prepared statement).
        let installed = conn.authorizer(Some(move |ctx: AuthContext<'_>| {
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
            held: RefCell::new(Vec::new()),
            conn: Box::new(conn),
            read_scope,
        }
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
        let same = |h: &&mut Held| h.sql.len() == sql.len() && *h.sql == *sql;
        let taken = {
            let mut held = self.held.borrow_mut();
            let full = held.len() >= HELD_MAX;
            match held.iter_mut().find(same) {
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
                // moves) and outlives every statement in `held` (field order). The
                // statement is lent out only to `f`, for a lifetime `f` cannot name,
                // and is either put back into `held` or dropped here.
                unsafe { std::mem::transmute::<Statement<'_>, Statement<'static>>(stmt) }
            }
        };
        let result = f(&mut stmt);
        // As rusqlite's cache does: a kept statement holds no copy of its last values
        // (a value of megabytes, or a named parameter the next use leaves unbound).
        stmt.clear_bindings();
        let mut held = self.held.borrow_mut();
        let room = held.len() < HELD_MAX;
        match held.iter_mut().find(same) {
            Some(h) if h.stmt.is_none() => h.stmt = Some(stmt),
            None if room => held.push(Held {
                sql: sql.into(),
                stmt: Some(stmt),
            }),
            _ => drop(stmt),
        }
        result
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
        // Kept statements do not block a transaction's commit (they are reset).
        db.execute_batch("BEGIN").unwrap();
        db.exec(INSERT, [9]).unwrap();
        db.execute_batch("COMMIT").unwrap();
        // Dropping finalizes the statements, then closes the connection (a close with
        // live statements would be refused, and the connection leaked).
        drop(db);
    }
}
