//! [`Reader`]: a class for the read-only handler tests: a write that can hold its turn
//! open (sleeping inside it), reads from SQL and from the instance, a read that tries
//! to write through the raw connection, and one that panics.

use durable::{durable_object, Context, Error, ErrorKind, ReadContext};
use std::time::Duration;

/// One integer in SQL, cached in memory.
pub struct Reader {
    value: i64,
}

#[durable_object]
impl Reader {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        let sql = ctx.sql();
        sql.migrate(&[
            "CREATE TABLE v(id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL);
             INSERT INTO v VALUES (1, 0);",
        ])?;
        let value = sql.query_row("SELECT n FROM v WHERE id = 1", [], |r| r.get(0))?;
        Ok(Reader { value })
    }

    /// Add `by`, then hold the turn open for `hold_ms` before it returns (and commits).
    pub async fn add(&mut self, ctx: &mut Context, by: i64, hold_ms: u64) -> Result<i64, Error> {
        let value = self.value + by;
        ctx.sql()
            .execute("UPDATE v SET n = ?1 WHERE id = 1", [value])?;
        if hold_ms > 0 {
            tokio::time::sleep(Duration::from_millis(hold_ms)).await;
        }
        self.value = value;
        Ok(value)
    }

    /// The stored value.
    pub async fn stored(&self, ctx: &ReadContext) -> Result<i64, Error> {
        ctx.sql()
            .query_row("SELECT n FROM v WHERE id = 1", [], |r| r.get(0))
    }

    /// The value the instance holds.
    pub async fn cached(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }

    /// Try to write through the raw connection; the error SQLite gives.
    pub async fn sneak(&self, ctx: &ReadContext) -> Result<String, Error> {
        match ctx
            .sql()
            .connection()
            .execute("UPDATE v SET n = n + 1000 WHERE id = 1", [])
        {
            Ok(n) => Err(Error::new(
                ErrorKind::Invalid,
                format!("a read-only handler wrote {n} rows"),
            )),
            Err(e) => Ok(e.to_string()),
        }
    }

    /// Try to write through a query (`UPDATE ... RETURNING`); the error it gets.
    pub async fn sneak_query(&self, ctx: &ReadContext) -> Result<String, Error> {
        match ctx.sql().query_row(
            "UPDATE v SET n = n + 1000 WHERE id = 1 RETURNING n",
            [],
            |r| r.get::<_, i64>(0),
        ) {
            Ok(n) => Err(Error::new(
                ErrorKind::Invalid,
                format!("a read-only handler wrote n = {n}"),
            )),
            Err(e) => Ok(e.to_string()),
        }
    }

    /// Run `sql` through a read-only query; the error it gets, or "ran".
    pub async fn try_sql(&self, ctx: &ReadContext, sql: String) -> Result<String, Error> {
        match ctx.sql().query_opt(&sql, [], |_| Ok(())) {
            Ok(_) => Ok("ran".into()),
            Err(e) => Ok(e.to_string()),
        }
    }

    /// Panic.
    pub async fn boom(&self, _ctx: &ReadContext) -> i64 {
        panic!("boom in a read")
    }
}
