//! Sessions that expire (seed 001: session storage with a time to live).
//!
//! A [`SessionStore`] object holds many sessions (one object per user, tenant or
//! shard of the key space: the name is the caller's choice). Each session is a value
//! in the object's key-value storage (`ctx.storage()`) with its expiry, plus an
//! `expire` alarm keyed by the session key that deletes it when its time is up.
//! [`SessionStore::touch`] slides the expiry and moves the alarm with it. Reads never
//! return a session past its expiry, even in the moment before its alarm has run.

use crate::time::{instant, millis};
use durable::{alarm, durable_object, Context, ListOptions, ReadContext};
use serde::{Deserialize, Serialize};

/// The longest session key, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// The longest time to live: 30 days.
pub const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

/// The prefix of session entries in the key-value storage.
const PREFIX: &str = "session/";

/// Why a session call failed; the call changed nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SessionError {
    /// The arguments make no sense (an empty or too long key, a zero or too long TTL).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The object's storage failed (a value too large, for one).
    #[error("storage failed: {0}")]
    Storage(String),
}

impl From<durable::Error> for SessionError {
    fn from(e: durable::Error) -> Self {
        SessionError::Storage(e.to_string())
    }
}

/// A stored session.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    value: String,
    expires_ms: u64,
}

fn check_key(key: &str) -> Result<(), SessionError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(SessionError::Invalid(format!(
            "a session key has 1 to {MAX_KEY_BYTES} bytes, not {}",
            key.len()
        )));
    }
    Ok(())
}

fn check_ttl(ttl_secs: u64) -> Result<(), SessionError> {
    if ttl_secs == 0 || ttl_secs > MAX_TTL_SECS {
        return Err(SessionError::Invalid(format!(
            "a time to live lasts from 1 to {MAX_TTL_SECS} seconds, not {ttl_secs}"
        )));
    }
    Ok(())
}

fn entry(key: &str) -> String {
    format!("{PREFIX}{key}")
}

/// A store of sessions, each with its own time to live. Holds nothing in memory:
/// every call reads the object's key-value storage.
pub struct SessionStore;

impl SessionStore {
    /// The live session under `key`, if any.
    fn live(ctx: &ReadContext, key: &str) -> Result<Option<Session>, SessionError> {
        let now = millis(ctx.now());
        let session: Option<Session> = ctx.storage().get(&entry(key))?;
        Ok(session.filter(|s| s.expires_ms > now))
    }

    /// Store `session` under `key` and (re)schedule its expiry.
    fn save(ctx: &mut Context, key: &str, session: &Session) -> Result<(), SessionError> {
        ctx.storage().put(&entry(key), session)?;
        Self::schedule_expire(ctx, instant(session.expires_ms), key, key.to_string())?;
        Ok(())
    }
}

#[durable_object]
impl SessionStore {
    fn activate(_ctx: &mut Context) -> Self {
        SessionStore
    }

    /// Store `value` under `key` for `ttl_secs` seconds (1 to [`MAX_TTL_SECS`]),
    /// replacing any session there.
    pub async fn put(
        &mut self,
        ctx: &mut Context,
        key: String,
        value: String,
        ttl_secs: u64,
    ) -> Result<(), SessionError> {
        check_key(&key)?;
        check_ttl(ttl_secs)?;
        let expires_ms = millis(ctx.now()) + ttl_secs * 1000;
        Self::save(ctx, &key, &Session { value, expires_ms })
    }

    /// The value of the live session under `key`; `None` if there is none or it has
    /// expired.
    pub async fn get(
        &self,
        ctx: &ReadContext,
        key: String,
    ) -> Result<Option<String>, SessionError> {
        check_key(&key)?;
        Ok(Self::live(ctx, &key)?.map(|s| s.value))
    }

    /// Keep the live session under `key` for `ttl_secs` seconds from now; returns
    /// `false` (and changes nothing) if there is no live session to touch.
    pub async fn touch(
        &mut self,
        ctx: &mut Context,
        key: String,
        ttl_secs: u64,
    ) -> Result<bool, SessionError> {
        check_key(&key)?;
        check_ttl(ttl_secs)?;
        let Some(mut session) = Self::live(ctx.as_read(), &key)? else {
            return Ok(false);
        };
        session.expires_ms = millis(ctx.now()) + ttl_secs * 1000;
        Self::save(ctx, &key, &session)?;
        Ok(true)
    }

    /// End the session under `key` now (a logout); returns whether a live one was
    /// there.
    pub async fn remove(&mut self, ctx: &mut Context, key: String) -> Result<bool, SessionError> {
        check_key(&key)?;
        let live = Self::live(ctx.as_read(), &key)?.is_some();
        ctx.storage().delete(&entry(&key))?;
        Self::cancel_expire(ctx, &key)?;
        Ok(live)
    }

    /// How many sessions are stored, counting an expired one whose alarm has not run
    /// yet (for tests and monitoring).
    pub async fn stored(&self, ctx: &ReadContext) -> Result<u64, SessionError> {
        let opts = ListOptions {
            prefix: Some(PREFIX),
            ..ListOptions::default()
        };
        let entries: Vec<(String, Session)> = ctx.storage().list(&opts)?;
        Ok(entries.len() as u64)
    }

    /// The `expire` alarm, keyed by the session key: deletes the session under `key`
    /// if it has expired. Idempotent: a session already gone, or kept alive since,
    /// is left alone.
    #[alarm]
    async fn expire(&mut self, ctx: &mut Context, key: String) -> Result<(), SessionError> {
        let Some(session) = ctx.storage().get::<Session>(&entry(&key))? else {
            return Ok(());
        };
        if session.expires_ms > millis(ctx.now()) {
            // Touched after this alarm was set (touching replaces the alarm, so this is
            // only a safety net): wait for the new expiry.
            Self::schedule_expire(ctx, instant(session.expires_ms), &key, key.clone())?;
            return Ok(());
        }
        ctx.storage().delete(&entry(&key))?;
        Ok(())
    }
}
