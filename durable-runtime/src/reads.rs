//! Read-only handlers: a remote method taking `&self` and `ctx: &ReadContext` runs
//! beside the object's writer, on a second, read-only SQLite connection to the same
//! file, and sees the file's last committed state. It never waits for the object's
//! queue, its suspended turn, or its group commit (it shares the shard thread, so it
//! does wait out the synchronous part of a batch in progress).
//!
//! **What a read sees.** Under the host log an object's file commits lazily (its
//! batches stay in one open transaction until the log holds them all), so the file's
//! committed state can lag what is durable, and the writer's in-memory instance runs
//! ahead of both. A read therefore runs on a *reader instance*: one the class's
//! activation constructor built on the read connection, inside a read transaction,
//! from the committed state; it is rebuilt whenever the file's committed batch number
//! ([`store::stored_seq`]) moves.
//!
//! **The invariant.** A read shows no write that is not durable, and every write
//! acknowledged before the read arrived. It is checked at every read, inside the
//! read's own snapshot: the snapshot's batch number `S` must be at least the object's
//! durable batch number `D` (outputs leave the output gate only for batches `<= D`,
//! so every acknowledged write is in `S`), and `S` is always durable because under
//! the host log the file commits a batch only after the log made it durable (see
//! `Object::commit_deferred`). When `S < D` (the file still defers durable batches,
//! the object is healing, ...) or the reader cannot be built (the file is new, a
//! migration is pending: activation tries to write and SQLite refuses), the read falls
//! back to a turn on the writer: it queues like any call and its reply waits in the
//! output gate, as every call did before read-only handlers existed. Under
//! `--durability fsync` the file commits before its sync, so every read takes that
//! path.
//!
//! **Read-friendly writers.** So that reads rarely fall back, an object that received
//! a read in the last second commits its file as soon as each batch is durable, before
//! the batch's replies are released and before the next batch starts (what objects do
//! all the time when commits are not deferred): then when a reply of batch `N` leaves
//! the host, the file has committed batch `N`. Objects without readers keep deferring
//! their file commits (128 batches, or 100 ms quiet). The check above does not rely on
//! this: it only makes fallbacks rare.

use crate::class::{ClassEntry, Instance, TurnOutcome};
use crate::context::Context;
use crate::db::Statements;
use crate::shard_config::{Call, ShardConfig};
use crate::store;
use durable_client::wire::{Response, WireError};
use durable_client::ObjectId;
use futures_util::FutureExt;
use rusqlite::OpenFlags;
use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long after its last read-only call an object's writer stays read-friendly.
const FRIENDLY_MS: u64 = 1000;

/// A reader connection unused this long is closed (reopened by the next read).
const READER_IDLE: Duration = Duration::from_secs(10);

/// A reader connection unused this long gives back its cached pages.
const READER_RELEASE: Duration = Duration::from_secs(1);

/// What the shard's object gives the read path (implemented by the shard's slot).
pub(crate) trait Writer {
    /// The object's read state.
    fn reads(&self) -> &ReadState;
    /// Every batch up to this one is durable, and no reply of a later batch has left.
    fn durable(&self) -> u64;
    /// Run `call` as a turn after all (queued behind the object's calls, gated).
    fn fallback(&self, now: u64, call: Box<Call>);
    /// A read was served: the object is in use (not evicted as idle).
    fn touch(&self, now: u64);
}

/// An object's read path: the channel to its reader task, and what its writer tells
/// it. Lives in the shard's slot; dropping it ends the reader task.
#[derive(Default)]
pub(crate) struct ReadState {
    tx: RefCell<Option<mpsc::UnboundedSender<Box<Call>>>>,
    /// Read calls taken and not yet answered or handed to the writer.
    in_flight: Cell<usize>,
    /// The writer has opened (and checked) the object's file in this run.
    ready: Cell<bool>,
    /// Changes when the writer replaces the file (a restore): readers reopen it.
    generation: Cell<u64>,
    /// The writer stays read-friendly until this time (ms).
    friendly_until: Cell<u64>,
}

impl ReadState {
    /// The writer opened the object's file (after checking it).
    pub(crate) fn writer_opened(&self) {
        self.ready.set(true);
    }

    /// The writer is about to replace the object's file: readers must reopen it.
    pub(crate) fn file_replaced(&self) {
        self.generation.set(self.generation.get() + 1);
    }

    /// Whether the writer must commit its file as soon as each batch is durable.
    pub(crate) fn friendly(&self, now: u64) -> bool {
        now < self.friendly_until.get()
    }

    /// Read calls are in flight: the object is not idle.
    pub(crate) fn busy(&self) -> bool {
        self.in_flight.get() > 0
    }
}

/// Whether a read may be served from a snapshot of the file at batch `file_seq` when
/// every batch up to `durable` is durable (and no reply of a later batch has left):
/// the file must hold every batch whose replies may have left. (That the file holds
/// nothing that is not durable is the file's own rule under the host log.)
fn serves(file_seq: u64, durable: u64) -> bool {
    file_seq >= durable
}

/// Take a read-only call for an object with a slot on this shard, to run at once on
/// its reader. Gives the call back if it must run as a turn (the writer has not
/// opened the file yet, or the host runs without its log); `None` once it is taken.
pub(crate) fn offer<W: Writer + 'static>(
    slot: &Rc<W>,
    config: &Rc<ShardConfig>,
    call: Box<Call>,
) -> Option<Box<Call>> {
    if !config.durability.captures_changes() {
        return Some(call);
    }
    let now = config.clock.now_ms();
    let state = slot.reads();
    state.friendly_until.set(now + FRIENDLY_MS);
    if !state.ready.get() {
        return Some(call);
    }
    if state.in_flight.get() >= config.max_queue {
        let _ = call.reply.send(Response::Error(WireError::OverloadedRetry {
            retry_after_ms: 50,
        }));
        return None;
    }
    slot.touch(now);
    let mut tx = state.tx.borrow_mut();
    let tx = tx.get_or_insert_with(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = serve(
            Rc::downgrade(slot),
            config.clone(),
            call.class.clone(),
            call.request.object,
            rx,
        );
        tokio::task::spawn_local(task);
        tx
    });
    state.in_flight.set(state.in_flight.get() + 1);
    if let Err(e) = tx.send(call) {
        state.in_flight.set(state.in_flight.get() - 1);
        return Some(e.0);
    }
    None
}

/// A reader: the read connection (query-only) and the instance built on it.
struct Reader {
    ctx: Context,
    instance: Option<Box<dyn Instance>>,
    /// The file's batch number `instance` was activated at.
    instance_seq: u64,
    /// The [`ReadState::generation`] of the file it opened.
    generation: u64,
}

impl Reader {
    fn open(
        config: &ShardConfig,
        class: &'static str,
        id: ObjectId,
        generation: u64,
    ) -> rusqlite::Result<Reader> {
        let path = store::object_path(&config.data_dir, class, id);
        // Read-only (never created here; and its close never checkpoints or deletes
        // the WAL, which matters if the file was replaced under it).
        let conn = crate::wal_index::open(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        store::disable_lookaside(&conn);
        conn.pragma_update(None, "query_only", true)?;
        conn.pragma_update(None, "cache_size", -64)?;
        conn.set_prepared_statement_cache_capacity(16);
        let name: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
            "SELECT value FROM _durable_meta WHERE key = 'name'",
            [],
            |r| Ok(store::stored_name(r.get_ref(0)?)),
        ))?
        .flatten();
        let mut ctx = Context::new(conn, class, id, name);
        ctx.bookmarks = config.bookmarks.clone();
        ctx.clock = config.clock.clone();
        ctx.sockets = config.sockets.clone();
        Ok(Reader {
            ctx,
            instance: None,
            instance_seq: 0,
            generation,
        })
    }
}

/// One object's reader task: runs its read calls one at a time, in arrival order.
async fn serve<W: Writer + 'static>(
    slot: Weak<W>,
    config: Rc<ShardConfig>,
    class: Arc<ClassEntry>,
    id: ObjectId,
    mut rx: mpsc::UnboundedReceiver<Box<Call>>,
) {
    let mut reader: Option<Reader> = None;
    // Whether the open reader gave back its cached pages since its last read.
    let mut released = false;
    loop {
        let call = if reader.is_some() {
            let wait = if released {
                READER_IDLE.saturating_sub(READER_RELEASE)
            } else {
                READER_RELEASE
            };
            match tokio::time::timeout(wait, rx.recv()).await {
                Ok(call) => call,
                Err(_) if !released => {
                    // Quiet: give back the pages, as the writer does; the connection
                    // (and the instance built on it) stays for the next read.
                    if let Some(r) = reader.as_ref() {
                        store::release_idle_memory(&r.ctx.conn);
                    }
                    released = true;
                    continue;
                }
                Err(_) => {
                    reader = None;
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        released = false;
        let Some(call) = call else { return };
        let Some(slot) = slot.upgrade() else {
            let _ = call.reply.send(Response::Error(WireError::ShuttingDown));
            continue;
        };
        let answer = read(&mut reader, &*slot, &config, &class, id, &call).await;
        let now = config.clock.now_ms();
        match answer {
            Some(response) => {
                let _ = call.reply.send(response);
            }
            None => slot.fallback(now, call),
        }
        let state = slot.reads();
        state.in_flight.set(state.in_flight.get() - 1);
        slot.touch(now);
    }
}

/// Run one read on the reader: its answer, or `None` if it must run as a turn.
async fn read<W: Writer>(
    reader: &mut Option<Reader>,
    slot: &W,
    config: &ShardConfig,
    class: &ClassEntry,
    id: ObjectId,
    call: &Call,
) -> Option<Response> {
    if config.clock.now_ms() > call.deadline_ms {
        return Some(Response::Error(WireError::Timeout));
    }
    let generation = slot.reads().generation.get();
    if reader.as_ref().is_some_and(|r| r.generation != generation) {
        *reader = None;
    }
    if reader.is_none() {
        match Reader::open(config, class.name, id, generation) {
            Ok(r) => *reader = Some(r),
            Err(e) => {
                tracing::debug!(class = class.name, %id, error = %e, "opening a reader; the read runs as a turn");
                return None;
            }
        }
    }
    let r = reader.as_mut().expect("opened");
    // The read's snapshot starts with its first read. (Kept statements: parsing these
    // two on every read was a tenth of the shard's time in read_latency.)
    if r.ctx.conn.run("BEGIN").is_err() {
        *reader = None;
        return None;
    }
    let answer = read_in_snapshot(r, slot, class, call).await;
    if r.ctx.conn.run("ROLLBACK").is_err() {
        // A connection that cannot end its snapshot is not reused.
        *reader = None;
    }
    answer
}

/// The part of [`read`] inside the read transaction.
async fn read_in_snapshot<W: Writer>(
    r: &mut Reader,
    slot: &W,
    class: &ClassEntry,
    call: &Call,
) -> Option<Response> {
    let seq = match store::stored_seq(&*r.ctx.conn) {
        Ok(seq) => seq,
        Err(e) => {
            tracing::debug!(class = class.name, id = %r.ctx.id, error = %e, "reading the file's batch number; the read runs as a turn");
            return None;
        }
    };
    // Nothing awaits between the snapshot above and this check: the writer's durable
    // batch number cannot move in between.
    if !serves(seq, slot.durable()) {
        return None;
    }
    if r.instance.is_none() || r.instance_seq != seq {
        r.instance = None;
        let activate = class.activate;
        let ctx = &mut r.ctx;
        ctx.effects = Default::default();
        let activated = std::panic::catch_unwind(AssertUnwindSafe(|| activate(ctx)));
        ctx.effects = Default::default();
        match activated {
            Ok(Ok(instance)) => {
                r.instance = Some(instance);
                r.instance_seq = seq;
            }
            // It tried to write (a migration not applied yet: a new object, a schema
            // change), or failed for another reason: the writer's activation decides.
            Ok(Err(e)) => {
                tracing::debug!(class = class.name, id = %r.ctx.id, error = %e.0, "activating a reader; the read runs as a turn");
                return None;
            }
            Err(_) => return None,
        }
    }
    let request = &call.request;
    let span = tracing::debug_span!(
        "read",
        class = class.name,
        id = %request.object,
        method = %request.method,
    );
    let instance = r.instance.as_ref().expect("activated");
    // The connection is read-only; the scope also refuses transaction control (ending
    // the read's snapshot), `ATTACH` and setting pragmas.
    let scope = r.ctx.conn.enter_read_scope();
    let turn = instance.dispatch_read(r.ctx.as_read(), call.method, &request.args);
    let started = crate::clock::monotonic();
    let outcome = AssertUnwindSafe(tracing::Instrument::instrument(turn, span))
        .catch_unwind()
        .await;
    drop(scope);
    crate::telemetry::turn(
        class.name,
        crate::clock::monotonic().saturating_sub(started),
    );
    Some(match outcome {
        Ok(outcome) => response(outcome, class, &request.method),
        Err(panic) => {
            let message = format!(
                "{}.{} panicked: {}",
                class.name,
                request.method,
                crate::shard_config::panic_message(&panic)
            );
            tracing::warn!(id = %request.object, "{message}; reader instance dropped");
            r.instance = None;
            Response::Error(WireError::ObjectReset { message })
        }
    })
}

/// The reply to a read's outcome.
fn response(outcome: TurnOutcome, class: &ClassEntry, method: &str) -> Response {
    match outcome {
        TurnOutcome::Return(bytes) => Response::Return(bytes),
        TurnOutcome::AppError(bytes) => Response::AppError(bytes),
        TurnOutcome::BadArguments(message) => Response::Error(WireError::BadArguments { message }),
        TurnOutcome::EncodeFailed(message) => Response::Error(WireError::Internal {
            message: format!("encoding the result: {message}"),
        }),
        TurnOutcome::UnknownMethod => Response::Error(WireError::UnknownMethod {
            class: class.name.into(),
            method: method.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_serves_only_if_it_holds_every_durable_batch() {
        assert!(serves(0, 0));
        assert!(serves(7, 7));
        // Ahead of what the object's core has heard is durable: the file commits only
        // durable batches, so this is a batch whose durability is on its way.
        assert!(serves(8, 7));
        // Behind: a durable batch (whose replies may have left) is not in the file.
        assert!(!serves(6, 7));
    }

    #[test]
    fn read_state_tracks_friendliness_and_the_file_generation() {
        let s = ReadState::default();
        assert!(!s.friendly(0));
        s.friendly_until.set(1000);
        assert!(s.friendly(999));
        assert!(!s.friendly(1000));
        assert_eq!(s.generation.get(), 0);
        s.file_replaced();
        assert_eq!(s.generation.get(), 1);
        assert!(!s.busy() && !s.ready.get());
        s.writer_opened();
        assert!(s.ready.get());
    }

    #[test]
    fn outcomes_map_to_the_replies_a_turn_would_give() {
        let class = ClassEntry {
            name: "C",
            methods: Default::default(),
            alarms: Default::default(),
            activate: |_| Err(crate::ActivateError("unused".into())),
            json: Default::default(),
            sockets: crate::SocketHandlers {
                connect: false,
                message: false,
                close: false,
            },
            reads: Vec::new(),
            read_activations: Default::default(),
        };
        let r = |o| response(o, &class, "m");
        assert!(matches!(r(TurnOutcome::Return(vec![1])), Response::Return(b) if b == [1]));
        assert!(matches!(r(TurnOutcome::AppError(vec![2])), Response::AppError(b) if b == [2]));
        assert!(matches!(
            r(TurnOutcome::BadArguments("x".into())),
            Response::Error(WireError::BadArguments { message }) if message == "x"
        ));
        assert!(matches!(
            r(TurnOutcome::EncodeFailed("y".into())),
            Response::Error(WireError::Internal { message }) if message.contains('y')
        ));
        assert!(matches!(
            r(TurnOutcome::UnknownMethod),
            Response::Error(WireError::UnknownMethod { class, method }) if class == "C" && method == "m"
        ));
    }

    #[test]
    fn the_read_view_is_the_context_itself() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let ctx = Context::new(conn, "C", ObjectId::from_name("C", "x"), Some("x".into()));
        let read = ctx.as_read();
        assert_eq!(read.class(), "C");
        assert_eq!(read.name(), Some("x"));
        assert_eq!(read.id(), ObjectId::from_name("C", "x"));
        let n: i64 = read
            .sql()
            .query_row("SELECT 41 + 1", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 42);
    }
}
