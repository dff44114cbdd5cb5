//! A pipe (protocol version 3): one long-lived stream carrying many calls, each frame a
//! [`PipeCall`] with the client's tag, each answer a [`PipeReply`] with the same tag,
//! written as calls finish (not in order). The calls run concurrently, as on streams
//! of their own; answers that are ready together go out in one write, so a busy
//! connection sends one packet for many answers instead of one stream each.
//!
//! Bad input answers the frame's tag when the frame can be skipped (an unknown
//! version, a body that does not decode, a request that is not a call); a frame over
//! the size limit cannot be skipped: its tag gets `TooLarge` and the host stops
//! reading the pipe, answers the calls in flight, and finishes it. A client resends
//! what got no answer on a new pipe, under the same request ids.

use crate::answer::{for_version, Edge, ACK_WAIT, MAX_STREAMS, QUIET, READ_TIMEOUT};
use crate::answering::PipeAnswers;
use crate::calls::{Arrival, Caller, InFlight};
use bytes::BytesMut;
use durable_client::wire::{self, FrameError, PipeCall, PipeReply, Request, Response, WireError};
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The most bytes taken from the stream at once.
const CHUNK: usize = 64 * 1024;

/// What the bytes received so far begin with.
enum Taken {
    /// Not a whole frame yet.
    Partial,
    /// A call to run.
    Call {
        tag: u64,
        request: Request,
        version: u8,
    },
    /// A whole frame that is refused; the pipe goes on.
    Refused { tag: u64, error: WireError },
    /// A frame that cannot be skipped: answer its tag if known, and read no more.
    Broken { tag: Option<u64>, error: WireError },
}

/// Answers waiting to be written, and how many answers they hold.
#[derive(Default)]
struct Answers {
    bytes: Vec<u8>,
    count: usize,
}

impl Answers {
    fn push(&mut self, tag: u64, response: Response) {
        reply(&mut self.bytes, tag, response);
        self.count += 1;
    }
}

/// A pipe's calls handed to their shards, by the key their answers land under: each
/// with the client's tag and protocol version. Keys are reused once answered.
struct Running<'a> {
    calls: Vec<Option<(u64, u8, InFlight<'a>)>>,
    /// Keys of `calls` that are empty.
    free: Vec<usize>,
}

impl<'a> Running<'a> {
    fn new() -> Self {
        Running {
            calls: Vec::new(),
            free: Vec::new(),
        }
    }

    /// The key the next call will have.
    fn next_key(&self) -> usize {
        self.free.last().copied().unwrap_or(self.calls.len())
    }

    /// Add a call under [`Running::next_key`].
    fn insert(&mut self, call: (u64, u8, InFlight<'a>)) {
        match self.free.pop() {
            Some(key) => self.calls[key] = Some(call),
            None => self.calls.push(Some(call)),
        }
    }

    fn remove(&mut self, key: usize) -> Option<(u64, u8, InFlight<'a>)> {
        let call = self.calls.get_mut(key)?.take()?;
        self.free.push(key);
        Some(call)
    }

    fn len(&self) -> usize {
        self.calls.len() - self.free.len()
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drops the answers of a pipe that is gone.
struct CloseOnDrop(Arc<PipeAnswers>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Serve a pipe whose opening frame has been read, until the client finishes its side
/// and every call is answered (or the host stops).
///
/// The calls, the reading and the writing all make progress in one `select!`: a call
/// that finishes while the client is slow to read its answers still ends (and gives
/// back its place among the host's calls in flight); its answer waits in memory. The
/// calls' answers land in one [`PipeAnswers`] as their shards release them, and wake
/// this task once for all that landed together.
/// Calls running plus answers not yet written are bounded by [`MAX_STREAMS`]: past
/// that the pipe stops reading, and QUIC flow control holds the client back.
pub(crate) async fn serve(
    edge: &Edge,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    caller: &Caller,
) {
    let mut closing = edge.closing.subscribe();
    let landing = Arc::new(PipeAnswers::default());
    let _close = CloseOnDrop(landing.clone());
    let mut calls = Running::new();
    let mut input = BytesMut::new();
    // Answers being written (`writing`, from `written` on) and gathering behind them.
    let mut writing = Answers::default();
    let mut written = 0;
    let mut gathering = Answers::default();
    let mut reading = true;
    // Runs from when the first bytes of a frame still incomplete arrived.
    let mut partial: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    // Counted as a stream in flight while calls or answers are, and while the host is
    // stopping (it waits for them before it closes its endpoint).
    let mut busy = None;
    let bound = MAX_STREAMS as usize;
    loop {
        // The calls taken from one read arrived together: the clocks are read once.
        let mut arrival = None;
        while reading && calls.len() + writing.count + gathering.count < bound {
            match take_frame(&mut input, edge.max_frame) {
                Taken::Partial => break,
                Taken::Call {
                    tag,
                    request,
                    version,
                } => {
                    edge.opened.fetch_add(1, Ordering::AcqRel);
                    let arrival = *arrival.get_or_insert_with(|| Arrival::now(&*edge.calls.clock));
                    match edge.start(
                        request,
                        version,
                        caller,
                        &landing,
                        calls.next_key(),
                        arrival,
                    ) {
                        Ok(call) => calls.insert((tag, version, call)),
                        Err(response) => gathering.push(tag, response),
                    }
                }
                Taken::Refused { tag, error } => gathering.push(tag, Response::Error(error)),
                Taken::Broken { tag, error } => {
                    if let Some(tag) = tag {
                        gathering.push(tag, Response::Error(error));
                    }
                    reading = false;
                    let _ = recv.stop(0u32.into());
                }
            }
        }
        if !reading || input.is_empty() {
            partial = None;
        } else if partial.is_none() {
            partial = Some(Box::pin(tokio::time::sleep(READ_TIMEOUT)));
        }
        if writing.count == 0 && gathering.count > 0 {
            writing = std::mem::take(&mut gathering);
            written = 0;
        }
        let stopping = *closing.borrow();
        if stopping || !calls.is_empty() || writing.count > 0 {
            busy.get_or_insert_with(|| edge.streams.enter());
        } else {
            busy = None;
        }
        if !reading && calls.is_empty() && writing.count == 0 {
            break;
        }
        let room = calls.len() + writing.count + gathering.count < bound;
        tokio::select! {
            read = recv.read_chunk(CHUNK, true), if reading && room => {
                match read {
                    Ok(Some(chunk)) => input.extend_from_slice(&chunk.bytes),
                    // The client finished its side (or reset it): answer what it sent.
                    Ok(None) | Err(_) => {
                        reading = false;
                        if let (false, Some(tag)) = (input.is_empty(), wire::pipe_frame_tag(&input)) {
                            gathering.push(tag, Response::Error(FrameError::Truncated.into()));
                        }
                    }
                }
            }
            // Cancel-safe: if it does not finish, nothing was written. (`select!`
            // evaluates this expression even when the branch is off.)
            wrote = send.write(writing.bytes.get(written..).unwrap_or_default()), if writing.count > 0 => match wrote {
                Ok(n) => {
                    written += n;
                    if written >= writing.bytes.len() {
                        writing = Answers::default();
                        written = 0;
                    }
                }
                // The client stopped reading or the connection is gone.
                Err(_) => return,
            },
            // Every answer that landed goes out in the same write.
            landed = std::future::poll_fn(|cx| landing.poll_take(cx)), if !calls.is_empty() => {
                let now = crate::clock::monotonic();
                for (key, response) in landed {
                    if let Some((tag, version, call)) = calls.remove(key) {
                        call.answered_at(&response, now);
                        gathering.push(tag, for_version(response, version));
                    }
                }
            }
            // A frame begun and not finished within the read timeout: the peer stalls.
            Some(()) = async { partial.as_mut()?.await; Some(()) }, if partial.is_some() => {
                reading = false;
                let _ = recv.stop(0u32.into());
            }
            _ = closing.changed(), if !stopping => {}
            // Stopping: once nothing is in flight and nothing came for a while, finish
            // (before the host's own quiet period ends, so it waits for this one).
            _ = tokio::time::sleep(QUIET / 2), if stopping && calls.is_empty() && writing.count == 0 => break,
        }
    }
    // Held until the answers are acknowledged (or the wait gives up).
    let _acknowledging = busy.unwrap_or_else(|| edge.streams.enter());
    let _ = send.finish();
    if edge.calls.is_shutting_down() {
        // Closing the endpoint discards unacknowledged data: wait for the client to
        // have every answer first.
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
}

fn reply(out: &mut Vec<u8>, tag: u64, response: Response) {
    wire::encode_frame_into(out, &PipeReply { tag, response }, wire::PIPE_VERSION);
}

/// Take the first frame off `input` if it is whole.
fn take_frame(input: &mut BytesMut, limit: usize) -> Taken {
    let Some(prefix) = input.get(..4) else {
        return Taken::Partial;
    };
    let len = u32::from_le_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len > limit {
        let error = FrameError::TooLarge {
            size: len as u64,
            limit: limit as u64,
        }
        .into();
        return match wire::pipe_frame_tag(input) {
            Some(tag) => Taken::Broken {
                tag: Some(tag),
                error,
            },
            // The tag is a varint of at most 10 bytes after the version byte.
            None if input.len() >= 15 => Taken::Broken { tag: None, error },
            None => Taken::Partial,
        };
    }
    if input.len() < 4 + len {
        // Room for what comes next, not for all the prefix promises.
        input.reserve((4 + len - input.len()).min(CHUNK));
        return Taken::Partial;
    }
    let frame = input.split_to(4 + len);
    match wire::decode_frame_versioned::<PipeCall>(&frame, limit) {
        Ok((
            PipeCall {
                tag,
                request: request @ (Request::Call(_) | Request::ChainCall(_)),
            },
            version,
        )) => Taken::Call {
            tag,
            request,
            version,
        },
        Ok((PipeCall { tag, .. }, _)) => Taken::Refused {
            tag,
            error: WireError::Malformed {
                message: "a pipe carries calls only".into(),
            },
        },
        Err(e) => match wire::pipe_frame_tag(&frame) {
            Some(tag) => Taken::Refused {
                tag,
                error: e.into(),
            },
            None => Taken::Broken {
                tag: None,
                error: e.into(),
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use durable_client::wire::CallRequest;

    fn call(tag: u64) -> Vec<u8> {
        let request = Request::Call(CallRequest {
            request_id: [7; 16],
            class: "Counter".into(),
            object: durable_client::ObjectId::from_bytes([1; 16]),
            name: None,
            method: "get".into(),
            fingerprint: 0,
            timeout_ms: 1000,
            args: vec![],
        });
        wire::encode_frame_in(&PipeCall { tag, request }, wire::PIPE_VERSION)
    }

    #[test]
    fn frames_are_taken_whole_one_at_a_time_whatever_the_chunking() {
        let bytes: Vec<u8> = (0..5).flat_map(call).collect();
        for chunk in [1, 3, 7, 64, bytes.len()] {
            let mut input = BytesMut::new();
            let mut tags = Vec::new();
            for piece in bytes.chunks(chunk) {
                input.extend_from_slice(piece);
                loop {
                    match take_frame(&mut input, 1 << 20) {
                        Taken::Partial => break,
                        Taken::Call { tag, version, .. } => {
                            assert_eq!(version, wire::PIPE_VERSION);
                            tags.push(tag)
                        }
                        _ => panic!("refused a good frame"),
                    }
                }
            }
            assert_eq!(tags, [0, 1, 2, 3, 4], "chunks of {chunk}");
            assert!(input.is_empty());
        }
    }

    #[test]
    fn a_bad_frame_is_refused_by_tag_and_the_next_one_still_runs() {
        let mut bad = call(9);
        bad[4] = 99; // an unknown version
        let mut not_a_call = wire::encode_frame_in(
            &PipeCall {
                tag: 10,
                request: Request::Pipe,
            },
            wire::PIPE_VERSION,
        );
        let mut input = BytesMut::new();
        input.extend_from_slice(&bad);
        input.extend_from_slice(&not_a_call.split_off(0));
        input.extend_from_slice(&call(11));
        assert!(matches!(
            take_frame(&mut input, 1 << 20),
            Taken::Refused {
                tag: 9,
                error: WireError::UnsupportedVersion { got: 99 }
            }
        ));
        assert!(matches!(
            take_frame(&mut input, 1 << 20),
            Taken::Refused {
                tag: 10,
                error: WireError::Malformed { .. }
            }
        ));
        assert!(matches!(
            take_frame(&mut input, 1 << 20),
            Taken::Call { tag: 11, .. }
        ));
    }

    #[test]
    fn an_oversized_frame_breaks_the_pipe_after_answering_its_tag() {
        let big = call(12);
        let mut input = BytesMut::new();
        // Its prefix alone: the tag is not there yet.
        input.extend_from_slice(&big[..4]);
        assert!(matches!(take_frame(&mut input, 8), Taken::Partial));
        input.extend_from_slice(&big[4..]);
        assert!(matches!(
            take_frame(&mut input, 8),
            Taken::Broken {
                tag: Some(12),
                error: WireError::TooLarge { limit: 8, .. }
            }
        ));
    }
}
