//! The HTTP/JSON gateway (`serve --http ADDR`): one more transport in front of the
//! host's transport-neutral entry ([`crate::calls::Calls`]), for curl, browsers and
//! tools. `POST /v1/objects/{class}/{name}/{method}` takes a JSON object of the
//! arguments by name, turns it into the same call a QUIC client sends (the postcard
//! argument tuple, through the converters `#[durable_object]` generates next to its
//! dispatch) and answers with the JSON result; `GET /v1/classes` lists what can be
//! called; `GET /v1/objects/{class}/{name}/ws` opens a WebSocket held for an object;
//! any other GET path may be one of the application's static pages
//! ([`crate::Host::page`]). See `docs/gateway.md`.
//!
//! Built on hyper (HTTP/1.1) with axum's router. Every connection has a header read
//! deadline, the host a cap on open connections, every body the host's frame limit
//! and a read deadline; nothing a client sends can panic the host: every failure is
//! a JSON error with a fitting status.

mod pages;
mod reply;
mod routes;
mod state;
mod streams;
mod ws;

use crate::calls::{Caller, Calls};
use http::{HeaderMap, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
pub(crate) use pages::Pages;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Most HTTP connections open at once (fewer where the open-file limit is low: the host
/// gives the gateway its share, `GatewayConfig::max_connections`); past it new ones
/// are closed at once.
pub(crate) const MAX_CONNECTIONS: usize = 16_384;

/// A client must send a request's headers within this time (an idle keep-alive
/// connection is closed after it too).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Why an HTTP request was refused by an application's auth check (see
/// [`crate::Host::http_auth`]). The client gets the status (401 or 403) and a JSON
/// error carrying the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    status: StatusCode,
    message: String,
}

impl Deny {
    /// 401 Unauthorized: the request carries no credentials this check accepts.
    pub fn unauthenticated(message: impl Into<String>) -> Deny {
        Deny {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
    }

    /// 403 Forbidden: the caller is known but may not call this class.
    pub fn forbidden(message: impl Into<String>) -> Deny {
        Deny {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }

    /// The HTTP status the client gets: 401 or 403.
    pub fn status(&self) -> u16 {
        self.status.as_u16()
    }

    /// The message the client gets.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// An application's own check of HTTP requests (see [`crate::Host::http_auth`]):
/// given the request's headers and the class it calls, allow it as a [`Caller`] or
/// [`Deny`] it. Requests carrying the host token are allowed without asking it.
pub type HttpAuth = Arc<dyn Fn(&HeaderMap, &str) -> Result<Caller, Deny> + Send + Sync>;

/// What the gateway needs from the host.
pub(crate) struct GatewayConfig {
    /// The entry every transport calls through.
    pub(crate) calls: Arc<Calls>,
    /// The host token (`Authorization: Bearer TOKEN`).
    pub(crate) token: String,
    /// The application's own check, if it installed one.
    pub(crate) auth: Option<HttpAuth>,
    /// Largest request body, in bytes (the host's frame limit).
    pub(crate) max_body: usize,
    /// The host's WebSockets (the gateway holds them; shards act on them).
    pub(crate) sockets: Arc<crate::sockets::Registry>,
    /// The application's static pages.
    pub(crate) pages: Pages,
    /// How often to ping each WebSocket (zero: never).
    pub(crate) ping_interval: Duration,
    /// The followers of the host's streams.
    pub(crate) streams: Arc<crate::streams::Hub>,
    /// Most HTTP connections open at once (upgraded ones count as WebSockets).
    pub(crate) max_connections: usize,
}

/// A running gateway: its address, and the means to stop it.
pub(crate) struct Gateway {
    local_addr: SocketAddr,
    /// 0: serving; 1: finish the requests in flight and close; 2: drop everything.
    stop: watch::Sender<u8>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    acceptor: tokio::task::JoinHandle<()>,
    sockets: Arc<crate::sockets::Registry>,
    streams: Arc<crate::streams::Hub>,
}

impl Gateway {
    /// Bind `addr` (before the host starts anything, so that a taken port fails the
    /// start cleanly).
    pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    }

    /// Start serving on a listener from [`Gateway::bind`]. Must be called inside a
    /// tokio runtime.
    pub(crate) fn start(
        listener: std::net::TcpListener,
        config: GatewayConfig,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        if local_addr.ip().is_unspecified() {
            tracing::warn!(addr = %local_addr, "the HTTP gateway listens on every network interface, in plain HTTP: tokens and arguments cross the network unencrypted; put a TLS proxy in front or listen on a specific address");
        }
        let sockets = config.sockets.clone();
        let streams = config.streams.clone();
        let max_connections = config.max_connections.max(1);
        let router = routes::router(Arc::new(state::State::new(config)));
        let (stop, stopped) = watch::channel(0u8);
        let connections = Arc::new(Semaphore::new(max_connections));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            router,
            stopped,
            connections.clone(),
            max_connections,
        ));
        tracing::info!(addr = %local_addr, "HTTP gateway started");
        Ok(Gateway {
            local_addr,
            stop,
            connections,
            max_connections,
            acceptor,
            sockets,
            streams,
        })
    }

    /// The address the gateway listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stop accepting, let requests in flight finish and their answers go out (up to
    /// `limit`), then close every connection.
    pub(crate) async fn shutdown(self, limit: Duration) {
        let _ = self.stop.send(1);
        self.sockets.close_all();
        self.streams.close_all();
        let all = self.max_connections as u32;
        let _ = tokio::time::timeout(limit, self.connections.acquire_many(all)).await;
        self.abort().await;
    }

    /// Close every connection now; requests in flight get no answer.
    pub(crate) async fn abort(self) {
        let _ = self.stop.send(2);
        self.sockets.close_all();
        self.streams.close_all();
        self.acceptor.abort();
        let _ = self.acceptor.await;
    }
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

async fn accept_loop(
    listener: TcpListener,
    router: axum::Router,
    mut stop: watch::Receiver<u8>,
    connections: Arc<Semaphore>,
    max_connections: usize,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: wait a
                // little instead of spinning.
                tracing::warn!(error = %e, "accepting an HTTP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "refusing an HTTP connection: {max_connections} are open");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            // With upgrades: a WebSocket outlives its HTTP connection's task.
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            loop {
                tokio::select! {
                    _ = conn.as_mut() => return,
                    changed = stop.changed() => {
                        if changed.is_err() || *stop.borrow() >= 2 {
                            return;
                        }
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        });
    }
}
