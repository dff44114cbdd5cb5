//! Pipes (protocol version 3): the client's calls share one stream per connection,
//! and a client still works with a host that predates pipes.

mod common;

use common::HostProcess;
use durable::wire::{self, Request, Response, WireError};
use durable_examples::counter::Counter;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A QUIC endpoint on loopback presenting the certificate a real host made in
/// `tls_dir`, speaking durable's ALPN: the start of a fake host.
fn fake_host_endpoint(tls_dir: &std::path::Path) -> quinn::Endpoint {
    let read = |name: &str| std::fs::read(tls_dir.join(name)).unwrap();
    let chain = rustls_pemfile::certs(&mut read("cert.pem").as_slice())
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut read("key.pem").as_slice())
        .unwrap()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    tls.alpn_protocols = vec![durable::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap()
}

/// A version-2 fake host's answer to a frame in a newer version, as a real one of
/// version 2 gives it: `UnsupportedVersion` in version 1, then the connection closed.
async fn refuse_version(conn: &quinn::Connection, mut send: quinn::SendStream, version: u8) {
    let refusal = Response::Error(WireError::UnsupportedVersion { got: version });
    send.write_all(&wire::encode_frame_in(&refusal, 1))
        .await
        .unwrap();
    send.finish().unwrap();
    let _ = send.stopped().await;
    conn.close(1u32.into(), b"unauthenticated");
}

/// A host of protocol version 2 (before pipes), as far as a client can tell: it
/// refuses a newer hello with `UnsupportedVersion`, answers a version 2 hello with
/// `Welcome`, and answers every call on its own stream with `Return(41)`; a follow it
/// takes and never answers. Records each frame's (version, request kind).
async fn version_2_host(tls_dir: &std::path::Path) -> (SocketAddr, Arc<Mutex<Vec<(u8, String)>>>) {
    let endpoint = fake_host_endpoint(tls_dir);
    let addr = endpoint.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let mut silent = Vec::new();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let bytes = recv.read_to_end(1 << 20).await.unwrap();
                    let version = bytes[4];
                    if version > 2 {
                        log.lock().unwrap().push((version, "refused".into()));
                        refuse_version(&conn, send, version).await;
                        return;
                    }
                    let request: Request = wire::decode_frame(&bytes, 1 << 20).unwrap();
                    if let Request::Follow(_) = request {
                        log.lock().unwrap().push((version, "follow".into()));
                        silent.push(send);
                        continue;
                    }
                    let (kind, response) = match request {
                        Request::Hello { .. } => ("hello", Response::Welcome),
                        Request::Call(_) => (
                            "call",
                            Response::Return(postcard::to_stdvec(&41i64).unwrap()),
                        ),
                        _ => (
                            "other",
                            Response::Error(WireError::Malformed {
                                message: "?".into(),
                            }),
                        ),
                    };
                    log.lock().unwrap().push((version, kind.into()));
                    send.write_all(&wire::encode_frame_in(&response, version))
                        .await
                        .unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connects_to_a_host_without_pipes_in_version_2_and_calls_a_stream_each() {
    let dir = tempfile::tempdir().unwrap();
    // A real host makes the certificates the fake one presents.
    HostProcess::start(dir.path(), &[]).kill9();
    let (addr, seen) = version_2_host(&dir.path().join("tls")).await;
    let client =
        durable::Client::connect(durable::ClientConfig::from_data_dir(addr, dir.path()).unwrap())
            .await
            .unwrap();
    let counter = client.get::<Counter>("old");
    assert_eq!(counter.get().await.unwrap(), 41);
    assert_eq!(counter.get().await.unwrap(), 41);
    let seen = seen.lock().unwrap().clone();
    let expected: Vec<(u8, String)> = vec![
        (wire::PROTOCOL_VERSION, "refused".into()),
        (2, "hello".into()),
        (2, "call".into()),
        (2, "call".into()),
    ];
    assert_eq!(seen, expected);
}

/// Many callers on one client: every call on the connection's one pipe, each answer
/// to its own caller (an answer handed to the wrong tag would show as a wrong or
/// repeated value).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_calls_from_forty_tasks_on_one_pipe_each_get_their_own_answer() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let mut tasks = Vec::new();
    for t in 0..40i64 {
        let counter = client.get::<Counter>(&format!("c{}", t % 8));
        let own = client.get::<Counter>(&format!("own{t}"));
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for i in 1..=25i64 {
                seen.push(counter.increment(1).await.unwrap());
                // A caller's own counter answers exactly its own running total.
                assert_eq!(own.increment(t).await.unwrap(), t * i);
            }
            seen
        }));
    }
    let mut per_counter = vec![Vec::new(); 8];
    for (t, task) in tasks.into_iter().enumerate() {
        per_counter[t % 8].extend(task.await.unwrap());
    }
    for mut values in per_counter {
        values.sort();
        assert_eq!(values, (1..=125).collect::<Vec<i64>>());
    }
}

/// A call over the host's frame limit gets `TooLarge` and ends the pipe (the host
/// cannot skip it); the calls sent beside it are still answered or resent under their
/// request ids on a new pipe: each applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_hosts_frame_limit_fails_alone_and_the_calls_beside_it_apply_once() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--max-frame", "65536"]);
    // The client's own limit is the default 4 MiB: it sends the big call.
    let client = host.client().await;
    let mut small = Vec::new();
    for _ in 0..3 {
        for i in 0..20 {
            let counter = client.get::<Counter>(&format!("beside{i}"));
            small.push(tokio::spawn(async move { counter.increment(1).await }));
        }
    }
    let big = client.object_ref(
        "Counter",
        durable::ObjectId::from_name("Counter", "big"),
        Some("big"),
    );
    let err = big
        .call::<_, i64, durable::Error>("increment", 0, &vec![7u8; 100_000])
        .await
        .unwrap_err();
    assert!(
        matches!(err, durable::CallError::TooLarge { .. }),
        "{err:?}"
    );
    for task in small {
        task.await.unwrap().unwrap();
    }
    for i in 0..20 {
        let counter = client.get::<Counter>(&format!("beside{i}"));
        assert_eq!(counter.get().await.unwrap(), 3, "beside{i}");
    }
}

/// Answers are read from the pipe a chunk at a time: one larger than a chunk (64 KiB)
/// arrives whole, and one over the client's own frame limit fails only its own call
/// (skipped as it comes) while the calls beside it and after it on the same pipe get
/// their answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_span_chunks_and_one_over_the_clients_limit_fails_alone() {
    use durable_tests::Probe;
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let roomy = host.client().await;
    let probe = roomy.get::<Probe>("many-keys");
    // 100 keys of 1,000 bytes: a `blobs()` answer of about 100 KB.
    let keys: Vec<String> = (0..100)
        .map(|i| format!("{i:03}{}", "k".repeat(997)))
        .collect();
    for key in &keys {
        probe.put_blob(key.clone(), 1).await.unwrap();
    }
    assert_eq!(probe.blobs().await.unwrap(), keys, "an answer over a chunk");

    let mut config = host.client_config();
    config.max_frame = 16 << 10;
    let narrow = durable::Client::connect(config).await.unwrap();
    let probe = narrow.get::<Probe>("many-keys");
    let mut beside = Vec::new();
    for i in 0..20 {
        let counter = narrow.get::<Counter>(&format!("narrow{i}"));
        beside.push(tokio::spawn(async move { counter.increment(1).await }));
    }
    let err = probe.blobs().await.unwrap_err();
    assert!(
        matches!(&err, durable::CallError::Protocol(m) if m.contains("exceeds the limit")),
        "{err:?}"
    );
    for task in beside {
        assert_eq!(task.await.unwrap().unwrap(), 1);
    }
    // The pipe goes on past the skipped answer.
    for i in 0..20 {
        let counter = narrow.get::<Counter>(&format!("narrow{i}"));
        assert_eq!(counter.increment(1).await.unwrap(), 2, "narrow{i}");
    }
    assert_eq!(probe.blobs().await.unwrap_err().retry(), err.retry());
}

/// A call on a pipe that outlives its deadline ends with `Timeout` at the deadline,
/// also when it is sent after a call with a later one (the pipe's deadline keeper is
/// woken for the sooner deadline); the late answer goes to no one, the longer call
/// still gets its own, and the pipe carries the next calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_on_a_pipe_times_out_at_its_deadline_and_the_pipe_carries_on() {
    use durable::CallError;
    use durable_tests::Hop;
    use std::future::Future;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    for name in ["long", "short"] {
        assert!(!client.get::<Hop>(name).ran().await.unwrap());
    }
    // The long call is sent first: its first poll finds the pipe open and queues its
    // frame (and its 20 s deadline) before the short calls come.
    let long_hop = client
        .get::<Hop>("long")
        .with_deadline(Duration::from_secs(20));
    let started = Instant::now();
    let mut long = Box::pin(async move { long_hop.busy(2500).await });
    assert!(
        std::future::poll_fn(|cx| std::task::Poll::Ready(long.as_mut().poll(cx)))
            .await
            .is_pending()
    );
    let long = tokio::spawn(async move { long.await.map(|()| started.elapsed()) });
    let short = client
        .get::<Hop>("short")
        .with_deadline(Duration::from_millis(300));
    let patient = client
        .get::<Hop>("short")
        .with_deadline(Duration::from_secs(20));
    for _ in 0..2 {
        // The turn starts at once and sleeps 2 s: only the client's deadline ends
        // the wait.
        let started = Instant::now();
        let err = short.busy(2000).await.unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, CallError::Timeout), "{err:?}");
        assert!(
            took >= Duration::from_millis(299) && took < Duration::from_millis(1500),
            "took {took:?}"
        );
        // The same pipe answers a call queued behind the busy turn once it ends.
        assert!(!patient.ran().await.unwrap());
        assert!(started.elapsed() >= Duration::from_millis(2000));
    }
    let took = long.await.unwrap().unwrap();
    assert!(took >= Duration::from_millis(2500), "took {took:?}");
    assert_eq!(
        client.get::<Counter>("after").increment(2).await.unwrap(),
        2
    );
}

/// The pipe's tasks run on the runtime that opened it. When that runtime shuts down
/// while a call from another runtime waits on the pipe, the call does not wait forever
/// for an answer or a deadline no task keeps: it ends by its deadline.
#[test]
fn a_call_ends_by_its_deadline_when_the_runtime_that_opened_its_pipe_is_gone() {
    use durable_tests::Hop;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let config = host.client_config();
    let (give, client) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let opener = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let client = durable::Client::connect(config).await.unwrap();
            // Opens the pipe (and the lane's): their tasks run here.
            assert!(!client.get::<Hop>("h").ran().await.unwrap());
            give.send(client).unwrap();
            let _ = stopped.await;
        });
        // Dropping the runtime drops the pipe's tasks unfinished.
    });
    let client = client.recv().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let hop = client.get::<Hop>("h").with_deadline(Duration::from_secs(3));
        let started = Instant::now();
        let call = tokio::spawn(async move { hop.busy(1500).await });
        // The opener's runtime goes away while the call waits on its pipe.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.send(()).unwrap();
        opener.join().unwrap();
        let ended = tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("the call still waits, long past its deadline")
            .unwrap();
        // Whatever it ends with (the answer, a timeout, a lost connection), it ends by
        // its deadline.
        assert!(
            started.elapsed() < Duration::from_millis(4000),
            "ended after {:?} with {ended:?}",
            started.elapsed()
        );
    });
}

/// A client made on one runtime, whose first call (the one that opens its pipe) comes
/// from another runtime that then sits idle (a `block_on` that returned): calls from
/// the first runtime still go through and still end by their deadlines. The pipe's
/// tasks (its writer, reader and deadline keeper) run on the runtime the client was
/// made on, not on whichever one happened to open the pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipe_opened_from_a_runtime_that_then_idles_still_carries_calls() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--lanes", "off"]);
    let client = host.client().await;
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let other = client.clone();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let n = runtime.block_on(other.get::<Counter>("idle").increment(1));
        let _ = opened_tx.send(n.map_err(|e| e.to_string()));
        // The runtime lives on, with nothing driving it.
        let _ = released.recv();
        drop(runtime);
    });
    assert_eq!(opened.await.unwrap(), Ok(1));
    let counter = client
        .get::<Counter>("idle")
        .with_deadline(std::time::Duration::from_secs(1));
    let answered =
        tokio::time::timeout(std::time::Duration::from_secs(5), counter.increment(1)).await;
    release.send(()).unwrap();
    thread.join().unwrap();
    assert_eq!(
        answered
            .expect("the call waited past its deadline")
            .unwrap(),
        2
    );
}

/// Starting to follow a stream is bounded by the client's deadline: a host that takes
/// the follow and never answers it gets `Timeout`, not a wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_the_host_never_answers_ends_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    HostProcess::start(dir.path(), &[]).kill9();
    let (addr, seen) = version_2_host(&dir.path().join("tls")).await;
    let mut config = durable::ClientConfig::from_data_dir(addr, dir.path()).unwrap();
    config.deadline = std::time::Duration::from_secs(1);
    let client = durable::Client::connect(config).await.unwrap();
    let started = std::time::Instant::now();
    let follow = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        client.follow::<Counter, i64>("silent", "s", 0),
    )
    .await
    .expect("the follow waited past the client's deadline");
    assert!(
        matches!(follow, Err(durable::CallError::Timeout)),
        "{follow:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));
    assert!(seen.lock().unwrap().contains(&(2, "follow".into())));
}

/// A host of protocol version 3 that welcomes the client, names no lanes, takes a
/// pipe and then never reads it (a host whose reading is held back as long as you
/// like).
async fn unread_pipe_host(tls_dir: &std::path::Path) -> SocketAddr {
    let endpoint = fake_host_endpoint(tls_dir);
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                let mut unread = Vec::new();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let mut prefix = [0u8; 4];
                    if recv.read_exact(&mut prefix).await.is_err() {
                        continue;
                    }
                    let mut frame = prefix.to_vec();
                    frame.resize(4 + u32::from_le_bytes(prefix) as usize, 0);
                    if recv.read_exact(&mut frame[4..]).await.is_err() {
                        continue;
                    }
                    let version = frame[4];
                    let response = match wire::decode_frame::<Request>(&frame, 1 << 20) {
                        Ok(Request::Hello { .. }) => Response::Welcome,
                        Ok(Request::Lanes) => Response::Lanes(Vec::new()),
                        Ok(Request::Pipe) => {
                            unread.push((send, recv));
                            continue;
                        }
                        _ => continue,
                    };
                    send.write_all(&wire::encode_frame_in(&response, version))
                        .await
                        .unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    addr
}

/// Calls on a pipe the host does not read wait to be sent up to a bound (64 MiB per
/// pipe); past it a call is refused at once as `Overloaded`, not applied (it was
/// never sent), instead of piling up in the client's memory until the deadline. The
/// calls taken end at their deadline (`Timeout`: they may yet be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_a_host_does_not_read_pile_up_to_a_bound_then_are_refused() {
    use durable_tests::Probe;
    let dir = tempfile::tempdir().unwrap();
    HostProcess::start(dir.path(), &[]).kill9();
    let addr = unread_pipe_host(&dir.path().join("tls")).await;
    let mut config = durable::ClientConfig::from_data_dir(addr, dir.path()).unwrap();
    config.deadline = std::time::Duration::from_secs(2);
    let client = durable::Client::connect(config).await.unwrap();
    let key = Arc::new("k".repeat(1 << 20));
    let calls = (0..200).map(|i| {
        let probe = client.get::<Probe>("big");
        let key = key.clone();
        async move { probe.put(key.to_string(), i).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let refused = results
        .iter()
        .filter(|r| matches!(r, Err(durable::CallError::Overloaded { .. })))
        .count();
    let timed_out = results
        .iter()
        .filter(|r| matches!(r, Err(durable::CallError::Timeout)))
        .count();
    assert_eq!(refused + timed_out, 200, "{results:?}");
    assert!(
        refused >= 100,
        "200 calls of 1 MiB on an unread pipe: {refused} refused, {timed_out} waited"
    );
}

/// A deadline too far to add to the clock (`Duration::MAX`, meant as "none") is a
/// century, not a panic in the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_duration_max_is_taken_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &[]);
    let client = host.client().await;
    let counter = client
        .get::<Counter>("patient")
        .with_deadline(std::time::Duration::MAX);
    assert_eq!(counter.increment(1).await.unwrap(), 1);
    assert_eq!(counter.get().await.unwrap(), 1);
}

/// A host of protocol version 2 that reads the first call, waits 400 ms and closes
/// the connection (the call was sent and lost), then answers every later call with
/// `Return(41)`. Records each call's `timeout_ms`.
async fn forgetful_host(tls_dir: &std::path::Path) -> (SocketAddr, Arc<Mutex<Vec<u64>>>) {
    let endpoint = fake_host_endpoint(tls_dir);
    let addr = endpoint.local_addr().unwrap();
    let timeouts = Arc::new(Mutex::new(Vec::new()));
    let seen = timeouts.clone();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let bytes = recv.read_to_end(1 << 20).await.unwrap();
                    let version = bytes[4];
                    if version > 2 {
                        refuse_version(&conn, send, version).await;
                        return;
                    }
                    let response = match wire::decode_frame::<Request>(&bytes, 1 << 20).unwrap() {
                        Request::Hello { .. } => Response::Welcome,
                        Request::Call(call) => {
                            let first = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(call.timeout_ms);
                                seen.len() == 1
                            };
                            if first {
                                tokio::time::sleep(std::time::Duration::from_millis(400)).await;
                                conn.close(0u32.into(), b"lost");
                                return;
                            }
                            Response::Return(postcard::to_stdvec(&41i64).unwrap())
                        }
                        _ => continue,
                    };
                    send.write_all(&wire::encode_frame_in(&response, version))
                        .await
                        .unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    (addr, timeouts)
}

/// A call sent again after its connection was lost carries what is left of the
/// caller's deadline, not the whole of it: the host drops it unstarted once the caller
/// has given up, instead of running it after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_sent_again_carries_what_is_left_of_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    HostProcess::start(dir.path(), &[]).kill9();
    let (addr, timeouts) = forgetful_host(&dir.path().join("tls")).await;
    let mut config = durable::ClientConfig::from_data_dir(addr, dir.path()).unwrap();
    config.deadline = std::time::Duration::from_secs(2);
    let client = durable::Client::connect(config).await.unwrap();
    assert_eq!(client.get::<Counter>("again").get().await.unwrap(), 41);
    let timeouts = timeouts.lock().unwrap().clone();
    assert_eq!(timeouts.len(), 2, "{timeouts:?}");
    assert_eq!(timeouts[0], 2_000);
    assert!(
        timeouts[1] <= 1_600 && timeouts[1] > 1_000,
        "sent again with {} ms of a 2 s deadline after 400 ms",
        timeouts[1]
    );
}
