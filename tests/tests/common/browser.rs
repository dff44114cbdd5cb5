//! A headless chromium for the browser tests, driven through chromedriver
//! (WebDriver) with fantoccini. Debian's `chromium` and `chromium-driver` packages
//! must be installed (`.ci/run` installs them); without them a test fails with a
//! message saying so, never skips.

use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a page may take to reach an expected state.
pub const PAGE_WAIT: Duration = Duration::from_secs(20);

/// A chromedriver process; each [`Browser::page`] is a chromium of its own (a
/// WebDriver session), so two pages are two independent browsers.
pub struct Browser {
    driver: Child,
    url: String,
    profiles: tempfile::TempDir,
    sessions: usize,
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Browser {
    /// Start chromedriver on a free port, or fail saying what to install.
    pub fn start() -> Browser {
        for (program, package) in [
            ("chromedriver", "chromium-driver"),
            ("chromium", "chromium"),
        ] {
            assert!(
                installed(program),
                "the browser tests need `{program}` on PATH: apt-get install -y chromium chromium-driver \
                 (the {package} package; .ci/run installs both)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        // It says when it listens.
        let mut out = BufReader::new(driver.stdout.take().unwrap());
        let mut line = String::new();
        loop {
            line.clear();
            let n = out
                .read_line(&mut line)
                .expect("reading chromedriver's output");
            assert!(n > 0, "chromedriver exited before it listened");
            if line.contains("started successfully") {
                break;
            }
        }
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Browser {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            profiles: tempfile::tempdir().unwrap(),
            sessions: 0,
        }
    }

    /// A new headless chromium, showing `url`.
    pub async fn page(&mut self, url: &str) -> Client {
        self.sessions += 1;
        let profile = self.profiles.path().join(self.sessions.to_string());
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    // Tests run as root in CI, where chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-extensions",
                    "--disable-background-timer-throttling",
                    "--disable-renderer-backgrounding",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a chromium session from chromedriver");
        client.goto(url).await.expect("loading the page");
        client
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        // Killing chromedriver leaves the chromiums it started (a page not closed,
        // a test that failed): end every process started with one of our profiles.
        let ours = self.profiles.path().to_string_lossy().into_owned();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&ours) {
                // SAFETY: a plain kill(2) of a process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Evaluate `expr` (JavaScript) in the page.
pub async fn eval(page: &Client, expr: &str) -> Value {
    page.execute(&format!("return ({expr});"), Vec::new())
        .await
        .unwrap_or_else(|e| panic!("evaluating {expr}: {e}"))
}

/// Poll `expr` in the page until it is truthy (within [`PAGE_WAIT`]); returns its
/// value. `what` says what was awaited, for the failure message.
pub async fn wait_for(page: &Client, what: &str, expr: &str) -> Value {
    let deadline = Instant::now() + PAGE_WAIT;
    loop {
        let v = eval(page, expr).await;
        let truthy = match &v {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::Number(n) => n.as_f64() != Some(0.0),
            Value::String(s) => !s.is_empty(),
            Value::Array(_) | Value::Object(_) => true,
        };
        if truthy {
            return v;
        }
        if Instant::now() > deadline {
            let body = eval(page, "document.body.innerText").await;
            panic!("timed out waiting for {what} ({expr}); the page shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The texts of the elements matching a CSS `selector`.
pub async fn texts(page: &Client, selector: &str) -> Vec<String> {
    let v = eval(
        page,
        &format!(
            "Array.from(document.querySelectorAll({})).map((e) => e.textContent)",
            json!(selector)
        ),
    )
    .await;
    serde_json::from_value(v).unwrap_or_default()
}
