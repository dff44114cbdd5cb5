//! `GET /v1/objects/{class}/{name}/streams/{stream}?after=SEQ`: follow a stream of
//! an object (see [`crate::streams`]) as server-sent events, or, with a WebSocket
//! upgrade, as one text message per item. The items after `after` (or after the
//! `Last-Event-ID` an `EventSource` sends when it reconnects) come from the
//! object's table, then the live tail from the host's hub, each exactly once and in
//! order, then an explicit end.
//!
//! One task per follower (the pump) does the reading: it follows the hub *before*
//! reading the table, so no item falls between the two; items it already sent are
//! skipped by sequence number, and a gap (a follower the hub dropped for reading too
//! slowly) sends it back to the table.

use super::reply::ApiError;
use super::state::State;
use crate::calls::Caller;
use crate::class::ClassEntry;
use crate::streams::{valid_stream_name, Live, ReadPage, ReadRequest, READ_PAGE};
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State as Extract};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use durable_client::wire::WireError;
use durable_client::ObjectId;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The header an `EventSource` resends on reconnecting: the last event id it saw.
const LAST_EVENT_ID: &str = "last-event-id";

/// Events waiting between a follower's pump and its connection.
const PUMP_QUEUE: usize = 256;

/// A comment line this often keeps idle connections (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// What a follower is sent.
enum Out {
    Item { seq: u64, json: Arc<str> },
    End { seq: u64 },
    Failed(ApiError),
}

impl Out {
    /// The WebSocket text of it.
    fn ws_text(&self) -> String {
        match self {
            Out::Item { seq, json } => format!("{{\"seq\":{seq},\"item\":{json}}}"),
            Out::End { seq } => format!("{{\"end\":true,\"seq\":{seq}}}"),
            Out::Failed(e) => e.body().to_string(),
        }
    }

    /// The server-sent event of it: items are plain `message` events with the
    /// sequence number as their id; `end` and `failure` are named events.
    fn sse(&self) -> Event {
        match self {
            Out::Item { seq, .. } => Event::default().id(seq.to_string()).data(self.ws_text()),
            Out::End { seq } => Event::default()
                .id(seq.to_string())
                .event("end")
                .data(self.ws_text()),
            Out::Failed(_) => Event::default().event("failure").data(self.ws_text()),
        }
    }
}

/// A follower, checked and started: its first page is read.
struct Start {
    class: Arc<ClassEntry>,
    name: String,
    stream: String,
    caller: Caller,
    after: u64,
    live: mpsc::Receiver<Live>,
    first: ReadPage,
}

/// The handler: check the request, read the first page (so that an unknown stream
/// or object is a plain JSON error), then answer with SSE or a WebSocket.
pub(super) async fn follow(
    Extract(state): Extract<Arc<State>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    match start(&state, path, query.as_deref().unwrap_or(""), &headers).await {
        Ok(start) => match upgrade {
            Ok(upgrade) => {
                let max = state.max_body;
                upgrade
                    .max_message_size(max)
                    .on_upgrade(move |socket| websocket(state, start, socket))
                    .into_response()
            }
            Err(_) => sse(state, start),
        },
        Err(e) => e.into_response(),
    }
}

async fn start(
    state: &Arc<State>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: &str,
    headers: &HeaderMap,
) -> Result<Start, ApiError> {
    let Path((class, name, stream)) =
        path.map_err(|e| ApiError::bad_request("bad_request", e.body_text()))?;
    let caller = state.authorize(headers, &class)?;
    let entry = state.calls.classes.get(class.as_str()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_class",
            format!("no class {class:?} on this host (GET /v1/classes lists them)"),
        )
        .with("class", class.as_str())
    })?;
    if !valid_stream_name(&stream) {
        return Err(ApiError::bad_request(
            "bad_request",
            format!(
                "a stream name is 1 to {} bytes of letters, digits and -_.:",
                crate::streams::MAX_STREAM_NAME
            ),
        ));
    }
    let after = after(query, headers)?;
    if state.calls.is_shutting_down() {
        return Err(ApiError::wire(WireError::ShuttingDown));
    }
    let id = ObjectId::from_name(entry.name, &name);
    // Follow first, then read: nothing released in between is missed.
    let live = state.streams.follow(entry.name, id, &stream);
    let request = ReadRequest {
        stream: stream.clone(),
        after,
        limit: READ_PAGE,
    };
    let first = state
        .calls
        .stream_read(entry, &name, &request, &caller)
        .await
        .map_err(ApiError::wire)?;
    if !first.known {
        return Err(unknown_stream(entry.name, &name, &stream));
    }
    Ok(Start {
        class: entry.clone(),
        name,
        stream,
        caller,
        after,
        live,
        first,
    })
}

fn unknown_stream(class: &str, name: &str, stream: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_stream",
        format!("object {name:?} of class {class} has no stream {stream:?}"),
    )
    .with("stream", stream)
}

/// Where to resume: `Last-Event-ID` (an `EventSource` reconnecting) over `?after=`,
/// 0 (from the start) without either.
fn after(query: &str, headers: &HeaderMap) -> Result<u64, ApiError> {
    let parse = |what: &str, v: &str| {
        v.trim().parse::<u64>().map_err(|_| {
            ApiError::bad_request(
                "bad_request",
                format!(
                    "{what} must be the sequence number of the last item seen (0 or more), got {v:?}"
                ),
            )
        })
    };
    if let Some(v) = headers.get(LAST_EVENT_ID) {
        let v = v
            .to_str()
            .map_err(|_| ApiError::bad_request("bad_request", "Last-Event-ID is not text"))?;
        return parse("Last-Event-ID", v);
    }
    match query.split('&').find_map(|kv| kv.strip_prefix("after=")) {
        Some(v) => parse("after", v),
        None => Ok(0),
    }
}

/// Feed `tx` until the stream ends, reading fails, the host stops or the follower
/// leaves.
async fn pump(state: Arc<State>, start: Start, tx: mpsc::Sender<Out>) {
    let Start {
        class,
        name,
        stream,
        caller,
        mut after,
        mut live,
        first,
    } = start;
    let id = ObjectId::from_name(class.name, &name);
    let closed = state.streams.closed();
    tokio::pin!(closed);
    let mut page = Some(first);
    loop {
        // Catch up from the table.
        loop {
            let current = match page.take() {
                Some(p) => p,
                None => {
                    let request = ReadRequest {
                        stream: stream.clone(),
                        after,
                        limit: READ_PAGE,
                    };
                    let read = tokio::select! {
                        _ = &mut closed => Err(WireError::ShuttingDown),
                        r = state.calls.stream_read(&class, &name, &request, &caller) => r,
                    };
                    match read {
                        Ok(p) if p.known => p,
                        Ok(_) => {
                            let _ = tx
                                .send(Out::Failed(unknown_stream(class.name, &name, &stream)))
                                .await;
                            return;
                        }
                        Err(e) => {
                            let _ = tx.send(Out::Failed(ApiError::wire(e))).await;
                            return;
                        }
                    }
                }
            };
            let full = current.items.len() >= READ_PAGE as usize;
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
                    let _ = tx.send(Out::Failed(ApiError::wire(WireError::ShuttingDown))).await;
                    return;
                }
                next = live.recv() => next,
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
                // A gap, or the hub dropped this follower: back to the table.
                Some(_) | None => break,
            }
        }
        live = state.streams.follow(class.name, id, &stream);
    }
}

/// Answer with server-sent events.
fn sse(state: Arc<State>, start: Start) -> Response {
    let (tx, rx) = mpsc::channel(PUMP_QUEUE);
    tokio::spawn(pump(state, start, tx));
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        let out = rx.recv().await?;
        Some((Ok::<Event, Infallible>(out.sse()), rx))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Proxies that buffer would hold the tokens back.
    response
        .headers_mut()
        .insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response
}

/// Answer over a WebSocket: one text message per item, the end, then a normal
/// close (1011 after a failure). What the client sends is ignored.
async fn websocket(state: Arc<State>, start: Start, socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel(PUMP_QUEUE);
    tokio::spawn(pump(state, start, tx));
    let (mut sink, mut incoming) = socket.split();
    let mut code = 1000;
    loop {
        let out = tokio::select! {
            out = rx.recv() => out,
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        let Some(out) = out else { break };
        if matches!(out, Out::Failed(_)) {
            code = 1011;
        }
        if sink
            .send(Message::Text(out.ws_text().into()))
            .await
            .is_err()
        {
            return;
        }
    }
    let frame = CloseFrame {
        code,
        reason: "".into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn resume_points() {
        let mut h = HeaderMap::new();
        assert_eq!(after("", &h).unwrap(), 0);
        assert_eq!(after("x=1&after=7", &h).unwrap(), 7);
        assert!(after("after=-1", &h).is_err());
        assert!(after("after=abc", &h).is_err());
        h.insert(LAST_EVENT_ID, HeaderValue::from_static("12"));
        assert_eq!(after("after=7", &h).unwrap(), 12);
        h.insert(LAST_EVENT_ID, HeaderValue::from_static("x"));
        assert!(after("after=7", &h).is_err());
    }
}
