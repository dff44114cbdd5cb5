//! `GET /v1/objects/{class}/{name}/ws`: a WebSocket held by the gateway for an
//! object (see [`crate::sockets`]). Each socket has two tasks: a reader that turns
//! the client's messages and close into turns of the object, one at a time and in
//! order, and a writer that drains the socket's bounded queue (filled by released
//! batches) to the client. Pings are answered by the WebSocket layer without a turn;
//! the writer pings the client every `--ws-ping-secs` and closes it if nothing came
//! back for two intervals, and the reader answers the object's auto-response pair
//! itself: neither wakes the object.

use super::reply::ApiError;
use super::state::State;
use crate::calls::Caller;
use crate::class::ClassEntry;
use crate::sockets::{
    Closing, Outgoing, Registered, SocketEvent, WsMessage, CLOSE_INTERNAL, CLOSE_NO_PONG,
    CLOSE_REFUSED, CLOSE_SLOW_CLIENT, CLOSE_TRY_AGAIN,
};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use durable_client::wire::{Response as Answer, WireError};
use durable_client::ObjectId;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// The read buffer of a socket. tungstenite's default (128 KiB) is zero-filled before
/// the first read, so it would cost each open socket 128 KiB of resident memory;
/// larger messages grow the buffer as needed (up to the frame limit).
const READ_BUFFER: usize = 4096;

/// How long the writer tries to send a close frame to a client that may not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Authorize and upgrade (the caller checked the path and auth).
pub(super) fn upgrade(
    state: Arc<State>,
    class: Arc<ClassEntry>,
    name: String,
    caller: Caller,
    query: String,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if !class.sockets.message {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_websockets",
            format!(
                "class {} takes no WebSockets (it has no #[on_message] handler)",
                class.name
            ),
        )
        .with("class", class.name));
    }
    if state.calls.is_shutting_down() {
        return Err(ApiError::wire(WireError::ShuttingDown));
    }
    // Opening a socket is a call of its caller (and pays for its close, never refused).
    if let Err(retry_after_ms) = state.calls.admit_socket(&class, &name, &caller) {
        return Err(ApiError::wire(WireError::OverloadedRetry {
            retry_after_ms,
        }));
    }
    if state.sockets.is_full() {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_sockets",
            "the host holds as many WebSockets as it may (--max-sockets): try again later",
        ));
    }
    let max = state.max_body;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .on_upgrade(move |socket| run(state, class, name, caller, query, socket))
        .into_response())
}

/// One socket, from its upgrade to its end.
async fn run(
    state: Arc<State>,
    class: Arc<ClassEntry>,
    name: String,
    caller: Caller,
    query: String,
    socket: WebSocket,
) {
    let registry = state.sockets.clone();
    let object = ObjectId::from_name(class.name, &name);
    let Some(Registered { id, outgoing, kill }) = registry.register(class.name, object, query)
    else {
        // Filled up since the upgrade was accepted.
        let mut socket = socket;
        let frame = CloseFrame {
            code: CLOSE_TRY_AGAIN,
            reason: "too many WebSockets on this host".into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
        return;
    };
    tracing::debug!(class = class.name, %object, socket = %id, "WebSocket open");
    let (sink, mut stream) = socket.split();
    let (done_tx, mut done) = oneshot::channel::<()>();
    // When the client last sent anything (a pong included), in ms on the clock
    // module's monotonic clock; `u64::MAX` while the reader waits on one of the
    // socket's turns (it reads nothing then, pongs included: the client is not silent).
    let heard = Arc::new(AtomicU64::new(crate::clock::monotonic().as_millis() as u64));
    let hear_now = || {
        heard.store(
            crate::clock::monotonic().as_millis() as u64,
            Ordering::Relaxed,
        )
    };
    let pings = Pings {
        every: state.ping_interval,
        heard: heard.clone(),
        close: {
            let (registry, class) = (registry.clone(), class.name);
            Box::new(move |code: u16, reason: &str| {
                registry.close(class, object, id, code, reason.to_owned())
            })
        },
    };
    tokio::spawn(write(sink, outgoing, kill, done_tx, pings));
    let close = |code: u16, reason: &str| {
        registry.close(class.name, object, id, code, reason.to_owned());
    };
    let mut accepted = true;
    if class.sockets.connect {
        let socket = registry.socket(class.name, object, id);
        let answer = match socket {
            Some(s) => {
                let event = SocketEvent::Connect(s);
                heard.store(u64::MAX, Ordering::Relaxed);
                let answer = state
                    .calls
                    .socket_event(&class, &name, &event, &caller)
                    .await;
                hear_now();
                answer
            }
            None => Answer::Return(Vec::new()),
        };
        if let Err((code, reason)) = judge(answer, "refused by the object") {
            accepted = false;
            close(code, &reason);
        }
    }
    // The client's close code and reason, if it sent one.
    let mut client_close = (1006, String::from("the connection ended"));
    loop {
        if !accepted {
            break;
        }
        let next = tokio::select! {
            biased;
            _ = &mut done => break,
            next = stream.next() => next,
        };
        hear_now();
        let message = match next {
            None | Some(Err(_)) => break,
            Some(Ok(Message::Close(frame))) => {
                client_close = frame
                    .map(|f| (f.code, f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                break;
            }
            Some(Ok(Message::Text(t))) => {
                if registry.auto_respond(class.name, object, id, t.as_str()) {
                    continue;
                }
                WsMessage::Text(t.to_string())
            }
            Some(Ok(Message::Binary(b))) => WsMessage::Binary(b.to_vec()),
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
        };
        let Some(socket) = registry.socket(class.name, object, id) else {
            break; // being closed
        };
        let event = SocketEvent::Message(socket, message);
        heard.store(u64::MAX, Ordering::Relaxed);
        let answer = state
            .calls
            .socket_event(&class, &name, &event, &caller)
            .await;
        hear_now();
        if let Err((code, reason)) = judge(answer, "") {
            close(code, &reason);
        }
    }
    let Some((socket, closing)) = registry.remove(class.name, object, id) else {
        return;
    };
    tracing::debug!(class = class.name, %object, socket = %id, "WebSocket closed");
    let (code, reason) = match closing {
        Some(Closing {
            by_object: true, ..
        }) => return,
        Some(Closing { code, reason, .. }) => (code, reason),
        None => client_close,
    };
    if accepted && class.sockets.close {
        let event = SocketEvent::Close(socket, code, reason);
        let answer = state
            .calls
            .socket_event(&class, &name, &event, &caller)
            .await;
        if let Err((_, reason)) = judge(answer, "") {
            tracing::debug!(class = class.name, %object, socket = %id, reason, "the object's on_close failed");
        }
    }
}

/// A socket turn's answer: fine (the handler's own error too: its turn was rolled
/// back and its effects dropped, the socket stays), or the close code and reason.
/// A connection's answers (`Welcome`, `Lanes`) never answer a turn: one here is the
/// host's fault, and closes the socket as an internal error, as the HTTP routes
/// answer it with a 500.
fn judge(answer: Answer, refused: &str) -> Result<(), (u16, String)> {
    match answer {
        Answer::Return(_) => Ok(()),
        Answer::Welcome | Answer::Lanes(_) => {
            Err((CLOSE_INTERNAL, "the host gave an unexpected answer".into()))
        }
        Answer::AppError(_) if refused.is_empty() => Ok(()),
        Answer::AppError(_) => Err((CLOSE_REFUSED, refused.to_owned())),
        Answer::Error(WireError::BadArguments { message }) => Err((CLOSE_REFUSED, message)),
        Answer::Error(WireError::Overloaded | WireError::OverloadedRetry { .. }) => {
            Err((CLOSE_TRY_AGAIN, "the object is overloaded".into()))
        }
        Answer::Error(WireError::ShuttingDown) => {
            Err((CLOSE_TRY_AGAIN, "the host is shutting down".into()))
        }
        Answer::Error(e) => {
            // A close reason is at most 123 bytes: the kind only.
            let kind = format!("{e:?}");
            let kind = kind.split([' ', '{', '(']).next().unwrap_or("error");
            Err((CLOSE_INTERNAL, format!("the object's turn failed: {kind}")))
        }
    }
}

/// The writer's keep-alive: ping every `every` (never if zero), and `close` the
/// socket once the client was silent for two intervals.
struct Pings {
    every: Duration,
    heard: Arc<AtomicU64>,
    /// Close the socket with this code and reason.
    close: CloseWith,
}

/// Closes one socket with a code and a reason.
type CloseWith = Box<dyn FnOnce(u16, &str) + Send>;

/// How long a send to a client may wait when the gateway does not ping
/// (`--ws-ping-secs 0`); with pings, two ping periods.
const SEND_PATIENCE: Duration = Duration::from_secs(60);

/// Write the socket's queue to the client until it closes, the queue ends (the
/// socket left the registry) or the host or object closes the socket (then what is
/// still queued and a close frame, within [`CLOSE_TIMEOUT`]), pinging it meanwhile.
/// Dropping `done` tells the reader.
async fn write(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut outgoing: tokio::sync::mpsc::Receiver<Outgoing>,
    mut kill: oneshot::Receiver<Closing>,
    done: oneshot::Sender<()>,
    pings: Pings,
) {
    let closing = {
        let write_all = async {
            let Pings {
                every,
                heard,
                close,
            } = pings;
            let mut close = Some(close);
            let patience = if every.is_zero() {
                SEND_PATIENCE
            } else {
                every * 2
            };
            let period = if every.is_zero() {
                Duration::from_secs(86_400 * 365)
            } else {
                every
            };
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The first tick is at once: the first ping goes one period after opening.
            ticker.tick().await;
            loop {
                let frame = tokio::select! {
                    m = outgoing.recv() => match m {
                        Some(Outgoing::Text(t)) => Message::Text(t.into()),
                        Some(Outgoing::Binary(b)) => Message::Binary(b.into()),
                        None => return,
                    },
                    _ = ticker.tick(), if !every.is_zero() => {
                        let silent = crate::clock::monotonic().saturating_sub(Duration::from_millis(heard.load(Ordering::Relaxed)));
                        if silent > every * 2 {
                            if let Some(close) = close.take() {
                                close(CLOSE_NO_PONG, "no answer to pings"); // the kill arm ends this writer
                            }
                            continue;
                        }
                        Message::Ping(Default::default())
                    }
                };
                // A client that takes nothing (its receive window full) is closed as
                // slow once a send waits two ping periods (a minute without pings):
                // the silence check above cannot run while a send waits.
                match tokio::time::timeout(patience, sink.send(frame)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return,
                    Err(_) => {
                        if let Some(close) = close.take() {
                            close(CLOSE_SLOW_CLIENT, "the client does not read");
                        // the kill arm ends this writer
                        } else {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            biased;
            k = &mut kill => k.ok(),
            _ = write_all => None,
        }
    };
    if let Some(c) = closing {
        let frame = CloseFrame {
            code: c.code,
            reason: c.reason.into(),
        };
        // What was released to the socket before it was closed (a turn's sends before
        // its `ctx.close`, or the last ones before the host stops) goes first, in order.
        let last = async {
            while let Ok(m) = outgoing.try_recv() {
                let m = match m {
                    Outgoing::Text(t) => Message::Text(t.into()),
                    Outgoing::Binary(b) => Message::Binary(b.into()),
                };
                sink.send(m).await?;
            }
            sink.send(Message::Close(Some(frame))).await
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, last).await;
    }
    drop(done);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connections_answer_to_a_socket_turn_closes_the_socket_as_internal() {
        assert_eq!(judge(Answer::Return(Vec::new()), "refused"), Ok(()));
        assert_eq!(judge(Answer::AppError(Vec::new()), ""), Ok(()));
        for answer in [Answer::Welcome, Answer::Lanes(Vec::new())] {
            let (code, reason) = judge(answer, "").unwrap_err();
            assert_eq!(code, CLOSE_INTERNAL);
            assert!(reason.contains("unexpected"), "{reason}");
        }
    }
}
