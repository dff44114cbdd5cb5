//! WebSockets with hibernation: the sockets an object holds through the HTTP
//! gateway (`GET /v1/objects/{class}/{name}/ws`).
//!
//! The gateway owns the sockets, not the object: their ids, tags and attachments
//! live in the host's [`Registry`], so an object can be evicted while its sockets
//! stay open, and the next message activates it again with every socket intact.
//! Messages and closes reach the object as turns (`#[on_connect]`, `#[on_message]`,
//! `#[on_close]`, queued like calls); what a turn does to sockets
//! ([`crate::Context::send`], [`crate::Context::broadcast`], ...) is an effect of the
//! turn, released only once its batch is durable, in commit order, and dropped if the
//! turn fails. See `docs/gateway.md`.

use durable_client::ObjectId;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Largest attachment a socket may carry, in bytes (postcard-encoded).
pub const MAX_ATTACHMENT_BYTES: usize = 2048;

/// Largest query string of a socket's upgrade request, kept with the socket and handed
/// to every event of it (past it the upgrade is refused with `400`).
pub(crate) const MAX_QUERY_BYTES: usize = 2048;

/// Most tags a socket may carry.
pub const MAX_TAGS: usize = 16;

/// Longest tag, in bytes.
pub const MAX_TAG_BYTES: usize = 256;

/// Longest request or response of an auto-response pair
/// ([`crate::Context::set_auto_response`]), in bytes.
pub const MAX_AUTO_RESPONSE_BYTES: usize = 2048;

/// `reason` cut to what a close frame carries (123 bytes), at a character boundary:
/// a longer one would make the client fail the connection instead of reading the code.
pub(crate) fn close_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// Most WebSockets a host holds open by default ([`crate::Limits::max_sockets`]).
pub const DEFAULT_MAX_SOCKETS: usize = 16_384;

/// Messages that may wait to be written to one socket; past it the socket is closed
/// with [`CLOSE_SLOW_CLIENT`] (a slow client never stalls the object or other sockets).
pub const SEND_QUEUE: usize = 1024;

/// Close code of a socket whose client does not read fast enough (1008, policy
/// violation).
pub const CLOSE_SLOW_CLIENT: u16 = 1008;

/// Close code when the object refused the socket (its `#[on_connect]` failed), or a
/// message did not fit the handler (1008).
pub const CLOSE_REFUSED: u16 = 1008;

/// Close code when the object is overloaded or the host is shutting down (1013, try
/// again later).
pub const CLOSE_TRY_AGAIN: u16 = 1013;

/// Close code when the object's turn failed for another reason than its own error
/// (1011, internal error).
pub const CLOSE_INTERNAL: u16 = 1011;

/// Close code of a socket whose client answered none of the gateway's pings for two
/// ping intervals (1001, going away).
pub const CLOSE_NO_PONG: u16 = 1001;

/// A WebSocket's id: unique on this host while it runs (sockets do not survive a
/// restart of the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SocketId(pub u64);

impl std::fmt::Display for SocketId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ws-{}", self.0)
    }
}

/// A socket as a turn sees it: its id, tags, attachment and the query string of its
/// upgrade request, as the gateway's registry held them when the turn's event was
/// sent (or when [`crate::Context::sockets`] read them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    id: SocketId,
    tags: Vec<String>,
    attachment: Option<Vec<u8>>,
    query: String,
}

impl Socket {
    /// The socket's id (for [`crate::Context::send`] and [`crate::Context::close`]).
    pub fn id(&self) -> SocketId {
        self.id
    }

    /// Its tags, as set by [`crate::Context::set_tags`].
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// Whether it carries `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }

    /// Its attachment, as set by [`crate::Context::set_attachment`]: `None` if it has
    /// none or it does not decode as `T`.
    pub fn attachment<T: DeserializeOwned>(&self) -> Option<T> {
        postcard::from_bytes(self.attachment.as_deref()?).ok()
    }

    /// The query string of the upgrade request (`user=alice` for
    /// `.../ws?user=alice`), empty if none.
    pub fn query(&self) -> &str {
        &self.query
    }
}

/// A message a client sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WsMessage {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// What an `#[on_message]` handler's message argument may be: [`WsMessage`] (any
/// frame), `String` (text frames only) or `Vec<u8>` (any frame, text as UTF-8). A
/// frame that does not fit closes the socket with [`CLOSE_REFUSED`].
pub trait FromWsMessage: Sized {
    /// Convert, or say why not.
    fn from_ws(message: WsMessage) -> Result<Self, String>;
}

impl FromWsMessage for WsMessage {
    fn from_ws(message: WsMessage) -> Result<Self, String> {
        Ok(message)
    }
}

impl FromWsMessage for String {
    fn from_ws(message: WsMessage) -> Result<Self, String> {
        match message {
            WsMessage::Text(t) => Ok(t),
            WsMessage::Binary(_) => Err("this object takes text messages only".into()),
        }
    }
}

impl FromWsMessage for Vec<u8> {
    fn from_ws(message: WsMessage) -> Result<Self, String> {
        Ok(match message {
            WsMessage::Text(t) => t.into_bytes(),
            WsMessage::Binary(b) => b,
        })
    }
}

/// The handlers a class has (generated by `#[durable_object]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketHandlers {
    /// An `#[on_connect]` handler.
    pub connect: bool,
    /// An `#[on_message]` handler (without one the class takes no WebSockets).
    pub message: bool,
    /// An `#[on_close]` handler.
    pub close: bool,
}

/// A socket event, as the generated dispatch decodes it.
#[doc(hidden)]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SocketEvent {
    /// A client connected.
    Connect(Socket),
    /// A client sent a message.
    Message(Socket, WsMessage),
    /// A client closed its socket, or the connection ended (code, reason).
    Close(Socket, u16, String),
}

/// A frame to write to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
}

/// What a turn did to sockets, released with its batch's outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SocketOp {
    Send(SocketId, Outgoing),
    Broadcast(String, Outgoing),
    Close(SocketId, u16, String),
    SetTags(SocketId, Vec<String>),
    SetAttachment(SocketId, Option<Vec<u8>>),
    AutoResponse(Option<(String, String)>),
}

/// Why a socket is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) reason: String,
    /// The object closed it (`ctx.close`): its `#[on_close]` does not run.
    pub(crate) by_object: bool,
}

struct Entry {
    tags: Vec<String>,
    attachment: Option<Vec<u8>>,
    query: String,
    tx: mpsc::Sender<Outgoing>,
    /// Tells the socket's writer to close it (taken when it is sent).
    kill: Option<oneshot::Sender<Closing>>,
    /// Set once the socket is being closed: it is no longer listed or written to.
    closing: Option<Closing>,
}

impl Entry {
    fn socket(&self, id: SocketId) -> Socket {
        Socket {
            id,
            tags: self.tags.clone(),
            attachment: self.attachment.clone(),
            query: self.query.clone(),
        }
    }

    fn close(&mut self, closing: Closing) {
        if self.closing.is_none() {
            self.closing = Some(closing.clone());
            if let Some(kill) = self.kill.take() {
                let _ = kill.send(closing);
            }
        }
    }

    fn push(&mut self, id: SocketId, message: Outgoing) {
        if self.closing.is_some() {
            return;
        }
        match self.tx.try_send(message) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(socket = %id, "closing a WebSocket whose client does not read ({SEND_QUEUE} messages waiting)");
                self.close(Closing {
                    code: CLOSE_SLOW_CLIENT,
                    reason: format!("too slow: {SEND_QUEUE} messages waiting"),
                    by_object: false,
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// What the gateway hands a new socket's tasks.
pub(crate) struct Registered {
    pub(crate) id: SocketId,
    pub(crate) outgoing: mpsc::Receiver<Outgoing>,
    pub(crate) kill: oneshot::Receiver<Closing>,
}

type Key = (&'static str, ObjectId);

/// The host's open WebSockets, by object: the gateway adds and removes them, turns
/// read them and the output gate applies turns' socket effects to them.
pub(crate) struct Registry {
    objects: Mutex<HashMap<Key, HashMap<SocketId, Entry>>>,
    /// Objects' auto-response pairs (request text, response text), kept while the
    /// object has open sockets.
    auto: Mutex<HashMap<Key, (String, String)>>,
    next: AtomicU64,
    open: AtomicUsize,
    max: usize,
}

/// One open WebSocket that belongs to no object, counted in a [`Registry`]'s bound
/// until dropped.
pub(crate) struct HeldPlace(Arc<Registry>);

impl Drop for HeldPlace {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(DEFAULT_MAX_SOCKETS)
    }
}

impl Registry {
    /// A registry holding at most `max` sockets.
    pub(crate) fn new(max: usize) -> Self {
        Registry {
            objects: Mutex::default(),
            auto: Mutex::default(),
            next: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            max,
        }
    }

    /// Whether the host holds as many sockets as it may.
    pub(crate) fn is_full(&self) -> bool {
        self.open.load(Ordering::Relaxed) >= self.max
    }

    /// A new socket of an object, with no tags; `None` if the host holds as many
    /// sockets as it may.
    pub(crate) fn register(
        &self,
        class: &'static str,
        id: ObjectId,
        query: String,
    ) -> Option<Registered> {
        if !self.take_place() {
            return None;
        }
        let socket = SocketId(self.next.fetch_add(1, Ordering::Relaxed) + 1);
        let (tx, outgoing) = mpsc::channel(SEND_QUEUE);
        let (kill_tx, kill) = oneshot::channel();
        let entry = Entry {
            tags: Vec::new(),
            attachment: None,
            query,
            tx,
            kill: Some(kill_tx),
            closing: None,
        };
        self.lock()
            .entry((class, id))
            .or_default()
            .insert(socket, entry);
        Some(Registered {
            id: socket,
            outgoing,
            kill,
        })
    }

    /// Count one more open socket, unless the host holds as many as it may.
    fn take_place(&self) -> bool {
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// A place for a WebSocket that belongs to no object (a stream's follower),
    /// counted against the same bound as objects' sockets and given back when the
    /// [`HeldPlace`] drops; `None` if the host holds as many sockets as it may.
    pub(crate) fn hold_place(self: &Arc<Self>) -> Option<HeldPlace> {
        self.take_place().then(|| HeldPlace(self.clone()))
    }

    /// If `text` is the object's auto-response request, queue the response to the
    /// socket and answer true: the object is not asked.
    pub(crate) fn auto_respond(
        &self,
        class: &'static str,
        id: ObjectId,
        socket: SocketId,
        text: &str,
    ) -> bool {
        let response = match self.auto_lock().get(&(class, id)) {
            Some((request, response)) if request == text => response.clone(),
            _ => return false,
        };
        if let Some(e) = self
            .lock()
            .get_mut(&(class, id))
            .and_then(|s| s.get_mut(&socket))
        {
            e.push(socket, Outgoing::Text(response));
        }
        true
    }

    /// Forget a socket whose connection ended: the socket as it was, and why it was
    /// closed if the host or the object closed it.
    pub(crate) fn remove(
        &self,
        class: &'static str,
        id: ObjectId,
        socket: SocketId,
    ) -> Option<(Socket, Option<Closing>)> {
        let mut objects = self.lock();
        let sockets = objects.get_mut(&(class, id))?;
        let entry = sockets.remove(&socket)?;
        self.open.fetch_sub(1, Ordering::Relaxed);
        if sockets.is_empty() {
            objects.remove(&(class, id));
            self.auto_lock().remove(&(class, id));
        }
        Some((entry.socket(socket), entry.closing))
    }

    /// Close every socket (the host is stopping): 1001, going away.
    pub(crate) fn close_all(&self) {
        for sockets in self.lock().values_mut() {
            for e in sockets.values_mut() {
                e.close(Closing {
                    code: 1001,
                    reason: "the host is shutting down".into(),
                    by_object: false,
                });
            }
        }
    }

    /// Close a socket from the gateway (`by_object` false: `#[on_close]` runs).
    pub(crate) fn close(
        &self,
        class: &'static str,
        id: ObjectId,
        socket: SocketId,
        code: u16,
        reason: String,
    ) {
        if let Some(e) = self
            .lock()
            .get_mut(&(class, id))
            .and_then(|s| s.get_mut(&socket))
        {
            e.close(Closing {
                code,
                reason: close_reason(&reason).to_owned(),
                by_object: false,
            });
        }
    }

    /// One socket, if it is open.
    pub(crate) fn socket(
        &self,
        class: &'static str,
        id: ObjectId,
        socket: SocketId,
    ) -> Option<Socket> {
        let objects = self.lock();
        let e = objects.get(&(class, id))?.get(&socket)?;
        e.closing.is_none().then(|| e.socket(socket))
    }

    /// An object's open sockets (those carrying `tag`, if given), by id.
    pub(crate) fn list(&self, class: &'static str, id: ObjectId, tag: Option<&str>) -> Vec<Socket> {
        let objects = self.lock();
        let Some(sockets) = objects.get(&(class, id)) else {
            return Vec::new();
        };
        let mut listed: Vec<Socket> = sockets
            .iter()
            .filter(|(_, e)| e.closing.is_none())
            .filter(|(_, e)| tag.is_none_or(|t| e.tags.iter().any(|x| x == t)))
            .map(|(sid, e)| e.socket(*sid))
            .collect();
        listed.sort_by_key(|s| s.id);
        listed
    }

    /// How many sockets are open, host-wide.
    pub(crate) fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    /// Apply a durable batch's socket effects, in order. Never blocks: a socket whose
    /// queue is full is closed instead.
    pub(crate) fn apply(&self, class: &'static str, id: ObjectId, ops: Vec<SocketOp>) {
        let mut objects = self.lock();
        let Some(sockets) = objects.get_mut(&(class, id)) else {
            return;
        };
        for op in ops {
            match op {
                SocketOp::Send(sid, message) => {
                    if let Some(e) = sockets.get_mut(&sid) {
                        e.push(sid, message);
                    }
                }
                SocketOp::Broadcast(tag, message) => {
                    let mut ids: Vec<SocketId> = sockets
                        .iter()
                        .filter(|(_, e)| e.tags.contains(&tag))
                        .map(|(sid, _)| *sid)
                        .collect();
                    ids.sort();
                    for sid in ids {
                        if let Some(e) = sockets.get_mut(&sid) {
                            e.push(sid, message.clone());
                        }
                    }
                }
                SocketOp::Close(sid, code, reason) => {
                    if let Some(e) = sockets.get_mut(&sid) {
                        e.close(Closing {
                            code,
                            reason,
                            by_object: true,
                        });
                    }
                }
                SocketOp::SetTags(sid, tags) => {
                    if let Some(e) = sockets.get_mut(&sid) {
                        e.tags = tags;
                    }
                }
                SocketOp::SetAttachment(sid, attachment) => {
                    if let Some(e) = sockets.get_mut(&sid) {
                        e.attachment = attachment;
                    }
                }
                SocketOp::AutoResponse(pair) => {
                    let mut auto = self.auto_lock();
                    match pair {
                        Some(pair) => auto.insert((class, id), pair),
                        None => auto.remove(&(class, id)),
                    };
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, HashMap<SocketId, Entry>>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn auto_lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, (String, String)>> {
        self.auto.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// WebSockets, from a turn. Everything but [`crate::Context::sockets`] and
/// [`crate::Context::socket`] is an effect of the turn: it happens only once the turn's
/// batch is durable, in commit order, and not at all if the turn fails.
impl crate::Context {
    /// The object's open sockets carrying `tag` (every open socket with `None`), by
    /// id, as the gateway holds them now: effects of this batch are not applied yet.
    pub fn sockets(&self, tag: Option<&str>) -> Vec<Socket> {
        match &self.sockets {
            Some(r) => r.list(self.class, self.id, tag),
            None => Vec::new(),
        }
    }

    /// One of the object's open sockets.
    pub fn socket(&self, socket: SocketId) -> Option<Socket> {
        self.sockets.as_ref()?.socket(self.class, self.id, socket)
    }

    /// Send a text message to one socket (dropped if it has closed by then).
    pub fn send(&mut self, socket: SocketId, text: impl Into<String>) {
        self.effects
            .sockets
            .push(SocketOp::Send(socket, Outgoing::Text(text.into())));
    }

    /// Send a binary message to one socket.
    pub fn send_binary(&mut self, socket: SocketId, bytes: impl Into<Vec<u8>>) {
        self.effects
            .sockets
            .push(SocketOp::Send(socket, Outgoing::Binary(bytes.into())));
    }

    /// Send a text message to every socket carrying `tag` when the turn's batch is
    /// released (including sockets whose tags this batch set).
    pub fn broadcast(&mut self, tag: &str, text: impl Into<String>) {
        self.effects.sockets.push(SocketOp::Broadcast(
            tag.to_owned(),
            Outgoing::Text(text.into()),
        ));
    }

    /// Close a socket with a close code (1000 normal, or 3000–4999 for the
    /// application's own) and a reason (at most 123 bytes; longer is cut). The
    /// object's `#[on_close]` does not run for it.
    pub fn close(&mut self, socket: SocketId, code: u16, reason: &str) {
        self.effects.sockets.push(SocketOp::Close(
            socket,
            code,
            close_reason(reason).to_owned(),
        ));
    }

    /// Replace a socket's tags (at most [`MAX_TAGS`], each at most [`MAX_TAG_BYTES`]).
    pub fn set_tags<I, T>(&mut self, socket: SocketId, tags: I) -> Result<(), crate::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let tags: Vec<String> = tags.into_iter().map(Into::into).collect();
        if tags.len() > MAX_TAGS || tags.iter().any(|t| t.len() > MAX_TAG_BYTES) {
            return Err(crate::Error::new(
                crate::ErrorKind::LimitExceeded,
                format!("a socket takes at most {MAX_TAGS} tags of at most {MAX_TAG_BYTES} bytes"),
            ));
        }
        self.effects.sockets.push(SocketOp::SetTags(socket, tags));
        Ok(())
    }

    /// Answer every text message equal to `request` with `response` from the
    /// gateway, without waking the object (as Cloudflare's
    /// `setWebSocketAutoResponse`): for a keep-alive such as `ping` / `pong` that a
    /// hibernated object should not pay for. One pair per object, kept while it has
    /// open sockets (set it in `#[on_connect]`); `None` removes it. Each text is at
    /// most [`MAX_AUTO_RESPONSE_BYTES`].
    pub fn set_auto_response(&mut self, pair: Option<(&str, &str)>) -> Result<(), crate::Error> {
        if let Some((request, response)) = pair {
            if request.len().max(response.len()) > MAX_AUTO_RESPONSE_BYTES {
                return Err(crate::Error::new(
                    crate::ErrorKind::LimitExceeded,
                    format!("an auto-response text is at most {MAX_AUTO_RESPONSE_BYTES} bytes"),
                ));
            }
        }
        self.effects.sockets.push(SocketOp::AutoResponse(
            pair.map(|(q, a)| (q.to_owned(), a.to_owned())),
        ));
        Ok(())
    }

    /// Set a socket's attachment: a small serde value (at most
    /// [`MAX_ATTACHMENT_BYTES`] postcard-encoded) kept by the gateway with the socket,
    /// so it survives the object's eviction. `None` clears it.
    pub fn set_attachment<T: Serialize>(
        &mut self,
        socket: SocketId,
        value: Option<&T>,
    ) -> Result<(), crate::Error> {
        let bytes = match value {
            None => None,
            Some(v) => {
                let bytes = postcard::to_stdvec(v).map_err(|e| {
                    crate::Error::new(
                        crate::ErrorKind::Codec,
                        format!("encoding the attachment: {e}"),
                    )
                })?;
                if bytes.len() > MAX_ATTACHMENT_BYTES {
                    return Err(crate::Error::new(
                        crate::ErrorKind::LimitExceeded,
                        format!(
                            "an attachment of {} bytes exceeds {MAX_ATTACHMENT_BYTES}",
                            bytes.len()
                        ),
                    ));
                }
                Some(bytes)
            }
        };
        self.effects
            .sockets
            .push(SocketOp::SetAttachment(socket, bytes));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_reasons_are_cut_to_what_a_close_frame_carries() {
        assert_eq!(close_reason("short"), "short");
        let long = "é".repeat(100); // 200 bytes, two per character
        let cut = close_reason(&long);
        assert_eq!(
            cut.len(),
            122,
            "cut at a character boundary at most 123 bytes"
        );
        let registry = Registry::new(4);
        let id = ObjectId::from_bytes([7; 16]);
        let mut socket = registry.register("C", id, String::new()).unwrap();
        registry.close("C", id, socket.id, 1011, "x".repeat(500));
        let closing = socket.kill.try_recv().unwrap();
        assert_eq!(closing.reason.len(), 123);
    }

    #[test]
    fn broadcast_by_tag_and_a_full_queue_closes_only_that_socket() {
        let r = Registry::default();
        let id = ObjectId::from_name("Chat", "room");
        let mut a = r.register("Chat", id, String::new()).unwrap();
        let mut b = r.register("Chat", id, String::new()).unwrap();
        let c = r.register("Chat", id, String::new()).unwrap();
        r.apply(
            "Chat",
            id,
            vec![
                SocketOp::SetTags(a.id, vec!["room".into()]),
                SocketOp::SetTags(b.id, vec!["room".into()]),
                SocketOp::SetAttachment(c.id, Some(postcard::to_stdvec(&7u32).unwrap())),
                SocketOp::Broadcast("room".into(), Outgoing::Text("hi".into())),
            ],
        );
        assert_eq!(a.outgoing.try_recv().unwrap(), Outgoing::Text("hi".into()));
        assert_eq!(b.outgoing.try_recv().unwrap(), Outgoing::Text("hi".into()));
        assert_eq!(r.list("Chat", id, Some("room")).len(), 2);
        assert_eq!(
            r.socket("Chat", id, c.id).unwrap().attachment::<u32>(),
            Some(7)
        );
        // b never reads: past the queue it is closed; a keeps up and stays.
        for i in 0..=SEND_QUEUE {
            r.apply(
                "Chat",
                id,
                vec![SocketOp::Broadcast(
                    "room".into(),
                    Outgoing::Text(i.to_string()),
                )],
            );
            a.outgoing.try_recv().unwrap();
        }
        let closing = b.kill.try_recv().unwrap();
        assert_eq!(closing.code, CLOSE_SLOW_CLIENT);
        assert!(!closing.by_object);
        assert_eq!(r.list("Chat", id, Some("room")).len(), 1);
        assert_eq!(r.remove("Chat", id, b.id).unwrap().1, Some(closing));
        let (socket, closing) = r.remove("Chat", id, a.id).unwrap();
        assert_eq!((socket.tags(), closing), (&["room".to_owned()][..], None));
        assert_eq!(r.len(), 1);
    }

    #[test]
    fn the_cap_and_the_auto_response() {
        let r = Registry::new(2);
        let id = ObjectId::from_name("Chat", "room");
        let mut a = r.register("Chat", id, String::new()).unwrap();
        let b = r.register("Chat", id, String::new()).unwrap();
        assert!(r.is_full());
        assert!(r.register("Chat", id, String::new()).is_none());
        assert!(!r.auto_respond("Chat", id, a.id, "ping"));
        r.apply(
            "Chat",
            id,
            vec![SocketOp::AutoResponse(Some(("ping".into(), "pong".into())))],
        );
        assert!(r.auto_respond("Chat", id, a.id, "ping"));
        assert!(!r.auto_respond("Chat", id, a.id, "ping!"));
        assert_eq!(
            a.outgoing.try_recv().unwrap(),
            Outgoing::Text("pong".into())
        );
        r.remove("Chat", id, b.id).unwrap();
        assert!(!r.is_full());
        // The pair goes with the object's last socket.
        r.remove("Chat", id, a.id).unwrap();
        let c = r.register("Chat", id, String::new()).unwrap();
        assert!(!r.auto_respond("Chat", id, c.id, "ping"));
    }
}
