//! What the gateway answers: a JSON value (200), or a JSON error
//! `{"error": {"kind", "message", "retry", ...}}` with a fitting status. Every
//! [`WireError`] the entry can return has its status here.

use axum::response::{IntoResponse, Response};
use durable_client::wire::WireError;
use durable_client::Retry;
use http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode};
use serde_json::{Map, Value};

/// `application/json`.
const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// A successful call's value: 200 with the value as the body.
pub(crate) fn value(value: &Value) -> Response {
    json(StatusCode::OK, value)
}

/// A JSON body with `status`.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response {
    // Serializing a `Value` cannot fail.
    let body = serde_json::to_vec(value).unwrap_or_default();
    (status, [(CONTENT_TYPE, JSON)], body).into_response()
}

/// A failed request, rendered as `{"error": {...}}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    retry: Retry,
    /// More fields of the error object (`class`, `method`, `body`, ...).
    extra: Map<String, Value>,
    /// Seconds for a `Retry-After` header.
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error that applied nothing.
    pub(crate) fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
            retry: Retry::NotApplied,
            extra: Map::new(),
            retry_after: None,
        }
    }

    /// 400 with `kind`.
    pub(crate) fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// With another field in the error object.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// With another retry class than "not applied".
    pub(crate) fn retry(mut self, retry: Retry) -> Self {
        self.retry = retry;
        self
    }

    fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The method's own error, `body` its serde form as JSON: 500, failed in method.
    pub(crate) fn application(body: Value) -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application",
            "the method returned its error",
        )
        .retry(Retry::FailedInMethod)
        .with("body", body)
    }

    /// A framework error from the entry.
    pub(crate) fn wire(e: WireError) -> Self {
        let retry = e.retry();
        let error = match e {
            WireError::Unauthenticated => ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing or wrong token",
            ),
            WireError::UnknownClass { class } => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_class",
                format!("no class {class:?} on this host"),
            )
            .with("class", class),
            WireError::UnknownMethod { class, method } => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_method",
                format!("class {class} has no remote method {method:?}"),
            )
            .with("class", class)
            .with("method", method),
            WireError::SchemaMismatch { class, method } => ApiError::new(
                StatusCode::CONFLICT,
                "schema_mismatch",
                format!("{class}.{method} has another signature on this host"),
            )
            .with("class", class)
            .with("method", method),
            WireError::Overloaded => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the object's queue is full; the call was not applied",
            )
            .retry_after(1),
            WireError::OverloadedRetry { retry_after_ms } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                "the object or the host is overloaded, or this caller exceeded its rate; the call was not applied",
            )
            .with("retry_after_ms", retry_after_ms)
            // Retry-After counts whole seconds: round up, at least one.
            .retry_after(retry_after_ms.div_ceil(1000).clamp(1, u64::from(u32::MAX)) as u32),
            WireError::Timeout => ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                "the deadline passed before the call ran; it was not applied",
            ),
            WireError::ObjectReset { message } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "object_reset", message)
            }
            WireError::TooLarge { size, limit } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("{size} bytes exceed the limit of {limit}"),
            )
            .with("limit", limit),
            WireError::Malformed { message } => ApiError::bad_request("malformed", message),
            WireError::UnsupportedVersion { got } => {
                ApiError::bad_request("malformed", format!("unsupported protocol version {got}"))
            }
            WireError::ShuttingDown => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the host is shutting down; the call was not applied",
            )
            .retry_after(1),
            WireError::BadArguments { message } => ApiError::bad_request("bad_arguments", message),
            WireError::Internal { message } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
            }
            WireError::Indeterminate { message } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "indeterminate", message)
            }
            WireError::Moved { owner } => ApiError::new(
                StatusCode::MISDIRECTED_REQUEST,
                "moved",
                format!("another host serves this object: {owner}"),
            )
            .with("owner", owner),
            WireError::StorageFull { message } => {
                ApiError::new(StatusCode::INSUFFICIENT_STORAGE, "storage_full", message)
            }
            WireError::RequestReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "request_reused",
                "the Idempotency-Key was used before by a different call to this object; this call was not applied",
            ),
            WireError::ObjectTooLarge { size, limit } => ApiError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "object_too_large",
                format!("the object would hold {size} bytes, past its limit of {limit}; the call was not applied"),
            )
            .with("size", size)
            .with("limit", limit),
            WireError::CallCycle { chain } => ApiError::new(
                StatusCode::CONFLICT,
                "call_cycle",
                format!("call cycle: {}; nothing was applied", chain.join(" -> ")),
            ),
        };
        error.retry(retry)
    }

    /// The status this error is answered with.
    #[cfg(test)]
    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }
}

/// The wire name of a retry class: `not_applied`, `indeterminate`,
/// `failed_in_method`.
pub(crate) fn retry_name(retry: Retry) -> &'static str {
    match retry {
        Retry::NotApplied => "not_applied",
        Retry::Indeterminate => "indeterminate",
        Retry::FailedInMethod => "failed_in_method",
    }
}

impl ApiError {
    /// The JSON body: `{"error": {"kind", "message", "retry", ...}}`.
    pub(crate) fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("kind".into(), self.kind.into());
        error.insert("message".into(), self.message.clone().into());
        error.insert("retry".into(), retry_name(self.retry).into());
        error.extend(self.extra.clone());
        let mut body = Map::new();
        body.insert("error".into(), Value::Object(error));
        Value::Object(body)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = json(self.status, &self.body());
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_wire_error_has_a_status() {
        let cases = [
            (WireError::Unauthenticated, 401),
            (WireError::UnknownClass { class: "C".into() }, 404),
            (
                WireError::UnknownMethod {
                    class: "C".into(),
                    method: "m".into(),
                },
                404,
            ),
            (WireError::Overloaded, 429),
            (WireError::Timeout, 504),
            (WireError::TooLarge { size: 2, limit: 1 }, 413),
            (WireError::ShuttingDown, 503),
            (
                WireError::BadArguments {
                    message: "x".into(),
                },
                400,
            ),
            (
                WireError::StorageFull {
                    message: "x".into(),
                },
                507,
            ),
            (WireError::RequestReused, 422),
            (
                WireError::CallCycle {
                    chain: vec!["A(a)".into(), "B(b)".into(), "A(a)".into()],
                },
                409,
            ),
            (
                WireError::Moved {
                    owner: "h:1".into(),
                },
                421,
            ),
            (
                WireError::Indeterminate {
                    message: "x".into(),
                },
                500,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(ApiError::wire(e.clone()).status().as_u16(), status, "{e:?}");
        }
        let r = ApiError::wire(WireError::Overloaded).into_response();
        assert_eq!(r.headers()[RETRY_AFTER], "1");
    }
}
