//! Change capture: the row changes a batch makes to an object's user tables, as an
//! SQLite changeset (the format of the session extension, which `apply_changes` and
//! the change feed read).
//!
//! SQLite's own session object costs, per batch, a `PRAGMA table_xinfo` prepared and
//! run for every table it sees and a `SELECT` prepared per table to read the rows back
//! when the changeset is built (a fifth of a shard's time per increment). This capture
//! is one preupdate hook per connection that copies the old and new values SQLite hands
//! it, keeps each table's layout across batches (checked against the schema version),
//! and writes the changeset itself: one change per row, its state before the batch
//! against its state after, as the session extension would (rowid tables without a
//! primary key are keyed by rowid, as with `SQLITE_SESSION_OBJCONFIG_ROWID`).

use crate::db::Statements;
use rusqlite::ffi;
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OptionalExtension};
use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::HashMap;
use std::os::raw::{c_char, c_int, c_void};

/// One column value, as SQLite stored it.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Int(i64),
    Real(f64),
    Text(Vec<u8>),
    Blob(Vec<u8>),
    Null,
}

/// A row as the preupdate hook saw it: its rowid and every column (by `cid`).
#[derive(Debug, Clone, PartialEq)]
struct Row {
    rowid: i64,
    vals: Vec<Val>,
}

/// One change reported by the hook.
#[derive(Clone)]
struct Raw {
    table: usize,
    old: Option<Row>,
    new: Option<Row>,
    indirect: bool,
}

/// How a table's columns appear in its changesets.
#[derive(Clone)]
struct Layout {
    /// `cid` of each changeset column; `None`: the rowid (tables without a primary key).
    cols: Vec<Option<usize>>,
    /// The primary-key ordinal of each changeset column (0: not part of it).
    pk: Vec<u8>,
    /// The key's columns (as in `cols`), in primary-key order: the parameters of
    /// `select`.
    key: Vec<Option<usize>>,
    /// Reads one row back by its key: the rowid, then each column of `cols` but the
    /// rowid.
    select: String,
}

/// One row a batch changed: its key, its state before the batch (from its first
/// change: whatever a rolled-back savepoint did was undone, so that is still the state
/// the batch started from), else the row its first change inserted (either holds the
/// key), and whether only triggers changed it.
struct Touched {
    table: usize,
    key: Vec<u8>,
    before: Option<Row>,
    inserted: Option<Row>,
    indirect: bool,
}

/// Rows a batch changed, in the order first changed, found by table and key: by a
/// scan while there are few (most batches change a row or two), through an index past
/// [`TouchedRows::SCAN_MAX`].
#[derive(Default)]
struct TouchedRows {
    rows: Vec<Touched>,
    /// The tables in the order first changed (a change whose key is NULL counts: its
    /// table's place is its first change, as with the session extension).
    tables: Vec<usize>,
    /// (table, key) -> position in `rows`; SipHash, as callers choose the keys.
    index: Option<HashMap<(usize, Vec<u8>), usize>>,
}

impl TouchedRows {
    /// Past this many rows, they are indexed.
    const SCAN_MAX: usize = 16;

    fn find(&self, table: usize, key: &[u8]) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(&(table, key.to_vec())).copied(),
            None => self
                .rows
                .iter()
                .position(|t| t.table == table && t.key == key),
        }
    }

    /// Note a change to `table`, before its row's key is known.
    fn saw_table(&mut self, table: usize) {
        if !self.tables.contains(&table) {
            self.tables.push(table);
        }
    }

    /// Note a change of the row `key` of `table`: its first change records the row
    /// before it (`before`) or the row it inserted; a later one only whether every
    /// change so far was a trigger's.
    fn note(
        &mut self,
        table: usize,
        key: &[u8],
        before: Option<Row>,
        inserted: Option<Row>,
        indirect: bool,
    ) {
        if let Some(i) = self.find(table, key) {
            self.rows[i].indirect &= indirect;
            return;
        }
        let at = self.rows.len();
        self.rows.push(Touched {
            table,
            key: key.to_vec(),
            before,
            inserted,
            indirect,
        });
        match &mut self.index {
            Some(index) => {
                index.insert((table, key.to_vec()), at);
            }
            None if self.rows.len() > Self::SCAN_MAX => {
                self.index = Some(
                    self.rows
                        .iter()
                        .enumerate()
                        .map(|(i, t)| ((t.table, t.key.clone()), i))
                        .collect(),
                );
            }
            None => {}
        }
    }

    /// The rows grouped by table, tables in the order first changed, each table's rows
    /// in the order first changed.
    fn into_grouped(self) -> Vec<Touched> {
        let (mut rows, tables) = (self.rows, self.tables);
        if tables.len() > 1 {
            // Stable: each table's rows keep their order.
            rows.sort_by_key(|t| tables.iter().position(|&r| r == t.table));
        }
        rows
    }
}

impl State {
    /// Most changes whose (emptied) list a capture keeps for the next batch: a batch
    /// that changed more gives the memory back, as a capture waits with a quiet object.
    const KEEP_CHANGES: usize = 1024;

    fn trim(&mut self) {
        if self.changes.capacity() > Self::KEEP_CHANGES {
            self.changes = Vec::new();
        }
    }
}

/// What the hook fills (boxed: SQLite holds a pointer to it).
#[derive(Default)]
struct State {
    /// Names of the tables seen (index = `Raw::table`).
    tables: Vec<Vec<u8>>,
    changes: Vec<Raw>,
    /// A value SQLite could not hand over (out of memory): the changeset fails.
    failed: bool,
}

/// The capture of one connection's changes, from `start` (or the last
/// `changeset`/`reset`) on. The connection must outlive it.
pub(crate) struct ChangeCapture {
    db: *mut ffi::sqlite3,
    state: Box<State>,
    /// Table layouts by table (as in `State::tables`), valid for `schema`.
    layouts: Vec<Option<Layout>>,
    schema: i64,
}

impl ChangeCapture {
    /// Start capturing `conn`'s changes to user tables (replaces any other preupdate
    /// hook on it).
    pub(crate) fn start(conn: &Connection) -> Result<Self, String> {
        // SAFETY: the handle of a live connection; used only while it lives.
        let db = unsafe { conn.handle() };
        let mut state: Box<State> = Box::default();
        let ctx = &mut *state as *mut State as *mut c_void;
        // SAFETY: `ctx` points into the box, which lives (at a fixed address) until
        // Drop removes the hook.
        let before = unsafe { ffi::sqlite3_preupdate_hook(db, Some(on_change), ctx) };
        if !before.is_null() {
            // Another capture runs on this connection: leave it in place.
            // SAFETY: puts back the hook that was there.
            unsafe { ffi::sqlite3_preupdate_hook(db, Some(on_change), before) };
            return Err("a change capture is already running on this connection".into());
        }
        Ok(ChangeCapture {
            db,
            state,
            layouts: Vec::new(),
            schema: i64::MIN,
        })
    }

    /// Forget what was captured so far (a batch that was rolled back, or one that
    /// shipped an image instead).
    pub(crate) fn reset(&mut self) {
        self.state.changes.clear();
        self.state.trim();
        self.state.failed = false;
    }

    /// The changeset of everything captured since the capture started or was last
    /// reset, then reset. `conn` is the captured connection, `schema` its current
    /// `PRAGMA schema_version` (table layouts are re-read when it moves).
    pub(crate) fn changeset(
        &mut self,
        conn: &impl Statements,
        schema: i64,
    ) -> Result<Vec<u8>, String> {
        if std::mem::take(&mut self.state.failed) {
            self.state.changes.clear();
            return Err("capturing the batch's changes ran out of memory".into());
        }
        self.check_schema(schema);
        // Taken for the loop and put back empty: the next batch reuses its memory.
        let mut changes = std::mem::take(&mut self.state.changes);
        let touched = self.touched_rows(conn, changes.drain(..));
        self.state.changes = changes;
        self.state.trim();
        // The row as the batch leaves it (read back, as the session extension does: a
        // savepoint rolled back after the hook saw a change undid it).
        self.encode(touched?, |_, layout, probe| current(conn, layout, probe))
    }

    /// Where the changes captured so far end: taken as a call starts, so that
    /// [`ChangeCapture::changes_until`] can undo that call alone if it fails.
    pub(crate) fn mark(&self) -> usize {
        self.state.changes.len()
    }

    /// The changeset that takes the rows this capture saw from their state when it
    /// started (or was last reset) to their state at `mark`, built while the
    /// connection still holds every change after `mark`: a row changed after it is
    /// taken from its first such change's old values, any other as it is now. Applied
    /// once the connection is rolled back to the capture's start, it leaves exactly
    /// the changes made before `mark`: a failed call is undone without a savepoint of
    /// its own, and the calls of its batch before it stand. Captures nothing.
    ///
    /// `Err` when that would not be exact: a value the hook could not copy, a change
    /// before `mark` made by a trigger or a foreign-key action (applying the changeset
    /// would run them again), or one to a row keyed by NULL (not captured). The caller
    /// checks that the schema is the one the capture started with.
    pub(crate) fn changes_until(
        &mut self,
        conn: &impl Statements,
        schema: i64,
        mark: usize,
    ) -> Result<Vec<u8>, String> {
        if self.state.failed {
            return Err("capturing the batch's changes ran out of memory".into());
        }
        self.check_schema(schema);
        let raws = &self.state.changes;
        if mark > raws.len() {
            return Err("the capture restarted after the mark".into());
        }
        if raws[..mark].iter().any(|r| r.indirect) {
            return Err(
                "a trigger or a foreign-key action changed rows earlier in the batch".into(),
            );
        }
        let mut key = Vec::new();
        let mut later: HashMap<(usize, Vec<u8>), Option<Row>> = HashMap::new();
        for (i, raw) in raws.iter().enumerate() {
            let layout = layout_for(&mut self.layouts, &self.state.tables, conn, raw.table)?;
            for (row, old) in [(&raw.old, true), (&raw.new, false)] {
                let Some(row) = row else { continue };
                if !key_of(layout, row, &mut key) {
                    if i < mark {
                        return Err("a row keyed by NULL changed earlier in the batch".into());
                    }
                    continue;
                }
                if i >= mark {
                    // First seen through its old values: the row as it was at `mark`;
                    // through its new ones only: it did not exist then.
                    later
                        .entry((raw.table, key.clone()))
                        .or_insert_with(|| old.then(|| row.clone()));
                }
            }
        }
        let raws: Vec<Raw> = self.state.changes.iter().map(Raw::clone).collect();
        let touched = self.touched_rows(conn, raws)?;
        self.encode(touched, |t, layout, probe| {
            match later.get(&(t.table, t.key.clone())) {
                Some(at_mark) => Ok(at_mark.clone()),
                None => current(conn, layout, probe),
            }
        })
    }

    /// Table layouts are valid for one schema version: forget them when it moved.
    fn check_schema(&mut self, schema: i64) {
        if schema != self.schema {
            self.layouts.clear();
            self.schema = schema;
        }
    }

    /// The rows `raws` changed, each with its state before its first change.
    fn touched_rows(
        &mut self,
        conn: &impl Statements,
        raws: impl IntoIterator<Item = Raw>,
    ) -> Result<TouchedRows, String> {
        let mut touched = TouchedRows::default();
        let mut key = Vec::new();
        for raw in raws {
            let layout = layout_for(&mut self.layouts, &self.state.tables, conn, raw.table)?;
            touched.saw_table(raw.table);
            if let Some(old) = raw.old {
                if key_of(layout, &old, &mut key) {
                    touched.note(raw.table, &key, Some(old), None, raw.indirect);
                }
            }
            if let Some(new) = raw.new {
                if key_of(layout, &new, &mut key) {
                    touched.note(raw.table, &key, None, Some(new), raw.indirect);
                }
            }
        }
        Ok(touched)
    }

    /// The changeset of `touched`, each row against its state `after` gives (called
    /// with the row, its table's layout and a row holding its key).
    fn encode(
        &self,
        touched: TouchedRows,
        mut after: impl FnMut(&Touched, &Layout, &Row) -> Result<Option<Row>, String>,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut header_for = None;
        let mut changed: Vec<bool> = Vec::new();
        for t in touched.into_grouped() {
            let name = &self.state.tables[t.table];
            let layout = self.layouts[t.table].as_ref().expect("read with the rows");
            let Some(probe) = t.before.as_ref().or(t.inserted.as_ref()) else {
                continue;
            };
            let after = after(&t, layout, probe)?;
            let op = match (&t.before, &after) {
                (None, None) => continue,
                (None, Some(_)) => ffi::SQLITE_INSERT,
                (Some(_), None) => ffi::SQLITE_DELETE,
                (Some(b), Some(a)) => {
                    changed.clear();
                    changed.extend(layout.cols.iter().map(|c| value(b, *c) != value(a, *c)));
                    if !changed.contains(&true) {
                        continue;
                    }
                    ffi::SQLITE_UPDATE
                }
            };
            if header_for != Some(t.table) {
                header_for = Some(t.table);
                out.push(b'T');
                put_varint(&mut out, layout.cols.len() as u64);
                out.extend_from_slice(&layout.pk);
                out.extend_from_slice(name);
                out.push(0);
            }
            out.push(op as u8);
            out.push(t.indirect as u8);
            match (&t.before, &after) {
                (None, Some(a)) => put_record(&mut out, layout, a, |_| true),
                (Some(b), None) => put_record(&mut out, layout, b, |_| true),
                (Some(b), Some(a)) => {
                    put_record(&mut out, layout, b, |i| changed[i] || layout.pk[i] != 0);
                    put_record(&mut out, layout, a, |i| changed[i]);
                }
                (None, None) => unreachable!("skipped above"),
            }
        }
        Ok(out)
    }
}

/// Apply a changeset of [`ChangeCapture::changes_until`] to the connection it was
/// built on, rolled back to the capture's start: any conflict means the rows are not
/// as the capture saw them, and fails (SQLite undoes what it applied).
pub(crate) fn apply_exactly(conn: &Connection, changeset: &[u8]) -> Result<(), String> {
    use rusqlite::session::ConflictAction;
    conn.apply_strm(&mut &changeset[..], None::<fn(&str) -> bool>, |_, _| {
        ConflictAction::SQLITE_CHANGESET_ABORT
    })
    .map_err(|e| format!("undoing a failed call from the batch's captured changes: {e}"))
}

/// Table `table`'s layout (its name in `tables`), read on first use.
fn layout_for<'a>(
    layouts: &'a mut Vec<Option<Layout>>,
    tables: &[Vec<u8>],
    conn: &impl Statements,
    table: usize,
) -> Result<&'a Layout, String> {
    if layouts.len() <= table {
        layouts.resize(table + 1, None);
    }
    if layouts[table].is_none() {
        layouts[table] = Some(layout_of(conn, &tables[table])?);
    }
    Ok(layouts[table].as_ref().expect("just read"))
}

impl Drop for ChangeCapture {
    fn drop(&mut self) {
        // SAFETY: the connection is still open (it outlives the capture); removing the
        // hook before the box is freed leaves SQLite no dangling pointer.
        unsafe {
            ffi::sqlite3_preupdate_hook(self.db, None, std::ptr::null_mut());
        }
    }
}

/// The tables whose changes are captured: every table but the runtime's own
/// bookkeeping tables (the key-value table, the alarm tables and the stream tables hold
/// user state and are captured).
fn user_table(name: &[u8]) -> bool {
    !name.starts_with(b"_durable_")
        || matches!(
            name,
            b"_durable_kv"
                | b"_durable_alarms"
                | b"_durable_alarm_failures"
                | b"_durable_streams"
                | b"_durable_stream_heads"
        )
}

/// Write the row's key (its primary-key values, or rowid) into `key`; `false` if one
/// is NULL (such rows are not captured, as in the session extension).
fn key_of(layout: &Layout, row: &Row, key: &mut Vec<u8>) -> bool {
    key.clear();
    for col in &layout.key {
        let v = value(row, *col);
        if matches!(*v, Val::Null) {
            return false;
        }
        put_value(key, &v);
    }
    true
}

/// Column `col` of `row` (`None`: its rowid), borrowed where it is stored.
fn value(row: &Row, col: Option<usize>) -> Cow<'_, Val> {
    match col.map(|c| row.vals.get(c)) {
        None => Cow::Owned(Val::Int(row.rowid)),
        Some(Some(v)) => Cow::Borrowed(v),
        Some(None) => Cow::Owned(Val::Null),
    }
}

/// Append a changeset record: every column, the ones `include` leaves out as
/// "undefined".
fn put_record(out: &mut Vec<u8>, layout: &Layout, row: &Row, include: impl Fn(usize) -> bool) {
    for (i, col) in layout.cols.iter().enumerate() {
        if include(i) {
            put_value(out, &value(row, *col));
        } else {
            out.push(0);
        }
    }
}

fn put_value(out: &mut Vec<u8>, v: &Val) {
    match v {
        Val::Int(i) => {
            out.push(ffi::SQLITE_INTEGER as u8);
            out.extend_from_slice(&i.to_be_bytes());
        }
        Val::Real(r) => {
            out.push(ffi::SQLITE_FLOAT as u8);
            out.extend_from_slice(&r.to_bits().to_be_bytes());
        }
        Val::Text(t) => {
            out.push(ffi::SQLITE_TEXT as u8);
            put_varint(out, t.len() as u64);
            out.extend_from_slice(t);
        }
        Val::Blob(b) => {
            out.push(ffi::SQLITE_BLOB as u8);
            put_varint(out, b.len() as u64);
            out.extend_from_slice(b);
        }
        Val::Null => out.push(ffi::SQLITE_NULL as u8),
    }
}

/// SQLite's variable-length integer: big-endian groups of 7 bits, the high bit set on
/// all but the last byte; a ninth byte carries 8 bits.
fn put_varint(out: &mut Vec<u8>, v: u64) {
    if v & (0xff00_0000u64 << 32) != 0 {
        let mut buf = [0u8; 9];
        buf[8] = v as u8;
        let mut rest = v >> 8;
        for b in buf[..8].iter_mut().rev() {
            *b = (rest as u8 & 0x7f) | 0x80;
            rest >>= 7;
        }
        out.extend_from_slice(&buf);
        return;
    }
    let mut buf = [0u8; 10];
    let mut n = 0;
    let mut rest = v;
    loop {
        buf[n] = (rest as u8 & 0x7f) | 0x80;
        n += 1;
        rest >>= 7;
        if rest == 0 {
            break;
        }
    }
    buf[0] &= 0x7f;
    out.extend(buf[..n].iter().rev());
}

/// Most table layouts a thread keeps for other captures (past it, it starts over).
const SHARED_LAYOUTS_MAX: usize = 512;

thread_local! {
    /// Table layouts read on this thread, by table name and `CREATE` text (which
    /// SQLite rewrites on every `ALTER TABLE`, so it fixes the columns, their order, the
    /// key and hidden columns). Objects of a class share their tables' layouts: an
    /// object's capture starts empty at every open of its file (an alarm waking a quiet
    /// object, the first write after an activation), and `pragma_table_xinfo` prepares
    /// a statement inside on every run (about 35 µs a table here).
    static SHARED_LAYOUTS: RefCell<HashMap<(Vec<u8>, String), Layout>> =
        RefCell::new(HashMap::new());
}

/// The layout of table `name`: from this thread's shared layouts when another object
/// had a table of the same name and definition, else read (and shared).
fn layout_of(conn: &impl Statements, name: &[u8]) -> Result<Layout, String> {
    let text = std::str::from_utf8(name).map_err(|e| e.to_string())?;
    let sql: Option<String> = conn
        .with(
            "SELECT sql FROM main.sqlite_schema WHERE type = 'table' AND name = ?1",
            |st| st.query_row([text], |r| r.get(0)).optional(),
        )
        .map_err(|e| e.to_string())?;
    let Some(sql) = sql else {
        return read_layout(conn.conn(), name);
    };
    let key = (name.to_vec(), sql);
    if let Some(layout) = SHARED_LAYOUTS.with(|m| m.borrow().get(&key).cloned()) {
        return Ok(layout);
    }
    let layout = read_layout(conn.conn(), name)?;
    SHARED_LAYOUTS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= SHARED_LAYOUTS_MAX {
            m.clear();
        }
        m.insert(key, layout.clone());
    });
    Ok(layout)
}

/// A table's changeset layout, from `PRAGMA table_xinfo` (hidden columns left out; a
/// table without a primary key is keyed by its rowid, as column 0).
fn read_layout(conn: &Connection, name: &[u8]) -> Result<Layout, String> {
    let name = std::str::from_utf8(name).map_err(|e| e.to_string())?;
    let mut st = conn
        .prepare_cached(
            "SELECT cid, name, pk, hidden FROM pragma_table_xinfo(?1, 'main') ORDER BY cid",
        )
        .map_err(|e| e.to_string())?;
    let mut cols = Vec::new();
    let mut names = Vec::new();
    let mut pk = Vec::new();
    let rows = st
        .query_map([name], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })
        .map_err(|e| e.to_string())?;
    for row in rows {
        let (cid, column, key, hidden) = row.map_err(|e| e.to_string())?;
        if hidden == 0 {
            cols.push(Some(cid as usize));
            names.push(quote(&column));
            pk.push(key.clamp(0, 255) as u8);
        }
    }
    let by_rowid = !cols.is_empty() && pk.iter().all(|&k| k == 0);
    let mut keys: Vec<(u8, &str)> = names
        .iter()
        .zip(&pk)
        .filter(|(_, &k)| k != 0)
        .map(|(n, &k)| (k, n.as_str()))
        .collect();
    keys.sort();
    let filter: Vec<String> = if by_rowid {
        vec!["_rowid_ = ?1".into()]
    } else {
        keys.iter()
            .enumerate()
            .map(|(i, (_, n))| format!("{n} = ?{}", i + 1))
            .collect()
    };
    let select = format!(
        "SELECT {}{}{} FROM main.{} WHERE {}",
        if by_rowid { "_rowid_" } else { "0" },
        if names.is_empty() { "" } else { ", " },
        names.join(", "),
        quote(name),
        filter.join(" AND ")
    );
    if by_rowid {
        cols.insert(0, None);
        pk.insert(0, 1);
    }
    let mut key: Vec<(u8, Option<usize>)> = cols
        .iter()
        .zip(&pk)
        .filter(|(_, &k)| k != 0)
        .map(|(c, &k)| (k, *c))
        .collect();
    key.sort_by_key(|(k, _)| *k);
    let key = key.into_iter().map(|(_, c)| c).collect();
    Ok(Layout {
        cols,
        pk,
        key,
        select,
    })
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

/// The row with `probe`'s key as it is now, if there is one.
fn current(conn: &impl Statements, layout: &Layout, probe: &Row) -> Result<Option<Row>, String> {
    conn.with(&layout.select, |st| {
        for (i, col) in layout.key.iter().enumerate() {
            st.raw_bind_parameter(i + 1, &*value(probe, *col))?;
        }
        let mut rows = st.raw_query();
        let Some(r) = rows.next()? else {
            return Ok(None);
        };
        let width = layout.cols.iter().flatten().max().map_or(0, |m| m + 1);
        let mut row = Row {
            rowid: r.get::<_, i64>(0)?,
            vals: vec![Val::Null; width],
        };
        for (i, col) in layout.cols.iter().flatten().enumerate() {
            row.vals[*col] = match r.get_ref(i + 1)? {
                ValueRef::Integer(v) => Val::Int(v),
                ValueRef::Real(v) => Val::Real(v),
                ValueRef::Text(t) => Val::Text(t.to_vec()),
                ValueRef::Blob(b) => Val::Blob(b.to_vec()),
                ValueRef::Null => Val::Null,
            };
        }
        Ok(Some(row))
    })
    .map_err(|e| e.to_string())
}

impl rusqlite::ToSql for Val {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Val::Int(v) => ValueRef::Integer(*v),
            Val::Real(v) => ValueRef::Real(*v),
            Val::Text(t) => ValueRef::Text(t),
            Val::Blob(b) => ValueRef::Blob(b),
            Val::Null => ValueRef::Null,
        }))
    }
}

/// The preupdate hook: copy the row's old and new values.
unsafe extern "C" fn on_change(
    ctx: *mut c_void,
    db: *mut ffi::sqlite3,
    op: c_int,
    zdb: *const c_char,
    table: *const c_char,
    key1: i64,
    key2: i64,
) {
    // SAFETY: `ctx` is the capture's boxed state (see `start`); SQLite passes
    // NUL-terminated names and calls the hook on the connection's own thread.
    let state = unsafe { &mut *(ctx as *mut State) };
    let (zdb, name) = unsafe {
        (
            std::ffi::CStr::from_ptr(zdb).to_bytes(),
            std::ffi::CStr::from_ptr(table).to_bytes(),
        )
    };
    if zdb != b"main" || !user_table(name) {
        return;
    }
    let table = match state.tables.iter().position(|t| t == name) {
        Some(i) => i,
        None => {
            state.tables.push(name.to_vec());
            state.tables.len() - 1
        }
    };
    // SAFETY: inside a preupdate callback on `db`, as these calls require.
    let (n, depth) = unsafe {
        (
            ffi::sqlite3_preupdate_count(db),
            ffi::sqlite3_preupdate_depth(db),
        )
    };
    let read = |new: bool, rowid: i64, failed: &mut bool| -> Row {
        let mut vals = Vec::with_capacity(n.max(0) as usize);
        for i in 0..n {
            let mut v: *mut ffi::sqlite3_value = std::ptr::null_mut();
            // SAFETY: as above; `i` is below the column count.
            let rc = unsafe {
                if new {
                    ffi::sqlite3_preupdate_new(db, i, &mut v)
                } else {
                    ffi::sqlite3_preupdate_old(db, i, &mut v)
                }
            };
            if rc != ffi::SQLITE_OK || v.is_null() {
                *failed = true;
                vals.push(Val::Null);
                continue;
            }
            // SAFETY: `v` is a protected value valid for this callback.
            vals.push(unsafe { to_val(v) });
        }
        Row { rowid, vals }
    };
    let mut failed = false;
    let old = (op != ffi::SQLITE_INSERT).then(|| read(false, key1, &mut failed));
    let new = (op != ffi::SQLITE_DELETE).then(|| read(true, key2, &mut failed));
    state.failed |= failed;
    state.changes.push(Raw {
        table,
        old,
        new,
        indirect: depth > 0,
    });
}

/// Copy an SQLite value.
///
/// # Safety
/// `v` must be a valid value for the duration of the call.
unsafe fn to_val(v: *mut ffi::sqlite3_value) -> Val {
    // SAFETY: the caller's promise; blobs and texts are read with their byte length.
    unsafe {
        match ffi::sqlite3_value_type(v) {
            ffi::SQLITE_INTEGER => Val::Int(ffi::sqlite3_value_int64(v)),
            ffi::SQLITE_FLOAT => Val::Real(ffi::sqlite3_value_double(v)),
            ffi::SQLITE_TEXT => {
                let p = ffi::sqlite3_value_text(v);
                let n = ffi::sqlite3_value_bytes(v).max(0) as usize;
                Val::Text(if p.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(p, n).to_vec()
                })
            }
            ffi::SQLITE_BLOB => {
                let p = ffi::sqlite3_value_blob(v) as *const u8;
                let n = ffi::sqlite3_value_bytes(v).max(0) as usize;
                Val::Blob(if p.is_null() {
                    Vec::new()
                } else {
                    std::slice::from_raw_parts(p, n).to_vec()
                })
            }
            _ => Val::Null,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::session::{ConflictAction, ConflictType};

    const SETUP: &str = "
        CREATE TABLE plain(a, b);
        CREATE TABLE ipk(id INTEGER PRIMARY KEY, v);
        CREATE TABLE tpk(k TEXT PRIMARY KEY, v REAL, w BLOB);
        CREATE TABLE wr(a INT, b TEXT, c, PRIMARY KEY(b, a)) WITHOUT ROWID;
        CREATE TABLE _durable_kv(key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
        CREATE TABLE _durable_requests(seq INTEGER PRIMARY KEY, body);
        INSERT INTO plain VALUES (1, 'x'), (2, NULL);
        INSERT INTO ipk VALUES (1, 'one'), (2, 'two'), (3, 'three');
        INSERT INTO tpk VALUES ('a', 1.5, x'00'), ('b', 2.0, NULL);
        INSERT INTO wr VALUES (1, 'p', 'c1'), (2, 'p', 'c2');";

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(SETUP).unwrap();
        c
    }

    fn schema(c: &Connection) -> i64 {
        c.query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap()
    }

    /// Every captured table's rows, as text (rowids included for tables without a
    /// primary key, which changesets key by rowid; other tables' hidden rowids are not
    /// part of a changeset, with the session extension either).
    fn dump(c: &Connection) -> Vec<String> {
        let tables: Vec<(String, String)> = c
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .filter(|(n, _): &(String, String)| user_table(n.as_bytes()))
            .collect();
        let mut out = Vec::new();
        for (name, sql) in tables {
            let rowid = if sql.contains("PRIMARY KEY") {
                ""
            } else {
                "rowid, "
            };
            let mut st = c
                .prepare(&format!("SELECT {rowid}* FROM {name} ORDER BY 1, 2"))
                .unwrap();
            let n = st.column_count();
            let rows = st
                .query_map([], |r| {
                    let mut s = format!("{name}:");
                    for i in 0..n {
                        let v: rusqlite::types::Value = r.get(i)?;
                        s.push_str(&format!(" {v:?}"));
                    }
                    Ok(s)
                })
                .unwrap();
            out.extend(rows.map(|r| r.unwrap()));
        }
        out
    }

    /// Apply `changeset` strictly: any conflict fails the test.
    fn apply(c: &Connection, changeset: &[u8]) {
        c.apply_strm(
            &mut &changeset[..],
            None::<fn(&str) -> bool>,
            |conflict: ConflictType, _| {
                panic!("conflict applying the capture's changeset: {conflict:?}")
            },
        )
        .unwrap();
    }

    const BATCHES: &[&str] = &[
        "UPDATE ipk SET v = 'uno' WHERE id = 1; UPDATE ipk SET v = 'eins' WHERE id = 1;
         INSERT INTO ipk VALUES (9, 'nine'); DELETE FROM ipk WHERE id = 2;",
        "UPDATE ipk SET id = 20 WHERE id = 3;",
        "UPDATE plain SET b = 'y' WHERE a = 1; DELETE FROM plain WHERE a = 2;
         INSERT INTO plain VALUES (3, x'ff');",
        "INSERT INTO tpk VALUES ('c', 3, zeroblob(3)); DELETE FROM tpk WHERE k = 'c';",
        "DELETE FROM tpk WHERE k = 'a'; INSERT INTO tpk VALUES ('a', 7.25, x'01');",
        "UPDATE tpk SET k = 'z' WHERE k = 'b';",
        "INSERT OR REPLACE INTO tpk VALUES ('a', 9, NULL); REPLACE INTO ipk VALUES (1, 'r');",
        "UPDATE wr SET c = 'new' WHERE a = 1; UPDATE wr SET a = 5 WHERE a = 2;
         INSERT INTO wr VALUES (3, 'q', NULL);",
        "INSERT INTO _durable_kv VALUES ('k', x'0102');
         INSERT INTO _durable_requests(body) VALUES (1);",
        "UPDATE ipk SET v = v WHERE id = 1;",
        "INSERT INTO tpk VALUES ('long', -1e300, zeroblob(20000));
         UPDATE ipk SET v = printf('%.300c', 'x') WHERE id = 9;
         INSERT INTO ipk VALUES (-9223372036854775808, 9223372036854775807);",
        "ALTER TABLE ipk ADD COLUMN extra DEFAULT 4; UPDATE ipk SET extra = 5 WHERE id = 9;",
        "DELETE FROM plain; DELETE FROM wr; UPDATE ipk SET v = NULL;",
        "SAVEPOINT turn; INSERT INTO ipk(id, v) VALUES (50, 'kept'); RELEASE turn;
         SAVEPOINT turn; INSERT INTO ipk(id, v) VALUES (51, 'undone');
         UPDATE ipk SET v = 'undone' WHERE id = 50; DELETE FROM tpk;
         ROLLBACK TO turn; RELEASE turn;",
    ];

    #[test]
    fn applying_each_batch_capture_to_the_state_before_it_gives_the_state_after_it() {
        let live = db();
        let replica = db();
        let mut capture = ChangeCapture::start(&live).unwrap();
        for (i, batch) in BATCHES.iter().enumerate() {
            live.execute_batch(batch).unwrap();
            let changes = capture.changeset(&live, schema(&live)).unwrap();
            if batch.starts_with("ALTER") {
                // Schema changes travel as images, not changesets: mirror it by hand.
                replica
                    .execute_batch("ALTER TABLE ipk ADD COLUMN extra DEFAULT 4")
                    .unwrap();
            }
            apply(&replica, &changes);
            assert_eq!(dump(&live), dump(&replica), "after batch {i}: {batch}");
        }
        // Unchanged rows and uncaptured tables make no changeset.
        live.execute_batch(BATCHES[9]).unwrap();
        live.execute_batch("INSERT INTO _durable_requests(body) VALUES (2)")
            .unwrap();
        assert!(capture.changeset(&live, schema(&live)).unwrap().is_empty());
    }

    #[test]
    fn the_changeset_matches_the_session_extension_where_both_define_it() {
        for batch in BATCHES.iter().filter(|b| !b.starts_with("ALTER")) {
            let ours = db();
            let mut capture = ChangeCapture::start(&ours).unwrap();
            ours.execute_batch(batch).unwrap();
            let mine = capture.changeset(&ours, schema(&ours)).unwrap();
            drop(capture);
            let theirs = db();
            let mut session = rusqlite::session::Session::new(&theirs).unwrap();
            session.table_filter(Some(|t: &str| user_table(t.as_bytes())));
            session.attach::<&str>(None).unwrap();
            theirs.execute_batch(batch).unwrap();
            let mut reference = Vec::new();
            session.changeset_strm(&mut reference).unwrap();
            // Same effect: both applied to the state before give the same state.
            let (a, b) = (db(), db());
            apply(&a, &mine);
            if !reference.is_empty() {
                b.apply_strm(
                    &mut &reference[..],
                    None::<fn(&str) -> bool>,
                    |_: ConflictType, _| ConflictAction::SQLITE_CHANGESET_OMIT,
                )
                .unwrap();
            }
            if !batch.contains("plain") {
                // (The session extension without its rowid option skips `plain`.)
                assert_eq!(dump(&a), dump(&b), "{batch}");
            }
            assert_eq!(dump(&a), dump(&ours), "{batch}");
        }
    }

    #[test]
    fn a_reset_drops_what_was_captured_and_a_second_capture_is_refused() {
        let c = db();
        let mut capture = ChangeCapture::start(&c).unwrap();
        c.execute_batch("UPDATE ipk SET v = 'gone' WHERE id = 1")
            .unwrap();
        capture.reset();
        assert!(capture.changeset(&c, schema(&c)).unwrap().is_empty());
        assert!(ChangeCapture::start(&c).is_err());
        c.execute_batch("UPDATE ipk SET v = 'kept' WHERE id = 1")
            .unwrap();
        assert!(!capture.changeset(&c, schema(&c)).unwrap().is_empty());
        drop(capture);
        let again = ChangeCapture::start(&c).unwrap();
        drop(again);
    }

    /// One random statement over every kind of table: key changes, `REPLACE`, and one
    /// that fails once either of its keys is taken, perhaps after inserting the first.
    fn random_statement(rnd: &mut impl FnMut(u64) -> u64) -> String {
        let (k, k2, v) = (rnd(30), rnd(30), rnd(40));
        match rnd(13) {
            0 => format!("INSERT OR IGNORE INTO ipk VALUES ({k}, 'v{v}')"),
            1 => format!("UPDATE ipk SET v = 'u{v}' WHERE id = {k}"),
            2 => format!("UPDATE ipk SET id = {k2} WHERE id = {k}"),
            3 => format!("DELETE FROM ipk WHERE id = {k}"),
            4 => format!(
                "INSERT OR REPLACE INTO tpk VALUES ('{k}', {v}, x'0{}')",
                v % 10
            ),
            5 => format!("UPDATE tpk SET k = '{k2}' WHERE k = '{k}'"),
            6 => format!("DELETE FROM tpk WHERE k = '{k}'"),
            7 => format!("INSERT INTO plain VALUES ({k}, {v})"),
            8 => format!("UPDATE plain SET b = {v} WHERE a = {k}"),
            9 => format!("DELETE FROM plain WHERE a = {k}"),
            10 => format!("INSERT OR REPLACE INTO wr VALUES ({k}, 'p{}', {v})", v % 3),
            11 => format!("UPDATE wr SET a = {k2} WHERE a = {k}"),
            _ => format!("INSERT INTO ipk VALUES ({k}, 'x'), ({k2}, 'y')"),
        }
    }

    /// Batches of calls of random statements (some failing half way, some inside the
    /// call's own rolled-back savepoint), a third of the calls failing: each failed call
    /// undone from the capture (the batch rolled back to its start, then the changes
    /// before the call re-applied) must leave what a savepoint per call leaves, and the
    /// batch's changeset must still replay onto a replica.
    #[test]
    fn a_failed_call_undone_from_the_capture_leaves_what_a_savepoint_would() {
        let mut seed: u64 = 0xca11;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let (live, reference, replica) = (db(), db(), db());
        let mut capture = ChangeCapture::start(&live).unwrap();
        let (mut undone, mut kept) = (0, 0);
        for batch in 0..400 {
            live.execute_batch("SAVEPOINT b").unwrap();
            reference.execute_batch("SAVEPOINT b").unwrap();
            for call in 0..1 + rnd(10) {
                let mark = capture.mark();
                reference.execute_batch("SAVEPOINT c").unwrap();
                let inner = (rnd(5) == 0).then(|| rnd(6));
                for i in 0..1 + rnd(6) {
                    if inner == Some(i) {
                        live.execute_batch("SAVEPOINT u").unwrap();
                        reference.execute_batch("SAVEPOINT u").unwrap();
                    }
                    let sql = random_statement(&mut rnd);
                    let failed = live.execute(&sql, []).is_err();
                    assert_eq!(failed, reference.execute(&sql, []).is_err(), "{sql}");
                }
                if inner.is_some() {
                    let end = "ROLLBACK TO u; RELEASE u";
                    for c in [&live, &reference] {
                        // (`u` may not have been reached.)
                        let _ = c.execute_batch(end);
                    }
                }
                if rnd(3) == 0 {
                    let undo = capture.changes_until(&live, schema(&live), mark).unwrap();
                    live.execute_batch("ROLLBACK TO b").unwrap();
                    capture.reset();
                    apply_exactly(&live, &undo).unwrap();
                    reference.execute_batch("ROLLBACK TO c; RELEASE c").unwrap();
                    undone += 1;
                } else {
                    reference.execute_batch("RELEASE c").unwrap();
                    kept += 1;
                }
                assert_eq!(dump(&live), dump(&reference), "batch {batch}, call {call}");
            }
            live.execute_batch("RELEASE b").unwrap();
            reference.execute_batch("RELEASE b").unwrap();
            let changes = capture.changeset(&live, schema(&live)).unwrap();
            apply(&replica, &changes);
            assert_eq!(dump(&live), dump(&replica), "batch {batch}");
        }
        assert!(undone > 300 && kept > 600, "undone {undone}, kept {kept}");
    }

    /// What cannot be undone exactly from the capture is refused: a change made by a
    /// trigger before the mark (re-applying would run the trigger again), a row keyed by
    /// NULL (not captured).
    #[test]
    fn undoing_from_the_capture_refuses_trigger_changes_and_null_keys() {
        let live = db();
        live.execute_batch(
            "CREATE TABLE nk(k TEXT PRIMARY KEY, v);
             CREATE TRIGGER echo AFTER INSERT ON plain BEGIN
                 INSERT OR REPLACE INTO ipk VALUES (100 + new.a, 'echo');
             END;",
        )
        .unwrap();
        let mut capture = ChangeCapture::start(&live).unwrap();
        live.execute_batch("INSERT INTO plain VALUES (7, 7)")
            .unwrap();
        let mark = capture.mark();
        live.execute_batch("UPDATE tpk SET v = 9").unwrap();
        let e = capture
            .changes_until(&live, schema(&live), mark)
            .unwrap_err();
        assert!(e.contains("trigger"), "{e}");
        // The trigger's change after the mark is the failed call's own: undone as well.
        capture.reset();
        let mark = capture.mark();
        live.execute_batch("INSERT INTO plain VALUES (8, 8)")
            .unwrap();
        assert!(capture.changes_until(&live, schema(&live), mark).is_ok());
        capture.reset();
        live.execute_batch("INSERT INTO nk VALUES (NULL, 1)")
            .unwrap();
        let mark = capture.mark();
        let e = capture
            .changes_until(&live, schema(&live), mark)
            .unwrap_err();
        assert!(e.contains("NULL"), "{e}");
    }

    /// Random batches over every kind of table: key changes, `REPLACE`, statements
    /// that fail half way (their changes undone by SQLite after the hook saw them),
    /// savepoints rolled back, and batches past the rows [`TouchedRows`] scans. Each
    /// batch's changeset, applied to a replica, must give the live state.
    #[test]
    fn random_batches_with_failing_statements_and_rollbacks_replay_onto_a_replica() {
        let mut seed: u64 = 0x5eed;
        let mut rnd = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let live = db();
        let replica = db();
        let mut capture = ChangeCapture::start(&live).unwrap();
        let mut failed = 0;
        for round in 0..600 {
            let statements = 1 + rnd(if round % 4 == 0 { 80 } else { 12 });
            let undo_at = (rnd(4) == 0).then(|| rnd(statements));
            live.execute_batch("SAVEPOINT turn").unwrap();
            for i in 0..statements {
                let sql = random_statement(&mut rnd);
                failed += live.execute(&sql, []).is_err() as usize;
                if undo_at == Some(i) {
                    live.execute_batch("ROLLBACK TO turn").unwrap();
                }
            }
            live.execute_batch("RELEASE turn").unwrap();
            let changes = capture.changeset(&live, schema(&live)).unwrap();
            apply(&replica, &changes);
            assert_eq!(dump(&live), dump(&replica), "after round {round}");
        }
        assert!(failed > 100, "statements that failed: {failed}");
    }

    #[test]
    fn varints_are_sqlites() {
        let enc = |v| {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            out
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(127), [0x7f]);
        assert_eq!(enc(128), [0x81, 0x00]);
        assert_eq!(enc(20_000), [0x81, 0x9c, 0x20]);
        assert_eq!(enc(u64::MAX).len(), 9);
    }

    #[test]
    fn objects_share_a_tables_layout_only_when_its_definition_is_the_same() {
        // Three "objects" on one thread, each with a table `t` under a different
        // definition, the first two alike; and then the first altered. Every changeset
        // must replay onto a copy of its own object.
        let defs = [
            "CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER)",
            "CREATE TABLE t(k TEXT PRIMARY KEY, v INTEGER)",
            "CREATE TABLE t(v INTEGER, k TEXT, PRIMARY KEY(v, k)) WITHOUT ROWID",
        ];
        let mut objects: Vec<(Connection, Connection, ChangeCapture)> = Vec::new();
        for def in defs {
            let (live, replica) = (
                Connection::open_in_memory().unwrap(),
                Connection::open_in_memory().unwrap(),
            );
            live.execute_batch(def).unwrap();
            replica.execute_batch(def).unwrap();
            let capture = ChangeCapture::start(&live).unwrap();
            objects.push((live, replica, capture));
        }
        let batch =
            |live: &Connection, replica: &Connection, capture: &mut ChangeCapture, sql: &str| {
                live.execute_batch(sql).unwrap();
                let changes = capture.changeset(live, schema(live)).unwrap();
                apply(replica, &changes);
                assert_eq!(dump(live), dump(replica), "{sql}");
            };
        for (i, (live, replica, capture)) in objects.iter_mut().enumerate() {
            batch(
                live,
                replica,
                capture,
                &format!("INSERT INTO t(k, v) VALUES ('a', {i}), ('b', 7)"),
            );
            batch(
                live,
                replica,
                capture,
                "UPDATE t SET v = v + 1 WHERE k = 'a'",
            );
        }
        let (live, replica, capture) = &mut objects[0];
        live.execute_batch("ALTER TABLE t ADD COLUMN w DEFAULT 'x'")
            .unwrap();
        replica
            .execute_batch("ALTER TABLE t ADD COLUMN w DEFAULT 'x'")
            .unwrap();
        batch(
            live,
            replica,
            capture,
            "UPDATE t SET w = 'y' WHERE k = 'b'; INSERT INTO t VALUES ('c', 1, 'z')",
        );
        // The second object, still on the old definition, keeps its own layout.
        let (live, replica, capture) = &mut objects[1];
        batch(
            live,
            replica,
            capture,
            "DELETE FROM t WHERE k = 'b'; INSERT INTO t VALUES ('d', 4)",
        );
        let shared =
            SHARED_LAYOUTS.with(|m| m.borrow().keys().filter(|(name, _)| name == b"t").count());
        assert_eq!(shared, 3, "one layout per distinct definition of `t`");
    }
}
