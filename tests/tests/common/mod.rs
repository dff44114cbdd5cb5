//! Shared by the cross-process tests: start the real host binary on a data directory,
//! read its address from its first stdout line (and, with `--http`, the gateway's from
//! the second), connect clients, kill it with SIGKILL.
#![allow(dead_code)]

pub mod browser;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

pub struct HostProcess {
    pub child: Child,
    pub addr: SocketAddr,
    /// The HTTP gateway's address, when started with `--http`.
    pub http: Option<SocketAddr>,
    pub data_dir: PathBuf,
}

impl HostProcess {
    /// Start `durable-test-host serve` on `data_dir` with extra flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> HostProcess {
        Self::start_logged(data_dir, extra, None)
    }

    /// Start on a given address (to restart a host where its clients expect it).
    pub fn start_on(data_dir: &Path, listen: SocketAddr) -> HostProcess {
        Self::spawn(data_dir, &listen.to_string(), &[], None)
    }

    /// Like [`HostProcess::start_on`], with extra flags.
    pub fn start_on_with(data_dir: &Path, listen: SocketAddr, extra: &[&str]) -> HostProcess {
        Self::spawn(data_dir, &listen.to_string(), extra, None)
    }

    /// Like [`HostProcess::start`], writing the host's stderr (its log) to `log`.
    pub fn start_logged(data_dir: &Path, extra: &[&str], log: Option<&Path>) -> HostProcess {
        Self::spawn(data_dir, "127.0.0.1:0", extra, log)
    }

    /// Like [`HostProcess::start`], with environment variables for the host.
    pub fn start_with_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> HostProcess {
        Self::spawn_env(data_dir, "127.0.0.1:0", extra, None, env)
    }

    fn spawn(data_dir: &Path, listen: &str, extra: &[&str], log: Option<&Path>) -> HostProcess {
        Self::spawn_env(data_dir, listen, extra, log, &[])
    }

    /// Like [`HostProcess::start`], with the host's open-file limit (soft and hard)
    /// set to `nofile`, as `ulimit -n` would.
    pub fn start_with_nofile(data_dir: &Path, extra: &[&str], nofile: u64) -> HostProcess {
        Self::spawn_limited(data_dir, "127.0.0.1:0", extra, None, &[], Some(nofile))
    }

    fn spawn_env(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> HostProcess {
        Self::spawn_limited(data_dir, listen, extra, log, env, None)
    }

    fn spawn_limited(
        data_dir: &Path,
        listen: &str,
        extra: &[&str],
        log: Option<&Path>,
        env: &[(&str, &str)],
        nofile: Option<u64>,
    ) -> HostProcess {
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path).unwrap()),
            None => Stdio::inherit(),
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_durable-test-host"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs in the child
            // between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", listen])
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning the host");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut read_addr = |prefix: &str| -> SocketAddr {
            let mut line = String::new();
            stdout
                .read_line(&mut line)
                .expect("reading the host's stdout");
            line.trim()
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("expected {prefix:?}, got {line:?}"))
                .parse()
                .expect("address")
        };
        let addr = read_addr("listening on ");
        // `http listening on ADDR` follows when the gateway is on.
        let http = extra
            .contains(&"--http")
            .then(|| read_addr("http listening on "));
        HostProcess {
            child,
            addr,
            http,
            data_dir: data_dir.to_owned(),
        }
    }

    /// `http://ADDR` + `path` on the HTTP gateway (started with `--http`).
    pub fn http_url(&self, path: &str) -> String {
        let addr = self.http.expect("the host was started with --http");
        format!("http://{addr}{path}")
    }

    pub fn client_config(&self) -> durable::ClientConfig {
        durable::ClientConfig::from_data_dir(self.addr, &self.data_dir).unwrap()
    }

    pub async fn client(&self) -> durable::Client {
        durable::Client::connect(self.client_config())
            .await
            .expect("connecting")
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a one-shot host command (`changes`, `restore-object`, `objects`, ...); returns
/// (success, stdout, stderr).
pub fn host_cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_durable-test-host"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running the host CLI");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Copy a directory tree.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A raw QUIC connection to a host (trusting its CA), for sending bytes no stub would.
pub async fn raw_connection(host: &HostProcess) -> quinn::Connection {
    try_raw_connection(host).await.unwrap()
}

/// Like [`raw_connection`], returning the handshake's failure.
pub async fn try_raw_connection(
    host: &HostProcess,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    raw_connection_to(host, host.addr).await
}

/// A raw QUIC connection to `addr`, trusting `host`'s CA (one of its lanes).
pub async fn raw_connection_to(
    host: &HostProcess,
    addr: SocketAddr,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let ca = std::fs::read(host.data_dir.join("tls/ca.pem")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![durable::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    endpoint.connect(addr, "localhost").unwrap().await
}

/// Send `bytes` on a new stream of `conn` and read the whole answer.
pub async fn exchange_bytes(conn: &quinn::Connection, bytes: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // The host may stop reading early (an oversized frame): ignore write errors.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    recv.read_to_end(1 << 20).await.unwrap_or_default()
}

/// Present `token` on the first stream; returns the host's answer.
pub async fn hello(conn: &quinn::Connection, token: &str) -> durable::wire::Response {
    let frame = durable::wire::encode_frame(&durable::wire::Request::Hello {
        token: token.into(),
    });
    let answer = exchange_bytes(conn, &frame).await;
    durable::wire::decode_frame(&answer, 1 << 20).unwrap()
}

/// The metrics (Prometheus text) of the host whose HTTP gateway is at `http`.
pub async fn metrics_at(http: SocketAddr, token: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{http}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub fn token(host: &HostProcess) -> String {
    std::fs::read_to_string(host.data_dir.join("tls/token"))
        .unwrap()
        .trim()
        .to_string()
}

/// name -> (highest value a client was told, increments sent).
pub type Told = Arc<std::sync::Mutex<std::collections::HashMap<String, (i64, i64)>>>;

/// Increment counters `{prefix}0..{prefix}{objects}` from `callers` tasks for
/// `run_for`, then `kill -9` the host mid-flight; records into `told`.
pub async fn load_until_killed(
    host: HostProcess,
    prefix: &str,
    objects: usize,
    callers: usize,
    run_for: std::time::Duration,
    told: &Told,
) {
    use durable_examples::counter::Counter;
    let client = host.client().await;
    let mut tasks = Vec::new();
    for t in 0..callers {
        let name = format!("{prefix}{}", t % objects);
        let counter = client
            .get::<Counter>(&name)
            .with_deadline(std::time::Duration::from_secs(2));
        let told = told.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                told.lock().unwrap().entry(name.clone()).or_insert((0, 0)).1 += 1;
                match counter.increment(1).await {
                    Ok(v) => {
                        let mut told = told.lock().unwrap();
                        let e = told.get_mut(&name).unwrap();
                        e.0 = e.0.max(v);
                    }
                    Err(_) => return,
                }
            }
        }));
    }
    tokio::time::sleep(run_for).await;
    host.kill9();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The schema fingerprint of method `name` of class `C`, as a stub would send it.
pub fn method_fingerprint<C: durable::ObjectClass>(name: &str) -> u64 {
    C::METHODS
        .iter()
        .find(|m| m.name == name)
        .unwrap()
        .fingerprint
}

/// The files under `objects/` the process `pid` holds open.
pub fn open_object_files(pid: u32) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter(|target| target.to_string_lossy().contains("/objects/"))
        .collect()
}

/// Wait (polling, no calls to the host) until the process `pid` holds no file under
/// `objects/` open; panics with what it still holds at `deadline`.
pub async fn until_object_files_closed(pid: u32, deadline: std::time::Instant) {
    while !open_object_files(pid).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a quiet object still holds {:?}",
            open_object_files(pid)
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// One thread of a running process, frozen: it alone moves into a cgroup (v1) freezer
/// of its own, so the rest of the process runs on (CI runs as root). Thawed, and the
/// cgroup removed, on drop.
pub struct FrozenThread {
    cgroup: PathBuf,
    tid: u32,
}

impl FrozenThread {
    /// Freeze the thread of `pid` named `comm` (as `/proc/PID/task/TID/comm` shows it:
    /// at most 15 bytes).
    pub fn freeze(pid: u32, comm: &str) -> FrozenThread {
        let tid: u32 = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim() == comm)
            })
            .unwrap_or_else(|| panic!("process {pid} has no thread named {comm:?}"))
            .file_name()
            .to_string_lossy()
            .parse()
            .unwrap();
        let root = Path::new("/sys/fs/cgroup/freezer");
        assert!(
            root.join("tasks").exists(),
            "this test freezes one thread of the host and needs the cgroup v1 freezer \
             mounted at {} (and root)",
            root.display()
        );
        let cgroup = root.join(format!("durable-test-{pid}-{tid}"));
        std::fs::create_dir_all(&cgroup).unwrap();
        std::fs::write(cgroup.join("tasks"), tid.to_string()).unwrap();
        std::fs::write(cgroup.join("freezer.state"), "FROZEN").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read_to_string(cgroup.join("freezer.state"))
            .unwrap()
            .trim()
            != "FROZEN"
        {
            assert!(
                std::time::Instant::now() < deadline,
                "thread {tid} did not freeze"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        FrozenThread { cgroup, tid }
    }

    /// Let the thread run again.
    pub fn thaw(&self) {
        let _ = std::fs::write(self.cgroup.join("freezer.state"), "THAWED");
    }
}

impl Drop for FrozenThread {
    fn drop(&mut self) {
        self.thaw();
        // Back to the root (if it still runs), then the empty cgroup goes.
        let _ = std::fs::write("/sys/fs/cgroup/freezer/tasks", self.tid.to_string());
        for _ in 0..200 {
            if std::fs::remove_dir(&self.cgroup).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// Probe `name` writes `blobs` random blobs of 1 MiB, one call each, cycling over
/// `keys` keys (each replacing the one before under its key): a log history of about
/// 2 MB per blob (old and new values), incompressible.
pub async fn random_history(client: &durable::Client, name: &str, blobs: usize, keys: usize) {
    let probe = client.get::<durable_tests::Probe>(name);
    for i in 0..blobs {
        probe
            .put_random(format!("b{}", i % keys), 1 << 20)
            .await
            .unwrap();
    }
}
