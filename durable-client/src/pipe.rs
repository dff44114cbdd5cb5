//! A pipe (protocol version 3): one stream per connection that carries every call,
//! each tagged, instead of a stream per call. Frames queued together go out in one
//! write (so many calls share a packet), and answers come back as the host finishes
//! them. If the pipe or its connection ends, every call waiting on it hears `Lost`
//! and is resent, under its request id, on a new one.
//!
//! A pipe also keeps its calls' deadlines: one task per pipe sleeps until the earliest
//! and answers every call past its deadline with [`Exchange::TimedOut`], so a call on
//! a pipe registers no timer of its own.

use crate::wire::{self, PipeReply, Request, Response};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

/// Why an exchange with the host did not produce an answer.
pub(crate) enum Exchange {
    /// The connection (or the pipe) broke: resend with the same request id.
    Lost(String),
    /// The host's answer was not a valid frame.
    Protocol(String),
    /// The call's deadline passed before its answer came (it may have been applied).
    TimedOut,
    /// The pipe holds [`MAX_UNSENT`] bytes of calls not yet handed to QUIC (the host
    /// reads it no faster): this call was not sent.
    Full,
}

/// Most bytes of calls a pipe holds before they are handed to QUIC (a host that stops
/// reading the pipe would otherwise let them pile up for as long as callers call). A
/// call alone is always taken, whatever its size.
pub(crate) const MAX_UNSENT: usize = 64 << 20;

type Waiter = oneshot::Sender<Result<Response, Exchange>>;

/// The calls waiting for their answers, by tag.
struct Waiting {
    state: Mutex<WaitingState>,
    /// How many calls wait (`state.calls.len()`, kept beside it so that the writer
    /// can read it without the lock the callers and the reader take).
    count: AtomicUsize,
    /// Wakes the deadline keeper ([`keep_deadlines`]): a call came with a deadline
    /// before the time it sleeps until, or the pipe closed.
    keeper: Notify,
}

struct WaitingState {
    /// Each waiting call's waiter and deadline.
    calls: HashMap<u64, (Waiter, Instant)>,
    /// New calls may join (the stream can still be written).
    accepting: bool,
    /// No more answers will come.
    closed: bool,
    /// When the deadline keeper looks next (no later than the earliest deadline of the
    /// calls waiting); `None` while it waits to be told of a call.
    look_at: Option<Instant>,
    /// The table's size after its last sweep of calls given up on: the next sweep
    /// comes once it has doubled (see [`Waiting::add`]).
    swept_at: usize,
    /// Bytes of the calls queued for the writer and not yet handed to QUIC (kept
    /// under the lock every call takes anyway: no line of its own to share).
    unsent: usize,
}

/// What [`Waiting::add`] made of a call.
#[derive(Debug, PartialEq, Eq)]
enum Added {
    Yes,
    /// The pipe takes no more calls.
    Closed,
    /// The pipe holds [`MAX_UNSENT`] bytes not yet sent: not taken.
    Full,
}

/// The table is not swept of calls given up on while it holds fewer.
const SWEEP_FROM: usize = 1024;

impl Waiting {
    fn new() -> Waiting {
        Waiting {
            state: Mutex::new(WaitingState {
                calls: HashMap::new(),
                accepting: true,
                closed: false,
                look_at: None,
                swept_at: 0,
                unsent: 0,
            }),
            count: AtomicUsize::new(0),
            keeper: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WaitingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keep `count` in step with `state` (under its lock).
    fn counted(&self, state: &WaitingState) {
        self.count.store(state.calls.len(), Ordering::Relaxed);
    }

    /// Add a call waiting until `deadline` whose frame is `bytes` long: `Closed` if the
    /// pipe takes no more calls (checked first: a closed pipe sends callers to a new
    /// one, never answers them `Full`), `Full` if it holds [`MAX_UNSENT`] bytes not
    /// yet sent.
    ///
    /// A call given up on (its [`Sent`] dropped) leaves its place to its answer or its
    /// deadline. So that many of them cannot pile up (calls given up on faster than
    /// they are answered, with long deadlines), the table drops those whose caller is
    /// gone each time it has doubled since it was last swept: a sweep per doubling
    /// costs each call a constant share.
    fn add(&self, tag: u64, waiter: Waiter, deadline: Instant, bytes: usize) -> Added {
        let mut state = self.lock();
        if !state.accepting || state.closed {
            return Added::Closed;
        }
        if state.unsent > 0 && state.unsent + bytes > MAX_UNSENT {
            return Added::Full;
        }
        if state.calls.len() >= state.swept_at.max(SWEEP_FROM / 2) * 2 {
            state.calls.retain(|_, (waiter, _)| !waiter.is_closed());
            state.swept_at = state.calls.len();
        }
        // A tag already waiting is refused, not replaced (tags come from a counter, so
        // this does not happen; replacing would leave a call waiting forever).
        let added = state.accepting
            && !state.closed
            && match state.calls.entry(tag) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert((waiter, deadline));
                    true
                }
            };
        self.counted(&state);
        if added {
            state.unsent += bytes;
        }
        // Calls with one timeout come in the order of their deadlines: only the first
        // after the keeper found none waiting (or one with a shorter timeout) wakes it.
        let sooner = added && state.look_at.is_none_or(|at| deadline < at);
        if sooner {
            state.look_at = Some(deadline);
        }
        drop(state);
        if sooner {
            self.keeper.notify_one();
        }
        if added {
            Added::Yes
        } else {
            Added::Closed
        }
    }

    /// `bytes` of queued calls were handed to QUIC (or will never be).
    fn sent(&self, bytes: usize) {
        let mut state = self.lock();
        state.unsent = state.unsent.saturating_sub(bytes);
    }

    fn take(&self, tag: u64) -> Option<Waiter> {
        let mut state = self.lock();
        let waiter = state.calls.remove(&tag).map(|(w, _)| w);
        self.counted(&state);
        waiter
    }

    /// Answer every call whose deadline is at or before `now` with
    /// [`Exchange::TimedOut`] (a late answer is then dropped), and set when to look
    /// next: at the earliest deadline left. `None` once the pipe has closed.
    fn expire(&self, now: Instant) -> Option<Option<Instant>> {
        let (expired, next): (Vec<Waiter>, _) = {
            let mut state = self.lock();
            if state.closed {
                return None;
            }
            let past: Vec<u64> = state
                .calls
                .iter()
                .filter(|(_, (_, deadline))| *deadline <= now)
                .map(|(tag, _)| *tag)
                .collect();
            let expired = past
                .iter()
                .filter_map(|tag| state.calls.remove(tag).map(|(w, _)| w))
                .collect();
            state.look_at = state.calls.values().map(|(_, d)| *d).min();
            self.counted(&state);
            (expired, state.look_at)
        };
        for waiter in expired {
            let _ = waiter.send(Err(Exchange::TimedOut));
        }
        Some(next)
    }

    /// The waiters of `answers`' tags, taken under one lock: the answers a read brought
    /// (a whole wave of them under load) cost one lock, which the callers on other
    /// workers take too, not one each. Answers whose call stopped waiting are dropped.
    fn take_all(
        &self,
        answers: &mut Vec<(u64, Result<Response, Exchange>)>,
    ) -> Vec<(Waiter, Result<Response, Exchange>)> {
        let mut state = self.lock();
        let taken = answers
            .drain(..)
            .filter_map(|(tag, result)| state.calls.remove(&tag).map(|(w, _)| (w, result)))
            .collect();
        self.counted(&state);
        taken
    }

    /// How many calls wait for their answers: a snapshot that may already be stale,
    /// read without the lock (the writer uses it only to decide whether to let
    /// callers run before it writes).
    fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Whether new calls must go on another pipe.
    fn is_closed(&self) -> bool {
        let state = self.lock();
        !state.accepting || state.closed
    }

    /// The stream cannot be written any more: new calls go elsewhere, the answers to
    /// the calls already sent may still come (the host answers them before it
    /// finishes its side).
    fn stop_accepting(&self) {
        let mut state = self.lock();
        state.accepting = false;
        // What was queued will not be sent.
        state.unsent = 0;
    }

    /// No more answers will come: tell every waiting call why.
    fn close(&self, why: impl Fn() -> Exchange) {
        let calls = {
            let mut state = self.lock();
            state.closed = true;
            let calls = std::mem::take(&mut state.calls);
            self.counted(&state);
            calls
        };
        // The deadline keeper ends.
        self.keeper.notify_one();
        for (_, (waiter, _)) in calls {
            let _ = waiter.send(Err(why()));
        }
    }
}

/// One pipe on one connection. Dropping it (when no call uses it any more) finishes
/// the stream.
pub(crate) struct Pipe {
    conn: quinn::Connection,
    frames: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Arc<Waiting>,
    next_tag: AtomicU64,
    /// Dropped with the pipe: stops its reader.
    _stop: oneshot::Sender<()>,
}

impl Pipe {
    /// Open a pipe on `conn`: a new stream, its opening frame queued. Its tasks run on
    /// `runtime` (the client's: the caller that happens to open it may be on a runtime
    /// that goes idle or away while other callers use the pipe).
    pub(crate) async fn open(
        conn: &quinn::Connection,
        max_frame: usize,
        runtime: &tokio::runtime::Handle,
    ) -> Result<Pipe, Exchange> {
        let (send, recv) = conn
            .open_bi()
            .await
            .map_err(|e| Exchange::Lost(e.to_string()))?;
        let (frames, queued) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let waiting = Arc::new(Waiting::new());
        let opening = wire::encode_frame_in(&Request::Pipe, wire::PIPE_VERSION);
        runtime.spawn(write(send, opening, queued, waiting.clone()));
        let ends = CloseOnDrop(waiting.clone());
        runtime.spawn(read(recv, max_frame, ends, stopped));
        runtime.spawn(keep_deadlines(CloseOnDrop(waiting.clone())));
        Ok(Pipe {
            conn: conn.clone(),
            frames,
            waiting,
            next_tag: AtomicU64::new(0),
            _stop: stop,
        })
    }

    /// The connection it runs on.
    pub(crate) fn conn(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Whether it has ended (calls must go on a new one).
    pub(crate) fn is_closed(&self) -> bool {
        self.waiting.is_closed()
    }

    /// Send the call whose request's bytes are `message` now; its answer comes through
    /// the returned [`Sent`] (by `deadline` at the latest). `None` if the pipe takes no
    /// more calls.
    pub(crate) fn send(&self, message: &[u8], deadline: Instant) -> Option<Sent> {
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        // A `PipeCall { tag, request }`: the tag, then the request's bytes.
        let frame = wire::frame_of(message, wire::PIPE_VERSION, Some(tag));
        let (waiter, answer) = oneshot::channel();
        match self.waiting.add(tag, waiter, deadline, frame.len()) {
            Added::Yes => {}
            Added::Closed => return None,
            Added::Full => {
                let (refused, answer) = oneshot::channel();
                let _ = refused.send(Err(Exchange::Full));
                return Some(Sent(answer));
            }
        }
        if self.frames.send(frame).is_err() {
            // The writer is gone (the stream cannot be written): not sent, and the
            // pipe takes no more calls.
            self.waiting.take(tag);
            self.waiting.stop_accepting();
            return None;
        }
        Some(Sent(answer))
    }
}

/// A call sent on a pipe, waiting for its answer. Dropped before its answer (the call
/// given up on), its place in the pipe's table stays until the answer comes (and is
/// dropped), its deadline passes, or the table is next swept ([`Waiting::add`]).
pub(crate) struct Sent(oneshot::Receiver<Result<Response, Exchange>>);

impl Sent {
    /// The call's answer; [`Exchange::TimedOut`] at its deadline, `Lost` if the pipe
    /// ended first.
    pub(crate) async fn answer(self) -> Result<Response, Exchange> {
        self.0
            .await
            .unwrap_or_else(|_| Err(Exchange::Lost("the pipe closed".into())))
    }
}

/// Answer the pipe's calls whose deadlines pass, until the pipe closes: sleep until
/// the earliest deadline (or until told of a sooner one), answer those past it, look
/// again. With one timeout for all calls it wakes about once per timeout, not per call.
async fn keep_deadlines(ends: CloseOnDrop) {
    let waiting = &ends.0;
    let mut look_at = None;
    loop {
        match look_at {
            None => waiting.keeper.notified().await,
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = waiting.keeper.notified() => {}
                }
            }
        }
        match waiting.expire(Instant::now()) {
            Some(next) => look_at = next,
            None => return,
        }
    }
}

/// Closes the pipe's table of calls when the reader or the deadline keeper ends, also
/// when its task is dropped unfinished (even before its first poll: the guard is made
/// before the task is spawned): the runtime the pipe's tasks run on may shut down
/// while callers on other runtimes wait. They then hear `Lost` and resend on a new
/// pipe, instead of waiting for answers and deadlines no task keeps any more.
struct CloseOnDrop(Arc<Waiting>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // After a normal end the table is closed already: this finds no calls.
        self.0
            .close(|| Exchange::Lost("the pipe's tasks ended".into()));
    }
}

/// Most times the writer lets callers run before a write, while their frames keep
/// coming (see [`write`]).
const COALESCE_YIELDS: usize = 8;

/// Write queued frames, as many as are queued at once in one write, until the pipe
/// is dropped; then finish the stream.
async fn write(
    mut send: quinn::SendStream,
    opening: Vec<u8>,
    mut queued: mpsc::UnboundedReceiver<Vec<u8>>,
    waiting: Arc<Waiting>,
) {
    let mut buf = opening;
    // Frames in `buf` (the opening counts as one), and the bytes of calls among them.
    let mut frames = 1;
    let mut calls_bytes = 0;
    loop {
        while let Ok(more) = queued.try_recv() {
            buf.extend_from_slice(&more);
            frames += 1;
            calls_bytes += more.len();
        }
        // Calls answered together send their next calls together. On a runtime with
        // several workers those callers run beside this task, and writing the first
        // frame at once sent a packet per call (0.59 datagrams per call against 0.18
        // on one thread, 256 counters, 64 in flight). So while more calls wait for
        // answers than it holds frames, it lets the callers run (a yield, again while
        // frames keep coming, at most `COALESCE_YIELDS` times) before it writes. A call
        // alone on the pipe goes at once.
        let mut yields = 0;
        while yields < COALESCE_YIELDS && waiting.len() > frames {
            let before = frames;
            tokio::task::yield_now().await;
            while let Ok(more) = queued.try_recv() {
                buf.extend_from_slice(&more);
                frames += 1;
                calls_bytes += more.len();
            }
            if frames == before {
                break;
            }
            yields += 1;
        }
        if send.write_all(&buf).await.is_err() {
            // The host stopped reading (or the connection is gone): the reader still
            // takes the answers the host sends for what it read, until the end.
            waiting.stop_accepting();
            return;
        }
        if calls_bytes > 0 {
            waiting.sent(calls_bytes);
        }
        buf.clear();
        match queued.recv().await {
            Some(frame) => {
                calls_bytes = frame.len();
                buf = frame;
                frames = 1;
            }
            None => break,
        }
    }
    let _ = send.finish();
}

/// Hand each answer to the call waiting for it, until the stream ends, breaks or the
/// pipe is dropped. An answer this client cannot read fails only its own call; then
/// the calls still waiting hear `Lost` and are resent under their request ids.
async fn read(
    recv: quinn::RecvStream,
    max_frame: usize,
    ends: CloseOnDrop,
    mut stopped: oneshot::Receiver<()>,
) {
    let waiting = &ends.0;
    let mut answers = Answers::new(recv, max_frame);
    let mut landed = Vec::new();
    let mut dropped = false;
    let why = loop {
        let answer = tokio::select! {
            answer = answers.next() => answer,
            _ = &mut stopped, if !dropped => {
                // The pipe was dropped (a new one took its place, or its lane was
                // forgotten). Its calls already sent hold no reference to it, and still
                // get their answers: the writer finishes the stream, and the host
                // answers what it read before it finishes its side.
                if waiting.len() == 0 {
                    break "the pipe was dropped".to_string();
                }
                dropped = true;
                continue;
            }
        };
        let mut next = match answer {
            Ok(answer) => Some(answer),
            Err(lost) => break lost,
        };
        // This answer and every other whole one the last read brought.
        let mut nameless = false;
        while let Some((tag, result)) = next {
            match tag {
                Some(tag) => landed.push((tag, result)),
                None => {
                    nameless = true;
                    break;
                }
            }
            next = answers.take();
        }
        if !landed.is_empty() {
            for (waiter, result) in waiting.take_all(&mut landed) {
                let _ = waiter.send(result);
            }
        }
        if nameless {
            break "an answer on the pipe names no call".to_string();
        }
        if dropped && waiting.len() == 0 {
            break "the pipe was dropped".to_string();
        }
    };
    waiting.close(|| Exchange::Lost(why.clone()));
}

/// Most bytes one read of the stream takes.
const READ_CHUNK: usize = 64 << 10;

/// The answers on a pipe's stream, read a chunk at a time: every answer a chunk holds
/// costs one read (one lock of the connection, which the callers' writes take too on
/// other workers), not two per answer.
struct Answers {
    recv: quinn::RecvStream,
    max_frame: usize,
    /// Bytes read and not yet taken, from `at`.
    buf: Vec<u8>,
    at: usize,
    /// Bytes still to drop of an answer too large to read.
    skip: usize,
}

/// An answer's tag (if it could be read) and what it says.
type Answered = (Option<u64>, Result<Response, Exchange>);

impl Answers {
    fn new(recv: quinn::RecvStream, max_frame: usize) -> Answers {
        Answers {
            recv,
            max_frame,
            buf: Vec::new(),
            at: 0,
            skip: 0,
        }
    }

    /// The next answer; `Err` if the stream ended or broke.
    async fn next(&mut self) -> Result<Answered, String> {
        loop {
            if let Some(answer) = self.take() {
                return Ok(answer);
            }
            // Keep only what is not taken, then read more. The memory a large answer
            // took is given back once the buffer is empty.
            self.buf.drain(..self.at);
            self.at = 0;
            if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                self.buf = Vec::new();
            }
            let chunk = self
                .recv
                .read_chunk(READ_CHUNK, true)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "the stream ended".to_string())?;
            let mut bytes = &chunk.bytes[..];
            let dropped = self.skip.min(bytes.len());
            self.skip -= dropped;
            bytes = &bytes[dropped..];
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The first answer in the buffer, if it holds all of it (or, for one too large to
    /// read, enough to tell its tag: the rest is skipped as it comes).
    fn take(&mut self) -> Option<Answered> {
        let have = &self.buf[self.at..];
        if self.skip > 0 || have.len() < 4 {
            return None;
        }
        let len = u32::from_le_bytes(have[..4].try_into().expect("4 bytes")) as usize;
        if len <= self.max_frame {
            let frame = have.get(..4 + len)?;
            self.at += 4 + len;
            return Some(
                match wire::decode_frame::<PipeReply>(frame, self.max_frame) {
                    Ok(PipeReply { tag, response }) => (Some(tag), Ok(response)),
                    Err(e) => (
                        wire::pipe_frame_tag(frame),
                        Err(Exchange::Protocol(format!("an answer on the pipe: {e}"))),
                    ),
                },
            );
        }
        // Too large for this client: keep the version and the tag (a varint of at most
        // 10 bytes after the version byte), skip the rest.
        let head = have.get(..(4 + len).min(15))?;
        let tag = wire::pipe_frame_tag(head);
        let now = have.len().min(4 + len);
        self.at += now;
        self.skip = 4 + len - now;
        Some((
            tag,
            Err(Exchange::Protocol(format!(
                "an answer of {len} bytes exceeds the limit of {}",
                self.max_frame
            ))),
        ))
    }
}

/// Read one frame (length prefix included) from a stream that may carry more.
pub(crate) async fn read_frame(
    recv: &mut quinn::RecvStream,
    max_frame: usize,
) -> Result<Vec<u8>, Exchange> {
    let lost = |e: &dyn std::fmt::Display| Exchange::Lost(e.to_string());
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| lost(&e))?;
    let len = u32::from_le_bytes(prefix) as usize;
    if len > max_frame {
        return Err(Exchange::Protocol(format!(
            "a frame of {len} bytes exceeds the limit of {max_frame}"
        )));
    }
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&prefix);
    recv.read_exact(&mut frame[4..])
        .await
        .map_err(|e| lost(&e))?;
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_full_pipe_that_stops_taking_calls_says_closed_not_full() {
        let waiting = Waiting::new();
        let deadline = Instant::now() + Duration::from_secs(3600);
        let (w, _a) = oneshot::channel();
        assert_eq!(waiting.add(1, w, deadline, MAX_UNSENT - 10), Added::Yes);
        let (w, _b) = oneshot::channel();
        assert_eq!(waiting.add(2, w, deadline, 100), Added::Full);
        // The writer failed: nothing queued will be sent. Callers must go to a new
        // pipe (Closed), not hear Full for good.
        waiting.stop_accepting();
        let (w, _c) = oneshot::channel();
        assert_eq!(waiting.add(3, w, deadline, 100), Added::Closed);
        assert_eq!(waiting.lock().unsent, 0);
    }

    #[tokio::test]
    async fn calls_given_up_on_are_swept_once_the_table_has_doubled() {
        let waiting = Waiting::new();
        let deadline = Instant::now() + Duration::from_secs(3600);
        // One call still waited for, then calls given up on (their receivers dropped)
        // up to the first sweep's size.
        let (kept, mut answer) = oneshot::channel();
        assert_eq!(waiting.add(0, kept, deadline, 0), Added::Yes);
        for tag in 1..SWEEP_FROM as u64 {
            let (waiter, given_up) = oneshot::channel();
            drop(given_up);
            assert_eq!(waiting.add(tag, waiter, deadline, 0), Added::Yes);
        }
        assert_eq!(waiting.len(), SWEEP_FROM);
        // The next call sweeps them: the one waited for and the new one are left.
        let (waiter, _new) = oneshot::channel();
        assert_eq!(
            waiting.add(SWEEP_FROM as u64, waiter, deadline, 0),
            Added::Yes
        );
        assert_eq!(waiting.len(), 2);
        // The call waited for still gets its answer (and leaves the table).
        let mut landed = vec![(0, Ok(Response::Welcome))];
        for (waiter, result) in waiting.take_all(&mut landed) {
            let _ = waiter.send(result);
        }
        assert!(matches!(answer.try_recv(), Ok(Ok(Response::Welcome))));
        // The next sweep waits for the table to reach twice the first sweep's size
        // (1,024 here, as it kept fewer than 512): calls given up on stay until then.
        let mut given_up = Vec::new();
        for tag in 0..500 {
            let (waiter, receiver) = oneshot::channel();
            assert_eq!(waiting.add(5_000 + tag, waiter, deadline, 0), Added::Yes);
            given_up.push(receiver);
        }
        drop(given_up);
        assert_eq!(waiting.len(), 501, "given up on, and not swept yet");
        for tag in 501..SWEEP_FROM as u64 {
            let (waiter, receiver) = oneshot::channel();
            drop(receiver);
            assert_eq!(waiting.add(6_000 + tag, waiter, deadline, 0), Added::Yes);
        }
        assert_eq!(waiting.len(), SWEEP_FROM);
        let (waiter, _newer) = oneshot::channel();
        assert_eq!(waiting.add(9_000, waiter, deadline, 0), Added::Yes);
        assert_eq!(waiting.len(), 2, "the call beside them and the newest");
        // Live calls are never swept.
        let mut live = Vec::new();
        for tag in 0..2 * SWEEP_FROM as u64 {
            let (waiter, receiver) = oneshot::channel();
            assert_eq!(waiting.add(10_000 + tag, waiter, deadline, 0), Added::Yes);
            live.push(receiver);
        }
        assert_eq!(waiting.len(), 2 * SWEEP_FROM + 2);
    }
}
