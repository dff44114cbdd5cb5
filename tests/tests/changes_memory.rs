//! `host changes` over a long log, against the real host binary: it prints the change
//! feed a log segment at a time, so its memory does not grow with the log. A binary of
//! its own: the test reads the peak memory of this process's children
//! (`RUSAGE_CHILDREN`), which other tests' hosts would blur.

mod common;

use common::HostProcess;

/// The largest resident size of any waited-for child of this process so far, KiB.
fn children_peak_kib() -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid rusage for getrusage to fill.
    assert_eq!(
        unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) },
        0
    );
    usage.ru_maxrss
}

/// One object writes 100 random blobs of 1 MiB (about 195 MB of log: old and new
/// values); `host changes` prints every change (each about 4 MB of JSON) with its peak
/// memory below the log's size (200 MiB: a segment read and one record's changes). Before, it read every record and decoded every
/// change into memory before printing the first: 438 MB here, against 147 MB now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_changes_prints_a_long_log_without_holding_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    common::random_history(&client, "feed", 100, 4).await;
    drop(client);
    assert!(host.terminate().success());
    let hosts_peak = children_peak_kib();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_durable-test-host"))
        .args(["changes", "--data-dir", dir.path().to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    // Count the lines (a change each) as they come, holding none.
    use std::io::BufRead;
    let mut lines = 0usize;
    let mut blob_updates = 0usize;
    let mut child = out;
    let reader = std::io::BufReader::new(child.stdout.take().unwrap());
    for line in reader.split(b'\n') {
        let line = line.unwrap();
        lines += 1;
        if line.windows(14).any(|w| w == b"\"table\":\"blobs") {
            blob_updates += 1;
        }
    }
    assert!(child.wait().unwrap().success());
    assert!(
        blob_updates >= 100,
        "{blob_updates} changes to the blobs table in {lines} lines"
    );
    let peak = children_peak_kib();
    assert!(
        peak < 200 * 1024,
        "`host changes` peaked at {peak} KiB (the host's own peak: {hosts_peak} KiB)"
    );
}
