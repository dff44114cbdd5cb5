//! The baselines: Redis (`appendfsync always`), PostgreSQL (synchronous commit), the
//! raw `fdatasync` rate of the disk, a bare quinn echo server (a stream per request, or one stream), and workerd
//! (Cloudflare's open-source Durable Objects runtime) with SQLite-backed objects on disk.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A child process killed on drop.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.exists())
}

/// Start `redis-server` with `appendonly yes` and `appendfsync always`, or say why not.
pub async fn start_redis(dir: &Path) -> Result<Server, String> {
    let bin = which("redis-server")
        .ok_or("redis-server is not installed (apt-get install redis-server)")?;
    let port = free_port();
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
        ])
        .args([
            "--appendfsync",
            "always",
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("starting redis-server: {e}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = Server { child, addr };
    wait_for_tcp(addr).await?;
    Ok(server)
}

async fn wait_for_tcp(addr: SocketAddr) -> Result<(), String> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("nothing listens on {addr} after 20 s"))
}

/// `INCR key` over RESP; returns the new value.
pub async fn redis_incr(
    conn: &mut tokio::net::TcpStream,
    key: &str,
    buf: &mut Vec<u8>,
) -> std::io::Result<i64> {
    let cmd = format!("*2\r\n$4\r\nINCR\r\n${}\r\n{}\r\n", key.len(), key);
    conn.write_all(cmd.as_bytes()).await?;
    buf.clear();
    loop {
        let mut chunk = [0u8; 64];
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.ends_with(b"\r\n") {
            break;
        }
    }
    let line = std::str::from_utf8(buf).map_err(|e| std::io::Error::other(e.to_string()))?;
    line.trim_end()
        .strip_prefix(':')
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected redis reply {line:?}")))
}

/// Start a PostgreSQL server (as the `postgres` user) with `fsync=on` and
/// `synchronous_commit=on`, or say why not.
pub async fn start_postgres(dir: &Path) -> Result<(Server, u16), String> {
    let bin = [
        "/usr/lib/postgresql/17/bin",
        "/usr/lib/postgresql/16/bin",
        "/usr/lib/postgresql/15/bin",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.join("postgres").exists())
    .ok_or("the PostgreSQL server is not installed (apt-get install postgresql)")?;
    let data = dir.join("pgdata");
    let sock = dir.join("pgsock");
    std::fs::create_dir_all(&sock).map_err(|e| e.to_string())?;
    let as_root = unsafe { libc::geteuid() } == 0;
    if as_root {
        Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .map_err(|e| format!("chown: {e}"))?;
    }
    // As root, run the programs as the `postgres` user directly (not through
    // `runuser`), so that the child the bench stops is the postmaster itself.
    let postgres_ids = if as_root {
        let user = unsafe { libc::getpwnam(c"postgres".as_ptr()) };
        if user.is_null() {
            return Err("no postgres user to run the server as".into());
        }
        Some(unsafe { ((*user).pw_uid, (*user).pw_gid) })
    } else {
        None
    };
    let run = |program: &Path| {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        if let Some((uid, gid)) = postgres_ids {
            c.uid(uid).gid(gid);
        }
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let ok = run(&bin.join("initdb"))
        .args(["-A", "trust", "-U", "postgres", "-D"])
        .arg(&data)
        .status()
        .map_err(|e| format!("initdb: {e}"))?;
    if !ok.success() {
        return Err("initdb failed".into());
    }
    let port = free_port();
    let child = run(&bin.join("postgres"))
        .arg("-D")
        .arg(&data)
        .args([
            "-p",
            &port.to_string(),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "fsync=on",
        ])
        .args([
            "-c",
            "synchronous_commit=on",
            "-c",
            "max_connections=200",
            "-k",
        ])
        .arg(&sock)
        .spawn()
        .map_err(|e| format!("starting postgres: {e}"))?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let server = Server { child, addr };
    wait_for_tcp(addr).await?;
    // Accepting TCP comes slightly before accepting logins.
    for _ in 0..100 {
        if pg_connect(port).await.is_ok() {
            return Ok((server, port));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("postgres did not accept connections".into())
}

/// A PostgreSQL connection to the benchmark server.
pub async fn pg_connect(port: u16) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    Ok(client)
}

/// Writes of 64 bytes, each followed by `fdatasync`, from one thread, for `secs`:
/// the disk's sync rate per second.
pub fn fdatasync_rate(dir: &Path, secs: f64) -> Result<f64, String> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&[7u8; 64]).map_err(|e| e.to_string())?;
        f.sync_data().map_err(|e| e.to_string())?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Ok(rate)
}

/// `__quinn-echo DIR`: a bare quinn server, same TLS setup as a durable host (TLS 1.3,
/// a certificate from rcgen), echoing each bidirectional stream's bytes as they come
/// (a stream per request, or many requests on one stream as durable's pipe).
pub fn quinn_echo_server() -> ExitCode {
    let dir = PathBuf::from(std::env::args().nth(2).expect("__quinn-echo DIR"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("echo.der"), cert.cert.der()).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        tls.alpn_protocols = vec![b"echo".to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = quinn::TransportConfig::default();
        transport.max_concurrent_bidi_streams(4096u32.into());
        config.transport_config(Arc::new(transport));
        let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        println!("listening on {}", endpoint.local_addr().unwrap());
        let _ = std::io::stdout().flush();
        while let Some(incoming) = endpoint.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        while let Ok(Some(chunk)) = recv.read_chunk(1 << 16, true).await {
                            if send.write_all(&chunk.bytes).await.is_err() {
                                return;
                            }
                        }
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    ExitCode::SUCCESS
}

/// Spawn this binary with `args` and read its `listening on ADDR` line.
pub fn spawn_self(args: &[&std::ffi::OsStr], env: &[(&str, &str)]) -> Result<Server, String> {
    spawn_self_lines(args, env, 1).map(|(server, _)| server)
}

/// Like [`spawn_self`], also returning the `extra` stdout lines that follow the first
/// (a host with `--http` prints `http listening on ADDR` next).
pub fn spawn_self_lines(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    lines: usize,
) -> Result<(Server, Vec<String>), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).map_err(|e| e.to_string())?;
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or_else(|| format!("unexpected first line {line:?}"))?
        .parse()
        .map_err(|e| format!("{e}"))?;
    let mut more = Vec::new();
    for _ in 1..lines {
        let mut next = String::new();
        out.read_line(&mut next).map_err(|e| e.to_string())?;
        more.push(next.trim().to_string());
    }
    Ok((Server { child, addr }, more))
}

impl Server {
    /// Resident set size of the process, in bytes.
    pub fn rss(&self) -> u64 {
        self.status_kb("VmRSS:") * 1024
    }

    /// Its file-backed resident memory in bytes (mapped files: SQLite's WAL indexes).
    pub fn rss_file(&self) -> u64 {
        self.status_kb("RssFile:") * 1024
    }

    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM and wait.
    pub fn stop(self) {
        self.stop_with(libc::SIGTERM);
    }

    /// Send `signal` and wait for the process to exit (PostgreSQL: `SIGINT` is its
    /// fast shutdown, which does not wait for clients to disconnect).
    pub fn stop_with(mut self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let _ = self.child.wait();
    }
}

/// A quinn client endpoint trusting the echo server's certificate.
pub fn quinn_echo_client(dir: &Path) -> quinn::Endpoint {
    let der = std::fs::read(dir.join("echo.der")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(der))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"echo".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint
}

/// A quinn client endpoint trusting a durable host's CA (`DATA_DIR/tls/ca.pem`), for
/// connections that complete the handshake and then say nothing.
pub fn raw_host_client(data_dir: &Path) -> Result<quinn::Endpoint, String> {
    use rustls::pki_types::pem::PemObject;
    let pem = std::fs::read(data_dir.join("tls/ca.pem")).map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![durable::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).map_err(|e| e.to_string())?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    Ok(endpoint)
}

/// CPU time (user + system) the process `pid` has used so far, in seconds, from
/// `/proc/PID/stat` (its own threads, not its children).
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: count the
    // fields after its closing parenthesis, where field 3 (the state) comes first.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// Resident set size of process `pid`, in bytes (`VmRSS` of `/proc/PID/status`).
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kb * 1024)
}

/// Where the workerd baseline lives: its config, worker and npm install.
pub fn workerd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("workerd")
}

/// What the bench prints when workerd is missing.
pub const WORKERD_MISSING: &str = "workerd: not installed (run durable-bench/workerd/install.sh)";

/// The workerd executable installed by `durable-bench/workerd/install.sh`, if any.
///
/// `node_modules/.bin/workerd` says whether it is installed. The platform package's
/// native binary is preferred when present, so that the process the bench measures is
/// workerd itself and not a Node.js launcher in front of it.
pub fn workerd_binary() -> Option<PathBuf> {
    let modules = workerd_dir().join("node_modules");
    let bin = modules.join(".bin/workerd");
    if !bin.exists() {
        return None;
    }
    let native = std::fs::read_dir(modules.join("@cloudflare"))
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("workerd-"))
        .map(|e| e.path().join("bin/workerd"))
        .find(|p| p.exists());
    Some(native.unwrap_or(bin))
}

/// Start `workerd serve` on `durable-bench/workerd/config.capnp`: a front worker on a
/// free loopback port, its Durable Objects stored under `dir/do`. Returns once it
/// answers HTTP.
pub async fn start_workerd(bin: &Path, dir: &Path) -> Result<Server, String> {
    let storage = dir.join("do");
    std::fs::create_dir_all(&storage).map_err(|e| e.to_string())?;
    let log_path = dir.join("workerd.log");
    let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(bin)
        .arg("serve")
        .arg(workerd_dir().join("config.capnp"))
        .arg("--socket-addr")
        .arg(format!("http={addr}"))
        .arg("--directory-path")
        .arg(format!("do-disk={}", storage.display()))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting workerd: {e}"))?;
    let mut server = Server { child, addr };
    let start = Instant::now();
    loop {
        if let Ok(mut conn) = Http::connect(addr).await {
            if let Ok((200, _)) = conn.call("GET", "/ready").await {
                return Ok(server);
            }
        }
        let exited = server.child.try_wait().ok().flatten();
        if exited.is_some() || start.elapsed() > Duration::from_secs(30) {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            let why = match exited {
                Some(status) => format!("workerd exited ({status})"),
                None => format!("workerd does not answer on {addr} after 30 s"),
            };
            return Err(format!("{why}: {}", tail.join(" / ")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A minimal HTTP/1.1 keep-alive client for the bench's load generator: one request at
/// a time on one connection, bodies with a `Content-Length` only.
pub struct Http {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Http {
    /// Connect to `addr`.
    pub async fn connect(addr: SocketAddr) -> std::io::Result<Http> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Http {
            stream,
            buf: Vec::with_capacity(1024),
        })
    }

    /// Send `METHOD path` with an empty body; returns the status and the body.
    pub async fn call(&mut self, method: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        self.request(method, path, "", b"").await
    }

    /// Send `METHOD path` with extra header lines (each ending in `\r\n`) and a body;
    /// returns the status and the body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        self.stream.write_all(&request).await?;
        let bad = |what: &str| std::io::Error::other(format!("bad HTTP response: {what}"));
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| bad("not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad("status line"))?;
        let mut length = None;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                return Err(bad("chunked bodies are not supported"));
            }
        }
        let length = length.ok_or_else(|| bad("no Content-Length"))?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let body = self.buf[head_end..head_end + length].to_vec();
        self.buf.drain(..head_end + length);
        Ok((status, body))
    }

    /// `call`, expecting a 200 with an integer body.
    pub async fn call_int(&mut self, method: &str, path: &str) -> Result<i64, String> {
        let (status, body) = self
            .call(method, path)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let text = String::from_utf8_lossy(&body);
        match (status, text.trim().parse()) {
            (200, Ok(v)) => Ok(v),
            _ => Err(format!("{method} {path}: {status} {text:?}")),
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// `__ws-fanout`: the baseline of `broadcast_1000`, a bare axum WebSocket server
/// doing what a hand-written chat server does: every socket gets a bounded queue and
/// a writer task, and each text message from any socket is pushed to every socket's
/// queue (the sender's too). No storage, no turns, no durability. Its sockets read
/// through a 4 KiB buffer and send without Nagle's delay, as the gateway's do.
pub fn ws_fanout_server() -> ExitCode {
    use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
    use futures_util::{SinkExt, StreamExt};
    use std::sync::Mutex;
    type Sockets = Arc<Mutex<Vec<tokio::sync::mpsc::Sender<Message>>>>;
    async fn socket(ws: WebSocket, sockets: Sockets) {
        let (mut sink, mut stream) = ws.split();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(1024);
        sockets.lock().unwrap().push(tx);
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(m)) = stream.next().await {
            if let Message::Text(t) = m {
                let all = sockets.lock().unwrap();
                for s in all.iter() {
                    let _ = s.try_send(Message::Text(t.clone()));
                }
            }
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let sockets: Sockets = Arc::default();
        let app = axum::Router::new().route(
            "/ws",
            axum::routing::get(move |up: WebSocketUpgrade| {
                let sockets = sockets.clone();
                // The same read buffer as the gateway's (tungstenite zero-fills its
                // default 128 KiB before each read).
                async move {
                    up.read_buffer_size(4096)
                        .on_upgrade(move |ws| socket(ws, sockets))
                }
            }),
        );
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        let _ = std::io::stdout().flush();
        // Without Nagle's algorithm, as the gateway's sockets.
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let _ = axum::serve(listener, app).await;
    });
    ExitCode::SUCCESS
}

/// Raise this process's open-file limit to its hard limit (children inherit it):
/// the WebSocket scenarios hold thousands of sockets.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur
}
