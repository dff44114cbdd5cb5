//! The QUIC edge: accepts connections (on the host's address, and on each shard's lane,
//! where the same code runs on the shard's thread), checks the token on each connection's first
//! stream (or takes the client certificate rustls verified in the handshake instead),
//! reads one request frame per stream, hands the call to the host's transport-neutral
//! entry ([`crate::calls::Calls`]) and writes the reply. A stream that opens with
//! `Request::Pipe` carries many calls instead ([`crate::pipe`]).
//! Nothing a peer sends can panic or stop the host: every failure is a typed reply
//! or a closed stream.

use crate::answer::{Edge, ACK_WAIT, QUIET, READ_TIMEOUT};
use crate::calls::Caller;
use crate::follow::{self, Out, Refused};
use durable_client::wire::{
    self, FollowRequest, FrameError, Request, Response, StreamFrame, WireError,
};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Frames waiting between a follower's pump and its QUIC stream.
const FOLLOW_QUEUE: usize = 256;

/// Largest hello frame accepted before authentication.
const MAX_HELLO: usize = 4096;

/// Pipes one connection may have open at once (the Rust client opens one).
const MAX_PIPES: usize = 8;

/// Bytes of request frames one connection may be receiving at once on its streams,
/// each counted from its length prefix until it has been read whole (a pipe reads one
/// frame at a time; once read, a call's arguments count against the host's bound on
/// calls in flight, see [`crate::admission`]). A frame that would take the connection
/// past it is answered `Overloaded` at once (not applied) and left unread: without it,
/// a peer holding 4,096 streams each half way through a 4 MiB frame would hold 16 GiB
/// of the host's memory. Never below the frame limit, so that any one frame fits.
const RECEIVING_BYTES: usize = 64 << 20;

/// The stream error code of a pipe refused past [`MAX_PIPES`].
const PIPES_REFUSED: u32 = 2;

/// Streams a lane's authenticated connection may have open at once: its pipes and a
/// few more. Quinn sizes a connection's stream state by this limit, and a client has a
/// connection per lane (calls on a lane go on a pipe; streams of one call each, and
/// follows, on the host's address).
const LANE_STREAMS: u32 = 16;

/// Which of the host's endpoints a connection came in on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum EndpointKind {
    /// The host's `--listen` address: any call, and streams of one call each.
    Address,
    /// A shard's lane.
    Lane,
}

impl EndpointKind {
    /// Streams an authenticated connection may have open at once.
    fn streams(self) -> u32 {
        match self {
            EndpointKind::Address => crate::answer::MAX_STREAMS,
            EndpointKind::Lane => LANE_STREAMS,
        }
    }

    /// The `endpoint` label of `durable_connections_total`.
    fn label(self) -> &'static str {
        match self {
            EndpointKind::Address => "address",
            EndpointKind::Lane => "lane",
        }
    }
}

pub(crate) struct Server {
    /// What streams and pipes share: the entry, the frame limit, the count of streams
    /// in flight, the stopping signal.
    pub(crate) edge: Edge,
    pub(crate) token: String,
    /// Who token callers are: the holders of the host token. Callers with a client
    /// certificate are `cert:` and its subject's common name.
    pub(crate) caller: Arc<Caller>,
    /// Deadline and caps for connections that have not authenticated yet.
    pub(crate) auth: AuthLimits,
    /// The followers of the host's streams.
    pub(crate) hub: Arc<crate::streams::Hub>,
    /// The UDP ports of the host's lanes, in shard order (see [`Response::Lanes`]).
    pub(crate) lanes: Vec<u16>,
}

impl Server {
    /// Accept `endpoint`'s connections (the host's address or a lane, `on`); each may
    /// open as many streams at once as `on` allows once authenticated.
    pub(crate) async fn accept_loop(self: Arc<Self>, endpoint: quinn::Endpoint, on: EndpointKind) {
        while let Some(incoming) = endpoint.accept().await {
            let server = self.clone();
            tokio::spawn(async move { server.connection(incoming, on).await });
        }
    }

    async fn connection(self: Arc<Self>, incoming: quinn::Incoming, on: EndpointKind) {
        let ip = incoming.remote_address().ip();
        let Some(pending) = self.auth.admit(ip) else {
            // Too many connections waiting to authenticate: refuse before the handshake.
            incoming.refuse();
            return;
        };
        let authenticated = tokio::time::timeout(self.auth.timeout, async {
            let conn = incoming.await.ok()?;
            let by_cert = certificate_caller(&conn);
            let (send, recv) = conn.accept_bi().await.ok()?;
            let ok = self.hello(send, recv, by_cert.is_some()).await;
            Some((conn, ok, by_cert))
        })
        .await;
        drop(pending);
        let (conn, ok, by_cert) = match authenticated {
            Ok(Some(c)) => c,
            Ok(None) => return,
            Err(_) => {
                // Silent past the deadline (or a handshake that never ends): the
                // connection future is dropped, which closes it.
                return;
            }
        };
        if ok {
            conn.set_max_concurrent_bi_streams(on.streams().into());
            crate::telemetry::connection_authenticated(on.label());
        }
        if !ok {
            // Let the rejection reach the client, then close.
            tokio::time::sleep(Duration::from_millis(500)).await;
            conn.close(1u32.into(), b"unauthenticated");
            return;
        }
        let caller = by_cert.map_or_else(|| self.caller.clone(), Arc::new);
        let shared = Arc::new(PerConnection {
            pipes: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
        });
        while let Ok((send, recv)) = conn.accept_bi().await {
            let server = self.clone();
            let caller = caller.clone();
            let shared = shared.clone();
            tokio::spawn(async move { server.stream(send, recv, &caller, &shared).await });
        }
    }

    /// Read the hello and answer it. `by_cert`: the handshake verified a client
    /// certificate, which authenticates the connection whatever token the hello
    /// carries (clients with a certificate send an empty one).
    async fn hello(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        by_cert: bool,
    ) -> bool {
        let hello = tokio::time::timeout(READ_TIMEOUT, async {
            let hello = read_frame(&mut recv, MAX_HELLO, None).await?;
            read_end(&mut recv)
                .await
                .map(|()| hello)
                .map_err(NotRead::from)
        })
        .await;
        let (ok, response, version) = match hello.unwrap_or(Err(FrameError::Truncated.into())) {
            Ok((Request::Hello { token }, v))
                if by_cert || constant_time_eq(token.as_bytes(), self.token.as_bytes()) =>
            {
                (true, Response::Welcome, v)
            }
            Ok((_, v)) => (false, Response::Error(WireError::Unauthenticated), v),
            Err(e) => (
                false,
                Response::Error(e.into_wire()),
                wire::MIN_PROTOCOL_VERSION,
            ),
        };
        let _ = send
            .write_all(&wire::encode_frame_in(&response, version))
            .await;
        let _ = send.finish();
        ok
    }

    /// Serve one stream of a connection (whose open pipes and frames being received
    /// `shared` counts).
    async fn stream(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        caller: &Caller,
        shared: &PerConnection,
    ) {
        let pipes = &shared.pipes;
        let receiving = Some((&shared.receiving, RECEIVING_BYTES.max(self.edge.max_frame)));
        let _open = self.edge.streams.enter();
        self.edge.opened.fetch_add(1, Ordering::AcqRel);
        let request = tokio::time::timeout(READ_TIMEOUT, async {
            let request = read_frame(&mut recv, self.edge.max_frame, receiving).await?;
            if !matches!(request, (Request::Pipe, wire::PIPE_VERSION..)) {
                // One frame per stream, then its end.
                read_end(&mut recv).await?;
            }
            Ok::<_, NotRead>(request)
        })
        .await;
        // Answer in the version asked (an error about the frame itself, in the
        // oldest: a client that could not be understood may be old).
        let (response, version) = match request.unwrap_or(Err(FrameError::Truncated.into())) {
            Ok((Request::Follow(follow), v)) => return self.follow(follow, send, caller, v).await,
            Ok((Request::Pipe, v)) if v >= wire::PIPE_VERSION => {
                drop(_open);
                if pipes.fetch_add(1, Ordering::AcqRel) >= MAX_PIPES {
                    // A client needs one; a connection holding more is refused them
                    // (each may have MAX_STREAMS calls in flight).
                    pipes.fetch_sub(1, Ordering::AcqRel);
                    let _ = recv.stop(PIPES_REFUSED.into());
                    let _ = send.reset(PIPES_REFUSED.into());
                    return;
                }
                crate::pipe::serve(&self.edge, send, recv, caller).await;
                pipes.fetch_sub(1, Ordering::AcqRel);
                return;
            }
            Ok((Request::Lanes, v)) => (Response::Lanes(self.lanes.clone()), v),
            Ok((request, v)) => (self.edge.answer(request, v, caller).await, v),
            Err(e) => (Response::Error(e.into_wire()), wire::MIN_PROTOCOL_VERSION),
        };
        let _ = send
            .write_all(&wire::encode_frame_in(&response, version))
            .await;
        let _ = send.finish();
        if self.edge.calls.is_shutting_down() {
            // The endpoint closes once every stream is done: make sure this answer has
            // reached the peer first (closing discards unacknowledged data).
            let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
        }
    }

    /// Follow a stream for a client: [`StreamFrame::Started`], then one frame per
    /// item, then the end (or an error), until the client stops reading.
    async fn follow(
        &self,
        request: FollowRequest,
        mut send: quinn::SendStream,
        caller: &Caller,
        version: u8,
    ) {
        let start = match self.edge.calls.classes.get(request.class.as_str()) {
            None => Err(StreamFrame::Error(WireError::UnknownClass {
                class: request.class,
            })),
            Some(_) if !crate::streams::valid_stream_name(&request.stream) => {
                Err(StreamFrame::Error(WireError::BadArguments {
                    message: format!(
                        "a stream name is 1 to {} bytes of letters, digits and -_.:",
                        crate::streams::MAX_STREAM_NAME
                    ),
                }))
            }
            Some(class) => {
                let started = follow::start(
                    &self.edge.calls,
                    &self.hub,
                    class,
                    request.name,
                    request.stream,
                    request.after,
                    caller.clone(),
                )
                .await;
                match started {
                    Ok(s) => Ok(s),
                    Err(Refused::Unknown) => Err(StreamFrame::UnknownStream),
                    Err(Refused::Wire(e)) => Err(StreamFrame::Error(e)),
                }
            }
        };
        let start = match start {
            Ok(s) => s,
            Err(frame) => {
                let _ = send
                    .write_all(&wire::encode_frame_in(&frame, version))
                    .await;
                let _ = send.finish();
                return;
            }
        };
        let started = StreamFrame::Started {
            last_seq: start.last_seq(),
        };
        if send
            .write_all(&wire::encode_frame_in(&started, version))
            .await
            .is_err()
        {
            return;
        }
        let (tx, mut rx) = tokio::sync::mpsc::channel(FOLLOW_QUEUE);
        tokio::spawn(follow::pump(
            self.edge.calls.clone(),
            self.hub.clone(),
            start,
            tx,
        ));
        loop {
            let out = tokio::select! {
                out = rx.recv() => out,
                _ = send.stopped() => return,
            };
            let Some(out) = out else { break };
            let (frame, last) = match out {
                Out::Item { seq, json } => (
                    StreamFrame::Item {
                        seq,
                        json: json.to_string(),
                    },
                    false,
                ),
                Out::End { seq } => (StreamFrame::End { seq }, true),
                Out::Unknown => (StreamFrame::UnknownStream, true),
                Out::Failed(e) => (StreamFrame::Error(e), true),
            };
            if send
                .write_all(&wire::encode_frame_in(&frame, version))
                .await
                .is_err()
            {
                return;
            }
            if last {
                break;
            }
        }
        let _ = send.finish();
    }

    /// Wait (up to `limit`) until no stream is between its request and the peer's
    /// acknowledgement of its answer, and none has opened for [`QUIET`]: calls a
    /// client sent just before the stop still arrive, and are answered `ShuttingDown`
    /// rather than lost with the connection. Call after the entry stopped taking calls.
    pub(crate) async fn drain(&self, limit: Duration) {
        // Followers end now (they would hold their streams open forever); pipes finish
        // once they have answered what they were sent and nothing more comes.
        self.hub.close_all();
        self.edge.closing.send_replace(true);
        let wait = async {
            loop {
                self.edge.streams.zero().await;
                let opened = self.edge.opened.load(Ordering::Acquire);
                tokio::time::sleep(QUIET).await;
                if self.edge.opened.load(Ordering::Acquire) == opened
                    && self.edge.streams.get() == 0
                {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }
}

/// Connections that have not presented the token yet: a deadline for each, and caps
/// host-wide and per source address, so silent peers cannot pile up.
pub(crate) struct AuthLimits {
    timeout: Duration,
    max: usize,
    max_per_ip: usize,
    pending: std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl AuthLimits {
    pub(crate) fn new(timeout: Duration, max: usize, max_per_ip: usize) -> Self {
        AuthLimits {
            timeout,
            max: max.max(1),
            max_per_ip: max_per_ip.max(1),
            pending: Default::default(),
        }
    }

    /// Count one more connection from `ip` waiting to authenticate, unless a cap is
    /// reached; the count drops with the returned guard.
    fn admit(&self, ip: IpAddr) -> Option<Pending<'_>> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let from_ip = p.1.get(&ip).copied().unwrap_or(0);
        if p.0 >= self.max || from_ip >= self.max_per_ip {
            tracing::warn!(%ip, waiting = p.0, from_ip, "refusing a connection: too many waiting to authenticate");
            return None;
        }
        p.0 += 1;
        *p.1.entry(ip).or_default() += 1;
        Some(Pending(self, ip))
    }
}

struct Pending<'a>(&'a AuthLimits, IpAddr);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let mut p = self.0.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.0 -= 1;
        if let Some(n) = p.1.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                p.1.remove(&self.1);
            }
        }
    }
}

/// What one connection's streams share.
struct PerConnection {
    /// Its open pipes (see [`MAX_PIPES`]).
    pipes: AtomicUsize,
    /// Bytes of the frames it is receiving (see [`RECEIVING_BYTES`]).
    receiving: AtomicUsize,
}

/// Why a stream's frame was not read.
#[derive(Debug)]
enum NotRead {
    /// The frame itself: truncated, too large, trailing bytes, malformed.
    Frame(FrameError),
    /// Its connection is receiving as many bytes of frames as it may
    /// ([`RECEIVING_BYTES`]): the frame was left unread.
    Busy,
}

impl From<FrameError> for NotRead {
    fn from(e: FrameError) -> Self {
        NotRead::Frame(e)
    }
}

impl NotRead {
    /// The answer: the frame's error, or `Overloaded` (not applied; the peer may send
    /// it again once its other frames are in).
    fn into_wire(self) -> WireError {
        match self {
            NotRead::Frame(e) => e.into(),
            NotRead::Busy => WireError::Overloaded,
        }
    }
}

/// A frame's bytes counted among those its connection is receiving, until dropped.
struct Receiving<'a>(&'a AtomicUsize, usize);

impl Drop for Receiving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

/// Count a frame of `len` bytes among those its connection is receiving, if they stay
/// within `budget`.
fn start_receiving(count: &AtomicUsize, budget: usize, len: usize) -> Option<Receiving<'_>> {
    let before = count.fetch_add(len, Ordering::AcqRel);
    let counted = Receiving(count, len);
    (before.saturating_add(len) <= budget).then_some(counted)
}

/// Read one frame from a stream, checking the declared size before reading the body
/// (and, given `receiving`, that its connection may receive that many bytes more: see
/// [`RECEIVING_BYTES`]); with the protocol version it came in. The stream may go on (a
/// pipe).
async fn read_frame(
    recv: &mut quinn::RecvStream,
    limit: usize,
    receiving: Option<(&AtomicUsize, usize)>,
) -> Result<(Request, u8), NotRead> {
    let mut prefix = [0u8; 4];
    if recv.read_exact(&mut prefix).await.is_err() {
        return Err(FrameError::Truncated.into());
    }
    let len = u32::from_le_bytes(prefix) as usize;
    if len > limit {
        let _ = recv.stop(0u32.into());
        return Err(FrameError::TooLarge {
            size: len as u64,
            limit: limit as u64,
        }
        .into());
    }
    // Held until the frame is read whole (or reading it fails).
    let _counted = match receiving {
        Some((count, budget)) => match start_receiving(count, budget, len) {
            Some(counted) => Some(counted),
            None => {
                let _ = recv.stop(0u32.into());
                return Err(NotRead::Busy);
            }
        },
        None => None,
    };
    // Grown as the bytes come, not reserved for all the prefix promises.
    let mut frame = Vec::with_capacity(4 + len.min(64 * 1024));
    frame.extend_from_slice(&prefix);
    while frame.len() < 4 + len {
        match recv.read_chunk(4 + len - frame.len(), true).await {
            Ok(Some(chunk)) => frame.extend_from_slice(&chunk.bytes),
            Ok(None) | Err(_) => return Err(FrameError::Truncated.into()),
        }
    }
    Ok(wire::decode_frame_versioned(&frame, limit)?)
}

/// The end of a stream that carries one frame: anything more is `Trailing`.
async fn read_end(recv: &mut quinn::RecvStream) -> Result<(), FrameError> {
    match recv.read_to_end(0).await {
        Ok(_) => Ok(()),
        Err(quinn::ReadToEndError::TooLong) => Err(FrameError::Trailing),
        Err(_) => Err(FrameError::Truncated),
    }
}

/// The caller a connection's client certificate names, if it presented one. The host
/// asks for certificates only when it has a client CA, and rustls has verified any
/// certificate against that CA before the handshake completes, so a certificate here
/// authenticates the connection.
fn certificate_caller(conn: &quinn::Connection) -> Option<Caller> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    let leaf = chain.first()?;
    let name = crate::tls::subject_common_name(leaf).unwrap_or_default();
    tracing::debug!(caller = %name, remote = %conn.remote_address(), "client authenticated by certificate");
    Some(Caller(format!("cert:{name}")))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
