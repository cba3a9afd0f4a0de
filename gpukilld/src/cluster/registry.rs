//! The nodes a coordinator knows: static ones from `[cluster] nodes` and those that
//! registered, each with a lazily connected channel and what the coordinator last heard
//! from it. A registered node is down once its heartbeats stop for `node_timeout`; a static
//! node is up or down as its last request went.
//!
//! A registration belongs to the node principal that made it: its node id and its name can
//! be changed (re-registered, renamed, kept alive by heartbeats) by that principal only, and a
//! static node's name by nobody. Each binding (node id -> principal, and the name it last
//! registered) is also kept in the store, and restored when the coordinator starts, so a
//! restart does not free an id or a name for another principal to take; the real nodes
//! register again within one heartbeat interval (their next heartbeat is answered "not
//! registered").

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use gpukill_proto::v1 as pb;
use tonic::transport::Channel;

use super::client::{ClientError, Credentials};
use crate::authz::{self, AuthzError};
use crate::config::StaticNode;
use crate::store::NodeRegistration;

/// The most registered nodes a coordinator keeps (static nodes not counted): more than a
/// cluster of 1,000 nodes needs, and a bound on what node credentials can make it hold.
pub const MAX_REGISTERED_NODES: usize = 4096;

/// The most node ids a coordinator remembers the principal of (they outlive the nodes, so
/// that a reinstalled or retired node's id is never free for another principal).
pub const MAX_BOUND_NODE_IDS: usize = 65_536;

/// Where a node came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// `[cluster] nodes`.
    Static,
    /// It called Register.
    Registered,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Registered => "registered",
        }
    }
}

/// One node.
#[derive(Debug, Clone)]
struct Entry {
    id: Option<String>,
    /// The principal that registered it (None: a static node, bound to the configuration).
    owner: Option<String>,
    address: String,
    source: Source,
    channel: Channel,
    /// The last heartbeat, registration or answer.
    last_seen: Option<(Instant, SystemTime)>,
    /// The last request's failure (static nodes), cleared by an answer.
    error: Option<String>,
    /// Whether the monitor last logged this node as down.
    logged_down: bool,
}

/// A node to send a request to.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its name.
    pub name: String,
    /// Its channel.
    pub channel: Channel,
    /// Why it is not asked at all (a registered node whose heartbeats stopped).
    pub down: Option<String>,
}

/// Why a registration is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegisterError {
    /// The name belongs to a static node or to another live node.
    #[error("{0}")]
    NameTaken(String),
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// Another principal registered the node id or the name first.
    #[error(transparent)]
    NotOwner(#[from] AuthzError),
    /// [`MAX_REGISTERED_NODES`] are registered already.
    #[error("{0}")]
    Full(String),
}

/// The coordinator's view of the cluster.
pub struct Registry {
    nodes: Mutex<BTreeMap<String, Entry>>,
    /// Every node id's binding, registered now or before a restart (from the store), by id.
    bound: Mutex<BTreeMap<String, NodeRegistration>>,
    credentials: Credentials,
    node_timeout: Duration,
}

impl Registry {
    /// A registry of the static `nodes`, reached with `credentials`.
    pub fn new(
        nodes: &[StaticNode],
        credentials: Credentials,
        node_timeout: Duration,
    ) -> Result<Registry, ClientError> {
        let mut entries = BTreeMap::new();
        for node in nodes {
            entries.insert(
                node.name.clone(),
                Entry {
                    id: None,
                    owner: None,
                    address: node.address.clone(),
                    source: Source::Static,
                    channel: credentials.channel(&node.address)?,
                    last_seen: None,
                    error: None,
                    logged_down: false,
                },
            );
        }
        Ok(Registry {
            nodes: Mutex::new(entries),
            bound: Mutex::new(BTreeMap::new()),
            credentials,
            node_timeout,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Restores the bindings the store kept from before a restart.
    pub fn restore(&self, stored: Vec<NodeRegistration>) {
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        for registration in stored {
            bound.insert(registration.node_id.clone(), registration);
        }
    }

    /// The credentials requests to nodes carry.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Why a registered node counts as down now, if it does.
    fn down_reason(&self, entry: &Entry, now: Instant) -> Option<String> {
        if entry.source != Source::Registered {
            return None;
        }
        let (seen, _) = entry.last_seen?;
        let silent = now.saturating_duration_since(seen);
        (silent > self.node_timeout).then(|| {
            format!(
                "down: no heartbeat for {}s (node_timeout {}s)",
                silent.as_secs(),
                self.node_timeout.as_secs()
            )
        })
    }

    /// Records a registration by node principal `principal`: a new node, or a known id with
    /// a new name or address. An id or a name another principal registered is refused, as
    /// is a name that belongs to a static node or to another registered node that is still
    /// up.
    ///
    /// Returns the binding to store when it is new or changed (a new id, a new name).
    pub fn register(
        &self,
        request: &pb::RegisterRequest,
        principal: &str,
    ) -> Result<Option<NodeRegistration>, RegisterError> {
        let valid_name = !request.name.is_empty()
            && !request.name.chars().any(|c| c.is_whitespace() || c == '/');
        if !valid_name {
            return Err(RegisterError::Invalid(format!(
                "node name {:?} is not a name: use letters, digits, '-', '_' or '.'",
                request.name
            )));
        }
        if request.node_id.len() != 32 || !request.node_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(RegisterError::Invalid(format!(
                "node id {:?} is not 32 hex digits",
                request.node_id
            )));
        }
        let channel = self
            .credentials
            .channel(&request.address)
            .map_err(|error| RegisterError::Invalid(error.to_string()))?;
        let now = Instant::now();
        let mut bound = self.bound.lock().unwrap_or_else(PoisonError::into_inner);
        // Bindings from before a restart (and of nodes gone since) hold as live ones do.
        if let Some(binding) = bound.get(&request.node_id) {
            authz::may_change_registration(
                &format!("{} (id {})", binding.name, request.node_id),
                &binding.principal,
                principal,
            )?;
        }
        if let Some(binding) = bound
            .values()
            .find(|binding| binding.name == request.name && binding.principal != principal)
        {
            authz::may_change_registration(
                &format!("{} (id {})", request.name, binding.node_id),
                &binding.principal,
                principal,
            )?;
        }
        if !bound.contains_key(&request.node_id) && bound.len() >= MAX_BOUND_NODE_IDS {
            return Err(RegisterError::Full(format!(
                "this coordinator remembers {} node ids, its limit ({MAX_BOUND_NODE_IDS}); node {} (id {}) is not added (delete retired ids from node_registrations in its store)",
                bound.len(),
                request.name,
                request.node_id
            )));
        }
        let mut nodes = self.lock();
        let same_id = |entry: &Entry| entry.id.as_deref() == Some(request.node_id.as_str());
        let by_id = nodes.iter().find(|(_, entry)| same_id(entry));
        if let Some((name, entry)) = by_id
            && let Some(owner) = &entry.owner
        {
            authz::may_change_registration(
                &format!("{name} (id {})", request.node_id),
                owner,
                principal,
            )?;
        }
        let known_id = by_id.is_some();
        if let Some(existing) = nodes.get(&request.name) {
            if existing.source == Source::Static {
                return Err(RegisterError::NameTaken(format!(
                    "node name {:?} is a static node of this coordinator ([cluster] nodes); give this node another [node] name",
                    request.name
                )));
            }
            if let Some(owner) = &existing.owner {
                authz::may_change_registration(
                    &format!(
                        "{} (id {})",
                        request.name,
                        existing.id.as_deref().unwrap_or("?")
                    ),
                    owner,
                    principal,
                )?;
            }
            if !same_id(existing) && self.down_reason(existing, now).is_none() {
                return Err(RegisterError::NameTaken(format!(
                    "node name {:?} is registered by node id {} which is up; give this node another [node] name",
                    request.name,
                    existing.id.as_deref().unwrap_or("?")
                )));
            }
        }
        let registered = nodes
            .values()
            .filter(|entry| entry.source == Source::Registered)
            .count();
        if !known_id && !nodes.contains_key(&request.name) && registered >= MAX_REGISTERED_NODES {
            return Err(RegisterError::Full(format!(
                "this coordinator holds {registered} registered nodes, its limit ({MAX_REGISTERED_NODES}); node {} (id {}) is not added",
                request.name, request.node_id
            )));
        }
        // The same node under its old name (it was renamed) goes away.
        nodes.retain(|name, entry| {
            entry.id.as_deref() != Some(request.node_id.as_str()) || *name == request.name
        });
        let previous = nodes.insert(
            request.name.clone(),
            Entry {
                id: Some(request.node_id.clone()),
                owner: Some(principal.to_string()),
                address: request.address.clone(),
                source: Source::Registered,
                channel,
                last_seen: Some((now, SystemTime::now())),
                error: None,
                logged_down: false,
            },
        );
        match previous {
            Some(old) if old.id.as_deref() == Some(request.node_id.as_str()) => {
                tracing::info!(node = %request.name, address = %request.address, "node registered again");
            }
            Some(old) => tracing::warn!(
                node = %request.name,
                old_id = ?old.id,
                new_id = %request.node_id,
                "a new node took the name of a node that was down"
            ),
            None => tracing::info!(
                node = %request.name,
                id = %request.node_id,
                address = %request.address,
                version = %request.daemon_version,
                "node registered"
            ),
        }
        let binding = NodeRegistration {
            node_id: request.node_id.clone(),
            name: request.name.clone(),
            principal: principal.to_owned(),
        };
        if bound.get(&request.node_id) == Some(&binding) {
            return Ok(None);
        }
        bound.insert(request.node_id.clone(), binding.clone());
        Ok(Some(binding))
    }

    /// Records a heartbeat from node principal `principal`; false when the id is unknown
    /// (the node must register again). Only the principal that registered the id may keep it
    /// up: another node's credentials cannot hide that a node died.
    pub fn heartbeat(&self, node_id: &str, principal: &str) -> Result<bool, AuthzError> {
        let mut nodes = self.lock();
        let Some((name, entry)) = nodes
            .iter_mut()
            .find(|(_, entry)| entry.id.as_deref() == Some(node_id))
        else {
            return Ok(false);
        };
        if let Some(owner) = &entry.owner {
            authz::may_change_registration(&format!("{name} (id {node_id})"), owner, principal)?;
        }
        entry.last_seen = Some((Instant::now(), SystemTime::now()));
        Ok(true)
    }

    /// The nodes named in `names` (all when empty) with their channels; unknown names are
    /// returned separately.
    pub fn targets(&self, names: &[String]) -> (Vec<Target>, Vec<String>) {
        let now = Instant::now();
        let nodes = self.lock();
        let mut unknown = Vec::new();
        let chosen: Vec<(&String, &Entry)> = if names.is_empty() {
            nodes.iter().collect()
        } else {
            let mut chosen = Vec::new();
            for name in names {
                match nodes.get_key_value(name) {
                    Some(found) => chosen.push(found),
                    None => unknown.push(name.clone()),
                }
            }
            chosen
        };
        let targets = chosen
            .into_iter()
            .map(|(name, entry)| Target {
                name: name.clone(),
                channel: entry.channel.clone(),
                down: self.down_reason(entry, now),
            })
            .collect();
        (targets, unknown)
    }

    /// The node called `name`, if there is one.
    pub fn target(&self, name: &str) -> Option<Target> {
        let (mut targets, _) = self.targets(&[name.to_string()]);
        targets.pop()
    }

    /// Records how a request to `name` went: an answer (`None`) or why it failed.
    pub fn record(&self, name: &str, failure: Option<String>) {
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get_mut(name) {
            if failure.is_none() {
                entry.last_seen = Some((Instant::now(), SystemTime::now()));
            }
            if entry.source == Source::Static {
                entry.error = failure;
            }
        }
    }

    /// Every node, by name, as Cluster.Nodes reports it.
    pub fn nodes(&self) -> Vec<pb::Node> {
        let now = Instant::now();
        let nodes = self.lock();
        nodes
            .iter()
            .map(|(name, entry)| self.describe(name, entry, now))
            .collect()
    }

    /// The description of the node `name`.
    pub fn node(&self, name: &str) -> Option<pb::Node> {
        let now = Instant::now();
        let nodes = self.lock();
        nodes.get(name).map(|entry| self.describe(name, entry, now))
    }

    fn describe(&self, name: &str, entry: &Entry, now: Instant) -> pb::Node {
        let down = self.down_reason(entry, now);
        let state = match (&down, &entry.error, entry.last_seen) {
            (Some(_), _, _) | (None, Some(_), _) => pb::NodeState::Down,
            (None, None, Some(_)) => pb::NodeState::Up,
            (None, None, None) => pb::NodeState::Unknown,
        };
        pb::Node {
            name: name.to_string(),
            node_id: entry.id.clone(),
            address: entry.address.clone(),
            source: entry.source.name().to_string(),
            state: state.into(),
            last_seen_unix_ms: entry.last_seen.map(|(_, at)| crate::store::unix_ms(at)),
            error: down.or_else(|| entry.error.clone()),
        }
    }

    /// Logs registered nodes that went down or came back since the last call.
    pub fn log_transitions(&self) {
        let now = Instant::now();
        let mut nodes = self.lock();
        let downs: Vec<(String, Option<String>)> = nodes
            .iter()
            .map(|(name, entry)| (name.clone(), self.down_reason(entry, now)))
            .collect();
        for (name, down) in downs {
            let Some(entry) = nodes.get_mut(&name) else {
                continue;
            };
            match (down, entry.logged_down) {
                (Some(reason), false) => {
                    tracing::warn!(node = %name, "node is {reason}");
                    entry.logged_down = true;
                }
                (None, true) => {
                    tracing::info!(node = %name, "node is up again");
                    entry.logged_down = false;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::config::ClusterConfig;

    fn registry(timeout: Duration) -> Registry {
        let credentials = Credentials::load(&ClusterConfig::default()).unwrap();
        Registry::new(
            &[StaticNode {
                name: "s1".into(),
                address: "http://127.0.0.1:1".into(),
            }],
            credentials,
            timeout,
        )
        .unwrap()
    }

    fn request(name: &str, id: char) -> pb::RegisterRequest {
        pb::RegisterRequest {
            node_id: id.to_string().repeat(32),
            name: name.into(),
            address: "http://127.0.0.1:2".into(),
            daemon_version: "0.1.0".into(),
        }
    }

    #[tokio::test]
    async fn registration_heartbeats_and_names() {
        let registry = registry(Duration::from_millis(200));
        assert_eq!(registry.nodes()[0].state, pb::NodeState::Unknown as i32);
        registry.register(&request("n1", 'a'), "nodes").unwrap();
        let error = registry.register(&request("s1", 'b'), "nodes").unwrap_err();
        assert!(error.to_string().contains("static node"), "{error}");
        let error = registry.register(&request("n1", 'b'), "nodes").unwrap_err();
        assert!(error.to_string().contains("which is up"), "{error}");
        assert!(registry.heartbeat(&"a".repeat(32), "nodes").unwrap());
        assert!(!registry.heartbeat(&"c".repeat(32), "nodes").unwrap());
        let n1 = registry.node("n1").unwrap();
        assert_eq!(n1.state, pb::NodeState::Up as i32);
        assert_eq!(n1.source, "registered");

        std::thread::sleep(Duration::from_millis(300));
        let n1 = registry.node("n1").unwrap();
        assert_eq!(n1.state, pb::NodeState::Down as i32);
        assert!(n1.error.unwrap().contains("no heartbeat"));
        assert!(registry.target("n1").unwrap().down.is_some());
        // A down node's name may be taken by a new node; a heartbeat brings a node back.
        registry.register(&request("n1", 'b'), "nodes").unwrap();
        assert_eq!(registry.node("n1").unwrap().node_id, Some("b".repeat(32)));

        // A renamed node leaves its old name.
        registry.register(&request("n2", 'b'), "nodes").unwrap();
        assert!(registry.node("n1").is_none());
        let error = registry
            .register(&request("bad name", 'd'), "nodes")
            .unwrap_err();
        assert!(matches!(error, RegisterError::Invalid(_)));
    }

    #[tokio::test]
    async fn a_registration_belongs_to_the_principal_that_made_it() {
        let registry = registry(Duration::from_millis(200));
        registry.register(&request("n1", 'a'), "p1").unwrap();
        let before = registry.node("n1").unwrap();
        // Another principal may not take the id (under any name), nor the name (under any
        // id), nor keep the node alive.
        for (name, id) in [("n1", 'a'), ("n9", 'a'), ("n1", 'b')] {
            let error = registry.register(&request(name, id), "p2").unwrap_err();
            assert!(matches!(error, RegisterError::NotOwner(_)), "{error}");
            let text = error.to_string();
            assert!(
                text.contains("n1") && text.contains("\"p1\"") && text.contains("\"p2\""),
                "{text}"
            );
        }
        let error = registry.heartbeat(&"a".repeat(32), "p2").unwrap_err();
        assert!(error.to_string().contains("\"p1\""), "{error}");
        // Even once the node is down, its name stays its principal's.
        std::thread::sleep(Duration::from_millis(300));
        assert!(registry.register(&request("n1", 'b'), "p2").is_err());
        let after = registry.node("n1").unwrap();
        assert_eq!(
            (after.node_id, after.address),
            (before.node_id, before.address)
        );
        assert!(registry.node("n9").is_none());
        // The owner may come back, rename and re-register as before.
        registry.register(&request("n1", 'a'), "p1").unwrap();
        assert!(registry.heartbeat(&"a".repeat(32), "p1").unwrap());
        registry.register(&request("n1b", 'a'), "p1").unwrap();
        // A name the owner gave up is free again.
        registry.register(&request("n1", 'c'), "p2").unwrap();
    }

    #[tokio::test]
    async fn registered_nodes_are_bounded() {
        let registry = registry(Duration::from_secs(30));
        for i in 0..MAX_REGISTERED_NODES {
            let mut asked = request(&format!("n{i}"), 'a');
            asked.node_id = format!("{i:032x}");
            registry.register(&asked, "nodes").unwrap();
        }
        let mut one_more = request("extra", 'a');
        one_more.node_id = "f".repeat(32);
        let error = registry.register(&one_more, "nodes").unwrap_err();
        assert!(matches!(error, RegisterError::Full(_)), "{error}");
        assert!(error.to_string().contains("extra"), "{error}");
        // Known nodes still register again.
        let mut again = request("n0", 'a');
        again.node_id = format!("{:032x}", 0);
        registry.register(&again, "nodes").unwrap();
    }

    #[tokio::test]
    async fn static_nodes_are_up_or_down_as_their_last_request_went() {
        let registry = registry(Duration::from_secs(30));
        registry.record("s1", Some("connection refused".into()));
        let s1 = registry.node("s1").unwrap();
        assert_eq!(s1.state, pb::NodeState::Down as i32);
        assert_eq!(s1.error.as_deref(), Some("connection refused"));
        registry.record("s1", None);
        assert_eq!(registry.node("s1").unwrap().state, pb::NodeState::Up as i32);
        let (targets, unknown) = registry.targets(&["s1".into(), "nope".into()]);
        assert_eq!(targets.len(), 1);
        assert_eq!(unknown, vec!["nope".to_string()]);
    }
}
