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

use durable::{durable_object, on_close, on_connect, on_message, Context, Error, Socket};
use serde::{Deserialize, Serialize};

/// How many recent lines a new socket gets.
pub const HISTORY: usize = 50;

/// Longest message a room accepts, in bytes.
pub const MAX_MESSAGE: usize = 4096;

/// The tag every socket of the room carries.
pub const ROOM_TAG: &str = "room";

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

/// The `user=` parameter of a query string, or `anonymous`.
fn user_of(query: &str) -> String {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("user="))
        .filter(|u| !u.is_empty() && u.len() <= 64)
        .unwrap_or("anonymous")
        .to_owned()
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
    pub async fn history(&self, ctx: &mut Context, limit: u32) -> Result<Vec<ChatLine>, Error> {
        let limit = (limit as usize).min(HISTORY) as i64;
        let mut lines = ctx.sql().query(
            "SELECT seq, user, text FROM lines ORDER BY seq DESC LIMIT ?1",
            [limit],
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

    /// Store a line from `user` and broadcast it to the room; returns its number.
    pub async fn post(
        &mut self,
        ctx: &mut Context,
        user: String,
        text: String,
    ) -> Result<i64, Error> {
        self.say(ctx, user, text)
    }

    /// A socket joins: tag it with the room, remember who it is, send it the history.
    #[on_connect]
    async fn join(&mut self, ctx: &mut Context, socket: Socket) -> Result<(), Error> {
        let user = user_of(socket.query());
        ctx.set_tags(socket.id(), [ROOM_TAG])?;
        ctx.set_attachment(socket.id(), Some(&Member { user }))?;
        for line in self.history(ctx, HISTORY as u32).await? {
            ctx.send(socket.id(), line.render());
        }
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

    /// A socket left: nothing to store (presence is the set of open sockets).
    #[on_close]
    async fn left(&mut self, _ctx: &mut Context, _socket: Socket, _code: u16, _reason: String) {}
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
        ctx.broadcast(ROOM_TAG, line.render());
        Ok(seq)
    }
}
