//! Request records in memory: those not yet in the object's file, and the newest of
//! those that are. A batch's request records (each call's request id, digest and
//! outcome) travel to the host log inside the batch's record; the file gets them only
//! when it commits its open transaction (every few batches, or when the object goes
//! quiet): one run of appends then, instead of writes inside every call's savepoint
//! (a fifth of a shard's time in increments_many). Until then the object answers
//! retries from here. A crash loses nothing: recovery replays the batches' records,
//! request records included, from the log.
//!
//! After a file commit the newest [`KEEP_FILED`] records stay here too, with a floor:
//! every id recorded and not held here is at most the floor. A call whose id is above
//! the floor and not held was never recorded, without reading the file. That is the
//! common case under load: ids begin with the time their caller made them, and calls
//! made at about the same time arrive out of order. Ids at or below the floor are
//! looked up in the set of ids the file's blocks hold (see
//! [`store::record_requests`]), read once after each file commit that needs it, and
//! only an id found there has its block read for its outcome (a retry).

use crate::db::Statements;
use crate::store::{self, Recorded, RecordedCall};
use std::collections::HashMap;

/// How many records already in the file stay held after a file commit.
pub(super) const KEEP_FILED: usize = 256;

/// Request records held in memory, in the order recorded.
#[derive(Default)]
pub(super) struct Unfiled {
    records: Vec<RecordedCall>,
    /// Request id -> position in all records ever held since the last release
    /// (`records[0]` is number `base`). Ids are the callers' own, hashed with foldhash
    /// (seeded per map and per process; SipHash cost a shard ~1% under load). Colliding
    /// ids can only lengthen probes in a map of at most [`KEEP_FILED`] and the records
    /// not yet filed.
    index: HashMap<[u8; 16], u64, foldhash::quality::RandomState>,
    /// The number of `records[0]`: how many were let go from the front.
    base: u64,
    /// How many of all records (from the first) are written into the open transaction
    /// already, outside any savepoint: a commit that failed with its transaction kept
    /// leaves them there, and its retry must not write them again. (Written again, they
    /// would be appended twice.)
    written: u64,
    /// Every id recorded and not held here is at most this; `None` while nothing is
    /// held (then it is the file's largest id, read when asked).
    floor: Option<[u8; 16]>,
    /// Every id the file's records hold, read once an id at or below the floor had to
    /// be looked for there (a caller whose ids come from a clock behind the others'
    /// asks for many); dropped whenever the file's records change.
    file_ids: Option<std::collections::HashSet<[u8; 16]>>,
}

impl Unfiled {
    /// Take a batch's records (it reached the log and its savepoint was released).
    /// `conn` is the object's connection: with nothing held yet, the file's largest id
    /// becomes the floor first (none of these records is in the file).
    pub(super) fn extend(&mut self, conn: &impl Statements, batch: Vec<RecordedCall>) {
        if batch.is_empty() {
            return;
        }
        if self.floor.is_none() {
            // Should the read fail, every id counts as possibly recorded: lookups go
            // to the file, which is slower, never wrong.
            self.floor = Some(store::max_request_id(conn).unwrap_or([0xff; 16]));
        }
        for record in batch {
            // A request id is recorded once: a retry finds it and records nothing.
            if let std::collections::hash_map::Entry::Vacant(slot) = self.index.entry(record.0) {
                slot.insert(self.base + self.records.len() as u64);
                self.records.push(record);
            }
        }
    }

    /// The recorded digest and outcome of request `id`, if held here.
    pub(super) fn get(&self, id: &[u8; 16]) -> Option<(u64, Recorded)> {
        self.index.get(id).map(|&at| {
            let (_, digest, outcome) = &self.records[(at - self.base) as usize];
            (*digest, outcome.clone())
        })
    }

    /// Whether request `id`, not held here (see [`Unfiled::get`]) nor in the running
    /// batch, was certainly never recorded: it is above the floor. With nothing held,
    /// the floor is the file's largest id.
    pub(super) fn above_floor(
        &mut self,
        conn: &impl Statements,
        id: &[u8; 16],
    ) -> rusqlite::Result<bool> {
        // Read each time while nothing is held: records may go into the file without
        // passing through here then (an image batch's, a healed file's).
        let floor = match self.floor {
            Some(floor) => floor,
            None => store::max_request_id(conn)?,
        };
        Ok(*id > floor)
    }

    /// Whether the file's records hold request `id`, an id not held here and at or
    /// below the floor (see [`Unfiled::above_floor`]). Reads every id the file holds
    /// the first time it is asked after the file's records changed; records written
    /// into the open transaction since are all held here.
    pub(super) fn in_file(
        &mut self,
        conn: &impl Statements,
        id: &[u8; 16],
    ) -> rusqlite::Result<bool> {
        let ids = match &mut self.file_ids {
            Some(ids) => ids,
            None => self.file_ids.insert(store::recorded_ids(conn)?),
        };
        Ok(ids.contains(id))
    }

    /// The file committed everything written into its transaction: those records are
    /// filed. The newest [`KEEP_FILED`] of them stay held (with what is not written
    /// yet); the floor rises past those let go. The memory stays for the next batches
    /// (growing it again after every file commit under load cost ~1% of a shard's
    /// time): [`Unfiled::release`] gives it back when the object goes quiet.
    pub(super) fn committed(&mut self) {
        self.file_ids = None;
        // Everything written is now filed.
        let held_filed = (self.written - self.base) as usize;
        let drop = held_filed.saturating_sub(KEEP_FILED);
        if drop == 0 {
            return;
        }
        let mut floor = self.floor.unwrap_or([0; 16]);
        for (at, (id, _, _)) in self.records.drain(..drop).enumerate() {
            floor = floor.max(id);
            if self.index.get(&id) == Some(&(self.base + at as u64)) {
                self.index.remove(&id);
            }
        }
        self.floor = Some(floor);
        self.base += drop as u64;
    }

    /// `batch`'s records went into the file with their batch, which committed (the
    /// file is the durability, `--durability fsync`): held as filed.
    pub(super) fn filed_with_batch(&mut self, conn: &impl Statements, batch: Vec<RecordedCall>) {
        self.extend(conn, batch);
        self.written = self.base + self.records.len() as u64;
        self.committed();
    }

    /// Forget everything held: the transaction the records not yet filed were meant
    /// for is gone (whoever re-applies its batches from the log writes their records
    /// too), or the object goes quiet with everything filed. The memory goes back; the
    /// floor is the file's largest id again.
    pub(super) fn release(&mut self) {
        *self = Unfiled::default();
    }

    /// Write the records held and not yet written into the request records, in order,
    /// in the connection's open transaction outside any savepoint (just before the
    /// file commits), dropping the oldest beyond `window` as
    /// [`store::record_requests`] does. They stay held (and answer lookups) until
    /// [`Unfiled::committed`]; a failure leaves them for the next try.
    pub(super) fn write(&mut self, conn: &impl Statements, window: usize) -> rusqlite::Result<()> {
        let from = (self.written - self.base) as usize;
        let written = &mut self.written;
        store::record_requests(conn, &self.records[from..], window, |n| {
            *written += n as u64
        })
    }

    /// Write the records not yet written, then `batch`'s, inside the running batch's
    /// savepoint (an image batch, which must hold them all): a rollback of the batch
    /// undoes them, so they do not count as written. Once the batch is in the log,
    /// [`Unfiled::release`] forgets them (the file holds them all).
    pub(super) fn write_within_batch(
        &self,
        conn: &impl Statements,
        batch: &[RecordedCall],
        window: usize,
    ) -> rusqlite::Result<()> {
        let from = (self.written - self.base) as usize;
        write_records(conn, &self.records[from..], window)?;
        write_records(conn, batch, window)
    }
}

/// Write `records` into the request records (see [`Unfiled::write`]).
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

    fn file() -> rusqlite::Connection {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE _durable_meta(key TEXT PRIMARY KEY, value ANY) WITHOUT ROWID;
             CREATE TABLE _durable_request_blocks(block INTEGER PRIMARY KEY, first INTEGER NOT NULL, records BLOB NOT NULL);
             BEGIN;",
        )
        .unwrap();
        conn
    }

    /// Every request id held in `conn`'s request records, in order, repeats kept.
    fn held(conn: &rusqlite::Connection) -> Vec<u8> {
        let mut ids = Vec::new();
        for n in 0..=255u8 {
            if store::lookup_request(conn, &[n; 16]).unwrap().is_some() {
                ids.push(n);
            }
        }
        ids
    }

    #[test]
    fn a_retried_write_does_not_write_again_or_push_out_newer_records() {
        let conn = file();
        let window = 100;
        let mut u = Unfiled::default();
        u.extend(&conn, (0..130).map(|n| rec(n, b"x")).collect());
        u.write(&conn, window).unwrap();
        // The file's commit failed with its transaction kept; more batches came.
        u.extend(&conn, (130..200).map(|n| rec(n, b"y")).collect());
        u.write(&conn, window).unwrap();
        // A second retry finds nothing left to write.
        u.write(&conn, window).unwrap();
        // Each record was written once: the newest `window` (and the rest of the block
        // the oldest of them is in) are kept, each once.
        assert_eq!(held(&conn), (64..200).collect::<Vec<u8>>());
        // An image batch writes what is not written yet, and does not count it.
        u.extend(&conn, vec![rec(200, b"z")]);
        u.write_within_batch(&conn, &[rec(201, b"w")], window)
            .unwrap();
        assert_eq!(u.written, 200);
        assert_eq!(held(&conn), (64..202).collect::<Vec<u8>>());
    }

    #[test]
    fn holds_records_by_id_and_the_newest_filed_with_a_floor_below_the_rest() {
        let conn = file();
        let mut u = Unfiled::default();
        // Nothing held: the floor is the file's largest id (none yet).
        assert!(u.above_floor(&conn, &[0; 16]).is_ok_and(|above| !above));
        assert!(u.above_floor(&conn, &[1; 16]).unwrap());
        u.extend(&conn, vec![rec(1, b"a"), rec(2, b"b")]);
        u.extend(&conn, vec![rec(1, b"again"), rec(3, b"c")]);
        assert_eq!(u.records.len(), 3);
        assert_eq!(u.get(&[1; 16]), Some((1, Recorded::Return(b"a".to_vec()))));
        assert_eq!(u.get(&[3; 16]), Some((3, Recorded::Return(b"c".to_vec()))));
        assert_eq!(u.get(&[4; 16]), None);
        // Filed: still held, up to KEEP_FILED of them.
        u.write(&conn, 1000).unwrap();
        u.committed();
        assert_eq!(u.get(&[3; 16]), Some((3, Recorded::Return(b"c".to_vec()))));
        let many: Vec<RecordedCall> = (0..KEEP_FILED as u32 + 10)
            .map(|n| {
                let mut id = [0xa0; 16];
                id[12..].copy_from_slice(&n.to_be_bytes());
                (id, 7, Recorded::Return(vec![]))
            })
            .collect();
        let newest = many.last().unwrap().0;
        let oldest_kept = many[10 + 3 - 3].0;
        u.extend(&conn, many.clone());
        u.write(&conn, 1000).unwrap();
        u.committed();
        assert_eq!(u.records.len(), KEEP_FILED);
        // Let go: the first three and the first ten of `many`; the floor is the largest
        // of them, so an id between them reads the file, one above it does not.
        assert_eq!(u.get(&[1; 16]), None);
        assert_eq!(u.get(&many[9].0), None);
        assert!(u.get(&oldest_kept).is_some() && u.get(&newest).is_some());
        assert!(!u.above_floor(&conn, &many[9].0).unwrap());
        assert!(!u.above_floor(&conn, &[3; 16]).unwrap());
        // Larger than every id recorded.
        let mut unseen = newest;
        unseen[11] = 0xa1;
        assert!(u.above_floor(&conn, &unseen).unwrap());
        // Released: nothing held, and the floor is the file's largest id again.
        u.release();
        assert_eq!(
            (u.records.capacity(), u.index.capacity(), u.written),
            (0, 0, 0)
        );
        assert_eq!(u.get(&newest), None);
        assert!(!u.above_floor(&conn, &newest).unwrap());
        assert!(u.above_floor(&conn, &unseen).unwrap());
        // Records written into the file past this memory (an image's, a healed
        // file's) raise that floor at once.
        store::record_requests(
            &conn,
            &[(unseen, 1, Recorded::Return(vec![]))],
            1000,
            |_| {},
        )
        .unwrap();
        assert!(!u.above_floor(&conn, &unseen).unwrap());
        // At or below the floor, the file's ids tell (read once, until the file's
        // records change).
        assert!(u.in_file(&conn, &many[3].0).unwrap());
        assert!(u.in_file(&conn, &unseen).unwrap());
        let mut never = many[3].0;
        never[0] = 0x9f;
        assert!(!u.in_file(&conn, &never).unwrap());
        u.extend(&conn, vec![(never, 2, Recorded::Return(vec![]))]);
        u.write(&conn, 1000).unwrap();
        u.committed();
        assert!(u.in_file(&conn, &never).unwrap());
    }
}
