//! TLS client set-up shared by the agent (message gateway), the client and the SSM API
//! calls: the web PKI roots plus an optional PEM CA file, on rustls with *ring*.

use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;

/// Reads every certificate in a PEM file.
///
/// # Errors
/// Unreadable file, bad PEM, or no certificate in it.
pub fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// rustls client configuration: the web PKI roots plus the CAs in `ca_file`, on the
/// *ring* provider.
///
/// # Errors
/// An unreadable CA file, or one with no usable certificate.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        // A system bundle (AWS_CA_BUNDLE often names one) may hold a certificate rustls
        // cannot use; skip such ones, as long as some are usable.
        let (added, _ignored) = roots.add_parsable_certificates(read_ca_file(path)?);
        if added == 0 {
            return Err(format!("{}: no usable CA certificate", path.display()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}
