//! A test PKI: a CA, server certificates for 127.0.0.1/localhost, client certificates named
//! by their common name, token files; and TLS gRPC channels to daemons on loopback.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A certificate authority, and what it signed, written under `dir`.
pub struct Pki {
    pub dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    /// A new CA named `name`, its certificate at `dir/NAME-ca.pem`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let ca = params.clone().self_signed(&ca_key).unwrap();
        let issuer_key = rcgen::KeyPair::from_pem(&ca_key.serialize_pem()).unwrap();
        let issuer = rcgen::Issuer::new(params, issuer_key);
        std::fs::write(dir.join(format!("{name}-ca.pem")), ca.pem()).unwrap();
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
            issuer,
        }
    }

    /// The CA certificate's file.
    pub fn ca_file(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-ca.pem"))
    }

    /// The CA certificate (PEM).
    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }

    fn issue(&self, file: &str, common_name: &str, names: Vec<String>) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(names).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = self.dir.join(format!("{file}.pem"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let _ = &self.ca_key;
        (cert_path, key_path)
    }

    /// A server certificate for 127.0.0.1 and localhost: (cert, key) files.
    pub fn server(&self, file: &str) -> (PathBuf, PathBuf) {
        self.issue(
            file,
            "gpukilld",
            vec!["localhost".to_string(), "127.0.0.1".to_string()],
        )
    }

    /// A client certificate whose common name is `principal`: (cert, key) files.
    pub fn client(&self, principal: &str) -> (PathBuf, PathBuf) {
        self.issue(&format!("client-{principal}"), principal, Vec::new())
    }
}

/// Writes a token file (`PRINCIPAL TOKEN` lines, mode 0600) at `path`.
pub fn token_file(path: &Path, entries: &[(&str, &str)]) -> PathBuf {
    let text: String = entries
        .iter()
        .map(|(principal, token)| format!("{principal} {token}\n"))
        .collect();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

/// Writes a client token file (the token alone) at `path`.
pub fn client_token(path: &Path, token: &str) -> PathBuf {
    std::fs::write(path, format!("{token}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TLS channel to `https://127.0.0.1:PORT` trusting `ca_pem`, presenting `identity`
/// (cert, key files) when given. Errors are returned (a refused handshake is one).
pub async fn tls_channel(
    port: u16,
    ca_pem: &str,
    identity: Option<(&Path, &Path)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)?
        .connect()
        .await
}

/// `request` with `authorization: Bearer TOKEN`.
pub fn bearer<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}
