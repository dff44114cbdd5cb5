//! Typed outcomes and turn effects, against a real host process: a write the full
//! disk refuses is answered "not applied" (and is not applied, even after a crash),
//! reads go on, and writes work again once space is freed, without a restart; a turn that returns
//! `Err` or panics discards what it asked for (a restore) with its writes; restores
//! run concurrently without sharing scratch files; a file commit that fails after the
//! log made its batch durable answers the batch as applied; writes work again after a
//! refusal once the quiet object has closed its files; a resend refused as not applied
//! after an attempt was lost once sent is answered indeterminate.

mod common;

use common::{method_fingerprint, until_object_files_closed, HostProcess};
use durable::{CallError, Retry};
use durable_examples::counter::Counter;
use durable_tests::{Probe, ProbeError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_asked_for_by_a_turn_that_fails_or_panics_does_not_happen() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let probe = client.get::<Probe>("p");
    probe.put("first".into(), 1).await.unwrap();
    let bookmark = probe.bookmark().await.unwrap().expect("bookmarks");
    probe.put("second".into(), 2).await.unwrap();

    let err = probe.restore_then_fail(bookmark).await.unwrap_err();
    assert_eq!(
        err,
        CallError::Application(ProbeError::Refused { value: 0 })
    );
    assert_eq!(err.retry(), Retry::FailedInMethod);
    assert_eq!(probe.get("second".into()).await.unwrap(), Some(2));

    let err = probe.restore_then_panic(bookmark).await.unwrap_err();
    assert!(matches!(err, CallError::ObjectReset(_)), "{err:?}");
    assert_eq!(probe.get("second".into()).await.unwrap(), Some(2));

    // The same request from a turn that returns Ok does restore.
    probe.restore(bookmark).await.unwrap();
    assert_eq!(probe.get("second".into()).await.unwrap(), None);
    assert_eq!(probe.get("first".into()).await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_objects_restore_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let mut bookmarks = Vec::new();
    for i in 0..12 {
        let probe = client.get::<Probe>(&format!("r{i}"));
        probe.put("first".into(), i).await.unwrap();
        bookmarks.push(probe.bookmark().await.unwrap().unwrap());
        probe.put("second".into(), i).await.unwrap();
    }
    let restores = bookmarks.iter().enumerate().map(|(i, b)| {
        let probe = client.get::<Probe>(&format!("r{i}"));
        let b = *b;
        async move { probe.restore(b).await }
    });
    for result in futures_util::future::join_all(restores).await {
        result.unwrap();
    }
    for i in 0..12 {
        let probe = client.get::<Probe>(&format!("r{i}"));
        assert_eq!(probe.get("first".into()).await.unwrap(), Some(i));
        assert_eq!(
            probe.get("second".into()).await.unwrap(),
            None,
            "object r{i}"
        );
    }
    assert!(
        !dir.path().join("restore-tmp").exists()
            || std::fs::read_dir(dir.path().join("restore-tmp"))
                .unwrap()
                .next()
                .is_none(),
        "restores leave no scratch files"
    );
}

/// The one object database under `dir`.
fn find_db(dir: &Path) -> PathBuf {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            return find_db(&path);
        }
        if path.extension().is_some_and(|e| e == "db") {
            return path;
        }
    }
    panic!("no object database under {}", dir.display())
}

/// A small tmpfs of the test's own (CI runs as root), unmounted on drop.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs to fill it and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(at.to_owned())
    }

    /// Write a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut chunk = 1 << 20;
        while chunk > 0 {
            if f.write_all(&vec![0u8; chunk]).is_err() {
                chunk /= 2;
            }
        }
        let _ = f.sync_all();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_writes_as_not_applied_serves_reads_and_recovers_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("mnt"), "48m");
    let data = disk.0.join("data");
    let log = std::env::var_os("DURABLE_TEST_HOST_LOG")
        .map(PathBuf::from)
        .unwrap_or_else(|| dir.path().join("host.log"));
    let host = HostProcess::start_logged(&data, &[], Some(&log));
    let client = host.client().await;
    let counter = client.get::<Counter>("full");
    assert_eq!(counter.increment(5).await.unwrap(), 5);

    let filler = disk.fill();
    let object = client.object_ref("Counter", counter.id(), Some("full"));
    let fingerprint = method_fingerprint::<Counter>("increment");
    // The log may still fit a few records in its last page: write until one fails.
    let mut acked = 0;
    let mut failed = None;
    for _ in 0..1000 {
        let request = object.prepare("increment", fingerprint, &(1i64,));
        match object.call_request::<i64, durable::Error>(&request).await {
            Ok(v) => {
                acked += 1;
                assert_eq!(v, 5 + acked);
            }
            Err(e) => {
                failed = Some((request, e));
                break;
            }
        }
    }
    let (request, err) = failed.expect("a full disk fails a write within 1,000 calls");
    // Before issue 10 this was `Internal` "rolled back" yet applied after a restart;
    // then `Indeterminate` until a restart. Now the log cuts the failed write off, the
    // object undoes it, and the answer is a typed, certain "not applied".
    assert!(matches!(err, CallError::StorageFull(_)), "{err:?}");
    assert_eq!(err.retry(), Retry::NotApplied);
    assert!(!err.to_string().contains(data.to_str().unwrap()), "{err}");

    // The object's file commits its deferred batches once it is quiet (100 ms); on the
    // full disk that commit may fail too, and SQLite then drops its transaction: the
    // object rebuilds those batches from the log in memory and serves on.
    let host_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let quiet_commit = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    while !host_log().contains("SQLite commit failed")
        && !host_log().contains("committing the object's file failed")
        && tokio::time::Instant::now() < quiet_commit
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Reads still work on the full disk, and see only what was acknowledged.
    assert_eq!(counter.get().await.unwrap(), 5 + acked);
    if host_log().contains("SQLite commit failed") {
        assert!(
            host_log().contains("rebuilt the object's missing batches from the host log"),
            "{}",
            host_log()
        );
        eprintln!("the file's commit failed and the object healed from the log");
    }
    // Writes keep failing, each as not applied, while the disk stays full.
    for _ in 0..3 {
        let e = counter.increment(100).await.unwrap_err();
        assert!(matches!(e, CallError::StorageFull(_)), "{e:?}");
    }
    assert_eq!(counter.get().await.unwrap(), 5 + acked);

    // Space comes back. Without any call, the object commits what it acknowledged to
    // its own file (healing first if its commit had failed): its file holds the value.
    std::fs::remove_file(filler).unwrap();
    let db = find_db(&data.join("objects"));
    // Read from a copy of the file and its WAL: a running host locks other processes
    // out of the files of its active objects (a torn copy fails to read: tried again).
    let copies = tempfile::tempdir().unwrap();
    let stored = || -> Option<i64> {
        let copy = copies.path().join("copy.db");
        let _ = std::fs::remove_file(copies.path().join("copy.db-wal"));
        std::fs::copy(&db, &copy).ok()?;
        let mut wal = db.clone().into_os_string();
        wal.push("-wal");
        if let Ok(bytes) = std::fs::read(&wal) {
            std::fs::write(copies.path().join("copy.db-wal"), bytes).ok()?;
        }
        rusqlite::Connection::open(&copy)
            .ok()?
            .query_row("SELECT value FROM counter WHERE id = 1", [], |r| r.get(0))
            .ok()
    };
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while stored() != Some(5 + acked) {
        assert!(
            std::time::Instant::now() < give_up,
            "the object did not commit its acknowledged writes by itself: {:?}",
            stored()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The very next write succeeds, no restart.
    let first: i64 = object
        .call_request::<i64, durable::Error>(&request)
        .await
        .expect("a write succeeds as soon as space is freed");
    assert_eq!(first, 5 + acked + 1);
    let again: i64 = object
        .call_request::<i64, durable::Error>(&request)
        .await
        .unwrap();
    assert_eq!(again, first, "the same request id is applied once");
    assert_eq!(counter.increment(1).await.unwrap(), first + 1);

    // Nothing acknowledged is lost and nothing refused shows up after a crash.
    drop(client);
    host.kill9();
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    assert_eq!(
        client.get::<Counter>("full").get().await.unwrap(),
        first + 1
    );
    drop(host);
}

/// The object's file commits after every batch while it is being read (see
/// `durable-runtime/src/reads.rs`). When that commit fails (its disk is full) after the
/// host log made the batch durable, the batch is applied (the object rebuilds its file
/// from the log), and its caller hears so: not `Indeterminate`, as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_commit_failing_after_the_log_made_its_batch_durable_answers_applied() {
    let dir = tempfile::tempdir().unwrap();
    // The object files on a small disk of their own; the host log and the rest of the
    // data directory stay on the big one, so the log keeps taking writes.
    let disk = SmallDisk::mount(&dir.path().join("mnt"), "8m");
    let objects = disk.0.join("objects");
    std::fs::create_dir_all(&objects).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(&objects, data.join("objects")).unwrap();
    let log = dir.path().join("host.log");
    let host = HostProcess::start_logged(&data, &[], Some(&log));
    let host_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let client = host.client().await;
    let counter = client.get::<Counter>("split");
    let mut value = counter.increment(1).await.unwrap();
    assert_eq!(value, 1);

    const APPLIED: &str = "the batch is durable in the host log though its file commit failed";
    let filler = disk.fill();
    // Each read makes the next write commit the file at once; the first commit that
    // needs a new page of its WAL fails.
    for _ in 0..200 {
        assert_eq!(counter.get().await.unwrap(), value);
        let answer = counter.increment(1).await;
        value += 1;
        assert_eq!(
            answer.unwrap_or_else(|e| panic!("write {value} on a full object disk: {e:?}")),
            value
        );
        if host_log().contains(APPLIED) {
            break;
        }
    }
    // The failure went through the batch's own commit (not the quiet-time one).
    assert!(
        host_log().contains(APPLIED),
        "no batch's file commit failed on the full disk: {}",
        host_log()
    );
    // It serves on from what the log holds, reads and writes alike.
    for _ in 0..3 {
        value += 1;
        assert_eq!(counter.increment(1).await.unwrap(), value);
        assert_eq!(counter.get().await.unwrap(), value);
    }

    // Space comes back; after a crash every acknowledged write is there.
    std::fs::remove_file(filler).unwrap();
    drop(client);
    host.kill9();
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    assert_eq!(client.get::<Counter>("split").get().await.unwrap(), value);
    drop(host);
}

/// A full disk refuses writes while many are in flight; space comes back; the quiet
/// object then closes its connection (`--connection-idle-secs`). Durability watches
/// still waiting on the log handle it let go of must end quietly: before, they read the
/// closed channel as a failed log, and every later write on the object answered
/// `Indeterminate` ("sync failed") until it was evicted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_work_after_a_full_disk_refused_them_and_the_quiet_object_closed_its_files() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("mnt"), "48m");
    let data = disk.0.join("data");
    let host = HostProcess::start(&data, &["--connection-idle-secs", "0.3"]);
    let pid = host.child.id();
    let client = host.client().await;
    let counter = client.get::<Counter>("refused");
    assert_eq!(counter.increment(5).await.unwrap(), 5);

    // Three rounds: whether a watch is still waiting when the object closes depends on
    // timing (without the fix, each round caught it about two times in five).
    let mut base = 5;
    for round in 0..3 {
        let filler = disk.fill();
        // Waves of concurrent increments until the disk has refused some in a few
        // waves: batches are in flight on the log when it does.
        let (mut acked, mut unsure, mut refused) = (0i64, 0i64, 0);
        let mut refusing_waves = 0;
        for _ in 0..100 {
            let wave = (0..32).map(|_| counter.increment(1));
            for outcome in futures_util::future::join_all(wave).await {
                match outcome {
                    Ok(_) => acked += 1,
                    Err(CallError::StorageFull(_)) => refused += 1,
                    Err(e) if e.retry() == Retry::Indeterminate => unsure += 1,
                    Err(e) => panic!("unexpected outcome on a full disk: {e:?}"),
                }
            }
            if refused > 0 {
                refusing_waves += 1;
                if refusing_waves == 5 {
                    break;
                }
            }
        }
        assert!(refused > 0, "round {round}: the full disk refused no write");

        // Space comes back; without calls, the object heals and commits, goes quiet
        // and closes its files.
        std::fs::remove_file(filler).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        until_object_files_closed(pid, deadline).await;
        // Every later write is applied, and answered so.
        let mut last = 0;
        for _ in 0..3 {
            let v = counter.increment(1).await.unwrap_or_else(|e| {
                panic!("round {round}: a write after the disk freed and the object closed its files: {e:?}")
            });
            assert!(v > last, "{v} after {last}");
            last = v;
        }
        let low = base + acked + 3;
        assert!(
            (low..=low + unsure).contains(&last),
            "round {round}: {last} not within {low}..={}",
            low + unsure
        );
        assert_eq!(counter.get().await.unwrap(), last);
        base = last;
    }
}

/// A call whose connection is lost after it was sent is resent under its request id;
/// when the host refuses the resend as not applied (here: the object's queue is full,
/// because the first attempt still waits in it), the caller must not hear "not applied"
/// (safe to send again under any id): the first attempt may yet run, and does. It hears
/// `Indeterminate` (retry only under the same request id), and the write is applied
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_refused_as_not_applied_after_a_lost_attempt_is_indeterminate() {
    let dir = tempfile::tempdir().unwrap();
    // One call may wait while another runs.
    let host = HostProcess::start(dir.path(), &["--max-queue", "1"]);
    let client = host.client().await;
    let probe = client.get::<Probe>("lost");
    let holder = {
        let probe = probe.clone();
        tokio::spawn(async move { probe.sleep(2_000).await })
    };
    // The holder's turn runs (a call may read while it does: reads do not queue).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let queued = {
        let probe = probe.clone();
        tokio::spawn(async move { probe.put("k".into(), 7).await })
    };
    // Its frame reaches the host and waits in the object's queue; then the connection
    // goes, and the call is resent on a new one while the first attempt still waits.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    client.close();
    let outcome = queued.await.unwrap();
    match &outcome {
        Err(e @ CallError::Indeterminate(message)) => {
            assert_eq!(e.retry(), Retry::Indeterminate);
            assert!(!e.is_retry_safe());
            assert!(message.contains("may have been applied"), "{message}");
        }
        other => panic!("expected Indeterminate, got {other:?}"),
    }
    // The holder's connection went too: its own outcome is not the point here.
    let _ = holder.await.unwrap();
    // The first attempt ran once the holder's turn ended: the write was applied, once.
    let reader = host.client().await.get::<Probe>("lost");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        // Refused while the queue is still full.
        match reader.get("k".into()).await {
            Ok(Some(7)) => break,
            Ok(_) | Err(CallError::Overloaded { .. }) => {}
            Err(e) => panic!("reading back: {e}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first attempt never ran"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A turn that calls another object first makes the batch so far durable (the calls
/// before it in its batch, and its own writes until the call). If the rest of the
/// batch is then refused (here the disk fills while the callee runs), those earlier
/// calls were applied: they must not hear "not applied" with the refused rest. They,
/// and the calling turn (part of whose writes stay), hear `Indeterminate`; a resend
/// under the same request id tells the outcome; the earlier call's write is there.
/// The stream item the earlier call pushed is durable too: it reaches the stream's
/// live follower (it was dropped with the refused rest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_made_durable_before_a_turn_called_out_are_not_answered_not_applied() {
    use durable_tests::Hop;
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("mnt"), "48m");
    let host = HostProcess::start(&disk.0.join("data"), &["--http", "127.0.0.1:0"]);
    let client = host.client().await;
    let caller = client.get::<Hop>("caller");
    let sink = client.get::<Hop>("sink");
    caller.record_and_push(0).await.unwrap();
    sink.record(0).await.unwrap();
    // A live follower of the caller's stream, past its first item.
    let mut follower = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(host.http_url("/v1/objects/Hop/caller/streams/log?after=1"))
        .bearer_auth(common::token(&host))
        .send()
        .await
        .unwrap();
    assert_eq!(follower.status(), 200);

    // Hold the caller busy so that the next two calls wait and run as one batch.
    let busy = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.busy(400).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let object = client.object_ref("Hop", caller.id(), Some("caller"));
    let first_request = object.prepare(
        "record_and_push",
        method_fingerprint::<Hop>("record_and_push"),
        &(1i64,),
    );
    let first = {
        let (object, request) = (object.clone(), first_request.clone());
        tokio::spawn(async move { object.call_request::<(), durable::Error>(&request).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.write_wait_write(2, "sink".into(), 1_500).await })
    };
    busy.await.unwrap().unwrap();
    // The batch [record(1), write_wait_write(2)] runs; the second's call to the sink
    // made the first durable and now waits 1.5 s: fill the disk meanwhile, so that the
    // rest of the batch is refused.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let filler = disk.fill();

    let first = first.await.unwrap();
    let second = second.await.unwrap();
    for (what, outcome) in [
        ("the call before", first.map(drop)),
        ("the calling turn", second),
    ] {
        match outcome {
            Err(e) => {
                assert_eq!(e.retry(), Retry::Indeterminate, "{what}: {e:?}");
            }
            Ok(()) => panic!("{what}: answered Ok although the batch's end was refused"),
        }
    }

    // Space again: the first call's write is there, and its request id says so.
    std::fs::remove_file(filler).unwrap();
    let resent = object
        .call_request::<(), durable::Error>(&first_request)
        .await;
    assert!(resent.is_ok(), "{resent:?}");
    let seen = caller.seen().await.unwrap();
    assert!(seen.contains(&(1, "recorded".into())), "{seen:?}");
    // The calling turn's write before its call stays; the one after was undone.
    assert!(seen.contains(&(2, "wrote".into())), "{seen:?}");
    // The follower got the first call's item (its second), live.
    let mut events = String::new();
    while !events.contains("\"seq\":2") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(5), follower.chunk())
            .await
            .unwrap_or_else(|_| panic!("the durable item never reached the follower: {events:?}"))
            .unwrap()
            .expect("the event stream goes on");
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(events.contains("\"item\":1"), "{events:?}");
}
