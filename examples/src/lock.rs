//! A lock coordinator with leases (seed 001: distributed locks). One object per
//! lock name space; each lock is held by one owner until it releases it or its lease
//! runs out. An expired lease is free at once for the next caller (checked against
//! the clock on every call) and its row is removed by an alarm. Each grant carries a
//! fencing token that only grows, so a resource can refuse a stale holder.

use crate::time::{instant, millis};
use durable::{alarm, durable_object, Context, Error, ErrorKind, ReadContext};
use serde::{Deserialize, Serialize};

/// The longest lease, in milliseconds (one hour).
pub const MAX_LEASE_MS: u64 = 3_600_000;

/// A lock coordinator.
pub struct LockTable {
    fence: u64,
}

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The lock.
    pub lock: String,
    /// Who holds it.
    pub owner: String,
    /// When the lease runs out (ms since the epoch) unless renewed.
    pub expires_ms: u64,
    /// Larger than every token granted before it, for any lock of this table.
    pub fence: u64,
}

/// Why a lock call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum LockError {
    /// Someone else holds the lock until `expires_ms`.
    #[error("held by {owner} until {expires_ms}")]
    Held {
        /// The holder.
        owner: String,
        /// When its lease runs out.
        expires_ms: u64,
    },
    /// The caller does not hold the lock (it expired or was never taken).
    #[error("not held by the caller")]
    NotHeld,
    /// Bad arguments.
    #[error("invalid: {0}")]
    Invalid(String),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(String),
}

impl From<Error> for LockError {
    fn from(e: Error) -> Self {
        match e.kind {
            ErrorKind::Invalid => LockError::Invalid(e.message),
            _ => LockError::Storage(e.message),
        }
    }
}

impl LockTable {
    fn holder(ctx: &ReadContext, lock: &str, now: u64) -> Result<Option<Lease>, Error> {
        ctx.sql().query_opt(
            "SELECT owner, expires_ms, fence FROM locks WHERE lock = ?1 AND expires_ms > ?2",
            durable::rusqlite::params![lock, now as i64],
            |r| {
                Ok(Lease {
                    lock: lock.to_string(),
                    owner: r.get(0)?,
                    expires_ms: r.get::<_, i64>(1)? as u64,
                    fence: r.get::<_, i64>(2)? as u64,
                })
            },
        )
    }
}

#[durable_object]
impl LockTable {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        let sql = ctx.sql();
        sql.migrate(&[
            "CREATE TABLE locks(lock TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL, fence INTEGER NOT NULL);
             CREATE TABLE fence(id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
             INSERT INTO fence VALUES (1, 0);",
        ])?;
        let fence: i64 = sql.query_row("SELECT value FROM fence WHERE id = 1", [], |r| r.get(0))?;
        Ok(LockTable {
            fence: fence as u64,
        })
    }

    /// Take `lock` for `owner` for `lease_ms`, or renew it if `owner` holds it
    /// already (same fencing token). Fails with `Held` while another lease runs.
    pub async fn acquire(
        &mut self,
        ctx: &mut Context,
        lock: String,
        owner: String,
        lease_ms: u64,
    ) -> Result<Lease, LockError> {
        if lock.is_empty() || owner.is_empty() || lease_ms == 0 || lease_ms > MAX_LEASE_MS {
            return Err(LockError::Invalid(format!(
                "a lock and an owner are non-empty; a lease lasts 1 to {MAX_LEASE_MS} ms"
            )));
        }
        let now = millis(ctx.now());
        let fence = match Self::holder(ctx.as_read(), &lock, now)? {
            Some(held) if held.owner != owner => {
                return Err(LockError::Held {
                    owner: held.owner,
                    expires_ms: held.expires_ms,
                })
            }
            Some(mine) => mine.fence,
            None => {
                self.fence += 1;
                ctx.sql().execute(
                    "UPDATE fence SET value = ?1 WHERE id = 1",
                    [self.fence as i64],
                )?;
                self.fence
            }
        };
        let expires_ms = now + lease_ms;
        ctx.sql().execute(
            "INSERT INTO locks(lock, owner, expires_ms, fence) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(lock) DO UPDATE SET owner = excluded.owner, expires_ms = excluded.expires_ms, fence = excluded.fence",
            durable::rusqlite::params![lock, owner, expires_ms as i64, fence as i64],
        )?;
        Self::schedule_expire(ctx, instant(expires_ms), &lock, lock.clone())?;
        Ok(Lease {
            lock,
            owner,
            expires_ms,
            fence,
        })
    }

    /// Give `lock` back. Fails with `NotHeld` unless `owner` holds it now.
    pub async fn release(
        &mut self,
        ctx: &mut Context,
        lock: String,
        owner: String,
    ) -> Result<(), LockError> {
        let now = millis(ctx.now());
        match Self::holder(ctx.as_read(), &lock, now)? {
            Some(held) if held.owner == owner => {
                ctx.sql()
                    .execute("DELETE FROM locks WHERE lock = ?1", [&lock])?;
                Self::cancel_expire(ctx, &lock)?;
                Ok(())
            }
            _ => Err(LockError::NotHeld),
        }
    }

    /// Who holds `lock` now, if anyone.
    pub async fn holder_of(
        &self,
        ctx: &ReadContext,
        lock: String,
    ) -> Result<Option<Lease>, LockError> {
        let now = millis(ctx.now());
        Ok(Self::holder(ctx, &lock, now)?)
    }

    /// How many lock rows are stored (expired ones are removed by their alarm).
    pub async fn stored(&self, ctx: &ReadContext) -> Result<u64, LockError> {
        let n: i64 = ctx
            .sql()
            .query_row("SELECT count(*) FROM locks", [], |r| r.get(0))?;
        Ok(n as u64)
    }

    /// Remove `lock`'s row once its lease has run out (a renewal moved the alarm).
    #[alarm]
    async fn expire(&mut self, ctx: &mut Context, lock: String) -> Result<(), Error> {
        let now = millis(ctx.now());
        ctx.sql().execute(
            "DELETE FROM locks WHERE lock = ?1 AND expires_ms <= ?2",
            durable::rusqlite::params![lock, now as i64],
        )?;
        Ok(())
    }
}
