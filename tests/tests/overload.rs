//! A full object queue answers `Overloaded` at once instead of a slow timeout.

mod common;

use common::HostProcess;
use durable::CallError;
use durable_tests::Probe;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_overloaded_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--max-queue", "4"]);
    let client = host.client().await;
    let probe = client.get::<Probe>("busy");
    // Occupy the object for a while.
    let holder = {
        let probe = probe.clone();
        tokio::spawn(async move { probe.sleep(1500).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let probe = probe.clone();
        tasks.push(tokio::spawn(async move {
            let start = Instant::now();
            let r = probe.put(format!("k{i}"), i).await;
            (r, start.elapsed())
        }));
    }
    let (mut overloaded, mut ok) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (Err(CallError::Overloaded), took) => {
                overloaded += 1;
                assert!(
                    took < Duration::from_millis(500),
                    "Overloaded took {took:?}"
                );
            }
            (Ok(()), _) => ok += 1,
            (other, _) => panic!("unexpected {other:?}"),
        }
    }
    holder.await.unwrap().unwrap();
    assert_eq!(ok, 4, "exactly the queue's capacity waits and succeeds");
    assert_eq!(overloaded, 16);
    assert!(CallError::<durable::NoError>::Overloaded.is_retry_safe());
    // After the queue drains the object serves normally.
    probe.put("after".into(), 1).await.unwrap();
}
