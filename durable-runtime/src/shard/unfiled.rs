//! Request records not yet in the object's file. A batch's request records (each call's
//! request id, digest and outcome) travel to the host log inside the batch's record;
//! the file's request table gets them only when the file commits its open transaction
//! (every few batches, or when the object goes quiet): one run of appends then, instead
//! of two B-tree inserts and their sub-journal pages inside every call's savepoint (a
//! fifth of a shard's time in increments_many). Until then the object answers retries
//! from here. A crash loses nothing: recovery replays the batches' records, request
//! records included, from the log.

use crate::db::Statements;
use crate::store::{self, Recorded, RecordedCall};
use std::collections::HashMap;

/// Records of batches handed to the log whose rows are not in the file's open
/// transaction, in the order they were recorded.
#[derive(Default)]
pub(super) struct Unfiled {
    records: Vec<RecordedCall>,
    /// Request id -> position in `records`.
    index: HashMap<[u8; 16], usize>,
}

impl Unfiled {
    /// Take a batch's records (it reached the log and its savepoint was released).
    pub(super) fn extend(&mut self, batch: Vec<RecordedCall>) {
        for record in batch {
            // A request id is recorded once: a retry finds it and records nothing.
            if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(record.0) {
                slot.insert(self.records.len());
                self.records.push(record);
            }
        }
    }

    /// The recorded digest and outcome of request `id`, if held here.
    pub(super) fn get(&self, id: &[u8; 16]) -> Option<(u64, Recorded)> {
        self.index.get(id).map(|&at| {
            let (_, digest, outcome) = &self.records[at];
            (*digest, outcome.clone())
        })
    }

    /// Forget everything held: written to the file, or the transaction the records were
    /// meant for is gone (whoever re-applies its batches from the log writes their
    /// records too). The allocations go too: a quiet object holds none of it.
    pub(super) fn clear(&mut self) {
        *self = Unfiled::default();
    }

    /// Write every record held into the request table, in order, in the connection's
    /// open transaction; dropping the oldest beyond `window` as [`store::record_request`]
    /// does. The records stay held until [`Unfiled::clear`]: writing them again is
    /// harmless (a recorded id is skipped), so a failure part way can simply be retried.
    pub(super) fn write(&self, conn: &impl Statements, window: usize) -> rusqlite::Result<()> {
        write_records(conn, &self.records, window)
    }
}

/// Write `records` into the request table (see [`Unfiled::write`]).
pub(super) fn write_records(
    conn: &impl Statements,
    records: &[RecordedCall],
    window: usize,
) -> rusqlite::Result<()> {
    records.iter().try_for_each(|(id, digest, outcome)| {
        store::record_request(conn, id, *digest, outcome, window)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, body: &[u8]) -> RecordedCall {
        ([n; 16], u64::from(n), Recorded::Return(body.to_vec()))
    }

    #[test]
    fn holds_records_by_id_until_cleared() {
        let mut u = Unfiled::default();
        assert!(u.records.is_empty() && u.index.is_empty());
        u.extend(vec![rec(1, b"a"), rec(2, b"b")]);
        u.extend(vec![rec(1, b"again"), rec(3, b"c")]);
        assert_eq!(u.records.len(), 3);
        assert_eq!(u.get(&[1; 16]), Some((1, Recorded::Return(b"a".to_vec()))));
        assert_eq!(u.get(&[3; 16]), Some((3, Recorded::Return(b"c".to_vec()))));
        assert_eq!(u.get(&[4; 16]), None);
        u.clear();
        assert!(u.records.is_empty() && u.index.is_empty());
        assert_eq!(u.get(&[1; 16]), None);
    }
}
