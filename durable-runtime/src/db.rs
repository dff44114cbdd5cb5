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

use rusqlite::{Connection, Params, PrepFlags, Statement};
use std::cell::RefCell;

/// A connection and the runtime statements prepared on it. Dereferences to the
/// [`Connection`] for everything else.
pub(crate) struct Db {
    /// Declared before `conn`: every statement is finalized before the connection
    /// closes (SQLite refuses to close a connection with live statements).
    held: RefCell<Vec<Held>>,
    /// Boxed so that its address, which the held statements borrow, never moves
    /// (also if the `Db` itself is moved with statements in `held`).
    conn: Box<Connection>,
}

/// Most statement texts a [`Db`] keeps; others go through rusqlite's cache.
const HELD_MAX: usize = 24;

struct Held {
    sql: Box<str>,
    /// `None` while lent out.
    stmt: Option<Statement<'static>>,
}

impl Db {
    pub(crate) fn new(conn: Connection) -> Db {
        Db {
            held: RefCell::new(Vec::new()),
            conn: Box::new(conn),
        }
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
