//! Test classes for the cross-process tests: [`Probe`] writes, fails, panics and
//! sleeps on demand. The `durable-test-host` binary serves them next to every
//! example class.

use durable::{durable_object, Context, Error};
use std::time::Duration;

/// An object that does what a test tells it to.
pub struct Probe;

#[durable_object]
impl Probe {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql()
            .migrate(&["CREATE TABLE entries(key TEXT PRIMARY KEY, value INTEGER NOT NULL)"])?;
        Ok(Probe)
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
    pub async fn get(&self, ctx: &mut Context, key: String) -> Result<Option<i64>, Error> {
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
    pub async fn bookmark(&self, ctx: &mut Context) -> Option<u64> {
        ctx.bookmark()
    }

    /// Restore the object to `bookmark` after this turn.
    pub async fn restore(&mut self, ctx: &mut Context, bookmark: u64) {
        ctx.restore_to(bookmark);
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
    durable_examples::register_all(host).register::<Probe>()
}
