//! The wire protocol: one request frame and one response frame per QUIC
//! bidirectional stream, or (version 3) many calls on one long-lived *pipe* stream,
//! each tagged. See `docs/wire.md` for the byte-level description.
//!
//! A frame is `len: u32 little-endian` (bytes that follow), `version: u8`, then a
//! postcard body: [`Request`] from the client, [`Response`] from the host; on a pipe,
//! [`PipeCall`] and [`PipeReply`].

use crate::retry::Retry;
use crate::ObjectId;
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks (and sends).
///
/// Version 2 added [`Request::ChainCall`] (a call made by an object's turn, carrying
/// the chain of objects waiting on it and the caller's span id) and
/// [`WireError::CallCycle`]. Version 3 added [`Request::Pipe`]: many calls on one
/// stream ([`PipeCall`], [`PipeReply`]). A host answers each frame in the version it
/// came in, so older clients are still served; a client whose version 3 hello is
/// refused as unsupported connects again in version 2, without pipes.
pub const PROTOCOL_VERSION: u8 = 3;

/// The first protocol version with [`Request::Pipe`].
pub const PIPE_VERSION: u8 = 3;

/// The most lanes ([`Response::Lanes`]) a host may name: one per shard thread, so a
/// host runs at most this many shards. A client takes a longer list for a hostile or
/// broken host's and uses none (its calls go on the first connection).
pub const MAX_LANES: usize = 1024;

/// The oldest protocol version this crate still reads.
pub const MIN_PROTOCOL_VERSION: u8 = 1;

/// How many ack-eliciting packets each end of a durable connection may receive before
/// it must acknowledge them, asked of the peer with QUIC's ACK frequency extension
/// (`draft-ietf-quic-ack-frequency`): 8 instead of QUIC's default of 1 (an ACK for
/// every second packet). Under load most acknowledgements ride on the answers and
/// calls that flow anyway; those that did not were a fifth of all datagrams. A peer
/// that does not take part in the extension acknowledges as QUIC's default says.
pub const ACK_ELICITING_THRESHOLD: u32 = 8;

/// The QUIC transport settings both ends of a durable connection apply, the client
/// to its connections and the host to those it accepts: ACK frequency
/// ([`ACK_ELICITING_THRESHOLD`]). Idle timeouts and stream limits stay each side's.
pub fn tune_transport(transport: &mut quinn::TransportConfig) {
    let mut acks = quinn::AckFrequencyConfig::default();
    acks.ack_eliciting_threshold(ACK_ELICITING_THRESHOLD.into());
    transport.ack_frequency_config(Some(acks));
}

/// The default maximum frame size (length prefix excluded): 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 << 20;

/// What a client sends on a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// The first stream of a connection: present the host's token.
    Hello {
        /// The token from the host's `tls/token` file.
        token: String,
    },
    /// A call of one method on one object.
    Call(CallRequest),
    /// Follow a stream of an object: the host answers with [`StreamFrame`]s on this
    /// QUIC stream, [`StreamFrame::Started`] first, until the end or an error.
    Follow(FollowRequest),
    /// A call made by an object's turn (protocol version 2): the call, the objects
    /// whose turns wait on it and the caller's tracing span. Its deadline is the
    /// call's `timeout_ms`, what is left of the caller's own.
    ChainCall(ChainCall),
    /// Open a pipe (protocol version 3): the first frame of a stream that then
    /// carries any number of [`PipeCall`] frames, answered by [`PipeReply`] frames in
    /// the order the calls finish. The host sends nothing for this frame itself.
    Pipe,
    /// Ask for the host's lanes (protocol version 3, on a stream of its own after the
    /// hello): answered with [`Response::Lanes`]. A host that predates lanes answers
    /// an error; the client then sends every call on its first connection.
    Lanes,
}

/// One call on a pipe ([`Request::Pipe`]): `request` is a [`Request::Call`] or a
/// [`Request::ChainCall`], `tag` the client's number for it (echoed in its
/// [`PipeReply`]; unique among the pipe's calls in flight).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipeCall {
    /// The client's number for the call.
    pub tag: u64,
    /// The call.
    pub request: Request,
}

/// The answer to the [`PipeCall`] with the same `tag`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipeReply {
    /// The call's tag.
    pub tag: u64,
    /// Its answer, as it would be on a stream of its own.
    pub response: Response,
}

/// The tag of a pipe frame whose body could not be read whole (it is the body's
/// first field): `frame` is the frame from its length prefix on, complete or not.
/// `None` if not even the tag can be read.
pub fn pipe_frame_tag(frame: &[u8]) -> Option<u64> {
    let body = frame.get(5..)?;
    postcard::take_from_bytes::<u64>(body)
        .ok()
        .map(|(tag, _)| tag)
}

/// A call made from inside another object's turn ([`Request::ChainCall`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainCall {
    /// The call.
    pub call: CallRequest,
    /// The objects whose turns are waiting on this call, the first caller first and
    /// the direct caller last. A call to an object already in its chain is a cycle:
    /// the host answers [`WireError::CallCycle`] at once (unless the method is
    /// reentrant), instead of letting it wait for a turn that waits on it.
    pub chain: Vec<ChainLink>,
    /// The caller's tracing span id (0: none), recorded on the callee's span.
    pub caller_span: u64,
}

/// One object in a call chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainLink {
    /// The class name.
    pub class: String,
    /// The object id.
    pub object: ObjectId,
    /// The name it was addressed by, if any (for error messages).
    pub name: Option<String>,
}

impl std::fmt::Display for ChainLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(name) => write!(f, "{}({name})", self.class),
            None => write!(f, "{}({})", self.class, self.object),
        }
    }
}

/// Follow a stream (see `docs/streams.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowRequest {
    /// The class name.
    pub class: String,
    /// The object's name (streams are followed by name, as over HTTP).
    pub name: String,
    /// The stream's name within the object.
    pub stream: String,
    /// Send the items after this sequence number (0: from the first).
    pub after: u64,
}

/// What a host sends on a followed stream, one frame each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamFrame {
    /// The follow started; the stream's last sequence number then.
    Started {
        /// The last sequence number when the follow started.
        last_seq: u64,
    },
    /// One item, as JSON.
    Item {
        /// Its sequence number.
        seq: u64,
        /// The item, as JSON text.
        json: String,
    },
    /// The stream ended after item `seq`; nothing follows.
    End {
        /// The last sequence number.
        seq: u64,
    },
    /// The object has no such stream; nothing follows.
    UnknownStream,
    /// The follow failed (the host is shutting down, the object could not be read,
    /// ...); nothing follows. Resume with the last sequence number seen.
    Error(WireError),
}

/// A fresh request id: the microseconds since the Unix epoch at `now_us`, big-endian,
/// then 64 random bits. Unique like a random id (a collision needs the same
/// microsecond and the same 64 random bits), and ordered by time: the host keeps recent
/// ids in a B-tree index, where ids that arrive in order land on its last, already
/// cached page instead of a random one each.
pub fn request_id_at(now_us: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&now_us.to_be_bytes());
    // One draw of 64 bits (an array of bytes would draw each byte on its own).
    id[8..].copy_from_slice(&rand::random::<u64>().to_le_bytes());
    id
}

/// [`request_id_at`] with the system clock's current time.
pub fn new_request_id() -> [u8; 16] {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    request_id_at(now_us)
}

/// One call of one method on one object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRequest {
    /// Unique per logical call; a retry after a lost reply reuses it. Clients make
    /// them with [`new_request_id`] (any unique 16 bytes work).
    pub request_id: [u8; 16],
    /// The class name.
    pub class: String,
    /// The object id within the class.
    pub object: ObjectId,
    /// The name the id was derived from, if any (recorded for operators).
    pub name: Option<String>,
    /// The method name.
    pub method: String,
    /// The method's schema fingerprint as the client was compiled.
    pub fingerprint: u64,
    /// How long the caller will wait, in milliseconds; the host drops a call that
    /// has not started by then.
    pub timeout_ms: u64,
    /// The arguments: a postcard-encoded tuple.
    pub args: Vec<u8>,
}

/// What a host answers on a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// The token was accepted.
    Welcome,
    /// The method returned `Ok`: postcard-encoded value.
    Return(Vec<u8>),
    /// The method returned its own `Err`: postcard-encoded error value.
    AppError(Vec<u8>),
    /// The framework could not complete the call.
    Error(WireError),
    /// The answer to [`Request::Lanes`]: the UDP ports of the host's lanes, one per
    /// shard thread, in shard order (empty if the host has none). A lane is an
    /// endpoint served by the shard thread itself: a call sent on the lane of the
    /// shard that owns its object ([`lane_of`]) is read, run and answered on one
    /// thread, without a hand-off between threads. Lanes take the same hello and the
    /// same requests as the host's address; any call may go to any of them.
    Lanes(Vec<u16>),
}

/// The lane (the index into [`Response::Lanes`]) of the shard that owns object `id`
/// of `class` on a host of `lanes` shards; `0` if `lanes` is `0`.
pub fn lane_of(class: &str, id: &ObjectId, lanes: usize) -> usize {
    if lanes == 0 {
        return 0;
    }
    let b = id.as_bytes();
    let fnv = class.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    let h = u64::from_le_bytes(b[..8].try_into().expect("8 bytes")) ^ fnv;
    (h % lanes as u64) as usize
}

/// Framework errors on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireError {
    /// Missing or wrong token.
    Unauthenticated,
    /// No class of that name is registered on the host.
    UnknownClass {
        /// The class asked for.
        class: String,
    },
    /// The class has no remote method of that name.
    UnknownMethod {
        /// The class.
        class: String,
        /// The method asked for.
        method: String,
    },
    /// The method exists but its signature differs between client and host.
    SchemaMismatch {
        /// The class.
        class: String,
        /// The method.
        method: String,
    },
    /// The object's queue is full; the call was not applied.
    Overloaded,
    /// The call's deadline passed before it ran; it was not applied.
    Timeout,
    /// The object panicked (or failed to activate) during the call and was reset;
    /// the call was rolled back.
    ObjectReset {
        /// What happened.
        message: String,
    },
    /// A frame exceeded the maximum size.
    TooLarge {
        /// The frame size in bytes.
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The frame could not be decoded (or a stream carried the wrong message).
    Malformed {
        /// What was wrong.
        message: String,
    },
    /// The frame's protocol version is not spoken by the host.
    UnsupportedVersion {
        /// The version received.
        got: u8,
    },
    /// The host is shutting down; the call was not applied.
    ShuttingDown,
    /// The arguments did not decode as the method's argument types.
    BadArguments {
        /// The decoder's message.
        message: String,
    },
    /// Something failed inside the host and the call's writes were undone: before
    /// anything reached the log (for example a storage read), or a log write that
    /// failed and was cut off (for a full disk: [`WireError::StorageFull`]). Nothing
    /// applied.
    Internal {
        /// What failed.
        message: String,
    },
    /// Something failed after the call's batch may have reached the host log or the
    /// object's file (a log write the host could not cut off, a failed sync in
    /// `--durability fsync`, a batch the log holds but the object's file lost), or the
    /// call is the retry of one whose fate is unknown: it may have been applied.
    /// Resend it only with the same request id.
    Indeterminate {
        /// What failed.
        message: String,
    },
    /// Another host serves this object; the call was not applied. Send it there.
    Moved {
        /// The address of the host that serves it.
        owner: String,
    },
    /// The host's disk is full: the call's writes could not be logged and were undone;
    /// nothing was applied. Calls that only read still work; writes work again as
    /// soon as space is freed (no restart needed).
    StorageFull {
        /// What failed.
        message: String,
    },
    /// The request id was used before by a different call (another method or other
    /// arguments) to this object; this call was not applied. A resend must carry the
    /// same method and arguments as the first; a new call needs a new request id.
    RequestReused,
    /// The call would wait on a turn that waits on it: its object is already in its
    /// call chain (A calls B calls A), and the method is not reentrant. Not applied.
    /// (Protocol version 2; a version 1 client is never in a chain.)
    CallCycle {
        /// The objects of the cycle, from the called object's place in the chain to
        /// it called again (`Hop(a) -> Hop(b) -> Hop(a)`), as `Class(name)`.
        chain: Vec<String>,
    },
    /// [`WireError::Overloaded`] with a hint (protocol version 2): the object's queue
    /// was full, the host's bounds on calls in flight were reached, or the caller
    /// exceeded its rate on this object. Not applied; retry after `retry_after_ms`.
    /// A version 1 client gets plain `Overloaded` instead.
    OverloadedRetry {
        /// Milliseconds after which a retry may get in (exact for a caller's rate).
        retry_after_ms: u64,
    },
    /// The call's writes would take the object's database past the host's size limit
    /// per object (protocol version 2; version 1 clients get `StorageFull`): they
    /// were rolled back, nothing was applied. Calls that delete still work.
    ObjectTooLarge {
        /// The bytes the object would have held.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

impl WireError {
    /// The retry class this error is in (see [`Retry`]).
    pub fn retry(&self) -> Retry {
        match self {
            WireError::ObjectReset { .. } => Retry::FailedInMethod,
            WireError::Indeterminate { .. } => Retry::Indeterminate,
            WireError::Unauthenticated
            | WireError::UnknownClass { .. }
            | WireError::UnknownMethod { .. }
            | WireError::SchemaMismatch { .. }
            | WireError::Overloaded
            | WireError::Timeout
            | WireError::TooLarge { .. }
            | WireError::Malformed { .. }
            | WireError::UnsupportedVersion { .. }
            | WireError::ShuttingDown
            | WireError::BadArguments { .. }
            | WireError::Moved { .. }
            | WireError::StorageFull { .. }
            | WireError::RequestReused
            | WireError::CallCycle { .. }
            | WireError::OverloadedRetry { .. }
            | WireError::ObjectTooLarge { .. }
            | WireError::Internal { .. } => Retry::NotApplied,
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than 5 bytes, or fewer bytes than the length prefix says.
    #[error("truncated frame")]
    Truncated,
    /// More bytes than the length prefix says.
    #[error("trailing bytes after frame")]
    Trailing,
    /// The length prefix exceeds the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Declared size.
        size: u64,
        /// Limit.
        limit: u64,
    },
    /// Unknown protocol version.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// The body is not valid postcard for the expected message.
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

impl From<FrameError> for WireError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::TooLarge { size, limit } => WireError::TooLarge { size, limit },
            FrameError::UnsupportedVersion(got) => WireError::UnsupportedVersion { got },
            other => WireError::Malformed {
                message: other.to_string(),
            },
        }
    }
}

/// Encode a message as one frame, in [`PROTOCOL_VERSION`].
pub fn encode_frame<T: Serialize>(msg: &T) -> Vec<u8> {
    encode_frame_in(msg, PROTOCOL_VERSION)
}

/// Encode a message as one frame marked with protocol `version` (a host answers in
/// the version it was asked in).
pub fn encode_frame_in<T: Serialize + ?Sized>(msg: &T, version: u8) -> Vec<u8> {
    let mut buf = Vec::new();
    encode_frame_into(&mut buf, msg, version);
    buf
}

/// Append `msg` to `out` as one frame marked with protocol `version`: what
/// [`encode_frame_in`] returns, without a buffer of its own (answers written together
/// go into one).
pub fn encode_frame_into<T: Serialize + ?Sized>(out: &mut Vec<u8>, msg: &T, version: u8) {
    // The exact size first (a walk of the message that copies nothing), so that the
    // bytes go into one allocation instead of one per doubling.
    let size = postcard::experimental::serialized_size(msg).unwrap_or(0);
    out.reserve(5 + size);
    let start = start_frame(out, version);
    // Serializing our own message types into a Vec cannot fail.
    *out = postcard::to_extend(msg, std::mem::take(out)).expect("postcard serialization into Vec");
    finish_frame(out, start);
}

/// Append a frame's length prefix (filled in by [`finish_frame`]) and its version
/// byte; returns where the frame starts.
fn start_frame(out: &mut Vec<u8>, version: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, version]);
    start
}

/// Fill in the length prefix of the frame that starts at `start` and ends at the end
/// of `out`.
fn finish_frame(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// The variant index of [`Request::Call`] in postcard (its position in the enum).
const CALL_VARIANT: u32 = 1;

/// A call's fields, borrowed: what [`encode_call_parts`] encodes as a `Request::Call`
/// without building a [`CallRequest`] (no copies of the names).
pub(crate) struct CallParts<'a> {
    pub(crate) request_id: [u8; 16],
    pub(crate) class: &'a str,
    pub(crate) object: ObjectId,
    pub(crate) name: Option<&'a str>,
    pub(crate) method: &'a str,
    pub(crate) fingerprint: u64,
    pub(crate) timeout_ms: u64,
}

/// The postcard bytes of `Request::Call` for `call` with the arguments `args` encoded
/// in place: the same bytes as encoding the `Request::Call(CallRequest { .. })`. `Err`
/// says why the arguments could not be encoded.
pub(crate) fn encode_call_parts<A: Serialize + ?Sized>(
    call: &CallParts<'_>,
    args: &A,
) -> Result<Vec<u8>, String> {
    let args_len = postcard::experimental::serialized_size(args).map_err(|e| e.to_string())?;
    let out = call_buffer(call, args_len);
    let head = out.len();
    let out = postcard::to_extend(args, out).map_err(|e| e.to_string())?;
    if out.len() - head != args_len {
        // A `Serialize` that writes other bytes each time: the length sent would lie.
        return Err(format!(
            "{args_len} bytes measured, {} written",
            out.len() - head
        ));
    }
    Ok(out)
}

/// `message` (the postcard bytes of a `Request::Call` or `Request::ChainCall`) with its
/// `timeout_ms` lowered to `left`, for sending it again later; `None` if it is neither
/// (it is then sent as it was).
pub(crate) fn with_timeout(message: &[u8], left: std::time::Duration) -> Option<Vec<u8>> {
    let left = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    let mut request: Request = postcard::from_bytes(message).ok()?;
    match &mut request {
        Request::Call(call) => call.timeout_ms = call.timeout_ms.min(left),
        Request::ChainCall(chained) => chained.call.timeout_ms = chained.call.timeout_ms.min(left),
        _ => return None,
    }
    postcard::to_stdvec(&request).ok()
}

/// A buffer sized for `call` with `args_len` bytes of arguments, holding its bytes up
/// to and including the arguments' length (the arguments' bytes come next).
fn call_buffer(call: &CallParts<'_>, args_len: usize) -> Vec<u8> {
    let names = call.class.len() + call.name.map_or(0, str::len) + call.method.len();
    let head = (
        CALL_VARIANT,
        &call.request_id,
        call.class,
        &call.object,
        call.name,
        call.method,
        call.fingerprint,
        call.timeout_ms,
        args_len,
    );
    // Serializing into a Vec cannot fail.
    postcard::to_extend(&head, Vec::with_capacity(64 + names + args_len))
        .expect("postcard serialization into Vec")
}

/// The postcard bytes of `request` (a frame's message, without its prefix).
pub(crate) fn encode_request(request: &Request) -> Vec<u8> {
    match request {
        Request::Call(call) => encode_call(call),
        other => postcard::to_stdvec(other).expect("postcard serialization into Vec"),
    }
}

/// The postcard bytes of `Request::Call(call)`, without copying `call` into one.
pub(crate) fn encode_call(call: &CallRequest) -> Vec<u8> {
    let parts = CallParts {
        request_id: call.request_id,
        class: &call.class,
        object: call.object,
        name: call.name.as_deref(),
        method: &call.method,
        fingerprint: call.fingerprint,
        timeout_ms: call.timeout_ms,
    };
    // The arguments are encoded already: their bytes follow their length.
    let mut out = call_buffer(&parts, call.args.len());
    out.extend_from_slice(&call.args);
    out
}

/// A frame of protocol `version` whose message is the postcard bytes `message`, after
/// `tag` on a pipe (a [`PipeCall`]'s bytes are its tag's, then its request's).
pub(crate) fn frame_of(message: &[u8], version: u8, tag: Option<u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 1 + 10 + message.len());
    let start = start_frame(&mut out, version);
    if let Some(tag) = tag {
        out = postcard::to_extend(&tag, out).expect("postcard serialization into Vec");
    }
    out.extend_from_slice(message);
    finish_frame(&mut out, start);
    out
}

/// Decode one whole frame (the complete contents of a stream), of any version this
/// crate reads.
pub fn decode_frame<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    limit: usize,
) -> Result<T, FrameError> {
    decode_frame_versioned(bytes, limit).map(|(msg, _)| msg)
}

/// Decode one whole frame and tell its protocol version.
pub fn decode_frame_versioned<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    limit: usize,
) -> Result<(T, u8), FrameError> {
    if bytes.len() < 5 {
        return Err(FrameError::Truncated);
    }
    let len = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as u64;
    if len > limit as u64 {
        return Err(FrameError::TooLarge {
            size: len,
            limit: limit as u64,
        });
    }
    let rest = &bytes[4..];
    if (rest.len() as u64) < len || len == 0 {
        return Err(FrameError::Truncated);
    }
    if rest.len() as u64 > len {
        return Err(FrameError::Trailing);
    }
    let version = rest[0];
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion(version));
    }
    let (msg, tail) = postcard::take_from_bytes::<T>(&rest[1..])
        .map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !tail.is_empty() {
        return Err(FrameError::Malformed("bytes left after the message".into()));
    }
    Ok((msg, version))
}

/// The most bytes a stream may carry for a frame of at most `limit` bytes.
pub fn stream_limit(limit: usize) -> usize {
    limit + 4
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call encoded from its parts is the frame of the `Request::Call` it stands for,
    /// for every field's edge (no name, long names, large varints, empty and long
    /// arguments), on a pipe under any tag and on a stream of its own.
    #[test]
    fn a_call_encoded_from_its_parts_is_the_frame_of_its_request() {
        let long = "n".repeat(300);
        for (class, name, method, fingerprint, timeout_ms, args) in [
            ("", None, "", 0, 0, vec![]),
            (
                "Counter",
                Some("o1"),
                "increment",
                u64::MAX,
                30_000,
                vec![2],
            ),
            (
                long.as_str(),
                Some(long.as_str()),
                long.as_str(),
                1 << 40,
                u64::MAX,
                vec![7; 70_000],
            ),
            ("C", Some(""), "m", 127, 128, vec![0xff; 128]),
        ] {
            let call = CallRequest {
                request_id: [0xa5; 16],
                class: class.into(),
                object: ObjectId::from_bytes([0x5a; 16]),
                name: name.map(str::to_owned),
                method: method.into(),
                fingerprint,
                timeout_ms,
                args,
            };
            let request = Request::Call(call.clone());
            let message = encode_request(&request);
            assert_eq!(message, postcard::to_stdvec(&request).unwrap());
            for tag in [0u64, 127, 128, u64::MAX] {
                assert_eq!(
                    frame_of(&message, PIPE_VERSION, Some(tag)),
                    encode_frame_in(&(tag, &request), PIPE_VERSION)
                );
            }
            assert_eq!(frame_of(&message, 2, None), encode_frame_in(&request, 2));
        }
        // Any other request too.
        let pipe = encode_request(&Request::Pipe);
        assert_eq!(frame_of(&pipe, PIPE_VERSION, None), [2, 0, 0, 0, 3, 4]);
    }

    #[test]
    fn a_call_sent_again_carries_what_is_left_of_its_deadline() {
        let call = CallRequest {
            request_id: [1; 16],
            class: "Counter".into(),
            object: ObjectId::from_bytes([2; 16]),
            name: Some("n".into()),
            method: "increment".into(),
            fingerprint: 9,
            timeout_ms: 30_000,
            args: vec![2],
        };
        let left = std::time::Duration::from_millis(1_500);
        let again = with_timeout(&encode_request(&Request::Call(call.clone())), left).unwrap();
        let shorter = CallRequest {
            timeout_ms: 1_500,
            ..call.clone()
        };
        assert_eq!(
            postcard::from_bytes::<Request>(&again).unwrap(),
            Request::Call(shorter.clone())
        );
        // Never longer than it was.
        let long = std::time::Duration::from_secs(60);
        let same = with_timeout(&encode_request(&Request::Call(call.clone())), long).unwrap();
        assert_eq!(
            postcard::from_bytes::<Request>(&same).unwrap(),
            Request::Call(call.clone())
        );
        let chained = Request::ChainCall(ChainCall {
            call,
            chain: Vec::new(),
            caller_span: 3,
        });
        let again = with_timeout(&encode_request(&chained), left).unwrap();
        match postcard::from_bytes::<Request>(&again).unwrap() {
            Request::ChainCall(c) => assert_eq!(c.call, shorter),
            other => panic!("{other:?}"),
        }
        assert!(with_timeout(&encode_request(&Request::Pipe), left).is_none());
    }

    #[test]
    fn pipe_frames_are_the_bytes_docs_wire_md_shows() {
        assert_eq!(
            encode_frame_in(&Request::Pipe, PIPE_VERSION),
            [2, 0, 0, 0, 3, 4]
        );
        let reply = PipeReply {
            tag: 0,
            response: Response::Return(vec![0x0a]),
        };
        assert_eq!(
            encode_frame_in(&reply, PIPE_VERSION),
            [5, 0, 0, 0, 3, 0, 1, 1, 0x0a]
        );
        // What the client sends for a call is a `PipeCall`, and its tag is readable
        // from the front of any frame.
        let call = Request::Call(CallRequest {
            request_id: [1; 16],
            class: "Counter".into(),
            object: ObjectId::from_bytes([2; 16]),
            name: None,
            method: "increment".into(),
            fingerprint: 0x648e76a19ee276bb,
            timeout_ms: 5000,
            args: vec![0x0a],
        });
        let frame = encode_frame_in(&(300u64, &call), PIPE_VERSION);
        let decoded: PipeCall = decode_frame(&frame, 1 << 20).unwrap();
        assert_eq!(
            decoded,
            PipeCall {
                tag: 300,
                request: call
            }
        );
        assert_eq!(pipe_frame_tag(&frame[..8]), Some(300));
        assert_eq!(pipe_frame_tag(&frame[..6]), None);
    }

    #[test]
    fn request_ids_sort_by_time_and_differ_within_one_microsecond() {
        let mut ids: Vec<[u8; 16]> = (0..1000u64)
            .map(|i| request_id_at(1_700_000_000_000_000 + i))
            .collect();
        let in_order = ids.clone();
        ids.sort();
        assert_eq!(ids, in_order, "byte order is time order");
        let same: std::collections::HashSet<[u8; 16]> =
            (0..1000).map(|_| request_id_at(42)).collect();
        assert_eq!(same.len(), 1000, "random low half");
        let now = new_request_id();
        let us = u64::from_be_bytes(now[..8].try_into().unwrap());
        assert!(
            us > 1_700_000_000_000_000,
            "the system clock's microseconds"
        );
    }

    fn call() -> Request {
        Request::Call(CallRequest {
            request_id: [7; 16],
            class: "Counter".into(),
            object: ObjectId::from_name("Counter", "a"),
            name: Some("a".into()),
            method: "increment".into(),
            fingerprint: 42,
            timeout_ms: 30_000,
            args: vec![1, 2, 3],
        })
    }

    /// A seeded fuzz loop over frame decoding: valid frames of both directions, mutated
    /// (bytes flipped, inserted, removed, lengths rewritten), and pure noise. Decoding
    /// never panics and every answer is a typed result. `DURABLE_FUZZ_CASES` sets the
    /// count (default 200,000; CI runs the default); an hour-long run is
    /// `DURABLE_FUZZ_CASES=2000000000 timeout 3600 cargo test --release -p durable-client fuzz`.
    #[test]
    fn fuzzed_frames_never_panic() {
        let cases: u64 = std::env::var("DURABLE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200_000);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let seeds: Vec<Vec<u8>> = vec![
            encode_frame(&call()),
            encode_frame(&Request::Hello {
                token: "ab".repeat(32),
            }),
            encode_frame(&Response::Return(vec![5; 40])),
            encode_frame(&Response::Error(WireError::UnknownMethod {
                class: "Counter".into(),
                method: "nope".into(),
            })),
            encode_frame(&Response::Error(WireError::Moved {
                owner: "10.0.0.2:7400".into(),
            })),
        ];
        for case in 0..cases {
            let r = next();
            let mut f = if r % 10 == 0 {
                (0..(next() % 64)).map(|_| next() as u8).collect()
            } else {
                seeds[(r as usize / 10) % seeds.len()].clone()
            };
            for _ in 0..(1 + next() % 4) {
                if f.is_empty() {
                    break;
                }
                let at = (next() as usize) % f.len();
                match next() % 5 {
                    0 => f[at] ^= 1 << (next() % 8),
                    1 => f[at] = next() as u8,
                    2 => f.insert(at, next() as u8),
                    3 => {
                        f.remove(at);
                    }
                    _ => {
                        // Rewrite the length prefix (or a varint inside) to something large.
                        let v = (next() as u32).to_le_bytes();
                        let end = (at + 4).min(f.len());
                        f[at..end].copy_from_slice(&v[..end - at]);
                    }
                }
            }
            // Typed results only; `case` in the message replays it.
            std::panic::catch_unwind(|| {
                let _ = decode_frame::<Request>(&f, DEFAULT_MAX_FRAME);
                let _ = decode_frame::<Response>(&f, DEFAULT_MAX_FRAME);
            })
            .unwrap_or_else(|_| panic!("decoding panicked on case {case}: {f:?}"));
        }
    }

    #[test]
    fn frames_round_trip() {
        let f = encode_frame(&call());
        assert_eq!(
            decode_frame::<Request>(&f, DEFAULT_MAX_FRAME).unwrap(),
            call()
        );
    }

    #[test]
    fn bad_frames_are_typed_errors() {
        let f = encode_frame(&call());
        assert_eq!(
            decode_frame::<Request>(&f[..3], 1 << 20),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            decode_frame::<Request>(&f[..f.len() - 1], 1 << 20),
            Err(FrameError::Truncated)
        );
        let mut long = f.clone();
        long.push(0);
        assert_eq!(
            decode_frame::<Request>(&long, 1 << 20),
            Err(FrameError::Trailing)
        );
        assert!(matches!(
            decode_frame::<Request>(&f, 8),
            Err(FrameError::TooLarge { .. })
        ));
        let mut v2 = f.clone();
        v2[4] = 9;
        assert_eq!(
            decode_frame::<Request>(&v2, 1 << 20),
            Err(FrameError::UnsupportedVersion(9))
        );
        let mut garbage = vec![5, 0, 0, 0, PROTOCOL_VERSION];
        garbage.extend([0xff; 4]);
        assert!(matches!(
            decode_frame::<Request>(&garbage, 1 << 20),
            Err(FrameError::Malformed(_))
        ));
    }
}
