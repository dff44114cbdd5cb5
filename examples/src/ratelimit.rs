//! A token-bucket rate limiter (seeds 001 and 002: "rate limiting at the edge", one
//! object per key, so every check for a key is serialized without locks).
//!
//! One [`RateLimiter`] object per limited key (a user, an API token, an IP address).
//! The bucket holds up to `capacity` tokens and refills continuously at `capacity`
//! tokens per `per_secs` seconds; each [`RateLimiter::hit`] takes one token or is
//! limited. Until [`RateLimiter::configure`] is called, a limiter allows
//! [`DEFAULT_CAPACITY`] hits per [`DEFAULT_PER_SECS`] seconds.
//!
//! The arithmetic is exact: the bucket counts *units*, where one token is `per_ms`
//! units and every millisecond adds `capacity` units, so no rounding ever leaks or
//! invents tokens. A limited hit writes nothing (the refill is a function of the
//! stored state and the time), so rejecting costs no disk sync.

use crate::sql::{int, uint};
use crate::time::millis;
use durable::rusqlite::params;
use durable::{durable_object, Context};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Tokens in a limiter that was never configured.
pub const DEFAULT_CAPACITY: u32 = 10;
/// The refill period of a limiter that was never configured, in seconds.
pub const DEFAULT_PER_SECS: u64 = 60;
/// The longest refill period: a week.
pub const MAX_PER_SECS: u64 = 7 * 24 * 3600;

/// The verdict on one hit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Go ahead; `remaining` whole tokens are left.
    Allowed {
        /// Whole tokens left after this hit.
        remaining: u32,
    },
    /// Too many hits; the next token arrives after `retry_after`.
    Limited {
        /// How long until a hit would be allowed.
        retry_after: Duration,
    },
}

/// Why a rate-limiter call failed; the call changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RateLimitError {
    /// The arguments make no sense.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The object's storage failed.
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<durable::Error> for RateLimitError {
    fn from(e: durable::Error) -> Self {
        RateLimitError::Storage(e.to_string())
    }
}

/// A bucket's configuration and fill at `last_ms`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: u32,
    per_ms: u64,
    /// The fill in units (one token = `per_ms` units) at `last_ms`.
    units: u64,
    last_ms: u64,
}

impl Bucket {
    fn full(capacity: u32, per_ms: u64, now: u64) -> Bucket {
        Bucket {
            capacity,
            per_ms,
            units: u64::from(capacity) * per_ms,
            last_ms: now,
        }
    }

    /// The bucket as of `now`: refilled for the time since `last_ms`, never past full.
    /// (A clock that went backwards refills nothing.)
    fn at(self, now: u64) -> Bucket {
        let full = u64::from(self.capacity) * self.per_ms;
        let elapsed = now.saturating_sub(self.last_ms);
        let units = u128::from(self.units) + u128::from(elapsed) * u128::from(self.capacity);
        Bucket {
            units: units.min(u128::from(full)) as u64,
            last_ms: now.max(self.last_ms),
            ..self
        }
    }

    fn tokens(&self) -> u32 {
        (self.units / self.per_ms) as u32
    }
}

/// The token bucket of one key.
pub struct RateLimiter {
    bucket: Bucket,
}

impl RateLimiter {
    fn save(ctx: &mut Context, b: &Bucket) -> Result<(), RateLimitError> {
        ctx.sql().execute(
            "INSERT OR REPLACE INTO bucket(id, capacity, per_ms, units, last_ms) VALUES (1, ?1, ?2, ?3, ?4)",
            params![b.capacity, int(b.per_ms), int(b.units), int(b.last_ms)],
        )?;
        Ok(())
    }
}

#[durable_object]
impl RateLimiter {
    fn activate(ctx: &mut Context) -> Result<Self, durable::Error> {
        let now = millis(ctx.now());
        let sql = ctx.sql();
        sql.migrate(&[
            "CREATE TABLE bucket(id INTEGER PRIMARY KEY CHECK (id = 1), capacity INTEGER NOT NULL,
             per_ms INTEGER NOT NULL, units INTEGER NOT NULL, last_ms INTEGER NOT NULL);",
        ])?;
        let stored = sql.query_opt(
            "SELECT capacity, per_ms, units, last_ms FROM bucket WHERE id = 1",
            [],
            |r| {
                Ok(Bucket {
                    capacity: r.get(0)?,
                    per_ms: uint(r, 1)?,
                    units: uint(r, 2)?,
                    last_ms: uint(r, 3)?,
                })
            },
        )?;
        // Never used: a full bucket with the defaults, written on the first hit.
        let bucket =
            stored.unwrap_or_else(|| Bucket::full(DEFAULT_CAPACITY, DEFAULT_PER_SECS * 1000, now));
        Ok(RateLimiter { bucket })
    }

    /// Allow `capacity` hits per `per_secs` seconds (1 to [`MAX_PER_SECS`]) from now
    /// on. The tokens in the bucket carry over, scaled to the new period and capped at
    /// the new capacity.
    pub async fn configure(
        &mut self,
        ctx: &mut Context,
        capacity: u32,
        per_secs: u64,
    ) -> Result<(), RateLimitError> {
        if capacity == 0 {
            return Err(RateLimitError::Invalid(
                "the capacity must be at least 1".into(),
            ));
        }
        if per_secs == 0 || per_secs > MAX_PER_SECS {
            return Err(RateLimitError::Invalid(format!(
                "the period lasts from 1 to {MAX_PER_SECS} seconds, not {per_secs}"
            )));
        }
        let now = millis(ctx.now());
        let old = self.bucket.at(now);
        let per_ms = per_secs * 1000;
        let full = u128::from(capacity) * u128::from(per_ms);
        let units = (u128::from(old.units) * u128::from(per_ms) / u128::from(old.per_ms)).min(full);
        let bucket = Bucket {
            capacity,
            per_ms,
            units: units as u64,
            last_ms: now.max(old.last_ms),
        };
        Self::save(ctx, &bucket)?;
        self.bucket = bucket;
        Ok(())
    }

    /// Take a token: [`Decision::Allowed`] with the tokens left, or
    /// [`Decision::Limited`] with the time until the next token.
    pub async fn hit(&mut self, ctx: &mut Context) -> Result<Decision, RateLimitError> {
        let now = millis(ctx.now());
        let bucket = self.bucket.at(now);
        if bucket.units < bucket.per_ms {
            // Nothing to store: the refill is recomputed from the stored state.
            let missing = bucket.per_ms - bucket.units;
            let wait_ms = missing.div_ceil(u64::from(bucket.capacity));
            return Ok(Decision::Limited {
                retry_after: Duration::from_millis(wait_ms),
            });
        }
        let bucket = Bucket {
            units: bucket.units - bucket.per_ms,
            ..bucket
        };
        Self::save(ctx, &bucket)?;
        self.bucket = bucket;
        Ok(Decision::Allowed {
            remaining: bucket.tokens(),
        })
    }
}
