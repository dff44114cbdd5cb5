//! [`Shelf`]: exercises the storage API (key-value listing with cursors, batch
//! deletes) and `ctx.transaction` sub-units that fail alone.

use durable::{durable_object, Context, Error, ErrorKind, ListOptions, ReadContext};

/// Key-value entries and a stock table.
pub struct Shelf;

/// A stock row, mapped by column name with `query_as`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StockRow {
    /// The item.
    pub item: String,
    /// How many.
    pub n: i64,
    /// A column the query may leave out (then `None`).
    #[serde(default)]
    pub note: Option<String>,
}

#[durable_object]
impl Shelf {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE stock(item TEXT PRIMARY KEY, n INTEGER NOT NULL CHECK (n >= 0));
             CREATE TABLE log(line TEXT NOT NULL);",
        ])?;
        Ok(Shelf)
    }

    /// Put `value` under each of `keys`.
    pub async fn put_all(
        &mut self,
        ctx: &mut Context,
        keys: Vec<String>,
        value: u32,
    ) -> Result<(), Error> {
        let storage = ctx.storage();
        keys.iter().try_for_each(|k| storage.put(k, &value))
    }

    /// One page of keys: those under `prefix`, after `start_after`, at most `limit`.
    pub async fn page(
        &self,
        ctx: &ReadContext,
        prefix: String,
        start_after: Option<String>,
        limit: u32,
        reverse: bool,
    ) -> Result<Vec<String>, Error> {
        let entries = ctx.storage().list::<u32>(&ListOptions {
            prefix: Some(&prefix),
            start_after: start_after.as_deref(),
            limit: Some(limit as usize),
            reverse,
            ..Default::default()
        })?;
        Ok(entries.into_iter().map(|(k, _)| k).collect())
    }

    /// Remove `keys`; returns how many were there.
    pub async fn remove(&mut self, ctx: &mut Context, keys: Vec<String>) -> Result<u32, Error> {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        Ok(ctx.storage().delete_many(&keys)? as u32)
    }

    /// Stock `n` of `item`.
    pub async fn stock(&mut self, ctx: &mut Context, item: String, n: i64) -> Result<(), Error> {
        ctx.sql().execute(
            "INSERT INTO stock(item, n) VALUES (?1, ?2) ON CONFLICT(item) DO UPDATE SET n = n + excluded.n",
            durable::rusqlite::params![item, n],
        )?;
        Ok(())
    }

    /// Take one of each of `items` as one sub-unit: all or none. Whatever happens,
    /// log the attempt (outside the sub-unit). Returns whether the take happened.
    pub async fn take(&mut self, ctx: &mut Context, items: Vec<String>) -> Result<bool, Error> {
        let taken = ctx.transaction(|ctx| {
            for item in &items {
                let changed = ctx
                    .sql()
                    .execute("UPDATE stock SET n = n - 1 WHERE item = ?1", [item]);
                match changed {
                    Ok(1) => {}
                    Ok(_) => return Err(Error::new(ErrorKind::NotFound, format!("no {item}"))),
                    Err(e) => return Err(e),
                }
                ctx.storage().put(&format!("took/{item}"), &1u32)?;
            }
            Ok(())
        });
        ctx.sql().execute(
            "INSERT INTO log(line) VALUES (?1)",
            [format!(
                "{} {}",
                items.join(","),
                if taken.is_ok() { "ok" } else { "refused" }
            )],
        )?;
        Ok(taken.is_ok())
    }

    /// Every stock row, by item, mapped by column name.
    pub async fn rows(&self, ctx: &ReadContext) -> Result<Vec<StockRow>, Error> {
        ctx.sql()
            .query_as("SELECT item, n FROM stock ORDER BY item", [])
    }

    /// One stock row with a renamed column, or none.
    pub async fn row(&self, ctx: &ReadContext, item: String) -> Result<Option<StockRow>, Error> {
        ctx.sql().query_opt_as(
            "SELECT item, n, 'counted' AS note FROM stock WHERE item = ?1",
            [item],
        )
    }

    /// A query whose columns do not fit [`StockRow`] (no `n`).
    pub async fn misfit(&self, ctx: &ReadContext) -> Result<Vec<StockRow>, Error> {
        ctx.sql().query_as("SELECT item FROM stock", [])
    }

    /// (stock of `item`, log lines, keys under `took/`).
    pub async fn state(
        &self,
        ctx: &ReadContext,
        item: String,
    ) -> Result<(i64, Vec<String>, Vec<String>), Error> {
        let n = ctx
            .sql()
            .query_opt("SELECT n FROM stock WHERE item = ?1", [item], |r| r.get(0))?
            .unwrap_or(0);
        let log = ctx
            .sql()
            .query("SELECT line FROM log ORDER BY rowid", [], |r| r.get(0))?;
        let took = ctx
            .storage()
            .list::<u32>(&ListOptions {
                prefix: Some("took/"),
                ..Default::default()
            })?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        Ok((n, log, took))
    }
}
