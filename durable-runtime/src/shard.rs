//! Shards: a few threads, each with a single-threaded executor that owns its objects,
//! their SQLite connections and their queues. An object is pinned to one shard by its
//! id, so turns need no locks; the network runtime only moves frames in and out.
//!
//! Each object runs one task that takes the calls waiting in its bounded queue as a
//! batch: one SQLite transaction, one savepoint per call (a failing call rolls back
//! only itself), one commit, then the durability component makes the batch durable
//! and only then are the batch's replies released (the output gate).

use crate::class::{ClassEntry, Instance, TurnOutcome};
use crate::context::Context;
use crate::durability::{Change, Durability, DurablePos, ObjectLog};
use crate::store::{self, Recorded};
use durable_client::wire::{CallRequest, Response, WireError};
use durable_client::ObjectId;
use futures_util::FutureExt;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot, Notify};

/// One call routed to an object.
pub(crate) struct Call {
    pub(crate) class: Arc<ClassEntry>,
    pub(crate) method: usize,
    pub(crate) request: CallRequest,
    pub(crate) deadline: Instant,
    pub(crate) reply: oneshot::Sender<Response>,
}

/// Settings every shard shares.
#[derive(Clone)]
pub(crate) struct ShardConfig {
    pub(crate) data_dir: PathBuf,
    pub(crate) max_queue: usize,
    pub(crate) max_batch: usize,
    pub(crate) request_window: usize,
    pub(crate) durability: Arc<dyn Durability>,
    /// With retention: ship a whole image when the last one is older than this.
    pub(crate) snapshot_every: Option<std::time::Duration>,
    /// The host log's durable lsn, for bookmarks.
    pub(crate) bookmarks: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

/// The shard threads and the channels into them.
pub(crate) struct Shards {
    senders: Vec<mpsc::UnboundedSender<Message>>,
    threads: std::sync::Mutex<Vec<std::thread::JoinHandle<()>>>,
}

pub(crate) enum Message {
    Call(Call),
    Close,
}

impl Shards {
    pub(crate) fn start(n: usize, config: ShardConfig) -> std::io::Result<Shards> {
        let mut senders = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let (tx, rx) = mpsc::unbounded_channel();
            let config = config.clone();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .max_blocking_threads(64)
                .thread_name(format!("durable-shard-{i}-io"))
                .build()?;
            let handle = std::thread::Builder::new()
                .name(format!("durable-shard-{i}"))
                .spawn(move || {
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, route(rx, Rc::new(config)));
                    // Let every object finish its queue and release its replies.
                    rt.block_on(local);
                })?;
            senders.push(tx);
            threads.push(handle);
        }
        Ok(Shards {
            senders,
            threads: std::sync::Mutex::new(threads),
        })
    }

    /// Hand a call to the shard that owns its object.
    pub(crate) fn send(&self, call: Call) {
        let id = call.request.object.as_bytes();
        let h = u64::from_le_bytes(id[..8].try_into().unwrap()) ^ fnv(call.class.name.as_bytes());
        let shard = (h % self.senders.len() as u64) as usize;
        if let Err(mpsc::error::SendError(Message::Call(call))) =
            self.senders[shard].send(Message::Call(call))
        {
            let _ = call.reply.send(Response::Error(WireError::ShuttingDown));
        }
    }

    /// Stop taking calls, finish every queued one, close every database and join the
    /// shard threads (blocking).
    pub(crate) fn shutdown(&self) {
        for tx in &self.senders {
            let _ = tx.send(Message::Close);
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap());
        for t in threads {
            let _ = t.join();
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

/// What the router and an object's task share.
struct Slot {
    queue: RefCell<VecDeque<Call>>,
    notify: Notify,
    closing: Cell<bool>,
}

async fn route(mut rx: mpsc::UnboundedReceiver<Message>, config: Rc<ShardConfig>) {
    let mut objects: HashMap<(&'static str, ObjectId), Rc<Slot>> = HashMap::new();
    while let Some(Message::Call(call)) = rx.recv().await {
        let key = (call.class.name, call.request.object);
        let slot = objects.entry(key).or_insert_with(|| {
            let slot = Rc::new(Slot {
                queue: RefCell::new(VecDeque::new()),
                notify: Notify::new(),
                closing: Cell::new(false),
            });
            let object = Object {
                slot: slot.clone(),
                class: call.class.clone(),
                id: call.request.object,
                config: config.clone(),
                ctx: None,
                instance: None,
                log: None,
                seq: 0,
                needs_image: false,
                last_image_ms: 0,
            };
            tokio::task::spawn_local(object.run());
            slot
        });
        let mut queue = slot.queue.borrow_mut();
        if queue.len() >= config.max_queue {
            let _ = call.reply.send(Response::Error(WireError::Overloaded));
            continue;
        }
        queue.push_back(call);
        drop(queue);
        slot.notify.notify_one();
    }
    for slot in objects.values() {
        slot.closing.set(true);
        slot.notify.notify_one();
    }
}

/// One object's state on its shard.
struct Object {
    slot: Rc<Slot>,
    class: Arc<ClassEntry>,
    id: ObjectId,
    config: Rc<ShardConfig>,
    ctx: Option<Context>,
    instance: Option<Box<dyn Instance>>,
    log: Option<Box<dyn ObjectLog>>,
    /// The last batch committed (and handed to the log); stored in the database.
    seq: u64,
    /// The next commit must ship a whole image (the object is new to the log).
    needs_image: bool,
    /// When the object last shipped a whole image (ms since the epoch).
    last_image_ms: u64,
}

/// A reply decided by a batch, waiting for the batch to be durable.
type Reply = (oneshot::Sender<Response>, Response);

fn internal(message: impl Into<String>) -> Response {
    Response::Error(WireError::Internal {
        message: message.into(),
    })
}

impl Object {
    async fn run(mut self) {
        loop {
            let batch: Vec<Call> = {
                let mut queue = self.slot.queue.borrow_mut();
                let n = queue.len().min(self.config.max_batch);
                queue.drain(..n).collect()
            };
            if batch.is_empty() {
                if self.slot.closing.get() {
                    return;
                }
                self.slot.notify.notified().await;
                continue;
            }
            let replies = self.run_batch(batch).await;
            self.release(replies);
        }
    }

    /// Open the database and activate the instance if needed.
    async fn ensure_active(&mut self, name: Option<&str>) -> Result<(), Response> {
        if self.ctx.is_none() {
            let durability = &self.config.durability;
            let sync_new = !durability.captures_changes();
            let (mut ctx, fresh) = store::open(
                &self.config.data_dir,
                self.class.name,
                self.id,
                name,
                sync_new,
            )
            .map_err(internal)?;
            self.seq = store::stored_seq(&ctx.conn).map_err(|e| internal(e.to_string()))?;
            self.last_image_ms =
                store::image_time(&ctx.conn).map_err(|e| internal(e.to_string()))?;
            ctx.bookmarks = self.config.bookmarks.clone();
            self.needs_image = fresh && durability.captures_changes();
            let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
            self.log = Some(durability.attach(self.class.name, self.id, &path, self.seq));
            self.ctx = Some(ctx);
        }
        if self.instance.is_none() {
            let capture = self.begin()?;
            let ctx = self.ctx.as_mut().expect("opened above");
            let before = write_marker(&ctx.conn);
            let activate = self.class.activate;
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| activate(ctx)));
            let failure = match result {
                Ok(Ok(instance)) => match self.commit(before, capture, &[]).await {
                    Ok(()) => {
                        self.instance = Some(instance);
                        return Ok(());
                    }
                    Err(e) => internal(format!("committing activation: {e}")),
                },
                Ok(Err(e)) => Response::Error(WireError::ObjectReset {
                    message: format!("activation failed: {}", e.0),
                }),
                Err(panic) => Response::Error(WireError::ObjectReset {
                    message: format!("activation panicked: {}", panic_message(&panic)),
                }),
            };
            let _ = self.ctx.as_ref().expect("opened").conn.run("ROLLBACK");
            return Err(failure);
        }
        Ok(())
    }

    /// Start a batch: begin capturing changes (if the log wants them) and the transaction.
    fn begin(&mut self) -> Result<Option<store::ChangeCapture>, Response> {
        let ctx = self.ctx.as_ref().expect("opened");
        let wants = self.log.as_ref().expect("attached").captures_changes();
        let capture = if wants {
            Some(store::ChangeCapture::start(&ctx.conn).map_err(internal)?)
        } else {
            None
        };
        ctx.conn
            .run("BEGIN IMMEDIATE")
            .map_err(|e| internal(e.to_string()))?;
        Ok(capture)
    }

    /// Commit the open transaction. If it wrote anything, number the batch and store
    /// the number in the same transaction. With a log that captures changes, the batch's
    /// changeset (or the whole database, when the schema changed or the object is new to
    /// the log) is made durable in the log *before* the SQLite commit, so the object's
    /// file never holds a change the log lacks. Otherwise the commit comes first and the
    /// replies wait for the object's own sync (see [`Object::release`]).
    async fn commit(
        &mut self,
        before: (u64, i64),
        capture: Option<store::ChangeCapture>,
        recorded: &[([u8; 16], Recorded)],
    ) -> Result<(), String> {
        let ctx = self.ctx.as_mut().expect("opened");
        let after = write_marker(&ctx.conn);
        if after == before && !self.needs_image {
            drop(capture);
            return ctx.conn.run("COMMIT").map_err(|e| e.to_string());
        }
        let seq = self.seq + 1;
        store::set_stored_seq(&ctx.conn, seq).map_err(|e| e.to_string())?;
        let log = self.log.as_ref().expect("attached");
        if !log.captures_changes() {
            drop(capture);
            ctx.conn.run("COMMIT").map_err(|e| e.to_string())?;
            self.seq = seq;
            log.submit(seq, None);
            return Ok(());
        }
        let now = crate::log::unix_ms();
        let snapshot_due = self.config.snapshot_every.is_some_and(|every| {
            now.saturating_sub(self.last_image_ms) >= every.as_millis() as u64
        });
        let change = match &capture {
            Some(c) if !self.needs_image && !snapshot_due && after.1 == before.1 => {
                Change::Changeset(store::encode_changes(&c.changeset()?, recorded))
            }
            _ => {
                store::set_image_time(&ctx.conn, now).map_err(|e| e.to_string())?;
                self.last_image_ms = now;
                let data = ctx
                    .conn
                    .serialize("main")
                    .map_err(|e| format!("serializing the database: {e}"))?;
                Change::Image(data.to_vec())
            }
        };
        drop(capture);
        let mut watch = log.watch();
        log.submit(seq, Some(change));
        let pos = watch
            .wait_for(|p| p.failed || p.durable >= seq)
            .await
            .map(|p| *p)
            .unwrap_or(DurablePos {
                durable: 0,
                failed: true,
            });
        if pos.failed {
            return Err("the host log could not make the batch durable".into());
        }
        // The batch is durable in the log: from here on it is committed, whatever happens
        // to this SQLite commit (recovery replays it from the log).
        self.seq = seq;
        self.needs_image = false;
        ctx.conn.run("COMMIT").map_err(|e| {
            tracing::error!(class = self.class.name, id = %self.id, error = %e, "SQLite commit failed after the log write; replayed on restart");
            e.to_string()
        })
    }

    async fn run_batch(&mut self, batch: Vec<Call>) -> Vec<Reply> {
        let name = batch[0].request.name.clone();
        if let Err(response) = self.ensure_active(name.as_deref()).await {
            return batch
                .into_iter()
                .map(|c| (c.reply, response.clone()))
                .collect();
        }
        let capture = match self.begin() {
            Ok(c) => c,
            Err(response) => {
                return batch
                    .into_iter()
                    .map(|c| (c.reply, response.clone()))
                    .collect()
            }
        };
        let before = write_marker(&self.ctx.as_ref().expect("active").conn);
        let mut replies = Vec::with_capacity(batch.len());
        let mut recorded = Vec::new();
        let mut calls = batch.into_iter();
        let mut failure: Option<String> = None;
        while let Some(call) = calls.next() {
            let instance = self.instance.as_mut().expect("active");
            let ctx = self.ctx.as_mut().expect("active");
            match run_call(
                instance.as_mut(),
                ctx,
                &call,
                self.config.request_window,
                &mut recorded,
            )
            .await
            {
                Ok(CallResult::Reply(response)) => replies.push((call.reply, response)),
                Ok(CallResult::Panicked(message)) => {
                    replies.push((
                        call.reply,
                        Response::Error(WireError::ObjectReset { message }),
                    ));
                    // The instance may be half-changed: drop it. The calls behind this one
                    // go back to the front of the queue and meet a fresh activation.
                    self.instance = None;
                    let mut queue = self.slot.queue.borrow_mut();
                    for c in calls.by_ref().rev() {
                        queue.push_front(c);
                    }
                    break;
                }
                Err(e) => {
                    replies.push((call.reply, internal(e.clone())));
                    failure = Some(e);
                    break;
                }
            }
        }
        if failure.is_none() {
            if let Err(e) = self.commit(before, capture, &recorded).await {
                failure = Some(format!("commit failed: {e}"));
            }
        }
        if let Some(message) = failure {
            // Nothing of this batch is stored: every reply becomes an error, the calls not
            // reached get it too, and the instance is rebuilt from storage next time.
            let _ = self.ctx.as_ref().expect("active").conn.run("ROLLBACK");
            self.instance = None;
            tracing::error!(class = self.class.name, id = %self.id, %message, "batch failed");
            let failed = internal(message);
            return replies
                .into_iter()
                .map(|(tx, _)| tx)
                .chain(calls.map(|c| c.reply))
                .map(|tx| (tx, failed.clone()))
                .collect();
        }
        if let Some(target) = self.ctx.as_mut().and_then(|c| c.restore.take()) {
            if let Err(e) = self.restore(target).await {
                tracing::error!(class = self.class.name, id = %self.id, error = %e, "restore failed; the object keeps its state");
            }
        }
        replies
    }

    /// Replace the object's state with its state at `target` (see [`crate::restore`]):
    /// log the rebuilt image, then install it and reset the instance.
    async fn restore(&mut self, target: crate::restore::RestoreTarget) -> Result<(), String> {
        let (image, report) = crate::restore::rebuild(
            &self.config.data_dir,
            self.class.name,
            self.id,
            target,
            self.seq,
        )?;
        let log = self.log.as_ref().expect("attached");
        if !log.captures_changes() {
            return Err("restoring needs the host log".into());
        }
        let mut watch = log.watch();
        log.submit(report.new_seq, Some(Change::Image(image.clone())));
        let durable = watch
            .wait_for(|p| p.failed || p.durable >= report.new_seq)
            .await
            .map(|p| !p.failed);
        if !matches!(durable, Ok(true)) {
            return Err("the host log could not make the restored state durable".into());
        }
        self.instance = None;
        self.ctx = None;
        self.log = None;
        let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
        store::write_image(&path, &image)
            .map_err(|e| format!("installing the restored state: {e}"))?;
        self.seq = report.new_seq;
        tracing::info!(class = self.class.name, id = %self.id, ?report, "object restored");
        Ok(())
    }

    /// Send `replies` once everything this object committed so far is durable.
    fn release(&self, replies: Vec<Reply>) {
        if replies.is_empty() {
            return;
        }
        let target = self.seq;
        let Some(log) = self.log.as_ref() else {
            // Never opened: nothing to wait for (the replies are errors).
            replies.into_iter().for_each(|(tx, r)| drop(tx.send(r)));
            return;
        };
        let mut watch = log.watch();
        let ready = move |p: &DurablePos| p.failed || p.durable >= target;
        if ready(&watch.borrow()) {
            send_all(replies, *watch.borrow());
            return;
        }
        tokio::task::spawn_local(async move {
            let pos = match watch.wait_for(ready).await {
                Ok(p) => *p,
                Err(_) => DurablePos {
                    durable: 0,
                    failed: true,
                },
            };
            send_all(replies, pos);
        });
    }
}

fn send_all(replies: Vec<Reply>, pos: DurablePos) {
    for (tx, response) in replies {
        let response = if pos.failed {
            internal("the write could not be made durable (fsync failed)")
        } else {
            response
        };
        let _ = tx.send(response);
    }
}

/// Statements the runtime runs on every batch, prepared once per connection.
trait Run {
    fn run(&self, sql: &str) -> rusqlite::Result<()>;
}

impl Run for rusqlite::Connection {
    fn run(&self, sql: &str) -> rusqlite::Result<()> {
        self.prepare_cached(sql)?.execute([]).map(drop)
    }
}

/// Something that changes whenever a transaction writes rows or the schema.
fn write_marker(conn: &rusqlite::Connection) -> (u64, i64) {
    let schema: i64 = conn
        .prepare_cached("PRAGMA schema_version")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .unwrap_or(-1);
    (conn.total_changes(), schema)
}

enum CallResult {
    Reply(Response),
    Panicked(String),
}

/// Run one call inside its own savepoint. `Err` means the batch machinery failed.
async fn run_call(
    instance: &mut dyn Instance,
    ctx: &mut Context,
    call: &Call,
    window: usize,
    recorded: &mut Vec<([u8; 16], Recorded)>,
) -> Result<CallResult, String> {
    let request = &call.request;
    if Instant::now() > call.deadline {
        return Ok(CallResult::Reply(Response::Error(WireError::Timeout)));
    }
    let db = |e: rusqlite::Error| e.to_string();
    if let Some(recorded) = store::lookup_request(&ctx.conn, &request.request_id).map_err(db)? {
        return Ok(CallResult::Reply(match recorded {
            Recorded::Return(b) => Response::Return(b),
            Recorded::AppError(b) => Response::AppError(b),
        }));
    }
    ctx.conn.run("SAVEPOINT durable_call").map_err(db)?;
    let before = ctx.conn.total_changes();
    let turn = instance.dispatch(ctx, call.method, &request.args);
    let outcome = AssertUnwindSafe(turn).catch_unwind().await;
    let rollback = |ctx: &Context| {
        ctx.conn
            .run("ROLLBACK TO durable_call")
            .and_then(|_| ctx.conn.run("RELEASE durable_call"))
            .map_err(db)
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(panic) => {
            rollback(ctx)?;
            let message = format!(
                "{}.{} panicked: {}",
                call.class.name,
                request.method,
                panic_message(&panic)
            );
            tracing::warn!(id = %request.object, "{message}; object reset");
            return Ok(CallResult::Panicked(message));
        }
    };
    let wrote = ctx.conn.total_changes() != before;
    let response = match outcome {
        TurnOutcome::Return(bytes) => {
            if wrote {
                let outcome = Recorded::Return(bytes.clone());
                store::record_request(&ctx.conn, &request.request_id, &outcome, window)
                    .map_err(db)?;
                recorded.push((request.request_id, outcome));
            }
            ctx.conn.run("RELEASE durable_call").map_err(db)?;
            return Ok(CallResult::Reply(Response::Return(bytes)));
        }
        TurnOutcome::AppError(bytes) => {
            rollback(ctx)?;
            if wrote {
                let outcome = Recorded::AppError(bytes.clone());
                store::record_request(&ctx.conn, &request.request_id, &outcome, window)
                    .map_err(db)?;
                recorded.push((request.request_id, outcome));
            }
            Response::AppError(bytes)
        }
        TurnOutcome::BadArguments(message) => {
            rollback(ctx)?;
            Response::Error(WireError::BadArguments { message })
        }
        TurnOutcome::EncodeFailed(message) => {
            rollback(ctx)?;
            internal(format!("encoding the result: {message}"))
        }
        TurnOutcome::UnknownMethod => {
            rollback(ctx)?;
            Response::Error(WireError::UnknownMethod {
                class: call.class.name.into(),
                method: request.method.clone(),
            })
        }
    };
    Ok(CallResult::Reply(response))
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".into()
    }
}
