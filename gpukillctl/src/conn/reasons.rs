//! Why a connection failed, in words: the most useful reason in an error chain, and what to
//! check after a TLS failure or a connection that broke.

use std::time::Duration;

use super::RemoteAddress;

/// What to check when a connection to `address` broke under a call.
pub(super) fn broken_hint(address: &RemoteAddress, client_certificate: bool) -> String {
    match (address.tls, client_certificate) {
        (false, _) => "is gpukilld still running?".to_owned(),
        (true, false) => "is gpukilld still running? gpukilld also closes the connection when it \
                          wants a client certificate: pass --cert and --key"
            .to_owned(),
        (true, true) => "is gpukilld still running? gpukilld also closes the connection when it \
                         refuses the client certificate: is --cert signed by its [tcp] \
                         client_ca?"
            .to_owned(),
    }
}

/// What to check after the TLS error `err` with `address`.
pub(super) fn tls_hint(err: &rustls::Error, address: &RemoteAddress) -> String {
    use rustls::{AlertDescription, CertificateError};
    match err {
        rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "gpukilld's certificate is not signed by a CA in --ca: pass the CA that signed its \
             [tcp] cert"
            .to_owned(),
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            "gpukilld's certificate does not name {}: use a host name the certificate lists",
            address.host
        ),
        rustls::Error::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::HandshakeFailure,
        ) => "gpukilld refused the handshake: it may want a client certificate (--cert and \
              --key) signed by its [tcp] client_ca, or a bearer token (--token-file)"
            .to_owned(),
        _ => "check --ca, and gpukilld's [tcp] cert and key".to_owned(),
    }
}

/// The rustls error somewhere in `err`'s chain (tokio-rustls wraps it in an I/O error).
pub(super) fn tls_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a rustls::Error> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = current {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(tls) = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls);
        }
        current = cause.source();
    }
    None
}

/// "no answer within 2s".
pub(super) fn no_answer(timeout: Duration) -> String {
    format!("no answer within {}", humantime::format_duration(timeout))
}

/// `err`'s innermost message.
pub(super) fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut innermost = err.to_string();
    let mut current = err.source();
    while let Some(cause) = current {
        innermost = cause.to_string();
        current = cause.source();
    }
    innermost
}

/// An I/O error's message without its "(os error N)" suffix.
pub(crate) fn io_reason(io: &std::io::Error) -> String {
    let text = io.to_string();
    match io.raw_os_error() {
        Some(code) => text
            .strip_suffix(&format!(" (os error {code})"))
            .unwrap_or(&text)
            .to_owned(),
        None => text,
    }
}

/// The most useful words for why a connection failed: the OS error (without its
/// "(os error N)" suffix) when there is one, otherwise the innermost error message.
pub(super) fn connect_reason(err: &(dyn std::error::Error + 'static), timeout: Duration) -> String {
    let mut innermost = err.to_string();
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = current {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return no_answer(timeout);
            }
            return io_reason(io);
        }
        innermost = cause.to_string();
        current = cause.source();
    }
    innermost
}
