//! The gateway's shared state: the host's call entry, the socket registry, the
//! application's pages, and who
//! may call (the host token, or the application's check). Routes and WebSockets both
//! read it.

use super::reply::ApiError;
use super::{Deny, GatewayConfig, HttpAuth};
use crate::calls::{Caller, Calls};
use http::header::AUTHORIZATION;
use http::{HeaderMap, StatusCode};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Who token holders are (as over QUIC).
const TOKEN_CALLER: &str = "host-token";

/// The gateway's shared state.
pub(crate) struct State {
    pub(crate) calls: Arc<Calls>,
    token: String,
    auth: Option<HttpAuth>,
    pub(crate) max_body: usize,
    token_caller: Caller,
    /// The WebSockets the gateway holds.
    pub(crate) sockets: Arc<crate::sockets::Registry>,
    /// The application's static pages.
    pub(crate) pages: super::Pages,
    /// How often to ping each WebSocket (zero: never).
    pub(crate) ping_interval: std::time::Duration,
    /// The followers of the host's streams.
    pub(crate) streams: Arc<crate::streams::Hub>,
}

impl State {
    pub(crate) fn new(config: GatewayConfig) -> Self {
        State {
            calls: config.calls,
            token: config.token,
            auth: config.auth,
            max_body: config.max_body,
            token_caller: Caller(TOKEN_CALLER.into()),
            sockets: config.sockets,
            pages: config.pages,
            ping_interval: config.ping_interval,
            streams: config.streams,
        }
    }

    /// The registered class `class`, or the JSON 404 every route answers.
    pub(crate) fn class(&self, class: &str) -> Result<&Arc<crate::class::ClassEntry>, ApiError> {
        self.calls.classes.get(class).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_class",
                format!("no class {class:?} on this host (GET /v1/classes lists them)"),
            )
            .with("class", class)
        })
    }

    /// Whether the request carries the host token (the operator: `/metrics`).
    pub(crate) fn is_operator(&self, headers: &HeaderMap) -> bool {
        bearer(headers).is_some_and(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes()))
    }

    /// Who is calling `class`: the host token's holder, or whoever the application's
    /// check allows.
    pub(crate) fn authorize(&self, headers: &HeaderMap, class: &str) -> Result<Caller, ApiError> {
        let presented = bearer(headers);
        if presented.is_some_and(|t| constant_time_eq(t.as_bytes(), self.token.as_bytes())) {
            return Ok(self.token_caller.clone());
        }
        let denied = match &self.auth {
            Some(check) => match catch_unwind(AssertUnwindSafe(|| check(headers, class))) {
                Ok(Ok(caller)) => return Ok(caller),
                Ok(Err(deny)) => deny,
                Err(_) => {
                    tracing::error!(class, "the HTTP auth check panicked");
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the auth check failed",
                    ));
                }
            },
            None if presented.is_some() => Deny::unauthenticated("wrong token"),
            None => Deny::unauthenticated(
                "send the host token: Authorization: Bearer TOKEN (DATA_DIR/tls/token)",
            ),
        };
        let kind = if denied.status == StatusCode::FORBIDDEN {
            "forbidden"
        } else {
            "unauthenticated"
        };
        Err(ApiError::new(denied.status, kind, denied.message))
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn bearer_tokens() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("bearer  abc "));
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
        h.insert(AUTHORIZATION, HeaderValue::from_static("Bearer"));
        assert_eq!(bearer(&h), None);
    }
}
