//! What the QUIC edge's streams and pipes share: answering a request in the protocol
//! version it came in, the count of streams in flight (the host waits for it before it
//! closes its endpoint), the signal that the host is stopping, and the edge's bounds.
//! Below both the stream server and the pipes.

use crate::answering::{Answer, PipeAnswers};
use crate::calls::{Arrival, Caller, Calls, Gauge, InFlight};
use crate::chain::CallChain;
use durable_client::wire::{CallRequest, Request, Response, WireError};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

/// Calls an authenticated connection may have in flight at once (on streams of their
/// own; a pipe has the same bound of its own).
pub(crate) const MAX_STREAMS: u32 = 4096;

/// At shutdown, how long no new stream must open before the endpoint closes.
pub(crate) const QUIET: Duration = Duration::from_millis(100);

/// How long an answer may wait for the peer's acknowledgement during shutdown.
pub(crate) const ACK_WAIT: Duration = Duration::from_secs(2);

/// How long a peer may take to send a whole request frame.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The edge's shared state.
pub(crate) struct Edge {
    /// The host's transport-neutral entry.
    pub(crate) calls: Arc<Calls>,
    /// The largest request frame taken.
    pub(crate) max_frame: usize,
    /// Streams between their request and the acknowledgement of their answer.
    pub(crate) streams: Gauge,
    /// Streams opened so far.
    pub(crate) opened: AtomicUsize,
    /// Set when the host begins to stop: pipes answer what they have and finish.
    pub(crate) closing: tokio::sync::watch::Sender<bool>,
}

impl Edge {
    /// The edge of the entry `calls`, taking frames up to `max_frame` bytes.
    pub(crate) fn new(calls: Arc<Calls>, max_frame: usize) -> Self {
        Edge {
            calls,
            max_frame,
            streams: Default::default(),
            opened: Default::default(),
            closing: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Answer one request that arrived in protocol `version` (on a stream of its own
    /// or on a pipe), as a client of that version reads it.
    pub(crate) async fn answer(&self, request: Request, version: u8, caller: &Caller) -> Response {
        let response = match call_of(request, version) {
            Ok((call, None)) => self.calls.call(call, caller).await,
            Ok((call, Some(chain))) => self.calls.call_in_chain(call, caller, chain).await,
            Err(response) => response,
        };
        for_version(response, version)
    }

    /// Start one request that arrived on a pipe in protocol `version`: a call
    /// admitted and handed to its shard, whose answer lands in `answers` under `key`
    /// (give it to the client through [`for_version`]); or the answer at once.
    pub(crate) fn start(
        &self,
        request: Request,
        version: u8,
        caller: &Caller,
        answers: &Arc<PipeAnswers>,
        key: usize,
        arrival: Arrival,
    ) -> Result<InFlight<'_>, Response> {
        let at_once = |response| for_version(response, version);
        let (call, chain) = call_of(request, version).map_err(at_once)?;
        let admitted = self
            .calls
            .admit(call, caller, chain.map(Arc::new), arrival)
            .map_err(at_once)?;
        Ok(admitted.send(&self.calls.shards, Answer::Pipe(answers.slot(key))))
    }
}

/// The call a request makes (with its chain, for a chained call), or the answer to a
/// request that is not a call this protocol `version` takes.
fn call_of(request: Request, version: u8) -> Result<(CallRequest, Option<CallChain>), Response> {
    let malformed = |message: &str| {
        Err(Response::Error(WireError::Malformed {
            message: message.into(),
        }))
    };
    match request {
        Request::Call(call) => Ok((call, None)),
        Request::ChainCall(chained) if version >= 2 => Ok((
            chained.call,
            Some(CallChain {
                links: chained.chain,
                caller_span: chained.caller_span,
            }),
        )),
        Request::ChainCall(_) => malformed("a chained call needs protocol version 2"),
        Request::Hello { .. } => malformed("hello on an authenticated connection"),
        Request::Pipe => malformed("a pipe needs protocol version 3, and opens a stream"),
        Request::Follow(_) => malformed("a follow needs a stream of its own"),
        Request::Lanes => malformed("lanes are asked on a stream of their own"),
    }
}

/// A response as a client of protocol `version` can read it: errors added after
/// version 1 become the version 1 error of the same retry class. (A version 1 client
/// makes no chained calls, so it can meet `CallCycle` only through a method that
/// returned it as its own error, which is not a framework error.)
pub(crate) fn for_version(response: Response, version: u8) -> Response {
    match response {
        Response::Error(WireError::CallCycle { chain }) if version < 2 => {
            Response::Error(WireError::Internal {
                message: format!("call cycle: {}", chain.join(" -> ")),
            })
        }
        Response::Error(WireError::OverloadedRetry { .. }) if version < 2 => {
            Response::Error(WireError::Overloaded)
        }
        Response::Error(WireError::ObjectTooLarge { size, limit }) if version < 2 => {
            Response::Error(WireError::StorageFull {
                message: format!(
                    "the object would hold {size} bytes, past its limit of {limit}; nothing was applied"
                ),
            })
        }
        other => other,
    }
}
