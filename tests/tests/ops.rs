//! The operator commands against a real host process: `host call` (JSON over QUIC),
//! `host inspect` and `host alarms` while the host runs, and `host backup` under
//! write load restored with `host restore` into a directory a new host serves.

mod common;

use common::{host_cli, HostProcess};
use durable_tests::Ledger;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

fn call(host: &HostProcess, args: &[&str]) -> (bool, serde_json::Value) {
    let dir = host.data_dir.to_str().unwrap().to_string();
    let addr = host.addr.to_string();
    let mut all = vec!["call", "--data-dir", &dir, "--connect", &addr];
    all.extend_from_slice(args);
    let (ok, out, err) = host_cli(&all);
    let value = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("`host call` printed no JSON ({e}): {out:?} {err:?}"));
    (ok, value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_call_sends_json_arguments_and_prints_json_results_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    assert_eq!(
        call(&host, &["Counter", "c", "increment", r#"{"by": 5}"#]),
        (true, serde_json::json!(5))
    );
    assert_eq!(
        call(&host, &["Counter", "c", "increment", r#"{"by": 2}"#]),
        (true, serde_json::json!(7))
    );
    // The same request id again is answered, not applied again.
    let id = "0123456789abcdef0123456789abcdef";
    let once = call(
        &host,
        &[
            "Counter",
            "c",
            "increment",
            r#"{"by": 100}"#,
            "--request-id",
            id,
        ],
    );
    let again = call(
        &host,
        &[
            "Counter",
            "c",
            "increment",
            r#"{"by": 100}"#,
            "--request-id",
            id,
        ],
    );
    assert_eq!(once, (true, serde_json::json!(107)));
    assert_eq!(again, once);
    assert_eq!(
        call(&host, &["Counter", "c", "get"]),
        (true, serde_json::json!(107))
    );
    // A typed stub sees the same object.
    let client = host.client().await;
    assert_eq!(
        client
            .get::<durable_examples::counter::Counter>("c")
            .get()
            .await
            .unwrap(),
        107
    );
    // The method's own error, with its JSON body.
    let (ok, e) = call(
        &host,
        &["Probe", "p", "put_then_fail", r#"{"key": "k", "value": 3}"#],
    );
    assert!(!ok);
    assert_eq!(e["error"]["kind"], "application", "{e}");
    assert_eq!(e["error"]["retry"], "failed_in_method", "{e}");
    assert_eq!(
        e["error"]["body"],
        serde_json::json!({"Refused": {"value": 3}}),
        "{e}"
    );
    // Bad input: typed, safe to retry, nothing sent.
    for (args, kind) in [
        (
            &["Counter", "c", "increment", r#"{"by": "x"}"#][..],
            "bad_arguments",
        ),
        (&["Counter", "c", "increment", "[1]"][..], "bad_arguments"),
        (&["Counter", "c", "increment", "{"][..], "bad_arguments"),
        (&["Counter", "c", "nope"][..], "unknown_method"),
        (&["Nope", "c", "get"][..], "unknown_class"),
    ] {
        let (ok, e) = call(&host, args);
        assert!(!ok, "{args:?}");
        assert_eq!(e["error"]["kind"], kind, "{args:?}: {e}");
        assert_eq!(e["error"]["retry"], "not_applied", "{args:?}: {e}");
    }
    assert_eq!(
        call(&host, &["Counter", "c", "get"]),
        (true, serde_json::json!(107))
    );
    // A wrong token is refused.
    let bad = dir.path().join("bad-token");
    std::fs::write(&bad, "not-the-token").unwrap();
    let (ok, e) = call(
        &host,
        &["Counter", "c", "get", "--token-file", bad.to_str().unwrap()],
    );
    assert!(!ok);
    assert_eq!(e["error"]["kind"], "connect", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_and_alarms_show_acknowledged_state_while_the_host_runs() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let probe = client.get::<durable_tests::Probe>("insp");
    probe.put("apple".into(), 41).await.unwrap();
    probe.put("pear".into(), 7).await.unwrap();
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let at_ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    probe.ring_at("later".into(), at_ms, 0).await.unwrap();
    let data_dir = dir.path().to_str().unwrap();
    // Right after the replies, while the host runs: every acknowledged write shows.
    let (ok, out, err) = host_cli(&["inspect", "--data-dir", data_dir, "Probe", "insp"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("object Probe "), "{out}");
    assert!(out.contains("name \"insp\""), "{out}");
    assert!(out.contains("table entries\n"), "{out}");
    assert!(out.contains("\"apple\"\t41\n"), "{out}");
    assert!(out.contains("\"pear\"\t7\n"), "{out}");
    assert!(out.contains("(2 rows)"), "{out}");
    assert!(
        !out.contains("_durable_"),
        "runtime tables are not the object's: {out}"
    );
    let (ok, out, err) = host_cli(&["alarms", "--data-dir", data_dir, "Probe", "insp"]);
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("ring\t\"later\"\t"))
        .unwrap_or_else(|| panic!("no pending alarm listed: {out}"));
    let due = line.split('\t').nth(2).unwrap();
    assert_eq!(due, durable_runtime_utc(at_ms), "{out}");
    // An object that was never stored is an error, not an empty listing.
    let (ok, _, err) = host_cli(&["inspect", "--data-dir", data_dir, "Probe", "never"]);
    assert!(!ok);
    assert!(err.contains("no stored object"), "{err}");
}

/// `ms` as `host alarms` prints it (checked independently of the host's formatter).
fn durable_runtime_utc(ms: u64) -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "-d", &format!("@{}", ms / 1000), "+%Y-%m-%dT%H:%M:%S"])
        .output()
        .unwrap();
    format!(
        "{}.{:03}Z",
        String::from_utf8(out.stdout).unwrap().trim(),
        ms % 1000
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_write_load_restores_every_object_consistent_and_complete() {
    const OBJECTS: usize = 12;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    // acked[i]: entries object i acknowledged; sent[i]: entries sent to it.
    let acked: Arc<Vec<AtomicI64>> = Arc::new((0..OBJECTS).map(|_| AtomicI64::new(0)).collect());
    let sent: Arc<Vec<AtomicI64>> = Arc::new((0..OBJECTS).map(|_| AtomicI64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..OBJECTS * 2 {
        let (acked, sent, stop) = (acked.clone(), sent.clone(), stop.clone());
        let ledger = client.get::<Ledger>(&format!("l{}", w % OBJECTS));
        writers.push(tokio::spawn(async move {
            let i = w % OBJECTS;
            while !stop.load(Ordering::Relaxed) {
                sent[i].fetch_add(1, Ordering::SeqCst);
                ledger.add(1 + (w as i64 % 3)).await.unwrap();
                acked[i].fetch_add(1, Ordering::SeqCst);
            }
        }));
    }
    // Let every object have writes, then back up twice while they go on.
    while acked.iter().any(|a| a.load(Ordering::SeqCst) < 20) {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut copies = Vec::new();
    for b in 0..2 {
        let data_dir = dir.path().to_str().unwrap().to_string();
        let before: Vec<i64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        let to = dir.path().with_extension(format!("backup{b}"));
        let to_s = to.to_str().unwrap().to_string();
        let (ok, out, err) = tokio::task::spawn_blocking(move || {
            host_cli(&["backup", "--data-dir", &data_dir, "--to", &to_s])
        })
        .await
        .unwrap();
        assert!(ok, "backup failed: {err}");
        assert!(out.contains("backed up"), "{out}");
        let after: Vec<i64> = sent.iter().map(|s| s.load(Ordering::SeqCst)).collect();
        copies.push((to, before, after));
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let total_acked: i64 = acked.iter().map(|a| a.load(Ordering::SeqCst)).sum();
    assert!(
        total_acked > 200,
        "too little load to mean anything: {total_acked}"
    );
    drop(client);
    drop(host);
    for (b, (backup, before, after)) in copies.into_iter().enumerate() {
        let restored = backup.with_extension(format!("restored{b}"));
        let (ok, out, err) = host_cli(&[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ]);
        assert!(ok, "restore failed: {err}");
        assert!(
            out.contains(&format!("restored {} objects", OBJECTS)),
            "{out}"
        );
        // Restoring over a directory that holds anything is refused.
        let (ok, _, err) = host_cli(&[
            "restore",
            "--from",
            backup.to_str().unwrap(),
            "--data-dir",
            restored.to_str().unwrap(),
        ]);
        assert!(!ok && err.contains("not empty"), "{err}");
        let host = HostProcess::start(&restored, &[]);
        let client = host.client().await;
        let mut seen = HashMap::new();
        for i in 0..OBJECTS {
            let (balance, sum, count) = client
                .get::<Ledger>(&format!("l{i}"))
                .audit()
                .await
                .unwrap();
            assert_eq!(balance, sum, "backup {b}: l{i} is inconsistent");
            assert!(
                count >= before[i] && count <= after[i],
                "backup {b}: l{i} holds {count} entries; {} were acknowledged before the backup began and {} sent by its end",
                before[i],
                after[i]
            );
            seen.insert(i, count);
        }
        // The restored host takes writes.
        let v = client.get::<Ledger>("l0").add(5).await.unwrap();
        assert!(v > 0);
        drop(client);
        drop(host);
        let _ = std::fs::remove_dir_all(&restored);
        let _ = std::fs::remove_dir_all(&backup);
        assert_eq!(seen.len(), OBJECTS);
    }
}

/// `--retention-days inf` (keep retired segments for good) starts a host: the
/// duration is clamped, not a panic at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_retention_starts_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--retention-days", "inf"]);
    let n = host
        .client()
        .await
        .get::<durable_examples::counter::Counter>("kept")
        .increment(1)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// A host runs at most 1,024 shards (a client takes a longer list of lanes for a
/// broken host's and uses none): more is refused at start, saying why.
#[test]
fn more_shards_than_a_client_takes_lanes_for_are_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (ok, _, stderr) = host_cli(&[
        "serve",
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--shards",
        "1025",
    ]);
    assert!(!ok, "a host of 1,025 shards started: {stderr}");
    assert!(stderr.contains("at most 1024"), "{stderr}");
}
