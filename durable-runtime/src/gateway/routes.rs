//! The gateway's routes: `POST /v1/objects/{class}/{name}/{method}` (a call) and
//! `GET /v1/classes` (what can be called), plus JSON answers for every other path
//! and method.

use super::reply::{self, ApiError};
use super::state::State;
use crate::calls::Caller;
use crate::class::{ClassEntry, JsonArgs, JsonMethod};
use axum::body::{Body, HttpBody};
use axum::extract::rejection::PathRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State as Extract};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use durable_client::wire::{CallRequest, Response as Answer};
use durable_client::{ObjectId, Retry};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

/// The header naming a call's deadline in milliseconds.
pub(crate) const DEADLINE_HEADER: &str = "x-durable-deadline-ms";

/// The header whose value names one logical call across retries.
pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// The deadline of a call that names none: the QUIC client's default (30 s).
const DEFAULT_DEADLINE_MS: u64 = 30_000;

/// The longest deadline a call may ask for (a day, as over QUIC).
const MAX_DEADLINE_MS: u64 = 24 * 3600 * 1000;

/// The longest `Idempotency-Key` accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The router, with `state`.
pub(crate) fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/v1/classes", get(classes))
        .route("/metrics", get(metrics))
        .route("/v1/objects/{class}/{name}/{method}", post(call))
        // A remote method named `ws` is still reachable by POST.
        .route(
            "/v1/objects/{class}/{name}/ws",
            get(websocket).post(call_ws),
        )
        .route(
            "/v1/objects/{class}/{name}/streams/{stream}",
            get(super::streams::follow),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// `GET /metrics`: the Prometheus text exposition, for the host token's holder.
async fn metrics(Extract(state): Extract<Arc<State>>, headers: HeaderMap) -> Response {
    if !state.is_operator(&headers) {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "metrics are for the operator: Authorization: Bearer TOKEN (DATA_DIR/tls/token)",
        )
        .into_response();
    }
    crate::telemetry::sockets_open(state.sockets.len());
    match crate::telemetry::render() {
        Some(text) => (
            [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            text,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder was installed in this process before the host started",
        )
        .into_response(),
    }
}

/// Any other path: one of the application's pages, or a JSON 404.
async fn not_found(
    Extract(state): Extract<Arc<State>>,
    method: http::Method,
    uri: http::Uri,
) -> Response {
    if let Some(page) = state.pages.serve(&method, uri.path()) {
        return page;
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such path: calls are POST /v1/objects/{class}/{name}/{method}, the list is GET /v1/classes",
    )
    .into_response()
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "calls are POST /v1/objects/{class}/{name}/{method}, the list is GET /v1/classes",
    )
}

/// `GET /v1/classes`: every class the caller may call, with its remote methods, their
/// arguments (name and type), and their value and error types.
async fn classes(Extract(state): Extract<Arc<State>>, headers: HeaderMap) -> Response {
    let mut entries: Vec<&Arc<ClassEntry>> = state.calls.classes.values().collect();
    entries.sort_by_key(|c| c.name);
    let mut listed = Vec::new();
    let mut refused = None;
    for class in entries {
        if let Err(e) = state.authorize(&headers, class.name) {
            refused.get_or_insert(e);
            continue;
        }
        let mut methods: Vec<_> = class.methods.values().collect();
        methods.sort_by_key(|(index, _)| *index);
        let methods: Vec<Value> = methods
            .into_iter()
            .filter_map(|(_, info)| class.json.get(info.name).map(|m| describe(m, info)))
            .collect();
        listed.push(json!({ "name": class.name, "methods": methods }));
    }
    match refused {
        Some(e) if listed.is_empty() => e.into_response(),
        _ => reply::value(&json!({ "classes": listed })),
    }
}

fn describe(m: &JsonMethod, info: &durable_client::MethodInfo) -> Value {
    let args: Vec<Value> = m
        .args
        .iter()
        .map(|a| json!({ "name": a.name, "type": a.ty }))
        .collect();
    json!({
        "name": m.name,
        "args": args,
        "returns": m.returns,
        "error": m.error,
        "signature": info.signature,
        "fingerprint": format!("{:016x}", info.fingerprint),
    })
}

/// `GET /v1/objects/{class}/{name}/ws`: upgrade to a WebSocket held for the object.
async fn websocket(
    Extract(state): Extract<Arc<State>>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let open = || -> Result<Response, ApiError> {
        let Path((class, name)) =
            path.map_err(|e| ApiError::bad_request("bad_request", e.body_text()))?;
        let caller = state.authorize(&headers, &class)?;
        let entry = state.class(&class)?;
        let query = query.unwrap_or_default();
        if query.len() > crate::sockets::MAX_QUERY_BYTES {
            return Err(ApiError::bad_request(
                "bad_request",
                format!(
                    "a socket's query string is at most {} bytes; this one has {}",
                    crate::sockets::MAX_QUERY_BYTES,
                    query.len()
                ),
            ));
        }
        let upgrade = upgrade.map_err(|e| {
            ApiError::new(
                StatusCode::UPGRADE_REQUIRED,
                "upgrade_required",
                format!("this path takes a WebSocket upgrade: {}", e.body_text()),
            )
        })?;
        super::ws::upgrade(state.clone(), entry.clone(), name, caller, query, upgrade)
    };
    open().unwrap_or_else(IntoResponse::into_response)
}

/// `POST /v1/objects/{class}/{name}/{method}`.
async fn call(
    Extract(state): Extract<Arc<State>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match try_call(&state, path, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// `POST /v1/objects/{class}/{name}/ws`: a call of a remote method named `ws` (the
/// path's `GET` is the object's WebSocket).
async fn call_ws(
    Extract(state): Extract<Arc<State>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let path = path.map(|Path((class, name))| Path((class, name, "ws".to_owned())));
    match try_call(&state, path, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn try_call(
    state: &State,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Path((class, name, method)) =
        path.map_err(|e| ApiError::bad_request("bad_request", e.body_text()))?;
    let caller = state.authorize(headers, &class)?;
    let entry = state.class(&class)?;
    let unknown_method = |why: &str| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_method",
            format!("class {} has no remote method {method:?}{why}", entry.name),
        )
        .with("class", entry.name)
        .with("method", method.as_str())
    };
    let (_, info) = entry
        .methods
        .get(method.as_str())
        .ok_or_else(|| unknown_method(""))?;
    let form = entry
        .json
        .get(method.as_str())
        .ok_or_else(|| unknown_method(" callable over HTTP"))?;
    check_content_type(headers)?;
    let timeout_ms = deadline_ms(headers)?;
    let request_id = request_id(headers, &caller, entry.name, &name, info.name)?;
    let args = read_args(state.max_body, body).await?;
    let args = encode_args(entry.name, form, &args)?;
    let request = CallRequest {
        request_id,
        class: entry.name.to_owned(),
        object: ObjectId::from_name(entry.name, &name),
        name: Some(name),
        method: info.name.to_owned(),
        fingerprint: info.fingerprint,
        timeout_ms,
        args,
    };
    // The host answers `Timeout` (not applied) for a call whose turn has not started
    // by the deadline, but only once the object gets to it: like the QUIC client, the
    // gateway stops waiting at the deadline, when the turn may have started.
    // The call runs in a task of its own: if the gateway stops waiting (the deadline,
    // or the client went away and hyper dropped this future), the call still holds its
    // place among the host's calls in flight until it ends.
    let calls = state.calls.clone();
    let running = tokio::spawn(async move { calls.call(request, &caller).await });
    let answer = tokio::time::timeout(Duration::from_millis(timeout_ms), running)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "no answer within the deadline: the call may have been applied (retry with the same Idempotency-Key)",
            )
            .retry(Retry::Indeterminate)
        })?
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the call's task ended without an answer: it may have been applied (retry with the same Idempotency-Key)",
            )
            .retry(Retry::Indeterminate)
        })?;
    match answer {
        Answer::Return(bytes) => {
            let value = convert(|| (form.decode_return)(&bytes)).map_err(|message| {
                // The turn committed: only a retry under the same key is safe.
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "result_not_json",
                    message,
                )
                .retry(Retry::Indeterminate)
            })?;
            Ok(reply::value(&value))
        }
        Answer::AppError(bytes) => {
            let body = convert(|| (form.decode_error)(&bytes)).map_err(|message| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "application", message)
                    .retry(Retry::FailedInMethod)
            })?;
            Err(ApiError::application(body))
        }
        Answer::Error(e) => Err(ApiError::wire(e)),
        Answer::Welcome | Answer::Lanes(_) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "unexpected answer",
        )),
    }
}

/// Calls carry `Content-Type: application/json`. Requiring it also keeps other sites'
/// pages from calling through a visitor's browser without a CORS preflight (which
/// the gateway does not answer).
fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let essence = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    match essence {
        Some(t) if t.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the arguments as Content-Type: application/json (curl --json '{\"by\": 5}')",
        )),
    }
}

/// `X-Durable-Deadline-Ms`, or the default.
fn deadline_ms(headers: &HeaderMap) -> Result<u64, ApiError> {
    let Some(value) = headers.get(DEADLINE_HEADER) else {
        return Ok(DEFAULT_DEADLINE_MS);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (1..=MAX_DEADLINE_MS).contains(ms))
        .ok_or_else(|| {
            ApiError::bad_request(
                "bad_request",
                format!("X-Durable-Deadline-Ms must be milliseconds from 1 to {MAX_DEADLINE_MS}"),
            )
        })
}

/// The call's request id: derived from the `Idempotency-Key` (with the caller and
/// the call's object and method, so that keys of different callers never meet), the
/// same on every host and every restart; a fresh one without a key.
fn request_id(
    headers: &HeaderMap,
    caller: &Caller,
    class: &str,
    name: &str,
    method: &str,
) -> Result<[u8; 16], ApiError> {
    let Some(key) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(crate::calls::fresh_request_id());
    };
    let key = key.as_bytes();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::bad_request(
            "bad_request",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"),
        ));
    }
    Ok(idempotent_id(caller, class, name, method, key))
}

/// SHA-256 over the fields, each prefixed with its length; the first 16 bytes.
pub(crate) fn idempotent_id(
    caller: &Caller,
    class: &str,
    name: &str,
    method: &str,
    key: &[u8],
) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"durable-idempotency-key\0");
    for field in [
        caller.0.as_bytes(),
        class.as_bytes(),
        name.as_bytes(),
        method.as_bytes(),
        key,
    ] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// Read the body (at most `limit` bytes, within [`BODY_TIMEOUT`]) as a JSON object;
/// an empty body is no arguments.
async fn read_args(limit: usize, body: Body) -> Result<JsonArgs, ApiError> {
    let too_large = |size: Option<u64>| {
        let message = match size {
            Some(size) => format!("a body of {size} bytes exceeds the limit of {limit}"),
            None => format!("the body exceeds the limit of {limit} bytes"),
        };
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message)
            .with("limit", limit as u64)
    };
    let declared = body.size_hint().lower();
    if declared > limit as u64 {
        return Err(too_large(Some(declared)));
    }
    let limited = http_body_util::Limited::new(body, limit);
    let collected = tokio::time::timeout(BODY_TIMEOUT, http_body_util::BodyExt::collect(limited))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the body did not arrive in time",
            )
        })?;
    let bytes = match collected {
        Ok(c) => c.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(None)),
        Err(e) => {
            return Err(ApiError::bad_request(
                "bad_request",
                format!("reading the body: {e}"),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(JsonArgs::new());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(args)) => Ok(args),
        Ok(other) => Err(ApiError::bad_request(
            "bad_json",
            format!(
                "the body must be a JSON object of the arguments by name, like {{\"by\": 5}}; got {}",
                json_kind(&other)
            ),
        )),
        Err(e) => Err(ApiError::bad_request(
            "bad_json",
            format!("the body is not JSON: {e}"),
        )),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// JSON arguments → the postcard argument tuple; unknown names are refused (a
/// misspelt optional argument would otherwise pass silently).
fn encode_args(class: &str, form: &JsonMethod, args: &JsonArgs) -> Result<Vec<u8>, ApiError> {
    let takes = || {
        let names: Vec<&str> = form.args.iter().map(|a| a.name).collect();
        if names.is_empty() {
            format!("{class}.{} takes no arguments", form.name)
        } else {
            format!("{class}.{} takes {}", form.name, names.join(", "))
        }
    };
    if let Some(unknown) = args
        .keys()
        .find(|k| !form.args.iter().any(|a| a.name == *k))
    {
        return Err(ApiError::bad_request(
            "bad_arguments",
            format!("unknown argument `{unknown}`: {}", takes()),
        ));
    }
    convert(|| (form.encode_args)(args)).map_err(|message| {
        ApiError::bad_request("bad_arguments", format!("{message} ({})", takes()))
    })
}

/// Run a generated converter; an application type whose serde code panics is an
/// error, not a dead connection.
fn convert<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err("a serde implementation panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn idempotency_keys_are_stable_and_scoped() {
        let caller = Caller("host-token".into());
        let id = idempotent_id(&caller, "Counter", "a", "increment", b"k1");
        // Pinned: a retry after a host restart (or an upgrade) must map to the same id.
        let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "46b7d6cfda93089dcb33be4951d15320");
        assert_ne!(
            id,
            idempotent_id(&caller, "Counter", "a", "increment", b"k2")
        );
        assert_ne!(id, idempotent_id(&caller, "Counter", "a", "get", b"k1"));
        assert_ne!(
            id,
            idempotent_id(&Caller("other".into()), "Counter", "a", "increment", b"k1")
        );
        // Length prefixes: moving bytes between fields changes the id.
        assert_ne!(
            idempotent_id(&caller, "C", "ab", "m", b"k"),
            idempotent_id(&caller, "C", "a", "bm", b"k")
        );
    }

    #[test]
    fn deadlines() {
        let mut h = HeaderMap::new();
        assert_eq!(deadline_ms(&h).unwrap(), DEFAULT_DEADLINE_MS);
        h.insert(DEADLINE_HEADER, HeaderValue::from_static("250"));
        assert_eq!(deadline_ms(&h).unwrap(), 250);
        for bad in ["0", "-1", "abc", "86400001"] {
            h.insert(DEADLINE_HEADER, HeaderValue::from_static(bad));
            assert!(deadline_ms(&h).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_types() {
        let mut h = HeaderMap::new();
        assert!(check_content_type(&h).is_err());
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert!(check_content_type(&h).is_ok());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("Application/JSON; charset=utf-8"),
        );
        assert!(check_content_type(&h).is_ok());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        assert!(check_content_type(&h).is_err());
    }
}
