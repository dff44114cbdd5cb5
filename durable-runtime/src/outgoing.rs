//! Calls from inside a turn to other objects ([`crate::Context::object`]): the typed
//! stubs a turn gets, and the output gate they pass through.
//!
//! Before an outgoing call leaves, the calling object's writes so far (its turn's and
//! the batch's earlier turns') are committed as a batch of their own and made durable:
//! the callee never acts on a write its caller could still lose. The turn asks the
//! shard for that through a channel while it waits ([`TurnLink`]); the shard carries
//! it out between polls of the turn. The call then travels with the chain of objects
//! waiting on it (a cycle is refused at once, see [`crate::chain::CallChain`]), with
//! what is left of the turn's deadline, and with a request id derived from the turn's
//! own: a turn run again after a crash (its caller resent the same request id) sends
//! the same request ids, so each callee applies each call once.

use crate::chain::CallChain;
use crate::clock::Clock;
use durable_client::wire::{CallRequest, ChainLink, Response, WireError};
use durable_client::{CallError, Client, Transport, TransportFuture};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// A future resolving to the answer of one call.
pub(crate) type ReplyFuture = Pin<Box<dyn Future<Output = Response> + Send + 'static>>;

/// Delivers calls to the objects of this host (implemented by the host's call entry).
pub(crate) trait LocalCalls: Send + Sync {
    /// Run one call made in `chain` by `caller`.
    fn call_in_chain(&self, request: CallRequest, caller: String, chain: CallChain) -> ReplyFuture;
}

/// A request, from a waiting turn to its shard, to make its object's writes so far
/// durable: the turn's number and where to answer once they are (or why they could
/// not be).
pub(crate) type FlushRequest = (u64, oneshot::Sender<Result<(), String>>);

/// What the shard tells a turn about itself, kept on the [`crate::Context`] for the
/// length of the turn; the stubs the turn makes are built from it only when it makes
/// one ([`TurnInfo::link`]), so a turn that calls no one pays nothing for it.
pub(crate) struct TurnInfo {
    pub(crate) local: Arc<dyn LocalCalls>,
    /// The chain the turn itself was called in, if it was called by another object.
    pub(crate) chain: Option<Arc<CallChain>>,
    /// The turn's deadline on the host clock (ms), if it has one.
    pub(crate) deadline_ms: Option<u64>,
    /// The request id the turn runs under (outgoing ids derive from it), if any.
    pub(crate) request_id: Option<[u8; 16]>,
    /// The turn's tracing span id (0: none).
    pub(crate) span: u64,
    /// The turn's number on its shard (a stub kept past its turn is refused).
    pub(crate) turn: u64,
    pub(crate) flush: mpsc::UnboundedSender<FlushRequest>,
    pub(crate) clock: Arc<dyn Clock>,
    /// Outgoing calls made so far by the turn (shared by its stubs).
    pub(crate) sent: std::cell::OnceCell<Arc<AtomicU32>>,
}

impl TurnInfo {
    /// What the stubs of this turn, made on object `me`, carry.
    pub(crate) fn link(&self, me: ChainLink) -> TurnLink {
        let caller = format!("object:{}/{}", me.class, me.object);
        let chain = self.chain.as_deref().cloned().unwrap_or_default();
        TurnLink {
            local: self.local.clone(),
            chain: Arc::new(chain.then(me, self.span)),
            deadline_ms: self.deadline_ms,
            request_id: self.request_id,
            sent: self.sent.get_or_init(Default::default).clone(),
            turn: self.turn,
            flush: self.flush.clone(),
            clock: self.clock.clone(),
            caller,
        }
    }
}

/// What a running turn's stubs carry.
#[derive(Clone)]
pub(crate) struct TurnLink {
    local: Arc<dyn LocalCalls>,
    /// The chain the turn's callees travel in (the turn's own chain and its object).
    chain: Arc<CallChain>,
    deadline_ms: Option<u64>,
    request_id: Option<[u8; 16]>,
    sent: Arc<AtomicU32>,
    turn: u64,
    flush: mpsc::UnboundedSender<FlushRequest>,
    clock: Arc<dyn Clock>,
    /// The caller key the callees see (`object:Class/id`).
    caller: String,
}

/// Where a stub's calls go.
#[derive(Clone)]
pub(crate) enum Target {
    /// An object of this host.
    Local,
    /// An object of another host, through a client connected to it.
    Remote(Client),
}

/// The transport of the stubs a turn makes.
pub(crate) struct TurnTransport {
    pub(crate) link: Option<TurnLink>,
    pub(crate) target: Target,
}

impl Transport for TurnTransport {
    fn call(&self, mut request: CallRequest) -> TransportFuture {
        let Some(link) = self.link.clone() else {
            return Box::pin(async {
                Ok(Response::Error(WireError::Internal {
                    message: "objects can be called only from a running turn (not from activation, and not with a stub kept from an earlier turn)".into(),
                }))
            });
        };
        let n = link.sent.fetch_add(1, Ordering::Relaxed);
        if let Some(id) = link.request_id {
            request.request_id = derive_request_id(&id, n);
        }
        let now = link.clock.now_ms();
        if let Some(deadline) = link.deadline_ms {
            if now >= deadline {
                // The turn's own caller has given up: nothing is sent.
                return Box::pin(async { Ok(Response::Error(WireError::Timeout)) });
            }
            request.timeout_ms = request.timeout_ms.min(deadline - now);
        }
        let target = self.target.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if link.flush.send((link.turn, tx)).is_err() {
                return Ok(Response::Error(WireError::Internal {
                    message:
                        "the turn that made this stub has ended; make a new one with ctx.object()"
                            .into(),
                }));
            }
            match rx.await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => {
                    return Ok(Response::Error(WireError::Internal {
                        message: format!("the caller's writes could not be made durable, so the call was not sent: {why}"),
                    }))
                }
                Err(_) => {
                    return Ok(Response::Error(WireError::Internal {
                        message: "the calling turn ended before the call was sent".into(),
                    }))
                }
            }
            // The turn waits no longer than its own caller does: past its deadline the
            // call is not sent, or given up (then it may have run: `Timeout`).
            let left = match link.deadline_ms {
                Some(deadline) => {
                    let now = link.clock.now_ms();
                    if now >= deadline {
                        return Ok(Response::Error(WireError::Timeout));
                    }
                    request.timeout_ms = request.timeout_ms.min(deadline - now);
                    Some(std::time::Duration::from_millis(deadline - now))
                }
                None => None,
            };
            let chain = CallChain::clone(&link.chain);
            let sent = async move {
                match target {
                    Target::Local => {
                        Ok(link.local.call_in_chain(request, link.caller, chain).await)
                    }
                    Target::Remote(client) => {
                        let within = std::time::Duration::from_millis(request.timeout_ms);
                        client
                            .call_chained(&request, chain.links, chain.caller_span, within)
                            .await
                    }
                }
            };
            match left {
                Some(left) => tokio::time::timeout(left, sent)
                    .await
                    .unwrap_or(Err(CallError::Timeout)),
                None => sent.await,
            }
        })
    }
}

/// The request id of outgoing call number `n` of a turn that runs under `id`: the
/// same for every run of that turn, distinct across calls and turns.
pub(crate) fn derive_request_id(id: &[u8; 16], n: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (half, chunk) in out.chunks_mut(8).enumerate() {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (half as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in id.iter().chain(&n.to_le_bytes()).chain(b"out") {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        chunk.copy_from_slice(&h.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outgoing_request_ids_repeat_per_turn_and_differ_per_call() {
        let a = derive_request_id(&[1; 16], 0);
        assert_eq!(a, derive_request_id(&[1; 16], 0));
        assert_ne!(a, derive_request_id(&[1; 16], 1));
        assert_ne!(a, derive_request_id(&[2; 16], 0));
        assert_ne!(a, [1; 16]);
    }
}
