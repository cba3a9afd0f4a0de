//! Who may do what on the ingest endpoint. A bearer token names a principal (the token
//! file); `[ingest.principals]` says what that principal is for: a `node` uploads the hours
//! of the node ids it is bound to and reads back only theirs, a `reader` reads every node
//! and uploads nothing. A principal with a token but no entry may do nothing. Identity is
//! the token's, never the payload's: a payload's `node_id` is what is checked, not what
//! grants.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{IngestPrincipal, IngestRole, is_node_id};

/// What the principals of `[ingest.principals]` may do.
#[derive(Debug, Clone, Default)]
pub struct Access {
    grants: BTreeMap<String, Grant>,
}

#[derive(Debug, Clone)]
struct Grant {
    role: IngestRole,
    nodes: BTreeSet<String>,
}

/// Which rows a reading principal may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Every node's.
    All,
    /// Only these node ids'.
    Nodes(Vec<String>),
}

/// Why a principal is refused (HTTP 403; written to the audit trail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The token is valid but its principal has no `[ingest.principals]` entry.
    #[error(
        "principal {principal} has a token in ingest.tokens but no entry in [ingest.principals]: an admin adds {principal} = {{ role = \"node\", nodes = [\"<node id>\"] }} (or role = \"reader\") and restarts gpukilld"
    )]
    NotListed {
        /// The principal.
        principal: String,
    },
    /// A reader tried to upload.
    #[error(
        "principal {principal} is a reader: it may read (GET) but not upload the hours of node {node_id}; uploads need a principal with role = \"node\" bound to that node"
    )]
    ReaderUpload {
        /// The principal.
        principal: String,
        /// The node id the payload named.
        node_id: String,
    },
    /// A node principal named a node it is not bound to.
    #[error(
        "principal {principal} may not {verb} node {node_id}: it is bound to {bound} in [ingest.principals]"
    )]
    OtherNode {
        /// The principal.
        principal: String,
        /// "upload the hours of" or "read the hours of".
        verb: &'static str,
        /// The node id (or name) asked for.
        node_id: String,
        /// The node ids it is bound to, listed.
        bound: String,
    },
}

impl Access {
    /// The grants of `[ingest.principals]` (validated by the configuration).
    pub fn new(principals: &BTreeMap<String, IngestPrincipal>) -> Access {
        Access {
            grants: principals
                .iter()
                .map(|(name, entry)| {
                    (
                        name.clone(),
                        Grant {
                            role: entry.role,
                            nodes: entry.nodes.iter().cloned().collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn grant(&self, principal: &str) -> Result<&Grant, Denied> {
        self.grants.get(principal).ok_or_else(|| Denied::NotListed {
            principal: principal.to_string(),
        })
    }

    /// Whether `principal` may upload the hours of `node_id` (`None`: the body names no
    /// node id). A reader or an unlisted principal is refused whatever the body says; a
    /// node principal for a node id that is another's. A missing or malformed node id is
    /// no one's: the payload's validation refuses it (400).
    pub fn may_upload(&self, principal: &str, node_id: Option<&str>) -> Result<(), Denied> {
        let grant = self.grant(principal)?;
        match (grant.role, node_id) {
            (IngestRole::Reader, node_id) => Err(Denied::ReaderUpload {
                principal: principal.to_string(),
                node_id: node_id.unwrap_or("(none)").chars().take(80).collect(),
            }),
            // Not a node id at all: no principal's, so the validation's to refuse (400).
            (IngestRole::Node, Some(node_id))
                if is_node_id(node_id) && !grant.nodes.contains(node_id) =>
            {
                Err(other_node(principal, "upload the hours of", node_id, grant))
            }
            (IngestRole::Node, _) => Ok(()),
        }
    }

    /// Which rows `principal` may read, asked with `node` (a `node=` filter, by id or by
    /// name). A node principal reads only its own nodes, and names them by id: a name is
    /// whatever a node says it is, so it cannot prove a row is the principal's.
    pub fn may_read(&self, principal: &str, node: Option<&str>) -> Result<ReadScope, Denied> {
        let grant = self.grant(principal)?;
        match (grant.role, node) {
            (IngestRole::Reader, _) => Ok(ReadScope::All),
            (IngestRole::Node, Some(node)) if !grant.nodes.contains(node) => {
                Err(other_node(principal, "read the hours of", node, grant))
            }
            (IngestRole::Node, _) => Ok(ReadScope::Nodes(grant.nodes.iter().cloned().collect())),
        }
    }
}

fn other_node(principal: &str, verb: &'static str, node: &str, grant: &Grant) -> Denied {
    Denied::OtherNode {
        principal: principal.to_string(),
        verb,
        node_id: node.chars().take(80).collect(),
        bound: grant
            .nodes
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    const N1: &str = "11111111111111111111111111111111";
    const N2: &str = "22222222222222222222222222222222";
    const N3: &str = "33333333333333333333333333333333";

    fn access() -> Access {
        let entry = |role, nodes: &[&str]| IngestPrincipal {
            role,
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        };
        Access::new(&BTreeMap::from([
            ("gpu-01".to_string(), entry(IngestRole::Node, &[N1])),
            ("rack-2".to_string(), entry(IngestRole::Node, &[N2, N3])),
            ("billing".to_string(), entry(IngestRole::Reader, &[])),
        ]))
    }

    #[test]
    fn a_node_uploads_only_for_its_own_ids() {
        let access = access();
        assert_eq!(access.may_upload("gpu-01", Some(N1)), Ok(()));
        assert_eq!(access.may_upload("rack-2", Some(N3)), Ok(()));
        let denied = access.may_upload("rack-2", Some(N1)).unwrap_err();
        let message = denied.to_string();
        assert!(
            message.contains("rack-2") && message.contains(N1) && message.contains(N2),
            "{message}"
        );
    }

    #[test]
    fn a_reader_never_uploads_and_reads_everything() {
        let access = access();
        let denied = access.may_upload("billing", Some(N1)).unwrap_err();
        assert!(matches!(denied, Denied::ReaderUpload { .. }));
        assert!(denied.to_string().contains("billing"), "{denied}");
        assert!(access.may_upload("billing", None).is_err());
        // A node's body without a node id is the validation's to refuse (400).
        assert_eq!(access.may_upload("gpu-01", None), Ok(()));
        assert_eq!(access.may_upload("gpu-01", Some("")), Ok(()));
        assert_eq!(access.may_read("billing", None), Ok(ReadScope::All));
        assert_eq!(
            access.may_read("billing", Some("gpu-01")),
            Ok(ReadScope::All)
        );
    }

    #[test]
    fn a_node_reads_only_its_own_ids() {
        let access = access();
        assert_eq!(
            access.may_read("rack-2", None),
            Ok(ReadScope::Nodes(vec![N2.to_string(), N3.to_string()]))
        );
        assert_eq!(
            access.may_read("rack-2", Some(N3)),
            Ok(ReadScope::Nodes(vec![N2.to_string(), N3.to_string()]))
        );
        assert!(access.may_read("rack-2", Some(N1)).is_err());
        // A name proves nothing: even its own node's name is refused.
        assert!(access.may_read("gpu-01", Some("gpu-01")).is_err());
    }

    #[test]
    fn a_principal_without_an_entry_may_do_nothing() {
        let access = access();
        let denied = access.may_upload("stranger", Some(N1)).unwrap_err();
        assert_eq!(
            denied,
            Denied::NotListed {
                principal: "stranger".into()
            }
        );
        assert!(denied.to_string().contains("[ingest.principals]"));
        assert!(access.may_read("stranger", None).is_err());
    }
}
