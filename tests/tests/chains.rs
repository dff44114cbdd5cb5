//! Objects calling objects, against real host processes: a cycle fails at once naming
//! its chain, a deadline holds along a chain, the output gate holds across `kill -9`
//! of the caller's host, and what a later `Err` rolls back.

mod common;

use common::HostProcess;
use durable::{CallError, ErrorKind};
use durable_tests::Hop;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn path(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_fails_at_once_and_names_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    // A chain without a cycle works.
    let visited = client
        .get::<Hop>("a")
        .relay(path(&["b", "c"]), 0)
        .await
        .unwrap();
    assert_eq!(visited, ["a", "b", "c"]);

    for (through, chain) in [
        (&["b", "a"][..], "Hop(a) -> Hop(b) -> Hop(a)"),
        (&["b", "c", "a"][..], "Hop(a) -> Hop(b) -> Hop(c) -> Hop(a)"),
        (&["b", "c", "b"][..], "Hop(b) -> Hop(c) -> Hop(b)"),
    ] {
        let started = Instant::now();
        let err = client
            .get::<Hop>("a")
            .relay(path(through), 0)
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let CallError::Application(e) = err else {
            panic!("expected the method's error, got {err:?}");
        };
        assert_eq!(e.kind, ErrorKind::CallCycle, "{e}");
        assert!(e.message.contains(chain), "{e}");
    }
    // Nothing is left waiting: every object answers at once.
    for name in ["a", "b", "c"] {
        let started = Instant::now();
        client.get::<Hop>(name).relay(vec![], 0).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

/// A read-only method is reentrant: a chain that comes back to an object whose turn
/// waits may call it, and it sees the writes the turn made before its call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_may_come_back_to_a_read_only_method() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    for n in 1..=3 {
        let started = Instant::now();
        let count = client
            .get::<Hop>("r")
            .write_then_ask(n, "s".into())
            .await
            .unwrap();
        assert_eq!(count, n, "the read sees the write made before the call");
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_holds_along_a_chain_of_three_objects() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    // Activate all three first, so that only the deadline is measured.
    for name in ["d1", "d2", "d3"] {
        assert!(!client.get::<Hop>(name).ran().await.unwrap());
    }
    // d3 is busy for 2.5 s: the chain's call to it waits in its queue.
    let busy = {
        let d3 = client.get::<Hop>("d3");
        tokio::spawn(async move { d3.busy(2500).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let err = client
        .get::<Hop>("d1")
        .with_deadline(Duration::from_millis(200))
        .relay(path(&["d2", "d3"]), 0)
        .await
        .unwrap_err();
    let took = started.elapsed();
    // Whichever gives up first answers: the client's own deadline, or d1, whose call
    // down the chain carries the same deadline and ends with it (`relay` returns that
    // error as its own).
    assert!(
        match &err {
            CallError::Timeout | CallError::Expired => true,
            CallError::Application(e) => e.to_string().contains("deadline passed"),
            _ => false,
        },
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1000),
        "took {took:?}"
    );
    // d1 and d2 gave up with their caller: they answer again long before d3 is free.
    let started = Instant::now();
    client.get::<Hop>("d1").ran().await.unwrap();
    client.get::<Hop>("d2").ran().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "d1 and d2 took {:?}",
        started.elapsed()
    );
    busy.await.unwrap().unwrap();
    // And d3 never ran the call whose deadline had passed.
    assert!(!client.get::<Hop>("d3").ran().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_err_after_a_call_keeps_the_writes_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let err = client
        .get::<Hop>("w")
        .write_tell_fail(7, "sink".into())
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::Application(_)), "{err:?}");
    // The write before the call was committed by it; the one after was rolled back.
    assert_eq!(
        client.get::<Hop>("w").seen().await.unwrap(),
        [(7, "wrote".to_string())]
    );
    assert_eq!(
        client.get::<Hop>("sink").seen().await.unwrap(),
        [(7, "recorded".to_string())]
    );
}

/// The output gate for outgoing calls: objects on host A write `n`, then tell an object
/// on host B about `n`. A is killed with SIGKILL under that load, several times. After
/// each restart every `n` that B heard of is stored on A (B never acted on a write A
/// lost), and every call A acknowledged is complete on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_callers_host_never_leaves_the_callee_ahead() {
    let dir_b = tempfile::tempdir().unwrap();
    let dir_a = tempfile::tempdir().unwrap();
    let b = HostProcess::start(dir_b.path(), &[]);
    let b_client = b.client().await;
    let peer = b.addr.to_string();
    let peer_dir = dir_b.path().to_str().unwrap().to_owned();
    let env = [
        ("DURABLE_TEST_PEER", peer.as_str()),
        ("DURABLE_TEST_PEER_DIR", peer_dir.as_str()),
    ];
    const WRITERS: usize = 6;
    let acked = std::sync::Arc::new(std::sync::Mutex::new(BTreeMap::<usize, Vec<i64>>::new()));
    let mut next = 0i64;
    for round in 0..3 {
        let a = HostProcess::start_with_env(dir_a.path(), &[], &env);
        let client = a.client().await;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let hop = client
                .get::<Hop>(&format!("w{w}"))
                .with_deadline(Duration::from_secs(3));
            let acked = acked.clone();
            let first = next + (w as i64) * 1_000_000;
            tasks.push(tokio::spawn(async move {
                for n in first.. {
                    match hop.write_then_tell(n, format!("sink{w}")).await {
                        Ok(()) => acked.lock().unwrap().entry(w).or_default().push(n),
                        Err(_) => return,
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(400 + 150 * round)).await;
        a.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        next += 10_000;
    }
    let a = HostProcess::start_with_env(dir_a.path(), &[], &env);
    let client = a.client().await;
    let acked = acked.lock().unwrap().clone();
    let mut told_total = 0;
    for w in 0..WRITERS {
        let on_a: BTreeMap<i64, String> = client
            .get::<Hop>(&format!("w{w}"))
            .seen()
            .await
            .unwrap()
            .into_iter()
            .collect();
        let on_b: BTreeSet<i64> = b_client
            .get::<Hop>(&format!("sink{w}"))
            .seen()
            .await
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        told_total += on_b.len();
        for n in &on_b {
            assert!(
                on_a.contains_key(n),
                "B heard of {n} from w{w}, but A lost that write"
            );
        }
        for n in acked.get(&w).into_iter().flatten() {
            assert_eq!(on_a.get(n).map(String::as_str), Some("told"), "w{w} n={n}");
            assert!(on_b.contains(n), "w{w} n={n} acknowledged but not on B");
        }
    }
    assert!(
        told_total > 30,
        "too little load to mean anything: {told_total}"
    );
}

/// Protocol version 1 clients are still served: a version 1 hello and call are
/// answered in version 1 frames; a chained call needs version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_1_clients_are_still_served() {
    use durable::wire::{self, CallRequest, ChainCall, Request, Response, WireError};
    use durable_examples::counter::Counter;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let conn = common::raw_connection(&host).await;
    let hello = wire::encode_frame_in(
        &Request::Hello {
            token: common::token(&host),
        },
        1,
    );
    let answer = common::exchange_bytes(&conn, &hello).await;
    assert_eq!(answer[4], 1, "answered in version 1");
    assert_eq!(
        wire::decode_frame::<Response>(&answer, 1 << 20).unwrap(),
        Response::Welcome
    );
    let call = CallRequest {
        request_id: [9; 16],
        class: "Counter".into(),
        object: durable::ObjectId::from_name("Counter", "v1"),
        name: Some("v1".into()),
        method: "increment".into(),
        fingerprint: common::method_fingerprint::<Counter>("increment"),
        timeout_ms: 5_000,
        args: postcard::to_stdvec(&(5i64,)).unwrap(),
    };
    let answer = common::exchange_bytes(
        &conn,
        &wire::encode_frame_in(&Request::Call(call.clone()), 1),
    )
    .await;
    assert_eq!(answer[4], 1, "answered in version 1");
    assert_eq!(
        wire::decode_frame::<Response>(&answer, 1 << 20).unwrap(),
        Response::Return(postcard::to_stdvec(&5i64).unwrap())
    );
    let chained = Request::ChainCall(ChainCall {
        call,
        chain: vec![],
        caller_span: 0,
    });
    let answer = common::exchange_bytes(&conn, &wire::encode_frame_in(&chained, 1)).await;
    assert!(matches!(
        wire::decode_frame::<Response>(&answer, 1 << 20).unwrap(),
        Response::Error(WireError::Malformed { .. })
    ));
    // The same in version 2 is a call (a resend of the same request id: its answer).
    let answer = common::exchange_bytes(&conn, &wire::encode_frame(&chained)).await;
    assert_eq!(answer[4], wire::PROTOCOL_VERSION);
    assert_eq!(
        wire::decode_frame::<Response>(&answer, 1 << 20).unwrap(),
        Response::Return(postcard::to_stdvec(&5i64).unwrap())
    );
}
