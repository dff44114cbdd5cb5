//! Mutual TLS as an alternative to the token: a host started with `--client-ca`
//! authenticates clients by a certificate signed by that CA (no token needed), refuses
//! a certificate from any other CA in the TLS handshake, and with
//! `--require-client-cert` refuses token-only clients too.

mod common;

use common::{host_cli, HostProcess};
use durable::{CallError, Client, ClientConfig, ConnectError};
use durable_examples::counter::Counter;
use std::path::{Path, PathBuf};

/// A data directory whose host has run once (so its development CA exists), and the
/// prefix of a client certificate for `alice` that `host client-cert` signed with it.
fn data_dir_with_client_cert() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    // No CA yet: nothing to sign with.
    let prefix = dir.path().join("alice");
    let (ok, _, err) = mint(&data, "alice", &prefix);
    assert!(!ok && err.contains("no development CA"), "{err}");
    assert!(!prefix.with_extension("key").exists());

    assert!(HostProcess::start(&data, &[]).terminate().success());
    let (ok, out, err) = mint(&data, "alice", &prefix);
    assert!(ok, "client-cert failed: {err}");
    assert!(out.contains("alice.pem"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(prefix.with_extension("key")), 0o600);
    assert_eq!(mode(prefix.with_extension("pem")), 0o644);
    // Never overwritten.
    let (ok, _, err) = mint(&data, "alice", &prefix);
    assert!(!ok && err.contains("not overwriting"), "{err}");
    (dir, prefix)
}

fn mint(data: &Path, name: &str, prefix: &Path) -> (bool, String, String) {
    host_cli(&[
        "client-cert",
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        name,
        "--out",
        prefix.to_str().unwrap(),
    ])
}

fn data(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("data")
}

/// `serve` flags trusting the data directory's own CA for client certificates.
fn trust_dev_ca(data: &Path) -> Vec<String> {
    vec![
        "--client-ca".into(),
        data.join("tls/ca.pem").to_str().unwrap().into(),
    ]
}

fn start(data: &Path, flags: &[String]) -> HostProcess {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    HostProcess::start(data, &flags)
}

/// A config that trusts the host and presents the certificate at `prefix`, with
/// `token` (empty: none).
fn cert_config(
    host: &HostProcess,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    token: &str,
) -> ClientConfig {
    let ca = std::fs::read(host.data_dir.join("tls/ca.pem")).unwrap();
    ClientConfig::new(host.addr, ca, token).with_client_cert(cert_pem, key_pem)
}

fn read_cert(prefix: &Path) -> (Vec<u8>, Vec<u8>) {
    (
        std::fs::read(prefix.with_extension("pem")).unwrap(),
        std::fs::read(prefix.with_extension("key")).unwrap(),
    )
}

/// A client certificate for `name` signed by a CA of its own (named `ca_name`), which
/// no host here trusts.
fn foreign_cert(ca_name: &str, name: &str) -> (Vec<u8>, Vec<u8>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_trusted_ca_needs_no_token() {
    let (dir, prefix) = data_dir_with_client_cert();
    let host = start(&data(&dir), &trust_dev_ca(&data(&dir)));
    let (cert, key) = read_cert(&prefix);

    let alice = Client::connect(cert_config(&host, cert, key, ""))
        .await
        .expect("a certificate from the client CA authenticates without a token");
    let counter = alice.get::<Counter>("mtls");
    assert_eq!(counter.increment(2).await.unwrap(), 2);
    assert_eq!(counter.increment(3).await.unwrap(), 5);

    // Token clients still connect: the certificate is an alternative, not a must.
    let token_client = host.client().await;
    assert_eq!(token_client.get::<Counter>("mtls").get().await.unwrap(), 5);
    // ... but a client with neither is still refused.
    let nobody = ClientConfig::new(
        host.addr,
        std::fs::read(host.data_dir.join("tls/ca.pem")).unwrap(),
        "",
    );
    assert!(matches!(
        Client::connect(nobody).await,
        Err(ConnectError::Unauthenticated)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_in_the_handshake() {
    let (dir, prefix) = data_dir_with_client_cert();
    let host = start(&data(&dir), &trust_dev_ca(&data(&dir)));
    let (cert, key) = read_cert(&prefix);
    let alice = Client::connect(cert_config(&host, cert.clone(), key.clone(), ""))
        .await
        .unwrap();
    let counter = alice.get::<Counter>("kept");
    assert_eq!(counter.increment(1).await.unwrap(), 1);

    // A CA of another name, and one named like the host's development CA (only its
    // key tells it apart); without the token, and even with the right token: the
    // handshake refuses the certificate before any hello.
    for ca_name in ["another CA", "durable development CA"] {
        let (bad_cert, bad_key) = foreign_cert(ca_name, "mallory");
        for token in [String::new(), common::token(&host)] {
            let refused = Client::connect(cert_config(
                &host,
                bad_cert.clone(),
                bad_key.clone(),
                &token,
            ))
            .await;
            match refused {
                Err(ConnectError::CertificateRejected(message)) => {
                    assert!(
                        message.contains("not signed by a CA the host trusts"),
                        "{message}"
                    );
                    let shown = ConnectError::CertificateRejected(message).to_string();
                    assert!(
                        shown.starts_with("the host refused the client certificate"),
                        "{shown}"
                    );
                }
                other => panic!("expected the certificate refused, got {other:?}"),
            }
        }
    }
    // A certificate with a key that is not its own.
    let (_, other_key) = foreign_cert("another CA", "eve");
    match Client::connect(cert_config(&host, cert.clone(), other_key, "")).await {
        Err(ConnectError::Tls(message)) => assert!(message.contains("KeyMismatch"), "{message}"),
        other => panic!("expected a TLS configuration error, got {other:?}"),
    }

    // The host keeps serving the good client, on its connection and on new ones.
    assert_eq!(counter.increment(1).await.unwrap(), 2);
    let again = Client::connect(cert_config(&host, cert, key, ""))
        .await
        .unwrap();
    assert_eq!(again.get::<Counter>("kept").get().await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_client_cert_refuses_token_only_clients() {
    let (dir, prefix) = data_dir_with_client_cert();
    let mut flags = trust_dev_ca(&data(&dir));
    flags.push("--require-client-cert".into());
    let host = start(&data(&dir), &flags);

    match Client::connect(host.client_config()).await {
        Err(ConnectError::CertificateRejected(message)) => {
            assert!(
                message.contains("requires a client certificate"),
                "{message}"
            )
        }
        other => panic!("a token-only client must be refused, got {other:?}"),
    }
    let (bad_cert, bad_key) = foreign_cert("another CA", "mallory");
    assert!(matches!(
        Client::connect(cert_config(&host, bad_cert, bad_key, "")).await,
        Err(ConnectError::CertificateRejected(_))
    ));

    let (cert, key) = read_cert(&prefix);
    let alice = Client::connect(cert_config(&host, cert, key, ""))
        .await
        .unwrap();
    assert_eq!(
        alice.get::<Counter>("required").increment(7).await.unwrap(),
        7
    );

    // --require-client-cert without a client CA is a usage error, not a host that
    // admits nobody.
    let (ok, _, err) = host_cli(&[
        "serve",
        "--data-dir",
        data(&dir).to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--require-client-cert",
    ]);
    assert!(!ok && err.contains("--client-ca"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_client_ca_no_certificate_is_trusted() {
    // Not even one signed by the host's own development CA: trust is explicit.
    let (dir, prefix) = data_dir_with_client_cert();
    let host = start(&data(&dir), &[]);
    let (cert, key) = read_cert(&prefix);
    assert!(matches!(
        Client::connect(cert_config(&host, cert.clone(), key.clone(), "")).await,
        Err(ConnectError::Unauthenticated)
    ));
    // With the token the connection is the token's, certificate or not.
    let with_token = Client::connect(cert_config(&host, cert, key, &common::token(&host)))
        .await
        .unwrap();
    assert_eq!(
        with_token
            .get::<Counter>("plain")
            .increment(1)
            .await
            .unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_reconnects_to_a_refusal_fails_at_once() {
    // A token client is connected; the host restarts requiring certificates. The next
    // call reconnects, is refused in the handshake, and fails Unauthenticated at once
    // instead of retrying until its deadline.
    let (dir, _) = data_dir_with_client_cert();
    let host = start(&data(&dir), &[]);
    let addr = host.addr;
    let client = host.client().await;
    let counter = client
        .get::<Counter>("restart")
        .with_deadline(std::time::Duration::from_secs(20));
    assert_eq!(counter.increment(1).await.unwrap(), 1);
    assert!(host.terminate().success());

    let mut flags = trust_dev_ca(&data(&dir));
    flags.push("--require-client-cert".into());
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let _host = HostProcess::start_on_with(&data(&dir), addr, &flags);
    let started = std::time::Instant::now();
    assert_eq!(counter.increment(1).await, Err(CallError::Unauthenticated));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

/// A client certificate signed with the data directory's own CA key (as `host
/// client-cert` does), shaped by `adjust`.
fn dev_ca_cert(
    data: &Path,
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> (Vec<u8>, Vec<u8>) {
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(data.join("tls/ca.key")).unwrap())
            .unwrap();
    // The same name and key as ca.pem: what it signs chains to ca.pem.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "durable development CA");
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bob");
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    adjust(&mut params);
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_ca_certificate_that_is_expired_or_not_for_clients_is_refused() {
    let (dir, _) = data_dir_with_client_cert();
    let host = start(&data(&dir), &trust_dev_ca(&data(&dir)));

    let (cert, key) = dev_ca_cert(&data(&dir), |_| {});
    let bob = Client::connect(cert_config(&host, cert, key, ""))
        .await
        .unwrap();
    assert_eq!(bob.get::<Counter>("bob").increment(1).await.unwrap(), 1);

    let (cert, key) = dev_ca_cert(&data(&dir), |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    match Client::connect(cert_config(&host, cert, key, "")).await {
        Err(ConnectError::CertificateRejected(message)) => {
            assert!(message.contains("expired"), "{message}")
        }
        other => panic!("an expired certificate must be refused, got {other:?}"),
    }

    // A server certificate is not a client certificate.
    let (cert, key) = dev_ca_cert(&data(&dir), |p| {
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert!(matches!(
        Client::connect(cert_config(&host, cert, key, "")).await,
        Err(ConnectError::CertificateRejected(_))
    ));
    assert_eq!(bob.get::<Counter>("bob").increment(1).await.unwrap(), 2);
}
