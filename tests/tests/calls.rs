//! Calls through the typed stubs against a real host process: strict turns, rollback on
//! `Err` and panic, application errors intact, and request-id deduplication.

mod common;

use common::{method_fingerprint, HostProcess};
use durable::CallError;
use durable_examples::counter::Counter;
use durable_tests::{Probe, ProbeError};
use futures_util::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_increments_from_fifty_tasks_return_exactly_one_to_a_thousand() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let counter = client.get::<Counter>("hot");
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(20);
            for _ in 0..20 {
                seen.push(counter.increment(1).await.expect("increment"));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=1000).collect::<Vec<i64>>());
    assert_eq!(client.get::<Counter>("hot").get().await.unwrap(), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn err_rolls_back_and_the_application_error_arrives_intact() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let probe = client.get::<Probe>("p");
    probe.put("k".into(), 1).await.unwrap();
    let err = probe.put_then_fail("k".into(), 2).await.unwrap_err();
    assert_eq!(
        err,
        CallError::Application(ProbeError::Refused { value: 2 })
    );
    assert!(err.is_retry_safe());
    assert_eq!(probe.get("k".into()).await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_rolls_back_resets_only_that_object_and_the_host_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let victim = client.get::<Probe>("victim");
    let bystander = client.get::<Probe>("bystander");
    victim.put("k".into(), 1).await.unwrap();
    bystander.put("k".into(), 10).await.unwrap();

    // Calls to the bystander keep flowing while the victim panics.
    let flow = {
        let bystander = bystander.clone();
        tokio::spawn(async move {
            for i in 0..50 {
                bystander.put("k".into(), 100 + i).await.unwrap();
            }
        })
    };
    match victim.put_then_panic("k".into(), 2).await {
        Err(CallError::ObjectReset(message)) => assert!(message.contains("panic"), "{message}"),
        other => panic!("expected ObjectReset, got {other:?}"),
    }
    flow.await.unwrap();
    // The victim's write was rolled back, and it re-activates from storage.
    assert_eq!(victim.get("k".into()).await.unwrap(), Some(1));
    victim.put("k".into(), 3).await.unwrap();
    assert_eq!(victim.get("k".into()).await.unwrap(), Some(3));
    assert_eq!(bystander.get("k".into()).await.unwrap(), Some(149));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_request_id_is_applied_once_and_returns_the_first_result() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let counter = client.get::<Counter>("replayed");
    counter.increment(5).await.unwrap();

    let object = client.object_ref("Counter", counter.id(), Some("replayed"));
    let fingerprint = method_fingerprint::<Counter>("increment");
    let request = object.prepare("increment", fingerprint, &(1i64,));
    let first: i64 = object
        .call_request::<i64, durable::Error>(&request)
        .await
        .unwrap();
    assert_eq!(first, 6);
    // The same request again, on the same and on a fresh connection: same answer, applied once.
    let again: i64 = object
        .call_request::<i64, durable::Error>(&request)
        .await
        .unwrap();
    assert_eq!(again, 6);
    let other = host.client().await;
    let object2 = other.object_ref("Counter", counter.id(), Some("replayed"));
    assert_eq!(
        object2
            .call_request::<i64, durable::Error>(&request)
            .await
            .unwrap(),
        6
    );
    assert_eq!(counter.get().await.unwrap(), 6);
    // A new request id is a new call.
    assert_eq!(counter.increment(1).await.unwrap(), 7);
}

/// A request's record reaches the object's file only when the file commits (every few
/// batches, or when the object goes quiet); until then the host answers resends from
/// memory. Copies of one request sent together (most land in one batch, the rest in the
/// deferred batches after it) among other calls, then again once the object went quiet
/// and its file committed, and again after a `kill -9` (the log replays the records):
/// applied once every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_of_a_request_sent_together_apply_once_before_and_after_the_file_commits() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let counter = client.get::<Counter>("copies");
    let object = client.object_ref("Counter", counter.id(), Some("copies"));
    let fingerprint = method_fingerprint::<Counter>("increment");
    let request = object.prepare("increment", fingerprint, &(1000i64,));
    let copies = (0..16).map(|_| object.call_request::<i64, durable::Error>(&request));
    let others = (0..16).map(|_| counter.increment(1));
    let (copies, others) = futures_util::future::join(
        futures_util::future::join_all(copies),
        futures_util::future::join_all(others),
    )
    .await;
    let copies: Vec<i64> = copies.into_iter().map(Result::unwrap).collect();
    let mut others: Vec<i64> = others.into_iter().map(Result::unwrap).collect();
    // Every copy has the first one's answer, the other calls distinct answers of
    // their own, and the total shows the request applied once.
    assert!(copies.iter().all(|c| *c == copies[0]), "{copies:?}");
    others.sort();
    others.dedup();
    assert_eq!(others.len(), 16, "{others:?}");
    assert!(!others.contains(&copies[0]), "{others:?} {}", copies[0]);
    assert_eq!(counter.get().await.unwrap(), 1016);
    // Quiet past the deferred commit (100 ms): the record is in the file now.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let again = object.call_request::<i64, durable::Error>(&request).await;
    assert_eq!(again.unwrap(), copies[0]);
    assert_eq!(counter.get().await.unwrap(), 1016);
    // Fresh records, still only in memory and the log when the host is killed: after the
    // restart the log's replay answers them.
    assert_eq!(counter.increment(1).await.unwrap(), 1017);
    let late = object.prepare("increment", fingerprint, &(5i64,));
    assert_eq!(
        object
            .call_request::<i64, durable::Error>(&late)
            .await
            .unwrap(),
        1022
    );
    assert_eq!(
        object
            .call_request::<i64, durable::Error>(&late)
            .await
            .unwrap(),
        1022
    );
    drop(client);
    host.kill9();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let object = client.object_ref("Counter", counter.id(), Some("copies"));
    for (request, first) in [(&request, copies[0]), (&late, 1022)] {
        let again: i64 = object
            .call_request::<i64, durable::Error>(request)
            .await
            .unwrap();
        assert_eq!(again, first);
    }
    let counter = client.get::<Counter>("copies");
    assert_eq!(counter.get().await.unwrap(), 1022);
}

/// The host skips the recorded-answer lookup for an id later than every id it has
/// recorded for the object (ids are in time order): ids that arrive out of order,
/// and resends after a restart (the largest id is read again), must still apply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_out_of_time_order_and_resent_after_a_kill_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let counter = client.get::<Counter>("ordered");
    let object = client.object_ref("Counter", counter.id(), Some("ordered"));
    let fingerprint = method_fingerprint::<Counter>("increment");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let mut requests = Vec::new();
    // Later first: the earlier ones arrive below the largest id recorded.
    for (at, by) in [
        (now_us + 2_000_000, 1i64),
        (now_us, 10),
        (now_us + 1_000_000, 100),
    ] {
        let mut request = object.prepare("increment", fingerprint, &(by,));
        request.request_id = durable::wire::request_id_at(at);
        requests.push(request);
    }
    let mut firsts = Vec::new();
    for request in &requests {
        firsts.push(
            object
                .call_request::<i64, durable::Error>(request)
                .await
                .unwrap(),
        );
    }
    assert_eq!(firsts, [1, 11, 111]);
    for (request, first) in requests.iter().zip(&firsts) {
        let again: i64 = object
            .call_request::<i64, durable::Error>(request)
            .await
            .unwrap();
        assert_eq!(again, *first);
    }
    assert_eq!(counter.get().await.unwrap(), 111);
    drop(client);
    host.kill9();

    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let object = client.object_ref("Counter", counter.id(), Some("ordered"));
    for (request, first) in requests.iter().rev().zip(firsts.iter().rev()) {
        let again: i64 = object
            .call_request::<i64, durable::Error>(request)
            .await
            .unwrap();
        assert_eq!(again, *first);
    }
    let counter = client.get::<Counter>("ordered");
    assert_eq!(counter.get().await.unwrap(), 111);
    assert_eq!(counter.increment(1000).await.unwrap(), 1111);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_application_errors_are_remembered_too() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let probe = client.get::<Probe>("p");
    let object = client.object_ref("Probe", probe.id(), Some("p"));
    let request = object.prepare(
        "put_then_fail",
        method_fingerprint::<Probe>("put_then_fail"),
        &("k", 4i64),
    );
    for _ in 0..2 {
        let err = object
            .call_request::<(), ProbeError>(&request)
            .await
            .unwrap_err();
        assert_eq!(
            err,
            CallError::Application(ProbeError::Refused { value: 4 })
        );
    }
    assert_eq!(probe.get("k".into()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_bounds_connecting_to_a_host_that_is_not_there() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let mut config = host.client_config();
    drop(host);
    // Nothing answers on that address any more.
    config.deadline = std::time::Duration::from_millis(500);
    let started = std::time::Instant::now();
    let result = durable::Client::connect(config).await;
    assert!(result.is_err(), "connected to a host that is gone");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "connecting took {:?} with a 500 ms deadline",
        started.elapsed()
    );
}

/// Calls that arrive together run as one batch, the first in the batch's own savepoint
/// and the rest each in one of its own: whichever position a failing call takes, it
/// undoes exactly its writes, and every other call's stand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_batch_each_failing_call_undoes_only_its_own_writes() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let probe = client.get::<Probe>("mixed");
    // 64 in flight to one object: its batches hold many calls, failing ones first,
    // last and between.
    let calls = (0..256).map(|i| {
        let probe = probe.clone();
        async move {
            if i % 3 == 0 {
                let e = probe.put_then_fail(format!("f{i}"), i).await.unwrap_err();
                assert_eq!(e, CallError::Application(ProbeError::Refused { value: i }));
            } else {
                probe.put(format!("k{i}"), i).await.unwrap();
            }
        }
    });
    futures_util::stream::iter(calls)
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    for i in 0..256 {
        if i % 3 == 0 {
            assert_eq!(probe.get(format!("f{i}")).await.unwrap(), None, "f{i}");
        } else {
            assert_eq!(probe.get(format!("k{i}")).await.unwrap(), Some(i), "k{i}");
        }
    }
    // The same after a crash: the log replays exactly what was answered as applied.
    drop(client);
    host.kill9();
    let host = HostProcess::start(dir.path(), &[]);
    let probe = host.client().await.get::<Probe>("mixed");
    for i in 0..256 {
        let key = if i % 3 == 0 {
            format!("f{i}")
        } else {
            format!("k{i}")
        };
        let want = (i % 3 != 0).then_some(i);
        assert_eq!(probe.get(key).await.unwrap(), want);
    }
}

/// Calls that change the schema share batches with calls that fail after writing: a
/// failed call that cannot be undone alone (its batch changed the schema before it)
/// fails its whole batch as not applied, safe to retry; the object's calls get
/// savepoints of their own from then on. Whatever the batches were, every entry
/// answered as applied is there once, and no refused or unanswered one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_calls_beside_schema_changes_undo_only_what_was_not_answered_applied() {
    use durable_tests::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let ledger = client.get::<Ledger>("ddl");
    let calls = (0..384i64).map(|i| {
        let ledger = ledger.clone();
        async move {
            let result = if i % 3 == 0 {
                ledger.add_then_refuse(1000 + i).await
            } else if i % 16 == 1 {
                ledger.index_and_add(format!("ix{i}"), i).await
            } else if i % 16 == 5 {
                // A schema change alone: no row, nothing captured.
                ledger.index_only(format!("ix{i}")).await.map(|()| 0)
            } else {
                ledger.add(i).await
            };
            match result {
                Ok(_) if i % 16 == 5 => Some(-i),
                Ok(_) => Some(i),
                Err(CallError::Application(_)) if i % 3 == 0 => None,
                // A batch that failed as a whole: not applied, safe to retry.
                Err(e @ CallError::Internal(_)) if e.is_retry_safe() => None,
                Err(e) => panic!("call {i}: {e:?}"),
            }
        }
    });
    let applied: Vec<i64> = futures_util::stream::iter(calls)
        .buffer_unordered(64)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    // (Indexes alone come back as minus their number.)
    let (indexed_alone, applied): (Vec<i64>, Vec<i64>) = applied.into_iter().partition(|i| *i < 0);
    assert!(applied.len() > 150, "{} applied", applied.len());
    assert!(!indexed_alone.is_empty());
    let sum: i64 = applied.iter().sum();
    let (balance, entries_sum, count) = ledger.audit().await.unwrap();
    assert_eq!(
        (balance, entries_sum, count),
        (sum, sum, applied.len() as i64)
    );
    let mut indexed: Vec<String> = applied
        .iter()
        .filter(|i| *i % 16 == 1)
        .copied()
        .chain(indexed_alone.iter().map(|i| -i))
        .map(|i| format!("ix{i}"))
        .collect();
    indexed.sort();
    assert_eq!(ledger.indexes().await.unwrap(), indexed);
}

/// A failed call whose batch-mates before it changed only the schema (no row, nothing
/// the change capture saw) must not undo their schema changes. A call holds the object
/// while a schema change, then a call that writes and fails, queue behind it in that
/// order (one batch): the schema change is there if it was answered as made, and the
/// failed call's write is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_change_alone_answered_applied_survives_a_failing_batch_mate() {
    use durable_tests::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(20));
    for o in 0..4 {
        let ledger = client.get::<Ledger>(&format!("schema{o}"));
        ledger.add(1).await.unwrap();
        let hold = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.hold(200).await }
        });
        pause().await;
        let index = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.index_only(format!("ix{o}")).await }
        });
        pause().await;
        let refused = ledger.add_then_refuse(7).await;
        hold.await.unwrap().unwrap();
        let created = match index.await.unwrap() {
            Ok(()) => vec![format!("ix{o}")],
            // Its batch failed as a whole (the failed call could not be undone alone).
            Err(e @ CallError::Internal(_)) if e.is_retry_safe() => Vec::new(),
            Err(e) => panic!("{e:?}"),
        };
        match refused {
            Err(CallError::Application(_)) => {}
            Err(e @ CallError::Internal(_)) if e.is_retry_safe() => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(ledger.indexes().await.unwrap(), created, "schema{o}");
        assert_eq!(ledger.audit().await.unwrap(), (1, 1, 1), "schema{o}");
    }
}

/// The first key-value write of an object creates the runtime's table inside its
/// turn (a schema change). A call that fails after it in the same batch fails alone:
/// the note stands, the failed call's write does not, and no call hears a batch error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_table_made_in_a_batch_does_not_fail_a_later_failing_call_s_batch_mates() {
    use durable_tests::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(20));
    for o in 0..4 {
        let ledger = client.get::<Ledger>(&format!("lazy{o}"));
        ledger.add(1).await.unwrap();
        let hold = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.hold(200).await }
        });
        pause().await;
        let note = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.note("first".into()).await }
        });
        pause().await;
        let added = tokio::spawn({
            let ledger = ledger.clone();
            async move { ledger.add(2).await }
        });
        pause().await;
        let refused = ledger.add_then_refuse(7).await;
        hold.await.unwrap().unwrap();
        note.await.unwrap().unwrap();
        assert_eq!(added.await.unwrap().unwrap(), 3);
        assert!(
            matches!(refused, Err(CallError::Application(_))),
            "{refused:?}"
        );
        assert!(ledger.noted("first".into()).await.unwrap());
        assert_eq!(ledger.audit().await.unwrap(), (3, 3, 2), "lazy{o}");
    }
}

/// A batch whose only write is a blob overwritten in place (SQLite counts no changed
/// row; the change capture sees it) goes to the log like any other: acknowledged, it
/// survives `kill -9` before the object's file commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_written_in_place_reaches_the_log() {
    use durable_tests::Ledger;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let ledger = client.get::<Ledger>("blob");
    ledger.scratch_put().await.unwrap();
    // At once: the file has not committed the batch before (it waits for 100 ms of
    // quiet or more batches).
    ledger.scratch_write(7).await.unwrap();
    drop(client);
    host.kill9();
    let host = HostProcess::start(dir.path(), &[]);
    let ledger = host.client().await.get::<Ledger>("blob");
    assert_eq!(ledger.scratch().await.unwrap(), vec![7u8; 4]);
}

/// A call whose only write is a blob overwritten in place keeps its answer under its
/// request id like any call that wrote: a resend of the same request is answered, not
/// run again. Under the host log (where the change capture sees the write, also when
/// the call then calls another object, which ships the writes so far) and under
/// `--durability fsync` (where the connection counts row writes; before, the batch
/// looked read-only there, so it was neither synced before its reply nor recorded).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_only_writes_a_blob_in_place_is_recorded_and_applied_once() {
    use durable_tests::Ledger;
    for (mode, args) in [("log", &[][..]), ("fsync", &["--durability", "fsync"][..])] {
        let dir = tempfile::tempdir().unwrap();
        let host = HostProcess::start(dir.path(), args);
        let client = host.client().await;
        let ledger = client.get::<Ledger>("bump");
        ledger.scratch_put().await.unwrap();
        let object = client.object_ref("Ledger", ledger.id(), Some("bump"));
        let fingerprint = method_fingerprint::<Ledger>("scratch_bump");
        let mut expected = 0u8;
        for then_call in [None, Some("bump-other".to_string())] {
            let request = object.prepare("scratch_bump", fingerprint, &(then_call.clone(),));
            expected += 1;
            for attempt in 0..2 {
                let byte: u8 = object
                    .call_request::<u8, durable::Error>(&request)
                    .await
                    .unwrap();
                assert_eq!(
                    byte, expected,
                    "{mode}, then_call {then_call:?}, attempt {attempt}: the resend ran again"
                );
            }
        }
        assert_eq!(ledger.scratch().await.unwrap(), vec![expected; 4], "{mode}");
    }
}

/// Sends the object named "away" to another host; keeps every other one here.
struct AwayElsewhere;

impl durable::Placement for AwayElsewhere {
    fn owner(&self, class: &str, id: durable::ObjectId) -> durable::Owner {
        if id == durable::ObjectId::from_name(class, "away") {
            durable::Owner::Elsewhere("10.0.0.2:7400".into())
        } else {
            durable::Owner::Here
        }
    }
}

/// A placement written against the `durable` crate alone: over QUIC, the typed stub
/// of an object placed elsewhere gets `Moved` with its owner (not applied, nothing
/// activated here), while the others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_from_the_facade_sends_a_stub_elsewhere_and_serves_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let host = durable::Host::builder(dir.path())
        .register::<Counter>()
        .listen("127.0.0.1:0".parse().unwrap())
        .placement(std::sync::Arc::new(AwayElsewhere))
        .start()
        .await
        .unwrap();
    let client = durable::Client::connect(host.client_config().unwrap())
        .await
        .unwrap();
    let err = client
        .get::<Counter>("away")
        .increment(1)
        .await
        .unwrap_err();
    assert_eq!(err, CallError::Moved("10.0.0.2:7400".into()));
    assert!(err.is_retry_safe(), "{err:?}");
    assert_eq!(client.get::<Counter>("home").increment(1).await.unwrap(), 1);
    client.close();
    host.shutdown().await;
    let stored: Vec<_> = durable::list_objects(dir.path())
        .unwrap()
        .into_iter()
        .map(|(_, _, name)| name)
        .collect();
    assert_eq!(stored, vec![Some("home".to_string())]);
}
