//! Bad input from a peer gets a typed error, touches no object, and the host keeps
//! serving the next good call.

mod common;

use common::{exchange_bytes, hello, raw_connection, token, try_raw_connection, HostProcess};
use durable::wire::{self, CallRequest, Request, Response, WireError};
use durable::{CallError, ConnectError, ObjectId};
use durable_examples::counter::Counter;
use std::time::Duration;

async fn still_serves(host: &HostProcess) {
    let client = host.client().await;
    let before = client.get::<Counter>("canary").get().await.unwrap();
    assert_eq!(
        client.get::<Counter>("canary").increment(1).await.unwrap(),
        before + 1
    );
}

fn decode(bytes: &[u8]) -> Response {
    wire::decode_frame(bytes, 1 << 20)
        .unwrap_or_else(|e| panic!("host answer is not a frame: {e} {bytes:?}"))
}

fn call_frame(class: &str, name: &str, method: &str, fingerprint: u64, args: Vec<u8>) -> Vec<u8> {
    wire::encode_frame(&Request::Call(CallRequest {
        request_id: rand_id(),
        class: class.into(),
        object: ObjectId::from_name(class, name),
        name: Some(name.into()),
        method: method.into(),
        fingerprint,
        timeout_ms: 5_000,
        args,
    }))
}

fn rand_id() -> [u8; 16] {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    t.to_le_bytes()
}

fn object_files(host: &HostProcess, class: &str) -> usize {
    std::fs::read_dir(host.data_dir.join("objects").join(class))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_truncated_and_oversized_frames_get_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--max-frame", "65536"]);
    let conn = raw_connection(&host).await;
    assert_eq!(hello(&conn, &token(&host)).await, Response::Welcome);

    // Garbage with a plausible length: not a valid message.
    let mut garbage = vec![9, 0, 0, 0, wire::PROTOCOL_VERSION];
    garbage.extend([0xff, 0xfe, 0x80, 0x81, 0x00, 0x13, 0x37, 0x42]);
    assert!(matches!(
        decode(&exchange_bytes(&conn, &garbage).await),
        Response::Error(WireError::Malformed { .. })
    ));
    // Pure noise: its first four bytes declare an enormous frame.
    let noise: Vec<u8> = (0..512u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8 | 0x80)
        .collect();
    assert!(matches!(
        decode(&exchange_bytes(&conn, &noise).await),
        Response::Error(WireError::TooLarge { .. })
    ));
    // Truncated: the prefix promises more than arrives.
    let frame = call_frame("Counter", "x", "get", 0, vec![]);
    assert!(matches!(
        decode(&exchange_bytes(&conn, &frame[..frame.len() - 3]).await),
        Response::Error(WireError::Malformed { .. })
    ));
    // An unknown protocol version.
    let mut v9 = frame.clone();
    v9[4] = 9;
    assert_eq!(
        decode(&exchange_bytes(&conn, &v9).await),
        Response::Error(WireError::UnsupportedVersion { got: 9 })
    );
    // Oversized: a real 1 MiB frame against a 64 KiB limit.
    let big = call_frame("Counter", "x", "increment", 0, vec![7; 1 << 20]);
    match decode(&exchange_bytes(&conn, &big).await) {
        Response::Error(WireError::TooLarge { size, limit }) => {
            assert_eq!(limit, 65536);
            assert!(size > limit);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // None of that created an object.
    assert_eq!(object_files(&host, "Counter"), 0);
    still_serves(&host).await;

    // The client refuses to send an oversized frame itself, with the same typed error.
    let client = host.client().await;
    let object = client.object_ref("Counter", ObjectId::from_name("Counter", "x"), Some("x"));
    let err = object
        .call::<_, i64, durable::Error>("increment", 0, &vec![0u8; 8 << 20])
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::TooLarge { .. }), "{err:?}");
}

fn pipe_frame(tag: u64, request: Request) -> Vec<u8> {
    wire::encode_frame_in(&wire::PipeCall { tag, request }, wire::PIPE_VERSION)
}

fn counter_call(name: &str, method: &str, args: Vec<u8>) -> Request {
    Request::Call(CallRequest {
        request_id: wire::new_request_id(),
        class: "Counter".into(),
        object: ObjectId::from_name("Counter", name),
        name: Some(name.into()),
        method: method.into(),
        fingerprint: common::method_fingerprint::<Counter>(method),
        timeout_ms: 5_000,
        args,
    })
}

/// Read pipe replies until `tags` are all answered (or the host finishes the pipe).
async fn pipe_replies(recv: &mut quinn::RecvStream, tags: usize) -> Vec<wire::PipeReply> {
    let mut replies = Vec::new();
    while replies.len() < tags {
        let mut prefix = [0u8; 4];
        if recv.read_exact(&mut prefix).await.is_err() {
            break;
        }
        let mut frame = vec![0u8; 4 + u32::from_le_bytes(prefix) as usize];
        frame[..4].copy_from_slice(&prefix);
        recv.read_exact(&mut frame[4..]).await.unwrap();
        replies.push(wire::decode_frame(&frame, 1 << 20).unwrap());
    }
    replies
}

/// A pipe answers a bad frame by its tag and goes on serving the calls after it; a
/// frame over the limit cannot be skipped, so it gets `TooLarge` and the pipe ends,
/// after the calls in flight are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_on_a_pipe_are_answered_by_tag_and_the_pipe_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--max-frame", "65536"]);
    let conn = raw_connection(&host).await;
    assert_eq!(hello(&conn, &token(&host)).await, Response::Welcome);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut bytes = wire::encode_frame_in(&Request::Pipe, wire::PIPE_VERSION);
    bytes.extend(pipe_frame(1, counter_call("p", "increment", vec![2])));
    // Tag 2, then a body that is no request.
    bytes.extend([5, 0, 0, 0, wire::PIPE_VERSION, 2, 0xff, 0xfe, 0x80]);
    // Tag 3 in a version nobody speaks.
    let mut v9 = pipe_frame(3, counter_call("p", "get", vec![]));
    v9[4] = 9;
    bytes.extend(v9);
    // Tag 4: a pipe carries calls, not hellos.
    bytes.extend(pipe_frame(
        4,
        Request::Hello {
            token: token(&host),
        },
    ));
    bytes.extend(pipe_frame(5, counter_call("p", "increment", vec![6])));
    send.write_all(&bytes).await.unwrap();
    let mut replies = pipe_replies(&mut recv, 5).await;
    replies.sort_by_key(|r| r.tag);
    let answers: Vec<_> = replies.into_iter().map(|r| (r.tag, r.response)).collect();
    assert_eq!(answers.len(), 5, "{answers:?}");
    assert_eq!(answers[0].0, 1);
    assert!(matches!(answers[0].1, Response::Return(_)), "{answers:?}");
    assert!(
        matches!(
            answers[1],
            (2, Response::Error(WireError::Malformed { .. }))
        ),
        "{answers:?}"
    );
    assert_eq!(
        answers[2],
        (3, Response::Error(WireError::UnsupportedVersion { got: 9 }))
    );
    assert!(
        matches!(
            answers[3],
            (4, Response::Error(WireError::Malformed { .. }))
        ),
        "{answers:?}"
    );
    assert_eq!(answers[4].0, 5);
    assert!(matches!(answers[4].1, Response::Return(_)), "{answers:?}");

    // A frame over the limit: its tag hears TooLarge, then the host finishes the pipe.
    let big = pipe_frame(6, counter_call("p", "increment", vec![7; 1 << 17]));
    let _ = send.write_all(&big).await;
    let replies = pipe_replies(&mut recv, 1).await;
    match &replies[..] {
        [wire::PipeReply {
            tag: 6,
            response: Response::Error(WireError::TooLarge { size, limit: 65536 }),
        }] => assert!(*size > 65536),
        other => panic!("expected TooLarge for tag 6, got {other:?}"),
    }
    assert!(recv.read_to_end(1 << 20).await.unwrap().is_empty());
    // Both good calls applied, once each.
    let client = host.client().await;
    assert_eq!(client.get::<Counter>("p").get().await.unwrap(), 1 + 3);
    still_serves(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_class_method_and_schema_mismatch_are_typed_and_touch_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;

    let nope = client.object_ref("Nope", ObjectId::from_name("Nope", "a"), Some("a"));
    let err = nope
        .call::<_, i64, durable::Error>("get", 1, &())
        .await
        .unwrap_err();
    assert_eq!(err, CallError::UnknownClass("Nope".into()));
    assert!(!err.is_retry_safe() || matches!(err, CallError::UnknownClass(_)));

    let counter = client.object_ref("Counter", ObjectId::from_name("Counter", "a"), Some("a"));
    let err = counter
        .call::<_, i64, durable::Error>("explode", 1, &())
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallError::UnknownMethod {
            class: "Counter".into(),
            method: "explode".into()
        }
    );
    // Right method, wrong signature (as if the client were built from another version).
    let err = counter
        .call::<_, i64, durable::Error>("increment", 0xdead_beef, &("one",))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        CallError::SchemaMismatch {
            class: "Counter".into(),
            method: "increment".into()
        }
    );
    assert_eq!(object_files(&host, "Counter"), 0);
    still_serves(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_token_reaches_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let mut config = host.client_config();
    config.token = "not-the-token".into();
    assert!(matches!(
        durable::Client::connect(config).await,
        Err(ConnectError::Unauthenticated)
    ));

    // A raw peer that skips the hello and goes straight for a call.
    let conn = raw_connection(&host).await;
    let fp = <Counter as durable::ObjectClass>::METHODS
        .iter()
        .find(|m| m.name == "increment")
        .unwrap()
        .fingerprint;
    let frame = call_frame(
        "Counter",
        "secret",
        "increment",
        fp,
        postcard::to_stdvec(&(1i64,)).unwrap(),
    );
    assert_eq!(
        decode(&exchange_bytes(&conn, &frame).await),
        Response::Error(WireError::Unauthenticated)
    );
    assert_eq!(object_files(&host, "Counter"), 0);
    still_serves(&host).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_connects_and_says_nothing_is_closed_after_the_auth_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--auth-timeout-ms", "300"]);
    let conn = raw_connection(&host).await;
    let closed = tokio::time::timeout(Duration::from_secs(5), conn.closed()).await;
    assert!(
        closed.is_ok(),
        "a silent connection stays open past the auth timeout"
    );
    // An honest client still gets in.
    let client = host.client().await;
    assert_eq!(
        client.get::<Counter>("after").increment(1).await.unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_to_authenticate_are_capped_per_address() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(
        dir.path(),
        &[
            "--auth-timeout-ms",
            "1500",
            "--max-unauthenticated-per-ip",
            "4",
        ],
    );
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(raw_connection(&host).await);
    }
    // The fifth is refused before its handshake completes.
    let fifth = tokio::time::timeout(Duration::from_secs(3), try_raw_connection(&host)).await;
    assert!(
        matches!(fifth, Ok(Err(_))),
        "a fifth silent connection from one address was accepted"
    );
    // Once the silent ones time out, a client connects and works.
    for c in &silent {
        tokio::time::timeout(Duration::from_secs(5), c.closed())
            .await
            .expect("closed after the auth timeout");
    }
    let client = host.client().await;
    assert_eq!(
        client.get::<Counter>("capped").increment(2).await.unwrap(),
        2
    );
}

/// Dispatch fuzzed: every method of the example and test classes, called in-process
/// through the host's entry with random argument bytes, answers with a typed reply
/// (most often `BadArguments`) and never takes the host down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_arguments_get_typed_answers_from_every_method() {
    use durable::ObjectClass;
    let dir = tempfile::tempdir().unwrap();
    let host = durable_tests::register_all(durable::Host::builder(dir.path()))
        .start()
        .await
        .unwrap();
    let caller = durable::Caller("fuzz".into());
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let classes: Vec<(&str, &[durable::MethodInfo])> = vec![
        (Counter::CLASS, Counter::METHODS),
        (durable_tests::Probe::CLASS, durable_tests::Probe::METHODS),
    ];
    let mut typed = 0;
    for round in 0..2_000u64 {
        let (class, methods) = classes[(round % 2) as usize];
        let method = &methods[(next() as usize) % methods.len()];
        // Valid random arguments to these ask for unbounded work (minutes of sleep,
        // billions of alarms, a restore of the whole history): not what this tests.
        if [
            "sleep",
            "ring_many_at",
            "restore",
            "restore_then_fail",
            "restore_then_panic",
        ]
        .contains(&method.name)
        {
            continue;
        }
        let args: Vec<u8> = (0..(next() % 24)).map(|_| next() as u8).collect();
        let name = format!("f{}", round % 7);
        let request = CallRequest {
            request_id: [(round % 251) as u8; 16].map(|b| b ^ next() as u8),
            class: class.into(),
            object: ObjectId::from_name(class, &name),
            name: Some(name),
            method: method.name.into(),
            fingerprint: method.fingerprint,
            timeout_ms: 5_000,
            args,
        };
        match host.call(request, &caller).await {
            Response::Return(_) | Response::AppError(_) => {}
            Response::Error(WireError::BadArguments { .. }) => typed += 1,
            Response::Error(WireError::ObjectReset { .. }) => {} // a Probe told to panic
            other => panic!(
                "round {round}: {}.{} answered {other:?}",
                class, method.name
            ),
        }
    }
    assert!(
        typed > 500,
        "most random arguments are refused as BadArguments: {typed}"
    );
    // The host still serves.
    let reply = host
        .call(
            CallRequest {
                request_id: [1; 16],
                class: Counter::CLASS.into(),
                object: ObjectId::from_name(Counter::CLASS, "after"),
                name: Some("after".into()),
                method: "increment".into(),
                fingerprint: Counter::METHODS
                    .iter()
                    .find(|m| m.name == "increment")
                    .unwrap()
                    .fingerprint,
                timeout_ms: 5_000,
                args: postcard::to_stdvec(&(3i64,)).unwrap(),
            },
            &caller,
        )
        .await;
    assert_eq!(reply, Response::Return(postcard::to_stdvec(&3i64).unwrap()));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_left_over_after_the_arguments_are_bad_arguments_and_apply_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let conn = raw_connection(&host).await;
    assert_eq!(hello(&conn, &token(&host)).await, Response::Welcome);
    let fp = common::method_fingerprint::<Counter>("increment");
    // `by = 5` (zig-zag varint 10), then a stray byte.
    let answer = exchange_bytes(
        &conn,
        &call_frame("Counter", "left", "increment", fp, vec![10, 0]),
    )
    .await;
    match decode(&answer) {
        Response::Error(WireError::BadArguments { message }) => {
            assert!(message.contains("left over"), "{message}")
        }
        other => panic!("expected BadArguments, got {other:?}"),
    }
    let answer = exchange_bytes(
        &conn,
        &call_frame("Counter", "left", "increment", fp, vec![10]),
    )
    .await;
    assert_eq!(
        decode(&answer),
        Response::Return(vec![10]),
        "the exact arguments apply once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_reused_by_a_different_call_is_refused_not_answered_with_the_first_result() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let counter = client.object_ref("Counter", ObjectId::from_name("Counter", "r"), Some("r"));
    let fp = common::method_fingerprint::<Counter>("increment");
    let request = |by: i64, id: [u8; 16]| CallRequest {
        request_id: id,
        class: "Counter".into(),
        object: ObjectId::from_name("Counter", "r"),
        name: Some("r".into()),
        method: "increment".into(),
        fingerprint: fp,
        timeout_ms: 5_000,
        args: postcard::to_stdvec(&(by,)).unwrap(),
    };
    let id = rand_id();
    assert_eq!(
        counter
            .call_request::<i64, durable::Error>(&request(5, id))
            .await,
        Ok(5)
    );
    // The same call again: the first answer, applied once.
    assert_eq!(
        counter
            .call_request::<i64, durable::Error>(&request(5, id))
            .await,
        Ok(5)
    );
    // Other arguments under the same id: refused, not applied, safe to retry anew.
    let err = counter
        .call_request::<i64, durable::Error>(&request(7, id))
        .await
        .unwrap_err();
    assert_eq!(err, CallError::RequestReused);
    assert!(err.is_retry_safe());
    assert_eq!(client.get::<Counter>("r").get().await.unwrap(), 5);
    assert_eq!(
        counter
            .call_request::<i64, durable::Error>(&request(7, rand_id()))
            .await,
        Ok(12)
    );
    // It holds across a restart (the digest is in the object's file and the log).
    let addr = host.addr;
    drop(client);
    host.kill9();
    let host = HostProcess::start_on(dir.path(), addr);
    let client = host.client().await;
    let counter = client.object_ref("Counter", ObjectId::from_name("Counter", "r"), Some("r"));
    assert_eq!(
        counter
            .call_request::<i64, durable::Error>(&request(9, id))
            .await,
        Err(CallError::RequestReused)
    );
    assert_eq!(
        counter
            .call_request::<i64, durable::Error>(&request(5, id))
            .await,
        Ok(5)
    );
    assert_eq!(client.get::<Counter>("r").get().await.unwrap(), 12);
}

/// The host's resident memory in KiB (`VmRSS`).
fn rss_kib(host: &HostProcess) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", host.child.id())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A connection's frames still being received count against a bound (64 MiB, never
/// below the frame limit): a peer that opens many streams, each promising a 4 MiB frame
/// and sending part of it, is answered `Overloaded` (not applied) at once for the
/// frames past the bound, whose bytes the host does not keep; the host's memory stays
/// within the bound and it serves other callers meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_received_at_once_on_one_connection_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let conn = raw_connection(&host).await;
    assert_eq!(hello(&conn, &token(&host)).await, Response::Welcome);
    still_serves(&host).await;
    let before = rss_kib(&host);

    // 64 streams, each the length prefix of a 4 MiB frame and 2 MiB of it: 128 MiB
    // sent, twice the bound. Sixteen frames fit (16 x 4 MiB = 64 MiB).
    let (streams, len, sent) = (64usize, 4usize << 20, 2usize << 20);
    let part = vec![7u8; sent];
    let mut opened = Vec::new();
    for _ in 0..streams {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(&(len as u32).to_le_bytes()).await.unwrap();
        opened.push((send, recv));
    }
    let answers = futures_util::future::join_all(opened.into_iter().map(|(mut send, mut recv)| {
        let part = part.clone();
        async move {
            // A refused stream's writes fail once the host stops reading it.
            let _ = send.write_all(&part).await;
            // Refused frames are answered at once; held ones never are.
            let answer =
                tokio::time::timeout(Duration::from_secs(3), recv.read_to_end(1 << 20)).await;
            (send, answer)
        }
    }))
    .await;
    let mut refused = 0;
    let mut waiting = 0;
    for (_, answer) in &answers {
        match answer {
            Ok(Ok(bytes)) => {
                assert_eq!(decode(bytes), Response::Error(WireError::Overloaded));
                refused += 1;
            }
            // Still being received: the host waits for the rest of the frame.
            Err(_) => waiting += 1,
            Ok(Err(e)) => panic!("unexpected end of a stream: {e}"),
        }
    }
    assert_eq!((waiting, refused), (16, 48));
    let grew_mib = rss_kib(&host).saturating_sub(before) / 1024;
    // The sixteen frames' 32 MiB received so far, with room for the allocator's own.
    assert!(
        grew_mib < 80,
        "the host grew by {grew_mib} MiB holding 128 MiB of half-sent frames"
    );
    still_serves(&host).await;
    drop(answers);
    // Once the frames held are given up (their streams end short), their room is the
    // connection's again: a call on a new stream of the same connection is served.
    let frame = wire::encode_frame(&counter_call("after-bound", "increment", vec![2]));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match decode(&exchange_bytes(&conn, &frame).await) {
            Response::Return(_) => break,
            // The host has not yet seen every held stream end.
            Response::Error(WireError::Overloaded) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => panic!("expected the call served, got {other:?}"),
        }
    }
}

/// A resend of a call applied earlier, whose deadline passes while it waits in the
/// object's queue, gets the first answer from the request id's record, not `Timeout`
/// ("not applied", which a caller may take as leave to send it again under a new id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_of_an_applied_call_past_its_deadline_gets_the_recorded_answer() {
    use durable_tests::Probe;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let conn = raw_connection(&host).await;
    assert_eq!(hello(&conn, &token(&host)).await, Response::Welcome);
    let request = |timeout_ms: u64| {
        wire::encode_frame(&Request::Call(CallRequest {
            request_id: [7; 16],
            class: "Probe".into(),
            object: ObjectId::from_name("Probe", "late"),
            name: Some("late".into()),
            method: "put".into(),
            fingerprint: common::method_fingerprint::<Probe>("put"),
            timeout_ms,
            args: postcard::to_allocvec(&("k".to_string(), 1i64)).unwrap(),
        }))
    };
    // Applied.
    assert!(matches!(
        decode(&exchange_bytes(&conn, &request(5_000)).await),
        Response::Return(_)
    ));
    // The object busy for 600 ms; the resend's 50 ms pass while it waits.
    let probe = host.client().await.get::<Probe>("late");
    let busy = tokio::spawn(async move { probe.sleep(600).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = decode(&exchange_bytes(&conn, &request(50)).await);
    assert!(
        matches!(answer, Response::Return(_)),
        "the resend of an applied call was answered {answer:?}"
    );
    busy.await.unwrap().unwrap();
}

/// Idle HTTP connections cannot take the descriptors objects need: under an open-file
/// limit of 2,048, a peer that opens 1,900 connections to the gateway and says
/// nothing gets only the gateway's share of them (the rest are closed at once), and
/// QUIC callers still activate new objects (each needs its files open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_leave_descriptors_for_objects() {
    // This process opens the connections: let it.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_cur = lim.rlim_max.min(8192);
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start_with_nofile(dir.path(), &["--http", "127.0.0.1:0"], 2048);
    let http = host.http.unwrap();
    let mut idle = Vec::new();
    for _ in 0..1_900 {
        match tokio::net::TcpStream::connect(http).await {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connecting to the gateway: {e}"),
        }
    }
    // The gateway accepts (or closes) them in the background: give it a moment (an
    // accept leaves no trace the test could wait on).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let client = host.client().await;
    for i in 0..100 {
        let n = client
            .get::<Counter>(&format!("fd{i}"))
            .increment(1)
            .await
            .unwrap_or_else(|e| panic!("object fd{i} with 1,900 idle HTTP connections: {e}"));
        assert_eq!(n, 1);
    }
    drop(idle);
}
