//! `kill -9` of the host while clients increment: after a restart every value any
//! client was told is still there, and nothing was applied twice, whichever way the
//! host log was written (direct synchronous writes, or buffered writes and
//! `fdatasync`).

mod common;

use common::{load_until_killed, HostProcess, Told};
use durable_examples::counter::Counter;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let objects = 8;
    // name -> (highest value a client was told, number of calls sent)
    let told = Told::default();
    for round in 0..3 {
        // The middle round's host writes its log through the page cache and
        // `fdatasync` (the fallback where direct I/O is refused), the others directly;
        // each start replays what the one before wrote.
        let direct = if round == 1 { "0" } else { "1" };
        let host = HostProcess::start_with_env(dir.path(), &[], &[("DURABLE_LOG_DIRECT", direct)]);
        let client = host.client().await;
        // Everything acknowledged in earlier rounds survived the kill.
        let before = told.lock().unwrap().clone();
        for (name, (acked, sent)) in before {
            let value = client.get::<Counter>(&name).get().await.unwrap();
            assert!(
                value >= acked,
                "round {round}: {name} = {value}, but a client was told {acked}"
            );
            assert!(
                value <= sent,
                "round {round}: {name} = {value}, more than the {sent} increments sent"
            );
        }
        // Load on the counters, then kill the host mid-flight.
        load_until_killed(host, "c", objects, 16, Duration::from_millis(400), &told).await;
    }
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let told = told.lock().unwrap().clone();
    assert_eq!(told.len(), objects);
    for (name, (acked, sent)) in told {
        assert!(acked > 0, "{name} never acknowledged anything");
        let value = client.get::<Counter>(&name).get().await.unwrap();
        assert!(
            value >= acked && value <= sent,
            "{name} = {value}, told {acked}, sent {sent}"
        );
    }
    // A clean stop exits 0.
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_within_two_seconds_of_a_kill_and_restart_on_the_same_address() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let addr = host.addr;
    let client = host.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    // Per object: the time of every acknowledged increment, and how many there were.
    let acked: Arc<Mutex<Vec<Vec<Instant>>>> = Arc::new(Mutex::new(vec![Vec::new(); 8]));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let counter = client
            .get::<Counter>(&format!("r{i}"))
            .with_deadline(Duration::from_secs(20));
        let (stop, acked) = (stop.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let v = counter
                    .increment(1)
                    .await
                    .expect("resent until the host is back");
                let mut a = acked.lock().unwrap();
                a[i].push(Instant::now());
                assert_eq!(
                    v as usize,
                    a[i].len(),
                    "r{i}: applied once per acknowledgement"
                );
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    host.kill9();
    let host = HostProcess::start_on(dir.path(), addr);
    let restarted = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    for (i, times) in acked.iter().enumerate() {
        let first_after = times
            .iter()
            .find(|t| **t >= restarted)
            .unwrap_or_else(|| panic!("r{i} never resumed after the restart"));
        let gap = first_after.duration_since(restarted);
        assert!(
            gap < Duration::from_secs(2),
            "r{i} resumed {gap:?} after the restart"
        );
    }
    let client = host.client().await;
    for (i, times) in acked.iter().enumerate() {
        let value = client.get::<Counter>(&format!("r{i}")).get().await.unwrap();
        assert_eq!(
            value as usize,
            times.len(),
            "r{i}: every resent call applied once"
        );
    }
}
