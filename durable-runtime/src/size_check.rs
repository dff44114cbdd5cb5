//! The per-object size limit (`Limits::max_object_bytes`), checked when each writing
//! call or alarm handler ends: the bytes of the pages the object's database holds in
//! use (free pages left out: an object that deleted rows may write again).
//!
//! Counting the pages takes `PRAGMA page_count`, which SQLite compiles anew on every
//! run (every pragma statement runs only once per preparation): a parse per writing
//! call, about 7% of a shard's time under load. So the exact count is taken only when
//! a cheap upper bound could pass the limit. The bound: the pages counted last time,
//! plus every page the connection has written since (its pager's write counter, which
//! counts each page appended to the WAL, by commits and cache spills alike), plus as
//! many pages as its page cache holds now (a page the database grew by is dirty in the
//! cache or was written). Nothing else writes an object's database while its
//! connection is open, and the counters only grow, so the bound never falls below the
//! real count.

use rusqlite::Connection;
use std::cell::Cell;

/// What the last exact count saw (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counted {
    pages: u64,
    page_size: u64,
    writes: u64,
}

/// The bytes in use by `conn`'s database if more than `limit`; `last` carries the last
/// exact count between calls (one per connection).
pub(crate) fn over_size(
    conn: &Connection,
    limit: u64,
    last: &Cell<Option<Counted>>,
) -> rusqlite::Result<Option<u64>> {
    let writes = pages_written(conn);
    if let (Some(c), Some(writes)) = (last.get(), writes) {
        if writes >= c.writes {
            let cached = cache_bytes(conn) / c.page_size.max(512);
            let bound = c.pages + (writes - c.writes) + cached;
            if bound.saturating_mul(c.page_size) <= limit {
                return Ok(None);
            }
        }
    }
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let (pages, page_size) = (pages.max(0) as u64, page_size.max(1) as u64);
    last.set(writes.map(|writes| Counted {
        pages,
        page_size,
        writes,
    }));
    if pages.saturating_mul(page_size) <= limit {
        return Ok(None);
    }
    let used: i64 = conn
        .prepare_cached(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
        )?
        .query_row([], |r| r.get(0))?;
    let used = used.max(0) as u64;
    Ok((used > limit).then_some(used))
}

/// Pages the connection's pagers have written (to the WAL) since it opened.
fn pages_written(conn: &Connection) -> Option<u64> {
    status(conn, rusqlite::ffi::SQLITE_DBSTATUS_CACHE_WRITE)
}

/// Bytes of heap its page caches hold now.
fn cache_bytes(conn: &Connection) -> u64 {
    // Unknown: as if the cache were enormous, so the exact count is taken.
    status(conn, rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED).unwrap_or(u64::MAX / 2)
}

fn status(conn: &Connection, op: std::os::raw::c_int) -> Option<u64> {
    let (mut current, mut high) = (0i64, 0i64);
    // SAFETY: a live connection handle and two out-pointers; no reset.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status64(conn.handle(), op, &mut current, &mut high, 0)
    };
    (rc == rusqlite::ffi::SQLITE_OK && current >= 0).then_some(current as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path) -> Connection {
        let conn = Connection::open(dir.join("o.db")).unwrap();
        conn.pragma_update(None, "page_size", 1024).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "cache_size", -256).unwrap();
        conn.execute_batch("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
            .unwrap();
        conn
    }

    fn exact_used(conn: &Connection) -> u64 {
        conn.query_row(
            "SELECT (page_count - freelist_count) * page_size FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as u64
    }

    /// Grow a fresh database with rows of `bytes` (inside one open transaction with
    /// `in_txn`) until the check reports it past `limit`; every step must report
    /// exactly what counting every time would. Returns the steps the bound spared.
    fn grow(bytes: usize, in_txn: bool) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(dir.path());
        let last = Cell::new(None);
        let limit = 400 * 1024;
        if in_txn {
            conn.execute_batch("BEGIN").unwrap();
        }
        let mut spared = 0;
        for k in 1.. {
            conn.execute(
                "INSERT INTO t(k, v) VALUES (?1, zeroblob(?2))",
                rusqlite::params![k, bytes as i64],
            )
            .unwrap();
            let before = last.get().map(|c: Counted| c.writes);
            let got = over_size(&conn, limit, &last).unwrap();
            let exact = exact_used(&conn);
            assert_eq!(got, (exact > limit).then_some(exact), "after {k} writes");
            if before.is_some() && last.get().map(|c| c.writes) == before {
                spared += 1;
            }
            if got.is_some() {
                break;
            }
        }
        spared
    }

    #[test]
    fn the_bound_never_hides_a_database_past_its_limit() {
        // Small rows, each committed.
        assert!(
            grow(200, false) > 0,
            "the bound never spared an exact count"
        );
        // One open transaction larger than the page cache: most new pages sit dirty in
        // the cache, then spill.
        grow(3000, true);
        // One write far past the limit at once.
        grow(2 << 20, false);
    }
}
