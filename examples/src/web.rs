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
pub const PUBLIC_CLASSES: &[&str] = &["ChatRoom", "Document", "AiChat"];

/// Serve the pages, and admit their requests: a request to a class in
/// [`PUBLIC_CLASSES`] that comes from a page this host served is let in as the
/// caller `page`. A browser says so in one of three ways: an `Origin` naming the host
/// the request was sent to (every WebSocket upgrade and POST carries it), or, on a
/// plain GET such as the AI page's `EventSource` (which carries neither `Origin` nor
/// `Authorization`), `Sec-Fetch-Site: same-origin` or a `Referer` on this host. Any
/// other request still needs the host token. The rooms, documents and conversations
/// are public demos, so this check only keeps other web sites' scripts out; it is no
/// access control against programs, which can send any header.
pub fn serve_pages(host: Host) -> Host {
    host.page("/chat/", CHAT_PAGE)
        .page("/doc/", DOC_PAGE)
        .http_auth(|headers, class| {
            if !PUBLIC_CLASSES.contains(&class) {
                return Err(Deny::unauthenticated(
                    "send the host token: Authorization: Bearer TOKEN (DATA_DIR/tls/token)",
                ));
            }
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            let on_this_host = |url: &str, host: &str| {
                url.strip_prefix("http://")
                    .or_else(|| url.strip_prefix("https://"))
                    .is_some_and(|rest| {
                        let authority = rest.split('/').next().unwrap_or("");
                        authority.eq_ignore_ascii_case(host)
                    })
            };
            let same_origin = match header("host") {
                Some(host) => {
                    header("origin").is_some_and(|o| on_this_host(o, host))
                        || (header("origin").is_none()
                            && (header("sec-fetch-site") == Some("same-origin")
                                || header("referer").is_some_and(|r| on_this_host(r, host))))
                }
                None => false,
            };
            if same_origin {
                Ok(Caller("page".into()))
            } else {
                Err(Deny::unauthenticated(
                    "open this from the host's own page (/chat/, /doc/, /ai/), or send the host token",
                ))
            }
        })
}
