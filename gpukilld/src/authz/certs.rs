//! The principal a client certificate names: its subject's common name, or, without one,
//! its first DNS subject alternative name. The TLS handshake has already checked that the
//! certificate chains to `[tcp] client_ca`.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The principal of a DER certificate, when it names one.
pub fn principal(der: &[u8]) -> Option<String> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let common_name = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .map(str::to_string);
    if common_name.is_some() {
        return common_name;
    }
    let names = certificate.subject_alternative_name().ok().flatten()?;
    names
        .value
        .general_names
        .iter()
        .find_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_string()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn the_common_name_or_the_first_dns_name_is_the_principal() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["n1.example".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "coordinator");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(principal(cert.der()).as_deref(), Some("coordinator"));

        let mut params = rcgen::CertificateParams::new(vec!["n2.example".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(principal(cert.der()).as_deref(), Some("n2.example"));
        assert_eq!(principal(b"not a certificate"), None);
    }
}
