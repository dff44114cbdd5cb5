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
            (Err(CallError::Overloaded { retry_after }), took) => {
                // A full queue says when to try again.
                assert_eq!(retry_after, Some(Duration::from_millis(50)));
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
    assert!(CallError::<durable::NoError>::Overloaded { retry_after: None }.is_retry_safe());
    // After the queue drains the object serves normally.
    probe.put("after".into(), 1).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_past_its_rate_on_one_object_hears_overloaded_at_once_and_nothing_applies() {
    use durable_examples::counter::Counter;
    let dir = tempfile::tempdir().unwrap();
    // 1 call per second sustained, 5 at once, per caller per object.
    let host = HostProcess::start(dir.path(), &["--caller-rate", "1:5"]);
    let client = host.client().await;
    let counter = client.get::<Counter>("limited");
    let started = Instant::now();
    let results = futures_util::future::join_all((0..20).map(|_| {
        let counter = counter.clone();
        async move { counter.increment(1).await }
    }))
    .await;
    let elapsed = started.elapsed();
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let overloaded = results
        .iter()
        .filter(|r| matches!(r, Err(CallError::Overloaded { .. })))
        .count();
    assert_eq!(ok + overloaded, 20, "{results:?}");
    assert!(
        (5..=6).contains(&ok),
        "the burst gets in, then one a second: {ok} in {elapsed:?}"
    );
    assert!(results.iter().all(|r| match r {
        Err(e) => e.is_retry_safe(),
        Ok(_) => true,
    }));
    // Each refusal says when the bucket holds a token again: within its refill time
    // (1 s at 1/s), never zero.
    for r in &results {
        if let Err(CallError::Overloaded { retry_after }) = r {
            let after = retry_after.expect("a rate refusal carries a hint");
            assert!(
                after > Duration::ZERO && after <= Duration::from_secs(1),
                "{after:?}"
            );
        }
    }
    // What was refused was not applied. (Reading is a call too: it waits as long as
    // the hint says, as a well-behaved caller would.)
    let value = loop {
        match counter.get().await {
            Err(CallError::Overloaded {
                retry_after: Some(after),
            }) if started.elapsed() < Duration::from_secs(5) => tokio::time::sleep(after).await,
            other => break other.unwrap(),
        }
    };
    assert_eq!(value, ok as i64);
    // Another object is its own budget.
    assert_eq!(
        client.get::<Counter>("other").increment(1).await.unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_bounds_calls_in_flight_across_objects() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--max-inflight-calls", "3"]);
    let client = host.client().await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let probe = client.get::<Probe>(&format!("slow{i}"));
            tokio::spawn(async move {
                let start = Instant::now();
                let r = probe.sleep(600).await;
                (r, start.elapsed())
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err(CallError::Overloaded { retry_after }), took) => {
                assert!(retry_after.is_some());
                assert!(
                    took < Duration::from_millis(400),
                    "refused at once, not after {took:?}"
                )
            }
            (Err(e), _) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 3, "three in flight at a time");
    // Once they are answered there is room again.
    client
        .get::<Probe>("after")
        .put("k".into(), 1)
        .await
        .unwrap();
}
