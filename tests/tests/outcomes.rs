//! Typed outcomes and turn effects, against a real host process: a failure after a
//! batch may have reached the log is *indeterminate* (never "safe to retry"), and a
//! retry with the same request id then applies it exactly once; a turn that returns
//! `Err` or panics discards what it asked for (a restore) with its writes; restores
//! run concurrently without sharing scratch files.

mod common;

use common::{method_fingerprint, HostProcess};
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
async fn a_write_that_fails_on_a_full_disk_is_indeterminate_and_its_retry_applies_once() {
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&dir.path().join("mnt"), "48m");
    let data = disk.0.join("data");
    let host = HostProcess::start(&data, &[]);
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
    // Before the fix this was `Internal`, "rolled back, safe to retry".
    assert_eq!(err.retry(), Retry::Indeterminate, "{err:?}");
    assert!(!err.is_retry_safe());
    assert!(!err.to_string().contains(data.to_str().unwrap()), "{err}");

    // Space comes back, the host restarts: the same request id resolves to exactly once.
    std::fs::remove_file(filler).unwrap();
    drop(client);
    host.kill9();
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    let object = client.object_ref("Counter", counter.id(), Some("full"));
    let first: i64 = object
        .call_request::<i64, durable::Error>(&request)
        .await
        .unwrap();
    assert_eq!(first, 5 + acked + 1);
    let again: i64 = object
        .call_request::<i64, durable::Error>(&request)
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(client.get::<Counter>("full").get().await.unwrap(), first);
    drop(host);
}
