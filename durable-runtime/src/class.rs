//! The host side of a class: the [`Hosted`] trait the macro implements (activation
//! and dispatch), the outcome of one turn, the JSON form of each remote method (for
//! the HTTP gateway), and the type-erased registry entry the host keeps per class.

use crate::context::Context;
use crate::read_context::{ReadContext, ReadTurnScope};
use durable_client::{MethodInfo, ObjectClass};
use serde::{de::DeserializeOwned, Serialize};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};

/// The future of one turn, borrowing the object and its context.
pub type BoxTurn<'a> = Pin<Box<dyn Future<Output = TurnOutcome> + 'a>>;

/// What one method call produced.
#[derive(Debug)]
pub enum TurnOutcome {
    /// `Ok(value)`, postcard-encoded: the turn commits.
    Return(Vec<u8>),
    /// `Err(error)`, postcard-encoded: the turn rolls back.
    AppError(Vec<u8>),
    /// The arguments did not decode.
    BadArguments(String),
    /// The result could not be encoded: the turn rolls back.
    EncodeFailed(String),
    /// No method with that index.
    UnknownMethod,
}

/// Why activation failed: the constructor's error, rendered.
#[derive(Debug, Clone)]
pub struct ActivateError(pub String);

impl ActivateError {
    /// From any displayable error.
    pub fn from_display(e: &dyn std::fmt::Display) -> Self {
        ActivateError(e.to_string())
    }
}

/// A class the host can run. Implemented by `#[durable_object]`.
pub trait Hosted: ObjectClass + Sized {
    /// Build the in-memory instance from storage (first call, or after eviction or reset).
    fn activate(ctx: &mut Context) -> Result<Self, ActivateError>;
    /// Run method number `method` with postcard-encoded `args`.
    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a>;

    /// The alarm handlers, in declaration order.
    const ALARMS: &'static [&'static str] = &[];

    /// The numbers of the read-only remote methods (`&self` methods taking
    /// `&ReadContext`): they run beside the writer on a read connection, see
    /// [`Hosted::dispatch_read`].
    const READ_ONLY: &'static [usize] = &[];

    /// Run read-only method number `method` (one of [`Hosted::READ_ONLY`]) with
    /// postcard-encoded `args` on a shared instance: writes are refused.
    fn dispatch_read<'a>(
        &'a self,
        ctx: &'a ReadContext,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        let _ = (ctx, method, args);
        Box::pin(async { TurnOutcome::UnknownMethod })
    }

    /// The JSON form of the remote methods, for the HTTP gateway: argument names and
    /// converters between JSON and the postcard encodings [`Hosted::dispatch`] speaks.
    /// `#[durable_object]` generates one per remote method; a method without one
    /// cannot be called over HTTP (a hand-written class may leave this empty).
    const JSON: &'static [JsonMethod] = &[];

    /// The WebSocket handlers the class has (`#[on_connect]`, `#[on_message]`,
    /// `#[on_close]`); a class without `#[on_message]` takes no WebSockets.
    const SOCKETS: crate::sockets::SocketHandlers = crate::sockets::SocketHandlers {
        connect: false,
        message: false,
        close: false,
    };

    /// Run the WebSocket handler for a postcard-encoded
    /// [`crate::__private::SocketEvent`].
    fn dispatch_socket<'a>(&'a mut self, ctx: &'a mut Context, event: &'a [u8]) -> BoxTurn<'a> {
        let _ = (ctx, event);
        Box::pin(async { TurnOutcome::UnknownMethod })
    }

    /// Run alarm handler number `alarm` with postcard-encoded `args`.
    fn dispatch_alarm<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        alarm: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        let _ = (ctx, alarm, args);
        Box::pin(async { TurnOutcome::UnknownMethod })
    }
}

/// Decode a method's argument tuple. Bytes left over after it are an error too: a
/// caller that sends more than the method takes disagrees with it on the signature.
pub fn decode_args<A: DeserializeOwned>(args: &[u8]) -> Result<A, TurnOutcome> {
    match postcard::take_from_bytes(args) {
        Ok((value, [])) => Ok(value),
        Ok((_, rest)) => Err(TurnOutcome::BadArguments(format!(
            "{} bytes left over after the arguments",
            rest.len()
        ))),
        Err(e) => Err(TurnOutcome::BadArguments(e.to_string())),
    }
}

/// Encode a fallible method's result.
pub fn encode_result<T: Serialize, E: Serialize>(result: Result<T, E>) -> TurnOutcome {
    match result {
        Ok(v) => encode_value(v),
        Err(e) => match postcard::to_stdvec(&e) {
            Ok(bytes) => TurnOutcome::AppError(bytes),
            Err(e) => TurnOutcome::EncodeFailed(e.to_string()),
        },
    }
}

/// Encode an infallible method's value.
pub fn encode_value<T: Serialize>(value: T) -> TurnOutcome {
    // Sized first: one allocation instead of one per doubling.
    let size = postcard::experimental::serialized_size(&value).unwrap_or(0);
    match postcard::to_extend(&value, Vec::with_capacity(size)) {
        Ok(bytes) => TurnOutcome::Return(bytes),
        Err(e) => TurnOutcome::EncodeFailed(e.to_string()),
    }
}

/// The arguments of one call as the HTTP gateway received them: a JSON object whose
/// keys are the argument names.
pub type JsonArgs = serde_json::Map<String, serde_json::Value>;

/// One argument of a remote method, as `GET /v1/classes` lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonArg {
    /// The argument's name in the method's signature (the JSON key).
    pub name: &'static str,
    /// Its Rust type, as written in the signature (for people, not for parsing).
    pub ty: &'static str,
}

/// The JSON form of one remote method, generated by `#[durable_object]` next to its
/// postcard dispatch: the HTTP gateway turns a JSON object of arguments into the
/// postcard argument tuple, runs the call through the same entry as QUIC, and turns
/// the postcard answer back into JSON.
#[derive(Clone, Copy)]
pub struct JsonMethod {
    /// The method's name on the wire (as in [`durable_client::MethodInfo::name`]).
    pub name: &'static str,
    /// The arguments, in order.
    pub args: &'static [JsonArg],
    /// The type of the value a successful call returns (`()` for none).
    pub returns: &'static str,
    /// The method's own error type, if it returns `Result<T, E>`.
    pub error: Option<&'static str>,
    /// JSON arguments by name → the postcard encoding of the argument tuple. The
    /// message names the argument that is missing or does not fit its type.
    pub encode_args: fn(&JsonArgs) -> Result<Vec<u8>, String>,
    /// The postcard encoding of a returned value → JSON.
    pub decode_return: fn(&[u8]) -> Result<serde_json::Value, String>,
    /// The postcard encoding of the method's own error → JSON.
    pub decode_error: fn(&[u8]) -> Result<serde_json::Value, String>,
}

impl std::fmt::Debug for JsonMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonMethod")
            .field("name", &self.name)
            .field("args", &self.args)
            .field("returns", &self.returns)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// Read argument `name` from JSON arguments as a `T` (generated JSON dispatch). A
/// missing argument reads as `null`, so an `Option` may be left out.
pub fn json_arg<T: DeserializeOwned>(args: &JsonArgs, name: &str) -> Result<T, String> {
    match args.get(name) {
        Some(value) => T::deserialize(value).map_err(|e| format!("argument `{name}`: {e}")),
        None => T::deserialize(&serde_json::Value::Null)
            .map_err(|_| format!("missing argument `{name}`")),
    }
}

/// Encode an argument tuple read from JSON as postcard (generated JSON dispatch).
pub fn encode_json_args<A: Serialize>(args: &A) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(args).map_err(|e| format!("encoding the arguments: {e}"))
}

/// Decode a postcard-encoded `T` (a method's value or error) and render it as JSON
/// (generated JSON dispatch).
pub fn postcard_to_json<T: DeserializeOwned + Serialize>(
    bytes: &[u8],
) -> Result<serde_json::Value, String> {
    let value: T = postcard::from_bytes(bytes).map_err(|e| format!("decoding the answer: {e}"))?;
    serde_json::to_value(&value).map_err(|e| format!("the answer has no JSON form: {e}"))
}

/// The error decoder of a method that cannot fail (generated JSON dispatch).
pub fn no_json_error(_: &[u8]) -> Result<serde_json::Value, String> {
    Err("the method has no error type".into())
}

/// The method number that carries a WebSocket event (a socket event travels as a
/// call to the object, so that it queues, batches and is gated like one; no remote
/// method has this number and no client can name it).
pub(crate) const SOCKET_METHOD: usize = usize::MAX;

/// A live, type-erased instance.
pub(crate) trait Instance {
    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a>;
    fn dispatch_alarm<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        alarm: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a>;
    /// A read-only method on a reader instance (the read path beside the shards).
    fn dispatch_read<'a>(
        &'a self,
        ctx: &'a ReadContext,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a>;
}

impl<T: Hosted> Instance for T {
    fn dispatch<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        if method == SOCKET_METHOD {
            return Hosted::dispatch_socket(self, ctx, args);
        }
        if method == crate::streams::STREAM_READ_METHOD {
            let outcome = stream_read_turn(ctx, args);
            return Box::pin(async move { outcome });
        }
        if T::READ_ONLY.contains(&method) {
            // A read-only method that fell back to a turn: on the writer's instance
            // and connection, with writes refused for its duration.
            return read_in_turn::<T>(self, ctx, method, args);
        }
        Hosted::dispatch(self, ctx, method, args)
    }
    fn dispatch_read<'a>(
        &'a self,
        ctx: &'a ReadContext,
        method: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        Hosted::dispatch_read(self, ctx, method, args)
    }
    fn dispatch_alarm<'a>(
        &'a mut self,
        ctx: &'a mut Context,
        alarm: usize,
        args: &'a [u8],
    ) -> BoxTurn<'a> {
        Hosted::dispatch_alarm(self, ctx, alarm, args)
    }
}

/// The [`crate::streams::STREAM_READ_METHOD`] turn: decode the request, read, encode the page.
fn stream_read_turn(ctx: &Context, args: &[u8]) -> TurnOutcome {
    use crate::streams::{read, ReadRequest};
    let request: ReadRequest = match postcard::from_bytes(args) {
        Ok(r) => r,
        Err(e) => return TurnOutcome::BadArguments(format!("a stream read: {e}")),
    };
    match read(&ctx.conn, &request) {
        Ok(page) => match postcard::to_stdvec(&page) {
            Ok(bytes) => TurnOutcome::Return(bytes),
            Err(e) => TurnOutcome::EncodeFailed(e.to_string()),
        },
        Err(e) => {
            let error = crate::Error::new(
                crate::ErrorKind::Storage,
                format!("reading stream items: {e}"),
            );
            match postcard::to_stdvec(&error) {
                Ok(bytes) => TurnOutcome::AppError(bytes),
                Err(e) => TurnOutcome::EncodeFailed(e.to_string()),
            }
        }
    }
}

type Activate = fn(&mut Context) -> Result<Box<dyn Instance>, ActivateError>;

/// A table by name whose names the runtime sets (classes, methods, alarms), hashed
/// with FxHash instead of SipHash: every call looks its class and method up. SipHash
/// was 3-4% of a host's user-space instructions per call under increments_many, these
/// tables and the metric handles' almost half of that
/// (`durable-bench/instructions.sh`). Safe from collision floods: a caller's string is
/// only ever looked up, never inserted.
pub(crate) type NameMap<V> = rustc_hash::FxHashMap<&'static str, V>;

/// What the host knows of a registered class.
pub(crate) struct ClassEntry {
    pub(crate) name: &'static str,
    pub(crate) methods: NameMap<(usize, MethodInfo)>,
    pub(crate) alarms: NameMap<usize>,
    pub(crate) activate: Activate,
    /// The remote methods' JSON forms, by name (methods without one are absent).
    pub(crate) json: NameMap<&'static JsonMethod>,
    /// Its WebSocket handlers.
    pub(crate) sockets: crate::sockets::SocketHandlers,
    /// Whether each remote method (by number) is read-only.
    pub(crate) reads: Vec<bool>,
    /// How its objects' activations by read-only calls fared.
    pub(crate) read_activations: ReadActivations,
}

/// How a class's objects fared when read-only calls activated them without a writing
/// batch (`Object::activate_to_read`), so that a class whose constructor writes at
/// every activation does not pay for a try that falls back each time: after
/// [`ReadActivations::GIVE_UP`] fallbacks in a row, only one activation in
/// [`ReadActivations::RETRY_EVERY`] tries (a constructor's writes may depend on the
/// object's data).
#[derive(Debug, Default)]
pub(crate) struct ReadActivations {
    /// Fallbacks since the last activation that held.
    misses: AtomicU32,
    /// Activations not tried since giving up.
    skipped: AtomicU32,
}

impl ReadActivations {
    /// Fallbacks in a row after which most activations do not try.
    pub(crate) const GIVE_UP: u32 = 4;
    /// Once given up, one activation in this many tries again.
    pub(crate) const RETRY_EVERY: u32 = 64;

    /// Whether the next activation by read-only calls should try.
    pub(crate) fn worth_trying(&self) -> bool {
        self.misses.load(Ordering::Relaxed) < Self::GIVE_UP
            || self.skipped.fetch_add(1, Ordering::Relaxed) % Self::RETRY_EVERY
                == Self::RETRY_EVERY - 1
    }

    /// A try held (`true`) or fell back.
    pub(crate) fn record(&self, held: bool) {
        if held {
            self.misses.store(0, Ordering::Relaxed);
        } else {
            let _ = self
                .misses
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                    Some(m.saturating_add(1))
                });
        }
    }
}

impl ClassEntry {
    /// Whether method number `method` is read-only (never for the runtime's own
    /// method numbers: socket events, stream reads).
    pub(crate) fn is_read(&self, method: usize) -> bool {
        self.reads.get(method).copied().unwrap_or(false)
    }
}

impl ClassEntry {
    pub(crate) fn of<T: Hosted>() -> Self {
        fn activate<T: Hosted>(ctx: &mut Context) -> Result<Box<dyn Instance>, ActivateError> {
            T::activate(ctx).map(|t| Box::new(t) as Box<dyn Instance>)
        }
        ClassEntry {
            name: T::CLASS,
            methods: T::METHODS
                .iter()
                .enumerate()
                .map(|(i, m)| (m.name, (i, *m)))
                .collect(),
            alarms: T::ALARMS.iter().enumerate().map(|(i, a)| (*a, i)).collect(),
            activate: activate::<T>,
            json: T::JSON.iter().map(|m| (m.name, m)).collect(),
            sockets: T::SOCKETS,
            reads: (0..T::METHODS.len())
                .map(|i| T::READ_ONLY.contains(&i))
                .collect(),
            read_activations: ReadActivations::default(),
        }
    }
}

/// A read-only method run as a turn (the fallback): on the writer's instance and
/// connection, behind the object's earlier calls, its reply gated like theirs. Its
/// writes are refused for the method's duration, also if it panics or is dropped (see
/// [`crate::db::RawGuard`]).
pub(crate) fn read_in_turn<'a, T: Hosted>(
    this: &'a T,
    ctx: &'a Context,
    method: usize,
    args: &'a [u8],
) -> BoxTurn<'a> {
    let guard = ReadTurnScope::enter(ctx);
    Box::pin(async move {
        let outcome = T::dispatch_read(this, ctx.as_read(), method, args).await;
        drop(guard);
        outcome
    })
}

#[cfg(test)]
mod read_activation_tests {
    use super::ReadActivations;

    #[test]
    fn after_four_fallbacks_in_a_row_one_activation_in_sixty_four_tries_until_one_holds() {
        let r = ReadActivations::default();
        for _ in 0..ReadActivations::GIVE_UP {
            assert!(r.worth_trying());
            r.record(false);
        }
        let tries = (0..ReadActivations::RETRY_EVERY * 2)
            .filter(|_| r.worth_trying())
            .count();
        assert_eq!(tries, 2);
        // One that holds: every activation tries again.
        r.record(true);
        assert!((0..10).all(|_| r.worth_trying()));
        // A fallback now and then is not a run of them.
        r.record(false);
        r.record(true);
        r.record(false);
        assert!(r.worth_trying());
    }
}
