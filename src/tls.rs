//! TLS with rustls: the listener's server configuration (TLS 1.2 and 1.3 only,
//! optional client certificates), and each cluster's client configuration (its own
//! CA, optional client certificate).
//!
//! Certificates and keys are read from PEM files. The listener's configuration is
//! rebuilt on every config reload, so renewed certificates are picked up without a
//! restart; connections already established keep the session they negotiated.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{TlsFiles, UpstreamTls};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The listener's TLS configuration. With `client_ca`, clients must present a
/// certificate signed by it (mTLS).
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(certs(&files.cert)?, key(&files.key)?)
        .map_err(|e| format!("{} / {}: {e}", files.cert.display(), files.key.display()))?;
    Ok(Arc::new(config))
}

/// A cluster's TLS client configuration: its CA, and a client certificate when the
/// cluster asks for one.
pub fn client_config(tls: &UpstreamTls) -> Result<Arc<ClientConfig>, String> {
    let roots = match &tls.ca {
        Some(ca) => roots(ca)?,
        None => return Err("tls: `ca` is required to verify the cluster's brokers".into()),
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key_path)) => builder
            .with_client_auth_cert(certs(cert)?, key(key_path)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?,
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("tls: `cert` and `key` go together".into()),
    };
    Ok(Arc::new(config))
}

/// The principal of a client certificate: its subject as an RFC 4514 string
/// ("CN=app-1,O=Example"), as Kafka's default SSL principal builder names it.
pub fn principal(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = parsed
        .subject()
        .to_string_with_registry(x509_parser::objects::oid_registry())
        .ok()?;
    Some(subject.replace(", ", ","))
}
