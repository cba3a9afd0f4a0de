//! Reading the credential files of `--token-file`, `--ca`, `--cert` and `--key`, each checked
//! to hold what it should before anything connects.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::{Ascii, MetadataValue};

use super::reasons::io_reason;
use crate::error::Error;

/// Reads `path` for `option`, naming both when it cannot be read.
fn read_file(option: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|err| Error::Credentials {
        option,
        path: path.to_path_buf(),
        problem: format!("cannot read it: {}", io_reason(&err)),
    })
}

/// The bearer token of `--token-file`: its first non-empty line, trimmed, as the value of
/// an `authorization` header.
pub(super) fn read_token(path: &Path) -> Result<MetadataValue<Ascii>, Error> {
    let problem = |problem: &str| Error::Credentials {
        option: "--token-file",
        path: path.to_path_buf(),
        problem: problem.to_owned(),
    };
    let bytes = read_file("--token-file", path)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| problem("is not text; the token is its first non-empty line"))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .ok_or_else(|| problem("holds no token; the token is its first non-empty line"))?;
    let mut value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        problem("the token has characters a header cannot carry (only printable ASCII)")
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The PEM text of the certificates in `path`, checked to hold at least one.
pub(super) fn read_certificates(option: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    let problem = |problem: String| Error::Credentials {
        option,
        path: path.to_path_buf(),
        problem,
    };
    let pem = read_file(option, path)?;
    let certificates = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| problem(format!("is not PEM: {err}")))?;
    if certificates.is_empty() {
        return Err(problem(
            "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".to_owned(),
        ));
    }
    Ok(pem)
}

/// The PEM text of the private key in `path`, checked to hold one.
pub(super) fn read_private_key(path: &Path) -> Result<Vec<u8>, Error> {
    let pem = read_file("--key", path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|err| Error::Credentials {
        option: "--key",
        path: path.to_path_buf(),
        problem: format!(
            "holds no usable private key (expected PEM: -----BEGIN PRIVATE KEY-----): {err}"
        ),
    })?;
    Ok(pem)
}
