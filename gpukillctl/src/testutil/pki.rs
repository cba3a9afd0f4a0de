//! A test PKI: a CA that issues server and client certificates (rcgen), written to files for
//! `--ca`, `--cert` and `--key`.

/// A file in `dir` holding `text`.
pub fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).expect("write");
    path.to_str().expect("UTF-8").to_owned()
}

/// A test CA that issues certificates (rcgen).
pub struct Pki {
    name: String,
    /// The CA certificate.
    pub ca: rcgen::Certificate,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A new CA named `name` (its common name `NAME test CA`).
    pub fn new(name: &str) -> Pki {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = params.clone().self_signed(&key).expect("CA");
        Pki {
            name: name.to_owned(),
            ca,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// The CA certificate's file in `dir`.
    pub fn ca_file(&self, dir: &tempfile::TempDir) -> String {
        file(dir, &format!("ca-{}.pem", self.name), &self.ca.pem())
    }

    /// A certificate for `names` (its common name `name`): (cert, key) files in `dir`.
    pub fn issue(&self, dir: &tempfile::TempDir, name: &str, names: &[&str]) -> (String, String) {
        let (cert, key) = self.issue_pem(name, names);
        (
            file(dir, &format!("{name}.pem"), &cert),
            file(dir, &format!("{name}.key"), &key),
        )
    }

    /// A certificate for `names` (its common name `name`): (cert, key) PEM.
    pub fn issue_pem(&self, name: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }
}
