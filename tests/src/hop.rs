//! [`Hop`]: objects that call objects, for the tests of object-to-object calls (call
//! chains, cycles, deadlines, the output gate across a crash).

use durable::{durable_object, Client, ClientConfig, Context, Error, ErrorKind, ReadContext};

/// A hop in a chain of objects: relays calls along a path, and writes then tells
/// another object (on this host, or on the host named by `DURABLE_TEST_PEER`).
pub struct Hop;

/// The client to the peer host (`DURABLE_TEST_PEER=ADDR`, `DURABLE_TEST_PEER_DIR=DIR`
/// for its CA and token), connected on first use.
static PEER: tokio::sync::OnceCell<Option<Client>> = tokio::sync::OnceCell::const_new();

async fn peer() -> Result<Option<&'static Client>, Error> {
    let peer = PEER
        .get_or_try_init(|| async {
            let Ok(addr) = std::env::var("DURABLE_TEST_PEER") else {
                return Ok(None);
            };
            let dir = std::env::var("DURABLE_TEST_PEER_DIR")
                .map_err(|_| Error::msg("DURABLE_TEST_PEER_DIR is not set"))?;
            let addr = addr
                .parse()
                .map_err(|e| Error::msg(format!("DURABLE_TEST_PEER: {e}")))?;
            let config = ClientConfig::from_data_dir(addr, dir)
                .map_err(|e| Error::msg(format!("reading the peer's TLS files: {e}")))?;
            Client::connect(config)
                .await
                .map(Some)
                .map_err(|e| Error::msg(format!("connecting to the peer: {e}")))
        })
        .await?;
    Ok(peer.as_ref())
}

#[durable_object]
impl Hop {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql()
            .migrate(&["CREATE TABLE seen(n INTEGER PRIMARY KEY, how TEXT NOT NULL)"])?;
        Ok(Hop)
    }

    /// Call `relay` on the first object of `path` with the rest of it; the last one
    /// sleeps `sleep_ms` and records that it ran (as `n = -1`). Returns the names
    /// visited, this one first.
    pub async fn relay(
        &mut self,
        ctx: &mut Context,
        path: Vec<String>,
        sleep_ms: u64,
    ) -> Result<Vec<String>, Error> {
        let me = ctx.name().unwrap_or_default().to_owned();
        let Some((next, rest)) = path.split_first() else {
            if sleep_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(sleep_ms)).await;
            }
            ctx.sql()
                .execute("INSERT OR REPLACE INTO seen(n, how) VALUES (-1, 'ran')", [])?;
            return Ok(vec![me]);
        };
        let mut visited = ctx
            .object::<Hop>(next)
            .relay(rest.to_vec(), sleep_ms)
            .await?;
        visited.insert(0, me);
        Ok(visited)
    }

    /// Sleep `ms` in a turn (keeps the object busy).
    pub async fn busy(&mut self, _ctx: &mut Context, ms: u64) {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }

    /// Whether `relay` ran here as the end of a path.
    pub async fn ran(&mut self, ctx: &mut Context) -> Result<bool, Error> {
        Ok(ctx
            .sql()
            .query_opt("SELECT 1 FROM seen WHERE n = -1", [], |r| {
                r.get::<_, i64>(0)
            })?
            .is_some())
    }

    /// Write `n` here, then tell object `sink` about it (on the peer host if there is
    /// one), then write `n` again as told.
    pub async fn write_then_tell(
        &mut self,
        ctx: &mut Context,
        n: i64,
        sink: String,
    ) -> Result<(), Error> {
        ctx.sql()
            .execute("INSERT INTO seen(n, how) VALUES (?1, 'wrote')", [n])?;
        let stub = match peer().await? {
            Some(client) => ctx.object_via::<Hop>(client, &sink),
            None => ctx.object::<Hop>(&sink),
        };
        stub.record(n).await?;
        ctx.sql()
            .execute("UPDATE seen SET how = 'told' WHERE n = ?1", [n])?;
        Ok(())
    }

    /// Write `n`, call `sink`, then fail: the write before the call stays (the call
    /// committed it), the one after is rolled back.
    pub async fn write_tell_fail(
        &mut self,
        ctx: &mut Context,
        n: i64,
        sink: String,
    ) -> Result<(), Error> {
        ctx.sql()
            .execute("INSERT INTO seen(n, how) VALUES (?1, 'wrote')", [n])?;
        ctx.object::<Hop>(&sink).record(n).await?;
        ctx.sql()
            .execute("UPDATE seen SET how = 'told' WHERE n = ?1", [n])?;
        Err(Error::new(ErrorKind::Invalid, "failing after the call"))
    }

    /// Write `n` here, wait while `sink` sleeps `ms` (a call that writes nothing
    /// there), then mark `n` as told: the write before the call is made durable at the
    /// call, the one after with the rest of the batch.
    pub async fn write_wait_write(
        &mut self,
        ctx: &mut Context,
        n: i64,
        sink: String,
        ms: u64,
    ) -> Result<(), Error> {
        ctx.sql()
            .execute("INSERT INTO seen(n, how) VALUES (?1, 'wrote')", [n])?;
        ctx.object::<Hop>(&sink).busy(ms).await?;
        ctx.sql()
            .execute("UPDATE seen SET how = 'told' WHERE n = ?1", [n])?;
        Ok(())
    }

    /// How many numbers are recorded here. Read-only, so reentrant: a chain that
    /// comes back to this object while its turn waits may call it.
    pub async fn count(&self, ctx: &ReadContext) -> Result<i64, Error> {
        ctx.sql()
            .query_row("SELECT COUNT(*) FROM seen WHERE n >= 0", [], |r| r.get(0))
    }

    /// Write `n` here, then ask `via` to read this object's count back: a chain that
    /// returns to this object, on its read-only method.
    pub async fn write_then_ask(
        &mut self,
        ctx: &mut Context,
        n: i64,
        via: String,
    ) -> Result<i64, Error> {
        ctx.sql()
            .execute("INSERT INTO seen(n, how) VALUES (?1, 'wrote')", [n])?;
        let me = ctx.name().unwrap_or_default().to_owned();
        Ok(ctx.object::<Hop>(&via).count_of(me).await?)
    }

    /// Ask object `name` how many numbers it recorded.
    pub async fn count_of(&mut self, ctx: &mut Context, name: String) -> Result<i64, Error> {
        Ok(ctx.object::<Hop>(&name).count().await?)
    }

    /// Record that `n` was told.
    pub async fn record(&mut self, ctx: &mut Context, n: i64) -> Result<(), Error> {
        ctx.sql().execute(
            "INSERT OR IGNORE INTO seen(n, how) VALUES (?1, 'recorded')",
            [n],
        )?;
        Ok(())
    }

    /// Record that `n` was told, and push `n` to the stream `log`.
    pub async fn record_and_push(&mut self, ctx: &mut Context, n: i64) -> Result<(), Error> {
        self.record(ctx, n).await?;
        ctx.stream_push("log", &n)?;
        Ok(())
    }

    /// Every `(n, how)` recorded here, by `n`.
    pub async fn seen(&mut self, ctx: &mut Context) -> Result<Vec<(i64, String)>, Error> {
        ctx.sql()
            .query("SELECT n, how FROM seen WHERE n >= 0 ORDER BY n", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
    }
}
