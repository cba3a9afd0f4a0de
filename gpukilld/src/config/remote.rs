//! The sections that reach beyond this node: `[node]` (its name), `[tcp]` (the authenticated
//! TCP listener and who may use it) and `[cluster]` (the coordinator role, static nodes,
//! registration, and the credentials gpukilld presents to other daemons).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ConfigError, duration};

/// `[node]`: this node's identity in a cluster (its id is generated once and kept in the
/// state directory).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name; the host name by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What an authenticated remote principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything an admin of the node may do.
    Admin,
    /// What the local user of the same name may do: read, and act on processes of that user
    /// name.
    User,
    /// Read only.
    Reader,
    /// Read, and forward requests on behalf of the callers it verified.
    Coordinator,
    /// Register with a coordinator and send heartbeats; nothing else.
    Node,
}

impl Role {
    /// The name in configuration and metadata.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Reader => "reader",
            Role::Coordinator => "coordinator",
            Role::Node => "node",
        }
    }

    /// Parses [`name`](Self::name).
    pub fn from_name(name: &str) -> Option<Role> {
        [
            Role::Admin,
            Role::User,
            Role::Reader,
            Role::Coordinator,
            Role::Node,
        ]
        .into_iter()
        .find(|role| role.name() == name)
    }
}

/// `[tcp]`: the gRPC services on TCP, off unless `listen` is set. Every connection is
/// authenticated (client certificates and/or bearer tokens), except on loopback with
/// `insecure_loopback = true`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpConfig {
    /// `IP:PORT`, `[IPv6]:PORT` or `localhost:PORT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The server's certificate chain (PEM). With `key`, the listener speaks TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: mutual TLS. A client
    /// certificate's subject common name (or first DNS name) is its principal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
    /// The bearer token file: one `PRINCIPAL TOKEN` per line (`#` comments), readable by
    /// its owner only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens: Option<PathBuf>,
    /// Serve unauthenticated callers on a loopback address (as principal `anonymous` with
    /// `insecure_role`). Refused on any other address.
    pub insecure_loopback: bool,
    /// The role of unauthenticated loopback callers.
    pub insecure_role: Role,
    /// Principal name -> role. A principal not listed is refused.
    pub principals: BTreeMap<String, Role>,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            listen: None,
            cert: None,
            key: None,
            client_ca: None,
            tokens: None,
            insecure_loopback: false,
            insecure_role: Role::Reader,
            principals: BTreeMap::new(),
        }
    }
}

impl TcpConfig {
    /// The address to listen on, when the listener is on (validation refuses one that does
    /// not parse).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen
            .as_deref()
            .and_then(|text| parse_address(text).ok())
    }

    /// Whether the listener speaks TLS.
    pub fn tls(&self) -> bool {
        self.cert.is_some()
    }

    /// Whether callers must authenticate (a client CA or a token file is configured).
    pub fn authenticates(&self) -> bool {
        self.client_ca.is_some() || self.tokens.is_some()
    }

    pub(super) fn validate(&self, origin: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        // Anyone on the host can connect to a loopback port without credentials, so
        // anonymous callers get no more than reading; a stronger role handed every local
        // user admin (or the coordinator's right to name any caller). Checked with or
        // without `listen`, so a file that says so never loads.
        if self.insecure_role != Role::Reader {
            return Err(ConfigError::Invalid {
                key: "tcp.insecure_role",
                value: format!("{:?}", self.insecure_role.name()),
                origin: origin("tcp"),
                message: "is refused: [tcp] insecure_role may only be \"reader\" (unauthenticated loopback callers may read, nothing more); give callers who must act a token or a client certificate and a role in [tcp.principals]".to_string(),
            });
        }
        let Some(listen) = &self.listen else {
            return Ok(());
        };
        let invalid = |key: &'static str, value: String, message: &str| ConfigError::Invalid {
            key,
            value,
            origin: origin("tcp"),
            message: message.to_string(),
        };
        let address = parse_address(listen)
            .map_err(|message| invalid("tcp.listen", listen.clone(), &message))?;
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        match (&self.cert, &self.key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "tcp.cert",
                    path(&self.cert).unwrap_or_else(|| "(unset)".into()),
                    "and tcp.key go together: set both for TLS, or neither",
                ));
            }
            _ => {}
        }
        if self.client_ca.is_some() && !self.tls() {
            return Err(invalid(
                "tcp.client_ca",
                path(&self.client_ca).unwrap_or_default(),
                "needs TLS: set tcp.cert and tcp.key (client certificates are checked in the TLS handshake)",
            ));
        }
        let loopback = address.ip().is_loopback();
        if self.insecure_loopback && !loopback {
            return Err(invalid(
                "tcp.insecure_loopback",
                "true".into(),
                &format!(
                    "is refused with listen = {listen:?}: unauthenticated TCP is allowed on a loopback address only"
                ),
            ));
        }
        if !self.authenticates() && !self.insecure_loopback {
            return Err(invalid(
                "tcp.listen",
                listen.clone(),
                "has no authentication: set tcp.tokens (a token file) and/or tcp.client_ca (mutual TLS); on a loopback address, insecure_loopback = true serves unauthenticated callers instead",
            ));
        }
        if !loopback && !self.tls() {
            return Err(invalid(
                "tcp.listen",
                listen.clone(),
                "is not a loopback address and the listener has no TLS: set tcp.cert and tcp.key (bearer tokens must not cross the network in clear)",
            ));
        }
        for (principal, role) in &self.principals {
            if principal.is_empty() || principal.chars().any(|c| c.is_whitespace()) {
                return Err(invalid(
                    "tcp.principals",
                    format!("{principal:?} = {:?}", role.name()),
                    "names a principal that is empty or contains spaces",
                ));
            }
        }
        Ok(())
    }
}

/// Parses a listen address (`10.0.0.5:9401`, `[::1]:9401`, `localhost:9401`, which is
/// 127.0.0.1).
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    match text.strip_prefix("localhost:") {
        Some(port) => port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
            .ok(),
        None => text.parse::<SocketAddr>().ok(),
    }
    .ok_or_else(|| {
        "is not an address: write it as IP:PORT, [IPv6]:PORT or localhost:PORT".to_string()
    })
}

/// Whether this daemon is a plain node or also the cluster's coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterRole {
    /// Serves its own GPUs only.
    #[default]
    Node,
    /// Also knows the other nodes: fans out, forwards, accepts registrations.
    Coordinator,
}

impl ClusterRole {
    /// The name in configuration and in Version.
    pub fn name(self) -> &'static str {
        match self {
            ClusterRole::Node => "node",
            ClusterRole::Coordinator => "coordinator",
        }
    }
}

/// A node the coordinator knows from its configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticNode {
    /// Its name (as `gpukillctl --node` names it).
    pub name: String,
    /// Where it listens: `https://host:port` (`http://` on loopback only).
    pub address: String,
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `node` (default) or `coordinator`.
    pub role: ClusterRole,
    /// Coordinator: the nodes it knows from the start.
    pub nodes: Vec<StaticNode>,
    /// Node: the coordinator to register with (`https://host:port`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coordinator: Option<String>,
    /// Node: the address the coordinator reaches this node at; by default
    /// `https://<host name>:<tcp.listen port>` (`http://` with an insecure loopback
    /// listener).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// How often a registered node sends a heartbeat.
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// Coordinator: a registered node with no heartbeat for this long is down.
    #[serde(with = "duration")]
    pub node_timeout: Duration,
    /// Coordinator: how long a fan-out waits for each node.
    #[serde(with = "duration")]
    pub deadline: Duration,
    /// The bearer token this daemon presents to other daemons (a file holding the token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The client certificate this daemon presents (PEM), with `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// The CA certificates (PEM) other daemons' server certificates must chain to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            role: ClusterRole::Node,
            nodes: Vec::new(),
            coordinator: None,
            advertise: None,
            heartbeat_interval: Duration::from_secs(10),
            node_timeout: Duration::from_secs(30),
            deadline: Duration::from_secs(1),
            token_file: None,
            cert: None,
            key: None,
            ca: None,
        }
    }
}

/// A parsed `https://host:port` (or loopback `http://`) address of another daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonUrl {
    /// The URL as written.
    pub url: String,
    /// Whether it is `https`.
    pub tls: bool,
    /// The host name (or address) the server certificate must name.
    pub host: String,
}

/// Whether `host` (a name or an address, without brackets) is `localhost` or a loopback
/// address: where `http://` is allowed.
pub(super) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|address| address.is_loopback())
}

/// Parses the address of another daemon: `https://host:port`, or `http://` to a loopback
/// address (tests, an SSH tunnel).
pub fn parse_daemon_url(text: &str) -> Result<DaemonUrl, String> {
    let (tls, rest) = if let Some(rest) = text.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = text.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err("must start with https:// (http:// on a loopback address only)".into());
    };
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err("must be https://HOST:PORT, without a path".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => (host, port),
        _ => return Err("needs a port: https://HOST:PORT".into()),
    };
    let _ = port;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if !tls && !is_loopback_host(&host) {
        return Err(
            "uses http:// to a host that is not loopback: use https:// (requests carry credentials)"
                .into(),
        );
    }
    Ok(DaemonUrl {
        url: text.trim_end_matches('/').to_string(),
        tls,
        host,
    })
}

impl ClusterConfig {
    pub(super) fn validate(
        &self,
        tcp: &TcpConfig,
        origin: &dyn Fn(&str) -> String,
    ) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, message: String| ConfigError::Invalid {
            key,
            value,
            origin: origin("cluster"),
            message,
        };
        let mut names = BTreeMap::new();
        for node in &self.nodes {
            if node.name.is_empty() || node.name.chars().any(|c| c.is_whitespace() || c == '/') {
                return Err(invalid(
                    "cluster.nodes",
                    format!("{:?}", node.name),
                    "is not a node name: use letters, digits, '-', '_' or '.'".into(),
                ));
            }
            if names.insert(node.name.as_str(), ()).is_some() {
                return Err(invalid(
                    "cluster.nodes",
                    format!("{:?}", node.name),
                    "is listed twice: node names are unique".into(),
                ));
            }
            parse_daemon_url(&node.address).map_err(|message| {
                invalid(
                    "cluster.nodes",
                    format!("{} = {:?}", node.name, node.address),
                    message,
                )
            })?;
        }
        if !self.nodes.is_empty() && self.role != ClusterRole::Coordinator {
            return Err(invalid(
                "cluster.nodes",
                format!("{} nodes", self.nodes.len()),
                "is set but cluster.role is \"node\": only a coordinator uses the node list".into(),
            ));
        }
        if let Some(coordinator) = &self.coordinator {
            parse_daemon_url(coordinator)
                .map_err(|message| invalid("cluster.coordinator", coordinator.clone(), message))?;
            if tcp.listen.is_none() {
                return Err(invalid(
                    "cluster.coordinator",
                    coordinator.clone(),
                    "is set but tcp.listen is not: the coordinator reaches a registered node over TCP".into(),
                ));
            }
        }
        if let Some(advertise) = &self.advertise {
            parse_daemon_url(advertise)
                .map_err(|message| invalid("cluster.advertise", advertise.clone(), message))?;
        }
        match (&self.cert, &self.key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(invalid(
                    "cluster.cert",
                    self.cert
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "(unset)".into()),
                    "and cluster.key go together: set both to present a client certificate".into(),
                ));
            }
            _ => {}
        }
        for (key, value) in [
            ("cluster.heartbeat_interval", self.heartbeat_interval),
            ("cluster.node_timeout", self.node_timeout),
            ("cluster.deadline", self.deadline),
        ] {
            if value < Duration::from_millis(10) || value > Duration::from_secs(3600) {
                return Err(invalid(
                    key,
                    duration::format(value),
                    "is out of range: use 10ms to 1h".into(),
                ));
            }
        }
        if self.node_timeout <= self.heartbeat_interval {
            return Err(invalid(
                "cluster.node_timeout",
                duration::format(self.node_timeout),
                format!(
                    "must be longer than cluster.heartbeat_interval ({}), or every node is down between two heartbeats",
                    duration::format(self.heartbeat_interval)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn tcp(listen: &str) -> TcpConfig {
        TcpConfig {
            listen: Some(listen.into()),
            ..TcpConfig::default()
        }
    }

    fn validate(tcp: &TcpConfig) -> Result<(), String> {
        tcp.validate(&|_| "test".into())
            .map_err(|error| error.to_string())
    }

    #[test]
    fn tcp_without_authentication_is_refused_unless_insecure_on_loopback() {
        let error = validate(&tcp("0.0.0.0:9401")).unwrap_err();
        assert!(error.contains("has no authentication"), "{error}");
        assert!(error.contains("0.0.0.0:9401"), "{error}");
        let error = validate(&tcp("127.0.0.1:9401")).unwrap_err();
        assert!(error.contains("insecure_loopback = true"), "{error}");
        let mut insecure = tcp("127.0.0.1:9401");
        insecure.insecure_loopback = true;
        assert_eq!(validate(&insecure), Ok(()));
        let mut wide = tcp("0.0.0.0:9401");
        wide.insecure_loopback = true;
        let error = validate(&wide).unwrap_err();
        assert!(error.contains("loopback address only"), "{error}");
    }

    #[test]
    fn anonymous_loopback_callers_may_only_read() {
        for role in [Role::Admin, Role::Coordinator, Role::User, Role::Node] {
            let mut insecure = tcp("127.0.0.1:9401");
            insecure.insecure_loopback = true;
            insecure.insecure_role = role;
            let error = validate(&insecure).unwrap_err();
            assert!(
                error.contains("tcp.insecure_role")
                    && error.contains(role.name())
                    && error.contains("\"reader\""),
                "{error}"
            );
            // Even with the listener off: such a file never loads.
            insecure.listen = None;
            assert!(validate(&insecure).is_err());
        }
        let mut reader = tcp("127.0.0.1:9401");
        reader.insecure_loopback = true;
        assert_eq!(validate(&reader), Ok(()));
    }

    #[test]
    fn tokens_off_loopback_need_tls_and_a_client_ca_needs_tls() {
        let mut tokens = tcp("10.0.0.5:9401");
        tokens.tokens = Some("/etc/gpukill/tokens".into());
        let error = validate(&tokens).unwrap_err();
        assert!(error.contains("no TLS"), "{error}");
        tokens.cert = Some("/etc/gpukill/server.pem".into());
        let error = validate(&tokens).unwrap_err();
        assert!(error.contains("go together"), "{error}");
        tokens.key = Some("/etc/gpukill/server.key".into());
        assert_eq!(validate(&tokens), Ok(()));
        let mut mtls = tcp("127.0.0.1:9401");
        mtls.client_ca = Some("/etc/gpukill/ca.pem".into());
        let error = validate(&mtls).unwrap_err();
        assert!(error.contains("needs TLS"), "{error}");
    }

    #[test]
    fn daemon_urls_are_https_or_loopback_http() {
        let url = parse_daemon_url("https://n1.example:9401").unwrap();
        assert!(url.tls);
        assert_eq!(url.host, "n1.example");
        assert!(parse_daemon_url("http://127.0.0.1:9401").is_ok());
        assert!(parse_daemon_url("http://[::1]:9401").is_ok());
        let error = parse_daemon_url("http://10.0.0.5:9401").unwrap_err();
        assert!(error.contains("not loopback"), "{error}");
        assert!(parse_daemon_url("n1:9401").is_err());
        assert!(parse_daemon_url("https://n1").is_err());
        assert!(parse_daemon_url("https://n1:9401/x").is_err());
    }

    #[test]
    fn cluster_nodes_are_unique_and_for_coordinators() {
        let node = |name: &str| StaticNode {
            name: name.into(),
            address: "https://n:9401".into(),
        };
        let mut cluster = ClusterConfig {
            nodes: vec![node("n1")],
            ..ClusterConfig::default()
        };
        let check = |cluster: &ClusterConfig| {
            cluster
                .validate(&TcpConfig::default(), &|_| "test".into())
                .map_err(|error| error.to_string())
        };
        assert!(check(&cluster).unwrap_err().contains("only a coordinator"));
        cluster.role = ClusterRole::Coordinator;
        assert_eq!(check(&cluster), Ok(()));
        cluster.nodes.push(node("n1"));
        assert!(check(&cluster).unwrap_err().contains("listed twice"));
        cluster.nodes.pop();
        cluster.node_timeout = Duration::from_secs(5);
        assert!(check(&cluster).unwrap_err().contains("longer than"));
    }
}
