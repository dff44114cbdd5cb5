//! The QUIC edge: accepts connections, checks the token on each connection's first
//! stream, reads one request frame per stream, checks class, method and schema
//! before any object is touched, hands the call to its shard and writes the reply.
//! Nothing a peer sends can panic or stop the host: every failure is a typed reply
//! or a closed stream.

use crate::class::ClassEntry;
use crate::clock::Clock;
use crate::shard::{Call, Shards};
use durable_client::wire::{self, CallRequest, FrameError, Request, Response, WireError};
use durable_client::ObjectId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// Largest hello frame accepted before authentication.
const MAX_HELLO: usize = 4096;

/// How long a peer may take to send a whole request frame.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Server {
    pub(crate) classes: HashMap<&'static str, Arc<ClassEntry>>,
    pub(crate) shards: Arc<Shards>,
    pub(crate) token: String,
    pub(crate) max_frame: usize,
    pub(crate) shutting_down: AtomicBool,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) idle: Notify,
    pub(crate) clock: Arc<dyn Clock>,
}

impl Server {
    pub(crate) async fn accept_loop(self: Arc<Self>, endpoint: quinn::Endpoint) {
        while let Some(incoming) = endpoint.accept().await {
            let server = self.clone();
            tokio::spawn(async move { server.connection(incoming).await });
        }
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming) {
        let Ok(conn) = incoming.await else { return };
        let Ok((send, recv)) = conn.accept_bi().await else {
            return;
        };
        if !self.hello(send, recv).await {
            // Let the rejection reach the client, then close.
            tokio::time::sleep(Duration::from_millis(500)).await;
            conn.close(1u32.into(), b"unauthenticated");
            return;
        }
        while let Ok((send, recv)) = conn.accept_bi().await {
            let server = self.clone();
            tokio::spawn(async move { server.stream(send, recv).await });
        }
    }

    async fn hello(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> bool {
        let hello = tokio::time::timeout(READ_TIMEOUT, read_frame(&mut recv, MAX_HELLO)).await;
        let (ok, response) = match hello.unwrap_or(Err(FrameError::Truncated)) {
            Ok(Request::Hello { token })
                if constant_time_eq(token.as_bytes(), self.token.as_bytes()) =>
            {
                (true, Response::Welcome)
            }
            Ok(_) => (false, Response::Error(WireError::Unauthenticated)),
            Err(e) => (false, Response::Error(e.into())),
        };
        let _ = send.write_all(&wire::encode_frame(&response)).await;
        let _ = send.finish();
        ok
    }

    async fn stream(&self, mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
        let request =
            tokio::time::timeout(READ_TIMEOUT, read_frame(&mut recv, self.max_frame)).await;
        let response = match request.unwrap_or(Err(FrameError::Truncated)) {
            Ok(Request::Call(call)) => self.call(call).await,
            Ok(Request::Hello { .. }) => Response::Error(WireError::Malformed {
                message: "hello on an authenticated connection".into(),
            }),
            Err(e) => Response::Error(e.into()),
        };
        let _ = send.write_all(&wire::encode_frame(&response)).await;
        let _ = send.finish();
    }

    async fn call(&self, request: CallRequest) -> Response {
        let received = self.clock.now_ms();
        let Some(class) = self.classes.get(request.class.as_str()) else {
            return Response::Error(WireError::UnknownClass {
                class: request.class,
            });
        };
        let Some(&(method, info)) = class.methods.get(request.method.as_str()) else {
            return Response::Error(WireError::UnknownMethod {
                class: request.class,
                method: request.method,
            });
        };
        if info.fingerprint != request.fingerprint {
            return Response::Error(WireError::SchemaMismatch {
                class: request.class,
                method: request.method,
            });
        }
        if let Some(name) = &request.name {
            if ObjectId::from_name(class.name, name) != request.object {
                return Response::Error(WireError::Malformed {
                    message: "the object id does not match the name".into(),
                });
            }
        }
        let _guard = InFlight::enter(self);
        if self.shutting_down.load(Ordering::Acquire) {
            return Response::Error(WireError::ShuttingDown);
        }
        let (tx, rx) = oneshot::channel();
        let timeout = request.timeout_ms.min(24 * 3600 * 1000);
        self.shards.send(Call {
            class: class.clone(),
            method,
            deadline_ms: received + timeout,
            request,
            reply: tx,
        });
        rx.await.unwrap_or_else(|_| {
            // The shard stopped (a crash, or a stop without draining) after taking the
            // call: its batch may have reached the log.
            Response::Error(WireError::Indeterminate {
                message: "the host stopped before answering".into(),
            })
        })
    }

    /// Refuse new calls and wait (up to `limit`) for the ones in flight.
    pub(crate) async fn drain(&self, limit: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        let wait = async {
            loop {
                let idle = self.idle.notified();
                if self.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

struct InFlight<'a>(&'a Server);

impl<'a> InFlight<'a> {
    fn enter(server: &'a Server) -> Self {
        server.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(server)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Read one whole frame from a stream, checking the declared size before reading.
async fn read_frame(recv: &mut quinn::RecvStream, limit: usize) -> Result<Request, FrameError> {
    let mut prefix = [0u8; 4];
    if recv.read_exact(&mut prefix).await.is_err() {
        return Err(FrameError::Truncated);
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limit {
        let _ = recv.stop(0u32.into());
        return Err(FrameError::TooLarge {
            size: len as u64,
            limit: limit as u64,
        });
    }
    let rest = match recv.read_to_end(len).await {
        Ok(rest) => rest,
        Err(quinn::ReadToEndError::TooLong) => return Err(FrameError::Trailing),
        Err(_) => return Err(FrameError::Truncated),
    };
    let mut frame = Vec::with_capacity(4 + rest.len());
    frame.extend_from_slice(&prefix);
    frame.extend_from_slice(&rest);
    wire::decode_frame(&frame, limit)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
