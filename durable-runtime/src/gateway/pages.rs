//! Static pages the application registers with [`crate::Host::page`]: a small HTML
//! document (inline script and style, no build step) served by the gateway at a fixed
//! path, e.g. the chat room's page at `/chat/`. A page is public: it carries no data,
//! and what its script may call is up to the application's [`crate::Host::http_auth`]
//! check. Pages are looked up after the API's routes, so a page under `/v1/` is never
//! reached.

use axum::response::{IntoResponse, Redirect, Response};
use http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::{HeaderValue, Method, StatusCode};
use std::borrow::Cow;
use std::collections::HashMap;

/// What a page's script may do: run its own inline script and style, connect back to
/// the host that served it (HTTP and WebSocket), nothing else.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                      frame-ancestors 'none'";

/// The pages of a host, by path.
#[derive(Debug, Clone, Default)]
pub(crate) struct Pages {
    by_path: HashMap<String, Cow<'static, str>>,
}

impl Pages {
    /// Add (or replace) the page at `path`: an absolute path of plain characters,
    /// outside `/v1/`, with no query. The error says what is wrong with the path.
    pub(crate) fn add(&mut self, path: String, html: Cow<'static, str>) -> Result<(), String> {
        let why = if !path.starts_with('/') {
            Some("must start with /")
        } else if path == "/v1" || path.starts_with("/v1/") {
            Some("/v1/ is the API's")
        } else if path.len() > 256 {
            Some("longer than 256 bytes")
        } else if !path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.~".contains(&b))
        {
            Some("may hold only letters, digits and / - _ . ~")
        } else if path.contains("//") {
            Some("has an empty segment")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(format!("page path {path:?}: {why}"));
        }
        self.by_path.insert(path, html);
        Ok(())
    }

    /// Whether no page is registered.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// The answer to `method path` if a page is there: the page for GET and HEAD, a
    /// redirect from `/chat` to `/chat/`, 405 for other methods; `None` if no page.
    pub(crate) fn serve(&self, method: &Method, path: &str) -> Option<Response> {
        let html = match self.by_path.get(path) {
            Some(html) => html,
            None if !path.ends_with('/') && self.by_path.contains_key(&format!("{path}/")) => {
                return Some(Redirect::permanent(&format!("{path}/")).into_response());
            }
            None => return None,
        };
        if method != Method::GET && method != Method::HEAD {
            return Some(
                (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(http::header::ALLOW, "GET, HEAD")],
                )
                    .into_response(),
            );
        }
        let mut response = html.to_string().into_response();
        let headers = response.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
        Some(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_checked_and_served() {
        let mut pages = Pages::default();
        pages.add("/chat/".into(), "<p>hi</p>".into()).unwrap();
        for bad in ["chat/", "/v1/x", "/v1", "/a b/", "/a//b", "/a?b"] {
            assert!(pages.add(bad.into(), "".into()).is_err(), "{bad}");
        }
        let ok = pages.serve(&Method::GET, "/chat/").unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            ok.headers()[CONTENT_TYPE],
            HeaderValue::from_static("text/html; charset=utf-8")
        );
        let moved = pages.serve(&Method::GET, "/chat").unwrap();
        assert_eq!(moved.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(moved.headers()[http::header::LOCATION], "/chat/");
        let post = pages.serve(&Method::POST, "/chat/").unwrap();
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(pages.serve(&Method::GET, "/doc/").is_none());
    }
}
