//! [`Host`]: configure a data directory, a listen address, the classes to serve and
//! the limits, then [`Host::start`] it; [`RunningHost`] reports its address and shuts
//! it down gracefully.

use crate::alarms::{AlarmConfig, AlarmService};
use crate::calls::{Caller, Calls};
use crate::class::{ClassEntry, Hosted};
use crate::clock::{Clock, SystemClock};
use crate::durability::{Durability, WalSync};
use crate::error::HostError;
use crate::files::DirLock;
use crate::gateway::{Deny, Gateway, GatewayConfig, HttpAuth, Pages};
use crate::log::recovery::RecoveryReport;
use crate::log::{HostLog, LogConfig, LogRecord};
use crate::placement::{Placement, SingleHost};
use crate::server::Server;
use crate::shard::{Message, ShardConfig, Shards};
use durable_client::ObjectId;
use durable_client::{wire, ClientConfig, ALPN};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The default [`Limits::max_object_bytes`]: 10 GiB.
pub const DEFAULT_MAX_OBJECT_BYTES: u64 = 10 << 30;

/// Limits a host enforces.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Calls that may wait per object; past it callers get `Overloaded` at once. Default 1,024.
    pub max_queue: usize,
    /// Largest frame accepted, in bytes. Default 4 MiB.
    pub max_frame: usize,
    /// Most calls committed together in one batch (one transaction, one sync). Default 256.
    pub max_batch: usize,
    /// Recent request ids remembered per object for deduplicating retries: at least
    /// this many (up to 63 more are kept). Default 1,000.
    pub request_window: usize,
    /// Shard threads that run turns, 1 to 1,024
    /// ([`MAX_LANES`](durable_client::wire::MAX_LANES)). Default: the number of CPUs.
    pub shards: usize,
    /// Objects idle this long are evicted (their instance dropped, their database
    /// closed); the next call or alarm re-activates them. Default 30 s.
    pub idle_timeout: Duration,
    /// An active object quiet this long closes its database connection: its instance
    /// and in-memory fields stay, and the next call or alarm reopens the file first
    /// (a few hundred microseconds). It gives back the connection's memory (its
    /// statements, schema, and the 32 KiB WAL-index mapping) and its three open
    /// files. An object with an alarm due within 10 s keeps its connection. Default
    /// 10 s; at or above `idle_timeout`, eviction comes first.
    pub connection_idle: Duration,
    /// Most active objects on the host; beyond it the least recently used idle ones
    /// are evicted first. Default 0: as many as the open-file limit allows (each
    /// active object may hold three files: its database, WAL and shared memory), which
    /// the host raises to the most the OS permits at start. A value above what the
    /// limit allows is lowered to fit it, with a warning.
    pub max_active: usize,
    /// A connection must present the token within this time of its handshake, or it
    /// is closed. Default 5 s.
    pub auth_timeout: Duration,
    /// Most connections waiting to authenticate at once, host-wide; past it new ones
    /// are refused. Default 1,024.
    pub max_unauthenticated: usize,
    /// Most connections waiting to authenticate at once from one IP address.
    /// Default 64.
    pub max_unauthenticated_per_ip: usize,
    /// Most calls in flight on the host (admitted and not yet answered, over every
    /// transport); past it callers get `Overloaded` at once. Default 100,000.
    pub max_inflight_calls: usize,
    /// Most bytes of arguments held by calls in flight; past it callers get
    /// `Overloaded` at once. Default 1 GiB.
    pub max_inflight_bytes: usize,
    /// A rate each caller key may sustain on one object (a token bucket); past it
    /// that caller gets `Overloaded` at once. Default: none.
    pub caller_rate: Option<crate::admission::CallerRate>,
    /// Most WebSockets the HTTP gateway holds open at once, host-wide (objects'
    /// sockets and streams' WebSocket followers together); past it upgrades are
    /// refused (503). Default [`crate::DEFAULT_MAX_SOCKETS`].
    pub max_sockets: usize,
    /// The gateway pings each WebSocket this often, without waking its object, and
    /// closes one that answered nothing for two intervals
    /// ([`crate::CLOSE_NO_PONG`]). Zero: no pings. Default 30 s.
    pub ws_ping_interval: Duration,
    /// Most bytes an object's database may hold (its pages in use). A call whose
    /// writes take the object past it is rolled back and answered `ObjectTooLarge`
    /// (not applied); calls that delete still work. Checked when each writing call
    /// ends. Default 10 GiB.
    pub max_object_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_queue: 1024,
            max_frame: wire::DEFAULT_MAX_FRAME,
            max_batch: 256,
            request_window: crate::store::DEFAULT_REQUEST_WINDOW,
            shards: std::thread::available_parallelism()
                .map(|n| n.get().min(durable_client::wire::MAX_LANES))
                .unwrap_or(2),
            idle_timeout: Duration::from_secs(30),
            connection_idle: Duration::from_secs(10),
            max_active: 0,
            auth_timeout: Duration::from_secs(5),
            max_unauthenticated: 1024,
            max_unauthenticated_per_ip: 64,
            max_inflight_calls: 100_000,
            max_inflight_bytes: 1 << 30,
            caller_rate: None,
            max_sockets: crate::sockets::DEFAULT_MAX_SOCKETS,
            ws_ping_interval: Duration::from_secs(30),
            max_object_bytes: DEFAULT_MAX_OBJECT_BYTES,
        }
    }
}

/// Raise this process's open-file limit as far as it may go; returns the soft limit.
fn raise_fd_limit() -> u64 {
    // SAFETY: plain getrlimit/setrlimit on this process.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(lim.rlim_max);
        let want: libc::rlim_t = nr_open.min(1 << 20).max(lim.rlim_max);
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        let soft = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &soft) == 0 {
            return lim.rlim_max;
        }
        lim.rlim_cur
    }
}

/// Descriptors kept for everything but object files: sockets, log segments, the
/// catalog, the alarm index.
const RESERVED_FDS: u64 = 512;

/// The descriptors the object cap leaves for the gateway, one per WebSocket and one
/// per HTTP connection: what is left after [`RESERVED_FDS`] and the object files (for
/// an explicit `max_active`, five per active object, at most half: its three files and
/// a reader's connection to them; else half),
/// three quarters at most to the socket cap and the rest to connections (at most
/// [`crate::gateway::MAX_CONNECTIONS`], at least 64); none without the gateway.
/// Returns (sockets, connections).
fn gateway_fds(gateway: bool, max_sockets: usize, max_active: usize, fds: u64) -> (u64, u64) {
    if !gateway {
        return (0, 0);
    }
    let half = fds.saturating_sub(RESERVED_FDS) / 2;
    let objects = match max_active {
        0 => half,
        n => (n as u64).saturating_mul(5).min(half),
    };
    let budget = fds.saturating_sub(RESERVED_FDS + objects);
    let sockets = (max_sockets as u64).min(budget / 4 * 3);
    let connections = (crate::gateway::MAX_CONNECTIONS as u64)
        .min(budget - sockets)
        .max(64);
    (sockets, connections)
}

/// The active-object cap for a requested `max_active` (0: as many as fit) and the
/// open-file limit `fds`, of which `sockets` are left for WebSockets. Each active
/// object holds three descriptors (database, WAL, shared memory). Said once at
/// start: at `info` when derived, as a warning only when an explicit request had to
/// be lowered.
fn active_cap(requested: usize, fds: u64, sockets: u64) -> usize {
    let fit = (fds.saturating_sub(RESERVED_FDS + sockets) / 3).max(16) as usize;
    if requested == 0 {
        tracing::info!(
            open_files = fds,
            "up to {fit} active objects (3 open files each); idle ones are evicted past it"
        );
        fit
    } else if requested > fit {
        tracing::warn!(
            max_active = requested,
            open_files = fds,
            "max_active lowered to {fit}: 3 open files per active object must fit the open-file limit"
        );
        fit
    } else {
        requested
    }
}

/// Where a host's lanes listen: one QUIC endpoint per shard thread, served by that
/// thread, beside the host's address (see `docs/clients.md`, "Lanes"). The Rust client
/// learns their ports after its hello and sends each call on the lane of the shard
/// that owns the object, which saves the call two hand-offs between threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lanes {
    /// On the host's IP address, at ports the system picks (the default).
    #[default]
    Auto,
    /// On the host's IP address, at this port and the ones after it, one per shard.
    From(u16),
    /// No lanes: every call comes in at the host's address.
    Off,
}

impl std::str::FromStr for Lanes {
    type Err = String;
    fn from_str(s: &str) -> Result<Lanes, String> {
        match s {
            "auto" => Ok(Lanes::Auto),
            "off" => Ok(Lanes::Off),
            port => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .map(Lanes::From)
                .ok_or_else(|| format!("expected auto, off or a first port number, got {s:?}")),
        }
    }
}

/// How committed writes are made durable before replies leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DurabilityMode {
    /// One append-only log for the whole host: one fsync covers the batches of every
    /// object waiting (the default).
    #[default]
    HostLog,
    /// An fsync of each object's own WAL file per batch (the simple baseline).
    ObjectFsync,
}

/// A host of durable objects, before it starts. Made with [`Host::builder`].
pub struct Host {
    data_dir: PathBuf,
    listen: SocketAddr,
    classes: Vec<ClassEntry>,
    limits: Limits,
    tls_names: Vec<String>,
    client_ca: Option<Vec<u8>>,
    require_client_cert: bool,
    durability: DurabilityMode,
    log: LogConfig,
    alarms: AlarmConfig,
    clock: Arc<dyn Clock>,
    placement: Arc<dyn Placement>,
    http: Option<SocketAddr>,
    http_auth: Option<HttpAuth>,
    pages: Pages,
    lanes: Lanes,
    /// The first invalid page path, reported by [`Host::start`].
    page_error: Option<String>,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("data_dir", &self.data_dir)
            .field("listen", &self.listen)
            .field(
                "classes",
                &self.classes.iter().map(|c| c.name).collect::<Vec<_>>(),
            )
            .field("limits", &self.limits)
            .field("client_ca", &self.client_ca.is_some())
            .field("require_client_cert", &self.require_client_cert)
            .field("http", &self.http)
            .field("http_auth", &self.http_auth.is_some())
            .field("pages", &self.pages)
            .finish()
    }
}

impl Host {
    /// A host serving nothing yet, listening on `127.0.0.1:0`, with default limits.
    pub fn builder(data_dir: impl Into<PathBuf>) -> Host {
        Host {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            classes: Vec::new(),
            limits: Limits::default(),
            tls_names: Vec::new(),
            client_ca: None,
            require_client_cert: false,
            durability: DurabilityMode::default(),
            log: LogConfig::default(),
            alarms: AlarmConfig::default(),
            clock: Arc::new(SystemClock),
            placement: Arc::new(SingleHost),
            http: None,
            http_auth: None,
            pages: Pages::default(),
            lanes: Lanes::default(),
            page_error: None,
        }
    }

    /// Where the host's lanes listen ([`Lanes::Auto`] unless set).
    pub fn lanes(mut self, lanes: Lanes) -> Self {
        self.lanes = lanes;
        self
    }

    /// Also serve the HTTP/JSON gateway on this TCP address (off by default):
    /// `POST /v1/objects/{class}/{name}/{method}` with a JSON object of the arguments
    /// by name, `GET /v1/classes` for the list. Requests authenticate with
    /// `Authorization: Bearer TOKEN` (the host token) unless [`Host::http_auth`]
    /// admits them. Plain HTTP: listen on loopback or behind a TLS proxy. See
    /// `docs/gateway.md`.
    pub fn http(mut self, addr: SocketAddr) -> Self {
        self.http = Some(addr);
        self
    }

    /// Install the application's own check of HTTP requests, for callers without the
    /// host token (a public page, say). The gateway calls `check` with the request's
    /// headers and the class it calls (for `GET /v1/classes`: once per class, listing
    /// only the classes it allows); `Ok(caller)` lets the call through as `caller`,
    /// `Err(deny)` answers 401 or 403. A request with the host token is allowed
    /// without asking. Keep it fast: it runs on the request's task.
    ///
    /// ```
    /// # use durable_runtime::{Caller, Deny, Host};
    /// let host = Host::builder("data").http_auth(|headers, class| {
    ///     match (class, headers.get("x-room-key")) {
    ///         ("ChatRoom", Some(_)) => Ok(Caller("chat-guest".into())),
    ///         ("ChatRoom", None) => Err(Deny::unauthenticated("send X-Room-Key")),
    ///         _ => Err(Deny::forbidden("only ChatRoom is public")),
    ///     }
    /// });
    /// ```
    pub fn http_auth(
        mut self,
        check: impl Fn(&http::HeaderMap, &str) -> Result<Caller, Deny> + Send + Sync + 'static,
    ) -> Self {
        self.http_auth = Some(Arc::new(check));
        self
    }

    /// Serve a static page at `path` on the HTTP gateway (`GET`, no token needed):
    /// a small HTML document with its script and style inline, typically
    /// `include_str!`'d, such as the chat room's page at `/chat/`. A path ending in
    /// `/` also answers its bare form with a redirect (`/chat` to `/chat/`). Paths
    /// are absolute, of letters, digits and `/-_.~`, outside `/v1/`; [`Host::start`]
    /// fails on any other. The page's own calls and WebSockets go through the
    /// gateway's auth as any other request: a public page needs a
    /// [`Host::http_auth`] check that admits its classes. Served with a content
    /// security policy that lets the page reach only the host that served it.
    ///
    /// ```
    /// # use durable_runtime::Host;
    /// let host = Host::builder("data").page("/hello/", "<!doctype html><p>hello</p>");
    /// ```
    pub fn page(
        mut self,
        path: impl Into<String>,
        html: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        if let Err(e) = self.pages.add(path.into(), html.into()) {
            self.page_error.get_or_insert(e);
        }
        self
    }

    /// Who serves which object (default: this host serves every object). Consulted
    /// before each call reaches its object.
    pub fn placement(mut self, placement: Arc<dyn Placement>) -> Self {
        self.placement = placement;
        self
    }

    /// Configure alarm delivery: attempts, backoff, concurrency.
    pub fn alarm_config(mut self, config: AlarmConfig) -> Self {
        self.alarms = config;
        self
    }

    /// The clock objects and alarms see (a [`crate::VirtualClock`] in tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The registered classes and their remote methods.
    pub fn describe(&self) -> Vec<(&'static str, Vec<durable_client::MethodInfo>)> {
        self.classes
            .iter()
            .map(|c| {
                let mut methods: Vec<_> = c.methods.values().copied().collect();
                methods.sort_by_key(|(i, _)| *i);
                (c.name, methods.into_iter().map(|(_, m)| m).collect())
            })
            .collect()
    }

    /// The JSON form and wire description of `class.method`, for the `call` command.
    pub(crate) fn json_method(
        &self,
        class: &str,
        method: &str,
    ) -> Result<
        (
            &'static crate::class::JsonMethod,
            durable_client::MethodInfo,
        ),
        (&'static str, String),
    > {
        let entry = self
            .classes
            .iter()
            .find(|c| c.name == class)
            .ok_or_else(|| {
                let known: Vec<_> = self.classes.iter().map(|c| c.name).collect();
                (
                    "unknown_class",
                    format!(
                        "this binary has no class {class:?} (it has {})",
                        known.join(", ")
                    ),
                )
            })?;
        let (_, info) = entry.methods.get(method).ok_or_else(|| {
            (
                "unknown_method",
                format!("class {class} has no remote method {method:?}"),
            )
        })?;
        let json = entry.json.get(method).ok_or_else(|| {
            (
                "unknown_method",
                format!("{class}.{method} has no JSON form"),
            )
        })?;
        Ok((json, *info))
    }

    /// Choose how writes are made durable (default: the host log).
    pub fn durability(mut self, mode: DurabilityMode) -> Self {
        self.durability = mode;
        self
    }

    /// Configure the host log: checkpoint interval and retention.
    pub fn log_config(mut self, config: LogConfig) -> Self {
        self.log = config;
        self
    }

    /// Serve objects of class `T`.
    pub fn register<T: Hosted>(mut self) -> Self {
        self.classes.push(ClassEntry::of::<T>());
        self
    }

    /// The UDP address to listen on.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Replace the limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Change the limits in place.
    pub fn with_limits(mut self, f: impl FnOnce(&mut Limits)) -> Self {
        f(&mut self.limits);
        self
    }

    /// An extra DNS name or IP address for the generated host certificate.
    pub fn tls_name(mut self, name: impl Into<String>) -> Self {
        self.tls_names.push(name.into());
        self
    }

    /// Accept client certificates signed by this certificate authority (`ca_pem`: its
    /// certificate, PEM; several certificates are all trusted) as an alternative to
    /// the token: the host asks each client for a certificate during the TLS
    /// handshake, a connection whose certificate chains to this CA is authenticated
    /// without the token (its hello may carry an empty one), a certificate that does
    /// not verify fails the handshake, and a client that sends none still
    /// authenticates with the token unless [`Host::require_client_cert`] is set.
    /// Without this call the host asks for no certificate, and trusts none: not even
    /// ones signed by its own development CA (`DATA_DIR/tls/ca.pem`), which has to be
    /// named here explicitly to be trusted for clients.
    pub fn client_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> Self {
        self.client_ca = Some(ca_pem.into());
        self
    }

    /// Refuse, in the TLS handshake, every connection without a valid client
    /// certificate: the token alone no longer admits anyone. Needs
    /// [`Host::client_ca`]; [`Host::start`] fails without it.
    pub fn require_client_cert(mut self, require: bool) -> Self {
        self.require_client_cert = require;
        self
    }

    /// Create the data directory and TLS material if needed, start the shards, bind
    /// the QUIC endpoint and start serving. Must be called inside a tokio runtime.
    ///
    /// Turns transparent huge pages off for the whole process, for good (and for the
    /// processes it starts after): a host's threads stalled for milliseconds on the
    /// first touch of each (see `docs/operations.md`).
    pub async fn start(self) -> Result<RunningHost, HostError> {
        let limits = self.limits;
        if limits.max_queue == 0
            || limits.max_batch == 0
            || limits.shards == 0
            || limits.max_frame < 64
        {
            return Err(HostError::Config(format!(
                "limits out of range: {limits:?}"
            )));
        }
        if limits.shards > durable_client::wire::MAX_LANES {
            return Err(HostError::Config(format!(
                "{} shards: a host runs at most {} (one lane each)",
                limits.shards,
                durable_client::wire::MAX_LANES
            )));
        }
        if let Some(e) = self.page_error {
            return Err(HostError::Config(e));
        }
        if !self.pages.is_empty() && self.http.is_none() {
            tracing::warn!(
                "pages are registered but the HTTP gateway is off (--http): they are not served"
            );
        }
        if self.require_client_cert && self.client_ca.is_none() {
            return Err(HostError::Config(
                "requiring client certificates needs a client CA (--client-ca)".into(),
            ));
        }
        let client_roots = self
            .client_ca
            .as_deref()
            .map(crate::tls::client_roots)
            .transpose()?;
        let mut classes: crate::class::NameMap<Arc<ClassEntry>> = Default::default();
        for class in self.classes {
            let name = class.name;
            // The log's records carry the name; a scan of a damaged segment takes only
            // names of this size for records (see `record::MAX_CLASS_NAME`).
            if !(1..=crate::record::MAX_CLASS_NAME).contains(&name.len()) {
                return Err(HostError::Config(format!(
                    "class name {name:?} must be 1 to {} bytes",
                    crate::record::MAX_CLASS_NAME
                )));
            }
            if classes.insert(name, Arc::new(class)).is_some() {
                return Err(HostError::Config(format!("class {name} registered twice")));
            }
        }
        let lock = DirLock::acquire(&self.data_dir).map_err(HostError::Config)?;
        crate::allocator::no_huge_pages();
        crate::store::configure_sqlite();
        // The Prometheus recorder, before anything records (once per process).
        let _ = crate::telemetry::handle();
        let mut limits = limits;
        let fds = raise_fd_limit();
        let (sockets, connections) = gateway_fds(
            self.http.is_some(),
            limits.max_sockets,
            limits.max_active,
            fds,
        );
        limits.max_active = active_cap(limits.max_active, fds, sockets + connections);
        if self.http.is_some() && (sockets as usize) < limits.max_sockets {
            tracing::info!(
                max_sockets = limits.max_sockets,
                open_files = fds,
                "max_sockets lowered to {sockets}: one open file per WebSocket must fit the open-file limit"
            );
            limits.max_sockets = sockets as usize;
        }
        crate::files::create_dirs(&self.data_dir.join("objects"))
            .map_err(|e| HostError::io(format!("creating {}", self.data_dir.display()), e))?;
        let tls = crate::tls::load_or_create(&self.data_dir, &self.tls_names)?;
        crate::restore::clear_scratch(&self.data_dir);
        // `running` stays while a host runs: found at start, the last one stopped
        // uncleanly, and objects are checked against their digests as they activate.
        let running = running_marker(&self.data_dir);
        let unclean_start = running.exists();
        crate::files::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&running)
            .and_then(|_| crate::files::sync_dir(&self.data_dir))
            .map_err(|e| HostError::io("creating the running marker", e))?;
        // Replay the log (whatever the mode: a previous run may have used it) before
        // any object opens.
        let catalog = Arc::new(
            crate::catalog::Catalog::open(&self.data_dir)
                .map_err(|e| HostError::Config(format!("opening the object catalog: {e}")))?,
        );
        let digest_of = |class: &str, id: ObjectId| catalog.digest(class, id).ok().flatten();
        let alarms = AlarmService::new(&self.data_dir, self.alarms.clone(), self.clock.clone())?;
        let mut publish = |replayed: &[(String, ObjectId)], due: &[Option<u64>]| {
            crate::restore::publish_replayed(&self.data_dir, &alarms.index, &catalog, replayed, due)
        };
        let recovery = crate::log::recovery::recover(
            &self.data_dir,
            self.log.retention,
            limits.request_window,
            self.clock.now_ms(),
            unclean_start.then_some(&digest_of as crate::log::recovery::DigestOf<'_>),
            &mut publish,
        )?;
        let also_sync = vec![
            self.data_dir.join("alarms.db"),
            crate::catalog::catalog_path(&self.data_dir),
        ];
        // Which shard threads run: the log's writer waits for them to park.
        let running = Arc::new(crate::running::Running::new());
        let (durability, host_log): (Arc<dyn Durability>, Option<Arc<HostLog>>) =
            match self.durability {
                DurabilityMode::HostLog => {
                    let log = Arc::new(
                        HostLog::start(
                            &self.data_dir,
                            recovery.last_lsn + 1,
                            &self.log,
                            also_sync,
                            self.clock.clone(),
                            running.clone(),
                        )
                        .map_err(|e| HostError::io("starting the host log", e))?,
                    );
                    (log.clone(), Some(log))
                }
                DurabilityMode::ObjectFsync => (Arc::new(WalSync), None),
            };

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| HostError::Tls(e.to_string()))?;
        let builder = match client_roots {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                // A presented certificate that does not chain to the client CA fails
                // the handshake; presenting none is allowed unless required (the
                // token then authenticates, in the hello).
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let verifier = if self.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(
                    verifier
                        .build()
                        .map_err(|e| HostError::Tls(format!("the client CA: {e}")))?,
                )
            }
        };
        let mut server_tls = builder
            .with_single_cert(tls.cert_chain, tls.key)
            .map_err(|e| HostError::Tls(e.to_string()))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        server_tls.max_early_data_size = 0;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)
            .map_err(|e| HostError::Tls(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        // One stream (the hello) until the peer has authenticated: quinn sizes each
        // connection's stream state by this limit, and a connection waiting to
        // authenticate should cost little (54 KB instead of 379 KB at 4,096). The
        // server raises it once the token checks out.
        transport.max_concurrent_bidi_streams(1u32.into());
        transport.max_concurrent_uni_streams(0u32.into());
        wire::tune_transport(&mut transport);
        server_config.transport_config(Arc::new(transport));
        let lane_config = server_config.clone();
        let endpoint = quinn::Endpoint::server(server_config, self.listen)
            .map_err(|e| HostError::io(format!("binding {}", self.listen), e))?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| HostError::io("reading the bound address", e))?;
        if local_addr.ip().is_unspecified() {
            tracing::warn!(addr = %local_addr, "listening on every network interface: any host that can reach this machine can try the token; listen on a specific address unless that is meant");
        }
        let http_listener = self
            .http
            .map(|addr| {
                Gateway::bind(addr)
                    .map_err(|e| HostError::io(format!("binding {addr} (--http)"), e))
            })
            .transpose()?;

        let sockets = Arc::new(crate::sockets::Registry::new(limits.max_sockets));
        let streams = Arc::new(crate::streams::Hub::default());
        // How objects' turns reach other objects of this host: set once `Calls` exists.
        let local: crate::shard::LocalSlot = Default::default();
        // Bound before anything starts: a port in use fails the start with nothing to undo.
        let lane_sockets = bind_lanes(self.lanes, local_addr.ip(), limits.shards)?;
        let shards = Arc::new(
            Shards::start(
                limits.shards,
                ShardConfig {
                    data_dir: self.data_dir.clone(),
                    max_queue: limits.max_queue,
                    max_batch: limits.max_batch,
                    request_window: limits.request_window,
                    durability: durability.clone(),
                    snapshot_every: self.log.retention.map(|_| self.log.snapshot_interval),
                    bookmarks: host_log.clone().map(|l| {
                        Arc::new(move || l.durable_lsn()) as Arc<dyn Fn() -> u64 + Send + Sync>
                    }),
                    classes: classes.clone(),
                    alarms: alarms.clone(),
                    clock: self.clock.clone(),
                    idle_timeout: limits.idle_timeout,
                    connection_idle: limits.connection_idle,
                    max_active: (limits.max_active / limits.shards).max(1),
                    defer_commits: host_log.is_some() && !self.clock.is_virtual(),
                    behind: Default::default(),
                    catalog: catalog.clone(),
                    unclean_start,
                    verified: Default::default(),
                    sockets: Some(sockets.clone()),
                    streams: Some(streams.clone()),
                    local: local.clone(),
                    max_object_bytes: limits.max_object_bytes,
                    // New objects' files, made ahead (host log only: under `--durability
                    // fsync` a new file is synced before its first reply anyway).
                    spares: host_log
                        .as_ref()
                        .and_then(|_| crate::store::template())
                        .and_then(|t| match crate::spares::Spares::start(&self.data_dir, t, crate::store::preopen) {
                            Ok(s) => Some(s),
                            Err(e) => {
                                tracing::warn!(error = %e, "no spare object files (new objects create theirs)");
                                None
                            }
                        }),
                },
                running,
            )
            .map_err(|e| HostError::io("starting shard threads", e))?,
        );
        let deliver = {
            let shards = shards.clone();
            let alarms = alarms.clone();
            move |class: &'static str, id: ObjectId| {
                if shards
                    .send_message(class, id, Message::Alarm(class, id))
                    .is_err()
                {
                    alarms.wake_done();
                }
            }
        };
        let scheduler = tokio::spawn(alarms.clone().run(
            deliver,
            classes.keys().map(|c| (c.to_string(), *c)).collect(),
        ));
        let calls = Arc::new(Calls::new(
            classes,
            shards.clone(),
            self.clock.clone(),
            self.placement.clone(),
            crate::admission::Admission::new(
                limits.max_inflight_calls,
                limits.max_inflight_bytes,
                limits.caller_rate,
            ),
        ));
        // Read-only calls run beside turns only under the host log (with `--durability
        // fsync` they queue as turns): only then may they enter an object whose turn
        // waits on its caller.
        calls.set_reentrant_reads(durability.captures_changes());
        let _ = local.set(Arc::new(crate::calls::LocalEntry(Arc::downgrade(&calls))));
        let gateway = http_listener
            .map(|listener| {
                Gateway::start(
                    listener,
                    GatewayConfig {
                        calls: calls.clone(),
                        token: tls.token.clone(),
                        auth: self.http_auth.clone(),
                        max_body: limits.max_frame,
                        sockets: sockets.clone(),
                        pages: self.pages.clone(),
                        ping_interval: limits.ws_ping_interval,
                        streams: streams.clone(),
                        max_connections: connections as usize,
                    },
                )
            })
            .transpose();
        let gateway = match gateway {
            Ok(gateway) => gateway,
            Err(e) => {
                abandon_start(None, &endpoint, scheduler, shards, durability.clone()).await;
                return Err(HostError::io("starting the HTTP gateway", e));
            }
        };
        let server = Arc::new(Server {
            lanes: lane_sockets.iter().map(|(_, addr)| addr.port()).collect(),
            edge: crate::answer::Edge::new(calls.clone(), limits.max_frame),
            token: tls.token,
            caller: Arc::new(Caller("host-token".into())),
            auth: crate::server::AuthLimits::new(
                limits.auth_timeout,
                limits.max_unauthenticated,
                limits.max_unauthenticated_per_ip,
            ),
            hub: streams.clone(),
        });
        let lanes = match start_lanes(&shards, &server, lane_config, lane_sockets).await {
            Ok(lanes) => LaneEndpoints(lanes),
            Err(e) => {
                abandon_start(gateway, &endpoint, scheduler, shards, durability.clone()).await;
                return Err(e);
            }
        };
        let acceptor = tokio::spawn(
            server
                .clone()
                .accept_loop(endpoint.clone(), crate::server::EndpointKind::Address),
        );
        tracing::info!(
            addr = %local_addr,
            data_dir = %self.data_dir.display(),
            shards = limits.shards,
            network_threads = tokio::runtime::Handle::current().metrics().num_workers(),
            lanes = ?server.lanes,
            log_writes = %host_log.as_ref().map_or("none", |l| l.writes()),
            "host started"
        );
        Ok(RunningHost {
            endpoint,
            lanes,
            server,
            gateway,
            calls,
            acceptor,
            local_addr,
            data_dir: self.data_dir,
            durability,
            host_log,
            recovery,
            alarms,
            scheduler,
            _lock: lock,
        })
    }
}

/// Stop what a start that failed part way had started: nothing was answered yet, so
/// as a crash would.
async fn abandon_start(
    gateway: Option<Gateway>,
    endpoint: &quinn::Endpoint,
    scheduler: tokio::task::JoinHandle<()>,
    shards: Arc<Shards>,
    durability: Arc<dyn Durability>,
) {
    if let Some(gateway) = gateway {
        gateway.abort().await;
    }
    endpoint.close(0u32.into(), b"host failed to start");
    stop_work(scheduler, shards, durability, false).await;
}

/// Stop the alarm scheduler, then, off the async runtime, the shards (`clean`: they
/// finish their queues; else they drop them, as a crash would) and the durability
/// component: the end of every stop, and of a start that failed part way.
async fn stop_work(
    scheduler: tokio::task::JoinHandle<()>,
    shards: Arc<Shards>,
    durability: Arc<dyn Durability>,
    clean: bool,
) {
    scheduler.abort();
    let _ = scheduler.await;
    let _ = tokio::task::spawn_blocking(move || {
        shards.shutdown(clean);
        durability.shutdown(clean);
    })
    .await;
}

/// The lanes' endpoints, closed when dropped: their tasks run on the shard threads and
/// hold the server, whose calls hold the shards' channels, so a host dropped without
/// [`RunningHost::shutdown`] would otherwise keep its shard threads forever.
#[derive(Debug)]
struct LaneEndpoints(Vec<quinn::Endpoint>);

impl LaneEndpoints {
    /// Close every lane's endpoint and its connections.
    fn close(&self) {
        for lane in &self.0 {
            lane.close(0u32.into(), b"host shutting down");
        }
    }
}

impl Drop for LaneEndpoints {
    fn drop(&mut self) {
        self.close();
    }
}

/// Bind the UDP sockets of `shards` lanes on `ip` (none with [`Lanes::Off`]).
fn bind_lanes(
    lanes: Lanes,
    ip: std::net::IpAddr,
    shards: usize,
) -> Result<Vec<(std::net::UdpSocket, SocketAddr)>, HostError> {
    let first = match lanes {
        Lanes::Off => return Ok(Vec::new()),
        Lanes::Auto => None,
        Lanes::From(port) => Some(port),
    };
    (0..shards)
        .map(|i| {
            let port = match first {
                None => 0,
                Some(p) => u16::try_from(usize::from(p) + i).map_err(|_| {
                    HostError::Config(format!("--lanes {p}: {shards} lanes run past port 65535"))
                })?,
            };
            let addr = SocketAddr::new(ip, port);
            let socket = std::net::UdpSocket::bind(addr)
                .map_err(|e| HostError::io(format!("binding lane {i} at {addr}"), e))?;
            let bound = socket
                .local_addr()
                .map_err(|e| HostError::io("reading a lane's bound address", e))?;
            Ok((socket, bound))
        })
        .collect()
}

/// Make each lane's endpoint on its shard's thread and start accepting there.
async fn start_lanes(
    shards: &Shards,
    server: &Arc<Server>,
    config: quinn::ServerConfig,
    sockets: Vec<(std::net::UdpSocket, SocketAddr)>,
) -> Result<Vec<quinn::Endpoint>, HostError> {
    let mut made = Vec::with_capacity(sockets.len());
    for (i, (socket, addr)) in sockets.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = server.clone();
        let config = config.clone();
        let setup = Box::new(move || {
            let endpoint = quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                Some(config),
                socket,
                Arc::new(quinn::TokioRuntime),
            );
            if let Ok(endpoint) = &endpoint {
                // Spawned from the shard's thread: the endpoint's connections, streams
                // and pipes are tasks of the shard's runtime.
                tokio::spawn(
                    server.accept_loop(endpoint.clone(), crate::server::EndpointKind::Lane),
                );
            }
            let _ = tx.send(endpoint);
        });
        let stopped = || std::io::Error::other("the shard stopped");
        let made_one = match shards.run_on(i, setup) {
            Ok(()) => rx.await.map_err(|_| stopped()),
            Err(()) => Err(stopped()),
        };
        let endpoint = made_one
            .and_then(|e| e)
            .map_err(|e| HostError::io(format!("starting lane {i} at {addr}"), e))?;
        made.push(endpoint);
    }
    Ok(made)
}

/// `DATA_DIR/running`: present while a host runs (see [`Host::start`]).
fn running_marker(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("running")
}

/// A started host.
#[derive(Debug)]
pub struct RunningHost {
    endpoint: quinn::Endpoint,
    /// The lanes' endpoints, in shard order.
    lanes: LaneEndpoints,
    server: Arc<Server>,
    gateway: Option<Gateway>,
    calls: Arc<Calls>,
    acceptor: tokio::task::JoinHandle<()>,
    local_addr: SocketAddr,
    data_dir: PathBuf,
    durability: Arc<dyn Durability>,
    host_log: Option<Arc<HostLog>>,
    recovery: RecoveryReport,
    alarms: Arc<AlarmService>,
    scheduler: tokio::task::JoinHandle<()>,
    _lock: DirLock,
}

impl std::fmt::Debug for dyn Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Durability")
    }
}

impl std::fmt::Debug for HostLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostLog")
            .field("durable_lsn", &self.durable_lsn())
            .finish()
    }
}

impl std::fmt::Debug for AlarmService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlarmService").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Calls").finish_non_exhaustive()
    }
}

impl RunningHost {
    /// The address the host listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The addresses of the host's lanes, in shard order (empty with [`Lanes::Off`]).
    pub fn lane_addrs(&self) -> Vec<SocketAddr> {
        self.lanes
            .0
            .iter()
            .filter_map(|e| e.local_addr().ok())
            .collect()
    }

    /// The TCP address the HTTP gateway listens on, if [`Host::http`] turned it on.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.gateway.as_ref().map(Gateway::local_addr)
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// What recovery found and replayed when this host started.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Checkpoint the host log now (make changed object files durable, retire covered
    /// segments); returns the checkpoint lsn. `None` without a host log.
    pub fn checkpoint(&self) -> Option<std::io::Result<u64>> {
        self.host_log.as_ref().map(|l| l.checkpoint())
    }

    /// The highest durable lsn of the host log (`None` without one). A turn's writes
    /// are at or below this once its caller has the reply.
    pub fn durable_lsn(&self) -> Option<u64> {
        self.host_log.as_ref().map(|l| l.durable_lsn())
    }

    /// Every log record from now on, as it becomes durable (the in-process change
    /// feed; decode changesets with `rusqlite::session`). `None` without a host log.
    pub fn subscribe_changes(&self) -> Option<tokio::sync::broadcast::Receiver<Arc<LogRecord>>> {
        self.host_log.as_ref().map(|l| l.subscribe())
    }

    /// A client config that trusts this host and carries its token.
    pub fn client_config(&self) -> std::io::Result<ClientConfig> {
        ClientConfig::from_data_dir(self.local_addr, &self.data_dir)
    }

    /// Graceful shutdown: refuse new calls, let calls in flight finish (up to 30 s),
    /// close connections, then finish every queued turn and close every database.
    /// Nothing acknowledged is lost.
    pub async fn shutdown(mut self) {
        self.calls.drain(Duration::from_secs(30)).await;
        // Every answer written and acknowledged before the endpoint closes.
        self.server.drain(Duration::from_secs(5)).await;
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown(Duration::from_secs(5)).await;
        }
        self.stop(true).await;
    }

    /// Stop as a crash would, for tests: connections drop, queued calls and alarm
    /// wakes are abandoned, no final checkpoint. Committed writes are durable; the next
    /// start replays the log.
    pub async fn crash(self) {
        self.stop(false).await;
    }

    async fn stop(mut self, clean: bool) {
        if let Some(gateway) = self.gateway.take() {
            gateway.abort().await;
        }
        self.endpoint.close(0u32.into(), b"host shutting down");
        self.lanes.close();
        if clean {
            let idle = futures_util::future::join_all(
                std::iter::once(&self.endpoint)
                    .chain(&self.lanes.0)
                    .map(|e| e.wait_idle()),
            );
            let _ = tokio::time::timeout(Duration::from_secs(2), idle).await;
        }
        self.acceptor.abort();
        let _ = self.acceptor.await;
        stop_work(
            self.scheduler,
            self.calls.shards.clone(),
            self.durability,
            clean,
        )
        .await;
        // After a checkpoint's sync failed, the next start checks the objects' files
        // as after a crash (the marker stays).
        let halted = self
            .host_log
            .as_ref()
            .is_some_and(|l| l.checkpoints_halted());
        if clean && !halted {
            let _ = std::fs::remove_file(running_marker(&self.data_dir));
            let _ = crate::files::sync_dir(&self.data_dir);
        }
    }

    /// Deliver every alarm due at the clock's current time and wait for their turns to
    /// finish (used by the test harness after moving a virtual clock).
    pub async fn settle_alarms(&self) {
        self.alarms.settle().await;
    }

    /// The earliest pending alarm due time on this host, if any.
    pub async fn next_alarm_due(&self) -> Option<std::time::SystemTime> {
        self.alarms.next_due().await.map(crate::clock::time_of)
    }

    /// Call a method on an object in-process, through the same entry the QUIC edge
    /// uses: class, method, schema and placement are checked, the call queues on its
    /// object, and the reply comes once its writes are durable. `request.args` is the
    /// postcard encoding of the arguments; `caller` names who is calling.
    pub async fn call(&self, request: wire::CallRequest, caller: &Caller) -> wire::Response {
        self.calls.call(request, caller).await
    }

    /// A client whose calls this host answers directly, in process, as `caller`: the
    /// same typed stubs as over QUIC, without sockets or TLS (the test harness uses
    /// it). Its calls fail with `ShuttingDown` once the host stops.
    pub fn local_client(&self, caller: Caller) -> durable_client::Client {
        let transport = crate::calls::Local {
            calls: self.calls.clone(),
            caller,
        };
        durable_client::Client::over(
            Arc::new(transport),
            durable_client::ClientConfig::new(self.local_addr, Vec::new(), String::new()),
        )
    }

    /// Evict the object if it is active and idle; returns whether it was active.
    pub async fn evict(&self, class: &str, id: ObjectId) -> bool {
        let Some(entry) = self.calls.classes.get(class) else {
            return false;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self
            .calls
            .shards
            .send_message(class, id, Message::Evict(entry.name, id, tx))
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_cap_leaves_room_for_websockets_and_connections_when_the_gateway_is_on() {
        assert_eq!(gateway_fds(false, 16_384, 0, 20_000), (0, 0));
        assert_eq!(active_cap(0, 20_000, 0), 6_496);
        let (sockets, connections) = gateway_fds(true, 16_384, 0, 20_000);
        assert_eq!((sockets, connections), (7_308, 2_436));
        assert_eq!(active_cap(0, 20_000, sockets + connections), 3_248);
        // A small socket cap takes only what it needs; connections the rest.
        assert_eq!(gateway_fds(true, 100, 0, 20_000), (100, 9_644));
        // An explicit object cap leaves the gateway the rest: a host of sockets with
        // one active object (the bench's memory_socket) holds 10,000 of them.
        let (sockets, connections) = gateway_fds(true, 16_384, 1, 20_000);
        assert_eq!((sockets, connections), (14_610, 4_873));
        assert_eq!(active_cap(1, 20_000, sockets + connections), 1);
        let (sockets, connections) = gateway_fds(true, 100, 50, 20_000);
        assert_eq!((sockets, connections), (100, 16_384));
        // Objects keep room for their readers' connections.
        let (sockets, connections) = gateway_fds(true, 16_384, 1_000, 20_000);
        assert_eq!(sockets + connections, 20_000 - 512 - 5_000);
        assert_eq!(active_cap(50, 20_000, sockets + connections), 50);
        // But never more than half of the files for a large one.
        assert_eq!(gateway_fds(true, 16_384, 100_000, 20_000), (7_308, 2_436));
        // With the usual limit, the defaults stand.
        assert_eq!(gateway_fds(true, 16_384, 0, 1 << 20), (16_384, 16_384));
        // A tiny limit still takes some connections.
        assert_eq!(gateway_fds(true, 16_384, 0, 600), (33, 64));
    }
}
