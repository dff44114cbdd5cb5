//! The QUIC client: one connection per [`Client`] to the host's address, reused by
//! every call, every call on the connection's pipe (a stream per call with hosts older
//! than protocol version 3), transparent reconnects with the same request id, and a
//! deadline per call. A host with lanes (one endpoint per shard thread, see
//! [`Response::Lanes`]) gets a connection per lane too, opened at first use: each call
//! goes on the lane of the shard that owns its object, and on the first connection
//! while that lane cannot be reached.
//! A [`Client`] can also carry its calls over another [`Transport`] (a host in the
//! same process: the test harness), with the same stubs.

use crate::error::CallError;
use crate::pipe::{Exchange, Pipe, Sent};
use crate::retry::Retry;
use crate::wire::{self, CallRequest, Request, Response, WireError};
use crate::{ObjectClass, ObjectId, ALPN};
use serde::{de::DeserializeOwned, Serialize};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::time::Instant;

/// How often the client pings an idle connection.
const KEEP_ALIVE: Duration = Duration::from_millis(300);
/// How long a connection may go without any packet from the host before it is
/// declared dead.
const IDLE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Calls that belong on a lane sent on the first connection before the lane is
/// connected: the handshake costs its shard thread about a millisecond of CPU (every
/// object of that shard waits through it), which a client that makes a few calls and
/// leaves would never earn back.
const LANE_AFTER: u32 = 16;
/// How long connecting to a lane may take before it counts as unreachable.
const LANE_CONNECT: Duration = Duration::from_secs(3);
/// How long a lane that could not be reached is left alone (its calls go on the first
/// connection meanwhile); doubled after each failure in a row, up to [`LANE_RETRY_MAX`].
const LANE_RETRY: Duration = Duration::from_secs(5);
const LANE_RETRY_MAX: Duration = Duration::from_secs(300);
/// How long a lane's connection may go without a packet before it is declared dead.
/// Longer than the first connection's: a shard thread serves its lane between turns,
/// and a long turn must not cut its lane's connections. A dead host is noticed on the
/// first connection, whose loss closes the lanes' connections.
const LANE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection's transport settings: keep-alives every [`KEEP_ALIVE`], closed after
/// `idle` without a packet from the host.
fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(4096u32.into());
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(idle.try_into().expect("a valid idle timeout")));
    crate::wire::tune_transport(&mut transport);
    Arc::new(transport)
}

/// How to reach and trust a host.
#[derive(Clone)]
pub struct ClientConfig {
    /// The host's QUIC address.
    pub addr: SocketAddr,
    /// The name the host's certificate must carry (default `localhost`).
    pub server_name: String,
    /// PEM of the certificate authority to trust (the host's `tls/ca.pem`).
    pub ca_pem: Vec<u8>,
    /// The client token (the host's `tls/token`); may be empty with
    /// [`ClientConfig::client_cert`].
    pub token: String,
    /// A client certificate to present in the TLS handshake, for hosts that trust
    /// its CA (`--client-ca`); see [`ClientConfig::with_client_cert`].
    pub client_cert: Option<ClientCert>,
    /// Default deadline per call (default 30 s).
    pub deadline: Duration,
    /// Largest response frame accepted (default 4 MiB).
    pub max_frame: usize,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("deadline", &self.deadline)
            .field("max_frame", &self.max_frame)
            .field("client_cert", &self.client_cert)
            .finish_non_exhaustive()
    }
}

/// A client certificate and its private key, both PEM (as `host client-cert` writes
/// them to `PREFIX.pem` and `PREFIX.key`).
#[derive(Clone)]
pub struct ClientCert {
    /// The certificate, optionally followed by intermediate CA certificates.
    pub cert_pem: Vec<u8>,
    /// The certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClientCert").finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A config with defaults for everything but the address, CA and token.
    pub fn new(addr: SocketAddr, ca_pem: Vec<u8>, token: impl Into<String>) -> Self {
        ClientConfig {
            addr,
            server_name: "localhost".into(),
            ca_pem,
            token: token.into(),
            client_cert: None,
            deadline: Duration::from_secs(30),
            max_frame: wire::DEFAULT_MAX_FRAME,
        }
    }

    /// Read the CA certificate and token from files (a host's `DATA_DIR/tls/ca.pem`
    /// and `DATA_DIR/tls/token`).
    pub fn from_files(
        addr: SocketAddr,
        ca_path: impl AsRef<Path>,
        token_path: impl AsRef<Path>,
    ) -> std::io::Result<Self> {
        let ca = std::fs::read(ca_path.as_ref())?;
        let token = std::fs::read_to_string(token_path.as_ref())?;
        Ok(Self::new(addr, ca, token.trim()))
    }

    /// Present a client certificate (`cert_pem`, with its private key `key_pem`, both
    /// PEM) in the TLS handshake. A host started with `--client-ca` naming the CA that
    /// signed it authenticates the connection by the certificate, so the token may be
    /// empty: `ClientConfig::new(addr, ca_pem, "").with_client_cert(cert, key)`.
    ///
    /// A host that does not trust the certificate's CA refuses it in the handshake:
    /// [`Client::connect`] fails with [`ConnectError::CertificateRejected`] (and
    /// calls that have to reconnect fail with `CallError::Unauthenticated`), even
    /// when the token is right. A host without `--client-ca` asks for no certificate,
    /// so this one is not sent and the token has to authenticate.
    /// The PEM is parsed by [`Client::connect`], which fails with
    /// [`ConnectError::Tls`] if it holds no certificate or no key.
    pub fn with_client_cert(mut self, cert_pem: Vec<u8>, key_pem: Vec<u8>) -> Self {
        self.client_cert = Some(ClientCert { cert_pem, key_pem });
        self
    }

    /// Read CA and token from a host's data directory.
    pub fn from_data_dir(addr: SocketAddr, data_dir: impl AsRef<Path>) -> std::io::Result<Self> {
        let tls = data_dir.as_ref().join("tls");
        Self::from_files(addr, tls.join("ca.pem"), tls.join("token"))
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The CA file holds no usable certificate, or TLS could not be set up.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// Binding the local UDP socket failed.
    #[error("local socket: {0}")]
    Io(#[from] std::io::Error),
    /// The QUIC handshake or the hello exchange failed.
    #[error("connecting to the host: {0}")]
    Connect(String),
    /// The host rejected the token.
    #[error("the host rejected the client token")]
    Unauthenticated,
    /// The host refused the TLS handshake over the client certificate: it was not
    /// signed by a CA the host trusts (or had expired, or was otherwise invalid), or
    /// the host requires one and none was configured. Carries the TLS alert.
    #[error("the host refused the client certificate: {0}")]
    CertificateRejected(String),
}

/// If the host closed the connection with a TLS alert about the client's certificate,
/// say which. Only a close from the peer counts: an alert the client raised itself
/// (the host's certificate did not verify) is a local error.
fn certificate_rejection(error: &quinn::ConnectionError) -> Option<ConnectError> {
    use rustls::AlertDescription as A;
    let quinn::ConnectionError::ConnectionClosed(close) = error else {
        return None;
    };
    let code = u64::from(close.error_code);
    if !(0x100..0x200).contains(&code) {
        return None;
    }
    let alert = A::from((code & 0xff) as u8);
    let what = match alert {
        A::CertificateRequired => "the host requires a client certificate",
        A::UnknownCA => "it is not signed by a CA the host trusts",
        // A signature that does not verify: signed by another key under a trusted
        // CA's name, or a private key that does not match the certificate.
        A::DecryptError => "it is not signed by a CA the host trusts, or the key does not match it",
        A::CertificateExpired => "it has expired or is not yet valid",
        A::CertificateRevoked => "it has been revoked",
        A::BadCertificate | A::UnsupportedCertificate | A::CertificateUnknown | A::AccessDenied => {
            "it is not valid for client authentication"
        }
        _ => return None,
    };
    Some(ConnectError::CertificateRejected(format!(
        "{what} (TLS alert {alert:?}: {close})"
    )))
}

struct Inner {
    endpoint: quinn::Endpoint,
    config: ClientConfig,
    /// The connection to the host's address.
    main: Arc<Lane>,
    /// One first connection made at a time.
    connecting: tokio::sync::Mutex<()>,
    /// The protocol version the host took in the hello: from
    /// [`wire::PIPE_VERSION`] on, calls go on the connection's pipe.
    version: AtomicU8,
    /// How lane connections are made (a longer idle timeout than the first one's).
    lane_config: quinn::ClientConfig,
    /// One refresh of the lanes at a time.
    refreshing: tokio::sync::Mutex<()>,
    /// The host's lanes, as its answer on this first connection
    /// named them (a new first connection asks again: a restarted host has new ones).
    lanes: RwLock<Option<(quinn::Connection, Lanes)>>,
    /// The runtime the client was made on (its endpoint's driver runs there): the
    /// client's own tasks (pipes, lanes) run there too, whichever runtime a call
    /// comes from.
    runtime: tokio::runtime::Handle,
}

/// The last handle of a client gone: its connections close now. (A task that closes
/// the lanes once the first connection is lost holds a handle of that connection,
/// which would otherwise keep it, the lanes and the endpoint's socket open for good.)
impl Drop for Inner {
    fn drop(&mut self) {
        self.main.close();
        let lanes = self
            .lanes
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((main, lanes)) = lanes {
            main.close(0u32.into(), b"client dropped");
            for lane in lanes.iter() {
                lane.close();
            }
        }
    }
}

/// The host's lanes, in shard order.
type Lanes = Arc<Vec<Arc<Lane>>>;

/// One address of the host, its connection and the connection's pipe.
struct Lane {
    addr: SocketAddr,
    conn: RwLock<Option<quinn::Connection>>,
    pipe: Mutex<Option<Arc<Pipe>>>,
    opening_pipe: tokio::sync::Mutex<()>,
    /// Lanes only: whether a connection is being made and when to try again after a
    /// failure. (The first connection is made on demand by [`establish`].)
    reach: Reach,
}

impl Lane {
    fn new(addr: SocketAddr) -> Lane {
        Lane {
            addr,
            conn: RwLock::new(None),
            pipe: Mutex::new(None),
            opening_pipe: tokio::sync::Mutex::new(()),
            reach: Reach::default(),
        }
    }

    fn close(&self) {
        if let Some(conn) = self.conn.write().unwrap().take() {
            conn.close(0u32.into(), b"client closed");
        }
        self.pipe.lock().unwrap().take();
    }
}

/// A lane's connection attempts, made in the background: none before the client has
/// had [`LANE_AFTER`] calls for it, one at a time, and after a failure none for
/// [`LANE_RETRY`], twice as long after each failure in a row (at most
/// [`LANE_RETRY_MAX`]).
#[derive(Default)]
struct Reach {
    /// Calls that belonged on the lane, up to [`LANE_AFTER`].
    wanted: std::sync::atomic::AtomicU32,
    /// A lane that could not be reached is not tried again before this.
    down_until: Mutex<Option<Instant>>,
    /// A connection is being made.
    opening: std::sync::atomic::AtomicBool,
    /// Tries that failed in a row.
    failures: std::sync::atomic::AtomicU32,
}

impl Reach {
    /// Whether the lane is left alone after failing.
    fn is_down(&self) -> bool {
        // A lane that never failed (or succeeded since) is up: no lock, no clock.
        if self.failures.load(Ordering::Acquire) == 0 {
            return false;
        }
        matches!(*self.down_until.lock().unwrap(), Some(until) if Instant::now() < until)
    }

    /// Count a call that belongs on the lane; then claim the one try at a time: `false`
    /// if the lane is not wanted enough yet or a try is under way.
    fn start(&self) -> bool {
        if self.wanted.load(Ordering::Relaxed) < LANE_AFTER
            && self.wanted.fetch_add(1, Ordering::Relaxed) + 1 < LANE_AFTER
        {
            return false;
        }
        !self.opening.swap(true, Ordering::AcqRel)
    }

    /// The try ended (however it ended).
    fn ended(&self) {
        self.opening.store(false, Ordering::Release);
    }

    fn succeeded(&self) {
        self.failures.store(0, Ordering::Release);
    }

    fn failed(&self) {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel).min(16);
        let wait = LANE_RETRY.saturating_mul(1 << failures).min(LANE_RETRY_MAX);
        *self.down_until.lock().unwrap() = Some(Instant::now() + wait);
    }
}

/// A future a [`Transport`] returns.
pub type TransportFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Response, CallError>> + Send + 'static>,
>;

/// Carries a [`Client`]'s calls to a host other than over QUIC: a host in the same
/// process answers them directly (`RunningHost::local_client` in `durable-runtime`,
/// which the test harness uses). The stubs, request ids and error types are the same.
pub trait Transport: Send + Sync + 'static {
    /// Deliver one call and resolve to the host's response (the client bounds it by
    /// the call's deadline).
    fn call(&self, request: CallRequest) -> TransportFuture;
}

#[derive(Clone)]
enum Link {
    Quic(Arc<Inner>),
    Other(Arc<dyn Transport>, Arc<ClientConfig>),
}

/// A connection to a durable host, shared by every stub made from it. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    link: Link,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.link {
            Link::Quic(inner) => f
                .debug_struct("Client")
                .field("addr", &inner.config.addr)
                .finish(),
            Link::Other(..) => f
                .debug_struct("Client")
                .field("addr", &"in process")
                .finish(),
        }
    }
}

impl Client {
    /// Connect to a host and present the token (and the client certificate, if the
    /// config has one).
    pub async fn connect(config: ClientConfig) -> Result<Client, ConnectError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut config.ca_pem.as_slice()) {
            let cert = cert.map_err(|e| ConnectError::Tls(format!("reading CA PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ConnectError::Tls(format!("adding CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ConnectError::Tls("the CA file holds no certificate".into()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| ConnectError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let mut tls = match &config.client_cert {
            None => builder.with_no_client_auth(),
            Some(cert) => {
                let chain = rustls_pemfile::certs(&mut cert.cert_pem.as_slice())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        ConnectError::Tls(format!("reading the client certificate: {e}"))
                    })?;
                if chain.is_empty() {
                    return Err(ConnectError::Tls(
                        "the client certificate PEM holds no certificate".into(),
                    ));
                }
                let key = rustls_pemfile::private_key(&mut cert.key_pem.as_slice())
                    .map_err(|e| ConnectError::Tls(format!("reading the client key: {e}")))?
                    .ok_or_else(|| {
                        ConnectError::Tls("the client key PEM holds no private key".into())
                    })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ConnectError::Tls(format!("the client certificate: {e}")))?
            }
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(quic));
        let mut lane_config = client_config.clone();
        // A dead host (killed, or its machine gone) is noticed within about a second:
        // keep-alives every 300 ms, and a connection with no answer for 1.5 s is
        // closed, so calls move to a new connection instead of waiting on the old one.
        client_config.transport_config(transport(IDLE_TIMEOUT));
        lane_config.transport_config(transport(LANE_IDLE_TIMEOUT));
        let bind: SocketAddr = if config.addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        }
        .parse()
        .unwrap();
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client_config);
        let inner = Arc::new(Inner {
            endpoint,
            main: Arc::new(Lane::new(config.addr)),
            connecting: tokio::sync::Mutex::new(()),
            config,
            version: AtomicU8::new(wire::PROTOCOL_VERSION),
            lane_config,
            refreshing: tokio::sync::Mutex::new(()),
            lanes: RwLock::new(None),
            runtime: tokio::runtime::Handle::current(),
        });
        // The deadline bounds connecting too, not only calls.
        let deadline = inner.config.deadline;
        match tokio::time::timeout(deadline, establish(&inner)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ConnectError::Connect(format!(
                    "no answer from {} within the deadline ({deadline:?})",
                    inner.config.addr
                )))
            }
        };
        Ok(Client {
            link: Link::Quic(inner),
        })
    }

    /// A client whose calls go over `transport` instead of QUIC. Of `config` only the
    /// deadline and the frame limit apply.
    pub fn over(transport: Arc<dyn Transport>, config: ClientConfig) -> Client {
        Client {
            link: Link::Other(transport, Arc::new(config)),
        }
    }

    /// The config this client was made with.
    pub fn config(&self) -> &ClientConfig {
        match &self.link {
            Link::Quic(inner) => &inner.config,
            Link::Other(_, config) => config,
        }
    }

    /// The typed stub for the object `name` of class `C`.
    pub fn get<C: ObjectClass>(&self, name: &str) -> C::Client {
        C::Client::from(self.object_ref(C::CLASS, ObjectId::from_name(C::CLASS, name), Some(name)))
    }

    /// The typed stub for the object with id `id` of class `C`.
    pub fn get_by_id<C: ObjectClass>(&self, id: ObjectId) -> C::Client {
        C::Client::from(self.object_ref(C::CLASS, id, None))
    }

    /// An untyped reference, for tools and dynamic callers. Stubs wrap one of these.
    pub fn object_ref(&self, class: &str, id: ObjectId, name: Option<&str>) -> ObjectRef {
        ObjectRef {
            client: self.clone(),
            class: class.into(),
            id,
            name: name.map(Into::into),
            deadline: self.config().deadline,
        }
    }

    /// Close the connection (a client over another transport has none).
    pub fn close(&self) {
        if let Link::Quic(inner) = &self.link {
            inner.main.close();
            if let Some((_, lanes)) = inner.lanes.write().unwrap().take() {
                for lane in lanes.iter() {
                    lane.close();
                }
            }
        }
    }

    /// Like [`Client::call_raw`], with the deadline `within` from now.
    pub async fn call_raw_for(
        &self,
        request: &CallRequest,
        within: Duration,
    ) -> Result<Response, CallError> {
        self.call_raw(request, deadline_after(Instant::now(), within))
            .await
    }

    /// Send a call made by an object's turn: with the chain of objects waiting on it
    /// (first caller first) and the caller's tracing span id, so that the host refuses
    /// a cycle at once ([`CallError::CallCycle`]) and logs where the call came from.
    /// Runtimes use it for object-to-object calls; over a non-QUIC transport the
    /// chain is not carried.
    pub async fn call_chained(
        &self,
        request: &CallRequest,
        chain: Vec<wire::ChainLink>,
        caller_span: u64,
        within: Duration,
    ) -> Result<Response, CallError> {
        let deadline = deadline_after(Instant::now(), within);
        match &self.link {
            Link::Quic(inner) => {
                let outgoing = Outgoing {
                    message: wire::encode_request(&Request::ChainCall(wire::ChainCall {
                        call: request.clone(),
                        chain,
                        caller_span,
                    })),
                    lane_key: Some((&request.class, request.object)),
                };
                call_quic(inner, &outgoing, deadline).await
            }
            Link::Other(..) => self.call_raw(request, deadline).await,
        }
    }

    /// Send one call and wait for its response, reconnecting and resending with the
    /// same request id until `deadline`.
    pub async fn call_raw(
        &self,
        request: &CallRequest,
        deadline: Instant,
    ) -> Result<Response, CallError> {
        match &self.link {
            Link::Quic(inner) => {
                let outgoing = Outgoing {
                    message: wire::encode_call(request),
                    lane_key: Some((&request.class, request.object)),
                };
                call_quic(inner, &outgoing, deadline).await
            }
            Link::Other(transport, _) => call_other(transport, request.clone(), deadline).await,
        }
    }
}

/// Send `request` over a [`Transport`] other than QUIC, until `deadline`.
async fn call_other(
    transport: &Arc<dyn Transport>,
    request: CallRequest,
    deadline: Instant,
) -> Result<Response, CallError> {
    match tokio::time::timeout_at(deadline, transport.call(request)).await {
        Ok(result) => result,
        Err(_) => Err(CallError::Timeout),
    }
}

async fn establish(inner: &Arc<Inner>) -> Result<quinn::Connection, ConnectError> {
    let main = &inner.main;
    let _guard = inner.connecting.lock().await;
    if let Some(conn) = current(main) {
        return Ok(conn);
    }
    loop {
        let version = inner.version.load(Ordering::Acquire);
        match connect_in(inner, main.addr, version, None).await? {
            Some(conn) => {
                // Asked now, so that the first calls already use them (a failure is
                // asked again by the next call).
                let _ = refresh_lanes(inner, &conn).await;
                *main.conn.write().unwrap() = Some(conn.clone());
                return Ok(conn);
            }
            // A host older than this version: say hello again in the one before
            // (version 2 has everything but pipes).
            None if version > 2 => inner.version.store(version - 1, Ordering::Release),
            None => {
                return Err(ConnectError::Connect(format!(
                    "the host does not speak protocol version {version}"
                )))
            }
        }
    }
}

/// Ask the host's lanes on its first connection `main` and keep them for it (none if
/// the host names none, does not know the question, or speaks a protocol before
/// pipes); their connections close when `main` does. Fails only if `main` is lost.
async fn refresh_lanes(inner: &Arc<Inner>, main: &quinn::Connection) -> Result<(), Exchange> {
    let _one = inner.refreshing.lock().await;
    if lanes_known(inner, main) {
        return Ok(());
    }
    let version = inner.version.load(Ordering::Acquire);
    let lanes = if version >= wire::PIPE_VERSION {
        let ask = wire::encode_frame_in(&Request::Lanes, version);
        match exchange(main, &ask, inner.config.max_frame).await {
            Ok(Response::Lanes(ports)) => lanes_at(inner.config.addr.ip(), ports),
            Ok(_) | Err(Exchange::Protocol(_)) => Vec::new(),
            Err(lost) => return Err(lost),
        }
    } else {
        Vec::new()
    };
    let lanes: Lanes = Arc::new(lanes);
    *inner.lanes.write().unwrap() = Some((main.clone(), lanes.clone()));
    if !lanes.is_empty() {
        // Lanes live as long as the first connection: once it is lost (the host may
        // be gone, and a restarted one has other lanes), calls on them end at once and
        // go again, after a new first connection asks for the lanes anew.
        let main = main.clone();
        inner.runtime.spawn(async move {
            main.closed().await;
            for lane in lanes.iter() {
                lane.close();
            }
        });
    }
    Ok(())
}

/// The lanes a host named, on its address: none if it named more than any host has
/// ([`wire::MAX_LANES`]: a broken or hostile host's answer costs no memory or
/// connections), or a port 0.
fn lanes_at(ip: std::net::IpAddr, ports: Vec<u16>) -> Vec<Arc<Lane>> {
    if ports.len() > wire::MAX_LANES || ports.contains(&0) {
        return Vec::new();
    }
    ports
        .into_iter()
        .map(|port| Arc::new(Lane::new(SocketAddr::new(ip, port))))
        .collect()
}

/// Whether the lanes kept came with the first connection `main` (held there, so its
/// stable id cannot belong to another connection).
fn lanes_known(inner: &Inner, main: &quinn::Connection) -> bool {
    matches!(&*inner.lanes.read().unwrap(), Some((c, _)) if c.stable_id() == main.stable_id())
}

/// The lane to send `request` on: the one of the shard that owns its object, if the
/// host has lanes, they came with the first connection `main`, and the lane is not
/// left alone after failing; else the first connection's.
fn lane_for(inner: &Inner, main: &quinn::Connection, outgoing: &Outgoing<'_>) -> Arc<Lane> {
    let Some((class, object)) = outgoing.lane_key else {
        return inner.main.clone();
    };
    let lanes = inner.lanes.read().unwrap();
    let Some((known, lanes)) = lanes.as_ref() else {
        return inner.main.clone();
    };
    if known.stable_id() != main.stable_id() {
        return inner.main.clone();
    }
    pick_lane(inner, lanes, class, &object).clone()
}

/// Of the host's `lanes`, the one of the shard that owns `class`'s `object`, unless it
/// is left alone after failing (or the host has none); else the first connection's.
fn pick_lane<'a>(
    inner: &'a Inner,
    lanes: &'a [Arc<Lane>],
    class: &str,
    object: &ObjectId,
) -> &'a Arc<Lane> {
    if lanes.is_empty() {
        return &inner.main;
    }
    let lane = &lanes[wire::lane_of(class, object, lanes.len())];
    if lane.reach.is_down() {
        &inner.main
    } else {
        lane
    }
}

/// The connection of `lane` (not the first one), if it has one. If not, one is made in
/// the background once [`LANE_AFTER`] calls wanted it (no call waits for it: they go
/// on the first connection until it is there); a lane that cannot be reached within
/// [`LANE_CONNECT`] is left alone for [`LANE_RETRY`], twice as long after each failure
/// in a row.
fn lane_connection(inner: &Arc<Inner>, lane: &Arc<Lane>) -> Option<quinn::Connection> {
    if let Some(conn) = current(lane) {
        return Some(conn);
    }
    if !lane.reach.start() {
        return None;
    }
    /// Ends the try however it ends (also if its task is dropped).
    struct Opening(Arc<Lane>);
    impl Drop for Opening {
        fn drop(&mut self) {
            self.0.reach.ended();
        }
    }
    let (inner, opening) = (inner.clone(), Opening(lane.clone()));
    let runtime = inner.runtime.clone();
    runtime.spawn(async move {
        let lane = &opening.0;
        let version = inner.version.load(Ordering::Acquire);
        let config = Some(&inner.lane_config);
        let connected =
            tokio::time::timeout(LANE_CONNECT, connect_in(&inner, lane.addr, version, config))
                .await;
        match connected {
            Ok(Ok(Some(conn))) => {
                lane.reach.succeeded();
                *lane.conn.write().unwrap() = Some(conn);
            }
            _ => lane.reach.failed(),
        }
    });
    None
}

/// Connect to `addr` (with `config`, else the endpoint's default) and say hello in
/// protocol `version`; `None` if the host does not speak it.
async fn connect_in(
    inner: &Inner,
    addr: SocketAddr,
    version: u8,
    config: Option<&quinn::ClientConfig>,
) -> Result<Option<quinn::Connection>, ConnectError> {
    let cfg = &inner.config;
    let connecting = match config {
        Some(config) => inner
            .endpoint
            .connect_with(config.clone(), addr, &cfg.server_name),
        None => inner.endpoint.connect(addr, &cfg.server_name),
    };
    let conn = connecting
        .map_err(|e| ConnectError::Connect(e.to_string()))?
        .await
        .map_err(|e| {
            certificate_rejection(&e).unwrap_or_else(|| ConnectError::Connect(e.to_string()))
        })?;
    let hello = wire::encode_frame_in(
        &Request::Hello {
            token: cfg.token.clone(),
        },
        version,
    );
    match exchange(&conn, &hello, cfg.max_frame).await {
        Ok(Response::Welcome) => Ok(Some(conn)),
        Ok(Response::Error(WireError::Unauthenticated)) => Err(ConnectError::Unauthenticated),
        Ok(Response::Error(WireError::UnsupportedVersion { .. })) => {
            conn.close(0u32.into(), b"unsupported version");
            Ok(None)
        }
        Ok(other) => Err(ConnectError::Connect(format!(
            "unexpected hello answer {other:?}"
        ))),
        Err(Exchange::Lost(m) | Exchange::Protocol(m)) => {
            // In TLS 1.3 the host checks the client's certificate after the
            // client has finished its handshake: a refusal arrives as the
            // connection closing under the hello.
            if let Some(rejected) = conn.close_reason().as_ref().and_then(certificate_rejection) {
                return Err(rejected);
            }
            Err(ConnectError::Connect(m))
        }
        // Only a pipe's calls time out in the exchange itself, or find it full.
        Err(Exchange::TimedOut) => Err(ConnectError::Connect("the hello timed out".into())),
        Err(Exchange::Full) => Err(ConnectError::Connect("the hello was not sent".into())),
    }
}

fn current(lane: &Lane) -> Option<quinn::Connection> {
    let conn = lane.conn.read().unwrap().clone();
    conn.filter(|c| c.close_reason().is_none())
}

/// Stop using `broken` as `lane`'s connection, and its pipe with it (calls find a
/// lane's open pipe without looking at the connection: [`send_on_open_pipe`]).
fn forget(lane: &Lane, broken: &quinn::Connection) {
    let mut slot = lane.conn.write().unwrap();
    if slot.as_ref().map(|c| c.stable_id()) == Some(broken.stable_id()) {
        *slot = None;
    }
    drop(slot);
    let mut pipe = lane.pipe.lock().unwrap();
    if pipe.as_ref().map(|p| p.conn().stable_id()) == Some(broken.stable_id()) {
        *pipe = None;
    }
}

/// Send one call over QUIC and wait for its response, reconnecting and resending with
/// the same request id until `deadline`.
async fn call_quic(
    inner: &Arc<Inner>,
    outgoing: &Outgoing<'_>,
    deadline: Instant,
) -> Result<Response, CallError> {
    // The version byte, and on a pipe the tag (a varint of up to 10 bytes).
    let overhead = if inner.version.load(Ordering::Acquire) >= wire::PIPE_VERSION {
        11
    } else {
        1
    };
    let size = outgoing.message.len().saturating_add(overhead);
    if size > inner.config.max_frame {
        return Err(CallError::TooLarge {
            size: size as u64,
            limit: inner.config.max_frame as u64,
        });
    }
    let mut backoff = Duration::from_millis(5);
    let mut last_error = String::new();
    // Why an attempt sent earlier was lost, once one was: from then on the call may
    // have been applied, whatever a later attempt hears ([`after_lost_attempt`]).
    let mut lost_after_sending: Option<String> = None;
    // The request as sent again: its `timeout_ms` is what is left of the deadline, so
    // that the host does not start it after the caller has given up.
    let mut again: Option<Outgoing<'_>> = None;
    let first = outgoing;
    loop {
        let outgoing = again.as_ref().unwrap_or(first);
        // Whether this attempt's frame may have reached the host.
        let mut sent = false;
        let outcome = if let Some(on_pipe) = send_on_open_pipe(inner, outgoing, deadline) {
            // Most calls: their lane's open pipe took them at once. Its deadline keeper
            // answers `TimedOut` at the deadline.
            sent = true;
            outcome_of(on_pipe.answer().await, &mut last_error)
        } else {
            // Connecting, learning the lanes or opening a pipe, under a timer to the
            // deadline.
            let routed =
                tokio::time::timeout_at(deadline, route(inner, outgoing, &mut last_error)).await;
            match routed {
                Err(_) => return Err(timed_out(last_error)),
                Ok(Err(Some(e))) => return after_lost_attempt(Err(e), lost_after_sending),
                Ok(Err(None)) => None,
                Ok(Ok(Route::Pipe(lane, pipe))) => {
                    let answer = match pipe.send(&outgoing.message, deadline) {
                        Some(on_pipe) => {
                            sent = true;
                            on_pipe.answer().await
                        }
                        None => Err(Exchange::Lost("the pipe closed".into())),
                    };
                    settle(
                        answer,
                        &lane,
                        pipe.conn(),
                        wire::PIPE_VERSION,
                        &mut last_error,
                    )
                }
                Ok(Ok(Route::Stream(lane, conn, version))) => {
                    // Counted as sent even if the stream broke before the frame left.
                    sent = true;
                    let frame = wire::frame_of(&outgoing.message, version, None);
                    let exchanged = exchange(&conn, &frame, inner.config.max_frame);
                    match tokio::time::timeout_at(deadline, exchanged).await {
                        Ok(answer) => settle(answer, &lane, &conn, version, &mut last_error),
                        Err(_) => return Err(timed_out(last_error)),
                    }
                }
            }
        };
        match outcome {
            Some(result) => return after_lost_attempt(result, lost_after_sending),
            None => {
                if sent && lost_after_sending.is_none() {
                    lost_after_sending = Some(last_error.clone());
                }
                if Instant::now() + backoff >= deadline {
                    return Err(CallError::ConnectionLost(last_error));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(250));
                let left = deadline.saturating_duration_since(Instant::now());
                if let Some(message) = wire::with_timeout(&first.message, left) {
                    again = Some(Outgoing {
                        message,
                        lane_key: first.lane_key,
                    });
                }
            }
        }
    }
}

/// The instant `within` after `now`; a deadline too far to represent (say
/// `Duration::MAX`, meant as "none") is a century away instead of a panic.
fn deadline_after(now: Instant, within: Duration) -> Instant {
    now.checked_add(within)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// A call's result, given why an attempt of it sent earlier was lost (`lost`, if one
/// was). That attempt may have reached the host, and may run yet (it may wait in the
/// object's queue), so a refusal of a later attempt that says "not applied" (the queue
/// is full, the host is stopping, the connection was refused, ...) speaks for that
/// attempt alone: it is answered [`CallError::Indeterminate`], to be retried only under
/// the same request id. Answers of a run of the call, or of its request id's record,
/// stand as they are.
fn after_lost_attempt(
    result: Result<Response, CallError>,
    lost: Option<String>,
) -> Result<Response, CallError> {
    let Some(lost) = lost else {
        return result;
    };
    let refusal = match &result {
        Ok(Response::Error(e)) => CallError::from(e.clone()),
        Err(e) => e.clone(),
        Ok(_) => return result,
    };
    if refusal.retry() != Retry::NotApplied {
        return result;
    }
    Err(CallError::Indeterminate(format!(
        "an earlier attempt of this call was lost after it was sent ({lost}) and may have \
         been applied; sent again under the same request id, it was refused: {refusal}"
    )))
}

/// A call on its way: its request's bytes, encoded once for every time it is sent,
/// and the class and object it goes to (which lane it belongs on).
struct Outgoing<'a> {
    /// The postcard bytes of the `Request::Call` (or `Request::ChainCall`).
    message: Vec<u8>,
    lane_key: Option<(&'a str, ObjectId)>,
}

/// What a call goes on: a lane's pipe (on the lane's connection), or (before protocol
/// version 3) the lane's connection, a stream per call, in `version`.
enum Route {
    Pipe(Arc<Lane>, Arc<Pipe>),
    Stream(Arc<Lane>, quinn::Connection, u8),
}

/// The fast route: the call written on its lane's open pipe, found under a read of the
/// lanes and the lane's pipe lock and used in place, without taking a reference to
/// either (no reference count that every caller shares is touched). `None` if the lane
/// has no open pipe: [`route`] then connects, learns the lanes or opens one.
///
/// A pipe ends when its connection does (its reader sees the stream break), and a
/// lane's pipe is taken away when the first connection its lanes came with is lost; a
/// call that still finds one closing is resent under its request id like any call on
/// a pipe that breaks.
fn send_on_open_pipe(inner: &Inner, outgoing: &Outgoing<'_>, deadline: Instant) -> Option<Sent> {
    let lanes = inner.lanes.read().unwrap();
    let lane = match (outgoing.lane_key, lanes.as_ref()) {
        (Some((class, object)), Some((_, lanes))) => pick_lane(inner, lanes, class, &object),
        _ => &inner.main,
    };
    // A pipe that takes no more calls refuses it (`None`) as one that is gone.
    let pipe = lane.pipe.lock().unwrap();
    pipe.as_ref()?.send(&outgoing.message, deadline)
}

/// The route for `request`, connecting, learning the lanes and opening a pipe as
/// needed. `Err(Some(_))` ends the call; `Err(None)` tries again after a pause (why in
/// `last_error`).
async fn route(
    inner: &Arc<Inner>,
    outgoing: &Outgoing<'_>,
    last_error: &mut String,
) -> Result<Route, Option<CallError>> {
    let main = match current(&inner.main) {
        Some(c) => c,
        None => match establish(inner).await {
            Ok(c) => c,
            // Neither a refused token nor a refused certificate fixes itself by
            // retrying.
            Err(ConnectError::Unauthenticated | ConnectError::CertificateRejected(_)) => {
                return Err(Some(CallError::Unauthenticated))
            }
            Err(e) => {
                *last_error = e.to_string();
                return Err(None);
            }
        },
    };
    if !lanes_known(inner, &main) {
        if let Err(Exchange::Lost(m)) = refresh_lanes(inner, &main).await {
            forget(&inner.main, &main);
            *last_error = m;
            return Err(None);
        }
    }
    let mut lane = lane_for(inner, &main, outgoing);
    let conn = if Arc::ptr_eq(&lane, &inner.main) {
        main
    } else {
        match lane_connection(inner, &lane) {
            Some(conn) => conn,
            None => {
                lane = inner.main.clone();
                main
            }
        }
    };
    let version = inner.version.load(Ordering::Acquire);
    if version < wire::PIPE_VERSION {
        return Ok(Route::Stream(lane, conn, version));
    }
    match pipe(inner, &lane, &conn).await {
        Ok(pipe) => Ok(Route::Pipe(lane, pipe)),
        Err(e) => match settle(Err(e), &lane, &conn, version, last_error) {
            Some(Err(e)) => Err(Some(e)),
            _ => Err(None),
        },
    }
}

/// What an exchange on `lane`'s connection `conn` (in protocol `version`) means for
/// the call: its result, or `None` to resend it (the connection forgotten if it broke;
/// why in `last_error`).
fn settle(
    answer: Result<Response, Exchange>,
    lane: &Lane,
    conn: &quinn::Connection,
    version: u8,
    last_error: &mut String,
) -> Option<Result<Response, CallError>> {
    let lost = matches!(answer, Err(Exchange::Lost(_)));
    if lost && (conn.close_reason().is_some() || version < wire::PIPE_VERSION) {
        forget(lane, conn);
    }
    outcome_of(answer, last_error)
}

/// What a call's answer means: its result, or `None` to resend it (why in
/// `last_error`). For a call sent by the fast route nothing more is done on a loss: a
/// lost pipe is closed, and a closed connection is passed over wherever one is looked
/// for ([`current`]), so the next try connects or opens a pipe anew.
fn outcome_of(
    answer: Result<Response, Exchange>,
    last_error: &mut String,
) -> Option<Result<Response, CallError>> {
    match answer {
        Ok(r) => Some(Ok(r)),
        Err(Exchange::Protocol(m)) => Some(Err(CallError::Protocol(m))),
        Err(Exchange::TimedOut) => Some(Err(timed_out(std::mem::take(last_error)))),
        // Not sent: the pipe holds as many unsent calls as it may.
        Err(Exchange::Full) => Some(Err(CallError::Overloaded { retry_after: None })),
        Err(Exchange::Lost(m)) => {
            *last_error = m;
            None
        }
    }
}

/// A call's deadline passed: `Timeout`, or the loss that kept it from an answer.
fn timed_out(last_error: String) -> CallError {
    if last_error.is_empty() {
        CallError::Timeout
    } else {
        CallError::ConnectionLost(last_error)
    }
}

/// The pipe of `lane`'s connection `conn`, opened if it has none (or its last one
/// ended).
async fn pipe(inner: &Inner, lane: &Lane, conn: &quinn::Connection) -> Result<Arc<Pipe>, Exchange> {
    let usable = |lane: &Lane| {
        let pipe = lane.pipe.lock().unwrap();
        pipe.as_ref()
            .filter(|p| p.conn().stable_id() == conn.stable_id() && !p.is_closed())
            .cloned()
    };
    if let Some(pipe) = usable(lane) {
        return Ok(pipe);
    }
    let _opening = lane.opening_pipe.lock().await;
    if let Some(pipe) = usable(lane) {
        return Ok(pipe);
    }
    let pipe = Arc::new(Pipe::open(conn, inner.config.max_frame, &inner.runtime).await?);
    *lane.pipe.lock().unwrap() = Some(pipe.clone());
    Ok(pipe)
}

async fn exchange(
    conn: &quinn::Connection,
    frame: &[u8],
    max_frame: usize,
) -> Result<Response, Exchange> {
    let lost = |e: &dyn std::fmt::Display| Exchange::Lost(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
    send.write_all(frame).await.map_err(|e| lost(&e))?;
    send.finish().map_err(|e| lost(&e))?;
    let bytes = recv
        .read_to_end(wire::stream_limit(max_frame))
        .await
        .map_err(|e| match e {
            quinn::ReadToEndError::TooLong => {
                Exchange::Protocol("response exceeds the frame limit".into())
            }
            other => lost(&other),
        })?;
    wire::decode_frame::<Response>(&bytes, max_frame).map_err(|e| Exchange::Protocol(e.to_string()))
}

/// An untyped reference to one object; generated stubs wrap it.
#[derive(Clone, Debug)]
pub struct ObjectRef {
    client: Client,
    class: Arc<str>,
    id: ObjectId,
    name: Option<Arc<str>>,
    deadline: Duration,
}

impl ObjectRef {
    /// The object's id.
    pub fn id(&self) -> ObjectId {
        self.id
    }

    /// The class name.
    pub fn class(&self) -> &str {
        &self.class
    }

    /// A copy whose calls use `deadline`.
    pub fn with_deadline(&self, deadline: Duration) -> Self {
        ObjectRef {
            deadline,
            ..self.clone()
        }
    }

    /// Call `method` with `args` (a tuple), expecting `T` or the method's error `E`.
    pub async fn call<A, T, E>(
        &self,
        method: &str,
        fingerprint: u64,
        args: &A,
    ) -> Result<T, CallError<E>>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        // One reading of the clock for the request id's time and the deadline.
        let now = Instant::now();
        let deadline = deadline_after(now, self.deadline);
        let bad = |e: postcard::Error| CallError::BadArguments(format!("encoding arguments: {e}"));
        let inner = match &self.client.link {
            Link::Quic(inner) => inner,
            Link::Other(transport, _) => {
                let request = self
                    .try_prepare(method, fingerprint, args, wall_us_at(now))
                    .map_err(bad)?;
                return decode_answer(call_other(transport, request, deadline).await);
            }
        };
        // Over QUIC the request is encoded straight from its parts: no copies of the
        // names, the arguments encoded in place.
        let parts = wire::CallParts {
            request_id: wire::request_id_at(wall_us_at(now)),
            class: &self.class,
            object: self.id,
            name: self.name.as_deref(),
            method,
            fingerprint,
            timeout_ms: self.deadline.as_millis() as u64,
        };
        let message = wire::encode_call_parts(&parts, args)
            .map_err(|e| CallError::BadArguments(format!("encoding arguments: {e}")))?;
        let outgoing = Outgoing {
            message,
            lane_key: Some((&self.class, self.id)),
        };
        decode_answer(call_quic(inner, &outgoing, deadline).await)
    }

    /// Send a prepared request (used to resend a request id deliberately).
    pub async fn call_request<T, E>(&self, request: &CallRequest) -> Result<T, CallError<E>>
    where
        T: DeserializeOwned,
        E: DeserializeOwned,
    {
        let deadline = deadline_after(Instant::now(), self.deadline);
        decode_answer(self.client.call_raw(request, deadline).await)
    }

    /// A request for `method` with a fresh request id, without sending it (to resend
    /// it deliberately with [`ObjectRef::call_request`]). Panics if `args` cannot be
    /// encoded.
    pub fn prepare<A: Serialize + ?Sized>(
        &self,
        method: &str,
        fingerprint: u64,
        args: &A,
    ) -> CallRequest {
        self.try_prepare(method, fingerprint, args, wall_us_at(Instant::now()))
            .expect("encoding arguments")
    }

    /// The request, its id made for the wall-clock time `now_us`.
    fn try_prepare<A: Serialize + ?Sized>(
        &self,
        method: &str,
        fingerprint: u64,
        args: &A,
        now_us: u64,
    ) -> Result<CallRequest, postcard::Error> {
        Ok(CallRequest {
            request_id: crate::wire::request_id_at(now_us),
            class: String::from(&*self.class),
            object: self.id,
            name: self.name.as_deref().map(str::to_owned),
            method: method.to_owned(),
            fingerprint,
            timeout_ms: self.deadline.as_millis() as u64,
            args: postcard::to_stdvec(args)?,
        })
    }
}

/// A call's result from the host's answer: the method's value or its error, decoded.
fn decode_answer<T, E>(answer: Result<Response, CallError>) -> Result<T, CallError<E>>
where
    T: DeserializeOwned,
    E: DeserializeOwned,
{
    match answer.map_err(|e| e.map_app(|n| match n {}))? {
        Response::Return(bytes) => postcard::from_bytes(&bytes)
            .map_err(|e| CallError::Protocol(format!("decoding the result: {e}"))),
        Response::AppError(bytes) => Err(CallError::Application(
            postcard::from_bytes(&bytes)
                .map_err(|e| CallError::Protocol(format!("decoding the error: {e}")))?,
        )),
        Response::Error(e) => Err(e.into()),
        Response::Welcome | Response::Lanes(_) => {
            Err(CallError::Protocol("unexpected answer to a call".into()))
        }
    }
}

/// The wall-clock time at `now` in microseconds since the Unix epoch, for request ids
/// ([`wire::request_id_at`]), without reading the system clock on every call: each
/// thread reads it at most once per [`WALL_CLOCK_REREAD`] of the monotonic clock and
/// moves it on by the monotonic clock in between. So an id's time follows a step of the
/// system clock (or a machine's suspend, which stops the monotonic clock) within that
/// interval (the host finds ids that arrive in order fastest).
fn wall_us_at(now: Instant) -> u64 {
    thread_local! {
        static ANCHOR: std::cell::Cell<Option<(std::time::Instant, u64)>> =
            const { std::cell::Cell::new(None) };
    }
    let now = now.into_std();
    ANCHOR.with(|anchor| match anchor.get() {
        Some((at, wall_us)) if now >= at && now - at < WALL_CLOCK_REREAD => {
            wall_us.saturating_add((now - at).as_micros() as u64)
        }
        _ => {
            let wall_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            anchor.set(Some((now, wall_us)));
            wall_us
        }
    })
}

/// How often (at most) a thread reads the system clock for request ids.
const WALL_CLOCK_REREAD: Duration = Duration::from_secs(1);

/// One item of a followed stream ([`Client::follow`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamItem<T> {
    /// Its sequence number in the stream (from 1): resume after it.
    pub seq: u64,
    /// The item.
    pub item: T,
}

/// A stream being followed over QUIC ([`Client::follow`]): the items after the
/// resume point, in order and each once, then the end. Dropping it stops the
/// follow; the producer carries on. After an error (the connection lost, the host
/// stopping), follow again after the last `seq` received.
pub struct Follower<T> {
    /// Dropping it tells the host to stop (STOP_SENDING); dropped once the follow
    /// has ended (it keeps its connection, and the client's endpoint, open).
    recv: Option<quinn::RecvStream>,
    /// The client's connections stay open while a follower reads on one, even once
    /// every `Client` handle is dropped; let go once the follow has ended.
    client: Option<Arc<Inner>>,
    max_frame: usize,
    last_seq_at_start: u64,
    done: bool,
    _item: std::marker::PhantomData<fn() -> T>,
}

impl<T> std::fmt::Debug for Follower<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("last_seq_at_start", &self.last_seq_at_start)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Follow stream `stream` of object `name` of class `C` from after item `after`
    /// (0: from the first): the items produced so far, then the live tail, then the
    /// end (see `docs/streams.md`). Items are decoded from their JSON form as `T`.
    /// Over QUIC only (a client over another transport gets `Rejected`). Starting the
    /// follow (connecting, and the host's first answer) takes at most the client's
    /// deadline (`ClientConfig::deadline`), else `Timeout` (a follow changes nothing:
    /// start it again at will); the items then come as they are produced.
    pub async fn follow<C: ObjectClass, T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        stream: &str,
        after: u64,
    ) -> Result<Follower<T>, CallError> {
        let deadline = deadline_after(Instant::now(), self.config().deadline);
        tokio::time::timeout_at(deadline, self.start_follow::<C, T>(name, stream, after))
            .await
            .unwrap_or(Err(CallError::Timeout))
    }

    async fn start_follow<C: ObjectClass, T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        stream: &str,
        after: u64,
    ) -> Result<Follower<T>, CallError> {
        let Link::Quic(inner) = &self.link else {
            return Err(CallError::Rejected(
                "following a stream needs a QUIC connection".into(),
            ));
        };
        let request = Request::Follow(wire::FollowRequest {
            class: C::CLASS.to_owned(),
            name: name.to_owned(),
            stream: stream.to_owned(),
            after,
        });
        let conn = match current(&inner.main) {
            Some(c) => c,
            None => establish(inner).await.map_err(|e| match e {
                ConnectError::Unauthenticated | ConnectError::CertificateRejected(_) => {
                    CallError::Unauthenticated
                }
                other => CallError::ConnectionLost(other.to_string()),
            })?,
        };
        let frame = wire::encode_frame_in(&request, inner.version.load(Ordering::Acquire));
        let lost = |e: &dyn std::fmt::Display| CallError::ConnectionLost(e.to_string());
        let (mut send, recv) = conn.open_bi().await.map_err(|e| {
            forget(&inner.main, &conn);
            lost(&e)
        })?;
        send.write_all(&frame).await.map_err(|e| lost(&e))?;
        send.finish().map_err(|e| lost(&e))?;
        let mut follower = Follower {
            recv: Some(recv),
            client: Some(inner.clone()),
            max_frame: inner.config.max_frame,
            last_seq_at_start: 0,
            done: false,
            _item: std::marker::PhantomData,
        };
        match follower.frame().await? {
            wire::StreamFrame::Started { last_seq } => {
                follower.last_seq_at_start = last_seq;
                Ok(follower)
            }
            wire::StreamFrame::UnknownStream => Err(CallError::UnknownStream(format!(
                "object {name:?} of class {} has no stream {stream:?}",
                C::CLASS
            ))),
            wire::StreamFrame::Error(e) => Err(e.into()),
            other => Err(CallError::Protocol(format!(
                "expected the start of a follow, got {other:?}"
            ))),
        }
    }
}

impl<T: serde::de::DeserializeOwned> Follower<T> {
    /// The stream's last sequence number when the follow started.
    pub fn last_seq_at_start(&self) -> u64 {
        self.last_seq_at_start
    }

    /// The next item; `Ok(None)` once the stream has ended.
    pub async fn next(&mut self) -> Result<Option<StreamItem<T>>, CallError> {
        let next = self.next_frame().await;
        if self.done {
            // Ended: the client's connections may close with its last handle.
            self.recv = None;
            self.client = None;
        }
        next
    }

    async fn next_frame(&mut self) -> Result<Option<StreamItem<T>>, CallError> {
        if self.done {
            return Ok(None);
        }
        let frame = self.frame().await;
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                self.done = true;
                return Err(e);
            }
        };
        match frame {
            wire::StreamFrame::Item { seq, json } => {
                let item = serde_json::from_str(&json).map_err(|e| {
                    self.done = true;
                    CallError::Protocol(format!("item {seq} does not decode: {e}"))
                })?;
                Ok(Some(StreamItem { seq, item }))
            }
            wire::StreamFrame::End { .. } => {
                self.done = true;
                Ok(None)
            }
            other => {
                self.done = true;
                Err(match other {
                    wire::StreamFrame::Error(e) => e.into(),
                    wire::StreamFrame::UnknownStream => {
                        CallError::UnknownStream("the stream was deleted".into())
                    }
                    other => CallError::Protocol(format!("unexpected {other:?}")),
                })
            }
        }
    }

    /// The items as a [`futures_util::Stream`], ending after the last item or the
    /// first error.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<StreamItem<T>, CallError>> {
        futures_util::stream::unfold(self, |mut f| async move {
            match f.next().await {
                Ok(Some(item)) => Some((Ok(item), f)),
                Ok(None) => None,
                Err(e) => Some((Err(e), f)),
            }
        })
    }

    /// Read one frame.
    async fn frame(&mut self) -> Result<wire::StreamFrame, CallError> {
        let Some(recv) = self.recv.as_mut() else {
            return Err(CallError::Protocol("the follow has ended".into()));
        };
        let frame = crate::pipe::read_frame(recv, self.max_frame)
            .await
            .map_err(|e| match e {
                Exchange::Lost(m) => CallError::ConnectionLost(m),
                Exchange::Protocol(m) => CallError::Protocol(m),
                Exchange::TimedOut => CallError::Timeout,
                Exchange::Full => CallError::Overloaded { retry_after: None },
            })?;
        wire::decode_frame(&frame, self.max_frame).map_err(|e| CallError::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_list_longer_than_any_host_has_or_naming_port_0_is_not_used() {
        let ip = std::net::IpAddr::from([127, 0, 0, 1]);
        let ports = |n: usize| (1..=n).map(|p| p as u16).collect::<Vec<u16>>();
        let lanes = lanes_at(ip, ports(wire::MAX_LANES));
        assert_eq!(lanes.len(), wire::MAX_LANES);
        assert_eq!(lanes[6].addr, SocketAddr::new(ip, 7));
        assert!(lanes_at(ip, ports(wire::MAX_LANES + 1)).is_empty());
        assert!(lanes_at(ip, ports(60_000)).is_empty());
        assert!(lanes_at(ip, vec![7401, 0]).is_empty());
    }

    #[test]
    fn a_request_ids_time_follows_the_system_clock_and_never_goes_back() {
        let wall = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as u64
        };
        let before = wall(std::time::SystemTime::now());
        let first = wall_us_at(Instant::now());
        std::thread::sleep(Duration::from_millis(20));
        let second = wall_us_at(Instant::now());
        let after = wall(std::time::SystemTime::now());
        // Read through the monotonic clock, the times stay within the system clock's
        // readings around them (a millisecond of slack for the two clocks' rounding).
        assert!(
            first + 1_000 >= before && first <= after + 1_000,
            "{before} {first} {after}"
        );
        assert!(second >= first + 20_000, "{first} {second}");
        assert!(second <= after + 1_000, "{second} {after}");
    }
}
