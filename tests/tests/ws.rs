//! WebSockets with hibernation against a real host process (`serve --http`): the
//! chat room example broadcasts in order to every socket of the room, a room evicted
//! while its sockets stay open wakes on the next message with its sockets, tags and
//! attachments intact, a message sent by a turn that fails never leaves, a client
//! that does not read is closed without stalling the others, and 200 clients all get
//! every broadcast, in one order, before and after their object's eviction.

mod common;

use common::{token, HostProcess};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(10);

fn start(dir: &std::path::Path, extra: &[&str]) -> HostProcess {
    let mut flags = vec!["--http", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    HostProcess::start(dir, &flags)
}

/// Open `path` (`Class/name/ws?...`) with the host token.
async fn connect(host: &HostProcess, path: &str) -> Ws {
    let url = host
        .http_url(&format!("/v1/objects/{path}"))
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(host)).parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade");
    ws
}

/// The next text message (pings and pongs skipped).
async fn next_text(ws: &mut Ws) -> String {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("the socket is open")
            .expect("a frame");
        match m {
            Message::Text(t) => return t.to_string(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected text, got {other:?}"),
        }
    }
}

/// Two sockets on a `WsProbe`, both joined (tagged `all`): each one's own message
/// came back, the second's to both.
async fn pair(host: &HostProcess, path: &str) -> (Ws, Ws) {
    let mut a = connect(host, path).await;
    say(&mut a, "a-in").await;
    assert_eq!(next_text(&mut a).await, "a-in");
    let mut b = connect(host, path).await;
    say(&mut b, "b-in").await;
    assert_eq!(next_text(&mut b).await, "b-in");
    assert_eq!(next_text(&mut a).await, "b-in");
    (a, b)
}

async fn say(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
}

#[tokio::test]
async fn chat_two_clients_receive_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    // A socket's join turn runs after its upgrade: a socket has joined once its own
    // message comes back (its messages' turns queue behind its join).
    let mut alice = connect(&host, "ChatRoom/lobby/ws?user=alice").await;
    say(&mut alice, "here").await;
    assert_eq!(next_text(&mut alice).await, "alice: here");
    let mut bob = connect(&host, "ChatRoom/lobby/ws?user=bob").await;
    assert_eq!(next_text(&mut bob).await, "alice: here", "the history");
    say(&mut bob, "here").await;
    for ws in [&mut alice, &mut bob] {
        assert_eq!(next_text(ws).await, "bob: here");
    }
    for i in 0..20 {
        say(&mut alice, &format!("hello {i}")).await;
    }
    for ws in [&mut alice, &mut bob] {
        for i in 0..20 {
            assert_eq!(next_text(ws).await, format!("alice: hello {i}"));
        }
    }
    say(&mut bob, "hi alice").await;
    assert_eq!(next_text(&mut alice).await, "bob: hi alice");
    assert_eq!(next_text(&mut bob).await, "bob: hi alice");
    // The lines are in SQLite: a new socket gets them as history, in order.
    let mut carol = connect(&host, "ChatRoom/lobby/ws?user=carol").await;
    assert_eq!(next_text(&mut carol).await, "alice: here");
    assert_eq!(next_text(&mut carol).await, "bob: here");
    for i in 0..20 {
        assert_eq!(next_text(&mut carol).await, format!("alice: hello {i}"));
    }
    assert_eq!(next_text(&mut carol).await, "bob: hi alice");
    // Another room hears nothing of it.
    let mut other = connect(&host, "ChatRoom/attic/ws?user=dave").await;
    say(&mut other, "anyone?").await;
    assert_eq!(next_text(&mut other).await, "dave: anyone?");
    say(&mut carol, "bye").await;
    for ws in [&mut alice, &mut bob, &mut carol] {
        assert_eq!(next_text(ws).await, "carol: bye");
    }
    host.kill9();
}

#[tokio::test]
async fn an_evicted_room_wakes_with_its_sockets_tags_and_attachments() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &["--idle-timeout-secs", "0.2"]);
    let mut alice = connect(&host, "ChatRoom/quiet/ws?user=alice").await;
    say(&mut alice, "here").await;
    assert_eq!(next_text(&mut alice).await, "alice: here");
    let mut bob = connect(&host, "ChatRoom/quiet/ws?user=bob").await;
    assert_eq!(next_text(&mut bob).await, "alice: here", "the history");
    say(&mut alice, "before").await;
    assert_eq!(next_text(&mut alice).await, "alice: before");
    assert_eq!(next_text(&mut bob).await, "alice: before");
    // The probe shows the eviction: its activation count grows.
    let (mut p1, mut p2) = pair(&host, "WsProbe/h/ws").await;
    say(&mut p1, "boot").await;
    let first = next_text(&mut p1).await;
    assert_eq!(next_text(&mut p2).await, first);
    // Idle past the timeout (several sweeps): both objects are evicted while their
    // sockets stay open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    say(&mut p2, "boot").await;
    let second = next_text(&mut p2).await;
    assert_eq!(next_text(&mut p1).await, second);
    let n = |s: &str| s.strip_prefix("boot:").unwrap().parse::<i64>().unwrap();
    assert!(
        n(&second) > n(&first),
        "re-activated: {first} then {second}"
    );
    // The room too: bob's attachment (his name) and both tags survived.
    say(&mut bob, "after").await;
    assert_eq!(next_text(&mut alice).await, "bob: after");
    assert_eq!(next_text(&mut bob).await, "bob: after");
    host.kill9();
}

#[tokio::test]
async fn a_message_sent_by_a_failed_turn_never_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let (mut a, mut b) = pair(&host, "WsProbe/f/ws").await;
    say(&mut a, "fail:ghost").await;
    say(&mut a, "real").await;
    // The failed turn's broadcast is dropped; the socket stays open and the next
    // message arrives first.
    assert_eq!(next_text(&mut a).await, "real");
    assert_eq!(next_text(&mut b).await, "real");
    host.kill9();
}

#[tokio::test]
async fn a_slow_reader_is_closed_without_stalling_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let (mut fast, mut slow) = pair(&host, "WsProbe/s/ws").await;
    // From now on `slow` never reads. Each round broadcasts 256 messages of 16 KiB
    // (4 MiB); the fast client reads them all before the next round, so only the
    // slow one's queue grows: past the kernel's buffers and 1,024 queued messages
    // the gateway closes it.
    let per_round = 256;
    let mut left = Vec::new();
    for round in 0..12 {
        say(&mut fast, &format!("flood:{per_round}:16384")).await;
        let mut i = 0;
        while i < per_round {
            let m = next_text(&mut fast).await;
            if m.starts_with("left:") {
                left.push(m); // the slow one's #[on_close], between two rounds
                continue;
            }
            assert!(
                m.starts_with(&format!("{i}:")),
                "round {round}: {}",
                &m[..16]
            );
            i += 1;
        }
    }
    // The slow socket was closed with 1008 and its reason; read what is buffered.
    let closed = tokio::time::timeout(WAIT, async {
        while let Some(m) = slow.next().await {
            match m {
                Ok(Message::Close(frame)) => return frame,
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("the slow socket ends");
    if let Some(frame) = closed {
        assert_eq!(u16::from(frame.code), durable::CLOSE_SLOW_CLIENT);
        assert!(frame.reason.contains("too slow"), "{}", frame.reason);
    }
    // The object learnt it through #[on_close], with the gateway's code.
    if left.is_empty() {
        left.push(next_text(&mut fast).await);
    }
    assert_eq!(left, ["left:1008"]);
    // The fast socket and the object carry on.
    say(&mut fast, "still here").await;
    assert_eq!(next_text(&mut fast).await, "still here");
    host.kill9();
}

#[tokio::test]
async fn a_client_close_runs_on_close_with_its_code() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let (mut a, mut b) = pair(&host, "WsProbe/c/ws").await;
    b.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 4001.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(next_text(&mut a).await, "left:4001");
    // A socket of an unknown class, or of a class without #[on_message], is refused.
    let url = host
        .http_url("/v1/objects/Counter/x/ws")
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(&host)).parse().unwrap(),
    );
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    // Without the token: refused too.
    let url = host
        .http_url("/v1/objects/WsProbe/c/ws")
        .replacen("http://", "ws://", 1);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    host.kill9();
}

/// Read until `want` arrives, skipping other messages.
async fn skip_to(ws: &mut Ws, want: &str) {
    while next_text(ws).await != want {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_get_every_broadcast_in_order_across_an_eviction() {
    const CLIENTS: usize = 200;
    const MESSAGES: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    // One shard with one active object: a call to another object evicts the probe.
    let host = start(dir.path(), &["--shards", "1", "--max-active", "1"]);
    let mut clients = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let mut ws = connect(&host, "WsProbe/many/ws").await;
        // Its join ran once its own message comes back (its turns queue in order).
        say(&mut ws, &format!("join-{i}")).await;
        skip_to(&mut ws, &format!("join-{i}")).await;
        clients.push(ws);
    }
    say(&mut clients[0], "boot").await;
    let all = futures_util::future::join_all(clients.iter_mut().map(|ws| async move {
        loop {
            let m = next_text(ws).await;
            if m.starts_with("boot:") {
                return m;
            }
        }
    }))
    .await;
    assert!(all.iter().all(|m| m == "boot:1"), "{:?}", &all[..3]);

    // Evict it: the only active slot goes to a counter. Every socket stays open.
    let answer = reqwest::Client::new()
        .post(host.http_url("/v1/objects/Counter/other/increment"))
        .bearer_auth(token(&host))
        .json(&serde_json::json!({"by": 1}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());

    // A message from the last socket wakes it (a second activation), with all of
    // its sockets still tagged.
    say(&mut clients[CLIENTS - 1], "boot").await;
    let all = futures_util::future::join_all(
        clients
            .iter_mut()
            .map(|ws| async move { next_text(ws).await }),
    )
    .await;
    assert!(all.iter().all(|m| m == "boot:2"), "{:?}", &all[..3]);
    for i in 0..MESSAGES {
        say(&mut clients[i % 7], &format!("m-{i}")).await;
    }
    // Seven senders race each other into the object; whatever order it put their
    // messages in, every socket got that one order, and each sender's own messages
    // in the order sent.
    let got = futures_util::future::join_all(clients.iter_mut().map(|ws| async move {
        let mut got = Vec::with_capacity(MESSAGES);
        for _ in 0..MESSAGES {
            got.push(next_text(ws).await);
        }
        got
    }))
    .await;
    assert!(got.iter().all(|g| g == &got[0]), "one order for all");
    let order: Vec<usize> = got[0]
        .iter()
        .map(|m| m.strip_prefix("m-").unwrap().parse().unwrap())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(sorted, (0..MESSAGES).collect::<Vec<_>>(), "each once");
    for sender in 0..7 {
        let mine: Vec<usize> = order.iter().copied().filter(|i| i % 7 == sender).collect();
        assert!(mine.is_sorted(), "sender {sender}: {mine:?}");
    }
    host.kill9();
}

/// Evict every idle object: with `--shards 1 --max-active 1`, a call to another
/// object takes the only active slot.
async fn evict_others(host: &HostProcess) {
    let answer = reqwest::Client::new()
        .post(host.http_url("/v1/objects/Counter/evictor/increment"))
        .bearer_auth(token(host))
        .json(&serde_json::json!({"by": 1}))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_and_auto_responses_never_wake_the_object() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(
        dir.path(),
        &[
            "--shards",
            "1",
            "--max-active",
            "1",
            "--ws-ping-secs",
            "0.1",
        ],
    );
    // One socket, read all along (so its client answers the pings).
    let mut a = connect(&host, "WsProbe/quiet/ws").await;
    say(&mut a, "a-in").await;
    assert_eq!(next_text(&mut a).await, "a-in");
    say(&mut a, "boot").await;
    assert_eq!(next_text(&mut a).await, "boot:1");
    evict_others(&host).await;
    // While evicted: the gateway pings (the client's pongs go back unasked), and
    // answers `ping` with `pong` itself.
    let mut pings = 0;
    while pings < 3 {
        match tokio::time::timeout(WAIT, a.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) => pings += 1,
            other => panic!("expected a ping, got {other:?}"),
        }
    }
    for _ in 0..3 {
        say(&mut a, "ping").await;
        assert_eq!(next_text(&mut a).await, "pong");
    }
    // Had any of that woken the probe, this would evict it again, and the next
    // message would find a third activation.
    evict_others(&host).await;
    say(&mut a, "boot").await;
    assert_eq!(next_text(&mut a).await, "boot:2");
    host.kill9();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_and_the_socket_cap_holds() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &["--ws-ping-secs", "0.1", "--max-sockets", "2"]);
    let (mut a, mut b) = pair(&host, "WsProbe/cap/ws").await;
    // A third socket is refused while two are open.
    let url = host
        .http_url("/v1/objects/WsProbe/cap/ws")
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(&host)).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503)
        }
        other => panic!("expected 503, got {other:?}"),
    }
    // `b` stops reading, so it never answers the pings: it is closed (1001) and the
    // object learns it; `a` keeps reading (its client answers) and stays.
    let left = next_text(&mut a).await;
    assert_eq!(left, format!("left:{}", durable::CLOSE_NO_PONG));
    say(&mut a, "still here").await;
    assert_eq!(next_text(&mut a).await, "still here");
    drop(b.close(None).await);
    host.kill9();
}

/// Messages a turn sends to a socket before it closes the socket, in the same turn,
/// reach the client before the close frame, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_before_the_object_closes_a_socket_arrive_before_the_close() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let mut ws = connect(&host, "WsProbe/kick/ws").await;
    ws.send(Message::Text("kick:20".into())).await.unwrap();
    let mut got = Vec::new();
    let close = loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a frame");
        match m {
            Message::Text(t) => got.push(t.to_string()),
            Message::Close(frame) => break frame,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let sent: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    assert_eq!(got, sent, "every message before the close, in order");
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), 4000);
    assert_eq!(close.reason.as_str(), "kicked");
    host.kill9();
}

/// The upgrade's query string is kept with the socket and handed to each of its
/// events: one longer than 2,048 bytes is refused (400), one at the bound is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_query_string_past_its_bound_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let open = |query: String| {
        let url = host
            .http_url(&format!("/v1/objects/WsProbe/q/ws?{query}"))
            .replacen("http://", "ws://", 1);
        let mut request = url.into_client_request().unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", token(&host)).parse().unwrap(),
        );
        tokio_tungstenite::connect_async(request)
    };
    let at_bound = format!("u={}", "a".repeat(2_046));
    let (mut ws, _) = open(at_bound).await.expect("a query at the bound is taken");
    ws.send(Message::Text("hello".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "hello");
    match open(format!("u={}", "a".repeat(2_047))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 400)
        }
        other => panic!("expected 400, got {:?}", other.map(|_| "an open socket")),
    }
    host.kill9();
}

/// A socket whose message's turn runs longer than two ping periods is not taken for a
/// dead client: the gateway reads nothing from it while it waits on the turn (its
/// pongs included), and it stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_waiting_on_a_long_turn_is_not_closed_for_silence() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &["--ws-ping-secs", "0.5"]);
    let mut ws = connect(&host, "WsProbe/long/ws").await;
    ws.send(Message::Text("sleep:2500".into())).await.unwrap();
    // Pings arrive meanwhile (tungstenite answers them while this reads).
    assert_eq!(next_text(&mut ws).await, "slept");
    ws.send(Message::Text("still here".into())).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "still here");
    host.kill9();
}

/// A client that keeps sending (so it is not silent) but reads nothing: once what is
/// sent to it fills the connection, the gateway's send to it waits; after two ping
/// periods it is closed as slow (1008) and the object learns it. Before, the writer
/// waited in that send for good (the silence check runs between sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_but_never_reads_is_closed_as_slow() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &["--ws-ping-secs", "0.2"]);
    let (mut a, mut b) = pair(&host, "WsProbe/stuck/ws").await;
    // `b` sends a pong frame every 50 ms (the gateway hears it; nothing answers it),
    // and reads nothing.
    let talking = tokio::spawn(async move {
        loop {
            if b.send(Message::Pong(Default::default())).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    // 600 messages of 128 KiB to both (fewer than a socket's queue holds; more than
    // the connection's buffers take).
    say(&mut a, "flood:600:131072").await;
    let left = async {
        loop {
            let text = next_text(&mut a).await;
            if let Some(code) = text.strip_prefix("left:") {
                return code.to_owned();
            }
        }
    };
    let code = tokio::time::timeout(WAIT, left)
        .await
        .expect("the client that never reads was not closed");
    assert_eq!(code, durable::CLOSE_SLOW_CLIENT.to_string());
    talking.abort();
    host.kill9();
}

/// A socket's messages are calls of its caller on the object: `--caller-rate` holds for
/// them as for HTTP and QUIC calls. Past the burst the socket is closed, 1013 (try
/// again later), instead of running every message; its close still reaches the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sockets_messages_count_against_the_callers_rate() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &["--caller-rate", "1:5"]);
    // A second socket of the object (the same caller) watches who leaves.
    let mut watcher = connect(&host, "WsProbe/rated/ws").await;
    let mut ws = connect(&host, "WsProbe/rated/ws").await;
    for i in 0..20 {
        // The socket may already be closed: later sends fail, that is fine.
        let _ = ws.send(Message::text(format!("m{i}"))).await;
    }
    let mut echoed = 0;
    let close = loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a frame in time");
        match m {
            Some(Ok(Message::Text(_))) => echoed += 1,
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => {}
            None | Some(Err(_)) => panic!("the socket ended without a close frame"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(u16::from(close.code), durable::CLOSE_TRY_AGAIN);
    assert!(echoed <= 6, "{echoed} of 20 messages ran past a burst of 5");
    // The object learns that the socket left, though its caller's bucket is empty:
    // a close is never refused.
    let left = async {
        loop {
            let text = next_text(&mut watcher).await;
            if let Some(code) = text.strip_prefix("left:") {
                return code.to_owned();
            }
        }
    };
    let code = tokio::time::timeout(WAIT, left)
        .await
        .expect("the object never learned that the rated socket left");
    assert_eq!(code, durable::CLOSE_TRY_AGAIN.to_string());
    host.kill9();
}

/// Opening a socket is a call of its caller against `--caller-rate` (it pays for the
/// socket's close, which is never refused): past the burst an upgrade is answered
/// 429 with Retry-After, so opening and closing sockets in a loop cannot run the
/// object's `#[on_close]` without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_sockets_counts_against_the_callers_rate() {
    let dir = tempfile::tempdir().unwrap();
    // WsProbe has an `#[on_connect]`: a socket costs its upgrade and its connect
    // turn, two of the burst of four.
    let host = start(dir.path(), &["--caller-rate", "0.5:4"]);
    for _ in 0..2 {
        let ws = connect(&host, "WsProbe/opened/ws").await;
        drop(ws);
    }
    let url = host
        .http_url("/v1/objects/WsProbe/opened/ws")
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(&host)).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 429);
            assert!(r.headers().contains_key("retry-after"));
        }
        other => panic!("a third socket past a burst of 4: {other:?}"),
    }
    host.kill9();
}
