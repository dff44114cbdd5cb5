//! Running a batch's turns: each call in its own savepoint, read-only batches, the
//! turn driver (a turn that calls another object flushes its batch so far first),
//! and what a call's caller hears.

use super::alarm_turns::run_due_alarms;
use super::file_txn::{write_marker, BATCH_SAVEPOINT};
use super::object::{settled_pos, Object, Pending, BATCH_SLICE};
use super::outcomes::{
    durable_before_failure, internal, CallResult, CommitError, Fate, FileCommit, Reply, ReplyTo,
    SocketOutput, StreamOutput,
};
use super::slot::Work;
use crate::chain::CallChain;
use crate::class::{Instance, TurnOutcome};
use crate::context::Context;
use crate::core::outbox::{Effects, Outbox, TurnEnd};
use crate::db::Statements;
use crate::shard_config::{panic_message, Call};
use crate::store::{self, Recorded};
use durable_client::wire::{Response, WireError};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

impl Object {
    /// What the next turn needs to call other objects (`None` when the host has no
    /// call entry, as in a bare shard).
    pub(super) fn turn_info(
        &mut self,
        chain: Option<Arc<CallChain>>,
        deadline_ms: Option<u64>,
        request_id: Option<[u8; 16]>,
        span: u64,
    ) -> Option<crate::outgoing::TurnInfo> {
        self.turns += 1;
        let local = self.config.local.get()?.clone();
        Some(crate::outgoing::TurnInfo {
            local,
            chain,
            deadline_ms,
            request_id,
            span,
            turn: self.turns,
            flush: self.flush_tx.clone(),
            clock: self.config.clock.clone(),
            sent: Default::default(),
        })
    }

    /// Run a turn to its end, and meanwhile answer its requests to make the object's
    /// writes so far durable before it calls another object.
    pub(super) async fn drive<F: std::future::Future>(
        &mut self,
        conn: &crate::db::Db,
        bs: &mut Pending,
        savepoint: &str,
        turn: F,
    ) -> F::Output {
        let mut requests = self.flush_rx.take().expect("one turn at a time");
        let mut turn = std::pin::pin!(turn);
        let output = loop {
            tokio::select! {
                biased;
                output = &mut turn => break output,
                Some((n, answer)) = requests.recv() => {
                    let result = if n != self.turns {
                        Err("the stub was made by an earlier turn".to_string())
                    } else {
                        self.flush_turn(conn, bs, savepoint).await
                    };
                    let _ = answer.send(result);
                }
            }
        };
        self.flush_rx = Some(requests);
        output
    }

    /// The output gate for an outgoing call: commit the batch so far (the turns
    /// before this one and this turn's writes until now) as a batch of its own, wait
    /// until everything the object committed is durable, commit the file (so that a
    /// read-only call along the chain, which runs beside this waiting turn, sees those
    /// writes), and start the rest of the batch in fresh savepoints (the turn's own
    /// named `savepoint`). A failure breaks the batch: it fails as a whole once the
    /// turn ends.
    pub(super) async fn flush_turn(
        &mut self,
        conn: &crate::db::Db,
        bs: &mut Pending,
        savepoint: &str,
    ) -> Result<(), String> {
        if let Some(broken) = &bs.broken {
            return Err(broken.to_string());
        }
        bs.flush_tries += 1;
        let result = self.flush_turn_inner(conn, bs).await;
        if let Err(e) = &result {
            bs.broken.get_or_insert_with(|| e.clone());
        }
        if let Err(CommitError::NotApplied(e)) = &result {
            // Failed before the batch's savepoint was released: the turn goes on in
            // the savepoints it had (the broken batch rolls back to them at its end).
            // Opening new ones on top would leave the outer batch savepoint, with the
            // failed writes in it, to a later commit.
            return Err(e.clone());
        }
        // Otherwise the batch so far ended: the turn goes on inside new savepoints (its
        // end rolls back to them).
        let restarted = self
            .begin_savepoints(conn, savepoint)
            .and_then(|()| self.start_capture(conn));
        match restarted {
            Ok(capture) => bs.capture = capture,
            Err(e) => {
                bs.broken
                    .get_or_insert(CommitError::Indeterminate(e.clone()));
                return Err(e);
            }
        }
        bs.before = write_marker(conn);
        if bs.undo.is_some() {
            bs.undo = self.undo_schema(bs);
        }
        if result.is_ok() {
            bs.flushes += 1;
        }
        result.map_err(|e| e.to_string())
    }

    pub(super) async fn flush_turn_inner(
        &mut self,
        conn: &crate::db::Db,
        bs: &mut Pending,
    ) -> Result<(), CommitError> {
        let wrote = write_marker(conn) != bs.before || self.needs_image;
        let due = if wrote {
            self.index_alarms_before(true, &Effects::default())
                .map_err(CommitError::NotApplied)?
        } else {
            None
        };
        // Ends the batch's savepoint (and the turn's inside it); ships what it wrote.
        self.commit(
            bs.before,
            bs.capture.take(),
            std::mem::take(&mut bs.recorded),
        )
        .await?;
        if let Some(due) = due {
            self.index_alarms_after(due);
        }
        let target = self.seq;
        if let Some(log) = self.log.as_ref() {
            if target > self.slot.core.borrow().durable() {
                let pos = settled_pos(log.watch(), &self.slot, target).await;
                if pos.failed || pos.durable < target {
                    return Err(CommitError::Indeterminate(
                        "the object's writes could not be made durable before its call to another object".into(),
                    ));
                }
            }
        }
        if self.commit_deferred(true).await != FileCommit::Done {
            return Err(CommitError::Indeterminate(
                "the object's file could not commit its durable writes before its call to another object".into(),
            ));
        }
        Ok(())
    }

    /// Run one batch: returns the replies it decided (to be released once the batch
    /// is durable) and the work it did not reach (after a panic), to run next.
    pub(super) async fn run_batch(&mut self, batch: Vec<Work>) -> (Vec<Reply>, Vec<Work>) {
        let name = batch.iter().find_map(|w| match w {
            Work::Call(c) => c.request.name.clone(),
            Work::Alarm => None,
        });
        let has_alarm_wake = batch.iter().any(|w| matches!(w, Work::Alarm));
        let fail_all = |batch: Vec<Work>, response: Response| -> Vec<Reply> {
            batch
                .into_iter()
                .filter_map(|w| match w {
                    Work::Call(c) => Some((c.reply.into(), response.clone(), Fate::WithBatch)),
                    Work::Alarm => None,
                })
                .collect()
        };
        if self.ctx.is_none() {
            if let Err(response) = self.check_file().await {
                if has_alarm_wake {
                    self.retry_alarms_later();
                }
                return (fail_all(batch, response), Vec::new());
            }
            if self
                .config
                .behind
                .borrow()
                .contains(&(self.class.name, self.id))
            {
                self.poisoned = true;
            }
        }
        if self.poisoned {
            self.heal(name.as_deref()).await;
        }
        if let Err(response) = self.ensure_open(name.as_deref()) {
            if has_alarm_wake {
                self.retry_alarms_later();
            }
            return (fail_all(batch, response), Vec::new());
        }
        let reads_only = batch
            .iter()
            .all(|w| matches!(w, Work::Call(c) if c.class.is_read(c.method)));
        if reads_only && !self.poisoned && self.instance.is_none() {
            self.activate_to_read();
        }
        if reads_only && !self.poisoned && self.instance.is_some() {
            return self.run_reads(batch).await;
        }
        let capture = match self.begin() {
            Ok(c) => c,
            Err(response) => return (fail_all(batch, response), Vec::new()),
        };
        let mut bs = Pending {
            capture,
            before: self.batch_marker(),
            recorded: Vec::with_capacity(batch.len()),
            broken: None,
            flushes: 0,
            fresh: true,
            undo: None,
            flush_tries: 0,
            now_ms: self.config.clock.now_ms(),
            turn_ended: crate::clock::monotonic(),
        };
        // Each reply with what becomes of it if the batch fails.
        let mut outbox: Outbox<((crate::answering::Answer, Response), Fate)> =
            Outbox::with_capacity(batch.len());
        // Socket and stream effects of turns made durable at a later turn's call to
        // another object (see `Fate::Durable`).
        let mut durable_sockets = Vec::new();
        let mut durable_streams = Vec::new();
        // A batch that activates the object gives each call a savepoint (the
        // activation's writes are in the batch's).
        let was_active = self.instance.is_some();
        if self.instance.is_none() {
            let activated = self.activate();
            // An object new to the log counts as written even if its constructor wrote
            // nothing (its file came with its class's migrations applied ahead, or its
            // class has none): its state so far goes to the log on its own.
            let wrote = write_marker(self.db()) != bs.before || self.seq == 0;
            match activated {
                // The constructor of an object new to the log wrote (its tables): that
                // state goes to the log as the object's first image, on its own, so
                // the change feed shows the batch's calls as row changes after it.
                Ok(effects) if wrote && self.needs_image => {
                    let committed = match self.index_alarms_before(false, &effects) {
                        Ok(due) => self
                            .commit(bs.before, bs.capture.take(), Vec::new())
                            .await
                            .map(|()| due)
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e),
                    };
                    let started = match committed {
                        Ok(due) => {
                            if let Some(due) = due {
                                self.index_alarms_after(due);
                            }
                            if self.instance.is_none() {
                                // The activation is durable, but the file's commit
                                // failed and stopped the object (it heals from the log):
                                // none of the calls ran.
                                Err(internal(
                                    "the object's file could not commit its activation; the calls did not run",
                                ))
                            } else {
                                self.begin()
                            }
                        }
                        // No call of the batch has run yet: whatever became of the
                        // activation's own writes, the calls were not applied.
                        Err(e) => Err(internal(format!("committing activation: {e}"))),
                    };
                    match started {
                        Ok(c) => {
                            bs.capture = c;
                            bs.before = write_marker(self.db());
                        }
                        Err(response) => {
                            self.instance = None;
                            self.rollback_batch();
                            if has_alarm_wake {
                                self.retry_alarms_later();
                            }
                            return (fail_all(batch, response), Vec::new());
                        }
                    }
                }
                Ok(effects) => {
                    bs.fresh = false;
                    outbox.finish_turn(TurnEnd::Ok, effects, None)
                }
                Err(response) => {
                    drop(bs.capture.take());
                    self.rollback_batch();
                    if has_alarm_wake {
                        self.retry_alarms_later();
                    }
                    return (fail_all(batch, response), Vec::new());
                }
            }
            // The activation took time (its image may have waited for the log): the
            // calls' deadlines are checked against the clock after it.
            bs.now_ms = self.config.clock.now_ms();
            bs.turn_ended = crate::clock::monotonic();
        }
        if was_active {
            bs.undo = self.undo_schema(&bs);
        }
        let mut work = batch.into_iter();
        let mut failure: Option<CommitError> = None;
        let mut alarms_ran = false;
        let mut requeue = Vec::new();
        // Stream deletions of turns that called out and kept their effects: they may
        // be durable even if the batch fails (see below).
        let mut maybe_durable: Vec<crate::streams::StreamOp> = Vec::new();
        let mut items = 0usize;
        // A long batch lets the shard's other tasks in between its turns: reads of this
        // object (they run beside the batch, on the committed state), other objects'
        // calls and replies need not wait for the whole batch. Its transaction simply
        // stays open meanwhile. (Yielding only while the object is being read left
        // read_under_write at 2x idle instead of 1.3x, for no measurable gain.)
        let mut ran_since = bs.turn_ended;
        while let Some(item) = work.next() {
            items += 1;
            if bs.turn_ended.saturating_sub(ran_since) >= BATCH_SLICE {
                tokio::task::yield_now().await;
                ran_since = crate::clock::monotonic();
                bs.turn_ended = ran_since;
                bs.now_ms = self.config.clock.now_ms();
            }
            // Out of `self` while the turn runs, so that the turn can wait on another
            // object while the batch so far commits (`flush_turn`).
            let flushes = bs.flushes;
            let flush_tries = bs.flush_tries;
            let tables_created = crate::tables::created();
            let mut instance = self.instance.take().expect("active");
            let mut ctx = self.ctx.take().expect("active");
            ctx.effects = Effects::default();
            let (reply, result) = match item {
                Work::Call(call) => {
                    let result = run_call(self, instance.as_mut(), &mut ctx, &call, &mut bs).await;
                    (Some(call.reply), result)
                }
                Work::Alarm => {
                    alarms_ran = true;
                    let result = run_due_alarms(self, instance.as_mut(), &mut ctx, &mut bs).await;
                    bs.turn_ended = crate::clock::monotonic();
                    (None, result)
                }
            };
            let effects = std::mem::take(&mut ctx.effects);
            // The turn called another object and the batch so far became durable (or
            // may have): what it did to streams before that call may be durable
            // whatever becomes of the turn or of the rest of the batch. (What it did
            // after the call is among it too: which is which is not known here.) The
            // followers of the streams it deleted end in any case, never to take a new
            // stream of the name for theirs; those of the streams it appended to or
            // ended read them again from the object (see below).
            let flushed_streams: Vec<crate::streams::StreamOp> = if bs.flush_tries != flush_tries
                && (bs.flushes != flushes
                    || matches!(bs.broken, Some(CommitError::Indeterminate(_))))
            {
                crate::streams::maybe_durable(&effects.streams)
            } else {
                Vec::new()
            };
            self.ctx = Some(ctx);
            self.instance = Some(instance);
            // A turn (a call's or an alarm's) that created one of the runtime's tables
            // changed the schema: a later call's undo could not tell that change from
            // its own, so the rest of the batch gets savepoints. (The count is the
            // thread's: another object's turn during this one's waits counts too, which
            // only costs savepoints.)
            if crate::tables::created() != tables_created {
                bs.undo = None;
            }
            // The turn called another object and the batch so far became durable: the
            // replies decided so far, and this turn's, are of calls applied (this one
            // in part) whatever becomes of the rest of the batch.
            let fate = if bs.flushes != flushes {
                for (_, fate) in outbox.replies.iter_mut() {
                    if *fate == Fate::WithBatch {
                        *fate = Fate::Durable;
                    }
                }
                // So are the socket messages and stream items of the turns before it:
                // they go out (in their place among the object's outputs) whatever
                // becomes of the rest of the batch.
                durable_sockets.append(&mut outbox.effects.sockets);
                durable_streams.append(&mut outbox.effects.streams);
                Fate::Durable
            } else {
                Fate::WithBatch
            };
            let result = match bs.broken.clone() {
                // The batch so far could not be made durable when the turn called out:
                // the batch fails as a whole.
                Some(broken) => Err(broken),
                None => result.map_err(CommitError::NotApplied),
            };
            if !flushed_streams.is_empty() {
                let kept = match &result {
                    Ok(CallResult::Reply(response)) => {
                        matches!(response, Response::Return(_) | Response::Welcome)
                    }
                    Ok(CallResult::Recorded(_)) => true,
                    Ok(CallResult::Panicked(_)) => reply.is_none(),
                    Err(_) => false,
                };
                if kept {
                    // In the batch's effects, in their place: released with them, or
                    // on their own if the batch fails.
                    maybe_durable.extend(flushed_streams);
                } else {
                    // The turn's effects are dropped: released with those made durable
                    // so far, before any later turn's (a new stream of the name, say).
                    add_maybe_durable(&mut durable_streams, flushed_streams);
                }
            }
            match result {
                Ok(CallResult::Reply(response)) => {
                    let end = match response {
                        Response::Return(_) | Response::Welcome => TurnEnd::Ok,
                        _ => TurnEnd::Err,
                    };
                    outbox.finish_turn(end, effects, reply.map(|tx| ((tx, response), fate)));
                }
                Ok(CallResult::Recorded(response)) => {
                    outbox.finish_turn(
                        TurnEnd::Ok,
                        effects,
                        reply.map(|tx| ((tx, response), Fate::Recorded)),
                    );
                }
                Ok(CallResult::Panicked(message)) => {
                    let response = Response::Error(WireError::ObjectReset { message });
                    // An alarm wake leaves only its successful handlers' effects.
                    let end = match reply {
                        Some(_) => TurnEnd::Panicked,
                        None => TurnEnd::Ok,
                    };
                    outbox.finish_turn(end, effects, reply.map(|tx| ((tx, response), fate)));
                    // The instance may be half-changed: drop it. The work behind this
                    // goes back to the front of the queue and meets a fresh activation.
                    self.instance = None;
                    requeue.extend(work.by_ref());
                    break;
                }
                Err(e) => {
                    let response = e.response();
                    // (A turn that made part of its writes durable and then broke the
                    // batch is `Fate::Durable`: the failure below answers it so.)
                    outbox.finish_turn(
                        TurnEnd::Err,
                        effects,
                        reply.map(|tx| ((tx, response), fate)),
                    );
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut new_due = None;
        if failure.is_none() {
            match self.index_alarms_before(alarms_ran, &outbox.effects) {
                Ok(due) => new_due = due,
                Err(e) => failure = Some(CommitError::NotApplied(e)),
            }
        }
        crate::telemetry::batch(items);
        if failure.is_none() {
            if let Err(e) = self
                .commit(
                    bs.before,
                    bs.capture.take(),
                    std::mem::take(&mut bs.recorded),
                )
                .await
            {
                failure = Some(e);
            }
        }
        if let Some(failure) = failure {
            // Nothing of this batch is stored (or, if indeterminate, it may be replayed
            // on restart): every reply becomes the batch's error, the calls not reached
            // get it too, and the instance is rebuilt from storage next time. A recorded
            // answer (a retry of a call an earlier batch applied) stays: it is true.
            if self.txn_open {
                self.rollback_batch();
            }
            self.instance = None;
            tracing::error!(class = self.class.name, id = %self.id, %failure, "batch failed");
            if has_alarm_wake {
                self.retry_alarms_later();
            }
            let failed = failure.response();
            // A batch that may be durable (a commit in the middle of a turn whose sync
            // failed) may have deleted, appended to or ended streams: the followers of
            // a deleted one end (needlessly if the deletion did not survive; never
            // mixing two streams of a name), the others read again what stands. So
            // may the turns that called out (see `maybe_durable`).
            add_maybe_durable(&mut durable_streams, maybe_durable);
            if let CommitError::Indeterminate(_) = failure {
                add_maybe_durable(
                    &mut durable_streams,
                    crate::streams::maybe_durable(&outbox.effects.streams),
                );
            }
            let outputs = self.outputs(durable_sockets, durable_streams, Fate::Durable);
            let replies = outputs
                .into_iter()
                .chain(outbox.fail().into_iter().map(|((tx, response), fate)| {
                    let response = match fate {
                        Fate::WithBatch => failed.clone(),
                        Fate::Recorded => response,
                        Fate::Durable => durable_before_failure(),
                    };
                    (tx.into(), response, fate)
                }))
                .chain(work.chain(requeue).filter_map(|w| match w {
                    Work::Call(c) => Some((c.reply.into(), failed.clone(), Fate::WithBatch)),
                    Work::Alarm => None,
                }))
                .collect();
            return (replies, Vec::new());
        }
        if let Some(due) = new_due {
            self.index_alarms_after(due);
        }
        let Outbox {
            mut effects,
            replies,
        } = outbox;
        let mut replies: Vec<Reply> = replies
            .into_iter()
            .map(|((tx, response), fate)| (tx.into(), response, fate))
            .collect();
        // Those made durable mid-batch first, each kind in order, sockets then streams,
        // all before the replies: a caller (the gateway awaiting a socket's connect
        // turn) must find the tags and attachment that turn set once it has its reply,
        // and a follower whose read is answered in this batch must find a deletion the
        // batch made already marked on it (else it could take a new stream of the name
        // for its own).
        let mut outputs = self.outputs(durable_sockets, durable_streams, Fate::Durable);
        outputs.extend(self.outputs(
            std::mem::take(&mut effects.sockets),
            std::mem::take(&mut effects.streams),
            Fate::WithBatch,
        ));
        // Should the log refuse the batch, what its turns made durable at their calls
        // to other objects still goes to the followers.
        if !maybe_durable.is_empty() {
            for (to, _, fate) in outputs.iter_mut() {
                if let (ReplyTo::Streams(out), Fate::WithBatch) = (to, *fate) {
                    out.if_failed = std::mem::take(&mut maybe_durable);
                }
            }
        }
        if !outputs.is_empty() {
            let (mut first, streams): (Vec<Reply>, Vec<Reply>) = outputs
                .into_iter()
                .partition(|(to, _, _)| matches!(to, ReplyTo::Sockets(_)));
            first.extend(streams);
            replies.splice(0..0, first);
        }
        if effects.reset_instance {
            self.instance = None;
        }
        if let Some(target) = effects.restore {
            // The restore replaces the file: everything deferred goes in first.
            if self.commit_deferred(true).await != FileCommit::Done || self.txn_open {
                tracing::error!(class = self.class.name, id = %self.id, "restore skipped: the object's earlier writes could not be stored");
            } else if let Err(e) = self.restore(target).await {
                tracing::error!(class = self.class.name, id = %self.id, error = %e, "restore failed; the object keeps its state");
            }
        }
        (replies, requeue)
    }

    /// A batch's socket messages and stream items as outputs of the output gate
    /// (sockets first), each released with `fate`.
    fn outputs(
        &self,
        sockets: Vec<crate::sockets::SocketOp>,
        streams: Vec<crate::streams::StreamOp>,
        fate: Fate,
    ) -> Vec<Reply> {
        let mut outputs = Vec::new();
        if let (false, Some(registry)) = (sockets.is_empty(), &self.config.sockets) {
            let out = SocketOutput {
                registry: registry.clone(),
                class: self.class.name,
                id: self.id,
                ops: sockets,
            };
            outputs.push((ReplyTo::Sockets(out), Response::Return(Vec::new()), fate));
        }
        if let (false, Some(hub)) = (streams.is_empty(), &self.config.streams) {
            let out = StreamOutput {
                hub: hub.clone(),
                class: self.class.name,
                id: self.id,
                ops: streams,
                if_failed: Vec::new(),
            };
            outputs.push((ReplyTo::Streams(out), Response::Return(Vec::new()), fate));
        }
        outputs
    }

    /// A batch of read-only calls on an active object: each turn runs as it is, with
    /// none of a writing batch's machinery (no transaction of its own to begin and
    /// commit, no change capture, no savepoints, no request ids): SQLite refuses
    /// writes while a read-only method runs, so there is nothing to undo, record or
    /// log. The replies go through the output gate like any batch's: they show the
    /// state the object's earlier batches left, and leave once those are durable.
    /// A panic resets the instance, as in a writing batch, and the calls after it run
    /// again on a fresh activation.
    pub(super) async fn run_reads(&mut self, batch: Vec<Work>) -> (Vec<Reply>, Vec<Work>) {
        let mut replies: Vec<Reply> = Vec::with_capacity(batch.len());
        let mut work = batch.into_iter();
        let mut requeue = Vec::new();
        let mut items = 0usize;
        while let Some(item) = work.next() {
            let Work::Call(call) = item else {
                unreachable!("run_reads takes read-only calls only")
            };
            items += 1;
            let response = if self.config.clock.now_ms() > call.deadline_ms {
                Response::Error(WireError::Timeout)
            } else {
                let instance = self.instance.as_mut().expect("active");
                let ctx = self.ctx.as_mut().expect("active");
                ctx.effects = Effects::default();
                ctx.turn = None;
                let started = crate::clock::monotonic();
                let outcome =
                    AssertUnwindSafe(instance.dispatch(ctx, call.method, &call.request.args))
                        .catch_unwind()
                        .await;
                crate::telemetry::turn(
                    call.class.name,
                    crate::clock::monotonic().saturating_sub(started),
                );
                match outcome {
                    Ok(outcome) => turn_response(outcome, &call),
                    Err(panic) => {
                        let message = call_panicked(&call, &panic);
                        replies.push((
                            call.reply.into(),
                            Response::Error(WireError::ObjectReset { message }),
                            Fate::WithBatch,
                        ));
                        // The instance may be half-changed: drop it. The calls behind
                        // this one meet a fresh activation.
                        self.instance = None;
                        requeue.extend(work.by_ref());
                        break;
                    }
                }
            };
            replies.push((call.reply.into(), response, Fate::WithBatch));
        }
        crate::telemetry::batch(items);
        (replies, requeue)
    }
}

/// Run one call inside its own savepoint. `Err` means the batch machinery failed.
pub(super) async fn run_call(
    obj: &mut Object,
    instance: &mut dyn Instance,
    ctx: &mut Context,
    call: &Call,
    bs: &mut Pending,
) -> Result<CallResult, String> {
    let request = &call.request;
    let db = |e: rusqlite::Error| e.to_string();
    let digest = store::call_digest(&request.method, &request.args);
    // A read-only method writes nothing, so nothing is recorded under its id: it just
    // runs (looking its id up cost a read on an idle object a sixth of its shard time).
    let recorded = if call.class.is_read(call.method)
        || obj
            .unseen_request(&ctx.conn, &request.request_id)
            .map_err(db)?
    {
        None
    } else {
        // This batch's records, then the deferred batches' (see `super::unfiled`), then
        // the file's.
        let id = &request.request_id;
        match bs.recorded.iter().find(|(r, _, _)| r == id) {
            Some((_, digest, outcome)) => Some((*digest, outcome.clone())),
            None => match obj.unfiled.get(id) {
                Some(found) => Some(found),
                // Above every id recorded and not held: never recorded.
                None if obj.unfiled.above_floor(&*ctx.conn, id).map_err(db)? => None,
                None if !obj.unfiled.in_file(&*ctx.conn, id).map_err(db)? => None,
                None => store::lookup_request(&*ctx.conn, id).map_err(db)?,
            },
        }
    };
    if let Some((first, recorded)) = recorded {
        // No turn ran, but the batch's slice counts the lookup.
        bs.turn_ended = crate::clock::monotonic();
        if first != 0 && first != digest {
            // Not the call that used this id first: answering with that call's
            // result would tell this caller its own call happened.
            return Ok(CallResult::Reply(Response::Error(WireError::RequestReused)));
        }
        return Ok(CallResult::Recorded(match recorded {
            Recorded::Return(b) => Response::Return(b),
            Recorded::AppError(b) => Response::AppError(b),
        }));
    }
    // Past its deadline before its turn: not applied. Checked after the request id's
    // record: a resend of a call applied earlier gets that answer, never "not applied".
    if bs.now_ms > call.deadline_ms {
        return Ok(CallResult::Reply(Response::Error(WireError::Timeout)));
    }
    // The call's writes go in a savepoint of their own, so that its failure undoes
    // only them; the first call of a batch uses the batch's (nothing else is in it yet).
    // Where the batch's change capture can undo a call exactly (`Pending::undo`), the
    // later calls too run in the batch's savepoint, and only a failure pays.
    let fresh = std::mem::replace(&mut bs.fresh, false);
    let undo = match (&bs.capture, bs.undo) {
        (Some(capture), Some(schema)) if !fresh => Some((capture.mark(), bs.flush_tries, schema)),
        _ => None,
    };
    // Where the capture stood as the call began: a call whose writes only the capture
    // saw (a blob written in place) wrote too. (A commit in the middle of the call
    // replaces the capture, but writes the batch number itself, which moves the count
    // of changes.)
    let (start_mark, start_tries) = (bs.capture.as_ref().map(|c| c.mark()), bs.flush_tries);
    let own = !fresh && undo.is_none();
    let savepoint = if own {
        ctx.conn.run("SAVEPOINT durable_call").map_err(db)?;
        "durable_call"
    } else {
        BATCH_SAVEPOINT
    };
    let before = ctx.conn.total_changes();
    // One span per call (at debug level: free unless asked for with
    // RUST_LOG=durable_runtime=debug); what the method logs is inside it.
    let span = tracing::debug_span!(
        "call",
        class = call.class.name,
        id = %request.object,
        method = %request.method,
        request_id = %durable_client::ObjectId::from_bytes(request.request_id),
        caller_span = call.chain.as_ref().map_or(0, |c| c.caller_span),
    );
    ctx.turn = obj.turn_info(
        call.chain.clone(),
        Some(call.deadline_ms),
        Some(request.request_id),
        span.id().map_or(0, |i| i.into_u64()),
    );
    let conn = ctx.conn.clone();
    let turn =
        tracing::Instrument::instrument(instance.dispatch(ctx, call.method, &request.args), span);
    let started = crate::clock::monotonic();
    let outcome = obj
        .drive(&conn, bs, savepoint, AssertUnwindSafe(turn).catch_unwind())
        .await;
    ctx.turn = None;
    bs.turn_ended = crate::clock::monotonic();
    crate::telemetry::turn(call.class.name, bs.turn_ended.saturating_sub(started));
    let rollback = |obj: &mut Object, ctx: &Context, bs: &mut Pending| match undo {
        // Earlier calls of the batch ran in its savepoint too (they may have changed
        // the schema alone, which the capture does not see), unless a commit in the
        // middle of this turn (a call to another object), made or failed, left it
        // alone in a fresh batch savepoint or broke the batch.
        Some((mark, tries, schema)) if tries == bs.flush_tries => {
            obj.undo_call(&ctx.conn, bs, mark, before, schema)
        }
        _ if own => ctx
            .conn
            .run("ROLLBACK TO durable_call")
            .and_then(|_| ctx.conn.run("RELEASE durable_call"))
            .map_err(db),
        // The batch's savepoint stays open (the call's record goes in it).
        _ => ctx.conn.run("ROLLBACK TO durable_batch").map_err(db),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(panic) => {
            rollback(obj, ctx, bs)?;
            return Ok(CallResult::Panicked(call_panicked(call, &panic)));
        }
    };
    // (A blob written in place moves no count of changes but the capture's, or the
    // counter of row writes where there is no capture.)
    let wrote = ctx.conn.total_changes() != before
        || (start_tries == bs.flush_tries && bs.capture.as_ref().map(|c| c.mark()) != start_mark);
    // A call that wrote records its outcome under its request id: with the batch, which
    // carries it to the log; the file's request tables get it when the file commits
    // (see `super::unfiled`).
    let record = |obj: &mut Object, bs: &mut Pending, outcome: Recorded| {
        obj.recorded_request(&request.request_id);
        bs.recorded.push((request.request_id, digest, outcome));
    };
    let response = match outcome {
        TurnOutcome::Return(bytes) => {
            if wrote {
                if let Some(size) = crate::size_check::over_size(
                    &ctx.conn,
                    obj.config.max_object_bytes,
                    &ctx.size_counted,
                )
                .map_err(db)?
                {
                    rollback(obj, ctx, bs)?;
                    return Ok(CallResult::Reply(Response::Error(
                        WireError::ObjectTooLarge {
                            size,
                            limit: obj.config.max_object_bytes,
                        },
                    )));
                }
            }
            if own {
                ctx.conn.run("RELEASE durable_call").map_err(db)?;
            }
            if wrote {
                record(obj, bs, Recorded::Return(bytes.clone()));
            }
            return Ok(CallResult::Reply(Response::Return(bytes)));
        }
        TurnOutcome::AppError(bytes) => {
            rollback(obj, ctx, bs)?;
            if wrote {
                record(obj, bs, Recorded::AppError(bytes.clone()));
            }
            Response::AppError(bytes)
        }
        failed => {
            rollback(obj, ctx, bs)?;
            turn_response(failed, call)
        }
    };
    Ok(CallResult::Reply(response))
}

/// What a call's caller hears of its turn's outcome.
pub(super) fn turn_response(outcome: TurnOutcome, call: &Call) -> Response {
    match outcome {
        TurnOutcome::Return(bytes) => Response::Return(bytes),
        TurnOutcome::AppError(bytes) => Response::AppError(bytes),
        TurnOutcome::BadArguments(message) => Response::Error(WireError::BadArguments { message }),
        TurnOutcome::EncodeFailed(message) => internal(format!("encoding the result: {message}")),
        TurnOutcome::UnknownMethod => Response::Error(WireError::UnknownMethod {
            class: call.class.name.into(),
            method: call.request.method.clone(),
        }),
    }
}

/// A call's turn panicked: say so in the log, and return what its caller is told
/// (the object is reset).
pub(super) fn call_panicked(call: &Call, panic: &Box<dyn std::any::Any + Send>) -> String {
    let message = format!(
        "{}.{} panicked: {}",
        call.class.name,
        call.request.method,
        panic_message(panic)
    );
    tracing::warn!(id = %call.request.object, "{message}; object reset");
    message
}

/// Add stream effects that may be durable (see [`crate::streams::maybe_durable`]) to
/// those released as durable: a deletion once (one already there, moved with its
/// batch's effects at a commit in the middle of a turn, is not repeated), a recheck
/// always (after what is there).
fn add_maybe_durable(
    durable: &mut Vec<crate::streams::StreamOp>,
    ops: Vec<crate::streams::StreamOp>,
) {
    for op in ops {
        let repeated =
            matches!(op, crate::streams::StreamOp::Deleted { .. }) && durable.contains(&op);
        if !repeated {
            durable.push(op);
        }
    }
}
