//! TLS material under `DATA_DIR/tls/`: a development certificate authority
//! (`ca.pem`, `ca.key`), the host certificate it signs (`cert.pem`, `key.pem`) and the
//! client token (`token`). Generated on first start; private files are mode 0600.

use crate::error::HostError;
use std::path::Path;

/// What the QUIC server needs.
pub(crate) struct TlsMaterial {
    pub(crate) cert_chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    pub(crate) key: rustls::pki_types::PrivateKeyDer<'static>,
    pub(crate) token: String,
}

fn write_private(path: &Path, contents: &[u8]) -> Result<(), HostError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| HostError::io(format!("creating {}", path.display()), e))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| HostError::io(format!("writing {}", path.display()), e))
}

/// Public material, but under the data directory every file is 0600: clients run by
/// another user get the CA certificate from the operator, not from the host's files.
fn write_public(path: &Path, contents: &[u8]) -> Result<(), HostError> {
    write_private(path, contents)
}

fn tls_err(e: impl std::fmt::Display) -> HostError {
    HostError::Tls(e.to_string())
}

fn ca_params() -> Result<rcgen::CertificateParams, HostError> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "durable development CA");
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    Ok(params)
}

/// Load the material, generating whatever is missing. `names` are extra DNS names or
/// IP addresses for the host certificate (besides `localhost`, `127.0.0.1`, `::1`).
pub(crate) fn load_or_create(data_dir: &Path, names: &[String]) -> Result<TlsMaterial, HostError> {
    let dir = data_dir.join("tls");
    crate::files::create_dirs(&dir)
        .map_err(|e| HostError::io(format!("creating {}", dir.display()), e))?;
    let (ca_pem, ca_key, cert, key, token) = (
        dir.join("ca.pem"),
        dir.join("ca.key"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
        dir.join("token"),
    );
    if !ca_pem.exists() || !ca_key.exists() {
        let _ = std::fs::remove_file(&cert);
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&ca_key);
        let _ = std::fs::remove_file(&ca_pem);
        let key_pair = rcgen::KeyPair::generate().map_err(tls_err)?;
        let ca = ca_params()?.self_signed(&key_pair).map_err(tls_err)?;
        write_private(&ca_key, key_pair.serialize_pem().as_bytes())?;
        write_public(&ca_pem, ca.pem().as_bytes())?;
    }
    if !cert.exists() || !key.exists() {
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&cert);
        let ca_key_pem =
            std::fs::read_to_string(&ca_key).map_err(|e| HostError::io("reading ca.key", e))?;
        let ca_pair = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(tls_err)?;
        // Same name and key as ca.pem, so certificates it signs chain to ca.pem.
        let ca = ca_params()?.self_signed(&ca_pair).map_err(tls_err)?;
        let mut sans = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
        sans.extend(names.iter().cloned());
        let host_pair = rcgen::KeyPair::generate().map_err(tls_err)?;
        let mut params = rcgen::CertificateParams::new(sans).map_err(tls_err)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "durable host");
        let host_cert = params
            .signed_by(&host_pair, &ca, &ca_pair)
            .map_err(tls_err)?;
        write_private(&key, host_pair.serialize_pem().as_bytes())?;
        write_public(&cert, host_cert.pem().as_bytes())?;
    }
    if !token.exists() {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        // 64 hex characters, no newline (docs/wire.md).
        write_private(&token, hex.as_bytes())?;
    }
    crate::files::sync_dir(&dir).map_err(|e| HostError::io("syncing tls dir", e))?;

    let cert_pem = std::fs::read(&cert).map_err(|e| HostError::io("reading cert.pem", e))?;
    let cert_chain = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_err)?;
    let key_pem = std::fs::read(&key).map_err(|e| HostError::io("reading key.pem", e))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(tls_err)?
        .ok_or_else(|| HostError::Tls("key.pem holds no private key".into()))?;
    let token = std::fs::read_to_string(&token)
        .map_err(|e| HostError::io("reading token", e))?
        .trim()
        .to_string();
    if token.is_empty() {
        return Err(HostError::Tls("the token file is empty".into()));
    }
    Ok(TlsMaterial {
        cert_chain,
        key,
        token,
    })
}

/// Sign a client certificate for `name` with the data directory's development CA
/// (`DATA_DIR/tls/ca.key`): the certificate (PEM) and its private key (PEM). The
/// certificate carries `name` as its common name and the client-authentication
/// extended key usage, and is valid from an hour ago (for clock skew) for `days`
/// days. The CA must exist (the host creates it on its first start).
pub(crate) fn mint_client_cert(
    data_dir: &Path,
    name: &str,
    days: u32,
) -> Result<(String, String), HostError> {
    if name.is_empty() {
        return Err(HostError::Config("the client name is empty".into()));
    }
    if days == 0 {
        return Err(HostError::Config("a certificate valid for 0 days".into()));
    }
    let dir = data_dir.join("tls");
    let ca_key = dir.join("ca.key");
    if !dir.join("ca.pem").exists() || !ca_key.exists() {
        return Err(HostError::Config(format!(
            "no development CA in {} (start the host on this data directory once to create it)",
            dir.display()
        )));
    }
    let ca_key_pem = std::fs::read_to_string(&ca_key)
        .map_err(|e| HostError::io(format!("reading {}", ca_key.display()), e))?;
    let ca_pair = rcgen::KeyPair::from_pem(&ca_key_pem).map_err(tls_err)?;
    // Same name and key as ca.pem, so what it signs chains to ca.pem.
    let ca = ca_params()?.self_signed(&ca_pair).map_err(tls_err)?;
    let pair = rcgen::KeyPair::generate().map_err(tls_err)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    // The one place that reads the system clock is the clock module.
    let now = (crate::clock::Clock::now_ms(&crate::clock::SystemClock) / 1000) as i64;
    let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).map_err(tls_err);
    params.not_before = at(now - 3600)?;
    params.not_after = at(now + i64::from(days) * 86_400)?;
    let cert = params.signed_by(&pair, &ca, &ca_pair).map_err(tls_err)?;
    Ok((cert.pem(), pair.serialize_pem()))
}

/// Write a minted client certificate to `PREFIX.pem` and its key to `PREFIX.key`
/// (mode 0600). Existing files are never overwritten. Returns the two paths.
pub(crate) fn write_client_cert(
    prefix: &Path,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf), HostError> {
    let with_ext = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        std::path::PathBuf::from(p)
    };
    let (cert, key) = (with_ext(".pem"), with_ext(".key"));
    for path in [&cert, &key] {
        if path.exists() {
            return Err(HostError::Config(format!(
                "{} exists; not overwriting it",
                path.display()
            )));
        }
    }
    write_private(&key, key_pem.as_bytes())?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&cert)
            .map_err(|e| HostError::io(format!("creating {}", cert.display()), e))?;
        f.write_all(cert_pem.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| HostError::io(format!("writing {}", cert.display()), e))?;
    }
    Ok((cert, key))
}

/// Read the certificates of a client CA PEM (`--client-ca`) into a root store.
pub(crate) fn client_roots(ca_pem: &[u8]) -> Result<rustls::RootCertStore, HostError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let cert = cert.map_err(|e| HostError::Tls(format!("reading the client CA: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| HostError::Tls(format!("the client CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(HostError::Tls(
            "the client CA file holds no certificate".into(),
        ));
    }
    Ok(roots)
}

/// The common name of a certificate's subject (DER), if it has one that is text.
/// Used only on certificates rustls has already verified, to name the caller.
pub(crate) fn subject_common_name(cert: &[u8]) -> Option<String> {
    /// One DER element: (tag, contents, what follows).
    fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (first as usize, rest)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | b as usize);
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    let (_, certificate, _) = tlv(cert).filter(|t| t.0 == SEQUENCE)?;
    let (_, tbs, _) = tlv(certificate).filter(|t| t.0 == SEQUENCE)?;
    let mut rest = tbs;
    // [0] version (optional), serial, signature algorithm, issuer, validity, subject.
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (_, mut subject, _) = tlv(rest).filter(|t| t.0 == SEQUENCE)?;
    while !subject.is_empty() {
        let (tag, mut set, next) = tlv(subject)?;
        subject = next;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, attribute, next) = tlv(set)?;
            set = next;
            let (oid_tag, oid, value) = tlv(attribute)?;
            if oid_tag == 0x06 && oid == COMMON_NAME {
                let (_, text, _) = tlv(value)?;
                return String::from_utf8(text.to_vec()).ok();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn minted_client_certs_chain_to_the_dev_ca_and_name_their_holder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            mint_client_cert(dir.path(), "alice", 30),
            Err(HostError::Config(_))
        ));
        load_or_create(dir.path(), &[]).unwrap();
        let (cert_pem, key_pem) = mint_client_cert(dir.path(), "alice", 30).unwrap();
        assert!(key_pem.contains("PRIVATE KEY"));
        let cert = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(subject_common_name(&cert).as_deref(), Some("alice"));

        // Verified by the client verifier the host builds from ca.pem.
        let ca = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(client_roots(&ca).unwrap()),
            provider,
        )
        .build()
        .unwrap();
        verifier
            .verify_client_cert(&cert, &[], rustls::pki_types::UnixTime::now())
            .unwrap();

        // The host certificate has a common name too; garbage has none.
        let host_pem = std::fs::read(dir.path().join("tls/cert.pem")).unwrap();
        let host = rustls_pemfile::certs(&mut host_pem.as_slice())
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(subject_common_name(&host).as_deref(), Some("durable host"));
        assert_eq!(subject_common_name(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(subject_common_name(&[]), None);

        let prefix = dir.path().join("alice");
        let (c, k) = write_client_cert(&prefix, &cert_pem, &key_pem).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&k).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(c).unwrap(), cert_pem);
        assert!(write_client_cert(&prefix, &cert_pem, &key_pem).is_err());
    }
}
