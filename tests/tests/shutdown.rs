//! SIGTERM under load, against a real host process and a real signal: every call that
//! was in flight when the signal arrived gets an answer (its real result, or
//! `ShuttingDown`, which is safe to retry), none hangs or loses its connection, and
//! every acknowledged write is there after a restart.

mod common;

use common::HostProcess;
use durable::CallError;
use durable_examples::counter::Counter;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
struct Answer {
    object: usize,
    /// Sent before the signal.
    before_signal: bool,
    result: Result<i64, CallError<durable::Error>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_answers_every_call_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let signalled = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for t in 0..48 {
        let object = t % 12;
        let counter = client
            .get::<Counter>(&format!("s{object}"))
            .with_deadline(Duration::from_secs(3));
        let signalled = signalled.clone();
        let answers = answers.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let before_signal = !signalled.load(Ordering::SeqCst);
                let result = counter.increment(1).await;
                let stop = result.is_err();
                answers.lock().unwrap().push(Answer {
                    object,
                    before_signal,
                    result,
                });
                if stop {
                    return;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    signalled.store(true, Ordering::SeqCst);
    let status = host.terminate();
    assert!(status.success(), "clean exit after SIGTERM: {status:?}");
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("no call hangs")
            .unwrap();
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let mut acked = [0i64; 12];
    let mut shutting_down = 0;
    for a in &answers {
        match &a.result {
            Ok(v) => acked[a.object] = acked[a.object].max(*v),
            Err(CallError::ShuttingDown) => shutting_down += 1,
            Err(e) if a.before_signal => {
                panic!("a call in flight at SIGTERM got {e:?} instead of a result or ShuttingDown")
            }
            Err(e) => assert!(
                e.is_retry_safe() || matches!(e, CallError::ConnectionLost(_)),
                "a call sent after SIGTERM got {e:?}"
            ),
        }
    }
    assert!(acked.iter().all(|&n| n > 0), "load ran: {acked:?}");
    assert!(shutting_down > 0, "some calls met the shutdown");

    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    for (i, &n) in acked.iter().enumerate() {
        let value = client.get::<Counter>(&format!("s{i}")).get().await.unwrap();
        assert!(value >= n, "s{i} = {value} but a client was told {n}");
    }
}
