//! Alarms: typed, named timers an object schedules for itself inside a turn.
//!
//! - Each object keeps its pending alarms in its own database (`_durable_alarms`), so
//!   scheduling and cancelling commit or roll back with the turn, and the host log
//!   carries them like any other write.
//! - The host keeps an index of each object's earliest due time (`DATA_DIR/alarms.db`),
//!   synced at every checkpoint: an earlier time is written before the batch that
//!   sets it is durable, a later one (or none) only once that batch is (a crash that
//!   loses the batch must still wake the object). Start-up loads only that index:
//!   objects without alarms cost nothing.
//! - A scheduler delivers due objects oldest first, with bounded concurrency, as
//!   turns of their own on the object's shard; a handler that fails is retried with
//!   exponential backoff up to a bounded number of attempts, then recorded in
//!   `_durable_alarm_failures`.

use crate::clock::Clock;
use crate::core::due::DueQueue;
use crate::tables::{self, Lazy};
use durable_client::ObjectId;
use rusqlite::{Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, Notify};

/// When an alarm should fire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// At this instant.
    At(SystemTime),
    /// This long after now.
    After(Duration),
}

impl From<Duration> for When {
    fn from(d: Duration) -> Self {
        When::After(d)
    }
}

impl When {
    /// The due time in whole milliseconds since the Unix epoch, given now in
    /// microseconds: rounded up, so that an alarm woken at the start of its millisecond
    /// never runs before the instant asked for.
    pub(crate) fn due_ms(self, now_us: u64) -> u64 {
        let us = match self {
            When::At(t) => t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos().div_ceil(1000)),
            When::After(d) => u128::from(now_us) + d.as_nanos().div_ceil(1000),
        };
        us.div_ceil(1000).min(u128::from(u64::MAX)) as u64
    }
}

impl From<SystemTime> for When {
    fn from(t: SystemTime) -> Self {
        When::At(t)
    }
}

/// A pending alarm of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingAlarm {
    /// The handler's name.
    pub name: String,
    /// The key it was scheduled under.
    pub key: String,
    /// When it is due.
    pub due: SystemTime,
    /// Its period, for recurring alarms.
    pub every: Option<Duration>,
    /// Failed attempts so far.
    pub failed_attempts: u32,
}

/// How alarm delivery behaves.
#[derive(Debug, Clone)]
pub struct AlarmConfig {
    /// Attempts before a failing handler is given up on (default 6).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one (default 1 s).
    pub backoff: Duration,
    /// Objects woken for alarms at once (default 64).
    pub max_in_flight: usize,
}

impl Default for AlarmConfig {
    fn default() -> Self {
        AlarmConfig {
            max_attempts: 6,
            backoff: Duration::from_secs(1),
            max_in_flight: 64,
        }
    }
}

/// The host's index of earliest due times, one row per object with pending alarms.
pub(crate) struct AlarmIndex {
    db: crate::host_db::HostDb,
}

impl AlarmIndex {
    pub(crate) fn open(data_dir: &Path) -> rusqlite::Result<AlarmIndex> {
        let path = data_dir.join("alarms.db");
        let db = crate::host_db::HostDb::open(
            &path,
            "the alarm index",
            "CREATE TABLE IF NOT EXISTS due(class TEXT NOT NULL, id BLOB NOT NULL, due_ms INTEGER NOT NULL,
             PRIMARY KEY(class, id)) WITHOUT ROWID",
        )?;
        Ok(AlarmIndex { db })
    }

    pub(crate) fn set(&self, class: &str, id: ObjectId, due: Option<u64>) -> rusqlite::Result<()> {
        let conn = self.db.lock();
        match due {
            Some(ms) => conn
                .prepare_cached(
                    "INSERT OR REPLACE INTO due(class, id, due_ms) VALUES (?1, ?2, ?3)",
                )?
                .execute(rusqlite::params![class, &id.as_bytes()[..], ms as i64])?,
            None => conn
                .prepare_cached("DELETE FROM due WHERE class = ?1 AND id = ?2")?
                .execute(rusqlite::params![class, &id.as_bytes()[..]])?,
        };
        Ok(())
    }

    pub(crate) fn load(&self) -> rusqlite::Result<Vec<(String, ObjectId, u64)>> {
        let conn = self.db.lock();
        let mut stmt = conn.prepare("SELECT class, id, due_ms FROM due")?;
        let rows = stmt.query_map([], |r| {
            let id: Vec<u8> = r.get(1)?;
            let mut bytes = [0u8; 16];
            if id.len() == 16 {
                bytes.copy_from_slice(&id);
            }
            Ok((
                r.get::<_, String>(0)?,
                ObjectId::from_bytes(bytes),
                r.get::<_, i64>(2)?.max(0) as u64,
            ))
        })?;
        rows.collect()
    }
}

/// An object's pending alarms, soonest first.
pub(crate) fn pending(conn: &Connection) -> rusqlite::Result<Vec<PendingAlarm>> {
    if !tables::has_table(conn, Lazy::Alarms)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(
        "SELECT name, key, due_ms, every_ms, attempt FROM _durable_alarms ORDER BY due_ms, name, key",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(PendingAlarm {
            name: r.get(0)?,
            key: r.get(1)?,
            due: crate::clock::time_of(r.get::<_, i64>(2)?.max(0) as u64),
            every: r
                .get::<_, Option<i64>>(3)?
                .map(|p| Duration::from_millis(p.max(0) as u64)),
            failed_attempts: r.get::<_, i64>(4)?.max(0) as u32,
        })
    })?;
    rows.collect()
}

/// Earliest due time of an object's pending alarms.
pub(crate) fn earliest_due(conn: &Connection) -> rusqlite::Result<Option<u64>> {
    if !tables::has_table(conn, Lazy::Alarms)? {
        return Ok(None);
    }
    let due: Option<i64> = conn
        .prepare_cached("SELECT min(due_ms) FROM _durable_alarms")?
        .query_row([], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(due.map(|d| d.max(0) as u64))
}

/// One due alarm read from an object's table.
pub(crate) struct DueAlarm {
    pub(crate) name: String,
    pub(crate) key: String,
    pub(crate) due_ms: u64,
    pub(crate) every_ms: Option<u64>,
    pub(crate) args: Vec<u8>,
    pub(crate) attempt: u32,
}

/// No `LIMIT ?`: a bound limit makes SQLite (built with STAT4, as bundled) re-prepare
/// the statement on every run; rows are read lazily, so taking `limit` costs the same.
const DUE_SQL: &str = "SELECT name, key, due_ms, every_ms, args, attempt FROM _durable_alarms WHERE due_ms <= ?1 ORDER BY due_ms";
const FINISH_SQL: &str = "DELETE FROM _durable_alarms WHERE name = ?1 AND key = ?2 AND due_ms = ?3";

/// Prepare (into the connection's statement cache) what an alarm turn runs first, so
/// that an object that schedules an alarm parses them then, not when the alarm is due.
/// A failure here only leaves the parsing for later.
pub(crate) fn prepare_wake(conn: &Connection) {
    for sql in [DUE_SQL, FINISH_SQL] {
        let _ = conn.prepare_cached(sql);
    }
}

pub(crate) fn due_alarms(
    conn: &Connection,
    now: u64,
    limit: usize,
) -> rusqlite::Result<Vec<DueAlarm>> {
    if !tables::has_table(conn, Lazy::Alarms)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare_cached(DUE_SQL)?;
    let rows = stmt.query_map([now as i64], |r| {
        Ok(DueAlarm {
            name: r.get(0)?,
            key: r.get(1)?,
            due_ms: r.get::<_, i64>(2)?.max(0) as u64,
            every_ms: r.get::<_, Option<i64>>(3)?.map(|v| v.max(1) as u64),
            args: r.get(4)?,
            attempt: r.get::<_, i64>(5)?.max(0) as u32,
        })
    })?;
    rows.take(limit).collect()
}

/// Whether `alarm` (read at the start of a wake) is still scheduled as it was read: an
/// earlier handler of the same wake may have cancelled it, moved it or replaced it.
pub(crate) fn still_scheduled(conn: &Connection, alarm: &DueAlarm) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM _durable_alarms WHERE name = ?1 AND key = ?2 AND due_ms = ?3 AND attempt = ?4 AND args = ?5",
    )?
    .exists(rusqlite::params![
        alarm.name,
        alarm.key,
        alarm.due_ms as i64,
        alarm.attempt as i64,
        alarm.args
    ])
}

/// A handler succeeded: remove its alarm, or move a recurring one to its next period —
/// unless the handler itself re-scheduled the same key (then its schedule stands).
pub(crate) fn finish(conn: &Connection, alarm: &DueAlarm, now: u64) -> rusqlite::Result<()> {
    match alarm.every_ms {
        Some(every) => conn
            .prepare_cached(
                "UPDATE _durable_alarms SET due_ms = ?3, attempt = 0 WHERE name = ?1 AND key = ?2 AND due_ms = ?4",
            )?
            .execute(rusqlite::params![
                alarm.name,
                alarm.key,
                next_period(alarm.due_ms, every, now) as i64,
                alarm.due_ms as i64
            ])?,
        None => conn
            .prepare_cached(FINISH_SQL)?
            .execute(rusqlite::params![alarm.name, alarm.key, alarm.due_ms as i64])?,
    };
    Ok(())
}

/// A handler failed: try again at `due_ms` (unless the alarm was scheduled anew
/// meanwhile: then that schedule stands).
pub(crate) fn retry(
    conn: &Connection,
    alarm: &DueAlarm,
    attempt: u32,
    due_ms: u64,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "UPDATE _durable_alarms SET due_ms = ?3, attempt = ?4 WHERE name = ?1 AND key = ?2 AND due_ms = ?5",
    )?
    .execute(rusqlite::params![
        alarm.name,
        alarm.key,
        due_ms as i64,
        attempt as i64,
        alarm.due_ms as i64
    ])?;
    Ok(())
}

/// A handler failed its last attempt: record it and drop the alarm (a recurring one
/// moves on to its next period).
pub(crate) fn give_up(
    conn: &Connection,
    alarm: &DueAlarm,
    attempts: u32,
    error: &str,
    now: u64,
) -> rusqlite::Result<()> {
    tables::ensure_table(conn, Lazy::AlarmFailures)?;
    conn.prepare_cached(
        "INSERT INTO _durable_alarm_failures(name, key, args, attempts, error, failed_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(rusqlite::params![alarm.name, alarm.key, alarm.args, attempts as i64, error, now as i64])?;
    match alarm.every_ms {
        Some(every) => {
            conn.prepare_cached(
                "UPDATE _durable_alarms SET due_ms = ?3, attempt = 0 WHERE name = ?1 AND key = ?2 AND due_ms = ?4",
            )?
            .execute(rusqlite::params![
                alarm.name,
                alarm.key,
                next_period(alarm.due_ms, every, now) as i64,
                alarm.due_ms as i64
            ])?;
        }
        None => {
            conn.prepare_cached(
                "DELETE FROM _durable_alarms WHERE name = ?1 AND key = ?2 AND due_ms = ?3",
            )?
            .execute(rusqlite::params![
                alarm.name,
                alarm.key,
                alarm.due_ms as i64
            ])?;
        }
    }
    Ok(())
}

/// The next firing of a recurring alarm due at `due` with period `every`, strictly
/// after `now`: an alarm that missed several periods fires once, then resumes its beat.
pub(crate) fn next_period(due: u64, every: u64, now: u64) -> u64 {
    if now < due {
        return due + every;
    }
    let missed = (now - due) / every + 1;
    due + missed * every
}

enum SchedMsg {
    /// An object's earliest due time is now this (or it has none).
    Due(&'static str, ObjectId, Option<u64>),
    /// A wake finished.
    Done,
    /// Answer once nothing due at the current time is left to deliver.
    Idle(oneshot::Sender<()>),
    /// The earliest due time pending.
    NextDue(oneshot::Sender<Option<u64>>),
}

/// The alarm side of a host: the index and the scheduler's mailbox.
pub(crate) struct AlarmService {
    pub(crate) index: AlarmIndex,
    pub(crate) config: AlarmConfig,
    pub(crate) clock: Arc<dyn Clock>,
    tx: mpsc::UnboundedSender<SchedMsg>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<SchedMsg>>>,
    pub(crate) poke: Notify,
}

impl AlarmService {
    pub(crate) fn new(
        data_dir: &Path,
        config: AlarmConfig,
        clock: Arc<dyn Clock>,
    ) -> rusqlite::Result<Arc<Self>> {
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(AlarmService {
            index: AlarmIndex::open(data_dir)?,
            config,
            clock,
            tx,
            rx: Mutex::new(Some(rx)),
            poke: Notify::new(),
        }))
    }

    /// Record an object's new earliest due time (the index first, then the scheduler).
    pub(crate) fn index_due(
        &self,
        class: &'static str,
        id: ObjectId,
        due: Option<u64>,
    ) -> rusqlite::Result<()> {
        self.index.set(class, id, due)
    }

    pub(crate) fn notify_due(&self, class: &'static str, id: ObjectId, due: Option<u64>) {
        let _ = self.tx.send(SchedMsg::Due(class, id, due));
    }

    pub(crate) fn wake_done(&self) {
        let _ = self.tx.send(SchedMsg::Done);
    }

    /// Wait until every alarm due at the clock's current time has been delivered and
    /// its turn finished (for tests with a virtual clock).
    pub(crate) async fn settle(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(SchedMsg::Idle(tx)).is_ok() {
            self.poke.notify_one();
            let _ = rx.await;
        }
    }

    /// The earliest pending due time the scheduler knows of.
    pub(crate) async fn next_due(&self) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(SchedMsg::NextDue(tx)).ok()?;
        self.poke.notify_one();
        rx.await.ok().flatten()
    }

    /// Run the scheduler until the host stops: hand each object whose earliest alarm is
    /// due to `deliver` (which routes a wake to its shard). `classes` maps names to
    /// their static names (the index stores strings).
    pub(crate) async fn run(
        self: Arc<Self>,
        deliver: impl Fn(&'static str, ObjectId),
        classes: HashMap<String, &'static str>,
    ) {
        let Some(mut rx) = self.rx.lock().unwrap().take() else {
            return;
        };
        let mut queue: DueQueue<(&'static str, ObjectId)> =
            DueQueue::new(self.config.max_in_flight);
        match self.index.load() {
            Ok(rows) => {
                for (class, id, due) in rows {
                    match classes.get(&class) {
                        Some(&c) => queue.set((c, id), Some(due)),
                        None => {
                            tracing::warn!(%class, %id, "pending alarms for a class this host does not serve")
                        }
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "reading the alarm index"),
        }
        let mut idle_waiters: Vec<oneshot::Sender<()>> = Vec::new();
        // Due times are waited for by a thread with a precise timer (tokio's rounds up
        // to its next millisecond tick); tokio's is the fallback if it cannot start.
        let precise = if self.clock.is_virtual() {
            None
        } else {
            let service = Arc::downgrade(&self);
            crate::clock::PreciseTimer::start(move || {
                if let Some(s) = service.upgrade() {
                    s.poke.notify_one();
                }
            })
            .map_err(|e| tracing::warn!(error = %e, "starting the alarm timer's thread; alarms may run up to 2 ms late"))
            .ok()
        };
        loop {
            let now = self.clock.now_ms();
            for ((class, id), due) in queue.take_due_timed(now) {
                crate::telemetry::alarm_lateness(Duration::from_millis(now.saturating_sub(due)));
                deliver(class, id);
            }
            crate::telemetry::alarms_pending(queue.len());
            if queue.is_idle(now) {
                for w in idle_waiters.drain(..) {
                    let _ = w.send(());
                }
            }
            let sleep = match queue.wake_at() {
                // To the microsecond: a wait computed from the truncated millisecond,
                // then rounded up by the timer, delivered up to 2 ms late.
                Some(due) if !self.clock.is_virtual() => Duration::from_micros(
                    due.saturating_mul(1000)
                        .saturating_sub(self.clock.now_us())
                        .min(60_000_000),
                ),
                _ => Duration::from_secs(3600),
            };
            let sleep = match &precise {
                Some(timer) => {
                    timer.wake_after(sleep);
                    Duration::from_secs(3600)
                }
                None => sleep,
            };
            tokio::select! {
                msg = rx.recv() => match msg {
                    None => return,
                    Some(SchedMsg::Due(class, id, due)) => queue.set((class, id), due),
                    Some(SchedMsg::Done) => queue.done(),
                    Some(SchedMsg::Idle(tx)) => idle_waiters.push(tx),
                    Some(SchedMsg::NextDue(tx)) => {
                        let _ = tx.send(queue.next_due());
                    }
                },
                _ = tokio::time::sleep(sleep) => {}
                _ = self.poke.notified() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::next_period;

    #[test]
    fn a_due_time_is_rounded_up_to_its_millisecond() {
        use super::When;
        use std::time::{Duration, UNIX_EPOCH};
        let at = |us: u64| When::At(UNIX_EPOCH + Duration::from_micros(us));
        assert_eq!(at(5_000).due_ms(0), 5);
        assert_eq!(at(5_001).due_ms(0), 6);
        assert_eq!(
            When::At(UNIX_EPOCH + Duration::from_nanos(5_000_001)).due_ms(0),
            6
        );
        // After: from now in microseconds, never before now + d.
        assert_eq!(
            When::After(Duration::from_millis(10)).due_ms(1_000_000),
            1_010
        );
        assert_eq!(
            When::After(Duration::from_millis(10)).due_ms(1_000_400),
            1_011
        );
        assert_eq!(
            When::After(Duration::from_micros(1_500)).due_ms(1_000_000),
            1_002
        );
        assert_eq!(When::At(UNIX_EPOCH).due_ms(0), 0);
    }

    /// How often the cached statement `sql` was prepared again after its first time.
    fn reprepares(conn: &rusqlite::Connection, sql: &str) -> i32 {
        conn.prepare_cached(sql)
            .unwrap()
            .get_status(rusqlite::StatementStatus::RePrepare)
    }

    #[test]
    fn due_alarms_and_their_removal_are_parsed_once_not_on_every_wake() {
        let dir = tempfile::tempdir().unwrap();
        let id = durable_client::ObjectId::random();
        let (ctx, _) = crate::store::open(dir.path(), "C", id, None, false, None).unwrap();
        let conn = &ctx.conn;
        crate::tables::ensure_table(conn, crate::tables::Lazy::Alarms).unwrap();
        super::prepare_wake(conn);
        for (i, now) in [10u64, 20, 30, 30].into_iter().enumerate() {
            conn.execute(
                "INSERT INTO _durable_alarms(name, key, due_ms, args) VALUES ('a', ?1, 5, x'')",
                [format!("k{i}")],
            )
            .unwrap();
            let due = super::due_alarms(conn, now, 256).unwrap();
            assert_eq!(due.len(), 1);
            super::finish(conn, &due[0], now).unwrap();
            assert_eq!(super::due_alarms(conn, now, 256).unwrap().len(), 0);
        }
        // A bound `LIMIT ?` made SQLite re-prepare the due query on every run.
        assert_eq!(reprepares(conn, super::DUE_SQL), 0);
        assert_eq!(reprepares(conn, super::FINISH_SQL), 0);
        // `limit` still bounds the rows read.
        for k in 0..5 {
            conn.execute(
                "INSERT INTO _durable_alarms(name, key, due_ms, args) VALUES ('a', ?1, ?2, x'')",
                rusqlite::params![format!("m{k}"), k],
            )
            .unwrap();
        }
        let first: Vec<u64> = super::due_alarms(conn, 100, 3)
            .unwrap()
            .iter()
            .map(|a| a.due_ms)
            .collect();
        assert_eq!(first, [0, 1, 2]);
    }

    #[test]
    fn a_recurring_alarm_that_missed_periods_fires_once_then_keeps_its_beat() {
        assert_eq!(next_period(1000, 100, 1000), 1100);
        assert_eq!(next_period(1000, 100, 1050), 1100);
        // Three periods missed: the next firing is the first boundary after now.
        assert_eq!(next_period(1000, 100, 1350), 1400);
        assert_eq!(next_period(1000, 100, 900), 1100);
    }
}
