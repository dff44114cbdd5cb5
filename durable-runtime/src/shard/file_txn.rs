//! The object's file transaction: a batch's savepoint in the open transaction, its
//! commit and hand-off to the log, the deferred file commit, rolling back, rewinding
//! refused batches, and the quiet content digest.

use super::object::{settled_pos, Object, Pending, DEFER_MAX_BATCHES};
use super::outcomes::{internal, CommitError, FileCommit};
use crate::capture::ChangeCapture;
use crate::core::outbox::Effects;
use crate::db::Statements;
use crate::durability::Change;
use crate::store;
use durable_client::wire::Response;

/// The batch's savepoint, also the first call's (see
/// [`Pending::fresh`](super::object::Pending::fresh)).
pub(super) const BATCH_SAVEPOINT: &str = "durable_batch";

/// Whether re-applying a batch's captured changes does exactly what they did: no
/// triggers, TEMP ones included (they would run again), no foreign keys (their actions
/// are triggers, their checks could refuse an order the batch took) and no virtual
/// tables (FTS5 keeps what it indexed in memory until a savepoint or commit: rolling
/// the batch back would lose an earlier call's index entries, which no captured row
/// brings back).
const UNDO_CHECK: &str =
    "SELECT NOT EXISTS (SELECT 1 FROM main.sqlite_schema WHERE type = 'trigger') \
     AND NOT EXISTS (SELECT 1 FROM temp.sqlite_schema WHERE type = 'trigger') \
     AND NOT EXISTS (SELECT 1 FROM main.sqlite_schema \
         WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL TABLE%') \
     AND NOT EXISTS (SELECT 1 FROM main.sqlite_schema AS t, pragma_foreign_key_list(t.name) \
         WHERE t.type = 'table')";

impl Object {
    /// Start a batch: begin capturing changes (if the log wants them) and the transaction.
    pub(super) fn begin(&mut self) -> Result<Option<ChangeCapture>, Response> {
        // Requests from an earlier, failed batch do not carry over.
        self.ctx.as_mut().expect("opened").effects = Effects::default();
        let conn = self.conn.clone().expect("opened");
        let capture = self.start_capture(&conn).map_err(internal)?;
        self.begin_savepoints(&conn, BATCH_SAVEPOINT)
            .map_err(internal)?;
        Ok(capture)
    }

    /// After a commit in the middle of a batch: its transaction (if the commit closed
    /// it), the batch's savepoint and the running turn's.
    pub(super) fn begin_savepoints(
        &mut self,
        conn: &crate::db::Db,
        turn: &str,
    ) -> Result<(), String> {
        let e = |e: rusqlite::Error| e.to_string();
        if !self.txn_open {
            conn.run("BEGIN IMMEDIATE").map_err(e)?;
            self.txn_open = true;
        }
        conn.run("SAVEPOINT durable_batch").map_err(e)?;
        if turn == BATCH_SAVEPOINT {
            // The turn runs in the batch's savepoint itself.
            return Ok(());
        }
        conn.run(&format!("SAVEPOINT {turn}")).map_err(e)
    }

    /// A fresh change capture, if the log wants changes.
    pub(super) fn start_capture(
        &mut self,
        conn: &crate::db::Db,
    ) -> Result<Option<ChangeCapture>, String> {
        let wants = self.log.as_ref().is_some_and(|l| l.captures_changes());
        if !wants {
            return Ok(None);
        }
        match self.spare_capture.take() {
            Some(mut c) => {
                c.reset();
                Ok(Some(c))
            }
            None => ChangeCapture::start(conn).map(Some),
        }
    }

    /// The schema version a batch's calls may run from without a savepoint each (see
    /// [`Pending::undo`]), or `None` where a failed call could not be undone exactly
    /// from the batch's change capture: no capture, triggers, foreign keys, or an
    /// earlier undo of this object that could not be exact. Checked once per schema
    /// version.
    pub(super) fn undo_schema(&mut self, bs: &Pending) -> Option<i64> {
        if self.savepoint_calls || bs.capture.is_none() {
            return None;
        }
        let conn = self.db();
        let schema: i64 = conn
            .with("PRAGMA schema_version", |s| s.query_row([], |r| r.get(0)))
            .ok()?;
        let ok = match self.undo_checked {
            Some((at, ok)) if at == schema => ok,
            _ => {
                let ok = conn
                    .with(UNDO_CHECK, |s| s.query_row([], |r| r.get::<_, bool>(0)))
                    .unwrap_or(false);
                self.undo_checked = Some((schema, ok));
                ok
            }
        };
        ok.then_some(schema)
    }

    /// Undo a failed call that ran without a savepoint of its own, after earlier calls
    /// of its batch wrote (`mark`: where the capture stood as it began): the batch is
    /// rolled back to its start and the changes made before the call are applied again
    /// from the capture. Where that could not be exact (the schema changed during the
    /// batch, a row keyed by NULL), nothing is re-applied: the
    /// batch fails as a whole, not applied, and the object's calls get savepoints of
    /// their own from then on. A call that wrote nothing (`changes`: the connection's
    /// change count as it began; nothing captured after `mark`) needs no undo; after one
    /// undo, the rest of the batch gets savepoints (each undo re-applies the batch so
    /// far).
    pub(super) fn undo_call(
        &mut self,
        conn: &crate::db::Db,
        bs: &mut Pending,
        mark: usize,
        changes: u64,
        schema_at_start: i64,
    ) -> Result<(), String> {
        let mut undo = || -> Result<(), String> {
            let e = |e: rusqlite::Error| e.to_string();
            let schema: i64 = conn
                .with("PRAGMA schema_version", |s| s.query_row([], |r| r.get(0)))
                .map_err(e)?;
            if schema != schema_at_start {
                return Err("the schema changed during the batch".into());
            }
            let Some(capture) = bs.capture.as_mut() else {
                return Err("the batch's change capture is gone".into());
            };
            // Nothing counted and nothing captured (a blob written in place is only
            // captured): the call wrote nothing.
            if conn.total_changes() == changes && capture.mark() == mark {
                return Ok(());
            }
            bs.undo = None;
            let changes = capture.changes_until(conn, schema, mark)?;
            conn.run("ROLLBACK TO durable_batch").map_err(e)?;
            capture.reset();
            crate::capture::apply_exactly(conn.conn(), &changes)
        };
        let undone = undo().map_err(|e| {
            format!("a call of the batch failed and could not be undone alone ({e}): none of the batch was applied")
        });
        if let Err(e) = &undone {
            tracing::warn!(class = self.class.name, id = %self.id, error = %e, "a failed call could not be undone alone: its batch fails (not applied), and this object's calls get savepoints of their own from now on");
            self.savepoint_calls = true;
        }
        undone
    }

    /// Undo the running batch, keeping the batches deferred before it. If even that
    /// fails, the whole transaction goes, and with deferred batches lost from the file
    /// the object is poisoned until [`Object::heal`] re-applies them from the log.
    pub(super) fn rollback_batch(&mut self) {
        self.marker = None;
        let conn = self.db();
        let undone = conn
            .run("ROLLBACK TO durable_batch")
            .and_then(|_| conn.run("RELEASE durable_batch"));
        if undone.is_ok() && self.deferred > 0 {
            return;
        }
        let _ = conn.run("ROLLBACK");
        self.txn_open = false;
        self.unfiled.release();
        if self.deferred > 0 {
            tracing::error!(class = self.class.name, id = %self.id, "rolling back a batch undid deferred ones; the object rebuilds them from the log on its next call");
            self.deferred = 0;
            self.poisoned = true;
        }
    }

    /// End the running batch's savepoint; commit the file now if nothing is deferred
    /// (or `now` is set), else leave the transaction open for the next batch.
    pub(super) fn release_batch(&mut self, now: bool) -> rusqlite::Result<()> {
        let conn = self.db();
        conn.run("RELEASE durable_batch")?;
        if now || self.deferred == 0 {
            conn.run("COMMIT")?;
            self.txn_open = false;
            self.committed_file();
        }
        Ok(())
    }

    /// The file just committed: a connection opened on an empty WAL goes back to
    /// `synchronous=NORMAL` (see [`store::Opened::sync_off`]), before the log hears
    /// that the file holds the commit's batches. Returns whether the connection is at
    /// `NORMAL`. (Setting it does no I/O; should it fail all the same, the log is not
    /// told, so it keeps the batches, and the next commit tries again.)
    fn committed_file(&mut self) -> bool {
        if self.sync_off {
            match store::sync_normal(self.db()) {
                Ok(()) => self.sync_off = false,
                Err(e) => {
                    tracing::error!(class = self.class.name, id = %self.id, error = %e, "setting synchronous=NORMAL after a commit")
                }
            }
        }
        !self.sync_off
    }

    /// Commit the file's open transaction, if any, once the log holds every batch in
    /// it (the log is written ahead of the file), and tell the log the file holds them
    /// (so checkpoints may pass them). If the log refused some of them, leave them for
    /// the rewind the core asks for. A commit that fails with the transaction still
    /// open (SQLite could not write its WAL: a full disk) is tried again later. The
    /// object stops only if batches the log holds are lost from the file (a restart
    /// replays them) or the log failed.
    pub(super) async fn commit_deferred(&mut self, force: bool) -> FileCommit {
        if !self.txn_open || self.conn.is_none() {
            return if self.poisoned {
                FileCommit::Stopped
            } else {
                FileCommit::Done
            };
        }
        let mut lsn = None;
        if self.deferred > 0 {
            let target = self.seq;
            let log = self
                .log
                .as_ref()
                .expect("attached while batches are deferred");
            if self.config.clock.now_ms() < self.commit_retry_at && !force {
                return FileCommit::Done;
            }
            let pos = settled_pos(log.watch(), &self.slot, target).await;
            if pos.failed {
                tracing::error!(class = self.class.name, id = %self.id, "the host log failed with batches not yet in the file; the object is stopped until a restart");
                self.abandon_txn();
                return FileCommit::Stopped;
            }
            if pos.durable < target {
                return FileCommit::Refused;
            }
            lsn = Some(pos.lsn);
        }
        let conn = self.conn.clone().expect("open: checked above");
        let conn = &*conn;
        // The file records the last batch it holds as it commits them (a batch does
        // not: an `UPDATE` per batch was a twelfth of a write's shard time), and the
        // request records of its deferred batches (see `super::unfiled`).
        let committed = match lsn {
            Some(_) => self
                .unfiled
                .write(conn, self.config.request_window)
                .and_then(|()| store::set_stored_seq(conn, self.seq)),
            None => Ok(()),
        }
        .and_then(|()| conn.run("COMMIT"));
        match committed {
            Ok(()) => {
                let normal = self.committed_file();
                self.txn_open = false;
                self.unfiled.committed();
                self.deferred = 0;
                self.commit_backoff = 0;
                if let (Some(lsn), Some(log), true) = (lsn, self.log.as_ref(), normal) {
                    log.applied(lsn);
                }
                FileCommit::Done
            }
            Err(e) if !conn.is_autocommit() => {
                self.back_off_commits();
                // SQLite kept the transaction: the batches stay in it, durable in the
                // log, and the commit is tried again later.
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "committing the object's file failed; will try again");
                FileCommit::Done
            }
            Err(e) => {
                // The log holds the batches, the file does not: they stay unapplied (no
                // checkpoint passes them) and the object is poisoned: no call builds
                // on the gap until `heal` re-applies them from the log.
                tracing::error!(class = self.class.name, id = %self.id, error = %e, "SQLite commit failed after the log write and dropped the transaction; the object rebuilds those batches from the log on its next call");
                self.back_off_commits();
                self.abandon_txn();
                if lsn.is_some() {
                    // Checked above: the log holds every batch of the transaction.
                    FileCommit::StoppedDurable
                } else {
                    FileCommit::Stopped
                }
            }
        }
    }

    /// The log refused this object's batches after `durable` (none of them is on
    /// disk) and their replies went out as not applied: roll the file's open
    /// transaction back (refused and deferred batches alike), drop the instance (it
    /// may hold their state), renumber from `durable`, and tell the log to take this
    /// object's batches again. The durable batches the rollback took from the file are
    /// re-applied from the log by [`Object::heal`] before the next call runs. (A
    /// savepoint per deferred batch would undo just the refused ones, but nested
    /// savepoints cost every write a sub-journal page: a rare fault pays instead.)
    pub(super) fn rewind(&mut self, durable: u64) {
        if self.seq > durable && self.ctx.is_some() {
            self.abandon_txn();
            let file_seq = self
                .ctx
                .as_ref()
                .and_then(|c| store::stored_seq(&*c.conn).ok());
            // Poisoned only if the file now lacks durable batches.
            self.poisoned = file_seq != Some(durable);
            self.seq = durable;
            // Batch numbers after `durable` will be reused for other content.
            self.digest_seq = self.digest_seq.min(durable);
        }
        // A refused image leaves whatever called for it (a new object, a migration):
        // ship one again. Changesets need nothing: each batch captures from its start.
        if self.last_image_seq > durable {
            self.needs_image = true;
        }
        self.instance = None;
        self.spare_capture = None;
        self.slot.rewinds.set(self.slot.rewinds.get() + 1);
        if let Some(log) = self.log.as_ref() {
            log.rewind();
        }
        // Alarms set or cancelled by the undone batches: publish what the file says, once
        // it holds every durable batch again (a poisoned file lacks some: `heal`
        // publishes them; the index keeps its earlier value till then).
        if let (Some(ctx), false) = (self.ctx.as_ref(), self.poisoned) {
            if let Ok(due) = crate::alarms::earliest_due(&ctx.conn) {
                self.index_alarms_durable(due);
            }
        }
        tracing::info!(class = self.class.name, id = %self.id, durable, "undid the batches the log refused");
    }

    /// With the file committed (the object stopping, or quiet): record a digest of its
    /// content, so that after an unclean stop damage to it is detected before it is
    /// served (objects up to `max_bytes`; larger ones are not checked there, their
    /// digest would cost too much).
    pub(super) fn record_digest(&mut self, max_bytes: i64) {
        let Some(ctx) = self.ctx.as_ref() else {
            return;
        };
        if self.seq == 0 || self.seq == self.digest_seq || !ctx.conn.is_autocommit() {
            return;
        }
        // Unchanged since its digest was recorded (an object that was only read since
        // its last stop): the recorded digest still stands.
        if let Ok(Some((seq, _))) = self.config.catalog.digest(self.class.name, self.id) {
            if seq == self.seq {
                self.digest_seq = seq;
                return;
            }
        }
        let size: rusqlite::Result<i64> = ctx.conn.query_row(
            "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
            [],
            |r| r.get(0),
        );
        if !size.is_ok_and(|s| s <= max_bytes) {
            return;
        }
        let recorded = crate::catalog::content_digest(&ctx.conn).and_then(|d| {
            self.config
                .catalog
                .record_digest(self.class.name, self.id, self.seq, d)
        });
        match recorded {
            Ok(()) => self.digest_seq = self.seq,
            Err(e) => {
                tracing::warn!(class = self.class.name, id = %self.id, error = %e, "recording the object's digest")
            }
        }
    }

    /// The file's commit failed: try again only after a backoff (250 ms, doubling to
    /// 5 s), so that a full disk is not hammered by every quiet object.
    pub(super) fn back_off_commits(&mut self) {
        self.commit_backoff = (self.commit_backoff * 2).clamp(250, 5_000);
        self.commit_retry_at = self.config.clock.now_ms() + self.commit_backoff;
    }

    /// Drop the open transaction and everything deferred in it; with deferred batches
    /// the object is poisoned until [`Object::heal`] re-applies them from the log.
    pub(super) fn abandon_txn(&mut self) {
        self.marker = None;
        if let Some(conn) = self.conn.as_ref() {
            let _ = conn.run("ROLLBACK");
        }
        self.txn_open = false;
        self.unfiled.release();
        if self.deferred > 0 {
            self.deferred = 0;
            self.poisoned = true;
        }
        self.instance = None;
    }

    /// End the running batch. If it wrote anything, number the batch and store the
    /// number in the same transaction. With a log that captures changes, the batch's
    /// changeset (or the whole database, when the schema changed or the object is new to
    /// the log) goes to the log and the batch stays in the open transaction; the file
    /// commits later, only once the log holds it (see [`Object::commit_deferred`]), so
    /// the object's file never holds a change the log lacks. Otherwise (`--durability
    /// fsync`) the file commits now and its sync makes the batch durable. Either way
    /// the replies wait in the core's output gate.
    pub(super) async fn commit(
        &mut self,
        before: (u64, i64),
        capture: Option<ChangeCapture>,
        recorded: Vec<store::RecordedCall>,
    ) -> Result<(), CommitError> {
        let not_applied = |e: rusqlite::Error| CommitError::NotApplied(e.to_string());
        let conn = self.conn.clone().expect("opened");
        let after = write_marker(&conn);
        // (A blob written in place changes no count, but the capture saw it.)
        let captured = capture.as_ref().is_some_and(|c| c.mark() > 0);
        if after == before && !self.needs_image && recorded.is_empty() && !captured {
            // Nothing was written: the capture is still empty, keep it for next time.
            self.spare_capture = capture;
            self.marker = Some(after);
            // A batch that wrote nothing: whatever happens to its end, nothing of it
            // can survive.
            return self.release_batch(false).map_err(not_applied);
        }
        let seq = self.seq + 1;
        let log = self.log.as_ref().expect("attached");
        let window = self.config.request_window;
        if !log.captures_changes() {
            // Nothing is deferred: the records go in with the batch.
            super::unfiled::write_records(&*conn, &recorded, window).map_err(not_applied)?;
            let filed = recorded;
            store::set_stored_seq(&*conn, seq).map_err(not_applied)?;
            drop(capture);
            // The file is the durability: commit every batch. A failed COMMIT may have
            // left the commit frame in the WAL: indeterminate.
            self.release_batch(true)
                .map_err(|e| CommitError::Indeterminate(format!("commit failed: {e}")))?;
            self.unfiled.filed_with_batch(&*conn, filed);
            self.seq = seq;
            let log = self.log.as_ref().expect("attached");
            log.submit(seq, None);
            return Ok(());
        }
        let now = self.config.clock.now_ms();
        let snapshot_due = self.config.snapshot_every.is_some_and(|every| {
            now.saturating_sub(self.last_image_ms) >= every.as_millis() as u64
        });
        let mut capture = capture;
        // Whether this batch's savepoint holds every request record so far (an image).
        let mut filed = false;
        let change = match &mut capture {
            Some(c) if !self.needs_image && !snapshot_due && after.1 == before.1 => {
                // Nothing below writes to the file: `after` stays this connection's
                // marker until the next batch begins.
                self.marker = Some(after);
                Change::Changeset(store::encode_changes(
                    &c.changeset(&*conn, after.1)
                        .map_err(CommitError::NotApplied)?,
                    &recorded,
                ))
            }
            _ => {
                // An image replaces the file on replay and carries no request records
                // of its own: it must hold every one so far, the deferred batches' too.
                self.unfiled
                    .write_within_batch(&*conn, &recorded, window)
                    .map_err(not_applied)?;
                filed = true;
                // An image carries its batch number: replaying it sets the file's.
                store::set_image_seq(&conn, seq, now).map_err(not_applied)?;
                self.last_image_ms = now;
                self.last_image_seq = seq;
                let data = store::serialize_copy(&conn).map_err(|e| {
                    CommitError::NotApplied(format!("serializing the database: {e}"))
                })?;
                Change::Image(data)
            }
        };
        // Keep the capture, emptied, with the table layouts it has read (an image's
        // batch left its rows in it).
        if let Some(c) = capture.as_mut() {
            if matches!(change, Change::Image(_)) {
                c.reset();
            }
        }
        self.spare_capture = capture;
        log.submit(seq, Some(change));
        // The batch is on its way to the log and cannot be called back: from here on it
        // is numbered, whatever happens. Its replies wait for the log (the output gate);
        // the next batch need not: it runs on top in the same open transaction, and
        // the file commits only once the log holds every batch in it.
        self.seq = seq;
        self.needs_image = false;
        self.deferred += 1;
        if let Err(e) = conn.run("RELEASE durable_batch") {
            tracing::error!(class = self.class.name, id = %self.id, error = %e, "ending a batch failed after its log write; the object rebuilds it from the log on its next call");
            self.abandon_txn();
            return Err(CommitError::Indeterminate(format!(
                "the batch is in the host log but its commit failed: {e}"
            )));
        }
        // The batch's records are the file's once it commits (in the transaction already
        // if an image wrote them all).
        if filed {
            self.unfiled.release();
        } else {
            self.unfiled.extend(&*conn, recorded);
        }
        // With readers about, the file commits as soon as the batch is durable: before
        // its replies leave (see `crate::reads`).
        let read_friendly = self.slot.reads.friendly(now);
        if !self.config.defer_commits || self.deferred >= DEFER_MAX_BATCHES || read_friendly {
            match self.commit_deferred(false).await {
                FileCommit::Done | FileCommit::Refused => {}
                // The log made the batch durable before the file's commit failed: it is
                // applied (the object heals its file from the log), and its replies
                // leave through the output gate as any durable batch's.
                FileCommit::StoppedDurable => {
                    tracing::warn!(class = self.class.name, id = %self.id, seq, "the batch is durable in the host log though its file commit failed: answered as applied");
                }
                FileCommit::Stopped => {
                    return Err(CommitError::Indeterminate(
                        "the batch may be in the host log but its commit failed".into(),
                    ))
                }
            }
        }
        Ok(())
    }
}

impl Object {
    /// The write marker at the start of a batch: the one the last commit read, if
    /// nothing has written since (see [`Object::marker`]), else read now.
    pub(super) fn batch_marker(&mut self) -> (u64, i64) {
        let kept = self.marker.take();
        let conn = self.db();
        match kept {
            Some(m) if m.0 == conn.total_changes() => m,
            _ => write_marker(conn),
        }
    }
}

/// Something that changes whenever a transaction writes rows or the schema.
pub(super) fn write_marker(conn: &crate::db::Db) -> (u64, i64) {
    let schema: i64 = conn
        .with("PRAGMA schema_version", |s| s.query_row([], |r| r.get(0)))
        .unwrap_or(-1);
    (conn.total_changes(), schema)
}

#[cfg(test)]
mod tests {
    use super::UNDO_CHECK;
    use rusqlite::Connection;

    fn undo_allowed(schema: &str) -> bool {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(schema).unwrap();
        c.query_row(UNDO_CHECK, [], |r| r.get(0)).unwrap()
    }

    /// Re-applying captured changes is exact only without triggers (TEMP ones too),
    /// foreign keys and virtual tables (an FTS5 index keeps entries in memory until a
    /// savepoint).
    #[test]
    fn calls_go_without_savepoints_only_where_an_undo_is_exact() {
        let plain = "CREATE TABLE a(k INTEGER PRIMARY KEY, v); CREATE INDEX av ON a(v);";
        assert!(undo_allowed(plain));
        assert!(!undo_allowed(&format!(
            "{plain} CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;"
        )));
        assert!(!undo_allowed(&format!(
            "{plain} CREATE TEMP TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; END;"
        )));
        assert!(!undo_allowed(&format!(
            "{plain} CREATE TABLE b(k INTEGER PRIMARY KEY, a INTEGER REFERENCES a(k));"
        )));
        assert!(!undo_allowed(&format!(
            "{plain} CREATE VIRTUAL TABLE docs USING fts5(body);"
        )));
    }
}
