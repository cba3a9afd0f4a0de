//! `[upload]` (sending each closed hour's usage to a central server) and `[ingest]`
//! (receiving it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration, parse_address};

/// `[upload]`: off unless `url` is set (or `offline`, which queues without sending).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadConfig {
    /// Where to POST each hour: `https://host[:port]/path` (`http://` to a loopback host
    /// only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// A file holding the bearer token to present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The CA certificates (PEM) the server's certificate must chain to (required for
    /// `https://`: this build trusts no system roots).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Queue hours without sending them (also `gpukilld --offline`).
    pub offline: bool,
    /// Failed attempts after which an entry is parked (kept, not sent again until an admin
    /// retries it).
    pub max_attempts: u32,
    /// Undelivered hours kept at most; the oldest beyond are dropped, counted and logged.
    pub max_outbox_hours: u32,
    /// How long delivered hours are kept.
    #[serde(with = "duration")]
    pub delivered_retention: Duration,
    /// The first retry's ceiling; each retry doubles it (full jitter), up to `retry_max`.
    #[serde(with = "duration")]
    pub retry_min: Duration,
    /// The longest wait between two attempts.
    #[serde(with = "duration")]
    pub retry_max: Duration,
    /// How long one attempt may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            url: None,
            token_file: None,
            ca: None,
            offline: false,
            max_attempts: 10,
            max_outbox_hours: 24 * 90,
            delivered_retention: Duration::from_secs(30 * 86_400),
            retry_min: Duration::from_secs(1),
            retry_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(30),
        }
    }
}

/// A parsed upload URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadUrl {
    /// The URL as written.
    pub url: String,
    /// Whether it is `https`.
    pub tls: bool,
    /// The host the certificate must name.
    pub host: String,
    /// The port (443 or 80 when not written).
    pub port: u16,
    /// The path (and query).
    pub path: String,
}

/// Parses `https://host[:port]/path`, or `http://` to a loopback host.
pub fn parse_upload_url(text: &str) -> Result<UploadUrl, String> {
    let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("must start with https:// (http:// to a loopback host only)".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host: https://HOST[:PORT]/PATH".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            match port.parse::<u16>() {
                Ok(port) if !host.is_empty() => (host, port),
                _ if authority.starts_with('[') && authority.ends_with(']') => {
                    (authority, if tls { 443 } else { 80 })
                }
                _ => return Err(format!("has a bad port {port:?}")),
            }
        }
        _ => (authority, if tls { 443 } else { 80 }),
    };
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !tls && !super::remote::is_loopback_host(&host) {
        return Err(
            "uses http:// to a host that is not loopback: use https:// (uploads carry a token)"
                .into(),
        );
    }
    Ok(UploadUrl {
        url: text.to_string(),
        tls,
        host,
        port,
        path: path.to_string(),
    })
}

impl UploadConfig {
    /// Whether hours are queued (sent or not).
    pub fn enabled(&self) -> bool {
        self.url.is_some() || self.offline
    }

    pub(super) fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, message: String| ConfigError::Invalid {
            key,
            value,
            origin: origin("upload"),
            message,
        };
        if let Some(url) = &self.url {
            let parsed = parse_upload_url(url)
                .map_err(|message| invalid("upload.url", url.clone(), message))?;
            if parsed.tls && self.ca.is_none() {
                return Err(invalid(
                    "upload.url",
                    url.clone(),
                    "is https:// but upload.ca is not set: name the CA that signs the server's certificate".into(),
                ));
            }
        }
        if self.max_attempts == 0 {
            return Err(invalid(
                "upload.max_attempts",
                "0".into(),
                "must be at least 1".into(),
            ));
        }
        if self.max_outbox_hours == 0 {
            return Err(invalid(
                "upload.max_outbox_hours",
                "0".into(),
                "must be at least 1".into(),
            ));
        }
        if self.retry_min > self.retry_max || self.retry_min < Duration::from_millis(10) {
            return Err(invalid(
                "upload.retry_min",
                duration::format(self.retry_min),
                format!(
                    "must be at least 10ms and at most upload.retry_max ({})",
                    duration::format(self.retry_max)
                ),
            ));
        }
        if self.timeout < Duration::from_millis(100) {
            return Err(invalid(
                "upload.timeout",
                duration::format(self.timeout),
                "must be at least 100ms".into(),
            ));
        }
        Ok(())
    }
}

/// `[ingest]`: receiving uploads (`POST /api/v1/usage`) and serving them back (`GET`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Whether to serve the ingest endpoint.
    pub enabled: bool,
    /// Where: `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
    pub listen: String,
    /// The token file (`PRINCIPAL TOKEN` per line, mode 0600) of the nodes that may upload
    /// and the readers; required.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<PathBuf>,
    /// The server's certificate chain (PEM); with `key`, the endpoint speaks TLS (required
    /// off loopback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Principal (of the token file) -> what it may do: upload for the node ids it is bound
    /// to (`node`), or read every node's rows (`reader`). A principal not listed is refused;
    /// required when the endpoint is on.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub principals: BTreeMap<String, IngestPrincipal>,
}

/// What an ingest principal is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestRole {
    /// A node: uploads (`POST`) the hours of the node ids in `nodes`, and reads back
    /// (`GET`) only theirs.
    Node,
    /// Reads (`GET`) every node's rows; never uploads.
    Reader,
}

impl IngestRole {
    /// The name in configuration.
    pub fn name(self) -> &'static str {
        match self {
            IngestRole::Node => "node",
            IngestRole::Reader => "reader",
        }
    }
}

/// One `[ingest.principals]` entry: `NAME = { role = "node", nodes = ["<node id>"] }` or
/// `NAME = { role = "reader" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestPrincipal {
    /// What the principal is for.
    pub role: IngestRole,
    /// For `node`: the node ids (32 hex digits, `<state_dir>/node-id` on the node,
    /// `gpukillctl version` shows it) whose hours it may upload and read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<String>,
}

/// Whether `id` is a node id as a node generates it: 32 lower-case hex digits.
pub fn is_node_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: "127.0.0.1:9402".to_string(),
            tokens: None,
            cert: None,
            key: None,
            principals: BTreeMap::new(),
        }
    }
}

impl IngestConfig {
    pub(super) fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        let invalid = |key: &'static str, value: String, message: &str| ConfigError::Invalid {
            key,
            value,
            origin: origin("ingest"),
            message: message.to_string(),
        };
        let address = parse_address(&self.listen)
            .map_err(|message| invalid("ingest.listen", self.listen.clone(), &message))?;
        if self.tokens.is_none() {
            return Err(invalid(
                "ingest.tokens",
                "(unset)".into(),
                "is required: the ingest endpoint accepts uploads only with a bearer token",
            ));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(invalid(
                "ingest.cert",
                format!("{:?}", self.cert),
                "and ingest.key go together: set both for TLS, or neither",
            ));
        }
        if !address.ip().is_loopback() && self.cert.is_none() {
            return Err(invalid(
                "ingest.listen",
                self.listen.clone(),
                "is not a loopback address and the endpoint has no TLS: set ingest.cert and ingest.key (tokens must not cross the network in clear)",
            ));
        }
        self.validate_principals(&invalid)
    }

    /// Every token must be bound to what it may do: without `[ingest.principals]` any
    /// token holder could overwrite any node's hours, so an enabled endpoint without it does
    /// not start (a config from before the table existed included; the message says what
    /// to add).
    fn validate_principals(
        &self,
        invalid: &dyn Fn(&'static str, String, &str) -> ConfigError,
    ) -> Result<(), ConfigError> {
        const KEY: &str = "ingest.principals";
        if self.principals.is_empty() {
            return Err(invalid(
                KEY,
                "(unset)".into(),
                "is required: bind each principal of ingest.tokens to the node ids it uploads for, and name the readers, e.g. [ingest.principals] gpu-07 = { role = \"node\", nodes = [\"<node id: gpukillctl version on gpu-07>\"] } and billing = { role = \"reader\" }",
            ));
        }
        let mut owners: BTreeMap<&str, &str> = BTreeMap::new();
        for (principal, entry) in &self.principals {
            let value = || {
                format!(
                    "{principal:?} = {{ role = {:?}, nodes = {:?} }}",
                    entry.role.name(),
                    entry.nodes
                )
            };
            if principal.is_empty() || principal.chars().any(|c| c.is_whitespace()) {
                return Err(invalid(
                    KEY,
                    value(),
                    "names a principal that is empty or contains spaces",
                ));
            }
            match entry.role {
                IngestRole::Reader if !entry.nodes.is_empty() => {
                    return Err(invalid(
                        KEY,
                        value(),
                        "gives a reader nodes: a reader reads every node and uploads for none; remove nodes, or make it role = \"node\"",
                    ));
                }
                IngestRole::Node if entry.nodes.is_empty() => {
                    return Err(invalid(
                        KEY,
                        value(),
                        "gives a node principal no nodes: list the node ids it uploads for (gpukillctl version on the node shows its id)",
                    ));
                }
                _ => {}
            }
            for node in &entry.nodes {
                if !is_node_id(node) {
                    return Err(invalid(
                        KEY,
                        value(),
                        &format!(
                            "lists {node:?}, which is not a node id: a node id is 32 lower-case hex digits (<state_dir>/node-id on the node, or gpukillctl version)"
                        ),
                    ));
                }
                if let Some(other) = owners.insert(node, principal) {
                    return Err(invalid(
                        KEY,
                        value(),
                        &format!(
                            "lists node {node}, which {other:?} lists too: a node id belongs to one principal, or either could overwrite the other's hours"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn upload_urls() {
        let url = parse_upload_url("https://central.example/api/v1/usage").unwrap();
        assert_eq!(
            (url.host.as_str(), url.port, url.path.as_str()),
            ("central.example", 443, "/api/v1/usage")
        );
        let url = parse_upload_url("http://127.0.0.1:9402/api/v1/usage").unwrap();
        assert_eq!((url.tls, url.port), (false, 9402));
        let url = parse_upload_url("https://[::1]:8443/x").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 8443));
        assert!(
            parse_upload_url("http://central:9402/x")
                .unwrap_err()
                .contains("not loopback")
        );
        assert!(parse_upload_url("ftp://x/y").is_err());
        assert!(parse_upload_url("https://user@x/y").is_err());
        assert!(parse_upload_url("https://x:port/y").is_err());
    }

    const ID: &str = "5f0c1e2d3b4a69788796a5b4c3d2e1f0";

    /// `[ingest]` on with a token file and `principals` (TOML lines of the table), validated.
    fn ingest(principals: &str) -> Result<IngestConfig, String> {
        let text = format!(
            "enabled = true\ntokens = \"/etc/gpukill/ingest-tokens\"\n[principals]\n{principals}"
        );
        let config: IngestConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        config
            .validate(&|_| "gpukilld.toml".to_string())
            .map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn ingest_principals_bind_nodes_and_readers() {
        let config = ingest(&format!(
            "gpu-07 = {{ role = \"node\", nodes = [\"{ID}\"] }}\nbilling = {{ role = \"reader\" }}\n"
        ))
        .unwrap();
        assert_eq!(config.principals["gpu-07"].role, IngestRole::Node);
        assert_eq!(config.principals["gpu-07"].nodes, [ID]);
        assert_eq!(config.principals["billing"].role, IngestRole::Reader);
        // Off, the table is not needed (the shipped sample).
        assert!(IngestConfig::default().validate(&|_| String::new()).is_ok());
    }

    #[test]
    fn an_ingest_without_principals_is_refused_naming_what_to_add() {
        let error = ingest("").unwrap_err();
        assert!(
            error.starts_with("ingest.principals = (unset)")
                && error.contains("role = \"node\", nodes = [")
                && error.contains("role = \"reader\""),
            "{error}"
        );
    }

    #[test]
    fn bad_ingest_principals_are_refused_each_with_its_reason() {
        for (principals, expected) in [
            (
                format!("r = {{ role = \"reader\", nodes = [\"{ID}\"] }}"),
                "gives a reader nodes",
            ),
            ("n = { role = \"node\" }".to_string(), "no nodes"),
            (
                "n = { role = \"node\", nodes = [\"gpu-07\"] }".to_string(),
                "\"gpu-07\", which is not a node id",
            ),
            (
                format!(
                    "a = {{ role = \"node\", nodes = [\"{ID}\"] }}\nb = {{ role = \"node\", nodes = [\"{ID}\"] }}"
                ),
                "which \"a\" lists too",
            ),
            (
                format!("\"a b\" = {{ role = \"node\", nodes = [\"{ID}\"] }}"),
                "empty or contains spaces",
            ),
        ] {
            let error = ingest(&principals).unwrap_err();
            assert!(
                error.starts_with("ingest.principals = ") && error.contains(expected),
                "{principals}: {error}"
            );
        }
        // Unknown roles and keys are refused by the parser.
        assert!(ingest("a = { role = \"admin\" }").is_err());
        assert!(ingest(&format!("a = {{ role = \"node\", node = [\"{ID}\"] }}")).is_err());
    }
}
