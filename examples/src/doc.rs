//! A collaborative text document over WebSockets (seed 001): one object per
//! document, which puts every edit in one order, transforms an edit made on an older
//! version against the edits it missed, stores the ordered log and the current text
//! in SQLite, and broadcasts each accepted edit with its version. Every tab applies
//! the same edits in the same order, so all tabs converge (operational
//! transformation, the Jupiter scheme: a client has at most one edit in flight).
//!
//! Connect with `GET /v1/objects/Document/{name}/ws?user=ada` (the page at `/doc/`
//! does). Messages are JSON text frames:
//!
//! - to the client, on connect: `{"type":"init","you":ID,"version":V,"text":T}`;
//! - from the client: `{"type":"edit","base":V,"op":OP}` where `OP` is
//!   `{"ins":{"pos":P,"text":S}}` or `{"del":{"pos":P,"len":N}}`, positions in
//!   Unicode scalar values of the text at version `V`;
//! - to every client, for each accepted edit: `{"type":"edit","version":V,"by":ID,"op":OP}`,
//!   `OP` as transformed onto version `V - 1` (the sender's own edit comes back as its
//!   acknowledgement);
//! - to the sender of an edit that cannot be applied (out of range, too large, older
//!   than the kept log): `{"type":"reject","reason":R}`; it then sends
//!   `{"type":"sync"}` and gets a fresh `init`.
//!
//! The text is also readable over HTTP or QUIC (`POST /v1/objects/Document/{name}/text`).

use durable::{durable_object, on_connect, on_message, Context, Error, ReadContext, Socket};
use serde::{Deserialize, Serialize};

/// Longest document, in Unicode scalar values.
pub const MAX_TEXT: usize = 100_000;

/// Largest insertion in one edit, in bytes.
pub const MAX_INSERT: usize = 16 * 1024;

/// How many recent edits the document keeps to transform late edits against; an
/// edit based on an older version is rejected (the client syncs).
pub const KEPT_EDITS: i64 = 1000;

/// The tag every socket of the document carries.
pub const DOC_TAG: &str = "doc";

/// One edit of the text: an insertion or a deletion, positions in Unicode scalar
/// values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// Insert `text` before the character at `pos`.
    Ins {
        /// Where.
        pos: u32,
        /// What.
        text: String,
    },
    /// Delete `len` characters from `pos`.
    Del {
        /// Where.
        pos: u32,
        /// How many.
        len: u32,
    },
}

impl Op {
    /// `self` rewritten to apply after `other`, when both were made on the same text.
    /// `self_first` says which of two insertions at one position goes first (the one
    /// ordered earlier by the document). An insertion inside a range another edit
    /// deleted is deleted too (it becomes empty), so both orders give one text.
    pub fn transform(&self, other: &Op, self_first: bool) -> Op {
        match (self, other) {
            (Op::Ins { pos, text }, Op::Ins { pos: q, text: u }) => {
                if pos < q || (pos == q && self_first) {
                    self.clone()
                } else {
                    Op::Ins {
                        pos: pos.saturating_add(chars(u)),
                        text: text.clone(),
                    }
                }
            }
            (Op::Ins { pos, text }, Op::Del { pos: q, len: n }) => {
                if pos <= q {
                    self.clone()
                } else if *pos >= q.saturating_add(*n) {
                    Op::Ins {
                        pos: pos - n,
                        text: text.clone(),
                    }
                } else {
                    Op::Ins {
                        pos: *q,
                        text: String::new(),
                    }
                }
            }
            (Op::Del { pos, len }, Op::Ins { pos: q, text: u }) => {
                if q <= pos {
                    Op::Del {
                        pos: pos.saturating_add(chars(u)),
                        len: *len,
                    }
                } else if *q >= pos.saturating_add(*len) {
                    self.clone()
                } else {
                    Op::Del {
                        pos: *pos,
                        len: len.saturating_add(chars(u)),
                    }
                }
            }
            (Op::Del { pos, len }, Op::Del { pos: q, len: m }) => {
                let (p, n, q, m) = (*pos, *len, *q, *m);
                let (end, other_end) = (p.saturating_add(n), q.saturating_add(m));
                let overlap = end.min(other_end).saturating_sub(p.max(q));
                let before = p.min(other_end).saturating_sub(q);
                Op::Del {
                    pos: p - before,
                    len: n - overlap,
                }
            }
        }
    }

    /// Whether the edit is small enough to consider at all (checked before it is
    /// transformed, so positions stay far from `u32::MAX`).
    pub fn check(&self) -> Result<(), String> {
        let (pos, len, bytes) = match self {
            Op::Ins { pos, text } => (*pos, 0, text.len()),
            Op::Del { pos, len } => (*pos, *len, 0),
        };
        if pos as usize > MAX_TEXT || len as usize > MAX_TEXT {
            return Err(format!("a document is at most {MAX_TEXT} characters"));
        }
        if bytes > MAX_INSERT {
            return Err(format!("an insert is at most {MAX_INSERT} bytes"));
        }
        Ok(())
    }

    /// Apply to `text`, or say why it does not fit.
    pub fn apply(&self, text: &mut Vec<char>) -> Result<(), String> {
        match self {
            Op::Ins { pos, text: t } => {
                let at = *pos as usize;
                if at > text.len() {
                    return Err(format!("insert at {at} past the end ({})", text.len()));
                }
                if t.len() > MAX_INSERT {
                    return Err(format!("an insert is at most {MAX_INSERT} bytes"));
                }
                if text.len() + t.chars().count() > MAX_TEXT {
                    return Err(format!("a document is at most {MAX_TEXT} characters"));
                }
                text.splice(at..at, t.chars());
            }
            Op::Del { pos, len } => {
                let (at, end) = (*pos as usize, *pos as usize + *len as usize);
                if end > text.len() {
                    return Err(format!("delete {at}..{end} past the end ({})", text.len()));
                }
                text.drain(at..end);
            }
        }
        Ok(())
    }
}

fn chars(s: &str) -> u32 {
    u32::try_from(s.chars().count()).unwrap_or(u32::MAX)
}

/// What a client sends.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum FromClient {
    Edit { base: i64, op: Op },
    Sync,
}

/// What a client receives.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ToClient<'a> {
    Init {
        you: u64,
        version: i64,
        text: &'a str,
    },
    Edit {
        version: i64,
        by: u64,
        op: &'a Op,
    },
    Reject {
        reason: &'a str,
    },
}

fn json(m: &ToClient<'_>) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string(m).unwrap_or_default()
}

/// A collaborative document.
pub struct Document {
    text: Vec<char>,
    version: i64,
}

#[durable_object]
impl Document {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE doc(id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL, text TEXT NOT NULL);
             INSERT INTO doc VALUES (1, 0, '');
             CREATE TABLE edits(version INTEGER PRIMARY KEY, op TEXT NOT NULL)",
        ])?;
        let (version, text): (i64, String) =
            ctx.sql()
                .query_row("SELECT version, text FROM doc", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        Ok(Document {
            text: text.chars().collect(),
            version,
        })
    }

    /// The current text and its version.
    pub async fn text(&self, _ctx: &ReadContext) -> Result<(i64, String), Error> {
        Ok((self.version, self.text.iter().collect()))
    }

    /// A socket joins: tag it and send it the text.
    #[on_connect]
    async fn join(&mut self, ctx: &mut Context, socket: Socket) -> Result<(), Error> {
        ctx.set_tags(socket.id(), [DOC_TAG])?;
        self.send_init(ctx, &socket);
        Ok(())
    }

    /// An edit or a sync request.
    #[on_message]
    async fn message(
        &mut self,
        ctx: &mut Context,
        socket: Socket,
        text: String,
    ) -> Result<(), Error> {
        let reject = |ctx: &mut Context, reason: &str| {
            ctx.send(socket.id(), json(&ToClient::Reject { reason }));
        };
        let (base, op) = match serde_json::from_str::<FromClient>(&text) {
            Ok(FromClient::Sync) => {
                self.send_init(ctx, &socket);
                return Ok(());
            }
            Ok(FromClient::Edit { base, op }) => (base, op),
            Err(e) => {
                reject(ctx, &format!("not a message: {e}"));
                return Ok(());
            }
        };
        if let Err(why) = op.check() {
            reject(ctx, &why);
            return Ok(());
        }
        if base > self.version || base < 0 {
            reject(ctx, "no such version");
            return Ok(());
        }
        if self.version - base > KEPT_EDITS {
            reject(ctx, "too old: sync");
            return Ok(());
        }
        // The edits this one missed, in order.
        let missed: Vec<String> = ctx.sql().query(
            "SELECT op FROM edits WHERE version > ?1 ORDER BY version",
            [base],
            |r| r.get(0),
        )?;
        if missed.len() as i64 != self.version - base {
            reject(ctx, "too old: sync");
            return Ok(());
        }
        let mut op = op;
        for m in &missed {
            let earlier: Op = serde_json::from_str(m)
                .map_err(|e| Error::msg(format!("a stored edit does not decode: {e}")))?;
            op = op.transform(&earlier, false);
        }
        let mut text = self.text.clone();
        if let Err(why) = op.apply(&mut text) {
            reject(ctx, &why);
            return Ok(());
        }
        let version = self.version + 1;
        let stored = serde_json::to_string(&op).map_err(|e| Error::msg(e.to_string()))?;
        let joined: String = text.iter().collect();
        ctx.sql().execute(
            "INSERT INTO edits(version, op) VALUES (?1, ?2)",
            (version, &stored),
        )?;
        ctx.sql().execute(
            "DELETE FROM edits WHERE version <= ?1",
            [version - KEPT_EDITS],
        )?;
        ctx.sql()
            .execute("UPDATE doc SET version = ?1, text = ?2", (version, &joined))?;
        ctx.broadcast(
            DOC_TAG,
            json(&ToClient::Edit {
                version,
                by: socket.id().0,
                op: &op,
            }),
        );
        self.text = text;
        self.version = version;
        Ok(())
    }
}

impl Document {
    fn send_init(&self, ctx: &mut Context, socket: &Socket) {
        let text: String = self.text.iter().collect();
        ctx.send(
            socket.id(),
            json(&ToClient::Init {
                you: socket.id().0,
                version: self.version,
                text: &text,
            }),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random_op(rng: &mut impl Rng, len: usize) -> Op {
        let pos = rng.gen_range(0..=len) as u32;
        if rng.gen_bool(0.5) || len == pos as usize {
            let text: String = (0..rng.gen_range(0..3))
                .map(|_| rng.gen_range(b'a'..=b'e') as char)
                .collect();
            Op::Ins { pos, text }
        } else {
            let len = rng.gen_range(0..=(len - pos as usize)) as u32;
            Op::Del { pos, len }
        }
    }

    /// Two edits made on one text, applied in either order (each transformed
    /// against the other), give one text.
    #[test]
    fn both_orders_converge() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let start: Vec<char> = (0..rng.gen_range(0..8))
                .map(|_| rng.gen_range(b'A'..=b'E') as char)
                .collect();
            let a = random_op(&mut rng, start.len());
            let b = random_op(&mut rng, start.len());
            // The document ordered `a` first: the server turns `b` into b', the client
            // that made `b` turns `a` into a'.
            let mut one = start.clone();
            a.apply(&mut one).unwrap();
            b.transform(&a, false).apply(&mut one).unwrap();
            let mut two = start.clone();
            b.apply(&mut two).unwrap();
            a.transform(&b, true).apply(&mut two).unwrap();
            assert_eq!(one, two, "{start:?} {a:?} {b:?}");
        }
    }

    #[test]
    fn edits_out_of_range_are_refused() {
        let mut text: Vec<char> = "abc".chars().collect();
        assert!(Op::Ins {
            pos: 4,
            text: "x".into()
        }
        .apply(&mut text)
        .is_err());
        assert!(Op::Del { pos: 2, len: 2 }.apply(&mut text).is_err());
        assert!(Op::Del {
            pos: u32::MAX,
            len: u32::MAX
        }
        .apply(&mut text)
        .is_err());
        Op::Ins {
            pos: 3,
            text: "é".into(),
        }
        .apply(&mut text)
        .unwrap();
        assert_eq!(text.iter().collect::<String>(), "abcé");
    }
}
