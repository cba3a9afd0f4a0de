//! TLS pieces every listener and client of the daemon shares: reading PEM certificates and
//! keys, and a rustls server configuration. A leaf: it imports nothing of the crate.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Why TLS cannot be set up. Each names the configuration key and the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or parsed.
    #[error("{section}.{key} = {path}: {message}")]
    Pem {
        /// The configuration section (`tcp`, `ingest`, `upload`).
        section: &'static str,
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the certificate, key or CA.
    #[error(
        "cannot set up TLS from {section}.cert, {section}.key and {section}.client_ca: {message}"
    )]
    Tls {
        /// The configuration section.
        section: &'static str,
        /// What rustls said.
        message: String,
    },
}

/// Reads every certificate in a PEM file (`section.key` names it in errors).
pub fn read_certificates(
    section: &'static str,
    key: &'static str,
    path: &std::path::Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |message: String| TlsError::Pem {
        section,
        key,
        path: path.to_path_buf(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(format!("cannot read certificates: {error}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(format!("not PEM certificates: {error}")))?;
    if certificates.is_empty() {
        return Err(pem_error(
            "holds no certificate (expected PEM \"BEGIN CERTIFICATE\")".into(),
        ));
    }
    Ok(certificates)
}

/// Reads a PEM private key (`section.key` names it in errors).
pub fn read_private_key(
    section: &'static str,
    key: &'static str,
    path: &std::path::Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::Pem {
        section,
        key,
        path: path.to_path_buf(),
        message: format!("cannot read a PEM private key: {error}"),
    })
}

/// A rustls server configuration: the chain in `cert` and the key in `key`; with
/// `client_ca`, client certificates are verified against it (and required unless
/// `certificate_optional`: a token may stand in for one); `alpn` is the protocol offered.
pub fn server_config(
    section: &'static str,
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
    certificate_optional: bool,
    alpn: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let chain = read_certificates(section, "cert", cert)?;
    let private_key = read_private_key(section, "key", key)?;
    let tls_error = |error: rustls::Error| TlsError::Tls {
        section,
        message: error.to_string(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for certificate in read_certificates(section, "client_ca", ca)? {
                roots.add(certificate).map_err(|error| TlsError::Pem {
                    section,
                    key: "client_ca",
                    path: ca.to_path_buf(),
                    message: format!("not a usable CA certificate: {error}"),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if certificate_optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().map_err(|error| TlsError::Tls {
                section,
                message: error.to_string(),
            })?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(chain, private_key)
        .map_err(tls_error)?;
    server.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(server))
}
