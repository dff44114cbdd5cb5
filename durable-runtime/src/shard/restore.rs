//! Restoring an object to an earlier point from the retained log (see
//! [`crate::restore`]).

use super::object::{settled, Object};
use crate::durability::Change;
use crate::restore_target::RestoreTarget;
use crate::store;

impl Object {
    /// Replace the object's state with its state at `target` (see [`crate::restore`]):
    /// log the rebuilt image, then install it and reset the instance.
    pub(super) async fn restore(&mut self, target: RestoreTarget) -> Result<(), String> {
        // Reading the retained log is slow: off the shard thread, so the shard's other
        // objects carry on meanwhile (this one waits: its restore is its turn's effect).
        let (data_dir, class, id, seq, window) = (
            self.config.data_dir.clone(),
            self.class.name,
            self.id,
            self.seq,
            self.config.request_window,
        );
        let (image, report) = tokio::task::spawn_blocking(move || {
            crate::restore::rebuild(&data_dir, class, id, target, seq, window)
        })
        .await
        .map_err(|e| format!("the restore task failed: {e}"))??;
        let log = self.log.as_ref().expect("attached");
        if !log.captures_changes() {
            return Err("restoring needs the host log".into());
        }
        let mut watch = log.watch();
        log.submit(report.new_seq, Some(Change::Image(image.clone())));
        let slot = self.slot.clone();
        let pos = match watch
            .wait_for(|p| settled(p, report.new_seq, slot.rewinds.get()))
            .await
        {
            Ok(p) if !p.failed && p.durable >= report.new_seq => *p,
            Ok(p) if p.rejected.is_some() => {
                // Refused, nothing on disk: the object keeps its state and the log
                // takes its batches again.
                drop(p);
                self.slot.rewinds.set(self.slot.rewinds.get() + 1);
                log.rewind();
                return Err("the host log could not store the restored state (refused)".into());
            }
            _ => return Err("the host log could not make the restored state durable".into()),
        };
        // The restored state is in the log: the batch numbers move past it whatever
        // happens to the file below.
        self.seq = report.new_seq;
        self.instance = None;
        self.drop_connection();
        self.request_max = None;
        let path = store::object_path(&self.config.data_dir, self.class.name, self.id);
        self.slot.reads.file_replaced();
        if let Err(e) = store::write_image(&path, &image) {
            self.poisoned = true;
            return Err(format!(
                "installing the restored state (replayed on restart): {e}"
            ));
        }
        if let Some(log) = self.detach_log() {
            log.applied(pos.lsn);
        }
        // The restored state (durable: its record is) has its own alarms: index them,
        // over any later time an earlier batch of this object held back.
        self.raised_due = None;
        let due = crate::wal_index::open(&path, Default::default())
            .and_then(|c| crate::alarms::earliest_due(&c))
            .map_err(|e| format!("reading the restored alarms: {e}"))?;
        self.config
            .alarms
            .index_due(self.class.name, self.id, due)
            .map_err(|e| format!("indexing the restored alarms: {e}"))?;
        self.reported_due = due;
        self.config.alarms.notify_due(self.class.name, self.id, due);
        tracing::info!(class = self.class.name, id = %self.id, ?report, "object restored");
        Ok(())
    }
}
