//! Activation and healing: checking an object's file against the catalog, opening it,
//! building the instance, rebuilding a poisoned file from the log, and the object's
//! entries in the host's alarm index.

use super::object::{settled, Object, ALARM_REOPEN_LEAD, ALARM_WARM, DIGEST_QUIET_MAX};
use super::outcomes::{indeterminate, internal, refused};
use crate::core::outbox::Effects;
use crate::db::Statements;
use crate::restore_target::RestoreTarget;
use crate::shard_config::panic_message;
use crate::store;
use durable_client::wire::{Response, WireError};
use std::panic::AssertUnwindSafe;
use std::time::Duration;

impl Object {
    /// The object stopped because batches the log holds are missing from its file (the
    /// file's commit failed and SQLite rolled the transaction back, or the object was
    /// evicted that way: a full disk). Read them back from the log and apply them in a
    /// new open transaction, as if they had been deferred: the object serves again at
    /// once, reads included, and its file commits once the disk takes it. A failed
    /// attempt waits a second before the next.
    pub(super) async fn heal(&mut self, name: Option<&str>) {
        let now = self.config.clock.now_ms();
        if now < self.heal_after || !self.config.durability.captures_changes() {
            return;
        }
        if self.open(name).is_err() {
            self.heal_after = now + 1000;
            return;
        }
        // Every batch the object numbered must be settled, and durable.
        let target = self.seq;
        let slot = self.slot.clone();
        let log = self.log.as_ref().expect("opened");
        let pos = match log
            .watch()
            .wait_for(|p| settled(p, target, slot.rewinds.get()))
            .await
        {
            Ok(p) => *p,
            Err(_) => return,
        };
        if pos.failed || (pos.rejected.is_some() && pos.epoch == self.slot.rewinds.get()) {
            return;
        }
        self.heal_after = now + 1000;
        let ctx = self.ctx.as_ref().expect("opened");
        if !ctx.conn.is_autocommit() {
            let _ = ctx.conn.run("ROLLBACK");
        }
        self.txn_open = false;
        self.unfiled.release();
        self.deferred = 0;
        let file_seq = match store::stored_seq(&*ctx.conn) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "healing: reading the file's batch number");
                return;
            }
        };
        let (data_dir, class, id) = (self.config.data_dir.clone(), self.class.name, self.id);
        let records = tokio::task::spawn_blocking(move || {
            crate::log::object_records(&data_dir, class, id, file_seq)
        })
        .await;
        let records = match records {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "healing: reading the host log");
                return;
            }
            Err(_) => return,
        };
        let healed_seq = file_seq + records.len() as u64;
        let contiguous = records
            .iter()
            .zip(file_seq + 1..)
            .all(|(r, seq)| r.seq == seq)
            && healed_seq >= target;
        if !contiguous {
            tracing::warn!(class = self.class.name, id = %self.id, file_seq, target, "healing: the log lacks some of the object's batches; the next restart replays what it has");
            return;
        }
        let ctx = self.ctx.as_ref().expect("opened");
        let window = self.config.request_window;
        self.request_max = None;
        let applied = if records.is_empty() {
            Ok(())
        } else {
            ctx.conn
                .run("BEGIN IMMEDIATE")
                .map_err(|e| e.to_string())
                .and_then(|_| {
                    records
                        .iter()
                        .try_for_each(|r| store::apply_record_in_txn(&ctx.conn, r, window))
                })
        };
        if let Err(e) = applied {
            let _ = ctx.conn.run("ROLLBACK");
            tracing::warn!(class = self.class.name, id = %self.id, error = %e, "healing: applying the log's records failed; will try again");
            return;
        }
        if !records.is_empty() {
            self.txn_open = true;
            self.needs_image = false;
        }
        if let Ok(due) = crate::alarms::earliest_due(&ctx.conn) {
            self.index_alarms_durable(due);
        }
        self.deferred = records.len();
        self.seq = healed_seq;
        let lsns: Vec<u64> = records.iter().map(|r| r.lsn).collect();
        self.log.as_ref().expect("opened").adopt(healed_seq, &lsns);
        self.instance = None;
        self.spare_capture = None;
        self.poisoned = false;
        self.heal_after = 0;
        self.config
            .behind
            .borrow_mut()
            .remove(&(self.class.name, self.id));
        tracing::warn!(class = self.class.name, id = %self.id, batches = records.len(), "rebuilt the object's missing batches from the host log; it serves again");
    }

    /// Open the database and attach the object's log if needed.
    pub(super) fn ensure_open(&mut self, name: Option<&str>) -> Result<(), Response> {
        if self.poisoned {
            // Not "not applied": this very call may be in the logged batch (a retry
            // with the same request id), and the restart's replay applies it.
            return Err(indeterminate(
                "this object's last batches are in the host log but not in its file (its commit failed: is the disk full?); it is rebuilt from the log as soon as that works, or at the next restart",
            ));
        }
        self.open(name)
    }

    /// Before the object's file is first opened: a file that is missing though the
    /// object existed (the catalog knows it), or, after an unclean stop, whose content
    /// no longer matches the digest recorded when it last stopped cleanly, is never
    /// served. It is rebuilt from the log archive (the latest retained image and the
    /// changes after it) and the damaged file is kept beside it as
    /// `<id>.db.damaged-<ms>`; if the archive cannot rebuild it, the object refuses
    /// every call until an operator restores it.
    pub(super) async fn check_file(&mut self) -> Result<(), Response> {
        let key = (self.class.name, self.id);
        if let Some(message) = &self.unservable {
            return Err(internal(message.clone()));
        }
        if self.config.verified.borrow().contains(&key) {
            return Ok(());
        }
        let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
        let catalog = self.config.catalog.clone();
        let problem = if !path.exists() {
            match catalog.knows(self.class.name, self.id) {
                Ok(true) => Some("missing"),
                Ok(false) => None,
                Err(e) => return Err(internal(format!("reading the object catalog: {e}"))),
            }
        } else if self.config.unclean_start {
            let digest = catalog
                .digest(self.class.name, self.id)
                .map_err(|e| internal(format!("reading the object catalog: {e}")))?;
            match digest {
                Some(recorded) => {
                    let p = path.clone();
                    let damaged = tokio::task::spawn_blocking(move || {
                        crate::log::recovery::damaged(&p, recorded)
                    })
                    .await
                    .unwrap_or(false);
                    damaged.then_some("damaged")
                }
                None => None,
            }
        } else {
            None
        };
        self.first_activation = true;
        let Some(problem) = problem else {
            self.config.verified.borrow_mut().insert(key);
            return Ok(());
        };
        tracing::error!(class = self.class.name, id = %self.id, problem, "the object's file is {problem}; rebuilding it from the log archive");
        if problem == "damaged" {
            crate::log::recovery::move_aside(&path, self.config.clock.now_ms());
        }
        self.log = Some(
            self.config
                .durability
                .attach(self.class.name, self.id, &path, 0),
        );
        self.slot.rewinds.set(0);
        let rebuilt = if self.config.durability.captures_changes() {
            self.restore(RestoreTarget::Bookmark(u64::MAX)).await
        } else {
            Err("rebuilding needs the host log".into())
        };
        self.detach_log();
        match rebuilt {
            Ok(()) => {
                tracing::warn!(class = self.class.name, id = %self.id, problem, "rebuilt the object's file from the log archive");
                self.config.verified.borrow_mut().insert(key);
                Ok(())
            }
            Err(e) => {
                let message = format!(
                    "the object's stored state is {problem} and cannot be rebuilt from the log ({e}); it refuses calls until an operator restores it (restore-object, or a backup)"
                );
                tracing::error!(class = self.class.name, id = %self.id, "{message}");
                self.unservable = Some(message.clone());
                Err(internal(message))
            }
        }
    }

    /// Open the database and attach the object's log if not open yet.
    pub(super) fn open(&mut self, name: Option<&str>) -> Result<(), Response> {
        if self.ctx.is_none() {
            let durability = &self.config.durability;
            let sync_new = !durability.captures_changes();
            // An upgrade changes the file's content under the same batch number: a
            // digest recorded before it would take the file for damaged after an
            // unclean stop, so it is forgotten first (see `store::open_with`).
            let catalog = &self.config.catalog;
            let (class, id) = (self.class.name, self.id);
            let (mut ctx, opened) = store::open_with(
                &self.config.data_dir,
                class,
                id,
                name,
                sync_new,
                self.config.spares.as_deref(),
                &mut || catalog.forget_digest(class, id),
            )
            .map_err(|e| {
                // The message names host paths: the log gets it, the client does not.
                tracing::error!(class = self.class.name, id = %self.id, error = %e, "opening the object's database");
                if says_disk_full(&e) {
                    refused(true)
                } else {
                    internal("opening the object's database failed (the host log says why)")
                }
            })?;
            tracing::trace!(class = self.class.name, id = %self.id, from_header = opened.from_header, seq = opened.seq, "opened the object's database");
            // Without a change capture, SQLite's count of changes is what tells a batch
            // that wrote from one that did not: it must see blobs written in place too.
            if !durability.captures_changes() && !ctx.conn.count_row_writes() {
                tracing::warn!(class = self.class.name, id = %self.id, "could not count the object's row writes: a blob written in place may go unsynced");
            }
            self.seq = opened.seq;
            self.sync_off = opened.sync_off;
            self.last_image_ms = opened.image_ms;
            ctx.bookmarks = self.config.bookmarks.clone();
            ctx.clock = self.config.clock.clone();
            ctx.sockets = self.config.sockets.clone();
            self.reported_due = opened.earliest_due;
            // An object the log has never seen a batch of ships a whole image first.
            // (Kept if already due: a refused image is shipped again after a reopen.)
            self.needs_image |= (opened.upgraded || self.seq == 0) && durability.captures_changes();
            let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
            self.log = Some(durability.attach(self.class.name, self.id, &path, self.seq));
            self.slot.rewinds.set(0);
            self.slot.reads.writer_opened();
            // A new file, or the first activation since the host started (an object
            // stored before the catalog existed): the catalog lists it from now on.
            if opened.upgraded || std::mem::take(&mut self.first_activation) {
                if let Err(e) = self.config.catalog.add(self.class.name, self.id) {
                    tracing::warn!(class = self.class.name, id = %self.id, error = %e, "adding the object to the catalog");
                    // The next activation checks the file again, and tries again.
                    self.config
                        .verified
                        .borrow_mut()
                        .remove(&(self.class.name, self.id));
                }
            }
            self.conn = Some(ctx.conn.clone());
            self.marker = None;
            self.ctx = Some(ctx);
            self.request_max = None;
        }
        Ok(())
    }

    /// How long until this quiet object may close its connection (zero: now), or
    /// `None` if it may not: no connection, or one still needed (a transaction or
    /// deferred batches, batches not yet durable, work queued, reads in flight, an
    /// alarm due soon, a poisoned file, or no host log).
    pub(super) fn connection_idle_wait(&self) -> Option<Duration> {
        let core = self.slot.core.borrow();
        // Under `--durability fsync` closing would checkpoint and sync the file (the
        // WAL is kept on close only under the host log): not worth it.
        let closable = self.conn.is_some()
            && self.config.durability.captures_changes()
            && !self.poisoned
            && !self.txn_open
            && self.deferred == 0
            && core.is_idle()
            && !self.slot.reads.busy()
            && !self.alarm_due_soon();
        if !closable {
            return None;
        }
        let at = core.last_used() + self.config.connection_idle.as_millis() as u64;
        Some(Duration::from_millis(
            at.saturating_sub(self.config.clock.now_ms()),
        ))
    }

    /// Close the database connection of a quiet object, keeping its instance: what
    /// eviction closes, without the activation the next call would then pay. The
    /// next batch reopens the file ([`Object::open`]); everything it holds is
    /// committed (the caller checked), so the reopened connection starts where this
    /// one stopped.
    pub(super) fn close_connection(&mut self) {
        // A digest of what the file holds, for the next unclean start (the quiet
        // bound: an object quiet this long already had its quiet digest, unless larger).
        self.record_digest(DIGEST_QUIET_MAX);
        self.close_compacting();
        self.detach_log();
        crate::sqlite_memory::collect_soon();
    }

    /// Close the connection (as [`Object::drop_connection`]); if its WAL is large, a
    /// blocking thread then copies it into the file, syncs, and truncates it
    /// ([`store::compact_on_close`]). Only under the host log (otherwise SQLite's own
    /// close checkpoints and deletes the WAL), and only with everything the log holds
    /// in the file.
    pub(super) fn close_compacting(&mut self) {
        let compactable = self.config.durability.captures_changes()
            && !self.poisoned
            && !(self.txn_open && self.deferred > 0);
        let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
        let marked = match self.conn.as_deref() {
            Some(conn) if compactable => store::compact_on_close(conn, &path),
            _ => None,
        };
        self.drop_connection();
        if let Some(marked) = marked {
            tokio::task::spawn_blocking(move || {
                if marked.finish() {
                    crate::telemetry::wal_compacted();
                }
            });
        }
    }

    /// How long until this object, its connection closed, should reopen it ahead of its
    /// next alarm ([`ALARM_REOPEN_LEAD`] before it is due; zero: now), or `None`: open,
    /// no alarm, poisoned, or a reopen for this alarm already tried.
    pub(super) fn reopen_wait(&self) -> Option<Duration> {
        let due = self.reported_due?;
        if self.conn.is_some() || self.poisoned || self.reopened_for == Some(due) {
            return None;
        }
        let at = due.saturating_sub(ALARM_REOPEN_LEAD.as_millis() as u64);
        Some(Duration::from_millis(
            at.saturating_sub(self.config.clock.now_ms()),
        ))
    }

    /// Reopen a closed connection for an alarm soon due, and parse what its turn runs
    /// first. A failure is left for the alarm's turn, which opens the file anyway (and
    /// answers for it).
    pub(super) fn reopen_for_alarm(&mut self) {
        self.reopened_for = self.reported_due;
        match self.open(None) {
            Ok(()) => crate::alarms::prepare_wake(self.db()),
            Err(_) => {
                tracing::debug!(class = self.class.name, id = %self.id, "reopening ahead of an alarm failed; the alarm's turn opens the file")
            }
        }
    }

    /// Let go of the object's log handle (returned): durability watches on it then see
    /// their channel close, and [`Slot::detaches`](super::slot::Slot::detaches) tells
    /// them that is no failure of the log.
    pub(super) fn detach_log(&mut self) -> Option<Box<dyn crate::durability::ObjectLog>> {
        let log = self.log.take();
        if log.is_some() {
            self.slot.detaches.set(self.slot.detaches.get() + 1);
        }
        log
    }

    /// Close the connection and what belongs to it (the capture and the statements go
    /// before the connection itself), and forget the write marker it gave.
    pub(super) fn drop_connection(&mut self) {
        self.spare_capture = None;
        self.ctx = None;
        self.conn = None;
        self.marker = None;
        // An open transaction goes with the connection.
        self.unfiled.release();
    }

    /// Whether request `id` is larger than every id recorded in the object's database
    /// (and so cannot have been applied before).
    pub(super) fn unseen_request(
        &mut self,
        conn: &crate::db::Db,
        id: &[u8; 16],
    ) -> rusqlite::Result<bool> {
        let max = match self.request_max {
            Some(max) => max,
            None => *self.request_max.insert(store::max_request_id(conn)?),
        };
        Ok(*id > max)
    }

    /// Request `id` was just recorded.
    pub(super) fn recorded_request(&mut self, id: &[u8; 16]) {
        if let Some(max) = &mut self.request_max {
            *max = (*max).max(*id);
        }
    }

    /// Activate for a batch of read-only calls the way such a batch then runs on an
    /// active object: in a read transaction of its own, with none of a writing batch's
    /// machinery (change capture, savepoints, request ids, a commit to hand to the
    /// log). That holds only if the constructor writes nothing and asks for nothing
    /// (no migration to apply, no alarm to set, no image to ship); otherwise the
    /// transaction is rolled back, the instance dropped, and the batch activates as a
    /// writing batch (the constructor runs again there, and its writes are logged).
    /// While the constructor runs, SQLite refuses every commit, so that not even one
    /// that ends this transaction early (transaction control, which constructors must
    /// not use) can put a write in the file that the log lacks. Leaves `instance` set
    /// if the activation held.
    pub(super) fn activate_to_read(&mut self) {
        // An object new to the log ships an image with its first batch; one whose open
        // transaction holds deferred batches activates inside it.
        if self.txn_open || self.needs_image || !self.class.read_activations.worth_trying() {
            return;
        }
        let conn = self.conn.clone().expect("opened");
        if conn.run("BEGIN").is_err() {
            return;
        }
        refuse_commits(&conn, true);
        let activated = self.activate();
        refuse_commits(&conn, false);
        // Any write, even one a savepoint rolled back, leaves a write transaction; one
        // that ended the transaction was refused, which leaves none at all.
        let wrote = conn.is_autocommit()
            || !matches!(
                conn.transaction_state(Some(rusqlite::MAIN_DB)),
                Ok(rusqlite::TransactionState::Read | rusqlite::TransactionState::None)
            );
        let held = matches!(&activated, Ok(effects) if effects.is_empty())
            && !wrote
            && conn.run("COMMIT").is_ok();
        self.class.read_activations.record(held);
        if held {
            return;
        }
        if !conn.is_autocommit() {
            let _ = conn.run("ROLLBACK");
        }
        self.instance = None;
    }

    /// Activate the instance inside the batch's open transaction. Returns the
    /// constructor's effects, or the error every call of the batch gets.
    pub(super) fn activate(&mut self) -> Result<Effects, Response> {
        let ctx = self.ctx.as_mut().expect("opened");
        let activate = self.class.activate;
        ctx.effects = Effects::default();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| activate(ctx)));
        let effects = std::mem::take(&mut ctx.effects);
        // Its migrations would do the same on every new file: the class's next new
        // objects may get theirs with them applied.
        // The watch (from the file's opening) ends with the activation, `migrate` called
        // or not: later turns' statements are not looked at.
        ctx.conn.end_schema_watch();
        let learnt = ctx.conn.template_made.borrow_mut().take();
        if let (Some(list), Some(spares)) = (learnt, self.config.spares.as_ref()) {
            spares.learn(self.class.name, list);
        }
        match result {
            Ok(Ok(instance)) => {
                self.instance = Some(instance);
                Ok(effects)
            }
            Ok(Err(e)) => Err(Response::Error(WireError::ObjectReset {
                message: format!("activation failed: {}", e.0),
            })),
            Err(panic) => Err(Response::Error(WireError::ObjectReset {
                message: format!("activation panicked: {}", panic_message(&panic)),
            })),
        }
    }

    /// Before the batch can become durable: if its alarms changed (or an alarm wake ran,
    /// `woken`), lower the index entry to the earlier of the old and new earliest due
    /// time, so that no durable alarm is ever missing from the index whatever happens
    /// next. Returns the new earliest due time to publish after the commit. Also turns
    /// a migration or `delete_all` into an image, so their bookkeeping is logged.
    pub(super) fn index_alarms_before(
        &mut self,
        woken: bool,
        effects: &Effects,
    ) -> Result<Option<Option<u64>>, String> {
        let conn = self.conn.clone().expect("active");
        if effects.ship_image.get() {
            self.needs_image = true;
        }
        if !(woken || effects.alarms_changed) {
            return Ok(None);
        }
        let due = crate::alarms::earliest_due(&conn).map_err(|e| format!("reading alarms: {e}"))?;
        if effects.alarms_changed {
            // Parse the statements an alarm turn runs now, off its due time.
            crate::alarms::prepare_wake(&conn);
        }
        let provisional = match (self.reported_due, due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if provisional != self.reported_due {
            self.config
                .alarms
                .index_due(self.class.name, self.id, provisional)
                .map_err(|e| format!("updating the alarm index: {e}"))?;
            self.reported_due = provisional;
        }
        Ok(Some(due))
    }

    /// Whether the object's earliest alarm is due within [`ALARM_WARM`].
    pub(super) fn alarm_due_soon(&self) -> bool {
        let horizon = self.config.clock.now_ms() + ALARM_WARM.as_millis() as u64;
        self.reported_due.is_some_and(|due| due <= horizon)
    }

    /// After the commit: the exact earliest due time, to the scheduler now and to the
    /// index (the host's record across restarts). An earlier time goes to the index at
    /// once (at worst a needless wake if the batch is lost); a later one, or none,
    /// waits until the batch (`self.seq`) is durable ([`Object::publish_raised_due`]).
    pub(super) fn index_alarms_after(&mut self, due: Option<u64>) {
        let raises = match (self.reported_due, due) {
            (Some(reported), Some(due)) => due > reported,
            (Some(_), None) => true,
            (None, _) => false,
        };
        if raises && self.seq > self.slot.core.borrow().durable() {
            self.raised_due = Some((self.seq, due));
        } else {
            self.raised_due = None;
            self.write_index(due);
        }
        self.config.alarms.notify_due(self.class.name, self.id, due);
    }

    /// The exact earliest due time of a file that holds only durable batches (healed
    /// from the log, or after the log refused the rest): to the index and the
    /// scheduler at once, whichever way it moves; a raise held back is dropped.
    pub(super) fn index_alarms_durable(&mut self, due: Option<u64>) {
        self.raised_due = None;
        self.write_index(due);
        self.config.alarms.notify_due(self.class.name, self.id, due);
    }

    /// The raise [`Object::index_alarms_after`] held back, to the index once its batch
    /// is durable.
    pub(super) fn publish_raised_due(&mut self) {
        let Some((seq, due)) = self.raised_due else {
            return;
        };
        if seq <= self.slot.core.borrow().durable() {
            self.raised_due = None;
            self.write_index(due);
        }
    }

    fn write_index(&mut self, due: Option<u64>) {
        if due != self.reported_due {
            match self.config.alarms.index_due(self.class.name, self.id, due) {
                Ok(()) => self.reported_due = due,
                // The index keeps the earlier value: at worst one needless wake.
                Err(e) => {
                    tracing::warn!(class = self.class.name, id = %self.id, error = %e, "updating the alarm index")
                }
            }
        }
    }

    /// An alarm wake could not run (activation or the batch failed): wake again after
    /// one backoff period rather than lose the alarms.
    pub(super) fn retry_alarms_later(&self) {
        let retry =
            self.config.clock.now_ms() + self.config.alarms.config.backoff.as_millis() as u64;
        self.config
            .alarms
            .notify_due(self.class.name, self.id, Some(retry));
    }
}

/// While `on`, SQLite refuses every commit on `conn` (a commit hook that vetoes it: the
/// transaction is rolled back and the statement fails). The runtime sets no other
/// commit hook.
fn refuse_commits(conn: &crate::db::Db, on: bool) {
    unsafe extern "C" fn veto(_: *mut std::ffi::c_void) -> std::ffi::c_int {
        1
    }
    // SAFETY: the handle is `conn`'s, open; the hook takes no context and is removed
    // (`None`) before the statement that ends the read transaction.
    unsafe {
        rusqlite::ffi::sqlite3_commit_hook(
            conn.handle(),
            on.then_some(veto as unsafe extern "C" fn(_) -> _),
            std::ptr::null_mut(),
        );
    }
}

/// Whether an error message (from opening an object's file: it names host paths, so a
/// bare "full" in a data directory's name must not count) says the disk or quota is
/// full: SQLite's `SQLITE_FULL`, or the system's `ENOSPC` (28) or `EDQUOT` (122).
fn says_disk_full(message: &str) -> bool {
    [
        "database or disk is full",
        "(os error 28)",
        "(os error 122)",
    ]
    .iter()
    .any(|m| message.contains(m))
}

#[cfg(test)]
mod tests {
    use super::refuse_commits;
    use crate::db::{Db, Statements};
    use rusqlite::Connection;

    #[test]
    fn only_a_full_disk_reads_as_full() {
        use super::says_disk_full;
        assert!(says_disk_full(
            "opening /d/objects/C/x.db: database or disk is full"
        ));
        assert!(says_disk_full(
            "creating /d/objects/C: No space left on device (os error 28)"
        ));
        assert!(says_disk_full(
            "writing /d/x.db-wal: Disk quota exceeded (os error 122)"
        ));
        // A data directory named for something full, and a failure of another kind.
        assert!(!says_disk_full(
            "opening /srv/fullnode/objects/C/x.db: Permission denied (os error 13)"
        ));
    }

    #[test]
    fn while_commits_are_refused_no_write_reaches_the_file_whatever_ends_the_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::new(Connection::open(dir.path().join("f.db")).unwrap());
        db.execute_batch("CREATE TABLE t(x)").unwrap();
        let count = |db: &Db| -> i64 {
            db.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
                .unwrap()
        };
        db.run("BEGIN").unwrap();
        refuse_commits(&db, true);
        // A write that ends the transaction itself, and one in autocommit after it.
        assert!(db
            .execute_batch("INSERT INTO t VALUES (1); COMMIT")
            .is_err());
        assert!(db.is_autocommit(), "the refused commit rolled back");
        assert!(db.execute("INSERT INTO t VALUES (2)", []).is_err());
        refuse_commits(&db, false);
        assert_eq!(count(&db), 0);
        let other = Connection::open(dir.path().join("f.db")).unwrap();
        assert_eq!(
            other
                .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .unwrap(),
            0
        );
        // Off again: commits go through.
        db.execute("INSERT INTO t VALUES (3)", []).unwrap();
        assert_eq!(count(&db), 1);
    }
}
