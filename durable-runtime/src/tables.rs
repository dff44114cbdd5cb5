//! The runtime's tables that many objects never use: created by the first write that
//! needs one, read as empty while missing.

use rusqlite::Connection;

/// One of those tables (or a pair used together). SQLite parses every schema entry of a
/// file at each open, so each table an object lacks makes its activations cheaper
/// (six of the nine entries a new object used to get: about a tenth of an
/// activation) and its connection smaller. A table created inside a turn that fails
/// is rolled back with it, so code asks [`has_table`] each time instead of
/// remembering. Creating one changes the schema: that batch ships an image to the
/// log, as any schema change does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lazy {
    /// `_durable_kv`: the key-value API.
    Kv,
    /// `_durable_alarms` and its index by due time.
    Alarms,
    /// `_durable_alarm_failures`: alarms that failed their last attempt.
    AlarmFailures,
    /// `_durable_streams` and `_durable_stream_heads`: resumable streams.
    Streams,
}

impl Lazy {
    /// The table that tells whether this one was created (a C string: the lookup
    /// then allocates nothing, and it runs before every key-value read).
    fn table(self) -> &'static std::ffi::CStr {
        match self {
            Lazy::Kv => c"_durable_kv",
            Lazy::Alarms => c"_durable_alarms",
            Lazy::AlarmFailures => c"_durable_alarm_failures",
            Lazy::Streams => c"_durable_stream_heads",
        }
    }

    /// Its definition, word for word as older files hold it (an image's tables are
    /// compared with a file's by their SQL).
    fn schema(self) -> &'static str {
        match self {
            Lazy::Kv => "CREATE TABLE IF NOT EXISTS _durable_kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;",
            Lazy::Alarms => "CREATE TABLE IF NOT EXISTS _durable_alarms(name TEXT NOT NULL, key TEXT NOT NULL, due_ms INTEGER NOT NULL,
  every_ms INTEGER, args BLOB NOT NULL, attempt INTEGER NOT NULL DEFAULT 0, PRIMARY KEY(name, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS _durable_alarms_due ON _durable_alarms(due_ms);",
            Lazy::AlarmFailures => "CREATE TABLE IF NOT EXISTS _durable_alarm_failures(name TEXT NOT NULL, key TEXT NOT NULL, args BLOB NOT NULL,
  attempts INTEGER NOT NULL, error TEXT NOT NULL, failed_ms INTEGER NOT NULL);",
            Lazy::Streams => "CREATE TABLE IF NOT EXISTS _durable_streams(stream TEXT NOT NULL, seq INTEGER NOT NULL, item BLOB NOT NULL,
  PRIMARY KEY(stream, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _durable_stream_heads(stream TEXT PRIMARY KEY, last_seq INTEGER NOT NULL,
  ended INTEGER NOT NULL) WITHOUT ROWID;",
        }
    }

    /// Empties the table(s).
    pub(crate) fn clear(self) -> &'static str {
        match self {
            Lazy::Kv => "DELETE FROM _durable_kv;",
            Lazy::Alarms => "DELETE FROM _durable_alarms;",
            Lazy::AlarmFailures => "DELETE FROM _durable_alarm_failures;",
            Lazy::Streams => "DELETE FROM _durable_streams; DELETE FROM _durable_stream_heads;",
        }
    }

    /// Every lazy table.
    pub(crate) const ALL: [Lazy; 4] = [Lazy::Kv, Lazy::Alarms, Lazy::AlarmFailures, Lazy::Streams];
}

/// Whether `table` exists in the connection's current view of the file (a lookup in
/// SQLite's parsed schema, no statement).
pub(crate) fn has_table(conn: &Connection, table: Lazy) -> rusqlite::Result<bool> {
    conn.table_exists(Some(c"main"), table.table())
}

thread_local! {
    /// Tables [`ensure_table`] created on this thread so far: a turn that made one
    /// changed its object's schema (see [`created`]).
    static CREATED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many tables [`ensure_table`] has created on this thread: compared before and
/// after a turn, whether it (or, across its waits, another object's turn on the same
/// shard) created one.
pub(crate) fn created() -> u64 {
    CREATED.with(|c| c.get())
}

/// Create `table` if it does not exist yet (inside the caller's transaction).
pub(crate) fn ensure_table(conn: &Connection, table: Lazy) -> rusqlite::Result<()> {
    if !has_table(conn, table)? {
        conn.execute_batch(table.schema())?;
        CREATED.with(|c| c.set(c.get() + 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_table_is_made_by_its_first_write_and_gone_with_a_rolled_back_turn() {
        let conn = Connection::open_in_memory().unwrap();
        for table in Lazy::ALL {
            assert!(!has_table(&conn, table).unwrap());
        }
        // Made inside a turn that fails: rolled back with it, and asked again after.
        conn.execute_batch("SAVEPOINT turn").unwrap();
        ensure_table(&conn, Lazy::Kv).unwrap();
        assert!(has_table(&conn, Lazy::Kv).unwrap());
        conn.execute_batch("ROLLBACK TO turn; RELEASE turn")
            .unwrap();
        assert!(!has_table(&conn, Lazy::Kv).unwrap());
        for table in Lazy::ALL {
            ensure_table(&conn, table).unwrap();
            ensure_table(&conn, table).unwrap();
            assert!(has_table(&conn, table).unwrap());
            conn.execute_batch(table.clear()).unwrap();
        }
        // Word for word the definitions files made before the tables were lazy hold
        // (an image's tables are matched to a file's by their SQL).
        let kv: String = conn
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = '_durable_kv'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            kv,
            "CREATE TABLE _durable_kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID"
        );
        let indexes: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = '_durable_alarms_due'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(indexes, 1);
    }
}
