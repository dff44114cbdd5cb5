//! The examples' web pages: the chat room at `/chat/`, the collaborative document
//! at `/doc/` (each one HTML file with its script inline, `examples/web/`) and the AI
//! chat at `/ai/` (registered with its class by [`crate::ai::register`]), and the
//! auth check that lets those pages in without the host token.

use durable::{Caller, Deny, Host};

/// The chat room's page (`/chat/`).
pub const CHAT_PAGE: &str = include_str!("../web/chat.html");

/// The collaborative document's page (`/doc/`).
pub const DOC_PAGE: &str = include_str!("../web/doc.html");

/// The classes a page may reach without the host token.
pub const PUBLIC_CLASSES: &[&str] = &["ChatRoom", "Document"];

/// Serve the pages, and admit their requests: a request to a class in
/// [`PUBLIC_CLASSES`] that comes from a page this host served (its `Origin` names the
/// host it was sent to, as browsers set it on every WebSocket upgrade) is let in as
/// the caller `page`. [`crate::ai::AiChat`] is open to every caller (`ai-page`): its
/// page follows replies with `EventSource`, whose same-origin GET carries neither an
/// `Authorization` nor an `Origin` header. Any other request still needs the host
/// token. The rooms, documents and conversations are public demos, so this check
/// only keeps other web sites' scripts out of the first two; it is no access control
/// against programs, which can send any `Origin`.
pub fn serve_pages(host: Host) -> Host {
    host.page("/chat/", CHAT_PAGE)
        .page("/doc/", DOC_PAGE)
        .http_auth(|headers, class| {
            if class == "AiChat" {
                return Ok(Caller("ai-page".into()));
            }
            if !PUBLIC_CLASSES.contains(&class) {
                return Err(Deny::unauthenticated(
                    "send the host token: Authorization: Bearer TOKEN (DATA_DIR/tls/token)",
                ));
            }
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let same_origin = match (header("origin"), header("host")) {
                (Some(origin), Some(host)) => origin
                    .strip_prefix("http://")
                    .or_else(|| origin.strip_prefix("https://"))
                    .is_some_and(|o| o.eq_ignore_ascii_case(host)),
                _ => false,
            };
            if same_origin {
                Ok(Caller("page".into()))
            } else {
                Err(Deny::unauthenticated(
                    "open this from the host's own page (/chat/, /doc/), or send the host token",
                ))
            }
        })
}
