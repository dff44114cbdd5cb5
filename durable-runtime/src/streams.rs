//! Resumable streams: sequences of serde items an object produces over many turns
//! (a generated reply, token by token), that clients read from any point and follow
//! live (`GET /v1/objects/{class}/{name}/streams/{stream}?after=SEQ`).
//!
//! A turn appends with [`crate::Context::stream_push`] and finishes with
//! [`crate::Context::stream_end`]. Items are rows of the object's own database
//! (`_durable_streams`, with `_durable_stream_heads` for each stream's last sequence
//! number and whether it ended), written in the turn's transaction, so they commit
//! with the object's batches (many items, one sync) and reach the host log like any
//! other write. Each item is also an effect of its turn: once the batch is durable
//! the output gate hands it to the host's [`Hub`], which passes it to the clients
//! following that stream. A client that was away reads what it missed from the
//! table (a read turn of the object, [`STREAM_READ_METHOD`], gated like any reply),
//! then the live tail. Nothing depends on a client being connected: the producer
//! runs in the object's turns (an alarm, typically), clients only watch.
//! See `docs/streams.md`.

use crate::error::{Error, ErrorKind};
use crate::tables::{self, Lazy};
use durable_client::ObjectId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, watch};

/// Longest stream name, in bytes.
pub const MAX_STREAM_NAME: usize = 256;

/// Largest stream item, in bytes (as JSON).
pub const MAX_STREAM_ITEM: usize = 64 * 1024;

/// Most items one read turn returns (a client further behind reads in pages).
pub(crate) const READ_PAGE: u32 = 1024;

/// Live items that may wait for one follower; past it the follower is dropped from
/// the hub and catches up from the object's table instead (a slow reader never
/// stalls the object or other readers, and loses nothing).
pub(crate) const FOLLOWER_QUEUE: usize = 4096;

/// The method number of a read of stored items (like the socket events' number, no
/// remote method has it and no client can name it).
pub(crate) const STREAM_READ_METHOD: usize = usize::MAX - 1;

/// Where a stream stands, as a turn reads it ([`crate::Context::stream_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// The sequence number of its last item (items are numbered from 1; 0: none yet).
    pub last_seq: u64,
    /// Whether [`crate::Context::stream_end`] ended it.
    pub ended: bool,
}

/// What a turn did to a stream, released with its batch once durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamOp {
    /// Item `seq` of `stream`, as JSON.
    Item {
        stream: String,
        seq: u64,
        json: Arc<str>,
    },
    /// `stream` ended after item `seq`.
    End { stream: String, seq: u64 },
    /// `stream` was deleted (a stream of its name may follow, numbered from 1 again),
    /// the `at`-th deletion of the process ([`deletion_mark`]).
    Deleted { stream: String, at: u64 },
    /// Changes to `stream` that may be durable were not handed over (a turn that
    /// made its writes durable at a call to another object, then failed): its
    /// followers read it again from the object (the hub drops their channels, as it
    /// does a lagging follower's).
    Recheck { stream: String },
}

/// What to hand the followers for stream effects `ops` that may be durable but are
/// not handed over as they are (the rest of their turn failed, or their batch's
/// outcome is unknown): each deletion (its followers end), then a
/// [`StreamOp::Recheck`] of each stream they appended to, ended or rechecked (its
/// followers read what stands from the object).
pub(crate) fn maybe_durable(ops: &[StreamOp]) -> Vec<StreamOp> {
    let mut out: Vec<StreamOp> = ops
        .iter()
        .filter(|op| matches!(op, StreamOp::Deleted { .. }))
        .cloned()
        .collect();
    for op in ops {
        if let StreamOp::Item { stream, .. }
        | StreamOp::End { stream, .. }
        | StreamOp::Recheck { stream } = op
        {
            let recheck = StreamOp::Recheck {
                stream: stream.clone(),
            };
            if !out.contains(&recheck) {
                out.push(recheck);
            }
        }
    }
    out
}

/// What a follower receives from the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Live {
    Item {
        seq: u64,
        json: Arc<str>,
    },
    End {
        seq: u64,
    },
    /// The stream was deleted (the `at`-th deletion): a follower whose view of the
    /// stream comes from before it ends (`unknown_stream`); one that read the stream
    /// after it (a stream of the same name created since) goes on.
    Deleted {
        at: u64,
    },
}

/// A read of stored items: those of `stream` after `after`, at most `limit`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ReadRequest {
    pub(crate) stream: String,
    pub(crate) after: u64,
    pub(crate) limit: u32,
}

/// The answer to a [`ReadRequest`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct ReadPage {
    /// Whether the stream exists (has an item or ended).
    pub(crate) known: bool,
    /// The items, in order: (seq, JSON).
    pub(crate) items: Vec<(u64, String)>,
    /// The stream's state when read.
    pub(crate) last_seq: u64,
    pub(crate) ended: bool,
    /// [`deletion_mark`] when read: deletions numbered up to it came before the read.
    pub(crate) deletions: u64,
}

/// Stream deletions made by turns in this process, numbered in order: a turn that
/// deletes a stream takes the next number, a read of a stream records the count. An
/// object's turns run one at a time, so a deletion numbered at most a read's count
/// ran before that read (then the read saw the stream as it was after it).
static DELETIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_deletion() -> u64 {
    DELETIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
}

/// How many stream deletions turns of this process have made so far.
pub(crate) fn deletion_mark() -> u64 {
    DELETIONS.load(std::sync::atomic::Ordering::SeqCst)
}

type Key = (&'static str, ObjectId, String);

/// One follower of a stream: its number, its channel (`None` once it fell
/// [`FOLLOWER_QUEUE`] items behind: it reads the rest from the object, then takes a
/// new one with [`Hub::refollow`]) and the latest deletion of the stream (see
/// [`Following::deleted`]), marked whether or not its channel had room.
type Follower = (u64, Option<mpsc::Sender<Live>>, Arc<AtomicU64>);

/// The followers of each stream.
type Followers = HashMap<Key, Vec<Follower>>;

/// The host's followers of live streams, by object and stream. The gateway adds
/// them; the output gate hands them durable items.
pub(crate) struct Hub {
    followers: Mutex<Followers>,
    next: std::sync::atomic::AtomicU64,
    /// Set when the host stops: followers end.
    closing: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            followers: Mutex::default(),
            next: Default::default(),
            closing: watch::Sender::new(false),
        }
    }
}

impl Hub {
    /// End every follower (the host is stopping).
    pub(crate) fn close_all(&self) {
        self.closing.send_replace(true);
        self.lock().clear();
    }

    /// Resolves once [`Hub::close_all`] was called.
    pub(crate) fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Follow `stream` of an object: every item released from now on, until the
    /// [`Following`] drops. Its receiver ends if the follower fell
    /// [`FOLLOWER_QUEUE`] items behind (read the rest from the object, then
    /// [`Hub::refollow`]); the stream's deletions are marked all along.
    pub(crate) fn follow(
        self: &Arc<Self>,
        class: &'static str,
        id: ObjectId,
        stream: &str,
    ) -> Following {
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let key = (class, id, stream.to_owned());
        let follower = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deleted = Arc::new(AtomicU64::new(0));
        self.lock()
            .entry(key.clone())
            .or_default()
            .push((follower, Some(tx), deleted.clone()));
        Following {
            hub: self.clone(),
            key,
            follower,
            rx,
            deleted,
        }
    }

    /// A new channel for a follower whose channel ended (it fell behind): items
    /// released from now on. It stayed a follower meanwhile, so no deletion of the
    /// stream went unmarked.
    pub(crate) fn refollow(&self, following: &mut Following) {
        let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
        let mut followers = self.lock();
        let entry = followers
            .get_mut(&following.key)
            .and_then(|list| list.iter_mut().find(|(f, _, _)| *f == following.follower));
        match entry {
            Some((_, channel, _)) => *channel = Some(tx),
            // Only `close_all` removes a live follower: the host stops, and the
            // follower's new channel simply stays empty.
            None => drop(tx),
        }
        following.rx = rx;
    }

    fn unfollow(&self, key: &Key, follower: u64) {
        let mut followers = self.lock();
        if let Some(list) = followers.get_mut(key) {
            list.retain(|(f, _, _)| *f != follower);
            if list.is_empty() {
                followers.remove(key);
            }
        }
    }

    /// Hand a durable batch's stream effects to their followers, in order. Never
    /// blocks: a follower whose queue is full loses its channel (it catches up from
    /// the object) but stays a follower, and a deletion is marked on every follower.
    pub(crate) fn apply(&self, class: &'static str, id: ObjectId, ops: Vec<StreamOp>) {
        let mut followers = self.lock();
        for op in ops {
            let (stream, live) = match op {
                StreamOp::Item { stream, seq, json } => (stream, Some(Live::Item { seq, json })),
                StreamOp::End { stream, seq } => (stream, Some(Live::End { seq })),
                StreamOp::Deleted { stream, at } => (stream, Some(Live::Deleted { at })),
                StreamOp::Recheck { stream } => (stream, None),
            };
            let key = (class, id, stream);
            let Some(list) = followers.get_mut(&key) else {
                continue;
            };
            let Some(live) = live else {
                // What the follower has queued is still good; then back to the table.
                for (_, channel, _) in list.iter_mut() {
                    *channel = None;
                }
                continue;
            };
            for (_, channel, deleted) in list.iter_mut() {
                if let Live::Deleted { at } = live {
                    deleted.fetch_max(at, Ordering::SeqCst);
                }
                if channel
                    .as_ref()
                    .is_some_and(|tx| tx.try_send(live.clone()).is_err())
                {
                    *channel = None;
                }
            }
        }
    }

    /// How many followers the hub holds, host-wide.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Followers> {
        self.followers.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A follower's place in the [`Hub`]: live items arrive on `rx`; dropping it
/// leaves the hub.
pub(crate) struct Following {
    hub: Arc<Hub>,
    key: Key,
    follower: u64,
    pub(crate) rx: mpsc::Receiver<Live>,
    deleted: Arc<AtomicU64>,
}

impl Following {
    /// The latest deletion of the stream ([`deletion_mark`] numbering) since the
    /// follow began, 0 if none: a follower that read the stream before it follows a
    /// stream that is gone, whatever a later read of the same name shows.
    pub(crate) fn deleted(&self) -> u64 {
        self.deleted.load(Ordering::SeqCst)
    }
}

impl Drop for Following {
    fn drop(&mut self) {
        self.hub.unfollow(&self.key, self.follower);
    }
}

/// Whether `name` may name a stream: 1 to [`MAX_STREAM_NAME`] bytes of ASCII letters,
/// digits and `-_.:`.
pub fn valid_stream_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_STREAM_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}

fn check_name(stream: &str) -> Result<(), Error> {
    if valid_stream_name(stream) {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Invalid,
            format!("a stream name is 1 to {MAX_STREAM_NAME} bytes of letters, digits and -_.: (got {stream:?})"),
        ))
    }
}

fn state(conn: &rusqlite::Connection, stream: &str) -> rusqlite::Result<Option<StreamState>> {
    use rusqlite::OptionalExtension;
    if !tables::has_table(conn, Lazy::Streams)? {
        return Ok(None);
    }
    conn.prepare_cached("SELECT last_seq, ended FROM _durable_stream_heads WHERE stream = ?1")?
        .query_row([stream], |r| {
            Ok(StreamState {
                last_seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                ended: r.get::<_, i64>(1)? != 0,
            })
        })
        .optional()
}

/// The deletion of every stream of the object (for `delete_all`, before it erases
/// them): their live followers end.
pub(crate) fn deleted_all(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<StreamOp>> {
    if !tables::has_table(conn, Lazy::Streams)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare("SELECT stream FROM _durable_stream_heads")?;
    let names = stmt.query_map([], |r| r.get::<_, String>(0))?;
    names
        .map(|stream| {
            stream.map(|stream| StreamOp::Deleted {
                stream,
                at: next_deletion(),
            })
        })
        .collect()
}

fn set_state(conn: &rusqlite::Connection, stream: &str, s: StreamState) -> rusqlite::Result<()> {
    tables::ensure_table(conn, Lazy::Streams)?;
    conn.prepare_cached(
        "INSERT INTO _durable_stream_heads(stream, last_seq, ended) VALUES (?1, ?2, ?3)
         ON CONFLICT(stream) DO UPDATE SET last_seq = excluded.last_seq, ended = excluded.ended",
    )?
    .execute(rusqlite::params![
        stream,
        i64::try_from(s.last_seq).unwrap_or(i64::MAX),
        s.ended as i64
    ])?;
    Ok(())
}

/// Read stored items (the body of a [`STREAM_READ_METHOD`] turn).
pub(crate) fn read(
    conn: &rusqlite::Connection,
    request: &ReadRequest,
) -> rusqlite::Result<ReadPage> {
    let deletions = deletion_mark();
    let Some(s) = state(conn, &request.stream)? else {
        return Ok(ReadPage {
            deletions,
            ..ReadPage::default()
        });
    };
    let after = i64::try_from(request.after).unwrap_or(i64::MAX);
    let limit = request.limit.clamp(1, READ_PAGE);
    let mut stmt = conn.prepare_cached(
        // No `LIMIT ?` (re-prepared on every run, see `alarms::due_alarms`): rows
        // are read lazily, in key order, and only `limit` of them.
        "SELECT seq, item FROM _durable_streams WHERE stream = ?1 AND seq > ?2 ORDER BY seq",
    )?;
    let items = stmt
        .query_map(rusqlite::params![request.stream, after], |r| {
            let seq: i64 = r.get(0)?;
            let item: Vec<u8> = r.get(1)?;
            Ok((
                u64::try_from(seq).unwrap_or(0),
                String::from_utf8_lossy(&item).into_owned(),
            ))
        })?
        .take(limit as usize)
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(ReadPage {
        known: true,
        items,
        last_seq: s.last_seq,
        ended: s.ended,
        deletions,
    })
}

/// Resumable streams, from a turn. Appending and ending are writes of the turn (kept
/// only if it returns `Ok`); followers get the items once the turn's batch is durable.
impl crate::Context {
    /// Append `item` to `stream` (created by its first item) and return its sequence
    /// number (1, 2, ...). The item is stored as JSON, at most [`MAX_STREAM_ITEM`]
    /// bytes. Appending to an ended stream is an error.
    pub fn stream_push<T: Serialize + ?Sized>(
        &mut self,
        stream: &str,
        item: &T,
    ) -> Result<u64, Error> {
        check_name(stream)?;
        let json = serde_json::to_string(item)
            .map_err(|e| Error::new(ErrorKind::Codec, format!("encoding a stream item: {e}")))?;
        if json.len() > MAX_STREAM_ITEM {
            return Err(Error::new(
                ErrorKind::LimitExceeded,
                format!(
                    "a stream item of {} bytes exceeds {MAX_STREAM_ITEM}",
                    json.len()
                ),
            ));
        }
        let mut s = state(&self.conn, stream)?.unwrap_or(StreamState {
            last_seq: 0,
            ended: false,
        });
        if s.ended {
            return Err(Error::new(
                ErrorKind::Invalid,
                format!("stream {stream:?} has ended"),
            ));
        }
        s.last_seq += 1;
        tables::ensure_table(&self.conn, Lazy::Streams)?;
        self.conn
            .prepare_cached("INSERT INTO _durable_streams(stream, seq, item) VALUES (?1, ?2, ?3)")?
            .execute(rusqlite::params![
                stream,
                i64::try_from(s.last_seq).unwrap_or(i64::MAX),
                json.as_bytes()
            ])?;
        set_state(&self.conn, stream, s)?;
        self.effects.streams.push(StreamOp::Item {
            stream: stream.to_owned(),
            seq: s.last_seq,
            json: json.into(),
        });
        Ok(s.last_seq)
    }

    /// Create `stream`, empty, if it does not exist yet, so that clients may follow
    /// it before its first item (a stream is also created by its first item).
    pub fn stream_open(&mut self, stream: &str) -> Result<StreamState, Error> {
        check_name(stream)?;
        if let Some(s) = state(&self.conn, stream)? {
            return Ok(s);
        }
        let s = StreamState {
            last_seq: 0,
            ended: false,
        };
        set_state(&self.conn, stream, s)?;
        Ok(s)
    }

    /// End `stream`: followers get an end-of-stream after its last item, and no more
    /// items may be appended. Ending a stream that has no item yet creates it, empty.
    /// Returns the last sequence number. Ending an ended stream changes nothing.
    pub fn stream_end(&mut self, stream: &str) -> Result<u64, Error> {
        check_name(stream)?;
        let mut s = state(&self.conn, stream)?.unwrap_or(StreamState {
            last_seq: 0,
            ended: false,
        });
        if s.ended {
            return Ok(s.last_seq);
        }
        s.ended = true;
        set_state(&self.conn, stream, s)?;
        self.effects.streams.push(StreamOp::End {
            stream: stream.to_owned(),
            seq: s.last_seq,
        });
        Ok(s.last_seq)
    }

    /// Where `stream` stands (`None`: no item yet and not ended).
    pub fn stream_state(&self, stream: &str) -> Result<Option<StreamState>, Error> {
        Ok(state(&self.conn, stream)?)
    }

    /// Erase `stream` and its items: readers get `unknown_stream` after this, and so
    /// do its live followers once the turn's batch is durable (a stream of the same
    /// name created later is a new stream, numbered from 1).
    pub fn stream_delete(&mut self, stream: &str) -> Result<bool, Error> {
        if !tables::has_table(&self.conn, Lazy::Streams)? {
            return Ok(false);
        }
        let n = self
            .conn
            .prepare_cached("DELETE FROM _durable_stream_heads WHERE stream = ?1")?
            .execute([stream])?;
        self.conn
            .prepare_cached("DELETE FROM _durable_streams WHERE stream = ?1")?
            .execute([stream])?;
        if n > 0 {
            self.effects.streams.push(StreamOp::Deleted {
                stream: stream.to_owned(),
                at: next_deletion(),
            });
        }
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live_of(seq: u64) -> Live {
        Live::Item {
            seq,
            json: Arc::from(format!("{seq}")),
        }
    }

    #[test]
    fn followers_get_items_in_order_and_a_full_ones_channel_ends_but_not_its_marks() {
        let hub = Arc::new(Hub::default());
        let id = ObjectId::from_name("Chat", "a");
        let mut a = hub.follow("Chat", id, "r1");
        let b = hub.follow("Chat", id, "r1");
        let mut other = hub.follow("Chat", id, "r2");
        let item = |seq: u64| StreamOp::Item {
            stream: "r1".into(),
            seq,
            json: Arc::from(format!("{seq}")),
        };
        let live = |seq: u64| Live::Item {
            seq,
            json: Arc::from(format!("{seq}")),
        };
        hub.apply("Chat", id, vec![item(1), item(2)]);
        assert_eq!(a.rx.try_recv().unwrap(), live(1));
        assert_eq!(a.rx.try_recv().unwrap(), live(2));
        assert!(other.rx.try_recv().is_err());
        // b never reads: past its queue its channel ends (after what it holds), a's
        // goes on; b stays a follower, and a deletion is marked on it all the same.
        let mut b = b;
        for seq in 3..(FOLLOWER_QUEUE as u64 + 3) {
            hub.apply("Chat", id, vec![item(seq)]);
            a.rx.try_recv().unwrap();
        }
        assert_eq!(hub.len(), 3);
        let mut held = 0;
        while let Ok(live) = b.rx.try_recv() {
            assert_eq!(live, live_of(held + 1));
            held += 1;
        }
        assert_eq!(held, FOLLOWER_QUEUE as u64);
        assert!(b.rx.is_closed());
        let deleted = |at: u64| StreamOp::Deleted {
            stream: "r1".into(),
            at,
        };
        hub.apply("Chat", id, vec![deleted(7)]);
        assert_eq!((a.deleted(), b.deleted(), other.deleted()), (7, 7, 0));
        assert_eq!(a.rx.try_recv().unwrap(), Live::Deleted { at: 7 });
        // Back from reading the object, b takes a new channel: items from then on.
        hub.refollow(&mut b);
        hub.apply("Chat", id, vec![item(1)]);
        assert_eq!(b.rx.try_recv().unwrap(), live(1));
        assert_eq!(a.rx.try_recv().unwrap(), live(1));
        hub.apply("Chat", id, vec![deleted(5)]);
        assert_eq!(b.deleted(), 7, "the latest deletion stays marked");
        a.rx.try_recv().unwrap();
        drop(b);
        let end = StreamOp::End {
            stream: "r1".into(),
            seq: 9,
        };
        hub.apply("Chat", id, vec![end]);
        assert_eq!(a.rx.try_recv().unwrap(), Live::End { seq: 9 });
        // Followers leave the hub when they drop, whether or not items come.
        drop(a);
        assert_eq!(hub.len(), 1);
        drop(other);
        assert_eq!(hub.len(), 0);
        assert!(hub.lock().is_empty());
    }

    #[test]
    fn maybe_durable_effects_end_deleted_streams_and_recheck_the_others() {
        let item = |stream: &str, seq: u64| StreamOp::Item {
            stream: stream.into(),
            seq,
            json: Arc::from("x"),
        };
        let ops = vec![
            item("a", 4),
            StreamOp::Deleted {
                stream: "a".into(),
                at: 3,
            },
            item("a", 1),
            item("b", 9),
            StreamOp::End {
                stream: "c".into(),
                seq: 2,
            },
            item("b", 10),
        ];
        let recheck = |stream: &str| StreamOp::Recheck {
            stream: stream.into(),
        };
        assert_eq!(
            maybe_durable(&ops),
            vec![
                StreamOp::Deleted {
                    stream: "a".into(),
                    at: 3
                },
                recheck("a"),
                recheck("b"),
                recheck("c"),
            ]
        );
        // A recheck sends its stream's followers back to the object after what they
        // hold: their channels end, they stay followers, nothing is marked deleted.
        let hub = Arc::new(Hub::default());
        let id = ObjectId::from_name("Chat", "a");
        let mut a = hub.follow("Chat", id, "a");
        let mut b = hub.follow("Chat", id, "b");
        hub.apply("Chat", id, vec![item("a", 1), recheck("a"), item("a", 2)]);
        assert_eq!(a.rx.try_recv().unwrap(), live_of_json(1, "x"));
        assert!(a.rx.try_recv().is_err());
        assert!(a.rx.is_closed());
        assert!(!b.rx.is_closed());
        assert_eq!((a.deleted(), hub.len()), (0, 2));
        hub.refollow(&mut a);
        hub.apply("Chat", id, vec![item("a", 3), item("b", 1)]);
        assert_eq!(a.rx.try_recv().unwrap(), live_of_json(3, "x"));
        assert_eq!(b.rx.try_recv().unwrap(), live_of_json(1, "x"));
    }

    fn live_of_json(seq: u64, json: &str) -> Live {
        Live::Item {
            seq,
            json: Arc::from(json),
        }
    }

    #[test]
    fn stream_names() {
        assert!(valid_stream_name("reply-1"));
        assert!(valid_stream_name("a.b:c_d"));
        assert!(!valid_stream_name(""));
        assert!(!valid_stream_name("a/b"));
        assert!(!valid_stream_name(&"x".repeat(MAX_STREAM_NAME + 1)));
    }
}
