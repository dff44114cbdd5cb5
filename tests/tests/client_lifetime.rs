//! A client's lifetime and what it holds: the sockets of this test process are
//! counted, so these tests run one at a time in a binary of their own (no other test
//! opens sockets beside them).

mod common;

use common::HostProcess;
use durable_examples::counter::Counter;

/// The process's socket count once it held still for 200 ms (a dropped client's
/// sockets close in the background).
async fn steady_sockets() -> usize {
    let mut count = open_sockets();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = open_sockets();
        if now == count {
            return count;
        }
        count = now;
    }
}

/// The process's socket count once it is at most `limit`, or after 10 s.
async fn sockets_at_most(limit: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let now = open_sockets();
        if now <= limit || std::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// One test at a time: each counts the process's sockets.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The sockets this test process holds open (UDP and TCP alike).
fn open_sockets() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
        })
        .count()
}

/// A client dropped without `close()` closes its connections (the first one and its
/// lanes) and gives back its endpoint's socket: a program that makes a client per
/// job does not pile up connections on either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_client_closes_its_connections() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    // One client first: whatever the process keeps for good is counted before.
    let warm = host.client().await;
    warm.get::<Counter>("warm").increment(1).await.unwrap();
    drop(warm);
    let before = steady_sockets().await;
    for i in 0..20 {
        let client = host.client().await;
        // Enough calls for the lanes to open (a lane after 16 calls wanting it).
        for j in 0..64 {
            client
                .get::<Counter>(&format!("c{i}-{j}"))
                .increment(1)
                .await
                .unwrap();
        }
        drop(client);
    }
    let after = sockets_at_most(before).await;
    assert!(
        after <= before,
        "sockets open: {before} before 20 clients came and were dropped, {after} after"
    );
}

/// A stream's follower keeps the connection it reads on, even once every handle of
/// the client it came from is dropped (a helper that returns only the follower), and
/// lets it go once the follow has ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_outlives_the_client_it_came_from() {
    use durable_tests::StreamProbe;
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    // Sockets this process keeps whatever the clients do, counted once settled.
    let warm = host.client().await;
    warm.get::<StreamProbe>("warm")
        .end("w".into())
        .await
        .unwrap();
    drop(warm);
    let before = steady_sockets().await;
    let mut follower = {
        let client = host.client().await;
        client
            .get::<StreamProbe>("kept")
            .push("s".into(), vec!["a".into()])
            .await
            .unwrap();
        client
            .follow::<StreamProbe, String>("kept", "s", 0)
            .await
            .unwrap()
    };
    let other = host.client().await;
    let probe = other.get::<StreamProbe>("kept");
    probe.push("s".into(), vec!["b".into()]).await.unwrap();
    probe.end("s".into()).await.unwrap();
    let mut got = Vec::new();
    while let Some(item) = follower.next().await.unwrap() {
        got.push(item.item);
    }
    assert_eq!(got, vec!["a".to_string(), "b".to_string()]);
    // Ended, the follower lets the client go: with the other client dropped too, every
    // connection closes though the follower is still held.
    drop(probe);
    drop(other);
    let after = sockets_at_most(before).await;
    assert!(
        after <= before,
        "sockets open: {before} before, {after} with only an ended follower held"
    );
    drop(follower);
}
