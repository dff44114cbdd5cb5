//! A chat room over WebSockets (seed 002): one object per room, its messages kept
//! in SQLite, every socket of the room tagged `room` and each message broadcast to
//! all of them. The room may be evicted while its sockets stay open (the gateway
//! holds them): the next message wakes it with every socket, tag and attachment
//! intact.
//!
//! Connect with `GET /v1/objects/ChatRoom/{room}/ws?user=alice`. On connect a
//! socket gets the recent history (up to [`HISTORY`] lines); each text message it
//! sends is stored and broadcast to the room as `alice: text`. The history is also
//! a remote method (`POST /v1/objects/ChatRoom/{room}/history`), and `post` sends a
//! message into the room from HTTP or QUIC.
//!
//! A socket opened with `&format=json` (the page at `/chat/` does) gets JSON instead
//! of plain lines, and presence: `{"type":"history","lines":[LINE...]}` on connect,
//! `{"type":"line","seq":N,"user":U,"text":T}` for each message, and
//! `{"type":"presence","users":[U...]}` whenever someone joins or leaves. Presence is
//! read from the sockets the gateway holds (their tags and attachments), so it needs
//! no table and survives the room's eviction.

use durable::{
    durable_object, on_close, on_connect, on_message, Context, Error, ReadContext, Socket,
};
use serde::{Deserialize, Serialize};

/// How many recent lines a new socket gets.
pub const HISTORY: usize = 50;

/// Longest message a room accepts, in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// The tag every socket of the room carries.
pub const ROOM_TAG: &str = "room";

/// The tag of sockets that get plain `user: text` lines.
pub const TEXT_TAG: &str = "text";

/// The tag of sockets that get JSON messages and presence (`format=json`).
pub const JSON_TAG: &str = "json";

/// One chat room.
pub struct ChatRoom;

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatLine {
    /// Its number in the room (from 1).
    pub seq: i64,
    /// Who sent it.
    pub user: String,
    /// What they said.
    pub text: String,
}

impl ChatLine {
    /// How sockets receive it: `user: text`.
    pub fn render(&self) -> String {
        format!("{}: {}", self.user, self.text)
    }
}

/// Who a socket is (its attachment).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Member {
    user: String,
}

/// What a JSON socket receives.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ToClient<'a> {
    History { lines: &'a [ChatLine] },
    Line(&'a ChatLine),
    Presence { users: Vec<String> },
}

fn json(m: &ToClient<'_>) -> String {
    // Serializing these plain structs cannot fail.
    serde_json::to_string(m).unwrap_or_default()
}

/// The `user=` parameter of a query string (percent-decoded, 1 to 64 bytes), or
/// `anonymous`.
fn user_of(query: &str) -> String {
    param(query, "user")
        .filter(|u| !u.is_empty() && u.len() <= 64 && !u.chars().any(char::is_control))
        .unwrap_or_else(|| "anonymous".to_owned())
}

/// Whether the socket asked for JSON (`format=json`).
fn wants_json(query: &str) -> bool {
    param(query, "format").as_deref() == Some("json")
}

/// The percent-decoded value of `key` in a query string; `None` if absent or not
/// UTF-8.
pub(crate) fn param(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?;
    let mut bytes = Vec::with_capacity(raw.len());
    let mut it = raw.bytes();
    while let Some(b) = it.next() {
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = [it.next()?, it.next()?];
                let hex = std::str::from_utf8(&hex).ok()?;
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).ok()
}

/// Who is in the room: the users of its open sockets (and `joining`, whose tags
/// this turn sets), sorted, each once.
fn presence(ctx: &ReadContext, joining: Option<&str>) -> Vec<String> {
    let mut users: Vec<String> = ctx
        .sockets(Some(ROOM_TAG))
        .iter()
        .filter_map(|s| s.attachment::<Member>())
        .map(|m| m.user)
        .chain(joining.map(str::to_owned))
        .collect();
    users.sort();
    users.dedup();
    users
}

#[durable_object]
impl ChatRoom {
    fn activate(ctx: &mut Context) -> Result<Self, Error> {
        ctx.sql().migrate(&[
            "CREATE TABLE lines(seq INTEGER PRIMARY KEY, user TEXT NOT NULL, text TEXT NOT NULL)",
        ])?;
        Ok(ChatRoom)
    }

    /// The last `limit` lines (at most [`HISTORY`]), oldest first.
    pub async fn history(&self, ctx: &ReadContext, limit: u32) -> Result<Vec<ChatLine>, Error> {
        let limit = (limit as usize).min(HISTORY);
        let mut lines = ctx.sql().query_limit(
            "SELECT seq, user, text FROM lines ORDER BY seq DESC",
            [],
            limit,
            |r| {
                Ok(ChatLine {
                    seq: r.get(0)?,
                    user: r.get(1)?,
                    text: r.get(2)?,
                })
            },
        )?;
        lines.reverse();
        Ok(lines)
    }

    /// Who is in the room: the users of its open sockets, sorted, each once.
    pub async fn here(&self, ctx: &ReadContext) -> Result<Vec<String>, Error> {
        Ok(presence(ctx, None))
    }

    /// Store a line from `user` and broadcast it to the room; returns its number.
    pub async fn post(
        &mut self,
        ctx: &mut Context,
        user: String,
        text: String,
    ) -> Result<i64, Error> {
        self.say(ctx, user, text)
    }

    /// A socket joins: tag it with the room, remember who it is, send it the history
    /// (and, for JSON sockets, tell the room who is here).
    #[on_connect]
    async fn join(&mut self, ctx: &mut Context, socket: Socket) -> Result<(), Error> {
        let user = user_of(socket.query());
        let as_json = wants_json(socket.query());
        let format = if as_json { JSON_TAG } else { TEXT_TAG };
        ctx.set_tags(socket.id(), [ROOM_TAG, format])?;
        let history = self.history(ctx.as_read(), HISTORY as u32).await?;
        if as_json {
            ctx.send(socket.id(), json(&ToClient::History { lines: &history }));
            let users = presence(ctx.as_read(), Some(&user));
            ctx.broadcast(JSON_TAG, json(&ToClient::Presence { users }));
        } else {
            for line in history {
                ctx.send(socket.id(), line.render());
            }
        }
        ctx.set_attachment(socket.id(), Some(&Member { user }))?;
        Ok(())
    }

    /// A socket speaks: store the line and broadcast it.
    #[on_message]
    async fn said(&mut self, ctx: &mut Context, socket: Socket, text: String) -> Result<(), Error> {
        let user = socket
            .attachment::<Member>()
            .map_or_else(|| "anonymous".to_owned(), |m| m.user);
        self.say(ctx, user, text).map(drop)
    }

    /// A socket left: nothing to store (presence is the set of open sockets); the
    /// JSON sockets learn who is still here.
    #[on_close]
    async fn left(&mut self, ctx: &mut Context, _socket: Socket, _code: u16, _reason: String) {
        if !ctx.sockets(Some(JSON_TAG)).is_empty() {
            let users = presence(ctx.as_read(), None);
            ctx.broadcast(JSON_TAG, json(&ToClient::Presence { users }));
        }
    }
}

impl ChatRoom {
    fn say(&mut self, ctx: &mut Context, user: String, text: String) -> Result<i64, Error> {
        if text.is_empty() || text.len() > MAX_MESSAGE {
            return Err(Error::msg(format!("a message is 1 to {MAX_MESSAGE} bytes")));
        }
        ctx.sql().execute(
            "INSERT INTO lines(user, text) VALUES (?1, ?2)",
            (&user, &text),
        )?;
        let seq: i64 = ctx
            .sql()
            .query_row("SELECT max(seq) FROM lines", [], |r| r.get(0))?;
        let line = ChatLine { seq, user, text };
        ctx.broadcast(TEXT_TAG, line.render());
        ctx.broadcast(JSON_TAG, json(&ToClient::Line(&line)));
        Ok(seq)
    }
}
