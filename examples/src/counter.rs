//! A counter (seed 001's first object): one integer per object, stored in SQL,
//! cached in memory while the object is active.

use durable::{durable_object, Context, Error, ErrorKind, ReadContext};

/// A durable counter.
pub struct Counter {
    value: i64,
}

#[durable_object]
impl Counter {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        let sql = ctx.sql();
        sql.migrate(&[
            "CREATE TABLE counter(id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
             INSERT INTO counter VALUES (1, 0);",
        ])?;
        let value = sql.query_row("SELECT value FROM counter WHERE id = 1", [], |r| r.get(0))?;
        Ok(Counter { value })
    }

    /// Add `by` and return the new value.
    pub async fn increment(&mut self, ctx: &mut Context, by: i64) -> Result<i64, Error> {
        let value = self
            .value
            .checked_add(by)
            .ok_or_else(|| Error::new(ErrorKind::Invalid, "the counter would overflow"))?;
        ctx.sql()
            .execute("UPDATE counter SET value = ?1 WHERE id = 1", [value])?;
        self.value = value;
        Ok(value)
    }

    /// The current value.
    pub async fn get(&self, _ctx: &ReadContext) -> i64 {
        self.value
    }
}
