//! `GET /v1/objects/{class}/{name}/streams/{stream}?after=SEQ`: follow a stream of
//! an object (see [`crate::streams`]) as server-sent events, or, with a WebSocket
//! upgrade, as one text message per item. The items after `after` (or after the
//! `Last-Event-ID` an `EventSource` sends when it reconnects) come from the
//! object's table, then the live tail from the host's hub, each exactly once and in
//! order, then an explicit end.
//!
//! One task per follower ([`crate::follow::pump`]) does the reading; this module
//! only checks the request and renders what the pump sends.

use super::reply::ApiError;
use super::state::State;
use crate::follow::{self, Out, Refused, Start};
use crate::sockets::HeldPlace;
use crate::streams::valid_stream_name;
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State as Extract};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
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

/// How long a WebSocket follower's client may take to accept a message when the
/// gateway does not ping (`--ws-ping-secs 0`); with pings, two ping periods.
const SEND_PATIENCE: Duration = Duration::from_secs(60);

/// Largest message (and frame, and read buffer) a WebSocket follower's client may
/// send: it has nothing to say but pings and a close.
const MAX_FROM_CLIENT: usize = 4096;

/// A comment line this often keeps idle connections (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The context a follower's failure messages name.
#[derive(Clone)]
struct Named {
    class: &'static str,
    name: String,
    stream: String,
}

/// The WebSocket text of an event.
fn ws_text(out: &Out, named: &Named) -> String {
    match out {
        Out::Item { seq, json } => format!("{{\"seq\":{seq},\"item\":{json}}}"),
        Out::End { seq } => format!("{{\"end\":true,\"seq\":{seq}}}"),
        Out::Unknown => unknown_stream(named.class, &named.name, &named.stream)
            .body()
            .to_string(),
        Out::Failed(e) => ApiError::wire(e.clone()).body().to_string(),
    }
}

/// The server-sent event of an event: items are plain `message` events with the
/// sequence number as their id; `end` and `failure` are named events.
fn sse_event(out: &Out, named: &Named) -> Event {
    let data = ws_text(out, named);
    match out {
        Out::Item { seq, .. } => Event::default().id(seq.to_string()).data(data),
        Out::End { seq } => Event::default().id(seq.to_string()).event("end").data(data),
        Out::Unknown | Out::Failed(_) => Event::default().event("failure").data(data),
    }
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
        Ok((start, named)) => match upgrade {
            Ok(upgrade) => {
                // A follower's socket counts against `--max-sockets` like an object's.
                let Some(place) = state.sockets.hold_place() else {
                    return too_many_sockets().into_response();
                };
                // The client has nothing to send: small frames, a small buffer.
                upgrade
                    .max_message_size(MAX_FROM_CLIENT)
                    .max_frame_size(MAX_FROM_CLIENT)
                    .read_buffer_size(MAX_FROM_CLIENT)
                    .on_upgrade(move |socket| websocket(state, start, named, socket, place))
                    .into_response()
            }
            Err(_) => sse(state, start, named),
        },
        Err(e) => e.into_response(),
    }
}

async fn start(
    state: &Arc<State>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    query: &str,
    headers: &HeaderMap,
) -> Result<(Start, Named), ApiError> {
    let Path((class, name, stream)) =
        path.map_err(|e| ApiError::bad_request("bad_request", e.body_text()))?;
    let caller = state.authorize(headers, &class)?;
    let entry = state.class(&class)?;
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
    let named = Named {
        class: entry.name,
        name: name.clone(),
        stream: stream.clone(),
    };
    match follow::start(
        &state.calls,
        &state.streams,
        entry,
        name,
        stream,
        after,
        caller,
    )
    .await
    {
        Ok(start) => Ok((start, named)),
        Err(Refused::Unknown) => Err(unknown_stream(named.class, &named.name, &named.stream)),
        Err(Refused::Wire(e)) => Err(ApiError::wire(e)),
    }
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

/// Answer with server-sent events.
fn sse(state: Arc<State>, start: Start, named: Named) -> Response {
    let (tx, rx) = mpsc::channel(PUMP_QUEUE);
    tokio::spawn(follow::pump(
        state.calls.clone(),
        state.streams.clone(),
        start,
        tx,
    ));
    let events = futures_util::stream::unfold((rx, named), |(mut rx, named)| async move {
        let out = rx.recv().await?;
        let event = sse_event(&out, &named);
        Some((Ok::<Event, Infallible>(event), (rx, named)))
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

/// The refusal of a WebSocket follower past `--max-sockets`.
fn too_many_sockets() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "too_many_sockets",
        "the host holds as many WebSockets as it may (--max-sockets): try again later",
    )
}

/// Answer over a WebSocket: one text message per item, the end, then a normal
/// close (1011 after a failure). What the client sends is ignored. `place` counts the
/// socket among the host's until it ends.
async fn websocket(
    state: Arc<State>,
    start: Start,
    named: Named,
    socket: WebSocket,
    place: HeldPlace,
) {
    let _place = place;
    let (tx, mut rx) = mpsc::channel(PUMP_QUEUE);
    tokio::spawn(follow::pump(
        state.calls.clone(),
        state.streams.clone(),
        start,
        tx,
    ));
    let (mut sink, mut incoming) = socket.split();
    // As for objects' sockets: a ping every `--ws-ping-secs`, and a client silent for
    // two of them (no pong, nothing) is closed; a client that does not take what is
    // sent within that long is dropped too. Either way its place is given back.
    let every = state.ping_interval;
    let pinging = !every.is_zero();
    let patience = if pinging { every * 2 } else { SEND_PATIENCE };
    let mut ticker = tokio::time::interval(if pinging { every } else { SEND_PATIENCE });
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut heard = crate::clock::monotonic();
    let mut code = 1000;
    loop {
        let message = tokio::select! {
            out = rx.recv() => match out {
                Some(out) => {
                    if matches!(out, Out::Failed(_) | Out::Unknown) {
                        code = 1011;
                    }
                    Message::Text(ws_text(&out, &named).into())
                }
                None => break,
            },
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {
                    heard = crate::clock::monotonic();
                    continue;
                }
            },
            _ = ticker.tick(), if pinging => {
                if crate::clock::monotonic().saturating_sub(heard) > every * 2 {
                    let frame = CloseFrame {
                        code: crate::sockets::CLOSE_NO_PONG,
                        reason: "no answer to pings".into(),
                    };
                    let closing = sink.send(Message::Close(Some(frame)));
                    let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
                    return;
                }
                Message::Ping(Default::default())
            }
        };
        match tokio::time::timeout(patience, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
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
