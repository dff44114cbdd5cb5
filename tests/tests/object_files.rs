//! Damaged and missing object files, against the real host binary: a flipped byte in a
//! value of an object's database (found after an unclean stop, by the digest recorded
//! when the object last stopped cleanly) and a deleted object file are rebuilt from the
//! log archive, never served wrong; without an archive to rebuild from, the object
//! refuses calls with a clear error.

mod common;

use common::{open_object_files, until_object_files_closed, HostProcess};
use durable::CallError;
use durable_examples::counter::Counter;
use std::path::{Path, PathBuf};

/// A value whose big-endian bytes are easy to find in a database file.
const MARK: i64 = 0x5A5A_5A5A_5A5A;

/// The object files (and their -wal/-shm companions) under the data directory.
fn object_files(data: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&data.join("objects"), &mut out);
    out
}

/// The database file of the test's one object under `data`.
fn object_db(data: &Path) -> PathBuf {
    object_files(data)
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "db"))
        .expect("an object file")
}

/// Flip one bit of `value`'s stored bytes wherever they are (main file or WAL);
/// returns how many places.
fn flip_stored(data: &Path, value: i64) -> usize {
    let needle = value.to_be_bytes()[2..].to_vec();
    let mut flipped = 0;
    for path in object_files(data) {
        let mut bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        while let Some(i) = bytes[at..].windows(needle.len()).position(|w| w == needle) {
            bytes[at + i + needle.len() - 1] ^= 0x10;
            flipped += 1;
            at += i + needle.len();
        }
        std::fs::write(&path, bytes).unwrap();
    }
    flipped
}

/// A host that stored MARK + 1 in one counter and then stopped cleanly (so the object
/// recorded its digest), then started once more and was killed (an unclean stop).
async fn counter_stored_then_unclean_stop(data: &Path, extra: &[&str]) -> i64 {
    let host = HostProcess::start(data, extra);
    let client = host.client().await;
    let counter = client.get::<Counter>("precious");
    counter.increment(MARK).await.unwrap();
    let value = counter.increment(1).await.unwrap();
    drop(client);
    assert!(host.terminate().success());
    HostProcess::start(data, extra).kill9();
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_in_an_object_file_is_detected_and_rebuilt_from_the_archive() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let value = counter_stored_then_unclean_stop(&data, &[]).await;

    let flipped = flip_stored(&data, value);
    assert!(
        flipped > 0,
        "the stored value was not found in the object's files"
    );

    let log = dir.path().join("host.log");
    let host = HostProcess::start_logged(&data, &[], Some(&log));
    let client = host.client().await;
    // Before: the flipped value was served. Now the damage is found and the object
    // rebuilt from the archive (its creation image and the changes after it).
    assert_eq!(
        client.get::<Counter>("precious").get().await.unwrap(),
        value
    );
    assert_eq!(
        client
            .get::<Counter>("precious")
            .increment(1)
            .await
            .unwrap(),
        value + 1
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the object's file is damaged"), "{text}");
    assert!(
        object_files(&data)
            .iter()
            .any(|p| p.to_string_lossy().contains(".damaged-")),
        "the damaged file is kept for inspection"
    );
    drop(client);
    // A clean start next time checks nothing (and the rebuilt object is intact).
    assert!(host.terminate().success());
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    assert_eq!(
        client.get::<Counter>("precious").get().await.unwrap(),
        value + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_object_file_is_rebuilt_not_recreated_empty() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let value = counter_stored_then_unclean_stop(&data, &[]).await;
    for path in object_files(&data) {
        std::fs::remove_file(path).unwrap();
    }
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    // Before: a fresh, empty counter (0) was served.
    assert_eq!(
        client.get::<Counter>("precious").get().await.unwrap(),
        value
    );
    // A never-seen object is still simply new.
    assert_eq!(client.get::<Counter>("new").get().await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_archive_a_deleted_object_is_refused_not_served_empty() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No retention: segments are deleted at each checkpoint once a later one exists.
    let no_archive = ["--retention-days", "0"];
    counter_stored_then_unclean_stop(&data, &no_archive).await;
    // Another object's writes start a new segment; the clean stop's checkpoint then
    // deletes the one holding "precious"'s image: nothing is left to rebuild it from.
    let host = HostProcess::start(&data, &no_archive);
    let client = host.client().await;
    client.get::<Counter>("filler").increment(1).await.unwrap();
    drop(client);
    assert!(host.terminate().success());
    let precious = durable::ObjectId::from_name("Counter", "precious").to_string();
    for path in object_files(&data) {
        if path.to_string_lossy().contains(&precious) {
            std::fs::remove_file(path).unwrap();
        }
    }
    let host = HostProcess::start(&data, &no_archive);
    let client = host.client().await;
    let err = client.get::<Counter>("precious").get().await.unwrap_err();
    match &err {
        CallError::Internal(message) => {
            assert!(message.contains("missing"), "{message}");
            assert!(message.contains("restore"), "{message}");
            assert!(!message.contains(data.to_str().unwrap()), "{message}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // It keeps refusing; other objects are served.
    assert!(client.get::<Counter>("precious").get().await.is_err());
    assert_eq!(
        client.get::<Counter>("other").increment(2).await.unwrap(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_object_file_with_changes_after_the_checkpoint_is_rebuilt_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    client
        .get::<Counter>("precious")
        .increment(40)
        .await
        .unwrap();
    drop(client);
    // A clean stop checkpoints: the object's image is behind the checkpoint now.
    assert!(host.terminate().success());
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    let value = client
        .get::<Counter>("precious")
        .increment(2)
        .await
        .unwrap();
    drop(client);
    // Only a changeset of the object is after the checkpoint; then the file goes.
    host.kill9();
    for path in object_files(&data) {
        std::fs::remove_file(path).unwrap();
    }
    // Before: the start failed ("changes for an object that has no database").
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    assert_eq!(
        client.get::<Counter>("precious").get().await.unwrap(),
        value
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_active_at_a_crash_is_checked_against_its_last_quiet_digest() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    let counter = client.get::<Counter>("busy");
    counter.increment(MARK).await.unwrap();
    let value = counter.increment(3).await.unwrap();
    // Quiet for a second, the object has committed its file and records a digest of it (no
    // clean stop): wait until the catalog shows that digest.
    let catalog = rusqlite::Connection::open_with_flags(
        data.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let recorded = || -> i64 {
        catalog
            .query_row("SELECT digest_seq FROM objects", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .ok()
            .flatten()
            .unwrap_or(0)
    };
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while recorded() < 3 {
        assert!(std::time::Instant::now() < give_up, "no digest recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(catalog);
    // Copy the WAL into the main file, as SQLite's own checkpoints do every 1,000
    // pages (a flipped byte in a WAL frame fails the frame's checksum, and replay from
    // the host log repairs that by itself): the damage then hits the main file.
    // (From here, with the host gone: while it runs, it keeps the file's WAL index in
    // its memory and locks other processes out of the file.)
    drop(client);
    host.kill9(); // the object was active: no clean stop, no final checkpoint
    let db = object_db(&data);
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    assert!(flip_stored(&data, value) > 0);
    let log = dir.path().join("host.log");
    let host = HostProcess::start_logged(&data, &[], Some(&log));
    let client = host.client().await;
    // Before: only objects that had stopped cleanly were checked; this one served
    // the flipped value.
    assert_eq!(client.get::<Counter>("busy").get().await.unwrap(), value);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("the object's file is damaged"), "{text}");
}

/// A file an older runtime left (request records in one table, revision 2), with the
/// content digest that runtime recorded for it: the activation that upgrades it forgets
/// that digest, so after an unclean stop right after (no new batch, no quiet spell to
/// record a new digest) the upgraded file is not taken for damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_runtimes_file_upgraded_just_before_a_crash_is_not_taken_for_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    let counter = client.get::<Counter>("old");
    counter.increment(MARK).await.unwrap();
    let value = counter.increment(5).await.unwrap();
    drop(client);
    assert!(host.terminate().success());
    // Stand in for the older runtime: its request table, its revision, and the digest
    // it recorded of that content at the file's batch number.
    let db = object_db(&data);
    let file = rusqlite::Connection::open(&db).unwrap();
    file.execute_batch(
        "CREATE TABLE _durable_requests(seq INTEGER PRIMARY KEY, id BLOB NOT NULL UNIQUE, kind INTEGER NOT NULL, body BLOB NOT NULL);",
    )
    .unwrap();
    // This runtime's blocks of records (docs/storage.md): id (16 bytes), kind (8),
    // body length (4), body; one row each in the old table.
    let blocks: Vec<Vec<u8>> = file
        .prepare("SELECT records FROM _durable_request_blocks ORDER BY block")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let mut moved = 0;
    for block in blocks {
        let mut rest = &block[..];
        while rest.len() >= 28 {
            let kind = i64::from_le_bytes(rest[16..24].try_into().unwrap());
            let len = u32::from_le_bytes(rest[24..28].try_into().unwrap()) as usize;
            file.execute(
                "INSERT INTO _durable_requests(id, kind, body) VALUES (?1, ?2, ?3)",
                rusqlite::params![&rest[..16], kind, &rest[28..28 + len]],
            )
            .unwrap();
            moved += 1;
            rest = &rest[28 + len..];
        }
    }
    assert_eq!(moved, 2, "both increments recorded their request ids");
    file.execute_batch(
        "DROP TABLE _durable_request_blocks;
         DELETE FROM _durable_meta WHERE key = 'request_log';
         PRAGMA user_version = 2;
         PRAGMA wal_checkpoint(TRUNCATE);",
    )
    .unwrap();
    drop(file);
    let old_digest = durable::testing::content_digest(&db).unwrap();
    let catalog = rusqlite::Connection::open(data.join("catalog.db")).unwrap();
    let digest = |catalog: &rusqlite::Connection| -> Option<i64> {
        catalog
            .query_row("SELECT digest_seq FROM objects", [], |r| r.get(0))
            .unwrap()
    };
    let seq = digest(&catalog).expect("a clean stop records a digest");
    catalog
        .execute(
            "UPDATE objects SET digest = ?1",
            [&old_digest.to_le_bytes()[..]],
        )
        .unwrap();
    drop(catalog);
    // This runtime opens it (and upgrades it) for a read, then dies at once.
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    assert_eq!(client.get::<Counter>("old").get().await.unwrap(), value);
    drop(client);
    host.kill9();
    let revision: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert!(revision > 2, "the read upgraded the file");
    let catalog = rusqlite::Connection::open(data.join("catalog.db")).unwrap();
    assert_eq!(
        digest(&catalog),
        None,
        "the old digest (batch {seq}) was forgotten"
    );
    drop(catalog);
    let log = dir.path().join("host.log");
    let host = HostProcess::start_logged(&data, &[], Some(&log));
    let client = host.client().await;
    assert_eq!(client.get::<Counter>("old").get().await.unwrap(), value);
    assert_eq!(
        client.get::<Counter>("old").increment(1).await.unwrap(),
        value + 1
    );
    drop(client);
    drop(host);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("damaged"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_object_closes_its_files_keeps_its_memory_and_reopens_on_the_next_call() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--connection-idle-secs", "0.2"]);
    let pid = host.child.id();
    let client = host.client().await;
    let p = client.get::<durable_tests::Probe>("quiet");
    p.put("before".into(), 1).await.unwrap();
    // An alarm leaves a mark in the instance's memory only (its attempts).
    p.ring_after("r".into(), 10).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while p.attempts().await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the alarm never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        !open_object_files(pid).is_empty(),
        "an object that was just called holds its files"
    );
    // Quiet: after the page-cache release (1 s) and the connection idle time, every
    // file of the object is closed.
    until_object_files_closed(pid, deadline).await;
    // The instance stayed (its in-memory attempts are there), the file reopens for
    // the call, and both writes are stored.
    let attempts = p.attempts().await.unwrap();
    assert_eq!(attempts.len(), 1, "the instance was kept: {attempts:?}");
    assert!(
        !open_object_files(pid).is_empty(),
        "the call reopened the file"
    );
    p.put("after".into(), 2).await.unwrap();
    assert_eq!(p.get("before".into()).await.unwrap(), Some(1));
    // Acknowledged writes made through the reopened file survive kill -9.
    drop(client);
    host.kill9();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let p = client.get::<durable_tests::Probe>("quiet");
    assert_eq!(p.get("before".into()).await.unwrap(), Some(1));
    assert_eq!(p.get("after".into()).await.unwrap(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_object_reopens_its_file_ahead_of_its_next_alarm() {
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let dir = tempfile::tempdir().unwrap();
    // No log checkpoints: one syncs object files, which would look like a reopen.
    let host = HostProcess::start(
        dir.path(),
        &["--connection-idle-secs", "0.2", "--checkpoint-secs", "0"],
    );
    let pid = host.child.id();
    let client = host.client().await;
    let p = client.get::<durable_tests::Probe>("sleeper");
    // Far enough ahead that the quiet object closes its files (an alarm due within
    // 10 s keeps them open: the close, ~1.2 s after the call, has 8 s to happen), near
    // enough for a test.
    p.ring_after("wake".into(), 18_000).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(40);
    // No calls from here until the files reopen: a call would reopen them itself.
    until_object_files_closed(pid, deadline).await;
    while open_object_files(pid).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the files never reopened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let reopened_ms = now_ms();
    let rung_ms = loop {
        if let Some(ring) = p.rings().await.unwrap().first() {
            break ring.2;
        }
        assert!(std::time::Instant::now() < deadline, "the alarm never ran");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    // The files were open well before the alarm's turn (2 s ahead; before, the turn
    // itself opened them, late).
    assert!(
        reopened_ms + 1_000 <= rung_ms,
        "reopened at {reopened_ms}, the alarm ran at {rung_ms}"
    );
}

/// While the host has an object's file open, it keeps the file's WAL index in its own
/// memory: another process opening the file through SQLite is refused (busy) rather than
/// given an index of its own that would miss the host's writes; `host inspect` reads it
/// by copying, beside the host, and once the host stops the file opens as any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_is_kept_out_of_an_open_object_file_and_inspect_still_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // The object keeps its file open throughout (a quiet one closes it after a while,
    // and then holds nothing).
    let host = HostProcess::start(
        &data,
        &[
            "--connection-idle-secs",
            "600",
            "--idle-timeout-secs",
            "600",
        ],
    );
    let client = host.client().await;
    let counter = client.get::<Counter>("kept");
    counter.increment(41).await.unwrap();
    assert_eq!(counter.increment(1).await.unwrap(), 42);
    let db = object_db(&data);
    let read = || -> rusqlite::Result<i64> {
        let c =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        c.busy_timeout(std::time::Duration::ZERO)?;
        c.query_row("SELECT value FROM counter WHERE id = 1", [], |r| r.get(0))
    };
    // (SQLite reports the refusal as "locking protocol" once its retries give up.)
    let e = read().unwrap_err();
    assert!(
        matches!(
            e.sqlite_error_code(),
            Some(
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::FileLockingProtocolFailed
            )
        ),
        "{e}"
    );
    let (ok, out, err) = common::host_cli(&[
        "inspect",
        "--data-dir",
        data.to_str().unwrap(),
        "Counter",
        "kept",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("42"), "{out}");
    // The object still serves: the inspection took no lock it waits on.
    assert_eq!(counter.increment(1).await.unwrap(), 43);
    drop(client);
    assert!(host.terminate().success());
    assert_eq!(read().unwrap(), 43);
}

/// A program that opened an object's file through SQLite while the host had it closed
/// (a `sqlite3` shell left open) holds SQLite's own lock on it: the host's next open of
/// that file fails at once, as an error its caller sees (not seconds of SQLite retries
/// on a shard thread), and works again once the program lets go. Nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_file_held_by_another_program_fails_its_calls_at_once_until_released() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--connection-idle-secs", "0.2"]);
    let pid = host.child.id();
    let client = host.client().await;
    let counter = client.get::<Counter>("held");
    assert_eq!(counter.increment(7).await.unwrap(), 7);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    until_object_files_closed(pid, deadline).await;
    let db = object_db(dir.path());
    let outsider =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap();
    let seen: i64 = outsider
        .query_row("SELECT value FROM counter WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 7);
    let started = std::time::Instant::now();
    let e = counter.increment(1).await.unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "the call waited {:?} ({e})",
        started.elapsed()
    );
    drop(outsider);
    assert_eq!(counter.increment(1).await.unwrap(), 8);
}

/// The WAL of the one object under `data` (spares live elsewhere).
fn object_wal(data: &Path) -> PathBuf {
    let wals: Vec<_> = object_files(data)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with(".db-wal"))
        .collect();
    assert_eq!(wals.len(), 1, "{wals:?}");
    wals.into_iter().next().unwrap()
}

/// Wait (polling the file, no calls to the host) until the WAL's length passes `done`;
/// panics after 20 s with what it holds.
async fn wal_until(wal: &Path, what: &str, done: impl Fn(u64) -> bool) {
    let len = || std::fs::metadata(wal).unwrap().len();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !done(len()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL did not {what}: {} bytes",
            len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_objects_large_wal_is_folded_into_its_file_and_what_it_held_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let idle = ["--idle-timeout-secs", "1"];
    let host = HostProcess::start(dir.path(), &idle);
    let client = host.client().await;
    let counter = client.get::<Counter>("busy");
    // One call at a time: a batch each, and a few WAL frames each file commit (every
    // 128 batches), well past 64 KiB (700 calls were under it once the file committed
    // every 128 batches instead of 64).
    let mut value = 0;
    for _ in 0..1_600 {
        value = counter.increment(1).await.unwrap();
    }
    let wal = object_wal(dir.path());
    // The file commits every 128 batches, and 100 ms after the last call.
    wal_until(&wal, "grow past 64 KiB", |len| len >= 64 << 10).await;
    // Evicted: the WAL is copied into the file, the file synced, the WAL truncated.
    wal_until(&wal, "be truncated", |len| len == 0).await;
    drop(client);
    host.kill9();
    let host = HostProcess::start(dir.path(), &idle);
    let client = host.client().await;
    let counter = client.get::<Counter>("busy");
    assert_eq!(
        counter.get().await.unwrap(),
        value,
        "after kill -9, compacted"
    );
    // The reactivated object writes on into its empty WAL.
    assert_eq!(counter.increment(1).await.unwrap(), value + 1);
    drop(client);
    host.kill9();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let counter = client.get::<Counter>("busy");
    assert_eq!(
        counter.get().await.unwrap(),
        value + 1,
        "after kill -9, written on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_object_writes_on_with_its_wal_checkpointed_as_usual() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--idle-timeout-secs", "1"]);
    let client = host.client().await;
    let p = client.get::<durable_tests::Probe>("big");
    p.put_blob("first".into(), 100_000).await.unwrap();
    let wal = object_wal(dir.path());
    // The file commits 100 ms after the call (the log made it durable before).
    wal_until(&wal, "grow past 64 KiB", |len| len >= 64 << 10).await;
    wal_until(&wal, "be truncated", |len| len == 0).await;
    let len = |p: &Path| std::fs::metadata(p).unwrap().len();
    // Reactivated on an empty WAL: its first file commit runs without syncs or
    // automatic checkpoints, and every later one as usual. ~3 MB in ~5 file commits
    // (one per 128 batches): with SQLite's checkpoint back, the WAL restarts once it
    // passes 1,000 pages and stays well under what was written.
    let n = 600;
    for i in 0..n {
        p.put_blob(format!("b{i}"), 5_000).await.unwrap();
    }
    let written = n * 5_000;
    assert!(
        len(&wal) < written / 2,
        "the WAL grew to {} bytes of {written} written",
        len(&wal)
    );
    assert_eq!(p.blobs().await.unwrap().len(), n as usize + 1);
    drop(client);
    host.kill9();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let p = client.get::<durable_tests::Probe>("big");
    assert_eq!(p.blobs().await.unwrap().len(), n as usize + 1);
}
