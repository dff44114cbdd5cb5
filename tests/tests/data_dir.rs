//! What a host leaves on disk and in its log, as an operator meets it: every file
//! under the data directory 0600 and every directory 0700, the token as 64 hex digits
//! with no newline, a warning when listening on every interface, and no colour codes
//! in a log that is not a terminal.

mod common;

use common::HostProcess;
use durable_examples::counter::Counter;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn modes(dir: &Path, out: &mut Vec<(String, u32, bool)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        // The host is running: its background threads may rename or remove a file
        // (a spare set moving into place, a checkpoint's temporary) between the
        // listing and this look at it.
        let meta = match entry.metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            other => other.unwrap(),
        };
        let mode = meta.permissions().mode() & 0o777;
        out.push((entry.path().display().to_string(), mode, meta.is_dir()));
        if meta.is_dir() {
            modes(&entry.path(), out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_0600_directories_0700_and_the_token_has_no_newline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let host = HostProcess::start(&data, &[]);
    let client = host.client().await;
    client.get::<Counter>("m").increment(1).await.unwrap();
    let mut found = Vec::new();
    modes(&data, &mut found);
    let data_mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(data_mode, 0o700, "the data directory");
    assert!(
        found.iter().any(|(p, _, _)| p.ends_with(".db")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|(p, _, _)| p.ends_with(".seg")),
        "{found:?}"
    );
    for (path, mode, is_dir) in &found {
        let want = if *is_dir { 0o700 } else { 0o600 };
        assert_eq!(*mode, want, "{path} is {mode:o}");
    }
    let token = std::fs::read(data.join("tls").join("token")).unwrap();
    assert_eq!(token.len(), 64, "64 hex digits, no newline");
    assert!(token.iter().all(u8::is_ascii_hexdigit));
}

#[test]
fn a_wildcard_listen_address_is_warned_about_and_logs_carry_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("host.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_durable-test-host"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "0.0.0.0:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on 0.0.0.0:"), "{line}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("listening on every network interface"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}
