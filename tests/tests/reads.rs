//! Read-only handlers (`&self` methods taking `&ReadContext`) against a real host
//! process: they answer while the object's turn is held open, they see every write
//! acknowledged before them, they never show a write that a `kill -9` then loses, and
//! SQLite refuses a write attempted through their raw connection.

mod common;

use common::{HostProcess, Told};
use durable::testing::TestHost;
use durable::CallError;
use durable_examples::counter::Counter;
use durable_tests::{Boots, Reader};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answers_at_once_while_a_turn_is_held_open() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let r = client.get::<Reader>("held");
    assert_eq!(r.add(1, 0).await.unwrap(), 1);
    // The first read may run as a turn (the file still defers the batch); it makes
    // the object read-friendly.
    assert_eq!(r.stored().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A turn that writes, then holds the object for 3 s before it returns.
    let slow = {
        let r = r.clone();
        tokio::spawn(async move { r.add(1, 3000).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        let started = Instant::now();
        let (stored, cached) = (r.stored().await.unwrap(), r.cached().await.unwrap());
        let took = started.elapsed();
        // The held turn's write is neither committed nor acknowledged: not seen.
        assert_eq!((stored, cached), (1, 1));
        assert!(took < Duration::from_millis(500), "a read took {took:?}");
    }
    assert!(!slow.is_finished(), "the held turn ended early");
    assert_eq!(slow.await.unwrap().unwrap(), 2);
    assert_eq!(r.stored().await.unwrap(), 2);
    assert_eq!(r.cached().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_see_every_write_acknowledged_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let counter = client.get::<Counter>("ryw");
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..150 {
                let acked = counter.increment(1).await.unwrap();
                let seen = counter.get().await.unwrap();
                assert!(seen >= acked, "read {seen} after {acked} was acknowledged");
            }
        }));
    }
    // Readers that only read, beside them: what they see never goes back.
    for _ in 0..4 {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for _ in 0..300 {
                let seen = counter.get().await.unwrap();
                assert!(seen >= last, "a read went back from {last} to {seen}");
                last = seen;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.get().await.unwrap(), 8 * 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_never_shows_a_write_that_a_kill_loses() {
    let dir = tempfile::tempdir().unwrap();
    let objects = 4;
    let told = Told::default();
    // name -> the highest value any read returned.
    let read: Arc<std::sync::Mutex<std::collections::HashMap<String, i64>>> = Arc::default();
    for round in 0..3 {
        let host = HostProcess::start(dir.path(), &[]);
        let client = host.client().await;
        let before = read.lock().unwrap().clone();
        for (name, seen) in before {
            let value = client.get::<Counter>(&name).get().await.unwrap();
            assert!(
                value >= seen,
                "round {round}: {name} = {value} after a restart, but a read returned {seen}"
            );
        }
        // Readers beside the writers until the kill.
        let mut readers = Vec::new();
        for t in 0..8 {
            let name = format!("k{}", t % objects);
            let counter = client
                .get::<Counter>(&name)
                .with_deadline(Duration::from_secs(2));
            let read = read.clone();
            readers.push(tokio::spawn(async move {
                while let Ok(v) = counter.get().await {
                    let mut read = read.lock().unwrap();
                    let e = read.entry(name.clone()).or_insert(0);
                    *e = (*e).max(v);
                }
            }));
        }
        common::load_until_killed(host, "k", objects, 16, Duration::from_millis(500), &told).await;
        for r in readers {
            r.await.unwrap();
        }
    }
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let read = read.lock().unwrap().clone();
    assert_eq!(read.len(), objects, "every object was read");
    for (name, seen) in read {
        let value = client.get::<Counter>(&name).get().await.unwrap();
        let (acked, sent) = told.lock().unwrap()[&name];
        assert!(
            value >= seen && value >= acked && value <= sent,
            "{name} = {value}: a read returned {seen}, a writer was told {acked}, {sent} sent"
        );
    }
}

/// SQLite's refusal of a write in a read-only method: "not authorized" if the statement
/// is prepared while the method runs, "attempt to write a readonly database" if it was
/// prepared before.
fn refused_write(said: &str) -> bool {
    said.contains("readonly") || said.contains("not authorized")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_write_through_the_raw_connection_of_a_read() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let r = client.get::<Reader>("sneak");
    // The object is not active: this read runs as a turn on the writer, with writes
    // refused for its duration.
    let refused = r.sneak().await.unwrap();
    assert!(refused_write(&refused), "{refused}");
    assert_eq!(r.add(1, 0).await.unwrap(), 1);
    // Idle: a read runs as a turn on the writer; a query that writes is refused
    // before it runs, whether or not the raw connection was taken before it.
    for _ in 0..2 {
        let refused = r.sneak_query().await.unwrap();
        assert!(refused.contains("readonly"), "{refused}");
        let refused = r.sneak().await.unwrap();
        assert!(refused_write(&refused), "{refused}");
    }
    assert_eq!(r.stored().await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Active and committed: on the reader connection.
    for _ in 0..3 {
        let refused = r.sneak().await.unwrap();
        assert!(refused_write(&refused), "{refused}");
        let refused = r.sneak_query().await.unwrap();
        assert!(refused.contains("readonly"), "{refused}");
    }
    assert_eq!(r.stored().await.unwrap(), 1);
    // The writer still writes.
    assert_eq!(r.add(1, 0).await.unwrap(), 2);
    assert_eq!(r.stored().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_cannot_end_transactions_set_pragmas_or_write_through_sql() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let r = client.get::<Reader>("sql");
    assert_eq!(r.add(1, 0).await.unwrap(), 1);
    // Each refused on an idle object (a turn on the writer's connection, inside its open
    // file transaction) and beside a held turn (the reader's connection); after each the
    // object still writes, and nothing the read tried stuck.
    let refused = [
        "PRAGMA query_only = 1",
        "EXPLAIN PRAGMA query_only = 1",
        "SELECT 1; PRAGMA query_only = 1",
        "PRAGMA optimize",
        "SELECT * FROM pragma_optimize",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT s",
        "RELEASE durable_batch",
        "ATTACH ':memory:' AS other",
        "PRAGMA foreign_keys = 0",
        "UPDATE v SET n = n + 1000 WHERE id = 1 RETURNING n",
        "CREATE TABLE sneaky(x)",
    ];
    let mut expected = 1;
    for sql in refused {
        let said = r.try_sql(sql.to_string()).await.unwrap();
        assert_ne!(
            said, "ran",
            "{sql} ran in a read on the writer's connection"
        );
        expected += 1;
        assert_eq!(r.add(1, 0).await.unwrap(), expected, "after {sql}");
        // Beside a turn held open: the read runs on the reader.
        let held = {
            let r = r.clone();
            tokio::spawn(async move { r.add(1, 300).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        let said = r.try_sql(sql.to_string()).await.unwrap();
        assert_ne!(said, "ran", "{sql} ran in a read on the reader");
        expected += 1;
        assert_eq!(held.await.unwrap().unwrap(), expected, "after {sql}");
    }
    assert_eq!(r.stored().await.unwrap(), expected);
    // Reading the schema is allowed.
    assert_eq!(
        r.try_sql("PRAGMA table_info(v)".into()).await.unwrap(),
        "ran"
    );
    assert_eq!(r.try_sql("SELECT n FROM v".into()).await.unwrap(), "ran");
    let tables: i64 = r.stored().await.unwrap();
    assert_eq!(tables, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_read_resets_only_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let r = client.get::<Reader>("boom");
    assert_eq!(r.add(5, 0).await.unwrap(), 5);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(r.cached().await.unwrap(), 5);
    for _ in 0..2 {
        match r.boom().await {
            Err(CallError::ObjectReset(message)) => {
                assert!(message.contains("boom in a read"), "{message}")
            }
            other => panic!("expected ObjectReset, got {other:?}"),
        }
    }
    assert_eq!(r.cached().await.unwrap(), 5);
    assert_eq!(r.add(1, 0).await.unwrap(), 6);
    assert_eq!(r.cached().await.unwrap(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_queued_with_a_panicking_read_answer_from_a_fresh_activation() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let r = client.get::<Reader>("mixed");
    assert_eq!(r.add(7, 0).await.unwrap(), 7);
    // Many reads at once on the idle object: they queue and run as batches of reads,
    // some of them behind a read that panics and resets the instance.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            match i % 10 {
                0 => match r.boom().await {
                    Err(CallError::ObjectReset(m)) => assert!(m.contains("boom in a read"), "{m}"),
                    other => panic!("expected ObjectReset, got {other:?}"),
                },
                1..=4 => assert_eq!(r.stored().await.unwrap(), 7),
                _ => assert_eq!(r.cached().await.unwrap(), 7),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(r.add(1, 0).await.unwrap(), 8);
    assert_eq!(r.cached().await.unwrap(), 8);
    assert_eq!(r.stored().await.unwrap(), 8);
}

/// The files of object `name` of class `class` under the harness's data directory.
fn remove_object_files(t: &TestHost, class: &str, name: &str) {
    let id = durable::ObjectId::from_name(class, name);
    let dir = t.data_dir().join("objects").join(class);
    for suffix in ["", "-wal", "-shm"] {
        let path = dir.join(format!("{id}.db{suffix}"));
        std::fs::remove_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// A read that activates an evicted object runs its constructor without a writing
/// batch's machinery only while the constructor writes nothing. This one writes at
/// every activation: each read after an eviction must count one more activation (not
/// two, not none), and those writes must be in the host log: the object rebuilt from
/// the log alone counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_activates_an_object_logs_its_constructors_writes_once() {
    let mut t = TestHost::start(|h| h.register::<Boots>()).await;
    let b = t.get::<Boots>("b");
    assert_eq!(b.activations().await.unwrap(), 1);
    for n in 2..=4 {
        assert!(t.evict::<Boots>("b").await);
        assert_eq!(b.activations().await.unwrap(), n);
        assert_eq!(
            b.activations().await.unwrap(),
            n,
            "active: no new activation"
        );
    }
    assert!(t.evict::<Boots>("b").await);
    remove_object_files(&t, "Boots", "b");
    t.crash().await;
    let b = t.get::<Boots>("b");
    // Rebuilt with its four activations, then activated a fifth time.
    assert_eq!(b.activations().await.unwrap(), 5);
}

/// A read that activates an object whose constructor writes nothing answers from the
/// stored state, and the object's later writes build on it (also once rebuilt from
/// the host log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_activates_an_evicted_object_and_its_writes_go_on_from_there() {
    let mut t = TestHost::start(|h| h.register::<Counter>()).await;
    let c = t.get::<Counter>("c");
    assert_eq!(c.increment(5).await.unwrap(), 5);
    for n in [5, 6, 7] {
        assert!(t.evict::<Counter>("c").await);
        assert_eq!(c.get().await.unwrap(), n);
        assert_eq!(c.increment(1).await.unwrap(), n + 1);
    }
    assert!(t.evict::<Counter>("c").await);
    assert_eq!(c.get().await.unwrap(), 8);
    assert!(t.evict::<Counter>("c").await);
    remove_object_files(&t, "Counter", "c");
    t.crash().await;
    assert_eq!(t.get::<Counter>("c").get().await.unwrap(), 8);
}

/// Object names that look like numbers (`"123"`, `"007"`) are stored as written:
/// the object reopens after an eviction with the name it was called by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_named_like_a_number_reopens_under_its_name() {
    let t = TestHost::start(|h| h.register::<Counter>()).await;
    for name in ["123", "007", "1e3", "-0"] {
        let c = t.get::<Counter>(name);
        assert_eq!(c.increment(2).await.unwrap(), 2, "{name}");
        assert!(t.evict::<Counter>(name).await);
        assert_eq!(c.get().await.unwrap(), 2, "{name} read after an eviction");
        assert!(t.evict::<Counter>(name).await);
        assert_eq!(
            c.increment(1).await.unwrap(),
            3,
            "{name} written after an eviction"
        );
    }
}
