//! How this daemon reaches other daemons: the credentials of `[cluster]` (a bearer token, a
//! client certificate, the CA their server certificates chain to) and lazily connected
//! channels to `https://host:port` addresses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::{ClusterConfig, DaemonUrl, parse_daemon_url};

/// Why the cluster credentials or an address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A credential file cannot be read.
    #[error("cannot read cluster.{key} = {path}")]
    Read {
        /// The configuration key.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file is unusable.
    #[error("cluster.token_file = {path}: {message}")]
    Token {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An `https://` address without `cluster.ca`.
    #[error(
        "{0} is https:// but cluster.ca is not set: name the CA that signs the other daemons' certificates"
    )]
    NoCa(String),
    /// An address is not usable.
    #[error("{address}: {message}")]
    Address {
        /// The address.
        address: String,
        /// What is wrong.
        message: String,
    },
}

/// What this daemon presents to, and expects from, other daemons.
#[derive(Clone)]
pub struct Credentials {
    /// `authorization: Bearer ...`, when a token is configured.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    ca: Option<Certificate>,
    identity: Option<Identity>,
    /// Connect timeout for new connections.
    connect_timeout: Duration,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("token", &self.authorization.is_some())
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

impl Credentials {
    /// Reads the files `[cluster]` names.
    pub fn load(config: &ClusterConfig) -> Result<Credentials, ClientError> {
        let authorization =
            match &config.token_file {
                Some(path) => {
                    let bad = |message: String| ClientError::Token {
                        path: path.clone(),
                        message,
                    };
                    let value = crate::authz::tokens::read_bearer(path).map_err(bad)?;
                    Some(value.parse().map_err(|_| {
                        bad("the token holds characters a header cannot carry".into())
                    })?)
                }
                None => None,
            };
        let ca = config
            .ca
            .as_deref()
            .map(|path| read("ca", path).map(Certificate::from_pem))
            .transpose()?;
        let identity = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => {
                Some(Identity::from_pem(read("cert", cert)?, read("key", key)?))
            }
            _ => None,
        };
        Ok(Credentials {
            authorization,
            ca,
            identity,
            connect_timeout: config.deadline,
        })
    }

    /// A channel to `address` that connects on first use (and reconnects after a failure).
    pub fn channel(&self, address: &str) -> Result<Channel, ClientError> {
        let url = parse_daemon_url(address).map_err(|message| ClientError::Address {
            address: address.to_string(),
            message,
        })?;
        let endpoint = self.endpoint(&url)?;
        Ok(endpoint.connect_lazy())
    }

    fn endpoint(&self, url: &DaemonUrl) -> Result<Endpoint, ClientError> {
        let invalid = |error: tonic::transport::Error| ClientError::Address {
            address: url.url.clone(),
            message: error.to_string(),
        };
        let endpoint = Endpoint::from_shared(url.url.clone())
            .map_err(invalid)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(false);
        if !url.tls {
            return Ok(endpoint);
        }
        let ca = self
            .ca
            .clone()
            .ok_or_else(|| ClientError::NoCa(url.url.clone()))?;
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(ca)
            .domain_name(url.host.clone());
        if let Some(identity) = &self.identity {
            tls = tls.identity(identity.clone());
        }
        endpoint.tls_config(tls).map_err(invalid)
    }

    /// Adds this daemon's bearer token to a request.
    pub fn authorize<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
    }

    /// The `authorization` header value, for requests forwarded as raw HTTP.
    pub fn authorization_header(&self) -> Option<tonic::codegen::http::HeaderValue> {
        self.authorization
            .as_ref()
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse().ok())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[tokio::test]
    async fn https_needs_a_ca_and_the_token_comes_from_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "\n  s3cret-token-0123456789 \n").unwrap();
        // A token file is readable by its owner only (authz::tokens::read_bearer checks).
        std::fs::set_permissions(&token, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let config = ClusterConfig {
            token_file: Some(token),
            ..ClusterConfig::default()
        };
        let credentials = Credentials::load(&config).unwrap();
        let mut request = tonic::Request::new(());
        credentials.authorize(&mut request);
        assert_eq!(
            request.metadata().get("authorization").unwrap(),
            "Bearer s3cret-token-0123456789"
        );
        let error = credentials
            .channel("https://n1:9401")
            .unwrap_err()
            .to_string();
        assert!(error.contains("cluster.ca"), "{error}");
        assert!(credentials.channel("http://127.0.0.1:9401").is_ok());
        let error = credentials
            .channel("http://n1:9401")
            .unwrap_err()
            .to_string();
        assert!(error.contains("not loopback"), "{error}");

        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        std::fs::set_permissions(&empty, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let error = Credentials::load(&ClusterConfig {
            token_file: Some(empty),
            ..ClusterConfig::default()
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("holds no token"), "{error}");
    }
}
