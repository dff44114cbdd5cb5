//! AI chat with a resumable reply (seed 000): one [`AiChat`] object per
//! conversation. [`AiChat::ask`] stores the prompt, starts a reply and answers at
//! once with the reply's stream; the reply is then produced by the object's own
//! `generate` alarm, a few tokens per turn at a steady rate (a deterministic text
//! generator stands in for the model), appended to the stream with
//! [`durable::Context::stream_push`]. Nothing waits on a client: the reply runs to
//! its end whether anyone watches or not.
//!
//! Watch it with `GET /v1/objects/AiChat/{conversation}/streams/reply-{id}` (server-
//! sent events, or a WebSocket), from the start or, after a dropped connection, from
//! the last sequence number seen (`?after=N` or `Last-Event-ID`). The page at `/ai/`
//! ([`PAGE`]) does exactly that and survives a reload mid-reply.

use durable::{alarm, durable_object, Context, Error, ErrorKind, ReadContext};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The page served at `/ai/` by the examples' host.
pub const PAGE: &str = include_str!("ai.html");

/// How often the generator runs while a reply is being produced.
pub const TICK: Duration = Duration::from_millis(100);

/// The default rate of a reply: about a hosted model's.
pub const TOKENS_PER_SECOND: u32 = 30;

/// The default length of a reply, in tokens.
pub const REPLY_TOKENS: u32 = 120;

/// Longest prompt, in bytes.
pub const MAX_PROMPT: usize = 4096;

/// Most tokens a reply may have.
pub const MAX_TOKENS: u32 = 100_000;

/// Fastest rate a reply may ask for, in tokens per second.
pub const MAX_RATE: u32 = 100_000;

/// One conversation.
pub struct AiChat;

/// A reply that was started: where to watch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Its number in the conversation (from 1).
    pub id: u64,
    /// The stream its tokens go to (`reply-{id}`).
    pub stream: String,
    /// How many tokens it will have.
    pub tokens: u32,
}

/// Where a reply stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyStatus {
    /// Its number in the conversation.
    pub id: u64,
    /// Its stream.
    pub stream: String,
    /// The prompt it answers.
    pub prompt: String,
    /// Tokens produced so far (the stream's last sequence number).
    pub produced: u32,
    /// Tokens it will have.
    pub tokens: u32,
    /// Whether it is complete (its stream ended).
    pub done: bool,
    /// The text produced so far.
    pub text: String,
}

/// The stream of reply `id`.
pub fn stream_of(id: u64) -> String {
    format!("reply-{id}")
}

const WORDS: &[&str] = &[
    "the",
    "object",
    "keeps",
    "its",
    "state",
    "in",
    "one",
    "SQLite",
    "file",
    "and",
    "answers",
    "each",
    "call",
    "after",
    "writes",
    "are",
    "durable",
    "so",
    "a",
    "reply",
    "survives",
    "dropped",
    "connections",
    "reloads",
    "restarts",
    "of",
    "host",
    "while",
    "tokens",
    "arrive",
    "order",
    "every",
    "client",
    "resumes",
    "from",
    "last",
    "sequence",
    "number",
    "it",
    "saw",
    "with",
    "nothing",
    "lost",
    "or",
    "repeated",
    "alarms",
    "drive",
    "generator",
    "at",
    "steady",
    "pace",
];

/// Token `i` (from 0) of the reply to `prompt`: a word chosen by a hash of the
/// prompt and `i`, with a leading space after the first and a full stop every so
/// often. The same prompt always gives the same reply.
pub fn token(prompt: &str, i: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in prompt.bytes().chain(i.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 29;
    let word = WORDS[(h % WORDS.len() as u64) as usize];
    let end = if (h >> 40) % 9 == 0 { "." } else { "" };
    if i == 0 {
        format!("{word}{end}")
    } else {
        format!(" {word}{end}")
    }
}

/// The first `n` tokens of the reply to `prompt`, as text.
pub fn text(prompt: &str, n: u32) -> String {
    (0..n).map(|i| token(prompt, i)).collect()
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Invalid, message)
}

#[durable_object]
impl AiChat {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE replies(id INTEGER PRIMARY KEY, prompt TEXT NOT NULL, tokens INTEGER NOT NULL,
               per_tick INTEGER NOT NULL, produced INTEGER NOT NULL DEFAULT 0)",
        ])?;
        Ok(AiChat)
    }

    /// Start a reply to `prompt` at the default rate and length; answers at once
    /// with the stream to watch.
    pub async fn ask(&mut self, ctx: &mut Context, prompt: String) -> Result<Reply, Error> {
        self.ask_with(ctx, prompt, REPLY_TOKENS, TOKENS_PER_SECOND)
            .await
    }

    /// Start a reply of `tokens` tokens at `tokens_per_second` (rounded to whole
    /// tokens per [`TICK`], at least one).
    pub async fn ask_with(
        &mut self,
        ctx: &mut Context,
        prompt: String,
        tokens: u32,
        tokens_per_second: u32,
    ) -> Result<Reply, Error> {
        if prompt.trim().is_empty() || prompt.len() > MAX_PROMPT {
            return Err(invalid(format!("a prompt is 1 to {MAX_PROMPT} bytes")));
        }
        if !(1..=MAX_TOKENS).contains(&tokens) {
            return Err(invalid(format!("a reply has 1 to {MAX_TOKENS} tokens")));
        }
        if !(1..=MAX_RATE).contains(&tokens_per_second) {
            return Err(invalid(format!(
                "the rate is 1 to {MAX_RATE} tokens per second"
            )));
        }
        let per_tick = (u128::from(tokens_per_second) * TICK.as_millis() / 1000).max(1) as i64;
        ctx.sql().execute(
            "INSERT INTO replies(prompt, tokens, per_tick) VALUES (?1, ?2, ?3)",
            (&prompt, tokens, per_tick),
        )?;
        let id: i64 = ctx
            .sql()
            .query_row("SELECT last_insert_rowid()", [], |r| r.get(0))?;
        let id = id as u64;
        ctx.stream_open(&stream_of(id))?;
        Self::schedule_generate(ctx, TICK, &id.to_string(), id)?;
        Ok(Reply {
            id,
            stream: stream_of(id),
            tokens,
        })
    }

    /// Where reply `id` stands, with its text so far.
    pub async fn reply(&self, ctx: &ReadContext, id: u64) -> Result<ReplyStatus, Error> {
        let row = ctx.sql().query_opt(
            "SELECT prompt, tokens, produced FROM replies WHERE id = ?1",
            [id as i64],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                ))
            },
        )?;
        let (prompt, tokens, produced) =
            row.ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no reply {id}")))?;
        let stream = stream_of(id);
        let done = ctx.stream_state(&stream)?.is_some_and(|s| s.ended);
        Ok(ReplyStatus {
            id,
            text: text(&prompt, produced),
            stream,
            prompt,
            produced,
            tokens,
            done,
        })
    }

    /// The replies of the conversation, oldest first.
    pub async fn replies(&self, ctx: &ReadContext) -> Result<Vec<ReplyStatus>, Error> {
        let ids: Vec<i64> = ctx
            .sql()
            .query("SELECT id FROM replies ORDER BY id", [], |r| r.get(0))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.reply(ctx, id as u64).await?);
        }
        Ok(out)
    }

    /// The generator: the next tokens of reply `id`, then the next tick (or the end).
    /// Every token of one tick is stored in this turn's transaction: one sync for all.
    #[alarm]
    async fn generate(&mut self, ctx: &mut Context, id: u64) -> Result<(), Error> {
        let row = ctx.sql().query_opt(
            "SELECT prompt, tokens, per_tick, produced FROM replies WHERE id = ?1",
            [id as i64],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, u32>(3)?,
                ))
            },
        )?;
        let Some((prompt, tokens, per_tick, produced)) = row else {
            return Ok(());
        };
        let stream = stream_of(id);
        let until = produced.saturating_add(per_tick).min(tokens);
        for i in produced..until {
            ctx.stream_push(&stream, &token(&prompt, i))?;
        }
        ctx.sql().execute(
            "UPDATE replies SET produced = ?2 WHERE id = ?1",
            (id as i64, until),
        )?;
        if until >= tokens {
            ctx.stream_end(&stream)?;
        } else {
            Self::schedule_generate(ctx, TICK, &id.to_string(), id)?;
        }
        Ok(())
    }
}

/// Serve [`AiChat`] and its page at `/ai/`.
pub fn register(host: durable::Host) -> durable::Host {
    host.register::<AiChat>().page("/ai/", PAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_deterministic() {
        assert_eq!(text("hi", 20), text("hi", 20));
        assert_ne!(text("hi", 20), text("ho", 20));
        assert!(text("hi", 5).starts_with(&token("hi", 0)));
        assert!(token("hi", 3).starts_with(' '));
    }
}
