//! Resumable streams against a real host process (`serve --http`), with the AI chat
//! example (seed 000): a client that disconnects mid-reply and comes back with its
//! last sequence number gets exactly the rest, in order, including what was produced
//! while it was away; a second client reading from 0 gets the whole text, over a
//! WebSocket; the producer finishes with nobody watching; what a client saw survives
//! `kill -9`, and the reply completes after the restart; bad requests get JSON errors.

mod common;

use common::{token, HostProcess};
use durable_examples::ai;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(20);

fn http() -> Client {
    Client::builder().no_proxy().build().unwrap()
}

fn start(dir: &std::path::Path) -> HostProcess {
    HostProcess::start(dir, &["--http", "127.0.0.1:0"])
}

/// POST a call with the host token; the JSON answer.
async fn call(host: &HostProcess, path: &str, args: Value) -> Value {
    let r = http()
        .post(host.http_url(&format!("/v1/objects/{path}")))
        .bearer_auth(token(host))
        .json(&args)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json().await.unwrap()
}

/// Start a reply of `tokens` tokens at `rate` per second in conversation `c`.
async fn ask(host: &HostProcess, c: &str, prompt: &str, tokens: u32, rate: u32) -> String {
    let reply = call(
        host,
        &format!("AiChat/{c}/ask_with"),
        json!({"prompt": prompt, "tokens": tokens, "tokens_per_second": rate}),
    )
    .await;
    reply["stream"].as_str().unwrap().to_owned()
}

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
enum Sse {
    Item(u64, String),
    End(u64),
    Failure(Value),
}

/// A server-sent events connection, parsed by hand (the format is four lines).
struct Events {
    response: reqwest::Response,
    buffer: String,
}

impl Events {
    async fn open(
        host: &HostProcess,
        c: &str,
        stream: &str,
        after: Option<&str>,
        last: Option<&str>,
    ) -> Events {
        let mut url = host.http_url(&format!("/v1/objects/AiChat/{c}/streams/{stream}"));
        if let Some(a) = after {
            url.push_str(&format!("?after={a}"));
        }
        let mut request = http().get(url).bearer_auth(token(host));
        if let Some(l) = last {
            request = request.header("last-event-id", l);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The events of a GET of `url` with the host's token (whatever its status).
    async fn at(host: &HostProcess, url: String) -> Events {
        let response = http()
            .get(url)
            .bearer_auth(token(host))
            .send()
            .await
            .unwrap();
        Events {
            response,
            buffer: String::new(),
        }
    }

    /// The next event (keep-alive comments skipped); `None` when the response ends.
    async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<u64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                    }
                }
                let Some(data) = data else { continue };
                return Some(match event.as_deref() {
                    None => {
                        let seq = data["seq"].as_u64().unwrap();
                        assert_eq!(id, Some(seq), "an item's event id is its seq");
                        Sse::Item(seq, data["item"].as_str().unwrap().to_owned())
                    }
                    Some("end") => Sse::End(data["seq"].as_u64().unwrap()),
                    Some("failure") => Sse::Failure(data),
                    Some(other) => panic!("unexpected event {other}"),
                });
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an event in time")
                .expect("reading the events");
            match chunk {
                Some(bytes) => self.buffer.push_str(std::str::from_utf8(&bytes).unwrap()),
                None => return None,
            }
        }
    }

    /// Items until the end: (their seqs, their text, the end's seq).
    async fn rest(&mut self) -> (Vec<u64>, String, u64) {
        let (mut seqs, mut text) = (Vec::new(), String::new());
        loop {
            match self
                .next()
                .await
                .expect("the stream ends with an end event")
            {
                Sse::Item(seq, item) => {
                    seqs.push(seq);
                    text.push_str(&item);
                }
                Sse::End(seq) => return (seqs, text, seq),
                Sse::Failure(e) => panic!("the stream failed: {e}"),
            }
        }
    }
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws(host: &HostProcess, c: &str, stream: &str, after: u64) -> Ws {
    let url = host
        .http_url(&format!(
            "/v1/objects/AiChat/{c}/streams/{stream}?after={after}"
        ))
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(host)).parse().unwrap(),
    );
    tokio_tungstenite::connect_async(request)
        .await
        .expect("the upgrade")
        .0
}

/// The upgrade request of a WebSocket on `path` (under `/v1/objects/`), with the
/// host token.
fn ws_request(
    host: &HostProcess,
    path: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = host
        .http_url(&format!("/v1/objects/{path}"))
        .replacen("http://", "ws://", 1);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token(host)).parse().unwrap(),
    );
    request
}

/// The next WebSocket message as JSON (`None` once closed).
async fn ws_next(ws: &mut Ws) -> Option<Value> {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")?;
        match m.ok()? {
            Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

fn expect_contiguous(seqs: &[u64], from: u64, to: u64) {
    let want: Vec<u64> = (from..=to).collect();
    assert_eq!(seqs, want.as_slice(), "every item once, in order");
}

#[tokio::test]
async fn a_client_that_comes_back_gets_exactly_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let prompt = "why do replies survive reloads";
    let stream = ask(&host, "c1", prompt, 90, 90).await;

    // The first client reads ten items and goes away.
    let mut first = Events::open(&host, "c1", &stream, Some("0"), None).await;
    let mut seen = String::new();
    for want in 1..=10 {
        match first.next().await.unwrap() {
            Sse::Item(seq, item) => {
                assert_eq!(seq, want);
                seen.push_str(&item);
            }
            other => panic!("expected item {want}, got {other:?}"),
        }
    }
    drop(first);

    // A second client over a WebSocket, from the start: it also tells when the
    // producer has moved well past what the first client saw.
    let mut second = ws(&host, "c1", &stream, 0).await;
    let mut whole = String::new();
    let mut seqs = Vec::new();
    while seqs.last().copied().unwrap_or(0) < 40 {
        let m = ws_next(&mut second).await.unwrap();
        seqs.push(m["seq"].as_u64().unwrap());
        whole.push_str(m["item"].as_str().unwrap());
    }

    // The first client resumes after its last item: as an EventSource does, with
    // Last-Event-ID (and its stale ?after= ignored).
    let mut back = Events::open(&host, "c1", &stream, Some("0"), Some("10")).await;
    let (rest, text, end) = back.rest().await;
    expect_contiguous(&rest, 11, 90);
    assert_eq!(end, 90);
    seen.push_str(&text);
    assert_eq!(seen, ai::text(prompt, 90), "the full text, once, in order");
    assert!(
        back.next().await.is_none(),
        "the response ends after the end event"
    );

    // The WebSocket client read everything from 0, then the end and a normal close.
    loop {
        let m = ws_next(&mut second)
            .await
            .expect("the end before the close");
        if m["end"] == json!(true) {
            assert_eq!(m["seq"], 90);
            break;
        }
        seqs.push(m["seq"].as_u64().unwrap());
        whole.push_str(m["item"].as_str().unwrap());
    }
    expect_contiguous(&seqs, 1, 90);
    assert_eq!(whole, ai::text(prompt, 90));
    assert!(ws_next(&mut second).await.is_none());

    // A finished stream read again, with ?after= this time: the tail and the end.
    let mut late = Events::open(&host, "c1", &stream, Some("85"), None).await;
    let (rest, _, end) = late.rest().await;
    expect_contiguous(&rest, 86, 90);
    assert_eq!(end, 90);
    let mut done = Events::open(&host, "c1", &stream, Some("90"), None).await;
    assert_eq!(done.next().await, Some(Sse::End(90)));
}

#[tokio::test]
async fn the_reply_runs_without_clients_and_what_was_seen_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let prompt = "what happens on a crash";

    // Nobody watches this one: the producer runs to its end on its own.
    let quiet = ask(&host, "c2", "nobody watches", 20, 200).await;
    let started = Instant::now();
    loop {
        let status = call(&host, "AiChat/c2/reply", json!({"id": 1})).await;
        if status["done"] == json!(true) {
            assert_eq!(status["produced"], 20);
            assert_eq!(status["text"], ai::text("nobody watches", 20));
            break;
        }
        // No event to await with nobody watching: poll the object.
        assert!(
            started.elapsed() < WAIT,
            "the reply never finished: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // This one is watched, and the host is killed mid-reply.
    let stream = ask(&host, "c2", prompt, 60, 30).await;
    let mut events = Events::open(&host, "c2", &stream, None, None).await;
    let mut seen = String::new();
    for want in 1..=12 {
        match events.next().await.unwrap() {
            Sse::Item(seq, item) => {
                assert_eq!(seq, want);
                seen.push_str(&item);
            }
            other => panic!("{other:?}"),
        }
    }
    drop(events);
    let listen = host.addr;
    host.kill9();

    // After the restart: everything a client saw is there, the generator (its
    // alarm, overdue now) carries on, and the reply completes with no gap.
    let host = HostProcess::start_on_with(dir.path(), listen, &["--http", "127.0.0.1:0"]);
    let mut again = Events::open(&host, "c2", &stream, Some("0"), None).await;
    let (seqs, text, end) = again.rest().await;
    expect_contiguous(&seqs, 1, 60);
    assert_eq!(end, 60);
    assert!(text.starts_with(&seen), "what was acknowledged survived");
    assert_eq!(text, ai::text(prompt, 60));
    let mut quiet_again = Events::open(&host, "c2", &quiet, None, None).await;
    let (seqs, text, _) = quiet_again.rest().await;
    expect_contiguous(&seqs, 1, 20);
    assert_eq!(text, ai::text("nobody watches", 20));
}

#[tokio::test]
async fn bad_requests_get_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let stream = ask(&host, "c3", "hi", 3, 100).await;
    let get = |path: &str, auth: bool| {
        let mut r = http().get(host.http_url(&format!("/v1/objects/{path}")));
        if auth {
            r = r.bearer_auth(token(&host));
        }
        r
    };
    let cases = [
        (
            "an unknown stream",
            get("AiChat/c3/streams/reply-99", true),
            StatusCode::NOT_FOUND,
            "unknown_stream",
        ),
        (
            "a stream of an object that never had one",
            get("AiChat/fresh/streams/x", true),
            StatusCode::NOT_FOUND,
            "unknown_stream",
        ),
        (
            "a negative after",
            get(&format!("AiChat/c3/streams/{stream}?after=-1"), true),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a non-numeric after",
            get(&format!("AiChat/c3/streams/{stream}?after=ten"), true),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a bad Last-Event-ID",
            get(&format!("AiChat/c3/streams/{stream}"), true).header("last-event-id", "x"),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "a bad stream name",
            get("AiChat/c3/streams/a%20b", true),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "an unknown class",
            get("Nope/c3/streams/x", true),
            StatusCode::NOT_FOUND,
            "unknown_class",
        ),
        (
            "no token for a class that needs one",
            get("Counter/c3/streams/x", false),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
    ];
    for (what, request, status, kind) in cases {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), status, "{what}");
        assert_eq!(
            r.headers()["content-type"].to_str().unwrap(),
            "application/json",
            "{what}"
        );
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["kind"], kind, "{what}: {body}");
        assert!(body["error"]["message"].is_string(), "{what}");
    }
    // The page is served, without a token.
    let page = http().get(host.http_url("/ai/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(page.text().await.unwrap().contains("EventSource"));
    // Following needs the token like calling (this host has no auth hook).
    let open = get(&format!("AiChat/c3/streams/{stream}"), false)
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn acknowledged_items_survive_kill_9_and_a_failed_turn_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    // Items whose call was answered are durable: random ones, so that nothing could
    // regenerate them after the crash.
    let mut want = Vec::new();
    for round in 0..20 {
        let items: Vec<String> = (0..5)
            .map(|i| format!("{round}-{i}-{}", Instant::now().elapsed().as_nanos()))
            .collect();
        let last = call(
            &host,
            "StreamProbe/p/push",
            json!({"stream": "s", "items": items}),
        )
        .await;
        want.extend(items);
        assert_eq!(last, want.len() as u64);
    }
    // A turn that pushes and fails: rolled back, its item never released.
    let r = http()
        .post(host.http_url("/v1/objects/StreamProbe/p/push_and_fail"))
        .bearer_auth(token(&host))
        .json(&json!({"stream": "s", "item": "never"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let listen = host.addr;
    host.kill9();

    let host = HostProcess::start_on_with(dir.path(), listen, &["--http", "127.0.0.1:0"]);
    let url = |after: u64| {
        host.http_url(&format!(
            "/v1/objects/StreamProbe/p/streams/s?after={after}"
        ))
    };
    let mut follower = Events::at(&host, url(0)).await;
    for (i, item) in want.iter().enumerate() {
        assert_eq!(
            follower.next().await,
            Some(Sse::Item(i as u64 + 1, item.clone()))
        );
    }
    // The live tail: pushed after the follower caught up, then the end.
    call(
        &host,
        "StreamProbe/p/push",
        json!({"stream": "s", "items": ["live"]}),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(101, "live".into())));
    call(&host, "StreamProbe/p/end", json!({"stream": "s"})).await;
    assert_eq!(follower.next().await, Some(Sse::End(101)));
    assert_eq!(follower.next().await, None);
    // Pushing to an ended stream is the method's error.
    let r = http()
        .post(host.http_url("/v1/objects/StreamProbe/p/push"))
        .bearer_auth(token(&host))
        .json(&json!({"stream": "s", "items": ["late"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

/// A stream deleted while followed (alone, or by `delete_all`) ends its live followers
/// with `unknown_stream`, and
/// a new stream of the same name is not mixed into what they followed (its numbers
/// start at 1 again: they were skipped as seen, then its later items sent on).
#[tokio::test]
async fn a_deleted_stream_ends_its_followers_and_a_new_one_of_its_name_is_not_mixed_in() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let push = |items: Vec<&'static str>| {
        call(
            &host,
            "StreamProbe/d/push",
            json!({"stream": "s", "items": items}),
        )
    };
    assert_eq!(push(vec!["a", "b", "c"]).await, 3);
    let mut follower = Events::at(
        &host,
        host.http_url("/v1/objects/StreamProbe/d/streams/s?after=2"),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(3, "c".into())));
    assert_eq!(
        call(&host, "StreamProbe/d/delete", json!({"stream": "s"})).await,
        json!(true)
    );
    assert_eq!(push(vec!["w", "x", "y", "z"]).await, 4);
    match follower.next().await {
        Some(Sse::Failure(e)) => assert_eq!(e["error"]["kind"], "unknown_stream", "{e}"),
        other => panic!("the follower of the deleted stream got {other:?}"),
    }
    assert_eq!(follower.next().await, None);

    // `delete_all` deletes every stream: their followers end too.
    let mut follower = Events::at(
        &host,
        host.http_url("/v1/objects/StreamProbe/d/streams/s?after=4"),
    )
    .await;
    call(&host, "StreamProbe/d/wipe", json!({})).await;
    assert_eq!(push(vec!["n1", "n2", "n3", "n4", "n5"]).await, 5);
    match follower.next().await {
        Some(Sse::Failure(e)) => assert_eq!(e["error"]["kind"], "unknown_stream", "{e}"),
        other => panic!("the follower of the wiped object's stream got {other:?}"),
    }
}

/// A deletion made before a turn's call to another object is durable once the call
/// is sent, even if the turn then fails: the stream's followers end (`unknown_stream`)
/// and never take a new stream of the name for theirs. (Before the fix the failed
/// turn's deletion never reached them, and the new stream's third item came as the old
/// one's third.)
#[tokio::test]
async fn a_deletion_made_durable_by_an_outgoing_call_ends_followers_though_the_turn_fails() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let push = |items: Vec<&'static str>| {
        call(
            &host,
            "StreamProbe/dc/push",
            json!({"stream": "s", "items": items}),
        )
    };
    assert_eq!(push(vec!["a", "b"]).await, 2);
    let mut follower = Events::at(
        &host,
        host.http_url("/v1/objects/StreamProbe/dc/streams/s?after=1"),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(2, "b".into())));
    let r = http()
        .post(host.http_url("/v1/objects/StreamProbe/dc/delete_call_fail"))
        .bearer_auth(token(&host))
        .json(&json!({"stream": "s", "other": "dc-other"}))
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    // The deletion stood: a new stream of the name starts at 1.
    assert_eq!(push(vec!["x", "y", "z"]).await, 3);
    match tokio::time::timeout(std::time::Duration::from_secs(10), follower.next())
        .await
        .expect("the follower heard nothing")
    {
        Some(Sse::Failure(e)) => assert_eq!(e["error"]["kind"], "unknown_stream", "{e}"),
        other => panic!("the follower of the deleted stream got {other:?}"),
    }
}

/// An end (or items) made durable by a turn's call to another object, the turn then
/// failing, still reaches the stream's live followers: they read the stream again
/// from the object (before the fix nothing came, and a follower that had every item
/// waited for ever).
#[tokio::test]
async fn an_end_made_durable_by_an_outgoing_call_reaches_followers_though_the_turn_fails() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    assert_eq!(
        call(
            &host,
            "StreamProbe/ec/push",
            json!({"stream": "s", "items": ["a", "b"]}),
        )
        .await,
        2
    );
    let mut follower = Events::at(
        &host,
        host.http_url("/v1/objects/StreamProbe/ec/streams/s?after=1"),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(2, "b".into())));
    let r = http()
        .post(host.http_url("/v1/objects/StreamProbe/ec/end_call_fail"))
        .bearer_auth(token(&host))
        .json(&json!({"stream": "s", "other": "ec-other"}))
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    assert_eq!(
        tokio::time::timeout(std::time::Duration::from_secs(10), follower.next())
            .await
            .expect("the follower never heard of the end"),
        Some(Sse::End(2))
    );
}

/// The same for an alarm handler that ends the stream, calls another object and then
/// fails (before the fix the failed handler's effects were dropped with it, and the
/// follower waited for ever).
#[tokio::test]
async fn an_end_made_durable_by_a_failing_alarm_handlers_call_reaches_followers() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    assert_eq!(
        call(
            &host,
            "StreamProbe/ea/push",
            json!({"stream": "s", "items": ["a", "b"]}),
        )
        .await,
        2
    );
    let mut follower = Events::at(
        &host,
        host.http_url("/v1/objects/StreamProbe/ea/streams/s?after=1"),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(2, "b".into())));
    call(
        &host,
        "StreamProbe/ea/end_by_alarm",
        json!({"stream": "s", "other": "ea-other"}),
    )
    .await;
    assert_eq!(
        tokio::time::timeout(std::time::Duration::from_secs(10), follower.next())
            .await
            .expect("the follower never heard of the end"),
        Some(Sse::End(2))
    );
}

/// The same within one batch of three calls: A deletes the stream, calls out and
/// fails; B starts a new stream of the name; C calls out (making B's items durable)
/// and fails. The old stream's follower must hear of A's deletion before it sees B's
/// items (before the fix they came first, and B's third item was taken for the old
/// stream's third).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_turns_durable_deletion_reaches_followers_before_a_later_turns_items() {
    use durable_tests::StreamProbe;
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let client = host.client().await;
    let probe = client.get::<StreamProbe>("dc3");
    assert_eq!(
        probe
            .push("s".into(), vec!["a".into(), "b".into()])
            .await
            .unwrap(),
        2
    );
    let mut follower = Events::at(
        &host,
        host.http_url("/v1/objects/StreamProbe/dc3/streams/s?after=1"),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(2, "b".into())));
    // A, B and C queue behind a call that holds the object (sent once it runs), so
    // they run as one batch.
    let signal = dir.path().join("held");
    let held = tokio::spawn({
        let probe = probe.clone();
        let signal = signal.to_str().unwrap().to_string();
        async move { probe.hold(signal, 500).await }
    });
    let deadline = Instant::now() + WAIT;
    while !signal.exists() {
        assert!(Instant::now() < deadline, "the holding call never ran");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let (a, b, c) = tokio::join!(
        probe.delete_call_fail("s".into(), "dc3-a".into()),
        probe.push("s".into(), vec!["x".into(), "y".into(), "z".into()]),
        probe.delete_call_fail("t".into(), "dc3-c".into()),
    );
    held.await.unwrap().unwrap();
    assert!(a.is_err() && c.is_err(), "{a:?} {c:?}");
    assert_eq!(b.unwrap(), 3, "B started a new stream of the name");
    match tokio::time::timeout(std::time::Duration::from_secs(10), follower.next())
        .await
        .expect("the follower heard nothing")
    {
        Some(Sse::Failure(e)) => assert_eq!(e["error"]["kind"], "unknown_stream", "{e}"),
        other => panic!("the follower of the deleted stream got {other:?}"),
    }
}

/// A follower so slow that the host stopped queueing live items for it (it reads the
/// rest from the object) stays a follower of its stream: if the stream is deleted and
/// a new one of its name written meanwhile, it ends (`unknown_stream`) instead of going
/// on with the new stream's items as if they were the old one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_across_a_delete_and_re_create_is_not_mixed_in() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let push = |items: Vec<String>| {
        call(
            &host,
            "StreamProbe/lag/push",
            json!({"stream": "s", "items": items}),
        )
    };
    push(vec!["o".into()]).await;
    let mut follower = Events::at(
        &host,
        host.http_url("/v1/objects/StreamProbe/lag/streams/s?after=0"),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(1, "o".into())));
    // Not read: 8,000 items of 4 KiB fill the connection's buffers and then the
    // host's queue for this follower (4,096 items).
    let old = "o".repeat(4096);
    for _ in 0..16 {
        push(vec![old.clone(); 500]).await;
    }
    assert_eq!(
        call(&host, "StreamProbe/lag/delete", json!({"stream": "s"})).await,
        json!(true)
    );
    for chunk in 0..4 {
        let items = (0..5_000)
            .map(|i| format!("n{}", chunk * 5_000 + i))
            .collect();
        push(items).await;
    }
    let mut seen = 1;
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(30), follower.next())
            .await
            .expect("the follower stalled")
        {
            Some(Sse::Item(seq, item)) => {
                assert_eq!(seq, seen + 1);
                assert!(
                    item == old,
                    "item {seq} is the new stream's: {}",
                    &item[..item.len().min(16)]
                );
                seen = seq;
            }
            Some(Sse::Failure(e)) => {
                assert_eq!(e["error"]["kind"], "unknown_stream", "{e}");
                break;
            }
            other => panic!("after item {seen}: {other:?}"),
        }
    }
    assert!(seen < 8_001, "{seen}");
}

/// A stream's WebSocket followers count against `--max-sockets` as objects' sockets
/// do (past it the upgrade is refused, 503 `too_many_sockets`; a follower that ends
/// gives its place back), and a follower's client may send only small messages.
#[tokio::test]
async fn websocket_followers_count_against_the_socket_cap() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(dir.path(), &["--http", "127.0.0.1:0", "--max-sockets", "2"]);
    call(
        &host,
        "StreamProbe/cap/push",
        json!({"stream": "s", "items": ["a"]}),
    )
    .await;
    let request = || ws_request(&host, "StreamProbe/cap/streams/s?after=0");
    let mut a = tokio_tungstenite::connect_async(request()).await.unwrap().0;
    let mut b = tokio_tungstenite::connect_async(request()).await.unwrap().0;
    assert_eq!(ws_next(&mut a).await.unwrap()["item"], "a");
    assert_eq!(ws_next(&mut b).await.unwrap()["item"], "a");
    match tokio_tungstenite::connect_async(request()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            let body = String::from_utf8(r.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("too_many_sockets"), "{body}");
        }
        other => panic!("a third follower past --max-sockets 2: {other:?}"),
    }
    // A message larger than a follower's client may send ends that follower...
    use futures_util::SinkExt;
    let _ = a.send(Message::Text("x".repeat(64 << 10).into())).await;
    let deadline = Instant::now() + WAIT;
    loop {
        match tokio::time::timeout(WAIT, a.next())
            .await
            .expect("an end in time")
        {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
            Some(Ok(_)) => assert!(Instant::now() < deadline),
        }
    }
    // ...and its place is given back.
    let deadline = Instant::now() + WAIT;
    let mut c = loop {
        match tokio_tungstenite::connect_async(request()).await {
            Ok((c, _)) => break c,
            Err(e) => {
                assert!(Instant::now() < deadline, "the place never came back: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(ws_next(&mut c).await.unwrap()["item"], "a");
}

/// A WebSocket follower whose client goes silent (reads nothing: answers no ping) is
/// closed after two ping periods, and its place under `--max-sockets` comes back.
#[tokio::test]
async fn a_silent_websocket_follower_is_closed_and_gives_its_place_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = HostProcess::start(
        dir.path(),
        &[
            "--http",
            "127.0.0.1:0",
            "--max-sockets",
            "1",
            "--ws-ping-secs",
            "0.1",
        ],
    );
    call(
        &host,
        "StreamProbe/quiet/push",
        json!({"stream": "s", "items": ["a"]}),
    )
    .await;
    let request = || ws_request(&host, "StreamProbe/quiet/streams/s?after=0");
    // Never read: its pings go unanswered.
    let silent = tokio_tungstenite::connect_async(request()).await.unwrap().0;
    let deadline = Instant::now() + WAIT;
    let mut next = loop {
        match tokio_tungstenite::connect_async(request()).await {
            Ok((ws, _)) => break ws,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "the silent follower kept its place: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(ws_next(&mut next).await.unwrap()["item"], "a");
    drop(silent);
}

/// A follow that begins while a batch that deleted its stream and created a new one
/// of the same name is committed but not yet durable reads the new stream (its read
/// waits in the output gate behind that batch), then gets the deletion from the hub:
/// the deletion came before what it read, so it follows the new stream instead of
/// ending with `unknown_stream`. The host's log writer thread is frozen meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_begun_after_a_delete_and_re_create_not_yet_durable_follows_the_new_stream() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    call(
        &host,
        "StreamProbe/reborn/push",
        json!({"stream": "s", "items": ["a", "b", "c"]}),
    )
    .await;
    let turns = || async {
        let metrics = common::metrics_at(host.http.unwrap(), &token(&host)).await;
        metrics
            .lines()
            .find(|l| l.starts_with("durable_turn_seconds_count{class=\"StreamProbe\"}"))
            .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = turns().await;
    let writer = common::FrozenThread::freeze(host.child.id(), "durable-log-wri");
    // Delete and re-create: its answer waits for the log.
    let reset = {
        let url = host.http_url("/v1/objects/StreamProbe/reborn/reset");
        let token = token(&host);
        tokio::spawn(async move {
            http()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"stream": "s", "items": ["x", "y"]}))
                .send()
                .await
                .map(|r| r.status())
        })
    };
    let deadline = Instant::now() + WAIT;
    while turns().await <= before {
        assert!(Instant::now() < deadline, "the reset's turn never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The follow begins now: its first read runs after the reset, and waits with it.
    let follower = {
        let url = host.http_url("/v1/objects/StreamProbe/reborn/streams/s?after=0");
        let token = token(&host);
        tokio::spawn(async move { http().get(url).bearer_auth(token).send().await.unwrap() })
    };
    // (It registers with the hub and queues its read within a few milliseconds; no
    // sign of it reaches the test while the log is frozen: a fixed wait.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    writer.thaw();
    assert_eq!(reset.await.unwrap().unwrap(), StatusCode::OK);
    let mut follower = Events {
        response: follower.await.unwrap(),
        buffer: String::new(),
    };
    drop(writer);
    assert_eq!(follower.next().await, Some(Sse::Item(1, "x".into())));
    assert_eq!(follower.next().await, Some(Sse::Item(2, "y".into())));
    call(
        &host,
        "StreamProbe/reborn/push",
        json!({"stream": "s", "items": ["z"]}),
    )
    .await;
    assert_eq!(follower.next().await, Some(Sse::Item(3, "z".into())));
}

#[tokio::test]
async fn a_typed_rust_client_follows_and_resumes_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let client = host.client().await;
    let chat = client.get::<ai::AiChat>("c4");
    let prompt = "and over QUIC";
    let reply = chat
        .ask_with(prompt.into(), 60, 120)
        .await
        .expect("ask_with");
    // Read eight items, then go away.
    let mut first = client
        .follow::<ai::AiChat, String>("c4", &reply.stream, 0)
        .await
        .expect("follow");
    let mut seen = String::new();
    for want in 1..=8 {
        let item = first.next().await.unwrap().expect("an item");
        assert_eq!(item.seq, want);
        seen.push_str(&item.item);
    }
    drop(first);
    // Resume after item 8, as an async stream, to the end.
    let rest = client
        .follow::<ai::AiChat, String>("c4", &reply.stream, 8)
        .await
        .expect("follow again");
    let items: Vec<_> = rest.into_stream().collect().await;
    let seqs: Vec<u64> = items.iter().map(|i| i.as_ref().unwrap().seq).collect();
    expect_contiguous(&seqs, 9, 60);
    for i in items {
        seen.push_str(&i.unwrap().item);
    }
    assert_eq!(seen, ai::text(prompt, 60));
    // An ended stream followed again: its end at once.
    let mut done = client
        .follow::<ai::AiChat, String>("c4", &reply.stream, 60)
        .await
        .unwrap();
    assert!(done.next().await.unwrap().is_none());
    // Typed errors.
    match client
        .follow::<ai::AiChat, String>("c4", "reply-99", 0)
        .await
    {
        Err(durable::CallError::UnknownStream(_)) => {}
        other => panic!("expected UnknownStream, got {other:?}"),
    }
    match client
        .follow::<ai::AiChat, String>("c4", "bad name", 0)
        .await
    {
        Err(durable::CallError::BadArguments(_)) => {}
        other => panic!("expected BadArguments, got {other:?}"),
    }
    // An item that does not decode as the asked type is a protocol error.
    let mut wrong = client
        .follow::<ai::AiChat, u32>("c4", &reply.stream, 0)
        .await
        .unwrap();
    assert!(matches!(
        wrong.next().await,
        Err(durable::CallError::Protocol(_))
    ));
}

#[tokio::test]
async fn a_shutdown_ends_followers_with_shutting_down_and_the_host_exits() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path());
    let stream = ask(&host, "c5", "a long one", 10_000, 30).await;
    let mut events = Events::open(&host, "c5", &stream, None, None).await;
    assert!(matches!(events.next().await, Some(Sse::Item(1, _))));
    let client = host.client().await;
    let mut quic = client
        .follow::<ai::AiChat, String>("c5", &stream, 0)
        .await
        .unwrap();
    assert_eq!(quic.next().await.unwrap().unwrap().seq, 1);
    let started = Instant::now();
    unsafe { libc::kill(host.child.id() as i32, libc::SIGTERM) };
    loop {
        match events.next().await.expect("a failure event before the end") {
            Sse::Item(..) => continue,
            Sse::Failure(e) => {
                assert_eq!(e["error"]["kind"], "shutting_down", "{e}");
                break;
            }
            Sse::End(_) => panic!("the reply cannot have ended"),
        }
    }
    assert_eq!(events.next().await, None);
    loop {
        match quic.next().await {
            Ok(Some(_)) => continue,
            Err(durable::CallError::ShuttingDown) => break,
            other => panic!("expected ShuttingDown, got {other:?}"),
        }
    }
    let status = tokio::task::spawn_blocking(move || {
        let mut host = host;
        host.child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "followers did not hold the shutdown"
    );
}
