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
