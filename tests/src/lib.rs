//! Test classes for the cross-process tests: [`Probe`] writes, fails, panics and
//! sleeps on demand. The `durable-test-host` binary serves them next to every
//! example class.

mod hop;
mod ledger;
mod reader;
mod shelf;

pub use hop::Hop;
pub use ledger::Ledger;
pub use reader::Reader;
pub use shelf::{Shelf, StockRow};

use durable::{alarm, durable_object, Context, Error, ReadContext};
use std::time::{Duration, UNIX_EPOCH};

/// An object that does what a test tells it to.
pub struct Probe {
    /// Every alarm attempt this instance saw: (key, attempt, virtual time in ms).
    attempts: Vec<(String, u32, u64)>,
}

/// Orders alarm deliveries within one host process.
static RING_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[durable_object]
impl Probe {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE entries(key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
            "CREATE TABLE rings(key TEXT NOT NULL, attempt INTEGER NOT NULL, at_ms INTEGER NOT NULL, seq INTEGER NOT NULL)",
            "CREATE TABLE blobs(key TEXT PRIMARY KEY, data BLOB NOT NULL)",
        ])?;
        Ok(Probe {
            attempts: Vec::new(),
        })
    }

    /// Store `bytes` random bytes under `key` (replacing what was there): a change
    /// as large as the value in the log, whatever encodes it.
    pub async fn put_random(
        &mut self,
        ctx: &mut Context,
        key: String,
        bytes: u32,
    ) -> Result<(), Error> {
        ctx.sql().execute(
            "INSERT OR REPLACE INTO blobs(key, data) VALUES (?1, randomblob(?2))",
            durable::rusqlite::params![key, bytes],
        )?;
        Ok(())
    }

    /// Store `bytes` bytes of data under `key` (replacing what was there).
    pub async fn put_blob(
        &mut self,
        ctx: &mut Context,
        key: String,
        bytes: u32,
    ) -> Result<(), Error> {
        ctx.sql().execute(
            "INSERT OR REPLACE INTO blobs(key, data) VALUES (?1, zeroblob(?2))",
            durable::rusqlite::params![key, bytes],
        )?;
        Ok(())
    }

    /// Delete the blob under `key`; whether there was one.
    pub async fn delete_blob(&mut self, ctx: &mut Context, key: String) -> Result<bool, Error> {
        Ok(ctx
            .sql()
            .execute("DELETE FROM blobs WHERE key = ?1", [key])?
            > 0)
    }

    /// The keys of the stored blobs, in order.
    pub async fn blobs(&mut self, ctx: &mut Context) -> Result<Vec<String>, Error> {
        ctx.sql()
            .query("SELECT key FROM blobs ORDER BY key", [], |r| r.get(0))
    }

    /// Schedule the `ring` alarm under `key` at `at_ms` (ms since the epoch); its first
    /// `fail_first` attempts fail.
    pub async fn ring_at(
        &mut self,
        ctx: &mut Context,
        key: String,
        at_ms: u64,
        fail_first: u32,
    ) -> Result<(), Error> {
        Self::schedule_ring(
            ctx,
            UNIX_EPOCH + Duration::from_millis(at_ms),
            &key,
            key.clone(),
            fail_first,
        )
    }

    /// Schedule `ring` under `key` after `after_ms`.
    pub async fn ring_after(
        &mut self,
        ctx: &mut Context,
        key: String,
        after_ms: u64,
    ) -> Result<(), Error> {
        Self::schedule_ring(ctx, Duration::from_millis(after_ms), &key, key.clone(), 0)
    }

    /// Schedule `ring` under `key` every `period_ms`.
    pub async fn ring_every(
        &mut self,
        ctx: &mut Context,
        key: String,
        period_ms: u64,
    ) -> Result<(), Error> {
        Self::schedule_ring_every(ctx, Duration::from_millis(period_ms), &key, key.clone(), 0)
    }

    /// Schedule `count` rings keyed `r0..` all at `at_ms`.
    pub async fn ring_many_at(
        &mut self,
        ctx: &mut Context,
        count: u32,
        at_ms: u64,
    ) -> Result<(), Error> {
        for i in 0..count {
            let key = format!("r{i}");
            Self::schedule_ring(
                ctx,
                UNIX_EPOCH + Duration::from_millis(at_ms),
                &key,
                key.clone(),
                0,
            )?;
        }
        Ok(())
    }

    /// Cancel the ring under `key`.
    pub async fn unring(&mut self, ctx: &mut Context, key: String) -> Result<bool, Error> {
        Self::cancel_ring(ctx, &key)
    }

    /// Schedule a ring under `key`, then fail the call (the schedule must roll back).
    pub async fn ring_then_fail(&mut self, ctx: &mut Context, key: String) -> Result<(), Error> {
        Self::schedule_ring(ctx, Duration::from_millis(10), &key, key.clone(), 0)?;
        Err(Error::msg("failing after scheduling"))
    }

    /// Successful rings stored: (key, attempt, at_ms), in order.
    pub async fn rings(&self, ctx: &ReadContext) -> Result<Vec<(String, u32, u64)>, Error> {
        ctx.sql().query(
            "SELECT key, attempt, at_ms FROM rings ORDER BY rowid",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)),
        )
    }

    /// The process-wide delivery sequence numbers of the stored rings.
    pub async fn ring_seqs(&self, ctx: &ReadContext) -> Result<Vec<u64>, Error> {
        ctx.sql()
            .query("SELECT seq FROM rings ORDER BY rowid", [], |r| {
                Ok(r.get::<_, i64>(0)? as u64)
            })
    }

    /// Every ring attempt this instance saw, failed ones included. `&mut self`: it
    /// reports the writer's in-memory instance (a read-only `&self` method would run
    /// on a reader instance activated from storage, which keeps no attempts).
    pub async fn attempts(&mut self, _ctx: &mut Context) -> Vec<(String, u32, u64)> {
        self.attempts.clone()
    }

    /// Keys of pending alarms.
    pub async fn pending(&self, ctx: &ReadContext) -> Result<Vec<String>, Error> {
        Ok(ctx.pending_alarms()?.into_iter().map(|a| a.key).collect())
    }

    /// Erase the object.
    pub async fn wipe(&mut self, ctx: &mut Context) -> Result<(), Error> {
        ctx.delete_all()
    }

    #[alarm]
    async fn ring(&mut self, ctx: &mut Context, key: String, fail_first: u32) -> Result<(), Error> {
        let attempt = ctx.alarm_attempt().unwrap_or(0);
        let now = ms(ctx.now());
        self.attempts.push((key.clone(), attempt, now));
        // A ring keyed `slow:K` takes 1.5 s (a slow call, say) before it fails or rings.
        if key.starts_with("slow:") {
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        if attempt <= fail_first {
            return Err(Error::msg(format!("told to fail attempt {attempt}")));
        }
        // A ring keyed `cancel:K` cancels the ring under `K`, and one keyed `move:K`
        // moves it an hour on.
        if let Some(victim) = key.strip_prefix("cancel:") {
            Self::cancel_ring(ctx, victim)?;
        }
        if let Some(moved) = key.strip_prefix("move:") {
            Self::schedule_ring(ctx, Duration::from_secs(3600), moved, moved.to_string(), 0)?;
        }
        let seq = RING_SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as i64;
        ctx.sql().execute(
            "INSERT INTO rings(key, attempt, at_ms, seq) VALUES (?1, ?2, ?3, ?4)",
            durable::rusqlite::params![key, attempt, now as i64, seq],
        )?;
        Ok(())
    }

    /// Store `value` under `key`.
    pub async fn put(&mut self, ctx: &mut Context, key: String, value: i64) -> Result<(), Error> {
        ctx.sql().execute(
            "INSERT INTO entries(key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            durable::rusqlite::params![key, value],
        )?;
        Ok(())
    }

    /// The value under `key`.
    pub async fn get(&self, ctx: &ReadContext, key: String) -> Result<Option<i64>, Error> {
        ctx.sql()
            .query_opt("SELECT value FROM entries WHERE key = ?1", [key], |r| {
                r.get(0)
            })
    }

    /// Store `value` under `key`, then return the application's own error.
    pub async fn put_then_fail(
        &mut self,
        ctx: &mut Context,
        key: String,
        value: i64,
    ) -> Result<(), ProbeError> {
        self.put(ctx, key, value)
            .await
            .map_err(|e| ProbeError::Storage(e.message))?;
        Err(ProbeError::Refused { value })
    }

    /// Store `value` under `key`, then panic.
    pub async fn put_then_panic(
        &mut self,
        ctx: &mut Context,
        key: String,
        value: i64,
    ) -> Result<(), Error> {
        self.put(ctx, key, value).await?;
        panic!("probe told to panic after writing {value}");
    }

    /// A bookmark of the object's state now.
    pub async fn bookmark(&self, ctx: &ReadContext) -> Option<u64> {
        ctx.bookmark()
    }

    /// Restore the object to `bookmark` after this turn.
    pub async fn restore(&mut self, ctx: &mut Context, bookmark: u64) {
        ctx.restore_to(bookmark);
    }

    /// Ask to restore the object to `bookmark`, then return the application's error:
    /// the restore must not happen.
    pub async fn restore_then_fail(
        &mut self,
        ctx: &mut Context,
        bookmark: u64,
    ) -> Result<(), ProbeError> {
        ctx.restore_to(bookmark);
        Err(ProbeError::Refused { value: 0 })
    }

    /// Ask to restore the object to `bookmark`, then panic: the restore must not happen.
    pub async fn restore_then_panic(&mut self, ctx: &mut Context, bookmark: u64) {
        ctx.restore_to(bookmark);
        panic!("probe told to panic after asking for a restore to {bookmark}");
    }

    /// Hold the object for `millis` milliseconds.
    pub async fn sleep(&mut self, _ctx: &mut Context, millis: u64) {
        tokio::time::sleep(Duration::from_millis(millis)).await;
    }
}

/// The probe's own error type, to check it reaches callers intact.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum ProbeError {
    /// Refused on purpose after writing.
    #[error("refused {value}")]
    Refused {
        /// The value that was written and rolled back.
        value: i64,
    },
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(String),
}

/// Register the example classes and the test classes.
pub fn register_all(host: durable::Host) -> durable::Host {
    durable_examples::web::serve_pages(durable_examples::register_all(host))
        .register::<Probe>()
        .register::<Starter>()
        .register::<WsProbe>()
        .register::<Ledger>()
        .register::<Shelf>()
        .register::<StreamProbe>()
        .register::<Hop>()
        .register::<Reader>()
        .register::<Boots>()
}

/// An object whose constructor writes on every activation (it counts them): a read
/// that activates it must still log that write, once.
pub struct Boots;

#[durable_object]
impl Boots {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql()
            .migrate(&["CREATE TABLE activations(n INTEGER NOT NULL)"])?;
        ctx.sql()
            .execute("INSERT INTO activations(n) VALUES (1)", [])?;
        Ok(Boots)
    }

    /// How many times the object has been activated.
    pub async fn activations(&self, ctx: &ReadContext) -> Result<i64, Error> {
        ctx.sql()
            .query_row("SELECT count(*) FROM activations", [], |r| r.get(0))
    }
}

/// Stream test object: appends the items a call names to a stream (so that a test
/// knows exactly which items were acknowledged), or appends and then fails.
pub struct StreamProbe;

#[durable_object]
impl StreamProbe {
    fn activate(_ctx: &mut Context) -> Result<Self, Error> {
        Ok(StreamProbe)
    }

    /// Append `items` to `stream`; the last sequence number.
    pub async fn push(
        &mut self,
        ctx: &mut Context,
        stream: String,
        items: Vec<String>,
    ) -> Result<u64, Error> {
        let mut last = ctx.stream_open(&stream)?.last_seq;
        for item in &items {
            last = ctx.stream_push(&stream, item)?;
        }
        Ok(last)
    }

    /// Append `item` to `stream`, then fail: the item must never be seen.
    pub async fn push_and_fail(
        &mut self,
        ctx: &mut Context,
        stream: String,
        item: String,
    ) -> Result<u64, Error> {
        ctx.stream_push(&stream, &item)?;
        Err(Error::msg("failing after the push"))
    }

    /// End `stream`.
    pub async fn end(&mut self, ctx: &mut Context, stream: String) -> Result<u64, Error> {
        ctx.stream_end(&stream)
    }

    /// Delete `stream` and its items; whether it existed.
    pub async fn delete(&mut self, ctx: &mut Context, stream: String) -> Result<bool, Error> {
        ctx.stream_delete(&stream)
    }

    /// Delete `stream`, then call object `other` of this class (which makes the
    /// deletion durable: an outgoing call is a commit point), then fail: the deletion
    /// stands, the rest of the turn is rolled back.
    pub async fn delete_call_fail(
        &mut self,
        ctx: &mut Context,
        stream: String,
        other: String,
    ) -> Result<bool, Error> {
        ctx.stream_delete(&stream)?;
        call_out_then_fail(ctx, &other).await
    }

    /// End `stream`, then call object `other` of this class (a commit point: the end
    /// stands), then fail.
    pub async fn end_call_fail(
        &mut self,
        ctx: &mut Context,
        stream: String,
        other: String,
    ) -> Result<u64, Error> {
        ctx.stream_end(&stream)?;
        call_out_then_fail(ctx, &other).await
    }

    /// Schedule `end_later` at once: an alarm whose handler ends `stream`, calls
    /// object `other` (a commit point: the end stands), then fails.
    pub async fn end_by_alarm(
        &mut self,
        ctx: &mut Context,
        stream: String,
        other: String,
    ) -> Result<(), Error> {
        Self::schedule_end_later(ctx, Duration::ZERO, "end", stream, other)
    }

    #[alarm]
    async fn end_later(
        &mut self,
        ctx: &mut Context,
        stream: String,
        other: String,
    ) -> Result<(), Error> {
        ctx.stream_end(&stream)?;
        call_out_then_fail(ctx, &other).await
    }

    /// Create the file `signal` (so that a test knows the turn runs), then hold the
    /// object for `millis` milliseconds (calls queue behind it, and run next as one
    /// batch).
    pub async fn hold(
        &mut self,
        _ctx: &mut Context,
        signal: String,
        millis: u64,
    ) -> Result<(), Error> {
        std::fs::write(&signal, b"held").map_err(|e| Error::msg(e.to_string()))?;
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        Ok(())
    }

    /// Erase the object, its streams included.
    pub async fn wipe(&mut self, ctx: &mut Context) -> Result<(), Error> {
        ctx.delete_all()
    }

    /// Delete `stream` and start a new one of its name with `items`, in one turn; the
    /// new stream's last sequence number.
    pub async fn reset(
        &mut self,
        ctx: &mut Context,
        stream: String,
        items: Vec<String>,
    ) -> Result<u64, Error> {
        ctx.stream_delete(&stream)?;
        let mut last = ctx.stream_open(&stream)?.last_seq;
        for item in &items {
            last = ctx.stream_push(&stream, item)?;
        }
        Ok(last)
    }
}

/// Call StreamProbe `other` (an outgoing call: a commit point of the turn, which makes
/// its writes so far durable), then fail.
async fn call_out_then_fail<T>(ctx: &mut Context, other: &str) -> Result<T, Error> {
    ctx.object::<StreamProbe>(other)
        .push("elsewhere".into(), vec!["x".into()])
        .await?;
    Err(Error::msg("failing after the call"))
}

/// WebSocket test object: every socket is tagged `all`. `boot` broadcasts
/// `boot:N`, N the number of times the object was activated (to see an eviction). A text message `fail:X`
/// broadcasts `X` and then fails its turn (so `X` must never arrive); `flood:N:SIZE`
/// broadcasts `N` messages of `SIZE` bytes in one turn; `ping` is answered `pong`
/// by the gateway (an auto-response: it never reaches the object); `kick:N` sends this
/// socket `k0` .. `kN-1` and then closes it (code 4000, `kicked`) in the same turn;
/// `sleep:MS` keeps its turn busy MS milliseconds, then broadcasts `slept`;
/// anything else is broadcast as is. When a socket leaves, the others get `left:CODE`.
pub struct WsProbe {
    boot: i64,
}

#[durable_object]
impl WsProbe {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql()
            .migrate(&["CREATE TABLE boots(n INTEGER NOT NULL)"])?;
        ctx.sql().execute("INSERT INTO boots(n) VALUES (1)", [])?;
        let boot = ctx
            .sql()
            .query_row("SELECT count(*) FROM boots", [], |r| r.get(0))?;
        Ok(WsProbe { boot })
    }

    /// Every socket joins `all`; `ping` is answered `pong` by the gateway.
    #[durable::on_connect]
    async fn join(&mut self, ctx: &mut Context, socket: durable::Socket) -> Result<(), Error> {
        ctx.set_auto_response(Some(("ping", "pong")))?;
        ctx.set_tags(socket.id(), ["all"])
    }

    /// See the type's docs.
    #[durable::on_message]
    async fn message(
        &mut self,
        ctx: &mut Context,
        socket: durable::Socket,
        text: String,
    ) -> Result<(), ProbeError> {
        if let Some(ms) = text.strip_prefix("sleep:") {
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
            ctx.broadcast("all", "slept");
            return Ok(());
        }
        if let Some(n) = text.strip_prefix("kick:") {
            for i in 0..n.parse().unwrap_or(0) {
                ctx.send(socket.id(), format!("k{i}"));
            }
            ctx.close(socket.id(), 4000, "kicked");
            return Ok(());
        }
        if text == "boot" {
            ctx.broadcast("all", format!("boot:{}", self.boot));
            return Ok(());
        }
        if let Some(x) = text.strip_prefix("fail:") {
            ctx.broadcast("all", x);
            return Err(ProbeError::Refused { value: 0 });
        }
        if let Some(spec) = text.strip_prefix("flood:") {
            let (n, size) = spec.split_once(':').unwrap_or((spec, "1"));
            let (n, size): (usize, usize) = (n.parse().unwrap_or(0), size.parse().unwrap_or(1));
            for i in 0..n {
                let mut m = format!("{i}:");
                m.extend(std::iter::repeat_n('x', size.saturating_sub(m.len())));
                ctx.broadcast("all", m);
            }
            return Ok(());
        }
        ctx.broadcast("all", text);
        Ok(())
    }

    /// A socket left: tell the others `left:CODE`.
    #[durable::on_close]
    async fn left(
        &mut self,
        ctx: &mut Context,
        socket: durable::Socket,
        code: u16,
        _reason: String,
    ) {
        assert!(
            ctx.socket(socket.id()).is_none(),
            "a socket that left is not listed"
        );
        ctx.broadcast("all", format!("left:{code}"));
    }
}

/// An object whose constructor schedules an alarm the first time it is activated.
pub struct Starter;

#[durable_object]
impl Starter {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql()
            .migrate(&["CREATE TABLE boots(at_ms INTEGER NOT NULL)"])?;
        let booted: i64 = ctx
            .sql()
            .query_row("SELECT count(*) FROM boots", [], |r| r.get(0))?;
        if booted == 0 && ctx.pending_alarms()?.is_empty() {
            Self::schedule_boot(ctx, Duration::from_secs(1), "boot")?;
        }
        Ok(Starter)
    }

    /// How many times the `boot` alarm ran.
    pub async fn boots(&self, ctx: &ReadContext) -> Result<i64, Error> {
        ctx.sql()
            .query_row("SELECT count(*) FROM boots", [], |r| r.get(0))
    }

    #[alarm]
    async fn boot(&mut self, ctx: &mut Context) -> Result<(), Error> {
        let now = ms(ctx.now()) as i64;
        ctx.sql()
            .execute("INSERT INTO boots(at_ms) VALUES (?1)", [now])?;
        Ok(())
    }
}
