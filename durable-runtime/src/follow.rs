//! Following a stream (see [`crate::streams`]), for every edge that offers it: the
//! HTTP gateway (server-sent events, WebSockets) and the QUIC server. [`start`]
//! checks the request and reads the first page; [`pump`] then feeds the follower's
//! channel with every item after its resume point exactly once and in order, then
//! the end.
//!
//! The pump follows the host's hub *before* reading the table, so no item falls
//! between the two; items it already sent are skipped by sequence number, and a gap
//! (a follower whose channel the hub dropped for reading too slowly) sends it back to
//! the table. It stays a follower meanwhile: a deletion of the stream after its last
//! read ends it (`unknown_stream`) rather than let it read a new stream of the name.

use crate::calls::{Caller, Calls};
use crate::class::ClassEntry;
use crate::streams::{Following, Hub, Live, ReadPage, ReadRequest, READ_PAGE};
use durable_client::wire::WireError;
use durable_client::ObjectId;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Items in the first page a follower reads: small, so that the first missed item
/// reaches a resuming client without waiting for a whole page to be read and sent.
const FIRST_PAGE: u32 = 32;

/// What a follower is sent.
pub(crate) enum Out {
    Item {
        seq: u64,
        json: Arc<str>,
    },
    End {
        seq: u64,
    },
    /// The stream is gone (deleted while followed).
    Unknown,
    Failed(WireError),
}

/// Why a follow could not start.
pub(crate) enum Refused {
    /// The object has no such stream.
    Unknown,
    Wire(WireError),
}

/// A follower, checked and started: its first page is read.
pub(crate) struct Start {
    class: Arc<ClassEntry>,
    name: String,
    stream: String,
    caller: Caller,
    after: u64,
    live: Following,
    first: ReadPage,
}

/// Follow `stream` of object `name` after item `after`: register with the hub, then
/// read the first page (the caller checked the class, the name of the stream and
/// the caller's rights).
pub(crate) async fn start(
    calls: &Calls,
    hub: &Arc<Hub>,
    class: &Arc<ClassEntry>,
    name: String,
    stream: String,
    after: u64,
    caller: Caller,
) -> Result<Start, Refused> {
    if calls.is_shutting_down() {
        return Err(Refused::Wire(WireError::ShuttingDown));
    }
    let id = ObjectId::from_name(class.name, &name);
    // Follow first, then read: nothing released in between is missed.
    let live = hub.follow(class.name, id, &stream);
    let request = ReadRequest {
        stream: stream.clone(),
        after,
        limit: FIRST_PAGE,
    };
    let first = calls
        .stream_read(class, &name, &request, &caller, true)
        .await
        .map_err(Refused::Wire)?;
    if !first.known {
        return Err(Refused::Unknown);
    }
    Ok(Start {
        class: class.clone(),
        name,
        stream,
        caller,
        after,
        live,
        first,
    })
}

impl Start {
    /// The stream's last sequence number when the follow started.
    pub(crate) fn last_seq(&self) -> u64 {
        self.first.last_seq
    }
}

/// Feed `tx` until the stream ends, reading fails, the host stops or the follower
/// leaves.
pub(crate) async fn pump(calls: Arc<Calls>, hub: Arc<Hub>, start: Start, tx: mpsc::Sender<Out>) {
    let Start {
        class,
        name,
        stream,
        caller,
        mut after,
        mut live,
        first,
    } = start;
    let closed = hub.closed();
    tokio::pin!(closed);
    let mut page = Some(first);
    // The latest read's deletion mark: deletions up to it are in what was read.
    let mut read_at = 0;
    // Whether a page was read since the follow began (the first page is its view).
    let mut viewed = false;
    loop {
        // Catch up from the table.
        loop {
            let mut limit = READ_PAGE;
            let current = match page.take() {
                Some(p) => {
                    limit = FIRST_PAGE;
                    p
                }
                None => {
                    let request = ReadRequest {
                        stream: stream.clone(),
                        after,
                        limit: READ_PAGE,
                    };
                    let read = tokio::select! {
                        _ = &mut closed => Err(WireError::ShuttingDown),
                        r = calls.stream_read(&class, &name, &request, &caller, false) => r,
                    };
                    match read {
                        Ok(p) if p.known => p,
                        Ok(_) => {
                            let _ = tx.send(Out::Unknown).await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Out::Failed(e)).await;
                            return;
                        }
                    }
                }
            };
            // The stream was deleted after the follower's last read (seen or not on
            // the live tail, which may have dropped it): what this read shows of the
            // name is another stream.
            if viewed && live.deleted() > read_at {
                let _ = tx.send(Out::Unknown).await;
                return;
            }
            viewed = true;
            read_at = read_at.max(current.deletions);
            let full = current.items.len() >= limit as usize;
            for (seq, json) in current.items {
                if seq > after {
                    if tx
                        .send(Out::Item {
                            seq,
                            json: json.into(),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                    after = seq;
                }
            }
            if current.ended && after >= current.last_seq {
                let _ = tx.send(Out::End { seq: after }).await;
                return;
            }
            if !full {
                break;
            }
        }
        // Then the live tail, until it ends or has a gap.
        loop {
            let next = tokio::select! {
                _ = tx.closed() => return,
                _ = &mut closed => {
                    let _ = tx.send(Out::Failed(WireError::ShuttingDown)).await;
                    return;
                }
                next = live.rx.recv() => next,
            };
            match next {
                Some(Live::Item { seq, .. }) if seq <= after => {}
                Some(Live::Item { seq, json }) if seq == after + 1 => {
                    if tx.send(Out::Item { seq, json }).await.is_err() {
                        return;
                    }
                    after = seq;
                }
                Some(Live::End { seq }) if seq <= after => {
                    let _ = tx.send(Out::End { seq: after }).await;
                    return;
                }
                // Deleted before the stream this follower read was created (a delete
                // and a new stream of the same name in a batch not yet durable when
                // the follow began): not this follower's stream.
                Some(Live::Deleted { at }) if at <= read_at => {}
                Some(Live::Deleted { .. }) => {
                    let _ = tx.send(Out::Unknown).await;
                    return;
                }
                // A gap, or the hub dropped this follower: back to the table.
                Some(_) | None => break,
            }
        }
        hub.refollow(&mut live);
    }
}
