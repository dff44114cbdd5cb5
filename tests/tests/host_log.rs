//! The host log (issue 4), against a real host process: crash under load on many
//! objects, simulated power loss, a torn or corrupt log tail, restore to a bookmark,
//! and the change feed after a crash.

mod common;

use common::{copy_dir, host_cli, load_until_killed, HostProcess, Told};
use durable_examples::counter::Counter;
use durable_tests::Probe;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Checkpoints only at shutdown, so the log holds everything since the last clean stop.
const NO_CHECKPOINTS: &[&str] = &["--checkpoint-secs", "0"];

async fn assert_all_acknowledged_present(host: &HostProcess, told: &Told) {
    let client = host.client().await;
    let told = told.lock().unwrap().clone();
    for (name, (acked, sent)) in told {
        let value = client.get::<Counter>(&name).get().await.unwrap();
        assert!(
            value >= acked,
            "{name} = {value} but a client was told {acked}"
        );
        assert!(
            value <= sent,
            "{name} = {value}, more than the {sent} increments sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_under_load_on_many_objects_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let told = Told::default();
    load_until_killed(host, "n", 64, 64, Duration::from_millis(800), &told).await;
    let host = HostProcess::start(dir.path(), &[]);
    assert_all_acknowledged_present(&host, &told).await;
}

/// Build the data directory a power cut would leave: object files as of the last
/// checkpoint (`objects_at_checkpoint`), the log as written.
fn power_cut_copy(live: &Path, objects_at_checkpoint: &Path, copy: &Path) {
    copy_dir(&live.join("tls"), &copy.join("tls"));
    copy_dir(&live.join("log"), &copy.join("log"));
    copy_dir(objects_at_checkpoint, &copy.join("objects"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_power_loss_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    // Some objects exist before the checkpoint.
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let client = host.client().await;
    for i in 0..8 {
        client
            .get::<Counter>(&format!("n{i}"))
            .increment(100)
            .await
            .unwrap();
    }
    assert!(host.terminate().success(), "clean stop (checkpoint)");
    let at_checkpoint = dir.path().join("objects-at-checkpoint");
    copy_dir(&live.join("objects"), &at_checkpoint);

    // Load on old and new objects, then the machine "loses power".
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let told = Told::default();
    load_until_killed(host, "n", 24, 48, Duration::from_millis(800), &told).await;
    let copy = dir.path().join("after-power-cut");
    power_cut_copy(&live, &at_checkpoint, &copy);
    let host = HostProcess::start(&copy, &[]);
    // The counters that existed at the checkpoint had 100 before the load.
    let client = host.client().await;
    let told_now = told.lock().unwrap().clone();
    for (name, (acked, sent)) in told_now {
        let value = client.get::<Counter>(&name).get().await.unwrap();
        let base = if name[1..].parse::<usize>().unwrap() < 8 {
            100
        } else {
            0
        };
        assert!(
            value >= acked,
            "{name} = {value} but a client was told {acked}"
        );
        assert!(
            value <= base + sent,
            "{name} = {value}, more than {base} + {sent} sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_corrupt_log_tail_is_cut_reported_and_never_applied() {
    for damage in ["truncate", "flip"] {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("live");
        let host = HostProcess::start(&live, NO_CHECKPOINTS);
        host.client()
            .await
            .get::<Counter>("c")
            .increment(0)
            .await
            .unwrap();
        assert!(host.terminate().success());
        let at_checkpoint = dir.path().join("objects-at-checkpoint");
        copy_dir(&live.join("objects"), &at_checkpoint);

        let host = HostProcess::start(&live, NO_CHECKPOINTS);
        let counter = host.client().await.get::<Counter>("c");
        for i in 1..=10 {
            assert_eq!(counter.increment(1).await.unwrap(), i);
        }
        host.kill9();

        // Damage the last record of the newest segment.
        let newest = &newest_segment(&live.join("log"));
        let mut bytes = std::fs::read(newest).unwrap();
        let full = records_end(&bytes);
        bytes.truncate(full);
        match damage {
            "truncate" => bytes.truncate(full - 5),
            _ => bytes[full - 3] ^= 0x55,
        }
        std::fs::write(newest, &bytes).unwrap();

        let copy = dir.path().join("copy");
        power_cut_copy(&live, &at_checkpoint, &copy);
        let log = dir.path().join("host.log");
        let host = HostProcess::start_logged(&copy, &[], Some(&log));
        // Increments 1..=9 are replayed; the damaged tenth is not.
        assert_eq!(
            host.client().await.get::<Counter>("c").get().await.unwrap(),
            9,
            "{damage}"
        );
        let report = std::fs::read_to_string(&log).unwrap();
        assert!(
            report.contains("log tail cut at the last good record"),
            "{damage}: {report}"
        );
        let copied_segment = copy.join("log").join(newest.file_name().unwrap());
        if copied_segment.exists() {
            assert!(std::fs::metadata(&copied_segment).unwrap().len() < full as u64);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_a_bookmark_between_two_writes_keeps_exactly_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let probe = client.get::<Probe>("p");
    probe.put("first".into(), 1).await.unwrap();
    let bookmark = probe
        .bookmark()
        .await
        .unwrap()
        .expect("the host log gives bookmarks");
    probe.put("second".into(), 2).await.unwrap();

    // Online, from code.
    probe.restore(bookmark).await.unwrap();
    assert_eq!(probe.get("first".into()).await.unwrap(), Some(1));
    assert_eq!(probe.get("second".into()).await.unwrap(), None);
    // The restored object takes new writes, and they survive a crash.
    probe.put("third".into(), 3).await.unwrap();
    let bookmark2 = probe.bookmark().await.unwrap().unwrap();
    probe.put("fourth".into(), 4).await.unwrap();
    host.kill9();

    // Offline, from the CLI.
    let data = dir.path().to_str().unwrap();
    let (ok, out, err) = host_cli(&[
        "restore-object",
        "--data-dir",
        data,
        "Probe",
        "p",
        "--to",
        &bookmark2.to_string(),
    ]);
    assert!(ok, "{out}{err}");
    let host = HostProcess::start(dir.path(), &[]);
    let probe = host.client().await.get::<Probe>("p");
    assert_eq!(probe.get("first".into()).await.unwrap(), Some(1));
    assert_eq!(probe.get("second".into()).await.unwrap(), None);
    assert_eq!(probe.get("third".into()).await.unwrap(), Some(3));
    assert_eq!(probe.get("fourth".into()).await.unwrap(), None);

    // A running host's data directory is refused.
    let (ok, _, err) = host_cli(&[
        "restore-object",
        "--data-dir",
        data,
        "Probe",
        "p",
        "--to",
        "1",
    ]);
    assert!(!ok && err.contains("in use"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_feed_after_a_crash_has_each_change_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--checkpoint-secs", "1"]);
    let client = host.client().await;
    // One sequential caller per object: each increment is its own batch.
    let mut tasks = Vec::new();
    for i in 0..6 {
        let counter = client
            .get::<Counter>(&format!("f{i}"))
            .with_deadline(Duration::from_secs(2));
        tasks.push(tokio::spawn(async move {
            while counter.increment(1).await.is_ok() {}
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    host.kill9();
    for t in tasks {
        t.await.unwrap();
    }
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let data = dir.path().to_str().unwrap();
    let (ok, out, err) = host_cli(&["changes", "--data-dir", data]);
    assert!(ok, "{err}");
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    let mut last_lsn: HashMap<String, u64> = HashMap::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if v["class"] != "Counter" || v["table"] != "counter" {
            continue;
        }
        let object = v["object"].as_str().unwrap().to_string();
        let lsn = v["lsn"].as_u64().unwrap();
        let prev = last_lsn.insert(object.clone(), lsn);
        assert!(prev.is_none_or(|p| p < lsn), "lsn order per object");
        assert_eq!(v["op"], "update", "{line}");
        seen.entry(object)
            .or_default()
            .push(v["new"]["value"].as_i64().unwrap());
    }
    assert_eq!(seen.len(), 6, "{out}");
    for i in 0..6 {
        let name = format!("f{i}");
        let value = client.get::<Counter>(&name).get().await.unwrap();
        let id = durable::ObjectId::from_name("Counter", &name).to_string();
        let values = &seen[&id];
        assert_eq!(
            values,
            &(1..=value).collect::<Vec<_>>(),
            "{name}: each change once, in order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_object_file_torn_by_a_power_cut_is_rebuilt_from_its_logged_image() {
    // New objects are created without syncs of their own (their first log record is
    // a whole image): a power cut before the next checkpoint can leave their file
    // missing or torn. Both must come back whole from the log.
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let client = host.client().await;
    for name in ["torn", "missing"] {
        let counter = client.get::<Counter>(name);
        assert_eq!(counter.increment(5).await.unwrap(), 5);
        assert_eq!(counter.increment(2).await.unwrap(), 7);
    }
    let torn_id = durable::ObjectId::from_name("Counter", "torn");
    let file = live
        .join("objects")
        .join("Counter")
        .join(format!("{torn_id}.db"));
    let head = std::fs::read(&file).unwrap();
    host.kill9();

    let copy = dir.path().join("copy");
    let empty = dir.path().join("no-objects");
    std::fs::create_dir_all(&empty).unwrap();
    power_cut_copy(&live, &empty, &copy);
    // The torn file: its first bytes reached the disk, nothing else did.
    let torn = copy.join("objects").join("Counter");
    std::fs::create_dir_all(&torn).unwrap();
    std::fs::write(
        torn.join(format!("{torn_id}.db")),
        &head[..head.len().min(100)],
    )
    .unwrap();

    let host = HostProcess::start(&copy, &[]);
    let client = host.client().await;
    assert_eq!(client.get::<Counter>("torn").get().await.unwrap(), 7);
    assert_eq!(client.get::<Counter>("missing").get().await.unwrap(), 7);
}

/// Where a segment's records end: the host preallocates segments, so a killed host's
/// newest one goes on in zeros (a zero length marks the end).
fn records_end(bytes: &[u8]) -> usize {
    record_starts(bytes).last().map_or(0, |&at| {
        at + 4 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize
    })
}

fn newest_segment(log_dir: &Path) -> std::path::PathBuf {
    let mut segments: Vec<_> = std::fs::read_dir(log_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

fn lsns(data: &Path) -> Vec<u64> {
    let (ok, out, err) = host_cli(&["changes", "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["lsn"]
                .as_u64()
                .unwrap()
        })
        .collect()
}

/// A host under `dir/live` that stopped cleanly with counter `name` at 1, then
/// acknowledged increments up to `last` one at a time and was killed: its data
/// directory, and a copy of its objects as of the clean stop (`dir/objects-at-checkpoint`).
async fn killed_after_increments(
    dir: &Path,
    name: &str,
    last: i64,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let live = dir.join("live");
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let counter = host.client().await.get::<Counter>(name);
    assert_eq!(counter.increment(1).await.unwrap(), 1);
    assert!(host.terminate().success());
    let at_checkpoint = dir.join("objects-at-checkpoint");
    copy_dir(&live.join("objects"), &at_checkpoint);
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let counter = host.client().await.get::<Counter>(name);
    for i in 2..=last {
        assert_eq!(counter.increment(1).await.unwrap(), i);
    }
    host.kill9();
    (live, at_checkpoint)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_followed_by_intact_records_refuses_to_start_until_salvaged_and_lsns_never_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let (live, at_checkpoint) = killed_after_increments(dir.path(), "d", 11).await;
    let highest_before = *lsns(&live).iter().max().unwrap();

    // One flipped byte in the middle of the newest segment: intact records follow it.
    let copy = dir.path().join("copy");
    power_cut_copy(&live, &at_checkpoint, &copy);
    let segment = newest_segment(&copy.join("log"));
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = records_end(&bytes) / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    let data = copy.to_str().unwrap();
    let (ok, _, err) = host_cli(&["serve", "--data-dir", data, "--listen", "127.0.0.1:0"]);
    assert!(!ok, "a host started on a log damaged in the middle");
    let name = segment.file_name().unwrap().to_str().unwrap();
    assert!(err.contains(name) && err.contains("byte"), "{err}");
    assert!(err.contains("salvage-log"), "{err}");

    let (ok, out, err) = host_cli(&["salvage-log", "--data-dir", data]);
    assert!(ok, "{err}");
    assert!(
        out.contains("intact records after the damage moved to"),
        "{out}"
    );

    let host = HostProcess::start(&copy, &[]);
    let counter = host.client().await.get::<Counter>("d");
    let kept = counter.get().await.unwrap();
    assert!(
        (1..11).contains(&kept),
        "the records before the damage: {kept}"
    );
    assert_eq!(counter.increment(1).await.unwrap(), kept + 1);
    drop(host);
    let after = lsns(&copy);
    assert!(
        after.windows(2).all(|w| w[0] < w[1]),
        "lsns increase and never repeat: {after:?}"
    );
    assert!(
        *after.last().unwrap() > highest_before,
        "the new write's lsn {} reuses one at or below {highest_before}",
        after.last().unwrap()
    );
}

/// The offsets at which a segment's records start.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += 4 + len;
    }
    starts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_round_is_cut_at_start_while_damage_before_a_later_round_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (live, at_checkpoint) = killed_after_increments(dir.path(), "t", 6).await;
    // One call at a time: each increment was a round of its own, its record marked as
    // a round's first (the kind byte's high bit, 24 bytes into the record).
    let segment = newest_segment(&live.join("log"));
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.truncate(records_end(&bytes));
    let starts = record_starts(&bytes);
    assert_eq!(starts.len(), 5, "increments 2..=6");
    assert!(starts.iter().all(|&at| bytes[at + 24] & 0x80 != 0));
    let (fifth, sixth) = (starts[3], starts[4]);

    // As if the last two had been one round, torn by a power cut: the sixth's mark
    // cleared (and its checksum fixed), a page of zeros where the fifth was.
    let mut torn = bytes.clone();
    torn[sixth + 24] &= 0x7f;
    let crc = crc32fast::hash(&torn[sixth + 8..]);
    torn[sixth + 4..sixth + 8].copy_from_slice(&crc.to_le_bytes());
    torn[fifth + 8..sixth].fill(0);
    torn.extend([0; 4096]);
    // The same hole with the sixth still a round of its own: damage before a later
    // round, which proves the fifth's round was synced.
    let mut damaged = bytes.clone();
    damaged[fifth + 8..sixth].fill(0);

    let name = segment.file_name().unwrap().to_owned();
    for (case, content) in [("damaged", damaged), ("torn", torn)] {
        let copy = dir.path().join(case);
        power_cut_copy(&live, &at_checkpoint, &copy);
        std::fs::write(copy.join("log").join(&name), &content).unwrap();
        let log = dir.path().join(format!("{case}.log"));
        if case == "damaged" {
            let data = copy.to_str().unwrap();
            let (ok, _, err) = host_cli(&["serve", "--data-dir", data, "--listen", "127.0.0.1:0"]);
            assert!(!ok, "started on damage followed by a later round");
            assert!(err.contains("salvage-log"), "{err}");
            continue;
        }
        let host = HostProcess::start_logged(&copy, &[], Some(&log));
        assert_eq!(
            host.client().await.get::<Counter>("t").get().await.unwrap(),
            4,
            "the records before the torn round"
        );
        let report = std::fs::read_to_string(&log).unwrap();
        assert!(report.contains("last round is torn"), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_in_a_segment_recovery_does_not_need_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let counter = host.client().await.get::<Counter>("n");
    for i in 1..=10 {
        assert_eq!(counter.increment(1).await.unwrap(), i);
    }
    // A clean stop checkpoints: every record is now behind the checkpoint.
    assert!(host.terminate().success());
    let segment = newest_segment(&live.join("log"));
    let mut bytes = std::fs::read(&segment).unwrap();
    let middle = records_end(&bytes) / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();
    let log = dir.path().join("host.log");
    let host = HostProcess::start_logged(&live, &[], Some(&log));
    assert_eq!(
        host.client().await.get::<Counter>("n").get().await.unwrap(),
        10
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("recovery does not need it"), "{text}");
}

/// The batch number each object's digest was recorded at, from the host's catalog.
fn digest_seqs(data_dir: &Path) -> Vec<(String, i64)> {
    let Ok(conn) = rusqlite::Connection::open_with_flags(
        data_dir.join("catalog.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    ) else {
        return Vec::new();
    };
    let Ok(mut stmt) =
        conn.prepare("SELECT class, digest_seq FROM objects WHERE digest_seq IS NOT NULL")
    else {
        return Vec::new();
    };
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(|rows| rows.filter_map(Result::ok).collect())
        .unwrap_or_default()
}

/// A power cut soon after objects went quiet: their digests (recorded at their last
/// batch) reached the catalog, their files (synced only at checkpoints) did not keep
/// those batches, and the log holds them. Recovery replays the log into the files; a
/// file behind its digest by batches the log still holds is not damaged. With no
/// retained segments to rebuild from (`--retention-days 0`), calling it damaged lost
/// every acknowledged write since the checkpoint and refused the objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_after_objects_went_quiet_keeps_their_writes() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let names: Vec<String> = (0..4).map(|i| format!("q{i}")).collect();
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let client = host.client().await;
    for name in &names {
        client.get::<Counter>(name).increment(100).await.unwrap();
    }
    assert!(host.terminate().success(), "clean stop (checkpoint)");
    let at_checkpoint = dir.path().join("objects-at-checkpoint");
    copy_dir(&live.join("objects"), &at_checkpoint);
    // Their digests as they stopped.
    let stopped = digest_seqs(&live);
    assert_eq!(stopped.len(), names.len(), "{stopped:?}");

    // More writes, acknowledged; then the objects go quiet and record their digests.
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let client = host.client().await;
    for name in &names {
        for _ in 0..5 {
            client.get::<Counter>(name).increment(1).await.unwrap();
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let moved_on = || {
        let now = digest_seqs(&live);
        now.len() == names.len()
            && now
                .iter()
                .all(|(_, seq)| stopped.iter().all(|(_, before)| seq > before))
    };
    while !moved_on() {
        assert!(
            std::time::Instant::now() < deadline,
            "the quiet objects' digests never reached the catalog: {:?}",
            digest_seqs(&live)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    host.kill9();

    // What a power cut leaves: the files as of the checkpoint, the log as written, the
    // catalog with the digests, and the marker of a host that did not stop cleanly.
    let copy = dir.path().join("after-power-cut");
    power_cut_copy(&live, &at_checkpoint, &copy);
    for file in ["catalog.db", "catalog.db-wal", "running"] {
        if live.join(file).exists() {
            std::fs::copy(live.join(file), copy.join(file)).unwrap();
        }
    }
    assert!(
        copy.join("running").exists(),
        "the host was killed, not stopped"
    );
    let host = HostProcess::start(&copy, &["--retention-days", "0"]);
    let client = host.client().await;
    for name in &names {
        assert_eq!(
            client.get::<Counter>(name).get().await.unwrap(),
            105,
            "{name}: every acknowledged increment survives"
        );
    }
    let moved_aside: Vec<_> = walk_files(&copy.join("objects"))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("damaged"))
        .collect();
    assert!(
        moved_aside.is_empty(),
        "healthy files moved aside: {moved_aside:?}"
    );
}

fn walk_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk_files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// After a power cut, an offline `restore-object` of one object first replays the log
/// into every object, then checkpoints. An alarm another object set since the last
/// checkpoint must reach the alarm index there, as a starting host's replay records
/// it: the index file as the power cut left it lacks the alarm, and once that
/// checkpoint is written no later replay brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_restore_after_a_power_cut_indexes_the_alarms_it_replays() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let target = host.client().await.get::<Probe>("target");
    target.put("first".into(), 1).await.unwrap();
    let bookmark = target.bookmark().await.unwrap().unwrap();
    assert!(host.terminate().success(), "clean stop (checkpoint)");
    let at_checkpoint = dir.path().join("objects-at-checkpoint");
    copy_dir(&live.join("objects"), &at_checkpoint);
    let index_at_checkpoint = dir.path().join("index-at-checkpoint");
    std::fs::create_dir_all(&index_at_checkpoint).unwrap();
    for file in ["alarms.db", "alarms.db-wal"] {
        if live.join(file).exists() {
            std::fs::copy(live.join(file), index_at_checkpoint.join(file)).unwrap();
        }
    }

    // An alarm set, acknowledged (so in the log); then the power goes.
    let host = HostProcess::start(&live, NO_CHECKPOINTS);
    let client = host.client().await;
    let due = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1_500;
    client
        .get::<Probe>("ringer")
        .ring_at("k".into(), due, 0)
        .await
        .unwrap();
    client
        .get::<Probe>("target")
        .put("second".into(), 2)
        .await
        .unwrap();
    host.kill9();
    let copy = dir.path().join("after-power-cut");
    power_cut_copy(&live, &at_checkpoint, &copy);
    for file in ["catalog.db", "catalog.db-wal", "running"] {
        if live.join(file).exists() {
            std::fs::copy(live.join(file), copy.join(file)).unwrap();
        }
    }
    copy_dir(&index_at_checkpoint, &copy);

    let data = copy.to_str().unwrap();
    let (ok, out, err) = host_cli(&[
        "restore-object",
        "--data-dir",
        data,
        "Probe",
        "target",
        "--to",
        &bookmark.to_string(),
    ]);
    assert!(ok, "{out}{err}");
    let host = HostProcess::start(&copy, &[]);
    let ringer = host.client().await.get::<Probe>("ringer");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while ringer.rings().await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the replayed alarm never fired (pending in the object: {:?})",
            ringer.pending().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ringer.rings().await.unwrap().len(), 1);
}

/// A thin-provisioned disk: an ext4 file system (no journal, so that failed data
/// writes leave it mounted) on a loop device over a sparse 512 MiB image on a 48 MiB
/// tmpfs. Filling the tmpfs makes the device's writes fail as a thin volume out of
/// space does: writeback fails, and `fsync` reports it (once). CI runs as root.
struct ThinDisk {
    backing: std::path::PathBuf,
    mount: std::path::PathBuf,
    device: String,
}

impl ThinDisk {
    fn mount(backing: &Path, at: &Path) -> ThinDisk {
        let run = |cmd: &str, args: &[&str]| -> String {
            let out = std::process::Command::new(cmd)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
            assert!(
                out.status.success(),
                "this test makes a thin disk (tmpfs, a loop device, ext4) and needs root: {cmd} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        std::fs::create_dir_all(backing).unwrap();
        std::fs::create_dir_all(at).unwrap();
        let b = backing.to_str().unwrap();
        run("mount", &["-t", "tmpfs", "-o", "size=48m", "tmpfs", b]);
        let image = backing.join("image");
        let i = image.to_str().unwrap();
        run("truncate", &["-s", "512M", i]);
        run("mkfs.ext4", &["-q", "-O", "^has_journal", i]);
        let device = run("losetup", &["-f", "--show", i]);
        run(
            "mount",
            &["-o", "errors=continue", &device, at.to_str().unwrap()],
        );
        ThinDisk {
            backing: backing.to_owned(),
            mount: at.to_owned(),
            device,
        }
    }

    /// Take the rest of the backing store; returns the filler to remove later.
    fn exhaust(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.backing.join("filler");
        let mut f = std::fs::File::create(&path).unwrap();
        let mut chunk = 1 << 20;
        while chunk > 0 {
            if f.write_all(&vec![1u8; chunk]).is_err() {
                chunk /= 2;
            }
        }
        path
    }
}

impl Drop for ThinDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.mount)
            .status();
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.device])
            .status();
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.backing)
            .status();
    }
}

fn checkpoint_lsn(data: &Path) -> u64 {
    std::fs::read_to_string(data.join("log").join("checkpoint"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Once a checkpoint failed to sync an object's file (its writeback failed: a thin
/// volume out of space), no later checkpoint of that host passes the log records the
/// file may lack, even once the disk takes writes again: Linux reports a failed
/// writeback once, so a later sync that succeeds proves nothing, and the pages may be
/// gone. The log keeps the records for the next start, which checks the files as
/// after a crash (the running marker stays after a clean stop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_sync_of_an_object_file_no_checkpoint_passes_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let disk = ThinDisk::mount(&dir.path().join("thin"), &data.join("objects"));
    let log = dir.path().join("host.log");
    let host = HostProcess::start_logged(
        &data,
        &["--checkpoint-secs", "1", "--http", "127.0.0.1:0"],
        Some(&log),
    );
    let client = host.client().await;
    for i in 0..8 {
        client
            .get::<Counter>(&format!("t{i}"))
            .increment(1)
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while checkpoint_lsn(&data) == 0 {
        assert!(std::time::Instant::now() < deadline, "no first checkpoint");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The volume runs out of space: acknowledged writes (the log is elsewhere) go on;
    // the objects' files take them in the page cache; their writeback fails.
    let filler = disk.exhaust();
    let failed = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("checkpoint: syncing an object failed")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while !failed() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint sync failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        for i in 0..8 {
            client
                .get::<Counter>(&format!("t{i}"))
                .increment(1)
                .await
                .unwrap();
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let halted_at = checkpoint_lsn(&data);
    // Space again, more writes, and a few checkpoint periods: the checkpoint stays.
    std::fs::remove_file(filler).unwrap();
    for _ in 0..5 {
        for i in 0..8 {
            client
                .get::<Counter>(&format!("t{i}"))
                .increment(1)
                .await
                .unwrap();
        }
        // (Waiting for checkpoints that must not happen: a fixed wait.)
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    assert_eq!(
        checkpoint_lsn(&data),
        halted_at,
        "a checkpoint passed records after a failed sync ({n} rounds of writes)"
    );
    // Shown to the operator's metrics...
    let metrics = common::metrics_at(host.http.unwrap(), &common::token(&host)).await;
    assert!(
        metrics.lines().any(|l| l == "durable_checkpoints_halted 1"),
        "{metrics}"
    );
    // ...and said once, not at every checkpoint period.
    let said = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(said.matches("checkpoints stop until").count(), 1, "{said}");
    assert!(said.matches("checkpoint failed").count() <= 1, "{said}");
    assert!(host.terminate().success());
    assert!(
        data.join("running").exists(),
        "after a failed sync, the next start checks the files as after a crash"
    );
    drop(disk);
}

/// The peak resident memory of a process, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status")
}

/// Recovery reads the log past the checkpoint in two passes: where each record lies,
/// then each object's records read back and replayed a chunk at a time. With the
/// host's checkpoint thread frozen (cgroup v1 freezer; a stalled checkpointer, as one
/// whose sync failed stops for good), 400 objects write a 1 MiB blob each: the log past
/// the checkpoint grows to over 400 MiB; `kill -9`. The restarted host's peak memory
/// grows by far less than the log (before, it held every record past the checkpoint:
/// more than the log's size), and every object has its blob.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_replays_a_log_larger_than_it_holds_in_memory() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), NO_CHECKPOINTS);
    let pid = host.child.id();
    let checkpointer = common::FrozenThread::freeze(pid, "durable-checkpo");
    let client = host.client().await;
    let writes = (0..400).map(|i| {
        let probe = client.get::<Probe>(&format!("big{i}"));
        async move { probe.put_blob("b".into(), 1 << 20).await.unwrap() }
    });
    futures_util::stream::iter(writes)
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    drop(client);
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    checkpointer.thaw();
    let mut host = host;
    host.child.wait().unwrap();
    drop(checkpointer);
    drop(host);
    let log_bytes: u64 = std::fs::read_dir(dir.path().join("log"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(log_bytes > 400 << 20, "the log holds {log_bytes} bytes");
    // A host's own peak with nothing to replay, for comparison.
    let empty = tempfile::tempdir().unwrap();
    let idle = HostProcess::start(empty.path(), NO_CHECKPOINTS);
    let baseline = peak_rss_kib(idle.child.id());
    drop(idle);
    let host = HostProcess::start(dir.path(), NO_CHECKPOINTS);
    let peak = peak_rss_kib(host.child.id());
    assert!(
        peak < baseline + 220 * 1024,
        "recovery's peak {peak} KiB, a host's own {baseline} KiB, for a log of {log_bytes} bytes"
    );
    let client = host.client().await;
    for i in [0, 1, 199, 398, 399] {
        let blobs = client
            .get::<Probe>(&format!("big{i}"))
            .blobs()
            .await
            .unwrap();
        assert_eq!(blobs, vec!["b".to_string()], "big{i}");
    }
}

/// An object file lost while the log past the checkpoint holds only changes for it is
/// rebuilt from its latest retained image, with the records since read back and
/// replayed a chunk at a time. One object writes 110 random blobs of 1 MiB after its
/// first image (each replacing one of four keys: about 215 MB of log, old and new
/// values), the host stops cleanly (a checkpoint: the history goes to the archive),
/// writes once more and is killed; its file is deleted. The restarted host's peak
/// memory grows by less than that history (before, it held all of it at once), and the
/// object has every key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_file_is_rebuilt_from_a_history_larger_than_recovery_holds_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    common::random_history(&client, "hist", 110, 4).await;
    drop(client);
    assert!(host.terminate().success());
    let archived: u64 = std::fs::read_dir(dir.path().join("archive"))
        .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).sum())
        .unwrap_or(0);
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    client
        .get::<Probe>("hist")
        .put_blob("last".into(), 10)
        .await
        .unwrap();
    drop(client);
    host.kill9();
    std::fs::remove_dir_all(dir.path().join("objects").join("Probe")).unwrap();
    let empty = tempfile::tempdir().unwrap();
    let idle = HostProcess::start(empty.path(), &[]);
    let baseline = peak_rss_kib(idle.child.id());
    drop(idle);
    let log = empty.path().join("host.log");
    let host = HostProcess::start_logged(dir.path(), &[], Some(&log));
    let peak = peak_rss_kib(host.child.id());
    let client = host.client().await;
    assert_eq!(
        client.get::<Probe>("hist").blobs().await.unwrap(),
        vec!["b0", "b1", "b2", "b3", "last"],
        "rebuilt from the archive"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("the object's file is missing; rebuilding it"),
        "{text}"
    );
    assert!(
        peak < baseline + 160 * 1024,
        "recovery's peak {peak} KiB, a host's own {baseline} KiB, for {archived} archived bytes"
    );
}

/// A restore reads only where its object's records lie, then reads those back a chunk
/// at a time: another object's 195 MB of retained history does not pass through
/// memory (before, a restore read every retained record of every object at once: the
/// host's peak rose by more than the whole retained log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_does_not_read_the_retained_log_into_memory() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let small = client.get::<Probe>("small");
    small.put("k".into(), 1).await.unwrap();
    let bookmark = small.bookmark().await.unwrap().expect("a bookmark");
    small.put("k".into(), 2).await.unwrap();
    common::random_history(&client, "other", 100, 4).await;
    let before = peak_rss_kib(host.child.id());
    small.restore(bookmark).await.unwrap();
    assert_eq!(small.get("k".into()).await.unwrap(), Some(1), "restored");
    let after = peak_rss_kib(host.child.id());
    assert!(
        after < before + 120 * 1024,
        "the host's peak went from {before} KiB to {after} KiB in the restore"
    );
}

/// A restore across a lost segment of its object's history refuses (it would build a
/// state the object never had) and says which batches are missing; the object keeps
/// its state. (Before, a restore read on across the gap, or stopped at a damaged
/// segment and silently restored an earlier state than asked for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_across_a_lost_segment_of_its_history_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let probe = client.get::<Probe>("gap");
    probe.put("k".into(), 1).await.unwrap();
    // About 140 MB of history after the image: three segments of 64 MiB or more.
    common::random_history(&client, "gap", 70, 2).await;
    probe.put("k".into(), 2).await.unwrap();
    let bookmark = probe.bookmark().await.unwrap().expect("a bookmark");
    drop(client);
    assert!(host.terminate().success());
    // The segments after the first (which holds the image) and before the last.
    let mut segments: Vec<std::path::PathBuf> = ["archive", "log"]
        .iter()
        .filter_map(|d| std::fs::read_dir(dir.path().join(d)).ok())
        .flatten()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segments.sort_by_key(|p| p.file_name().unwrap().to_owned());
    assert!(segments.len() >= 3, "{segments:?}");
    std::fs::remove_file(&segments[1]).unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, out, err) = host_cli(&[
        "restore-object",
        "--data-dir",
        data,
        "Probe",
        "gap",
        "--to",
        &bookmark.to_string(),
    ]);
    assert!(!ok, "restored across the gap: {out}");
    assert!(err.contains("lacks the object's batches"), "{err}");
    let host = HostProcess::start(dir.path(), &[]);
    let probe = host.client().await.get::<Probe>("gap");
    assert_eq!(probe.get("k".into()).await.unwrap(), Some(2));
}
