//! The QUIC edge: accepts connections, checks the token on each connection's first
//! stream, reads one request frame per stream, hands the call to the host's
//! transport-neutral entry ([`crate::calls::Calls`]) and writes the reply.
//! Nothing a peer sends can panic or stop the host: every failure is a typed reply
//! or a closed stream.

use crate::calls::{Caller, Calls};
use durable_client::wire::{self, FrameError, Request, Response, WireError};
use std::sync::Arc;
use std::time::Duration;

/// Largest hello frame accepted before authentication.
const MAX_HELLO: usize = 4096;

/// How long a peer may take to send a whole request frame.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Server {
    pub(crate) calls: Arc<Calls>,
    pub(crate) token: String,
    pub(crate) max_frame: usize,
    /// Who QUIC callers are: the holders of the host token.
    pub(crate) caller: Caller,
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
            Ok(Request::Call(call)) => self.calls.call(call, &self.caller).await,
            Ok(Request::Hello { .. }) => Response::Error(WireError::Malformed {
                message: "hello on an authenticated connection".into(),
            }),
            Err(e) => Response::Error(e.into()),
        };
        let _ = send.write_all(&wire::encode_frame(&response)).await;
        let _ = send.finish();
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
