//! One upload attempt: POST a payload to `[upload] url` over HTTP/1.1 (TLS with rustls for
//! `https://`, trusting `[upload] ca` only), with `Authorization`, `Idempotency-Key` and
//! `Content-SHA256`, and classify the answer. A connection is kept for the next entry while
//! the server keeps it open, so a backlog drains over one connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HOST, HeaderValue};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::config::{UploadConfig, UploadUrl, parse_upload_url};
pub use crate::usage_payload::{CONTENT_SHA256, IDEMPOTENCY_KEY};

/// The most of a server's error message kept.
const MESSAGE_LIMIT: usize = 300;

/// Why the upload client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A file holds nothing usable.
    #[error("upload.{key} = {path}: {message}")]
    Content {
        /// The key.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A PEM file cannot be read or parsed.
    #[error(transparent)]
    Pem(#[from] crate::tls::TlsError),
}

/// What the server said to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx and the hash echoed.
    Stored {
        /// The status.
        status: u16,
    },
    /// Worth another attempt: 5xx, 408, 429, a 2xx without the right hash, or no answer.
    Retry {
        /// The status, when there was an answer.
        status: Option<u16>,
        /// What happened.
        error: String,
    },
    /// Refused for good: any other 4xx.
    Refused {
        /// The status.
        status: u16,
        /// The server's message.
        error: String,
    },
}

/// Sends payloads to the configured server.
pub struct UploadClient {
    url: UploadUrl,
    authorization: Option<HeaderValue>,
    tls: Option<tokio_rustls::TlsConnector>,
    timeout: Duration,
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl UploadClient {
    /// Reads the token and the CA `config` names (the URL was validated with it).
    pub fn new(config: &UploadConfig) -> Result<Option<UploadClient>, ClientError> {
        let Some(url) = config.url.as_deref() else {
            return Ok(None);
        };
        let url = parse_upload_url(url).map_err(|message| ClientError::Content {
            key: "url",
            path: url.into(),
            message,
        })?;
        let authorization =
            match &config.token_file {
                Some(path) => {
                    let bad = |message: String| ClientError::Content {
                        key: "token_file",
                        path: path.clone(),
                        message,
                    };
                    let value = crate::authz::tokens::read_bearer(path).map_err(bad)?;
                    Some(HeaderValue::from_str(&value).map_err(|_| {
                        bad("the token holds characters a header cannot carry".into())
                    })?)
                }
                None => None,
            };
        let tls = match (&config.ca, url.tls) {
            (Some(ca), true) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in crate::tls::read_certificates("upload", "ca", ca)? {
                    roots
                        .add(certificate)
                        .map_err(|error| ClientError::Content {
                            key: "ca",
                            path: ca.clone(),
                            message: format!("not a usable CA certificate: {error}"),
                        })?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let client = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|error| ClientError::Content {
                        key: "ca",
                        path: ca.clone(),
                        message: error.to_string(),
                    })?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(client)))
            }
            _ => None,
        };
        Ok(Some(UploadClient {
            url,
            authorization,
            tls,
            timeout: config.timeout,
            connection: None,
        }))
    }

    /// The URL it sends to.
    pub fn url(&self) -> &str {
        &self.url.url
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        let stream = TcpStream::connect((self.url.host.as_str(), self.url.port))
            .await
            .map_err(|error| {
                format!(
                    "cannot connect to {}:{}: {error}",
                    self.url.host, self.url.port
                )
            })?;
        let _ = stream.set_nodelay(true);
        match &self.tls {
            Some(connector) => {
                let name = ServerName::try_from(self.url.host.clone())
                    .map_err(|error| format!("{}: {error}", self.url.host))?;
                let stream = connector.connect(name, stream).await.map_err(|error| {
                    format!("TLS handshake with {} failed: {error}", self.url.host)
                })?;
                handshake(TokioIo::new(stream)).await
            }
            None => handshake(TokioIo::new(stream)).await,
        }
    }

    /// POSTs `payload` (whose hash is `sha256`) with `key`, within the timeout.
    pub async fn send(&mut self, payload: &[u8], sha256: &str, key: &str) -> Answer {
        match tokio::time::timeout(self.timeout, self.send_once(payload, sha256, key)).await {
            Ok(answer) => answer,
            Err(_) => {
                self.connection = None;
                Answer::Retry {
                    status: None,
                    error: format!(
                        "no answer within {}",
                        humantime::format_duration(self.timeout)
                    ),
                }
            }
        }
    }

    async fn send_once(&mut self, payload: &[u8], sha256: &str, key: &str) -> Answer {
        let mut sender = match self.connection.take() {
            Some(sender) if !sender.is_closed() => sender,
            _ => match self.connect().await {
                Ok(sender) => sender,
                Err(error) => {
                    return Answer::Retry {
                        status: None,
                        error,
                    };
                }
            },
        };
        let mut request = hyper::Request::post(self.url.path.as_str())
            .header(HOST, format!("{}:{}", self.url.host, self.url.port))
            .header(CONTENT_TYPE, "application/json")
            .header(CONTENT_LENGTH, payload.len())
            .header(CONTENT_SHA256, sha256)
            .header(IDEMPOTENCY_KEY, key);
        if let Some(authorization) = &self.authorization {
            request = request.header(AUTHORIZATION, authorization.clone());
        }
        let request = match request.body(Full::new(Bytes::copy_from_slice(payload))) {
            Ok(request) => request,
            Err(error) => {
                return Answer::Refused {
                    status: 0,
                    error: format!("cannot build the request: {error}"),
                };
            }
        };
        if sender.ready().await.is_err() {
            match self.connect().await {
                Ok(fresh) => sender = fresh,
                Err(error) => {
                    return Answer::Retry {
                        status: None,
                        error,
                    };
                }
            }
        }
        let response = match sender.send_request(request).await {
            Ok(response) => response,
            Err(error) => {
                return Answer::Retry {
                    status: None,
                    error: format!("the connection broke: {}", crate::errors::chain(&error)),
                };
            }
        };
        let status = response.status().as_u16();
        let echoed = response
            .headers()
            .get(CONTENT_SHA256)
            .and_then(|value| value.to_str().ok())
            .map(str::to_string);
        let body = match response.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(error) => {
                return Answer::Retry {
                    status: Some(status),
                    error: format!("the answer broke off: {error}"),
                };
            }
        };
        self.connection = Some(sender);
        classify(status, echoed.as_deref(), &body, sha256)
    }
}

async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, connection) = http1::handshake(io)
        .await
        .map_err(|error| format!("HTTP handshake failed: {error}"))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%error, "upload connection ended");
        }
    });
    Ok(sender)
}

/// What an answer means. A 2xx counts only when the server echoes the hash it stored,
/// in the `Content-SHA256` header or as `sha256` in a JSON body.
pub fn classify(status: u16, echoed: Option<&str>, body: &[u8], sent: &str) -> Answer {
    let message = || {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let mut message: String = text.chars().take(MESSAGE_LIMIT).collect();
        if text.chars().count() > MESSAGE_LIMIT {
            message.push('…');
        }
        if message.is_empty() {
            format!("HTTP {status}")
        } else {
            format!("HTTP {status}: {message}")
        }
    };
    match status {
        200..=299 => {
            let stored = echoed.map(str::to_string).or_else(|| {
                serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|json| json.get("sha256")?.as_str().map(str::to_string))
            });
            match stored {
                Some(stored) if stored.eq_ignore_ascii_case(sent) => Answer::Stored { status },
                Some(stored) => Answer::Retry {
                    status: Some(status),
                    error: format!(
                        "HTTP {status} but the server stored hash {stored}, not the {sent} sent"
                    ),
                },
                None => Answer::Retry {
                    status: Some(status),
                    error: format!("HTTP {status} without the stored content hash"),
                },
            }
        }
        408 | 429 => Answer::Retry {
            status: Some(status),
            error: message(),
        },
        400..=499 => Answer::Refused {
            status,
            error: message(),
        },
        _ => Answer::Retry {
            status: Some(status),
            error: message(),
        },
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn answers_are_classified_as_the_contract_says() {
        let sent = "ab".repeat(32);
        assert_eq!(
            classify(200, Some(&sent), b"", &sent),
            Answer::Stored { status: 200 }
        );
        let body = format!("{{\"sha256\":\"{sent}\",\"rows\":3}}");
        assert_eq!(
            classify(201, None, body.as_bytes(), &sent),
            Answer::Stored { status: 201 }
        );
        assert!(matches!(
            classify(200, Some("cd"), b"", &sent),
            Answer::Retry { error, .. } if error.contains("stored hash cd")
        ));
        assert!(matches!(
            classify(200, None, b"ok", &sent),
            Answer::Retry { .. }
        ));
        assert!(matches!(
            classify(500, None, b"", &sent),
            Answer::Retry {
                status: Some(500),
                ..
            }
        ));
        assert!(matches!(
            classify(429, None, b"slow down", &sent),
            Answer::Retry { .. }
        ));
        assert!(matches!(
            classify(408, None, b"", &sent),
            Answer::Retry { .. }
        ));
        assert_eq!(
            classify(400, None, b"bad schema", &sent),
            Answer::Refused {
                status: 400,
                error: "HTTP 400: bad schema".into()
            }
        );
    }
}
