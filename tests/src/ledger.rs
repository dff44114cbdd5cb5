//! [`Ledger`]: a balance kept beside the entries that make it up, so a copy of the
//! object can be checked for consistency on its own (the balance equals the sum of
//! its entries), whenever it was taken.

use durable::{durable_object, Context, Error, ReadContext};

/// A balance and its entries.
pub struct Ledger {
    balance: i64,
}

#[durable_object]
impl Ledger {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        let sql = ctx.sql();
        sql.migrate(&[
            "CREATE TABLE entries(n INTEGER PRIMARY KEY, amount INTEGER NOT NULL);
             CREATE TABLE balance(id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
             INSERT INTO balance VALUES (1, 0);",
            "CREATE TABLE scratch(id INTEGER PRIMARY KEY, data BLOB NOT NULL)",
        ])?;
        let balance = sql.query_row("SELECT value FROM balance WHERE id = 1", [], |r| r.get(0))?;
        Ok(Ledger { balance })
    }

    /// Add an entry of `amount`; returns the new balance.
    pub async fn add(&mut self, ctx: &mut Context, amount: i64) -> Result<i64, Error> {
        let sql = ctx.sql();
        sql.execute("INSERT INTO entries(amount) VALUES (?1)", [amount])?;
        let balance = self.balance + amount;
        sql.execute("UPDATE balance SET value = ?1 WHERE id = 1", [balance])?;
        self.balance = balance;
        Ok(balance)
    }

    /// Add an entry of `amount`, then refuse it (the call fails with its write made).
    pub async fn add_then_refuse(&mut self, ctx: &mut Context, amount: i64) -> Result<i64, Error> {
        ctx.sql()
            .execute("INSERT INTO entries(amount) VALUES (?1)", [amount])?;
        Err(Error::msg(format!("refused {amount}")))
    }

    /// Add an index named `name` on the entries (a schema change in a call), then an
    /// entry of `amount`; returns the new balance.
    pub async fn index_and_add(
        &mut self,
        ctx: &mut Context,
        name: String,
        amount: i64,
    ) -> Result<i64, Error> {
        ctx.sql()
            .execute_batch(&format!("CREATE INDEX {name} ON entries(amount)"))?;
        self.add(ctx, amount).await
    }

    /// Add an index named `name` on the entries and nothing else (a call that changes
    /// the schema and no row).
    pub async fn index_only(&mut self, ctx: &mut Context, name: String) -> Result<(), Error> {
        ctx.sql()
            .execute_batch(&format!("CREATE INDEX {name} ON entries(amount)"))?;
        Ok(())
    }

    /// Note `key` in the key-value store (its first use creates the runtime's table).
    pub async fn note(&mut self, ctx: &mut Context, key: String) -> Result<(), Error> {
        ctx.storage().put(&key, &true)
    }

    /// Whether `key` was noted.
    pub async fn noted(&self, ctx: &ReadContext, key: String) -> Result<bool, Error> {
        Ok(ctx.storage().get::<bool>(&key)?.unwrap_or(false))
    }

    /// Put a row of four zero bytes in the scratch table.
    pub async fn scratch_put(&mut self, ctx: &mut Context) -> Result<(), Error> {
        ctx.sql()
            .execute("INSERT OR REPLACE INTO scratch VALUES (1, zeroblob(4))", [])?;
        Ok(())
    }

    /// Overwrite the scratch row's bytes with `byte` in place (an incremental blob
    /// write: SQLite counts no changed row).
    pub async fn scratch_write(&mut self, ctx: &mut Context, byte: u8) -> Result<(), Error> {
        let sql = ctx.sql();
        let mut blob =
            sql.connection()
                .blob_open(durable::rusqlite::MAIN_DB, "scratch", "data", 1, false)?;
        blob.write_at(&[byte; 4], 0)?;
        Ok(())
    }

    /// Add one to each of the scratch row's bytes in place (an incremental blob write),
    /// then, if `then_call` names one, call that Ledger (a commit point of the turn);
    /// the new first byte.
    pub async fn scratch_bump(
        &mut self,
        ctx: &mut Context,
        then_call: Option<String>,
    ) -> Result<u8, Error> {
        let byte = {
            let sql = ctx.sql();
            let mut blob = sql.connection().blob_open(
                durable::rusqlite::MAIN_DB,
                "scratch",
                "data",
                1,
                false,
            )?;
            let mut bytes = [0u8; 4];
            blob.read_at_exact(&mut bytes, 0)?;
            let byte = bytes[0].wrapping_add(1);
            blob.write_at(&[byte; 4], 0)?;
            byte
        };
        if let Some(other) = then_call {
            ctx.object::<Ledger>(&other).hold(0).await?;
        }
        Ok(byte)
    }

    /// The scratch row's bytes.
    pub async fn scratch(&self, ctx: &ReadContext) -> Result<Vec<u8>, Error> {
        ctx.sql()
            .query_row("SELECT data FROM scratch WHERE id = 1", [], |r| r.get(0))
    }

    /// Hold the object for `millis` milliseconds (calls queue behind it).
    pub async fn hold(&mut self, _ctx: &mut Context, millis: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
    }

    /// The names of the indexes on the entries, sorted.
    pub async fn indexes(&self, ctx: &ReadContext) -> Result<Vec<String>, Error> {
        ctx.sql().query(
            "SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = 'entries' \
             AND sql IS NOT NULL ORDER BY name",
            [],
            |r| r.get(0),
        )
    }

    /// (balance, sum of the entries, number of entries) as stored.
    pub async fn audit(&self, ctx: &ReadContext) -> Result<(i64, i64, i64), Error> {
        ctx.sql().query_row(
            "SELECT (SELECT value FROM balance WHERE id = 1), \
             (SELECT coalesce(sum(amount), 0) FROM entries), (SELECT count(*) FROM entries)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
    }
}
