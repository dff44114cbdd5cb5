//! The one transport-neutral entry to objects: [`Calls::call`] takes a call (class,
//! object, method, arguments, request id, caller, deadline), checks class, method,
//! schema, name and placement before any object is touched, hands it to the shard
//! that owns the object and resolves to its reply. The QUIC edge uses it; the HTTP
//! gateway and object-to-object calls are meant to as well.

use crate::answering::{stopped_before_answering, Answer};
use crate::class::ClassEntry;
use crate::clock::Clock;
use crate::placement::{Owner, Placement};
use crate::shard::{Call, Shards};
use durable_client::wire::{CallRequest, Response, WireError};
use durable_client::ObjectId;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// Longest deadline a call may ask for (a day).
const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;

/// A socket event whose turn has not started after this long is dropped (`Timeout`).
const SOCKET_EVENT_DEADLINE_MS: u64 = 60_000;

/// A stream read whose turn has not started after this long is dropped (`Timeout`).
const STREAM_READ_DEADLINE_MS: u64 = 30_000;

use crate::chain::CallChain;
pub use crate::chain::Caller;

/// The host's [`Calls`] as the turns of its objects reach it (a weak reference: the
/// shards that hold it are owned by the `Calls`).
pub(crate) struct LocalEntry(pub(crate) std::sync::Weak<Calls>);

impl crate::outgoing::LocalCalls for LocalEntry {
    fn call_in_chain(
        &self,
        request: CallRequest,
        caller: String,
        chain: CallChain,
    ) -> crate::outgoing::ReplyFuture {
        let calls = self.0.upgrade();
        Box::pin(async move {
            match calls {
                Some(calls) => calls.call_in_chain(request, &Caller(caller), chain).await,
                None => Response::Error(WireError::ShuttingDown),
            }
        })
    }
}

/// Calls from a client in the same process ([`crate::RunningHost::local_client`]).
pub(crate) struct Local {
    pub(crate) calls: Arc<Calls>,
    pub(crate) caller: Caller,
}

impl durable_client::Transport for Local {
    fn call(&self, request: CallRequest) -> durable_client::TransportFuture {
        let (calls, caller) = (self.calls.clone(), self.caller.clone());
        Box::pin(async move { Ok(calls.call(request, &caller).await) })
    }
}

/// The entry every edge calls through.
pub(crate) struct Calls {
    pub(crate) classes: crate::class::NameMap<Arc<ClassEntry>>,
    pub(crate) shards: Arc<Shards>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) placement: Arc<dyn Placement>,
    shutting_down: AtomicBool,
    /// Read-only methods run beside turns (on a reader connection), so a call along a
    /// chain may enter an object whose turn waits on it.
    reentrant_reads: AtomicBool,
    in_flight: Gauge,
    admission: crate::admission::Admission,
}

impl Calls {
    pub(crate) fn new(
        classes: crate::class::NameMap<Arc<ClassEntry>>,
        shards: Arc<Shards>,
        clock: Arc<dyn Clock>,
        placement: Arc<dyn Placement>,
        admission: crate::admission::Admission,
    ) -> Self {
        Calls {
            classes,
            shards,
            clock,
            placement,
            shutting_down: AtomicBool::new(false),
            reentrant_reads: AtomicBool::new(false),
            in_flight: Gauge::default(),
            admission,
        }
    }

    /// Run one call and resolve to its reply. The deadline is `request.timeout_ms`
    /// from now on the host clock: a call whose turn has not started by then is
    /// answered `Timeout` (not applied).
    pub(crate) async fn call(&self, request: CallRequest, caller: &Caller) -> Response {
        self.call_chained(request, caller, None).await
    }

    /// Whether read-only methods run beside turns (and so may be reentered).
    pub(crate) fn set_reentrant_reads(&self, on: bool) {
        self.reentrant_reads.store(on, Ordering::Release);
    }

    /// Run a call made by an object's turn (see [`crate::outgoing`]): as
    /// [`Calls::call`], and a call to an object already in `chain` is refused at once
    /// with `CallCycle` (it would wait for a turn that waits on it).
    pub(crate) async fn call_in_chain(
        &self,
        request: CallRequest,
        caller: &Caller,
        chain: CallChain,
    ) -> Response {
        self.call_chained(request, caller, Some(Arc::new(chain)))
            .await
    }

    async fn call_chained(
        &self,
        request: CallRequest,
        caller: &Caller,
        chain: Option<Arc<CallChain>>,
    ) -> Response {
        let admitted = match self.admit(request, caller, chain, Arrival::now(&*self.clock)) {
            Ok(admitted) => admitted,
            Err(response) => return response,
        };
        let (tx, rx) = oneshot::channel();
        let in_flight = admitted.send(&self.shards, Answer::Caller(tx));
        // A dropped sender: the shard stopped (a crash, or a stop without draining)
        // after taking the call; its batch may have reached the log.
        let response = rx.await.unwrap_or_else(|_| stopped_before_answering());
        in_flight.answered(&response);
        response
    }

    /// Check a call (class, method, schema, name, cycle, placement) and admit it
    /// among the calls in flight, or answer it at once. An edge that gathers its
    /// answers itself (a pipe) hands the admitted call to its shard with
    /// [`Admitted::send`]; [`Calls::call`] does both and waits.
    pub(crate) fn admit(
        &self,
        request: CallRequest,
        caller: &Caller,
        chain: Option<Arc<CallChain>>,
        arrival: Arrival,
    ) -> Result<Admitted<'_>, Response> {
        let received = arrival.ms;
        let Some(class) = self.classes.get(request.class.as_str()) else {
            return Err(Response::Error(WireError::UnknownClass {
                class: request.class,
            }));
        };
        let Some(&(method, info)) = class.methods.get(request.method.as_str()) else {
            return Err(Response::Error(WireError::UnknownMethod {
                class: request.class,
                method: request.method,
            }));
        };
        if info.fingerprint != request.fingerprint {
            return Err(Response::Error(WireError::SchemaMismatch {
                class: request.class,
                method: request.method,
            }));
        }
        if let Some(name) = &request.name {
            if !names_match(class.name, name, request.object) {
                return Err(Response::Error(WireError::Malformed {
                    message: "the object id does not match the name".into(),
                }));
            }
        }
        // A read-only method is reentrant: it runs beside the object's turns, never
        // waiting on the one that waits on this call.
        let reentrant = class.is_read(method) && self.reentrant_reads.load(Ordering::Acquire);
        if let Some(cycle) = chain
            .as_deref()
            .filter(|_| !reentrant)
            .and_then(|c| c.cycle(class.name, request.object, request.name.as_deref()))
        {
            return Err(Response::Error(WireError::CallCycle { chain: cycle }));
        }
        if let Owner::Elsewhere(owner) = self.placement.owner(class.name, request.object) {
            return Err(Response::Error(WireError::Moved { owner }));
        }
        let guard = self.in_flight.enter();
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(Response::Error(WireError::ShuttingDown));
        }
        let permit = match self.admission.admit(
            class.name,
            request.object,
            &caller.0,
            request.args.len(),
            received,
        ) {
            Ok(permit) => permit,
            Err(retry_after_ms) => {
                return Err(Response::Error(WireError::OverloadedRetry {
                    retry_after_ms,
                }))
            }
        };
        tracing::trace!(class = class.name, id = %request.object, method = %request.method, caller = %caller.0, "call");
        crate::telemetry::calls_in_flight(self.in_flight.get());
        Ok(Admitted {
            class: class.clone(),
            method,
            method_name: info.name,
            deadline_ms: received + request.timeout_ms.min(MAX_TIMEOUT_MS),
            arrived: arrival.at,
            request,
            chain,
            guard,
            permit,
        })
    }

    /// A WebSocket of `caller` opens on object `name` of `class`: one call against the
    /// caller's rate (it pays for the socket's close, which is never refused), or
    /// the milliseconds until one may get in.
    pub(crate) fn admit_socket(
        &self,
        class: &ClassEntry,
        name: &str,
        caller: &Caller,
    ) -> Result<(), u64> {
        let object = ObjectId::from_name(class.name, name);
        self.admission
            .admit(class.name, object, &caller.0, 0, self.clock.now_ms())
            .map(drop)
    }

    /// Deliver a WebSocket event to object `name` of `class` as a turn: it queues,
    /// batches and passes the output gate like a call (the object is activated if it
    /// was evicted), and resolves once the turn's batch is durable. `Return` means the
    /// handler succeeded; `AppError` its own error; an error, that the turn failed or
    /// never ran.
    pub(crate) async fn socket_event(
        &self,
        class: &Arc<ClassEntry>,
        name: &str,
        event: &crate::sockets::SocketEvent,
        caller: &Caller,
    ) -> Response {
        let received = self.clock.now_ms();
        let object = ObjectId::from_name(class.name, name);
        if let Owner::Elsewhere(owner) = self.placement.owner(class.name, object) {
            return Response::Error(WireError::Moved { owner });
        }
        let _guard = self.in_flight.enter();
        if self.shutting_down.load(Ordering::Acquire) {
            return Response::Error(WireError::ShuttingDown);
        }
        let args = match postcard::to_stdvec(event) {
            Ok(a) => a,
            Err(e) => {
                return Response::Error(WireError::Internal {
                    message: format!("encoding a socket event: {e}"),
                })
            }
        };
        // A call of the socket's caller like any other: its rate, and the host's bounds
        // on calls and bytes in flight, until its turn ends. Except the close: the
        // object must learn of every socket that left (one closed for its rate finds
        // its caller's bucket still empty).
        let _permit = if matches!(event, crate::sockets::SocketEvent::Close(..)) {
            None
        } else {
            match self
                .admission
                .admit(class.name, object, &caller.0, args.len(), received)
            {
                Ok(permit) => Some(permit),
                Err(retry_after_ms) => {
                    return Response::Error(WireError::OverloadedRetry { retry_after_ms })
                }
            }
        };
        tracing::trace!(class = class.name, id = %object, caller = %caller.0, "socket event");
        let (tx, rx) = oneshot::channel();
        self.shards.send(Call {
            class: class.clone(),
            method: crate::class::SOCKET_METHOD,
            deadline_ms: received + SOCKET_EVENT_DEADLINE_MS,
            request: CallRequest {
                request_id: fresh_request_id(),
                class: class.name.to_owned(),
                object,
                name: Some(name.to_owned()),
                method: "$socket".into(),
                fingerprint: 0,
                timeout_ms: SOCKET_EVENT_DEADLINE_MS,
                args,
            },
            chain: None,
            reply: Answer::Caller(tx),
            arrived: crate::clock::monotonic(),
        });
        rx.await.unwrap_or_else(|_| stopped_before_answering())
    }

    /// Read the stored items of a stream of object `name` of `class` (see
    /// [`crate::streams`]): a read turn of the object, queued and gated like a call,
    /// so it sees exactly the items whose batches are durable or ahead of it.
    /// `admit`: whether the read passes admission (a follow's first read does; the
    /// reads after it, catching up, count as the same request).
    pub(crate) async fn stream_read(
        &self,
        class: &Arc<ClassEntry>,
        name: &str,
        request: &crate::streams::ReadRequest,
        caller: &Caller,
        admit: bool,
    ) -> Result<crate::streams::ReadPage, WireError> {
        let received = self.clock.now_ms();
        let object = ObjectId::from_name(class.name, name);
        if let Owner::Elsewhere(owner) = self.placement.owner(class.name, object) {
            return Err(WireError::Moved { owner });
        }
        let _guard = self.in_flight.enter();
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(WireError::ShuttingDown);
        }
        let args = postcard::to_stdvec(request).map_err(|e| WireError::Internal {
            message: format!("encoding a stream read: {e}"),
        })?;
        let _permit = if admit {
            let permit = self
                .admission
                .admit(class.name, object, &caller.0, args.len(), received)
                .map_err(|retry_after_ms| WireError::OverloadedRetry { retry_after_ms })?;
            Some(permit)
        } else {
            None
        };
        tracing::trace!(class = class.name, id = %object, caller = %caller.0, stream = %request.stream, "stream read");
        let (tx, rx) = oneshot::channel();
        self.shards.send(Call {
            class: class.clone(),
            method: crate::streams::STREAM_READ_METHOD,
            deadline_ms: received + STREAM_READ_DEADLINE_MS,
            request: CallRequest {
                request_id: fresh_request_id(),
                class: class.name.to_owned(),
                object,
                name: Some(name.to_owned()),
                method: "$stream".into(),
                fingerprint: 0,
                timeout_ms: STREAM_READ_DEADLINE_MS,
                args,
            },
            chain: None,
            reply: Answer::Caller(tx),
            arrived: crate::clock::monotonic(),
        });
        let answer = rx.await.unwrap_or_else(|_| stopped_before_answering());
        match answer {
            Response::Return(bytes) => {
                postcard::from_bytes(&bytes).map_err(|e| WireError::Internal {
                    message: format!("decoding a stream page: {e}"),
                })
            }
            Response::AppError(bytes) => {
                let message = postcard::from_bytes::<crate::Error>(&bytes)
                    .map(|e| e.message)
                    .unwrap_or_else(|_| "reading the stream failed".into());
                Err(WireError::Internal { message })
            }
            Response::Error(e) => Err(e),
            Response::Welcome | Response::Lanes(_) => Err(WireError::Internal {
                message: "unexpected answer".into(),
            }),
        }
    }

    /// Whether [`Calls::drain`] has begun: new calls are refused.
    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Refuse new calls and wait (up to `limit`) for the ones in flight.
    pub(crate) async fn drain(&self, limit: Duration) {
        self.shutting_down.store(true, Ordering::Release);
        let _ = tokio::time::timeout(limit, self.in_flight.zero()).await;
    }
}

/// A count of things in flight (calls, streams) that can be awaited to reach zero.
#[derive(Default)]
pub(crate) struct Gauge {
    count: AtomicUsize,
    idle: Notify,
}

impl Gauge {
    /// Count one more until the guard drops.
    pub(crate) fn enter(&self) -> GaugeGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        GaugeGuard(self)
    }

    /// How many are in flight now.
    pub(crate) fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Resolve once none is in flight.
    pub(crate) async fn zero(&self) {
        loop {
            let idle = self.idle.notified();
            if self.get() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// One thing in flight, counted by its [`Gauge`] until dropped.
pub(crate) struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A new request id for a call the host makes up itself (a socket event, a stream
/// read, an HTTP call without an `Idempotency-Key`): ordered by time like a client's
/// (see [`durable_client::wire::request_id_at`]).
pub(crate) fn fresh_request_id() -> [u8; 16] {
    use crate::clock::Clock;
    durable_client::wire::request_id_at(crate::clock::SystemClock.now_us())
}

/// A call that passed [`Calls::admit`]: it holds its place among the host's calls in
/// flight and its caller's share until it is answered.
pub(crate) struct Admitted<'a> {
    class: Arc<ClassEntry>,
    method: usize,
    method_name: &'static str,
    deadline_ms: u64,
    arrived: std::time::Duration,
    request: CallRequest,
    chain: Option<Arc<CallChain>>,
    guard: GaugeGuard<'a>,
    permit: crate::admission::Permit<'a>,
}

impl<'a> Admitted<'a> {
    /// Hand the call to the shard that owns its object; its answer goes to `answer`.
    pub(crate) fn send(self, shards: &Shards, answer: Answer) -> InFlight<'a> {
        let started = self.arrived;
        let class = self.class.name;
        shards.send(Call {
            class: self.class,
            method: self.method,
            deadline_ms: self.deadline_ms,
            request: self.request,
            chain: self.chain,
            reply: answer,
            arrived: started,
        });
        InFlight {
            class,
            method_name: self.method_name,
            started,
            _guard: self.guard,
            _permit: self.permit,
        }
    }
}

/// A call handed to its shard, until its answer: then its place among the calls in
/// flight and its caller's share are given back.
pub(crate) struct InFlight<'a> {
    class: &'static str,
    method_name: &'static str,
    started: Duration,
    _guard: GaugeGuard<'a>,
    _permit: crate::admission::Permit<'a>,
}

impl InFlight<'_> {
    /// The call was answered with `response`.
    pub(crate) fn answered(self, response: &Response) {
        self.answered_at(response, crate::clock::monotonic());
    }

    /// The call was answered with `response` at `now` ([`crate::clock::monotonic`]:
    /// an edge that hands out several answers at once reads it once for all).
    pub(crate) fn answered_at(self, response: &Response, now: std::time::Duration) {
        crate::telemetry::call_answered(
            self.class,
            self.method_name,
            crate::telemetry::outcome(response),
            now.saturating_sub(self.started),
        );
    }
}

/// When a call arrived: the host clock (ms, for its deadline and its caller's share)
/// and [`crate::clock::monotonic`] (its time in the host). A transport that takes
/// several calls at once (a pipe's frames from one read) reads both once for all.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Arrival {
    pub(crate) ms: u64,
    pub(crate) at: std::time::Duration,
}

impl Arrival {
    /// Now, as `clock` reads it.
    pub(crate) fn now(clock: &dyn Clock) -> Arrival {
        Arrival {
            ms: clock.now_ms(),
            at: crate::clock::monotonic(),
        }
    }
}

/// Names this thread found to match their ids lately, by the id's first byte: a
/// caller names the same objects call after call, and each check is a SHA-256 (~1% of
/// a hot object's shard). Only a pair that matched is kept, so a caller's ids can only
/// make it miss.
const NAMES_KEPT: usize = 64;

/// The longest name kept in [`NAMES_KEPT`].
const NAME_KEPT_MAX: usize = 64;

/// A name kept: its class (by address), its id and the name.
type KeptName = Option<(&'static str, ObjectId, Box<str>)>;

thread_local! {
    static NAMES: std::cell::RefCell<Vec<KeptName>> = std::cell::RefCell::new(vec![None; NAMES_KEPT]);
}

/// Whether `object` is the id of the object `name` of class `class`.
fn names_match(class: &'static str, name: &str, object: ObjectId) -> bool {
    let at = object.as_bytes()[0] as usize % NAMES_KEPT;
    let kept = NAMES.with(|n| {
        matches!(&n.borrow()[at], Some((c, id, kept)) if std::ptr::eq(*c, class) && *id == object && **kept == *name)
    });
    if kept {
        return true;
    }
    let matches = ObjectId::from_name(class, name) == object;
    if matches && name.len() <= NAME_KEPT_MAX {
        NAMES.with(|n| n.borrow_mut()[at] = Some((class, object, name.into())));
    }
    matches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_matches_only_its_own_id_whether_kept_or_not() {
        let id = ObjectId::from_name("Counter", "a");
        // First by its hash, then from what the thread kept: the same answers.
        for _ in 0..2 {
            assert!(names_match("Counter", "a", id));
            assert!(!names_match("Counter", "b", id));
            assert!(!names_match("Room", "a", id));
            assert!(!names_match(
                "Counter",
                "a",
                ObjectId::from_name("Counter", "b")
            ));
        }
        // An id sharing the kept entry's place does not borrow its name.
        let mut other = *ObjectId::from_name("Counter", "z").as_bytes();
        other[0] = id.as_bytes()[0];
        assert!(!names_match("Counter", "a", ObjectId::from_bytes(other)));
        assert!(names_match("Counter", "a", id));
        // A long name is checked every time, and still matches.
        let long = "n".repeat(NAME_KEPT_MAX + 1);
        assert!(names_match(
            "Counter",
            &long,
            ObjectId::from_name("Counter", &long)
        ));
        assert!(names_match(
            "Counter",
            &long,
            ObjectId::from_name("Counter", &long)
        ));
    }
}
