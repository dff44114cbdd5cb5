//! The application's static pages ([`crate::Host::page`]): fixed HTML served by
//! `GET` at the paths the application chose, next to the API, without auth (a page
//! carries no data; the calls it makes authenticate like any other).

use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use http::HeaderValue;

/// A page: its path and its HTML.
#[derive(Debug, Clone)]
pub(crate) struct Page {
    pub(crate) path: &'static str,
    pub(crate) html: &'static str,
}

/// `router` with a `GET` route for each page (a path that is not absolute, or is
/// under `/v1/`, is skipped with a warning: the API keeps its paths).
pub(crate) fn add(mut router: Router, pages: Vec<Page>) -> Router {
    for page in pages {
        if !page.path.starts_with('/') || page.path.starts_with("/v1/") || page.path.contains('{') {
            tracing::warn!(
                path = page.path,
                "not serving a page there: a page path starts with / and is not under /v1/"
            );
            continue;
        }
        let html = page.html;
        router = router.route(page.path, get(move || async move { serve(html) }));
    }
    router
}

fn serve(html: &'static str) -> Response {
    let mut response = html.into_response();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}
