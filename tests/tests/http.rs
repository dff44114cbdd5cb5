//! The HTTP/JSON gateway against a real host process (`serve --http`): calls by JSON
//! arguments reach the same objects as QUIC, `GET /v1/classes` lists them, every
//! error has its status and JSON body, `Idempotency-Key` deduplicates retries (across
//! a restart too), shutdown answers 503 while finishing calls in flight, and garbage
//! never hurts the host. An in-process host checks the application's own auth hook.

mod common;

use common::{host_cli, token, HostProcess};
use durable_examples::counter::Counter;
use durable_tests::Probe;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn http() -> Client {
    Client::builder().no_proxy().build().unwrap()
}

fn start(dir: &std::path::Path, extra: &[&str]) -> HostProcess {
    let mut flags = vec!["--http", "127.0.0.1:0"];
    flags.extend_from_slice(extra);
    HostProcess::start(dir, &flags)
}

/// POST a call with the host token; returns (status, JSON body).
async fn call(host: &HostProcess, path: &str, args: Value) -> (StatusCode, Value) {
    send(
        http()
            .post(host.http_url(&format!("/v1/objects/{path}")))
            .bearer_auth(token(host))
            .json(&args),
    )
    .await
}

async fn send(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("an HTTP answer");
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.bytes().await.unwrap();
    assert_eq!(
        content_type.as_deref(),
        Some("application/json"),
        "every answer is JSON: {status} {body:?}"
    );
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&body)));
    (status, value)
}

/// The `error` object of an error answer, checked for its three common fields.
fn error(body: &Value) -> &serde_json::Map<String, Value> {
    let e = body["error"].as_object().expect("an error object");
    assert!(e["kind"].is_string() && e["message"].is_string(), "{body}");
    assert!(
        matches!(
            e["retry"].as_str(),
            Some("not_applied" | "indeterminate" | "failed_in_method")
        ),
        "{body}"
    );
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_increments_a_counter_that_quic_callers_see() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let (status, value) = call(&host, "Counter/shared/increment", json!({"by": 5})).await;
    assert_eq!((status, value), (StatusCode::OK, json!(5)));
    let (status, value) = call(&host, "Counter/shared/get", json!({})).await;
    assert_eq!((status, value), (StatusCode::OK, json!(5)));

    // The same object over QUIC: the object id derives from the class and the name.
    let client = host.client().await;
    let counter = client.get::<Counter>("shared");
    assert_eq!(counter.get().await.unwrap(), 5);
    assert_eq!(counter.increment(2).await.unwrap(), 7);
    let (_, value) = call(&host, "Counter/shared/get", json!({})).await;
    assert_eq!(value, json!(7));

    // Other shapes: an empty body is no arguments; `null` for `None`; a list of
    // tuples as arrays.
    let empty = http()
        .post(host.http_url("/v1/objects/Counter/shared/get"))
        .bearer_auth(token(&host))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::OK);
    assert_eq!(empty.text().await.unwrap(), "7");
    let (status, value) = call(&host, "Probe/p/get", json!({"key": "nothing"})).await;
    assert_eq!((status, value), (StatusCode::OK, Value::Null));
    let (status, _) = call(&host, "Probe/p/put", json!({"key": "k", "value": 3})).await;
    assert_eq!(status, StatusCode::OK);
    let (_, value) = call(&host, "Probe/p/get", json!({"key": "k"})).await;
    assert_eq!(value, json!(3));
    let probe = client.get::<Probe>("p");
    assert_eq!(probe.get("k".into()).await.unwrap(), Some(3));
    let (status, value) = call(&host, "Probe/p/rings", json!({})).await;
    assert_eq!((status, value), (StatusCode::OK, json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classes_lists_methods_with_argument_names_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let (status, body) = send(
        http()
            .get(host.http_url("/v1/classes"))
            .bearer_auth(token(&host)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let classes = body["classes"].as_array().unwrap();
    let counter = classes
        .iter()
        .find(|c| c["name"] == "Counter")
        .expect("Counter is listed");
    let methods = counter["methods"].as_array().unwrap();
    let names: Vec<&str> = methods
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["increment", "get"], "declaration order");
    assert_eq!(
        methods[0],
        json!({
            "name": "increment",
            "args": [{"name": "by", "type": "i64"}],
            "returns": "i64",
            "error": "Error",
            "signature": "increment(i64)->Result<i64,Error>",
            "fingerprint": format!("{:016x}", common::method_fingerprint::<durable_examples::counter::Counter>("increment")),
        })
    );
    assert_eq!(methods[1]["args"], json!([]));
    assert_eq!(methods[1]["error"], Value::Null);
    assert!(classes.iter().any(|c| c["name"] == "Probe"));

    let (status, body) = send(http().get(host.http_url("/v1/classes"))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error(&body)["kind"], "unauthenticated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_its_status_and_a_json_body() {
    let dir = tempfile::tempdir().unwrap();
    // A small frame limit, so that the oversized body is small too.
    let host = start(dir.path(), &["--max-frame", "65536"]);
    let url = host.http_url("/v1/objects/Counter/e/increment");
    let authed = || http().post(&url).bearer_auth(token(&host));

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "malformed JSON",
            authed()
                .header("content-type", "application/json")
                .body("{\"by\": 5"),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            "not an object",
            authed().json(&json!([5])),
            StatusCode::BAD_REQUEST,
            "bad_json",
        ),
        (
            "wrong type",
            authed().json(&json!({"by": "five"})),
            StatusCode::BAD_REQUEST,
            "bad_arguments",
        ),
        (
            "missing argument",
            authed().json(&json!({})),
            StatusCode::BAD_REQUEST,
            "bad_arguments",
        ),
        (
            "unknown argument",
            authed().json(&json!({"by": 1, "bye": 2})),
            StatusCode::BAD_REQUEST,
            "bad_arguments",
        ),
        (
            "no token",
            http().post(&url).json(&json!({"by": 1})),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "wrong token",
            http()
                .post(&url)
                .bearer_auth("0".repeat(64))
                .json(&json!({"by": 1})),
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
        ),
        (
            "unknown class",
            http()
                .post(host.http_url("/v1/objects/Nope/e/increment"))
                .bearer_auth(token(&host))
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "unknown_class",
        ),
        (
            "unknown method",
            http()
                .post(host.http_url("/v1/objects/Counter/e/decrement"))
                .bearer_auth(token(&host))
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "unknown_method",
        ),
        (
            // `/ws` is the WebSocket path for GET; POST calls a method named `ws`.
            "unknown method named ws",
            http()
                .post(host.http_url("/v1/objects/Counter/e/ws"))
                .bearer_auth(token(&host))
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "unknown_method",
        ),
        (
            "unknown path",
            http()
                .post(host.http_url("/v2/objects/Counter/e/increment"))
                .bearer_auth(token(&host))
                .json(&json!({})),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            "oversized body",
            authed()
                .header("content-type", "application/json")
                .body(format!(
                    "{{\"by\": 1, \"pad\": \"{}\"}}",
                    "x".repeat(70_000)
                )),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "not JSON content",
            authed().body("by=5"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "GET on a call",
            http().get(&url).bearer_auth(token(&host)),
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "bad deadline",
            authed()
                .header("x-durable-deadline-ms", "soon")
                .json(&json!({"by": 1})),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (what, request, status, kind) in cases {
        let (got, body) = send(request).await;
        assert_eq!(got, status, "{what}: {body}");
        let e = error(&body);
        assert_eq!(e["kind"], kind, "{what}: {body}");
        assert_eq!(e["retry"], "not_applied", "{what}: {body}");
        assert!(!e["message"].as_str().unwrap().is_empty(), "{what}");
    }
    // The messages say what is wrong.
    let (_, body) = send(authed().json(&json!({"by": "five"}))).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`by`") && message.contains("expected i64"),
        "{message}"
    );
    let (_, body) = send(authed().json(&json!({"bye": 2}))).await;
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("unknown argument `bye`") && message.contains("takes by"),
        "{message}"
    );

    // None of that reached the object.
    let (_, value) = call(&host, "Counter/e/get", json!({})).await;
    assert_eq!(value, json!(0));

    // The method's own error: 500 with its serde body, rolled back.
    let (status, body) = call(&host, "Counter/e/increment", json!({"by": i64::MAX})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&host, "Counter/e/increment", json!({"by": 1})).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let e = error(&body);
    assert_eq!(e["kind"], "application");
    assert_eq!(e["retry"], "failed_in_method");
    assert_eq!(
        e["body"],
        json!({"kind": "Invalid", "message": "the counter would overflow"})
    );
    let (status, body) = call(
        &host,
        "Probe/e/put_then_fail",
        json!({"key": "k", "value": 7}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"]["body"], json!({"Refused": {"value": 7}}));
    let (_, value) = call(&host, "Probe/e/get", json!({"key": "k"})).await;
    assert_eq!(value, Value::Null, "the failed turn was rolled back");

    // A panicking method: the object is reset, the turn rolled back.
    let (status, body) = call(
        &host,
        "Probe/e/put_then_panic",
        json!({"key": "k", "value": 8}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(error(&body)["kind"], "object_reset");
    assert_eq!(body["error"]["retry"], "failed_in_method");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_object_answers_429_with_retry_after_and_504_past_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &["--max-queue", "1"]);
    let url = host.http_url("/v1/objects/Probe/busy/sleep");
    let sleeper = {
        let request = http()
            .post(&url)
            .bearer_auth(token(&host))
            .json(&json!({"millis": 1500}));
        tokio::spawn(async move { send(request).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One call may wait; the others are refused at once.
    let mut waiting = Vec::new();
    for _ in 0..4 {
        let request = http()
            .post(&url)
            .bearer_auth(token(&host))
            .header("x-durable-deadline-ms", "400")
            .json(&json!({"millis": 1}));
        waiting.push(tokio::spawn(async move {
            let response = request.send().await.unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let status = response.status();
            let body = json_of(response).await;
            (status, retry_after, body)
        }));
    }
    let mut statuses = Vec::new();
    for w in waiting {
        let (status, retry_after, body) = w.await.unwrap();
        let e = error(&body);
        match status {
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(e["kind"], "overloaded");
                assert_eq!(e["retry"], "not_applied");
                assert_eq!(retry_after.as_deref(), Some("1"));
            }
            StatusCode::GATEWAY_TIMEOUT => assert_eq!(e["kind"], "timeout", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&StatusCode::GATEWAY_TIMEOUT),
        "{statuses:?}"
    );
    let (status, body) = sleeper.await.unwrap();
    assert_eq!((status, body), (StatusCode::OK, Value::Null));
}

/// What reqwest's `Response::json` would do (without its `json` feature).
async fn json_of(response: reqwest::Response) -> Value {
    serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_applies_a_call_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let keyed = |host: &HostProcess, key: &str| {
        http()
            .post(host.http_url("/v1/objects/Counter/once/increment"))
            .bearer_auth(token(host))
            .header("idempotency-key", key)
            .json(&json!({"by": 10}))
    };
    assert_eq!(send(keyed(&host, "k-1")).await, (StatusCode::OK, json!(10)));
    // The same key again: the first answer, not applied again.
    assert_eq!(send(keyed(&host, "k-1")).await, (StatusCode::OK, json!(10)));
    // A new key is a new call.
    assert_eq!(send(keyed(&host, "k-2")).await, (StatusCode::OK, json!(20)));
    // Without a key every POST is a new call.
    assert_eq!(
        call(&host, "Counter/once/increment", json!({"by": 1})).await,
        (StatusCode::OK, json!(21))
    );
    assert_eq!(
        call(&host, "Counter/once/increment", json!({"by": 1})).await,
        (StatusCode::OK, json!(22))
    );

    // The key maps to the same request id after a restart (and a kill -9).
    let addr = host.addr;
    host.kill9();
    let host = HostProcess::start_on_with(dir.path(), addr, &["--http", "127.0.0.1:0"]);
    assert_eq!(send(keyed(&host, "k-2")).await, (StatusCode::OK, json!(20)));
    let (_, value) = call(&host, "Counter/once/get", json!({})).await;
    assert_eq!(value, json!(22));

    // Keys are bounded.
    let (status, body) = send(keyed(&host, &"k".repeat(300))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&body)["kind"], "bad_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_503_and_finishes_the_calls_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let slow = {
        let request = http()
            .post(host.http_url("/v1/objects/Probe/slow/sleep"))
            .bearer_auth(token(&host))
            .json(&json!({"millis": 1500}));
        tokio::spawn(async move { send(request).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    unsafe { libc::kill(host.child.id() as i32, libc::SIGTERM) };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = call(&host, "Counter/late/increment", json!({"by": 1})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error(&body)["kind"], "shutting_down");
    assert_eq!(body["error"]["retry"], "not_applied");
    assert_eq!(slow.await.unwrap(), (StatusCode::OK, Value::Null));
    assert!(host.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_gets_json_errors_and_the_host_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let url = host.http_url("/v1/objects/Counter/g/increment");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let started = Instant::now();
    for i in 0..300 {
        let len = (next() % 64) as usize;
        let mut body: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 3 == 0 {
            // Near-JSON: a valid prefix, then noise.
            body.splice(0..0, b"{\"by\": ".iter().copied());
        }
        let (status, value) = send(
            http()
                .post(&url)
                .bearer_auth(token(&host))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        if status != StatusCode::OK {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{value}");
            error(&value);
        }
    }
    // Odd paths: percent-encoded bytes that are not UTF-8, slashes in names.
    for path in [
        "/v1/objects/Counter/%FF%FE/get",
        "/v1/objects/%FF/x/get",
        "/v1/objects/Counter/a%2Fb/get",
        "/v1/objects/Counter//get",
        "/v1/objects/Counter/x/get/extra",
    ] {
        let (status, value) = send(
            http()
                .post(host.http_url(path))
                .bearer_auth(token(&host))
                .json(&json!({})),
        )
        .await;
        assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{path}: {status} {value}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(60));
    let (status, _) = call(&host, "Counter/g/increment", json!({"by": 1})).await;
    assert_eq!(status, StatusCode::OK);
}

mod in_process {
    //! An application's own auth check, and the JSON forms of many shapes of
    //! arguments and results, on an in-process host.
    use super::*;
    use durable::{durable_object, Caller, Context, Deny, Error, Host, ReadContext};
    use serde::{Deserialize, Serialize};
    use std::collections::{BTreeMap, HashMap};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Point {
        x: i32,
        y: i32,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub enum Shape {
        Dot,
        Circle { r: u32 },
        Line(Point, Point),
    }

    /// Remote methods of many shapes, to check the generated JSON forms.
    pub struct Shapes;

    #[durable_object(name = "shapes")]
    impl Shapes {
        fn activate(_ctx: &mut Context) -> Self {
            Shapes
        }

        /// An optional argument may be left out; a raw identifier is named without `r#`.
        pub async fn describe(
            &self,
            _ctx: &ReadContext,
            r#type: String,
            label: Option<String>,
            big: u64,
        ) -> String {
            format!("{type}/{label:?}/{big}")
        }

        /// Structs, enums and lists in and out.
        pub async fn move_all(
            &mut self,
            _ctx: &mut Context,
            shapes: Vec<Shape>,
            by: Point,
        ) -> Result<Vec<Shape>, Error> {
            let shift = |p: Point| Point {
                x: p.x + by.x,
                y: p.y + by.y,
            };
            Ok(shapes
                .into_iter()
                .map(|s| match s {
                    Shape::Line(a, b) => Shape::Line(shift(a), shift(b)),
                    other => other,
                })
                .collect())
        }

        /// Integer map keys become JSON strings.
        pub async fn counts(&self, _ctx: &ReadContext) -> HashMap<u32, u32> {
            HashMap::from([(7, 1)])
        }

        /// Tuple keys have no JSON form.
        pub async fn grid(&mut self, _ctx: &mut Context) -> BTreeMap<(u8, u8), u8> {
            BTreeMap::from([((1, 2), 3)])
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn json_forms_of_many_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let running = Host::builder(dir.path())
            .register::<Shapes>()
            .http("127.0.0.1:0".parse().unwrap())
            .start()
            .await
            .unwrap();
        let base = format!("http://{}", running.http_addr().unwrap());
        let token = std::fs::read_to_string(dir.path().join("tls/token")).unwrap();
        let call = |method: &str, args: Value| {
            http()
                .post(format!("{base}/v1/objects/shapes/s/{method}"))
                .bearer_auth(&token)
                .json(&args)
        };
        assert_eq!(
            send(call("describe", json!({"type": "t", "big": u64::MAX}))).await,
            (StatusCode::OK, json!(format!("t/None/{}", u64::MAX)))
        );
        assert_eq!(
            send(call(
                "describe",
                json!({"type": "t", "label": "l", "big": 1})
            ))
            .await,
            (StatusCode::OK, json!("t/Some(\"l\")/1"))
        );
        let (status, body) = send(call("describe", json!({"type": "t", "big": -1}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("`big`"));

        let shapes = json!([
            "Dot",
            {"Circle": {"r": 2}},
            {"Line": [{"x": 0, "y": 0}, {"x": 1, "y": 1}]}
        ]);
        assert_eq!(
            send(call(
                "move_all",
                json!({"shapes": shapes, "by": {"x": 10, "y": 20}})
            ))
            .await,
            (
                StatusCode::OK,
                json!([
                    "Dot",
                    {"Circle": {"r": 2}},
                    {"Line": [{"x": 10, "y": 20}, {"x": 11, "y": 21}]}
                ])
            )
        );
        let (status, body) = send(call(
            "move_all",
            json!({"shapes": ["Square"], "by": {"x": 1, "y": 1}}),
        ))
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`shapes`"));

        assert_eq!(
            send(call("counts", json!({}))).await,
            (StatusCode::OK, json!({"7": 1}))
        );
        // Applied, but not expressible in JSON: say so, and that only a keyed retry is
        // safe.
        let (status, body) = send(call("grid", json!({}))).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(error(&body)["kind"], "result_not_json");
        assert_eq!(body["error"]["retry"], "indeterminate");

        // The list names the renamed class and the raw identifier without `r#`.
        let (_, body) = send(http().get(format!("{base}/v1/classes")).bearer_auth(&token)).await;
        let class = &body["classes"][0];
        assert_eq!(class["name"], "shapes");
        assert_eq!(
            class["methods"][0]["args"],
            json!([
                {"name": "type", "type": "String"},
                {"name": "label", "type": "Option<String>"},
                {"name": "big", "type": "u64"},
            ])
        );
        assert_eq!(class["methods"][1]["returns"], "Vec<Shape>");
        assert_eq!(class["methods"][3]["returns"], "BTreeMap<(u8, u8), u8>");
        running.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_auth_hook_opens_one_class_without_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let running = Host::builder(dir.path())
            .register::<Counter>()
            .register::<Probe>()
            .http("127.0.0.1:0".parse().unwrap())
            .http_auth(|headers, class| {
                let guest = headers
                    .get("x-guest")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                match (class, guest) {
                    ("Counter", Some(name)) => Ok(Caller(format!("guest:{name}"))),
                    ("Counter", None) => Err(Deny::unauthenticated("send X-Guest")),
                    _ => Err(Deny::forbidden("only Counter is public")),
                }
            })
            .start()
            .await
            .unwrap();
        let base = format!("http://{}", running.http_addr().unwrap());
        let token = std::fs::read_to_string(dir.path().join("tls/token")).unwrap();
        let post = |path: &str| http().post(format!("{base}/v1/objects/{path}"));

        let (status, value) = send(
            post("Counter/public/increment")
                .header("x-guest", "ann")
                .json(&json!({"by": 2})),
        )
        .await;
        assert_eq!((status, value), (StatusCode::OK, json!(2)));
        let (status, body) = send(post("Counter/public/increment").json(&json!({"by": 2}))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert_eq!(body["error"]["message"], "send X-Guest");
        let (status, body) = send(
            post("Probe/p/get")
                .header("x-guest", "ann")
                .json(&json!({"key": "k"})),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(error(&body)["kind"], "forbidden");
        // The host token still opens everything.
        let (status, _) = send(
            post("Probe/p/get")
                .bearer_auth(&token)
                .json(&json!({"key": "k"})),
        )
        .await;
        assert_eq!(status, StatusCode::OK);

        // The list shows a guest only what the check allows.
        let (status, body) = send(
            http()
                .get(format!("{base}/v1/classes"))
                .header("x-guest", "ann"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let names: Vec<&str> = body["classes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Counter"]);

        // Keys are scoped by caller: the same key from two guests is two calls.
        let keyed = |guest: &str| {
            post("Counter/public/increment")
                .header("x-guest", guest)
                .header("idempotency-key", "same")
                .json(&json!({"by": 1}))
        };
        assert_eq!(send(keyed("ann")).await, (StatusCode::OK, json!(3)));
        assert_eq!(send(keyed("bob")).await, (StatusCode::OK, json!(4)));
        assert_eq!(send(keyed("ann")).await, (StatusCode::OK, json!(3)));
        running.shutdown().await;
    }
}

/// After a class's first new object ran its migrations (schema and constant rows
/// only), its next new objects get files with them applied ahead: they serve, their
/// first change shows in the change feed after their snapshot as any new object's
/// does, and they survive `kill -9`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_objects_on_files_migrated_ahead_serve_show_their_first_change_and_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    let client = host.client().await;
    client.get::<Counter>("teacher").increment(1).await.unwrap();
    // The class's own sets are named `c<n>.db` under `spare/`.
    let spare = dir.path().join("spare");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_dir(&spare).unwrap().flatten().any(|e| {
        let name = e.file_name().to_string_lossy().into_owned();
        name.starts_with('c') && name.ends_with(".db")
    }) {
        assert!(
            Instant::now() < deadline,
            "no set of the class's own was made"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names = ["a", "b"];
    for name in names {
        assert_eq!(client.get::<Counter>(name).increment(5).await.unwrap(), 5);
    }
    let metrics = common::metrics_at(host.http.unwrap(), &token(&host)).await;
    let made = |how: &str| {
        sample(
            &metrics,
            "durable_new_object_files_total",
            &[&format!("made=\"{how}\"")],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(made("class"), 2.0, "{metrics}");
    assert_eq!(
        made("class") + made("spare") + made("created"),
        3.0,
        "{metrics}"
    );
    host.kill9();
    let host = start(dir.path(), &[]);
    let client = host.client().await;
    for name in names {
        assert_eq!(client.get::<Counter>(name).increment(1).await.unwrap(), 6);
    }
    drop(client);
    host.terminate();
    let (ok, out, err) = host_cli(&["changes", "--data-dir", dir.path().to_str().unwrap()]);
    assert!(ok, "{err}");
    for name in names {
        let id = durable::ObjectId::from_name("Counter", name).to_string();
        let seen: Vec<(String, Option<i64>)> = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["object"] == id.as_str())
            .filter(|v| v["op"] == "snapshot" || v["table"] == "counter")
            .map(|v| {
                (
                    v["op"].as_str().unwrap().to_owned(),
                    v["new"]["value"].as_i64(),
                )
            })
            .collect();
        let snapshot = ("snapshot".to_owned(), None);
        let update = |n| ("update".to_owned(), Some(n));
        assert_eq!(seen, [snapshot, update(5), update(6)], "{name}: {out}");
    }
}

/// The value of the sample `name{labels}` in a Prometheus text exposition (labels
/// given as they print, in any order).
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            let (series, _) = l.rsplit_once(' ').unwrap_or((l, ""));
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name && labels.iter().all(|want| rest.contains(want))
        })
        .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_calls_by_class_method_and_outcome_for_the_operator_only() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &[]);
    for _ in 0..3 {
        let (status, _) = call(&host, "Counter/m/increment", json!({"by": 1})).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = call(&host, "Counter/m/increment", json!({"by": "x"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let client = host.client().await;
    client
        .get::<durable_examples::counter::Counter>("q")
        .increment(i64::MAX)
        .await
        .unwrap();
    let overflow = client
        .get::<durable_examples::counter::Counter>("q")
        .increment(1)
        .await;
    assert!(overflow.is_err());
    // Without the token: refused.
    let response = http().get(host.http_url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = http()
        .get(host.http_url("/metrics"))
        .bearer_auth(token(&host))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    let calls = |outcome: &str| {
        sample(
            &text,
            "durable_calls_total",
            &[
                r#"class="Counter""#,
                r#"method="increment""#,
                &format!(r#"outcome="{outcome}""#),
            ],
        )
    };
    // HTTP and QUIC calls go through the same entry: 3 + 1 ok, 1 app error. (The bad
    // JSON never became a call.)
    assert_eq!(calls("ok"), Some(4.0), "{text}");
    assert_eq!(calls("app_error"), Some(1.0), "{text}");
    assert!(
        sample(&text, "durable_log_syncs_total", &[]).unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "durable_objects_active", &[]),
        Some(2.0),
        "{text}"
    );
    assert!(text.contains("durable_call_seconds_bucket"), "{text}");
    assert!(text.contains("durable_turn_seconds_count"), "{text}");
    assert!(text.contains("durable_batch_calls"), "{text}");
    // Where the calls' time went: each of the five calls that reached a shard waited in
    // a queue; every batch ran; the four that wrote passed the output gate.
    let counter = [r#"class="Counter""#];
    let stage = |name: &str| sample(&text, name, &counter);
    assert_eq!(
        stage("durable_call_queue_seconds_count"),
        Some(5.0),
        "{text}"
    );
    assert!(
        stage("durable_batch_seconds_count").unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    assert!(
        stage("durable_gate_seconds_count").unwrap_or(0.0) >= 4.0,
        "{text}"
    );
    let (gate, call) = (
        stage("durable_gate_seconds_sum").unwrap(),
        stage("durable_call_seconds_sum").unwrap(),
    );
    assert!(gate > 0.0 && gate < call, "{text}");
    // Two objects' connections, at least their schemas and the page 1 of each.
    assert!(
        sample(&text, "durable_sqlite_memory_bytes", &[]).unwrap_or(0.0) > 4096.0,
        "{text}"
    );
}

/// A call the gateway stopped waiting for (its deadline passed, or its client went
/// away) still runs, and still counts among the host's calls in flight until it ends:
/// `--max-inflight-calls` holds over HTTP as over QUIC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_the_gateway_stopped_waiting_for_still_count_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let host = start(dir.path(), &["--max-inflight-calls", "2"]);
    for i in 0..2 {
        let r = http()
            .post(host.http_url(&format!("/v1/objects/Probe/slow{i}/sleep")))
            .bearer_auth(token(&host))
            .header("x-durable-deadline-ms", "100")
            .json(&json!({"millis": 3000}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    }
    // Both sleeps still run: a third call is refused, not applied.
    let (status, body) = call(&host, "Counter/third/increment", json!({"by": 1})).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["retry"], "not_applied", "{body}");
}
