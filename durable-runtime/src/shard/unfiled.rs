//! Request records not yet in the object's file. A batch's request records (each call's
//! request id, digest and outcome) travel to the host log inside the batch's record;
//! the file's request tables get them only when the file commits its open transaction
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
    /// How many of `records` (from the first) are written into the open transaction
    /// already, outside any savepoint: a commit that failed with its transaction kept
    /// leaves them there, and its retry must not write them again. (Written again, they
    /// would count twice towards the window, and records could be dropped before
    /// `window` newer ones were kept.)
    written: usize,
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
    /// records too). The allocations stay for the next batches (growing them again
    /// after every file commit under load cost ~1% of a shard's time):
    /// [`Unfiled::release`] gives them back when the object goes quiet.
    pub(super) fn clear(&mut self) {
        self.records.clear();
        self.index.clear();
        self.written = 0;
    }

    /// [`Unfiled::clear`], and give the allocations back: a quiet object holds none of
    /// it.
    pub(super) fn release(&mut self) {
        *self = Unfiled::default();
    }

    /// Write the records held and not yet written into the request tables, in order, in
    /// the connection's open transaction outside any savepoint (just before the file
    /// commits), dropping the oldest beyond `window` as [`store::record_requests`] does.
    /// They stay held (and answer lookups) until [`Unfiled::clear`]; a failure part way
    /// leaves the rest for the next try.
    pub(super) fn write(&mut self, conn: &impl Statements, window: usize) -> rusqlite::Result<()> {
        let written = &mut self.written;
        store::record_requests(conn, &self.records[*written..], window, |n| *written += n)
    }

    /// Write the records not yet written, then `batch`'s, inside the running batch's
    /// savepoint (an image batch, which must hold them all): a rollback of the batch
    /// undoes these rows, so they do not count as written.
    pub(super) fn write_within_batch(
        &self,
        conn: &impl Statements,
        batch: &[RecordedCall],
        window: usize,
    ) -> rusqlite::Result<()> {
        write_records(conn, &self.records[self.written..], window)?;
        write_records(conn, batch, window)
    }
}

/// Write `records` into the request tables (see [`Unfiled::write`]).
pub(super) fn write_records(
    conn: &impl Statements,
    records: &[RecordedCall],
    window: usize,
) -> rusqlite::Result<()> {
    store::record_requests(conn, records, window, |_| {})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u8, body: &[u8]) -> RecordedCall {
        ([n; 16], u64::from(n), Recorded::Return(body.to_vec()))
    }

    /// Every request id held in `conn`'s two request tables, sorted, repeats kept.
    fn held(conn: &rusqlite::Connection) -> Vec<u8> {
        let mut ids: Vec<u8> = conn
            .prepare(
                "SELECT id FROM _durable_requests_0 UNION ALL SELECT id FROM _durable_requests_1",
            )
            .unwrap()
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|r| r.unwrap()[0])
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_retried_write_does_not_write_again_or_push_out_newer_records() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _durable_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
             CREATE TABLE _durable_requests_0(id BLOB PRIMARY KEY, kind INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
             CREATE TABLE _durable_requests_1(id BLOB PRIMARY KEY, kind INTEGER NOT NULL, body BLOB NOT NULL) WITHOUT ROWID;
             BEGIN;",
        )
        .unwrap();
        let window = 100;
        let mut u = Unfiled::default();
        u.extend((0..130).map(|n| rec(n, b"x")).collect());
        u.write(&conn, window).unwrap();
        // The file's commit failed with its transaction kept; more batches came.
        u.extend((130..200).map(|n| rec(n, b"y")).collect());
        u.write(&conn, window).unwrap();
        // A second retry finds nothing left to write.
        u.write(&conn, window).unwrap();
        // Each record was written once (the first table took `window` of them, the
        // second the rest): every id, each once.
        assert_eq!(held(&conn), (0..200).collect::<Vec<u8>>());
        // An image batch writes what is not written yet, and does not count it.
        u.extend(vec![rec(200, b"z")]);
        u.write_within_batch(&conn, &[rec(201, b"w")], window)
            .unwrap();
        assert_eq!(u.written, 200);
        // Past the second window the first table is emptied: exactly the records of
        // the second and those after it stay.
        u.clear();
        u.extend((202..230).map(|n| rec(n, b"v")).collect());
        u.write(&conn, window).unwrap();
        assert_eq!(held(&conn), (100..230).collect::<Vec<u8>>());
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
        // A clear keeps the memory for the next batches; a release gives it back.
        assert!(u.records.capacity() >= 3 && u.index.capacity() >= 3);
        u.extend(vec![rec(4, b"d")]);
        assert_eq!(u.get(&[4; 16]), Some((4, Recorded::Return(b"d".to_vec()))));
        u.release();
        assert_eq!(
            (u.records.capacity(), u.index.capacity(), u.written),
            (0, 0, 0)
        );
        assert_eq!(u.get(&[4; 16]), None);
    }
}
